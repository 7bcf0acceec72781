//! Never silent, remote backends: what a person sees when a Vault or KMS backend cannot serve — the cause in the
//! service's words with the endpoint, through `C_P11BRIDGE_GetLastError`, `C_P11BRIDGE_Check` and the stderr line of
//! a process — and what a new process finds: keys created through the bridge (no configuration change) and
//! certificates imported for remote keys.
//!
//! Real servers: an OpenBao dev server and moto behind the KMS fidelity layer. "A new process" is this test binary
//! run again as a child (`child_process`, selected by `RD_CHILD`), reading the same configuration.

mod common;

use common::bao::{bao, free_port, ROOT_TOKEN};
use common::moto::moto;
use common::*;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, CertificateType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

struct Setup {
    vault_addr: String,
    moto_url: String,
    bao_down: String,
    kms_down: String,
    /// An `https` address whose server shows a self-signed certificate (`openssl s_server`).
    tls_untrusted: String,
    dir: PathBuf,
}

/// `openssl s_server` with a self-signed certificate on a free port, killed with the test process.
fn untrusted_tls_server(dir: &std::path::Path) -> String {
    use std::os::unix::process::CommandExt;
    let (cert, key) = p11bridge_testkit::tls::self_signed_ca(dir, "tls");
    let port = free_port();
    // Spawned by a thread that lives as long as the process: PR_SET_PDEATHSIG fires when the spawning thread exits.
    std::thread::spawn(move || {
        let mut c = Command::new("openssl");
        c.args([
            "s_server",
            "-quiet",
            "-www",
            "-accept",
            &port.to_string(),
            "-cert",
        ])
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            c.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = c.spawn().expect("openssl s_server");
        let _ = child.wait();
        loop {
            std::thread::park();
        }
    });
    let t = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed().as_secs() < 10, "s_server did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    format!("https://127.0.0.1:{port}")
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let b = bao();
        b.ok(&["secrets", "enable", "transit"]);
        b.ok(&["write", "-f", "transit/keys/rd-existing", "type=ecdsa-p256"]);
        let m = moto();
        m.create_key("rd-existing", "ECC_NIST_P256", "SIGN_VERIFY", &[]);
        let d = m.create_key("rd-disabled", "ECC_NIST_P256", "SIGN_VERIFY", &[]);
        m.boto(&format!("kms.disable_key(KeyId='{d}')"));
        b.ok(&["auth", "enable", "approle"]);
        b.ok(&["write", "auth/approle/role/rd", "token_policies=default"]);
        let role_id = b
            .ok(&["read", "-field=role_id", "auth/approle/role/rd/role-id"])
            .trim()
            .to_string();
        let revocable = b
            .ok(&["token", "create", "-policy=root", "-ttl=1h", "-field=token"])
            .trim()
            .to_string();
        std::env::set_var("RD_REVOCABLE_TOKEN", revocable);
        std::env::set_var("RD_VAULT_TOKEN", ROOT_TOKEN);
        std::env::remove_var("RD_UNSET_TOKEN");
        std::env::set_var("RD_BAD_TOKEN", "not-a-valid-token");
        let dir = repo_root()
            .join("target/test-env")
            .join(format!("remote-diagnostics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("wrong-secret-id"), "wrong-secret-value\n").unwrap();
        // A token that may read one key (and sign), not another nor LIST.
        b.ok(&["write", "-f", "transit/keys/rd-forbidden", "type=ecdsa-p256"]);
        let policy = dir.join("rd-limited.hcl");
        std::fs::write(
            &policy,
            "path \"transit/keys/rd-existing\" { capabilities = [\"read\"] }\npath \"transit/sign/*\" { capabilities = [\"update\"] }\n",
        )
        .unwrap();
        b.ok(&["policy", "write", "rd-limited", &policy.display().to_string()]);
        let limited = b
            .ok(&["token", "create", "-policy=rd-limited", "-ttl=1h", "-field=token"])
            .trim()
            .to_string();
        std::env::set_var("RD_LIMITED_TOKEN", limited);
        let bao_down = format!("http://127.0.0.1:{}", free_port());
        let kms_down = format!("http://127.0.0.1:{}", free_port());
        let tls_untrusted = untrusted_tls_server(&dir);
        let section = format!(
            r#"
[backend.vault]
kind = "vault-transit"
address = "{vault}"
token = "env:RD_VAULT_TOKEN"
keys = ["rd-existing", "rd-no-such-key"]
cert_cache_dir = "{certs}"
timeout_ms = 5000

[backend.kms]
kind = "aws-kms"
region = "us-east-1"
endpoint = "{moto}"
keys = ["alias/rd-existing", "alias/rd-no-such", "alias/rd-disabled"]
cert_cache_dir = "{certs}"
timeout_ms = 5000

[backend.vaultbad]
kind = "vault-transit"
address = "{vault}"
token = "env:RD_BAD_TOKEN"
keys = ["rd-existing"]
timeout_ms = 3000

[backend.baodown]
kind = "vault-transit"
address = "{bao_down}"
token = "env:RD_VAULT_TOKEN"
keys = ["rd-existing"]
timeout_ms = 2000
connect_timeout_ms = 1000

[backend.kmsdown]
kind = "aws-kms"
region = "us-east-1"
endpoint = "{kms_down}"
keys = ["alias/rd-existing"]
timeout_ms = 2000
connect_timeout_ms = 1000
max_attempts = 1

[backend.vaultapprole]
kind = "vault-transit"
address = "{vault}"
role_id = "{role_id}"
secret_id = "file:{dir}/wrong-secret-id"
keys = ["rd-existing"]
timeout_ms = 3000

[backend.vaultnofile]
kind = "vault-transit"
address = "{vault}"
role_id = "{role_id}"
secret_id = "file:{dir}/no-such-file"
keys = ["rd-existing"]
timeout_ms = 3000

[backend.vaultnoenv]
kind = "vault-transit"
address = "{vault}"
token = "env:RD_UNSET_TOKEN"
keys = ["rd-existing"]
timeout_ms = 3000

[backend.vaulttls]
kind = "vault-transit"
address = "{tls_untrusted}"
token = "env:RD_VAULT_TOKEN"
keys = ["rd-existing"]
timeout_ms = 3000

[backend.vaultlimited]
kind = "vault-transit"
address = "{vault}"
token = "env:RD_LIMITED_TOKEN"
keys = ["rd-existing", "rd-forbidden"]
timeout_ms = 3000

[[slot]]
label = "limited"
user_pin = "env:P11BRIDGE_PIN"
backends = ["vaultlimited"]

[backend.vaultrevoked]
kind = "vault-transit"
address = "{vault}"
token = "env:RD_REVOCABLE_TOKEN"
keys = ["rd-existing"]
timeout_ms = 3000

[[slot]]
label = "revoked"
user_pin = "env:P11BRIDGE_PIN"
backends = ["vaultrevoked"]

[[slot]]
label = "badtoken"
user_pin = "env:P11BRIDGE_PIN"
backends = ["vaultbad"]

[[slot]]
label = "tls"
user_pin = "env:P11BRIDGE_PIN"
backends = ["vaulttls"]

[[slot]]
label = "approle"
user_pin = "env:P11BRIDGE_PIN"
backends = ["vaultapprole"]

[[slot]]
label = "nofile"
user_pin = "env:P11BRIDGE_PIN"
backends = ["vaultnofile"]

[[slot]]
label = "noenv"
user_pin = "env:P11BRIDGE_PIN"
backends = ["vaultnoenv"]

[[slot]]
label = "baodown"
user_pin = "env:P11BRIDGE_PIN"
backends = ["baodown"]

[[slot]]
label = "kmsdown"
user_pin = "env:P11BRIDGE_PIN"
backends = ["kmsdown"]
"#,
            vault = b.addr,
            moto = m.url,
            certs = dir.join("certs").display(),
            dir = dir.display(),
        );
        env_with(&["vault", "kms"], &section);
        Setup {
            vault_addr: b.addr.clone(),
            moto_url: m.url.clone(),
            bao_down,
            kms_down,
            tls_untrusted,
            dir,
        }
    })
}

