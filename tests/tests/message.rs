//! PKCS#11 3.0 message-based AES-GCM (`C_MessageEncryptInit`, `C_EncryptMessage`, …) over SoftHSM2 2.6.1, a 2.40
//! module without it: the bridge emulates it over the upstream's single-part AES-GCM, on the unified token and on a
//! mirror. Known-answer vectors (the `cryptoki` crate's own), generated IVs written back, tags checked on
//! decryption, and the mechanism flags a client reads to know what is offered.

mod common;

use common::*;
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::aead::{GcmMessageParams, GeneratorFunction};
use cryptoki::mechanism::{Mechanism, MechanismType, MessageParam};
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;

fn aes_key(s: &Session, value: Vec<u8>) -> ObjectHandle {
    s.create_object(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(false),
        Attribute::Value(value),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
    ])
    .unwrap()
}

fn known_answers(s: &Session) {
    let key = aes_key(s, vec![0; 16]);
    let mut iv = [0u8; 12];
    let mut tag = [0u8; 12];
    let plain = [0u8; 32];
    let p =
        GcmMessageParams::new(&mut iv, 96.into(), GeneratorFunction::NoGenerate, &mut tag).unwrap();
    s.message_encrypt_init(&Mechanism::AesGcmMessage(p), key)
        .unwrap();
    let cipher = s
        .encrypt_message(&MessageParam::AesGcmMessage(p), &[], &plain)
        .unwrap();
    s.message_encrypt_final().unwrap();
    assert_eq!(
        cipher,
        [
            0x03, 0x88, 0xda, 0xce, 0x60, 0xb6, 0xa3, 0x92, 0xf3, 0x28, 0xc2, 0xb9, 0x71, 0xb2,
            0xfe, 0x78, 0xf7, 0x95, 0xaa, 0xab, 0x49, 0x4b, 0x59, 0x23, 0xf7, 0xfd, 0x89, 0xff,
            0x94, 0x8b, 0xc1, 0xe0
        ]
    );
    assert_eq!(
        tag,
        [0x40, 0x49, 0x0a, 0xf4, 0x80, 0x56, 0x06, 0xb2, 0xa3, 0xa2, 0xe7, 0x93]
    );
    // With associated data (the crate's aes_gcm_with_aad vector).
    let mut tag2 = [0u8; 12];
    let p = GcmMessageParams::new(&mut iv, 96.into(), GeneratorFunction::NoGenerate, &mut tag2)
        .unwrap();
    s.message_encrypt_init(&Mechanism::AesGcmMessage(p), key)
        .unwrap();
    let c2 = s
        .encrypt_message(&MessageParam::AesGcmMessage(p), &[0; 16], &[0; 16])
        .unwrap();
    s.message_encrypt_final().unwrap();
    assert_eq!(c2, cipher[..16]);
    assert_eq!(
        tag2,
        [0xd2, 0x4e, 0x50, 0x3a, 0x1b, 0xb0, 0x37, 0x07, 0x1c, 0x71, 0xb3, 0x5d]
    );
    // Decryption checks the tag.
    let p =
        GcmMessageParams::new(&mut iv, 96.into(), GeneratorFunction::NoGenerate, &mut tag).unwrap();
    s.message_decrypt_init(&Mechanism::AesGcmMessage(p), key)
        .unwrap();
    let back = s
        .decrypt_message(&MessageParam::AesGcmMessage(p), &[], &cipher)
        .unwrap();
    assert_eq!(back, plain);
    let mut bad_tag = tag;
    bad_tag[0] ^= 1;
    let p = GcmMessageParams::new(
        &mut iv,
        96.into(),
        GeneratorFunction::NoGenerate,
        &mut bad_tag,
    )
    .unwrap();
    let e = s
        .decrypt_message(&MessageParam::AesGcmMessage(p), &[], &cipher)
        .unwrap_err();
    // The upstream's answer for a tag that does not verify (SoftHSM2 2.6.1: CKR_GENERAL_ERROR, as for C_Decrypt).
    assert!(
        matches!(
            e,
            Error::Pkcs11(RvError::EncryptedDataInvalid | RvError::GeneralError, _)
        ),
        "{e}"
    );
    s.message_decrypt_final().unwrap();
}

