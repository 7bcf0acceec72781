//! Explicit EC domain parameters (`CKA_EC_PARAMS` holding X9.62 `ECParameters`, a "specifiedCurve"): accepted when
//! they describe a valid prime-field curve, refused when malformed or degenerate.
//!
//! Why this exists: SoftHSM2 hands `CKA_EC_PARAMS` to OpenSSL, which turns parameters it cannot parse into a NULL
//! curve and then crashes the host process when the key is used (see keycheck.rs). Valid explicit parameters are
//! fine there (SoftHSM2 directly accepts and uses them), so the bridge must pass them through. What "valid" means
//! here is what OpenSSL 3 needs to build the group, plus what makes a curve degenerate:
//!
//! - `version` 1, a `prime-field` (1.2.840.10045.1.1) of an odd prime `p` with 3 < p and at most 661 bits (OpenSSL's
//!   `OPENSSL_ECC_MAX_FIELD_BITS`); characteristic-two fields are refused;
//! - coefficients `a`, `b` (octet strings, reduced mod p as OpenSSL does) with 4a³ + 27b² ≠ 0 (a non-singular curve);
//! - a base point in SEC 1 form (uncompressed `04 X Y` or compressed `02|03 X`, exactly the field's length) that
//!   lies on the curve;
//! - an order `n` > 1, prime, of at most p's bit length + 1, with n·G = O;
//! - a cofactor, if given, with h·n within Hasse's bound of p + 1.

use der::asn1::{AnyRef, BitStringRef, ObjectIdentifier, OctetStringRef, UintRef};
use der::{Decode, Sequence};
use num_bigint::BigUint;

use super::keycheck::{sec1_point, Sec1Point};

const PRIME_FIELD: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.1.1");
const MAX_FIELD_BITS: u64 = 661;

#[derive(Sequence)]
struct EcParameters<'a> {
    version: u8,
    field_id: FieldId<'a>,
    curve: Curve<'a>,
    base: OctetStringRef<'a>,
    order: UintRef<'a>,
    cofactor: Option<UintRef<'a>>,
}

#[derive(Sequence)]
struct FieldId<'a> {
    field_type: ObjectIdentifier,
    parameters: AnyRef<'a>,
}

#[derive(Sequence)]
struct Curve<'a> {
    a: OctetStringRef<'a>,
    b: OctetStringRef<'a>,
    seed: Option<BitStringRef<'a>>,
}

/// Whether `v` is the DER of explicit `ECParameters` that describe a valid prime-field curve; `Err` says why not.
pub fn check(v: &[u8]) -> Result<(), &'static str> {
    let params = EcParameters::from_der(v).map_err(|_| "not DER ECParameters")?;
    if params.version != 1 {
        return Err("ECParameters version is not 1");
    }
    if params.field_id.field_type != PRIME_FIELD {
        return Err("only prime fields are accepted");
    }
    let p = UintRef::try_from(params.field_id.parameters).map_err(|_| "the prime is no INTEGER")?;
    let p = BigUint::from_bytes_be(p.as_bytes());
    let bits = p.bits();
    if bits > MAX_FIELD_BITS || p <= BigUint::from(3u8) || !is_probable_prime(&p) {
        return Err("the field is not an odd prime of at most 661 bits");
    }
    let f = Field { p: p.clone() };
    let a = f.reduce(&BigUint::from_bytes_be(params.curve.a.as_bytes()));
    let b = f.reduce(&BigUint::from_bytes_be(params.curve.b.as_bytes()));
    // 4a³ + 27b² ≠ 0 (mod p)
    let disc = f.add(
        &f.mul(&BigUint::from(4u8), &f.mul(&a, &f.mul(&a, &a))),
        &f.mul(&BigUint::from(27u8), &f.mul(&b, &b)),
    );
    if disc == BigUint::ZERO {
        return Err("the curve is singular");
    }
    let len = bits.div_ceil(8) as usize;
    let g = f
        .decode_point(params.base.as_bytes(), len, &a, &b)
        .ok_or("the base point is not a point of the curve")?;
    let n = BigUint::from_bytes_be(params.order.as_bytes());
    if n <= BigUint::from(1u8) || n.bits() > bits + 1 || !is_probable_prime(&n) {
        return Err("the order is not a prime of at most the field's size");
    }
    if f.mul_point(&g, &n, &a).is_some() {
        return Err("the base point's order is not the given order");
    }
    if let Some(h) = params.cofactor {
        let h = BigUint::from_bytes_be(h.as_bytes());
        // Hasse: |h·n − (p + 1)| ≤ 2√p, i.e. (h·n − p − 1)² ≤ 4p.
        let hn = h * &n;
        let p1 = &p + 1u8;
        let d = if hn > p1 { &hn - &p1 } else { &p1 - &hn };
        if &d * &d > &p * 4u8 {
            return Err("the cofactor does not fit the curve (Hasse's bound)");
        }
    }
    Ok(())
}

