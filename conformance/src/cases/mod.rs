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

/// `chk!(c, list, want, "condition", C_Function(args...))`; `chk!(c, list, any [A, B], …)` where the specification
/// leaves a choice between several codes.
macro_rules! chk {
    ($c:expr, $list:expr, any $want:expr, $cond:expr, $name:ident ( $($arg:expr),* $(,)? )) => {{
        let case = format!("{} {}", stringify!($name), $cond);
        let got = if $c.before_call(&case) { call!($list, $name($($arg),*)) } else { DIED };
        $c.any(&case, got, &$want);
        got
    }};
    ($c:expr, $list:expr, $want:expr, $cond:expr, $name:ident ( $($arg:expr),* $(,)? )) => {
        chk!($c, $list, any [$want], $cond, $name($($arg),*))
    };
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

/// Scratch input and output for the rows' calls: 64 bytes of data, a 512-byte output buffer and its length (512).
struct Scratch {
    data: [u8; 64],
    buf: [u8; 512],
    len: CK_ULONG,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            data: [7; 64],
            buf: [0; 512],
            len: 512,
        }
    }

    /// The data, the buffer and the length, as the C functions take them.
    fn pointers(&mut self) -> (*mut u8, *mut u8, *mut CK_ULONG) {
        (self.data.as_mut_ptr(), self.buf.as_mut_ptr(), &mut self.len)
    }
}

fn zeroed<T>() -> T {
    // SAFETY: only used for plain C structures (all-zero is a valid value).
    unsafe { std::mem::zeroed() }
}

// The sections' rows, by chapter of the specification (declared after `chk!`, which they use).
mod explicit_ec;
mod general;
mod huge_lengths;
mod interfaces;
mod login;
mod malformed_ec;
mod mirror;
mod null_pointers;
mod object;
mod operation;
mod session;
mod slot_token;

use explicit_ec::*;
use general::*;
use huge_lengths::*;
use interfaces::*;
use login::*;
use malformed_ec::*;
use mirror::*;
use null_pointers::*;
use object::*;
use operation::*;
use session::*;
use slot_token::*;
