//! The keys every remote backend's section shares (`kind = "aws-kms"`, `kind = "vault-transit"`): which keys,
//! deadlines, the key cache, certificates, deletion, circuit breakers, the TLS trust roots. Parsed once here; each backend's own
//! config struct holds the rest and embeds these as `remote`.
//!
//! Not `#[serde(flatten)]`: with `deny_unknown_fields` it would drop the list of accepted keys from the
//! "unknown field" error, which users read and `pkcs11-module/tests/man_config_keys.rs` checks against the
//! manual page. [`parse_section`] splits the section instead and names every accepted key in that error.

use crate::health::Endpoints;
use crate::remote::cert::CertSource;
use crate::remote::proxy::{Proxies, ProxyKey};
use crate::remote::tls::CaBundle;
use crate::{Error, Result};
use cryptoki_sys::CKR_GENERAL_ERROR;
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(serde::Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RemoteSettings {
    /// Which keys: names as the service knows them (KMS: aliases `alias/x`, key ids or ARNs; Vault: transit key
    /// names); or discovery (`discover = true`, with the backend's own filter).
    #[serde(default)]
    pub keys: Vec<String>,
    #[serde(default)]
    pub discover: bool,
    /// Per-call deadline (KMS: retries included) and connect timeout (milliseconds).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// How long key metadata stays fresh (seconds).
    #[serde(default = "default_ttl")]
    pub cache_ttl_s: u64,
    /// Certificates to show for keys (PEM files), by the names `keys` uses; other signing keys get a generated one.
    #[serde(default)]
    pub certificates: BTreeMap<String, PathBuf>,
    /// Where generated certificates are cached (default `$XDG_CACHE_HOME/p11bridge` or `~/.cache/p11bridge`).
    pub cert_cache_dir: Option<PathBuf>,
    /// Keep the keys read from the service in a host-wide cache beside the certificate cache
    /// (`cert_cache_dir/keys/`, fresh for `cache_ttl_s`), so that other processes of the same configuration start
    /// without per-key requests (`remote::hostcache`).
    #[serde(default = "default_key_cache")]
    pub key_cache: bool,
    /// Where certificates imported for keys (`C_CreateObject`, `p11bridge cert import`) are kept (default: the
    /// `imported` directory of the certificate cache).
    pub cert_store_dir: Option<PathBuf>,
    /// Let `C_DestroyObject` delete keys (KMS: schedule their deletion).
    #[serde(default)]
    pub allow_destroy: bool,
    /// Circuit breaker per endpoint (KMS region, Vault address): consecutive failures that open it, how long it
    /// stays open before a probe, and how often the background prober looks (milliseconds).
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    #[serde(default = "default_breaker_cooldown_ms")]
    pub breaker_cooldown_ms: u64,
    #[serde(default = "default_probe_interval_ms")]
    pub probe_interval_ms: u64,
    /// CA certificates (PEM) that the server's TLS certificate must chain to, in place of the system's roots.
    pub ca_cert: Option<PathBuf>,
    /// The HTTP proxy (`http://[user:password@]host:port`; `""` or `"none"`: none, whatever the environment says);
    /// unset: `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` as curl reads them (`remote::proxy`).
    #[serde(default)]
    pub proxy: ProxyKey,
    /// Certificates from Vault PKI for the keys (`pki::PkiConfig`, read and checked by `pki::Pki::from_section`).
    pub pki: Option<toml::Table>,
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
fn default_key_cache() -> bool {
    true
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

impl Default for RemoteSettings {
    /// Every key at its default.
    fn default() -> Self {
        RemoteSettings {
            keys: Vec::new(),
            discover: false,
            timeout_ms: default_timeout_ms(),
            connect_timeout_ms: default_connect_timeout_ms(),
            cache_ttl_s: default_ttl(),
            certificates: BTreeMap::new(),
            cert_cache_dir: None,
            key_cache: default_key_cache(),
            cert_store_dir: None,
            allow_destroy: false,
            breaker_failures: default_breaker_failures(),
            breaker_cooldown_ms: default_breaker_cooldown_ms(),
            probe_interval_ms: default_probe_interval_ms(),
            ca_cert: None,
            proxy: ProxyKey::default(),
            pki: None,
        }
    }
}

impl RemoteSettings {
    /// The per-call deadline.
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// How long key metadata stays fresh.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.cache_ttl_s)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn probe_interval(&self) -> Duration {
        Duration::from_millis(self.probe_interval_ms)
    }

    /// One circuit breaker per endpoint, as configured.
    pub fn endpoints(&self, n: usize) -> Endpoints {
        Endpoints::new(
            n,
            self.breaker_failures,
            Duration::from_millis(self.breaker_cooldown_ms),
        )
    }

    /// The configured, imported, cached and generated certificates of a backend of this kind.
    pub fn cert_source(&self, kind: &'static str) -> CertSource {
        CertSource::new(
            kind,
            self.cert_cache_dir.clone(),
            self.cert_store_dir.clone(),
        )
    }

    /// Every configured certificate file exists.
    pub fn check_certificates(&self, name: &str) -> Result<()> {
        for (k, p) in &self.certificates {
            if !p.exists() {
                return Err(config_error(
                    name,
                    format!("certificates.{k}: {} does not exist", p.display()),
                ));
            }
        }
        Ok(())
    }

    /// The CA bundle of `ca_cert`, else of the environment variable `env` (KMS: `AWS_CA_BUNDLE`) when set and not
    /// empty, read and checked; `None`: the system's roots.
    pub fn ca_bundle(&self, name: &str, env: Option<&str>) -> Result<Option<CaBundle>> {
        let (path, from) = match (&self.ca_cert, env) {
            (Some(p), _) => (p.clone(), String::new()),
            (None, Some(var)) => match std::env::var_os(var).filter(|v| !v.is_empty()) {
                Some(p) => (PathBuf::from(p), format!(" (from {var})")),
                None => return Ok(None),
            },
            (None, None) => return Ok(None),
        };
        CaBundle::load(&path)
            .map(Some)
            .map_err(|e| config_error(name, format!("ca_cert{from}: {e}")))
    }

    /// The proxies of `proxy`, else of the environment, checked; `Err` names the key (`backend.NAME.proxy ...`).
    pub fn proxies(&self, name: &str) -> Result<Proxies> {
        Proxies::resolve(&self.proxy).map_err(|e| config_error(name, e))
    }

    /// The breaker settings are usable.
    pub fn check_breakers(&self, name: &str) -> Result<()> {
        if self.breaker_failures == 0
            || self.breaker_cooldown_ms == 0
            || self.probe_interval_ms == 0
        {
            return Err(config_error(
                name,
                "breaker_failures: breaker_failures, breaker_cooldown_ms and probe_interval_ms must be > 0",
            ));
        }
        Ok(())
    }
}

/// An error about key `KEY` of section `NAME`; `msg` starts with the key (`backend.NAME.KEY: ...`).
pub fn config_error(name: &str, msg: impl std::fmt::Display) -> Error {
    Error::with(CKR_GENERAL_ERROR, format!("backend.{name}.{msg}"))
}

/// A remote backend's config struct: its own keys, and the shared ones parsed into `remote`.
pub trait RemoteConfig: DeserializeOwned {
    fn set_remote(&mut self, remote: RemoteSettings);
}

/// `Err` naming `key` unless `url` is an http(s) URL.
pub fn check_url(name: &str, key: &str, url: &str) -> Result<()> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(config_error(
            name,
            format!("{key}: \"{url}\" is not an http(s) URL"),
        ))
    }
}

