//! Operation state (§5.2): which calls end an operation and which leave it active, `CKR_OPERATION_ACTIVE`, calls
//! without an operation, and the mechanisms of each key type end to end.

use crate::common::*;
use cryptoki_sys::*;
use p11bridge_backends::fake::script;
use std::ptr::null_mut;

#[test]
fn an_init_while_active_is_refused_and_the_first_operation_goes_on() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let k = key(h, "a-ec", CKO_PRIVATE_KEY);
    assert_eq!(sign_init(h, &mech(CKM_ECDSA), k), CKR_OK);
    assert_eq!(sign_init(h, &mech(CKM_ECDSA), k), CKR_OPERATION_ACTIVE);
    // Another backend's key: still the session's one sign operation.
    let other = key(h, "b-ec", CKO_PRIVATE_KEY);
    assert_eq!(sign_init(h, &mech(CKM_ECDSA), other), CKR_OPERATION_ACTIVE);
    let digest = sha256(b"first");
    let sig = sign_data(h, &digest).expect("the first operation");
    assert!(p256_verifies(
        &ec_point(h, key(h, "a-ec", CKO_PUBLIC_KEY)),
        &digest,
        &sig
    ));
}

#[test]
fn calls_without_an_operation_are_not_initialized() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let d = [0u8; 32];
    let mut len = 64;
    let mut out = [0u8; 64];
    let dp = d.as_ptr() as *mut u8;
    assert_eq!(
        call!(C_Sign, h, dp, 32, out.as_mut_ptr(), &mut len),
        CKR_OPERATION_NOT_INITIALIZED
    );
    assert_eq!(
        call!(C_SignUpdate, h, dp, 32),
        CKR_OPERATION_NOT_INITIALIZED
    );
    assert_eq!(
        call!(C_SignFinal, h, out.as_mut_ptr(), &mut len),
        CKR_OPERATION_NOT_INITIALIZED
    );
    assert_eq!(
        call!(C_Verify, h, dp, 32, out.as_mut_ptr(), 64),
        CKR_OPERATION_NOT_INITIALIZED
    );
    assert_eq!(
        call!(C_Decrypt, h, dp, 32, out.as_mut_ptr(), &mut len),
        CKR_OPERATION_NOT_INITIALIZED
    );
    let mut found = [0; 4];
    assert_eq!(
        call!(C_FindObjects, h, found.as_mut_ptr(), 4, &mut len),
        CKR_OPERATION_NOT_INITIALIZED
    );
}

#[test]
fn a_backend_error_ends_the_operation() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let k = key(h, "a-ec", CKO_PRIVATE_KEY);
    script("a").fail("sign", Some(CKR_DEVICE_ERROR));
    assert_eq!(
        sign(h, &mech(CKM_ECDSA), k, &sha256(b"x")),
        Err(CKR_DEVICE_ERROR)
    );
    let mut len = 64;
    let mut out = [0u8; 64];
    assert_eq!(
        call!(C_Sign, h, out.as_mut_ptr(), 32, out.as_mut_ptr(), &mut len),
        CKR_OPERATION_NOT_INITIALIZED
    );
    script("a").fail("sign", None);
    assert!(
        sign(h, &mech(CKM_ECDSA), k, &sha256(b"x")).is_ok(),
        "a new operation starts"
    );
}

#[test]
fn bad_input_ends_the_operation() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let k = key(h, "a-ec", CKO_PRIVATE_KEY);
    // CKM_ECDSA signs a digest: 7 bytes are none.
    assert_eq!(
        sign(h, &mech(CKM_ECDSA), k, &[1u8; 7]),
        Err(CKR_DATA_LEN_RANGE)
    );
    assert_eq!(
        sign_init(h, &mech(CKM_ECDSA), k),
        CKR_OK,
        "the failed C_Sign ended it"
    );
}

#[test]
fn verify_ends_the_operation_whatever_its_result() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let public = key(h, "a-ec", CKO_PUBLIC_KEY);
    let digest = sha256(b"v");
    assert_eq!(
        verify(h, &mech(CKM_ECDSA), public, &digest, &[7u8; 64]),
        CKR_SIGNATURE_INVALID
    );
    let mut sig = [0u8; 64];
    assert_eq!(
        call!(
            C_Verify,
            h,
            digest.as_ptr() as *mut _,
            32,
            sig.as_mut_ptr(),
            64
        ),
        CKR_OPERATION_NOT_INITIALIZED
    );
    assert_eq!(
        verify(h, &mech(CKM_ECDSA), public, &digest, &[7u8; 63]),
        CKR_SIGNATURE_LEN_RANGE
    );
    let private = key(h, "a-ec", CKO_PRIVATE_KEY);
    let good = sign(h, &mech(CKM_ECDSA), private, &digest).expect("sign");
    sig.copy_from_slice(&good);
    assert_eq!(verify(h, &mech(CKM_ECDSA), public, &digest, &sig), CKR_OK);
}

