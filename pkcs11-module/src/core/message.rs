//! PKCS#11 3.0 message-based encryption and decryption (`C_MessageEncryptInit`, `C_EncryptMessage`,
//! `C_MessageEncryptFinal` and the decrypt counterparts) for `CKM_AES_GCM`, emulated over the key's backend's
//! single-part `C_EncryptInit`/`C_Encrypt` (`C_DecryptInit`/`C_Decrypt`) with a `CK_GCM_PARAMS` built from each
//! message's `CK_GCM_MESSAGE_PARAMS`: so the 3.0 view over a 2.40 upstream (SoftHSM2 2.6.1) gives at least what the
//! 2.40 view gives.
//!
//! - IVs: `CKG_NO_GENERATE` uses the caller's IV; `CKG_GENERATE_RANDOM` (and `CKG_GENERATE`) fills the bits after
//!   `ulIvFixedBits` with random bytes, `CKG_GENERATE_COUNTER` with a per-operation 64-bit counter (big-endian,
//!   right-aligned, from 0 at each `C_MessageEncryptInit`); the generated IV is written back into the caller's `pIv`. Fixed bits must be whole bytes.
//! - The tag travels in the message parameters (`pTag`, `ulTagBits`), not in the ciphertext.
//! - A length query (`pCiphertext` NULL) is answered from the input length, with no backend call.
//! - Multi-part messages (`C_EncryptMessageBegin`/`Next`) and message-based signing stay unsupported; a client
//!   detects what is offered from `C_GetMechanismInfo` (3.0 list): `CKM_AES_GCM` carries `CKF_MESSAGE_ENCRYPT` and
//!   `CKF_MESSAGE_DECRYPT`, no mechanism carries `CKF_MULTI_MESSAGE`, `CKF_MESSAGE_SIGN` or `CKF_MESSAGE_VERIFY`
//!   (the 2.40 list's `C_GetMechanismInfo` leaves these 3.0 flags out).
//! - A key whose backend has no `CKM_AES_GCM` (Vault, KMS) → `CKR_KEY_FUNCTION_NOT_PERMITTED`.

use super::Module;
use cryptoki_sys::*;
use p11bridge_backends::{Error, Mechanism, ObjRef, OpKind, Out, Result};

/// An active message-based operation of a session.
pub struct MessageOp {
    /// The backend holding the key, and the key.
    pos: usize,
    key: ObjRef,
    /// For `CKG_GENERATE_COUNTER`.
    counter: u64,
}

/// One message's `CK_GCM_MESSAGE_PARAMS`, as views of the caller's memory.
pub struct GcmMessage<'a> {
    pub iv: &'a mut [u8],
    pub fixed_bits: CK_ULONG,
    pub generator: CK_GENERATOR_FUNCTION,
    pub tag: &'a mut [u8],
}

fn index(kind: OpKind) -> usize {
    match kind {
        OpKind::Encrypt => 0,
        _ => 1,
    }
}

/// The mechanisms the emulation serves, and the flags their `C_GetMechanismInfo` gains.
pub fn message_flags(mech: CK_MECHANISM_TYPE, info: &CK_MECHANISM_INFO) -> CK_FLAGS {
    if mech == CKM_AES_GCM && info.flags & CKF_ENCRYPT != 0 {
        CKF_MESSAGE_ENCRYPT | CKF_MESSAGE_DECRYPT
    } else {
        0
    }
}

/// The single-part `CK_GCM_PARAMS` of one message (pointers into `iv` and `aad`).
fn gcm_params(iv: &mut [u8], aad: &[u8], tag_len: usize) -> CK_GCM_PARAMS {
    CK_GCM_PARAMS {
        pIv: iv.as_mut_ptr(),
        ulIvLen: iv.len() as CK_ULONG,
        ulIvBits: (iv.len() * 8) as CK_ULONG,
        pAAD: aad.as_ptr() as *mut u8,
        ulAADLen: aad.len() as CK_ULONG,
        ulTagBits: (tag_len * 8) as CK_ULONG,
    }
}

/// `CKM_AES_GCM` with `params` (which must outlive the mechanism's use).
fn gcm_mechanism(params: &mut CK_GCM_PARAMS) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: CKM_AES_GCM,
        pParameter: params as *mut _ as *mut std::ffi::c_void,
        ulParameterLen: std::mem::size_of::<CK_GCM_PARAMS>() as CK_ULONG,
    }
}

impl Module {
    /// `C_MessageEncryptInit` / `C_MessageDecryptInit` (`kind`: `Encrypt` or `Decrypt`).
    pub fn message_init(
        &self,
        h: CK_SESSION_HANDLE,
        kind: OpKind,
        mech: &Mechanism,
        key: CK_OBJECT_HANDLE,
    ) -> Result<()> {
        let (s, slot) = self.session_slot(h)?;
        let mut inner = s.lock();
        let i = index(kind);
        if inner.messages[i].is_some() {
            return Err(Error::new(CKR_OPERATION_ACTIVE));
        }
        if mech.mech_type() != CKM_AES_GCM {
            return Err(Error::with(
                CKR_MECHANISM_INVALID,
                "message-based encryption is offered for CKM_AES_GCM only",
            ));
        }
        let (pos, obj) = slot.handles.locate(key, CKR_KEY_HANDLE_INVALID)?;
        if !slot.offers(pos, CKM_AES_GCM) {
            return Err(Error::with(
                CKR_KEY_FUNCTION_NOT_PERMITTED,
                format!(
                    "backend \"{}\" has no CKM_AES_GCM for message-based encryption",
                    slot.backends[pos].name
                ),
            ));
        }
        if inner.op(kind).is_some() {
            // The emulation runs the backend's own operation of this kind: it must be free.
            return Err(Error::new(CKR_OPERATION_ACTIVE));
        }
        // Check key and mechanism now (as C_MessageEncryptInit must), with a throw-away IV; then end it.
        let mut iv = [0u8; 12];
        let mut params = gcm_params(&mut iv, &[], 16);
        // SAFETY: `params` and `iv` live until the end of this function.
        let m = unsafe { Mechanism::from_raw(gcm_mechanism(&mut params)) }?;
        let bs = inner.backend(slot, s.rw, pos)?;
        bs.op_init(kind, &m, Some(obj)).map_err(|e| {
            if e.rv() == CKR_OBJECT_HANDLE_INVALID {
                Error::new(CKR_KEY_HANDLE_INVALID)
            } else {
                e
            }
        })?;
        let _ = bs.op_cancel(kind);
        inner.messages[i] = Some(MessageOp {
            pos,
            key: obj,
            counter: 0,
        });
        Ok(())
    }

