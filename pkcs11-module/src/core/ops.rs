//! Cryptographic operations, key management and random numbers, routed to the backend that holds the key.
//!
//! Operation state follows the spec (§5.2): an operation stays active after a length query or
//! `CKR_BUFFER_TOO_SMALL`, and ends on success or any other error.

use super::audit;
use super::objects::{is_session_object, BackendTemplate};
use super::session::{ActiveOp, Inner};
use super::slot::Slot;
use super::Module;
use cryptoki_sys::*;
use p11bridge_backends::{
    BackendSession, DualKind, Error, Mechanism, OpKind, Out, Result, Template,
};

/// A backend's `CKR_OBJECT_HANDLE_INVALID` for a key argument is, in the spec's lists for the functions that take
/// keys, `CKR_KEY_HANDLE_INVALID` (or the wrapping/unwrapping variant): SoftHSM2 answers the former, for instance
/// for a private key's handle after C_Logout.
fn key_handle_rv<T>(r: Result<T>, rv: CK_RV) -> Result<T> {
    r.map_err(|e| {
        if e.rv() == CKR_OBJECT_HANDLE_INVALID {
            Error::with(
                rv,
                e.cause()
                    .unwrap_or("the key's handle is not valid")
                    .to_string(),
            )
        } else {
            e
        }
    })
}

/// Whether an operation survives a call that produced `r` (with `len_query` when the output pointer was NULL).
fn survives(r: &Result<usize>, len_query: bool) -> bool {
    match r {
        Ok(_) => len_query,
        Err(e) => e.rv() == CKR_BUFFER_TOO_SMALL,
    }
}

/// Whether an operation survives an `*Update` call that produced `r`.
fn update_survives(r: &Result<usize>) -> bool {
    match r {
        Ok(_) => true,
        Err(e) => e.rv() == CKR_BUFFER_TOO_SMALL,
    }
}

/// Runs a backend call of an active operation. A panic inside it (a bug) is caught here rather than at the C ABI,
/// so that the caller's operation ends as for any other error (§5.2) and the session stays usable; the backend's
/// operation is then cancelled, its own panics ignored. The caller gets `CKR_GENERAL_ERROR`.
fn contained<T>(
    inner: &mut Inner,
    slot: &Slot,
    rw: bool,
    pos: usize,
    kinds: &[OpKind],
    f: impl FnOnce(&mut Inner) -> Result<T>,
) -> Result<T> {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    match catch_unwind(AssertUnwindSafe(|| f(inner))) {
        Ok(r) => r,
        Err(p) => {
            let msg = crate::abi::panic_message(p.as_ref());
            tracing::error!(backend = %slot.backends[pos].name, "internal error in an operation (panic caught): {msg}");
            for k in kinds {
                let _ = catch_unwind(AssertUnwindSafe(|| {
                    inner.backend(slot, rw, pos).and_then(|bs| bs.op_cancel(*k))
                }));
            }
            Err(Error::with(
                CKR_GENERAL_ERROR,
                "internal error (panic caught)",
            ))
        }
    }
}

/// The audit trail's name for an operation.
fn kind_event(kind: OpKind) -> &'static str {
    match kind {
        OpKind::Encrypt => "encrypt",
        OpKind::Decrypt => "decrypt",
        OpKind::Digest => "digest",
        OpKind::Sign => "sign",
        OpKind::Verify => "verify",
        OpKind::SignRecover => "sign_recover",
        OpKind::VerifyRecover => "verify_recover",
    }
}

/// One call of an active operation, as its body sees it: the session's state (locked), the slot, and the backend
/// running the operation.
struct OpCall<'a> {
    inner: &'a mut Inner,
    slot: &'a Slot,
    rw: bool,
    kind: OpKind,
    pos: usize,
}

impl OpCall<'_> {
    /// The backend session running the operation.
    fn backend(&mut self) -> Result<&mut dyn BackendSession> {
        self.inner.backend(self.slot, self.rw, self.pos)
    }

    /// The core's hash-and-sign emulation of the operation, if it is emulated.
    fn emulated(&mut self) -> Option<&mut super::emulate::Emulated> {
        self.inner
            .op_mut(self.kind)
            .and_then(|op| op.emulated.as_mut())
    }
}

