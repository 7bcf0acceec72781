//! The p11bridge conformance harness: the spec matrix ([`cases`], [`runner`]) run against any PKCS#11 module, the
//! fixtures shared by the binaries ([`env`]), and the TCP fault-injection proxy ([`proxy`]).

pub mod cases;
pub mod env;
pub mod module;
pub mod proxy;
pub mod runner;
