//! Both remote backends through an HTTP proxy (`HTTPS_PROXY`/`NO_PROXY` or the `proxy` key), over TLS: OpenBao
//! with TLS listeners and moto serving HTTPS, certificates of a private CA (`p11bridge_testkit::tls`), and the
//! testkit's `CONNECT` proxy (`p11bridge_testkit::proxy`), which counts the tunnels it opened per target, can require
//! credentials, refuse or hang. Signatures are verified by openssl.
//!
//! Proxy variables are process-wide: each case runs in a child process of its own (this binary again, test
//! `child_process`, `PX_CASE` naming the case), which starts the proxies it needs, sets its own environment, writes
//! its configuration and initializes the bridge; the parent starts the servers once and runs one child at a time.
//!
//! Also here, part of "no process-wide TLS state": in one process the bridge signs over TLS, then the process's own
//! rustls installs a different default provider and completes a handshake with a `ClientConfig::builder()` of its
//! own, and the bridge still signs over TLS afterwards; the module exports no rustls symbol and links no OpenSSL.

mod common;

use common::bao::{Bao, ROOT_TOKEN};
use common::*;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::object::{Attribute, ObjectClass};
use p11bridge_testkit::moto::Moto;
use p11bridge_testkit::proxy::{base64, ConnectProxy, Mode};
use p11bridge_testkit::tls;
use p11bridge_testkit::Launch;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The deadline (`timeout_ms`) of every backend here, and the slack a call may take beyond it.
const TIMEOUT_MS: u64 = 2500;
const SLACK_MS: u64 = 1500;
const USER: &str = "px-user";
const RIGHT: &str = "px-s3cret-right";
const WRONG: &str = "px-s3cret-wrong";

struct Servers {
    vault: String,
    kms: String,
    ca: PathBuf,
    dir: PathBuf,
}

/// OpenBao on TLS with transit key `px-vec`, moto on HTTPS with key `alias/px-kec`; the SoftHSM2 token.
fn servers() -> &'static Servers {
    static S: OnceLock<Servers> = OnceLock::new();
    S.get_or_init(|| {
        let env = env();
        let dir = env.dir.join("proxy");
        let pki = tls::make(&dir.join("pki"));
        // Both live until the test process exits.
        let b = Box::leak(Box::new(Bao::launch_tls(
            &Launch::default(),
            false,
            &[p11bridge_testkit::bao::TlsListener {
                cert: &pki.server_cert,
                key: &pki.server_key,
                client_ca: None,
            }],
        )));
        b.ok(&["secrets", "enable", "transit"]);
        b.ok(&["write", "-f", "transit/keys/px-vec", "type=ecdsa-p256"]);
        let m = Box::leak(Box::new(Moto::launch_tls(
            "us-east-1",
            &Launch::default(),
            Some((&pki.server_cert, &pki.server_key)),
        )));
        m.create_key("px-kec", "ECC_NIST_P256", "SIGN_VERIFY", &[]);
        std::env::set_var("VT_TOKEN", ROOT_TOKEN);
        Servers {
            vault: b.tls_addrs[0].clone(),
            kms: m.https_url.clone().expect("moto serves HTTPS"),
            ca: pki.ca,
            dir,
        }
    })
}

/// Runs case `case` in a new process with `vars` set (and no proxy variable of this process's environment):
/// its stdout and stderr. One child at a time.
fn child(case: &str, vars: &[(&str, &str)]) -> (String, String) {
    static ONE: Mutex<()> = Mutex::new(());
    let s = servers();
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "child_process",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("PX_CASE", case)
    .env("PX_VAULT", &s.vault)
    .env("PX_KMS", &s.kms)
    .env("PX_CA", &s.ca)
    .env("PX_DIR", &s.dir)
    .env_remove("P11BRIDGE_QUIET")
    .env_remove("P11BRIDGE_LOG")
    .env_remove("P11BRIDGE_CONFIG");
    for k in PROXY_VARS {
        c.env_remove(k);
    }
    for (k, v) in vars {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "case {case}:\n{o}\n{e}");
    print!(
        "{}",
        o.lines()
            .filter(|l| l.contains("PX "))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    );
    (o, e)
}

