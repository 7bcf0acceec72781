//! Fuzz target: a hostile Vault. p11bridge (linked as an rlib) is configured with one unified slot over a
//! `vault-transit` backend (AppRole login, discovery plus a listed key, no metadata cache) whose address is an
//! in-process HTTP/1.1 server; every answer that server gives — login, key list, key reads, signatures (single and
//! `batch_input`), decrypt/encrypt/HMAC/rewrap, key creation, random bytes, errors — is the real Vault answer to
//! that request, then mutated as the fuzz input says (JSON nodes replaced by wrong types, huge numbers, base64
//! garbage, broken PEM, `vault:vN:` garbage; status codes; Content-Length lies, truncation, closes mid-body,
//! chunked framing, garbage). Per input: C_Initialize, the call sequence of `hostile::drive` (open, login, find,
//! two-call attribute reads into canaried buffers, sign, decrypt, encrypt, generate), C_Finalize.
#![no_main]

#[path = "hostile/mod.rs"]
mod hostile;

use hostile::*;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use std::sync::OnceLock;

const KEYS: &[&str] = &["ec", "rsa", "ed", "hm", "aes"];

fn ed_raw() -> String {
    use base64::Engine;
    let der = base64::engine::general_purpose::STANDARD
        .decode(ED25519)
        .unwrap_or_default();
    b64(&der[der.len() - 32..])
}

fn key_data(name: &str) -> Value {
    let (ty, pk): (&str, Option<String>) = match name {
        "ec" => ("ecdsa-p256", Some(pem(EC_P256))),
        "rsa" => ("rsa-2048", Some(pem(RSA_2048))),
        "ed" => ("ed25519", Some(ed_raw())),
        "hm" => ("hmac", None),
        _ => ("aes256-gcm96", None),
    };
    let version = match &pk {
        Some(pk) => {
            json!({"public_key": pk, "name": "P-256", "creation_time": "2026-01-01T00:00:00Z"})
        }
        None => json!(1767225600),
    };
    json!({"data": {
        "type": ty,
        "name": name,
        "latest_version": 1,
        "min_decryption_version": 1,
        "min_encryption_version": 0,
        "deletion_allowed": false,
        "derived": false,
        "exportable": false,
        "allow_plaintext_backup": false,
        "supports_signing": ty != "aes256-gcm96",
        "supports_decryption": ty == "rsa-2048" || ty == "aes256-gcm96",
        "supports_encryption": ty == "rsa-2048" || ty == "aes256-gcm96",
        "supports_derivation": false,
        "key_size": if ty == "hmac" { 32 } else { 0 },
        "keys": {"1": version},
    }})
}

fn signature_for(name: &str) -> String {
    let raw = match name {
        "ec" => ecdsa_der(),
        "rsa" => vec![0x3C; 256],
        "ed" => vec![0x4D; 64],
        _ => vec![0x6E; 32],
    };
    format!("vault:v1:{}", b64(&raw))
}

fn auth() -> Value {
    json!({
        "request_id": "r", "lease_id": "", "renewable": false, "lease_duration": 0, "data": null,
        "wrap_info": null, "warnings": null,
        "auth": {
            "client_token": "hvs.fuzz", "accessor": "acc", "policies": ["default"], "token_policies": ["default"],
            "metadata": {"role_name": "fuzz"}, "lease_duration": 3600, "renewable": true, "entity_id": "e",
            "token_type": "service", "orphan": true, "mfa_requirement": null, "num_uses": 0
        }
    })
}

/// What a real Vault answers.
fn canned(req: &Req) -> (u16, Value) {
    let path = req.path.split('?').next().unwrap_or("");
    let parts: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
    let body = req.json();
    let m = req.method.as_str();
    match parts.as_slice() {
        ["auth", "approle", "login"] | ["auth", "token", "renew-self"] => (200, auth()),
        ["auth", "token", "lookup-self"] => (
            200,
            json!({"data": {"id": "hvs.fuzz", "ttl": 3600, "renewable": true, "policies": ["default"]}}),
        ),
        ["sys", "health"] => (
            200,
            json!({"initialized": true, "sealed": false, "standby": false}),
        ),
        ["transit", "keys"] if m == "LIST" || req.path.contains("list=true") => {
            (200, json!({"data": {"keys": KEYS}}))
        }
        ["transit", "keys", name] if m == "GET" => {
            if KEYS.contains(name) || name.starts_with("fuzz") {
                (200, key_data(name))
            } else {
                (404, json!({"errors": []}))
            }
        }
        ["transit", "keys", name] if m == "POST" => (200, key_data(name)),
        ["transit", "keys", ..] => (204, Value::Null),
        ["transit", "sign", name, ..] => match body.get("batch_input").and_then(Value::as_array) {
            Some(items) => (
                200,
                json!({"data": {"batch_results": items.iter().map(|_| json!({"signature": signature_for(name), "key_version": 1})).collect::<Vec<_>>()}}),
            ),
            None => (
                200,
                json!({"data": {"signature": signature_for(name), "key_version": 1}}),
            ),
        },
        ["transit", "hmac", ..] => (200, json!({"data": {"hmac": signature_for("hm")}})),
        ["transit", "decrypt", ..] => (200, json!({"data": {"plaintext": b64(b"hello world")}})),
        ["transit", "encrypt", ..] | ["transit", "rewrap", ..] => (
            200,
            json!({"data": {"ciphertext": format!("vault:v1:{}", b64(&[9u8; 40])), "key_version": 1}}),
        ),
        ["transit", "random", ..] => (200, json!({"data": {"random_bytes": b64(&[1u8; 32])}})),
        _ => (404, json!({"errors": []})),
    }
}

struct Setup {
    f: &'static cryptoki_sys::CK_FUNCTION_LIST,
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let port = serve(canned, "application/json");
        let dir = work_dir("hostile-vault");
        let cfg = dir.join("p11bridge.toml");
        std::fs::write(
            &cfg,
            format!(
                r#"
[[slot]]
label = "unified"
user_pin = "env:P11BRIDGE_PIN"
backends = ["vault"]

[backend.vault]
kind = "vault-transit"
address = "http://127.0.0.1:{port}"
role_id = "fuzz-role"
secret_id = "env:FUZZ_SECRET_ID"
keys = ["ec"]
discover = true
timeout_ms = 300
connect_timeout_ms = 300
cache_ttl_s = 0
cert_cache_dir = "/dev/null/p11bridge-fuzz"
allow_destroy = true
breaker_failures = 1000000
breaker_cooldown_ms = 1
"#
            ),
        )
        .expect("write config");
        std::env::set_var("P11BRIDGE_CONFIG", &cfg);
        std::env::set_var("P11BRIDGE_PIN", "fuzz-pin-1234");
        std::env::set_var("FUZZ_SECRET_ID", "fuzz-secret");
        Setup { f: function_list() }
    })
}

fuzz_target!(|data: &[u8]| {
    let s = setup();
    let (client, server) = split(data);
    set_script(server);
    let mut r = R::new(client);
    run_once(s.f, &mut r, b"fuzz-pin-1234", 0, false);
    set_script(&[]);
});
