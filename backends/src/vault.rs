//! The Vault / OpenBao transit backend (`kind = "vault-transit"`).
//!
//! Transit keys become objects of the unified token through the shared remote layer; this file only says how to
//! talk to Vault: authentication (token, AppRole, Kubernetes; renewal before expiry and one re-login after a 403),
//! several addresses (HA: the healthy ones in order, a circuit breaker and a background prober per address,
//! standby redirects followed), key discovery, and the transit calls. vaultrs does the logins and token
//! renewal; the transit calls it cannot express (`salt_length`, `prehashed`, `marshaling_algorithm`) go through the
//! same HTTP client as raw requests.

use crate::batch::GroupCommit;
use crate::health::{self, Endpoints};
use crate::remote::mech::{Hash, RsaPad, SignRequest};
use crate::remote::{
    cert, Curve, GenerateKind, GenerateSpec, KeyMaterial, RemoteKey, RemoteService, Usage,
};
use crate::{runtime, vendor, BuildContext, Error, Result, SecretRef};
use base64::Engine;
use cryptoki_sys::*;
use parking_lot::RwLock;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Digest;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Config {
    #[allow(dead_code)]
    kind: String,
    /// One address, or several (cluster nodes, tried in order; the last one that answered is tried first).
    address: Option<String>,
    #[serde(default)]
    addresses: Vec<String>,
    namespace: Option<String>,
    #[serde(default = "default_mount")]
    mount: String,
    /// CA certificate (PEM) for the server's TLS certificate; else the system's roots.
    ca_cert: Option<PathBuf>,
    /// TLS client certificate and key (PEM).
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    /// Authentication: a token; or AppRole (`role_id` + `secret_id`); or Kubernetes (`kubernetes_role`).
    token: Option<SecretRef>,
    role_id: Option<String>,
    secret_id: Option<SecretRef>,
    #[serde(default = "default_approle_mount")]
    approle_mount: String,
    kubernetes_role: Option<String>,
    #[serde(default = "default_jwt_path")]
    kubernetes_jwt_path: PathBuf,
    #[serde(default = "default_kubernetes_mount")]
    kubernetes_mount: String,
    /// Which keys: a list of names, or discovery (`LIST <mount>/keys`) with an optional name prefix.
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    discover: bool,
    #[serde(default)]
    prefix: String,
    /// Keys created through the bridge are named `created_prefix` + `CKA_LABEL` and found again by every process
    /// (one `LIST <mount>/keys` per enumeration, filtered by this prefix); `""`: named as the label, found again
    /// only when listed in `keys` or discovered.
    #[serde(default = "default_created_prefix")]
    created_prefix: String,
    /// Where certificates imported for keys (`C_CreateObject`, `p11bridge cert import`) are kept (default: the
    /// `imported` directory of the certificate cache).
    cert_store_dir: Option<PathBuf>,
    /// Per-call deadline and connect timeout (milliseconds).
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_connect_timeout_ms")]
    connect_timeout_ms: u64,
    /// How long key metadata stays fresh (seconds).
    #[serde(default = "default_ttl")]
    cache_ttl_s: u64,
    /// Certificates to show for keys (PEM files), by key name; other signing keys get a generated one.
    #[serde(default)]
    certificates: BTreeMap<String, PathBuf>,
    /// Where generated certificates are cached (default `$XDG_CACHE_HOME/p11bridge` or `~/.cache/p11bridge`).
    cert_cache_dir: Option<PathBuf>,
    /// Let `C_DestroyObject` delete transit keys.
    #[serde(default)]
    allow_destroy: bool,
    /// Coalesce concurrent signatures with the same key and parameters into one `batch_input` request (a lone
    /// signature is sent at once, as a plain request), at most `batch_max` items per request.
    #[serde(default = "default_batch")]
    batch: bool,
    #[serde(default = "default_batch_max")]
    batch_max: usize,
    /// Circuit breaker per address: consecutive failures that open it, how long it stays open before a probe, and
    /// how often the background prober looks (milliseconds).
    #[serde(default = "default_breaker_failures")]
    breaker_failures: u32,
    #[serde(default = "default_breaker_cooldown_ms")]
    breaker_cooldown_ms: u64,
    #[serde(default = "default_probe_interval_ms")]
    probe_interval_ms: u64,
}

fn default_batch() -> bool {
    true
}
fn default_batch_max() -> usize {
    32
}
fn default_breaker_failures() -> u32 {
    3
}
fn default_breaker_cooldown_ms() -> u64 {
    5_000
}
fn default_probe_interval_ms() -> u64 {
    1_000
}

fn default_created_prefix() -> String {
    "p11bridge-".into()
}

fn default_mount() -> String {
    "transit".into()
}
fn default_approle_mount() -> String {
    "approle".into()
}
fn default_kubernetes_mount() -> String {
    "kubernetes".into()
}
fn default_jwt_path() -> PathBuf {
    "/var/run/secrets/kubernetes.io/serviceaccount/token".into()
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_connect_timeout_ms() -> u64 {
    3_000
}
fn default_ttl() -> u64 {
    300
}

/// RSA mechanisms of transit RSA keys (the first and the last are not hash-and-sign).
const RSA_MECHS: [CK_MECHANISM_TYPE; 13] = [
    CKM_RSA_PKCS,
    CKM_SHA1_RSA_PKCS,
    CKM_SHA224_RSA_PKCS,
    CKM_SHA256_RSA_PKCS,
    CKM_SHA384_RSA_PKCS,
    CKM_SHA512_RSA_PKCS,
    CKM_RSA_PKCS_PSS,
    CKM_SHA1_RSA_PKCS_PSS,
    CKM_SHA224_RSA_PKCS_PSS,
    CKM_SHA256_RSA_PKCS_PSS,
    CKM_SHA384_RSA_PKCS_PSS,
    CKM_SHA512_RSA_PKCS_PSS,
    CKM_RSA_PKCS_OAEP,
];
const ECDSA_MECHS: [CK_MECHANISM_TYPE; 6] = [
    CKM_ECDSA,
    CKM_ECDSA_SHA1,
    CKM_ECDSA_SHA224,
    CKM_ECDSA_SHA256,
    CKM_ECDSA_SHA384,
    CKM_ECDSA_SHA512,
];
const HMAC_MECHS: [CK_MECHANISM_TYPE; 5] = [
    CKM_SHA_1_HMAC,
    CKM_SHA224_HMAC,
    CKM_SHA256_HMAC,
    CKM_SHA384_HMAC,
    CKM_SHA512_HMAC,
];

fn cfg_err(name: &str, msg: impl std::fmt::Display) -> Error {
    Error::with(CKR_GENERAL_ERROR, format!("backend.{name}.{msg}"))
}

/// The token in use and when it must be renewed.
struct TokenState {
    token: Zeroizing<String>,
    /// When to renew (2/3 of the lease); `None`: never expires.
    renew_at: Option<Instant>,
    renewable: bool,
}

pub struct VaultService {
    name: String,
    cfg: Config,
    addresses: Vec<String>,
    /// A circuit breaker per address (in `addresses` order).
    health: Endpoints,
    http: OnceLock<std::result::Result<reqwest::Client, String>>,
    token: RwLock<Option<TokenState>>,
    login: tokio::sync::Mutex<()>,
    /// Configured, imported, cached and generated certificates.
    certs: cert::CertSource,
    /// Keys created through the bridge by this process (found again even with `created_prefix = ""`).
    created: parking_lot::Mutex<Vec<String>>,
    /// Concurrent sign requests, coalesced (see `batch.rs`): items are base64 inputs, results `vault:vN:...`.
    signer: GroupCommit<String, String>,
}

/// What went wrong with one request, before it becomes a `CK_RV` for the operation at hand. Every text names
/// the node (its URL) or the request (`HTTP 403 on GET /v1/transit/keys/x: permission denied`).
#[derive(Debug)]
enum Fault {
    /// No node answered (connection refused, reset, timeout, TLS failure): the node's URL and the OS/TLS error.
    Unreachable(String),
    /// An HTTP error status, with the request and Vault's messages (`HTTP 403 on GET /v1/...: ...`).
    Status(u16, String),
    /// Logging in failed: a secret reference that cannot be read, or Vault refused the login.
    Login(String),
}

/// Vault's own answer inside a vaultrs error (status and `errors`), if Vault answered at all.
fn vaultrs_answer(e: &vaultrs::error::ClientError) -> Option<String> {
    use rustify::errors::ClientError as R;
    use vaultrs::error::ClientError as V;
    match e {
        V::APIError { code, errors } => Some(format!(
            "HTTP {code}: {}",
            if errors.is_empty() {
                "(no message)".to_string()
            } else {
                errors.join("; ")
            }
        )),
        V::RestClientError {
            source: R::ServerResponseError { code, content },
        } => Some(format!(
            "HTTP {code}: {}",
            content
                .as_deref()
                .map(vault_errors)
                .unwrap_or_else(|| "(no message)".into())
        )),
        _ => None,
    }
}

/// One of Vault's messages on one line: Go's multierror ("1 error occurred:\n\t* permission denied\n\n") as its
/// items joined with "; ", other line breaks as spaces.
fn one_line(m: &str) -> String {
    let items: Vec<&str> = m
        .lines()
        .filter_map(|l| l.trim().strip_prefix("* "))
        .map(str::trim)
        .collect();
    if m.trim_start()
        .split_once(' ')
        .is_some_and(|(n, rest)| n.parse::<u32>().is_ok() && rest.starts_with("error"))
        && !items.is_empty()
    {
        return items.join("; ");
    }
    m.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Vault's `errors` list of an error body, joined; else the body's start.
fn vault_errors(text: &str) -> String {
    let listed = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.get("errors").and_then(Value::as_array).cloned())
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().map_or_else(|| x.to_string(), one_line))
                .collect::<Vec<_>>()
                .join("; ")
        });
    match listed {
        Some(m) if !m.is_empty() => m,
        Some(_) => "(no message)".into(),
        None => {
            let t: String = text.trim().chars().take(200).collect();
            if t.is_empty() {
                "(no message)".into()
            } else {
                t
            }
        }
    }
}

