//! One transit request across the configured addresses: the walk over the healthy nodes (`health::Endpoints`,
//! standby redirects followed, retries of idempotent requests), the background prober, and what Vault's answers
//! and faults become (`CK_RV`s, one-line messages).

use super::*;
use crate::remote::blocking::Failure;

/// What went wrong with one request, before it becomes a `CK_RV` for the operation at hand. Every text names
/// the node (its URL) or the request (`HTTP 403 on GET /v1/transit/keys/x: permission denied`).
#[derive(Debug)]
pub(super) enum Fault {
    /// No node answered (connection refused, reset, timeout, TLS failure): the node's URL and the OS/TLS error.
    Unreachable(String),
    /// An HTTP error status, with the request and Vault's messages (`HTTP 403 on GET /v1/...: ...`).
    Status(u16, String),
    /// Logging in failed: a secret reference that cannot be read, or Vault refused the login.
    Login(String),
}

/// Vault's own answer inside a vaultrs error (status and `errors`), if Vault answered at all.
pub(super) fn vaultrs_answer(e: &vaultrs::error::ClientError) -> Option<String> {
    use rustify::errors::ClientError as R;
    use vaultrs::error::ClientError as V;
    match e {
        V::APIError { code, errors } => Some(format!(
            "HTTP {code}: {}",
            if errors.is_empty() {
                "(no message)".to_string()
            } else {
                errors.join("; ")
            }
        )),
        V::RestClientError {
            source: R::ServerResponseError { code, content },
        } => Some(format!(
            "HTTP {code}: {}",
            content
                .as_deref()
                .map(vault_errors)
                .unwrap_or_else(|| "(no message)".into())
        )),
        _ => None,
    }
}

/// One of Vault's messages on one line: Go's multierror ("1 error occurred:\n\t* permission denied\n\n") as its
/// items joined with "; ", other line breaks as spaces.
pub(super) fn one_line(m: &str) -> String {
    let items: Vec<&str> = m
        .lines()
        .filter_map(|l| l.trim().strip_prefix("* "))
        .map(str::trim)
        .collect();
    if m.trim_start()
        .split_once(' ')
        .is_some_and(|(n, rest)| n.parse::<u32>().is_ok() && rest.starts_with("error"))
        && !items.is_empty()
    {
        return items.join("; ");
    }
    m.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Vault's `errors` list of an error body, joined; else the body's start.
pub(super) fn vault_errors(text: &str) -> String {
    let listed = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.get("errors").and_then(Value::as_array).cloned())
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().map_or_else(|| x.to_string(), one_line))
                .collect::<Vec<_>>()
                .join("; ")
        });
    match listed {
        Some(m) if !m.is_empty() => m,
        Some(_) => "(no message)".into(),
        None => {
            let t: String = text.trim().chars().take(200).collect();
            if t.is_empty() {
                "(no message)".into()
            } else {
                t
            }
        }
    }
}

impl VaultService {
    pub(super) fn deadline(&self) -> Duration {
        self.cfg.remote.deadline()
    }

    /// One HTTP client for the backend (connection pool shared by every session), made on first use.
    pub(super) fn http(&self) -> Result<reqwest::Client> {
        self.http
            .get_or_init(|| build_http(&self.cfg, self.ca.as_ref(), &self.proxies))
            .clone()
            .map_err(|e| Error::with(CKR_DEVICE_ERROR, format!("cannot set up TLS: {e}")))
    }

    /// The caller-thread client for a request to `addr`, if this request may use it: the caller's own thread
    /// drives the call (`runtime::may_block`), no proxy stands in the way (proxied requests keep the async client,
    /// which tunnels and explains refusals), no client certificate is configured, and the method is a standard one
    /// (Vault's `LIST` is not: the async client sends it).
    fn lean(
        &self,
        addr: &str,
        method: &reqwest::Method,
    ) -> Option<&crate::remote::blocking::Client> {
        let standard = [
            reqwest::Method::GET,
            reqwest::Method::POST,
            reqwest::Method::PUT,
            reqwest::Method::DELETE,
        ];
        if !runtime::may_block()
            || !standard.contains(method)
            || self.proxies.for_url(addr).is_some()
        {
            return None;
        }
        self.lean
            .get_or_init(|| {
                if self.cfg.client_cert.is_some() || self.cfg.client_key.is_some() {
                    return None;
                }
                let roots = match self.ca.as_ref() {
                    Some(ca) => ca.certs.clone(),
                    None => crate::remote::tls::system_root_certs(),
                };
                Some(crate::remote::blocking::Client::new(
                    &roots,
                    self.cfg.remote.connect_timeout(),
                ))
            })
            .as_ref()
    }

