//! `include/p11bridge.h` (the constants for C consumers) must define exactly the constants of this crate, with the
//! same values: the header is parsed here, its `#define`s evaluated, and both sides compared.

use std::collections::BTreeMap;

const HEADER: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../include/p11bridge.h"
));

/// Value of one C integer literal such as `0x8B11D000UL` or `0x101UL`.
fn literal(text: &str) -> Option<u64> {
    let digits = text.trim_end_matches(['U', 'u', 'L', 'l']);
    match digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => digits.parse().ok(),
    }
}

/// The header's valued `#define`s (the include guard has no value), each evaluated: a sum of literals and names
/// defined before it, in parentheses or not, as the header writes them.
fn header_defines() -> BTreeMap<String, u64> {
    let mut defines = BTreeMap::new();
    for line in HEADER.lines() {
        let Some(rest) = line.trim().strip_prefix("#define") else {
            continue;
        };
        let mut parts = rest.trim().splitn(2, char::is_whitespace);
        let name = parts.next().unwrap_or_default().to_owned();
        let expression = parts.next().unwrap_or_default().trim();
        if expression.is_empty() {
            continue;
        }
        let value = expression
            .trim_start_matches('(')
            .trim_end_matches(')')
            .split('+')
            .map(|term| {
                let term = term.trim();
                literal(term)
                    .or_else(|| defines.get(term).copied())
                    .unwrap_or_else(|| panic!("{name}: cannot evaluate `{term}` in `{expression}`"))
            })
            .sum();
        defines.insert(name, value);
    }
    defines
}

#[test]
fn header_defines_the_rust_constants() {
    let header = header_defines();
    let rust: BTreeMap<String, u64> = p11bridge_vendor::ALL
        .iter()
        .map(|&(n, v)| (n.to_owned(), v))
        .collect();
    for (name, value) in &rust {
        assert_eq!(
            header.get(name),
            Some(value),
            "{name}: include/p11bridge.h has {:x?}, Rust has {value:#x}",
            header.get(name)
        );
    }
    for name in header.keys() {
        assert!(
            rust.contains_key(name),
            "include/p11bridge.h defines {name}, which p11bridge_vendor::ALL does not list"
        );
    }
}

#[test]
fn literals_parse_as_c_does() {
    assert_eq!(literal("0x8B11D000UL"), Some(0x8B11_D000));
    assert_eq!(literal("0x001UL"), Some(1));
    assert_eq!(literal("12"), Some(12));
    assert_eq!(literal("P11BRIDGE_VENDOR_BASE"), None);
}

/// A constant added to `src/lib.rs` but not to `ALL` would escape the comparison above.
#[test]
fn all_lists_every_constant() {
    let source = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/lib.rs"));
    let names = source
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .filter_map(|l| l.split(':').next())
        .filter(|&n| n != "ALL");
    for name in names {
        assert!(
            p11bridge_vendor::ALL.iter().any(|&(n, _)| n == name),
            "{name} is missing from p11bridge_vendor::ALL"
        );
    }
}
