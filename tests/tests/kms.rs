//! The AWS KMS backend against moto with the fidelity layer: every mechanism on RSA_2048 (sign and decrypt keys),
//! ECC_NIST_P256/P384/P521, ECC_SECG_P256K1, HMAC_256 and SYMMETRIC_DEFAULT through the `cryptoki` crate,
//! signatures verified by openssl; key selection (tags, disabled and pending-deletion keys, explicit aliases, no
//! filter);
//! certificates; key generation and deletion through PKCS#11; random bytes from KMS. Request counts and faults are
//! in `kms_faults.rs` (a process of their own, so that nothing else runs meanwhile).

mod common;

use common::moto::moto;
use common::*;
use cryptoki::context::Pkcs11;
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource, PkcsPssParams};
use cryptoki::mechanism::vendor_defined::VendorDefinedMechanism;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use std::sync::OnceLock;

use p11bridge_vendor::CKA_P11BRIDGE_BACKEND;
use p11bridge_vendor::CKM_P11BRIDGE_KMS_ENCRYPT;

fn rv(e: Error) -> RvError {
    match e {
        Error::Pkcs11(rv, _) => rv,
        other => panic!("not a PKCS#11 error: {other}"),
    }
}

struct Setup {
    /// Key id of k-ec256 (for CKA_ID).
    ec256_id: String,
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let m = moto();
        let on = [("p11bridge", "on")];
        for (alias, spec, usage) in [
            ("k-rsa", "RSA_2048", "SIGN_VERIFY"),
            ("k-rsa-enc", "RSA_2048", "ENCRYPT_DECRYPT"),
            ("k-ec384", "ECC_NIST_P384", "SIGN_VERIFY"),
            ("k-ec521", "ECC_NIST_P521", "SIGN_VERIFY"),
            ("k-k1", "ECC_SECG_P256K1", "SIGN_VERIFY"),
            ("k-hmac", "HMAC_256", "GENERATE_VERIFY_MAC"),
            ("k-aes", "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"),
        ] {
            m.create_key(alias, spec, usage, &on);
        }
        let hmac_arn = m
            .boto("print(kms.describe_key(KeyId='alias/k-hmac')['KeyMetadata']['Arn'])")
            .trim()
            .to_string();
        let ec256_id = m.create_key("k-ec256", "ECC_NIST_P256", "SIGN_VERIFY", &on);
        // Not exposed: no tag; disabled; pending deletion.
        m.create_key("k-untagged", "ECC_NIST_P256", "SIGN_VERIFY", &[]);
        let d = m.create_key("k-disabled", "ECC_NIST_P256", "SIGN_VERIFY", &on);
        m.boto(&format!("kms.disable_key(KeyId='{d}')"));
        let p = m.create_key("k-pending", "ECC_NIST_P256", "SIGN_VERIFY", &on);
        m.boto(&format!(
            "kms.schedule_key_deletion(KeyId='{p}', PendingWindowInDays=7)"
        ));
        // A key in another account (111111111111), reached through role_arn: moto maps the credentials of an
        // assumed role to the role's account.
        m.boto(
            "c = boto3.client('sts', endpoint_url=kms.meta.endpoint_url, region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing').assume_role(RoleArn='arn:aws:iam::111111111111:role/p11bridge', RoleSessionName='setup')['Credentials']\n\
other = boto3.client('kms', endpoint_url=kms.meta.endpoint_url, region_name='us-east-1', aws_access_key_id=c['AccessKeyId'], aws_secret_access_key=c['SecretAccessKey'], aws_session_token=c['SessionToken'])\n\
k = other.create_key(KeySpec='ECC_NIST_P256', KeyUsage='SIGN_VERIFY')['KeyMetadata']['KeyId']\n\
other.create_alias(AliasName='alias/k-role', TargetKeyId=k)",
        );
        std::env::set_var("AWS_ENDPOINT_URL_STS", &m.url);
        let dir = repo_root()
            .join("target/test-env")
            .join(format!("kms-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let section = format!(
            r#"
[backend.kms]
kind = "aws-kms"
region = "us-east-1"
endpoint = "{url}"
discover = true
tags = {{ p11bridge = "on" }}
cert_cache_dir = "{certs}"
allow_destroy = true
random = "kms"
timeout_ms = 5000

# The same KMS, keys named explicitly (an alias, a key id, an ARN).
[backend.kmslist]
kind = "aws-kms"
region = "us-east-1"
endpoint = "{url}"
keys = ["alias/k-untagged", "{ec256_id}", "{hmac_arn}"]
cert_cache_dir = "{certs}"

# Every key of the account, no tag filter: GetPublicKey first, DescribeKey where it fails (disabled, pending
# deletion, symmetric and HMAC keys).
[backend.kmsall]
kind = "aws-kms"
region = "us-east-1"
endpoint = "{url}"
discover = true
cert_cache_dir = "{certs}"

# Through an assumed role (STS AssumeRole at moto: AWS_ENDPOINT_URL_STS).
[backend.kmsrole]
kind = "aws-kms"
region = "us-east-1"
endpoint = "{url}"
role_arn = "arn:aws:iam::111111111111:role/p11bridge"
discover = true
cert_cache_dir = "{certs}"

# A token with KMS alone, whose random numbers come from KMS.
[[slot]]
label = "kms-only"
user_pin = "env:P11BRIDGE_PIN"
backends = ["kms"]
"#,
            url = m.url,
            certs = dir.join("certs").display(),
        );
        env_with(&["kms", "kmslist", "kmsall", "kmsrole"], &section);
        Setup { ec256_id }
    })
}

