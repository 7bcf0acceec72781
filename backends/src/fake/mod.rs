//! The backends for tests only: in-memory fakes through which the core's test loop (`pkcs11-module/tests/core/`)
//! runs every PKCS#11 path in-process, with no HSM, Vault or KMS, and the panicking backend of the end-to-end
//! panic-containment test.
//!
//! They are compiled in only with the cargo feature `test-backends` (`cargo test -p p11bridge` turns it on through
//! the module's dev-dependencies, `run-tests.sh` with `--features p11bridge/test-backends`; the Debian package is
//! built without it), and even then accepted only when `P11BRIDGE_ENABLE_TEST_BACKENDS=1` is set at
//! `C_Initialize`; otherwise their kinds are unknown (a configuration error), so a production configuration can
//! never enable one by accident. They are not in docs/p11bridge.toml.5: these comments are their documentation.
//!
//! Three kinds:
//!
//! - `kind = "test-panic"` ([`panic`]): one key that panics in the operations its configuration names
//!   (`tests/tests/panic.rs`).
//! - `kind = "test-fake"` ([`remote`]): a [`crate::remote::RemoteService`] with software keys, so the whole remote
//!   session engine (two-call convention, multi-part hashing, local verification) runs as for Vault and KMS.
//! - `kind = "test-fake-pkcs11"` ([`upstream`]): a pass-through token at the `Backend`/`Token`/`BackendSession`
//!   level, like an upstream PKCS#11 module: objects made by `C_CreateObject`/`C_GenerateKey` (session objects
//!   die with their session), extractable secret keys, its own user and SO PINs and login state, mirror slots.
//!
//! ```toml
//! [backend.f]
//! kind = "test-fake"
//! # Its keys: label and type ("ec-p256", "ec-p384", "rsa-2048", "ed25519", "aes-256", "hmac-sha256").
//! # Private halves derive from the label (EC, Ed25519, secret keys); every RSA key shares one built-in key pair.
//! keys = [{ label = "f-ec", type = "ec-p256" }, { label = "f-rsa", type = "rsa-2048" }]
//! hash_and_sign = true    # false: offer only the raw mechanisms (CKM_ECDSA, CKM_RSA_PKCS, CKM_RSA_PKCS_PSS, …),
//!                         # so that the core emulates CKM_ECDSA_SHA256 and the like
//! allow_destroy = false   # whether C_DestroyObject may delete its keys
//! random = false          # whether it serves C_GenerateRandom
//! # Scripted behaviour, per operation: "list" (key enumeration), "sign", "decrypt", "encrypt", "mac",
//! # "generate", "destroy", "random".
//! fail = { sign = "CKR_DEVICE_ERROR" }   # the operation fails with this CK_RV (and a cause naming the backend)
//! panic_in = ["decrypt"]                 # the operation panics
//! latency_ms = 0                         # every operation first sleeps this long
//!
//! [backend.up]
//! kind = "test-fake-pkcs11"
//! label = "fake-upstream"      # its token label (mirror slots show it)
//! user_pin = "1234"            # the PINs C_Login checks on a mirror slot (the unified slot logs it in itself)
//! so_pin = "12345678"
//! # Secret keys present from the start (token objects, CKA_PRIVATE true): extractable ones can be wrapped by
//! # another backend (envelope wrapping), non-extractable or sensitive ones cannot.
//! secret_keys = [{ label = "up-aes", bytes = 32, extractable = true, sensitive = false }]
//! # Scripted behaviour, per operation: "login", "open_session", "find", "get_attribute", "create", "generate",
//! # "destroy", "digest", "sign", "verify".
//! fail = { find = "CKR_DEVICE_ERROR" }
//! panic_in = []
//! latency_ms = 0
//! ```
//!
//! Tests change the script of a running backend and read how often each operation reached it through
//! [`script`]`(backend name)`: a length query that reaches the backend shows as a call.

pub mod panic;
pub mod remote;
pub mod upstream;

