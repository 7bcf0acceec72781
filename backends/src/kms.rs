//! The AWS KMS backend (`kind = "aws-kms"`).
//!
//! KMS keys become objects of the unified token through the shared remote layer; this file only says how to talk
//! to KMS: one SDK client per region (made on first use, inside the module's runtime, never in `C_Initialize`),
//! key selection (a list of aliases / key ids / ARNs, or discovery with a tag filter), and the KMS calls.
//!
//! High availability: with `regions`, every call walks the regions whose breaker is closed (`health::Endpoints`)
//! within one deadline, failing over on endpoint faults only; multi-Region keys are used in every region, other
//! keys in their own; calls that create or delete go to one region and are never re-sent. A background prober
//! closes the breakers of regions that answer again.
//!
//! TLS: the SDK's default HTTPS client is not used (it brings aws-lc-rs as a second rustls provider next to the
//! ring one the crate already uses, and rustls refuses to pick between two without a process-wide default). The
//! backend builds the SDK's hyper client itself with rustls on ring, installing nothing global.
//!
//! Retries: the SDK's standard retry strategy (jittered exponential backoff; throttling and 5xx/transient errors)
//! for the idempotent calls, within the per-call deadline; `CreateKey`, `CreateAlias`, `DeleteAlias` and
//! `ScheduleKeyDeletion` run with retries disabled.

use crate::health::{self, Endpoints};
use crate::remote::mech::{Hash, RsaPad, SignRequest};
use crate::remote::{
    cert, der, Curve, GenerateKind, GenerateSpec, KeyMaterial, RemoteKey, RemoteService, Usage,
};
use crate::{runtime, vendor, BuildContext, Error, OpKind, Result};
use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::config::retry::RetryConfig;
use aws_sdk_kms::config::timeout::TimeoutConfig;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{
    EncryptionAlgorithmSpec, KeyManagerType, KeySpec, KeyState, KeyUsageType, MacAlgorithmSpec,
    MessageType, SigningAlgorithmSpec, Tag,
};
use aws_sdk_kms::Client;
use cryptoki_sys::*;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Config {
    #[allow(dead_code)]
    kind: String,
    /// AWS region; else the standard chain (`AWS_REGION`, profile).
    region: Option<String>,
    /// Several regions (multi-Region keys: the same key id in each), in order of preference. Excludes `region`.
    #[serde(default)]
    regions: Vec<String>,
    /// Endpoint URL (VPC endpoint, FIPS endpoint, emulator).
    endpoint: Option<String>,
    /// With `regions`: an endpoint URL per region (regions not named use the standard endpoint).
    #[serde(default)]
    endpoints: BTreeMap<String, String>,
    /// Circuit breaker per region: consecutive endpoint failures that open it, how long it stays open before a
    /// probe, and how often the background prober looks (milliseconds).
    #[serde(default = "default_breaker_failures")]
    breaker_failures: u32,
    #[serde(default = "default_breaker_cooldown_ms")]
    breaker_cooldown_ms: u64,
    #[serde(default = "default_probe_interval_ms")]
    probe_interval_ms: u64,
    /// Shared config/credentials profile.
    profile: Option<String>,
    /// A role to assume (STS `AssumeRole`) with the chain's credentials.
    role_arn: Option<String>,
    /// Which keys: aliases (`alias/x`), key ids or ARNs; or discovery (`ListKeys`) with an optional tag filter.
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    discover: bool,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    /// Per-call deadline (retries included) and connect timeout (milliseconds).
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_connect_timeout_ms")]
    connect_timeout_ms: u64,
    /// Attempts per idempotent call (1 = no retry).
    #[serde(default = "default_max_attempts")]
    max_attempts: u32,
    /// How long key metadata stays fresh (seconds).
    #[serde(default = "default_ttl")]
    cache_ttl_s: u64,
    /// Certificates to show for keys (PEM files), by alias (`alias/x`), key id or ARN.
    #[serde(default)]
    certificates: BTreeMap<String, PathBuf>,
    /// Where generated certificates are cached (default `$XDG_CACHE_HOME/p11bridge` or `~/.cache/p11bridge`).
    cert_cache_dir: Option<PathBuf>,
    /// Where certificates imported for keys are kept (default: the `imported` directory of the cache).
    cert_store_dir: Option<PathBuf>,
    /// Keys created through the bridge get the alias `created_alias_prefix` + `CKA_LABEL` (and the tag
    /// `p11bridge-created`); every alias under this prefix is on the token, found again by every process from the
    /// `ListAliases` answer each enumeration reads anyway. `""`: the alias is `alias/` + label and such keys are
    /// found again only when listed in `keys` or discovered.
    #[serde(default = "default_created_alias_prefix")]
    created_alias_prefix: String,
    /// Let `C_DestroyObject` schedule key deletion.
    #[serde(default)]
    allow_destroy: bool,
    #[serde(default = "default_window")]
    deletion_window_days: i32,
    /// `C_GenerateRandom` source on a slot where this backend serves randomness: "os" or "kms".
    #[serde(default = "default_random")]
    random: String,
}

fn default_timeout_ms() -> u64 {
    10_000
}
fn default_connect_timeout_ms() -> u64 {
    3_000
}
fn default_max_attempts() -> u32 {
    4
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
fn default_ttl() -> u64 {
    300
}
fn default_window() -> i32 {
    7
}
fn default_created_alias_prefix() -> String {
    "alias/p11bridge/".into()
}
fn default_random() -> String {
    "os".into()
}

fn cfg_err(name: &str, msg: impl std::fmt::Display) -> Error {
    Error::with(CKR_GENERAL_ERROR, format!("backend.{name}.{msg}"))
}

/// What went wrong with one KMS request, before it becomes a `CK_RV` for the operation at hand.
#[derive(Debug)]
enum Fault {
    /// No answer: connect failure, timeout, I/O error, credentials that could not be loaded.
    Unreachable(String),
    /// A KMS error (`__type` code, message and HTTP status).
    Service(String, String, u16),
    /// The credentials could not be loaded (the same in every region).
    Credentials(String),
}

fn fault<E>(e: SdkError<E, HttpResponse>) -> Fault
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match &e {
        SdkError::ServiceError(_) => Fault::Service(
            e.code().unwrap_or("Unknown").to_string(),
            e.message().unwrap_or("").to_string(),
            e.raw_response().map_or(0, |r| r.status().as_u16()),
        ),
        _ => {
            let chain = crate::diag::error_chain(&e);
            if chain.to_ascii_lowercase().contains("credential") {
                Fault::Credentials(chain)
            } else {
                Fault::Unreachable(chain)
            }
        }
    }
}

/// What a fault says about the region that gave it.
#[derive(Debug, PartialEq, Eq)]
enum Health {
    /// The region is unwell (no answer, 5xx, KMS internal errors): counts against its breaker, the call fails over.
    Down,
    /// Throttled after the retries: the call fails over, the breaker does not count it (a rate, not an outage).
    Busy,
    /// A real answer (access denied, no such key, bad input…): the region is fine and the answer stands.
    Answered,
}

fn health(f: &Fault) -> Health {
    match f {
        Fault::Unreachable(_) => Health::Down,
        Fault::Credentials(_) => Health::Answered,
        Fault::Service(code, _, status) => {
            if code == "ThrottlingException" || *status == 429 {
                Health::Busy
            } else if *status >= 500
                || matches!(
                    code.as_str(),
                    "KMSInternalException"
                        | "DependencyTimeoutException"
                        | "KeyUnavailableException"
                        | "InternalFailure"
                        | "ServiceUnavailable"
                        | "ServiceUnavailableException"
                )
            {
                Health::Down
            } else {
                Health::Answered
            }
        }
    }
}

/// A key reference as it is named in `region`: the region part of a multi-Region key's ARN is replaced (key ids
/// and aliases are the same in every region; other keys live in one region and keep their ARN).
fn in_region(key: &str, region: Option<&str>) -> String {
    let Some(region) = region.filter(|_| multi_region_key(key)) else {
        return key.to_string();
    };
    let parts: Vec<&str> = key.splitn(6, ':').collect();
    if parts.len() == 6 && parts[0] == "arn" && parts[2] == "kms" {
        format!(
            "{}:{}:{}:{region}:{}:{}",
            parts[0], parts[1], parts[2], parts[4], parts[5]
        )
    } else {
        key.to_string()
    }
}

/// The region of a KMS ARN.
fn arn_region(key: &str) -> Option<&str> {
    let parts: Vec<&str> = key.splitn(6, ':').collect();
    (parts.len() == 6 && parts[0] == "arn" && parts[2] == "kms").then(|| parts[3])
}

/// Whether a key reference names a multi-Region key (`mrk-` key id, bare or in an ARN).
fn multi_region_key(key: &str) -> bool {
    key.rsplit([':', '/'])
        .next()
        .is_some_and(|id| id.starts_with("mrk-"))
}

