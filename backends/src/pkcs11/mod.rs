//! The upstream PKCS#11 backend: a vendor module loaded with libloading, passed through call for call.
//!
//! Objects are the upstream's objects (`ObjRef` = the upstream handle); templates and mechanism parameters are
//! forwarded intact; return codes are the upstream's.

pub mod ha;
pub mod lib;
mod pki;

use crate::{
    up, Backend, BackendSession, BuildContext, DualKind, Error, Mechanism, ObjRef, OpKind, Out,
    Result, SecretRef, Template, Token,
};
use cryptoki_sys::*;
use lib::Lib;
use parking_lot::Mutex;
use serde::Deserialize;
use std::path::PathBuf;
use std::ptr::null_mut;
use std::sync::Arc;

/// `[backend.NAME] kind = "pkcs11"`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Config {
    #[allow(dead_code)]
    kind: String,
    /// Path of the vendor module.
    module: PathBuf,
    /// Which upstream token a unified slot uses: by label, slot id, or serial number.
    token_label: Option<String>,
    slot_id: Option<u64>,
    token_serial: Option<String>,
    /// The user PIN the bridge logs the upstream token in with.
    pin: Option<SecretRef>,
    /// The SO PIN, for SO logins on the unified token (optional).
    so_pin: Option<SecretRef>,
    /// Certificates from Vault PKI for the token's keys (`crate::pki`), and where their copies are kept (default
    /// `$XDG_CACHE_HOME/p11bridge` or `~/.cache/p11bridge`; the files go in its `pki` directory).
    #[allow(dead_code)] // read by `crate::pki::Pki::from_section` from the section itself
    pki: Option<toml::Table>,
    cert_cache_dir: Option<PathBuf>,
}

pub struct UpstreamBackend {
    name: String,
    lib: Arc<Lib>,
    cfg: Config,
    released: Mutex<bool>,
    /// The login state of each upstream slot a unified slot uses (shared by all such slots).
    configured: Mutex<std::collections::HashMap<CK_SLOT_ID, Arc<Configured>>>,
    /// Certificates from Vault PKI (`pki = {...}`), and their host per upstream slot.
    pki: Option<Arc<crate::pki::Pki>>,
    pki_hosts: Mutex<std::collections::HashMap<CK_SLOT_ID, Arc<pki::HsmPki>>>,
}