fn p() -> &'static Pkcs11 {
    setup();
    p11()
}

fn backend_attr(b: &str) -> Attribute {
    Attribute::VendorDefined((
        AttributeType::VendorDefined(CKA_P11BRIDGE_BACKEND),
        b.as_bytes().to_vec(),
    ))
}

fn kms_key(s: &Session, label: &str, class: ObjectClass) -> ObjectHandle {
    let v = s
        .find_objects(&[
            Attribute::Label(label.into()),
            Attribute::Class(class),
            backend_attr("kms"),
        ])
        .unwrap();
    assert_eq!(v.len(), 1, "{label} {class:?}");
    v[0]
}

fn count(s: &Session, t: &[Attribute]) -> usize {
    s.find_objects(t).unwrap().len()
}

#[test]
fn kms_keys_are_objects_next_to_the_hsms() {
    let p = p();
    let s = user_session(p);
    // 7 asymmetric keys (private + public + certificate) and 2 secret keys, plus whatever other tests generated.
    let n = count(&s, &[backend_attr("kms")]);
    assert!(n >= 6 * 3 + 2, "{n}");
    assert!(count(&s, &[backend_attr("hsm")]) >= 7);
    for hidden in ["k-untagged", "k-disabled", "k-pending"] {
        assert_eq!(
            count(&s, &[Attribute::Label(hidden.into()), backend_attr("kms")]),
            0,
            "{hidden}"
        );
    }
    // Named explicitly, an untagged key is there.
    assert_eq!(
        count(
            &s,
            &[
                Attribute::Label(b"k-untagged".to_vec()),
                backend_attr("kmslist")
            ]
        ),
        3
    );
    assert_eq!(count(&s, &[backend_attr("kmslist")]), 7);
    assert_eq!(
        count(
            &s,
            &[
                Attribute::Label(b"k-hmac".to_vec()),
                backend_attr("kmslist")
            ]
        ),
        1
    );
    // Without a tag filter: the untagged key too, symmetric and HMAC keys (GetPublicKey refuses them, DescribeKey
    // describes them), never a disabled or pending-deletion key (GetPublicKey refuses them, DescribeKey says so).
    for (label, n) in [
        ("k-untagged", 3),
        ("k-rsa", 3),
        ("k-rsa-enc", 3),
        ("k-ec384", 3),
        ("k-hmac", 1),
        ("k-aes", 1),
        ("k-disabled", 0),
        ("k-pending", 0),
    ] {
        assert_eq!(
            count(
                &s,
                &[Attribute::Label(label.into()), backend_attr("kmsall")]
            ),
            n,
            "{label}"
        );
    }
    for (label, class, kt) in [
        ("k-hmac", ObjectClass::SECRET_KEY, KeyType::GENERIC_SECRET),
        ("k-aes", ObjectClass::SECRET_KEY, KeyType::AES),
        ("k-untagged", ObjectClass::PRIVATE_KEY, KeyType::EC),
    ] {
        let k = s
            .find_objects(&[
                Attribute::Label(label.into()),
                Attribute::Class(class),
                backend_attr("kmsall"),
            ])
            .unwrap()[0];
        let a = s.get_attributes(k, &[AttributeType::KeyType]).unwrap();
        assert_eq!(a, vec![Attribute::KeyType(kt)], "{label}");
    }
    let k = kms_key(&s, "k-ec256", ObjectClass::PRIVATE_KEY);
    let a = s
        .get_attributes(
            k,
            &[
                AttributeType::KeyType,
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::Sign,
                AttributeType::Decrypt,
                AttributeType::Private,
                AttributeType::Id,
                AttributeType::EcParams,
            ],
        )
        .unwrap();
    assert!(a.contains(&Attribute::KeyType(KeyType::EC)));
    assert!(a.contains(&Attribute::Sensitive(true)));
    assert!(a.contains(&Attribute::Extractable(false)));
    assert!(a.contains(&Attribute::Sign(true)));
    assert!(a.contains(&Attribute::Decrypt(false)));
    assert!(a.contains(&Attribute::Private(true)));
    // CKA_ID: the 16 bytes of the key's UUID; the same through both backends (same key).
    let uuid: Vec<u8> = {
        let h: String = setup().ec256_id.chars().filter(|c| *c != '-').collect();
        (0..16)
            .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    };
    assert!(a.contains(&Attribute::Id(uuid.clone())), "{a:?}");
    let same = s
        .find_objects(&[
            Attribute::Id(uuid),
            Attribute::Class(ObjectClass::PRIVATE_KEY),
        ])
        .unwrap();
    assert_eq!(same.len(), 3);
    // Key types of the others.
    for (label, class, kt) in [
        ("k-rsa", ObjectClass::PRIVATE_KEY, KeyType::RSA),
        ("k-rsa-enc", ObjectClass::PRIVATE_KEY, KeyType::RSA),
        ("k-hmac", ObjectClass::SECRET_KEY, KeyType::GENERIC_SECRET),
        ("k-aes", ObjectClass::SECRET_KEY, KeyType::AES),
    ] {
        let k = kms_key(&s, label, class);
        let a = s.get_attributes(k, &[AttributeType::KeyType]).unwrap();
        assert_eq!(a, vec![Attribute::KeyType(kt)], "{label}");
    }
    let enc = kms_key(&s, "k-rsa-enc", ObjectClass::PRIVATE_KEY);
    let a = s
        .get_attributes(enc, &[AttributeType::Sign, AttributeType::Decrypt])
        .unwrap();
    assert_eq!(a, vec![Attribute::Sign(false), Attribute::Decrypt(true)]);
    // Public objects are visible in any session.
    let ro = p.open_ro_session(unified_slot(p)).unwrap();
    let pubs = ro
        .find_objects(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            backend_attr("kms"),
        ])
        .unwrap();
    assert!(pubs.len() >= 6);
}

