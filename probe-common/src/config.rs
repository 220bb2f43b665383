//! The configuration userspace writes into [`crate::MAP_CONFIG`] before attaching.

/// What the kernel programs need to recognise our probes and their answers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeConfig {
    /// SipHash key for the TCP sequence-number cookie; random per daemon start so
    /// answers to an earlier run (or forged ones) fail validation.
    pub cookie_key: [u64; 2],
    /// First port of the reserved source-port range (inclusive).
    pub port_lo: u16,
    /// Last port of the reserved source-port range (inclusive).
    pub port_hi: u16,
    /// ICMP/ICMPv6 echo identifier carried by our echo requests.
    pub icmp_id: u16,
    /// Non-zero once userspace has written a valid config; until then every frame passes.
    pub enabled: u8,
    /// Who answers a SYN-ACK to a probe with its RST ([`reset`]): the host's TCP stack
    /// (the XDP program passes it on), the TC ingress program (rewrites it and sends it
    /// back out of the interface, `bpf_redirect`) or the XDP program (`XDP_TX`). Also
    /// keeps the struct free of uninitialised bytes (it was padding).
    pub reset: u8,
    /// Which ingress program classifies answers ([`ingress`]): XDP, or TC ingress on
    /// interfaces where XDP would cost more than it saves (veth).
    pub ingress: u8,
    /// Explicit padding: map values must have no uninitialised bytes.
    pub _pad: [u8; 7],
}

/// Values of [`ProbeConfig::ingress`].
pub mod ingress {
    /// `sonde_xdp` classifies and records answers; TC ingress only resets SYN-ACKs.
    pub const XDP: u8 = 0;
    /// `sonde_tc_ingress` classifies and records answers (the XDP program, if
    /// attached, passes everything).
    pub const TC: u8 = 1;
}

/// Values of [`ProbeConfig::reset`].
pub mod reset {
    /// The host's TCP stack resets SYN-ACKs (no socket on the probe port).
    pub const STACK: u8 = 0;
    /// The XDP program turns the SYN-ACK into its RST and sends it back (`XDP_TX`).
    pub const XDP: u8 = 1;
    /// The TC ingress program does (`bpf_redirect` to the interface's egress); IPv6
    /// SYN-ACKs still go to the stack.
    pub const TC: u8 = 2;
}

impl ProbeConfig {
    /// Whether `port` is in the reserved source-port range.
    #[inline(always)]
    #[must_use]
    pub fn owns_port(&self, port: u16) -> bool {
        port >= self.port_lo && port <= self.port_hi
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), only integer fields, explicit padding: every bit pattern is valid.
unsafe impl aya::Pod for ProbeConfig {}
