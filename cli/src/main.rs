//! `p11bridge`: the operator's command line, going through the same `libp11bridge.so` every consumer loads.
//!
//! - `check`: validates the configuration and shows, per backend, whether it answers, how many objects it shows
//!   and how long the first search took.
//! - `list`: every object of every token with its RFC 7512 URI (a table, or `--json`).
//! - `sign` / `verify`: for scripts and smoke checks, by URI.
//! - `install-p11kit`: writes the p11-kit module file.

use clap::{Parser, Subcommand};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

const CKA_P11BRIDGE_BACKEND: u64 = 0x8B11_D001;

#[derive(Parser)]
#[command(
    name = "p11bridge",
    version,
    about = "Inspect and use p11bridge's unified PKCS#11 token"
)]
struct Cli {
    /// The module (default: $P11BRIDGE_MODULE, else libp11bridge.so beside this program, else
    /// /usr/lib/p11bridge/libp11bridge.so).
    #[arg(long, global = true)]
    module: Option<PathBuf>,
    /// The configuration file (default: as the module finds it: $P11BRIDGE_CONFIG, ...).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// The token PIN (default: $P11BRIDGE_PIN); without it only public objects are seen.
    #[arg(long, global = true)]
    pin: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Validate the configuration and reach every backend.
    Check,
    /// List every object of every token, with its URI.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Sign a file with the private key a URI names; writes the signature.
    Sign {
        #[arg(long)]
        uri: String,
        /// ECDSA, ECDSA-SHA256, SHA256-RSA-PKCS, SHA256-RSA-PKCS-PSS, EDDSA, SHA256-HMAC
        #[arg(long, short)]
        mechanism: String,
        #[arg(long, short)]
        input: PathBuf,
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Verify a signature with the public key (or secret key) a URI names.
    Verify {
        #[arg(long)]
        uri: String,
        #[arg(long, short)]
        mechanism: String,
        #[arg(long, short)]
        input: PathBuf,
        #[arg(long, short)]
        signature: PathBuf,
    },
    /// Write the p11-kit module file (default /etc/pkcs11/modules/p11bridge.module).
    InstallP11kit {
        #[arg(long, default_value = "/etc/pkcs11/modules/p11bridge.module")]
        path: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("p11bridge: {e}");
            ExitCode::FAILURE
        }
    }
}

type R<T> = Result<T, String>;

fn module_path(given: &Option<PathBuf>) -> PathBuf {
    if let Some(p) = given {
        return p.clone();
    }
    if let Some(p) = std::env::var_os("P11BRIDGE_MODULE") {
        return PathBuf::from(p);
    }
    if let Some(beside) = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.join("libp11bridge.so")))
        .filter(|p| p.exists())
    {
        return beside;
    }
    PathBuf::from("/usr/lib/p11bridge/libp11bridge.so")
}

fn open(cli: &Cli) -> R<Pkcs11> {
    if let Some(c) = &cli.config {
        std::env::set_var("P11BRIDGE_CONFIG", c);
    }
    let path = module_path(&cli.module);
    let p = Pkcs11::new(&path).map_err(|e| format!("cannot load {}: {e}", path.display()))?;
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| match e {
            cryptoki::error::Error::Pkcs11(rv, _) => {
                format!("C_Initialize failed ({rv:?}); the line above names the problem")
            }
            other => format!("C_Initialize failed: {other}"),
        })?;
    Ok(p)
}

fn pin(cli: &Cli) -> Option<String> {
    cli.pin
        .clone()
        .or_else(|| std::env::var("P11BRIDGE_PIN").ok())
}

fn session(p: &Pkcs11, slot: Slot, pin: &Option<String>) -> R<Session> {
    let s = p.open_ro_session(slot).map_err(|e| e.to_string())?;
    if let Some(pin) = pin {
        s.login(UserType::User, Some(&AuthPin::new(pin.clone().into())))
            .map_err(|e| format!("login: {e}"))?;
    }
    Ok(s)
}