impl VaultService {
    pub fn from_config(name: &str, section: &toml::Table, _ctx: &BuildContext) -> Result<Self> {
        let cfg: Config = crate::parse_section(name, section)?;
        let mut addresses = cfg.addresses.clone();
        if let Some(a) = &cfg.address {
            addresses.insert(0, a.clone());
        }
        if addresses.is_empty() {
            return Err(cfg_err(
                name,
                "address: missing (address = \"https://vault:8200\" or addresses = [...])",
            ));
        }
        for a in &addresses {
            if !(a.starts_with("http://") || a.starts_with("https://")) {
                return Err(cfg_err(
                    name,
                    format!("address: \"{a}\" is not an http(s) URL"),
                ));
            }
        }
        let methods = [
            cfg.token.is_some(),
            cfg.role_id.is_some(),
            cfg.kubernetes_role.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if methods != 1 {
            return Err(cfg_err(
                name,
                "token: give exactly one of token, role_id (+ secret_id) or kubernetes_role",
            ));
        }
        if cfg.role_id.is_some() && cfg.secret_id.is_none() {
            return Err(cfg_err(
                name,
                "secret_id: missing (AppRole needs role_id and secret_id)",
            ));
        }
        if cfg.keys.is_empty() && !cfg.discover {
            return Err(cfg_err(name, "keys: list key names or set discover = true"));
        }
        if cfg.client_cert.is_some() != cfg.client_key.is_some() {
            return Err(cfg_err(
                name,
                "client_cert: client_cert and client_key go together",
            ));
        }
        for (k, p) in &cfg.certificates {
            if !p.exists() {
                return Err(cfg_err(
                    name,
                    format!("certificates.{k}: {} does not exist", p.display()),
                ));
            }
        }
        if cfg.breaker_failures == 0 || cfg.breaker_cooldown_ms == 0 || cfg.probe_interval_ms == 0 {
            return Err(cfg_err(
                name,
                "breaker_failures: breaker_failures, breaker_cooldown_ms and probe_interval_ms must be > 0",
            ));
        }
        if !cfg
            .created_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(cfg_err(
                name,
                format!(
                    "created_prefix: \"{}\" may hold [A-Za-z0-9._-] only (it starts transit key names)",
                    cfg.created_prefix
                ),
            ));
        }
        if cfg.batch_max == 0 || cfg.batch_max > 1000 {
            return Err(cfg_err(name, "batch_max: between 1 and 1000"));
        }
        let cfg_batch_max = cfg.batch_max;
        let certs = cert::CertSource::new(
            "vault-transit",
            cfg.cert_cache_dir.clone(),
            cfg.cert_store_dir.clone(),
        );
        let health = Endpoints::new(
            addresses.len(),
            cfg.breaker_failures,
            Duration::from_millis(cfg.breaker_cooldown_ms),
        );
        Ok(VaultService {
            name: name.to_string(),
            cfg,
            addresses,
            health,
            http: OnceLock::new(),
            token: RwLock::new(None),
            login: tokio::sync::Mutex::new(()),
            certs,
            created: parking_lot::Mutex::new(Vec::new()),
            signer: GroupCommit::new(cfg_batch_max),
        })
    }

    fn deadline(&self) -> Duration {
        Duration::from_millis(self.cfg.timeout_ms)
    }

    /// One HTTP client for the backend (connection pool shared by every session), made on first use.
    fn http(&self) -> Result<reqwest::Client> {
        self.http
            .get_or_init(|| build_http(&self.cfg))
            .clone()
            .map_err(|e| Error::with(CKR_DEVICE_ERROR, format!("cannot set up TLS: {e}")))
    }

    fn vault_client(&self, addr: &str, token: &str) -> Result<vaultrs::client::VaultClient> {
        let settings = vaultrs::client::VaultClientSettingsBuilder::default()
            .address(addr)
            .token(token)
            .namespace(self.cfg.namespace.clone())
            .build()
            .map_err(|e| Error::with(CKR_GENERAL_ERROR, format!("vault client: {e}")))?;
        let http = self.http()?;
        Ok(vaultrs::client::VaultClient {
            http: rustify::clients::reqwest::Client::new(addr, http),
            middle: vaultrs::api::EndpointMiddleware {
                token: token.to_string(),
                version: "v1".into(),
                wrap: None,
                namespace: self.cfg.namespace.clone(),
            },
            settings,
        })
    }