fn p() -> &'static Pkcs11 {
    setup();
    p11()
}

fn rv(e: Error) -> RvError {
    match e {
        Error::Pkcs11(rv, _) => rv,
        other => panic!("not a PKCS#11 error: {other}"),
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

fn check_backend(name: &str) -> serde_json::Value {
    static REPORT: OnceLock<serde_json::Value> = OnceLock::new();
    // `C_P11BRIDGE_Check` logs backends in and out: in a process of its own, as `p11bridge check` runs it.
    let r = REPORT.get_or_init(|| {
        let (out, err) = child("check", &[]);
        serde_json::from_str(field(&out, "check").unwrap_or_else(|| panic!("{out}\n{err}")))
            .unwrap()
    });
    r["slots"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["backends"].as_array().unwrap().iter())
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("no backend {name} in {r}"))
        .clone()
}

/// Searches a token whose only backend cannot serve, and returns the thread's last cause.
fn search_cause(label: &str) -> String {
    common::search_cause(p(), label)
}

#[test]
fn wrong_vault_token_names_403_and_permission_denied() {
    let st = setup();
    let text = search_cause("badtoken");
    for want in [
        "backend \"vaultbad\"",
        st.vault_addr.as_str(),
        "HTTP 403",
        "permission denied",
        "/v1/transit/keys/rd-existing",
        "its keys are not on token \"badtoken\"",
    ] {
        assert!(text.contains(want), "{want:?} missing from {text:?}");
    }
    assert!(!text.contains("not-a-valid-token"), "{text}");
    let b = check_backend("vaultbad");
    let login = b["login"].as_str().unwrap();
    assert!(
        login.contains("403") && login.contains("permission denied"),
        "{b}"
    );
    assert!(login.contains("auth/token/lookup-self"), "{b}");
    assert_eq!(b["ok"], false);
    assert_eq!(b["endpoint"], st.vault_addr.as_str());
}

#[test]
fn a_refused_signature_names_the_request_and_vaults_answer() {
    let st = setup();
    let p = p();
    let s = session_on(p, "revoked");
    let (_, privk) = key_pair(&s, "rd-existing", "vaultrevoked");
    // The token is revoked after the keys were read: the signature is refused by Vault.
    bao().ok(&[
        "token",
        "revoke",
        &std::env::var("RD_REVOCABLE_TOKEN").unwrap(),
    ]);
    let e = s.sign(&Mechanism::Ecdsa, privk, &[7u8; 32]).unwrap_err();
    assert_eq!(rv(e), RvError::KeyFunctionNotPermitted);
    let (code, text) = last_error();
    assert_eq!(code, 0x68, "CKR_KEY_FUNCTION_NOT_PERMITTED");
    for want in [
        format!(
            "backend \"vaultrevoked\" (vault-transit, {})",
            st.vault_addr
        ),
        "key \"rd-existing\": signing failed".to_string(),
        "HTTP 403 on POST /v1/transit/sign/rd-existing/sha2-256: permission denied".to_string(),
    ] {
        assert!(text.contains(&want), "{want:?} missing from {text:?}");
    }
}

#[test]
fn refused_logins_and_unreadable_secrets_are_named() {
    let st = setup();
    let text = search_cause("approle");
    assert!(
        text.contains(&format!(
            "login failed: AppRole login (POST {}/v1/auth/approle/login): HTTP 4",
            st.vault_addr
        )),
        "{text}"
    );
    assert!(!text.contains("wrong-secret-value"), "{text}");
    let text = search_cause("nofile");
    assert!(
        text.contains("secret_id = \"file:") && text.contains("no-such-file"),
        "{text}"
    );
    let text = search_cause("noenv");
    assert!(
        text.contains("token = \"env:RD_UNSET_TOKEN\" cannot be read")
            && text.contains("RD_UNSET_TOKEN is not set"),
        "{text}"
    );
}

#[test]
fn openbao_down_names_the_url_and_the_os_error() {
    let st = setup();
    let text = search_cause("baodown");
    assert!(text.contains(&st.bao_down), "{text}");
    assert!(
        text.contains("Connection refused") || text.contains("os error 111"),
        "{text}"
    );
    assert!(!text.contains("url ()"), "{text}");
}

#[test]
fn an_untrusted_server_certificate_names_the_host_and_the_problem() {
    let st = setup();
    let text = search_cause("tls");
    assert!(text.contains(&st.tls_untrusted), "{text}");
    // rustls's words: "invalid peer certificate: ..." (here CaUsedAsEndEntity: a self-signed CA certificate).
    assert!(text.contains("invalid peer certificate"), "{text}");
}

#[test]
fn kms_credentials_that_cannot_be_loaded_are_named() {
    // A new process without any AWS credentials.
    let (out, err) = child_with(
        "check",
        &[
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials"),
            ("AWS_CONFIG_FILE", "/nonexistent/config"),
        ],
        &[
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
        ],
    );
    let r: serde_json::Value =
        serde_json::from_str(field(&out, "check").unwrap_or_else(|| panic!("{out}\n{err}")))
            .unwrap();
    let kms = r["slots"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "kms")
        .unwrap()
        .clone();
    let login = kms["login"].as_str().unwrap();
    assert!(
        login.contains("credentials could not be loaded: the AWS default chain"),
        "{kms}"
    );
}

#[test]
fn kms_down_names_the_endpoint_and_region() {
    let st = setup();
    let text = search_cause("kmsdown");
    assert!(text.contains(&st.kms_down), "{text}");
    assert!(text.contains("region us-east-1"), "{text}");
    assert!(text.contains("backend \"kmsdown\" (aws-kms"), "{text}");
    let b = check_backend("kmsdown");
    assert!(b["login"].as_str().unwrap().contains(&st.kms_down), "{b}");
}

#[test]
fn missing_configured_keys_are_named() {
    let st = setup();
    let v = check_backend("vault");
    assert_eq!(v["keys_found"], serde_json::json!(["rd-existing"]), "{v}");
    assert_eq!(
        v["keys_missing"],
        serde_json::json!(["rd-no-such-key"]),
        "{v}"
    );
    assert!(v["login"].as_str().unwrap().contains("root"), "{v}");
    let k = check_backend("kms");
    assert_eq!(
        k["keys_found"],
        serde_json::json!(["alias/rd-existing"]),
        "{k}"
    );
    assert_eq!(
        k["keys_missing"],
        serde_json::json!(["alias/rd-no-such", "alias/rd-disabled"]),
        "{k}"
    );
    assert!(
        k["endpoint"].as_str().unwrap().contains(&st.moto_url),
        "{k}"
    );
    // A new process says so on stderr, once per key, with what the service answered.
    let (_, err) = child("list", &[]);
    for want in [
        format!(
            "p11bridge: backend \"vault\" (vault-transit, {}): key \"rd-no-such-key\" named in keys: ",
            st.vault_addr
        ),
        "HTTP 404 on GET /v1/transit/keys/rd-no-such-key".to_string(),
        "key \"alias/rd-no-such\" named in keys: NotFoundException".to_string(),
        "key \"alias/rd-disabled\" named in keys: KMS says its state is Disabled".to_string(),
        "it is not on the token".to_string(),
    ] {
        assert!(err.contains(&want), "{want:?} missing from stderr:\n{err}");
    }
    assert_eq!(
        err.matches("key \"rd-no-such-key\" named in keys").count(),
        1,
        "{err}"
    );
}

#[test]
fn a_key_the_policy_forbids_is_named_and_the_others_served() {
    let st = setup();
    let b = check_backend("vaultlimited");
    assert_eq!(b["keys_found"], serde_json::json!(["rd-existing"]), "{b}");
    assert_eq!(
        b["keys_missing"],
        serde_json::json!(["rd-forbidden"]),
        "{b}"
    );
    let (_, err) = child("check", &[]);
    for want in [
        format!(
            "p11bridge: backend \"vaultlimited\" (vault-transit, {}): key \"rd-forbidden\" named in keys: ",
            st.vault_addr
        ),
        "HTTP 403 on GET /v1/transit/keys/rd-forbidden: permission denied".to_string(),
        "cannot list the keys created through the bridge (created_prefix \"p11bridge-\"): vaultlimited: HTTP 403 on LIST /v1/transit/keys".to_string(),
    ] {
        assert!(err.contains(&want), "{want:?} missing from stderr:\n{err}");
    }
    let p = p();
    let s = session_on(p, "limited");
    let (_, privk) = key_pair(&s, "rd-existing", "vaultlimited");
    assert_eq!(
        s.sign(&Mechanism::Ecdsa, privk, &[1u8; 32]).unwrap().len(),
        64
    );
}

#[test]
fn keys_created_through_the_bridge_are_found_by_a_new_process() {
    let p = p();
    let s = user_session(p);
    let p256 = vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    for b in ["vault", "kms"] {
        let label = format!("rd-gen-{b}-{}", std::process::id());
        s.generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::EcParams(p256.clone()),
                Attribute::Token(true),
                backend(b),
            ],
            &[
                Attribute::Token(true),
                Attribute::Sign(true),
                Attribute::Label(label.clone().into_bytes()),
                backend(b),
            ],
        )
        .unwrap();
        // A new process, the same configuration (no `keys` change): the key is there and signs.
        let (out, err) = child("sign", &[("RD_LABEL", &label), ("RD_BACKEND", b)]);
        let spki = hex(field(&out, "spki").unwrap_or_else(|| panic!("{b}: {out}\n{err}")));
        let sig = hex(field(&out, "sig").unwrap());
        assert!(
            openssl_verify(
                &spki,
                Some("sha256"),
                &[],
                b"signed by a new process",
                &der::ecdsa_der(&sig)
            ),
            "{b}: signature of the new process does not verify"
        );
    }
    let listed = bao().ok(&["list", "transit/keys"]);
    assert!(
        listed.contains(&format!("p11bridge-rd-gen-vault-{}", std::process::id())),
        "{listed}"
    );
    let aliases = moto().boto("print([a['AliasName'] for a in kms.list_aliases()['Aliases']])");
    assert!(
        aliases.contains(&format!(
            "alias/p11bridge/rd-gen-kms-{}",
            std::process::id()
        )),
        "{aliases}"
    );
}

