//! The built module's C ABI, called directly: `libp11bridge.so` loaded with libloading, its 2.40 function list
//! (`C_GetFunctionList`) and 3.0 function list (`C_GetInterface`), and a few helpers over raw calls.
//! Loaded from any path (the bridge, SoftHSM2, ...).
#![allow(dead_code)]

use cryptoki_sys::*;
use std::ptr::null_mut;
use std::sync::OnceLock;

/// What a function a module does not export "returns": the row is not applicable to that module.
pub const NA: CK_RV = 0xFFFF_FFF0;
/// What a call skipped because it killed the process in an earlier attempt "returns".
pub const DIED: CK_RV = 0xFFFF_FFF1;

/// Calls one function of a function list: `call!(list, C_GetInfo(&mut info))`; [`NA`] when the list lacks it.
#[macro_export]
#[allow(clippy::macro_metavars_in_unsafe)]
macro_rules! call {
    ($list:expr, $name:ident ( $($arg:expr),* $(,)? )) => {{
        #[allow(unused_unsafe, clippy::macro_metavars_in_unsafe)]
        let rv = match $list.$name {
            Some(fp) => unsafe { fp($($arg),*) },
            None => $crate::module::NA,
        };
        rv
    }};
}
pub use call;

/// A loaded PKCS#11 module (any: the bridge, SoftHSM2, ...).
pub struct Bridge {
    _lib: libloading::Library,
    /// The 2.40 list, from `C_GetFunctionList`.
    pub f: &'static CK_FUNCTION_LIST,
    /// The 3.0 list, from `C_GetInterface("PKCS 11", 3.0)`; for a 2.40-only module, a list with its 2.40 functions
    /// and no 3.0 ones (calls of those answer [`NA`]).
    pub f3: &'static CK_FUNCTION_LIST_3_0,
    /// Whether the module has the 3.0 interface functions.
    pub has_v3: bool,
    pub get_function_list: unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV,
    pub get_interface_list: unsafe extern "C" fn(*mut CK_INTERFACE, *mut CK_ULONG) -> CK_RV,
    pub get_interface: unsafe extern "C" fn(
        *mut CK_UTF8CHAR,
        *mut CK_VERSION,
        *mut *mut CK_INTERFACE,
        CK_FLAGS,
    ) -> CK_RV,
}

// SAFETY: the function lists are immutable statics of the loaded module, which is never unloaded.
unsafe impl Sync for Bridge {}
unsafe impl Send for Bridge {}

pub const INTERFACE_NAME: &[u8] = b"PKCS 11\0";

unsafe extern "C" fn no_interface_list(_: *mut CK_INTERFACE, _: *mut CK_ULONG) -> CK_RV {
    NA
}
unsafe extern "C" fn no_interface(
    _: *mut CK_UTF8CHAR,
    _: *mut CK_VERSION,
    _: *mut *mut CK_INTERFACE,
    _: CK_FLAGS,
) -> CK_RV {
    NA
}

/// A 3.0 list holding the functions of a 2.40 list.
fn as_v3(f: &CK_FUNCTION_LIST) -> CK_FUNCTION_LIST_3_0 {
    // SAFETY: a structure of a version and `Option`s of function pointers: all-zero is all `None`.
    let mut l: CK_FUNCTION_LIST_3_0 = unsafe { std::mem::zeroed() };
    macro_rules! copy { ($($n:ident),*) => { $( l.$n = f.$n; )* } }
    copy!(
        C_Initialize,
        C_Finalize,
        C_GetInfo,
        C_GetFunctionList,
        C_GetSlotList,
        C_GetSlotInfo,
        C_GetTokenInfo,
        C_GetMechanismList,
        C_GetMechanismInfo,
        C_InitToken,
        C_InitPIN,
        C_SetPIN,
        C_OpenSession,
        C_CloseSession,
        C_CloseAllSessions,
        C_GetSessionInfo,
        C_GetOperationState,
        C_SetOperationState,
        C_Login,
        C_Logout,
        C_CreateObject,
        C_CopyObject,
        C_DestroyObject,
        C_GetObjectSize,
        C_GetAttributeValue,
        C_SetAttributeValue,
        C_FindObjectsInit,
        C_FindObjects,
        C_FindObjectsFinal,
        C_EncryptInit,
        C_Encrypt,
        C_EncryptUpdate,
        C_EncryptFinal,
        C_DecryptInit,
        C_Decrypt,
        C_DecryptUpdate,
        C_DecryptFinal,
        C_DigestInit,
        C_Digest,
        C_DigestUpdate,
        C_DigestKey,
        C_DigestFinal,
        C_SignInit,
        C_Sign,
        C_SignUpdate,
        C_SignFinal,
        C_SignRecoverInit,
        C_SignRecover,
        C_VerifyInit,
        C_Verify,
        C_VerifyUpdate,
        C_VerifyFinal,
        C_VerifyRecoverInit,
        C_VerifyRecover,
        C_DigestEncryptUpdate,
        C_DecryptDigestUpdate,
        C_SignEncryptUpdate,
        C_DecryptVerifyUpdate,
        C_GenerateKey,
        C_GenerateKeyPair,
        C_WrapKey,
        C_UnwrapKey,
        C_DeriveKey,
        C_SeedRandom,
        C_GenerateRandom,
        C_GetFunctionStatus,
        C_CancelFunction,
        C_WaitForSlotEvent
    );
    l.version = f.version;
    l
}

