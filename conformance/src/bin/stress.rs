//! `stress [--threads N] [--iterations K] [--watchdog SECONDS] [--bridge PATH]`: N threads (default 16) doing
//! random open / close / login / logout / find / sign+verify / encrypt+decrypt on one shared session (which they
//! also close and replace) and on sessions of their own, against the bridge over a SoftHSM2 token (`--softhsm`:
//! against SoftHSM2 directly, for comparison); one more thread calls `C_Finalize` once 80 % of all iterations
//! were started, while the others still run (`--no-finalize`: not).
//!
//! Every return code must be one the specification allows in that situation (e.g. `CKR_SESSION_HANDLE_INVALID`
//! after a concurrent close, `CKR_OPERATION_ACTIVE` on the shared session, `CKR_USER_NOT_LOGGED_IN` after a
//! concurrent logout, `CKR_CRYPTOKI_NOT_INITIALIZED` after the finalize); every signature made is checked with
//! `C_Verify` on another session, every ciphertext decrypted and compared. A watchdog fails the run (exit 2) if it
//! does not end within the deadline (a deadlock). After the run the module is initialized again and must sign.
//! Prints the return codes per operation and `N passed, M failed`.
//!
//! Found with it (see the report of issue 6): with the concurrent `C_Finalize`, a few runs in a hundred fail:
//! SIGSEGV inside SoftHSM2 (`C_Logout` / `C_FindObjectsInit` called by the bridge), a hang (the watchdog then
//! prints gdb backtraces of all threads), or glibc's heap-corruption abort; with `--no-finalize`, 50 runs of 50
//! pass. PKCS#11 §5.4 leaves `C_Finalize` concurrent with other calls
//! undefined, but the issue asks the bridge to survive it.

use cryptoki_sys::*;
use p11bridge_conformance::call;
use p11bridge_conformance::module::{self, mech, rv_name, Bridge};
use p11bridge_conformance::{cases, env};
use std::collections::BTreeMap;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static PIN: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
const RW: CK_FLAGS = CKF_SERIAL_SESSION | CKF_RW_SESSION;

struct Shared {
    b: &'static Bridge,
    session: AtomicU64,
    /// The keys' handles (private ones change after a logout: re-found by label when they turn invalid).
    ec_priv: AtomicU64,
    ec_pub: AtomicU64,
    aes: AtomicU64,
    slot: CK_SLOT_ID,
    done: AtomicUsize,
    total: usize,
    finalized: AtomicBool,
    /// (operation, rv name) → count.
    counts: Mutex<BTreeMap<(String, String), usize>>,
    failures: Mutex<Vec<String>>,
    verified: AtomicUsize,
    roundtrips: AtomicUsize,
    general_errors: AtomicUsize,
}

/// Codes any call may see in this workload (concurrent close, logout, finalize, operation on a shared session).
/// CKR_GENERAL_ERROR is a universal return value (§5.1.1), so allowed, but counted and reported apart.
const COMMON: &[CK_RV] = &[
    CKR_OK,
    CKR_GENERAL_ERROR,
    CKR_SESSION_HANDLE_INVALID,
    CKR_SESSION_CLOSED,
    CKR_CRYPTOKI_NOT_INITIALIZED,
];

impl Shared {
    /// After an init refused a stale key handle (a concurrent logout): find the key's current handle.
    fn key_refused(
        &self,
        s: CK_SESSION_HANDLE,
        rv: CK_RV,
        which: &AtomicU64,
        class: CK_OBJECT_CLASS,
        label: &str,
    ) {
        if rv == CKR_KEY_HANDLE_INVALID {
            if let Ok(v) = self.b.find(s, class, label) {
                if v.len() == 1 {
                    which.store(v[0], SeqCst);
                }
            }
        }
    }

