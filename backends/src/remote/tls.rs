//! The trust roots of a remote backend's TLS client: the system's, or a PEM bundle of CA certificates that takes
//! their place (`ca_cert`; for KMS also `AWS_CA_BUNDLE`, which the AWS CLI treats the same way). The bundle is read
//! and checked when the backend is built, so a bad file is a configuration error naming it, never a failure (or,
//! in the AWS SDK's rustls glue, a panic) at the first connection.

use rustls::pki_types::CertificateDer;
use std::path::{Path, PathBuf};

/// CA certificates read from one PEM file, every one usable as a trust anchor.
#[derive(Clone, Debug)]
pub struct CaBundle {
    /// Where they were read from (for messages).
    pub path: PathBuf,
    /// The file as read (the AWS SDK takes PEM).
    pub pem: Vec<u8>,
    pub certs: Vec<CertificateDer<'static>>,
}

impl CaBundle {
    /// Reads `path`: at least one certificate, each one a valid trust anchor. The error says what is wrong with
    /// the file, without its name (the caller names the key that gave it).
    pub fn load(path: &Path) -> std::result::Result<CaBundle, String> {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let certs = rustls_pemfile::certs(&mut &pem[..])
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: not PEM: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "{}: no certificate in it (a PEM file of CA certificates is expected)",
                path.display()
            ));
        }
        let mut check = rustls::RootCertStore::empty();
        for (i, c) in certs.iter().enumerate() {
            check.add(c.clone()).map_err(|e| {
                format!(
                    "{}: certificate {} is not usable as a CA: {e}",
                    path.display(),
                    i + 1
                )
            })?;
        }
        Ok(CaBundle {
            path: path.to_path_buf(),
            pem,
            certs,
        })
    }

    /// The bundle as rustls trust roots.
    pub fn root_store(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        // Every certificate was added to a store once already, in `load`.
        roots.add_parsable_certificates(self.certs.iter().cloned());
        roots
    }
}

/// The system's trust roots (those that parse).
pub fn system_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(system_root_certs());
    roots
}

/// The system's CA certificates as found (for a client that takes certificates, not a store).
pub fn system_root_certs() -> Vec<CertificateDer<'static>> {
    rustls_native_certs::load_native_certs().certs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_certificates_is_refused_with_its_name() {
        let dir = std::env::temp_dir().join(format!("p11bridge-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = CaBundle::load(&empty).unwrap_err();
        assert!(e.contains("empty.pem: no certificate in it"), "{e}");
        let e = CaBundle::load(&dir.join("missing.pem")).unwrap_err();
        assert!(e.contains("missing.pem: No such file"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
