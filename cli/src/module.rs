//! Finding and loading `libp11bridge.so`, its vendor functions (`C_P11BRIDGE_GetLastError`, `C_P11BRIDGE_Check`),
//! and turning PKCS#11 failures into one line: `CKR_NAME: a short sentence. Cause: the module's own words`.

use crate::{Fail, R};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, Rv, RvError};
use cryptoki_sys::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

type GetLastErrorFn = unsafe extern "C" fn(*mut CK_RV, *mut CK_UTF8CHAR, *mut CK_ULONG) -> CK_RV;
type CheckFn = unsafe extern "C" fn(*mut CK_UTF8CHAR, *mut CK_ULONG) -> CK_RV;

/// The module's vendor functions, looked up once in the library cryptoki loaded (a second `dlopen` of the same
/// path returns the same handle). The library stays loaded for the life of the process.
struct Vendor {
    _lib: libloading::Library,
    last_error: Option<GetLastErrorFn>,
    check: Option<CheckFn>,
}

static VENDOR: OnceLock<Vendor> = OnceLock::new();

/// The multiarch triplet of the running architecture (Debian's `/usr/lib/<triplet>/pkcs11`).
pub fn multiarch_triplet() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        "x86" => "i386-linux-gnu",
        "arm" => "arm-linux-gnueabihf",
        "riscv64" => "riscv64-linux-gnu",
        "powerpc64" if cfg!(target_endian = "little") => "powerpc64le-linux-gnu",
        "powerpc64" => "powerpc64-linux-gnu",
        "s390x" => "s390x-linux-gnu",
        "loongarch64" => "loongarch64-linux-gnu",
        "mips64" => "mips64el-linux-gnuabi64",
        other => other,
    }
}

/// Where the module is looked for, in order, each with where that place comes from.
pub fn module_candidates(given: &Option<PathBuf>) -> Vec<(PathBuf, String)> {
    if let Some(p) = given {
        return vec![(p.clone(), "--module".into())];
    }
    if let Some(p) = std::env::var_os("P11BRIDGE_MODULE") {
        return vec![(PathBuf::from(p), "$P11BRIDGE_MODULE".into())];
    }
    let mut v = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        v.push((
            dir.join("libp11bridge.so"),
            "beside this program".to_string(),
        ));
    }
    v.push((
        PathBuf::from(format!(
            "/usr/lib/{}/pkcs11/libp11bridge.so",
            multiarch_triplet()
        )),
        "the multiarch PKCS#11 directory".into(),
    ));
    v.push((
        PathBuf::from("/usr/local/lib/p11bridge/libp11bridge.so"),
        "a local installation".into(),
    ));
    v
}

/// The module path to use: the first candidate that exists (a `--module` or `$P11BRIDGE_MODULE` is used as given).
pub fn module_path(given: &Option<PathBuf>) -> R<PathBuf> {
    let c = module_candidates(given);
    if c.len() == 1 {
        return Ok(c[0].0.clone());
    }
    if let Some((p, _)) = c.iter().find(|(p, _)| p.exists()) {
        return Ok(p.clone());
    }
    let tried: Vec<String> = c
        .iter()
        .map(|(p, why)| format!("{} ({why})", p.display()))
        .collect();
    Err(Fail::Msg(format!(
        "libp11bridge.so not found; looked in: {}. Give --module PATH or set P11BRIDGE_MODULE, or install it in one \
         of these places (cargo build --release -p p11bridge builds target/release/libp11bridge.so)",
        tried.join(", ")
    )))
}

/// The configuration file, found exactly as the module finds it (pkcs11-module/src/core/config.rs `config_path`).
pub fn config_path() -> (PathBuf, &'static str) {
    if let Some(p) = std::env::var_os("P11BRIDGE_CONFIG") {
        return (PathBuf::from(p), "$P11BRIDGE_CONFIG");
    }
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME") {
        let p = Path::new(&x).join("p11bridge/p11bridge.toml");
        if p.exists() {
            return (p, "$XDG_CONFIG_HOME");
        }
    } else if let Some(h) = std::env::var_os("HOME") {
        let p = Path::new(&h).join(".config/p11bridge/p11bridge.toml");
        if p.exists() {
            return (p, "~/.config");
        }
    }
    (
        PathBuf::from("/etc/p11bridge/p11bridge.toml"),
        "the system default",
    )
}