fn sign_verify(
    s: &Session,
    label: &str,
    mech: &Mechanism,
    data: &[u8],
    want_len: usize,
) -> Vec<u8> {
    let key = kms_key(s, label, ObjectClass::PRIVATE_KEY);
    let public = kms_key(s, label, ObjectClass::PUBLIC_KEY);
    let sig = s.sign(mech, key, data).unwrap();
    assert_eq!(sig.len(), want_len, "{label} {mech:?}");
    s.verify(mech, public, data, &sig).unwrap();
    let mut bad = sig.clone();
    bad[3] ^= 0x40;
    assert_eq!(
        rv(s.verify(mech, public, data, &bad).unwrap_err()),
        RvError::SignatureInvalid
    );
    sig
}

fn digest_info(h: &str, digest: &[u8]) -> Vec<u8> {
    let mut di = match h {
        "sha256" => vec![
            0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x01, 0x05, 0x00, 0x04, 0x20,
        ],
        "sha384" => vec![
            0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x02, 0x05, 0x00, 0x04, 0x30,
        ],
        _ => vec![
            0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x03, 0x05, 0x00, 0x04, 0x40,
        ],
    };
    di.extend_from_slice(digest);
    di
}

fn dgst(h: &str, data: &[u8]) -> Vec<u8> {
    openssl(&["dgst", &format!("-{h}"), "-binary"], Some(data))
}