/// Miller–Rabin with the first 24 primes as bases (deterministic far beyond 64 bits; for larger numbers a sieve
/// against malformed parameters, not a proof).
fn is_probable_prime(n: &BigUint) -> bool {
    const BASES: [u8; 24] = [
        2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89,
    ];
    let one = BigUint::from(1u8);
    let two = BigUint::from(2u8);
    if *n < two {
        return false;
    }
    for b in BASES {
        let b = BigUint::from(b);
        if *n == b {
            return true;
        }
        if (n % &b) == BigUint::ZERO {
            return false;
        }
    }
    let n1 = n - &one;
    let s = n1.trailing_zeros().unwrap_or(0);
    let d = &n1 >> s;
    'bases: for b in BASES {
        let mut x = BigUint::from(b).modpow(&d, n);
        if x == one || x == n1 {
            continue;
        }
        for _ in 1..s {
            x = x.modpow(&two, n);
            if x == n1 {
                continue 'bases;
            }
        }
        return false;
    }
    true
}

/// Arithmetic modulo the field prime.
struct Field {
    p: BigUint,
}

/// A point in Jacobian coordinates (X, Y, Z); Z = 0 is the point at infinity.
type Jacobian = (BigUint, BigUint, BigUint);

impl Field {
    fn reduce(&self, x: &BigUint) -> BigUint {
        x % &self.p
    }
    fn add(&self, x: &BigUint, y: &BigUint) -> BigUint {
        (x + y) % &self.p
    }
    fn sub(&self, x: &BigUint, y: &BigUint) -> BigUint {
        ((x + &self.p) - (y % &self.p)) % &self.p
    }
    fn mul(&self, x: &BigUint, y: &BigUint) -> BigUint {
        (x * y) % &self.p
    }

    /// x³ + ax + b
    fn rhs(&self, x: &BigUint, a: &BigUint, b: &BigUint) -> BigUint {
        self.add(&self.add(&self.mul(x, &self.mul(x, x)), &self.mul(a, x)), b)
    }

    /// A SEC 1 point of exactly `len`-byte coordinates, on the curve, as affine (x, y).
    fn decode_point(
        &self,
        enc: &[u8],
        len: usize,
        a: &BigUint,
        b: &BigUint,
    ) -> Option<(BigUint, BigUint)> {
        match sec1_point(enc)? {
            Sec1Point::Uncompressed { x, y } if x.len() == len => {
                let x = BigUint::from_bytes_be(x);
                let y = BigUint::from_bytes_be(y);
                (x < self.p && y < self.p && self.mul(&y, &y) == self.rhs(&x, a, b))
                    .then_some((x, y))
            }
            Sec1Point::Compressed { x, odd_y } if x.len() == len => {
                let x = BigUint::from_bytes_be(x);
                if x >= self.p {
                    return None;
                }
                let y = self.sqrt(&self.rhs(&x, a, b))?;
                let y = if y.bit(0) == odd_y {
                    y
                } else {
                    self.sub(&BigUint::ZERO, &y)
                };
                Some((x, y))
            }
            _ => None,
        }
    }

