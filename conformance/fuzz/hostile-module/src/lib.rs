//! A hostile PKCS#11 module for the `hostile_upstream` fuzz target: a complete 2.40 function list whose answers
//! (return codes including undefined ones, slot lists, token and mechanism information, object handles, attribute
//! values and the lengths reported for them, output lengths of signatures and ciphertexts, handle counts) come from a
//! script the fuzz target hands it through `hostile_set_script`. When the script runs out it behaves as a plain
//! token "upstream" with an EC key pair, an RSA key pair and an AES key.
//!
//! It never writes beyond the lengths it was given (a module that does is undefined behaviour no caller can defend
//! against); it does lie in every length it returns.
#![allow(non_snake_case, clippy::missing_safety_doc)]

use cryptoki_sys::*;
use std::ptr::null_mut;
use std::sync::Mutex;

struct Script {
    b: Vec<u8>,
    pos: usize,
    /// FindObjects: handles already returned since FindObjectsInit.
    found: usize,
}

static S: Mutex<Script> = Mutex::new(Script {
    b: Vec::new(),
    pos: 0,
    found: 0,
});

fn with<T>(f: impl FnOnce(&mut Script) -> T) -> T {
    let mut g = S.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut g)
}

impl Script {
    fn u8(&mut self) -> u8 {
        let v = self.b.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        v
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        let mut x = 0u64;
        for i in 0..8 {
            x |= (self.u8() as u64) << (8 * i);
        }
        x
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.u16() as usize % (max + 1);
        let start = self.pos.min(self.b.len());
        let end = (start + n).min(self.b.len());
        self.pos = start + n;
        self.b[start..end].to_vec()
    }
}

/// Sets the script (copied). Exported for the fuzz target.
#[no_mangle]
pub unsafe extern "C" fn hostile_set_script(p: *const u8, n: usize) {
    let v = if p.is_null() {
        Vec::new()
    } else {
        std::slice::from_raw_parts(p, n).to_vec()
    };
    with(|s| {
        s.b = v;
        s.pos = 0;
    });
}

const RVS: &[CK_RV] = &[
    CKR_GENERAL_ERROR,
    CKR_DEVICE_ERROR,
    CKR_DEVICE_MEMORY,
    CKR_HOST_MEMORY,
    CKR_SESSION_HANDLE_INVALID,
    CKR_USER_NOT_LOGGED_IN,
    CKR_USER_ALREADY_LOGGED_IN,
    CKR_PIN_INCORRECT,
    CKR_PIN_LOCKED,
    CKR_BUFFER_TOO_SMALL,
    CKR_OPERATION_NOT_INITIALIZED,
    CKR_OPERATION_ACTIVE,
    CKR_KEY_HANDLE_INVALID,
    CKR_OBJECT_HANDLE_INVALID,
    CKR_TOKEN_NOT_PRESENT,
    CKR_TOKEN_NOT_RECOGNIZED,
    CKR_DEVICE_REMOVED,
    CKR_SESSION_CLOSED,
    CKR_SESSION_COUNT,
    CKR_CRYPTOKI_NOT_INITIALIZED,
    CKR_CRYPTOKI_ALREADY_INITIALIZED,
    CKR_FUNCTION_NOT_SUPPORTED,
    CKR_FUNCTION_FAILED,
    CKR_ARGUMENTS_BAD,
    CKR_MECHANISM_INVALID,
    CKR_MECHANISM_PARAM_INVALID,
    CKR_ATTRIBUTE_TYPE_INVALID,
    CKR_ATTRIBUTE_SENSITIVE,
    CKR_ATTRIBUTE_VALUE_INVALID,
    CKR_TEMPLATE_INCOMPLETE,
    CKR_DATA_LEN_RANGE,
    CKR_ENCRYPTED_DATA_INVALID,
    CKR_SIGNATURE_INVALID,
    CKR_NEED_TO_CREATE_THREADS,
    CKR_CANT_LOCK,
    CKR_NO_EVENT,
    0x0000_0004, // CKR_FUNCTION_FAILED's neighbour, undefined in 2.40
    0x0000_01FF,
    0x1234_5678,
    0x7FFF_FFFF,
    0x8000_0001, // vendor defined
    0xFFFF_FFFF,
    0xFFFF_FFFF_FFFF_FFFF,
];

/// The return code: mostly CKR_OK.
fn rv() -> CK_RV {
    with(|s| {
        let b = s.u8();
        if b < 224 {
            CKR_OK
        } else {
            RVS[s.u8() as usize % RVS.len()]
        }
    })
}

