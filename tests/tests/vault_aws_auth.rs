//! Vault login with the `aws` auth method (IAM type): the bridge signs `sts:GetCallerIdentity` with the AWS
//! credentials of its environment and logs in with it; transit keys are then listed and sign (openssl verifies).
//! A wrong identity, or a server ID header the mount requires and the bridge does not send, is refused, and the
//! refusal reaches the person in Vault's words (`C_P11BRIDGE_GetLastError`, the stderr line of a new process). The
//! token is renewed, and obtained again once it has expired.
//!
//! Every process logs in itself (`key_cache = false`: the host-wide key cache would spare later processes the
//! login these tests look at).
//!
//! Servers: a real OpenBao dev server (transit, tokens, policies) and moto (IAM user, its access key, STS
//! GetCallerIdentity, with moto's request authentication on: the SigV4 signature is checked and the user's policy
//! must allow `sts:GetCallerIdentity`). OpenBao 2.x has no `aws` auth method built in, and its plugin is not
//! installable here, so the login itself is served by `tests/vault/aws_auth.py` in front of OpenBao
//! (`Bao::with_aws_auth`), which does Vault's checks against moto's STS and hands out real OpenBao tokens.

mod common;

use common::bao::{bao, AwsAuthFront};
use common::moto::moto;
use common::*;
use cryptoki::context::Pkcs11;
use cryptoki::mechanism::Mechanism;
use serde_json::json;
use std::sync::OnceLock;
use std::time::Duration;

struct Setup {
    /// Where the bridge logs in: the `aws` auth stand-in in front of OpenBao.
    front: AwsAuthFront,
    /// The ARN of the IAM user whose access key the bridge has (moto's account 123456789012).
    arn: String,
    /// Its access key id and secret.
    key: (String, String),
    dir: std::path::PathBuf,
}

const KEY: &str = "iam-ec";

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let b = bao();
        b.ok(&["secrets", "enable", "transit"]);
        b.ok(&["write", "-f", &format!("transit/keys/{KEY}"), "type=ecdsa-p256"]);
        let dir = repo_root()
            .join("target/test-env")
            .join(format!("vault-aws-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let policy = dir.join("iam-transit.hcl");
        std::fs::write(
            &policy,
            "path \"transit/keys/*\" { capabilities = [\"read\", \"list\"] }\npath \"transit/sign/*\" { capabilities = [\"update\"] }\n",
        )
        .unwrap();
        b.ok(&["policy", "write", "iam-transit", &policy.display().to_string()]);
        // An IAM user in moto, its access key and a policy allowing GetCallerIdentity: the three requests moto
        // serves before it authenticates every request (signature and policy).
        std::env::set_var("INITIAL_NO_AUTH_ACTION_COUNT", "3");
        let m = moto();
        std::env::remove_var("INITIAL_NO_AUTH_ACTION_COUNT");
        let user: serde_json::Value = serde_json::from_str(&m.boto(&format!(
            "iam = boto3.client('iam', endpoint_url='{}', region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing')\n\
             arn = iam.create_user(UserName='p11bridge-app')['User']['Arn']\n\
             k = iam.create_access_key(UserName='p11bridge-app')['AccessKey']\n\
             iam.put_user_policy(UserName='p11bridge-app', PolicyName='whoami', PolicyDocument=json.dumps({{'Version': '2012-10-17', 'Statement': [{{'Effect': 'Allow', 'Action': 'sts:GetCallerIdentity', 'Resource': '*'}}]}}))\n\
             print(json.dumps({{'arn': arn, 'id': k['AccessKeyId'], 'secret': k['SecretAccessKey']}}))",
            m.url
        )))
        .unwrap();
        let arn = user["arn"].as_str().unwrap().to_string();
        // The bridge's credentials: the default chain reads them from the environment.
        std::env::set_var("AWS_ACCESS_KEY_ID", user["id"].as_str().unwrap());
        std::env::set_var("AWS_SECRET_ACCESS_KEY", user["secret"].as_str().unwrap());
        std::env::remove_var("AWS_SESSION_TOKEN");
        std::env::remove_var("AWS_PROFILE");
        let role = |bound: &str, ttl: &str| {
            json!({"bound_iam_principal_arn": [bound], "policies": ["iam-transit"], "ttl": ttl})
        };
        let front = b.with_aws_auth(
            &m.url,
            &json!({
                "aws": {"header_value": null, "roles": {
                    "app": role(&arn, "1h"),
                    "short": role(&arn, "3s"),
                    "other": role("arn:aws:iam::123456789012:user/someone-else", "1h"),
                }},
                "aws-strict": {"header_value": "p11bridge-test", "roles": {"app": role(&arn, "1h")}},
            }),
        );
        let mut section = String::new();
        for (name, keys) in [
            ("vault", "aws_role = \"app\""),
            ("vaultstrict", "aws_role = \"app\"\naws_mount = \"aws-strict\"\naws_header_value = \"p11bridge-test\""),
            ("vaultnoheader", "aws_role = \"app\"\naws_mount = \"aws-strict\""),
            ("vaultother", "aws_role = \"other\""),
            ("vaultshort", "aws_role = \"short\""),
            (
                "vaultregional",
                "aws_role = \"app\"\naws_sts_region = \"eu-west-1\"\naws_sts_endpoint = \"https://sts.eu-west-1.amazonaws.com/\"",
            ),
        ] {
            section.push_str(&format!(
                "\n[backend.{name}]\nkind = \"vault-transit\"\naddress = \"{}\"\n{keys}\nkeys = [\"{KEY}\"]\ncert_cache_dir = \"{}\"\ntimeout_ms = 5000\nkey_cache = false\n",
                front.addr,
                dir.join("certs").display()
            ));
            if name != "vault" {
                section.push_str(&format!(
                    "\n[[slot]]\nlabel = \"{name}\"\nuser_pin = \"env:P11BRIDGE_PIN\"\nbackends = [\"{name}\"]\n"
                ));
            }
        }
        env_with(&["vault"], &section);
        Setup {
            front,
            arn,
            key: (
                user["id"].as_str().unwrap().into(),
                user["secret"].as_str().unwrap().into(),
            ),
            dir,
        }
    })
}

