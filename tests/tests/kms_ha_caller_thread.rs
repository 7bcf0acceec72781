//! KMS failover in a process that initialized the bridge with `CKF_LIBRARY_CANT_CREATE_OS_THREADS`: no background
//! prober exists, so once the primary's breaker cooldown has passed a caller's own call is the probe (and finds the
//! primary back). Two moto servers as two regions with the same multi-Region key; signatures verified by openssl.

mod common;

use common::moto::{spawn, two_regions_with_mrk};
use common::*;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use std::time::{Duration, Instant};

use p11bridge_vendor::CKA_P11BRIDGE_BACKEND;

fn kms_key(s: &Session, class: ObjectClass) -> ObjectHandle {
    let v = s
        .find_objects(&[
            Attribute::Label("ha-ct".into()),
            Attribute::Class(class),
            Attribute::VendorDefined((
                AttributeType::VendorDefined(CKA_P11BRIDGE_BACKEND),
                b"kms".to_vec(),
            )),
        ])
        .unwrap();
    assert_eq!(v.len(), 1, "{class:?}");
    v[0]
}

fn sign_n(s: &Session, key: ObjectHandle, spki: &[u8], tag: &str, n: usize) {
    for i in 0..n {
        let msg = format!("{tag} {i}").into_bytes();
        let sig = s
            .sign(&Mechanism::EcdsaSha256, key, &msg)
            .unwrap_or_else(|e| panic!("{tag} {i}: {e}"));
        assert!(
            openssl_verify(spki, Some("sha256"), &[], &msg, &der::ecdsa_der(&sig)),
            "{tag} {i}"
        );
    }
}

#[test]
fn callers_probe_when_the_bridge_may_not_create_threads() {
    let (a, b, _key_id, exported) = two_regions_with_mrk("alias/ha-ct");
    let dir = repo_root()
        .join("target/test-env")
        .join(format!("kms-ha-ct-{}", std::process::id()));
    let section = format!(
        r#"
[backend.kms]
kind = "aws-kms"
regions = ["us-east-1", "us-west-2"]
endpoints = {{ "us-east-1" = "{}", "us-west-2" = "{}" }}
keys = ["alias/ha-ct"]
cert_cache_dir = "{}"
timeout_ms = 4000
connect_timeout_ms = 1000
max_attempts = 2
breaker_failures = 1
breaker_cooldown_ms = 300
"#,
        a.url,
        b.url,
        dir.join("certs").display()
    );
    env_with(&["kms"], &section);
    let p = Pkcs11::new(bridge_so()).unwrap();
    p.initialize(CInitializeArgs::new(
        CInitializeFlags::OS_LOCKING_OK | CInitializeFlags::LIBRARY_CANT_CREATE_OS_THREADS,
    ))
    .unwrap();
    let s = user_session(&p);
    let key = kms_key(&s, ObjectClass::PRIVATE_KEY);
    let spki = spki(&s, kms_key(&s, ObjectClass::PUBLIC_KEY));

    a.reset();
    b.reset();
    sign_n(&s, key, &spki, "both up", 10);
    assert_eq!(b.count("Sign"), 0);

    a.kill();
    let t = Instant::now();
    sign_n(&s, key, &spki, "primary dead", 20);
    println!(
        "KMS (caller-thread mode) 20 signatures with the primary dead: {} ms",
        t.elapsed().as_millis()
    );
    assert!(b.count("Sign") >= 20, "the second region signed");

    let a = spawn(a.port(), "us-east-1");
    a.import_key(&exported);
    std::thread::sleep(Duration::from_millis(400));
    let t = Instant::now();
    while a.count("Sign") == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no caller probed the primary"
        );
        sign_n(&s, key, &spki, "primary back", 1);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(a.count("ListKeys"), 0, "no background prober in this mode");
    let b_signs = b.count("Sign");
    sign_n(&s, key, &spki, "on the primary", 10);
    assert_eq!(b.count("Sign"), b_signs, "back on the primary");
    drop(s);
    drop(p);
}
