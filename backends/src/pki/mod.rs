//! Certificates issued by Vault PKI for a backend's keys (`pki = { ... }` in a `[backend.NAME]` section).
//!
//! For each selected key the bridge builds a PKCS#10 request signed by the key itself through its own backend
//! (`csr.rs`), sends it to `POST /v1/<mount>/sign/<role>` of the Vault named by `pki.vault` (a `vault-transit`
//! section: its addresses, TLS settings and login), and serves the certificate as the key's `CKO_CERTIFICATE` and
//! each CA certificate of `ca_chain` as an authority certificate. Certificates are kept in `<cert cache>/pki/` so that
//! a restart serves them at once. Issuance and renewal run only in the background (one task per backend and process
//! on the module's runtime, [`ensure_task`]): no PKCS#11 call waits for Vault PKI. A failure keeps the certificate
//! in use, is said once on stderr ([`crate::diag::notice`]), kept for `p11bridge check` (also on disk, for a check
//! made by another process), and retried with a backoff.
//!
//! The backend says which keys it has, signs with them and shows what was issued through [`Host`]; everything else
//! is here. `remote::Shared` (Vault transit, KMS) and the upstream PKCS#11 backend are hosts.

pub mod csr;

use crate::remote::mech::SignRequest;
use crate::remote::{Certificate, Curve, KeyMaterial};
use crate::{BuildContext, Error, Result};
use cryptoki_sys::*;
use parking_lot::{Mutex, RwLock};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

/// The `pki = { ... }` table of a backend section.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct PkiConfig {
    /// The `[backend.NAME]` section (kind `vault-transit`) whose addresses, TLS settings and login are used; default
    /// for a `vault-transit` backend: itself.
    pub vault: Option<String>,
    /// The PKI secrets engine's mount.
    #[serde(default = "default_mount")]
    pub mount: String,
    /// The role the requests are signed under (`<mount>/sign/<role>`).
    pub role: String,
    /// The certificate's common name; `{label}` and `{name}` are replaced by the key's label and backend name.
    #[serde(default = "default_common_name")]
    pub common_name: String,
    /// Subject alternative names (same placeholders), sent as Vault's `alt_names`.
    #[serde(default)]
    pub alt_names: Vec<String>,
    /// The validity asked for (Vault's `ttl`, e.g. `"24h"`); default: the role's.
    pub ttl: Option<String>,
    /// Renew when less than this much validity remains (default: a third of the certificate's validity).
    pub renew_before: Option<String>,
    /// Which keys (by name or label); default: every key of the backend that can sign (RSA, EC P-256/384/521,
    /// Ed25519).
    #[serde(default)]
    pub keys: Vec<String>,
}

fn default_mount() -> String {
    "pki".into()
}

fn default_common_name() -> String {
    "{label}".into()
}

/// A duration as Vault writes one: `90`, `90s`, `15m`, `24h`, `7d`, or several (`1h30m`).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<u64>() {
        return Some(Duration::from_secs(n));
    }
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    num.is_empty().then_some(Duration::from_secs(total))
}

/// Replaces `{label}` and `{name}`; `Err` names an unknown placeholder.
fn expand(template: &str, label: &str, name: &str) -> std::result::Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let Some(j) = after.find('}') else {
            return Err(format!("\"{template}\": an unclosed {{"));
        };
        match &after[..j] {
            "label" => out.push_str(label),
            "name" => out.push_str(name),
            other => {
                return Err(format!(
                    "\"{template}\": unknown placeholder {{{other}}} ({{label}} and {{name}} are known)"
                ))
            }
        }
        rest = &after[j + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Vault PKI as the bridge uses it: one `sign` request.
pub trait Issuer: Send + Sync {
    /// `POST /v1/<path>` with `body`; the answer, or the fault in Vault's words (node, status, `errors`).
    fn post(&self, path: &str, body: Value) -> Result<Value>;
    /// The Vault addresses, for people.
    fn endpoint(&self) -> String;
}

/// A key as the PKI layer needs it (no network to get it).
#[derive(Clone, Debug)]
pub struct PkiKey {
    /// The backend's name for it (Vault key name, KMS ARN, upstream `CKA_ID` in hex).
    pub name: String,
    pub label: String,
    pub material: KeyMaterial,
}

/// A certificate issued for a key, with the CA certificates Vault gave along.
#[derive(Clone, Debug)]
pub struct Issued {
    pub leaf: Certificate,
    /// `ca_chain` (DER), issuer first.
    pub chain: Vec<Vec<u8>>,
    pub facts: csr::Facts,
}

#[derive(Default)]
struct KeyState {
    issued: Option<Arc<Issued>>,
    /// The last failure (`None` after a success), and when it happened.
    last_error: Option<String>,
    failures: u32,
    next_try: Option<Instant>,
    /// Whether the disk cache was read for it.
    loaded: bool,
}

/// What a backend does for its PKI certificates.
pub trait Host: Send + Sync + 'static {
    fn pki(&self) -> Option<&Arc<Pki>>;
    /// The backend's keys the configuration selects, as known now (from its cache: no network).
    fn pki_keys(&self) -> Vec<PkiKey>;
    /// A signature by the key (PKCS#11 format), through the backend.
    fn pki_sign(&self, key: &PkiKey, req: &SignRequest) -> Result<Vec<u8>>;
    /// Serves a newly issued certificate (and its chain) for the key from now on.
    fn pki_installed(&self, key: &PkiKey, issued: &Arc<Issued>) -> Result<()>;
}

