//! Certificates issued by Vault PKI for the token's keys (`pki = {...}`), against a real OpenBao: a root CA mount
//! `pki` and an intermediate `pki_int` signed by it, set up with the `bao` command as an operator does; keys in
//! Vault transit, KMS (moto) and SoftHSM2. For each backend the certificate read from the token (`CKA_VALUE`) passes
//! `openssl verify -CAfile root.pem -untrusted chain.pem`, carries the key's public key, and its CA certificates are
//! there as authority certificates. A new process serves the cached certificates without a PKI request (counted in
//! OpenBao's audit log); a short ttl shows renewal in the background (new serials while no caller calls); a deleted
//! role keeps the last certificate served and is reported (check, and the notice on a child process's stderr).

mod common;

use common::bao::{bao, Bao, ROOT_TOKEN};
use common::moto::moto;
use common::*;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The requests of role `server` (long-lived certificates) and `short` (6 s) in OpenBao's audit log.
const SIGN_SERVER: &str = "pki_int/sign/server";
const SIGN_SHORT: &str = "pki_int/sign/short";

struct Setup {
    dir: PathBuf,
    root_pem: PathBuf,
}

fn b() -> &'static Bao {
    bao()
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let b = b();
        // Transit keys.
        b.ok(&["secrets", "enable", "transit"]);
        for (k, t) in [
            ("pki-ec", "ecdsa-p256"),
            ("pki-rsa", "rsa-2048"),
            ("pki-ed", "ed25519"),
            ("pki-p384", "ecdsa-p384"),
            ("pki-short", "ecdsa-p256"),
            ("pki-fin", "ecdsa-p256"),
            ("pki-fork", "ecdsa-p256"),
        ] {
            b.ok(&["write", "-f", &format!("transit/keys/{k}"), &format!("type={t}")]);
        }
        // KMS keys.
        let m = moto();
        m.create_key("kms-pki-ec", "ECC_NIST_P256", "SIGN_VERIFY", &[]);
        m.create_key("kms-pki-rsa", "RSA_2048", "SIGN_VERIFY", &[]);
        std::env::set_var("VAULT_TEST_TOKEN", ROOT_TOKEN);

        // The PKI, as an operator sets it up: a root CA, an intermediate signed by it, roles.
        let dir = repo_root()
            .join("target/test-env")
            .join(format!("vault-pki-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        b.ok(&["secrets", "enable", "pki"]);
        b.ok(&["secrets", "tune", "-max-lease-ttl=87600h", "pki"]);
        let root = b.ok(&[
            "write",
            "-field=certificate",
            "pki/root/generate/internal",
            "common_name=p11bridge test root",
            "ttl=87600h",
        ]);
        let root_pem = dir.join("root.pem");
        std::fs::write(&root_pem, root).unwrap();
        b.ok(&["secrets", "enable", "-path=pki_int", "pki"]);
        b.ok(&["secrets", "tune", "-max-lease-ttl=43800h", "pki_int"]);
        let csr = b.ok(&[
            "write",
            "-field=csr",
            "pki_int/intermediate/generate/internal",
            "common_name=p11bridge test intermediate",
        ]);
        let csr_file = dir.join("int.csr");
        std::fs::write(&csr_file, csr).unwrap();
        let int = b.ok(&[
            "write",
            "-field=certificate",
            "pki/root/sign-intermediate",
            &format!("csr=@{}", csr_file.display()),
            "format=pem_bundle",
            "ttl=43800h",
        ]);
        let int_file = dir.join("int.pem");
        std::fs::write(&int_file, int).unwrap();
        b.ok(&[
            "write",
            "pki_int/intermediate/set-signed",
            &format!("certificate=@{}", int_file.display()),
        ]);
        for (role, max) in [
            ("server", "72h"),
            ("short", "5m"),
            ("fin", "5m"),
            ("forkr", "5m"),
        ] {
            b.ok(&[
                "write",
                &format!("pki_int/roles/{role}"),
                "allow_any_name=true",
                "enforce_hostnames=false",
                "key_type=any",
                &format!("max_ttl={max}"),
            ]);
        }

        let certs = dir.join("certs");
        let section = format!(
            r#"
[backend.vault]
kind = "vault-transit"
address = "{addr}"
token = "env:VAULT_TEST_TOKEN"
keys = ["pki-ec", "pki-rsa", "pki-ed", "pki-p384"]
cert_cache_dir = "{certs}"
pki = {{ mount = "pki_int", role = "server", ttl = "1h", alt_names = ["{{label}}.example"] }}

[backend.vshort]
kind = "vault-transit"
address = "{addr}"
token = "env:VAULT_TEST_TOKEN"
keys = ["pki-short"]
cert_cache_dir = "{certs}"
pki = {{ vault = "vault", mount = "pki_int", role = "short", ttl = "6s", renew_before = "4s" }}

[backend.kms]
kind = "aws-kms"
region = "us-east-1"
endpoint = "{kms}"
keys = ["alias/kms-pki-ec", "alias/kms-pki-rsa"]
cert_cache_dir = "{certs}"
pki = {{ vault = "vault", mount = "pki_int", role = "server", ttl = "1h", common_name = "{{label}}.kms.example" }}

# The HSM's section is the harness's; its pki table goes here (every signing key: rsa-2048, ec-p256, ed25519).
[backend.hsm.pki]
vault = "vault"
mount = "pki_int"
role = "server"
ttl = "1h"
"#,
            addr = b.addr,
            kms = m.url,
            certs = certs.display()
        );
        // The HSM section has no cert_cache_dir: its copies go to $XDG_CACHE_HOME/p11bridge/pki.
        std::env::set_var("XDG_CACHE_HOME", dir.join("xdg-cache"));
        env_with(&["vault", "vshort", "kms"], &section);
        Setup { dir, root_pem }
    })
}

