//! What the remote backends (Vault transit, AWS KMS) share: the key model and its PKCS#11 objects, attribute
//! answering and search, the key cache with its TTL, mechanism logic, local verification/encryption, generated
//! certificates, and one `BackendSession` that runs every operation. A remote service only says how to list keys
//! and how to sign/decrypt/MAC/encrypt with one ([`RemoteService`]).

pub mod blocking;
pub mod cert;
pub mod der;
pub mod hostcache;
pub mod mech;
pub mod proxy;
mod session;
pub mod settings;
pub mod tls;

use crate::{vendor, Backend, BackendSession, Error, ObjRef, OpKind, Result, Token};
use cryptoki_sys::*;
use mech::{Hash, SignRequest};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Elliptic curves of remote keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
    P521,
    Secp256k1,
}

impl Curve {
    pub fn field_len(self) -> usize {
        match self {
            Curve::P256 | Curve::Secp256k1 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }
    /// `CKA_EC_PARAMS`: the DER OID of the named curve.
    pub fn params(self) -> &'static [u8] {
        match self {
            Curve::P256 => &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
            Curve::P384 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
            Curve::P521 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23],
            Curve::Secp256k1 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a],
        }
    }
    pub fn from_params(p: &[u8]) -> Option<Curve> {
        [Curve::P256, Curve::P384, Curve::P521, Curve::Secp256k1]
            .into_iter()
            .find(|c| c.params() == p)
    }
    /// The hash a certificate signature with this curve uses.
    pub fn hash(self) -> Hash {
        match self {
            Curve::P256 | Curve::Secp256k1 => Hash::Sha256,
            Curve::P384 => Hash::Sha384,
            Curve::P521 => Hash::Sha512,
        }
    }
}

/// `CKA_EC_PARAMS` of Ed25519 (RFC 8410: the OID 1.3.101.112).
pub const ED25519_PARAMS: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

/// The key itself, as far as the bridge knows it (never private material).
#[derive(Clone, Debug)]
pub enum KeyMaterial {
    Rsa {
        modulus: Vec<u8>,
        exponent: Vec<u8>,
    },
    /// `point`: the uncompressed SEC1 point.
    Ec {
        curve: Curve,
        point: Vec<u8>,
    },
    Ed25519 {
        point: [u8; 32],
    },
    /// A secret key: `CKK_AES`, `CKK_GENERIC_SECRET` (HMAC) or `CKK_CHACHA20`; `bits` may be 0 (unknown).
    Secret {
        key_type: CK_KEY_TYPE,
        bits: usize,
    },
}

impl KeyMaterial {
    pub fn is_secret(&self) -> bool {
        matches!(self, KeyMaterial::Secret { .. })
    }

    /// The SubjectPublicKeyInfo (DER) of an asymmetric key.
    pub fn spki(&self) -> Option<Vec<u8>> {
        use der::*;
        Some(match self {
            KeyMaterial::Rsa { modulus, exponent } => seq(&[
                &seq(&[
                    &[
                        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
                    ],
                    &[0x05, 0x00],
                ]),
                &bits(&seq(&[&uint(modulus), &uint(exponent)])),
            ]),
            KeyMaterial::Ec { curve, point } => seq(&[
                &seq(&[
                    &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01],
                    curve.params(),
                ]),
                &bits(point),
            ]),
            KeyMaterial::Ed25519 { point } => seq(&[&seq(&[ED25519_PARAMS]), &bits(point)]),
            KeyMaterial::Secret { .. } => return None,
        })
    }

    /// Parses a SubjectPublicKeyInfo (DER).
    pub fn from_spki(spki: &[u8]) -> Option<KeyMaterial> {
        let (0x30, body, _) = der::read(spki)? else {
            return None;
        };
        let (0x30, alg, rest) = der::read(body)? else {
            return None;
        };
        let (0x03, bitstr, _) = der::read(rest)? else {
            return None;
        };
        let key = bitstr.get(1..)?;
        let (0x06, oid, params) = der::read(alg)? else {
            return None;
        };
        match oid {
            [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01] => {
                let (0x30, rsa, _) = der::read(key)? else {
                    return None;
                };
                let (0x02, n, rest) = der::read(rsa)? else {
                    return None;
                };
                let (0x02, e, _) = der::read(rest)? else {
                    return None;
                };
                let strip = |v: &[u8]| {
                    v.iter()
                        .copied()
                        .skip_while(|x| *x == 0)
                        .collect::<Vec<u8>>()
                };
                Some(KeyMaterial::Rsa {
                    modulus: strip(n),
                    exponent: strip(e),
                })
            }
            [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01] => Some(KeyMaterial::Ec {
                curve: Curve::from_params(params)?,
                point: key.to_vec(),
            }),
            [0x2b, 0x65, 0x70] => Some(KeyMaterial::Ed25519 {
                point: key.try_into().ok()?,
            }),
            _ => None,
        }
    }

    pub fn key_type(&self) -> CK_KEY_TYPE {
        match self {
            KeyMaterial::Rsa { .. } => CKK_RSA,
            KeyMaterial::Ec { .. } => CKK_EC,
            KeyMaterial::Ed25519 { .. } => CKK_EC_EDWARDS,
            KeyMaterial::Secret { key_type, .. } => *key_type,
        }
    }
}

/// A service's mechanism list, built in order: each call adds mechanisms with their key sizes and flags.
#[derive(Default)]
pub struct MechanismList(Vec<(CK_MECHANISM_TYPE, CK_MECHANISM_INFO)>);

impl MechanismList {
    /// Adds `mechs`, each with key sizes `min..=max` and `flags`.
    pub fn add(
        mut self,
        mechs: &[CK_MECHANISM_TYPE],
        min: CK_ULONG,
        max: CK_ULONG,
        flags: CK_FLAGS,
    ) -> Self {
        self.0.extend(mechs.iter().map(|&m| {
            (
                m,
                CK_MECHANISM_INFO {
                    ulMinKeySize: min,
                    ulMaxKeySize: max,
                    flags,
                },
            )
        }));
        self
    }

    /// RSA (2048 to 4096 bits) and EC (P-256 to P-521) key pair generation, as every remote service offers it.
    pub fn rsa_and_ec_key_pair_generation(self) -> Self {
        self.add(
            &[CKM_RSA_PKCS_KEY_PAIR_GEN],
            2048,
            4096,
            CKF_GENERATE_KEY_PAIR,
        )
        .add(
            &[CKM_EC_KEY_PAIR_GEN],
            256,
            521,
            CKF_GENERATE_KEY_PAIR | EC_FLAGS,
        )
    }

