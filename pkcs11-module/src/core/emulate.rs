//! Hash-and-sign mechanisms for keys whose backend lacks them. The unified token's mechanism list is the union of
//! its backends'; a consumer that sees `CKM_ECDSA_SHA256` (offered by Vault or KMS) will use it with any EC key, so
//! for a key whose backend only has `CKM_ECDSA` (SoftHSM2 2.6) the core hashes locally and signs the digest with
//! the raw mechanism — exactly what the consumer would have done itself with `CKM_ECDSA`.

use cryptoki_sys::*;
use p11bridge_backends::digest::{digest_info, mechanism_hash, Hash, Hasher};
use p11bridge_backends::{OpKind, Result};

/// The raw mechanism a hash-and-sign mechanism rests on.
pub fn base_of(m: CK_MECHANISM_TYPE) -> Option<CK_MECHANISM_TYPE> {
    Some(match m {
        CKM_ECDSA_SHA1 | CKM_ECDSA_SHA224 | CKM_ECDSA_SHA256 | CKM_ECDSA_SHA384
        | CKM_ECDSA_SHA512 => CKM_ECDSA,
        CKM_SHA1_RSA_PKCS | CKM_SHA224_RSA_PKCS | CKM_SHA256_RSA_PKCS | CKM_SHA384_RSA_PKCS
        | CKM_SHA512_RSA_PKCS => CKM_RSA_PKCS,
        CKM_SHA1_RSA_PKCS_PSS
        | CKM_SHA224_RSA_PKCS_PSS
        | CKM_SHA256_RSA_PKCS_PSS
        | CKM_SHA384_RSA_PKCS_PSS
        | CKM_SHA512_RSA_PKCS_PSS => CKM_RSA_PKCS_PSS,
        _ => return None,
    })
}

/// An emulated operation: the input is hashed here, the backend signs or verifies the digest.
pub struct Emulated {
    hash: Hash,
    base: CK_MECHANISM_TYPE,
    hasher: Hasher,
    /// Whether `*Update` was called: then only `*Final` may finish the operation.
    updated: bool,
}

impl Emulated {
    pub fn new(mech: CK_MECHANISM_TYPE) -> Option<(Emulated, CK_MECHANISM_TYPE)> {
        let base = base_of(mech)?;
        let hash = mechanism_hash(mech)?;
        Some((
            Emulated {
                hash,
                base,
                hasher: Hasher::new(hash),
                updated: false,
            },
            base,
        ))
    }

    pub fn update(&mut self, data: &[u8]) {
        self.updated = true;
        self.hasher.update(data);
    }

    /// The raw mechanism's input for a single-part call: everything of `data`, or the error of a single-part call
    /// after an update ([`OpKind::single_part_after_update`]).
    pub fn single_input(&self, kind: OpKind, data: &[u8]) -> Result<Vec<u8>> {
        if self.updated {
            return Err(kind.single_part_after_update());
        }
        Ok(self.input(data))
    }

    /// The raw mechanism's input for everything hashed so far plus `last` (the state is kept, so that a length
    /// query or a too-small buffer can be followed by the real call).
    pub fn input(&self, last: &[u8]) -> Vec<u8> {
        let mut h = self.hasher.clone();
        h.update(last);
        let digest = h.finish();
        if self.base == CKM_RSA_PKCS {
            digest_info(self.hash, &digest)
        } else {
            digest
        }
    }
}
