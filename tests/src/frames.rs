//! Frame builders for table-driven tests of the kernel programs.

use probe_common::{
    config::ProbeConfig,
    cookie::cookie,
    craft::{build, Eth, Ip, L4},
    family,
    parse::tcp_flags,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Our (the prober's) IPv4 address in tests.
pub const US4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The target's IPv4 address in tests.
pub const THEM4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// A router between us (for ICMP errors).
pub const ROUTER4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
/// Our IPv6 address (documentation range, never routed).
pub const US6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// The target's IPv6 address.
pub const THEM6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

/// The config used by the tables.
#[must_use]
pub fn config() -> ProbeConfig {
    ProbeConfig {
        cookie_key: [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210],
        port_lo: 61000,
        port_hi: 61999,
        icmp_id: 0x5d0e,
        enabled: 1,
        reset: 0,
        ingress: 0,
        _pad: [0; 7],
    }
}

/// 16-byte record form of an address.
#[must_use]
pub fn bytes(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v) => {
            let mut b = [0; 16];
            b[..4].copy_from_slice(&v.octets());
            b
        }
        IpAddr::V6(v) => v.octets(),
    }
}

fn fam(a: IpAddr) -> u8 {
    if a.is_ipv4() {
        family::V4
    } else {
        family::V6
    }
}

/// The Ethernet header every test frame carries (optionally VLAN-tagged).
#[must_use]
pub fn eth(vlan: Option<u16>) -> Eth {
    Eth {
        dst: [2, 0, 0, 0, 0, 1],
        src: [2, 0, 0, 0, 0, 2],
        vlan,
    }
}

/// Build a frame (with Ethernet) from `src` to `dst`.
#[must_use]
pub fn frame(
    eth: Option<&Eth>,
    src: IpAddr,
    dst: IpAddr,
    ip_options: &[u8],
    l4: &L4<'_>,
) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    let ip = Ip {
        family: fam(src),
        src: bytes(src),
        dst: bytes(dst),
        ttl: 61,
        id: 1,
        options: ip_options,
    };
    let n = build(&mut buf, eth, &ip, l4).expect("test frame fits");
    buf.truncate(n);
    buf
}

/// Cookie of a probe from `us:sport` to `them:dport` under [`config`].
#[must_use]
pub fn cookie_of(us: IpAddr, them: IpAddr, sport: u16, dport: u16) -> u32 {
    cookie(&config().cookie_key, &bytes(us), &bytes(them), sport, dport)
}

/// Our SYN probe (as it leaves, with Ethernet).
#[must_use]
pub fn syn(us: IpAddr, them: IpAddr, sport: u16, dport: u16) -> Vec<u8> {
    let seq = cookie_of(us, them, sport, dport);
    frame(
        Some(&eth(None)),
        us,
        them,
        &[],
        &L4::Tcp {
            sport,
            dport,
            seq,
            ack: 0,
            flags: tcp_flags::SYN,
            window: 1024,
            options: &[],
        },
    )
}

/// The target's answer to our SYN, with the given flags and acknowledgement number.
#[must_use]
pub fn tcp_answer(
    e: Option<&Eth>,
    us: IpAddr,
    them: IpAddr,
    sport: u16,
    dport: u16,
    flags: u8,
    ack: u32,
) -> Vec<u8> {
    frame(
        e,
        them,
        us,
        &[],
        &L4::Tcp {
            sport: dport,
            dport: sport,
            seq: 777,
            ack,
            flags,
            window: 65535,
            options: &[2, 4, 5, 0xb4],
        },
    )
}

/// A valid SYN-ACK to our probe.
#[must_use]
pub fn syn_ack(us: IpAddr, them: IpAddr, sport: u16, dport: u16) -> Vec<u8> {
    let ack = cookie_of(us, them, sport, dport).wrapping_add(1);
    tcp_answer(
        Some(&eth(None)),
        us,
        them,
        sport,
        dport,
        tcp_flags::SYN | tcp_flags::ACK,
        ack,
    )
}

/// Our echo request (as it leaves).
#[must_use]
pub fn echo_request(us: IpAddr, them: IpAddr, id: u16, seq: u16) -> Vec<u8> {
    let kind = if us.is_ipv4() { 8 } else { 128 };
    frame(
        Some(&eth(None)),
        us,
        them,
        &[],
        &L4::Icmp {
            kind,
            code: 0,
            id,
            seq,
            payload: b"sonde-test",
        },
    )
}

/// An echo reply to us.
#[must_use]
pub fn echo_reply(us: IpAddr, them: IpAddr, id: u16, seq: u16) -> Vec<u8> {
    let kind = if us.is_ipv4() { 0 } else { 129 };
    frame(
        Some(&eth(None)),
        them,
        us,
        &[],
        &L4::Icmp {
            kind,
            code: 0,
            id,
            seq,
            payload: b"sonde-test",
        },
    )
}

/// An ICMP error from `reporter` to us quoting `quoted` (an IP packet without Ethernet;
/// cut to its IP header + 8 bytes as routers do).
#[must_use]
pub fn icmp_error(reporter: IpAddr, us: IpAddr, kind: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    frame(
        Some(&eth(None)),
        reporter,
        us,
        &[],
        &L4::Icmp {
            kind,
            code,
            id: 0,
            seq: 0,
            payload: quoted,
        },
    )
}

/// An IP packet (no Ethernet) of our probe, cut to IP header + 8 bytes.
#[must_use]
pub fn quote(us: IpAddr, them: IpAddr, l4: &L4<'_>) -> Vec<u8> {
    let mut p = frame(None, us, them, &[], l4);
    let ihl = if us.is_ipv4() { 20 } else { 40 };
    p.truncate(ihl + 8);
    p
}