fn p() -> &'static Pkcs11 {
    setup();
    p11()
}

/// The value of a byte-array attribute.
fn bytes(s: &Session, o: ObjectHandle, t: AttributeType) -> Vec<u8> {
    match s.get_attributes(o, &[t]).unwrap().into_iter().next() {
        Some(Attribute::Value(v))
        | Some(Attribute::Issuer(v))
        | Some(Attribute::Subject(v))
        | Some(Attribute::SerialNumber(v))
        | Some(Attribute::Id(v)) => v,
        other => panic!("{t:?}: {other:?}"),
    }
}

/// The certificate labelled `label` of backend `be` (DER), once it is the one Vault PKI issued (its issuer is not
/// its subject), waiting at most `wait`.
fn issued_cert(s: &Session, be: &str, label: &str, wait: Duration) -> Vec<u8> {
    let t = Instant::now();
    loop {
        let found = s
            .find_objects(&[
                Attribute::Class(ObjectClass::CERTIFICATE),
                Attribute::Label(label.into()),
                backend(be),
            ])
            .unwrap();
        if let [c] = found.as_slice() {
            if bytes(s, *c, AttributeType::Issuer) != bytes(s, *c, AttributeType::Subject) {
                return bytes(s, *c, AttributeType::Value);
            }
        }
        assert!(
            t.elapsed() < wait,
            "{be}: no certificate from Vault PKI for {label} after {wait:?} ({} certificates)",
            found.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The CA certificates (category authority) of backend `be`, with their CKA_TRUSTED.
fn authorities(s: &Session, be: &str) -> Vec<(Vec<u8>, bool)> {
    let found = s
        .find_objects(&[
            Attribute::Class(ObjectClass::CERTIFICATE),
            // CKA_CERTIFICATE_CATEGORY = 2 (authority); cryptoki has no variant for it.
            Attribute::VendorDefined((
                AttributeType::VendorDefined(cryptoki_sys::CKA_CERTIFICATE_CATEGORY),
                cryptoki_sys::CK_CERTIFICATE_CATEGORY_AUTHORITY
                    .to_ne_bytes()
                    .to_vec(),
            )),
            backend(be),
        ])
        .unwrap();
    found
        .into_iter()
        .map(|o| {
            let trusted = match s.get_attributes(o, &[AttributeType::Trusted]).unwrap()[..] {
                [Attribute::Trusted(t)] => t,
                ref other => panic!("CKA_TRUSTED: {other:?}"),
            };
            (bytes(s, o, AttributeType::Value), trusted)
        })
        .collect()
}

fn pem(der: &[u8]) -> Vec<u8> {
    openssl(&["x509", "-inform", "DER", "-outform", "PEM"], Some(der))
}

/// `openssl verify -CAfile root.pem -untrusted chain.pem leaf.pem`.
fn verify(dir: &Path, tag: &str, leaf: &[u8], chain: &[Vec<u8>]) -> String {
    let st = setup();
    let leaf_file = dir.join(format!("{tag}-leaf.pem"));
    let chain_file = dir.join(format!("{tag}-chain.pem"));
    std::fs::write(&leaf_file, pem(leaf)).unwrap();
    std::fs::write(
        &chain_file,
        chain.iter().flat_map(|c| pem(c)).collect::<Vec<u8>>(),
    )
    .unwrap();
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&st.root_pem)
        .arg("-untrusted")
        .arg(&chain_file)
        .arg(&leaf_file)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{tag}: openssl verify: {text}");
    text
}

/// The certificate's public key (SubjectPublicKeyInfo, DER), as openssl reads it.
fn cert_spki(der: &[u8]) -> Vec<u8> {
    let pem_key = openssl(&["x509", "-inform", "DER", "-noout", "-pubkey"], Some(der));
    openssl(&["pkey", "-pubin", "-outform", "DER"], Some(&pem_key))
}

/// The certificate's serial (openssl's hex).
fn serial(der: &[u8]) -> String {
    String::from_utf8(openssl(
        &["x509", "-inform", "DER", "-noout", "-serial"],
        Some(der),
    ))
    .unwrap()
    .trim()
    .to_string()
}

fn check_one(be: &str, label: &str) {
    let s = session_on(p(), "unified");
    let leaf = issued_cert(&s, be, label, Duration::from_secs(60));
    let chain: Vec<Vec<u8>> = authorities(&s, be)
        .into_iter()
        .map(|(c, trusted)| {
            assert!(
                !trusted,
                "{be}: a CA certificate from Vault PKI is not CKA_TRUSTED"
            );
            c
        })
        .collect();
    assert!(!chain.is_empty(), "{be}: the chain is served");
    verify(&setup().dir, &format!("{be}-{label}"), &leaf, &chain);
    let (public, _) = key_pair(&s, label, be);
    assert_eq!(
        cert_spki(&leaf),
        spki(&s, public),
        "{be}: {label}: the leaf carries the key"
    );
    // The certificate object has the key's CKA_ID.
    let cert = s
        .find_objects(&[
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::Label(label.into()),
            backend(be),
        ])
        .unwrap()[0];
    assert_eq!(
        bytes(&s, cert, AttributeType::Id),
        bytes(&s, public, AttributeType::Id)
    );
}

#[test]
fn vault_transit_keys_get_certificates_that_chain_to_the_root() {
    for k in ["pki-ec", "pki-rsa", "pki-ed", "pki-p384"] {
        check_one("vault", k);
    }
    // The subject alternative name of the template.
    let s = session_on(p(), "unified");
    let leaf = issued_cert(&s, "vault", "pki-ec", Duration::from_secs(60));
    let text = String::from_utf8(openssl(
        &["x509", "-inform", "DER", "-noout", "-text"],
        Some(&leaf),
    ))
    .unwrap();
    assert!(text.contains("DNS:pki-ec.example"), "{text}");
    assert!(
        text.contains("CN=pki-ec") || text.contains("CN = pki-ec"),
        "{text}"
    );
}

#[test]
fn kms_keys_get_certificates_that_chain_to_the_root() {
    for k in ["kms-pki-ec", "kms-pki-rsa"] {
        check_one("kms", k);
    }
    let s = session_on(p(), "unified");
    let leaf = issued_cert(&s, "kms", "kms-pki-ec", Duration::from_secs(60));
    let text = String::from_utf8(openssl(
        &["x509", "-inform", "DER", "-noout", "-subject"],
        Some(&leaf),
    ))
    .unwrap();
    assert!(text.contains("kms-pki-ec.kms.example"), "{text}");
}

#[test]
fn hsm_keys_get_certificates_stored_in_the_token() {
    for k in ["ec-p256", "rsa-2048", "ed25519"] {
        check_one("hsm", k);
    }
    // In the token itself: the mirror slot (the upstream as it is) holds the certificate and the CA certificates.
    let s = p().open_ro_session(slot_by_label(p(), "upstream")).unwrap();
    let certs = s
        .find_objects(&[Attribute::Class(ObjectClass::CERTIFICATE)])
        .unwrap();
    let values: Vec<Vec<u8>> = certs
        .iter()
        .map(|c| bytes(&s, *c, AttributeType::Value))
        .collect();
    let u = session_on(p(), "unified");
    let leaf = issued_cert(&u, "hsm", "ec-p256", Duration::from_secs(60));
    assert!(
        values.contains(&leaf),
        "the certificate is a token object of the HSM"
    );
    // One certificate per key: the previous one was replaced.
    let per_key = s
        .find_objects(&[
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::Id(vec![2]),
        ])
        .unwrap();
    assert_eq!(per_key.len(), 1);
}

#[test]
fn a_new_process_serves_the_cached_certificates_without_asking_vault() {
    let s = session_on(p(), "unified");
    let vault_leaf = issued_cert(&s, "vault", "pki-ec", Duration::from_secs(60));
    let kms_leaf = issued_cert(&s, "kms", "kms-pki-ec", Duration::from_secs(60));
    for k in ["pki-rsa", "pki-ed", "pki-p384"] {
        issued_cert(&s, "vault", k, Duration::from_secs(60));
    }
    issued_cert(&s, "kms", "kms-pki-rsa", Duration::from_secs(60));
    let hsm_leaf = issued_cert(&s, "hsm", "ec-p256", Duration::from_secs(60));
    for k in ["rsa-2048", "ed25519"] {
        issued_cert(&s, "hsm", k, Duration::from_secs(60));
    }
    let before = b().requests(SIGN_SERVER);
    let (out, _) = child("restart", &[]);
    assert_eq!(field(&out, "vault").unwrap(), hex(&vault_leaf), "{out}");
    assert_eq!(field(&out, "kms").unwrap(), hex(&kms_leaf), "{out}");
    assert_eq!(field(&out, "hsm").unwrap(), hex(&hsm_leaf), "{out}");
    assert_eq!(
        field(&out, "authorities").unwrap(),
        authorities(&s, "vault").len().to_string(),
        "{out}"
    );
    assert_eq!(
        b().requests(SIGN_SERVER),
        before,
        "the new process asked Vault PKI again"
    );
}

#[test]
fn pkcs11_tool_lists_the_certificate_next_to_its_key() {
    let s = session_on(p(), "unified");
    let leaf = issued_cert(&s, "vault", "pki-ec", Duration::from_secs(60));
    let (out, err) = list_objects(&env().config, &[]);
    assert!(out.contains("Certificate Object"), "{out}\n{err}");
    assert!(out.contains("label:      pki-ec"), "{out}\n{err}");
    assert!(
        out.contains("p11bridge test intermediate"),
        "the CA certificate is listed: {out}\n{err}"
    );
    let _ = leaf;
}

#[test]
fn short_lived_certificates_are_renewed_in_the_background_and_a_failure_keeps_the_last() {
    let s = session_on(p(), "unified");
    let first = issued_cert(&s, "vshort", "pki-short", Duration::from_secs(60));
    let first_serial = serial(&first);
    let requests = b().requests(SIGN_SHORT);
    // No PKCS#11 call for 10 s: renewals happen on the module's own time (one about every 2-3 s).
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let renewed = b().requests(SIGN_SHORT) - requests;
    assert!(renewed >= 2, "{renewed} renewals in 10 s without a caller");
    let c0 = Instant::now();
    let now = issued_cert(&s, "vshort", "pki-short", Duration::from_secs(1));
    let read_ms = c0.elapsed().as_millis();
    let now_serial = serial(&now);
    assert_ne!(now_serial, first_serial, "a new serial");
    verify(
        &setup().dir,
        "short",
        &now,
        &authorities(&s, "vshort")
            .into_iter()
            .map(|c| c.0)
            .collect::<Vec<_>>(),
    );
    eprintln!(
        "renewal: {renewed} new certificates in {:?} with no caller; {first_serial} -> {now_serial}; reading it took {read_ms} ms",
        t.elapsed()
    );

    // The role deleted: renewals fail, the last certificate stays, the cause is reported.
    b().ok(&["delete", "pki_int/roles/short"]);
    std::thread::sleep(Duration::from_secs(4));
    let last = issued_cert(&s, "vshort", "pki-short", Duration::from_secs(1));
    std::thread::sleep(Duration::from_secs(3));
    let still = issued_cert(&s, "vshort", "pki-short", Duration::from_secs(1));
    assert_eq!(
        serial(&still),
        serial(&last),
        "the last certificate stays served"
    );
    let (out, err) = child("fail", &[]);
    let report: serde_json::Value = serde_json::from_str(field(&out, "check").unwrap()).unwrap();
    let vshort = report["slots"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "vshort")
        .unwrap()
        .clone();
    let pki = &vshort["pki"][0];
    assert_eq!(pki["key"], "pki-short", "{vshort}");
    assert!(
        pki["serial"].is_string() && pki["not_after"].is_string(),
        "{vshort}"
    );
    let e = pki["last_error"]
        .as_str()
        .unwrap_or_else(|| panic!("{vshort}"));
    assert!(e.contains("pki_int/sign/short"), "{e}");
    assert!(
        vshort["problems"]
            .to_string()
            .contains("certificate from Vault PKI"),
        "{vshort}"
    );
    assert_eq!(vshort["ok"], false);
    // The child's own renewal attempt: the notice names the backend, Vault's address, mount/role and Vault's words.
    let line = err
        .lines()
        .find(|l| l.contains("no certificate from Vault PKI"))
        .unwrap_or_else(|| panic!("no notice on the child's stderr: {err}"));
    for w in [
        "backend \"vshort\"",
        &b().addr,
        "pki_int/sign/short",
        "HTTP 400",
        "the certificate issued before is still served",
    ] {
        assert!(line.contains(w), "{w:?} missing from {line}");
    }
    eprintln!("notice: {line}");
    // `p11bridge check` (text) shows each certificate with its expiry, and the failure.
    let cli = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("p11bridge");
    let out = Command::new(&cli)
        .arg("--module")
        .arg(bridge_so())
        .arg("check")
        .env("P11BRIDGE_QUIET", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    let short = text
        .lines()
        .find(|l| l.contains("certificate:  pki-short from Vault PKI"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        short.contains("pki_int/sign/short") && short.contains("last renewal failed"),
        "{short}"
    );
    let ec = text
        .lines()
        .find(|l| l.contains("certificate:  ec-p256 from Vault PKI"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(ec.contains("serial ") && ec.contains("expires "), "{ec}");
    eprintln!("check: {short}\ncheck: {ec}");
    // The role back: the next retry succeeds and the error is cleared.
    b().ok(&[
        "write",
        "pki_int/roles/short",
        "allow_any_name=true",
        "enforce_hostnames=false",
        "key_type=any",
        "max_ttl=5m",
    ]);
    let t = Instant::now();
    loop {
        let cur = issued_cert(&s, "vshort", "pki-short", Duration::from_secs(1));
        if serial(&cur) != serial(&still) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "no renewal after the role came back"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn c_finalize_ends_the_renewal_task() {
    // A process of its own, over a configuration with one backend whose certificates live 6 s (role `fin`, which
    // nothing else uses): it renews until C_Finalize, then never again.
    let st = setup();
    let config = st.dir.join("fin.toml");
    std::fs::write(
        &config,
        format!(
            "[[slot]]\nlabel = \"fin\"\nuser_pin = \"env:P11BRIDGE_PIN\"\nbackends = [\"vfin\"]\n\n\
             [backend.vfin]\nkind = \"vault-transit\"\naddress = \"{}\"\ntoken = \"env:VAULT_TEST_TOKEN\"\n\
             keys = [\"pki-fin\"]\ncert_cache_dir = \"{}\"\n\
             pki = {{ mount = \"pki_int\", role = \"fin\", ttl = \"6s\", renew_before = \"4s\" }}\n",
            b().addr,
            st.dir.join("fin-certs").display()
        ),
    )
    .unwrap();
    let (out, _) = child(
        "finalize",
        &[("P11BRIDGE_CONFIG", config.to_str().unwrap())],
    );
    let at_finalize: usize = field(&out, "requests").unwrap().parse().unwrap();
    assert!(
        at_finalize >= 2,
        "issued and renewed before C_Finalize: {out}"
    );
    let ms: u128 = field(&out, "finalize_ms").unwrap().parse().unwrap();
    assert!(ms < 5000, "C_Finalize took {ms} ms");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        b().requests("pki_int/sign/fin"),
        at_finalize,
        "a renewal after C_Finalize"
    );
    eprintln!(
        "finalize: {at_finalize} requests before C_Finalize ({ms} ms), none in the 5+ s after"
    );
}

#[test]
fn forked_children_start_afresh_while_the_parent_renews() {
    // A process of its own renewing a 6 s certificate (role `forkr`) forks 5 times at moments spread over the
    // renewals; each child re-initializes, is served the certificate at once, finalizes and exits — within 30 s,
    // none hangs on state its parent's renewal task held.
    let st = setup();
    let config = st.dir.join("fork.toml");
    std::fs::write(
        &config,
        format!(
            "[[slot]]\nlabel = \"fork\"\nuser_pin = \"env:P11BRIDGE_PIN\"\nbackends = [\"vfork\"]\n\n\
             [backend.vfork]\nkind = \"vault-transit\"\naddress = \"{}\"\ntoken = \"env:VAULT_TEST_TOKEN\"\n\
             keys = [\"pki-fork\"]\ncert_cache_dir = \"{}\"\n\
             pki = {{ mount = \"pki_int\", role = \"forkr\", ttl = \"6s\", renew_before = \"4s\" }}\n",
            b().addr,
            st.dir.join("fork-certs").display()
        ),
    )
    .unwrap();
    let (out, err) = child("fork", &[("P11BRIDGE_CONFIG", config.to_str().unwrap())]);
    assert_eq!(field(&out, "forks").unwrap(), "5 of 5", "{out}\n{err}");
    eprintln!("fork: {}", field(&out, "fork_ms").unwrap());
}

/// Forks; the child re-initializes the bridge, reads the certificate of `pki-fork` (served at once), finalizes and
/// exits 0 (1 on a failure); the parent waits at most 30 s. The child's time in ms, or why it failed.
fn fork_child() -> Result<u128, String> {
    let t = Instant::now();
    // SAFETY: the child calls the module and then _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let ok = std::panic::catch_unwind(|| {
            let p = Pkcs11::new(bridge_so()).unwrap();
            p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
                .unwrap();
            {
                let s = session_on(&p, "fork");
                issued_cert(&s, "vfork", "pki-fork", Duration::ZERO);
            }
            p.finalize().unwrap();
        })
        .is_ok();
        // SAFETY: leaves the child at once.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    loop {
        // SAFETY: our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        if t.elapsed() > Duration::from_secs(30) {
            // SAFETY: our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return Err("hung (killed after 30 s)".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(t.elapsed().as_millis())
    } else {
        Err(format!("exit status {status}"))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs this test binary again as a new process (`child_process`), with `PKI_CHILD = mode`; its stdout and stderr.
fn child(mode: &str, vars: &[(&str, &str)]) -> (String, String) {
    p();
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "child_process",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("PKI_CHILD", mode)
    .env("PKI_AUDIT", &b().audit)
    .env_remove("P11BRIDGE_QUIET")
    .env_remove("P11BRIDGE_LOG");
    for (k, v) in vars {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "child {mode}: {o}\n{e}");
    (o, e)
}

fn field<'a>(out: &'a str, name: &str) -> Option<&'a str> {
    let tag = format!("PKI {name} ");
    out.lines()
        .find_map(|l| l.find(&tag).map(|i| &l[i + tag.len()..]))
        .map(str::trim)
}

/// `C_P11BRIDGE_Check`: the report as JSON.
fn check_report() -> String {
    type F = unsafe extern "C" fn(*mut u8, *mut u64) -> u64;
    // SAFETY: the signature of include/p11bridge.h.
    unsafe {
        let f: libloading::Symbol<F> = lib().get(b"C_P11BRIDGE_Check").unwrap();
        let mut len = 0u64;
        assert_eq!(f(std::ptr::null_mut(), &mut len), 0);
        let mut buf = vec![0u8; len as usize];
        assert_eq!(f(buf.as_mut_ptr(), &mut len), 0);
        buf.truncate(len as usize);
        String::from_utf8(buf).unwrap()
    }
}

/// The `pki_int/sign/fin` requests in the audit log of the server whose address the child was given.
fn b_requests_fin() -> usize {
    let audit = std::env::var("PKI_AUDIT").unwrap();
    std::fs::read_to_string(audit)
        .map(|s| {
            s.lines()
                .filter(|l| l.contains("\"type\":\"request\"") && l.contains("pki_int/sign/fin"))
                .count()
        })
        .unwrap_or(0)
}

/// Not a test of its own: the body of the child process (does nothing unless `PKI_CHILD` is set).
#[test]
fn child_process() {
    let Ok(mode) = std::env::var("PKI_CHILD") else {
        return;
    };
    let p = Pkcs11::new(bridge_so()).unwrap();
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    if mode == "fork" {
        let s = session_on(&p, "fork");
        issued_cert(&s, "vfork", "pki-fork", Duration::from_secs(60));
        let mut ok = 0;
        let mut times = Vec::new();
        for i in 0..5u64 {
            std::thread::sleep(Duration::from_millis(300 + 370 * i));
            match fork_child() {
                Ok(ms) => {
                    ok += 1;
                    times.push(ms.to_string());
                }
                Err(e) => eprintln!("fork {i}: {e}"),
            }
        }
        // The parent kept renewing.
        println!("PKI forks {ok} of 5");
        println!("PKI fork_ms children took {} ms", times.join(", "));
        return;
    }
    if mode == "finalize" {
        let s = session_on(&p, "fin");
        let _ = s.find_objects(&[]);
        // The first certificate and at least one renewal, then C_Finalize; the process lives on 3 s more.
        let t = Instant::now();
        while b_requests_fin() < 2 && t.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(200));
        }
        drop(s);
        let t = Instant::now();
        p.finalize().unwrap();
        let ms = t.elapsed().as_millis();
        println!("PKI requests {}", b_requests_fin());
        println!("PKI finalize_ms {ms}");
        std::thread::sleep(Duration::from_secs(3));
        return;
    }
    let s = user_session(&p);
    match mode.as_str() {
        "restart" => {
            // Served at once: no waiting for an issuance.
            let v = issued_cert(&s, "vault", "pki-ec", Duration::ZERO);
            let k = issued_cert(&s, "kms", "kms-pki-ec", Duration::ZERO);
            println!("PKI vault {}", hex(&v));
            println!("PKI kms {}", hex(&k));
            let h = issued_cert(&s, "hsm", "ec-p256", Duration::ZERO);
            println!("PKI hsm {}", hex(&h));
            println!("PKI authorities {}", authorities(&s, "vault").len());
            // This process's renewal task has looked at the keys: none is due.
            std::thread::sleep(Duration::from_secs(2));
        }
        "fail" => {
            // Start this process's renewal task; the short certificate is due, the role is gone.
            let _ = s.find_objects(&[]);
            std::thread::sleep(Duration::from_secs(3));
            println!("PKI check {}", check_report());
        }
        other => panic!("unknown mode {other}"),
    }
}
