//! `fork()` through the raw C ABI (PKCS#11 2.40 §6.7.6 / 3.0 §5.4: a child process must call `C_Initialize` before
//! using the library; until then every call says `CKR_CRYPTOKI_NOT_INITIALIZED`, and the parent's sessions and
//! login are not the child's).
//!
//! One test function, so that the sub-cases run in order in one process: a fork from a parent that never
//! initialized, then from an initialized and logged-in parent (which keeps signing while the child runs), then
//! forks while another thread of the parent is in the middle of signing. Each child reports through its exit status
//! (and its failures on stderr); the parent kills a child that has not exited within 30 s and fails (a hang is a
//! failure).

mod common;
mod raw;

use cryptoki_sys::*;
use raw::{bridge, call, mech, rv_name, Bridge};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RW: CK_FLAGS = CKF_SERIAL_SESSION | CKF_RW_SESSION;
const CHILD_TIMEOUT: Duration = Duration::from_secs(30);

/// Failures seen in a child.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn rv(&mut self, what: &str, got: CK_RV, want: CK_RV) {
        if got != want {
            self.0.push(format!(
                "{what}: expected {}, got {}",
                rv_name(want),
                rv_name(got)
            ));
        }
    }
}

/// Forks; the child runs `child` and exits 0 only if it reported no failure (without running any destructor or
/// atexit handler of the parent's). The parent runs `meanwhile` repeatedly until the child exits, and returns the
/// child's failure, if any.
fn fork_and_wait(
    child: impl FnOnce(&mut Failures),
    mut meanwhile: impl FnMut(),
) -> Result<(), String> {
    // SAFETY: the child only calls the module and async-signal-tolerant libc functions, then _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let mut f = Failures::default();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| child(&mut f)));
        if r.is_err() {
            f.0.push("the child panicked".into());
        }
        let code = if f.0.is_empty() {
            0
        } else {
            let msg = format!("fork child {}: {}\n", std::process::id(), f.0.join("; "));
            // SAFETY: writing our own buffer to stderr.
            unsafe { libc::write(2, msg.as_ptr() as *const libc::c_void, msg.len()) };
            1
        };
        // SAFETY: leaves the child at once.
        unsafe { libc::_exit(code) };
    }
    let start = Instant::now();
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(r >= 0, "waitpid: {}", std::io::Error::last_os_error());
        if r == pid {
            break;
        }
        if start.elapsed() > CHILD_TIMEOUT {
            // SAFETY: our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return Err(format!("the child hung (killed after {CHILD_TIMEOUT:?})"));
        }
        meanwhile();
        std::thread::sleep(Duration::from_millis(5));
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else if libc::WIFEXITED(status) {
        Err(format!(
            "the child exited with status {} (its failures are on stderr)",
            libc::WEXITSTATUS(status)
        ))
    } else {
        Err(format!(
            "the child died of signal {}",
            libc::WTERMSIG(status)
        ))
    }
}

/// Everything a fresh child must be able to do after its own `C_Initialize`: a session on the unified token, login,
/// an ECDSA signature verified with `C_Verify`, and `C_Finalize`.
fn child_works(b: &Bridge, f: &mut Failures) {
    f.rv("C_Initialize in the child", b.initialize(), CKR_OK);
    let u = b.slot_by_label("unified");
    let s = match b.open(u, RW) {
        Ok(s) => s,
        Err(rv) => {
            f.rv("C_OpenSession in the child", rv, CKR_OK);
            return;
        }
    };
    f.rv(
        "C_Login in the child",
        b.login(s, CKU_USER, common::BRIDGE_PIN),
        CKR_OK,
    );
    let (k, pk) = match (
        b.find(s, CKO_PRIVATE_KEY, "ec-p256"),
        b.find(s, CKO_PUBLIC_KEY, "ec-p256"),
    ) {
        (Ok(k), Ok(pk)) if k.len() == 1 && pk.len() == 1 => (k[0], pk[0]),
        other => {
            f.0.push(format!("key search in the child: {other:?}"));
            return;
        }
    };
    let data = [0x42u8; 32];
    match b.ecdsa_sign(s, k, &data) {
        Ok(sig) => f.rv(
            "C_Verify in the child",
            b.ecdsa_verify(s, pk, &data, &sig),
            CKR_OK,
        ),
        Err(rv) => f.rv("ECDSA sign in the child", rv, CKR_OK),
    }
    f.rv("C_Finalize in the child", b.finalize(), CKR_OK);
}

/// The parent's own signing session.
struct Signer {
    s: CK_SESSION_HANDLE,
    k: CK_OBJECT_HANDLE,
    pk: CK_OBJECT_HANDLE,
}

impl Signer {
    fn new(b: &Bridge) -> Signer {
        let u = b.slot_by_label("unified");
        let s = b.open(u, RW).expect("C_OpenSession");
        let rv = b.login(s, CKU_USER, common::BRIDGE_PIN);
        assert!(
            rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN,
            "C_Login: {}",
            rv_name(rv)
        );
        Signer {
            s,
            k: b.find_one(s, CKO_PRIVATE_KEY, "ec-p256"),
            pk: b.find_one(s, CKO_PUBLIC_KEY, "ec-p256"),
        }
    }