    fn record(&self, op: &str, rv: CK_RV, also: &[CK_RV]) -> CK_RV {
        *self
            .counts
            .lock()
            .unwrap()
            .entry((op.to_string(), rv_name(rv)))
            .or_insert(0) += 1;
        if rv == CKR_GENERAL_ERROR {
            self.general_errors.fetch_add(1, SeqCst);
        }
        if !COMMON.contains(&rv) && !also.contains(&rv) {
            self.fail(format!(
                "{op}: {} is not a code the spec allows here",
                rv_name(rv)
            ));
        }
        rv
    }
    fn fail(&self, msg: String) {
        eprintln!("FAIL {msg}");
        self.failures.lock().unwrap().push(msg);
    }
}

/// xorshift64*.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// Operation states that other threads' calls on the shared session can cause.
const OP_RACE: &[CK_RV] = &[CKR_OPERATION_ACTIVE, CKR_OPERATION_NOT_INITIALIZED];
// What a concurrent logout causes (private keys unusable; their handles may change, §4.4). A stale key handle
// given to a C_*Init is CKR_KEY_HANDLE_INVALID (never CKR_OBJECT_HANDLE_INVALID, which the spec does not list there).
const LOGGED_OUT: &[CK_RV] = &[CKR_USER_NOT_LOGGED_IN, CKR_KEY_HANDLE_INVALID];

fn sign(x: &Shared, s: CK_SESSION_HANDLE, data: &[u8]) -> Option<Vec<u8>> {
    let f = x.b.f;
    let mut m = mech(CKM_ECDSA);
    let also: Vec<CK_RV> = [OP_RACE, LOGGED_OUT].concat();
    let rv = x.record(
        "C_SignInit",
        call!(f, C_SignInit(s, &mut m, x.ec_priv.load(SeqCst))),
        &also,
    );
    if rv != CKR_OK {
        x.key_refused(s, rv, &x.ec_priv, CKO_PRIVATE_KEY, "ec-p256");
        return None;
    }
    let mut sig = [0u8; 128];
    let mut n: CK_ULONG = 0;
    // Two-call convention: length, then the signature.
    let rv = call!(
        f,
        C_Sign(
            s,
            data.as_ptr() as *mut _,
            data.len() as CK_ULONG,
            null_mut(),
            &mut n
        )
    );
    if x.record("C_Sign (length)", rv, &also) != CKR_OK {
        return None;
    }
    let rv = call!(
        f,
        C_Sign(
            s,
            data.as_ptr() as *mut _,
            data.len() as CK_ULONG,
            sig.as_mut_ptr(),
            &mut n
        )
    );
    if x.record("C_Sign", rv, &also) != CKR_OK {
        return None;
    }
    Some(sig[..n as usize].to_vec())
}

fn verify(x: &Shared, s: CK_SESSION_HANDLE, data: &[u8], sig: &[u8]) -> CK_RV {
    let f = x.b.f;
    let mut m = mech(CKM_ECDSA);
    let also: Vec<CK_RV> = [OP_RACE, &[CKR_KEY_HANDLE_INVALID]].concat();
    let rv = x.record(
        "C_VerifyInit",
        call!(f, C_VerifyInit(s, &mut m, x.ec_pub.load(SeqCst))),
        &also,
    );
    if rv != CKR_OK {
        // Handles found in a session that is gone may be gone too (§4.4): find the key again.
        x.key_refused(s, rv, &x.ec_pub, CKO_PUBLIC_KEY, "ec-p256");
        return rv;
    }
    let rv = call!(
        f,
        C_Verify(
            s,
            data.as_ptr() as *mut _,
            data.len() as CK_ULONG,
            sig.as_ptr() as *mut _,
            sig.len() as CK_ULONG
        )
    );
    x.record(
        "C_Verify",
        rv,
        &[CKR_OPERATION_NOT_INITIALIZED, CKR_SIGNATURE_INVALID],
    )
}

