//! Requests written and answered on the caller's own thread: a blocking HTTP/1.1 client (`ureq`) with one
//! kept-alive connection per caller thread and address, no runtime, no other thread involved. This is what a lean
//! client does, and it is measurably faster than reqwest/hyper's pooled client, whose connection task runs on a
//! runtime worker (docs/PERFORMANCE.md, "Vault at one thread").
//!
//! - Only for a caller that may block: a thread of the application driving its own remote call
//!   (`runtime::may_block`). A caller inside the application's own tokio runtime, background tasks (probes,
//!   refreshes, renewals) and requests through a proxy keep the backend's async client.
//! - TLS is rustls with the ring provider given explicitly (nothing installed process-wide), trusting the backend's
//!   roots (`ca_cert`, else the system's).
//! - Connections: one agent per thread and [`Client`] in a thread-local, each keeping at most one idle connection
//!   per address. They end with their thread; entries of a dropped client (a backend gone with `C_Finalize`) are
//!   pruned the next time the thread makes a request. After `fork()` the child never uses (nor closes: the socket
//!   and its TLS session are the parent's) what the forking thread had: the table is stamped with the process id
//!   and an inherited one is leaked.
//! - Redirects (a standby's 307 to the active node) are followed here with the same method, headers and body, as
//!   the async client does.

use rustls::pki_types::CertificateDer;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use ureq::unversioned::resolver::ResolvedSocketAddrs;

/// How many redirects one request follows (as reqwest's default policy).
const MAX_REDIRECTS: usize = 10;

/// A backend's blocking client: its TLS settings; the connections live per thread.
pub struct Client {
    id: u64,
    alive: Arc<()>,
    tls: ureq::tls::TlsConfig,
    connect_timeout: Duration,
}

/// Why a request got no answer.
#[derive(Debug)]
pub enum Failure {
    /// Not within the time given.
    Timeout,
    /// Connection-level (refused, reset, TLS, protocol): the client's error.
    Other(ureq::Error),
}

impl Failure {
    /// The failure in words, as `diag::error_chain` gives the async client's (the OS error, or the TLS error with
    /// what it means; ureq's error has no `source()`, so the inner error is handed over directly).
    pub fn describe(&self) -> String {
        use crate::diag::error_chain;
        match self {
            Failure::Timeout => "timeout".into(),
            Failure::Other(ureq::Error::Io(e)) => error_chain(e),
            Failure::Other(ureq::Error::Rustls(e)) => error_chain(e),
            Failure::Other(e) => error_chain(e),
        }
    }
}

type Agents = (u32, Vec<(u64, Weak<()>, ureq::Agent)>);

