//! Member health: failures counted by each member's circuit breaker (`health::Endpoints`), the prober thread that
//! brings members back (one per group, only while a member is down), and the recovery of a member (fresh
//! sessions, a re-initialized module if need be, the group's login again).

use super::*;

impl Group {
    /// Records a member failure; opening its breaker starts the prober.
    pub(super) fn failed(&self, m: &Member, e: &Error) {
        if self.health.unwell(m.index) {
            tracing::warn!(target: T, group = %self.name, member = %m.name, error = %e,
                served = m.routed.load(SeqCst), "member down: breaker open");
            crate::diag::notice(&format!(
                "backend \"{}\" (pkcs11-ha): member \"{}\" is down ({e}); calls go to the other members until it answers a probe",
                self.name, m.name
            ));
            self.ensure_prober();
        }
    }

    pub(super) fn threads_allowed(&self) -> bool {
        !self.ctx.cant_create_threads
    }

    pub(super) fn ensure_prober(&self) {
        if !self.threads_allowed() || self.stop.load(SeqCst) {
            return;
        }
        self.health.ensure_prober(|| {
            let Some(g) = self.me.upgrade() else {
                return false;
            };
            std::thread::Builder::new()
                .name("p11bridge-ha-probe".into())
                .spawn(move || g.probe_loop())
                .is_ok()
        });
    }

    /// The prober thread: probes the members that are down until every breaker is closed again.
    pub(super) fn probe_loop(&self) {
        let tick =
            (self.probe_interval / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
        loop {
            std::thread::sleep(tick);
            if self
                .health
                .prober()
                .end_if(|| self.stop.load(SeqCst) || self.health.all_closed())
            {
                return;
            }
            self.health.probe_round(
                || self.stop.load(SeqCst),
                |i| self.recover(&self.members[i]),
                |i, back| self.report_probe(&self.members[i], back),
            );
        }
    }

    /// Probes a member that is down (its breaker half-open) and closes or re-opens its breaker by the outcome.
    pub(super) fn probe(&self, m: &Member) -> bool {
        let back = self.recover(m);
        self.health.probed(m.index, back);
        self.report_probe(m, back);
        back
    }

    /// Checks a member that is down; on success makes it usable again (fresh sessions, a fresh login if the group
    /// is logged in). Whether it is back.
    pub(super) fn recover(&self, m: &Member) -> bool {
        match self.try_probe(m) {
            Ok(()) => {
                m.epoch.fetch_add(1, SeqCst);
                true
            }
            Err(e) => {
                tracing::debug!(target: T, group = %self.name, member = %m.name, error = %e, "probe failed");
                false
            }
        }
    }

    pub(super) fn report_probe(&self, m: &Member, back: bool) {
        if back {
            tracing::info!(target: T, group = %self.name, member = %m.name,
                served = m.routed.load(SeqCst), "member back: breaker closed");
        }
    }

    pub(super) fn try_probe(&self, m: &Member) -> Result<()> {
        let check = || -> Result<Arc<dyn Token>> {
            *m.token.lock() = None;
            let t = m.token()?;
            t.token_info()?;
            drop(t.open_session(false)?);
            Ok(t)
        };
        let t = match check() {
            Ok(t) => t,
            Err(e) if self.reinitialize => {
                if !m.backend.reinitialize(&self.ctx)? {
                    return Err(e);
                }
                m.reinit.fetch_add(1, SeqCst);
                tracing::info!(target: T, group = %self.name, member = %m.name, "module re-initialized");
                check()?
            }
            Err(e) => return Err(e),
        };
        let (user, count) = *self.login.lock();
        if let Some(user) = user {
            // The member's old login session may be gone with its connection: log in afresh.
            m.backend.forget_logins();
            for _ in 0..count.max(1) {
                t.login_configured(user)?;
            }
        }
        Ok(())
    }

    /// Whether member `i` may be used now. Without a prober thread, a member due for a probe is probed here.
    pub(super) fn usable(&self, i: usize, last_resort: bool) -> bool {
        self.health
            .usable_now(i, self.threads_allowed(), last_resort, || {
                self.probe(&self.members[i])
            })
    }

    /// Whether member `i`'s breaker is closed (believed healthy).
    pub(super) fn healthy(&self, i: usize) -> bool {
        self.health.breakers[i].is_closed()
    }
}
