//! Which transit keys are on the token and what they look like: configured names, discovery (`LIST`), keys
//! created through the bridge (`created_prefix`), each key read and turned into a `RemoteKey` with its certificate.

use super::*;

impl VaultService {
    pub(super) fn key_id(&self, key: &str) -> Vec<u8> {
        let mut h = sha2::Sha256::new();
        h.update(b"vault-transit\0");
        h.update(self.cfg.mount.trim_matches('/').as_bytes());
        h.update(b"\0");
        h.update(key.as_bytes());
        h.finalize()[..16].to_vec()
    }

    /// `CKA_LABEL` of a transit key: its name; a key created through the bridge shows the label it was created with.
    pub(super) fn label_of(&self, name: &str) -> String {
        match name.strip_prefix(self.cfg.created_prefix.as_str()) {
            Some(l) if !self.cfg.created_prefix.is_empty() && !l.is_empty() => l,
            _ => name,
        }
        .to_string()
    }

    /// Reads one key and turns it into a `RemoteKey` (`None` for types the bridge does not expose).
    pub(super) fn describe(self: &Arc<Self>, name: &str, data: &Value) -> Option<RemoteKey> {
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
        let mut key = RemoteKey {
            name: name.to_string(),
            label: self.label_of(name),
            id: self.key_id(name),
            material,
            usage,
            version: Some(latest),
            mechanisms,
            cert: None,
            destroyable: self.cfg.remote.allow_destroy,
        };
        if !key.material.is_secret() {
            key.cert = self.certificate(&key);
        }
        Some(key)
    }

    /// The key's certificate: configured, imported, cached, or generated now (signed by the key through Vault).
    pub(super) fn certificate(
        self: &Arc<Self>,
        key: &RemoteKey,
    ) -> Option<crate::remote::Certificate> {
        self.certs.for_key(
            &self.name,
            self.cfg
                .remote
                .certificates
                .get(&key.name)
                .map(PathBuf::as_path),
            &self.cert_name(&key.name),
            key,
            |req| Vault(self.clone()).sign(key, req),
        )
    }

    /// A key's name in the certificate cache and store.
    pub(super) fn cert_name(&self, key: &str) -> String {
        format!("{}/{}", self.cfg.mount, key)
    }

    /// Where the backend is, for people: its addresses.
    pub(super) fn endpoint(&self) -> String {
        self.addresses.join(", ")
    }

    /// Tells the person about a key named in `keys` that is not on the token, once per process and cause.
    pub(super) fn key_missing(&self, key: &str, why: &str) {
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
    pub(super) fn created_names(self: &Arc<Self>) -> Result<(Vec<String>, Option<String>)> {
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
    pub(super) fn list_keys(self: &Arc<Self>) -> Result<Vec<String>> {
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
    pub(super) fn key_names(self: &Arc<Self>) -> Result<(Vec<String>, Option<String>)> {
        let mut refused = None;
        let mut names: Vec<String> = if self.cfg.remote.discover {
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
        for k in self
            .cfg
            .remote
            .keys
            .iter()
            .chain(self.created.lock().iter())
        {
            if !names.contains(k) {
                names.push(k.clone());
            }
        }
        Ok((names, refused))
    }
}

/// A public key as Vault shows it: PEM SubjectPublicKeyInfo, or base64 of a raw Ed25519 key.
pub(super) fn public_key(pk: &str) -> Option<KeyMaterial> {
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

impl Vault {
    /// Every key of the token (`RemoteService::fetch_keys`).
    pub(super) fn fetch(&self) -> Result<Vec<RemoteKey>> {
        let (names, list_refused) = self.0.key_names()?;
        let keys = self.read(names)?;
        if let Some(why) = list_refused {
            let me = &self.0;
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
        Ok(keys)
    }

    /// The keys of the token as named by the configuration and one `LIST` (`RemoteService::list_keys`): the label
    /// and id come from the name. `None` when the `LIST` was refused (the full read says why, once the configured
    /// keys could be read).
    pub(super) fn list(&self) -> Result<Option<Vec<Listed>>> {
        let me = &self.0;
        let (names, list_refused) = me.key_names()?;
        if list_refused.is_some() {
            return Ok(None);
        }
        Ok(Some(
            names
                .into_iter()
                .map(|n| Listed {
                    label: me.label_of(&n),
                    id: me.key_id(&n),
                    name: n,
                    aliases: Vec::new(),
                })
                .collect(),
        ))
    }

    /// Reads these keys (`GET <mount>/keys/NAME`, at most 16 at a time) and describes them.
    pub(super) fn read(&self, names: Vec<String>) -> Result<Vec<RemoteKey>> {
        let me = self.0.clone();
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
                    if me.cfg.remote.keys.contains(&name) {
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
                if me.cfg.remote.keys.contains(&name) {
                    me.key_missing(&name, e.cause().unwrap_or("permission denied"));
                }
            }
        }
        // Describing reads (or, the first time, generates) each key's certificate: 8 at a time.
        let described = runtime::par_map(found, 8, |(name, v)| {
            let k = v.get("data").and_then(|d| me.describe(&name, d));
            if k.is_none() {
                tracing::debug!(backend = %me.name, key = %name, "key type not exposed");
                if me.cfg.remote.keys.contains(&name) {
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
}
