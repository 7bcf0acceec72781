//! The built module's C ABI, called directly: the conformance library's loader (`conformance/src/module.rs`) with
//! this test binary's module path. Shared by the tests that must see exact `CK_RV`s and raw pointers.
#![allow(dead_code, unused_imports)]

pub use p11bridge_conformance::call;
pub use p11bridge_conformance::module::{attr, mech, rv_name, Bridge, INTERFACE_NAME};

/// The module, loaded once per process (never unloaded).
pub fn bridge() -> &'static Bridge {
    p11bridge_conformance::module::load(&crate::common::bridge_so())
}
