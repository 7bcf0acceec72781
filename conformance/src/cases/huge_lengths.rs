//! Huge lengths and malformed structures in inputs.

use super::*;

// ------------------------------------------------------------------------------------------------ huge lengths

pub(super) fn huge_lengths(c: &mut Checks, b: &'static Bridge) {
    let x = fixture(b);
    let f = b.f;
    let s = x.s;
    let mut scratch = Scratch::new();
    let (dp, bp, lp) = scratch.pointers();
    let mut o: CK_OBJECT_HANDLE = 0;
    let mut ecdsa = mech(CKM_ECDSA);
    let mut sha = mech(CKM_SHA256);
    let mut ecb = mech(CKM_AES_ECB);
    let mut class = CKO_DATA;
    let mut t = [attr(CKA_CLASS, &mut class)];
    let tp = t.as_mut_ptr();
    let pin = b"1234".as_ptr() as *mut u8;

    for l in HUGE {
        let w = format!("length {l:#x}");
        let w = w.as_str();
        let h = op_session(b, &x, |h| call!(f, C_SignInit(h, &mut ecdsa, x.ec_priv)));
        chk!(c, f, BAD, w, C_Sign(h, dp, l, bp, lp));
        close(b, h);
        let h = op_session(b, &x, |h| {
            call!(f, C_SignInit(h, &mut mech(CKM_SHA256_RSA_PKCS), x.rsa_priv))
        });
        chk!(c, f, BAD, w, C_SignUpdate(h, dp, l));
        close(b, h);
        let h = op_session(b, &x, |h| call!(f, C_VerifyInit(h, &mut ecdsa, x.ec_pub)));
        chk!(c, f, BAD, w, C_Verify(h, dp, l, dp, 64));
        close(b, h);
        let h = op_session(b, &x, |h| call!(f, C_VerifyInit(h, &mut ecdsa, x.ec_pub)));
        chk!(
            c,
            f,
            BAD,
            &format!("signature {w}"),
            C_Verify(h, dp, 32, dp, l)
        );
        close(b, h);
        let h = op_session(b, &x, |h| {
            call!(
                f,
                C_VerifyInit(h, &mut mech(CKM_SHA256_RSA_PKCS), x.rsa_pub)
            )
        });
        chk!(c, f, BAD, w, C_VerifyFinal(h, dp, l));
        close(b, h);
        let h = op_session(b, &x, |h| call!(f, C_DigestInit(h, &mut sha)));
        chk!(c, f, BAD, w, C_Digest(h, dp, l, bp, lp));
        close(b, h);
        let h = op_session(b, &x, |h| call!(f, C_DigestInit(h, &mut sha)));
        chk!(c, f, BAD, w, C_DigestUpdate(h, dp, l));
        close(b, h);
        let h = op_session(b, &x, |h| call!(f, C_EncryptInit(h, &mut ecb, x.aes)));
        chk!(c, f, BAD, w, C_Encrypt(h, dp, l, bp, lp));
        close(b, h);
        let h = op_session(b, &x, |h| call!(f, C_DecryptInit(h, &mut ecb, x.aes)));
        chk!(c, f, BAD, w, C_DecryptUpdate(h, dp, l, bp, lp));
        close(b, h);

        chk!(c, f, BAD, &format!("PIN {w}"), C_Login(s, CKU_USER, pin, l));
        chk!(c, f, BAD, &format!("PIN {w}"), C_SetPIN(s, pin, l, pin, 4));
        chk!(c, f, BAD, &format!("PIN {w}"), C_InitPIN(s, pin, l));
        chk!(
            c,
            f,
            BAD,
            &format!("count {w}"),
            C_FindObjectsInit(s, tp, l)
        );
        chk!(
            c,
            f,
            BAD,
            &format!("count {w}"),
            C_GetAttributeValue(s, x.ec_pub, tp, l)
        );
        chk!(
            c,
            f,
            BAD,
            &format!("count {w}"),
            C_SetAttributeValue(s, x.ec_pub, tp, l)
        );
        chk!(
            c,
            f,
            BAD,
            &format!("count {w}"),
            C_CreateObject(s, tp, l, &mut o)
        );
        chk!(c, f, BAD, w, C_GenerateRandom(s, bp, l));
        chk!(c, f, BAD, w, C_SeedRandom(s, dp, l));
        chk!(c, f, BAD, w, C_SetOperationState(s, dp, l, 0, 0));
        chk!(
            c,
            f,
            BAD,
            w,
            C_UnwrapKey(s, &mut ecb, x.aes, dp, l, null_mut(), 0, &mut o)
        );

        // Lengths inside structures, which the module hands on to its upstream: the spec has no single code, any
        // error will do but a crash. Each runs in a child process, so that a crash is one failed case.
        for (case, want) in STRUCTURE_CASES {
            let what = format!("{case} {w}");
            // May kill a module (SoftHSM exits on some): the runner re-runs the section skipping it.
            let rv = if c.before_call(&what) {
                structure_case(b, &x, case, l)
            } else {
                DIED
            };
            c.any(&what, rv, want);
        }
    }
    // Still alive and working.
    let sig = b.ecdsa_sign(s, x.ec_priv, &[1u8; 32]);
    c.that(
        "C_Sign after the huge lengths",
        sig.is_ok(),
        format!("{sig:?}"),
    );
}

