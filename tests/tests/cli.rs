//! The `p11bridge` command line, run as a program against the built module and real servers (SoftHSM2, OpenBao,
//! moto): check (a good configuration, a wrong HSM PIN, a broken file), list (table, TSV, JSON; backends in
//! configuration order), keygen in every backend → export → sign → `openssl dgst -verify`, cert import on an HSM key
//! seen by a new process, the error format, the PIN prompt on a pseudo-terminal, a closed pipe, module lookup and
//! help texts.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

fn bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("p11bridge");
    assert!(
        bin.exists(),
        "{} missing: cargo build --release -p p11bridge-cli",
        bin.display()
    );
    bin
}

/// The unified token over hsm, vault and kms (in that order), with one key made outside the bridge in each remote
/// backend. Vault and KMS discover their keys, so keys made by `keygen` are seen by the next process too.
fn fixture() -> &'static Env {
    static S: OnceLock<()> = OnceLock::new();
    S.get_or_init(|| {
        env_three_backends("cli-certs", "discover = true", "discover = true");
    });
    env()
}

fn cli() -> Command {
    fixture();
    let mut c = Command::new(bin());
    c.arg("--module").arg(bridge_so());
    c
}

/// The same configuration with the unified token's PIN read from `$CLI_TEST_USER_PIN`, and a command on it whose
/// environment has no `$P11BRIDGE_PIN`: the CLI then has no PIN of its own to give.
fn without_pin_env() -> Command {
    let e = fixture();
    let cfg = e.dir.join("user-pin-elsewhere.toml");
    if !cfg.exists() {
        let good = std::fs::read_to_string(&e.config).unwrap();
        let alt = good.replace(
            "user_pin = \"env:P11BRIDGE_PIN\"",
            "user_pin = \"env:CLI_TEST_USER_PIN\"",
        );
        assert_ne!(alt, good);
        std::fs::write(&cfg, alt).unwrap();
    }
    let mut c = cli();
    c.arg("--config")
        .arg(&cfg)
        .env("CLI_TEST_USER_PIN", BRIDGE_PIN)
        .env_remove("P11BRIDGE_PIN");
    c
}

