//! The Vault backend when things go wrong: a dead cluster node (failover to the next address), a frozen server
//! (every call returns CKR_DEVICE_ERROR within the configured deadline, SoftHSM keys keep working meanwhile, and it
//! recovers), and AppRole logins whose tokens expire quickly (renewal and re-login, with no failed call).

mod common;

use common::bao::{bao, free_port, ROOT_TOKEN};
use common::*;
use cryptoki::context::Pkcs11;
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use p11bridge_vendor::CKA_P11BRIDGE_BACKEND;
const DEADLINE_MS: u64 = 1500;

/// The tests here freeze the server: they take turns.
static SERIAL: Mutex<()> = Mutex::new(());

fn setup() -> &'static Pkcs11 {
    static S: OnceLock<()> = OnceLock::new();
    S.get_or_init(|| {
        let b = bao();
        b.ok(&["secrets", "enable", "transit"]);
        b.ok(&["write", "-f", "transit/keys/r-ec", "type=ecdsa-p256"]);
        b.ok(&["write", "-f", "transit/keys/a-ec", "type=ecdsa-p256"]);
        b.ok(&["write", "-f", "transit/keys/rot-ec", "type=ecdsa-p256"]);
        // AppRole with tokens that live 3 s and may be renewed up to 5 s: long enough tests see both a renewal
        // and a fresh login.
        b.ok(&["auth", "enable", "approle"]);
        let policy =
            "path \"transit/*\" { capabilities = [\"create\", \"read\", \"update\", \"list\"] }";
        let pf = repo_root()
            .join("target/test-env")
            .join(format!("approle-{}.hcl", std::process::id()));
        std::fs::create_dir_all(pf.parent().unwrap()).unwrap();
        std::fs::write(&pf, policy).unwrap();
        b.ok(&["policy", "write", "transit-user", pf.to_str().unwrap()]);
        b.ok(&[
            "write",
            "auth/approle/role/p11",
            "token_policies=transit-user",
            "token_ttl=3s",
            "token_max_ttl=5s",
        ]);
        let role_id = b.ok(&["read", "-field=role_id", "auth/approle/role/p11/role-id"]);
        let secret_id = b.ok(&[
            "write",
            "-f",
            "-field=secret_id",
            "auth/approle/role/p11/secret-id",
        ]);
        std::env::set_var("VAULT_TEST_TOKEN", ROOT_TOKEN);
        std::env::set_var("VAULT_TEST_SECRET_ID", secret_id.trim());
        let dead = format!("http://127.0.0.1:{}", free_port());
        let section = format!(
            r#"
[backend.vault]
kind = "vault-transit"
addresses = ["{dead}", "{addr}"]
token = "env:VAULT_TEST_TOKEN"
keys = ["r-ec"]
timeout_ms = {DEADLINE_MS}
connect_timeout_ms = 500

[backend.approle]
kind = "vault-transit"
address = "{addr}"
role_id = "{role_id}"
secret_id = "env:VAULT_TEST_SECRET_ID"
keys = ["a-ec"]
timeout_ms = 3000

[backend.rot]
kind = "vault-transit"
address = "{addr}"
token = "env:VAULT_TEST_TOKEN"
keys = ["rot-ec"]
cache_ttl_s = 1
"#,
            addr = b.addr,
            role_id = role_id.trim(),
        );
        env_with(&["vault", "approle", "rot"], &section);
    });
    p11()
}

fn rv(e: Error) -> RvError {
    match e {
        Error::Pkcs11(rv, _) => rv,
        other => panic!("not a PKCS#11 error: {other}"),
    }
}

fn key(s: &Session, backend: &str, label: &str, class: ObjectClass) -> ObjectHandle {
    let v = s
        .find_objects(&[
            Attribute::Label(label.into()),
            Attribute::Class(class),
            Attribute::VendorDefined((
                AttributeType::VendorDefined(CKA_P11BRIDGE_BACKEND),
                backend.as_bytes().to_vec(),
            )),
        ])
        .unwrap();
    assert_eq!(v.len(), 1, "{backend} {label}");
    v[0]
}

#[test]
fn a_dead_node_fails_over_to_the_next() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = user_session(setup());
    let k = key(&s, "vault", "r-ec", ObjectClass::PRIVATE_KEY);
    let public = key(&s, "vault", "r-ec", ObjectClass::PUBLIC_KEY);
    for i in 0..5u8 {
        let h = [i; 32];
        let sig = s.sign(&Mechanism::Ecdsa, k, &h).unwrap();
        s.verify(&Mechanism::Ecdsa, public, &h, &sig).unwrap();
    }
}

