//! Secrets (PINs, tokens): zeroized on drop, never printed, resolved from `env:`/`file:` at use.

use crate::{Error, Result};
use cryptoki_sys::CKR_GENERAL_ERROR;
use std::fmt;
use zeroize::{Zeroize, Zeroizing};

/// Bytes that must never reach a log. `Debug` prints `***`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(Zeroizing::new(bytes))
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
    /// Compares in time independent of where the first difference lies.
    pub fn ct_eq(&self, other: &[u8]) -> bool {
        let a = self.expose();
        if a.len() != other.len() {
            return false;
        }
        a.iter().zip(other).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A reference to a secret as written in the configuration: `env:NAME`, `file:PATH`, or a literal.
/// Only the reference is kept; the value is read each time it is used.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretRef(String);

impl SecretRef {
    pub fn new(s: impl Into<String>) -> Self {
        SecretRef(s.into())
    }

    /// Reads the secret now. Errors name the reference (never the value).
    pub fn resolve(&self) -> Result<Secret> {
        if let Some(name) = self.0.strip_prefix("env:") {
            match std::env::var_os(name) {
                Some(v) => Ok(Secret::new(v.into_encoded_bytes())),
                None => Err(Error::with(
                    CKR_GENERAL_ERROR,
                    format!("environment variable {name} is not set"),
                )),
            }
        } else if let Some(path) = self.0.strip_prefix("file:") {
            let mut bytes = std::fs::read(path).map_err(|e| {
                Error::with(
                    CKR_GENERAL_ERROR,
                    format!("cannot read secret file {path}: {e}"),
                )
            })?;
            // A trailing newline is never part of the secret.
            while matches!(bytes.last(), Some(b'\n' | b'\r')) {
                bytes.pop();
            }
            let s = Secret::new(bytes.clone());
            bytes.zeroize();
            Ok(s)
        } else {
            Ok(Secret::new(self.0.as_bytes().to_vec()))
        }
    }

    /// Why this reference can never give a PIN, if it cannot: an empty literal, or `env:` / `file:` naming nothing.
    pub fn emptiness(&self) -> Option<&'static str> {
        match self.0.as_str() {
            "" => Some("empty (a PIN has at least 1 character; or write env:NAME or file:PATH)"),
            "env:" => Some("\"env:\" names no environment variable"),
            "file:" => Some("\"file:\" names no file"),
            _ => None,
        }
    }

    /// Checks that the reference can be resolved, without keeping the value.
    pub fn describe(&self) -> String {
        if self.0.starts_with("env:") || self.0.starts_with("file:") {
            self.0.clone()
        } else {
            "<literal>".into()
        }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Drop for SecretRef {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl<'de> serde::Deserialize<'de> for SecretRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(SecretRef(s))
    }
}