const PROXY_VARS: [&str; 8] = [
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

#[test]
fn vault_over_tls_through_the_environments_proxy_and_bypassed_by_no_proxy() {
    child("vault_env", &[]);
    child("vault_no_proxy", &[]);
}

#[test]
fn kms_over_https_through_the_environments_proxy_and_bypassed_by_no_proxy() {
    child("kms_env", &[]);
    child("kms_no_proxy", &[]);
}

#[test]
fn the_proxy_key_wins_over_the_environment_and_none_bypasses_it() {
    child("key_wins", &[]);
    child("key_none", &[]);
}

#[test]
fn proxy_credentials_are_sent_and_a_refusal_names_407_without_them() {
    let s = servers();
    let log = s.dir.join("auth-trace.log");
    let _ = std::fs::remove_file(&log);
    let (o, e) = child(
        "auth",
        &[
            ("P11BRIDGE_LOG", "trace"),
            ("P11BRIDGE_LOG_FILE", log.to_str().unwrap()),
        ],
    );
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!log.is_empty(), "the trace log was written");
    for secret in [
        RIGHT.to_string(),
        WRONG.to_string(),
        base64(format!("{USER}:{RIGHT}").as_bytes()),
        base64(format!("{USER}:{WRONG}").as_bytes()),
    ] {
        for (what, text) in [("stdout", &o), ("stderr", &e), ("trace log", &log)] {
            assert!(!text.contains(&secret), "{secret} in the {what}");
        }
    }
}

#[test]
fn a_proxy_that_refuses_the_tunnel_is_named_with_its_answer() {
    child("refused", &[]);
}

#[test]
fn a_proxy_that_is_down_is_named() {
    child("down", &[]);
}

#[test]
fn a_hanging_proxy_costs_the_deadline_and_softhsm_keys_still_sign() {
    child("hang", &[]);
}

#[test]
fn no_process_wide_tls_state() {
    child("tls_state", &[]);
}

// ---- the child process -------------------------------------------------------------------------------------------

fn var(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("{k} is set by the parent"))
}

/// `127.0.0.1:PORT` of a URL.
fn target(url: &str) -> String {
    url.split("://")
        .nth(1)
        .unwrap()
        .trim_end_matches('/')
        .to_string()
}

fn vault_section(name: &str, extra: &str) -> String {
    format!(
        "\n[backend.{name}]\nkind = \"vault-transit\"\naddress = \"{}\"\ntoken = \"env:VT_TOKEN\"\nkeys = [\"px-vec\"]\nca_cert = \"{}\"\ntimeout_ms = {TIMEOUT_MS}\nconnect_timeout_ms = 1000\n{extra}\n",
        var("PX_VAULT"),
        var("PX_CA")
    )
}

fn kms_section(name: &str, extra: &str) -> String {
    format!(
        "\n[backend.{name}]\nkind = \"aws-kms\"\nregion = \"us-east-1\"\nendpoint = \"{}\"\nkeys = [\"alias/px-kec\"]\nca_cert = \"{}\"\ntimeout_ms = {TIMEOUT_MS}\nconnect_timeout_ms = 1000\nmax_attempts = 1\n{extra}\n",
        var("PX_KMS"),
        var("PX_CA")
    )
}

fn slot(label: &str, backends: &str) -> String {
    format!("\n[[slot]]\nlabel = \"{label}\"\nuser_pin = \"env:P11BRIDGE_PIN\"\nbackends = [{backends}]\n")
}

/// Writes the configuration (the unified slot over hsm and `unified`, plus `sections`) and initializes the bridge.
fn init(unified: &[&str], sections: &str) -> Pkcs11 {
    let config = PathBuf::from(var("PX_DIR")).join(format!("{}.toml", var("PX_CASE")));
    std::fs::write(&config, config_text_with(unified, sections)).unwrap();
    std::env::set_var("P11BRIDGE_CONFIG", &config);
    let p = Pkcs11::new(bridge_so()).unwrap();
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    p
}

/// The cause of a failed search on the token `label` (one remote backend): it names the backend, the endpoint and
/// the proxy, and holds every one of `words`; and no secret.
fn cause_names(
    p: &Pkcs11,
    label: &str,
    backend: &str,
    endpoint: &str,
    proxy: &str,
    words: &[&str],
) {
    let text = search_cause(p, label);
    println!("PX cause {label}: {text}");
    for w in [
        &format!("backend \"{backend}\""),
        endpoint,
        &format!("via proxy {proxy}"),
    ]
    .into_iter()
    .chain(words.iter().copied())
    {
        assert!(text.contains(w), "{w:?} missing from {text}");
    }
    for secret in [RIGHT, WRONG] {
        assert!(!text.contains(secret), "{text}");
    }
}

