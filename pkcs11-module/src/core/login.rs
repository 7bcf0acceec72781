//! Login, logout and PINs. A unified token checks the PIN against its configuration and logs its backends in with
//! their configured credentials; a mirror slot passes every such call to its upstream.

use super::audit;
use super::slot::Slot;
use super::{Module, Session};
use cryptoki_sys::*;
use p11bridge_backends::{BackendSession, Error, Result};

impl Module {
    /// Records a login or logout of session `h` in the audit trail (failed ones too).
    fn audit_login_event(
        &self,
        h: CK_SESSION_HANDLE,
        event: &'static str,
        user: Option<CK_USER_TYPE>,
        r: &Result<()>,
        started: std::time::Instant,
    ) {
        if self.audit.is_some() {
            if let Ok((_, slot)) = self.session_slot(h) {
                let event = audit::Event {
                    event,
                    user,
                    rv: audit::rv_of(r),
                    ..Default::default()
                };
                self.audit(slot, &event, started);
            }
        }
    }

    /// `C_Login` / `C_LoginUser`, recorded in the audit trail (failed logins too).
    pub fn login(
        &self,
        h: CK_SESSION_HANDLE,
        user: CK_USER_TYPE,
        pin: Option<&[u8]>,
        username: Option<&[u8]>,
    ) -> Result<()> {
        let started = std::time::Instant::now();
        let r = self
            .session_slot(h)
            .and_then(|(s, slot)| log_in(&s, slot, user, pin, username));
        self.audit_login_event(h, "login", Some(user), &r, started);
        r
    }

    /// `C_Logout`, recorded in the audit trail.
    pub fn logout(&self, h: CK_SESSION_HANDLE) -> Result<()> {
        let started = std::time::Instant::now();
        let r = self.session_slot(h).and_then(|(s, slot)| log_out(&s, slot));
        self.audit_login_event(h, "logout", None, &r, started);
        r
    }

    /// `C_InitPIN` (mirror slots; the unified token's PINs come from its configuration).
    pub fn init_pin(&self, h: CK_SESSION_HANDLE, pin: Option<&[u8]>) -> Result<()> {
        self.on_upstream_pin(h, |upstream| upstream.init_pin(pin))
    }

    /// `C_SetPIN` (mirror slots).
    pub fn set_pin(
        &self,
        h: CK_SESSION_HANDLE,
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<()> {
        self.on_upstream_pin(h, |upstream| upstream.set_pin(old, new))
    }

    /// A PIN call passed to a mirror's upstream; a unified token refuses it.
    fn on_upstream_pin(
        &self,
        h: CK_SESSION_HANDLE,
        call: impl FnOnce(&mut dyn BackendSession) -> Result<()>,
    ) -> Result<()> {
        let (s, slot) = self.session_slot(h)?;
        let Some(pos) = slot.upstream() else {
            return Err(Error::with(
                CKR_FUNCTION_NOT_SUPPORTED,
                "the unified token's PIN is set in the configuration",
            ));
        };
        let mut inner = s.lock();
        call(inner.backend(slot, s.rw, pos)?)
    }
}

/// `C_Login` / `C_LoginUser` on session `s` of `slot`.
fn log_in(
    s: &Session,
    slot: &Slot,
    user: CK_USER_TYPE,
    pin: Option<&[u8]>,
    username: Option<&[u8]>,
) -> Result<()> {
    if let Some(pos) = slot.upstream() {
        let mut inner = s.lock();
        let bs = inner.backend(slot, s.rw, pos)?;
        match username {
            Some(n) => bs.login_user(user, pin, n)?,
            None => bs.login(user, pin)?,
        }
        if user != CKU_CONTEXT_SPECIFIC {
            slot.state.lock().user = Some(user);
        }
        return Ok(());
    }
    if !matches!(user, CKU_SO | CKU_USER | CKU_CONTEXT_SPECIFIC) {
        return Err(Error::new(CKR_USER_TYPE_INVALID));
    }
    // The unified token has no protected authentication path: a PIN is required.
    let pin = pin.ok_or(Error::new(CKR_ARGUMENTS_BAD))?;
    if user == CKU_CONTEXT_SPECIFIC {
        if slot.state.lock().user != Some(CKU_USER) {
            return Err(Error::new(CKR_USER_NOT_LOGGED_IN));
        }
        slot.check_pin(CKU_USER, pin)?;
        let mut inner = s.lock();
        let pos = inner
            .any_op_backend()
            .ok_or(Error::new(CKR_OPERATION_NOT_INITIALIZED))?;
        return inner.backend(slot, s.rw, pos)?.context_login_configured();
    }
    {
        let mut st = slot.state.lock();
        match st.user {
            Some(u) if u == user => return Err(Error::new(CKR_USER_ALREADY_LOGGED_IN)),
            Some(_) => return Err(Error::new(CKR_USER_ANOTHER_ALREADY_LOGGED_IN)),
            None => {}
        }
        if user == CKU_SO && st.ro > 0 {
            return Err(Error::new(CKR_SESSION_READ_ONLY_EXISTS));
        }
        slot.check_pin(user, pin)?;
        st.user = Some(user);
        // Under the state lock: a logout of the last session closing meanwhile must not undo it.
        slot.login_backends(user);
    }
    Ok(())
}

/// `C_Logout` on session `s` of `slot`.
fn log_out(s: &Session, slot: &Slot) -> Result<()> {
    if let Some(pos) = slot.upstream() {
        // The upstream decides, logged in or not (SoftHSM2 answers CKR_OK to a second C_Logout, and
        // applications call it in clean-up paths).
        let mut inner = s.lock();
        inner.backend(slot, s.rw, pos)?.logout()?;
        slot.state.lock().user = None;
        return Ok(());
    }
    if slot.state.lock().user.is_none() {
        return Err(Error::new(CKR_USER_NOT_LOGGED_IN));
    }
    let mut st = slot.state.lock();
    st.user = None;
    slot.logout_backends();
    drop(st);
    Ok(())
}