fn crypt(
    x: &Shared,
    s: CK_SESSION_HANDLE,
    encrypt: bool,
    iv: &mut [u8; 16],
    input: &[u8],
) -> Option<Vec<u8>> {
    let f = x.b.f;
    let mut m = CK_MECHANISM {
        mechanism: CKM_AES_CBC_PAD,
        pParameter: iv.as_mut_ptr() as *mut _,
        ulParameterLen: 16,
    };
    let also: Vec<CK_RV> = [OP_RACE, LOGGED_OUT].concat();
    let (init, op) = if encrypt {
        ("C_EncryptInit", "C_Encrypt")
    } else {
        ("C_DecryptInit", "C_Decrypt")
    };
    let key = x.aes.load(SeqCst);
    let rv = if encrypt {
        call!(f, C_EncryptInit(s, &mut m, key))
    } else {
        call!(f, C_DecryptInit(s, &mut m, key))
    };
    if x.record(init, rv, &also) != CKR_OK {
        x.key_refused(s, rv, &x.aes, CKO_SECRET_KEY, "aes-256");
        return None;
    }
    let mut out = vec![0u8; input.len() + 32];
    let mut n = out.len() as CK_ULONG;
    let rv = if encrypt {
        call!(
            f,
            C_Encrypt(
                s,
                input.as_ptr() as *mut _,
                input.len() as CK_ULONG,
                out.as_mut_ptr(),
                &mut n
            )
        )
    } else {
        call!(
            f,
            C_Decrypt(
                s,
                input.as_ptr() as *mut _,
                input.len() as CK_ULONG,
                out.as_mut_ptr(),
                &mut n
            )
        )
    };
    if x.record(op, rv, &also) != CKR_OK {
        return None;
    }
    out.truncate(n as usize);
    Some(out)
}