/// Whether a lie that makes the bridge crash (a known finding, not fixed yet) is switched off:
/// `HOSTILE_SKIP=slot-count,mech-count` tells the truth about those counts so that a campaign gets past them.
fn skip(what: &str) -> bool {
    static SKIP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SKIP.get_or_init(|| std::env::var("HOSTILE_SKIP").unwrap_or_default())
        .split(',')
        .any(|x| x.trim() == what)
}

/// A count of `n` items, lying unless `skip(what)`.
fn count_lie(n: usize, what: &str) -> CK_ULONG {
    let l = lie(n);
    if skip(what) {
        n as CK_ULONG
    } else {
        l
    }
}

/// A length to report for `n` bytes: mostly the truth.
fn lie(n: usize) -> CK_ULONG {
    with(|s| match s.u8() {
        0..=215 => n as CK_ULONG,
        216..=223 => n as CK_ULONG + 1 + s.u8() as CK_ULONG,
        224..=231 => n.saturating_sub(1 + s.u8() as usize) as CK_ULONG,
        232..=239 => CK_UNAVAILABLE_INFORMATION,
        240..=247 => CK_ULONG::MAX / 2 + s.u8() as CK_ULONG,
        248..=251 => 0,
        _ => s.u64() as CK_ULONG,
    })
}

/// Writes `v` into the caller's (p, *pl) with the two-call convention, lying as the script says; never writes
/// beyond `*pl`.
unsafe fn out(p: *mut u8, pl: *mut CK_ULONG, v: &[u8]) -> CK_RV {
    let r = rv();
    if r != CKR_OK {
        return r;
    }
    if pl.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    if p.is_null() {
        *pl = lie(v.len());
        return CKR_OK;
    }
    let given = *pl as usize;
    if given < v.len() {
        // Sometimes a partial write and CKR_OK anyway.
        let partial = with(|s| s.u8() % 8 == 7);
        std::ptr::copy_nonoverlapping(v.as_ptr(), p, given);
        *pl = lie(v.len());
        return if partial {
            CKR_OK
        } else {
            CKR_BUFFER_TOO_SMALL
        };
    }
    std::ptr::copy_nonoverlapping(v.as_ptr(), p, v.len());
    *pl = lie(v.len());
    CKR_OK
}

/// Output bytes of a natural length (signature, ciphertext, plaintext, digest), or of a scripted one.
fn natural(n: usize) -> Vec<u8> {
    with(|s| match s.u8() % 8 {
        0..=4 => {
            let mut v = vec![0x5Au8; n];
            if n > 0 {
                v[0] = 0x30;
            }
            v
        }
        5 => s.bytes(1024),
        6 => vec![0u8; s.u16() as usize % 70000],
        _ => Vec::new(),
    })
}

unsafe extern "C" fn stub() -> CK_RV {
    rv()
}

unsafe extern "C" fn C_GetInfo(p: *mut CK_INFO) -> CK_RV {
    let r = rv();
    if r == CKR_OK && !p.is_null() {
        let mut i: CK_INFO = std::mem::zeroed();
        i.cryptokiVersion = CK_VERSION {
            major: 2,
            minor: with(|s| s.u8() % 50),
        };
        i.manufacturerID = [b' '; 32];
        i.manufacturerID[..7].copy_from_slice(b"hostile");
        i.libraryDescription = [with(|s| s.u8()).max(1); 32];
        *p = i;
    }
    r
}

unsafe extern "C" fn C_GetSlotList(
    _present: CK_BBOOL,
    p: *mut CK_SLOT_ID,
    pn: *mut CK_ULONG,
) -> CK_RV {
    let r = rv();
    if r != CKR_OK {
        return r;
    }
    if pn.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    let slots: Vec<CK_SLOT_ID> = with(|s| match s.u8() % 8 {
        0..=4 => vec![1],
        5 => vec![],
        6 => (0..s.u8() % 6).map(|_| s.u64() as CK_SLOT_ID).collect(),
        _ => vec![1, 1, 2],
    });
    if p.is_null() {
        *pn = count_lie(slots.len(), "slot-count");
        return CKR_OK;
    }
    let given = *pn as usize;
    if given < slots.len() {
        *pn = count_lie(slots.len(), "slot-count");
        return CKR_BUFFER_TOO_SMALL;
    }
    std::ptr::copy_nonoverlapping(slots.as_ptr(), p, slots.len());
    *pn = count_lie(slots.len(), "slot-count");
    CKR_OK
}

fn pad<const N: usize>(t: &[u8]) -> [u8; N] {
    let mut a = [b' '; N];
    let n = t.len().min(N);
    a[..n].copy_from_slice(&t[..n]);
    a
}

