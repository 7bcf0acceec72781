//! What the unified token refuses because it is not one upstream token, and that a slow backend holds up only its
//! own callers.

use crate::common::*;
use cryptoki_sys::*;
use p11bridge_backends::fake::script;
use std::ptr::null_mut;
use std::time::{Duration, Instant};

#[test]
fn token_administration_is_not_the_unified_tokens() {
    let _b = Bridge::new(THREE);
    let h = open(0, true);
    assert_eq!(login(h, CKU_SO, SO_PIN), CKR_OK);
    let pin = b"new-pin";
    assert_eq!(
        call!(C_InitPIN, h, pin.as_ptr() as *mut _, 7),
        CKR_FUNCTION_NOT_SUPPORTED
    );
    assert_eq!(
        call!(
            C_SetPIN,
            h,
            pin.as_ptr() as *mut _,
            7,
            pin.as_ptr() as *mut _,
            7
        ),
        CKR_FUNCTION_NOT_SUPPORTED
    );
    let mut len = 0;
    assert_eq!(
        call!(C_GetOperationState, h, null_mut(), &mut len),
        CKR_FUNCTION_NOT_SUPPORTED
    );
}

#[test]
fn a_key_is_digested_only_where_the_digest_runs() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    assert_eq!(call!(C_DigestInit, h, &mut mech(CKM_SHA256)), CKR_OK);
    let remote = key(h, "a-aes", CKO_SECRET_KEY);
    assert_eq!(call!(C_DigestKey, h, remote), CKR_KEY_INDIGESTIBLE);
    assert_eq!(call!(C_DigestKey, h, 0xdead), CKR_KEY_HANDLE_INVALID);
}

#[test]
fn a_dual_function_update_across_two_backends_is_refused() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    assert_eq!(call!(C_DigestInit, h, &mut mech(CKM_SHA256)), CKR_OK);
    let aes = key(h, "a-aes", CKO_SECRET_KEY);
    let m = p11bridge_vendor::CKM_P11BRIDGE_VAULT_ENCRYPT;
    assert_eq!(call!(C_EncryptInit, h, &mut mech(m), aes), CKR_OK);
    let data = [1u8; 16];
    let mut out = [0u8; 64];
    let mut len = 64;
    assert_eq!(
        call!(
            C_DigestEncryptUpdate,
            h,
            data.as_ptr() as *mut _,
            16,
            out.as_mut_ptr(),
            &mut len
        ),
        CKR_FUNCTION_NOT_SUPPORTED
    );
}

#[test]
fn a_slow_backend_holds_up_only_its_own_callers() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let slow_key = key(h, "a-ec", CKO_PRIVATE_KEY);
    let fast_key = key(h, "b-ec", CKO_PRIVATE_KEY);
    script("a").set_latency(Duration::from_millis(800));
    std::thread::scope(|s| {
        let slow = s.spawn(|| {
            let h = open(0, false);
            let started = Instant::now();
            sign(h, &mech(CKM_ECDSA), slow_key, &sha256(b"slow")).expect("slow sign");
            started.elapsed()
        });
        std::thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        sign(h, &mech(CKM_ECDSA), fast_key, &sha256(b"fast")).expect("fast sign");
        assert!(
            started.elapsed() < Duration::from_millis(400),
            "b waited for a: {:?}",
            started.elapsed()
        );
        assert!(slow.join().expect("thread") >= Duration::from_millis(800));
    });
    script("a").set_latency(Duration::ZERO);
}
