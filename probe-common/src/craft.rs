//! Building probe packets (and, for tests, any frame the classifier must handle) into a
//! caller's buffer, with correct IPv4, TCP, UDP, ICMP and ICMPv6 checksums.
//!
//! No allocation: the engine builds probes straight into its send buffers.

use crate::{family, proto};

/// Optional Ethernet header (with an optional 802.1Q tag). Raw IP sockets omit it.
#[derive(Clone, Copy, Debug)]
pub struct Eth {
    /// Destination MAC.
    pub dst: [u8; 6],
    /// Source MAC.
    pub src: [u8; 6],
    /// 802.1Q VLAN id, if tagged.
    pub vlan: Option<u16>,
}

/// The IP layer of a packet to build.
#[derive(Clone, Copy, Debug)]
pub struct Ip<'a> {
    /// [`family::V4`] or [`family::V6`].
    pub family: u8,
    /// Source address (IPv4 in the first four bytes).
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// TTL / hop limit.
    pub ttl: u8,
    /// IPv4 identification (ignored for IPv6).
    pub id: u16,
    /// IPv4 options, a multiple of 4 bytes, at most 40 (ignored for IPv6).
    pub options: &'a [u8],
}

/// The transport layer of a packet to build.
#[derive(Clone, Copy, Debug)]
pub enum L4<'a> {
    /// A TCP segment with no payload.
    Tcp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
        /// Sequence number.
        seq: u32,
        /// Acknowledgement number.
        ack: u32,
        /// Flags byte (see [`crate::parse::tcp_flags`]).
        flags: u8,
        /// Receive window.
        window: u16,
        /// Options, a multiple of 4 bytes, at most 40.
        options: &'a [u8],
    },
    /// A UDP datagram.
    Udp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
        /// Payload.
        payload: &'a [u8],
    },
    /// An ICMP (IPv4) or ICMPv6 (IPv6) message: echo, or an error whose payload is the
    /// quoted packet.
    Icmp {
        /// Type.
        kind: u8,
        /// Code.
        code: u8,
        /// Identifier (echo) or the unused/MTU field (errors), high half.
        id: u16,
        /// Sequence (echo) or the low half of the rest-of-header field.
        seq: u16,
        /// Payload.
        payload: &'a [u8],
    },
}

