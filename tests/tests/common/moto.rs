//! moto's KMS with the project's fidelity layer (`tests/kms/moto_fidelity.py`), one server per test binary on a
//! free loopback port, killed when the test process exits. Keys are created with boto3 (it comes with moto); the
//! side channel counts requests per KMS action and injects faults.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

pub struct Moto {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub pid: i32,
    /// The region boto3 talks to it in (moto keeps one key store per region).
    pub region: String,
}

/// The server of this test binary (started on first use). Also sets the AWS environment the bridge's SDK client
/// and boto3 read: dummy credentials, region, and no instance metadata lookups.
pub fn moto() -> &'static Moto {
    static M: OnceLock<Moto> = OnceLock::new();
    M.get_or_init(start)
}

fn start() -> Moto {
    spawn(0, "us-east-1")
}

/// Another server (not the shared one), on `port` (0: a free one); `region` is the region its helpers use. The
/// caller may kill it and start a new one on the same port.
pub fn spawn(port: u16, region: &str) -> Moto {
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("AWS_DEFAULT_REGION", "us-east-1");
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let script = super::repo_root().join("tests/kms/moto_fidelity.py");
    let (tx, rx) = mpsc::channel();
    // A thread that lives as long as the process owns the child: PR_SET_PDEATHSIG fires when the thread that
    // spawned the child exits, which is then the end of the test process.
    std::thread::spawn(move || {
        let mut cmd = Command::new("python3");
        cmd.arg(&script)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("start moto_fidelity.py");
        let pid = child.id() as i32;
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        tx.send((pid, line)).unwrap();
        let _ = child.wait();
        loop {
            std::thread::park();
        }
    });
    let (pid, line) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("moto did not start");
    let url = line
        .trim()
        .strip_prefix("READY ")
        .unwrap_or_else(|| panic!("moto_fidelity.py said {line:?}"))
        .to_string();
    Moto {
        url,
        pid,
        region: region.to_string(),
    }
}

impl Moto {
    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// One plain HTTP/1.0 request to the side channel; returns the body.
    fn http(&self, method: &str, path: &str, body: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port())).expect("connect moto");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        let (head, body) = r.split_once("\r\n\r\n").unwrap_or((&r, ""));
        assert!(head.contains(" 200 "), "{method} {path}: {head}");
        body.to_string()
    }

    /// Requests per KMS action since the last reset.
    pub fn stats(&self) -> Vec<(String, u64)> {
        let b = self.http("GET", "/_fidelity/stats", "");
        let b = b.trim().trim_start_matches('{').trim_end_matches('}');
        b.split(',')
            .filter_map(|kv| {
                let (k, v) = kv.split_once(':')?;
                Some((
                    k.trim().trim_matches('"').to_string(),
                    v.trim().parse().ok()?,
                ))
            })
            .collect()
    }

    pub fn count(&self, action: &str) -> u64 {
        self.stats()
            .into_iter()
            .find(|(a, _)| a == action)
            .map_or(0, |(_, n)| n)
    }

    pub fn total(&self) -> u64 {
        self.stats().iter().map(|(_, n)| n).sum()
    }

    pub fn reset(&self) {
        self.http("POST", "/_fidelity/reset", "");
    }

    /// Arms a fault: `mode` "throttle" | "500" | "delay".
    pub fn fault(&self, action: &str, mode: &str, count: u32, delay_ms: u64) {
        self.http(
            "POST",
            "/_fidelity/fault",
            &format!(
                r#"{{"action": "{action}", "mode": "{mode}", "count": {count}, "delay_ms": {delay_ms}}}"#
            ),
        );
    }

    /// Runs Python with boto3's KMS client bound to this server as `kms`; returns stdout.
    pub fn boto(&self, code: &str) -> String {
        let prelude = format!(
            "import boto3,json\nkms = boto3.client('kms', endpoint_url='{}', region_name='{}', aws_access_key_id='testing', aws_secret_access_key='testing')\n",
            self.url, self.region
        );
        let out = Command::new("python3")
            .arg("-c")
            .arg(format!("{prelude}{code}"))
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "boto3: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Creates a key with an alias and tags; returns its key id.
    pub fn create_key(
        &self,
        alias: &str,
        spec: &str,
        usage: &str,
        tags: &[(&str, &str)],
    ) -> String {
        let tags: Vec<String> = tags
            .iter()
            .map(|(k, v)| format!("{{'TagKey': '{k}', 'TagValue': '{v}'}}"))
            .collect();
        self.boto(&format!(
            "k = kms.create_key(KeySpec='{spec}', KeyUsage='{usage}', Tags=[{}])['KeyMetadata']['KeyId']\nkms.create_alias(AliasName='alias/{alias}', TargetKeyId=k)\nprint(k)",
            tags.join(", ")
        ))
        .trim()
        .to_string()
    }

    /// A key of this server's region with its material (JSON, see `moto_fidelity.py`), to seed a replica.
    pub fn export_key(&self, key_id: &str) -> String {
        self.http(
            "GET",
            &format!("/_fidelity/key?region={}&key_id={key_id}", self.region),
            "",
        )
    }

    /// Creates the key of `export_key`'s JSON, same id and material, in this server's region (a replica).
    pub fn import_key(&self, exported: &str) {
        let body = exported.trim().trim_end_matches('}');
        self.http(
            "POST",
            "/_fidelity/key",
            &format!("{body}, \"Region\": \"{}\"}}", self.region),
        );
    }

    /// Kills the server (SIGKILL): connections are refused from now on.
    pub fn kill(&self) {
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
    }

    /// Freezes the server (SIGSTOP): requests hang, as with KMS unreachable behind a black hole.
    pub fn freeze(&self) {
        unsafe { libc::kill(self.pid, libc::SIGSTOP) };
    }

    pub fn thaw(&self) {
        unsafe { libc::kill(self.pid, libc::SIGCONT) };
    }
}

/// Two moto servers as two regions of one account (us-east-1 first, us-west-2) holding the same multi-Region ECC
/// P-256 signing key behind `alias` (the second seeded through the fidelity layer). Returns the servers, the key id
/// (`mrk-…`) and the exported key, to seed a restarted server again.
#[allow(dead_code)]
pub fn two_regions_with_mrk(alias: &str) -> (Moto, Moto, String, String) {
    let a = spawn(0, "us-east-1");
    let b = spawn(0, "us-west-2");
    let key_id = a
        .boto(&format!(
            "k = kms.create_key(KeySpec='ECC_NIST_P256', KeyUsage='SIGN_VERIFY', MultiRegion=True)['KeyMetadata']['KeyId']\nkms.create_alias(AliasName='{alias}', TargetKeyId=k)\nprint(k)"
        ))
        .trim()
        .to_string();
    assert!(key_id.starts_with("mrk-"), "{key_id}");
    let exported = a.export_key(&key_id);
    b.import_key(&exported);
    (a, b, key_id, exported)
}