    pub fn into_vec(self) -> Vec<(CK_MECHANISM_TYPE, CK_MECHANISM_INFO)> {
        self.0
    }
}

/// The flags of ECDSA and EC key generation mechanisms: prime fields, named curves, uncompressed points.
pub const EC_FLAGS: CK_FLAGS = CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS;

/// What a key may be used for (its private or secret half; the public half gets the mirror image).
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub sign: bool,
    pub decrypt: bool,
    pub encrypt: bool,
    pub wrap: bool,
}

/// An X.509 certificate object's contents.
#[derive(Clone, Debug)]
pub struct Certificate {
    pub der: Vec<u8>,
    pub subject: Vec<u8>,
    pub issuer: Vec<u8>,
    pub serial: Vec<u8>,
}

/// One remote key.
#[derive(Clone, Debug)]
pub struct RemoteKey {
    /// The service's name for it (Vault key name, KMS key id).
    pub name: String,
    pub label: String,
    /// `CKA_ID`: short and stable across processes.
    pub id: Vec<u8>,
    pub material: KeyMaterial,
    pub usage: Usage,
    /// The key version in use (`CKA_P11BRIDGE_KEY_VERSION`).
    pub version: Option<u64>,
    /// Mechanisms this key supports.
    pub mechanisms: Vec<CK_MECHANISM_TYPE>,
    pub cert: Option<Certificate>,
    /// Whether `C_DestroyObject` may delete it.
    pub destroyable: bool,
}

/// A key as the service's listing names it, before it is read: what `CKA_LABEL` and `CKA_ID` are made of, and
/// nothing else (no type, class or public key: those take a request per key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// The service's name for it, as [`RemoteKey::name`] will be.
    pub name: String,
    pub label: String,
    pub id: Vec<u8>,
    /// The service's other names for it that reading it needs again (KMS: its aliases).
    pub aliases: Vec<String>,
}

impl Listed {
    /// Whether a search for this label and id (each `None`: any) may find the key.
    fn matches(&self, label: Option<&[u8]>, id: Option<&[u8]>) -> bool {
        label.is_none_or(|l| l == self.label.as_bytes()) && id.is_none_or(|i| i == self.id)
    }
}

/// What a remote service does; everything else is shared. Calls may block on the network (each within its
/// deadline) and are never made for a length query or an attribute read.
pub trait RemoteService: Send + Sync + 'static {
    /// The mechanisms the backend offers, with their info (static: no network).
    fn mechanisms(&self) -> Vec<(CK_MECHANISM_TYPE, CK_MECHANISM_INFO)>;
    /// Every selected key, fresh from the service (with public keys and certificates).
    fn fetch_keys(&self) -> Result<Vec<RemoteKey>>;
    /// The selected keys as one listing names them, without a request per key, so that a search by label or id
    /// reads only the keys it may find ([`RemoteService::fetch_listed`]); `None` (the default) when every key must
    /// be read to know which are selected.
    fn list_keys(&self) -> Result<Option<Vec<Listed>>> {
        Ok(None)
    }
    /// Reads listed keys in full (with public keys and certificates); keys that turn out not to be exposed are left
    /// out. A failure names the key and the service's answer.
    fn fetch_listed(&self, _keys: &[Listed]) -> Result<Vec<RemoteKey>> {
        Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED))
    }
    /// How long fetched keys stay fresh.
    fn ttl(&self) -> Duration;
    /// A signature in PKCS#11 format (RSA: the bytes; ECDSA: r || s; EdDSA: 64 bytes).
    fn sign(&self, key: &RemoteKey, req: &SignRequest) -> Result<Vec<u8>>;
    /// RSA-OAEP decryption with the private key.
    fn decrypt_oaep(&self, key: &RemoteKey, hash: Hash, ct: &[u8]) -> Result<Zeroizing<Vec<u8>>>;
    /// A MAC with a secret key.
    fn mac(&self, key: &RemoteKey, hash: Hash, data: &[u8]) -> Result<Vec<u8>>;
    /// The service's own symmetric encryption (vendor mechanism), with an optional context.
    fn encrypt(
        &self,
        key: &RemoteKey,
        mech: CK_MECHANISM_TYPE,
        pt: &[u8],
        ctx: &[u8],
    ) -> Result<Vec<u8>>;
    /// Its decryption.
    fn decrypt(
        &self,
        key: &RemoteKey,
        mech: CK_MECHANISM_TYPE,
        ct: &[u8],
        ctx: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>>;
    /// An upper bound of the ciphertext length for `encrypt` (no network).
    fn encrypt_len(&self, key: &RemoteKey, mech: CK_MECHANISM_TYPE, pt_len: usize) -> usize;
    /// Random bytes from the service, if it has them.
    fn random(&self, _n: usize) -> Result<Vec<u8>> {
        Err(Error::new(CKR_RANDOM_NO_RNG))
    }
    /// Whether `C_GenerateRandom` on the unified token should come from [`RemoteService::random`].
    fn has_random(&self) -> bool {
        false
    }
    /// A service's own rules on mechanism parameters, checked at `C_*Init` (no network): e.g. a PSS salt length
    /// or an OAEP hash the service cannot do. `pss` is (hash, salt length), `oaep` the OAEP hash.
    fn check_init(
        &self,
        _kind: OpKind,
        _key: &RemoteKey,
        _mech: CK_MECHANISM_TYPE,
        _pss: Option<(Hash, usize)>,
        _oaep: Option<Hash>,
    ) -> Result<()> {
        Ok(())
    }
    /// Verifies a MAC with a secret key: by default computes it and compares (constant time).
    fn verify_mac(&self, key: &RemoteKey, hash: Hash, data: &[u8], mac: &[u8]) -> Result<()> {
        let m = self.mac(key, hash, data)?;
        let same =
            m.len() == mac.len() && m.iter().zip(mac).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0;
        same.then_some(()).ok_or(Error::new(CKR_SIGNATURE_INVALID))
    }
    /// Creates a key from PKCS#11 templates (`CKM_*_KEY_PAIR_GEN` / `CKM_*_KEY_GEN`) and returns its name.
    fn generate(&self, _spec: &GenerateSpec) -> Result<String> {
        Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED))
    }
    /// Deletes a key (only where the configuration allows).
    fn destroy(&self, _key: &RemoteKey) -> Result<()> {
        Err(Error::new(CKR_ACTION_PROHIBITED))
    }
    /// Where the service is, for people (URL(s), region(s) and endpoint).
    fn endpoint(&self) -> String {
        String::new()
    }
    /// `p11bridge check`: logs in with the configured credentials now and says how it went (`Ok`: a short
    /// description, e.g. the token's identity; `Err`: the refusal in the service's words).
    fn check_login(&self) -> Result<String> {
        Ok("checked by listing the keys".into())
    }
    /// The keys named in the configuration, split into those among `found` and those missing (as the
    /// configuration names them).
    fn configured_keys(&self, _found: &[Arc<RemoteKey>]) -> (Vec<String>, Vec<String>) {
        (Vec::new(), Vec::new())
    }
    /// Attaches a DER X.509 certificate to a key for good (every later process serves it): refused unless it
    /// carries the key's public key (`cert::CertSource::import`).
    fn import_certificate(&self, _key: &RemoteKey, _der: &[u8]) -> Result<Certificate> {
        Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED))
    }
}