#[test]
fn rsa_pkcs1_and_pss_verified_by_openssl() {
    let s = user_session(p());
    let spki = spki(&s, kms_key(&s, "k-rsa", ObjectClass::PUBLIC_KEY));
    let key = kms_key(&s, "k-rsa", ObjectClass::PRIVATE_KEY);
    let data = b"kms rsa".to_vec();
    for (h, mech) in [
        ("sha256", Mechanism::Sha256RsaPkcs),
        ("sha384", Mechanism::Sha384RsaPkcs),
        ("sha512", Mechanism::Sha512RsaPkcs),
    ] {
        let sig = sign_verify(&s, "k-rsa", &mech, &data, 256);
        assert!(openssl_verify(&spki, Some(h), &[], &data, &sig), "{h}");
        // CKM_RSA_PKCS over the DigestInfo: the same deterministic signature.
        let sig2 = sign_verify(
            &s,
            "k-rsa",
            &Mechanism::RsaPkcs,
            &digest_info(h, &dgst(h, &data)),
            256,
        );
        assert_eq!(sig, sig2, "{h}");
    }
    // Not a DigestInfo; a SHA-1 DigestInfo (KMS has no SHA-1 signing).
    assert_eq!(
        rv(s.sign(&Mechanism::RsaPkcs, key, b"plain").unwrap_err()),
        RvError::DataInvalid
    );
    let mut sha1_di = vec![
        0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14,
    ];
    sha1_di.extend([1u8; 20]);
    assert_eq!(
        rv(s.sign(&Mechanism::RsaPkcs, key, &sha1_di).unwrap_err()),
        RvError::DataInvalid
    );
    // Multi-part, hashed locally.
    s.sign_init(&Mechanism::Sha256RsaPkcs, key).unwrap();
    s.sign_update(&data[..3]).unwrap();
    s.sign_update(&data[3..]).unwrap();
    let mp = s.sign_final().unwrap();
    assert!(openssl_verify(&spki, Some("sha256"), &[], &data, &mp));

    for (h, mgf, len, mech_hash, mt) in [
        (
            "sha256",
            PkcsMgfType::MGF1_SHA256,
            32u64,
            MechanismType::SHA256,
            0,
        ),
        (
            "sha384",
            PkcsMgfType::MGF1_SHA384,
            48,
            MechanismType::SHA384,
            1,
        ),
        (
            "sha512",
            PkcsMgfType::MGF1_SHA512,
            64,
            MechanismType::SHA512,
            2,
        ),
    ] {
        let pss = PkcsPssParams {
            hash_alg: mech_hash,
            mgf,
            s_len: len.into(),
        };
        let mech = match mt {
            0 => Mechanism::Sha256RsaPkcsPss(pss),
            1 => Mechanism::Sha384RsaPkcsPss(pss),
            _ => Mechanism::Sha512RsaPkcsPss(pss),
        };
        let opt = format!("rsa_pss_saltlen:{len}");
        let sig = sign_verify(&s, "k-rsa", &mech, &data, 256);
        assert!(
            openssl_verify(&spki, Some(h), &["rsa_padding_mode:pss", &opt], &data, &sig),
            "{h}"
        );
        let sig = sign_verify(
            &s,
            "k-rsa",
            &Mechanism::RsaPkcsPss(pss),
            &dgst(h, &data),
            256,
        );
        assert!(
            openssl_verify(&spki, Some(h), &["rsa_padding_mode:pss", &opt], &data, &sig),
            "{h} raw"
        );
        // Another salt length: KMS cannot, refused at init.
        let other = PkcsPssParams {
            hash_alg: mech_hash,
            mgf,
            s_len: 20.into(),
        };
        assert_eq!(
            rv(s.sign_init(&Mechanism::RsaPkcsPss(other), key).unwrap_err()),
            RvError::MechanismParamInvalid
        );
    }
    // A raw PSS input that is not a digest of the parameter hash.
    let pss = PkcsPssParams {
        hash_alg: MechanismType::SHA256,
        mgf: PkcsMgfType::MGF1_SHA256,
        s_len: 32.into(),
    };
    assert_eq!(
        rv(s.sign(&Mechanism::RsaPkcsPss(pss), key, &[1u8; 20])
            .unwrap_err()),
        RvError::DataLenRange
    );
    // A decrypt-only key cannot sign.
    let enc = kms_key(&s, "k-rsa-enc", ObjectClass::PRIVATE_KEY);
    assert!(s.sign_init(&Mechanism::Sha256RsaPkcs, enc).is_err());
}

#[test]
fn ecdsa_on_every_curve_verified_by_openssl() {
    let s = user_session(p());
    let data = b"kms ec".to_vec();
    for (label, mech, len, dg) in [
        ("k-ec256", Mechanism::EcdsaSha256, 64, "sha256"),
        ("k-ec384", Mechanism::EcdsaSha384, 96, "sha384"),
        ("k-ec521", Mechanism::EcdsaSha512, 132, "sha512"),
        ("k-k1", Mechanism::EcdsaSha256, 64, "sha256"),
    ] {
        let spki = spki(&s, kms_key(&s, label, ObjectClass::PUBLIC_KEY));
        let sig = sign_verify(&s, label, &mech, &data, len);
        assert!(
            openssl_verify(&spki, Some(dg), &[], &data, &der::ecdsa_der(&sig)),
            "{label}"
        );
        let sig = sign_verify(&s, label, &Mechanism::Ecdsa, &dgst(dg, &data), len);
        assert!(
            openssl_verify(&spki, Some(dg), &[], &data, &der::ecdsa_der(&sig)),
            "{label} raw"
        );
        // Multi-part.
        let key = kms_key(&s, label, ObjectClass::PRIVATE_KEY);
        s.sign_init(&mech, key).unwrap();
        s.sign_update(&data[..2]).unwrap();
        s.sign_update(&data[2..]).unwrap();
        let sig = s.sign_final().unwrap();
        assert_eq!(sig.len(), len);
        assert!(
            openssl_verify(&spki, Some(dg), &[], &data, &der::ecdsa_der(&sig)),
            "{label} multi-part"
        );
    }
    // CKM_ECDSA takes a digest of exactly the size the curve's KMS algorithm signs.
    for (label, bad) in [
        ("k-ec256", 48),
        ("k-ec384", 32),
        ("k-ec521", 48),
        ("k-ec256", 7),
    ] {
        let key = kms_key(&s, label, ObjectClass::PRIVATE_KEY);
        assert_eq!(
            rv(s.sign(&Mechanism::Ecdsa, key, &vec![1u8; bad]).unwrap_err()),
            RvError::DataLenRange,
            "{label} {bad}"
        );
    }
    // A hash-and-sign mechanism KMS cannot do with this curve.
    let key = kms_key(&s, "k-ec256", ObjectClass::PRIVATE_KEY);
    assert!(s.sign_init(&Mechanism::EcdsaSha384, key).is_err());
}