    /// Starts the background prober of this process if there are several addresses. `true` if one runs (callers
    /// then never probe an open address themselves).
    pub(super) fn background(self: &Arc<Self>) -> bool {
        health::background(self)
    }

    /// One transit request, with failover across addresses (the healthy ones in configured order, each capped at
    /// an equal share of the time left; standby redirects followed), one re-login after a 403 (for logins that can
    /// expire), and retries of idempotent requests on 429/5xx within the deadline.
    pub(super) async fn call(
        self: Arc<Self>,
        method: reqwest::Method,
        path: String,
        body: Option<Value>,
        idempotent: bool,
    ) -> std::result::Result<Value, Fault> {
        let http = self
            .http()
            .map_err(|e| Fault::Unreachable(e.cause().unwrap_or("HTTP client").to_string()))?;
        let background = self.background();
        let all: Vec<usize> = (0..self.addresses.len()).collect();
        let end = tokio::time::Instant::now() + self.deadline();
        let mut last = Fault::Unreachable("no address".into());
        let mut relogged = false;
        let mut attempt = 0u32;
        'nodes: for turn in self.health.walk(&all, background) {
            let idx = turn.index;
            let addr = &self.addresses[idx];
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            // A request that must not be repeated is never re-sent after a timeout (the node may have done it): it
            // gets all the time left.
            let share = if idempotent { turn.share(left) } else { left };
            let node_end = tokio::time::Instant::now() + share;
            let unwell = |why: String| {
                if self.health.unwell(idx) {
                    tracing::warn!(backend = %self.name, address = %addr, "address unhealthy: breaker open");
                    crate::diag::notice(&format!(
                        "backend \"{}\" (vault-transit): {addr} is down ({why}); calls go to the other addresses until it answers a probe",
                        self.name
                    ));
                }
                Fault::Unreachable(why)
            };
            loop {
                let token = match self.current_token(addr, false).await {
                    Ok(t) => t,
                    // An unreadable secret or a refused login is the same on every node.
                    Err(f @ Fault::Login(_)) => return Err(f),
                    Err(f) => {
                        last = unwell(match f {
                            Fault::Unreachable(m) => m,
                            other => format!("{other:?}"),
                        });
                        continue 'nodes;
                    }
                };
                let url = format!("{}/v1/{}", addr.trim_end_matches('/'), path);
                let mut headers = vec![("X-Vault-Token", token.as_str())];
                if let Some(ns) = &self.cfg.namespace {
                    headers.push(("X-Vault-Namespace", ns));
                }
                let answer = match self.lean(addr, &method) {
                    // The caller's thread writes the request and reads the answer itself, within the node's share.
                    Some(lean) => {
                        let json =
                            match &body {
                                Some(b) => Some(serde_json::to_vec(b).map_err(|e| {
                                    Fault::Unreachable(format!("request body: {e}"))
                                })?),
                                None => None,
                            };
                        let left = node_end.saturating_duration_since(tokio::time::Instant::now());
                        match lean.exchange(
                            &method,
                            &url,
                            &headers,
                            json.as_deref(),
                            left,
                            idempotent,
                        ) {
                            Ok(r) => Ok(r),
                            Err(Failure::Timeout) => Err(None),
                            Err(f) => Err(Some(f.describe())),
                        }
                    }
                    None => {
                        let mut rb = http.request(method.clone(), &url);
                        for (k, v) in &headers {
                            rb = rb.header(*k, *v);
                        }
                        if let Some(b) = &body {
                            rb = rb.json(b);
                        }
                        // The node's share of the deadline covers the request and reading the answer.
                        let exchange = async {
                            let resp = rb.send().await?;
                            let status = resp.status().as_u16();
                            Ok::<_, reqwest::Error>((status, resp.text().await.unwrap_or_default()))
                        };
                        match tokio::time::timeout_at(node_end, exchange).await {
                            Ok(Ok(r)) => Ok(r),
                            Ok(Err(e)) => Err(Some(crate::diag::error_chain(&e))),
                            Err(_) => Err(None),
                        }
                    }
                };
                let (status, text) = match answer {
                    Ok(r) => r,
                    Err(Some(chain)) => {
                        // Connection-level failure (refused, reset, TLS, a proxy's refusal): try the next node.
                        let left = end.saturating_duration_since(tokio::time::Instant::now());
                        let why = self.proxies.explain(addr, &chain, left).await;
                        last = unwell(format!("{addr}{}: {why}", self.proxies.via(addr)));
                        continue 'nodes;
                    }
                    Err(None) => {
                        last = unwell(format!(
                            "{addr}{}: no answer within {} ms (timeout)",
                            self.proxies.via(addr),
                            share.as_millis()
                        ));
                        if !idempotent {
                            return Err(last);
                        }
                        continue 'nodes;
                    }
                };
                if status != 502 && status != 503 {
                    // The node answered (a Vault error is an answer too).
                    if self.health.answered(idx) {
                        tracing::info!(backend = %self.name, address = %addr, "address healthy again");
                    }
                }
                if (200..300).contains(&status) {
                    if text.trim().is_empty() {
                        return Ok(Value::Null);
                    }
                    return serde_json::from_str(&text).map_err(|e| {
                        Fault::Status(
                            status,
                            format!("HTTP {status} on {method} /v1/{path}: not JSON: {e}"),
                        )
                    });
                }
                let mut said = vault_errors(&text);
                if status == 404 && said == "(no message)" {
                    said = "not found".into();
                }
                let msg = format!("HTTP {status} on {method} /v1/{path}: {said}");
                if status == 403 && !relogged && self.cfg.token.is_none() {
                    relogged = true;
                    let _ = self.current_token(addr, true).await;
                    continue;
                }
                if idempotent
                    && (status == 429 || status == 500 || status == 502 || status == 504)
                    && attempt < 3
                {
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt)).await;
                    continue;
                }
                if status == 503 || status == 502 {
                    // Sealed or standby without forwarding: another node may serve.
                    let _ = unwell(String::new());
                    last = Fault::Status(status, msg);
                    continue 'nodes;
                }
                return Err(Fault::Status(status, msg));
            }
        }
        Err(last)
    }

    /// Runs a request on the module's runtime within the deadline, mapping faults for a key operation.
    pub(super) fn op(
        self: &Arc<Self>,
        method: reqwest::Method,
        path: String,
        body: Option<Value>,
        idempotent: bool,
        bad_input: CK_RV,
    ) -> Result<Value> {
        let me = self.clone();
        let name = self.name.clone();
        runtime::run(self.deadline(), async move {
            me.call(method, path, body, idempotent)
                .await
                .map_err(|f| map_fault(&name, f, bad_input))
        })
    }

    /// `POST <mount>/<rest>` (idempotent) on the module's runtime within the deadline, faults mapped for a key
    /// operation (`bad_input`: what a 400 means for it).
    pub(super) fn transit_post(
        self: &Arc<Self>,
        rest: &str,
        body: Value,
        bad_input: CK_RV,
    ) -> Result<Value> {
        self.op(
            reqwest::Method::POST,
            self.transit(rest),
            Some(body),
            true,
            bad_input,
        )
    }

    pub(super) fn transit(&self, rest: &str) -> String {
        format!("{}/{}", self.cfg.mount.trim_matches('/'), rest)
    }
}

