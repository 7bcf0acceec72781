//! Which backend serves which key: `CKA_P11BRIDGE_BACKEND` on every object, as a search filter and as the target of
//! new objects; the unified mechanism list; keyless operations routed by mechanism.

use crate::common::*;
use cryptoki_sys::*;
use p11bridge_backends::fake::script;

#[test]
fn every_object_names_its_backend_and_operations_go_there() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    for (l, b) in [("a-ec", "a"), ("b-ec", "b"), ("b-rsa", "b"), ("a-rsa", "a")] {
        let k = key(h, l, CKO_PRIVATE_KEY);
        assert_eq!(attr_str(h, k, CKA_BACKEND), b, "{l}");
    }
    let k = key(h, "up-open", CKO_SECRET_KEY);
    assert_eq!(attr_str(h, k, CKA_BACKEND), "up");
    script("a").reset_calls();
    script("b").reset_calls();
    let k = key(h, "a-ec", CKO_PRIVATE_KEY);
    sign(h, &mech(CKM_ECDSA), k, &sha256(b"routed")).expect("sign");
    assert_eq!(script("a").calls("sign"), 1);
    assert_eq!(script("b").calls("sign"), 0);
}

#[test]
fn the_backend_attribute_filters_a_search() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let mut labels: Vec<String> = find(h, &[class(CKO_PRIVATE_KEY), backend("b")])
        .into_iter()
        .map(|o| attr_str(h, o, CKA_LABEL))
        .collect();
    labels.sort();
    assert_eq!(labels, ["b-ec", "b-ed", "b-p384", "b-rsa"]);
    assert_eq!(find(h, &[backend("up"), class(CKO_SECRET_KEY)]).len(), 2);
    // Only the named backend is asked.
    script("a").reset_calls();
    find(h, &[backend("b")]);
    assert_eq!(script("a").calls("list"), 0);
    assert_eq!(
        try_find(h, &[backend("nowhere")]),
        Err(CKR_ATTRIBUTE_VALUE_INVALID)
    );
}

#[test]
fn a_search_without_template_sees_every_backend() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let all = find(h, &[]);
    // a: 2 key pairs (4) + 2 secret keys; b: 4 key pairs (8); up: 2 secret keys.
    assert_eq!(all.len(), 16, "{all:?}");
    let mut backends: Vec<String> = all.iter().map(|o| attr_str(h, *o, CKA_BACKEND)).collect();
    backends.sort();
    backends.dedup();
    assert_eq!(backends, ["a", "b", "up"]);
}

#[test]
fn new_objects_go_to_the_named_or_the_default_backend() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let gen = |attrs: Vec<Attr>| {
        let mut t = template(attrs);
        let mut o = 0;
        let rv = call!(
            C_GenerateKey,
            h,
            &mut mech(CKM_AES_KEY_GEN),
            t.as_mut_ptr(),
            t.len() as CK_ULONG,
            &mut o
        );
        (rv, o)
    };
    let (rv, o) = gen(vec![
        label("in-up"),
        ulong(CKA_VALUE_LEN, 32),
        backend("up"),
        flag(CKA_TOKEN, false),
    ]);
    assert_eq!(rv, CKR_OK);
    assert_eq!(attr_str(h, o, CKA_BACKEND), "up");
    // No backend named: the slot's default (the first, "a", a remote service that makes token keys).
    let (rv, o) = gen(vec![label("in-default"), ulong(CKA_VALUE_LEN, 32)]);
    assert_eq!(rv, CKR_OK);
    assert_eq!(attr_str(h, o, CKA_BACKEND), "a");
    assert_eq!(script("a").calls("generate"), 1);
    assert_eq!(key(h, "in-default", CKO_SECRET_KEY), o);
    let (rv, _) = gen(vec![
        label("x"),
        ulong(CKA_VALUE_LEN, 32),
        backend("nowhere"),
    ]);
    assert_eq!(rv, CKR_ATTRIBUTE_VALUE_INVALID);
}

#[test]
fn the_mechanism_list_is_the_union_of_the_backends() {
    let _b = Bridge::new(THREE);
    let mut n = 0;
    assert_eq!(
        call!(C_GetMechanismList, 0, std::ptr::null_mut(), &mut n),
        CKR_OK
    );
    let mut list = vec![0; n as usize];
    assert_eq!(
        call!(C_GetMechanismList, 0, list.as_mut_ptr(), &mut n),
        CKR_OK
    );
    for m in [
        CKM_ECDSA,
        CKM_ECDSA_SHA256,
        CKM_EDDSA,
        CKM_SHA256,
        CKM_SHA256_HMAC,
        CKM_RSA_PKCS_PSS,
    ] {
        assert!(list.contains(&m), "{m:#x} in {list:x?}");
    }
    let mut info = CK_MECHANISM_INFO {
        ulMinKeySize: 0,
        ulMaxKeySize: 0,
        flags: 0,
    };
    assert_eq!(call!(C_GetMechanismInfo, 0, CKM_SHA256, &mut info), CKR_OK);
    assert_ne!(info.flags & CKF_DIGEST, 0);
    assert_eq!(
        call!(C_GetMechanismInfo, 0, CKM_DES3_CBC, &mut info),
        CKR_MECHANISM_INVALID
    );
}

#[test]
fn a_keyless_digest_goes_to_the_backend_that_offers_it() {
    let _b = Bridge::new(THREE);
    let h = open(0, false);
    assert_eq!(call!(C_DigestInit, h, &mut mech(CKM_SHA256)), CKR_OK);
    let data = b"digest me";
    let mut out = [0u8; 32];
    let mut len = 32;
    let rv = call!(
        C_Digest,
        h,
        data.as_ptr() as *mut _,
        data.len() as CK_ULONG,
        out.as_mut_ptr(),
        &mut len
    );
    assert_eq!(rv, CKR_OK);
    assert_eq!(out.to_vec(), sha256(data));
    assert_eq!(script("up").calls("digest"), 1);
}

#[test]
fn slot_and_token_info_describe_the_unified_token() {
    let _b = Bridge::new(THREE);
    let mut n = 0;
    assert_eq!(
        call!(C_GetSlotList, CK_TRUE, std::ptr::null_mut(), &mut n),
        CKR_OK
    );
    assert_eq!(n, 1);
    // SAFETY: a plain C structure.
    let mut ti: CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
    assert_eq!(call!(C_GetTokenInfo, 0, &mut ti), CKR_OK);
    assert!(String::from_utf8_lossy(&ti.label).starts_with("unified "));
    assert_ne!(ti.flags & CKF_LOGIN_REQUIRED, 0);
    assert_eq!(call!(C_GetTokenInfo, 7, &mut ti), CKR_SLOT_ID_INVALID);
}