impl UpstreamBackend {
    pub fn from_config(name: &str, section: &toml::Table, ctx: &BuildContext) -> Result<Self> {
        let cfg: Config = crate::parse_section(name, section)?;
        let selectors = [
            cfg.token_label.is_some(),
            cfg.slot_id.is_some(),
            cfg.token_serial.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if selectors > 1 {
            return Err(Error::with(
                CKR_GENERAL_ERROR,
                format!("backend.{name}: give only one of token_label, slot_id, token_serial"),
            ));
        }
        if !cfg.module.exists() {
            return Err(Error::with(
                CKR_GENERAL_ERROR,
                format!(
                    "backend.{name}.module: {} does not exist",
                    cfg.module.display()
                ),
            ));
        }
        let lib = lib::acquire(&cfg.module, ctx)
            .map_err(|e| Error::with(e.rv(), format!("backend.{name}.module: {e}")))?;
        Ok(UpstreamBackend {
            name: name.to_string(),
            lib,
            cfg,
            released: Mutex::new(false),
            configured: Mutex::new(std::collections::HashMap::new()),
            pki: None,
            pki_hosts: Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// Reads the section's `pki = {...}` (its `vault` names the `vault-transit` section whose login is used).
    pub fn with_pki(
        mut self,
        section: &toml::Table,
        all: &std::collections::BTreeMap<String, toml::Table>,
        ctx: &BuildContext,
    ) -> Result<Self> {
        let cache =
            crate::remote::cert::CertSource::new("pkcs11", self.cfg.cert_cache_dir.clone(), None)
                .cache_dir;
        self.pki = crate::pki::Pki::from_section(&self.name, "pkcs11", section, all, ctx, cache)?;
        Ok(self)
    }

    /// Forgets every login this backend holds without calling the upstream (its module was re-initialized, or the
    /// token restarted: the sessions that held them are gone). The next `login_configured` logs in afresh.
    pub(crate) fn forget_logins(&self) {
        for c in self.configured.lock().values() {
            let mut a = c.anchor.lock();
            a.session = None;
            a.logins = 0;
        }
    }

    /// Re-initializes the upstream module (`C_Finalize` + `C_Initialize`) if this backend is its only user in the
    /// process; `Ok(false)` if it is shared (then it is left alone).
    pub(crate) fn reinitialize(&self, ctx: &BuildContext) -> Result<bool> {
        let done = lib::reinitialize(&self.lib, ctx)?;
        if done {
            self.forget_logins();
        }
        Ok(done)
    }

    fn slot_list(&self, present: bool) -> Result<Vec<CK_SLOT_ID>> {
        let f = self.lib.f();
        let p = if present { CK_TRUE } else { CK_FALSE };
        two_call_list("C_GetSlotList", |buf, n| up!(f, C_GetSlotList(p, buf, n)))
    }

    fn find_slot(&self) -> Result<CK_SLOT_ID> {
        let name = &self.name;
        if let Some(id) = self.cfg.slot_id {
            return Ok(id as CK_SLOT_ID);
        }
        let (key, want) = match (&self.cfg.token_label, &self.cfg.token_serial) {
            (Some(l), _) => ("token_label", l.clone()),
            (None, Some(s)) => ("token_serial", s.clone()),
            (None, None) => {
                return Err(Error::with(
                    CKR_GENERAL_ERROR,
                    format!(
                        "backend.{name}: a unified slot needs one of token_label, slot_id, token_serial"
                    ),
                ))
            }
        };
        for slot in self.slot_list(true)? {
            let mut ti = std::mem::MaybeUninit::<CK_TOKEN_INFO>::zeroed();
            if up!(self.lib.f(), C_GetTokenInfo(slot, ti.as_mut_ptr())) != CKR_OK {
                continue;
            }
            // SAFETY: filled by the upstream (zeroed otherwise).
            let ti = unsafe { ti.assume_init() };
            let have = if key == "token_label" {
                crate::unpad(&ti.label)
            } else {
                crate::unpad(&ti.serialNumber)
            };
            if have == want {
                return Ok(slot);
            }
        }
        Err(Error::with(
            CKR_GENERAL_ERROR,
            format!(
                "backend.{name}.{key}: no token \"{want}\" in {}",
                self.cfg.module.display()
            ),
        ))
    }
}

impl Backend for UpstreamBackend {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "pkcs11"
    }
    fn token(&self) -> Result<Arc<dyn Token>> {
        let slot = self.find_slot()?;
        let configured = self
            .configured
            .lock()
            .entry(slot)
            .or_insert_with(|| {
                Arc::new(Configured {
                    pin: self.cfg.pin.clone(),
                    so_pin: self.cfg.so_pin.clone(),
                    anchor: Mutex::new(Anchor::default()),
                })
            })
            .clone();
        let pki = self.pki.as_ref().map(|p| {
            self.pki_hosts
                .lock()
                .entry(slot)
                .or_insert_with(|| {
                    Arc::new(pki::HsmPki::new(
                        &self.name,
                        self.lib.clone(),
                        slot,
                        configured.clone(),
                        p.clone(),
                    ))
                })
                .clone()
        });
        Ok(Arc::new(UpstreamToken {
            lib: self.lib.clone(),
            slot,
            configured: Some(configured),
            pki,
        }))
    }
    fn mirror_tokens(&self) -> Result<Vec<Arc<dyn Token>>> {
        Ok(self
            .slot_list(false)?
            .into_iter()
            .map(|slot| {
                Arc::new(UpstreamToken {
                    lib: self.lib.clone(),
                    slot,
                    configured: None,
                    pki: None,
                }) as Arc<dyn Token>
            })
            .collect())
    }
    fn library_info(&self) -> Result<CK_INFO> {
        let mut info = std::mem::MaybeUninit::<CK_INFO>::zeroed();
        Error::check(up!(self.lib.f(), C_GetInfo(info.as_mut_ptr())))?;
        // SAFETY: filled by the upstream.
        Ok(unsafe { info.assume_init() })
    }
    fn finalize(&self) {
        // A renewal signing in the upstream ends before the module is released.
        if let Some(p) = &self.pki {
            p.stop();
        }
        let mut r = self.released.lock();
        if !*r {
            *r = true;
            lib::release(&self.lib);
        }
    }
}

/// The credentials a unified slot logs the upstream in with, and the session that holds that login.
/// Shared by every unified slot over the same upstream token: PKCS#11 login is per application and token, so the
/// slots share one login, counted, and the upstream is logged out when the last of them logs out.
struct Configured {
    pin: Option<SecretRef>,
    so_pin: Option<SecretRef>,
    anchor: Mutex<Anchor>,
}

#[derive(Default)]
struct Anchor {
    session: Option<CK_SESSION_HANDLE>,
    logins: usize,
}

pub struct UpstreamToken {
    lib: Arc<Lib>,
    slot: CK_SLOT_ID,
    /// Set for the unified view, `None` for a mirror slot (whose logins use the caller's PIN).
    configured: Option<Arc<Configured>>,
    /// Certificates from Vault PKI for its keys (unified view only).
    pki: Option<Arc<pki::HsmPki>>,
}

/// The most items an upstream list (slots, mechanisms) may hold, and the most objects one search may return: a
/// module that reports more is broken or hostile, and its count must not become an allocation that aborts the host
/// (found by the `hostile_upstream` fuzz target).
const MAX_UPSTREAM_LIST: usize = 1 << 16;
const MAX_UPSTREAM_OBJECTS: usize = 1 << 20;

/// The two-call convention against an upstream list function (`call(buf, &mut n)`), bounded: at most
/// [`MAX_UPSTREAM_LIST`] items, and a few retries when the list grows between the calls.
fn two_call_list<T: Copy + Default>(
    name: &str,
    mut call: impl FnMut(*mut T, &mut CK_ULONG) -> CK_RV,
) -> Result<Vec<T>> {
    for _ in 0..8 {
        let mut n: CK_ULONG = 0;
        Error::check(call(null_mut(), &mut n))?;
        let want = n as u128;
        if want > MAX_UPSTREAM_LIST as u128 {
            return Err(Error::with(
                CKR_DEVICE_ERROR,
                format!("the upstream module's {name} reports {want} items (at most {MAX_UPSTREAM_LIST} are accepted)"),
            ));
        }
        let mut v = vec![T::default(); want as usize];
        let rv = call(v.as_mut_ptr(), &mut n);
        if rv == CKR_BUFFER_TOO_SMALL {
            continue;
        }
        Error::check(rv)?;
        v.truncate((n as u128).min(want) as usize);
        return Ok(v);
    }
    Err(Error::with(
        CKR_DEVICE_ERROR,
        format!("the upstream module's {name} kept answering CKR_BUFFER_TOO_SMALL"),
    ))
}

/// Every object of session `h` matching the template (`C_FindObjectsInit`, `C_FindObjects` in batches,
/// `C_FindObjectsFinal`); more than `MAX_UPSTREAM_OBJECTS` is an error, not a silent cut.
pub(super) fn find_all(
    lib: &Lib,
    h: CK_SESSION_HANDLE,
    t: *mut CK_ATTRIBUTE,
    tn: CK_ULONG,
) -> Result<Vec<CK_OBJECT_HANDLE>> {
    let f = lib.f();
    Error::check(up!(f, C_FindObjectsInit(h, t, tn)))?;
    let mut all = Vec::new();
    let mut buf = [0 as CK_OBJECT_HANDLE; 256];
    let res = loop {
        let mut n: CK_ULONG = 0;
        let rv = up!(
            f,
            C_FindObjects(h, buf.as_mut_ptr(), buf.len() as CK_ULONG, &mut n)
        );
        if rv != CKR_OK {
            break Err(Error::new(rv));
        }
        let n = (n as usize).min(buf.len());
        all.extend_from_slice(&buf[..n]);
        if n < buf.len() {
            break Ok(all);
        }
        if all.len() >= MAX_UPSTREAM_OBJECTS {
            break Err(Error::with(
                CKR_DEVICE_ERROR,
                format!("the upstream module's search returned more than {MAX_UPSTREAM_OBJECTS} objects"),
            ));
        }
    };
    let rv = up!(f, C_FindObjectsFinal(h));
    let all = res?;
    Error::check(rv)?;
    Ok(all)
}

/// A new serial session (`rw`: read/write) of the upstream module on `slot`.
pub(super) fn open_upstream_session(
    lib: &Lib,
    slot: CK_SLOT_ID,
    rw: bool,
) -> Result<CK_SESSION_HANDLE> {
    let mut flags = CKF_SERIAL_SESSION;
    if rw {
        flags |= CKF_RW_SESSION;
    }
    let mut h: CK_SESSION_HANDLE = 0;
    Error::check(up!(
        lib.f(),
        C_OpenSession(slot, flags, null_mut(), None, &mut h)
    ))?;
    Ok(h)
}

fn pin_ptr(pin: Option<&[u8]>) -> (*mut u8, CK_ULONG) {
    match pin {
        Some(p) => (p.as_ptr() as *mut u8, p.len() as CK_ULONG),
        None => (null_mut(), 0),
    }
}

impl Token for UpstreamToken {
    fn slot_info(&self) -> Result<CK_SLOT_INFO> {
        let mut si = std::mem::MaybeUninit::<CK_SLOT_INFO>::zeroed();
        Error::check(up!(self.lib.f(), C_GetSlotInfo(self.slot, si.as_mut_ptr())))?;
        // SAFETY: filled by the upstream.
        Ok(unsafe { si.assume_init() })
    }
    fn token_info(&self) -> Result<CK_TOKEN_INFO> {
        let mut ti = std::mem::MaybeUninit::<CK_TOKEN_INFO>::zeroed();
        Error::check(up!(
            self.lib.f(),
            C_GetTokenInfo(self.slot, ti.as_mut_ptr())
        ))?;
        // SAFETY: filled by the upstream.
        Ok(unsafe { ti.assume_init() })
    }
    fn mechanism_list(&self) -> Result<Vec<CK_MECHANISM_TYPE>> {
        let f = self.lib.f();
        two_call_list("C_GetMechanismList", |buf, n| {
            up!(f, C_GetMechanismList(self.slot, buf, n))
        })
    }
    fn mechanism_info(&self, mech: CK_MECHANISM_TYPE) -> Result<CK_MECHANISM_INFO> {
        let mut mi = CK_MECHANISM_INFO {
            ulMinKeySize: 0,
            ulMaxKeySize: 0,
            flags: 0,
        };
        Error::check(up!(
            self.lib.f(),
            C_GetMechanismInfo(self.slot, mech, &mut mi)
        ))?;
        Ok(mi)
    }
    fn init_token(&self, so_pin: Option<&[u8]>, label: &[u8; 32]) -> Result<()> {
        if self.configured.is_some() {
            return Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED));
        }
        let (p, n) = pin_ptr(so_pin);
        Error::check(up!(
            self.lib.f(),
            C_InitToken(self.slot, p, n, label.as_ptr() as *mut u8)
        ))
    }
    fn login_configured(&self, user: CK_USER_TYPE) -> Result<()> {
        let Some(c) = &self.configured else {
            return Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED));
        };
        let pin_ref = match user {
            CKU_SO => c.so_pin.as_ref(),
            _ => c.pin.as_ref(),
        };
        let Some(pin_ref) = pin_ref else {
            // Nothing configured: the upstream stays logged out (its public objects remain usable).
            return Ok(());
        };
        let key = if user == CKU_SO { "so_pin" } else { "pin" };
        let pin = pin_ref.resolve().map_err(|e| {
            Error::with(
                CKR_FUNCTION_FAILED,
                format!(
                    "{key} = \"{}\" cannot be read: {}",
                    pin_ref.describe(),
                    e.cause().unwrap_or("")
                ),
            )
        })?;
        let f = self.lib.f();
        let mut anchor = c.anchor.lock();
        if anchor.logins > 0 {
            // Another slot over this upstream token logged it in already.
            anchor.logins += 1;
            return Ok(());
        }
        if anchor.session.is_none() {
            let mut h: CK_SESSION_HANDLE = 0;
            let mut rv = up!(
                f,
                C_OpenSession(
                    self.slot,
                    CKF_SERIAL_SESSION | CKF_RW_SESSION,
                    null_mut(),
                    None,
                    &mut h
                )
            );
            if rv == CKR_TOKEN_WRITE_PROTECTED {
                rv = up!(
                    f,
                    C_OpenSession(self.slot, CKF_SERIAL_SESSION, null_mut(), None, &mut h)
                );
            }
            Error::check(rv)?;
            anchor.session = Some(h);
        }
        let h = anchor.session.unwrap_or_default();
        let (p, n) = pin_ptr(Some(pin.expose()));
        match up!(f, C_Login(h, user, p, n)) {
            CKR_OK | CKR_USER_ALREADY_LOGGED_IN => {
                anchor.logins = 1;
                Ok(())
            }
            rv => Err(Error::with(
                rv,
                format!(
                    "the upstream token refused the configured PIN ({key} = {})",
                    pin_ref.describe()
                ),
            )),
        }
    }
    fn logout_configured(&self) -> Result<()> {
        let Some(c) = &self.configured else {
            return Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED));
        };
        let mut anchor = c.anchor.lock();
        anchor.logins = anchor.logins.saturating_sub(1);
        if anchor.logins == 0 {
            if let Some(h) = anchor.session.take() {
                up!(self.lib.f(), C_Logout(h));
                up!(self.lib.f(), C_CloseSession(h));
            }
        }
        Ok(())
    }
    fn open_session(&self, rw: bool) -> Result<Box<dyn BackendSession>> {
        // Certificates from Vault PKI: the background task starts with the first use of the token.
        if let Some(p) = &self.pki {
            crate::pki::ensure_task(p);
        }
        let h = open_upstream_session(&self.lib, self.slot, rw)?;
        Ok(Box::new(UpstreamSession {
            lib: self.lib.clone(),
            h,
            configured: self.configured.clone(),
        }))
    }
    fn has_rng(&self) -> bool {
        self.token_info().is_ok_and(|t| t.flags & CKF_RNG != 0)
    }
    fn check(&self) -> crate::CheckReport {
        let mut r = crate::default_check(self);
        if let Some(h) = &self.pki {
            // The keys are read while logged in with the configured PIN (private keys are private objects).
            let logged_in = self.login_configured(CKU_USER).is_ok();
            let keys = h.scan();
            if logged_in {
                let _ = self.logout_configured();
            }
            match keys {
                Ok(k) => {
                    let keys: Vec<_> = k.into_iter().map(|x| x.0).collect();
                    h.pki.report_into(&mut r, &keys);
                }
                Err(e) => r
                    .problems
                    .push(format!("cannot read the keys to certify by Vault PKI: {e}")),
            }
        }
        r
    }
    fn endpoint(&self) -> String {
        let label = self
            .token_info()
            .map(|t| String::from_utf8_lossy(&t.label).trim_end().to_string())
            .unwrap_or_default();
        format!(
            "{}, slot {}, token \"{label}\"",
            self.lib.path.display(),
            self.slot
        )
    }
}

