//! Never silent (core side): what a person sees when the configuration or an upstream is wrong. Each case runs a
//! real consumer (`pkcs11-tool`) as its own process against a configuration with one thing wrong, and asserts that
//! its stderr carries the bridge's one line naming the backend, the endpoint and what it answered; plus the
//! `C_P11BRIDGE_Check` report read in-process for a good configuration.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Writes `text` as a configuration file of its own.
fn config(name: &str, text: &str) -> PathBuf {
    let p = env().dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

/// `pkcs11-tool --module SO ARGS` with `P11BRIDGE_CONFIG=cfg` (and `vars`), logging off as a user has it.
fn pkcs11_tool(cfg: &Path, vars: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = Command::new("pkcs11-tool");
    c.arg("--module")
        .arg(bridge_so())
        .args(args)
        .env("P11BRIDGE_CONFIG", cfg)
        .env_remove("P11BRIDGE_LOG")
        .env_remove("P11BRIDGE_QUIET");
    for (k, v) in vars {
        c.env(k, v);
    }
    c.output().expect("run pkcs11-tool")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The default configuration with `from` replaced by `to`.
fn good_with(from: &str, to: &str) -> String {
    let t = config_text();
    assert!(t.contains(from), "{from} not in the test configuration");
    t.replace(from, to)
}

#[test]
fn wrong_upstream_pin_is_named_on_the_consumers_stderr() {
    env();
    let cfg = config(
        "wrong-hsm-pin",
        &good_with("pin = \"env:HSM_PIN\"", "pin = \"9999\""),
    );
    let o = pkcs11_tool(
        &cfg,
        &[],
        &[
            "--slot-index",
            "0",
            "--login",
            "--pin",
            BRIDGE_PIN,
            "-O",
            "--type",
            "privkey",
        ],
    );
    let e = stderr(&o);
    assert!(
        e.contains("p11bridge: backend \"hsm\" (pkcs11, /usr/lib/softhsm/libsofthsm2.so, slot ")
            && e.contains("token \"upstream\"): login with the configured credentials failed: CKR_PIN_INCORRECT")
            && e.contains("its private keys are not on token \"unified\""),
        "{e}"
    );
    // One line per distinct cause per process.
    assert_eq!(e.matches("CKR_PIN_INCORRECT").count(), 1, "{e}");
}

#[test]
fn unreadable_pin_reference_is_named() {
    env();
    let cfg = config(
        "unset-pin-var",
        &good_with(
            "user_pin = \"env:P11BRIDGE_PIN\"",
            "user_pin = \"env:P11BRIDGE_TEST_UNSET_PIN\"",
        ),
    );
    let o = pkcs11_tool(
        &cfg,
        &[],
        &["--slot-index", "0", "--login", "--pin", BRIDGE_PIN, "-O"],
    );
    let e = stderr(&o);
    assert!(!o.status.success());
    assert!(
        e.contains("p11bridge: token \"unified\": user_pin = \"env:P11BRIDGE_TEST_UNSET_PIN\" cannot be read: environment variable P11BRIDGE_TEST_UNSET_PIN is not set; nobody can log in to this token"),
        "{e}"
    );
    // pkcs11-tool names the code: not "general error" any more.
    assert!(e.contains("CKR_FUNCTION_FAILED"), "{e}");
}

#[test]
fn backend_section_typo_names_file_line_and_key() {
    env();
    let text = format!(
        "{}\n[backend.vault]\nkind = \"vault-transit\"\nadress = \"http://127.0.0.1:1\"\n",
        good_with("backends = [\"hsm\"]", "backends = [\"hsm\", \"vault\"]")
    );
    let line = text.lines().position(|l| l.starts_with("adress")).unwrap() + 1;
    let cfg = config("typo", &text);
    let o = pkcs11_tool(&cfg, &[], &["-L"]);
    let e = stderr(&o);
    assert!(
        e.contains(&format!(
            "p11bridge: C_Initialize failed: {}:{line}: backend.vault: unknown field `adress`",
            cfg.display()
        )),
        "{e}"
    );
}

#[test]
fn undefined_backend_and_empty_pin_name_their_line() {
    env();
    let text = good_with("backends = [\"hsm\"]", "backends = [\"hsm\", \"nowhere\"]");
    let line = text
        .lines()
        .position(|l| l.starts_with("backends"))
        .unwrap()
        + 1;
    let cfg = config("undefined-backend", &text);
    let e = stderr(&pkcs11_tool(&cfg, &[], &["-L"]));
    assert!(
        e.contains(&format!(
            "{}:{line}: slot[0].backends: no [backend.nowhere] section",
            cfg.display()
        )),
        "{e}"
    );
    let text = good_with("user_pin = \"env:P11BRIDGE_PIN\"", "user_pin = \"\"");
    let line = text
        .lines()
        .position(|l| l.starts_with("user_pin"))
        .unwrap()
        + 1;
    let cfg = config("empty-pin", &text);
    let e = stderr(&pkcs11_tool(&cfg, &[], &["-L"]));
    assert!(
        e.contains(&format!(
            "{}:{line}: slot[0].user_pin: empty",
            cfg.display()
        )),
        "{e}"
    );
}

#[test]
fn notices_can_be_silenced() {
    env();
    let text = good_with("pin = \"env:HSM_PIN\"", "pin = \"9999\"");
    let args = ["--slot-index", "0", "--login", "--pin", BRIDGE_PIN, "-O"];
    let cfg = config("quiet-env", &text);
    let e = stderr(&pkcs11_tool(&cfg, &[("P11BRIDGE_QUIET", "1")], &args));
    assert!(!e.contains("p11bridge:"), "{e}");
    let cfg = config("quiet-config", &format!("notices = false\n{text}"));
    let e = stderr(&pkcs11_tool(&cfg, &[], &args));
    assert!(!e.contains("p11bridge:"), "{e}");
}

type CheckFn = unsafe extern "C" fn(*mut u8, *mut cryptoki_sys::CK_ULONG) -> cryptoki_sys::CK_RV;

#[test]
fn check_report_of_a_good_configuration() {
    let _p = p11();
    // SAFETY: the module is loaded and initialized by p11(); a second dlopen returns the same handle.
    let lib = unsafe { libloading::Library::new(bridge_so()) }.unwrap();
    let check: libloading::Symbol<CheckFn> = unsafe { lib.get(b"C_P11BRIDGE_Check\0") }.unwrap();
    let mut n: cryptoki_sys::CK_ULONG = 0;
    assert_eq!(
        unsafe { check(std::ptr::null_mut(), &mut n) },
        cryptoki_sys::CKR_OK
    );
    let mut small = vec![0u8; 4];
    let mut four: cryptoki_sys::CK_ULONG = 4;
    assert_eq!(
        unsafe { check(small.as_mut_ptr(), &mut four) },
        cryptoki_sys::CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(four, n);
    let mut buf = vec![0u8; n as usize];
    assert_eq!(
        unsafe { check(buf.as_mut_ptr(), &mut n) },
        cryptoki_sys::CKR_OK
    );
    let v: serde_json::Value = serde_json::from_slice(&buf[..n as usize]).unwrap();
    assert_eq!(v["ok"], true, "{v:#}");
    let unified = &v["slots"][0];
    assert_eq!(unified["kind"], "unified");
    assert_eq!(unified["token"], "unified");
    assert_eq!(unified["user_pin"]["reference"], "env:P11BRIDGE_PIN");
    assert!(unified["user_pin"]["problem"].is_null());
    let hsm = &unified["backends"][0];
    assert_eq!(hsm["name"], "hsm");
    assert_eq!(hsm["kind"], "pkcs11");
    assert_eq!(hsm["login"], "ok");
    assert_eq!(hsm["private_keys"], 3, "{hsm:#}");
    assert!(hsm["endpoint"].as_str().unwrap().contains("libsofthsm2.so"));
    assert_eq!(v["slots"][1]["kind"], "mirror");
}