/// One backend's PKI certificates.
pub struct Pki {
    backend: String,
    kind: &'static str,
    cfg: PkiConfig,
    renew_before: Option<Duration>,
    issuer: Arc<dyn Issuer>,
    /// `<cert cache>/pki`.
    dir: Option<PathBuf>,
    state: Mutex<HashMap<String, KeyState>>,
    /// Every CA certificate served so far (index = its object number; never reused).
    authorities: RwLock<Vec<Vec<u8>>>,
    /// The pid of the process whose renewal task runs (`None`: none started; after `fork()` another pid).
    task: Mutex<Option<u32>>,
    stopped: AtomicBool,
    /// Held while a renewal runs, so that `stop` can wait for it (an upstream module must not be finalized under it).
    busy: Mutex<()>,
    /// How often the task looks at the keys.
    tick: Duration,
}

/// How often the renewal task looks at the keys (only in memory; requests only for keys that are due).
const TICK: Duration = Duration::from_millis(500);
/// The longest wait between two attempts after failures (1 s, 2 s, 4 s, ... up to this).
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// An error about `backend.NAME.pki...`.
fn config_error(name: &str, msg: impl std::fmt::Display) -> Error {
    Error::with(CKR_GENERAL_ERROR, format!("backend.{name}.pki{msg}"))
}

