//! The Vault transit backend over TLS, against one OpenBao dev server with four TLS listeners (certificates made by
//! the test, `p11bridge_testkit::tls`): a good certificate, an expired one, one for another host, and one that
//! requires a client certificate (a missing one, or one its client CA did not issue, is refused). Signing works with
//! `ca_cert` (and `client_cert`/`client_key`), signatures verified by openssl; every refusal names the certificate
//! problem and the address, through `C_P11BRIDGE_GetLastError` and the stderr line of a process (pkcs11-tool). Two
//! more servers on TLS with the same key are the two nodes of a cluster: the second serves when the first is killed.

mod common;

use common::bao::{Bao, ROOT_TOKEN};
use common::*;
use cryptoki::context::Pkcs11;
use p11bridge_testkit::bao::TlsListener;
use p11bridge_testkit::tls::{self, WRONG_HOST};
use p11bridge_testkit::Launch;
use std::process::Command;
use std::sync::OnceLock;

struct Setup {
    /// The listeners' addresses: good certificate, expired, for another host, client certificate required.
    good: String,
    expired: String,
    wrong_host: String,
    client: String,
    /// Two more servers as the two nodes of a cluster, on TLS for the bridge, holding the same key.
    node_a: Bao,
    node_b: Bao,
}

/// A `vault-transit` section over key `tls-ec` with the root token; `extra`: its TLS keys.
fn section(name: &str, address: &str, extra: &str) -> String {
    format!(
        "\n[backend.{name}]\nkind = \"vault-transit\"\n{address}\ntoken = \"env:VT_TOKEN\"\nkeys = [\"tls-ec\"]\ntimeout_ms = 5000\nconnect_timeout_ms = 1000\n{extra}\n"
    )
}

