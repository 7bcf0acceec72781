//! The commands.

use crate::module::{self, ck, last_error, warn_notes};
use crate::pin::{Pin, Pins};
use crate::{asn1, outln, warn, CertCmd, Cmd, Fail, KeyKind, SigFormat, R};
use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{
    Attribute, AttributeType, CertificateType, KeyType, ObjectClass, ObjectHandle,
};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

use p11bridge_vendor::CKA_P11BRIDGE_BACKEND;

fn backend_attr(name: &str) -> Attribute {
    Attribute::VendorDefined((
        AttributeType::VendorDefined(CKA_P11BRIDGE_BACKEND),
        name.as_bytes().to_vec(),
    ))
}

pub fn run(module: &Option<PathBuf>, cmd: Cmd, pins: &Pins) -> R<()> {
    match cmd {
        Cmd::InstallP11kit { path } => install_p11kit(module, &path),
        Cmd::Check { json } => check(module, json),
        Cmd::List { json, tsv, token } => list(module, pins, json, tsv, token.as_deref()),
        Cmd::Sign {
            uri,
            mechanism,
            input,
            output,
            format,
        } => sign(module, pins, &uri, &mechanism, &input, &output, format),
        Cmd::Verify {
            uri,
            mechanism,
            input,
            signature,
        } => verify(module, pins, &uri, &mechanism, &input, &signature),
        Cmd::Keygen {
            backend,
            kind,
            label,
            id,
            token,
        } => keygen(
            module,
            pins,
            &backend,
            kind,
            &label,
            id.as_deref(),
            token.as_deref(),
        ),
        Cmd::Export { uri, output } => export(module, &uri, output.as_deref()),
        Cmd::Cert {
            cmd: CertCmd::Import { uri, cert, label },
        } => cert_import(module, pins, &uri, &cert, label.as_deref()),
    }
}

fn read_input(p: &Path) -> R<Vec<u8>> {
    if p == Path::new("-") {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)
            .map_err(|e| format!("standard input: {e}"))?;
        return Ok(v);
    }
    std::fs::read(p).map_err(|e| Fail::Msg(format!("{}: {e}", p.display())))
}

fn write_output(p: Option<&Path>, data: &[u8]) -> R<()> {
    match p {
        None => crate::out_bytes(data),
        Some(p) if p == Path::new("-") => crate::out_bytes(data),
        Some(p) => std::fs::write(p, data).map_err(|e| Fail::Msg(format!("{}: {e}", p.display()))),
    }
}

fn install_p11kit(module: &Option<PathBuf>, path: &Path) -> R<()> {
    let m = module::module_path(module)?;
    let m = std::fs::canonicalize(&m).unwrap_or(m);
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| Fail::Msg(format!("{}: {e}", d.display())))?;
    }
    // The same three settings as contrib/p11-kit/p11bridge.module (the package's file), with the module found.
    let text = format!(
        "# p11bridge: one token over an HSM, AWS KMS and Vault transit.\nmodule: {}\n\
         # Not needed for the system to work: a failure to load p11bridge does not fail p11-kit.\ncritical: no\n\
         # p11bridge holds keys, not trust anchors.\ntrust-policy: no\n",
        m.display()
    );
    std::fs::write(path, text).map_err(|e| Fail::Msg(format!("{}: {e}", path.display())))?;
    outln!("wrote {}", path.display())
}