/// `C_P11BRIDGE_Check`: the report as JSON.
fn check_report() -> serde_json::Value {
    type F = unsafe extern "C" fn(*mut u8, *mut u64) -> u64;
    // SAFETY: the signature of include/p11bridge.h.
    unsafe {
        let f: libloading::Symbol<F> = lib().get(b"C_P11BRIDGE_Check").unwrap();
        let mut len = 0u64;
        assert_eq!(f(std::ptr::null_mut(), &mut len), 0);
        let mut buf = vec![0u8; len as usize];
        assert_eq!(f(buf.as_mut_ptr(), &mut len), 0);
        buf.truncate(len as usize);
        serde_json::from_slice(&buf).unwrap()
    }
}

/// Not a test of its own: the body of a child process (does nothing unless `PX_CASE` is set).
#[test]
fn child_process() {
    let Ok(case) = std::env::var("PX_CASE") else {
        return;
    };
    let vault = var("PX_VAULT");
    let kms = var("PX_KMS");
    let (vt, kt) = (target(&vault), target(&kms));
    match case.as_str() {
        "vault_env" | "kms_env" | "vault_no_proxy" | "kms_no_proxy" => {
            let px = ConnectProxy::start();
            std::env::set_var("HTTPS_PROXY", px.url());
            let bypass = case.ends_with("no_proxy");
            if bypass {
                // The host of both servers' URLs; another entry first, as lists usually are.
                std::env::set_var("no_proxy", "localhost, .example.internal, 127.0.0.1");
            }
            let (section, key, t) = if case.starts_with("vault") {
                (vault_section("vx", ""), "px-vec", &vt)
            } else {
                (kms_section("vx", ""), "px-kec", &kt)
            };
            let p = init(&["vx"], &section);
            ecdsa_signs_on(&p, "unified", key);
            println!("PX {case}: tunnels to {t}: {}", px.tunnels(t));
            if bypass {
                assert_eq!(px.all_attempts(), 0, "NO_PROXY matched: no CONNECT");
            } else {
                assert!(px.tunnels(t) >= 1, "a tunnel to {t}");
            }
        }
        "key_wins" | "key_none" => {
            let env_px = ConnectProxy::start();
            let key_px = ConnectProxy::start();
            std::env::set_var("HTTPS_PROXY", env_px.url());
            std::env::set_var("HTTP_PROXY", env_px.url());
            let (v, k) = if case == "key_wins" {
                let k = format!("proxy = \"{}\"", key_px.url());
                (k.clone(), k)
            } else {
                ("proxy = \"none\"".to_string(), "proxy = \"\"".to_string())
            };
            let p = init(
                &["vx", "kx"],
                &(vault_section("vx", &v) + &kms_section("kx", &k)),
            );
            ecdsa_signs_on(&p, "unified", "px-vec");
            ecdsa_signs_on(&p, "unified", "px-kec");
            println!(
                "PX {case}: key proxy tunnels vault {} kms {}; environment proxy CONNECTs {}",
                key_px.tunnels(&vt),
                key_px.tunnels(&kt),
                env_px.all_attempts()
            );
            assert_eq!(env_px.all_attempts(), 0, "the environment's proxy unused");
            if case == "key_wins" {
                assert!(key_px.tunnels(&vt) >= 1 && key_px.tunnels(&kt) >= 1);
            } else {
                assert_eq!(key_px.all_attempts(), 0);
            }
        }
        "auth" => {
            let px = ConnectProxy::start();
            px.require_auth(USER, RIGHT);
            let good = format!("proxy = \"{}\"", px.url_with(USER, RIGHT));
            let bad = format!("proxy = \"{}\"", px.url_with(USER, WRONG));
            let sections = vault_section("vx", &good)
                + &kms_section("kx", &good)
                + &vault_section("vbad", &bad)
                + &kms_section("kbad", &bad)
                + &slot("badv", "\"vbad\"")
                + &slot("badk", "\"kbad\"");
            let p = init(&["vx", "kx"], &sections);
            ecdsa_signs_on(&p, "unified", "px-vec");
            ecdsa_signs_on(&p, "unified", "px-kec");
            assert!(px.tunnels(&vt) >= 1 && px.tunnels(&kt) >= 1);
            let right = format!("Basic {}", base64(format!("{USER}:{RIGHT}").as_bytes()));
            assert!(px.sent_auth().contains(&right), "the credentials were sent");
            // `p11bridge check` (C_P11BRIDGE_Check) names the proxy next to each endpoint, without credentials.
            let report = check_report().to_string();
            println!("PX check: {report}");
            let via = format!("{vault} via proxy {}", px.url());
            assert!(report.contains(&via), "{via} missing from {report}");
            assert!(report.contains(&format!("{kms} (region us-east-1) via proxy {}", px.url())));
            assert!(
                !report.contains(RIGHT) && !report.contains(WRONG),
                "{report}"
            );
            let proxy = px.url();
            let words = ["the proxy answered 407 Proxy Authentication Required"];
            cause_names(&p, "badv", "vbad", &vault, &proxy, &words);
            cause_names(&p, "badk", "kbad", &kms, &proxy, &words);
        }
        "refused" => {
            let forbidden = ConnectProxy::start();
            forbidden.set_mode(Mode::Refuse(403, "Forbidden".into()));
            let bad_gateway = ConnectProxy::start();
            bad_gateway.set_mode(Mode::Refuse(502, "Bad Gateway".into()));
            let with = |p: &ConnectProxy| format!("proxy = \"{}\"", p.url());
            let sections = vault_section("v403", &with(&forbidden))
                + &kms_section("k403", &with(&forbidden))
                + &vault_section("v502", &with(&bad_gateway))
                + &kms_section("k502", &with(&bad_gateway))
                + &slot("v403", "\"v403\"")
                + &slot("k403", "\"k403\"")
                + &slot("v502", "\"v502\"")
                + &slot("k502", "\"k502\"");
            let p = init(&[], &sections);
            let f = ["the proxy refused the tunnel: it answered 403 Forbidden"];
            cause_names(&p, "v403", "v403", &vault, &forbidden.url(), &f);
            cause_names(&p, "k403", "k403", &kms, &forbidden.url(), &f);
            let g = ["the proxy refused the tunnel: it answered 502 Bad Gateway"];
            cause_names(&p, "v502", "v502", &vault, &bad_gateway.url(), &g);
            cause_names(&p, "k502", "k502", &kms, &bad_gateway.url(), &g);
        }
        "down" => {
            // A free port nobody listens on.
            let port = p11bridge_testkit::free_port();
            let down = format!("http://127.0.0.1:{port}");
            std::env::set_var("https_proxy", &down);
            let sections = vault_section("vdown", "")
                + &kms_section("kdown", "")
                + &slot("vdown", "\"vdown\"")
                + &slot("kdown", "\"kdown\"");
            let p = init(&[], &sections);
            let words = ["the proxy does not answer", "Connection refused"];
            cause_names(&p, "vdown", "vdown", &vault, &down, &words);
            cause_names(&p, "kdown", "kdown", &kms, &down, &words);
        }
        "hang" => hang(&vault, &kms),
        "tls_state" => tls_state(&vault),
        other => panic!("unknown case {other}"),
    }
}

