//! KMS requests written and answered on the caller's thread (issue #17): the JSON 1.1 request the SDK sends,
//! SigV4-signed with `aws-sigv4` using the SDK client's own credentials provider, sent with the blocking
//! caller-thread client (`remote::blocking`) on the caller's kept-alive connection.
//!
//! Used for `Sign`, the call an application makes per TLS handshake or signature, when:
//! - the caller's own thread drives the call (`runtime::may_block`), inside a region attempt of `failover` (which
//!   still walks the regions, keeps the breakers and says where a failure happened);
//! - the region's URL is known exactly: the configured `endpoint`, else the SDK's (`AWS_ENDPOINT_URL_KMS`,
//!   `AWS_ENDPOINT_URL`, a profile's `endpoint_url`, found as the SDK finds it), else
//!   `https://kms.<region>.amazonaws.com` when neither FIPS nor dual-stack endpoints are asked for and the region is
//!   in the `aws` partition (other partitions, FIPS and dual-stack keep the SDK, which resolves them);
//! - no proxy stands in the way (proxied requests keep the SDK's client, which tunnels and explains refusals).
//!
//! Otherwise, and for every other call, the SDK sends the request. What the SDK does for a call is done here too:
//! credentials from the same provider (the default chain, `profile`, `role_arn`), kept until five minutes before
//! they expire (15 minutes for credentials without an expiry, as the SDK's identity cache); the standard retry
//! policy (throttling, 5xx and connection errors; `max_attempts`; jittered exponential backoff from 50 ms to 1 s)
//! within the attempt's time; KMS errors read from the answer's `__type` and `message`, as the SDK reads them. An
//! answer refusing the signature or the credentials (a skewed clock, credentials rotated early) hands the request to
//! the SDK, which corrects clock skew and has its own identity cache; its answer stands.

use super::*;
use crate::remote::blocking::{self, Failure};
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use serde_json::Value;
use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

/// Where a region's requests go, when it is known without the SDK's endpoint resolver.
#[derive(Debug, Clone)]
pub(super) struct Target {
    /// `https://host[:port]/` (the request's URL: KMS answers at the root).
    pub(super) url: String,
    /// The `host` header as signed.
    host: String,
    /// The signing region.
    region: String,
    /// The credentials provider of the region's SDK client (the default chain, `profile` or `role_arn`).
    pub(super) provider: Option<SharedCredentialsProvider>,
}

/// The region's target: `endpoint` (configured, else the SDK's), else the regional URL of the `aws` partition.
pub(super) fn target(
    endpoint: Option<&str>,
    region: Option<&str>,
    fips_or_dual_stack: bool,
) -> Option<Target> {
    let region = region?.to_string();
    let url = match endpoint {
        Some(e) => e.trim_end_matches('/').to_string(),
        None => {
            let aws = region.split('-').next().is_some_and(|p| {
                matches!(
                    p,
                    "us" | "eu" | "ap" | "ca" | "sa" | "me" | "af" | "il" | "mx"
                )
            }) && !region.starts_with("us-iso")
                && !region.starts_with("us-gov");
            if fips_or_dual_stack || !aws {
                return None;
            }
            format!("https://kms.{region}.amazonaws.com")
        }
    };
    let uri: http::Uri = url.parse().ok()?;
    if !matches!(uri.scheme_str(), Some("http" | "https"))
        || !uri.path().trim_end_matches('/').is_empty()
    {
        // An endpoint with a path is left to the SDK.
        return None;
    }
    let host = uri.authority()?.as_str().to_string();
    Some(Target {
        url: format!("{url}/"),
        host,
        region,
        provider: None,
    })
}

/// The endpoint URL the SDK's KMS client takes from `conf`, found as `aws_sdk_kms::config::Builder::from` finds it:
/// one set on the loader, else the service-specific setting (`AWS_ENDPOINT_URL_KMS`, a profile's `services`
/// section), else the global one (`AWS_ENDPOINT_URL`, a profile's `endpoint_url`).
pub(super) fn sdk_endpoint_url(conf: &aws_types::SdkConfig) -> Option<String> {
    if conf.get_origin("endpoint_url").is_client_config() {
        return conf.endpoint_url().map(str::to_owned);
    }
    let key = aws_types::service_config::ServiceConfigKey::builder()
        .service_id("KMS")
        .env("AWS_ENDPOINT_URL")
        .profile("endpoint_url")
        .build()
        .ok();
    key.and_then(|k| conf.service_config().and_then(|c| c.load_config(k)))
        .or_else(|| conf.endpoint_url().map(str::to_owned))
}

/// The caller-thread client and the credentials it signs with (one per backend).
#[derive(Default)]
pub(super) struct Lean {
    http: OnceLock<blocking::Client>,
    /// Credentials, the process that fetched them and when to fetch again.
    creds: tokio::sync::Mutex<Option<(u32, Credentials, Instant)>>,
}