use crate::{rv_name, Error, Result};
use cryptoki_sys::*;
use parking_lot::Mutex;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// The environment variable that lets the test kinds be configured.
pub const ENABLE_ENV: &str = "P11BRIDGE_ENABLE_TEST_BACKENDS";

/// Whether test backends are enabled in this process.
pub fn enabled() -> bool {
    std::env::var(ENABLE_ENV).is_ok_and(|v| v == "1")
}

/// A fake token's slot information.
fn slot_info(description: &str) -> CK_SLOT_INFO {
    CK_SLOT_INFO {
        slotDescription: crate::pad(description),
        manufacturerID: crate::pad("p11bridge"),
        flags: CKF_TOKEN_PRESENT,
        hardwareVersion: CK_VERSION { major: 0, minor: 0 },
        firmwareVersion: CK_VERSION { major: 0, minor: 0 },
    }
}

/// A fake token's information: its label, model and flags (the rest zero).
fn token_info(label: &str, model: &str, flags: CK_FLAGS) -> CK_TOKEN_INFO {
    // SAFETY: a plain C structure; all-zero is valid.
    let mut ti: CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
    ti.label = crate::pad(label);
    ti.manufacturerID = crate::pad("p11bridge");
    ti.model = crate::pad(model);
    ti.serialNumber = crate::pad("0");
    ti.flags = flags;
    ti
}

/// The scripted behaviour of one fake backend and what reached it, shared by the backend and the tests.
#[derive(Default)]
pub struct Script {
    backend: String,
    calls: Mutex<BTreeMap<String, usize>>,
    fail: Mutex<BTreeMap<String, CK_RV>>,
    panic_in: Mutex<BTreeSet<String>>,
    latency: Mutex<Duration>,
}

impl Script {
    /// How many times `op` reached the backend since it was built (or since [`Script::reset_calls`]).
    pub fn calls(&self, op: &str) -> usize {
        self.calls.lock().get(op).copied().unwrap_or(0)
    }

    /// Forgets the call counts.
    pub fn reset_calls(&self) {
        self.calls.lock().clear();
    }

    /// Makes `op` fail with `rv` from now on (`None`: succeed again).
    pub fn fail(&self, op: &str, rv: Option<CK_RV>) {
        let mut f = self.fail.lock();
        match rv {
            Some(rv) => f.insert(op.to_string(), rv),
            None => f.remove(op),
        };
    }

    /// Makes `op` panic from now on (or stop panicking).
    pub fn panic_in(&self, op: &str, on: bool) {
        let mut p = self.panic_in.lock();
        if on {
            p.insert(op.to_string());
        } else {
            p.remove(op);
        }
    }

    /// Makes every operation first sleep this long.
    pub fn set_latency(&self, latency: Duration) {
        *self.latency.lock() = latency;
    }

    /// Called by the backend at the start of `op`: counts it, waits the latency, then panics or fails as scripted.
    pub(crate) fn enter(&self, op: &str) -> Result<()> {
        *self.calls.lock().entry(op.to_string()).or_default() += 1;
        let latency = *self.latency.lock();
        if !latency.is_zero() {
            std::thread::sleep(latency);
        }
        if self.panic_in.lock().contains(op) {
            panic!(
                "test backend \"{}\": panic in {op} (scripted)",
                self.backend
            );
        }
        match self.fail.lock().get(op) {
            Some(rv) => Err(Error::with(
                *rv,
                format!(
                    "test backend \"{}\": {op} failed (scripted {})",
                    self.backend,
                    rv_name(*rv)
                ),
            )),
            None => Ok(()),
        }
    }
}

/// The scripts of the fake backends built in this process, by backend name (a new build replaces its entry).
static SCRIPTS: Mutex<BTreeMap<String, Arc<Script>>> = Mutex::new(BTreeMap::new());

