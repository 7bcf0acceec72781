//! Certificates for remote keys that have none configured: a self-signed X.509 certificate whose signature is
//! made by the key itself through its service (SunPKCS11 lists only private keys that have one). Keys that cannot
//! sign (decrypt-only RSA) get a certificate issued by a throwaway local key instead. Certificates are cached on
//! disk (they hold nothing secret) by key and public key, so a restart does not sign again.

use super::der::*;
use super::mech::{Hash, RsaPad, SignRequest};
use super::{Certificate, KeyMaterial};
use crate::Result;
use sha2::Digest;
use std::path::{Path, PathBuf};

fn name(cn: &str) -> Vec<u8> {
    let rdn = |oid: &[u8], v: &str| tlv(0x31, &seq(&[oid, &utf8(v)]));
    seq(&[
        &rdn(&[0x06, 0x03, 0x55, 0x04, 0x0a], "p11bridge"),
        &rdn(&[0x06, 0x03, 0x55, 0x04, 0x03], cn),
    ])
}

/// Signature algorithm identifier and what to ask the signer, for a key.
pub(crate) fn algorithm(m: &KeyMaterial, tbs: &[u8]) -> Option<(Vec<u8>, SignRequest)> {
    Some(match m {
        KeyMaterial::Rsa { .. } => (
            seq(&[
                &[
                    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b,
                ],
                &[0x05, 0x00],
            ]),
            SignRequest::Rsa {
                hash: Hash::Sha256,
                pad: RsaPad::Pkcs1,
                digest: Hash::Sha256.digest(tbs),
            },
        ),
        KeyMaterial::Ec { curve, .. } => {
            let h = curve.hash();
            let last = match h {
                Hash::Sha384 => 0x03,
                Hash::Sha512 => 0x04,
                _ => 0x02,
            };
            (
                seq(&[&[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, last]]),
                SignRequest::Ecdsa {
                    hash: h,
                    digest: h.digest(tbs),
                },
            )
        }
        KeyMaterial::Ed25519 { .. } => (
            seq(&[super::ED25519_PARAMS]),
            SignRequest::Eddsa {
                message: zeroize::Zeroizing::new(tbs.to_vec()),
            },
        ),
        KeyMaterial::Secret { .. } => return None,
    })
}

fn tbs(serial: &[u8], alg: &[u8], issuer: &[u8], subject: &[u8], spki: &[u8]) -> Vec<u8> {
    let validity = seq(&[&tlv(0x17, b"240101000000Z"), &tlv(0x18, b"99991231235959Z")]);
    seq(&[&uint(serial), alg, issuer, &validity, subject, spki])
}

fn serial_of(spki: &[u8]) -> Vec<u8> {
    let mut s = sha2::Sha256::digest(spki)[..16].to_vec();
    s[0] &= 0x7f;
    s[0] |= 0x01;
    s
}

/// A self-signed certificate for `material`, signed through `sign` (which returns a PKCS#11-format signature).
pub fn self_signed(
    label: &str,
    material: &KeyMaterial,
    sign: impl FnOnce(&SignRequest) -> Result<Vec<u8>>,
) -> Option<Result<Certificate>> {
    let spki = material.spki()?;
    let subject = name(label);
    let serial = serial_of(&spki);
    let (alg, _) = algorithm(material, &[])?;
    let t = tbs(&serial, &alg, &subject, &subject, &spki);
    let (_, req) = algorithm(material, &t)?;
    Some(sign(&req).map(|sig| {
        let sig = match material {
            KeyMaterial::Ec { .. } => ecdsa_raw_to_der(&sig),
            _ => sig,
        };
        Certificate {
            der: seq(&[&t, &alg, &bits(&sig)]),
            subject: subject.clone(),
            issuer: subject,
            serial: uint(&serial),
        }
    }))
}

