//! Errors of the kernel side, each naming what failed and what to do.

use aya::{maps::MapError, programs::ProgramError, EbpfError};
use thiserror::Error;

/// Why the kernel programs could not be loaded, attached or read.
#[derive(Debug, Error)]
pub enum KernelError {
    /// The binary was built without the eBPF object.
    #[error("this sonde binary was built without its eBPF object; run `cargo xtask build-ebpf` and rebuild")]
    NotEmbedded,
    /// Loading eBPF needs root (CAP_BPF and CAP_NET_ADMIN).
    #[error("loading eBPF needs root or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN; running as uid {uid} without them")]
    NotPrivileged {
        /// Effective uid we run as.
        uid: u32,
    },
    /// The kernel exposes no BTF.
    #[error("the kernel has no BTF (/sys/kernel/btf/vmlinux missing)")]
    NoBtf,
    /// The object file could not be parsed or its maps created.
    #[error("loading the eBPF object failed")]
    Object(#[source] EbpfError),
    /// A program or map the object must contain is missing.
    #[error("the eBPF object has no {kind} named {name}")]
    Missing {
        /// "program" or "map".
        kind: &'static str,
        /// The missing name.
        name: &'static str,
    },
    /// The verifier refused a program; the source carries the verifier log.
    #[error("the kernel refused program {program}")]
    Load {
        /// Program name.
        program: &'static str,
        /// Carries the verifier log.
        #[source]
        source: ProgramError,
    },
    /// Attaching to an interface failed.
    #[error("attaching {program} to {iface} failed")]
    Attach {
        /// Program name.
        program: &'static str,
        /// Interface name.
        iface: String,
        /// Underlying error.
        #[source]
        source: ProgramError,
    },
    /// A map operation failed.
    #[error("map {map}: operation failed")]
    Map {
        /// Map name.
        map: &'static str,
        /// Underlying error.
        #[source]
        source: MapError,
    },
    /// `BPF_PROG_TEST_RUN` failed.
    #[error("test run of {program} failed")]
    TestRun {
        /// Program name.
        program: &'static str,
        /// Underlying error.
        #[source]
        source: ProgramError,
    },
    /// Two settings contradict each other (e.g. resets from XDP without XDP).
    #[error("{what}")]
    Conflict {
        /// What contradicts what.
        what: String,
    },
    /// Adding the clsact qdisc failed.
    #[error("adding the clsact qdisc to {iface} failed: {reason}")]
    Qdisc {
        /// Interface name.
        iface: String,
        /// What the kernel said.
        reason: String,
    },
}
