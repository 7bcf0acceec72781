//! Vault / OpenBao high availability: two OpenBao dev servers as two nodes (`addresses = [A, B]`) holding the
//! same transit key (a plaintext backup of A's key restored into B). The primary A is killed in the middle of a
//! signing loop, then started again on the same port; later it is frozen (requests hang). A standby that answers
//! 307 with the active node's address (a tiny redirecting server here) is followed with the request body re-sent.
//! Every signature is verified by openssl with the key's public key; which node answered comes from each node's
//! audit log.
//!
//! Reported (printed): the failover window — from the kill to the first signature after it — with the operations
//! that failed in it, and how long the bridge took to use the primary again once it was back.

mod common;

use common::bao::spawn;
use common::*;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use p11bridge_vendor::CKA_P11BRIDGE_BACKEND;
const TIMEOUT_MS: u64 = 4000;
const COOLDOWN_MS: u64 = 500;
const SIGN_PATH: &str = "transit/sign/ha-ec";

fn key(s: &Session, backend: &str, class: ObjectClass) -> ObjectHandle {
    let v = s
        .find_objects(&[
            Attribute::Label("ha-ec".into()),
            Attribute::Class(class),
            Attribute::VendorDefined((
                AttributeType::VendorDefined(CKA_P11BRIDGE_BACKEND),
                backend.as_bytes().to_vec(),
            )),
        ])
        .unwrap();
    assert_eq!(v.len(), 1, "{backend} {class:?}");
    v[0]
}

/// A standby as Vault runs one without request forwarding: every request is answered `307 Temporary Redirect`
/// to the same path on the active node. Counts the requests it redirected.
fn redirector(active: String) -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", l.local_addr().unwrap());
    let n = Arc::new(AtomicUsize::new(0));
    let count = n.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { continue };
            let active = active.clone();
            let count = count.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(c);
                // Keep-alive: serve requests on this connection until it closes.
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let mut len = 0usize;
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        if h.trim().is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                len = v.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    let mut body = vec![0u8; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let resp = format!(
                        "HTTP/1.1 307 Temporary Redirect\r\nLocation: {active}{path}\r\nContent-Length: 0\r\n\r\n"
                    );
                    if r.get_mut().write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, n)
}

struct Signed {
    msg: Vec<u8>,
    sig: Vec<u8>,
}

#[derive(Default)]
struct Loop {
    ok: Vec<Signed>,
    ok_at: Vec<Instant>,
    /// (start, duration) of each successful sign.
    took: Vec<(Instant, Duration)>,
    failed: Vec<(Instant, String)>,
}

fn sign_for(s: &Session, k: ObjectHandle, n: &mut u64, d: Duration, out: &mut Loop) {
    let t = Instant::now();
    while t.elapsed() < d {
        *n += 1;
        let started = Instant::now();
        let msg = format!("message {n}").into_bytes();
        match s.sign(&Mechanism::EcdsaSha256, k, &msg) {
            Ok(sig) => {
                out.ok_at.push(Instant::now());
                out.took.push((started, started.elapsed()));
                out.ok.push(Signed { msg, sig });
            }
            Err(e) => out.failed.push((Instant::now(), e.to_string())),
        }
    }
}

