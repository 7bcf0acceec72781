//! p11bridge-bench: the bridge against the same work done without it, in one process, interleaved.
//!
//! `cargo run --release -p p11bridge-bench -- --all` (full), `--quick` (fewer rounds) or `--smoke` (a few iterations
//! and 20 keys, for CI) prints markdown tables; it starts its own servers (SoftHSM2 token, OpenBao dev server,
//! moto behind the KMS fidelity layer) and stops them when it exits:
//! - pass-through over SoftHSM2: the bridge's unified token vs SoftHSM2's own function list (same process, same
//!   token, both through raw PKCS#11 calls), 1 and 2 threads on separate sessions;
//! - Vault transit (an OpenBao dev server started here): `C_Sign` through the bridge vs the same transit request
//!   sent directly over a kept-alive HTTP/1.1 connection per thread, 1, 8 and 32 threads;
//! - AWS KMS (moto): `C_Sign` ECDSA P-256 through the bridge vs a direct aws-sdk-kms `Sign` to the same endpoint,
//!   1 and 8 threads;
//! - enumeration of N KMS keys and N transit keys: the first `C_FindObjects` after `C_Initialize` (cold, with and
//!   without generated certificates cached on disk) and repeated ones (warm), with the backend requests each made,
//!   against a sequential direct client issuing the requests the search needs;
//! - footprint: `C_Initialize` time, RSS after initialize (all three backends configured), size of the `.so`.
//!
//! The `.so` under test is copied to a private directory first (`--so PATH` to choose it; default
//! `target/release/libp11bridge.so`), so a concurrent build cannot swap it mid-run.
//!
//! Rounds alternate direct and bridge so that drift of the machine hits both. Nothing here is asserted: targets
//! are read off the table.

use cryptoki_sys::*;
use std::ffi::c_void;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use p11bridge_testkit::bao::{Bao, ROOT_TOKEN};
use p11bridge_testkit::moto::Moto;
use p11bridge_testkit::{repo_root, softhsm, Launch};

struct Module {
    f: &'static CK_FUNCTION_LIST,
}

macro_rules! call {
    ($m:expr, $f:ident ( $($a:expr),* $(,)? )) => {
        unsafe { ($m.f.$f.expect(stringify!($f)))($($a),*) }
    };
}

fn load(path: &Path) -> Module {
    let lib = unsafe { libloading::Library::new(path) }
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut fl: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
    unsafe {
        let get: libloading::Symbol<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV> =
            lib.get(b"C_GetFunctionList\0").expect("C_GetFunctionList");
        assert_eq!(get(&mut fl), CKR_OK);
    }
    std::mem::forget(lib);
    Module { f: unsafe { &*fl } }
}

fn ok(rv: CK_RV, what: &str) {
    assert!(rv == CKR_OK, "{what}: 0x{rv:x}");
}

fn slot_by_label(m: &Module, label: &str) -> CK_SLOT_ID {
    let mut n: CK_ULONG = 0;
    ok(
        call!(m, C_GetSlotList(CK_TRUE, std::ptr::null_mut(), &mut n)),
        "slots",
    );
    let mut v = vec![0; n as usize];
    ok(
        call!(m, C_GetSlotList(CK_TRUE, v.as_mut_ptr(), &mut n)),
        "slots",
    );
    for s in v {
        let mut ti = unsafe { std::mem::zeroed::<CK_TOKEN_INFO>() };
        if call!(m, C_GetTokenInfo(s, &mut ti)) == CKR_OK {
            let l = String::from_utf8_lossy(&ti.label).trim_end().to_string();
            if l == label {
                return s;
            }
        }
    }
    panic!("no token {label}");
}

fn session(m: &Module, slot: CK_SLOT_ID, pin: &str) -> CK_SESSION_HANDLE {
    let mut h = 0;
    ok(
        call!(
            m,
            C_OpenSession(
                slot,
                CKF_SERIAL_SESSION | CKF_RW_SESSION,
                std::ptr::null_mut(),
                None,
                &mut h
            )
        ),
        "open",
    );
    let rv = call!(
        m,
        C_Login(h, CKU_USER, pin.as_ptr() as *mut u8, pin.len() as CK_ULONG)
    );
    assert!(
        rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN,
        "login 0x{rv:x}"
    );
    h
}

fn find(m: &Module, s: CK_SESSION_HANDLE, label: &str, class: CK_OBJECT_CLASS) -> CK_OBJECT_HANDLE {
    let mut class = class;
    let mut t = [
        CK_ATTRIBUTE {
            type_: CKA_LABEL,
            pValue: label.as_ptr() as *mut c_void,
            ulValueLen: label.len() as CK_ULONG,
        },
        CK_ATTRIBUTE {
            type_: CKA_CLASS,
            pValue: &mut class as *mut _ as *mut c_void,
            ulValueLen: std::mem::size_of::<CK_OBJECT_CLASS>() as CK_ULONG,
        },
    ];
    ok(
        call!(m, C_FindObjectsInit(s, t.as_mut_ptr(), 2)),
        "find init",
    );
    let mut h = [0; 4];
    let mut n = 0;
    ok(
        call!(m, C_FindObjects(s, h.as_mut_ptr(), 4, &mut n)),
        "find",
    );
    ok(call!(m, C_FindObjectsFinal(s)), "find final");
    assert_eq!(n, 1, "{label}");
    h[0]
}

