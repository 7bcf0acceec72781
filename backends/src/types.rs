//! Borrowed views of caller memory that the ABI layer has checked, handed down to backends.
//!
//! PKCS#11 arguments are raw pointers owned by the caller for the duration of the call. The ABI layer checks the
//! outer pointers and lengths and wraps them here; the inner pointers (attribute values, mechanism parameters) stay
//! the caller's, as the C contract says, and are passed through intact to an upstream module.

use crate::{Error, Result};
use cryptoki_sys::*;
use std::marker::PhantomData;

/// A backend's reference to one of its objects (the upstream handle, or an index in a remote backend's table).
pub type ObjRef = u64;

/// An output buffer: `None` is a length query (`NULL` pointer), `Some` is the caller's buffer of the stated size.
pub type Out<'a> = Option<&'a mut [u8]>;

/// The single-key cryptographic operations of a session; each has its own state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    Encrypt = 0,
    Decrypt = 1,
    Digest = 2,
    Sign = 3,
    Verify = 4,
    SignRecover = 5,
    VerifyRecover = 6,
}

impl OpKind {
    /// The answer to a single-part call (`C_Sign`, `C_Verify`, `C_Encrypt`, ...) after the operation's `*Update`:
    /// §5.2 — a single-part call "cannot be used to terminate a multi-part operation". The operation ends, as the
    /// call always ends it; the code is SoftHSM2's for the same sequence (`CKR_OPERATION_NOT_INITIALIZED`: no
    /// single-part operation was initialized), so unified and mirror slots answer alike.
    pub fn single_part_after_update(self) -> Error {
        Error::with(
            CKR_OPERATION_NOT_INITIALIZED,
            format!(
                "a single-part call cannot finish a multi-part {self:?} operation (an update was made); the \
                 multi-part operation ends with its Final call"
            ),
        )
    }

    pub const ALL: [OpKind; 7] = [
        OpKind::Encrypt,
        OpKind::Decrypt,
        OpKind::Digest,
        OpKind::Sign,
        OpKind::Verify,
        OpKind::SignRecover,
        OpKind::VerifyRecover,
    ];
    /// The `CKF_*` flag for `C_SessionCancel`.
    pub fn cancel_flag(self) -> CK_FLAGS {
        match self {
            OpKind::Encrypt => CKF_ENCRYPT,
            OpKind::Decrypt => CKF_DECRYPT,
            OpKind::Digest => CKF_DIGEST,
            OpKind::Sign => CKF_SIGN,
            OpKind::Verify => CKF_VERIFY,
            OpKind::SignRecover => CKF_SIGN_RECOVER,
            OpKind::VerifyRecover => CKF_VERIFY_RECOVER,
        }
    }
}

/// A `CK_ATTRIBUTE` over `value`'s memory: a plain value (`CK_ULONG`, `CK_BBOOL`, ...) or a byte buffer, whose size
/// is the attribute's length. Read an attribute into it (`BackendSession::get_attributes`, by the rules of
/// `C_GetAttributeValue`) or use it as a search template entry; it points at `value`, so use it while `value` lives.
pub fn attribute<T: ?Sized>(type_: CK_ATTRIBUTE_TYPE, value: &mut T) -> CK_ATTRIBUTE {
    let len = std::mem::size_of_val(value);
    CK_ATTRIBUTE {
        type_,
        pValue: value as *mut T as *mut std::ffi::c_void,
        ulValueLen: len as CK_ULONG,
    }
}

/// The state of each active operation of a session, one per [`OpKind`] (empty until its `C_*Init`).
#[derive(Debug)]
pub struct ActiveOps<T>([Option<T>; OpKind::ALL.len()]);

impl<T> Default for ActiveOps<T> {
    fn default() -> Self {
        ActiveOps(Default::default())
    }
}

impl<T> ActiveOps<T> {
    pub fn get(&self, kind: OpKind) -> Option<&T> {
        self.0[kind as usize].as_ref()
    }
    pub fn get_mut(&mut self, kind: OpKind) -> Option<&mut T> {
        self.0[kind as usize].as_mut()
    }
    /// Ends the operation, handing out its state.
    pub fn take(&mut self, kind: OpKind) -> Option<T> {
        self.0[kind as usize].take()
    }
    /// Starts (or puts back) the operation's state.
    pub fn set(&mut self, kind: OpKind, state: T) {
        self.0[kind as usize] = Some(state);
    }
    pub fn clear(&mut self, kind: OpKind) {
        self.0[kind as usize] = None;
    }
    /// The states of the active operations, in [`OpKind::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.0.iter().flatten()
    }
}

/// The dual-function update calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DualKind {
    DigestEncrypt,
    DecryptDigest,
    SignEncrypt,
    DecryptVerify,
}