    /// `C_EncryptMessage` / `C_DecryptMessage`: one whole message.
    pub fn message_one(
        &self,
        h: CK_SESSION_HANDLE,
        kind: OpKind,
        p: GcmMessage,
        aad: &[u8],
        input: &[u8],
        out: Out,
    ) -> Result<usize> {
        let (s, slot) = self.session_slot(h)?;
        let mut inner = s.lock();
        let i = index(kind);
        let Some(op) = inner.messages[i].as_mut() else {
            return Err(Error::new(CKR_OPERATION_NOT_INITIALIZED));
        };
        let tag_len = p.tag.len();
        if tag_len == 0 || tag_len > 16 || p.iv.is_empty() {
            return Err(Error::with(
                CKR_MECHANISM_PARAM_INVALID,
                "CK_GCM_MESSAGE_PARAMS: a tag of 1 to 16 bytes and an IV are needed",
            ));
        }
        // GCM keeps the length: ciphertext and plaintext are as long as each other; the tag is apart.
        let Some(out) = out else {
            return Ok(input.len());
        };
        if out.len() < input.len() {
            return Err(Error::buffer_too_small(input.len()));
        }
        if kind == OpKind::Encrypt {
            let fixed = p.fixed_bits as usize;
            if !fixed.is_multiple_of(8) || fixed / 8 > p.iv.len() {
                return Err(Error::with(
                    CKR_MECHANISM_PARAM_INVALID,
                    "ulIvFixedBits must be whole bytes within the IV",
                ));
            }
            let free = &mut p.iv[fixed / 8..];
            match p.generator {
                CKG_NO_GENERATE => {}
                CKG_GENERATE | CKG_GENERATE_RANDOM => super::ops::os_random(free)?,
                CKG_GENERATE_COUNTER => {
                    // The spec's counter starts at zero for each operation.
                    let c = op.counter.to_be_bytes();
                    op.counter = op.counter.wrapping_add(1);
                    let n = free.len().min(8);
                    let at = free.len() - n;
                    free[at..].copy_from_slice(&c[8 - n..]);
                }
                _ => {
                    return Err(Error::with(
                        CKR_MECHANISM_PARAM_INVALID,
                        "ivGenerator: CKG_NO_GENERATE, CKG_GENERATE, CKG_GENERATE_COUNTER or CKG_GENERATE_RANDOM",
                    ))
                }
            }
        } else if p.generator != CKG_NO_GENERATE {
            return Err(Error::with(
                CKR_MECHANISM_PARAM_INVALID,
                "decryption takes the IV as given (CKG_NO_GENERATE)",
            ));
        }
        let (pos, key) = (op.pos, op.key);
        let mut params = gcm_params(p.iv, aad, tag_len);
        // SAFETY: `params` and the caller's IV/AAD live for this call.
        let m = unsafe { Mechanism::from_raw(gcm_mechanism(&mut params)) }?;
        let bs = inner.backend(slot, s.rw, pos)?;
        bs.op_init(kind, &m, Some(key))?;
        if kind == OpKind::Encrypt {
            let mut buf = zeroize::Zeroizing::new(vec![0u8; input.len() + tag_len]);
            let n = bs.op_single(kind, input, Some(&mut buf[..]));
            let n = match n {
                Ok(n) => n,
                Err(e) => {
                    let _ = bs.op_cancel(kind);
                    return Err(e);
                }
            };
            if n != input.len() + tag_len {
                return Err(Error::with(
                    CKR_GENERAL_ERROR,
                    "the backend's AES-GCM output is not plaintext length + tag",
                ));
            }
            out[..input.len()].copy_from_slice(&buf[..input.len()]);
            p.tag.copy_from_slice(&buf[input.len()..n]);
            Ok(input.len())
        } else {
            let mut ct = Vec::with_capacity(input.len() + tag_len);
            ct.extend_from_slice(input);
            ct.extend_from_slice(p.tag);
            let mut buf = zeroize::Zeroizing::new(vec![0u8; ct.len()]);
            match bs.op_single(kind, &ct, Some(&mut buf[..])) {
                Ok(n) => {
                    let n = n.min(input.len());
                    out[..n].copy_from_slice(&buf[..n]);
                    Ok(n)
                }
                Err(e) => {
                    let _ = bs.op_cancel(kind);
                    Err(e)
                }
            }
        }
    }

    /// `C_MessageEncryptFinal` / `C_MessageDecryptFinal`.
    pub fn message_final(&self, h: CK_SESSION_HANDLE, kind: OpKind) -> Result<()> {
        let (s, _) = self.session_slot(h)?;
        let mut inner = s.lock();
        inner.messages[index(kind)]
            .take()
            .map(|_| ())
            .ok_or(Error::new(CKR_OPERATION_NOT_INITIALIZED))
    }
}
