//! The Vault / OpenBao transit backend (`kind = "vault-transit"`).
//!
//! Transit keys become objects of the unified token through the shared remote layer; this module only says how
//! to talk to Vault: authentication (token, AppRole, Kubernetes, AWS IAM; renewal before expiry and one re-login
//! after a 403), several addresses (HA: the healthy ones in order, a circuit breaker and a background prober per
//! address, standby redirects followed), key discovery, and the transit calls. vaultrs does the logins and token
//! renewal; the transit calls it cannot express (`salt_length`, `prehashed`, `marshaling_algorithm`) go through the
//! same HTTP client as raw requests.
//!
//! Files: `config.rs` (the section's keys, checks and TLS client), `auth.rs` (login and renewal), `aws_iam.rs` (the
//! signed STS request of the AWS IAM login), `nodes.rs` (one request across the addresses, the prober, faults),
//! `discovery.rs` (which keys, read and described); this file: the service and its transit operations.

mod auth;
mod aws_iam;
mod config;
mod discovery;
mod nodes;

use auth::*;
use config::*;
use nodes::*;

use crate::batch::GroupCommit;
use crate::health::{self, Endpoints};
use crate::remote::mech::{Hash, RsaPad, SignRequest, ECDSA_MECHS, RSA_MECHS};
use crate::remote::{
    cert, Curve, GenerateKind, GenerateSpec, KeyMaterial, Listed, MechanismList, RemoteKey,
    RemoteService, Usage, EC_FLAGS,
};
use crate::{runtime, vendor, BuildContext, Error, Result, SecretRef};
use base64::Engine;
use cryptoki_sys::*;
use parking_lot::RwLock;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Digest;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

const HMAC_MECHS: [CK_MECHANISM_TYPE; 5] = [
    CKM_SHA_1_HMAC,
    CKM_SHA224_HMAC,
    CKM_SHA256_HMAC,
    CKM_SHA384_HMAC,
    CKM_SHA512_HMAC,
];