impl Module {
    /// Records the end of an operation in the audit trail.
    fn audit_done(
        &self,
        slot: &Slot,
        inner: &mut Inner,
        kind: OpKind,
        op: ActiveOp,
        r: &Result<usize>,
        started: std::time::Instant,
    ) {
        if let Some((info, mech)) = op.audit {
            let served_by = inner
                .backend(slot, false, op.backend)
                .ok()
                .and_then(|bs| bs.served_by().map(str::to_owned));
            let event = audit::Event {
                event: kind_event(kind),
                backend: Some(op.backend),
                member: served_by.as_deref(),
                object: Some(&info),
                mechanism: Some(mech),
                rv: audit::rv_of(r),
                ..Default::default()
            };
            self.audit(slot, &event, started);
        }
    }

    /// The one prologue and epilogue of every call of an active operation: find the session's operation of
    /// `kind` (else `CKR_OPERATION_NOT_INITIALIZED`), run `call` contained, and end the operation — recording it
    /// in the audit trail — unless `op_survives` says it survives the result.
    fn op_call(
        &self,
        h: CK_SESSION_HANDLE,
        kind: OpKind,
        op_survives: impl FnOnce(&Result<usize>) -> bool,
        call: impl FnOnce(&mut OpCall) -> Result<usize>,
    ) -> Result<usize> {
        let (s, slot) = self.session_slot(h)?;
        let mut inner = s.lock();
        let pos = inner.op_backend(kind)?;
        let started = std::time::Instant::now();
        let r = contained(&mut inner, slot, s.rw, pos, &[kind], |inner| {
            call(&mut OpCall {
                inner,
                slot,
                rw: s.rw,
                kind,
                pos,
            })
        });
        if !op_survives(&r) {
            if let Some(op) = inner.end_op(kind) {
                self.audit_done(slot, &mut inner, kind, op, &r, started);
            }
        }
        r
    }

    /// `C_*Init`. A NULL mechanism (3.0) cancels the active operation of that kind.
    pub fn op_init(
        &self,
        h: CK_SESSION_HANDLE,
        kind: OpKind,
        mech: Option<Mechanism>,
        key: Option<CK_OBJECT_HANDLE>,
    ) -> Result<()> {
        let (s, slot) = self.session_slot(h)?;
        let mut inner = s.lock();
        let Some(mech) = mech else {
            return match inner.end_op(kind) {
                Some(op) => inner.backend(slot, s.rw, op.backend)?.op_cancel(kind),
                None => Err(Error::new(CKR_ARGUMENTS_BAD)),
            };
        };
        if inner.op(kind).is_some() {
            return Err(Error::new(CKR_OPERATION_ACTIVE));
        }
        let (pos, obj) = match key {
            Some(kh) => {
                let (p, o) = slot.handles.locate(kh, CKR_KEY_HANDLE_INVALID)?;
                (p, Some(o))
            }
            None => (slot.backend_for_mechanism(mech.mech_type())?, None),
        };
        if let Some(o) = obj.filter(|_| super::keycheck::uses_ec_curve(mech.mech_type())) {
            super::keycheck::usable_ec_key(
                &slot.handles,
                inner.backend(slot, s.rw, pos)?,
                (pos, o),
                mech.mech_type(),
            )?;
        }
        let started = std::time::Instant::now();
        // A hash-and-sign mechanism this key's backend lacks, while it has the raw one: hash here, sign there.
        let emulation = match kind {
            OpKind::Sign | OpKind::Verify if obj.is_some() => {
                slot.hash_and_sign_emulation(pos, mech.mech_type())
            }
            _ => None,
        };
        let mut op = ActiveOp::on(pos);
        let r = match emulation {
            Some((e, base)) => {
                // The same parameters (PSS's apply to CKM_RSA_PKCS_PSS alike; the others have none).
                let raw = CK_MECHANISM {
                    mechanism: base,
                    ..mech.raw()
                };
                // SAFETY: the caller's parameter block, valid for this call.
                let bm = unsafe { Mechanism::from_raw(raw) }?;
                let r = inner.backend(slot, s.rw, pos)?.op_init(kind, &bm, obj);
                if r.is_ok() {
                    op.emulated = Some(e);
                }
                key_handle_rv(r, CKR_KEY_HANDLE_INVALID)
            }
            None => key_handle_rv(
                inner.backend(slot, s.rw, pos)?.op_init(kind, &mech, obj),
                CKR_KEY_HANDLE_INVALID,
            ),
        };
        if let (Some(_), Some(o)) = (&self.audit, obj) {
            let info = audit::describe(inner.backend(slot, s.rw, pos)?, o);
            match &r {
                Ok(()) => op.audit = Some((info, mech.mech_type())),
                Err(e) => self.audit(
                    slot,
                    &audit::Event {
                        event: kind_event(kind),
                        backend: Some(pos),
                        object: Some(&info),
                        mechanism: Some(mech.mech_type()),
                        rv: e.rv(),
                        ..Default::default()
                    },
                    started,
                ),
            }
        }
        match &r {
            Ok(()) => inner.set_op(kind, op),
            // The backend still runs an operation we consider ended (an upstream that did not end it on an error
            // the spec says ends it): route to it, so the caller can finish it as it would talking directly.
            Err(e) if e.rv() == CKR_OPERATION_ACTIVE => inner.set_op(kind, ActiveOp::on(pos)),
            Err(_) => {}
        }
        r
    }