    /// Logs in (AppRole, Kubernetes) or takes the configured token. A refusal or an unreadable secret is
    /// `Fault::Login` in words (which method, which mount, Vault's answer); a node that does not answer is
    /// `Fault::Unreachable` (the next node may).
    async fn authenticate(&self, addr: &str) -> std::result::Result<TokenState, Fault> {
        if let Some(t) = &self.cfg.token {
            let t = t.resolve().map_err(|e| {
                Fault::Login(format!(
                    "token = \"{}\" cannot be read: {}",
                    t.describe(),
                    e.cause().unwrap_or("unreadable")
                ))
            })?;
            return Ok(TokenState {
                token: Zeroizing::new(String::from_utf8_lossy(t.expose()).into_owned()),
                renew_at: None,
                renewable: false,
            });
        }
        let client = self
            .vault_client(addr, "")
            .map_err(|e| Fault::Login(e.cause().unwrap_or("vault client").to_string()))?;
        let base = addr.trim_end_matches('/');
        let (what, info) = if let (Some(role), Some(secret)) =
            (&self.cfg.role_id, &self.cfg.secret_id)
        {
            let what = format!(
                "AppRole login (POST {base}/v1/auth/{}/login)",
                self.cfg.approle_mount
            );
            let secret = secret.resolve().map_err(|e| {
                Fault::Login(format!(
                    "{what}: secret_id = \"{}\" cannot be read: {}",
                    secret.describe(),
                    e.cause().unwrap_or("unreadable")
                ))
            })?;
            let secret = String::from_utf8_lossy(secret.expose()).into_owned();
            let r = vaultrs::auth::approle::login(&client, &self.cfg.approle_mount, role, &secret)
                .await;
            drop(Zeroizing::new(secret));
            (what, r)
        } else {
            let role = self.cfg.kubernetes_role.clone().unwrap_or_default();
            let what = format!(
                "Kubernetes login as role \"{role}\" (POST {base}/v1/auth/{}/login)",
                self.cfg.kubernetes_mount
            );
            let jwt = std::fs::read_to_string(&self.cfg.kubernetes_jwt_path).map_err(|e| {
                Fault::Login(format!(
                    "{what}: kubernetes_jwt_path {}: {e}",
                    self.cfg.kubernetes_jwt_path.display()
                ))
            })?;
            let jwt = Zeroizing::new(jwt.trim().to_string());
            let r =
                vaultrs::auth::kubernetes::login(&client, &self.cfg.kubernetes_mount, &role, &jwt)
                    .await;
            (what, r)
        };
        let info = info.map_err(|e| match vaultrs_answer(&e) {
            // Vault answered: the login was refused.
            Some(answer) => Fault::Login(format!("{what}: {answer}")),
            // No answer from this node.
            None => Fault::Unreachable(format!("{what}: {}", crate::diag::error_chain(&e))),
        })?;
        tracing::info!(backend = %self.name, lease_s = info.lease_duration, "logged in to vault");
        Ok(TokenState {
            token: Zeroizing::new(info.client_token),
            renew_at: (info.lease_duration > 0)
                .then(|| Instant::now() + Duration::from_secs(info.lease_duration * 2 / 3)),
            renewable: info.renewable,
        })
    }

    /// The token to use now: logs in on first use, renews (or logs in again) when 2/3 of the lease has passed.
    async fn current_token(
        &self,
        addr: &str,
        force_login: bool,
    ) -> std::result::Result<Zeroizing<String>, Fault> {
        if !force_login {
            if let Some(t) = self.token.read().as_ref() {
                if t.renew_at.is_none_or(|at| Instant::now() < at) {
                    return Ok(t.token.clone());
                }
            }
        }
        let _g = self.login.lock().await;
        // Someone else may have done it meanwhile.
        if !force_login {
            if let Some(t) = self.token.read().as_ref() {
                if t.renew_at.is_none_or(|at| Instant::now() < at) {
                    return Ok(t.token.clone());
                }
            }
        }
        let renewable = self
            .token
            .read()
            .as_ref()
            .map(|t| (t.renewable, t.token.clone()));
        if let (false, Some((true, tok))) = (force_login, renewable) {
            let client = self
                .vault_client(addr, &tok)
                .map_err(|e| Fault::Login(e.cause().unwrap_or("vault client").to_string()))?;
            if let Ok(info) = vaultrs::token::renew_self(&client, None).await {
                let st = TokenState {
                    token: tok.clone(),
                    renew_at: (info.lease_duration > 0)
                        .then(|| Instant::now() + Duration::from_secs(info.lease_duration * 2 / 3)),
                    renewable: info.renewable,
                };
                *self.token.write() = Some(st);
                tracing::debug!(backend = %self.name, "vault token renewed");
                return Ok(tok);
            }
        }
        let st = self.authenticate(addr).await?;
        let tok = st.token.clone();
        *self.token.write() = Some(st);
        Ok(tok)
    }

    /// Starts the background prober of this process if there are several addresses. `true` if one runs (callers
    /// then never probe an open address themselves).
    fn background(self: &Arc<Self>) -> bool {
        health::background(self)
    }