fn run(cli: Cli) -> R<()> {
    match &cli.cmd {
        Cmd::InstallP11kit { path } => install_p11kit(&cli, path),
        Cmd::Check => check(&cli),
        Cmd::List { json } => list(&cli, *json),
        Cmd::Sign {
            uri,
            mechanism,
            input,
            output,
        } => {
            let p = open(&cli)?;
            let (s, key) = by_uri(&p, &cli, uri, ObjectClass::PRIVATE_KEY)?;
            let data = std::fs::read(input).map_err(|e| format!("{}: {e}", input.display()))?;
            let sig = s
                .sign(&mechanism_of(mechanism)?, key, &data)
                .map_err(|e| format!("sign: {e}"))?;
            std::fs::write(output, sig).map_err(|e| format!("{}: {e}", output.display()))
        }
        Cmd::Verify {
            uri,
            mechanism,
            input,
            signature,
        } => {
            let p = open(&cli)?;
            let (s, key) = by_uri(&p, &cli, uri, ObjectClass::PUBLIC_KEY)?;
            let data = std::fs::read(input).map_err(|e| format!("{}: {e}", input.display()))?;
            let sig =
                std::fs::read(signature).map_err(|e| format!("{}: {e}", signature.display()))?;
            s.verify(&mechanism_of(mechanism)?, key, &data, &sig)
                .map_err(|e| format!("verify: {e}"))?;
            println!("signature OK");
            Ok(())
        }
    }
}

