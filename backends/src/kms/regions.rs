//! Where KMS calls go: one SDK client per region (made on first use, inside the module's runtime), the walk over
//! the regions a call may use (`health::Endpoints`: failover on endpoint faults only, within one deadline), what a
//! fault says about its region, the background prober, and the mapping of faults to `CK_RV`s.

use super::*;

/// What went wrong with one KMS request, before it becomes a `CK_RV` for the operation at hand.
#[derive(Debug)]
pub(super) enum Fault {
    /// No answer: connect failure, timeout, I/O error, credentials that could not be loaded.
    Unreachable(String),
    /// A KMS error (`__type` code, message and HTTP status).
    Service(String, String, u16),
    /// The credentials could not be loaded (the same in every region).
    Credentials(String),
}

pub(super) fn fault<E>(e: SdkError<E, HttpResponse>) -> Fault
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match &e {
        SdkError::ServiceError(_) => Fault::Service(
            e.code().unwrap_or("Unknown").to_string(),
            e.message().unwrap_or("").to_string(),
            e.raw_response().map_or(0, |r| r.status().as_u16()),
        ),
        _ => {
            let chain = crate::diag::error_chain(&e);
            if chain.to_ascii_lowercase().contains("credential") {
                Fault::Credentials(chain)
            } else {
                Fault::Unreachable(chain)
            }
        }
    }
}

/// What a fault says about the region that gave it.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Health {
    /// The region is unwell (no answer, 5xx, KMS internal errors): counts against its breaker, the call fails over.
    Down,
    /// Throttled after the retries: the call fails over, the breaker does not count it (a rate, not an outage).
    Busy,
    /// A real answer (access denied, no such key, bad input…): the region is fine and the answer stands.
    Answered,
}

pub(super) fn health(f: &Fault) -> Health {
    match f {
        Fault::Unreachable(_) => Health::Down,
        Fault::Credentials(_) => Health::Answered,
        Fault::Service(code, _, status) => {
            if code == "ThrottlingException" || *status == 429 {
                Health::Busy
            } else if *status >= 500
                || matches!(
                    code.as_str(),
                    "KMSInternalException"
                        | "DependencyTimeoutException"
                        | "KeyUnavailableException"
                        | "InternalFailure"
                        | "ServiceUnavailable"
                        | "ServiceUnavailableException"
                )
            {
                Health::Down
            } else {
                Health::Answered
            }
        }
    }
}

/// A key reference as it is named in `region`: the region part of a multi-Region key's ARN is replaced (key ids
/// and aliases are the same in every region; other keys live in one region and keep their ARN).
pub(super) fn in_region(key: &str, region: Option<&str>) -> String {
    let Some(region) = region.filter(|_| multi_region_key(key)) else {
        return key.to_string();
    };
    let parts: Vec<&str> = key.splitn(6, ':').collect();
    if parts.len() == 6 && parts[0] == "arn" && parts[2] == "kms" {
        format!(
            "{}:{}:{}:{region}:{}:{}",
            parts[0], parts[1], parts[2], parts[4], parts[5]
        )
    } else {
        key.to_string()
    }
}

/// The region of a KMS ARN.
pub(super) fn arn_region(key: &str) -> Option<&str> {
    let parts: Vec<&str> = key.splitn(6, ':').collect();
    (parts.len() == 6 && parts[0] == "arn" && parts[2] == "kms").then(|| parts[3])
}

/// Whether a key reference names a multi-Region key (`mrk-` key id, bare or in an ARN).
pub(super) fn multi_region_key(key: &str) -> bool {
    key.rsplit([':', '/'])
        .next()
        .is_some_and(|id| id.starts_with("mrk-"))
}

