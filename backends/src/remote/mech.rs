//! Mechanism logic shared by the remote backends: PSS and OAEP parameters, output lengths, and local public-key
//! operations (verify, encrypt) with the cached public key. Hashes and DigestInfo are in [`crate::digest`].

use super::{Curve, KeyMaterial};
pub use crate::digest::{digest_info, mechanism_hash, parse_digest_info, Hash, Hasher};
use crate::{Error, Mechanism, Result};
use cryptoki_sys::*;

/// The RSA mechanisms a remote service offers for RSA keys (the first and the last are not hash-and-sign).
pub const RSA_MECHS: [CK_MECHANISM_TYPE; 13] = [
    CKM_RSA_PKCS,
    CKM_SHA1_RSA_PKCS,
    CKM_SHA224_RSA_PKCS,
    CKM_SHA256_RSA_PKCS,
    CKM_SHA384_RSA_PKCS,
    CKM_SHA512_RSA_PKCS,
    CKM_RSA_PKCS_PSS,
    CKM_SHA1_RSA_PKCS_PSS,
    CKM_SHA224_RSA_PKCS_PSS,
    CKM_SHA256_RSA_PKCS_PSS,
    CKM_SHA384_RSA_PKCS_PSS,
    CKM_SHA512_RSA_PKCS_PSS,
    CKM_RSA_PKCS_OAEP,
];

/// The ECDSA mechanisms of a remote EC key (the first is not hash-and-sign).
pub const ECDSA_MECHS: [CK_MECHANISM_TYPE; 6] = [
    CKM_ECDSA,
    CKM_ECDSA_SHA1,
    CKM_ECDSA_SHA224,
    CKM_ECDSA_SHA256,
    CKM_ECDSA_SHA384,
    CKM_ECDSA_SHA512,
];

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
