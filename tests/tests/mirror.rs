//! Mirror slots: every SoftHSM slot exposed one-to-one, with C_InitToken, C_InitPIN, C_SetPIN and SO login passed
//! through, so a client that initializes its own token works through the bridge.

mod common;

use common::*;
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

fn rv(e: Error) -> RvError {
    match e {
        Error::Pkcs11(rv, _) => rv,
        other => panic!("not a PKCS#11 error: {other}"),
    }
}

fn pin(s: &str) -> AuthPin {
    AuthPin::new(s.into())
}

#[test]
fn initialize_a_token_through_the_bridge() {
    let p = p11();
    let spare = p
        .get_all_slots()
        .unwrap()
        .into_iter()
        .find(|s| {
            p.get_token_info(*s)
                .map(|t| !t.token_initialized())
                .unwrap_or(false)
        })
        .expect("SoftHSM's spare slot is mirrored");

    p.init_token(spare, &pin("so-secret-1"), "fresh").unwrap();
    let ti = p.get_token_info(spare).unwrap();
    assert_eq!(ti.label(), "fresh");
    assert!(ti.token_initialized());
    assert!(!ti.user_pin_initialized());

    let s = p.open_rw_session(spare).unwrap();
    assert_eq!(
        rv(s.login(UserType::So, Some(&pin("wrong"))).unwrap_err()),
        RvError::PinIncorrect
    );
    s.login(UserType::So, Some(&pin("so-secret-1"))).unwrap();
    assert_eq!(
        format!("{:?}", s.get_session_info().unwrap().session_state()),
        "RwSecurityOfficer"
    );
    s.init_pin(&pin("user-1111")).unwrap();
    s.logout().unwrap();
    // A second C_Logout gets the upstream's answer (SoftHSM2: CKR_OK), as talking to it directly.
    s.logout().unwrap();

    s.login(UserType::User, Some(&pin("user-1111"))).unwrap();
    s.set_pin(&pin("user-1111"), &pin("user-2222")).unwrap();
    s.logout().unwrap();
    assert_eq!(
        rv(s.login(UserType::User, Some(&pin("user-1111")))
            .unwrap_err()),
        RvError::PinIncorrect
    );
    s.login(UserType::User, Some(&pin("user-2222"))).unwrap();

    // A key made on the new token, used at once, verified by openssl.
    let p256 = vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let (pubk, privk) = s
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::EcParams(p256),
                Attribute::Token(true),
                Attribute::Label(b"k".to_vec()),
            ],
            &[
                Attribute::Token(true),
                Attribute::Sign(true),
                Attribute::Label(b"k".to_vec()),
            ],
        )
        .unwrap();
    let h = sha256(b"mirror");
    let sig = s.sign(&Mechanism::Ecdsa, privk, &h).unwrap();
    assert!(openssl_verify(
        &spki(&s, pubk),
        Some("sha256"),
        &[],
        b"mirror",
        &der::ecdsa_der(&sig)
    ));
    assert_eq!(
        s.find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
            .unwrap(),
        vec![privk]
    );

    // Re-initializing with a session open is refused, as the spec says.
    assert_eq!(
        rv(p.init_token(spare, &pin("so-secret-1"), "again")
            .unwrap_err()),
        RvError::SessionExists
    );
    drop(s);
    p.init_token(spare, &pin("so-secret-1"), "again").unwrap();
    assert_eq!(p.get_token_info(spare).unwrap().label(), "again");
}

#[test]
fn unified_slot_refuses_init_token() {
    let p = p11();
    let e = p
        .init_token(unified_slot(p), &pin(BRIDGE_SO_PIN), "x")
        .unwrap_err();
    assert_eq!(rv(e), RvError::FunctionNotSupported);
}

/// A mirror answers as the upstream does where the bridge used to answer itself: a second `C_Logout` is the
/// upstream's answer (SoftHSM2: `CKR_OK`), and a `C_Digest` refused for a NULL data pointer leaves the operation
/// active, so the application's next, correct call succeeds (as talking to SoftHSM2 directly).
#[test]
fn mirror_answers_as_the_upstream() {
    use cryptoki_sys::*;
    let p = p11();
    let upstream = slot_by_label(p, "upstream");
    let s = p.open_ro_session(upstream).unwrap();
    s.login(UserType::User, Some(&pin(HSM_PIN))).unwrap();
    s.logout().unwrap();
    s.logout()
        .expect("a second C_Logout is the upstream's CKR_OK");
    drop(s);

    // SAFETY: the module is loaded and initialized by p11(); a second dlopen returns the same handle.
    let lib = unsafe { libloading::Library::new(bridge_so()) }.unwrap();
    let get: libloading::Symbol<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV> =
        unsafe { lib.get(b"C_GetFunctionList\0") }.unwrap();
    let mut fl: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
    assert_eq!(unsafe { get(&mut fl) }, CKR_OK);
    let f = unsafe { &*fl };
    let mut h: CK_SESSION_HANDLE = 0;
    let rv = unsafe {
        f.C_OpenSession.unwrap()(
            upstream.id(),
            CKF_SERIAL_SESSION,
            std::ptr::null_mut(),
            None,
            &mut h,
        )
    };
    assert_eq!(rv, CKR_OK);
    let mut m = CK_MECHANISM {
        mechanism: CKM_SHA256,
        pParameter: std::ptr::null_mut(),
        ulParameterLen: 0,
    };
    assert_eq!(unsafe { f.C_DigestInit.unwrap()(h, &mut m) }, CKR_OK);
    let mut out = [0u8; 32];
    let mut n: CK_ULONG = 32;
    let rv = unsafe { f.C_Digest.unwrap()(h, std::ptr::null_mut(), 3, out.as_mut_ptr(), &mut n) };
    assert_eq!(rv, CKR_ARGUMENTS_BAD);
    let mut data = *b"abc";
    n = 32;
    let rv = unsafe { f.C_Digest.unwrap()(h, data.as_mut_ptr(), 3, out.as_mut_ptr(), &mut n) };
    assert_eq!(
        rv, CKR_OK,
        "the operation is still active after the refused call"
    );
    assert_eq!(out.to_vec(), sha256(b"abc"));
    assert_eq!(unsafe { f.C_CloseSession.unwrap()(h) }, CKR_OK);
}

/// `library_info = "upstream"`: C_GetInfo reports the mirrored module's identity (here SoftHSM2's), with the
/// Cryptoki version of the interface in use. Run as a child process: the configuration is read at C_Initialize.
#[test]
fn library_info_of_the_upstream() {
    env();
    let cfg = env().dir.join("library-info.toml");
    std::fs::write(
        &cfg,
        format!(
            "library_info = \"upstream\"\n[[slot]]\nmirror = \"hsm\"\n[backend.hsm]\nkind = \"pkcs11\"\nmodule = \"{SOFTHSM}\"\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new("pkcs11-tool")
        .arg("--module")
        .arg(bridge_so())
        .arg("-I")
        .env("P11BRIDGE_CONFIG", &cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("SoftHSM"), "{text}");
    assert!(!text.contains("p11bridge"), "{text}");
    // Refused where it means nothing: a unified slot.
    let bad = env().dir.join("library-info-bad.toml");
    std::fs::write(
        &bad,
        format!("library_info = \"upstream\"\n{}", config_text()),
    )
    .unwrap();
    let out = std::process::Command::new("pkcs11-tool")
        .arg("--module")
        .arg(bridge_so())
        .arg("-I")
        .env("P11BRIDGE_CONFIG", &bad)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("library_info: \"upstream\" needs every [[slot]] to mirror"),
        "{e}"
    );
}