/// Maps a KMS fault to the `CK_RV` of a key operation (the README's error table). `bad_input` is what a
/// `ValidationException` means for this call (the input the caller gave was not acceptable).
pub(super) fn map_fault(backend: &str, f: Fault, bad_input: CK_RV) -> Error {
    match f {
        Fault::Unreachable(m) => {
            Error::with(CKR_DEVICE_ERROR, format!("{backend}: unreachable: {m}"))
        }
        Fault::Credentials(m) => Error::with(
            CKR_DEVICE_ERROR,
            format!("{backend}: credentials could not be loaded: {m}"),
        ),
        Fault::Service(code, m, _) => {
            let rv = match code.as_str() {
                "AccessDeniedException" => CKR_KEY_FUNCTION_NOT_PERMITTED,
                "InvalidKeyUsageException" | "IncorrectKeyException" => {
                    CKR_KEY_FUNCTION_NOT_PERMITTED
                }
                "NotFoundException" | "DisabledException" | "KMSInvalidStateException" => {
                    CKR_KEY_HANDLE_INVALID
                }
                "ValidationException" => bad_input,
                "InvalidCiphertextException" => CKR_ENCRYPTED_DATA_INVALID,
                "KMSInvalidSignatureException" | "KMSInvalidMacException" => CKR_SIGNATURE_INVALID,
                "AlreadyExistsException" | "InvalidAliasNameException" => {
                    CKR_ATTRIBUTE_VALUE_INVALID
                }
                "LimitExceededException" => CKR_DEVICE_MEMORY,
                // Throttling that outlived the retries, KMS internal errors, custom key stores down, credentials
                // KMS rejects: the device cannot serve now.
                _ => CKR_DEVICE_ERROR,
            };
            let rejected = matches!(
                code.as_str(),
                "UnrecognizedClientException"
                    | "InvalidSignatureException"
                    | "IncompleteSignature"
                    | "InvalidClientTokenId"
                    | "ExpiredTokenException"
                    | "SignatureDoesNotMatch"
            );
            let note = if rejected {
                " (KMS rejected the credentials)"
            } else {
                ""
            };
            Error::with(rv, format!("{backend}: {code}: {m}{note}"))
        }
    }
}

/// One region the backend may send calls to.
pub(super) struct Region {
    /// `None`: the standard chain's region (a single-region configuration without `region`).
    pub(super) name: Option<String>,
    pub(super) endpoint: Option<String>,
    /// Its client, made on first use (and again in a forked child: its pool is the parent's).
    pub(super) client: tokio::sync::Mutex<Option<RegionClient>>,
}

/// A region's client: the process that made it, the SDK client, and where the caller-thread path sends its
/// requests (`lean::Target`), if known.
pub(super) type RegionClient = (u32, Client, Option<Arc<lean::Target>>);

tokio::task_local! {
    /// The region attempt of `failover` a call's future runs in.
    static ATTEMPT: Attempt;
}

/// One region attempt of `failover`: where the caller-thread path sends its requests in that region (if known), and
/// when the attempt's share of the deadline ends (a request written on the caller's thread bounds itself by it; the
/// runtime's timer cannot interrupt it).
#[derive(Debug, Clone)]
pub(super) struct Attempt {
    pub(super) target: Option<Arc<lean::Target>>,
    pub(super) end: std::time::Instant,
}

/// The attempt the running future belongs to (`None` outside `failover`).
pub(super) fn attempt() -> Option<Attempt> {
    ATTEMPT.try_with(Attempt::clone).ok()
}

/// Where a call may go.
#[derive(Clone, Copy)]
pub(super) enum Target<'a> {
    /// Any region (idempotent calls that name no key, e.g. GenerateRandom, ListKeys).
    Any,
    /// The regions holding this key (idempotent key operations): every region for a multi-Region key, else the
    /// region of its ARN.
    Key(&'a str),
    /// Exactly this region, once (calls that create or delete something: never re-sent elsewhere).
    Only(usize),
}

pub struct KmsService {
    pub(super) name: String,
    pub(super) cfg: Config,
    /// In order of preference; one entry for a single-region configuration.
    pub(super) regions: Vec<Region>,
    /// A circuit breaker per region.
    pub(super) health: Endpoints,
    /// The CA bundle of `ca_cert` or `AWS_CA_BUNDLE` (`None`: the system's roots).
    pub(super) ca: Option<CaBundle>,
    /// The proxies its requests go through (`proxy`, else the environment), decided when it is built.
    pub(super) proxies: Proxies,
    /// Keys created through the bridge while it runs (added to a configured `keys` list) when they get no alias
    /// under `created_alias_prefix`.
    pub(super) created: parking_lot::Mutex<Vec<String>>,
    /// Configured, imported, cached and generated certificates.
    pub(super) certs: cert::CertSource,
    /// The last enumeration: each key of `keys` that was found, by the name the configuration gives, with the
    /// name of its key (its ARN).
    pub(super) resolved: parking_lot::Mutex<HashMap<String, String>>,
    /// The caller-thread path of `Sign` (`lean.rs`).
    pub(super) lean: lean::Lean,
}

