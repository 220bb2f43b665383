//! Per-reason counters (katran's habit): every frame the XDP program sees ends in
//! exactly one [`XdpReason`], and every packet the TC program sees in exactly one
//! [`TcReason`]. Auxiliary counters ([`XdpReason::NoStamp`]) come after the exclusive
//! ones and may be bumped in addition.

macro_rules! reasons {
    ($(#[$m:meta])* $name:ident { exclusive: [$($(#[$vm:meta])* $v:ident = $s:literal,)*] aux: [$($(#[$am:meta])* $a:ident = $as:literal,)*] }) => {
        $(#[$m])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vm])* $v,)*
            $($(#[$am])* $a,)*
        }

        impl $name {
            /// Every reason, in counter-index order.
            pub const ALL: &'static [$name] = &[$($name::$v,)* $($name::$a,)*];
            /// Number of counters (the map's size).
            pub const COUNT: u32 = Self::ALL.len() as u32;
            /// Counters `0..EXCLUSIVE` partition the frames: each frame bumps exactly one.
            pub const EXCLUSIVE: u32 = [$($name::$v,)*].len() as u32;

            /// Stable snake_case name, used for metric labels.
            #[must_use]
            pub const fn name(self) -> &'static str {
                match self {
                    $($name::$v => $s,)*
                    $($name::$a => $as,)*
                }
            }

            /// The reason with counter index `i`.
            #[must_use]
            pub fn from_index(i: u32) -> Option<Self> {
                Self::ALL.get(i as usize).copied()
            }
        }
    };
}

reasons! {
    /// Why the answer classifier (the XDP program, or TC ingress with `ingress::TC`)
    /// ended as it did. Indexes the XDP counter map.
    XdpReason {
        exclusive: [
            /// No config written yet: pass everything.
            Disabled = "disabled",
            /// Shorter than an Ethernet header, or a truncated VLAN tag.
            MalformedEth = "malformed_eth",
            /// Not IPv4 or IPv6 (ARP, LLDP, ...).
            NotIp = "not_ip",
            /// Truncated IPv4 header, version mismatch, IHL < 5, IHL or total length past the frame.
            MalformedIpv4 = "malformed_ipv4",
            /// Truncated IPv6 header, version mismatch, payload length past the frame.
            MalformedIpv6 = "malformed_ipv6",
            /// IPv4 fragment or IPv6 fragment header: never an answer to our probes.
            Fragment = "fragment",
            /// Not TCP, UDP, ICMP or ICMPv6 (or behind IPv6 extension headers).
            OtherL4 = "other_l4",
            /// Truncated TCP/UDP/ICMP header, TCP data offset < 5 or past the frame,
            /// truncated packet quoted in an ICMP error.
            MalformedL4 = "malformed_l4",
            /// Well-formed but not addressed to a probe port or our ICMP identifier.
            NotOurs = "not_ours",
            /// TCP to a probe port that is neither a SYN-ACK nor an RST (passed).
            OtherTcp = "other_tcp",
            /// Looks like an answer but does not acknowledge our cookie: spoofed or stale. Dropped.
            BadCookie = "bad_cookie",
            /// Valid answer, but the ring buffer was full: counted and dropped.
            RingFull = "ring_full",
            /// SYN-ACK to one of our probes: port open. Recorded and dropped.
            AnswerOpen = "answer_open",
            /// RST to one of our probes: port closed. Recorded and dropped.
            AnswerClosed = "answer_closed",
            /// ICMP/ICMPv6 echo reply with our identifier. Recorded and dropped.
            AnswerEcho = "answer_echo",
            /// ICMP error quoting one of our probes. Recorded and dropped.
            AnswerUnreachable = "answer_unreachable",
            /// UDP datagram to a probe port. Recorded and dropped.
            AnswerUdp = "answer_udp",
            /// TC ingress classifies (`ingress::TC`) and the frame's headers were not
            /// all in the socket buffer's linear part: passed to the stack unclassified.
            NotLinear = "not_linear",
        ]
        aux: [
            /// An answer was recorded without an egress stamp (evicted, or sent before attach).
            NoStamp = "no_stamp",
            /// A SYN-ACK to a probe was turned into its RST and sent back out, by the
            /// XDP program (`XDP_TX`) or the TC ingress program (`bpf_redirect`), as
            /// `ProbeConfig::reset` says. Counted here for both.
            ResetSent = "reset_sent",
            /// The RST could not be built in place: the SYN-ACK went to the host's TCP
            /// stack to be reset there (or, if the frame was already changed, was
            /// dropped and the target sends it again).
            ResetFailed = "reset_failed",
        ]
    }
}

reasons! {
    /// Why the TC egress program ended as it did. Indexes the TC counter map.
    TcReason {
        exclusive: [
            /// No config written yet.
            Disabled = "disabled",
            /// Could not parse the outgoing packet far enough.
            Malformed = "malformed",
            /// Not one of our probes.
            NotOurs = "not_ours",
            /// Stamped a TCP SYN probe.
            StampedSyn = "stamped_syn",
            /// Stamped an ICMP/ICMPv6 echo request probe.
            StampedEcho = "stamped_echo",
            /// Stamped a UDP probe.
            StampedUdp = "stamped_udp",
            /// The stamp array had no slot for the key (cannot happen with an index below
            /// its size; kept so a broken map is counted, not silent).
            StampFailed = "stamp_failed",
        ]
        aux: []
    }
}

#[cfg(test)]
mod tests {
    use super::{TcReason, XdpReason};

    #[test]
    fn indexes_are_dense_and_named() {
        for (i, r) in XdpReason::ALL.iter().enumerate() {
            assert_eq!(*r as u32, i as u32);
            assert_eq!(XdpReason::from_index(i as u32), Some(*r));
            assert!(!r.name().is_empty());
        }
        assert_eq!(XdpReason::EXCLUSIVE, XdpReason::NoStamp as u32);
        assert_eq!(TcReason::EXCLUSIVE, TcReason::COUNT);
        assert_eq!(XdpReason::from_index(XdpReason::COUNT), None);
    }
}
