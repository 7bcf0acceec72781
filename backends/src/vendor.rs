//! p11bridge's vendor-defined constants (mirrored for C consumers in `include/p11bridge.h`).

use cryptoki_sys::{CK_ATTRIBUTE_TYPE, CK_MECHANISM_TYPE};

/// Base of p11bridge's vendor range: `CKA_VENDOR_DEFINED | 0x0B11D000` (likewise for mechanisms).
pub const P11BRIDGE_VENDOR_BASE: u64 = 0x8B11_D000;

/// `CKA_P11BRIDGE_BACKEND` (UTF-8 string, read-only): the name of the backend that holds the object. In a
/// template for `C_CreateObject`/`C_Generate*`, selects the backend; in `C_FindObjectsInit`, filters by backend.
pub const CKA_P11BRIDGE_BACKEND: CK_ATTRIBUTE_TYPE =
    (P11BRIDGE_VENDOR_BASE + 1) as CK_ATTRIBUTE_TYPE;
/// `CKA_P11BRIDGE_KEY_VERSION` (CK_ULONG, read-only): the key version in use (Vault transit).
pub const CKA_P11BRIDGE_KEY_VERSION: CK_ATTRIBUTE_TYPE =
    (P11BRIDGE_VENDOR_BASE + 2) as CK_ATTRIBUTE_TYPE;

/// `CKM_P11BRIDGE_KMS_ENCRYPT`: AWS KMS symmetric encryption; the ciphertext is the KMS ciphertext blob.
pub const CKM_P11BRIDGE_KMS_ENCRYPT: CK_MECHANISM_TYPE =
    (P11BRIDGE_VENDOR_BASE + 0x101) as CK_MECHANISM_TYPE;
/// `CKM_P11BRIDGE_VAULT_ENCRYPT`: Vault transit encryption; the ciphertext is Vault's `vault:vN:...` string.
pub const CKM_P11BRIDGE_VAULT_ENCRYPT: CK_MECHANISM_TYPE =
    (P11BRIDGE_VENDOR_BASE + 0x102) as CK_MECHANISM_TYPE;
/// `CKM_P11BRIDGE_VAULT_REWRAP`: re-encrypt a Vault ciphertext under the latest key version.
pub const CKM_P11BRIDGE_VAULT_REWRAP: CK_MECHANISM_TYPE =
    (P11BRIDGE_VENDOR_BASE + 0x103) as CK_MECHANISM_TYPE;

/// Whether the core answers this attribute itself (it is never sent to a backend). Other vendor attributes, such as
/// `CKA_P11BRIDGE_KEY_VERSION`, belong to the backend that holds the object.
pub fn is_bridge_attribute(t: CK_ATTRIBUTE_TYPE) -> bool {
    t == CKA_P11BRIDGE_BACKEND
}

/// Whether an attribute is one of p11bridge's (all read-only on existing objects).
pub fn is_vendor_attribute(t: CK_ATTRIBUTE_TYPE) -> bool {
    t == CKA_P11BRIDGE_BACKEND || t == CKA_P11BRIDGE_KEY_VERSION
}
