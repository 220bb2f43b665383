//! Firing probes and matching their answers.
//!
//! At this stage: stateless TCP SYN and ICMP echo probes sent through raw sockets
//! ([`raw`]), answered through the kernel programs' ring buffers and matched to the probe that caused
//! them ([`round`]), from a reserved source-port range ([`ports`]).

pub mod answers;
pub mod budget;
pub mod dns;
pub mod http;
pub mod id_index;
pub mod ports;
pub mod raw;
pub mod result;
pub mod round;
pub mod schedule;
pub mod sources;
pub mod spec;
pub mod stateless;
pub mod tls;
pub mod uring;

pub use answers::{AnswerSource, PacketSource};
pub use ports::PortRange;
pub use round::{Clock, Outcome, ProbeKind, ProbeResult, Round};
