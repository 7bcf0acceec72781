//! Input templates whose attribute has a NULL `pValue` with a non-zero `ulValueLen`: no value at all, so
//! `CKR_ATTRIBUTE_VALUE_INVALID` (§5.1.6: "an invalid value was specified for a particular attribute in a template").
//! SoftHSM2 2.6.1 reads through the NULL pointer (a `CK_BBOOL` in a `C_FindObjectsInit` template: SIGSEGV); found by
//! the fuzzer (conformance/fuzz/crashes/cryptoki_calls-crash-44d99669…). The bridge refuses such a template before
//! any backend sees it (`pkcs11-module/src/abi/mod.rs` `template`).

use super::*;

/// A template of one attribute with no value behind a length.
fn hollow(ty: CK_ATTRIBUTE_TYPE, len: CK_ULONG) -> [CK_ATTRIBUTE; 1] {
    [CK_ATTRIBUTE {
        type_: ty,
        pValue: null_mut(),
        ulValueLen: len,
    }]
}

pub(super) fn null_values(c: &mut Checks, b: &'static Bridge) {
    let x = fixture(b);
    let f = b.f;
    let s = x.s;
    let inv = CKR_ATTRIBUTE_VALUE_INVALID;
    let mut o: CK_OBJECT_HANDLE = 0;
    let mut o2: CK_OBJECT_HANDLE = 0;

    let mut t = hollow(CKA_TOKEN, 1);
    chk!(
        c,
        f,
        inv,
        "CK_BBOOL with a NULL value",
        C_FindObjectsInit(s, t.as_mut_ptr(), 1)
    );
    let _ = call!(f, C_FindObjectsFinal(s));
    let mut t = hollow(CKA_LABEL, 4);
    chk!(
        c,
        f,
        inv,
        "CKA_LABEL with a NULL value",
        C_FindObjectsInit(s, t.as_mut_ptr(), 1)
    );
    let _ = call!(f, C_FindObjectsFinal(s));
    let mut t = hollow(CKA_CLASS, 8);
    chk!(
        c,
        f,
        inv,
        "CKA_CLASS with a NULL value",
        C_CreateObject(s, t.as_mut_ptr(), 1, &mut o)
    );
    let mut t = hollow(CKA_LABEL, 4);
    chk!(
        c,
        f,
        inv,
        "CKA_LABEL with a NULL value",
        C_SetAttributeValue(s, x.aes, t.as_mut_ptr(), 1)
    );
    chk!(
        c,
        f,
        inv,
        "CKA_LABEL with a NULL value",
        C_CopyObject(s, x.aes, t.as_mut_ptr(), 1, &mut o)
    );
    let mut t = hollow(CKA_VALUE_LEN, 8);
    chk!(
        c,
        f,
        inv,
        "CKA_VALUE_LEN with a NULL value",
        C_GenerateKey(s, &mut mech(CKM_AES_KEY_GEN), t.as_mut_ptr(), 1, &mut o)
    );
    let mut good_bits: CK_ULONG = 2048;
    let mut public = [attr(CKA_MODULUS_BITS, &mut good_bits)];
    let mut t = hollow(CKA_SIGN, 1);
    chk!(
        c,
        f,
        inv,
        "private CKA_SIGN with a NULL value",
        C_GenerateKeyPair(
            s,
            &mut mech(CKM_RSA_PKCS_KEY_PAIR_GEN),
            public.as_mut_ptr(),
            1,
            t.as_mut_ptr(),
            1,
            &mut o,
            &mut o2
        )
    );
    // The mirror passes templates through, but not this one.
    let m = b.open(x.mirror, RW).expect("open a mirror session");
    let mut t = hollow(CKA_TOKEN, 1);
    chk!(
        c,
        f,
        inv,
        "CK_BBOOL with a NULL value (mirror)",
        C_FindObjectsInit(m, t.as_mut_ptr(), 1)
    );
    let _ = call!(f, C_FindObjectsFinal(m));
    let _ = call!(f, C_CloseSession(m));
}
