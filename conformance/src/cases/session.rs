//! Invalid session handles (§5.6 session management).

use super::*;

// ------------------------------------------------------------------------------------------------ invalid sessions

/// Every function that takes a session handle, with otherwise valid arguments, must say
/// `CKR_SESSION_HANDLE_INVALID` for `h`.
pub(super) fn session_cases(
    c: &mut Checks,
    b: &Bridge,
    x: &Fixture,
    h: CK_SESSION_HANDLE,
    what: &str,
) {
    let (f, f3) = (b.f, b.f3);
    let w = CKR_SESSION_HANDLE_INVALID;
    let mut scratch = Scratch::new();
    let (dp, bp, lp) = scratch.pointers();
    let mut n: CK_ULONG = 0;
    let mut si: CK_SESSION_INFO = zeroed();
    let (mut o1, mut o2): (CK_OBJECT_HANDLE, CK_OBJECT_HANDLE) = (0, 0);
    let mut list = [0 as CK_OBJECT_HANDLE; 8];
    let mut ecdsa = mech(CKM_ECDSA);
    let mut sha = mech(CKM_SHA256);
    let mut ecb = mech(CKM_AES_ECB);
    let mut gen = mech(CKM_AES_KEY_GEN);
    let mut kpgen = mech(CKM_EC_KEY_PAIR_GEN);
    let mut class = CKO_DATA;
    let mut t = [attr(CKA_CLASS, &mut class)];
    let tp = t.as_mut_ptr();
    let mut label = *b"x";
    let mut lt = [CK_ATTRIBUTE {
        type_: CKA_LABEL,
        pValue: label.as_mut_ptr() as *mut c_void,
        ulValueLen: 1,
    }];
    let pin = tgt().pin;
    let (pp, pl) = (pin.as_ptr() as *mut u8, pin.len() as CK_ULONG);

    chk!(c, f, w, what, C_GetSessionInfo(h, &mut si));
    chk!(c, f, w, what, C_Login(h, CKU_USER, pp, pl));
    chk!(c, f, w, what, C_Logout(h));
    chk!(c, f, w, what, C_InitPIN(h, pp, pl));
    chk!(c, f, w, what, C_SetPIN(h, pp, pl, pp, pl));
    chk!(c, f, w, what, C_GetOperationState(h, bp, lp));
    chk!(c, f, w, what, C_SetOperationState(h, dp, 32, 0, 0));
    chk!(c, f, w, what, C_CreateObject(h, tp, 1, &mut o1));
    chk!(
        c,
        f,
        w,
        what,
        C_CopyObject(h, x.ec_pub, null_mut(), 0, &mut o1)
    );
    chk!(c, f, w, what, C_DestroyObject(h, x.ec_pub));
    chk!(c, f, w, what, C_GetObjectSize(h, x.ec_pub, &mut n));
    chk!(
        c,
        f,
        w,
        what,
        C_GetAttributeValue(h, x.ec_pub, lt.as_mut_ptr(), 1)
    );
    chk!(
        c,
        f,
        w,
        what,
        C_SetAttributeValue(h, x.ec_pub, lt.as_mut_ptr(), 1)
    );
    chk!(c, f, w, what, C_FindObjectsInit(h, tp, 1));
    chk!(
        c,
        f,
        w,
        what,
        C_FindObjects(h, list.as_mut_ptr(), 8, &mut n)
    );
    chk!(c, f, w, what, C_FindObjectsFinal(h));
    chk!(c, f, w, what, C_EncryptInit(h, &mut ecb, x.aes));
    chk!(c, f, w, what, C_Encrypt(h, dp, 16, bp, lp));
    chk!(c, f, w, what, C_EncryptUpdate(h, dp, 16, bp, lp));
    chk!(c, f, w, what, C_EncryptFinal(h, bp, lp));
    chk!(c, f, w, what, C_DecryptInit(h, &mut ecb, x.aes));
    chk!(c, f, w, what, C_Decrypt(h, dp, 16, bp, lp));
    chk!(c, f, w, what, C_DecryptUpdate(h, dp, 16, bp, lp));
    chk!(c, f, w, what, C_DecryptFinal(h, bp, lp));
    chk!(c, f, w, what, C_DigestInit(h, &mut sha));
    chk!(c, f, w, what, C_Digest(h, dp, 32, bp, lp));
    chk!(c, f, w, what, C_DigestUpdate(h, dp, 32));
    chk!(c, f, w, what, C_DigestKey(h, x.aes));
    chk!(c, f, w, what, C_DigestFinal(h, bp, lp));
    chk!(c, f, w, what, C_SignInit(h, &mut ecdsa, x.ec_priv));
    chk!(c, f, w, what, C_Sign(h, dp, 32, bp, lp));
    chk!(c, f, w, what, C_SignUpdate(h, dp, 32));
    chk!(c, f, w, what, C_SignFinal(h, bp, lp));
    chk!(c, f, w, what, C_SignRecoverInit(h, &mut ecdsa, x.ec_priv));
    chk!(c, f, w, what, C_SignRecover(h, dp, 32, bp, lp));
    chk!(c, f, w, what, C_VerifyInit(h, &mut ecdsa, x.ec_pub));
    chk!(c, f, w, what, C_Verify(h, dp, 32, dp, 64));
    chk!(c, f, w, what, C_VerifyUpdate(h, dp, 32));
    chk!(c, f, w, what, C_VerifyFinal(h, dp, 64));
    chk!(c, f, w, what, C_VerifyRecoverInit(h, &mut ecdsa, x.ec_pub));
    chk!(c, f, w, what, C_VerifyRecover(h, dp, 64, bp, lp));
    chk!(c, f, w, what, C_DigestEncryptUpdate(h, dp, 16, bp, lp));
    chk!(c, f, w, what, C_DecryptDigestUpdate(h, dp, 16, bp, lp));
    chk!(c, f, w, what, C_SignEncryptUpdate(h, dp, 16, bp, lp));
    chk!(c, f, w, what, C_DecryptVerifyUpdate(h, dp, 16, bp, lp));
    chk!(
        c,
        f,
        w,
        what,
        C_GenerateKey(h, &mut gen, null_mut(), 0, &mut o1)
    );
    chk!(
        c,
        f,
        w,
        what,
        C_GenerateKeyPair(
            h,
            &mut kpgen,
            null_mut(),
            0,
            null_mut(),
            0,
            &mut o1,
            &mut o2
        )
    );
    chk!(c, f, w, what, C_WrapKey(h, &mut ecb, x.aes, x.aes, bp, lp));
    chk!(
        c,
        f,
        w,
        what,
        C_UnwrapKey(h, &mut ecb, x.aes, dp, 32, null_mut(), 0, &mut o1)
    );
    chk!(
        c,
        f,
        w,
        what,
        C_DeriveKey(h, &mut sha, x.ec_priv, null_mut(), 0, &mut o1)
    );
    chk!(c, f, w, what, C_SeedRandom(h, dp, 32));
    chk!(c, f, w, what, C_GenerateRandom(h, bp, 16));
    chk!(c, f, w, what, C_GetFunctionStatus(h));
    chk!(c, f, w, what, C_CancelFunction(h));
    chk!(c, f3, w, what, C_LoginUser(h, CKU_USER, pp, pl, pp, pl));
    chk!(c, f3, w, what, C_SessionCancel(h, CKF_SIGN));
    chk!(c, f, w, what, C_CloseSession(h));
}

