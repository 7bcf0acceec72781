//! Vault's `aws` auth method, IAM type: an `sts:GetCallerIdentity` request signed (SigV4, service `sts`) with
//! credentials from the AWS SDK's default chain, which Vault sends to STS itself to learn who is logging in. The
//! bridge never sends it to STS: it hands Vault the method, URL, headers and body (base64), and Vault checks them.

use super::*;
use aws_credential_types::provider::ProvideCredentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use std::collections::BTreeMap;
use std::time::SystemTime;

const BODY: &str = "Action=GetCallerIdentity&Version=2011-06-15";
const CONTENT_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";
/// The header Vault compares with the mount's `iam_server_id_header_value` (it must be signed).
const SERVER_ID_HEADER: &str = "x-vault-aws-iam-server-id";

/// Where the credentials come from, for people (the chain the KMS backend uses too).
pub(super) const CREDENTIAL_CHAIN: &str = "the AWS default chain (environment, shared config and credentials files, web identity, ECS, instance metadata)";

/// The login fields of `POST /v1/auth/<mount>/login`, base64 as Vault wants them. The headers hold the signature
/// and any session token: wiped when dropped.
pub(super) struct SignedLogin {
    pub(super) url: String,
    pub(super) headers: Zeroizing<String>,
    pub(super) body: String,
}

/// The URL the request names: `aws_sts_endpoint`, else the region's STS endpoint (us-east-1: the global one).
pub(super) fn sts_url(cfg: &Config) -> String {
    match &cfg.aws_sts_endpoint {
        Some(e) => e.clone(),
        None if cfg.aws_sts_region == "us-east-1" => "https://sts.amazonaws.com/".into(),
        None => format!("https://sts.{}.amazonaws.com/", cfg.aws_sts_region),
    }
}

/// Loads credentials from the default chain and signs the request. `Err`: why not, in words (no secret in it).
pub(super) async fn signed_login(cfg: &Config) -> std::result::Result<SignedLogin, String> {
    // The chain's own endpoints (instance metadata, STS for web identity, SSO) are AWS's: the system's roots, not
    // the Vault backend's ca_cert, and the environment's proxies (HTTPS_PROXY, NO_PROXY...), as the AWS SDKs use
    // them — not the Vault backend's `proxy` key.
    let proxies = crate::remote::proxy::Proxies::resolve(&Default::default())
        .unwrap_or_else(|_| crate::remote::proxy::Proxies::none());
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(crate::kms::http_client_via(None, &proxies))
        .region(aws_config::Region::new(cfg.aws_sts_region.clone()))
        .load()
        .await;
    let provider = conf
        .credentials_provider()
        .ok_or_else(|| format!("no AWS credentials provider in {CREDENTIAL_CHAIN}"))?;
    // The SDK lists each provider it tried on a line of its own: one line for the notice.
    let credentials = provider.provide_credentials().await.map_err(|e| {
        format!(
            "AWS credentials could not be loaded from {CREDENTIAL_CHAIN}: {}",
            one_line(&crate::diag::error_chain(&e))
        )
    })?;
    sign_request(cfg, credentials, SystemTime::now())
}