impl KmsService {
    pub(super) fn deadline(&self) -> Duration {
        self.cfg.remote.deadline()
    }

    /// The client of region `i` (connection pool and credential cache shared by every session).
    pub(super) async fn client(&self, i: usize) -> Client {
        self.client_and_target(i).await.0
    }

    /// The client of region `i` and where the caller-thread path sends its requests there (if known).
    async fn client_and_target(&self, i: usize) -> (Client, Option<Arc<lean::Target>>) {
        let me = std::process::id();
        let r = &self.regions[i.min(self.regions.len() - 1)];
        let mut g = r.client.lock().await;
        if let Some((pid, c, t)) = g.as_ref() {
            if *pid == me {
                return (c.clone(), t.clone());
            }
        }
        let (c, target) = build_client(
            &self.cfg,
            self.ca.as_ref(),
            &self.proxies,
            r.name.as_deref(),
            r.endpoint.as_deref(),
        )
        .await;
        let target = target.map(Arc::new);
        *g = Some((me, c.clone(), target.clone()));
        (c, target)
    }

    pub(super) fn region_name(&self, i: usize) -> &str {
        self.regions
            .get(i)
            .and_then(|r| r.name.as_deref())
            .unwrap_or("default")
    }

    /// The region of region `i`'s calls: configured, else `AWS_REGION` / `AWS_DEFAULT_REGION`.
    fn region_of(&self, i: usize) -> Option<String> {
        self.regions
            .get(i)
            .and_then(|r| r.name.clone())
            .or_else(|| {
                ["AWS_REGION", "AWS_DEFAULT_REGION"]
                    .iter()
                    .find_map(|v| std::env::var(v).ok().filter(|x| !x.is_empty()))
            })
    }

    /// The URL region `i`'s calls go to: the configured endpoint, else the regional default (else the default
    /// endpoint, taken as `https://kms.amazonaws.com` for the proxy decision).
    pub(super) fn region_url(&self, i: usize) -> String {
        self.regions
            .get(i)
            .and_then(|r| r.endpoint.clone())
            .unwrap_or_else(|| match self.region_of(i) {
                Some(x) => format!("https://kms.{x}.amazonaws.com"),
                None => "https://kms.amazonaws.com".into(),
            })
    }

    /// Region `i` and the URL its calls go to (the configured endpoint, else the regional default), for people.
    pub(super) fn region_at(&self, i: usize) -> String {
        let region = self.region_of(i);
        let url = match (
            &region,
            self.regions.get(i).and_then(|r| r.endpoint.clone()),
        ) {
            (_, Some(e)) => e,
            (Some(_), None) => self.region_url(i),
            (None, None) => "the default KMS endpoint".into(),
        };
        match region {
            Some(x) => format!("{url} (region {x})"),
            None => format!("{url} (region from the AWS profile)"),
        }
    }

