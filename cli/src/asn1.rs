//! DER and PEM for what the CLI writes and reads: SubjectPublicKeyInfo, ECDSA signatures, X.509 certificates.

use der::asn1::{BitString, ObjectIdentifier, OctetString, UintRef};
use der::{Any, Decode, Encode};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const P521: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.35");
const SECP256K1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.10");

/// `CKA_EC_PARAMS` (a DER OID) of the curves the CLI generates.
pub fn curve_params(name: &str) -> Option<Vec<u8>> {
    let oid = match name {
        "p256" => P256,
        "p384" => P384,
        "p521" => P521,
        _ => return None,
    };
    oid.to_der().ok()
}

/// The curve named by `CKA_EC_PARAMS`, for people (`p256`, …), and its field size in bytes.
pub fn curve_of(params: &[u8]) -> Option<(&'static str, usize)> {
    if params == b"\x13\x0cedwards25519" {
        return Some(("ed25519", 32));
    }
    let oid = ObjectIdentifier::from_der(params).ok()?;
    Some(match oid {
        P256 => ("p256", 32),
        P384 => ("p384", 48),
        P521 => ("p521", 66),
        SECP256K1 => ("secp256k1", 32),
        ED25519 => ("ed25519", 32),
        _ => return None,
    })
}

/// `CKA_EC_POINT` is a DER OCTET STRING holding the point; some modules give the bare point.
pub fn ec_point(attr: &[u8]) -> Vec<u8> {
    match OctetString::from_der(attr) {
        Ok(o) => o.as_bytes().to_vec(),
        Err(_) => attr.to_vec(),
    }
}

fn spki_der(oid: ObjectIdentifier, params: Option<Any>, key: &[u8]) -> Result<Vec<u8>, String> {
    let spki = SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned {
            oid,
            parameters: params,
        },
        subject_public_key: BitString::from_bytes(key).map_err(|e| e.to_string())?,
    };
    spki.to_der().map_err(|e| e.to_string())
}

/// An RSA public key's SubjectPublicKeyInfo (DER).
pub fn rsa_spki(modulus: &[u8], exponent: &[u8]) -> Result<Vec<u8>, String> {
    let key = pkcs1::RsaPublicKey {
        modulus: UintRef::new(modulus).map_err(|e| e.to_string())?,
        public_exponent: UintRef::new(exponent).map_err(|e| e.to_string())?,
    }
    .to_der()
    .map_err(|e| e.to_string())?;
    spki_der(RSA_ENCRYPTION, Some(Any::from(der::asn1::Null)), &key)
}

/// An EC (or Ed25519) public key's SubjectPublicKeyInfo (DER) from `CKA_EC_PARAMS` and `CKA_EC_POINT`.
pub fn ec_spki(params: &[u8], point_attr: &[u8], edwards: bool) -> Result<Vec<u8>, String> {
    let point = ec_point(point_attr);
    if edwards {
        return spki_der(ED25519, None, &point);
    }
    let params = Any::from_der(params).map_err(|e| format!("CKA_EC_PARAMS: {e}"))?;
    spki_der(EC_PUBLIC_KEY, Some(params), &point)
}

/// Checks that `der` is a SubjectPublicKeyInfo; its public key bits.
pub fn spki_key_bits(der: &[u8]) -> Option<Vec<u8>> {
    let s = SubjectPublicKeyInfoOwned::from_der(der).ok()?;
    s.subject_public_key.as_bytes().map(<[u8]>::to_vec)
}

pub fn pem(label: &str, der: &[u8]) -> Result<String, String> {
    pem_rfc7468::encode_string(label, pem_rfc7468::LineEnding::LF, der).map_err(|e| e.to_string())
}

/// `SEQUENCE { r INTEGER, s INTEGER }` (RFC 3279), as openssl and X.509 want ECDSA signatures.
#[derive(der::Sequence)]
struct EcdsaSigValue<'a> {
    r: UintRef<'a>,
    s: UintRef<'a>,
}

/// PKCS#11's `r‖s` → DER.
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Result<Vec<u8>, String> {
    if raw.is_empty() || raw.len() & 1 != 0 {
        return Err(format!(
            "an ECDSA signature of {} bytes is not r‖s",
            raw.len()
        ));
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    EcdsaSigValue {
        r: UintRef::new(r).map_err(|e| e.to_string())?,
        s: UintRef::new(s).map_err(|e| e.to_string())?,
    }
    .to_der()
    .map_err(|e| e.to_string())
}

/// DER → PKCS#11's `r‖s` of `2 × field` bytes.
pub fn ecdsa_der_to_raw(sig: &[u8], field: usize) -> Result<Vec<u8>, String> {
    let v = EcdsaSigValue::from_der(sig).map_err(|e| format!("not a DER ECDSA signature: {e}"))?;
    let mut out = vec![0u8; 2 * field];
    for (i, x) in [v.r.as_bytes(), v.s.as_bytes()].iter().enumerate() {
        if x.len() > field {
            return Err("the ECDSA signature's integers are too large for this curve".into());
        }
        out[(i + 1) * field - x.len()..(i + 1) * field].copy_from_slice(x);
    }
    Ok(out)
}

/// A certificate read from a PEM or DER file, with the attributes a `CKO_CERTIFICATE` object carries.
pub struct Cert {
    pub der: Vec<u8>,
    pub subject: Vec<u8>,
    pub issuer: Vec<u8>,
    pub serial: Vec<u8>,
    /// The certified public key's bits.
    pub key_bits: Vec<u8>,
}

pub fn read_cert(bytes: &[u8]) -> Result<Cert, String> {
    let der = if bytes.starts_with(b"-----BEGIN") {
        let text = std::str::from_utf8(bytes).map_err(|_| "PEM that is not text".to_string())?;
        // The first block (a chain file starts with the leaf).
        let end = text
            .find("-----END CERTIFICATE-----")
            .map(|i| i + "-----END CERTIFICATE-----".len())
            .ok_or("no CERTIFICATE block in the PEM file")?;
        let (label, der) = pem_rfc7468::decode_vec(text[..end].trim().as_bytes())
            .map_err(|e| format!("PEM: {e}"))?;
        if label != "CERTIFICATE" {
            return Err(format!("a PEM {label} block, not a CERTIFICATE"));
        }
        der
    } else {
        bytes.to_vec()
    };
    let c = x509_cert::Certificate::from_der(&der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let t = &c.tbs_certificate;
    let enc = |r: der::Result<Vec<u8>>| r.map_err(|e| e.to_string());
    Ok(Cert {
        subject: enc(t.subject.to_der())?,
        issuer: enc(t.issuer.to_der())?,
        serial: enc(t.serial_number.to_der())?,
        key_bits: t
            .subject_public_key_info
            .subject_public_key
            .as_bytes()
            .unwrap_or_default()
            .to_vec(),
        der,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecdsa_round_trip() {
        let mut raw = vec![0u8; 64];
        raw[0] = 0x80; // needs a 0x00 pad in DER
        raw[63] = 1;
        raw[33] = 7; // s has leading zeros
        let d = ecdsa_raw_to_der(&raw).unwrap();
        assert_eq!(d[0], 0x30);
        assert_eq!(ecdsa_der_to_raw(&d, 32).unwrap(), raw);
        assert!(ecdsa_der_to_raw(&d, 16).is_err());
    }

    #[test]
    fn curves() {
        assert_eq!(curve_of(&curve_params("p384").unwrap()), Some(("p384", 48)));
        assert_eq!(
            curve_params("p256").unwrap(),
            [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]
        );
    }
}