unsafe extern "C" fn C_GetSlotInfo(_slot: CK_SLOT_ID, p: *mut CK_SLOT_INFO) -> CK_RV {
    let r = rv();
    if r == CKR_OK && !p.is_null() {
        let mut i: CK_SLOT_INFO = std::mem::zeroed();
        i.slotDescription = pad(b"hostile slot");
        i.manufacturerID = pad(b"hostile");
        i.flags = with(|s| {
            if s.u8() % 8 == 7 {
                s.u64() as CK_FLAGS
            } else {
                CKF_TOKEN_PRESENT
            }
        });
        *p = i;
    }
    r
}

unsafe extern "C" fn C_GetTokenInfo(_slot: CK_SLOT_ID, p: *mut CK_TOKEN_INFO) -> CK_RV {
    let r = rv();
    if r == CKR_OK && !p.is_null() {
        let mut i: CK_TOKEN_INFO = std::mem::zeroed();
        with(|s| {
            i.label = if s.u8() % 8 == 7 {
                let b = s.bytes(32);
                pad(&b)
            } else {
                pad(b"upstream")
            };
            i.manufacturerID = pad(b"hostile");
            i.model = pad(b"model");
            i.serialNumber = if s.u8() % 8 == 7 {
                [0xFF; 16]
            } else {
                pad(b"0001")
            };
            i.flags = if s.u8() % 8 == 7 {
                s.u64() as CK_FLAGS
            } else {
                CKF_TOKEN_INITIALIZED | CKF_LOGIN_REQUIRED | CKF_USER_PIN_INITIALIZED | CKF_RNG
            };
            let x = |s: &mut Script, d: CK_ULONG| {
                if s.u8() % 8 == 7 {
                    s.u64() as CK_ULONG
                } else {
                    d
                }
            };
            i.ulMaxSessionCount = x(s, CK_EFFECTIVELY_INFINITE);
            i.ulSessionCount = x(s, CK_UNAVAILABLE_INFORMATION);
            i.ulMaxRwSessionCount = x(s, CK_EFFECTIVELY_INFINITE);
            i.ulRwSessionCount = x(s, 0);
            i.ulMaxPinLen = x(s, 255);
            i.ulMinPinLen = x(s, 4);
            i.ulTotalPublicMemory = x(s, CK_UNAVAILABLE_INFORMATION);
            i.ulFreePublicMemory = x(s, CK_UNAVAILABLE_INFORMATION);
            i.ulTotalPrivateMemory = x(s, CK_UNAVAILABLE_INFORMATION);
            i.ulFreePrivateMemory = x(s, CK_UNAVAILABLE_INFORMATION);
            i.hardwareVersion = CK_VERSION { major: 1, minor: 0 };
            i.firmwareVersion = CK_VERSION { major: 1, minor: 0 };
            i.utcTime = pad(&s.bytes(16));
        });
        *p = i;
    }
    r
}

const MECHS: &[CK_MECHANISM_TYPE] = &[
    CKM_ECDSA,
    CKM_ECDSA_SHA256,
    CKM_RSA_PKCS,
    CKM_SHA256_RSA_PKCS,
    CKM_RSA_PKCS_PSS,
    CKM_SHA256_RSA_PKCS_PSS,
    CKM_RSA_PKCS_OAEP,
    CKM_EC_KEY_PAIR_GEN,
    CKM_RSA_PKCS_KEY_PAIR_GEN,
    CKM_AES_KEY_GEN,
    CKM_AES_GCM,
    CKM_AES_CBC_PAD,
    CKM_SHA256_HMAC,
    CKM_EDDSA,
    CKM_SHA256,
];

unsafe extern "C" fn C_GetMechanismList(
    _slot: CK_SLOT_ID,
    p: *mut CK_MECHANISM_TYPE,
    pn: *mut CK_ULONG,
) -> CK_RV {
    let r = rv();
    if r != CKR_OK {
        return r;
    }
    if pn.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    let v: Vec<CK_MECHANISM_TYPE> = with(|s| {
        if s.u8() % 8 == 7 {
            (0..s.u8() % 40).map(|_| s.u64() as CK_ULONG).collect()
        } else {
            MECHS.to_vec()
        }
    });
    if p.is_null() {
        *pn = count_lie(v.len(), "mech-count");
        return CKR_OK;
    }
    let given = *pn as usize;
    if given < v.len() {
        *pn = count_lie(v.len(), "mech-count");
        return CKR_BUFFER_TOO_SMALL;
    }
    std::ptr::copy_nonoverlapping(v.as_ptr(), p, v.len());
    *pn = count_lie(v.len(), "mech-count");
    CKR_OK
}

