//! Shared by the hostile-backend fuzz targets (`hostile_vault`, `hostile_kms`, `hostile_upstream`): the input
//! reader, an in-process HTTP/1.1 server whose answers come from the fuzz input (status, framing lies, bodies that
//! are structure-aware mutations of real answers or raw bytes), and the Cryptoki call sequence every target drives
//! through the bridge's C ABI with caller buffers surrounded by canaries.
//!
//! What counts as a finding: any panic (libfuzzer-sys's panic hook aborts the process even when the module
//! would catch it, so a panic caught by the module's guard is reported too), a sanitizer report, a canary
//! overwritten or a length reported beyond the buffer the call was given, a hang past libFuzzer's -timeout, and a
//! `C_P11BRIDGE_GetLastError` text that says "panic caught".
#![allow(dead_code)]

use cryptoki_sys::*;
use p11bridge_conformance::call;
use serde_json::Value;
use std::ffi::c_void;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::ptr::null_mut;
use std::sync::Mutex;
use std::time::Duration;

/// Reads the input; zeros when it runs out.
pub struct R {
    pub b: Vec<u8>,
    pub pos: usize,
}

impl R {
    pub fn new(b: &[u8]) -> R {
        R {
            b: b.to_vec(),
            pos: 0,
        }
    }
    pub fn empty(&self) -> bool {
        self.pos >= self.b.len()
    }
    pub fn u8(&mut self) -> u8 {
        let v = self.b.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        v
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    pub fn u64(&mut self) -> u64 {
        (self.u32() as u64) | ((self.u32() as u64) << 32)
    }
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.u8() as usize % xs.len()]
    }
    /// Up to `max` bytes of the input (fewer when it runs out).
    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = (self.u16() as usize) % (max + 1);
        let start = self.pos.min(self.b.len());
        let end = (start + n).min(self.b.len());
        self.pos = start + n;
        self.b[start..end].to_vec()
    }
}

pub fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

pub fn pem(der_b64: &str) -> String {
    let mut s = String::from("-----BEGIN PUBLIC KEY-----\n");
    for c in der_b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(c).unwrap_or(""));
        s.push('\n');
    }
    s.push_str("-----END PUBLIC KEY-----\n");
    s
}

/// Real public keys (DER SubjectPublicKeyInfo, base64).
pub const EC_P256: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEHTIKYaR9l01GMl+FrwULQEq/J/INFpaCt1NBTFvsQL3cbZkKTJnW9zWMSQDYG/R4j8jBR/lRiYMycJOgrNmRFw==";
pub const RSA_2048: &str = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAzRSIVgfRxkIfSmKaiENWKQnxN4mJpehY6bkhRS1ch1TkwaTsk/uQa13XqB+cf2CLEMx/yioV8zCBPRuAc+QE/pwN91vbo2SZ59POXbL/h5in2R2dXFN4ea3+HhVZuulL4x7xS1AAUwCJ0nSi+HOrroVgE+qUUve21T6tBCauyxjEOnBh4dug3hjj033s/wnjIFQ2N1E+FEWkC3rOxAzDVfUTsZPm8PcCI1HucpAcwlGqjCBGNBEQsSqqF2XCF3ZwjSVPU+Ktoew1awUM57VLQxVDPw+nDrIQeK2gSvO+wof7FEShKMAmXN63HCfcd48r0gd9qYg5tbQa0SM0ikd9cwIDAQAB";
pub const ED25519: &str = "MCowBQYDK2VwAyEAQPHZUbEuvxYbMI97wSa8GzAE/XtD5K+8/7eMdQqZnSY=";

/// A DER ECDSA signature (r, s of 32 bytes).
pub fn ecdsa_der() -> Vec<u8> {
    let mut v = vec![0x30, 0x44, 0x02, 0x20];
    v.extend([0x11; 32]);
    v.extend([0x02, 0x20]);
    v.extend([0x22; 32]);
    v
}

// ---------------------------------------------------------------------------------------------------------------
// Answers.

/// How the answer is framed on the wire.
#[derive(Clone, Copy, Debug)]
pub enum Framing {
    /// Content-Length: the body's length.
    Honest,
    /// Content-Length larger than the body (the connection closes first).
    LongerThanBody(u16),
    /// Content-Length smaller than the body.
    ShorterThanBody(u16),
    /// No Content-Length: the body ends when the connection closes.
    CloseDelimited,
    /// Only the first n bytes of the body are written, then the connection closes.
    CloseMidBody(u16),
    /// Transfer-Encoding: chunked, chunks of n bytes; optionally a bad chunk size.
    Chunked(u8, bool),
    /// Garbage instead of a status line.
    Garbage,
    /// The connection closes before anything is written.
    Nothing,
}

pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub framing: Framing,
}

/// A parsed request.
#[derive(Debug, Default)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// The server's share of the current input.
static SCRIPT: Mutex<Option<R>> = Mutex::new(None);

pub fn set_script(bytes: &[u8]) {
    *SCRIPT.lock().unwrap_or_else(|e| e.into_inner()) = Some(R::new(bytes));
}