/// One kind of operation, ready to run on a session.
#[derive(Clone, Copy)]
enum Op {
    Sign(CK_MECHANISM_TYPE, CK_OBJECT_HANDLE, usize),
    GcmEncrypt(CK_OBJECT_HANDLE),
    GetLabel(CK_OBJECT_HANDLE),
    FindByLabel,
}

fn run_op(m: &Module, s: CK_SESSION_HANDLE, op: Op) {
    match op {
        Op::Sign(mech, key, len) => {
            let mut mm = CK_MECHANISM {
                mechanism: mech,
                pParameter: std::ptr::null_mut(),
                ulParameterLen: 0,
            };
            ok(call!(m, C_SignInit(s, &mut mm, key)), "sign init");
            let mut data = [7u8; 32];
            let mut sig = [0u8; 512];
            let mut n = sig.len() as CK_ULONG;
            ok(
                call!(
                    m,
                    C_Sign(
                        s,
                        data.as_mut_ptr(),
                        len as CK_ULONG,
                        sig.as_mut_ptr(),
                        &mut n
                    )
                ),
                "sign",
            );
        }
        Op::GcmEncrypt(key) => {
            let mut iv = [1u8; 12];
            let mut p = CK_GCM_PARAMS {
                pIv: iv.as_mut_ptr(),
                ulIvLen: 12,
                ulIvBits: 96,
                pAAD: std::ptr::null_mut(),
                ulAADLen: 0,
                ulTagBits: 128,
            };
            let mut mm = CK_MECHANISM {
                mechanism: CKM_AES_GCM,
                pParameter: &mut p as *mut _ as *mut c_void,
                ulParameterLen: std::mem::size_of::<CK_GCM_PARAMS>() as CK_ULONG,
            };
            ok(call!(m, C_EncryptInit(s, &mut mm, key)), "encrypt init");
            let mut data = [3u8; 1024];
            let mut out = [0u8; 1100];
            let mut n = out.len() as CK_ULONG;
            ok(
                call!(
                    m,
                    C_Encrypt(s, data.as_mut_ptr(), 1024, out.as_mut_ptr(), &mut n)
                ),
                "encrypt",
            );
        }
        Op::GetLabel(key) => {
            let mut buf = [0u8; 64];
            let mut t = [CK_ATTRIBUTE {
                type_: CKA_LABEL,
                pValue: buf.as_mut_ptr() as *mut c_void,
                ulValueLen: 64,
            }];
            ok(
                call!(m, C_GetAttributeValue(s, key, t.as_mut_ptr(), 1)),
                "get attribute",
            );
        }
        Op::FindByLabel => {
            let label = b"ec-p256";
            let mut t = [CK_ATTRIBUTE {
                type_: CKA_LABEL,
                pValue: label.as_ptr() as *mut c_void,
                ulValueLen: label.len() as CK_ULONG,
            }];
            ok(
                call!(m, C_FindObjectsInit(s, t.as_mut_ptr(), 1)),
                "find init",
            );
            let mut h = [0; 8];
            let mut n = 0;
            ok(
                call!(m, C_FindObjects(s, h.as_mut_ptr(), 8, &mut n)),
                "find",
            );
            ok(call!(m, C_FindObjectsFinal(s)), "find final");
        }
    }
}

#[derive(Default, Clone)]
struct Stats {
    ops: usize,
    wall: Duration,
    lat: Vec<Duration>,
}

impl Stats {
    fn add(&mut self, o: Stats) {
        self.ops += o.ops;
        self.wall += o.wall;
        self.lat.extend(o.lat);
    }
    fn rate(&self) -> f64 {
        self.ops as f64 / self.wall.as_secs_f64().max(1e-9)
    }
    fn pct(&mut self, p: f64) -> Duration {
        if self.lat.is_empty() {
            return Duration::ZERO;
        }
        self.lat.sort();
        self.lat[((self.lat.len() - 1) as f64 * p) as usize]
    }
}

