//! The Vault transit backend against a real OpenBao dev server: every mechanism on every key type, through the
//! `cryptoki` crate, signatures verified by openssl; certificates; key generation; requests counted through
//! OpenBao's own audit log to prove that searches, attribute reads and length queries make none.

mod common;

use common::bao::{bao, ROOT_TOKEN};
use common::*;
use cryptoki::context::Pkcs11;
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource, PkcsPssParams};
use cryptoki::mechanism::vendor_defined::VendorDefinedMechanism;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use std::sync::OnceLock;

use p11bridge_vendor::CKA_P11BRIDGE_BACKEND;
use p11bridge_vendor::CKA_P11BRIDGE_KEY_VERSION;
use p11bridge_vendor::CKM_P11BRIDGE_VAULT_ENCRYPT;
use p11bridge_vendor::CKM_P11BRIDGE_VAULT_REWRAP;

fn rv(e: Error) -> RvError {
    match e {
        Error::Pkcs11(rv, _) => rv,
        other => panic!("not a PKCS#11 error: {other}"),
    }
}

struct Setup {
    audit: std::path::PathBuf,
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let b = bao();
        b.ok(&["secrets", "enable", "transit"]);
        for (name, ty) in [
            ("v-rsa", "rsa-2048"),
            ("v-ec256", "ecdsa-p256"),
            ("v-ec384", "ecdsa-p384"),
            ("v-ed", "ed25519"),
            ("v-aes", "aes256-gcm96"),
            ("v-aes-rot", "aes256-gcm96"),
            ("v-ec521", "ecdsa-p521"),
            ("v-rsa3072", "rsa-3072"),
            ("v-chacha", "chacha20-poly1305"),
            ("v-aes128", "aes128-gcm96"),
        ] {
            b.ok(&[
                "write",
                "-f",
                &format!("transit/keys/{name}"),
                &format!("type={ty}"),
            ]);
        }
        b.ok(&[
            "write",
            "-f",
            "transit/keys/v-hmac",
            "type=hmac",
            "key_size=32",
        ]);
        // A key outside the prefix stays invisible.
        b.ok(&["write", "-f", "transit/keys/other", "type=ecdsa-p256"]);
        let dir = repo_root()
            .join("target/test-env")
            .join(format!("vault-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let audit = b.audit.clone();
        std::env::set_var("VAULT_TEST_TOKEN", ROOT_TOKEN);
        let section = format!(
            r#"
[backend.vault]
kind = "vault-transit"
address = "{}"
token = "env:VAULT_TEST_TOKEN"
discover = true
prefix = "v-"
cert_cache_dir = "{}"
allow_destroy = true
timeout_ms = 3000
"#,
            b.addr,
            dir.join("certs").display()
        );
        env_with(&["vault"], &section);
        Setup { audit }
    })
}

fn p() -> &'static Pkcs11 {
    setup();
    p11()
}

/// Requests OpenBao has answered so far (its audit log has a request and a response line per request).
fn vault_requests() -> usize {
    std::fs::read_to_string(&setup().audit)
        .map(|s| {
            s.lines()
                .filter(|l| l.contains("\"type\":\"request\""))
                .count()
        })
        .unwrap_or(0)
}

fn vault_key(s: &Session, label: &str, class: ObjectClass) -> ObjectHandle {
    let v = s
        .find_objects(&[
            Attribute::Label(label.into()),
            Attribute::Class(class),
            Attribute::VendorDefined((
                AttributeType::VendorDefined(CKA_P11BRIDGE_BACKEND),
                b"vault".to_vec(),
            )),
        ])
        .unwrap();
    assert_eq!(v.len(), 1, "{label} {class:?}");
    v[0]
}