/// Loads the module and initializes it. A failed `C_Initialize` is reported with the module's cause (a
/// configuration error names the file and line).
pub fn open(module: &Option<PathBuf>) -> R<Pkcs11> {
    let path = module_path(module)?;
    let p = Pkcs11::new(&path).map_err(|e| {
        let hint = if path.exists() {
            "it exists but cannot be loaded (another architecture, or a library it needs is missing: try ldd)"
        } else {
            "no such file: give --module PATH or set P11BRIDGE_MODULE"
        };
        Fail::Msg(format!("cannot load {}: {e}; {hint}", path.display()))
    })?;
    // SAFETY: the same library cryptoki just loaded; its initializers already ran.
    if let Ok(lib) = unsafe { libloading::Library::new(&path) } {
        // SAFETY: the types are those of include/p11bridge.h.
        let last_error = unsafe { lib.get::<GetLastErrorFn>(b"C_P11BRIDGE_GetLastError\0") }
            .ok()
            .map(|s| *s);
        let check = unsafe { lib.get::<CheckFn>(b"C_P11BRIDGE_Check\0") }
            .ok()
            .map(|s| *s);
        let _ = VENDOR.set(Vendor {
            _lib: lib,
            last_error,
            check,
        });
    }
    if let Err(e) = p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        let (config, from) = config_path();
        let mut f = match e {
            // The module's only word for "cannot start" (a bad configuration): say that.
            CkError::Pkcs11(RvError::GeneralError, _) => {
                let mut m =
                    "C_Initialize: CKR_GENERAL_ERROR: the module could not start".to_string();
                if let Some((_, text)) = last_error().filter(|(_, t)| !t.is_empty()) {
                    m.push_str(&format!(". Cause: {text}"));
                }
                Fail::Msg(m)
            }
            e => ck("C_Initialize", e),
        };
        if let Fail::Msg(m) = &mut f {
            m.push_str(&format!(
                " (module {}, configuration {} from {from})",
                path.display(),
                config.display()
            ));
        }
        return Err(f);
    }
    Ok(p)
}

/// The calling thread's last failure as the module recorded it (its `CK_RV` and cause), cleared by reading.
pub fn last_error() -> Option<(CK_RV, String)> {
    let f = VENDOR.get()?.last_error?;
    let mut rv: CK_RV = CKR_OK;
    let mut len: CK_ULONG = 0;
    // SAFETY: valid pointers; NULL text asks for the length.
    if unsafe { f(&mut rv, std::ptr::null_mut(), &mut len) } != CKR_OK {
        return None;
    }
    // A second call with a buffer (even for an empty text) copies and clears the record.
    let mut buf = vec![0u8; (len as usize).max(1)];
    // SAFETY: `buf` holds at least `len` writable bytes.
    if unsafe { f(&mut rv, buf.as_mut_ptr(), &mut len) } != CKR_OK {
        return None;
    }
    buf.truncate(len as usize);
    let text = String::from_utf8_lossy(&buf).trim().to_string();
    if rv == CKR_OK && text.is_empty() {
        return None;
    }
    Some((rv, text))
}

/// A cause the module recorded although the call succeeded (a backend whose objects a search could not show, a
/// backend whose login failed): shown on stderr as a warning.
pub fn warn_notes() {
    if let Some((rv, text)) = last_error() {
        if rv == CKR_OK && !text.is_empty() {
            crate::warn(&text);
            if let Ok(mut n) = NOTE.lock() {
                *n = Some(text);
            }
        }
    }
}

/// The last warning shown by [`warn_notes`] (to repeat it where it explains a failure: a key not found).
static NOTE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

pub fn last_note() -> Option<String> {
    NOTE.lock().ok().and_then(|n| n.clone())
}

