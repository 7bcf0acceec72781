//! NULL output pointers and NULL inputs with a length (§5.2 conventions, `CKR_ARGUMENTS_BAD`).

use super::*;

// ------------------------------------------------------------------------------------------------ NULL pointers

/// Initializes an operation on a fresh session (sharing the login), or panics.
pub(super) fn op_session(
    b: &Bridge,
    x: &Fixture,
    init: impl FnOnce(CK_SESSION_HANDLE) -> CK_RV,
) -> CK_SESSION_HANDLE {
    let s = b.open(x.u, RW).expect("open session");
    let rv = init(s);
    assert_eq!(rv, CKR_OK, "operation init: {}", rv_name(rv));
    s
}

pub(super) fn close(b: &Bridge, s: CK_SESSION_HANDLE) {
    assert_eq!(call!(b.f, C_CloseSession(s)), CKR_OK, "C_CloseSession");
}

pub(super) fn null_outputs(c: &mut Checks, b: &'static Bridge) {
    let x = fixture(b);
    let (f, f3) = (b.f, b.f3);
    let s = x.s;
    let data = [7u8; 32];
    let dp = data.as_ptr() as *mut u8;
    let mut buf = [0u8; 512];
    let bp = buf.as_mut_ptr();
    let mut list = [0 as CK_ULONG; 128];
    let mut n: CK_ULONG = 0;
    let mut o: CK_OBJECT_HANDLE = 0;
    let mut ecdsa = mech(CKM_ECDSA);
    let mut sha = mech(CKM_SHA256);
    let mut ecb = mech(CKM_AES_ECB);
    let mut class = CKO_DATA;
    let mut t = [attr(CKA_CLASS, &mut class)];
    let tp = t.as_mut_ptr();
    let nul = "NULL output";

    chk!(c, f, BAD, "NULL pInfo (2.40 list)", C_GetInfo(null_mut()));
    chk!(c, f3, BAD, "NULL pInfo (3.0 list)", C_GetInfo(null_mut()));
    chk!(
        c,
        f,
        BAD,
        "NULL pulCount, NULL list",
        C_GetSlotList(CK_TRUE, null_mut(), null_mut())
    );
    chk!(
        c,
        f,
        BAD,
        "NULL pulCount",
        C_GetSlotList(CK_FALSE, list.as_mut_ptr(), null_mut())
    );
    chk!(c, f, BAD, nul, C_GetSlotInfo(x.u, null_mut()));
    chk!(c, f, BAD, nul, C_GetTokenInfo(x.u, null_mut()));
    chk!(
        c,
        f,
        BAD,
        "NULL pulCount",
        C_GetMechanismList(x.u, null_mut(), null_mut())
    );
    chk!(
        c,
        f,
        BAD,
        "NULL pulCount",
        C_GetMechanismList(x.u, list.as_mut_ptr(), null_mut())
    );
    chk!(
        c,
        f,
        BAD,
        nul,
        C_GetMechanismInfo(x.u, CKM_ECDSA, null_mut())
    );
    chk!(
        c,
        f,
        BAD,
        "NULL phSession",
        C_OpenSession(x.u, RW, null_mut(), None, null_mut())
    );
    chk!(
        c,
        f,
        BAD,
        "NULL phSession (mirror)",
        C_OpenSession(x.mirror, RO, null_mut(), None, null_mut())
    );
    chk!(c, f, BAD, nul, C_GetSessionInfo(s, null_mut()));
    chk!(c, f, BAD, nul, C_GetObjectSize(s, x.ec_pub, null_mut()));
    chk!(
        c,
        f,
        BAD,
        "NULL pTemplate, count 1",
        C_GetAttributeValue(s, x.ec_pub, null_mut(), 1)
    );
    chk!(
        c,
        f,
        BAD,
        "NULL pulCount",
        C_GetOperationState(s, null_mut(), null_mut())
    );
    chk!(
        c,
        f,
        BAD,
        "NULL phObject",
        C_CreateObject(s, tp, 1, null_mut())
    );
    chk!(
        c,
        f,
        BAD,
        "NULL phNewObject",
        C_CopyObject(s, x.ec_pub, null_mut(), 0, null_mut())
    );
    let mut gen = mech(CKM_AES_KEY_GEN);
    chk!(
        c,
        f,
        BAD,
        "NULL phKey",
        C_GenerateKey(s, &mut gen, null_mut(), 0, null_mut())
    );
    let mut kpgen = mech(CKM_EC_KEY_PAIR_GEN);
    chk!(
        c,
        f,
        BAD,
        "NULL phPrivateKey",
        C_GenerateKeyPair(
            s,
            &mut kpgen,
            null_mut(),
            0,
            null_mut(),
            0,
            &mut o,
            null_mut()
        )
    );
    chk!(
        c,
        f,
        BAD,
        "NULL phPublicKey",
        C_GenerateKeyPair(
            s,
            &mut kpgen,
            null_mut(),
            0,
            null_mut(),
            0,
            null_mut(),
            &mut o
        )
    );
    chk!(
        c,
        f,
        BAD,
        "NULL pulWrappedKeyLen",
        C_WrapKey(s, &mut ecb, x.aes, x.aes, bp, null_mut())
    );
    chk!(
        c,
        f,
        BAD,
        "NULL phKey",
        C_UnwrapKey(s, &mut ecb, x.aes, dp, 32, null_mut(), 0, null_mut())
    );
    chk!(
        c,
        f,
        BAD,
        "NULL phKey",
        C_DeriveKey(s, &mut sha, x.ec_priv, null_mut(), 0, null_mut())
    );
    chk!(
        c,
        f,
        BAD,
        "NULL pRandomData",
        C_GenerateRandom(s, null_mut(), 16)
    );
    chk!(
        c,
        f,
        BAD,
        "NULL pSlot",
        C_WaitForSlotEvent(CKF_DONT_BLOCK, null_mut(), null_mut())
    );
    chk!(
        c,
        f,
        BAD,
        "NULL ppFunctionList",
        C_GetFunctionList(null_mut())
    );
    c.rv(
        "C_GetInterfaceList NULL pulCount",
        unsafe { (b.get_interface_list)(null_mut(), null_mut()) },
        BAD,
    );
    c.rv(
        "C_GetInterface NULL ppInterface",
        unsafe { (b.get_interface)(INTERFACE_NAME.as_ptr() as *mut _, null_mut(), null_mut(), 0) },
        BAD,
    );

    // With the operation active.
    let h = op_session(b, &x, |h| call!(f, C_FindObjectsInit(h, null_mut(), 0)));
    chk!(
        c,
        f,
        BAD,
        "NULL phObject",
        C_FindObjects(h, null_mut(), 1, &mut n)
    );
    chk!(
        c,
        f,
        BAD,
        "NULL pulObjectCount",
        C_FindObjects(h, list.as_mut_ptr(), 1, null_mut())
    );
    chk!(c, f, CKR_OK, "after the bad calls", C_FindObjectsFinal(h));
    close(b, h);

    let h = op_session(b, &x, |h| call!(f, C_SignInit(h, &mut ecdsa, x.ec_priv)));
    chk!(
        c,
        f,
        BAD,
        "NULL pulSignatureLen",
        C_Sign(h, dp, 32, bp, null_mut())
    );
    close(b, h);
    let h = op_session(b, &x, |h| {
        call!(f, C_SignInit(h, &mut mech(CKM_SHA256_RSA_PKCS), x.rsa_priv))
    });
    chk!(c, f, CKR_OK, "", C_SignUpdate(h, dp, 32));
    chk!(
        c,
        f,
        BAD,
        "NULL pulSignatureLen",
        C_SignFinal(h, bp, null_mut())
    );
    close(b, h);
    let h = op_session(b, &x, |h| call!(f, C_DigestInit(h, &mut sha)));
    chk!(
        c,
        f,
        BAD,
        "NULL pulDigestLen",
        C_Digest(h, dp, 32, bp, null_mut())
    );
    close(b, h);
    let h = op_session(b, &x, |h| call!(f, C_DigestInit(h, &mut sha)));
    chk!(
        c,
        f,
        BAD,
        "NULL pulDigestLen",
        C_DigestFinal(h, bp, null_mut())
    );
    close(b, h);
    let h = op_session(b, &x, |h| call!(f, C_EncryptInit(h, &mut ecb, x.aes)));
    chk!(
        c,
        f,
        BAD,
        "NULL pulEncryptedDataLen",
        C_Encrypt(h, dp, 16, bp, null_mut())
    );
    close(b, h);
    let h = op_session(b, &x, |h| call!(f, C_EncryptInit(h, &mut ecb, x.aes)));
    chk!(
        c,
        f,
        BAD,
        "NULL pulEncryptedPartLen",
        C_EncryptUpdate(h, dp, 16, bp, null_mut())
    );
    close(b, h);
    let h = op_session(b, &x, |h| call!(f, C_DecryptInit(h, &mut ecb, x.aes)));
    chk!(
        c,
        f,
        BAD,
        "NULL pulDataLen",
        C_Decrypt(h, dp, 16, bp, null_mut())
    );
    close(b, h);
}

