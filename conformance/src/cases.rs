//! The spec matrix's rows: a table of (function × condition → the `CK_RV` the PKCS#11 2.40/3.0 base specification
//! names), run through the raw C ABI of any module (the bridge, SoftHSM2, ...).
//!
//! Moved here from `tests/tests/bad_input.rs` (which asserted them against the bridge only). The PKCS#11 state is
//! process-global, so the rows are grouped in sections; the `matrix` binary runs each section in a child process of
//! its own (see [`crate::runner`]), so that a module that calls `exit()` or crashes on a row costs that row only.
//!
//! Each checked call is one row; its id is `section / function condition` (with `#n` for the n-th repetition).
//! Cases marked `[SPEC]` assert the specification's value where the bridge was seen to answer otherwise.

use crate::call;
use crate::module::{attr, bridge, mech, rv_name, Bridge, DIED, INTERFACE_NAME, NA};
use cryptoki_sys::*;
use std::collections::{HashMap, HashSet};
use std::ffi::c_void;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::null_mut;
use std::sync::OnceLock;

const NOT_INIT: CK_RV = CKR_CRYPTOKI_NOT_INITIALIZED;
const BAD: CK_RV = CKR_ARGUMENTS_BAD;
const HUGE: [CK_ULONG; 2] = [CK_ULONG::MAX, 1 << 40];
const RW: CK_FLAGS = CKF_SERIAL_SESSION | CKF_RW_SESSION;
const RO: CK_FLAGS = CKF_SERIAL_SESSION;
/// An attribute type no specification defines.
const CKA_UNKNOWN: CK_ATTRIBUTE_TYPE = 0x0FFF;
use p11bridge_vendor::CKA_P11BRIDGE_BACKEND;
use p11bridge_vendor::CKA_P11BRIDGE_KEY_VERSION;

/// The module under test and its token.
#[derive(Clone, Debug)]
pub struct Target {
    /// Label of the token the rows use (the bridge's unified token, or SoftHSM's "upstream").
    pub user_label: &'static str,
    /// Label of a second token view of the same keys (the bridge's mirror of the upstream; for SoftHSM the same
    /// token again).
    pub mirror_label: &'static str,
    pub pin: &'static str,
    pub so_pin: &'static str,
    /// The user PIN of the mirror token.
    pub mirror_pin: &'static str,
    /// Whether this is p11bridge (rows about its own attributes and slots apply).
    pub is_bridge: bool,
}

static TARGET: OnceLock<Target> = OnceLock::new();

pub fn set_target(t: Target) {
    let _ = TARGET.set(t);
}

fn tgt() -> &'static Target {
    TARGET.get().expect("set_target first")
}

/// The bridge over SoftHSM2's token "upstream" (PINs as in `tests/tests/common`).
pub fn bridge_target() -> Target {
    Target {
        user_label: "unified",
        mirror_label: "upstream",
        pin: "bridge-pin-5678",
        so_pin: "bridge-so-87654321",
        mirror_pin: "1234",
        is_bridge: true,
    }
}

/// SoftHSM2's token "upstream" directly (`softhsm-setup.sh`'s PINs).
pub fn softhsm_target() -> Target {
    Target {
        user_label: "upstream",
        mirror_label: "upstream",
        pin: "1234",
        so_pin: "12345678",
        mirror_pin: "1234",
        is_bridge: false,
    }
}

/// Marker lines a section's child process prints on stdout (one line each, tab-separated).
pub const CALL_MARK: &str = "P11C-CALL";
pub const ROW_MARK: &str = "P11C-ROW";

/// One row's outcome.
#[derive(Clone, Debug)]
pub struct Row {
    pub id: String,
    /// The accepted return codes (names), or `check` for a property check.
    pub spec: String,
    /// What the module answered (a name), `n/a`, `DIED ...`, or for a check `ok` / `FAIL: detail`.
    pub got: String,
    pub pass: bool,
}

/// Collected results of one section (in a child process, also printed as they come).
#[derive(Default)]
pub struct Checks {
    section: String,
    pub cases: usize,
    pub failures: Vec<String>,
    pub rows: Vec<Row>,
    seen: HashMap<String, usize>,
    /// Row ids not to call (they killed the process in an earlier attempt).
    pub skip: HashSet<String>,
    /// The next recorded row applies to the bridge only.
    bridge_only: bool,
    /// Print markers on stdout (child process mode).
    pub print: bool,
    na_scope: bool,
}

impl Checks {
    /// For a section's child process: markers printed, these rows skipped.
    pub fn child(skip: HashSet<String>) -> Checks {
        Checks {
            print: true,
            skip,
            ..Default::default()
        }
    }

    /// The id the next row with this case name gets.
    pub fn next_id(&mut self, case: &str) -> String {
        let base = format!("{} / {case}", self.section);
        let n = self.seen.get(&base).copied().unwrap_or(0);
        if n == 0 {
            base
        } else {
            format!("{base} #{}", n + 1)
        }
    }

    /// Announces a call about to be made (so that a process death is attributed to it); whether to make it.
    pub fn before_call(&mut self, case: &str) -> bool {
        let id = self.next_id(case);
        if self.print {
            println!("{CALL_MARK}\t{id}");
            let _ = std::io::stdout().flush();
        }
        !self.skip.contains(&id)
    }

    fn push(&mut self, case: &str, spec: String, got: String, pass: bool) {
        let id = self.next_id(case);
        let base = format!("{} / {case}", self.section);
        *self.seen.entry(base).or_insert(0) += 1;
        let (got, pass) = if (self.bridge_only && !tgt().is_bridge) || self.na_scope {
            ("n/a".to_string(), true)
        } else {
            (got, pass)
        };
        self.bridge_only = false;
        self.cases += 1;
        if !pass {
            self.failures.push(format!(
                "[{}] {case}: expected {spec}, got {got}",
                self.section
            ));
        }
        if self.print {
            println!("{ROW_MARK}\t{id}\t{spec}\t{got}\t{}", pass as u8);
            let _ = std::io::stdout().flush();
        }
        self.rows.push(Row {
            id,
            spec,
            got,
            pass,
        });
    }

    /// The next row applies to the bridge only (its own slots and attributes).
    pub fn next_bridge_only(&mut self) {
        self.bridge_only = true;
    }

    /// Rows until [`Checks::na_end`] do not apply (n/a) when `not_applicable` (e.g. 3.0 functions of a 2.40
    /// module, or the bridge's own attributes on another module).
    pub fn na_if(&mut self, not_applicable: bool) {
        self.na_scope = not_applicable;
    }

    pub fn na_end(&mut self) {
        self.na_scope = false;
    }

    fn rv(&mut self, case: &str, got: CK_RV, want: CK_RV) {
        self.any(case, got, &[want]);
    }

    /// Cases where the specification leaves a choice between several codes.
    fn any(&mut self, case: &str, got: CK_RV, want: &[CK_RV]) {
        let spec: Vec<String> = want.iter().map(|w| rv_name(*w)).collect();
        let pass = want.contains(&got) || got == NA;
        self.push(case, spec.join("|"), rv_name(got), pass);
    }

    fn that(&mut self, case: &str, ok: bool, detail: impl std::fmt::Display) {
        let got = if ok {
            "ok".to_string()
        } else {
            format!("FAIL: {detail}").replace(['\t', '\n'], " ")
        };
        self.push(case, "check".into(), got, ok);
    }
}

/// `chk!(c, list, want, "condition", C_Function(args...))`.
macro_rules! chk {
    ($c:expr, $list:expr, $want:expr, $cond:expr, $name:ident ( $($arg:expr),* $(,)? )) => {{
        let case = format!("{} {}", stringify!($name), $cond);
        let got = if $c.before_call(&case) { call!($list, $name($($arg),*)) } else { DIED };
        $c.any(&case, got, &[$want]);
        got
    }};
}