impl DualKind {
    /// The two operations a dual-function call advances.
    pub fn ops(self) -> (OpKind, OpKind) {
        match self {
            DualKind::DigestEncrypt => (OpKind::Digest, OpKind::Encrypt),
            DualKind::DecryptDigest => (OpKind::Decrypt, OpKind::Digest),
            DualKind::SignEncrypt => (OpKind::Sign, OpKind::Encrypt),
            DualKind::DecryptVerify => (OpKind::Decrypt, OpKind::Verify),
        }
    }
}

/// A mechanism as the caller passed it. The parameter block is the caller's (including any pointers inside it).
#[derive(Clone, Copy)]
pub struct Mechanism<'a> {
    raw: CK_MECHANISM,
    _life: PhantomData<&'a [u8]>,
}

impl<'a> Mechanism<'a> {
    /// # Safety
    /// `pParameter` must point to `ulParameterLen` readable bytes for `'a` (the caller's contract); the constructor
    /// itself refuses `NULL` with a non-zero length.
    pub unsafe fn from_raw(raw: CK_MECHANISM) -> Result<Self> {
        if raw.pParameter.is_null() && raw.ulParameterLen != 0 {
            return Err(Error::with(
                CKR_ARGUMENTS_BAD,
                "mechanism parameter is NULL with a length",
            ));
        }
        if raw.ulParameterLen as u128 > isize::MAX as u128 {
            return Err(Error::new(CKR_ARGUMENTS_BAD));
        }
        Ok(Mechanism {
            raw,
            _life: PhantomData,
        })
    }

    /// A mechanism without parameters.
    pub fn simple(mech: CK_MECHANISM_TYPE) -> Mechanism<'static> {
        Mechanism {
            raw: CK_MECHANISM {
                mechanism: mech,
                pParameter: std::ptr::null_mut(),
                ulParameterLen: 0,
            },
            _life: PhantomData,
        }
    }

    /// A mechanism whose parameter block is owned by the caller of this function (used to rewrite a parameter,
    /// e.g. to translate an object handle inside it).
    pub fn with_param<T>(mech: CK_MECHANISM_TYPE, param: &'a mut T) -> Mechanism<'a> {
        Mechanism {
            raw: CK_MECHANISM {
                mechanism: mech,
                pParameter: param as *mut T as *mut std::ffi::c_void,
                ulParameterLen: std::mem::size_of::<T>() as CK_ULONG,
            },
            _life: PhantomData,
        }
    }

    pub fn mech_type(&self) -> CK_MECHANISM_TYPE {
        self.raw.mechanism
    }

    /// The raw structure, for passing through to an upstream module.
    pub fn raw(&self) -> CK_MECHANISM {
        self.raw
    }

    /// The parameter block's bytes.
    pub fn param_bytes(&self) -> &'a [u8] {
        if self.raw.pParameter.is_null() {
            &[]
        } else {
            // SAFETY: checked non-null and bounded at construction; valid for 'a by the caller's contract.
            unsafe {
                std::slice::from_raw_parts(
                    self.raw.pParameter as *const u8,
                    self.raw.ulParameterLen as usize,
                )
            }
        }
    }

    /// The parameter block read as a `T` (a plain C struct), if its length is exactly `size_of::<T>()`;
    /// otherwise `CKR_MECHANISM_PARAM_INVALID`.
    pub fn param<T: Copy>(&self) -> Result<T> {
        let b = self.param_bytes();
        if b.len() != std::mem::size_of::<T>() {
            return Err(Error::with(
                CKR_MECHANISM_PARAM_INVALID,
                format!(
                    "parameter length {} != {}",
                    b.len(),
                    std::mem::size_of::<T>()
                ),
            ));
        }
        // SAFETY: length checked; read_unaligned copes with any alignment; T is a plain C struct.
        Ok(unsafe { std::ptr::read_unaligned(b.as_ptr() as *const T) })
    }
}

/// An input attribute template (caller-owned). Values are read only through [`Template::value`].
#[derive(Clone, Copy)]
pub struct Template<'a> {
    attrs: &'a [CK_ATTRIBUTE],
    /// The caller passed a NULL template (as opposed to a non-NULL pointer with a count of 0); passed through as is.
    null: bool,
}

impl<'a> Template<'a> {
    /// # Safety
    /// Each attribute's `pValue` must point to `ulValueLen` readable bytes (or be NULL) for `'a`.
    pub unsafe fn from_raw(attrs: &'a [CK_ATTRIBUTE]) -> Self {
        Template { attrs, null: false }
    }