#[test]
fn transit_keys_are_objects_next_to_the_hsms() {
    let p = p();
    let s = user_session(p);
    let by = |b: &str| {
        s.find_objects(&[Attribute::VendorDefined((
            AttributeType::VendorDefined(CKA_P11BRIDGE_BACKEND),
            b.as_bytes().to_vec(),
        ))])
        .unwrap()
        .len()
    };
    // rsa, 2 × ec, ed25519: private + public + certificate each; aes, aes-rot, hmac: one secret key each (plus
    // whatever other tests generated meanwhile).
    assert!(by("vault") >= 4 * 3 + 3, "{}", by("vault"));
    assert!(by("hsm") >= 7);
    assert!(s
        .find_objects(&[Attribute::Label(b"other".to_vec())])
        .unwrap()
        .is_empty());
    let k = vault_key(&s, "v-ec256", ObjectClass::PRIVATE_KEY);
    let a = s
        .get_attributes(
            k,
            &[
                AttributeType::KeyType,
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::Sign,
                AttributeType::Id,
                AttributeType::VendorDefined(CKA_P11BRIDGE_KEY_VERSION),
            ],
        )
        .unwrap();
    assert!(a.contains(&Attribute::KeyType(KeyType::EC)));
    assert!(a.contains(&Attribute::Sensitive(true)));
    assert!(a.contains(&Attribute::Extractable(false)));
    assert!(a.contains(&Attribute::Sign(true)));
    assert!(a
        .iter()
        .any(|x| matches!(x, Attribute::Id(id) if id.len() == 16)));
    // Public objects are visible without login.
    let ro = p.open_ro_session(unified_slot(p)).unwrap();
    let _ = ro
        .find_objects(&[Attribute::Class(ObjectClass::CERTIFICATE)])
        .unwrap();
}

fn sign_verify(
    s: &Session,
    label: &str,
    mech: &Mechanism,
    data: &[u8],
    want_len: usize,
) -> Vec<u8> {
    let key = vault_key(s, label, ObjectClass::PRIVATE_KEY);
    let public = vault_key(s, label, ObjectClass::PUBLIC_KEY);
    let sig = s.sign(mech, key, data).unwrap();
    assert_eq!(sig.len(), want_len, "{label} {mech:?}");
    s.verify(mech, public, data, &sig)
        .unwrap_or_else(|e| panic!("{label} {mech:?}: {e}"));
    let mut bad = sig.clone();
    bad[3] ^= 0x40;
    assert_eq!(
        rv(s.verify(mech, public, data, &bad).unwrap_err()),
        RvError::SignatureInvalid
    );
    sig
}

#[test]
fn rsa_mechanisms_verified_by_openssl() {
    let s = user_session(p());
    let spki = spki(&s, vault_key(&s, "v-rsa", ObjectClass::PUBLIC_KEY));
    let data = b"vault rsa".to_vec();
    let sig = sign_verify(&s, "v-rsa", &Mechanism::Sha256RsaPkcs, &data, 256);
    assert!(openssl_verify(&spki, Some("sha256"), &[], &data, &sig));
    let mut di = vec![
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20,
    ];
    di.extend(sha256(&data));
    let sig2 = sign_verify(&s, "v-rsa", &Mechanism::RsaPkcs, &di, 256);
    assert_eq!(sig, sig2);
    // Not a DigestInfo.
    let key = vault_key(&s, "v-rsa", ObjectClass::PRIVATE_KEY);
    assert_eq!(
        rv(s.sign(&Mechanism::RsaPkcs, key, b"plain").unwrap_err()),
        RvError::DataInvalid
    );
    for salt in [32u64, 20] {
        let pss = PkcsPssParams {
            hash_alg: MechanismType::SHA256,
            mgf: PkcsMgfType::MGF1_SHA256,
            s_len: salt.into(),
        };
        let sig = sign_verify(&s, "v-rsa", &Mechanism::Sha256RsaPkcsPss(pss), &data, 256);
        let opt = format!("rsa_pss_saltlen:{salt}");
        assert!(openssl_verify(
            &spki,
            Some("sha256"),
            &["rsa_padding_mode:pss", &opt],
            &data,
            &sig
        ));
        let sig = sign_verify(
            &s,
            "v-rsa",
            &Mechanism::RsaPkcsPss(pss),
            &sha256(&data),
            256,
        );
        assert!(openssl_verify(
            &spki,
            Some("sha256"),
            &["rsa_padding_mode:pss", &opt],
            &data,
            &sig
        ));
    }
    let pss = PkcsPssParams {
        hash_alg: MechanismType::SHA384,
        mgf: PkcsMgfType::MGF1_SHA384,
        s_len: 48.into(),
    };
    let sig = sign_verify(&s, "v-rsa", &Mechanism::Sha384RsaPkcsPss(pss), &data, 256);
    assert!(openssl_verify(
        &spki,
        Some("sha384"),
        &["rsa_padding_mode:pss", "rsa_pss_saltlen:48"],
        &data,
        &sig
    ));
    // Multi-part, hashed locally.
    s.sign_init(&Mechanism::Sha256RsaPkcs, key).unwrap();
    s.sign_update(&data[..4]).unwrap();
    s.sign_update(&data[4..]).unwrap();
    assert_eq!(s.sign_final().unwrap(), sig2);
}

