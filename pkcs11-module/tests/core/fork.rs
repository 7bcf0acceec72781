//! Fork: a child sees the module as not initialized until its own `C_Initialize`, then works; the parent is not
//! disturbed.

use crate::common::*;
use cryptoki_sys::*;
use std::ptr::null_mut;

/// Runs `child` in a forked process and returns its exit code (the child ends with `_exit`, never unwinding into
/// the test harness).
fn in_child(child: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child only calls the module and `_exit`; the tests are serialized, so no other test thread is
    // inside the module.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child)).unwrap_or(101);
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status),
        "child exited normally: {status:#x}"
    );
    libc::WEXITSTATUS(status)
}

#[test]
fn a_forked_child_must_initialize_again() {
    let _b = Bridge::new(THREE);
    let h = user_session();
    let k = key(h, "a-ec", CKO_PRIVATE_KEY);
    let code = in_child(|| {
        let mut n = 0;
        if call!(C_GetSlotList, CK_FALSE, null_mut(), &mut n) != CKR_CRYPTOKI_NOT_INITIALIZED {
            return 1;
        }
        if attr(h, k, CKA_LABEL) != Err(CKR_CRYPTOKI_NOT_INITIALIZED) {
            return 2;
        }
        if call!(C_Initialize, null_mut()) != CKR_OK {
            return 3;
        }
        let h = open(0, false);
        if login(h, CKU_USER, USER_PIN) != CKR_OK {
            return 4;
        }
        let k = key(h, "a-ec", CKO_PRIVATE_KEY);
        let digest = sha256(b"child");
        let Ok(sig) = sign(h, &mech(CKM_ECDSA), k, &digest) else {
            return 5;
        };
        if !p256_verifies(&ec_point(h, key(h, "a-ec", CKO_PUBLIC_KEY)), &digest, &sig) {
            return 6;
        }
        if call!(C_Finalize, null_mut()) != CKR_OK {
            return 7;
        }
        0
    });
    assert_eq!(code, 0, "child step that failed");
    // The parent's session and login are untouched.
    let digest = sha256(b"parent");
    let sig = sign(h, &mech(CKM_ECDSA), k, &digest).expect("parent signs");
    assert!(p256_verifies(
        &ec_point(h, key(h, "a-ec", CKO_PUBLIC_KEY)),
        &digest,
        &sig
    ));
}