/// A DER certificate (issued by a throwaway CA) whose subject public key is `spki`.
fn certificate_for(spki: &[u8], tag: &str) -> Vec<u8> {
    let d = tempdir(tag);
    std::fs::write(d.join("spki.der"), spki).unwrap();
    let path = |f: &str| d.join(f).display().to_string();
    openssl(
        &[
            "pkey",
            "-pubin",
            "-inform",
            "DER",
            "-in",
            &path("spki.der"),
            "-out",
            &path("pub.pem"),
        ],
        None,
    );
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &path("ca.key"),
            "-out",
            &path("ca.pem"),
            "-subj",
            "/CN=rd-ca",
            "-days",
            "2",
        ],
        None,
    );
    openssl(
        &[
            "req",
            "-new",
            "-key",
            &path("ca.key"),
            "-subj",
            &format!("/CN={tag}"),
            "-out",
            &path("leaf.csr"),
        ],
        None,
    );
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            &path("leaf.csr"),
            "-CA",
            &path("ca.pem"),
            "-CAkey",
            &path("ca.key"),
            "-CAcreateserial",
            "-force_pubkey",
            &path("pub.pem"),
            "-days",
            "2",
            "-outform",
            "DER",
            "-out",
            &path("leaf.der"),
        ],
        None,
    );
    std::fs::read(d.join("leaf.der")).unwrap()
}

