//! Hash-and-sign emulation: backend `b` offers only raw mechanisms (`hash_and_sign = false`), the unified token
//! offers `CKM_ECDSA_SHA256` & co. (from `a`), so the core hashes and `b` signs the digest.

use crate::common::*;
use cryptoki_sys::*;
use p11bridge_backends::fake::script;
use std::ptr::null_mut;

#[test]
fn ecdsa_sha256_over_a_raw_only_backend() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let k = key(h, "b-ec", CKO_PRIVATE_KEY);
    let public = key(h, "b-ec", CKO_PUBLIC_KEY);
    let data = b"emulated hash-and-sign";
    script("b").reset_calls();
    let sig = sign(h, &mech(CKM_ECDSA_SHA256), k, data).expect("emulated CKM_ECDSA_SHA256");
    assert_eq!(
        script("b").calls("sign"),
        1,
        "the length query did not reach b"
    );
    assert!(p256_verifies(&ec_point(h, public), &sha256(data), &sig));
    assert_eq!(
        verify(h, &mech(CKM_ECDSA_SHA256), public, data, &sig),
        CKR_OK
    );
    assert_eq!(
        verify(h, &mech(CKM_ECDSA_SHA256), public, b"other data", &sig),
        CKR_SIGNATURE_INVALID
    );
}

#[test]
fn emulated_multi_part_signing_and_verification() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let k = key(h, "b-ec", CKO_PRIVATE_KEY);
    let public = key(h, "b-ec", CKO_PUBLIC_KEY);
    assert_eq!(sign_init(h, &mech(CKM_ECDSA_SHA256), k), CKR_OK);
    for p in [&b"part one, "[..], b"part two"] {
        assert_eq!(
            call!(C_SignUpdate, h, p.as_ptr() as *mut _, p.len() as CK_ULONG),
            CKR_OK
        );
    }
    let mut len = 0;
    assert_eq!(call!(C_SignFinal, h, null_mut(), &mut len), CKR_OK);
    assert_eq!(len, 64);
    let mut short = [0u8; 8];
    len = 8;
    assert_eq!(
        call!(C_SignFinal, h, short.as_mut_ptr(), &mut len),
        CKR_BUFFER_TOO_SMALL
    );
    let mut sig = [0u8; 64];
    len = 64;
    assert_eq!(call!(C_SignFinal, h, sig.as_mut_ptr(), &mut len), CKR_OK);
    assert!(p256_verifies(
        &ec_point(h, public),
        &sha256(b"part one, part two"),
        &sig
    ));
    assert_eq!(
        call!(C_VerifyInit, h, &mut mech(CKM_ECDSA_SHA256), public),
        CKR_OK
    );
    for p in [&b"part one, "[..], b"part two"] {
        assert_eq!(
            call!(C_VerifyUpdate, h, p.as_ptr() as *mut _, p.len() as CK_ULONG),
            CKR_OK
        );
    }
    assert_eq!(call!(C_VerifyFinal, h, sig.as_mut_ptr(), 64), CKR_OK);
}

#[test]
fn ecdsa_sha384_on_p384() {
    use p384::ecdsa::signature::hazmat::PrehashVerifier;
    use sha2::Digest;
    let _b = Bridge::new(THREE);
    let h = user_session();
    let k = key(h, "b-p384", CKO_PRIVATE_KEY);
    let data = b"p-384 data";
    let sig = sign(h, &mech(CKM_ECDSA_SHA384), k, data).expect("sign");
    assert_eq!(sig.len(), 96);
    let point = ec_point(h, key(h, "b-p384", CKO_PUBLIC_KEY));
    let vk = p384::ecdsa::VerifyingKey::from_sec1_bytes(&point).expect("point");
    let s = p384::ecdsa::Signature::from_slice(&sig).expect("r||s");
    vk.verify_prehash(&sha2::Sha384::digest(data), &s)
        .expect("verifies");
}

