//! p11bridge's vendor-defined PKCS#11 constants: the one Rust definition, used by the backends (re-exported as
//! `p11bridge_backends::vendor`), the module, the `p11bridge` command, the tests, the conformance harness and the
//! bench. Their C twin is `include/p11bridge.h`; `tests/header.rs` fails if the two differ.
//!
//! Attributes and mechanisms are `c_ulong`, the type `cryptoki-sys` gives `CK_ATTRIBUTE_TYPE` and
//! `CK_MECHANISM_TYPE` (`CK_ULONG`), so they are used where those are expected without a cast.
#![no_std]

use core::ffi::c_ulong;

/// Base of p11bridge's vendor range: `CKA_VENDOR_DEFINED | 0x0B11D000` (likewise for mechanisms).
pub const P11BRIDGE_VENDOR_BASE: u64 = 0x8B11_D000;

/// `CKA_P11BRIDGE_BACKEND` (UTF-8 string, read-only): the name of the backend that holds the object. In a
/// template for `C_CreateObject`/`C_Generate*`, selects the backend; in `C_FindObjectsInit`, filters by backend.
pub const CKA_P11BRIDGE_BACKEND: c_ulong = (P11BRIDGE_VENDOR_BASE + 1) as c_ulong;
/// `CKA_P11BRIDGE_KEY_VERSION` (CK_ULONG, read-only): the key version in use (Vault transit).
pub const CKA_P11BRIDGE_KEY_VERSION: c_ulong = (P11BRIDGE_VENDOR_BASE + 2) as c_ulong;

/// `CKM_P11BRIDGE_KMS_ENCRYPT`: AWS KMS symmetric encryption; the ciphertext is the KMS ciphertext blob.
pub const CKM_P11BRIDGE_KMS_ENCRYPT: c_ulong = (P11BRIDGE_VENDOR_BASE + 0x101) as c_ulong;
/// `CKM_P11BRIDGE_VAULT_ENCRYPT`: Vault transit encryption; the ciphertext is Vault's `vault:vN:...` string.
pub const CKM_P11BRIDGE_VAULT_ENCRYPT: c_ulong = (P11BRIDGE_VENDOR_BASE + 0x102) as c_ulong;
/// `CKM_P11BRIDGE_VAULT_REWRAP`: re-encrypt a Vault ciphertext under the latest key version.
pub const CKM_P11BRIDGE_VAULT_REWRAP: c_ulong = (P11BRIDGE_VENDOR_BASE + 0x103) as c_ulong;

/// Every constant above by its name, for the check against `include/p11bridge.h` (and for tools that print them).
// `c_ulong` is `u64` on 64-bit Linux (the cast is a no-op there) but `u32` elsewhere.
#[allow(clippy::unnecessary_cast)]
pub const ALL: &[(&str, u64)] = &[
    ("P11BRIDGE_VENDOR_BASE", P11BRIDGE_VENDOR_BASE),
    ("CKA_P11BRIDGE_BACKEND", CKA_P11BRIDGE_BACKEND as u64),
    (
        "CKA_P11BRIDGE_KEY_VERSION",
        CKA_P11BRIDGE_KEY_VERSION as u64,
    ),
    (
        "CKM_P11BRIDGE_KMS_ENCRYPT",
        CKM_P11BRIDGE_KMS_ENCRYPT as u64,
    ),
    (
        "CKM_P11BRIDGE_VAULT_ENCRYPT",
        CKM_P11BRIDGE_VAULT_ENCRYPT as u64,
    ),
    (
        "CKM_P11BRIDGE_VAULT_REWRAP",
        CKM_P11BRIDGE_VAULT_REWRAP as u64,
    ),
];
