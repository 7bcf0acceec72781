//! The harness: the module's own function list (called in-process), one serialized `C_Initialize`/`C_Finalize`
//! per test with its own configuration, small wrappers that return `CK_RV`s, and independent verification.
#![allow(dead_code)]

use cryptoki_sys::*;
use p11bridge_backends::fake;
use std::ffi::c_void;
use std::path::PathBuf;
use std::ptr::null_mut;
use std::sync::{Mutex, MutexGuard, OnceLock};

// The module's exported entry points (the test binary links the `p11bridge` rlib).
use p11bridge as _;
extern "C" {
    fn C_GetInterface(
        name: *mut CK_UTF8CHAR,
        version: *mut CK_VERSION,
        interface: *mut *mut CK_INTERFACE,
        flags: CK_FLAGS,
    ) -> CK_RV;
    fn C_P11BRIDGE_GetLastError(
        rv: *mut CK_RV,
        text: *mut CK_UTF8CHAR,
        len: *mut CK_ULONG,
    ) -> CK_RV;
}

/// `CKA_P11BRIDGE_BACKEND` (see backends/src/vendor.rs).
pub const CKA_BACKEND: CK_ATTRIBUTE_TYPE = p11bridge_vendor::CKA_P11BRIDGE_BACKEND;
pub const USER_PIN: &str = "bridge-pin";
pub const SO_PIN: &str = "bridge-so-pin";
/// The fake upstream's own PINs (its defaults).
pub const UP_PIN: &str = "1234";
pub const UP_SO_PIN: &str = "12345678";

/// The 3.0 function list.
pub fn f() -> &'static CK_FUNCTION_LIST_3_0 {
    static LIST: OnceLock<usize> = OnceLock::new();
    let p = *LIST.get_or_init(|| {
        let mut iface: *mut CK_INTERFACE = null_mut();
        let mut version = CK_VERSION { major: 3, minor: 0 };
        let name = b"PKCS 11\0";
        // SAFETY: valid pointers for the call; the interface is static in the module.
        let rv = unsafe { C_GetInterface(name.as_ptr() as *mut _, &mut version, &mut iface, 0) };
        assert_eq!(rv, CKR_OK, "C_GetInterface");
        // SAFETY: a 3.0 interface's function list is a CK_FUNCTION_LIST_3_0.
        unsafe { (*iface).pFunctionList as usize }
    });
    // SAFETY: static in the module for the life of the process.
    unsafe { &*(p as *const CK_FUNCTION_LIST_3_0) }
}

/// Calls a function of the list: `call!(C_Sign, h, ...)`.
#[macro_export]
macro_rules! call {
    ($name:ident $(, $arg:expr)* $(,)?) => {
        // SAFETY: the arguments are valid for the call (each test's responsibility).
        unsafe { ($crate::common::f().$name.expect(stringify!($name)))($($arg),*) }
    };
}
pub use call;

/// The configuration most tests use. Slot 0: the unified token "unified" over `a` (every mechanism), `b` (raw
/// mechanisms only: hash-and-sign is emulated) and `up` (a pass-through fake with secret keys and a digest).
pub const THREE: &str = r#"
[[slot]]
label = "unified"
user_pin = "bridge-pin"
so_pin = "bridge-so-pin"
backends = ["a", "b", "up"]

[backend.a]
kind = "test-fake"
keys = [
  { label = "a-ec", type = "ec-p256" },
  { label = "a-rsa", type = "rsa-2048" },
  { label = "a-aes", type = "aes-256" },
  { label = "a-hmac", type = "hmac-sha256" },
]

[backend.b]
kind = "test-fake"
hash_and_sign = false
keys = [
  { label = "b-ec", type = "ec-p256" },
  { label = "b-p384", type = "ec-p384" },
  { label = "b-rsa", type = "rsa-2048" },
  { label = "b-ed", type = "ed25519" },
]

[backend.up]
kind = "test-fake-pkcs11"
secret_keys = [
  { label = "up-open", extractable = true, sensitive = false },
  { label = "up-locked", extractable = false },
]
"#;

