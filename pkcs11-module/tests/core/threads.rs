//! Concurrency: many threads signing through their own sessions at once, and the session limits under a race.

use crate::common::*;
use cryptoki_sys::*;

#[test]
fn threads_sign_at_once_with_keys_of_several_backends() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let points: Vec<(String, Vec<u8>)> = ["a-ec", "b-ec"]
        .iter()
        .map(|l| (l.to_string(), ec_point(h, key(h, l, CKO_PUBLIC_KEY))))
        .collect();
    std::thread::scope(|s| {
        for t in 0..8 {
            let points = &points;
            s.spawn(move || {
                let h = open(0, false);
                for i in 0..20 {
                    let (l, point) = &points[(t + i) % 2];
                    let k = key(h, l, CKO_PRIVATE_KEY);
                    let digest = sha256(format!("{t}/{i}").as_bytes());
                    let sig = sign(h, &mech(CKM_ECDSA), k, &digest).expect("sign");
                    assert!(
                        p256_verifies(point, &digest, &sig),
                        "thread {t}, signature {i}"
                    );
                }
                assert_eq!(call!(C_CloseSession, h), CKR_OK);
            });
        }
    });
}

/// Issue #14's race: `max_sessions` must be checked and counted under one lock, so that threads opening sessions
/// at once never exceed the limit (core/session.rs has the deterministic unit test with a pause in between; this
/// one races through the C ABI).
#[test]
fn max_sessions_holds_under_a_race() {
    let _b = Bridge::new(&THREE.replace(
        "backends = [\"a\", \"b\", \"up\"]\n",
        "backends = [\"a\", \"b\", \"up\"]\nmax_sessions = 4\n",
    ));
    for _ in 0..50 {
        let barrier = std::sync::Barrier::new(16);
        let opened: Vec<CK_SESSION_HANDLE> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|_| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        let mut h = 0;
                        barrier.wait();
                        let rv = call!(
                            C_OpenSession,
                            0,
                            CKF_SERIAL_SESSION,
                            std::ptr::null_mut(),
                            None,
                            &mut h
                        );
                        (rv == CKR_OK).then_some(h)
                    })
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|j| j.join().expect("thread"))
                .collect()
        });
        assert!(
            opened.len() <= 4,
            "{} sessions opened with max_sessions = 4",
            opened.len()
        );
        assert_eq!(call!(C_CloseAllSessions, 0), CKR_OK);
    }
}
