//! Records that cross the kernel/userspace boundary.

/// Classification of an answer to one of our probes.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerClass {
    /// TCP SYN-ACK: port open.
    Open = 1,
    /// TCP RST: port closed.
    Closed = 2,
    /// ICMP/ICMPv6 echo reply.
    EchoReply = 3,
    /// ICMP/ICMPv6 error (unreachable, time exceeded) quoting one of our probes.
    Unreachable = 4,
    /// UDP datagram back to a probe port.
    UdpReply = 5,
}

impl AnswerClass {
    /// Decode the `class` byte of an [`AnswerRecord`].
    #[must_use]
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Open,
            2 => Self::Closed,
            3 => Self::EchoReply,
            4 => Self::Unreachable,
            5 => Self::UdpReply,
            _ => return None,
        })
    }

    /// Stable lower-case name.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
            Self::EchoReply => "echo_reply",
            Self::Unreachable => "unreachable",
            Self::UdpReply => "udp_reply",
        }
    }
}

/// Identity of one probe in flight, as seen from our side. The TC program stores the
/// send time under this key; the XDP program rebuilds the same key from the answer.
///
/// Addresses are 16 bytes; IPv4 uses the first four and leaves the rest zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StampKey {
    /// Our address (the probe's source).
    pub local: [u8; 16],
    /// The target's address (the probe's destination).
    pub remote: [u8; 16],
    /// TCP/UDP source port, or the ICMP echo identifier.
    pub local_port: u16,
    /// TCP/UDP destination port, or the ICMP echo sequence number.
    pub remote_port: u16,
    /// The probe's IP protocol ([`crate::proto`]).
    pub proto: u8,
    /// [`crate::family`] of the addresses.
    pub family: u8,
    /// Explicit padding: hash keys must have no uninitialised bytes.
    pub _pad: [u8; 2],
    /// TCP: the probe's initial sequence number (the cookie); otherwise 0.
    pub seq: u32,
}

impl StampKey {
    /// Which answer ring buffer (`0..EVENT_RINGS`) an answer to this probe goes to:
    /// the echo sequence number for ICMP, the source port's offset in the reserved
    /// range (`port_lo` up) otherwise, modulo [`crate::EVENT_RINGS`]. A sender that
    /// uses the ports `port_lo + i + k * n` (sequence numbers `i + k * n`), with `n`
    /// dividing `EVENT_RINGS`, gets all its answers in the rings `r` with
    /// `r % n == i`, and no other sender's.
    #[inline(always)]
    #[must_use]
    pub fn ring(&self, port_lo: u16) -> usize {
        let n = if self.proto == crate::proto::ICMP || self.proto == crate::proto::ICMPV6 {
            self.remote_port
        } else {
            self.local_port.wrapping_sub(port_lo)
        };
        usize::from(n) & (crate::EVENT_RINGS - 1)
    }
}

/// Flag bits of [`AnswerRecord::flags`].
pub mod flags {
    /// The answer carried a valid cookie (TCP, or a quoted TCP probe).
    pub const COOKIE_OK: u8 = 1;
    /// An egress stamp was found: `tx_ns` and `rtt_ns` are kernel-measured.
    pub const STAMPED: u8 = 2;
}

/// One classified answer, written by XDP into the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AnswerRecord {
    /// Kernel receive time (`bpf_ktime_get_ns`, `CLOCK_MONOTONIC`).
    pub rx_ns: u64,
    /// Kernel send time of the probe from the TC egress stamp; 0 when not stamped.
    pub tx_ns: u64,
    /// `rx_ns - tx_ns` when stamped; 0 otherwise.
    pub rtt_ns: u64,
    /// The probe this answers (addresses, ports or ICMP id/seq, protocol, cookie).
    pub key: StampKey,
    /// Who sent the answer: the target, or the router that sent an ICMP error.
    pub reporter: [u8; 16],
    /// The answer's own TCP sequence number (0 if not TCP).
    pub answer_seq: u32,
    /// [`AnswerClass`] as a byte.
    pub class: u8,
    /// ICMP type of the answer (echo reply or error); 0 for TCP/UDP answers.
    pub icmp_type: u8,
    /// ICMP code of the answer.
    pub icmp_code: u8,
    /// TCP flags of the answer (FIN=1 SYN=2 RST=4 PSH=8 ACK=16).
    pub tcp_flags: u8,
    /// Bits from [`flags`].
    pub flags: u8,
    /// IP TTL / hop limit of the answer as received.
    pub ttl: u8,
    /// Explicit padding.
    pub _pad: [u8; 2],
}

#[cfg(feature = "user")]
// SAFETY: repr(C), integer fields and explicit padding only.
unsafe impl aya::Pod for StampKey {}
#[cfg(feature = "user")]
// SAFETY: repr(C), integer fields and explicit padding only.
unsafe impl aya::Pod for AnswerRecord {}

#[cfg(test)]
mod tests {
    use super::{AnswerClass, AnswerRecord, StampKey};
    use core::mem::{align_of, size_of};

    #[test]
    fn layout_has_no_implicit_padding() {
        assert_eq!(size_of::<StampKey>(), 16 + 16 + 2 + 2 + 1 + 1 + 2 + 4);
        assert_eq!(size_of::<AnswerRecord>(), 24 + 44 + 16 + 4 + 8);
        assert_eq!(align_of::<AnswerRecord>(), 8);
    }

    #[test]
    fn class_roundtrip() {
        for v in 0..=255u8 {
            if let Some(c) = AnswerClass::from_u8(v) {
                assert_eq!(c as u8, v);
            }
        }
        assert_eq!(AnswerClass::from_u8(0), None);
    }

    /// Each of `n` senders (n dividing the ring count) stepping through its residue
    /// class of ports or echo sequence numbers, wrapping as the engine does, owns the
    /// rings `r % n == i` and meets no other sender's ring.
    #[test]
    fn a_senders_answers_go_to_its_own_rings() {
        use crate::{proto, EVENT_RINGS};
        let (lo, hi) = (40003u16, 40999u16);
        for n in [1u16, 2, 4, 8] {
            for i in 0..n {
                let mut port = lo + i;
                let mut seq = i.wrapping_sub(n * 3);
                for _ in 0..3000 {
                    for (p, local, remote) in [
                        (proto::TCP, port, 80),
                        (proto::UDP, port, 53),
                        (proto::ICMP, 7, seq),
                        (proto::ICMPV6, 7, seq),
                    ] {
                        let key = StampKey {
                            local_port: local,
                            remote_port: remote,
                            proto: p,
                            ..StampKey::default()
                        };
                        let r = key.ring(lo);
                        assert!(r < EVENT_RINGS);
                        assert_eq!(r % usize::from(n), usize::from(i), "n {n} i {i} {key:?}");
                    }
                    port = if port + n > hi { lo + i } else { port + n };
                    seq = seq.wrapping_add(n);
                }
            }
        }
    }
}