fn sum16(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(u16::from_be_bytes([*last, 0]));
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The Internet checksum of `data` (RFC 1071).
#[must_use]
pub fn checksum(data: &[u8]) -> u16 {
    fold(sum16(0, data))
}

fn pseudo(ip: &Ip<'_>, pr: u8, len: usize) -> u32 {
    let alen = if ip.family == family::V4 { 4 } else { 16 };
    let mut acc = sum16(0, &ip.src[..alen]);
    acc = sum16(acc, &ip.dst[..alen]);
    acc + u32::from(pr) + len as u32
}

/// Length of the L4 part of `l4`.
fn l4_len(l4: &L4<'_>) -> usize {
    match l4 {
        L4::Tcp { options, .. } => 20 + options.len(),
        L4::Udp { payload, .. } => 8 + payload.len(),
        L4::Icmp { payload, .. } => 8 + payload.len(),
    }
}

/// Build a packet into `buf`. Returns its length, or `None` if `buf` is too small or a
/// length is impossible (options not a multiple of 4 or too long, packet over 65535).
#[must_use]
pub fn build(buf: &mut [u8], eth: Option<&Eth>, ip: &Ip<'_>, l4: &L4<'_>) -> Option<usize> {
    let mut off = 0;
    if let Some(e) = eth {
        let hdr = if e.vlan.is_some() { 18 } else { 14 };
        let b = buf.get_mut(..hdr)?;
        b[0..6].copy_from_slice(&e.dst);
        b[6..12].copy_from_slice(&e.src);
        let et: u16 = if ip.family == family::V4 {
            0x0800
        } else {
            0x86dd
        };
        if let Some(v) = e.vlan {
            b[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
            b[14..16].copy_from_slice(&(v & 0x0fff).to_be_bytes());
            b[16..18].copy_from_slice(&et.to_be_bytes());
        } else {
            b[12..14].copy_from_slice(&et.to_be_bytes());
        }
        off = hdr;
    }
    let tlen = l4_len(l4);
    let pr = match (l4, ip.family) {
        (L4::Tcp { .. }, _) => proto::TCP,
        (L4::Udp { .. }, _) => proto::UDP,
        (L4::Icmp { .. }, family::V4) => proto::ICMP,
        (L4::Icmp { .. }, _) => proto::ICMPV6,
    };
    let l3_len = if ip.family == family::V4 {
        if !ip.options.len().is_multiple_of(4) || ip.options.len() > 40 {
            return None;
        }
        let hl = 20 + ip.options.len();
        let total = u16::try_from(hl + tlen).ok()?;
        let b = buf.get_mut(off..off + hl)?;
        b[0] = 0x40 | (hl / 4) as u8;
        b[1] = 0;
        b[2..4].copy_from_slice(&total.to_be_bytes());
        b[4..6].copy_from_slice(&ip.id.to_be_bytes());
        b[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
        b[8] = ip.ttl;
        b[9] = pr;
        b[10..12].copy_from_slice(&[0, 0]);
        b[12..16].copy_from_slice(&ip.src[..4]);
        b[16..20].copy_from_slice(&ip.dst[..4]);
        b[20..hl].copy_from_slice(ip.options);
        let c = checksum(b);
        b[10..12].copy_from_slice(&c.to_be_bytes());
        hl
    } else {
        let plen = u16::try_from(tlen).ok()?;
        let b = buf.get_mut(off..off + 40)?;
        b[0..4].copy_from_slice(&0x6000_0000u32.to_be_bytes());
        b[4..6].copy_from_slice(&plen.to_be_bytes());
        b[6] = pr;
        b[7] = ip.ttl;
        b[8..24].copy_from_slice(&ip.src);
        b[24..40].copy_from_slice(&ip.dst);
        40
    };
    off += l3_len;
    let t = buf.get_mut(off..off + tlen)?;
    let csum_at = match *l4 {
        L4::Tcp {
            sport,
            dport,
            seq,
            ack,
            flags,
            window,
            options,
        } => {
            if !options.len().is_multiple_of(4) || options.len() > 40 {
                return None;
            }
            t[0..2].copy_from_slice(&sport.to_be_bytes());
            t[2..4].copy_from_slice(&dport.to_be_bytes());
            t[4..8].copy_from_slice(&seq.to_be_bytes());
            t[8..12].copy_from_slice(&ack.to_be_bytes());
            t[12] = (((20 + options.len()) / 4) << 4) as u8;
            t[13] = flags;
            t[14..16].copy_from_slice(&window.to_be_bytes());
            t[16..20].copy_from_slice(&[0; 4]);
            t[20..].copy_from_slice(options);
            16
        }
        L4::Udp {
            sport,
            dport,
            payload,
        } => {
            t[0..2].copy_from_slice(&sport.to_be_bytes());
            t[2..4].copy_from_slice(&dport.to_be_bytes());
            t[4..6].copy_from_slice(&(tlen as u16).to_be_bytes());
            t[6..8].copy_from_slice(&[0, 0]);
            t[8..].copy_from_slice(payload);
            6
        }
        L4::Icmp {
            kind,
            code,
            id,
            seq,
            payload,
        } => {
            t[0] = kind;
            t[1] = code;
            t[2..4].copy_from_slice(&[0, 0]);
            t[4..6].copy_from_slice(&id.to_be_bytes());
            t[6..8].copy_from_slice(&seq.to_be_bytes());
            t[8..].copy_from_slice(payload);
            2
        }
    };
    let c = if pr == proto::ICMP {
        checksum(t)
    } else {
        let c = fold(sum16(pseudo(ip, pr, tlen), t));
        // UDP sends an all-ones checksum for a computed zero (zero means "none").
        if pr == proto::UDP && c == 0 {
            0xffff
        } else {
            c
        }
    };
    t[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
    Some(off + tlen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut b = [0; 16];
        b[..4].copy_from_slice(&a);
        b
    }

    #[test]
    fn ipv4_header_checksum_verifies() {
        let mut buf = [0u8; 128];
        let ip = Ip {
            family: family::V4,
            src: v4([198, 18, 0, 1]),
            dst: v4([198, 18, 0, 2]),
            ttl: 64,
            id: 7,
            options: &[1, 1, 1, 0],
        };
        let l4 = L4::Tcp {
            sport: 40000,
            dport: 80,
            seq: 1,
            ack: 0,
            flags: 2,
            window: 1024,
            options: &[],
        };
        let n = build(&mut buf, None, &ip, &l4).unwrap();
        assert_eq!(n, 24 + 20);
        assert_eq!(
            checksum(&buf[..24]),
            0,
            "header checksum must verify to zero"
        );
        // TCP checksum verifies with the pseudo-header.
        let acc = pseudo(&ip, proto::TCP, 20);
        assert_eq!(fold(sum16(acc, &buf[24..n])), 0);
    }

    #[test]
    fn icmpv6_checksum_uses_pseudo_header() {
        let mut buf = [0u8; 128];
        let mut s = [0u8; 16];
        s[0] = 0x20;
        s[15] = 1;
        let mut d = s;
        d[15] = 2;
        let ip = Ip {
            family: family::V6,
            src: s,
            dst: d,
            ttl: 64,
            id: 0,
            options: &[],
        };
        let l4 = L4::Icmp {
            kind: 128,
            code: 0,
            id: 9,
            seq: 1,
            payload: b"abcd",
        };
        let n = build(&mut buf, None, &ip, &l4).unwrap();
        assert_eq!(n, 40 + 12);
        assert_eq!(fold(sum16(pseudo(&ip, proto::ICMPV6, 12), &buf[40..n])), 0);
    }

    #[test]
    fn refuses_short_buffers_and_bad_options() {
        let ip = Ip {
            family: family::V4,
            src: v4([1, 2, 3, 4]),
            dst: v4([5, 6, 7, 8]),
            ttl: 1,
            id: 0,
            options: &[],
        };
        let l4 = L4::Udp {
            sport: 1,
            dport: 2,
            payload: b"x",
        };
        assert_eq!(build(&mut [0u8; 28], None, &ip, &l4), None);
        assert_eq!(build(&mut [0u8; 29], None, &ip, &l4), Some(29));
        let bad = Ip {
            options: &[1, 2, 3],
            ..ip
        };
        assert_eq!(build(&mut [0u8; 64], None, &bad, &l4), None);
    }
}