/// A certificate for a key that cannot sign, issued by a throwaway local P-256 key.
pub fn locally_issued(label: &str, material: &KeyMaterial) -> Option<Certificate> {
    use p256::ecdsa::signature::Signer;
    let spki = material.spki()?;
    let issuer_key = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let alg = seq(&[&[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]]);
    let issuer = name("p11bridge local issuer");
    let subject = name(label);
    let serial = serial_of(&spki);
    let t = tbs(&serial, &alg, &issuer, &subject, &spki);
    let sig: p256::ecdsa::Signature = issuer_key.sign(&t);
    Some(Certificate {
        der: seq(&[&t, &alg, &bits(&sig.to_der().to_bytes())]),
        subject,
        issuer,
        serial: uint(&serial),
    })
}

/// The fields of a DER certificate's TBSCertificate the bridge uses, as slices of it (TLVs, tags included, except
/// the serial's contents).
struct Tbs<'a> {
    serial: &'a [u8],
    issuer: &'a [u8],
    subject: &'a [u8],
    spki: &'a [u8],
}

/// Walks a DER certificate: SEQUENCE { TBSCertificate SEQUENCE { [0] version?, serial, signature algorithm, issuer,
/// validity, subject, subjectPublicKeyInfo, ... }, ... }.
fn read_tbs(der: &[u8]) -> Option<Tbs<'_>> {
    let (0x30, cert, _) = read(der)? else {
        return None;
    };
    let (0x30, tbs, _) = read(cert)? else {
        return None;
    };
    let mut rest = tbs;
    // Optional [0] version.
    if rest.first() == Some(&0xa0) {
        rest = read(rest)?.2;
    }
    let (0x02, serial, rest) = read(rest)? else {
        return None;
    };
    let (_, _, rest) = read(rest)?; // signature algorithm
                                    // The whole TLV that starts `rest`, and what follows it.
    let whole = |r: &'_ [u8]| -> Option<(usize, usize)> {
        let after = read(r)?.2.len();
        Some((r.len() - after, after))
    };
    let (issuer_len, _) = whole(rest)?;
    let issuer = &rest[..issuer_len];
    let (_, _, rest) = read(&rest[issuer_len..])?; // validity
    let (subject_len, _) = whole(rest)?;
    let subject = &rest[..subject_len];
    let rest = &rest[subject_len..];
    let (spki_len, _) = whole(rest)?;
    Some(Tbs {
        serial,
        issuer,
        subject,
        spki: &rest[..spki_len],
    })
}

/// Reads subject, issuer and serial number out of a DER certificate (a configured PEM file).
pub fn parse(der: &[u8]) -> Option<Certificate> {
    let t = read_tbs(der)?;
    Some(Certificate {
        der: der.to_vec(),
        subject: t.subject.to_vec(),
        issuer: t.issuer.to_vec(),
        serial: tlv(0x02, t.serial),
    })
}

/// The SubjectPublicKeyInfo (DER) of a DER certificate.
pub fn spki_of(der: &[u8]) -> Option<&[u8]> {
    read_tbs(der).map(|t| t.spki)
}

/// Whether a certificate carries exactly this public key (compared as keys, not as encodings).
pub fn carries(der: &[u8], material: &KeyMaterial) -> bool {
    let theirs = spki_of(der)
        .and_then(KeyMaterial::from_spki)
        .and_then(|m| m.spki());
    theirs.is_some() && theirs == material.spki()
}

/// Where the certificates of one backend's keys come from, in order: the configured PEM files
/// (`certificates = {...}`), certificates imported for a key (`C_CreateObject`, kept in `store_dir`), generated
/// certificates cached in `cache_dir`, and one generated now. One implementation for every remote service.
#[derive(Clone, Debug)]
pub struct CertSource {
    /// The service kind (`vault-transit`, `aws-kms`): part of the file names.
    pub kind: &'static str,
    pub cache_dir: Option<PathBuf>,
    pub store_dir: Option<PathBuf>,
}

