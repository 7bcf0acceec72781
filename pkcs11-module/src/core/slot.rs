//! Slots and their tokens: the unified token (one or more backends behind one label and PIN) and mirror slots
//! (one upstream slot each, passed through).

use super::config::SlotConfig;
use super::handles::Handles;
use cryptoki_sys::*;
use p11bridge_backends::{diag, pad, Backend, BackendSession, Error, Result, SecretRef, Token};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// One backend feeding a slot ("member" is kept for the members of an HA group, in backends/).
pub struct SlotBackend {
    pub name: String,
    /// The backend's `kind` (for messages).
    pub kind: &'static str,
    pub token: Arc<dyn Token>,
}

pub enum SlotKind {
    Unified(Box<Unified>),
    /// The upstream slot is `backends[0]`.
    Mirror,
}

pub struct Unified {
    pub label: String,
    pub serial: String,
    user_pin: SecretRef,
    so_pin: Option<SecretRef>,
    pub default_backend: usize,
    pub allow_init_token: bool,
    pub max_sessions: Option<usize>,
    pub max_rw_sessions: Option<usize>,
    /// Union of the backends' mechanisms, in the order the backends list them: merged info and the backends that
    /// offer each.
    pub mechanisms: Vec<(CK_MECHANISM_TYPE, CK_MECHANISM_INFO, Vec<usize>)>,
    mechanism_index: HashMap<CK_MECHANISM_TYPE, usize>,
    /// The first backend with a random number generator (else the operating system's is used).
    pub rng_backend: Option<usize>,
    /// A view's filters (empty: everything).
    pub key_types: Vec<CK_KEY_TYPE>,
    pub labels: Vec<String>,
}

/// Whether `label` matches a pattern where `*` matches any run of characters.
pub fn glob(pattern: &str, label: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == label;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !label.starts_with(first) || label.len() < first.len() + last.len() || !label.ends_with(last)
    {
        return false;
    }
    let mut rest = &label[first.len()..label.len() - last.len()];
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    true
}

/// A configured PIN's reference and, if it cannot be read now, why.
pub type PinStatus = (String, Option<String>);

fn pin_status(p: &SecretRef) -> PinStatus {
    let problem = match p.resolve() {
        Ok(v) if v.expose().is_empty() => Some("it is empty".to_string()),
        Ok(_) => None,
        Err(e) => Some(e.cause().unwrap_or("cannot be read").to_string()),
    };
    (p.describe(), problem)
}

impl Unified {
    /// The user PIN reference and, if it cannot be read now, why.
    pub fn user_pin_status(&self) -> PinStatus {
        pin_status(&self.user_pin)
    }
    /// The SO PIN reference (when one is configured) and, if it cannot be read now, why.
    pub fn so_pin_status(&self) -> Option<PinStatus> {
        self.so_pin.as_ref().map(pin_status)
    }

    /// Whether backend `pos` offers the mechanism itself.
    pub fn offers(&self, pos: usize, mech: CK_MECHANISM_TYPE) -> bool {
        self.mechanism(mech).is_some_and(|m| m.2.contains(&pos))
    }

    fn mechanism(
        &self,
        mech: CK_MECHANISM_TYPE,
    ) -> Option<&(CK_MECHANISM_TYPE, CK_MECHANISM_INFO, Vec<usize>)> {
        self.mechanism_index
            .get(&mech)
            .map(|i| &self.mechanisms[*i])
    }
}

/// Login and session counts of a token.
#[derive(Default, Debug)]
pub struct TokenState {
    pub user: Option<CK_USER_TYPE>,
    pub ro: usize,
    pub rw: usize,
}

pub struct Slot {
    pub id: CK_SLOT_ID,
    /// Position in `Module::slots` (equal to `id`).
    pub index: usize,
    pub kind: SlotKind,
    pub backends: Vec<SlotBackend>,
    pub handles: Handles,
    pub state: Mutex<TokenState>,
}

