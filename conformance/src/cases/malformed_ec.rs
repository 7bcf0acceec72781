//! Malformed EC keys: CKA_EC_PARAMS / CKA_EC_POINT that are not what §4.9 and the mechanisms document say.

use super::*;

// ------------------------------------------------------------------------------------------- malformed EC keys

/// The codes a token may give when it is asked to use a key whose EC material is broken (it should never have
/// been created): anything but dying. The row exists to show SoftHSM2 crash.
pub(super) const BROKEN_KEY_USE: &[CK_RV] = &[
    CKR_OK,
    CKR_KEY_TYPE_INCONSISTENT,
    CKR_DOMAIN_PARAMS_INVALID,
    CKR_CURVE_NOT_SUPPORTED,
    CKR_KEY_HANDLE_INVALID,
    CKR_FUNCTION_FAILED,
    CKR_GENERAL_ERROR,
    CKR_MECHANISM_INVALID,
    CKR_ARGUMENTS_BAD,
];

/// (condition, private key?, CKA_EC_PARAMS, CKA_EC_POINT of a public key, expected `C_CreateObject` code).
pub(super) type EcCase<'a> = (&'a str, bool, &'a [u8], &'a [u8], CK_RV);

/// EC keys with malformed `CKA_EC_PARAMS` / `CKA_EC_POINT` (§4.9, §2.3 of the mechanisms: DER of X9.62 Parameters
/// and of an ECPoint): creating one is `CKR_ATTRIBUTE_VALUE_INVALID`. SoftHSM2 (over OpenSSL 3) creates them and
/// then crashes (SIGSEGV in `EC_POINT_oct2point`, NULL curve) in `C_VerifyInit` with such a public key and in
/// `C_DeriveKey` (ECDH) with such a private key: the "... uses it" rows, which run only where the creation
/// succeeded (n/a on the bridge, which refuses the key). Found by the fuzzer (conformance/fuzz/crashes/).
pub(super) fn malformed_ec_keys(c: &mut Checks, b: &'static Bridge) {
    let x = fixture(b);
    let f = b.f;
    let s = x.s;
    let p256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    // The fixture's P-256 public point (DER OCTET STRING), read from its public key.
    let mut point = vec![0u8; 67];
    {
        let mut t = [CK_ATTRIBUTE {
            type_: CKA_EC_POINT,
            pValue: point.as_mut_ptr() as *mut c_void,
            ulValueLen: point.len() as CK_ULONG,
        }];
        let rv = call!(f, C_GetAttributeValue(s, x.ec_pub, t.as_mut_ptr(), 1));
        c.rv("read the fixture's CKA_EC_POINT", rv, CKR_OK);
        point.truncate(t[0].ulValueLen.min(67) as usize);
    }
    let raw_point = point.get(2..).unwrap_or_default().to_vec();
    let cases: &[EcCase] = &[
        // (condition, private key?, CKA_EC_PARAMS, CKA_EC_POINT (public), expected)
        (
            "public key, CKA_EC_PARAMS not DER",
            false,
            &[0xde, 0xad, 0xbe, 0xef],
            &point,
            CKR_ATTRIBUTE_VALUE_INVALID,
        ),
        (
            "public key, unknown curve OID",
            false,
            &[0x06, 0x03, 0x2a, 0x03, 0x04],
            &point,
            CKR_ATTRIBUTE_VALUE_INVALID,
        ),
        (
            "public key, empty CKA_EC_PARAMS",
            false,
            &[],
            &point,
            CKR_ATTRIBUTE_VALUE_INVALID,
        ),
        (
            "public key, malformed explicit curve parameters",
            false,
            &[0x30, 0x03, 0x02, 0x01, 0x01],
            &point,
            CKR_ATTRIBUTE_VALUE_INVALID,
        ),
        (
            "public key, implicitlyCA (NULL)",
            false,
            &[0x05, 0x00],
            &point,
            CKR_ATTRIBUTE_VALUE_INVALID,
        ),
        (
            "public key, P-256 with an empty point (04 00)",
            false,
            p256,
            &[0x04, 0x00],
            CKR_ATTRIBUTE_VALUE_INVALID,
        ),
        (
            "public key, P-256 with a 1-byte point",
            false,
            p256,
            &[0x04],
            CKR_ATTRIBUTE_VALUE_INVALID,
        ),
        (
            "private key, CKA_EC_PARAMS not DER",
            true,
            &[0xde, 0xad, 0xbe, 0xef],
            &[],
            CKR_ATTRIBUTE_VALUE_INVALID,
        ),
        (
            "private key, unknown curve OID",
            true,
            &[0x06, 0x03, 0x2a, 0x03, 0x04],
            &[],
            CKR_ATTRIBUTE_VALUE_INVALID,
        ),
        // Controls: well-formed keys are still accepted (DER point, and the raw point many applications pass).
        ("public key, P-256 (control)", false, p256, &point, CKR_OK),
        (
            "public key, P-256 raw point (control)",
            false,
            p256,
            &raw_point,
            CKR_OK,
        ),
        ("private key, P-256 (control)", true, p256, &[], CKR_OK),
    ];
    for (cond, private, params, pt, want) in cases {
        let mut class = if *private {
            CKO_PRIVATE_KEY
        } else {
            CKO_PUBLIC_KEY
        };
        let mut kt = CKK_EC;
        let mut yes = CK_TRUE;
        let mut no = CK_FALSE;
        let mut value = [0x01u8; 32];
        let mut params = params.to_vec();
        let mut pt = pt.to_vec();
        let mut t = vec![
            attr(CKA_CLASS, &mut class),
            attr(CKA_KEY_TYPE, &mut kt),
            attr(CKA_TOKEN, &mut no),
            CK_ATTRIBUTE {
                type_: CKA_EC_PARAMS,
                pValue: params.as_mut_ptr() as *mut c_void,
                ulValueLen: params.len() as CK_ULONG,
            },
        ];
        if *private {
            t.push(attr(CKA_DERIVE, &mut yes));
            t.push(CK_ATTRIBUTE {
                type_: CKA_VALUE,
                pValue: value.as_mut_ptr() as *mut c_void,
                ulValueLen: value.len() as CK_ULONG,
            });
        } else {
            t.push(attr(CKA_VERIFY, &mut yes));
            t.push(CK_ATTRIBUTE {
                type_: CKA_EC_POINT,
                pValue: pt.as_mut_ptr() as *mut c_void,
                ulValueLen: pt.len() as CK_ULONG,
            });
        }
        let mut o: CK_OBJECT_HANDLE = 0;
        let got = chk!(
            c,
            f,
            *want,
            cond,
            C_CreateObject(s, t.as_mut_ptr(), t.len() as CK_ULONG, &mut o)
        );
        // Use the key where it was created (n/a where it was refused).
        let use_case = format!("{cond}: the key is used");
        if got != CKR_OK {
            c.any(&use_case, NA, BROKEN_KEY_USE);
            continue;
        }
        if !c.before_call(&use_case) {
            c.any(&use_case, DIED, BROKEN_KEY_USE);
            continue;
        }
        let used = if *private {
            // ECDH with the fixture's public point.
            let mut peer = point.clone();
            let mut p = CK_ECDH1_DERIVE_PARAMS {
                kdf: CKD_NULL,
                ulSharedDataLen: 0,
                pSharedData: null_mut(),
                ulPublicDataLen: peer.len() as CK_ULONG,
                pPublicData: peer.as_mut_ptr(),
            };
            let mut m = CK_MECHANISM {
                mechanism: CKM_ECDH1_DERIVE,
                pParameter: &mut p as *mut _ as *mut c_void,
                ulParameterLen: std::mem::size_of::<CK_ECDH1_DERIVE_PARAMS>() as CK_ULONG,
            };
            let mut sk = CKO_SECRET_KEY;
            let mut gk = CKK_GENERIC_SECRET;
            let mut len: CK_ULONG = 32;
            let mut no = CK_FALSE;
            let mut dt = [
                attr(CKA_CLASS, &mut sk),
                attr(CKA_KEY_TYPE, &mut gk),
                attr(CKA_VALUE_LEN, &mut len),
                attr(CKA_TOKEN, &mut no),
            ];
            let mut k: CK_OBJECT_HANDLE = 0;
            let rv = call!(f, C_DeriveKey(s, &mut m, o, dt.as_mut_ptr(), 4, &mut k));
            if rv == CKR_OK {
                call!(f, C_DestroyObject(s, k));
            }
            rv
        } else {
            let mut m = mech(CKM_ECDSA);
            let rv = call!(f, C_VerifyInit(s, &mut m, o));
            if rv == CKR_OK {
                let d = [0u8; 32];
                let sig = [0u8; 64];
                call!(
                    f,
                    C_Verify(s, d.as_ptr() as *mut u8, 32, sig.as_ptr() as *mut u8, 64)
                );
            }
            rv
        };
        c.any(&use_case, used, BROKEN_KEY_USE);
        call!(f, C_DestroyObject(s, o));
    }

    // Changing the curve of an existing key: read-only (SoftHSM2), or refused as a value.
    let mut bad = [0xde_u8, 0xad, 0xbe, 0xef];
    let mut t = [CK_ATTRIBUTE {
        type_: CKA_EC_PARAMS,
        pValue: bad.as_mut_ptr() as *mut c_void,
        ulValueLen: bad.len() as CK_ULONG,
    }];
    let mut o: CK_OBJECT_HANDLE = 0;
    let read_only_or_invalid = [CKR_ATTRIBUTE_READ_ONLY, CKR_ATTRIBUTE_VALUE_INVALID];
    let got = chk!(
        c,
        f,
        any read_only_or_invalid,
        "EC public key with CKA_EC_PARAMS not DER",
        C_CopyObject(s, x.ec_pub, t.as_mut_ptr(), 1, &mut o)
    );
    if got == CKR_OK {
        call!(f, C_DestroyObject(s, o));
    }
    chk!(
        c,
        f,
        any read_only_or_invalid,
        "EC public key CKA_EC_PARAMS not DER",
        C_SetAttributeValue(s, x.ec_pub, t.as_mut_ptr(), 1)
    );

    // ECDSA with an Ed25519 key: §5.13 (a key of the wrong type for the mechanism) CKR_KEY_TYPE_INCONSISTENT.
    // SoftHSM2 2.6.1 does not check the type and dies in EC_POINT_oct2point (the key's "edwards25519"
    // CKA_EC_PARAMS is no X9.62 curve): the fuzzer's state-dependent crash, the key's handle varying by run.
    let ed_pub = b.find_one(s, CKO_PUBLIC_KEY, "ed25519");
    let ed_priv = b.find_one(s, CKO_PRIVATE_KEY, "ed25519");
    // Each init in a session of its own: SoftHSM2 accepts some of them, and 2.40 has no way to cancel.
    for (name, m) in [
        ("CKM_ECDSA", CKM_ECDSA),
        ("CKM_ECDSA_SHA256", CKM_ECDSA_SHA256),
    ] {
        let mut mm = mech(m);
        let s2 = b.open(x.u, RW).expect("open session");
        chk!(
            c,
            f,
            CKR_KEY_TYPE_INCONSISTENT,
            format!("{name} with an Ed25519 public key"),
            C_VerifyInit(s2, &mut mm, ed_pub)
        );
        close(b, s2);
        let s2 = b.open(x.u, RW).expect("open session");
        chk!(
            c,
            f,
            CKR_KEY_TYPE_INCONSISTENT,
            format!("{name} with an Ed25519 private key"),
            C_SignInit(s2, &mut mm, ed_priv)
        );
        close(b, s2);
    }
    close(b, s);
}