/// The background prober of a multi-address backend (see `health::probe_loop`): each address due for a probe gets
/// `GET /v1/sys/health` (unauthenticated); an active node (200) or a standby (429, 472, 473: it redirects or
/// forwards) closes its breaker, so calls return to it.
impl health::Probed for VaultService {
    fn endpoints(&self) -> &Endpoints {
        &self.health
    }

    fn probe_interval(&self) -> Duration {
        self.cfg.remote.probe_interval()
    }

    fn ready(&self) -> bool {
        self.http().is_ok()
    }

    async fn probe(self: Arc<Self>, i: usize) -> bool {
        let Ok(http) = self.http() else {
            return false;
        };
        let url = format!("{}/v1/sys/health", self.addresses[i].trim_end_matches('/'));
        let r = tokio::time::timeout(self.deadline(), http.get(&url).send()).await;
        matches!(r, Ok(Ok(r)) if matches!(r.status().as_u16(), 200 | 429 | 472 | 473))
    }

    fn report(&self, i: usize, answered: bool) {
        let addr = &self.addresses[i];
        if answered {
            tracing::info!(backend = %self.name, address = %addr, "probe answered: address healthy again");
        } else {
            tracing::debug!(backend = %self.name, address = %addr, "probe failed: address still down");
        }
    }
}

