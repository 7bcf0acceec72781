//! The configuration file: where it is, its shape, and validation with errors that name file, key and problem.

use cryptoki_sys::CKR_GENERAL_ERROR;
use p11bridge_backends::{Error, Result, SecretRef};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub slot: Vec<SlotConfig>,
    /// `[backend.NAME]` sections; each backend validates its own keys.
    #[serde(default)]
    pub backend: BTreeMap<String, toml::Table>,
    /// The interface `C_GetInterface(NULL, NULL, ...)` returns: "3.0" (default) or "2.40" (to front a 2.40 module
    /// exactly as it is: consumers that pick the default then see what they would see talking to it directly).
    pub default_interface: Option<String>,
    /// The audit trail (off without this section).
    #[serde(default)]
    pub audit: Option<super::audit::AuditConfig>,
    /// Backend problems that hide keys or fail operations are shown on stderr, one line per distinct cause per
    /// process (default `true`; `P11BRIDGE_QUIET=1` silences them too). The log (`P11BRIDGE_LOG`) is unaffected.
    pub notices: Option<bool>,
    /// What `C_GetInfo` reports: "p11bridge" (default) or "upstream" — the mirrored module's manufacturer,
    /// description, flags and library version (only when every slot mirrors one pkcs11 backend), for applications
    /// that recognise their HSM by it. The Cryptoki version is always that of the interface in use.
    pub library_info: Option<String>,
    /// The file and its text, to name the line of a problem found after parsing.
    #[serde(skip)]
    pub source: Option<(PathBuf, String)>,
}

impl Config {
    /// An error about a key of this file (its cause starts with `slot[N]...` or `backend.NAME...`), with the file
    /// and the line of that key in front: `FILE:LINE: backend.vault: unknown field ...`.
    pub fn locate(&self, e: Error) -> Error {
        let Some((path, text)) = &self.source else {
            return e;
        };
        let cause = e.cause().unwrap_or("").to_string();
        let line = locate(text, &cause);
        let at = line.map(|l| format!(":{l}")).unwrap_or_default();
        Error::with(e.rv(), format!("{}{at}: {cause}", path.display()))
    }
}

/// The line (1-based) that an error about `slot[N].KEY` / `backend.NAME.KEY` (or `backend.NAME: unknown field
/// \`KEY\``) points at: the key's line inside its section, else the section's header.
pub fn locate(text: &str, cause: &str) -> Option<usize> {
    // The innermost key the cause names wins: "slot[0].backends: hsm: CKR_X: backend.hsm.token_label: ..." points
    // at token_label.
    cause
        .split(": ")
        .collect::<Vec<_>>()
        .iter()
        .rev()
        .find_map(|part| locate_key(text, part, cause))
}

fn locate_key(text: &str, part: &str, cause: &str) -> Option<usize> {
    let head = part.split([':', ' ']).next().unwrap_or("");
    let squeezed = |l: &str| l.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    let (start, rest) = if let Some(r) = head.strip_prefix("slot[") {
        let (n, rest) = r.split_once(']')?;
        let n: usize = n.parse().ok()?;
        let start = text
            .lines()
            .enumerate()
            .filter(|(_, l)| squeezed(l) == "[[slot]]")
            .nth(n)?
            .0;
        (start, rest.trim_start_matches('.'))
    } else if let Some(r) = head.strip_prefix("backend.") {
        let (name, rest) = r.split_once('.').unwrap_or((r, ""));
        let plain = format!("[backend.{name}]");
        let quoted = format!("[backend.\"{name}\"]");
        let start = text.lines().position(|l| {
            let t = squeezed(l);
            t == plain || t == quoted
        })?;
        (start, rest)
    } else {
        return None;
    };
    find_key(text, start, rest, cause)
}

