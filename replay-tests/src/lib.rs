//! Test harness shared by the end-to-end tests in `tests/`: real nats-server processes
//! that a test starts on free 127.0.0.1 ports with temporary stores and stops by their own
//! PIDs (`NatsServer`, `NatsCluster`, `find_binary` …).
//!
//! The launcher itself lives in `gateways::common::natsd`, because `vouchsafe bench` starts its
//! own servers the same way; it is re-exported here unchanged so the tests keep their
//! imports.

pub use gateways::common::natsd::*;
