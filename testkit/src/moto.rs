//! moto's KMS with the project's fidelity layer (`tests/kms/moto_fidelity.py`) on a loopback port. Keys are
//! created with boto3 (it comes with moto); the side channel counts requests per KMS action, injects faults and
//! exports/imports key material (to seed a replica region).

use crate::process::{spawn_server, Launch, Process};
use std::path::Path;
use std::process::Command;

pub struct Moto {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// The server process (`pid`, `kill`, `freeze`, `thaw`; this value dereferences to it).
    pub process: Process,
    /// The region boto3 talks to it in (moto keeps one key store per region).
    pub region: String,
    /// `https://127.0.0.1:PORT` when started by [`Moto::launch_tls`]: the same server over TLS.
    pub https_url: Option<String>,
}

/// Sets the AWS environment the bridge's SDK client and boto3 read: dummy credentials, region us-east-1, and no
/// instance metadata lookups.
pub fn set_aws_env() {
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ] {
        std::env::set_var(k, v);
    }
}

/// A server on `port` (0: a free one) that lives until this process exits; `region` is the region its helpers
/// use. The caller may kill it and start a new one on the same port.
pub fn spawn(port: u16, region: &str) -> Moto {
    Moto::launch(
        region,
        &Launch {
            port,
            ..Launch::default()
        },
    )
}

impl Moto {
    /// Starts a server as `launch` says (also sets the AWS environment, [`set_aws_env`]).
    pub fn launch(region: &str, launch: &Launch) -> Moto {
        Moto::launch_tls(region, launch, None)
    }

    /// [`Moto::launch`], serving HTTPS as well with `tls` (certificate and key, PEM) on a port of its own
    /// ([`Moto::https_url`]); the helpers keep using plain HTTP.
    pub fn launch_tls(region: &str, launch: &Launch, tls: Option<(&Path, &Path)>) -> Moto {
        set_aws_env();
        let script = crate::repo_root().join("tests/kms/moto_fidelity.py");
        let mut cmd = Command::new("python3");
        cmd.arg(&script)
            .args(["--host", "127.0.0.1", "--port", &launch.port.to_string()]);
        if let Some((cert, key)) = tls {
            cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        let (pid, line) = spawn_server(cmd, launch, true);
        let mut urls = line
            .trim()
            .strip_prefix("READY ")
            .unwrap_or_else(|| {
                panic!("moto_fidelity.py said {line:?} (pip install 'moto[server]')")
            })
            .split(' ')
            .map(str::to_string);
        Moto {
            url: urls.next().unwrap_or_default(),
            https_url: urls.next(),
            process: Process::new(pid, launch),
            region: region.to_string(),
        }
    }

    /// `127.0.0.1:PORT`
    pub fn host_port(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("moto's URL ends in its port")
    }

    /// One plain HTTP/1.0 request to the side channel (directly, not through any proxy); returns the body.
    fn http(&self, method: &str, path: &str, body: &str) -> String {
        crate::process::http(self.host_port(), method, path, body)
    }

    /// Requests per KMS action since the last reset, by action name.
    pub fn stats(&self) -> Vec<(String, u64)> {
        self.counters("/_fidelity/stats")
    }

    /// Requests since the last reset by action and sender: `"Sign sdk"` (the AWS SDK for Rust) or `"Sign other"`
    /// (any other client, e.g. the bridge's caller-thread `Sign`).
    pub fn clients(&self) -> Vec<(String, u64)> {
        self.counters("/_fidelity/clients")
    }

    /// A counter table of the fidelity layer (`{"name": n, ...}`), sorted by name.
    fn counters(&self, path: &str) -> Vec<(String, u64)> {
        let v: serde_json::Value = serde_json::from_str(&self.http("GET", path, ""))
            .unwrap_or_else(|e| panic!("the fidelity layer's {path} is JSON: {e}"));
        let mut out: Vec<(String, u64)> = v
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Requests of one KMS action since the last reset.
    pub fn count(&self, action: &str) -> u64 {
        self.stats()
            .into_iter()
            .find(|(a, _)| a == action)
            .map_or(0, |(_, n)| n)
    }

    /// Requests of every KMS action since the last reset.
    pub fn total(&self) -> u64 {
        self.stats().iter().map(|(_, n)| n).sum()
    }

    /// Clears the counters and pending faults.
    pub fn reset(&self) {
        self.http("POST", "/_fidelity/reset", "");
    }

    /// Arms a fault of the fidelity layer for the next `count` requests of `action`: `mode` "throttle" | "500" |
    /// "delay" (by `delay_ms`).
    pub fn fault(&self, action: &str, mode: &str, count: u32, delay_ms: u64) {
        self.http(
            "POST",
            "/_fidelity/fault",
            &format!(
                r#"{{"action": "{action}", "mode": "{mode}", "count": {count}, "delay_ms": {delay_ms}}}"#
            ),
        );
    }

    /// Runs Python with boto3's KMS client bound to this server as `kms` (and `boto3`, `json` imported); returns
    /// stdout.
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
}

/// Two servers as two regions of one account (us-east-1 first, us-west-2) holding the same multi-Region ECC P-256
/// signing key behind `alias` (the second seeded through the fidelity layer). Returns the servers, the key id
/// (`mrk-…`) and the exported key, to seed a restarted server again.
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

impl std::ops::Deref for Moto {
    type Target = Process;

    fn deref(&self) -> &Process {
        &self.process
    }
}
