//! Sessions: one mutex each, so different sessions never wait for one another; a bridge session lazily owns one
//! backend session per slot backend it touches.

use super::slot::Slot;
use cryptoki_sys::*;
use p11bridge_backends::{BackendSession, Error, OpKind, Result};
use parking_lot::{Mutex, MutexGuard};

pub struct Session {
    pub handle: CK_SESSION_HANDLE,
    /// Index of its slot in `Module::slots`.
    pub slot: usize,
    pub rw: bool,
    inner: Mutex<Inner>,
}

/// An active operation of one `OpKind`: where it runs and what the core keeps for it.
pub struct ActiveOp {
    /// The slot's backend running it.
    pub backend: usize,
    /// For the audit trail: the key and mechanism (when the trail is on and the operation has a key).
    pub audit: Option<(super::audit::ObjectInfo, CK_MECHANISM_TYPE)>,
    /// A hash-and-sign operation the core emulates for a backend that only has the raw mechanism.
    pub emulated: Option<super::emulate::Emulated>,
}

impl ActiveOp {
    /// An operation the backend runs on its own (nothing emulated, nothing to audit).
    pub fn on(backend: usize) -> ActiveOp {
        ActiveOp {
            backend,
            audit: None,
            emulated: None,
        }
    }
}

pub struct Inner {
    /// Backend sessions, by the position of their backend in the slot (opened on first use).
    backend_sessions: Vec<Option<Box<dyn BackendSession>>>,
    /// The active operation of each `OpKind` (indexed by `OpKind as usize`).
    ops: [Option<ActiveOp>; OpKind::ALL.len()],
    /// Results of `C_FindObjectsInit`, handed out by `C_FindObjects`.
    pub find: Option<Find>,
    /// Handles of session objects created here (forgotten when the session closes).
    pub session_objects: Vec<CK_OBJECT_HANDLE>,
    /// Message-based encryption and decryption (3.0), emulated (message.rs).
    pub messages: [Option<super::message::MessageOp>; 2],
    closed: bool,
}

pub struct Find {
    pub handles: Vec<CK_OBJECT_HANDLE>,
    pub pos: usize,
}

