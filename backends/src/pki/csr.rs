//! The PKCS#10 certificate request of a key, signed by the key itself through its own backend (the private key never
//! leaves it), and what is read back out of the certificates Vault issues.

use crate::remote::cert::algorithm;
use crate::remote::der::ecdsa_raw_to_der;
use crate::remote::mech::SignRequest;
use crate::remote::KeyMaterial;
use crate::{Error, Result};
use cryptoki_sys::{CKR_DEVICE_ERROR, CKR_KEY_TYPE_INCONSISTENT};
use std::str::FromStr;
use x509_cert::der::asn1::{BitString, Ia5String, OctetString};
use x509_cert::der::oid::AssociatedOid;
use x509_cert::der::{Decode, Encode, EncodePem};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::request::{CertReq, CertReqInfo, ExtensionReq, Version};
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

/// An RFC 4514 attribute value with its special characters escaped.
fn escape(v: &str) -> String {
    let mut out = String::new();
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && (c == '#' || c == ' '))
            || (i + 1 == v.chars().count() && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A subject alternative name as Vault reads `alt_names` / `ip_sans`: an IP address, an e-mail address (with `@`),
/// else a DNS name.
fn general_name(n: &str) -> std::result::Result<GeneralName, String> {
    if let Ok(ip) = n.parse::<std::net::IpAddr>() {
        return Ok(GeneralName::from(ip));
    }
    let ia5 = Ia5String::new(n).map_err(|e| format!("\"{n}\" is not ASCII: {e}"))?;
    Ok(if n.contains('@') {
        GeneralName::Rfc822Name(ia5)
    } else {
        GeneralName::DnsName(ia5)
    })
}

/// The PEM request (`-----BEGIN CERTIFICATE REQUEST-----`) for `material` with subject `CN=common_name` and the
/// subject alternative names `alt_names` (an extension request: Vault's roles take a CSR's SANs by default,
/// `use_csr_sans`), its signature made through `sign` (a PKCS#11-format signature: ECDSA r‖s, RSA PKCS#1 v1.5,
/// Ed25519).
pub fn request(
    common_name: &str,
    alt_names: &[String],
    material: &KeyMaterial,
    sign: impl FnOnce(&SignRequest) -> Result<Vec<u8>>,
) -> Result<String> {
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        Error::with(
            CKR_DEVICE_ERROR,
            format!("certificate request: {what}: {e}"),
        )
    };
    let spki = material
        .spki()
        .ok_or_else(|| Error::with(CKR_KEY_TYPE_INCONSISTENT, "a secret key has no certificate"))?;
    let mut attributes: x509_cert::attr::Attributes = Default::default();
    if !alt_names.is_empty() {
        let names = alt_names
            .iter()
            .map(|n| general_name(n))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| bad("alt_names", &e))?;
        let san = SubjectAltName(names)
            .to_der()
            .map_err(|e| bad("alt_names", &e))?;
        let ext = Extension {
            extn_id: SubjectAltName::OID,
            critical: false,
            extn_value: OctetString::new(san).map_err(|e| bad("alt_names", &e))?,
        };
        let attr = x509_cert::attr::Attribute::try_from(ExtensionReq(vec![ext]))
            .map_err(|e| bad("alt_names", &e))?;
        attributes.insert(attr).map_err(|e| bad("alt_names", &e))?;
    }
    let info = CertReqInfo {
        version: Version::V1,
        subject: Name::from_str(&format!("CN={}", escape(common_name)))
            .map_err(|e| bad("subject", &e))?,
        public_key: SubjectPublicKeyInfoOwned::from_der(&spki)
            .map_err(|e| bad("public key", &e))?,
        attributes,
    };
    let tbs = info.to_der().map_err(|e| bad("encoding", &e))?;
    let (alg, req) = algorithm(material, &tbs)
        .ok_or_else(|| Error::with(CKR_KEY_TYPE_INCONSISTENT, "a secret key has no certificate"))?;
    let sig = sign(&req)?;
    let sig = match material {
        KeyMaterial::Ec { .. } => ecdsa_raw_to_der(&sig),
        _ => sig,
    };
    let csr = CertReq {
        info,
        algorithm: AlgorithmIdentifierOwned::from_der(&alg).map_err(|e| bad("algorithm", &e))?,
        signature: BitString::from_bytes(&sig).map_err(|e| bad("signature", &e))?,
    };
    csr.to_pem(x509_cert::der::pem::LineEnding::LF)
        .map_err(|e| bad("PEM", &e))
}

