//! What the end-to-end tests (`tests/tests/common`), the conformance harness (`conformance/`) and the bench
//! (`bench/`) share to stand up the world the bridge runs in, so that each is written once:
//!
//! - [`softhsm`]: a private SoftHSM2 token made by `softhsm-setup.sh`, the bridge configuration over it (a unified
//!   slot plus the token's mirror) and the environment that points the bridge at both;
//! - [`bao`]: an OpenBao dev server, driven through the real `bao` command, and in front of it, when asked, the
//!   `aws` auth method OpenBao 2.x lacks (`tests/vault/aws_auth.py` checking logins against moto's STS);
//! - [`moto`]: moto's KMS behind the project's fidelity layer (`tests/kms/moto_fidelity.py`), with its side
//!   channel (requests per KMS action, injected faults, key export for replicas) and boto3 for making keys;
//! - [`tls`]: a private CA and the server and client certificates the TLS tests give those servers and the bridge;
//! - [`proxy`]: an HTTP `CONNECT` proxy (in-process threads) that counts its tunnels per target, can require
//!   credentials, refuse or hang;
//! - [`process`]: how those servers are started (on free loopback ports, killed when this process exits), and the
//!   plain HTTP request their side channels answer.

pub mod bao;
pub mod moto;
pub mod process;
pub mod proxy;
pub mod softhsm;
pub mod tls;

use std::path::{Path, PathBuf};

pub use process::{free_port, free_port_pair, Launch};

/// The root of the workspace (the directory holding `softhsm-setup.sh` and `tests/kms/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}