/// Runs `iters` calls of `work` on each of `threads` threads (each with its own state from `setup`).
fn round<S: Send + 'static>(
    threads: usize,
    iters: usize,
    setup: Arc<dyn Fn(usize) -> S + Send + Sync>,
    work: Arc<dyn Fn(&mut S) + Send + Sync>,
) -> Stats {
    let barrier = Arc::new(Barrier::new(threads + 1));
    let mut hs = Vec::new();
    for t in 0..threads {
        let (b, setup, work) = (barrier.clone(), setup.clone(), work.clone());
        hs.push(std::thread::spawn(move || {
            let mut st = setup(t);
            b.wait();
            let mut lat = Vec::with_capacity(iters);
            let start = Instant::now();
            for _ in 0..iters {
                let t0 = Instant::now();
                work(&mut st);
                lat.push(t0.elapsed());
            }
            (start, Instant::now(), lat)
        }));
    }
    barrier.wait();
    let mut lat = Vec::new();
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    for h in hs {
        let (s, e, l) = h.join().expect("worker");
        first = Some(first.map_or(s, |f| f.min(s)));
        last = Some(last.map_or(e, |x| x.max(e)));
        lat.extend(l);
    }
    // From the first thread's start to the last one's end (not the main thread's view: it may be descheduled).
    let wall = match (first, last) {
        (Some(f), Some(l)) => l.duration_since(f),
        _ => Duration::ZERO,
    };
    Stats {
        ops: threads * iters,
        wall,
        lat,
    }
}

struct Row {
    name: String,
    threads: usize,
    direct: Stats,
    bridge: Stats,
}

fn print_row(r: &mut Row) {
    let (dr, br) = (r.direct.rate(), r.bridge.rate());
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let (d50, d99, b50, b99) = (
        r.direct.pct(0.5),
        r.direct.pct(0.99),
        r.bridge.pct(0.5),
        r.bridge.pct(0.99),
    );
    println!(
        "| {:<34} | {:>3} | {:>10.0} | {:>10.0} | {:>5.3} | {:>9.1} / {:>9.1} | {:>9.1} / {:>9.1} | {:>+8.2} |",
        r.name,
        r.threads,
        dr,
        br,
        br / dr.max(1e-9),
        us(d50),
        us(d99),
        us(b50),
        us(b99),
        us(b50) - us(d50),
    );
}

fn header() {
    println!(
        "| {:<34} | {:>3} | {:>10} | {:>10} | {:>5} | {:>21} | {:>21} | {:>8} |",
        "row",
        "thr",
        "direct/s",
        "bridge/s",
        "ratio",
        "direct p50 / p99 µs",
        "bridge p50 / p99 µs",
        "Δp50 µs"
    );
    println!("|{}|", ["-"; 8].map(|_| "----------").join("|"));
}

// ---------------------------------------------------------------- the direct Vault clients (the baselines)