/// Generated IVs: random and counter, written back into the caller's IV, each decrypting what it encrypted.
fn generated_ivs(s: &Session) {
    let key = aes_key(s, vec![7; 32]);
    for generator in [
        GeneratorFunction::GenerateRandom,
        GeneratorFunction::GenerateCounter,
    ] {
        let mut seen = Vec::new();
        let mut iv = [0xaau8; 12];
        let mut tag = [0u8; 16];
        let init = GcmMessageParams::new(&mut iv, 32.into(), generator, &mut tag).unwrap();
        s.message_encrypt_init(&Mechanism::AesGcmMessage(init), key)
            .unwrap();
        let mut sealed = Vec::new();
        for _ in 0..2 {
            let mut iv = [0xaau8; 12];
            let mut tag = [0u8; 16];
            let p = GcmMessageParams::new(&mut iv, 32.into(), generator, &mut tag).unwrap();
            let c = s
                .encrypt_message(&MessageParam::AesGcmMessage(p), b"aad", b"message")
                .unwrap();
            assert_eq!(&iv[..4], &[0xaa; 4], "the fixed part stays");
            assert!(!seen.contains(&iv), "a new IV each message");
            seen.push(iv);
            sealed.push((iv, tag, c));
        }
        s.message_encrypt_final().unwrap();
        if matches!(generator, GeneratorFunction::GenerateCounter) {
            assert_eq!(&seen[0][4..], &[0u8; 8], "the counter starts at zero");
            assert_eq!(&seen[1][4..], &[0, 0, 0, 0, 0, 0, 0, 1]);
        }
        for (mut iv, mut tag, c) in sealed {
            let p =
                GcmMessageParams::new(&mut iv, 32.into(), GeneratorFunction::NoGenerate, &mut tag)
                    .unwrap();
            s.message_decrypt_init(&Mechanism::AesGcmMessage(p), key)
                .unwrap();
            let back = s
                .decrypt_message(&MessageParam::AesGcmMessage(p), b"aad", &c)
                .unwrap();
            s.message_decrypt_final().unwrap();
            assert_eq!(back, b"message");
        }
    }
}

/// The two tests log in to the same upstream token (the unified token through its backend, the mirror directly), and
/// PKCS#11 login state is the application's: the last session one test closes logs the token out under the other
/// (the mirror test's CreateObject then failed with CKR_USER_NOT_LOGGED_IN). One at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static L: std::sync::Mutex<()> = std::sync::Mutex::new(());
    L.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn message_based_aes_gcm_on_the_unified_token() {
    let _g = serial();
    let p = p11();
    let slot = unified_slot(p);
    let info = p.get_mechanism_info(slot, MechanismType::AES_GCM).unwrap();
    assert!(info.message_encrypt() && info.message_decrypt());
    let s = user_session(p);
    known_answers(&s);
    generated_ivs(&s);
    // No operation after the final.
    let mut iv = [0u8; 12];
    let mut tag = [0u8; 16];
    let prm =
        GcmMessageParams::new(&mut iv, 96.into(), GeneratorFunction::NoGenerate, &mut tag).unwrap();
    let e = s
        .encrypt_message(&MessageParam::AesGcmMessage(prm), &[], b"x")
        .unwrap_err();
    assert!(
        matches!(e, Error::Pkcs11(RvError::OperationNotInitialized, _)),
        "{e}"
    );
}

#[test]
fn message_based_aes_gcm_on_a_mirror() {
    let _g = serial();
    let p = p11();
    let slot = slot_by_label(p, "upstream");
    let s = p.open_rw_session(slot).unwrap();
    // The unified token's login of the same upstream token may be there already (one login per application).
    match s.login(UserType::User, Some(&AuthPin::new(HSM_PIN.into()))) {
        Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("login: {e}"),
    }
    known_answers(&s);
    generated_ivs(&s);
}