thread_local! {
    static AGENTS: RefCell<Option<Agents>> = const { RefCell::new(None) };
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Client {
    /// A client trusting `roots`, connecting within `connect_timeout`.
    pub fn new(roots: &[CertificateDer<'static>], connect_timeout: Duration) -> Client {
        let roots: Vec<ureq::tls::Certificate<'static>> = roots
            .iter()
            .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots)))
            .build();
        Client {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            alive: Arc::new(()),
            tls,
            connect_timeout,
        }
    }

    fn agent(&self) -> ureq::Agent {
        let me = std::process::id();
        AGENTS.with(|cell| {
            let mut g = cell.borrow_mut();
            if g.as_ref().is_some_and(|(pid, _)| *pid != me) {
                // Inherited through fork(): the connections are the parent's. Never touch them.
                if let Some(old) = g.take() {
                    std::mem::forget(old);
                }
            }
            let (_, list) = g.get_or_insert_with(|| (me, Vec::new()));
            list.retain(|(_, alive, _)| alive.strong_count() > 0);
            if let Some((_, _, a)) = list.iter().find(|(id, _, _)| *id == self.id) {
                return a.clone();
            }
            let a = ureq::Agent::with_parts(
                ureq::config::Config::builder()
                    .proxy(None)
                    .http_status_as_error(false)
                    .max_redirects(0)
                    .max_redirects_will_error(false)
                    .max_idle_connections(8)
                    .max_idle_connections_per_host(1)
                    .max_idle_age(Duration::from_secs(90))
                    .timeout_connect(Some(self.connect_timeout))
                    .tls_config(self.tls.clone())
                    .build(),
                ureq::unversioned::transport::DefaultConnector::new(),
                Resolver::default(),
            );
            list.push((self.id, Arc::downgrade(&self.alive), a.clone()));
            a
        })
    }

    /// One request within `timeout` (connecting, sending, reading the answer and following redirects): the
    /// status and the body as text. A body is sent as `application/json` unless `headers` give its type.
    pub fn exchange(
        &self,
        method: &http::Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
        idempotent: bool,
    ) -> Result<(u16, String), Failure> {
        let agent = self.agent();
        // A kept-alive connection the server closed just as it was reused fails at once: an idempotent request is
        // sent once more (on a new connection), as hyper's pool does for a request it could not send.
        let mut stale_retry = idempotent;
        let end = Instant::now() + timeout;
        let mut method = method.clone();
        let mut url = url.to_string();
        let mut body = body;
        let mut hops = 0;
        loop {
            hops += 1;
            if hops > MAX_REDIRECTS + 2 {
                return Err(Failure::Other(ureq::Error::TooManyRedirects));
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Failure::Timeout);
            }
            let mut req = http::Request::builder().method(method.clone()).uri(&url);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let typed = headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
            let sent = match body {
                Some(b) if !typed => req
                    .header("content-type", "application/json")
                    .body(b)
                    .map_err(|e| Failure::Other(e.into()))
                    .and_then(|r| run(&agent, r, left)),
                Some(b) => req
                    .body(b)
                    .map_err(|e| Failure::Other(e.into()))
                    .and_then(|r| run(&agent, r, left)),
                None => req
                    .body(())
                    .map_err(|e| Failure::Other(e.into()))
                    .and_then(|r| run(&agent, r, left)),
            };
            let mut resp = match sent {
                Err(Failure::Other(ureq::Error::Io(e)))
                    if stale_retry
                        && matches!(
                            e.kind(),
                            std::io::ErrorKind::ConnectionReset
                                | std::io::ErrorKind::ConnectionAborted
                                | std::io::ErrorKind::BrokenPipe
                                | std::io::ErrorKind::UnexpectedEof
                        ) =>
                {
                    stale_retry = false;
                    tracing::debug!("request on a kept-alive connection failed ({e}); sent again");
                    continue;
                }
                r => r?,
            };
            let status = resp.status().as_u16();
            let location = resp
                .headers()
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            match (status, location) {
                (301 | 302 | 303 | 307 | 308, Some(to)) => {
                    // Drain the redirect's body so its connection can be reused.
                    let _ = resp.body_mut().read_to_vec();
                    url = join(&url, &to);
                    if matches!(status, 301..=303) && method == http::Method::POST || status == 303
                    {
                        method = http::Method::GET;
                        body = None;
                    }
                }
                _ => {
                    let text = resp
                        .body_mut()
                        .with_config()
                        .limit(16 * 1024 * 1024)
                        .read_to_string()
                        .map_err(failure)?;
                    return Ok((status, text));
                }
            }
        }
    }
}

/// How long a resolved host name is reused by a thread's agent.
const RESOLVED_FOR: Duration = Duration::from_secs(30);

/// ureq resolves the host before every request, even one sent on a pooled connection, and with a timeout it does
/// so on a new thread each time (one thread per request). This resolver answers an IP address at once and reuses a
/// host name's addresses for [`RESOLVED_FOR`] (a pooled connection keeps its address anyway); a name not known yet
/// is resolved by ureq's resolver within the request's timeout.
#[derive(Debug, Default)]
struct Resolver {
    inner: ureq::unversioned::resolver::DefaultResolver,
    known: parking_lot::Mutex<Vec<(String, Instant, ResolvedSocketAddrs)>>,
}

impl ureq::unversioned::resolver::Resolver for Resolver {
    fn resolve(
        &self,
        uri: &http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let Some(authority) = uri.authority() else {
            return self.inner.resolve(uri, config, timeout);
        };
        let port = authority.port_u16().unwrap_or_else(|| {
            if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            }
        });
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            let mut v = self.empty();
            v.push(std::net::SocketAddr::new(ip, port));
            return Ok(v);
        }
        let key = format!("{host}:{port}");
        let now = Instant::now();
        {
            let mut known = self.known.lock();
            known.retain(|(_, at, _)| now.duration_since(*at) < RESOLVED_FOR);
            if let Some((_, _, addrs)) = known.iter().find(|(k, _, _)| *k == key) {
                return Ok(addrs.clone());
            }
        }
        let addrs = self.inner.resolve(uri, config, timeout)?;
        self.known.lock().push((key, now, addrs.clone()));
        Ok(addrs)
    }
}