#[test]
fn node_failover_return_and_standby_redirect() {
    let a = spawn(0);
    let b = spawn(0);
    let backup = a.ec_key_with_backup("ha-ec");
    b.restore_key("ha-ec", &backup);
    let (standby, redirected) = redirector(a.addr.clone());
    std::env::set_var("VAULT_HA_TOKEN", common::bao::ROOT_TOKEN);
    let dir = repo_root()
        .join("target/test-env")
        .join(format!("vault-ha-{}", std::process::id()));
    let section = format!(
        r#"
[backend.vault]
kind = "vault-transit"
addresses = ["{}", "{}"]
token = "env:VAULT_HA_TOKEN"
keys = ["ha-ec"]
cert_cache_dir = "{certs}"
timeout_ms = {TIMEOUT_MS}
connect_timeout_ms = 1000
breaker_failures = 2
breaker_cooldown_ms = {COOLDOWN_MS}
probe_interval_ms = 200

[backend.standby]
kind = "vault-transit"
address = "{standby}"
token = "env:VAULT_HA_TOKEN"
keys = ["ha-ec"]
cert_cache_dir = "{certs}"
timeout_ms = {TIMEOUT_MS}
"#,
        a.addr,
        b.addr,
        certs = dir.join("certs").display()
    );
    env_with(&["vault", "standby"], &section);
    let s = user_session(p11());
    let k = key(&s, "vault", ObjectClass::PRIVATE_KEY);
    let spki = spki(&s, key(&s, "vault", ObjectClass::PUBLIC_KEY));
    let mut n = 0u64;
    let mut run = Loop::default();

    // A standby's 307 is followed, with the request (body, token) sent again to the active node.
    let via_standby = key(&s, "standby", ObjectClass::PRIVATE_KEY);
    let (before_r, before_a) = (redirected.load(Ordering::SeqCst), a.requests(SIGN_PATH));
    let msg = b"through the standby".to_vec();
    let sig = s.sign(&Mechanism::EcdsaSha256, via_standby, &msg).unwrap();
    run.ok.push(Signed { msg, sig });
    assert_eq!(redirected.load(Ordering::SeqCst), before_r + 1);
    assert_eq!(
        a.requests(SIGN_PATH),
        before_a + 1,
        "the active node signed"
    );

    // Both up: the first address serves.
    let b0 = b.requests(SIGN_PATH);
    sign_for(&s, k, &mut n, Duration::from_secs(1), &mut run);
    assert!(run.failed.is_empty(), "{:?}", run.failed);
    assert_eq!(
        b.requests(SIGN_PATH),
        b0,
        "the second node is not used while the first is healthy"
    );

    // Kill the primary in the middle of the loop.
    let before = run.ok.len();
    let pid = a.pid;
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        unsafe { libc::kill(pid, libc::SIGKILL) };
        Instant::now()
    });
    sign_for(&s, k, &mut n, Duration::from_secs(3), &mut run);
    let killed = killer.join().unwrap();
    let first_after = *run.ok_at[before..]
        .iter()
        .find(|t| **t > killed)
        .expect("a signature after the kill");
    let window = first_after.duration_since(killed);
    // The slowest call that ended within a second of the kill (what a caller felt).
    let felt = run
        .took
        .iter()
        .filter(|(t0, d)| *t0 + *d > killed && *t0 + *d < killed + Duration::from_secs(1))
        .map(|(_, d)| *d)
        .max()
        .unwrap_or_default();
    let in_window = run.failed.iter().filter(|(t, _)| *t <= first_after).count();
    let after: Vec<_> = run
        .failed
        .iter()
        .filter(|(t, _)| *t > first_after)
        .collect();
    println!(
        "Vault failover window (primary killed): {} ms, failed operations in it: {in_window}, after it: {}; slowest call ending within 1 s of the kill: {} ms",
        window.as_millis(),
        after.len(),
        felt.as_millis()
    );
    assert!(
        after.is_empty(),
        "failures after the failover window: {after:?}"
    );
    assert!(
        in_window <= 1,
        "at most the call in flight may fail: {:?}",
        run.failed
    );
    assert!(b.requests(SIGN_PATH) > b0, "the second node signed");
    hsm_sign(&s);

    // The primary comes back on the same port (set up again: a dev server forgets everything): calls return to it.
    let a = spawn(a.port());
    a.restore_key("ha-ec", &backup);
    let back = Instant::now();
    let mut returned = None;
    while back.elapsed() < Duration::from_secs(30) {
        sign_for(&s, k, &mut n, Duration::from_millis(100), &mut run);
        if a.requests(SIGN_PATH) > 0 {
            returned = Some(back.elapsed());
            break;
        }
    }
    let returned = returned.expect("the primary is used again once it is back");
    println!(
        "Vault return to the primary: {} ms after it was back (probe interval 200 ms, cooldown {COOLDOWN_MS} ms)",
        returned.as_millis()
    );
    let (a1, b1) = (a.requests(SIGN_PATH), b.requests(SIGN_PATH));
    sign_for(&s, k, &mut n, Duration::from_millis(500), &mut run);
    assert_eq!(
        b.requests(SIGN_PATH),
        b1,
        "once back, the primary takes every call"
    );
    assert!(a.requests(SIGN_PATH) > a1);

    // Frozen primary: the calls in flight fail over within their deadline, then the breaker skips it.
    a.freeze();
    let t0 = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut frozen_failed = 0;
    for i in 0..10u8 {
        let msg = vec![b'f', i];
        let t = Instant::now();
        match s.sign(&Mechanism::EcdsaSha256, k, &msg) {
            Ok(sig) => run.ok.push(Signed { msg, sig }),
            Err(_) => frozen_failed += 1,
        }
        slowest = slowest.max(t.elapsed());
    }
    let total = t0.elapsed();
    hsm_sign(&s);
    a.thaw();
    println!(
        "Vault frozen primary: 10 signs in {} ms, slowest {} ms (deadline {TIMEOUT_MS} ms), failed: {frozen_failed}",
        total.as_millis(),
        slowest.as_millis()
    );
    assert_eq!(
        frozen_failed, 0,
        "every call failed over within its deadline"
    );
    assert!(
        slowest < Duration::from_millis(TIMEOUT_MS + 1000),
        "{slowest:?}"
    );
    assert!(
        total < Duration::from_millis(TIMEOUT_MS * 2),
        "the breaker skips the frozen node: {total:?}"
    );

    for x in &run.ok {
        assert!(
            openssl_verify(&spki, Some("sha256"), &[], &x.msg, &der::ecdsa_der(&x.sig)),
            "signature over {:?}",
            String::from_utf8_lossy(&x.msg)
        );
    }
    println!("{} signatures verified", run.ok.len());
    let late: Vec<_> = run
        .failed
        .iter()
        .filter(|(t, _)| *t > first_after)
        .collect();
    assert!(
        late.is_empty(),
        "failures after the failover window: {late:?}"
    );
}