/// The throttling codes the SDK's standard retry classifier retries.
const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
];

/// Answers to the signature or the credentials, after which the SDK sends the request itself.
const REJECTED: &[&str] = &[
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "ExpiredTokenException",
    "UnrecognizedClientException",
];

/// The transient codes it retries (besides HTTP 500, 502, 503 and 504).
const TRANSIENT: &[&str] = &["RequestTimeout", "RequestTimeoutException"];

/// A KMS error answer as a fault: the code of `__type` (after a `#` namespace) and the message.
pub(super) fn service_fault(status: u16, text: &str) -> Fault {
    let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let code = v
        .get("__type")
        .and_then(Value::as_str)
        .map(|t| t.rsplit('#').next().unwrap_or(t).to_string())
        .unwrap_or_else(|| "Unknown".into());
    let message = ["message", "Message"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str))
        .unwrap_or("")
        .to_string();
    Fault::Service(code, message, status)
}

/// Whether the SDK's standard retry policy would send the request again after this fault.
fn retryable(f: &Fault) -> bool {
    match f {
        Fault::Unreachable(_) => true,
        Fault::Credentials(_) => false,
        Fault::Service(code, _, status) => {
            matches!(status, 500 | 502 | 503 | 504)
                || THROTTLING.contains(&code.as_str())
                || TRANSIENT.contains(&code.as_str())
        }
    }
}

impl KmsService {
    /// `op` (`TrentService.<op>`) with the JSON `body` makes on the caller's thread, if this call may go that way
    /// (see the module's text); `None`: the SDK sends it (and `body` is not made).
    pub(super) async fn lean_call(
        &self,
        op: &str,
        body: impl FnOnce() -> Value,
    ) -> Option<std::result::Result<Value, Fault>> {
        if !runtime::may_block() {
            return None;
        }
        let at = attempt()?;
        let target = at.target?;
        if self.proxies.for_url(&target.url).is_some() {
            return None;
        }
        let http = self.lean.http.get_or_init(|| {
            let roots = match self.ca.as_ref() {
                Some(ca) => ca.certs.clone(),
                None => crate::remote::tls::system_root_certs(),
            };
            blocking::Client::new(&roots, self.cfg.remote.connect_timeout())
        });
        match self.lean_send(http, &target, op, &body(), at.end).await {
            // KMS refused the signature or the credentials: the SDK sends the request (with its clock-skew
            // correction and identity cache), and its answer stands; the credentials are fetched again next time.
            Err(Fault::Service(code, message, _)) if REJECTED.contains(&code.as_str()) => {
                // Said once per process and code (the message carries times and ids that change every call).
                tracing::debug!(backend = %self.name, %code, %message, "caller-thread request refused; the SDK sends it");
                crate::diag::notice(&format!(
                    "backend \"{}\" (aws-kms, {}): KMS refused a {op} request signed by the bridge ({code}); it is sent through the AWS SDK instead (clock-skew correction, its own credential cache), which costs a second request per call: check the host's clock and the credentials",
                    self.name,
                    target.url.trim_end_matches('/')
                ));
                *self.lean.creds.lock().await = None;
                None
            }
            r => Some(r),
        }
    }

    async fn lean_send(
        &self,
        http: &blocking::Client,
        target: &Target,
        op: &str,
        body: &Value,
        end: Instant,
    ) -> std::result::Result<Value, Fault> {
        let body = serde_json::to_vec(body)
            .map_err(|e| Fault::Unreachable(format!("request body: {e}")))?;
        let amz_target = format!("TrentService.{op}");
        let mut tries = 0u32;
        loop {
            tries += 1;
            let creds = self.credentials(target).await?;
            let mut headers: Vec<(String, String)> = vec![
                ("content-type".into(), "application/x-amz-json-1.1".into()),
                ("x-amz-target".into(), amz_target.clone()),
            ];
            headers.extend(signature(target, &headers, &body, creds)?);
            let refs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let left = end.saturating_duration_since(Instant::now());
            let fault = match http.exchange(
                &http::Method::POST,
                &target.url,
                &refs,
                Some(&body),
                left,
                true,
            ) {
                Ok((200, text)) => {
                    return serde_json::from_str(&text).map_err(|e| {
                        Fault::Unreachable(format!("KMS answered HTTP 200 with no JSON: {e}"))
                    })
                }
                Ok((status, text)) => service_fault(status, &text),
                Err(Failure::Timeout) => {
                    return Err(Fault::Unreachable(format!(
                        "no answer within {} ms (timeout)",
                        left.as_millis()
                    )))
                }
                Err(f) => Fault::Unreachable(f.describe()),
            };
            if !retryable(&fault) || tries >= self.cfg.max_attempts {
                return Err(fault);
            }
            // Jittered exponential backoff (50 ms doubling, at most 1 s), never past the attempt's end.
            let base = Duration::from_millis(50) * 2u32.saturating_pow(tries - 1);
            let pause = base.min(Duration::from_secs(1)).mul_f64(jitter());
            if Instant::now() + pause >= end {
                return Err(fault);
            }
            tracing::debug!(backend = %self.name, ?fault, "KMS request sent again after {} ms", pause.as_millis());
            tokio::time::sleep(pause).await;
        }
    }