pub struct UpstreamSession {
    lib: Arc<Lib>,
    h: CK_SESSION_HANDLE,
    configured: Option<Arc<Configured>>,
}

impl Drop for UpstreamSession {
    fn drop(&mut self) {
        up!(self.lib.f(), C_CloseSession(self.h));
    }
}

/// Calls an upstream function that writes to a caller buffer, mapping the two-call convention onto `Result`.
/// A length an upstream reports for an output is never passed on unchecked: with a buffer, `CKR_OK` and a length
/// beyond it is a lie (the application would read past its buffer); without one, or with `CKR_BUFFER_TOO_SMALL`, a
/// length over 1 GiB is (found by the `hostile_upstream` fuzz target).
const MAX_UPSTREAM_OUTPUT: u128 = 1 << 30;

fn lying_length(len: u128, limit: u128) -> Error {
    Error::with(
        CKR_DEVICE_ERROR,
        format!(
            "the upstream module reported an output of {len} bytes where at most {limit} can be"
        ),
    )
}

/// Calls an upstream function that writes to a caller buffer, mapping the two-call convention onto `Result`.
fn with_out(out: Out, f: impl FnOnce(*mut u8, *mut CK_ULONG) -> CK_RV) -> Result<usize> {
    let (ptr, mut len) = match out {
        None => (null_mut(), 0 as CK_ULONG),
        Some(b) => (b.as_mut_ptr(), b.len() as CK_ULONG),
    };
    let given = len as u128;
    match f(ptr, &mut len) {
        CKR_OK if !ptr.is_null() && len as u128 > given => Err(lying_length(len as u128, given)),
        CKR_OK | CKR_BUFFER_TOO_SMALL if len as u128 > MAX_UPSTREAM_OUTPUT => {
            Err(lying_length(len as u128, MAX_UPSTREAM_OUTPUT))
        }
        CKR_OK => Ok(len as usize),
        CKR_BUFFER_TOO_SMALL => Err(Error::buffer_too_small(len as usize)),
        rv => Err(Error::new(rv)),
    }
}

