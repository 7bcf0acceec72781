//! The `[backend.NAME] kind = "pkcs11-ha"` section, and the HA groups of a whole configuration (which sections are
//! members, built by their group).

use super::*;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct HaConfig {
    #[allow(dead_code)]
    pub(super) kind: String,
    /// Names of `[backend.NAME] kind = "pkcs11"` sections, in order of preference for objects found on one only.
    pub(super) members: Vec<String>,
    /// Consecutive member failures that open its breaker (default 1: an HSM's device error is rarely transient).
    #[serde(default = "default_threshold")]
    pub(super) failure_threshold: u32,
    /// How long an open member is left alone before the next probe, in ms (default 1000).
    #[serde(default = "default_probe_ms")]
    pub(super) probe_interval_ms: u64,
    /// Re-initialize a member's module (`C_Finalize` + `C_Initialize`) when a probe finds it dead and no other
    /// backend uses that module: for client modules that do not reconnect by themselves (default true).
    #[serde(default = "default_true")]
    pub(super) reinitialize: bool,
}

pub(super) fn default_threshold() -> u32 {
    1
}

pub(super) fn default_probe_ms() -> u64 {
    1000
}

pub(super) fn default_true() -> bool {
    true
}

/// The HA groups among the `[backend.*]` sections (`kind = "pkcs11-ha"`), each with the members it names, in
/// order; every member is checked to be a `kind = "pkcs11"` section. Errors name the key
/// (`backend.NAME.members: ...`).
pub fn ha_groups(sections: &BTreeMap<String, toml::Table>) -> Result<Vec<(&str, Vec<&str>)>> {
    let mut groups = Vec::new();
    for (name, t) in sections {
        if t.get("kind").and_then(|k| k.as_str()) != Some("pkcs11-ha") {
            continue;
        }
        let err = |m: String| members_error(name, m);
        let Some(members) = t.get("members").and_then(|m| m.as_array()) else {
            return Err(err(
                "missing (a list of [backend.NAME] sections of kind \"pkcs11\")".into(),
            ));
        };
        let mut names = Vec::with_capacity(members.len());
        for m in members {
            let Some(m) = m.as_str() else {
                return Err(err("members are section names (strings)".into()));
            };
            member_section(sections, name, m)?;
            names.push(m);
        }
        groups.push((name.as_str(), names));
    }
    Ok(groups)
}

/// The sections HA groups build as their members (they are never built on their own), from a configuration
/// [`ha_groups`] accepted.
pub fn ha_members(sections: &BTreeMap<String, toml::Table>) -> std::collections::HashSet<&str> {
    ha_groups(sections)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|(_, members)| members)
        .collect()
}

/// The section of member `m` of group `group`: it must be a `kind = "pkcs11"` section.
pub(super) fn member_section<'a>(
    sections: &'a BTreeMap<String, toml::Table>,
    group: &str,
    m: &str,
) -> Result<&'a toml::Table> {
    let Some(section) = sections.get(m) else {
        return Err(members_error(group, format!("no [backend.{m}] section")));
    };
    let kind = section.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    if kind != "pkcs11" {
        return Err(members_error(
            group,
            format!("{m} is kind = \"{kind}\"; members must be kind = \"pkcs11\""),
        ));
    }
    Ok(section)
}

/// An error about the `members` of group `group`.
pub(super) fn members_error(group: &str, msg: String) -> Error {
    Error::with(CKR_GENERAL_ERROR, format!("backend.{group}.members: {msg}"))
}
