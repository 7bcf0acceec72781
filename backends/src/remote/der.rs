//! Just enough DER: writing certificates and public keys, reading the few structures we receive.

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

/// Reads one TLV: (tag, contents, rest).
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

/// The contents of a DER OCTET STRING that is the whole input.
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

    #[test]
    fn ecdsa_round_trip_pads_to_field_size() {
        let mut raw = vec![0u8; 64];
        raw[5] = 0x80; // high bit set in r (needs a 0x00 in DER); s small
        raw[63] = 1;
        let der = ecdsa_raw_to_der(&raw);
        assert_eq!(ecdsa_der_to_raw(&der, 32).unwrap(), raw);
        assert!(ecdsa_der_to_raw(&der[..der.len() - 1], 32).is_none());
    }
}