#[test]
fn ecdsa_and_eddsa_verified_by_openssl() {
    let s = user_session(p());
    let data = b"vault ec".to_vec();
    for (label, mech, len, dg) in [
        ("v-ec256", Mechanism::EcdsaSha256, 64, "sha256"),
        ("v-ec384", Mechanism::EcdsaSha384, 96, "sha384"),
    ] {
        let spki = spki(&s, vault_key(&s, label, ObjectClass::PUBLIC_KEY));
        let sig = sign_verify(&s, label, &mech, &data, len);
        assert!(
            openssl_verify(&spki, Some(dg), &[], &data, &der::ecdsa_der(&sig)),
            "{label}"
        );
        let digest = openssl(&["dgst", &format!("-{dg}"), "-binary"], Some(&data));
        let sig = sign_verify(&s, label, &Mechanism::Ecdsa, &digest, len);
        assert!(
            openssl_verify(&spki, Some(dg), &[], &data, &der::ecdsa_der(&sig)),
            "{label} raw"
        );
    }
    let key = vault_key(&s, "v-ec256", ObjectClass::PRIVATE_KEY);
    assert_eq!(
        rv(s.sign(&Mechanism::Ecdsa, key, &[1u8; 7]).unwrap_err()),
        RvError::DataLenRange
    );

    let spki = spki(&s, vault_key(&s, "v-ed", ObjectClass::PUBLIC_KEY));
    let mech = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
    let sig = sign_verify(&s, "v-ed", &mech, &data, 64);
    let d = tempdir("ed");
    std::fs::write(d.join("k.der"), &spki).unwrap();
    std::fs::write(d.join("m"), &data).unwrap();
    std::fs::write(d.join("s"), &sig).unwrap();
    let ok = std::process::Command::new("openssl")
        .args([
            "pkeyutl", "-verify", "-pubin", "-keyform", "DER", "-rawin", "-inkey",
        ])
        .arg(d.join("k.der"))
        .arg("-in")
        .arg(d.join("m"))
        .arg("-sigfile")
        .arg(d.join("s"))
        .status()
        .unwrap();
    assert!(ok.success());
}

#[test]
fn rsa_oaep_decrypts_in_vault() {
    let s = user_session(p());
    let key = vault_key(&s, "v-rsa", ObjectClass::PRIVATE_KEY);
    let public = vault_key(&s, "v-rsa", ObjectClass::PUBLIC_KEY);
    let spki = spki(&s, public);
    let d = tempdir("oaep");
    std::fs::write(d.join("k.der"), &spki).unwrap();
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
            "rsa_oaep_md:sha256",
            "-pkeyopt",
            "rsa_mgf1_md:sha256",
        ],
        Some(b"sealed by openssl"),
    );
    let oaep = PkcsOaepParams::new(
        MechanismType::SHA256,
        PkcsMgfType::MGF1_SHA256,
        PkcsOaepSource::empty(),
    );
    assert_eq!(
        s.decrypt(&Mechanism::RsaPkcsOaep(oaep), key, &ct).unwrap(),
        b"sealed by openssl"
    );
    let ct = s
        .encrypt(&Mechanism::RsaPkcsOaep(oaep), public, b"sealed locally")
        .unwrap();
    assert_eq!(ct.len(), 256);
    assert_eq!(
        s.decrypt(&Mechanism::RsaPkcsOaep(oaep), key, &ct).unwrap(),
        b"sealed locally"
    );
    let sha1 = PkcsOaepParams::new(
        MechanismType::SHA1,
        PkcsMgfType::MGF1_SHA1,
        PkcsOaepSource::empty(),
    );
    assert_eq!(
        rv(s.decrypt(&Mechanism::RsaPkcsOaep(sha1), key, &ct)
            .unwrap_err()),
        RvError::MechanismParamInvalid
    );
}

