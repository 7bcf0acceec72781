//! TLS material for the tests that talk TLS to OpenBao and to KMS, made with the `openssl` command: a private CA
//! and the certificates a server may show (good, expired, for another host), an unrelated CA, and a client CA
//! with a client certificate.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Every file is PEM in one directory.
pub struct Pki {
    /// The private CA that signed the server certificates.
    pub ca: PathBuf,
    /// A CA that signed nothing here (a bundle that does not hold the server's CA).
    pub other_ca: PathBuf,
    /// The server key, shared by the server certificates below.
    pub server_key: PathBuf,
    /// For 127.0.0.1 and localhost, valid now.
    pub server_cert: PathBuf,
    /// For 127.0.0.1 and localhost, expired yesterday.
    pub expired_cert: PathBuf,
    /// Valid now, for `elsewhere.example` only.
    pub wrong_host_cert: PathBuf,
    /// The CA a server requiring client certificates trusts, and a client certificate it signed.
    pub client_ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// The host name [`Pki::wrong_host_cert`] is for.
pub const WRONG_HOST: &str = "elsewhere.example";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A new P-256 key, unencrypted (`openssl req` arguments).
const NEW_P256_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
];

/// A P-256 key `name.key` and a request for `cn` (`name.csr`).
fn key_and_request(dir: &Path, name: &str, cn: &str) {
    let (key, csr, subject) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("/CN={cn}"),
    );
    let mut args = vec!["req"];
    args.extend(NEW_P256_KEY);
    args.extend(["-keyout", &key, "-out", &csr, "-subj", &subject]);
    openssl(dir, &args);
}

/// A self-signed CA certificate `dir/name.pem` (subject `CN=p11bridge test NAME`, valid two days) and its key
/// `dir/name.key`: (certificate, key).
pub fn self_signed_ca(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key, subject) = (
        format!("{name}.pem"),
        format!("{name}.key"),
        format!("/CN=p11bridge test {name}"),
    );
    let mut args = vec!["req", "-x509"];
    args.extend(NEW_P256_KEY);
    args.extend([
        "-keyout", &key, "-out", &cert, "-subj", &subject, "-days", "2",
    ]);
    openssl(dir, &args);
    (dir.join(cert), dir.join(key))
}

/// `out.pem`: the request `csr.csr` signed by CA `ca`, valid for `days` (negative: expired that long ago), with
/// extensions `ext` (one line of `openssl x509 -extfile`).
fn issue(dir: &Path, ca: &str, csr: &str, out: &str, days: i32, ext: &str) {
    let extfile = format!("{out}.ext");
    std::fs::write(dir.join(&extfile), format!("{ext}\n")).expect("write extensions");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{csr}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            &days.to_string(),
            "-extfile",
            &extfile,
            "-out",
            &format!("{out}.pem"),
        ],
    );
}

/// Makes every file of [`Pki`] in `dir` (created).
pub fn make(dir: &Path) -> Pki {
    std::fs::create_dir_all(dir).expect("the TLS material's directory");
    let (ca, _) = self_signed_ca(dir, "ca");
    let (other_ca, _) = self_signed_ca(dir, "other-ca");
    let (client_ca, _) = self_signed_ca(dir, "client-ca");
    key_and_request(dir, "server", "127.0.0.1");
    let here = "subjectAltName=IP:127.0.0.1,DNS:localhost";
    issue(dir, "ca", "server", "server", 2, here);
    issue(dir, "ca", "server", "expired", -1, here);
    issue(
        dir,
        "ca",
        "server",
        "wrong-host",
        2,
        &format!("subjectAltName=DNS:{WRONG_HOST}"),
    );
    key_and_request(dir, "client", "p11bridge test client");
    issue(
        dir,
        "client-ca",
        "client",
        "client",
        2,
        "extendedKeyUsage=clientAuth",
    );
    Pki {
        ca,
        other_ca,
        server_key: dir.join("server.key"),
        server_cert: dir.join("server.pem"),
        expired_cert: dir.join("expired.pem"),
        wrong_host_cert: dir.join("wrong-host.pem"),
        client_ca,
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    }
}