static SERIAL: Mutex<()> = Mutex::new(());

/// One initialized module for one test; finalized (and its directory removed) when dropped.
pub struct Bridge {
    pub dir: PathBuf,
    finalized: bool,
    _serial: MutexGuard<'static, ()>,
}

impl Bridge {
    /// Initializes the module with `config` (test backends enabled).
    pub fn new(config: &str) -> Bridge {
        let b = Bridge::configured(config);
        let rv = call!(C_Initialize, null_mut());
        assert_eq!(rv, CKR_OK, "C_Initialize: {}", last_error().1);
        b
    }

    /// Writes `config` and points the environment at it, without initializing.
    pub fn configured(config: &str) -> Bridge {
        // A test that failed (panicked) while holding the lock leaves it poisoned; the next one goes on.
        let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("p11bridge-core-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("p11bridge.toml");
        std::fs::write(&path, config).expect("write config");
        std::env::set_var("P11BRIDGE_CONFIG", &path);
        std::env::set_var(fake::ENABLE_ENV, "1");
        std::env::set_var("P11BRIDGE_QUIET", "1");
        // A C_Finalize left over from a test that failed before its own.
        let _ = call!(C_Finalize, null_mut());
        Bridge {
            dir,
            finalized: false,
            _serial: serial,
        }
    }

    /// `C_Finalize` now (the drop then does nothing more than clean up).
    pub fn finalize(&mut self) {
        assert_eq!(call!(C_Finalize, null_mut()), CKR_OK);
        self.finalized = true;
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if !self.finalized {
            let _ = call!(C_Finalize, null_mut());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The calling thread's last failure, as `C_P11BRIDGE_GetLastError` gives it.
pub fn last_error() -> (CK_RV, String) {
    let mut rv = CKR_OK;
    let mut len: CK_ULONG = 0;
    // SAFETY: valid pointers; the two-call convention.
    unsafe {
        assert_eq!(
            C_P11BRIDGE_GetLastError(&mut rv, null_mut(), &mut len),
            CKR_OK
        );
        let mut buf = vec![0u8; len as usize];
        assert_eq!(
            C_P11BRIDGE_GetLastError(&mut rv, buf.as_mut_ptr(), &mut len),
            CKR_OK
        );
        buf.truncate(len as usize);
        (rv, String::from_utf8_lossy(&buf).into_owned())
    }
}

pub fn open(slot: CK_SLOT_ID, rw: bool) -> CK_SESSION_HANDLE {
    let mut h = 0;
    let flags = CKF_SERIAL_SESSION | if rw { CKF_RW_SESSION } else { 0 };
    let rv = call!(C_OpenSession, slot, flags, null_mut(), None, &mut h);
    assert_eq!(rv, CKR_OK, "C_OpenSession");
    h
}

pub fn login(h: CK_SESSION_HANDLE, user: CK_USER_TYPE, pin: &str) -> CK_RV {
    call!(
        C_Login,
        h,
        user,
        pin.as_ptr() as *mut _,
        pin.len() as CK_ULONG
    )
}

/// A session on slot 0 logged in as the user.
pub fn user_session() -> CK_SESSION_HANDLE {
    let h = open(0, true);
    assert_eq!(login(h, CKU_USER, USER_PIN), CKR_OK);
    h
}

/// An attribute value, owned: build templates with [`template`].
pub struct Attr(pub CK_ATTRIBUTE_TYPE, pub Vec<u8>);

pub fn class(c: CK_OBJECT_CLASS) -> Attr {
    Attr(CKA_CLASS, c.to_ne_bytes().to_vec())
}
pub fn label(l: &str) -> Attr {
    Attr(CKA_LABEL, l.as_bytes().to_vec())
}
pub fn backend(b: &str) -> Attr {
    Attr(CKA_BACKEND, b.as_bytes().to_vec())
}
pub fn ulong(t: CK_ATTRIBUTE_TYPE, v: CK_ULONG) -> Attr {
    Attr(t, v.to_ne_bytes().to_vec())
}
pub fn flag(t: CK_ATTRIBUTE_TYPE, v: bool) -> Attr {
    Attr(t, vec![if v { CK_TRUE } else { CK_FALSE }])
}

/// A template that owns its values (the raw attributes point into them).
pub struct Template {
    _values: Vec<Attr>,
    raw: Vec<CK_ATTRIBUTE>,
}

impl Template {
    pub fn as_mut_ptr(&mut self) -> *mut CK_ATTRIBUTE {
        self.raw.as_mut_ptr()
    }
    pub fn len(&self) -> usize {
        self.raw.len()
    }
}

pub fn template(values: Vec<Attr>) -> Template {
    let raw = values
        .iter()
        .map(|a| CK_ATTRIBUTE {
            type_: a.0,
            pValue: a.1.as_ptr() as *mut c_void,
            ulValueLen: a.1.len() as CK_ULONG,
        })
        .collect();
    Template {
        _values: values,
        raw,
    }
}

/// Every object matching `attrs`, or the search's failure.
pub fn try_find(h: CK_SESSION_HANDLE, attrs: &[Attr]) -> Result<Vec<CK_OBJECT_HANDLE>, CK_RV> {
    let mut t: Vec<CK_ATTRIBUTE> = attrs
        .iter()
        .map(|a| CK_ATTRIBUTE {
            type_: a.0,
            pValue: a.1.as_ptr() as *mut c_void,
            ulValueLen: a.1.len() as CK_ULONG,
        })
        .collect();
    let rv = call!(C_FindObjectsInit, h, t.as_mut_ptr(), t.len() as CK_ULONG);
    if rv != CKR_OK {
        return Err(rv);
    }
    let mut all = Vec::new();
    loop {
        let mut buf = [0 as CK_OBJECT_HANDLE; 3];
        let mut n = 0;
        let rv = call!(C_FindObjects, h, buf.as_mut_ptr(), 3, &mut n);
        assert_eq!(rv, CKR_OK, "C_FindObjects");
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n as usize]);
    }
    assert_eq!(call!(C_FindObjectsFinal, h), CKR_OK);
    Ok(all)
}

pub fn find(h: CK_SESSION_HANDLE, attrs: &[Attr]) -> Vec<CK_OBJECT_HANDLE> {
    try_find(h, attrs).unwrap_or_else(|rv| panic!("C_FindObjectsInit: {rv:#x}"))
}

/// The one object of this class with this label.
pub fn key(h: CK_SESSION_HANDLE, l: &str, c: CK_OBJECT_CLASS) -> CK_OBJECT_HANDLE {
    let v = find(h, &[class(c), label(l)]);
    assert_eq!(v.len(), 1, "one object {l} of class {c}: {v:?}");
    v[0]
}

/// One attribute's value, or the `CK_RV` of reading it.
pub fn attr(
    h: CK_SESSION_HANDLE,
    o: CK_OBJECT_HANDLE,
    t: CK_ATTRIBUTE_TYPE,
) -> Result<Vec<u8>, CK_RV> {
    let mut a = CK_ATTRIBUTE {
        type_: t,
        pValue: null_mut(),
        ulValueLen: 0,
    };
    let rv = call!(C_GetAttributeValue, h, o, &mut a, 1);
    if rv != CKR_OK {
        return Err(rv);
    }
    let mut v = vec![0u8; a.ulValueLen as usize];
    a.pValue = v.as_mut_ptr() as *mut c_void;
    let rv = call!(C_GetAttributeValue, h, o, &mut a, 1);
    if rv != CKR_OK {
        return Err(rv);
    }
    v.truncate(a.ulValueLen as usize);
    Ok(v)
}

pub fn attr_str(h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE, t: CK_ATTRIBUTE_TYPE) -> String {
    String::from_utf8(attr(h, o, t).expect("attribute")).expect("UTF-8")
}

pub fn attr_ulong(h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE, t: CK_ATTRIBUTE_TYPE) -> CK_ULONG {
    let v = attr(h, o, t).expect("attribute");
    CK_ULONG::from_ne_bytes(v.try_into().expect("CK_ULONG"))
}

/// A mechanism without parameters.
pub fn mech(m: CK_MECHANISM_TYPE) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: m,
        pParameter: null_mut(),
        ulParameterLen: 0,
    }
}

