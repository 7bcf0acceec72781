//! Fuzz target: a hostile AWS KMS. p11bridge (linked as an rlib) is configured with one unified slot over two
//! `aws-kms` backends at an in-process HTTP/1.1 server speaking AWS JSON 1.1 (`X-Amz-Target: TrentService.*`):
//! one discovers every key (GetPublicKey first, DescribeKey fallback), the other filters by tag (DescribeKey,
//! ListResourceTags, GetPublicKey). Every answer — ListKeys, ListAliases, DescribeKey, GetPublicKey (base64 DER
//! SPKI), Sign, Decrypt, Encrypt, GenerateMac, GenerateRandom, CreateKey, CreateAlias, ScheduleKeyDeletion,
//! ListResourceTags — is the real KMS answer to that request, then mutated as the fuzz input says (wrong key specs,
//! public keys of garbage, signatures of wrong length or DER garbage, `__type` errors, numbers where strings go,
//! framing lies). They reach the bridge through the AWS SDK's deserializers and then the bridge's own handling.
//! Per input: C_Initialize, the call sequence of `hostile::drive`, C_Finalize.
#![no_main]

#[path = "hostile/mod.rs"]
mod hostile;

use hostile::*;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use std::sync::OnceLock;

const IDS: &[(&str, &str)] = &[
    ("11111111-1111-1111-1111-111111111111", "ec"),
    ("22222222-2222-2222-2222-222222222222", "rsa"),
    ("33333333-3333-3333-3333-333333333333", "hmac"),
    ("44444444-4444-4444-4444-444444444444", "sym"),
    ("mrk-55555555555555555555555555555555", "new"),
];

fn arn(id: &str) -> String {
    format!("arn:aws:kms:us-east-1:111122223333:key/{id}")
}

/// Which key a request is about.
fn key_of(body: &Value) -> (&'static str, &'static str) {
    let k = body.get("KeyId").and_then(Value::as_str).unwrap_or("");
    for (id, kind) in IDS {
        if k.contains(id) || k.ends_with(&format!("alias/{kind}")) {
            return (id, kind);
        }
    }
    IDS[0]
}

fn spec(kind: &str) -> (&'static str, &'static str) {
    match kind {
        "ec" => ("ECC_NIST_P256", "SIGN_VERIFY"),
        "rsa" => ("RSA_2048", "SIGN_VERIFY"),
        "hmac" => ("HMAC_256", "GENERATE_VERIFY_MAC"),
        _ => ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"),
    }
}

fn metadata(id: &str, kind: &str) -> Value {
    let (ks, usage) = spec(kind);
    let mut m = json!({
        "AWSAccountId": "111122223333",
        "KeyId": id,
        "Arn": arn(id),
        "CreationDate": 1767225600.123,
        "Enabled": true,
        "Description": "",
        "KeyUsage": usage,
        "KeyState": "Enabled",
        "Origin": "AWS_KMS",
        "KeyManager": "CUSTOMER",
        "CustomerMasterKeySpec": ks,
        "KeySpec": ks,
        "MultiRegion": id.starts_with("mrk-"),
    });
    match kind {
        "ec" => m["SigningAlgorithms"] = json!(["ECDSA_SHA_256"]),
        "rsa" => {
            m["SigningAlgorithms"] = json!([
                "RSASSA_PKCS1_V1_5_SHA_256",
                "RSASSA_PSS_SHA_256",
                "RSASSA_PKCS1_V1_5_SHA_384"
            ])
        }
        "hmac" => m["MacAlgorithms"] = json!(["HMAC_SHA_256"]),
        _ => m["EncryptionAlgorithms"] = json!(["SYMMETRIC_DEFAULT"]),
    }
    m
}

fn not_supported() -> (u16, Value) {
    (
        400,
        json!({"__type": "UnsupportedOperationException", "message": "not an asymmetric key"}),
    )
}