impl Session {
    pub fn open(handle: CK_SESSION_HANDLE, slot: &Slot, rw: bool) -> Result<Session> {
        let mut backend_sessions: Vec<Option<Box<dyn BackendSession>>> =
            (0..slot.backends.len()).map(|_| None).collect();
        if let (Some(upstream), Some(pos)) = (slot.admit_session(rw)?, slot.upstream()) {
            if let Some(b) = backend_sessions.get_mut(pos) {
                *b = Some(upstream);
            }
        }
        Ok(Session {
            handle,
            slot: slot.index,
            rw,
            inner: Mutex::new(Inner {
                backend_sessions,
                ops: Default::default(),
                find: None,
                session_objects: Vec::new(),
                messages: [None, None],
                closed: false,
            }),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    /// Closes the backend sessions and updates the token's counts; the last session of a token logs it out.
    pub fn close(&self, slot: &Slot) {
        let mut inner = self.inner.lock();
        if inner.closed {
            return;
        }
        inner.closed = true;
        inner
            .backend_sessions
            .iter_mut()
            .for_each(|m| drop(m.take()));
        for h in inner.session_objects.drain(..) {
            slot.handles.forget(h);
        }
        drop(inner);
        slot.release_session(self.rw);
    }

    /// `C_GetSessionInfo`.
    pub fn info(&self, slot: &Slot) -> CK_SESSION_INFO {
        let user = slot.state.lock().user;
        let state = match (user, self.rw) {
            (Some(CKU_SO), _) => CKS_RW_SO_FUNCTIONS,
            (Some(_), true) => CKS_RW_USER_FUNCTIONS,
            (Some(_), false) => CKS_RO_USER_FUNCTIONS,
            (None, true) => CKS_RW_PUBLIC_SESSION,
            (None, false) => CKS_RO_PUBLIC_SESSION,
        };
        let mut flags = CKF_SERIAL_SESSION;
        if self.rw {
            flags |= CKF_RW_SESSION;
        }
        CK_SESSION_INFO {
            slotID: slot.id,
            state,
            flags,
            ulDeviceError: 0,
        }
    }
}

impl Inner {
    /// The active operation of `kind`, if any.
    pub fn op(&self, kind: OpKind) -> Option<&ActiveOp> {
        self.ops[kind as usize].as_ref()
    }

    pub fn op_mut(&mut self, kind: OpKind) -> Option<&mut ActiveOp> {
        self.ops[kind as usize].as_mut()
    }

    /// The backend running the active operation of `kind`, or `CKR_OPERATION_NOT_INITIALIZED`.
    pub fn op_backend(&self, kind: OpKind) -> Result<usize> {
        self.op(kind)
            .map(|op| op.backend)
            .ok_or(Error::new(CKR_OPERATION_NOT_INITIALIZED))
    }

    /// Starts (or routes) the operation of `kind`.
    pub fn set_op(&mut self, kind: OpKind, op: ActiveOp) {
        self.ops[kind as usize] = Some(op);
    }

    /// Ends the operation of `kind` in the core (the backend's own state is the caller's business).
    pub fn end_op(&mut self, kind: OpKind) -> Option<ActiveOp> {
        self.ops[kind as usize].take()
    }

    /// The backend of the first active operation (for `CKU_CONTEXT_SPECIFIC` logins).
    pub fn any_op_backend(&self) -> Option<usize> {
        self.ops.iter().flatten().map(|op| op.backend).next()
    }

    /// The backend session of the slot's backend `pos`, opened on first use.
    pub fn backend(
        &mut self,
        slot: &Slot,
        rw: bool,
        pos: usize,
    ) -> Result<&mut dyn BackendSession> {
        if self.closed {
            return Err(Error::new(CKR_SESSION_CLOSED));
        }
        let m = self
            .backend_sessions
            .get_mut(pos)
            .ok_or(Error::new(CKR_GENERAL_ERROR))?;
        if m.is_none() {
            let backend = &slot.backends[pos];
            let bs = backend.token.open_session(rw).map_err(|e| {
                tracing::warn!(backend = %backend.name, error = %e, "cannot open backend session");
                e
            })?;
            *m = Some(bs);
        }
        match m {
            Some(b) => Ok(b.as_mut()),
            None => Err(Error::new(CKR_GENERAL_ERROR)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    /// Opens sessions from `threads` threads at once (each trying `tries`), keeping them open; how many opened.
    fn open_concurrently(slot: &Arc<Slot>, threads: usize, tries: usize, rw: bool) -> usize {
        let start = Arc::new(Barrier::new(threads));
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (slot, start) = (slot.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    (0..tries)
                        .filter_map(|i| {
                            let handle = (t * tries + i) as CK_SESSION_HANDLE;
                            match Session::open(handle, &slot, rw) {
                                Ok(s) => Some(s),
                                Err(e) => {
                                    assert_eq!(e.rv(), CKR_SESSION_COUNT);
                                    None
                                }
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("an opening thread panicked").len())
            .sum()
    }

    #[test]
    fn max_sessions_holds_under_concurrent_opens() {
        for _ in 0..20 {
            let slot = Arc::new(Slot::unified_for_test(Some(5), None));
            assert_eq!(open_concurrently(&slot, 16, 4, false), 5);
            let st = slot.state.lock();
            assert_eq!((st.ro, st.rw), (5, 0));
        }
    }

    #[test]
    fn max_rw_sessions_holds_under_concurrent_opens() {
        for _ in 0..20 {
            let slot = Arc::new(Slot::unified_for_test(None, Some(3)));
            assert_eq!(open_concurrently(&slot, 16, 4, true), 3);
            // Read-only sessions are not limited by max_rw_sessions.
            assert_eq!(open_concurrently(&slot, 4, 2, false), 8);
        }
    }

    #[test]
    fn closing_a_session_frees_its_place() {
        let slot = Slot::unified_for_test(Some(1), None);
        let first = Session::open(1, &slot, false).expect("first session");
        assert_eq!(
            Session::open(2, &slot, false).err().map(|e| e.rv()),
            Some(CKR_SESSION_COUNT)
        );
        first.close(&slot);
        assert!(Session::open(3, &slot, true).is_ok());
    }
}
