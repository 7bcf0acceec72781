//! Shared set-up for the end-to-end tests: a private SoftHSM2 token made by `softhsm-setup.sh`, a p11bridge
//! configuration over it, the built `libp11bridge.so` loaded through the `cryptoki` crate, and independent
//! verification with the `openssl` command.
#![allow(dead_code)]

pub mod bao;
pub mod der;
pub mod moto;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeType, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

pub use p11bridge_testkit::repo_root;
// Each test binary uses some of these.
#[allow(unused_imports)]
pub use p11bridge_testkit::softhsm::{BRIDGE_PIN, BRIDGE_SO_PIN, HSM_PIN, HSM_SO_PIN, SOFTHSM};

/// The built module: `P11BRIDGE_SO`, else `libp11bridge.so` of the profile this test binary was built in
/// (`target/<profile>/deps/<test>` → `target/<profile>/libp11bridge.so`).
pub fn bridge_so() -> PathBuf {
    let beside_us = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("libp11bridge.so")));
    let p = std::env::var_os("P11BRIDGE_SO")
        .map(PathBuf::from)
        .or(beside_us)
        .unwrap_or_else(|| repo_root().join("target/release/libp11bridge.so"));
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --release -p p11bridge` first",
        p.display()
    );
    p
}

pub struct Env {
    pub dir: PathBuf,
    pub config: PathBuf,
}

/// Creates (once per test binary) a fresh SoftHSM2 token and a p11bridge configuration, and points the
/// environment at them.
pub fn env() -> &'static Env {
    env_with(&[], "")
}

/// Like [`env`], with more backends in the unified slot (`sections` holds their `[backend.NAME]` tables). The
/// first call in a test binary decides.
pub fn env_with(more_backends: &[&str], sections: &str) -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let name = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "test".into());
        let dir = repo_root()
            .join("target/test-env")
            .join(format!("{name}-{}", std::process::id()));
        let config = p11bridge_testkit::softhsm::bridge_env(&dir, more_backends, sections);
        Env { dir, config }
    })
}

/// The unified token over hsm, vault and kms (in that order), with one key made outside the bridge in each remote
/// backend (transit key `vault-ec`, KMS key aliased `alias/kms-ec`). `vault_keys` / `kms_keys` are each remote
/// section's key selection (`keys = [...]` or `discover = true`); certificates are cached under
/// target/test-env/TAG-PID/certs. The first call in a test binary decides (as for [`env_with`]).
pub fn env_three_backends(tag: &str, vault_keys: &str, kms_keys: &str) -> &'static Env {
    let b = bao::bao();
    b.ok(&["secrets", "enable", "transit"]);
    b.ok(&["write", "-f", "transit/keys/vault-ec", "type=ecdsa-p256"]);
    let m = moto::moto();
    m.create_key("kms-ec", "ECC_NIST_P256", "SIGN_VERIFY", &[]);
    std::env::set_var("VAULT_TEST_TOKEN", bao::ROOT_TOKEN);
    let certs = repo_root()
        .join("target/test-env")
        .join(format!("{tag}-{}", std::process::id()))
        .join("certs");
    let section = format!(
        r#"
[backend.vault]
kind = "vault-transit"
address = "{}"
token = "env:VAULT_TEST_TOKEN"
{vault_keys}
cert_cache_dir = "{certs}"

[backend.kms]
kind = "aws-kms"
region = "us-east-1"
endpoint = "{}"
{kms_keys}
cert_cache_dir = "{certs}"
"#,
        b.addr,
        m.url,
        certs = certs.display()
    );
    env_with(&["vault", "kms"], &section)
}

/// The unified token over a KMS backend and a Vault backend that discover their keys (Vault: the transit keys
/// named `prefix…`), each section with the `extra` lines; certificates (and host key cache files) under
/// target/test-env/TAG-PID/certs, which is returned with the environment. The first call in a test binary decides
/// (as for [`env_with`]).
pub fn env_kms_vault(tag: &str, prefix: &str, extra: &str) -> (&'static Env, PathBuf) {
    let (m, b) = (moto::moto(), bao::bao());
    std::env::set_var("VAULT_TEST_TOKEN", bao::ROOT_TOKEN);
    let certs = repo_root()
        .join("target/test-env")
        .join(format!("{tag}-{}", std::process::id()))
        .join("certs");
    let section = format!(
        r#"
[backend.kms]
kind = "aws-kms"
region = "us-east-1"
endpoint = "{}"
discover = true
cert_cache_dir = "{certs}"
{extra}

[backend.vault]
kind = "vault-transit"
address = "{}"
token = "env:VAULT_TEST_TOKEN"
discover = true
prefix = "{prefix}"
cert_cache_dir = "{certs}"
{extra}
"#,
        m.url,
        b.addr,
        certs = certs.display()
    );
    (env_with(&["kms", "vault"], &section), certs)
}

/// Slot 0: the unified token over the upstream token `upstream`; slots 1..: every SoftHSM slot, mirrored.
pub fn config_text() -> String {
    config_text_with(&[], "")
}

pub fn config_text_with(more_backends: &[&str], sections: &str) -> String {
    p11bridge_testkit::softhsm::bridge_config(more_backends, sections)
}

/// The bridge, initialized once per test binary.
pub fn p11() -> &'static Pkcs11 {
    static P11: OnceLock<Pkcs11> = OnceLock::new();
    P11.get_or_init(|| {
        env();
        let p = Pkcs11::new(bridge_so()).expect("load libp11bridge.so");
        p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .expect("C_Initialize");
        p
    })
}

/// The unified slot (labelled "unified").
pub fn unified_slot(p: &Pkcs11) -> Slot {
    slot_by_label(p, "unified")
}

pub fn slot_by_label(p: &Pkcs11, label: &str) -> Slot {
    p.get_slots_with_token()
        .expect("slots")
        .into_iter()
        .find(|s| {
            p.get_token_info(*s)
                .map(|t| t.label() == label)
                .unwrap_or(false)
        })
        .unwrap_or_else(|| panic!("no token labelled {label}"))
}

/// A logged-in RW session on the unified token.
pub fn user_session(p: &Pkcs11) -> Session {
    session_on(p, "unified")
}

/// The one object with this label and class.
pub fn find_one(s: &Session, label: &str, class: cryptoki::object::ObjectClass) -> ObjectHandle {
    let v = s
        .find_objects(&[Attribute::Label(label.into()), Attribute::Class(class)])
        .expect("find");
    assert_eq!(v.len(), 1, "objects labelled {label} of {class:?}");
    v[0]
}

/// The SubjectPublicKeyInfo (DER) of a public key object, built from its attributes.
pub fn spki(s: &Session, public: ObjectHandle) -> Vec<u8> {
    let kt = s
        .get_attributes(public, &[AttributeType::KeyType])
        .expect("key type");
    let Some(Attribute::KeyType(kt)) = kt.first() else {
        panic!("no key type")
    };
    use cryptoki::object::KeyType;
    if *kt == KeyType::RSA {
        let a = s
            .get_attributes(
                public,
                &[AttributeType::Modulus, AttributeType::PublicExponent],
            )
            .expect("rsa attrs");
        let (mut n, mut e) = (vec![], vec![]);
        for x in a {
            match x {
                Attribute::Modulus(v) => n = v,
                Attribute::PublicExponent(v) => e = v,
                _ => {}
            }
        }
        der::rsa_spki(&n, &e)
    } else {
        let a = s
            .get_attributes(public, &[AttributeType::EcParams, AttributeType::EcPoint])
            .expect("ec attrs");
        let (mut params, mut point) = (vec![], vec![]);
        for x in a {
            match x {
                Attribute::EcParams(v) => params = v,
                Attribute::EcPoint(v) => point = v,
                _ => {}
            }
        }
        let raw = der::unwrap_octet_string(&point).unwrap_or(point);
        if *kt == KeyType::EC_EDWARDS {
            der::ed25519_spki(&raw)
        } else {
            der::ec_spki(&params, &raw)
        }
    }
}

/// Verifies a signature with the `openssl` command (an implementation independent of the token).
/// `digest`: `Some("sha256")` to hash `data` first (dgst), `None` for a raw `pkeyutl -verify` over `data`.
pub fn openssl_verify(
    spki: &[u8],
    digest: Option<&str>,
    opts: &[&str],
    data: &[u8],
    sig: &[u8],
) -> bool {
    let d = tempdir("verify");
    let (k, m, g) = (d.join("key.der"), d.join("msg"), d.join("sig"));
    std::fs::write(&k, spki).unwrap();
    std::fs::write(&m, data).unwrap();
    std::fs::write(&g, sig).unwrap();
    let mut c = Command::new("openssl");
    match digest {
        Some(dg) => {
            c.args(["dgst", &format!("-{dg}"), "-keyform", "DER", "-verify"])
                .arg(&k)
                .arg("-signature")
                .arg(&g);
            for o in opts {
                c.args(["-sigopt", o]);
            }
            c.arg(&m);
        }
        None => {
            c.args(["pkeyutl", "-verify", "-pubin", "-keyform", "DER", "-inkey"])
                .arg(&k)
                .arg("-in")
                .arg(&m)
                .arg("-sigfile")
                .arg(&g);
            for o in opts {
                c.args(["-pkeyopt", o]);
            }
        }
    }
    let out = c.output().expect("run openssl");
    let _ = std::fs::remove_dir_all(&d);
    out.status.success()
}

/// Runs `openssl` with arguments, returning stdout (panics on failure).
pub fn openssl(args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    use std::io::Write;
    let mut c = Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl");
    if let Some(i) = stdin {
        c.stdin.take().unwrap().write_all(i).unwrap();
    } else {
        drop(c.stdin.take());
    }
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

pub fn tempdir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = env()
        .dir
        .join(format!("{tag}-{}", N.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn sha256(data: &[u8]) -> Vec<u8> {
    openssl(&["dgst", "-sha256", "-binary"], Some(data))
}

/// Signs once with an EC key of the SoftHSM2 backend (`CKA_P11BRIDGE_BACKEND` = "hsm") in a unified session: the
/// check that a remote backend's trouble leaves the HSM's keys working.
#[allow(dead_code)]
pub fn hsm_sign(s: &Session) {
    use p11bridge_vendor::CKA_P11BRIDGE_BACKEND;
    let k = s
        .find_objects(&[
            Attribute::Class(cryptoki::object::ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(cryptoki::object::KeyType::EC),
            Attribute::VendorDefined((
                AttributeType::VendorDefined(CKA_P11BRIDGE_BACKEND),
                b"hsm".to_vec(),
            )),
        ])
        .unwrap();
    assert!(!k.is_empty(), "the SoftHSM token has an EC key");
    let sig = s
        .sign(&cryptoki::mechanism::Mechanism::Ecdsa, k[0], &[3u8; 32])
        .unwrap();
    assert!(!sig.is_empty());
}

/// The template attribute `CKA_P11BRIDGE_BACKEND` = `b`: objects of that backend.
pub fn backend(b: &str) -> Attribute {
    Attribute::VendorDefined((
        AttributeType::VendorDefined(p11bridge_vendor::CKA_P11BRIDGE_BACKEND),
        b.as_bytes().to_vec(),
    ))
}

/// The built module, for its vendor functions.
pub fn lib() -> &'static libloading::Library {
    static L: OnceLock<libloading::Library> = OnceLock::new();
    // SAFETY: the module the cryptoki context already loaded (dlopen counts references).
    L.get_or_init(|| unsafe { libloading::Library::new(bridge_so()) }.expect("dlopen"))
}

/// `C_P11BRIDGE_GetLastError` of the calling thread: (CK_RV, text).
pub fn last_error() -> (u64, String) {
    type F = unsafe extern "C" fn(*mut u64, *mut u8, *mut u64) -> u64;
    // SAFETY: the signature of include/p11bridge.h (CK_ULONG is 64-bit here).
    unsafe {
        let f: libloading::Symbol<F> = lib().get(b"C_P11BRIDGE_GetLastError").unwrap();
        let mut rv = 0u64;
        let mut len = 0u64;
        assert_eq!(f(&mut rv, std::ptr::null_mut(), &mut len), 0);
        let mut buf = vec![0u8; len as usize];
        assert_eq!(f(&mut rv, buf.as_mut_ptr(), &mut len), 0);
        buf.truncate(len as usize);
        (rv, String::from_utf8(buf).unwrap())
    }
}

/// A logged-in RW session on the token labelled `label`.
pub fn session_on(p: &Pkcs11, label: &str) -> Session {
    let s = p.open_rw_session(slot_by_label(p, label)).unwrap();
    match s.login(UserType::User, Some(&AuthPin::new(BRIDGE_PIN.into()))) {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {
        }
        Err(e) => panic!("login: {e}"),
    }
    s
}

/// The (public, private) key objects labelled `label` of backend `b`.
pub fn key_pair(s: &Session, label: &str, b: &str) -> (ObjectHandle, ObjectHandle) {
    use cryptoki::object::ObjectClass;
    let one = |class| {
        let v = s
            .find_objects(&[
                Attribute::Label(label.into()),
                Attribute::Class(class),
                backend(b),
            ])
            .unwrap();
        assert_eq!(v.len(), 1, "{b}: {label} {class:?}");
        v[0]
    };
    (one(ObjectClass::PUBLIC_KEY), one(ObjectClass::PRIVATE_KEY))
}

/// `pkcs11-tool -O` (list the objects) over the built module with `config`, in a new process with the notices on
/// and `env` changed (`None`: removed): its stdout and stderr.
pub fn list_objects(config: &std::path::Path, env: &[(&str, Option<&str>)]) -> (String, String) {
    let mut c = Command::new("pkcs11-tool");
    c.arg("--module")
        .arg(bridge_so())
        .arg("-O")
        .env("P11BRIDGE_CONFIG", config)
        .env_remove("P11BRIDGE_QUIET")
        .env_remove("P11BRIDGE_LOG");
    for (k, v) in env {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let out = c.output().expect("pkcs11-tool");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Searches the token labelled `label`, whose only backend cannot serve, and returns the thread's last cause.
pub fn search_cause(p: &Pkcs11, label: &str) -> String {
    let s = session_on(p, label);
    let found = s.find_objects(&[]);
    assert!(
        found.as_ref().map_or(true, |v| v.is_empty()),
        "{label}: {found:?}"
    );
    last_error().1
}

/// Signs with the EC key labelled `key` on the token labelled `label` (`CKM_ECDSA_SHA256`) and verifies the
/// signature with openssl against the key's public key object.
pub fn ecdsa_signs_on(p: &Pkcs11, label: &str, key: &str) {
    use cryptoki::object::ObjectClass;
    let s = session_on(p, label);
    let public = find_one(&s, key, ObjectClass::PUBLIC_KEY);
    let private = find_one(&s, key, ObjectClass::PRIVATE_KEY);
    let data = format!("signed with {key} on {label}").into_bytes();
    let sig = s
        .sign(&cryptoki::mechanism::Mechanism::EcdsaSha256, private, &data)
        .unwrap_or_else(|e| panic!("{label}: signing with {key}: {e}: {:?}", last_error()));
    assert!(
        openssl_verify(
            &spki(&s, public),
            Some("sha256"),
            &[],
            &data,
            &der::ecdsa_der(&sig)
        ),
        "{label}: the signature does not verify"
    );
}
