//! An HA group of two upstream tokens holding the same keys (`kind = "pkcs11-ha"`), with a real process to kill:
//!
//! - member `hsm_a` (the primary) is a SoftHSM2 token served by `p11-kit server` in its own process group and reached
//!   through p11-kit's RPC client module (`p11-kit-client.so`, over a unix socket);
//! - member `hsm_b` is a clone of the same token (same keys, same `CKA_ID`s) in SoftHSM2 loaded in-process.
//!
//! A signing loop runs in a thread; the p11-kit server is SIGKILLed in the middle of it and started again later. Every
//! signature is checked independently (RSA PKCS#1 v1.5 is deterministic: each message's signature is verified once
//! by openssl and every later one must equal it). Which member served each operation comes from the bridge's
//! `p11bridge::ha` debug log.

mod common;

use common::*;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

const P11KIT_CLIENT: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so";

struct Setup {
    dir: PathBuf,
    log: PathBuf,
    server: Mutex<Option<Child>>,
}

impl Setup {
    fn socket(&self) -> PathBuf {
        self.dir.join("a.sock")
    }

    /// Starts `p11-kit server` for token A (its own SoftHSM2 config), in a new process group, and waits for its socket.
    fn start_server(&self) {
        let sock = self.socket();
        let _ = std::fs::remove_file(&sock);
        let child = Command::new("p11-kit")
            .args(["server", "-f", "-n"])
            .arg(&sock)
            .args(["--provider", SOFTHSM, "pkcs11:token=upstream"])
            .env("SOFTHSM2_CONF", self.dir.join("a/softhsm2.conf"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start p11-kit server (package p11-kit)");
        let start = Instant::now();
        while !sock.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "p11-kit server did not create its socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        *self.server.lock().unwrap() = Some(child);
    }

    /// SIGKILLs the server's whole process group (it serves each connection in a child process).
    fn kill_server(&self) {
        let mut g = self.server.lock().unwrap();
        if let Some(mut c) = g.take() {
            // SAFETY: signalling the process group of a child we started.
            unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
            let _ = c.wait();
        }
    }

    /// Operations the bridge routed to each member so far (from its debug log).
    fn routed(&self) -> HashMap<String, usize> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut m = HashMap::new();
        for l in text
            .lines()
            .filter(|l| l.contains("routed") && l.contains("op=\"init\""))
        {
            for name in ["hsm_a", "hsm_b"] {
                if l.contains(&format!("member={name}")) {
                    *m.entry(name.to_string()).or_insert(0) += 1;
                }
            }
        }
        m
    }

    /// The time (seconds into the UTC day) of the first log line containing `what` at or after `after`.
    fn first_log_after(&self, what: &str, after: f64) -> Option<f64> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(what))
            .filter_map(|l| {
                // 2026-11-28T16:30:08.765142Z
                let t = l.get(11..26)?;
                let h: f64 = t.get(0..2)?.parse().ok()?;
                let m: f64 = t.get(3..5)?.parse().ok()?;
                let s: f64 = t.get(6..15)?.parse().ok()?;
                Some(h * 3600.0 + m * 60.0 + s)
            })
            .find(|t| *t >= after)
    }

    /// Audit events of this kind, by the member that served them.
    fn audited(&self, event: &str) -> HashMap<String, usize> {
        let text = std::fs::read_to_string(self.dir.join("audit.jsonl")).unwrap_or_default();
        let mut m = HashMap::new();
        for l in text.lines() {
            let v: serde_json::Value = serde_json::from_str(l).expect("audit line is JSON");
            if v["event"] == event && v["rv"] == "CKR_OK" {
                assert_eq!(v["backend"], "hsm", "{l}");
                let member = v["member"].as_str().unwrap_or("none").to_string();
                *m.entry(member).or_insert(0) += 1;
            }
        }
        m
    }

    fn log_has(&self, what: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(what))
            .count()
    }
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let dir = repo_root()
            .join("target/test-env")
            .join(format!("hsm_ha-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Token A: the fixture token; token B: a clone of it (the same keys and CKA_IDs, as an HSM restored from
        // the other's backup would hold).
        let out = Command::new("bash")
            .arg(repo_root().join("softhsm-setup.sh"))
            .arg(dir.join("a"))
            .output()
            .expect("run softhsm-setup.sh");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::create_dir_all(dir.join("b")).unwrap();
        let cp = Command::new("cp")
            .arg("-a")
            .arg(dir.join("a/tokens"))
            .arg(dir.join("b/tokens"))
            .status()
            .unwrap();
        assert!(cp.success());
        std::fs::write(
            dir.join("b/softhsm2.conf"),
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                dir.join("b/tokens").display()
            ),
        )
        .unwrap();
        let so = dir.join("libp11bridge.so");
        std::fs::copy(bridge_so(), &so).expect("private copy of libp11bridge.so");
        let log = dir.join("bridge.log");
        let audit = dir.join("audit.jsonl").display().to_string();
        let config = dir.join("p11bridge.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[[slot]]
label = "ha"
user_pin = "env:P11BRIDGE_PIN"
backends = ["hsm"]

[audit]
file = "{audit}"

[backend.hsm]
kind = "pkcs11-ha"
members = ["hsm_a", "hsm_b"]
probe_interval_ms = 200

[backend.hsm_a]
kind = "pkcs11"
module = "{P11KIT_CLIENT}"
token_label = "upstream"
pin = "env:HSM_PIN"

[backend.hsm_b]
kind = "pkcs11"
module = "{SOFTHSM}"
token_label = "upstream"
pin = "env:HSM_PIN"
"#
            ),
        )
        .unwrap();
        let s = Setup {
            dir: dir.clone(),
            log: log.clone(),
            server: Mutex::new(None),
        };
        // HA_START_DOWN (set for a child process by `primary_down_at_initialize`): the primary is down at first.
        if std::env::var_os("HA_START_DOWN").is_none() {
            s.start_server();
        }
        std::env::set_var(
            "P11_KIT_SERVER_ADDRESS",
            format!("unix:path={}", s.socket().display()),
        );
        std::env::set_var("SOFTHSM2_CONF", dir.join("b/softhsm2.conf"));
        std::env::set_var("P11BRIDGE_CONFIG", &config);
        std::env::set_var("P11BRIDGE_PIN", BRIDGE_PIN);
        std::env::set_var("HSM_PIN", HSM_PIN);
        std::env::set_var("P11BRIDGE_LOG", "p11bridge::ha=debug");
        std::env::set_var("P11BRIDGE_LOG_FILE", &log);
        std::env::set_var("P11BRIDGE_SO", &so);
        s
    })
}

