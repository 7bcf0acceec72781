//! The `[backend.NAME] kind = "vault-transit"` section: its keys, their defaults, the checks made when the backend
//! is built, and the TLS client its settings describe.

use super::*;
use crate::remote::settings::{self, config_error, RemoteSettings};
use crate::remote::tls::{self, CaBundle};

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct Config {
    #[allow(dead_code)]
    pub(super) kind: String,
    /// One address, or several (cluster nodes, tried in order; the last one that answered is tried first).
    pub(super) address: Option<String>,
    #[serde(default)]
    pub(super) addresses: Vec<String>,
    pub(super) namespace: Option<String>,
    #[serde(default = "default_mount")]
    pub(super) mount: String,
    /// TLS client certificate and key (PEM). (`ca_cert` is a shared key: `RemoteSettings`.)
    pub(super) client_cert: Option<PathBuf>,
    pub(super) client_key: Option<PathBuf>,
    /// Authentication: a token; or AppRole (`role_id` + `secret_id`); or Kubernetes (`kubernetes_role`); or AWS IAM
    /// (`aws_role`).
    pub(super) token: Option<SecretRef>,
    pub(super) role_id: Option<String>,
    pub(super) secret_id: Option<SecretRef>,
    #[serde(default = "default_approle_mount")]
    pub(super) approle_mount: String,
    pub(super) kubernetes_role: Option<String>,
    #[serde(default = "default_jwt_path")]
    pub(super) kubernetes_jwt_path: PathBuf,
    #[serde(default = "default_kubernetes_mount")]
    pub(super) kubernetes_mount: String,
    /// AWS IAM login (Vault's `aws` auth method, IAM type) as this Vault role; `""`: no role sent (Vault takes the
    /// IAM principal's friendly name). Credentials: the AWS SDK's default chain.
    pub(super) aws_role: Option<String>,
    #[serde(default = "default_aws_mount")]
    pub(super) aws_mount: String,
    /// The `X-Vault-AWS-IAM-Server-ID` header, signed with the request (the mount's `iam_server_id_header_value`).
    pub(super) aws_header_value: Option<String>,
    /// The STS region the request is signed for, and the URL it names (default: the region's STS endpoint).
    #[serde(default = "default_aws_sts_region")]
    pub(super) aws_sts_region: String,
    pub(super) aws_sts_endpoint: Option<String>,
    /// With `discover = true` (`LIST <mount>/keys`): only the keys whose names start with this prefix.
    #[serde(default)]
    pub(super) prefix: String,
    /// Keys created through the bridge are named `created_prefix` + `CKA_LABEL` and found again by every process
    /// (one `LIST <mount>/keys` per enumeration, filtered by this prefix); `""`: named as the label, found again
    /// only when listed in `keys` or discovered.
    #[serde(default = "default_created_prefix")]
    pub(super) created_prefix: String,
    /// Coalesce concurrent signatures with the same key and parameters into one `batch_input` request (a lone
    /// signature is sent at once, as a plain request), at most `batch_max` items per request.
    #[serde(default = "default_batch")]
    pub(super) batch: bool,
    #[serde(default = "default_batch_max")]
    pub(super) batch_max: usize,
    /// How long, in µs, the sender of a batch may wait for the callers of the previous batch to come back (only
    /// while fewer of them are queued; a lone caller never waits). 0: never.
    #[serde(default = "default_batch_linger_us")]
    pub(super) batch_linger_us: u64,
    /// The keys every remote backend shares (parsed by `remote::settings::parse_section`).
    #[serde(skip)]
    pub(super) remote: RemoteSettings,
}

pub(super) fn default_batch() -> bool {
    true
}

pub(super) fn default_batch_linger_us() -> u64 {
    200
}

pub(super) fn default_batch_max() -> usize {
    32
}

pub(super) fn default_created_prefix() -> String {
    "p11bridge-".into()
}

pub(super) fn default_mount() -> String {
    "transit".into()
}

pub(super) fn default_approle_mount() -> String {
    "approle".into()
}

pub(super) fn default_kubernetes_mount() -> String {
    "kubernetes".into()
}

pub(super) fn default_aws_mount() -> String {
    "aws".into()
}

pub(super) fn default_aws_sts_region() -> String {
    "us-east-1".into()
}

pub(super) fn default_jwt_path() -> PathBuf {
    "/var/run/secrets/kubernetes.io/serviceaccount/token".into()
}

impl settings::RemoteConfig for Config {
    fn set_remote(&mut self, remote: RemoteSettings) {
        self.remote = remote;
    }
}

