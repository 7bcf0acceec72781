//! The host-wide key cache (`key_cache`): the keys one process read from a remote service, kept on disk beside the
//! certificate cache (`cert_cache_dir/keys/`) for `cache_ttl_s`, so that the next process on the host — or a
//! hundred starting at once — makes no per-key request while it is fresh.
//!
//! - **Public metadata only**: names, labels, ids, public keys (SubjectPublicKeyInfo), usages, mechanisms, key
//!   versions and certificates; never a token, a PIN or private material.
//! - **Keyed by configuration**: the file name is a hash of the bridge version, the backend kind, the whole
//!   `[backend.NAME]` section (endpoint, region, mount, `keys`, `tags`, `discover`, prefixes, certificates, ...),
//!   what the section's `env:`/`file:` references resolve to (hashed: a different token is a different cache) and
//!   the environment variables that choose the AWS identity and region. Two configurations never share a file.
//! - **Never trusted blindly**: a file that is not the user's, writable by others, of another format, of another
//!   configuration, written in the future, older than the TTL, or whose certificate does not carry its key's public
//!   key is ignored (and replaced by the next fetch). Nothing in it can crash the reader.
//! - **Many processes at once**: files are replaced atomically (`cert::write_atomic`); a process that must fetch
//!   takes an `flock` on the file's lock file first, so that of a fleet starting together one fetches and the
//!   others wait (at most the fetch's deadline, then they fetch themselves) and read its result.

use super::{cert, Certificate, Fetched, KeyMaterial, Listed, RemoteKey, Usage};
use crate::remote::settings::RemoteSettings;
use base64::Engine;
use cryptoki_sys::CK_KEY_TYPE;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const B64: base64::engine::general_purpose::GeneralPurpose =
    base64::engine::general_purpose::STANDARD;

/// The file format; a file of another format is ignored.
const FORMAT: u32 = 1;

/// Environment variables that choose the AWS identity, region or endpoint when the section does not (their values
/// are identifiers, not secrets; hashed all the same).
const IDENTITY_ENV: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ROLE_ARN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_KMS",
    "VAULT_NAMESPACE",
];

/// One backend configuration's cache file.
#[derive(Debug, Clone)]
pub struct HostCache {
    /// The backend's name (for what is said to the person).
    backend: String,
    /// `<dir>/<identity>.json`; the lock file is `<dir>/<identity>.lock`.
    path: PathBuf,
    lock: PathBuf,
    identity: String,
    ttl: Duration,
    /// How long a process waits for another one's fetch.
    wait: Duration,
}

