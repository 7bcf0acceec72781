//! The AWS KMS backend under counted requests and injected faults, in a process of its own (tests here take one
//! lock so that each sees only its own requests): enumeration, attribute reads and length queries make no KMS
//! request; throttling and 5xx are retried for idempotent calls only; KMS slow or frozen → `CKR_DEVICE_ERROR`
//! within the deadline while SoftHSM keys keep working, and recovery afterwards.

mod common;

use common::moto::moto;
use common::*;
use cryptoki::context::Pkcs11;
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use parking_lot_free::Serial;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A plain std mutex that survives a failed test (poisoning ignored).
mod parking_lot_free {
    use std::sync::{Mutex, MutexGuard};
    pub struct Serial(Mutex<()>);
    impl Serial {
        pub const fn new() -> Self {
            Serial(Mutex::new(()))
        }
        pub fn lock(&self) -> MutexGuard<'_, ()> {
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }
    }
}

static SERIAL: Serial = Serial::new();

use p11bridge_vendor::CKA_P11BRIDGE_BACKEND;
/// The per-call deadline configured below.
const TIMEOUT_MS: u64 = 2000;

fn rv(e: Error) -> RvError {
    match e {
        Error::Pkcs11(rv, _) => rv,
        other => panic!("not a PKCS#11 error: {other}"),
    }
}

fn p() -> &'static Pkcs11 {
    static S: OnceLock<()> = OnceLock::new();
    S.get_or_init(|| {
        let m = moto();
        let on = [("p11bridge", "on")];
        m.create_key("f-ec256", "ECC_NIST_P256", "SIGN_VERIFY", &on);
        m.create_key("f-rsa", "RSA_2048", "SIGN_VERIFY", &on);
        m.create_key("f-hmac", "HMAC_256", "GENERATE_VERIFY_MAC", &on);
        let dir = repo_root()
            .join("target/test-env")
            .join(format!("kms-faults-{}", std::process::id()));
        let section = format!(
            r#"
[backend.kms]
kind = "aws-kms"
region = "us-east-1"
endpoint = "{}"
discover = true
tags = {{ p11bridge = "on" }}
cert_cache_dir = "{}"
timeout_ms = {TIMEOUT_MS}
connect_timeout_ms = 1000
max_attempts = 3
"#,
            m.url,
            dir.join("certs").display()
        );
        env_with(&["kms"], &section);
    });
    p11()
}

fn kms_key(s: &Session, label: &str, class: ObjectClass) -> ObjectHandle {
    let v = s
        .find_objects(&[
            Attribute::Label(label.into()),
            Attribute::Class(class),
            Attribute::VendorDefined((
                AttributeType::VendorDefined(CKA_P11BRIDGE_BACKEND),
                b"kms".to_vec(),
            )),
        ])
        .unwrap();
    assert_eq!(v.len(), 1, "{label} {class:?}");
    v[0]
}

#[test]
fn searches_attributes_and_length_queries_make_no_request() {
    let _g = SERIAL.lock();
    let p = p();
    let s = user_session(p);
    // The first enumeration reads KMS (and signs the generated certificates).
    let key = kms_key(&s, "f-ec256", ObjectClass::PRIVATE_KEY);
    let public = kms_key(&s, "f-ec256", ObjectClass::PUBLIC_KEY);
    let hmac = kms_key(&s, "f-hmac", ObjectClass::SECRET_KEY);
    let m = moto();
    m.reset();
    for _ in 0..20 {
        let _ = s.find_objects(&[]).unwrap();
        let _ = s
            .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
            .unwrap();
        let _ = s
            .get_attributes(
                key,
                &[
                    AttributeType::Label,
                    AttributeType::Id,
                    AttributeType::EcPoint,
                    AttributeType::EcParams,
                ],
            )
            .unwrap();
        let _ = s.get_attributes(public, &[AttributeType::EcPoint]).unwrap();
    }
    let s2 = user_session(p);
    let _ = s2.find_objects(&[]).unwrap();
    assert_eq!(m.stats(), vec![], "searches and attribute reads");
    // The cryptoki crate's sign() asks for the length first (NULL buffer), then signs: one Sign.
    let sig = s.sign(&Mechanism::Ecdsa, key, &[7u8; 32]).unwrap();
    assert_eq!(m.stats(), vec![("Sign".to_string(), 1)]);
    // From the application's thread, Sign is written by the bridge on that thread (kms/lean.rs), not by the SDK.
    assert_eq!(m.clients(), vec![("Sign other".to_string(), 1)]);
    // Verification is local.
    s.verify(&Mechanism::Ecdsa, public, &[7u8; 32], &sig)
        .unwrap();
    assert_eq!(m.stats(), vec![("Sign".to_string(), 1)]);
    // A MAC: length query + GenerateMac; verification through VerifyMac.
    let mac = s.sign(&Mechanism::Sha256Hmac, hmac, b"m").unwrap();
    s.verify(&Mechanism::Sha256Hmac, hmac, b"m", &mac).unwrap();
    assert_eq!(m.count("GenerateMac"), 1);
    assert_eq!(m.count("VerifyMac"), 1);
    assert_eq!(m.total(), 3);
}

