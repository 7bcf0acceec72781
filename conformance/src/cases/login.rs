//! Login states, handles across `C_Logout`, private objects before login (§5.6).

use super::*;

// ------------------------------------------------------------------------------------------------ login

pub(super) fn state(b: &Bridge, h: CK_SESSION_HANDLE) -> CK_STATE {
    let mut si: CK_SESSION_INFO = zeroed();
    assert_eq!(call!(b.f, C_GetSessionInfo(h, &mut si)), CKR_OK);
    si.state
}

pub(super) fn login(c: &mut Checks, b: &'static Bridge) {
    let f = b.f;
    let u = b.slot_by_label(tgt().user_label);
    let rw = b.open(u, RW).unwrap();
    let ro = b.open(u, RO).unwrap();
    let (user, so) = (tgt().pin, tgt().so_pin);
    c.rv(
        "C_Logout when not logged in",
        call!(f, C_Logout(rw)),
        CKR_USER_NOT_LOGGED_IN,
    );
    c.rv(
        "C_Login user type 7",
        b.login(rw, 7, user),
        CKR_USER_TYPE_INVALID,
    );
    c.rv(
        "C_Login user type 0xdeadbeef",
        b.login(rw, 0xdead_beef, user),
        CKR_USER_TYPE_INVALID,
    );
    c.rv(
        "C_Login wrong user PIN",
        b.login(rw, CKU_USER, "wrong"),
        CKR_PIN_INCORRECT,
    );
    c.rv(
        "C_Login empty user PIN",
        b.login(rw, CKU_USER, ""),
        CKR_PIN_INCORRECT,
    );
    if tgt().is_bridge {
        c.rv(
            "C_Login the upstream's PIN on the unified token",
            b.login(rw, CKU_USER, tgt().mirror_pin),
            CKR_PIN_INCORRECT,
        );
    }
    c.rv(
        "C_Login SO while an RO session exists",
        b.login(rw, CKU_SO, so),
        CKR_SESSION_READ_ONLY_EXISTS,
    );
    c.rv("C_Login user", b.login(rw, CKU_USER, user), CKR_OK);
    c.that(
        "RW session state",
        state(b, rw) == CKS_RW_USER_FUNCTIONS,
        state(b, rw),
    );
    c.that(
        "RO session state",
        state(b, ro) == CKS_RO_USER_FUNCTIONS,
        state(b, ro),
    );
    c.rv(
        "C_Login user twice",
        b.login(rw, CKU_USER, user),
        CKR_USER_ALREADY_LOGGED_IN,
    );
    c.rv(
        "C_Login user on another session of the token",
        b.login(ro, CKU_USER, user),
        CKR_USER_ALREADY_LOGGED_IN,
    );
    c.rv(
        "C_Login SO while the user is logged in",
        b.login(rw, CKU_SO, so),
        CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
    );
    c.rv(
        "C_Login CONTEXT_SPECIFIC without an operation",
        b.login(rw, CKU_CONTEXT_SPECIFIC, user),
        CKR_OPERATION_NOT_INITIALIZED,
    );
    c.rv("C_Logout", call!(f, C_Logout(ro)), CKR_OK);
    c.that(
        "RW session state after logout",
        state(b, rw) == CKS_RW_PUBLIC_SESSION,
        state(b, rw),
    );
    c.rv(
        "C_Logout twice",
        call!(f, C_Logout(rw)),
        CKR_USER_NOT_LOGGED_IN,
    );

    // The SO, once no RO session is left.
    close(b, ro);
    c.rv(
        "C_Login wrong SO PIN",
        b.login(rw, CKU_SO, "wrong"),
        CKR_PIN_INCORRECT,
    );
    c.rv("C_Login SO", b.login(rw, CKU_SO, so), CKR_OK);
    c.that(
        "SO session state",
        state(b, rw) == CKS_RW_SO_FUNCTIONS,
        state(b, rw),
    );
    let mut h: CK_SESSION_HANDLE = 0;
    chk!(
        c,
        f,
        CKR_SESSION_READ_WRITE_SO_EXISTS,
        "RO while the SO is logged in",
        C_OpenSession(u, RO, null_mut(), None, &mut h)
    );
    c.rv(
        "C_Login SO twice",
        b.login(rw, CKU_SO, so),
        CKR_USER_ALREADY_LOGGED_IN,
    );
    c.rv(
        "C_Login user while the SO is logged in",
        b.login(rw, CKU_USER, user),
        CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
    );
    c.rv("C_Logout SO", call!(f, C_Logout(rw)), CKR_OK);
    // Closing the last session logs the token out.
    c.rv("C_Login user", b.login(rw, CKU_USER, user), CKR_OK);
    close(b, rw);
    let h = b.open(u, RO).unwrap();
    c.that(
        "a session after the last one closed is public",
        state(b, h) == CKS_RO_PUBLIC_SESSION,
        state(b, h),
    );
    c.rv(
        "C_Logout after the last session closed",
        call!(f, C_Logout(h)),
        CKR_USER_NOT_LOGGED_IN,
    );
    close(b, h);
}

