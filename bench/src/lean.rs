//! The lean baseline of the remote rows (issue #17 item 5a): a blocking `ureq` client per thread, one kept-alive
//! connection each, no runtime and no other thread involved. Vault: the transit request as is. KMS: the same
//! `Sign` request the SDK sends (JSON 1.1, `TrentService.Sign`), signed with SigV4 by `aws-sigv4`.

use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use std::sync::Arc;
use std::time::SystemTime;

/// A blocking agent with one connection (plain HTTP to loopback; no proxy, statuses as answers).
pub fn agent() -> ureq::Agent {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ureq::Agent::new_with_config(
        ureq::config::Config::builder()
            .proxy(None)
            .http_status_as_error(false)
            .max_idle_connections(1)
            .max_idle_connections_per_host(1)
            .tls_config(
                ureq::tls::TlsConfig::builder()
                    .unversioned_rustls_crypto_provider(provider)
                    .build(),
            )
            .build(),
    )
}

/// `POST url` with Vault's token and a JSON body; the answer's text.
pub fn vault_post(a: &ureq::Agent, url: &str, token: &str, body: &str) -> String {
    a.post(url)
        .header("X-Vault-Token", token)
        .header("Content-Type", "application/json")
        .send(body)
        .expect("vault")
        .body_mut()
        .read_to_string()
        .expect("vault answer")
}

/// KMS `Sign` of a 32-byte digest with `key` (ECDSA_SHA_256) at `endpoint` (`http://host:port`), SigV4-signed
/// with the environment's credentials for us-east-1; the answer's text.
pub fn kms_sign(a: &ureq::Agent, endpoint: &str, key: &str, digest_b64: &str) -> String {
    let body = format!(
        r#"{{"KeyId":"{key}","Message":"{digest_b64}","MessageType":"DIGEST","SigningAlgorithm":"ECDSA_SHA_256"}}"#
    );
    let host = endpoint
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/');
    let headers = [
        ("host", host),
        ("content-type", "application/x-amz-json-1.1"),
        ("x-amz-target", "TrentService.Sign"),
    ];
    let creds = aws_credential_types::Credentials::new(
        std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "testing".into()),
        std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "testing".into()),
        None,
        None,
        "bench",
    );
    let identity = creds.into();
    let url = format!("{}/", endpoint.trim_end_matches('/'));
    let request = SignableRequest::new(
        "POST",
        url.as_str(),
        headers.iter().copied(),
        SignableBody::Bytes(body.as_bytes()),
    )
    .expect("signable");
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("kms")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .expect("sigv4 params")
        .into();
    let (instructions, _) = sign(request, &params).expect("sigv4").into_parts();
    let mut rb = a.post(&url);
    for (k, v) in headers
        .iter()
        .skip(1)
        .copied()
        .chain(instructions.headers())
    {
        rb = rb.header(k, v);
    }
    rb.send(body.as_bytes())
        .expect("kms")
        .body_mut()
        .read_to_string()
        .expect("kms answer")
}
