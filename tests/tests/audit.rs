//! The audit trail: every key use, lifecycle event and login (failed ones too) is one JSON line with time, pid,
//! process, token, object label and id, backend, mechanism, result and latency — and never a PIN or data.

mod common;

use common::*;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

#[test]
fn key_uses_lifecycle_and_logins_are_recorded_without_secrets() {
    let dir = repo_root()
        .join("target/test-env")
        .join(format!("audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("audit.jsonl");
    env_with(&[], &format!("[audit]\nfile = \"{}\"\n", log.display()));
    let p = p11();
    let s = p.open_rw_session(unified_slot(p)).unwrap();
    assert!(s
        .login(UserType::User, Some(&AuthPin::new("wrong-pin-xyz".into())))
        .is_err());
    s.login(UserType::User, Some(&AuthPin::new(BRIDGE_PIN.into())))
        .unwrap();
    let k = find_one(&s, "ec-p256", ObjectClass::PRIVATE_KEY);
    let secret_data = [0x5au8; 32];
    s.sign(&Mechanism::Ecdsa, k, &secret_data).unwrap();
    let aes = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::ValueLen(32.into()),
                Attribute::Token(false),
                Attribute::Label(b"audited".to_vec()),
            ],
        )
        .unwrap();
    s.destroy_object(aes).unwrap();
    s.logout().unwrap();

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let find = |pred: &dyn Fn(&str) -> bool| lines.iter().find(|l| pred(l)).copied();
    let failed = find(&|l| l.contains("\"event\":\"login\"") && l.contains("CKR_PIN_INCORRECT"))
        .expect("failed login");
    assert!(failed.contains("\"user\":\"user\""));
    assert!(
        find(&|l| l.contains("\"event\":\"login\"") && l.contains("\"rv\":\"CKR_OK\"")).is_some()
    );
    let sign = find(&|l| l.contains("\"event\":\"sign\"")).expect("sign recorded");
    for field in [
        "\"object\":\"ec-p256\"",
        "\"id\":\"02\"",
        "\"backend\":\"hsm\"",
        "\"mechanism\":\"CKM_ECDSA\"",
        "\"rv\":\"CKR_OK\"",
        "\"token\":\"unified\"",
        "\"latency_us\":",
        "\"pid\":",
        "\"process\":",
        "\"time\":\"20",
    ] {
        assert!(sign.contains(field), "{field} missing in {sign}");
    }
    assert!(
        find(&|l| l.contains("\"event\":\"new_object\"") && l.contains("audited")).is_some(),
        "{text}"
    );
    assert!(
        find(&|l| l.contains("\"event\":\"destroy_object\"") && l.contains("audited")).is_some(),
        "{text}"
    );
    assert!(find(&|l| l.contains("\"event\":\"logout\"")).is_some());
    // Never a secret or data.
    assert!(
        !text.contains("wrong-pin-xyz") && !text.contains(BRIDGE_PIN),
        "a PIN leaked"
    );
    assert!(
        !text.to_lowercase().contains(&"5a".repeat(16)),
        "data leaked"
    );
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).expect("one JSON object per line");
        assert!(v.is_object());
    }
}
