//! Just enough DER: writing certificates and public keys, reading the few structures we receive, and the
//! `CKA_EC_POINT` OCTET STRING the core checks (core/keycheck.rs).
//!
//! Hand-written where the `der` crate does not fit (the core uses it for OIDs and explicit EC parameters):
//! - reading takes a definite length in any form, minimal or not (`read`); `der` reads canonical DER only, and the
//!   bridge has always accepted such values (pinned by the tests below and keycheck's);
//! - writing concatenates parts already encoded and cannot fail; `der`'s encoders can (lengths of 256 MiB and
//!   more), and these functions, called from every remote backend and certificate path, have no error to give.

pub fn len(n: usize) -> Vec<u8> {
    if n < 0x80 {
        vec![n as u8]
    } else {
        let b: Vec<u8> = n
            .to_be_bytes()
            .iter()
            .copied()
            .skip_while(|x| *x == 0)
            .collect();
        let mut v = vec![0x80 | b.len() as u8];
        v.extend(b);
        v
    }
}

pub fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend(len(body.len()));
    v.extend_from_slice(body);
    v
}

pub fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

/// An unsigned INTEGER from big-endian bytes.
pub fn uint(b: &[u8]) -> Vec<u8> {
    let mut b: Vec<u8> = b.iter().copied().skip_while(|x| *x == 0).collect();
    if b.is_empty() || b[0] & 0x80 != 0 {
        b.insert(0, 0);
    }
    tlv(0x02, &b)
}

pub fn octets(b: &[u8]) -> Vec<u8> {
    tlv(0x04, b)
}

pub fn bits(b: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8];
    v.extend_from_slice(b);
    tlv(0x03, &v)
}

pub fn utf8(s: &str) -> Vec<u8> {
    tlv(0x0c, s.as_bytes())
}

/// Reads one TLV: (tag, contents, rest). One tag byte; a definite length, short or long form of 1 to 4 bytes,
/// leading zeros allowed. `None` if the input ends before the contents do.
pub fn read(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let l0 = *b.get(1)? as usize;
    let (n, off) = if l0 < 0x80 {
        (l0, 2)
    } else {
        let k = l0 & 0x7f;
        if k == 0 || k > 4 {
            return None;
        }
        let mut n = 0usize;
        for x in b.get(2..2 + k)? {
            n = (n << 8) | *x as usize;
        }
        (n, 2 + k)
    };
    let end = off.checked_add(n)?;
    Some((tag, b.get(off..end)?, &b[end..]))
}

/// The contents of an OCTET STRING that is the whole input (any definite length form, see `read`).
pub fn unwrap_octets(b: &[u8]) -> Option<&[u8]> {
    match read(b)? {
        (0x04, c, []) => Some(c),
        _ => None,
    }
}

/// A DER ECDSA-Sig-Value → r || s, each left-padded to `n` bytes. `None` if malformed or too large.
pub fn ecdsa_der_to_raw(sig: &[u8], n: usize) -> Option<Vec<u8>> {
    let (0x30, body, []) = read(sig)? else {
        return None;
    };
    let (0x02, r, rest) = read(body)? else {
        return None;
    };
    let (0x02, s, []) = read(rest)? else {
        return None;
    };
    let mut out = vec![0u8; 2 * n];
    for (i, v) in [r, s].iter().enumerate() {
        let v: &[u8] = {
            let k = v.iter().take_while(|x| **x == 0).count();
            &v[k..]
        };
        if v.len() > n {
            return None;
        }
        out[i * n + n - v.len()..(i + 1) * n].copy_from_slice(v);
    }
    Some(out)
}