fn p() -> &'static Pkcs11 {
    setup();
    p11()
}

/// Signs with the transit key through backend `b` in a session on `label`; openssl verifies the signature.
fn sign_and_verify(label: &str, b: &str) {
    let s = session_on(p(), label);
    let (public, private) = key_pair(&s, KEY, b);
    let data = b"signed after an AWS IAM login";
    let sig = s.sign(&Mechanism::Ecdsa, private, &sha256(data)).unwrap();
    assert!(
        openssl_verify(
            &spki(&s, public),
            Some("sha256"),
            &[],
            data,
            &der::ecdsa_der(&sig)
        ),
        "{b}: openssl rejects the signature"
    );
}

/// Asserts that `text` holds every one of `want`.
fn holds(text: &str, want: &[String]) {
    for w in want {
        assert!(text.contains(w), "{w:?} missing from {text:?}");
    }
}

/// Searches a token whose only backend cannot log in; the thread's last cause.
fn search_cause(label: &str) -> String {
    let s = session_on(p(), label);
    let found = s.find_objects(&[]).unwrap_or_default();
    assert!(found.is_empty(), "{label}: {found:?}");
    last_error().1
}

#[test]
fn an_iam_login_lists_and_signs_with_transit_keys() {
    sign_and_verify("unified", "vault");
}

#[test]
fn a_regional_sts_endpoint_is_signed_for_its_region() {
    sign_and_verify("vaultregional", "vaultregional");
}

#[test]
fn the_server_id_header_is_sent_signed_when_configured() {
    sign_and_verify("vaultstrict", "vaultstrict");
}

#[test]
fn a_role_bound_to_another_principal_is_refused_in_words() {
    let st = setup();
    let text = search_cause("vaultother");
    holds(
        &text,
        &[
            "backend \"vaultother\"".to_string(),
            format!(
                "login failed: AWS IAM login as role \"other\" (POST {}/v1/auth/aws/login): HTTP 400: ",
                st.front.addr
            ),
            format!(
                "IAM Principal \"{}\" does not belong to the role \"other\"",
                st.arn
            ),
        ],
    );
    assert!(
        !text.contains(&std::env::var("AWS_SECRET_ACCESS_KEY").unwrap()),
        "{text}"
    );
}

#[test]
fn a_missing_server_id_header_is_refused_in_words() {
    let st = setup();
    holds(
        &search_cause("vaultnoheader"),
        &[
            "backend \"vaultnoheader\"".to_string(),
            format!(
                "AWS IAM login as role \"app\" (POST {}/v1/auth/aws-strict/login): HTTP 400: ",
                st.front.addr
            ),
            "missing header \"X-Vault-AWS-IAM-Server-ID\"".to_string(),
        ],
    );
}

/// A configuration of one slot over one backend logging in as `role` (of mount `aws`).
/// Tests run in parallel and several use the same role: the file is replaced by a rename, so that a process
/// starting meanwhile never reads it half written (a truncated file made `C_Initialize` find no slot).
fn config_as(role: &str) -> std::path::PathBuf {
    static WRITES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let st = setup();
    let config = st.dir.join(format!("{role}.toml"));
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = st.dir.join(format!("{role}.toml.{n}.tmp"));
    std::fs::write(
        &tmp,
        format!(
            "[[slot]]\nlabel = \"{role}\"\nuser_pin = \"env:P11BRIDGE_PIN\"\nbackends = [\"v{role}\"]\n\n\
             [backend.v{role}]\nkind = \"vault-transit\"\naddress = \"{}\"\naws_role = \"{role}\"\nkeys = [\"{KEY}\"]\ntimeout_ms = 5000\ncert_cache_dir = \"{}\"\nkey_cache = false\n",
            st.front.addr,
            st.dir.join("certs").display()
        ),
    )
    .unwrap();
    std::fs::rename(&tmp, &config).unwrap();
    config
}