/// Maps a KMS fault to the `CK_RV` of a key operation (the README's error table). `bad_input` is what a
/// `ValidationException` means for this call (the input the caller gave was not acceptable).
fn map_fault(backend: &str, f: Fault, bad_input: CK_RV) -> Error {
    match f {
        Fault::Unreachable(m) => {
            Error::with(CKR_DEVICE_ERROR, format!("{backend}: unreachable: {m}"))
        }
        Fault::Credentials(m) => Error::with(
            CKR_DEVICE_ERROR,
            format!("{backend}: credentials could not be loaded: {m}"),
        ),
        Fault::Service(code, m, _) => {
            let rv = match code.as_str() {
                "AccessDeniedException" => CKR_KEY_FUNCTION_NOT_PERMITTED,
                "InvalidKeyUsageException" | "IncorrectKeyException" => {
                    CKR_KEY_FUNCTION_NOT_PERMITTED
                }
                "NotFoundException" | "DisabledException" | "KMSInvalidStateException" => {
                    CKR_KEY_HANDLE_INVALID
                }
                "ValidationException" => bad_input,
                "InvalidCiphertextException" => CKR_ENCRYPTED_DATA_INVALID,
                "KMSInvalidSignatureException" | "KMSInvalidMacException" => CKR_SIGNATURE_INVALID,
                "AlreadyExistsException" | "InvalidAliasNameException" => {
                    CKR_ATTRIBUTE_VALUE_INVALID
                }
                "LimitExceededException" => CKR_DEVICE_MEMORY,
                // Throttling that outlived the retries, KMS internal errors, custom key stores down, credentials
                // KMS rejects: the device cannot serve now.
                _ => CKR_DEVICE_ERROR,
            };
            let rejected = matches!(
                code.as_str(),
                "UnrecognizedClientException"
                    | "InvalidSignatureException"
                    | "IncompleteSignature"
                    | "InvalidClientTokenId"
                    | "ExpiredTokenException"
                    | "SignatureDoesNotMatch"
            );
            let note = if rejected {
                " (KMS rejected the credentials)"
            } else {
                ""
            };
            Error::with(rv, format!("{backend}: {code}: {m}{note}"))
        }
    }
}

/// One region the backend may send calls to.
struct Region {
    /// `None`: the standard chain's region (a single-region configuration without `region`).
    name: Option<String>,
    endpoint: Option<String>,
    /// Its client, made on first use (and again in a forked child: its pool is the parent's).
    client: tokio::sync::Mutex<Option<(u32, Client)>>,
}

/// Where a call may go.
#[derive(Clone, Copy)]
enum Target<'a> {
    /// Any region (idempotent calls that name no key, e.g. GenerateRandom, ListKeys).
    Any,
    /// The regions holding this key (idempotent key operations): every region for a multi-Region key, else the
    /// region of its ARN.
    Key(&'a str),
    /// Exactly this region, once (calls that create or delete something: never re-sent elsewhere).
    Only(usize),
}

pub struct KmsService {
    name: String,
    cfg: Config,
    /// In order of preference; one entry for a single-region configuration.
    regions: Vec<Region>,
    /// A circuit breaker per region.
    health: Endpoints,
    /// Keys created through the bridge while it runs (added to a configured `keys` list) when they get no alias
    /// under `created_alias_prefix`.
    created: parking_lot::Mutex<Vec<String>>,
    /// Configured, imported, cached and generated certificates.
    certs: cert::CertSource,
    /// The last enumeration: each key of `keys` that was found, by the name the configuration gives, with the
    /// name of its key (its ARN).
    resolved: parking_lot::Mutex<HashMap<String, String>>,
}

impl KmsService {
    pub fn from_config(name: &str, section: &toml::Table, _ctx: &BuildContext) -> Result<Self> {
        let cfg: Config = crate::parse_section(name, section)?;
        if cfg.keys.is_empty() && !cfg.discover {
            return Err(cfg_err(
                name,
                "keys: list aliases, key ids or ARNs, or set discover = true",
            ));
        }
        if !cfg.tags.is_empty() && !cfg.discover {
            return Err(cfg_err(name, "tags: a tag filter needs discover = true"));
        }
        if let Some(e) = &cfg.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(cfg_err(
                    name,
                    format!("endpoint: \"{e}\" is not an http(s) URL"),
                ));
            }
        }
        if cfg.region.as_deref() == Some("") {
            return Err(cfg_err(name, "region: empty"));
        }
        if !cfg.regions.is_empty() {
            if cfg.region.is_some() {
                return Err(cfg_err(
                    name,
                    "regions: give either region or regions, not both",
                ));
            }
            if cfg.endpoint.is_some() {
                return Err(cfg_err(
                    name,
                    "endpoint: with regions, give endpoints = { \"REGION\" = \"URL\", ... }",
                ));
            }
            for (i, r) in cfg.regions.iter().enumerate() {
                if r.is_empty() || cfg.regions[..i].contains(r) {
                    return Err(cfg_err(
                        name,
                        format!("regions: \"{r}\" is empty or listed twice"),
                    ));
                }
            }
        }
        for (r, e) in &cfg.endpoints {
            if !cfg.regions.contains(r) {
                return Err(cfg_err(name, format!("endpoints.{r}: not one of regions")));
            }
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(cfg_err(
                    name,
                    format!("endpoints.{r}: \"{e}\" is not an http(s) URL"),
                ));
            }
        }
        if cfg.breaker_failures == 0 || cfg.breaker_cooldown_ms == 0 || cfg.probe_interval_ms == 0 {
            return Err(cfg_err(
                name,
                "breaker_failures: breaker_failures, breaker_cooldown_ms and probe_interval_ms must be > 0",
            ));
        }
        if cfg.timeout_ms == 0 || cfg.connect_timeout_ms == 0 {
            return Err(cfg_err(name, "timeout_ms: must be > 0"));
        }
        if cfg.max_attempts == 0 || cfg.max_attempts > 10 {
            return Err(cfg_err(name, "max_attempts: 1 to 10"));
        }
        if !(7..=30).contains(&cfg.deletion_window_days) {
            return Err(cfg_err(
                name,
                "deletion_window_days: KMS allows 7 to 30 days",
            ));
        }
        if cfg.random != "os" && cfg.random != "kms" {
            return Err(cfg_err(name, "random: \"os\" or \"kms\""));
        }
        for (k, p) in &cfg.certificates {
            if !p.exists() {
                return Err(cfg_err(
                    name,
                    format!("certificates.{k}: {} does not exist", p.display()),
                ));
            }
        }
        let p = &cfg.created_alias_prefix;
        let alias_chars = p
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_-".contains(c));
        if !p.is_empty()
            && (!p.starts_with("alias/")
                || p.starts_with("alias/aws/")
                || p.len() < 7
                || !alias_chars)
        {
            return Err(cfg_err(
                name,
                format!(
                    "created_alias_prefix: \"{p}\" must start with alias/ (not alias/aws/) and hold [A-Za-z0-9/_-] only, or be \"\""
                ),
            ));
        }
        let certs = cert::CertSource::new(
            "aws-kms",
            cfg.cert_cache_dir.clone(),
            cfg.cert_store_dir.clone(),
        );
        let regions: Vec<Region> = if cfg.regions.is_empty() {
            vec![Region {
                name: cfg.region.clone(),
                endpoint: cfg.endpoint.clone(),
                client: tokio::sync::Mutex::new(None),
            }]
        } else {
            cfg.regions
                .iter()
                .map(|r| Region {
                    name: Some(r.clone()),
                    endpoint: cfg.endpoints.get(r).cloned(),
                    client: tokio::sync::Mutex::new(None),
                })
                .collect()
        };
        let health = Endpoints::new(
            regions.len(),
            cfg.breaker_failures,
            Duration::from_millis(cfg.breaker_cooldown_ms),
        );
        Ok(KmsService {
            name: name.to_string(),
            cfg,
            regions,
            health,
            created: parking_lot::Mutex::new(Vec::new()),
            certs,
            resolved: parking_lot::Mutex::new(HashMap::new()),
        })
    }

    fn deadline(&self) -> Duration {
        Duration::from_millis(self.cfg.timeout_ms)
    }

    /// The client of region `i` (connection pool and credential cache shared by every session).
    async fn client(&self, i: usize) -> Client {
        let me = std::process::id();
        let r = &self.regions[i.min(self.regions.len() - 1)];
        let mut g = r.client.lock().await;
        if let Some((pid, c)) = g.as_ref() {
            if *pid == me {
                return c.clone();
            }
        }
        let c = build_client(&self.cfg, r.name.as_deref(), r.endpoint.as_deref()).await;
        *g = Some((me, c.clone()));
        c
    }

    fn region_name(&self, i: usize) -> &str {
        self.regions
            .get(i)
            .and_then(|r| r.name.as_deref())
            .unwrap_or("default")
    }

    /// Region `i` and the URL its calls go to (the configured endpoint, else the regional default), for people.
    fn region_at(&self, i: usize) -> String {
        let r = self.regions.get(i);
        let region = r.and_then(|r| r.name.clone()).or_else(|| {
            ["AWS_REGION", "AWS_DEFAULT_REGION"]
                .iter()
                .find_map(|v| std::env::var(v).ok().filter(|x| !x.is_empty()))
        });
        let url = r
            .and_then(|r| r.endpoint.clone())
            .unwrap_or_else(|| match &region {
                Some(x) => format!("https://kms.{x}.amazonaws.com"),
                None => "the default KMS endpoint".into(),
            });
        match region {
            Some(x) => format!("{url} (region {x})"),
            None => format!("{url} (region from the AWS profile)"),
        }
    }

    /// Every region and URL, for people.
    fn endpoint(&self) -> String {
        (0..self.regions.len())
            .map(|i| self.region_at(i))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Where the credentials come from, for people.
    fn credential_chain(&self) -> String {
        let base = match &self.cfg.profile {
            Some(p) => format!("profile \"{p}\""),
            None => "the AWS default chain (environment, shared config and credentials files, web identity, ECS, instance metadata)".into(),
        };
        match &self.cfg.role_arn {
            Some(r) => format!("AssumeRole {r} with {base}"),
            None => base,
        }
    }

    /// Tells the person about a key named in `keys` that is not on the token, once per process and cause.
    fn key_missing(&self, key: &str, why: &str) {
        crate::diag::report(
            CKR_OK,
            format!(
                "backend \"{}\" (aws-kms, {}): key \"{key}\" named in keys: {why}; it is not on the token",
                self.name,
                self.endpoint()
            ),
        );
    }

    /// The regions a call may go to, in order of preference.
    fn candidates(&self, target: Target<'_>) -> Vec<usize> {
        let all: Vec<usize> = (0..self.regions.len()).collect();
        match target {
            Target::Any => all,
            Target::Only(i) => vec![i],
            Target::Key(k) if self.regions.len() == 1 || multi_region_key(k) => all,
            Target::Key(k) => match arn_region(k).and_then(|r| {
                self.regions
                    .iter()
                    .position(|x| x.name.as_deref() == Some(r))
            }) {
                Some(i) => vec![i],
                None => all,
            },
        }
    }

    /// The region calls that create or delete something go to: the first healthy one.
    fn home(&self, background: bool) -> usize {
        let all: Vec<usize> = (0..self.regions.len()).collect();
        self.health.route(&all, background)[0]
    }

    /// Starts the background prober of this process if there are several regions. `true` if one runs (callers
    /// then never probe an open region themselves).
    fn background(self: &Arc<Self>) -> bool {
        health::background(self)
    }

    /// Runs `f` in the regions `target` allows, within one deadline: the healthy regions in order, each attempt
    /// capped at an equal share of the time left (the last gets all of it), failing over on endpoint faults only.
    async fn failover<T, F, Fut>(
        self: Arc<Self>,
        target_regions: Vec<usize>,
        background: bool,
        deadline: Duration,
        f: F,
    ) -> std::result::Result<T, Fault>
    where
        F: Fn(Client, Option<String>) -> Fut,
        Fut: Future<Output = std::result::Result<T, Fault>>,
    {
        let end = tokio::time::Instant::now() + deadline;
        let walk = self.health.walk(&target_regions, background);
        let several = walk.route_len() > 1;
        let mut last = Fault::Unreachable("no region available".into());
        for turn in walk {
            let i = turn.index;
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let share = turn.share(left);
            let c = self.client(i).await;
            let region = self.regions[i].name.clone();
            let out = match tokio::time::timeout(share, f(c, region)).await {
                Ok(r) => r,
                Err(_) => Err(Fault::Unreachable(format!(
                    "no answer within {} ms (timeout)",
                    share.as_millis()
                ))),
            };
            // Say where: the endpoint URL and region, or the credential chain that failed.
            let out = out.map_err(|f| match f {
                Fault::Unreachable(m) => Fault::Unreachable(format!("{}: {m}", self.region_at(i))),
                Fault::Credentials(m) => {
                    Fault::Credentials(format!("{}: {m}", self.credential_chain()))
                }
                other => other,
            });
            match out {
                Ok(v) => {
                    if self.health.answered(i) {
                        tracing::info!(backend = %self.name, region = %self.region_name(i), "region healthy again");
                    }
                    return Ok(v);
                }
                Err(f) => match health(&f) {
                    Health::Answered => {
                        self.health.answered(i);
                        return Err(f);
                    }
                    h => {
                        if h == Health::Down && self.health.unwell(i) {
                            tracing::warn!(backend = %self.name, region = %self.region_name(i), "region unhealthy: breaker open");
                        }
                        if several {
                            tracing::debug!(backend = %self.name, region = %self.region_name(i), fault = ?f, "failing over");
                        }
                        last = f;
                    }
                },
            }
        }
        Err(last)
    }
}