    /// The credentials of the region's provider, fetched again five minutes before they expire (15 minutes for
    /// credentials without an expiry) and in a forked child.
    async fn credentials(&self, target: &Target) -> std::result::Result<Credentials, Fault> {
        let me = std::process::id();
        let mut g = self.lean.creds.lock().await;
        if let Some((pid, creds, until)) = g.as_ref() {
            if *pid == me && Instant::now() < *until {
                return Ok(creds.clone());
            }
        }
        let provider = target
            .provider
            .as_ref()
            .ok_or_else(|| Fault::Credentials("no credentials provider is configured".into()))?;
        let creds = provider
            .provide_credentials()
            .await
            .map_err(|e| Fault::Credentials(crate::diag::error_chain(&e)))?;
        let keep = match creds.expiry() {
            Some(exp) => exp
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .saturating_sub(Duration::from_secs(300)),
            None => Duration::from_secs(900),
        };
        *g = Some((me, creds.clone(), Instant::now() + keep));
        Ok(creds)
    }
}

/// The SigV4 headers (`authorization`, `x-amz-date`, and `x-amz-security-token` for temporary credentials) of a
/// POST of `body` with `headers` to `target`.
fn signature(
    target: &Target,
    headers: &[(String, String)],
    body: &[u8],
    creds: Credentials,
) -> std::result::Result<Vec<(String, String)>, Fault> {
    let identity = creds.into();
    let mut signed: Vec<(&str, &str)> = vec![("host", target.host.as_str())];
    signed.extend(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let request = SignableRequest::new(
        "POST",
        target.url.as_str(),
        signed.into_iter(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| Fault::Credentials(format!("cannot sign the request: {e}")))?;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&target.region)
        .name("kms")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| Fault::Credentials(format!("cannot sign the request: {e}")))?
        .into();
    let (instructions, _) = sign(request, &params)
        .map_err(|e| Fault::Credentials(format!("cannot sign the request: {e}")))?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// A factor in [0.5, 1) from the clock (enough to spread retries of threads that failed together).
fn jitter() -> f64 {
    let n = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    0.5 + f64::from(n % 1000) / 2000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_exact_or_left_to_the_sdk() {
        let t = target(Some("http://127.0.0.1:4566/"), Some("us-east-1"), false).unwrap();
        assert_eq!(t.url, "http://127.0.0.1:4566/");
        assert_eq!(t.host, "127.0.0.1:4566");
        assert_eq!(t.region, "us-east-1");
        let t = target(None, Some("eu-west-1"), false).unwrap();
        assert_eq!(t.url, "https://kms.eu-west-1.amazonaws.com/");
        assert_eq!(t.host, "kms.eu-west-1.amazonaws.com");
        // FIPS / dual-stack, other partitions, no region, an endpoint with a path: the SDK resolves them.
        assert!(target(None, Some("eu-west-1"), true).is_none());
        assert!(target(None, Some("cn-north-1"), false).is_none());
        assert!(target(None, Some("us-gov-west-1"), false).is_none());
        assert!(target(None, Some("us-isob-east-1"), false).is_none());
        assert!(target(Some("https://x.example/kms"), Some("us-east-1"), false).is_none());
        assert!(target(Some("http://127.0.0.1:1"), None, false).is_none());
        // An explicit endpoint stands even with FIPS asked for (the SDK uses it as given too).
        assert!(target(
            Some("https://kms-fips.us-east-1.amazonaws.com"),
            Some("us-east-1"),
            true
        )
        .is_some());
    }

    #[test]
    fn error_answers_read_as_the_sdk_reads_them() {
        let f = service_fault(
            400,
            r#"{"__type":"com.amazonaws.kms#NotFoundException","message":"Key 'x' does not exist"}"#,
        );
        assert!(
            matches!(&f, Fault::Service(c, m, 400) if c == "NotFoundException" && m == "Key 'x' does not exist")
        );
        let f = service_fault(
            400,
            r#"{"__type":"ThrottlingException","Message":"slow down"}"#,
        );
        assert!(retryable(&f));
        assert!(!retryable(&service_fault(
            400,
            r#"{"__type":"AccessDeniedException"}"#
        )));
        assert!(retryable(&service_fault(503, "not json")));
        assert!(
            matches!(service_fault(503, "not json"), Fault::Service(c, _, 503) if c == "Unknown")
        );
    }
}
