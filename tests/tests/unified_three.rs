//! One token over all three backends: SoftHSM2 (upstream HSM), Vault transit (OpenBao) and AWS KMS (moto with the
//! fidelity layer). Every backend's objects are found side by side, each key signs through the same session, and
//! openssl verifies every signature; a Vault-wrapped HSM key travels between backends.

mod common;

use common::bao::{bao, ROOT_TOKEN};
use common::moto::moto;
use common::*;
use cryptoki::context::Pkcs11;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use std::sync::OnceLock;

const CKA_P11BRIDGE_BACKEND: u64 = 0x8B11_D001;

fn p() -> &'static Pkcs11 {
    static S: OnceLock<()> = OnceLock::new();
    S.get_or_init(|| {
        let b = bao();
        b.ok(&["secrets", "enable", "transit"]);
        b.ok(&["write", "-f", "transit/keys/vault-ec", "type=ecdsa-p256"]);
        let m = moto();
        m.create_key("kms-ec", "ECC_NIST_P256", "SIGN_VERIFY", &[]);
        std::env::set_var("VAULT_TEST_TOKEN", ROOT_TOKEN);
        let dir = repo_root()
            .join("target/test-env")
            .join(format!("three-{}", std::process::id()));
        let section = format!(
            r#"
[backend.vault]
kind = "vault-transit"
address = "{}"
token = "env:VAULT_TEST_TOKEN"
keys = ["vault-ec"]
cert_cache_dir = "{certs}"

[backend.kms]
kind = "aws-kms"
region = "us-east-1"
endpoint = "{}"
keys = ["alias/kms-ec"]
cert_cache_dir = "{certs}"
"#,
            b.addr,
            m.url,
            certs = dir.join("certs").display()
        );
        env_with(&["vault", "kms"], &section);
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