/// Reads a remote backend's `[backend.NAME]` section: the shared keys into [`RemoteSettings`], the rest into the
/// backend's own struct (which must `deny_unknown_fields` and skip its `remote` field). Errors name the section
/// and the problem as [`crate::parse_section`] does; an unknown key's error lists every accepted key.
pub fn parse_section<C: RemoteConfig>(name: &str, section: &toml::Table) -> Result<C> {
    let shared = field_names::<RemoteSettings>();
    let own: toml::Table = section
        .clone()
        .into_iter()
        .filter(|(k, _)| !shared.contains(&k.as_str()))
        .collect();
    let remote = shared_of(name, section)?;
    let mut cfg: C = toml::Value::Table(own.clone())
        .try_into()
        .map_err(|e: toml::de::Error| {
            let msg = e.message();
            let unknown = own
                .keys()
                .find(|k| msg.starts_with(&format!("unknown field `{k}`")));
            let msg = match unknown {
                // serde's own wording, with the shared keys among those expected.
                Some(k) => unknown_field(k, field_names::<C>().iter().chain(shared)),
                None => msg.to_string(),
            };
            Error::with(CKR_GENERAL_ERROR, format!("backend.{name}: {msg}"))
        })?;
    cfg.set_remote(remote);
    Ok(cfg)
}

