//! An HA group of upstream tokens (`kind = "pkcs11-ha"`): several `kind = "pkcs11"` members that hold the same
//! keys, matched by `CKA_ID` and class. The group is one backend; its operations go to a healthy member
//! (round-robin at each `C_*Init`, search and random call) and fail over to the next one when a member answers with
//! a device or connection error. Each member has a circuit [`Breaker`]: an open member is skipped without a call,
//! and a background prober (one thread per group, only while a member is down) brings it back.
//!
//! Objects: a token object with a non-empty `CKA_ID` is a *group object*, one per (`CKA_ID`, class), resolved on
//! each member lazily (a search by class + id) and cached per member until that member restarts. Everything else
//! (objects without `CKA_ID`, session objects, objects this session creates) is *homed* on the member that found or
//! made it and is usable only there. Keys are never replicated by the bridge: creating token objects through a
//! group is refused (`CKR_TEMPLATE_INCONSISTENT`), so that no key exists on one member only.

use super::UpstreamBackend;
use crate::health::Endpoints;
use crate::{
    ActiveOps, Backend, BackendSession, BuildContext, DualKind, Error, Mechanism, ObjRef, OpKind,
    Out, Result, Template, Token,
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

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct HaConfig {
    #[allow(dead_code)]
    kind: String,
    /// Names of `[backend.NAME] kind = "pkcs11"` sections, in order of preference for objects found on one only.
    members: Vec<String>,
    /// Consecutive member failures that open its breaker (default 1: an HSM's device error is rarely transient).
    #[serde(default = "default_threshold")]
    failure_threshold: u32,
    /// How long an open member is left alone before the next probe, in ms (default 1000).
    #[serde(default = "default_probe_ms")]
    probe_interval_ms: u64,
    /// Re-initialize a member's module (`C_Finalize` + `C_Initialize`) when a probe finds it dead and no other
    /// backend uses that module: for client modules that do not reconnect by themselves (default true).
    #[serde(default = "default_true")]
    reinitialize: bool,
}

fn default_threshold() -> u32 {
    1
}
fn default_probe_ms() -> u64 {
    1000
}
fn default_true() -> bool {
    true
}

/// The HA groups among the `[backend.*]` sections (`kind = "pkcs11-ha"`), each with the members it names, in
/// order; every member is checked to be a `kind = "pkcs11"` section. Errors name the key
/// (`backend.NAME.members: ...`).
pub fn ha_groups(sections: &BTreeMap<String, toml::Table>) -> Result<Vec<(&str, Vec<&str>)>> {
    let mut groups = Vec::new();
    for (name, t) in sections {
        if t.get("kind").and_then(|k| k.as_str()) != Some("pkcs11-ha") {
            continue;
        }
        let err =
            |m: String| Error::with(CKR_GENERAL_ERROR, format!("backend.{name}.members: {m}"));
        let Some(members) = t.get("members").and_then(|m| m.as_array()) else {
            return Err(err(
                "missing (a list of [backend.NAME] sections of kind \"pkcs11\")".into(),
            ));
        };
        let mut names = Vec::with_capacity(members.len());
        for m in members {
            let Some(m) = m.as_str() else {
                return Err(err("members are section names (strings)".into()));
            };
            let Some(section) = sections.get(m) else {
                return Err(err(format!("no [backend.{m}] section")));
            };
            let kind = section.get("kind").and_then(|k| k.as_str()).unwrap_or("");
            if kind != "pkcs11" {
                return Err(err(format!(
                    "{m} is kind = \"{kind}\"; members must be kind = \"pkcs11\""
                )));
            }
            names.push(m);
        }
        groups.push((name.as_str(), names));
    }
    Ok(groups)
}

/// The sections HA groups build as their members (they are never built on their own), from a configuration
/// [`ha_groups`] accepted.
pub fn ha_members(sections: &BTreeMap<String, toml::Table>) -> std::collections::HashSet<&str> {
    ha_groups(sections)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|(_, members)| members)
        .collect()
}

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

/// A group object: the same (`CKA_ID`, class) on every member, or an object of one member only.
enum GObj {
    Shared {
        id: Vec<u8>,
        class: CK_OBJECT_CLASS,
        /// Per member: (epoch, handle) once resolved.
        handles: Vec<Option<(u64, CK_OBJECT_HANDLE)>>,
    },
    Home {
        member: usize,
        epoch: u64,
        handle: CK_OBJECT_HANDLE,
    },
}