    /// `C_Encrypt`, `C_Decrypt`, `C_Digest`, `C_Sign`, `C_SignRecover`, `C_VerifyRecover`.
    pub fn op_single(
        &self,
        h: CK_SESSION_HANDLE,
        kind: OpKind,
        input: &[u8],
        out: Out,
    ) -> Result<usize> {
        let len_query = out.is_none();
        self.op_call(
            h,
            kind,
            |r| survives(r, len_query),
            |call| {
                match call.emulated().map(|e| e.single_input(kind, input)) {
                    // Emulated hash-and-sign: the backend signs the digest with the raw mechanism, single-part.
                    Some(Ok(raw)) => call.backend()?.op_single(kind, &raw, out),
                    Some(Err(e)) => {
                        // The operation ends (§5.2): the backend's raw operation too.
                        let _ = call.backend()?.op_cancel(kind);
                        Err(e)
                    }
                    None => call.backend()?.op_single(kind, input, out),
                }
            },
        )
    }

    /// `C_*Update`.
    pub fn op_update(
        &self,
        h: CK_SESSION_HANDLE,
        kind: OpKind,
        input: &[u8],
        out: Out,
    ) -> Result<usize> {
        self.op_call(h, kind, update_survives, |call| match call.emulated() {
            Some(e) => {
                e.update(input);
                Ok(0)
            }
            None => call.backend()?.op_update(kind, input, out),
        })
    }

    /// `C_*Final` (encrypt, decrypt, digest, sign).
    pub fn op_final(&self, h: CK_SESSION_HANDLE, kind: OpKind, out: Out) -> Result<usize> {
        let len_query = out.is_none();
        self.op_call(
            h,
            kind,
            |r| survives(r, len_query),
            |call| match call.emulated().map(|e| e.input(&[])) {
                Some(raw) => call.backend()?.op_single(kind, &raw, out),
                None => call.backend()?.op_final(kind, out),
            },
        )
    }

    /// `C_Verify` and `C_VerifyFinal` (`data` is `None` for the latter). Both always end the operation.
    pub fn verify(
        &self,
        h: CK_SESSION_HANDLE,
        data: Option<&[u8]>,
        signature: &[u8],
    ) -> Result<()> {
        self.op_call(
            h,
            OpKind::Verify,
            |_| false,
            |call| {
                let emulated = call.emulated().map(|e| match data {
                    Some(d) => e.single_input(OpKind::Verify, d),
                    None => Ok(e.input(&[])),
                });
                let bs = call.backend()?;
                match (emulated, data) {
                    (Some(Err(e)), _) => {
                        let _ = bs.op_cancel(OpKind::Verify);
                        Err(e)
                    }
                    (Some(Ok(raw)), _) => bs.verify(&raw, signature),
                    (None, Some(d)) => bs.verify(d, signature),
                    (None, None) => bs.verify_final(signature),
                }
                .map(|()| 0)
            },
        )
        .map(|_| ())
    }

    /// `C_DigestKey`: the key must live where the digest runs.
    pub fn digest_key(&self, h: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) -> Result<()> {
        let (s, slot) = self.session_slot(h)?;
        let mut inner = s.lock();
        let pos = inner.op_backend(OpKind::Digest)?;
        let (kp, ko) = slot.handles.locate(key, CKR_KEY_HANDLE_INVALID)?;
        if kp != pos {
            return Err(Error::with(
                CKR_KEY_INDIGESTIBLE,
                "the key and the digest are in different backends",
            ));
        }
        let r = key_handle_rv(
            inner.backend(slot, s.rw, pos)?.digest_key(ko),
            CKR_KEY_HANDLE_INVALID,
        );
        if r.is_err() {
            inner.end_op(OpKind::Digest);
        }
        r
    }

