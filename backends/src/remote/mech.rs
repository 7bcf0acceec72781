//! Mechanism logic shared by the remote backends: what each key type offers, DigestInfo parsing, local hashing,
//! output lengths, and local public-key operations (verify, encrypt) with the cached public key.

use super::{Curve, KeyMaterial};
use crate::{Error, Mechanism, Result};
use cryptoki_sys::*;
use sha2::Digest;

/// A hash a remote service can sign.
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

/// RSA signature padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RsaPad {
    Pkcs1,
    /// PSS with this salt length (MGF1 with the same hash).
    Pss(usize),
}

/// What the remote service is asked to sign.
#[derive(Clone, Debug)]
pub enum SignRequest {
    /// RSA over a digest.
    Rsa {
        hash: Hash,
        pad: RsaPad,
        digest: Vec<u8>,
    },
    /// ECDSA over a digest (the hash names the digest's algorithm; the digest may be of another length for
    /// `CKM_ECDSA`, where `hash` is chosen by length).
    Ecdsa { hash: Hash, digest: Vec<u8> },
    /// Pure EdDSA over the message.
    Eddsa {
        message: zeroize::Zeroizing<Vec<u8>>,
    },
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

/// PSS parameters from a mechanism: (hash, salt length). The MGF must use the same hash; for the hash-and-sign
/// mechanisms the parameter hash must be the mechanism's.
pub fn pss_params(mech: &Mechanism) -> Result<(Hash, usize)> {
    let p: CK_RSA_PKCS_PSS_PARAMS = mech.param()?;
    let h = Hash::from_ckm(p.hashAlg)
        .ok_or_else(|| Error::with(CKR_MECHANISM_PARAM_INVALID, "unsupported PSS hash"))?;
    if let Some(mh) = mechanism_hash(mech.mech_type()) {
        if mh != h {
            return Err(Error::with(
                CKR_MECHANISM_PARAM_INVALID,
                "PSS hash differs from the mechanism's",
            ));
        }
    }
    if p.mgf != h.mgf() {
        return Err(Error::with(
            CKR_MECHANISM_PARAM_INVALID,
            "PSS MGF must use the same hash",
        ));
    }
    Ok((h, p.sLen as usize))
}

/// OAEP parameters: the hash (MGF1 with the same hash, no label).
pub fn oaep_params(mech: &Mechanism) -> Result<Hash> {
    let p: CK_RSA_PKCS_OAEP_PARAMS = mech.param()?;
    let h = Hash::from_ckm(p.hashAlg)
        .ok_or_else(|| Error::with(CKR_MECHANISM_PARAM_INVALID, "unsupported OAEP hash"))?;
    if p.mgf != h.mgf() {
        return Err(Error::with(
            CKR_MECHANISM_PARAM_INVALID,
            "OAEP MGF must use the same hash",
        ));
    }
    if p.source != 0 && (p.source != CKZ_DATA_SPECIFIED || p.ulSourceDataLen != 0) {
        return Err(Error::with(
            CKR_MECHANISM_PARAM_INVALID,
            "OAEP labels are not supported",
        ));
    }
    Ok(h)
}

/// The length of a signature made by this key (known without asking anyone).
pub fn signature_len(k: &KeyMaterial) -> usize {
    match k {
        KeyMaterial::Rsa { modulus, .. } => modulus.len(),
        KeyMaterial::Ec { curve, .. } => 2 * curve.field_len(),
        KeyMaterial::Ed25519 { .. } => 64,
        KeyMaterial::Secret { .. } => 0,
    }
}

/// Verifies a signature locally with the public key. `Err(CKR_SIGNATURE_INVALID)` / `CKR_SIGNATURE_LEN_RANGE`.
pub fn verify_local(k: &KeyMaterial, req: &SignRequest, sig: &[u8]) -> Result<()> {
    let bad = || Error::new(CKR_SIGNATURE_INVALID);
    if sig.len() != signature_len(k) {
        return Err(Error::new(CKR_SIGNATURE_LEN_RANGE));
    }
    match (k, req) {
        (
            KeyMaterial::Rsa {
                modulus, exponent, ..
            },
            SignRequest::Rsa { hash, pad, digest },
        ) => {
            let pk = rsa::RsaPublicKey::new(
                rsa::BigUint::from_bytes_be(modulus),
                rsa::BigUint::from_bytes_be(exponent),
            )
            .map_err(|_| Error::new(CKR_KEY_TYPE_INCONSISTENT))?;
            let r = match pad {
                RsaPad::Pkcs1 => pk.verify(
                    rsa::Pkcs1v15Sign::new_unprefixed(),
                    &digest_info(*hash, digest),
                    sig,
                ),
                RsaPad::Pss(salt) => {
                    let scheme = match hash {
                        Hash::Sha1 => rsa::Pss::new_with_salt::<sha1::Sha1>(*salt),
                        Hash::Sha224 => rsa::Pss::new_with_salt::<sha2::Sha224>(*salt),
                        Hash::Sha256 => rsa::Pss::new_with_salt::<sha2::Sha256>(*salt),
                        Hash::Sha384 => rsa::Pss::new_with_salt::<sha2::Sha384>(*salt),
                        Hash::Sha512 => rsa::Pss::new_with_salt::<sha2::Sha512>(*salt),
                    };
                    pk.verify(scheme, digest, sig)
                }
            };
            r.map_err(|_| bad())
        }
        (KeyMaterial::Ec { curve, point, .. }, SignRequest::Ecdsa { digest, .. }) => {
            use p256::ecdsa::signature::hazmat::PrehashVerifier;
            // ECDSA takes a digest of any length as an integer (SEC 1 bits2int); the verifiers below refuse ones
            // shorter than half the field, so pad on the left, which keeps the value.
            let padded;
            let digest: &[u8] = if digest.len() < curve.field_len() {
                padded = [vec![0u8; curve.field_len() - digest.len()], digest.clone()].concat();
                &padded
            } else {
                digest
            };
            let ok = match curve {
                Curve::P256 => {
                    let vk =
                        p256::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| bad())?;
                    let s = p256::ecdsa::Signature::from_slice(sig).map_err(|_| bad())?;
                    vk.verify_prehash(digest, &s).is_ok()
                }
                Curve::P384 => {
                    let vk =
                        p384::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| bad())?;
                    let s = p384::ecdsa::Signature::from_slice(sig).map_err(|_| bad())?;
                    vk.verify_prehash(digest, &s).is_ok()
                }
                Curve::P521 => {
                    let vk =
                        p521::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| bad())?;
                    let s = p521::ecdsa::Signature::from_slice(sig).map_err(|_| bad())?;
                    vk.verify_prehash(digest, &s).is_ok()
                }
                Curve::Secp256k1 => {
                    let vk =
                        k256::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| bad())?;
                    let s = k256::ecdsa::Signature::from_slice(sig).map_err(|_| bad())?;
                    // k256 accepts low-S signatures only; KMS (like OpenSSL) makes either form, both valid.
                    let s = s.normalize_s().unwrap_or(s);
                    vk.verify_prehash(digest, &s).is_ok()
                }
            };
            ok.then_some(()).ok_or_else(bad)
        }
        (KeyMaterial::Ed25519 { point, .. }, SignRequest::Eddsa { message }) => {
            let vk = ed25519_dalek::VerifyingKey::from_bytes(point).map_err(|_| bad())?;
            let mut s = [0u8; 64];
            s.copy_from_slice(sig);
            vk.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&s))
                .map_err(|_| bad())
        }
        _ => Err(Error::new(CKR_KEY_TYPE_INCONSISTENT)),
    }
}