/// A mechanism with a parameter block.
pub fn mech_with<T>(m: CK_MECHANISM_TYPE, p: &mut T) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: m,
        pParameter: p as *mut T as *mut c_void,
        ulParameterLen: std::mem::size_of::<T>() as CK_ULONG,
    }
}

pub fn sign_init(h: CK_SESSION_HANDLE, m: &CK_MECHANISM, k: CK_OBJECT_HANDLE) -> CK_RV {
    call!(C_SignInit, h, m as *const _ as *mut _, k)
}

/// `C_Sign` by the two-call convention (length, then the signature).
pub fn sign_data(h: CK_SESSION_HANDLE, data: &[u8]) -> Result<Vec<u8>, CK_RV> {
    let mut len: CK_ULONG = 0;
    let rv = call!(
        C_Sign,
        h,
        data.as_ptr() as *mut _,
        data.len() as CK_ULONG,
        null_mut(),
        &mut len
    );
    if rv != CKR_OK {
        return Err(rv);
    }
    let mut sig = vec![0u8; len as usize];
    let rv = call!(
        C_Sign,
        h,
        data.as_ptr() as *mut _,
        data.len() as CK_ULONG,
        sig.as_mut_ptr(),
        &mut len
    );
    if rv != CKR_OK {
        return Err(rv);
    }
    sig.truncate(len as usize);
    Ok(sig)
}