/// A key to create, derived from PKCS#11 templates.
#[derive(Clone, Debug)]
pub struct GenerateSpec {
    pub label: String,
    pub material: GenerateKind,
    /// `CKA_SIGN` (vs `CKA_DECRYPT`) on the private key.
    pub sign: bool,
    pub decrypt: bool,
}

#[derive(Clone, Debug)]
pub enum GenerateKind {
    Rsa { bits: usize },
    Ec { curve: Curve },
    Ed25519,
    Aes { bits: usize },
    Hmac { bits: usize },
}

/// Object class codes inside an `ObjRef`: `(key number << 2) | class`.
pub const CLASS_PRIVATE: u64 = 0;
pub const CLASS_PUBLIC: u64 = 1;
pub const CLASS_CERT: u64 = 2;
pub const CLASS_SECRET: u64 = 3;

#[derive(Default)]
struct Cache {
    keys: HashMap<u64, Arc<RemoteKey>>,
    /// Keys listed but not read yet: a search reads those it may find (by label or id), any other search all.
    pending: HashMap<u64, Listed>,
    /// Key numbers, stable for the life of the backend (never reused), by service name.
    numbers: HashMap<String, u64>,
    next: u64,
    fetched: Option<Instant>,
}

/// What one fetch gave: keys read, keys only listed, and how old it is.
pub struct Fetched {
    pub keys: Vec<RemoteKey>,
    pub pending: Vec<Listed>,
    pub age: Duration,
    /// The notices fetching gave (this backend's), kept with the keys in the host-wide cache and given again by
    /// every process that reads them there.
    pub notices: Vec<String>,
}

/// State shared by the backend, its token and its sessions.
pub struct Shared {
    pub name: String,
    /// The backend's `kind` (for messages).
    pub kind: &'static str,
    pub service: Arc<dyn RemoteService>,
    /// The service's mechanisms, read once (they are static).
    pub mechanisms: Vec<CK_MECHANISM_TYPE>,
    cache: RwLock<Cache>,
    /// Serializes fetches so that concurrent first searches make one enumeration.
    fetching: Mutex<()>,
    refreshing: AtomicBool,
    /// Certificates from Vault PKI for the keys (`pki = {...}`).
    pub pki: Option<Arc<crate::pki::Pki>>,
    /// The host-wide cache of this configuration's keys (`key_cache`).
    host: Option<hostcache::HostCache>,
}

impl Shared {
    pub fn new(
        name: &str,
        kind: &'static str,
        service: Arc<dyn RemoteService>,
        pki: Option<Arc<crate::pki::Pki>>,
        host: Option<hostcache::HostCache>,
    ) -> Arc<Shared> {
        Arc::new(Shared {
            name: name.to_string(),
            kind,
            mechanisms: service.mechanisms().into_iter().map(|m| m.0).collect(),
            service,
            cache: RwLock::new(Cache::default()),
            fetching: Mutex::new(()),
            refreshing: AtomicBool::new(false),
            pki,
            host,
        })
    }

    /// The key as the PKI layer sees it, if `pki` selects it.
    fn pki_key(&self, k: &RemoteKey) -> Option<crate::pki::PkiKey> {
        let pki = self.pki.as_ref()?;
        pki.selects(&k.name, &k.label, k.usage.sign, &k.material)
            .then(|| crate::pki::PkiKey {
                name: k.name.clone(),
                label: k.label.clone(),
                material: k.material.clone(),
            })
    }

    /// The key number of a service name (stable for the life of the backend).
    fn number(c: &mut Cache, name: &str) -> u64 {
        match c.numbers.get(name) {
            Some(n) => *n,
            None => {
                let n = c.next;
                c.next += 1;
                c.numbers.insert(name.to_string(), n);
                n
            }
        }
    }

    /// A read key as it is served: a certificate issued by Vault PKI (in memory or in its cache: no network)
    /// replaces the generated or imported one.
    fn served(&self, mut k: RemoteKey) -> Arc<RemoteKey> {
        if let (Some(pki), Some(pk)) = (&self.pki, self.pki_key(&k)) {
            if let Some(i) = pki.current(&pk) {
                k.cert = Some(i.leaf.clone());
            }
        }
        Arc::new(k)
    }

    /// Installs what a fetch gave, `age` old (read from the host-wide cache: as old as its file).
    fn install(&self, f: Fetched) {
        let mut c = self.cache.write();
        let mut keys = HashMap::new();
        for k in f.keys {
            let n = Self::number(&mut c, &k.name);
            keys.insert(n, self.served(k));
        }
        let mut pending = HashMap::new();
        for l in f.pending {
            let n = Self::number(&mut c, &l.name);
            if !keys.contains_key(&n) {
                pending.insert(n, l);
            }
        }
        c.keys = keys;
        c.pending = pending;
        let now = Instant::now();
        c.fetched = Some(now.checked_sub(f.age).unwrap_or(now));
    }

