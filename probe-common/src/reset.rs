//! The RST that answers a SYN-ACK to one of our probes, built by the XDP program and
//! sent straight back out of the interface (`XDP_TX`) when [`ProbeConfig::reset`] is
//! [`reset::XDP`](crate::config::reset::XDP), instead of passing the SYN-ACK up to the
//! host's TCP stack to be reset there. (The TC ingress program, `reset::TC`, rewrites
//! the SYN-ACK's skb into the same RST in place, with the kernel's checksum helpers.)
//!
//! The reset is what Linux's `tcp_v4_send_reset` sends for a segment with ACK set
//! (RFC 9293 3.10.7.1): sequence number = the SYN-ACK's acknowledgement number (our
//! probe's sequence number + 1), no ACK flag, window 0, no options. Only the IP and
//! TCP headers are built here, into a fixed buffer with constant-length loops (what
//! the verifier can follow); the program keeps the frame's Ethernet header (and VLAN
//! tags) with the two MAC addresses swapped.
//!
//! [`ProbeConfig::reset`]: crate::config::ProbeConfig::reset

use crate::{family, parse::tcp_flags, proto, record::StampKey};

/// Bytes of an IPv4 reset: IP header (20) and TCP header (20).
pub const RESET_V4_LEN: usize = 40;
/// Bytes of an IPv6 reset: IP header (40) and TCP header (20).
pub const RESET_V6_LEN: usize = 60;
/// Size of the buffer [`reset_headers`] writes into.
pub const RESET_BUF: usize = 64;
/// TTL / hop limit of a reset.
pub const RESET_TTL: u8 = 64;

#[inline(always)]
fn put16(b: &mut [u8; RESET_BUF], at: usize, v: u16) {
    let v = v.to_be_bytes();
    b[at] = v[0];
    b[at + 1] = v[1];
}

#[inline(always)]
fn put32(b: &mut [u8; RESET_BUF], at: usize, v: u32) {
    let v = v.to_be_bytes();
    b[at] = v[0];
    b[at + 1] = v[1];
    b[at + 2] = v[2];
    b[at + 3] = v[3];
}

/// Sum of the big-endian 16-bit words of `b[from..from + 2 * words]`.
#[inline(always)]
fn sum(b: &[u8; RESET_BUF], from: usize, words: usize, mut acc: u32) -> u32 {
    let mut i = 0;
    while i < words {
        let at = from + 2 * i;
        acc += u32::from(u16::from_be_bytes([b[at], b[at + 1]]));
        i += 1;
    }
    acc
}

#[inline(always)]
fn fold(mut acc: u32) -> u16 {
    // At most 60 bytes were summed: two folds always suffice.
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    !(acc as u16)
}

/// The reset's TCP header for the probe `key`: from our port to the target's,
/// sequence number = the SYN-ACK's acknowledgement (the probe's + 1), RST alone, window
/// 0, no options; its checksum field left 0. The TC ingress program writes it over the
/// SYN-ACK's header; [`reset_headers`] puts it after the IP header it builds.
#[inline(always)]
#[must_use]
pub fn reset_tcp_header(key: &StampKey) -> [u8; 20] {
    let mut h = [0u8; 20];
    let (sp, dp, seq) = (
        key.local_port.to_be_bytes(),
        key.remote_port.to_be_bytes(),
        key.seq.wrapping_add(1).to_be_bytes(),
    );
    h[0] = sp[0];
    h[1] = sp[1];
    h[2] = dp[0];
    h[3] = dp[1];
    h[4] = seq[0];
    h[5] = seq[1];
    h[6] = seq[2];
    h[7] = seq[3];
    h[12] = 5 << 4;
    h[13] = tcp_flags::RST;
    h
}

/// The first 12 bytes of an Ethernet frame (destination, source MAC) with the two
/// addresses swapped: the reset goes back to where the SYN-ACK came from.
#[inline(always)]
#[must_use]
pub fn swapped_macs(macs: [u8; 12]) -> [u8; 12] {
    let mut m = [0u8; 12];
    let mut i = 0;
    while i < 6 {
        m[i] = macs[i + 6];
        m[i + 6] = macs[i];
        i += 1;
    }
    m
}

/// Write [`reset_tcp_header`] at `at`, field by field: a copy of the array here makes
/// the compiler spill a register the verifier finds unset (test
/// `tcp_header_is_the_one_in_the_headers` keeps the two the same).
#[inline(always)]
fn tcp(b: &mut [u8; RESET_BUF], at: usize, key: &StampKey) {
    put16(b, at, key.local_port);
    put16(b, at + 2, key.remote_port);
    put32(b, at + 4, key.seq.wrapping_add(1));
    put32(b, at + 8, 0);
    b[at + 12] = 5 << 4;
    b[at + 13] = tcp_flags::RST;
    put32(b, at + 14, 0); // window, checksum
    put16(b, at + 18, 0); // urgent pointer
}