#[test]
fn a_null_mechanism_or_session_cancel_ends_the_operation() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let k = key(h, "a-ec", CKO_PRIVATE_KEY);
    assert_eq!(sign_init(h, &mech(CKM_ECDSA), k), CKR_OK);
    assert_eq!(call!(C_SignInit, h, null_mut(), 0), CKR_OK);
    assert_eq!(
        sign_init(h, &mech(CKM_ECDSA), k),
        CKR_OK,
        "cancelled by the NULL mechanism"
    );
    assert_eq!(call!(C_SessionCancel, h, CKF_SIGN), CKR_OK);
    assert_eq!(
        sign_init(h, &mech(CKM_ECDSA), k),
        CKR_OK,
        "cancelled by C_SessionCancel"
    );
    // Cancelling signing leaves a verification alone.
    let public = key(h, "a-ec", CKO_PUBLIC_KEY);
    assert_eq!(call!(C_VerifyInit, h, &mut mech(CKM_ECDSA), public), CKR_OK);
    assert_eq!(call!(C_SessionCancel, h, CKF_SIGN), CKR_OK);
    assert_eq!(
        call!(C_VerifyInit, h, &mut mech(CKM_ECDSA), public),
        CKR_OPERATION_ACTIVE
    );
}

#[test]
fn keys_refuse_what_they_are_not_for() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let ec = key(h, "a-ec", CKO_PRIVATE_KEY);
    let public = key(h, "a-ec", CKO_PUBLIC_KEY);
    assert_eq!(
        sign_init(h, &mech(CKM_ECDSA), public),
        CKR_KEY_FUNCTION_NOT_PERMITTED
    );
    assert_eq!(
        sign_init(h, &mech(CKM_SHA256_RSA_PKCS), ec),
        CKR_KEY_TYPE_INCONSISTENT
    );
    assert_eq!(
        sign_init(h, &mech(CKM_ECDSA), 0xdead),
        CKR_KEY_HANDLE_INVALID
    );
    assert_eq!(sign_init(h, &mech(0x7fff_0000), ec), CKR_MECHANISM_INVALID);
    assert_eq!(
        call!(C_EncryptInit, h, &mut mech(CKM_ECDSA), ec),
        CKR_KEY_FUNCTION_NOT_PERMITTED
    );
}

#[test]
fn rsa_pkcs1_and_pss_signatures_verify_independently() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let k = key(h, "a-rsa", CKO_PRIVATE_KEY);
    let pk = rsa_public(h, key(h, "a-rsa", CKO_PUBLIC_KEY));
    let data = b"rsa data";
    let sig = sign(h, &mech(CKM_SHA256_RSA_PKCS), k, data).expect("PKCS#1 v1.5");
    pk.verify(
        rsa::Pkcs1v15Sign::new::<sha2::Sha256>(),
        &sha256(data),
        &sig,
    )
    .expect("PKCS#1 v1.5 verifies");
    let mut pss = CK_RSA_PKCS_PSS_PARAMS {
        hashAlg: CKM_SHA256,
        mgf: CKG_MGF1_SHA256,
        sLen: 32,
    };
    let sig = sign(h, &mech_with(CKM_SHA256_RSA_PKCS_PSS, &mut pss), k, data).expect("PSS");
    pk.verify(rsa::Pss::new::<sha2::Sha256>(), &sha256(data), &sig)
        .expect("PSS verifies");
    // A PSS parameter whose hash is not the mechanism's.
    let mut bad = CK_RSA_PKCS_PSS_PARAMS {
        hashAlg: CKM_SHA384,
        mgf: CKG_MGF1_SHA384,
        sLen: 48,
    };
    assert_eq!(
        sign_init(h, &mech_with(CKM_SHA256_RSA_PKCS_PSS, &mut bad), k),
        CKR_MECHANISM_PARAM_INVALID
    );
}

#[test]
fn ed25519_signatures_verify_independently() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let k = key(h, "b-ed", CKO_PRIVATE_KEY);
    let data = b"an ed25519 message";
    let sig = sign(h, &mech(CKM_EDDSA), k, data).expect("EdDSA");
    let der = attr(h, key(h, "b-ed", CKO_PUBLIC_KEY), CKA_EC_POINT).expect("point");
    let point: [u8; 32] = der[2..].try_into().expect("32 bytes");
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&point).expect("key");
    let sig = ed25519_dalek::Signature::from_slice(&sig).expect("64 bytes");
    vk.verify_strict(data, &sig).expect("verifies");
}

#[test]
fn hmac_signs_and_verifies_multi_part() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let k = key(h, "a-hmac", CKO_SECRET_KEY);
    let mac = sign(h, &mech(CKM_SHA256_HMAC), k, b"hello world").expect("HMAC");
    assert_eq!(mac.len(), 32);
    assert_eq!(
        call!(C_VerifyInit, h, &mut mech(CKM_SHA256_HMAC), k),
        CKR_OK
    );
    for p in [&b"hello "[..], b"world"] {
        assert_eq!(
            call!(C_VerifyUpdate, h, p.as_ptr() as *mut _, p.len() as CK_ULONG),
            CKR_OK
        );
    }
    assert_eq!(call!(C_VerifyFinal, h, mac.as_ptr() as *mut _, 32), CKR_OK);
    let mut wrong = mac.clone();
    wrong[0] ^= 1;
    assert_eq!(
        verify(h, &mech(CKM_SHA256_HMAC), k, b"hello world", &wrong),
        CKR_SIGNATURE_INVALID
    );
}