impl CertSource {
    /// `cert_cache_dir` and `cert_store_dir` of a backend's configuration; defaults: `$XDG_CACHE_HOME/p11bridge`
    /// (or `~/.cache/p11bridge`) and its `imported` directory.
    pub fn new(kind: &'static str, cache_dir: Option<PathBuf>, store_dir: Option<PathBuf>) -> Self {
        let cache_dir = self::cache_dir(cache_dir);
        let store_dir = store_dir.or_else(|| cache_dir.as_ref().map(|d| d.join("imported")));
        CertSource {
            kind,
            cache_dir,
            store_dir,
        }
    }

    /// The file holding the certificate imported for a key (`key_name`: the service's stable name for it).
    pub fn store_path(&self, key_name: &str) -> Option<PathBuf> {
        let mut h = sha2::Sha256::new();
        h.update(self.kind.as_bytes());
        h.update([0]);
        h.update(key_name.as_bytes());
        let hex: String = h.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Some(self.store_dir.as_ref()?.join(format!("{hex}.der")))
    }

    /// The certificate imported for this key, if there is one and it still carries the key's public key.
    pub fn imported(&self, key_name: &str, material: &KeyMaterial) -> Option<Certificate> {
        let der = std::fs::read(self.store_path(key_name)?).ok()?;
        if !carries(&der, material) {
            tracing::warn!(key = %key_name, "the imported certificate no longer matches the key's public key");
            return None;
        }
        parse(&der)
    }

    /// Imports a DER certificate for a key: refused (`CKR_ATTRIBUTE_VALUE_INVALID`, with the reason) unless it is
    /// an X.509 certificate of exactly this key's public key; kept in the store for every later process.
    pub fn import(
        &self,
        key_name: &str,
        label: &str,
        material: &KeyMaterial,
        der: &[u8],
    ) -> Result<Certificate> {
        use cryptoki_sys::{
            CKR_ATTRIBUTE_VALUE_INVALID, CKR_DEVICE_ERROR, CKR_KEY_TYPE_INCONSISTENT,
        };
        if material.spki().is_none() {
            return Err(crate::Error::with(
                CKR_KEY_TYPE_INCONSISTENT,
                format!("key \"{label}\" is a secret key: certificates go with key pairs"),
            ));
        }
        let c = parse(der).ok_or_else(|| {
            crate::Error::with(
                CKR_ATTRIBUTE_VALUE_INVALID,
                "CKA_VALUE is not a DER X.509 certificate",
            )
        })?;
        if !carries(der, material) {
            return Err(crate::Error::with(
                CKR_ATTRIBUTE_VALUE_INVALID,
                format!(
                    "the certificate's public key is not the public key of key \"{label}\" (CKA_ID matched, the SubjectPublicKeyInfo differs)"
                ),
            ));
        }
        let path = self.store_path(key_name).ok_or_else(|| {
            crate::Error::with(
                CKR_DEVICE_ERROR,
                "no certificate store: set cert_store_dir (or HOME / XDG_CACHE_HOME)",
            )
        })?;
        write_atomic(&path, der).map_err(|e| {
            crate::Error::with(
                CKR_DEVICE_ERROR,
                format!("cannot store the certificate in {}: {e}", path.display()),
            )
        })?;
        Ok(c)
    }