/// Runs one section; `init`: between `C_Initialize` and `C_Finalize`.
fn section(c: &mut Checks, name: &str, init: bool, f: impl FnOnce(&mut Checks, &'static Bridge)) {
    let b = bridge();
    c.section = name.to_string();
    if init {
        let rv = b.initialize();
        if rv != CKR_OK {
            c.that("C_Initialize", false, rv_name(rv));
            return;
        }
    }
    let r = catch_unwind(AssertUnwindSafe(|| f(c, b)));
    if let Err(p) = r {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        c.that("section panicked", false, msg);
    }
    if init {
        let rv = b.finalize();
        c.rv("C_Finalize at the end of the section", rv, CKR_OK);
    }
}

type SectionFn = fn(&mut Checks, &'static Bridge);

/// The sections, in order: (name, whether to initialize around it, body).
pub const SECTIONS: &[(&str, bool, SectionFn)] = &[
    ("before C_Initialize", false, uninitialized),
    ("C_Initialize arguments", false, initialize_args),
    ("NULL output pointers", true, null_outputs),
    ("NULL input with a length", true, null_inputs),
    ("huge lengths", true, huge_lengths),
    ("invalid slots", true, invalid_slots),
    ("invalid sessions", true, invalid_sessions),
    ("invalid object handles", true, invalid_objects),
    ("operation state", true, operation_state),
    ("two-call convention", true, two_call),
    ("C_GetAttributeValue", true, attributes),
    ("login", true, login),
    ("handles across C_Logout", true, handles_across_logout),
    ("private objects before login", true, private_before_login),
    ("interfaces and versions", true, interfaces),
    ("miscellaneous", true, misc),
    ("malformed EC keys", true, malformed_ec_keys),
    ("explicit EC parameters", true, explicit_ec_params),
    ("mirror transparency", true, mirror_transparency),
    ("after C_Finalize", false, after_finalize),
];

/// Runs section `i` (the module loaded, the target set) into `c`.
pub fn run_section(c: &mut Checks, i: usize) {
    let (name, init, f) = SECTIONS[i];
    section(c, name, init, f);
}

fn after_finalize(c: &mut Checks, b: &'static Bridge) {
    // In a process of its own: initialize and finalize first.
    c.rv("C_Initialize", b.initialize(), CKR_OK);
    c.rv("C_Finalize", b.finalize(), CKR_OK);
    let mut info: CK_INFO = unsafe { std::mem::zeroed() };
    chk!(c, b.f, NOT_INIT, "after C_Finalize", C_GetInfo(&mut info));
    chk!(c, b.f, NOT_INIT, "twice", C_Finalize(null_mut()));
}

/// Unified slot, the upstream's mirror, and a logged-in RW session on the unified token with its keys.
struct Fixture {
    u: CK_SLOT_ID,
    mirror: CK_SLOT_ID,
    s: CK_SESSION_HANDLE,
    ec_priv: CK_OBJECT_HANDLE,
    ec_pub: CK_OBJECT_HANDLE,
    aes: CK_OBJECT_HANDLE,
    /// For multi-part signing (SoftHSM's ECDSA is single-part).
    rsa_priv: CK_OBJECT_HANDLE,
    rsa_pub: CK_OBJECT_HANDLE,
}

fn fixture(b: &Bridge) -> Fixture {
    let u = b.slot_by_label(tgt().user_label);
    let mirror = b.slot_by_label(tgt().mirror_label);
    let s = b.open(u, RW).expect("open session");
    assert_eq!(b.login(s, CKU_USER, tgt().pin), CKR_OK, "login");
    Fixture {
        u,
        mirror,
        s,
        ec_priv: b.find_one(s, CKO_PRIVATE_KEY, "ec-p256"),
        ec_pub: b.find_one(s, CKO_PUBLIC_KEY, "ec-p256"),
        aes: b.find_one(s, CKO_SECRET_KEY, "aes-256"),
        rsa_priv: b.find_one(s, CKO_PRIVATE_KEY, "rsa-2048"),
        rsa_pub: b.find_one(s, CKO_PUBLIC_KEY, "rsa-2048"),
    }
}

fn zeroed<T>() -> T {
    // SAFETY: only used for plain C structures (all-zero is a valid value).
    unsafe { std::mem::zeroed() }
}

// ------------------------------------------------------------------------------------------------ before init

unsafe extern "C" fn notify(_: CK_SESSION_HANDLE, _: CK_NOTIFICATION, _: *mut c_void) -> CK_RV {
    CKR_OK
}

fn uninitialized(c: &mut Checks, b: &'static Bridge) {
    let f = b.f;
    let w = NOT_INIT;
    let u = "uninitialized";
    let mut info: CK_INFO = zeroed();
    let mut slot_info: CK_SLOT_INFO = zeroed();
    let mut token_info: CK_TOKEN_INFO = zeroed();
    let mut mech_info: CK_MECHANISM_INFO = zeroed();
    let mut session_info: CK_SESSION_INFO = zeroed();
    let mut list = [0 as CK_ULONG; 64];
    let mut n: CK_ULONG = 64;
    let mut buf = [0u8; 256];
    let bp = buf.as_mut_ptr();
    let mut len: CK_ULONG = 256;
    let lp: *mut CK_ULONG = &mut len;
    let data = [7u8; 32];
    let dp = data.as_ptr() as *mut u8;
    let mut m = mech(CKM_SHA256);
    let mut h: CK_SESSION_HANDLE = 0;
    let (mut o1, mut o2): (CK_OBJECT_HANDLE, CK_OBJECT_HANDLE) = (0, 0);
    let pin = b"1234".as_ptr() as *mut u8;
    let mut label = [b' '; 32];
    let mut class = CKO_DATA;
    let mut t = [attr(CKA_CLASS, &mut class)];
    let tp = t.as_mut_ptr();
    let mut slot: CK_SLOT_ID = 0;
    let s = 1 as CK_SESSION_HANDLE;
    let k = 1 as CK_OBJECT_HANDLE;

    chk!(c, f, w, u, C_Finalize(null_mut()));
    chk!(c, f, w, u, C_GetInfo(&mut info));
    chk!(
        c,
        f,
        w,
        u,
        C_GetSlotList(CK_TRUE, list.as_mut_ptr(), &mut n)
    );
    chk!(c, f, w, u, C_GetSlotInfo(0, &mut slot_info));
    chk!(c, f, w, u, C_GetTokenInfo(0, &mut token_info));
    chk!(c, f, w, u, C_GetMechanismList(0, list.as_mut_ptr(), &mut n));
    chk!(c, f, w, u, C_GetMechanismInfo(0, CKM_ECDSA, &mut mech_info));
    chk!(c, f, w, u, C_InitToken(0, pin, 4, label.as_mut_ptr()));
    chk!(c, f, w, u, C_InitPIN(s, pin, 4));
    chk!(c, f, w, u, C_SetPIN(s, pin, 4, pin, 4));
    chk!(
        c,
        f,
        w,
        u,
        C_OpenSession(0, RW, null_mut(), Some(notify), &mut h)
    );
    chk!(c, f, w, u, C_CloseSession(s));
    chk!(c, f, w, u, C_CloseAllSessions(0));
    chk!(c, f, w, u, C_GetSessionInfo(s, &mut session_info));
    chk!(c, f, w, u, C_GetOperationState(s, bp, lp));
    chk!(c, f, w, u, C_SetOperationState(s, dp, 32, 0, 0));
    chk!(c, f, w, u, C_Login(s, CKU_USER, pin, 4));
    chk!(c, f, w, u, C_Logout(s));
    chk!(c, f, w, u, C_CreateObject(s, tp, 1, &mut o1));
    chk!(c, f, w, u, C_CopyObject(s, k, tp, 1, &mut o1));
    chk!(c, f, w, u, C_DestroyObject(s, k));
    chk!(c, f, w, u, C_GetObjectSize(s, k, &mut n));
    chk!(c, f, w, u, C_GetAttributeValue(s, k, tp, 1));
    chk!(c, f, w, u, C_SetAttributeValue(s, k, tp, 1));
    chk!(c, f, w, u, C_FindObjectsInit(s, tp, 1));
    chk!(c, f, w, u, C_FindObjects(s, list.as_mut_ptr(), 4, &mut n));
    chk!(c, f, w, u, C_FindObjectsFinal(s));
    chk!(c, f, w, u, C_EncryptInit(s, &mut m, k));
    chk!(c, f, w, u, C_Encrypt(s, dp, 32, bp, lp));
    chk!(c, f, w, u, C_EncryptUpdate(s, dp, 32, bp, lp));
    chk!(c, f, w, u, C_EncryptFinal(s, bp, lp));
    chk!(c, f, w, u, C_DecryptInit(s, &mut m, k));
    chk!(c, f, w, u, C_Decrypt(s, dp, 32, bp, lp));
    chk!(c, f, w, u, C_DecryptUpdate(s, dp, 32, bp, lp));
    chk!(c, f, w, u, C_DecryptFinal(s, bp, lp));
    chk!(c, f, w, u, C_DigestInit(s, &mut m));
    chk!(c, f, w, u, C_Digest(s, dp, 32, bp, lp));
    chk!(c, f, w, u, C_DigestUpdate(s, dp, 32));
    chk!(c, f, w, u, C_DigestKey(s, k));
    chk!(c, f, w, u, C_DigestFinal(s, bp, lp));
    chk!(c, f, w, u, C_SignInit(s, &mut m, k));
    chk!(c, f, w, u, C_Sign(s, dp, 32, bp, lp));
    chk!(c, f, w, u, C_SignUpdate(s, dp, 32));
    chk!(c, f, w, u, C_SignFinal(s, bp, lp));
    chk!(c, f, w, u, C_SignRecoverInit(s, &mut m, k));
    chk!(c, f, w, u, C_SignRecover(s, dp, 32, bp, lp));
    chk!(c, f, w, u, C_VerifyInit(s, &mut m, k));
    chk!(c, f, w, u, C_Verify(s, dp, 32, dp, 32));
    chk!(c, f, w, u, C_VerifyUpdate(s, dp, 32));
    chk!(c, f, w, u, C_VerifyFinal(s, dp, 32));
    chk!(c, f, w, u, C_VerifyRecoverInit(s, &mut m, k));
    chk!(c, f, w, u, C_VerifyRecover(s, dp, 32, bp, lp));
    chk!(c, f, w, u, C_DigestEncryptUpdate(s, dp, 32, bp, lp));
    chk!(c, f, w, u, C_DecryptDigestUpdate(s, dp, 32, bp, lp));
    chk!(c, f, w, u, C_SignEncryptUpdate(s, dp, 32, bp, lp));
    chk!(c, f, w, u, C_DecryptVerifyUpdate(s, dp, 32, bp, lp));
    chk!(c, f, w, u, C_GenerateKey(s, &mut m, tp, 1, &mut o1));
    chk!(
        c,
        f,
        w,
        u,
        C_GenerateKeyPair(s, &mut m, tp, 1, tp, 1, &mut o1, &mut o2)
    );
    chk!(c, f, w, u, C_WrapKey(s, &mut m, k, k, bp, lp));
    chk!(
        c,
        f,
        w,
        u,
        C_UnwrapKey(s, &mut m, k, dp, 32, tp, 1, &mut o1)
    );
    chk!(c, f, w, u, C_DeriveKey(s, &mut m, k, tp, 1, &mut o1));
    chk!(c, f, w, u, C_SeedRandom(s, dp, 32));
    chk!(c, f, w, u, C_GenerateRandom(s, bp, 16));
    chk!(c, f, w, u, C_GetFunctionStatus(s));
    chk!(c, f, w, u, C_CancelFunction(s));
    chk!(
        c,
        f,
        w,
        u,
        C_WaitForSlotEvent(CKF_DONT_BLOCK, &mut slot, null_mut())
    );
    // 3.0 additions (the message functions are stubs: see `misc`).
    let f3 = b.f3;
    chk!(c, f3, w, u, C_LoginUser(s, CKU_USER, pin, 4, pin, 4));
    chk!(c, f3, w, u, C_SessionCancel(s, CKF_SIGN));

    // What works before C_Initialize.
    let mut fl: *mut CK_FUNCTION_LIST = null_mut();
    c.rv(
        "C_GetFunctionList uninitialized",
        unsafe { (b.get_function_list)(&mut fl) },
        CKR_OK,
    );
    c.that(
        "C_GetFunctionList's list",
        std::ptr::eq(fl, b.f),
        "another list",
    );
    chk!(c, f, CKR_OK, u, C_GetFunctionList(&mut fl));
    let mut ifaces: [CK_INTERFACE; 4] = zeroed();
    let mut n: CK_ULONG = 4;
    c.na_if(!b.has_v3);
    c.rv(
        "C_GetInterfaceList uninitialized",
        unsafe { (b.get_interface_list)(ifaces.as_mut_ptr(), &mut n) },
        CKR_OK,
    );
    c.that("C_GetInterfaceList count", n == 2, format!("{n}"));
    let mut i: *mut CK_INTERFACE = null_mut();
    c.rv(
        "C_GetInterface(NULL, NULL) uninitialized",
        unsafe { (b.get_interface)(null_mut(), null_mut(), &mut i, 0) },
        CKR_OK,
    );
    c.na_end();
    // A failed C_Initialize leaves the module uninitialized: checked in `initialize_args`.
}

// ------------------------------------------------------------------------------------------------ C_Initialize

unsafe extern "C" fn create_mutex(p: *mut *mut c_void) -> CK_RV {
    if !p.is_null() {
        *p = std::ptr::dangling_mut::<c_void>();
    }
    CKR_OK
}

unsafe extern "C" fn mutex_op(_: *mut c_void) -> CK_RV {
    CKR_OK
}

fn init_args(callbacks: [bool; 4], flags: CK_FLAGS) -> CK_C_INITIALIZE_ARGS {
    CK_C_INITIALIZE_ARGS {
        CreateMutex: callbacks[0].then_some(create_mutex as _),
        DestroyMutex: callbacks[1].then_some(mutex_op as _),
        LockMutex: callbacks[2].then_some(mutex_op as _),
        UnlockMutex: callbacks[3].then_some(mutex_op as _),
        flags,
        pReserved: null_mut(),
    }
}

/// Whether the module is initialized (`C_GetInfo` answers).
fn initialized(b: &Bridge) -> bool {
    let mut info: CK_INFO = zeroed();
    call!(b.f, C_GetInfo(&mut info)) == CKR_OK
}

fn initialize_args(c: &mut Checks, b: &'static Bridge) {
    let f = b.f;
    let try_init = |c: &mut Checks, case: &str, mut a: CK_C_INITIALIZE_ARGS, want: CK_RV| {
        let got = call!(f, C_Initialize(&mut a as *mut _ as *mut c_void));
        c.rv(&format!("C_Initialize {case}"), got, want);
        let is = initialized(b);
        c.that(
            &format!("C_Initialize {case}: initialized afterwards"),
            is == (got == CKR_OK),
            format!("initialized = {is} after {}", rv_name(got)),
        );
        if is {
            c.rv(&format!("C_Finalize after {case}"), b.finalize(), CKR_OK);
        }
    };
    let mut reserved = 0u8;
    let mut a = init_args([false; 4], 0);
    a.pReserved = &mut reserved as *mut u8 as *mut c_void;
    try_init(c, "pReserved non-NULL", a, BAD);
    a.flags = CKF_OS_LOCKING_OK;
    try_init(c, "pReserved non-NULL, OS_LOCKING_OK", a, BAD);
    for (given, what) in [
        ([true, false, false, false], "CreateMutex only"),
        ([false, true, false, false], "DestroyMutex only"),
        ([true, true, false, false], "Create/DestroyMutex only"),
        ([true, true, true, false], "three of four callbacks"),
        ([false, true, true, true], "no CreateMutex"),
    ] {
        try_init(c, what, init_args(given, 0), BAD);
        try_init(
            c,
            &format!("{what}, OS_LOCKING_OK"),
            init_args(given, CKF_OS_LOCKING_OK),
            BAD,
        );
    }
    try_init(
        c,
        "all four callbacks without OS_LOCKING_OK",
        init_args([true; 4], 0),
        CKR_OK,
    );
    try_init(
        c,
        "all four callbacks with OS_LOCKING_OK",
        init_args([true; 4], CKF_OS_LOCKING_OK),
        CKR_OK,
    );
    try_init(
        c,
        "no callbacks, OS_LOCKING_OK",
        init_args([false; 4], CKF_OS_LOCKING_OK),
        CKR_OK,
    );
    try_init(
        c,
        "no callbacks, no flags",
        init_args([false; 4], 0),
        CKR_OK,
    );
    try_init(
        c,
        "LIBRARY_CANT_CREATE_OS_THREADS",
        init_args([false; 4], CKF_LIBRARY_CANT_CREATE_OS_THREADS),
        CKR_OK,
    );
    try_init(
        c,
        "LIBRARY_CANT_CREATE_OS_THREADS | OS_LOCKING_OK",
        init_args(
            [false; 4],
            CKF_LIBRARY_CANT_CREATE_OS_THREADS | CKF_OS_LOCKING_OK,
        ),
        CKR_OK,
    );

    // NULL pInitArgs, then a second C_Initialize.
    chk!(c, f, CKR_OK, "NULL", C_Initialize(null_mut()));
    chk!(
        c,
        f,
        CKR_CRYPTOKI_ALREADY_INITIALIZED,
        "twice (NULL)",
        C_Initialize(null_mut())
    );
    let mut a = init_args([false; 4], CKF_OS_LOCKING_OK);
    chk!(
        c,
        f,
        CKR_CRYPTOKI_ALREADY_INITIALIZED,
        "twice (args)",
        C_Initialize(&mut a as *mut _ as *mut c_void)
    );
    let mut reserved = 0u8;
    chk!(
        c,
        f,
        BAD,
        "pReserved non-NULL",
        C_Finalize(&mut reserved as *mut u8 as *mut c_void)
    );
    c.that(
        "still initialized after C_Finalize(non-NULL)",
        initialized(b),
        "not initialized",
    );
    chk!(c, f, CKR_OK, "NULL", C_Finalize(null_mut()));
    chk!(c, f, NOT_INIT, "twice", C_Finalize(null_mut()));
    // Initialize again after a finalize.
    chk!(c, f, CKR_OK, "after C_Finalize", C_Initialize(null_mut()));
    chk!(c, f, CKR_OK, "", C_Finalize(null_mut()));
}

// ------------------------------------------------------------------------------------------------ NULL pointers

/// Initializes an operation on a fresh session (sharing the login), or panics.
fn op_session(
    b: &Bridge,
    x: &Fixture,
    init: impl FnOnce(CK_SESSION_HANDLE) -> CK_RV,
) -> CK_SESSION_HANDLE {
    let s = b.open(x.u, RW).expect("open session");
    let rv = init(s);
    assert_eq!(rv, CKR_OK, "operation init: {}", rv_name(rv));
    s
}

fn close(b: &Bridge, s: CK_SESSION_HANDLE) {
    assert_eq!(call!(b.f, C_CloseSession(s)), CKR_OK, "C_CloseSession");
}

fn null_outputs(c: &mut Checks, b: &'static Bridge) {
    let x = fixture(b);
    let (f, f3) = (b.f, b.f3);
    let s = x.s;
    let data = [7u8; 32];
    let dp = data.as_ptr() as *mut u8;
    let mut buf = [0u8; 512];
    let bp = buf.as_mut_ptr();
    let mut list = [0 as CK_ULONG; 128];
    let mut n: CK_ULONG = 0;
    let mut o: CK_OBJECT_HANDLE = 0;
    let mut ecdsa = mech(CKM_ECDSA);
    let mut sha = mech(CKM_SHA256);
    let mut ecb = mech(CKM_AES_ECB);
    let mut class = CKO_DATA;
    let mut t = [attr(CKA_CLASS, &mut class)];
    let tp = t.as_mut_ptr();
    let nul = "NULL output";

    chk!(c, f, BAD, "NULL pInfo (2.40 list)", C_GetInfo(null_mut()));
    chk!(c, f3, BAD, "NULL pInfo (3.0 list)", C_GetInfo(null_mut()));
    chk!(
        c,
        f,
        BAD,
        "NULL pulCount, NULL list",
        C_GetSlotList(CK_TRUE, null_mut(), null_mut())
    );
    chk!(
        c,
        f,
        BAD,
        "NULL pulCount",
        C_GetSlotList(CK_FALSE, list.as_mut_ptr(), null_mut())
    );
    chk!(c, f, BAD, nul, C_GetSlotInfo(x.u, null_mut()));
    chk!(c, f, BAD, nul, C_GetTokenInfo(x.u, null_mut()));
    chk!(
        c,
        f,
        BAD,
        "NULL pulCount",
        C_GetMechanismList(x.u, null_mut(), null_mut())
    );
    chk!(
        c,
        f,
        BAD,
        "NULL pulCount",
        C_GetMechanismList(x.u, list.as_mut_ptr(), null_mut())
    );
    chk!(
        c,
        f,
        BAD,
        nul,
        C_GetMechanismInfo(x.u, CKM_ECDSA, null_mut())
    );
    chk!(
        c,
        f,
        BAD,
        "NULL phSession",
        C_OpenSession(x.u, RW, null_mut(), None, null_mut())
    );
    chk!(
        c,
        f,
        BAD,
        "NULL phSession (mirror)",
        C_OpenSession(x.mirror, RO, null_mut(), None, null_mut())
    );
    chk!(c, f, BAD, nul, C_GetSessionInfo(s, null_mut()));
    chk!(c, f, BAD, nul, C_GetObjectSize(s, x.ec_pub, null_mut()));
    chk!(
        c,
        f,
        BAD,
        "NULL pTemplate, count 1",
        C_GetAttributeValue(s, x.ec_pub, null_mut(), 1)
    );
    chk!(
        c,
        f,
        BAD,
        "NULL pulCount",
        C_GetOperationState(s, null_mut(), null_mut())
    );
    chk!(
        c,
        f,
        BAD,
        "NULL phObject",
        C_CreateObject(s, tp, 1, null_mut())
    );
    chk!(
        c,
        f,
        BAD,
        "NULL phNewObject",
        C_CopyObject(s, x.ec_pub, null_mut(), 0, null_mut())
    );
    let mut gen = mech(CKM_AES_KEY_GEN);
    chk!(
        c,
        f,
        BAD,
        "NULL phKey",
        C_GenerateKey(s, &mut gen, null_mut(), 0, null_mut())
    );
    let mut kpgen = mech(CKM_EC_KEY_PAIR_GEN);
    chk!(
        c,
        f,
        BAD,
        "NULL phPrivateKey",
        C_GenerateKeyPair(
            s,
            &mut kpgen,
            null_mut(),
            0,
            null_mut(),
            0,
            &mut o,
            null_mut()
        )
    );
    chk!(
        c,
        f,
        BAD,
        "NULL phPublicKey",
        C_GenerateKeyPair(
            s,
            &mut kpgen,
            null_mut(),
            0,
            null_mut(),
            0,
            null_mut(),
            &mut o
        )
    );
    chk!(
        c,
        f,
        BAD,
        "NULL pulWrappedKeyLen",
        C_WrapKey(s, &mut ecb, x.aes, x.aes, bp, null_mut())
    );
    chk!(
        c,
        f,
        BAD,
        "NULL phKey",
        C_UnwrapKey(s, &mut ecb, x.aes, dp, 32, null_mut(), 0, null_mut())
    );
    chk!(
        c,
        f,
        BAD,
        "NULL phKey",
        C_DeriveKey(s, &mut sha, x.ec_priv, null_mut(), 0, null_mut())
    );
    chk!(
        c,
        f,
        BAD,
        "NULL pRandomData",
        C_GenerateRandom(s, null_mut(), 16)
    );
    chk!(
        c,
        f,
        BAD,
        "NULL pSlot",
        C_WaitForSlotEvent(CKF_DONT_BLOCK, null_mut(), null_mut())
    );
    chk!(
        c,
        f,
        BAD,
        "NULL ppFunctionList",
        C_GetFunctionList(null_mut())
    );
    c.rv(
        "C_GetInterfaceList NULL pulCount",
        unsafe { (b.get_interface_list)(null_mut(), null_mut()) },
        BAD,
    );
    c.rv(
        "C_GetInterface NULL ppInterface",
        unsafe { (b.get_interface)(INTERFACE_NAME.as_ptr() as *mut _, null_mut(), null_mut(), 0) },
        BAD,
    );

    // With the operation active.
    let h = op_session(b, &x, |h| call!(f, C_FindObjectsInit(h, null_mut(), 0)));
    chk!(
        c,
        f,
        BAD,
        "NULL phObject",
        C_FindObjects(h, null_mut(), 1, &mut n)
    );
    chk!(
        c,
        f,
        BAD,
        "NULL pulObjectCount",
        C_FindObjects(h, list.as_mut_ptr(), 1, null_mut())
    );
    chk!(c, f, CKR_OK, "after the bad calls", C_FindObjectsFinal(h));
    close(b, h);

    let h = op_session(b, &x, |h| call!(f, C_SignInit(h, &mut ecdsa, x.ec_priv)));
    chk!(
        c,
        f,
        BAD,
        "NULL pulSignatureLen",
        C_Sign(h, dp, 32, bp, null_mut())
    );
    close(b, h);
    let h = op_session(b, &x, |h| {
        call!(f, C_SignInit(h, &mut mech(CKM_SHA256_RSA_PKCS), x.rsa_priv))
    });
    chk!(c, f, CKR_OK, "", C_SignUpdate(h, dp, 32));
    chk!(
        c,
        f,
        BAD,
        "NULL pulSignatureLen",
        C_SignFinal(h, bp, null_mut())
    );
    close(b, h);
    let h = op_session(b, &x, |h| call!(f, C_DigestInit(h, &mut sha)));
    chk!(
        c,
        f,
        BAD,
        "NULL pulDigestLen",
        C_Digest(h, dp, 32, bp, null_mut())
    );
    close(b, h);
    let h = op_session(b, &x, |h| call!(f, C_DigestInit(h, &mut sha)));
    chk!(
        c,
        f,
        BAD,
        "NULL pulDigestLen",
        C_DigestFinal(h, bp, null_mut())
    );
    close(b, h);
    let h = op_session(b, &x, |h| call!(f, C_EncryptInit(h, &mut ecb, x.aes)));
    chk!(
        c,
        f,
        BAD,
        "NULL pulEncryptedDataLen",
        C_Encrypt(h, dp, 16, bp, null_mut())
    );
    close(b, h);
    let h = op_session(b, &x, |h| call!(f, C_EncryptInit(h, &mut ecb, x.aes)));
    chk!(
        c,
        f,
        BAD,
        "NULL pulEncryptedPartLen",
        C_EncryptUpdate(h, dp, 16, bp, null_mut())
    );
    close(b, h);
    let h = op_session(b, &x, |h| call!(f, C_DecryptInit(h, &mut ecb, x.aes)));
    chk!(
        c,
        f,
        BAD,
        "NULL pulDataLen",
        C_Decrypt(h, dp, 16, bp, null_mut())
    );
    close(b, h);
}

// ------------------------------------------------------------------------------------------------ NULL inputs

fn null_inputs(c: &mut Checks, b: &'static Bridge) {
    let x = fixture(b);
    let (f, f3) = (b.f, b.f3);
    let s = x.s;
    let data = [7u8; 64];
    let dp = data.as_ptr() as *mut u8;
    let mut buf = [0u8; 512];
    let bp = buf.as_mut_ptr();
    let mut len: CK_ULONG = 512;
    let lp: *mut CK_ULONG = &mut len;
    let mut o: CK_OBJECT_HANDLE = 0;
    let mut ecdsa = mech(CKM_ECDSA);
    let mut sha = mech(CKM_SHA256);
    let mut ecb = mech(CKM_AES_ECB);
    let pin = tgt().pin;
    let nul = "NULL data with a length";

    let h = op_session(b, &x, |h| call!(f, C_SignInit(h, &mut ecdsa, x.ec_priv)));
    chk!(c, f, BAD, nul, C_Sign(h, null_mut(), 32, bp, lp));
    close(b, h);
    let h = op_session(b, &x, |h| {
        call!(f, C_SignInit(h, &mut mech(CKM_SHA256_RSA_PKCS), x.rsa_priv))
    });
    chk!(c, f, BAD, nul, C_SignUpdate(h, null_mut(), 5));
    close(b, h);
    let h = op_session(b, &x, |h| call!(f, C_VerifyInit(h, &mut ecdsa, x.ec_pub)));
    chk!(c, f, BAD, nul, C_Verify(h, null_mut(), 32, dp, 64));
    close(b, h);
    let h = op_session(b, &x, |h| call!(f, C_VerifyInit(h, &mut ecdsa, x.ec_pub)));
    chk!(
        c,
        f,
        BAD,
        "NULL signature with a length",
        C_Verify(h, dp, 32, null_mut(), 64)
    );
    close(b, h);
    let h = op_session(b, &x, |h| {
        call!(
            f,
            C_VerifyInit(h, &mut mech(CKM_SHA256_RSA_PKCS), x.rsa_pub)
        )
    });
    chk!(c, f, BAD, nul, C_VerifyUpdate(h, null_mut(), 5));
    close(b, h);
    let h = op_session(b, &x, |h| {
        call!(
            f,
            C_VerifyInit(h, &mut mech(CKM_SHA256_RSA_PKCS), x.rsa_pub)
        )
    });
    chk!(
        c,
        f,
        BAD,
        "NULL signature with a length",
        C_VerifyFinal(h, null_mut(), 64)
    );
    close(b, h);
    let h = op_session(b, &x, |h| call!(f, C_DigestInit(h, &mut sha)));
    chk!(c, f, BAD, nul, C_Digest(h, null_mut(), 5, bp, lp));
    close(b, h);
    let h = op_session(b, &x, |h| call!(f, C_DigestInit(h, &mut sha)));
    chk!(c, f, BAD, nul, C_DigestUpdate(h, null_mut(), 5));
    close(b, h);
    let h = op_session(b, &x, |h| call!(f, C_EncryptInit(h, &mut ecb, x.aes)));
    chk!(c, f, BAD, nul, C_Encrypt(h, null_mut(), 16, bp, lp));
    close(b, h);
    let h = op_session(b, &x, |h| call!(f, C_EncryptInit(h, &mut ecb, x.aes)));
    chk!(c, f, BAD, nul, C_EncryptUpdate(h, null_mut(), 16, bp, lp));
    close(b, h);
    let h = op_session(b, &x, |h| call!(f, C_DecryptInit(h, &mut ecb, x.aes)));
    chk!(c, f, BAD, nul, C_Decrypt(h, null_mut(), 16, bp, lp));
    close(b, h);
    let h = op_session(b, &x, |h| call!(f, C_DecryptInit(h, &mut ecb, x.aes)));
    chk!(c, f, BAD, nul, C_DecryptUpdate(h, null_mut(), 16, bp, lp));
    close(b, h);

    let mut p = CK_MECHANISM {
        mechanism: CKM_ECDSA,
        pParameter: null_mut(),
        ulParameterLen: 8,
    };
    chk!(
        c,
        f,
        BAD,
        "NULL mechanism parameter with a length",
        C_SignInit(s, &mut p, x.ec_priv)
    );
    chk!(
        c,
        f,
        BAD,
        "NULL template with a count",
        C_FindObjectsInit(s, null_mut(), 2)
    );
    chk!(
        c,
        f,
        BAD,
        "NULL template with a count",
        C_GetAttributeValue(s, x.ec_pub, null_mut(), 2)
    );
    chk!(
        c,
        f,
        BAD,
        "NULL template with a count",
        C_SetAttributeValue(s, x.ec_pub, null_mut(), 1)
    );
    chk!(
        c,
        f,
        BAD,
        "NULL template with a count",
        C_CreateObject(s, null_mut(), 2, &mut o)
    );
    let mut gen = mech(CKM_AES_KEY_GEN);
    chk!(
        c,
        f,
        BAD,
        "NULL template with a count",
        C_GenerateKey(s, &mut gen, null_mut(), 3, &mut o)
    );
    chk!(
        c,
        f,
        BAD,
        "NULL pMechanism",
        C_GenerateKey(s, null_mut(), null_mut(), 0, &mut o)
    );
    chk!(c, f, BAD, nul, C_SeedRandom(s, null_mut(), 8));
    chk!(c, f, BAD, nul, C_SetOperationState(s, null_mut(), 10, 0, 0));
    chk!(
        c,
        f,
        BAD,
        nul,
        C_UnwrapKey(s, &mut ecb, x.aes, null_mut(), 40, null_mut(), 0, &mut o)
    );
    // No protected authentication path on the unified token: a NULL PIN is bad.
    let h = b.open(x.u, RO).unwrap();
    chk!(
        c,
        f,
        BAD,
        "NULL PIN (no protected authentication path)",
        C_Login(h, CKU_USER, null_mut(), 4)
    );
    chk!(
        c,
        f3,
        BAD,
        "NULL username with a length",
        C_LoginUser(
            h,
            CKU_USER,
            pin.as_ptr() as *mut _,
            pin.len() as CK_ULONG,
            null_mut(),
            4
        )
    );
    close(b, h);
}

// ------------------------------------------------------------------------------------------------ huge lengths

fn huge_lengths(c: &mut Checks, b: &'static Bridge) {
    let x = fixture(b);
    let f = b.f;
    let s = x.s;
    let data = [7u8; 64];
    let dp = data.as_ptr() as *mut u8;
    let mut buf = [0u8; 512];
    let bp = buf.as_mut_ptr();
    let mut len: CK_ULONG = 512;
    let lp: *mut CK_ULONG = &mut len;
    let mut o: CK_OBJECT_HANDLE = 0;
    let mut ecdsa = mech(CKM_ECDSA);
    let mut sha = mech(CKM_SHA256);
    let mut ecb = mech(CKM_AES_ECB);
    let mut class = CKO_DATA;
    let mut t = [attr(CKA_CLASS, &mut class)];
    let tp = t.as_mut_ptr();
    let pin = b"1234".as_ptr() as *mut u8;

    for l in HUGE {
        let w = format!("length {l:#x}");
        let w = w.as_str();
        let h = op_session(b, &x, |h| call!(f, C_SignInit(h, &mut ecdsa, x.ec_priv)));
        chk!(c, f, BAD, w, C_Sign(h, dp, l, bp, lp));
        close(b, h);
        let h = op_session(b, &x, |h| {
            call!(f, C_SignInit(h, &mut mech(CKM_SHA256_RSA_PKCS), x.rsa_priv))
        });
        chk!(c, f, BAD, w, C_SignUpdate(h, dp, l));
        close(b, h);
        let h = op_session(b, &x, |h| call!(f, C_VerifyInit(h, &mut ecdsa, x.ec_pub)));
        chk!(c, f, BAD, w, C_Verify(h, dp, l, dp, 64));
        close(b, h);
        let h = op_session(b, &x, |h| call!(f, C_VerifyInit(h, &mut ecdsa, x.ec_pub)));
        chk!(
            c,
            f,
            BAD,
            &format!("signature {w}"),
            C_Verify(h, dp, 32, dp, l)
        );
        close(b, h);
        let h = op_session(b, &x, |h| {
            call!(
                f,
                C_VerifyInit(h, &mut mech(CKM_SHA256_RSA_PKCS), x.rsa_pub)
            )
        });
        chk!(c, f, BAD, w, C_VerifyFinal(h, dp, l));
        close(b, h);
        let h = op_session(b, &x, |h| call!(f, C_DigestInit(h, &mut sha)));
        chk!(c, f, BAD, w, C_Digest(h, dp, l, bp, lp));
        close(b, h);
        let h = op_session(b, &x, |h| call!(f, C_DigestInit(h, &mut sha)));
        chk!(c, f, BAD, w, C_DigestUpdate(h, dp, l));
        close(b, h);
        let h = op_session(b, &x, |h| call!(f, C_EncryptInit(h, &mut ecb, x.aes)));
        chk!(c, f, BAD, w, C_Encrypt(h, dp, l, bp, lp));
        close(b, h);
        let h = op_session(b, &x, |h| call!(f, C_DecryptInit(h, &mut ecb, x.aes)));
        chk!(c, f, BAD, w, C_DecryptUpdate(h, dp, l, bp, lp));
        close(b, h);

        chk!(c, f, BAD, &format!("PIN {w}"), C_Login(s, CKU_USER, pin, l));
        chk!(c, f, BAD, &format!("PIN {w}"), C_SetPIN(s, pin, l, pin, 4));
        chk!(c, f, BAD, &format!("PIN {w}"), C_InitPIN(s, pin, l));
        chk!(
            c,
            f,
            BAD,
            &format!("count {w}"),
            C_FindObjectsInit(s, tp, l)
        );
        chk!(
            c,
            f,
            BAD,
            &format!("count {w}"),
            C_GetAttributeValue(s, x.ec_pub, tp, l)
        );
        chk!(
            c,
            f,
            BAD,
            &format!("count {w}"),
            C_SetAttributeValue(s, x.ec_pub, tp, l)
        );
        chk!(
            c,
            f,
            BAD,
            &format!("count {w}"),
            C_CreateObject(s, tp, l, &mut o)
        );
        chk!(c, f, BAD, w, C_GenerateRandom(s, bp, l));
        chk!(c, f, BAD, w, C_SeedRandom(s, dp, l));
        chk!(c, f, BAD, w, C_SetOperationState(s, dp, l, 0, 0));
        chk!(
            c,
            f,
            BAD,
            w,
            C_UnwrapKey(s, &mut ecb, x.aes, dp, l, null_mut(), 0, &mut o)
        );

        // Lengths inside structures, which the module hands on to its upstream: the spec has no single code, any
        // error will do but a crash. Each runs in a child process, so that a crash is one failed case.
        for (case, want) in STRUCTURE_CASES {
            let what = format!("{case} {w}");
            // May kill a module (SoftHSM exits on some): the runner re-runs the section skipping it.
            let rv = if c.before_call(&what) {
                structure_case(b, &x, case, l)
            } else {
                DIED
            };
            c.any(&what, rv, want);
        }
    }
    // Still alive and working.
    let sig = b.ecdsa_sign(s, x.ec_priv, &[1u8; 32]);
    c.that(
        "C_Sign after the huge lengths",
        sig.is_ok(),
        format!("{sig:?}"),
    );
}

/// Lengths inside structures (mechanism parameters, attribute values) and what may be answered.
const STRUCTURE_CASES: [(&str, &[CK_RV]); 5] = [
    (
        "C_SignInit mechanism parameter",
        &[BAD, CKR_MECHANISM_PARAM_INVALID],
    ),
    (
        "C_FindObjectsInit attribute value",
        &[BAD, CKR_ATTRIBUTE_VALUE_INVALID],
    ),
    (
        "C_CreateObject attribute value",
        &[BAD, CKR_ATTRIBUTE_VALUE_INVALID],
    ),
    (
        "C_SetAttributeValue attribute value",
        &[BAD, CKR_ATTRIBUTE_VALUE_INVALID],
    ),
    (
        "C_GenerateKey template attribute value",
        &[BAD, CKR_ATTRIBUTE_VALUE_INVALID],
    ),
];

/// One of [`STRUCTURE_CASES`] with length `l`.
fn structure_case(b: &Bridge, x: &Fixture, case: &str, l: CK_ULONG) -> CK_RV {
    let f = b.f;
    let s = x.s;
    let data = [7u8; 64];
    let dp = data.as_ptr() as *mut c_void;
    let mut o: CK_OBJECT_HANDLE = 0;
    let huge = |t| CK_ATTRIBUTE {
        type_: t,
        pValue: dp,
        ulValueLen: l,
    };
    match case {
        "C_SignInit mechanism parameter" => {
            let mut p = CK_MECHANISM {
                mechanism: CKM_ECDSA,
                pParameter: dp,
                ulParameterLen: l,
            };
            call!(f, C_SignInit(s, &mut p, x.ec_priv))
        }
        "C_FindObjectsInit attribute value" => {
            let mut a = [huge(CKA_LABEL)];
            call!(f, C_FindObjectsInit(s, a.as_mut_ptr(), 1))
        }
        "C_CreateObject attribute value" => {
            let mut class = CKO_DATA;
            let mut a = [attr(CKA_CLASS, &mut class), huge(CKA_VALUE)];
            call!(f, C_CreateObject(s, a.as_mut_ptr(), 2, &mut o))
        }
        "C_SetAttributeValue attribute value" => {
            // On a session object of its own.
            let mut class = CKO_DATA;
            let mut a = [attr(CKA_CLASS, &mut class)];
            assert_eq!(
                call!(f, C_CreateObject(s, a.as_mut_ptr(), 1, &mut o)),
                CKR_OK
            );
            let mut a = [huge(CKA_LABEL)];
            call!(f, C_SetAttributeValue(s, o, a.as_mut_ptr(), 1))
        }
        "C_GenerateKey template attribute value" => {
            let mut len: CK_ULONG = 32;
            let mut a = [attr(CKA_VALUE_LEN, &mut len), huge(CKA_LABEL)];
            let mut m = mech(CKM_AES_KEY_GEN);
            call!(f, C_GenerateKey(s, &mut m, a.as_mut_ptr(), 2, &mut o))
        }
        other => panic!("unknown case {other}"),
    }
}

// ------------------------------------------------------------------------------------------------ invalid slots

fn invalid_slots(c: &mut Checks, b: &'static Bridge) {
    let f = b.f;
    let mut n: CK_ULONG = 0;
    chk!(
        c,
        f,
        CKR_OK,
        "all slots",
        C_GetSlotList(CK_FALSE, null_mut(), &mut n)
    );
    let mut si: CK_SLOT_INFO = zeroed();
    let mut ti: CK_TOKEN_INFO = zeroed();
    let mut mi: CK_MECHANISM_INFO = zeroed();
    let mut list = [0 as CK_ULONG; 256];
    let mut h: CK_SESSION_HANDLE = 0;
    let pin = b"12345678".as_ptr() as *mut u8;
    let mut label = [b' '; 32];
    let w = CKR_SLOT_ID_INVALID;
    for id in [n, 999, 0xdead_beef, CK_ULONG::MAX] {
        let case = if id == n {
            "slot <slot count>".to_string()
        } else {
            format!("slot {id:#x}")
        };
        let case = case.as_str();
        chk!(c, f, w, case, C_GetSlotInfo(id, &mut si));
        chk!(c, f, w, case, C_GetTokenInfo(id, &mut ti));
        let mut m: CK_ULONG = 256;
        chk!(
            c,
            f,
            w,
            case,
            C_GetMechanismList(id, list.as_mut_ptr(), &mut m)
        );
        chk!(c, f, w, case, C_GetMechanismList(id, null_mut(), &mut m));
        chk!(c, f, w, case, C_GetMechanismInfo(id, CKM_ECDSA, &mut mi));
        chk!(
            c,
            f,
            w,
            case,
            C_OpenSession(id, RW, null_mut(), None, &mut h)
        );
        chk!(
            c,
            f,
            w,
            case,
            C_OpenSession(id, RO, null_mut(), None, &mut h)
        );
        chk!(c, f, w, case, C_CloseAllSessions(id));
        chk!(c, f, w, case, C_InitToken(id, pin, 8, label.as_mut_ptr()));
    }
}

// ------------------------------------------------------------------------------------------------ invalid sessions

/// Every function that takes a session handle, with otherwise valid arguments, must say
/// `CKR_SESSION_HANDLE_INVALID` for `h`.
fn session_cases(c: &mut Checks, b: &Bridge, x: &Fixture, h: CK_SESSION_HANDLE, what: &str) {
    let (f, f3) = (b.f, b.f3);
    let w = CKR_SESSION_HANDLE_INVALID;
    let data = [7u8; 64];
    let dp = data.as_ptr() as *mut u8;
    let mut buf = [0u8; 512];
    let bp = buf.as_mut_ptr();
    let mut len: CK_ULONG = 512;
    let lp: *mut CK_ULONG = &mut len;
    let mut n: CK_ULONG = 0;
    let mut si: CK_SESSION_INFO = zeroed();
    let (mut o1, mut o2): (CK_OBJECT_HANDLE, CK_OBJECT_HANDLE) = (0, 0);
    let mut list = [0 as CK_OBJECT_HANDLE; 8];
    let mut ecdsa = mech(CKM_ECDSA);
    let mut sha = mech(CKM_SHA256);
    let mut ecb = mech(CKM_AES_ECB);
    let mut gen = mech(CKM_AES_KEY_GEN);
    let mut kpgen = mech(CKM_EC_KEY_PAIR_GEN);
    let mut class = CKO_DATA;
    let mut t = [attr(CKA_CLASS, &mut class)];
    let tp = t.as_mut_ptr();
    let mut label = *b"x";
    let mut lt = [CK_ATTRIBUTE {
        type_: CKA_LABEL,
        pValue: label.as_mut_ptr() as *mut c_void,
        ulValueLen: 1,
    }];
    let pin = tgt().pin;
    let (pp, pl) = (pin.as_ptr() as *mut u8, pin.len() as CK_ULONG);

    chk!(c, f, w, what, C_GetSessionInfo(h, &mut si));
    chk!(c, f, w, what, C_Login(h, CKU_USER, pp, pl));
    chk!(c, f, w, what, C_Logout(h));
    chk!(c, f, w, what, C_InitPIN(h, pp, pl));
    chk!(c, f, w, what, C_SetPIN(h, pp, pl, pp, pl));
    chk!(c, f, w, what, C_GetOperationState(h, bp, lp));
    chk!(c, f, w, what, C_SetOperationState(h, dp, 32, 0, 0));
    chk!(c, f, w, what, C_CreateObject(h, tp, 1, &mut o1));
    chk!(
        c,
        f,
        w,
        what,
        C_CopyObject(h, x.ec_pub, null_mut(), 0, &mut o1)
    );
    chk!(c, f, w, what, C_DestroyObject(h, x.ec_pub));
    chk!(c, f, w, what, C_GetObjectSize(h, x.ec_pub, &mut n));
    chk!(
        c,
        f,
        w,
        what,
        C_GetAttributeValue(h, x.ec_pub, lt.as_mut_ptr(), 1)
    );
    chk!(
        c,
        f,
        w,
        what,
        C_SetAttributeValue(h, x.ec_pub, lt.as_mut_ptr(), 1)
    );
    chk!(c, f, w, what, C_FindObjectsInit(h, tp, 1));
    chk!(
        c,
        f,
        w,
        what,
        C_FindObjects(h, list.as_mut_ptr(), 8, &mut n)
    );
    chk!(c, f, w, what, C_FindObjectsFinal(h));
    chk!(c, f, w, what, C_EncryptInit(h, &mut ecb, x.aes));
    chk!(c, f, w, what, C_Encrypt(h, dp, 16, bp, lp));
    chk!(c, f, w, what, C_EncryptUpdate(h, dp, 16, bp, lp));
    chk!(c, f, w, what, C_EncryptFinal(h, bp, lp));
    chk!(c, f, w, what, C_DecryptInit(h, &mut ecb, x.aes));
    chk!(c, f, w, what, C_Decrypt(h, dp, 16, bp, lp));
    chk!(c, f, w, what, C_DecryptUpdate(h, dp, 16, bp, lp));
    chk!(c, f, w, what, C_DecryptFinal(h, bp, lp));
    chk!(c, f, w, what, C_DigestInit(h, &mut sha));
    chk!(c, f, w, what, C_Digest(h, dp, 32, bp, lp));
    chk!(c, f, w, what, C_DigestUpdate(h, dp, 32));
    chk!(c, f, w, what, C_DigestKey(h, x.aes));
    chk!(c, f, w, what, C_DigestFinal(h, bp, lp));
    chk!(c, f, w, what, C_SignInit(h, &mut ecdsa, x.ec_priv));
    chk!(c, f, w, what, C_Sign(h, dp, 32, bp, lp));
    chk!(c, f, w, what, C_SignUpdate(h, dp, 32));
    chk!(c, f, w, what, C_SignFinal(h, bp, lp));
    chk!(c, f, w, what, C_SignRecoverInit(h, &mut ecdsa, x.ec_priv));
    chk!(c, f, w, what, C_SignRecover(h, dp, 32, bp, lp));
    chk!(c, f, w, what, C_VerifyInit(h, &mut ecdsa, x.ec_pub));
    chk!(c, f, w, what, C_Verify(h, dp, 32, dp, 64));
    chk!(c, f, w, what, C_VerifyUpdate(h, dp, 32));
    chk!(c, f, w, what, C_VerifyFinal(h, dp, 64));
    chk!(c, f, w, what, C_VerifyRecoverInit(h, &mut ecdsa, x.ec_pub));
    chk!(c, f, w, what, C_VerifyRecover(h, dp, 64, bp, lp));
    chk!(c, f, w, what, C_DigestEncryptUpdate(h, dp, 16, bp, lp));
    chk!(c, f, w, what, C_DecryptDigestUpdate(h, dp, 16, bp, lp));
    chk!(c, f, w, what, C_SignEncryptUpdate(h, dp, 16, bp, lp));
    chk!(c, f, w, what, C_DecryptVerifyUpdate(h, dp, 16, bp, lp));
    chk!(
        c,
        f,
        w,
        what,
        C_GenerateKey(h, &mut gen, null_mut(), 0, &mut o1)
    );
    chk!(
        c,
        f,
        w,
        what,
        C_GenerateKeyPair(
            h,
            &mut kpgen,
            null_mut(),
            0,
            null_mut(),
            0,
            &mut o1,
            &mut o2
        )
    );
    chk!(c, f, w, what, C_WrapKey(h, &mut ecb, x.aes, x.aes, bp, lp));
    chk!(
        c,
        f,
        w,
        what,
        C_UnwrapKey(h, &mut ecb, x.aes, dp, 32, null_mut(), 0, &mut o1)
    );
    chk!(
        c,
        f,
        w,
        what,
        C_DeriveKey(h, &mut sha, x.ec_priv, null_mut(), 0, &mut o1)
    );
    chk!(c, f, w, what, C_SeedRandom(h, dp, 32));
    chk!(c, f, w, what, C_GenerateRandom(h, bp, 16));
    chk!(c, f, w, what, C_GetFunctionStatus(h));
    chk!(c, f, w, what, C_CancelFunction(h));
    chk!(c, f3, w, what, C_LoginUser(h, CKU_USER, pp, pl, pp, pl));
    chk!(c, f3, w, what, C_SessionCancel(h, CKF_SIGN));
    chk!(c, f, w, what, C_CloseSession(h));
}

fn invalid_sessions(c: &mut Checks, b: &'static Bridge) {
    let x = fixture(b);
    session_cases(c, b, &x, 0, "session 0 (CK_INVALID_HANDLE)");
    session_cases(c, b, &x, 0xdead_beef, "session 0xdeadbeef");
    session_cases(c, b, &x, CK_ULONG::MAX, "session CK_ULONG max");
    let closed = b.open(x.u, RW).unwrap();
    close(b, closed);
    session_cases(c, b, &x, closed, "closed session (unified)");
    let closed = b.open(x.mirror, RO).unwrap();
    close(b, closed);
    session_cases(c, b, &x, closed, "closed session (mirror)");
    // C_CloseAllSessions closes them all.
    let h1 = b.open(x.u, RO).unwrap();
    let h2 = b.open(x.u, RW).unwrap();
    chk!(c, b.f, CKR_OK, "unified slot", C_CloseAllSessions(x.u));
    for h in [h1, h2, x.s] {
        let mut si: CK_SESSION_INFO = zeroed();
        chk!(
            c,
            b.f,
            CKR_SESSION_HANDLE_INVALID,
            "after C_CloseAllSessions",
            C_GetSessionInfo(h, &mut si)
        );
    }
    // The last session closed logs the token out.
    let h = b.open(x.u, RO).unwrap();
    let mut si: CK_SESSION_INFO = zeroed();
    chk!(c, b.f, CKR_OK, "", C_GetSessionInfo(h, &mut si));
    c.that(
        "a new session after C_CloseAllSessions is public",
        si.state == CKS_RO_PUBLIC_SESSION,
        format!("state {}", si.state),
    );
}

// ------------------------------------------------------------------------------------------------ invalid objects

fn object_cases(
    c: &mut Checks,
    b: &Bridge,
    s: CK_SESSION_HANDLE,
    aes: CK_OBJECT_HANDLE,
    o: CK_OBJECT_HANDLE,
    what: &str,
) {
    let f = b.f;
    let (wo, wk) = (CKR_OBJECT_HANDLE_INVALID, CKR_KEY_HANDLE_INVALID);
    let data = [7u8; 64];
    let dp = data.as_ptr() as *mut u8;
    let mut buf = [0u8; 512];
    let bp = buf.as_mut_ptr();
    let mut len: CK_ULONG = 512;
    let lp: *mut CK_ULONG = &mut len;
    let mut n: CK_ULONG = 0;
    let mut new: CK_OBJECT_HANDLE = 0;
    let mut ecdsa = mech(CKM_ECDSA);
    let mut sha = mech(CKM_SHA256);
    let mut ecb = mech(CKM_AES_ECB);
    let mut rsa = mech(CKM_RSA_PKCS);
    let mut v = [0u8; 64];
    let mut t = [CK_ATTRIBUTE {
        type_: CKA_LABEL,
        pValue: v.as_mut_ptr() as *mut c_void,
        ulValueLen: 64,
    }];
    let tp = t.as_mut_ptr();
    chk!(c, f, wo, what, C_GetAttributeValue(s, o, tp, 1));
    unsafe { (*tp).ulValueLen = 1 };
    chk!(c, f, wo, what, C_SetAttributeValue(s, o, tp, 1));
    chk!(c, f, wo, what, C_GetObjectSize(s, o, &mut n));
    chk!(c, f, wo, what, C_CopyObject(s, o, null_mut(), 0, &mut new));
    chk!(c, f, wo, what, C_DestroyObject(s, o));
    chk!(c, f, wk, what, C_SignInit(s, &mut ecdsa, o));
    chk!(c, f, wk, what, C_VerifyInit(s, &mut ecdsa, o));
    chk!(c, f, wk, what, C_EncryptInit(s, &mut ecb, o));
    chk!(c, f, wk, what, C_DecryptInit(s, &mut ecb, o));
    chk!(c, f, wk, what, C_SignRecoverInit(s, &mut rsa, o));
    chk!(c, f, wk, what, C_VerifyRecoverInit(s, &mut rsa, o));
    chk!(
        c,
        f,
        CKR_WRAPPING_KEY_HANDLE_INVALID,
        what,
        C_WrapKey(s, &mut ecb, o, aes, bp, lp)
    );
    chk!(
        c,
        f,
        wk,
        &format!("{what} (key to wrap)"),
        C_WrapKey(s, &mut ecb, aes, o, bp, lp)
    );
    chk!(
        c,
        f,
        CKR_UNWRAPPING_KEY_HANDLE_INVALID,
        what,
        C_UnwrapKey(s, &mut ecb, o, dp, 32, null_mut(), 0, &mut new)
    );
    chk!(
        c,
        f,
        wk,
        what,
        C_DeriveKey(s, &mut sha, o, null_mut(), 0, &mut new)
    );
    c.rv(
        &format!("C_DigestInit {what} (set-up)"),
        call!(f, C_DigestInit(s, &mut sha)),
        CKR_OK,
    );
    chk!(
        c,
        f,
        wk,
        &format!("{what} (digest active)"),
        C_DigestKey(s, o)
    );
    // End the digest whatever C_DigestKey did to it.
    let _ = call!(f, C_DigestInit(s, null_mut()));
}

fn invalid_objects(c: &mut Checks, b: &'static Bridge) {
    let x = fixture(b);
    for o in [0, 0xdead_beef, CK_ULONG::MAX] {
        object_cases(c, b, x.s, x.aes, o, &format!("unified, object {o:#x}"));
    }
    // A handle of another slot is no handle here: unified handles are the bridge's own.
    if !tgt().is_bridge {
        return;
    }
    let m = b.open(x.mirror, RW).unwrap();
    // The unified login already logged the upstream token in (same backend).
    let rv = b.login(m, CKU_USER, tgt().mirror_pin);
    assert!(
        rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN,
        "{}",
        rv_name(rv)
    );
    let m_aes = b.find_one(m, CKO_SECRET_KEY, "aes-256");
    object_cases(c, b, m, m_aes, 0, "mirror, object 0");
    // Other handles of a mirror go to the upstream unchanged. SoftHSM 2.6 says CKR_OBJECT_HANDLE_INVALID even from
    // C_SignInit (where the spec names CKR_KEY_HANDLE_INVALID): its answer is passed through.
    let mut ecdsa = mech(CKM_ECDSA);
    let got = call!(b.f, C_SignInit(m, &mut ecdsa, 0xdead_beef));
    c.any(
        "C_SignInit mirror, key 0xdeadbeef (the upstream's answer)",
        got,
        &[CKR_KEY_HANDLE_INVALID, CKR_OBJECT_HANDLE_INVALID],
    );
    close(b, m);
}

// ------------------------------------------------------------------------------------------------ operation state

fn operation_state(c: &mut Checks, b: &'static Bridge) {
    let x = fixture(b);
    let (f, f3) = (b.f, b.f3);
    let data = [7u8; 64];
    let dp = data.as_ptr() as *mut u8;
    let mut buf = [0u8; 512];
    let bp = buf.as_mut_ptr();
    let mut len: CK_ULONG = 512;
    let mut list = [0 as CK_OBJECT_HANDLE; 8];
    let mut n: CK_ULONG = 0;
    let mut ecdsa = mech(CKM_ECDSA);
    let mut sha = mech(CKM_SHA256);
    let mut ecb = mech(CKM_AES_ECB);
    let w = CKR_OPERATION_NOT_INITIALIZED;
    let s = b.open(x.u, RW).unwrap();
    let ni = "without Init";
    chk!(c, f, w, ni, C_Sign(s, dp, 32, bp, &mut len));
    chk!(c, f, w, ni, C_SignUpdate(s, dp, 32));
    chk!(c, f, w, ni, C_SignFinal(s, bp, &mut len));
    chk!(c, f, w, ni, C_SignRecover(s, dp, 32, bp, &mut len));
    chk!(c, f, w, ni, C_Verify(s, dp, 32, dp, 64));
    chk!(c, f, w, ni, C_VerifyUpdate(s, dp, 32));
    chk!(c, f, w, ni, C_VerifyFinal(s, dp, 64));
    chk!(c, f, w, ni, C_VerifyRecover(s, dp, 64, bp, &mut len));
    chk!(c, f, w, ni, C_Encrypt(s, dp, 16, bp, &mut len));
    chk!(c, f, w, ni, C_EncryptUpdate(s, dp, 16, bp, &mut len));
    chk!(c, f, w, ni, C_EncryptFinal(s, bp, &mut len));
    chk!(c, f, w, ni, C_Decrypt(s, dp, 16, bp, &mut len));
    chk!(c, f, w, ni, C_DecryptUpdate(s, dp, 16, bp, &mut len));
    chk!(c, f, w, ni, C_DecryptFinal(s, bp, &mut len));
    chk!(c, f, w, ni, C_Digest(s, dp, 32, bp, &mut len));
    chk!(c, f, w, ni, C_DigestUpdate(s, dp, 32));
    chk!(c, f, w, ni, C_DigestKey(s, x.aes));
    chk!(c, f, w, ni, C_DigestFinal(s, bp, &mut len));
    chk!(c, f, w, ni, C_DigestEncryptUpdate(s, dp, 16, bp, &mut len));
    chk!(c, f, w, ni, C_DecryptDigestUpdate(s, dp, 16, bp, &mut len));
    chk!(c, f, w, ni, C_SignEncryptUpdate(s, dp, 16, bp, &mut len));
    chk!(c, f, w, ni, C_DecryptVerifyUpdate(s, dp, 16, bp, &mut len));
    chk!(c, f, w, ni, C_FindObjects(s, list.as_mut_ptr(), 8, &mut n));
    chk!(c, f, w, ni, C_FindObjectsFinal(s));

    // Init twice: the second says OPERATION_ACTIVE and the first goes on.
    let act = CKR_OPERATION_ACTIVE;
    chk!(c, f, CKR_OK, "", C_SignInit(s, &mut ecdsa, x.ec_priv));
    chk!(c, f, act, "twice", C_SignInit(s, &mut ecdsa, x.ec_priv));
    len = 512;
    chk!(
        c,
        f,
        CKR_OK,
        "after OPERATION_ACTIVE",
        C_Sign(s, dp, 32, bp, &mut len)
    );
    let sig = buf[..len as usize].to_vec();
    chk!(c, f, CKR_OK, "", C_VerifyInit(s, &mut ecdsa, x.ec_pub));
    chk!(c, f, act, "twice", C_VerifyInit(s, &mut ecdsa, x.ec_pub));
    chk!(
        c,
        f,
        CKR_OK,
        "after OPERATION_ACTIVE",
        C_Verify(s, dp, 32, sig.as_ptr() as *mut u8, sig.len() as CK_ULONG)
    );
    chk!(c, f, CKR_OK, "", C_DigestInit(s, &mut sha));
    chk!(c, f, act, "twice", C_DigestInit(s, &mut sha));
    len = 512;
    chk!(
        c,
        f,
        CKR_OK,
        "after OPERATION_ACTIVE",
        C_Digest(s, dp, 32, bp, &mut len)
    );
    chk!(c, f, CKR_OK, "", C_EncryptInit(s, &mut ecb, x.aes));
    chk!(c, f, act, "twice", C_EncryptInit(s, &mut ecb, x.aes));
    len = 512;
    chk!(
        c,
        f,
        CKR_OK,
        "after OPERATION_ACTIVE",
        C_Encrypt(s, dp, 16, bp, &mut len)
    );
    chk!(c, f, CKR_OK, "", C_DecryptInit(s, &mut ecb, x.aes));
    chk!(c, f, act, "twice", C_DecryptInit(s, &mut ecb, x.aes));
    len = 512;
    chk!(
        c,
        f,
        CKR_OK,
        "after OPERATION_ACTIVE",
        C_Decrypt(s, dp, 16, bp, &mut len)
    );
    chk!(c, f, CKR_OK, "", C_FindObjectsInit(s, null_mut(), 0));
    chk!(c, f, act, "twice", C_FindObjectsInit(s, null_mut(), 0));
    chk!(
        c,
        f,
        CKR_OK,
        "after OPERATION_ACTIVE",
        C_FindObjects(s, list.as_mut_ptr(), 8, &mut n)
    );
    c.that("C_FindObjects finds objects", n > 0, "none");
    chk!(c, f, CKR_OK, "", C_FindObjectsFinal(s));
    chk!(
        c,
        f,
        w,
        "after C_FindObjectsFinal",
        C_FindObjects(s, list.as_mut_ptr(), 8, &mut n)
    );
    chk!(c, f, w, "twice", C_FindObjectsFinal(s));

    close(b, s);

    // 3.0: Init with a NULL mechanism, or C_SessionCancel, ends the active operation; a new Init then works.
    let sign_init = |h| call!(f, C_SignInit(h, &mut mech(CKM_ECDSA), x.ec_priv));
    let rsa_init = |h| call!(f, C_SignInit(h, &mut mech(CKM_SHA256_RSA_PKCS), x.rsa_priv));
    for (init, what) in [
        (&sign_init as &dyn Fn(_) -> _, "ECDSA"),
        (&rsa_init, "SHA256_RSA_PKCS"),
    ] {
        let h = op_session(b, &x, init);
        chk!(
            c,
            f,
            CKR_OK,
            format!("NULL mechanism cancels {what} (3.0)"),
            C_SignInit(h, null_mut(), 0)
        );
        len = 512;
        chk!(
            c,
            f,
            w,
            format!("after the cancel ({what})"),
            C_Sign(h, dp, 32, bp, &mut len)
        );
        c.rv(
            &format!("C_SignInit after the cancel ({what})"),
            init(h),
            CKR_OK,
        );
        close(b, h);
        let h = op_session(b, &x, init);
        chk!(
            c,
            f3,
            CKR_OK,
            format!("CKF_SIGN ({what})"),
            C_SessionCancel(h, CKF_SIGN)
        );
        len = 512;
        chk!(
            c,
            f,
            w,
            format!("after C_SessionCancel ({what})"),
            C_Sign(h, dp, 32, bp, &mut len)
        );
        c.rv(
            &format!("C_SignInit after C_SessionCancel ({what})"),
            init(h),
            CKR_OK,
        );
        close(b, h);
    }
    let h = op_session(b, &x, |h| call!(f, C_DigestInit(h, &mut sha)));
    chk!(
        c,
        f,
        CKR_OK,
        "NULL mechanism cancels (3.0)",
        C_DigestInit(h, null_mut())
    );
    chk!(c, f, CKR_OK, "after the cancel", C_DigestInit(h, &mut sha));
    close(b, h);

    // [SPEC] C_Sign: "A call to C_Sign always terminates the active signing operation unless it returns
    // CKR_BUFFER_TOO_SMALL or is a successful call (i.e., one which returns CKR_OK) to determine the length of the
    // buffer needed to hold the signature": a C_Sign that returns CKR_ARGUMENTS_BAD ends it too.
    let h = op_session(b, &x, sign_init);
    chk!(
        c,
        f,
        BAD,
        "NULL data with a length",
        C_Sign(h, null_mut(), 32, bp, &mut len)
    );
    len = 512;
    chk!(
        c,
        f,
        w,
        "[SPEC] after a C_Sign that returned CKR_ARGUMENTS_BAD",
        C_Sign(h, dp, 32, bp, &mut len)
    );
    close(b, h);
    let h = op_session(b, &x, sign_init);
    chk!(
        c,
        f,
        BAD,
        "NULL pulSignatureLen",
        C_Sign(h, dp, 32, bp, null_mut())
    );
    len = 512;
    chk!(
        c,
        f,
        w,
        "[SPEC] after a C_Sign that returned CKR_ARGUMENTS_BAD (NULL pulSignatureLen)",
        C_Sign(h, dp, 32, bp, &mut len)
    );
    close(b, h);
}

// ------------------------------------------------------------------------------------------------ two-call

fn two_call(c: &mut Checks, b: &'static Bridge) {
    let x = fixture(b);
    let f = b.f;
    let s = x.s;
    let data = [9u8; 32];
    let dp = data.as_ptr() as *mut u8;
    let mut buf = [0xAAu8; 512];
    let bp = buf.as_mut_ptr();
    let mut ecdsa = mech(CKM_ECDSA);

    // C_Sign, ECDSA P-256 on the unified token.
    chk!(c, f, CKR_OK, "", C_SignInit(s, &mut ecdsa, x.ec_priv));
    let mut len: CK_ULONG = 0;
    chk!(
        c,
        f,
        CKR_OK,
        "NULL pSignature (length query)",
        C_Sign(s, dp, 32, null_mut(), &mut len)
    );
    c.that("C_Sign length query", len == 64, format!("length {len}"));
    len = 10;
    chk!(
        c,
        f,
        CKR_BUFFER_TOO_SMALL,
        "10-byte buffer",
        C_Sign(s, dp, 32, bp, &mut len)
    );
    c.that(
        "C_Sign BUFFER_TOO_SMALL writes the length",
        len == 64,
        format!("length {len}"),
    );
    c.that(
        "C_Sign BUFFER_TOO_SMALL writes nothing past the buffer",
        buf[10..].iter().all(|x| *x == 0xAA),
        "buffer overrun",
    );
    len = 512;
    chk!(
        c,
        f,
        CKR_OK,
        "after the length queries",
        C_Sign(s, dp, 32, bp, &mut len)
    );
    c.that(
        "C_Sign signature length",
        len == 64,
        format!("length {len}"),
    );
    let sig = buf[..len as usize].to_vec();
    len = 512;
    chk!(
        c,
        f,
        CKR_OPERATION_NOT_INITIALIZED,
        "after success",
        C_Sign(s, dp, 32, bp, &mut len)
    );
    c.rv(
        "C_Verify of the two-call signature",
        b.ecdsa_verify(s, x.ec_pub, &data, &sig),
        CKR_OK,
    );

    // C_Digest likewise.
    let mut sha = mech(CKM_SHA256);
    chk!(c, f, CKR_OK, "", C_DigestInit(s, &mut sha));
    len = 0;
    chk!(
        c,
        f,
        CKR_OK,
        "length query",
        C_Digest(s, dp, 32, null_mut(), &mut len)
    );
    c.that("C_Digest length query", len == 32, format!("length {len}"));
    len = 10;
    chk!(
        c,
        f,
        CKR_BUFFER_TOO_SMALL,
        "10-byte buffer",
        C_Digest(s, dp, 32, bp, &mut len)
    );
    c.that(
        "C_Digest BUFFER_TOO_SMALL length",
        len == 32,
        format!("length {len}"),
    );
    len = 512;
    chk!(c, f, CKR_OK, "", C_Digest(s, dp, 32, bp, &mut len));
    len = 512;
    chk!(
        c,
        f,
        CKR_OPERATION_NOT_INITIALIZED,
        "after success",
        C_Digest(s, dp, 32, bp, &mut len)
    );

    // C_GetSlotList.
    let mut n: CK_ULONG = 0;
    chk!(
        c,
        f,
        CKR_OK,
        "NULL list",
        C_GetSlotList(CK_FALSE, null_mut(), &mut n)
    );
    c.next_bridge_only();
    c.that("slot count", n >= 3, format!("{n} slots"));
    let want = n;
    let mut slots = vec![CK_ULONG::MAX; want as usize + 4];
    n = 0;
    chk!(
        c,
        f,
        CKR_BUFFER_TOO_SMALL,
        "count 0",
        C_GetSlotList(CK_FALSE, slots.as_mut_ptr(), &mut n)
    );
    c.that(
        "C_GetSlotList BUFFER_TOO_SMALL count",
        n == want,
        format!("{n}"),
    );
    n = want - 1;
    chk!(
        c,
        f,
        CKR_BUFFER_TOO_SMALL,
        "count - 1",
        C_GetSlotList(CK_FALSE, slots.as_mut_ptr(), &mut n)
    );
    c.that(
        "C_GetSlotList BUFFER_TOO_SMALL count",
        n == want,
        format!("{n}"),
    );
    n = want + 4;
    chk!(
        c,
        f,
        CKR_OK,
        "larger buffer",
        C_GetSlotList(CK_FALSE, slots.as_mut_ptr(), &mut n)
    );
    c.that("C_GetSlotList count", n == want, format!("{n}"));
    c.that(
        "C_GetSlotList lists the unified slot",
        slots[..n as usize].contains(&x.u),
        format!("{slots:?}"),
    );
    c.that(
        "C_GetSlotList writes nothing past the count",
        slots[n as usize..].iter().all(|v| *v == CK_ULONG::MAX),
        format!("{slots:?}"),
    );

    // C_GetMechanismList, unified and mirror.
    for (slot, what) in [(x.u, "unified"), (x.mirror, "mirror")] {
        let mut n: CK_ULONG = 0;
        chk!(
            c,
            f,
            CKR_OK,
            what,
            C_GetMechanismList(slot, null_mut(), &mut n)
        );
        c.that(&format!("{what} mechanism count"), n > 2, format!("{n}"));
        let want = n;
        let mut v = vec![0 as CK_ULONG; want as usize];
        n = 1;
        chk!(
            c,
            f,
            CKR_BUFFER_TOO_SMALL,
            what,
            C_GetMechanismList(slot, v.as_mut_ptr(), &mut n)
        );
        c.that(
            &format!("{what} mechanism BUFFER_TOO_SMALL count"),
            n == want,
            format!("{n}"),
        );
        n = want;
        chk!(
            c,
            f,
            CKR_OK,
            what,
            C_GetMechanismList(slot, v.as_mut_ptr(), &mut n)
        );
        c.that(
            &format!("{what} mechanisms include CKM_ECDSA"),
            v.contains(&CKM_ECDSA),
            format!("{v:?}"),
        );
    }

    // C_GetInterfaceList (3.0 modules).
    if !b.has_v3 {
        return;
    }
    let mut n: CK_ULONG = 0;
    c.rv(
        "C_GetInterfaceList NULL list",
        unsafe { (b.get_interface_list)(null_mut(), &mut n) },
        CKR_OK,
    );
    c.that("interface count", n == 2, format!("{n}"));
    let mut ifaces: [CK_INTERFACE; 4] = zeroed();
    n = 1;
    c.rv(
        "C_GetInterfaceList count 1",
        unsafe { (b.get_interface_list)(ifaces.as_mut_ptr(), &mut n) },
        CKR_BUFFER_TOO_SMALL,
    );
    c.that(
        "C_GetInterfaceList BUFFER_TOO_SMALL count",
        n == 2,
        format!("{n}"),
    );
    n = 4;
    c.rv(
        "C_GetInterfaceList",
        unsafe { (b.get_interface_list)(ifaces.as_mut_ptr(), &mut n) },
        CKR_OK,
    );
    let mut versions = vec![];
    for i in &ifaces[..n as usize] {
        let name = unsafe { std::ffi::CStr::from_ptr(i.pInterfaceName as *const _) };
        c.that(
            "interface name",
            name.to_bytes() == b"PKCS 11",
            format!("{name:?}"),
        );
        let v = unsafe { *(i.pFunctionList as *const CK_VERSION) };
        versions.push((v.major, v.minor));
    }
    c.that(
        "interface versions",
        versions == [(3, 0), (2, 40)],
        format!("{versions:?}"),
    );
}

// ------------------------------------------------------------------------------------------------ attributes

fn attributes(c: &mut Checks, b: &'static Bridge) {
    let x = fixture(b);
    let f = b.f;
    let s = x.s;
    let ua = CK_UNAVAILABLE_INFORMATION;
    let mut v1 = [0u8; 128];
    let mut v2 = [0u8; 128];
    let mut v3 = [0u8; 128];
    let a = |t: CK_ATTRIBUTE_TYPE, v: &mut [u8], n: usize| CK_ATTRIBUTE {
        type_: t,
        pValue: if n == usize::MAX {
            null_mut()
        } else {
            v.as_mut_ptr() as *mut c_void
        },
        ulValueLen: if n == usize::MAX { 0 } else { n as CK_ULONG },
    };
    let label = |v: &[u8], t: &CK_ATTRIBUTE| t.ulValueLen == 7 && &v[..7] == b"ec-p256";

    // NULL pValue: lengths only.
    let mut t = [
        a(CKA_EC_POINT, &mut v1, usize::MAX),
        a(CKA_LABEL, &mut v2, usize::MAX),
    ];
    chk!(
        c,
        f,
        CKR_OK,
        "NULL pValue",
        C_GetAttributeValue(s, x.ec_pub, t.as_mut_ptr(), 2)
    );
    c.that(
        "CKA_EC_POINT length",
        t[0].ulValueLen == 67,
        format!("{}", t[0].ulValueLen),
    );
    c.that(
        "CKA_LABEL length",
        t[1].ulValueLen == 7,
        format!("{}", t[1].ulValueLen),
    );

    // A too-small buffer: BUFFER_TOO_SMALL, that attribute unavailable, the others filled.
    let mut t = [a(CKA_EC_POINT, &mut v1, 10), a(CKA_LABEL, &mut v2, 128)];
    chk!(
        c,
        f,
        CKR_BUFFER_TOO_SMALL,
        "10-byte CKA_EC_POINT",
        C_GetAttributeValue(s, x.ec_pub, t.as_mut_ptr(), 2)
    );
    c.that(
        "too-small attribute: CK_UNAVAILABLE_INFORMATION",
        t[0].ulValueLen == ua,
        format!("{:#x}", t[0].ulValueLen),
    );
    c.that(
        "the other attribute is filled (BUFFER_TOO_SMALL)",
        label(&v2, &t[1]),
        format!("{}", t[1].ulValueLen),
    );

    // A sensitive attribute.
    v2 = [0; 128];
    let mut t = [a(CKA_VALUE, &mut v1, 128), a(CKA_LABEL, &mut v2, 128)];
    chk!(
        c,
        f,
        CKR_ATTRIBUTE_SENSITIVE,
        "CKA_VALUE of a sensitive private key",
        C_GetAttributeValue(s, x.ec_priv, t.as_mut_ptr(), 2)
    );
    c.that(
        "sensitive attribute: CK_UNAVAILABLE_INFORMATION",
        t[0].ulValueLen == ua,
        format!("{:#x}", t[0].ulValueLen),
    );
    c.that(
        "the other attribute is filled (SENSITIVE)",
        label(&v2, &t[1]),
        format!("{}", t[1].ulValueLen),
    );

    // An unknown attribute type.
    v2 = [0; 128];
    let mut t = [a(CKA_UNKNOWN, &mut v1, 128), a(CKA_LABEL, &mut v2, 128)];
    chk!(
        c,
        f,
        CKR_ATTRIBUTE_TYPE_INVALID,
        "unknown attribute type",
        C_GetAttributeValue(s, x.ec_pub, t.as_mut_ptr(), 2)
    );
    c.that(
        "invalid type: CK_UNAVAILABLE_INFORMATION",
        t[0].ulValueLen == ua,
        format!("{:#x}", t[0].ulValueLen),
    );
    c.that(
        "the other attribute is filled (TYPE_INVALID)",
        label(&v2, &t[1]),
        format!("{}", t[1].ulValueLen),
    );

    // The bridge's own attributes mixed with the upstream's.
    c.na_if(!tgt().is_bridge);
    v2 = [0; 128];
    let mut t = [
        a(CKA_P11BRIDGE_BACKEND, &mut v3, 128),
        a(CKA_VALUE, &mut v1, 128),
        a(CKA_LABEL, &mut v2, 128),
    ];
    chk!(
        c,
        f,
        CKR_ATTRIBUTE_SENSITIVE,
        "CKA_P11BRIDGE_BACKEND + sensitive CKA_VALUE",
        C_GetAttributeValue(s, x.ec_priv, t.as_mut_ptr(), 3)
    );
    c.that(
        "CKA_P11BRIDGE_BACKEND filled",
        t[0].ulValueLen == 3 && &v3[..3] == b"hsm",
        format!("{}", t[0].ulValueLen),
    );
    c.that(
        "CKA_VALUE unavailable (mixed)",
        t[1].ulValueLen == ua,
        format!("{:#x}", t[1].ulValueLen),
    );
    c.that(
        "CKA_LABEL filled (mixed)",
        label(&v2, &t[2]),
        format!("{}", t[2].ulValueLen),
    );
    v2 = [0; 128];
    let mut t = [
        a(CKA_P11BRIDGE_BACKEND, &mut v3, 1),
        a(CKA_LABEL, &mut v2, 128),
    ];
    chk!(
        c,
        f,
        CKR_BUFFER_TOO_SMALL,
        "1-byte CKA_P11BRIDGE_BACKEND",
        C_GetAttributeValue(s, x.ec_pub, t.as_mut_ptr(), 2)
    );
    c.that(
        "CKA_P11BRIDGE_BACKEND unavailable",
        t[0].ulValueLen == ua,
        format!("{:#x}", t[0].ulValueLen),
    );
    c.that(
        "CKA_LABEL filled (bridge too small)",
        label(&v2, &t[1]),
        format!("{}", t[1].ulValueLen),
    );
    let mut t = [a(CKA_P11BRIDGE_KEY_VERSION, &mut v3, 128)];
    chk!(
        c,
        f,
        CKR_ATTRIBUTE_TYPE_INVALID,
        "CKA_P11BRIDGE_KEY_VERSION of a SoftHSM key",
        C_GetAttributeValue(s, x.ec_pub, t.as_mut_ptr(), 1)
    );
    c.that(
        "CKA_P11BRIDGE_KEY_VERSION unavailable",
        t[0].ulValueLen == ua,
        format!("{:#x}", t[0].ulValueLen),
    );
    c.na_end();
    chk!(
        c,
        f,
        CKR_OK,
        "count 0",
        C_GetAttributeValue(s, x.ec_pub, t.as_mut_ptr(), 0)
    );
}

// ------------------------------------------------------------------------------------------------ login

fn state(b: &Bridge, h: CK_SESSION_HANDLE) -> CK_STATE {
    let mut si: CK_SESSION_INFO = zeroed();
    assert_eq!(call!(b.f, C_GetSessionInfo(h, &mut si)), CKR_OK);
    si.state
}

fn login(c: &mut Checks, b: &'static Bridge) {
    let f = b.f;
    let u = b.slot_by_label(tgt().user_label);
    let rw = b.open(u, RW).unwrap();
    let ro = b.open(u, RO).unwrap();
    let (user, so) = (tgt().pin, tgt().so_pin);
    c.rv(
        "C_Logout when not logged in",
        call!(f, C_Logout(rw)),
        CKR_USER_NOT_LOGGED_IN,
    );
    c.rv(
        "C_Login user type 7",
        b.login(rw, 7, user),
        CKR_USER_TYPE_INVALID,
    );
    c.rv(
        "C_Login user type 0xdeadbeef",
        b.login(rw, 0xdead_beef, user),
        CKR_USER_TYPE_INVALID,
    );
    c.rv(
        "C_Login wrong user PIN",
        b.login(rw, CKU_USER, "wrong"),
        CKR_PIN_INCORRECT,
    );
    c.rv(
        "C_Login empty user PIN",
        b.login(rw, CKU_USER, ""),
        CKR_PIN_INCORRECT,
    );
    if tgt().is_bridge {
        c.rv(
            "C_Login the upstream's PIN on the unified token",
            b.login(rw, CKU_USER, tgt().mirror_pin),
            CKR_PIN_INCORRECT,
        );
    }
    c.rv(
        "C_Login SO while an RO session exists",
        b.login(rw, CKU_SO, so),
        CKR_SESSION_READ_ONLY_EXISTS,
    );
    c.rv("C_Login user", b.login(rw, CKU_USER, user), CKR_OK);
    c.that(
        "RW session state",
        state(b, rw) == CKS_RW_USER_FUNCTIONS,
        state(b, rw),
    );
    c.that(
        "RO session state",
        state(b, ro) == CKS_RO_USER_FUNCTIONS,
        state(b, ro),
    );
    c.rv(
        "C_Login user twice",
        b.login(rw, CKU_USER, user),
        CKR_USER_ALREADY_LOGGED_IN,
    );
    c.rv(
        "C_Login user on another session of the token",
        b.login(ro, CKU_USER, user),
        CKR_USER_ALREADY_LOGGED_IN,
    );
    c.rv(
        "C_Login SO while the user is logged in",
        b.login(rw, CKU_SO, so),
        CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
    );
    c.rv(
        "C_Login CONTEXT_SPECIFIC without an operation",
        b.login(rw, CKU_CONTEXT_SPECIFIC, user),
        CKR_OPERATION_NOT_INITIALIZED,
    );
    c.rv("C_Logout", call!(f, C_Logout(ro)), CKR_OK);
    c.that(
        "RW session state after logout",
        state(b, rw) == CKS_RW_PUBLIC_SESSION,
        state(b, rw),
    );
    c.rv(
        "C_Logout twice",
        call!(f, C_Logout(rw)),
        CKR_USER_NOT_LOGGED_IN,
    );

    // The SO, once no RO session is left.
    close(b, ro);
    c.rv(
        "C_Login wrong SO PIN",
        b.login(rw, CKU_SO, "wrong"),
        CKR_PIN_INCORRECT,
    );
    c.rv("C_Login SO", b.login(rw, CKU_SO, so), CKR_OK);
    c.that(
        "SO session state",
        state(b, rw) == CKS_RW_SO_FUNCTIONS,
        state(b, rw),
    );
    let mut h: CK_SESSION_HANDLE = 0;
    chk!(
        c,
        f,
        CKR_SESSION_READ_WRITE_SO_EXISTS,
        "RO while the SO is logged in",
        C_OpenSession(u, RO, null_mut(), None, &mut h)
    );
    c.rv(
        "C_Login SO twice",
        b.login(rw, CKU_SO, so),
        CKR_USER_ALREADY_LOGGED_IN,
    );
    c.rv(
        "C_Login user while the SO is logged in",
        b.login(rw, CKU_USER, user),
        CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
    );
    c.rv("C_Logout SO", call!(f, C_Logout(rw)), CKR_OK);
    // Closing the last session logs the token out.
    c.rv("C_Login user", b.login(rw, CKU_USER, user), CKR_OK);
    close(b, rw);
    let h = b.open(u, RO).unwrap();
    c.that(
        "a session after the last one closed is public",
        state(b, h) == CKS_RO_PUBLIC_SESSION,
        state(b, h),
    );
    c.rv(
        "C_Logout after the last session closed",
        call!(f, C_Logout(h)),
        CKR_USER_NOT_LOGGED_IN,
    );
    close(b, h);
}

/// A private key's handle after `C_Logout`, and after logging in again.
///
/// Found by the stress run (the bridge used to pass SoftHSM's `CKR_OBJECT_HANDLE_INVALID` through): a private key's
/// handle once the user logged out, and again after a new login (the key then has a new handle). §5.13.1 C_SignInit has no CKR_OBJECT_HANDLE_INVALID among its return values: a key handle
/// that is not (or no longer) valid is CKR_KEY_HANDLE_INVALID (§5.1.6), which the bridge answers for handles it
/// never issued; while logged out CKR_USER_NOT_LOGGED_IN also fits. A new handle after a new login is allowed
/// (§4.4: the handle is guaranteed only while the object stays accessible to the session).
fn handles_across_logout(c: &mut Checks, b: &'static Bridge) {
    let f = b.f;
    let u = b.slot_by_label(tgt().user_label);
    let s = b.open(u, RW).unwrap();
    assert_eq!(b.login(s, CKU_USER, tgt().pin), CKR_OK, "login");
    let k = b.find_one(s, CKO_PRIVATE_KEY, "ec-p256");
    c.rv("C_Logout", call!(f, C_Logout(s)), CKR_OK);
    let mut m = mech(CKM_ECDSA);
    let got = call!(f, C_SignInit(s, &mut m, k));
    c.any(
        "C_SignInit a private key's handle after C_Logout (KEY_HANDLE_INVALID or USER_NOT_LOGGED_IN)",
        got,
        &[CKR_KEY_HANDLE_INVALID, CKR_USER_NOT_LOGGED_IN],
    );
    c.rv("C_Login again", b.login(s, CKU_USER, tgt().pin), CKR_OK);
    let got = call!(f, C_SignInit(s, &mut m, k));
    c.any(
        "C_SignInit the handle from before C_Logout, logged in again (OK, or KEY_HANDLE_INVALID for a new handle)",
        got,
        &[CKR_OK, CKR_KEY_HANDLE_INVALID],
    );
    if got == CKR_OK {
        let _ = call!(f, C_SignInit(s, null_mut(), 0));
    }
    let k2 = b.find_one(s, CKO_PRIVATE_KEY, "ec-p256");
    let sig = b.ecdsa_sign(s, k2, &[3u8; 32]);
    c.that(
        "C_Sign with the handle found after the new login",
        sig.is_ok(),
        format!("{sig:?}"),
    );
    close(b, s);
}

fn private_before_login(c: &mut Checks, b: &'static Bridge) {
    let f = b.f;
    let u = b.slot_by_label(tgt().user_label);
    let s = b.open(u, RW).unwrap();
    // Before login, private objects are invisible: the search finds none (not an error).
    let r = b.find(s, CKO_PRIVATE_KEY, "ec-p256");
    c.that(
        "private key search before login finds nothing",
        r == Ok(vec![]),
        format!("{r:?}"),
    );
    let r = b.find(s, CKO_SECRET_KEY, "aes-256");
    c.that(
        "private secret key search before login finds nothing",
        r == Ok(vec![]),
        format!("{r:?}"),
    );
    let r = b.find(s, CKO_PUBLIC_KEY, "ec-p256");
    c.that(
        "public key search before login",
        matches!(&r, Ok(v) if v.len() == 1),
        format!("{r:?}"),
    );
    // A handle learnt while logged in, used after logout. SoftHSM 2.6 hides the private object and answers
    // CKR_OBJECT_HANDLE_INVALID; the spec's C_SignInit list has CKR_KEY_HANDLE_INVALID (or CKR_USER_NOT_LOGGED_IN),
    // which the bridge answers for a key argument.
    assert_eq!(b.login(s, CKU_USER, tgt().pin), CKR_OK);
    let key = b.find_one(s, CKO_PRIVATE_KEY, "ec-p256");
    assert_eq!(call!(f, C_Logout(s)), CKR_OK);
    let mut ecdsa = mech(CKM_ECDSA);
    let got = call!(f, C_SignInit(s, &mut ecdsa, key));
    c.any(
        "private key after logout",
        got,
        &[CKR_KEY_HANDLE_INVALID, CKR_USER_NOT_LOGGED_IN],
    );
    let mut v = [0u8; 64];
    let mut t = [CK_ATTRIBUTE {
        type_: CKA_LABEL,
        pValue: v.as_mut_ptr() as *mut c_void,
        ulValueLen: 64,
    }];
    chk!(
        c,
        f,
        CKR_OBJECT_HANDLE_INVALID,
        "private key after logout",
        C_GetAttributeValue(s, key, t.as_mut_ptr(), 1)
    );
    close(b, s);
}

// ------------------------------------------------------------------------------------------------ interfaces

fn interfaces(c: &mut Checks, b: &'static Bridge) {
    let name = INTERFACE_NAME.as_ptr() as *mut CK_UTF8CHAR;
    let get = |name: *mut CK_UTF8CHAR, v: Option<(u8, u8)>, flags: CK_FLAGS| {
        let mut ver = v.map(|(major, minor)| CK_VERSION { major, minor });
        let pv = ver.as_mut().map_or(null_mut(), |v| v as *mut CK_VERSION);
        let mut i: *mut CK_INTERFACE = null_mut();
        let rv = unsafe { (b.get_interface)(name, pv, &mut i, flags) };
        (rv, i)
    };
    let version_of = |i: *mut CK_INTERFACE| unsafe {
        let v = *((*i).pFunctionList as *const CK_VERSION);
        (v.major, v.minor)
    };
    let info_version = |list: *const c_void| unsafe {
        // Both lists start with the version and then C_Initialize, C_Finalize, C_GetInfo.
        let l = &*(list as *const CK_FUNCTION_LIST);
        let mut info: CK_INFO = zeroed();
        let rv = (l.C_GetInfo.unwrap())(&mut info);
        (rv, info.cryptokiVersion.major, info.cryptokiVersion.minor)
    };
    for (want, what) in [((3, 0), "3.0"), ((2, 40), "2.40")] {
        let (rv, i) = get(name, Some(want), 0);
        c.rv(&format!("C_GetInterface(\"PKCS 11\", {what})"), rv, CKR_OK);
        if rv == CKR_OK {
            c.that(
                &format!("interface {what} list version"),
                version_of(i) == want,
                format!("{:?}", version_of(i)),
            );
            let (rv, major, minor) = info_version(unsafe { (*i).pFunctionList });
            c.rv(&format!("C_GetInfo via the {what} list"), rv, CKR_OK);
            c.that(
                &format!("C_GetInfo via the {what} list: cryptokiVersion"),
                (major, minor) == want,
                format!("{major}.{minor}"),
            );
        }
    }
    let (rv, i) = get(null_mut(), None, 0);
    c.rv("C_GetInterface(NULL, NULL)", rv, CKR_OK);
    if rv == CKR_OK {
        c.that(
            "default interface is 3.0",
            version_of(i) == (3, 0),
            format!("{:?}", version_of(i)),
        );
    }
    let (rv, i) = get(name, None, 0);
    c.rv("C_GetInterface(\"PKCS 11\", NULL)", rv, CKR_OK);
    if rv == CKR_OK {
        c.that(
            "newest PKCS 11 interface is 3.0",
            version_of(i) == (3, 0),
            format!("{:?}", version_of(i)),
        );
    }
    // What is not offered: the spec names no code; the bridge says ARGUMENTS_BAD (never OK).
    let (rv, _) = get(name, Some((9, 9)), 0);
    c.rv("C_GetInterface unknown version", rv, BAD);
    let (rv, _) = get(c"Vendor XY".as_ptr() as *mut _, None, 0);
    c.rv("C_GetInterface unknown name", rv, BAD);

    // The list of C_GetFunctionList.
    c.that(
        "C_GetFunctionList version",
        (b.f.version.major, b.f.version.minor) == (2, 40),
        format!("{:?}", b.f.version),
    );
    let (rv, major, minor) = info_version(b.f as *const CK_FUNCTION_LIST as *const c_void);
    c.rv("C_GetInfo via C_GetFunctionList's list", rv, CKR_OK);
    c.that(
        "C_GetInfo via the 2.40 list: cryptokiVersion 2.40",
        (major, minor) == (2, 40),
        format!("{major}.{minor}"),
    );
    let mut info: CK_INFO = zeroed();
    c.rv(
        "C_GetInfo (3.0 list)",
        call!(b.f3, C_GetInfo(&mut info)),
        CKR_OK,
    );
    c.next_bridge_only();
    c.that(
        "C_GetInfo via the 3.0 list: cryptokiVersion 3.0",
        (info.cryptokiVersion.major, info.cryptokiVersion.minor) == (3, 0),
        format!("{:?}", info.cryptokiVersion),
    );
}

// ------------------------------------------------------------------------------------------------ miscellaneous

fn misc(c: &mut Checks, b: &'static Bridge) {
    let x = fixture(b);
    let (f, f3) = (b.f, b.f3);
    let s = x.s;
    let mut slot: CK_SLOT_ID = 0;
    chk!(
        c,
        f,
        CKR_NO_EVENT,
        "CKF_DONT_BLOCK",
        C_WaitForSlotEvent(CKF_DONT_BLOCK, &mut slot, null_mut())
    );
    let mut reserved = 0u8;
    chk!(
        c,
        f,
        BAD,
        "pReserved non-NULL",
        C_WaitForSlotEvent(
            CKF_DONT_BLOCK,
            &mut slot,
            &mut reserved as *mut u8 as *mut c_void
        )
    );
    chk!(c, f, CKR_FUNCTION_NOT_PARALLEL, "", C_GetFunctionStatus(s));
    chk!(c, f, CKR_FUNCTION_NOT_PARALLEL, "", C_CancelFunction(s));
    let mut h: CK_SESSION_HANDLE = 0;
    let w = CKR_SESSION_PARALLEL_NOT_SUPPORTED;
    chk!(
        c,
        f,
        w,
        "flags 0",
        C_OpenSession(x.u, 0, null_mut(), None, &mut h)
    );
    chk!(
        c,
        f,
        w,
        "CKF_RW_SESSION only",
        C_OpenSession(x.u, CKF_RW_SESSION, null_mut(), None, &mut h)
    );
    chk!(
        c,
        f,
        w,
        "flags 0 (mirror)",
        C_OpenSession(x.mirror, 0, null_mut(), None, &mut h)
    );
    let so = tgt().so_pin;
    let mut label = *b"unified                         ";
    c.next_bridge_only();
    chk!(
        c,
        f,
        CKR_FUNCTION_NOT_SUPPORTED,
        "unified slot",
        C_InitToken(
            x.u,
            so.as_ptr() as *mut u8,
            so.len() as CK_ULONG,
            label.as_mut_ptr()
        )
    );
    let mut mi: CK_MECHANISM_INFO = zeroed();
    chk!(
        c,
        f,
        CKR_MECHANISM_INVALID,
        "unknown mechanism",
        C_GetMechanismInfo(x.u, 0x7fff_0000, &mut mi)
    );

    // 3.0 message-based encryption: AES-GCM, emulated over the backend's single-part AES-GCM (SoftHSM2 has no
    // 3.0 list: n/a there); multi-part messages are not supported.
    let ns = CKR_FUNCTION_NOT_SUPPORTED;
    let mut m = mech(CKM_AES_GCM);
    let mut buf = [0u8; 64];
    let bp = buf.as_mut_ptr();
    let mut len: CK_ULONG = 64;
    let p = buf.as_mut_ptr() as *mut c_void;
    let k = x.aes;
    let mut iv = [0u8; 12];
    let mut tag = [0u8; 16];
    let mut gp = CK_GCM_MESSAGE_PARAMS {
        pIv: iv.as_mut_ptr(),
        ulIvLen: 12,
        ulIvFixedBits: 0,
        ivGenerator: CKG_NO_GENERATE,
        pTag: tag.as_mut_ptr(),
        ulTagBits: 128,
    };
    let gpp = &mut gp as *mut CK_GCM_MESSAGE_PARAMS as *mut c_void;
    let gpl = std::mem::size_of::<CK_GCM_MESSAGE_PARAMS>() as CK_ULONG;
    let mut data = *b"data";
    let dp = data.as_mut_ptr();
    let mut ct = [0u8; 16];
    let mut ctl: CK_ULONG = 16;
    chk!(c, f3, CKR_OK, "AES-GCM", C_MessageEncryptInit(s, &mut m, k));
    chk!(
        c,
        f3,
        CKR_MECHANISM_PARAM_INVALID,
        "a parameter that is no CK_GCM_MESSAGE_PARAMS",
        C_EncryptMessage(s, p, 12, bp, 4, bp, 4, bp, &mut len)
    );
    chk!(
        c,
        f3,
        CKR_OK,
        "one message",
        C_EncryptMessage(s, gpp, gpl, bp, 4, dp, 4, ct.as_mut_ptr(), &mut ctl)
    );
    chk!(c, f3, ns, "", C_EncryptMessageBegin(s, gpp, gpl, bp, 4));
    chk!(
        c,
        f3,
        ns,
        "",
        C_EncryptMessageNext(s, gpp, gpl, bp, 4, bp, &mut len, 0)
    );
    chk!(c, f3, CKR_OK, "", C_MessageEncryptFinal(s));
    chk!(
        c,
        f3,
        CKR_OPERATION_NOT_INITIALIZED,
        "twice",
        C_MessageEncryptFinal(s)
    );
    chk!(c, f3, CKR_OK, "AES-GCM", C_MessageDecryptInit(s, &mut m, k));
    chk!(
        c,
        f3,
        CKR_MECHANISM_PARAM_INVALID,
        "a parameter that is no CK_GCM_MESSAGE_PARAMS",
        C_DecryptMessage(s, p, 12, bp, 4, bp, 4, bp, &mut len)
    );
    let mut back = [0u8; 16];
    let mut backl: CK_ULONG = 16;
    chk!(
        c,
        f3,
        CKR_OK,
        "the message encrypted above",
        C_DecryptMessage(
            s,
            gpp,
            gpl,
            bp,
            4,
            ct.as_mut_ptr(),
            ctl,
            back.as_mut_ptr(),
            &mut backl
        )
    );
    c.next_bridge_only();
    c.that(
        "C_DecryptMessage gives the plaintext back",
        back[..backl as usize] == *b"data",
        format!("{backl} bytes"),
    );
    chk!(c, f3, ns, "", C_DecryptMessageBegin(s, gpp, gpl, bp, 4));
    chk!(
        c,
        f3,
        ns,
        "",
        C_DecryptMessageNext(s, gpp, gpl, bp, 4, bp, &mut len, 0)
    );
    chk!(c, f3, CKR_OK, "", C_MessageDecryptFinal(s));
    // Message-based signing: not supported.
    let mut m = mech(CKM_ECDSA);
    chk!(c, f3, ns, "", C_MessageSignInit(s, &mut m, x.ec_priv));
    chk!(c, f3, ns, "", C_SignMessage(s, p, 0, bp, 4, bp, &mut len));
    chk!(c, f3, ns, "", C_SignMessageBegin(s, p, 0));
    chk!(
        c,
        f3,
        ns,
        "",
        C_SignMessageNext(s, p, 0, bp, 4, bp, &mut len)
    );
    chk!(c, f3, ns, "", C_MessageSignFinal(s));
    chk!(c, f3, ns, "", C_MessageVerifyInit(s, &mut m, x.ec_pub));
    chk!(c, f3, ns, "", C_VerifyMessage(s, p, 0, bp, 4, bp, 64));
    chk!(c, f3, ns, "", C_VerifyMessageBegin(s, p, 0));
    chk!(c, f3, ns, "", C_VerifyMessageNext(s, p, 0, bp, 4, bp, 64));
    chk!(c, f3, ns, "", C_MessageVerifyFinal(s));
    // Still working.
    let sig = b.ecdsa_sign(s, x.ec_priv, &[3u8; 32]);
    c.that("C_Sign at the end", sig.is_ok(), format!("{sig:?}"));
}

// ------------------------------------------------------------------------------------------- malformed EC keys

/// The codes a token may give when it is asked to use a key whose EC material is broken (it should never have
/// been created): anything but dying. The row exists to show SoftHSM2 crash.
const BROKEN_KEY_USE: &[CK_RV] = &[
    CKR_OK,
    CKR_KEY_TYPE_INCONSISTENT,
    CKR_DOMAIN_PARAMS_INVALID,
    CKR_CURVE_NOT_SUPPORTED,
    CKR_KEY_HANDLE_INVALID,
    CKR_FUNCTION_FAILED,
    CKR_GENERAL_ERROR,
    CKR_MECHANISM_INVALID,
    CKR_ARGUMENTS_BAD,
];

/// (condition, private key?, CKA_EC_PARAMS, CKA_EC_POINT of a public key, expected `C_CreateObject` code).
type EcCase<'a> = (&'a str, bool, &'a [u8], &'a [u8], CK_RV);

/// EC keys with malformed `CKA_EC_PARAMS` / `CKA_EC_POINT` (§4.9, §2.3 of the mechanisms: DER of X9.62 Parameters
/// and of an ECPoint): creating one is `CKR_ATTRIBUTE_VALUE_INVALID`. SoftHSM2 (over OpenSSL 3) creates them and
/// then crashes (SIGSEGV in `EC_POINT_oct2point`, NULL curve) in `C_VerifyInit` with such a public key and in
/// `C_DeriveKey` (ECDH) with such a private key: the "... uses it" rows, which run only where the creation
/// succeeded (n/a on the bridge, which refuses the key). Found by the fuzzer (conformance/fuzz/crashes/).
fn malformed_ec_keys(c: &mut Checks, b: &'static Bridge) {
    let x = fixture(b);
    let f = b.f;
    let s = x.s;
    let p256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    // The fixture's P-256 public point (DER OCTET STRING), read from its public key.
    let mut point = vec![0u8; 67];
    {
        let mut t = [CK_ATTRIBUTE {
            type_: CKA_EC_POINT,
            pValue: point.as_mut_ptr() as *mut c_void,
            ulValueLen: point.len() as CK_ULONG,
        }];
        let rv = call!(f, C_GetAttributeValue(s, x.ec_pub, t.as_mut_ptr(), 1));
        c.rv("read the fixture's CKA_EC_POINT", rv, CKR_OK);
        point.truncate(t[0].ulValueLen.min(67) as usize);
    }
    let raw_point = point.get(2..).unwrap_or_default().to_vec();
    let cases: &[EcCase] = &[
        // (condition, private key?, CKA_EC_PARAMS, CKA_EC_POINT (public), expected)
        (
            "public key, CKA_EC_PARAMS not DER",
            false,
            &[0xde, 0xad, 0xbe, 0xef],
            &point,
            CKR_ATTRIBUTE_VALUE_INVALID,
        ),
        (
            "public key, unknown curve OID",
            false,
            &[0x06, 0x03, 0x2a, 0x03, 0x04],
            &point,
            CKR_ATTRIBUTE_VALUE_INVALID,
        ),
        (
            "public key, empty CKA_EC_PARAMS",
            false,
            &[],
            &point,
            CKR_ATTRIBUTE_VALUE_INVALID,
        ),
        (
            "public key, malformed explicit curve parameters",
            false,
            &[0x30, 0x03, 0x02, 0x01, 0x01],
            &point,
            CKR_ATTRIBUTE_VALUE_INVALID,
        ),
        (
            "public key, implicitlyCA (NULL)",
            false,
            &[0x05, 0x00],
            &point,
            CKR_ATTRIBUTE_VALUE_INVALID,
        ),
        (
            "public key, P-256 with an empty point (04 00)",
            false,
            p256,
            &[0x04, 0x00],
            CKR_ATTRIBUTE_VALUE_INVALID,
        ),
        (
            "public key, P-256 with a 1-byte point",
            false,
            p256,
            &[0x04],
            CKR_ATTRIBUTE_VALUE_INVALID,
        ),
        (
            "private key, CKA_EC_PARAMS not DER",
            true,
            &[0xde, 0xad, 0xbe, 0xef],
            &[],
            CKR_ATTRIBUTE_VALUE_INVALID,
        ),
        (
            "private key, unknown curve OID",
            true,
            &[0x06, 0x03, 0x2a, 0x03, 0x04],
            &[],
            CKR_ATTRIBUTE_VALUE_INVALID,
        ),
        // Controls: well-formed keys are still accepted (DER point, and the raw point many applications pass).
        ("public key, P-256 (control)", false, p256, &point, CKR_OK),
        (
            "public key, P-256 raw point (control)",
            false,
            p256,
            &raw_point,
            CKR_OK,
        ),
        ("private key, P-256 (control)", true, p256, &[], CKR_OK),
    ];
    for (cond, private, params, pt, want) in cases {
        let mut class = if *private {
            CKO_PRIVATE_KEY
        } else {
            CKO_PUBLIC_KEY
        };
        let mut kt = CKK_EC;
        let mut yes = CK_TRUE;
        let mut no = CK_FALSE;
        let mut value = [0x01u8; 32];
        let mut params = params.to_vec();
        let mut pt = pt.to_vec();
        let mut t = vec![
            attr(CKA_CLASS, &mut class),
            attr(CKA_KEY_TYPE, &mut kt),
            attr(CKA_TOKEN, &mut no),
            CK_ATTRIBUTE {
                type_: CKA_EC_PARAMS,
                pValue: params.as_mut_ptr() as *mut c_void,
                ulValueLen: params.len() as CK_ULONG,
            },
        ];
        if *private {
            t.push(attr(CKA_DERIVE, &mut yes));
            t.push(CK_ATTRIBUTE {
                type_: CKA_VALUE,
                pValue: value.as_mut_ptr() as *mut c_void,
                ulValueLen: value.len() as CK_ULONG,
            });
        } else {
            t.push(attr(CKA_VERIFY, &mut yes));
            t.push(CK_ATTRIBUTE {
                type_: CKA_EC_POINT,
                pValue: pt.as_mut_ptr() as *mut c_void,
                ulValueLen: pt.len() as CK_ULONG,
            });
        }
        let mut o: CK_OBJECT_HANDLE = 0;
        let got = chk!(
            c,
            f,
            *want,
            cond,
            C_CreateObject(s, t.as_mut_ptr(), t.len() as CK_ULONG, &mut o)
        );
        // Use the key where it was created (n/a where it was refused).
        let use_case = format!("{cond}: the key is used");
        if got != CKR_OK {
            c.any(&use_case, NA, BROKEN_KEY_USE);
            continue;
        }
        if !c.before_call(&use_case) {
            c.any(&use_case, DIED, BROKEN_KEY_USE);
            continue;
        }
        let used = if *private {
            // ECDH with the fixture's public point.
            let mut peer = point.clone();
            let mut p = CK_ECDH1_DERIVE_PARAMS {
                kdf: CKD_NULL,
                ulSharedDataLen: 0,
                pSharedData: null_mut(),
                ulPublicDataLen: peer.len() as CK_ULONG,
                pPublicData: peer.as_mut_ptr(),
            };
            let mut m = CK_MECHANISM {
                mechanism: CKM_ECDH1_DERIVE,
                pParameter: &mut p as *mut _ as *mut c_void,
                ulParameterLen: std::mem::size_of::<CK_ECDH1_DERIVE_PARAMS>() as CK_ULONG,
            };
            let mut sk = CKO_SECRET_KEY;
            let mut gk = CKK_GENERIC_SECRET;
            let mut len: CK_ULONG = 32;
            let mut no = CK_FALSE;
            let mut dt = [
                attr(CKA_CLASS, &mut sk),
                attr(CKA_KEY_TYPE, &mut gk),
                attr(CKA_VALUE_LEN, &mut len),
                attr(CKA_TOKEN, &mut no),
            ];
            let mut k: CK_OBJECT_HANDLE = 0;
            let rv = call!(f, C_DeriveKey(s, &mut m, o, dt.as_mut_ptr(), 4, &mut k));
            if rv == CKR_OK {
                call!(f, C_DestroyObject(s, k));
            }
            rv
        } else {
            let mut m = mech(CKM_ECDSA);
            let rv = call!(f, C_VerifyInit(s, &mut m, o));
            if rv == CKR_OK {
                let d = [0u8; 32];
                let sig = [0u8; 64];
                call!(
                    f,
                    C_Verify(s, d.as_ptr() as *mut u8, 32, sig.as_ptr() as *mut u8, 64)
                );
            }
            rv
        };
        c.any(&use_case, used, BROKEN_KEY_USE);
        call!(f, C_DestroyObject(s, o));
    }

    // Changing the curve of an existing key: read-only (SoftHSM2), or refused as a value.
    let mut bad = [0xde_u8, 0xad, 0xbe, 0xef];
    let mut t = [CK_ATTRIBUTE {
        type_: CKA_EC_PARAMS,
        pValue: bad.as_mut_ptr() as *mut c_void,
        ulValueLen: bad.len() as CK_ULONG,
    }];
    let mut o: CK_OBJECT_HANDLE = 0;
    let got = {
        let case = "C_CopyObject EC public key with CKA_EC_PARAMS not DER";
        let got = if c.before_call(case) {
            call!(f, C_CopyObject(s, x.ec_pub, t.as_mut_ptr(), 1, &mut o))
        } else {
            DIED
        };
        c.any(
            case,
            got,
            &[CKR_ATTRIBUTE_READ_ONLY, CKR_ATTRIBUTE_VALUE_INVALID],
        );
        got
    };
    if got == CKR_OK {
        call!(f, C_DestroyObject(s, o));
    }
    let case = "C_SetAttributeValue EC public key CKA_EC_PARAMS not DER";
    let got = if c.before_call(case) {
        call!(f, C_SetAttributeValue(s, x.ec_pub, t.as_mut_ptr(), 1))
    } else {
        DIED
    };
    c.any(
        case,
        got,
        &[CKR_ATTRIBUTE_READ_ONLY, CKR_ATTRIBUTE_VALUE_INVALID],
    );
    close(b, s);
}
// ------------------------------------------------------------------------------------ explicit EC parameters

/// Explicit `ECParameters` (X9.62 specifiedCurve) of named curves, as `openssl ecparam -name NAME -param_enc explicit
/// -outform DER` writes them, with each curve's base point G (uncompressed).
const EXPLICIT_CURVES: &[(&str, &str, &str)] = &[
    (
        "P-256",
        "3081f7020101302c06072a8648ce3d0101022100ffffffff00000001000000000000000000000000ffffffffffffffffffffffff305b0420ffffffff00000001000000000000000000000000fffffffffffffffffffffffc04205ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604b031500c49d360886e704936a6678e1139d26b7819f7e900441046b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c2964fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5022100ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551020101",
        "046b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c2964fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5",
    ),
    (
        "P-384",
        "30820157020101303c06072a8648ce3d0101023100fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000ffffffff307b0430fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000fffffffc0430b3312fa7e23ee7e4988e056be3f82d19181d9c6efe8141120314088f5013875ac656398d8a2ed19d2a85c8edd3ec2aef031500a335926aa319a27a1d00896a6773a4827acdac73046104aa87ca22be8b05378eb1c71ef320ad746e1d3b628ba79b9859f741e082542a385502f25dbf55296c3a545e3872760ab73617de4a96262c6f5d9e98bf9292dc29f8f41dbd289a147ce9da3113b5f0b8c00a60b1ce1d7e819d7a431d7c90ea0e5f023100ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973020101",
        "04aa87ca22be8b05378eb1c71ef320ad746e1d3b628ba79b9859f741e082542a385502f25dbf55296c3a545e3872760ab73617de4a96262c6f5d9e98bf9292dc29f8f41dbd289a147ce9da3113b5f0b8c00a60b1ce1d7e819d7a431d7c90ea0e5f",
    ),
    (
        "P-521",
        "308201c3020101304d06072a8648ce3d0101024201ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff30819f044201fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffc04420051953eb9618e1c9a1f929a21a0b68540eea2da725b99b315f3b8b489918ef109e156193951ec7e937b1652c0bd3bb1bf073573df883d2c34f1ef451fd46b503f00031500d09e8800291cb85396cc6717393284aaa0da64ba0481850400c6858e06b70404e9cd9e3ecb662395b4429c648139053fb521f828af606b4d3dbaa14b5e77efe75928fe1dc127a2ffa8de3348b3c1856a429bf97e7e31c2e5bd66011839296a789a3bc0045c8a5fb42c7d1bd998f54449579b446817afbd17273e662c97ee72995ef42640c550b9013fad0761353c7086a272c24088be94769fd16650024201fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffa51868783bf2f966b7fcc0148f709a5d03bb5c9b8899c47aebb6fb71e91386409020101",
        "0400c6858e06b70404e9cd9e3ecb662395b4429c648139053fb521f828af606b4d3dbaa14b5e77efe75928fe1dc127a2ffa8de3348b3c1856a429bf97e7e31c2e5bd66011839296a789a3bc0045c8a5fb42c7d1bd998f54449579b446817afbd17273e662c97ee72995ef42640c550b9013fad0761353c7086a272c24088be94769fd16650",
    ),
    (
        "secp256k1",
        "3081e0020101302c06072a8648ce3d0101022100fffffffffffffffffffffffffffffffffffffffffffffffffffffffefffffc2f3044042000000000000000000000000000000000000000000000000000000000000000000420000000000000000000000000000000000000000000000000000000000000000704410479be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8022100fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141020101",
        "0479be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8",
    ),
];

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// Valid explicit domain parameters are keys like any other (SoftHSM2 accepts and uses them; the bridge used to
/// refuse them): per curve, a public key at G and a private key with d = 1 (so G is its public point) are created
/// with explicit `CKA_EC_PARAMS`, the private key signs and the public key verifies the signature.
fn explicit_ec_params(c: &mut Checks, b: &'static Bridge) {
    let x = fixture(b);
    let f = b.f;
    let s = x.s;
    for (name, params, g) in EXPLICIT_CURVES {
        let mut params = unhex(params);
        let g = unhex(g);
        let field = (g.len() - 1) / 2;
        // CKA_EC_POINT: DER OCTET STRING of G.
        let mut point = vec![0x04];
        if g.len() > 127 {
            point.extend([0x81, g.len() as u8]);
        } else {
            point.push(g.len() as u8);
        }
        point.extend(&g);
        let mut one = vec![0u8; field];
        one[field - 1] = 1;
        let mut kt = CKK_EC;
        let mut no = CK_FALSE;
        let mut yes = CK_TRUE;
        let mut pubc = CKO_PUBLIC_KEY;
        let mut t = [
            attr(CKA_CLASS, &mut pubc),
            attr(CKA_KEY_TYPE, &mut kt),
            attr(CKA_TOKEN, &mut no),
            attr(CKA_VERIFY, &mut yes),
            CK_ATTRIBUTE {
                type_: CKA_EC_PARAMS,
                pValue: params.as_mut_ptr() as *mut c_void,
                ulValueLen: params.len() as CK_ULONG,
            },
            CK_ATTRIBUTE {
                type_: CKA_EC_POINT,
                pValue: point.as_mut_ptr() as *mut c_void,
                ulValueLen: point.len() as CK_ULONG,
            },
        ];
        let mut public: CK_OBJECT_HANDLE = 0;
        chk!(
            c,
            f,
            CKR_OK,
            &format!("{name}: public key with explicit parameters"),
            C_CreateObject(s, t.as_mut_ptr(), t.len() as CK_ULONG, &mut public)
        );
        let mut privc = CKO_PRIVATE_KEY;
        let mut kt = CKK_EC;
        let mut no = CK_FALSE;
        let mut yes = CK_TRUE;
        let mut t = [
            attr(CKA_CLASS, &mut privc),
            attr(CKA_KEY_TYPE, &mut kt),
            attr(CKA_TOKEN, &mut no),
            attr(CKA_SIGN, &mut yes),
            CK_ATTRIBUTE {
                type_: CKA_EC_PARAMS,
                pValue: params.as_mut_ptr() as *mut c_void,
                ulValueLen: params.len() as CK_ULONG,
            },
            CK_ATTRIBUTE {
                type_: CKA_VALUE,
                pValue: one.as_mut_ptr() as *mut c_void,
                ulValueLen: one.len() as CK_ULONG,
            },
        ];
        let mut private: CK_OBJECT_HANDLE = 0;
        chk!(
            c,
            f,
            CKR_OK,
            &format!("{name}: private key with explicit parameters"),
            C_CreateObject(s, t.as_mut_ptr(), t.len() as CK_ULONG, &mut private)
        );
        let digest = [0x5au8; 32];
        let sig = b.ecdsa_sign(s, private, &digest);
        c.that(
            &format!("{name}: the private key signs"),
            sig.is_ok(),
            format!("{sig:?}"),
        );
        let verified = sig.map(|sig| b.ecdsa_verify(s, public, &digest, &sig));
        c.that(
            &format!("{name}: the public key verifies that signature"),
            verified == Ok(CKR_OK),
            format!("{verified:?}"),
        );
        for o in [public, private] {
            if o != 0 {
                call!(f, C_DestroyObject(s, o));
            }
        }
    }
}

// ------------------------------------------------------------------------------------------ mirror transparency

/// Call sequences on the mirror of the upstream token (on SoftHSM2 directly: the same token), where the expected
/// answer is the upstream's own (SoftHSM2 2.6.1, measured), not one the bridge makes up: an application written
/// against the upstream gets the same answers through a mirror.
fn mirror_transparency(c: &mut Checks, b: &'static Bridge) {
    let x = fixture(b);
    let f = b.f;
    let mirror_pin = tgt().mirror_pin;
    let Ok(s) = b.open(x.mirror, CKF_SERIAL_SESSION) else {
        c.that("open a session on the mirror", false, "refused");
        return;
    };
    // C_Logout without a login, and twice after one: the upstream answers CKR_OK.
    chk!(c, f, CKR_OK, "on the mirror without a login", C_Logout(s));
    c.rv(
        "C_Login on the mirror",
        b.login(s, CKU_USER, mirror_pin),
        CKR_OK,
    );
    chk!(c, f, CKR_OK, "on the mirror after a login", C_Logout(s));
    chk!(c, f, CKR_OK, "on the mirror, a second time", C_Logout(s));
    // An argument the bridge refuses itself (NULL data with a length) leaves the operation active, as the
    // upstream (which never saw the call) does.
    let mut m = mech(CKM_SHA256);
    let mut data = *b"abc";
    let mut out = [0u8; 64];
    let mut n: CK_ULONG = 64;
    chk!(
        c,
        f,
        CKR_OK,
        "SHA-256 on the mirror",
        C_DigestInit(s, &mut m)
    );
    chk!(
        c,
        f,
        CKR_ARGUMENTS_BAD,
        "NULL data with a length, on the mirror",
        C_Digest(s, null_mut(), 3, out.as_mut_ptr(), &mut n)
    );
    n = 64;
    chk!(
        c,
        f,
        CKR_OK,
        "after a refused NULL data: the operation is still active",
        C_Digest(s, data.as_mut_ptr(), 3, out.as_mut_ptr(), &mut n)
    );
    c.that(
        "C_Digest's result is SHA-256(\"abc\")",
        n == 32 && out[..4] == [0xba, 0x78, 0x16, 0xbf],
        format!("{n} bytes"),
    );
    chk!(
        c,
        f,
        CKR_OK,
        "SHA-256 again, on the mirror",
        C_DigestInit(s, &mut m)
    );
    chk!(
        c,
        f,
        CKR_ARGUMENTS_BAD,
        "NULL part with a length, on the mirror",
        C_DigestUpdate(s, null_mut(), 3)
    );
    chk!(
        c,
        f,
        CKR_OK,
        "after a refused NULL part: the operation is still active",
        C_DigestUpdate(s, data.as_mut_ptr(), 3)
    );
    n = 64;
    chk!(
        c,
        f,
        CKR_OK,
        "ends the operation kept across the refused part",
        C_DigestFinal(s, out.as_mut_ptr(), &mut n)
    );
    call!(f, C_CloseSession(s));
}
