//! The unified token over SoftHSM2, through the `cryptoki` crate: every pass-through function, with signatures
//! verified by openssl and ciphertexts decrypted back (or by openssl with a known key).

mod common;

use common::*;
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};

use p11bridge_vendor::CKA_P11BRIDGE_BACKEND;

fn rv(e: Error) -> RvError {
    match e {
        Error::Pkcs11(rv, _) => rv,
        other => panic!("not a PKCS#11 error: {other}"),
    }
}

fn digest_info_sha256(h: &[u8]) -> Vec<u8> {
    let mut v = vec![
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20,
    ];
    v.extend_from_slice(h);
    v
}

#[test]
fn slots_tokens_and_info() {
    let p = p11();
    let info = p.get_library_info().unwrap();
    assert_eq!(info.manufacturer_id(), "p11bridge");
    let slots = p.get_all_slots().unwrap();
    // Slot 0 unified, then SoftHSM's slots (the "upstream" token and SoftHSM's spare uninitialized slot).
    assert!(slots.len() >= 3, "{slots:?}");
    let u = p.get_token_info(unified_slot(p)).unwrap();
    assert_eq!(u.label(), "unified");
    assert_eq!(u.manufacturer_id(), "p11bridge");
    assert!(u.login_required() && u.token_initialized() && u.user_pin_initialized());
    let m = p.get_token_info(slot_by_label(p, "upstream")).unwrap();
    assert_eq!(m.manufacturer_id(), "SoftHSM project");
    // SoftHSM's spare slot (an uninitialized token) is mirrored too.
    assert!(slots.iter().any(|s| p
        .get_token_info(*s)
        .map(|t| !t.token_initialized())
        .unwrap_or(false)));
}

#[test]
fn mechanisms_are_the_upstreams() {
    let p = p11();
    let u = p.get_mechanism_list(unified_slot(p)).unwrap();
    let m = p.get_mechanism_list(slot_by_label(p, "upstream")).unwrap();
    assert_eq!(
        u, m,
        "the unified token offers exactly what its one backend offers, in its order"
    );
    for mech in [
        MechanismType::ECDSA,
        MechanismType::RSA_PKCS,
        MechanismType::AES_GCM,
    ] {
        let a = p.get_mechanism_info(unified_slot(p), mech).unwrap();
        let b = p
            .get_mechanism_info(slot_by_label(p, "upstream"), mech)
            .unwrap();
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }
}

#[test]
fn unified_login_uses_the_bridge_pin() {
    let p = p11();
    // (Wrong PINs are tested in bad_input.rs, where no other test logs the token in meanwhile.)
    let s = user_session(p);
    let privs = s
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
        .unwrap();
    assert!(privs.len() >= 3);
    let info = s.get_session_info().unwrap();
    assert_eq!(format!("{:?}", info.session_state()), "RwUser");
}

#[test]
fn objects_and_vendor_attribute() {
    let p = p11();
    let s = user_session(p);
    // Token objects only: other tests in this binary create and destroy session objects meanwhile.
    let all = s.find_objects(&[Attribute::Token(true)]).unwrap();
    assert!(all.len() >= 7, "{}", all.len());
    // Handles are stable across searches.
    let again = s.find_objects(&[Attribute::Token(true)]).unwrap();
    assert_eq!(all, again);
    let key = find_one(&s, "ec-p256", ObjectClass::PRIVATE_KEY);
    let attrs = s
        .get_attributes(
            key,
            &[
                AttributeType::Label,
                AttributeType::Id,
                AttributeType::KeyType,
                AttributeType::VendorDefined(CKA_P11BRIDGE_BACKEND),
            ],
        )
        .unwrap();
    let mut saw_backend = false;
    for a in attrs {
        match a {
            Attribute::Label(l) => assert_eq!(l, b"ec-p256"),
            Attribute::Id(i) => assert_eq!(i, vec![0x02]),
            Attribute::KeyType(k) => assert_eq!(k, KeyType::EC),
            Attribute::VendorDefined((_, v)) => {
                assert_eq!(v, b"hsm");
                saw_backend = true;
            }
            _ => {}
        }
    }
    assert!(saw_backend);
    // Search by backend.
    let by_backend = s
        .find_objects(&[
            Attribute::Token(true),
            Attribute::VendorDefined((
                AttributeType::VendorDefined(CKA_P11BRIDGE_BACKEND),
                b"hsm".to_vec(),
            )),
        ])
        .unwrap();
    assert_eq!(by_backend.len(), all.len());
    let e = s
        .find_objects(&[Attribute::VendorDefined((
            AttributeType::VendorDefined(CKA_P11BRIDGE_BACKEND),
            b"nope".to_vec(),
        ))])
        .unwrap_err();
    assert_eq!(rv(e), RvError::AttributeValueInvalid);
    // Sensitive values stay sensitive.
    let e = s.get_attributes(key, &[AttributeType::Value]);
    assert!(matches!(e, Ok(ref v) if v.is_empty()) || e.is_err());
}