fn cert_template(id: &[u8], der: &[u8], b: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::CERTIFICATE),
        Attribute::CertificateType(CertificateType::X_509),
        Attribute::Token(true),
        Attribute::Id(id.to_vec()),
        Attribute::Value(der.to_vec()),
        Attribute::Label(b"imported".to_vec()),
        backend(b),
    ]
}

fn id_of(s: &Session, o: ObjectHandle) -> Vec<u8> {
    match s.get_attributes(o, &[AttributeType::Id]).unwrap().pop() {
        Some(Attribute::Id(v)) => v,
        other => panic!("{other:?}"),
    }
}

fn value_of(s: &Session, o: ObjectHandle) -> Vec<u8> {
    match s.get_attributes(o, &[AttributeType::Value]).unwrap().pop() {
        Some(Attribute::Value(v)) => v,
        other => panic!("{other:?}"),
    }
}

#[test]
fn imported_certificates_are_served_after_a_restart() {
    let p = p();
    let s = user_session(p);
    for b in ["vault", "kms"] {
        let (pubk, privk) = key_pair(&s, "rd-existing", b);
        let id = id_of(&s, privk);
        let spki = spki(&s, pubk);
        // A certificate of another key is refused, with the reason.
        let other = openssl(
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ],
            None,
        );
        let other_spki = openssl(&["pkey", "-pubout", "-outform", "DER"], Some(&other));
        let wrong = certificate_for(&other_spki, &format!("rd-wrong-{b}"));
        let e = s.create_object(&cert_template(&id, &wrong, b)).unwrap_err();
        assert_eq!(rv(e), RvError::AttributeValueInvalid, "{b}");
        let (_, why) = last_error();
        assert!(why.contains("public key"), "{b}: {why}");
        // The key's own certificate is taken and served at once.
        let good = certificate_for(&spki, &format!("rd-cert-{b}"));
        let c = s.create_object(&cert_template(&id, &good, b)).unwrap();
        assert_eq!(value_of(&s, c), good, "{b}");
        let certs = s
            .find_objects(&[
                Attribute::Class(ObjectClass::CERTIFICATE),
                Attribute::Id(id.clone()),
                backend(b),
            ])
            .unwrap();
        assert_eq!(certs.len(), 1, "{b}");
        assert_eq!(value_of(&s, certs[0]), good, "{b}");
        // And by a new process.
        let idhex: String = id.iter().map(|x| format!("{x:02x}")).collect();
        let (out, err) = child("cert", &[("RD_ID", &idhex), ("RD_BACKEND", b)]);
        let served = hex(field(&out, "cert").unwrap_or_else(|| panic!("{b}: {out}\n{err}")));
        assert_eq!(
            served, good,
            "{b}: the new process serves another certificate"
        );
    }
}