#[test]
fn a_secret_key_encrypts_and_decrypts_with_the_service_mechanism() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let k = key(h, "a-aes", CKO_SECRET_KEY);
    let m = p11bridge_vendor::CKM_P11BRIDGE_VAULT_ENCRYPT;
    let pt = b"plain text for the fake service";
    assert_eq!(call!(C_EncryptInit, h, &mut mech(m), k), CKR_OK);
    let mut len = 0;
    let pp = pt.as_ptr() as *mut u8;
    let n = pt.len() as CK_ULONG;
    assert_eq!(call!(C_Encrypt, h, pp, n, null_mut(), &mut len), CKR_OK);
    let mut ct = vec![0u8; len as usize];
    assert_eq!(
        call!(C_Encrypt, h, pp, n, ct.as_mut_ptr(), &mut len),
        CKR_OK
    );
    ct.truncate(len as usize);
    assert_ne!(&ct[12..12 + pt.len()], pt);
    assert_eq!(call!(C_DecryptInit, h, &mut mech(m), k), CKR_OK);
    let mut out = vec![0u8; ct.len()];
    let mut olen = out.len() as CK_ULONG;
    assert_eq!(
        call!(
            C_Decrypt,
            h,
            ct.as_mut_ptr(),
            ct.len() as CK_ULONG,
            out.as_mut_ptr(),
            &mut olen
        ),
        CKR_OK
    );
    assert_eq!(&out[..olen as usize], pt);
    // Tampered: the service refuses it.
    ct[13] ^= 1;
    assert_eq!(call!(C_DecryptInit, h, &mut mech(m), k), CKR_OK);
    olen = out.len() as CK_ULONG;
    assert_eq!(
        call!(
            C_Decrypt,
            h,
            ct.as_mut_ptr(),
            ct.len() as CK_ULONG,
            out.as_mut_ptr(),
            &mut olen
        ),
        CKR_ENCRYPTED_DATA_INVALID
    );
}

#[test]
fn random_comes_from_the_module_when_no_backend_has_it() {
    let _b = Bridge::new(THREE);
    let h = open(0, false);
    let mut a = [0u8; 32];
    let mut b = [0u8; 32];
    assert_eq!(call!(C_GenerateRandom, h, a.as_mut_ptr(), 32), CKR_OK);
    assert_eq!(call!(C_GenerateRandom, h, b.as_mut_ptr(), 32), CKR_OK);
    assert_ne!(a, b);
    assert_eq!(script("a").calls("random"), 0);
}

/// §5.2 (C_Sign): "C_Sign cannot be used to terminate a multi-part operation, and must be called after C_SignInit
/// without intervening C_SignUpdate calls." The bridge should refuse it for every backend; `CKR_OPERATION_ACTIVE`
/// is the code asserted here (the multi-part operation is still active) — check it against SoftHSM2 and the
/// conformance matrix when fixing.
/// §5.2: a single-part call cannot finish a multi-part operation. The answer is SoftHSM2's for the same sequence
/// (`CKR_OPERATION_NOT_INITIALIZED`), and the operation ends; over the remote engine and over hash-and-sign
/// emulation alike. Verify likewise.
#[test]
fn a_single_part_call_after_an_update_is_refused() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let k = key(h, "a-ec", CKO_PRIVATE_KEY);
    assert_eq!(sign_init(h, &mech(CKM_ECDSA_SHA256), k), CKR_OK);
    let part = b"first part";
    assert_eq!(
        call!(
            C_SignUpdate,
            h,
            part.as_ptr() as *mut _,
            part.len() as CK_ULONG
        ),
        CKR_OK
    );
    let mut sig = [0u8; 64];
    let mut len = 64;
    assert_eq!(
        call!(
            C_Sign,
            h,
            part.as_ptr() as *mut _,
            part.len() as CK_ULONG,
            sig.as_mut_ptr(),
            &mut len
        ),
        CKR_OPERATION_NOT_INITIALIZED
    );
    // The operation ended: Final has nothing to finish, a new Init works.
    assert_eq!(
        call!(C_SignFinal, h, sig.as_mut_ptr(), &mut len),
        CKR_OPERATION_NOT_INITIALIZED
    );
    assert_eq!(sign_init(h, &mech(CKM_ECDSA_SHA256), k), CKR_OK);
    len = 64;
    assert_eq!(
        call!(
            C_Sign,
            h,
            part.as_ptr() as *mut _,
            part.len() as CK_ULONG,
            sig.as_mut_ptr(),
            &mut len
        ),
        CKR_OK
    );
}
