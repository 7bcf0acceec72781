//! Envelope wrapping across backends: an extractable secret key of the pass-through backend `up` wrapped under a
//! secret key of the remote backend `a` (`CKM_P11BRIDGE_VAULT_ENCRYPT`), and unwrapped back into `up`.

use crate::common::*;
use cryptoki_sys::*;
use p11bridge_vendor::CKM_P11BRIDGE_VAULT_ENCRYPT;
use std::ptr::null_mut;

fn wrap(
    h: CK_SESSION_HANDLE,
    wrapping: CK_OBJECT_HANDLE,
    k: CK_OBJECT_HANDLE,
) -> Result<Vec<u8>, CK_RV> {
    let mut m = mech(CKM_P11BRIDGE_VAULT_ENCRYPT);
    let mut len = 0;
    let rv = call!(C_WrapKey, h, &mut m, wrapping, k, null_mut(), &mut len);
    if rv != CKR_OK {
        return Err(rv);
    }
    let mut out = vec![0u8; len as usize];
    let rv = call!(
        C_WrapKey,
        h,
        &mut m,
        wrapping,
        k,
        out.as_mut_ptr(),
        &mut len
    );
    if rv != CKR_OK {
        return Err(rv);
    }
    out.truncate(len as usize);
    Ok(out)
}

fn unwrap(
    h: CK_SESSION_HANDLE,
    unwrapping: CK_OBJECT_HANDLE,
    wrapped: &mut [u8],
    into: &str,
) -> Result<CK_OBJECT_HANDLE, CK_RV> {
    let mut m = mech(CKM_P11BRIDGE_VAULT_ENCRYPT);
    let mut t = template(vec![
        class(CKO_SECRET_KEY),
        ulong(CKA_KEY_TYPE, CKK_AES),
        label("unwrapped"),
        flag(CKA_EXTRACTABLE, true),
        backend(into),
    ]);
    let mut o = 0;
    let rv = call!(
        C_UnwrapKey,
        h,
        &mut m,
        unwrapping,
        wrapped.as_mut_ptr(),
        wrapped.len() as CK_ULONG,
        t.as_mut_ptr(),
        t.len() as CK_ULONG,
        &mut o
    );
    if rv == CKR_OK {
        Ok(o)
    } else {
        Err(rv)
    }
}

#[test]
fn a_key_wrapped_by_another_backend_unwraps_to_the_same_value() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let kek = key(h, "a-aes", CKO_SECRET_KEY);
    let k = key(h, "up-open", CKO_SECRET_KEY);
    let value = attr(h, k, CKA_VALUE).expect("an extractable, non-sensitive key");
    let mut wrapped = wrap(h, kek, k).expect("envelope wrap");
    assert_eq!(wrapped.len(), 12 + value.len() + 16);
    assert!(
        !wrapped.windows(value.len()).any(|w| w == value),
        "the value is encrypted"
    );
    let o = unwrap(h, kek, &mut wrapped, "up").expect("envelope unwrap");
    assert_eq!(attr_str(h, o, CKA_BACKEND), "up");
    assert_eq!(attr(h, o, CKA_VALUE).expect("value"), value);
    assert_eq!(attr_str(h, o, CKA_LABEL), "unwrapped");
}

#[test]
fn an_unextractable_key_is_not_wrapped() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let kek = key(h, "a-aes", CKO_SECRET_KEY);
    let k = key(h, "up-locked", CKO_SECRET_KEY);
    assert_eq!(wrap(h, kek, k), Err(CKR_KEY_UNEXTRACTABLE));
    // A remote key never leaves its service.
    let remote = key(h, "a-hmac", CKO_SECRET_KEY);
    let up_kek = key(h, "up-open", CKO_SECRET_KEY);
    assert_eq!(wrap(h, up_kek, remote), Err(CKR_KEY_UNEXTRACTABLE));
}

#[test]
fn a_tampered_envelope_is_refused() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let kek = key(h, "a-aes", CKO_SECRET_KEY);
    let k = key(h, "up-open", CKO_SECRET_KEY);
    let mut wrapped = wrap(h, kek, k).expect("wrap");
    wrapped[20] ^= 0x40;
    assert_eq!(
        unwrap(h, kek, &mut wrapped, "up"),
        Err(CKR_WRAPPED_KEY_INVALID)
    );
}

#[test]
fn wrapping_handles_are_checked() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let k = key(h, "up-open", CKO_SECRET_KEY);
    let kek = key(h, "a-aes", CKO_SECRET_KEY);
    assert_eq!(wrap(h, 0xdead, k), Err(CKR_WRAPPING_KEY_HANDLE_INVALID));
    assert_eq!(wrap(h, kek, 0xdead), Err(CKR_KEY_HANDLE_INVALID));
    let mut junk = [0u8; 60];
    assert_eq!(
        unwrap(h, 0xdead, &mut junk, "up"),
        Err(CKR_UNWRAPPING_KEY_HANDLE_INVALID)
    );
}
