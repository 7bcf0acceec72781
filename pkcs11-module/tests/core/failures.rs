//! Scripted backend failures and panics: the caller gets the failure (a panic: `CKR_GENERAL_ERROR`), the other
//! backends go on serving, and the module stays usable. The test backends are refused unless enabled.

use crate::common::*;
use cryptoki_sys::*;
use p11bridge_backends::fake::script;
use std::ptr::null_mut;

#[test]
fn a_scripted_failure_from_the_configuration() {
    let _b = Bridge::new(&THREE.replace(
        "kind = \"test-fake\"\nkeys",
        "kind = \"test-fake\"\nfail = { sign = \"CKR_DEVICE_MEMORY\" }\nkeys",
    ));
    let h = user_session();
    let k = key(h, "a-ec", CKO_PRIVATE_KEY);
    assert_eq!(
        sign(h, &mech(CKM_ECDSA), k, &sha256(b"x")),
        Err(CKR_DEVICE_MEMORY)
    );
    // b is configured without the failure.
    let kb = key(h, "b-ec", CKO_PRIVATE_KEY);
    assert!(sign(h, &mech(CKM_ECDSA), kb, &sha256(b"x")).is_ok());
}

#[test]
fn a_panic_in_an_operation_is_a_general_error_and_nothing_more() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let k = key(h, "a-ec", CKO_PRIVATE_KEY);
    script("a").panic_in("sign", true);
    assert_eq!(
        sign(h, &mech(CKM_ECDSA), k, &sha256(b"boom")),
        Err(CKR_GENERAL_ERROR)
    );
    // The operation ended; the session and the other backends work.
    assert_eq!(sign_init(h, &mech(CKM_ECDSA), k), CKR_OK);
    assert_eq!(call!(C_SessionCancel, h, CKF_SIGN), CKR_OK);
    let kb = key(h, "b-ec", CKO_PRIVATE_KEY);
    assert!(sign(h, &mech(CKM_ECDSA), kb, &sha256(b"b")).is_ok());
    script("a").panic_in("sign", false);
    assert!(sign(h, &mech(CKM_ECDSA), k, &sha256(b"a again")).is_ok());
    // Another thread, a new session.
    std::thread::spawn(|| {
        let h = open(0, false);
        let k = key(h, "a-ec", CKO_PRIVATE_KEY);
        assert!(sign(h, &mech(CKM_ECDSA), k, &sha256(b"thread")).is_ok());
    })
    .join()
    .expect("thread");
}

#[test]
fn a_panic_in_a_search_or_a_member_login_is_contained() {
    let _b = Bridge::new(THREE);
    let h = open(0, true);
    script("up").panic_in("find", true);
    assert_eq!(try_find(h, &[]), Err(CKR_GENERAL_ERROR));
    script("up").panic_in("find", false);
    assert_eq!(
        find(h, &[class(CKO_PUBLIC_KEY)]).len(),
        6,
        "a new search works"
    );
    // A member whose login panics is a member whose login failed: the token's login succeeds, the other
    // members' private keys are there, and the failure is said (as tests/tests/panic.rs expects).
    script("up").panic_in("login", true);
    let _ = last_error();
    assert_eq!(login(h, CKU_USER, USER_PIN), CKR_OK);
    assert!(last_error().1.contains("backend \"up\""));
    script("up").panic_in("login", false);
    assert_eq!(find(h, &[class(CKO_PRIVATE_KEY)]).len(), 6);
}

#[test]
fn a_backend_that_cannot_list_its_keys_hides_only_its_keys() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    script("b").fail("list", Some(CKR_DEVICE_ERROR));
    let keys = find(h, &[class(CKO_PRIVATE_KEY)]);
    let backends: Vec<String> = keys.iter().map(|k| attr_str(h, *k, CKA_BACKEND)).collect();
    assert!(backends.iter().all(|b| b == "a"), "{backends:?}");
    assert_eq!(keys.len(), 2);
    script("b").fail("list", None);
    assert_eq!(find(h, &[class(CKO_PRIVATE_KEY)]).len(), 6);
}

#[test]
fn a_search_that_fails_everywhere_fails() {
    let _b = Bridge::new(&THREE.replace("backends = [\"a\", \"b\", \"up\"]", "backends = [\"a\"]"));
    let h = open(0, false);
    script("a").fail("list", Some(CKR_DEVICE_ERROR));
    assert_eq!(try_find(h, &[]), Err(CKR_DEVICE_ERROR));
}

#[test]
fn test_backends_are_refused_unless_enabled() {
    let b = Bridge::configured(THREE);
    std::env::remove_var(p11bridge_backends::fake::ENABLE_ENV);
    assert_eq!(call!(C_Initialize, null_mut()), CKR_GENERAL_ERROR);
    let (rv, text) = last_error();
    assert_eq!(rv, CKR_GENERAL_ERROR);
    assert!(text.contains("unknown kind \"test-fake\""), "{text}");
    std::env::set_var(p11bridge_backends::fake::ENABLE_ENV, "1");
    assert_eq!(call!(C_Initialize, null_mut()), CKR_OK);
    drop(b);
}

#[test]
fn a_bad_fake_configuration_is_a_configuration_error() {
    let _b = Bridge::configured(&THREE.replace("type = \"ed25519\"", "type = \"ed448\""));
    assert_eq!(call!(C_Initialize, null_mut()), CKR_GENERAL_ERROR);
    assert!(last_error().1.contains("ed448"));
}