fn bridge() -> &'static Pkcs11 {
    static P: OnceLock<Pkcs11> = OnceLock::new();
    P.get_or_init(|| {
        let s = setup();
        let p = Pkcs11::new(s.dir.join("libp11bridge.so")).expect("load the bridge");
        let mut flags = CInitializeFlags::OS_LOCKING_OK;
        if std::env::var_os("HA_NO_THREADS").is_some() {
            flags |= CInitializeFlags::LIBRARY_CANT_CREATE_OS_THREADS;
        }
        p.initialize(CInitializeArgs::new(flags))
            .expect("C_Initialize");
        p
    })
}

fn session(p: &Pkcs11) -> Session {
    let s = p
        .open_rw_session(slot_by_label(p, "ha"))
        .expect("open session");
    match s.login(UserType::User, Some(&AuthPin::new(BRIDGE_PIN.into()))) {
        Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("login: {e}"),
    }
    s
}

fn rv(e: Error) -> RvError {
    match e {
        Error::Pkcs11(rv, _) => rv,
        other => panic!("not a PKCS#11 error: {other}"),
    }
}

/// Signatures checked independently: each message's first signature by openssl, later ones must equal it.
struct Checker {
    spki: Vec<u8>,
    known: Mutex<HashMap<Vec<u8>, Vec<u8>>>,
}

impl Checker {
    fn check(&self, msg: &[u8], sig: &[u8]) -> bool {
        if let Some(k) = self.known.lock().unwrap().get(msg) {
            return k == sig;
        }
        let ok = openssl_verify_sha256(&self.spki, msg, sig);
        if ok {
            self.known
                .lock()
                .unwrap()
                .insert(msg.to_vec(), sig.to_vec());
        }
        ok
    }
}