#[derive(Serialize, Deserialize)]
struct File {
    format: u32,
    identity: String,
    /// Seconds since the epoch.
    written: u64,
    /// Keys read.
    keys: Vec<CachedKey>,
    /// Keys listed, not read yet.
    #[serde(default)]
    listed: Vec<CachedListed>,
    /// The notices the fetch gave (keys named in `keys` that are missing, ...): every process reading the file
    /// gives them too.
    #[serde(default)]
    notices: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct CachedListed {
    name: String,
    label: String,
    id: String,
    #[serde(default)]
    aliases: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct CachedKey {
    name: String,
    label: String,
    id: String,
    /// Base64 SubjectPublicKeyInfo of a key pair.
    spki: Option<String>,
    /// A secret key: its `CKK_*` and size in bits.
    secret: Option<(CK_KEY_TYPE, usize)>,
    sign: bool,
    decrypt: bool,
    encrypt: bool,
    wrap: bool,
    version: Option<u64>,
    mechanisms: Vec<cryptoki_sys::CK_MECHANISM_TYPE>,
    /// Base64 DER certificate.
    cert: Option<String>,
    destroyable: bool,
}

impl CachedKey {
    fn of(k: &RemoteKey) -> Option<CachedKey> {
        let (spki, secret) = match &k.material {
            KeyMaterial::Secret { key_type, bits } => (None, Some((*key_type, *bits))),
            m => (Some(B64.encode(m.spki()?)), None),
        };
        Some(CachedKey {
            name: k.name.clone(),
            label: k.label.clone(),
            id: B64.encode(&k.id),
            spki,
            secret,
            sign: k.usage.sign,
            decrypt: k.usage.decrypt,
            encrypt: k.usage.encrypt,
            wrap: k.usage.wrap,
            version: k.version,
            mechanisms: k.mechanisms.clone(),
            cert: k.cert.as_ref().map(|c| B64.encode(&c.der)),
            destroyable: k.destroyable,
        })
    }

    /// The key, if everything in the entry is well formed and consistent (a certificate carries the key).
    fn key(self) -> Option<RemoteKey> {
        let material = match (&self.spki, self.secret) {
            (Some(s), None) => KeyMaterial::from_spki(&B64.decode(s).ok()?)?,
            (None, Some((key_type, bits))) => KeyMaterial::Secret { key_type, bits },
            _ => return None,
        };
        let cert: Option<Certificate> = match &self.cert {
            Some(c) => {
                let der = B64.decode(c).ok()?;
                if !cert::carries(&der, &material) {
                    return None;
                }
                Some(cert::parse(&der)?)
            }
            None => None,
        };
        if self.name.is_empty() {
            return None;
        }
        Some(RemoteKey {
            name: self.name,
            label: self.label,
            id: B64.decode(&self.id).ok()?,
            material,
            usage: Usage {
                sign: self.sign,
                decrypt: self.decrypt,
                encrypt: self.encrypt,
                wrap: self.wrap,
            },
            version: self.version,
            mechanisms: self.mechanisms,
            cert,
            destroyable: self.destroyable,
        })
    }
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Holds the lock file's `flock` until dropped (closing the file releases it; so does the process's end).
pub struct Lock(#[allow(dead_code)] std::fs::File);

impl HostCache {
    /// The cache of the backend built from `section` (kind `kind`), or `None` when `key_cache = false` or there is
    /// no cache directory (no `cert_cache_dir`, `HOME` or `XDG_CACHE_HOME`). `wait`: how long a process waits for
    /// another one's fetch (the fetch's own deadline).
    pub fn new(
        name: &str,
        kind: &str,
        section: &toml::Table,
        settings: &RemoteSettings,
        wait: Duration,
    ) -> Option<HostCache> {
        if !settings.key_cache || settings.cache_ttl_s == 0 {
            return None;
        }
        let dir = cert::cache_dir(settings.cert_cache_dir.clone())?.join("keys");
        let identity = identity(name, kind, section);
        Some(HostCache {
            backend: name.to_string(),
            path: dir.join(format!("{identity}.json")),
            lock: dir.join(format!("{identity}.lock")),
            identity,
            ttl: settings.ttl(),
            wait,
        })
    }

    /// The cache of the remote backend of section `name` (its shared keys: `key_cache`, `cert_cache_dir`,
    /// `cache_ttl_s`; a process waits for another's fetch at most five deadlines, `timeout_ms`).
    pub fn of_section(
        name: &str,
        kind: &str,
        section: &toml::Table,
    ) -> crate::Result<Option<HostCache>> {
        let settings = crate::remote::settings::shared_of(name, section)?;
        Ok(Self::new(
            name,
            kind,
            section,
            &settings,
            settings.deadline() * 5,
        ))
    }

    /// The file (for messages and tests).
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The keys in the file (read and listed) and how old they are, if the file is there, fresh, this
    /// configuration's and sound.
    /// A file that is there but cannot be used (not the user's own, unreadable, unsound) is said once per process
    /// and cause: every process then reads the keys from the service. An absent, stale or other configuration's
    /// file is the normal course and says nothing.
    pub fn load(&self) -> Option<Fetched> {
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => return self.unusable(&e.to_string()),
        };
        // The user's own file, not writable by anyone else.
        // SAFETY: geteuid has no preconditions and cannot fail.
        if meta.uid() != unsafe { libc::geteuid() } || meta.mode() & 0o022 != 0 {
            return self.unusable("not the user's own, or writable by others");
        }
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) => return self.unusable(&e.to_string()),
        };
        let f: File = match serde_json::from_slice(&bytes) {
            Ok(f) => f,
            Err(e) => return self.unusable(&format!("not a cache file ({e})")),
        };
        let now = now_s();
        if f.format != FORMAT || f.identity != self.identity || f.written > now + 60 {
            return None;
        }
        let age = Duration::from_secs(now.saturating_sub(f.written));
        if age >= self.ttl {
            return None;
        }
        let n = f.keys.len() + f.listed.len();
        let keys: Vec<RemoteKey> = f.keys.into_iter().filter_map(CachedKey::key).collect();
        let pending: Vec<Listed> = f
            .listed
            .into_iter()
            .filter_map(|l| {
                Some(Listed {
                    name: l.name,
                    label: l.label,
                    id: B64.decode(&l.id).ok()?,
                    aliases: l.aliases,
                })
            })
            .filter(|l| !l.name.is_empty())
            .collect();
        if keys.len() + pending.len() != n {
            return self.unusable("entries that do not hold together (a certificate without its key's public key, ...)");
        }
        Some(Fetched {
            keys,
            pending,
            age,
            notices: f.notices,
        })
    }

