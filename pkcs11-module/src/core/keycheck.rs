//! Key material the bridge refuses before it reaches a backend: EC (Weierstrass) keys whose `CKA_EC_PARAMS` names
//! no curve, and `CKA_EC_POINT` values that are no encoded point.
//!
//! Why: SoftHSM2 (2.6.1, over OpenSSL 3) stores such a key without complaint and then dereferences a NULL curve in
//! OpenSSL's `EC_POINT_oct2point` when the key is used — `C_VerifyInit` with an EC public key, `C_DeriveKey`
//! (ECDH) with an EC private key — killing the host process (SIGSEGV). Found by the fuzzer
//! (`conformance/fuzz/crashes/`), reproduced by the matrix section "malformed EC keys". The spec (§4.9 public key
//! objects, §2.3 ECDSA in the current mechanisms document) defines `CKA_EC_PARAMS` as the DER encoding of an
//! ANSI X9.62 `Parameters` value and `CKA_EC_POINT` as the DER encoding of an `ECPoint` (an OCTET STRING), so a
//! value that is neither is `CKR_ATTRIBUTE_VALUE_INVALID` (§5.1.6 "an invalid value was specified for a particular
//! attribute in a template"), which `C_CreateObject`, `C_CopyObject`, `C_SetAttributeValue` and `C_UnwrapKey` all
//! list.
//!
//! What is accepted for a `CKK_EC` key's `CKA_EC_PARAMS`: the DER OBJECT IDENTIFIER of a named curve OpenSSL 3
//! knows (`openssl ecparam -list_curves`; every curve of SEC 2, X9.62, NIST, Brainpool, WTLS and SM2), or explicit
//! `ECParameters` that describe a valid prime-field curve (ecparams.rs: SoftHSM2 accepts and uses those; OpenSSL
//! turns malformed ones into the NULL curve). Refused: bytes that are no DER, unknown OIDs, malformed or degenerate
//! explicit parameters, characteristic-two explicit parameters, `implicitlyCA` and curve-name strings
//! (meaningful for Edwards and Montgomery curves only, which are `CKK_EC_EDWARDS` / `CKK_EC_MONTGOMERY` keys and
//! are not checked here: SoftHSM2 fails those cleanly).
//!
//! The check is in the core, ahead of every backend and slot kind (mirror slots included): it is the spec's rule
//! for any token, the remote backends accept only named curves anyway, and one place covers every function that
//! makes or changes a key.

use cryptoki_sys::*;
use der::asn1::ObjectIdentifier;
use der::Decode;
use p11bridge_backends::remote::der::unwrap_octets;
use p11bridge_backends::{attr_bytes, Error, Result, Template};
use sec1::point::Tag;

const fn oid(dotted: &str) -> ObjectIdentifier {
    ObjectIdentifier::new_unwrap(dotted)
}

