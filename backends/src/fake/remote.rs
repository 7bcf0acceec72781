//! `kind = "test-fake"`: a [`RemoteService`] whose keys live in memory (keys and options: see [`super`]).
//! Signatures are real (p256/p384/rsa/ed25519-dalek), so tests verify them with independent code (RSA-PSS and
//! RSA-OAEP with SHA-256 only, as Vault; other hashes are `CKR_MECHANISM_PARAM_INVALID` at init); symmetric
//! encryption (`CKM_P11BRIDGE_VAULT_ENCRYPT`, the mechanism envelope wrapping uses) is a toy authenticated
//! cipher — SHA-256 keystream and tag — good for round trips and tamper detection, nothing else.

use super::{Script, ScriptConfig};
use crate::remote::mech::{digest_info, Hash, RsaPad, SignRequest, ECDSA_MECHS, RSA_MECHS};
use crate::remote::{
    Curve, GenerateKind, GenerateSpec, KeyMaterial, RemoteBackend, RemoteKey, RemoteService, Usage,
};
use crate::{vendor, Error, OpKind, Result};
use cryptoki_sys::*;
use parking_lot::Mutex;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

/// The operations a script can name for this kind.
const OPS: &[&str] = &[
    "list", "sign", "decrypt", "encrypt", "mac", "generate", "destroy", "random",
];

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Config {
    #[allow(dead_code)]
    kind: String,
    #[serde(default)]
    keys: Vec<KeyConfig>,
    #[serde(default = "yes")]
    hash_and_sign: bool,
    #[serde(default)]
    allow_destroy: bool,
    #[serde(default)]
    random: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct KeyConfig {
    label: String,
    #[serde(rename = "type")]
    key_type: String,
}

/// A key's private half (or secret value).
enum Private {
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
    Rsa(Box<rsa::RsaPrivateKey>),
    Ed25519(ed25519_dalek::SigningKey),
    Secret(Zeroizing<Vec<u8>>),
}

struct FakeKey {
    public: RemoteKey,
    private: Private,
}

/// The built-in RSA key pair every `rsa-2048` key of a fake backend uses (generating one per test is slow).
const RSA_PEM: &str = include_str!("rsa-2048.pem");

const EC_MECHS: &[CK_MECHANISM_TYPE] = &ECDSA_MECHS;
const HMAC_MECHS: &[CK_MECHANISM_TYPE] = &[CKM_SHA256_HMAC, CKM_SHA384_HMAC, CKM_SHA512_HMAC];
/// Mechanisms that hash their input themselves (left out with `hash_and_sign = false`).
fn is_hash_and_sign(m: CK_MECHANISM_TYPE) -> bool {
    crate::remote::mech::mechanism_hash(m).is_some()
        && !HMAC_MECHS.contains(&m)
        && m != CKM_SHA_1_HMAC
        && m != CKM_SHA224_HMAC
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn device_error(what: impl Into<String>) -> Error {
    Error::with(CKR_DEVICE_ERROR, what.into())
}

/// The fake service: its keys, by label.
pub struct FakeService {
    name: String,
    script: Arc<Script>,
    hash_and_sign: bool,
    allow_destroy: bool,
    random: bool,
    keys: Mutex<Vec<Arc<FakeKey>>>,
}

/// Builds `kind = "test-fake"` from its section.
pub fn build(name: &str, section: &toml::Table) -> Result<RemoteBackend> {
    let mut section = section.clone();
    let script = ScriptConfig::take_from(name, &mut section)?.install(name, OPS)?;
    let cfg: Config = crate::parse_section(name, &section)?;
    let svc = FakeService {
        name: name.to_string(),
        script,
        hash_and_sign: cfg.hash_and_sign,
        allow_destroy: cfg.allow_destroy,
        random: cfg.random,
        keys: Mutex::new(Vec::new()),
    };
    for k in &cfg.keys {
        let key = svc.make_key(&k.label, &k.key_type).map_err(|e| {
            Error::with(
                CKR_GENERAL_ERROR,
                format!("backend.{name}.keys: {}", e.cause().unwrap_or_default()),
            )
        })?;
        svc.keys.lock().push(Arc::new(key));
    }
    Ok(RemoteBackend::new(
        name,
        "test-fake",
        Arc::new(svc),
        None,
        None,
    ))
}

impl FakeService {
    /// A key of a type named as in the configuration; its private half derives from the label.
    fn make_key(&self, label: &str, key_type: &str) -> Result<FakeKey> {
        let seed = sha256(&[b"p11bridge fake key: ", label.as_bytes()]);
        let bad_seed = || Error::with(CKR_GENERAL_ERROR, format!("key {label}: unusable seed"));
        let signing = Usage {
            sign: true,
            ..Default::default()
        };
        let ec = |curve, point: &[u8]| KeyMaterial::Ec {
            curve,
            point: point.to_vec(),
        };
        let (private, material, mechanisms, usage) = match key_type {
            "ec-p256" => {
                let sk = p256::ecdsa::SigningKey::from_slice(&seed).map_err(|_| bad_seed())?;
                let material = ec(Curve::P256, sk.verifying_key().to_encoded_point(false).as_bytes());
                (Private::P256(sk), material, EC_MECHS, signing)
            }
            "ec-p384" => {
                let wide = [seed, sha256(&[&seed])].concat();
                let sk = p384::ecdsa::SigningKey::from_slice(&wide[..48]).map_err(|_| bad_seed())?;
                let material = ec(Curve::P384, sk.verifying_key().to_encoded_point(false).as_bytes());
                (Private::P384(sk), material, EC_MECHS, signing)
            }
            "rsa-2048" => {
                use rsa::pkcs8::DecodePrivateKey;
                use rsa::traits::PublicKeyParts;
                let sk = rsa::RsaPrivateKey::from_pkcs8_pem(RSA_PEM)
                    .map_err(|_| Error::with(CKR_GENERAL_ERROR, "built-in RSA key unreadable"))?;
                let material = KeyMaterial::Rsa {
                    modulus: sk.n().to_bytes_be(),
                    exponent: sk.e().to_bytes_be(),
                };
                (
                    Private::Rsa(Box::new(sk)),
                    material,
                    &RSA_MECHS[..],
                    Usage {
                        sign: true,
                        decrypt: true,
                        ..Default::default()
                    },
                )
            }
            "ed25519" => {
                let sk = ed25519_dalek::SigningKey::from_bytes(&seed);
                let point = sk.verifying_key().to_bytes();
                (
                    Private::Ed25519(sk),
                    KeyMaterial::Ed25519 { point },
                    &[CKM_EDDSA][..],
                    signing,
                )
            }
            "aes-256" => (
                Private::Secret(Zeroizing::new(seed.to_vec())),
                KeyMaterial::Secret {
                    key_type: CKK_AES,
                    bits: 256,
                },
                &[vendor::CKM_P11BRIDGE_VAULT_ENCRYPT][..],
                Usage {
                    encrypt: true,
                    wrap: true,
                    ..Default::default()
                },
            ),
            "hmac-sha256" => (
                Private::Secret(Zeroizing::new(seed.to_vec())),
                KeyMaterial::Secret {
                    key_type: CKK_GENERIC_SECRET,
                    bits: 256,
                },
                HMAC_MECHS,
                signing,
            ),
            other => {
                return Err(Error::with(
                    CKR_GENERAL_ERROR,
                    format!("key {label}: unknown type \"{other}\" (ec-p256, ec-p384, rsa-2048, ed25519, aes-256, hmac-sha256)"),
                ))
            }
        };
        let mechanisms = mechanisms
            .iter()
            .copied()
            .filter(|m| self.hash_and_sign || !is_hash_and_sign(*m))
            .collect();
        Ok(FakeKey {
            public: RemoteKey {
                name: label.to_string(),
                label: label.to_string(),
                id: seed[..8].to_vec(),
                material,
                usage,
                version: None,
                mechanisms,
                cert: None,
                destroyable: self.allow_destroy,
            },
            private,
        })
    }

    /// The private half of a key the remote layer hands back.
    fn private(&self, key: &RemoteKey) -> Result<Arc<FakeKey>> {
        self.keys
            .lock()
            .iter()
            .find(|k| k.public.name == key.name)
            .cloned()
            .ok_or_else(|| {
                Error::with(
                    CKR_KEY_HANDLE_INVALID,
                    format!("fake backend \"{}\": key {} is gone", self.name, key.name),
                )
            })
    }

    fn secret(&self, key: &RemoteKey) -> Result<Zeroizing<Vec<u8>>> {
        match &self.private(key)?.private {
            Private::Secret(v) => Ok(v.clone()),
            _ => Err(Error::new(CKR_KEY_TYPE_INCONSISTENT)),
        }
    }
}

/// The toy cipher's keystream block `i` for `nonce`.
fn keystream(key: &[u8], nonce: &[u8], i: u64) -> [u8; 32] {
    sha256(&[b"stream", key, nonce, &i.to_be_bytes()])
}

fn xor_stream(key: &[u8], nonce: &[u8], data: &mut [u8]) {
    for (i, chunk) in data.chunks_mut(32).enumerate() {
        for (b, k) in chunk.iter_mut().zip(keystream(key, nonce, i as u64)) {
            *b ^= k;
        }
    }
}

fn tag(key: &[u8], nonce: &[u8], ct: &[u8], ctx: &[u8]) -> [u8; 16] {
    let t = sha256(&[b"tag", key, nonce, ct, ctx]);
    let mut out = [0u8; 16];
    out.copy_from_slice(&t[..16]);
    out
}

fn hmac(hash: Hash, key: &[u8], data: &[u8]) -> Result<Vec<u8>> {
    use hmac::{Mac, SimpleHmac};
    fn run<D: Digest + sha2::digest::core_api::BlockSizeUser>(
        key: &[u8],
        data: &[u8],
    ) -> Result<Vec<u8>> {
        let mut m = <SimpleHmac<D> as hmac::digest::KeyInit>::new_from_slice(key)
            .map_err(|_| Error::new(CKR_KEY_SIZE_RANGE))?;
        m.update(data);
        Ok(m.finalize().into_bytes().to_vec())
    }
    match hash {
        Hash::Sha256 => run::<sha2::Sha256>(key, data),
        Hash::Sha384 => run::<sha2::Sha384>(key, data),
        Hash::Sha512 => run::<sha2::Sha512>(key, data),
        _ => Err(Error::new(CKR_MECHANISM_INVALID)),
    }
}

impl RemoteService for FakeService {
    fn mechanisms(&self) -> Vec<(CK_MECHANISM_TYPE, CK_MECHANISM_INFO)> {
        let info = |min: CK_ULONG, max: CK_ULONG, flags: CK_FLAGS| CK_MECHANISM_INFO {
            ulMinKeySize: min,
            ulMaxKeySize: max,
            flags,
        };
        let sv = CKF_SIGN | CKF_VERIFY;
        let ec = CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS;
        let mut v = Vec::new();
        for m in EC_MECHS {
            v.push((*m, info(256, 384, sv | ec)));
        }
        for m in &RSA_MECHS {
            let flags = if *m == CKM_RSA_PKCS_OAEP {
                CKF_ENCRYPT | CKF_DECRYPT
            } else {
                sv
            };
            v.push((*m, info(2048, 2048, flags)));
        }
        v.push((CKM_EDDSA, info(255, 255, sv)));
        for m in HMAC_MECHS {
            v.push((*m, info(0, 0, sv)));
        }
        v.push((
            vendor::CKM_P11BRIDGE_VAULT_ENCRYPT,
            info(256, 256, CKF_ENCRYPT | CKF_DECRYPT),
        ));
        v.push((
            CKM_EC_KEY_PAIR_GEN,
            info(256, 384, CKF_GENERATE_KEY_PAIR | ec),
        ));
        v.push((CKM_AES_KEY_GEN, info(32, 32, CKF_GENERATE)));
        v.retain(|(m, _)| self.hash_and_sign || !is_hash_and_sign(*m));
        v
    }

    fn fetch_keys(&self) -> Result<Vec<RemoteKey>> {
        self.script.enter("list")?;
        Ok(self.keys.lock().iter().map(|k| k.public.clone()).collect())
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(3600)
    }

    fn sign(&self, key: &RemoteKey, req: &SignRequest) -> Result<Vec<u8>> {
        use p256::ecdsa::signature::hazmat::PrehashSigner;
        self.script.enter("sign")?;
        let k = self.private(key)?;
        let bad = |e: &dyn std::fmt::Display| device_error(format!("fake signing failed: {e}"));
        match (&k.private, req) {
            (Private::P256(sk), SignRequest::Ecdsa { digest, .. }) => {
                let s: p256::ecdsa::Signature = sk.sign_prehash(digest).map_err(|e| bad(&e))?;
                Ok(s.to_bytes().to_vec())
            }
            (Private::P384(sk), SignRequest::Ecdsa { digest, .. }) => {
                let s: p384::ecdsa::Signature = sk.sign_prehash(digest).map_err(|e| bad(&e))?;
                Ok(s.to_bytes().to_vec())
            }
            (Private::Rsa(sk), SignRequest::Rsa { hash, pad, digest }) => {
                let r = match pad {
                    RsaPad::Pkcs1 => sk.sign(
                        rsa::Pkcs1v15Sign::new_unprefixed(),
                        &digest_info(*hash, digest),
                    ),
                    // SHA-256 only (check_init refuses other PSS hashes).
                    RsaPad::Pss(salt) => sk.sign_with_rng(
                        &mut rand_core::OsRng,
                        rsa::Pss::new_with_salt::<Sha256>(*salt),
                        digest,
                    ),
                };
                r.map_err(|e| bad(&e))
            }
            (Private::Ed25519(sk), SignRequest::Eddsa { message }) => {
                use ed25519_dalek::Signer;
                Ok(sk.sign(message).to_bytes().to_vec())
            }
            _ => Err(Error::new(CKR_KEY_TYPE_INCONSISTENT)),
        }
    }

    fn decrypt_oaep(&self, key: &RemoteKey, hash: Hash, ct: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        self.script.enter("decrypt")?;
        let Private::Rsa(sk) = &self.private(key)?.private else {
            return Err(Error::new(CKR_KEY_TYPE_INCONSISTENT));
        };
        if hash != Hash::Sha256 {
            return Err(Error::new(CKR_MECHANISM_PARAM_INVALID));
        }
        let pad = rsa::Oaep::new::<Sha256>();
        sk.decrypt(pad, ct)
            .map(Zeroizing::new)
            .map_err(|_| Error::new(CKR_ENCRYPTED_DATA_INVALID))
    }

    /// Like Vault, the fake does RSA-PSS and RSA-OAEP with SHA-256 only.
    fn check_init(
        &self,
        _kind: OpKind,
        _key: &RemoteKey,
        _mech: CK_MECHANISM_TYPE,
        pss: Option<(Hash, usize)>,
        oaep: Option<Hash>,
    ) -> Result<()> {
        match (pss, oaep) {
            (Some((h, _)), _) | (_, Some(h)) if h != Hash::Sha256 => Err(Error::with(
                CKR_MECHANISM_PARAM_INVALID,
                "the fake backend does PSS and OAEP with SHA-256 only",
            )),
            _ => Ok(()),
        }
    }

    fn mac(&self, key: &RemoteKey, hash: Hash, data: &[u8]) -> Result<Vec<u8>> {
        self.script.enter("mac")?;
        hmac(hash, &self.secret(key)?, data)
    }

    fn encrypt(
        &self,
        key: &RemoteKey,
        mech: CK_MECHANISM_TYPE,
        pt: &[u8],
        ctx: &[u8],
    ) -> Result<Vec<u8>> {
        self.script.enter("encrypt")?;
        if mech != vendor::CKM_P11BRIDGE_VAULT_ENCRYPT {
            return Err(Error::new(CKR_MECHANISM_INVALID));
        }
        let k = self.secret(key)?;
        let mut nonce = [0u8; 12];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
        let mut ct = pt.to_vec();
        xor_stream(&k, &nonce, &mut ct);
        let t = tag(&k, &nonce, &ct, ctx);
        Ok([&nonce[..], &ct, &t].concat())
    }

    fn decrypt(
        &self,
        key: &RemoteKey,
        mech: CK_MECHANISM_TYPE,
        ct: &[u8],
        ctx: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        self.script.enter("decrypt")?;
        if mech != vendor::CKM_P11BRIDGE_VAULT_ENCRYPT {
            return Err(Error::new(CKR_MECHANISM_INVALID));
        }
        let k = self.secret(key)?;
        if ct.len() < 28 {
            return Err(Error::with(CKR_ENCRYPTED_DATA_INVALID, "too short"));
        }
        let (nonce, rest) = ct.split_at(12);
        let (body, t) = rest.split_at(rest.len() - 16);
        if tag(&k, nonce, body, ctx) != t {
            return Err(Error::with(
                CKR_ENCRYPTED_DATA_INVALID,
                "authentication tag mismatch",
            ));
        }
        let mut pt = Zeroizing::new(body.to_vec());
        xor_stream(&k, nonce, &mut pt);
        Ok(pt)
    }

    fn encrypt_len(&self, _key: &RemoteKey, _mech: CK_MECHANISM_TYPE, pt_len: usize) -> usize {
        12 + pt_len + 16
    }

    fn random(&self, n: usize) -> Result<Vec<u8>> {
        self.script.enter("random")?;
        let mut v = vec![0u8; n];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut v);
        Ok(v)
    }

    fn has_random(&self) -> bool {
        self.random
    }

    fn generate(&self, spec: &GenerateSpec) -> Result<String> {
        self.script.enter("generate")?;
        let ty = match spec.material {
            GenerateKind::Ec { curve: Curve::P256 } => "ec-p256",
            GenerateKind::Ec { curve: Curve::P384 } => "ec-p384",
            GenerateKind::Aes { bits: 256 } => "aes-256",
            _ => return Err(Error::new(CKR_MECHANISM_INVALID)),
        };
        if self
            .keys
            .lock()
            .iter()
            .any(|k| k.public.label == spec.label)
        {
            return Err(Error::with(
                CKR_ATTRIBUTE_VALUE_INVALID,
                format!("a key labelled {} exists", spec.label),
            ));
        }
        let key = self.make_key(&spec.label, ty)?;
        self.keys.lock().push(Arc::new(key));
        Ok(spec.label.clone())
    }

    fn destroy(&self, key: &RemoteKey) -> Result<()> {
        self.script.enter("destroy")?;
        self.keys.lock().retain(|k| k.public.name != key.name);
        Ok(())
    }

    fn endpoint(&self) -> String {
        format!("in memory (fake backend {})", self.name)
    }
}