pub(super) fn invalid_sessions(c: &mut Checks, b: &'static Bridge) {
    let x = fixture(b);
    session_cases(c, b, &x, 0, "session 0 (CK_INVALID_HANDLE)");
    session_cases(c, b, &x, 0xdead_beef, "session 0xdeadbeef");
    session_cases(c, b, &x, CK_ULONG::MAX, "session CK_ULONG max");
    let closed = b.open(x.u, RW).unwrap();
    close(b, closed);
    session_cases(c, b, &x, closed, "closed session (unified)");
    let closed = b.open(x.mirror, RO).unwrap();
    close(b, closed);
    session_cases(c, b, &x, closed, "closed session (mirror)");
    // C_CloseAllSessions closes them all.
    let h1 = b.open(x.u, RO).unwrap();
    let h2 = b.open(x.u, RW).unwrap();
    chk!(c, b.f, CKR_OK, "unified slot", C_CloseAllSessions(x.u));
    for h in [h1, h2, x.s] {
        let mut si: CK_SESSION_INFO = zeroed();
        chk!(
            c,
            b.f,
            CKR_SESSION_HANDLE_INVALID,
            "after C_CloseAllSessions",
            C_GetSessionInfo(h, &mut si)
        );
    }
    // The last session closed logs the token out.
    let h = b.open(x.u, RO).unwrap();
    let mut si: CK_SESSION_INFO = zeroed();
    chk!(c, b.f, CKR_OK, "", C_GetSessionInfo(h, &mut si));
    c.that(
        "a new session after C_CloseAllSessions is public",
        si.state == CKS_RO_PUBLIC_SESSION,
        format!("state {}", si.state),
    );
}