/// A proxy that hangs: a first enumeration through it (accepting the connection, never answering the CONNECT)
/// and a signature on a tunnel that went silent both end within the deadline with `CKR_DEVICE_ERROR` / the
/// cause, and the SoftHSM2 key of the same token signs right after.
fn hang(vault: &str, kms: &str) {
    let px = ConnectProxy::start();
    std::env::set_var("HTTPS_PROXY", px.url());
    let sections = vault_section("vx", "")
        + &kms_section("kx", "")
        + &vault_section("vh", "")
        + &kms_section("kh", "")
        + &vault_section("vdirect", "proxy = \"none\"")
        + &slot("hv", "\"hsm\", \"vh\"")
        + &slot("hk", "\"hsm\", \"kh\"")
        + &slot("direct", "\"vdirect\"");
    let p = init(&["vx", "kx"], &sections);
    let limit = Duration::from_millis(TIMEOUT_MS + SLACK_MS);
    // Keys found while the proxy passes; then it hangs (the pooled tunnels go silent, new CONNECTs get no answer).
    let s = session_on(&p, "unified");
    let keys: Vec<_> = ["px-vec", "px-kec"]
        .iter()
        .map(|k| find_one(&s, k, ObjectClass::PRIVATE_KEY))
        .collect();
    px.set_mode(Mode::Hang);
    for (k, name) in keys.iter().zip(["vault", "kms"]) {
        let t = Instant::now();
        let r = s.sign(
            &cryptoki::mechanism::Mechanism::EcdsaSha256,
            *k,
            b"through a proxy that hangs",
        );
        let took = t.elapsed();
        println!(
            "PX hang: {name} sign returned {r:?} after {} ms",
            took.as_millis()
        );
        assert!(
            matches!(r, Err(Error::Pkcs11(RvError::DeviceError, _))),
            "{name}: {r:?}"
        );
        assert!(took < limit, "{name}: {took:?}");
        hsm_sign(&s);
    }
    // Backends never reached: the first enumeration through the hanging proxy.
    for (label, name, endpoint) in [("hv", "vh", vault), ("hk", "kh", kms)] {
        let s = session_on(&p, label);
        let t = Instant::now();
        // The search fails (CKR_DEVICE_ERROR) or finds none of the backend's keys.
        let found = s.find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY), backend(name)]);
        let took = t.elapsed();
        let (_, cause) = last_error();
        println!(
            "PX hang: {label} search returned {found:?} after {} ms: {cause}",
            took.as_millis()
        );
        assert!(
            matches!(&found, Ok(v) if v.is_empty())
                || matches!(found, Err(Error::Pkcs11(RvError::DeviceError, _)))
        );
        assert!(took < limit, "{label}: {took:?}");
        for w in [endpoint, &format!("via proxy {}", px.url()), "no answer"] {
            assert!(cause.contains(w), "{w:?} missing from {cause}");
        }
        hsm_sign(&s);
    }
    // A remote backend that does not use the proxy keeps working meanwhile.
    ecdsa_signs_on(&p, "direct", "px-vec");
}

