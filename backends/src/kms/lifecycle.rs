//! Keys created and deleted through the bridge: `CreateKey` + `CreateAlias` under `created_alias_prefix`, and
//! `ScheduleKeyDeletion` with the aliases that named the key. These calls go to one region and are never re-sent.

use super::*;

impl Kms {
    /// Creates a key (`C_GenerateKey*`), aliased `created_alias_prefix` + label.
    pub(super) fn create_key(&self, spec: &GenerateSpec) -> Result<String> {
        let s = &self.0;
        let label = spec.label.clone();
        if label.is_empty()
            || label.len() > 250
            || label.starts_with("aws/")
            || !label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/_-".contains(c))
        {
            return Err(Error::with(
                CKR_ATTRIBUTE_VALUE_INVALID,
                "CKA_LABEL becomes the KMS alias: [A-Za-z0-9/_-]+, not starting with aws/",
            ));
        }
        let (key_spec, usage) = match spec.material {
            GenerateKind::Rsa { bits } => (
                match bits {
                    2048 => KeySpec::Rsa2048,
                    3072 => KeySpec::Rsa3072,
                    4096 => KeySpec::Rsa4096,
                    _ => return Err(Error::new(CKR_KEY_SIZE_RANGE)),
                },
                if spec.sign {
                    KeyUsageType::SignVerify
                } else if spec.decrypt {
                    KeyUsageType::EncryptDecrypt
                } else {
                    return Err(Error::with(
                        CKR_TEMPLATE_INCONSISTENT,
                        "a KMS RSA key signs (CKA_SIGN) or decrypts (CKA_DECRYPT)",
                    ));
                },
            ),
            GenerateKind::Ec { curve } => (
                match curve {
                    Curve::P256 => KeySpec::EccNistP256,
                    Curve::P384 => KeySpec::EccNistP384,
                    Curve::P521 => KeySpec::EccNistP521,
                    Curve::Secp256k1 => KeySpec::EccSecgP256K1,
                },
                KeyUsageType::SignVerify,
            ),
            GenerateKind::Aes { bits: 256 } => {
                (KeySpec::SymmetricDefault, KeyUsageType::EncryptDecrypt)
            }
            GenerateKind::Aes { .. } => return Err(Error::new(CKR_KEY_SIZE_RANGE)),
            GenerateKind::Hmac { bits } => (
                match bits {
                    224 => KeySpec::Hmac224,
                    256 => KeySpec::Hmac256,
                    384 => KeySpec::Hmac384,
                    512 => KeySpec::Hmac512,
                    _ => return Err(Error::new(CKR_KEY_SIZE_RANGE)),
                },
                KeyUsageType::GenerateVerifyMac,
            ),
            GenerateKind::Ed25519 => return Err(Error::new(CKR_MECHANISM_INVALID)),
        };
        // Under created_alias_prefix, so that every later process finds the key again (see `selection`).
        let prefix = s.cfg.created_alias_prefix.as_str();
        let plain = format!("alias/{label}");
        let alias = if prefix.is_empty() {
            plain.clone()
        } else {
            format!("{prefix}{label}")
        };
        // Everything below goes to one region, the first healthy one, and is never re-sent to another.
        let home = Target::Only(s.home(s.background()));
        // Never put an existing alias on a new key, nor give a second key the label of one that exists.
        let mut taken = vec![alias.clone()];
        if plain != alias {
            taken.push(plain);
        }
        for a in taken {
            let probe = a.clone();
            match self.call(home, CKR_DEVICE_ERROR, move |c, _| {
                let a = probe.clone();
                async move {
                    c.describe_key().key_id(a).send().await.map_err(fault)?;
                    Ok(())
                }
            }) {
                Ok(()) => {
                    return Err(Error::with(
                        CKR_ATTRIBUTE_VALUE_INVALID,
                        format!("the alias {a} exists (CKA_LABEL {label})"),
                    ))
                }
                Err(e) if e.rv() == CKR_KEY_HANDLE_INVALID => {}
                Err(e) => return Err(e),
            }
        }
        let mut tags = vec![Tag::builder()
            .tag_key("p11bridge-created")
            .tag_value("true")
            .build()
            .map_err(|e| Error::with(CKR_GENERAL_ERROR, e.to_string()))?];
        for (k, v) in &s.cfg.tags {
            tags.push(
                Tag::builder()
                    .tag_key(k)
                    .tag_value(v)
                    .build()
                    .map_err(|e| Error::with(CKR_GENERAL_ERROR, e.to_string()))?,
            );
        }
        let (arn, key_id) = self.call(home, CKR_TEMPLATE_INCONSISTENT, move |c, _| {
            let (key_spec, usage, tags) = (key_spec.clone(), usage.clone(), tags.clone());
            async move {
                let r = c
                    .create_key()
                    .key_spec(key_spec)
                    .key_usage(usage)
                    .description("created through p11bridge")
                    .set_tags((!tags.is_empty()).then_some(tags))
                    .customize()
                    .config_override(no_retry())
                    .send()
                    .await
                    .map_err(fault)?;
                let m = r
                    .key_metadata()
                    .ok_or_else(|| Fault::Unreachable("CreateKey answered no metadata".into()))?;
                Ok((
                    m.arn().unwrap_or(m.key_id()).to_string(),
                    m.key_id().to_string(),
                ))
            }
        })?;
        let (a, k) = (alias.clone(), key_id.clone());
        let aliased = self.call(home, CKR_ATTRIBUTE_VALUE_INVALID, move |c, _| {
            let (a, k) = (a.clone(), k.clone());
            async move {
                c.create_alias()
                    .alias_name(a)
                    .target_key_id(k)
                    .customize()
                    .config_override(no_retry())
                    .send()
                    .await
                    .map_err(fault)?;
                Ok(())
            }
        });
        if let Err(e) = aliased {
            // Do not leave a nameless key behind.
            let _ = self.schedule_deletion(home, &key_id, CKR_DEVICE_ERROR);
            return Err(e);
        }
        if !s.cfg.remote.discover && prefix.is_empty() {
            s.created.lock().push(arn.clone());
        }
        tracing::info!(backend = %s.name, key = %arn, %alias, "kms key created");
        Ok(arn)
    }

