//! Keys made and destroyed through the unified token, and the service's own rules on mechanism parameters.

use crate::common::*;
use cryptoki_sys::*;
use p11bridge_backends::fake::script;

/// `CKA_EC_PARAMS` of P-256.
const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

fn generate_pair(
    h: CK_SESSION_HANDLE,
    l: &str,
) -> Result<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE), CK_RV> {
    let mut public = template(vec![
        Attr(CKA_EC_PARAMS, P256.to_vec()),
        label(l),
        flag(CKA_VERIFY, true),
    ]);
    let mut private = template(vec![label(l), flag(CKA_SIGN, true), backend("b")]);
    let (mut pu, mut pr) = (0, 0);
    let rv = call!(
        C_GenerateKeyPair,
        h,
        &mut mech(CKM_EC_KEY_PAIR_GEN),
        public.as_mut_ptr(),
        public.len() as CK_ULONG,
        private.as_mut_ptr(),
        private.len() as CK_ULONG,
        &mut pu,
        &mut pr
    );
    if rv == CKR_OK {
        Ok((pu, pr))
    } else {
        Err(rv)
    }
}

#[test]
fn a_generated_key_pair_signs_where_it_was_made() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let (public, private) = generate_pair(h, "fresh").expect("C_GenerateKeyPair in b");
    assert_eq!(script("b").calls("generate"), 1);
    assert_eq!(attr_str(h, private, CKA_BACKEND), "b");
    assert_eq!(
        key(h, "fresh", CKO_PRIVATE_KEY),
        private,
        "found under the handle it was made with"
    );
    let digest = sha256(b"fresh key");
    let sig = sign(h, &mech(CKM_ECDSA), private, &digest).expect("sign");
    assert!(p256_verifies(&ec_point(h, public), &digest, &sig));
    assert_eq!(
        generate_pair(h, "fresh"),
        Err(CKR_ATTRIBUTE_VALUE_INVALID),
        "the label is taken"
    );
}

#[test]
fn keys_need_a_login_to_be_made() {
    let _b = Bridge::new(THREE);
    let h = open(0, true);
    assert_eq!(generate_pair(h, "anonymous"), Err(CKR_USER_NOT_LOGGED_IN));
    assert_eq!(script("b").calls("generate"), 0);
}

#[test]
fn remote_keys_are_destroyed_only_where_allowed() {
    let _b = Bridge::new(&THREE.replace(
        "hash_and_sign = false",
        "hash_and_sign = false\nallow_destroy = true",
    ));
    let h = user_session();
    let ka = key(h, "a-ec", CKO_PRIVATE_KEY);
    assert_eq!(call!(C_DestroyObject, h, ka), CKR_ACTION_PROHIBITED);
    let kb = key(h, "b-ec", CKO_PRIVATE_KEY);
    let public = key(h, "b-ec", CKO_PUBLIC_KEY);
    assert_eq!(
        call!(C_DestroyObject, h, public),
        CKR_ACTION_PROHIBITED,
        "only with its private key"
    );
    assert_eq!(call!(C_DestroyObject, h, kb), CKR_OK);
    assert_eq!(script("b").calls("destroy"), 1);
    assert!(find(h, &[label("b-ec")]).is_empty());
    assert_eq!(sign_init(h, &mech(CKM_ECDSA), kb), CKR_KEY_HANDLE_INVALID);
}

#[test]
fn the_service_refuses_parameters_it_cannot_do_at_init() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let k = key(h, "a-rsa", CKO_PRIVATE_KEY);
    let mut pss = CK_RSA_PKCS_PSS_PARAMS {
        hashAlg: CKM_SHA384,
        mgf: CKG_MGF1_SHA384,
        sLen: 48,
    };
    assert_eq!(
        sign_init(h, &mech_with(CKM_SHA384_RSA_PKCS_PSS, &mut pss), k),
        CKR_MECHANISM_PARAM_INVALID
    );
    assert_eq!(script("a").calls("sign"), 0);
    // The refused init started nothing.
    assert_eq!(sign_init(h, &mech(CKM_SHA256_RSA_PKCS), k), CKR_OK);
}

#[test]
fn ecdsa_needs_an_ec_key_and_says_so() {
    // SoftHSM2 2.6.1 dies on ECDSA with an Ed25519 key; the core refuses it for every backend.
    let _b = Bridge::new(THREE);
    let h = user_session();
    let ed = key(h, "b-ed", CKO_PRIVATE_KEY);
    for m in [CKM_ECDSA, CKM_ECDSA_SHA256, CKM_ECDSA_SHA3_512] {
        assert_eq!(sign_init(h, &mech(m), ed), CKR_KEY_TYPE_INCONSISTENT);
    }
    let (_, cause) = last_error();
    assert!(cause.contains("needs an EC (CKK_EC) key"), "{cause}");
    // The refused init started nothing; the key signs with its own mechanism.
    assert_eq!(sign_init(h, &mech(CKM_EDDSA), ed), CKR_OK);
}

#[test]
fn attributes_of_remote_keys_are_read_only() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let k = key(h, "a-ec", CKO_PRIVATE_KEY);
    let mut t = template(vec![label("renamed")]);
    let rv = call!(
        C_SetAttributeValue,
        h,
        k,
        t.as_mut_ptr(),
        t.len() as CK_ULONG
    );
    assert_eq!(rv, CKR_ACTION_PROHIBITED);
    let mut t = template(vec![backend("b")]);
    let rv = call!(
        C_SetAttributeValue,
        h,
        k,
        t.as_mut_ptr(),
        t.len() as CK_ULONG
    );
    assert_eq!(rv, CKR_ATTRIBUTE_READ_ONLY, "the bridge's own attribute");
    assert_eq!(attr_str(h, k, CKA_LABEL), "a-ec");
}
