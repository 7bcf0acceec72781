//! The function lists (2.40 and 3.0) and the 3.0 interface discovery functions.

use super::*;
use std::ffi::c_void;

/// Both function lists from one list of the functions, in the order of the 2.40 structure: `NAME` is served by the
/// function of that name, `NAME(OTHER)` by `OTHER` in the 2.40 list (functions whose answer depends on the
/// interface version); the functions in `only_30` exist in the 3.0 list only.
macro_rules! function_lists {
    (both { $($name:ident $(($v240:ident))?,)* } only_30 { $($new:ident,)* }) => {
        static FUNCTION_LIST_240: CK_FUNCTION_LIST = CK_FUNCTION_LIST {
            version: CK_VERSION { major: 2, minor: 40 },
            $($name: Some(function_list_240_entry!($name $($v240)?)),)*
        };

        static FUNCTION_LIST_30: CK_FUNCTION_LIST_3_0 = CK_FUNCTION_LIST_3_0 {
            version: CK_VERSION { major: 3, minor: 0 },
            $($name: Some($name),)*
            $($new: Some($new),)*
        };
    };
}

/// The function a 2.40 list entry points to (see [`function_lists`]).
macro_rules! function_list_240_entry {
    ($name:ident) => {
        $name
    };
    ($name:ident $v240:ident) => {
        $v240
    };
}

function_lists! {
    both {
        C_Initialize, C_Finalize, C_GetInfo(C_GetInfo_v2), C_GetFunctionList, C_GetSlotList, C_GetSlotInfo,
        C_GetTokenInfo, C_GetMechanismList, C_GetMechanismInfo(C_GetMechanismInfo_v2), C_InitToken, C_InitPIN,
        C_SetPIN, C_OpenSession, C_CloseSession, C_CloseAllSessions, C_GetSessionInfo, C_GetOperationState,
        C_SetOperationState, C_Login, C_Logout, C_CreateObject, C_CopyObject, C_DestroyObject, C_GetObjectSize,
        C_GetAttributeValue, C_SetAttributeValue, C_FindObjectsInit, C_FindObjects, C_FindObjectsFinal,
        C_EncryptInit, C_Encrypt, C_EncryptUpdate, C_EncryptFinal, C_DecryptInit, C_Decrypt, C_DecryptUpdate,
        C_DecryptFinal, C_DigestInit, C_Digest, C_DigestUpdate, C_DigestKey, C_DigestFinal, C_SignInit, C_Sign,
        C_SignUpdate, C_SignFinal, C_SignRecoverInit, C_SignRecover, C_VerifyInit, C_Verify, C_VerifyUpdate,
        C_VerifyFinal, C_VerifyRecoverInit, C_VerifyRecover, C_DigestEncryptUpdate, C_DecryptDigestUpdate,
        C_SignEncryptUpdate, C_DecryptVerifyUpdate, C_GenerateKey, C_GenerateKeyPair, C_WrapKey, C_UnwrapKey,
        C_DeriveKey, C_SeedRandom, C_GenerateRandom, C_GetFunctionStatus, C_CancelFunction, C_WaitForSlotEvent,
    }
    only_30 {
        C_GetInterfaceList, C_GetInterface, C_LoginUser, C_SessionCancel, C_MessageEncryptInit, C_EncryptMessage,
        C_EncryptMessageBegin, C_EncryptMessageNext, C_MessageEncryptFinal, C_MessageDecryptInit, C_DecryptMessage,
        C_DecryptMessageBegin, C_DecryptMessageNext, C_MessageDecryptFinal, C_MessageSignInit, C_SignMessage,
        C_SignMessageBegin, C_SignMessageNext, C_MessageSignFinal, C_MessageVerifyInit, C_VerifyMessage,
        C_VerifyMessageBegin, C_VerifyMessageNext, C_MessageVerifyFinal,
    }
}

/// The 2.40 function list (what `C_GetFunctionList` returns).
pub fn function_list_240() -> *mut CK_FUNCTION_LIST {
    &FUNCTION_LIST_240 as *const CK_FUNCTION_LIST as *mut CK_FUNCTION_LIST
}

/// The 3.0 function list.
pub fn function_list_30() -> *mut CK_FUNCTION_LIST_3_0 {
    &FUNCTION_LIST_30 as *const CK_FUNCTION_LIST_3_0 as *mut CK_FUNCTION_LIST_3_0
}

const INTERFACE_NAME: &[u8] = b"PKCS 11\0";

/// The interfaces we offer, newest first (the default is the first).
fn interfaces() -> [CK_INTERFACE; 2] {
    [
        CK_INTERFACE {
            pInterfaceName: INTERFACE_NAME.as_ptr() as *mut CK_UTF8CHAR,
            pFunctionList: function_list_30() as *mut c_void,
            flags: 0,
        },
        CK_INTERFACE {
            pInterfaceName: INTERFACE_NAME.as_ptr() as *mut CK_UTF8CHAR,
            pFunctionList: function_list_240() as *mut c_void,
            flags: 0,
        },
    ]
}

/// Interface structures handed out by `C_GetInterface` must outlive the call: keep one static copy.
struct Ifaces([CK_INTERFACE; 2]);
// SAFETY: the pointers inside are to immutable statics.
unsafe impl Sync for Ifaces {}
unsafe impl Send for Ifaces {}
static IFACES: std::sync::OnceLock<Ifaces> = std::sync::OnceLock::new();

fn version_of(i: &CK_INTERFACE) -> CK_VERSION {
    // SAFETY: every CK_FUNCTION_LIST* starts with its CK_VERSION.
    unsafe { *(i.pFunctionList as *const CK_VERSION) }
}

cryptoki_fn!(
    /// `C_GetInterfaceList` (3.0): works before `C_Initialize`.
    fn C_GetInterfaceList(pInterfacesList: *mut CK_INTERFACE, pulCount: *mut CK_ULONG) {
        put_list(&interfaces(), pInterfacesList, pulCount)
    }
);

cryptoki_fn!(
    /// `C_GetInterface` (3.0): by name ("PKCS 11" or NULL), version (or NULL for the newest) and flags.
    fn C_GetInterface(
        pInterfaceName: *mut CK_UTF8CHAR,
        pVersion: *mut CK_VERSION,
        ppInterface: *mut *mut CK_INTERFACE,
        flags: CK_FLAGS,
    ) {
        if ppInterface.is_null() {
            return Err(Error::new(CKR_ARGUMENTS_BAD));
        }
        if !pInterfaceName.is_null() {
            let name = std::ffi::CStr::from_ptr(pInterfaceName as *const std::ffi::c_char);
            if name.to_bytes() != b"PKCS 11" {
                return Err(Error::new(CKR_ARGUMENTS_BAD));
            }
        }
        let want = if pVersion.is_null() {
            // The default interface: 3.0, unless the configuration asks for 2.40.
            (pInterfaceName.is_null() && crate::core::config::default_interface_is_240()).then_some(
                CK_VERSION {
                    major: 2,
                    minor: 40,
                },
            )
        } else {
            Some(std::ptr::read_unaligned(pVersion))
        };
        let ifaces = &IFACES.get_or_init(|| Ifaces(interfaces())).0;
        let found = ifaces.iter().find(|i| {
            let v = version_of(i);
            want.is_none_or(|w| w.major == v.major && w.minor == v.minor)
                && (i.flags & flags) == flags
        });
        match found {
            Some(i) => put(ppInterface, i as *const CK_INTERFACE as *mut CK_INTERFACE),
            None => Err(Error::new(CKR_ARGUMENTS_BAD)),
        }
    }
);