#[test]
fn rsa_oaep_decrypts_in_kms() {
    let s = user_session(p());
    let key = kms_key(&s, "k-rsa-enc", ObjectClass::PRIVATE_KEY);
    let public = kms_key(&s, "k-rsa-enc", ObjectClass::PUBLIC_KEY);
    let spki = spki(&s, public);
    let d = tempdir("oaep");
    std::fs::write(d.join("k.der"), &spki).unwrap();
    for (md, mt, mgf) in [
        ("sha256", MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
        ("sha1", MechanismType::SHA1, PkcsMgfType::MGF1_SHA1),
    ] {
        let ct = openssl(
            &[
                "pkeyutl",
                "-encrypt",
                "-pubin",
                "-keyform",
                "DER",
                "-inkey",
                d.join("k.der").to_str().unwrap(),
                "-pkeyopt",
                "rsa_padding_mode:oaep",
                "-pkeyopt",
                &format!("rsa_oaep_md:{md}"),
                "-pkeyopt",
                &format!("rsa_mgf1_md:{md}"),
            ],
            Some(b"sealed by openssl"),
        );
        let oaep = PkcsOaepParams::new(mt, mgf, PkcsOaepSource::empty());
        assert_eq!(
            s.decrypt(&Mechanism::RsaPkcsOaep(oaep), key, &ct).unwrap(),
            b"sealed by openssl",
            "{md}"
        );
        // Encrypted locally with the public key, decrypted by KMS.
        let ct = s
            .encrypt(&Mechanism::RsaPkcsOaep(oaep), public, b"sealed locally")
            .unwrap();
        assert_eq!(ct.len(), 256);
        assert_eq!(
            s.decrypt(&Mechanism::RsaPkcsOaep(oaep), key, &ct).unwrap(),
            b"sealed locally"
        );
        // Garbage.
        let mut bad = ct.clone();
        bad[10] ^= 1;
        assert_eq!(
            rv(s.decrypt(&Mechanism::RsaPkcsOaep(oaep), key, &bad)
                .unwrap_err()),
            RvError::EncryptedDataInvalid
        );
    }
    // SHA-384 OAEP: KMS cannot decrypt it.
    let p384 = PkcsOaepParams::new(
        MechanismType::SHA384,
        PkcsMgfType::MGF1_SHA384,
        PkcsOaepSource::empty(),
    );
    assert_eq!(
        rv(s.decrypt_init(&Mechanism::RsaPkcsOaep(p384), key)
            .unwrap_err()),
        RvError::MechanismParamInvalid
    );
}

#[test]
fn hmac_generate_and_verify_mac() {
    let s = user_session(p());
    let k = kms_key(&s, "k-hmac", ObjectClass::SECRET_KEY);
    let mac = s.sign(&Mechanism::Sha256Hmac, k, b"message").unwrap();
    assert_eq!(mac.len(), 32);
    // Deterministic: the same MAC again; multi-part gives it too.
    assert_eq!(s.sign(&Mechanism::Sha256Hmac, k, b"message").unwrap(), mac);
    s.sign_init(&Mechanism::Sha256Hmac, k).unwrap();
    s.sign_update(b"mess").unwrap();
    s.sign_update(b"age").unwrap();
    assert_eq!(s.sign_final().unwrap(), mac);
    s.verify(&Mechanism::Sha256Hmac, k, b"message", &mac)
        .unwrap();
    assert_eq!(
        rv(s.verify(&Mechanism::Sha256Hmac, k, b"other", &mac)
            .unwrap_err()),
        RvError::SignatureInvalid
    );
    assert_eq!(
        rv(s.verify(&Mechanism::Sha256Hmac, k, b"message", &mac[..16])
            .unwrap_err()),
        RvError::SignatureLenRange
    );
    // An HMAC_256 key does HMAC-SHA-256 only.
    assert!(s.sign_init(&Mechanism::Sha512Hmac, k).is_err());
}

fn kms_mech() -> Mechanism<'static> {
    let t = MechanismType::new_vendor_defined(CKM_P11BRIDGE_KMS_ENCRYPT).unwrap();
    Mechanism::VendorDefined(VendorDefinedMechanism::new::<()>(t, None))
}

