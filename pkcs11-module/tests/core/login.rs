//! The unified token's login states: public and user sessions, the bridge's own PINs, SO rules, and what a logout
//! does to private objects.

use crate::common::*;
use cryptoki_sys::*;

fn state(h: CK_SESSION_HANDLE) -> CK_STATE {
    // SAFETY: a plain C structure.
    let mut si: CK_SESSION_INFO = unsafe { std::mem::zeroed() };
    assert_eq!(call!(C_GetSessionInfo, h, &mut si), CKR_OK);
    si.state
}

#[test]
fn a_public_session_sees_public_objects_only() {
    let _b = Bridge::new(THREE);
    let h = open(0, false);
    assert_eq!(state(h), CKS_RO_PUBLIC_SESSION);
    assert!(find(h, &[class(CKO_PRIVATE_KEY)]).is_empty());
    assert!(find(h, &[class(CKO_SECRET_KEY)]).is_empty());
    assert_eq!(find(h, &[class(CKO_PUBLIC_KEY)]).len(), 6);
}

#[test]
fn login_applies_to_every_session_of_the_token() {
    let _b = Bridge::new(THREE);
    let ro = open(0, false);
    let rw = open(0, true);
    assert_eq!(login(rw, CKU_USER, USER_PIN), CKR_OK);
    assert_eq!(state(rw), CKS_RW_USER_FUNCTIONS);
    assert_eq!(state(ro), CKS_RO_USER_FUNCTIONS);
    assert_eq!(find(ro, &[class(CKO_PRIVATE_KEY)]).len(), 6);
    let later = open(0, false);
    assert_eq!(state(later), CKS_RO_USER_FUNCTIONS);
}

#[test]
fn pins_and_repeated_logins() {
    let _b = Bridge::new(THREE);
    let h = open(0, true);
    assert_eq!(login(h, CKU_USER, "wrong"), CKR_PIN_INCORRECT);
    assert_eq!(call!(C_Logout, h), CKR_USER_NOT_LOGGED_IN);
    assert_eq!(login(h, CKU_USER, USER_PIN), CKR_OK);
    assert_eq!(login(h, CKU_USER, USER_PIN), CKR_USER_ALREADY_LOGGED_IN);
    assert_eq!(login(h, CKU_SO, SO_PIN), CKR_USER_ANOTHER_ALREADY_LOGGED_IN);
    assert_eq!(login(h, 42, USER_PIN), CKR_USER_TYPE_INVALID);
    assert_eq!(call!(C_Logout, h), CKR_OK);
    assert_eq!(state(h), CKS_RW_PUBLIC_SESSION);
}

#[test]
fn so_rules() {
    let _b = Bridge::new(THREE);
    let ro = open(0, false);
    let rw = open(0, true);
    assert_eq!(login(rw, CKU_SO, SO_PIN), CKR_SESSION_READ_ONLY_EXISTS);
    assert_eq!(call!(C_CloseSession, ro), CKR_OK);
    assert_eq!(login(rw, CKU_SO, "wrong"), CKR_PIN_INCORRECT);
    assert_eq!(login(rw, CKU_SO, SO_PIN), CKR_OK);
    assert_eq!(state(rw), CKS_RW_SO_FUNCTIONS);
    let mut h = 0;
    assert_eq!(
        call!(
            C_OpenSession,
            0,
            CKF_SERIAL_SESSION,
            std::ptr::null_mut(),
            None,
            &mut h
        ),
        CKR_SESSION_READ_WRITE_SO_EXISTS
    );
    assert_eq!(
        login(rw, CKU_USER, USER_PIN),
        CKR_USER_ANOTHER_ALREADY_LOGGED_IN
    );
}

#[test]
fn without_an_so_pin_no_so_login() {
    let _b = Bridge::new(&THREE.replace("so_pin = \"bridge-so-pin\"\n", ""));
    let h = open(0, true);
    assert_eq!(login(h, CKU_SO, SO_PIN), CKR_PIN_INCORRECT);
}

#[test]
fn logout_ends_the_use_of_private_keys() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let k = key(h, "a-ec", CKO_PRIVATE_KEY);
    let up = key(h, "up-open", CKO_SECRET_KEY);
    assert_eq!(call!(C_Logout, h), CKR_OK);
    assert_eq!(sign_init(h, &mech(CKM_ECDSA), k), CKR_USER_NOT_LOGGED_IN);
    assert_eq!(attr(h, k, CKA_LABEL), Err(CKR_OBJECT_HANDLE_INVALID));
    assert_eq!(attr(h, up, CKA_LABEL), Err(CKR_OBJECT_HANDLE_INVALID));
    // Public halves stay usable.
    let public = key(h, "a-ec", CKO_PUBLIC_KEY);
    assert_eq!(attr_str(h, public, CKA_LABEL), "a-ec");
    // Logged in again, the same handles work.
    assert_eq!(login(h, CKU_USER, USER_PIN), CKR_OK);
    assert!(sign(h, &mech(CKM_ECDSA), k, &sha256(b"again")).is_ok());
}

#[test]
fn closing_the_last_session_logs_the_token_out() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    assert_eq!(call!(C_CloseSession, h), CKR_OK);
    let h = open(0, false);
    assert_eq!(state(h), CKS_RO_PUBLIC_SESSION);
    assert!(find(h, &[class(CKO_PRIVATE_KEY)]).is_empty());
}

#[test]
fn private_objects_need_a_login_to_be_made() {
    let _b = Bridge::new(THREE);
    let h = open(0, true);
    let value = [9u8; 16];
    let mut t = template(vec![
        class(CKO_SECRET_KEY),
        ulong(CKA_KEY_TYPE, CKK_AES),
        Attr(CKA_VALUE, value.to_vec()),
        flag(CKA_PRIVATE, true),
        backend("up"),
    ]);
    let mut o = 0;
    assert_eq!(
        call!(
            C_CreateObject,
            h,
            t.as_mut_ptr(),
            t.len() as CK_ULONG,
            &mut o
        ),
        CKR_USER_NOT_LOGGED_IN
    );
}
