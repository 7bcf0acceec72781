//! The Vault transit rows: `C_Sign` through the bridge vs the same transit request sent directly over a
//! kept-alive connection per thread (by default the lean blocking `ureq` client of `lean.rs`; `--vault-baseline
//! reqwest` a reqwest client on a tokio runtime, `--vault-baseline raw` a hand-written HTTP/1.1 exchange on a
//! blocking socket), 1, 8 and 32 threads; and the proxy that counts Vault's requests for the enumeration rows.

use crate::measure::round;
use crate::opts::VaultBaseline;
use crate::pkcs11::{find, Op};
use crate::table::{print_row, Row};
use crate::Bench;
use cryptoki_sys::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

pub fn reqwest_client() -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("tls versions")
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
        .expect("reqwest client")
}

/// A kept-alive HTTP/1.1 exchange written by hand on a blocking socket (`--vault-baseline raw`).
pub struct Http {
    stream: BufReader<TcpStream>,
    host: String,
}

impl Http {
    pub fn connect(addr: &str) -> Http {
        let host = addr.trim_start_matches("http://").to_string();
        let s = TcpStream::connect(&host).expect("connect");
        s.set_nodelay(true).ok();
        Http {
            stream: BufReader::new(s),
            host,
        }
    }
    pub fn post(&mut self, path: &str, token: &str, body: &str) -> String {
        self.request("POST", path, token, body)
    }
    pub fn request(&mut self, method: &str, path: &str, token: &str, body: &str) -> String {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nX-Vault-Token: {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        self.stream
            .get_mut()
            .write_all(req.as_bytes())
            .expect("write");
        let (_, _, body) = read_message(&mut self.stream).expect("response");
        String::from_utf8_lossy(&body).into_owned()
    }
}

/// A loopback HTTP/1.1 proxy in front of OpenBao that counts requests by method and first path segment after the
/// mount (`GET keys`, `LIST keys`, `POST sign`). Enough HTTP for Vault: bodies with Content-Length.
pub struct CountingProxy {
    pub url: String,
    counts: Arc<std::sync::Mutex<std::collections::BTreeMap<String, u64>>>,
}

/// One HTTP/1.1 message: its first line, its raw bytes, and its body (Content-Length or chunked).
fn read_message(r: &mut BufReader<TcpStream>) -> Option<(String, Vec<u8>, Vec<u8>)> {
    let mut raw = Vec::new();
    let mut len = 0usize;
    let mut chunked = false;
    let mut first = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if first.is_empty() {
            first = line.trim_end().to_string();
        }
        raw.extend_from_slice(line.as_bytes());
        let l = line.trim_end().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if l.starts_with("transfer-encoding:") && l.contains("chunked") {
            chunked = true;
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut line = String::new();
            r.read_line(&mut line).ok()?;
            raw.extend_from_slice(line.as_bytes());
            let size = usize::from_str_radix(line.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0u8; size + 2];
            r.read_exact(&mut chunk).ok()?;
            raw.extend_from_slice(&chunk);
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        body = vec![0u8; len];
        r.read_exact(&mut body).ok()?;
        raw.extend_from_slice(&body);
    }
    Some((first, raw, body))
}

impl CountingProxy {
    pub fn start(upstream: &'static str) -> CountingProxy {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let counts = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
        let c2 = counts.clone();
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let counts = c2.clone();
                std::thread::spawn(move || {
                    conn.set_nodelay(true).ok();
                    let Ok(up) = TcpStream::connect(upstream.trim_start_matches("http://")) else {
                        return;
                    };
                    up.set_nodelay(true).ok();
                    let mut down_w = conn.try_clone().unwrap();
                    let mut up_w = up.try_clone().unwrap();
                    let mut down_r = BufReader::new(conn);
                    let mut up_r = BufReader::new(up);
                    while let Some((first, req, _)) = read_message(&mut down_r) {
                        let mut it = first.split_whitespace();
                        let method = it.next().unwrap_or("?").to_string();
                        let path = it.next().unwrap_or("");
                        let what = path
                            .trim_start_matches("/v1/")
                            .split('/')
                            .nth(1)
                            .unwrap_or("");
                        let what = what.split('?').next().unwrap_or("");
                        *counts
                            .lock()
                            .unwrap()
                            .entry(format!("{method} {what}"))
                            .or_default() += 1;
                        if up_w.write_all(&req).is_err() {
                            return;
                        }
                        let Some((_, resp, _)) = read_message(&mut up_r) else {
                            return;
                        };
                        if down_w.write_all(&resp).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        CountingProxy { url, counts }
    }

    pub fn counts(&self) -> Vec<(String, u64)> {
        self.counts
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

pub fn rows(b: &Bench, addr: &'static str, token: &'static str) {
    let krt = b.runtime;
    for (name, label, mech, path, body) in [
        (
            "Vault C_Sign ECDSA P-256",
            "b-ec",
            CKM_ECDSA,
            "/v1/transit/sign/b-ec/sha2-256",
            r#"{"input":"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=","prehashed":true,"marshaling_algorithm":"jws","key_version":1}"#,
        ),
        (
            "Vault C_Sign Ed25519",
            "b-ed",
            CKM_EDDSA,
            "/v1/transit/sign/b-ed",
            r#"{"input":"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=","key_version":1}"#,
        ),
    ] {
        for threads in [1, 8, 32] {
            let n = b.opts.iters(if threads == 1 { 100 } else { 25 });
            let mut row = Row::new(name, threads);
            for _ in 0..b.opts.rounds {
                let url: &'static str = Box::leak(format!("{addr}{path}").into_boxed_str());
                let st = match b.opts.vault_baseline {
                    VaultBaseline::Lean => round(
                        threads,
                        n,
                        Arc::new(move |_| crate::lean::agent()),
                        Arc::new(move |a: &mut ureq::Agent| {
                            let r = crate::lean::vault_post(a, url, token, body);
                            assert!(r.contains("signature"), "{r}");
                        }),
                    ),
                    VaultBaseline::Raw => round(
                        threads,
                        n,
                        Arc::new(move |_| Http::connect(addr)),
                        Arc::new(move |h: &mut Http| {
                            let r = h.post(path, token, body);
                            assert!(r.contains("signature"), "{r}");
                        }),
                    ),
                    VaultBaseline::Reqwest => round(
                        threads,
                        n,
                        Arc::new(move |_| reqwest_client()),
                        Arc::new(move |c: &mut reqwest::Client| {
                            let r = krt
                                .block_on(async {
                                    c.post(url)
                                        .header("X-Vault-Token", token)
                                        .header("Content-Type", "application/json")
                                        .body(body)
                                        .send()
                                        .await?
                                        .text()
                                        .await
                                })
                                .expect("vault");
                            assert!(r.contains("signature"), "{r}");
                        }),
                    ),
                };
                row.direct.add(st);
                row.bridge.add(b.op_round(
                    b.bridge_side(),
                    move |m, s| Op::Sign(mech, find(m, s, label, CKO_PRIVATE_KEY), 32),
                    threads,
                    n,
                ));
            }
            print_row(&mut row);
        }
    }
}

/// `--vault-batch-probe`: what one `batch_input` request of N items costs OpenBao (one raw client, one thread): the
/// ceiling of coalescing at N callers.
pub fn batch_probe(b: &Bench, addr: &'static str, token: &'static str) {
    let item = r#"{"input":"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="}"#;
    println!("| batch_input items | requests/s | signatures/s | p50 µs | p99 µs |");
    println!("|---|---|---|---|---|");
    for n in [1usize, 2, 4, 8, 16, 32] {
        let body: &'static str = Box::leak(
            format!(
                r#"{{"batch_input":[{}],"prehashed":true,"marshaling_algorithm":"jws","key_version":1}}"#,
                vec![item; n].join(",")
            )
            .into_boxed_str(),
        );
        let mut st = crate::measure::Stats::default();
        for _ in 0..b.opts.rounds {
            st.add(round(
                1,
                b.opts.iters(100),
                Arc::new(move |_| Http::connect(addr)),
                Arc::new(move |h: &mut Http| {
                    let r = h.post("/v1/transit/sign/b-ec/sha2-256", token, body);
                    assert!(r.contains("signature"), "{r}");
                }),
            ));
        }
        let rate = st.rate();
        println!(
            "| {n} | {rate:.0} | {:.0} | {:.1} | {:.1} |",
            rate * n as f64,
            st.pct(0.5).as_secs_f64() * 1e6,
            st.pct(0.99).as_secs_f64() * 1e6
        );
    }
}
