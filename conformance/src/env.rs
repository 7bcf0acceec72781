//! Fixtures: a private SoftHSM2 token made by `softhsm-setup.sh` (token "upstream" with the test keys) and a
//! p11bridge configuration over it (a unified slot over the token, plus its mirror): the shared harness's
//! (`p11bridge_testkit::softhsm`), the same the end-to-end tests use.

use std::path::PathBuf;

pub use p11bridge_testkit::repo_root;
pub use p11bridge_testkit::softhsm::{
    bridge_config as config_text, bridge_env as setup, BRIDGE_PIN, BRIDGE_SO_PIN, HSM_PIN,
    HSM_SO_PIN, SOFTHSM,
};

/// `P11BRIDGE_SO`, else `target/release/libp11bridge.so` (of `CARGO_TARGET_DIR` if set).
pub fn bridge_so() -> PathBuf {
    if let Some(p) = std::env::var_os("P11BRIDGE_SO") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    target.join("release/libp11bridge.so")
}