/// `openssl dgst -sha256 -verify` (an implementation independent of the tokens).
fn openssl_verify_sha256(spki: &[u8], data: &[u8], sig: &[u8]) -> bool {
    use std::sync::atomic::AtomicUsize;
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = setup()
        .dir
        .join(format!("verify-{}", N.fetch_add(1, Ordering::SeqCst)));
    std::fs::create_dir_all(&d).unwrap();
    let (k, m, g) = (d.join("key.der"), d.join("msg"), d.join("sig"));
    std::fs::write(&k, spki).unwrap();
    std::fs::write(&m, data).unwrap();
    std::fs::write(&g, sig).unwrap();
    let ok = Command::new("openssl")
        .args(["dgst", "-sha256", "-keyform", "DER", "-verify"])
        .arg(&k)
        .arg("-signature")
        .arg(&g)
        .arg(&m)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let _ = std::fs::remove_dir_all(&d);
    ok
}

fn seconds_of_day() -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (now.as_secs() % 86400) as f64 + f64::from(now.subsec_micros()) / 1e6
}

fn msg(i: usize) -> Vec<u8> {
    format!("message {}", i % 16).into_bytes()
}

struct Op {
    start: Instant,
    took: Duration,
    ok: bool,
}

/// Signs in a loop on its own session until `stop`, recording each operation.
fn signing_loop(
    p: &'static Pkcs11,
    key: ObjectHandle,
    checker: Arc<Checker>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<Op>> {
    std::thread::spawn(move || {
        let s = session(p);
        let mut ops = Vec::new();
        let mut i = 0;
        while !stop.load(Ordering::SeqCst) {
            let m = msg(i);
            let start = Instant::now();
            let r = s.sign(&Mechanism::Sha256RsaPkcs, key, &m);
            let took = start.elapsed();
            let ok = match r {
                Ok(sig) => checker.check(&m, &sig),
                Err(e) => {
                    eprintln!("sign {i} failed: {e}");
                    false
                }
            };
            ops.push(Op { start, took, ok });
            i += 1;
        }
        ops
    })
}

/// Stops the p11-kit server when the test ends, passed or not (the setup is a static, never dropped).
struct StopServer(&'static Setup);

impl Drop for StopServer {
    fn drop(&mut self) {
        self.0.kill_server();
    }
}

#[test]
fn failover_and_recovery() {
    let st = setup();
    let _stop = StopServer(st);
    let p = bridge();
    let s = session(p);
    let key = find_one(&s, "rsa-2048", ObjectClass::PRIVATE_KEY);
    let public = find_one(&s, "rsa-2048", ObjectClass::PUBLIC_KEY);
    let checker = Arc::new(Checker {
        spki: spki(&s, public),
        known: Mutex::new(HashMap::new()),
    });
    // One object per (CKA_ID, class), though both members hold it.
    assert_eq!(s.find_objects(&[Attribute::Id(vec![1])]).unwrap().len(), 2);
    // The bridge does not replicate keys: token objects are not created through the group.
    let e = s
        .create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Label("x".into()),
        ])
        .unwrap_err();
    assert_eq!(rv(e), RvError::TemplateInconsistent);
    // Session objects are fine (on this session's member).
    let d = s
        .create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(false),
            Attribute::Label("scratch".into()),
        ])
        .unwrap();
    s.destroy_object(d).unwrap();
    // A session key: made on the session's home member and used there (AES-CBC-PAD round trip).
    let aes = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(false),
                Attribute::ValueLen(32.into()),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
            ],
        )
        .unwrap();
    let ct = s
        .encrypt(&Mechanism::AesCbcPad([7; 16]), aes, b"session key data")
        .unwrap();
    assert_eq!(
        s.decrypt(&Mechanism::AesCbcPad([7; 16]), aes, &ct).unwrap(),
        b"session key data"
    );
    let e = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[Attribute::Token(true), Attribute::ValueLen(32.into())],
        )
        .unwrap_err();
    assert_eq!(
        rv(e),
        RvError::TemplateInconsistent,
        "token keys are not made through the group"
    );
    // Group objects are not changed through the bridge (the members would drift apart).
    let e = s
        .update_attributes(public, &[Attribute::Label("renamed".into())])
        .unwrap_err();
    assert_eq!(rv(e), RvError::ActionProhibited);

    // 1. Both members healthy: load is spread.
    let before = st.routed();
    for i in 0..200 {
        let m = msg(i);
        let sig = s.sign(&Mechanism::Sha256RsaPkcs, key, &m).unwrap();
        assert!(checker.check(&m, &sig), "signature {i} does not verify");
    }
    let after = st.routed();
    let spread = |a: &HashMap<String, usize>, b: &HashMap<String, usize>, n: &str| {
        b.get(n).copied().unwrap_or(0) - a.get(n).copied().unwrap_or(0)
    };
    let (a1, b1) = (
        spread(&before, &after, "hsm_a"),
        spread(&before, &after, "hsm_b"),
    );
    println!("load spreading, both healthy, 200 signs: hsm_a {a1}, hsm_b {b1}");
    // The audit trail names the member that signed.
    let audited = st.audited("sign");
    println!("audit trail, sign events by member: {audited:?}");
    assert_eq!(audited.get("hsm_a"), Some(&a1), "{audited:?}");
    assert_eq!(audited.get("hsm_b"), Some(&b1), "{audited:?}");
    assert!(
        a1 >= 60 && b1 >= 60,
        "load not spread: hsm_a {a1}, hsm_b {b1}"
    );

    // A multi-part operation left in flight on the primary (cannot move: it ends with CKR_DEVICE_ERROR).
    let multi = session(p);
    let mut on_a = false;
    for _ in 0..8 {
        let r0 = st.routed();
        multi.sign_init(&Mechanism::Sha256RsaPkcs, key).unwrap();
        multi.sign_update(b"multi-part ").unwrap();
        if spread(&r0, &st.routed(), "hsm_a") == 1 {
            on_a = true;
            break;
        }
        multi.sign_final().unwrap();
    }
    assert!(on_a, "round-robin never put an operation on the primary");

    // 2. Kill the primary in the middle of a signing loop.
    let stop = Arc::new(AtomicBool::new(false));
    // Two signing threads, each on its own session.
    let loops: Vec<_> = (0..2)
        .map(|_| signing_loop(p, key, checker.clone(), stop.clone()))
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let at_kill = st.routed();
    let killed = Instant::now();
    let killed_wall = seconds_of_day();
    st.kill_server();
    std::thread::sleep(Duration::from_millis(2500));
    // Other calls while the primary is down.
    assert_eq!(s.find_objects(&[Attribute::Id(vec![2])]).unwrap().len(), 2);
    assert_eq!(s.generate_random_vec(32).unwrap().len(), 32);
    let e = multi.sign_final().unwrap_err();
    assert_eq!(
        rv(e),
        RvError::DeviceError,
        "a multi-part operation on the dead member"
    );
    let m = msg(3);
    let sig = multi.sign(&Mechanism::Sha256RsaPkcs, key, &m).unwrap();
    assert!(
        checker.check(&m, &sig),
        "the next operation of that session goes to the survivor"
    );
    let while_down = st.routed();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let ops: Vec<Op> = loops.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let down = st.routed();

    let before_kill: Vec<&Op> = ops.iter().filter(|o| o.start + o.took < killed).collect();
    let after_kill: Vec<&Op> = ops.iter().filter(|o| o.start + o.took >= killed).collect();
    let failed = ops.iter().filter(|o| !o.ok).count();
    let typical = {
        let mut v: Vec<Duration> = before_kill.iter().map(|o| o.took).collect();
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    let max_after = after_kill.iter().map(|o| o.took).max().unwrap_or_default();
    let max_before = before_kill.iter().map(|o| o.took).max().unwrap_or_default();
    // The failover window: from the kill to the end of the call that met the dead primary first (it failed over
    // to the survivor inside the call); the bridge's log says when that happened.
    let detected = st
        .first_log_after("member failed a call", killed_wall - 0.001)
        .map(|t| killed + Duration::from_secs_f64((t - killed_wall).max(0.0)))
        .expect("no call met the dead primary");
    let hit = after_kill
        .iter()
        .filter(|o| o.start <= detected + Duration::from_millis(2))
        .max_by_key(|o| o.start);
    let window_end = hit.map(|o| o.start + o.took).unwrap_or(detected);
    let window = window_end.saturating_duration_since(killed);
    let detect_after = detected.saturating_duration_since(killed);
    let in_window = after_kill.iter().filter(|o| o.start < window_end).count();
    let failed_after_window = after_kill
        .iter()
        .filter(|o| o.start >= window_end && !o.ok)
        .count();
    let a_after = spread(&at_kill, &down, "hsm_a");
    let b_after = spread(&at_kill, &down, "hsm_b");
    println!(
        "failover: {} ops before the kill (median {typical:?}, slowest {max_before:?}), {} after; failed ops: {failed} in all, \
         {failed_after_window} after the window; failover window {window:?} ({in_window} ops in it; the dead \
         primary met {detect_after:?} after the kill, the call that failed over took {:?}); slowest op after the kill {max_after:?}; routed after the kill: hsm_a {a_after}, hsm_b {b_after}; calls \
         that hit the dead primary: {}",
        before_kill.len(),
        after_kill.len(),
        hit.map(|o| o.took).unwrap_or_default(),
        st.log_has("member failed a call"),
    );
    assert!(
        before_kill.len() > 20 && after_kill.len() > 20,
        "the loop did not run on both sides of the kill"
    );
    assert_eq!(
        failed, 0,
        "single-part signing fails over within the call: no operation may fail"
    );
    assert_eq!(failed_after_window, 0);
    assert!(
        st.log_has("breaker open") >= 1,
        "the primary's breaker did not open"
    );
    // Once the breaker is open the dead member costs nothing: calls skip it (only the prober touches it).
    assert_eq!(
        spread(&while_down, &down, "hsm_a"),
        0,
        "operations still routed to the dead primary"
    );
    let failed_calls = st.log_has("member failed a call");
    assert!(
        failed_calls <= 4,
        "{failed_calls} calls hit the dead primary (at most one per signing thread, plus the multi-part one's final)"
    );

    // 3. The primary comes back: the prober closes its breaker and it is used again.
    let restarted = Instant::now();
    st.start_server();
    let back_before = st.log_has("member back");
    let mut used_again = None;
    let base = st.routed();
    let mut i = 0;
    while restarted.elapsed() < Duration::from_secs(20) {
        let m = msg(i);
        let sig = s.sign(&Mechanism::Sha256RsaPkcs, key, &m).unwrap();
        assert!(
            checker.check(&m, &sig),
            "signature after restart does not verify"
        );
        i += 1;
        if spread(&base, &st.routed(), "hsm_a") > 0 {
            used_again = Some(restarted.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let used_again = used_again.expect("the primary was not used again after it came back");
    assert!(st.log_has("member back") > back_before);
    let base = st.routed();
    for i in 0..100 {
        let m = msg(i);
        let sig = s.sign(&Mechanism::Sha256RsaPkcs, key, &m).unwrap();
        assert!(checker.check(&m, &sig));
    }
    let end = st.routed();
    let (a3, b3) = (spread(&base, &end, "hsm_a"), spread(&base, &end, "hsm_b"));
    println!(
        "recovery: primary used again {used_again:?} after its restart (probe interval 200 ms); next 100 signs: \
         hsm_a {a3}, hsm_b {b3}; re-initializations of the client module: {}",
        st.log_has("module re-initialized")
    );
    assert!(
        a3 >= 30 && b3 >= 30,
        "load not spread again: hsm_a {a3}, hsm_b {b3}"
    );
}

/// The primary is down when the application calls `C_Initialize`: the group starts on the other member, and the
/// primary joins once it is up — found by the prober thread, or, with `CKF_LIBRARY_CANT_CREATE_OS_THREADS`, by a
/// call that probes it inline. Each case runs in a child process (one `C_Initialize` per process).
#[test]
fn primary_down_at_initialize() {
    for no_threads in [false, true] {
        let mut c = Command::new(std::env::current_exe().unwrap());
        c.args(["--exact", "child_primary_down_at_initialize", "--nocapture"])
            .env("HA_CHILD_DOWN", "1")
            .env("HA_START_DOWN", "1");
        if no_threads {
            c.env("HA_NO_THREADS", "1");
        }
        let out = c.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let line = text
            .lines()
            .find(|l| l.starts_with("CHILD-OK"))
            .unwrap_or_else(|| panic!("no_threads={no_threads}: child failed:\n{text}"));
        assert!(out.status.success(), "{text}");
        println!("primary down at C_Initialize (no_threads={no_threads}): {line}");
    }
}

/// Helper of `primary_down_at_initialize` (does nothing unless run by it).
#[test]
fn child_primary_down_at_initialize() {
    if std::env::var_os("HA_CHILD_DOWN").is_none() {
        return;
    }
    let st = setup();
    let _stop = StopServer(st);
    let p = bridge();
    let s = session(p);
    let key = find_one(&s, "rsa-2048", ObjectClass::PRIVATE_KEY);
    let public = find_one(&s, "rsa-2048", ObjectClass::PUBLIC_KEY);
    let checker = Checker {
        spki: spki(&s, public),
        known: Mutex::new(HashMap::new()),
    };
    for i in 0..20 {
        let m = msg(i);
        let sig = s.sign(&Mechanism::Sha256RsaPkcs, key, &m).unwrap();
        assert!(checker.check(&m, &sig));
    }
    let r = st.routed();
    assert_eq!(r.get("hsm_a"), None, "the dead primary served: {r:?}");
    assert_eq!(r.get("hsm_b"), Some(&20));
    let started = Instant::now();
    st.start_server();
    let mut i = 0;
    while !st.routed().contains_key("hsm_a") {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the primary never joined"
        );
        let m = msg(i);
        let sig = s.sign(&Mechanism::Sha256RsaPkcs, key, &m).unwrap();
        assert!(checker.check(&m, &sig));
        i += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "CHILD-OK: 20 signs on hsm_b while hsm_a was down; hsm_a served {:?} after its server started",
        started.elapsed()
    );
}

/// Runs this test binary again with `P11BRIDGE_CONFIG` pointing at `config`; returns the child's stderr.
fn child_initialize(config: &Path) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_initialize_only",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("HA_CHILD_CONFIG", config)
        .env_remove("P11BRIDGE_LOG")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)
}