/// From a section header at line index `start`: the line of `key` in that section (or of the field an "unknown
/// field `X`" message names), else the header's line; 1-based.
fn find_key(text: &str, start: usize, key: &str, cause: &str) -> Option<usize> {
    let key = key.split(['.', '[']).next().unwrap_or("");
    let key = if key.is_empty() {
        cause
            .split_once("unknown field `")
            .and_then(|(_, r)| r.split_once('`'))
            .map(|(k, _)| k)
            .unwrap_or("")
    } else {
        key
    };
    if !key.is_empty() {
        for (i, l) in text.lines().enumerate().skip(start + 1) {
            let t = l.trim_start();
            if t.starts_with('[') {
                break;
            }
            if let Some(r) = t.strip_prefix(key) {
                let r = r.trim_start();
                if r.starts_with('=') || r.starts_with('.') {
                    return Some(i + 1);
                }
            }
        }
    }
    Some(start + 1)
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct SlotConfig {
    /// Token label of a unified slot (at most 32 bytes).
    pub label: Option<String>,
    /// The PIN `C_Login(CKU_USER)` checks for this token.
    pub user_pin: Option<SecretRef>,
    /// The PIN `C_Login(CKU_SO)` checks; without it SO login is refused.
    pub so_pin: Option<SecretRef>,
    /// Backends that feed this token.
    #[serde(default)]
    pub backends: Vec<String>,
    /// Where `C_CreateObject`/`C_Generate*` put new objects when the template does not say (default: the first).
    pub default_backend: Option<String>,
    /// Token serial number (default: derived from the label).
    pub serial: Option<String>,
    /// Session limits (default: unlimited).
    pub max_sessions: Option<usize>,
    pub max_rw_sessions: Option<usize>,
    /// Let `C_InitToken` through on a unified slot to its only backend, if that backend's token supports it
    /// (it is refused by default).
    #[serde(default)]
    pub allow_init_token: bool,
    /// Expose every slot of this (pkcs11) backend one-to-one instead of a unified token.
    pub mirror: Option<String>,
    /// A view: only keys of these types are found (`rsa`, `ec`, `ed25519`, `aes`, `generic_secret`, `chacha20`);
    /// other objects (certificates, data) are unaffected. For consumers that cannot cope with some key types.
    #[serde(default)]
    pub key_types: Vec<String>,
    /// A view: only objects whose label matches one of these patterns (`*` matches any run of characters).
    #[serde(default)]
    pub labels: Vec<String>,
}

/// The `CKK_*` of a `key_types` name.
pub fn key_type_of(name: &str) -> Option<cryptoki_sys::CK_KEY_TYPE> {
    use cryptoki_sys::*;
    Some(match name {
        "rsa" => CKK_RSA,
        "ec" => CKK_EC,
        "ed25519" | "ec_edwards" => CKK_EC_EDWARDS,
        "aes" => CKK_AES,
        "generic_secret" | "hmac" => CKK_GENERIC_SECRET,
        "chacha20" => CKK_CHACHA20,
        _ => return None,
    })
}

fn err(msg: String) -> Error {
    Error::with(CKR_GENERAL_ERROR, msg)
}

/// Where the configuration is read from: `P11BRIDGE_CONFIG`, else `$XDG_CONFIG_HOME/p11bridge/p11bridge.toml`,
/// else `/etc/p11bridge/p11bridge.toml`.
pub fn config_path() -> PathBuf {
    if let Some(p) = std::env::var_os("P11BRIDGE_CONFIG") {
        return PathBuf::from(p);
    }
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME") {
        let p = Path::new(&x).join("p11bridge/p11bridge.toml");
        if p.exists() {
            return p;
        }
    } else if let Some(h) = std::env::var_os("HOME") {
        let p = Path::new(&h).join(".config/p11bridge/p11bridge.toml");
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("/etc/p11bridge/p11bridge.toml")
}

/// Reads and validates the configuration file.
pub fn load(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(format!("{}: cannot read: {e}", path.display())))?;
    parse(&text, path)
}