static MODULE: OnceLock<Bridge> = OnceLock::new();

/// The module loaded by [`load`].
pub fn bridge() -> &'static Bridge {
    MODULE.get().expect("module::load first")
}

/// Loads the module at `path` once per process (never unloaded).
pub fn load(path: &std::path::Path) -> &'static Bridge {
    MODULE.get_or_init(|| {
        // SAFETY: loading a PKCS#11 module runs no code beyond its constructors.
        let lib = unsafe { libloading::Library::new(path) }
            .unwrap_or_else(|e| panic!("load {}: {e}", path.display()));
        unsafe {
            let gfl = *lib
                .get::<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV>(
                    b"C_GetFunctionList\0",
                )
                .expect("C_GetFunctionList");
            let gil = lib
                .get::<unsafe extern "C" fn(*mut CK_INTERFACE, *mut CK_ULONG) -> CK_RV>(
                    b"C_GetInterfaceList\0",
                )
                .ok()
                .map(|s| *s);
            let gi = lib
                .get::<unsafe extern "C" fn(
                    *mut CK_UTF8CHAR,
                    *mut CK_VERSION,
                    *mut *mut CK_INTERFACE,
                    CK_FLAGS,
                ) -> CK_RV>(b"C_GetInterface\0")
                .ok()
                .map(|s| *s);
            let mut f: *mut CK_FUNCTION_LIST = null_mut();
            assert_eq!(gfl(&mut f), CKR_OK, "C_GetFunctionList");
            assert!(!f.is_null());
            let f3: &'static CK_FUNCTION_LIST_3_0 = match gi {
                Some(gi) => {
                    let mut iface: *mut CK_INTERFACE = null_mut();
                    let mut v30 = CK_VERSION { major: 3, minor: 0 };
                    assert_eq!(
                        gi(INTERFACE_NAME.as_ptr() as *mut _, &mut v30, &mut iface, 0),
                        CKR_OK,
                        "C_GetInterface(PKCS 11, 3.0)"
                    );
                    assert!(!iface.is_null());
                    let f3 = (*iface).pFunctionList as *const CK_FUNCTION_LIST_3_0;
                    assert!(!f3.is_null());
                    &*f3
                }
                None => Box::leak(Box::new(as_v3(&*f))),
            };
            Bridge {
                f: &*f,
                f3,
                has_v3: gi.is_some(),
                get_function_list: gfl,
                get_interface_list: gil.unwrap_or(no_interface_list),
                get_interface: gi.unwrap_or(no_interface),
                _lib: lib,
            }
        }
    })
}

impl Bridge {
    /// `C_Initialize` with OS locking.
    pub fn initialize(&self) -> CK_RV {
        let mut args = CK_C_INITIALIZE_ARGS {
            CreateMutex: None,
            DestroyMutex: None,
            LockMutex: None,
            UnlockMutex: None,
            flags: CKF_OS_LOCKING_OK,
            pReserved: null_mut(),
        };
        call!(self.f, C_Initialize(&mut args as *mut _ as *mut _))
    }

    pub fn finalize(&self) -> CK_RV {
        call!(self.f, C_Finalize(null_mut()))
    }

    /// The slots with a token.
    pub fn slots(&self) -> Result<Vec<CK_SLOT_ID>, CK_RV> {
        let mut n: CK_ULONG = 0;
        let rv = call!(self.f, C_GetSlotList(CK_TRUE, null_mut(), &mut n));
        if rv != CKR_OK {
            return Err(rv);
        }
        let mut v = vec![0; n as usize];
        let rv = call!(self.f, C_GetSlotList(CK_TRUE, v.as_mut_ptr(), &mut n));
        if rv != CKR_OK {
            return Err(rv);
        }
        v.truncate(n as usize);
        Ok(v)
    }