/// The shared keys of a remote backend's section, parsed (the backend's own keys are left to [`parse_section`]).
pub fn shared_of(name: &str, section: &toml::Table) -> Result<RemoteSettings> {
    let shared = field_names::<RemoteSettings>();
    let common: toml::Table = section
        .iter()
        .filter(|(k, _)| shared.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    crate::parse_section(name, &common)
}

/// serde's message for an unknown field (`unknown field `x`, expected one of `a`, `b``).
fn unknown_field<'a>(field: &str, expected: impl Iterator<Item = &'a &'a str>) -> String {
    let expected: Vec<String> = expected.map(|k| format!("`{k}`")).collect();
    match expected.as_slice() {
        [] => format!("unknown field `{field}`, there are no fields"),
        [one] => format!("unknown field `{field}`, expected {one}"),
        [a, b] => format!("unknown field `{field}`, expected {a} or {b}"),
        all => format!(
            "unknown field `{field}`, expected one of {}",
            all.join(", ")
        ),
    }
}

/// The keys a config struct accepts (serde's list of its fields).
fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut names = FieldNames(None);
    let _ = T::deserialize(&mut names);
    names.0.unwrap_or(&[])
}

/// A deserializer that only records the field names a struct asks for.
struct FieldNames(Option<&'static [&'static str]>);

impl<'de> Deserializer<'de> for &mut FieldNames {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> std::result::Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> std::result::Result<V::Value, Self::Error> {
        self.0 = Some(fields);
        Err(de::Error::custom("field names recorded"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Own {
        #[allow(dead_code)]
        kind: String,
        #[serde(default)]
        region: Option<String>,
        #[serde(skip)]
        remote: RemoteSettings,
    }

    impl RemoteConfig for Own {
        fn set_remote(&mut self, remote: RemoteSettings) {
            self.remote = remote;
        }
    }

    #[test]
    fn shared_keys_are_parsed_and_unknown_keys_name_every_accepted_key() {
        let t: toml::Table =
            toml::from_str("kind = \"x\"\nregion = \"r\"\ntimeout_ms = 5").unwrap();
        let c: Own = parse_section("b", &t).unwrap();
        assert_eq!((c.region.as_deref(), c.remote.timeout_ms), (Some("r"), 5));
        assert_eq!(c.remote.cache_ttl_s, 300);
        let t: toml::Table = toml::from_str("kind = \"x\"\nadress = 1\ntimeout_ms = 5").unwrap();
        let e = parse_section::<Own>("b", &t).unwrap_err();
        assert_eq!(
            e.cause(),
            Some(
                "backend.b: unknown field `adress`, expected one of `kind`, `region`, `keys`, `discover`, \
                 `timeout_ms`, `connect_timeout_ms`, `cache_ttl_s`, `certificates`, `cert_cache_dir`, \
                 `key_cache`, `cert_store_dir`, `allow_destroy`, `breaker_failures`, `breaker_cooldown_ms`, \
                 `probe_interval_ms`, `ca_cert`, `proxy`, `pki`"
            )
        );
        let t: toml::Table = toml::from_str("kind = \"x\"\ntimeout_ms = \"5\"").unwrap();
        let e = parse_section::<Own>("b", &t).unwrap_err();
        assert_eq!(
            e.cause(),
            Some("backend.b: invalid type: string \"5\", expected u64")
        );
    }

    #[test]
    fn field_names_are_serdes() {
        let names = field_names::<RemoteSettings>();
        assert!(names.contains(&"timeout_ms") && names.contains(&"probe_interval_ms"));
        assert_eq!(names.len(), 16);
    }
}
