//! The KMS requests of a first enumeration without a tag filter, counted (a process of its own, one test, so that
//! nothing else talks to its moto): one `GetPublicKey` per enabled asymmetric key and no `DescribeKey` for it;
//! `DescribeKey` only for the keys `GetPublicKey` refuses (symmetric, HMAC, disabled, pending deletion), of which
//! the symmetric and HMAC keys are exposed and the others not. A 5xx on `GetPublicKey` is an endpoint fault: the
//! enumeration fails (nothing exposed, no `DescribeKey` fallback) and the next search reads the keys again.

mod common;

use common::moto::moto;
use common::*;
use cryptoki::object::{Attribute, AttributeType};
use cryptoki::session::Session;

use p11bridge_vendor::CKA_P11BRIDGE_BACKEND;

fn kms_objects(s: &Session, label: Option<&str>) -> Option<usize> {
    let mut t = vec![Attribute::VendorDefined((
        AttributeType::VendorDefined(CKA_P11BRIDGE_BACKEND),
        b"kms".to_vec(),
    ))];
    if let Some(l) = label {
        t.push(Attribute::Label(l.into()));
    }
    s.find_objects(&t).ok().map(|v| v.len())
}

#[test]
fn first_enumeration_asks_get_public_key_first() {
    let m = moto();
    m.create_key("e-ec256", "ECC_NIST_P256", "SIGN_VERIFY", &[]);
    m.create_key("e-ec384", "ECC_NIST_P384", "SIGN_VERIFY", &[]);
    m.create_key("e-rsa-enc", "RSA_2048", "ENCRYPT_DECRYPT", &[]);
    m.create_key("e-hmac", "HMAC_256", "GENERATE_VERIFY_MAC", &[]);
    m.create_key("e-aes", "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", &[]);
    let d = m.create_key("e-disabled", "ECC_NIST_P256", "SIGN_VERIFY", &[]);
    m.boto(&format!("kms.disable_key(KeyId='{d}')"));
    let p = m.create_key("e-pending", "RSA_2048", "SIGN_VERIFY", &[]);
    m.boto(&format!(
        "kms.schedule_key_deletion(KeyId='{p}', PendingWindowInDays=7)"
    ));
    let dir = repo_root()
        .join("target/test-env")
        .join(format!("kms-enum-{}", std::process::id()));
    env_with(
        &["kms"],
        &format!(
            r#"
[backend.kms]
kind = "aws-kms"
region = "us-east-1"
endpoint = "{}"
discover = true
cert_cache_dir = "{}"
max_attempts = 1
breaker_failures = 1000
"#,
            m.url,
            dir.join("certs").display()
        ),
    );
    let s = user_session(p11());

    // An endpoint fault on GetPublicKey: the enumeration fails as a whole (no fallback to DescribeKey).
    m.reset();
    m.fault("GetPublicKey", "500", 1000, 0);
    assert!(
        matches!(kms_objects(&s, None), None | Some(0)),
        "nothing exposed while GetPublicKey fails"
    );
    assert!(m.count("GetPublicKey") >= 1);
    assert_eq!(m.count("DescribeKey"), 0, "{:?}", m.stats());

    // Healthy again: the next search reads the keys.
    m.reset();
    assert_eq!(kms_objects(&s, None), Some(3 * 3 + 2));
    let stats = m.stats();
    assert_eq!(m.count("ListAliases"), 1, "{stats:?}");
    assert_eq!(m.count("ListKeys"), 1, "{stats:?}");
    assert_eq!(m.count("GetPublicKey"), 7, "one per key: {stats:?}");
    assert_eq!(
        m.count("DescribeKey"),
        4,
        "only HMAC, AES, disabled, pending: {stats:?}"
    );
    // The two signing keys' certificates (self-signed through KMS; the decrypt-only key's is issued locally).
    assert_eq!(m.count("Sign"), 2, "{stats:?}");
    assert_eq!(m.total(), 15, "{stats:?}");
    for (label, n) in [
        ("e-ec256", 3),
        ("e-ec384", 3),
        ("e-rsa-enc", 3),
        ("e-hmac", 1),
        ("e-aes", 1),
        ("e-disabled", 0),
        ("e-pending", 0),
    ] {
        assert_eq!(kms_objects(&s, Some(label)), Some(n), "{label}");
    }
}
