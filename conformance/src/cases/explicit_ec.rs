//! Valid explicit EC parameters pass.

use super::*;

// ------------------------------------------------------------------------------------ explicit EC parameters

/// Explicit `ECParameters` (X9.62 specifiedCurve) of named curves, as `openssl ecparam -name NAME -param_enc explicit
/// -outform DER` writes them, with each curve's base point G (uncompressed).
pub(super) const EXPLICIT_CURVES: &[(&str, &str, &str)] = &[
    (
        "P-256",
        "3081f7020101302c06072a8648ce3d0101022100ffffffff00000001000000000000000000000000ffffffffffffffffffffffff305b0420ffffffff00000001000000000000000000000000fffffffffffffffffffffffc04205ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604b031500c49d360886e704936a6678e1139d26b7819f7e900441046b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c2964fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5022100ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551020101",
        "046b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c2964fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5",
    ),
    (
        "P-384",
        "30820157020101303c06072a8648ce3d0101023100fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000ffffffff307b0430fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000fffffffc0430b3312fa7e23ee7e4988e056be3f82d19181d9c6efe8141120314088f5013875ac656398d8a2ed19d2a85c8edd3ec2aef031500a335926aa319a27a1d00896a6773a4827acdac73046104aa87ca22be8b05378eb1c71ef320ad746e1d3b628ba79b9859f741e082542a385502f25dbf55296c3a545e3872760ab73617de4a96262c6f5d9e98bf9292dc29f8f41dbd289a147ce9da3113b5f0b8c00a60b1ce1d7e819d7a431d7c90ea0e5f023100ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973020101",
        "04aa87ca22be8b05378eb1c71ef320ad746e1d3b628ba79b9859f741e082542a385502f25dbf55296c3a545e3872760ab73617de4a96262c6f5d9e98bf9292dc29f8f41dbd289a147ce9da3113b5f0b8c00a60b1ce1d7e819d7a431d7c90ea0e5f",
    ),
    (
        "P-521",
        "308201c3020101304d06072a8648ce3d0101024201ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff30819f044201fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffc04420051953eb9618e1c9a1f929a21a0b68540eea2da725b99b315f3b8b489918ef109e156193951ec7e937b1652c0bd3bb1bf073573df883d2c34f1ef451fd46b503f00031500d09e8800291cb85396cc6717393284aaa0da64ba0481850400c6858e06b70404e9cd9e3ecb662395b4429c648139053fb521f828af606b4d3dbaa14b5e77efe75928fe1dc127a2ffa8de3348b3c1856a429bf97e7e31c2e5bd66011839296a789a3bc0045c8a5fb42c7d1bd998f54449579b446817afbd17273e662c97ee72995ef42640c550b9013fad0761353c7086a272c24088be94769fd16650024201fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffa51868783bf2f966b7fcc0148f709a5d03bb5c9b8899c47aebb6fb71e91386409020101",
        "0400c6858e06b70404e9cd9e3ecb662395b4429c648139053fb521f828af606b4d3dbaa14b5e77efe75928fe1dc127a2ffa8de3348b3c1856a429bf97e7e31c2e5bd66011839296a789a3bc0045c8a5fb42c7d1bd998f54449579b446817afbd17273e662c97ee72995ef42640c550b9013fad0761353c7086a272c24088be94769fd16650",
    ),
    (
        "secp256k1",
        "3081e0020101302c06072a8648ce3d0101022100fffffffffffffffffffffffffffffffffffffffffffffffffffffffefffffc2f3044042000000000000000000000000000000000000000000000000000000000000000000420000000000000000000000000000000000000000000000000000000000000000704410479be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8022100fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141020101",
        "0479be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8",
    ),
];

pub(super) fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// Valid explicit domain parameters are keys like any other (SoftHSM2 accepts and uses them; the bridge used to
/// refuse them): per curve, a public key at G and a private key with d = 1 (so G is its public point) are created
/// with explicit `CKA_EC_PARAMS`, the private key signs and the public key verifies the signature.
pub(super) fn explicit_ec_params(c: &mut Checks, b: &'static Bridge) {
    let x = fixture(b);
    let f = b.f;
    let s = x.s;
    for (name, params, g) in EXPLICIT_CURVES {
        let mut params = unhex(params);
        let g = unhex(g);
        let field = (g.len() - 1) / 2;
        // CKA_EC_POINT: DER OCTET STRING of G.
        let mut point = vec![0x04];
        if g.len() > 127 {
            point.extend([0x81, g.len() as u8]);
        } else {
            point.push(g.len() as u8);
        }
        point.extend(&g);
        let mut one = vec![0u8; field];
        one[field - 1] = 1;
        let public = create_key(
            c,
            b,
            s,
            (CKO_PUBLIC_KEY, CKA_VERIFY),
            &mut params,
            (CKA_EC_POINT, &mut point),
            &format!("{name}: public key with explicit parameters"),
        );
        let private = create_key(
            c,
            b,
            s,
            (CKO_PRIVATE_KEY, CKA_SIGN),
            &mut params,
            (CKA_VALUE, &mut one),
            &format!("{name}: private key with explicit parameters"),
        );
        let digest = [0x5au8; 32];
        let sig = b.ecdsa_sign(s, private, &digest);
        c.that(
            &format!("{name}: the private key signs"),
            sig.is_ok(),
            format!("{sig:?}"),
        );
        let verified = sig.map(|sig| b.ecdsa_verify(s, public, &digest, &sig));
        c.that(
            &format!("{name}: the public key verifies that signature"),
            verified == Ok(CKR_OK),
            format!("{verified:?}"),
        );
        for o in [public, private] {
            if o != 0 {
                call!(f, C_DestroyObject(s, o));
            }
        }
    }
}

/// C_CreateObject of a session EC key of `class` usable for `usage` (CKA_VERIFY or CKA_SIGN), with `params` as
/// CKA_EC_PARAMS and `key` (CKA_EC_POINT or CKA_VALUE): the row `case` wants CKR_OK; the handle (0 if refused).
fn create_key(
    c: &mut Checks,
    b: &Bridge,
    s: CK_SESSION_HANDLE,
    (class, usage): (CK_OBJECT_CLASS, CK_ATTRIBUTE_TYPE),
    params: &mut [u8],
    (key_type, key): (CK_ATTRIBUTE_TYPE, &mut [u8]),
    case: &str,
) -> CK_OBJECT_HANDLE {
    let (f, mut class, mut kt, mut no, mut yes) = (b.f, class, CKK_EC, CK_FALSE, CK_TRUE);
    let bytes = |type_: CK_ATTRIBUTE_TYPE, v: &mut [u8]| CK_ATTRIBUTE {
        type_,
        pValue: v.as_mut_ptr() as *mut c_void,
        ulValueLen: v.len() as CK_ULONG,
    };
    let mut t = [
        attr(CKA_CLASS, &mut class),
        attr(CKA_KEY_TYPE, &mut kt),
        attr(CKA_TOKEN, &mut no),
        attr(usage, &mut yes),
        bytes(CKA_EC_PARAMS, params),
        bytes(key_type, key),
    ];
    let mut handle: CK_OBJECT_HANDLE = 0;
    chk!(
        c,
        f,
        CKR_OK,
        case,
        C_CreateObject(s, t.as_mut_ptr(), t.len() as CK_ULONG, &mut handle)
    );
    handle
}