#[test]
fn a_child_process_says_on_stderr_which_backend_failed() {
    let st = setup();
    let config = st.dir.join("badtoken.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[slot]]
label = "badtoken"
user_pin = "env:P11BRIDGE_PIN"
backends = ["vaultbad"]

[backend.vaultbad]
kind = "vault-transit"
address = "{}"
token = "env:RD_BAD_TOKEN"
keys = ["rd-existing"]
timeout_ms = 3000
"#,
            st.vault_addr
        ),
    )
    .unwrap();
    let (_, err) = list_objects(&config, &[]);
    assert!(
        err.contains(&format!(
            "p11bridge: backend \"vaultbad\" (vault-transit, {}): cannot list its keys: ",
            st.vault_addr
        )),
        "{err}"
    );
    assert!(
        err.contains("HTTP 403") && err.contains("permission denied"),
        "{err}"
    );
    assert!(!err.contains("not-a-valid-token"), "{err}");
    assert_eq!(
        err.matches("p11bridge: backend \"vaultbad\"").count(),
        1,
        "{err}"
    );
}

// ---- the child process -------------------------------------------------------------------------------------------

/// Runs this test binary again as a new process (`child_process`), with `RD_CHILD = mode`; its stdout and stderr.
fn child(mode: &str, vars: &[(&str, &str)]) -> (String, String) {
    child_with(mode, vars, &[])
}

