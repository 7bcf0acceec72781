//! The token core: global state, slots and tokens, sessions, login, handles, operation routing.
//! It knows the `Backend` trait only; `p11bridge_backends::build_with` is the one place concrete backends are made.

pub mod audit;
pub mod check;
pub mod config;
mod ecparams;
mod emulate;
pub mod handles;
mod keycheck;
mod login;
mod message;
mod objects;
mod ops;
mod session;
mod slot;

pub use message::GcmMessage;
pub use session::Session;
pub use slot::{Slot, SlotKind};

use crate::logging;
use arc_swap::ArcSwapOption;
use cryptoki_sys::*;
use p11bridge_backends::pidlock::PidLock;
use p11bridge_backends::{Backend, BuildContext, Error, Result};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};

/// The initialized module. Replaced as a whole by `C_Initialize`/`C_Finalize`.
pub struct Module {
    /// The fork generation this state belongs to; in a forked child it no longer matches.
    generation: u64,
    pub slots: Vec<Slot>,
    sessions: RwLock<HashMap<CK_SESSION_HANDLE, Arc<Session>>>,
    next_session: AtomicU64,
    backends: Vec<Arc<dyn Backend>>,
    /// The audit trail, when configured.
    pub audit: Option<audit::Audit>,
    /// `library_info = "upstream"`: the backend whose `C_GetInfo` this module reports.
    pub library_info: Option<Arc<dyn Backend>>,
    /// Calls in progress, and whether `C_Finalize` has begun.
    in_flight: std::sync::atomic::AtomicUsize,
    finalizing: std::sync::atomic::AtomicBool,
}

static STATE: ArcSwapOption<Module> = ArcSwapOption::const_empty();
/// Serializes `C_Initialize`/`C_Finalize`; survives fork (a child takes it over).
static INIT_LOCK: PidLock<()> = PidLock::new(());
/// Bumped in the child of every `fork()`.
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);
static ATFORK: Once = Once::new();

extern "C" fn in_child_after_fork() {
    FORK_GENERATION.fetch_add(1, Ordering::SeqCst);
}

/// The initialized module of this process, or `CKR_CRYPTOKI_NOT_INITIALIZED` (also in a forked child that has
/// not called `C_Initialize` itself, and once `C_Finalize` has begun). The guard counts the call as in progress:
/// `C_Finalize` waits for calls in progress before it tears anything down.
pub fn module() -> Result<InCall> {
    let g = STATE.load();
    match &*g {
        Some(m) if m.generation == FORK_GENERATION.load(Ordering::Relaxed) => {
            m.in_flight.fetch_add(1, Ordering::SeqCst);
            if m.finalizing.load(Ordering::SeqCst) {
                m.in_flight.fetch_sub(1, Ordering::SeqCst);
                return Err(Error::new(CKR_CRYPTOKI_NOT_INITIALIZED));
            }
            Ok(InCall(m.clone()))
        }
        _ => Err(Error::new(CKR_CRYPTOKI_NOT_INITIALIZED)),
    }
}

/// A call in progress on the module (see [`module`]).
pub struct InCall(Arc<Module>);

impl std::ops::Deref for InCall {
    type Target = Module;
    fn deref(&self) -> &Module {
        &self.0
    }
}

