//! PROXY protocol headers (HAProxy's "The PROXY protocol", versions 1 and 2) for a TCP
//! connection, sent before the HTTP request so that a backend behind a PROXY-aware
//! listener accepts the check.
//!
//! Both addresses IPv4 (an IPv4-mapped IPv6 address `::ffff:a.b.c.d` counts as IPv4):
//! `TCP4` / family `0x11`. Otherwise `TCP6` / family `0x21`, with an IPv4 address
//! written in its IPv4-mapped IPv6 form.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::engine::spec::ProxyProtocol;

/// The 12-byte signature opening a v2 header: `\r\n\r\n\0\r\nQUIT\n`.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// v2 version (2, high nibble) and command PROXY (1, low nibble).
pub const V2_PROXY: u8 = 0x21;
/// v2 version (2) and command LOCAL (0): a connection of the proxy's own, no addresses.
pub const V2_LOCAL: u8 = 0x20;
/// v2 address family AF_INET (1, high nibble), transport STREAM (1, low nibble).
pub const V2_TCP4: u8 = 0x11;
/// v2 address family AF_INET6 (2), transport STREAM (1).
pub const V2_TCP6: u8 = 0x21;

/// Longest v1 header (`PROXY UNKNOWN ...` included), from the spec: 107 bytes.
pub const V1_MAX_LEN: usize = 107;

/// The addresses of a connection, both in the same family.
enum Pair {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
}

fn as_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(a) => a.to_ipv4_mapped(),
    }
}

fn as_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

fn pair(src: SocketAddr, dst: SocketAddr) -> Pair {
    match (as_v4(src.ip()), as_v4(dst.ip())) {
        (Some(s), Some(d)) => Pair::V4(s, d),
        _ => Pair::V6(as_v6(src.ip()), as_v6(dst.ip())),
    }
}

/// Appends the header of `version` for a TCP connection from `src` to `dst` (any mix
/// of IPv4 and IPv6 can be expressed, so this cannot fail).
pub fn encode(version: ProxyProtocol, src: SocketAddr, dst: SocketAddr, out: &mut Vec<u8>) {
    match version {
        ProxyProtocol::V1 => encode_v1(src, dst, out),
        ProxyProtocol::V2 => encode_v2(src, dst, out),
    }
}

/// Appends a v1 (text) header: `PROXY TCP4 <src> <dst> <sport> <dport>\r\n` (or `TCP6`).
pub fn encode_v1(src: SocketAddr, dst: SocketAddr, out: &mut Vec<u8>) {
    let line = match pair(src, dst) {
        Pair::V4(s, d) => format!("PROXY TCP4 {s} {d} {} {}\r\n", src.port(), dst.port()),
        Pair::V6(s, d) => format!("PROXY TCP6 {s} {d} {} {}\r\n", src.port(), dst.port()),
    };
    out.extend_from_slice(line.as_bytes());
}

/// Appends a v2 (binary) header with command PROXY: signature, `0x21`, family `0x11`
/// (IPv4) or `0x21` (IPv6), the address block length (12 or 36, big endian), then the
/// source and destination addresses and ports in network byte order.
pub fn encode_v2(src: SocketAddr, dst: SocketAddr, out: &mut Vec<u8>) {
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(V2_PROXY);
    match pair(src, dst) {
        Pair::V4(s, d) => {
            out.push(V2_TCP4);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        Pair::V6(s, d) => {
            out.push(V2_TCP6);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
}

/// Appends a v2 header with command LOCAL (family UNSPEC, no addresses): a connection
/// established by the proxy itself, as HAProxy's own health checks may send.
pub fn encode_v2_local(out: &mut Vec<u8>) {
    out.extend_from_slice(&V2_SIGNATURE);
    out.extend_from_slice(&[V2_LOCAL, 0x00, 0x00, 0x00]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_ipv4_spec_example() {
        let mut out = vec![];
        encode_v1(sa("192.168.0.1:56324"), sa("192.168.0.11:443"), &mut out);
        assert_eq!(out, b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n");
    }

    #[test]
    fn v1_worst_case_lengths_from_spec() {
        let mut out = vec![];
        encode_v1(
            sa("255.255.255.255:65535"),
            sa("255.255.255.255:65535"),
            &mut out,
        );
        assert_eq!(out.len(), 56, "spec: worst case TCP4 is 56 chars");
        out.clear();
        let max6 = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535";
        encode_v1(sa(max6), sa(max6), &mut out);
        assert_eq!(out.len(), 104, "spec: worst case TCP6 is 104 chars");
        assert!(out.len() <= V1_MAX_LEN);
        assert!(out.starts_with(b"PROXY TCP6 ffff:ffff:"));
    }

    #[test]
    fn v1_ipv6_and_mapped() {
        let mut out = vec![];
        encode_v1(sa("[2001:db8::1]:1234"), sa("[2001:db8::2]:80"), &mut out);
        assert_eq!(out, b"PROXY TCP6 2001:db8::1 2001:db8::2 1234 80\r\n");
        out.clear();
        encode_v1(sa("[::ffff:10.0.0.1]:1"), sa("10.0.0.2:2"), &mut out);
        assert_eq!(out, b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n");
        out.clear();
        encode_v1(sa("10.0.0.1:1"), sa("[2001:db8::2]:2"), &mut out);
        assert_eq!(out, b"PROXY TCP6 ::ffff:10.0.0.1 2001:db8::2 1 2\r\n");
    }

    #[test]
    fn v2_ipv4_exact_bytes() {
        let mut out = vec![];
        encode_v2(sa("192.168.0.1:56324"), sa("192.168.0.11:443"), &mut out);
        let want: Vec<u8> = [
            &[
                0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
            ][..],
            &[0x21, 0x11, 0x00, 0x0C],
            &[192, 168, 0, 1],
            &[192, 168, 0, 11],
            &[0xDC, 0x04], // 56324
            &[0x01, 0xBB], // 443
        ]
        .concat();
        assert_eq!(out, want);
        assert_eq!(out.len(), 16 + 12);
    }

    #[test]
    fn v2_ipv6_exact_bytes() {
        let mut out = vec![];
        encode_v2(sa("[2001:db8::1]:1234"), sa("[::1]:8080"), &mut out);
        let mut src = [0u8; 16];
        src[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        src[15] = 1;
        let mut dst = [0u8; 16];
        dst[15] = 1;
        let want: Vec<u8> = [
            &V2_SIGNATURE[..],
            &[0x21, 0x21, 0x00, 0x24],
            &src,
            &dst,
            &[0x04, 0xD2], // 1234
            &[0x1F, 0x90], // 8080
        ]
        .concat();
        assert_eq!(out, want);
        assert_eq!(out.len(), 16 + 36);
    }

    #[test]
    fn v2_local_and_dispatch() {
        let mut out = vec![];
        encode_v2_local(&mut out);
        assert_eq!(&out[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(&out[12..], &[0x20, 0x00, 0x00, 0x00]);
        let (s, d) = (sa("1.2.3.4:5"), sa("6.7.8.9:10"));
        let mut a = vec![];
        encode(ProxyProtocol::V1, s, d, &mut a);
        assert_eq!(a, b"PROXY TCP4 1.2.3.4 6.7.8.9 5 10\r\n");
        let (mut b, mut c) = (vec![], vec![]);
        encode(ProxyProtocol::V2, s, d, &mut b);
        encode_v2(s, d, &mut c);
        assert_eq!(b, c);
    }
}