    /// One transit request, with failover across addresses (the healthy ones in configured order, each capped at
    /// an equal share of the time left; standby redirects followed), one re-login after a 403 (for logins that can
    /// expire), and retries of idempotent requests on 429/5xx within the deadline.
    async fn call(
        self: Arc<Self>,
        method: reqwest::Method,
        path: String,
        body: Option<Value>,
        idempotent: bool,
    ) -> std::result::Result<Value, Fault> {
        let http = self
            .http()
            .map_err(|e| Fault::Unreachable(e.cause().unwrap_or("HTTP client").to_string()))?;
        let background = self.background();
        let all: Vec<usize> = (0..self.addresses.len()).collect();
        let end = tokio::time::Instant::now() + self.deadline();
        let mut last = Fault::Unreachable("no address".into());
        let mut relogged = false;
        let mut attempt = 0u32;
        'nodes: for turn in self.health.walk(&all, background) {
            let idx = turn.index;
            let addr = &self.addresses[idx];
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            // A request that must not be repeated is never re-sent after a timeout (the node may have done it): it
            // gets all the time left.
            let share = if idempotent { turn.share(left) } else { left };
            let node_end = tokio::time::Instant::now() + share;
            let unwell = |why: String| {
                if self.health.unwell(idx) {
                    tracing::warn!(backend = %self.name, address = %addr, "address unhealthy: breaker open");
                }
                Fault::Unreachable(why)
            };
            loop {
                let token = match self.current_token(addr, false).await {
                    Ok(t) => t,
                    // An unreadable secret or a refused login is the same on every node.
                    Err(f @ Fault::Login(_)) => return Err(f),
                    Err(f) => {
                        last = unwell(match f {
                            Fault::Unreachable(m) => m,
                            other => format!("{other:?}"),
                        });
                        continue 'nodes;
                    }
                };
                let url = format!("{}/v1/{}", addr.trim_end_matches('/'), path);
                let mut rb = http
                    .request(method.clone(), &url)
                    .header("X-Vault-Token", token.as_str());
                if let Some(ns) = &self.cfg.namespace {
                    rb = rb.header("X-Vault-Namespace", ns);
                }
                if let Some(b) = &body {
                    rb = rb.json(b);
                }
                // The node's share of the deadline covers the request and reading the answer.
                let exchange = async {
                    let resp = rb.send().await?;
                    let status = resp.status().as_u16();
                    Ok::<_, reqwest::Error>((status, resp.text().await.unwrap_or_default()))
                };
                let (status, text) = match tokio::time::timeout_at(node_end, exchange).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => {
                        // Connection-level failure (refused, reset, TLS): try the next node.
                        last = unwell(format!("{addr}: {}", crate::diag::error_chain(&e)));
                        continue 'nodes;
                    }
                    Err(_) => {
                        last = unwell(format!(
                            "{addr}: no answer within {} ms (timeout)",
                            share.as_millis()
                        ));
                        if !idempotent {
                            return Err(last);
                        }
                        continue 'nodes;
                    }
                };
                if status != 502 && status != 503 {
                    // The node answered (a Vault error is an answer too).
                    if self.health.answered(idx) {
                        tracing::info!(backend = %self.name, address = %addr, "address healthy again");
                    }
                }
                if (200..300).contains(&status) {
                    if text.trim().is_empty() {
                        return Ok(Value::Null);
                    }
                    return serde_json::from_str(&text).map_err(|e| {
                        Fault::Status(
                            status,
                            format!("HTTP {status} on {method} /v1/{path}: not JSON: {e}"),
                        )
                    });
                }
                let mut said = vault_errors(&text);
                if status == 404 && said == "(no message)" {
                    said = "not found".into();
                }
                let msg = format!("HTTP {status} on {method} /v1/{path}: {said}");
                if status == 403 && !relogged && self.cfg.token.is_none() {
                    relogged = true;
                    let _ = self.current_token(addr, true).await;
                    continue;
                }
                if idempotent
                    && (status == 429 || status == 500 || status == 502 || status == 504)
                    && attempt < 3
                {
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt)).await;
                    continue;
                }
                if status == 503 || status == 502 {
                    // Sealed or standby without forwarding: another node may serve.
                    let _ = unwell(String::new());
                    last = Fault::Status(status, msg);
                    continue 'nodes;
                }
                return Err(Fault::Status(status, msg));
            }
        }
        Err(last)
    }

    /// Runs a request on the module's runtime within the deadline, mapping faults for a key operation.
    fn op(
        self: &Arc<Self>,
        method: reqwest::Method,
        path: String,
        body: Option<Value>,
        idempotent: bool,
        bad_input: CK_RV,
    ) -> Result<Value> {
        let me = self.clone();
        let name = self.name.clone();
        runtime::run(self.deadline(), async move {
            me.call(method, path, body, idempotent)
                .await
                .map_err(|f| map_fault(&name, f, bad_input))
        })
    }

    fn transit(&self, rest: &str) -> String {
        format!("{}/{}", self.cfg.mount.trim_matches('/'), rest)
    }

    fn key_id(&self, key: &str) -> Vec<u8> {
        let mut h = sha2::Sha256::new();
        h.update(b"vault-transit\0");
        h.update(self.cfg.mount.trim_matches('/').as_bytes());
        h.update(b"\0");
        h.update(key.as_bytes());
        h.finalize()[..16].to_vec()
    }

    /// Reads one key and turns it into a `RemoteKey` (`None` for types the bridge does not expose).
    fn describe(self: &Arc<Self>, name: &str, data: &Value) -> Option<RemoteKey> {
        let ty = data.get("type")?.as_str()?;
        let latest = data
            .get("latest_version")
            .and_then(Value::as_u64)
            .unwrap_or(1);
        let flag = |k: &str| data.get(k).and_then(Value::as_bool).unwrap_or(false);
        let public = || -> Option<KeyMaterial> {
            let pk = data
                .get("keys")?
                .get(latest.to_string())?
                .get("public_key")?
                .as_str()?;
            public_key(pk)
        };
        use cryptoki_sys::*;
        let rsa_mechs = RSA_MECHS.to_vec();
        let ec_mechs = ECDSA_MECHS.to_vec();
        let sym = vec![
            vendor::CKM_P11BRIDGE_VAULT_ENCRYPT,
            vendor::CKM_P11BRIDGE_VAULT_REWRAP,
        ];
        let hmac = HMAC_MECHS.to_vec();
        let (material, mechanisms, usage) = match ty {
            "rsa-2048" | "rsa-3072" | "rsa-4096" => (
                public()?,
                rsa_mechs,
                Usage {
                    sign: flag("supports_signing"),
                    decrypt: flag("supports_decryption"),
                    ..Default::default()
                },
            ),
            "ecdsa-p256" | "ecdsa-p384" | "ecdsa-p521" => (
                public()?,
                ec_mechs,
                Usage {
                    sign: true,
                    ..Default::default()
                },
            ),
            "ed25519" => (
                public()?,
                vec![CKM_EDDSA],
                Usage {
                    sign: true,
                    ..Default::default()
                },
            ),
            "aes128-gcm96" | "aes256-gcm96" => (
                KeyMaterial::Secret {
                    key_type: CKK_AES,
                    bits: if ty == "aes128-gcm96" { 128 } else { 256 },
                },
                sym,
                Usage {
                    encrypt: true,
                    ..Default::default()
                },
            ),
            "chacha20-poly1305" => (
                KeyMaterial::Secret {
                    key_type: CKK_CHACHA20,
                    bits: 256,
                },
                sym,
                Usage {
                    encrypt: true,
                    ..Default::default()
                },
            ),
            "hmac" => (
                KeyMaterial::Secret {
                    key_type: CKK_GENERIC_SECRET,
                    bits: data.get("key_size").and_then(Value::as_u64).unwrap_or(0) as usize * 8,
                },
                hmac,
                Usage {
                    sign: true,
                    ..Default::default()
                },
            ),
            _ => return None,
        };
        // A key created through the bridge shows the label it was created with.
        let label = match name.strip_prefix(self.cfg.created_prefix.as_str()) {
            Some(l) if !self.cfg.created_prefix.is_empty() && !l.is_empty() => l,
            _ => name,
        };
        let mut key = RemoteKey {
            name: name.to_string(),
            label: label.to_string(),
            id: self.key_id(name),
            material,
            usage,
            version: Some(latest),
            mechanisms,
            cert: None,
            destroyable: self.cfg.allow_destroy,
        };
        if !key.material.is_secret() {
            key.cert = self.certificate(&key);
        }
        Some(key)
    }

    /// The key's certificate: configured, imported, cached, or generated now (signed by the key through Vault).
    fn certificate(self: &Arc<Self>, key: &RemoteKey) -> Option<crate::remote::Certificate> {
        self.certs.for_key(
            &self.name,
            self.cfg.certificates.get(&key.name).map(PathBuf::as_path),
            &self.cert_name(&key.name),
            key,
            |req| Vault(self.clone()).sign(key, req),
        )
    }

    /// A key's name in the certificate cache and store.
    fn cert_name(&self, key: &str) -> String {
        format!("{}/{}", self.cfg.mount, key)
    }

    /// Where the backend is, for people: its addresses.
    fn endpoint(&self) -> String {
        self.addresses.join(", ")
    }

    /// Tells the person about a key named in `keys` that is not on the token, once per process and cause.
    fn key_missing(&self, key: &str, why: &str) {
        crate::diag::report(
            CKR_OK,
            format!(
                "backend \"{}\" (vault-transit, {}): key \"{key}\" named in keys: {why}; it is not on the token",
                self.name,
                self.endpoint()
            ),
        );
    }

    /// The names of keys created through the bridge (`created_prefix`), from one `LIST <mount>/keys`. A refused
    /// LIST is not fatal (the configured keys are still served): its cause comes back as the second value, to be
    /// reported once the configured keys could be read (a wrong token is reported by their failure instead).
    fn created_names(self: &Arc<Self>) -> Result<(Vec<String>, Option<String>)> {
        if self.cfg.created_prefix.is_empty() {
            return Ok((Vec::new(), None));
        }
        let names = match self.list_keys() {
            Ok(n) => n,
            Err(e) if e.rv() == CKR_KEY_FUNCTION_NOT_PERMITTED => {
                return Ok((Vec::new(), Some(e.cause().unwrap_or("refused").to_string())));
            }
            Err(e) => return Err(e),
        };
        Ok((
            names
                .into_iter()
                .filter(|n| n.starts_with(&self.cfg.created_prefix))
                .collect(),
            None,
        ))
    }

    /// `LIST <mount>/keys` (no key at all: Vault answers 404, an empty list).
    fn list_keys(self: &Arc<Self>) -> Result<Vec<String>> {
        let v = self.op(
            reqwest::Method::from_bytes(b"LIST").map_err(|_| Error::new(CKR_GENERAL_ERROR))?,
            self.transit("keys"),
            None,
            true,
            CKR_DEVICE_ERROR,
        );
        let v = match v {
            Err(e) if e.rv() == CKR_KEY_HANDLE_INVALID => return Ok(Vec::new()),
            other => other?,
        };
        Ok(v.pointer("/data/keys")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The keys to read: the configured ones, the discovered ones (`discover`, `prefix`) and those created through
    /// the bridge (`created_prefix`). One LIST at most.
    fn key_names(self: &Arc<Self>) -> Result<(Vec<String>, Option<String>)> {
        let mut refused = None;
        let mut names: Vec<String> = if self.cfg.discover {
            let created = &self.cfg.created_prefix;
            self.list_keys()?
                .into_iter()
                .filter(|n| {
                    n.starts_with(&self.cfg.prefix)
                        || (!created.is_empty() && n.starts_with(created))
                })
                .collect()
        } else {
            let (n, r) = self.created_names()?;
            refused = r;
            n
        };
        for k in self.cfg.keys.iter().chain(self.created.lock().iter()) {
            if !names.contains(k) {
                names.push(k.clone());
            }
        }
        Ok((names, refused))
    }
}

impl VaultService {
    /// One sign request for one or more inputs (`params`: every other field of the body). One input goes as a
    /// plain request; several as `batch_input`, each answered by its own `signature` or `error`.
    fn sign_batch(
        self: &Arc<Self>,
        path: &str,
        params: &Value,
        inputs: Vec<String>,
    ) -> Result<Vec<Result<String>>> {
        let mut body = params.clone();
        if let [one] = inputs.as_slice() {
            body["input"] = json!(one);
            let v = self.op(
                reqwest::Method::POST,
                path.to_string(),
                Some(body),
                true,
                CKR_DATA_INVALID,
            )?;
            return Ok(vec![field(&v, "signature").map(str::to_owned)]);
        }
        let n = inputs.len();
        body["batch_input"] =
            Value::Array(inputs.into_iter().map(|i| json!({ "input": i })).collect());
        let v = self.op(
            reqwest::Method::POST,
            path.to_string(),
            Some(body),
            true,
            CKR_DATA_INVALID,
        )?;
        Ok(batch_signatures(&self.name, &v, n))
    }
}

/// The per-item results of a `batch_input` sign answer (`data.batch_results[i]`: `signature` or `error`).
fn batch_signatures(backend: &str, v: &Value, n: usize) -> Vec<Result<String>> {
    let items = v
        .pointer("/data/batch_results")
        .and_then(Value::as_array)
        .filter(|a| a.len() == n);
    let Some(items) = items else {
        let e = Error::with(
            CKR_DEVICE_ERROR,
            format!("{backend}: batch answer without {n} batch_results"),
        );
        return (0..n).map(|_| Err(e.clone())).collect();
    };
    items
        .iter()
        .map(|it| {
            match (
                it.get("signature").and_then(Value::as_str),
                it.get("error").and_then(Value::as_str),
            ) {
                (Some(sig), _) if !sig.is_empty() => Ok(sig.to_string()),
                (_, err) => Err(map_fault(
                    backend,
                    Fault::Status(
                        400,
                        format!(
                            "batch item refused: {}",
                            err.unwrap_or("no signature in the answer")
                        ),
                    ),
                    CKR_DATA_INVALID,
                )),
            }
        })
        .collect()
}

/// The background prober of a multi-address backend (see `health::probe_loop`): each address due for a probe gets
/// `GET /v1/sys/health` (unauthenticated); an active node (200) or a standby (429, 472, 473: it redirects or
/// forwards) closes its breaker, so calls return to it.
impl health::Probed for VaultService {
    fn endpoints(&self) -> &Endpoints {
        &self.health
    }

    fn probe_interval(&self) -> Duration {
        Duration::from_millis(self.cfg.probe_interval_ms)
    }

    fn ready(&self) -> bool {
        self.http().is_ok()
    }

    async fn probe(self: Arc<Self>, i: usize) -> bool {
        let Ok(http) = self.http() else {
            return false;
        };
        let url = format!("{}/v1/sys/health", self.addresses[i].trim_end_matches('/'));
        let r = tokio::time::timeout(self.deadline(), http.get(&url).send()).await;
        matches!(r, Ok(Ok(r)) if matches!(r.status().as_u16(), 200 | 429 | 472 | 473))
    }

    fn report(&self, i: usize, answered: bool) {
        let addr = &self.addresses[i];
        if answered {
            tracing::info!(backend = %self.name, address = %addr, "probe answered: address healthy again");
        } else {
            tracing::debug!(backend = %self.name, address = %addr, "probe failed: address still down");
        }
    }
}

fn backoff(attempt: u32) -> Duration {
    let base = 50u64 << attempt.min(5);
    let mut b = [0u8; 2];
    let _ = getrandom_bytes(&mut b);
    Duration::from_millis(base + u16::from_ne_bytes(b) as u64 % base)
}

fn getrandom_bytes(b: &mut [u8]) -> bool {
    use rand_core::RngCore;
    rand_core::OsRng.try_fill_bytes(b).is_ok()
}

/// Maps a request fault to the `CK_RV` of a key operation (see the README's error table).
fn map_fault(backend: &str, f: Fault, bad_input: CK_RV) -> Error {
    match f {
        Fault::Unreachable(m) => {
            Error::with(CKR_DEVICE_ERROR, format!("{backend}: unreachable: {m}"))
        }
        Fault::Status(code, m) => {
            let rv = match code {
                400 if m.contains("sealed") => CKR_DEVICE_ERROR,
                400 => bad_input,
                403 => CKR_KEY_FUNCTION_NOT_PERMITTED,
                404 => CKR_KEY_HANDLE_INVALID,
                503 => CKR_DEVICE_ERROR,
                _ => CKR_DEVICE_ERROR,
            };
            Error::with(rv, format!("{backend}: {m}"))
        }
        Fault::Login(m) => Error::with(CKR_DEVICE_ERROR, format!("{backend}: login failed: {m}")),
    }
}

fn build_http(cfg: &Config) -> std::result::Result<reqwest::Client, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &cfg.ca_cert {
        let pem = std::fs::read(ca).map_err(|e| format!("ca_cert {}: {e}", ca.display()))?;
        for c in rustls_pemfile::certs(&mut &pem[..]) {
            let c = c.map_err(|e| format!("ca_cert {}: {e}", ca.display()))?;
            roots
                .add(c)
                .map_err(|e| format!("ca_cert {}: {e}", ca.display()))?;
        }
    } else {
        for c in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(c);
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let tls = match (&cfg.client_cert, &cfg.client_key) {
        (Some(cp), Some(kp)) => {
            let cpem =
                std::fs::read(cp).map_err(|e| format!("client_cert {}: {e}", cp.display()))?;
            let certs: Vec<_> = rustls_pemfile::certs(&mut &cpem[..])
                .filter_map(|c| c.ok())
                .collect();
            let kpem = Zeroizing::new(
                std::fs::read(kp).map_err(|e| format!("client_key {}: {e}", kp.display()))?,
            );
            let key = rustls_pemfile::private_key(&mut &kpem[..])
                .map_err(|e| format!("client_key: {e}"))?
                .ok_or("client_key: no private key")?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| e.to_string())?
        }
        _ => builder.with_no_client_auth(),
    };
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(Duration::from_millis(cfg.connect_timeout_ms))
        .timeout(Duration::from_millis(cfg.timeout_ms))
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
        .map_err(|e| e.to_string())
}