/// The vendor mechanism with an encryption context (its parameter: a JSON object of strings).
fn kms_mech_ctx<const N: usize>(ctx: &[u8; N]) -> Mechanism<'_> {
    let t = MechanismType::new_vendor_defined(CKM_P11BRIDGE_KMS_ENCRYPT).unwrap();
    Mechanism::VendorDefined(VendorDefinedMechanism::new(t, Some(ctx)))
}

#[test]
fn symmetric_encryption_is_the_kms_ciphertext_blob() {
    let s = user_session(p());
    let k = kms_key(&s, "k-aes", ObjectClass::SECRET_KEY);
    let ct = s.encrypt(&kms_mech(), k, b"plaintext for kms").unwrap();
    assert!(ct.len() > 17);
    assert_eq!(
        s.decrypt(&kms_mech(), k, &ct).unwrap(),
        b"plaintext for kms"
    );
    // The blob is KMS's own: boto3 decrypts it.
    let hex: String = ct.iter().map(|b| format!("{b:02x}")).collect();
    let out = moto().boto(&format!(
        "print(kms.decrypt(CiphertextBlob=bytes.fromhex('{hex}'))['Plaintext'].decode())"
    ));
    assert_eq!(out.trim(), "plaintext for kms");
    // With an encryption context (JSON object in the mechanism parameter).
    let ctx = br#"{"purpose":"test"}"#;
    let ct = s.encrypt(&kms_mech_ctx(ctx), k, b"with context").unwrap();
    assert_eq!(
        s.decrypt(&kms_mech_ctx(ctx), k, &ct).unwrap(),
        b"with context"
    );
    assert_eq!(
        rv(s.encrypt(&kms_mech_ctx(b"not json"), k, b"x").unwrap_err()),
        RvError::MechanismParamInvalid
    );
    assert_eq!(
        rv(s.decrypt(&kms_mech(), k, b"garbage blob").unwrap_err()),
        RvError::EncryptedDataInvalid
    );
}