/// A private key's handle after `C_Logout`, and after logging in again.
///
/// Found by the stress run (the bridge used to pass SoftHSM's `CKR_OBJECT_HANDLE_INVALID` through): a private key's
/// handle once the user logged out, and again after a new login (the key then has a new handle). §5.13.1 C_SignInit has no CKR_OBJECT_HANDLE_INVALID among its return values: a key handle
/// that is not (or no longer) valid is CKR_KEY_HANDLE_INVALID (§5.1.6), which the bridge answers for handles it
/// never issued; while logged out CKR_USER_NOT_LOGGED_IN also fits. A new handle after a new login is allowed
/// (§4.4: the handle is guaranteed only while the object stays accessible to the session).
pub(super) fn handles_across_logout(c: &mut Checks, b: &'static Bridge) {
    let f = b.f;
    let u = b.slot_by_label(tgt().user_label);
    let s = b.open(u, RW).unwrap();
    assert_eq!(b.login(s, CKU_USER, tgt().pin), CKR_OK, "login");
    let k = b.find_one(s, CKO_PRIVATE_KEY, "ec-p256");
    c.rv("C_Logout", call!(f, C_Logout(s)), CKR_OK);
    let mut m = mech(CKM_ECDSA);
    let got = call!(f, C_SignInit(s, &mut m, k));
    c.any(
        "C_SignInit a private key's handle after C_Logout (KEY_HANDLE_INVALID or USER_NOT_LOGGED_IN)",
        got,
        &[CKR_KEY_HANDLE_INVALID, CKR_USER_NOT_LOGGED_IN],
    );
    c.rv("C_Login again", b.login(s, CKU_USER, tgt().pin), CKR_OK);
    let got = call!(f, C_SignInit(s, &mut m, k));
    c.any(
        "C_SignInit the handle from before C_Logout, logged in again (OK, or KEY_HANDLE_INVALID for a new handle)",
        got,
        &[CKR_OK, CKR_KEY_HANDLE_INVALID],
    );
    if got == CKR_OK {
        let _ = call!(f, C_SignInit(s, null_mut(), 0));
    }
    let k2 = b.find_one(s, CKO_PRIVATE_KEY, "ec-p256");
    let sig = b.ecdsa_sign(s, k2, &[3u8; 32]);
    c.that(
        "C_Sign with the handle found after the new login",
        sig.is_ok(),
        format!("{sig:?}"),
    );
    close(b, s);
}

pub(super) fn private_before_login(c: &mut Checks, b: &'static Bridge) {
    let f = b.f;
    let u = b.slot_by_label(tgt().user_label);
    let s = b.open(u, RW).unwrap();
    // Before login, private objects are invisible: the search finds none (not an error).
    let r = b.find(s, CKO_PRIVATE_KEY, "ec-p256");
    c.that(
        "private key search before login finds nothing",
        r == Ok(vec![]),
        format!("{r:?}"),
    );
    let r = b.find(s, CKO_SECRET_KEY, "aes-256");
    c.that(
        "private secret key search before login finds nothing",
        r == Ok(vec![]),
        format!("{r:?}"),
    );
    let r = b.find(s, CKO_PUBLIC_KEY, "ec-p256");
    c.that(
        "public key search before login",
        matches!(&r, Ok(v) if v.len() == 1),
        format!("{r:?}"),
    );
    // A handle learnt while logged in, used after logout. SoftHSM 2.6 hides the private object and answers
    // CKR_OBJECT_HANDLE_INVALID; the spec's C_SignInit list has CKR_KEY_HANDLE_INVALID (or CKR_USER_NOT_LOGGED_IN),
    // which the bridge answers for a key argument.
    assert_eq!(b.login(s, CKU_USER, tgt().pin), CKR_OK);
    let key = b.find_one(s, CKO_PRIVATE_KEY, "ec-p256");
    assert_eq!(call!(f, C_Logout(s)), CKR_OK);
    let mut ecdsa = mech(CKM_ECDSA);
    let got = call!(f, C_SignInit(s, &mut ecdsa, key));
    c.any(
        "private key after logout",
        got,
        &[CKR_KEY_HANDLE_INVALID, CKR_USER_NOT_LOGGED_IN],
    );
    let mut v = [0u8; 64];
    let mut t = [CK_ATTRIBUTE {
        type_: CKA_LABEL,
        pValue: v.as_mut_ptr() as *mut c_void,
        ulValueLen: 64,
    }];
    chk!(
        c,
        f,
        CKR_OBJECT_HANDLE_INVALID,
        "private key after logout",
        C_GetAttributeValue(s, key, t.as_mut_ptr(), 1)
    );
    close(b, s);
}
