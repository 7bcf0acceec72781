//! moto's KMS with the project's fidelity layer (`tests/kms/moto_fidelity.py`) for the fault harness: started on a
//! free loopback port (dies with this process), keys created with boto3, and the fidelity layer's side channel
//! (requests per KMS action, injected faults). The same server `tests/tests/common/moto.rs` runs for `cargo test`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Moto {
    child: Child,
    /// `127.0.0.1:PORT`
    pub addr: String,
}

impl Moto {
    /// Starts the server; also sets the AWS environment the bridge's SDK client and boto3 read.
    pub fn start() -> Moto {
        for (k, v) in [
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ] {
            std::env::set_var(k, v);
        }
        let script = crate::env::repo_root().join("tests/kms/moto_fidelity.py");
        let mut cmd = Command::new("python3");
        cmd.arg(&script)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        // SAFETY: only an async-signal-safe call between fork and exec; the server dies with us.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", script.display()));
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        let url = line
            .trim()
            .strip_prefix("READY ")
            .unwrap_or_else(|| {
                panic!("moto_fidelity.py said {line:?} (pip install 'moto[server]')")
            })
            .to_string();
        let addr = url.trim_start_matches("http://").to_string();
        Moto { child, addr }
    }

    /// One plain HTTP/1.0 request to the side channel (directly, not through a proxy); returns the body.
    fn http(&self, method: &str, path: &str, body: &str) -> String {
        let mut s = TcpStream::connect(&self.addr).expect("connect moto");
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        write!(
            s,
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("write to moto");
        let mut r = String::new();
        s.read_to_string(&mut r).expect("read from moto");
        let (head, body) = r.split_once("\r\n\r\n").unwrap_or((&r, ""));
        assert!(head.contains(" 200 "), "{method} {path}: {head}");
        body.to_string()
    }

    /// Requests of one KMS action since the last reset.
    pub fn count(&self, action: &str) -> u64 {
        let b = self.http("GET", "/_fidelity/stats", "");
        let b = b.trim().trim_start_matches('{').trim_end_matches('}');
        b.split(',')
            .filter_map(|kv| {
                let (k, v) = kv.split_once(':')?;
                (k.trim().trim_matches('"') == action).then(|| v.trim().parse().ok())?
            })
            .next()
            .unwrap_or(0)
    }

    /// Clears the counters and pending faults.
    pub fn reset(&self) {
        self.http("POST", "/_fidelity/reset", "");
    }

    /// Arms a fault of the fidelity layer: `mode` "throttle" | "500" | "delay", for the next `count` requests.
    pub fn fault(&self, action: &str, mode: &str, count: u32) {
        self.http(
            "POST",
            "/_fidelity/fault",
            &format!(
                r#"{{"action": "{action}", "mode": "{mode}", "count": {count}, "delay_ms": 0}}"#
            ),
        );
    }

    /// Creates a key with an alias and the tag `p11bridge=on` (boto3); returns its id.
    pub fn create_key(&self, alias: &str, spec: &str, usage: &str) -> String {
        let code = format!(
            "import boto3\nkms = boto3.client('kms', endpoint_url='http://{}', region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing')\nk = kms.create_key(KeySpec='{spec}', KeyUsage='{usage}', Tags=[{{'TagKey': 'p11bridge', 'TagValue': 'on'}}])['KeyMetadata']['KeyId']\nkms.create_alias(AliasName='alias/{alias}', TargetKeyId=k)\nprint(k)",
            self.addr
        );
        let out = Command::new("python3")
            .arg("-c")
            .arg(code)
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "boto3: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