#[test]
fn certificates_are_self_signed_by_the_kms_key() {
    let s = user_session(p());
    for label in ["k-rsa", "k-ec256", "k-ec384", "k-ec521", "k-rsa-enc"] {
        let c = kms_key(&s, label, ObjectClass::CERTIFICATE);
        let v = match s.get_attributes(c, &[AttributeType::Value]).unwrap().pop() {
            Some(Attribute::Value(v)) => v,
            other => panic!("{other:?}"),
        };
        let d = tempdir("cert");
        let der_path = d.join("c.der");
        std::fs::write(&der_path, &v).unwrap();
        let der_s = der_path.to_str().unwrap().to_string();
        let text = openssl(
            &[
                "x509", "-inform", "DER", "-in", &der_s, "-noout", "-subject",
            ],
            None,
        );
        assert!(String::from_utf8_lossy(&text).contains(label));
        let public = spki(&s, kms_key(&s, label, ObjectClass::PUBLIC_KEY));
        assert!(
            v.windows(public.len()).any(|w| w == public.as_slice()),
            "{label}"
        );
        if label == "k-rsa-enc" {
            // A decrypt-only key cannot sign: issued by a local throwaway key.
            continue;
        }
        let pem = openssl(&["x509", "-inform", "DER", "-in", &der_s], None);
        std::fs::write(d.join("c.pem"), &pem).unwrap();
        let c_pem = d.join("c.pem");
        let c_pem = c_pem.to_str().unwrap();
        let out = std::process::Command::new("openssl")
            .args(["verify", "-check_ss_sig", "-CAfile", c_pem, c_pem])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{label}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn generated_keys_live_in_kms_and_sign_at_once() {
    let s = user_session(p());
    let backend = backend_attr("kms");
    let p256 = vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let (pubk, privk) = s
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::EcParams(p256),
                Attribute::Token(true),
                backend.clone(),
            ],
            &[
                Attribute::Token(true),
                Attribute::Sign(true),
                Attribute::Label(b"k-gen-ec".to_vec()),
                backend.clone(),
            ],
        )
        .unwrap();
    let aliases = moto().boto("print([a['AliasName'] for a in kms.list_aliases()['Aliases']])");
    // Under created_alias_prefix, so that every later process finds it again.
    assert!(aliases.contains("alias/p11bridge/k-gen-ec"), "{aliases}");
    let h = sha256(b"generated");
    let sig = s.sign(&Mechanism::Ecdsa, privk, &h).unwrap();
    assert!(openssl_verify(
        &spki(&s, pubk),
        Some("sha256"),
        &[],
        b"generated",
        &der::ecdsa_der(&sig)
    ));
    // RSA, for decryption (CKA_DECRYPT, not CKA_SIGN).
    let (rpub, rpriv) = s
        .generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &[
                Attribute::ModulusBits(2048.into()),
                Attribute::Token(true),
                backend.clone(),
            ],
            &[
                Attribute::Token(true),
                Attribute::Sign(false),
                Attribute::Decrypt(true),
                Attribute::Label(b"k-gen-rsa-enc".to_vec()),
                backend.clone(),
            ],
        )
        .unwrap();
    let oaep = PkcsOaepParams::new(
        MechanismType::SHA256,
        PkcsMgfType::MGF1_SHA256,
        PkcsOaepSource::empty(),
    );
    let ct = s
        .encrypt(&Mechanism::RsaPkcsOaep(oaep), rpub, b"to the new key")
        .unwrap();
    assert_eq!(
        s.decrypt(&Mechanism::RsaPkcsOaep(oaep), rpriv, &ct)
            .unwrap(),
        b"to the new key"
    );
    let aes = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::ValueLen(32.into()),
                Attribute::Label(b"k-gen-aes".to_vec()),
                backend.clone(),
            ],
        )
        .unwrap();
    let ct = s.encrypt(&kms_mech(), aes, b"x").unwrap();
    assert_eq!(s.decrypt(&kms_mech(), aes, &ct).unwrap(), b"x");
    let hmac = s
        .generate_key(
            &Mechanism::GenericSecretKeyGen,
            &[
                Attribute::ValueLen(48.into()),
                Attribute::Label(b"k-gen-hmac".to_vec()),
                backend.clone(),
            ],
        )
        .unwrap();
    assert_eq!(
        s.sign(&Mechanism::Sha384Hmac, hmac, b"m").unwrap().len(),
        48
    );
    // Destroying the private key schedules deletion (allow_destroy = true): the objects go away.
    s.destroy_object(privk).unwrap();
    s.destroy_object(aes).unwrap();
    assert_eq!(
        count(
            &s,
            &[Attribute::Label(b"k-gen-ec".to_vec()), backend.clone()]
        ),
        0
    );
    let aliases = moto().boto("print([a['AliasName'] for a in kms.list_aliases()['Aliases']])");
    assert!(
        !aliases.contains("alias/p11bridge/k-gen-ec'")
            && aliases.contains("alias/p11bridge/k-gen-hmac"),
        "destroying a key deletes its own alias only: {aliases}"
    );
    let states = moto().boto(
        "print(sorted(kms.describe_key(KeyId=k['KeyId'])['KeyMetadata']['KeyState'] for k in kms.list_keys()['Keys']))",
    );
    assert!(states.contains("PendingDeletion"), "{states}");
    // A label whose alias exists is refused rather than reused.
    let e = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::ValueLen(32.into()),
                Attribute::Label(b"k-aes".to_vec()),
                backend.clone(),
            ],
        )
        .unwrap_err();
    assert_eq!(rv(e), RvError::AttributeValueInvalid);
    // AES keys in KMS are 256-bit.
    let e = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::ValueLen(16.into()),
                Attribute::Label(b"k-gen-aes128".to_vec()),
                backend,
            ],
        )
        .unwrap_err();
    assert_eq!(rv(e), RvError::KeySizeRange);
}

#[test]
fn destroy_is_refused_without_allow_destroy() {
    let s = user_session(p());
    let k = s
        .find_objects(&[
            Attribute::Label(b"k-untagged".to_vec()),
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            backend_attr("kmslist"),
        ])
        .unwrap()[0];
    assert_eq!(
        rv(s.destroy_object(k).unwrap_err()),
        RvError::ActionProhibited
    );
}