unsafe extern "C" fn C_GetMechanismInfo(
    _slot: CK_SLOT_ID,
    _m: CK_MECHANISM_TYPE,
    p: *mut CK_MECHANISM_INFO,
) -> CK_RV {
    let r = rv();
    if r == CKR_OK && !p.is_null() {
        *p = with(|s| {
            if s.u8() % 4 == 3 {
                CK_MECHANISM_INFO {
                    ulMinKeySize: s.u64() as CK_ULONG,
                    ulMaxKeySize: s.u64() as CK_ULONG,
                    flags: s.u64() as CK_FLAGS,
                }
            } else {
                CK_MECHANISM_INFO {
                    ulMinKeySize: 256,
                    ulMaxKeySize: 4096,
                    flags: CKF_SIGN
                        | CKF_VERIFY
                        | CKF_ENCRYPT
                        | CKF_DECRYPT
                        | CKF_GENERATE
                        | CKF_GENERATE_KEY_PAIR
                        | CKF_EC_F_P
                        | CKF_EC_NAMEDCURVE
                        | CKF_EC_UNCOMPRESS,
                }
            }
        });
    }
    r
}

unsafe extern "C" fn C_OpenSession(
    _slot: CK_SLOT_ID,
    _flags: CK_FLAGS,
    _app: *mut std::ffi::c_void,
    _notify: CK_NOTIFY,
    ph: *mut CK_SESSION_HANDLE,
) -> CK_RV {
    let r = rv();
    if r == CKR_OK && !ph.is_null() {
        *ph = with(|s| match s.u8() % 8 {
            6 => 0,
            7 => s.u64() as CK_ULONG,
            _ => 7,
        });
    }
    r
}

unsafe extern "C" fn C_GetSessionInfo(_h: CK_SESSION_HANDLE, p: *mut CK_SESSION_INFO) -> CK_RV {
    let r = rv();
    if r == CKR_OK && !p.is_null() {
        *p = with(|s| CK_SESSION_INFO {
            slotID: if s.u8() % 8 == 7 {
                s.u64() as CK_ULONG
            } else {
                1
            },
            state: if s.u8() % 4 == 3 {
                s.u64() as CK_ULONG
            } else {
                CKS_RW_USER_FUNCTIONS
            },
            flags: CKF_SERIAL_SESSION | CKF_RW_SESSION,
            ulDeviceError: s.u8() as CK_ULONG,
        });
    }
    r
}

unsafe extern "C" fn C_FindObjectsInit(
    _h: CK_SESSION_HANDLE,
    _t: *mut CK_ATTRIBUTE,
    _n: CK_ULONG,
) -> CK_RV {
    with(|s| s.found = 0);
    rv()
}

/// The token's objects: kind by handle % 5 (EC private, EC public, RSA private, RSA public, AES).
const HANDLES: &[CK_OBJECT_HANDLE] = &[10, 11, 12, 13, 14];

unsafe extern "C" fn C_FindObjects(
    _h: CK_SESSION_HANDLE,
    p: *mut CK_OBJECT_HANDLE,
    max: CK_ULONG,
    pn: *mut CK_ULONG,
) -> CK_RV {
    let r = rv();
    if r != CKR_OK {
        return r;
    }
    if pn.is_null() || (p.is_null() && max > 0) {
        return CKR_ARGUMENTS_BAD;
    }
    let v: Vec<CK_OBJECT_HANDLE> = with(|s| match s.u8() % 8 {
        6 => (0..s.u8() % 40).map(|_| s.u64() as CK_ULONG).collect(),
        7 => vec![10, 10, 10, 0],
        _ => {
            let v = HANDLES[s.found.min(HANDLES.len())..].to_vec();
            s.found = HANDLES.len();
            v
        }
    });
    let n = v.len().min(max as usize);
    if n > 0 {
        std::ptr::copy_nonoverlapping(v.as_ptr(), p, n);
    }
    // The count may lie (more than max): the caller must not read past what it gave.
    *pn = with(|s| {
        if s.u8() % 16 == 15 {
            max + 1 + s.u8() as CK_ULONG
        } else {
            n as CK_ULONG
        }
    });
    CKR_OK
}