    /// A square root mod p (Tonelli–Shanks), if `v` is a square.
    fn sqrt(&self, v: &BigUint) -> Option<BigUint> {
        let p = &self.p;
        let one = BigUint::from(1u8);
        if *v == BigUint::ZERO {
            return Some(BigUint::ZERO);
        }
        let p1 = p - &one;
        if v.modpow(&(&p1 >> 1), p) != one {
            return None;
        }
        let s = p1.trailing_zeros().unwrap_or(0);
        let q = &p1 >> s;
        let mut z = BigUint::from(2u8);
        while z.modpow(&(&p1 >> 1), p) != p1 {
            z += 1u8;
        }
        let mut m = s;
        let mut c = z.modpow(&q, p);
        let mut t = v.modpow(&q, p);
        let mut r = v.modpow(&((&q + &one) >> 1), p);
        while t != one {
            let mut i = 0;
            let mut t2 = t.clone();
            while t2 != one {
                t2 = self.mul(&t2, &t2);
                i += 1;
                if i == m {
                    return None;
                }
            }
            let b = c.modpow(&(BigUint::from(1u8) << (m - i - 1)), p);
            m = i;
            c = self.mul(&b, &b);
            t = self.mul(&t, &c);
            r = self.mul(&r, &b);
        }
        Some(r)
    }

    fn double(&self, pt: &Jacobian, a: &BigUint) -> Jacobian {
        let (x, y, z) = pt;
        if *z == BigUint::ZERO || *y == BigUint::ZERO {
            return (BigUint::from(1u8), BigUint::from(1u8), BigUint::ZERO);
        }
        let yy = self.mul(y, y);
        let s = self.mul(&BigUint::from(4u8), &self.mul(x, &yy));
        let zz = self.mul(z, z);
        let m = self.add(
            &self.mul(&BigUint::from(3u8), &self.mul(x, x)),
            &self.mul(a, &self.mul(&zz, &zz)),
        );
        let x3 = self.sub(&self.mul(&m, &m), &self.mul(&BigUint::from(2u8), &s));
        let y3 = self.sub(
            &self.mul(&m, &self.sub(&s, &x3)),
            &self.mul(&BigUint::from(8u8), &self.mul(&yy, &yy)),
        );
        let z3 = self.mul(&BigUint::from(2u8), &self.mul(y, z));
        (x3, y3, z3)
    }

    fn add_points(&self, p1: &Jacobian, p2: &Jacobian, a: &BigUint) -> Jacobian {
        if p1.2 == BigUint::ZERO {
            return p2.clone();
        }
        if p2.2 == BigUint::ZERO {
            return p1.clone();
        }
        let z1z1 = self.mul(&p1.2, &p1.2);
        let z2z2 = self.mul(&p2.2, &p2.2);
        let u1 = self.mul(&p1.0, &z2z2);
        let u2 = self.mul(&p2.0, &z1z1);
        let s1 = self.mul(&p1.1, &self.mul(&p2.2, &z2z2));
        let s2 = self.mul(&p2.1, &self.mul(&p1.2, &z1z1));
        if u1 == u2 {
            return if s1 == s2 {
                self.double(p1, a)
            } else {
                (BigUint::from(1u8), BigUint::from(1u8), BigUint::ZERO)
            };
        }
        let h = self.sub(&u2, &u1);
        let r = self.sub(&s2, &s1);
        let hh = self.mul(&h, &h);
        let hhh = self.mul(&h, &hh);
        let v = self.mul(&u1, &hh);
        let x3 = self.sub(
            &self.sub(&self.mul(&r, &r), &hhh),
            &self.mul(&BigUint::from(2u8), &v),
        );
        let y3 = self.sub(&self.mul(&r, &self.sub(&v, &x3)), &self.mul(&s1, &hhh));
        let z3 = self.mul(&h, &self.mul(&p1.2, &p2.2));
        (x3, y3, z3)
    }

