//! Logging with `tracing`: off unless `P11BRIDGE_LOG` is set (an `EnvFilter`, e.g. `debug`), to stderr or to
//! `P11BRIDGE_LOG_FILE`. Nothing logged ever contains a secret: PINs and key material are `Secret`s whose `Debug`
//! prints `***`, and data buffers are never logged.

use p11bridge_backends::Error;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

static INIT: Once = Once::new();
static ENABLED: AtomicBool = AtomicBool::new(false);

pub fn init() {
    INIT.call_once(|| {
        let Ok(filter) = std::env::var("P11BRIDGE_LOG") else {
            return;
        };
        let Ok(filter) = tracing_subscriber::EnvFilter::try_new(filter) else {
            eprintln!("p11bridge: P11BRIDGE_LOG is not a valid filter; logging stays off");
            return;
        };
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_target(false)
            .with_ansi(false);
        let ok = match std::env::var_os("P11BRIDGE_LOG_FILE") {
            Some(path) => match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
            {
                Ok(f) => builder
                    .with_writer(std::sync::Mutex::new(f))
                    .try_init()
                    .is_ok(),
                Err(e) => {
                    eprintln!("p11bridge: cannot open P11BRIDGE_LOG_FILE: {e}");
                    false
                }
            },
            None => {
                let ok = builder.with_writer(std::io::stderr).try_init().is_ok();
                // Its warn lines carry the notices: no line twice on stderr.
                p11bridge_backends::diag::set_log_on_stderr(ok);
                ok
            }
        };
        ENABLED.store(ok, Ordering::Relaxed);
    });
}

/// Records `e` as the calling thread's last failure (`C_P11BRIDGE_GetLastError`); its text.
fn set_last_failure(e: &Error) -> String {
    let msg = e
        .cause()
        .map(str::to_owned)
        .unwrap_or_else(|| e.to_string());
    p11bridge_backends::diag::set_last(e.rv(), msg.clone());
    msg
}

/// Reports a failure that leaves the module unusable (a bad configuration): one line, always shown — through the
/// log when logging is on, else on stderr, since the application only sees `CKR_GENERAL_ERROR`.
pub fn fatal(e: &Error) {
    let msg = set_last_failure(e);
    if !p11bridge_backends::diag::enabled() {
        // P11BRIDGE_QUIET: the caller reports the cause itself (p11bridge does, from C_P11BRIDGE_GetLastError).
        tracing::error!("C_Initialize failed: {msg}");
    } else if ENABLED.load(Ordering::Relaxed) {
        tracing::error!("C_Initialize failed: {msg}");
    } else {
        eprintln!("p11bridge: C_Initialize failed: {msg}");
    }
}

/// Like [`fatal`], without the stderr line: the cause goes to the calling thread's last failure and the log only.
pub fn fatal_quiet(e: &Error) {
    let msg = set_last_failure(e);
    tracing::error!("C_Initialize failed: {msg}");
}