const EC_POINT: [u8; 65] = [
    0x4, 0x1d, 0x32, 0xa, 0x61, 0xa4, 0x7d, 0x97, 0x4d, 0x46, 0x32, 0x5f, 0x85, 0xaf, 0x5, 0xb,
    0x40, 0x4a, 0xbf, 0x27, 0xf2, 0xd, 0x16, 0x96, 0x82, 0xb7, 0x53, 0x41, 0x4c, 0x5b, 0xec, 0x40,
    0xbd, 0xdc, 0x6d, 0x99, 0xa, 0x4c, 0x99, 0xd6, 0xf7, 0x35, 0x8c, 0x49, 0x0, 0xd8, 0x1b, 0xf4,
    0x78, 0x8f, 0xc8, 0xc1, 0x47, 0xf9, 0x51, 0x89, 0x83, 0x32, 0x70, 0x93, 0xa0, 0xac, 0xd9, 0x91,
    0x17,
];
const MODULUS_HEX: &str = "CD14885607D1C6421F4A629A8843562909F1378989A5E858E9B921452D5C8754E4C1A4EC93FB906B5DD7A81F9C7F608B10CC7FCA2A15F330813D1B8073E404FE9C0DF75BDBA36499E7D3CE5DB2FF8798A7D91D9D5C537879ADFE1E1559BAE94BE31EF14B5000530089D274A2F873ABAE856013EA9452F7B6D53EAD0426AECB18C43A7061E1DBA0DE18E3D37DECFF09E320543637513E1445A40B7ACEC40CC355F513B193E6F0F7022351EE72901CC251AA8C2046341110B12AAA1765C21776708D254F53E2ADA1EC356B050CE7B54B4315433F0FA70EB21078ADA04AF3BEC287FB1444A128C0265CDEB71C27DC778F2BD2077DA98839B5B41AD123348A477D73";

fn ulong(v: CK_ULONG) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

/// The real value of an attribute of the plain token; `None`: the object has no such attribute.
fn baseline(o: CK_OBJECT_HANDLE, t: CK_ATTRIBUTE_TYPE) -> Option<Vec<u8>> {
    let kind = o % 5;
    let (class, kt) = match kind {
        0 => (CKO_PRIVATE_KEY, CKK_EC),
        1 => (CKO_PUBLIC_KEY, CKK_EC),
        2 => (CKO_PRIVATE_KEY, CKK_RSA),
        3 => (CKO_PUBLIC_KEY, CKK_RSA),
        _ => (CKO_SECRET_KEY, CKK_AES),
    };
    let yes = vec![CK_TRUE];
    let no = vec![CK_FALSE];
    Some(match t {
        CKA_CLASS => ulong(class),
        CKA_KEY_TYPE => ulong(kt),
        CKA_LABEL => format!("key{}", kind / 2).into_bytes(),
        CKA_ID => vec![kind as u8 / 2 + 1; 4],
        CKA_TOKEN | CKA_LOCAL => yes,
        CKA_PRIVATE => {
            if class == CKO_PUBLIC_KEY {
                no
            } else {
                yes
            }
        }
        CKA_SENSITIVE | CKA_ALWAYS_SENSITIVE | CKA_NEVER_EXTRACTABLE => {
            if class == CKO_PUBLIC_KEY {
                return None;
            } else {
                yes
            }
        }
        CKA_EXTRACTABLE
        | CKA_MODIFIABLE
        | CKA_DERIVE
        | CKA_WRAP
        | CKA_UNWRAP
        | CKA_ALWAYS_AUTHENTICATE => no,
        CKA_SIGN | CKA_DECRYPT => {
            if class == CKO_PUBLIC_KEY {
                no
            } else {
                yes
            }
        }
        CKA_VERIFY | CKA_ENCRYPT => {
            if class == CKO_PRIVATE_KEY {
                no
            } else {
                yes
            }
        }
        CKA_EC_PARAMS if kt == CKK_EC => {
            vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]
        }
        CKA_EC_POINT if kt == CKK_EC => {
            let mut v = vec![0x04, 65];
            v.extend_from_slice(&EC_POINT);
            v
        }
        CKA_MODULUS if kt == CKK_RSA => (0..256)
            .map(|i| u8::from_str_radix(&MODULUS_HEX[2 * i..2 * i + 2], 16).unwrap_or(0))
            .collect(),
        CKA_MODULUS_BITS if kt == CKK_RSA => ulong(2048),
        CKA_PUBLIC_EXPONENT if kt == CKK_RSA => vec![1, 0, 1],
        CKA_VALUE_LEN if kt == CKK_AES => ulong(32),
        CKA_VALUE if class != CKO_PUBLIC_KEY => return None,
        CKA_ALLOWED_MECHANISMS => MECHS.iter().flat_map(|m| ulong(*m)).collect(),
        CKA_START_DATE | CKA_END_DATE => vec![],
        CKA_KEY_GEN_MECHANISM => ulong(CK_UNAVAILABLE_INFORMATION),
        _ => return None,
    })
}

