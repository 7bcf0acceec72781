//! p11bridge: one PKCS#11 token over an upstream HSM, AWS KMS and Vault transit.
//!
//! `abi` is the C surface (thin: catch panics, check pointers, translate `Result` into `CK_RV`); `core` holds the
//! token logic; backends live in the `p11bridge-backends` crate.

pub mod abi;
pub mod core;
mod logging;

pub use p11bridge_backends::{Error, Result};