impl Slot {
    /// Builds the slot(s) of one `[[slot]]` section: one unified slot, or one slot per upstream slot of a mirror.
    pub fn build(
        i: usize,
        sc: &SlotConfig,
        built: &HashMap<String, Arc<dyn Backend>>,
        first_id: CK_SLOT_ID,
    ) -> Result<Vec<Slot>> {
        let at = format!("slot[{i}]");
        let get = |name: &str| {
            built.get(name).cloned().ok_or_else(|| {
                Error::with(
                    CKR_GENERAL_ERROR,
                    format!("{at}: backend {name} is not built"),
                )
            })
        };
        if let Some(m) = &sc.mirror {
            let b = get(m)?;
            let kind = b.kind();
            let tokens = b
                .mirror_tokens()
                .map_err(|e| Error::with(e.rv(), format!("{at}.mirror: {e}")))?;
            return Ok(tokens
                .into_iter()
                .enumerate()
                .map(|(k, token)| {
                    let id = first_id + k as CK_SLOT_ID;
                    Slot {
                        id,
                        index: id as usize,
                        kind: SlotKind::Mirror,
                        backends: vec![SlotBackend {
                            name: m.clone(),
                            kind,
                            token,
                        }],
                        handles: Handles::identity(),
                        state: Mutex::new(TokenState::default()),
                    }
                })
                .collect());
        }
        let label = sc.label.clone().unwrap_or_default();
        let mut backends = Vec::new();
        for name in &sc.backends {
            let b = get(name)?;
            let token = b
                .token()
                .map_err(|e| Error::with(e.rv(), format!("{at}.backends: {name}: {e}")))?;
            backends.push(SlotBackend {
                name: name.clone(),
                kind: b.kind(),
                token,
            });
        }
        let mut mechanisms: Vec<(CK_MECHANISM_TYPE, CK_MECHANISM_INFO, Vec<usize>)> = Vec::new();
        let mut mechanism_index: HashMap<CK_MECHANISM_TYPE, usize> = HashMap::new();
        for (pos, m) in backends.iter().enumerate() {
            let list = m.token.mechanism_list().map_err(|e| {
                Error::with(
                    e.rv(),
                    format!("{at}: backend {}: mechanism list: {e}", m.name),
                )
            })?;
            for mech in list {
                let Ok(info) = m.token.mechanism_info(mech) else {
                    continue;
                };
                let i = *mechanism_index.entry(mech).or_insert_with(|| {
                    mechanisms.push((mech, info, Vec::new()));
                    mechanisms.len() - 1
                });
                let e = &mut mechanisms[i];
                if !e.2.is_empty() {
                    e.1.ulMinKeySize = e.1.ulMinKeySize.min(info.ulMinKeySize);
                    e.1.ulMaxKeySize = e.1.ulMaxKeySize.max(info.ulMaxKeySize);
                    e.1.flags |= info.flags;
                }
                e.2.push(pos);
            }
        }
        let default_backend = sc
            .default_backend
            .as_ref()
            .and_then(|d| sc.backends.iter().position(|b| b == d))
            .unwrap_or(0);
        let rng_backend = backends.iter().position(|m| m.token.has_rng());
        let serial = sc.serial.clone().unwrap_or_else(|| serial_from(&label));
        Ok(vec![Slot {
            id: first_id,
            index: first_id as usize,
            kind: SlotKind::Unified(Box::new(Unified {
                label,
                serial,
                user_pin: sc.user_pin.clone().unwrap_or_else(|| SecretRef::new("")),
                so_pin: sc.so_pin.clone(),
                default_backend,
                allow_init_token: sc.allow_init_token,
                max_sessions: sc.max_sessions,
                max_rw_sessions: sc.max_rw_sessions,
                mechanisms,
                mechanism_index,
                rng_backend,
                key_types: sc
                    .key_types
                    .iter()
                    .filter_map(|k| super::config::key_type_of(k))
                    .collect(),
                labels: sc.labels.clone(),
            })),
            backends,
            handles: Handles::table(),
            state: Mutex::new(TokenState::default()),
        }])
    }