    /// The slot whose token has this label.
    pub fn slot_by_label(&self, label: &str) -> CK_SLOT_ID {
        for s in self.slots().expect("C_GetSlotList") {
            let mut ti: CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
            if call!(self.f, C_GetTokenInfo(s, &mut ti)) == CKR_OK
                && String::from_utf8_lossy(&ti.label).trim_end() == label
            {
                return s;
            }
        }
        panic!("no token labelled {label}")
    }

    pub fn open(&self, slot: CK_SLOT_ID, flags: CK_FLAGS) -> Result<CK_SESSION_HANDLE, CK_RV> {
        let mut h: CK_SESSION_HANDLE = 0;
        match call!(self.f, C_OpenSession(slot, flags, null_mut(), None, &mut h)) {
            CKR_OK => Ok(h),
            rv => Err(rv),
        }
    }

    pub fn login(&self, h: CK_SESSION_HANDLE, user: CK_USER_TYPE, pin: &str) -> CK_RV {
        call!(
            self.f,
            C_Login(h, user, pin.as_ptr() as *mut _, pin.len() as CK_ULONG)
        )
    }

    /// `C_FindObjectsInit` + `C_FindObjects` + `C_FindObjectsFinal` for objects of this class and label.
    pub fn find(
        &self,
        h: CK_SESSION_HANDLE,
        class: CK_OBJECT_CLASS,
        label: &str,
    ) -> Result<Vec<CK_OBJECT_HANDLE>, CK_RV> {
        let mut class = class;
        let mut t = [
            attr(CKA_CLASS, &mut class),
            CK_ATTRIBUTE {
                type_: CKA_LABEL,
                pValue: label.as_ptr() as *mut _,
                ulValueLen: label.len() as CK_ULONG,
            },
        ];
        let rv = call!(
            self.f,
            C_FindObjectsInit(h, t.as_mut_ptr(), t.len() as CK_ULONG)
        );
        if rv != CKR_OK {
            return Err(rv);
        }
        let mut out = [0 as CK_OBJECT_HANDLE; 16];
        let mut n: CK_ULONG = 0;
        let rv = call!(self.f, C_FindObjects(h, out.as_mut_ptr(), 16, &mut n));
        let rv2 = call!(self.f, C_FindObjectsFinal(h));
        if rv != CKR_OK {
            return Err(rv);
        }
        if rv2 != CKR_OK {
            return Err(rv2);
        }
        Ok(out[..n as usize].to_vec())
    }

    /// The one object of this class and label.
    pub fn find_one(
        &self,
        h: CK_SESSION_HANDLE,
        class: CK_OBJECT_CLASS,
        label: &str,
    ) -> CK_OBJECT_HANDLE {
        let v = self.find(h, class, label).expect("find");
        assert_eq!(v.len(), 1, "objects of class {class} labelled {label}");
        v[0]
    }

    /// An ECDSA signature (raw r || s) of `data`, or the rv of the first call that failed.
    pub fn ecdsa_sign(
        &self,
        h: CK_SESSION_HANDLE,
        key: CK_OBJECT_HANDLE,
        data: &[u8],
    ) -> Result<Vec<u8>, CK_RV> {
        let mut m = mech(CKM_ECDSA);
        let rv = call!(self.f, C_SignInit(h, &mut m, key));
        if rv != CKR_OK {
            return Err(rv);
        }
        let mut sig = [0u8; 256];
        let mut n = sig.len() as CK_ULONG;
        let rv = call!(
            self.f,
            C_Sign(
                h,
                data.as_ptr() as *mut _,
                data.len() as CK_ULONG,
                sig.as_mut_ptr(),
                &mut n
            )
        );
        if rv != CKR_OK {
            return Err(rv);
        }
        Ok(sig[..n as usize].to_vec())
    }

    /// `C_Verify` of an ECDSA signature.
    pub fn ecdsa_verify(
        &self,
        h: CK_SESSION_HANDLE,
        key: CK_OBJECT_HANDLE,
        data: &[u8],
        sig: &[u8],
    ) -> CK_RV {
        let mut m = mech(CKM_ECDSA);
        let rv = call!(self.f, C_VerifyInit(h, &mut m, key));
        if rv != CKR_OK {
            return rv;
        }
        call!(
            self.f,
            C_Verify(
                h,
                data.as_ptr() as *mut _,
                data.len() as CK_ULONG,
                sig.as_ptr() as *mut _,
                sig.len() as CK_ULONG
            )
        )
    }
}

/// A mechanism without parameters.
pub fn mech(m: CK_MECHANISM_TYPE) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: m,
        pParameter: null_mut(),
        ulParameterLen: 0,
    }
}

