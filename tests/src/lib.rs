//! Shared helpers of sonde's privileged integration tests (in `tests/tests/`).
//!
//! The lab harness itself (namespaces, veth pairs, process guards) lives in
//! `sonde::lab`, because the `sonde demo` command uses it too.

pub mod browser;
pub mod checks;
pub mod cluster_lab;
pub mod daemon;
pub mod etcd;
pub mod etcd_ns;
pub mod frames;
pub mod hostile;
pub mod servers;
