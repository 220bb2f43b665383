//! Types and logic shared by sonde's kernel programs (`probe-ebpf`) and userspace.
//!
//! Everything here is `#![no_std]` and allocation-free so the same code runs inside the
//! XDP/TC programs and in host unit tests: the packet classifier ([`parse`]), the TCP
//! cookie ([`cookie`]), the probe packet builder ([`craft`]) and the `#[repr(C)]`
//! records that cross the kernel/user boundary ([`record`], [`config`], [`counters`]).
#![no_std]

pub mod config;
pub mod cookie;
pub mod counters;
pub mod craft;
pub mod parse;
pub mod record;
pub mod reset;
pub mod stamp;

/// Name of the XDP ingress program in the object file.
pub const PROG_XDP: &str = "sonde_xdp";
/// Name of the pass-everything XDP program for the far end of a veth pair (labs): a
/// veth delivers what the other end's XDP program sends back (`XDP_TX`) only to a
/// peer that runs an XDP program of its own.
pub const PROG_XDP_PEER: &str = "sonde_xdp_peer";
/// Name of the TC ingress program (resets SYN-ACKs with `config::reset::TC`).
pub const PROG_TC_INGRESS: &str = "sonde_tc_ingress";
/// Name of the TC egress program in the object file.
pub const PROG_TC_EGRESS: &str = "sonde_tc_egress";
/// Array map (one [`config::ProbeConfig`]) written by userspace at load time.
pub const MAP_CONFIG: &str = "SONDE_CONFIG";
/// Ring buffers of [`record::AnswerRecord`]s, kernel to userspace: an answer goes to
/// the ring [`record::StampKey::ring`] names, so each stateless sender reads the
/// answers to its own probes and nothing else (see [`EVENT_RINGS`]).
pub const MAP_EVENTS: [&str; EVENT_RINGS] = [
    "SONDE_EVENTS0",
    "SONDE_EVENTS1",
    "SONDE_EVENTS2",
    "SONDE_EVENTS3",
    "SONDE_EVENTS4",
    "SONDE_EVENTS5",
    "SONDE_EVENTS6",
    "SONDE_EVENTS7",
];
/// Number of answer ring buffers (a power of two). Probes are spread over them by
/// source port (TCP, UDP) or echo sequence number (ICMP) modulo this number; a
/// sender that uses one residue class modulo a divisor of it owns whole rings.
pub const EVENT_RINGS: usize = 8;
/// Array of egress stamps: send times in the slots [`record::StampKey`]s hash to ([`stamp`]).
pub const MAP_STAMPS: &str = "SONDE_STAMPS";
/// Per-CPU array of XDP counters, indexed by [`counters::XdpReason`].
pub const MAP_XDP_COUNTERS: &str = "SONDE_XDP_COUNTERS";
/// Per-CPU array of TC egress counters, indexed by [`counters::TcReason`].
pub const MAP_TC_COUNTERS: &str = "SONDE_TC_COUNTERS";

/// Size of each ring buffer in bytes (power of two, multiple of the page size).
pub const EVENTS_BYTES: u32 = 1 << 20;
/// The XDP program submits records without waking the reader (`BPF_RB_NO_WAKEUP`)
/// until this many bytes wait in the ring buffer, then forces a wake-up. A wake-up
/// per record (the kernel's default whenever the reader has caught up) costs an
/// irq_work and a context switch per answer: 7 % of the machine at 125k answers/s.
/// Readers therefore poll at least every [`EVENTS_POLL_MS`].
pub const EVENTS_WAKEUP_BYTES: u64 = (EVENTS_BYTES / 16) as u64;
/// The longest a ring-buffer reader sleeps before draining: records below
/// [`EVENTS_WAKEUP_BYTES`] wake nobody, so they wait at most this long (their kernel
/// timestamps are taken on arrival and do not include it).
pub const EVENTS_POLL_MS: u32 = 1;

/// IP protocol numbers used by the parser.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
    pub const IPV6_FRAGMENT: u8 = 44;
}

/// Address families as stored in records (`AF_INET`-like values of our own).
pub mod family {
    pub const V4: u8 = 4;
    pub const V6: u8 = 6;
}