/// Asserts that the backend's notice on a new process's stderr (one line) holds every one of `want`.
fn says(err: &str, want: &[String]) {
    let notice = err
        .lines()
        .find(|l| l.starts_with("p11bridge: backend"))
        .unwrap_or_else(|| panic!("no notice on stderr:\n{err}"));
    holds(notice, want);
}

#[test]
fn a_new_process_says_on_stderr_that_the_login_was_refused() {
    let st = setup();
    let (_, err) = list_objects(&config_as("other"), &[]);
    says(
        &err,
        &[
            format!(
                "p11bridge: backend \"vother\" (vault-transit, {}): ",
                st.front.addr
            ),
            format!(
                "AWS IAM login as role \"other\" (POST {}/v1/auth/aws/login): HTTP 400: ",
                st.front.addr
            ),
            format!(
                "IAM Principal \"{}\" does not belong to the role \"other\"",
                st.arn
            ),
        ],
    );
}

#[test]
fn a_wrong_secret_key_is_refused_by_sts_and_said_so() {
    let st = setup();
    let (_, err) = list_objects(
        &config_as("app"),
        &[("AWS_SECRET_ACCESS_KEY", Some("not-the-secret"))],
    );
    says(
        &err,
        &[
            format!(
                "AWS IAM login as role \"app\" (POST {}/v1/auth/aws/login): HTTP 400: ",
                st.front.addr
            ),
            "received error code 403 from STS".to_string(),
            "SignatureDoesNotMatch".to_string(),
        ],
    );
    assert!(!err.contains("not-the-secret"), "{err}");
}

#[test]
fn credentials_come_from_a_shared_credentials_profile_too() {
    let st = setup();
    let file = st.dir.join("aws-credentials");
    std::fs::write(
        &file,
        format!(
            "[p11bridge-iam]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            st.key.0, st.key.1
        ),
    )
    .unwrap();
    let file = file.display().to_string();
    let (out, err) = list_objects(
        &config_as("app"),
        &[
            ("AWS_ACCESS_KEY_ID", None),
            ("AWS_SECRET_ACCESS_KEY", None),
            ("AWS_SHARED_CREDENTIALS_FILE", Some(&file)),
            ("AWS_CONFIG_FILE", Some("/nonexistent")),
            ("AWS_PROFILE", Some("p11bridge-iam")),
        ],
    );
    assert!(out.contains(KEY), "{out}\n{err}");
    assert!(!err.contains("p11bridge: backend"), "{err}");
}

#[test]
fn the_trace_log_holds_neither_the_secret_key_nor_the_signature() {
    let st = setup();
    let log = st.dir.join("trace.log");
    let log_path = log.display().to_string();
    let (out, err) = list_objects(
        &config_as("app"),
        &[
            ("P11BRIDGE_LOG", Some("trace")),
            ("P11BRIDGE_LOG_FILE", Some(&log_path)),
        ],
    );
    assert!(out.contains(KEY), "{out}\n{err}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("logged in to vault"), "{text}");
    // The signed request would log in again for as long as STS accepts its date.
    for secret in [st.key.1.as_str(), "Signature="] {
        assert!(!text.contains(secret), "{secret:?} in the trace log");
    }
}

#[test]
fn missing_credentials_are_named() {
    let (_, err) = list_objects(
        &config_as("app"),
        &[
            ("AWS_ACCESS_KEY_ID", None),
            ("AWS_SECRET_ACCESS_KEY", None),
            ("AWS_SHARED_CREDENTIALS_FILE", Some("/nonexistent")),
            ("AWS_CONFIG_FILE", Some("/nonexistent")),
            ("AWS_PROFILE", None),
            ("AWS_EC2_METADATA_DISABLED", Some("true")),
        ],
    );
    says(
        &err,
        &[
            "AWS IAM login as role \"app\"".to_string(),
            "AWS credentials could not be loaded from the AWS default chain".to_string(),
        ],
    );
}

#[test]
fn the_token_is_renewed_and_obtained_again_after_it_expired() {
    let st = setup();
    let logins = || st.front.logins("aws", "short");
    let renewed = || bao().requests("auth/token/renew-self");
    sign_and_verify("vaultshort", "vaultshort");
    let (first, renewals) = (logins(), renewed());
    assert_eq!(first, 1);
    // The lease is 3 s: renewed once two thirds of it have passed (only this backend's tokens are that short).
    std::thread::sleep(Duration::from_millis(2500));
    sign_and_verify("vaultshort", "vaultshort");
    assert!(renewed() > renewals, "no renew-self after 2/3 of the lease");
    assert_eq!(logins(), 1, "a new login where a renewal would do");
    // A token that expired meanwhile cannot be renewed: the bridge logs in again.
    std::thread::sleep(Duration::from_millis(4500));
    sign_and_verify("vaultshort", "vaultshort");
    assert_eq!(logins(), 2, "no new login after the token expired");
}
