//! Never silent: `C_P11BRIDGE_GetLastError` names the backend and the cause of the calling thread's last failure.

use crate::common::*;
use cryptoki_sys::*;
use p11bridge_backends::fake::script;

#[test]
fn a_failed_operation_names_its_backend_and_cause() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let k = key(h, "b-ec", CKO_PRIVATE_KEY);
    script("b").fail("sign", Some(CKR_DEVICE_ERROR));
    assert_eq!(
        sign(h, &mech(CKM_ECDSA), k, &sha256(b"x")),
        Err(CKR_DEVICE_ERROR)
    );
    let (rv, text) = last_error();
    assert_eq!(rv, CKR_DEVICE_ERROR);
    assert!(text.contains("backend \"b\""), "{text}");
    assert!(text.contains("b-ec"), "names the key: {text}");
    assert!(
        text.contains("scripted CKR_DEVICE_ERROR"),
        "the backend's own words: {text}"
    );
    // Read once: the record is cleared.
    assert_eq!(last_error(), (CKR_OK, String::new()));
}

#[test]
fn hidden_keys_are_explained_although_the_search_succeeds() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    script("a").fail("list", Some(CKR_DEVICE_ERROR));
    let _ = last_error();
    assert!(!find(h, &[]).is_empty());
    let (_, text) = last_error();
    assert!(text.contains("\"a\""), "{text}");
    assert!(text.contains("cannot list its keys"), "{text}");
}

#[test]
fn a_bad_configuration_names_file_line_and_key() {
    let b = Bridge::configured(&THREE.replace("[backend.up]", "[backend.up]\nbogus = 1"));
    assert_eq!(call!(C_Initialize, std::ptr::null_mut()), CKR_GENERAL_ERROR);
    let (rv, text) = last_error();
    assert_eq!(rv, CKR_GENERAL_ERROR);
    assert!(text.contains("p11bridge.toml"), "{text}");
    assert!(text.contains("backend.up"), "{text}");
    assert!(text.contains("bogus"), "{text}");
    drop(b);
}