// ---------------------------------------------------------------------------------------------------------------
// check

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn check(module: &Option<PathBuf>, json: bool) -> R<()> {
    let p = match module::open(module) {
        Ok(p) => p,
        Err(e) => {
            if json {
                let msg = match &e {
                    Fail::Msg(m) => m.clone(),
                    Fail::Pipe => String::new(),
                };
                let (config, _) = module::config_path();
                outln!(
                    "{}",
                    json!({"config": config.display().to_string(), "ok": false, "error": msg})
                )?;
            }
            return Err(e);
        }
    };
    let text = module::check_report()?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| Fail::Msg(format!("C_P11BRIDGE_Check: not JSON: {e}")))?;
    drop(p);
    let mut failed = Vec::new();
    let mut checks = 0u64;
    let empty = Vec::new();
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let n = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    if json {
        // As the module wrote it (its key order; serde_json's Value would sort the keys).
        outln!("{text}")?;
    } else {
        outln!("configuration {}", s(&v, "config"))?;
    }
    for slot in v.get("slots").and_then(Value::as_array).unwrap_or(&empty) {
        let kind = s(slot, "kind");
        let token = s(slot, "token");
        let id = n(slot, "slot");
        if !json {
            match (kind.as_str(), token.is_empty()) {
                ("mirror", true) => {
                    outln!("slot {id}: mirror of an upstream slot without an initialized token")?
                }
                ("mirror", false) => {
                    outln!("slot {id}: token \"{token}\" (mirror of an upstream token)")?
                }
                _ => outln!("slot {id}: token \"{token}\" (unified)")?,
            }
        }
        for (key, what) in [("user_pin", "user PIN"), ("so_pin", "SO PIN")] {
            let Some(pin) = slot.get(key).filter(|p| !p.is_null()) else {
                continue;
            };
            checks += 1;
            let problem = pin.get("problem").and_then(Value::as_str);
            if let Some(pr) = problem {
                failed.push(format!("{what} of token \"{token}\""));
                if !json {
                    outln!("  {what} {}: FAILED: {pr}", s(pin, "reference"))?;
                }
            } else if !json {
                outln!("  {what} {}: readable", s(pin, "reference"))?;
            }
        }
        for b in slot
            .get("backends")
            .and_then(Value::as_array)
            .unwrap_or(&empty)
        {
            checks += 1;
            let ok = b.get("ok").and_then(Value::as_bool).unwrap_or(false);
            let name = s(b, "name");
            if !ok {
                failed.push(format!("backend \"{name}\" of token \"{token}\""));
            }
            if json {
                continue;
            }
            outln!(
                "  backend \"{name}\" ({}): {}",
                s(b, "kind"),
                if ok { "OK" } else { "FAILED" }
            )?;
            let endpoint = s(b, "endpoint");
            if !endpoint.is_empty() {
                outln!("      endpoint:     {endpoint}")?;
            }
            outln!("      login:        {}", s(b, "login"))?;
            if kind != "mirror" {
                outln!(
                    "      objects:      {} ({}, {})",
                    n(b, "objects"),
                    plural(n(b, "private_keys"), "private key", "private keys"),
                    plural(n(b, "secret_keys"), "secret key", "secret keys")
                )?;
            }
            let names = |k: &str| -> Vec<String> {
                b.get(k)
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let (found, missing) = (names("keys_found"), names("keys_missing"));
            if !found.is_empty() {
                outln!("      keys found:   {}", found.join(", "))?;
            }
            if !missing.is_empty() {
                outln!("      keys missing: {}", missing.join(", "))?;
            }
            // Certificates from Vault PKI: serial and expiry, or none yet; the last failure is among the problems.
            for c in b.get("pki").and_then(Value::as_array).unwrap_or(&empty) {
                let state = match (
                    c.get("serial").and_then(Value::as_str),
                    c.get("not_after").and_then(Value::as_str),
                ) {
                    (Some(serial), Some(until)) => format!(
                        "serial {serial}, expires {until}{}",
                        c.get("expires_in_s")
                            .and_then(Value::as_i64)
                            .map(|t| if t > 0 {
                                format!(" (in {t} s)")
                            } else {
                                " (expired)".into()
                            })
                            .unwrap_or_default()
                    ),
                    _ => "none issued yet".into(),
                };
                let failing = if c.get("last_error").is_some_and(|e| !e.is_null()) {
                    "; last renewal failed"
                } else {
                    ""
                };
                outln!(
                    "      certificate:  {} from Vault PKI {}: {state}{failing}",
                    s(c, "key"),
                    s(c, "vault")
                )?;
            }
            if let Some(ms) = b.get("latency_ms").and_then(Value::as_f64) {
                outln!("      latency:      {ms:.1} ms")?;
            }
            for pr in names("problems") {
                outln!("      problem:      {pr}")?;
            }
        }
    }
    let ok = v.get("ok").and_then(Value::as_bool).unwrap_or(false);
    if ok && failed.is_empty() {
        if !json {
            outln!("all {} passed", plural(checks, "check", "checks"))?;
        }
        return Ok(());
    }
    Err(Fail::Msg(if failed.is_empty() {
        "the module reports a failure".into()
    } else {
        format!(
            "{} of {} failed: {}",
            failed.len(),
            plural(checks, "check", "checks"),
            failed.join(", ")
        )
    }))
}

// ---------------------------------------------------------------------------------------------------------------
// tokens, sessions, URIs

struct Tok {
    slot: Slot,
    label: String,
    unified: bool,
}

fn tokens(p: &Pkcs11) -> R<Vec<Tok>> {
    let mut v = Vec::new();
    for slot in p
        .get_slots_with_token()
        .map_err(|e| ck("C_GetSlotList", e))?
    {
        let info = p
            .get_token_info(slot)
            .map_err(|e| ck("C_GetTokenInfo", e))?;
        if !info.token_initialized() {
            continue;
        }
        v.push(Tok {
            slot,
            label: info.label().to_string(),
            unified: info.manufacturer_id() == "p11bridge",
        });
    }
    Ok(v)
}

fn open_session(p: &Pkcs11, t: &Tok, rw: bool) -> R<Session> {
    let s = if rw {
        p.open_rw_session(t.slot)
    } else {
        p.open_ro_session(t.slot)
    };
    s.map_err(|e| ck(&format!("opening a session on token \"{}\"", t.label), e))
}

fn login(s: &Session, t: &Tok, pin: &Pin) -> R<()> {
    match s.login(UserType::User, Some(&pin.pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
            // A backend whose own login failed is no failure of C_Login: its private keys are missing.
            warn_notes();
            Ok(())
        }
        Err(e) => Err(ck(
            &format!("login to token \"{}\" (PIN from {})", t.label, pin.from),
            e,
        )),
    }
}

fn find(s: &Session, template: &[Attribute]) -> R<Vec<ObjectHandle>> {
    let v = s.find_objects(template).map_err(|e| ck("searching", e))?;
    Ok(v)
}