pub(super) fn backoff(attempt: u32) -> Duration {
    let base = 50u64 << attempt.min(5);
    let mut b = [0u8; 2];
    let _ = getrandom_bytes(&mut b);
    Duration::from_millis(base + u16::from_ne_bytes(b) as u64 % base)
}

pub(super) fn getrandom_bytes(b: &mut [u8]) -> bool {
    use rand_core::RngCore;
    rand_core::OsRng.try_fill_bytes(b).is_ok()
}

/// Maps a request fault to the `CK_RV` of a key operation (see the README's error table).
pub(super) fn map_fault(backend: &str, f: Fault, bad_input: CK_RV) -> Error {
    match f {
        Fault::Unreachable(m) => {
            Error::with(CKR_DEVICE_ERROR, format!("{backend}: unreachable: {m}"))
        }
        Fault::Status(code, m) => {
            let rv = match code {
                400 if m.contains("sealed") => CKR_DEVICE_ERROR,
                400 => bad_input,
                403 => CKR_KEY_FUNCTION_NOT_PERMITTED,
                404 => CKR_KEY_HANDLE_INVALID,
                503 => CKR_DEVICE_ERROR,
                _ => CKR_DEVICE_ERROR,
            };
            Error::with(rv, format!("{backend}: {m}"))
        }
        Fault::Login(m) => Error::with(CKR_DEVICE_ERROR, format!("{backend}: login failed: {m}")),
    }
}

/// Decodes Vault's `vault:vN:<base64>` (standard or URL-safe) into bytes.
pub(super) fn unvault(s: &str) -> Result<Vec<u8>> {
    let b = s.rsplit(':').next().unwrap_or("");
    B64.decode(b)
        .or_else(|_| B64URL.decode(b.trim_end_matches('=')))
        .map_err(|_| Error::with(CKR_DEVICE_ERROR, "vault answered an undecodable value"))
}

pub(super) fn field<'a>(v: &'a Value, name: &str) -> Result<&'a str> {
    v.pointer(&format!("/data/{name}"))
        .and_then(Value::as_str)
        .ok_or_else(|| Error::with(CKR_DEVICE_ERROR, format!("vault answer has no {name}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vault_errors_are_quoted() {
        assert_eq!(
            vault_errors(r#"{"errors":["permission denied"]}"#),
            "permission denied"
        );
        assert_eq!(vault_errors(r#"{"errors":["a","b"]}"#), "a; b");
        assert_eq!(
            vault_errors(r#"{"errors":["1 error occurred:\n\t* permission denied\n\n"]}"#),
            "permission denied"
        );
        assert_eq!(
            vault_errors(r#"{"errors":["2 errors occurred:\n\t* a\n\t* b\n\n"]}"#),
            "a; b"
        );
        assert_eq!(vault_errors(r#"{"errors":[]}"#), "(no message)");
        assert_eq!(
            vault_errors("upstream proxy said no"),
            "upstream proxy said no"
        );
        let e = vaultrs::error::ClientError::APIError {
            code: 400,
            errors: vec!["invalid role or secret ID".into()],
        };
        assert_eq!(
            vaultrs_answer(&e).as_deref(),
            Some("HTTP 400: invalid role or secret ID")
        );
        let e = map_fault(
            "v",
            Fault::Status(
                403,
                "HTTP 403 on GET /v1/transit/keys/x: permission denied".into(),
            ),
            CKR_DATA_INVALID,
        );
        assert_eq!(e.rv(), CKR_KEY_FUNCTION_NOT_PERMITTED);
        assert_eq!(
            e.cause(),
            Some("v: HTTP 403 on GET /v1/transit/keys/x: permission denied")
        );
    }
}
