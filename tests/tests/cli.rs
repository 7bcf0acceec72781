//! The `p11bridge` command line, run as a program against the built module: check, list (table and JSON with
//! RFC 7512 URIs), sign and verify by URI (the signature also verified by openssl), and a bad configuration.

mod common;

use common::*;
use std::process::Command;

fn cli() -> Command {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("p11bridge");
    assert!(
        bin.exists(),
        "{} missing: cargo build --release -p p11bridge-cli",
        bin.display()
    );
    let mut c = Command::new(bin);
    c.arg("--module").arg(bridge_so());
    c
}

#[test]
fn check_list_sign_verify() {
    let e = env();
    let out = cli().args(["--pin", BRIDGE_PIN, "check"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("backend hsm (pkcs11): reachable, 7 objects (3 private keys)"),
        "{text}"
    );

    let out = cli()
        .args(["--pin", BRIDGE_PIN, "list", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = v
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["label"] == "ec-p256" && o["class"] == "private" && o["token"] == "unified")
        .expect("ec-p256 listed");
    assert_eq!(
        key["uri"],
        "pkcs11:token=unified;object=ec-p256;id=%02;type=private"
    );
    assert_eq!(key["backend"], "hsm");

    let msg = e.dir.join("cli-msg");
    let sig = e.dir.join("cli-sig");
    // SoftHSM 2.6.1 has no CKM_ECDSA_SHA256: sign the digest with CKM_ECDSA.
    std::fs::write(&msg, sha256(b"signed from the command line")).unwrap();
    let uri = key["uri"].as_str().unwrap();
    let st = cli()
        .args([
            "--pin", BRIDGE_PIN, "sign", "--uri", uri, "-m", "ECDSA", "-i",
        ])
        .arg(&msg)
        .arg("-o")
        .arg(&sig)
        .status()
        .unwrap();
    assert!(st.success());
    let st = cli()
        .args([
            "verify",
            "--uri",
            "pkcs11:token=unified;object=ec-p256;type=public",
            "-m",
            "ECDSA",
            "-i",
        ])
        .arg(&msg)
        .arg("-s")
        .arg(&sig)
        .status()
        .unwrap();
    assert!(st.success());
    // Independently: openssl with the public key read through the cryptoki crate.
    let p = p11();
    let s = user_session(p);
    let public = find_one(&s, "ec-p256", cryptoki::object::ObjectClass::PUBLIC_KEY);
    let raw = std::fs::read(&sig).unwrap();
    assert!(openssl_verify(
        &spki(&s, public),
        Some("sha256"),
        &[],
        b"signed from the command line",
        &der::ecdsa_der(&raw)
    ));

    // A broken configuration: one clear line and a non-zero exit.
    let bad = e.dir.join("bad.toml");
    std::fs::write(&bad, "[[slot]]\nlabel = \"x\"\nnonsense = 1\n").unwrap();
    let out = cli()
        .arg("--config")
        .arg(&bad)
        .arg("check")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:3") && err.contains("nonsense"),
        "{err}"
    );
}
