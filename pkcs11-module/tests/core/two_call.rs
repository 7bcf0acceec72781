//! The two-call convention (§5.2): a NULL buffer asks for the length, a short one gets `CKR_BUFFER_TOO_SMALL` with
//! the length and leaves the operation active, and a length query never reaches a remote service.

use crate::common::*;
use cryptoki_sys::*;
use p11bridge_backends::fake::script;
use std::ptr::null_mut;

#[test]
fn a_length_query_and_a_short_buffer_never_reach_the_backend() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let k = key(h, "a-ec", CKO_PRIVATE_KEY);
    let digest = sha256(b"two calls");
    script("a").reset_calls();
    assert_eq!(sign_init(h, &mech(CKM_ECDSA), k), CKR_OK);
    let mut len = 0;
    let dp = digest.as_ptr() as *mut u8;
    assert_eq!(call!(C_Sign, h, dp, 32, null_mut(), &mut len), CKR_OK);
    assert_eq!(len, 64);
    let mut short = [0u8; 10];
    len = 10;
    assert_eq!(
        call!(C_Sign, h, dp, 32, short.as_mut_ptr(), &mut len),
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(len, 64);
    assert_eq!(
        script("a").calls("sign"),
        0,
        "no call reached the service yet"
    );
    let mut sig = [0u8; 64];
    assert_eq!(call!(C_Sign, h, dp, 32, sig.as_mut_ptr(), &mut len), CKR_OK);
    assert_eq!(script("a").calls("sign"), 1);
    let public = key(h, "a-ec", CKO_PUBLIC_KEY);
    assert!(p256_verifies(&ec_point(h, public), &digest, &sig));
    // The successful call ended the operation.
    assert_eq!(
        call!(C_Sign, h, dp, 32, sig.as_mut_ptr(), &mut len),
        CKR_OPERATION_NOT_INITIALIZED
    );
}

#[test]
fn a_result_that_did_not_fit_is_kept_for_the_retry() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let public = key(h, "a-rsa", CKO_PUBLIC_KEY);
    let private = key(h, "a-rsa", CKO_PRIVATE_KEY);
    let pt = b"secret message";
    let ct = rsa_public(h, public)
        .encrypt(&mut rand_core::OsRng, rsa::Oaep::new::<sha2::Sha256>(), pt)
        .expect("encrypt");
    let mut params = CK_RSA_PKCS_OAEP_PARAMS {
        hashAlg: CKM_SHA256,
        mgf: CKG_MGF1_SHA256,
        source: CKZ_DATA_SPECIFIED,
        pSourceData: null_mut(),
        ulSourceDataLen: 0,
    };
    let mut m = mech_with(CKM_RSA_PKCS_OAEP, &mut params);
    script("a").reset_calls();
    assert_eq!(call!(C_DecryptInit, h, &mut m, private), CKR_OK);
    let cp = ct.as_ptr() as *mut u8;
    let n = ct.len() as CK_ULONG;
    let mut len = 0;
    assert_eq!(call!(C_Decrypt, h, cp, n, null_mut(), &mut len), CKR_OK);
    assert_eq!(len, 256, "an upper bound, known without the service");
    assert_eq!(script("a").calls("decrypt"), 0);
    let mut short = [0u8; 4];
    len = 4;
    assert_eq!(
        call!(C_Decrypt, h, cp, n, short.as_mut_ptr(), &mut len),
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(len as usize, pt.len(), "the exact length once decrypted");
    let mut out = vec![0u8; len as usize];
    assert_eq!(
        call!(C_Decrypt, h, cp, n, out.as_mut_ptr(), &mut len),
        CKR_OK
    );
    assert_eq!(&out[..len as usize], pt);
    assert_eq!(
        script("a").calls("decrypt"),
        1,
        "decrypted once, handed out on the retry"
    );
}

