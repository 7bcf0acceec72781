//! The AWS KMS backend (`kind = "aws-kms"`).
//!
//! KMS keys become objects of the unified token through the shared remote layer; this module only says how to
//! talk to KMS: one SDK client per region (made on first use, inside the module's runtime, never in `C_Initialize`),
//! key selection (a list of aliases / key ids / ARNs, or discovery with a tag filter), and the KMS calls.
//!
//! High availability: with `regions`, every call walks the regions whose breaker is closed (`health::Endpoints`)
//! within one deadline, failing over on endpoint faults only; multi-Region keys are used in every region, other
//! keys in their own; calls that create or delete go to one region and are never re-sent. A background prober
//! closes the breakers of regions that answer again.
//!
//! TLS: the SDK's default HTTPS client is not used (it brings aws-lc-rs as a second rustls provider next to the
//! ring one the crate already uses, and rustls refuses to pick between two without a process-wide default). The
//! backend builds the SDK's hyper client itself with rustls on ring, installing nothing global; its trust roots
//! are `ca_cert`, else `AWS_CA_BUNDLE`, else the system's (`remote::tls`).
//!
//! `Sign` from an application's thread is written and answered on that thread (`lean.rs`: the same request,
//! SigV4-signed with the SDK client's credentials, on the caller-thread client of `remote::blocking`); every other
//! call, and `Sign` where the lean path does not apply (proxy, FIPS/dual-stack or other partitions without an
//! `endpoint`, a caller inside its own tokio runtime), goes through the SDK.
//!
//! Retries: the SDK's standard retry strategy (jittered exponential backoff; throttling and 5xx/transient errors)
//! for the idempotent calls, within the per-call deadline; `CreateKey`, `CreateAlias`, `DeleteAlias` and
//! `ScheduleKeyDeletion` run with retries disabled.
//!
//! Files: `config.rs` (the section's keys and checks), `regions.rs` (clients, the walk over regions, faults,
//! the prober), `discovery.rs` (which keys, read and described), `lifecycle.rs` (create and delete keys), `lean.rs` (`Sign` on the caller's thread); this
//! file: the service and its key operations.

mod config;
mod discovery;
mod lean;
mod lifecycle;
mod regions;

use config::*;
use regions::*;
pub use regions::{http_client, http_client_via, KmsService};

use crate::health::{self, Endpoints};
use crate::remote::mech::{Hash, RsaPad, SignRequest};
use crate::remote::proxy::Proxies;
use crate::remote::tls::CaBundle;
use crate::remote::{
    cert, der, Curve, GenerateKind, GenerateSpec, KeyMaterial, Listed, MechanismList, RemoteKey,
    RemoteService, Usage, EC_FLAGS,
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
        let ct = ct.to_vec();
        self.call_key(key, bad_input, move |c, id| {
            let (ct, alg, ctx) = (ct.clone(), alg.clone(), ctx.clone());
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

    /// Runs a key operation (`call` in the regions holding the key): `f` gets the region's client and the key's
    /// name in that region.
    fn call_key<T, F, Fut>(&self, key: &RemoteKey, bad_input: CK_RV, f: F) -> Result<T>
    where
        F: Fn(Client, String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<T, Fault>> + Send,
        T: Send + 'static,
    {
        let name = key.name.clone();
        self.call(Target::Key(&key.name), bad_input, move |c, r| {
            f(c, in_region(&name, r.as_deref()))
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
}

impl RemoteService for Kms {
    fn mechanisms(&self) -> Vec<(CK_MECHANISM_TYPE, CK_MECHANISM_INFO)> {
        let sv = CKF_SIGN | CKF_VERIFY;
        let ecdsa = [
            CKM_ECDSA,
            CKM_ECDSA_SHA256,
            CKM_ECDSA_SHA384,
            CKM_ECDSA_SHA512,
        ];
        let hmac = [
            CKM_SHA224_HMAC,
            CKM_SHA256_HMAC,
            CKM_SHA384_HMAC,
            CKM_SHA512_HMAC,
        ];
        MechanismList::default()
            .add(RSA_SIGN, 2048, 4096, sv)
            .add(&[CKM_RSA_PKCS_OAEP], 2048, 4096, CKF_ENCRYPT | CKF_DECRYPT)
            .add(&ecdsa, 256, 521, sv | EC_FLAGS)
            .add(&hmac, 224, 512, sv)
            .add(
                &[vendor::CKM_P11BRIDGE_KMS_ENCRYPT],
                256,
                256,
                CKF_ENCRYPT | CKF_DECRYPT,
            )
            .rsa_and_ec_key_pair_generation()
            .add(&[CKM_AES_KEY_GEN], 32, 32, CKF_GENERATE)
            .add(&[CKM_GENERIC_SECRET_KEY_GEN], 28, 64, CKF_GENERATE)
            .into_vec()
    }

    fn ttl(&self) -> Duration {
        self.0.cfg.remote.ttl()
    }

    fn fetch_keys(&self) -> Result<Vec<RemoteKey>> {
        self.fetch()
    }

    fn list_keys(&self) -> Result<Option<Vec<Listed>>> {
        self.list()
    }

    fn fetch_listed(&self, keys: &[Listed]) -> Result<Vec<RemoteKey>> {
        self.read_listed(keys)
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
        let me = self.0.clone();
        let sig = self.call_key(key, CKR_DATA_LEN_RANGE, move |c, id| {
            let (digest, alg, me) = (digest.clone(), alg.clone(), me.clone());
            async move {
                use base64::Engine;
                let b64 = base64::engine::general_purpose::STANDARD;
                let body = || {
                    serde_json::json!({
                        "KeyId": id,
                        "Message": b64.encode(&digest),
                        "MessageType": "DIGEST",
                        "SigningAlgorithm": alg.as_str(),
                    })
                };
                if let Some(r) = me.lean_call("Sign", body).await {
                    // As the SDK path: a missing or unreadable signature is checked below (malformed).
                    let v = r?;
                    let sig = v.get("Signature").and_then(|s| s.as_str()).unwrap_or("");
                    return Ok(b64.decode(sig).unwrap_or_default());
                }
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
        let data = data.to_vec();
        self.call_key(key, CKR_DATA_LEN_RANGE, move |c, id| {
            let (data, alg) = (data.clone(), alg.clone());
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
        let (data, mac) = (data.to_vec(), mac.to_vec());
        let valid = self.call_key(key, CKR_DATA_LEN_RANGE, move |c, id| {
            let (data, mac, alg) = (data.clone(), mac.clone(), alg.clone());
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
        let pt = Zeroizing::new(pt.to_vec());
        // Not idempotent in effect (a fresh ciphertext each time) but harmless to repeat.
        self.call_key(key, CKR_DATA_LEN_RANGE, move |c, id| {
            let (pt, ctx) = (pt.clone(), ctx.clone());
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
        self.create_key(spec)
    }

    /// Each region and URL, with the proxy its requests go through (`… (region x) via proxy http://p:3128`).
    fn endpoint(&self) -> String {
        let s = &self.0;
        (0..s.regions.len())
            .map(|i| format!("{}{}", s.region_at(i), s.proxies.via(&s.region_url(i))))
            .collect::<Vec<_>>()
            .join(", ")
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
        self.0.cfg.remote.keys.iter().cloned().partition(|k| {
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
        let configured = s.cfg.remote.certificates.keys().find(|n| {
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
        self.delete_key(key)
    }
}
