//! A real OpenBao dev server for the tests, from the shared harness (`p11bridge_testkit::bao`): on a free
//! loopback port, killed when the test process exits, configured through the real `bao` command.

// Each test binary uses some of these.
#[allow(unused_imports)]
pub use p11bridge_testkit::bao::{spawn, AwsAuthFront, Bao, ROOT_TOKEN};
#[allow(unused_imports)]
pub use p11bridge_testkit::free_port;
use std::sync::OnceLock;

/// The server of this test binary (started on first use).
pub fn bao() -> &'static Bao {
    static BAO: OnceLock<Bao> = OnceLock::new();
    BAO.get_or_init(|| spawn(0))
}