#[test]
fn hmac_sign_and_verify() {
    let s = user_session(p());
    let k = vault_key(&s, "v-hmac", ObjectClass::SECRET_KEY);
    let mac = s.sign(&Mechanism::Sha256Hmac, k, b"message").unwrap();
    assert_eq!(mac.len(), 32);
    s.verify(&Mechanism::Sha256Hmac, k, b"message", &mac)
        .unwrap();
    assert_eq!(
        rv(s.verify(&Mechanism::Sha256Hmac, k, b"other", &mac)
            .unwrap_err()),
        RvError::SignatureInvalid
    );
    assert_eq!(
        s.sign(&Mechanism::Sha512Hmac, k, b"message").unwrap().len(),
        64
    );
}

fn vault_mech(m: u64) -> Mechanism<'static> {
    let t = MechanismType::new_vendor_defined(m).unwrap();
    Mechanism::VendorDefined(VendorDefinedMechanism::new::<()>(t, None))
}

#[test]
fn vault_encryption_and_rotation() {
    let s = user_session(p());
    let k = vault_key(&s, "v-aes-rot", ObjectClass::SECRET_KEY);
    let enc = vault_mech(CKM_P11BRIDGE_VAULT_ENCRYPT);
    let ct = s.encrypt(&enc, k, b"plaintext for vault").unwrap();
    assert!(
        ct.starts_with(b"vault:v1:"),
        "{}",
        String::from_utf8_lossy(&ct)
    );
    assert_eq!(s.decrypt(&enc, k, &ct).unwrap(), b"plaintext for vault");
    // Rotation in Vault: old ciphertexts keep decrypting; rewrap moves them to the new version.
    bao().ok(&["write", "-f", "transit/keys/v-aes-rot/rotate"]);
    assert_eq!(s.decrypt(&enc, k, &ct).unwrap(), b"plaintext for vault");
    let rewrapped = s
        .encrypt(&vault_mech(CKM_P11BRIDGE_VAULT_REWRAP), k, &ct)
        .unwrap();
    assert!(
        rewrapped.starts_with(b"vault:v2:"),
        "{}",
        String::from_utf8_lossy(&rewrapped)
    );
    assert_eq!(
        s.decrypt(&enc, k, &rewrapped).unwrap(),
        b"plaintext for vault"
    );
    let garbage = b"vault:v1:AAAA".to_vec();
    assert_eq!(
        rv(s.decrypt(&enc, k, &garbage).unwrap_err()),
        RvError::EncryptedDataInvalid
    );
}

#[test]
fn certificates_are_self_signed_by_the_key() {
    let s = user_session(p());
    for label in ["v-rsa", "v-ec256", "v-ec384", "v-ed"] {
        let c = vault_key(&s, label, ObjectClass::CERTIFICATE);
        let v = match s.get_attributes(c, &[AttributeType::Value]).unwrap().pop() {
            Some(Attribute::Value(v)) => v,
            other => panic!("{other:?}"),
        };
        let d = tempdir("cert");
        let pem = d.join("c.der");
        std::fs::write(&pem, &v).unwrap();
        let pem_s = pem.to_str().unwrap().to_string();
        let text = openssl(
            &[
                "x509", "-inform", "DER", "-in", &pem_s, "-noout", "-subject", "-pubkey",
            ],
            None,
        );
        let text = String::from_utf8_lossy(&text).to_string();
        assert!(text.contains(label), "{text}");
        let pemc = openssl(&["x509", "-inform", "DER", "-in", &pem_s], None);
        std::fs::write(d.join("c.pem"), &pemc).unwrap();
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
        // The certificate carries the key's public key.
        let public = spki(&s, vault_key(&s, label, ObjectClass::PUBLIC_KEY));
        assert!(
            v.windows(public.len()).any(|w| w == public.as_slice()),
            "{label}"
        );
    }
}

