//! Panic containment: a backend that panics inside an operation (the test-only `kind = "test-panic"`, enabled by
//! `P11BRIDGE_ENABLE_TEST_BACKENDS=1`) costs the caller that call only. Each panicking call returns
//! `CKR_GENERAL_ERROR`; the process lives on; the same session and new sessions keep signing with the SoftHSM2 key
//! of the same unified token (no lock is poisoned, no operation left half-active); `C_Finalize` and
//! `C_Initialize` work afterwards. Without the environment variable the kind is refused at `C_Initialize`.
//!
//! The kind is compiled into the module only with the cargo feature `test-backends`: `run-tests.sh` builds with
//! `--features p11bridge/test-backends`; the Debian package (scripts/package.sh) is built without it.
//!
//! Members of the unified token: `hsm` (SoftHSM2), `boom` (its key "boom-key" panics in C_SignInit, a search for
//! its label, C_GetAttributeValue, and in the members' login at C_Login) and `boom2` (its key "boom2-key" starts
//! operations but panics in C_Sign and C_Verify).

mod common;

use common::*;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;

use p11bridge_vendor::CKA_P11BRIDGE_BACKEND;

const SECTIONS: &str = r#"
[backend.boom]
kind = "test-panic"
label = "boom-key"
panic_in = ["sign_init", "verify_init", "find", "get_attribute", "login"]

[backend.boom2]
kind = "test-panic"
label = "boom2-key"
panic_in = ["sign", "verify"]
"#;

fn general_error<T: std::fmt::Debug>(what: &str, r: Result<T, Error>) {
    match r {
        Err(Error::Pkcs11(RvError::GeneralError, _)) => {}
        other => panic!("{what}: expected CKR_GENERAL_ERROR, got {other:?}"),
    }
}

fn key_of(s: &Session, backend: &str) -> ObjectHandle {
    let v = s
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::VendorDefined((
                AttributeType::VendorDefined(CKA_P11BRIDGE_BACKEND),
                backend.as_bytes().to_vec(),
            )),
        ])
        .expect("find by backend");
    assert_eq!(v.len(), 1, "one private key in {backend}");
    v[0]
}

/// Signs with SoftHSM2's EC key and verifies the signature through the bridge.
fn hsm_signs(s: &Session, what: &str) {
    let key = find_one(s, "ec-p256", ObjectClass::PRIVATE_KEY);
    let public = find_one(s, "ec-p256", ObjectClass::PUBLIC_KEY);
    let digest = sha256(what.as_bytes());
    let sig = s
        .sign(&Mechanism::Ecdsa, key, &digest)
        .unwrap_or_else(|e| panic!("{what}: sign with the SoftHSM2 key: {e}"));
    s.verify(&Mechanism::Ecdsa, public, &digest, &sig)
        .unwrap_or_else(|e| panic!("{what}: verify: {e}"));
}

fn login(s: &Session) {
    match s.login(UserType::User, Some(&AuthPin::new(BRIDGE_PIN.into()))) {
        Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("login: {e}"),
    }
}

fn init() -> Pkcs11 {
    let p = Pkcs11::new(bridge_so()).expect("load libp11bridge.so");
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect(
            "C_Initialize (kind = \"test-panic\" needs a module built with `--features p11bridge/test-backends`, \
             as run-tests.sh builds it)",
        );
    p
}

