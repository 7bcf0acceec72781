//! p11bridge's own exported functions, declared in `include/p11bridge.h`. They are not in any function list: a C
//! consumer finds them with `dlsym`. Like every entry point they catch panics and check their pointers.

use cryptoki_sys::*;
use p11bridge_backends::diag;
use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Copies `text` by the two-call convention; `Ok(true)` when it was copied.
///
/// # Safety
/// `plen` valid for reads and writes; `p`, when not NULL, has `*plen` writable bytes.
unsafe fn put_text(text: &[u8], p: *mut u8, plen: *mut CK_ULONG) -> Result<bool, CK_RV> {
    if plen.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    if p.is_null() {
        *plen = text.len() as CK_ULONG;
        return Ok(false);
    }
    if (*plen as u128) < text.len() as u128 {
        *plen = text.len() as CK_ULONG;
        return Err(CKR_BUFFER_TOO_SMALL);
    }
    std::ptr::copy_nonoverlapping(text.as_ptr(), p, text.len());
    *plen = text.len() as CK_ULONG;
    Ok(true)
}

/// `CK_RV C_P11BRIDGE_GetLastError(CK_RV *pRv, CK_UTF8CHAR_PTR pText, CK_ULONG_PTR pulTextLen)`: the cause of the
/// calling thread's last failure — the `CK_RV` it returned (`CKR_OK` when nothing failed, or when a call succeeded
/// but hid a backend's keys) and a UTF-8 text (not NUL-terminated) in the backend's own words: which backend, which
/// endpoint or key, what it answered. Works before `C_Initialize` (a failed `C_Initialize` leaves its cause here).
/// Two-call convention on the text; a successful copy clears the record. `pRv` may be NULL.
///
/// # Safety
/// As any PKCS#11 output buffer.
#[no_mangle]
#[allow(non_snake_case)]
pub unsafe extern "C" fn C_P11BRIDGE_GetLastError(
    pRv: *mut CK_RV,
    pText: *mut CK_UTF8CHAR,
    pulTextLen: *mut CK_ULONG,
) -> CK_RV {
    catch_unwind(AssertUnwindSafe(|| {
        let (rv, text) = diag::last().unwrap_or((CKR_OK, String::new()));
        match put_text(text.as_bytes(), pText, pulTextLen) {
            Ok(copied) => {
                if !pRv.is_null() {
                    std::ptr::write_unaligned(pRv, rv);
                }
                if copied {
                    diag::take_last();
                }
                CKR_OK
            }
            Err(rv) => rv,
        }
    }))
    .unwrap_or(CKR_GENERAL_ERROR)
}

thread_local! {
    /// A check report whose length was asked for, kept for the call that fetches it.
    static REPORT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// `CK_RV C_P11BRIDGE_Check(CK_UTF8CHAR_PTR pReport, CK_ULONG_PTR pulReportLen)`: checks every backend of every slot
/// now — logs each in with its configured credentials, lists its objects, resolves the configured keys, reads each
/// slot's PIN reference — and returns the result as UTF-8 JSON (the layout is in docs/check.md). Makes network
/// calls and logs backends in and out: meant for `p11bridge check` in a process of its own. The first call (NULL
/// `pReport`) runs the checks and returns the length; the next call on the same thread returns that same report.
///
/// # Safety
/// As any PKCS#11 output buffer.
#[no_mangle]
#[allow(non_snake_case)]
pub unsafe extern "C" fn C_P11BRIDGE_Check(
    pReport: *mut CK_UTF8CHAR,
    pulReportLen: *mut CK_ULONG,
) -> CK_RV {
    catch_unwind(AssertUnwindSafe(|| {
        if pulReportLen.is_null() {
            return CKR_ARGUMENTS_BAD;
        }
        let report = match REPORT.with(|r| r.borrow_mut().take()) {
            Some(r) => r,
            None => match crate::core::check::report() {
                Ok(r) => r,
                Err(e) => return e.rv(),
            },
        };
        match put_text(report.as_bytes(), pReport, pulReportLen) {
            Ok(true) => CKR_OK,
            Ok(false) => {
                REPORT.with(|r| *r.borrow_mut() = Some(report));
                CKR_OK
            }
            Err(rv) => {
                if rv == CKR_BUFFER_TOO_SMALL {
                    REPORT.with(|r| *r.borrow_mut() = Some(report));
                }
                rv
            }
        }
    }))
    .unwrap_or(CKR_GENERAL_ERROR)
}
