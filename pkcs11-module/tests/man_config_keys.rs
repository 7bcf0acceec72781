//! Every configuration key the code accepts is described in the manual page p11bridge.toml(5)
//! (`docs/p11bridge.toml.5`, shipped by the Debian package), in the section it belongs to.
//!
//! The list of accepted keys is not written down here: each section — the top level, `[[slot]]`, `[audit]`, and
//! `[backend.NAME]` of each kind — is fed an unknown key, and the parser's answer ("unknown field `...`, expected
//! one of `a`, `b`, ...", from serde's `deny_unknown_fields`) names every key it accepts. A key added to the code
//! without a `.TP` / `.B key` item in the right section of the page fails this test.

use p11bridge::core::config;
use std::collections::BTreeMap;
use std::path::Path;

const BOGUS: &str = "zz_not_a_p11bridge_key";

/// The keys an "unknown field" error lists as expected.
fn expected_keys(msg: &str) -> Vec<String> {
    let rest = msg
        .split_once(&format!("unknown field `{BOGUS}`"))
        .unwrap_or_else(|| panic!("not an unknown-field error: {msg}"))
        .1;
    let rest = rest.split_once("expected").map(|(_, r)| r).unwrap_or("");
    let keys: Vec<String> = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    assert!(!keys.is_empty(), "no expected keys in: {msg}");
    keys
}

fn config_error(text: &str) -> String {
    match config::parse(text, Path::new("test.toml")) {
        Ok(_) => panic!("accepted a bogus key:\n{text}"),
        Err(e) => e.cause().unwrap_or_default().to_string(),
    }
}

fn backend_error(kind: &str) -> String {
    let mut section = toml::Table::new();
    section.insert("kind".into(), toml::Value::String(kind.into()));
    section.insert(BOGUS.into(), toml::Value::Integer(1));
    let mut all = BTreeMap::new();
    all.insert("b".to_string(), section.clone());
    let ctx = p11bridge_backends::BuildContext {
        cant_create_threads: false,
    };
    match p11bridge_backends::build_with("b", &section, &all, &ctx) {
        Ok(_) => panic!("kind {kind}: accepted a bogus key"),
        Err(e) => e.cause().unwrap_or_default().to_string(),
    }
}

/// The keys of a `pki = {...}` table (in a `vault-transit` section that is otherwise valid).
fn pki_error() -> String {
    let section: toml::Table = toml::from_str(&format!(
        "kind = \"vault-transit\"\naddress = \"http://127.0.0.1:1\"\ntoken = \"t\"\nkeys = [\"k\"]\npki = {{ role = \"r\", {BOGUS} = 1 }}"
    ))
    .unwrap();
    let mut all = BTreeMap::new();
    all.insert("b".to_string(), section.clone());
    let ctx = p11bridge_backends::BuildContext {
        cant_create_threads: false,
    };
    match p11bridge_backends::build_with("b", &section, &all, &ctx) {
        Ok(_) => panic!("pki: accepted a bogus key"),
        Err(e) => e.cause().unwrap_or_default().to_string(),
    }
}

/// The manual page's text of one section: from the `.SH`/`.SS` line whose title starts with `title` to the next
/// heading.
fn man_section<'a>(man: &'a str, title: &str) -> &'a str {
    let start = man
        .find(&format!("\n{title}"))
        .unwrap_or_else(|| panic!("docs/p11bridge.toml.5 has no section {title:?}"))
        + 1;
    let rest = &man[start..];
    let end = rest[1..]
        .find("\n.SH")
        .into_iter()
        .chain(rest[1..].find("\n.SS"))
        .min()
        .map(|e| e + 1)
        .unwrap_or(rest.len());
    &rest[..end]
}

/// `.TP` items of a section: the keys it describes (`.B key` lines that follow a `.TP`).
fn described(section: &str) -> Vec<String> {
    let lines: Vec<&str> = section.lines().collect();
    lines
        .windows(2)
        .filter(|w| w[0] == ".TP")
        .filter_map(|w| w[1].strip_prefix(".B "))
        .map(|k| k.trim().to_string())
        .collect()
}

#[test]
fn every_configuration_key_is_in_the_manual_page() {
    let man_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/p11bridge.toml.5");
    let man = std::fs::read_to_string(&man_path).expect("read docs/p11bridge.toml.5");

    let cases: Vec<(&str, &str, String)> = vec![
        (
            "top level",
            ".SH TOP LEVEL",
            config_error(&format!("{BOGUS} = 1\n")),
        ),
        (
            "[[slot]]",
            ".SH SLOTS",
            config_error(&format!("[[slot]]\n{BOGUS} = 1\n")),
        ),
        (
            "[audit]",
            ".SH AUDIT",
            config_error(&format!("[audit]\n{BOGUS} = 1\n")),
        ),
        (
            "kind = \"pkcs11\"",
            ".SS kind = \"pkcs11\"",
            backend_error("pkcs11"),
        ),
        (
            "kind = \"pkcs11-ha\"",
            ".SS kind = \"pkcs11-ha\"",
            backend_error("pkcs11-ha"),
        ),
        (
            "kind = \"vault-transit\"",
            ".SS kind = \"vault-transit\"",
            backend_error("vault-transit"),
        ),
        (
            "kind = \"aws-kms\"",
            ".SS kind = \"aws-kms\"",
            backend_error("aws-kms"),
        ),
        ("pki = {...}", ".SH PKI CERTIFICATES", pki_error()),
    ];

    let backends_intro = described(man_section(&man, ".SH BACKENDS"));
    let mut missing = Vec::new();
    for (what, title, err) in &cases {
        let keys = expected_keys(err);
        let doc = described(man_section(&man, title));
        for k in &keys {
            // `kind` is described once, in the BACKENDS introduction, for every kind.
            let here = doc.contains(k) || (k == "kind" && backends_intro.contains(k));
            if !here {
                missing.push(format!("{what}: {k}"));
            }
        }
        println!(
            "{what}: {} keys, all described: {}",
            keys.len(),
            keys.join(", ")
        );
    }
    assert!(
        missing.is_empty(),
        "keys the code accepts but docs/p11bridge.toml.5 does not describe (add a .TP/.B item in its section):\n  {}",
        missing.join("\n  ")
    );
}