/// The background prober of a multi-region backend (see `health::probe_loop`): each region due for a probe gets one
/// cheap call (`ListKeys` with `Limit=1`); an answer closes its breaker, so calls return to it.
impl health::Probed for KmsService {
    fn endpoints(&self) -> &Endpoints {
        &self.health
    }

    fn probe_interval(&self) -> Duration {
        Duration::from_millis(self.cfg.probe_interval_ms)
    }

    async fn probe(self: Arc<Self>, i: usize) -> bool {
        let c = self.client(i).await;
        let r = tokio::time::timeout(self.deadline(), c.list_keys().limit(1).send()).await;
        match r {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => health(&fault(e)) == Health::Answered,
            Err(_) => false,
        }
    }

    fn report(&self, i: usize, answered: bool) {
        if answered {
            tracing::info!(backend = %self.name, region = %self.region_name(i), "probe answered: region healthy again");
        } else {
            tracing::debug!(backend = %self.name, region = %self.region_name(i), "probe failed: region still down");
        }
    }
}

/// An HTTPS-capable client for the SDK: hyper over rustls with the ring provider (nothing installed globally).
pub fn http_client() -> aws_sdk_kms::config::SharedHttpClient {
    use aws_smithy_http_client::tls;
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

async fn build_client(cfg: &Config, region: Option<&str>, endpoint: Option<&str>) -> Client {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_millis(cfg.connect_timeout_ms))
        .operation_timeout(Duration::from_millis(cfg.timeout_ms))
        .operation_attempt_timeout(Duration::from_millis(cfg.timeout_ms))
        .build();
    let retry = RetryConfig::standard()
        .with_max_attempts(cfg.max_attempts)
        .with_initial_backoff(Duration::from_millis(50))
        .with_max_backoff(Duration::from_secs(1));
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http_client())
        .retry_config(retry)
        .timeout_config(timeouts);
    if let Some(r) = region {
        loader = loader.region(aws_config::Region::new(r.to_string()));
    }
    if let Some(p) = &cfg.profile {
        loader = loader.profile_name(p);
    }
    let conf = loader.load().await;
    let mut b = aws_sdk_kms::config::Builder::from(&conf);
    if let Some(e) = endpoint {
        b = b.endpoint_url(e);
    }
    if let Some(role) = &cfg.role_arn {
        let p = aws_config::sts::AssumeRoleProvider::builder(role)
            .session_name("p11bridge")
            .configure(&conf)
            .build()
            .await;
        b = b.credentials_provider(p);
    }
    Client::from_conf(b.build())
}

/// Per-call config for calls that must not be repeated (they create or delete something).
fn no_retry() -> aws_sdk_kms::config::Builder {
    aws_sdk_kms::config::Builder::default().retry_config(RetryConfig::disabled())
}

/// `CKA_ID`: the 16 bytes of the key's UUID (multi-Region keys: of the part after `mrk-`); else a hash.
fn key_id_bytes(key_id: &str) -> Vec<u8> {
    let hex: String = key_id
        .trim_start_matches("mrk-")
        .chars()
        .filter(|c| *c != '-')
        .collect();
    if hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        let v: Vec<u8> = (0..16)
            .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
            .collect();
        if v.len() == 16 {
            return v;
        }
    }
    use sha2::Digest;
    sha2::Sha256::digest(key_id.as_bytes())[..16].to_vec()
}

fn curve_alg(c: Curve) -> (SigningAlgorithmSpec, usize) {
    match c {
        Curve::P256 | Curve::Secp256k1 => (SigningAlgorithmSpec::EcdsaSha256, 32),
        Curve::P384 => (SigningAlgorithmSpec::EcdsaSha384, 48),
        Curve::P521 => (SigningAlgorithmSpec::EcdsaSha512, 64),
    }
}

fn mac_alg(h: Hash) -> Result<MacAlgorithmSpec> {
    Ok(match h {
        Hash::Sha224 => MacAlgorithmSpec::HmacSha224,
        Hash::Sha256 => MacAlgorithmSpec::HmacSha256,
        Hash::Sha384 => MacAlgorithmSpec::HmacSha384,
        Hash::Sha512 => MacAlgorithmSpec::HmacSha512,
        Hash::Sha1 => return Err(Error::new(CKR_MECHANISM_INVALID)),
    })
}

fn oaep_alg(h: Hash) -> Result<EncryptionAlgorithmSpec> {
    match h {
        Hash::Sha1 => Ok(EncryptionAlgorithmSpec::RsaesOaepSha1),
        Hash::Sha256 => Ok(EncryptionAlgorithmSpec::RsaesOaepSha256),
        _ => Err(Error::with(
            CKR_MECHANISM_PARAM_INVALID,
            "KMS decrypts RSA-OAEP with SHA-1 or SHA-256 only",
        )),
    }
}

/// The encryption context of `CKM_P11BRIDGE_KMS_ENCRYPT`: the mechanism parameter, a JSON object of strings.
fn context(ctx: &[u8]) -> Result<Option<HashMap<String, String>>> {
    if ctx.is_empty() {
        return Ok(None);
    }
    serde_json::from_slice::<HashMap<String, String>>(ctx)
        .map(Some)
        .map_err(|_| {
            Error::with(
                CKR_MECHANISM_PARAM_INVALID,
                "the CKM_P11BRIDGE_KMS_ENCRYPT parameter is a JSON object of strings (the encryption context)",
            )
        })
}

/// One selected key as read from KMS.
struct Described {
    meta: aws_sdk_kms::types::KeyMetadata,
    public_key: Option<Vec<u8>>,
    /// The alias it was selected by, if any.
    selected_alias: Option<String>,
}

const RSA_SIGN: &[CK_MECHANISM_TYPE] = &[
    CKM_RSA_PKCS,
    CKM_SHA256_RSA_PKCS,
    CKM_SHA384_RSA_PKCS,
    CKM_SHA512_RSA_PKCS,
    CKM_RSA_PKCS_PSS,
    CKM_SHA256_RSA_PKCS_PSS,
    CKM_SHA384_RSA_PKCS_PSS,
    CKM_SHA512_RSA_PKCS_PSS,
];

/// The alias a key was selected by (`alias/NAME` or an alias ARN), if it was.
fn selected_alias(sel: &str) -> Option<String> {
    sel.rsplit_once(":alias/")
        .map(|(_, a)| format!("alias/{a}"))
        .or_else(|| sel.starts_with("alias/").then(|| sel.to_string()))
}