fn worker(x: Arc<Shared>, id: usize, iterations: usize) {
    let f = x.b.f;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((id as u64 + 1) * 0x1234_5678_9ABC));
    let mut own: Option<CK_SESSION_HANDLE> = None;
    let pin = PIN.get().unwrap();
    for _ in 0..iterations {
        x.done.fetch_add(1, SeqCst);
        // The session to use: the shared one, or our own (opened when missing).
        let use_shared = rng.below(2) == 0;
        let s = if use_shared {
            x.session.load(SeqCst)
        } else {
            match own {
                Some(s) => s,
                None => {
                    let mut h = 0;
                    let flags = if rng.below(4) == 0 {
                        CKF_SERIAL_SESSION
                    } else {
                        RW
                    };
                    let rv = call!(f, C_OpenSession(x.slot, flags, null_mut(), None, &mut h));
                    if x.record("C_OpenSession", rv, &[]) == CKR_OK {
                        own = Some(h);
                    }
                    continue;
                }
            }
        };
        match rng.below(100) {
            0..=4 => {
                // Close (and for the shared session, replace it).
                let rv = x.record("C_CloseSession", call!(f, C_CloseSession(s)), &[]);
                if use_shared {
                    let mut h = 0;
                    let rv = call!(f, C_OpenSession(x.slot, RW, null_mut(), None, &mut h));
                    if x.record("C_OpenSession", rv, &[]) == CKR_OK {
                        x.session.store(h, SeqCst);
                    }
                } else if rv == CKR_OK || rv == CKR_SESSION_HANDLE_INVALID {
                    own = None;
                }
            }
            5..=14 => {
                let rv = call!(
                    f,
                    C_Login(s, CKU_USER, pin.as_ptr() as *mut _, pin.len() as CK_ULONG)
                );
                x.record("C_Login", rv, &[CKR_USER_ALREADY_LOGGED_IN]);
            }
            15..=16 => {
                let rv = call!(f, C_Logout(s));
                x.record("C_Logout", rv, &[CKR_USER_NOT_LOGGED_IN]);
            }
            17..=34 => {
                let mut class = CKO_PUBLIC_KEY;
                let mut t = [module::attr(CKA_CLASS, &mut class)];
                let rv = call!(f, C_FindObjectsInit(s, t.as_mut_ptr(), 1));
                if x.record("C_FindObjectsInit", rv, &[CKR_OPERATION_ACTIVE]) == CKR_OK {
                    let mut hs = [0 as CK_OBJECT_HANDLE; 16];
                    let mut n: CK_ULONG = 0;
                    let rv = call!(f, C_FindObjects(s, hs.as_mut_ptr(), 16, &mut n));
                    x.record("C_FindObjects", rv, &[CKR_OPERATION_NOT_INITIALIZED]);
                    let rv = call!(f, C_FindObjectsFinal(s));
                    x.record("C_FindObjectsFinal", rv, &[CKR_OPERATION_NOT_INITIALIZED]);
                }
            }
            35..=74 => {
                let data: Vec<u8> = (0..32).map(|_| rng.next() as u8).collect();
                if let Some(sig) = sign(&x, s, &data) {
                    // Checked on a session of our own (nobody else closes it).
                    let mut h = 0;
                    let rv = call!(
                        f,
                        C_OpenSession(x.slot, CKF_SERIAL_SESSION, null_mut(), None, &mut h)
                    );
                    if x.record("C_OpenSession", rv, &[]) == CKR_OK {
                        match verify(&x, h, &data, &sig) {
                            CKR_OK => {
                                x.verified.fetch_add(1, SeqCst);
                            }
                            CKR_SIGNATURE_INVALID => x.fail(format!(
                                "thread {id}: a signature C_Sign returned does not verify"
                            )),
                            _ => {}
                        }
                        let rv = call!(f, C_CloseSession(h));
                        x.record("C_CloseSession", rv, &[]);
                    }
                }
            }
            _ => {
                let data: Vec<u8> = (0..(rng.below(100) as usize))
                    .map(|_| rng.next() as u8)
                    .collect();
                let mut iv = [0u8; 16];
                iv.iter_mut().for_each(|b| *b = rng.next() as u8);
                let mut iv2 = iv;
                if let Some(ct) = crypt(&x, s, true, &mut iv, &data) {
                    if let Some(pt) = crypt(&x, s, false, &mut iv2, &ct) {
                        if pt == data {
                            x.roundtrips.fetch_add(1, SeqCst);
                        } else {
                            x.fail(format!("thread {id}: decrypt(encrypt(m)) != m"));
                        }
                    }
                }
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |name: &str, def: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
            .unwrap_or_else(|| def.to_string())
    };
    let threads: usize = opt("--threads", "16").parse().expect("--threads");
    let iterations: usize = opt("--iterations", "2000").parse().expect("--iterations");
    let watchdog: u64 = opt("--watchdog", "120").parse().expect("--watchdog");
    let bridge = args
        .iter()
        .position(|a| a == "--bridge")
        .and_then(|i| args.get(i + 1).map(std::path::PathBuf::from))
        .unwrap_or_else(env::bridge_so);
    // `--softhsm`: the same workload on SoftHSM2 directly (for comparison).
    let softhsm = args.iter().any(|a| a == "--softhsm");
    // `--no-finalize`: no concurrent C_Finalize (to tell its races from the others').
    let no_finalize = args.iter().any(|a| a == "--no-finalize");
    let (module_path, label, pin) = if softhsm {
        (
            std::path::PathBuf::from(env::SOFTHSM),
            "upstream",
            env::HSM_PIN,
        )
    } else {
        (bridge, "unified", env::BRIDGE_PIN)
    };
    PIN.set(pin).unwrap();

    let dir = env::repo_root().join(format!("target/conformance/stress-{}", std::process::id()));
    env::setup(&dir, &[], "");
    cases::set_target(cases::bridge_target());
    let b = module::load(&module_path);
    assert_eq!(b.initialize(), CKR_OK, "C_Initialize");
    let slot = b.slot_by_label(label);
    let s = b.open(slot, RW).expect("open");
    assert_eq!(b.login(s, CKU_USER, pin), CKR_OK, "login");
    let x = Arc::new(Shared {
        b,
        session: AtomicU64::new(s),
        ec_priv: AtomicU64::new(b.find_one(s, CKO_PRIVATE_KEY, "ec-p256")),
        ec_pub: AtomicU64::new(b.find_one(s, CKO_PUBLIC_KEY, "ec-p256")),
        aes: AtomicU64::new(b.find_one(s, CKO_SECRET_KEY, "aes-256")),
        slot,
        done: AtomicUsize::new(0),
        total: threads * iterations,
        finalized: AtomicBool::new(false),
        counts: Mutex::new(BTreeMap::new()),
        failures: Mutex::new(vec![]),
        verified: AtomicUsize::new(0),
        roundtrips: AtomicUsize::new(0),
        general_errors: AtomicUsize::new(0),
    });

    // Watchdog: a deadlock (or a hang) ends the run.
    let finished = Arc::new(AtomicBool::new(false));
    {
        let finished = finished.clone();
        let x = x.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(watchdog) {
                if finished.load(SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            eprintln!(
                "stress: DEADLOCK or hang: not done after {watchdog} s ({} of {} iterations started)",
                x.done.load(SeqCst),
                x.total
            );
            // Where everyone is stuck: gdb's backtraces of all threads, when gdb is there.
            let _ = std::process::Command::new("gdb")
                .args(["-q", "-batch", "-p", &std::process::id().to_string()])
                .args(["-ex", "thread apply all bt 25"])
                .stdout(std::process::Stdio::inherit())
                .stderr(std::process::Stdio::null())
                .status();
            println!("0 passed, 1 failed");
            unsafe { libc::_exit(2) }
        });
    }

    let t0 = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|id| {
            let x = x.clone();
            std::thread::spawn(move || worker(x, id, iterations))
        })
        .collect();
    // The finalizer: C_Finalize once 80 % of the iterations were started, while the others keep calling.
    let fin = {
        let x = x.clone();
        std::thread::spawn(move || {
            if no_finalize {
                return;
            }
            while x.done.load(SeqCst) < x.total * 8 / 10 {
                std::thread::yield_now();
            }
            let rv = call!(x.b.f, C_Finalize(null_mut()));
            x.record("C_Finalize", rv, &[]);
            x.finalized.store(true, SeqCst);
        })
    };
    if fin.join().is_err() {
        x.fail("the finalizer panicked".into());
    }
    for h in handles {
        if h.join().is_err() {
            x.fail("a thread panicked".into());
        }
    }
    let elapsed = t0.elapsed();

    // The module works again after the concurrent finalize.
    if no_finalize {
        let _ = b.finalize();
    }
    let rv = b.initialize();
    if rv != CKR_OK {
        x.fail(format!("C_Initialize after the run: {}", rv_name(rv)));
    } else {
        let s = b.open(slot, RW).expect("open after the run");
        let _ = b.login(s, CKU_USER, pin);
        let k = b.find_one(s, CKO_PRIVATE_KEY, "ec-p256");
        let p = b.find_one(s, CKO_PUBLIC_KEY, "ec-p256");
        match b.ecdsa_sign(s, k, &[5u8; 32]) {
            Ok(sig) if b.ecdsa_verify(s, p, &[5u8; 32], &sig) == CKR_OK => {}
            other => x.fail(format!("sign/verify after the run: {other:?}")),
        }
        let _ = b.finalize();
    }
    finished.store(true, SeqCst);

    let counts = x.counts.lock().unwrap();
    let calls: usize = counts.values().sum();
    println!("{:24} {:34} {:>8}", "operation", "rv", "count");
    for ((op, rv), n) in counts.iter() {
        println!("{op:24} {rv:34} {n:>8}");
    }
    let failures = x.failures.lock().unwrap();
    println!(
        "\nstress: {threads} threads × {iterations} iterations, {calls} calls in {:.1} s ({:.0} calls/s); {} signatures verified, {} encrypt/decrypt round trips; C_Finalize concurrent with the others",
        elapsed.as_secs_f64(),
        calls as f64 / elapsed.as_secs_f64(),
        x.verified.load(SeqCst),
        x.roundtrips.load(SeqCst)
    );
    println!(
        "{} × CKR_GENERAL_ERROR (allowed everywhere, §5.1.1; seen from SoftHSM2 itself when another thread logs out while a call reads a private object)",
        x.general_errors.load(SeqCst)
    );
    for f in failures.iter() {
        println!("  FAIL {f}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{} passed, {} failed",
        calls.saturating_sub(failures.len()),
        failures.len()
    );
    std::process::exit(if failures.is_empty() { 0 } else { 1 });
}