/// `C_P11BRIDGE_Check`'s report (JSON text).
pub fn check_report() -> R<String> {
    let f = VENDOR.get().and_then(|v| v.check).ok_or_else(|| {
        Fail::Msg(
            "this libp11bridge.so has no C_P11BRIDGE_Check (it is older than this program): install the module \
             built with this p11bridge"
                .into(),
        )
    })?;
    let mut len: CK_ULONG = 0;
    // SAFETY: NULL buffer: the length only.
    let rv = unsafe { f(std::ptr::null_mut(), &mut len) };
    if rv != CKR_OK {
        return Err(ck_rv("C_P11BRIDGE_Check", rv));
    }
    let mut buf = vec![0u8; (len as usize).max(1)];
    // SAFETY: `buf` has `len` writable bytes.
    let rv = unsafe { f(buf.as_mut_ptr(), &mut len) };
    if rv != CKR_OK {
        return Err(ck_rv("C_P11BRIDGE_Check", rv));
    }
    buf.truncate(len as usize);
    String::from_utf8(buf).map_err(|e| Fail::Msg(format!("C_P11BRIDGE_Check: not UTF-8: {e}")))
}

/// Every return value the CLI may meet, its name and what it means for the person at the terminal.
const RVS: &[(CK_RV, &str, &str)] = &[
    (CKR_CANCEL, "CKR_CANCEL", "the operation was cancelled"),
    (CKR_HOST_MEMORY, "CKR_HOST_MEMORY", "out of memory"),
    (CKR_SLOT_ID_INVALID, "CKR_SLOT_ID_INVALID", "there is no such slot"),
    (CKR_GENERAL_ERROR, "CKR_GENERAL_ERROR", "the module or its backend failed without a more precise code"),
    (CKR_FUNCTION_FAILED, "CKR_FUNCTION_FAILED", "the operation failed"),
    (CKR_ARGUMENTS_BAD, "CKR_ARGUMENTS_BAD", "the module rejected the arguments"),
    (CKR_ATTRIBUTE_READ_ONLY, "CKR_ATTRIBUTE_READ_ONLY", "an attribute cannot be set"),
    (CKR_ATTRIBUTE_SENSITIVE, "CKR_ATTRIBUTE_SENSITIVE", "the value is secret and cannot be read"),
    (CKR_ATTRIBUTE_TYPE_INVALID, "CKR_ATTRIBUTE_TYPE_INVALID", "an attribute is not known here"),
    (CKR_ATTRIBUTE_VALUE_INVALID, "CKR_ATTRIBUTE_VALUE_INVALID", "an attribute value was refused (e.g. the label is taken, or the backend is not part of this token)"),
    (CKR_ACTION_PROHIBITED, "CKR_ACTION_PROHIBITED", "this is not allowed by the configuration or the key"),
    (CKR_DATA_INVALID, "CKR_DATA_INVALID", "the input is not valid for this mechanism"),
    (CKR_DATA_LEN_RANGE, "CKR_DATA_LEN_RANGE", "the input has the wrong length for this mechanism (ECDSA and RSA-PKCS without a hash take a digest)"),
    (CKR_DEVICE_ERROR, "CKR_DEVICE_ERROR", "the backend cannot be reached or failed"),
    (CKR_DEVICE_MEMORY, "CKR_DEVICE_MEMORY", "the backend is out of room (a quota)"),
    (CKR_DEVICE_REMOVED, "CKR_DEVICE_REMOVED", "the token is gone"),
    (CKR_ENCRYPTED_DATA_INVALID, "CKR_ENCRYPTED_DATA_INVALID", "the ciphertext is not valid"),
    (CKR_ENCRYPTED_DATA_LEN_RANGE, "CKR_ENCRYPTED_DATA_LEN_RANGE", "the ciphertext has the wrong length"),
    (CKR_FUNCTION_CANCELED, "CKR_FUNCTION_CANCELED", "the operation was cancelled"),
    (CKR_FUNCTION_NOT_SUPPORTED, "CKR_FUNCTION_NOT_SUPPORTED", "this backend cannot do that"),
    (CKR_KEY_HANDLE_INVALID, "CKR_KEY_HANDLE_INVALID", "the key is gone"),
    (CKR_KEY_SIZE_RANGE, "CKR_KEY_SIZE_RANGE", "this key size is not supported here"),
    (CKR_KEY_TYPE_INCONSISTENT, "CKR_KEY_TYPE_INCONSISTENT", "the key's type does not fit the mechanism"),
    (CKR_KEY_FUNCTION_NOT_PERMITTED, "CKR_KEY_FUNCTION_NOT_PERMITTED", "the key may not be used for this"),
    (CKR_KEY_UNEXTRACTABLE, "CKR_KEY_UNEXTRACTABLE", "the key cannot leave its backend"),
    (CKR_MECHANISM_INVALID, "CKR_MECHANISM_INVALID", "this mechanism is not supported for this key or backend"),
    (CKR_MECHANISM_PARAM_INVALID, "CKR_MECHANISM_PARAM_INVALID", "the mechanism's parameters are not supported"),
    (CKR_OBJECT_HANDLE_INVALID, "CKR_OBJECT_HANDLE_INVALID", "the object is gone"),
    (CKR_OPERATION_ACTIVE, "CKR_OPERATION_ACTIVE", "another operation is in progress"),
    (CKR_OPERATION_NOT_INITIALIZED, "CKR_OPERATION_NOT_INITIALIZED", "no operation is in progress"),
    (CKR_PIN_INCORRECT, "CKR_PIN_INCORRECT", "the PIN is wrong"),
    (CKR_PIN_INVALID, "CKR_PIN_INVALID", "the PIN has characters that are not allowed"),
    (CKR_PIN_LEN_RANGE, "CKR_PIN_LEN_RANGE", "the PIN is too short or too long"),
    (CKR_PIN_EXPIRED, "CKR_PIN_EXPIRED", "the PIN has expired"),
    (CKR_PIN_LOCKED, "CKR_PIN_LOCKED", "the PIN is locked (too many wrong tries)"),
    (CKR_SESSION_CLOSED, "CKR_SESSION_CLOSED", "the session was closed"),
    (CKR_SESSION_COUNT, "CKR_SESSION_COUNT", "too many sessions are open"),
    (CKR_SESSION_HANDLE_INVALID, "CKR_SESSION_HANDLE_INVALID", "the session is gone"),
    (CKR_SESSION_READ_ONLY, "CKR_SESSION_READ_ONLY", "the session is read-only"),
    (CKR_SESSION_READ_ONLY_EXISTS, "CKR_SESSION_READ_ONLY_EXISTS", "a read-only session is open"),
    (CKR_SIGNATURE_INVALID, "CKR_SIGNATURE_INVALID", "the signature does not match"),
    (CKR_SIGNATURE_LEN_RANGE, "CKR_SIGNATURE_LEN_RANGE", "the signature has the wrong length for this key"),
    (CKR_TEMPLATE_INCOMPLETE, "CKR_TEMPLATE_INCOMPLETE", "an attribute the backend needs is missing"),
    (CKR_TEMPLATE_INCONSISTENT, "CKR_TEMPLATE_INCONSISTENT", "the attributes contradict each other or the backend's rules"),
    (CKR_TOKEN_NOT_PRESENT, "CKR_TOKEN_NOT_PRESENT", "the token is not present"),
    (CKR_TOKEN_NOT_RECOGNIZED, "CKR_TOKEN_NOT_RECOGNIZED", "the token is not recognized"),
    (CKR_TOKEN_WRITE_PROTECTED, "CKR_TOKEN_WRITE_PROTECTED", "the token is write-protected"),
    (CKR_USER_ALREADY_LOGGED_IN, "CKR_USER_ALREADY_LOGGED_IN", "already logged in"),
    (CKR_USER_NOT_LOGGED_IN, "CKR_USER_NOT_LOGGED_IN", "log in first (give the PIN)"),
    (CKR_USER_PIN_NOT_INITIALIZED, "CKR_USER_PIN_NOT_INITIALIZED", "the token has no user PIN yet"),
    (CKR_USER_TYPE_INVALID, "CKR_USER_TYPE_INVALID", "this kind of user does not exist here"),
    (CKR_USER_ANOTHER_ALREADY_LOGGED_IN, "CKR_USER_ANOTHER_ALREADY_LOGGED_IN", "another user is logged in"),
    (CKR_DOMAIN_PARAMS_INVALID, "CKR_DOMAIN_PARAMS_INVALID", "the key parameters (e.g. the curve) are not valid"),
    (CKR_CURVE_NOT_SUPPORTED, "CKR_CURVE_NOT_SUPPORTED", "this curve is not supported by the backend"),
    (CKR_BUFFER_TOO_SMALL, "CKR_BUFFER_TOO_SMALL", "an output buffer was too small"),
    (CKR_CRYPTOKI_NOT_INITIALIZED, "CKR_CRYPTOKI_NOT_INITIALIZED", "the module is not initialized"),
    (CKR_CRYPTOKI_ALREADY_INITIALIZED, "CKR_CRYPTOKI_ALREADY_INITIALIZED", "the module was already initialized"),
    (CKR_FUNCTION_REJECTED, "CKR_FUNCTION_REJECTED", "the token refused the operation"),
    (CKR_OPERATION_CANCEL_FAILED, "CKR_OPERATION_CANCEL_FAILED", "the operation could not be cancelled"),
    (CKR_NEED_TO_CREATE_THREADS, "CKR_NEED_TO_CREATE_THREADS", "the module needs to create threads"),
    (CKR_CANT_LOCK, "CKR_CANT_LOCK", "the module cannot lock as asked"),
    (CKR_RANDOM_NO_RNG, "CKR_RANDOM_NO_RNG", "the token has no random number generator"),
    (CKR_WRAPPED_KEY_INVALID, "CKR_WRAPPED_KEY_INVALID", "the wrapped key is not valid"),
];