/// A reqwest client as the bridge builds one (rustls on ring, preconfigured: nothing process-wide).
fn reqwest_client() -> reqwest::Client {
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
struct Http {
    stream: BufReader<TcpStream>,
    host: String,
}

impl Http {
    fn connect(addr: &str) -> Http {
        let host = addr.trim_start_matches("http://").to_string();
        let s = TcpStream::connect(&host).expect("connect");
        s.set_nodelay(true).ok();
        Http {
            stream: BufReader::new(s),
            host,
        }
    }
    fn post(&mut self, path: &str, token: &str, body: &str) -> String {
        self.request("POST", path, token, body)
    }
    fn request(&mut self, method: &str, path: &str, token: &str, body: &str) -> String {
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

// ---------------------------------------------------------------- servers

/// An OpenBao dev server (stderr to `dir/bao.log`, no audit device: it would cost a write per request) with the
/// transit keys the Vault rows use; its address and root token.
fn start_bao(dir: &Path) -> (String, String) {
    let bao = Bao::launch(
        &Launch {
            log: Some(dir.join("bao.log")),
            ..Launch::default()
        },
        false,
    );
    bao.ok(&["secrets", "enable", "transit"]);
    bao.ok(&["write", "-f", "transit/keys/b-ec", "type=ecdsa-p256"]);
    bao.ok(&["write", "-f", "transit/keys/b-ed", "type=ed25519"]);
    (bao.addr.clone(), ROOT_TOKEN.to_string())
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn footprint(so: &Path) {
    // A fresh process: nothing else loaded or initialized.
    let before = rss_kib();
    let m = load(so);
    let t = Instant::now();
    ok(call!(m, C_Initialize(std::ptr::null_mut())), "C_Initialize");
    let init = t.elapsed();
    let after = rss_kib();
    println!("{} {} {}", init.as_micros(), before, after);
}

// ---------------------------------------------------------------- moto + the KMS fidelity layer

/// moto (stderr to `dir/moto.log`), until the bench exits.
fn start_moto(dir: &Path) -> Moto {
    Moto::launch(
        "us-east-1",
        &Launch {
            log: Some(dir.join("moto.log")),
            ..Launch::default()
        },
    )
}

/// Creates `n` P-256 signing keys with aliases `alias/{prefix}NNNN`, 8 requests at a time.
fn create_kms_keys(moto: &Moto, prefix: &str, n: usize) {
    moto.boto(&format!(
        "from concurrent.futures import ThreadPoolExecutor\ndef mk(i):\n    k = kms.create_key(KeySpec='ECC_NIST_P256', KeyUsage='SIGN_VERIFY')['KeyMetadata']['KeyId']\n    kms.create_alias(AliasName='alias/{prefix}%04d' % i, TargetKeyId=k)\nwith ThreadPoolExecutor(8) as ex:\n    list(ex.map(mk, range({n})))\n"
    ));
}

fn fmt_counts(v: &[(String, u64)]) -> String {
    let total: u64 = v.iter().map(|x| x.1).sum();
    if total == 0 {
        return "0".into();
    }
    let parts: Vec<String> = v.iter().map(|(k, n)| format!("{k} {n}")).collect();
    format!("{total} ({})", parts.join(", "))
}

/// The direct KMS client: aws-sdk-kms with the same HTTPS client as the bridge, to the same endpoint.
fn kms_client(rt: &tokio::runtime::Runtime, url: &str) -> aws_sdk_kms::Client {
    rt.block_on(async {
        let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(p11bridge_backends::kms::http_client())
            .region(aws_config::Region::new("us-east-1"))
            .load()
            .await;
        aws_sdk_kms::Client::from_conf(
            aws_sdk_kms::config::Builder::from(&conf)
                .endpoint_url(url)
                .build(),
        )
    })
}

// ---------------------------------------------------------------- Vault request counts (a counting proxy)

/// A loopback HTTP/1.1 proxy in front of OpenBao that counts requests by method and first path segment after the
/// mount (`GET keys`, `LIST keys`, `POST sign`). Enough HTTP for Vault: bodies with Content-Length.
struct CountingProxy {
    url: String,
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
    fn start(upstream: &'static str) -> CountingProxy {
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

    fn counts(&self) -> Vec<(String, u64)> {
        self.counts
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

fn diff(after: &[(String, u64)], before: &[(String, u64)]) -> Vec<(String, u64)> {
    after
        .iter()
        .filter_map(|(k, n)| {
            let b = before.iter().find(|x| &x.0 == k).map_or(0, |x| x.1);
            (*n > b).then(|| (k.clone(), n - b))
        })
        .collect()
}

// ---------------------------------------------------------------- the run

struct Opts {
    mode: &'static str,
    rounds: usize,
    scale: f64,
    enum_keys: usize,
}

fn iters(o: &Opts, n: usize) -> usize {
    ((n as f64 * o.scale) as usize).max(3)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let root = repo_root();
    if args.get(1).map(String::as_str) == Some("--footprint-child") {
        footprint(Path::new(&args[2]));
        return;
    }
    let arg = |name: &str| args.iter().any(|a| a == name);
    let o = if arg("--smoke") {
        Opts {
            mode: "smoke",
            rounds: 1,
            scale: 0.05,
            enum_keys: 20,
        }
    } else if arg("--quick") {
        Opts {
            mode: "quick",
            rounds: 3,
            scale: 1.0,
            enum_keys: 200,
        }
    } else {
        Opts {
            mode: "full",
            rounds: 5,
            scale: 4.0,
            enum_keys: 1000,
        }
    };
    let enum_keys = args
        .iter()
        .position(|a| a == "--keys")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(o.enum_keys);
    let src_so = args
        .iter()
        .position(|a| a == "--so")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target"))
                .join("release/libp11bridge.so")
        });
    assert!(
        src_so.exists(),
        "{}: build first: cargo build --release -p p11bridge",
        src_so.display()
    );

    let dir = root
        .join("target/bench-env")
        .join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The .so under test, copied: others may rebuild target/release meanwhile.
    let so = dir.join("libp11bridge.so");
    std::fs::copy(&src_so, &so).expect("copy the .so");
    softhsm::make_token(&dir.join("softhsm"));
    let (bao_addr, bao_token) = start_bao(&dir);
    let moto = start_moto(&dir);
    moto.boto("k = kms.create_key(KeySpec='ECC_NIST_P256', KeyUsage='SIGN_VERIFY')['KeyMetadata']['KeyId']\nkms.create_alias(AliasName='alias/k-ec', TargetKeyId=k)\n");
    std::env::set_var("BENCH_BAO_TOKEN", &bao_token);
    std::env::set_var("P11BRIDGE_PIN", "bench-pin");
    let batch_cfg = args
        .iter()
        .position(|a| a == "--vault-batch")
        .and_then(|i| args.get(i + 1))
        .map(|v| format!("batch = {v}\n"))
        .unwrap_or_default();
    let config = dir.join("p11bridge.toml");
    std::fs::write(
        &config,
        format!(
            r#"[[slot]]
label = "unified"
user_pin = "env:P11BRIDGE_PIN"
backends = ["hsm", "vault", "kms"]

[backend.hsm]
kind = "pkcs11"
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "upstream"
pin = "env:HSM_PIN"

[backend.vault]
kind = "vault-transit"
address = "{bao_addr}"
token = "env:BENCH_BAO_TOKEN"
keys = ["b-ec", "b-ed"]
cert_cache_dir = "{certs}"
{batch_cfg}
[backend.kms]
kind = "aws-kms"
region = "us-east-1"
endpoint = "{kms}"
keys = ["alias/k-ec"]
cert_cache_dir = "{certs}"
"#,
            certs = dir.join("certs").display(),
            kms = moto.url,
        ),
    )
    .unwrap();
    std::env::set_var("P11BRIDGE_CONFIG", &config);

    // Footprint first, in a fresh process.
    let fp = Command::new(std::env::current_exe().unwrap())
        .arg("--footprint-child")
        .arg(&so)
        .output()
        .expect("footprint child");
    let fp = String::from_utf8_lossy(&fp.stdout).to_string();
    let f: Vec<u64> = fp
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();

    let direct: &'static Module =
        Box::leak(Box::new(load(Path::new("/usr/lib/softhsm/libsofthsm2.so"))));
    let bridge: &'static Module = Box::leak(Box::new(load(&so)));
    let mut init_args = CK_C_INITIALIZE_ARGS {
        CreateMutex: None,
        DestroyMutex: None,
        LockMutex: None,
        UnlockMutex: None,
        flags: CKF_OS_LOCKING_OK,
        pReserved: std::ptr::null_mut(),
    };
    let init_ptr = &mut init_args as *mut _ as *mut c_void;
    ok(call!(direct, C_Initialize(init_ptr)), "softhsm init");
    ok(call!(bridge, C_Initialize(init_ptr)), "bridge init");
    let dslot = slot_by_label(direct, "upstream");
    let bslot = slot_by_label(bridge, "unified");

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|x| x.1.trim().to_string())
        })
        .unwrap_or_default();
    let load_avg = || {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "p11bridge-bench ({} mode): bridge vs direct, same process, rounds interleaved; {} × {cpu}; load average at start {}",
        o.mode,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_avg()
    );
    println!();
    header();
    type Setup = (&'static Module, CK_SESSION_HANDLE, Op);
    let rounds = o.rounds;
    let pass_through = |name: &str,
                        pick: fn(&'static Module, CK_SESSION_HANDLE) -> Op,
                        threads: usize,
                        iters: usize| {
        let mut row = Row {
            name: name.to_string(),
            threads,
            direct: Stats::default(),
            bridge: Stats::default(),
        };
        for _ in 0..rounds {
            for (side, m, slot, pin) in
                [(0, direct, dslot, "1234"), (1, bridge, bslot, "bench-pin")]
            {
                let setup: Arc<dyn Fn(usize) -> Setup + Send + Sync> = Arc::new(move |_| {
                    let s = session(m, slot, pin);
                    (m, s, pick(m, s))
                });
                let work: Arc<dyn Fn(&mut Setup) + Send + Sync> =
                    Arc::new(|st: &mut Setup| run_op(st.0, st.1, st.2));
                let st = round(threads, iters, setup, work);
                if side == 0 {
                    row.direct.add(st);
                } else {
                    row.bridge.add(st);
                }
            }
        }
        print_row(&mut row);
    };
    // `--only hsm,vault,kms,enum`: a subset of the sections (all by default).
    let only: Option<String> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    let want = |sec: &str| only.as_ref().is_none_or(|o| o.split(',').any(|x| x == sec));
    for threads in [1, 2].into_iter().filter(|_| want("hsm")) {
        pass_through(
            "SoftHSM C_Sign ECDSA P-256",
            |m, s| Op::Sign(CKM_ECDSA, find(m, s, "ec-p256", CKO_PRIVATE_KEY), 32),
            threads,
            iters(&o, 100),
        );
        pass_through(
            "SoftHSM C_Sign RSA-2048 PKCS#1",
            |m, s| {
                Op::Sign(
                    CKM_SHA256_RSA_PKCS,
                    find(m, s, "rsa-2048", CKO_PRIVATE_KEY),
                    32,
                )
            },
            threads,
            iters(&o, 25),
        );
        pass_through(
            "SoftHSM C_Encrypt AES-GCM 1 KiB",
            |m, s| Op::GcmEncrypt(find(m, s, "aes-256", CKO_SECRET_KEY)),
            threads,
            iters(&o, 1000),
        );
        pass_through(
            "SoftHSM C_GetAttributeValue LABEL",
            |m, s| Op::GetLabel(find(m, s, "ec-p256", CKO_PRIVATE_KEY)),
            threads,
            iters(&o, 5000),
        );
        pass_through(
            "SoftHSM C_FindObjects by label",
            |_, _| Op::FindByLabel,
            threads,
            iters(&o, 1000),
        );
    }

    // The direct clients' runtime (reqwest for Vault, aws-sdk-kms for KMS): a multi-thread runtime like the bridge's,
    // driven by each benchmark thread with block_on.
    let krt: &'static tokio::runtime::Runtime = Box::leak(Box::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    ));

    // Vault: the bridge's C_Sign vs the same transit request on a kept-alive connection: by default a direct reqwest
    // client (one per thread, so one kept-alive connection each), or with `--vault-baseline raw` a hand-written
    // HTTP/1.1 exchange on a blocking socket (the leanest possible client).
    let raw_baseline = args
        .iter()
        .position(|a| a == "--vault-baseline")
        .and_then(|i| args.get(i + 1))
        .is_some_and(|v| v == "raw");
    let addr: &'static str = Box::leak(bao_addr.clone().into_boxed_str());
    let token: &'static str = Box::leak(bao_token.clone().into_boxed_str());
    for (name, vlabel, path, body) in [
        (
            "Vault C_Sign ECDSA P-256",
            "b-ec",
            "/v1/transit/sign/b-ec/sha2-256",
            r#"{"input":"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=","prehashed":true,"marshaling_algorithm":"jws","key_version":1}"#,
        ),
        (
            "Vault C_Sign Ed25519",
            "b-ed",
            "/v1/transit/sign/b-ed",
            r#"{"input":"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=","key_version":1}"#,
        ),
    ] {
        for threads in [1, 8, 32].into_iter().filter(|_| want("vault")) {
            let n = iters(&o, if threads == 1 { 100 } else { 25 });
            let mut row = Row {
                name: name.to_string(),
                threads,
                direct: Stats::default(),
                bridge: Stats::default(),
            };
            for _ in 0..rounds {
                let st = if raw_baseline {
                    round(
                        threads,
                        n,
                        Arc::new(move |_| Http::connect(addr)),
                        Arc::new(move |h: &mut Http| {
                            let r = h.post(path, token, body);
                            assert!(r.contains("signature"), "{r}");
                        }),
                    )
                } else {
                    let url: &'static str = Box::leak(format!("{addr}{path}").into_boxed_str());
                    round(
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
                    )
                };
                row.direct.add(st);
                let mech = if vlabel == "b-ed" {
                    CKM_EDDSA
                } else {
                    CKM_ECDSA
                };
                let setup: Arc<dyn Fn(usize) -> Setup + Send + Sync> = Arc::new(move |_| {
                    let s = session(bridge, bslot, "bench-pin");
                    let k = find(bridge, s, vlabel, CKO_PRIVATE_KEY);
                    (bridge, s, Op::Sign(mech, k, 32))
                });
                let work: Arc<dyn Fn(&mut Setup) + Send + Sync> =
                    Arc::new(|st: &mut Setup| run_op(st.0, st.1, st.2));
                row.bridge.add(round(threads, n, setup, work));
            }
            print_row(&mut row);
        }
    }

    // KMS: the bridge's C_Sign vs aws-sdk-kms Sign, both through the fidelity layer to moto.
    let kc = kms_client(krt, &moto.url);
    for threads in [1, 8].into_iter().filter(|_| want("kms")) {
        let n = iters(&o, if threads == 1 { 50 } else { 12 });
        let mut row = Row {
            name: "KMS C_Sign ECDSA P-256".into(),
            threads,
            direct: Stats::default(),
            bridge: Stats::default(),
        };
        for _ in 0..rounds {
            let c = kc.clone();
            let st = round(
                threads,
                n,
                Arc::new(move |_| c.clone()),
                Arc::new(move |c: &mut aws_sdk_kms::Client| {
                    let r = krt.block_on(
                        c.sign()
                            .key_id("alias/k-ec")
                            .message(aws_sdk_kms::primitives::Blob::new(vec![7u8; 32]))
                            .message_type(aws_sdk_kms::types::MessageType::Digest)
                            .signing_algorithm(
                                aws_sdk_kms::types::SigningAlgorithmSpec::EcdsaSha256,
                            )
                            .send(),
                    );
                    assert!(r.expect("kms sign").signature().is_some());
                }),
            );
            row.direct.add(st);
            let setup: Arc<dyn Fn(usize) -> Setup + Send + Sync> = Arc::new(move |_| {
                let s = session(bridge, bslot, "bench-pin");
                let k = find(bridge, s, "k-ec", CKO_PRIVATE_KEY);
                (bridge, s, Op::Sign(CKM_ECDSA, k, 32))
            });
            let work: Arc<dyn Fn(&mut Setup) + Send + Sync> =
                Arc::new(|st: &mut Setup| run_op(st.0, st.1, st.2));
            row.bridge.add(round(threads, n, setup, work));
        }
        print_row(&mut row);
    }
    println!(
        "(direct = SoftHSM2's own function list; {} to OpenBao; aws-sdk-kms with the bridge's HTTPS client to the same moto endpoint)",
        if raw_baseline {
            "a hand-written HTTP/1.1 exchange on a kept-alive blocking socket per thread"
        } else {
            "a reqwest client per thread (one kept-alive connection each) on a 2-worker tokio runtime"
        }
    );

    // Enumeration.
    println!();
    if want("enum") {
        enumeration(bridge, &dir, &moto, krt, &kc, addr, token, enum_keys, &o);
    }

    println!();
    let size = std::fs::metadata(&so).map(|m| m.len()).unwrap_or(0);
    if f.len() == 3 {
        println!(
            "footprint: C_Initialize {} µs (SoftHSM2 + Vault + KMS configured; remote backends connect lazily), RSS {} KiB → {} KiB after C_Initialize (+{:.1} MiB), libp11bridge.so {:.1} MiB",
            f[0],
            f[1],
            f[2],
            f[2].saturating_sub(f[1]) as f64 / 1024.0,
            size as f64 / 1048576.0
        );
    }
    println!("load average at end: {}", load_avg());
    ok(call!(bridge, C_Finalize(std::ptr::null_mut())), "finalize");
    // A run that got here leaves nothing behind (a failed one keeps its server logs for a look).
    let _ = std::fs::remove_dir_all(&dir);
}

/// Opens a session on the unified token of a freshly initialized bridge (config from `P11BRIDGE_CONFIG`).
fn reinit(bridge: &'static Module, config: &Path) -> CK_SESSION_HANDLE {
    std::env::set_var("P11BRIDGE_CONFIG", config);
    ok(call!(bridge, C_Finalize(std::ptr::null_mut())), "finalize");
    let mut a = CK_C_INITIALIZE_ARGS {
        CreateMutex: None,
        DestroyMutex: None,
        LockMutex: None,
        UnlockMutex: None,
        flags: CKF_OS_LOCKING_OK,
        pReserved: std::ptr::null_mut(),
    };
    ok(
        call!(bridge, C_Initialize(&mut a as *mut _ as *mut c_void)),
        "init",
    );
    let slot = slot_by_label(bridge, "enum");
    session(bridge, slot, "bench-pin")
}

/// One search by label; the number of objects found.
fn find_label(m: &Module, s: CK_SESSION_HANDLE, label: &str) -> usize {
    let mut t = [CK_ATTRIBUTE {
        type_: CKA_LABEL,
        pValue: label.as_ptr() as *mut c_void,
        ulValueLen: label.len() as CK_ULONG,
    }];
    ok(
        call!(m, C_FindObjectsInit(s, t.as_mut_ptr(), 1)),
        "find init",
    );
    let mut h = [0; 8];
    let mut n = 0;
    ok(
        call!(m, C_FindObjects(s, h.as_mut_ptr(), 8, &mut n)),
        "find",
    );
    ok(call!(m, C_FindObjectsFinal(s)), "find final");
    n as usize
}

struct EnumRow {
    name: String,
    ms: f64,
    requests: String,
}

fn print_enum(r: &EnumRow) {
    println!("| {:<58} | {:>10.2} | {} |", r.name, r.ms, r.requests);
}

#[allow(clippy::too_many_arguments)]
fn enumeration(
    bridge: &'static Module,
    dir: &Path,
    moto: &Moto,
    krt: &'static tokio::runtime::Runtime,
    kc: &aws_sdk_kms::Client,
    addr: &'static str,
    token: &'static str,
    n: usize,
    o: &Opts,
) {
    // Setup (not timed): n KMS keys with aliases, n transit keys, a proxy to count Vault's requests.
    let t = Instant::now();
    create_kms_keys(moto, "enum-", n);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hs: Vec<_> = (0..8)
        .map(|_| {
            let next = next.clone();
            std::thread::spawn(move || {
                let mut h = Http::connect(addr);
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let r = h.post(
                        &format!("/v1/transit/keys/enum-{i:04}"),
                        token,
                        r#"{"type":"ecdsa-p256"}"#,
                    );
                    assert!(!r.contains("errors"), "{r}");
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    // Vault's requests are counted by a proxy in front of it (OpenBao enables audit devices from its config only).
    let proxy = CountingProxy::start(addr);
    let paddr: &'static str = Box::leak(proxy.url.clone().into_boxed_str());
    eprintln!(
        "(setup: {n} KMS keys and {n} transit keys created in {:.1} s)",
        t.elapsed().as_secs_f64()
    );

    println!(
        "| {:<58} | {:>10} | backend requests |",
        "enumeration", "ms"
    );
    println!("|{}|{}|{}|", "-".repeat(60), "-".repeat(12), "-".repeat(20));
    let warm_iters = if o.mode == "smoke" { 20 } else { 200 };
    let label = "enum-0007";
    let label = if n > 7 { label } else { "enum-0000" };
    for backend in ["kms", "vault"] {
        let certs = dir.join(format!("enum-certs-{backend}"));
        let section = if backend == "kms" {
            format!(
                "[backend.kms]\nkind = \"aws-kms\"\nregion = \"us-east-1\"\nendpoint = \"{}\"\ndiscover = true\ncert_cache_dir = \"{}\"\n",
                moto.url,
                certs.display()
            )
        } else {
            format!(
                "[backend.vault]\nkind = \"vault-transit\"\naddress = \"{paddr}\"\ntoken = \"env:BENCH_BAO_TOKEN\"\ndiscover = true\nprefix = \"enum-\"\ncert_cache_dir = \"{}\"\n",
                certs.display()
            )
        };
        let config = dir.join(format!("enum-{backend}.toml"));
        std::fs::write(
            &config,
            format!("[[slot]]\nlabel = \"enum\"\nuser_pin = \"env:P11BRIDGE_PIN\"\nbackends = [\"{backend}\"]\n\n{section}"),
        )
        .unwrap();
        let counts = || {
            if backend == "kms" {
                moto.stats()
            } else {
                proxy.counts()
            }
        };
        let what = if backend == "kms" {
            "KMS"
        } else {
            "Vault transit"
        };
        for (pass, note) in [
            (0, "cold, certificates generated"),
            (1, "cold, certificates cached on disk"),
        ] {
            let s = reinit(bridge, &config);
            if backend == "kms" {
                moto.reset();
            }
            let before = counts();
            let t = Instant::now();
            let found = find_label(bridge, s, label);
            let ms = t.elapsed().as_secs_f64() * 1e3;
            assert!(found >= 2, "{backend}: {label} found {found} objects");
            let req = diff(&counts(), &before);
            print_enum(&EnumRow {
                name: format!("{what} {n} keys: first C_FindObjects ({note})"),
                ms,
                requests: fmt_counts(&req),
            });
            if pass == 1 {
                let before = counts();
                let mut worst = Duration::ZERO;
                let t = Instant::now();
                for _ in 0..warm_iters {
                    let t1 = Instant::now();
                    find_label(bridge, s, label);
                    worst = worst.max(t1.elapsed());
                }
                let avg = t.elapsed().as_secs_f64() * 1e3 / warm_iters as f64;
                let req = diff(&counts(), &before);
                print_enum(&EnumRow {
                    name: format!(
                        "{what} {n} keys: warm C_FindObjects (mean of {warm_iters}; max {:.2} ms)",
                        worst.as_secs_f64() * 1e3
                    ),
                    ms: avg,
                    requests: fmt_counts(&req),
                });
            }
        }
        // The sequential direct client issuing the requests the search needs.
        if backend == "kms" {
            moto.reset();
        }
        let before = counts();
        let t = Instant::now();
        if backend == "kms" {
            krt.block_on(direct_kms_enum(kc.clone()));
        } else {
            let mut h = Http::connect(paddr);
            let list = h.request("LIST", "/v1/transit/keys", token, "");
            let v: serde_json::Value = serde_json::from_str(&list).expect("list");
            for k in v
                .pointer("/data/keys")
                .and_then(|k| k.as_array())
                .expect("keys")
            {
                let k = k.as_str().unwrap_or("");
                if k.starts_with("enum-") {
                    let r = h.request("GET", &format!("/v1/transit/keys/{k}"), token, "");
                    assert!(r.contains("public_key"));
                }
            }
        }
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let req = diff(&counts(), &before);
        print_enum(&EnumRow {
            name: format!("{what} {n} keys: direct sequential client, same requests"),
            ms,
            requests: fmt_counts(&req),
        });
    }
}

/// What the bridge's KMS enumeration needs, one request at a time: aliases, keys, and each key's metadata and
/// public key.
async fn direct_kms_enum(c: aws_sdk_kms::Client) {
    let mut marker = None;
    loop {
        let r = c
            .list_aliases()
            .limit(100)
            .set_marker(marker.take())
            .send()
            .await
            .expect("aliases");
        match (r.truncated(), r.next_marker()) {
            (true, Some(m)) => marker = Some(m.to_string()),
            _ => break,
        }
    }
    let mut ids = Vec::new();
    loop {
        let r = c
            .list_keys()
            .limit(1000)
            .set_marker(marker.take())
            .send()
            .await
            .expect("keys");
        ids.extend(
            r.keys()
                .iter()
                .filter_map(|k| k.key_id().map(str::to_owned)),
        );
        match (r.truncated(), r.next_marker()) {
            (true, Some(m)) => marker = Some(m.to_string()),
            _ => break,
        }
    }
    for id in ids {
        c.describe_key().key_id(&id).send().await.expect("describe");
        c.get_public_key()
            .key_id(&id)
            .send()
            .await
            .expect("public key");
    }
}
