//! Just enough DER to build public keys and ECDSA signatures for openssl.

fn len(n: usize) -> Vec<u8> {
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

pub fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

pub fn uint(b: &[u8]) -> Vec<u8> {
    let mut b: Vec<u8> = b.iter().copied().skip_while(|x| *x == 0).collect();
    if b.is_empty() || b[0] & 0x80 != 0 {
        b.insert(0, 0);
    }
    tlv(0x02, &b)
}

fn bitstring(b: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8];
    v.extend_from_slice(b);
    tlv(0x03, &v)
}

const RSA_OID: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];
const EC_OID: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const ED25519_OID: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

pub fn rsa_spki(n: &[u8], e: &[u8]) -> Vec<u8> {
    seq(&[
        seq(&[RSA_OID.to_vec(), vec![0x05, 0x00]]),
        bitstring(&seq(&[uint(n), uint(e)])),
    ])
}

pub fn ec_spki(params: &[u8], point: &[u8]) -> Vec<u8> {
    seq(&[seq(&[EC_OID.to_vec(), params.to_vec()]), bitstring(point)])
}

pub fn ed25519_spki(point: &[u8]) -> Vec<u8> {
    seq(&[seq(&[ED25519_OID.to_vec()]), bitstring(point)])
}

/// CKA_EC_POINT is a DER OCTET STRING holding the point.
pub fn unwrap_octet_string(b: &[u8]) -> Option<Vec<u8>> {
    if b.first() != Some(&0x04) || b.len() < 2 {
        return None;
    }
    let (n, off) = if b[1] < 0x80 {
        (b[1] as usize, 2)
    } else {
        let k = (b[1] & 0x7f) as usize;
        let mut n = 0usize;
        for x in b.get(2..2 + k)? {
            n = (n << 8) | *x as usize;
        }
        (n, 2 + k)
    };
    (b.len() == off + n).then(|| b[off..].to_vec())
}

/// PKCS#11 ECDSA signature (r || s) → DER ECDSA-Sig-Value.
pub fn ecdsa_der(raw: &[u8]) -> Vec<u8> {
    let h = raw.len() / 2;
    seq(&[uint(&raw[..h]), uint(&raw[h..])])
}