/// Starts the server once; returns its port. `canned(req)` is the real answer to a request (status, body).
/// Connections are served by a fixed pool of long-lived threads (a thread per connection would still be exiting
/// when LeakSanitizer looks at the end of a run, and be reported as a leak of this harness).
pub fn serve(canned: fn(&Req) -> (u16, Value), content_type: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let (tx, rx) = std::sync::mpsc::channel::<TcpStream>();
    let rx = std::sync::Arc::new(Mutex::new(rx));
    for _ in 0..64 {
        let rx = rx.clone();
        std::thread::spawn(move || loop {
            let c = match rx.lock() {
                Ok(g) => g.recv(),
                Err(_) => return,
            };
            match c {
                Ok(c) => {
                    let _ = handle(c, canned, content_type);
                }
                Err(_) => return,
            }
        });
    }
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let _ = tx.send(c);
        }
    });
    port
}

fn read_request(c: &mut TcpStream) -> Option<Req> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 1 << 20 {
            return None;
        }
        let n = c.read(&mut tmp).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let first = lines.next()?;
    let mut parts = first.split(' ');
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = c.read(&mut tmp).ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    Some(Req {
        method,
        path,
        headers,
        body,
    })
}

fn handle(
    mut c: TcpStream,
    canned: fn(&Req) -> (u16, Value),
    content_type: &'static str,
) -> std::io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(1)))?;
    c.set_nodelay(true)?;
    // Keep-alive while the answers are honestly framed; any other answer closes the connection.
    loop {
        let Some(req) = read_request(&mut c) else {
            return Ok(());
        };
        let resp = {
            let mut g = SCRIPT.lock().unwrap_or_else(|e| e.into_inner());
            let (status, v) = canned(&req);
            match g.as_mut() {
                Some(s) if !s.empty() => shape(status, v, s),
                _ => Resp {
                    status,
                    headers: vec![],
                    body: serde_json::to_vec(&v).unwrap_or_default(),
                    framing: Framing::Honest,
                },
            }
        };
        let keep = matches!(resp.framing, Framing::Honest) && resp.headers.is_empty();
        write_resp(&mut c, &resp, content_type, keep)?;
        if !keep {
            return Ok(());
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        _ => "Whatever",
    }
}

fn write_resp(c: &mut TcpStream, r: &Resp, content_type: &str, keep: bool) -> std::io::Result<()> {
    let mut out = Vec::new();
    match r.framing {
        Framing::Nothing => return Ok(()),
        Framing::Garbage => {
            out.extend_from_slice(&r.body);
            c.write_all(&out)?;
            return Ok(());
        }
        _ => {}
    }
    out.extend_from_slice(format!("HTTP/1.1 {} {}\r\n", r.status, reason(r.status)).as_bytes());
    let conn = if keep { "keep-alive" } else { "close" };
    out.extend_from_slice(
        format!("Content-Type: {content_type}\r\nConnection: {conn}\r\n").as_bytes(),
    );
    for (k, v) in &r.headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    let n = r.body.len();
    match r.framing {
        Framing::Honest | Framing::CloseMidBody(_) => {
            out.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes())
        }
        Framing::LongerThanBody(d) => {
            out.extend_from_slice(format!("Content-Length: {}\r\n", n + d as usize + 1).as_bytes())
        }
        Framing::ShorterThanBody(d) => out.extend_from_slice(
            format!("Content-Length: {}\r\n", n.saturating_sub(d as usize + 1)).as_bytes(),
        ),
        Framing::Chunked(..) => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
    match r.framing {
        Framing::CloseMidBody(k) => out.extend_from_slice(&r.body[..(k as usize).min(n)]),
        Framing::Chunked(size, bad) => {
            let size = size.max(1) as usize;
            for ch in r.body.chunks(size) {
                if bad {
                    out.extend_from_slice(format!("{:x}\r\n", ch.len() * 3 + 7).as_bytes());
                } else {
                    out.extend_from_slice(format!("{:x}\r\n", ch.len()).as_bytes());
                }
                out.extend_from_slice(ch);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        }
        _ => out.extend_from_slice(&r.body),
    }
    c.write_all(&out)?;
    if !keep {
        let _ = c.shutdown(std::net::Shutdown::Write);
    }
    Ok(())
}

/// Statuses a hostile answer may carry.
const STATUSES: &[u16] = &[
    200, 200, 200, 201, 204, 206, 301, 302, 304, 307, 400, 401, 403, 404, 405, 409, 412, 413, 429,
    472, 473, 500, 501, 502, 503, 504, 599, 999,
];

/// Turns the real answer into a hostile one, driven by the script.
pub fn shape(status: u16, mut v: Value, s: &mut R) -> Resp {
    let mode = s.u8();
    let mut status = status;
    let mut body = match mode % 8 {
        // The real answer.
        0 => serde_json::to_vec(&v).unwrap_or_default(),
        // The real answer, 1..4 mutations.
        1..=4 => {
            for _ in 0..(1 + mode as usize % 4) {
                mutate(&mut v, s);
            }
            serde_json::to_vec(&v).unwrap_or_default()
        }
        // An error answer.
        5 => {
            status = s.pick(STATUSES);
            let mut e = error_body(s);
            if s.u8() % 4 == 0 {
                mutate(&mut e, s);
            }
            serde_json::to_vec(&e).unwrap_or_default()
        }
        // Raw bytes.
        6 => s.bytes(4096),
        // The real answer, truncated, or with bytes spliced in.
        _ => {
            let mut b = serde_json::to_vec(&v).unwrap_or_default();
            let at = s.u16() as usize % (b.len() + 1);
            if s.u8() % 2 == 0 {
                b.truncate(at);
            } else {
                let ins = s.bytes(64);
                b.splice(at..at, ins);
            }
            b
        }
    };
    if mode & 0x80 != 0 {
        status = s.pick(STATUSES);
    }
    let f = s.u8();
    let framing = match f % 16 {
        0..=8 => Framing::Honest,
        9 => Framing::LongerThanBody(s.u16() % 4096),
        10 => Framing::ShorterThanBody(s.u16() % 4096),
        11 => Framing::CloseDelimited,
        12 => Framing::CloseMidBody(s.u16()),
        13 => Framing::Chunked(s.u8(), s.u8() % 4 == 0),
        14 => {
            body = s.bytes(256);
            Framing::Garbage
        }
        _ => Framing::Nothing,
    };
    let mut headers = vec![];
    if f & 0x40 != 0 {
        // A header that lies or disturbs: Content-Type, a second Content-Length, redirects.
        headers.push(match s.u8() % 5 {
            0 => ("Content-Type".into(), "text/html".into()),
            1 => ("Content-Length".into(), format!("{}", s.u16())),
            2 => ("Location".into(), "http://127.0.0.1:1/v1/x".into()),
            3 => ("Content-Encoding".into(), "gzip".into()),
            _ => ("x-amzn-ErrorType".into(), error_type(s)),
        });
    }
    Resp {
        status,
        headers,
        body,
        framing,
    }
}

pub fn error_type(s: &mut R) -> String {
    s.pick(&[
        "NotFoundException",
        "AccessDeniedException",
        "KMSInvalidStateException",
        "DisabledException",
        "ThrottlingException",
        "InvalidKeyUsageException",
        "UnsupportedOperationException",
        "KMSInternalException",
        "ValidationException",
        "IncorrectKeyException",
        "InvalidCiphertextException",
        "",
        "com.amazon.coral.service#ExpiredTokenException",
    ])
    .to_string()
}

fn error_body(s: &mut R) -> Value {
    match s.u8() % 5 {
        0 => serde_json::json!({"errors": []}),
        1 => serde_json::json!({"errors": [String::from_utf8_lossy(&s.bytes(64))]}),
        2 => {
            serde_json::json!({"errors": ["permission denied", "1 error occurred:\n\t* invalid request"]})
        }
        3 => {
            serde_json::json!({"__type": error_type(s), "message": String::from_utf8_lossy(&s.bytes(64))})
        }
        _ => serde_json::json!({"__type": error_type(s), "Message": "x"}),
    }
}

fn count(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count).sum(),
        Value::Object(o) => o.values().map(count).sum(),
        _ => 0,
    }
}