    /// Schedules a key's deletion (`C_DestroyObject`) and removes the aliases that gave it its label.
    pub(super) fn delete_key(&self, key: &RemoteKey) -> Result<()> {
        let s = &self.0;
        if !s.cfg.remote.allow_destroy {
            return Err(Error::new(CKR_ACTION_PROHIBITED));
        }
        // ScheduleKeyDeletion is not a cross-account operation: the key id (the ARN's last part) names the key.
        let id = key
            .name
            .rsplit_once(":key/")
            .map_or(key.name.clone(), |(_, id)| id.to_string());
        // Deletion goes to one region, never re-sent: the key's own (its ARN's), else the first healthy one.
        let region = arn_region(&key.name)
            .and_then(|r| s.regions.iter().position(|x| x.name.as_deref() == Some(r)))
            .unwrap_or_else(|| s.home(s.background()));
        let home = Target::Only(region);
        self.schedule_deletion(home, &id, CKR_ACTION_PROHIBITED)?;
        // Free the label for a new key (the alias would keep pointing at a key pending deletion): the key's own
        // aliases that gave it its label.
        let prefix = s.cfg.created_alias_prefix.clone();
        let plain = format!("alias/{}", key.label);
        let kid = key
            .name
            .rsplit_once(":key/")
            .map_or(key.name.clone(), |(_, id)| id.to_string());
        let own = self
            .call(home, CKR_DEVICE_ERROR, move |c, _| {
                let kid = kid.clone();
                async move {
                    let r = c.list_aliases().key_id(&kid).send().await.map_err(fault)?;
                    // Only this key's (whatever the server does with the filter).
                    Ok(r.aliases()
                        .iter()
                        .filter(|a| a.target_key_id() == Some(kid.as_str()))
                        .filter_map(|a| a.alias_name().map(str::to_owned))
                        .collect::<Vec<String>>())
                }
            })
            .unwrap_or_default();
        for alias in own
            .into_iter()
            .filter(|a| *a == plain || (!prefix.is_empty() && a.starts_with(&prefix)))
        {
            let _ = self.call(home, CKR_DEVICE_ERROR, move |c, _| {
                let alias = alias.clone();
                async move {
                    c.delete_alias()
                        .alias_name(alias)
                        .customize()
                        .config_override(no_retry())
                        .send()
                        .await
                        .map_err(fault)?;
                    Ok(())
                }
            });
        }
        s.created.lock().retain(|k| *k != key.name);
        Ok(())
    }

    /// `ScheduleKeyDeletion` of key `id` after `deletion_window_days`, in `home` only and never retried.
    pub(super) fn schedule_deletion(
        &self,
        home: Target<'_>,
        id: &str,
        bad_input: CK_RV,
    ) -> Result<()> {
        let days = self.0.cfg.deletion_window_days;
        let id = id.to_string();
        self.call(home, bad_input, move |c, _| {
            let id = id.clone();
            async move {
                c.schedule_key_deletion()
                    .key_id(id)
                    .pending_window_in_days(days)
                    .customize()
                    .config_override(no_retry())
                    .send()
                    .await
                    .map_err(fault)?;
                Ok(())
            }
        })
    }
}
