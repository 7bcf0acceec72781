//! Raw PKCS#11 through a module's function list: loading, sessions, searches, and the operations the
//! pass-through rows time.

use cryptoki_sys::*;
use std::ffi::c_void;
use std::path::Path;

pub struct Module {
    pub f: &'static CK_FUNCTION_LIST,
}

/// `call!(module, C_Xxx(args…))`: calls a function of the module's list.
macro_rules! call {
    ($m:expr, $f:ident ( $($a:expr),* $(,)? )) => {
        unsafe { ($m.f.$f.expect(stringify!($f)))($($a),*) }
    };
}
pub(crate) use call;

pub fn load(path: &Path) -> Module {
    let lib = unsafe { libloading::Library::new(path) }
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut fl: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
    unsafe {
        let get: libloading::Symbol<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV> =
            lib.get(b"C_GetFunctionList\0").expect("C_GetFunctionList");
        assert_eq!(get(&mut fl), CKR_OK);
    }
    std::mem::forget(lib);
    Module { f: unsafe { &*fl } }
}

pub fn ok(rv: CK_RV, what: &str) {
    assert!(rv == CKR_OK, "{what}: 0x{rv:x}");
}

pub fn slot_by_label(m: &Module, label: &str) -> CK_SLOT_ID {
    let mut n: CK_ULONG = 0;
    ok(
        call!(m, C_GetSlotList(CK_TRUE, std::ptr::null_mut(), &mut n)),
        "slots",
    );
    let mut v = vec![0; n as usize];
    ok(
        call!(m, C_GetSlotList(CK_TRUE, v.as_mut_ptr(), &mut n)),
        "slots",
    );
    for s in v {
        let mut ti = unsafe { std::mem::zeroed::<CK_TOKEN_INFO>() };
        if call!(m, C_GetTokenInfo(s, &mut ti)) == CKR_OK {
            let l = String::from_utf8_lossy(&ti.label).trim_end().to_string();
            if l == label {
                return s;
            }
        }
    }
    panic!("no token {label}");
}

pub fn session(m: &Module, slot: CK_SLOT_ID, pin: &str) -> CK_SESSION_HANDLE {
    let mut h = 0;
    ok(
        call!(
            m,
            C_OpenSession(
                slot,
                CKF_SERIAL_SESSION | CKF_RW_SESSION,
                std::ptr::null_mut(),
                None,
                &mut h
            )
        ),
        "open",
    );
    let rv = call!(
        m,
        C_Login(h, CKU_USER, pin.as_ptr() as *mut u8, pin.len() as CK_ULONG)
    );
    assert!(
        rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN,
        "login 0x{rv:x}"
    );
    h
}

/// The objects (at most 8; no allocation: the pass-through rows time this) matching `template`, and how many:
/// one C_FindObjectsInit / C_FindObjects / C_FindObjectsFinal.
fn search(
    m: &Module,
    s: CK_SESSION_HANDLE,
    template: &mut [CK_ATTRIBUTE],
) -> ([CK_OBJECT_HANDLE; 8], usize) {
    ok(
        call!(
            m,
            C_FindObjectsInit(s, template.as_mut_ptr(), template.len() as CK_ULONG)
        ),
        "find init",
    );
    let mut h = [0; 8];
    let mut n = 0;
    ok(
        call!(
            m,
            C_FindObjects(s, h.as_mut_ptr(), h.len() as CK_ULONG, &mut n)
        ),
        "find",
    );
    ok(call!(m, C_FindObjectsFinal(s)), "find final");
    (h, n as usize)
}

fn label_attribute(label: &str) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: CKA_LABEL,
        pValue: label.as_ptr() as *mut c_void,
        ulValueLen: label.len() as CK_ULONG,
    }
}

/// The one object with this label and class.
pub fn find(
    m: &Module,
    s: CK_SESSION_HANDLE,
    label: &str,
    class: CK_OBJECT_CLASS,
) -> CK_OBJECT_HANDLE {
    let mut class = class;
    let mut t = [
        label_attribute(label),
        CK_ATTRIBUTE {
            type_: CKA_CLASS,
            pValue: &mut class as *mut _ as *mut c_void,
            ulValueLen: std::mem::size_of::<CK_OBJECT_CLASS>() as CK_ULONG,
        },
    ];
    let (found, n) = search(m, s, &mut t);
    assert_eq!(n, 1, "{label}");
    found[0]
}

