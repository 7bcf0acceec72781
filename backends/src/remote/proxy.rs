//! The HTTP proxy of a remote backend (Vault, KMS): the one place that decides which proxy a request goes through,
//! hands that decision to each backend's HTTP client, and says what went wrong through a proxy.
//!
//! - `proxy` unset: the environment, as curl and the AWS SDKs read it — `HTTPS_PROXY`/`https_proxy` for `https://`
//!   URLs, `HTTP_PROXY`/`http_proxy` for `http://` URLs (`ALL_PROXY`/`all_proxy` for both when those are unset),
//!   `NO_PROXY`/`no_proxy` for the hosts that bypass them (curl's rules: `*`, domain suffixes with or without a
//!   leading dot, IP addresses and CIDR blocks). The matching is hyper-util's `Matcher`, which reqwest (Vault) and
//!   aws-smithy-http-client (KMS) both use, so the two backends decide alike.
//! - `proxy = "http://[user:password@]host:port"`: that proxy for every URL of the backend (the environment's
//!   proxies are ignored; `NO_PROXY` still applies, as with curl's `--proxy`).
//! - `proxy = ""` or `"none"`: no proxy, whatever the environment says.
//!
//! HTTPS goes through a `CONNECT` tunnel with TLS end to end (the backend's own rustls configuration and CA bundle;
//! the proxy sees only the host and port). Credentials in the URL are sent as `Proxy-Authorization: Basic` and are
//! never shown: every text names the proxy as `scheme://host:port` ([`redact`]), and `Debug` of the setting is
//! redacted too.

use http::Uri;
use hyper_util::client::proxy::matcher::Matcher;
use std::fmt;
use std::time::Duration;
use zeroize::Zeroizing;

/// The `proxy` key as written (`Debug` shows it redacted: it may hold a password).
#[derive(Clone, serde::Deserialize, Default)]
#[serde(transparent)]
pub struct ProxyKey(Option<String>);

impl Drop for ProxyKey {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        if let Some(s) = &mut self.0 {
            s.zeroize();
        }
    }
}

impl fmt::Debug for ProxyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("None"),
            Some(s) => write!(f, "Some({:?})", redact(s)),
        }
    }
}

/// A proxy URL for people: `scheme://host:port`, without user, password, path or query.
pub fn redact(url: &str) -> String {
    let url = url.trim();
    let with_scheme = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    match with_scheme.parse::<Uri>() {
        Ok(u) => {
            let host = u.host().unwrap_or("?");
            let scheme = u.scheme_str().unwrap_or("http");
            match u.port_u16() {
                Some(p) => format!("{scheme}://{host}:{p}"),
                None => format!("{scheme}://{host}"),
            }
        }
        Err(_) => "(a proxy URL that does not parse)".into(),
    }
}

/// Which proxies a backend's requests go through, decided once when the backend is built.
#[derive(Clone)]
pub struct Proxies {
    /// For `https://` URLs and for `http://` URLs (each may hold credentials), and the bypass list.
    https: Option<Zeroizing<String>>,
    http: Option<Zeroizing<String>>,
    no: String,
    /// Where the setting came from, for people: `proxy = ...`, `the environment`, `none`.
    origin: &'static str,
    matcher: std::sync::Arc<Matcher>,
}

impl fmt::Debug for Proxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxies")
            .field("https", &self.https.as_deref().map(|s| redact(s)))
            .field("http", &self.http.as_deref().map(|s| redact(s)))
            .field("no", &self.no)
            .field("origin", &self.origin)
            .finish()
    }
}

fn first_env(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok())
        .filter(|v| !v.trim().is_empty())
}

/// `Err`: why a proxy URL cannot be used (without the URL's credentials).
fn check_url(url: &str) -> std::result::Result<(), String> {
    let u: Uri = url
        .trim()
        .parse()
        .map_err(|e| format!("\"{}\" is not a URL: {e}", redact(url)))?;
    match u.scheme_str() {
        Some("http") | Some("https") => {}
        Some(other) => {
            return Err(format!(
                "\"{}\": the scheme {other}:// is not supported (an HTTP proxy: http://host:port)",
                redact(url)
            ))
        }
        None => {
            return Err(format!(
                "\"{}\": give the scheme (http://host:port)",
                redact(url)
            ))
        }
    }
    if u.host().is_none_or(str::is_empty) {
        return Err(format!("\"{}\": no host", redact(url)));
    }
    Ok(())
}

