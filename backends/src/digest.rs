//! Hashes and DigestInfo: SHA-1/SHA-2 digests (one-shot and incremental), the DER DigestInfo of PKCS#1 v1.5
//! signatures, and the hash built into each hash-and-sign mechanism. Used by the remote backends and by the core's
//! hash-and-sign emulation.

use crate::{Error, Result};
use cryptoki_sys::*;
use sha2::Digest;

/// A hash a remote service can sign (and the core can compute).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hash {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    /// The digest length in bytes.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(self) -> usize {
        match self {
            Hash::Sha1 => 20,
            Hash::Sha224 => 28,
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }
    pub fn from_len(n: usize) -> Option<Hash> {
        Some(match n {
            20 => Hash::Sha1,
            28 => Hash::Sha224,
            32 => Hash::Sha256,
            48 => Hash::Sha384,
            64 => Hash::Sha512,
            _ => return None,
        })
    }
    pub fn from_ckm(m: CK_MECHANISM_TYPE) -> Option<Hash> {
        Some(match m {
            CKM_SHA_1 => Hash::Sha1,
            CKM_SHA224 => Hash::Sha224,
            CKM_SHA256 => Hash::Sha256,
            CKM_SHA384 => Hash::Sha384,
            CKM_SHA512 => Hash::Sha512,
            _ => return None,
        })
    }
    pub fn mgf(self) -> CK_RSA_PKCS_MGF_TYPE {
        match self {
            Hash::Sha1 => CKG_MGF1_SHA1,
            Hash::Sha224 => CKG_MGF1_SHA224,
            Hash::Sha256 => CKG_MGF1_SHA256,
            Hash::Sha384 => CKG_MGF1_SHA384,
            Hash::Sha512 => CKG_MGF1_SHA512,
        }
    }
    /// DER of the DigestInfo prefix (AlgorithmIdentifier + OCTET STRING header).
    fn digest_info_prefix(self) -> &'static [u8] {
        match self {
            Hash::Sha1 => &[
                0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04,
                0x14,
            ],
            Hash::Sha224 => &[
                0x30, 0x2d, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x04, 0x05, 0x00, 0x04, 0x1c,
            ],
            Hash::Sha256 => &[
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x01, 0x05, 0x00, 0x04, 0x20,
            ],
            Hash::Sha384 => &[
                0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x02, 0x05, 0x00, 0x04, 0x30,
            ],
            Hash::Sha512 => &[
                0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x03, 0x05, 0x00, 0x04, 0x40,
            ],
        }
    }
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        let mut h = Hasher::new(self);
        h.update(data);
        h.finish()
    }
}

/// Parses a DER DigestInfo (the input of `CKM_RSA_PKCS` signing). Accepts the AlgorithmIdentifier with and without
/// the NULL parameters. Anything else is `CKR_DATA_INVALID`.
pub fn parse_digest_info(di: &[u8]) -> Result<(Hash, &[u8])> {
    for h in [
        Hash::Sha256,
        Hash::Sha384,
        Hash::Sha512,
        Hash::Sha1,
        Hash::Sha224,
    ] {
        let p = h.digest_info_prefix();
        if di.len() == p.len() + h.len() && di.starts_with(p) {
            return Ok((h, &di[p.len()..]));
        }
        // Without the NULL parameters: lengths shrink by 2.
        let mut q = p.to_vec();
        q[1] -= 2;
        q[3] -= 2;
        q.remove(q.len() - 4);
        q.remove(q.len() - 3);
        if di.len() == q.len() + h.len() && di.starts_with(&q) {
            return Ok((h, &di[q.len()..]));
        }
    }
    Err(Error::with(
        CKR_DATA_INVALID,
        "input is not a supported DER DigestInfo",
    ))
}

/// Builds the DigestInfo for a digest.
pub fn digest_info(h: Hash, digest: &[u8]) -> Vec<u8> {
    let mut v = h.digest_info_prefix().to_vec();
    v.extend_from_slice(digest);
    v
}

/// An incremental hash.
#[derive(Clone)]
pub enum Hasher {
    Sha1(sha1::Sha1),
    Sha224(sha2::Sha224),
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn new(h: Hash) -> Hasher {
        match h {
            Hash::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            Hash::Sha224 => Hasher::Sha224(sha2::Sha224::new()),
            Hash::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Hash::Sha384 => Hasher::Sha384(sha2::Sha384::new()),
            Hash::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }
    pub fn update(&mut self, d: &[u8]) {
        match self {
            Hasher::Sha1(h) => h.update(d),
            Hasher::Sha224(h) => h.update(d),
            Hasher::Sha256(h) => h.update(d),
            Hasher::Sha384(h) => h.update(d),
            Hasher::Sha512(h) => h.update(d),
        }
    }
    pub fn finish(self) -> Vec<u8> {
        match self {
            Hasher::Sha1(h) => h.finalize().to_vec(),
            Hasher::Sha224(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha384(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        }
    }
}

/// The hash built into a mechanism, for the hash-and-sign mechanisms.
pub fn mechanism_hash(m: CK_MECHANISM_TYPE) -> Option<Hash> {
    Some(match m {
        CKM_SHA1_RSA_PKCS | CKM_SHA1_RSA_PKCS_PSS | CKM_ECDSA_SHA1 | CKM_SHA_1_HMAC => Hash::Sha1,
        CKM_SHA224_RSA_PKCS | CKM_SHA224_RSA_PKCS_PSS | CKM_ECDSA_SHA224 | CKM_SHA224_HMAC => {
            Hash::Sha224
        }
        CKM_SHA256_RSA_PKCS | CKM_SHA256_RSA_PKCS_PSS | CKM_ECDSA_SHA256 | CKM_SHA256_HMAC => {
            Hash::Sha256
        }
        CKM_SHA384_RSA_PKCS | CKM_SHA384_RSA_PKCS_PSS | CKM_ECDSA_SHA384 | CKM_SHA384_HMAC => {
            Hash::Sha384
        }
        CKM_SHA512_RSA_PKCS | CKM_SHA512_RSA_PKCS_PSS | CKM_ECDSA_SHA512 | CKM_SHA512_HMAC => {
            Hash::Sha512
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_info_round_trip_and_rejects() {
        for h in [
            Hash::Sha1,
            Hash::Sha224,
            Hash::Sha256,
            Hash::Sha384,
            Hash::Sha512,
        ] {
            let d = vec![7u8; h.len()];
            let di = digest_info(h, &d);
            let (h2, d2) = parse_digest_info(&di).unwrap();
            assert_eq!((h2, d2), (h, &d[..]));
        }
        assert_eq!(
            parse_digest_info(&[1, 2, 3]).unwrap_err().rv(),
            CKR_DATA_INVALID
        );
        let mut di = digest_info(Hash::Sha256, &[0u8; 32]);
        di.push(0);
        assert_eq!(parse_digest_info(&di).unwrap_err().rv(), CKR_DATA_INVALID);
        // Absent NULL parameters are accepted.
        let mut q = Hash::Sha256.digest_info_prefix().to_vec();
        q[1] -= 2;
        q[3] -= 2;
        q.drain(q.len() - 4..q.len() - 2);
        q.extend([9u8; 32]);
        assert_eq!(parse_digest_info(&q).unwrap().0, Hash::Sha256);
    }
}
