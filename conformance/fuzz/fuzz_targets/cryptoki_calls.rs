//! Fuzz target: the input bytes decode into a sequence of Cryptoki calls with arbitrary arguments (handles from
//! earlier results or random, NULL or valid pointers, lengths that fit the buffer behind the pointer or anything
//! with NULL) against p11bridge (linked as an rlib) over a SoftHSM2 token. What is never generated, because it is
//! the caller's undefined behaviour and no module can defend against it: pointers to invalid memory, lengths larger
//! than the buffer a non-NULL pointer points at, and mechanism parameters that are structures with pointers
//! (those are built well-formed).
//!
//! Left out on purpose: C_InitToken, C_InitPIN and C_SetPIN (they would change the token the rest of the run
//! uses), CKA_TOKEN and the *_TEMPLATE attributes in templates (no token objects are created; a copy gets CKA_TOKEN
//! false; templates inside templates are pointers), RSA key-pair generation (slow) and a blocking C_WaitForSlotEvent.
#![no_main]

use cryptoki_sys::*;
use libfuzzer_sys::fuzz_target;
use p11bridge_conformance::call;
use std::ffi::c_void;
use std::ptr::null_mut;
use std::sync::OnceLock;

struct Lists {
    f: &'static CK_FUNCTION_LIST,
    f3: &'static CK_FUNCTION_LIST_3_0,
}
// SAFETY: immutable statics of the module.
unsafe impl Sync for Lists {}
unsafe impl Send for Lists {}

fn init_args() -> CK_C_INITIALIZE_ARGS {
    CK_C_INITIALIZE_ARGS {
        CreateMutex: None,
        DestroyMutex: None,
        LockMutex: None,
        UnlockMutex: None,
        flags: CKF_OS_LOCKING_OK,
        pReserved: null_mut(),
    }
}

fn lists() -> &'static Lists {
    static L: OnceLock<Lists> = OnceLock::new();
    L.get_or_init(|| {
        if std::env::var_os("P11BRIDGE_CONFIG").is_none() {
            use p11bridge_conformance::env;
            let dir = env::repo_root().join(format!(
                "target/conformance/fuzz-token-{}",
                std::process::id()
            ));
            env::setup(&dir, &[], "");
        }
        unsafe {
            let mut f: *mut CK_FUNCTION_LIST = null_mut();
            assert_eq!(p11bridge::abi::C_GetFunctionList(&mut f), CKR_OK);
            let mut iface: *mut CK_INTERFACE = null_mut();
            let mut v = CK_VERSION { major: 3, minor: 0 };
            assert_eq!(
                p11bridge::abi::C_GetInterface(
                    b"PKCS 11\0".as_ptr() as *mut _,
                    &mut v,
                    &mut iface,
                    0
                ),
                CKR_OK
            );
            let l = Lists {
                f: &*f,
                f3: &*((*iface).pFunctionList as *const CK_FUNCTION_LIST_3_0),
            };
            let mut a = init_args();
            assert_eq!(
                call!(l.f, C_Initialize(&mut a as *mut _ as *mut c_void)),
                CKR_OK
            );
            l
        }
    })
}

/// With `P11BRIDGE_FUZZ_SHOW_KEYS` set: the key a sign/verify init is about to use, as the bridge reads it, on
/// stderr (to find which key an upstream crash came from when replaying a corpus).
fn show_key(f: &CK_FUNCTION_LIST, s: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, o: CK_OBJECT_HANDLE) {
    static ON: OnceLock<bool> = OnceLock::new();
    if !*ON.get_or_init(|| std::env::var_os("P11BRIDGE_FUZZ_SHOW_KEYS").is_some()) {
        return;
    }
    let mut vals = [[0u8; 1024]; 7];
    let types = [
        CKA_CLASS,
        CKA_KEY_TYPE,
        CKA_TOKEN,
        CKA_PRIVATE,
        CKA_EC_PARAMS,
        CKA_EC_POINT,
        CKA_LABEL,
    ];
    let mut t: Vec<CK_ATTRIBUTE> = types
        .iter()
        .zip(vals.iter_mut())
        .map(|(ty, v)| CK_ATTRIBUTE {
            type_: *ty,
            pValue: v.as_mut_ptr() as *mut c_void,
            ulValueLen: v.len() as CK_ULONG,
        })
        .collect();
    let rv = call!(f, C_GetAttributeValue(s, o, t.as_mut_ptr(), t.len() as CK_ULONG));
    let mech = if m.is_null() { 0 } else { unsafe { (*m).mechanism } };
    let mut line = format!("show_key session {s} object {o} mech {mech:#x} rv {rv:#x}:");
    for (a, v) in t.iter().zip(vals.iter()) {
        let n = a.ulValueLen;
        if n == CK_UNAVAILABLE_INFORMATION || n as usize > v.len() {
            line += &format!(" {:#x}=?", a.type_);
        } else {
            let hex: String = v[..n as usize].iter().map(|b| format!("{b:02x}")).collect();
            line += &format!(" {:#x}={hex}", a.type_);
        }
    }
    eprintln!("{line}");
}

