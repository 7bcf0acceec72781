//! The host-wide key cache (`key_cache`, files in `cert_cache_dir/keys/`) against moto and OpenBao: a second
//! process of the same configuration makes no request at all while the cache is fresh and shows the same objects;
//! this process, reading the cache another process wrote, signs with a key it never fetched and the signature
//! verifies; a deleted or rotated key is noticed once the TTL has passed; a corrupt cache file is ignored and
//! replaced; processes starting at once fetch once and all read the result; `key_cache = false` turns it off.
//! Other processes are `pkcs11-tool -O` over the same configuration file.

mod common;

use common::bao::{bao, ROOT_TOKEN};
use common::moto::moto;
use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

const TTL_S: u64 = 4;

struct Setup {
    config: PathBuf,
    certs: PathBuf,
}

fn setup() -> &'static Setup {
    static S: std::sync::OnceLock<Setup> = std::sync::OnceLock::new();
    S.get_or_init(|| {
        let m = moto();
        for l in ["hc-a", "hc-b", "hc-gone"] {
            m.create_key(l, "ECC_NIST_P256", "SIGN_VERIFY", &[]);
        }
        let b = bao();
        b.ok(&["secrets", "enable", "transit"]);
        for k in ["hc-v1", "hc-rot"] {
            b.ok(&[
                "write",
                "-f",
                &format!("transit/keys/{k}"),
                "type=ecdsa-p256",
            ]);
        }
        let (env, certs) =
            env_kms_vault("host-key-cache", "hc-", &format!("cache_ttl_s = {TTL_S}"));
        Setup {
            config: env.config.clone(),
            certs,
        }
    })
}

/// `pkcs11-tool -O` in a new process: its stdout (stderr is shown on failure).
fn other_process(config: &Path) -> String {
    let (out, err) = list_objects(config, &[]);
    assert!(out.contains("hc-a"), "stdout: {out}\nstderr: {err}");
    out
}

/// Requests OpenBao answered for transit keys (LIST and GET).
fn vault_key_requests() -> usize {
    bao().requests("transit/keys")
}