fn install_p11kit(cli: &Cli, path: &Path) -> R<()> {
    let module = module_path(&cli.module);
    let module = std::fs::canonicalize(&module).unwrap_or(module);
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let text = format!(
        "# p11bridge: one token over an HSM, AWS KMS and Vault transit.\nmodule: {}\ncritical: no\n",
        module.display()
    );
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

/// The backends of each unified slot, from the configuration file (to ask each of them by name).
fn configured_backends(cli: &Cli) -> Vec<(String, String)> {
    let path = cli
        .config
        .clone()
        .or_else(|| std::env::var_os("P11BRIDGE_CONFIG").map(PathBuf::from));
    let Some(text) = path.and_then(|p| std::fs::read_to_string(p).ok()) else {
        return Vec::new();
    };
    let Ok(t) = text.parse::<toml::Table>() else {
        return Vec::new();
    };
    let kinds = t
        .get("backend")
        .and_then(|b| b.as_table())
        .cloned()
        .unwrap_or_default();
    let mut out = Vec::new();
    for (name, v) in kinds {
        let kind = v
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("?")
            .to_string();
        out.push((name, kind));
    }
    out
}

fn check(cli: &Cli) -> R<()> {
    let t0 = Instant::now();
    let p = open(cli)?;
    println!("configuration: valid (C_Initialize {:?})", t0.elapsed());
    let pin = pin(cli);
    let backends = configured_backends(cli);
    let mut failures = 0;
    for slot in p.get_slots_with_token().map_err(|e| e.to_string())? {
        let info = p.get_token_info(slot).map_err(|e| e.to_string())?;
        if info.manufacturer_id() != "p11bridge" {
            println!(
                "slot {}: mirror of \"{}\" ({})",
                slot.id(),
                info.label(),
                info.manufacturer_id()
            );
            continue;
        }
        let s = match session(&p, slot, &pin) {
            Ok(s) => s,
            Err(e) => {
                println!("token \"{}\": {e}", info.label());
                failures += 1;
                continue;
            }
        };
        println!(
            "token \"{}\"{}",
            info.label(),
            if pin.is_some() {
                " (logged in)"
            } else {
                " (public objects only: give --pin)"
            }
        );
        for (name, kind) in &backends {
            let t = Instant::now();
            let r = s.find_objects(&[Attribute::VendorDefined((
                AttributeType::VendorDefined(CKA_P11BRIDGE_BACKEND),
                name.as_bytes().to_vec(),
            ))]);
            match r {
                Ok(v) => {
                    let private = v
                        .iter()
                        .filter(|h| class_of(&s, **h) == Some(ObjectClass::PRIVATE_KEY))
                        .count();
                    println!(
                        "  backend {name} ({kind}): reachable, {} objects ({private} private keys), first search {:?}",
                        v.len(),
                        t.elapsed()
                    );
                }
                // A backend of another slot is "not part of this token": skip it quietly.
                Err(e) if e.to_string().contains("AttributeValueInvalid") => {}
                Err(e) => {
                    failures += 1;
                    println!(
                        "  backend {name} ({kind}): FAILED: {e} (after {:?})",
                        t.elapsed()
                    );
                }
            }
        }
    }
    if failures > 0 {
        return Err(format!("{failures} backend(s) or token(s) failed"));
    }
    Ok(())
}

fn class_of(s: &Session, h: ObjectHandle) -> Option<ObjectClass> {
    match s.get_attributes(h, &[AttributeType::Class]).ok()?.pop()? {
        Attribute::Class(c) => Some(c),
        _ => None,
    }
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

fn list(cli: &Cli, json: bool) -> R<()> {
    let p = open(cli)?;
    let pin = pin(cli);
    let mut rows = Vec::new();
    for slot in p.get_slots_with_token().map_err(|e| e.to_string())? {
        let info = p.get_token_info(slot).map_err(|e| e.to_string())?;
        if !info.token_initialized() {
            continue;
        }
        let Ok(s) = session(&p, slot, &pin) else {
            continue;
        };
        for h in s.find_objects(&[]).map_err(|e| e.to_string())? {
            let attrs = s
                .get_attributes(
                    h,
                    &[
                        AttributeType::Class,
                        AttributeType::KeyType,
                        AttributeType::Label,
                        AttributeType::Id,
                        AttributeType::ModulusBits,
                        AttributeType::EcParams,
                        AttributeType::ValueLen,
                        AttributeType::Sign,
                        AttributeType::Verify,
                        AttributeType::Encrypt,
                        AttributeType::Decrypt,
                        AttributeType::VendorDefined(CKA_P11BRIDGE_BACKEND),
                    ],
                )
                .unwrap_or_default();
            let mut row = serde_json::json!({"token": info.label()});
            let mut usages = Vec::new();
            let mut id = Vec::new();
            let mut label = String::new();
            let mut class = "";
            for a in attrs {
                match a {
                    Attribute::Class(c) => {
                        class = match c {
                            ObjectClass::PRIVATE_KEY => "private",
                            ObjectClass::PUBLIC_KEY => "public",
                            ObjectClass::SECRET_KEY => "secret-key",
                            ObjectClass::CERTIFICATE => "cert",
                            ObjectClass::DATA => "data",
                            _ => "other",
                        }
                    }
                    Attribute::KeyType(k) => {
                        row["key_type"] = serde_json::json!(match k {
                            KeyType::RSA => "rsa".to_string(),
                            KeyType::EC => "ec".to_string(),
                            KeyType::EC_EDWARDS => "ed25519".to_string(),
                            KeyType::AES => "aes".to_string(),
                            KeyType::GENERIC_SECRET => "generic-secret".to_string(),
                            other => format!("{other:?}"),
                        })
                    }
                    Attribute::Label(l) => label = String::from_utf8_lossy(&l).into_owned(),
                    Attribute::Id(i) => id = i,
                    Attribute::ModulusBits(b) => row["bits"] = serde_json::json!(u64::from(b)),
                    Attribute::ValueLen(b) => row["bits"] = serde_json::json!(u64::from(b) * 8),
                    Attribute::EcParams(p) => {
                        row["curve"] = serde_json::json!(match p.as_slice() {
                            [0x06, 0x08, .., 0x07] => "P-256",
                            [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22] => "P-384",
                            [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23] => "P-521",
                            _ => "other",
                        })
                    }
                    Attribute::Sign(true) => usages.push("sign"),
                    Attribute::Verify(true) => usages.push("verify"),
                    Attribute::Encrypt(true) => usages.push("encrypt"),
                    Attribute::Decrypt(true) => usages.push("decrypt"),
                    Attribute::VendorDefined((_, b)) => {
                        row["backend"] = serde_json::json!(String::from_utf8_lossy(&b))
                    }
                    _ => {}
                }
            }
            row["class"] = serde_json::json!(class);
            row["label"] = serde_json::json!(label);
            row["id"] =
                serde_json::json!(id.iter().map(|b| format!("{b:02x}")).collect::<String>());
            row["usages"] = serde_json::json!(usages);
            row["uri"] = serde_json::json!(format!(
                "pkcs11:token={};object={};id={};type={}",
                pct_text(info.label()),
                pct_text(&label),
                pct(&id),
                class
            ));
            rows.push(row);
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    println!(
        "{:<10} {:<14} {:<10} {:<9} {:<20} {:<22} URI",
        "CLASS", "TYPE", "BACKEND", "USAGES", "LABEL", "ID"
    );
    for r in &rows {
        let s = |k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let ty = match (
            r.get("key_type").and_then(|v| v.as_str()),
            r.get("bits"),
            r.get("curve"),
        ) {
            (Some(t), Some(b), _) => format!("{t}-{b}"),
            (Some("ec"), None, Some(c)) => format!("ec {}", c.as_str().unwrap_or("")),
            (Some(t), _, _) => t.to_string(),
            _ => "-".into(),
        };
        let usages: Vec<String> = r["usages"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|u| u.as_str().map(|x| x[..1].to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let mut id = s("id");
        if id.len() > 20 {
            id = format!("{}…", &id[..20]);
        }
        println!(
            "{:<10} {:<14} {:<10} {:<9} {:<20} {:<22} {}",
            s("class"),
            ty,
            s("backend"),
            usages.join(""),
            s("label"),
            id,
            s("uri")
        );
    }
    Ok(())
}

/// Parses an RFC 7512 URI's path attributes (token, object, id, type) and query (pin-value).
fn parse_uri(uri: &str) -> R<Vec<(String, Vec<u8>)>> {
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

fn by_uri(p: &Pkcs11, cli: &Cli, uri: &str, default: ObjectClass) -> R<(Session, ObjectHandle)> {
    let attrs = parse_uri(uri)?;
    let get = |k: &str| attrs.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
    let token = get("token").map(|t| String::from_utf8_lossy(&t).into_owned());
    let pin = get("pin-value")
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .or_else(|| pin(cli));
    let slot = p
        .get_slots_with_token()
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|s| {
            token.as_ref().is_none_or(|t| {
                p.get_token_info(*s)
                    .map(|i| i.label() == t)
                    .unwrap_or(false)
            })
        })
        .ok_or("no token matches the URI")?;
    let s = session(p, slot, &pin)?;
    let class = match get("type").as_deref() {
        Some(b"private") => ObjectClass::PRIVATE_KEY,
        Some(b"public") => ObjectClass::PUBLIC_KEY,
        Some(b"secret-key") => ObjectClass::SECRET_KEY,
        Some(b"cert") => ObjectClass::CERTIFICATE,
        _ => default,
    };
    let mut template = vec![Attribute::Class(class)];
    if let Some(l) = get("object") {
        template.push(Attribute::Label(l));
    }
    if let Some(i) = get("id") {
        template.push(Attribute::Id(i));
    }
    let mut found = s.find_objects(&template).map_err(|e| e.to_string())?;
    if found.is_empty() && class == ObjectClass::PRIVATE_KEY {
        // A secret key signs too (HMAC).
        template[0] = Attribute::Class(ObjectClass::SECRET_KEY);
        found = s.find_objects(&template).map_err(|e| e.to_string())?;
    }
    match found.len() {
        1 => Ok((s, found[0])),
        0 => Err(format!(
            "no object matches {uri}{}",
            if pin.is_none() { " (no PIN given)" } else { "" }
        )),
        n => Err(format!("{n} objects match {uri}: add id= or type=")),
    }
}

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
        other => return Err(format!("unknown mechanism {other}")),
    })
}

#[cfg(test)]
mod tests {
    use super::parse_uri;

    #[test]
    fn uris() {
        let a =
            parse_uri("pkcs11:token=unified;object=my%20key;id=%01%02;type=private?pin-value=1234")
                .unwrap();
        assert_eq!(a[0], ("token".into(), b"unified".to_vec()));
        assert_eq!(a[1], ("object".into(), b"my key".to_vec()));
        assert_eq!(a[2], ("id".into(), vec![1, 2]));
        assert_eq!(a[4], ("pin-value".into(), b"1234".to_vec()));
        assert!(parse_uri("file:x").is_err());
        assert!(parse_uri("pkcs11:id=%0").is_err());
    }
}