/// Parses and validates configuration text (`path` only names it in errors).
pub fn parse(text: &str, path: &Path) -> Result<Config> {
    let de = toml::Deserializer::new(text);
    let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let line = inner
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let at = line.map(|l| format!(":{l}")).unwrap_or_default();
        let key = if key == "." {
            String::new()
        } else {
            format!(" {key}:")
        };
        err(format!(
            "{}{at}:{key} {}",
            path.display(),
            // One line: the log and stderr get exactly one line per failure.
            inner.message().trim().replace('\n', "; ")
        ))
    })?;
    let mut cfg = cfg;
    cfg.source = Some((path.to_path_buf(), text.to_string()));
    validate(&cfg).map_err(|e| cfg.locate(e))?;
    Ok(cfg)
}

/// The default interface as last read: not yet, 3.0 or 2.40.
static DEFAULT_INTERFACE: AtomicU8 = AtomicU8::new(NOT_READ);
const NOT_READ: u8 = 0;
const IS_30: u8 = 1;
const IS_240: u8 = 2;

/// Whether the default interface is 2.40. It may be asked before `C_Initialize`: read from the configuration file
/// without building anything on first use, and again by each `C_Initialize` ([`remember_default_interface`]),
/// never on every `C_GetInterface`. Anything unreadable means the default, 3.0.
///
/// Without `default_interface`, a configuration whose every slot mirrors one `kind = "pkcs11"` backend presents
/// that module's own version: 2.40 when it offers no 3.0 interface (so a client that checks the function list
/// never takes 3.0 paths the upstream cannot serve).
pub fn default_interface_is_240() -> bool {
    match DEFAULT_INTERFACE.load(Ordering::Relaxed) {
        IS_240 => true,
        IS_30 => false,
        _ => {
            let is_240 = read_default_interface_is_240();
            DEFAULT_INTERFACE.store(if is_240 { IS_240 } else { IS_30 }, Ordering::Relaxed);
            is_240
        }
    }
}

/// Remembers the default interface of the configuration `C_Initialize` just read (`None`: it could not read one;
/// the next question reads the file again).
pub fn remember_default_interface(cfg: Option<&Config>) {
    let state = match cfg {
        Some(c) => {
            let mirrors: Vec<Option<&str>> = c.slot.iter().map(|s| s.mirror.as_deref()).collect();
            if is_240(c.default_interface.as_deref(), &mirrors, |name| {
                c.backend.get(name)
            }) {
                IS_240
            } else {
                IS_30
            }
        }
        None => NOT_READ,
    };
    DEFAULT_INTERFACE.store(state, Ordering::Relaxed);
}

/// [`default_interface_is_240`] from the file itself.
fn read_default_interface_is_240() -> bool {
    let Ok(text) = std::fs::read_to_string(config_path()) else {
        return false;
    };
    let Ok(t) = text.parse::<toml::Table>() else {
        return false;
    };
    if let Some(v) = t.get("default_interface") {
        return v.as_str() == Some("2.40");
    }
    let Some(slots) = t.get("slot").and_then(|s| s.as_array()) else {
        return false;
    };
    let mirrors: Vec<Option<&str>> = slots
        .iter()
        .map(|s| s.get("mirror").and_then(|m| m.as_str()))
        .collect();
    is_240(None, &mirrors, |name| {
        t.get("backend")
            .and_then(|b| b.get(name))
            .and_then(|b| b.as_table())
    })
}

/// The rule of [`default_interface_is_240`], over `default_interface`, each slot's `mirror` and the backend
/// sections.
fn is_240<'a>(
    default_interface: Option<&str>,
    mirrors: &[Option<&str>],
    backend: impl Fn(&str) -> Option<&'a toml::Table>,
) -> bool {
    if let Some(v) = default_interface {
        return v == "2.40";
    }
    let Some(Some(first)) = mirrors.first() else {
        return false;
    };
    if mirrors.iter().any(|m| *m != Some(*first)) {
        return false;
    }
    let Some(b) = backend(first) else {
        return false;
    };
    if b.get("kind").and_then(|k| k.as_str()) != Some("pkcs11") {
        return false;
    }
    b.get("module")
        .and_then(|m| m.as_str())
        .and_then(|m| p11bridge_backends::pkcs11::lib::offers_only_240(Path::new(m)))
        .unwrap_or(false)
}

