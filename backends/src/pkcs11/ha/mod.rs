//! An HA group of upstream tokens (`kind = "pkcs11-ha"`): several `kind = "pkcs11"` members that hold the same
//! keys, matched by `CKA_ID` and class. The group is one backend; its operations go to a healthy member
//! (round-robin at each `C_*Init`, search and random call) and fail over to the next one when a member answers with
//! a device or connection error. Each member has a circuit breaker (`health::Endpoints`): an open member is skipped
//! without a call, and a background prober (one thread per group, only while a member is down) brings it back.
//!
//! Objects: a token object with a non-empty `CKA_ID` is a *group object*, one per (`CKA_ID`, class), resolved on
//! each member lazily (a search by class + id) and cached per member until that member restarts. Everything else
//! (objects without `CKA_ID`, session objects, objects this session creates) is *homed* on the member that found or
//! made it and is usable only there. Keys are never replicated by the bridge: creating token objects through a
//! group is refused (`CKR_TEMPLATE_INCONSISTENT`), so that no key exists on one member only.
//!
//! Files: `config.rs` (the section; which sections are members), `prober.rs` (breakers, prober, recovery),
//! `objects.rs` (group objects and their handles on each member), `token.rs`, `session.rs` (routing and failover of
//! calls); this file: the group and its members.

mod config;
mod objects;
mod prober;
mod session;
mod token;

use config::*;
pub use config::{ha_groups, ha_members};
use objects::*;
use session::*;
use token::*;

use super::UpstreamBackend;
use crate::health::Endpoints;
use crate::{
    attribute, ActiveOps, Backend, BackendSession, BuildContext, DualKind, Error, Mechanism,
    ObjRef, OpKind, Out, Result, Template, Token,
};
use cryptoki_sys::*;
use parking_lot::{Mutex, RwLock};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Log target of routing, failover and breaker events (`P11BRIDGE_LOG=p11bridge::ha=debug`).
const T: &str = "p11bridge::ha";

/// Whether a member's answer says the member (not the request) is unwell: fail over and count it.
/// `CKR_GENERAL_ERROR` is not among them: modules also use it for faults of one request, and counting it would let
/// one bad request open every member's breaker.
fn is_member_failure(rv: CK_RV, logged_in: bool) -> bool {
    matches!(
        rv,
        CKR_DEVICE_ERROR
            | CKR_DEVICE_REMOVED
            | CKR_TOKEN_NOT_PRESENT
            | CKR_TOKEN_NOT_RECOGNIZED
            | CKR_SESSION_CLOSED
            | CKR_SESSION_HANDLE_INVALID
            | CKR_CRYPTOKI_NOT_INITIALIZED
    ) || (logged_in && rv == CKR_USER_NOT_LOGGED_IN)
}

struct Member {
    /// Its position in the group (and among the group's breakers).
    index: usize,
    name: String,
    backend: UpstreamBackend,
    /// The member's token, found by its selector (again after a restart).
    token: Mutex<Option<Arc<dyn Token>>>,
    /// Bumped at each recovery: sessions and cached handles of an older epoch are not used again.
    epoch: AtomicU64,
    /// Bumped at each re-initialization of the module: sessions older than it are forgotten, never closed (their
    /// handles may belong to new sessions now).
    reinit: AtomicU64,
    /// Operations, searches and random calls routed here (for the log and tests).
    routed: AtomicU64,
}

impl Member {
    fn token(&self) -> Result<Arc<dyn Token>> {
        let mut t = self.token.lock();
        if let Some(t) = t.as_ref() {
            return Ok(t.clone());
        }
        let fresh = self.backend.token()?;
        *t = Some(fresh.clone());
        Ok(fresh)
    }
}

struct Group {
    name: String,
    members: Vec<Member>,
    objects: RwLock<Objects>,
    rr: AtomicUsize,
    /// The user type the group is logged in as, and by how many unified slots (members that come back are logged
    /// in again, as many times: each member counts its logins).
    login: Mutex<(Option<CK_USER_TYPE>, usize)>,
    ctx: BuildContext,
    probe_interval: Duration,
    reinitialize: bool,
    /// A circuit breaker per member (in `members` order) and the stamp of the prober thread.
    health: Endpoints,
    stop: AtomicBool,
    me: Weak<Group>,
}

pub struct HaBackend {
    group: Arc<Group>,
}