/// Build the IP and TCP headers of the reset for the probe `key` (a TCP probe: its
/// addresses, ports and sequence number) into `b`, from our address and port to the
/// target's. Returns how many bytes of `b` it takes ([`RESET_V4_LEN`] or
/// [`RESET_V6_LEN`]), or `None` for a key that is not a TCP probe.
#[inline(always)]
pub fn reset_headers(key: &StampKey, b: &mut [u8; RESET_BUF]) -> Option<usize> {
    if key.proto != proto::TCP {
        return None;
    }
    if key.family == family::V4 {
        b[0] = 0x45;
        b[1] = 0;
        put16(b, 2, RESET_V4_LEN as u16);
        put16(b, 4, 0);
        put16(b, 6, 0x4000); // DF
        b[8] = RESET_TTL;
        b[9] = proto::TCP;
        put16(b, 10, 0);
        let mut i = 0;
        while i < 4 {
            b[12 + i] = key.local[i];
            b[16 + i] = key.remote[i];
            i += 1;
        }
        let c = fold(sum(b, 0, 10, 0));
        put16(b, 10, c);
        tcp(b, 20, key);
        // Pseudo header: the two addresses, protocol and TCP length.
        let acc = sum(b, 12, 4, u32::from(proto::TCP) + 20);
        let c = fold(sum(b, 20, 10, acc));
        put16(b, 36, c);
        Some(RESET_V4_LEN)
    } else if key.family == family::V6 {
        put32(b, 0, 0x6000_0000);
        put16(b, 4, 20);
        b[6] = proto::TCP;
        b[7] = RESET_TTL;
        let mut i = 0;
        while i < 16 {
            b[8 + i] = key.local[i];
            b[24 + i] = key.remote[i];
            i += 1;
        }
        tcp(b, 40, key);
        let acc = sum(b, 8, 16, u32::from(proto::TCP) + 20);
        let c = fold(sum(b, 40, 10, acc));
        put16(b, 56, c);
        Some(RESET_V6_LEN)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::craft::{build, Ip, L4};

    fn key(fam: u8, local: [u8; 16], remote: [u8; 16]) -> StampKey {
        StampKey {
            local,
            remote,
            local_port: 40_123,
            remote_port: 443,
            proto: proto::TCP,
            family: fam,
            _pad: [0; 2],
            seq: 0xffff_fffe,
        }
    }

    /// The reset is byte for byte what the probe builder makes of the same fields
    /// (whose checksums are tested against the kernel's elsewhere).
    fn same_as_built(k: &StampKey) {
        let mut b = [0xaa; RESET_BUF];
        let n = reset_headers(k, &mut b).expect("tcp key");
        let mut want = [0u8; RESET_BUF];
        let m = build(
            &mut want,
            None,
            &Ip {
                family: k.family,
                src: k.local,
                dst: k.remote,
                ttl: RESET_TTL,
                id: 0,
                options: &[],
            },
            &L4::Tcp {
                sport: k.local_port,
                dport: k.remote_port,
                seq: k.seq.wrapping_add(1),
                ack: 0,
                flags: tcp_flags::RST,
                window: 0,
                options: &[],
            },
        )
        .expect("built");
        assert_eq!(n, m);
        assert_eq!(b[..n], want[..m]);
    }

    #[test]
    fn ipv4_reset_matches_the_builder() {
        let mut l = [0; 16];
        let mut r = [0; 16];
        l[..4].copy_from_slice(&[198, 18, 0, 1]);
        r[..4].copy_from_slice(&[198, 19, 255, 254]);
        same_as_built(&key(family::V4, l, r));
        // The sequence number wraps: seq + 1 of 0xffff_fffe is 0xffff_ffff, of
        // 0xffff_ffff is 0.
        let mut k = key(family::V4, l, r);
        k.seq = u32::MAX;
        same_as_built(&k);
    }

    #[test]
    fn ipv6_reset_matches_the_builder() {
        let l = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let r = [
            0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff,
        ];
        same_as_built(&key(family::V6, l, r));
    }

    #[test]
    fn tcp_header_is_the_one_in_the_headers() {
        let mut l = [0; 16];
        l[..4].copy_from_slice(&[198, 18, 0, 1]);
        let k = key(family::V4, l, [9; 16]);
        let mut b = [0; RESET_BUF];
        reset_headers(&k, &mut b).expect("tcp key");
        (b[36], b[37]) = (0, 0);
        assert_eq!(b[20..40], reset_tcp_header(&k));
    }

    #[test]
    fn macs_swap_places() {
        let m = [1, 2, 3, 4, 5, 6, 11, 12, 13, 14, 15, 16];
        assert_eq!(swapped_macs(m), [11, 12, 13, 14, 15, 16, 1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn only_tcp_keys_get_a_reset() {
        let mut k = key(family::V4, [1; 16], [2; 16]);
        k.proto = proto::UDP;
        assert_eq!(reset_headers(&k, &mut [0; RESET_BUF]), None);
        k.proto = proto::TCP;
        k.family = 0;
        assert_eq!(reset_headers(&k, &mut [0; RESET_BUF]), None);
    }
}