#[test]
fn length_queries_searches_and_attributes_make_no_request() {
    let p = p();
    let s = user_session(p);
    let key = vault_key(&s, "v-ec256", ObjectClass::PRIVATE_KEY);
    let _ = s.find_objects(&[]).unwrap();
    let before = vault_requests();
    for _ in 0..10 {
        let _ = s
            .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
            .unwrap();
        let _ = s
            .get_attributes(key, &[AttributeType::Label, AttributeType::EcPoint])
            .unwrap();
    }
    // The cryptoki crate's sign() asks for the length first (NULL buffer), then signs: one request.
    let _ = s.sign(&Mechanism::Ecdsa, key, &[7u8; 32]).unwrap();
    // Verification is local.
    let public = vault_key(&s, "v-ec256", ObjectClass::PUBLIC_KEY);
    let sig = s.sign(&Mechanism::Ecdsa, key, &[8u8; 32]).unwrap();
    s.verify(&Mechanism::Ecdsa, public, &[8u8; 32], &sig)
        .unwrap();
    let after = vault_requests();
    // Other tests run in parallel against the same server: allow for theirs, but ours are exactly 2 signs.
    assert!(after >= before + 2);
    let solo = std::env::var("VAULT_SOLO").is_ok();
    if solo {
        assert_eq!(after, before + 2);
    }
}

#[test]
fn keys_generated_from_pkcs11_live_in_vault() {
    let s = user_session(p());
    let backend = Attribute::VendorDefined((
        AttributeType::VendorDefined(CKA_P11BRIDGE_BACKEND),
        b"vault".to_vec(),
    ));
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
                Attribute::Label(b"v-gen-ec".to_vec()),
                backend.clone(),
            ],
        )
        .unwrap();
    let listed = bao().ok(&["list", "transit/keys"]);
    assert!(listed.contains("v-gen-ec"), "{listed}");
    let h = sha256(b"generated");
    let sig = s.sign(&Mechanism::Ecdsa, privk, &h).unwrap();
    assert!(openssl_verify(
        &spki(&s, pubk),
        Some("sha256"),
        &[],
        b"generated",
        &der::ecdsa_der(&sig)
    ));
    let aes = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::ValueLen(32.into()),
                Attribute::Label(b"v-gen-aes".to_vec()),
                backend.clone(),
            ],
        )
        .unwrap();
    let enc = vault_mech(CKM_P11BRIDGE_VAULT_ENCRYPT);
    let ct = s.encrypt(&enc, aes, b"x").unwrap();
    assert_eq!(s.decrypt(&enc, aes, &ct).unwrap(), b"x");
    // Destroying the private key deletes the transit key (allow_destroy = true).
    s.destroy_object(privk).unwrap();
    s.destroy_object(aes).unwrap();
    let listed = bao().ok(&["list", "transit/keys"]);
    assert!(
        !listed.contains("v-gen-ec") && !listed.contains("v-gen-aes"),
        "{listed}"
    );
    // A name that exists is refused rather than reused.
    let e = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::ValueLen(32.into()),
                Attribute::Label(b"v-aes".to_vec()),
                backend,
            ],
        )
        .unwrap_err();
    assert_eq!(rv(e), RvError::AttributeValueInvalid);
}

