//! Invalid object handles and `C_GetAttributeValue` (§5.7 object management).

use super::*;

// ------------------------------------------------------------------------------------------------ invalid objects

pub(super) fn object_cases(
    c: &mut Checks,
    b: &Bridge,
    s: CK_SESSION_HANDLE,
    aes: CK_OBJECT_HANDLE,
    o: CK_OBJECT_HANDLE,
    what: &str,
) {
    let f = b.f;
    let (wo, wk) = (CKR_OBJECT_HANDLE_INVALID, CKR_KEY_HANDLE_INVALID);
    let mut scratch = Scratch::new();
    let (dp, bp, lp) = scratch.pointers();
    let mut n: CK_ULONG = 0;
    let mut new: CK_OBJECT_HANDLE = 0;
    let mut ecdsa = mech(CKM_ECDSA);
    let mut sha = mech(CKM_SHA256);
    let mut ecb = mech(CKM_AES_ECB);
    let mut rsa = mech(CKM_RSA_PKCS);
    let mut v = [0u8; 64];
    let mut t = [CK_ATTRIBUTE {
        type_: CKA_LABEL,
        pValue: v.as_mut_ptr() as *mut c_void,
        ulValueLen: 64,
    }];
    let tp = t.as_mut_ptr();
    chk!(c, f, wo, what, C_GetAttributeValue(s, o, tp, 1));
    unsafe { (*tp).ulValueLen = 1 };
    chk!(c, f, wo, what, C_SetAttributeValue(s, o, tp, 1));
    chk!(c, f, wo, what, C_GetObjectSize(s, o, &mut n));
    chk!(c, f, wo, what, C_CopyObject(s, o, null_mut(), 0, &mut new));
    chk!(c, f, wo, what, C_DestroyObject(s, o));
    chk!(c, f, wk, what, C_SignInit(s, &mut ecdsa, o));
    chk!(c, f, wk, what, C_VerifyInit(s, &mut ecdsa, o));
    chk!(c, f, wk, what, C_EncryptInit(s, &mut ecb, o));
    chk!(c, f, wk, what, C_DecryptInit(s, &mut ecb, o));
    chk!(c, f, wk, what, C_SignRecoverInit(s, &mut rsa, o));
    chk!(c, f, wk, what, C_VerifyRecoverInit(s, &mut rsa, o));
    chk!(
        c,
        f,
        CKR_WRAPPING_KEY_HANDLE_INVALID,
        what,
        C_WrapKey(s, &mut ecb, o, aes, bp, lp)
    );
    chk!(
        c,
        f,
        wk,
        &format!("{what} (key to wrap)"),
        C_WrapKey(s, &mut ecb, aes, o, bp, lp)
    );
    chk!(
        c,
        f,
        CKR_UNWRAPPING_KEY_HANDLE_INVALID,
        what,
        C_UnwrapKey(s, &mut ecb, o, dp, 32, null_mut(), 0, &mut new)
    );
    chk!(
        c,
        f,
        wk,
        what,
        C_DeriveKey(s, &mut sha, o, null_mut(), 0, &mut new)
    );
    c.rv(
        &format!("C_DigestInit {what} (set-up)"),
        call!(f, C_DigestInit(s, &mut sha)),
        CKR_OK,
    );
    chk!(
        c,
        f,
        wk,
        &format!("{what} (digest active)"),
        C_DigestKey(s, o)
    );
    // End the digest whatever C_DigestKey did to it.
    let _ = call!(f, C_DigestInit(s, null_mut()));
}