fn validate(cfg: &Config) -> Result<()> {
    if let Some(v) = &cfg.default_interface {
        if v != "2.40" && v != "3.0" {
            return Err(err(format!(
                "default_interface: \"{v}\" (expected \"3.0\" or \"2.40\")"
            )));
        }
    }
    if cfg.slot.is_empty() {
        return Err(err("slot: no [[slot]] is configured".into()));
    }
    match cfg.library_info.as_deref() {
        None | Some("p11bridge") => {}
        Some("upstream") => {
            let first = cfg.slot[0].mirror.as_deref();
            let one_mirror =
                first.is_some() && cfg.slot.iter().all(|s| s.mirror.as_deref() == first);
            let kind = first
                .and_then(|m| cfg.backend.get(m))
                .and_then(|b| b.get("kind"))
                .and_then(|k| k.as_str());
            if !one_mirror || kind != Some("pkcs11") {
                return Err(err(
                    "library_info: \"upstream\" needs every [[slot]] to mirror one kind = \"pkcs11\" backend"
                        .into(),
                ));
            }
        }
        Some(other) => {
            return Err(err(format!(
                "library_info: \"{other}\" (expected \"p11bridge\" or \"upstream\")"
            )))
        }
    }
    for (i, s) in cfg.slot.iter().enumerate() {
        let at = format!("slot[{i}]");
        if let Some(m) = &s.mirror {
            if !s.backends.is_empty() || s.label.is_some() || s.user_pin.is_some() {
                return Err(err(format!(
                    "{at}.mirror: a mirror slot takes no label, user_pin or backends (the upstream's apply)"
                )));
            }
            if !cfg.backend.contains_key(m) {
                return Err(err(format!("{at}.mirror: no [backend.{m}] section")));
            }
            continue;
        }
        let label = s.label.as_deref().ok_or_else(|| {
            err(format!(
                "{at}.label: missing (or give mirror = \"BACKEND\")"
            ))
        })?;
        if label.is_empty() || label.len() > 32 {
            return Err(err(format!("{at}.label: must be 1 to 32 bytes")));
        }
        if s.user_pin.is_none() {
            return Err(err(format!("{at}.user_pin: missing")));
        }
        for (key, pin) in [("user_pin", &s.user_pin), ("so_pin", &s.so_pin)] {
            if let Some(problem) = pin.as_ref().and_then(|p| p.emptiness()) {
                return Err(err(format!("{at}.{key}: {problem}")));
            }
        }
        if s.backends.is_empty() {
            return Err(err(format!("{at}.backends: list at least one backend")));
        }
        for b in &s.backends {
            if !cfg.backend.contains_key(b) {
                return Err(err(format!("{at}.backends: no [backend.{b}] section")));
            }
        }
        if let Some(d) = &s.default_backend {
            if !s.backends.contains(d) {
                return Err(err(format!(
                    "{at}.default_backend: \"{d}\" is not in backends"
                )));
            }
        }
        for k in &s.key_types {
            if key_type_of(k).is_none() {
                return Err(err(format!(
                    "{at}.key_types: unknown key type \"{k}\" (rsa, ec, ed25519, aes, generic_secret, chacha20)"
                )));
            }
        }
        if let Some(serial) = &s.serial {
            if serial.len() > 16 {
                return Err(err(format!("{at}.serial: at most 16 bytes")));
            }
        }
    }
    for (name, t) in &cfg.backend {
        match t.get("kind").map(|k| k.as_str()) {
            Some(Some(_)) => {}
            Some(None) => return Err(err(format!("backend.{name}.kind: must be a string"))),
            None => return Err(err(format!("backend.{name}.kind: missing"))),
        }
        for key in ["pin", "so_pin"] {
            if let Some(problem) = t
                .get(key)
                .and_then(|v| v.as_str())
                .and_then(|v| SecretRef::new(v).emptiness())
            {
                return Err(err(format!("backend.{name}.{key}: {problem}")));
            }
        }
    }
    validate_ha_groups(cfg)
}