impl VaultService {
    pub fn from_config(name: &str, section: &toml::Table, _ctx: &BuildContext) -> Result<Self> {
        let cfg: Config = settings::parse_section(name, section)?;
        let mut addresses = cfg.addresses.clone();
        if let Some(a) = &cfg.address {
            addresses.insert(0, a.clone());
        }
        if addresses.is_empty() {
            return Err(config_error(
                name,
                "address: missing (address = \"https://vault:8200\" or addresses = [...])",
            ));
        }
        for a in &addresses {
            if !(a.starts_with("http://") || a.starts_with("https://")) {
                return Err(config_error(
                    name,
                    format!("address: \"{a}\" is not an http(s) URL"),
                ));
            }
        }
        let methods = [
            cfg.token.is_some(),
            cfg.role_id.is_some(),
            cfg.kubernetes_role.is_some(),
            cfg.aws_role.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if methods != 1 {
            return Err(config_error(
                name,
                "token: give exactly one of token, role_id (+ secret_id), kubernetes_role or aws_role",
            ));
        }
        if cfg.aws_role.is_none()
            && (cfg.aws_header_value.is_some() || cfg.aws_sts_endpoint.is_some())
        {
            return Err(config_error(
                name,
                "aws_role: aws_header_value and aws_sts_endpoint are for the AWS IAM login (aws_role = \"...\")",
            ));
        }
        if cfg.aws_sts_region.is_empty() {
            return Err(config_error(name, "aws_sts_region: empty"));
        }
        if let Some(e) = &cfg.aws_sts_endpoint {
            settings::check_url(name, "aws_sts_endpoint", e)?;
        }
        if cfg.role_id.is_some() && cfg.secret_id.is_none() {
            return Err(config_error(
                name,
                "secret_id: missing (AppRole needs role_id and secret_id)",
            ));
        }
        if cfg.remote.keys.is_empty() && !cfg.remote.discover {
            return Err(config_error(
                name,
                "keys: list key names or set discover = true",
            ));
        }
        if cfg.client_cert.is_some() != cfg.client_key.is_some() {
            return Err(config_error(
                name,
                "client_cert: client_cert and client_key go together",
            ));
        }
        cfg.remote.check_certificates(name)?;
        cfg.remote.check_breakers(name)?;
        let ca = cfg.remote.ca_bundle(name, None)?;
        let proxies = cfg.remote.proxies(name)?;
        if !cfg
            .created_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(config_error(
                name,
                format!(
                    "created_prefix: \"{}\" may hold [A-Za-z0-9._-] only (it starts transit key names)",
                    cfg.created_prefix
                ),
            ));
        }
        if cfg.batch_max == 0 || cfg.batch_max > 1000 {
            return Err(config_error(name, "batch_max: between 1 and 1000"));
        }
        if cfg.batch_linger_us > 10_000 {
            return Err(config_error(name, "batch_linger_us: between 0 and 10000"));
        }
        let (cfg_batch_max, cfg_batch_linger_us) = (cfg.batch_max, cfg.batch_linger_us);
        let certs = cfg.remote.cert_source("vault-transit");
        let health = cfg.remote.endpoints(addresses.len());
        Ok(VaultService {
            name: name.to_string(),
            cfg,
            addresses,
            health,
            ca,
            proxies,
            http: OnceLock::new(),
            lean: OnceLock::new(),
            token: RwLock::new(None),
            login: tokio::sync::Mutex::new(()),
            certs,
            created: parking_lot::Mutex::new(Vec::new()),
            signer: GroupCommit::new(crate::batch::Policy {
                max: cfg_batch_max,
                linger: Duration::from_micros(cfg_batch_linger_us),
            }),
        })
    }
}

/// The backend's HTTP client: rustls on the ring provider (nothing process-wide), trusting `ca` (else the system's
/// roots), with the client certificate when configured.
pub(super) fn build_http(
    cfg: &Config,
    ca: Option<&CaBundle>,
    proxies: &crate::remote::proxy::Proxies,
) -> std::result::Result<reqwest::Client, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = ca.map_or_else(tls::system_roots, CaBundle::root_store);
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let tls = match (&cfg.client_cert, &cfg.client_key) {
        (Some(cp), Some(kp)) => {
            let cpem =
                std::fs::read(cp).map_err(|e| format!("client_cert {}: {e}", cp.display()))?;
            let certs: Vec<_> = rustls_pemfile::certs(&mut &cpem[..])
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| format!("client_cert {}: not PEM: {e}", cp.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "client_cert {}: no certificate in it",
                    cp.display()
                ));
            }
            let kpem = Zeroizing::new(
                std::fs::read(kp).map_err(|e| format!("client_key {}: {e}", kp.display()))?,
            );
            let key = rustls_pemfile::private_key(&mut &kpem[..])
                .map_err(|e| format!("client_key {}: {e}", kp.display()))?
                .ok_or_else(|| format!("client_key {}: no private key in it", kp.display()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("client_cert/client_key: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    // The proxies are given explicitly (reqwest would read the environment itself otherwise).
    proxies
        .apply_reqwest(reqwest::Client::builder())?
        .tls_backend_preconfigured(tls)
        .connect_timeout(cfg.remote.connect_timeout())
        .timeout(cfg.remote.deadline())
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
        .map_err(|e| e.to_string())
}