/// A public key as Vault shows it: PEM SubjectPublicKeyInfo, or base64 of a raw Ed25519 key.
fn public_key(pk: &str) -> Option<KeyMaterial> {
    if pk.contains("-----BEGIN") {
        let item = rustls_pemfile::read_one(&mut pk.as_bytes()).ok()??;
        match item {
            rustls_pemfile::Item::SubjectPublicKeyInfo(spki) => {
                KeyMaterial::from_spki(spki.as_ref())
            }
            _ => None,
        }
    } else {
        let raw = B64.decode(pk.trim()).ok()?;
        Some(KeyMaterial::Ed25519 {
            point: raw.try_into().ok()?,
        })
    }
}

fn hash_name(h: Hash) -> &'static str {
    match h {
        Hash::Sha1 => "sha1",
        Hash::Sha224 => "sha2-224",
        Hash::Sha256 => "sha2-256",
        Hash::Sha384 => "sha2-384",
        Hash::Sha512 => "sha2-512",
    }
}

/// Decodes Vault's `vault:vN:<base64>` (standard or URL-safe) into bytes.
fn unvault(s: &str) -> Result<Vec<u8>> {
    let b = s.rsplit(':').next().unwrap_or("");
    B64.decode(b)
        .or_else(|_| B64URL.decode(b.trim_end_matches('=')))
        .map_err(|_| Error::with(CKR_DEVICE_ERROR, "vault answered an undecodable value"))
}