fn run<B: ureq::AsSendBody>(
    agent: &ureq::Agent,
    req: http::Request<B>,
    left: Duration,
) -> Result<http::Response<ureq::Body>, Failure> {
    let req = agent
        .configure_request(req)
        .timeout_global(Some(left))
        .build();
    agent.run(req).map_err(failure)
}

fn failure(e: ureq::Error) -> Failure {
    match e {
        ureq::Error::Timeout(_) => Failure::Timeout,
        e => Failure::Other(e),
    }
}

/// `to` (a `Location`) against `from`: absolute as is, else on `from`'s origin.
fn join(from: &str, to: &str) -> String {
    if to.starts_with("http://") || to.starts_with("https://") {
        return to.to_string();
    }
    let origin_end = from
        .find("://")
        .and_then(|i| from[i + 3..].find('/').map(|j| i + 3 + j))
        .unwrap_or(from.len());
    format!("{}/{}", &from[..origin_end], to.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};

    /// A server answering each request on a connection with the next of `answers`; records the requests.
    fn server(answers: Vec<String>) -> (String, std::sync::mpsc::Receiver<String>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (c, _) = l.accept().unwrap();
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut w = c;
            for a in answers {
                let mut head = String::new();
                let mut len = 0;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    head.push_str(&line);
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                head.push_str(&String::from_utf8_lossy(&body));
                tx.send(head).unwrap();
                if a.is_empty() {
                    // Never answers.
                    std::thread::sleep(Duration::from_secs(5));
                    return;
                }
                w.write_all(a.as_bytes()).unwrap();
            }
        });
        (url, rx)
    }

    #[test]
    fn a_redirect_is_followed_with_method_headers_and_body() {
        let (url, rx) = server(vec![
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: /v1/there\r\nContent-Length: 0\r\n\r\n"
                .into(),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}".into(),
        ]);
        let c = Client::new(&[], Duration::from_secs(2));
        let (status, text) = c
            .exchange(
                &http::Method::POST,
                &format!("{url}/v1/here"),
                &[("X-Vault-Token", "t0k")],
                Some(b"{\"input\":1}"),
                Duration::from_secs(5),
                true,
            )
            .unwrap();
        assert_eq!((status, text.as_str()), (200, "{}"));
        let first = rx.recv().unwrap();
        let second = rx.recv().unwrap();
        assert!(first.starts_with("POST /v1/here "), "{first}");
        assert!(second.starts_with("POST /v1/there "), "{second}");
        for r in [&first, &second] {
            assert!(r.to_ascii_lowercase().contains("x-vault-token: t0k"), "{r}");
            assert!(r.ends_with("{\"input\":1}"), "{r}");
        }
    }

    #[test]
    fn a_forked_child_never_reuses_the_parents_connection() {
        use std::sync::atomic::AtomicUsize;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1/x", l.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let n = accepted.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                n.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut r = BufReader::new(c.try_clone().unwrap());
                    let mut w = c;
                    let mut line = String::new();
                    while r.read_line(&mut line).unwrap_or(0) > 0 {
                        if line == "\r\n" {
                            let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
                        }
                        line.clear();
                    }
                });
            }
        });
        let c = Client::new(&[], Duration::from_secs(2));
        let get = || {
            c.exchange(
                &http::Method::GET,
                &url,
                &[],
                None,
                Duration::from_secs(5),
                true,
            )
        };
        assert_eq!(get().unwrap().0, 200);
        assert_eq!(get().unwrap().0, 200);
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one kept-alive connection"
        );
        // SAFETY: the child only runs this thread's code and leaves with _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let ok = matches!(get(), Ok((200, _)));
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child: {status}"
        );
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "the child made its own connection"
        );
        assert_eq!(get().unwrap().0, 200, "the parent's connection still works");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_server_that_does_not_answer_is_a_timeout_within_the_time_given() {
        let (url, _rx) = server(vec![String::new()]);
        let c = Client::new(&[], Duration::from_secs(2));
        let t = Instant::now();
        let r = c.exchange(
            &http::Method::GET,
            &format!("{url}/v1/x"),
            &[],
            None,
            Duration::from_millis(300),
            true,
        );
        assert!(matches!(r, Err(Failure::Timeout)), "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }

    #[test]
    fn locations_are_joined_to_the_origin() {
        assert_eq!(
            join("http://a:1/v1/x", "http://b:2/v1/x"),
            "http://b:2/v1/x"
        );
        assert_eq!(join("https://a:1/v1/x", "/v1/y"), "https://a:1/v1/y");
        assert_eq!(join("https://a:1", "v1/y"), "https://a:1/v1/y");
    }
}