    /// How the audit trail names this token.
    pub fn audit_name(&self) -> String {
        match &self.kind {
            SlotKind::Unified(u) => u.label.clone(),
            SlotKind::Mirror => format!("mirror:{}:{}", self.backends[0].name, self.id),
        }
    }

    fn unified(&self) -> Option<&Unified> {
        match &self.kind {
            SlotKind::Unified(u) => Some(u),
            SlotKind::Mirror => None,
        }
    }

    /// A mirror's upstream (always backend 0): the backend that decides on its own about sessions, login, PINs
    /// and operation state, to which the core passes those calls through. `None` on a unified token, whose core
    /// decides them itself.
    pub fn upstream(&self) -> Option<usize> {
        match self.kind {
            SlotKind::Mirror => Some(0),
            SlotKind::Unified(_) => None,
        }
    }

    /// Whether the core reads and answers p11bridge's own attributes (`CKA_P11BRIDGE_*`) here: on a unified token;
    /// a mirror passes every attribute to its upstream untouched.
    pub fn bridge_attributes(&self) -> bool {
        self.unified().is_some()
    }

    /// A view's filters (key types, labels), when this slot has any.
    pub fn view(&self) -> Option<&Unified> {
        self.unified()
            .filter(|u| !u.key_types.is_empty() || !u.labels.is_empty())
    }

    /// Where new objects go when no template names a backend.
    pub fn default_backend(&self) -> usize {
        self.unified().map_or(0, |u| u.default_backend)
    }

    /// The backend with a random number generator (a mirror's upstream: it answers for itself); `None`: the
    /// operating system's.
    pub fn rng_backend(&self) -> Option<usize> {
        match &self.kind {
            SlotKind::Mirror => Some(0),
            SlotKind::Unified(u) => u.rng_backend,
        }
    }

    /// Whether backend `pos` offers the mechanism itself (a mirror: whether its upstream lists it).
    pub fn offers(&self, pos: usize, mech: CK_MECHANISM_TYPE) -> bool {
        match &self.kind {
            SlotKind::Unified(u) => u.offers(pos, mech),
            SlotKind::Mirror => self.mechanism_list().is_ok_and(|l| l.contains(&mech)),
        }
    }

    /// A hash-and-sign mechanism that backend `pos` of a unified token lacks while it has the raw one: the
    /// emulation (the core hashes, the backend signs the digest) and the raw mechanism. A mirror's upstream
    /// answers for itself: never emulated there.
    pub fn hash_and_sign_emulation(
        &self,
        pos: usize,
        mech: CK_MECHANISM_TYPE,
    ) -> Option<(super::emulate::Emulated, CK_MECHANISM_TYPE)> {
        let u = self.unified()?;
        if u.offers(pos, mech) {
            return None;
        }
        super::emulate::Emulated::new(mech).filter(|(_, base)| u.offers(pos, *base))
    }

    /// Counts a new session in, or refuses it. A mirror opens the upstream's session first (the upstream decides:
    /// token present, session limits, SO rules) and returns it; a unified token applies its own rules. The rules
    /// are checked and the count taken under one lock, so sessions opened at once never exceed the limits.
    pub fn admit_session(&self, rw: bool) -> Result<Option<Box<dyn BackendSession>>> {
        let upstream = match self.upstream() {
            Some(pos) => Some(self.backends[pos].token.open_session(rw)?),
            None => None,
        };
        let mut st = self.state.lock();
        if let SlotKind::Unified(u) = &self.kind {
            if !rw && st.user == Some(CKU_SO) {
                return Err(Error::new(CKR_SESSION_READ_WRITE_SO_EXISTS));
            }
            if u.max_sessions.is_some_and(|m| st.ro + st.rw >= m)
                || (rw && u.max_rw_sessions.is_some_and(|m| st.rw >= m))
            {
                return Err(Error::new(CKR_SESSION_COUNT));
            }
        }
        // The unit tests widen the gap between the check and the count: with both under one lock, no other opening
        // slips in (with the count taken under a second lock, 16 threads opened 20 sessions against a limit of 5).
        #[cfg(test)]
        std::thread::sleep(std::time::Duration::from_micros(200));
        if rw {
            st.rw += 1;
        } else {
            st.ro += 1;
        }
        Ok(upstream)
    }

