//! moto's KMS with the project's fidelity layer, from the shared harness (`p11bridge_testkit::moto`): one server
//! per test binary on a free loopback port, killed when the test process exits.

// Each test binary uses some of these.
#[allow(unused_imports)]
pub use p11bridge_testkit::moto::{spawn, two_regions_with_mrk, Moto};
use std::sync::OnceLock;

/// The server of this test binary (started on first use). Also sets the AWS environment the bridge's SDK client
/// and boto3 read: dummy credentials, region, and no instance metadata lookups.
pub fn moto() -> &'static Moto {
    static M: OnceLock<Moto> = OnceLock::new();
    M.get_or_init(|| spawn(0, "us-east-1"))
}