    /// Says once why the file is not used; `None`.
    fn unusable(&self, why: &str) -> Option<Fetched> {
        crate::diag::notice(&format!(
            "backend \"{}\": host key cache {} ignored: {why}; the keys are read from the service (and the file replaced)",
            self.backend,
            self.path.display()
        ));
        None
    }

    /// Replaces the file with `keys` read and `pending` listed, `age` old (atomically; files 0600, the directory
    /// 0700). A failure is said once (the keys are served all the same; the next process fetches them itself).
    pub fn store(&self, f: &Fetched) {
        let (keys, pending, age) = (&f.keys, &f.pending, f.age);
        let file = File {
            format: FORMAT,
            identity: self.identity.clone(),
            written: now_s().saturating_sub(age.as_secs()),
            keys: keys.iter().filter_map(CachedKey::of).collect(),
            listed: pending
                .iter()
                .map(|l| CachedListed {
                    name: l.name.clone(),
                    label: l.label.clone(),
                    id: B64.encode(&l.id),
                    aliases: l.aliases.clone(),
                })
                .collect(),
            notices: f.notices.clone(),
        };
        let r = serde_json::to_vec(&file)
            .map_err(std::io::Error::other)
            .and_then(|b| cert::write_atomic(&self.path, b));
        if let Err(e) = r {
            crate::diag::notice(&format!(
                "backend \"{}\": cannot write the host key cache {}: {e}; every process will list the keys itself",
                self.backend,
                self.path.display()
            ));
        }
    }

    /// Removes the file (a certificate was imported: every process reads the keys again).
    pub fn invalidate(&self) {
        let _ = std::fs::remove_file(&self.path);
    }