/// An attribute pointing at one value.
pub fn attr<T>(t: CK_ATTRIBUTE_TYPE, v: &mut T) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: t,
        pValue: v as *mut T as *mut _,
        ulValueLen: std::mem::size_of::<T>() as CK_ULONG,
    }
}

/// The name of a `CK_RV`, for messages.
pub fn rv_name(rv: CK_RV) -> String {
    let known: &[(CK_RV, &str)] = &[
        (CKR_OK, "CKR_OK"),
        (CKR_CANCEL, "CKR_CANCEL"),
        (CKR_HOST_MEMORY, "CKR_HOST_MEMORY"),
        (CKR_SLOT_ID_INVALID, "CKR_SLOT_ID_INVALID"),
        (CKR_GENERAL_ERROR, "CKR_GENERAL_ERROR"),
        (CKR_FUNCTION_FAILED, "CKR_FUNCTION_FAILED"),
        (CKR_ARGUMENTS_BAD, "CKR_ARGUMENTS_BAD"),
        (CKR_NO_EVENT, "CKR_NO_EVENT"),
        (CKR_CANT_LOCK, "CKR_CANT_LOCK"),
        (CKR_ATTRIBUTE_SENSITIVE, "CKR_ATTRIBUTE_SENSITIVE"),
        (CKR_ATTRIBUTE_TYPE_INVALID, "CKR_ATTRIBUTE_TYPE_INVALID"),
        (CKR_ATTRIBUTE_VALUE_INVALID, "CKR_ATTRIBUTE_VALUE_INVALID"),
        (CKR_DATA_LEN_RANGE, "CKR_DATA_LEN_RANGE"),
        (CKR_DEVICE_ERROR, "CKR_DEVICE_ERROR"),
        (CKR_FUNCTION_NOT_PARALLEL, "CKR_FUNCTION_NOT_PARALLEL"),
        (CKR_FUNCTION_NOT_SUPPORTED, "CKR_FUNCTION_NOT_SUPPORTED"),
        (CKR_KEY_HANDLE_INVALID, "CKR_KEY_HANDLE_INVALID"),
        (CKR_KEY_TYPE_INCONSISTENT, "CKR_KEY_TYPE_INCONSISTENT"),
        (
            CKR_KEY_FUNCTION_NOT_PERMITTED,
            "CKR_KEY_FUNCTION_NOT_PERMITTED",
        ),
        (CKR_MECHANISM_INVALID, "CKR_MECHANISM_INVALID"),
        (CKR_MECHANISM_PARAM_INVALID, "CKR_MECHANISM_PARAM_INVALID"),
        (CKR_OBJECT_HANDLE_INVALID, "CKR_OBJECT_HANDLE_INVALID"),
        (CKR_OPERATION_ACTIVE, "CKR_OPERATION_ACTIVE"),
        (
            CKR_OPERATION_NOT_INITIALIZED,
            "CKR_OPERATION_NOT_INITIALIZED",
        ),
        (CKR_PIN_INCORRECT, "CKR_PIN_INCORRECT"),
        (CKR_SESSION_CLOSED, "CKR_SESSION_CLOSED"),
        (CKR_SESSION_HANDLE_INVALID, "CKR_SESSION_HANDLE_INVALID"),
        (
            CKR_SESSION_PARALLEL_NOT_SUPPORTED,
            "CKR_SESSION_PARALLEL_NOT_SUPPORTED",
        ),
        (CKR_SESSION_READ_ONLY, "CKR_SESSION_READ_ONLY"),
        (CKR_SESSION_EXISTS, "CKR_SESSION_EXISTS"),
        (CKR_SESSION_READ_ONLY_EXISTS, "CKR_SESSION_READ_ONLY_EXISTS"),
        (
            CKR_SESSION_READ_WRITE_SO_EXISTS,
            "CKR_SESSION_READ_WRITE_SO_EXISTS",
        ),
        (CKR_SIGNATURE_INVALID, "CKR_SIGNATURE_INVALID"),
        (CKR_SIGNATURE_LEN_RANGE, "CKR_SIGNATURE_LEN_RANGE"),
        (CKR_TEMPLATE_INCOMPLETE, "CKR_TEMPLATE_INCOMPLETE"),
        (CKR_TEMPLATE_INCONSISTENT, "CKR_TEMPLATE_INCONSISTENT"),
        (CKR_TOKEN_NOT_PRESENT, "CKR_TOKEN_NOT_PRESENT"),
        (CKR_USER_ALREADY_LOGGED_IN, "CKR_USER_ALREADY_LOGGED_IN"),
        (CKR_USER_NOT_LOGGED_IN, "CKR_USER_NOT_LOGGED_IN"),
        (CKR_USER_TYPE_INVALID, "CKR_USER_TYPE_INVALID"),
        (
            CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
            "CKR_USER_ANOTHER_ALREADY_LOGGED_IN",
        ),
        (
            CKR_WRAPPING_KEY_HANDLE_INVALID,
            "CKR_WRAPPING_KEY_HANDLE_INVALID",
        ),
        (
            CKR_UNWRAPPING_KEY_HANDLE_INVALID,
            "CKR_UNWRAPPING_KEY_HANDLE_INVALID",
        ),
        (
            CKR_RANDOM_SEED_NOT_SUPPORTED,
            "CKR_RANDOM_SEED_NOT_SUPPORTED",
        ),
        (CKR_BUFFER_TOO_SMALL, "CKR_BUFFER_TOO_SMALL"),
        (CKR_CRYPTOKI_NOT_INITIALIZED, "CKR_CRYPTOKI_NOT_INITIALIZED"),
        (
            CKR_CRYPTOKI_ALREADY_INITIALIZED,
            "CKR_CRYPTOKI_ALREADY_INITIALIZED",
        ),
        (CKR_OPERATION_CANCEL_FAILED, "CKR_OPERATION_CANCEL_FAILED"),
        (NA, "n/a"),
        (DIED, "DIED"),
        (CKR_KEY_SIZE_RANGE, "CKR_KEY_SIZE_RANGE"),
        (CKR_ENCRYPTED_DATA_LEN_RANGE, "CKR_ENCRYPTED_DATA_LEN_RANGE"),
        (CKR_ENCRYPTED_DATA_INVALID, "CKR_ENCRYPTED_DATA_INVALID"),
        (CKR_DATA_INVALID, "CKR_DATA_INVALID"),
        (CKR_MECHANISM_PARAM_INVALID, "CKR_MECHANISM_PARAM_INVALID"),
        (CKR_OBJECT_HANDLE_INVALID, "CKR_OBJECT_HANDLE_INVALID"),
        (CKR_ACTION_PROHIBITED, "CKR_ACTION_PROHIBITED"),
        (CKR_ATTRIBUTE_READ_ONLY, "CKR_ATTRIBUTE_READ_ONLY"),
        (CKR_PIN_LEN_RANGE, "CKR_PIN_LEN_RANGE"),
        (CKR_SAVED_STATE_INVALID, "CKR_SAVED_STATE_INVALID"),
        (CKR_STATE_UNSAVEABLE, "CKR_STATE_UNSAVEABLE"),
        (CKR_TOKEN_WRITE_PROTECTED, "CKR_TOKEN_WRITE_PROTECTED"),
        (CKR_WRAPPED_KEY_INVALID, "CKR_WRAPPED_KEY_INVALID"),
        (CKR_WRAPPED_KEY_LEN_RANGE, "CKR_WRAPPED_KEY_LEN_RANGE"),
        (CKR_KEY_UNEXTRACTABLE, "CKR_KEY_UNEXTRACTABLE"),
        (CKR_KEY_NOT_WRAPPABLE, "CKR_KEY_NOT_WRAPPABLE"),
        (
            CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT,
            "CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT",
        ),
        (
            CKR_WRAPPING_KEY_TYPE_INCONSISTENT,
            "CKR_WRAPPING_KEY_TYPE_INCONSISTENT",
        ),
        (CKR_NEED_TO_CREATE_THREADS, "CKR_NEED_TO_CREATE_THREADS"),
        (CKR_USER_TOO_MANY_TYPES, "CKR_USER_TOO_MANY_TYPES"),
        (CKR_PIN_EXPIRED, "CKR_PIN_EXPIRED"),
        (CKR_PIN_INVALID, "CKR_PIN_INVALID"),
        (CKR_RANDOM_NO_RNG, "CKR_RANDOM_NO_RNG"),
        (CKR_KEY_INDIGESTIBLE, "CKR_KEY_INDIGESTIBLE"),
        (CKR_DOMAIN_PARAMS_INVALID, "CKR_DOMAIN_PARAMS_INVALID"),
        (CKR_CURVE_NOT_SUPPORTED, "CKR_CURVE_NOT_SUPPORTED"),
        (
            CKR_OPERATION_NOT_INITIALIZED,
            "CKR_OPERATION_NOT_INITIALIZED",
        ),
    ];
    known
        .iter()
        .find(|(v, _)| *v == rv)
        .map(|(_, n)| n.to_string())
        .unwrap_or_else(|| format!("0x{rv:x}"))
}