/// Replaces (or deletes, or multiplies) one node of `v`, chosen by the script.
pub fn mutate(v: &mut Value, s: &mut R) {
    let n = count(v);
    let target = s.u16() as usize % n;
    let mut i = 0;
    visit(v, target, &mut i, s);
}

fn visit(v: &mut Value, target: usize, i: &mut usize, s: &mut R) -> bool {
    if *i == target {
        if let Value::Object(o) = v {
            if !o.is_empty() && s.u8() % 3 == 0 {
                let k = o.keys().nth(s.u8() as usize % o.len()).cloned();
                if let Some(k) = k {
                    o.remove(&k);
                }
                return true;
            }
        }
        *v = new_value(v, s);
        return true;
    }
    *i += 1;
    match v {
        Value::Array(a) => a.iter_mut().any(|x| visit(x, target, i, s)),
        Value::Object(o) => o.values_mut().any(|x| visit(x, target, i, s)),
        _ => false,
    }
}

fn new_value(old: &Value, s: &mut R) -> Value {
    use serde_json::json;
    let text = |s: &mut R| String::from_utf8_lossy(&s.bytes(512)).into_owned();
    match s.u8() % 20 {
        0 => Value::Null,
        1 => json!(s.u8() % 2 == 0),
        2 => json!(s.u8() as i8),
        3 => json!(u64::MAX),
        4 => json!(i64::MIN),
        5 => json!(s.pick(&[1e308, -0.5, 4294967296.5, 1e-300, 18446744073709551616.0])),
        6 => json!(s.u64()),
        7 => json!(text(s)),
        8 => json!(b64(&s.bytes(600))),
        9 => json!(format!("vault:v1:{}", b64(&s.bytes(600)))),
        10 => json!(format!("vault:v{}:{}", s.u32(), text(s))),
        11 => json!(pem(&b64(&s.bytes(600)))),
        12 => {
            // A real key, truncated or with a flipped byte, as PEM or base64.
            use base64::Engine;
            let der = base64::engine::general_purpose::STANDARD
                .decode(s.pick(&[EC_P256, RSA_2048, ED25519]))
                .unwrap_or_default();
            let mut der = der;
            let at = s.u16() as usize % (der.len() + 1);
            if s.u8() % 2 == 0 {
                der.truncate(at);
            } else if at < der.len() {
                der[at] ^= s.u8() | 1;
            }
            if s.u8() % 2 == 0 {
                json!(pem(&b64(&der)))
            } else {
                json!(b64(&der))
            }
        }
        13 => match old {
            Value::String(t) => {
                let mut t = t.clone().into_bytes();
                let at = s.u16() as usize % (t.len() + 1);
                t.truncate(at);
                json!(String::from_utf8_lossy(&t))
            }
            _ => json!(old.to_string()),
        },
        14 => json!([]),
        15 => json!({}),
        16 => {
            // Up to 2,000 copies, but at most ~1 MiB of them: copies of copies grew past the 4 GiB RSS limit (an
            // out-of-memory in the harness, not the bridge, in a CI run).
            let size = old.to_string().len().max(1);
            Value::Array(vec![old.clone(); (s.u16() as usize % 2000).min((1 << 20) / size)])
        }
        17 => json!(s.pick(&[
            "ecdsa-p256",
            "ecdsa-p384",
            "ecdsa-p521",
            "rsa-2048",
            "rsa-4096",
            "ed25519",
            "hmac",
            "aes256-gcm96",
            "chacha20-poly1305",
            "ECC_NIST_P256",
            "ECC_NIST_P384",
            "ECC_NIST_P521",
            "ECC_SECG_P256K1",
            "RSA_2048",
            "RSA_4096",
            "HMAC_256",
            "HMAC_512",
            "SYMMETRIC_DEFAULT",
            "SIGN_VERIFY",
            "ENCRYPT_DECRYPT",
            "GENERATE_VERIFY_MAC",
            "PendingDeletion",
            "Disabled",
            "ECDSA_SHA_256",
            "RSASSA_PSS_SHA_512",
            "",
        ])),
        18 => json!(format!("{}", s.u32())),
        _ => {
            // Deep nesting.
            let mut x = old.clone();
            for _ in 0..(s.u8() % 64) {
                x = json!([x]);
            }
            x
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The Cryptoki side.

pub fn init_args() -> CK_C_INITIALIZE_ARGS {
    CK_C_INITIALIZE_ARGS {
        CreateMutex: None,
        DestroyMutex: None,
        LockMutex: None,
        UnlockMutex: None,
        flags: CKF_OS_LOCKING_OK,
        pReserved: null_mut(),
    }
}

pub fn function_list() -> &'static CK_FUNCTION_LIST {
    unsafe {
        let mut f: *mut CK_FUNCTION_LIST = null_mut();
        assert_eq!(p11bridge::abi::C_GetFunctionList(&mut f), CKR_OK);
        &*f
    }
}

const CANARY: u8 = 0xA5;
const PAD: usize = 32;

/// A caller buffer of `n` bytes with canaries on both sides.
pub struct Buf {
    v: Vec<u8>,
    n: usize,
}

impl Buf {
    pub fn new(n: usize) -> Buf {
        Buf {
            v: vec![CANARY; n + 2 * PAD],
            n,
        }
    }
    pub fn ptr(&mut self) -> *mut u8 {
        self.v[PAD..].as_mut_ptr()
    }
    pub fn len(&self) -> usize {
        self.n
    }
    /// Panics (a finding) if anything outside the `n` bytes changed.
    pub fn check(&self, what: &str) {
        let (a, rest) = self.v.split_at(PAD);
        let b = &rest[self.n..];
        assert!(
            a.iter().chain(b.iter()).all(|x| *x == CANARY),
            "{what}: the module wrote outside the caller's buffer of {} bytes",
            self.n
        );
    }
}

/// Fails (a finding) when the module's last-error text says a panic was caught.
pub fn check_last_error(what: &str) {
    let mut rv: CK_RV = 0;
    let mut text = vec![0u8; 4096];
    let mut len: CK_ULONG = text.len() as CK_ULONG;
    let r =
        unsafe { p11bridge::abi::C_P11BRIDGE_GetLastError(&mut rv, text.as_mut_ptr(), &mut len) };
    if r == CKR_OK && (len as usize) <= text.len() {
        let t = String::from_utf8_lossy(&text[..len as usize]);
        assert!(!t.contains("panic caught"), "{what}: {t}");
    }
}

/// A buffer size: the needed one, smaller, larger, or anything.
fn size(r: &mut R, need: usize) -> usize {
    match r.u8() % 6 {
        0 | 1 => need,
        2 => need.saturating_sub(1 + r.u8() as usize % 16),
        3 => need + r.u8() as usize,
        4 => 0,
        _ => r.u16() as usize % 8192,
    }
}

const ATTRS: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_CLASS,
    CKA_KEY_TYPE,
    CKA_LABEL,
    CKA_ID,
    CKA_VALUE,
    CKA_VALUE_LEN,
    CKA_PRIVATE,
    CKA_SENSITIVE,
    CKA_EXTRACTABLE,
    CKA_SIGN,
    CKA_VERIFY,
    CKA_ENCRYPT,
    CKA_DECRYPT,
    CKA_DERIVE,
    CKA_MODULUS,
    CKA_MODULUS_BITS,
    CKA_PUBLIC_EXPONENT,
    CKA_EC_PARAMS,
    CKA_EC_POINT,
    CKA_SUBJECT,
    CKA_ISSUER,
    CKA_SERIAL_NUMBER,
    CKA_CERTIFICATE_TYPE,
    CKA_PUBLIC_KEY_INFO,
    CKA_ALLOWED_MECHANISMS,
    CKA_START_DATE,
    CKA_END_DATE,
    CKA_TOKEN,
    CKA_MODIFIABLE,
    CKA_LOCAL,
    CKA_ALWAYS_AUTHENTICATE,
    0x8B11_D001, // CKA_P11BRIDGE_BACKEND
    0x8B11_D002, // CKA_P11BRIDGE_KEY_VERSION
    0x0FFF,
];

/// Mechanisms the sequence signs, decrypts and MACs with.
const SIGN_MECHS: &[CK_MECHANISM_TYPE] = &[
    CKM_ECDSA,
    CKM_ECDSA_SHA256,
    CKM_ECDSA_SHA384,
    CKM_RSA_PKCS,
    CKM_SHA256_RSA_PKCS,
    CKM_SHA256_RSA_PKCS_PSS,
    CKM_RSA_PKCS_PSS,
    CKM_EDDSA,
    CKM_SHA256_HMAC,
    CKM_SHA512_HMAC,
    CKM_SHA_1_HMAC,
];

const DECRYPT_MECHS: &[CK_MECHANISM_TYPE] = &[
    CKM_RSA_PKCS_OAEP,
    CKM_RSA_PKCS,
    0x8B11_D101, // CKM_P11BRIDGE_KMS_ENCRYPT
    0x8B11_D102, // CKM_P11BRIDGE_VAULT_ENCRYPT
    0x8B11_D103, // CKM_P11BRIDGE_VAULT_REWRAP
    CKM_AES_GCM,
    CKM_AES_CBC_PAD,
];

fn rv_ok(rv: CK_RV) -> bool {
    rv == CKR_OK
}

/// Checks a returned length against the buffer it was given (CKR_OK: within it).
fn check_len(what: &str, rv: CK_RV, len: CK_ULONG, given: usize) {
    if rv == CKR_OK {
        assert!(
            (len as usize) <= given,
            "{what}: CKR_OK with length {len} for a buffer of {given}"
        );
    }
}

/// The call sequence: open, log in, find, read every object's attributes (two-call), sign, decrypt, encrypt,
/// generate. Every return must be a CK_RV; canaries and returned lengths are checked after every output call.
pub fn drive(f: &CK_FUNCTION_LIST, r: &mut R, pin: &[u8], slot_index: usize) {
    let mut slots = [0 as CK_SLOT_ID; 8];
    let mut n: CK_ULONG = 8;
    if call!(f, C_GetSlotList(CK_FALSE, slots.as_mut_ptr(), &mut n)) != CKR_OK || n == 0 {
        return;
    }
    let n = (n as usize).min(8);
    let slot = slots[slot_index % n];
    {
        let mut ti: CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
        let _ = call!(f, C_GetTokenInfo(slot, &mut ti));
        let mut cnt: CK_ULONG = 0;
        if call!(f, C_GetMechanismList(slot, null_mut(), &mut cnt)) == CKR_OK {
            let want = size(r, cnt as usize);
            let mut ml = vec![0 as CK_MECHANISM_TYPE; want + 4];
            let mut l = want as CK_ULONG;
            let rv = call!(f, C_GetMechanismList(slot, ml.as_mut_ptr(), &mut l));
            check_len("C_GetMechanismList", rv, l, want);
            assert!(
                ml[want..].iter().all(|x| *x == 0),
                "C_GetMechanismList wrote past"
            );
        }
    }
    let mut h: CK_SESSION_HANDLE = 0;
    if call!(
        f,
        C_OpenSession(
            slot,
            CKF_SERIAL_SESSION | CKF_RW_SESSION,
            null_mut(),
            None,
            &mut h
        )
    ) != CKR_OK
    {
        check_last_error("C_OpenSession");
        return;
    }
    let mut pinv = pin.to_vec();
    let rv = call!(
        f,
        C_Login(h, CKU_USER, pinv.as_mut_ptr(), pinv.len() as CK_ULONG)
    );
    check_last_error("C_Login");
    let _ = rv;
    let mut steps = 0;
    while !r.empty() && steps < 6 {
        steps += 1;
        match r.u8() % 8 {
            0..=3 => find_and_use(f, h, r),
            4 => generate(f, h, r),
            5 => {
                let mut b = Buf::new(size(r, 32));
                let rv = call!(f, C_GenerateRandom(h, b.ptr(), b.len() as CK_ULONG));
                let _ = rv;
                b.check("C_GenerateRandom");
            }
            6 => {
                // Finalize mid-way is not done here (the target re-initializes); log out and in again.
                let _ = call!(f, C_Logout(h));
                let _ = call!(
                    f,
                    C_Login(h, CKU_USER, pinv.as_mut_ptr(), pinv.len() as CK_ULONG)
                );
                check_last_error("C_Login");
            }
            _ => {
                let mut si: CK_SESSION_INFO = unsafe { std::mem::zeroed() };
                let _ = call!(f, C_GetSessionInfo(h, &mut si));
            }
        }
    }
    let _ = call!(f, C_CloseSession(h));
}

fn find_and_use(f: &CK_FUNCTION_LIST, h: CK_SESSION_HANDLE, r: &mut R) {
    let mut class: CK_OBJECT_CLASS = r.pick(&[
        CKO_PRIVATE_KEY,
        CKO_PUBLIC_KEY,
        CKO_SECRET_KEY,
        CKO_CERTIFICATE,
        CKO_DATA,
    ]);
    let mut t = [CK_ATTRIBUTE {
        type_: CKA_CLASS,
        pValue: &mut class as *mut _ as *mut c_void,
        ulValueLen: std::mem::size_of::<CK_OBJECT_CLASS>() as CK_ULONG,
    }];
    let nt = if r.u8() % 3 == 0 { 0 } else { 1 };
    let rv = call!(f, C_FindObjectsInit(h, t.as_mut_ptr(), nt));
    check_last_error("C_FindObjectsInit");
    if rv != CKR_OK {
        return;
    }
    let mut objs = [0 as CK_OBJECT_HANDLE; 34];
    let max = 1 + r.u8() as usize % 32;
    let mut got: CK_ULONG = 0;
    let rv = call!(
        f,
        C_FindObjects(h, objs.as_mut_ptr(), max as CK_ULONG, &mut got)
    );
    check_last_error("C_FindObjects");
    assert!(
        objs[max..].iter().all(|x| *x == 0),
        "C_FindObjects wrote past {max} handles"
    );
    let _ = call!(f, C_FindObjectsFinal(h));
    if rv != CKR_OK {
        return;
    }
    assert!(
        got as usize <= max,
        "C_FindObjects: {got} objects for {max}"
    );
    for &o in &objs[..got as usize] {
        attributes(f, h, o, r);
        match r.u8() % 4 {
            0 => sign(f, h, o, r),
            1 => decrypt(f, h, o, r),
            2 => encrypt(f, h, o, r),
            _ => {}
        }
        if r.empty() {
            break;
        }
    }
}

fn attributes(f: &CK_FUNCTION_LIST, h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE, r: &mut R) {
    let k = 1 + r.u8() as usize % 8;
    let types: Vec<CK_ATTRIBUTE_TYPE> = (0..k).map(|_| r.pick(ATTRS)).collect();
    let mut t: Vec<CK_ATTRIBUTE> = types
        .iter()
        .map(|&ty| CK_ATTRIBUTE {
            type_: ty,
            pValue: null_mut(),
            ulValueLen: 0,
        })
        .collect();
    let rv = call!(
        f,
        C_GetAttributeValue(h, o, t.as_mut_ptr(), t.len() as CK_ULONG)
    );
    check_last_error("C_GetAttributeValue (lengths)");
    if rv != CKR_OK && rv != CKR_ATTRIBUTE_SENSITIVE && rv != CKR_ATTRIBUTE_TYPE_INVALID {
        return;
    }
    let mut bufs: Vec<Buf> = t
        .iter()
        .map(|a| {
            let need = if a.ulValueLen == CK_UNAVAILABLE_INFORMATION {
                16
            } else {
                (a.ulValueLen as usize).min(1 << 16)
            };
            Buf::new(size(r, need))
        })
        .collect();
    for (a, b) in t.iter_mut().zip(bufs.iter_mut()) {
        a.pValue = b.ptr() as *mut c_void;
        a.ulValueLen = b.len() as CK_ULONG;
    }
    let rv = call!(
        f,
        C_GetAttributeValue(h, o, t.as_mut_ptr(), t.len() as CK_ULONG)
    );
    check_last_error("C_GetAttributeValue");
    for (a, b) in t.iter().zip(bufs.iter()) {
        b.check("C_GetAttributeValue");
        if a.ulValueLen != CK_UNAVAILABLE_INFORMATION {
            assert!(
                a.ulValueLen as usize <= b.len(),
                "C_GetAttributeValue ({rv:#x}): attribute {:#x} length {} for a buffer of {}",
                a.type_,
                a.ulValueLen,
                b.len()
            );
        }
    }
}

/// The mechanism: a bare one, or PSS/OAEP/GCM with well-formed parameters.
struct Mech {
    m: CK_MECHANISM,
    pss: CK_RSA_PKCS_PSS_PARAMS,
    oaep: CK_RSA_PKCS_OAEP_PARAMS,
    gcm: CK_GCM_PARAMS,
    iv: [u8; 16],
}

fn mech(r: &mut R, ty: CK_MECHANISM_TYPE) -> Box<Mech> {
    let mut b = Box::new(Mech {
        m: CK_MECHANISM {
            mechanism: ty,
            pParameter: null_mut(),
            ulParameterLen: 0,
        },
        pss: CK_RSA_PKCS_PSS_PARAMS {
            hashAlg: CKM_SHA256,
            mgf: CKG_MGF1_SHA256,
            sLen: r.pick(&[32, 0, 20, 64, 222]),
        },
        oaep: CK_RSA_PKCS_OAEP_PARAMS {
            hashAlg: r.pick(&[CKM_SHA256, CKM_SHA_1]),
            mgf: CKG_MGF1_SHA256,
            source: 0,
            pSourceData: null_mut(),
            ulSourceDataLen: 0,
        },
        gcm: unsafe { std::mem::zeroed() },
        iv: [7; 16],
    });
    let p: *mut Mech = &mut *b;
    unsafe {
        match ty {
            CKM_RSA_PKCS_PSS | CKM_SHA256_RSA_PKCS_PSS => {
                (*p).m.pParameter = &mut (*p).pss as *mut _ as *mut c_void;
                (*p).m.ulParameterLen = std::mem::size_of::<CK_RSA_PKCS_PSS_PARAMS>() as CK_ULONG;
            }
            CKM_RSA_PKCS_OAEP => {
                (*p).oaep.mgf = if (*p).oaep.hashAlg == CKM_SHA_1 {
                    CKG_MGF1_SHA1
                } else {
                    CKG_MGF1_SHA256
                };
                (*p).m.pParameter = &mut (*p).oaep as *mut _ as *mut c_void;
                (*p).m.ulParameterLen = std::mem::size_of::<CK_RSA_PKCS_OAEP_PARAMS>() as CK_ULONG;
            }
            CKM_AES_GCM => {
                (*p).gcm.pIv = (*p).iv.as_mut_ptr();
                (*p).gcm.ulIvLen = 12;
                (*p).gcm.ulIvBits = 96;
                (*p).gcm.ulTagBits = 128;
                (*p).m.pParameter = &mut (*p).gcm as *mut _ as *mut c_void;
                (*p).m.ulParameterLen = std::mem::size_of::<CK_GCM_PARAMS>() as CK_ULONG;
            }
            CKM_AES_CBC_PAD => {
                (*p).m.pParameter = (*p).iv.as_mut_ptr() as *mut c_void;
                (*p).m.ulParameterLen = 16;
            }
            _ => {}
        }
    }
    b
}

/// Two-call output: a length query (NULL), then a buffer sized from the input; canaries and lengths checked.
fn two_call(what: &str, r: &mut R, mut op: impl FnMut(*mut u8, *mut CK_ULONG) -> CK_RV) -> CK_RV {
    let mut len: CK_ULONG = 0;
    if r.u8() % 3 != 0 {
        let rv = op(null_mut(), &mut len);
        check_last_error(what);
        if rv != CKR_OK {
            return rv;
        }
    } else {
        len = 64;
    }
    let mut b = Buf::new(size(r, (len as usize).min(1 << 16)));
    let mut l = b.len() as CK_ULONG;
    let rv = op(b.ptr(), &mut l);
    check_last_error(what);
    b.check(what);
    check_len(what, rv, l, b.len());
    if rv == CKR_BUFFER_TOO_SMALL {
        // Once more with what it asked for.
        let mut b = Buf::new((l as usize).min(1 << 16));
        let mut l2 = b.len() as CK_ULONG;
        let rv = op(b.ptr(), &mut l2);
        check_last_error(what);
        b.check(what);
        check_len(what, rv, l2, b.len());
        return rv;
    }
    rv
}

fn sign(f: &CK_FUNCTION_LIST, h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE, r: &mut R) {
    let ty = r.pick(SIGN_MECHS);
    let mut m = mech(r, ty);
    let rv = call!(f, C_SignInit(h, &mut m.m, o));
    check_last_error("C_SignInit");
    if rv != CKR_OK {
        return;
    }
    let mut data = vec![0x5Au8; r.pick(&[0usize, 1, 20, 32, 48, 64, 100, 300])];
    let rv = two_call("C_Sign", r, |p, l| unsafe {
        (f.C_Sign.unwrap())(h, data.as_mut_ptr(), data.len() as CK_ULONG, p, l)
    });
    if rv == CKR_OK || rv == CKR_BUFFER_TOO_SMALL {
        // Ends an operation still active after a length answer.
        let mut l: CK_ULONG = 0;
        let _ = call!(f, C_SignFinal(h, null_mut(), &mut l));
    }
    let _ = call!(f, C_SignInit(h, null_mut(), 0));
}

fn decrypt(f: &CK_FUNCTION_LIST, h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE, r: &mut R) {
    let ty = r.pick(DECRYPT_MECHS);
    let mut m = mech(r, ty);
    let rv = call!(f, C_DecryptInit(h, &mut m.m, o));
    check_last_error("C_DecryptInit");
    if rv != CKR_OK {
        return;
    }
    let mut data = match r.u8() % 4 {
        0 => b"vault:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_vec(),
        1 => vec![0x33; 256],
        2 => vec![0x01; 48],
        _ => r.bytes(300),
    };
    let _ = two_call("C_Decrypt", r, |p, l| unsafe {
        (f.C_Decrypt.unwrap())(h, data.as_mut_ptr(), data.len() as CK_ULONG, p, l)
    });
    let _ = call!(f, C_DecryptInit(h, null_mut(), 0));
}

fn encrypt(f: &CK_FUNCTION_LIST, h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE, r: &mut R) {
    let ty = r.pick(DECRYPT_MECHS);
    let mut m = mech(r, ty);
    let rv = call!(f, C_EncryptInit(h, &mut m.m, o));
    check_last_error("C_EncryptInit");
    if rv != CKR_OK {
        return;
    }
    let mut data = vec![0x42u8; r.pick(&[0usize, 1, 16, 32, 100])];
    let _ = two_call("C_Encrypt", r, |p, l| unsafe {
        (f.C_Encrypt.unwrap())(h, data.as_mut_ptr(), data.len() as CK_ULONG, p, l)
    });
    let _ = call!(f, C_EncryptInit(h, null_mut(), 0));
}

fn generate(f: &CK_FUNCTION_LIST, h: CK_SESSION_HANDLE, r: &mut R) {
    let mut tru: CK_BBOOL = CK_TRUE;
    let mut label = *b"fuzz";
    let mut p256 = [0x06u8, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let mut bits: CK_ULONG = 2048;
    let mut ed = [0x13u8, 0x07, b'e', b'd', b'2', b'5', b'5', b'1', b'9'];
    let a = |t: CK_ATTRIBUTE_TYPE, p: *mut c_void, n: usize| CK_ATTRIBUTE {
        type_: t,
        pValue: p,
        ulValueLen: n as CK_ULONG,
    };
    let which = r.u8() % 4;
    let tp = &mut tru as *mut _ as *mut c_void;
    let mut pubt = vec![
        a(CKA_TOKEN, tp, 1),
        a(CKA_LABEL, label.as_mut_ptr() as *mut c_void, 4),
    ];
    let mut privt = vec![
        a(CKA_TOKEN, tp, 1),
        a(CKA_SIGN, tp, 1),
        a(CKA_LABEL, label.as_mut_ptr() as *mut c_void, 4),
    ];
    let m = match which {
        0 => {
            pubt.push(a(CKA_EC_PARAMS, p256.as_mut_ptr() as *mut c_void, 10));
            CKM_EC_KEY_PAIR_GEN
        }
        1 => {
            pubt.push(a(
                CKA_MODULUS_BITS,
                &mut bits as *mut _ as *mut c_void,
                std::mem::size_of::<CK_ULONG>(),
            ));
            CKM_RSA_PKCS_KEY_PAIR_GEN
        }
        2 => {
            pubt.push(a(CKA_EC_PARAMS, ed.as_mut_ptr() as *mut c_void, 9));
            CKM_EC_EDWARDS_KEY_PAIR_GEN
        }
        _ => {
            let mut mm = CK_MECHANISM {
                mechanism: CKM_GENERIC_SECRET_KEY_GEN,
                pParameter: null_mut(),
                ulParameterLen: 0,
            };
            let mut vl: CK_ULONG = 32;
            let mut t = [
                a(CKA_TOKEN, tp, 1),
                a(CKA_SIGN, tp, 1),
                a(CKA_LABEL, label.as_mut_ptr() as *mut c_void, 4),
                a(
                    CKA_VALUE_LEN,
                    &mut vl as *mut _ as *mut c_void,
                    std::mem::size_of::<CK_ULONG>(),
                ),
            ];
            let mut k: CK_OBJECT_HANDLE = 0;
            let _ = call!(f, C_GenerateKey(h, &mut mm, t.as_mut_ptr(), 4, &mut k));
            check_last_error("C_GenerateKey");
            return;
        }
    };
    let mut mm = CK_MECHANISM {
        mechanism: m,
        pParameter: null_mut(),
        ulParameterLen: 0,
    };
    let (mut pk, mut sk): (CK_OBJECT_HANDLE, CK_OBJECT_HANDLE) = (0, 0);
    let _ = call!(
        f,
        C_GenerateKeyPair(
            h,
            &mut mm,
            pubt.as_mut_ptr(),
            pubt.len() as CK_ULONG,
            privt.as_mut_ptr(),
            privt.len() as CK_ULONG,
            &mut pk,
            &mut sk
        )
    );
    check_last_error("C_GenerateKeyPair");
    if pk != 0 && r.u8() % 2 == 0 {
        attributes(f, h, pk, r);
    }
}

/// C_Initialize (when not initialized yet, when `always`, or when the input's first byte is odd: after
/// C_Finalize), then the sequence. Re-initializing on every input costs most of the time of the HTTP targets (the
/// clients, their TLS roots); the input chooses, so that logins and start-up paths are fuzzed too.
pub fn run_once(f: &CK_FUNCTION_LIST, r: &mut R, pin: &[u8], slot_index: usize, always: bool) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static UP: AtomicBool = AtomicBool::new(false);
    let fresh = r.u8() & 1 == 1 || always;
    if UP.load(Ordering::Relaxed) && fresh {
        let rv = call!(f, C_Finalize(null_mut()));
        assert!(rv_ok(rv), "C_Finalize: {rv:#x}");
        UP.store(false, Ordering::Relaxed);
    }
    if !UP.load(Ordering::Relaxed) {
        let mut a = init_args();
        let rv = call!(f, C_Initialize(&mut a as *mut _ as *mut c_void));
        check_last_error("C_Initialize");
        if rv != CKR_OK {
            // A backend that fails at start (the hostile upstream's C_Initialize) may fail the bridge's: a CK_RV.
            return;
        }
        UP.store(true, Ordering::Relaxed);
    }
    drive(f, r, pin, slot_index);
}

/// Splits the input: the first two bytes say how much goes to the client's calls; the rest is the backend's.
pub fn split(data: &[u8]) -> (&[u8], &[u8]) {
    if data.len() < 2 {
        return (data, &[]);
    }
    let k = u16::from_le_bytes([data[0], data[1]]) as usize % (data.len() - 1);
    (&data[2..2 + k], &data[2 + k..])
}

/// A temp directory for the target's configuration (removed by run.sh).
pub fn work_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("p11bridge-{name}-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&d);
    d
}