#[derive(Default)]
struct Objects {
    list: Vec<GObj>,
    shared: HashMap<(Vec<u8>, CK_OBJECT_CLASS), ObjRef>,
    home: HashMap<(usize, u64, CK_OBJECT_HANDLE), ObjRef>,
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
        let err =
            |m: String| Error::with(CKR_GENERAL_ERROR, format!("backend.{name}.members: {m}"));
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
            let Some(sec) = all.get(m) else {
                return Err(err(format!("no [backend.{m}] section")));
            };
            let kind = sec.get("kind").and_then(|v| v.as_str()).unwrap_or("");
            if kind != "pkcs11" {
                return Err(err(format!(
                    "{m} is kind = \"{kind}\"; members must be kind = \"pkcs11\""
                )));
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

    /// Records a member failure; opening its breaker starts the prober.
    fn failed(&self, m: &Member, e: &Error) {
        if self.health.unwell(m.index) {
            tracing::warn!(target: T, group = %self.name, member = %m.name, error = %e,
                served = m.routed.load(SeqCst), "member down: breaker open");
            self.ensure_prober();
        }
    }

    /// Member positions from `start`, wrapping around.
    fn order(&self, start: usize) -> impl Iterator<Item = usize> + '_ {
        let n = self.members.len();
        (0..n).map(move |i| (start + i) % n)
    }

    fn next_rr(&self) -> usize {
        self.rr.fetch_add(1, SeqCst) % self.members.len()
    }

    fn threads_allowed(&self) -> bool {
        !self.ctx.cant_create_threads
    }