#[test]
fn create_copy_set_destroy() {
    let p = p11();
    let s = user_session(p);
    let h = s
        .create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(false),
            Attribute::Label(b"data-1".to_vec()),
            Attribute::Value(b"some data".to_vec()),
        ])
        .unwrap();
    let c = s
        .copy_object(h, &[Attribute::Label(b"data-2".to_vec())])
        .unwrap();
    assert_ne!(h, c);
    s.update_attributes(c, &[Attribute::Label(b"data-3".to_vec())])
        .unwrap();
    let v = s
        .get_attributes(c, &[AttributeType::Label, AttributeType::Value])
        .unwrap();
    assert!(v.contains(&Attribute::Label(b"data-3".to_vec())));
    assert!(v.contains(&Attribute::Value(b"some data".to_vec())));
    // The backend attribute is read-only.
    let e = s
        .update_attributes(
            c,
            &[Attribute::VendorDefined((
                AttributeType::VendorDefined(CKA_P11BRIDGE_BACKEND),
                b"x".to_vec(),
            ))],
        )
        .unwrap_err();
    assert_eq!(rv(e), RvError::AttributeReadOnly);
    s.destroy_object(h).unwrap();
    s.destroy_object(c).unwrap();
    let e = s.get_attributes(h, &[AttributeType::Label]).unwrap_err();
    assert_eq!(rv(e), RvError::ObjectHandleInvalid);
}

#[test]
fn rsa_signatures_verified_by_openssl() {
    let p = p11();
    let s = user_session(p);
    let key = find_one(&s, "rsa-2048", ObjectClass::PRIVATE_KEY);
    let public = find_one(&s, "rsa-2048", ObjectClass::PUBLIC_KEY);
    let spki = spki(&s, public);
    let data = b"p11bridge signs this".to_vec();

    let sig = s.sign(&Mechanism::Sha256RsaPkcs, key, &data).unwrap();
    assert_eq!(sig.len(), 256);
    assert!(openssl_verify(&spki, Some("sha256"), &[], &data, &sig));
    s.verify(&Mechanism::Sha256RsaPkcs, public, &data, &sig)
        .unwrap();

    // CKM_RSA_PKCS over a DigestInfo.
    let di = digest_info_sha256(&sha256(&data));
    let sig2 = s.sign(&Mechanism::RsaPkcs, key, &di).unwrap();
    assert_eq!(sig, sig2, "PKCS#1 v1.5 is deterministic");

    // Multi-part.
    s.sign_init(&Mechanism::Sha256RsaPkcs, key).unwrap();
    s.sign_update(&data[..5]).unwrap();
    s.sign_update(&data[5..]).unwrap();
    assert_eq!(s.sign_final().unwrap(), sig);

    // PSS, salt = hash length.
    let pss = PkcsPssParams {
        hash_alg: MechanismType::SHA256,
        mgf: PkcsMgfType::MGF1_SHA256,
        s_len: 32.into(),
    };
    let sig = s
        .sign(&Mechanism::Sha256RsaPkcsPss(pss), key, &data)
        .unwrap();
    assert!(openssl_verify(
        &spki,
        Some("sha256"),
        &["rsa_padding_mode:pss", "rsa_pss_saltlen:32"],
        &data,
        &sig
    ));
    let sig = s
        .sign(&Mechanism::RsaPkcsPss(pss), key, &sha256(&data))
        .unwrap();
    assert!(openssl_verify(
        &spki,
        Some("sha256"),
        &["rsa_padding_mode:pss", "rsa_pss_saltlen:32"],
        &data,
        &sig
    ));

    // A bad signature is refused.
    let mut bad = sig.clone();
    bad[10] ^= 1;
    let e = s
        .verify(&Mechanism::RsaPkcsPss(pss), public, &sha256(&data), &bad)
        .unwrap_err();
    assert_eq!(rv(e), RvError::SignatureInvalid);
}