#[test]
fn a_panicking_backend_costs_one_call_only() {
    let env = env_with(&["boom", "boom2"], SECTIONS);
    let log = env.dir.join("bridge.log");
    std::env::set_var("P11BRIDGE_LOG", "error");
    std::env::set_var("P11BRIDGE_LOG_FILE", &log);

    // Without the switch the kind does not exist: C_Initialize fails (configuration error).
    std::env::remove_var("P11BRIDGE_ENABLE_TEST_BACKENDS");
    {
        let p = Pkcs11::new(bridge_so()).expect("load libp11bridge.so");
        let r = p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
        assert!(
            r.is_err(),
            "test-panic accepted without P11BRIDGE_ENABLE_TEST_BACKENDS"
        );
    }
    std::env::set_var("P11BRIDGE_ENABLE_TEST_BACKENDS", "1");

    let p = init();
    let slot = unified_slot(&p);
    let s = p.open_rw_session(slot).expect("open session");
    // C_Login: boom's login panics inside the unified token's login of its members; the login itself succeeds
    // (a member whose login fails is logged, as for any backend error).
    login(&s);
    hsm_signs(&s, "after a panicking member login");

    let boom = key_of(&s, "boom");
    let boom2 = key_of(&s, "boom2");
    let digest = sha256(b"boom");

    // Each panicking call: CKR_GENERAL_ERROR, then the same session signs with the SoftHSM2 key.
    general_error(
        "C_SignInit (panics)",
        s.sign(&Mechanism::Ecdsa, boom, &digest),
    );
    hsm_signs(&s, "after C_SignInit panicked");

    general_error(
        "C_VerifyInit (panics)",
        s.verify(&Mechanism::Ecdsa, boom, &digest, &[0u8; 64]),
    );
    hsm_signs(&s, "after C_VerifyInit panicked");

    general_error(
        "C_FindObjectsInit (panics)",
        s.find_objects(&[Attribute::Label("boom-key".into())]),
    );
    hsm_signs(&s, "after C_FindObjectsInit panicked");
    // The search state is not left active: a new search works.
    assert_eq!(
        s.find_objects(&[Attribute::Label("ec-p256".into())])
            .expect("find after a panic")
            .len(),
        2
    );

    general_error(
        "C_GetAttributeValue (panics)",
        s.get_attributes(boom, &[AttributeType::Label]),
    );
    hsm_signs(&s, "after C_GetAttributeValue panicked");

    // C_Sign panics inside the session lock, with the operation active: it ends like any failed C_Sign.
    general_error("C_Sign (panics)", s.sign(&Mechanism::Ecdsa, boom2, &digest));
    hsm_signs(&s, "after C_Sign panicked");
    general_error(
        "C_Sign (panics again: its operation was ended and restarts)",
        s.sign(&Mechanism::Ecdsa, boom2, &digest),
    );
    general_error(
        "C_Verify (panics)",
        s.verify(&Mechanism::Ecdsa, boom2, &digest, &[0u8; 64]),
    );
    hsm_signs(&s, "after C_Verify panicked");

    // A new session, and another thread.
    let s2 = p.open_ro_session(slot).expect("new session after panics");
    hsm_signs(&s2, "a new session");
    std::thread::scope(|sc| {
        sc.spawn(|| {
            let s3 = p.open_ro_session(slot).expect("session in another thread");
            hsm_signs(&s3, "another thread");
            general_error(
                "C_Sign in another thread (panics)",
                s3.sign(&Mechanism::Ecdsa, boom2, &digest),
            );
        });
    });
    hsm_signs(&s, "the first session, after the other thread's panic");
    drop(s2);
    drop(s);

    // C_Finalize and C_Initialize work; the new module state is usable.
    p.finalize().expect("C_Finalize");
    let p = init();
    let s = p
        .open_rw_session(unified_slot(&p))
        .expect("open after re-init");
    login(&s);
    hsm_signs(&s, "after C_Finalize + C_Initialize");
    general_error(
        "C_Sign after re-init (panics)",
        s.sign(&Mechanism::Ecdsa, key_of(&s, "boom2"), &digest),
    );
    hsm_signs(&s, "after the last panic");
    drop(s);
    p.finalize().expect("C_Finalize");

    // The panics were caught where the log says so (and not, say, turned into errors before the backend).
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let caught = text.matches("panic caught").count();
    assert!(
        caught >= 9,
        "expected the caught panics in the log, found {caught}:\n{text}"
    );
}