pub(super) fn invalid_objects(c: &mut Checks, b: &'static Bridge) {
    let x = fixture(b);
    for o in [0, 0xdead_beef, CK_ULONG::MAX] {
        object_cases(c, b, x.s, x.aes, o, &format!("unified, object {o:#x}"));
    }
    // A handle of another slot is no handle here: unified handles are the bridge's own.
    if !tgt().is_bridge {
        return;
    }
    let m = b.open(x.mirror, RW).unwrap();
    // The unified login already logged the upstream token in (same backend).
    let rv = b.login(m, CKU_USER, tgt().mirror_pin);
    assert!(
        rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN,
        "{}",
        rv_name(rv)
    );
    let m_aes = b.find_one(m, CKO_SECRET_KEY, "aes-256");
    object_cases(c, b, m, m_aes, 0, "mirror, object 0");
    // Other handles of a mirror go to the upstream unchanged. SoftHSM 2.6 says CKR_OBJECT_HANDLE_INVALID even from
    // C_SignInit (where the spec names CKR_KEY_HANDLE_INVALID): its answer is passed through.
    let mut ecdsa = mech(CKM_ECDSA);
    let got = call!(b.f, C_SignInit(m, &mut ecdsa, 0xdead_beef));
    c.any(
        "C_SignInit mirror, key 0xdeadbeef (the upstream's answer)",
        got,
        &[CKR_KEY_HANDLE_INVALID, CKR_OBJECT_HANDLE_INVALID],
    );
    close(b, m);
}

// ------------------------------------------------------------------------------------------------ attributes

pub(super) fn attributes(c: &mut Checks, b: &'static Bridge) {
    let x = fixture(b);
    let f = b.f;
    let s = x.s;
    let ua = CK_UNAVAILABLE_INFORMATION;
    let mut v1 = [0u8; 128];
    let mut v2 = [0u8; 128];
    let mut v3 = [0u8; 128];
    let a = |t: CK_ATTRIBUTE_TYPE, v: &mut [u8], n: usize| CK_ATTRIBUTE {
        type_: t,
        pValue: if n == usize::MAX {
            null_mut()
        } else {
            v.as_mut_ptr() as *mut c_void
        },
        ulValueLen: if n == usize::MAX { 0 } else { n as CK_ULONG },
    };
    let label = |v: &[u8], t: &CK_ATTRIBUTE| t.ulValueLen == 7 && &v[..7] == b"ec-p256";

    // NULL pValue: lengths only.
    let mut t = [
        a(CKA_EC_POINT, &mut v1, usize::MAX),
        a(CKA_LABEL, &mut v2, usize::MAX),
    ];
    chk!(
        c,
        f,
        CKR_OK,
        "NULL pValue",
        C_GetAttributeValue(s, x.ec_pub, t.as_mut_ptr(), 2)
    );
    c.that(
        "CKA_EC_POINT length",
        t[0].ulValueLen == 67,
        format!("{}", t[0].ulValueLen),
    );
    c.that(
        "CKA_LABEL length",
        t[1].ulValueLen == 7,
        format!("{}", t[1].ulValueLen),
    );

    // An attribute that cannot be returned (buffer too small, sensitive, unknown type): that code, that attribute
    // unavailable, the others filled.
    for row in [
        NotReturned {
            attribute: CKA_EC_POINT,
            len: 10,
            key: x.ec_pub,
            want: CKR_BUFFER_TOO_SMALL,
            call: "10-byte CKA_EC_POINT",
            unavailable: "too-small attribute: CK_UNAVAILABLE_INFORMATION",
            filled: "the other attribute is filled (BUFFER_TOO_SMALL)",
        },
        NotReturned {
            attribute: CKA_VALUE,
            len: 128,
            key: x.ec_priv,
            want: CKR_ATTRIBUTE_SENSITIVE,
            call: "CKA_VALUE of a sensitive private key",
            unavailable: "sensitive attribute: CK_UNAVAILABLE_INFORMATION",
            filled: "the other attribute is filled (SENSITIVE)",
        },
        NotReturned {
            attribute: CKA_UNKNOWN,
            len: 128,
            key: x.ec_pub,
            want: CKR_ATTRIBUTE_TYPE_INVALID,
            call: "unknown attribute type",
            unavailable: "invalid type: CK_UNAVAILABLE_INFORMATION",
            filled: "the other attribute is filled (TYPE_INVALID)",
        },
    ] {
        not_returned(c, f, s, &row);
    }

    // The bridge's own attributes mixed with the upstream's.
    c.na_if(!tgt().is_bridge);
    v2 = [0; 128];
    let mut t = [
        a(CKA_P11BRIDGE_BACKEND, &mut v3, 128),
        a(CKA_VALUE, &mut v1, 128),
        a(CKA_LABEL, &mut v2, 128),
    ];
    chk!(
        c,
        f,
        CKR_ATTRIBUTE_SENSITIVE,
        "CKA_P11BRIDGE_BACKEND + sensitive CKA_VALUE",
        C_GetAttributeValue(s, x.ec_priv, t.as_mut_ptr(), 3)
    );
    c.that(
        "CKA_P11BRIDGE_BACKEND filled",
        t[0].ulValueLen == 3 && &v3[..3] == b"hsm",
        format!("{}", t[0].ulValueLen),
    );
    c.that(
        "CKA_VALUE unavailable (mixed)",
        t[1].ulValueLen == ua,
        format!("{:#x}", t[1].ulValueLen),
    );
    c.that(
        "CKA_LABEL filled (mixed)",
        label(&v2, &t[2]),
        format!("{}", t[2].ulValueLen),
    );
    not_returned(
        c,
        f,
        s,
        &NotReturned {
            attribute: CKA_P11BRIDGE_BACKEND,
            len: 1,
            key: x.ec_pub,
            want: CKR_BUFFER_TOO_SMALL,
            call: "1-byte CKA_P11BRIDGE_BACKEND",
            unavailable: "CKA_P11BRIDGE_BACKEND unavailable",
            filled: "CKA_LABEL filled (bridge too small)",
        },
    );
    let mut t = [a(CKA_P11BRIDGE_KEY_VERSION, &mut v3, 128)];
    chk!(
        c,
        f,
        CKR_ATTRIBUTE_TYPE_INVALID,
        "CKA_P11BRIDGE_KEY_VERSION of a SoftHSM key",
        C_GetAttributeValue(s, x.ec_pub, t.as_mut_ptr(), 1)
    );
    c.that(
        "CKA_P11BRIDGE_KEY_VERSION unavailable",
        t[0].ulValueLen == ua,
        format!("{:#x}", t[0].ulValueLen),
    );
    c.na_end();
    chk!(
        c,
        f,
        CKR_OK,
        "count 0",
        C_GetAttributeValue(s, x.ec_pub, t.as_mut_ptr(), 0)
    );
}