/// The script of the fake backend named `backend` (the one built last under that name). Panics if none was built:
/// meant for tests.
pub fn script(backend: &str) -> Arc<Script> {
    SCRIPTS
        .lock()
        .get(backend)
        .cloned()
        .unwrap_or_else(|| panic!("no fake backend named \"{backend}\" was built"))
}

/// The scripted-behaviour keys every fake kind accepts (`fail`, `panic_in`, `latency_ms`).
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScriptConfig {
    #[serde(default)]
    fail: BTreeMap<String, String>,
    #[serde(default)]
    panic_in: Vec<String>,
    #[serde(default)]
    latency_ms: u64,
}

impl ScriptConfig {
    /// A script that only panics, in these operations.
    pub(crate) fn panicking_in(ops: Vec<String>) -> ScriptConfig {
        ScriptConfig {
            panic_in: ops,
            ..Default::default()
        }
    }

    /// Takes the scripted-behaviour keys out of a `[backend.NAME]` section (the rest is the kind's own).
    pub(crate) fn take_from(backend: &str, section: &mut toml::Table) -> Result<ScriptConfig> {
        let mut own = toml::Table::new();
        for key in ["fail", "panic_in", "latency_ms"] {
            if let Some(v) = section.remove(key) {
                own.insert(key.to_string(), v);
            }
        }
        crate::parse_section(backend, &own)
    }

    /// Registers a fresh script for `backend` from this configuration; `ops` are the operation names it knows.
    pub(crate) fn install(&self, backend: &str, ops: &[&str]) -> Result<Arc<Script>> {
        let known = |key: &str, op: &str| {
            if ops.contains(&op) {
                Ok(())
            } else {
                Err(Error::with(
                    CKR_GENERAL_ERROR,
                    format!(
                        "backend.{backend}.{key}: unknown operation \"{op}\" (one of {})",
                        ops.join(", ")
                    ),
                ))
            }
        };
        let script = Script {
            backend: backend.to_string(),
            latency: Mutex::new(Duration::from_millis(self.latency_ms)),
            ..Default::default()
        };
        for (op, rv) in &self.fail {
            known("fail", op)?;
            script.fail(
                op,
                Some(rv_from_name(rv).ok_or_else(|| {
                    Error::with(
                        CKR_GENERAL_ERROR,
                        format!("backend.{backend}.fail.{op}: unknown return value \"{rv}\""),
                    )
                })?),
            );
        }
        for op in &self.panic_in {
            known("panic_in", op)?;
            script.panic_in(op, true);
        }
        let script = Arc::new(script);
        SCRIPTS.lock().insert(backend.to_string(), script.clone());
        Ok(script)
    }
}

/// The `CK_RV` named `name` (`"CKR_DEVICE_ERROR"`), among the spec's return values.
fn rv_from_name(name: &str) -> Option<CK_RV> {
    (0..=0x200).find(|rv| rv_name(*rv) == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_values_are_found_by_name() {
        assert_eq!(rv_from_name("CKR_DEVICE_ERROR"), Some(CKR_DEVICE_ERROR));
        assert_eq!(rv_from_name("CKR_OK"), Some(CKR_OK));
        assert_eq!(rv_from_name("CKR_NOPE"), None);
    }

    #[test]
    fn scripts_count_fail_and_recover() {
        let cfg = ScriptConfig {
            fail: [("sign".to_string(), "CKR_DEVICE_ERROR".to_string())].into(),
            ..Default::default()
        };
        let s = cfg.install("unit-script", &["sign"]).unwrap();
        let e = s.enter("sign").unwrap_err();
        assert_eq!(e.rv(), CKR_DEVICE_ERROR);
        assert!(e.cause().unwrap().contains("unit-script"));
        s.fail("sign", None);
        s.enter("sign").unwrap();
        assert_eq!(script("unit-script").calls("sign"), 2);
        assert!(ScriptConfig {
            panic_in: vec!["nope".into()],
            ..Default::default()
        }
        .install("unit-script-2", &["sign"])
        .is_err());
    }
}