/// `C_SignInit` + `C_Sign`.
pub fn sign(
    h: CK_SESSION_HANDLE,
    m: &CK_MECHANISM,
    k: CK_OBJECT_HANDLE,
    data: &[u8],
) -> Result<Vec<u8>, CK_RV> {
    match sign_init(h, m, k) {
        CKR_OK => sign_data(h, data),
        rv => Err(rv),
    }
}

/// `C_VerifyInit` + `C_Verify`.
pub fn verify(
    h: CK_SESSION_HANDLE,
    m: &CK_MECHANISM,
    k: CK_OBJECT_HANDLE,
    data: &[u8],
    sig: &[u8],
) -> CK_RV {
    let rv = call!(C_VerifyInit, h, m as *const _ as *mut _, k);
    if rv != CKR_OK {
        return rv;
    }
    call!(
        C_Verify,
        h,
        data.as_ptr() as *mut _,
        data.len() as CK_ULONG,
        sig.as_ptr() as *mut _,
        sig.len() as CK_ULONG
    )
}

pub fn sha256(d: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(d).to_vec()
}

/// The uncompressed point of an EC public key object (`CKA_EC_POINT` is a DER OCTET STRING).
pub fn ec_point(h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE) -> Vec<u8> {
    let der = attr(h, o, CKA_EC_POINT).expect("CKA_EC_POINT");
    assert_eq!(der[0], 0x04, "OCTET STRING");
    der[2..].to_vec()
}

/// Verifies an ECDSA P-256 signature (r || s) over a digest with the p256 crate.
pub fn p256_verifies(point: &[u8], digest: &[u8], sig: &[u8]) -> bool {
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(point).expect("P-256 point");
    let Ok(s) = p256::ecdsa::Signature::from_slice(sig) else {
        return false;
    };
    vk.verify_prehash(digest, &s).is_ok()
}

/// The RSA public key of a key object, read through the bridge.
pub fn rsa_public(h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE) -> rsa::RsaPublicKey {
    let n = attr(h, o, CKA_MODULUS).expect("modulus");
    let e = attr(h, o, CKA_PUBLIC_EXPONENT).expect("exponent");
    rsa::RsaPublicKey::new(
        rsa::BigUint::from_bytes_be(&n),
        rsa::BigUint::from_bytes_be(&e),
    )
    .expect("RSA public key")
}