    /// The keys, and how old they are: from the host-wide cache while it is fresh (unless `force`), else from the
    /// service and written to the cache. Of many processes missing the cache at once, one fetches while the others
    /// wait (at most the fetch's deadline) and read its result. `lazy`: a listing is enough where the service
    /// gives one, with the keys already read before (`reread`) read again.
    fn fetch(&self, force: bool, lazy: bool, reread: &[String]) -> Result<Fetched> {
        let Some(h) = &self.host else {
            return self.fetch_from_service(lazy, reread);
        };
        let replay = |f: Fetched| {
            for n in &f.notices {
                crate::diag::report(CKR_OK, n.clone());
            }
            f
        };
        if !force {
            if let Some(x) = h.load() {
                return Ok(replay(x));
            }
        }
        let _lock = h.lock();
        if !force {
            if let Some(x) = h.load() {
                tracing::debug!(backend = %self.name, "keys read from the host cache another process wrote");
                return Ok(replay(x));
            }
        }
        let mark = crate::diag::notice_mark();
        let mut f = self.fetch_from_service(lazy, reread)?;
        f.notices = self.notices_since(mark);
        h.store(&f);
        Ok(f)
    }

    /// This backend's notices since `mark` (each once).
    fn notices_since(&self, mark: u64) -> Vec<String> {
        let mut v = crate::diag::notices_since(mark, &format!("backend \"{}\"", self.name));
        v.sort();
        v.dedup();
        v
    }

    fn fetch_from_service(&self, lazy: bool, reread: &[String]) -> Result<Fetched> {
        if lazy {
            if let Some(listed) = self.service.list_keys()? {
                let (again, pending): (Vec<Listed>, Vec<Listed>) =
                    listed.into_iter().partition(|l| reread.contains(&l.name));
                let keys = if again.is_empty() {
                    Vec::new()
                } else {
                    self.service.fetch_listed(&again)?
                };
                return Ok(Fetched {
                    keys,
                    pending,
                    age: Duration::ZERO,
                    notices: Vec::new(),
                });
            }
        }
        Ok(Fetched {
            keys: self.service.fetch_keys()?,
            pending: Vec::new(),
            age: Duration::ZERO,
            notices: Vec::new(),
        })
    }

    /// Whether keys may be listed first and read on demand: not with Vault PKI certificates, which are issued for
    /// every key the PKI settings select.
    fn lazy(&self) -> bool {
        self.pki.is_none()
    }

    /// Every key, read: fetched on first use; when stale, served as they are while a refresh runs in the background
    /// (so only the first enumeration waits on the network).
    pub fn keys(self: &Arc<Self>) -> Result<Vec<(u64, Arc<RemoteKey>)>> {
        self.keys_for(None, None)
    }

    /// The keys a search for this label and id (each `None`: any) may find, and every key read before: on first use
    /// the service's listing (where it has one) and then only the listed keys that match are read.
    pub fn keys_for(
        self: &Arc<Self>,
        label: Option<&[u8]>,
        id: Option<&[u8]>,
    ) -> Result<Vec<(u64, Arc<RemoteKey>)>> {
        let fetched = self.cache.read().fetched;
        match fetched {
            None => {
                let _g = self.fetching.lock();
                if self.cache.read().fetched.is_none() {
                    let lazy = self.lazy() && (label.is_some() || id.is_some());
                    let f = self.fetch(false, lazy, &[])?;
                    self.install(f);
                }
            }
            Some(t) if t.elapsed() > self.service.ttl() => self.refresh_in_background(),
            Some(_) => {}
        }
        self.read_pending(|l| l.matches(label, id))?;
        // Certificates from Vault PKI are issued and renewed by a background task, started with the first use.
        crate::pki::ensure_task(self);
        let c = self.cache.read();
        let mut v: Vec<(u64, Arc<RemoteKey>)> =
            c.keys.iter().map(|(n, k)| (*n, k.clone())).collect();
        v.sort_by_key(|(n, _)| *n);
        Ok(v)
    }

    /// Reads the listed keys `pick` chooses, and writes the host-wide cache again with them.
    fn read_pending(&self, pick: impl Fn(&Listed) -> bool) -> Result<()> {
        let wanted = |c: &Cache| -> Vec<(u64, Listed)> {
            let mut v: Vec<(u64, Listed)> = c
                .pending
                .iter()
                .filter(|(_, l)| pick(l))
                .map(|(n, l)| (*n, l.clone()))
                .collect();
            v.sort_by_key(|x| x.0);
            v
        };
        if wanted(&self.cache.read()).is_empty() {
            return Ok(());
        }
        let _g = self.fetching.lock();
        if wanted(&self.cache.read()).is_empty() {
            return Ok(());
        }
        // Of processes reading the same keys at once, one reads them and the others take them from its file.
        let _lock = self.host.as_ref().and_then(|h| h.lock());
        if let Some(f) = self.host.as_ref().and_then(|h| h.load()) {
            let mut c = self.cache.write();
            for k in f.keys {
                let Some(n) = c.numbers.get(&k.name).copied() else {
                    continue;
                };
                if c.pending.remove(&n).is_some() {
                    let k = self.served(k);
                    c.keys.insert(n, k);
                }
            }
        }
        let want = wanted(&self.cache.read());
        if want.is_empty() {
            return Ok(());
        }
        let listed: Vec<Listed> = want.iter().map(|x| x.1.clone()).collect();
        let mark = crate::diag::notice_mark();
        let read = self.service.fetch_listed(&listed)?;
        let mut notices = self.notices_since(mark);
        let (keys, pending, age) = {
            let mut c = self.cache.write();
            for (n, _) in &want {
                c.pending.remove(n);
            }
            for k in read {
                let n = Self::number(&mut c, &k.name);
                c.pending.remove(&n);
                let k = self.served(k);
                c.keys.insert(n, k);
            }
            let age = c.fetched.map_or(Duration::ZERO, |t| t.elapsed());
            let mut keys: Vec<(u64, RemoteKey)> =
                c.keys.iter().map(|(n, k)| (*n, (**k).clone())).collect();
            keys.sort_by_key(|x| x.0);
            let mut pending: Vec<(u64, Listed)> =
                c.pending.iter().map(|(n, l)| (*n, l.clone())).collect();
            pending.sort_by_key(|x| x.0);
            (
                keys.into_iter().map(|x| x.1).collect::<Vec<_>>(),
                pending.into_iter().map(|x| x.1).collect::<Vec<_>>(),
                age,
            )
        };
        if let Some(h) = &self.host {
            if age < self.service.ttl() {
                // The notices of the file's fetch stay with it.
                if let Some(old) = h.load() {
                    notices.extend(old.notices);
                    notices.sort();
                    notices.dedup();
                }
                h.store(&Fetched {
                    keys,
                    pending,
                    age,
                    notices,
                });
            }
        }
        Ok(())
    }