/// The named curves of OpenSSL 3: `openssl ecparam -list_curves` less the two Oakley curves, which have no OID. No
/// crate lists them (const-oid's database knows 14 of them), so this table is the one list.
const NAMED_CURVES: [(&str, ObjectIdentifier); 80] = [
    ("secp112r1", oid("1.3.132.0.6")),
    ("secp112r2", oid("1.3.132.0.7")),
    ("secp128r1", oid("1.3.132.0.28")),
    ("secp128r2", oid("1.3.132.0.29")),
    ("secp160k1", oid("1.3.132.0.9")),
    ("secp160r1", oid("1.3.132.0.8")),
    ("secp160r2", oid("1.3.132.0.30")),
    ("secp192k1", oid("1.3.132.0.31")),
    ("secp224k1", oid("1.3.132.0.32")),
    ("secp224r1", oid("1.3.132.0.33")),
    ("secp256k1", oid("1.3.132.0.10")),
    ("secp384r1", oid("1.3.132.0.34")),
    ("secp521r1", oid("1.3.132.0.35")),
    ("prime192v1", oid("1.2.840.10045.3.1.1")),
    ("prime192v2", oid("1.2.840.10045.3.1.2")),
    ("prime192v3", oid("1.2.840.10045.3.1.3")),
    ("prime239v1", oid("1.2.840.10045.3.1.4")),
    ("prime239v2", oid("1.2.840.10045.3.1.5")),
    ("prime239v3", oid("1.2.840.10045.3.1.6")),
    ("prime256v1", oid("1.2.840.10045.3.1.7")),
    ("sect113r1", oid("1.3.132.0.4")),
    ("sect113r2", oid("1.3.132.0.5")),
    ("sect131r1", oid("1.3.132.0.22")),
    ("sect131r2", oid("1.3.132.0.23")),
    ("sect163k1", oid("1.3.132.0.1")),
    ("sect163r1", oid("1.3.132.0.2")),
    ("sect163r2", oid("1.3.132.0.15")),
    ("sect193r1", oid("1.3.132.0.24")),
    ("sect193r2", oid("1.3.132.0.25")),
    ("sect233k1", oid("1.3.132.0.26")),
    ("sect233r1", oid("1.3.132.0.27")),
    ("sect239k1", oid("1.3.132.0.3")),
    ("sect283k1", oid("1.3.132.0.16")),
    ("sect283r1", oid("1.3.132.0.17")),
    ("sect409k1", oid("1.3.132.0.36")),
    ("sect409r1", oid("1.3.132.0.37")),
    ("sect571k1", oid("1.3.132.0.38")),
    ("sect571r1", oid("1.3.132.0.39")),
    ("c2pnb163v1", oid("1.2.840.10045.3.0.1")),
    ("c2pnb163v2", oid("1.2.840.10045.3.0.2")),
    ("c2pnb163v3", oid("1.2.840.10045.3.0.3")),
    ("c2pnb176v1", oid("1.2.840.10045.3.0.4")),
    ("c2tnb191v1", oid("1.2.840.10045.3.0.5")),
    ("c2tnb191v2", oid("1.2.840.10045.3.0.6")),
    ("c2tnb191v3", oid("1.2.840.10045.3.0.7")),
    ("c2pnb208w1", oid("1.2.840.10045.3.0.10")),
    ("c2tnb239v1", oid("1.2.840.10045.3.0.11")),
    ("c2tnb239v2", oid("1.2.840.10045.3.0.12")),
    ("c2tnb239v3", oid("1.2.840.10045.3.0.13")),
    ("c2pnb272w1", oid("1.2.840.10045.3.0.16")),
    ("c2pnb304w1", oid("1.2.840.10045.3.0.17")),
    ("c2tnb359v1", oid("1.2.840.10045.3.0.18")),
    ("c2pnb368w1", oid("1.2.840.10045.3.0.19")),
    ("c2tnb431r1", oid("1.2.840.10045.3.0.20")),
    ("wap-wsg-idm-ecid-wtls1", oid("2.23.43.1.4.1")),
    ("wap-wsg-idm-ecid-wtls3", oid("2.23.43.1.4.3")),
    ("wap-wsg-idm-ecid-wtls4", oid("2.23.43.1.4.4")),
    ("wap-wsg-idm-ecid-wtls5", oid("2.23.43.1.4.5")),
    ("wap-wsg-idm-ecid-wtls6", oid("2.23.43.1.4.6")),
    ("wap-wsg-idm-ecid-wtls7", oid("2.23.43.1.4.7")),
    ("wap-wsg-idm-ecid-wtls8", oid("2.23.43.1.4.8")),
    ("wap-wsg-idm-ecid-wtls9", oid("2.23.43.1.4.9")),
    ("wap-wsg-idm-ecid-wtls10", oid("2.23.43.1.4.10")),
    ("wap-wsg-idm-ecid-wtls11", oid("2.23.43.1.4.11")),
    ("wap-wsg-idm-ecid-wtls12", oid("2.23.43.1.4.12")),
    ("brainpoolP160r1", oid("1.3.36.3.3.2.8.1.1.1")),
    ("brainpoolP160t1", oid("1.3.36.3.3.2.8.1.1.2")),
    ("brainpoolP192r1", oid("1.3.36.3.3.2.8.1.1.3")),
    ("brainpoolP192t1", oid("1.3.36.3.3.2.8.1.1.4")),
    ("brainpoolP224r1", oid("1.3.36.3.3.2.8.1.1.5")),
    ("brainpoolP224t1", oid("1.3.36.3.3.2.8.1.1.6")),
    ("brainpoolP256r1", oid("1.3.36.3.3.2.8.1.1.7")),
    ("brainpoolP256t1", oid("1.3.36.3.3.2.8.1.1.8")),
    ("brainpoolP320r1", oid("1.3.36.3.3.2.8.1.1.9")),
    ("brainpoolP320t1", oid("1.3.36.3.3.2.8.1.1.10")),
    ("brainpoolP384r1", oid("1.3.36.3.3.2.8.1.1.11")),
    ("brainpoolP384t1", oid("1.3.36.3.3.2.8.1.1.12")),
    ("brainpoolP512r1", oid("1.3.36.3.3.2.8.1.1.13")),
    ("brainpoolP512t1", oid("1.3.36.3.3.2.8.1.1.14")),
    ("SM2", oid("1.2.156.10197.1.301")),
];