/// The request signed with `credentials` at `time`, as Vault's login wants it: headers as a JSON object of arrays of
/// strings (Go's `http.Header`), every field base64.
fn sign_request(
    cfg: &Config,
    credentials: aws_credential_types::Credentials,
    time: SystemTime,
) -> std::result::Result<SignedLogin, String> {
    let identity = credentials.into();
    let url = sts_url(cfg);
    let parsed = reqwest::Url::parse(&url).map_err(|e| format!("aws_sts_endpoint {url}: {e}"))?;
    let host = match (parsed.host_str(), parsed.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        (None, _) => return Err(format!("aws_sts_endpoint {url}: no host")),
    };
    let mut headers: Vec<(String, String)> = vec![
        ("host".into(), host),
        ("content-type".into(), CONTENT_TYPE.into()),
    ];
    if let Some(v) = &cfg.aws_header_value {
        headers.push((SERVER_ID_HEADER.into(), v.clone()));
    }
    let request = SignableRequest::new(
        "POST",
        url.as_str(),
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(BODY.as_bytes()),
    )
    .map_err(|e| format!("cannot sign the STS request: {e}"))?;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&cfg.aws_sts_region)
        .name("sts")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| format!("cannot sign the STS request: {e}"))?
        .into();
    let (instructions, _signature) = sign(request, &params)
        .map_err(|e| format!("cannot sign the STS request: {e}"))?
        .into_parts();
    let mut go_header: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(instructions.headers())
    {
        go_header
            .entry(k.to_string())
            .or_default()
            .push(v.to_string());
    }
    let headers = Zeroizing::new(serde_json::to_vec(&go_header).map_err(|e| e.to_string())?);
    Ok(SignedLogin {
        url: B64.encode(url.as_bytes()),
        headers: Zeroizing::new(B64.encode(&*headers)),
        body: B64.encode(BODY.as_bytes()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> Config {
        let t: toml::Table = toml::from_str(&format!(
            "kind = \"vault-transit\"\naddress = \"http://v\"\naws_role = \"app\"\nkeys = [\"k\"]\n{extra}"
        ))
        .unwrap();
        VaultService::from_config("v", &t, &BuildContext::default())
            .unwrap()
            .cfg
    }

    #[test]
    fn the_aws_keys_are_checked() {
        let err = |extra: &str| {
            let t: toml::Table = toml::from_str(&format!(
                "kind = \"vault-transit\"\naddress = \"http://v\"\nkeys = [\"k\"]\n{extra}"
            ))
            .unwrap();
            VaultService::from_config("v", &t, &BuildContext::default())
                .err()
                .and_then(|e| e.cause().map(str::to_owned))
        };
        assert_eq!(err("aws_role = \"\""), None);
        assert!(err("aws_role = \"a\"\ntoken = \"x\"")
            .unwrap()
            .contains("aws_role"));
        assert!(err("token = \"x\"\naws_header_value = \"h\"")
            .unwrap()
            .starts_with("backend.v.aws_role:"));
        assert!(err("aws_role = \"a\"\naws_sts_endpoint = \"sts.example\"")
            .unwrap()
            .contains("aws_sts_endpoint: \"sts.example\" is not an http(s) URL"));
        assert!(err("aws_role = \"a\"\naws_sts_region = \"\"").is_some());
    }

    fn decoded(b64: &str) -> String {
        String::from_utf8(B64.decode(b64).unwrap()).unwrap()
    }

    #[test]
    fn the_sts_url_follows_region_and_endpoint() {
        assert_eq!(sts_url(&cfg("")), "https://sts.amazonaws.com/");
        assert_eq!(
            sts_url(&cfg("aws_sts_region = \"eu-west-1\"")),
            "https://sts.eu-west-1.amazonaws.com/"
        );
        assert_eq!(
            sts_url(&cfg("aws_sts_endpoint = \"http://127.0.0.1:9/\"")),
            "http://127.0.0.1:9/"
        );
    }

    #[test]
    fn the_request_is_signed_as_vault_reads_it() {
        let c = cfg("aws_header_value = \"vault.example.com\"\naws_sts_region = \"eu-west-1\"");
        let creds = aws_credential_types::Credentials::new(
            "AKIDEXAMPLE",
            "secret",
            Some("session".into()),
            None,
            "test",
        );
        let login = sign_request(&c, creds, SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(decoded(&login.url), "https://sts.eu-west-1.amazonaws.com/");
        assert_eq!(decoded(&login.body), BODY);
        let headers: BTreeMap<String, Vec<String>> =
            serde_json::from_str(&decoded(&login.headers)).unwrap();
        assert_eq!(headers["host"], ["sts.eu-west-1.amazonaws.com"]);
        assert_eq!(headers[SERVER_ID_HEADER], ["vault.example.com"]);
        assert_eq!(headers["x-amz-security-token"], ["session"]);
        let auth = &headers["authorization"][0];
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/19700101/eu-west-1/sts/aws4_request"
            ),
            "{auth}"
        );
        // Vault refuses a server ID header that is not signed.
        let signed = auth
            .split("SignedHeaders=")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap();
        assert!(signed.split(';').any(|h| h == SERVER_ID_HEADER), "{auth}");
        assert!(!auth.contains("secret"), "{auth}");
    }
}