    /// Signs and verifies once, or panics.
    fn sign(&self, b: &Bridge, i: usize) {
        let mut data = [0u8; 32];
        data[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let sig = b
            .ecdsa_sign(self.s, self.k, &data)
            .unwrap_or_else(|rv| panic!("parent sign {i}: {}", rv_name(rv)));
        assert_eq!(
            b.ecdsa_verify(self.s, self.pk, &data, &sig),
            CKR_OK,
            "parent verify {i}"
        );
    }
}

#[test]
fn fork() {
    common::env();
    let b = bridge();

    // 1. A parent that never called C_Initialize: the child initializes and works.
    fork_and_wait(
        |f| {
            let mut info: CK_INFO = unsafe { std::mem::zeroed() };
            f.rv(
                "C_GetInfo in the child of an uninitialized parent",
                call!(b.f, C_GetInfo(&mut info)),
                CKR_CRYPTOKI_NOT_INITIALIZED,
            );
            child_works(b, f);
        },
        || {},
    )
    .unwrap_or_else(|e| panic!("fork from an uninitialized parent: {e}"));

    // 2. An initialized, logged-in parent in the middle of its work.
    assert_eq!(b.initialize(), CKR_OK, "C_Initialize");
    let p = Signer::new(b);
    p.sign(b, 0);
    let u = b.slot_by_label("unified");
    let mut parent_signs = 1;
    fork_and_wait(
        |f| {
            let ni = CKR_CRYPTOKI_NOT_INITIALIZED;
            let mut n: CK_ULONG = 0;
            f.rv(
                "C_GetSlotList in the child",
                call!(b.f, C_GetSlotList(CK_TRUE, null_mut(), &mut n)),
                ni,
            );
            let mut info: CK_INFO = unsafe { std::mem::zeroed() };
            f.rv(
                "C_GetInfo in the child",
                call!(b.f, C_GetInfo(&mut info)),
                ni,
            );
            let mut h: CK_SESSION_HANDLE = 0;
            f.rv(
                "C_OpenSession in the child",
                call!(b.f, C_OpenSession(u, RW, null_mut(), None, &mut h)),
                ni,
            );
            let mut si: CK_SESSION_INFO = unsafe { std::mem::zeroed() };
            f.rv(
                "C_GetSessionInfo of the parent's session",
                call!(b.f, C_GetSessionInfo(p.s, &mut si)),
                ni,
            );
            let mut m = mech(CKM_ECDSA);
            f.rv(
                "C_SignInit on the parent's session",
                call!(b.f, C_SignInit(p.s, &mut m, p.k)),
                ni,
            );
            let data = [1u8; 32];
            let mut sig = [0u8; 128];
            let mut len: CK_ULONG = 128;
            f.rv(
                "C_Sign on the parent's session",
                call!(
                    b.f,
                    C_Sign(
                        p.s,
                        data.as_ptr() as *mut u8,
                        32,
                        sig.as_mut_ptr(),
                        &mut len
                    )
                ),
                ni,
            );
            f.rv(
                "C_CloseSession of the parent's session",
                call!(b.f, C_CloseSession(p.s)),
                ni,
            );
            f.rv("C_Finalize before C_Initialize", b.finalize(), ni);
            // Now the child's own module.
            f.rv("C_Initialize in the child", b.initialize(), CKR_OK);
            f.rv(
                "the parent's session after the child's C_Initialize",
                call!(b.f, C_GetSessionInfo(p.s, &mut si)),
                CKR_SESSION_HANDLE_INVALID,
            );
            // The parent's login is not the child's.
            if let Ok(s) = b.open(u, RW) {
                f.rv(
                    "C_GetSessionInfo in the child",
                    call!(b.f, C_GetSessionInfo(s, &mut si)),
                    CKR_OK,
                );
                if si.state != CKS_RW_PUBLIC_SESSION {
                    f.0.push(format!("a new session in the child has state {}", si.state));
                }
                let _ = call!(b.f, C_CloseSession(s));
            }
            f.rv("C_Finalize", b.finalize(), CKR_OK);
            child_works(b, f);
        },
        || {
            p.sign(b, parent_signs);
            parent_signs += 1;
        },
    )
    .unwrap_or_else(|e| panic!("fork from an initialized parent: {e}"));
    // The parent goes on: its session, its login, its module.
    let mut si: CK_SESSION_INFO = unsafe { std::mem::zeroed() };
    assert_eq!(call!(b.f, C_GetSessionInfo(p.s, &mut si)), CKR_OK);
    assert_eq!(
        si.state, CKS_RW_USER_FUNCTIONS,
        "the parent is still logged in"
    );
    for i in 0..20 {
        p.sign(b, 10_000 + i);
    }
    eprintln!("fork: the parent signed {parent_signs} times while its child ran");

    // 3. Forks while another thread of the parent is inside the module (its locks may be held at the fork).
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let worker = {
        let (stop, done) = (stop.clone(), done.clone());
        std::thread::spawn(move || {
            let w = Signer::new(b);
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                w.sign(b, 20_000 + i);
                i += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            assert_eq!(call!(b.f, C_CloseSession(w.s)), CKR_OK);
        })
    };
    for round in 0..5 {
        // Let the worker get going, then fork in the middle of its calls.
        let seen = done.load(Ordering::Relaxed);
        let wait = Instant::now();
        while done.load(Ordering::Relaxed) == seen && wait.elapsed() < Duration::from_secs(10) {
            std::thread::yield_now();
        }
        fork_and_wait(|f| child_works(b, f), || {})
            .unwrap_or_else(|e| panic!("fork {round} while another thread signs: {e}"));
    }
    stop.store(true, Ordering::Relaxed);
    worker.join().expect("the signing thread");
    assert!(done.load(Ordering::Relaxed) > 0);

    p.sign(b, 30_000);
    assert_eq!(call!(b.f, C_CloseSession(p.s)), CKR_OK);
    assert_eq!(b.finalize(), CKR_OK, "C_Finalize");
}