/// The name and sentence of a return value.
pub fn describe(rv: CK_RV) -> (String, &'static str) {
    match RVS.iter().find(|(r, _, _)| *r == rv) {
        Some((_, name, text)) => (name.to_string(), text),
        None if rv >= CKR_VENDOR_DEFINED => (
            format!("CKR_VENDOR_DEFINED+{:#x}", rv - CKR_VENDOR_DEFINED),
            "the module failed in its own way",
        ),
        None => (format!("CK_RV {rv:#x}"), "the operation failed"),
    }
}

/// The `CK_RV` of a cryptoki error value.
fn rv_of(e: RvError) -> Option<CK_RV> {
    RVS.iter()
        .map(|(r, _, _)| *r)
        .find(|r| Rv::from(*r) == Rv::Error(e))
}

/// A failed PKCS#11 call as one line: `WHAT: CKR_NAME: sentence. Cause: the module's words`.
pub fn ck(what: &str, e: CkError) -> Fail {
    match e {
        CkError::Pkcs11(rverr, _) => match rv_of(rverr) {
            Some(rv) => ck_rv(what, rv),
            None => Fail::Msg(format!(
                "{what}{}{rverr:?}",
                if what.is_empty() { "" } else { ": " }
            )),
        },
        other => Fail::Msg(format!(
            "{what}{}{other}",
            if what.is_empty() { "" } else { ": " }
        )),
    }
}