impl HaBackend {
    pub fn from_config(
        name: &str,
        section: &toml::Table,
        all: &BTreeMap<String, toml::Table>,
        ctx: &BuildContext,
    ) -> Result<Self> {
        let cfg: HaConfig = crate::parse_section(name, section)?;
        let err = |m: String| members_error(name, m);
        if cfg.members.len() < 2 {
            return Err(err("an HA group needs at least two members".into()));
        }
        let mut members: Vec<Member> = Vec::new();
        for (i, m) in cfg.members.iter().enumerate() {
            if cfg.members[..i].contains(m) {
                return Err(err(format!("{m} is listed twice")));
            }
            if m == name {
                return Err(err(format!("{m} is the group itself")));
            }
            let sec = member_section(all, name, m)?;
            if sec.contains_key("pki") {
                members.iter().for_each(|x| x.backend.finalize());
                return Err(Error::with(
                    CKR_GENERAL_ERROR,
                    format!("backend.{m}.pki: not for a member of a pkcs11-ha group (certificates from Vault PKI are for kind = \"pkcs11\" backends a slot lists)"),
                ));
            }
            let backend = match UpstreamBackend::from_config(m, sec, ctx) {
                Ok(b) => b,
                Err(e) => {
                    members.iter().for_each(|x| x.backend.finalize());
                    return Err(e);
                }
            };
            members.push(Member {
                index: i,
                name: m.clone(),
                backend,
                token: Mutex::new(None),
                epoch: AtomicU64::new(0),
                reinit: AtomicU64::new(0),
                routed: AtomicU64::new(0),
            });
        }
        let health = Endpoints::new(
            members.len(),
            cfg.failure_threshold,
            Duration::from_millis(cfg.probe_interval_ms),
        );
        let group = Arc::new_cyclic(|me| Group {
            name: name.to_string(),
            members,
            objects: RwLock::new(Objects::default()),
            rr: AtomicUsize::new(0),
            login: Mutex::new((None, 0)),
            ctx: ctx.clone(),
            probe_interval: Duration::from_millis(cfg.probe_interval_ms.max(10)),
            reinitialize: cfg.reinitialize,
            health,
            stop: AtomicBool::new(false),
            me: me.clone(),
        });
        Ok(HaBackend { group })
    }
}

impl Backend for HaBackend {
    fn name(&self) -> &str {
        &self.group.name
    }
    fn kind(&self) -> &'static str {
        "pkcs11-ha"
    }
    fn token(&self) -> Result<Arc<dyn Token>> {
        // At least one member must be there now; the others are found when they answer.
        let mut first_err = None;
        for m in &self.group.members {
            match m.token() {
                Ok(_) => {
                    return Ok(Arc::new(HaToken {
                        g: self.group.clone(),
                    }))
                }
                Err(e) => {
                    tracing::warn!(target: T, group = %self.group.name, member = %m.name, error = %e, "member unavailable");
                    self.group.failed(m, &e);
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err.unwrap_or(Error::new(CKR_DEVICE_ERROR)))
    }
    fn finalize(&self) {
        let g = &self.group;
        g.stop.store(true, SeqCst);
        let start = std::time::Instant::now();
        while g.health.prober().is_running() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        g.members.iter().for_each(|m| m.backend.finalize());
    }
}

impl Group {
    fn logged_in(&self) -> bool {
        self.login.lock().0.is_some()
    }

    /// Member positions from `start`, wrapping around.
    fn order(&self, start: usize) -> impl Iterator<Item = usize> + '_ {
        let n = self.members.len();
        (0..n).map(move |i| (start + i) % n)
    }

    /// The members a call tries, from `start` (wrapping around), among those `keep` allows: the usable ones, then a
    /// last-resort pass (`health::Endpoints::walk_in_passes`; without a prober thread, a member due for a probe is
    /// probed when the walk reaches it).
    fn walk<'a>(
        &'a self,
        start: usize,
        keep: impl Fn(usize) -> bool + Clone + 'a,
    ) -> impl Iterator<Item = usize> + 'a {
        self.health.walk_in_passes(
            self.order(start).collect(),
            self.threads_allowed(),
            keep,
            move |i| self.probe(&self.members[i]),
        )
    }

    fn next_rr(&self) -> usize {
        self.rr.fetch_add(1, SeqCst) % self.members.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_failures_are_device_and_connection_errors() {
        for rv in [
            CKR_DEVICE_ERROR,
            CKR_DEVICE_REMOVED,
            CKR_TOKEN_NOT_PRESENT,
            CKR_SESSION_HANDLE_INVALID,
            CKR_SESSION_CLOSED,
        ] {
            assert!(is_member_failure(rv, false), "{}", crate::rv_name(rv));
        }
        for rv in [
            CKR_GENERAL_ERROR,
            CKR_KEY_HANDLE_INVALID,
            CKR_DATA_LEN_RANGE,
            CKR_MECHANISM_INVALID,
            CKR_SIGNATURE_INVALID,
        ] {
            assert!(!is_member_failure(rv, true), "{}", crate::rv_name(rv));
        }
        assert!(is_member_failure(CKR_USER_NOT_LOGGED_IN, true));
        assert!(!is_member_failure(CKR_USER_NOT_LOGGED_IN, false));
    }
}
