//! p11bridge's vendor-defined constants, re-exported from their one definition, the `p11bridge-vendor` crate
//! (mirrored for C consumers in `include/p11bridge.h`), and the core's questions about them.

use cryptoki_sys::CK_ATTRIBUTE_TYPE;

pub use p11bridge_vendor::{
    CKA_P11BRIDGE_BACKEND, CKA_P11BRIDGE_KEY_VERSION, CKM_P11BRIDGE_KMS_ENCRYPT,
    CKM_P11BRIDGE_VAULT_ENCRYPT, CKM_P11BRIDGE_VAULT_REWRAP, P11BRIDGE_VENDOR_BASE,
};

/// Whether the core answers this attribute itself (it is never sent to a backend). Other vendor attributes, such as
/// `CKA_P11BRIDGE_KEY_VERSION`, belong to the backend that holds the object.
pub fn is_bridge_attribute(t: CK_ATTRIBUTE_TYPE) -> bool {
    t == CKA_P11BRIDGE_BACKEND
}

/// Whether an attribute is one of p11bridge's (all read-only on existing objects).
pub fn is_vendor_attribute(t: CK_ATTRIBUTE_TYPE) -> bool {
    t == CKA_P11BRIDGE_BACKEND || t == CKA_P11BRIDGE_KEY_VERSION
}
