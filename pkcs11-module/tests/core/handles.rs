//! Object and session handles: stable across searches, session objects gone with their session, everything gone
//! with `C_Finalize`.

use crate::common::*;
use cryptoki_sys::*;
use std::ptr::null_mut;

fn data_object(h: CK_SESSION_HANDLE, token: bool) -> CK_OBJECT_HANDLE {
    let mut t = template(vec![
        class(CKO_DATA),
        label("note"),
        Attr(CKA_VALUE, b"a note".to_vec()),
        flag(CKA_TOKEN, token),
        backend("up"),
    ]);
    let mut o = 0;
    assert_eq!(
        call!(
            C_CreateObject,
            h,
            t.as_mut_ptr(),
            t.len() as CK_ULONG,
            &mut o
        ),
        CKR_OK
    );
    o
}

#[test]
fn handles_are_stable_across_searches_and_sessions() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let first = find(h, &[]);
    let again = find(h, &[]);
    assert_eq!(first, again);
    let other = open(0, false);
    assert_eq!(
        find(other, &[class(CKO_PRIVATE_KEY)]),
        find(h, &[class(CKO_PRIVATE_KEY)])
    );
    let mut sorted = first.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), first.len(), "no handle twice");
}

#[test]
fn unknown_handles_are_invalid() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    assert_eq!(attr(h, 0, CKA_LABEL), Err(CKR_OBJECT_HANDLE_INVALID));
    assert_eq!(
        attr(h, 0xfff_fff, CKA_LABEL),
        Err(CKR_OBJECT_HANDLE_INVALID)
    );
    assert_eq!(
        call!(C_DestroyObject, h, 0xfff_fff),
        CKR_OBJECT_HANDLE_INVALID
    );
    assert_eq!(attr(0xbad, 1, CKA_LABEL), Err(CKR_SESSION_HANDLE_INVALID));
    assert_eq!(sign_data(0xbad, &[1]), Err(CKR_SESSION_HANDLE_INVALID));
}

#[test]
fn a_session_object_lives_as_long_as_its_session() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let other = open(0, false);
    let o = data_object(h, false);
    assert_eq!(
        attr_str(other, o, CKA_LABEL),
        "note",
        "visible to the token's other sessions"
    );
    assert_eq!(attr_str(h, o, CKA_BACKEND), "up");
    assert_eq!(find(other, &[label("note")]), vec![o]);
    assert_eq!(call!(C_CloseSession, h), CKR_OK);
    assert_eq!(attr(other, o, CKA_LABEL), Err(CKR_OBJECT_HANDLE_INVALID));
    assert!(find(other, &[label("note")]).is_empty());
}

#[test]
fn a_token_object_outlives_its_session_until_destroyed() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let o = data_object(h, true);
    let other = open(0, true);
    assert_eq!(call!(C_CloseSession, h), CKR_OK);
    assert_eq!(attr_str(other, o, CKA_LABEL), "note");
    assert_eq!(call!(C_DestroyObject, other, o), CKR_OK);
    assert_eq!(attr(other, o, CKA_LABEL), Err(CKR_OBJECT_HANDLE_INVALID));
}

#[test]
fn a_read_only_session_cannot_make_token_objects() {
    let _b = Bridge::new(THREE);
    let _user = user_session();
    let ro = open(0, false);
    let mut t = template(vec![class(CKO_DATA), flag(CKA_TOKEN, true), backend("up")]);
    let mut o = 0;
    assert_eq!(
        call!(
            C_CreateObject,
            ro,
            t.as_mut_ptr(),
            t.len() as CK_ULONG,
            &mut o
        ),
        CKR_SESSION_READ_ONLY
    );
}

#[test]
fn close_all_sessions_invalidates_them() {
    let _b = Bridge::new(THREE);
    let a = open(0, false);
    let b = open(0, true);
    assert_eq!(call!(C_CloseAllSessions, 0), CKR_OK);
    for h in [a, b] {
        assert_eq!(try_find(h, &[]), Err(CKR_SESSION_HANDLE_INVALID));
        assert_eq!(sign_data(h, &[1]), Err(CKR_SESSION_HANDLE_INVALID));
    }
}

#[test]
fn finalize_ends_every_handle() {
    let mut bridge = Bridge::new(THREE);
    let h = user_session();
    let k = key(h, "a-ec", CKO_PRIVATE_KEY);
    bridge.finalize();
    assert_eq!(attr(h, k, CKA_LABEL), Err(CKR_CRYPTOKI_NOT_INITIALIZED));
    assert_eq!(call!(C_Initialize, null_mut()), CKR_OK);
    assert_eq!(attr(h, k, CKA_LABEL), Err(CKR_SESSION_HANDLE_INVALID));
    let h2 = user_session();
    assert_eq!(
        attr_str(h2, key(h2, "a-ec", CKO_PRIVATE_KEY), CKA_LABEL),
        "a-ec"
    );
    assert_eq!(call!(C_Finalize, null_mut()), CKR_OK);
    assert_eq!(call!(C_Finalize, null_mut()), CKR_CRYPTOKI_NOT_INITIALIZED);
}

#[test]
fn a_second_initialize_is_refused() {
    let _b = Bridge::new(THREE);
    assert_eq!(
        call!(C_Initialize, null_mut()),
        CKR_CRYPTOKI_ALREADY_INITIALIZED
    );
}

#[test]
fn session_limits_of_the_configuration() {
    let _b = Bridge::new(&THREE.replace(
        "backends = [\"a\", \"b\", \"up\"]\n",
        "backends = [\"a\", \"b\", \"up\"]\nmax_sessions = 2\nmax_rw_sessions = 1\n",
    ));
    let _one = open(0, true);
    let mut h = 0;
    let rw = CKF_SERIAL_SESSION | CKF_RW_SESSION;
    assert_eq!(
        call!(C_OpenSession, 0, rw, null_mut(), None, &mut h),
        CKR_SESSION_COUNT
    );
    let _two = open(0, false);
    assert_eq!(
        call!(
            C_OpenSession,
            0,
            CKF_SERIAL_SESSION,
            null_mut(),
            None,
            &mut h
        ),
        CKR_SESSION_COUNT
    );
}
