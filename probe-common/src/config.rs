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
    /// Non-zero: the XDP program answers a SYN-ACK to a probe with the RST itself and
    /// sends it back out of the interface (`XDP_TX`, see [`crate::reset`]); zero: it
    /// passes the SYN-ACK to the host's TCP stack, which resets it (the default; it
    /// works on every interface). Set by userspace when XDP_TX is known to deliver,
    /// cleared when the interface drops what XDP sends (see `sonde::ebpf::ResetGuard`).
    /// Also keeps the struct free of uninitialised bytes (it was padding).
    pub xdp_reset: u8,
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