/// Whether `v` is the DER of a named curve the bridge lets through: exactly the DER of one of those OIDs (a DER
/// value has one encoding, so any other length form, trailing bytes or a non-minimal arc is refused).
pub fn known_curve(v: &[u8]) -> bool {
    ObjectIdentifier::from_der(v).is_ok_and(|o| NAMED_CURVES.iter().any(|(_, c)| *c == o))
}

/// The coordinates of a SEC 1 encoded point, whatever the curve: only their shape is known here.
pub(super) enum Sec1Point<'a> {
    /// `04 X Y`
    Uncompressed { x: &'a [u8], y: &'a [u8] },
    /// `02 X` (even Y) or `03 X` (odd Y)
    Compressed { x: &'a [u8], odd_y: bool },
}

/// A SEC 1 point: uncompressed with X and Y of one length, or compressed, with non-empty coordinates. Refused: the
/// point at infinity (`00`, no valid key), hybrid (`06`/`07`) and compact (`05`) forms, which PKCS#11 does not use.
pub(super) fn sec1_point(p: &[u8]) -> Option<Sec1Point<'_>> {
    let (&tag, coordinates) = p.split_first()?;
    if coordinates.is_empty() {
        return None;
    }
    match Tag::from_u8(tag).ok()? {
        Tag::Uncompressed if coordinates.len() % 2 == 0 => {
            let (x, y) = coordinates.split_at(coordinates.len() / 2);
            Some(Sec1Point::Uncompressed { x, y })
        }
        Tag::CompressedEvenY => Some(Sec1Point::Compressed {
            x: coordinates,
            odd_y: false,
        }),
        Tag::CompressedOddY => Some(Sec1Point::Compressed {
            x: coordinates,
            odd_y: true,
        }),
        _ => None,
    }
}

/// `CKA_EC_POINT`: the DER OCTET STRING of a SEC 1 point, or (what many applications pass, and SoftHSM2 and the
/// remote backends accept) the raw point. The OCTET STRING's length may be in any definite form, minimal or not
/// (`unwrap_octets`, the bridge's one BER-tolerant reader; `der` reads only canonical DER).
pub fn ec_point_ok(v: &[u8]) -> bool {
    unwrap_octets(v).and_then(sec1_point).is_some() || sec1_point(v).is_some()
}

/// Every value of attribute `ty` in the template (a template may repeat an attribute; upstream modules differ in
/// which occurrence wins, so all are checked).
/// Whether a mechanism uses an EC (Weierstrass) key's curve: ECDSA in every hash variant, ECDH and ECMQV.
pub fn uses_ec_curve(mech: CK_MECHANISM_TYPE) -> bool {
    (CKM_ECDSA..=CKM_ECDH_AES_KEY_WRAP).contains(&mech)
}

/// Checks, before a key is used with an EC mechanism `mech`, the key's type and the curve its backend stores for
/// it: ECDSA needs a `CKK_EC` key, ECDH and ECMQV a `CKK_EC` or (3.0) `CKK_EC_MONTGOMERY` one; any other type is
/// `CKR_KEY_TYPE_INCONSISTENT` (§5.13), and so is a `CKK_EC` key that names no usable curve. SoftHSM2 2.6.1 does not
/// check the type itself: ECDSA with an Ed25519 key ("edwards25519" as its CKA_EC_PARAMS) dies in
/// `EC_POINT_oct2point` — the fuzzer's state-dependent crash (the bridge's handle for that key varied from run to
/// run). The creation checks keep malformed curves out; this is the second fence. A key whose attributes cannot be
/// read is left to the backend. A `CKK_EC` key with a usable curve passes for every EC mechanism and its handle
/// remembers it (`Handles::ec_key_passed`): the attributes are read once per object, not on every init (≈ 30 µs on
/// SoftHSM2 per `C_SignInit`).
pub fn usable_ec_key(
    handles: &super::handles::Handles,
    bs: &mut dyn p11bridge_backends::BackendSession,
    loc: super::handles::Located,
    mech: CK_MECHANISM_TYPE,
) -> Result<()> {
    if handles.ec_key_checked(loc) {
        return Ok(());
    }
    if ec_key_verdict(bs, loc.1, mech)? {
        handles.ec_key_passed(loc);
    }
    Ok(())
}

