//! The group's token: information from the first member that answers, logins on every healthy member.

use super::*;

pub struct HaToken {
    pub(super) g: Arc<Group>,
}

impl HaToken {
    /// The first member that answers `f`.
    pub(super) fn any<T>(&self, f: impl Fn(&dyn Token) -> Result<T>) -> Result<T> {
        let mut first_err = None;
        for i in self.g.walk(0, |_| true) {
            let m = &self.g.members[i];
            match m.token().and_then(|t| f(t.as_ref())) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    if is_member_failure(e.rv(), false) {
                        self.g.failed(m, &e);
                    }
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err.unwrap_or(Error::new(CKR_DEVICE_ERROR)))
    }
}

impl Token for HaToken {
    fn slot_info(&self) -> Result<CK_SLOT_INFO> {
        self.any(|t| t.slot_info())
    }
    fn token_info(&self) -> Result<CK_TOKEN_INFO> {
        self.any(|t| t.token_info())
    }
    fn mechanism_list(&self) -> Result<Vec<CK_MECHANISM_TYPE>> {
        self.any(|t| t.mechanism_list())
    }
    fn mechanism_info(&self, mech: CK_MECHANISM_TYPE) -> Result<CK_MECHANISM_INFO> {
        self.any(|t| t.mechanism_info(mech))
    }
    fn login_configured(&self, user: CK_USER_TYPE) -> Result<()> {
        let mut first_err = None;
        let mut any_ok = false;
        for m in &self.g.members {
            if !self.g.healthy(m.index) {
                continue;
            }
            match m.token().and_then(|t| t.login_configured(user)) {
                Ok(()) => any_ok = true,
                Err(e) => {
                    tracing::warn!(target: T, group = %self.g.name, member = %m.name, error = %e, "member login failed");
                    if is_member_failure(e.rv(), false) {
                        self.g.failed(m, &e);
                    }
                    first_err.get_or_insert(e);
                }
            }
        }
        if any_ok {
            // Members that are down are logged in by the probe that brings them back.
            let mut l = self.g.login.lock();
            *l = (Some(user), l.1 + 1);
            return Ok(());
        }
        Err(first_err.unwrap_or(Error::new(CKR_DEVICE_ERROR)))
    }
    fn endpoint(&self) -> String {
        let members: Vec<String> = self
            .g
            .members
            .iter()
            .map(|m| match m.token() {
                Ok(t) => format!("{} ({})", m.name, t.endpoint()),
                Err(e) => format!("{} (unavailable: {e})", m.name),
            })
            .collect();
        format!("HA group of {}", members.join("; "))
    }
    fn logout_configured(&self) -> Result<()> {
        {
            let mut l = self.g.login.lock();
            l.1 = l.1.saturating_sub(1);
            if l.1 == 0 {
                l.0 = None;
            }
        }
        for m in &self.g.members {
            if let Ok(t) = m.token() {
                let _ = t.logout_configured();
            }
        }
        Ok(())
    }
    fn open_session(&self, rw: bool) -> Result<Box<dyn BackendSession>> {
        // Member sessions are opened on first use, on the member an operation goes to.
        Ok(Box::new(HaSession {
            g: self.g.clone(),
            rw,
            sess: (0..self.g.members.len()).map(|_| None).collect(),
            ops: Default::default(),
            home: None,
            last_op: None,
        }))
    }
    fn has_rng(&self) -> bool {
        self.g
            .members
            .iter()
            .any(|m| m.token().is_ok_and(|t| t.has_rng()))
    }
}