fn run(args: &[&str]) -> Output {
    cli().args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs and insists on success; stdout.
fn ok(args: &[&str]) -> String {
    succeeds(cli(), args)
}

/// Runs `c` with `args` and insists on success; stdout.
fn succeeds(mut c: Command, args: &[&str]) -> String {
    let out = c.args(args).output().unwrap();
    assert!(
        out.status.success(),
        "p11bridge {args:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        !text(&out.stderr).contains("panicked"),
        "{}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// One test at a time: SoftHSM2 2.6.1 fails when several processes use one token directory at once (3 concurrent
/// `pkcs11-tool -O --login` runs: 10 of 45 found no token; 3 concurrent `p11bridge check`: 9 of 45 got
/// CKR_GENERAL_ERROR from its C_Login / C_GetTokenInfo). The tests here are about the command line, not that.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static L: std::sync::Mutex<()> = std::sync::Mutex::new(());
    L.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fresh directory under the test environment (made by [`fixture`]: the first `env*` call decides the
/// configuration).
fn dir(tag: &str) -> PathBuf {
    fixture();
    tempdir(tag)
}

fn tmp(name: &str) -> PathBuf {
    dir("cli").join(name)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn check_passes_on_a_good_configuration_backends_in_config_order() {
    let _g = serial();
    let out = ok(&["check"]);
    eprintln!("as shown:\n{out}");
    let hsm = out.find("backend \"hsm\" (pkcs11): OK").expect(&out);
    let vault = out
        .find("backend \"vault\" (vault-transit): OK")
        .expect(&out);
    let kms = out.find("backend \"kms\" (aws-kms): OK").expect(&out);
    assert!(hsm < vault && vault < kms, "configuration order: {out}");
    assert!(out.contains("login:        ok"), "{out}");
    assert!(
        out.contains("endpoint:     /usr/lib/softhsm/libsofthsm2.so"),
        "{out}"
    );
    assert!(out.contains("private keys"), "{out}");
    assert!(
        out.contains("user PIN env:P11BRIDGE_PIN: readable"),
        "{out}"
    );
    assert!(
        !out.contains(" 1 private keys") && !out.contains(" 1 secret keys"),
        "{out}"
    );
    assert!(
        out.trim_end().lines().last().unwrap().starts_with("all "),
        "{out}"
    );
    // No PIN needed, never asked for.
    let out = without_pin_env()
        .arg("check")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // --json: the module's report.
    let v: serde_json::Value = serde_json::from_str(&ok(&["check", "--json"])).unwrap();
    assert_eq!(v["ok"], true);
    let names: Vec<&str> = v["slots"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hsm", "vault", "kms"]);
}

#[test]
fn check_fails_with_the_cause_for_a_wrong_hsm_pin() {
    let _g = serial();
    let e = fixture();
    let cfg = e.dir.join("wrong-hsm-pin.toml");
    let good = std::fs::read_to_string(&e.config).unwrap();
    std::fs::write(
        &cfg,
        good.replace("pin = \"env:HSM_PIN\"", "pin = \"env:WRONG_HSM_PIN\""),
    )
    .unwrap();
    let out = cli()
        .arg("--config")
        .arg(&cfg)
        .arg("check")
        .env("WRONG_HSM_PIN", "9999")
        .output()
        .unwrap();
    let (o, err) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "{o}");
    assert!(o.contains("backend \"hsm\" (pkcs11): FAILED"), "{o}");
    assert!(o.contains("CKR_PIN_INCORRECT"), "{o}");
    assert!(o.contains("env:WRONG_HSM_PIN"), "{o}");
    let last = err.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("p11bridge: check: 1 of ") && last.contains("failed"),
        "{err}"
    );
    // The other backends still pass.
    assert!(o.contains("backend \"vault\" (vault-transit): OK"), "{o}");

    // A signature with the HSM's key: not found, and the error says why.
    let msg = tmp("msg");
    std::fs::write(&msg, b"x").unwrap();
    let out = cli()
        .arg("--config")
        .arg(&cfg)
        .args([
            "sign",
            "--uri",
            "pkcs11:token=unified;object=ec-p256;type=private",
            "-m",
            "ECDSA-SHA256",
            "-i",
            p(&msg),
            "-o",
            p(&tmp("sig")),
        ])
        .env("WRONG_HSM_PIN", "9999")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("p11bridge: sign: no object matches")
            && err.contains("Note: backend \"hsm\"")
            && err.contains("CKR_PIN_INCORRECT"),
        "{err}"
    );
}

#[test]
fn check_names_the_configured_keys_found_and_missing() {
    let _g = serial();
    let e = fixture();
    let cfg = e.dir.join("keys-listed.toml");
    let good = std::fs::read_to_string(&e.config).unwrap();
    let listed = good.replacen(
        "discover = true",
        "keys = [\"vault-ec\", \"no-such-key\"]",
        1,
    );
    assert_ne!(listed, good);
    std::fs::write(&cfg, listed).unwrap();
    let check = |json: bool| {
        let mut c = cli();
        c.arg("--config").arg(&cfg).arg("check");
        if json {
            c.arg("--json");
        }
        text(&c.output().unwrap().stdout)
    };
    let v: serde_json::Value = serde_json::from_str(&check(true)).unwrap();
    let o = check(false);
    let vault = &v["slots"][0]["backends"][1];
    assert_eq!(vault["name"], "vault");
    // Every key the module names as found or missing is shown by name.
    let mut named = 0;
    for (k, what) in [
        ("keys_found", "keys found:"),
        ("keys_missing", "keys missing:"),
    ] {
        let names: Vec<&str> = vault[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        if !names.is_empty() {
            named += 1;
            let line = o.lines().find(|l| l.contains(what)).expect(&o);
            assert!(line.ends_with(&names.join(", ")), "{o}");
        }
    }
    if named == 0 {
        eprintln!(
            "note: this module's Vault backend does not report configured keys found/missing yet"
        );
    }
}

/// A backend nobody answers for: check fails naming it and its endpoint, list still lists the others and says
/// why that backend's keys are missing, and a key of it is "not found" with the reason.
#[test]
fn an_unreachable_backend_is_never_silent() {
    let _g = serial();
    let e = fixture();
    let cfg = e.dir.join("dead-backend.toml");
    let good = std::fs::read_to_string(&e.config).unwrap();
    let port = common::bao::free_port();
    let dead = good.replace(
        "backends = [\"hsm\", \"vault\", \"kms\"]",
        "backends = [\"hsm\", \"vault\", \"kms\", \"dead\"]",
    ) + &format!(
        "\n[backend.dead]\nkind = \"vault-transit\"\naddress = \"http://127.0.0.1:{port}\"\n\
         token = \"env:VAULT_TEST_TOKEN\"\nkeys = [\"gone\"]\ntimeout_ms = 2000\nconnect_timeout_ms = 500\n"
    );
    assert_ne!(dead, good);
    std::fs::write(&cfg, dead).unwrap();
    let with = |args: &[&str]| cli().arg("--config").arg(&cfg).args(args).output().unwrap();
    let out = with(&["check"]);
    let (o, err) = (text(&out.stdout), text(&out.stderr));
    eprintln!("as shown: {o}{err}");
    assert!(!out.status.success());
    assert!(
        o.contains("backend \"dead\" (vault-transit): FAILED"),
        "{o}"
    );
    assert!(o.contains("backend \"hsm\" (pkcs11): OK"), "{o}");
    assert!(
        err.contains("backend \"dead\" of token \"unified\""),
        "{err}"
    );
    let out = with(&["list", "--tsv"]);
    let err = text(&out.stderr);
    eprintln!("as shown: {err}");
    assert!(out.status.success(), "{err}");
    assert!(text(&out.stdout).contains("\tec-p256\t"));
    assert!(
        err.contains("p11bridge: warning: backend \"dead\"") && err.contains(&port.to_string()),
        "{err}"
    );
    let msg = tmp("dead.msg");
    std::fs::write(&msg, b"x").unwrap();
    let out = with(&[
        "sign",
        "--uri",
        "pkcs11:token=unified;object=gone;type=private",
        "-m",
        "ECDSA-SHA256",
        "-i",
        p(&msg),
        "-o",
        p(&tmp("dead.sig")),
    ]);
    let err = text(&out.stderr);
    eprintln!("as shown: {err}");
    assert!(!out.status.success());
    assert!(
        err.contains("no object matches") && err.contains("Note: backend \"dead\""),
        "{err}"
    );
}

#[test]
fn a_broken_configuration_is_named_with_file_and_line() {
    let _g = serial();
    let e = fixture();
    let bad = e.dir.join("bad.toml");
    std::fs::write(&bad, "[[slot]]\nlabel = \"x\"\nnonsense = 1\n").unwrap();
    for args in [&["check"][..], &["check", "--json"], &["list"]] {
        let out = cli().arg("--config").arg(&bad).args(args).output().unwrap();
        assert!(!out.status.success());
        let err = text(&out.stderr);
        let last = err.trim_end().lines().last().unwrap_or_default();
        assert!(
            last.contains("CKR_GENERAL_ERROR: the module could not start. Cause: ")
                && last.contains("bad.toml:3")
                && last.contains("nonsense"),
            "{err}"
        );
    }
    let out = cli()
        .arg("--config")
        .arg(&bad)
        .args(["check", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert!(v["error"].as_str().unwrap().contains("bad.toml:3"));
}

#[test]
fn list_table_tsv_and_json() {
    let _g = serial();
    let v: serde_json::Value = serde_json::from_str(&ok(&["list", "--json"])).unwrap();
    let rows = v.as_array().unwrap();
    let key = rows
        .iter()
        .find(|o| o["label"] == "ec-p256" && o["class"] == "private" && o["token"] == "unified")
        .expect("ec-p256 listed");
    assert_eq!(
        key["uri"],
        "pkcs11:token=unified;object=ec-p256;id=%02;type=private"
    );
    assert_eq!(key["backend"], "hsm");
    assert_eq!(key["type"], "ec-p256");
    // Rows of the unified token: backend by backend in configuration order.
    let order: Vec<&str> = rows
        .iter()
        .filter(|r| r["token"] == "unified")
        .map(|r| r["backend"].as_str().unwrap())
        .collect();
    let first = |b: &str| order.iter().position(|x| *x == b).unwrap();
    let last = |b: &str| order.iter().rposition(|x| *x == b).unwrap();
    assert!(
        last("hsm") < first("vault") && last("vault") < first("kms"),
        "{order:?}"
    );

    let tsv = ok(&["list", "--tsv"]);
    let mut lines = tsv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "TOKEN\tCLASS\tTYPE\tBACKEND\tUSAGES\tLABEL\tID\tURI"
    );
    let mut seen = 0;
    for l in lines {
        let c: Vec<&str> = l.split('\t').collect();
        assert_eq!(c.len(), 8, "{l}");
        assert!(!c[2].contains(' '), "TYPE has no spaces: {l}");
        if c[5] == "vault-ec" && c[1] == "private" {
            assert_eq!((c[2], c[3]), ("ec-p256", "vault"), "{l}");
            assert!(c[4].contains('s'), "{l}");
            seen += 1;
        }
        if c[5] == "rsa-2048" && c[1] == "private" && c[0] == "unified" {
            assert_eq!(c[2], "rsa-2048", "{l}");
            seen += 1;
        }
    }
    assert_eq!(seen, 2, "{tsv}");
    let table = ok(&["list"]);
    assert!(table.starts_with("TOKEN "), "{table}");
    assert!(table.contains("ec-p256"), "{table}");
    // Without a PIN: public objects only, said on stderr, never a prompt.
    let out = without_pin_env().args(["list", "--tsv"]).output().unwrap();
    assert!(out.status.success());
    assert!(!text(&out.stdout).contains("\tprivate\t"));
    assert!(text(&out.stderr).contains("public objects only"));
    // A wrong PIN is an error, not an empty list.
    let out = run(&["--pin", "wrong", "list"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(
            "p11bridge: list: login to token \"unified\" (PIN from --pin): CKR_PIN_INCORRECT: the PIN is wrong"
        ),
        "{}",
        text(&out.stderr)
    );
}

fn openssl_ok(args: &[&str]) -> bool {
    let out = Command::new("openssl").args(args).output().unwrap();
    out.status.success()
}

/// Whether openssl verifies `sig` (DER) over `msg`, hashed with SHA-256, with the public key in `pem`.
fn openssl_verifies_sha256(pem: &Path, sig: &Path, msg: &Path) -> bool {
    openssl_ok(&[
        "dgst",
        "-sha256",
        "-verify",
        p(pem),
        "-signature",
        p(sig),
        p(msg),
    ])
}

/// keygen → export → sign (DER) → openssl verifies; the CLI's verify accepts DER and raw.
fn generated_key_signs(backend: &str, ty: &str, mech: &str) {
    let label = format!("cli-{backend}-{ty}");
    let uri = ok(&[
        "keygen",
        "--backend",
        backend,
        "--type",
        ty,
        "--label",
        &label,
    ]);
    let uri = uri.trim();
    assert!(
        uri.starts_with(&format!("pkcs11:token=unified;object={label};id="))
            && uri.ends_with(";type=private"),
        "{uri}"
    );
    let pem = tmp(&format!("{label}.pem"));
    ok(&["export", "--uri", uri, "-o", p(&pem)]);
    let msg = tmp(&format!("{label}.msg"));
    std::fs::write(&msg, format!("signed by {label} through the command line")).unwrap();
    let sig = tmp(&format!("{label}.sig"));
    // A new process: the key is found again (Vault and KMS by discovery).
    ok(&[
        "sign",
        "--uri",
        uri,
        "-m",
        mech,
        "-i",
        p(&msg),
        "-o",
        p(&sig),
    ]);
    let verified = if ty == "ed25519" {
        openssl_ok(&[
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            p(&pem),
            "-rawin",
            "-in",
            p(&msg),
            "-sigfile",
            p(&sig),
        ])
    } else {
        openssl_verifies_sha256(&pem, &sig, &msg)
    };
    assert!(verified, "openssl verifies {label}'s signature");
    let public = uri.replace("type=private", "type=public");
    ok(&[
        "verify",
        "--uri",
        &public,
        "-m",
        mech,
        "-i",
        p(&msg),
        "-s",
        p(&sig),
    ]);
    if mech.starts_with("ECDSA") {
        let raw = tmp(&format!("{label}.raw"));
        ok(&[
            "sign",
            "--uri",
            uri,
            "-m",
            mech,
            "-i",
            p(&msg),
            "-o",
            p(&raw),
            "--format",
            "raw",
        ]);
        assert_eq!(std::fs::metadata(&raw).unwrap().len(), 64);
        ok(&[
            "verify",
            "--uri",
            &public,
            "-m",
            mech,
            "-i",
            p(&msg),
            "-s",
            p(&raw),
        ]);
    }
    // A signature over other data does not verify: CKR_SIGNATURE_INVALID, by name.
    std::fs::write(&msg, b"something else").unwrap();
    let out = run(&[
        "verify",
        "--uri",
        &public,
        "-m",
        mech,
        "-i",
        p(&msg),
        "-s",
        p(&sig),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr)
            .starts_with("p11bridge: verify: CKR_SIGNATURE_INVALID: the signature does not match"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn keygen_export_sign_openssl_verify_hsm() {
    let _g = serial();
    generated_key_signs("hsm", "p256", "ECDSA-SHA256");
    generated_key_signs("hsm", "rsa2048", "SHA256-RSA-PKCS");
    generated_key_signs("hsm", "ed25519", "EDDSA");
    let uri = ok(&[
        "keygen",
        "--backend",
        "hsm",
        "--type",
        "aes256",
        "--label",
        "cli-hsm-aes",
        "--id",
        "c0ffee",
    ]);
    assert_eq!(
        uri.trim(),
        "pkcs11:token=unified;object=cli-hsm-aes;id=%c0%ff%ee;type=secret-key"
    );
}

#[test]
fn keygen_export_sign_openssl_verify_vault() {
    let _g = serial();
    generated_key_signs("vault", "p256", "ECDSA-SHA256");
    generated_key_signs("vault", "rsa2048", "SHA256-RSA-PKCS");
}

#[test]
fn keygen_export_sign_openssl_verify_kms() {
    let _g = serial();
    generated_key_signs("kms", "p256", "ECDSA-SHA256");
}

/// A KMS section without `endpoint`, the endpoint in `AWS_ENDPOINT_URL_KMS` (as in the package's service test):
/// found by the SDK's calls and by the caller-thread `Sign` alike (kms/lean.rs looks it up as the SDK does); the
/// signature verifies with openssl, and the Sign request was the bridge's own, not the SDK's.
#[test]
fn kms_endpoint_from_the_environment() {
    let _s = serial();
    let e = fixture();
    let m = common::moto::moto();
    let good = std::fs::read_to_string(&e.config).unwrap();
    let alt = good.replace(&format!("endpoint = \"{}\"\n", m.url), "");
    assert_ne!(alt, good, "the fixture's KMS section names its endpoint");
    let cfg = tmp("kms-endpoint-from-env.toml");
    std::fs::write(&cfg, alt).unwrap();
    let with_env = |args: &[&str]| {
        let mut c = cli();
        c.arg("--config")
            .arg(&cfg)
            .env("AWS_ENDPOINT_URL_KMS", &m.url);
        succeeds(c, args)
    };
    let pem = tmp("kms-env.pem");
    with_env(&[
        "export",
        "--uri",
        "pkcs11:token=unified;object=kms-ec;type=public",
        "-o",
        p(&pem),
    ]);
    let msg = tmp("kms-env.msg");
    std::fs::write(&msg, b"KMS endpoint from AWS_ENDPOINT_URL_KMS").unwrap();
    let sig = tmp("kms-env.sig");
    m.reset();
    with_env(&[
        "sign",
        "--uri",
        "pkcs11:token=unified;object=kms-ec;type=private",
        "-m",
        "ECDSA-SHA256",
        "-i",
        p(&msg),
        "-o",
        p(&sig),
    ]);
    assert!(openssl_verifies_sha256(&pem, &sig, &msg));
    let signs: Vec<(String, u64)> = m
        .clients()
        .into_iter()
        .filter(|(k, _)| k.starts_with("Sign "))
        .collect();
    assert_eq!(signs, vec![("Sign other".to_string(), 1)]);
}

#[test]
fn keygen_in_a_backend_that_does_not_exist() {
    let _g = serial();
    let out = run(&[
        "keygen",
        "--backend",
        "nope",
        "--type",
        "p256",
        "--label",
        "x",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no token has a backend named \"nope\""),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn failing_sign_names_the_ckr_and_the_cause() {
    let _g = serial();
    // A 5-byte "digest" for ECDSA: Vault refuses the input; the CLI names the CKR and the backend's words.
    let msg = tmp("short");
    std::fs::write(&msg, b"12345").unwrap();
    let out = run(&[
        "sign",
        "--uri",
        "pkcs11:token=unified;object=vault-ec;type=private",
        "-m",
        "ECDSA",
        "-i",
        p(&msg),
        "-o",
        p(&tmp("short.sig")),
    ]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    let line = err.trim_end().lines().last().unwrap_or_default();
    let rest = line.strip_prefix("p11bridge: sign: CKR_").expect(&err);
    let (name, sentence) = rest.split_once(": ").expect(&err);
    assert!(
        name.chars().all(|c| c.is_ascii_uppercase() || c == '_'),
        "{err}"
    );
    assert!(sentence.contains(". Cause: "), "{err}");
    assert!(!err.contains("PKCS11 error"), "no spec prose: {err}");
    eprintln!("as shown: {err}");
}

#[test]
fn cert_import_on_an_hsm_key_is_seen_by_a_new_process() {
    let _g = serial();
    let uri = ok(&[
        "keygen",
        "--backend",
        "hsm",
        "--type",
        "p256",
        "--label",
        "cli-cert",
    ]);
    let uri = uri.trim();
    let d = dir("cert");
    let pem = d.join("key.pem");
    ok(&["export", "--uri", uri, "-o", p(&pem)]);
    // A CA issues a certificate for the HSM's public key.
    let (ca, cert) = ca_issued(&d, &pem, "cli-cert");
    // The CA's own certificate is not this key's.
    let out = run(&["cert", "import", "--uri", uri, "--cert", p(&ca)]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("certifies another public key"));
    let cert_uri = ok(&["cert", "import", "--uri", uri, "--cert", p(&cert)]);
    assert_eq!(cert_uri.trim(), uri.replace("type=private", "type=cert"));
    // A new process lists it, on the key's backend with the key's CKA_ID.
    let v: serde_json::Value = serde_json::from_str(&ok(&["list", "--json"])).unwrap();
    let key = v
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["label"] == "cli-cert" && o["class"] == "private")
        .unwrap();
    let c = v
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["label"] == "cli-cert" && o["class"] == "cert" && o["token"] == "unified")
        .expect("the certificate is listed");
    assert_eq!(c["backend"], "hsm");
    assert_eq!(c["type"], "x509");
    assert_eq!(c["id"], key["id"]);
    // And exports it as it was imported.
    let back = d.join("back.pem");
    ok(&[
        "export",
        "--uri",
        c["uri"].as_str().unwrap(),
        "-o",
        p(&back),
    ]);
    assert_eq!(fingerprint(&back), fingerprint(&cert));
}

/// Remote keys' certificates (generated by the backend) export as PEM certifying the exported public key; a
/// certificate a CA issued for a Vault key, imported, is what a new process serves for that key.
#[test]
fn remote_certificates_export_and_import() {
    let _g = serial();
    let d = dir("remote-cert");
    let (pem, cert) = (d.join("pub.pem"), d.join("cert.pem"));
    ok(&[
        "export",
        "--uri",
        "pkcs11:token=unified;object=vault-ec;type=public",
        "-o",
        p(&pem),
    ]);
    ok(&[
        "export",
        "--uri",
        "pkcs11:token=unified;object=vault-ec;type=cert",
        "-o",
        p(&cert),
    ]);
    let from_cert = openssl(&["x509", "-noout", "-pubkey", "-in", p(&cert)], None);
    assert_eq!(text(&from_cert), std::fs::read_to_string(&pem).unwrap());
    // A CA-issued certificate for the Vault key.
    let (_, issued) = ca_issued(&d, &pem, "vault-ec");
    let out = run(&[
        "cert",
        "import",
        "--uri",
        "pkcs11:token=unified;object=vault-ec;type=private",
        "--cert",
        p(&issued),
        "--label",
        "vault-ec-issued",
    ]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "cert import on a Vault key: {err}");
    // A new process serves the imported certificate for the key (a remote key's certificate object carries the
    // key's label).
    let served = d.join("served.pem");
    ok(&[
        "export",
        "--uri",
        "pkcs11:token=unified;object=vault-ec;type=cert",
        "-o",
        p(&served),
    ]);
    assert_eq!(fingerprint(&served), fingerprint(&issued));
}

#[test]
fn the_pin_prompt_on_a_terminal_signs_without_echo() {
    let _g = serial();
    fixture();
    // The command line of without_pin_env(), run through python's pty module.
    let alt = without_pin_env();
    let alt_args: Vec<String> = alt
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let msg = tmp("pty.msg");
    std::fs::write(&msg, b"signed after a PIN prompt").unwrap();
    let sig = tmp("pty.sig");
    // Python's pty module: the child's stdin is a terminal; the PIN is typed only once the prompt shows (typed
    // earlier, the terminal would echo it before the program turns echo off).
    let script = r#"
import os, pty, sys, time
argv = sys.argv[2:]
pin = sys.argv[1].encode()
pid, fd = pty.fork()
if pid == 0:
    os.execv(argv[0], argv)
out = b""
deadline = time.time() + 60
typed = False
while time.time() < deadline:
    try:
        chunk = os.read(fd, 1024)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
    if not typed and b"PIN for token" in out:
        time.sleep(0.2)
        os.write(fd, pin + b"\n")
        typed = True
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(BRIDGE_PIN)
        .arg(bin())
        .args(&alt_args)
        .env("CLI_TEST_USER_PIN", BRIDGE_PIN)
        .args([
            "sign",
            "--uri",
            "pkcs11:token=unified;object=ec-p256;type=private",
            "-m",
            "ECDSA-SHA256",
            "-i",
            p(&msg),
            "-o",
            p(&sig),
        ])
        .env_remove("P11BRIDGE_PIN")
        .output()
        .unwrap();
    let screen = text(&out.stdout);
    assert!(out.status.success(), "{screen}{}", text(&out.stderr));
    assert!(screen.contains("PIN for token \"unified\": "), "{screen}");
    assert!(
        !screen.contains(BRIDGE_PIN),
        "the PIN is not echoed: {screen}"
    );
    let pem = tmp("pty.pem");
    ok(&[
        "export",
        "--uri",
        "pkcs11:token=unified;object=ec-p256;type=public",
        "-o",
        p(&pem),
    ]);
    assert!(openssl_verifies_sha256(&pem, &sig, &msg));
    // list and check never ask: on a terminal without a PIN they finish at once.
    for cmd in ["list", "check"] {
        let out = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg("unused")
            .arg(bin())
            .args(&alt_args)
            .env("CLI_TEST_USER_PIN", BRIDGE_PIN)
            .arg(cmd)
            .env_remove("P11BRIDGE_PIN")
            .output()
            .unwrap();
        assert!(
            !text(&out.stdout).contains("PIN for token"),
            "{cmd}: {}",
            text(&out.stdout)
        );
        assert!(out.status.success(), "{cmd}: {}", text(&out.stdout));
    }
    // --pin-file: one trailing newline ignored.
    let f = tmp("pin-file");
    std::fs::write(&f, format!("{BRIDGE_PIN}\n")).unwrap();
    let out = without_pin_env()
        .arg("--pin-file")
        .arg(&f)
        .args([
            "sign",
            "--uri",
            "pkcs11:token=unified;object=ec-p256;type=private",
            "-m",
            "ECDSA-SHA256",
            "-i",
            p(&msg),
            "-o",
            p(&sig),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn a_closed_pipe_ends_quietly() {
    let _g = serial();
    fixture();
    for pipeline in [
        "\"$0\" --module \"$1\" list | head -1",
        "\"$0\" --module \"$1\" list --tsv | true",
        "\"$0\" --module \"$1\" check | true",
        "\"$0\" --module \"$1\" --help | true",
    ] {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("set -o pipefail; {pipeline}"))
            .arg(bin())
            .arg(bridge_so())
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{pipeline}: {err}"
        );
        assert!(out.status.success(), "{pipeline}: {:?} {err}", out.status);
    }
    let out = Command::new("bash")
        .arg("-c")
        .arg("\"$0\" --module \"$1\" list | head -1")
        .arg(bin())
        .arg(bridge_so())
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout).lines().count(), 1);
}

#[test]
fn module_lookup_names_every_place_tried() {
    let _g = serial();
    fixture();
    // A copy of the program alone in a directory: no module beside it.
    let d = dir("lonely");
    let copy = d.join("p11bridge");
    std::fs::copy(bin(), &copy).unwrap();
    let system = [
        format!(
            "/usr/lib/{}-linux-gnu/pkcs11/libp11bridge.so",
            std::env::consts::ARCH
        ),
        "/usr/local/lib/p11bridge/libp11bridge.so".to_string(),
    ];
    let out = Command::new(&copy)
        .arg("list")
        .env_remove("P11BRIDGE_MODULE")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    if system.iter().any(|p| Path::new(p).exists()) {
        // An installed module (a package on this machine): found there.
        assert!(!err.contains("not found"), "{err}");
        eprintln!(
            "note: a module is installed in a system place; the not-found message was not checked"
        );
    } else {
        assert!(!out.status.success());
        let beside = format!("{}/libp11bridge.so (beside this program)", d.display());
        for place in system.iter().chain([&beside]) {
            assert!(err.contains(place.as_str()), "{place}: {err}");
        }
        assert!(
            err.contains("--module") && err.contains("P11BRIDGE_MODULE"),
            "{err}"
        );
    }
    // Beside the program: found without --module.
    let out = Command::new(bin())
        .args(["list", "--tsv"])
        .env_remove("P11BRIDGE_MODULE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // $P11BRIDGE_MODULE.
    let out = Command::new(&copy)
        .args(["list", "--tsv"])
        .env("P11BRIDGE_MODULE", bridge_so())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn help_describes_every_option() {
    let _g = serial();
    let h = ok(&["--help"]);
    for o in [
        "--module",
        "--config",
        "--pin ",
        "--pin-file",
        "$P11BRIDGE_PIN",
        "Visible",
    ] {
        assert!(h.contains(o), "{o}: {h}");
    }
    let h = ok(&["sign", "--help"]);
    for o in [
        "ECDSA-SHA256",
        "SHA256-RSA-PKCS-PSS",
        "EDDSA",
        "--format",
        "der",
        "raw",
        "-i, --input",
        "-o, --output",
    ] {
        assert!(h.contains(o), "{o}: {h}");
    }
    let h = ok(&["verify", "--help"]);
    assert!(
        h.contains("ECDSA-SHA384") && h.contains("-s, --signature"),
        "{h}"
    );
    let h = ok(&["list", "--help"]);
    for o in [
        "USAGES",
        "s sign",
        "d decrypt",
        "TYPE",
        "ec-p256",
        "--tsv",
        "--json",
    ] {
        assert!(h.contains(o), "{o}: {h}");
    }
    let h = ok(&["install-p11kit", "--help"]);
    assert!(
        h.contains("--path") && h.contains("Where to write it"),
        "{h}"
    );
    // Every option line is followed by a description (clap prints an option bare when it has none).
    for cmd in [
        "check",
        "list",
        "sign",
        "verify",
        "keygen",
        "export",
        "install-p11kit",
    ] {
        let h = ok(&[cmd, "--help"]);
        let lines: Vec<&str> = h.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            // An option starts at column 2 or 6; deeper lines are wrapped descriptions.
            if t.starts_with('-') && matches!(l.len() - t.len(), 2 | 6) {
                let described = t.contains("  ")
                    || lines
                        .get(i + 1)
                        .is_some_and(|n| n.starts_with("          ") && !n.trim().is_empty());
                assert!(described, "{cmd}: undescribed: {l}\n{h}");
            }
        }
    }
    let h = ok(&["cert", "import", "--help"]);
    assert!(h.contains("--cert") && h.contains("--label"), "{h}");
}

/// A throwaway CA (made in `d`) and the certificate it issues for the public key in `public_pem` with subject
/// CN=`cn`: (CA certificate, issued certificate).
fn ca_issued(d: &Path, public_pem: &Path, cn: &str) -> (PathBuf, PathBuf) {
    let (ca, ca_key) = p11bridge_testkit::tls::self_signed_ca(d, "ca");
    let (csr, cert) = (d.join("req.csr"), d.join("issued.pem"));
    assert!(openssl_ok(&[
        "req",
        "-new",
        "-key",
        p(&ca_key),
        "-subj",
        &format!("/CN={cn}"),
        "-out",
        p(&csr),
    ]));
    assert!(openssl_ok(&[
        "x509",
        "-req",
        "-in",
        p(&csr),
        "-CA",
        p(&ca),
        "-CAkey",
        p(&ca_key),
        "-force_pubkey",
        p(public_pem),
        "-days",
        "2",
        "-out",
        p(&cert),
    ]));
    (ca, cert)
}

#[test]
fn install_p11kit_writes_the_packaged_settings() {
    let d = dir("p11kit");
    let f = d.join("p11bridge.module");
    ok(&["install-p11kit", "--path", p(&f)]);
    let t = std::fs::read_to_string(&f).unwrap();
    let module = std::fs::canonicalize(bridge_so()).unwrap();
    assert!(
        t.contains(&format!("module: {}\n", module.display())),
        "{t}"
    );
    assert!(
        t.contains("\ncritical: no\n") && t.contains("\ntrust-policy: no\n"),
        "{t}"
    );
}

/// A certificate file's SHA-256 fingerprint, by openssl.
fn fingerprint(f: &Path) -> Vec<u8> {
    openssl(
        &["x509", "-noout", "-fingerprint", "-sha256", "-in", p(f)],
        None,
    )
}