/// `usable_ec_key` without the memory: `true` when the key is `CKK_EC` with a usable curve (a verdict that holds for
/// the object's life), `false` when it passes for this mechanism only or its attributes could not be read.
fn ec_key_verdict(
    bs: &mut dyn p11bridge_backends::BackendSession,
    obj: p11bridge_backends::ObjRef,
    mech: CK_MECHANISM_TYPE,
) -> Result<bool> {
    let mut kt: CK_KEY_TYPE = CK_UNAVAILABLE_INFORMATION;
    let mut params = [0u8; 1024];
    let mut t = [
        p11bridge_backends::attribute(CKA_KEY_TYPE, &mut kt),
        p11bridge_backends::attribute(CKA_EC_PARAMS, &mut params[..]),
    ];
    // A failed read (a concurrent C_Logout hid the private key, a value longer than the buffer, ...) leaves the
    // lengths unreliable: the backend decides then, as it would without the fence.
    let rv = bs.get_attributes(obj, &mut t);
    if kt == CK_UNAVAILABLE_INFORMATION || t[0].ulValueLen == CK_UNAVAILABLE_INFORMATION {
        return Ok(false);
    }
    let ecdsa = (CKM_ECDSA..=CKM_ECDSA_SHA3_512).contains(&mech);
    match kt {
        CKK_EC => {}
        CKK_EC_MONTGOMERY if !ecdsa => return Ok(false),
        _ => {
            return Err(Error::with(
                CKR_KEY_TYPE_INCONSISTENT,
                format!(
                    "{} needs {} key; this key's CKA_KEY_TYPE is {kt:#x}",
                    super::audit::mechanism_name(mech),
                    if ecdsa {
                        "an EC (CKK_EC)"
                    } else {
                        "an EC or Montgomery (CKK_EC, CKK_EC_MONTGOMERY)"
                    }
                ),
            ))
        }
    }
    if rv != CKR_OK
        || t[1].ulValueLen == CK_UNAVAILABLE_INFORMATION
        || t[1].ulValueLen as usize > params.len()
    {
        return Ok(false);
    }
    let v = &params[..t[1].ulValueLen as usize];
    if known_curve(v) {
        return Ok(true);
    }
    match super::ecparams::check(v) {
        Ok(()) => Ok(true),
        Err(why) => Err(Error::with(
            CKR_KEY_TYPE_INCONSISTENT,
            format!(
                "the EC key's CKA_EC_PARAMS, as its backend stores it, names no usable curve ({why}); the bridge does not use it"
            ),
        )),
    }
}

fn values<'a>(t: &Template<'a>, ty: CK_ATTRIBUTE_TYPE) -> Result<Vec<&'a [u8]>> {
    t.raw()
        .iter()
        .filter(|a| a.type_ == ty)
        .map(attr_bytes)
        .collect()
}

/// Whether any `CKA_KEY_TYPE` of the template is `CKK_EC` (`None`: the template names no key type).
fn names_ec(t: &Template) -> Result<Option<bool>> {
    let kts = values(t, CKA_KEY_TYPE)?;
    if kts.is_empty() {
        return Ok(None);
    }
    Ok(Some(kts.iter().any(|v| {
        v.len() == std::mem::size_of::<CK_ULONG>()
            && CK_ULONG::from_ne_bytes(v[..].try_into().unwrap_or_default()) == CKK_EC
    })))
}

/// Whether the template sets EC key material at all (the cheap test before anything else).
pub fn touches_ec(t: &Template) -> bool {
    t.raw()
        .iter()
        .any(|a| a.type_ == CKA_EC_PARAMS || a.type_ == CKA_EC_POINT)
}