#[test]
fn rsa_hash_and_sign_over_raw_pkcs1_and_pss() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let k = key(h, "b-rsa", CKO_PRIVATE_KEY);
    let pk = rsa_public(h, key(h, "b-rsa", CKO_PUBLIC_KEY));
    let data = b"rsa over DigestInfo";
    let sig = sign(h, &mech(CKM_SHA256_RSA_PKCS), k, data).expect("emulated SHA256_RSA_PKCS");
    pk.verify(
        rsa::Pkcs1v15Sign::new::<sha2::Sha256>(),
        &sha256(data),
        &sig,
    )
    .expect("verifies");
    let mut pss = CK_RSA_PKCS_PSS_PARAMS {
        hashAlg: CKM_SHA256,
        mgf: CKG_MGF1_SHA256,
        sLen: 32,
    };
    let sig =
        sign(h, &mech_with(CKM_SHA256_RSA_PKCS_PSS, &mut pss), k, data).expect("emulated PSS");
    pk.verify(rsa::Pss::new::<sha2::Sha256>(), &sha256(data), &sig)
        .expect("PSS verifies");
}

#[test]
fn the_raw_mechanism_still_works_directly() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let k = key(h, "b-ec", CKO_PRIVATE_KEY);
    let digest = sha256(b"raw");
    let sig = sign(h, &mech(CKM_ECDSA), k, &digest).expect("CKM_ECDSA");
    assert!(p256_verifies(
        &ec_point(h, key(h, "b-ec", CKO_PUBLIC_KEY)),
        &digest,
        &sig
    ));
}

#[test]
fn no_emulation_without_a_raw_base() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    // Ed25519 has no hash-and-sign form: CKM_ECDSA_SHA256 with it is the key's mistake, not emulated.
    let k = key(h, "b-ed", CKO_PRIVATE_KEY);
    assert_ne!(sign_init(h, &mech(CKM_ECDSA_SHA256), k), CKR_OK);
}

/// §5.2 over the emulation: a single-part C_Sign / C_Verify after an update ends the operation with
/// CKR_OPERATION_NOT_INITIALIZED (as SoftHSM2 answers), and the backend's raw operation ends too: a new Init works.
#[test]
fn emulated_single_part_after_an_update_is_refused() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let k = key(h, "b-ec", CKO_PRIVATE_KEY);
    let public = key(h, "b-ec", CKO_PUBLIC_KEY);
    let data = b"part";
    let mut sig = [0u8; 64];
    let mut len: CK_ULONG = 64;
    assert_eq!(sign_init(h, &mech(CKM_ECDSA_SHA256), k), CKR_OK);
    assert_eq!(call!(C_SignUpdate, h, data.as_ptr() as *mut _, 4), CKR_OK);
    assert_eq!(
        call!(
            C_Sign,
            h,
            data.as_ptr() as *mut _,
            4,
            sig.as_mut_ptr(),
            &mut len
        ),
        CKR_OPERATION_NOT_INITIALIZED
    );
    let good = sign(h, &mech(CKM_ECDSA_SHA256), k, data).expect("a new operation signs");
    assert!(p256_verifies(&ec_point(h, public), &sha256(data), &good));
    let mut m = mech(CKM_ECDSA_SHA256);
    assert_eq!(call!(C_VerifyInit, h, &mut m, public), CKR_OK);
    assert_eq!(call!(C_VerifyUpdate, h, data.as_ptr() as *mut _, 4), CKR_OK);
    assert_eq!(
        call!(
            C_Verify,
            h,
            data.as_ptr() as *mut _,
            4,
            good.as_ptr() as *mut _,
            good.len() as CK_ULONG
        ),
        CKR_OPERATION_NOT_INITIALIZED
    );
    assert_eq!(
        verify(h, &mech(CKM_ECDSA_SHA256), public, data, &good),
        CKR_OK
    );
}