fn field<'a>(v: &'a Value, name: &str) -> Result<&'a str> {
    v.pointer(&format!("/data/{name}"))
        .and_then(Value::as_str)
        .ok_or_else(|| Error::with(CKR_DEVICE_ERROR, format!("vault answer has no {name}")))
}

/// The service, shared through an `Arc` so that requests can outlive the caller's stack frame.
pub struct Vault(Arc<VaultService>);

impl Vault {
    pub fn new(s: VaultService) -> Self {
        Vault(Arc::new(s))
    }
}

impl RemoteService for Vault {
    fn mechanisms(&self) -> Vec<(CK_MECHANISM_TYPE, CK_MECHANISM_INFO)> {
        let info = |min: CK_ULONG, max: CK_ULONG, flags: CK_FLAGS| CK_MECHANISM_INFO {
            ulMinKeySize: min,
            ulMaxKeySize: max,
            flags,
        };
        let sv = CKF_SIGN | CKF_VERIFY;
        let mut v = vec![
            (CKM_RSA_PKCS, info(2048, 4096, sv)),
            (
                CKM_RSA_PKCS_OAEP,
                info(2048, 4096, CKF_ENCRYPT | CKF_DECRYPT),
            ),
        ];
        for m in RSA_MECHS[1..12].iter().copied() {
            v.push((m, info(2048, 4096, sv)));
        }
        let ec = CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS;
        for m in ECDSA_MECHS {
            v.push((m, info(256, 521, sv | ec)));
        }
        v.push((CKM_EDDSA, info(255, 255, sv)));
        for m in HMAC_MECHS {
            v.push((m, info(0, 0, sv)));
        }
        v.push((
            vendor::CKM_P11BRIDGE_VAULT_ENCRYPT,
            info(128, 256, CKF_ENCRYPT | CKF_DECRYPT),
        ));
        v.push((
            vendor::CKM_P11BRIDGE_VAULT_REWRAP,
            info(128, 256, CKF_ENCRYPT),
        ));
        v.push((
            CKM_RSA_PKCS_KEY_PAIR_GEN,
            info(2048, 4096, CKF_GENERATE_KEY_PAIR),
        ));
        v.push((
            CKM_EC_KEY_PAIR_GEN,
            info(256, 521, CKF_GENERATE_KEY_PAIR | ec),
        ));
        v.push((
            CKM_EC_EDWARDS_KEY_PAIR_GEN,
            info(255, 255, CKF_GENERATE_KEY_PAIR),
        ));
        v.push((CKM_AES_KEY_GEN, info(16, 32, CKF_GENERATE)));
        v.push((CKM_GENERIC_SECRET_KEY_GEN, info(16, 64, CKF_GENERATE)));
        v
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(self.0.cfg.cache_ttl_s)
    }

    fn fetch_keys(&self) -> Result<Vec<RemoteKey>> {
        let me = self.0.clone();
        let (names, list_refused) = me.key_names()?;
        // Read every key, at most 16 requests at a time.
        let reader = me.clone();
        let datas: Vec<(String, Result<Value>)> = runtime::run(me.deadline() * 4, async move {
            let sem = Arc::new(tokio::sync::Semaphore::new(16));
            let mut set = tokio::task::JoinSet::new();
            for (i, n) in names.into_iter().enumerate() {
                let r = reader.clone();
                let sem = sem.clone();
                set.spawn(async move {
                    let _p = sem.acquire().await;
                    let path = r.transit(&format!("keys/{n}"));
                    let v = r
                        .clone()
                        .call(reqwest::Method::GET, path, None, true)
                        .await
                        .map_err(|f| map_fault(&r.name, f, CKR_DEVICE_ERROR));
                    (i, n, v)
                });
            }
            let mut out = Vec::new();
            while let Some(r) = set.join_next().await {
                if let Ok(x) = r {
                    out.push(x);
                }
            }
            out.sort_by_key(|x| x.0);
            Ok(out.into_iter().map(|(_, n, v)| (n, v)).collect())
        })?;
        let mut found = Vec::new();
        let mut forbidden = Vec::new();
        for (name, v) in datas {
            match v {
                Ok(v) => found.push((name, v)),
                // A listed key that is missing is not fatal (but said); an unreachable Vault is.
                Err(e) if e.rv() == CKR_KEY_HANDLE_INVALID => {
                    if me.cfg.keys.contains(&name) {
                        me.key_missing(&name, e.cause().unwrap_or("not found"));
                    }
                }
                // Refused: for some keys only (the policy), those are said and the others served; for all of them
                // (a wrong token), the enumeration fails with Vault's answer.
                Err(e) if e.rv() == CKR_KEY_FUNCTION_NOT_PERMITTED => forbidden.push((name, e)),
                Err(e) => return Err(e),
            }
        }
        if found.is_empty() {
            if let Some((_, e)) = forbidden.into_iter().next() {
                return Err(e);
            }
        } else {
            for (name, e) in forbidden {
                if me.cfg.keys.contains(&name) {
                    me.key_missing(&name, e.cause().unwrap_or("permission denied"));
                }
            }
        }
        if let Some(why) = list_refused {
            crate::diag::report(
                CKR_OK,
                format!(
                    "backend \"{}\" (vault-transit, {}): cannot list the keys created through the bridge (created_prefix \"{}\"): {why}; they are not on the token unless named in keys",
                    me.name,
                    me.endpoint(),
                    me.cfg.created_prefix,
                ),
            );
        }
        // Describing reads (or, the first time, generates) each key's certificate: 8 at a time.
        let described = runtime::par_map(found, 8, |(name, v)| {
            let k = v.get("data").and_then(|d| me.describe(&name, d));
            if k.is_none() {
                tracing::debug!(backend = %me.name, key = %name, "key type not exposed");
                if me.cfg.keys.contains(&name) {
                    let ty = v
                        .pointer("/data/type")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown");
                    me.key_missing(
                        &name,
                        &format!("its type \"{ty}\" is not one the bridge exposes"),
                    );
                }
            }
            k
        });
        Ok(described.into_iter().flatten().collect())
    }