    /// The certificate a key shows: the configured PEM file, else the imported one, else the cached generated
    /// one, else one generated now (self-signed through `sign` when the key signs; else issued by a throwaway
    /// local key) and cached. `cache_name` names the key in the cache and the store.
    pub fn for_key(
        &self,
        backend: &str,
        configured: Option<&Path>,
        cache_name: &str,
        key: &super::RemoteKey,
        sign: impl FnOnce(&SignRequest) -> Result<Vec<u8>>,
    ) -> Option<Certificate> {
        if let Some(p) = configured {
            return match from_pem_file(p) {
                Ok(c) => Some(c),
                Err(e) => {
                    crate::diag::report(
                        cryptoki_sys::CKR_OK,
                        format!("backend \"{backend}\": key \"{}\": configured certificate {e}; the key has no certificate", key.label),
                    );
                    None
                }
            };
        }
        if let Some(c) = self.imported(cache_name, &key.material) {
            return Some(c);
        }
        let path = self
            .cache_dir
            .as_ref()
            .and_then(|d| cache_path(d, self.kind, cache_name, &key.material));
        if let Some(c) = path.as_ref().and_then(|p| load_cached(p, &key.material)) {
            return Some(c);
        }
        let made = if key.usage.sign {
            match self_signed(&key.label, &key.material, sign)? {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(backend = %backend, key = %key.name, error = %e, "cannot self-sign a certificate");
                    return None;
                }
            }
        } else {
            locally_issued(&key.label, &key.material)?
        };
        if let Some(p) = &path {
            store_cached(p, &made);
        }
        Some(made)
    }
}

/// Reads the first certificate of a PEM file.
pub fn from_pem_file(path: &Path) -> std::result::Result<Certificate, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let der = rustls_pemfile::certs(&mut &text[..])
        .next()
        .ok_or_else(|| format!("{}: no certificate", path.display()))?
        .map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&der).ok_or_else(|| format!("{}: not an X.509 certificate", path.display()))
}

/// Where a generated certificate for this key and public key is cached.
pub fn cache_path(
    dir: &Path,
    backend_kind: &str,
    key_name: &str,
    material: &KeyMaterial,
) -> Option<PathBuf> {
    Some(dir.join(format!(
        "{}.der",
        cache_stem(backend_kind, key_name, material)?
    )))
}

/// The name of a key's files in a certificate cache: a hash of the backend kind, the key's name and its public key
/// (a new public key, a new name).
pub fn cache_stem(backend_kind: &str, key_name: &str, material: &KeyMaterial) -> Option<String> {
    let spki = material.spki()?;
    let mut h = sha2::Sha256::new();
    h.update(backend_kind.as_bytes());
    h.update([0]);
    h.update(key_name.as_bytes());
    h.update([0]);
    h.update(&spki);
    Some(
        h.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

/// A cached certificate, if present and still for this public key.
pub fn load_cached(path: &Path, material: &KeyMaterial) -> Option<Certificate> {
    let der = std::fs::read(path).ok()?;
    let c = parse(&der)?;
    let spki = material.spki()?;
    // The certificate must carry this key (it would not if the cache file were stale or foreign).
    der.windows(spki.len()).any(|w| w == spki).then_some(c)
}

pub fn store_cached(path: &Path, c: &Certificate) {
    let _ = write_atomic(path, &c.der);
}

/// Writes `bytes` to `path` as a whole or not at all (a temporary file of this process and thread beside it,
/// renamed), creating its folder (0700) and the file 0600: another process reading the cache never sees half a file,
/// and two writers never write into the same temporary file.
pub fn write_atomic(path: &Path, bytes: impl AsRef<[u8]>) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    if let Some(d) = path.parent() {
        create_private_dir(d)?;
    }
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(
        ".{}.{}.tmp",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = path.with_file_name(name);
    let r = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes.as_ref()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// Creates a folder and its parents, those it creates readable by the user only (0700); existing ones are left
/// as they are.
pub fn create_private_dir(d: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(d)
}

/// The default cache folder: `$XDG_CACHE_HOME/p11bridge`, else `~/.cache/p11bridge`; `configured` wins.
pub fn cache_dir(configured: Option<PathBuf>) -> Option<PathBuf> {
    configured.or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|d| d.join("p11bridge"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificate_parses_back() {
        let m = KeyMaterial::Ed25519 { point: [9u8; 32] };
        let c = locally_issued("k", &m).unwrap();
        let p = parse(&c.der).unwrap();
        assert_eq!(p.subject, c.subject);
        assert_eq!(p.issuer, c.issuer);
        assert_eq!(p.serial, c.serial);
    }
}