#[test]
fn sign_final_follows_the_convention_too() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let k = key(h, "a-ec", CKO_PRIVATE_KEY);
    assert_eq!(sign_init(h, &mech(CKM_ECDSA_SHA256), k), CKR_OK);
    for part in [&b"multi"[..], b"-part", b" data"] {
        assert_eq!(
            call!(
                C_SignUpdate,
                h,
                part.as_ptr() as *mut _,
                part.len() as CK_ULONG
            ),
            CKR_OK
        );
    }
    let mut len = 0;
    assert_eq!(call!(C_SignFinal, h, null_mut(), &mut len), CKR_OK);
    assert_eq!(len, 64);
    let mut short = [0u8; 63];
    len = 63;
    assert_eq!(
        call!(C_SignFinal, h, short.as_mut_ptr(), &mut len),
        CKR_BUFFER_TOO_SMALL
    );
    let mut sig = [0u8; 64];
    len = 64;
    assert_eq!(call!(C_SignFinal, h, sig.as_mut_ptr(), &mut len), CKR_OK);
    let public = key(h, "a-ec", CKO_PUBLIC_KEY);
    assert!(p256_verifies(
        &ec_point(h, public),
        &sha256(b"multi-part data"),
        &sig
    ));
}

#[test]
fn a_pass_through_backend_keeps_its_operation_after_a_short_buffer() {
    let _b = Bridge::new(THREE);
    let h = open(0, false);
    assert_eq!(call!(C_DigestInit, h, &mut mech(CKM_SHA256)), CKR_OK);
    let d = b"abc";
    let dp = d.as_ptr() as *mut u8;
    let mut len = 0;
    assert_eq!(call!(C_Digest, h, dp, 3, null_mut(), &mut len), CKR_OK);
    assert_eq!(len, 32);
    let mut short = [0u8; 31];
    len = 31;
    assert_eq!(
        call!(C_Digest, h, dp, 3, short.as_mut_ptr(), &mut len),
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(len, 32);
    let mut out = [0u8; 32];
    assert_eq!(
        call!(C_Digest, h, dp, 3, out.as_mut_ptr(), &mut len),
        CKR_OK
    );
    assert_eq!(out.to_vec(), sha256(d));
}

#[test]
fn attribute_values_follow_the_convention() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let k = key(h, "a-ec", CKO_PUBLIC_KEY);
    let mut a = CK_ATTRIBUTE {
        type_: CKA_LABEL,
        pValue: null_mut(),
        ulValueLen: 0,
    };
    assert_eq!(call!(C_GetAttributeValue, h, k, &mut a, 1), CKR_OK);
    assert_eq!(a.ulValueLen, 4);
    let mut buf = [0u8; 2];
    a.pValue = buf.as_mut_ptr() as *mut _;
    a.ulValueLen = 2;
    assert_eq!(
        call!(C_GetAttributeValue, h, k, &mut a, 1),
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(a.ulValueLen, CK_UNAVAILABLE_INFORMATION);
    // Sensitive and absent attributes: the rest of the template is still filled.
    let priv_key = key(h, "a-ec", CKO_PRIVATE_KEY);
    let mut kt: CK_ULONG = 0;
    let mut t = [
        CK_ATTRIBUTE {
            type_: CKA_VALUE,
            pValue: null_mut(),
            ulValueLen: 0,
        },
        CK_ATTRIBUTE {
            type_: CKA_KEY_TYPE,
            pValue: &mut kt as *mut _ as *mut _,
            ulValueLen: std::mem::size_of::<CK_ULONG>() as CK_ULONG,
        },
    ];
    assert_eq!(
        call!(C_GetAttributeValue, h, priv_key, t.as_mut_ptr(), 2),
        CKR_ATTRIBUTE_SENSITIVE
    );
    assert_eq!(t[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    assert_eq!(kt, CKK_EC);
}

#[test]
fn a_mechanism_list_query_follows_the_convention() {
    let _b = Bridge::new(THREE);
    let mut n = 0;
    assert_eq!(call!(C_GetMechanismList, 0, null_mut(), &mut n), CKR_OK);
    let mut short = vec![0; 1];
    let mut m = 1;
    assert_eq!(
        call!(C_GetMechanismList, 0, short.as_mut_ptr(), &mut m),
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(m, n);
}
