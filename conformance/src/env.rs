//! Fixtures: a private SoftHSM2 token made by `softhsm-setup.sh` (token "upstream" with the test keys) and a
//! p11bridge configuration over it (a unified slot over the token, plus its mirror), like
//! `tests/tests/common/mod.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;

pub const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
pub const BRIDGE_PIN: &str = "bridge-pin-5678";
pub const BRIDGE_SO_PIN: &str = "bridge-so-87654321";
pub const HSM_PIN: &str = "1234";
pub const HSM_SO_PIN: &str = "12345678";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

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

/// The bridge configuration: slot 0 unified over `hsm` (+ `more_backends`), slot 1 the mirror of `hsm`.
pub fn config_text(more_backends: &[&str], sections: &str) -> String {
    let backends: Vec<String> = std::iter::once("hsm")
        .chain(more_backends.iter().copied())
        .map(|b| format!("\"{b}\""))
        .collect();
    let backends = backends.join(", ");
    format!(
        r#"
[[slot]]
label = "unified"
user_pin = "env:P11BRIDGE_PIN"
so_pin = "env:P11BRIDGE_SO_PIN"
backends = [{backends}]

[[slot]]
mirror = "hsm"

[backend.hsm]
kind = "pkcs11"
module = "{SOFTHSM}"
token_label = "upstream"
pin = "env:HSM_PIN"
so_pin = "env:HSM_SO_PIN"

{sections}
"#
    )
}

/// Makes a fresh token in `dir/softhsm` and a configuration `dir/p11bridge.toml`, and points this process's
/// environment (inherited by children) at them. Returns the configuration path.
pub fn setup(dir: &Path, more_backends: &[&str], sections: &str) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("test dir");
    let out = Command::new("bash")
        .arg(repo_root().join("softhsm-setup.sh"))
        .arg(dir.join("softhsm"))
        .output()
        .expect("run softhsm-setup.sh");
    assert!(
        out.status.success(),
        "softhsm-setup.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((k, v)) = line
            .trim()
            .strip_prefix("export ")
            .and_then(|l| l.split_once('='))
        {
            std::env::set_var(k, v.trim_matches(|c| c == '"' || c == '\''));
        }
    }
    let config = dir.join("p11bridge.toml");
    std::fs::write(&config, config_text(more_backends, sections)).expect("write config");
    std::env::set_var("P11BRIDGE_CONFIG", &config);
    std::env::set_var("P11BRIDGE_PIN", BRIDGE_PIN);
    std::env::set_var("P11BRIDGE_SO_PIN", BRIDGE_SO_PIN);
    std::env::set_var("HSM_PIN", HSM_PIN);
    std::env::set_var("HSM_SO_PIN", HSM_SO_PIN);
    config
}