    /// Re-reads every key from the service now (after a key was created or destroyed through the bridge; `check`).
    pub fn refresh_now(&self) -> Result<()> {
        let _g = self.fetching.lock();
        let f = self.fetch(true, false, &[])?;
        self.install(f);
        Ok(())
    }

    /// A refresh after the TTL: the listing again and the keys read so far, or every key when they were all read.
    fn refresh(&self) -> Result<()> {
        let (lazy, reread) = {
            let c = self.cache.read();
            let names: Vec<String> = c.keys.values().map(|k| k.name.clone()).collect();
            (self.lazy() && !c.pending.is_empty(), names)
        };
        let f = self.fetch(false, lazy, &reread)?;
        {
            let _g = self.fetching.lock();
            self.install(f);
        }
        // Keys read here that another process's file has only listed: read again, so that their handles stay valid.
        self.read_pending(|l| reread.contains(&l.name))
    }

    fn refresh_in_background(self: &Arc<Self>) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        let spawned = crate::runtime::spawn_blocking(move || {
            if let Err(e) = me.refresh() {
                tracing::warn!(backend = %me.name, error = %e, "key refresh failed; serving cached keys")
            }
            me.refreshing.store(false, Ordering::Release);
        });
        if !spawned {
            // No worker threads (CKF_LIBRARY_CANT_CREATE_OS_THREADS): refresh on the caller's time.
            let _ = self.refresh();
            self.refreshing.store(false, Ordering::Release);
        }
    }

    /// The host-wide cache's lock (`None`: no cache, or not taken within its wait).
    pub fn host_lock(&self) -> Option<hostcache::Lock> {
        self.host.as_ref().and_then(|h| h.lock())
    }

    /// Drops the host-wide cache file (a certificate was imported: other processes read the keys again).
    pub fn forget_host_cache(&self) {
        if let Some(h) = &self.host {
            h.invalidate();
        }
    }

    /// Says why an operation on a key failed when the service refused or could not serve it (not for the
    /// caller's own mistakes): once per distinct cause on stderr, and as the calling thread's last cause.
    pub fn op_failed(&self, what: &str, label: &str, e: Error) -> Error {
        if matches!(
            e.rv(),
            CKR_DEVICE_ERROR
                | CKR_DEVICE_MEMORY
                | CKR_KEY_FUNCTION_NOT_PERMITTED
                | CKR_KEY_HANDLE_INVALID
                | CKR_FUNCTION_FAILED
        ) && e.cause().is_some()
        {
            crate::diag::report(
                e.rv(),
                format!(
                    "backend \"{}\" ({}, {}): key \"{label}\": {what} failed: {e}",
                    self.name,
                    self.kind,
                    self.service.endpoint(),
                ),
            );
        }
        e
    }

    /// The key behind an object reference, from the cache (no network).
    pub fn key(&self, obj: ObjRef) -> Result<(Arc<RemoteKey>, u64)> {
        let c = self.cache.read();
        c.keys
            .get(&(obj >> 2))
            .cloned()
            .map(|k| (k, obj & 3))
            .ok_or(Error::new(CKR_OBJECT_HANDLE_INVALID))
    }

    /// Shows `cert` as the certificate of the key named `name` from now on (until the next refresh, which reads
    /// it from the store).
    pub fn set_cert(&self, name: &str, cert: Certificate) -> Option<ObjRef> {
        let mut c = self.cache.write();
        let n = *c.numbers.get(name)?;
        let k = c.keys.get(&n)?;
        let mut k = (**k).clone();
        k.cert = Some(cert);
        c.keys.insert(n, Arc::new(k));
        Some((n << 2) | CLASS_CERT)
    }

    /// The object reference of a key's object of a class.
    pub fn obj_ref(&self, name: &str, class: u64) -> Option<ObjRef> {
        self.cache
            .read()
            .numbers
            .get(name)
            .map(|n| (n << 2) | class)
    }
}

/// Certificates from Vault PKI: the keys `pki` selects, signed through the service; a new certificate replaces the
/// key's in the cache at once.
impl crate::pki::Host for Shared {
    fn pki(&self) -> Option<&Arc<crate::pki::Pki>> {
        self.pki.as_ref()
    }

    fn pki_keys(&self) -> Vec<crate::pki::PkiKey> {
        let c = self.cache.read();
        let mut keys: Vec<(u64, crate::pki::PkiKey)> = c
            .keys
            .iter()
            .filter_map(|(n, k)| self.pki_key(k).map(|p| (*n, p)))
            .collect();
        keys.sort_by_key(|x| x.0);
        keys.into_iter().map(|x| x.1).collect()
    }

    fn pki_sign(&self, key: &crate::pki::PkiKey, req: &SignRequest) -> Result<Vec<u8>> {
        let k = self
            .cache
            .read()
            .keys
            .values()
            .find(|k| k.name == key.name)
            .cloned()
            .ok_or_else(|| Error::with(CKR_KEY_HANDLE_INVALID, "the key is gone"))?;
        self.service.sign(&k, req)
    }

    fn pki_installed(
        &self,
        key: &crate::pki::PkiKey,
        issued: &Arc<crate::pki::Issued>,
    ) -> Result<()> {
        self.set_cert(&key.name, issued.leaf.clone())
            .map(|_| ())
            .ok_or_else(|| Error::with(CKR_KEY_HANDLE_INVALID, "the key is gone"))
    }
}

/// Object references of CA certificates from Vault PKI: this bit and the certificate's number.
pub const AUTHORITY: ObjRef = 1 << 60;

