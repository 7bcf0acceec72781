//! AWS KMS high availability: two moto servers as two regions (`us-east-1` primary, `us-west-2`) holding the same
//! multi-Region key (the replica seeded through the fidelity layer with the same id and private key). The primary
//! is killed in the middle of a signing loop, then started again on the same port; later it is frozen (requests
//! hang) and answers 500s. Every signature is verified by openssl with the key's public key.
//!
//! Reported (printed): the failover window — from the kill to the first signature after it — with the operations
//! that failed in it, and how long the bridge took to use the primary again once it was back.

mod common;

use common::moto::{spawn, two_regions_with_mrk};
use common::*;
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use std::time::{Duration, Instant};

use p11bridge_vendor::CKA_P11BRIDGE_BACKEND;
const TIMEOUT_MS: u64 = 4000;
const COOLDOWN_MS: u64 = 500;

fn rv(e: &Error) -> RvError {
    match e {
        Error::Pkcs11(rv, _) => *rv,
        other => panic!("not a PKCS#11 error: {other}"),
    }
}

fn kms_key(s: &Session, label: &str, class: ObjectClass) -> ObjectHandle {
    let v = s
        .find_objects(&[
            Attribute::Label(label.into()),
            Attribute::Class(class),
            Attribute::VendorDefined((
                AttributeType::VendorDefined(CKA_P11BRIDGE_BACKEND),
                b"kms".to_vec(),
            )),
        ])
        .unwrap();
    assert_eq!(v.len(), 1, "{label} {class:?}");
    v[0]
}

/// Seeds `to` with the replica of `from`'s key (same id, same private key, same alias).
/// One signed message, verified later.
struct Signed {
    msg: Vec<u8>,
    sig: Vec<u8>,
}

struct Loop {
    ok: Vec<Signed>,
    /// (when, CK_RV) of each failed sign.
    failed: Vec<(Instant, RvError)>,
    /// When each sign succeeded.
    ok_at: Vec<Instant>,
    /// (start, duration) of each successful sign.
    took: Vec<(Instant, Duration)>,
}

/// Signs for `d`, recording every outcome.
fn sign_for(s: &Session, key: ObjectHandle, n0: &mut u64, d: Duration, out: &mut Loop) {
    let t = Instant::now();
    while t.elapsed() < d {
        *n0 += 1;
        let started = Instant::now();
        let msg = format!("message {n0}").into_bytes();
        match s.sign(&Mechanism::EcdsaSha256, key, &msg) {
            Ok(sig) => {
                out.ok_at.push(Instant::now());
                out.took.push((started, started.elapsed()));
                out.ok.push(Signed { msg, sig });
            }
            Err(e) => out.failed.push((Instant::now(), rv(&e))),
        }
    }
}