#[test]
fn random_bytes_come_from_kms_where_configured() {
    let p = p();
    let slot = slot_by_label(p, "kms-only");
    let s = p.open_rw_session(slot).unwrap();
    let before = moto().count("GenerateRandom");
    let r = s.generate_random_vec(3000).unwrap();
    assert_eq!(r.len(), 3000);
    assert!(r.iter().any(|b| *b != 0));
    // 3000 bytes: chunks of 1024, 1024, 952.
    assert!(moto().count("GenerateRandom") >= before + 3);
    // The KMS keys are there too.
    s.login(UserType::User, Some(&AuthPin::new(BRIDGE_PIN.into())))
        .or_else(|e| match e {
            Error::Pkcs11(RvError::UserAlreadyLoggedIn, _) => Ok(()),
            e => Err(e),
        })
        .unwrap();
    assert_eq!(
        s.find_objects(&[Attribute::Label(b"k-hmac".to_vec())])
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn mechanism_info_lists_the_kms_mechanisms() {
    let p = p();
    let slot = slot_by_label(p, "kms-only");
    let list = p.get_mechanism_list(slot).unwrap();
    for m in [
        MechanismType::RSA_PKCS,
        MechanismType::SHA256_RSA_PKCS,
        MechanismType::RSA_PKCS_PSS,
        MechanismType::SHA512_RSA_PKCS_PSS,
        MechanismType::ECDSA,
        MechanismType::ECDSA_SHA384,
        MechanismType::RSA_PKCS_OAEP,
        MechanismType::SHA256_HMAC,
    ] {
        assert!(list.contains(&m), "{m:?}");
    }
    // The cryptoki crate leaves vendor mechanisms out of the list it returns: ask for the info.
    let info = p
        .get_mechanism_info(
            slot,
            MechanismType::new_vendor_defined(CKM_P11BRIDGE_KMS_ENCRYPT).unwrap(),
        )
        .unwrap();
    assert!(info.encrypt() && info.decrypt());
    assert!(!list.contains(&MechanismType::SHA1_RSA_PKCS));
    assert!(!list.contains(&MechanismType::EDDSA));
}

#[test]
fn role_arn_credentials_reach_the_roles_account() {
    let s = user_session(p());
    // Only the key of account 111111111111 is there: the calls ran with the assumed role's credentials.
    let objs = s.find_objects(&[backend_attr("kmsrole")]).unwrap();
    assert_eq!(objs.len(), 3);
    let key = s
        .find_objects(&[
            backend_attr("kmsrole"),
            Attribute::Label(b"k-role".to_vec()),
            Attribute::Class(ObjectClass::PRIVATE_KEY),
        ])
        .unwrap()[0];
    let public = s
        .find_objects(&[
            backend_attr("kmsrole"),
            Attribute::Label(b"k-role".to_vec()),
            Attribute::Class(ObjectClass::PUBLIC_KEY),
        ])
        .unwrap()[0];
    let sig = s.sign(&Mechanism::EcdsaSha256, key, b"role").unwrap();
    assert!(openssl_verify(
        &spki(&s, public),
        Some("sha256"),
        &[],
        b"role",
        &der::ecdsa_der(&sig)
    ));
}

/// The same keys through an unmodified consumer: `pkcs11-tool` signs with KMS keys, openssl verifies.
#[test]
fn pkcs11_tool_signs_with_kms_keys() {
    let s = user_session(p());
    let d = tempdir("p11tool");
    let data = b"signed through pkcs11-tool";
    std::fs::write(d.join("data"), data).unwrap();
    for (label, mech, extra) in [
        (
            "k-ec384",
            "ECDSA-SHA384",
            vec!["--signature-format", "openssl"],
        ),
        ("k-rsa", "SHA256-RSA-PKCS-PSS", vec![]),
        ("k-rsa", "SHA512-RSA-PKCS", vec![]),
    ] {
        // pkcs11-tool picks the signing key by CKA_ID (not by label).
        let id = match s
            .get_attributes(
                kms_key(&s, label, ObjectClass::PRIVATE_KEY),
                &[AttributeType::Id],
            )
            .unwrap()
            .pop()
        {
            Some(Attribute::Id(id)) => id.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            other => panic!("{other:?}"),
        };
        let sig = d.join(format!("{label}-{mech}.sig"));
        let out = std::process::Command::new("pkcs11-tool")
            .arg("--module")
            .arg(bridge_so())
            .args(["--token-label", "kms-only", "--login", "--pin", BRIDGE_PIN])
            .args(["--sign", "--mechanism", mech, "--id", &id])
            .args(&extra)
            .arg("--input-file")
            .arg(d.join("data"))
            .arg("--output-file")
            .arg(&sig)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{label} {mech}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let sig = std::fs::read(&sig).unwrap();
        let spki = spki(&s, kms_key(&s, label, ObjectClass::PUBLIC_KEY));
        let ok = match mech {
            "ECDSA-SHA384" => openssl_verify(&spki, Some("sha384"), &[], data, &sig),
            // pkcs11-tool's PSS default: salt = hash length, MGF1 of the same hash.
            "SHA256-RSA-PKCS-PSS" => openssl_verify(
                &spki,
                Some("sha256"),
                &["rsa_padding_mode:pss", "rsa_pss_saltlen:32"],
                data,
                &sig,
            ),
            _ => openssl_verify(&spki, Some("sha512"), &[], data, &sig),
        };
        assert!(ok, "{label} {mech}");
    }
}
