//! Login, logout and PINs. A unified token checks the PIN against its configuration and logs its backends in with
//! their configured credentials; a mirror slot passes every such call to its upstream.

use super::audit;
use super::Module;
use cryptoki_sys::*;
use p11bridge_backends::{Error, Result};

/// What a unified token answers to `C_InitPIN` and `C_SetPIN`.
const PIN_IN_CONFIGURATION: &str = "the unified token's PIN is set in the configuration";

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
        let r = self.login_inner(h, user, pin, username);
        self.audit_login_event(h, "login", Some(user), &r, started);
        r
    }

    fn login_inner(
        &self,
        h: CK_SESSION_HANDLE,
        user: CK_USER_TYPE,
        pin: Option<&[u8]>,
        username: Option<&[u8]>,
    ) -> Result<()> {
        let (s, slot) = self.session_slot(h)?;
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

    /// `C_Logout`, recorded in the audit trail.
    pub fn logout(&self, h: CK_SESSION_HANDLE) -> Result<()> {
        let started = std::time::Instant::now();
        let r = self.logout_inner(h);
        self.audit_login_event(h, "logout", None, &r, started);
        r
    }

    fn logout_inner(&self, h: CK_SESSION_HANDLE) -> Result<()> {
        let (s, slot) = self.session_slot(h)?;
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

    /// `C_InitPIN` (mirror slots; the unified token's PINs come from its configuration).
    pub fn init_pin(&self, h: CK_SESSION_HANDLE, pin: Option<&[u8]>) -> Result<()> {
        let (s, slot) = self.session_slot(h)?;
        let pos = slot.upstream().ok_or(Error::with(
            CKR_FUNCTION_NOT_SUPPORTED,
            PIN_IN_CONFIGURATION,
        ))?;
        let mut inner = s.lock();
        inner.backend(slot, s.rw, pos)?.init_pin(pin)
    }

    /// `C_SetPIN` (mirror slots).
    pub fn set_pin(
        &self,
        h: CK_SESSION_HANDLE,
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<()> {
        let (s, slot) = self.session_slot(h)?;
        let pos = slot.upstream().ok_or(Error::with(
            CKR_FUNCTION_NOT_SUPPORTED,
            PIN_IN_CONFIGURATION,
        ))?;
        let mut inner = s.lock();
        inner.backend(slot, s.rw, pos)?.set_pin(old, new)
    }
}
