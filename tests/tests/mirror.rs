//! Mirror slots: every SoftHSM slot exposed one-to-one, with C_InitToken, C_InitPIN, C_SetPIN and SO login passed
//! through, so a client that initializes its own token works through the bridge.

mod common;

use common::*;
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

fn rv(e: Error) -> RvError {
    match e {
        Error::Pkcs11(rv, _) => rv,
        other => panic!("not a PKCS#11 error: {other}"),
    }
}

fn pin(s: &str) -> AuthPin {
    AuthPin::new(s.into())
}

#[test]
fn initialize_a_token_through_the_bridge() {
    let p = p11();
    let spare = p
        .get_all_slots()
        .unwrap()
        .into_iter()
        .find(|s| {
            p.get_token_info(*s)
                .map(|t| !t.token_initialized())
                .unwrap_or(false)
        })
        .expect("SoftHSM's spare slot is mirrored");

    p.init_token(spare, &pin("so-secret-1"), "fresh").unwrap();
    let ti = p.get_token_info(spare).unwrap();
    assert_eq!(ti.label(), "fresh");
    assert!(ti.token_initialized());
    assert!(!ti.user_pin_initialized());

    let s = p.open_rw_session(spare).unwrap();
    assert_eq!(
        rv(s.login(UserType::So, Some(&pin("wrong"))).unwrap_err()),
        RvError::PinIncorrect
    );
    s.login(UserType::So, Some(&pin("so-secret-1"))).unwrap();
    assert_eq!(
        format!("{:?}", s.get_session_info().unwrap().session_state()),
        "RwSecurityOfficer"
    );
    s.init_pin(&pin("user-1111")).unwrap();
    s.logout().unwrap();
    assert_eq!(rv(s.logout().unwrap_err()), RvError::UserNotLoggedIn);

    s.login(UserType::User, Some(&pin("user-1111"))).unwrap();
    s.set_pin(&pin("user-1111"), &pin("user-2222")).unwrap();
    s.logout().unwrap();
    assert_eq!(
        rv(s.login(UserType::User, Some(&pin("user-1111")))
            .unwrap_err()),
        RvError::PinIncorrect
    );
    s.login(UserType::User, Some(&pin("user-2222"))).unwrap();

    // A key made on the new token, used at once, verified by openssl.
    let p256 = vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let (pubk, privk) = s
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::EcParams(p256),
                Attribute::Token(true),
                Attribute::Label(b"k".to_vec()),
            ],
            &[
                Attribute::Token(true),
                Attribute::Sign(true),
                Attribute::Label(b"k".to_vec()),
            ],
        )
        .unwrap();
    let h = sha256(b"mirror");
    let sig = s.sign(&Mechanism::Ecdsa, privk, &h).unwrap();
    assert!(openssl_verify(
        &spki(&s, pubk),
        Some("sha256"),
        &[],
        b"mirror",
        &der::ecdsa_der(&sig)
    ));
    assert_eq!(
        s.find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
            .unwrap(),
        vec![privk]
    );

    // Re-initializing with a session open is refused, as the spec says.
    assert_eq!(
        rv(p.init_token(spare, &pin("so-secret-1"), "again")
            .unwrap_err()),
        RvError::SessionExists
    );
    drop(s);
    p.init_token(spare, &pin("so-secret-1"), "again").unwrap();
    assert_eq!(p.get_token_info(spare).unwrap().label(), "again");
}

#[test]
fn unified_slot_refuses_init_token() {
    let p = p11();
    let e = p
        .init_token(unified_slot(p), &pin(BRIDGE_SO_PIN), "x")
        .unwrap_err();
    assert_eq!(rv(e), RvError::FunctionNotSupported);
}