    /// Counts a closed session out; the last session of a token ends its login (a unified token logs its
    /// backends out; a mirror's upstream ends its own).
    pub fn release_session(&self, rw: bool) {
        let mut st = self.state.lock();
        if rw {
            st.rw = st.rw.saturating_sub(1);
        } else {
            st.ro = st.ro.saturating_sub(1);
        }
        if st.ro + st.rw == 0 && st.user.is_some() {
            st.user = None;
            // Under the state lock: a login racing with this logout must not be undone by it.
            if self.upstream().is_none() {
                self.logout_backends();
            }
        }
    }

    /// For `p11bridge check`: the configured user PIN and SO PIN (reference, and why it cannot be read now); a
    /// mirror has none (the application gives the upstream's own).
    pub fn pin_statuses(&self) -> (Option<PinStatus>, Option<PinStatus>) {
        match &self.kind {
            SlotKind::Unified(u) => (Some(u.user_pin_status()), u.so_pin_status()),
            SlotKind::Mirror => (None, None),
        }
    }

    /// How `p11bridge check` names the slot's kind.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            SlotKind::Unified(_) => "unified",
            SlotKind::Mirror => "mirror",
        }
    }

    pub fn token_present(&self) -> bool {
        match &self.kind {
            SlotKind::Unified(_) => true,
            SlotKind::Mirror => self.backends[0]
                .token
                .slot_info()
                .is_ok_and(|si| si.flags & CKF_TOKEN_PRESENT != 0),
        }
    }

    pub fn slot_info(&self) -> Result<CK_SLOT_INFO> {
        match &self.kind {
            SlotKind::Mirror => self.backends[0].token.slot_info(),
            SlotKind::Unified(u) => Ok(CK_SLOT_INFO {
                slotDescription: pad(&format!("p11bridge unified token {}", u.label)),
                manufacturerID: pad("p11bridge"),
                flags: CKF_TOKEN_PRESENT,
                hardwareVersion: version(),
                firmwareVersion: version(),
            }),
        }
    }

    pub fn token_info(&self) -> Result<CK_TOKEN_INFO> {
        let u = match &self.kind {
            SlotKind::Mirror => return self.backends[0].token.token_info(),
            SlotKind::Unified(u) => u,
        };
        let st = self.state.lock();
        let (ro, rw) = (st.ro, st.rw);
        drop(st);
        let mut flags = CKF_TOKEN_INITIALIZED | CKF_USER_PIN_INITIALIZED | CKF_LOGIN_REQUIRED;
        // Random numbers come from a backend with an RNG, else from the operating system.
        flags |= CKF_RNG;
        let count = |max: Option<usize>| max.map_or(CK_EFFECTIVELY_INFINITE, |n| n as CK_ULONG);
        Ok(CK_TOKEN_INFO {
            label: pad(&u.label),
            manufacturerID: pad("p11bridge"),
            model: pad("unified"),
            serialNumber: pad(&u.serial),
            flags,
            ulMaxSessionCount: count(u.max_sessions),
            ulSessionCount: (ro + rw) as CK_ULONG,
            ulMaxRwSessionCount: count(u.max_rw_sessions),
            ulRwSessionCount: rw as CK_ULONG,
            ulMaxPinLen: 255,
            ulMinPinLen: 1,
            ulTotalPublicMemory: CK_UNAVAILABLE_INFORMATION,
            ulFreePublicMemory: CK_UNAVAILABLE_INFORMATION,
            ulTotalPrivateMemory: CK_UNAVAILABLE_INFORMATION,
            ulFreePrivateMemory: CK_UNAVAILABLE_INFORMATION,
            hardwareVersion: version(),
            firmwareVersion: version(),
            utcTime: [b' '; 16],
        })
    }

    pub fn mechanism_list(&self) -> Result<Vec<CK_MECHANISM_TYPE>> {
        match &self.kind {
            SlotKind::Mirror => self.backends[0].token.mechanism_list(),
            SlotKind::Unified(u) => Ok(u.mechanisms.iter().map(|m| m.0).collect()),
        }
    }

    pub fn mechanism_info(&self, mech: CK_MECHANISM_TYPE) -> Result<CK_MECHANISM_INFO> {
        let mut info = match &self.kind {
            SlotKind::Mirror => self.backends[0].token.mechanism_info(mech)?,
            SlotKind::Unified(u) => u
                .mechanism(mech)
                .map(|m| m.1)
                .ok_or(Error::new(CKR_MECHANISM_INVALID))?,
        };
        // What the core adds: message-based encryption over the backend's single-part one (message.rs).
        info.flags |= super::message::message_flags(mech, &info);
        Ok(info)
    }

    /// The backend that serves a key-less operation (digest) with this mechanism.
    pub fn backend_for_mechanism(&self, mech: CK_MECHANISM_TYPE) -> Result<usize> {
        match &self.kind {
            SlotKind::Mirror => Ok(0),
            SlotKind::Unified(u) => u
                .mechanism(mech)
                .and_then(|m| m.2.first().copied())
                .ok_or(Error::new(CKR_MECHANISM_INVALID)),
        }
    }

    /// `C_InitToken`: passed to a mirror's upstream, and to a unified slot's only backend when the slot has
    /// `allow_init_token = true`; never while a session of this slot is open.
    pub fn init_token(&self, so_pin: Option<&[u8]>, label: &[u8; 32]) -> Result<()> {
        if let SlotKind::Unified(u) = &self.kind {
            if !u.allow_init_token {
                return Err(Error::with(
                    CKR_FUNCTION_NOT_SUPPORTED,
                    "C_InitToken on a unified slot (set allow_init_token = true to pass it through)",
                ));
            }
            if self.backends.len() != 1 {
                return Err(Error::with(
                    CKR_FUNCTION_NOT_SUPPORTED,
                    format!(
                        "C_InitToken on a unified slot needs exactly one backend (this one has {})",
                        self.backends.len()
                    ),
                ));
            }
        }
        let st = self.state.lock();
        if st.ro + st.rw > 0 {
            return Err(Error::new(CKR_SESSION_EXISTS));
        }
        drop(st);
        let backend = &self.backends[0];
        backend.token.init_token(so_pin, label).map_err(|e| {
            if self.upstream().is_none() && e.rv() == CKR_FUNCTION_NOT_SUPPORTED && e.cause().is_none() {
                Error::with(
                    CKR_FUNCTION_NOT_SUPPORTED,
                    format!(
                        "C_InitToken: backend \"{}\" ({}) does not initialize its token through a unified \
                         slot; use a mirror slot",
                        backend.name, backend.kind
                    ),
                )
            } else {
                e
            }
        })
    }

    /// Checks a PIN against the unified token's configuration.
    pub fn check_pin(&self, user: CK_USER_TYPE, pin: &[u8]) -> Result<()> {
        let Some(u) = self.unified() else {
            return Err(Error::new(CKR_GENERAL_ERROR));
        };
        let want = match user {
            CKU_SO => match &u.so_pin {
                Some(p) => p,
                None => return Err(Error::with(CKR_PIN_INCORRECT, "no so_pin is configured")),
            },
            _ => &u.user_pin,
        };
        let want = want.resolve().map_err(|e| {
            // The configuration names a PIN nobody can give: say so, once, in words.
            let text = format!(
                "token \"{}\": {} = \"{}\" cannot be read: {}; nobody can log in to this token",
                u.label,
                if user == CKU_SO { "so_pin" } else { "user_pin" },
                want.describe(),
                e.cause().unwrap_or("")
            );
            diag::report(CKR_FUNCTION_FAILED, text.clone());
            Error::with(CKR_FUNCTION_FAILED, text)
        })?;
        if want.expose().is_empty() {
            return Err(Error::with(
                CKR_FUNCTION_FAILED,
                format!("token \"{}\": the configured PIN is empty", u.label),
            ));
        }
        if want.ct_eq(pin) {
            Ok(())
        } else {
            Err(Error::new(CKR_PIN_INCORRECT))
        }
    }

    /// Logs the backends of a unified token in (after the PIN was checked). A backend that fails is reported
    /// (stderr, the log, the thread's last cause) and skipped: its private objects stay unavailable, the others
    /// work.
    pub fn login_backends(&self, user: CK_USER_TYPE) {
        for m in &self.backends {
            // A backend whose login panics (a bug) is a backend whose login failed: the others stay logged in and
            // the token's login state stays consistent.
            let why = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                m.token.login_configured(user)
            })) {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "internal error (panic caught)".to_string(),
            };
            self.backend_trouble(
                m,
                &format!("login with the configured credentials failed: {why}"),
                "its private keys are not on token",
            );
        }
    }

    /// Reports a backend that cannot serve its objects: which backend, where, what it answered, and what that
    /// means for this token — one line per distinct cause per process.
    pub fn backend_trouble(&self, m: &SlotBackend, what: &str, meaning: &str) {
        let endpoint = m.token.endpoint();
        let at = if endpoint.is_empty() {
            m.kind.to_string()
        } else {
            format!("{}, {endpoint}", m.kind)
        };
        diag::report(
            CKR_OK,
            format!(
                "backend \"{}\" ({at}): {what}; {meaning} \"{}\"",
                m.name,
                self.audit_name()
            ),
        );
    }

    pub fn logout_backends(&self) {
        for m in &self.backends {
            if let Err(e) = m.token.logout_configured() {
                tracing::warn!(backend = %m.name, error = %e, "backend logout failed");
            }
        }
    }
}