    /// The dual-function updates: both operations must be active on the same backend.
    pub fn dual_update(
        &self,
        h: CK_SESSION_HANDLE,
        kind: DualKind,
        input: &[u8],
        out: Out,
    ) -> Result<usize> {
        let (s, slot) = self.session_slot(h)?;
        let mut inner = s.lock();
        let (a, b) = kind.ops();
        let pos = match (inner.op_backend(a), inner.op_backend(b)) {
            (Ok(x), Ok(y)) if x == y => x,
            (Ok(_), Ok(_)) => {
                return Err(Error::with(
                    CKR_FUNCTION_NOT_SUPPORTED,
                    "dual-function operation across two backends",
                ))
            }
            _ => return Err(Error::new(CKR_OPERATION_NOT_INITIALIZED)),
        };
        let r = contained(&mut inner, slot, s.rw, pos, &[a, b], |inner| {
            inner
                .backend(slot, s.rw, pos)?
                .dual_update(kind, input, out)
        });
        if !update_survives(&r) {
            inner.end_op(a);
            inner.end_op(b);
        }
        r
    }

    /// Ends an operation whose call was refused before it reached the backend (bad arguments): the spec says such
    /// a call ends the operation too (§5.2), so the backend's is cancelled as well — on unified slots. A mirror
    /// slot keeps the operation, as the upstream (which never saw the call) does.
    pub fn op_abort(&self, h: CK_SESSION_HANDLE, kind: OpKind) {
        let Ok((s, slot)) = self.session_slot(h) else {
            return;
        };
        if slot.upstream().is_some() {
            // The upstream never saw the refused call and keeps its operation: so does the mirror, and the
            // application's next, correct call goes through as it would talking to the upstream directly.
            return;
        }
        let mut inner = s.lock();
        if let Some(op) = inner.end_op(kind) {
            if let Ok(bs) = inner.backend(slot, s.rw, op.backend) {
                let _ = bs.op_cancel(kind);
            }
        }
    }

    /// `C_SessionCancel`.
    pub fn session_cancel(&self, h: CK_SESSION_HANDLE, flags: CK_FLAGS) -> Result<()> {
        let (s, slot) = self.session_slot(h)?;
        let mut inner = s.lock();
        if flags & CKF_FIND_OBJECTS != 0 {
            inner.find = None;
        }
        for kind in OpKind::ALL {
            if flags & kind.cancel_flag() == 0 {
                continue;
            }
            if let Some(op) = inner.end_op(kind) {
                inner.backend(slot, s.rw, op.backend)?.op_cancel(kind)?;
            }
        }
        Ok(())
    }