unsafe extern "C" fn C_GetAttributeValue(
    _h: CK_SESSION_HANDLE,
    o: CK_OBJECT_HANDLE,
    t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
) -> CK_RV {
    let r = rv();
    if r != CKR_OK && r != CKR_ATTRIBUTE_SENSITIVE && r != CKR_ATTRIBUTE_TYPE_INVALID {
        return r;
    }
    if t.is_null() && n > 0 {
        return CKR_ARGUMENTS_BAD;
    }
    let mut ret = r;
    for i in 0..n as usize {
        let a = &mut *t.add(i);
        let v = with(|s| match s.u8() % 16 {
            12 => Some(s.bytes(600)),
            13 => None,
            14 => baseline(o, a.type_).map(|mut v| {
                v.truncate(s.u8() as usize % (v.len() + 1));
                v
            }),
            15 => Some(ulong(s.u64() as CK_ULONG)),
            _ => baseline(o, a.type_),
        });
        let Some(v) = v else {
            a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
            if ret == CKR_OK {
                ret = CKR_ATTRIBUTE_TYPE_INVALID;
            }
            continue;
        };
        if a.pValue.is_null() {
            a.ulValueLen = lie(v.len());
            continue;
        }
        let given = a.ulValueLen as usize;
        if given < v.len() {
            let partial = with(|s| s.u8() % 8 == 7);
            if partial {
                std::ptr::copy_nonoverlapping(v.as_ptr(), a.pValue as *mut u8, given);
                a.ulValueLen = lie(v.len());
            } else {
                a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                if ret == CKR_OK {
                    ret = CKR_BUFFER_TOO_SMALL;
                }
            }
            continue;
        }
        std::ptr::copy_nonoverlapping(v.as_ptr(), a.pValue as *mut u8, v.len());
        a.ulValueLen = lie(v.len());
    }
    ret
}

unsafe extern "C" fn C_GetObjectSize(
    _h: CK_SESSION_HANDLE,
    _o: CK_OBJECT_HANDLE,
    p: *mut CK_ULONG,
) -> CK_RV {
    let r = rv();
    if r == CKR_OK && !p.is_null() {
        *p = lie(100);
    }
    r
}

unsafe extern "C" fn handle_out(ph: *mut CK_OBJECT_HANDLE) -> CK_RV {
    let r = rv();
    if r == CKR_OK && !ph.is_null() {
        *ph = with(|s| match s.u8() % 4 {
            2 => s.u64() as CK_ULONG,
            3 => 0,
            _ => 10 + (s.u8() % 5) as CK_ULONG,
        });
    }
    r
}

unsafe extern "C" fn C_CreateObject(
    _h: CK_SESSION_HANDLE,
    _t: *mut CK_ATTRIBUTE,
    _n: CK_ULONG,
    ph: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    handle_out(ph)
}

unsafe extern "C" fn C_CopyObject(
    _h: CK_SESSION_HANDLE,
    _o: CK_OBJECT_HANDLE,
    _t: *mut CK_ATTRIBUTE,
    _n: CK_ULONG,
    ph: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    handle_out(ph)
}

unsafe extern "C" fn C_GenerateKey(
    _h: CK_SESSION_HANDLE,
    _m: *mut CK_MECHANISM,
    _t: *mut CK_ATTRIBUTE,
    _n: CK_ULONG,
    ph: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    handle_out(ph)
}

unsafe extern "C" fn C_GenerateKeyPair(
    _h: CK_SESSION_HANDLE,
    _m: *mut CK_MECHANISM,
    _t: *mut CK_ATTRIBUTE,
    _n: CK_ULONG,
    _t2: *mut CK_ATTRIBUTE,
    _n2: CK_ULONG,
    ph: *mut CK_OBJECT_HANDLE,
    ph2: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    let r = handle_out(ph);
    if r == CKR_OK {
        handle_out(ph2)
    } else {
        r
    }
}

unsafe extern "C" fn C_UnwrapKey(
    _h: CK_SESSION_HANDLE,
    _m: *mut CK_MECHANISM,
    _k: CK_OBJECT_HANDLE,
    _w: *mut u8,
    _wn: CK_ULONG,
    _t: *mut CK_ATTRIBUTE,
    _n: CK_ULONG,
    ph: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    handle_out(ph)
}

unsafe extern "C" fn C_DeriveKey(
    _h: CK_SESSION_HANDLE,
    _m: *mut CK_MECHANISM,
    _k: CK_OBJECT_HANDLE,
    _t: *mut CK_ATTRIBUTE,
    _n: CK_ULONG,
    ph: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    handle_out(ph)
}