/// r || s → DER ECDSA-Sig-Value.
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Vec<u8> {
    let h = raw.len() / 2;
    seq(&[&uint(&raw[..h]), &uint(&raw[h..])])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn ecdsa_round_trip_pads_to_field_size() {
        let mut raw = vec![0u8; 64];
        raw[5] = 0x80; // high bit set in r (needs a 0x00 in DER); s small
        raw[63] = 1;
        let der = ecdsa_raw_to_der(&raw);
        assert_eq!(ecdsa_der_to_raw(&der, 32).unwrap(), raw);
        assert!(ecdsa_der_to_raw(&der[..der.len() - 1], 32).is_none());
    }

    #[test]
    fn writing_pinned() {
        assert_eq!(len(0), [0x00]);
        assert_eq!(len(0x7f), [0x7f]);
        assert_eq!(len(0x80), [0x81, 0x80]);
        assert_eq!(len(0xff), [0x81, 0xff]);
        assert_eq!(len(0x100), [0x82, 0x01, 0x00]);
        assert_eq!(len(0xffff), [0x82, 0xff, 0xff]);
        assert_eq!(len(0x10000), [0x83, 0x01, 0x00, 0x00]);
        assert_eq!(len(0x0123_4567), [0x84, 0x01, 0x23, 0x45, 0x67]);
        assert_eq!(tlv(0x17, b"x"), [0x17, 0x01, b'x']);
        assert_eq!(tlv(0xa0, &[]), [0xa0, 0x00]);
        let big = vec![0x5a; 300];
        assert_eq!(tlv(0x04, &big), cat(&[&[0x04, 0x82, 0x01, 0x2c], &big]));
        assert_eq!(seq(&[]), [0x30, 0x00]);
        assert_eq!(
            seq(&[&[0x05, 0x00], &[0x02, 0x01, 0x01]]),
            [0x30, 0x05, 0x05, 0x00, 0x02, 0x01, 0x01]
        );
        // INTEGER: leading zeros dropped, a 0x00 before a high bit, zero as 02 01 00.
        assert_eq!(uint(&[]), [0x02, 0x01, 0x00]);
        assert_eq!(uint(&[0, 0]), [0x02, 0x01, 0x00]);
        assert_eq!(uint(&[0x01, 0x00, 0x01]), [0x02, 0x03, 0x01, 0x00, 0x01]);
        assert_eq!(uint(&[0, 0, 0x7f]), [0x02, 0x01, 0x7f]);
        assert_eq!(uint(&[0x80]), [0x02, 0x02, 0x00, 0x80]);
        assert_eq!(uint(&[0, 0xff, 0x01]), [0x02, 0x03, 0x00, 0xff, 0x01]);
        let modulus = vec![0xc1; 256];
        assert_eq!(
            uint(&modulus),
            cat(&[&[0x02, 0x82, 0x01, 0x01, 0x00], &modulus])
        );
        assert_eq!(octets(&[]), [0x04, 0x00]);
        assert_eq!(octets(&[1, 2]), [0x04, 0x02, 1, 2]);
        assert_eq!(bits(&[]), [0x03, 0x01, 0x00]);
        assert_eq!(bits(&[0xff]), [0x03, 0x02, 0x00, 0xff]);
        assert_eq!(utf8(""), [0x0c, 0x00]);
        assert_eq!(utf8("é"), [0x0c, 0x02, 0xc3, 0xa9]);
    }

    #[test]
    fn reading_pinned() {
        // (input, Some((tag, contents, rest)) or None)
        type Read<'a> = Option<(u8, &'a [u8], &'a [u8])>;
        let long: Vec<u8> = cat(&[&[0x04, 0x82, 0x01, 0x00], &[7u8; 256], &[9]]);
        let cases: &[(&str, &[u8], Read)] = &[
            ("empty", &[], None),
            ("tag only", &[0x30], None),
            ("empty contents", &[0x05, 0x00], Some((0x05, &[], &[]))),
            (
                "short form, rest",
                &[0x02, 0x01, 0x07, 0xaa],
                Some((0x02, &[0x07], &[0xaa])),
            ),
            ("truncated", &[0x02, 0x02, 0x07], None),
            (
                "long form, non-minimal",
                &[0x04, 0x81, 0x01, 0x07],
                Some((0x04, &[0x07], &[])),
            ),
            (
                "long form, leading zeros",
                &[0x04, 0x84, 0x00, 0x00, 0x00, 0x01, 0x07],
                Some((0x04, &[0x07], &[])),
            ),
            (
                "long form, 5 bytes",
                &[0x04, 0x85, 0, 0, 0, 0, 0x01, 0x07],
                None,
            ),
            ("indefinite", &[0x30, 0x80, 0x05, 0x00, 0x00, 0x00], None),
            ("long form, length bytes missing", &[0x04, 0x82, 0x01], None),
            (
                "huge length",
                &[0x04, 0x84, 0xff, 0xff, 0xff, 0xff, 0x00],
                None,
            ),
            (
                "any tag byte",
                &[0x1f, 0x01, 0x00],
                Some((0x1f, &[0x00], &[])),
            ),
            (
                "context tag",
                &[0xa3, 0x00, 0x01],
                Some((0xa3, &[], &[0x01])),
            ),
            ("long", &long, Some((0x04, &long[4..260], &[9]))),
        ];
        for (what, input, want) in cases {
            assert_eq!(read(input), *want, "{what}");
        }
        assert_eq!(unwrap_octets(&[0x04, 0x02, 1, 2]), Some(&[1u8, 2][..]));
        assert_eq!(
            unwrap_octets(&[0x04, 0x81, 0x02, 1, 2]),
            Some(&[1u8, 2][..])
        );
        assert_eq!(unwrap_octets(&[0x04, 0x00]), Some(&[][..]));
        assert_eq!(unwrap_octets(&[0x04, 0x02, 1, 2, 3]), None);
        assert_eq!(unwrap_octets(&[0x03, 0x02, 1, 2]), None);
        assert_eq!(unwrap_octets(&[0x04, 0x03, 1, 2]), None);
        assert_eq!(unwrap_octets(&[]), None);
    }

    #[test]
    fn ecdsa_pinned() {
        let r = [0x11u8; 32];
        let s = [0x22u8; 32];
        let der = cat(&[&[0x30, 0x44, 0x02, 0x20], &r, &[0x02, 0x20], &s]);
        let raw = cat(&[&r, &s]);
        assert_eq!(ecdsa_raw_to_der(&raw), der);
        assert_eq!(ecdsa_der_to_raw(&der, 32).as_deref(), Some(&raw[..]));
        // P-521: 66-byte halves, long-form SEQUENCE length.
        let mut raw521 = vec![0u8; 132];
        raw521[0] = 0x01;
        raw521[65] = 0xff;
        raw521[66] = 0x01;
        let der521 = ecdsa_raw_to_der(&raw521);
        assert_eq!(&der521[..5], &[0x30, 0x81, 0x88, 0x02, 0x42]);
        assert_eq!(ecdsa_der_to_raw(&der521, 66), Some(raw521));
        // Odd lengths split at half (rounded down): r is the shorter.
        assert_eq!(
            ecdsa_raw_to_der(&[0x01, 0x02, 0x03]),
            [0x30, 0x07, 0x02, 0x01, 0x01, 0x02, 0x02, 0x02, 0x03]
        );
        assert_eq!(
            ecdsa_raw_to_der(&[]),
            [0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00]
        );
        // Reading: zero-length and short integers are left-padded; leading zeros are dropped whatever their count;
        // a "negative" integer is read as its bytes; lengths in any definite form.
        let small = [0x30, 0x06, 0x02, 0x01, 0x05, 0x02, 0x01, 0x06];
        let mut want = vec![0u8; 8];
        want[3] = 5;
        want[7] = 6;
        assert_eq!(ecdsa_der_to_raw(&small, 4), Some(want.clone()));
        assert_eq!(
            ecdsa_der_to_raw(&[0x30, 0x04, 0x02, 0x00, 0x02, 0x00], 2),
            Some(vec![0; 4])
        );
        assert_eq!(
            ecdsa_der_to_raw(
                &[0x30, 0x08, 0x02, 0x03, 0x00, 0x00, 0x05, 0x02, 0x01, 0x06],
                4
            ),
            Some(want.clone())
        );
        assert_eq!(
            ecdsa_der_to_raw(
                &[0x30, 0x81, 0x06, 0x02, 0x81, 0x01, 0x05, 0x02, 0x01, 0x06][..],
                4
            ),
            None,
            "the SEQUENCE's length must cover its contents exactly"
        );
        assert_eq!(
            ecdsa_der_to_raw(
                &[0x30, 0x81, 0x07, 0x02, 0x81, 0x01, 0x05, 0x02, 0x01, 0x06],
                4
            ),
            Some(want.clone())
        );
        assert_eq!(
            ecdsa_der_to_raw(&[0x30, 0x06, 0x02, 0x01, 0x85, 0x02, 0x01, 0x06], 1),
            Some(vec![0x85, 0x06])
        );
        let refused: &[(&str, Vec<u8>, usize)] = &[
            (
                "r too long",
                cat(&[&[0x30, 0x06, 0x02, 0x01, 0x05, 0x02, 0x01, 0x06]]),
                0,
            ),
            (
                "r one byte too long",
                cat(&[&[0x30, 0x07, 0x02, 0x02, 0x01, 0x05, 0x02, 0x01, 0x06]]),
                1,
            ),
            ("trailing byte", cat(&[&small, &[0]]), 4),
            (
                "a third INTEGER",
                cat(&[&[0x30, 0x09], &small[2..], &[0x02, 0x01, 0x07]]),
                4,
            ),
            ("s missing", vec![0x30, 0x03, 0x02, 0x01, 0x05], 4),
            ("not a SEQUENCE", cat(&[&[0x31], &small[1..]]), 4),
            (
                "r not an INTEGER",
                cat(&[&small[..2], &[0x04], &small[3..]]),
                4,
            ),
            (
                "s not an INTEGER",
                cat(&[&small[..5], &[0x04], &small[6..]]),
                4,
            ),
            ("indefinite", cat(&[&[0x30, 0x80], &small[2..], &[0, 0]]), 4),
            ("truncated", small[..7].to_vec(), 4),
            ("empty", vec![], 4),
        ];
        for (what, sig, n) in refused {
            assert_eq!(ecdsa_der_to_raw(sig, *n), None, "{what}");
        }
    }
}
