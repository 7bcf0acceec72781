//! The C ABI: every entry point catches panics, checks pointers and lengths, converts arguments into borrowed
//! Rust views, calls the core, and turns the `Result` into the `CK_RV` the spec names. It holds no state.

mod functions;
mod lists;
mod vendor;

pub use functions::*;
pub use lists::*;
pub use vendor::*;

use cryptoki_sys::*;
use p11bridge_backends::{diag, Error, Mechanism, Out, Result, Template};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The largest single buffer we accept from a caller (1 GiB): a larger length is taken as garbage
/// (`CKR_ARGUMENTS_BAD`) rather than trusted into a slice.
pub const MAX_LEN: usize = 1 << 30;
/// The most attributes in one template.
pub const MAX_ATTRS: usize = 1 << 16;

/// Runs one entry point: a panic becomes `CKR_GENERAL_ERROR` and never crosses into the caller's process.
pub fn guard(name: &'static str, f: impl FnOnce() -> Result<()>) -> CK_RV {
    let mark = diag::mark();
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => {
            tracing::trace!(function = name, "CKR_OK");
            CKR_OK
        }
        Ok(Err(e)) => {
            tracing::debug!(function = name, rv = %e, "returned");
            // The cause travels with the error: the calling thread can read it (C_P11BRIDGE_GetLastError). A
            // length answer is no failure; an error without a cause does not overwrite a cause recorded during
            // this call (by a backend that reported it).
            if e.rv() != CKR_BUFFER_TOO_SMALL {
                match (diag::mark() == mark, e.cause()) {
                    (true, Some(c)) => diag::set_last(e.rv(), format!("{name}: {c}")),
                    (true, None) => diag::set_last(e.rv(), String::new()),
                    // A backend reported the cause in words during this call: keep its text.
                    (false, _) => {
                        if let Some((_, text)) = diag::last() {
                            diag::set_last(e.rv(), text);
                        }
                    }
                }
            }
            e.rv()
        }
        Err(panic) => {
            let msg = panic_message(panic.as_ref());
            tracing::error!(function = name, "internal error (panic caught): {msg}");
            diag::set_last(
                CKR_GENERAL_ERROR,
                format!("{name}: internal error (panic caught): {msg}"),
            );
            CKR_GENERAL_ERROR
        }
    }
}

/// The text of a caught panic (its `&str` or `String` payload; empty for any other).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// Defines an exported `extern "C"` PKCS#11 function whose body returns `Result<()>`.
macro_rules! cryptoki_fn {
    ($(#[$m:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        #[no_mangle]
        #[allow(non_snake_case, clippy::missing_safety_doc)]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> CK_RV {
            $crate::abi::guard(stringify!($name), || -> $crate::Result<()> { $body })
        }
    };
}
pub(crate) use cryptoki_fn;

fn bad() -> Error {
    Error::new(CKR_ARGUMENTS_BAD)
}

/// Input bytes: a NULL pointer or an absurd length is `CKR_ARGUMENTS_BAD`.
///
/// # Safety
/// `p` must point to `n` readable bytes for `'a` (the caller's contract).
pub unsafe fn in_bytes<'a>(p: *const u8, n: CK_ULONG) -> Result<&'a [u8]> {
    if p.is_null() || n as u128 > MAX_LEN as u128 {
        return Err(bad());
    }
    Ok(if n == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(p, n as usize)
    })
}

/// Optional input bytes (PINs: NULL means "protected authentication path").
///
/// # Safety
/// As [`in_bytes`].
pub unsafe fn opt_bytes<'a>(p: *const u8, n: CK_ULONG) -> Result<Option<&'a [u8]>> {
    if p.is_null() {
        return Ok(None);
    }
    in_bytes(p, n).map(Some)
}

/// An output buffer with its in/out length. A NULL length pointer is `CKR_ARGUMENTS_BAD`; a NULL buffer asks for
/// the length.
pub struct OutBuf {
    p: *mut u8,
    plen: *mut CK_ULONG,
}

impl OutBuf {
    /// # Safety
    /// `plen` must be valid for reads and writes; `p`, when not NULL, must have `*plen` writable bytes.
    pub unsafe fn new(p: *mut u8, plen: *mut CK_ULONG) -> Result<OutBuf> {
        if plen.is_null() {
            return Err(bad());
        }
        Ok(OutBuf { p, plen })
    }