/// An attribute of `key` that cannot be returned, asked for with CKA_LABEL (§5.7 C_GetAttributeValue): the call
/// answers `want`, that attribute's length is CK_UNAVAILABLE_INFORMATION, and the label is filled all the same.
pub(super) struct NotReturned<'a> {
    pub attribute: CK_ATTRIBUTE_TYPE,
    /// The length of its buffer.
    pub len: CK_ULONG,
    pub key: CK_OBJECT_HANDLE,
    pub want: CK_RV,
    /// The rows: the call's condition, the "unavailable" check, the "label filled" check.
    pub call: &'a str,
    pub unavailable: &'a str,
    pub filled: &'a str,
}

pub(super) fn not_returned(
    c: &mut Checks,
    f: &CK_FUNCTION_LIST,
    s: CK_SESSION_HANDLE,
    row: &NotReturned,
) {
    let mut value = [0u8; 128];
    let mut label = [0u8; 128];
    let mut t = [
        CK_ATTRIBUTE {
            type_: row.attribute,
            pValue: value.as_mut_ptr() as *mut c_void,
            ulValueLen: row.len,
        },
        CK_ATTRIBUTE {
            type_: CKA_LABEL,
            pValue: label.as_mut_ptr() as *mut c_void,
            ulValueLen: label.len() as CK_ULONG,
        },
    ];
    chk!(
        c,
        f,
        row.want,
        row.call,
        C_GetAttributeValue(s, row.key, t.as_mut_ptr(), 2)
    );
    c.that(
        row.unavailable,
        t[0].ulValueLen == CK_UNAVAILABLE_INFORMATION,
        format!("{:#x}", t[0].ulValueLen),
    );
    c.that(
        row.filled,
        t[1].ulValueLen == 7 && &label[..7] == b"ec-p256",
        format!("{}", t[1].ulValueLen),
    );
}