    /// `C_GetOperationState` (mirror slots; a unified session's operations may span backends).
    pub fn get_operation_state(&self, h: CK_SESSION_HANDLE, out: Out) -> Result<usize> {
        let (s, slot) = self.session_slot(h)?;
        match slot.upstream() {
            Some(pos) => s.lock().backend(slot, s.rw, pos)?.get_operation_state(out),
            None => Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED)),
        }
    }

    /// `C_SetOperationState` (mirror slots).
    pub fn set_operation_state(
        &self,
        h: CK_SESSION_HANDLE,
        state: &[u8],
        enc: CK_OBJECT_HANDLE,
        auth: CK_OBJECT_HANDLE,
    ) -> Result<()> {
        let (s, slot) = self.session_slot(h)?;
        let Some(pos) = slot.upstream() else {
            return Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED));
        };
        let opt = |x: CK_OBJECT_HANDLE| (x != 0).then_some(x);
        let mut inner = s.lock();
        inner
            .backend(slot, s.rw, pos)?
            .set_operation_state(state, opt(enc), opt(auth))?;
        // The restored state may hold any operation: let the upstream decide from now on.
        for kind in OpKind::ALL {
            inner.set_op(kind, ActiveOp::on(pos));
        }
        Ok(())
    }

    /// `C_GenerateKey`.
    pub fn generate_key(
        &self,
        h: CK_SESSION_HANDLE,
        mech: Mechanism,
        t: Template,
    ) -> Result<CK_OBJECT_HANDLE> {
        let (s, slot) = self.session_slot(h)?;
        let pos = self.target_backend(slot, &[t])?;
        let for_backend = BackendTemplate::new(t);
        let st = for_backend.get();
        let mut inner = s.lock();
        let o = inner.backend(slot, s.rw, pos)?.generate_key(&mech, st)?;
        Ok(self.adopt(slot, &mut inner, pos, o, is_session_object(t)))
    }

    /// `C_GenerateKeyPair`.
    pub fn generate_key_pair(
        &self,
        h: CK_SESSION_HANDLE,
        mech: Mechanism,
        public: Template,
        private: Template,
    ) -> Result<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)> {
        let (s, slot) = self.session_slot(h)?;
        // The EC material of generated keys too (an upstream that stores what it cannot use crashes later).
        let ec = Some(mech.mech_type() == CKM_EC_KEY_PAIR_GEN);
        super::keycheck::check(&public, ec)?;
        super::keycheck::check(&private, ec)?;
        let pos = self.target_backend(slot, &[public, private])?;
        let (sp, ss) = (BackendTemplate::new(public), BackendTemplate::new(private));
        let (tp, ts) = (sp.get(), ss.get());
        let mut inner = s.lock();
        let (op, os) = inner
            .backend(slot, s.rw, pos)?
            .generate_key_pair(&mech, tp, ts)?;
        let hp = self.adopt(slot, &mut inner, pos, op, is_session_object(public));
        let hs = self.adopt(slot, &mut inner, pos, os, is_session_object(private));
        Ok((hp, hs))
    }

    /// `C_WrapKey`: within one backend, or across backends (envelope: an extractable secret key wrapped under
    /// another backend's key).
    pub fn wrap_key(
        &self,
        h: CK_SESSION_HANDLE,
        mech: Mechanism,
        wrapping: CK_OBJECT_HANDLE,
        key: CK_OBJECT_HANDLE,
        out: Out,
    ) -> Result<usize> {
        let (s, slot) = self.session_slot(h)?;
        let (wp, wo) = slot
            .handles
            .locate(wrapping, CKR_WRAPPING_KEY_HANDLE_INVALID)?;
        let (kp, ko) = slot.handles.locate(key, CKR_KEY_HANDLE_INVALID)?;
        let mut inner = s.lock();
        let started = std::time::Instant::now();
        let len_query = out.is_none();
        let r = if wp == kp {
            key_handle_rv(
                inner.backend(slot, s.rw, wp)?.wrap_key(&mech, wo, ko, out),
                CKR_KEY_HANDLE_INVALID,
            )
        } else {
            // Envelope wrapping across backends: the key's value leaves its backend (only if it is extractable and
            // readable) and is encrypted under the wrapping key by the other backend.
            let value = inner.backend(slot, s.rw, kp)?.export_value(ko)?;
            inner
                .backend(slot, s.rw, wp)?
                .wrap_value(&mech, wo, &value, out)
        };
        if self.audit.is_some() && !len_query {
            let info = audit::describe(inner.backend(slot, s.rw, kp)?, ko);
            let event = audit::Event {
                event: "wrap_key",
                backend: Some(kp),
                object: Some(&info),
                mechanism: Some(mech.mech_type()),
                rv: audit::rv_of(&r),
                ..Default::default()
            };
            self.audit(slot, &event, started);
        }
        r
    }

    /// `C_UnwrapKey`: the new key is made where the template says (`CKA_P11BRIDGE_BACKEND`, else the slot's
    /// default); across backends, the unwrapping key's backend unwraps and the target imports the value.
    pub fn unwrap_key(
        &self,
        h: CK_SESSION_HANDLE,
        mech: Mechanism,
        unwrapping: CK_OBJECT_HANDLE,
        wrapped: &[u8],
        t: Template,
    ) -> Result<CK_OBJECT_HANDLE> {
        let (s, slot) = self.session_slot(h)?;
        let (pos, uo) = slot
            .handles
            .locate(unwrapping, CKR_UNWRAPPING_KEY_HANDLE_INVALID)?;
        let named = super::objects::named_backend(slot, t)?;
        super::keycheck::check(&t, None)?;
        let for_backend = BackendTemplate::new(t);
        let st = for_backend.get();
        let mut inner = s.lock();
        // Envelope unwrapping across backends: the unwrapping key's backend decrypts the value, and the key is
        // created in the target backend.
        let envelope = |inner: &mut Inner, target: usize| -> Result<u64> {
            let value = inner
                .backend(slot, s.rw, pos)?
                .unwrap_value(&mech, uo, wrapped)?;
            let mut with_value: Vec<CK_ATTRIBUTE> = st
                .raw()
                .iter()
                .filter(|a| a.type_ != CKA_VALUE)
                .copied()
                .collect();
            with_value.push(CK_ATTRIBUTE {
                type_: CKA_VALUE,
                pValue: value.as_ptr() as *mut std::ffi::c_void,
                ulValueLen: value.len() as CK_ULONG,
            });
            // SAFETY: the caller's attribute values plus `value`, all alive for this call.
            let tv = unsafe { Template::from_raw(&with_value) };
            inner.backend(slot, s.rw, target)?.create_object(tv)
        };
        let default = slot.default_backend();
        let (target, o) = match named {
            Some(target) if target != pos => (target, envelope(&mut inner, target)?),
            _ => match key_handle_rv(
                inner
                    .backend(slot, s.rw, pos)?
                    .unwrap_key(&mech, uo, wrapped, st),
                CKR_UNWRAPPING_KEY_HANDLE_INVALID,
            ) {
                // A backend that cannot hold the key (a remote service) unwraps it into the slot's default one.
                Err(e) if e.rv() == CKR_MECHANISM_INVALID && named.is_none() && default != pos => {
                    (default, envelope(&mut inner, default)?)
                }
                r => (pos, r?),
            },
        };
        let pos = target;
        Ok(self.adopt(slot, &mut inner, pos, o, is_session_object(t)))
    }

    /// `C_DeriveKey`: made where the base key lives. Object handles inside known mechanism parameters are
    /// translated to the backend's.
    pub fn derive_key(
        &self,
        h: CK_SESSION_HANDLE,
        mech: Mechanism,
        base: CK_OBJECT_HANDLE,
        t: Template,
    ) -> Result<CK_OBJECT_HANDLE> {
        let (s, slot) = self.session_slot(h)?;
        let (pos, bo) = slot.handles.locate(base, CKR_KEY_HANDLE_INVALID)?;
        let mut other: CK_OBJECT_HANDLE;
        let mech = if mech.mech_type() == CKM_CONCATENATE_BASE_AND_KEY && slot.handles.translated()
        {
            let oh: CK_OBJECT_HANDLE = mech.param()?;
            let (op, oo) = slot.handles.locate(oh, CKR_KEY_HANDLE_INVALID)?;
            if op != pos {
                return Err(Error::with(
                    CKR_KEY_HANDLE_INVALID,
                    "the two keys are in different backends",
                ));
            }
            other = oo as CK_OBJECT_HANDLE;
            Mechanism::with_param(CKM_CONCATENATE_BASE_AND_KEY, &mut other)
        } else {
            mech
        };
        let for_backend = BackendTemplate::new(t);
        let st = for_backend.get();
        let mut inner = s.lock();
        if super::keycheck::uses_ec_curve(mech.mech_type()) {
            super::keycheck::usable_ec_key(
                &slot.handles,
                inner.backend(slot, s.rw, pos)?,
                (pos, bo),
                mech.mech_type(),
            )?;
        }
        let o = key_handle_rv(
            inner.backend(slot, s.rw, pos)?.derive_key(&mech, bo, st),
            CKR_KEY_HANDLE_INVALID,
        )?;
        Ok(self.adopt(slot, &mut inner, pos, o, is_session_object(t)))
    }

    /// `C_SeedRandom`.
    pub fn seed_random(&self, h: CK_SESSION_HANDLE, seed: &[u8]) -> Result<()> {
        let (s, slot) = self.session_slot(h)?;
        match slot.rng_backend() {
            Some(p) => s.lock().backend(slot, s.rw, p)?.seed_random(seed),
            None => Err(Error::new(CKR_RANDOM_SEED_NOT_SUPPORTED)),
        }
    }

    /// `C_GenerateRandom`: from the backend with an RNG, else from the operating system.
    pub fn generate_random(&self, h: CK_SESSION_HANDLE, out: &mut [u8]) -> Result<()> {
        let (s, slot) = self.session_slot(h)?;
        match slot.rng_backend() {
            Some(p) => s.lock().backend(slot, s.rw, p)?.generate_random(out),
            None => os_random(out),
        }
    }
}

pub(crate) fn os_random(out: &mut [u8]) -> Result<()> {
    let mut done = 0;
    while done < out.len() {
        // SAFETY: writes at most out.len() - done bytes into our buffer.
        let n = unsafe {
            libc::getrandom(
                out[done..].as_mut_ptr() as *mut libc::c_void,
                out.len() - done,
                0,
            )
        };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::with(CKR_DEVICE_ERROR, "getrandom failed"));
        }
        done += n as usize;
    }
    Ok(())
}