/// A key as a successful `GetPublicKey` describes it: enabled (KMS refuses `GetPublicKey` for keys in any other
/// state), customer managed (AWS managed keys are symmetric, for which it fails). `None` when the answer lacks
/// what is needed (`KeyId` is the key ARN and `KeySpec` is there in AWS's answer; else `DescribeKey` is asked).
fn from_public_key(
    p: &aws_sdk_kms::operation::get_public_key::GetPublicKeyOutput,
    selected_alias: Option<String>,
) -> Option<Described> {
    let arn = p.key_id().filter(|k| k.starts_with("arn:"))?;
    let (_, key_id) = arn.rsplit_once(":key/")?;
    let key_spec = p.key_spec().cloned()?;
    let public_key = p.public_key().map(|b| b.as_ref().to_vec())?;
    let meta = aws_sdk_kms::types::KeyMetadata::builder()
        .key_id(key_id)
        .arn(arn)
        .enabled(true)
        .key_state(KeyState::Enabled)
        .key_manager(KeyManagerType::Customer)
        .key_spec(key_spec)
        .set_key_usage(p.key_usage().cloned())
        .set_signing_algorithms(Some(p.signing_algorithms().to_vec()))
        .set_encryption_algorithms(Some(p.encryption_algorithms().to_vec()))
        .build()
        .ok()?;
    Some(Described {
        meta,
        public_key: Some(public_key),
        selected_alias,
    })
}

/// The service, shared through an `Arc` so that requests can outlive the caller's stack frame.
pub struct Kms(Arc<KmsService>);

impl Kms {
    pub fn new(s: KmsService) -> Self {
        Kms(Arc::new(s))
    }

    /// One KMS `Decrypt`: RSA-OAEP (with its algorithm) or symmetric (with an optional encryption context).
    fn decrypt_call(
        &self,
        key: &RemoteKey,
        ct: &[u8],
        alg: Option<EncryptionAlgorithmSpec>,
        ctx: Option<HashMap<String, String>>,
        bad_input: CK_RV,
    ) -> Result<Zeroizing<Vec<u8>>> {
        let id = key.name.clone();
        let ct = ct.to_vec();
        self.call(Target::Key(&key.name), bad_input, move |c, r| {
            let (id, ct, alg, ctx) = (
                in_region(&id, r.as_deref()),
                ct.clone(),
                alg.clone(),
                ctx.clone(),
            );
            async move {
                let r = c
                    .decrypt()
                    .key_id(id)
                    .ciphertext_blob(Blob::new(ct))
                    .set_encryption_algorithm(alg)
                    .set_encryption_context(ctx)
                    .send()
                    .await
                    .map_err(fault)?;
                Ok(Zeroizing::new(
                    r.plaintext()
                        .map(|b| b.as_ref().to_vec())
                        .unwrap_or_default(),
                ))
            }
        })
    }

