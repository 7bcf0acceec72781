//! Sessions: one mutex each, so different sessions never wait for one another; a bridge session lazily owns one
//! backend session per slot backend it touches.

use super::slot::{Slot, SlotKind};
use cryptoki_sys::*;
use p11bridge_backends::{BackendSession, Error, Result};
use parking_lot::{Mutex, MutexGuard};

pub struct Session {
    pub handle: CK_SESSION_HANDLE,
    /// Index of its slot in `Module::slots`.
    pub slot: usize,
    pub rw: bool,
    inner: Mutex<Inner>,
}

pub struct Inner {
    /// Backend sessions, by the position of their backend in the slot (opened on first use).
    backend_sessions: Vec<Option<Box<dyn BackendSession>>>,
    /// For each `OpKind`, the backend running that operation.
    pub ops: [Option<usize>; 7],
    /// Results of `C_FindObjectsInit`, handed out by `C_FindObjects`.
    pub find: Option<Find>,
    /// Handles of session objects created here (forgotten when the session closes).
    pub session_objects: Vec<CK_OBJECT_HANDLE>,
    /// For the audit trail: the key and mechanism of each active operation.
    pub audit_ops: [Option<(super::audit::ObjectInfo, CK_MECHANISM_TYPE)>; 7],
    /// Hash-and-sign operations the core emulates for a backend that only has the raw mechanism.
    pub emulated: [Option<super::emulate::Emulated>; 7],
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
        {
            let st = slot.state.lock();
            if let SlotKind::Unified(u) = &slot.kind {
                if !rw && st.user == Some(CKU_SO) {
                    return Err(Error::new(CKR_SESSION_READ_WRITE_SO_EXISTS));
                }
                if u.max_sessions.is_some_and(|m| st.ro + st.rw >= m)
                    || (rw && u.max_rw_sessions.is_some_and(|m| st.rw >= m))
                {
                    return Err(Error::new(CKR_SESSION_COUNT));
                }
            }
        }
        if let SlotKind::Mirror = slot.kind {
            // The upstream decides (token present, session limits, SO rules), so open it now.
            backend_sessions[0] = Some(slot.backends[0].token.open_session(rw)?);
        }
        let mut st = slot.state.lock();
        if rw {
            st.rw += 1;
        } else {
            st.ro += 1;
        }
        Ok(Session {
            handle,
            slot: slot.index,
            rw,
            inner: Mutex::new(Inner {
                backend_sessions,
                ops: [None; 7],
                find: None,
                session_objects: Vec::new(),
                audit_ops: Default::default(),
                emulated: Default::default(),
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
        let mut st = slot.state.lock();
        if self.rw {
            st.rw = st.rw.saturating_sub(1);
        } else {
            st.ro = st.ro.saturating_sub(1);
        }
        if st.ro + st.rw == 0 && st.user.is_some() {
            st.user = None;
            // Under the state lock: a login racing with this logout must not be undone by it.
            if slot.unified().is_some() {
                slot.logout_backends();
            }
        }
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