impl Drop for InCall {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the application said in `CK_C_INITIALIZE_ARGS`.
#[derive(Default, Debug, Clone, Copy)]
pub struct InitArgs {
    pub cant_create_threads: bool,
}

/// `C_Initialize`.
pub fn initialize(args: InitArgs) -> Result<()> {
    ATFORK.call_once(|| {
        // SAFETY: registering a plain function with no captured state.
        unsafe { libc::pthread_atfork(None, None, Some(in_child_after_fork)) };
    });
    let _g = INIT_LOCK.lock();
    let generation = FORK_GENERATION.load(Ordering::SeqCst);
    if let Some(m) = &*STATE.load() {
        if m.generation == generation {
            return Err(Error::new(CKR_CRYPTOKI_ALREADY_INITIALIZED));
        }
    }
    logging::init();
    if args.cant_create_threads {
        tracing::info!(
            "CKF_LIBRARY_CANT_CREATE_OS_THREADS: p11bridge creates no threads of its own; the flag is passed to upstream modules"
        );
    }
    let path = config::config_path();
    let cfg = config::load(&path);
    config::remember_default_interface(cfg.as_ref().ok());
    let cfg = cfg.inspect_err(|e| {
        // The package registers the module with p11-kit system-wide, so every p11-kit program of every user loads
        // it: a default configuration that is absent or not readable by this user is not theirs to hear about
        // (the cause stays readable through C_P11BRIDGE_GetLastError, which `p11bridge check` shows, and the log).
        let explicit = std::env::var_os("P11BRIDGE_CONFIG").is_some();
        let not_ours = !explicit
            && std::fs::File::open(&path).err().is_some_and(|io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                )
            });
        if not_ours {
            logging::fatal_quiet(e)
        } else {
            logging::fatal(e)
        }
    })?;
    let ctx = BuildContext {
        cant_create_threads: args.cant_create_threads,
    };
    p11bridge_backends::diag::configure(cfg.notices);
    let m = Module::build(&cfg, &ctx, generation)
        .map_err(|e| cfg.locate(e))
        .inspect_err(logging::fatal)?;
    tracing::info!(config = %path.display(), slots = m.slots.len(), "initialized");
    let old = STATE.swap(Some(Arc::new(m)));
    if let Some(old) = old {
        // State inherited from the parent process: never run its destructors here (its sessions belong to the
        // parent, its runtime threads do not exist in this process).
        std::mem::forget(old);
    }
    Ok(())
}