#[test]
fn throttling_and_5xx_are_retried_for_idempotent_calls() {
    let _g = SERIAL.lock();
    let s = user_session(p());
    let key = kms_key(&s, "f-rsa", ObjectClass::PRIVATE_KEY);
    let m = moto();
    m.reset();
    m.fault("Sign", "throttle", 2, 0);
    let sig = s.sign(&Mechanism::Sha256RsaPkcs, key, b"retried").unwrap();
    assert_eq!(sig.len(), 256);
    assert_eq!(
        m.count("Sign"),
        3,
        "two throttled attempts and the one that served"
    );
    // Retried by the caller-thread path itself (the SDK's policy, kms/lean.rs), not by falling back to the SDK.
    assert_eq!(m.clients(), vec![("Sign other".to_string(), 3)]);
    m.reset();
    m.fault("Sign", "500", 1, 0);
    s.sign(&Mechanism::Sha256RsaPkcs, key, b"retried").unwrap();
    assert_eq!(m.count("Sign"), 2);
    // More throttling than attempts (3): the call fails with CKR_DEVICE_ERROR after 3 requests.
    m.reset();
    m.fault("Sign", "throttle", 5, 0);
    assert_eq!(
        rv(s.sign(&Mechanism::Sha256RsaPkcs, key, b"x").unwrap_err()),
        RvError::DeviceError
    );
    assert_eq!(m.count("Sign"), 3);
    m.reset();
    // The operation ended with the error: a new one starts cleanly.
    s.sign(&Mechanism::Sha256RsaPkcs, key, b"after").unwrap();
}

#[test]
fn creating_keys_is_never_retried() {
    let _g = SERIAL.lock();
    let s = user_session(p());
    let m = moto();
    m.reset();
    m.fault("CreateKey", "throttle", 1, 0);
    let e = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::ValueLen(32.into()),
                Attribute::Label(b"f-never".to_vec()),
                Attribute::VendorDefined((
                    AttributeType::VendorDefined(CKA_P11BRIDGE_BACKEND),
                    b"kms".to_vec(),
                )),
            ],
        )
        .unwrap_err();
    assert_eq!(rv(e), RvError::DeviceError);
    assert_eq!(m.count("CreateKey"), 1);
    assert_eq!(m.count("CreateAlias"), 0);
    m.reset();
}

#[test]
fn kms_slow_or_frozen_is_a_device_error_within_the_deadline() {
    let _g = SERIAL.lock();
    let s = user_session(p());
    let key = kms_key(&s, "f-ec256", ObjectClass::PRIVATE_KEY);
    let m = moto();
    m.reset();
    let limit = Duration::from_millis(TIMEOUT_MS + 1500);

    // Slower than the deadline.
    m.fault("Sign", "delay", 1, TIMEOUT_MS + 3000);
    let t = Instant::now();
    let e = s.sign(&Mechanism::Ecdsa, key, &[1u8; 32]).unwrap_err();
    assert_eq!(rv(e), RvError::DeviceError);
    assert!(t.elapsed() < limit, "{:?}", t.elapsed());
    hsm_sign(&s);
    s.sign(&Mechanism::Ecdsa, key, &[1u8; 32]).unwrap();

    // Frozen: requests hang.
    m.freeze();
    let t = Instant::now();
    let e = s.sign(&Mechanism::Ecdsa, key, &[2u8; 32]).unwrap_err();
    let took = t.elapsed();
    // SoftHSM keys keep working meanwhile, and cached objects are still found.
    hsm_sign(&s);
    let _ = kms_key(&s, "f-ec256", ObjectClass::PUBLIC_KEY);
    m.thaw();
    assert_eq!(rv(e), RvError::DeviceError);
    assert!(took < limit, "{took:?}");
    // Back: it works again.
    let t = Instant::now();
    loop {
        match s.sign(&Mechanism::Ecdsa, key, &[3u8; 32]) {
            Ok(sig) => {
                assert_eq!(sig.len(), 64);
                break;
            }
            Err(e) => {
                assert!(t.elapsed() < Duration::from_secs(20), "no recovery: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    m.reset();
}
