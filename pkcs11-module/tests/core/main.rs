//! The core's fast test loop: every PKCS#11 path of the token core exercised in-process through the test-only fake
//! backends (`backends/src/fake/`), with no HSM, Vault or KMS. `cargo test -p p11bridge` runs it.
//!
//! The module is global state, so every test takes [`common::Bridge`], which serializes tests, writes the test's
//! own configuration to a temporary directory, and wraps one `C_Initialize` … `C_Finalize`.

// `call!` passes the test's argument expressions (pointers into its own buffers) to the module's functions.
#![allow(clippy::macro_metavars_in_unsafe)]

mod common;

mod audit;
mod diagnostics;
mod emulation;
mod envelope;
mod failures;
mod fork;
mod handles;
mod keys;
mod login;
mod mirror;
mod operations;
mod panic_kind;
mod routing;
mod threads;
mod two_call;
mod unified_rules;
mod views;