/// Lengths inside structures (mechanism parameters, attribute values) and what may be answered.
pub(super) const STRUCTURE_CASES: [(&str, &[CK_RV]); 5] = [
    (
        "C_SignInit mechanism parameter",
        &[BAD, CKR_MECHANISM_PARAM_INVALID],
    ),
    (
        "C_FindObjectsInit attribute value",
        &[BAD, CKR_ATTRIBUTE_VALUE_INVALID],
    ),
    (
        "C_CreateObject attribute value",
        &[BAD, CKR_ATTRIBUTE_VALUE_INVALID],
    ),
    (
        "C_SetAttributeValue attribute value",
        &[BAD, CKR_ATTRIBUTE_VALUE_INVALID],
    ),
    (
        "C_GenerateKey template attribute value",
        &[BAD, CKR_ATTRIBUTE_VALUE_INVALID],
    ),
];

/// One of [`STRUCTURE_CASES`] with length `l`.
pub(super) fn structure_case(b: &Bridge, x: &Fixture, case: &str, l: CK_ULONG) -> CK_RV {
    let f = b.f;
    let s = x.s;
    let data = [7u8; 64];
    let dp = data.as_ptr() as *mut c_void;
    let mut o: CK_OBJECT_HANDLE = 0;
    let huge = |t| CK_ATTRIBUTE {
        type_: t,
        pValue: dp,
        ulValueLen: l,
    };
    match case {
        "C_SignInit mechanism parameter" => {
            let mut p = CK_MECHANISM {
                mechanism: CKM_ECDSA,
                pParameter: dp,
                ulParameterLen: l,
            };
            call!(f, C_SignInit(s, &mut p, x.ec_priv))
        }
        "C_FindObjectsInit attribute value" => {
            let mut a = [huge(CKA_LABEL)];
            call!(f, C_FindObjectsInit(s, a.as_mut_ptr(), 1))
        }
        "C_CreateObject attribute value" => {
            let mut class = CKO_DATA;
            let mut a = [attr(CKA_CLASS, &mut class), huge(CKA_VALUE)];
            call!(f, C_CreateObject(s, a.as_mut_ptr(), 2, &mut o))
        }
        "C_SetAttributeValue attribute value" => {
            // On a session object of its own.
            let mut class = CKO_DATA;
            let mut a = [attr(CKA_CLASS, &mut class)];
            assert_eq!(
                call!(f, C_CreateObject(s, a.as_mut_ptr(), 1, &mut o)),
                CKR_OK
            );
            let mut a = [huge(CKA_LABEL)];
            call!(f, C_SetAttributeValue(s, o, a.as_mut_ptr(), 1))
        }
        "C_GenerateKey template attribute value" => {
            let mut len: CK_ULONG = 32;
            let mut a = [attr(CKA_VALUE_LEN, &mut len), huge(CKA_LABEL)];
            let mut m = mech(CKM_AES_KEY_GEN);
            call!(f, C_GenerateKey(s, &mut m, a.as_mut_ptr(), 2, &mut o))
        }
        other => panic!("unknown case {other}"),
    }
}
