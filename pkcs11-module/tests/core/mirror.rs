//! Mirror slots: the pass-through fake's token, one-to-one, with its own PINs and rules (the caller's `C_Login`
//! goes to the backend).

use crate::common::*;
use cryptoki_sys::*;
use std::ptr::null_mut;

fn config() -> String {
    format!("{THREE}\n[[slot]]\nmirror = \"up\"\n")
}

#[test]
fn the_mirror_shows_the_upstream_token() {
    let _b = Bridge::new(&config());
    // SAFETY: a plain C structure.
    let mut ti: CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
    assert_eq!(call!(C_GetTokenInfo, 1, &mut ti), CKR_OK);
    assert!(String::from_utf8_lossy(&ti.label).starts_with("fake-upstream "));
    let mut n = 0;
    assert_eq!(call!(C_GetMechanismList, 1, null_mut(), &mut n), CKR_OK);
    assert_eq!(n, 4, "the upstream's own list, not the union");
}

#[test]
fn mirror_logins_use_the_upstream_pins() {
    let _b = Bridge::new(&config());
    let h = open(1, true);
    assert!(find(h, &[class(CKO_SECRET_KEY)]).is_empty());
    assert_eq!(login(h, CKU_USER, USER_PIN), CKR_PIN_INCORRECT);
    assert_eq!(login(h, CKU_USER, UP_PIN), CKR_OK);
    assert_eq!(login(h, CKU_USER, UP_PIN), CKR_USER_ALREADY_LOGGED_IN);
    assert_eq!(find(h, &[class(CKO_SECRET_KEY)]).len(), 2);
    assert_eq!(call!(C_Logout, h), CKR_OK);
    assert_eq!(call!(C_Logout, h), CKR_USER_NOT_LOGGED_IN);
}

#[test]
fn mirror_so_login_follows_the_upstream_rules() {
    let _b = Bridge::new(&config());
    let ro = open(1, false);
    let rw = open(1, true);
    assert_eq!(login(rw, CKU_SO, UP_SO_PIN), CKR_SESSION_READ_ONLY_EXISTS);
    assert_eq!(call!(C_CloseSession, ro), CKR_OK);
    assert_eq!(login(rw, CKU_SO, UP_SO_PIN), CKR_OK);
}

#[test]
fn mirror_hmac_with_a_session_key() {
    use hmac::Mac;
    let _b = Bridge::new(&config());
    let h = open(1, true);
    assert_eq!(login(h, CKU_USER, UP_PIN), CKR_OK);
    let value = vec![0x5a; 32];
    let mut t = template(vec![
        class(CKO_SECRET_KEY),
        ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET),
        Attr(CKA_VALUE, value.clone()),
        flag(CKA_SIGN, true),
    ]);
    let mut k = 0;
    assert_eq!(
        call!(
            C_CreateObject,
            h,
            t.as_mut_ptr(),
            t.len() as CK_ULONG,
            &mut k
        ),
        CKR_OK
    );
    let mac = sign(h, &mech(CKM_SHA256_HMAC), k, b"mirror data").expect("HMAC");
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(&value).expect("key");
    m.update(b"mirror data");
    assert_eq!(mac, m.finalize().into_bytes().to_vec());
    assert_eq!(
        verify(h, &mech(CKM_SHA256_HMAC), k, b"mirror data", &mac),
        CKR_OK
    );
}

#[test]
fn unified_and_mirror_share_the_upstream_objects() {
    let _b = Bridge::new(&config());
    let m = open(1, true);
    assert_eq!(login(m, CKU_USER, UP_PIN), CKR_OK);
    let mut t = template(vec![
        class(CKO_DATA),
        label("shared"),
        flag(CKA_TOKEN, true),
    ]);
    let mut o = 0;
    assert_eq!(
        call!(
            C_CreateObject,
            m,
            t.as_mut_ptr(),
            t.len() as CK_ULONG,
            &mut o
        ),
        CKR_OK
    );
    let u = open(0, false);
    let found = find(u, &[label("shared")]);
    assert_eq!(found.len(), 1);
    assert_eq!(attr_str(u, found[0], CKA_BACKEND), "up");
}
