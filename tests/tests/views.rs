//! Slot views: several slots over the same backends, each showing a filtered subset (by key type, by label), for
//! consumers that cannot cope with everything (libp11 0.4.12 fails on any Ed25519 key in a token).

mod common;

use common::*;
use cryptoki::context::Pkcs11;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

fn p() -> &'static Pkcs11 {
    env_with(
        &[],
        r#"
[[slot]]
label = "no-ed25519"
user_pin = "env:P11BRIDGE_PIN"
backends = ["hsm"]
key_types = ["rsa", "ec"]

[[slot]]
label = "rsa-only-by-label"
user_pin = "env:P11BRIDGE_PIN"
backends = ["hsm"]
labels = ["rsa-*"]
"#,
    );
    p11()
}

fn key_types(label: &str) -> Vec<(KeyType, String)> {
    let p = p();
    let s = p.open_rw_session(slot_by_label(p, label)).unwrap();
    s.login(UserType::User, Some(&AuthPin::new(BRIDGE_PIN.into())))
        .ok();
    let mut v = Vec::new();
    for h in s.find_objects(&[]).unwrap() {
        let a = s
            .get_attributes(
                h,
                &[
                    AttributeType::KeyType,
                    AttributeType::Label,
                    AttributeType::Class,
                ],
            )
            .unwrap();
        let mut kt = None;
        let mut l = String::new();
        for x in a {
            match x {
                Attribute::KeyType(k) => kt = Some(k),
                Attribute::Label(b) => l = String::from_utf8_lossy(&b).into_owned(),
                _ => {}
            }
        }
        if let Some(k) = kt {
            v.push((k, l));
        }
    }
    v
}

#[test]
fn a_view_without_ed25519_keys() {
    let all = key_types("unified");
    assert!(all.iter().any(|(k, _)| *k == KeyType::EC_EDWARDS));
    let view = key_types("no-ed25519");
    assert!(
        !view.iter().any(|(k, _)| *k == KeyType::EC_EDWARDS),
        "{view:?}"
    );
    assert!(!view.iter().any(|(k, _)| *k == KeyType::AES), "{view:?}");
    assert!(
        view.iter().any(|(k, _)| *k == KeyType::RSA) && view.iter().any(|(k, _)| *k == KeyType::EC)
    );
    // The same keys: a view signs with them.
    let p = p();
    let s = p.open_rw_session(slot_by_label(p, "no-ed25519")).unwrap();
    s.login(UserType::User, Some(&AuthPin::new(BRIDGE_PIN.into())))
        .ok();
    let k = find_one(&s, "ec-p256", ObjectClass::PRIVATE_KEY);
    let pubk = find_one(&s, "ec-p256", ObjectClass::PUBLIC_KEY);
    let h = sha256(b"view");
    let sig = s
        .sign(&cryptoki::mechanism::Mechanism::Ecdsa, k, &h)
        .unwrap();
    assert!(openssl_verify(
        &spki(&s, pubk),
        Some("sha256"),
        &[],
        b"view",
        &der::ecdsa_der(&sig)
    ));
}

#[test]
fn a_view_by_label() {
    let view = key_types("rsa-only-by-label");
    assert!(!view.is_empty());
    assert!(view.iter().all(|(_, l)| l.starts_with("rsa-")), "{view:?}");
}