#[test]
fn envelope_wrapping_of_hsm_session_keys_under_a_vault_key() {
    let s = user_session(p());
    let kek = vault_key(&s, "v-aes", ObjectClass::SECRET_KEY);
    // A session AES key in the HSM (extractable, so that it may leave it wrapped).
    let dek = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::ValueLen(32.into()),
                Attribute::Token(false),
                Attribute::Extractable(true),
                Attribute::Sensitive(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
            ],
        )
        .unwrap();
    let wrap = vault_mech(CKM_P11BRIDGE_VAULT_ENCRYPT);
    let wrapped = s.wrap_key(&wrap, kek, dek).unwrap();
    assert!(
        wrapped.starts_with(b"vault:v"),
        "{}",
        String::from_utf8_lossy(&wrapped)
    );
    // Unwrapped back into the HSM (the slot's default backend): the same key.
    let back = s
        .unwrap_key(
            &wrap,
            kek,
            &wrapped,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Token(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
            ],
        )
        .unwrap();
    let backend = s
        .get_attributes(back, &[AttributeType::VendorDefined(CKA_P11BRIDGE_BACKEND)])
        .unwrap();
    assert!(
        matches!(&backend[..], [Attribute::VendorDefined((_, b))] if b == b"hsm"),
        "{backend:?}"
    );
    let iv = [5u8; 16];
    let c1 = s
        .encrypt(&Mechanism::AesCbcPad(iv), dek, b"envelope")
        .unwrap();
    assert_eq!(
        s.decrypt(&Mechanism::AesCbcPad(iv), back, &c1).unwrap(),
        b"envelope"
    );
    // A sensitive key cannot leave its backend this way.
    let sensitive = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::ValueLen(16.into()),
                Attribute::Token(false),
                Attribute::Extractable(true),
                Attribute::Sensitive(true),
            ],
        )
        .unwrap();
    assert_eq!(
        rv(s.wrap_key(&wrap, kek, sensitive).unwrap_err()),
        RvError::KeyUnextractable
    );
    // A tampered envelope is refused.
    let mut bad = wrapped.clone();
    let n = bad.len();
    bad[n - 3] ^= 1;
    let e = s
        .unwrap_key(
            &wrap,
            kek,
            &bad,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Token(false),
            ],
        )
        .unwrap_err();
    let r = rv(e);
    assert!(
        matches!(
            r,
            RvError::WrappedKeyInvalid | RvError::EncryptedDataInvalid
        ),
        "{r:?}"
    );
}