impl Proxies {
    /// Resolves the `proxy` key (and, without it, the environment). `Err`: what is wrong with it, for a
    /// configuration error naming the key (`proxy (from HTTPS_PROXY): ...`).
    pub fn resolve(key: &ProxyKey) -> std::result::Result<Proxies, String> {
        let no = first_env(&["NO_PROXY", "no_proxy"]).unwrap_or_default();
        let (https, http, origin) = match key.0.as_deref().map(|s| s.trim()) {
            Some("") | Some("none") => (None, None, "proxy = \"none\""),
            Some(url) => {
                check_url(url).map_err(|e| format!("proxy: {e}"))?;
                (Some(url.to_string()), Some(url.to_string()), "proxy")
            }
            None => {
                // As curl: a CGI program's HTTP_PROXY may come from a request header ("httpoxy"): ignored there.
                let cgi = std::env::var_os("REQUEST_METHOD").is_some();
                // ALL_PROXY is often a SOCKS proxy for other programs: one that is not an HTTP proxy is not
                // used (said once), rather than failing the backend.
                let all = first_env(&["ALL_PROXY", "all_proxy"]).filter(|v| match check_url(v) {
                    Ok(()) => true,
                    Err(e) => {
                        crate::diag::notice(&format!(
                            "ALL_PROXY is not used by the remote backends: {e}"
                        ));
                        false
                    }
                });
                let https = first_env(&["HTTPS_PROXY", "https_proxy"]).or(all.clone());
                let http = if cgi {
                    None
                } else {
                    first_env(&["HTTP_PROXY", "http_proxy"]).or(all)
                };
                for (var, v) in [("HTTPS_PROXY", &https), ("HTTP_PROXY", &http)] {
                    if let Some(v) = v {
                        check_url(v).map_err(|e| format!("proxy (from {var}): {e}"))?;
                    }
                }
                (https, http, "the environment")
            }
        };
        let mut b = Matcher::builder().no(no.clone());
        if let Some(h) = &https {
            b = b.https(h.clone());
        }
        if let Some(h) = &http {
            b = b.http(h.clone());
        }
        Ok(Proxies {
            https: https.map(Zeroizing::new),
            http: http.map(Zeroizing::new),
            no,
            origin,
            matcher: std::sync::Arc::new(b.build()),
        })
    }

    /// No proxy at all (requests the backend does not configure, e.g. the AWS credential chain's own endpoints
    /// when the caller wants them direct).
    pub fn none() -> Proxies {
        Proxies {
            https: None,
            http: None,
            no: String::new(),
            origin: "proxy = \"none\"",
            matcher: std::sync::Arc::new(Matcher::builder().build()),
        }
    }

    /// The proxy a request to `url` goes through (its credentials included), if any.
    fn intercept(&self, url: &str) -> Option<hyper_util::client::proxy::matcher::Intercept> {
        let uri: Uri = url.parse().ok()?;
        self.matcher.intercept(&uri)
    }

    /// The proxy a request to `url` goes through, for people (`http://host:port`), if any.
    pub fn for_url(&self, url: &str) -> Option<String> {
        self.intercept(url).map(|i| redact(&i.uri().to_string()))
    }

    /// ` via proxy http://host:port` when requests to `url` go through one, else "".
    pub fn via(&self, url: &str) -> String {
        self.for_url(url)
            .map(|p| format!(" via proxy {p}"))
            .unwrap_or_default()
    }