    fn sign(&self, key: &RemoteKey, req: &SignRequest) -> Result<Vec<u8>> {
        let s = &self.0;
        let (path, body) = match req {
            SignRequest::Rsa { hash, pad, digest } => {
                let mut b = json!({"input": B64.encode(digest), "prehashed": true});
                match pad {
                    RsaPad::Pkcs1 => b["signature_algorithm"] = json!("pkcs1v15"),
                    RsaPad::Pss(salt) => {
                        b["signature_algorithm"] = json!("pss");
                        b["salt_length"] = json!(salt.to_string());
                    }
                }
                (format!("sign/{}/{}", key.name, hash_name(*hash)), b)
            }
            SignRequest::Ecdsa { hash, digest } => (
                format!("sign/{}/{}", key.name, hash_name(*hash)),
                json!({"input": B64.encode(digest), "prehashed": true, "marshaling_algorithm": "jws"}),
            ),
            SignRequest::Eddsa { message } => (
                format!("sign/{}", key.name),
                json!({"input": B64.encode(message.as_slice())}),
            ),
        };
        // Sign with the version whose public key the token shows: after a rotation, signatures keep matching the
        // public-key object until the next refresh moves both to the new version.
        let mut body = body;
        if let Some(v) = key.version {
            body["key_version"] = json!(v);
        }
        let sig = if s.cfg.batch {
            // Concurrent signatures with the same key and parameters share one `batch_input` request.
            let input = body
                .as_object_mut()
                .and_then(|o| o.remove("input"))
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let path = s.transit(&path);
            let batch_key = format!("{path}\n{body}");
            // A queued caller waits for the request in flight, then its own.
            let wait = s.deadline() * 2 + Duration::from_secs(1);
            s.signer.submit(&batch_key, input, wait, |inputs| {
                s.sign_batch(&path, &body, inputs)
            })?
        } else {
            let v = s.op(
                reqwest::Method::POST,
                s.transit(&path),
                Some(body),
                true,
                CKR_DATA_INVALID,
            )?;
            field(&v, "signature")?.to_string()
        };
        let sig = unvault(&sig)?;
        let want = crate::remote::mech::signature_len(&key.material);
        if sig.len() != want {
            return Err(Error::with(
                CKR_DEVICE_ERROR,
                format!("vault signature of {} bytes, expected {want}", sig.len()),
            ));
        }
        Ok(sig)
    }

    fn decrypt_oaep(&self, key: &RemoteKey, hash: Hash, ct: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        if hash != Hash::Sha256 {
            return Err(Error::with(
                CKR_MECHANISM_PARAM_INVALID,
                "Vault decrypts RSA-OAEP with SHA-256 only",
            ));
        }
        let s = &self.0;
        let ciphertext = format!("vault:v{}:{}", key.version.unwrap_or(1), B64.encode(ct));
        let v = s.op(
            reqwest::Method::POST,
            s.transit(&format!("decrypt/{}", key.name)),
            Some(json!({"ciphertext": ciphertext})),
            true,
            CKR_ENCRYPTED_DATA_INVALID,
        )?;
        Ok(Zeroizing::new(
            B64.decode(field(&v, "plaintext")?)
                .map_err(|_| Error::new(CKR_DEVICE_ERROR))?,
        ))
    }

    fn mac(&self, key: &RemoteKey, hash: Hash, data: &[u8]) -> Result<Vec<u8>> {
        let s = &self.0;
        let v = s.op(
            reqwest::Method::POST,
            s.transit(&format!("hmac/{}/{}", key.name, hash_name(hash))),
            Some(json!({"input": B64.encode(data)})),
            true,
            CKR_DATA_INVALID,
        )?;
        unvault(field(&v, "hmac")?)
    }

    fn encrypt(
        &self,
        key: &RemoteKey,
        mech: CK_MECHANISM_TYPE,
        pt: &[u8],
        ctx: &[u8],
    ) -> Result<Vec<u8>> {
        let s = &self.0;
        if mech == vendor::CKM_P11BRIDGE_VAULT_REWRAP {
            let ct = std::str::from_utf8(pt).map_err(|_| Error::new(CKR_DATA_INVALID))?;
            let mut b = json!({"ciphertext": ct});
            if !ctx.is_empty() {
                b["context"] = json!(B64.encode(ctx));
            }
            let v = s.op(
                reqwest::Method::POST,
                s.transit(&format!("rewrap/{}", key.name)),
                Some(b),
                true,
                CKR_DATA_INVALID,
            )?;
            return Ok(field(&v, "ciphertext")?.as_bytes().to_vec());
        }
        let mut b = json!({"plaintext": B64.encode(pt)});
        // The version the token shows: the ciphertext's length is then exactly what a length query answered.
        if let Some(v) = key.version {
            b["key_version"] = json!(v);
        }
        if !ctx.is_empty() {
            b["context"] = json!(B64.encode(ctx));
        }
        // Not idempotent in effect (a new nonce each time) but harmless to repeat.
        let v = s.op(
            reqwest::Method::POST,
            s.transit(&format!("encrypt/{}", key.name)),
            Some(b),
            true,
            CKR_DATA_LEN_RANGE,
        )?;
        Ok(field(&v, "ciphertext")?.as_bytes().to_vec())
    }

    fn decrypt(
        &self,
        key: &RemoteKey,
        _mech: CK_MECHANISM_TYPE,
        ct: &[u8],
        ctx: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        let s = &self.0;
        let ct = std::str::from_utf8(ct).map_err(|_| Error::new(CKR_ENCRYPTED_DATA_INVALID))?;
        if !ct.starts_with("vault:v") {
            return Err(Error::with(
                CKR_ENCRYPTED_DATA_INVALID,
                "not a vault ciphertext",
            ));
        }
        let mut b = json!({"ciphertext": ct});
        if !ctx.is_empty() {
            b["context"] = json!(B64.encode(ctx));
        }
        let v = s.op(
            reqwest::Method::POST,
            s.transit(&format!("decrypt/{}", key.name)),
            Some(b),
            true,
            CKR_ENCRYPTED_DATA_INVALID,
        )?;
        Ok(Zeroizing::new(
            B64.decode(field(&v, "plaintext")?)
                .map_err(|_| Error::new(CKR_DEVICE_ERROR))?,
        ))
    }

    fn encrypt_len(&self, key: &RemoteKey, mech: CK_MECHANISM_TYPE, pt_len: usize) -> usize {
        if mech == vendor::CKM_P11BRIDGE_VAULT_REWRAP {
            // A rewrapped ciphertext is the same size give or take the version digits.
            return pt_len + 8;
        }
        // "vault:v<version>:" + base64(12-byte nonce + ciphertext + 16-byte tag), exact: encryption uses the
        // version the token shows.
        let version_digits = key.version.unwrap_or(1).to_string().len();
        7 + version_digits + 1 + (12 + pt_len + 16).div_ceil(3) * 4
    }

    fn random(&self, n: usize) -> Result<Vec<u8>> {
        let s = &self.0;
        let v = s.op(
            reqwest::Method::POST,
            s.transit(&format!("random/{n}")),
            Some(json!({"format": "base64"})),
            true,
            CKR_DATA_LEN_RANGE,
        )?;
        B64.decode(field(&v, "random_bytes")?)
            .map_err(|_| Error::new(CKR_DEVICE_ERROR))
    }

