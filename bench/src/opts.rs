//! The command line.

use std::path::PathBuf;

/// The direct client of the Vault rows.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum VaultBaseline {
    /// A blocking `ureq` client per thread, one kept-alive connection each (issue #17 item 5a).
    Lean,
    /// A reqwest client per thread on a 2-worker tokio runtime.
    Reqwest,
    /// A hand-written HTTP/1.1 exchange on a blocking socket.
    Raw,
}

pub struct Opts {
    /// "smoke", "quick" or "full".
    pub mode: &'static str,
    pub rounds: usize,
    /// Iterations per thread and round, relative to the quick mode's.
    pub scale: f64,
    /// Keys per remote backend in the enumeration rows (`--keys N`).
    pub enum_keys: usize,
    /// The `.so` under test (`--so PATH`).
    pub so: PathBuf,
    /// The Vault backend's `batch` setting (`--vault-batch N`), if any.
    pub vault_batch: Option<String>,
    /// The Vault rows' baseline (`--vault-baseline lean|reqwest|raw`; lean by default).
    pub vault_baseline: VaultBaseline,
    /// The KMS rows' baseline is aws-sdk-kms (`--kms-baseline sdk`), not the lean SigV4 client.
    pub kms_sdk_baseline: bool,
    /// `--only hsm,vault,kms,enum`: a subset of the sections (all by default).
    only: Option<String>,
}

impl Opts {
    pub fn parse(args: &[String]) -> Opts {
        let arg = |name: &str| args.iter().any(|a| a == name);
        let value = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1).cloned())
        };
        let (mode, rounds, scale, enum_keys) = if arg("--smoke") {
            ("smoke", 1, 0.05, 20)
        } else if arg("--quick") {
            ("quick", 3, 1.0, 200)
        } else {
            ("full", 5, 4.0, 1000)
        };
        let so = value("--so").map(PathBuf::from).unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| p11bridge_testkit::repo_root().join("target"))
                .join("release/libp11bridge.so")
        });
        Opts {
            mode,
            rounds,
            scale,
            enum_keys: value("--keys")
                .and_then(|v| v.parse().ok())
                .unwrap_or(enum_keys),
            so,
            vault_batch: value("--vault-batch"),
            vault_baseline: match value("--vault-baseline").as_deref() {
                Some("reqwest") => VaultBaseline::Reqwest,
                Some("raw") => VaultBaseline::Raw,
                _ => VaultBaseline::Lean,
            },
            kms_sdk_baseline: value("--kms-baseline").is_some_and(|v| v == "sdk"),
            only: value("--only"),
        }
    }

    /// Iterations per thread and round for a row whose quick-mode count is `n`.
    pub fn iters(&self, n: usize) -> usize {
        ((n as f64 * self.scale) as usize).max(3)
    }

    /// Whether the section `section` runs (`--only`).
    pub fn want(&self, section: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.split(',').any(|x| x == section))
    }
}
