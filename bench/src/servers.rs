//! The environment the bench runs in: a private directory with a copy of the `.so` under test, a SoftHSM2 token,
//! an OpenBao dev server and moto behind the KMS fidelity layer (all from `p11bridge-testkit`, stopped when the
//! bench exits), and the bridge's configuration over the three; the footprint measured in a fresh process.

use crate::opts::Opts;
use crate::pkcs11::{call, load, ok};
use p11bridge_testkit::bao::{Bao, ROOT_TOKEN};
use p11bridge_testkit::moto::Moto;
use p11bridge_testkit::{repo_root, softhsm, Launch};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

pub struct Servers {
    /// `target/bench-env/PID`: the `.so`, the token, the configurations, the servers' logs.
    pub dir: PathBuf,
    /// The copy of the `.so` under test.
    pub so: PathBuf,
    pub moto: Moto,
    /// OpenBao's `http://127.0.0.1:PORT` and root token.
    pub bao_addr: &'static str,
    pub bao_token: &'static str,
}

/// Starts everything and writes the configuration (slot "unified" over hsm, vault and kms), pointing
/// `P11BRIDGE_CONFIG` at it.
pub fn start(o: &Opts) -> Servers {
    assert!(
        o.so.exists(),
        "{}: build first: cargo build --release -p p11bridge",
        o.so.display()
    );
    let dir = repo_root()
        .join("target/bench-env")
        .join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("the bench's directory");
    // The .so under test, copied: others may rebuild target/release meanwhile.
    let so = dir.join("libp11bridge.so");
    std::fs::copy(&o.so, &so).expect("copy the .so");
    softhsm::make_token(&dir.join("softhsm"));
    let bao = start_bao(&dir);
    let moto = start_moto(&dir);
    moto.boto("k = kms.create_key(KeySpec='ECC_NIST_P256', KeyUsage='SIGN_VERIFY')['KeyMetadata']['KeyId']\nkms.create_alias(AliasName='alias/k-ec', TargetKeyId=k)\n");
    std::env::set_var("BENCH_BAO_TOKEN", ROOT_TOKEN);
    std::env::set_var("P11BRIDGE_PIN", "bench-pin");
    let batch_cfg = o
        .vault_batch
        .as_ref()
        .map(|v| format!("batch = {v}\n"))
        .unwrap_or_default();
    let config = dir.join("p11bridge.toml");
    std::fs::write(
        &config,
        format!(
            r#"[[slot]]
label = "unified"
user_pin = "env:P11BRIDGE_PIN"
backends = ["hsm", "vault", "kms"]

[backend.hsm]
kind = "pkcs11"
module = "{softhsm}"
token_label = "upstream"
pin = "env:HSM_PIN"

[backend.vault]
kind = "vault-transit"
address = "{bao_addr}"
token = "env:BENCH_BAO_TOKEN"
keys = ["b-ec", "b-ed"]
cert_cache_dir = "{certs}"
{batch_cfg}
[backend.kms]
kind = "aws-kms"
region = "us-east-1"
endpoint = "{kms}"
keys = ["alias/k-ec"]
cert_cache_dir = "{certs}"
"#,
            softhsm = softhsm::SOFTHSM,
            bao_addr = bao.addr,
            certs = dir.join("certs").display(),
            kms = moto.url,
        ),
    )
    .expect("write the configuration");
    std::env::set_var("P11BRIDGE_CONFIG", &config);
    Servers {
        dir,
        so,
        moto,
        bao_addr: Box::leak(bao.addr.clone().into_boxed_str()),
        bao_token: ROOT_TOKEN,
    }
}

/// An OpenBao dev server (stderr to `dir/bao.log`, no audit device: it would cost a write per request) with the
/// transit keys the Vault rows use.
fn start_bao(dir: &Path) -> Bao {
    let bao = Bao::launch(
        &Launch {
            log: Some(dir.join("bao.log")),
            ..Launch::default()
        },
        false,
    );
    bao.ok(&["secrets", "enable", "transit"]);
    bao.ok(&["write", "-f", "transit/keys/b-ec", "type=ecdsa-p256"]);
    bao.ok(&["write", "-f", "transit/keys/b-ed", "type=ed25519"]);
    bao
}

/// moto (stderr to `dir/moto.log`).
fn start_moto(dir: &Path) -> Moto {
    Moto::launch(
        "us-east-1",
        &Launch {
            log: Some(dir.join("moto.log")),
            ..Launch::default()
        },
    )
}

/// Creates `n` P-256 signing keys with aliases `alias/{prefix}NNNN`, 8 requests at a time.
pub fn create_kms_keys(moto: &Moto, prefix: &str, n: usize) {
    moto.boto(&format!(
        "from concurrent.futures import ThreadPoolExecutor\ndef mk(i):\n    k = kms.create_key(KeySpec='ECC_NIST_P256', KeyUsage='SIGN_VERIFY')['KeyMetadata']['KeyId']\n    kms.create_alias(AliasName='alias/{prefix}%04d' % i, TargetKeyId=k)\nwith ThreadPoolExecutor(8) as ex:\n    list(ex.map(mk, range({n})))\n"
    ));
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The child's side of [`footprint`] (`--footprint-child SO`): prints `init_µs rss_before_kib rss_after_kib`.
pub fn footprint_child(so: &Path) {
    // A fresh process: nothing else loaded or initialized.
    let before = rss_kib();
    let m = load(so);
    let t = Instant::now();
    ok(call!(m, C_Initialize(std::ptr::null_mut())), "C_Initialize");
    let init = t.elapsed();
    let after = rss_kib();
    println!("{} {} {}", init.as_micros(), before, after);
}

/// `C_Initialize` time (µs) and RSS before and after it (KiB), measured in a fresh process (the configuration
/// from `P11BRIDGE_CONFIG`); empty if the child failed.
pub fn footprint(so: &Path) -> Vec<u64> {
    let out = std::env::current_exe()
        .and_then(|exe| Command::new(exe).arg("--footprint-child").arg(so).output())
        .expect("footprint child");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect()
}
