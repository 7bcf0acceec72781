//! The AWS KMS backend over HTTPS: moto behind the fidelity layer serving TLS with a certificate of a private CA
//! (made by the test, `p11bridge_testkit::tls`). Signing works with `ca_cert` and with `AWS_CA_BUNDLE` (as the AWS
//! CLI reads it), signatures verified by openssl; `ca_cert` wins over `AWS_CA_BUNDLE`; a bundle without the CA is
//! refused with the certificate problem and the endpoint.

mod common;

use common::*;
use cryptoki::context::Pkcs11;
use p11bridge_testkit::moto::Moto;
use p11bridge_testkit::tls;
use p11bridge_testkit::Launch;
use std::sync::OnceLock;

struct Setup {
    https_url: String,
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let dir = repo_root()
            .join("target/test-env")
            .join(format!("kms-tls-pki-{}", std::process::id()));
        let pki = tls::make(&dir);
        // Lives until the test process exits.
        let m = Moto::launch_tls(
            "us-east-1",
            &Launch::default(),
            Some((&pki.server_cert, &pki.server_key)),
        );
        m.create_key("tls-ec", "ECC_NIST_P256", "SIGN_VERIFY", &[]);
        let https_url = m.https_url.clone().expect("moto serves HTTPS");
        // Read when the backends are built (C_Initialize): the trust roots of every section without ca_cert.
        std::env::set_var("AWS_CA_BUNDLE", &pki.ca);
        let section = |name: &str, extra: &str| {
            format!(
                "\n[backend.{name}]\nkind = \"aws-kms\"\nregion = \"us-east-1\"\nendpoint = \"{https_url}\"\nkeys = [\"alias/tls-ec\"]\ntimeout_ms = 5000\nconnect_timeout_ms = 1000\nmax_attempts = 1\n{extra}\n"
            )
        };
        let sections = [
            section("kgood", &format!("ca_cert = \"{}\"", pki.ca.display())),
            section("kenv", ""),
            section(
                "kwrongca",
                &format!("ca_cert = \"{}\"", pki.other_ca.display()),
            ),
            "\n[[slot]]\nlabel = \"env\"\nuser_pin = \"env:P11BRIDGE_PIN\"\nbackends = [\"kenv\"]\n".into(),
            "\n[[slot]]\nlabel = \"wrongca\"\nuser_pin = \"env:P11BRIDGE_PIN\"\nbackends = [\"kwrongca\"]\n"
                .into(),
        ]
        .concat();
        env_with(&["kgood"], &sections);
        Setup { https_url }
    })
}

fn p() -> &'static Pkcs11 {
    setup();
    p11()
}

/// Signs with `tls-ec` on the token labelled `label` and verifies the signature with openssl.
fn signs_on(label: &str) {
    ecdsa_signs_on(p(), label, "tls-ec");
}

#[test]
fn signing_works_with_ca_cert() {
    setup();
    signs_on("unified");
}

#[test]
fn signing_works_with_aws_ca_bundle() {
    setup();
    signs_on("env");
}

#[test]
fn a_bundle_without_the_servers_ca_is_refused_with_the_certificate_problem_and_the_endpoint() {
    let st = setup();
    // ca_cert wins over AWS_CA_BUNDLE (which holds the right CA).
    let text = search_cause(p(), "wrongca");
    for want in [
        "backend \"kwrongca\"",
        st.https_url.as_str(),
        "invalid peer certificate",
        "UnknownIssuer",
        "not issued by a CA this backend trusts",
    ] {
        assert!(text.contains(want), "{want:?} missing from {text}");
    }
}