#[test]
fn rsa_oaep_round_trip_with_openssl() {
    let p = p11();
    let s = user_session(p);
    let key = find_one(&s, "rsa-2048", ObjectClass::PRIVATE_KEY);
    let public = find_one(&s, "rsa-2048", ObjectClass::PUBLIC_KEY);
    let spki = spki(&s, public);
    let d = tempdir("oaep");
    std::fs::write(d.join("k.der"), &spki).unwrap();
    let k = d.join("k.der");
    // openssl encrypts with the public key; the token decrypts. (SoftHSM 2.6.1 does OAEP with SHA-1 only.)
    let ct = openssl(
        &[
            "pkeyutl",
            "-encrypt",
            "-pubin",
            "-keyform",
            "DER",
            "-inkey",
            k.to_str().unwrap(),
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            "rsa_oaep_md:sha1",
            "-pkeyopt",
            "rsa_mgf1_md:sha1",
        ],
        Some(b"secret message"),
    );
    let oaep = PkcsOaepParams::new(
        MechanismType::SHA1,
        PkcsMgfType::MGF1_SHA1,
        PkcsOaepSource::empty(),
    );
    let pt = s.decrypt(&Mechanism::RsaPkcsOaep(oaep), key, &ct).unwrap();
    assert_eq!(pt, b"secret message");
    // And back: the token encrypts, the token decrypts.
    let ct = s
        .encrypt(&Mechanism::RsaPkcsOaep(oaep), public, b"round trip")
        .unwrap();
    assert_eq!(
        s.decrypt(&Mechanism::RsaPkcsOaep(oaep), key, &ct).unwrap(),
        b"round trip"
    );
}

#[test]
fn ecdsa_and_eddsa_verified_by_openssl() {
    let p = p11();
    let s = user_session(p);
    let key = find_one(&s, "ec-p256", ObjectClass::PRIVATE_KEY);
    let public = find_one(&s, "ec-p256", ObjectClass::PUBLIC_KEY);
    let spki_ec = spki(&s, public);
    let data = b"ecdsa input".to_vec();
    let h = sha256(&data);
    let sig = s.sign(&Mechanism::Ecdsa, key, &h).unwrap();
    assert_eq!(sig.len(), 64);
    assert!(openssl_verify(
        &spki_ec,
        Some("sha256"),
        &[],
        &data,
        &der::ecdsa_der(&sig)
    ));
    s.verify(&Mechanism::Ecdsa, public, &h, &sig).unwrap();

    let key = find_one(&s, "ed25519", ObjectClass::PRIVATE_KEY);
    let public = find_one(&s, "ed25519", ObjectClass::PUBLIC_KEY);
    let spki_ed = spki(&s, public);
    let mech = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
    let sig = s.sign(&mech, key, &data).unwrap();
    assert_eq!(sig.len(), 64);
    let d = tempdir("ed");
    std::fs::write(d.join("k.der"), &spki_ed).unwrap();
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
    assert!(ok.success(), "openssl verifies the Ed25519 signature");
}

