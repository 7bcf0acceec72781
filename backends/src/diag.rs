//! Never silent: problems that hide keys or fail operations reach the person, not only a debug log.
//!
//! - [`notice`]: one line on stderr per distinct text per process (`p11bridge: ...`), and the log at `warn`. A
//!   consumer (pkcs11-tool, openssl, ssh, a JVM) then shows the cause next to its own "key not found". Silenced by
//!   `notices = false` in the configuration or `P11BRIDGE_QUIET=1`; `P11BRIDGE_LOG` keeps controlling the log.
//! - [`set_last`] / [`take_last`]: the cause of the calling thread's last failure, read through the vendor function
//!   `C_P11BRIDGE_GetLastError` (include/p11bridge.h). A call that succeeds does not clear it (like `errno`);
//!   reading it does.
//!
//! Texts never contain a secret: they name references (`env:NAME`), endpoints, keys and what the backend answered.

use cryptoki_sys::CK_RV;
use parking_lot::Mutex;
use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// 0: not set by the configuration (the environment decides), 1: notices on, 2: notices off.
static CONFIGURED: AtomicU8 = AtomicU8::new(0);
/// The log writes `warn` lines to stderr itself: notices go through it only (no line twice).
static LOG_ON_STDERR: AtomicBool = AtomicBool::new(false);
/// At most this many distinct lines per process on stderr (a cause whose text keeps changing must not flood it).
const MAX_DISTINCT: usize = 100;
/// Texts already shown by this process (the pid: a forked child shows its own).
static SEEN: Mutex<Option<(u32, HashSet<String>)>> = Mutex::new(None);

thread_local! {
    static LAST: RefCell<Option<(CK_RV, String)>> = const { RefCell::new(None) };
    /// Bumped by every [`set_last`] on this thread.
    static SERIAL: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// A mark of the calling thread's last-failure record: [`set_last`] changes it.
pub fn mark() -> u64 {
    SERIAL.with(|s| s.get())
}

/// `notices = true|false` from the configuration (`None`: not given).
pub fn configure(notices: Option<bool>) {
    let v = match notices {
        None => 0,
        Some(true) => 1,
        Some(false) => 2,
    };
    CONFIGURED.store(v, Ordering::Relaxed);
}

/// Called by the logger when it writes to stderr.
pub fn set_log_on_stderr(on: bool) {
    LOG_ON_STDERR.store(on, Ordering::Relaxed);
}

/// Whether notices are shown: `P11BRIDGE_QUIET` (set and not `0`) silences them, else the configuration, else on.
pub fn enabled() -> bool {
    if let Some(v) = std::env::var_os("P11BRIDGE_QUIET") {
        if !v.is_empty() && v != "0" {
            return false;
        }
    }
    CONFIGURED.load(Ordering::Relaxed) != 2
}

/// Every notice of this process, in order, with a sequence number (the last [`RECENT_MAX`]): what
/// [`notices_since`] reads.
static RECENT: Mutex<(u64, std::collections::VecDeque<(u64, String)>)> =
    Mutex::new((0, std::collections::VecDeque::new()));
const RECENT_MAX: usize = 1000;

/// The sequence number the next notice will get.
pub fn notice_mark() -> u64 {
    RECENT.lock().0
}

/// The notices given since `mark` (repeats included) that start with `prefix`.
pub fn notices_since(mark: u64, prefix: &str) -> Vec<String> {
    RECENT
        .lock()
        .1
        .iter()
        .filter(|(n, t)| *n >= mark && t.starts_with(prefix))
        .map(|(_, t)| t.clone())
        .collect()
}

/// Shows `text` once per process: on stderr as `p11bridge: TEXT` (unless silenced), and in the log at `warn`.
/// Returns whether it was new.
pub fn notice(text: &str) -> bool {
    {
        let mut r = RECENT.lock();
        let n = r.0;
        r.0 += 1;
        r.1.push_back((n, text.to_string()));
        if r.1.len() > RECENT_MAX {
            r.1.pop_front();
        }
    }
    let pid = std::process::id();
    let (new, shown) = {
        let mut g = SEEN.lock();
        if !matches!(g.as_ref(), Some((p, _)) if *p == pid) {
            *g = Some((pid, HashSet::new()));
        }
        match g.as_mut() {
            Some((_, seen)) if seen.len() < MAX_DISTINCT => {
                let new = seen.insert(text.to_string());
                (new, seen.len())
            }
            _ => (false, MAX_DISTINCT + 1),
        }
    };
    if !new && shown > MAX_DISTINCT {
        // Past the cap: the log still gets it.
        tracing::warn!("{text}");
    }
    if new {
        tracing::warn!("{text}");
        if enabled() && !LOG_ON_STDERR.load(Ordering::Relaxed) {
            // Never `eprintln!`: a closed or broken stderr must not panic inside someone else's process.
            use std::io::Write;
            let mut e = std::io::stderr().lock();
            let _ = if shown == MAX_DISTINCT {
                writeln!(
                    e,
                    "p11bridge: {text}\np11bridge: (more than {MAX_DISTINCT} distinct problems: further ones go to the log only)"
                )
            } else {
                writeln!(e, "p11bridge: {text}")
            };
        }
    }
    new
}

/// A problem that hides keys or fails an operation: shown once ([`notice`]) and kept as the calling thread's last
/// failure cause.
pub fn report(rv: CK_RV, text: impl Into<String>) {
    let text = text.into();
    notice(&text);
    set_last(rv, text);
}

/// Records the cause of the calling thread's last failure.
pub fn set_last(rv: CK_RV, text: impl Into<String>) {
    let text = text.into();
    LAST.with(|l| *l.borrow_mut() = Some((rv, text)));
    SERIAL.with(|s| s.set(s.get().wrapping_add(1)));
}

/// The calling thread's last failure (its `CK_RV` and cause), without clearing it.
pub fn last() -> Option<(CK_RV, String)> {
    LAST.with(|l| l.borrow().clone())
}

/// The calling thread's last failure, cleared.
pub fn take_last() -> Option<(CK_RV, String)> {
    LAST.with(|l| l.borrow_mut().take())
}

/// An error with its sources, as one line for people: `a: b: c`. Repeated texts are dropped, and so is reqwest's
/// `for url (...)` (the caller names the endpoint itself), so the innermost cause — `Connection refused (os error
/// 111)`, a certificate error — is always there. A TLS failure gets its meaning in words at the end
/// ([`tls_meaning`]).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut meaning = None;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(x) = cur {
        meaning = meaning.or_else(|| rustls_error(x).map(tls_meaning));
        let mut t = x.to_string();
        if let Some(i) = t.find(" for url (") {
            t.truncate(i);
        }
        let t = t.trim().to_string();
        if !t.is_empty() && !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = x.source();
    }
    let chain = parts.join(": ");
    match meaning {
        Some(m) => format!("{chain} (TLS: {m})"),
        None => chain,
    }
}

