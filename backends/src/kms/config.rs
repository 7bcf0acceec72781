//! The `[backend.NAME] kind = "aws-kms"` section: its keys, their defaults, and the checks made when the backend
//! is built.

use super::*;
use crate::remote::settings::{self, config_error, RemoteSettings};

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct Config {
    #[allow(dead_code)]
    pub(super) kind: String,
    /// AWS region; else the standard chain (`AWS_REGION`, profile).
    pub(super) region: Option<String>,
    /// Several regions (multi-Region keys: the same key id in each), in order of preference. Excludes `region`.
    #[serde(default)]
    pub(super) regions: Vec<String>,
    /// Endpoint URL (VPC endpoint, FIPS endpoint, emulator).
    pub(super) endpoint: Option<String>,
    /// With `regions`: an endpoint URL per region (regions not named use the standard endpoint).
    #[serde(default)]
    pub(super) endpoints: BTreeMap<String, String>,
    /// Shared config/credentials profile.
    pub(super) profile: Option<String>,
    /// A role to assume (STS `AssumeRole`) with the chain's credentials.
    pub(super) role_arn: Option<String>,
    /// With `discover = true` (`ListKeys`): only the keys that carry these tags.
    #[serde(default)]
    pub(super) tags: BTreeMap<String, String>,
    /// Attempts per idempotent call (1 = no retry).
    #[serde(default = "default_max_attempts")]
    pub(super) max_attempts: u32,
    /// Keys created through the bridge get the alias `created_alias_prefix` + `CKA_LABEL` (and the tag
    /// `p11bridge-created`); every alias under this prefix is on the token, found again by every process from the
    /// `ListAliases` answer each enumeration reads anyway. `""`: the alias is `alias/` + label and such keys are
    /// found again only when listed in `keys` or discovered.
    #[serde(default = "default_created_alias_prefix")]
    pub(super) created_alias_prefix: String,
    #[serde(default = "default_window")]
    pub(super) deletion_window_days: i32,
    /// `C_GenerateRandom` source on a slot where this backend serves randomness: "os" or "kms".
    #[serde(default = "default_random")]
    pub(super) random: String,
    /// The keys every remote backend shares (parsed by `remote::settings::parse_section`).
    #[serde(skip)]
    pub(super) remote: RemoteSettings,
}

pub(super) fn default_max_attempts() -> u32 {
    4
}
pub(super) fn default_window() -> i32 {
    7
}
pub(super) fn default_created_alias_prefix() -> String {
    "alias/p11bridge/".into()
}
pub(super) fn default_random() -> String {
    "os".into()
}

impl settings::RemoteConfig for Config {
    fn set_remote(&mut self, remote: RemoteSettings) {
        self.remote = remote;
    }
}

impl KmsService {
    pub fn from_config(name: &str, section: &toml::Table, _ctx: &BuildContext) -> Result<Self> {
        let cfg: Config = settings::parse_section(name, section)?;
        if cfg.remote.keys.is_empty() && !cfg.remote.discover {
            return Err(config_error(
                name,
                "keys: list aliases, key ids or ARNs, or set discover = true",
            ));
        }
        if !cfg.tags.is_empty() && !cfg.remote.discover {
            return Err(config_error(
                name,
                "tags: a tag filter needs discover = true",
            ));
        }
        if let Some(e) = &cfg.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(config_error(
                    name,
                    format!("endpoint: \"{e}\" is not an http(s) URL"),
                ));
            }
        }
        if cfg.region.as_deref() == Some("") {
            return Err(config_error(name, "region: empty"));
        }
        if !cfg.regions.is_empty() {
            if cfg.region.is_some() {
                return Err(config_error(
                    name,
                    "regions: give either region or regions, not both",
                ));
            }
            if cfg.endpoint.is_some() {
                return Err(config_error(
                    name,
                    "endpoint: with regions, give endpoints = { \"REGION\" = \"URL\", ... }",
                ));
            }
            for (i, r) in cfg.regions.iter().enumerate() {
                if r.is_empty() || cfg.regions[..i].contains(r) {
                    return Err(config_error(
                        name,
                        format!("regions: \"{r}\" is empty or listed twice"),
                    ));
                }
            }
        }
        for (r, e) in &cfg.endpoints {
            if !cfg.regions.contains(r) {
                return Err(config_error(
                    name,
                    format!("endpoints.{r}: not one of regions"),
                ));
            }
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(config_error(
                    name,
                    format!("endpoints.{r}: \"{e}\" is not an http(s) URL"),
                ));
            }
        }
        cfg.remote.check_breakers(name)?;
        if cfg.remote.timeout_ms == 0 || cfg.remote.connect_timeout_ms == 0 {
            return Err(config_error(name, "timeout_ms: must be > 0"));
        }
        if cfg.max_attempts == 0 || cfg.max_attempts > 10 {
            return Err(config_error(name, "max_attempts: 1 to 10"));
        }
        if !(7..=30).contains(&cfg.deletion_window_days) {
            return Err(config_error(
                name,
                "deletion_window_days: KMS allows 7 to 30 days",
            ));
        }
        if cfg.random != "os" && cfg.random != "kms" {
            return Err(config_error(name, "random: \"os\" or \"kms\""));
        }
        cfg.remote.check_certificates(name)?;
        // `AWS_CA_BUNDLE` as the AWS CLI reads it: the trust roots when `ca_cert` is not set.
        let ca = cfg.remote.ca_bundle(name, Some("AWS_CA_BUNDLE"))?;
        let proxies = cfg.remote.proxies(name)?;
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
            return Err(config_error(
                name,
                format!(
                    "created_alias_prefix: \"{p}\" must start with alias/ (not alias/aws/) and hold [A-Za-z0-9/_-] only, or be \"\""
                ),
            ));
        }
        let certs = cfg.remote.cert_source("aws-kms");
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
        let health = cfg.remote.endpoints(regions.len());
        Ok(KmsService {
            name: name.to_string(),
            cfg,
            regions,
            health,
            ca,
            proxies,
            created: parking_lot::Mutex::new(Vec::new()),
            certs,
            resolved: parking_lot::Mutex::new(HashMap::new()),
            lean: Default::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