/// Helper of `config_errors` (does nothing unless run by it).
#[test]
fn child_initialize_only() {
    let Some(cfg) = std::env::var_os("HA_CHILD_CONFIG") else {
        return;
    };
    std::env::set_var("P11BRIDGE_CONFIG", cfg);
    let p = Pkcs11::new(bridge_so()).expect("load the bridge");
    match p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) => println!("CHILD: initialized"),
        Err(e) => println!("CHILD: {e}"),
    }
}

#[test]
fn config_errors() {
    let dir = repo_root()
        .join("target/test-env")
        .join(format!("hsm_ha-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (r#"members = ["hsm_a", "nope"]"#, "backend.hsm.members: no [backend.nope] section"),
        (
            r#"members = ["hsm_a", "vault"]"#,
            "backend.hsm.members: vault is kind = \"vault-transit\"; members must be kind = \"pkcs11\"",
        ),
        (r#"members = ["hsm_a"]"#, "backend.hsm.members: an HA group needs at least two members"),
        (r#"members = ["hsm_a", "hsm_b"]
bogus = 1"#, "backend.hsm: unknown field `bogus`"),
    ];
    for (i, (members, want)) in cases.iter().enumerate() {
        let cfg = dir.join(format!("bad{i}.toml"));
        std::fs::write(
            &cfg,
            format!(
                r#"[[slot]]
label = "ha"
user_pin = "1"
backends = ["hsm"]

[backend.hsm]
kind = "pkcs11-ha"
{members}

[backend.hsm_a]
kind = "pkcs11"
module = "{SOFTHSM}"
token_label = "upstream"

[backend.hsm_b]
kind = "pkcs11"
module = "{SOFTHSM}"
slot_id = 0

[backend.vault]
kind = "vault-transit"
"#
            ),
        )
        .unwrap();
        let out = child_initialize(&cfg);
        let line = out
            .lines()
            .find(|l| l.contains("C_Initialize failed"))
            .unwrap_or_else(|| panic!("case {i}: no error line in {out}"));
        assert!(line.contains(want), "case {i}: {line}");
        println!("config error {i}: {line}");
    }
}