/// Every signing mechanism on every asymmetric key type: signed in Vault, verified by the bridge (locally) and by
/// openssl. Prints the matrix.
#[test]
fn signature_matrix() {
    let s = user_session(p());
    let data = b"matrix input".to_vec();
    let pss = |h: MechanismType, m: PkcsMgfType, n: u64| PkcsPssParams {
        hash_alg: h,
        mgf: m,
        s_len: n.into(),
    };
    let mut rows = Vec::new();
    for (label, rsa_bytes) in [("v-rsa", 256usize), ("v-rsa3072", 384)] {
        let spki = spki(&s, vault_key(&s, label, ObjectClass::PUBLIC_KEY));
        let cases: Vec<(&str, Mechanism, &str, Vec<&str>)> = vec![
            ("SHA1_RSA_PKCS", Mechanism::Sha1RsaPkcs, "sha1", vec![]),
            (
                "SHA224_RSA_PKCS",
                Mechanism::Sha224RsaPkcs,
                "sha224",
                vec![],
            ),
            (
                "SHA256_RSA_PKCS",
                Mechanism::Sha256RsaPkcs,
                "sha256",
                vec![],
            ),
            (
                "SHA384_RSA_PKCS",
                Mechanism::Sha384RsaPkcs,
                "sha384",
                vec![],
            ),
            (
                "SHA512_RSA_PKCS",
                Mechanism::Sha512RsaPkcs,
                "sha512",
                vec![],
            ),
            (
                "SHA1_RSA_PKCS_PSS",
                Mechanism::Sha1RsaPkcsPss(pss(MechanismType::SHA1, PkcsMgfType::MGF1_SHA1, 20)),
                "sha1",
                vec!["rsa_padding_mode:pss", "rsa_pss_saltlen:20"],
            ),
            (
                "SHA256_RSA_PKCS_PSS",
                Mechanism::Sha256RsaPkcsPss(pss(
                    MechanismType::SHA256,
                    PkcsMgfType::MGF1_SHA256,
                    32,
                )),
                "sha256",
                vec!["rsa_padding_mode:pss", "rsa_pss_saltlen:32"],
            ),
            (
                "SHA512_RSA_PKCS_PSS",
                Mechanism::Sha512RsaPkcsPss(pss(
                    MechanismType::SHA512,
                    PkcsMgfType::MGF1_SHA512,
                    64,
                )),
                "sha512",
                vec!["rsa_padding_mode:pss", "rsa_pss_saltlen:64"],
            ),
        ];
        for (name, mech, dg, opts) in cases {
            let sig = sign_verify(&s, label, &mech, &data, rsa_bytes);
            assert!(
                openssl_verify(&spki, Some(dg), &opts, &data, &sig),
                "{label} {name}"
            );
            rows.push(format!("{label:10} {name:22} pass"));
        }
    }
    for (label, len) in [("v-ec256", 64usize), ("v-ec384", 96), ("v-ec521", 132)] {
        let spki = spki(&s, vault_key(&s, label, ObjectClass::PUBLIC_KEY));
        for (name, mech, dg) in [
            ("ECDSA_SHA1", Mechanism::EcdsaSha1, "sha1"),
            ("ECDSA_SHA224", Mechanism::EcdsaSha224, "sha224"),
            ("ECDSA_SHA256", Mechanism::EcdsaSha256, "sha256"),
            ("ECDSA_SHA384", Mechanism::EcdsaSha384, "sha384"),
            ("ECDSA_SHA512", Mechanism::EcdsaSha512, "sha512"),
        ] {
            let sig = sign_verify(&s, label, &mech, &data, len);
            assert!(
                openssl_verify(&spki, Some(dg), &[], &data, &der::ecdsa_der(&sig)),
                "{label} {name}"
            );
            rows.push(format!("{label:10} {name:22} pass"));
        }
    }
    for label in ["v-chacha", "v-aes128", "v-aes"] {
        let k = vault_key(&s, label, ObjectClass::SECRET_KEY);
        let enc = vault_mech(CKM_P11BRIDGE_VAULT_ENCRYPT);
        let ct = s.encrypt(&enc, k, b"symmetric").unwrap();
        assert_eq!(s.decrypt(&enc, k, &ct).unwrap(), b"symmetric");
        rows.push(format!("{label:10} {:22} pass", "P11BRIDGE_VAULT_ENCRYPT"));
    }
    println!("{}", rows.join("\n"));
}

/// Sign requests OpenBao has seen that carried a `batch_input` (coalesced signatures).
fn batch_requests() -> usize {
    std::fs::read_to_string(&setup().audit)
        .map(|s| {
            s.lines()
                .filter(|l| l.contains("\"type\":\"request\"") && l.contains("\"batch_input\""))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn concurrent_signatures_are_coalesced_and_each_verifies() {
    let p = p();
    let before = batch_requests();
    let hs: Vec<_> = (0..24)
        .map(|t| {
            std::thread::spawn(move || {
                let s = user_session(p);
                let (label, mech) = if t % 2 == 0 {
                    ("v-ec256", Mechanism::Ecdsa)
                } else {
                    (
                        "v-ed",
                        Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                    )
                };
                let key = vault_key(&s, label, ObjectClass::PRIVATE_KEY);
                let public = vault_key(&s, label, ObjectClass::PUBLIC_KEY);
                for i in 0..8 {
                    // Every caller signs its own data: each result must be the caller's own signature.
                    let data = sha256(format!("batch {t} {i}").as_bytes());
                    let sig = s.sign(&mech, key, &data).unwrap();
                    assert_eq!(sig.len(), 64);
                    s.verify(&mech, public, &data, &sig)
                        .unwrap_or_else(|e| panic!("{label} thread {t} item {i}: {e}"));
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        batch_requests() > before,
        "24 threads signing on two keys made no batch_input request"
    );
}