/// The rustls error `e` is, or carries as the payload of an `io::Error` (hyper-rustls nests it two `io::Error`s
/// deep, where `source()` does not reach it).
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(r) = e.downcast_ref::<rustls::Error>() {
        return Some(r);
    }
    let payload = e.downcast_ref::<std::io::Error>()?.get_ref()?;
    rustls_error(payload)
}

/// What a TLS failure means, for the person who configures the backend.
pub fn tls_meaning(e: &rustls::Error) -> &'static str {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match e {
        E::InvalidCertificate(C::UnknownIssuer) => {
            "the server's certificate is not issued by a CA this backend trusts (ca_cert, for KMS also AWS_CA_BUNDLE; else the system's roots)"
        }
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the server's certificate has expired"
        }
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "the server's certificate is not valid yet (check the clocks)"
        }
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "the server's certificate is for another host name than the address's"
        }
        E::InvalidCertificate(C::Revoked) => "the server's certificate is revoked",
        E::InvalidCertificate(_) => "the server's certificate was refused",
        E::AlertReceived(A::CertificateRequired) => {
            "the server requires a client certificate (client_cert and client_key)"
        }
        E::AlertReceived(
            A::BadCertificate
            | A::UnknownCA
            | A::CertificateUnknown
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::UnsupportedCertificate
            | A::AccessDenied,
        ) => "the server refused the client certificate",
        E::AlertReceived(_) => "the server ended the handshake",
        _ => "the handshake failed",
    }
}

/// Forgets the texts shown so far (tests).
pub fn reset_seen() {
    *SEEN.lock() = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_text_and_last_per_thread() {
        reset_seen();
        assert!(notice("backend \"x\": down"));
        assert!(!notice("backend \"x\": down"));
        assert!(notice("backend \"y\": down"));
        report(5, "cause one");
        assert_eq!(last(), Some((5, "cause one".to_string())));
        std::thread::spawn(|| assert_eq!(last(), None))
            .join()
            .unwrap();
        assert_eq!(take_last(), Some((5, "cause one".to_string())));
        assert_eq!(take_last(), None);
    }

    #[test]
    fn error_chain_keeps_the_innermost_cause() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "error sending request for url (http://127.0.0.1:1/v1/x)")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(std::io::Error::from_raw_os_error(111));
        let t = error_chain(&e);
        assert!(t.starts_with("error sending request: "), "{t}");
        assert!(t.contains("os error 111"), "{t}");
        assert!(!t.contains("url ("), "{t}");
    }

    #[test]
    fn a_tls_failure_inside_an_io_error_is_explained() {
        let e = std::io::Error::other(std::io::Error::other(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        )));
        let t = error_chain(&e);
        assert!(
            t.starts_with("invalid peer certificate: UnknownIssuer"),
            "{t}"
        );
        assert!(t.ends_with("(TLS: the server's certificate is not issued by a CA this backend trusts (ca_cert, for KMS also AWS_CA_BUNDLE; else the system's roots))"), "{t}");
    }
}