/// `kind = "pkcs11-ha"` groups: `members` name `kind = "pkcs11"` sections that no slot uses directly (the group
/// builds them; two backends over one upstream token would each count its login on their own).
fn validate_ha_groups(cfg: &Config) -> Result<()> {
    for (name, members) in p11bridge_backends::ha_groups(&cfg.backend)? {
        for m in members {
            if cfg
                .slot
                .iter()
                .any(|s| s.backends.iter().any(|b| b == m) || s.mirror.as_deref() == Some(m))
            {
                return Err(err(format!(
                    "backend.{name}.members: {m} is a member of this HA group and cannot also be used by a slot"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(t: &str) -> std::result::Result<Config, String> {
        parse(t, Path::new("x.toml")).map_err(|e| e.cause().unwrap_or("").to_string())
    }

    #[test]
    fn good_config_parses() {
        let c = p(r#"
[[slot]]
label = "unified"
user_pin = "env:P"
backends = ["hsm"]
[[slot]]
mirror = "hsm"
[backend.hsm]
kind = "pkcs11"
module = "/x.so"
"#)
        .unwrap();
        assert_eq!(c.slot.len(), 2);
    }

    #[test]
    fn errors_name_file_key_and_problem() {
        let e =
            p("[[slot]]\nlabel = \"u\"\nuser_pin = \"1\"\nbackends = [\"nope\"]\n").unwrap_err();
        assert!(
            e.contains("x.toml") && e.contains("slot[0].backends") && e.contains("nope"),
            "{e}"
        );
        let e = p("[[slot]]\nlabel = \"u\"\nbogus = 1\n").unwrap_err();
        assert!(e.contains("x.toml:3") && e.contains("bogus"), "{e}");
        let e = p("[[slot]]\nlabel = 5\n").unwrap_err();
        assert!(e.contains("slot[0].label") || e.contains("label"), "{e}");
        let e = p("").unwrap_err();
        assert!(e.contains("no [[slot]]"), "{e}");
    }

    #[test]
    fn backend_and_cross_reference_errors_name_the_line() {
        let text = "[[slot]]\nlabel = \"u\"\nuser_pin = \"1\"\nbackends = [\"v\"]\n\n\
                    [backend.v]\nkind = \"vault-transit\"\nadress = \"http://x\"\n";
        assert_eq!(
            locate(
                text,
                "backend.v: unknown field `adress`, expected one of ..."
            ),
            Some(8)
        );
        assert_eq!(locate(text, "backend.v.kind: unknown kind"), Some(7));
        assert_eq!(locate(text, "backend.v.nothing: x"), Some(6));
        assert_eq!(
            locate(text, "slot[0].backends: no [backend.x] section"),
            Some(4)
        );
        assert_eq!(locate(text, "slot[1].backends: x"), None);
        assert_eq!(
            locate(
                text,
                "slot[0].backends: v: CKR_GENERAL_ERROR: backend.v.kind: no"
            ),
            Some(7)
        );
        // A problem inside a `pki = {...}` table points at its line.
        let pki = "[[slot]]\nlabel = \"u\"\nuser_pin = \"1\"\nbackends = [\"k\"]\n\n\
                   [backend.k]\nkind = \"aws-kms\"\nkeys = [\"alias/a\"]\npki = { vault = \"w\", role = \"r\" }\n";
        assert_eq!(
            locate(
                pki,
                "slot[0].backends: k: CKR_GENERAL_ERROR: backend.k.pki.vault: no [backend.w] section"
            ),
            Some(9)
        );
        assert_eq!(
            locate(
                pki,
                "backend.k.pki: unknown field `rol`, expected one of ..."
            ),
            Some(9)
        );
        let e =
            p("[[slot]]\nlabel = \"u\"\nuser_pin = \"1\"\nbackends = [\"nope\"]\n").unwrap_err();
        assert!(e.starts_with("x.toml:4: slot[0].backends"), "{e}");
    }

    #[test]
    fn empty_pins_are_refused() {
        let e = p("[[slot]]\nlabel = \"u\"\nuser_pin = \"\"\nbackends = [\"h\"]\n[backend.h]\nkind = \"pkcs11\"\n")
            .unwrap_err();
        assert!(e.contains("x.toml:3: slot[0].user_pin: empty"), "{e}");
        let e = p("[[slot]]\nlabel = \"u\"\nuser_pin = \"1\"\nso_pin = \"env:\"\nbackends = [\"h\"]\n[backend.h]\nkind = \"pkcs11\"\n")
            .unwrap_err();
        assert!(e.contains("x.toml:4: slot[0].so_pin"), "{e}");
        let e = p("[[slot]]\nlabel = \"u\"\nuser_pin = \"1\"\nbackends = [\"h\"]\n[backend.h]\nkind = \"pkcs11\"\npin = \"\"\n")
            .unwrap_err();
        assert!(e.contains("x.toml:7: backend.h.pin: empty"), "{e}");
    }

    #[test]
    fn ha_group_members_are_checked() {
        let base = |members: &str, extra: &str| {
            format!(
                "[[slot]]\nlabel = \"u\"\nuser_pin = \"1\"\nbackends = [\"hsm\"{extra}]\n\
                 [backend.hsm]\nkind = \"pkcs11-ha\"\nmembers = {members}\n\
                 [backend.a]\nkind = \"pkcs11\"\nmodule = \"/x.so\"\n\
                 [backend.v]\nkind = \"vault-transit\"\n"
            )
        };
        assert!(p(&base("[\"a\"]", "")).is_ok());
        let e = p(&base("[\"a\", \"nope\"]", "")).unwrap_err();
        assert!(
            e.contains("x.toml")
                && e.contains("backend.hsm.members")
                && e.contains("no [backend.nope]"),
            "{e}"
        );
        let e = p(&base("[\"a\", \"v\"]", "")).unwrap_err();
        assert!(
            e.contains("backend.hsm.members") && e.contains("v is kind = \"vault-transit\""),
            "{e}"
        );
        let e = p(&base("[\"a\"]", ", \"a\"")).unwrap_err();
        assert!(e.contains("cannot also be used by a slot"), "{e}");
    }

    #[test]
    fn default_interface_rule() {
        let table = |t: &str| t.parse::<toml::Table>().expect("toml");
        let vault = table("kind = \"vault-transit\"");
        let missing_module = table("kind = \"pkcs11\"\nmodule = \"/nonexistent/libnone.so\"");
        let backend = |name: &str| match name {
            "v" => Some(&vault),
            "m" => Some(&missing_module),
            _ => None,
        };
        assert!(is_240(Some("2.40"), &[], backend));
        assert!(!is_240(Some("3.0"), &[Some("m")], backend));
        assert!(!is_240(None, &[], backend));
        assert!(!is_240(None, &[None], backend));
        assert!(!is_240(None, &[Some("m"), Some("v")], backend));
        assert!(!is_240(None, &[Some("v")], backend));
        // A module that cannot be read offers no 2.40-only answer: the default, 3.0.
        assert!(!is_240(None, &[Some("m"), Some("m")], backend));
    }

    #[test]
    fn default_interface_is_remembered_from_c_initialize() {
        let with = |v: &str| {
            p(&format!(
                "default_interface = \"{v}\"\n[[slot]]\nmirror = \"hsm\"\n\
                 [backend.hsm]\nkind = \"pkcs11\"\nmodule = \"/x.so\"\n"
            ))
            .expect("config")
        };
        let cfg = with("2.40");
        remember_default_interface(Some(&cfg));
        assert!(default_interface_is_240());
        let cfg = with("3.0");
        remember_default_interface(Some(&cfg));
        assert!(!default_interface_is_240());
    }
}