/// [`child`], with variables removed from its environment.
fn child_with(mode: &str, vars: &[(&str, &str)], remove: &[&str]) -> (String, String) {
    // This process's bridge first: a child shares the SoftHSM2 token directory, and SoftHSM2 reading the token at
    // its C_Initialize while another process writes it found no token "upstream" (seen once under load).
    p();
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "child_process",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("RD_CHILD", mode)
    .env_remove("P11BRIDGE_QUIET")
    .env_remove("P11BRIDGE_LOG");
    for (k, v) in vars {
        c.env(k, v);
    }
    for k in remove {
        c.env_remove(k);
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
    // The harness prints "test child_process ... " on the same line.
    let tag = format!("RD {name} ");
    out.lines()
        .find_map(|l| l.find(&tag).map(|i| &l[i + tag.len()..]))
        .map(str::trim)
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Not a test of its own: the body of the child process (does nothing unless `RD_CHILD` is set). It uses the
/// environment and configuration its parent set up.
#[test]
fn child_process() {
    let Ok(mode) = std::env::var("RD_CHILD") else {
        return;
    };
    let p = Pkcs11::new(bridge_so()).unwrap();
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let s = user_session(&p);
    match mode.as_str() {
        "check" => {
            println!("RD check {}", check_report());
        }
        "list" => {
            let n = s.find_objects(&[]).unwrap().len();
            println!("RD objects {n}");
        }
        "sign" => {
            let label = std::env::var("RD_LABEL").unwrap();
            let b = std::env::var("RD_BACKEND").unwrap();
            let (pubk, privk) = key_pair(&s, &label, &b);
            let sig = s
                .sign(
                    &Mechanism::Ecdsa,
                    privk,
                    &sha256(b"signed by a new process"),
                )
                .unwrap();
            println!("RD spki {}", to_hex(&spki(&s, pubk)));
            println!("RD sig {}", to_hex(&sig));
        }
        "cert" => {
            let id = hex(&std::env::var("RD_ID").unwrap());
            let b = std::env::var("RD_BACKEND").unwrap();
            let certs = s
                .find_objects(&[
                    Attribute::Class(ObjectClass::CERTIFICATE),
                    Attribute::Id(id),
                    backend(&b),
                ])
                .unwrap();
            assert_eq!(certs.len(), 1);
            println!("RD cert {}", to_hex(&value_of(&s, certs[0])));
        }
        other => panic!("unknown child mode {other}"),
    }
}