fn cache_files(certs: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(certs.join("keys"))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn processes_share_the_keys_through_the_host_cache() {
    let st = setup();
    let m = moto();

    // The first process lists the keys and writes the cache (one file per backend configuration, 0600).
    m.reset();
    let v0 = vault_key_requests();
    let first = other_process(&st.config);
    assert!(m.count("GetPublicKey") >= 3, "{:?}", m.stats());
    assert!(vault_key_requests() > v0);
    let files = cache_files(&st.certs);
    assert_eq!(files.len(), 2, "{files:?}");
    for f in &files {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
        let text = std::fs::read_to_string(f).unwrap();
        assert!(!text.contains(ROOT_TOKEN), "no secret in the cache");
    }

    // A second process: no request at all, the same objects.
    m.reset();
    let v0 = vault_key_requests();
    let second = other_process(&st.config);
    assert_eq!(m.total(), 0, "{:?}", m.stats());
    assert_eq!(vault_key_requests(), v0);
    assert_eq!(first, second);

    // This process reads the cache too: no per-key request, and the keys sign (signatures verified by openssl).
    m.reset();
    let v0 = vault_key_requests();
    let signs = bao().requests("transit/sign");
    let p = p11();
    ecdsa_signs_on(p, "unified", "hc-a");
    ecdsa_signs_on(p, "unified", "hc-v1");
    assert_eq!(m.count("GetPublicKey"), 0, "{:?}", m.stats());
    assert_eq!(m.count("ListKeys"), 0, "{:?}", m.stats());
    assert_eq!(m.count("Sign"), 1, "{:?}", m.stats());
    assert_eq!(vault_key_requests(), v0, "no key read");
    assert_eq!(bao().requests("transit/sign"), signs + 1);

    // A corrupt cache file is ignored (the keys are listed again) and replaced by a sound one.
    for f in &files {
        std::fs::write(f, b"{\"format\": 1, \"keys\": [garbage").unwrap();
    }
    m.reset();
    let (out, err) = list_objects(&st.config, &[]);
    assert_eq!(out, first, "stderr: {err}");
    assert!(
        err.contains("host key cache") && err.contains("ignored: not a cache file"),
        "the person is told why the file is not used: {err}"
    );
    assert!(m.count("GetPublicKey") >= 3, "{:?}", m.stats());
    for f in &files {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(f).unwrap()).expect("replaced by JSON");
        assert_eq!(v["format"], 1);
    }

    // A deleted KMS key and a rotated transit key: served from the cache within the TTL, noticed after it.
    let gone = m
        .boto("print([a['TargetKeyId'] for a in kms.list_aliases()['Aliases'] if a['AliasName'] == 'alias/hc-gone'][0])")
        .trim()
        .to_string();
    m.boto(&format!(
        "kms.schedule_key_deletion(KeyId='{gone}', PendingWindowInDays=7)"
    ));
    bao().ok(&["write", "-f", "transit/keys/hc-rot/rotate"]);
    let before = other_process(&st.config);
    assert!(before.contains("hc-gone"));
    std::thread::sleep(Duration::from_secs(TTL_S + 1));
    m.reset();
    let after = other_process(&st.config);
    assert!(!after.contains("hc-gone"), "{after}");
    assert!(m.count("ListKeys") >= 1);
    assert_ne!(before, after);
    // hc-rot has a new public key: its objects differ (the EC point), hc-v1's do not.
    let section_of = |out: &str, label: &str| -> String {
        // Objects start with an unindented line ("Public Key Object; EC ..."), their attributes are indented.
        let mut objects: Vec<String> = Vec::new();
        for l in out.lines() {
            match objects.last_mut() {
                Some(o) if l.starts_with(' ') => {
                    o.push_str(l);
                    o.push('\n');
                }
                _ => objects.push(format!("{l}\n")),
            }
        }
        let mine: Vec<String> = objects
            .into_iter()
            .filter(|o| {
                o.lines()
                    .any(|l| l.trim() == format!("label:      {label}"))
            })
            .collect();
        assert!(!mine.is_empty(), "no object labelled {label} in {out}");
        mine.join("")
    };
    assert_ne!(section_of(&before, "hc-rot"), section_of(&after, "hc-rot"));
    assert_eq!(section_of(&before, "hc-v1"), section_of(&after, "hc-v1"));

    // Processes starting at once with a cold cache (a configuration of its own: another cert_cache_dir): one
    // lists the keys, the others wait for its result; every one shows the same objects.
    let dir = st.certs.parent().unwrap().join("fleet");
    let config = config_like(&st.config, &st.certs, &dir, "");
    m.reset();
    let v0 = vault_key_requests();
    let outs = at_once(&config, 6);
    assert!(outs.iter().all(|o| o == &outs[0]), "{outs:?}");
    assert!(outs[0].contains("hc-a") && outs[0].contains("hc-v1"));
    assert_eq!(
        m.count("ListKeys"),
        1,
        "one process listed: {:?}",
        m.stats()
    );
    assert_eq!(m.count("ListAliases"), 1, "{:?}", m.stats());
    assert_eq!(
        vault_key_requests() - v0,
        3,
        "LIST + GET hc-v1 + GET hc-rot, once"
    );

    // key_cache = false: every process lists the keys itself.
    let off = st.certs.parent().unwrap().join("off");
    let config = config_like(&st.config, &st.certs, &off, "\nkey_cache = false");
    m.reset();
    other_process(&config);
    other_process(&config);
    assert_eq!(m.count("ListKeys"), 2, "{:?}", m.stats());
    assert!(cache_files(&off).is_empty());
}

/// A copy of the configuration with another cert_cache_dir and `extra` after each `cache_ttl_s`.
fn config_like(config: &Path, certs: &Path, dir: &Path, extra: &str) -> PathBuf {
    let text = std::fs::read_to_string(config)
        .unwrap()
        .replace(&certs.display().to_string(), &dir.display().to_string())
        .replace(
            &format!("cache_ttl_s = {TTL_S}"),
            &format!("cache_ttl_s = {TTL_S}{extra}"),
        );
    let path = dir.with_extension("toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `pkcs11-tool -O` in `n` processes started together: their stdouts.
fn at_once(config: &Path, n: usize) -> Vec<String> {
    let children: Vec<_> = (0..n)
        .map(|_| {
            std::process::Command::new("pkcs11-tool")
                .arg("--module")
                .arg(bridge_so())
                .arg("-O")
                .env("P11BRIDGE_CONFIG", config)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("pkcs11-tool")
        })
        .collect();
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().expect("pkcs11-tool");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .collect()
}