    /// Takes the lock that makes one process of many fetch, waiting at most `wait`. `None`: not taken (timed out,
    /// or no lock file could be made: said once); the caller fetches all the same.
    pub fn lock(&self) -> Option<Lock> {
        use std::os::unix::io::AsRawFd;
        let unlocked = |why: String| {
            crate::diag::notice(&format!(
                "backend \"{}\": host key cache lock {}: {why}; this process reads the keys itself",
                self.backend,
                self.lock.display()
            ));
            None
        };
        if let Some(d) = self.lock.parent() {
            if let Err(e) = cert::create_private_dir(d) {
                return unlocked(e.to_string());
            }
        }
        let f = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&self.lock)
        {
            Ok(f) => f,
            Err(e) => return unlocked(e.to_string()),
        };
        let start = std::time::Instant::now();
        loop {
            // SAFETY: flock on a file descriptor this function owns; non-blocking.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Some(Lock(f));
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK)
                && err.raw_os_error() != Some(libc::EINTR)
            {
                return unlocked(err.to_string());
            }
            if start.elapsed() >= self.wait {
                return unlocked(format!(
                    "another process has held it for {} ms (its fetch is slow or stuck)",
                    self.wait.as_millis()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The hash naming one configuration's cache file (see the module's documentation).
fn identity(name: &str, kind: &str, section: &toml::Table) -> String {
    let mut h = sha2::Sha256::new();
    h.update(b"p11bridge host key cache\0");
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update([0]);
    h.update(name.as_bytes());
    h.update([0]);
    h.update(kind.as_bytes());
    h.update([0]);
    h.update(toml::to_string(section).unwrap_or_default().as_bytes());
    // What `env:` and `file:` references resolve to (a token, a secret id), hashed: another credential, another
    // cache. Configured certificate files: their contents.
    let mut refs: Vec<(&String, &toml::Value)> = section.iter().collect();
    if let Some(toml::Value::Table(c)) = section.get("certificates") {
        refs.extend(c.iter());
    }
    for (k, v) in refs {
        let Some(s) = v.as_str() else { continue };
        let value = if let Some(var) = s.strip_prefix("env:") {
            std::env::var_os(var).map(|v| v.into_encoded_bytes())
        } else if let Some(p) = s.strip_prefix("file:") {
            std::fs::read(p).ok()
        } else if section
            .get("certificates")
            .and_then(|c| c.as_table())
            .is_some_and(|c| c.contains_key(k))
        {
            std::fs::read(s).ok()
        } else {
            continue;
        };
        h.update(b"\0ref\0");
        h.update(k.as_bytes());
        h.update([0]);
        h.update(sha2::Sha256::digest(value.unwrap_or_default()));
    }
    for var in IDENTITY_ENV {
        h.update(b"\0env\0");
        h.update(var.as_bytes());
        h.update([0]);
        if let Some(v) = std::env::var_os(var) {
            h.update(v.into_encoded_bytes());
        }
    }
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::Curve;

    fn settings(dir: &std::path::Path, ttl: u64) -> RemoteSettings {
        RemoteSettings {
            cert_cache_dir: Some(dir.to_path_buf()),
            cache_ttl_s: ttl,
            ..Default::default()
        }
    }

    fn section(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    fn key(name: &str) -> RemoteKey {
        let sk = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let point = sk
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        let material = KeyMaterial::Ec {
            curve: Curve::P256,
            point,
        };
        RemoteKey {
            name: name.into(),
            label: name.into(),
            id: vec![1, 2, 3],
            cert: cert::locally_issued(name, &material),
            material,
            usage: Usage {
                sign: true,
                ..Default::default()
            },
            version: Some(3),
            mechanisms: vec![cryptoki_sys::CKM_ECDSA],
            destroyable: false,
        }
    }

    fn fetched(keys: Vec<RemoteKey>, pending: Vec<Listed>) -> Fetched {
        Fetched {
            keys,
            pending,
            age: Duration::ZERO,
            notices: vec!["a notice".into()],
        }
    }

    fn listed(name: &str) -> Listed {
        Listed {
            name: name.into(),
            label: name.into(),
            id: vec![9],
            aliases: vec!["alias/x".into()],
        }
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("p11b-hostcache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn round_trip_and_configurations_kept_apart() {
        let d = tmp("rt");
        let a = HostCache::new(
            "b",
            "vault-transit",
            &section("address = \"http://a\"\nkeys = [\"k\"]"),
            &settings(&d, 300),
            Duration::from_secs(1),
        )
        .unwrap();
        let secret = RemoteKey {
            material: KeyMaterial::Secret {
                key_type: cryptoki_sys::CKK_AES,
                bits: 256,
            },
            cert: None,
            ..key("s")
        };
        let k = key("k");
        a.store(&fetched(vec![k.clone(), secret], vec![listed("l")]));
        let Fetched {
            keys,
            pending,
            age,
            notices,
        } = a.load().unwrap();
        assert_eq!(notices, vec!["a notice".to_string()]);
        assert!(age < Duration::from_secs(5));
        assert_eq!(pending, vec![listed("l")]);
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].name, "k");
        assert_eq!(keys[0].version, Some(3));
        assert_eq!(keys[0].material.spki(), k.material.spki());
        assert_eq!(
            keys[0].cert.as_ref().map(|c| &c.der),
            k.cert.as_ref().map(|c| &c.der)
        );
        assert!(keys[1].material.is_secret());
        let mode = std::fs::metadata(a.path()).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Another filter, another file.
        let b = HostCache::new(
            "b",
            "vault-transit",
            &section("address = \"http://a\"\nkeys = [\"k2\"]"),
            &settings(&d, 300),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_ne!(a.path(), b.path());
        assert!(b.load().is_none());
        // A file copied over from another configuration is not read.
        std::fs::copy(a.path(), b.path()).unwrap();
        assert!(b.load().is_none());
        // Off.
        let mut off = settings(&d, 300);
        off.key_cache = false;
        assert!(HostCache::new("b", "x", &section(""), &off, Duration::ZERO).is_none());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn corrupt_stale_or_foreign_files_are_ignored() {
        let d = tmp("bad");
        let c = HostCache::new(
            "b",
            "aws-kms",
            &section("region = \"r\""),
            &settings(&d, 300),
            Duration::from_secs(1),
        )
        .unwrap();
        c.store(&fetched(vec![key("k")], vec![]));
        let good = std::fs::read(c.path()).unwrap();
        for bad in [
            b"".to_vec(),
            b"{".to_vec(),
            b"\x00\xff garbage".to_vec(),
            br#"{"format":1,"identity":"x","written":0,"keys":[]}"#.to_vec(),
            good[..good.len() / 2].to_vec(),
        ] {
            std::fs::write(c.path(), &bad).unwrap();
            assert!(c.load().is_none());
        }
        // A certificate that is not the key's: the file is not trusted.
        let mut f: File = serde_json::from_slice(&good).unwrap();
        f.keys[0].cert = CachedKey::of(&key("other")).and_then(|k| k.cert).map(|_| {
            let m = KeyMaterial::Ed25519 { point: [5; 32] };
            B64.encode(cert::locally_issued("x", &m).unwrap().der)
        });
        cert::write_atomic(c.path(), serde_json::to_vec(&f).unwrap()).unwrap();
        assert!(c.load().is_none());
        // Stale.
        let mut f: File = serde_json::from_slice(&good).unwrap();
        f.written -= 301;
        cert::write_atomic(c.path(), serde_json::to_vec(&f).unwrap()).unwrap();
        assert!(c.load().is_none());
        // Writable by others.
        std::fs::write(c.path(), &good).unwrap();
        assert!(c.load().is_some());
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(c.path(), std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(c.load().is_none());
        // Replaced by the next store.
        c.store(&fetched(vec![key("k")], vec![]));
        assert!(c.load().is_some());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_lock_is_exclusive_and_bounded() {
        let d = tmp("lock");
        let c = HostCache::new(
            "b",
            "aws-kms",
            &section("region = \"r\""),
            &settings(&d, 300),
            Duration::from_millis(200),
        )
        .unwrap();
        let held = c.lock().expect("lock");
        // flock is per open file description: a second open in this process waits like another process would.
        let t = std::time::Instant::now();
        assert!(c.lock().is_none());
        assert!(t.elapsed() >= Duration::from_millis(200));
        drop(held);
        assert!(c.lock().is_some());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn concurrent_writers_leave_a_readable_file() {
        let d = tmp("race");
        let c = HostCache::new(
            "b",
            "aws-kms",
            &section("region = \"r\""),
            &settings(&d, 300),
            Duration::from_secs(1),
        )
        .unwrap();
        let keys: Vec<RemoteKey> = (0..50).map(|i| key(&format!("k{i}"))).collect();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..10 {
                        c.store(&fetched(keys.clone(), vec![]));
                        if let Some(f) = c.load() {
                            assert_eq!(f.keys.len(), 50);
                        }
                    }
                });
            }
        });
        assert_eq!(c.load().unwrap().keys.len(), 50);
        let _ = std::fs::remove_dir_all(&d);
    }
}