/// `C_Finalize`.
pub fn finalize() -> Result<()> {
    let _g = INIT_LOCK.lock();
    let m = {
        let call = module()?;
        call.0.clone()
    };
    // New calls are refused from now on; calls in progress finish first (each is bounded by its backend's
    // deadline), so no upstream module is finalized under a thread that is still inside it.
    m.finalizing.store(true, Ordering::SeqCst);
    STATE.store(None);
    let start = std::time::Instant::now();
    while m.in_flight.load(Ordering::SeqCst) > 0
        && start.elapsed() < std::time::Duration::from_secs(30)
    {
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    m.teardown();
    Ok(())
}

impl Module {
    fn build(cfg: &config::Config, ctx: &BuildContext, generation: u64) -> Result<Module> {
        let mut backends: Vec<Arc<dyn Backend>> = Vec::new();
        let mut by_name: HashMap<String, Arc<dyn Backend>> = HashMap::new();
        let finalize_all = |bs: &Vec<Arc<dyn Backend>>| bs.iter().for_each(|b| b.finalize());
        let used_by_slot = |name: &str| {
            cfg.slot
                .iter()
                .any(|s| s.backends.iter().any(|b| b == name) || s.mirror.as_deref() == Some(name))
        };
        // Members of HA groups (`kind = "pkcs11-ha"`, `members = [...]`) are built by their group (config.rs
        // checked that no slot uses them directly).
        let member_of: std::collections::HashSet<&str> = cfg
            .backend
            .values()
            .filter(|t| t.get("kind").and_then(|v| v.as_str()) == Some("pkcs11-ha"))
            .filter_map(|t| t.get("members").and_then(|v| v.as_array()))
            .flatten()
            .filter_map(|v| v.as_str())
            .collect();
        for (name, section) in &cfg.backend {
            // Only build what a slot uses.
            if !used_by_slot(name) {
                if !member_of.contains(name.as_str()) {
                    tracing::warn!(backend = %name, "configured but not used by any slot");
                }
                continue;
            }
            match p11bridge_backends::build_with(name, section, &cfg.backend, ctx) {
                Ok(b) => {
                    by_name.insert(name.clone(), b.clone());
                    backends.push(b);
                }
                Err(e) => {
                    finalize_all(&backends);
                    return Err(e);
                }
            }
        }
        let mut slots = Vec::new();
        for (i, sc) in cfg.slot.iter().enumerate() {
            match Slot::build(i, sc, &by_name, slots.len() as CK_SLOT_ID) {
                Ok(mut v) => slots.append(&mut v),
                Err(e) => {
                    finalize_all(&backends);
                    return Err(e);
                }
            }
        }
        let audit = audit::Audit::open(&cfg.audit.clone().unwrap_or_default()).map_err(|e| {
            finalize_all(&backends);
            Error::with(CKR_GENERAL_ERROR, e)
        })?;
        let library_info = match cfg.library_info.as_deref() {
            Some("upstream") => cfg.slot[0]
                .mirror
                .as_ref()
                .and_then(|m| by_name.get(m))
                .cloned(),
            _ => None,
        };
        Ok(Module {
            library_info,
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            finalizing: std::sync::atomic::AtomicBool::new(false),
            audit,
            generation,
            slots,
            sessions: RwLock::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            backends,
        })
    }

    fn teardown(&self) {
        let all: Vec<Arc<Session>> = self.sessions.write().drain().map(|(_, s)| s).collect();
        for s in all {
            s.close(self.slot_of(&s));
        }
        for b in &self.backends {
            b.finalize();
        }
    }

    /// Writes one audit event (when the trail is on), `started` being when the call began.
    pub(crate) fn audit(&self, slot: &Slot, event: &audit::Event, started: std::time::Instant) {
        if let Some(a) = &self.audit {
            let backend = event
                .backend
                .and_then(|pos| slot.backends.get(pos))
                .map(|b| b.name.as_str());
            a.record(&slot.audit_name(), backend, event, started.elapsed());
        }
    }

    pub fn slot(&self, id: CK_SLOT_ID) -> Result<&Slot> {
        self.slots
            .get(id as usize)
            .ok_or(Error::new(CKR_SLOT_ID_INVALID))
    }

    fn slot_of(&self, s: &Session) -> &Slot {
        &self.slots[s.slot]
    }

    pub fn session(&self, h: CK_SESSION_HANDLE) -> Result<Arc<Session>> {
        self.sessions
            .read()
            .get(&h)
            .cloned()
            .ok_or(Error::new(CKR_SESSION_HANDLE_INVALID))
    }

    /// The session and its slot.
    pub fn session_slot(&self, h: CK_SESSION_HANDLE) -> Result<(Arc<Session>, &Slot)> {
        let s = self.session(h)?;
        let slot = &self.slots[s.slot];
        Ok((s, slot))
    }

    pub fn slot_list(&self, token_present: bool) -> Vec<CK_SLOT_ID> {
        self.slots
            .iter()
            .filter(|s| !token_present || s.token_present())
            .map(|s| s.id)
            .collect()
    }

    /// `C_OpenSession`.
    pub fn open_session(&self, slot_id: CK_SLOT_ID, flags: CK_FLAGS) -> Result<CK_SESSION_HANDLE> {
        let slot = self.slot(slot_id)?;
        if flags & CKF_SERIAL_SESSION == 0 {
            return Err(Error::new(CKR_SESSION_PARALLEL_NOT_SUPPORTED));
        }
        let rw = flags & CKF_RW_SESSION != 0;
        let handle = self.next_session.fetch_add(1, Ordering::Relaxed) as CK_SESSION_HANDLE;
        let s = Session::open(handle, slot, rw)?;
        self.sessions.write().insert(handle, Arc::new(s));
        Ok(handle)
    }

    /// `C_CloseSession`.
    pub fn close_session(&self, h: CK_SESSION_HANDLE) -> Result<()> {
        let s = self
            .sessions
            .write()
            .remove(&h)
            .ok_or(Error::new(CKR_SESSION_HANDLE_INVALID))?;
        s.close(self.slot_of(&s));
        Ok(())
    }

    /// `C_CloseAllSessions`.
    pub fn close_all_sessions(&self, slot_id: CK_SLOT_ID) -> Result<()> {
        let slot = self.slot(slot_id)?;
        let mine: Vec<Arc<Session>> = {
            let mut map = self.sessions.write();
            let hs: Vec<_> = map
                .iter()
                .filter(|(_, s)| s.slot == slot.index)
                .map(|(h, _)| *h)
                .collect();
            hs.iter().filter_map(|h| map.remove(h)).collect()
        };
        for s in mine {
            s.close(slot);
        }
        Ok(())
    }
}
