//! Which KMS keys are on the token and what they look like: the selection (`keys`, discovery with a tag filter,
//! aliases under `created_alias_prefix`), reading each key (`GetPublicKey`, else `DescribeKey`), and turning it into
//! a `RemoteKey` with its certificate.

use super::*;

/// `CKA_ID`: the 16 bytes of the key's UUID (multi-Region keys: of the part after `mrk-`); else a hash.
pub(super) fn key_id_bytes(key_id: &str) -> Vec<u8> {
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

/// One selected key as read from KMS.
pub(super) struct Described {
    pub(super) meta: aws_sdk_kms::types::KeyMetadata,
    pub(super) public_key: Option<Vec<u8>>,
    /// The alias it was selected by, if any.
    pub(super) selected_alias: Option<String>,
}

/// The alias a key was selected by (`alias/NAME` or an alias ARN), if it was.
pub(super) fn selected_alias(sel: &str) -> Option<String> {
    sel.rsplit_once(":alias/")
        .map(|(_, a)| format!("alias/{a}"))
        .or_else(|| sel.starts_with("alias/").then(|| sel.to_string()))
}

/// A key as a successful `GetPublicKey` describes it: enabled (KMS refuses `GetPublicKey` for keys in any other
/// state), customer managed (AWS managed keys are symmetric, for which it fails). `None` when the answer lacks
/// what is needed (`KeyId` is the key ARN and `KeySpec` is there in AWS's answer; else `DescribeKey` is asked).
pub(super) fn from_public_key(
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

impl Kms {
    /// Every key of the token, read in the first healthy region.
    pub(super) fn fetch(&self) -> Result<Vec<RemoteKey>> {
        self.read_keys(None)
    }

    /// The keys of the token as `ListKeys` and `ListAliases` name them (`RemoteService::list_keys`), with labels
    /// and ids and nothing else. Only for `discover = true` without `tags` or `keys`, in one region: a tag filter
    /// needs each key's tags, and a configured alias or ARN is resolved by reading the key.
    pub(super) fn list(&self) -> Result<Option<Vec<Listed>>> {
        let s = self.0.clone();
        if !s.cfg.remote.discover
            || !s.cfg.tags.is_empty()
            || !s.cfg.remote.keys.is_empty()
            || s.regions.len() != 1
        {
            return Ok(None);
        }
        let name = s.name.clone();
        let background = s.background();
        let regions = s.candidates(Target::Any);
        let deadline = s.deadline() * 2;
        let me = s.clone();
        let (aliases, keys) = runtime::run(deadline, async move {
            me.failover(
                regions,
                background,
                deadline,
                move |c, _region| async move {
                    let aliases = Self::aliases(&c).await?;
                    Ok((aliases, Self::key_list(&c).await?))
                },
            )
            .await
            .map_err(|f| map_fault(&name, f, CKR_DEVICE_ERROR))
        })?;
        let mut out: Vec<Listed> = Vec::new();
        for (arn, key_id) in keys {
            // Without the ARN (the name a read key gets) the keys are read in full instead.
            let Some(arn) = arn else { return Ok(None) };
            let key_id = key_id.unwrap_or_else(|| {
                arn.rsplit_once(":key/")
                    .map_or(arn.clone(), |x| x.1.to_string())
            });
            let names = aliases.get(&key_id).cloned().unwrap_or_default();
            if out.iter().any(|l| l.name == arn) {
                continue;
            }
            out.push(Listed {
                label: self.label_of(names.first().map(String::as_str), &key_id),
                id: key_id_bytes(&key_id),
                name: arn,
                aliases: names,
            });
        }
        Ok(Some(out))
    }

    /// Reads listed keys (`RemoteService::fetch_listed`): as a first enumeration reads each key.
    pub(super) fn read_listed(&self, keys: &[Listed]) -> Result<Vec<RemoteKey>> {
        self.read_keys(Some(keys.to_vec()))
    }

    /// `CKA_LABEL`: the alias without `alias/` (under `created_alias_prefix`: without the prefix), else the key id.
    pub(super) fn label_of(&self, alias: Option<&str>, key_id: &str) -> String {
        let created = self.0.cfg.created_alias_prefix.as_str();
        alias
            .map(|a| match a.strip_prefix(created) {
                Some(l) if !created.is_empty() && !l.is_empty() => l.to_string(),
                _ => a.trim_start_matches("alias/").to_string(),
            })
            .unwrap_or_else(|| key_id.to_string())
    }

    /// Reads the selected keys (`None`: the configuration's selection, with `ListAliases` and `ListKeys`; else
    /// these listed keys), in the first healthy region.
    fn read_keys(&self, listed: Option<Vec<Listed>>) -> Result<Vec<RemoteKey>> {
        let lazy = listed.is_some();
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
                let listed = listed.clone();
                async move {
                    let (aliases, sel) = match listed {
                        // Listed keys: their aliases came with the listing.
                        Some(l) => (
                            l.iter()
                                .filter_map(|l| {
                                    let (_, id) = l.name.rsplit_once(":key/")?;
                                    Some((id.to_string(), l.aliases.clone()))
                                })
                                .collect(),
                            l.into_iter().map(|l| l.name).collect(),
                        ),
                        None => {
                            let aliases = Self::aliases(&c).await?;
                            let sel = Self::selection(&me, &c, &aliases).await?;
                            (aliases, sel)
                        }
                    };
                    // ARNs as they are named in this region (multi-Region keys: same id everywhere).
                    let sel: Vec<String> = sel
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
        let configured = &s.cfg.remote.keys;
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
        if !lazy {
            *s.resolved.lock() = resolved;
        }
        tracing::debug!(backend = %name, n = keys.len(), "kms keys fetched");
        Ok(keys)
    }

    /// Every selected key id (or alias / ARN as configured): `keys` first (in order), then the discovered keys,
    /// then every alias under `created_alias_prefix` (from the `ListAliases` answer, no request of its own).
    pub(super) async fn selection(
        s: &KmsService,
        c: &Client,
        aliases: &HashMap<String, Vec<String>>,
    ) -> std::result::Result<Vec<String>, Fault> {
        let mut out: Vec<String> = s.cfg.remote.keys.clone();
        if s.cfg.remote.discover {
            out.extend(
                Self::key_list(c)
                    .await?
                    .into_iter()
                    .filter_map(|(arn, id)| arn.or(id)),
            );
        }
        let prefix = &s.cfg.created_alias_prefix;
        if !s.cfg.remote.discover && !prefix.is_empty() {
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

    /// Every key of the account and region (`ListKeys`, all pages): its ARN and key id, as KMS answers them.
    async fn key_list(
        c: &Client,
    ) -> std::result::Result<Vec<(Option<String>, Option<String>)>, Fault> {
        let mut keys = Vec::new();
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
                keys.push((
                    k.key_arn().map(str::to_owned),
                    k.key_id().map(str::to_owned),
                ));
            }
            match (r.truncated(), r.next_marker()) {
                (true, Some(m)) => marker = Some(m.to_string()),
                _ => break,
            }
        }
        Ok(keys)
    }

    pub(super) async fn aliases(
        c: &Client,
    ) -> std::result::Result<HashMap<String, Vec<String>>, Fault> {
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
    pub(super) async fn describe_one(
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
            .remote
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
    pub(super) fn to_key(
        &self,
        d: Described,
        aliases: &HashMap<String, Vec<String>>,
    ) -> Option<RemoteKey> {
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
        let label = self.label_of(alias.as_deref(), &key_id);
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
            destroyable: s.cfg.remote.allow_destroy,
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
    pub(super) fn certificate(
        &self,
        key: &RemoteKey,
        names: &[String],
    ) -> Option<crate::remote::Certificate> {
        let s = &self.0;
        let configured = names.iter().find_map(|n| s.cfg.remote.certificates.get(n));
        s.certs.for_key(
            &s.name,
            configured.map(PathBuf::as_path),
            &key.name,
            key,
            |req| self.sign(key, req),
        )
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
}
