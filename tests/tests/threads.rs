//! Concurrency: two threads × 1000 ECDSA P-256 signatures, each on its own session of the unified token, while a
//! third thread opens and closes sessions in a loop. No call may fail; every signature is verified with `C_Verify`
//! through the bridge, and a sample independently with openssl. A watchdog ends the process if the whole has not
//! finished in 120 s (a deadlock is a failure, not a hung CI run).
//!
//! Whether the two signing threads really run in parallel is not asserted (that needs timing); they must not fail.

mod common;

use common::*;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectClass;
use cryptoki::session::SessionState;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

const SIGNERS: usize = 2;
const SIGNS: usize = 1000;
const MIN_CHURN: usize = 500;
/// Every SAMPLE-th signature is also checked by openssl.
const SAMPLE: usize = 50;
const DEADLINE: Duration = Duration::from_secs(120);

/// The 32-byte "digest" signed by thread `t` at step `i` (CKM_ECDSA signs it as given).
fn message(t: usize, i: usize) -> Vec<u8> {
    let mut m = vec![0u8; 32];
    m[0] = 0xA5;
    m[1] = t as u8;
    m[2..10].copy_from_slice(&(i as u64).to_be_bytes());
    m[10..]
        .iter_mut()
        .enumerate()
        .for_each(|(k, b)| *b = (k * 7 + i + t) as u8);
    m
}

#[test]
fn concurrent_signing_with_session_churn() {
    let p = p11();

    // The watchdog: exits the process (failing the run) if the test has not finished by the deadline.
    let (finished, watch) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = watch.recv_timeout(DEADLINE) {
            eprintln!("threads: not finished after {DEADLINE:?}: deadlock? exiting");
            std::process::exit(101);
        }
    });

    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let slot = unified_slot(p);
            let mut n = 0;
            while n < MIN_CHURN || !stop.load(Ordering::Relaxed) {
                let s = if n % 2 == 0 {
                    p.open_ro_session(slot)
                } else {
                    p.open_rw_session(slot)
                }
                .unwrap_or_else(|e| panic!("churn: open session {n}: {e}"));
                let info = s
                    .get_session_info()
                    .unwrap_or_else(|e| panic!("churn: session info {n}: {e}"));
                // Public before the signers have logged in, user afterwards; never SO, and RO/RW as opened.
                let ok = match info.session_state() {
                    SessionState::RoUser | SessionState::RoPublic => n % 2 == 0,
                    SessionState::RwUser | SessionState::RwPublic => n % 2 == 1,
                    _ => false,
                };
                assert!(ok, "churn: session {n} state {:?}", info.session_state());
                s.close()
                    .unwrap_or_else(|e| panic!("churn: close session {n}: {e}"));
                n += 1;
            }
            n
        })
    };

    let signers: Vec<_> = (0..SIGNERS)
        .map(|t| {
            std::thread::spawn(move || {
                let s = user_session(p);
                let key = find_one(&s, "ec-p256", ObjectClass::PRIVATE_KEY);
                let public = find_one(&s, "ec-p256", ObjectClass::PUBLIC_KEY);
                let mut sample = Vec::new();
                for i in 0..SIGNS {
                    let m = message(t, i);
                    let sig = s
                        .sign(&Mechanism::Ecdsa, key, &m)
                        .unwrap_or_else(|e| panic!("thread {t}: sign {i}: {e}"));
                    assert_eq!(sig.len(), 64, "thread {t}: signature {i} length");
                    s.verify(&Mechanism::Ecdsa, public, &m, &sig)
                        .unwrap_or_else(|e| panic!("thread {t}: C_Verify of signature {i}: {e}"));
                    if i % SAMPLE == 0 {
                        sample.push((m, sig));
                    }
                }
                sample
            })
        })
        .collect();

    let mut samples = Vec::new();
    let mut failures = Vec::new();
    for (t, h) in signers.into_iter().enumerate() {
        match h.join() {
            Ok(v) => samples.extend(v),
            Err(_) => failures.push(format!("signing thread {t} failed")),
        }
    }
    stop.store(true, Ordering::Relaxed);
    match churn.join() {
        Ok(n) => assert!(n >= MIN_CHURN, "only {n} sessions opened and closed"),
        Err(_) => failures.push("the session thread failed".into()),
    }
    let _ = finished.send(());
    assert!(failures.is_empty(), "{}", failures.join("; "));

    // An independent check of a sample.
    let s = user_session(p);
    let public = find_one(&s, "ec-p256", ObjectClass::PUBLIC_KEY);
    let spki = spki(&s, public);
    assert_eq!(samples.len(), SIGNERS * SIGNS.div_ceil(SAMPLE));
    for (k, (m, sig)) in samples.iter().enumerate() {
        assert!(
            openssl_verify(&spki, None, &[], m, &der::ecdsa_der(sig)),
            "openssl rejects sampled signature {k}"
        );
    }
}
