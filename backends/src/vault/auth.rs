//! Logging in to Vault: the configured token, AppRole, Kubernetes or AWS IAM (through vaultrs; the AWS request is
//! signed by `aws_iam.rs`), renewal before the lease ends, and a fresh login when the token is refused.

use super::*;

/// The token in use and when it must be renewed.
pub(super) struct TokenState {
    pub(super) token: Zeroizing<String>,
    /// When to renew (2/3 of the lease); `None`: never expires.
    pub(super) renew_at: Option<Instant>,
    pub(super) renewable: bool,
}

impl VaultService {
    pub(super) fn vault_client(
        &self,
        addr: &str,
        token: &str,
    ) -> Result<vaultrs::client::VaultClient> {
        let settings = vaultrs::client::VaultClientSettingsBuilder::default()
            .address(addr)
            .token(token)
            .namespace(self.cfg.namespace.clone())
            .build()
            .map_err(|e| Error::with(CKR_GENERAL_ERROR, format!("vault client: {e}")))?;
        let http = self.http()?;
        Ok(vaultrs::client::VaultClient {
            http: rustify::clients::reqwest::Client::new(addr, http),
            middle: vaultrs::api::EndpointMiddleware {
                token: token.to_string(),
                version: "v1".into(),
                wrap: None,
                namespace: self.cfg.namespace.clone(),
            },
            settings,
        })
    }

    /// Logs in (AppRole, Kubernetes, AWS IAM) or takes the configured token. A refusal or an unreadable secret is
    /// `Fault::Login` in words (which method, which mount, Vault's answer); a node that does not answer is
    /// `Fault::Unreachable` (the next node may).
    pub(super) async fn authenticate(&self, addr: &str) -> std::result::Result<TokenState, Fault> {
        if let Some(t) = &self.cfg.token {
            let t = t.resolve().map_err(|e| {
                Fault::Login(format!(
                    "token = \"{}\" cannot be read: {}",
                    t.describe(),
                    e.cause().unwrap_or("unreadable")
                ))
            })?;
            return Ok(TokenState {
                token: Zeroizing::new(String::from_utf8_lossy(t.expose()).into_owned()),
                renew_at: None,
                renewable: false,
            });
        }
        let client = self
            .vault_client(addr, "")
            .map_err(|e| Fault::Login(e.cause().unwrap_or("vault client").to_string()))?;
        let base = addr.trim_end_matches('/');
        let (what, info) = if let (Some(role), Some(secret)) =
            (&self.cfg.role_id, &self.cfg.secret_id)
        {
            let what = format!(
                "AppRole login (POST {base}/v1/auth/{}/login)",
                self.cfg.approle_mount
            );
            let secret = secret.resolve().map_err(|e| {
                Fault::Login(format!(
                    "{what}: secret_id = \"{}\" cannot be read: {}",
                    secret.describe(),
                    e.cause().unwrap_or("unreadable")
                ))
            })?;
            let secret = String::from_utf8_lossy(secret.expose()).into_owned();
            let r = vaultrs::auth::approle::login(&client, &self.cfg.approle_mount, role, &secret)
                .await;
            drop(Zeroizing::new(secret));
            (what, r)
        } else if let Some(role) = &self.cfg.aws_role {
            let as_role = if role.is_empty() {
                "as the role Vault names after the IAM principal".to_string()
            } else {
                format!("as role \"{role}\"")
            };
            let what = format!(
                "AWS IAM login {as_role} (POST {base}/v1/auth/{}/login)",
                self.cfg.aws_mount
            );
            let signed = aws_iam::signed_login(&self.cfg)
                .await
                .map_err(|e| Fault::Login(format!("{what}: {e}")))?;
            let r = vaultrs::auth::aws::iam_login(
                &client,
                &self.cfg.aws_mount,
                "POST",
                &signed.url,
                &signed.headers,
                &signed.body,
                (!role.is_empty()).then_some(role.as_str()),
            )
            .await;
            (what, r)
        } else {
            let role = self.cfg.kubernetes_role.clone().unwrap_or_default();
            let what = format!(
                "Kubernetes login as role \"{role}\" (POST {base}/v1/auth/{}/login)",
                self.cfg.kubernetes_mount
            );
            let jwt = std::fs::read_to_string(&self.cfg.kubernetes_jwt_path).map_err(|e| {
                Fault::Login(format!(
                    "{what}: kubernetes_jwt_path {}: {e}",
                    self.cfg.kubernetes_jwt_path.display()
                ))
            })?;
            let jwt = Zeroizing::new(jwt.trim().to_string());
            let r =
                vaultrs::auth::kubernetes::login(&client, &self.cfg.kubernetes_mount, &role, &jwt)
                    .await;
            (what, r)
        };
        let info = info.map_err(|e| match vaultrs_answer(&e) {
            // Vault answered: the login was refused (on one line: an AWS refusal quotes STS's XML answer).
            Some(answer) => Fault::Login(format!("{what}: {}", one_line(&answer))),
            // No answer from this node.
            None => Fault::Unreachable(crate::diag::error_chain(&e)),
        });
        let info = match info {
            Ok(i) => i,
            Err(Fault::Unreachable(chain)) => {
                let why = self.proxies.explain(base, &chain, self.deadline()).await;
                return Err(Fault::Unreachable(format!(
                    "{what}{}: {why}",
                    self.proxies.via(base)
                )));
            }
            Err(f) => return Err(f),
        };
        tracing::info!(backend = %self.name, lease_s = info.lease_duration, "logged in to vault");
        Ok(TokenState {
            token: Zeroizing::new(info.client_token),
            renew_at: (info.lease_duration > 0)
                .then(|| Instant::now() + Duration::from_secs(info.lease_duration * 2 / 3)),
            renewable: info.renewable,
        })
    }

    /// The token to use now: logs in on first use, renews (or logs in again) when 2/3 of the lease has passed.
    pub(super) async fn current_token(
        &self,
        addr: &str,
        force_login: bool,
    ) -> std::result::Result<Zeroizing<String>, Fault> {
        if !force_login {
            if let Some(t) = self.token.read().as_ref() {
                if t.renew_at.is_none_or(|at| Instant::now() < at) {
                    return Ok(t.token.clone());
                }
            }
        }
        let _g = self.login.lock().await;
        // Someone else may have done it meanwhile.
        if !force_login {
            if let Some(t) = self.token.read().as_ref() {
                if t.renew_at.is_none_or(|at| Instant::now() < at) {
                    return Ok(t.token.clone());
                }
            }
        }
        let renewable = self
            .token
            .read()
            .as_ref()
            .map(|t| (t.renewable, t.token.clone()));
        if let (false, Some((true, tok))) = (force_login, renewable) {
            let client = self
                .vault_client(addr, &tok)
                .map_err(|e| Fault::Login(e.cause().unwrap_or("vault client").to_string()))?;
            if let Ok(info) = vaultrs::token::renew_self(&client, None).await {
                let st = TokenState {
                    token: tok.clone(),
                    renew_at: (info.lease_duration > 0)
                        .then(|| Instant::now() + Duration::from_secs(info.lease_duration * 2 / 3)),
                    renewable: info.renewable,
                };
                *self.token.write() = Some(st);
                tracing::debug!(backend = %self.name, "vault token renewed");
                return Ok(tok);
            }
        }
        let st = self.authenticate(addr).await?;
        let tok = st.token.clone();
        *self.token.write() = Some(st);
        Ok(tok)
    }
}