fn version() -> CK_VERSION {
    CK_VERSION { major: 0, minor: 1 }
}

/// A stable 16-character serial number derived from the label (FNV-1a, hex).
fn serial_from(label: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in label.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
impl Slot {
    /// A unified slot with no backends and the given session limits (for tests of the core's own rules).
    pub(crate) fn unified_for_test(
        max_sessions: Option<usize>,
        max_rw_sessions: Option<usize>,
    ) -> Slot {
        Slot {
            id: 0,
            index: 0,
            kind: SlotKind::Unified(Box::new(Unified {
                label: "test".into(),
                serial: serial_from("test"),
                user_pin: SecretRef::new("1234"),
                so_pin: None,
                default_backend: 0,
                allow_init_token: false,
                max_sessions,
                max_rw_sessions,
                mechanisms: Vec::new(),
                mechanism_index: HashMap::new(),
                rng_backend: None,
                key_types: Vec::new(),
                labels: Vec::new(),
            })),
            backends: Vec::new(),
            handles: Handles::table(),
            state: Mutex::new(TokenState::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_token_on_a_unified_slot_says_why_it_is_refused() {
        let mut slot = Slot::unified_for_test(None, None);
        let refusal = |slot: &Slot| {
            let e = slot.init_token(Some(b"so"), &[b' '; 32]).unwrap_err();
            (e.rv(), e.cause().unwrap_or("").to_string())
        };
        let (rv, cause) = refusal(&slot);
        assert_eq!(rv, CKR_FUNCTION_NOT_SUPPORTED);
        assert!(cause.contains("set allow_init_token = true"), "{cause}");
        if let SlotKind::Unified(u) = &mut slot.kind {
            u.allow_init_token = true;
        }
        let (rv, cause) = refusal(&slot);
        assert_eq!(rv, CKR_FUNCTION_NOT_SUPPORTED);
        assert!(
            cause.contains("needs exactly one backend (this one has 0)"),
            "{cause}"
        );
    }

    #[test]
    fn label_patterns() {
        assert!(glob("app-*", "app-signing"));
        assert!(glob("*", "anything"));
        assert!(glob("a*c*e", "abcde"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exact2"));
        assert!(!glob("app-*", "other"));
        assert!(!glob("a*b*c", "acb"));
        assert!(!glob("ab*ba", "aba"));
    }
}