    /// Every region and URL, for people.
    pub(super) fn endpoint(&self) -> String {
        (0..self.regions.len())
            .map(|i| self.region_at(i))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Where the credentials come from, for people.
    pub(super) fn credential_chain(&self) -> String {
        let base = match &self.cfg.profile {
            Some(p) => format!("profile \"{p}\""),
            None => "the AWS default chain (environment, shared config and credentials files, web identity, ECS, instance metadata)".into(),
        };
        match &self.cfg.role_arn {
            Some(r) => format!("AssumeRole {r} with {base}"),
            None => base,
        }
    }

    /// Tells the person about a key named in `keys` that is not on the token, once per process and cause.
    pub(super) fn key_missing(&self, key: &str, why: &str) {
        crate::diag::report(
            CKR_OK,
            format!(
                "backend \"{}\" (aws-kms, {}): key \"{key}\" named in keys: {why}; it is not on the token",
                self.name,
                self.endpoint()
            ),
        );
    }

    /// The regions a call may go to, in order of preference.
    pub(super) fn candidates(&self, target: Target<'_>) -> Vec<usize> {
        let all: Vec<usize> = (0..self.regions.len()).collect();
        match target {
            Target::Any => all,
            Target::Only(i) => vec![i],
            Target::Key(k) if self.regions.len() == 1 || multi_region_key(k) => all,
            Target::Key(k) => match arn_region(k).and_then(|r| {
                self.regions
                    .iter()
                    .position(|x| x.name.as_deref() == Some(r))
            }) {
                Some(i) => vec![i],
                None => all,
            },
        }
    }

    /// The region calls that create or delete something go to: the first healthy one.
    pub(super) fn home(&self, background: bool) -> usize {
        let all: Vec<usize> = (0..self.regions.len()).collect();
        self.health.route(&all, background)[0]
    }

    /// Starts the background prober of this process if there are several regions. `true` if one runs (callers
    /// then never probe an open region themselves).
    pub(super) fn background(self: &Arc<Self>) -> bool {
        health::background(self)
    }

    /// Runs `f` in the regions `target` allows, within one deadline: the healthy regions in order, each attempt
    /// capped at an equal share of the time left (the last gets all of it), failing over on endpoint faults only.
    pub(super) async fn failover<T, F, Fut>(
        self: Arc<Self>,
        target_regions: Vec<usize>,
        background: bool,
        deadline: Duration,
        f: F,
    ) -> std::result::Result<T, Fault>
    where
        F: Fn(Client, Option<String>) -> Fut,
        Fut: Future<Output = std::result::Result<T, Fault>>,
    {
        let end = tokio::time::Instant::now() + deadline;
        let walk = self.health.walk(&target_regions, background);
        let several = walk.route_len() > 1;
        let mut last = Fault::Unreachable("no region available".into());
        for turn in walk {
            let i = turn.index;
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let share = turn.share(left);
            let (c, target) = self.client_and_target(i).await;
            let region = self.regions[i].name.clone();
            let attempt = Attempt {
                target,
                end: std::time::Instant::now() + share,
            };
            let out = match tokio::time::timeout(share, ATTEMPT.scope(attempt, f(c, region))).await
            {
                Ok(r) => r,
                Err(_) => Err(Fault::Unreachable(format!(
                    "no answer within {} ms (timeout)",
                    share.as_millis()
                ))),
            };
            // Say where: the endpoint URL and region (and the proxy, with what it did), or the credential chain
            // that failed.
            let out = match out {
                Err(Fault::Unreachable(m)) => {
                    let url = self.region_url(i);
                    let left = end.saturating_duration_since(tokio::time::Instant::now());
                    let why = self.proxies.explain(&url, &m, left).await;
                    Err(Fault::Unreachable(format!(
                        "{}{}: {why}",
                        self.region_at(i),
                        self.proxies.via(&url)
                    )))
                }
                Err(Fault::Credentials(m)) => Err(Fault::Credentials(format!(
                    "{}: {m}",
                    self.credential_chain()
                ))),
                other => other,
            };
            match out {
                Ok(v) => {
                    if self.health.answered(i) {
                        tracing::info!(backend = %self.name, region = %self.region_name(i), "region healthy again");
                    }
                    return Ok(v);
                }
                Err(f) => match health(&f) {
                    Health::Answered => {
                        self.health.answered(i);
                        return Err(f);
                    }
                    h => {
                        if h == Health::Down && self.health.unwell(i) {
                            tracing::warn!(backend = %self.name, region = %self.region_name(i), "region unhealthy: breaker open");
                            crate::diag::notice(&format!(
                                "backend \"{}\" (aws-kms): region {} is down ({}); calls go to the other regions until it answers a probe",
                                self.name,
                                self.region_name(i),
                                match &f {
                                    Fault::Unreachable(why) | Fault::Credentials(why) => why.clone(),
                                    Fault::Service(code, msg, status) => format!("HTTP {status} {code}: {msg}"),
                                }
                            ));
                        }
                        if several {
                            tracing::debug!(backend = %self.name, region = %self.region_name(i), fault = ?f, "failing over");
                        }
                        last = f;
                    }
                },
            }
        }
        Err(last)
    }
}

/// The background prober of a multi-region backend (see `health::probe_loop`): each region due for a probe gets one
/// cheap call (`ListKeys` with `Limit=1`); an answer closes its breaker, so calls return to it.
impl health::Probed for KmsService {
    fn endpoints(&self) -> &Endpoints {
        &self.health
    }

    fn probe_interval(&self) -> Duration {
        self.cfg.remote.probe_interval()
    }

    async fn probe(self: Arc<Self>, i: usize) -> bool {
        let c = self.client(i).await;
        let r = tokio::time::timeout(self.deadline(), c.list_keys().limit(1).send()).await;
        match r {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => health(&fault(e)) == Health::Answered,
            Err(_) => false,
        }
    }