/// Parses an RFC 7512 URI's path attributes (token, object, id, type) and query (pin-value).
pub fn parse_uri(uri: &str) -> R<Vec<(String, Vec<u8>)>> {
    let rest = uri
        .strip_prefix("pkcs11:")
        .ok_or_else(|| format!("not a pkcs11: URI: {uri}"))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut out = Vec::new();
    for part in path
        .split(';')
        .chain(query.split('&'))
        .filter(|p| !p.is_empty())
    {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("bad URI attribute: {part}"))?;
        let mut bytes = Vec::new();
        let b = v.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                let h = std::str::from_utf8(b.get(i + 1..i + 3).ok_or("bad % escape in URI")?)
                    .map_err(|_| "bad % escape in URI")?;
                bytes.push(u8::from_str_radix(h, 16).map_err(|_| "bad % escape in URI")?);
                i += 3;
            } else {
                bytes.push(b[i]);
                i += 1;
            }
        }
        out.push((k.to_string(), bytes));
    }
    Ok(out)
}

fn pct(b: &[u8]) -> String {
    b.iter().map(|x| format!("%{x:02x}")).collect()
}

fn pct_text(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn class_word(c: ObjectClass) -> &'static str {
    match c {
        ObjectClass::PRIVATE_KEY => "private",
        ObjectClass::PUBLIC_KEY => "public",
        ObjectClass::SECRET_KEY => "secret-key",
        ObjectClass::CERTIFICATE => "cert",
        ObjectClass::DATA => "data",
        _ => "other",
    }
}