    /// The template of a caller that passed a NULL pointer (count 0).
    pub fn null() -> Template<'static> {
        Template {
            attrs: &[],
            null: true,
        }
    }

    /// Whether the caller passed NULL.
    pub fn is_null(&self) -> bool {
        self.null
    }

    /// The same template with p11bridge's own attributes left out (the values stay the caller's).
    pub fn without(&self, keep: impl Fn(&CK_ATTRIBUTE) -> bool) -> Vec<CK_ATTRIBUTE> {
        self.attrs.iter().filter(|a| keep(a)).copied().collect()
    }

    pub fn raw(&self) -> &'a [CK_ATTRIBUTE] {
        self.attrs
    }

    pub fn len(&self) -> usize {
        self.attrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.attrs.is_empty()
    }

    /// The value of the first attribute of this type, if present. A NULL value with a length is
    /// `CKR_ATTRIBUTE_VALUE_INVALID`.
    pub fn value(&self, ty: CK_ATTRIBUTE_TYPE) -> Result<Option<&'a [u8]>> {
        match self.attrs.iter().find(|a| a.type_ == ty) {
            None => Ok(None),
            Some(a) => attr_bytes(a).map(Some),
        }
    }

    /// A `CK_BBOOL` attribute.
    pub fn bool_value(&self, ty: CK_ATTRIBUTE_TYPE) -> Result<Option<bool>> {
        match self.value(ty)? {
            None => Ok(None),
            Some([b]) => Ok(Some(*b != CK_FALSE)),
            Some(_) => Err(Error::with(
                CKR_ATTRIBUTE_VALUE_INVALID,
                "CK_BBOOL of wrong length",
            )),
        }
    }

    /// A `CK_ULONG` attribute.
    pub fn ulong_value(&self, ty: CK_ATTRIBUTE_TYPE) -> Result<Option<CK_ULONG>> {
        match self.value(ty)? {
            None => Ok(None),
            Some(b) if b.len() == std::mem::size_of::<CK_ULONG>() => {
                let mut a = [0u8; std::mem::size_of::<CK_ULONG>()];
                a.copy_from_slice(b);
                Ok(Some(CK_ULONG::from_ne_bytes(a)))
            }
            Some(_) => Err(Error::with(
                CKR_ATTRIBUTE_VALUE_INVALID,
                "CK_ULONG of wrong length",
            )),
        }
    }
}

/// The bytes of one attribute of an input template.
pub fn attr_bytes(a: &CK_ATTRIBUTE) -> Result<&[u8]> {
    if a.ulValueLen == 0 {
        return Ok(&[]);
    }
    if a.pValue.is_null() || a.ulValueLen as u128 > isize::MAX as u128 {
        return Err(Error::with(
            CKR_ATTRIBUTE_VALUE_INVALID,
            "attribute value NULL or too long",
        ));
    }
    // SAFETY: checked non-null and bounded; validity for the call is the caller's contract (Template::from_raw).
    Ok(unsafe { std::slice::from_raw_parts(a.pValue as *const u8, a.ulValueLen as usize) })
}

/// Fills one slot of a `C_GetAttributeValue` template by the spec's rules (§5.7): NULL `pValue` → length only;
/// too small → `CK_UNAVAILABLE_INFORMATION` and `CKR_BUFFER_TOO_SMALL`; otherwise copy.
pub fn fill_attr(a: &mut CK_ATTRIBUTE, value: &[u8]) -> CK_RV {
    if a.pValue.is_null() {
        a.ulValueLen = value.len() as CK_ULONG;
        CKR_OK
    } else if (a.ulValueLen as u128) < value.len() as u128 {
        a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
        CKR_BUFFER_TOO_SMALL
    } else {
        // SAFETY: pValue non-null with room for ulValueLen >= value.len() bytes (the caller's contract).
        unsafe { std::ptr::copy_nonoverlapping(value.as_ptr(), a.pValue as *mut u8, value.len()) };
        a.ulValueLen = value.len() as CK_ULONG;
        CKR_OK
    }
}

/// Combines the return values of a `C_GetAttributeValue` over several parts of a template, asked in order: the
/// first part's code that is not `CKR_OK` is the answer (every part is still asked, so each attribute is filled
/// or marked by the spec's rules).
pub fn combine_attr_rv(a: CK_RV, b: CK_RV) -> CK_RV {
    if a == CKR_OK {
        b
    } else {
        a
    }
}

/// Pads a string into a blank-padded fixed-size PKCS#11 text field.
pub fn pad<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [b' '; N];
    let mut n = 0;
    for c in s.chars() {
        let mut buf = [0u8; 4];
        let e = c.encode_utf8(&mut buf).as_bytes();
        if n + e.len() > N {
            break;
        }
        out[n..n + e.len()].copy_from_slice(e);
        n += e.len();
    }
    out
}

/// The text of a blank-padded PKCS#11 field, trailing blanks and NULs removed.
pub fn unpad(b: &[u8]) -> String {
    let end = b
        .iter()
        .rposition(|c| *c != b' ' && *c != 0)
        .map_or(0, |i| i + 1);
    String::from_utf8_lossy(&b[..end]).into_owned()
}
