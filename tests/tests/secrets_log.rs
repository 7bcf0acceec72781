//! Secrets never reach the log: every operation runs with `P11BRIDGE_LOG=trace` into a file, and the file must not
//! contain a PIN (right or wrong), the Vault token, or any plaintext.

mod common;

use common::bao::{bao, ROOT_TOKEN};
use common::*;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

#[test]
fn trace_log_holds_no_secret() {
    let dir = repo_root()
        .join("target/test-env")
        .join(format!("secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("trace.log");
    std::env::set_var("P11BRIDGE_LOG", "trace");
    std::env::set_var("P11BRIDGE_LOG_FILE", &log);
    let b = bao();
    b.ok(&["secrets", "enable", "transit"]);
    b.ok(&["write", "-f", "transit/keys/s-ec", "type=ecdsa-p256"]);
    b.ok(&["write", "-f", "transit/keys/s-aes", "type=aes256-gcm96"]);
    std::env::set_var("VAULT_TEST_TOKEN", ROOT_TOKEN);
    env_with(
        &["vault"],
        &format!(
            "[backend.vault]\nkind = \"vault-transit\"\naddress = \"{}\"\ntoken = \"env:VAULT_TEST_TOKEN\"\nkeys = [\"s-ec\", \"s-aes\"]\ncert_cache_dir = \"{}\"\n",
            b.addr,
            dir.join("certs").display()
        ),
    );
    let p = p11();
    let s = p.open_rw_session(unified_slot(p)).unwrap();
    let wrong = "wrong-pin-QWERTY-9182";
    assert!(s
        .login(UserType::User, Some(&AuthPin::new(wrong.into())))
        .is_err());
    s.login(UserType::User, Some(&AuthPin::new(BRIDGE_PIN.into())))
        .unwrap();
    let plaintext = b"PLAINTEXT-MARKER-7d1e0c55".to_vec();
    // HSM: sign, AES encrypt/decrypt with a known key value.
    let k = find_one(&s, "ec-p256", ObjectClass::PRIVATE_KEY);
    s.sign(&Mechanism::Ecdsa, k, &sha256(&plaintext)).unwrap();
    let key_value = b"KEYVALUE-MARKER-0123456789abcdef".to_vec();
    let aes = s
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(false),
            Attribute::Value(key_value.clone()),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
        ])
        .unwrap();
    let ct = s
        .encrypt(&Mechanism::AesCbcPad([1; 16]), aes, &plaintext)
        .unwrap();
    assert_eq!(
        s.decrypt(&Mechanism::AesCbcPad([1; 16]), aes, &ct).unwrap(),
        plaintext
    );
    // Vault: sign and the vendor encryption (plaintext goes to Vault base64-encoded, never to the log).
    let vk = find_one(&s, "s-ec", ObjectClass::PRIVATE_KEY);
    s.sign(&Mechanism::EcdsaSha256, vk, &plaintext).unwrap();
    let va = find_one(&s, "s-aes", ObjectClass::SECRET_KEY);
    let mech = Mechanism::VendorDefined(
        cryptoki::mechanism::vendor_defined::VendorDefinedMechanism::new::<()>(
            cryptoki::mechanism::MechanismType::new_vendor_defined(
                p11bridge_vendor::CKM_P11BRIDGE_VAULT_ENCRYPT,
            )
            .unwrap(),
            None,
        ),
    );
    let vct = s.encrypt(&mech, va, &plaintext).unwrap();
    assert_eq!(s.decrypt(&mech, va, &vct).unwrap(), plaintext);
    s.logout().unwrap();
    drop(s);

    let text = std::fs::read_to_string(&log).expect("the trace log was written");
    assert!(
        text.lines().count() > 20,
        "the log traced the calls:\n{text}"
    );
    let b64 = |v: &[u8]| {
        use std::fmt::Write;
        // The standard base64 of the marker, as it travels to Vault.
        let t = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut o = String::new();
        for c in v.chunks(3) {
            let n = (c[0] as u32) << 16
                | (*c.get(1).unwrap_or(&0) as u32) << 8
                | *c.get(2).unwrap_or(&0) as u32;
            for i in 0..=c.len() {
                let _ = o.write_char(t[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        o
    };
    for (what, needle) in [
        ("the user PIN", BRIDGE_PIN.to_string()),
        ("a wrong PIN", wrong.to_string()),
        ("the Vault token", ROOT_TOKEN.to_string()),
        (
            "plaintext",
            String::from_utf8_lossy(&plaintext).into_owned(),
        ),
        ("plaintext (base64)", b64(&plaintext[..24])),
        (
            "a key value",
            String::from_utf8_lossy(&key_value).into_owned(),
        ),
    ] {
        assert!(!text.contains(&needle), "{what} appears in the trace log");
    }
}