fn make_uri(token: &str, label: &str, id: &[u8], class: &str) -> String {
    format!(
        "pkcs11:token={};object={};id={};type={class}",
        pct_text(token),
        pct_text(label),
        pct(id)
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Login {
    /// Never logs in (public objects).
    Never,
    /// Logs in when a PIN is given, else asks on a terminal.
    Prompt,
}

/// The one object a URI names, in a session on its token (logged in as `login` says).
fn by_uri(
    p: &Pkcs11,
    pins: &Pins,
    uri: &str,
    default: ObjectClass,
    rw: bool,
    login_as: Login,
) -> R<(Session, ObjectHandle, Tok)> {
    let attrs = parse_uri(uri)?;
    let get = |k: &str| attrs.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
    let token = get("token").map(|t| String::from_utf8_lossy(&t).into_owned());
    let all = tokens(p)?;
    let tok = match &token {
        Some(t) => all.into_iter().find(|x| &x.label == t).ok_or_else(|| {
            format!("no token labelled \"{t}\" (p11bridge list shows the tokens)")
        })?,
        None => {
            let mut all = all;
            let i = all.iter().position(|t| t.unified).unwrap_or(0);
            if all.is_empty() {
                return Err("the module shows no token".into());
            }
            all.swap_remove(i)
        }
    };
    let class = match get("type").as_deref() {
        Some(b"private") => ObjectClass::PRIVATE_KEY,
        Some(b"public") => ObjectClass::PUBLIC_KEY,
        Some(b"secret-key") => ObjectClass::SECRET_KEY,
        Some(b"cert") => ObjectClass::CERTIFICATE,
        Some(b"data") => ObjectClass::DATA,
        Some(other) => {
            return Err(Fail::Msg(format!(
                "type={} is none of private, public, secret-key, cert, data",
                String::from_utf8_lossy(other)
            )))
        }
        None => default,
    };
    let s = open_session(p, &tok, rw)?;
    let mut logged_in = false;
    let needs_login = matches!(class, ObjectClass::PRIVATE_KEY | ObjectClass::SECRET_KEY) || rw;
    if login_as == Login::Prompt || get("pin-value").is_some() {
        if let Some(pin) = pins.get(&tok.label, get("pin-value").as_deref(), needs_login)? {
            login(&s, &tok, &pin)?;
            logged_in = true;
        }
    }
    let mut template = vec![Attribute::Class(class)];
    if let Some(l) = get("object") {
        template.push(Attribute::Label(l));
    }
    if let Some(i) = get("id") {
        template.push(Attribute::Id(i));
    }
    let mut found = find(&s, &template)?;
    if found.is_empty() && class == ObjectClass::PRIVATE_KEY && get("type").is_none() {
        // A secret key signs too (HMAC).
        template[0] = Attribute::Class(ObjectClass::SECRET_KEY);
        found = find(&s, &template)?;
    }
    match found.len() {
        1 => {
            warn_notes();
            Ok((s, found[0], tok))
        }
        0 => {
            let mut m = format!("no object matches {uri}");
            if !logged_in && needs_login {
                m.push_str(
                    " (not logged in: private and secret keys need the PIN: --pin-file FILE, $P11BRIDGE_PIN, or \
                     run on a terminal to be asked)",
                );
            }
            // A backend that could not list its objects: the reason the key may be missing.
            if let Some(text) = last_error()
                .map(|(_, t)| t)
                .filter(|t| !t.is_empty())
                .or_else(module::last_note)
            {
                m.push_str(&format!(". Note: {text}"));
            }
            Err(Fail::Msg(m))
        }
        n => Err(Fail::Msg(format!(
            "{n} objects match {uri}: add id= or type= (p11bridge list shows them)"
        ))),
    }
}

fn attrs(s: &Session, h: ObjectHandle, types: &[AttributeType]) -> Vec<Attribute> {
    s.get_attributes(h, types).unwrap_or_default()
}

fn bytes_attr(s: &Session, h: ObjectHandle, t: AttributeType) -> Option<Vec<u8>> {
    attrs(s, h, &[t]).into_iter().find_map(|a| match a {
        Attribute::Label(v)
        | Attribute::Id(v)
        | Attribute::EcParams(v)
        | Attribute::EcPoint(v)
        | Attribute::Modulus(v)
        | Attribute::PublicExponent(v)
        | Attribute::PublicKeyInfo(v)
        | Attribute::Value(v)
        | Attribute::VendorDefined((_, v)) => Some(v),
        _ => None,
    })
}

fn class_of(s: &Session, h: ObjectHandle) -> Option<ObjectClass> {
    attrs(s, h, &[AttributeType::Class])
        .into_iter()
        .find_map(|a| match a {
            Attribute::Class(c) => Some(c),
            _ => None,
        })
}

fn key_type_of(s: &Session, h: ObjectHandle) -> Option<KeyType> {
    attrs(s, h, &[AttributeType::KeyType])
        .into_iter()
        .find_map(|a| match a {
            Attribute::KeyType(k) => Some(k),
            _ => None,
        })
}

// ---------------------------------------------------------------------------------------------------------------
// list

fn key_type_word(k: KeyType) -> String {
    match k {
        KeyType::RSA => "rsa".into(),
        KeyType::EC => "ec".into(),
        KeyType::EC_EDWARDS => "ed25519".into(),
        KeyType::AES => "aes".into(),
        KeyType::GENERIC_SECRET => "generic-secret".into(),
        other => format!("{other}")
            .trim_start_matches("CKK_")
            .to_ascii_lowercase()
            .replace(['_', ' '], "-"),
    }
}

fn list(module: &Option<PathBuf>, pins: &Pins, json: bool, tsv: bool, only: Option<&str>) -> R<()> {
    let p = module::open(module)?;
    let mut rows: Vec<Value> = Vec::new();
    let mut toks = tokens(&p)?;
    if let Some(t) = only {
        toks.retain(|x| x.label == t);
        if toks.is_empty() {
            return Err(Fail::Msg(format!("no token labelled \"{t}\"")));
        }
    }
    let mut no_pin = false;
    for tok in &toks {
        let s = open_session(&p, tok, false)?;
        if tok.unified || only.is_some() {
            // list never prompts: a PIN only from --pin, --pin-file or $P11BRIDGE_PIN.
            match pins.get(&tok.label, None, false)? {
                Some(pin) => login(&s, tok, &pin)?,
                None => no_pin = true,
            }
        }
        let found = find(&s, &[])?;
        warn_notes();
        let mut tok_rows: Vec<Value> = Vec::new();
        for h in found {
            let a = attrs(
                &s,
                h,
                &[
                    AttributeType::Class,
                    AttributeType::KeyType,
                    AttributeType::Label,
                    AttributeType::Id,
                    AttributeType::ModulusBits,
                    AttributeType::Modulus,
                    AttributeType::EcParams,
                    AttributeType::ValueLen,
                    AttributeType::CertificateType,
                    AttributeType::Sign,
                    AttributeType::Verify,
                    AttributeType::Encrypt,
                    AttributeType::Decrypt,
                    AttributeType::Wrap,
                    AttributeType::Unwrap,
                    AttributeType::VendorDefined(CKA_P11BRIDGE_BACKEND),
                ],
            );
            let mut row = json!({"token": tok.label});
            let mut usages = Vec::new();
            let mut id = Vec::new();
            let mut label = String::new();
            let mut class = "other";
            let mut kt = None;
            let mut bits = None;
            let mut curve = None;
            let mut cert = false;
            for x in a {
                match x {
                    Attribute::Class(c) => class = class_word(c),
                    Attribute::KeyType(k) => kt = Some(key_type_word(k)),
                    Attribute::Label(l) => label = String::from_utf8_lossy(&l).into_owned(),
                    Attribute::Id(i) => id = i,
                    Attribute::ModulusBits(b) => bits = Some(u64::from(b)),
                    // A private key has the modulus, not always its size.
                    Attribute::Modulus(m) if bits.is_none() => {
                        let m: Vec<u8> = m.into_iter().skip_while(|b| *b == 0).collect();
                        if let Some(first) = m.first() {
                            bits = Some(m.len() as u64 * 8 - u64::from(first.leading_zeros()));
                        }
                    }
                    Attribute::ValueLen(b) => bits = Some(u64::from(b) * 8),
                    Attribute::EcParams(p) => {
                        curve = Some(asn1::curve_of(&p).map_or("other", |c| c.0))
                    }
                    Attribute::CertificateType(c) => cert = c == CertificateType::X_509,
                    Attribute::Sign(true) => usages.push("sign"),
                    Attribute::Verify(true) => usages.push("verify"),
                    Attribute::Encrypt(true) => usages.push("encrypt"),
                    Attribute::Decrypt(true) => usages.push("decrypt"),
                    Attribute::Wrap(true) => usages.push("wrap"),
                    Attribute::Unwrap(true) => usages.push("unwrap"),
                    Attribute::VendorDefined((_, b)) => {
                        row["backend"] = json!(String::from_utf8_lossy(&b))
                    }
                    _ => {}
                }
            }
            let ty = match (kt.as_deref(), bits, curve) {
                (Some("ed25519"), _, _) => "ed25519".to_string(),
                (Some("ec"), _, Some(c)) => format!("ec-{c}"),
                (Some(t), Some(b), _) => format!("{t}-{b}"),
                (Some(t), None, _) => t.to_string(),
                (None, _, _) if cert => "x509".into(),
                _ => "-".into(),
            };
            if let Some(k) = &kt {
                row["key_type"] = json!(k);
            }
            if let Some(b) = bits {
                row["bits"] = json!(b);
            }
            if let Some(c) = curve {
                row["curve"] = json!(c);
            }
            row["class"] = json!(class);
            row["type"] = json!(ty);
            row["label"] = json!(label);
            row["id"] = json!(id.iter().map(|b| format!("{b:02x}")).collect::<String>());
            row["usages"] = json!(usages);
            row["uri"] = json!(make_uri(&tok.label, &label, &id, class));
            tok_rows.push(row);
        }
        // Backend by backend in the order they first appear: the configuration's (the module searches its
        // backends in that order); the sort is stable, so each backend's own order stays.
        let mut order: Vec<String> = Vec::new();
        for r in &tok_rows {
            let b = r["backend"].as_str().unwrap_or("").to_string();
            if !order.contains(&b) {
                order.push(b);
            }
        }
        tok_rows.sort_by_key(|r| {
            let b = r["backend"].as_str().unwrap_or("");
            order.iter().position(|x| x == b).unwrap_or(usize::MAX)
        });
        rows.extend(tok_rows);
    }
    if no_pin {
        warn("public objects only: give --pin-file FILE, $P11BRIDGE_PIN or --pin to see private keys");
    }
    if json {
        return outln!(
            "{}",
            serde_json::to_string_pretty(&rows).map_err(|e| Fail::Msg(e.to_string()))?
        );
    }
    let cells = |r: &Value, full: bool| -> Vec<String> {
        let s = |k: &str| {
            r.get(k)
                .and_then(Value::as_str)
                .filter(|x| !x.is_empty())
                .unwrap_or("-")
                .to_string()
        };
        let letters: String = r["usages"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|u| u.as_str().and_then(|x| x.chars().next()))
                    .collect()
            })
            .unwrap_or_default();
        let mut id = s("id");
        if !full && id.chars().count() > 20 {
            id = format!("{}…", id.chars().take(19).collect::<String>());
        }
        vec![
            s("token"),
            s("class"),
            s("type"),
            s("backend"),
            if letters.is_empty() {
                "-".into()
            } else {
                letters
            },
            s("label"),
            id,
            s("uri"),
        ]
    };
    let header: Vec<String> = [
        "TOKEN", "CLASS", "TYPE", "BACKEND", "USAGES", "LABEL", "ID", "URI",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    if tsv {
        outln!("{}", header.join("\t"))?;
        for r in &rows {
            // A tab or newline inside a label would break the columns: shown as a space.
            let c: Vec<String> = cells(r, true)
                .into_iter()
                .map(|x| x.replace(['\t', '\n', '\r'], " "))
                .collect();
            outln!("{}", c.join("\t"))?;
        }
        return Ok(());
    }
    let table: Vec<Vec<String>> = std::iter::once(header)
        .chain(rows.iter().map(|r| cells(r, false)))
        .collect();
    let mut widths = [0usize; 8];
    for r in &table {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    for r in &table {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(c);
                line.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
            }
        }
        outln!("{line}")?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// sign / verify

fn mechanism_of(name: &str) -> R<Mechanism<'static>> {
    let pss = |h, m, n: u64| PkcsPssParams {
        hash_alg: h,
        mgf: m,
        s_len: n.into(),
    };
    Ok(match name.to_ascii_uppercase().as_str() {
        "ECDSA" => Mechanism::Ecdsa,
        "ECDSA-SHA256" => Mechanism::EcdsaSha256,
        "ECDSA-SHA384" => Mechanism::EcdsaSha384,
        "ECDSA-SHA512" => Mechanism::EcdsaSha512,
        "RSA-PKCS" => Mechanism::RsaPkcs,
        "SHA256-RSA-PKCS" => Mechanism::Sha256RsaPkcs,
        "SHA384-RSA-PKCS" => Mechanism::Sha384RsaPkcs,
        "SHA512-RSA-PKCS" => Mechanism::Sha512RsaPkcs,
        "SHA256-RSA-PKCS-PSS" => {
            Mechanism::Sha256RsaPkcsPss(pss(MechanismType::SHA256, PkcsMgfType::MGF1_SHA256, 32))
        }
        "SHA384-RSA-PKCS-PSS" => {
            Mechanism::Sha384RsaPkcsPss(pss(MechanismType::SHA384, PkcsMgfType::MGF1_SHA384, 48))
        }
        "SHA512-RSA-PKCS-PSS" => {
            Mechanism::Sha512RsaPkcsPss(pss(MechanismType::SHA512, PkcsMgfType::MGF1_SHA512, 64))
        }
        "EDDSA" => Mechanism::Eddsa(cryptoki::mechanism::eddsa::EddsaParams::new(
            cryptoki::mechanism::eddsa::EddsaSignatureScheme::Pure,
        )),
        "SHA256-HMAC" => Mechanism::Sha256Hmac,
        "SHA384-HMAC" => Mechanism::Sha384Hmac,
        "SHA512-HMAC" => Mechanism::Sha512Hmac,
        other => return Err(Fail::Msg(format!("unknown mechanism {other}"))),
    })
}

fn is_ecdsa(name: &str) -> bool {
    name.to_ascii_uppercase().starts_with("ECDSA")
}

/// The field size in bytes of an EC key (from its curve, else from its public point).
fn ec_field(s: &Session, h: ObjectHandle) -> Option<usize> {
    if let Some((_, f)) = bytes_attr(s, h, AttributeType::EcParams)
        .as_deref()
        .and_then(asn1::curve_of)
    {
        return Some(f);
    }
    let point = asn1::ec_point(&bytes_attr(s, h, AttributeType::EcPoint)?);
    (point.first() == Some(&4)).then(|| (point.len() - 1) / 2)
}

fn sign(
    module: &Option<PathBuf>,
    pins: &Pins,
    uri: &str,
    mech: &str,
    input: &Path,
    output: &Path,
    format: SigFormat,
) -> R<()> {
    let data = read_input(input)?;
    let m = mechanism_of(mech)?;
    let p = module::open(module)?;
    let (s, key, _) = by_uri(
        &p,
        pins,
        uri,
        ObjectClass::PRIVATE_KEY,
        false,
        Login::Prompt,
    )?;
    let sig = s.sign(&m, key, &data).map_err(|e| ck("", e))?;
    let sig = if is_ecdsa(mech) && format == SigFormat::Der {
        asn1::ecdsa_raw_to_der(&sig)?
    } else {
        sig
    };
    write_output(Some(output), &sig)
}

fn verify(
    module: &Option<PathBuf>,
    pins: &Pins,
    uri: &str,
    mech: &str,
    input: &Path,
    signature: &Path,
) -> R<()> {
    let data = read_input(input)?;
    let mut sig =
        std::fs::read(signature).map_err(|e| Fail::Msg(format!("{}: {e}", signature.display())))?;
    let m = mechanism_of(mech)?;
    let p = module::open(module)?;
    // HMAC keys are secret: they need the PIN; a public key does not.
    let secret = uri.contains("type=secret-key");
    let (s, key, _) = by_uri(
        &p,
        pins,
        uri,
        ObjectClass::PUBLIC_KEY,
        false,
        if secret { Login::Prompt } else { Login::Never },
    )?;
    if is_ecdsa(mech) {
        let field = ec_field(&s, key).ok_or("cannot tell the key's curve")?;
        if sig.len() != 2 * field {
            sig = asn1::ecdsa_der_to_raw(&sig, field)?;
        }
    }
    match s.verify(&m, key, &data, &sig) {
        Ok(()) => outln!("signature OK"),
        Err(e) => Err(ck("", e)),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// keygen

fn parse_hex(h: &str) -> R<Vec<u8>> {
    let h = h.trim_start_matches("0x");
    if h.len() & 1 != 0 || h.is_empty() {
        return Err(Fail::Msg(format!("--id {h}: an even number of hex digits")));
    }
    (0..h.len())
        .step_by(2)
        .map(|i| {
            h.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .ok_or_else(|| Fail::Msg(format!("--id {h}: not hex")))
        })
        .collect()
}

fn random_id() -> R<Vec<u8>> {
    let mut id = vec![0u8; 16];
    // SAFETY: `id` has 16 writable bytes.
    let n = unsafe { libc::getrandom(id.as_mut_ptr().cast(), id.len(), 0) };
    if n != id.len() as isize {
        return Err(Fail::Msg(format!(
            "getrandom: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(id)
}

/// The unified token that has `backend` (or the `--token` one).
fn token_with_backend(p: &Pkcs11, backend: &str, only: Option<&str>) -> R<(Tok, Session)> {
    let mut tried = Vec::new();
    for tok in tokens(p)? {
        if only.is_some_and(|o| o != tok.label) || (only.is_none() && !tok.unified) {
            continue;
        }
        let s = open_session(p, &tok, true)?;
        match s.find_objects(&[backend_attr(backend)]) {
            Ok(_) => {
                let _ = last_error();
                return Ok((tok, s));
            }
            Err(CkError::Pkcs11(RvError::AttributeValueInvalid, _)) => {
                let _ = last_error();
                tried.push(tok.label.clone());
            }
            Err(e) => return Err(ck(&format!("token \"{}\"", tok.label), e)),
        }
    }
    Err(Fail::Msg(format!(
        "no token has a backend named \"{backend}\" (looked at: {}); the backends are the [backend.NAME] sections \
         listed in a [[slot]]'s backends",
        if tried.is_empty() {
            "no unified token".to_string()
        } else {
            tried.join(", ")
        }
    )))
}

fn keygen(
    module: &Option<PathBuf>,
    pins: &Pins,
    backend: &str,
    kind: KeyKind,
    label: &str,
    id: Option<&str>,
    only: Option<&str>,
) -> R<()> {
    let want_id = match id {
        Some(h) => Some(parse_hex(h)?),
        None => None,
    };
    let cka_id = match &want_id {
        Some(i) => i.clone(),
        None => random_id()?,
    };
    let p = module::open(module)?;
    let (tok, s) = token_with_backend(&p, backend, only)?;
    let pin = pins.get(&tok.label, None, true)?.ok_or_else(|| {
        Fail::Msg(format!(
            "creating a key needs the PIN of token \"{}\": --pin-file FILE, $P11BRIDGE_PIN, --pin, or run on a \
             terminal to be asked",
            tok.label
        ))
    })?;
    login(&s, &tok, &pin)?;
    let common = || {
        vec![
            Attribute::Token(true),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(cka_id.clone()),
            backend_attr(backend),
        ]
    };
    let private = || {
        let mut t = common();
        t.extend([
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
        ]);
        t
    };
    let public = |extra: Vec<Attribute>| {
        let mut t = common();
        t.push(Attribute::Verify(true));
        t.extend(extra);
        t
    };
    let pair = |mech: Mechanism, pub_extra: Vec<Attribute>| {
        s.generate_key_pair(&mech, &public(pub_extra), &private())
            .map(|(_, private)| private)
            .map_err(|e| ck("", e))
    };
    let rsa = |bits: u64| {
        vec![
            Attribute::ModulusBits(bits.into()),
            Attribute::PublicExponent(vec![1, 0, 1]),
        ]
    };
    let ec = |curve: &str| -> R<Vec<Attribute>> {
        Ok(vec![Attribute::EcParams(
            asn1::curve_params(curve).ok_or("unknown curve")?,
        )])
    };
    let aes = |bytes: u64| {
        let mut t = common();
        t.extend([
            Attribute::ValueLen(bytes.into()),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
        ]);
        s.generate_key(&Mechanism::AesKeyGen, &t)
            .map_err(|e| ck("", e))
    };
    let key = match kind {
        KeyKind::Rsa2048 => pair(Mechanism::RsaPkcsKeyPairGen, rsa(2048))?,
        KeyKind::Rsa3072 => pair(Mechanism::RsaPkcsKeyPairGen, rsa(3072))?,
        KeyKind::Rsa4096 => pair(Mechanism::RsaPkcsKeyPairGen, rsa(4096))?,
        KeyKind::P256 => pair(Mechanism::EccKeyPairGen, ec("p256")?)?,
        KeyKind::P384 => pair(Mechanism::EccKeyPairGen, ec("p384")?)?,
        KeyKind::P521 => pair(Mechanism::EccKeyPairGen, ec("p521")?)?,
        KeyKind::Ed25519 => pair(
            Mechanism::EccEdwardsKeyPairGen,
            // RFC 8410's id-Ed25519.
            vec![Attribute::EcParams(vec![0x06, 0x03, 0x2b, 0x65, 0x70])],
        )?,
        KeyKind::Aes128 => aes(16)?,
        KeyKind::Aes256 => aes(32)?,
    };
    warn_notes();
    let got_label = bytes_attr(&s, key, AttributeType::Label)
        .map(|l| String::from_utf8_lossy(&l).into_owned())
        .unwrap_or_else(|| label.to_string());
    let got_id = bytes_attr(&s, key, AttributeType::Id).unwrap_or_default();
    if want_id.as_ref().is_some_and(|w| *w != got_id) {
        warn(&format!(
            "backend \"{backend}\" chose the key's CKA_ID itself ({}), not --id",
            got_id
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ));
    }
    let class = class_of(&s, key).map_or("private", class_word);
    outln!("{}", make_uri(&tok.label, &got_label, &got_id, class))
}

// ---------------------------------------------------------------------------------------------------------------
// export / cert import

/// The SubjectPublicKeyInfo (DER) of a public (or private) key object: `CKA_PUBLIC_KEY_INFO` when the token has it,
/// else built from the modulus and exponent, or the curve and point.
fn public_key_der(s: &Session, h: ObjectHandle) -> R<Vec<u8>> {
    if let Some(info) = bytes_attr(s, h, AttributeType::PublicKeyInfo) {
        if !info.is_empty() && asn1::spki_key_bits(&info).is_some() {
            return Ok(info);
        }
    }
    let kt = key_type_of(s, h).ok_or("the object has no key type")?;
    let need = |t: AttributeType| {
        bytes_attr(s, h, t)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| Fail::Msg(format!("the key has no readable {t:?}")))
    };
    let der = match kt {
        KeyType::RSA => asn1::rsa_spki(
            &need(AttributeType::Modulus)?,
            &need(AttributeType::PublicExponent)?,
        ),
        KeyType::EC => asn1::ec_spki(
            &need(AttributeType::EcParams)?,
            &need(AttributeType::EcPoint)?,
            false,
        ),
        KeyType::EC_EDWARDS => asn1::ec_spki(&[], &need(AttributeType::EcPoint)?, true),
        other => {
            return Err(Fail::Msg(format!(
                "a {} key has no public key to export",
                key_type_word(other)
            )))
        }
    };
    Ok(der?)
}

/// The public key object beside a private key (same CKA_ID and backend), else the private key itself.
fn public_of(s: &Session, private: ObjectHandle) -> ObjectHandle {
    let mut t = vec![Attribute::Class(ObjectClass::PUBLIC_KEY)];
    if let Some(id) = bytes_attr(s, private, AttributeType::Id) {
        t.push(Attribute::Id(id));
    }
    if let Some(b) = bytes_attr(
        s,
        private,
        AttributeType::VendorDefined(CKA_P11BRIDGE_BACKEND),
    ) {
        t.push(Attribute::VendorDefined((
            AttributeType::VendorDefined(CKA_P11BRIDGE_BACKEND),
            b,
        )));
    }
    match s.find_objects(&t) {
        Ok(v) if v.len() == 1 => v[0],
        _ => private,
    }
}

fn export(module: &Option<PathBuf>, uri: &str, output: Option<&Path>) -> R<()> {
    let p = module::open(module)?;
    // A private key's URI: its public key (public objects need no login).
    let uri = uri.replace("type=private", "type=public");
    let (s, h, _) = by_uri(
        &p,
        &Pins {
            flag: None,
            file: None,
        },
        &uri,
        ObjectClass::PUBLIC_KEY,
        false,
        Login::Never,
    )?;
    let pem = match class_of(&s, h) {
        Some(ObjectClass::CERTIFICATE) => {
            let der = bytes_attr(&s, h, AttributeType::Value)
                .filter(|v| !v.is_empty())
                .ok_or("the certificate object has no value")?;
            asn1::pem("CERTIFICATE", &der)?
        }
        Some(ObjectClass::PUBLIC_KEY) => asn1::pem("PUBLIC KEY", &public_key_der(&s, h)?)?,
        Some(c) => {
            return Err(Fail::Msg(format!(
                "a {} object has nothing public to export",
                class_word(c)
            )))
        }
        None => return Err("the object has no class".into()),
    };
    write_output(output, pem.as_bytes())
}

fn cert_import(
    module: &Option<PathBuf>,
    pins: &Pins,
    uri: &str,
    cert_file: &Path,
    label: Option<&str>,
) -> R<()> {
    let bytes =
        std::fs::read(cert_file).map_err(|e| Fail::Msg(format!("{}: {e}", cert_file.display())))?;
    let cert =
        asn1::read_cert(&bytes).map_err(|e| Fail::Msg(format!("{}: {e}", cert_file.display())))?;
    let p = module::open(module)?;
    let (s, key, tok) = by_uri(&p, pins, uri, ObjectClass::PRIVATE_KEY, true, Login::Prompt)?;
    if class_of(&s, key) != Some(ObjectClass::PRIVATE_KEY) {
        return Err("the URI must name a private key (type=private)".into());
    }
    let id = bytes_attr(&s, key, AttributeType::Id).unwrap_or_default();
    let key_label = bytes_attr(&s, key, AttributeType::Label).unwrap_or_default();
    let backend = bytes_attr(&s, key, AttributeType::VendorDefined(CKA_P11BRIDGE_BACKEND));
    // The certificate must be this key's: compare the public keys.
    let public = public_of(&s, key);
    let bits = public_key_der(&s, public)
        .ok()
        .and_then(|d| asn1::spki_key_bits(&d));
    match bits {
        Some(b) if b != cert.key_bits => {
            return Err(Fail::Msg(format!(
                "{} certifies another public key than this key's",
                cert_file.display()
            )))
        }
        Some(_) => {}
        None => warn("cannot read the key's public key: the certificate was not compared with it"),
    }
    let label = label.map_or(key_label, |l| l.as_bytes().to_vec());
    let mut t = vec![
        Attribute::Class(ObjectClass::CERTIFICATE),
        Attribute::CertificateType(CertificateType::X_509),
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Id(id.clone()),
        Attribute::Label(label.clone()),
        Attribute::Subject(cert.subject),
        Attribute::Issuer(cert.issuer),
        Attribute::SerialNumber(cert.serial),
        Attribute::Value(cert.der),
    ];
    if let Some(b) = backend {
        t.push(Attribute::VendorDefined((
            AttributeType::VendorDefined(CKA_P11BRIDGE_BACKEND),
            b,
        )));
    }
    s.create_object(&t).map_err(|e| ck("", e))?;
    warn_notes();
    outln!(
        "{}",
        make_uri(&tok.label, &String::from_utf8_lossy(&label), &id, "cert")
    )
}

#[cfg(test)]
mod tests {
    use super::parse_uri;

    #[test]
    fn uris() {
        let a =
            parse_uri("pkcs11:token=unified;object=my%20key;id=%01%02;type=private?pin-value=1234")
                .ok()
                .unwrap();
        assert_eq!(a[0], ("token".into(), b"unified".to_vec()));
        assert_eq!(a[1], ("object".into(), b"my key".to_vec()));
        assert_eq!(a[2], ("id".into(), vec![1, 2]));
        assert_eq!(a[4], ("pin-value".into(), b"1234".to_vec()));
        assert!(parse_uri("file:x").is_err());
        assert!(parse_uri("pkcs11:id=%0").is_err());
    }
}
