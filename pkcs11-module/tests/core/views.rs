//! Views: `[[slot]]` entries that share backends, each with its own PIN and login state, filtered by `key_types`
//! and `labels`.

use crate::common::*;
use cryptoki_sys::*;

fn config() -> String {
    format!(
        "{THREE}
[[slot]]
label = \"rsa-view\"
user_pin = \"view-pin\"
backends = [\"a\", \"b\", \"up\"]
key_types = [\"rsa\"]

[[slot]]
label = \"a-view\"
user_pin = \"view-pin\"
backends = [\"a\", \"b\"]
labels = [\"a-*\"]
"
    )
}

fn logged_in(slot: CK_SLOT_ID) -> CK_SESSION_HANDLE {
    let h = open(slot, false);
    assert_eq!(login(h, CKU_USER, "view-pin"), CKR_OK);
    h
}

#[test]
fn key_types_keep_only_those_keys() {
    let _b = Bridge::new(&config());
    let h = logged_in(1);
    let keys = find(h, &[class(CKO_PRIVATE_KEY)]);
    assert_eq!(keys.len(), 2);
    for k in keys {
        assert_eq!(attr_ulong(h, k, CKA_KEY_TYPE), CKK_RSA);
    }
    assert!(
        find(h, &[class(CKO_SECRET_KEY)]).is_empty(),
        "AES and HMAC keys are not RSA"
    );
    // The keys found work as anywhere else.
    let k = key(h, "b-rsa", CKO_PRIVATE_KEY);
    assert!(sign(h, &mech(CKM_SHA256_RSA_PKCS), k, b"view").is_ok());
}

#[test]
fn labels_keep_only_matching_objects() {
    let _b = Bridge::new(&config());
    let h = logged_in(2);
    let mut labels: Vec<String> = find(h, &[])
        .into_iter()
        .map(|o| attr_str(h, o, CKA_LABEL))
        .collect();
    labels.sort();
    labels.dedup();
    assert_eq!(labels, ["a-aes", "a-ec", "a-hmac", "a-rsa"]);
}

#[test]
fn each_view_has_its_own_pin_and_login_state() {
    let _b = Bridge::new(&config());
    let unified = user_session();
    let view = open(1, false);
    assert!(
        find(view, &[class(CKO_PRIVATE_KEY)]).is_empty(),
        "not logged in on the view"
    );
    assert_eq!(login(view, CKU_USER, USER_PIN), CKR_PIN_INCORRECT);
    assert_eq!(login(view, CKU_USER, "view-pin"), CKR_OK);
    assert_eq!(find(view, &[class(CKO_PRIVATE_KEY)]).len(), 2);
    assert_eq!(call!(C_Logout, view), CKR_OK);
    // The unified token stays logged in.
    assert_eq!(find(unified, &[class(CKO_PRIVATE_KEY)]).len(), 6);
}