impl Pki {
    /// The `pki` table of a section, if there is one: checked, with its issuer built from the `vault` section it
    /// names (`kind`: this backend's kind; a `vault-transit` backend defaults to itself).
    pub fn from_section(
        name: &str,
        kind: &'static str,
        section: &toml::Table,
        all: &std::collections::BTreeMap<String, toml::Table>,
        ctx: &BuildContext,
        cache_dir: Option<PathBuf>,
    ) -> Result<Option<Arc<Pki>>> {
        let Some(v) = section.get("pki") else {
            return Ok(None);
        };
        let cfg: PkiConfig = v
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| config_error(name, format!(": {}", e.message())))?;
        if cfg.role.trim().is_empty() {
            return Err(config_error(name, ".role: empty"));
        }
        if cfg.mount.trim_matches('/').is_empty() {
            return Err(config_error(name, ".mount: empty"));
        }
        for t in std::iter::once(&cfg.common_name).chain(&cfg.alt_names) {
            let field = if t == &cfg.common_name {
                "common_name"
            } else {
                "alt_names"
            };
            let e =
                expand(t, "l", "n").map_err(|e| config_error(name, format!(".{field}: {e}")))?;
            if e.trim().is_empty() {
                return Err(config_error(name, format!(".{field}: empty")));
            }
        }
        let dur = |field: &str, v: &Option<String>| -> Result<Option<Duration>> {
            match v {
                None => Ok(None),
                Some(s) => match parse_duration(s) {
                    Some(d) if !d.is_zero() => Ok(Some(d)),
                    _ => Err(config_error(
                        name,
                        format!(
                            ".{field}: \"{s}\" is not a duration (e.g. \"24h\", \"90m\", \"30s\")"
                        ),
                    )),
                },
            }
        };
        let ttl = dur("ttl", &cfg.ttl)?;
        let renew_before = dur("renew_before", &cfg.renew_before)?;
        if let (Some(t), Some(r)) = (ttl, renew_before) {
            if r >= t {
                return Err(config_error(
                    name,
                    format!(
                        ".renew_before: {} is not shorter than ttl {} (the certificate would be renewed at once, forever)",
                        cfg.renew_before.as_deref().unwrap_or(""),
                        cfg.ttl.as_deref().unwrap_or("")
                    ),
                ));
            }
        }
        let vault = match (&cfg.vault, kind) {
            (Some(v), _) => v.clone(),
            (None, "vault-transit") => name.to_string(),
            (None, _) => {
                return Err(config_error(
                    name,
                    ".vault: missing: name the [backend.NAME] section (kind = \"vault-transit\") whose address and login the PKI requests use",
                ))
            }
        };
        let Some(vsec) = all.get(&vault) else {
            return Err(config_error(
                name,
                format!(".vault: no [backend.{vault}] section"),
            ));
        };
        if vsec.get("kind").and_then(|k| k.as_str()) != Some("vault-transit") {
            return Err(config_error(
                name,
                format!(".vault: [backend.{vault}] is not of kind \"vault-transit\""),
            ));
        }
        let issuer = crate::vault::pki_issuer(&vault, vsec, ctx).map_err(|e| {
            config_error(
                name,
                format!(".vault: {}", e.cause().unwrap_or("cannot be used")),
            )
        })?;
        Ok(Some(Arc::new(Pki::new(
            name,
            kind,
            cfg,
            renew_before,
            issuer,
            cache_dir.map(|d| d.join("pki")),
        ))))
    }

    pub fn new(
        backend: &str,
        kind: &'static str,
        cfg: PkiConfig,
        renew_before: Option<Duration>,
        issuer: Arc<dyn Issuer>,
        dir: Option<PathBuf>,
    ) -> Pki {
        Pki {
            backend: backend.to_string(),
            kind,
            cfg,
            renew_before,
            issuer,
            dir,
            state: Mutex::new(HashMap::new()),
            authorities: RwLock::new(Vec::new()),
            task: Mutex::new(None),
            stopped: AtomicBool::new(false),
            busy: Mutex::new(()),
            tick: TICK,
        }
    }

    /// Whether a key gets a certificate from Vault PKI: named in `keys` (by name or label, KMS also `alias/LABEL`),
    /// or, without `keys`, every key that signs with a type Vault PKI takes.
    pub fn selects(&self, name: &str, label: &str, signs: bool, material: &KeyMaterial) -> bool {
        let supported = matches!(
            material,
            KeyMaterial::Rsa { .. }
                | KeyMaterial::Ed25519 { .. }
                | KeyMaterial::Ec {
                    curve: Curve::P256 | Curve::P384 | Curve::P521,
                    ..
                }
        );
        if !signs || !supported {
            return false;
        }
        self.cfg.keys.is_empty()
            || self
                .cfg
                .keys
                .iter()
                .any(|k| k == name || k == label || k.strip_prefix("alias/") == Some(label))
    }

    /// Where Vault PKI is, for people: `ADDRESS(ES) (mount/sign/role)`.
    pub fn endpoint(&self) -> String {
        format!(
            "{} ({}/sign/{})",
            self.issuer.endpoint(),
            self.cfg.mount.trim_matches('/'),
            self.cfg.role
        )
    }

    /// The file of a key's certificate and chain (PEM), named by the backend kind, the key's name and public key.
    fn path(&self, key: &PkiKey) -> Option<PathBuf> {
        let stem = crate::remote::cert::cache_stem(self.kind, &key.name, &key.material)?;
        Some(self.dir.as_ref()?.join(format!("{stem}.pem")))
    }

    /// Reads a cached certificate and chain: the leaf must carry the key's public key.
    fn load(&self, key: &PkiKey) -> (Option<Issued>, Option<String>) {
        let Some(path) = self.path(key) else {
            return (None, None);
        };
        let last_error = std::fs::read_to_string(path.with_extension("err"))
            .ok()
            .filter(|s| !s.trim().is_empty());
        let Ok(text) = std::fs::read_to_string(&path) else {
            return (None, last_error);
        };
        let mut ders = csr::pem_certs(&text).into_iter();
        let issued = ders.next().and_then(|leaf| {
            if !crate::remote::cert::carries(&leaf, &key.material) {
                tracing::warn!(backend = %self.backend, key = %key.name, file = %path.display(), "cached PKI certificate is not of this key; ignored");
                return None;
            }
            Some(Issued {
                facts: csr::facts(&leaf)?,
                leaf: crate::remote::cert::parse(&leaf)?,
                chain: ders.collect(),
            })
        });
        (issued, last_error)
    }

    fn save(&self, key: &PkiKey, issued: &Issued) {
        let Some(path) = self.path(key) else { return };
        let pem = |der: &[u8]| {
            use base64::Engine;
            let b = base64::engine::general_purpose::STANDARD.encode(der);
            let lines: Vec<&str> = b
                .as_bytes()
                .chunks(64)
                .map(|c| std::str::from_utf8(c).unwrap_or(""))
                .collect();
            format!(
                "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                lines.join("\n")
            )
        };
        let mut text = pem(&issued.leaf.der);
        for c in &issued.chain {
            text += &pem(c);
        }
        if let Err(e) = crate::remote::cert::write_atomic(&path, text) {
            crate::diag::notice(&format!(
                "backend \"{}\": cannot keep the certificate issued by Vault PKI in {}: {e}; a restart will ask for a new one",
                self.backend,
                path.display()
            ));
        }
        let _ = std::fs::remove_file(path.with_extension("err"));
    }

    fn save_error(&self, key: &PkiKey, text: &str) {
        if let Some(p) = self.path(key) {
            if let Some(d) = p.parent() {
                let _ = std::fs::create_dir_all(d);
            }
            let _ = std::fs::write(p.with_extension("err"), text);
        }
    }

    /// The certificate a key shows now (from memory, else the disk cache): no network.
    pub fn current(&self, key: &PkiKey) -> Option<Arc<Issued>> {
        let mut st = self.state.lock();
        let s = st.entry(key.name.clone()).or_default();
        // A key whose public key changed (a rotated transit key) starts over: its certificate is another file.
        if s.issued
            .as_ref()
            .is_some_and(|i| !crate::remote::cert::carries(&i.leaf.der, &key.material))
        {
            *s = KeyState::default();
        }
        if !s.loaded {
            s.loaded = true;
            let (issued, err) = self.load(key);
            if let Some(i) = issued {
                s.issued = Some(Arc::new(i));
            }
            if s.last_error.is_none() {
                s.last_error = err;
            }
        }
        let i = s.issued.clone();
        drop(st);
        if let Some(i) = &i {
            self.add_authorities(&i.chain);
        }
        i
    }

    fn add_authorities(&self, chain: &[Vec<u8>]) {
        let mut a = self.authorities.write();
        for c in chain {
            if !a.contains(c) {
                a.push(c.clone());
            }
        }
    }

    /// The CA certificates served now (by object number): those of the chains of the certificates in use.
    pub fn authorities(&self) -> Vec<(usize, Vec<u8>)> {
        let in_use: Vec<Vec<u8>> = self
            .state
            .lock()
            .values()
            .filter_map(|s| s.issued.as_ref())
            .flat_map(|i| i.chain.iter().cloned())
            .collect();
        self.authorities
            .read()
            .iter()
            .enumerate()
            .filter(|(_, c)| in_use.contains(c))
            .map(|(i, c)| (i, c.clone()))
            .collect()
    }

    /// A CA certificate by object number, if it is served now.
    pub fn authority(&self, n: usize) -> Option<Vec<u8>> {
        self.authorities()
            .into_iter()
            .find(|(i, _)| *i == n)
            .map(|x| x.1)
    }

    /// The validity left below which a certificate is renewed.
    fn threshold(&self, f: &csr::Facts) -> Duration {
        self.renew_before
            .unwrap_or_else(|| Duration::from_secs(f.not_after.saturating_sub(f.not_before) / 3))
    }

    /// Whether the key needs a (new) certificate now: none yet, or less than `renew_before` of it left; and not
    /// waiting out a backoff.
    fn due(&self, key: &PkiKey) -> bool {
        let issued = self.current(key);
        let st = self.state.lock();
        let Some(s) = st.get(&key.name) else {
            return true;
        };
        if s.next_try.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        match issued {
            None => true,
            Some(i) => {
                let now = unix_now();
                let left = Duration::from_secs(i.facts.not_after.saturating_sub(now));
                left < self.threshold(&i.facts)
            }
        }
    }

    /// Asks Vault PKI for a certificate of `key` now (a request signed through `sign`), and keeps it (memory and
    /// disk). A failure is recorded, said once, and retried after a backoff; the certificate in use stays.
    pub fn issue(
        &self,
        key: &PkiKey,
        sign: impl FnOnce(&SignRequest) -> Result<Vec<u8>>,
    ) -> Result<Arc<Issued>> {
        match self.request(key, sign) {
            Ok(i) => {
                let i = Arc::new(i);
                self.save(key, &i);
                self.add_authorities(&i.chain);
                let mut st = self.state.lock();
                let s = st.entry(key.name.clone()).or_default();
                s.issued = Some(i.clone());
                s.loaded = true;
                s.last_error = None;
                s.failures = 0;
                s.next_try = None;
                tracing::info!(backend = %self.backend, key = %key.name, serial = %i.facts.serial, not_after = %csr::rfc3339(i.facts.not_after), "certificate issued by Vault PKI");
                Ok(i)
            }
            Err(e) => {
                let has = self.current(key).is_some();
                let text = format!(
                    "backend \"{}\" ({}): key \"{}\": no certificate from Vault PKI {}: {e}; {}",
                    self.backend,
                    self.kind,
                    key.label,
                    self.endpoint(),
                    if has {
                        "the certificate issued before is still served; retrying"
                    } else {
                        "until then the key keeps the certificate it had (generated, imported or none); retrying"
                    }
                );
                crate::diag::notice(&text);
                self.save_error(key, &e.to_string());
                let mut st = self.state.lock();
                let s = st.entry(key.name.clone()).or_default();
                s.failures = s.failures.saturating_add(1);
                let wait = Duration::from_secs(1u64 << (s.failures - 1).min(9)).min(MAX_BACKOFF);
                s.next_try = Some(Instant::now() + wait);
                s.last_error = Some(e.to_string());
                Err(e)
            }
        }
    }

    fn request(
        &self,
        key: &PkiKey,
        sign: impl FnOnce(&SignRequest) -> Result<Vec<u8>>,
    ) -> Result<Issued> {
        let msg = |e: String| Error::with(CKR_DEVICE_ERROR, e);
        let cn = expand(&self.cfg.common_name, &key.label, &key.name).map_err(msg)?;
        let alts: Vec<String> = self
            .cfg
            .alt_names
            .iter()
            .map(|a| expand(a, &key.label, &key.name))
            .collect::<std::result::Result<_, _>>()
            .map_err(msg)?;
        let csr = csr::request(&cn, &alts, &key.material, |r| {
            sign(r).map_err(|e| {
                Error::with(
                    e.rv(),
                    format!("the key could not sign its certificate request: {e}"),
                )
            })
        })?;
        let mut body = json!({"csr": csr, "common_name": cn, "format": "pem"});
        // Also as parameters, for a role with use_csr_sans = false: names in alt_names, IP addresses in ip_sans.
        let (ips, names): (Vec<&String>, Vec<&String>) = alts
            .iter()
            .partition(|a| a.parse::<std::net::IpAddr>().is_ok());
        if !names.is_empty() {
            body["alt_names"] = json!(names
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(","));
        }
        if !ips.is_empty() {
            body["ip_sans"] = json!(ips.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(","));
        }
        if let Some(t) = &self.cfg.ttl {
            body["ttl"] = json!(t);
        }
        let path = format!(
            "{}/sign/{}",
            self.cfg.mount.trim_matches('/'),
            self.cfg.role
        );
        let v = self.issuer.post(&path, body)?;
        parse_answer(&v, &key.material)
    }

    /// `p11bridge check`: each selected key's certificate from Vault PKI, its expiry and the last failure.
    pub fn statuses(&self, keys: &[PkiKey]) -> Vec<crate::PkiStatus> {
        let now = unix_now();
        keys.iter()
            .map(|k| {
                let issued = self.current(k);
                let err = self
                    .state
                    .lock()
                    .get(&k.name)
                    .and_then(|s| s.last_error.clone());
                crate::PkiStatus {
                    key: k.label.clone(),
                    vault: self.endpoint(),
                    serial: issued.as_ref().map(|i| i.facts.serial.clone()),
                    not_after: issued.as_ref().map(|i| csr::rfc3339(i.facts.not_after)),
                    expires_in_s: issued
                        .as_ref()
                        .map(|i| i.facts.not_after as i64 - now as i64),
                    chain: issued.as_ref().map_or(0, |i| i.chain.len()),
                    last_error: err,
                }
            })
            .collect()
    }

    /// Adds the statuses of `keys` to a check report, and their failures to its problems.
    pub fn report_into(&self, r: &mut crate::CheckReport, keys: &[PkiKey]) {
        r.pki = self.statuses(keys);
        for s in &r.pki {
            if let Some(e) = &s.last_error {
                r.problems.push(format!(
                    "key \"{}\": certificate from Vault PKI {}: {e}",
                    s.key, s.vault
                ));
            }
        }
    }

    /// Ends the renewal task (`C_Finalize`), waiting at most 15 s for a renewal in progress.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        drop(self.busy.try_lock_for(Duration::from_secs(15)));
    }
}

