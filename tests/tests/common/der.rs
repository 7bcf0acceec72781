//! Public keys (SubjectPublicKeyInfo) and ECDSA signatures in DER, for openssl, from PKCS#11 attributes and
//! signatures: on the `der`, `spki` and `pkcs1` crates.

use der::asn1::{AnyRef, BitStringRef, ObjectIdentifier, OctetString, UintRef};
use der::{Decode, Encode, Sequence};
use spki::{AlgorithmIdentifierRef, SubjectPublicKeyInfoRef};

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

fn spki(oid: ObjectIdentifier, parameters: Option<AnyRef<'_>>, key: &[u8]) -> Vec<u8> {
    SubjectPublicKeyInfoRef {
        algorithm: AlgorithmIdentifierRef { oid, parameters },
        subject_public_key: BitStringRef::from_bytes(key).expect("a bit string"),
    }
    .to_der()
    .expect("encode SubjectPublicKeyInfo")
}

/// RSA public key (modulus, public exponent: big-endian, as CKA_MODULUS / CKA_PUBLIC_EXPONENT) → SPKI.
pub fn rsa_spki(n: &[u8], e: &[u8]) -> Vec<u8> {
    let key = pkcs1::RsaPublicKey {
        modulus: UintRef::new(n).expect("modulus"),
        public_exponent: UintRef::new(e).expect("public exponent"),
    }
    .to_der()
    .expect("encode RSAPublicKey");
    spki(RSA_ENCRYPTION, Some(AnyRef::NULL), &key)
}

/// EC public key (CKA_EC_PARAMS as DER, the point unwrapped from its OCTET STRING) → SPKI.
pub fn ec_spki(params: &[u8], point: &[u8]) -> Vec<u8> {
    let params = AnyRef::from_der(params).expect("CKA_EC_PARAMS is DER");
    spki(EC_PUBLIC_KEY, Some(params), point)
}

pub fn ed25519_spki(point: &[u8]) -> Vec<u8> {
    spki(ED25519, None, point)
}

/// CKA_EC_POINT is a DER OCTET STRING holding the point.
pub fn unwrap_octet_string(b: &[u8]) -> Option<Vec<u8>> {
    OctetString::from_der(b).ok().map(OctetString::into_bytes)
}

/// ECDSA-Sig-Value (RFC 3279 §2.2.3).
#[derive(Sequence)]
struct EcdsaSigValue<'a> {
    r: UintRef<'a>,
    s: UintRef<'a>,
}

/// PKCS#11 ECDSA signature (r || s) → DER ECDSA-Sig-Value.
pub fn ecdsa_der(raw: &[u8]) -> Vec<u8> {
    let (r, s) = raw.split_at(raw.len() / 2);
    EcdsaSigValue {
        r: UintRef::new(r).expect("r"),
        s: UintRef::new(s).expect("s"),
    }
    .to_der()
    .expect("encode ECDSA-Sig-Value")
}