#[test]
fn multi_region_failover_and_return() {
    let (a, b, _key_id, exported) = two_regions_with_mrk("alias/ha-signing");
    let dir = repo_root()
        .join("target/test-env")
        .join(format!("kms-ha-{}", std::process::id()));
    let section = format!(
        r#"
[backend.kms]
kind = "aws-kms"
regions = ["us-east-1", "us-west-2"]
endpoints = {{ "us-east-1" = "{}", "us-west-2" = "{}" }}
keys = ["alias/ha-signing"]
cert_cache_dir = "{}"
timeout_ms = {TIMEOUT_MS}
connect_timeout_ms = 1000
max_attempts = 2
breaker_failures = 2
breaker_cooldown_ms = {COOLDOWN_MS}
probe_interval_ms = 200
"#,
        a.url,
        b.url,
        dir.join("certs").display()
    );
    env_with(&["kms"], &section);
    let s = user_session(p11());
    let key = kms_key(&s, "ha-signing", ObjectClass::PRIVATE_KEY);
    let spki = spki(&s, kms_key(&s, "ha-signing", ObjectClass::PUBLIC_KEY));
    let mut n = 0u64;
    let mut run = Loop {
        ok: vec![],
        failed: vec![],
        ok_at: vec![],
        took: vec![],
    };

    // Both up: the primary serves.
    a.reset();
    b.reset();
    sign_for(&s, key, &mut n, Duration::from_secs(1), &mut run);
    assert!(run.failed.is_empty(), "{:?}", run.failed);
    assert!(a.count("Sign") > 0);
    assert_eq!(
        b.count("Sign"),
        0,
        "the second region is not used while the first is healthy"
    );

    // Kill the primary in the middle of the loop (from another thread, at a random point of a call).
    let before = run.ok.len();
    let pid = a.pid;
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        unsafe { libc::kill(pid, libc::SIGKILL) };
        Instant::now()
    });
    sign_for(&s, key, &mut n, Duration::from_secs(3), &mut run);
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
    let after_window: Vec<_> = run
        .failed
        .iter()
        .filter(|(t, _)| *t > first_after)
        .collect();
    println!(
        "KMS failover window (primary killed): {} ms, failed operations in it: {in_window}, after it: {}; slowest call ending within 1 s of the kill: {} ms",
        window.as_millis(),
        after_window.len(),
        felt.as_millis()
    );
    assert!(
        after_window.is_empty(),
        "failures after the failover window: {after_window:?}"
    );
    assert!(
        in_window <= 1,
        "at most the call in flight may fail: {:?}",
        run.failed
    );
    assert!(b.count("Sign") > 0, "the second region signed");
    // Other backends are unaffected meanwhile.
    hsm_sign(&s);

    // Key creation goes to the first healthy region only (the primary is down: the second), never to both.
    b.reset();
    let created = s.generate_key_pair(
        &Mechanism::EccKeyPairGen,
        &[
            Attribute::EcParams(vec![
                0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
            ]),
            Attribute::Label("ha-created".into()),
            Attribute::VendorDefined((
                AttributeType::VendorDefined(CKA_P11BRIDGE_BACKEND),
                b"kms".to_vec(),
            )),
        ],
        &[
            Attribute::Sign(true),
            Attribute::Label("ha-created".into()),
            Attribute::Token(true),
            Attribute::VendorDefined((
                AttributeType::VendorDefined(CKA_P11BRIDGE_BACKEND),
                b"kms".to_vec(),
            )),
        ],
    );
    assert!(created.is_ok(), "{created:?}");
    assert_eq!(b.count("CreateKey"), 1);

    // The primary comes back on the same port (with its key store seeded again): calls return to it, found by
    // the background prober, not by a caller.
    let a = spawn(a.port(), "us-east-1");
    a.import_key(&exported);
    let back = Instant::now();
    let mut returned = None;
    while back.elapsed() < Duration::from_secs(30) {
        sign_for(&s, key, &mut n, Duration::from_millis(100), &mut run);
        if a.count("Sign") > 0 {
            returned = Some(back.elapsed());
            break;
        }
    }
    let returned = returned.expect("the primary is used again once it is back");
    println!(
        "KMS return to the primary: {} ms after it was back (probe interval 200 ms, cooldown {COOLDOWN_MS} ms)",
        returned.as_millis()
    );
    let b_signs = b.count("Sign");
    let a_signs = a.count("Sign");
    sign_for(&s, key, &mut n, Duration::from_millis(500), &mut run);
    assert_eq!(
        b.count("Sign"),
        b_signs,
        "once back, the primary takes every call"
    );
    assert!(a.count("Sign") > a_signs);

    // An idempotent call that gets 5xx from the primary fails over; key creation with a 5xx is not re-sent.
    a.reset();
    b.reset();
    a.fault("Sign", "500", 10, 0);
    let msg = b"five hundred".to_vec();
    let sig = s.sign(&Mechanism::EcdsaSha256, key, &msg).unwrap();
    run.ok.push(Signed { msg, sig });
    assert_eq!(
        b.count("Sign"),
        1,
        "the 5xx sign was answered by the second region"
    );
    a.reset();
    b.reset();
    a.fault("CreateKey", "500", 1, 0);
    let e = s
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::EcParams(vec![
                    0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
                ]),
                Attribute::Label("ha-created-2".into()),
                Attribute::VendorDefined((
                    AttributeType::VendorDefined(CKA_P11BRIDGE_BACKEND),
                    b"kms".to_vec(),
                )),
            ],
            &[
                Attribute::Sign(true),
                Attribute::Label("ha-created-2".into()),
                Attribute::VendorDefined((
                    AttributeType::VendorDefined(CKA_P11BRIDGE_BACKEND),
                    b"kms".to_vec(),
                )),
            ],
        )
        .unwrap_err();
    assert_eq!(rv(&e), RvError::DeviceError);
    assert_eq!(a.count("CreateKey"), 1, "not retried");
    assert_eq!(b.count("CreateKey"), 0, "never re-sent to another region");

    // Back to the primary (its breaker opened on the 5xx), then frozen (requests hang): the calls in flight fail
    // over within their deadline, the breaker then sends the next calls straight to the second region.
    a.reset();
    let t = Instant::now();
    while a.count("Sign") == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the primary is not used again"
        );
        sign_for(&s, key, &mut n, Duration::from_millis(100), &mut run);
    }
    let mut slowest = Duration::ZERO;
    a.reset();
    b.reset();
    a.freeze();
    let t0 = Instant::now();
    let mut frozen_failed = 0;
    for i in 0..10u8 {
        let msg = vec![b'f', i];
        let t = Instant::now();
        match s.sign(&Mechanism::EcdsaSha256, key, &msg) {
            Ok(sig) => run.ok.push(Signed { msg, sig }),
            Err(_) => frozen_failed += 1,
        }
        slowest = slowest.max(t.elapsed());
    }
    let total = t0.elapsed();
    hsm_sign(&s);
    a.thaw();
    println!(
        "KMS frozen primary: 10 signs in {} ms, slowest {} ms (deadline {TIMEOUT_MS} ms), failed: {frozen_failed}",
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
    // Two calls open the breaker (each waits half the deadline); the rest do not wait at all.
    assert!(
        total < Duration::from_millis(TIMEOUT_MS * 2),
        "the breaker skips the frozen region: {total:?}"
    );

    // Every signature verifies with the key's public key (openssl), whichever region made it.
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