    fn ensure_prober(&self) {
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
    fn probe_loop(&self) {
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
    fn probe(&self, m: &Member) -> bool {
        let back = self.recover(m);
        self.health.probed(m.index, back);
        self.report_probe(m, back);
        back
    }

    /// Checks a member that is down; on success makes it usable again (fresh sessions, a fresh login if the group
    /// is logged in). Whether it is back.
    fn recover(&self, m: &Member) -> bool {
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

    fn report_probe(&self, m: &Member, back: bool) {
        if back {
            tracing::info!(target: T, group = %self.name, member = %m.name,
                served = m.routed.load(SeqCst), "member back: breaker closed");
        }
    }

    fn try_probe(&self, m: &Member) -> Result<()> {
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
    fn usable(&self, i: usize, last_resort: bool) -> bool {
        self.health
            .usable_now(i, self.threads_allowed(), last_resort, || {
                self.probe(&self.members[i])
            })
    }

    /// Whether member `i`'s breaker is closed (believed healthy).
    fn healthy(&self, i: usize) -> bool {
        self.health.breakers[i].is_closed()
    }

    fn intern_shared(
        &self,
        id: Vec<u8>,
        class: CK_OBJECT_CLASS,
        m: usize,
        h: CK_OBJECT_HANDLE,
    ) -> ObjRef {
        let epoch = self.members[m].epoch.load(SeqCst);
        let mut o = self.objects.write();
        if let Some(r) = o.shared.get(&(id.clone(), class)).copied() {
            if let Some(GObj::Shared { handles, .. }) = o.list.get_mut(r as usize) {
                handles[m] = Some((epoch, h));
            }
            return r;
        }
        let r = o.list.len() as ObjRef;
        let mut handles = vec![None; self.members.len()];
        handles[m] = Some((epoch, h));
        o.list.push(GObj::Shared {
            id: id.clone(),
            class,
            handles,
        });
        o.shared.insert((id, class), r);
        r
    }

    fn intern_home(&self, m: usize, h: CK_OBJECT_HANDLE) -> ObjRef {
        let epoch = self.members[m].epoch.load(SeqCst);
        let mut o = self.objects.write();
        if let Some(r) = o.home.get(&(m, epoch, h)) {
            return *r;
        }
        let r = o.list.len() as ObjRef;
        o.list.push(GObj::Home {
            member: m,
            epoch,
            handle: h,
        });
        o.home.insert((m, epoch, h), r);
        r
    }

    /// Forgets the cached handles of the shared objects among `keys` on member `m`; whether there were any.
    fn forget_cached(&self, keys: &[ObjRef], m: usize) -> bool {
        let mut o = self.objects.write();
        let mut any = false;
        for k in keys {
            if let Some(GObj::Shared { handles, .. }) = o.list.get_mut(*k as usize) {
                if let Some(h) = handles.get_mut(m) {
                    any |= h.take().is_some();
                }
            }
        }
        any
    }

    /// The member an object lives on, if it is homed.
    fn home_of(&self, r: ObjRef) -> Result<Option<usize>> {
        match self.objects.read().list.get(r as usize) {
            Some(GObj::Home { member, .. }) => Ok(Some(*member)),
            Some(GObj::Shared { .. }) => Ok(None),
            None => Err(Error::new(CKR_OBJECT_HANDLE_INVALID)),
        }
    }

    /// The object's handle on member `m` (searching it there the first time); `None` if `m` does not hold it.
    fn resolve(
        &self,
        r: ObjRef,
        m: usize,
        bs: &mut dyn BackendSession,
    ) -> Result<Option<CK_OBJECT_HANDLE>> {
        let epoch = self.members[m].epoch.load(SeqCst);
        let (id, class) = match self.objects.read().list.get(r as usize) {
            None => return Err(Error::new(CKR_OBJECT_HANDLE_INVALID)),
            Some(GObj::Home {
                member,
                epoch: e,
                handle,
            }) => {
                return Ok((*member == m && *e == epoch).then_some(*handle));
            }
            Some(GObj::Shared { id, class, handles }) => match handles.get(m).copied().flatten() {
                Some((e, h)) if e == epoch => return Ok(Some(h)),
                _ => (id.clone(), *class),
            },
        };
        let mut class_v = class;
        let mut token: CK_BBOOL = CK_TRUE;
        let t = [
            CK_ATTRIBUTE {
                type_: CKA_CLASS,
                pValue: &mut class_v as *mut _ as *mut std::ffi::c_void,
                ulValueLen: std::mem::size_of::<CK_OBJECT_CLASS>() as CK_ULONG,
            },
            CK_ATTRIBUTE {
                type_: CKA_ID,
                pValue: id.as_ptr() as *mut std::ffi::c_void,
                ulValueLen: id.len() as CK_ULONG,
            },
            CK_ATTRIBUTE {
                type_: CKA_TOKEN,
                pValue: &mut token as *mut _ as *mut std::ffi::c_void,
                ulValueLen: 1,
            },
        ];
        // SAFETY: the attribute values above live until the search returns.
        let found = bs.find(unsafe { Template::from_raw(&t) })?;
        let Some(h) = found.first().map(|h| *h as CK_OBJECT_HANDLE) else {
            return Ok(None);
        };
        if let Some(GObj::Shared { handles, .. }) = self.objects.write().list.get_mut(r as usize) {
            handles[m] = Some((epoch, h));
        }
        Ok(Some(h))
    }
}

pub struct HaToken {
    g: Arc<Group>,
}

impl HaToken {
    /// The first member that answers `f`.
    fn any<T>(&self, f: impl Fn(&dyn Token) -> Result<T>) -> Result<T> {
        let mut first_err = None;
        for last_resort in [false, true] {
            for i in self.g.order(0) {
                if !self.g.usable(i, last_resort) {
                    continue;
                }
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

struct MemberSession {
    bs: Box<dyn BackendSession>,
    epoch: u64,
    reinit: u64,
}

/// A mechanism kept to replay an operation's init on another member: only when its parameter holds no pointers
/// (none, or a plain struct/bytes of the mechanisms listed in [`replayable`]).
#[derive(Clone)]
struct SavedMech {
    mech: CK_MECHANISM_TYPE,
    param: Vec<u8>,
}

fn replayable(m: &Mechanism) -> Option<SavedMech> {
    let p = m.param_bytes();
    let ok = p.is_empty()
        || matches!(
            m.mech_type(),
            CKM_RSA_PKCS_PSS
                | CKM_SHA1_RSA_PKCS_PSS
                | CKM_SHA224_RSA_PKCS_PSS
                | CKM_SHA256_RSA_PKCS_PSS
                | CKM_SHA384_RSA_PKCS_PSS
                | CKM_SHA512_RSA_PKCS_PSS
                | CKM_AES_CBC
                | CKM_AES_CBC_PAD
        );
    ok.then(|| SavedMech {
        mech: m.mech_type(),
        param: p.to_vec(),
    })
}

impl SavedMech {
    fn get(&self) -> Result<Mechanism<'_>> {
        let raw = CK_MECHANISM {
            mechanism: self.mech,
            pParameter: if self.param.is_empty() {
                std::ptr::null_mut()
            } else {
                self.param.as_ptr() as *mut std::ffi::c_void
            },
            ulParameterLen: self.param.len() as CK_ULONG,
        };
        // SAFETY: the parameter bytes live as long as `self`.
        unsafe { Mechanism::from_raw(raw) }
    }
}

#[derive(Clone)]
struct OpState {
    member: usize,
    mech: Option<SavedMech>,
    key: Option<ObjRef>,
    /// An `*Update` went through: the operation cannot move to another member.
    multi: bool,
}

pub struct HaSession {
    g: Arc<Group>,
    rw: bool,
    sess: Vec<Option<MemberSession>>,
    ops: ActiveOps<OpState>,
    /// The member this session's own objects (session objects, objects it creates) live on.
    home: Option<usize>,
    last_op: Option<usize>,
}

impl Drop for HaSession {
    fn drop(&mut self) {
        for i in 0..self.sess.len() {
            self.discard(i);
        }
    }
}

impl HaSession {
    /// Drops the session on member `i`: closed normally, or forgotten if its module was re-initialized since.
    fn discard(&mut self, i: usize) {
        if let Some(s) = self.sess[i].take() {
            if s.reinit != self.g.members[i].reinit.load(SeqCst) {
                std::mem::forget(s.bs);
            }
        }
    }

    fn member_session(&mut self, i: usize) -> Result<&mut dyn BackendSession> {
        let g = self.g.clone();
        let m = &g.members[i];
        let epoch = m.epoch.load(SeqCst);
        if self.sess[i].as_ref().is_some_and(|s| s.epoch != epoch) {
            self.discard(i);
        }
        if self.sess[i].is_none() {
            let bs = m.token()?.open_session(self.rw)?;
            self.sess[i] = Some(MemberSession {
                bs,
                epoch,
                reinit: m.reinit.load(SeqCst),
            });
        }
        match self.sess[i].as_mut() {
            Some(s) => Ok(s.bs.as_mut()),
            None => Err(Error::new(CKR_GENERAL_ERROR)),
        }
    }

    /// A member failed this call: count it, and drop our session there.
    fn member_failed(&mut self, i: usize, e: &Error) {
        tracing::warn!(target: T, group = %self.g.name, member = %self.g.members[i].name, error = %e, "member failed a call");
        self.g.failed(&self.g.members[i], e);
        self.discard(i);
    }

    /// Runs `f` on the first usable member that holds every key in `keys`, from `start`, failing over on member
    /// failures. A key homed on one member pins the call to it. Returns the member used and `f`'s result.
    fn run<R>(
        &mut self,
        keys: &[ObjRef],
        start: usize,
        mut f: impl FnMut(&mut dyn BackendSession, &[CK_OBJECT_HANDLE]) -> Result<R>,
    ) -> Result<(usize, R)> {
        let mut pinned = None;
        for k in keys {
            if let Some(h) = self.g.home_of(*k)? {
                if pinned.is_some_and(|p| p != h) {
                    return Err(Error::with(
                        CKR_KEY_HANDLE_INVALID,
                        "the keys live on different members of the HA group",
                    ));
                }
                pinned = Some(h);
            }
        }
        let logged_in = self.g.logged_in();
        let mut first_err: Option<Error> = None;
        let mut missing = false;
        let n = self.g.members.len();
        for last_resort in [false, true] {
            for i in (0..n).map(|k| (start + k) % n) {
                if pinned.is_some_and(|p| p != i) {
                    continue;
                }
                if !self.g.usable(i, last_resort) {
                    continue;
                }
                let g = self.g.clone();
                let bs = match self.member_session(i) {
                    Ok(bs) => bs,
                    Err(e) => {
                        if is_member_failure(e.rv(), logged_in) {
                            self.member_failed(i, &e);
                            first_err.get_or_insert(e);
                            continue;
                        }
                        return Err(e);
                    }
                };
                let mut r = None;
                // A cached handle the member no longer knows (the key was re-created there out of band) is looked up
                // again, once.
                for attempt in 0..2 {
                    let hs = match resolve_all(&g, keys, i, bs) {
                        Ok(Some(hs)) => hs,
                        Ok(None) => break,
                        Err(e) => {
                            r = Some(Err(e));
                            break;
                        }
                    };
                    g.members[i].routed.fetch_add(1, SeqCst);
                    let out = f(bs, &hs);
                    let stale = matches!(&out, Err(e) if matches!(e.rv(), CKR_KEY_HANDLE_INVALID | CKR_OBJECT_HANDLE_INVALID));
                    r = Some(out);
                    if !(stale && attempt == 0 && g.forget_cached(keys, i)) {
                        break;
                    }
                }
                let Some(r) = r else {
                    // This member does not hold the key: not its fault, try the next.
                    missing = true;
                    continue;
                };
                match r {
                    Ok(v) => return Ok((i, v)),
                    Err(e) if is_member_failure(e.rv(), logged_in) => {
                        self.member_failed(i, &e);
                        first_err.get_or_insert(e);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        if let Some(e) = first_err {
            tracing::warn!(target: T, group = %self.g.name, error = %e, "no member of the HA group could serve the call");
            return Err(Error::with(
                CKR_DEVICE_ERROR,
                "no member of the HA group is available",
            ));
        }
        if missing {
            return Err(Error::with(
                CKR_KEY_HANDLE_INVALID,
                "no available member holds the key",
            ));
        }
        Err(Error::with(
            CKR_DEVICE_ERROR,
            "no member of the HA group is available",
        ))
    }

    /// Where this session's own objects go: its home member, chosen (round-robin among healthy ones) on first use.
    fn home(&mut self) -> Result<usize> {
        if let Some(h) = self.home {
            // A home member that is down is replaced (the objects made there are gone with it anyway).
            if self.g.healthy(h) {
                return Ok(h);
            }
        }
        let start = self.g.next_rr();
        let h = self
            .g
            .order(start)
            .find(|i| self.g.usable(*i, false))
            .or_else(|| self.g.order(start).find(|i| self.g.usable(*i, true)))
            .ok_or_else(|| {
                Error::with(CKR_DEVICE_ERROR, "no member of the HA group is available")
            })?;
        self.home = Some(h);
        Ok(h)
    }

    /// The running operation's state.
    fn op(&self, kind: OpKind) -> Result<OpState> {
        self.ops
            .get(kind)
            .cloned()
            .ok_or(Error::new(CKR_OPERATION_NOT_INITIALIZED))
    }

    /// A call on the member running `kind`'s operation that cannot move: a member failure ends it with
    /// `CKR_DEVICE_ERROR` (the next `C_*Init` goes to a healthy member).
    fn on_op_member<R>(
        &mut self,
        kind: OpKind,
        f: impl FnOnce(&mut dyn BackendSession) -> Result<R>,
    ) -> Result<R> {
        let st = self.op(kind)?;
        let logged_in = self.g.logged_in();
        let r = self.member_session(st.member).and_then(f);
        if let Err(e) = &r {
            if is_member_failure(e.rv(), logged_in) {
                self.member_failed(st.member, e);
                self.ops.clear(kind);
                return Err(Error::with(
                    CKR_DEVICE_ERROR,
                    "the HA member running this operation failed",
                ));
            }
        }
        r
    }

    /// A single-part call that may be replayed on another member (init + call) when its member fails.
    fn single<R>(
        &mut self,
        kind: OpKind,
        mut f: impl FnMut(&mut dyn BackendSession) -> Result<R>,
    ) -> Result<R> {
        let st = self.op(kind)?;
        let logged_in = self.g.logged_in();
        let r = self.member_session(st.member).and_then(&mut f);
        let e = match r {
            Err(e) if is_member_failure(e.rv(), logged_in) => e,
            r => return r,
        };
        self.member_failed(st.member, &e);
        let (Some(saved), false) = (st.mech.clone(), st.multi) else {
            self.ops.clear(kind);
            return Err(Error::with(
                CKR_DEVICE_ERROR,
                "the HA member running this operation failed",
            ));
        };
        let keys: Vec<ObjRef> = st.key.into_iter().collect();
        let start = (st.member + 1) % self.g.members.len();
        let r = self.run(&keys, start, |bs, hs| {
            let m = saved.get()?;
            bs.op_init(kind, &m, hs.first().copied().map(|h| h as ObjRef))?;
            f(bs)
        });
        match r {
            Ok((i, v)) => {
                tracing::info!(target: T, group = %self.g.name, from = %self.g.members[st.member].name,
                    to = %self.g.members[i].name, "operation failed over");
                if let Some(o) = self.ops.get_mut(kind) {
                    o.member = i;
                }
                self.last_op = Some(i);
                Ok(v)
            }
            Err(e) => {
                self.ops.clear(kind);
                Err(e)
            }
        }
    }

    /// Refuses token objects: the bridge does not replicate keys across the group's members.
    fn no_token_objects(templates: &[&Template]) -> Result<()> {
        if templates
            .iter()
            .any(|t| matches!(t.bool_value(CKA_TOKEN), Ok(Some(true))))
        {
            return Err(Error::with(
                CKR_TEMPLATE_INCONSISTENT,
                "an HA group does not create token objects (keys are not replicated across members): provision them on every member",
            ));
        }
        Ok(())
    }

    /// Refuses changes to group objects (they would make the members differ).
    fn homed(&self, obj: ObjRef) -> Result<usize> {
        self.g.home_of(obj)?.ok_or_else(|| {
            Error::with(
                CKR_ACTION_PROHIBITED,
                "objects shared by the HA group's members are not changed through the bridge",
            )
        })
    }

    /// Runs an object-making call on the session's home member.
    fn at_home<R>(
        &mut self,
        keys: &[ObjRef],
        f: impl FnMut(&mut dyn BackendSession, &[CK_OBJECT_HANDLE]) -> Result<R>,
    ) -> Result<(usize, R)> {
        // A key that lives on one member decides (it must be where the new object is made); else the home member,
        // where shared keys are resolved.
        let mut pinned = None;
        for k in keys {
            if let Some(kh) = self.g.home_of(*k)? {
                if pinned.is_some_and(|p| p != kh) {
                    return Err(Error::with(
                        CKR_KEY_HANDLE_INVALID,
                        "the keys live on different members of the HA group",
                    ));
                }
                pinned = Some(kh);
            }
        }
        let h = match pinned {
            Some(kh) => {
                if self.home.is_none() {
                    self.home = Some(kh);
                }
                kh
            }
            None => self.home()?,
        };
        let r = self.run_pinned(h, keys, f);
        if r.is_err() && !self.g.healthy(h) {
            // The home member is down: the next object goes elsewhere.
            self.home = None;
        }
        r
    }

    fn run_pinned<R>(
        &mut self,
        i: usize,
        keys: &[ObjRef],
        mut f: impl FnMut(&mut dyn BackendSession, &[CK_OBJECT_HANDLE]) -> Result<R>,
    ) -> Result<(usize, R)> {
        let logged_in = self.g.logged_in();
        let g = self.g.clone();
        if !g.usable(i, true) {
            return Err(Error::with(
                CKR_DEVICE_ERROR,
                "the HA group member holding this object is down",
            ));
        }
        let r = (|| {
            let bs = self.member_session(i)?;
            let mut hs = Vec::new();
            for k in keys {
                hs.push(g.resolve(*k, i, bs)?.ok_or_else(|| {
                    Error::with(CKR_KEY_HANDLE_INVALID, "the member does not hold the key")
                })?);
            }
            g.members[i].routed.fetch_add(1, SeqCst);
            f(bs, &hs)
        })();
        if let Err(e) = &r {
            if is_member_failure(e.rv(), logged_in) {
                self.member_failed(i, e);
            }
        }
        r.map(|v| (i, v))
    }

    fn routed(&self, what: &str, kind: Option<OpKind>, i: usize) {
        tracing::debug!(target: T, group = %self.g.name, member = %self.g.members[i].name, op = what, kind = ?kind, "routed");
    }
}

impl BackendSession for HaSession {
    fn served_by(&self) -> Option<&str> {
        self.last_op.map(|i| self.g.members[i].name.as_str())
    }
    fn context_login_configured(&mut self) -> Result<()> {
        let i = self
            .last_op
            .ok_or(Error::new(CKR_OPERATION_NOT_INITIALIZED))?;
        self.member_session(i)?.context_login_configured()
    }

    fn find(&mut self, template: Template) -> Result<Vec<ObjRef>> {
        // Session objects live on the home member: search there first when there is one. A member that fails while
        // its results are read is skipped by a second attempt.
        let mut last = None;
        for _ in 0..2 {
            let start = self.home.unwrap_or_else(|| self.g.next_rr());
            let (i, found) = self.run(&[], start, |bs, _| bs.find(template))?;
            self.routed("find", None, i);
            let g = self.g.clone();
            let bs = self.member_session(i)?;
            match intern_found(&g, i, bs, found) {
                Err(e) if is_member_failure(e.rv(), g.logged_in()) => {
                    self.member_failed(i, &e);
                    last = Some(e);
                }
                r => return r,
            }
        }
        Err(last.unwrap_or(Error::new(CKR_DEVICE_ERROR)))
    }
    fn get_attributes(&mut self, obj: ObjRef, template: &mut [CK_ATTRIBUTE]) -> CK_RV {
        let logged_in = self.g.logged_in();
        let start = self.home.unwrap_or(0);
        let r = self.run(&[obj], start, |bs, hs| {
            let rv = bs.get_attributes(hs[0] as ObjRef, template);
            if is_member_failure(rv, logged_in) {
                Err(Error::new(rv))
            } else {
                Ok(rv)
            }
        });
        match r {
            Ok((_, rv)) => rv,
            Err(e) if e.rv() == CKR_KEY_HANDLE_INVALID => CKR_OBJECT_HANDLE_INVALID,
            Err(e) => e.rv(),
        }
    }
    fn set_attributes(&mut self, obj: ObjRef, template: Template) -> Result<()> {
        let h = self.homed(obj)?;
        self.run_pinned(h, &[obj], |bs, hs| {
            bs.set_attributes(hs[0] as ObjRef, template)
        })
        .map(|_| ())
    }
    fn create_object(&mut self, template: Template) -> Result<ObjRef> {
        Self::no_token_objects(&[&template])?;
        let (i, o) = self.at_home(&[], |bs, _| bs.create_object(template))?;
        Ok(self.g.intern_home(i, o as CK_OBJECT_HANDLE))
    }
    fn copy_object(&mut self, obj: ObjRef, template: Template) -> Result<ObjRef> {
        // A copy inherits CKA_TOKEN unless the template says false.
        if !matches!(template.bool_value(CKA_TOKEN), Ok(Some(false))) {
            let mut token: CK_BBOOL = CK_FALSE;
            let mut t = [CK_ATTRIBUTE {
                type_: CKA_TOKEN,
                pValue: &mut token as *mut _ as *mut std::ffi::c_void,
                ulValueLen: 1,
            }];
            let rv = self.get_attributes(obj, &mut t);
            if rv != CKR_OK {
                return Err(Error::new(rv));
            }
            if token == CK_TRUE {
                return Err(Error::with(
                    CKR_TEMPLATE_INCONSISTENT,
                    "an HA group does not create token objects: copy with CKA_TOKEN = FALSE",
                ));
            }
        }
        let (i, o) = self.at_home(&[obj], |bs, hs| bs.copy_object(hs[0] as ObjRef, template))?;
        Ok(self.g.intern_home(i, o as CK_OBJECT_HANDLE))
    }
    fn destroy_object(&mut self, obj: ObjRef) -> Result<()> {
        let h = self.homed(obj)?;
        self.run_pinned(h, &[obj], |bs, hs| bs.destroy_object(hs[0] as ObjRef))
            .map(|_| ())
    }
    fn object_size(&mut self, obj: ObjRef) -> Result<CK_ULONG> {
        let start = self.home.unwrap_or(0);
        self.run(&[obj], start, |bs, hs| bs.object_size(hs[0] as ObjRef))
            .map(|(_, v)| v)
    }

    fn op_init(&mut self, kind: OpKind, mech: &Mechanism, key: Option<ObjRef>) -> Result<()> {
        let keys: Vec<ObjRef> = key.into_iter().collect();
        let start = self.g.next_rr();
        let (i, ()) = self.run(&keys, start, |bs, hs| {
            let k = hs.first().map(|h| *h as ObjRef);
            match bs.op_init(kind, mech, k) {
                // An operation the upstream kept after an error (it moved on to another member meanwhile).
                Err(e) if e.rv() == CKR_OPERATION_ACTIVE => {
                    bs.op_cancel(kind)?;
                    bs.op_init(kind, mech, k)
                }
                r => r,
            }
        })?;
        self.routed("init", Some(kind), i);
        self.ops.set(
            kind,
            OpState {
                member: i,
                mech: replayable(mech),
                key,
                multi: false,
            },
        );
        self.last_op = Some(i);
        Ok(())
    }
    fn op_single(&mut self, kind: OpKind, input: &[u8], mut out: Out) -> Result<usize> {
        self.single(kind, |bs| bs.op_single(kind, input, out.as_deref_mut()))
    }
    fn op_update(&mut self, kind: OpKind, input: &[u8], out: Out) -> Result<usize> {
        if let Some(o) = self.ops.get_mut(kind) {
            o.multi = true;
        }
        self.on_op_member(kind, |bs| bs.op_update(kind, input, out))
    }
    fn op_final(&mut self, kind: OpKind, out: Out) -> Result<usize> {
        self.on_op_member(kind, |bs| bs.op_final(kind, out))
    }
    fn verify(&mut self, data: &[u8], signature: &[u8]) -> Result<()> {
        self.single(OpKind::Verify, |bs| bs.verify(data, signature))
    }
    fn verify_final(&mut self, signature: &[u8]) -> Result<()> {
        self.on_op_member(OpKind::Verify, |bs| bs.verify_final(signature))
    }
    fn digest_key(&mut self, key: ObjRef) -> Result<()> {
        let st = self.op(OpKind::Digest)?;
        if let Some(o) = self.ops.get_mut(OpKind::Digest) {
            o.multi = true;
        }
        let g = self.g.clone();
        self.on_op_member(OpKind::Digest, |bs| {
            let h = g
                .resolve(key, st.member, bs)?
                .ok_or(Error::new(CKR_KEY_HANDLE_INVALID))?;
            bs.digest_key(h as ObjRef)
        })
    }
    fn dual_update(&mut self, kind: DualKind, input: &[u8], out: Out) -> Result<usize> {
        let (a, b) = kind.ops();
        for k in [a, b] {
            if let Some(o) = self.ops.get_mut(k) {
                o.multi = true;
            }
        }
        let (sa, sb) = (self.op(a)?, self.op(b)?);
        if sa.member != sb.member {
            return Err(Error::with(
                CKR_OPERATION_NOT_INITIALIZED,
                "the two operations run on different members of the HA group",
            ));
        }
        self.on_op_member(a, |bs| bs.dual_update(kind, input, out))
    }
    fn op_cancel(&mut self, kind: OpKind) -> Result<()> {
        let Some(st) = self.ops.take(kind) else {
            return Ok(());
        };
        if let Ok(bs) = self.member_session(st.member) {
            let _ = bs.op_cancel(kind);
        }
        Ok(())
    }

    fn generate_key(&mut self, mech: &Mechanism, template: Template) -> Result<ObjRef> {
        Self::no_token_objects(&[&template])?;
        let (i, o) = self.at_home(&[], |bs, _| bs.generate_key(mech, template))?;
        Ok(self.g.intern_home(i, o as CK_OBJECT_HANDLE))
    }
    fn generate_key_pair(
        &mut self,
        mech: &Mechanism,
        public: Template,
        private: Template,
    ) -> Result<(ObjRef, ObjRef)> {
        Self::no_token_objects(&[&public, &private])?;
        let (i, (p, s)) = self.at_home(&[], |bs, _| bs.generate_key_pair(mech, public, private))?;
        Ok((
            self.g.intern_home(i, p as CK_OBJECT_HANDLE),
            self.g.intern_home(i, s as CK_OBJECT_HANDLE),
        ))
    }
    fn wrap_key(
        &mut self,
        mech: &Mechanism,
        wrapping: ObjRef,
        key: ObjRef,
        mut out: Out,
    ) -> Result<usize> {
        let start = self.home.unwrap_or_else(|| self.g.next_rr());
        self.run(&[wrapping, key], start, |bs, hs| {
            bs.wrap_key(mech, hs[0] as ObjRef, hs[1] as ObjRef, out.as_deref_mut())
        })
        .map(|(_, v)| v)
    }
    fn unwrap_key(
        &mut self,
        mech: &Mechanism,
        unwrapping: ObjRef,
        wrapped: &[u8],
        template: Template,
    ) -> Result<ObjRef> {
        Self::no_token_objects(&[&template])?;
        let (i, o) = self.at_home(&[unwrapping], |bs, hs| {
            bs.unwrap_key(mech, hs[0] as ObjRef, wrapped, template)
        })?;
        Ok(self.g.intern_home(i, o as CK_OBJECT_HANDLE))
    }
    fn derive_key(&mut self, mech: &Mechanism, base: ObjRef, template: Template) -> Result<ObjRef> {
        Self::no_token_objects(&[&template])?;
        let (i, o) = self.at_home(&[base], |bs, hs| {
            bs.derive_key(mech, hs[0] as ObjRef, template)
        })?;
        Ok(self.g.intern_home(i, o as CK_OBJECT_HANDLE))
    }
    fn seed_random(&mut self, seed: &[u8]) -> Result<()> {
        let start = self.g.next_rr();
        self.run(&[], start, |bs, _| bs.seed_random(seed))
            .map(|_| ())
    }
    fn generate_random(&mut self, out: &mut [u8]) -> Result<()> {
        let start = self.g.next_rr();
        let (i, ()) = self.run(&[], start, |bs, _| bs.generate_random(out))?;
        self.routed("random", None, i);
        Ok(())
    }
}

/// The handles of `keys` on member `i`; `None` if it does not hold one of them.
fn resolve_all(
    g: &Group,
    keys: &[ObjRef],
    i: usize,
    bs: &mut dyn BackendSession,
) -> Result<Option<Vec<CK_OBJECT_HANDLE>>> {
    let mut hs = Vec::with_capacity(keys.len());
    for k in keys {
        match g.resolve(*k, i, bs)? {
            Some(h) => hs.push(h),
            None => return Ok(None),
        }
    }
    Ok(Some(hs))
}

/// Interns what a search on member `i` found: token objects with a `CKA_ID` as group objects, the rest homed on `i`.
fn intern_found(
    g: &Group,
    i: usize,
    bs: &mut dyn BackendSession,
    found: Vec<ObjRef>,
) -> Result<Vec<ObjRef>> {
    let logged_in = g.logged_in();
    let mut out = Vec::with_capacity(found.len());
    for o in found {
        let mut class: CK_OBJECT_CLASS = 0;
        let mut token: CK_BBOOL = CK_FALSE;
        let mut id = [0u8; 256];
        let mut t = [
            CK_ATTRIBUTE {
                type_: CKA_CLASS,
                pValue: &mut class as *mut _ as *mut std::ffi::c_void,
                ulValueLen: std::mem::size_of::<CK_OBJECT_CLASS>() as CK_ULONG,
            },
            CK_ATTRIBUTE {
                type_: CKA_TOKEN,
                pValue: &mut token as *mut _ as *mut std::ffi::c_void,
                ulValueLen: 1,
            },
            CK_ATTRIBUTE {
                type_: CKA_ID,
                pValue: id.as_mut_ptr() as *mut std::ffi::c_void,
                ulValueLen: id.len() as CK_ULONG,
            },
        ];
        let rv = bs.get_attributes(o, &mut t);
        if is_member_failure(rv, logged_in) {
            return Err(Error::new(rv));
        }
        let id_len = t[2].ulValueLen;
        let shared = rv == CKR_OK
            && token == CK_TRUE
            && id_len != CK_UNAVAILABLE_INFORMATION
            && id_len > 0
            && (id_len as usize) <= id.len();
        let h = o as CK_OBJECT_HANDLE;
        out.push(if shared {
            g.intern_shared(id[..id_len as usize].to_vec(), class, i, h)
        } else {
            g.intern_home(i, h)
        });
    }
    Ok(out)
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

    #[test]
    fn only_pointer_free_parameters_are_replayed() {
        assert!(replayable(&Mechanism::simple(CKM_SHA256_RSA_PKCS)).is_some());
        let mut pss = CK_RSA_PKCS_PSS_PARAMS {
            hashAlg: CKM_SHA256,
            mgf: CKG_MGF1_SHA256,
            sLen: 32,
        };
        let m = Mechanism::with_param(CKM_SHA256_RSA_PKCS_PSS, &mut pss);
        let saved = replayable(&m).expect("PSS parameters hold no pointers");
        let again = saved.get().unwrap();
        assert_eq!(again.param::<CK_RSA_PKCS_PSS_PARAMS>().unwrap().sLen, 32);
        let mut oaep = CK_RSA_PKCS_OAEP_PARAMS {
            hashAlg: CKM_SHA_1,
            mgf: CKG_MGF1_SHA1,
            source: CKZ_DATA_SPECIFIED,
            pSourceData: std::ptr::null_mut(),
            ulSourceDataLen: 0,
        };
        assert!(replayable(&Mechanism::with_param(CKM_RSA_PKCS_OAEP, &mut oaep)).is_none());
    }
}