/// Like [`ck`], from a raw `CK_RV`.
pub fn ck_rv(what: &str, rv: CK_RV) -> Fail {
    let (name, sentence) = describe(rv);
    let mut s = if what.is_empty() {
        format!("{name}: {sentence}")
    } else {
        format!("{what}: {name}: {sentence}")
    };
    if let Some((cause_rv, text)) = last_error() {
        if !text.is_empty() {
            if cause_rv == rv {
                s.push_str(&format!(". Cause: {text}"));
            } else if cause_rv == CKR_OK {
                s.push_str(&format!(". Note: {text}"));
            }
        }
    }
    Fail::Msg(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_matches_its_value_and_cryptoki() {
        for (rv, name, _) in RVS {
            assert!(name.starts_with("CKR_"));
            assert!(matches!(Rv::from(*rv), Rv::Error(_)), "{name}");
            if let Rv::Error(e) = Rv::from(*rv) {
                assert_eq!(rv_of(e), Some(*rv), "{name}");
            }
        }
        assert_eq!(describe(CKR_PIN_INCORRECT).0, "CKR_PIN_INCORRECT");
    }

    #[test]
    fn module_lookup_order() {
        let given = Some(PathBuf::from("/x/libp11bridge.so"));
        assert_eq!(module_candidates(&given).len(), 1);
        if std::env::var_os("P11BRIDGE_MODULE").is_none() {
            let c: Vec<PathBuf> = module_candidates(&None).into_iter().map(|c| c.0).collect();
            assert_eq!(c.len(), 3);
            assert!(c[0].ends_with("libp11bridge.so"));
            assert_eq!(
                c[1],
                PathBuf::from(format!(
                    "/usr/lib/{}/pkcs11/libp11bridge.so",
                    multiarch_triplet()
                ))
            );
            assert_eq!(
                c[2],
                PathBuf::from("/usr/local/lib/p11bridge/libp11bridge.so")
            );
        }
        if cfg!(all(target_arch = "x86_64", target_os = "linux")) {
            assert_eq!(multiarch_triplet(), "x86_64-linux-gnu");
        }
    }
}