    /// k·G; `None` for the point at infinity.
    fn mul_point(&self, g: &(BigUint, BigUint), k: &BigUint, a: &BigUint) -> Option<Jacobian> {
        let base: Jacobian = (g.0.clone(), g.1.clone(), BigUint::from(1u8));
        let mut acc: Jacobian = (BigUint::from(1u8), BigUint::from(1u8), BigUint::ZERO);
        for i in (0..k.bits()).rev() {
            acc = self.double(&acc, a);
            if k.bit(i) {
                acc = self.add_points(&acc, &base, a);
            }
        }
        (acc.2 != BigUint::ZERO).then_some(acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// `openssl ecparam -name prime256v1 -param_enc explicit -outform DER`
    const P256: &str = "3081f7020101302c06072a8648ce3d0101022100ffffffff00000001000000000000000000000000ffffffffffffffffffffffff305b0420ffffffff00000001000000000000000000000000fffffffffffffffffffffffc04205ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604b031500c49d360886e704936a6678e1139d26b7819f7e900441046b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c2964fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5022100ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551020101";

    #[test]
    fn valid_explicit_p256() {
        assert_eq!(check(&hex(P256)), Ok(()));
    }

    #[test]
    fn malformed_and_degenerate_are_refused() {
        let good = hex(P256);
        assert!(check(&good[..good.len() - 5]).is_err());
        assert!(check(&[0x30, 0x00]).is_err());
        // Base point moved off the curve (last byte of Y).
        let mut off = good.clone();
        let y_last = good.len() - 3 - 35 - 1;
        off[y_last] ^= 1;
        assert!(check(&off).is_err());
        // Order changed by one: not the base point's order.
        let mut order = good.clone();
        let n_last = good.len() - 4;
        order[n_last] ^= 0x02;
        assert!(check(&order).is_err());
        // b = 0 and a = 0: singular.
        let mut sing = good.clone();
        let a_at = 0x38;
        let b_at = 0x5a;
        for i in 0..32 {
            sing[a_at + i] = 0;
            sing[b_at + i] = 0;
        }
        assert!(check(&sing).is_err());
    }

    /// `openssl ecparam -name NAME -param_enc explicit -outform DER` of P-384, P-521 and secp256k1.
    const OTHERS: [&str; 3] = [
        "30820157020101303c06072a8648ce3d0101023100fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000ffffffff307b0430fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000fffffffc0430b3312fa7e23ee7e4988e056be3f82d19181d9c6efe8141120314088f5013875ac656398d8a2ed19d2a85c8edd3ec2aef031500a335926aa319a27a1d00896a6773a4827acdac73046104aa87ca22be8b05378eb1c71ef320ad746e1d3b628ba79b9859f741e082542a385502f25dbf55296c3a545e3872760ab73617de4a96262c6f5d9e98bf9292dc29f8f41dbd289a147ce9da3113b5f0b8c00a60b1ce1d7e819d7a431d7c90ea0e5f023100ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973020101",
        "308201c3020101304d06072a8648ce3d0101024201ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff30819f044201fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffc04420051953eb9618e1c9a1f929a21a0b68540eea2da725b99b315f3b8b489918ef109e156193951ec7e937b1652c0bd3bb1bf073573df883d2c34f1ef451fd46b503f00031500d09e8800291cb85396cc6717393284aaa0da64ba0481850400c6858e06b70404e9cd9e3ecb662395b4429c648139053fb521f828af606b4d3dbaa14b5e77efe75928fe1dc127a2ffa8de3348b3c1856a429bf97e7e31c2e5bd66011839296a789a3bc0045c8a5fb42c7d1bd998f54449579b446817afbd17273e662c97ee72995ef42640c550b9013fad0761353c7086a272c24088be94769fd16650024201fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffa51868783bf2f966b7fcc0148f709a5d03bb5c9b8899c47aebb6fb71e91386409020101",
        "3081e0020101302c06072a8648ce3d0101022100fffffffffffffffffffffffffffffffffffffffffffffffffffffffefffffc2f3044042000000000000000000000000000000000000000000000000000000000000000000420000000000000000000000000000000000000000000000000000000000000000704410479be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8022100fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141020101",
    ];

    #[test]
    fn explicit_corpus_pinned() {
        for v in OTHERS {
            assert_eq!(check(&hex(v)), Ok(()), "{v}");
        }
        let good = hex(P256);
        let with = |at: usize, byte: u8| {
            let mut v = good.clone();
            v[at] = byte;
            v
        };
        let cat = |parts: &[&[u8]]| parts.concat();
        // Without the cofactor (outer length 0xf7 - 3) and without the seed (curve 0x5b - 23, outer 0xf7 - 23).
        let mut no_cofactor = good[..good.len() - 3].to_vec();
        no_cofactor[2] = 0xf4;
        assert_eq!(check(&no_cofactor), Ok(()));
        let seed_at = 0x7a;
        assert_eq!(&good[seed_at..seed_at + 3], &[0x03, 0x15, 0x00]);
        let mut no_seed = cat(&[&good[..seed_at], &good[seed_at + 23..]]);
        no_seed[2] = 0xe0;
        no_seed[0x35] = 0x44;
        assert_eq!(check(&no_seed), Ok(()));
        let refused: &[(&str, Vec<u8>)] = &[
            ("version 2", with(5, 2)),
            ("version 0", with(5, 0)),
            ("characteristic-two field", with(16, 0x02)),
            ("cofactor 2 (Hasse)", with(good.len() - 1, 2)),
            ("hybrid base point", with(147, 0x06)),
            ("another p (G off the curve)", with(0x2b, 0xfe)),
            ("trailing byte", cat(&[&good, &[0]])),
            (
                "non-minimal outer length",
                cat(&[&[0x30, 0x82, 0x00], &good[2..]]),
            ),
            (
                "indefinite outer length",
                cat(&[&[0x30, 0x80], &good[3..], &[0, 0]]),
            ),
            ("truncated", good[..good.len() - 1].to_vec()),
            ("empty", vec![]),
            ("named curve OID", hex("06082a8648ce3d030107")),
            ("implicitlyCA", vec![0x05, 0x00]),
            ("OCTET STRING tag", with(0, 0x04)),
        ];
        let wrong: Vec<&str> = refused
            .iter()
            .filter(|(_, v)| check(v).is_ok())
            .map(|(what, _)| *what)
            .collect();
        assert!(wrong.is_empty(), "accepted: {wrong:?}");
    }

    #[test]
    fn compressed_base_point() {
        // The same curve with G compressed (02 || X, Y of P-256's G is odd → 03).
        let good = hex(P256);
        let base_at = 145; // 04 41 04 X Y starts here (OCTET STRING tag)
        assert_eq!(&good[base_at..base_at + 3], &[0x04, 0x41, 0x04]);
        let x = &good[base_at + 3..base_at + 35];
        let y_last = good[base_at + 66];
        let mut c = good[..base_at].to_vec();
        c.extend([0x04, 0x21, if y_last & 1 == 1 { 0x03 } else { 0x02 }]);
        c.extend(x);
        c.extend(&good[base_at + 67..]);
        // Fix the outer SEQUENCE length (two bytes shorter by 32).
        let total = c.len() - 3;
        c[2] = total as u8;
        assert_eq!(check(&c), Ok(()));
    }

    #[test]
    fn primes() {
        assert!(is_probable_prime(&BigUint::from(65537u32)));
        assert!(!is_probable_prime(&BigUint::from(65535u32)));
        assert!(!is_probable_prime(&BigUint::from(3215031751u64))); // strong pseudoprime to 2, 3, 5, 7
    }
}