    /// Runs one KMS call on the module's runtime within the deadline, in the regions `target` allows (failing
    /// over between them), mapping its fault for this operation. `f` gets the region's client and name.
    fn call<T, F, Fut>(&self, target: Target<'_>, bad_input: CK_RV, f: F) -> Result<T>
    where
        F: Fn(Client, Option<String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<T, Fault>> + Send,
        T: Send + 'static,
    {
        let me = self.0.clone();
        let background = me.background();
        let regions = me.candidates(target);
        let deadline = me.deadline();
        let name = me.name.clone();
        runtime::run(deadline, async move {
            me.failover(regions, background, deadline, f)
                .await
                .map_err(|e| map_fault(&name, e, bad_input))
        })
    }

    /// Every selected key id (or alias / ARN as configured): `keys` first (in order), then the discovered keys,
    /// then every alias under `created_alias_prefix` (from the `ListAliases` answer, no request of its own).
    async fn selection(
        s: &KmsService,
        c: &Client,
        aliases: &HashMap<String, Vec<String>>,
    ) -> std::result::Result<Vec<String>, Fault> {
        let mut out: Vec<String> = s.cfg.keys.clone();
        if s.cfg.discover {
            let mut marker = None;
            loop {
                let r = c
                    .list_keys()
                    .limit(1000)
                    .set_marker(marker.take())
                    .send()
                    .await
                    .map_err(fault)?;
                for k in r.keys() {
                    if let Some(id) = k.key_arn().or(k.key_id()) {
                        out.push(id.to_string());
                    }
                }
                match (r.truncated(), r.next_marker()) {
                    (true, Some(m)) => marker = Some(m.to_string()),
                    _ => break,
                }
            }
        }
        let prefix = &s.cfg.created_alias_prefix;
        if !s.cfg.discover && !prefix.is_empty() {
            let mut created: Vec<&String> = aliases
                .values()
                .flatten()
                .filter(|a| a.starts_with(prefix.as_str()) && !out.contains(a))
                .collect();
            created.sort();
            out.extend(created.into_iter().cloned());
        }
        for k in s.created.lock().iter() {
            out.push(k.clone());
        }
        Ok(out)
    }

    async fn aliases(c: &Client) -> std::result::Result<HashMap<String, Vec<String>>, Fault> {
        let mut by_key: HashMap<String, Vec<String>> = HashMap::new();
        let mut marker = None;
        loop {
            let r = c
                .list_aliases()
                .limit(100)
                .set_marker(marker.take())
                .send()
                .await
                .map_err(fault)?;
            for a in r.aliases() {
                if let (Some(n), Some(k)) = (a.alias_name(), a.target_key_id()) {
                    if !n.starts_with("alias/aws/") {
                        by_key.entry(k.to_string()).or_default().push(n.to_string());
                    }
                }
            }
            match (r.truncated(), r.next_marker()) {
                (true, Some(m)) => marker = Some(m.to_string()),
                _ => break,
            }
        }
        for v in by_key.values_mut() {
            v.sort();
        }
        Ok(by_key)
    }

    /// Reads one key. `None`: not exposed.
    ///
    /// Without a tag filter, `GetPublicKey` first: for a usable asymmetric key its answer is all the bridge needs
    /// (ARN, key spec, usage, algorithms, public key), one request instead of two. It fails for keys that are not
    /// usable (`DisabledException`, `KMSInvalidStateException` for pending deletion, import…) and for symmetric and
    /// HMAC keys (`UnsupportedOperationException`); any such answer falls back to `DescribeKey`, which filters
    /// those keys as before. AWS managed keys are always symmetric (`SYMMETRIC_DEFAULT`), so `GetPublicKey` never
    /// succeeds for one: they still go through `DescribeKey` and are exposed only when listed. An unwell region
    /// (no answer, 5xx, throttled) is an error as on any other call, so that the refresh fails over.
    ///
    /// With a tag filter: metadata, tags (before anything is exposed), then the public key.
    async fn describe_one(
        s: Arc<KmsService>,
        c: Client,
        sel: String,
        region: Option<String>,
    ) -> std::result::Result<std::result::Result<Described, String>, Fault> {
        if s.cfg.tags.is_empty() {
            match c.get_public_key().key_id(&sel).send().await.map_err(fault) {
                Ok(p) => {
                    if let Some(d) = from_public_key(&p, selected_alias(&sel)) {
                        return Ok(Ok(d));
                    }
                }
                Err(f) if health(&f) == Health::Answered => {}
                Err(f) => return Err(f),
            }
        }
        let d = c.describe_key().key_id(&sel).send().await.map_err(fault)?;
        let Some(meta) = d.key_metadata().cloned() else {
            return Ok(Err("DescribeKey answered no key metadata".into()));
        };
        if meta.key_state() != Some(&KeyState::Enabled) || !meta.enabled() {
            return Ok(Err(format!(
                "KMS says its state is {} (only Enabled keys are used)",
                meta.key_state().map_or("unknown", |k| k.as_str())
            )));
        }
        let listed = s
            .cfg
            .keys
            .iter()
            .any(|k| in_region(k, region.as_deref()) == sel);
        if !listed && meta.key_manager() == Some(&KeyManagerType::Aws) {
            // AWS managed keys are discovered but not exposed (list them explicitly to use them).
            return Ok(Err("AWS managed".into()));
        }
        if !listed && !s.cfg.tags.is_empty() {
            let t = c
                .list_resource_tags()
                .key_id(meta.key_id())
                .send()
                .await
                .map_err(fault)?;
            let have: HashMap<&str, &str> = t
                .tags()
                .iter()
                .map(|t| (t.tag_key(), t.tag_value()))
                .collect();
            if !s
                .cfg
                .tags
                .iter()
                .all(|(k, v)| have.get(k.as_str()) == Some(&v.as_str()))
            {
                return Ok(Err("its tags do not match".into()));
            }
        }
        let asymmetric = matches!(
            meta.key_spec(),
            Some(
                KeySpec::Rsa2048
                    | KeySpec::Rsa3072
                    | KeySpec::Rsa4096
                    | KeySpec::EccNistP256
                    | KeySpec::EccNistP384
                    | KeySpec::EccNistP521
                    | KeySpec::EccSecgP256K1
            )
        );
        let public_key = if asymmetric {
            let p = c
                .get_public_key()
                .key_id(meta.key_id())
                .send()
                .await
                .map_err(fault)?;
            p.public_key().map(|b| b.as_ref().to_vec())
        } else {
            None
        };
        Ok(Ok(Described {
            meta,
            public_key,
            selected_alias: selected_alias(&sel),
        }))
    }

    /// Turns what KMS said into a key of the bridge (`None` for key specs and usages it does not expose).
    fn to_key(&self, d: Described, aliases: &HashMap<String, Vec<String>>) -> Option<RemoteKey> {
        let s = &self.0;
        let m = &d.meta;
        let key_id = m.key_id().to_string();
        let mut name = m.arn().unwrap_or(&key_id).to_string();
        if s.regions.len() > 1 && multi_region_key(&key_id) {
            // The same object whichever region answered the refresh: named in the first region.
            name = in_region(&name, s.regions[0].name.as_deref());
        }
        let alias = d
            .selected_alias
            .clone()
            .or_else(|| aliases.get(&key_id).and_then(|v| v.first().cloned()));
        // A key created through the bridge shows the label it was created with.
        let created = s.cfg.created_alias_prefix.as_str();
        let label = alias
            .as_deref()
            .map(|a| match a.strip_prefix(created) {
                Some(l) if !created.is_empty() && !l.is_empty() => l.to_string(),
                _ => a.trim_start_matches("alias/").to_string(),
            })
            .unwrap_or_else(|| key_id.clone());
        let usage = m
            .key_usage()
            .cloned()
            .unwrap_or(KeyUsageType::EncryptDecrypt);
        let secret = |key_type, bits| KeyMaterial::Secret { key_type, bits };
        let (material, mechanisms, usage) = match (m.key_spec()?, &usage) {
            (KeySpec::SymmetricDefault, KeyUsageType::EncryptDecrypt) => (
                secret(CKK_AES, 256),
                vec![vendor::CKM_P11BRIDGE_KMS_ENCRYPT],
                Usage {
                    encrypt: true,
                    ..Default::default()
                },
            ),
            (
                spec @ (KeySpec::Hmac224 | KeySpec::Hmac256 | KeySpec::Hmac384 | KeySpec::Hmac512),
                KeyUsageType::GenerateVerifyMac,
            ) => {
                let (mech, bits) = match spec {
                    KeySpec::Hmac224 => (CKM_SHA224_HMAC, 224),
                    KeySpec::Hmac256 => (CKM_SHA256_HMAC, 256),
                    KeySpec::Hmac384 => (CKM_SHA384_HMAC, 384),
                    _ => (CKM_SHA512_HMAC, 512),
                };
                (
                    secret(CKK_GENERIC_SECRET, bits),
                    vec![mech],
                    Usage {
                        sign: true,
                        ..Default::default()
                    },
                )
            }
            (KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096, KeyUsageType::SignVerify) => (
                KeyMaterial::from_spki(d.public_key.as_deref()?)?,
                RSA_SIGN.to_vec(),
                Usage {
                    sign: true,
                    ..Default::default()
                },
            ),
            (
                KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096,
                KeyUsageType::EncryptDecrypt,
            ) => (
                KeyMaterial::from_spki(d.public_key.as_deref()?)?,
                vec![CKM_RSA_PKCS_OAEP],
                Usage {
                    decrypt: true,
                    ..Default::default()
                },
            ),
            (
                KeySpec::EccNistP256
                | KeySpec::EccNistP384
                | KeySpec::EccNistP521
                | KeySpec::EccSecgP256K1,
                KeyUsageType::SignVerify,
            ) => {
                let material = KeyMaterial::from_spki(d.public_key.as_deref()?)?;
                let hashed = match &material {
                    KeyMaterial::Ec {
                        curve: Curve::P384, ..
                    } => CKM_ECDSA_SHA384,
                    KeyMaterial::Ec {
                        curve: Curve::P521, ..
                    } => CKM_ECDSA_SHA512,
                    KeyMaterial::Ec { .. } => CKM_ECDSA_SHA256,
                    _ => return None,
                };
                (
                    material,
                    vec![CKM_ECDSA, hashed],
                    Usage {
                        sign: true,
                        ..Default::default()
                    },
                )
            }
            _ => return None,
        };
        let mut key = RemoteKey {
            name,
            label,
            id: key_id_bytes(&key_id),
            material,
            usage,
            version: None,
            mechanisms,
            cert: None,
            destroyable: s.cfg.allow_destroy,
        };
        if !key.material.is_secret() {
            let mut names = vec![key_id.clone(), key.name.clone()];
            names.extend(alias);
            names.extend(aliases.get(&key_id).cloned().unwrap_or_default());
            key.cert = self.certificate(&key, &names);
        }
        Some(key)
    }

    /// The key's certificate: configured, imported, cached, or generated now (signed by the key through KMS).
    fn certificate(&self, key: &RemoteKey, names: &[String]) -> Option<crate::remote::Certificate> {
        let s = &self.0;
        let configured = names.iter().find_map(|n| s.cfg.certificates.get(n));
        s.certs.for_key(
            &s.name,
            configured.map(PathBuf::as_path),
            &key.name,
            key,
            |req| self.sign(key, req),
        )
    }
}

impl RemoteService for Kms {
    fn mechanisms(&self) -> Vec<(CK_MECHANISM_TYPE, CK_MECHANISM_INFO)> {
        let info = |min: CK_ULONG, max: CK_ULONG, flags: CK_FLAGS| CK_MECHANISM_INFO {
            ulMinKeySize: min,
            ulMaxKeySize: max,
            flags,
        };
        let sv = CKF_SIGN | CKF_VERIFY;
        let mut v: Vec<_> = RSA_SIGN
            .iter()
            .map(|m| (*m, info(2048, 4096, sv)))
            .collect();
        v.push((
            CKM_RSA_PKCS_OAEP,
            info(2048, 4096, CKF_ENCRYPT | CKF_DECRYPT),
        ));
        let ec = CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS;
        for m in [
            CKM_ECDSA,
            CKM_ECDSA_SHA256,
            CKM_ECDSA_SHA384,
            CKM_ECDSA_SHA512,
        ] {
            v.push((m, info(256, 521, sv | ec)));
        }
        for m in [
            CKM_SHA224_HMAC,
            CKM_SHA256_HMAC,
            CKM_SHA384_HMAC,
            CKM_SHA512_HMAC,
        ] {
            v.push((m, info(224, 512, sv)));
        }
        v.push((
            vendor::CKM_P11BRIDGE_KMS_ENCRYPT,
            info(256, 256, CKF_ENCRYPT | CKF_DECRYPT),
        ));
        v.push((
            CKM_RSA_PKCS_KEY_PAIR_GEN,
            info(2048, 4096, CKF_GENERATE_KEY_PAIR),
        ));
        v.push((
            CKM_EC_KEY_PAIR_GEN,
            info(256, 521, CKF_GENERATE_KEY_PAIR | ec),
        ));
        v.push((CKM_AES_KEY_GEN, info(32, 32, CKF_GENERATE)));
        v.push((CKM_GENERIC_SECRET_KEY_GEN, info(28, 64, CKF_GENERATE)));
        v
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(self.0.cfg.cache_ttl_s)
    }

    fn fetch_keys(&self) -> Result<Vec<RemoteKey>> {
        let me = self.0.clone();
        let name = me.name.clone();
        let background = me.background();
        let regions = me.candidates(Target::Any);
        let deadline = me.deadline() * 4;
        // In the first healthy region: aliases, the selection, then every key (metadata, tags, public key) at
        // most 8 at a time.
        let (described, hidden, aliases) = runtime::run(deadline, async move {
            let s = me.clone();
            let name = me.name.clone();
            me.failover(regions, background, deadline, move |c, region| {
                let me = s.clone();
                async move {
                    let aliases = Self::aliases(&c).await?;
                    // ARNs as they are named in this region (multi-Region keys: same id everywhere).
                    let sel: Vec<String> = Self::selection(&me, &c, &aliases)
                        .await?
                        .iter()
                        .map(|k| in_region(k, region.as_deref()))
                        .collect();
                    let sem = Arc::new(tokio::sync::Semaphore::new(8));
                    let mut set = tokio::task::JoinSet::new();
                    for (i, k) in sel.into_iter().enumerate() {
                        let (s, c, sem) = (me.clone(), c.clone(), sem.clone());
                        let region = region.clone();
                        set.spawn(async move {
                            let _p = sem.acquire().await;
                            let r = Self::describe_one(s, c, k.clone(), region).await;
                            (i, k, r)
                        });
                    }
                    let mut out = Vec::new();
                    while let Some(r) = set.join_next().await {
                        if let Ok(x) = r {
                            out.push(x);
                        }
                    }
                    out.sort_by_key(|x| x.0);
                    // (selection index, key) and (selection index, why not) for the keys not exposed.
                    let mut described = Vec::new();
                    let mut hidden = Vec::new();
                    for (i, k, r) in out {
                        match r {
                            Ok(Ok(d)) => described.push((i, d)),
                            Ok(Err(why)) => {
                                tracing::debug!(backend = %me.name, key = %k, %why, "key not exposed");
                                hidden.push((i, why));
                            }
                            // A selected key that is missing (or forbidden) is not fatal; an unreachable KMS is.
                            Err(f) if health(&f) == Health::Answered => {
                                tracing::warn!(backend = %me.name, key = %k, fault = ?f, "key skipped");
                                let why = match f {
                                    Fault::Service(code, m, _) => format!("{code}: {m}"),
                                    Fault::Credentials(m) | Fault::Unreachable(m) => m,
                                };
                                hidden.push((i, why));
                            }
                            Err(f) => return Err(f),
                        }
                    }
                    Ok((described, hidden, aliases))
                }
            })
            .await
            .map_err(|f| map_fault(&name, f, CKR_DEVICE_ERROR))
        })?;
        let s = &self.0;
        let configured = &s.cfg.keys;
        let mut resolved = HashMap::new();
        let mut keys: Vec<RemoteKey> = Vec::new();
        for (i, d) in described {
            let spec = d
                .meta
                .key_spec()
                .map_or("unknown", |x| x.as_str())
                .to_string();
            match self.to_key(d, &aliases) {
                Some(k) => {
                    if let Some(c) = configured.get(i) {
                        resolved.insert(c.clone(), k.name.clone());
                    }
                    // The same key selected twice (alias and id) is one key.
                    if !keys.iter().any(|x| x.name == k.name) {
                        keys.push(k);
                    }
                }
                None => {
                    if let Some(c) = configured.get(i) {
                        s.key_missing(
                            c,
                            &format!("its key spec {spec} with its key usage is not one the bridge exposes"),
                        );
                    }
                }
            }
        }
        // Keys named in the configuration that are not there, disabled, pending deletion or refused: said once.
        for (i, why) in hidden {
            if let Some(c) = configured.get(i) {
                s.key_missing(c, &why);
            }
        }
        *s.resolved.lock() = resolved;
        tracing::debug!(backend = %name, n = keys.len(), "kms keys fetched");
        Ok(keys)
    }

    fn check_init(
        &self,
        kind: OpKind,
        key: &RemoteKey,
        _mech: CK_MECHANISM_TYPE,
        pss: Option<(Hash, usize)>,
        oaep: Option<Hash>,
    ) -> Result<()> {
        if let (OpKind::Sign, Some((h, salt))) = (kind, pss) {
            if !matches!(h, Hash::Sha256 | Hash::Sha384 | Hash::Sha512) || salt != h.len() {
                return Err(Error::with(
                    CKR_MECHANISM_PARAM_INVALID,
                    "KMS signs RSA-PSS with SHA-256/384/512, MGF1 of the same hash and a salt as long as the hash",
                ));
            }
        }
        if let (OpKind::Decrypt, Some(h)) = (kind, oaep) {
            oaep_alg(h)?;
        }
        let _ = key;
        Ok(())
    }

    fn sign(&self, key: &RemoteKey, req: &SignRequest) -> Result<Vec<u8>> {
        let (alg, digest, curve) = match (req, &key.material) {
            (SignRequest::Rsa { hash, pad, digest }, KeyMaterial::Rsa { .. }) => {
                let alg = match (pad, hash) {
                    (RsaPad::Pkcs1, Hash::Sha256) => SigningAlgorithmSpec::RsassaPkcs1V15Sha256,
                    (RsaPad::Pkcs1, Hash::Sha384) => SigningAlgorithmSpec::RsassaPkcs1V15Sha384,
                    (RsaPad::Pkcs1, Hash::Sha512) => SigningAlgorithmSpec::RsassaPkcs1V15Sha512,
                    (RsaPad::Pss(s), Hash::Sha256) if *s == 32 => {
                        SigningAlgorithmSpec::RsassaPssSha256
                    }
                    (RsaPad::Pss(s), Hash::Sha384) if *s == 48 => {
                        SigningAlgorithmSpec::RsassaPssSha384
                    }
                    (RsaPad::Pss(s), Hash::Sha512) if *s == 64 => {
                        SigningAlgorithmSpec::RsassaPssSha512
                    }
                    (RsaPad::Pss(_), _) => return Err(Error::new(CKR_MECHANISM_PARAM_INVALID)),
                    (RsaPad::Pkcs1, _) => {
                        return Err(Error::with(
                            CKR_DATA_INVALID,
                            "KMS signs SHA-256/384/512 digests only",
                        ))
                    }
                };
                (alg, digest.clone(), None)
            }
            (SignRequest::Ecdsa { digest, .. }, KeyMaterial::Ec { curve, .. }) => {
                let (alg, want) = curve_alg(*curve);
                if digest.len() != want {
                    return Err(Error::with(
                        CKR_DATA_LEN_RANGE,
                        format!("KMS signs {want}-byte digests with this curve"),
                    ));
                }
                (alg, digest.clone(), Some(*curve))
            }
            _ => return Err(Error::new(CKR_KEY_TYPE_INCONSISTENT)),
        };
        let id = key.name.clone();
        let sig = self.call(Target::Key(&key.name), CKR_DATA_LEN_RANGE, move |c, r| {
            let (id, digest, alg) = (in_region(&id, r.as_deref()), digest.clone(), alg.clone());
            async move {
                let r = c
                    .sign()
                    .key_id(id)
                    .message(Blob::new(digest))
                    .message_type(MessageType::Digest)
                    .signing_algorithm(alg)
                    .send()
                    .await
                    .map_err(fault)?;
                Ok(r.signature()
                    .map(|b| b.as_ref().to_vec())
                    .unwrap_or_default())
            }
        })?;
        let bad = |what: &str| Error::with(CKR_DEVICE_ERROR, format!("KMS returned {what}"));
        match curve {
            Some(c) => der::ecdsa_der_to_raw(&sig, c.field_len())
                .ok_or_else(|| bad("a malformed ECDSA signature")),
            None => {
                let want = crate::remote::mech::signature_len(&key.material);
                if sig.len() != want {
                    return Err(bad("an RSA signature of the wrong length"));
                }
                Ok(sig)
            }
        }
    }

    fn decrypt_oaep(&self, key: &RemoteKey, hash: Hash, ct: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let alg = oaep_alg(hash)?;
        self.decrypt_call(key, ct, Some(alg), None, CKR_ENCRYPTED_DATA_LEN_RANGE)
    }

    fn mac(&self, key: &RemoteKey, hash: Hash, data: &[u8]) -> Result<Vec<u8>> {
        let alg = mac_alg(hash)?;
        let id = key.name.clone();
        let data = data.to_vec();
        self.call(Target::Key(&key.name), CKR_DATA_LEN_RANGE, move |c, r| {
            let (id, data, alg) = (in_region(&id, r.as_deref()), data.clone(), alg.clone());
            async move {
                let r = c
                    .generate_mac()
                    .key_id(id)
                    .message(Blob::new(data))
                    .mac_algorithm(alg)
                    .send()
                    .await
                    .map_err(fault)?;
                Ok(r.mac().map(|b| b.as_ref().to_vec()).unwrap_or_default())
            }
        })
    }

    fn verify_mac(&self, key: &RemoteKey, hash: Hash, data: &[u8], mac: &[u8]) -> Result<()> {
        let alg = mac_alg(hash)?;
        if mac.len() != hash.len() {
            return Err(Error::new(CKR_SIGNATURE_LEN_RANGE));
        }
        let id = key.name.clone();
        let (data, mac) = (data.to_vec(), mac.to_vec());
        let valid = self.call(Target::Key(&key.name), CKR_DATA_LEN_RANGE, move |c, r| {
            let (id, data, mac, alg) = (
                in_region(&id, r.as_deref()),
                data.clone(),
                mac.clone(),
                alg.clone(),
            );
            async move {
                let r = c
                    .verify_mac()
                    .key_id(id)
                    .message(Blob::new(data))
                    .mac(Blob::new(mac))
                    .mac_algorithm(alg)
                    .send()
                    .await
                    .map_err(fault)?;
                Ok(r.mac_valid())
            }
        })?;
        valid.then_some(()).ok_or(Error::new(CKR_SIGNATURE_INVALID))
    }

    fn encrypt(
        &self,
        key: &RemoteKey,
        _mech: CK_MECHANISM_TYPE,
        pt: &[u8],
        ctx: &[u8],
    ) -> Result<Vec<u8>> {
        if pt.is_empty() || pt.len() > 4096 {
            return Err(Error::with(
                CKR_DATA_LEN_RANGE,
                "KMS encrypts 1 to 4096 bytes",
            ));
        }
        let ctx = context(ctx)?;
        let id = key.name.clone();
        let pt = Zeroizing::new(pt.to_vec());
        // Not idempotent in effect (a fresh ciphertext each time) but harmless to repeat.
        self.call(Target::Key(&key.name), CKR_DATA_LEN_RANGE, move |c, r| {
            let (id, pt, ctx) = (in_region(&id, r.as_deref()), pt.clone(), ctx.clone());
            async move {
                let r = c
                    .encrypt()
                    .key_id(id)
                    .plaintext(Blob::new(pt.to_vec()))
                    .set_encryption_context(ctx)
                    .send()
                    .await
                    .map_err(fault)?;
                Ok(r.ciphertext_blob()
                    .map(|b| b.as_ref().to_vec())
                    .unwrap_or_default())
            }
        })
    }

    fn decrypt(
        &self,
        key: &RemoteKey,
        _mech: CK_MECHANISM_TYPE,
        ct: &[u8],
        ctx: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        if ct.is_empty() || ct.len() > 6144 {
            return Err(Error::new(CKR_ENCRYPTED_DATA_LEN_RANGE));
        }
        let ctx = context(ctx)?;
        self.decrypt_call(key, ct, None, ctx, CKR_ENCRYPTED_DATA_INVALID)
    }

    fn encrypt_len(&self, _key: &RemoteKey, _mech: CK_MECHANISM_TYPE, pt_len: usize) -> usize {
        // A KMS ciphertext blob: a header of a few hundred bytes (key ARN, IV, tag, context) plus the plaintext.
        pt_len + 512
    }

    fn has_random(&self) -> bool {
        self.0.cfg.random == "kms"
    }

    fn random(&self, n: usize) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let chunk = (n - out.len()).min(1024) as i32;
            let r = self.call(Target::Any, CKR_DATA_LEN_RANGE, move |c, _| async move {
                let r = c
                    .generate_random()
                    .number_of_bytes(chunk)
                    .send()
                    .await
                    .map_err(fault)?;
                Ok(r.plaintext()
                    .map(|b| b.as_ref().to_vec())
                    .unwrap_or_default())
            })?;
            if r.len() != chunk as usize {
                return Err(Error::with(
                    CKR_DEVICE_ERROR,
                    "KMS returned fewer random bytes",
                ));
            }
            out.extend_from_slice(&r);
        }
        Ok(out)
    }