/// Reads `POST <mount>/sign/<role>`'s answer: `certificate`, `ca_chain` (else `issuing_ca`); the certificate must
/// carry the key's public key.
pub fn parse_answer(v: &Value, material: &KeyMaterial) -> Result<Issued> {
    let bad = |m: &str| Error::with(CKR_DEVICE_ERROR, format!("Vault PKI answered {m}"));
    let pem = v
        .pointer("/data/certificate")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("without data.certificate"))?;
    let leaf = csr::pem_certs(pem)
        .into_iter()
        .next()
        .ok_or_else(|| bad("a certificate that is not PEM"))?;
    if !crate::remote::cert::carries(&leaf, material) {
        return Err(bad("a certificate of another public key than the key's"));
    }
    let mut chain: Vec<Vec<u8>> = match v.pointer("/data/ca_chain").and_then(Value::as_array) {
        Some(a) => a
            .iter()
            .filter_map(Value::as_str)
            .flat_map(csr::pem_certs)
            .collect(),
        None => Vec::new(),
    };
    if chain.is_empty() {
        if let Some(ca) = v.pointer("/data/issuing_ca").and_then(Value::as_str) {
            chain = csr::pem_certs(ca);
        }
    }
    chain.retain(|c| *c != leaf);
    Ok(Issued {
        facts: csr::facts(&leaf).ok_or_else(|| bad("a certificate that does not parse"))?,
        leaf: crate::remote::cert::parse(&leaf)
            .ok_or_else(|| bad("a certificate that does not parse"))?,
        chain,
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Starts this process's renewal task for `host` if none runs (after `fork()` the parent's is gone: the pid stamp
/// says so). Without worker threads (`CKF_LIBRARY_CANT_CREATE_OS_THREADS`) there is none: certificates in the cache
/// are served, and nothing is asked on a caller's time.
pub fn ensure_task<H: Host>(host: &Arc<H>) {
    let Some(pki) = host.pki() else { return };
    if pki.stopped.load(Ordering::Acquire) {
        return;
    }
    let me = std::process::id();
    let mut t = pki.task.lock();
    if *t == Some(me) {
        return;
    }
    *t = Some(me);
    if !crate::runtime::spawn_background(renew_loop(Arc::downgrade(host))) {
        crate::diag::notice(&format!(
            "backend \"{}\": certificates from Vault PKI are not renewed in this process (the application forbade threads: CKF_LIBRARY_CANT_CREATE_OS_THREADS); the cached ones are served",
            pki.backend
        ));
    }
}

async fn renew_loop<H: Host>(w: Weak<H>) {
    let mut first = true;
    loop {
        let tick = match w.upgrade() {
            Some(h) => match h.pki() {
                Some(p) => p.tick,
                None => return,
            },
            None => return,
        };
        if !first {
            tokio::time::sleep(tick).await;
        }
        first = false;
        let Some(h) = w.upgrade() else { return };
        let Some(pki) = h.pki().cloned() else { return };
        if pki.stopped.load(Ordering::Acquire)
            || pki.task.lock().as_ref() != Some(&std::process::id())
        {
            return;
        }
        let due: Vec<PkiKey> = h.pki_keys().into_iter().filter(|k| pki.due(k)).collect();
        if due.is_empty() {
            continue;
        }
        // Signing and the PKI request block (each within its backend's deadline): on the blocking pool.
        let job = tokio::task::spawn_blocking(move || {
            let _busy = pki.busy.lock();
            for k in due {
                if pki.stopped.load(Ordering::Acquire) {
                    break;
                }
                if let Ok(i) = pki.issue(&k, |r| h.pki_sign(&k, r)) {
                    if let Err(e) = h.pki_installed(&k, &i) {
                        crate::diag::notice(&format!(
                            "backend \"{}\": key \"{}\": the certificate issued by Vault PKI cannot be served: {e}",
                            pki.backend, k.label
                        ));
                    }
                }
            }
        });
        let _ = job.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86400)));
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("6s"), Some(Duration::from_secs(6)));
        assert_eq!(parse_duration("2d"), Some(Duration::from_secs(172800)));
        assert_eq!(parse_duration("h"), None);
        assert_eq!(parse_duration("10x"), None);
        assert_eq!(parse_duration("10h5"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn placeholders() {
        assert_eq!(
            expand("{label}.example", "app", "k").unwrap(),
            "app.example"
        );
        assert_eq!(expand("{name}-{label}", "a", "b").unwrap(), "b-a");
        assert!(expand("{nope}", "a", "b")
            .unwrap_err()
            .contains("unknown placeholder {nope}"));
        assert!(expand("{label", "a", "b").is_err());
    }

    fn table(s: &str) -> toml::Table {
        toml::from_str(s).unwrap()
    }

    fn err(section: &str, all: &[(&str, &str)]) -> String {
        let all: std::collections::BTreeMap<String, toml::Table> =
            all.iter().map(|(n, s)| (n.to_string(), table(s))).collect();
        match Pki::from_section(
            "b",
            "aws-kms",
            &table(section),
            &all,
            &BuildContext::default(),
            None,
        ) {
            Ok(_) => "ok".into(),
            Err(e) => e.cause().unwrap_or("").to_string(),
        }
    }

    #[test]
    fn config_errors_name_the_key() {
        let v = "kind = \"vault-transit\"\naddress = \"http://127.0.0.1:1\"\ntoken = \"t\"\nkeys = [\"k\"]";
        assert_eq!(
            err("pki = { vault = \"v\", role = \"r\", rol = 1 }", &[("v", v)]),
            "backend.b.pki: unknown field `rol`, expected one of `vault`, `mount`, `role`, `common_name`, `alt_names`, `ttl`, `renew_before`, `keys`"
        );
        assert_eq!(
            err("pki = { vault = \"v\" }", &[("v", v)]),
            "backend.b.pki: missing field `role`"
        );
        assert_eq!(
            err("pki = { role = \"r\" }", &[("v", v)]),
            "backend.b.pki.vault: missing: name the [backend.NAME] section (kind = \"vault-transit\") whose address and login the PKI requests use"
        );
        assert_eq!(
            err("pki = { vault = \"w\", role = \"r\" }", &[("v", v)]),
            "backend.b.pki.vault: no [backend.w] section"
        );
        assert_eq!(
            err(
                "pki = { vault = \"k\", role = \"r\" }",
                &[("k", "kind = \"aws-kms\"")]
            ),
            "backend.b.pki.vault: [backend.k] is not of kind \"vault-transit\""
        );
        assert_eq!(
            err(
                "pki = { vault = \"v\", role = \"r\", ttl = \"1y\" }",
                &[("v", v)]
            ),
            "backend.b.pki.ttl: \"1y\" is not a duration (e.g. \"24h\", \"90m\", \"30s\")"
        );
        assert_eq!(
            err(
                "pki = { vault = \"v\", role = \"r\", ttl = \"1h\", renew_before = \"2h\" }",
                &[("v", v)]
            ),
            "backend.b.pki.renew_before: 2h is not shorter than ttl 1h (the certificate would be renewed at once, forever)"
        );
        assert_eq!(
            err("pki = { vault = \"v\", role = \"r\", common_name = \"{x}\" }", &[("v", v)]),
            "backend.b.pki.common_name: \"{x}\": unknown placeholder {x} ({label} and {name} are known)"
        );
        assert!(err(
            "pki = { vault = \"v\", role = \"r\" }",
            &[(
                "v",
                "kind = \"vault-transit\"\ntoken = \"t\"\nkeys = [\"k\"]"
            )]
        )
        .starts_with("backend.b.pki.vault: backend.v.address: missing"));
        assert_eq!(
            err("pki = { vault = \"v\", role = \"server\" }", &[("v", v)]),
            "ok"
        );
    }

    struct NoVault;
    impl Issuer for NoVault {
        fn post(&self, path: &str, _: Value) -> Result<Value> {
            Err(Error::with(
                CKR_DEVICE_ERROR,
                format!("v: HTTP 400 on POST /v1/{path}: unknown role"),
            ))
        }
        fn endpoint(&self) -> String {
            "http://vault:8200".into()
        }
    }

    fn pki(dir: &std::path::Path, keys: &[&str]) -> Pki {
        let cfg: PkiConfig = toml::Value::Table(table(&format!(
            "role = \"server\"\nmount = \"pki_int\"\nkeys = {keys:?}"
        )))
        .try_into()
        .unwrap();
        Pki::new(
            "b",
            "aws-kms",
            cfg,
            Some(Duration::from_secs(60)),
            Arc::new(NoVault),
            Some(dir.to_path_buf()),
        )
    }

    #[test]
    fn selection_failure_backoff_and_the_cache() {
        let dir = std::env::temp_dir().join(format!("p11bridge-pki-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let rsa = KeyMaterial::Rsa {
            modulus: vec![0xc5; 256],
            exponent: vec![1, 0, 1],
        };
        let p = pki(&dir, &["app"]);
        assert!(p.selects("x", "app", true, &rsa));
        assert!(p.selects("app", "y", true, &rsa));
        assert!(!p.selects("x", "y", true, &rsa));
        assert!(!p.selects("app", "app", false, &rsa));
        let k1 = KeyMaterial::Ec {
            curve: Curve::Secp256k1,
            point: vec![4; 65],
        };
        assert!(!pki(&dir, &[]).selects("x", "y", true, &k1));
        assert!(pki(&dir, &[]).selects("x", "y", true, &rsa));

        // A failure: recorded with Vault's words, kept on disk for another process, and backed off.
        let sk = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        let m = KeyMaterial::Ec {
            curve: Curve::P256,
            point: sk
                .verifying_key()
                .to_encoded_point(false)
                .as_bytes()
                .to_vec(),
        };
        let key = PkiKey {
            name: "arn:k".into(),
            label: "app".into(),
            material: m.clone(),
        };
        assert!(p.due(&key));
        let sign = |r: &SignRequest| match r {
            SignRequest::Ecdsa { digest, .. } => {
                use p256::ecdsa::signature::hazmat::PrehashSigner;
                let s: p256::ecdsa::Signature = sk.sign_prehash(digest).unwrap();
                Ok(s.to_bytes().to_vec())
            }
            _ => unreachable!(),
        };
        let e = p.issue(&key, sign).unwrap_err();
        assert!(e
            .cause()
            .unwrap()
            .contains("HTTP 400 on POST /v1/pki_int/sign/server: unknown role"));
        assert!(!p.due(&key), "backed off");
        let st = p.statuses(std::slice::from_ref(&key));
        assert_eq!(st[0].serial, None);
        assert!(st[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("unknown role"));
        let other = pki(&dir, &["app"]);
        let st = other.statuses(std::slice::from_ref(&key));
        assert!(st[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("unknown role"));

        // A cached certificate of the key is served by a new process; one of another key is not.
        let cert = crate::remote::cert::self_signed("app", &m, |r| sign(r))
            .unwrap()
            .unwrap();
        let issued = Issued {
            facts: csr::facts(&cert.der).unwrap(),
            leaf: cert.clone(),
            chain: vec![cert.der.clone()],
        };
        p.save(&key, &issued);
        let fresh = pki(&dir, &["app"]);
        let got = fresh.current(&key).unwrap();
        assert_eq!(got.leaf.der, cert.der);
        assert_eq!(fresh.authorities().len(), 1);
        assert!(fresh.statuses(std::slice::from_ref(&key))[0]
            .last_error
            .is_none());
        // Valid until 9999: not due.
        assert!(!fresh.due(&key));
        // The same key name with another public key (a rotated key): not this certificate.
        let rotated = PkiKey {
            material: KeyMaterial::Ec {
                curve: Curve::P256,
                point: p256::ecdsa::SigningKey::random(&mut rand_core::OsRng)
                    .verifying_key()
                    .to_encoded_point(false)
                    .as_bytes()
                    .to_vec(),
            },
            ..key.clone()
        };
        assert!(fresh.current(&rotated).is_none());
        assert!(fresh.due(&rotated));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn answers_are_checked() {
        let m = KeyMaterial::Ed25519 { point: [3u8; 32] };
        let c = crate::remote::cert::locally_issued("k", &m).unwrap();
        let pem = |d: &[u8]| {
            use base64::Engine;
            format!(
                "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                base64::engine::general_purpose::STANDARD.encode(d)
            )
        };
        let ca =
            crate::remote::cert::locally_issued("ca", &KeyMaterial::Ed25519 { point: [4u8; 32] })
                .unwrap();
        let v = json!({"data": {"certificate": pem(&c.der), "issuing_ca": pem(&ca.der), "ca_chain": [pem(&ca.der)]}});
        let i = parse_answer(&v, &m).unwrap();
        assert_eq!(i.chain, vec![ca.der.clone()]);
        let other = KeyMaterial::Ed25519 { point: [5u8; 32] };
        assert!(parse_answer(&v, &other)
            .unwrap_err()
            .cause()
            .unwrap()
            .contains("another public key"));
        assert!(parse_answer(&json!({"data": {}}), &m).is_err());
    }
}