    /// The buffer as a slice (`None` for a length query). A stated size beyond [`MAX_LEN`] is clamped: we never
    /// write more than the result.
    pub fn buf(&mut self) -> Out<'_> {
        if self.p.is_null() {
            None
        } else {
            // SAFETY: the caller's contract (see `new`).
            let n = unsafe { *self.plen } as u128;
            let n = n.min(MAX_LEN as u128) as usize;
            Some(unsafe { std::slice::from_raw_parts_mut(self.p, n) })
        }
    }

    /// Writes the length of the result (or the length needed, for `CKR_BUFFER_TOO_SMALL`).
    pub fn finish(self, r: Result<usize>) -> Result<()> {
        // SAFETY: checked non-null in `new`.
        unsafe {
            match r {
                Ok(n) => {
                    *self.plen = n as CK_ULONG;
                    Ok(())
                }
                Err(e) => {
                    if let Some(n) = e.needed() {
                        *self.plen = n as CK_ULONG;
                    }
                    Err(e)
                }
            }
        }
    }
}

/// An input template. NULL with a count is `CKR_ARGUMENTS_BAD`; NULL with 0 is empty (unless `required`).
///
/// # Safety
/// `p` must point to `n` attributes whose values follow the caller's contract.
pub unsafe fn template<'a>(
    p: *const CK_ATTRIBUTE,
    n: CK_ULONG,
    required: bool,
) -> Result<Template<'a>> {
    if p.is_null() {
        return if n == 0 && !required {
            Ok(Template::null())
        } else {
            Err(bad())
        };
    }
    if n as u128 > MAX_ATTRS as u128 {
        return Err(bad());
    }
    let s: &[CK_ATTRIBUTE] = if n == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(p, n as usize)
    };
    // An absurd value length is garbage, not a buffer: never let it reach a backend (an upstream may trust it).
    if s.iter().any(|a| a.ulValueLen as u128 > MAX_LEN as u128) {
        return Err(bad());
    }
    // A value pointer that is NULL with a length is no value: SoftHSM2 2.6.1 reads through it (a CK_BBOOL of a
    // C_FindObjectsInit template: SIGSEGV, conformance/fuzz/crashes/). §5.1.6: an invalid attribute value.
    if let Some(a) = s.iter().find(|a| a.pValue.is_null() && a.ulValueLen != 0) {
        return Err(Error::with(
            CKR_ATTRIBUTE_VALUE_INVALID,
            format!(
                "attribute 0x{:x} of the template has a NULL value pointer with a length of {}",
                a.type_, a.ulValueLen
            ),
        ));
    }
    Ok(Template::from_raw(s))
}

/// An output template (`C_GetAttributeValue`).
///
/// # Safety
/// As [`template`], with writable attribute structures.
pub unsafe fn template_mut<'a>(
    p: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
) -> Result<&'a mut [CK_ATTRIBUTE]> {
    if p.is_null() || n as u128 > MAX_ATTRS as u128 {
        return Err(bad());
    }
    Ok(if n == 0 {
        &mut []
    } else {
        std::slice::from_raw_parts_mut(p, n as usize)
    })
}

/// A mechanism pointer: `None` for NULL (which some functions give a meaning).
///
/// # Safety
/// `p` must point to a `CK_MECHANISM` whose parameter follows the caller's contract.
pub unsafe fn mechanism<'a>(p: *const CK_MECHANISM) -> Result<Option<Mechanism<'a>>> {
    if p.is_null() {
        return Ok(None);
    }
    let m = std::ptr::read_unaligned(p);
    if m.ulParameterLen as u128 > MAX_LEN as u128 {
        return Err(bad());
    }
    Mechanism::from_raw(m).map(Some)
}

/// A required mechanism.
///
/// # Safety
/// As [`mechanism`].
pub unsafe fn mechanism_req<'a>(p: *const CK_MECHANISM) -> Result<Mechanism<'a>> {
    mechanism(p)?.ok_or_else(bad)
}

/// Writes one value through a caller pointer.
///
/// # Safety
/// `p`, when not NULL, must be valid for a write of `T`.
pub unsafe fn put<T>(p: *mut T, v: T) -> Result<()> {
    if p.is_null() {
        return Err(bad());
    }
    std::ptr::write_unaligned(p, v);
    Ok(())
}

/// The two-call convention for arrays of `CK_ULONG`-sized items (slot and mechanism lists).
///
/// # Safety
/// `pcount` valid; `p`, when not NULL, has room for `*pcount` items.
pub unsafe fn put_list<T: Copy>(items: &[T], p: *mut T, pcount: *mut CK_ULONG) -> Result<()> {
    if pcount.is_null() {
        return Err(bad());
    }
    let n = items.len();
    if p.is_null() {
        *pcount = n as CK_ULONG;
        return Ok(());
    }
    if (*pcount as u128) < n as u128 {
        *pcount = n as CK_ULONG;
        return Err(Error::new(CKR_BUFFER_TOO_SMALL));
    }
    std::ptr::copy_nonoverlapping(items.as_ptr(), p, n);
    *pcount = n as CK_ULONG;
    Ok(())
}