#[test]
fn aes_with_a_known_key_matches_openssl() {
    let p = p11();
    let s = user_session(p);
    let raw = [0x42u8; 32];
    let key = s
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(false),
            Attribute::Value(raw.to_vec()),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
        ])
        .unwrap();
    let iv = [7u8; 16];
    let data = vec![0xa5u8; 1000];
    let ct = s.encrypt(&Mechanism::AesCbcPad(iv), key, &data).unwrap();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let ossl = openssl(
        &["enc", "-aes-256-cbc", "-K", &hex(&raw), "-iv", &hex(&iv)],
        Some(&data),
    );
    assert_eq!(ct, ossl, "same ciphertext as openssl");
    assert_eq!(
        s.decrypt(&Mechanism::AesCbcPad(iv), key, &ct).unwrap(),
        data
    );

    // Multi-part encrypt, two-call convention inside the crate.
    s.encrypt_init(&Mechanism::AesCbcPad(iv), key).unwrap();
    let mut out = s.encrypt_update(&data[..333]).unwrap();
    out.extend(s.encrypt_update(&data[333..]).unwrap());
    out.extend(s.encrypt_final().unwrap());
    assert_eq!(out, ct);

    // GCM with a caller IV and AAD.
    let mut giv = [1u8; 12];
    let aad = b"header".to_vec();
    let gcm = cryptoki::mechanism::aead::GcmParams::new(&mut giv, &aad, 128.into()).unwrap();
    let ct = s
        .encrypt(&Mechanism::AesGcm(gcm), key, b"gcm plaintext")
        .unwrap();
    let mut giv2 = [1u8; 12];
    let gcm2 = cryptoki::mechanism::aead::GcmParams::new(&mut giv2, &aad, 128.into()).unwrap();
    assert_eq!(
        s.decrypt(&Mechanism::AesGcm(gcm2), key, &ct).unwrap(),
        b"gcm plaintext"
    );
    s.destroy_object(key).unwrap();
}

#[test]
fn upstream_aes_key_round_trip() {
    let p = p11();
    let s = user_session(p);
    let key = find_one(&s, "aes-256", ObjectClass::SECRET_KEY);
    let iv = [3u8; 16];
    let ct = s
        .encrypt(&Mechanism::AesCbcPad(iv), key, b"hello upstream")
        .unwrap();
    assert_eq!(
        s.decrypt(&Mechanism::AesCbcPad(iv), key, &ct).unwrap(),
        b"hello upstream"
    );
}

#[test]
fn digests_match_openssl() {
    let p = p11();
    let s = user_session(p);
    let data = vec![0x5au8; 4096];
    let d = s.digest(&Mechanism::Sha256, &data).unwrap();
    assert_eq!(d, sha256(&data));
}

#[test]
fn key_generation_wrap_unwrap_derive() {
    let p = p11();
    let s = user_session(p);
    // Secret key generation and AES key wrap.
    let kek = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::ValueLen(32.into()),
                Attribute::Token(false),
                Attribute::Wrap(true),
                Attribute::Unwrap(true),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
            ],
        )
        .unwrap();
    let k = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::ValueLen(16.into()),
                Attribute::Token(false),
                Attribute::Extractable(true),
                Attribute::Sensitive(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
            ],
        )
        .unwrap();
    let wrapped = s.wrap_key(&Mechanism::AesKeyWrap, kek, k).unwrap();
    assert_eq!(wrapped.len(), 24);
    let k2 = s
        .unwrap_key(
            &Mechanism::AesKeyWrap,
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
    let iv = [0u8; 16];
    let ct = s
        .encrypt(&Mechanism::AesCbcPad(iv), k, b"same key?")
        .unwrap();
    assert_eq!(
        s.decrypt(&Mechanism::AesCbcPad(iv), k2, &ct).unwrap(),
        b"same key?"
    );

    // Key pair generation (EC P-256) and use at once, verified by openssl.
    let p256 = vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let (pubk, privk) = s
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::EcParams(p256.clone()),
                Attribute::Token(false),
                Attribute::Verify(true),
            ],
            &[
                Attribute::Token(false),
                Attribute::Sign(true),
                Attribute::Derive(true),
                Attribute::Private(true),
            ],
        )
        .unwrap();
    let h = sha256(b"fresh key");
    let sig = s.sign(&Mechanism::Ecdsa, privk, &h).unwrap();
    assert!(openssl_verify(
        &spki(&s, pubk),
        Some("sha256"),
        &[],
        b"fresh key",
        &der::ecdsa_der(&sig)
    ));

    // ECDH: derive a shared secret with the upstream's P-256 key and compare both directions.
    let (pub2, priv2) = s
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[Attribute::EcParams(p256), Attribute::Token(false)],
            &[
                Attribute::Token(false),
                Attribute::Derive(true),
                Attribute::Private(true),
            ],
        )
        .unwrap();
    let point = |h| match s
        .get_attributes(h, &[AttributeType::EcPoint])
        .unwrap()
        .pop()
    {
        Some(Attribute::EcPoint(p)) => der::unwrap_octet_string(&p).unwrap(),
        _ => panic!("no point"),
    };
    let (p1, p2) = (point(pubk), point(pub2));
    let tmpl = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::ValueLen(32.into()),
        Attribute::Token(false),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
    ];
    let d1 = s
        .derive_key(
            &Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), &p2)),
            privk,
            &tmpl,
        )
        .unwrap();
    let d2 = s
        .derive_key(
            &Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), &p1)),
            priv2,
            &tmpl,
        )
        .unwrap();
    let val = |h| s.get_attributes(h, &[AttributeType::Value]).unwrap();
    assert_eq!(val(d1), val(d2));
    for h in [kek, k, k2, pubk, privk, pub2, priv2, d1, d2] {
        s.destroy_object(h).unwrap();
    }
}