/// One search by class (every key must be read to know its class); the number of objects found (at most 8).
pub fn find_class(m: &Module, s: CK_SESSION_HANDLE, class: CK_OBJECT_CLASS) -> usize {
    let mut class = class;
    let mut t = [CK_ATTRIBUTE {
        type_: CKA_CLASS,
        pValue: &mut class as *mut _ as *mut c_void,
        ulValueLen: std::mem::size_of::<CK_OBJECT_CLASS>() as CK_ULONG,
    }];
    search(m, s, &mut t).1
}

/// One search by label; the number of objects found.
pub fn find_label(m: &Module, s: CK_SESSION_HANDLE, label: &str) -> usize {
    search(m, s, &mut [label_attribute(label)]).1
}

/// C_Initialize with OS locking.
pub fn initialize(m: &Module) {
    let mut args = CK_C_INITIALIZE_ARGS {
        CreateMutex: None,
        DestroyMutex: None,
        LockMutex: None,
        UnlockMutex: None,
        flags: CKF_OS_LOCKING_OK,
        pReserved: std::ptr::null_mut(),
    };
    ok(
        call!(m, C_Initialize(&mut args as *mut _ as *mut c_void)),
        "C_Initialize",
    );
}

/// One kind of operation, ready to run on a session.
#[derive(Clone, Copy)]
pub enum Op {
    Sign(CK_MECHANISM_TYPE, CK_OBJECT_HANDLE, usize),
    GcmEncrypt(CK_OBJECT_HANDLE),
    GetLabel(CK_OBJECT_HANDLE),
    FindByLabel,
}

pub fn run_op(m: &Module, s: CK_SESSION_HANDLE, op: Op) {
    match op {
        Op::Sign(mech, key, len) => {
            let mut mm = CK_MECHANISM {
                mechanism: mech,
                pParameter: std::ptr::null_mut(),
                ulParameterLen: 0,
            };
            ok(call!(m, C_SignInit(s, &mut mm, key)), "sign init");
            let mut data = [7u8; 32];
            let mut sig = [0u8; 512];
            let mut n = sig.len() as CK_ULONG;
            ok(
                call!(
                    m,
                    C_Sign(
                        s,
                        data.as_mut_ptr(),
                        len as CK_ULONG,
                        sig.as_mut_ptr(),
                        &mut n
                    )
                ),
                "sign",
            );
        }
        Op::GcmEncrypt(key) => {
            let mut iv = [1u8; 12];
            let mut p = CK_GCM_PARAMS {
                pIv: iv.as_mut_ptr(),
                ulIvLen: 12,
                ulIvBits: 96,
                pAAD: std::ptr::null_mut(),
                ulAADLen: 0,
                ulTagBits: 128,
            };
            let mut mm = CK_MECHANISM {
                mechanism: CKM_AES_GCM,
                pParameter: &mut p as *mut _ as *mut c_void,
                ulParameterLen: std::mem::size_of::<CK_GCM_PARAMS>() as CK_ULONG,
            };
            ok(call!(m, C_EncryptInit(s, &mut mm, key)), "encrypt init");
            let mut data = [3u8; 1024];
            let mut out = [0u8; 1100];
            let mut n = out.len() as CK_ULONG;
            ok(
                call!(
                    m,
                    C_Encrypt(s, data.as_mut_ptr(), 1024, out.as_mut_ptr(), &mut n)
                ),
                "encrypt",
            );
        }
        Op::GetLabel(key) => {
            let mut buf = [0u8; 64];
            let mut t = [CK_ATTRIBUTE {
                type_: CKA_LABEL,
                pValue: buf.as_mut_ptr() as *mut c_void,
                ulValueLen: 64,
            }];
            ok(
                call!(m, C_GetAttributeValue(s, key, t.as_mut_ptr(), 1)),
                "get attribute",
            );
        }
        Op::FindByLabel => {
            find_label(m, s, "ec-p256");
        }
    }
}