/// What the bridge reads out of an issued certificate.
#[derive(Clone, Debug)]
pub struct Facts {
    /// Validity, seconds since the epoch.
    pub not_before: u64,
    pub not_after: u64,
    /// The serial number, colon-separated hex as Vault writes it (`3a:5f:...`).
    pub serial: String,
    /// The subject's common name (for labels), if it has one.
    pub common_name: Option<String>,
}

/// The facts of a DER certificate; `None` if it is not one.
pub fn facts(der: &[u8]) -> Option<Facts> {
    let c = x509_cert::Certificate::from_der(der).ok()?;
    let tbs = &c.tbs_certificate;
    let serial = tbs
        .serial_number
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let common_name = tbs.subject.0.iter().rev().find_map(|rdn| {
        rdn.0.iter().find_map(|atv| {
            (atv.oid == const_oid_cn()).then(|| {
                x509_cert::der::asn1::Utf8StringRef::try_from(&atv.value)
                    .map(|s| s.as_str().to_string())
                    .or_else(|_| {
                        x509_cert::der::asn1::PrintableStringRef::try_from(&atv.value)
                            .map(|s| s.as_str().to_string())
                    })
                    .ok()
            })?
        })
    });
    Some(Facts {
        not_before: tbs.validity.not_before.to_unix_duration().as_secs(),
        not_after: tbs.validity.not_after.to_unix_duration().as_secs(),
        serial,
        common_name,
    })
}

fn const_oid_cn() -> x509_cert::der::asn1::ObjectIdentifier {
    x509_cert::der::asn1::ObjectIdentifier::new_unwrap("2.5.4.3")
}

/// A time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(secs: u64) -> String {
    x509_cert::der::DateTime::from_unix_duration(std::time::Duration::from_secs(secs))
        .map(|d| d.to_string())
        .unwrap_or_else(|_| format!("{secs} s after the epoch"))
}

/// Every certificate of a PEM text, as DER.
pub fn pem_certs(text: &str) -> Vec<Vec<u8>> {
    rustls_pemfile::certs(&mut text.as_bytes())
        .filter_map(|c| c.ok().map(|c| c.as_ref().to_vec()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::mech::Hash;
    use p256::ecdsa::signature::hazmat::PrehashSigner;

    #[test]
    fn requests_are_signed_by_the_key_and_parse_back() {
        let sk = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        let point = sk
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        let m = KeyMaterial::Ec {
            curve: crate::remote::Curve::P256,
            point,
        };
        let alts = [
            "app.example".to_string(),
            "10.0.0.1".into(),
            "ops@example.com".into(),
        ];
        let pem = request("app, \"signing\"", &alts, &m, |r| match r {
            SignRequest::Ecdsa {
                hash: Hash::Sha256,
                digest,
            } => {
                let s: p256::ecdsa::Signature = sk.sign_prehash(digest).unwrap();
                Ok(s.to_bytes().to_vec())
            }
            _ => panic!("unexpected request"),
        })
        .unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        let der = rustls_pemfile::csr(&mut pem.as_bytes()).unwrap().unwrap();
        let csr = CertReq::from_der(der.as_ref()).unwrap();
        assert_eq!(csr.info.subject.to_string(), "CN=app\\, \\\"signing\\\"");
        // The signature verifies with the key's public key over the request info.
        use p256::ecdsa::signature::Verifier;
        let sig = p256::ecdsa::Signature::from_der(csr.signature.raw_bytes()).unwrap();
        sk.verifying_key()
            .verify(&csr.info.to_der().unwrap(), &sig)
            .unwrap();
        assert_eq!(csr.info.public_key.to_der().unwrap(), m.spki().unwrap());
        // The names as an extension request.
        let text = {
            let mut c = std::process::Command::new("openssl")
                .args(["req", "-noout", "-text"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            c.stdin.take().unwrap().write_all(pem.as_bytes()).unwrap();
            String::from_utf8(c.wait_with_output().unwrap().stdout).unwrap()
        };
        assert!(
            text.contains("DNS:app.example, IP Address:10.0.0.1, email:ops@example.com"),
            "{text}"
        );
    }

    #[test]
    fn facts_of_a_generated_certificate() {
        let m = KeyMaterial::Ed25519 { point: [7u8; 32] };
        let c = crate::remote::cert::locally_issued("k", &m).unwrap();
        let f = facts(&c.der).unwrap();
        assert_eq!(f.common_name.as_deref(), Some("k"));
        assert_eq!(rfc3339(f.not_before), "2024-01-01T00:00:00Z");
        assert!(f.not_after > f.not_before);
        assert_eq!(f.serial.split(':').count(), 16);
        assert!(facts(b"nope").is_none());
    }
}
