//! A private SoftHSM2 token (token "upstream" with the test keys, made by `softhsm-setup.sh`), the bridge
//! configuration over it, and the environment that points the bridge at both.

use std::path::{Path, PathBuf};
use std::process::Command;

pub const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The bridge's own user PIN for the unified token (different from the upstream's on purpose).
pub const BRIDGE_PIN: &str = "bridge-pin-5678";
pub const BRIDGE_SO_PIN: &str = "bridge-so-87654321";
/// The upstream token's PINs (softhsm-setup.sh's defaults).
pub const HSM_PIN: &str = "1234";
pub const HSM_SO_PIN: &str = "12345678";

/// Makes a fresh SoftHSM2 token directory `dir` with `softhsm-setup.sh` and exports what it prints
/// (`SOFTHSM2_CONF`, …) into this process's environment (inherited by children).
pub fn make_token(dir: &Path) {
    let out = Command::new("bash")
        .arg(crate::repo_root().join("softhsm-setup.sh"))
        .arg(dir)
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
}

/// The bridge configuration: slot 0 unified over `hsm` (+ `more_backends`), slot 1 the mirror of `hsm`;
/// `sections` holds the other backends' `[backend.NAME]` tables.
pub fn bridge_config(more_backends: &[&str], sections: &str) -> String {
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

/// Makes a fresh token in `dir/softhsm` and the configuration `dir/p11bridge.toml` ([`bridge_config`]), and
/// points this process's environment (inherited by children) at them: `P11BRIDGE_CONFIG` and the PINs. Returns
/// the configuration's path.
pub fn bridge_env(dir: &Path, more_backends: &[&str], sections: &str) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("test dir");
    make_token(&dir.join("softhsm"));
    let config = dir.join("p11bridge.toml");
    std::fs::write(&config, bridge_config(more_backends, sections)).expect("write config");
    std::env::set_var("P11BRIDGE_CONFIG", &config);
    std::env::set_var("P11BRIDGE_PIN", BRIDGE_PIN);
    std::env::set_var("P11BRIDGE_SO_PIN", BRIDGE_SO_PIN);
    std::env::set_var("HSM_PIN", HSM_PIN);
    std::env::set_var("HSM_SO_PIN", HSM_SO_PIN);
    config
}
