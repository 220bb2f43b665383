//! sonde: a distributed, eBPF/XDP-accelerated health checker.
//!
//! Modules, each owning one concern:
//! - [`ebpf`]: loading, attaching and reading the kernel programs.
//! - [`engine`]: firing probes and matching their answers.
//! - [`lab`]: test hosts (network namespaces and veth pairs) for tests and the demo.

pub mod api;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod ebpf;
pub mod engine;
pub mod health;
pub mod journal;
pub mod lab;
