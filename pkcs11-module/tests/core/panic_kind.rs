//! `kind = "test-panic"` (the end-to-end panic-containment backend) in-process: its key panics where configured,
//! the caller gets `CKR_GENERAL_ERROR`, and the other backends keep serving.

use crate::common::*;
use cryptoki_sys::*;

fn config() -> String {
    THREE.replace("backends = [\"a\", \"b\", \"up\"]", "backends = [\"a\", \"boom\"]")
        + "\n[backend.boom]\nkind = \"test-panic\"\nlabel = \"boom-key\"\npanic_in = [\"sign_init\", \"get_attribute\"]\n"
}

#[test]
fn the_panicking_key_costs_its_callers_one_call_each() {
    let _b = Bridge::new(&config());
    let h = user_session();
    let boom = find(h, &[backend("boom"), class(CKO_PRIVATE_KEY)]);
    assert_eq!(boom.len(), 1);
    assert_eq!(sign_init(h, &mech(CKM_ECDSA), boom[0]), CKR_GENERAL_ERROR);
    assert_eq!(attr(h, boom[0], CKA_LABEL), Err(CKR_GENERAL_ERROR));
    let k = key(h, "a-ec", CKO_PRIVATE_KEY);
    let digest = sha256(b"after the panics");
    let sig = sign(h, &mech(CKM_ECDSA), k, &digest).expect("a still signs");
    assert!(p256_verifies(
        &ec_point(h, key(h, "a-ec", CKO_PUBLIC_KEY)),
        &digest,
        &sig
    ));
}

#[test]
fn an_unknown_operation_in_panic_in_is_a_configuration_error() {
    let _b = Bridge::configured(&config().replace("\"sign_init\", ", "\"nope\", "));
    assert_eq!(call!(C_Initialize, std::ptr::null_mut()), CKR_GENERAL_ERROR);
    assert!(
        last_error().1.contains("unknown operation \"nope\""),
        "{}",
        last_error().1
    );
}