fn slot(label: &str, backend: &str) -> String {
    format!(
        "\n[[slot]]\nlabel = \"{label}\"\nuser_pin = \"env:P11BRIDGE_PIN\"\nbackends = [\"{backend}\"]\n"
    )
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let dir = repo_root()
            .join("target/test-env")
            .join(format!("vault-tls-pki-{}", std::process::id()));
        let pki = tls::make(&dir);
        let listener = |cert, client_ca| TlsListener {
            cert,
            key: &pki.server_key,
            client_ca,
        };
        // Lives until the test process exits.
        let b = Bao::launch_tls(
            &Launch::default(),
            false,
            &[
                listener(&pki.server_cert, None),
                listener(&pki.expired_cert, None),
                listener(&pki.wrong_host_cert, None),
                listener(&pki.server_cert, Some(&pki.client_ca)),
            ],
        );
        b.ok(&["secrets", "enable", "transit"]);
        b.ok(&["write", "-f", "transit/keys/tls-ec", "type=ecdsa-p256"]);
        std::env::set_var("VT_TOKEN", ROOT_TOKEN);
        let [good, expired, wrong_host, client] = b.tls_addrs.clone().try_into().unwrap();
        let node = || {
            Bao::launch_tls(
                &Launch::default(),
                true,
                &[listener(&pki.server_cert, None)],
            )
        };
        let (node_a, node_b) = (node(), node());
        node_b.restore_key("tls-ec", &node_a.ec_key_with_backup("tls-ec"));
        let ca = format!("ca_cert = \"{}\"", pki.ca.display());
        let one = |a: &str| format!("address = \"{a}\"");
        let client_keys = format!(
            "{ca}\nclient_cert = \"{}\"\nclient_key = \"{}\"",
            pki.client_cert.display(),
            pki.client_key.display()
        );
        let mut sections = [
            section("vgood", &one(&good), &ca),
            section(
                "vwrongca",
                &one(&good),
                &format!("ca_cert = \"{}\"", pki.other_ca.display()),
            ),
            section("vsystem", &one(&good), ""),
            section("vexpired", &one(&expired), &ca),
            section("vwronghost", &one(&wrong_host), &ca),
            section("vclient", &one(&client), &client_keys),
            section("vnoclient", &one(&client), &ca),
            // A certificate the listener's client CA did not issue: the server's own.
            section(
                "vbadclient",
                &one(&client),
                &format!(
                    "{ca}\nclient_cert = \"{}\"\nclient_key = \"{}\"",
                    pki.server_cert.display(),
                    pki.server_key.display()
                ),
            ),
            section(
                "vha",
                &format!(
                    "addresses = [\"{}\", \"{}\"]",
                    node_a.tls_addrs[0], node_b.tls_addrs[0]
                ),
                &ca,
            ),
        ]
        .concat();
        for (label, backend) in [
            ("wrongca", "vwrongca"),
            ("system", "vsystem"),
            ("expired", "vexpired"),
            ("wronghost", "vwronghost"),
            ("client", "vclient"),
            ("noclient", "vnoclient"),
            ("badclient", "vbadclient"),
            ("ha", "vha"),
        ] {
            sections += &slot(label, backend);
        }
        env_with(&["vgood"], &sections);
        Setup {
            good,
            expired,
            wrong_host,
            client,
            node_a,
            node_b,
        }
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

/// The cause of a failed search on `label`: it names the backend and `address`, and holds every one of `words`.
fn refused(label: &str, backend: &str, address: &str, words: &[&str]) -> String {
    let text = search_cause(p(), label);
    assert!(text.contains(&format!("backend \"{backend}\"")), "{text}");
    assert!(text.contains(address), "{address} missing from {text}");
    for w in words {
        assert!(text.contains(w), "{w:?} missing from {text}");
    }
    text
}

#[test]
fn signing_works_with_the_private_ca() {
    setup();
    signs_on("unified");
}

#[test]
fn a_bundle_without_the_servers_ca_is_refused_with_the_certificate_problem() {
    let st = setup();
    refused(
        "wrongca",
        "vwrongca",
        &st.good,
        &[
            "invalid peer certificate",
            "UnknownIssuer",
            "not issued by a CA this backend trusts",
        ],
    );
    // Without ca_cert the system's roots do not hold the private CA either.
    refused(
        "system",
        "vsystem",
        &st.good,
        &["invalid peer certificate", "UnknownIssuer"],
    );
}

#[test]
fn an_expired_certificate_is_refused_as_expired() {
    let st = setup();
    refused(
        "expired",
        "vexpired",
        &st.expired,
        &["invalid peer certificate", "certificate has expired"],
    );
}

#[test]
fn a_certificate_for_another_host_is_refused_naming_it() {
    let st = setup();
    refused(
        "wronghost",
        "vwronghost",
        &st.wrong_host,
        &[
            "invalid peer certificate",
            WRONG_HOST,
            "certificate is for another host name",
        ],
    );
}

#[test]
fn a_client_certificate_is_shown_when_configured_and_missed_or_refused_when_not() {
    let st = setup();
    signs_on("client");
    refused(
        "noclient",
        "vnoclient",
        &st.client,
        &[
            "CertificateRequired",
            "requires a client certificate (client_cert and client_key)",
        ],
    );
    refused(
        "badclient",
        "vbadclient",
        &st.client,
        &["the server refused the client certificate"],
    );
}

#[test]
fn the_second_tls_node_serves_when_the_first_is_down() {
    let st = setup();
    const SIGN: &str = "transit/sign/tls-ec";
    signs_on("ha");
    assert!(st.node_a.requests(SIGN) > 0, "the first node signed");
    st.node_a.kill();
    let before = st.node_b.requests(SIGN);
    signs_on("ha");
    assert!(st.node_b.requests(SIGN) > before, "the second node signed");
}

#[test]
fn pkcs11_tool_shows_the_certificate_problem_on_stderr() {
    let st = setup();
    // This process's bridge first: pkcs11-tool shares the SoftHSM2 token directory, and SoftHSM2 reading it at its
    // C_Initialize while this process writes it may find no token (as remote_diagnostics' children).
    p();
    let out = Command::new("pkcs11-tool")
        .arg("--module")
        .arg(bridge_so())
        .args(["--token-label", "wrongca", "-O"])
        .env_remove("P11BRIDGE_QUIET")
        .env_remove("P11BRIDGE_LOG")
        .output()
        .expect("pkcs11-tool");
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("p11bridge: backend \"vwrongca\""))
        .unwrap_or_else(|| panic!("no notice about vwrongca on stderr:\n{err}"));
    assert!(line.contains(&st.good), "{line}");
    assert!(line.contains("invalid peer certificate"), "{line}");
}