fn input_ptr(b: &[u8]) -> (*mut u8, CK_ULONG) {
    (b.as_ptr() as *mut u8, b.len() as CK_ULONG)
}

/// A template as the upstream should see it: NULL only if the caller passed NULL (some modules, SoftHSM among them,
/// accept a non-NULL pointer with a count of 0 where they refuse NULL).
fn template_ptr(t: &Template) -> (*mut CK_ATTRIBUTE, CK_ULONG) {
    static EMPTY: [u8; 0] = [];
    if t.is_null() {
        (null_mut(), 0)
    } else if t.is_empty() {
        (EMPTY.as_ptr() as *mut CK_ATTRIBUTE, 0)
    } else {
        (t.raw().as_ptr() as *mut CK_ATTRIBUTE, t.len() as CK_ULONG)
    }
}

impl BackendSession for UpstreamSession {
    fn login(&mut self, user: CK_USER_TYPE, pin: Option<&[u8]>) -> Result<()> {
        let (p, n) = pin_ptr(pin);
        Error::check(up!(self.lib.f(), C_Login(self.h, user, p, n)))
    }
    fn login_user(&mut self, user: CK_USER_TYPE, pin: Option<&[u8]>, name: &[u8]) -> Result<()> {
        let Some(f3) = self.lib.f3() else {
            return Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED));
        };
        let (p, n) = pin_ptr(pin);
        let (u, un) = input_ptr(name);
        Error::check(up!(f3, C_LoginUser(self.h, user, p, n, u, un)))
    }
    fn context_login_configured(&mut self) -> Result<()> {
        let Some(pin_ref) = self.configured.as_ref().and_then(|c| c.pin.clone()) else {
            return Err(Error::new(CKR_PIN_INCORRECT));
        };
        let pin = pin_ref.resolve()?;
        let (p, n) = pin_ptr(Some(pin.expose()));
        Error::check(up!(
            self.lib.f(),
            C_Login(self.h, CKU_CONTEXT_SPECIFIC, p, n)
        ))
    }
    fn logout(&mut self) -> Result<()> {
        Error::check(up!(self.lib.f(), C_Logout(self.h)))
    }
    fn init_pin(&mut self, pin: Option<&[u8]>) -> Result<()> {
        let (p, n) = pin_ptr(pin);
        Error::check(up!(self.lib.f(), C_InitPIN(self.h, p, n)))
    }
    fn set_pin(&mut self, old: Option<&[u8]>, new: Option<&[u8]>) -> Result<()> {
        let (o, on) = pin_ptr(old);
        let (n, nn) = pin_ptr(new);
        Error::check(up!(self.lib.f(), C_SetPIN(self.h, o, on, n, nn)))
    }
    fn get_operation_state(&mut self, out: Out) -> Result<usize> {
        let f = self.lib.f();
        with_out(out, |p, l| up!(f, C_GetOperationState(self.h, p, l)))
    }
    fn set_operation_state(
        &mut self,
        state: &[u8],
        enc_key: Option<ObjRef>,
        auth_key: Option<ObjRef>,
    ) -> Result<()> {
        let (s, sn) = input_ptr(state);
        Error::check(up!(
            self.lib.f(),
            C_SetOperationState(
                self.h,
                s,
                sn,
                enc_key.unwrap_or(0) as CK_OBJECT_HANDLE,
                auth_key.unwrap_or(0) as CK_OBJECT_HANDLE
            )
        ))
    }

    fn find(&mut self, template: Template) -> Result<Vec<ObjRef>> {
        let (t, tn) = template_ptr(&template);
        Ok(find_all(&self.lib, self.h, t, tn)?
            .into_iter()
            .map(|h| h as ObjRef)
            .collect())
    }
    fn get_attributes(&mut self, obj: ObjRef, template: &mut [CK_ATTRIBUTE]) -> CK_RV {
        let given: Vec<(bool, CK_ULONG)> = template
            .iter()
            .map(|a| (!a.pValue.is_null(), a.ulValueLen))
            .collect();
        let rv = up!(
            self.lib.f(),
            C_GetAttributeValue(
                self.h,
                obj as CK_OBJECT_HANDLE,
                template.as_mut_ptr(),
                template.len() as CK_ULONG
            )
        );
        // A length the upstream reports is checked before the application trusts it: with a buffer it cannot
        // exceed that buffer (a value that did not fit is CK_UNAVAILABLE_INFORMATION, §5.7), without one it cannot
        // exceed 1 GiB.
        let mut lied = None;
        for (a, (had_buf, len)) in template.iter_mut().zip(given) {
            let l = a.ulValueLen;
            if l == CK_UNAVAILABLE_INFORMATION {
                continue;
            }
            let limit = if had_buf {
                len as u128
            } else {
                MAX_UPSTREAM_OUTPUT
            };
            if l as u128 > limit {
                lied.get_or_insert((a.type_, l, limit));
                a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
            }
        }
        match lied {
            None => rv,
            Some((t, l, limit)) => {
                crate::diag::set_last(
                    CKR_DEVICE_ERROR,
                    format!(
                        "C_GetAttributeValue: the upstream module reported attribute 0x{t:x} as {l} bytes where at most {limit} can be"
                    ),
                );
                CKR_DEVICE_ERROR
            }
        }
    }
    fn set_attributes(&mut self, obj: ObjRef, template: Template) -> Result<()> {
        let (t, tn) = template_ptr(&template);
        Error::check(up!(
            self.lib.f(),
            C_SetAttributeValue(self.h, obj as CK_OBJECT_HANDLE, t, tn)
        ))
    }
    fn create_object(&mut self, template: Template) -> Result<ObjRef> {
        let (t, tn) = template_ptr(&template);
        let mut h: CK_OBJECT_HANDLE = 0;
        Error::check(up!(self.lib.f(), C_CreateObject(self.h, t, tn, &mut h)))?;
        Ok(h as ObjRef)
    }
    fn copy_object(&mut self, obj: ObjRef, template: Template) -> Result<ObjRef> {
        let (t, tn) = template_ptr(&template);
        let mut h: CK_OBJECT_HANDLE = 0;
        Error::check(up!(
            self.lib.f(),
            C_CopyObject(self.h, obj as CK_OBJECT_HANDLE, t, tn, &mut h)
        ))?;
        Ok(h as ObjRef)
    }
    fn destroy_object(&mut self, obj: ObjRef) -> Result<()> {
        Error::check(up!(
            self.lib.f(),
            C_DestroyObject(self.h, obj as CK_OBJECT_HANDLE)
        ))
    }
    fn object_size(&mut self, obj: ObjRef) -> Result<CK_ULONG> {
        let mut n: CK_ULONG = 0;
        Error::check(up!(
            self.lib.f(),
            C_GetObjectSize(self.h, obj as CK_OBJECT_HANDLE, &mut n)
        ))?;
        Ok(n)
    }

    fn op_init(&mut self, kind: OpKind, mech: &Mechanism, key: Option<ObjRef>) -> Result<()> {
        let f = self.lib.f();
        let mut m = mech.raw();
        let k = key.unwrap_or(0) as CK_OBJECT_HANDLE;
        let h = self.h;
        Error::check(match kind {
            OpKind::Encrypt => up!(f, C_EncryptInit(h, &mut m, k)),
            OpKind::Decrypt => up!(f, C_DecryptInit(h, &mut m, k)),
            OpKind::Digest => up!(f, C_DigestInit(h, &mut m)),
            OpKind::Sign => up!(f, C_SignInit(h, &mut m, k)),
            OpKind::Verify => up!(f, C_VerifyInit(h, &mut m, k)),
            OpKind::SignRecover => up!(f, C_SignRecoverInit(h, &mut m, k)),
            OpKind::VerifyRecover => up!(f, C_VerifyRecoverInit(h, &mut m, k)),
        })
    }
    fn op_single(&mut self, kind: OpKind, input: &[u8], out: Out) -> Result<usize> {
        let f = self.lib.f();
        let h = self.h;
        let (i, n) = input_ptr(input);
        with_out(out, |p, l| match kind {
            OpKind::Encrypt => up!(f, C_Encrypt(h, i, n, p, l)),
            OpKind::Decrypt => up!(f, C_Decrypt(h, i, n, p, l)),
            OpKind::Digest => up!(f, C_Digest(h, i, n, p, l)),
            OpKind::Sign => up!(f, C_Sign(h, i, n, p, l)),
            OpKind::SignRecover => up!(f, C_SignRecover(h, i, n, p, l)),
            OpKind::VerifyRecover => up!(f, C_VerifyRecover(h, i, n, p, l)),
            OpKind::Verify => CKR_FUNCTION_NOT_SUPPORTED,
        })
    }
    fn op_update(&mut self, kind: OpKind, input: &[u8], out: Out) -> Result<usize> {
        let f = self.lib.f();
        let h = self.h;
        let (i, n) = input_ptr(input);
        match kind {
            OpKind::Encrypt => with_out(out, |p, l| up!(f, C_EncryptUpdate(h, i, n, p, l))),
            OpKind::Decrypt => with_out(out, |p, l| up!(f, C_DecryptUpdate(h, i, n, p, l))),
            OpKind::Digest => Error::check(up!(f, C_DigestUpdate(h, i, n))).map(|_| 0),
            OpKind::Sign => Error::check(up!(f, C_SignUpdate(h, i, n))).map(|_| 0),
            OpKind::Verify => Error::check(up!(f, C_VerifyUpdate(h, i, n))).map(|_| 0),
            OpKind::SignRecover | OpKind::VerifyRecover => {
                Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED))
            }
        }
    }
    fn op_final(&mut self, kind: OpKind, out: Out) -> Result<usize> {
        let f = self.lib.f();
        let h = self.h;
        with_out(out, |p, l| match kind {
            OpKind::Encrypt => up!(f, C_EncryptFinal(h, p, l)),
            OpKind::Decrypt => up!(f, C_DecryptFinal(h, p, l)),
            OpKind::Digest => up!(f, C_DigestFinal(h, p, l)),
            OpKind::Sign => up!(f, C_SignFinal(h, p, l)),
            _ => CKR_FUNCTION_NOT_SUPPORTED,
        })
    }
    fn verify(&mut self, data: &[u8], signature: &[u8]) -> Result<()> {
        let (d, dn) = input_ptr(data);
        let (s, sn) = input_ptr(signature);
        Error::check(up!(self.lib.f(), C_Verify(self.h, d, dn, s, sn)))
    }
    fn verify_final(&mut self, signature: &[u8]) -> Result<()> {
        let (s, sn) = input_ptr(signature);
        Error::check(up!(self.lib.f(), C_VerifyFinal(self.h, s, sn)))
    }
    fn digest_key(&mut self, key: ObjRef) -> Result<()> {
        Error::check(up!(
            self.lib.f(),
            C_DigestKey(self.h, key as CK_OBJECT_HANDLE)
        ))
    }
    fn dual_update(&mut self, kind: DualKind, input: &[u8], out: Out) -> Result<usize> {
        let f = self.lib.f();
        let h = self.h;
        let (i, n) = input_ptr(input);
        with_out(out, |p, l| match kind {
            DualKind::DigestEncrypt => up!(f, C_DigestEncryptUpdate(h, i, n, p, l)),
            DualKind::DecryptDigest => up!(f, C_DecryptDigestUpdate(h, i, n, p, l)),
            DualKind::SignEncrypt => up!(f, C_SignEncryptUpdate(h, i, n, p, l)),
            DualKind::DecryptVerify => up!(f, C_DecryptVerifyUpdate(h, i, n, p, l)),
        })
    }
    fn op_cancel(&mut self, kind: OpKind) -> Result<()> {
        if let Some(f3) = self.lib.f3() {
            let rv = up!(f3, C_SessionCancel(self.h, kind.cancel_flag()));
            if rv == CKR_OK {
                return Ok(());
            }
        }
        // A 2.40 module has no cancel: finish the operation into a scratch buffer and drop the result. Any error
        // also ends the operation (spec §5.2), which is what we want.
        let mut scratch = vec![0u8; 16384];
        let r = match kind {
            OpKind::Verify => self.verify_final(&[0u8; 1]).map(|_| 0),
            OpKind::SignRecover | OpKind::VerifyRecover => {
                self.op_single(kind, &[0u8; 1], Some(&mut scratch))
            }
            _ => self.op_final(kind, Some(&mut scratch)),
        };
        if r.is_err() {
            // Single-part mechanisms refuse *Final and some modules (SoftHSM) keep the operation: end it with a
            // single-part call. If the first call did end it, this one just says OPERATION_NOT_INITIALIZED.
            let _ = self.op_single(kind, &[0u8; 1], Some(&mut scratch));
        }
        zeroize::Zeroize::zeroize(&mut scratch);
        Ok(())
    }

    fn generate_key(&mut self, mech: &Mechanism, template: Template) -> Result<ObjRef> {
        let mut m = mech.raw();
        let (t, tn) = template_ptr(&template);
        let mut h: CK_OBJECT_HANDLE = 0;
        Error::check(up!(
            self.lib.f(),
            C_GenerateKey(self.h, &mut m, t, tn, &mut h)
        ))?;
        Ok(h as ObjRef)
    }
    fn generate_key_pair(
        &mut self,
        mech: &Mechanism,
        public: Template,
        private: Template,
    ) -> Result<(ObjRef, ObjRef)> {
        let mut m = mech.raw();
        let (pt, ptn) = template_ptr(&public);
        let (st, stn) = template_ptr(&private);
        let (mut hp, mut hs): (CK_OBJECT_HANDLE, CK_OBJECT_HANDLE) = (0, 0);
        Error::check(up!(
            self.lib.f(),
            C_GenerateKeyPair(self.h, &mut m, pt, ptn, st, stn, &mut hp, &mut hs)
        ))?;
        Ok((hp as ObjRef, hs as ObjRef))
    }
    fn wrap_key(
        &mut self,
        mech: &Mechanism,
        wrapping: ObjRef,
        key: ObjRef,
        out: Out,
    ) -> Result<usize> {
        let f = self.lib.f();
        let mut m = mech.raw();
        let h = self.h;
        with_out(out, |p, l| {
            up!(
                f,
                C_WrapKey(
                    h,
                    &mut m,
                    wrapping as CK_OBJECT_HANDLE,
                    key as CK_OBJECT_HANDLE,
                    p,
                    l
                )
            )
        })
    }
    fn unwrap_key(
        &mut self,
        mech: &Mechanism,
        unwrapping: ObjRef,
        wrapped: &[u8],
        template: Template,
    ) -> Result<ObjRef> {
        let mut m = mech.raw();
        let (w, wn) = input_ptr(wrapped);
        let (t, tn) = template_ptr(&template);
        let mut h: CK_OBJECT_HANDLE = 0;
        Error::check(up!(
            self.lib.f(),
            C_UnwrapKey(
                self.h,
                &mut m,
                unwrapping as CK_OBJECT_HANDLE,
                w,
                wn,
                t,
                tn,
                &mut h
            )
        ))?;
        Ok(h as ObjRef)
    }
    fn derive_key(&mut self, mech: &Mechanism, base: ObjRef, template: Template) -> Result<ObjRef> {
        let mut m = mech.raw();
        let (t, tn) = template_ptr(&template);
        let mut h: CK_OBJECT_HANDLE = 0;
        Error::check(up!(
            self.lib.f(),
            C_DeriveKey(self.h, &mut m, base as CK_OBJECT_HANDLE, t, tn, &mut h)
        ))?;
        Ok(h as ObjRef)
    }
    fn seed_random(&mut self, seed: &[u8]) -> Result<()> {
        let (s, n) = input_ptr(seed);
        Error::check(up!(self.lib.f(), C_SeedRandom(self.h, s, n)))
    }
    fn generate_random(&mut self, out: &mut [u8]) -> Result<()> {
        Error::check(up!(
            self.lib.f(),
            C_GenerateRandom(self.h, out.as_mut_ptr(), out.len() as CK_ULONG)
        ))
    }
}