/// Reads the input; zeros when it runs out.
struct R<'a>(&'a [u8]);

impl R<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.u8();
        }
        u64::from_le_bytes(b)
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.u8() as usize % xs.len()]
    }
    /// One of `xs`, or a random value.
    fn pick_or_any(&mut self, xs: &[CK_ULONG]) -> CK_ULONG {
        let i = self.u8() as usize % (xs.len() + 1);
        if i == xs.len() {
            self.u64() as CK_ULONG
        } else {
            xs[i]
        }
    }
    fn empty(&self) -> bool {
        self.0.is_empty()
    }
    /// A length for a NULL pointer: anything.
    fn any_len(&mut self) -> CK_ULONG {
        match self.u8() % 4 {
            0 => 0,
            1 => self.u16() as CK_ULONG,
            2 => CK_ULONG::MAX,
            _ => self.u64() as CK_ULONG,
        }
    }
    /// A length that fits a buffer of `cap` bytes.
    fn len_upto(&mut self, cap: usize) -> CK_ULONG {
        match self.u8() % 3 {
            0 => 0,
            1 => (self.u8() as usize % (cap + 1)) as CK_ULONG,
            _ => (self.u16() as usize % (cap + 1)) as CK_ULONG,
        }
    }
}

const BUF: usize = 4096;
const VAL: usize = 256;
const NATTR: usize = 8;

const ATTRS: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_CLASS,
    CKA_KEY_TYPE,
    CKA_LABEL,
    CKA_ID,
    CKA_VALUE,
    CKA_VALUE_LEN,
    CKA_PRIVATE,
    CKA_SENSITIVE,
    CKA_EXTRACTABLE,
    CKA_SIGN,
    CKA_VERIFY,
    CKA_ENCRYPT,
    CKA_DECRYPT,
    CKA_WRAP,
    CKA_UNWRAP,
    CKA_DERIVE,
    CKA_MODULUS,
    CKA_PUBLIC_EXPONENT,
    CKA_EC_PARAMS,
    CKA_EC_POINT,
    CKA_APPLICATION,
    CKA_MODIFIABLE,
    CKA_ALWAYS_SENSITIVE,
    CKA_NEVER_EXTRACTABLE,
    CKA_LOCAL,
    CKA_ALLOWED_MECHANISMS,
    0x0FFF,      // unknown
    0x8B11_D001, // CKA_P11BRIDGE_BACKEND
    0x8B11_D002, // CKA_P11BRIDGE_KEY_VERSION
];

const MECHS: &[CK_MECHANISM_TYPE] = &[
    CKM_ECDSA,
    CKM_ECDSA_SHA256,
    CKM_RSA_PKCS,
    CKM_SHA256_RSA_PKCS,
    CKM_RSA_PKCS_PSS,
    CKM_SHA256_RSA_PKCS_PSS,
    CKM_RSA_X_509,
    CKM_AES_ECB,
    CKM_AES_CBC,
    CKM_AES_CBC_PAD,
    CKM_AES_GCM,
    CKM_AES_KEY_GEN,
    CKM_EC_KEY_PAIR_GEN,
    CKM_EC_EDWARDS_KEY_PAIR_GEN,
    CKM_EDDSA,
    CKM_SHA256,
    CKM_SHA_1,
    CKM_SHA512,
    CKM_GENERIC_SECRET_KEY_GEN,
    CKM_SHA256_HMAC,
    CKM_AES_KEY_WRAP,
    CKM_AES_KEY_WRAP_PAD,
    CKM_ECDH1_DERIVE,
    0x8000_1234, // vendor-defined, unknown
];