#[test]
fn a_frozen_vault_fails_within_the_deadline_and_nothing_else_suffers() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let p = setup();
    let s = user_session(p);
    let k = key(&s, "vault", "r-ec", ObjectClass::PRIVATE_KEY);
    s.sign(&Mechanism::Ecdsa, k, &[1u8; 32]).unwrap();
    bao().freeze();
    // Thawed whatever happens below: a failed assertion must not leave the server frozen for the other tests.
    struct Thaw;
    impl Drop for Thaw {
        fn drop(&mut self) {
            bao().thaw();
        }
    }
    let thaw = Thaw;
    // While one thread waits on the frozen Vault, another signs with the HSM's key on its own session.
    let hsm = std::thread::spawn(|| {
        let s2 = user_session(p11());
        let hk = find_one(&s2, "ec-p256", ObjectClass::PRIVATE_KEY);
        let t = Instant::now();
        for _ in 0..20 {
            s2.sign(&Mechanism::Ecdsa, hk, &[2u8; 32]).unwrap();
        }
        t.elapsed()
    });
    let t = Instant::now();
    let e = s.sign(&Mechanism::Ecdsa, k, &[3u8; 32]).unwrap_err();
    let waited = t.elapsed();
    let hsm_time = hsm.join().unwrap();
    // Searches and attributes are served from the cache while Vault is down.
    let found = s
        .find_objects(&[Attribute::Label(b"r-ec".to_vec())])
        .unwrap();
    drop(thaw);
    assert_eq!(rv(e), RvError::DeviceError);
    // The deadline, plus the runtime's one-second safety margin at most.
    assert!(
        waited < Duration::from_millis(DEADLINE_MS + 1500),
        "waited {waited:?}"
    );
    assert!(
        waited >= Duration::from_millis(DEADLINE_MS / 2),
        "failed too early: {waited:?}"
    );
    assert!(
        hsm_time < waited,
        "HSM signing waited for Vault: {hsm_time:?}"
    );
    assert!(found.len() >= 2);
    // Recovery.
    let t = Instant::now();
    loop {
        match s.sign(&Mechanism::Ecdsa, k, &[4u8; 32]) {
            Ok(_) => break,
            Err(_) if t.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => panic!("no recovery: {e}"),
        }
    }
}

#[test]
fn approle_tokens_are_renewed_and_replaced() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = user_session(setup());
    let k = key(&s, "approle", "a-ec", ObjectClass::PRIVATE_KEY);
    let public = key(&s, "approle", "a-ec", ObjectClass::PUBLIC_KEY);
    // 8 s of signing: the 3 s token is renewed at 2 s, and past its 5 s maximum a new login replaces it.
    let t = Instant::now();
    let mut n = 0;
    while t.elapsed() < Duration::from_secs(8) {
        let h = [n as u8; 32];
        let sig = s
            .sign(&Mechanism::Ecdsa, k, &h)
            .unwrap_or_else(|e| panic!("sign #{n} at {:?}: {e}", t.elapsed()));
        s.verify(&Mechanism::Ecdsa, public, &h, &sig).unwrap();
        n += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    let logins = std::fs::read_to_string(&bao().audit)
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"type\":\"request\"") && l.contains("auth/approle/login"))
        .count();
    assert!(
        logins >= 2,
        "expected a re-login after the token's max TTL, saw {logins} logins"
    );
}

#[test]
fn rotation_moves_the_public_key_object_and_signatures_together() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    use p11bridge_vendor::CKA_P11BRIDGE_KEY_VERSION;
    let s = user_session(setup());
    let k = key(&s, "rot", "rot-ec", ObjectClass::PRIVATE_KEY);
    let public = key(&s, "rot", "rot-ec", ObjectClass::PUBLIC_KEY);
    let version = |h| match s
        .get_attributes(
            h,
            &[AttributeType::VendorDefined(CKA_P11BRIDGE_KEY_VERSION)],
        )
        .unwrap()
        .pop()
    {
        Some(Attribute::VendorDefined((_, v))) => u64::from_ne_bytes(v.try_into().unwrap()),
        other => panic!("{other:?}"),
    };
    assert_eq!(version(k), 1);
    let spki1 = spki(&s, public);
    bao().ok(&["write", "-f", "transit/keys/rot-ec/rotate"]);
    // Until the refresh, signatures are made with the version the token shows, so they verify with its key.
    let h = sha256(b"before refresh");
    let sig = s.sign(&Mechanism::Ecdsa, k, &h).unwrap();
    assert!(openssl_verify(
        &spki1,
        Some("sha256"),
        &[],
        b"before refresh",
        &der::ecdsa_der(&sig)
    ));
    // After the TTL, a search starts a refresh in the background; the same handles then show version 2.
    let t = Instant::now();
    while version(k) != 2 {
        assert!(t.elapsed() < Duration::from_secs(10), "no refresh");
        std::thread::sleep(Duration::from_millis(300));
        let _ = s
            .find_objects(&[Attribute::Label(b"rot-ec".to_vec())])
            .unwrap();
    }
    let spki2 = spki(&s, public);
    assert_ne!(spki1, spki2, "the public-key object follows the rotation");
    let sig = s.sign(&Mechanism::Ecdsa, k, &sha256(b"after")).unwrap();
    assert!(openssl_verify(
        &spki2,
        Some("sha256"),
        &[],
        b"after",
        &der::ecdsa_der(&sig)
    ));
    assert!(!openssl_verify(
        &spki1,
        Some("sha256"),
        &[],
        b"after",
        &der::ecdsa_der(&sig)
    ));
}