pub struct VaultService {
    name: String,
    cfg: Config,
    addresses: Vec<String>,
    /// A circuit breaker per address (in `addresses` order).
    health: Endpoints,
    /// The CA bundle of `ca_cert` (`None`: the system's roots).
    ca: Option<crate::remote::tls::CaBundle>,
    /// The proxies its requests go through (`proxy`, else the environment), decided when it is built.
    proxies: crate::remote::proxy::Proxies,
    http: OnceLock<std::result::Result<reqwest::Client, String>>,
    /// The caller-thread client (`remote::blocking`), made on first use; `None` with a client certificate (its key
    /// stays with rustls in the async client only).
    lean: OnceLock<Option<crate::remote::blocking::Client>>,
    token: RwLock<Option<TokenState>>,
    login: tokio::sync::Mutex<()>,
    /// Configured, imported, cached and generated certificates.
    certs: cert::CertSource,
    /// Keys created through the bridge by this process (found again even with `created_prefix = ""`).
    created: parking_lot::Mutex<Vec<String>>,
    /// Concurrent sign requests, coalesced (see `batch.rs`): items are base64 inputs, results `vault:vN:...`.
    signer: GroupCommit<String, String>,
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
        let n = inputs.len();
        if let [one] = inputs.as_slice() {
            body["input"] = json!(one);
        } else {
            body["batch_input"] =
                Value::Array(inputs.into_iter().map(|i| json!({ "input": i })).collect());
        }
        let v = self.op(
            reqwest::Method::POST,
            path.to_string(),
            Some(body),
            true,
            CKR_DATA_INVALID,
        )?;
        if n == 1 {
            return Ok(vec![field(&v, "signature").map(str::to_owned)]);
        }
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

/// A transit request body with the encryption context of a derived key, if the caller gave one.
fn with_context(mut body: Value, ctx: &[u8]) -> Value {
    if !ctx.is_empty() {
        body["context"] = json!(B64.encode(ctx));
    }
    body
}

/// The plaintext of a `decrypt` answer.
fn plaintext(v: &Value) -> Result<Zeroizing<Vec<u8>>> {
    Ok(Zeroizing::new(
        B64.decode(field(v, "plaintext")?)
            .map_err(|_| Error::new(CKR_DEVICE_ERROR))?,
    ))
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

/// The service, shared through an `Arc` so that requests can outlive the caller's stack frame.
pub struct Vault(Arc<VaultService>);

impl Vault {
    pub fn new(s: VaultService) -> Self {
        Vault(Arc::new(s))
    }
}

/// Vault PKI requests (`pki = { vault = "NAME", ... }` of any backend) go through the `vault-transit` section NAME:
/// its addresses (failover), TLS settings and login. A client of its own, built from that section.
struct PkiIssuer(Arc<VaultService>);

impl crate::pki::Issuer for PkiIssuer {
    fn post(&self, path: &str, body: Value) -> Result<Value> {
        // Not repeated after a timeout: a request Vault may have served would issue a second certificate.
        self.0.op(
            reqwest::Method::POST,
            path.to_string(),
            Some(body),
            false,
            CKR_DEVICE_ERROR,
        )
    }

    fn endpoint(&self) -> String {
        self.0.endpoint()
    }
}

/// The Vault PKI client of the `vault-transit` section `name`.
pub fn pki_issuer(
    name: &str,
    section: &toml::Table,
    ctx: &BuildContext,
) -> Result<Arc<dyn crate::pki::Issuer>> {
    Ok(Arc::new(PkiIssuer(Arc::new(VaultService::from_config(
        name, section, ctx,
    )?))))
}

impl RemoteService for Vault {
    fn mechanisms(&self) -> Vec<(CK_MECHANISM_TYPE, CK_MECHANISM_INFO)> {
        let sv = CKF_SIGN | CKF_VERIFY;
        MechanismList::default()
            .add(&[CKM_RSA_PKCS], 2048, 4096, sv)
            .add(&[CKM_RSA_PKCS_OAEP], 2048, 4096, CKF_ENCRYPT | CKF_DECRYPT)
            .add(&RSA_MECHS[1..12], 2048, 4096, sv)
            .add(&ECDSA_MECHS, 256, 521, sv | EC_FLAGS)
            .add(&[CKM_EDDSA], 255, 255, sv)
            .add(&HMAC_MECHS, 0, 0, sv)
            .add(
                &[vendor::CKM_P11BRIDGE_VAULT_ENCRYPT],
                128,
                256,
                CKF_ENCRYPT | CKF_DECRYPT,
            )
            .add(&[vendor::CKM_P11BRIDGE_VAULT_REWRAP], 128, 256, CKF_ENCRYPT)
            .rsa_and_ec_key_pair_generation()
            .add(
                &[CKM_EC_EDWARDS_KEY_PAIR_GEN],
                255,
                255,
                CKF_GENERATE_KEY_PAIR,
            )
            .add(&[CKM_AES_KEY_GEN], 16, 32, CKF_GENERATE)
            .add(&[CKM_GENERIC_SECRET_KEY_GEN], 16, 64, CKF_GENERATE)
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
        self.read(keys.iter().map(|l| l.name.clone()).collect())
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
            let v = s.transit_post(&path, body, CKR_DATA_INVALID)?;
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
        let v = s.transit_post(
            &format!("decrypt/{}", key.name),
            json!({"ciphertext": ciphertext}),
            CKR_ENCRYPTED_DATA_INVALID,
        )?;
        plaintext(&v)
    }

    fn mac(&self, key: &RemoteKey, hash: Hash, data: &[u8]) -> Result<Vec<u8>> {
        let s = &self.0;
        let v = s.transit_post(
            &format!("hmac/{}/{}", key.name, hash_name(hash)),
            json!({"input": B64.encode(data)}),
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
            let b = with_context(json!({"ciphertext": ct}), ctx);
            let v = s.transit_post(&format!("rewrap/{}", key.name), b, CKR_DATA_INVALID)?;
            return Ok(field(&v, "ciphertext")?.as_bytes().to_vec());
        }
        let mut b = json!({"plaintext": B64.encode(pt)});
        // The version the token shows: the ciphertext's length is then exactly what a length query answered.
        if let Some(v) = key.version {
            b["key_version"] = json!(v);
        }
        let b = with_context(b, ctx);
        // Not idempotent in effect (a new nonce each time) but harmless to repeat.
        let v = s.transit_post(&format!("encrypt/{}", key.name), b, CKR_DATA_LEN_RANGE)?;
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
        let b = with_context(json!({"ciphertext": ct}), ctx);
        let v = s.transit_post(
            &format!("decrypt/{}", key.name),
            b,
            CKR_ENCRYPTED_DATA_INVALID,
        )?;
        plaintext(&v)
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
        let v = s.transit_post(
            &format!("random/{n}"),
            json!({"format": "base64"}),
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

    /// The addresses, each with the proxy its requests go through (`https://n1:8200 via proxy http://p:3128`).
    fn endpoint(&self) -> String {
        let s = &self.0;
        s.addresses
            .iter()
            .map(|a| format!("{a}{}", s.proxies.via(a)))
            .collect::<Vec<_>>()
            .join(", ")
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
            .remote
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
        if s.cfg.remote.certificates.contains_key(&key.name) {
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
        if !s.cfg.remote.allow_destroy {
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

    #[test]
    fn the_http_client_with_a_proxy_installs_nothing_process_wide() {
        let t: toml::Table = toml::from_str(
            "kind = \"vault-transit\"\naddress = \"https://127.0.0.1:1\"\ntoken = \"x\"\nkeys = [\"k\"]\nproxy = \"http://u:pw@127.0.0.1:2\"",
        )
        .unwrap();
        let v = VaultService::from_config("v", &t, &BuildContext::default()).unwrap();
        assert!(v.http().is_ok());
        assert_eq!(
            v.proxies.via("https://127.0.0.1:1"),
            " via proxy http://127.0.0.1:2"
        );
        assert!(rustls::crypto::CryptoProvider::get_default().is_none());
        let t: toml::Table = toml::from_str(
            "kind = \"vault-transit\"\naddress = \"https://127.0.0.1:1\"\ntoken = \"x\"\nkeys = [\"k\"]\nproxy = \"socks5://u:pw@h:1\"",
        )
        .unwrap();
        let e = VaultService::from_config("v", &t, &BuildContext::default())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("backend.v.proxy: ") && !e.contains("pw"), "{e}");
    }
}