    fn generate(&self, spec: &GenerateSpec) -> Result<String> {
        let s = &self.0;
        let name = spec.label.clone();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(Error::with(
                CKR_ATTRIBUTE_VALUE_INVALID,
                "CKA_LABEL must name the transit key ([A-Za-z0-9._-]+)",
            ));
        }
        // Named under created_prefix, so that every later process finds it again (see `key_names`); never reuse
        // an existing key under a new object, nor give a second key the label of one that exists.
        let label = name;
        let name = if label.starts_with(&s.cfg.created_prefix) {
            label.clone()
        } else {
            format!("{}{label}", s.cfg.created_prefix)
        };
        let mut taken = vec![name.clone()];
        if label != name {
            taken.push(label.clone());
        }
        for n in taken {
            match s.op(
                reqwest::Method::GET,
                s.transit(&format!("keys/{n}")),
                None,
                true,
                CKR_DEVICE_ERROR,
            ) {
                Ok(_) => {
                    return Err(Error::with(
                        CKR_ATTRIBUTE_VALUE_INVALID,
                        format!("a transit key named {n} exists (CKA_LABEL {label})"),
                    ))
                }
                Err(e) if e.rv() == CKR_KEY_HANDLE_INVALID => {}
                Err(e) => return Err(e),
            }
        }
        let mut body = json!({"exportable": false});
        body["type"] = json!(match spec.material {
            GenerateKind::Rsa { bits: 2048 } => "rsa-2048",
            GenerateKind::Rsa { bits: 3072 } => "rsa-3072",
            GenerateKind::Rsa { bits: 4096 } => "rsa-4096",
            GenerateKind::Rsa { .. } => return Err(Error::new(CKR_KEY_SIZE_RANGE)),
            GenerateKind::Ec { curve: Curve::P256 } => "ecdsa-p256",
            GenerateKind::Ec { curve: Curve::P384 } => "ecdsa-p384",
            GenerateKind::Ec { curve: Curve::P521 } => "ecdsa-p521",
            GenerateKind::Ec { .. } => return Err(Error::new(CKR_CURVE_NOT_SUPPORTED)),
            GenerateKind::Ed25519 => "ed25519",
            GenerateKind::Aes { bits: 128 } => "aes128-gcm96",
            GenerateKind::Aes { bits: 256 } => "aes256-gcm96",
            GenerateKind::Aes { .. } => return Err(Error::new(CKR_KEY_SIZE_RANGE)),
            GenerateKind::Hmac { .. } => "hmac",
        });
        if let GenerateKind::Hmac { bits } = spec.material {
            body["key_size"] = json!(bits / 8);
        }
        s.op(
            reqwest::Method::POST,
            s.transit(&format!("keys/{name}")),
            Some(body),
            false,
            CKR_TEMPLATE_INCONSISTENT,
        )?;
        s.created.lock().push(name.clone());
        tracing::info!(backend = %s.name, key = %name, "transit key created");
        Ok(name)
    }

    fn endpoint(&self) -> String {
        self.0.endpoint()
    }

    fn check_login(&self) -> Result<String> {
        let s = &self.0;
        let v = s.op(
            reqwest::Method::GET,
            "auth/token/lookup-self".into(),
            None,
            true,
            CKR_DEVICE_ERROR,
        )?;
        let d = v.get("data").cloned().unwrap_or(Value::Null);
        let name = d.get("display_name").and_then(Value::as_str).unwrap_or("?");
        let policies: Vec<String> = d
            .get("policies")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let ttl = match d.get("ttl").and_then(Value::as_u64) {
            Some(0) | None => "no expiry".to_string(),
            Some(t) => format!("ttl {t}s"),
        };
        Ok(format!(
            "token {name} policies [{}], {ttl}",
            policies.join(", ")
        ))
    }

    fn configured_keys(&self, found: &[Arc<RemoteKey>]) -> (Vec<String>, Vec<String>) {
        self.0
            .cfg
            .keys
            .iter()
            .cloned()
            .partition(|k| found.iter().any(|f| f.name == *k))
    }

    fn import_certificate(
        &self,
        key: &RemoteKey,
        der: &[u8],
    ) -> Result<crate::remote::Certificate> {
        let s = &self.0;
        if s.cfg.certificates.contains_key(&key.name) {
            return Err(Error::with(
                CKR_ACTION_PROHIBITED,
                format!(
                    "key \"{}\" has a certificate configured in certificates = {{...}}, which is served instead; remove it there to import one",
                    key.name
                ),
            ));
        }
        s.certs
            .import(&s.cert_name(&key.name), &key.label, &key.material, der)
    }

    fn destroy(&self, key: &RemoteKey) -> Result<()> {
        let s = &self.0;
        if !s.cfg.allow_destroy {
            return Err(Error::new(CKR_ACTION_PROHIBITED));
        }
        s.op(
            reqwest::Method::POST,
            s.transit(&format!("keys/{}/config", key.name)),
            Some(json!({"deletion_allowed": true})),
            false,
            CKR_ACTION_PROHIBITED,
        )?;
        s.op(
            reqwest::Method::DELETE,
            s.transit(&format!("keys/{}", key.name)),
            None,
            false,
            CKR_ACTION_PROHIBITED,
        )?;
        s.created.lock().retain(|k| *k != key.name);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vault_errors_are_quoted() {
        assert_eq!(
            vault_errors(r#"{"errors":["permission denied"]}"#),
            "permission denied"
        );
        assert_eq!(vault_errors(r#"{"errors":["a","b"]}"#), "a; b");
        assert_eq!(
            vault_errors(r#"{"errors":["1 error occurred:\n\t* permission denied\n\n"]}"#),
            "permission denied"
        );
        assert_eq!(
            vault_errors(r#"{"errors":["2 errors occurred:\n\t* a\n\t* b\n\n"]}"#),
            "a; b"
        );
        assert_eq!(vault_errors(r#"{"errors":[]}"#), "(no message)");
        assert_eq!(
            vault_errors("upstream proxy said no"),
            "upstream proxy said no"
        );
        let e = vaultrs::error::ClientError::APIError {
            code: 400,
            errors: vec!["invalid role or secret ID".into()],
        };
        assert_eq!(
            vaultrs_answer(&e).as_deref(),
            Some("HTTP 400: invalid role or secret ID")
        );
        let e = map_fault(
            "v",
            Fault::Status(
                403,
                "HTTP 403 on GET /v1/transit/keys/x: permission denied".into(),
            ),
            CKR_DATA_INVALID,
        );
        assert_eq!(e.rv(), CKR_KEY_FUNCTION_NOT_PERMITTED);
        assert_eq!(
            e.cause(),
            Some("v: HTTP 403 on GET /v1/transit/keys/x: permission denied")
        );
    }

    #[test]
    fn batch_answers_map_per_item() {
        // OpenBao's answer to a `batch_input` sign with one bad item (invalid base64).
        let v: Value = serde_json::from_str(
            r#"{"data":{"batch_results":[
                {"signature":"vault:v1:AAAA","key_version":1},
                {"error":"unable to decode input as base64: illegal base64 data at input byte 0"},
                {"signature":"vault:v1:BBBB","key_version":1}]}}"#,
        )
        .unwrap();
        let r = batch_signatures("v", &v, 3);
        assert_eq!(r[0].as_ref().unwrap(), "vault:v1:AAAA");
        assert_eq!(r[1].as_ref().unwrap_err().rv(), CKR_DATA_INVALID);
        assert_eq!(r[2].as_ref().unwrap(), "vault:v1:BBBB");
        // An answer that does not match the request fails every item.
        let r = batch_signatures("v", &v, 2);
        assert!(r
            .iter()
            .all(|x| x.as_ref().unwrap_err().rv() == CKR_DEVICE_ERROR));
    }
}