/// The value of one attribute of a CA certificate from Vault PKI (category authority, not trusted).
pub fn authority_attribute(backend: &str, der: &[u8], t: CK_ATTRIBUTE_TYPE) -> AttrValue {
    use AttrValue::*;
    let Some(c) = cert::parse(der) else {
        return Invalid;
    };
    Value(match t {
        CKA_CLASS => ul(CKO_CERTIFICATE),
        CKA_TOKEN => b(true),
        CKA_PRIVATE | CKA_MODIFIABLE | CKA_COPYABLE | CKA_DESTROYABLE | CKA_TRUSTED => b(false),
        CKA_LABEL => crate::pki::csr::facts(der)
            .and_then(|f| f.common_name)
            .unwrap_or_else(|| "CA certificate".into())
            .into_bytes(),
        CKA_ID => vec![],
        CKA_CERTIFICATE_TYPE => ul(CKC_X_509),
        CKA_CERTIFICATE_CATEGORY => ul(CK_CERTIFICATE_CATEGORY_AUTHORITY),
        CKA_VALUE => c.der,
        CKA_SUBJECT => c.subject,
        CKA_ISSUER => c.issuer,
        CKA_SERIAL_NUMBER => c.serial,
        CKA_START_DATE | CKA_END_DATE => vec![],
        vendor::CKA_P11BRIDGE_BACKEND => backend.as_bytes().to_vec(),
        _ => return Invalid,
    })
}

/// The class codes of the objects a key shows: a secret key; or a private and a public key, and a certificate when
/// the key has one.
pub fn objects_of(k: &RemoteKey) -> Vec<u64> {
    if k.material.is_secret() {
        vec![CLASS_SECRET]
    } else if k.cert.is_some() {
        vec![CLASS_PRIVATE, CLASS_PUBLIC, CLASS_CERT]
    } else {
        vec![CLASS_PRIVATE, CLASS_PUBLIC]
    }
}

fn b(v: bool) -> Vec<u8> {
    vec![if v { CK_TRUE } else { CK_FALSE }]
}

fn ul(v: CK_ULONG) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

/// An attribute's value: present, sensitive, or absent (type invalid for this object).
pub enum AttrValue {
    Value(Vec<u8>),
    Sensitive,
    Invalid,
}

/// The value of one attribute of one object (no network).
pub fn attribute(backend: &str, k: &RemoteKey, class: u64, t: CK_ATTRIBUTE_TYPE) -> AttrValue {
    use AttrValue::*;
    let private = class == CLASS_PRIVATE || class == CLASS_SECRET;
    let key = class != CLASS_CERT;
    let u = k.usage;
    let v = match t {
        CKA_CLASS => ul(match class {
            CLASS_PRIVATE => CKO_PRIVATE_KEY,
            CLASS_PUBLIC => CKO_PUBLIC_KEY,
            CLASS_CERT => CKO_CERTIFICATE,
            _ => CKO_SECRET_KEY,
        }),
        CKA_TOKEN => b(true),
        CKA_PRIVATE => b(private),
        CKA_MODIFIABLE | CKA_COPYABLE => b(false),
        CKA_DESTROYABLE => b(k.destroyable),
        CKA_LABEL => k.label.as_bytes().to_vec(),
        CKA_ID => k.id.clone(),
        vendor::CKA_P11BRIDGE_BACKEND => backend.as_bytes().to_vec(),
        vendor::CKA_P11BRIDGE_KEY_VERSION => match k.version {
            Some(v) => ul(v as CK_ULONG),
            None => return Invalid,
        },
        CKA_KEY_TYPE if key => ul(k.material.key_type()),
        CKA_LOCAL if key => b(true),
        CKA_KEY_GEN_MECHANISM if key => ul(CK_UNAVAILABLE_INFORMATION),
        CKA_START_DATE | CKA_END_DATE if key => vec![],
        CKA_DERIVE if key => b(false),
        CKA_ALLOWED_MECHANISMS if key => {
            k.mechanisms.iter().flat_map(|m| m.to_ne_bytes()).collect()
        }
        CKA_SUBJECT if class != CLASS_SECRET => k
            .cert
            .as_ref()
            .map(|c| c.subject.clone())
            .unwrap_or_default(),
        CKA_PUBLIC_KEY_INFO if class == CLASS_PRIVATE || class == CLASS_PUBLIC => {
            match k.material.spki() {
                Some(s) => s,
                None => return Invalid,
            }
        }
        // Private and secret keys: never leave the service.
        CKA_SENSITIVE | CKA_ALWAYS_SENSITIVE | CKA_NEVER_EXTRACTABLE if private => b(true),
        CKA_EXTRACTABLE if private => b(false),
        CKA_ALWAYS_AUTHENTICATE | CKA_WRAP_WITH_TRUSTED if private => b(false),
        CKA_SIGN if private => b(u.sign),
        CKA_DECRYPT if private => b(u.decrypt),
        CKA_UNWRAP if private => b(u.wrap),
        CKA_SIGN_RECOVER if private => b(false),
        CKA_VALUE | CKA_PRIVATE_EXPONENT | CKA_PRIME_1 | CKA_PRIME_2 | CKA_EXPONENT_1
        | CKA_EXPONENT_2 | CKA_COEFFICIENT
            if private =>
        {
            return Sensitive
        }
        // Public keys.
        CKA_VERIFY if class == CLASS_PUBLIC => b(u.sign),
        CKA_ENCRYPT if class == CLASS_PUBLIC => b(u.decrypt),
        CKA_WRAP if class == CLASS_PUBLIC => b(u.wrap),
        CKA_VERIFY_RECOVER if class == CLASS_PUBLIC => b(false),
        CKA_TRUSTED if class == CLASS_PUBLIC || class == CLASS_CERT => b(false),
        // Secret keys.
        CKA_ENCRYPT if class == CLASS_SECRET => b(u.encrypt),
        CKA_VERIFY if class == CLASS_SECRET => b(u.sign),
        CKA_WRAP if class == CLASS_SECRET => b(u.wrap),
        CKA_VALUE_LEN if class == CLASS_SECRET => match &k.material {
            KeyMaterial::Secret { bits, .. } if *bits > 0 => ul((*bits / 8) as CK_ULONG),
            _ => return Invalid,
        },
        // Key material of public halves (also on the private object, as consumers expect).
        CKA_MODULUS | CKA_PUBLIC_EXPONENT | CKA_MODULUS_BITS
            if class == CLASS_PRIVATE || class == CLASS_PUBLIC =>
        {
            match (&k.material, t) {
                (KeyMaterial::Rsa { modulus, .. }, CKA_MODULUS) => modulus.clone(),
                (KeyMaterial::Rsa { exponent, .. }, CKA_PUBLIC_EXPONENT) => exponent.clone(),
                (KeyMaterial::Rsa { modulus, .. }, CKA_MODULUS_BITS) => {
                    ul((modulus.len() * 8) as CK_ULONG)
                }
                _ => return Invalid,
            }
        }
        CKA_EC_PARAMS | CKA_EC_POINT if class == CLASS_PRIVATE || class == CLASS_PUBLIC => {
            match (&k.material, t) {
                (KeyMaterial::Ec { curve, .. }, CKA_EC_PARAMS) => curve.params().to_vec(),
                (KeyMaterial::Ec { point, .. }, CKA_EC_POINT) => der::octets(point),
                (KeyMaterial::Ed25519 { .. }, CKA_EC_PARAMS) => ED25519_PARAMS.to_vec(),
                (KeyMaterial::Ed25519 { point }, CKA_EC_POINT) => der::octets(point),
                _ => return Invalid,
            }
        }
        // Certificates.
        CKA_CERTIFICATE_TYPE if class == CLASS_CERT => ul(CKC_X_509),
        CKA_CERTIFICATE_CATEGORY if class == CLASS_CERT => ul(0),
        CKA_VALUE if class == CLASS_CERT => {
            k.cert.as_ref().map(|c| c.der.clone()).unwrap_or_default()
        }
        CKA_ISSUER if class == CLASS_CERT => k
            .cert
            .as_ref()
            .map(|c| c.issuer.clone())
            .unwrap_or_default(),
        CKA_SERIAL_NUMBER if class == CLASS_CERT => k
            .cert
            .as_ref()
            .map(|c| c.serial.clone())
            .unwrap_or_default(),
        _ => return Invalid,
    };
    Value(v)
}