/// What a real KMS answers.
fn canned(req: &Req) -> (u16, Value) {
    let target = req.header("X-Amz-Target").unwrap_or("");
    let op = target.rsplit('.').next().unwrap_or("");
    let body = req.json();
    let (id, kind) = key_of(&body);
    match op {
        "ListKeys" => (
            200,
            json!({"Keys": IDS[..4].iter().map(|(id, _)| json!({"KeyId": id, "KeyArn": arn(id)})).collect::<Vec<_>>(),
                   "Truncated": false}),
        ),
        "ListAliases" => (
            200,
            json!({"Aliases": IDS[..4].iter().map(|(id, k)| json!({"AliasName": format!("alias/{k}"), "AliasArn": format!("arn:aws:kms:us-east-1:111122223333:alias/{k}"), "TargetKeyId": id})).collect::<Vec<_>>(),
                   "Truncated": false}),
        ),
        "DescribeKey" => (200, json!({"KeyMetadata": metadata(id, kind)})),
        "GetPublicKey" => {
            let (ks, usage) = spec(kind);
            let pk = match kind {
                "ec" | "new" => EC_P256,
                "rsa" => RSA_2048,
                _ => return not_supported(),
            };
            let mut v = json!({"KeyId": arn(id), "PublicKey": pk, "CustomerMasterKeySpec": ks, "KeySpec": ks,
                               "KeyUsage": usage});
            if kind == "rsa" {
                v["SigningAlgorithms"] = json!(["RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PSS_SHA_256"]);
                v["EncryptionAlgorithms"] = json!(["RSAES_OAEP_SHA_256"]);
            } else {
                v["SigningAlgorithms"] = json!(["ECDSA_SHA_256"]);
            }
            (200, v)
        }
        "ListResourceTags" => (
            200,
            json!({"Tags": [{"TagKey": "team", "TagValue": "fuzz"}], "Truncated": false}),
        ),
        "Sign" => {
            let sig = if kind == "rsa" {
                vec![0x3C; 256]
            } else {
                ecdsa_der()
            };
            (
                200,
                json!({"KeyId": arn(id), "Signature": b64(&sig),
                       "SigningAlgorithm": body.get("SigningAlgorithm").cloned().unwrap_or(json!("ECDSA_SHA_256"))}),
            )
        }
        "GenerateMac" => (
            200,
            json!({"KeyId": arn(id), "Mac": b64(&[0x6E; 32]), "MacAlgorithm": "HMAC_SHA_256"}),
        ),
        "VerifyMac" => (
            200,
            json!({"KeyId": arn(id), "MacValid": true, "MacAlgorithm": "HMAC_SHA_256"}),
        ),
        "Decrypt" => (
            200,
            json!({"KeyId": arn(id), "Plaintext": b64(b"hello world"), "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}),
        ),
        "Encrypt" => (
            200,
            json!({"KeyId": arn(id), "CiphertextBlob": b64(&[9u8; 120]), "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}),
        ),
        "GenerateRandom" => {
            let n = body
                .get("NumberOfBytes")
                .and_then(Value::as_u64)
                .unwrap_or(32)
                .min(1024) as usize;
            (200, json!({"Plaintext": b64(&vec![1u8; n])}))
        }
        "CreateKey" => {
            let k = match body.get("KeySpec").and_then(Value::as_str) {
                Some("RSA_2048") | Some("RSA_3072") | Some("RSA_4096") => "rsa",
                Some(s) if s.starts_with("HMAC") => "hmac",
                Some(s) if s.starts_with("ECC") => "ec",
                _ => "sym",
            };
            (200, json!({"KeyMetadata": metadata(IDS[4].0, k)}))
        }
        "CreateAlias" | "TagResource" => (200, Value::Null),
        "ScheduleKeyDeletion" => (
            200,
            json!({"KeyId": arn(id), "DeletionDate": 1769817600, "KeyState": "PendingDeletion", "PendingWindowInDays": 7}),
        ),
        _ => (
            400,
            json!({"__type": "UnknownOperationException", "message": op}),
        ),
    }
}

struct Setup {
    f: &'static cryptoki_sys::CK_FUNCTION_LIST,
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let port = serve(canned, "application/x-amz-json-1.1");
        let dir = work_dir("hostile-kms");
        let cfg = dir.join("p11bridge.toml");
        let common = format!(
            r#"kind = "aws-kms"
region = "us-east-1"
endpoint = "http://127.0.0.1:{port}"
discover = true
timeout_ms = 300
connect_timeout_ms = 300
max_attempts = 1
cache_ttl_s = 0
cert_cache_dir = "/dev/null/p11bridge-fuzz"
allow_destroy = true
breaker_failures = 1000000
breaker_cooldown_ms = 1"#
        );
        std::fs::write(
            &cfg,
            format!(
                r#"
[[slot]]
label = "unified"
user_pin = "env:P11BRIDGE_PIN"
backends = ["kms", "kmst"]

[backend.kms]
{common}
keys = ["alias/sym"]

[backend.kmst]
{common}
tags = {{ team = "fuzz" }}
"#
            ),
        )
        .expect("write config");
        std::env::set_var("P11BRIDGE_CONFIG", &cfg);
        std::env::set_var("P11BRIDGE_PIN", "fuzz-pin-1234");
        std::env::set_var("AWS_ACCESS_KEY_ID", "AKIAFUZZFUZZFUZZFUZZ");
        std::env::set_var(
            "AWS_SECRET_ACCESS_KEY",
            "fuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzz",
        );
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        std::env::set_var("AWS_CONFIG_FILE", dir.join("none"));
        std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", dir.join("none"));
        std::env::remove_var("AWS_PROFILE");
        std::env::remove_var("AWS_SESSION_TOKEN");
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