    fn generate(&self, spec: &GenerateSpec) -> Result<String> {
        let s = &self.0;
        let label = spec.label.clone();
        if label.is_empty()
            || label.len() > 250
            || label.starts_with("aws/")
            || !label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/_-".contains(c))
        {
            return Err(Error::with(
                CKR_ATTRIBUTE_VALUE_INVALID,
                "CKA_LABEL becomes the KMS alias: [A-Za-z0-9/_-]+, not starting with aws/",
            ));
        }
        let (key_spec, usage) = match spec.material {
            GenerateKind::Rsa { bits } => (
                match bits {
                    2048 => KeySpec::Rsa2048,
                    3072 => KeySpec::Rsa3072,
                    4096 => KeySpec::Rsa4096,
                    _ => return Err(Error::new(CKR_KEY_SIZE_RANGE)),
                },
                if spec.sign {
                    KeyUsageType::SignVerify
                } else if spec.decrypt {
                    KeyUsageType::EncryptDecrypt
                } else {
                    return Err(Error::with(
                        CKR_TEMPLATE_INCONSISTENT,
                        "a KMS RSA key signs (CKA_SIGN) or decrypts (CKA_DECRYPT)",
                    ));
                },
            ),
            GenerateKind::Ec { curve } => (
                match curve {
                    Curve::P256 => KeySpec::EccNistP256,
                    Curve::P384 => KeySpec::EccNistP384,
                    Curve::P521 => KeySpec::EccNistP521,
                    Curve::Secp256k1 => KeySpec::EccSecgP256K1,
                },
                KeyUsageType::SignVerify,
            ),
            GenerateKind::Aes { bits: 256 } => {
                (KeySpec::SymmetricDefault, KeyUsageType::EncryptDecrypt)
            }
            GenerateKind::Aes { .. } => return Err(Error::new(CKR_KEY_SIZE_RANGE)),
            GenerateKind::Hmac { bits } => (
                match bits {
                    224 => KeySpec::Hmac224,
                    256 => KeySpec::Hmac256,
                    384 => KeySpec::Hmac384,
                    512 => KeySpec::Hmac512,
                    _ => return Err(Error::new(CKR_KEY_SIZE_RANGE)),
                },
                KeyUsageType::GenerateVerifyMac,
            ),
            GenerateKind::Ed25519 => return Err(Error::new(CKR_MECHANISM_INVALID)),
        };
        // Under created_alias_prefix, so that every later process finds the key again (see `selection`).
        let prefix = s.cfg.created_alias_prefix.as_str();
        let plain = format!("alias/{label}");
        let alias = if prefix.is_empty() {
            plain.clone()
        } else {
            format!("{prefix}{label}")
        };
        // Everything below goes to one region, the first healthy one, and is never re-sent to another.
        let home = Target::Only(s.home(s.background()));
        // Never put an existing alias on a new key, nor give a second key the label of one that exists.
        let mut taken = vec![alias.clone()];
        if plain != alias {
            taken.push(plain);
        }
        for a in taken {
            let probe = a.clone();
            match self.call(home, CKR_DEVICE_ERROR, move |c, _| {
                let a = probe.clone();
                async move {
                    c.describe_key().key_id(a).send().await.map_err(fault)?;
                    Ok(())
                }
            }) {
                Ok(()) => {
                    return Err(Error::with(
                        CKR_ATTRIBUTE_VALUE_INVALID,
                        format!("the alias {a} exists (CKA_LABEL {label})"),
                    ))
                }
                Err(e) if e.rv() == CKR_KEY_HANDLE_INVALID => {}
                Err(e) => return Err(e),
            }
        }
        let mut tags = vec![Tag::builder()
            .tag_key("p11bridge-created")
            .tag_value("true")
            .build()
            .map_err(|e| Error::with(CKR_GENERAL_ERROR, e.to_string()))?];
        for (k, v) in &s.cfg.tags {
            tags.push(
                Tag::builder()
                    .tag_key(k)
                    .tag_value(v)
                    .build()
                    .map_err(|e| Error::with(CKR_GENERAL_ERROR, e.to_string()))?,
            );
        }
        let (arn, key_id) = self.call(home, CKR_TEMPLATE_INCONSISTENT, move |c, _| {
            let (key_spec, usage, tags) = (key_spec.clone(), usage.clone(), tags.clone());
            async move {
                let r = c
                    .create_key()
                    .key_spec(key_spec)
                    .key_usage(usage)
                    .description("created through p11bridge")
                    .set_tags((!tags.is_empty()).then_some(tags))
                    .customize()
                    .config_override(no_retry())
                    .send()
                    .await
                    .map_err(fault)?;
                let m = r
                    .key_metadata()
                    .ok_or_else(|| Fault::Unreachable("CreateKey answered no metadata".into()))?;
                Ok((
                    m.arn().unwrap_or(m.key_id()).to_string(),
                    m.key_id().to_string(),
                ))
            }
        })?;
        let (a, k) = (alias.clone(), key_id.clone());
        let aliased = self.call(home, CKR_ATTRIBUTE_VALUE_INVALID, move |c, _| {
            let (a, k) = (a.clone(), k.clone());
            async move {
                c.create_alias()
                    .alias_name(a)
                    .target_key_id(k)
                    .customize()
                    .config_override(no_retry())
                    .send()
                    .await
                    .map_err(fault)?;
                Ok(())
            }
        });
        if let Err(e) = aliased {
            // Do not leave a nameless key behind.
            let k = key_id.clone();
            let days = s.cfg.deletion_window_days;
            let _ = self.call(home, CKR_DEVICE_ERROR, move |c, _| {
                let k = k.clone();
                async move {
                    c.schedule_key_deletion()
                        .key_id(k)
                        .pending_window_in_days(days)
                        .customize()
                        .config_override(no_retry())
                        .send()
                        .await
                        .map_err(fault)?;
                    Ok(())
                }
            });
            return Err(e);
        }
        if !s.cfg.discover && prefix.is_empty() {
            s.created.lock().push(arn.clone());
        }
        tracing::info!(backend = %s.name, key = %arn, %alias, "kms key created");
        Ok(arn)
    }