#[test]
fn random_numbers() {
    let p = p11();
    let s = user_session(p);
    let a = s.generate_random_vec(64).unwrap();
    let b = s.generate_random_vec(64).unwrap();
    assert_eq!(a.len(), 64);
    assert_ne!(a, b);
    s.seed_random(b"some seed").unwrap();
}

#[test]
fn operation_state_rules() {
    let p = p11();
    let s = user_session(p);
    let key = find_one(&s, "ec-p256", ObjectClass::PRIVATE_KEY);
    let aes = find_one(&s, "aes-256", ObjectClass::SECRET_KEY);
    s.sign_init(&Mechanism::Ecdsa, key).unwrap();
    let e = s.sign_init(&Mechanism::Ecdsa, key).unwrap_err();
    assert_eq!(rv(e), RvError::OperationActive);
    // A finished operation is no longer active.
    s.sign(&Mechanism::Ecdsa, key, &[1u8; 32])
        .unwrap_or_default();
    let e = s.sign_update(b"x").unwrap_err();
    assert_eq!(rv(e), RvError::OperationNotInitialized);
    // ECDSA is single-part in SoftHSM: C_SignFinal fails, and SoftHSM keeps the operation. The bridge follows the
    // upstream: the next C_SignInit reports the active operation and C_Sign can then finish it.
    s.sign_init(&Mechanism::Ecdsa, key).unwrap();
    assert!(s.sign_final().is_err());
    if let Err(e) = s.sign_init(&Mechanism::Ecdsa, key) {
        assert_eq!(rv(e), RvError::OperationActive);
    }
    // Wrong key for the mechanism: the upstream's answer comes through (on a fresh session).
    let s = user_session(p);
    let r = rv(s.sign(&Mechanism::Ecdsa, aes, b"x").unwrap_err());
    // SoftHSM 2.6.1 accepts the init and fails C_Sign with CKR_GENERAL_ERROR; others say KEY_TYPE_INCONSISTENT.
    assert!(
        matches!(
            r,
            RvError::KeyTypeInconsistent | RvError::KeyFunctionNotPermitted | RvError::GeneralError
        ),
        "{r:?}"
    );
}

#[test]
fn ro_session_cannot_write_token_objects() {
    let p = p11();
    let _login = user_session(p);
    let s = p.open_ro_session(unified_slot(p)).unwrap();
    let e = s
        .create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Value(b"x".to_vec()),
        ])
        .unwrap_err();
    assert_eq!(rv(e), RvError::SessionReadOnly);
}
