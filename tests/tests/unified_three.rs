//! One token over all three backends: SoftHSM2 (upstream HSM), Vault transit (OpenBao) and AWS KMS (moto with the
//! fidelity layer). Every backend's objects are found side by side, each key signs through the same session, and
//! openssl verifies every signature; a Vault-wrapped HSM key travels between backends.

mod common;

use common::*;
use cryptoki::context::Pkcs11;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use std::sync::OnceLock;

use p11bridge_vendor::CKA_P11BRIDGE_BACKEND;

fn p() -> &'static Pkcs11 {
    static S: OnceLock<()> = OnceLock::new();
    S.get_or_init(|| {
        env_three_backends(
            "three",
            "keys = [\"vault-ec\"]",
            "keys = [\"alias/kms-ec\"]",
        );
    });
    p11()
}

fn by_backend(s: &Session, b: &str) -> Vec<ObjectHandle> {
    s.find_objects(&[Attribute::VendorDefined((
        AttributeType::VendorDefined(CKA_P11BRIDGE_BACKEND),
        b.as_bytes().to_vec(),
    ))])
    .unwrap()
}

#[test]
fn hsm_vault_and_kms_keys_side_by_side() {
    let s = user_session(p());
    assert!(by_backend(&s, "hsm").len() >= 7);
    assert_eq!(
        by_backend(&s, "vault").len(),
        3,
        "private, public, certificate"
    );
    assert_eq!(
        by_backend(&s, "kms").len(),
        3,
        "private, public, certificate"
    );
    let all = s
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
        .unwrap();
    assert!(
        all.len() >= 5,
        "3 HSM + 1 Vault + 1 KMS private keys: {}",
        all.len()
    );
    let h = sha256(b"three backends, one token");
    for label in ["ec-p256", "vault-ec", "kms-ec"] {
        let k = find_one(&s, label, ObjectClass::PRIVATE_KEY);
        let public = find_one(&s, label, ObjectClass::PUBLIC_KEY);
        let sig = s.sign(&Mechanism::Ecdsa, k, &h).unwrap();
        assert_eq!(sig.len(), 64, "{label}");
        s.verify(&Mechanism::Ecdsa, public, &h, &sig).unwrap();
        assert!(
            openssl_verify(
                &spki(&s, public),
                Some("sha256"),
                &[],
                b"three backends, one token",
                &der::ecdsa_der(&sig)
            ),
            "{label}"
        );
    }
    // The mechanism list is the union of the three.
    let mechs = p().get_mechanism_list(unified_slot(p())).unwrap();
    assert!(
        mechs.contains(&cryptoki::mechanism::MechanismType::ECDSA_SHA256),
        "from Vault and KMS, not SoftHSM"
    );
    assert!(
        mechs.contains(&cryptoki::mechanism::MechanismType::AES_KEY_WRAP),
        "from SoftHSM"
    );
}

#[test]
fn hash_and_sign_mechanisms_of_the_union_work_with_every_key() {
    // CKM_ECDSA_SHA256 is in the token's list (Vault and KMS offer it); SoftHSM 2.6.1 has only CKM_ECDSA. A
    // consumer that picks CKM_ECDSA_SHA256 for the HSM's key gets it: the core hashes, SoftHSM signs the digest.
    let s = user_session(p());
    let k = find_one(&s, "ec-p256", ObjectClass::PRIVATE_KEY);
    let public = find_one(&s, "ec-p256", ObjectClass::PUBLIC_KEY);
    let spki = spki(&s, public);
    let data = b"hash-and-sign, emulated for the HSM key".to_vec();
    let sig = s.sign(&Mechanism::EcdsaSha256, k, &data).unwrap();
    assert_eq!(sig.len(), 64);
    assert!(openssl_verify(
        &spki,
        Some("sha256"),
        &[],
        &data,
        &der::ecdsa_der(&sig)
    ));
    s.verify(&Mechanism::EcdsaSha256, public, &data, &sig)
        .unwrap();
    // Multi-part, and the two-call convention through the emulation.
    s.sign_init(&Mechanism::EcdsaSha384, k).unwrap();
    s.sign_update(&data[..10]).unwrap();
    s.sign_update(&data[10..]).unwrap();
    let sig = s.sign_final().unwrap();
    assert!(openssl_verify(
        &spki,
        Some("sha384"),
        &[],
        &data,
        &der::ecdsa_der(&sig)
    ));
    let mut bad = sig.clone();
    bad[5] ^= 1;
    assert!(s
        .verify(&Mechanism::EcdsaSha384, public, &data, &bad)
        .is_err());
}