    fn report(&self, i: usize, answered: bool) {
        if answered {
            tracing::info!(backend = %self.name, region = %self.region_name(i), "probe answered: region healthy again");
        } else {
            tracing::debug!(backend = %self.name, region = %self.region_name(i), "probe failed: region still down");
        }
    }
}

/// An HTTPS-capable client for the SDK: hyper over rustls with the ring provider (nothing installed globally),
/// trusting `ca` (checked by `CaBundle::load`: the SDK's rustls glue panics on a certificate it cannot add) or else
/// the system's roots; no proxy.
pub fn http_client(ca: Option<&CaBundle>) -> aws_sdk_kms::config::SharedHttpClient {
    http_client_via(ca, &Proxies::none())
}

/// [`http_client`] through `proxies` (a `CONNECT` tunnel for `https://`, TLS end to end with the same rustls
/// configuration; `Proxy-Authorization` from the proxy URL's credentials).
pub fn http_client_via(
    ca: Option<&CaBundle>,
    proxies: &Proxies,
) -> aws_sdk_kms::config::SharedHttpClient {
    use aws_smithy_http_client::{tls, Connector};
    let trust = match ca {
        Some(ca) => tls::TrustStore::empty().with_pem_certificate(ca.pem.clone()),
        None => tls::TrustStore::default(),
    };
    // Building a context cannot fail today (1.5); else the SDK's default one.
    let context = tls::TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .unwrap_or_default();
    let proxy = proxies.aws_config();
    // `Builder::build_https` has no proxy setting: the connector is made here as it would make it (the SDK's
    // connect/read timeouts and sleep), with the proxy.
    aws_smithy_http_client::Builder::new().build_with_connector_fn(move |settings, components| {
        let mut b = Connector::builder().proxy_config(proxy.clone());
        b.set_connector_settings(settings.cloned());
        if let Some(c) = components {
            b.set_sleep_impl(c.sleep_impl());
        }
        b.tls_provider(tls::Provider::rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .tls_context(context.clone())
        .build()
    })
}

pub(super) async fn build_client(
    cfg: &Config,
    ca: Option<&CaBundle>,
    proxies: &Proxies,
    region: Option<&str>,
    endpoint: Option<&str>,
) -> (Client, Option<lean::Target>) {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(cfg.remote.connect_timeout())
        .operation_timeout(cfg.remote.deadline())
        .operation_attempt_timeout(cfg.remote.deadline())
        .build();
    let retry = RetryConfig::standard()
        .with_max_attempts(cfg.max_attempts)
        .with_initial_backoff(Duration::from_millis(50))
        .with_max_backoff(Duration::from_secs(1));
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http_client_via(ca, proxies))
        .retry_config(retry)
        .timeout_config(timeouts);
    if let Some(r) = region {
        loader = loader.region(aws_config::Region::new(r.to_string()));
    }
    if let Some(p) = &cfg.profile {
        loader = loader.profile_name(p);
    }
    let conf = loader.load().await;
    let sdk_endpoint = lean::sdk_endpoint_url(&conf);
    let mut target = lean::target(
        endpoint.or(sdk_endpoint.as_deref()),
        conf.region().map(|r| r.as_ref()),
        conf.use_fips() == Some(true) || conf.use_dual_stack() == Some(true),
    );
    let mut provider = conf.credentials_provider();
    let mut b = aws_sdk_kms::config::Builder::from(&conf);
    if let Some(e) = endpoint {
        b = b.endpoint_url(e);
    }
    if let Some(role) = &cfg.role_arn {
        let p = aws_config::sts::AssumeRoleProvider::builder(role)
            .session_name("p11bridge")
            .configure(&conf)
            .build()
            .await;
        let p = aws_credential_types::provider::SharedCredentialsProvider::new(p);
        provider = Some(p.clone());
        b = b.credentials_provider(p);
    }
    if let Some(t) = target.as_mut() {
        t.provider = provider;
    }
    (Client::from_conf(b.build()), target)
}

/// Per-call config for calls that must not be repeated (they create or delete something).
pub(super) fn no_retry() -> aws_sdk_kms::config::Builder {
    aws_sdk_kms::config::Builder::default().retry_config(RetryConfig::disabled())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_region_arns_are_named_per_region() {
        let arn = "arn:aws:kms:us-east-1:123456789012:key/mrk-1234abcd12ab34cd56ef1234567890ab";
        assert_eq!(
            in_region(arn, Some("us-west-2")),
            "arn:aws:kms:us-west-2:123456789012:key/mrk-1234abcd12ab34cd56ef1234567890ab"
        );
        assert_eq!(in_region(arn, None), arn);
        let single = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        assert_eq!(in_region(single, Some("us-west-2")), single);
        assert_eq!(in_region("alias/x", Some("us-west-2")), "alias/x");
        assert_eq!(arn_region(arn), Some("us-east-1"));
        assert!(multi_region_key("mrk-1234"));
        assert!(!multi_region_key("alias/mrk"));
        assert_eq!(
            health(&Fault::Service(
                "KMSInternalException".into(),
                String::new(),
                500
            )),
            Health::Down
        );
        assert_eq!(
            health(&Fault::Service(
                "ThrottlingException".into(),
                String::new(),
                400
            )),
            Health::Busy
        );
        assert_eq!(
            health(&Fault::Service(
                "NotFoundException".into(),
                String::new(),
                400
            )),
            Health::Answered
        );
        assert_eq!(health(&Fault::Unreachable("x".into())), Health::Down);
    }

    #[test]
    fn faults_map_to_deliberate_return_values() {
        let f = |c: &str| {
            map_fault(
                "k",
                Fault::Service(c.into(), String::new(), 400),
                CKR_DATA_INVALID,
            )
            .rv()
        };
        assert_eq!(f("AccessDeniedException"), CKR_KEY_FUNCTION_NOT_PERMITTED);
        assert_eq!(
            f("InvalidKeyUsageException"),
            CKR_KEY_FUNCTION_NOT_PERMITTED
        );
        assert_eq!(f("DisabledException"), CKR_KEY_HANDLE_INVALID);
        assert_eq!(f("NotFoundException"), CKR_KEY_HANDLE_INVALID);
        assert_eq!(f("ValidationException"), CKR_DATA_INVALID);
        assert_eq!(f("InvalidCiphertextException"), CKR_ENCRYPTED_DATA_INVALID);
        assert_eq!(f("ThrottlingException"), CKR_DEVICE_ERROR);
        assert_eq!(f("KMSInternalException"), CKR_DEVICE_ERROR);
        assert_eq!(
            map_fault("k", Fault::Unreachable("x".into()), CKR_DATA_INVALID).rv(),
            CKR_DEVICE_ERROR
        );
        // Rejected credentials are called so; credentials that could not be loaded too.
        let e = map_fault(
            "k",
            Fault::Service(
                "UnrecognizedClientException".into(),
                "The security token included in the request is invalid.".into(),
                400,
            ),
            CKR_DATA_INVALID,
        );
        assert_eq!(e.rv(), CKR_DEVICE_ERROR);
        assert!(
            e.to_string().contains(
                "UnrecognizedClientException: The security token included in the request is invalid. (KMS rejected the credentials)"
            ),
            "{e}"
        );
        let e = map_fault(
            "k",
            Fault::Credentials("profile \"x\": no such profile".into()),
            0,
        );
        assert!(
            e.to_string()
                .contains("credentials could not be loaded: profile"),
            "{e}"
        );
        assert_eq!(health(&Fault::Credentials(String::new())), Health::Answered);
    }

    #[test]
    fn https_client_handshakes_without_panic() {
        use std::io::Read;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut b = [0u8; 5];
            c.read_exact(&mut b).unwrap();
            b
        });
        let t: toml::Table = toml::from_str(&format!(
            "kind = \"aws-kms\"\nregion = \"us-east-1\"\nkeys = [\"alias/x\"]\nendpoint = \"https://127.0.0.1:{port}\"\ntimeout_ms = 3000\nmax_attempts = 1",
        ))
        .unwrap();
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        let k = Kms::new(KmsService::from_config("k", &t, &BuildContext::default()).unwrap());
        let e = k.random(8).unwrap_err();
        assert_eq!(e.rv(), CKR_DEVICE_ERROR, "{e}");
        let hello = server.join().unwrap();
        assert_eq!(hello[0], 0x16, "a TLS handshake record");
        assert_eq!(hello[1], 0x03, "TLS version major");
        assert!(rustls::crypto::CryptoProvider::get_default().is_none());
    }
}