struct St {
    sessions: Vec<CK_SESSION_HANDLE>,
    objects: Vec<CK_OBJECT_HANDLE>,
    created: Vec<CK_OBJECT_HANDLE>,
    slots: Vec<CK_SLOT_ID>,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    vals: Vec<[u8; VAL]>,
    tmpl: [CK_ATTRIBUTE; NATTR],
    tmpl2: [CK_ATTRIBUTE; NATTR],
    gcm: CK_GCM_PARAMS,
    pss: CK_RSA_PKCS_PSS_PARAMS,
    ecdh: CK_ECDH1_DERIVE_PARAMS,
    mech: CK_MECHANISM,
}

impl St {
    fn session(&mut self, r: &mut R) -> CK_SESSION_HANDLE {
        match r.u8() % 6 {
            0 => 0,
            1 => r.u64() as CK_ULONG,
            2 => r.u8() as CK_ULONG,
            _ if !self.sessions.is_empty() => self.sessions[r.u8() as usize % self.sessions.len()],
            _ => 1,
        }
    }
    fn object(&mut self, r: &mut R) -> CK_OBJECT_HANDLE {
        match r.u8() % 6 {
            0 => 0,
            1 => r.u64() as CK_ULONG,
            2 => r.u16() as CK_ULONG,
            _ if !self.objects.is_empty() => self.objects[r.u8() as usize % self.objects.len()],
            _ => 1,
        }
    }
    fn slot(&mut self, r: &mut R) -> CK_SLOT_ID {
        match r.u8() % 5 {
            0 => r.u64() as CK_ULONG,
            1 => r.u8() as CK_ULONG,
            _ if !self.slots.is_empty() => self.slots[r.u8() as usize % self.slots.len()],
            _ => 0,
        }
    }
    /// Input data: (pointer, length).
    fn input(&mut self, r: &mut R) -> (*mut u8, CK_ULONG) {
        if r.u8() % 8 == 0 {
            (null_mut(), r.any_len())
        } else {
            (self.inbuf.as_mut_ptr(), r.len_upto(BUF))
        }
    }
    /// Output buffer: (pointer, length stored in `len`), or NULL for a length query.
    fn output(&mut self, r: &mut R, len: &mut CK_ULONG) -> *mut u8 {
        if r.u8() % 4 == 0 {
            *len = r.any_len();
            null_mut()
        } else {
            *len = r.len_upto(BUF);
            self.out.as_mut_ptr()
        }
    }
    fn ulong_ptr(r: &mut R, v: &mut CK_ULONG) -> *mut CK_ULONG {
        if r.u8() % 16 == 0 {
            null_mut()
        } else {
            v
        }
    }
    /// A template in `tmpl` (second = `tmpl2`): (pointer, count).
    fn template(&mut self, r: &mut R, second: bool) -> (*mut CK_ATTRIBUTE, CK_ULONG) {
        let sel = r.u8();
        if sel % 16 == 0 {
            return (null_mut(), r.any_len());
        }
        let n = r.u8() as usize % (NATTR + 1);
        let base = if second { NATTR / 2 } else { 0 };
        for i in 0..n {
            let t = r.pick(ATTRS);
            let vi = (base + i) % self.vals.len();
            // Values: booleans, CK_ULONGs and bytes from the input.
            let kind = r.u8() % 8;
            let v = &mut self.vals[vi];
            let (p, l) = match kind {
                0 => (null_mut(), r.any_len()),
                1 => {
                    v[0] = r.u8() % 2;
                    (v.as_mut_ptr() as *mut c_void, 1)
                }
                2 => {
                    let x = match r.u8() % 4 {
                        0 => r.u8() as u64,
                        1 => r.u16() as u64,
                        _ => r.u64(),
                    };
                    v[..8].copy_from_slice(&x.to_ne_bytes());
                    (v.as_mut_ptr() as *mut c_void, 8)
                }
                _ => {
                    let l = r.len_upto(VAL);
                    for b in v.iter_mut().take(l as usize) {
                        *b = r.u8();
                    }
                    (v.as_mut_ptr() as *mut c_void, l)
                }
            };
            let a = CK_ATTRIBUTE {
                type_: t,
                pValue: p,
                ulValueLen: l,
            };
            if second {
                self.tmpl2[i] = a;
            } else {
                self.tmpl[i] = a;
            }
        }
        let t = if second {
            self.tmpl2.as_mut_ptr()
        } else {
            self.tmpl.as_mut_ptr()
        };
        (t, n as CK_ULONG)
    }
    /// A mechanism in `mech`, or NULL.
    fn mechanism(&mut self, r: &mut R) -> *mut CK_MECHANISM {
        if r.u8() % 16 == 0 {
            return null_mut();
        }
        let m = r.pick(MECHS);
        let (p, l): (*mut c_void, CK_ULONG) = match (m, r.u8() % 4) {
            (_, 0) => (null_mut(), r.any_len()),
            (CKM_AES_GCM, _) => {
                self.gcm = CK_GCM_PARAMS {
                    pIv: self.inbuf.as_mut_ptr(),
                    ulIvLen: r.len_upto(VAL),
                    ulIvBits: r.u16() as CK_ULONG,
                    pAAD: if r.u8() % 2 == 0 {
                        null_mut()
                    } else {
                        self.inbuf.as_mut_ptr()
                    },
                    ulAADLen: r.len_upto(VAL),
                    ulTagBits: r.u8() as CK_ULONG,
                };
                if self.gcm.pAAD.is_null() && r.u8() % 2 == 0 {
                    self.gcm.ulAADLen = 0;
                }
                (
                    &mut self.gcm as *mut _ as *mut c_void,
                    if r.u8() % 8 == 0 {
                        r.u8() as CK_ULONG % 48
                    } else {
                        std::mem::size_of::<CK_GCM_PARAMS>() as CK_ULONG
                    },
                )
            }
            (CKM_RSA_PKCS_PSS | CKM_SHA256_RSA_PKCS_PSS, _) => {
                self.pss = CK_RSA_PKCS_PSS_PARAMS {
                    hashAlg: r.pick_or_any(&[CKM_SHA256, CKM_SHA_1, CKM_SHA512]),
                    mgf: r.pick_or_any(&[CKG_MGF1_SHA256, CKG_MGF1_SHA1]),
                    sLen: r.pick_or_any(&[32, 0]),
                };
                (
                    &mut self.pss as *mut _ as *mut c_void,
                    if r.u8() % 8 == 0 {
                        r.u8() as CK_ULONG % 24
                    } else {
                        std::mem::size_of::<CK_RSA_PKCS_PSS_PARAMS>() as CK_ULONG
                    },
                )
            }
            (CKM_ECDH1_DERIVE, _) => {
                // The peer's public point: bytes of the input (often a P-256 point from an earlier output).
                let n = r.len_upto(VAL);
                self.ecdh = CK_ECDH1_DERIVE_PARAMS {
                    kdf: r.pick_or_any(&[CKD_NULL, CKD_SHA256_KDF]),
                    ulSharedDataLen: 0,
                    pSharedData: null_mut(),
                    ulPublicDataLen: n,
                    pPublicData: if r.u8() % 2 == 0 {
                        self.inbuf.as_mut_ptr()
                    } else {
                        self.out.as_mut_ptr()
                    },
                };
                (
                    &mut self.ecdh as *mut _ as *mut c_void,
                    std::mem::size_of::<CK_ECDH1_DERIVE_PARAMS>() as CK_ULONG,
                )
            }
            // Plain-bytes parameters (an IV) or none: bytes from the input buffer.
            (CKM_AES_CBC | CKM_AES_CBC_PAD | CKM_AES_KEY_WRAP | CKM_AES_KEY_WRAP_PAD, _) => {
                (self.inbuf.as_mut_ptr() as *mut c_void, r.len_upto(64))
            }
            _ if r.u8() % 2 == 0 => (self.inbuf.as_mut_ptr() as *mut c_void, r.len_upto(64)),
            _ => (null_mut(), 0),
        };
        self.mech = CK_MECHANISM {
            mechanism: m,
            pParameter: p,
            ulParameterLen: l,
        };
        &mut self.mech
    }
    fn pin(&mut self, r: &mut R) -> (*mut u8, CK_ULONG) {
        const PINS: [&str; 4] = ["bridge-pin-5678", "1234", "12345678", "bridge-so-87654321"];
        match r.u8() % 6 {
            0..=3 => {
                let p = PINS[r.u8() as usize % 4];
                self.inbuf[BUF..BUF + p.len()].copy_from_slice(p.as_bytes());
                (self.inbuf[BUF..].as_mut_ptr(), p.len() as CK_ULONG)
            }
            _ => self.input(r),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let l = lists();
    let (f, f3) = (l.f, l.f3);
    let mut r = R(data);
    // Input bytes: a pattern, then room for a PIN past BUF.
    let mut inbuf = vec![0u8; BUF + 64];
    for (i, b) in inbuf.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31);
    }
    let mut st = St {
        sessions: vec![],
        objects: vec![],
        created: vec![],
        slots: vec![],
        inbuf,
        out: vec![0u8; BUF],
        vals: vec![[0u8; VAL]; NATTR],
        tmpl: [CK_ATTRIBUTE {
            type_: 0,
            pValue: null_mut(),
            ulValueLen: 0,
        }; NATTR],
        tmpl2: [CK_ATTRIBUTE {
            type_: 0,
            pValue: null_mut(),
            ulValueLen: 0,
        }; NATTR],
        gcm: unsafe { std::mem::zeroed() },
        pss: unsafe { std::mem::zeroed() },
        ecdh: unsafe { std::mem::zeroed() },
        mech: unsafe { std::mem::zeroed() },
    };
    {
        let mut v = [0 as CK_SLOT_ID; 8];
        let mut n: CK_ULONG = 8;
        if call!(f, C_GetSlotList(CK_TRUE, v.as_mut_ptr(), &mut n)) == CKR_OK {
            st.slots = v[..n as usize].to_vec();
        }
    }
    let mut steps = 0;
    while !r.empty() && steps < 64 {
        steps += 1;
        let mut len: CK_ULONG = 0;
        let mut n: CK_ULONG = 0;
        let mut h: CK_ULONG = 0;
        let mut h2: CK_ULONG = 0;
        match r.u8() % 50 {
            0 => {
                let slot = st.slot(&mut r);
                let flags =
                    r.pick_or_any(&[CKF_SERIAL_SESSION | CKF_RW_SESSION, CKF_SERIAL_SESSION, 0]);
                let hp = St::ulong_ptr(&mut r, &mut h);
                if call!(f, C_OpenSession(slot, flags, null_mut(), None, hp)) == CKR_OK {
                    st.sessions.push(h);
                }
            }
            1 => {
                let s = st.session(&mut r);
                if call!(f, C_CloseSession(s)) == CKR_OK {
                    st.sessions.retain(|x| *x != s);
                }
            }
            2 => {
                let slot = st.slot(&mut r);
                call!(f, C_CloseAllSessions(slot));
            }
            3 => {
                let s = st.session(&mut r);
                let u = r.pick_or_any(&[CKU_USER, CKU_SO, CKU_CONTEXT_SPECIFIC]);
                let (p, pl) = st.pin(&mut r);
                call!(f, C_Login(s, u, p, pl));
            }
            4 => {
                let s = st.session(&mut r);
                call!(f, C_Logout(s));
            }
            5 => {
                let s = st.session(&mut r);
                let (t, tn) = st.template(&mut r, false);
                call!(f, C_FindObjectsInit(s, t, tn));
            }
            6 => {
                let s = st.session(&mut r);
                let mut hs = [0 as CK_OBJECT_HANDLE; 32];
                let max = r.u8() as CK_ULONG % 33;
                let hp = if r.u8() % 16 == 0 {
                    null_mut()
                } else {
                    hs.as_mut_ptr()
                };
                let np = St::ulong_ptr(&mut r, &mut n);
                if call!(f, C_FindObjects(s, hp, max, np)) == CKR_OK && !hp.is_null() {
                    let k = (n as usize).min(max as usize);
                    st.objects.extend_from_slice(&hs[..k]);
                }
            }
            7 => {
                let s = st.session(&mut r);
                call!(f, C_FindObjectsFinal(s));
            }
            8 => {
                let s = st.session(&mut r);
                let o = st.object(&mut r);
                let (t, tn) = st.template(&mut r, false);
                call!(f, C_GetAttributeValue(s, o, t, tn));
            }
            9 => {
                let s = st.session(&mut r);
                let o = st.object(&mut r);
                let (t, tn) = st.template(&mut r, false);
                call!(f, C_SetAttributeValue(s, o, t, tn));
            }
            10 => {
                let s = st.session(&mut r);
                let (t, tn) = st.template(&mut r, false);
                let hp = St::ulong_ptr(&mut r, &mut h);
                if call!(f, C_CreateObject(s, t, tn, hp)) == CKR_OK {
                    st.objects.push(h);
                    st.created.push(h);
                }
            }
            11 => {
                let s = st.session(&mut r);
                let o = st.object(&mut r);
                let (t, tn) = st.template(&mut r, false);
                // A copy of a token object is a token object unless the template says otherwise: always say it,
                // or the token fills up run after run (SoftHSM2 slows down with every file in its token).
                let mut no = CK_FALSE;
                let mut with_token: Vec<CK_ATTRIBUTE> = if t.is_null() {
                    vec![]
                } else {
                    // SAFETY: `template` returned `tn` (at most NATTR) entries of `st.tmpl`.
                    unsafe { std::slice::from_raw_parts(t, tn as usize) }.to_vec()
                };
                with_token.push(CK_ATTRIBUTE {
                    type_: CKA_TOKEN,
                    pValue: &mut no as *mut _ as *mut c_void,
                    ulValueLen: 1,
                });
                let (t, tn) = if t.is_null() {
                    (t, tn)
                } else {
                    (with_token.as_mut_ptr(), with_token.len() as CK_ULONG)
                };
                let hp = St::ulong_ptr(&mut r, &mut h);
                if call!(f, C_CopyObject(s, o, t, tn, hp)) == CKR_OK {
                    st.objects.push(h);
                    st.created.push(h);
                }
            }
            12 => {
                // Only what this input created, or random handles: the fixture's keys stay.
                let s = st.session(&mut r);
                let o = if !st.created.is_empty() && r.u8() % 2 == 0 {
                    st.created[r.u8() as usize % st.created.len()]
                } else {
                    r.u64() as CK_ULONG | 0x4000_0000
                };
                call!(f, C_DestroyObject(s, o));
            }
            13 => {
                let s = st.session(&mut r);
                let o = st.object(&mut r);
                let np = St::ulong_ptr(&mut r, &mut n);
                call!(f, C_GetObjectSize(s, o, np));
            }
            // Init functions.
            14..=18 => {
                let which = r.u8() % 6;
                let s = st.session(&mut r);
                let m = st.mechanism(&mut r);
                let o = st.object(&mut r);
                if which < 2 {
                    show_key(f, s, m, o);
                }
                match which {
                    0 => call!(f, C_SignInit(s, m, o)),
                    1 => call!(f, C_VerifyInit(s, m, o)),
                    2 => call!(f, C_EncryptInit(s, m, o)),
                    3 => call!(f, C_DecryptInit(s, m, o)),
                    4 => call!(f, C_DigestInit(s, m)),
                    _ => call!(f, C_DigestKey(s, o)),
                };
            }
            // Single-part and final calls with an output.
            19..=24 => {
                let which = r.u8() % 8;
                let s = st.session(&mut r);
                let (ip, il) = st.input(&mut r);
                let op = st.output(&mut r, &mut len);
                let lp = St::ulong_ptr(&mut r, &mut len);
                match which {
                    0 => call!(f, C_Sign(s, ip, il, op, lp)),
                    1 => call!(f, C_Encrypt(s, ip, il, op, lp)),
                    2 => call!(f, C_Decrypt(s, ip, il, op, lp)),
                    3 => call!(f, C_Digest(s, ip, il, op, lp)),
                    4 => call!(f, C_SignFinal(s, op, lp)),
                    5 => call!(f, C_EncryptFinal(s, op, lp)),
                    6 => call!(f, C_DecryptFinal(s, op, lp)),
                    _ => call!(f, C_DigestFinal(s, op, lp)),
                };
            }
            // Updates.
            25..=29 => {
                let which = r.u8() % 5;
                let s = st.session(&mut r);
                let (ip, il) = st.input(&mut r);
                match which {
                    0 => call!(f, C_SignUpdate(s, ip, il)),
                    1 => call!(f, C_VerifyUpdate(s, ip, il)),
                    2 => call!(f, C_DigestUpdate(s, ip, il)),
                    3 => {
                        let op = st.output(&mut r, &mut len);
                        let lp = St::ulong_ptr(&mut r, &mut len);
                        call!(f, C_EncryptUpdate(s, ip, il, op, lp))
                    }
                    _ => {
                        let op = st.output(&mut r, &mut len);
                        let lp = St::ulong_ptr(&mut r, &mut len);
                        call!(f, C_DecryptUpdate(s, ip, il, op, lp))
                    }
                };
            }
            30 | 31 => {
                let s = st.session(&mut r);
                let (ip, il) = st.input(&mut r);
                // The signature: bytes of the output buffer (what an earlier call wrote).
                let sl = r.len_upto(BUF);
                let sp = if r.u8() % 8 == 0 {
                    null_mut()
                } else {
                    st.out.as_mut_ptr()
                };
                if r.u8() % 2 == 0 {
                    call!(f, C_Verify(s, ip, il, sp, sl));
                } else {
                    call!(f, C_VerifyFinal(s, sp, sl));
                }
            }
            32 | 33 => {
                let s = st.session(&mut r);
                let m = st.mechanism(&mut r);
                let (t, tn) = st.template(&mut r, false);
                let hp = St::ulong_ptr(&mut r, &mut h);
                if call!(f, C_GenerateKey(s, m, t, tn, hp)) == CKR_OK {
                    st.objects.push(h);
                    st.created.push(h);
                }
            }
            34 => {
                let s = st.session(&mut r);
                let m = st.mechanism(&mut r);
                // No RSA key-pair generation (seconds per key).
                if !m.is_null() && unsafe { (*m).mechanism } == CKM_RSA_PKCS_KEY_PAIR_GEN {
                    continue;
                }
                let (t, tn) = st.template(&mut r, false);
                let (t2, tn2) = st.template(&mut r, true);
                let hp = St::ulong_ptr(&mut r, &mut h);
                let hp2 = St::ulong_ptr(&mut r, &mut h2);
                if call!(f, C_GenerateKeyPair(s, m, t, tn, t2, tn2, hp, hp2)) == CKR_OK {
                    st.objects.extend([h, h2]);
                    st.created.extend([h, h2]);
                }
            }
            35 => {
                let s = st.session(&mut r);
                let m = st.mechanism(&mut r);
                let (w, k) = (st.object(&mut r), st.object(&mut r));
                let op = st.output(&mut r, &mut len);
                let lp = St::ulong_ptr(&mut r, &mut len);
                call!(f, C_WrapKey(s, m, w, k, op, lp));
            }
            36 => {
                let s = st.session(&mut r);
                let m = st.mechanism(&mut r);
                let w = st.object(&mut r);
                let (ip, il) = st.input(&mut r);
                let (t, tn) = st.template(&mut r, false);
                let hp = St::ulong_ptr(&mut r, &mut h);
                if call!(f, C_UnwrapKey(s, m, w, ip, il, t, tn, hp)) == CKR_OK {
                    st.objects.push(h);
                    st.created.push(h);
                }
            }
            37 => {
                let s = st.session(&mut r);
                let m = st.mechanism(&mut r);
                let k = st.object(&mut r);
                let (t, tn) = st.template(&mut r, false);
                let hp = St::ulong_ptr(&mut r, &mut h);
                if call!(f, C_DeriveKey(s, m, k, t, tn, hp)) == CKR_OK {
                    st.objects.push(h);
                    st.created.push(h);
                }
            }
            38 => {
                let s = st.session(&mut r);
                if r.u8() % 2 == 0 {
                    let l = r.len_upto(BUF);
                    let op = if r.u8() % 8 == 0 {
                        null_mut()
                    } else {
                        st.out.as_mut_ptr()
                    };
                    call!(f, C_GenerateRandom(s, op, l));
                } else {
                    let (ip, il) = st.input(&mut r);
                    call!(f, C_SeedRandom(s, ip, il));
                }
            }
            39 => {
                let s = st.session(&mut r);
                let mut si: CK_SESSION_INFO = unsafe { std::mem::zeroed() };
                let p = if r.u8() % 8 == 0 {
                    null_mut()
                } else {
                    &mut si as *mut _
                };
                call!(f, C_GetSessionInfo(s, p));
            }
            40 => {
                let mut v = [0 as CK_SLOT_ID; 8];
                n = r.len_upto(8);
                let p = if r.u8() % 2 == 0 {
                    null_mut()
                } else {
                    v.as_mut_ptr()
                };
                let np = St::ulong_ptr(&mut r, &mut n);
                call!(f, C_GetSlotList(r.u8() % 3, p, np));
            }
            41 => {
                let slot = st.slot(&mut r);
                let mut si: CK_SLOT_INFO = unsafe { std::mem::zeroed() };
                let mut ti: CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
                let mut mi: CK_MECHANISM_INFO = unsafe { std::mem::zeroed() };
                match r.u8() % 3 {
                    0 => call!(f, C_GetSlotInfo(slot, &mut si)),
                    1 => call!(f, C_GetTokenInfo(slot, &mut ti)),
                    _ => {
                        let m = r.pick(MECHS);
                        call!(f, C_GetMechanismInfo(slot, m, &mut mi))
                    }
                };
            }
            42 => {
                let slot = st.slot(&mut r);
                let mut v = [0 as CK_MECHANISM_TYPE; 128];
                n = r.len_upto(128);
                let p = if r.u8() % 2 == 0 {
                    null_mut()
                } else {
                    v.as_mut_ptr()
                };
                let np = St::ulong_ptr(&mut r, &mut n);
                call!(f, C_GetMechanismList(slot, p, np));
            }
            43 => {
                let s = st.session(&mut r);
                if r.u8() % 2 == 0 {
                    let op = st.output(&mut r, &mut len);
                    let lp = St::ulong_ptr(&mut r, &mut len);
                    call!(f, C_GetOperationState(s, op, lp));
                } else {
                    let (ip, il) = st.input(&mut r);
                    let (a, b) = (st.object(&mut r), st.object(&mut r));
                    call!(f, C_SetOperationState(s, ip, il, a, b));
                }
            }
            44 => {
                let s = st.session(&mut r);
                let flags = r.pick_or_any(&[CKF_SIGN, CKF_ENCRYPT | CKF_DECRYPT, CKF_DIGEST]);
                call!(f3, C_SessionCancel(s, flags));
            }
            45 => {
                let s = st.session(&mut r);
                let (p, pl) = st.pin(&mut r);
                let (u, ul) = st.input(&mut r);
                call!(f3, C_LoginUser(s, CKU_USER, p, pl, u, ul.min(64)));
            }
            46 => {
                // Dual-function updates.
                let s = st.session(&mut r);
                let (ip, il) = st.input(&mut r);
                let op = st.output(&mut r, &mut len);
                let lp = St::ulong_ptr(&mut r, &mut len);
                match r.u8() % 4 {
                    0 => call!(f, C_DigestEncryptUpdate(s, ip, il, op, lp)),
                    1 => call!(f, C_DecryptDigestUpdate(s, ip, il, op, lp)),
                    2 => call!(f, C_SignEncryptUpdate(s, ip, il, op, lp)),
                    _ => call!(f, C_DecryptVerifyUpdate(s, ip, il, op, lp)),
                };
            }
            47 => {
                let mut info: CK_INFO = unsafe { std::mem::zeroed() };
                let mut slot: CK_SLOT_ID = 0;
                call!(f, C_GetInfo(&mut info));
                call!(f, C_WaitForSlotEvent(CKF_DONT_BLOCK, &mut slot, null_mut()));
                let s = st.session(&mut r);
                call!(f, C_GetFunctionStatus(s));
                call!(f, C_CancelFunction(s));
            }
            48 => {
                // Sign-recover and verify-recover.
                let s = st.session(&mut r);
                let m = st.mechanism(&mut r);
                let o = st.object(&mut r);
                let (ip, il) = st.input(&mut r);
                let op = st.output(&mut r, &mut len);
                let lp = St::ulong_ptr(&mut r, &mut len);
                if r.u8() % 2 == 0 {
                    call!(f, C_SignRecoverInit(s, m, o));
                    call!(f, C_SignRecover(s, ip, il, op, lp));
                } else {
                    call!(f, C_VerifyRecoverInit(s, m, o));
                    call!(f, C_VerifyRecover(s, ip, il, op, lp));
                }
            }
            _ => {
                // Rarely: finalize and initialize again (all sessions gone).
                if r.u8() == 0x5A {
                    call!(f, C_Finalize(null_mut()));
                    let mut a = init_args();
                    assert_eq!(
                        call!(f, C_Initialize(&mut a as *mut _ as *mut c_void)),
                        CKR_OK,
                        "C_Initialize after C_Finalize"
                    );
                    st.sessions.clear();
                }
            }
        }
    }
    // Leave no session (nor session object) behind for the next input.
    for slot in st.slots.clone() {
        call!(f, C_CloseAllSessions(slot));
    }
});
