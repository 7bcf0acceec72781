//! The audit trail: every key use, refused or not, and every login, as one JSON line each.

use crate::common::*;
use cryptoki_sys::*;
use p11bridge_backends::fake::script;

#[test]
fn key_uses_and_logins_are_recorded() {
    let dir = std::env::temp_dir().join(format!("p11bridge-core-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("audit.jsonl");
    let _ = std::fs::remove_file(&file);
    let _b = Bridge::new(&format!("[audit]\nfile = \"{}\"\n{THREE}", file.display()));
    let h = open(0, false);
    assert_eq!(login(h, CKU_USER, "wrong"), CKR_PIN_INCORRECT);
    assert_eq!(login(h, CKU_USER, USER_PIN), CKR_OK);
    let k = key(h, "b-ec", CKO_PRIVATE_KEY);
    sign(h, &mech(CKM_ECDSA), k, &sha256(b"audited")).expect("sign");
    script("b").fail("sign", Some(CKR_DEVICE_ERROR));
    assert_eq!(
        sign(h, &mech(CKM_ECDSA), k, &sha256(b"refused")),
        Err(CKR_DEVICE_ERROR)
    );
    let text = std::fs::read_to_string(&file).expect("audit file");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let events: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["event"].as_str().unwrap_or(""),
                l["rv"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            ("login", "CKR_PIN_INCORRECT"),
            ("login", "CKR_OK"),
            ("sign", "CKR_OK"),
            ("sign", "CKR_DEVICE_ERROR")
        ],
        "{text}"
    );
    assert_eq!(lines[2]["backend"], "b");
    assert_eq!(lines[2]["object"], "b-ec");
    assert_eq!(lines[2]["mechanism"], "CKM_ECDSA");
    assert!(!text.contains("bridge-pin"), "no PIN in the trail");
    let _ = std::fs::remove_dir_all(&dir);
}