/// One-shot operations with output: (session, in, in_len, out, out_len).
unsafe extern "C" fn one_shot(
    _h: CK_SESSION_HANDLE,
    _d: *mut u8,
    n: CK_ULONG,
    p: *mut u8,
    pl: *mut CK_ULONG,
) -> CK_RV {
    let len = with(|s| match s.u8() % 6 {
        0 => 64,
        1 => 256,
        2 => 72,
        3 => 32,
        4 => (n as usize).min(1 << 20),
        _ => s.u16() as usize % 1200,
    });
    let v = natural(len);
    out(p, pl, &v)
}

/// Output-only: (session, out, out_len) — the Final functions.
unsafe extern "C" fn finish(_h: CK_SESSION_HANDLE, p: *mut u8, pl: *mut CK_ULONG) -> CK_RV {
    let len = with(|s| s.pick_len());
    let v = natural(len);
    out(p, pl, &v)
}

impl Script {
    fn pick_len(&mut self) -> usize {
        match self.u8() % 4 {
            0 => 64,
            1 => 256,
            2 => 0,
            _ => self.u16() as usize % 1200,
        }
    }
}

unsafe extern "C" fn C_WrapKey(
    _h: CK_SESSION_HANDLE,
    _m: *mut CK_MECHANISM,
    _k: CK_OBJECT_HANDLE,
    _w: CK_OBJECT_HANDLE,
    p: *mut u8,
    pl: *mut CK_ULONG,
) -> CK_RV {
    let len = with(|s| s.pick_len());
    out(p, pl, &natural(len))
}

unsafe extern "C" fn C_GetOperationState(
    _h: CK_SESSION_HANDLE,
    p: *mut u8,
    pl: *mut CK_ULONG,
) -> CK_RV {
    let len = with(|s| s.pick_len());
    out(p, pl, &natural(len))
}

unsafe extern "C" fn C_GenerateRandom(_h: CK_SESSION_HANDLE, p: *mut u8, n: CK_ULONG) -> CK_RV {
    let r = rv();
    if r == CKR_OK && !p.is_null() {
        std::ptr::write_bytes(p, 0x42, n as usize);
    }
    r
}

unsafe extern "C" fn C_WaitForSlotEvent(
    _flags: CK_FLAGS,
    _slot: *mut CK_SLOT_ID,
    _r: *mut std::ffi::c_void,
) -> CK_RV {
    CKR_NO_EVENT
}

macro_rules! stub {
    () => {
        Some(unsafe { std::mem::transmute::<unsafe extern "C" fn() -> CK_RV, _>(stub as _) })
    };
}

static mut LIST: CK_FUNCTION_LIST = CK_FUNCTION_LIST {
    version: CK_VERSION {
        major: 2,
        minor: 40,
    },
    C_Initialize: None,
    C_Finalize: None,
    C_GetInfo: None,
    C_GetFunctionList: None,
    C_GetSlotList: None,
    C_GetSlotInfo: None,
    C_GetTokenInfo: None,
    C_GetMechanismList: None,
    C_GetMechanismInfo: None,
    C_InitToken: None,
    C_InitPIN: None,
    C_SetPIN: None,
    C_OpenSession: None,
    C_CloseSession: None,
    C_CloseAllSessions: None,
    C_GetSessionInfo: None,
    C_GetOperationState: None,
    C_SetOperationState: None,
    C_Login: None,
    C_Logout: None,
    C_CreateObject: None,
    C_CopyObject: None,
    C_DestroyObject: None,
    C_GetObjectSize: None,
    C_GetAttributeValue: None,
    C_SetAttributeValue: None,
    C_FindObjectsInit: None,
    C_FindObjects: None,
    C_FindObjectsFinal: None,
    C_EncryptInit: None,
    C_Encrypt: None,
    C_EncryptUpdate: None,
    C_EncryptFinal: None,
    C_DecryptInit: None,
    C_Decrypt: None,
    C_DecryptUpdate: None,
    C_DecryptFinal: None,
    C_DigestInit: None,
    C_Digest: None,
    C_DigestUpdate: None,
    C_DigestKey: None,
    C_DigestFinal: None,
    C_SignInit: None,
    C_Sign: None,
    C_SignUpdate: None,
    C_SignFinal: None,
    C_SignRecoverInit: None,
    C_SignRecover: None,
    C_VerifyInit: None,
    C_Verify: None,
    C_VerifyUpdate: None,
    C_VerifyFinal: None,
    C_VerifyRecoverInit: None,
    C_VerifyRecover: None,
    C_DigestEncryptUpdate: None,
    C_DecryptDigestUpdate: None,
    C_SignEncryptUpdate: None,
    C_DecryptVerifyUpdate: None,
    C_GenerateKey: None,
    C_GenerateKeyPair: None,
    C_WrapKey: None,
    C_UnwrapKey: None,
    C_DeriveKey: None,
    C_SeedRandom: None,
    C_GenerateRandom: None,
    C_GetFunctionStatus: None,
    C_CancelFunction: None,
    C_WaitForSlotEvent: None,
};

