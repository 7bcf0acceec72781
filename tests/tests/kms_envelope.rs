//! Envelope encryption under a KMS key, through the raw C ABI (the spec's two-call convention: the second call
//! reports the actual length, which a KMS ciphertext blob only has once KMS made it): a session AES key of the HSM
//! wrapped with `CKM_P11BRIDGE_KMS_ENCRYPT` under a KMS SYMMETRIC_DEFAULT key, and unwrapped back into the HSM.

mod common;
mod raw;

use common::moto::moto;
use cryptoki_sys::*;
use raw::{attr, bridge, call, mech};
use std::ptr::null_mut;

use p11bridge_vendor::CKM_P11BRIDGE_KMS_ENCRYPT;

#[test]
fn hsm_session_key_wrapped_under_a_kms_key() {
    let m = moto();
    m.create_key("env-kek", "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", &[]);
    let dir = common::repo_root()
        .join("target/test-env")
        .join(format!("kms-env-{}", std::process::id()));
    common::env_with(
        &["kms"],
        &format!(
            "[backend.kms]\nkind = \"aws-kms\"\nregion = \"us-east-1\"\nendpoint = \"{}\"\nkeys = [\"alias/env-kek\"]\ncert_cache_dir = \"{}\"\n",
            m.url,
            dir.display()
        ),
    );
    let b = bridge();
    assert_eq!(b.initialize(), CKR_OK);
    let f = b.f;
    let s = b
        .open(
            b.slot_by_label("unified"),
            CKF_SERIAL_SESSION | CKF_RW_SESSION,
        )
        .unwrap();
    assert_eq!(b.login(s, CKU_USER, common::BRIDGE_PIN), CKR_OK);
    let kek = b.find(s, CKO_SECRET_KEY, "env-kek").unwrap()[0];

    // A session AES key in the HSM, extractable so that it may leave wrapped.
    let (mut len, mut t_false, mut t_true) = (32 as CK_ULONG, CK_FALSE, CK_TRUE);
    let mut tmpl = [
        attr(CKA_VALUE_LEN, &mut len),
        attr(CKA_TOKEN, &mut t_false),
        attr(CKA_EXTRACTABLE, &mut t_true),
        attr(CKA_SENSITIVE, &mut t_false),
        attr(CKA_ENCRYPT, &mut t_true),
        attr(CKA_DECRYPT, &mut t_true),
    ];
    let mut dek = 0;
    let mut gen = mech(CKM_AES_KEY_GEN);
    assert_eq!(
        call!(
            f,
            C_GenerateKey(s, &mut gen, tmpl.as_mut_ptr(), 6, &mut dek)
        ),
        CKR_OK
    );

    // Two calls: the length (an upper bound, no KMS request), then the blob and its actual length.
    let mut wm = mech(CKM_P11BRIDGE_KMS_ENCRYPT);
    let mut n: CK_ULONG = 0;
    assert_eq!(
        call!(f, C_WrapKey(s, &mut wm, kek, dek, null_mut(), &mut n)),
        CKR_OK
    );
    let mut blob = vec![0u8; n as usize];
    assert_eq!(
        call!(
            f,
            C_WrapKey(s, &mut wm, kek, dek, blob.as_mut_ptr(), &mut n)
        ),
        CKR_OK
    );
    assert!(n as usize <= blob.len());
    blob.truncate(n as usize);

    // Unwrapped into the HSM (the slot's default backend).
    let (mut class, mut kt) = (CKO_SECRET_KEY, CKK_AES);
    let mut ut = [
        attr(CKA_CLASS, &mut class),
        attr(CKA_KEY_TYPE, &mut kt),
        attr(CKA_TOKEN, &mut t_false),
        attr(CKA_ENCRYPT, &mut t_true),
        attr(CKA_DECRYPT, &mut t_true),
    ];
    let mut back = 0;
    assert_eq!(
        call!(
            f,
            C_UnwrapKey(
                s,
                &mut wm,
                kek,
                blob.as_mut_ptr(),
                n,
                ut.as_mut_ptr(),
                5,
                &mut back
            )
        ),
        CKR_OK
    );
    // The same key: what one encrypts, the other decrypts.
    let mut iv = [9u8; 16];
    let mut cbc = CK_MECHANISM {
        mechanism: CKM_AES_CBC_PAD,
        pParameter: iv.as_mut_ptr() as *mut _,
        ulParameterLen: 16,
    };
    let mut pt = *b"envelope under a kms key";
    let mut ct = [0u8; 64];
    let mut cn: CK_ULONG = 64;
    assert_eq!(call!(f, C_EncryptInit(s, &mut cbc, dek)), CKR_OK);
    assert_eq!(
        call!(
            f,
            C_Encrypt(
                s,
                pt.as_mut_ptr(),
                pt.len() as CK_ULONG,
                ct.as_mut_ptr(),
                &mut cn
            )
        ),
        CKR_OK
    );
    let mut out = [0u8; 64];
    let mut on: CK_ULONG = 64;
    assert_eq!(call!(f, C_DecryptInit(s, &mut cbc, back)), CKR_OK);
    assert_eq!(
        call!(
            f,
            C_Decrypt(s, ct.as_mut_ptr(), cn, out.as_mut_ptr(), &mut on)
        ),
        CKR_OK
    );
    assert_eq!(&out[..on as usize], &pt[..]);

    // A blob that is not KMS's is refused (real KMS: InvalidCiphertextException → CKR_WRAPPED_KEY_INVALID; moto
    // cannot tell junk from a blob of another key and answers a key-usage error instead).
    let mut junk = vec![7u8; 64];
    let mut x = 0;
    let rv = call!(
        f,
        C_UnwrapKey(
            s,
            &mut wm,
            kek,
            junk.as_mut_ptr(),
            64,
            ut.as_mut_ptr(),
            5,
            &mut x
        )
    );
    assert_ne!(rv, CKR_OK);
}