    /// Where the setting came from (`proxy`, `the environment`, `proxy = "none"`), for people.
    pub fn origin(&self) -> &'static str {
        self.origin
    }

    /// reqwest (Vault): the environment is never read by reqwest itself; these proxies are given explicitly.
    pub fn apply_reqwest(
        &self,
        b: reqwest::ClientBuilder,
    ) -> std::result::Result<reqwest::ClientBuilder, String> {
        let mut b = b.no_proxy();
        let no = reqwest::NoProxy::from_string(&self.no);
        if let Some(u) = &self.https {
            let p = reqwest::Proxy::https(u.as_str())
                .map_err(|e| format!("proxy {}: {e}", redact(u)))?;
            b = b.proxy(p.no_proxy(no.clone()));
        }
        if let Some(u) = &self.http {
            let p = reqwest::Proxy::http(u.as_str())
                .map_err(|e| format!("proxy {}: {e}", redact(u)))?;
            b = b.proxy(p.no_proxy(no));
        }
        Ok(b)
    }

    /// aws-smithy-http-client (KMS): the same proxies. One URL for both schemes is `all`; different ones for
    /// `https://` and `http://` are the environment's (read by the SDK's connector the same way as here).
    pub fn aws_config(&self) -> aws_smithy_http_client::proxy::ProxyConfig {
        use aws_smithy_http_client::proxy::ProxyConfig;
        let built = match (&self.https, &self.http) {
            (None, None) => return ProxyConfig::disabled(),
            (Some(a), Some(b)) if a.as_str() == b.as_str() => ProxyConfig::all(a.as_str()),
            (Some(a), None) => ProxyConfig::https(a.as_str()),
            (None, Some(b)) => ProxyConfig::http(b.as_str()),
            (Some(_), Some(_)) => return ProxyConfig::from_env(),
        };
        match built {
            Ok(c) if self.no.is_empty() => c,
            Ok(c) => c.no_proxy(&self.no),
            // Checked by `resolve`; a URL the SDK would still refuse: no proxy rather than a panic, and the
            // failure says "via proxy" nowhere — `resolve` makes this unreachable in practice.
            Err(_) => ProxyConfig::disabled(),
        }
    }

    /// A connection-level failure of a request to `url` in words: when it went through a proxy, what the proxy
    /// did (`the proxy answered 407 Proxy Authentication Required`, `the proxy does not answer`, ...) followed by
    /// the error chain. A refused tunnel whose status the HTTP client does not keep (hyper-util says only
    /// "unsuccessful") is asked again with one `CONNECT` of our own, within `budget`, to learn the status.
    pub async fn explain(&self, url: &str, chain: &str, budget: Duration) -> String {
        let Some(i) = self.intercept(url) else {
            return chain.to_string();
        };
        let lower = chain.to_ascii_lowercase();
        let what = if lower.contains("proxy authorization required") {
            "the proxy answered 407 Proxy Authentication Required (the proxy URL's user:password is missing or refused)".to_string()
        } else if lower.contains("tunnel error: unsuccessful") {
            match connect_status(&i, url, budget).await {
                Some(status) => format!("the proxy refused the tunnel: it answered {status}"),
                None => "the proxy refused the tunnel".to_string(),
            }
        } else if lower.contains("tunnel error: unexpected end of file") {
            "the proxy closed the connection without answering the CONNECT".to_string()
        } else if lower.contains("failed to create underlying connection")
            || lower.contains("tcp connect error")
            || lower.contains("connection refused")
        {
            "the proxy does not answer".to_string()
        } else if lower.contains("tunnel error") {
            "the tunnel through the proxy failed".to_string()
        } else if lower.contains("timeout") || lower.contains("timed out") {
            "no answer through the proxy (the proxy or the server behind it hangs)".to_string()
        } else {
            return chain.to_string();
        };
        format!("{what}: {chain}")
    }
}

/// The status line a proxy answers to `CONNECT host:port` for `url` (with the same credentials), e.g.
/// `403 Forbidden`; `None` if it cannot be learned within `budget` (at most 2 s).
async fn connect_status(
    i: &hyper_util::client::proxy::matcher::Intercept,
    url: &str,
    budget: Duration,
) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let target: Uri = url.parse().ok()?;
    let host = target.host()?;
    let port = target
        .port_u16()
        .unwrap_or(if target.scheme_str() == Some("http") {
            80
        } else {
            443
        });
    let proxy = i.uri();
    let paddr = format!(
        "{}:{}",
        proxy.host()?,
        proxy
            .port_u16()
            .unwrap_or(if proxy.scheme_str() == Some("https") {
                443
            } else {
                80
            })
    );
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(&paddr).await.ok()?;
        let mut req = Zeroizing::new(format!(
            "CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        ));
        if let Some(a) = i.basic_auth().and_then(|a| a.to_str().ok()) {
            req.push_str(&format!("Proxy-Authorization: {a}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 512];
        while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 4096 {
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.lines().next()?;
        // "HTTP/1.1 403 Forbidden" → "403 Forbidden"
        let (_, rest) = line.split_once(' ')?;
        let rest: String = rest.trim().chars().take(100).collect();
        (!rest.is_empty()).then_some(rest)
    };
    tokio::time::timeout(budget.min(Duration::from_secs(2)), ask)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_urls_hold_no_credentials() {
        assert_eq!(
            redact("http://user:s3cret@proxy.example:3128/x?y"),
            "http://proxy.example:3128"
        );
        assert_eq!(redact("proxy.example:8080"), "http://proxy.example:8080");
        let k = ProxyKey(Some("http://u:s3cret@p:1".into()));
        assert!(!format!("{k:?}").contains("s3cret"));
    }

    #[test]
    fn the_key_decides_over_the_environment() {
        let k = |s: &str| ProxyKey(Some(s.into()));
        let p = Proxies::resolve(&k("http://u:pw@127.0.0.1:3128")).unwrap();
        assert_eq!(
            p.for_url("https://vault.example:8200").as_deref(),
            Some("http://127.0.0.1:3128")
        );
        assert_eq!(
            p.via("http://vault.example:8200"),
            " via proxy http://127.0.0.1:3128"
        );
        assert!(!format!("{p:?}").contains("pw"));
        for off in ["", "none"] {
            let p = Proxies::resolve(&k(off)).unwrap();
            assert_eq!(p.for_url("https://vault.example:8200"), None);
        }
        let e = Proxies::resolve(&k("socks5://u:pw@h:1")).unwrap_err();
        assert!(e.contains("socks5") && !e.contains("pw"), "{e}");
    }
}