static INIT: std::sync::Once = std::sync::Once::new();

#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionList(pp: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    if pp.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    INIT.call_once(|| {
        let l = &mut *std::ptr::addr_of_mut!(LIST);
        l.C_Initialize = stub!();
        l.C_Finalize = stub!();
        l.C_GetInfo = Some(C_GetInfo);
        l.C_GetFunctionList = Some(C_GetFunctionList);
        l.C_GetSlotList = Some(C_GetSlotList);
        l.C_GetSlotInfo = Some(C_GetSlotInfo);
        l.C_GetTokenInfo = Some(C_GetTokenInfo);
        l.C_GetMechanismList = Some(C_GetMechanismList);
        l.C_GetMechanismInfo = Some(C_GetMechanismInfo);
        l.C_InitToken = stub!();
        l.C_InitPIN = stub!();
        l.C_SetPIN = stub!();
        l.C_OpenSession = Some(C_OpenSession);
        l.C_CloseSession = stub!();
        l.C_CloseAllSessions = stub!();
        l.C_GetSessionInfo = Some(C_GetSessionInfo);
        l.C_GetOperationState = Some(C_GetOperationState);
        l.C_SetOperationState = stub!();
        l.C_Login = stub!();
        l.C_Logout = stub!();
        l.C_CreateObject = Some(C_CreateObject);
        l.C_CopyObject = Some(C_CopyObject);
        l.C_DestroyObject = stub!();
        l.C_GetObjectSize = Some(C_GetObjectSize);
        l.C_GetAttributeValue = Some(C_GetAttributeValue);
        l.C_SetAttributeValue = stub!();
        l.C_FindObjectsInit = Some(C_FindObjectsInit);
        l.C_FindObjects = Some(C_FindObjects);
        l.C_FindObjectsFinal = stub!();
        l.C_EncryptInit = stub!();
        l.C_Encrypt = Some(one_shot);
        l.C_EncryptUpdate = Some(one_shot);
        l.C_EncryptFinal = Some(finish);
        l.C_DecryptInit = stub!();
        l.C_Decrypt = Some(one_shot);
        l.C_DecryptUpdate = Some(one_shot);
        l.C_DecryptFinal = Some(finish);
        l.C_DigestInit = stub!();
        l.C_Digest = Some(one_shot);
        l.C_DigestUpdate = stub!();
        l.C_DigestKey = stub!();
        l.C_DigestFinal = Some(finish);
        l.C_SignInit = stub!();
        l.C_Sign = Some(one_shot);
        l.C_SignUpdate = stub!();
        l.C_SignFinal = Some(finish);
        l.C_SignRecoverInit = stub!();
        l.C_SignRecover = Some(one_shot);
        l.C_VerifyInit = stub!();
        l.C_Verify = stub!();
        l.C_VerifyUpdate = stub!();
        l.C_VerifyFinal = stub!();
        l.C_VerifyRecoverInit = stub!();
        l.C_VerifyRecover = Some(one_shot);
        l.C_DigestEncryptUpdate = Some(one_shot);
        l.C_DecryptDigestUpdate = Some(one_shot);
        l.C_SignEncryptUpdate = Some(one_shot);
        l.C_DecryptVerifyUpdate = Some(one_shot);
        l.C_GenerateKey = Some(C_GenerateKey);
        l.C_GenerateKeyPair = Some(C_GenerateKeyPair);
        l.C_WrapKey = Some(C_WrapKey);
        l.C_UnwrapKey = Some(C_UnwrapKey);
        l.C_DeriveKey = Some(C_DeriveKey);
        l.C_SeedRandom = stub!();
        l.C_GenerateRandom = Some(C_GenerateRandom);
        l.C_GetFunctionStatus = stub!();
        l.C_CancelFunction = stub!();
        l.C_WaitForSlotEvent = Some(C_WaitForSlotEvent);
        let _ = null_mut::<u8>();
    });
    *pp = std::ptr::addr_of_mut!(LIST);
    CKR_OK
}