// ------------------------------------------------------------------------------------------------ NULL inputs

pub(super) fn null_inputs(c: &mut Checks, b: &'static Bridge) {
    let x = fixture(b);
    let (f, f3) = (b.f, b.f3);
    let s = x.s;
    let mut scratch = Scratch::new();
    let (dp, bp, lp) = scratch.pointers();
    let mut o: CK_OBJECT_HANDLE = 0;
    let mut ecdsa = mech(CKM_ECDSA);
    let mut sha = mech(CKM_SHA256);
    let mut ecb = mech(CKM_AES_ECB);
    let pin = tgt().pin;
    let nul = "NULL data with a length";

    let h = op_session(b, &x, |h| call!(f, C_SignInit(h, &mut ecdsa, x.ec_priv)));
    chk!(c, f, BAD, nul, C_Sign(h, null_mut(), 32, bp, lp));
    close(b, h);
    let h = op_session(b, &x, |h| {
        call!(f, C_SignInit(h, &mut mech(CKM_SHA256_RSA_PKCS), x.rsa_priv))
    });
    chk!(c, f, BAD, nul, C_SignUpdate(h, null_mut(), 5));
    close(b, h);
    let h = op_session(b, &x, |h| call!(f, C_VerifyInit(h, &mut ecdsa, x.ec_pub)));
    chk!(c, f, BAD, nul, C_Verify(h, null_mut(), 32, dp, 64));
    close(b, h);
    let h = op_session(b, &x, |h| call!(f, C_VerifyInit(h, &mut ecdsa, x.ec_pub)));
    chk!(
        c,
        f,
        BAD,
        "NULL signature with a length",
        C_Verify(h, dp, 32, null_mut(), 64)
    );
    close(b, h);
    let h = op_session(b, &x, |h| {
        call!(
            f,
            C_VerifyInit(h, &mut mech(CKM_SHA256_RSA_PKCS), x.rsa_pub)
        )
    });
    chk!(c, f, BAD, nul, C_VerifyUpdate(h, null_mut(), 5));
    close(b, h);
    let h = op_session(b, &x, |h| {
        call!(
            f,
            C_VerifyInit(h, &mut mech(CKM_SHA256_RSA_PKCS), x.rsa_pub)
        )
    });
    chk!(
        c,
        f,
        BAD,
        "NULL signature with a length",
        C_VerifyFinal(h, null_mut(), 64)
    );
    close(b, h);
    let h = op_session(b, &x, |h| call!(f, C_DigestInit(h, &mut sha)));
    chk!(c, f, BAD, nul, C_Digest(h, null_mut(), 5, bp, lp));
    close(b, h);
    let h = op_session(b, &x, |h| call!(f, C_DigestInit(h, &mut sha)));
    chk!(c, f, BAD, nul, C_DigestUpdate(h, null_mut(), 5));
    close(b, h);
    let h = op_session(b, &x, |h| call!(f, C_EncryptInit(h, &mut ecb, x.aes)));
    chk!(c, f, BAD, nul, C_Encrypt(h, null_mut(), 16, bp, lp));
    close(b, h);
    let h = op_session(b, &x, |h| call!(f, C_EncryptInit(h, &mut ecb, x.aes)));
    chk!(c, f, BAD, nul, C_EncryptUpdate(h, null_mut(), 16, bp, lp));
    close(b, h);
    let h = op_session(b, &x, |h| call!(f, C_DecryptInit(h, &mut ecb, x.aes)));
    chk!(c, f, BAD, nul, C_Decrypt(h, null_mut(), 16, bp, lp));
    close(b, h);
    let h = op_session(b, &x, |h| call!(f, C_DecryptInit(h, &mut ecb, x.aes)));
    chk!(c, f, BAD, nul, C_DecryptUpdate(h, null_mut(), 16, bp, lp));
    close(b, h);

    let mut p = CK_MECHANISM {
        mechanism: CKM_ECDSA,
        pParameter: null_mut(),
        ulParameterLen: 8,
    };
    chk!(
        c,
        f,
        BAD,
        "NULL mechanism parameter with a length",
        C_SignInit(s, &mut p, x.ec_priv)
    );
    chk!(
        c,
        f,
        BAD,
        "NULL template with a count",
        C_FindObjectsInit(s, null_mut(), 2)
    );
    chk!(
        c,
        f,
        BAD,
        "NULL template with a count",
        C_GetAttributeValue(s, x.ec_pub, null_mut(), 2)
    );
    chk!(
        c,
        f,
        BAD,
        "NULL template with a count",
        C_SetAttributeValue(s, x.ec_pub, null_mut(), 1)
    );
    chk!(
        c,
        f,
        BAD,
        "NULL template with a count",
        C_CreateObject(s, null_mut(), 2, &mut o)
    );
    let mut gen = mech(CKM_AES_KEY_GEN);
    chk!(
        c,
        f,
        BAD,
        "NULL template with a count",
        C_GenerateKey(s, &mut gen, null_mut(), 3, &mut o)
    );
    chk!(
        c,
        f,
        BAD,
        "NULL pMechanism",
        C_GenerateKey(s, null_mut(), null_mut(), 0, &mut o)
    );
    chk!(c, f, BAD, nul, C_SeedRandom(s, null_mut(), 8));
    chk!(c, f, BAD, nul, C_SetOperationState(s, null_mut(), 10, 0, 0));
    chk!(
        c,
        f,
        BAD,
        nul,
        C_UnwrapKey(s, &mut ecb, x.aes, null_mut(), 40, null_mut(), 0, &mut o)
    );
    // No protected authentication path on the unified token: a NULL PIN is bad.
    let h = b.open(x.u, RO).unwrap();
    chk!(
        c,
        f,
        BAD,
        "NULL PIN (no protected authentication path)",
        C_Login(h, CKU_USER, null_mut(), 4)
    );
    chk!(
        c,
        f3,
        BAD,
        "NULL username with a length",
        C_LoginUser(
            h,
            CKU_USER,
            pin.as_ptr() as *mut _,
            pin.len() as CK_ULONG,
            null_mut(),
            4
        )
    );
    close(b, h);
}