/// Checks the EC key material of a template for a key that is (or, with `ec_key`, is known to be) a `CKK_EC` key.
/// `ec_key`: what the caller knows of the object's key type when the template does not say (the existing object
/// of `C_SetAttributeValue` / `C_CopyObject`), `None` if unknown.
pub fn check(t: &Template, ec_key: Option<bool>) -> Result<()> {
    if !touches_ec(t) {
        return Ok(());
    }
    // EC if anything says so: a CKA_KEY_TYPE of the template, the existing object, or the mechanism (a template
    // that also names another key type must not let EC material past the check).
    let is_ec = names_ec(t)? == Some(true) || ec_key == Some(true);
    if !is_ec {
        return Ok(());
    }
    for v in values(t, CKA_EC_PARAMS)? {
        if known_curve(v) {
            continue;
        }
        // Not a named curve: explicit parameters pass when they describe a valid curve (ecparams.rs).
        if let Err(why) = super::ecparams::check(v) {
            return Err(Error::with(
                CKR_ATTRIBUTE_VALUE_INVALID,
                format!(
                    "CKA_EC_PARAMS of an EC key is neither the DER OID of a known named curve nor valid explicit parameters ({why})"
                ),
            ));
        }
    }
    for v in values(t, CKA_EC_POINT)? {
        if !ec_point_ok(v) {
            return Err(Error::with(
                CKR_ATTRIBUTE_VALUE_INVALID,
                "CKA_EC_POINT of an EC key is not an encoded point",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    /// `openssl ecparam -name prime256v1 -param_enc explicit -outform DER`
    const EXPLICIT_P256: &str = "3081f7020101302c06072a8648ce3d0101022100ffffffff00000001000000000000000000000000ffffffffffffffffffffffff305b0420ffffffff00000001000000000000000000000000fffffffffffffffffffffffc04205ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604b031500c49d360886e704936a6678e1139d26b7819f7e900441046b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c2964fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5022100ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551020101";

    #[test]
    fn curves_and_points() {
        assert!(known_curve(&[
            0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07
        ]));
        assert!(!known_curve(&[0xde, 0xad, 0xbe, 0xef]));
        assert!(!known_curve(&[]));
        assert!(!known_curve(&[0x06, 0x03, 0x2a, 0x03, 0x04]));
        assert!(!known_curve(&[0x05, 0x00]));
        let mut p = vec![0x04, 0x41, 0x04];
        p.extend([7u8; 64]);
        assert!(ec_point_ok(&p));
        assert!(ec_point_ok(&p[2..]));
        assert!(!ec_point_ok(&[0x04, 0x00]));
        assert!(!ec_point_ok(&[0x04]));
        assert!(!ec_point_ok(&[]));
        assert!(!ec_point_ok(&[0x05, 0x01, 0x04]));
        let mut long = vec![0x04, 0x81, 0x85, 0x04];
        long.extend([1u8; 132]);
        assert!(ec_point_ok(&long));
    }

    /// The named curves accepted: OpenSSL 3's 80, each exactly as `openssl ecparam -name NAME -outform DER` writes
    /// its OID: every arc of the list enumerated, the accepted last components pinned (31 + 7 + 16 + 11 + 14 + SM2).
    #[test]
    fn named_curves_pinned() {
        let accepted: Vec<Vec<u8>> = (0u8..=0x30)
            .flat_map(|x| {
                [
                    vec![0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, x],
                    vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, x],
                    vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x00, x],
                    vec![0x06, 0x05, 0x67, 0x2b, 0x01, 0x04, x],
                    vec![
                        0x06, 0x09, 0x2b, 0x24, 0x03, 0x03, 0x02, 0x08, 0x01, 0x01, x,
                    ],
                ]
            })
            .filter(|v| known_curve(v))
            .collect();
        let arc = |prefix: &[u8]| {
            let mut v: Vec<u8> = accepted
                .iter()
                .filter(|c| c.starts_with(prefix))
                .map(|c| c[c.len() - 1])
                .collect();
            v.sort();
            v
        };
        // SEC 2 (1.3.132.0.x), X9.62 prime (1.2.840.10045.3.1.x) and binary (…3.0.x), WTLS (2.23.43.1.4.x),
        // Brainpool (1.3.36.3.3.2.8.1.1.x).
        assert_eq!(
            arc(&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00]),
            [
                1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 16, 17, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31,
                32, 33, 34, 35, 36, 37, 38, 39
            ]
        );
        assert_eq!(
            arc(&[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01]),
            [1, 2, 3, 4, 5, 6, 7]
        );
        assert_eq!(
            arc(&[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x00]),
            [1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 16, 17, 18, 19, 20]
        );
        assert_eq!(
            arc(&[0x06, 0x05, 0x67, 0x2b, 0x01, 0x04]),
            [1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
        );
        assert_eq!(
            arc(&[0x06, 0x09, 0x2b, 0x24, 0x03, 0x03, 0x02, 0x08, 0x01, 0x01]),
            (1..=14).collect::<Vec<u8>>()
        );
        // By OpenSSL's names, as `openssl ecparam -name NAME -outform DER` writes them.
        let der_of = |name: &str| {
            let (_, o) = NAMED_CURVES.iter().find(|(n, _)| *n == name).unwrap();
            der::Encode::to_der(o).unwrap()
        };
        assert_eq!(der_of("prime256v1"), P256);
        assert_eq!(der_of("secp384r1"), hex("06052b81040022"));
        assert_eq!(der_of("c2tnb431r1"), hex("06082a8648ce3d030014"));
        assert_eq!(der_of("wap-wsg-idm-ecid-wtls12"), hex("0605672b01040c"));
        assert_eq!(der_of("brainpoolP512t1"), hex("06092b240303020801010e"));
        assert_eq!(der_of("SM2"), hex("06082a811ccf5501822d"));
        // SM2 (1.2.156.10197.1.301) is the 80th.
        let sm2 = [0x06, 0x08, 0x2a, 0x81, 0x1c, 0xcf, 0x55, 0x01, 0x82, 0x2d];
        assert!(known_curve(&sm2));
        assert_eq!(accepted.len() + 1, 80);
    }

    /// What `known_curve` refuses: anything but the exact DER of one of those OIDs.
    #[test]
    fn named_curve_encodings_refused() {
        let refused: &[(&str, Vec<u8>)] = &[
            ("empty", vec![]),
            ("tag only", vec![0x06]),
            ("truncated", P256[..9].to_vec()),
            ("trailing byte", cat(&[P256, &[0x00]])),
            ("trailing OID", cat(&[P256, P256])),
            (
                "long-form length (non-minimal)",
                cat(&[&[0x06, 0x81, 0x08], &P256[2..]]),
            ),
            (
                "long-form length with a leading zero",
                cat(&[&[0x06, 0x82, 0x00, 0x08], &P256[2..]]),
            ),
            (
                "indefinite length",
                cat(&[&[0x06, 0x80], &P256[2..], &[0, 0]]),
            ),
            (
                "huge length",
                cat(&[&[0x06, 0x84, 0xff, 0xff, 0xff, 0xff], &P256[2..]]),
            ),
            ("length too short", cat(&[&[0x06, 0x07], &P256[2..]])),
            ("length too long", cat(&[&[0x06, 0x09], &P256[2..]])),
            ("OCTET STRING tag", cat(&[&[0x04], &P256[1..]])),
            ("RELATIVE-OID tag", cat(&[&[0x0d], &P256[1..]])),
            ("constructed OID tag", cat(&[&[0x26], &P256[1..]])),
            (
                "non-minimal arc (0x80 padding)",
                vec![
                    0x06, 0x09, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x80, 0x07,
                ],
            ),
            (
                "unknown arc of X9.62",
                vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x08],
            ),
            (
                "unknown SEC 2 arc",
                vec![0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0b],
            ),
            (
                "ecPublicKey (no curve)",
                vec![0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01],
            ),
            ("Ed25519 OID", vec![0x06, 0x03, 0x2b, 0x65, 0x70]),
            ("X25519 OID", vec![0x06, 0x03, 0x2b, 0x65, 0x6e]),
            ("curve name string", b"\x13\x0cedwards25519".to_vec()),
            ("implicitlyCA", vec![0x05, 0x00]),
            ("explicit parameters", hex(EXPLICIT_P256)),
        ];
        for (what, v) in refused {
            assert!(!known_curve(v), "{what} accepted");
        }
    }

    /// `CKA_EC_POINT` as accepted today: a DER OCTET STRING (definite length, any length form) of a SEC 1 point, or
    /// the raw point; the point's shape only (its length against the curve and whether it lies on it are the
    /// token's business).
    #[test]
    fn ec_points_pinned() {
        let xy = [7u8; 64];
        let x = [9u8; 32];
        let u: Vec<u8> = cat(&[&[0x04], &xy]); // uncompressed, not on any curve
        let cases: &[(&str, Vec<u8>, bool)] = &[
            ("uncompressed, DER", cat(&[&[0x04, 0x41], &u]), true),
            ("uncompressed, raw", u.clone(), true),
            (
                "compressed even, DER",
                cat(&[&[0x04, 0x21, 0x02], &x]),
                true,
            ),
            ("compressed odd, DER", cat(&[&[0x04, 0x21, 0x03], &x]), true),
            ("compressed even, raw", cat(&[&[0x02], &x]), true),
            ("compressed odd, raw", cat(&[&[0x03], &x]), true),
            ("compressed, 1-byte x", vec![0x02, 0x01], true),
            ("uncompressed, 2-byte x||y", vec![0x04, 0x01, 0x02], true),
            (
                "uncompressed, odd coordinate bytes, raw",
                cat(&[&[0x04], &xy[..63]]),
                false,
            ),
            (
                "uncompressed, odd coordinate bytes, DER",
                cat(&[&[0x04, 0x40, 0x04], &xy[..63]]),
                false,
            ),
            ("hybrid 06, raw", cat(&[&[0x06], &xy]), false),
            ("hybrid 07, raw", cat(&[&[0x07], &xy]), false),
            // Not a point as DER, but 04 and 66 bytes taken raw (as are the next rows).
            ("hybrid 06, DER", cat(&[&[0x04, 0x41, 0x06], &xy]), true),
            ("compact 05, raw", cat(&[&[0x05], &x]), false),
            ("infinity, raw", vec![0x00], false),
            ("infinity, DER", vec![0x04, 0x01, 0x00], true),
            ("empty", vec![], false),
            ("empty OCTET STRING", vec![0x04, 0x00], false),
            ("tag only", vec![0x04], false),
            ("compressed, no x", vec![0x02], false),
            ("compressed, no x, DER", vec![0x04, 0x01, 0x03], true),
            (
                "long-form length (non-minimal)",
                cat(&[&[0x04, 0x81, 0x41], &u]),
                true,
            ),
            (
                "long-form length with leading zeros",
                cat(&[&[0x04, 0x84, 0x00, 0x00, 0x00, 0x41], &u]),
                true,
            ),
            (
                "long-form, 2 bytes",
                cat(&[&[0x04, 0x82, 0x00, 0x41], &u]),
                true,
            ),
            (
                "5-byte length",
                cat(&[&[0x04, 0x85, 0, 0, 0, 0, 0x41], &u]),
                false,
            ),
            // 04 80 ... is no DER; taken raw it is 04 and an even number of bytes.
            (
                "indefinite length, 68 bytes",
                cat(&[&[0x04, 0x80], &u, &[0, 0]]),
                true,
            ),
            (
                "indefinite length, 67 bytes",
                cat(&[&[0x04, 0x80], &u, &[0]]),
                false,
            ),
            ("truncated DER", cat(&[&[0x04, 0x41], &u[..64]]), false),
            ("length short by one", cat(&[&[0x04, 0x40], &u]), true),
            ("one trailing byte", cat(&[&[0x04, 0x41], &u, &[0]]), false),
            // Two trailing bytes: no DER, but raw it is 04 and 68 bytes.
            (
                "two trailing bytes",
                cat(&[&[0x04, 0x41], &u, &[0, 0]]),
                true,
            ),
            (
                "huge length (raw: 04 and 70 bytes)",
                cat(&[&[0x04, 0x84, 0xff, 0xff, 0xff, 0xff], &u]),
                true,
            ),
            (
                "huge length (raw: 04 and 71 bytes)",
                cat(&[&[0x04, 0x84, 0xff, 0xff, 0xff, 0xff], &u, &[0]]),
                false,
            ),
            // A BIT STRING (as in a SubjectPublicKeyInfo) starts with 03: raw, a "compressed point".
            ("BIT STRING", cat(&[&[0x03, 0x42, 0x00], &u]), true),
            ("SEQUENCE", cat(&[&[0x30, 0x41], &u]), false),
            (
                "OCTET STRING in an OCTET STRING",
                cat(&[&[0x04, 0x43, 0x04, 0x41], &u]),
                true,
            ),
            (
                "P-521, DER",
                cat(&[&[0x04, 0x81, 0x85, 0x04], &[1u8; 132]]),
                true,
            ),
            ("P-521, raw", cat(&[&[0x04], &[1u8; 132]]), true),
        ];
        let wrong: Vec<&str> = cases
            .iter()
            .filter(|(_, v, ok)| ec_point_ok(v) != *ok)
            .map(|(what, _, _)| *what)
            .collect();
        assert!(wrong.is_empty(), "{wrong:?}");
    }

    fn attr(ty: CK_ATTRIBUTE_TYPE, v: &[u8]) -> CK_ATTRIBUTE {
        CK_ATTRIBUTE {
            type_: ty,
            pValue: v.as_ptr() as *mut std::ffi::c_void,
            ulValueLen: v.len() as CK_ULONG,
        }
    }

    #[test]
    fn templates_pinned() {
        let ec = CKK_EC.to_ne_bytes();
        let rsa = CKK_RSA.to_ne_bytes();
        let ed = CKK_EC_EDWARDS.to_ne_bytes();
        let bad: &[u8] = &[0xde, 0xad, 0xbe, 0xef];
        let explicit = hex(EXPLICIT_P256);
        let mut point = vec![0x04, 0x41, 0x04];
        point.extend([7u8; 64]);
        let (kt, params, pt) = (CKA_KEY_TYPE, CKA_EC_PARAMS, CKA_EC_POINT);
        let invalid = Err(CKR_ATTRIBUTE_VALUE_INVALID);
        // (what, template, what the caller knows of the object, result)
        type Case<'a> = (
            &'a str,
            Vec<(CK_ATTRIBUTE_TYPE, &'a [u8])>,
            Option<bool>,
            std::result::Result<(), CK_RV>,
        );
        let cases: Vec<Case> = vec![
            ("named curve", vec![(kt, &ec), (params, P256)], None, Ok(())),
            (
                "explicit parameters",
                vec![(kt, &ec), (params, &explicit)],
                None,
                Ok(()),
            ),
            (
                "DER point",
                vec![(kt, &ec), (params, P256), (pt, &point)],
                None,
                Ok(()),
            ),
            (
                "raw point",
                vec![(kt, &ec), (pt, &point[2..])],
                None,
                Ok(()),
            ),
            (
                "bad parameters",
                vec![(kt, &ec), (params, bad)],
                None,
                invalid,
            ),
            (
                "empty parameters",
                vec![(kt, &ec), (params, &[])],
                None,
                invalid,
            ),
            (
                "truncated explicit",
                vec![(kt, &ec), (params, &explicit[..explicit.len() - 1])],
                None,
                invalid,
            ),
            (
                "empty OCTET STRING point",
                vec![(kt, &ec), (pt, &[0x04, 0x00])],
                None,
                invalid,
            ),
            (
                "hybrid point",
                vec![(kt, &ec), (params, P256), (pt, &[0x06, 1, 2])],
                None,
                invalid,
            ),
            // Every occurrence of a repeated attribute is checked.
            (
                "second CKA_EC_PARAMS bad",
                vec![(kt, &ec), (params, P256), (params, bad)],
                None,
                invalid,
            ),
            (
                "second CKA_EC_POINT bad",
                vec![(kt, &ec), (pt, &point), (pt, &[0x00])],
                None,
                invalid,
            ),
            // A key type that is not CKK_EC is not checked; any CKK_EC among repeated key types is.
            ("RSA key", vec![(kt, &rsa), (params, bad)], None, Ok(())),
            (
                "Edwards key, unknown object",
                vec![(kt, &ed), (params, bad)],
                None,
                Ok(()),
            ),
            // EC if anything says so: the object is EC although the template names another key type.
            (
                "Edwards key of an EC object",
                vec![(kt, &ed), (params, bad)],
                Some(true),
                invalid,
            ),
            (
                "RSA then EC key type",
                vec![(kt, &rsa), (kt, &ec), (params, bad)],
                None,
                invalid,
            ),
            // A key type of the wrong size is no CKK_EC.
            (
                "1-byte key type",
                vec![(kt, &[3u8]), (params, bad)],
                None,
                Ok(()),
            ),
            // No key type in the template: what the caller knows of the object decides.
            (
                "no key type, unknown object",
                vec![(params, bad)],
                None,
                Ok(()),
            ),
            (
                "no key type, not EC",
                vec![(params, bad)],
                Some(false),
                Ok(()),
            ),
            (
                "no key type, EC object",
                vec![(params, bad)],
                Some(true),
                invalid,
            ),
            (
                "no key type, EC object, bad point",
                vec![(pt, &[0x00])],
                Some(true),
                invalid,
            ),
            // No EC material: nothing to check.
            ("key type only", vec![(kt, &ec)], Some(true), Ok(())),
            ("empty template", vec![], Some(true), Ok(())),
        ];
        for (what, template, ec_key, want) in cases {
            let attrs: Vec<CK_ATTRIBUTE> = template.iter().map(|(ty, v)| attr(*ty, v)).collect();
            // SAFETY: every attribute points into a live slice of its length.
            let t = unsafe { Template::from_raw(&attrs) };
            assert_eq!(check(&t, ec_key).map_err(|e| e.rv()), want, "{what}");
        }
    }
}