    fn endpoint(&self) -> String {
        self.0.endpoint()
    }

    fn check_login(&self) -> Result<String> {
        let s = &self.0;
        let n = self.call(Target::Any, CKR_DEVICE_ERROR, |c, _| async move {
            let r = c.list_aliases().limit(1).send().await.map_err(fault)?;
            Ok(r.aliases().len())
        })?;
        let _ = n;
        Ok(format!(
            "credentials from {} accepted (ListAliases answered)",
            s.credential_chain()
        ))
    }

    fn configured_keys(&self, found: &[Arc<RemoteKey>]) -> (Vec<String>, Vec<String>) {
        let resolved = self.0.resolved.lock();
        self.0.cfg.keys.iter().cloned().partition(|k| {
            resolved
                .get(k)
                .is_some_and(|n| found.iter().any(|f| f.name == *n))
        })
    }

    fn import_certificate(
        &self,
        key: &RemoteKey,
        der: &[u8],
    ) -> Result<crate::remote::Certificate> {
        let s = &self.0;
        let configured = s.cfg.certificates.keys().find(|n| {
            **n == key.name
                || key.name.ends_with(&format!(":key/{n}"))
                || s.resolved.lock().get(*n) == Some(&key.name)
                || **n == format!("alias/{}", key.label)
                || **n == format!("{}{}", s.cfg.created_alias_prefix, key.label)
        });
        if let Some(n) = configured {
            return Err(Error::with(
                CKR_ACTION_PROHIBITED,
                format!(
                    "key \"{}\" has a certificate configured in certificates (\"{n}\"), which is served instead; remove it there to import one",
                    key.label
                ),
            ));
        }
        s.certs.import(&key.name, &key.label, &key.material, der)
    }