/// Part of "no process-wide TLS state": the bridge over TLS, then this process's own rustls with another default
/// provider and roots of its own, then the bridge over TLS again (a backend connecting for the first time).
fn tls_state(vault: &str) {
    let so = bridge_so();
    let nm = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&so)
        .output()
        .expect("nm (binutils)");
    let symbols = String::from_utf8_lossy(&nm.stdout);
    assert!(nm.status.success() && symbols.contains("C_GetFunctionList"));
    assert!(
        !symbols.to_ascii_lowercase().contains("rustls"),
        "the module exports no rustls symbol"
    );
    let ldd = Command::new("ldd").arg(&so).output().expect("ldd");
    let libs = String::from_utf8_lossy(&ldd.stdout);
    assert!(
        !libs.contains("libssl") && !libs.contains("libcrypto"),
        "the module links no OpenSSL: {libs}"
    );
    let p = init(
        &["vx"],
        &(vault_section("vx", "") + &kms_section("kx", "") + &slot("later", "\"kx\"")),
    );
    ecdsa_signs_on(&p, "unified", "px-vec");
    // This process's own TLS: a default provider of its own choosing (ring, one TLS 1.3 suite only), installed
    // after the bridge made its TLS connections — refused if anything had installed one before.
    let mut mine = rustls::crypto::ring::default_provider();
    mine.cipher_suites
        .retain(|s| s.suite() == rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
    assert!(
        rustls::crypto::CryptoProvider::install_default(mine).is_ok(),
        "no default provider was installed before"
    );
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(var("PX_CA")).unwrap();
    for c in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let sock = std::net::TcpStream::connect(target(vault)).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    use std::io::{Read, Write};
    tls.write_all(b"GET /v1/sys/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        tls.conn.negotiated_cipher_suite().map(|s| s.suite()),
        Some(rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256),
        "our own provider served our handshake"
    );
    // The bridge's first connection to KMS, after this process installed its default: unaffected.
    ecdsa_signs_on(&p, "later", "px-kec");
    println!(
        "PX tls_state: bridge, own rustls default provider, bridge again: all TLS handshakes done"
    );
}