/// The generic remote backend: any `RemoteService` behind the `Backend`/`Token` traits.
pub struct RemoteBackend {
    shared: Arc<Shared>,
    kind: &'static str,
}

impl RemoteBackend {
    pub fn new(
        name: &str,
        kind: &'static str,
        service: Arc<dyn RemoteService>,
        pki: Option<Arc<crate::pki::Pki>>,
        host: Option<hostcache::HostCache>,
    ) -> Self {
        RemoteBackend {
            shared: Shared::new(name, kind, service, pki, host),
            kind,
        }
    }
}

impl Backend for RemoteBackend {
    fn name(&self) -> &str {
        &self.shared.name
    }
    fn kind(&self) -> &'static str {
        self.kind
    }
    fn token(&self) -> Result<Arc<dyn Token>> {
        // The login state is the token's (the slot's): a backend listed in two slots is logged in per slot.
        Ok(Arc::new(RemoteToken {
            shared: self.shared.clone(),
            logged_in: Arc::new(AtomicBool::new(false)),
        }))
    }
    fn finalize(&self) {
        if let Some(p) = &self.shared.pki {
            p.stop();
        }
    }
}

pub struct RemoteToken {
    shared: Arc<Shared>,
    logged_in: Arc<AtomicBool>,
}

impl Token for RemoteToken {
    fn slot_info(&self) -> Result<CK_SLOT_INFO> {
        Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED))
    }
    fn token_info(&self) -> Result<CK_TOKEN_INFO> {
        Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED))
    }
    fn mechanism_list(&self) -> Result<Vec<CK_MECHANISM_TYPE>> {
        Ok(self
            .shared
            .service
            .mechanisms()
            .into_iter()
            .map(|m| m.0)
            .collect())
    }
    fn mechanism_info(&self, mech: CK_MECHANISM_TYPE) -> Result<CK_MECHANISM_INFO> {
        self.shared
            .service
            .mechanisms()
            .into_iter()
            .find(|m| m.0 == mech)
            .map(|m| m.1)
            .ok_or(Error::new(CKR_MECHANISM_INVALID))
    }
    fn login_configured(&self, user: CK_USER_TYPE) -> Result<()> {
        // The service authenticates with its own configured credentials on first use; a bridge user login makes
        // the private objects usable.
        if user == CKU_USER {
            self.logged_in.store(true, Ordering::Release);
        }
        Ok(())
    }
    fn logout_configured(&self) -> Result<()> {
        self.logged_in.store(false, Ordering::Release);
        Ok(())
    }
    fn open_session(&self, _rw: bool) -> Result<Box<dyn BackendSession>> {
        Ok(Box::new(session::RemoteSession::new(
            self.shared.clone(),
            self.logged_in.clone(),
        )))
    }
    fn has_rng(&self) -> bool {
        self.shared.service.has_random()
    }
    fn endpoint(&self) -> String {
        self.shared.service.endpoint()
    }
    fn check(&self) -> crate::CheckReport {
        let start = Instant::now();
        let svc = &self.shared.service;
        let mut r = crate::CheckReport {
            endpoint: svc.endpoint(),
            ..Default::default()
        };
        match svc.check_login() {
            Ok(s) => r.login = s,
            Err(e) => {
                r.login = e.to_string();
                r.problems.push(format!(
                    "login with the configured credentials refused: {e}"
                ));
            }
        }
        match self.shared.refresh_now() {
            Ok(()) => {
                let keys: Vec<Arc<RemoteKey>> =
                    self.shared.cache.read().keys.values().cloned().collect();
                for k in &keys {
                    let objs = objects_of(k);
                    r.objects += objs.len();
                    if objs.contains(&CLASS_SECRET) {
                        r.secret_keys += 1;
                    } else {
                        r.private_keys += 1;
                    }
                }
                let (found, missing) = svc.configured_keys(&keys);
                for m in &missing {
                    r.problems
                        .push(format!("key \"{m}\" named in keys was not found"));
                }
                r.keys_found = found;
                r.keys_missing = missing;
                if let Some(pki) = &self.shared.pki {
                    let mut sel: Vec<&Arc<RemoteKey>> = keys.iter().collect();
                    sel.sort_by(|a, b| a.label.cmp(&b.label));
                    let pks: Vec<crate::pki::PkiKey> =
                        sel.iter().filter_map(|k| self.shared.pki_key(k)).collect();
                    pki.report_into(&mut r, &pks);
                }
            }
            Err(e) => r.problems.push(format!("cannot list its keys: {e}")),
        }
        r.latency_ms = start.elapsed().as_secs_f64() * 1000.0;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A service of `n` secret keys named `k0`.. that lists them and counts what it is asked.
    struct Listing {
        n: usize,
        lists: AtomicUsize,
        reads: Mutex<Vec<String>>,
        full: AtomicUsize,
        /// Reading this key fails.
        broken: Option<String>,
    }

    fn key(name: &str) -> RemoteKey {
        RemoteKey {
            name: name.into(),
            label: format!("label-{name}"),
            id: name.as_bytes().to_vec(),
            material: KeyMaterial::Secret {
                key_type: CKK_AES,
                bits: 256,
            },
            usage: Usage::default(),
            version: None,
            mechanisms: vec![],
            cert: None,
            destroyable: false,
        }
    }

    impl RemoteService for Listing {
        fn mechanisms(&self) -> Vec<(CK_MECHANISM_TYPE, CK_MECHANISM_INFO)> {
            Vec::new()
        }
        fn fetch_keys(&self) -> Result<Vec<RemoteKey>> {
            self.full.fetch_add(1, Ordering::SeqCst);
            Ok((0..self.n).map(|i| key(&format!("k{i}"))).collect())
        }
        fn list_keys(&self) -> Result<Option<Vec<Listed>>> {
            self.lists.fetch_add(1, Ordering::SeqCst);
            Ok(Some(
                (0..self.n)
                    .map(|i| {
                        let k = key(&format!("k{i}"));
                        Listed {
                            name: k.name,
                            label: k.label,
                            id: k.id,
                            aliases: vec![],
                        }
                    })
                    .collect(),
            ))
        }
        fn fetch_listed(&self, keys: &[Listed]) -> Result<Vec<RemoteKey>> {
            for l in keys {
                if Some(&l.name) == self.broken.as_ref() {
                    return Err(Error::with(
                        CKR_DEVICE_ERROR,
                        format!("key {}: the service said no", l.name),
                    ));
                }
            }
            self.reads
                .lock()
                .extend(keys.iter().map(|l| l.name.clone()));
            Ok(keys.iter().map(|l| key(&l.name)).collect())
        }
        fn ttl(&self) -> Duration {
            Duration::from_secs(300)
        }
        fn sign(&self, _: &RemoteKey, _: &SignRequest) -> Result<Vec<u8>> {
            Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED))
        }
        fn decrypt_oaep(&self, _: &RemoteKey, _: Hash, _: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
            Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED))
        }
        fn mac(&self, _: &RemoteKey, _: Hash, _: &[u8]) -> Result<Vec<u8>> {
            Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED))
        }
        fn encrypt(
            &self,
            _: &RemoteKey,
            _: CK_MECHANISM_TYPE,
            _: &[u8],
            _: &[u8],
        ) -> Result<Vec<u8>> {
            Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED))
        }
        fn decrypt(
            &self,
            _: &RemoteKey,
            _: CK_MECHANISM_TYPE,
            _: &[u8],
            _: &[u8],
        ) -> Result<Zeroizing<Vec<u8>>> {
            Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED))
        }
        fn encrypt_len(&self, _: &RemoteKey, _: CK_MECHANISM_TYPE, n: usize) -> usize {
            n
        }
    }

    fn listing(n: usize, broken: Option<&str>) -> Arc<Listing> {
        Arc::new(Listing {
            n,
            lists: AtomicUsize::new(0),
            reads: Mutex::new(Vec::new()),
            full: AtomicUsize::new(0),
            broken: broken.map(str::to_owned),
        })
    }

    fn host(dir: &std::path::Path) -> Option<hostcache::HostCache> {
        let settings = settings::RemoteSettings {
            cert_cache_dir: Some(dir.to_path_buf()),
            ..Default::default()
        };
        hostcache::HostCache::new(
            "b",
            "test",
            &toml::Table::new(),
            &settings,
            Duration::from_secs(2),
        )
    }

    #[test]
    fn a_search_by_label_reads_only_its_keys_and_handles_stay() {
        let svc = listing(50, None);
        let shared = Shared::new("b", "test", svc.clone(), None, None);
        let found = shared.keys_for(Some(b"label-k7"), None).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].1.name, "k7");
        assert_eq!(svc.lists.load(Ordering::SeqCst), 1);
        assert_eq!(*svc.reads.lock(), vec!["k7".to_string()]);
        // Another label, an id: only those; a label no key has: nothing.
        shared.keys_for(None, Some(b"k9")).unwrap();
        assert!(shared.keys_for(Some(b"nobody"), None).unwrap().len() == 2);
        assert_eq!(svc.reads.lock().len(), 2);
        // Everything: the other 48, the handles of the first ones unchanged.
        let all = shared.keys().unwrap();
        assert_eq!(all.len(), 50);
        assert!(all.iter().any(|(n, k)| *n == found[0].0 && k.name == "k7"));
        assert_eq!(svc.reads.lock().len(), 50);
        assert_eq!(svc.full.load(Ordering::SeqCst), 0);
        assert_eq!(svc.lists.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_key_that_cannot_be_read_fails_the_search_with_the_cause() {
        let svc = listing(5, Some("k3"));
        let shared = Shared::new("b", "test", svc.clone(), None, None);
        let e = shared.keys_for(Some(b"label-k3"), None).unwrap_err();
        assert_eq!(e.rv(), CKR_DEVICE_ERROR);
        assert!(e.cause().unwrap().contains("k3: the service said no"));
        // The other keys are still served.
        assert_eq!(shared.keys_for(Some(b"label-k1"), None).unwrap().len(), 1);
    }

    #[test]
    fn a_second_instance_reads_the_host_cache_and_asks_nothing() {
        let dir = std::env::temp_dir().join(format!("p11b-shared-host-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = listing(20, None);
        let a = Shared::new("b", "test", first.clone(), None, host(&dir));
        assert_eq!(a.keys_for(Some(b"label-k4"), None).unwrap().len(), 1);
        let second = listing(20, None);
        let b = Shared::new("b", "test", second.clone(), None, host(&dir));
        let found = b.keys_for(Some(b"label-k4"), None).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(second.lists.load(Ordering::SeqCst), 0);
        assert!(second.reads.lock().is_empty());
        // A key the first did not read: read once, and written for the next instance.
        assert_eq!(b.keys_for(Some(b"label-k5"), None).unwrap().len(), 2);
        assert_eq!(*second.reads.lock(), vec!["k5".to_string()]);
        let third = listing(20, None);
        let c = Shared::new("b", "test", third.clone(), None, host(&dir));
        assert_eq!(c.keys_for(Some(b"label-k5"), None).unwrap().len(), 2);
        assert!(third.reads.lock().is_empty());
        assert_eq!(third.lists.load(Ordering::SeqCst), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