/// RSA-OAEP encryption with the public key, locally.
pub fn oaep_encrypt_local(k: &KeyMaterial, hash: Hash, pt: &[u8]) -> Result<Vec<u8>> {
    let KeyMaterial::Rsa {
        modulus, exponent, ..
    } = k
    else {
        return Err(Error::new(CKR_KEY_TYPE_INCONSISTENT));
    };
    let pk = rsa::RsaPublicKey::new(
        rsa::BigUint::from_bytes_be(modulus),
        rsa::BigUint::from_bytes_be(exponent),
    )
    .map_err(|_| Error::new(CKR_KEY_TYPE_INCONSISTENT))?;
    let pad = match hash {
        Hash::Sha1 => rsa::Oaep::new::<sha1::Sha1>(),
        Hash::Sha224 => rsa::Oaep::new::<sha2::Sha224>(),
        Hash::Sha256 => rsa::Oaep::new::<sha2::Sha256>(),
        Hash::Sha384 => rsa::Oaep::new::<sha2::Sha384>(),
        Hash::Sha512 => rsa::Oaep::new::<sha2::Sha512>(),
    };
    pk.encrypt(&mut rand_core::OsRng, pad, pt)
        .map_err(|_| Error::new(CKR_DATA_LEN_RANGE))
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