    fn destroy(&self, key: &RemoteKey) -> Result<()> {
        let s = &self.0;
        if !s.cfg.allow_destroy {
            return Err(Error::new(CKR_ACTION_PROHIBITED));
        }
        // ScheduleKeyDeletion is not a cross-account operation: the key id (the ARN's last part) names the key.
        let id = key
            .name
            .rsplit_once(":key/")
            .map_or(key.name.clone(), |(_, id)| id.to_string());
        let days = s.cfg.deletion_window_days;
        // Deletion goes to one region, never re-sent: the key's own (its ARN's), else the first healthy one.
        let region = arn_region(&key.name)
            .and_then(|r| s.regions.iter().position(|x| x.name.as_deref() == Some(r)))
            .unwrap_or_else(|| s.home(s.background()));
        let home = Target::Only(region);
        self.call(home, CKR_ACTION_PROHIBITED, move |c, _| {
            let id = id.clone();
            async move {
                c.schedule_key_deletion()
                    .key_id(id)
                    .pending_window_in_days(days)
                    .customize()
                    .config_override(no_retry())
                    .send()
                    .await
                    .map_err(fault)?;
                Ok(())
            }
        })?;
        // Free the label for a new key (the alias would keep pointing at a key pending deletion): the key's own
        // aliases that gave it its label.
        let prefix = s.cfg.created_alias_prefix.clone();
        let plain = format!("alias/{}", key.label);
        let kid = key
            .name
            .rsplit_once(":key/")
            .map_or(key.name.clone(), |(_, id)| id.to_string());
        let own = self
            .call(home, CKR_DEVICE_ERROR, move |c, _| {
                let kid = kid.clone();
                async move {
                    let r = c.list_aliases().key_id(&kid).send().await.map_err(fault)?;
                    // Only this key's (whatever the server does with the filter).
                    Ok(r.aliases()
                        .iter()
                        .filter(|a| a.target_key_id() == Some(kid.as_str()))
                        .filter_map(|a| a.alias_name().map(str::to_owned))
                        .collect::<Vec<String>>())
                }
            })
            .unwrap_or_default();
        for alias in own
            .into_iter()
            .filter(|a| *a == plain || (!prefix.is_empty() && a.starts_with(&prefix)))
        {
            let _ = self.call(home, CKR_DEVICE_ERROR, move |c, _| {
                let alias = alias.clone();
                async move {
                    c.delete_alias()
                        .alias_name(alias)
                        .customize()
                        .config_override(no_retry())
                        .send()
                        .await
                        .map_err(fault)?;
                    Ok(())
                }
            });
        }
        s.created.lock().retain(|k| *k != key.name);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_is_the_uuid() {
        assert_eq!(
            key_id_bytes("1234abcd-12ab-34cd-56ef-1234567890ab"),
            vec![
                0x12, 0x34, 0xab, 0xcd, 0x12, 0xab, 0x34, 0xcd, 0x56, 0xef, 0x12, 0x34, 0x56, 0x78,
                0x90, 0xab
            ]
        );
        assert_eq!(
            key_id_bytes("mrk-1234abcd12ab34cd56ef1234567890ab").len(),
            16
        );
        assert_eq!(key_id_bytes("something else").len(), 16);
    }

    #[test]
    fn multi_region_arns_are_named_per_region() {
        let arn = "arn:aws:kms:us-east-1:123456789012:key/mrk-1234abcd12ab34cd56ef1234567890ab";
        assert_eq!(
            in_region(arn, Some("us-west-2")),
            "arn:aws:kms:us-west-2:123456789012:key/mrk-1234abcd12ab34cd56ef1234567890ab"
        );
        assert_eq!(in_region(arn, None), arn);
        let single = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        assert_eq!(in_region(single, Some("us-west-2")), single);
        assert_eq!(in_region("alias/x", Some("us-west-2")), "alias/x");
        assert_eq!(arn_region(arn), Some("us-east-1"));
        assert!(multi_region_key("mrk-1234"));
        assert!(!multi_region_key("alias/mrk"));
        assert_eq!(
            health(&Fault::Service(
                "KMSInternalException".into(),
                String::new(),
                500
            )),
            Health::Down
        );
        assert_eq!(
            health(&Fault::Service(
                "ThrottlingException".into(),
                String::new(),
                400
            )),
            Health::Busy
        );
        assert_eq!(
            health(&Fault::Service(
                "NotFoundException".into(),
                String::new(),
                400
            )),
            Health::Answered
        );
        assert_eq!(health(&Fault::Unreachable("x".into())), Health::Down);
    }

    #[test]
    fn get_public_key_answer_describes_an_enabled_customer_key() {
        use aws_sdk_kms::operation::get_public_key::GetPublicKeyOutput;
        let arn = "arn:aws:kms:us-east-1:123456789012:key/mrk-1234abcd12ab34cd56ef1234567890ab";
        let answer = |key_id: &str| {
            GetPublicKeyOutput::builder()
                .key_id(key_id)
                .public_key(Blob::new(vec![0x30, 0x00]))
                .key_spec(KeySpec::EccNistP256)
                .key_usage(KeyUsageType::SignVerify)
                .signing_algorithms(SigningAlgorithmSpec::EcdsaSha256)
                .build()
        };
        let d = from_public_key(&answer(arn), Some("alias/k".into())).expect("described");
        assert_eq!(d.meta.key_id(), "mrk-1234abcd12ab34cd56ef1234567890ab");
        assert_eq!(d.meta.arn(), Some(arn));
        assert!(d.meta.enabled());
        assert_eq!(d.meta.key_state(), Some(&KeyState::Enabled));
        assert_eq!(d.meta.key_manager(), Some(&KeyManagerType::Customer));
        assert_eq!(d.meta.key_spec(), Some(&KeySpec::EccNistP256));
        assert_eq!(d.meta.key_usage(), Some(&KeyUsageType::SignVerify));
        assert_eq!(
            d.meta.signing_algorithms(),
            &[SigningAlgorithmSpec::EcdsaSha256]
        );
        assert_eq!(d.public_key.as_deref(), Some(&[0x30, 0x00][..]));
        assert_eq!(d.selected_alias.as_deref(), Some("alias/k"));
        // Not an ARN (as moto without the fidelity layer answers): DescribeKey is asked instead.
        assert!(from_public_key(&answer("mrk-1234abcd12ab34cd56ef1234567890ab"), None).is_none());
        // No public key: DescribeKey.
        let none = GetPublicKeyOutput::builder()
            .key_id(arn)
            .key_spec(KeySpec::Rsa2048)
            .build();
        assert!(from_public_key(&none, None).is_none());
        assert_eq!(selected_alias("alias/a"), Some("alias/a".into()));
        assert_eq!(
            selected_alias("arn:aws:kms:us-east-1:123456789012:alias/a"),
            Some("alias/a".into())
        );
        assert_eq!(selected_alias(arn), None);
    }

    #[test]
    fn regions_config_is_checked() {
        let bad = |extra: &str| {
            let t: toml::Table = toml::from_str(&format!(
                "kind = \"aws-kms\"\nkeys = [\"alias/x\"]\n{extra}"
            ))
            .unwrap();
            KmsService::from_config("k", &t, &BuildContext::default())
                .err()
                .map(|e| e.to_string())
        };
        assert!(bad("regions = [\"a\", \"b\"]\nregion = \"a\"")
            .unwrap()
            .contains("regions"));
        assert!(bad("regions = [\"a\", \"a\"]").unwrap().contains("twice"));
        assert!(bad("regions = [\"a\"]\nendpoint = \"http://x\"")
            .unwrap()
            .contains("endpoints"));
        assert!(bad("regions = [\"a\"]\nendpoints = { b = \"http://x\" }")
            .unwrap()
            .contains("endpoints.b"));
        assert!(bad("regions = [\"a\"]\nbreaker_failures = 0").is_some());
        assert!(bad("created_alias_prefix = \"p11bridge/\"")
            .unwrap()
            .contains("created_alias_prefix"));
        assert!(bad("created_alias_prefix = \"alias/a b/\"").is_some());
        assert!(bad("created_alias_prefix = \"\"").is_none());
        assert!(bad("regions = [\"a\", \"b\"]\nendpoints = { a = \"http://x\" }").is_none());
    }

    #[test]
    fn faults_map_to_deliberate_return_values() {
        let f = |c: &str| {
            map_fault(
                "k",
                Fault::Service(c.into(), String::new(), 400),
                CKR_DATA_INVALID,
            )
            .rv()
        };
        assert_eq!(f("AccessDeniedException"), CKR_KEY_FUNCTION_NOT_PERMITTED);
        assert_eq!(
            f("InvalidKeyUsageException"),
            CKR_KEY_FUNCTION_NOT_PERMITTED
        );
        assert_eq!(f("DisabledException"), CKR_KEY_HANDLE_INVALID);
        assert_eq!(f("NotFoundException"), CKR_KEY_HANDLE_INVALID);
        assert_eq!(f("ValidationException"), CKR_DATA_INVALID);
        assert_eq!(f("InvalidCiphertextException"), CKR_ENCRYPTED_DATA_INVALID);
        assert_eq!(f("ThrottlingException"), CKR_DEVICE_ERROR);
        assert_eq!(f("KMSInternalException"), CKR_DEVICE_ERROR);
        assert_eq!(
            map_fault("k", Fault::Unreachable("x".into()), CKR_DATA_INVALID).rv(),
            CKR_DEVICE_ERROR
        );
        // Rejected credentials are called so; credentials that could not be loaded too.
        let e = map_fault(
            "k",
            Fault::Service(
                "UnrecognizedClientException".into(),
                "The security token included in the request is invalid.".into(),
                400,
            ),
            CKR_DATA_INVALID,
        );
        assert_eq!(e.rv(), CKR_DEVICE_ERROR);
        assert!(
            e.to_string().contains(
                "UnrecognizedClientException: The security token included in the request is invalid. (KMS rejected the credentials)"
            ),
            "{e}"
        );
        let e = map_fault(
            "k",
            Fault::Credentials("profile \"x\": no such profile".into()),
            0,
        );
        assert!(
            e.to_string()
                .contains("credentials could not be loaded: profile"),
            "{e}"
        );
        assert_eq!(health(&Fault::Credentials(String::new())), Health::Answered);
    }

    #[test]
    fn config_errors_name_the_key() {
        let t: toml::Table = toml::from_str(
            "kind = \"aws-kms\"\nregion = \"us-east-1\"\nfoo = 1\nkeys = [\"alias/x\"]",
        )
        .unwrap();
        let e = KmsService::from_config("k", &t, &BuildContext::default())
            .err()
            .unwrap();
        assert!(e.to_string().contains("backend.k"), "{e}");
        let t: toml::Table = toml::from_str("kind = \"aws-kms\"").unwrap();
        let e = KmsService::from_config("k", &t, &BuildContext::default())
            .err()
            .unwrap();
        assert!(e.to_string().contains("backend.k.keys"), "{e}");
    }

    /// The production client (HTTPS, rustls on ring) builds and starts a TLS handshake without a panic, with no
    /// process-wide rustls provider installed: a local listener receives a TLS ClientHello, then hangs up.
    #[test]
    fn https_client_handshakes_without_panic() {
        use std::io::Read;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut b = [0u8; 5];
            c.read_exact(&mut b).unwrap();
            b
        });
        let t: toml::Table = toml::from_str(&format!(
            "kind = \"aws-kms\"\nregion = \"us-east-1\"\nkeys = [\"alias/x\"]\nendpoint = \"https://127.0.0.1:{port}\"\ntimeout_ms = 3000\nmax_attempts = 1",
        ))
        .unwrap();
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        let k = Kms::new(KmsService::from_config("k", &t, &BuildContext::default()).unwrap());
        let e = k.random(8).unwrap_err();
        assert_eq!(e.rv(), CKR_DEVICE_ERROR, "{e}");
        let hello = server.join().unwrap();
        assert_eq!(hello[0], 0x16, "a TLS handshake record");
        assert_eq!(hello[1], 0x03, "TLS version major");
        assert!(rustls::crypto::CryptoProvider::get_default().is_none());
    }
}
