//! Table-driven host tests of the packet classifier (katran style: each row is a
//! description, a frame and the expected verdict).
//!
//! Frames are built with [`craft::build`] (so the checksums are real) and then, where a
//! row needs a broken frame, patched by small helpers that touch one field only.
//! `classify` is checked on answers to our probes, `classify_egress` on the probes
//! themselves, and a contract test checks that both derive the same [`StampKey`]. A
//! deterministic fuzz pass (xorshift, no extra dependencies) checks that random and
//! mutated frames never panic and never yield an answer that breaks the invariants.
//!
//! Addresses come from 198.18.0.0/15 and 2001:db8::/32 only.

use std::fmt::{Debug, Write as _};
use std::net::{Ipv4Addr, Ipv6Addr};

use probe_common::{
    config::ProbeConfig,
    cookie::cookie,
    counters::{TcReason, XdpReason},
    craft::{self, Eth, Ip, L4},
    family::{V4, V6},
    parse::{
        classify, classify_egress,
        tcp_flags::{ACK, FIN, RST, SYN},
        Answer,
    },
    proto::{ICMP, ICMPV6, TCP, UDP},
    record::{AnswerClass, StampKey},
};

// ---------------------------------------------------------------------------------------
// Configuration and addresses
// ---------------------------------------------------------------------------------------

const KEY: [u64; 2] = [0x5eed_0f5e_7a11_c0de, 0x0dd5_b0a7_feed_face];
/// The key of an earlier daemon run: answers to its probes must not validate.
const OLD_KEY: [u64; 2] = [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210];
const PORT_LO: u16 = 40000;
const PORT_HI: u16 = 40099;
const ICMP_ID: u16 = 0x50de;

/// A probe port in the middle of the range.
const OUR_PORT: u16 = 40007;
const TCP_PORT: u16 = 443;
const UDP_PORT: u16 = 53;
/// TTL of answers from the target.
const TTL_IN: u8 = 57;
/// TTL of our probes.
const TTL_OUT: u8 = 64;
/// TTL of ICMP errors.
const TTL_ERR: u8 = 250;
/// The target's initial sequence number in its SYN-ACKs.
const SERVER_ISN: u32 = 0xa5a5_0001;
/// Offset of the L3 header in an untagged frame.
const L3: usize = 14;
const PAYLOAD: &[u8] = b"sonde-probe-payload";

const V4_UNREACH: u8 = 3;
const V4_TIME_EXCEEDED: u8 = 11;
const V6_UNREACH: u8 = 1;
const V6_TIME_EXCEEDED: u8 = 3;

const MAC_US: [u8; 6] = [0x02, 0x5d, 0, 0, 0, 1];
const MAC_GW: [u8; 6] = [0x02, 0x5d, 0, 0, 0, 2];

fn cfg() -> ProbeConfig {
    ProbeConfig {
        cookie_key: KEY,
        port_lo: PORT_LO,
        port_hi: PORT_HI,
        icmp_id: ICMP_ID,
        enabled: 1,
        reset: 0,
        ingress: 0,
        _pad: [0; 7],
    }
}

fn addr4(s: &str) -> [u8; 16] {
    let a: Ipv4Addr = s.parse().expect("IPv4 literal");
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&a.octets());
    b
}

fn addr6(s: &str) -> [u8; 16] {
    s.parse::<Ipv6Addr>().expect("IPv6 literal").octets()
}

/// Our address (the probes' source, the answers' destination).
fn us(fam: u8) -> [u8; 16] {
    if fam == V4 {
        addr4("198.18.0.10")
    } else {
        addr6("2001:db8:0:1::10")
    }
}

/// The probed target.
fn target(fam: u8) -> [u8; 16] {
    if fam == V4 {
        addr4("198.19.44.7")
    } else {
        addr6("2001:db8:99::7")
    }
}

/// A router on the path (sender of ICMP errors).
fn router(fam: u8) -> [u8; 16] {
    if fam == V4 {
        addr4("198.18.200.1")
    } else {
        addr6("2001:db8:ff::1")
    }
}

/// Somebody else.
fn stranger(fam: u8) -> [u8; 16] {
    if fam == V4 {
        addr4("198.19.250.250")
    } else {
        addr6("2001:db8:dead::1")
    }
}

// ---------------------------------------------------------------------------------------
// Frame builders
// ---------------------------------------------------------------------------------------

/// The IP layer of a frame to build.
#[derive(Clone, Copy)]
struct Hdr {
    fam: u8,
    src: [u8; 16],
    dst: [u8; 16],
    ttl: u8,
}

/// Target to us.
fn inbound(fam: u8) -> Hdr {
    Hdr {
        fam,
        src: target(fam),
        dst: us(fam),
        ttl: TTL_IN,
    }
}

/// Us to target.
fn outbound(fam: u8) -> Hdr {
    Hdr {
        fam,
        src: us(fam),
        dst: target(fam),
        ttl: TTL_OUT,
    }
}

/// `src` to us, with the TTL of an ICMP error.
fn from(fam: u8, src: [u8; 16]) -> Hdr {
    Hdr {
        fam,
        src,
        dst: us(fam),
        ttl: TTL_ERR,
    }
}

fn build(h: Hdr, ip_options: &[u8], vlan: Option<u16>, eth: bool, l4: &L4<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    let e = Eth {
        dst: MAC_US,
        src: MAC_GW,
        vlan,
    };
    let ip = Ip {
        family: h.fam,
        src: h.src,
        dst: h.dst,
        ttl: h.ttl,
        id: 0x1234,
        options: ip_options,
    };
    let n = craft::build(&mut buf, eth.then_some(&e), &ip, l4).expect("craft::build");
    buf.truncate(n);
    buf
}

/// An untagged Ethernet frame.
fn frame(h: Hdr, l4: L4<'_>) -> Vec<u8> {
    build(h, &[], None, true, &l4)
}

/// An untagged Ethernet frame with IPv4 options.
fn frame_opts(h: Hdr, ip_options: &[u8], l4: L4<'_>) -> Vec<u8> {
    build(h, ip_options, None, true, &l4)
}

/// A bare IP packet (what an ICMP error quotes).
fn raw(h: Hdr, l4: L4<'_>) -> Vec<u8> {
    build(h, &[], None, false, &l4)
}

fn tcp(sport: u16, dport: u16, seq: u32, ack: u32, flags: u8) -> L4<'static> {
    L4::Tcp {
        sport,
        dport,
        seq,
        ack,
        flags,
        window: 64240,
        options: &[],
    }
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> L4<'_> {
    L4::Udp {
        sport,
        dport,
        payload,
    }
}

fn icmp(kind: u8, code: u8, id: u16, seq: u16, payload: &[u8]) -> L4<'_> {
    L4::Icmp {
        kind,
        code,
        id,
        seq,
        payload,
    }
}

fn echo_request_type(fam: u8) -> u8 {
    if fam == V4 {
        8
    } else {
        128
    }
}

fn echo_reply_type(fam: u8) -> u8 {
    if fam == V4 {
        0
    } else {
        129
    }
}

fn unreach_type(fam: u8) -> u8 {
    if fam == V4 {
        V4_UNREACH
    } else {
        V6_UNREACH
    }
}

fn icmp_proto(fam: u8) -> u8 {
    if fam == V4 {
        ICMP
    } else {
        ICMPV6
    }
}

/// Our cookie for a probe from `us(fam):our` to `target(fam):their`.
fn ck(fam: u8, our: u16, their: u16) -> u32 {
    cookie(&KEY, &us(fam), &target(fam), our, their)
}

/// Our SYN probe's transport header: the sequence number is the cookie.
fn syn_l4(fam: u8, our: u16, their: u16) -> L4<'static> {
    tcp(our, their, ck(fam, our, their), 0, SYN)
}

/// A SYN-ACK from the target acknowledging `ack`.
fn syn_ack(fam: u8, our: u16, their: u16, ack: u32) -> Vec<u8> {
    frame(inbound(fam), tcp(their, our, SERVER_ISN, ack, SYN | ACK))
}

/// A TCP segment from the target with sequence 0 (as RSTs answering a SYN carry).
fn rst(fam: u8, our: u16, their: u16, ack: u32, flags: u8) -> Vec<u8> {
    frame(inbound(fam), tcp(their, our, 0, ack, flags))
}

/// SYN-ACK acknowledging our cookie.
fn good_syn_ack(fam: u8, our: u16, their: u16) -> Vec<u8> {
    syn_ack(fam, our, their, ck(fam, our, their).wrapping_add(1))
}

/// Echo reply from the target.
fn echo_reply(fam: u8, id: u16, seq: u16) -> Vec<u8> {
    frame(
        inbound(fam),
        icmp(echo_reply_type(fam), 0, id, seq, PAYLOAD),
    )
}

/// UDP datagram from the target.
fn udp_reply(fam: u8, our: u16, their: u16) -> Vec<u8> {
    frame(inbound(fam), udp(their, our, b"answer"))
}

/// What an ICMP error quotes: the IP header plus the first 8 transport bytes.
fn quote(ip_packet: &[u8]) -> Vec<u8> {
    let hl = if ip_packet[0] >> 4 == 4 {
        usize::from(ip_packet[0] & 0x0f) * 4
    } else {
        40
    };
    ip_packet[..hl + 8].to_vec()
}

/// An ICMP/ICMPv6 error from `src` carrying `quoted`.
fn icmp_err(fam: u8, src: [u8; 16], kind: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    frame(from(fam, src), icmp(kind, code, 0, 0, quoted))
}

/// Our raw probes, to be quoted.
fn raw_syn(fam: u8, our: u16, their: u16) -> Vec<u8> {
    raw(outbound(fam), syn_l4(fam, our, their))
}

fn raw_udp(fam: u8, our: u16, their: u16) -> Vec<u8> {
    raw(outbound(fam), udp(our, their, PAYLOAD))
}

fn raw_echo(fam: u8, id: u16, seq: u16) -> Vec<u8> {
    raw(
        outbound(fam),
        icmp(echo_request_type(fam), 0, id, seq, PAYLOAD),
    )
}

/// Our framed probes, as the TC egress program sees them.
fn syn_probe(fam: u8, our: u16, their: u16) -> Vec<u8> {
    frame(outbound(fam), syn_l4(fam, our, their))
}

fn udp_probe(fam: u8, our: u16, their: u16) -> Vec<u8> {
    frame(outbound(fam), udp(our, their, PAYLOAD))
}

fn echo_probe(fam: u8, id: u16, seq: u16) -> Vec<u8> {
    frame(
        outbound(fam),
        icmp(echo_request_type(fam), 0, id, seq, PAYLOAD),
    )
}

fn arp() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&MAC_GW);
    f.extend_from_slice(&[0x08, 0x06]);
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&MAC_GW);
    f.extend_from_slice(&target(V4)[..4]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&us(V4)[..4]);
    f
}

// ---------------------------------------------------------------------------------------
// Frame mutators (untagged frames)
// ---------------------------------------------------------------------------------------

fn is_untagged_ipv4(f: &[u8]) -> bool {
    f.len() >= L3 + 20 && f[12..14] == [0x08, 0x00] && f[L3] >> 4 == 4
}

/// Recompute the IPv4 header checksum so only the intended field is odd.
fn fix_ipv4_checksum(f: &mut [u8]) {
    if !is_untagged_ipv4(f) {
        return;
    }
    let hl = usize::from(f[L3] & 0x0f) * 4;
    if hl < 20 || L3 + hl > f.len() {
        return;
    }
    f[L3 + 10..L3 + 12].copy_from_slice(&[0, 0]);
    let c = craft::checksum(&f[L3..L3 + hl]);
    f[L3 + 10..L3 + 12].copy_from_slice(&c.to_be_bytes());
}

/// Overwrite bytes at `off`.
fn patch(mut f: Vec<u8>, off: usize, bytes: &[u8]) -> Vec<u8> {
    f[off..off + bytes.len()].copy_from_slice(bytes);
    fix_ipv4_checksum(&mut f);
    f
}

/// Offset of the transport header of an untagged frame.
fn l4_off(f: &[u8]) -> usize {
    if f[12..14] == [0x08, 0x00] {
        L3 + usize::from(f[L3] & 0x0f) * 4
    } else {
        L3 + 40
    }
}

/// Keep only `keep` bytes of the transport layer, and shrink the IP length to match,
/// so the frame is consistent up to the transport header.
fn cut_l4(mut f: Vec<u8>, keep: usize) -> Vec<u8> {
    let l4 = l4_off(&f);
    f.truncate(l4 + keep);
    if f[12..14] == [0x08, 0x00] {
        let total = u16::try_from(f.len() - L3).expect("fits");
        f[L3 + 2..L3 + 4].copy_from_slice(&total.to_be_bytes());
        fix_ipv4_checksum(&mut f);
    } else {
        let plen = u16::try_from(keep).expect("fits");
        f[L3 + 4..L3 + 6].copy_from_slice(&plen.to_be_bytes());
    }
    f
}

/// Set the IPv4 total length.
fn ipv4_total(f: Vec<u8>, total: u16) -> Vec<u8> {
    patch(f, L3 + 2, &total.to_be_bytes())
}

/// Set the IPv4 flags + fragment offset field.
fn ipv4_frag(f: Vec<u8>, v: u16) -> Vec<u8> {
    patch(f, L3 + 6, &v.to_be_bytes())
}

/// Set the IPv4 protocol / IPv6 next header.
fn l4_proto(f: Vec<u8>, p: u8) -> Vec<u8> {
    if f[12..14] == [0x08, 0x00] {
        patch(f, L3 + 9, &[p])
    } else {
        patch(f, L3 + 6, &[p])
    }
}

/// Insert a VLAN tag right after the MAC addresses (so it becomes the outermost tag).
fn tag(f: &[u8], tpid: u16, vid: u16) -> Vec<u8> {
    let mut t = f[..12].to_vec();
    t.extend_from_slice(&tpid.to_be_bytes());
    t.extend_from_slice(&vid.to_be_bytes());
    t.extend_from_slice(&f[12..]);
    t
}

/// 802.1ad outer tag over an 802.1Q inner tag.
fn qinq(f: &[u8]) -> Vec<u8> {
    tag(&tag(f, 0x8100, 100), 0x88a8, 7)
}

/// Append Ethernet padding up to `len` bytes.
fn pad(mut f: Vec<u8>, len: usize) -> Vec<u8> {
    f.resize(len.max(f.len()), 0);
    f
}

// ---------------------------------------------------------------------------------------
// Expected answers
// ---------------------------------------------------------------------------------------

fn key(fam: u8, lp: u16, rp: u16, pr: u8, seq: u32) -> StampKey {
    StampKey {
        local: us(fam),
        remote: target(fam),
        local_port: lp,
        remote_port: rp,
        proto: pr,
        family: fam,
        _pad: [0; 2],
        seq,
    }
}

fn tcp_key(fam: u8, our: u16, their: u16) -> StampKey {
    key(fam, our, their, TCP, ck(fam, our, their))
}

fn tcp_answer(class: AnswerClass, fam: u8, our: u16, their: u16, flags: u8, seq: u32) -> Answer {
    Answer {
        class,
        key: tcp_key(fam, our, their),
        reporter: target(fam),
        answer_seq: seq,
        icmp_type: 0,
        icmp_code: 0,
        tcp_flags: flags,
        ttl: TTL_IN,
        cookie_ok: true,
    }
}

fn open(fam: u8, our: u16, their: u16) -> Answer {
    tcp_answer(AnswerClass::Open, fam, our, their, SYN | ACK, SERVER_ISN)
}

fn closed(fam: u8, our: u16, their: u16) -> Answer {
    tcp_answer(AnswerClass::Closed, fam, our, their, RST | ACK, 0)
}

fn echo_answer(fam: u8, seq: u16) -> Answer {
    Answer {
        class: AnswerClass::EchoReply,
        key: key(fam, ICMP_ID, seq, icmp_proto(fam), 0),
        reporter: target(fam),
        answer_seq: 0,
        icmp_type: echo_reply_type(fam),
        icmp_code: 0,
        tcp_flags: 0,
        ttl: TTL_IN,
        cookie_ok: false,
    }
}

fn udp_answer(fam: u8, our: u16, their: u16) -> Answer {
    Answer {
        class: AnswerClass::UdpReply,
        key: key(fam, our, their, UDP, 0),
        reporter: target(fam),
        answer_seq: 0,
        icmp_type: 0,
        icmp_code: 0,
        tcp_flags: 0,
        ttl: TTL_IN,
        cookie_ok: false,
    }
}

fn unreachable(k: StampKey, reporter: [u8; 16], kind: u8, code: u8) -> Answer {
    Answer {
        class: AnswerClass::Unreachable,
        key: k,
        reporter,
        answer_seq: 0,
        icmp_type: kind,
        icmp_code: code,
        tcp_flags: 0,
        ttl: TTL_ERR,
        cookie_ok: k.proto == TCP,
    }
}

// ---------------------------------------------------------------------------------------
// Table runner
// ---------------------------------------------------------------------------------------

type Verdict = Result<Answer, XdpReason>;
type EgressVerdict = Result<(StampKey, TcReason), TcReason>;

struct Case<T> {
    name: &'static str,
    frame: Vec<u8>,
    want: T,
}

fn case<T>(name: &'static str, frame: Vec<u8>, want: T) -> Case<T> {
    Case { name, frame, want }
}

fn hex(f: &[u8]) -> String {
    let mut s = String::new();
    for (i, b) in f.iter().enumerate() {
        if i > 0 && i % 16 == 0 {
            s.push('\n');
        }
        let _ = write!(s, "{b:02x} ");
    }
    s
}

/// Run every row, then fail once with every mismatch.
fn check<T: PartialEq + Debug>(table: &[Case<T>], run: impl Fn(&[u8]) -> T) {
    let mut fails = String::new();
    let mut n = 0;
    for c in table {
        let got = run(c.frame.as_slice());
        if got != c.want {
            n += 1;
            let _ = writeln!(
                fails,
                "--- {}\n  got:  {:?}\n  want: {:?}\n  frame ({} bytes):\n{}",
                c.name,
                got,
                c.want,
                c.frame.len(),
                hex(&c.frame)
            );
        }
    }
    assert!(n == 0, "{n} of {} rows failed:\n{fails}", table.len());
}

fn run(table: &[Case<Verdict>]) {
    run_with(&cfg(), table);
}

fn run_with(cfg: &ProbeConfig, table: &[Case<Verdict>]) {
    check(table, |f| classify(f, cfg));
}

fn run_egress(table: &[Case<EgressVerdict>]) {
    let cfg = cfg();
    check(table, |f| classify_egress(f, &cfg));
}

// ---------------------------------------------------------------------------------------
// classify: TCP
// ---------------------------------------------------------------------------------------

#[test]
fn tcp_answers() {
    let c = ck(V4, OUR_PORT, TCP_PORT);
    let c6 = ck(V6, OUR_PORT, TCP_PORT);
    let with_options = frame(
        inbound(V4),
        L4::Tcp {
            sport: TCP_PORT,
            dport: OUR_PORT,
            seq: SERVER_ISN,
            ack: c.wrapping_add(1),
            flags: SYN | ACK,
            window: 65535,
            // MSS 1460, NOP NOP SACK-permitted, NOP window scale 7.
            options: &[2, 4, 5, 180, 1, 1, 4, 2, 1, 3, 3, 7],
        },
    );
    let table = [
        case(
            "SYN-ACK with a valid cookie: open (whole record spelled out)",
            syn_ack(V4, OUR_PORT, TCP_PORT, c.wrapping_add(1)),
            Ok(Answer {
                class: AnswerClass::Open,
                key: StampKey {
                    local: [198, 18, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    remote: [198, 19, 44, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    local_port: 40007,
                    remote_port: 443,
                    proto: 6,
                    family: 4,
                    _pad: [0; 2],
                    seq: c,
                },
                reporter: [198, 19, 44, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                answer_seq: SERVER_ISN,
                icmp_type: 0,
                icmp_code: 0,
                tcp_flags: 0x12,
                ttl: 57,
                cookie_ok: true,
            }),
        ),
        case(
            "SYN-ACK with ECE: open, flags kept as received",
            frame(
                inbound(V4),
                tcp(TCP_PORT, OUR_PORT, SERVER_ISN, c.wrapping_add(1), 0x52),
            ),
            Ok(tcp_answer(
                AnswerClass::Open,
                V4,
                OUR_PORT,
                TCP_PORT,
                0x52,
                SERVER_ISN,
            )),
        ),
        case(
            "SYN-ACK with TCP options (data offset 8): open",
            with_options,
            Ok(open(V4, OUR_PORT, TCP_PORT)),
        ),
        case(
            "SYN-ACK padded to the 60-byte Ethernet minimum: open",
            pad(syn_ack(V4, OUR_PORT, TCP_PORT, c.wrapping_add(1)), 60),
            Ok(open(V4, OUR_PORT, TCP_PORT)),
        ),
        case(
            "SYN-ACK to port_lo: open",
            good_syn_ack(V4, PORT_LO, 80),
            Ok(open(V4, PORT_LO, 80)),
        ),
        case(
            "SYN-ACK to port_hi: open",
            good_syn_ack(V4, PORT_HI, 65535),
            Ok(open(V4, PORT_HI, 65535)),
        ),
        case(
            "SYN-ACK to port_lo - 1 (cookie valid for it): not ours",
            good_syn_ack(V4, PORT_LO - 1, 80),
            Err(XdpReason::NotOurs),
        ),
        case(
            "SYN-ACK to port_hi + 1 (cookie valid for it): not ours",
            good_syn_ack(V4, PORT_HI + 1, 80),
            Err(XdpReason::NotOurs),
        ),
        case(
            "SYN-ACK to port 22: not ours",
            good_syn_ack(V4, 22, 80),
            Err(XdpReason::NotOurs),
        ),
        case(
            "RST|ACK with a valid cookie: closed",
            rst(V4, OUR_PORT, TCP_PORT, c.wrapping_add(1), RST | ACK),
            Ok(closed(V4, OUR_PORT, TCP_PORT)),
        ),
        case(
            "SYN|RST|ACK with a valid cookie: RST wins, closed",
            rst(V4, OUR_PORT, TCP_PORT, c.wrapping_add(1), SYN | RST | ACK),
            Ok(tcp_answer(
                AnswerClass::Closed,
                V4,
                OUR_PORT,
                TCP_PORT,
                SYN | RST | ACK,
                0,
            )),
        ),
        case(
            "RST without ACK (ack field holds cookie + 1): bad cookie",
            rst(V4, OUR_PORT, TCP_PORT, c.wrapping_add(1), RST),
            Err(XdpReason::BadCookie),
        ),
        case(
            "RST without ACK, ack 0: bad cookie",
            rst(V4, OUR_PORT, TCP_PORT, 0, RST),
            Err(XdpReason::BadCookie),
        ),
        case(
            "RST|ACK with a wrong ack: bad cookie",
            rst(V4, OUR_PORT, TCP_PORT, c.wrapping_add(7), RST | ACK),
            Err(XdpReason::BadCookie),
        ),
        case(
            "SYN-ACK acknowledging the cookie itself (no + 1): bad cookie",
            syn_ack(V4, OUR_PORT, TCP_PORT, c),
            Err(XdpReason::BadCookie),
        ),
        case(
            "SYN-ACK acknowledging cookie + 2: bad cookie",
            syn_ack(V4, OUR_PORT, TCP_PORT, c.wrapping_add(2)),
            Err(XdpReason::BadCookie),
        ),
        case(
            "SYN-ACK from port 8443 acking the cookie of port 443: bad cookie",
            syn_ack(V4, OUR_PORT, 8443, c.wrapping_add(1)),
            Err(XdpReason::BadCookie),
        ),
        case(
            "SYN-ACK to another probe port acking the cookie of OUR_PORT: bad cookie",
            syn_ack(V4, OUR_PORT + 1, TCP_PORT, c.wrapping_add(1)),
            Err(XdpReason::BadCookie),
        ),
        case(
            "SYN-ACK from a spoofed source address: bad cookie",
            frame(
                Hdr {
                    src: stranger(V4),
                    ..inbound(V4)
                },
                tcp(TCP_PORT, OUR_PORT, SERVER_ISN, c.wrapping_add(1), SYN | ACK),
            ),
            Err(XdpReason::BadCookie),
        ),
        case(
            "SYN-ACK to another local address: bad cookie",
            frame(
                Hdr {
                    dst: stranger(V4),
                    ..inbound(V4)
                },
                tcp(TCP_PORT, OUR_PORT, SERVER_ISN, c.wrapping_add(1), SYN | ACK),
            ),
            Err(XdpReason::BadCookie),
        ),
        case(
            "SYN-ACK with the cookie of an earlier run's key: bad cookie",
            syn_ack(
                V4,
                OUR_PORT,
                TCP_PORT,
                cookie(&OLD_KEY, &us(V4), &target(V4), OUR_PORT, TCP_PORT).wrapping_add(1),
            ),
            Err(XdpReason::BadCookie),
        ),
        case(
            "pure ACK to our port: other tcp",
            frame(
                inbound(V4),
                tcp(TCP_PORT, OUR_PORT, SERVER_ISN, c.wrapping_add(1), ACK),
            ),
            Err(XdpReason::OtherTcp),
        ),
        case(
            "FIN|ACK to our port: other tcp",
            frame(
                inbound(V4),
                tcp(TCP_PORT, OUR_PORT, SERVER_ISN, c.wrapping_add(1), FIN | ACK),
            ),
            Err(XdpReason::OtherTcp),
        ),
        case(
            "bare SYN to our port: other tcp",
            frame(inbound(V4), tcp(TCP_PORT, OUR_PORT, SERVER_ISN, 0, SYN)),
            Err(XdpReason::OtherTcp),
        ),
        case(
            "no flags at all to our port: other tcp",
            frame(inbound(V4), tcp(TCP_PORT, OUR_PORT, SERVER_ISN, 0, 0)),
            Err(XdpReason::OtherTcp),
        ),
        case(
            "pure ACK to another port: not ours",
            frame(inbound(V4), tcp(TCP_PORT, 22, SERVER_ISN, 1, ACK)),
            Err(XdpReason::NotOurs),
        ),
        case(
            "IPv6 SYN-ACK with a valid cookie: open",
            syn_ack(V6, OUR_PORT, TCP_PORT, c6.wrapping_add(1)),
            Ok(Answer {
                class: AnswerClass::Open,
                key: StampKey {
                    local: addr6("2001:db8:0:1::10"),
                    remote: addr6("2001:db8:99::7"),
                    local_port: OUR_PORT,
                    remote_port: TCP_PORT,
                    proto: TCP,
                    family: V6,
                    _pad: [0; 2],
                    seq: c6,
                },
                reporter: addr6("2001:db8:99::7"),
                answer_seq: SERVER_ISN,
                icmp_type: 0,
                icmp_code: 0,
                tcp_flags: SYN | ACK,
                ttl: TTL_IN,
                cookie_ok: true,
            }),
        ),
        case(
            "IPv6 RST|ACK with a valid cookie: closed",
            rst(V6, OUR_PORT, TCP_PORT, c6.wrapping_add(1), RST | ACK),
            Ok(closed(V6, OUR_PORT, TCP_PORT)),
        ),
        case(
            "IPv6 SYN-ACK acking the IPv4 cookie: bad cookie",
            syn_ack(V6, OUR_PORT, TCP_PORT, c.wrapping_add(1)),
            Err(XdpReason::BadCookie),
        ),
        case(
            "IPv6 SYN-ACK to port_hi + 1: not ours",
            good_syn_ack(V6, PORT_HI + 1, TCP_PORT),
            Err(XdpReason::NotOurs),
        ),
    ];
    run(&table);
}

/// A fresh daemon run (new key) must reject answers to the previous run's probes.
#[test]
fn answers_to_an_earlier_run_fail_validation() {
    let old = ProbeConfig {
        cookie_key: OLD_KEY,
        ..cfg()
    };
    let table = [
        case(
            "SYN-ACK valid under KEY, checked under OLD_KEY",
            good_syn_ack(V4, OUR_PORT, TCP_PORT),
            Err(XdpReason::BadCookie),
        ),
        case(
            "ICMP error quoting a SYN cookied under KEY, checked under OLD_KEY",
            icmp_err(
                V4,
                router(V4),
                V4_UNREACH,
                1,
                &quote(&raw_syn(V4, OUR_PORT, TCP_PORT)),
            ),
            Err(XdpReason::BadCookie),
        ),
        // Without a cookie there is nothing to tell runs apart.
        case(
            "echo reply is key-independent",
            echo_reply(V4, ICMP_ID, 3),
            Ok(echo_answer(V4, 3)),
        ),
    ];
    run_with(&old, &table);
}

// ---------------------------------------------------------------------------------------
// classify: ICMP echo
// ---------------------------------------------------------------------------------------

#[test]
fn echo_answers() {
    let table = [
        case(
            "ICMP echo reply with our id: echo reply (whole record spelled out)",
            echo_reply(V4, ICMP_ID, 7),
            Ok(Answer {
                class: AnswerClass::EchoReply,
                key: StampKey {
                    local: [198, 18, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    remote: [198, 19, 44, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    local_port: ICMP_ID,
                    remote_port: 7,
                    proto: 1,
                    family: 4,
                    _pad: [0; 2],
                    seq: 0,
                },
                reporter: [198, 19, 44, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                answer_seq: 0,
                icmp_type: 0,
                icmp_code: 0,
                tcp_flags: 0,
                ttl: 57,
                cookie_ok: false,
            }),
        ),
        case(
            "echo reply, seq 0xffff",
            echo_reply(V4, ICMP_ID, 0xffff),
            Ok(echo_answer(V4, 0xffff)),
        ),
        case(
            "echo reply with no payload",
            frame(inbound(V4), icmp(0, 0, ICMP_ID, 1, &[])),
            Ok(echo_answer(V4, 1)),
        ),
        case(
            "echo reply with another id: not ours",
            echo_reply(V4, ICMP_ID ^ 1, 7),
            Err(XdpReason::NotOurs),
        ),
        case(
            "echo request (type 8) with our id: not ours",
            frame(inbound(V4), icmp(8, 0, ICMP_ID, 7, PAYLOAD)),
            Err(XdpReason::NotOurs),
        ),
        case(
            "ICMPv4 type 129 is not an echo reply: not ours",
            frame(inbound(V4), icmp(129, 0, ICMP_ID, 7, PAYLOAD)),
            Err(XdpReason::NotOurs),
        ),
        case(
            "ICMP timestamp reply (14): not ours",
            frame(inbound(V4), icmp(14, 0, ICMP_ID, 7, &[0; 12])),
            Err(XdpReason::NotOurs),
        ),
        case(
            "ICMPv6 echo reply (129) with our id: echo reply",
            echo_reply(V6, ICMP_ID, 9),
            Ok(Answer {
                class: AnswerClass::EchoReply,
                key: StampKey {
                    local: addr6("2001:db8:0:1::10"),
                    remote: addr6("2001:db8:99::7"),
                    local_port: ICMP_ID,
                    remote_port: 9,
                    proto: ICMPV6,
                    family: V6,
                    _pad: [0; 2],
                    seq: 0,
                },
                reporter: addr6("2001:db8:99::7"),
                answer_seq: 0,
                icmp_type: 129,
                icmp_code: 0,
                tcp_flags: 0,
                ttl: TTL_IN,
                cookie_ok: false,
            }),
        ),
        case(
            "ICMPv6 echo reply with another id: not ours",
            echo_reply(V6, 0x1111, 9),
            Err(XdpReason::NotOurs),
        ),
        case(
            "ICMPv6 echo request (128): not ours",
            frame(inbound(V6), icmp(128, 0, ICMP_ID, 9, PAYLOAD)),
            Err(XdpReason::NotOurs),
        ),
        case(
            "ICMPv6 type 0 is not an echo reply: not ours",
            frame(inbound(V6), icmp(0, 0, ICMP_ID, 9, PAYLOAD)),
            Err(XdpReason::NotOurs),
        ),
        case(
            "ICMPv6 neighbour solicitation (135): not ours",
            frame(inbound(V6), icmp(135, 0, 0, 0, &[0; 16])),
            Err(XdpReason::NotOurs),
        ),
    ];
    run(&table);
}

// ---------------------------------------------------------------------------------------
// classify: ICMP errors quoting our probes
// ---------------------------------------------------------------------------------------

#[test]
fn icmp_errors() {
    let udp4 = raw_udp(V4, OUR_PORT + 3, UDP_PORT);
    let syn4 = raw_syn(V4, OUR_PORT, TCP_PORT);
    let echo4 = raw_echo(V4, ICMP_ID, 9);
    let udp6 = raw_udp(V6, OUR_PORT + 3, UDP_PORT);
    let syn6 = raw_syn(V6, OUR_PORT, TCP_PORT);
    let echo6 = raw_echo(V6, ICMP_ID, 9);
    let bad_syn4 = raw(
        outbound(V4),
        tcp(
            OUR_PORT,
            TCP_PORT,
            ck(V4, OUR_PORT, TCP_PORT).wrapping_add(1),
            0,
            SYN,
        ),
    );
    let bad_syn6 = raw(
        outbound(V6),
        tcp(
            OUR_PORT,
            TCP_PORT,
            ck(V6, OUR_PORT, TCP_PORT) ^ 0x8000_0000,
            0,
            SYN,
        ),
    );
    let udp4_with_options = build(
        outbound(V4),
        &[1, 1, 1, 0],
        None,
        false,
        &udp(OUR_PORT + 3, UDP_PORT, PAYLOAD),
    );
    let mut inner_ihl4 = quote(&udp4);
    inner_ihl4[0] = 0x44;
    let mut inner_v6 = quote(&udp4);
    inner_v6[0] = 0x65;
    let udp4_key = key(V4, OUR_PORT + 3, UDP_PORT, UDP, 0);
    let udp6_key = key(V6, OUR_PORT + 3, UDP_PORT, UDP, 0);
    let table = [
        case(
            "port unreachable (3/3) from the target quoting our UDP probe (spelled out)",
            icmp_err(V4, target(V4), 3, 3, &quote(&udp4)),
            Ok(Answer {
                class: AnswerClass::Unreachable,
                key: StampKey {
                    local: [198, 18, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    remote: [198, 19, 44, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    local_port: OUR_PORT + 3,
                    remote_port: UDP_PORT,
                    proto: UDP,
                    family: V4,
                    _pad: [0; 2],
                    seq: 0,
                },
                reporter: [198, 19, 44, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                answer_seq: 0,
                icmp_type: 3,
                icmp_code: 3,
                tcp_flags: 0,
                ttl: TTL_ERR,
                cookie_ok: false,
            }),
        ),
        case(
            "host unreachable (3/1) from a router: reporter is the router",
            icmp_err(V4, router(V4), 3, 1, &quote(&udp4)),
            Ok(unreachable(udp4_key, router(V4), 3, 1)),
        ),
        case(
            "port unreachable quoting the whole UDP probe (Linux quotes up to 576 bytes)",
            icmp_err(V4, target(V4), 3, 3, &udp4),
            Ok(unreachable(udp4_key, target(V4), 3, 3)),
        ),
        case(
            "time exceeded (11/0) quoting our TCP SYN: cookie checked",
            icmp_err(V4, router(V4), V4_TIME_EXCEEDED, 0, &quote(&syn4)),
            Ok(Answer {
                class: AnswerClass::Unreachable,
                key: tcp_key(V4, OUR_PORT, TCP_PORT),
                reporter: router(V4),
                answer_seq: 0,
                icmp_type: 11,
                icmp_code: 0,
                tcp_flags: 0,
                ttl: TTL_ERR,
                cookie_ok: true,
            }),
        ),
        case(
            "admin prohibited (3/13) quoting our TCP SYN",
            icmp_err(V4, router(V4), 3, 13, &quote(&syn4)),
            Ok(unreachable(
                tcp_key(V4, OUR_PORT, TCP_PORT),
                router(V4),
                3,
                13,
            )),
        ),
        case(
            "unreachable quoting a TCP SYN with a wrong cookie: bad cookie",
            icmp_err(V4, router(V4), 3, 1, &quote(&bad_syn4)),
            Err(XdpReason::BadCookie),
        ),
        case(
            "unreachable quoting a SYN from outside the port range: not ours",
            icmp_err(
                V4,
                router(V4),
                3,
                1,
                &quote(&raw(outbound(V4), tcp(51000, TCP_PORT, 1, 0, SYN))),
            ),
            Err(XdpReason::NotOurs),
        ),
        case(
            "host unreachable quoting our ICMP echo request",
            icmp_err(V4, router(V4), 3, 1, &quote(&echo4)),
            Ok(unreachable(key(V4, ICMP_ID, 9, ICMP, 0), router(V4), 3, 1)),
        ),
        case(
            "time exceeded quoting the whole echo request",
            icmp_err(V4, router(V4), 11, 0, &echo4),
            Ok(unreachable(key(V4, ICMP_ID, 9, ICMP, 0), router(V4), 11, 0)),
        ),
        case(
            "unreachable quoting an echo request with another id: not ours",
            icmp_err(V4, router(V4), 3, 1, &quote(&raw_echo(V4, 0x0bad, 9))),
            Err(XdpReason::NotOurs),
        ),
        case(
            "unreachable quoting an echo reply with our id: not ours",
            icmp_err(
                V4,
                router(V4),
                3,
                1,
                &quote(&raw(outbound(V4), icmp(0, 0, ICMP_ID, 9, PAYLOAD))),
            ),
            Err(XdpReason::NotOurs),
        ),
        case(
            "unreachable quoting someone else's UDP (sport 5353): not ours",
            icmp_err(V4, router(V4), 3, 3, &quote(&raw_udp(V4, 5353, UDP_PORT))),
            Err(XdpReason::NotOurs),
        ),
        case(
            "unreachable quoting GRE: not ours",
            icmp_err(V4, router(V4), 3, 1, &l4_proto_raw(quote(&udp4), 47)),
            Err(XdpReason::NotOurs),
        ),
        case(
            "quote cut inside the inner IPv4 header (12 bytes): malformed l4",
            icmp_err(V4, router(V4), 3, 1, &udp4[..12]),
            Err(XdpReason::MalformedL4),
        ),
        case(
            "quote cut right after the inner IPv4 header: malformed l4",
            icmp_err(V4, router(V4), 3, 1, &udp4[..20]),
            Err(XdpReason::MalformedL4),
        ),
        case(
            "quote with only 4 transport bytes: malformed l4",
            icmp_err(V4, router(V4), 3, 1, &udp4[..24]),
            Err(XdpReason::MalformedL4),
        ),
        case(
            "quote with 7 transport bytes of a SYN: malformed l4",
            icmp_err(V4, router(V4), 3, 1, &syn4[..27]),
            Err(XdpReason::MalformedL4),
        ),
        case(
            "empty quote: malformed l4",
            icmp_err(V4, router(V4), 3, 1, &[]),
            Err(XdpReason::MalformedL4),
        ),
        case(
            "quoted inner header with IHL 4: malformed l4",
            icmp_err(V4, router(V4), 3, 1, &inner_ihl4),
            Err(XdpReason::MalformedL4),
        ),
        case(
            "quoted inner header with version 6 inside ICMPv4: malformed l4",
            icmp_err(V4, router(V4), 3, 1, &inner_v6),
            Err(XdpReason::MalformedL4),
        ),
        case(
            "quoted probe with IPv4 options (inner IHL 6)",
            icmp_err(V4, router(V4), 3, 1, &quote(&udp4_with_options)),
            Ok(unreachable(udp4_key, router(V4), 3, 1)),
        ),
        case(
            "ICMP error with outer IPv4 options (outer IHL 6)",
            frame_opts(
                from(V4, router(V4)),
                &[1, 1, 1, 0],
                icmp(3, 1, 0, 0, &quote(&udp4)),
            ),
            Ok(unreachable(udp4_key, router(V4), 3, 1)),
        ),
        case(
            "fragmentation needed (3/4, MTU in the header) quoting our SYN",
            frame(from(V4, router(V4)), icmp(3, 4, 0, 1400, &quote(&syn4))),
            Ok(unreachable(
                tcp_key(V4, OUR_PORT, TCP_PORT),
                router(V4),
                3,
                4,
            )),
        ),
        case(
            "parameter problem (12) quoting our UDP probe: not ours",
            icmp_err(V4, router(V4), 12, 0, &quote(&udp4)),
            Err(XdpReason::NotOurs),
        ),
        case(
            "redirect (5) quoting our UDP probe: not ours",
            icmp_err(V4, router(V4), 5, 1, &quote(&udp4)),
            Err(XdpReason::NotOurs),
        ),
        case(
            "ICMPv6 port unreachable (1/4) quoting our IPv6 UDP probe",
            icmp_err(V6, target(V6), V6_UNREACH, 4, &quote(&udp6)),
            Ok(Answer {
                class: AnswerClass::Unreachable,
                key: StampKey {
                    local: addr6("2001:db8:0:1::10"),
                    remote: addr6("2001:db8:99::7"),
                    local_port: OUR_PORT + 3,
                    remote_port: UDP_PORT,
                    proto: UDP,
                    family: V6,
                    _pad: [0; 2],
                    seq: 0,
                },
                reporter: addr6("2001:db8:99::7"),
                answer_seq: 0,
                icmp_type: 1,
                icmp_code: 4,
                tcp_flags: 0,
                ttl: TTL_ERR,
                cookie_ok: false,
            }),
        ),
        case(
            "ICMPv6 address unreachable (1/3) from a router quoting the whole UDP probe",
            icmp_err(V6, router(V6), V6_UNREACH, 3, &udp6),
            Ok(unreachable(udp6_key, router(V6), 1, 3)),
        ),
        case(
            "ICMPv6 time exceeded (3/0) quoting our IPv6 SYN: cookie checked",
            icmp_err(V6, router(V6), V6_TIME_EXCEEDED, 0, &quote(&syn6)),
            Ok(unreachable(
                tcp_key(V6, OUR_PORT, TCP_PORT),
                router(V6),
                3,
                0,
            )),
        ),
        case(
            "ICMPv6 unreachable quoting our ICMPv6 echo request",
            icmp_err(V6, router(V6), V6_UNREACH, 3, &quote(&echo6)),
            Ok(unreachable(
                key(V6, ICMP_ID, 9, ICMPV6, 0),
                router(V6),
                1,
                3,
            )),
        ),
        case(
            "ICMPv6 unreachable quoting an IPv6 SYN with a wrong cookie: bad cookie",
            icmp_err(V6, router(V6), V6_UNREACH, 4, &quote(&bad_syn6)),
            Err(XdpReason::BadCookie),
        ),
        case(
            "ICMPv6 unreachable quoting someone else's UDP: not ours",
            icmp_err(
                V6,
                router(V6),
                V6_UNREACH,
                4,
                &quote(&raw_udp(V6, 5353, 53)),
            ),
            Err(XdpReason::NotOurs),
        ),
        case(
            "ICMPv6 packet too big (2) quoting our UDP probe: not ours",
            icmp_err(V6, router(V6), 2, 0, &quote(&udp6)),
            Err(XdpReason::NotOurs),
        ),
        case(
            "ICMPv6 quote cut inside the inner IPv6 header: malformed l4",
            icmp_err(V6, router(V6), V6_UNREACH, 4, &udp6[..39]),
            Err(XdpReason::MalformedL4),
        ),
        case(
            "ICMPv6 quote with 4 transport bytes: malformed l4",
            icmp_err(V6, router(V6), V6_UNREACH, 4, &udp6[..44]),
            Err(XdpReason::MalformedL4),
        ),
        case(
            "ICMPv6 quote with an IPv4 inner header: malformed l4",
            icmp_err(V6, router(V6), V6_UNREACH, 4, &quote(&udp4)),
            Err(XdpReason::MalformedL4),
        ),
    ];
    run(&table);
}

/// Set the protocol of a bare IPv4 packet (a quote).
fn l4_proto_raw(mut p: Vec<u8>, pr: u8) -> Vec<u8> {
    p[9] = pr;
    p
}

// ---------------------------------------------------------------------------------------
// classify: UDP
// ---------------------------------------------------------------------------------------

#[test]
fn udp_answers() {
    let table = [
        case(
            "UDP reply to a probe port (spelled out)",
            udp_reply(V4, OUR_PORT, UDP_PORT),
            Ok(Answer {
                class: AnswerClass::UdpReply,
                key: StampKey {
                    local: [198, 18, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    remote: [198, 19, 44, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    local_port: OUR_PORT,
                    remote_port: UDP_PORT,
                    proto: UDP,
                    family: V4,
                    _pad: [0; 2],
                    seq: 0,
                },
                reporter: [198, 19, 44, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                answer_seq: 0,
                icmp_type: 0,
                icmp_code: 0,
                tcp_flags: 0,
                ttl: TTL_IN,
                cookie_ok: false,
            }),
        ),
        case(
            "UDP reply with no payload to port_hi",
            frame(inbound(V4), udp(UDP_PORT, PORT_HI, &[])),
            Ok(udp_answer(V4, PORT_HI, UDP_PORT)),
        ),
        case(
            "UDP reply to port_lo",
            udp_reply(V4, PORT_LO, 123),
            Ok(udp_answer(V4, PORT_LO, 123)),
        ),
        case(
            "UDP to port 53: not ours",
            udp_reply(V4, UDP_PORT, OUR_PORT),
            Err(XdpReason::NotOurs),
        ),
        case(
            "UDP to port_lo - 1: not ours",
            udp_reply(V4, PORT_LO - 1, UDP_PORT),
            Err(XdpReason::NotOurs),
        ),
        case(
            "UDP to port_hi + 1: not ours",
            udp_reply(V4, PORT_HI + 1, UDP_PORT),
            Err(XdpReason::NotOurs),
        ),
        case(
            "IPv6 UDP reply to a probe port",
            udp_reply(V6, OUR_PORT, UDP_PORT),
            Ok(udp_answer(V6, OUR_PORT, UDP_PORT)),
        ),
        case(
            "IPv6 UDP to another port: not ours",
            udp_reply(V6, 5353, UDP_PORT),
            Err(XdpReason::NotOurs),
        ),
        // UDP carries no cookie: any source counts, and the key says who sent it.
        case(
            "UDP from a stranger to a probe port: udp reply keyed on the stranger",
            frame(
                Hdr {
                    src: stranger(V4),
                    ..inbound(V4)
                },
                udp(UDP_PORT, OUR_PORT, b"x"),
            ),
            Ok(Answer {
                key: StampKey {
                    remote: stranger(V4),
                    ..key(V4, OUR_PORT, UDP_PORT, UDP, 0)
                },
                reporter: stranger(V4),
                ..udp_answer(V4, OUR_PORT, UDP_PORT)
            }),
        ),
    ];
    run(&table);
}

// ---------------------------------------------------------------------------------------
// classify: VLAN tags
// ---------------------------------------------------------------------------------------

#[test]
fn vlan_tags() {
    let sa = good_syn_ack(V4, OUR_PORT, TCP_PORT);
    let tagged = build(
        inbound(V4),
        &[],
        Some(42),
        true,
        &tcp(
            TCP_PORT,
            OUR_PORT,
            SERVER_ISN,
            ck(V4, OUR_PORT, TCP_PORT).wrapping_add(1),
            SYN | ACK,
        ),
    );
    let table = [
        case(
            "802.1Q SYN-ACK (tag written by craft): open",
            tagged.clone(),
            Ok(open(V4, OUR_PORT, TCP_PORT)),
        ),
        case(
            "QinQ (0x88a8 outer, 0x8100 inner) SYN-ACK: open",
            qinq(&sa),
            Ok(open(V4, OUR_PORT, TCP_PORT)),
        ),
        case(
            "double 802.1Q (0x8100 over 0x8100) SYN-ACK: open",
            tag(&tag(&sa, 0x8100, 100), 0x8100, 200),
            Ok(open(V4, OUR_PORT, TCP_PORT)),
        ),
        case(
            "802.1ad single tag SYN-ACK: open",
            tag(&sa, 0x88a8, 5),
            Ok(open(V4, OUR_PORT, TCP_PORT)),
        ),
        case(
            "802.1Q IPv6 echo reply",
            tag(&echo_reply(V6, ICMP_ID, 2), 0x8100, 42),
            Ok(echo_answer(V6, 2)),
        ),
        case(
            "QinQ ICMP port unreachable quoting our UDP probe",
            qinq(&icmp_err(
                V4,
                target(V4),
                3,
                3,
                &quote(&raw_udp(V4, OUR_PORT, UDP_PORT)),
            )),
            Ok(unreachable(
                key(V4, OUR_PORT, UDP_PORT, UDP, 0),
                target(V4),
                3,
                3,
            )),
        ),
        case(
            "QinQ UDP reply",
            qinq(&udp_reply(V6, OUR_PORT, UDP_PORT)),
            Ok(udp_answer(V6, OUR_PORT, UDP_PORT)),
        ),
        case(
            "802.1Q tag truncated after the TPID: malformed eth",
            tagged[..14].to_vec(),
            Err(XdpReason::MalformedEth),
        ),
        case(
            "802.1Q tag truncated inside the inner ethertype: malformed eth",
            tagged[..17].to_vec(),
            Err(XdpReason::MalformedEth),
        ),
        case(
            "QinQ inner tag truncated: malformed eth",
            qinq(&sa)[..20].to_vec(),
            Err(XdpReason::MalformedEth),
        ),
        case(
            "802.1Q frame with the IPv4 header cut: malformed ipv4",
            tagged[..18 + 10].to_vec(),
            Err(XdpReason::MalformedIpv4),
        ),
        case(
            "802.1Q ARP: not ip",
            tag(&arp(), 0x8100, 42),
            Err(XdpReason::NotIp),
        ),
        case(
            "three tags: only two are unrolled, not ip",
            tag(&qinq(&sa), 0x88a8, 9),
            Err(XdpReason::NotIp),
        ),
    ];
    run(&table);
}

/// craft's 802.1Q tag and the test's `tag` helper agree, so QinQ rows built with the
/// helper are well-formed.
#[test]
fn craft_vlan_tag_matches_helper() {
    let l4 = tcp(TCP_PORT, OUR_PORT, 1, 2, SYN | ACK);
    let crafted = build(inbound(V4), &[], Some(42), true, &l4);
    let helper = tag(&build(inbound(V4), &[], None, true, &l4), 0x8100, 42);
    assert_eq!(crafted, helper);
    // The VLAN id is masked to 12 bits (PCP and DEI bits stay clear).
    let masked = build(inbound(V4), &[], Some(0xf02a), true, &l4);
    assert_eq!(masked[14..16], [0x00, 0x2a]);
}

// ---------------------------------------------------------------------------------------
// classify: IPv4 options
// ---------------------------------------------------------------------------------------

#[test]
fn ipv4_options() {
    let c = ck(V4, OUR_PORT, TCP_PORT).wrapping_add(1);
    let sa = tcp(TCP_PORT, OUR_PORT, SERVER_ISN, c, SYN | ACK);
    let nop_eol = [1, 1, 1, 0];
    let max_opts = [1u8; 40];
    let table = [
        case(
            "SYN-ACK with IHL 6 (NOP NOP NOP EOL): open",
            frame_opts(inbound(V4), &nop_eol, sa),
            Ok(open(V4, OUR_PORT, TCP_PORT)),
        ),
        case(
            "SYN-ACK with IHL 15 (40 bytes of options): open",
            frame_opts(inbound(V4), &max_opts, sa),
            Ok(open(V4, OUR_PORT, TCP_PORT)),
        ),
        case(
            "RST|ACK with IHL 8: closed",
            frame_opts(
                inbound(V4),
                &[1; 12],
                tcp(TCP_PORT, OUR_PORT, 0, c, RST | ACK),
            ),
            Ok(closed(V4, OUR_PORT, TCP_PORT)),
        ),
        case(
            "echo reply with IHL 7",
            frame_opts(inbound(V4), &[1; 8], icmp(0, 0, ICMP_ID, 4, PAYLOAD)),
            Ok(echo_answer(V4, 4)),
        ),
        case(
            "UDP reply with IHL 6",
            frame_opts(inbound(V4), &nop_eol, udp(UDP_PORT, OUR_PORT, b"x")),
            Ok(udp_answer(V4, OUR_PORT, UDP_PORT)),
        ),
        case(
            "SYN-ACK with IHL 6 and the TCP header cut: malformed l4",
            cut_l4(frame_opts(inbound(V4), &nop_eol, sa), 19),
            Err(XdpReason::MalformedL4),
        ),
        case(
            "SYN-ACK with IHL 6 to a port outside the range: not ours",
            frame_opts(
                inbound(V4),
                &nop_eol,
                tcp(TCP_PORT, 22, SERVER_ISN, c, SYN | ACK),
            ),
            Err(XdpReason::NotOurs),
        ),
    ];
    run(&table);
}

// ---------------------------------------------------------------------------------------
// classify: truncated and malformed headers
// ---------------------------------------------------------------------------------------

#[test]
fn malformed_headers() {
    let sa = good_syn_ack(V4, OUR_PORT, TCP_PORT);
    let sa6 = good_syn_ack(V6, OUR_PORT, TCP_PORT);
    let sa_len = u16::try_from(sa.len() - L3).expect("fits");
    let doff = L3 + 20 + 12;
    let table = [
        case(
            "empty frame: malformed eth",
            vec![],
            Err(XdpReason::MalformedEth),
        ),
        case(
            "13-byte frame: malformed eth",
            sa[..13].to_vec(),
            Err(XdpReason::MalformedEth),
        ),
        case(
            "Ethernet header only (IPv4 ethertype): malformed ipv4",
            sa[..14].to_vec(),
            Err(XdpReason::MalformedIpv4),
        ),
        case(
            "IPv4 header cut at 19 bytes: malformed ipv4",
            sa[..L3 + 19].to_vec(),
            Err(XdpReason::MalformedIpv4),
        ),
        case(
            "IPv4 IHL 4: malformed ipv4",
            patch(sa.clone(), L3, &[0x44]),
            Err(XdpReason::MalformedIpv4),
        ),
        case(
            "IPv4 IHL 0: malformed ipv4",
            patch(sa.clone(), L3, &[0x40]),
            Err(XdpReason::MalformedIpv4),
        ),
        case(
            "IPv4 IHL 15 pointing past the end of a 40-byte packet: malformed ipv4",
            patch(sa.clone(), L3, &[0x4f]),
            Err(XdpReason::MalformedIpv4),
        ),
        case(
            "IPv4 IHL 15 past the frame, total length matching it: malformed ipv4",
            patch(ipv4_total(sa.clone(), 60), L3, &[0x4f]),
            Err(XdpReason::MalformedIpv4),
        ),
        case(
            "IPv4 total length one past the frame: malformed ipv4",
            ipv4_total(sa.clone(), sa_len + 1),
            Err(XdpReason::MalformedIpv4),
        ),
        case(
            "IPv4 total length 0xffff: malformed ipv4",
            ipv4_total(sa.clone(), 0xffff),
            Err(XdpReason::MalformedIpv4),
        ),
        case(
            "IPv4 total length below the header length: malformed ipv4",
            ipv4_total(sa.clone(), 19),
            Err(XdpReason::MalformedIpv4),
        ),
        case(
            "IPv4 total length 0: malformed ipv4",
            ipv4_total(sa.clone(), 0),
            Err(XdpReason::MalformedIpv4),
        ),
        case(
            "IPv4 ethertype with version 6: malformed ipv4",
            patch(sa.clone(), L3, &[0x65]),
            Err(XdpReason::MalformedIpv4),
        ),
        case(
            "Ethernet header only (IPv6 ethertype): malformed ipv6",
            sa6[..14].to_vec(),
            Err(XdpReason::MalformedIpv6),
        ),
        case(
            "IPv6 header cut at 39 bytes: malformed ipv6",
            sa6[..L3 + 39].to_vec(),
            Err(XdpReason::MalformedIpv6),
        ),
        case(
            "IPv6 payload length one past the frame: malformed ipv6",
            patch(sa6.clone(), L3 + 4, &21u16.to_be_bytes()),
            Err(XdpReason::MalformedIpv6),
        ),
        case(
            "IPv6 ethertype with version 4: malformed ipv6",
            patch(sa6.clone(), L3, &[0x40]),
            Err(XdpReason::MalformedIpv6),
        ),
        case(
            "IPv4 packet with no transport bytes: malformed l4",
            cut_l4(sa.clone(), 0),
            Err(XdpReason::MalformedL4),
        ),
        case(
            "TCP header: ports only: malformed l4",
            cut_l4(sa.clone(), 4),
            Err(XdpReason::MalformedL4),
        ),
        case(
            "TCP header cut before the flags (13 bytes): malformed l4",
            cut_l4(sa.clone(), 13),
            Err(XdpReason::MalformedL4),
        ),
        case(
            "TCP header cut at 19 bytes: malformed l4",
            cut_l4(sa.clone(), 19),
            Err(XdpReason::MalformedL4),
        ),
        case(
            "TCP data offset 4: malformed l4",
            patch(sa.clone(), doff, &[0x40]),
            Err(XdpReason::MalformedL4),
        ),
        case(
            "TCP data offset 0: malformed l4",
            patch(sa.clone(), doff, &[0x00]),
            Err(XdpReason::MalformedL4),
        ),
        case(
            "TCP data offset 6 past the end of the frame: malformed l4",
            patch(sa.clone(), doff, &[0x60]),
            Err(XdpReason::MalformedL4),
        ),
        case(
            "TCP data offset 15 past the end of the frame: malformed l4",
            patch(sa.clone(), doff, &[0xf0]),
            Err(XdpReason::MalformedL4),
        ),
        case(
            "IPv6 TCP header cut at 19 bytes: malformed l4",
            cut_l4(sa6.clone(), 19),
            Err(XdpReason::MalformedL4),
        ),
        case(
            "IPv6 TCP data offset 4: malformed l4",
            patch(sa6.clone(), L3 + 40 + 12, &[0x40]),
            Err(XdpReason::MalformedL4),
        ),
        case(
            "UDP header cut at 7 bytes: malformed l4",
            cut_l4(udp_reply(V4, OUR_PORT, UDP_PORT), 7),
            Err(XdpReason::MalformedL4),
        ),
        case(
            "UDP header cut at 2 bytes: malformed l4",
            cut_l4(udp_reply(V4, OUR_PORT, UDP_PORT), 2),
            Err(XdpReason::MalformedL4),
        ),
        case(
            "IPv6 UDP header cut at 7 bytes: malformed l4",
            cut_l4(udp_reply(V6, OUR_PORT, UDP_PORT), 7),
            Err(XdpReason::MalformedL4),
        ),
        case(
            "ICMP echo reply header cut at 7 bytes: malformed l4",
            cut_l4(echo_reply(V4, ICMP_ID, 1), 7),
            Err(XdpReason::MalformedL4),
        ),
        case(
            "ICMP header cut at 1 byte: malformed l4",
            cut_l4(echo_reply(V4, ICMP_ID, 1), 1),
            Err(XdpReason::MalformedL4),
        ),
        case(
            "ICMPv6 echo reply header cut at 7 bytes: malformed l4",
            cut_l4(echo_reply(V6, ICMP_ID, 1), 7),
            Err(XdpReason::MalformedL4),
        ),
        case(
            "ICMP error header cut at 6 bytes: malformed l4",
            cut_l4(
                icmp_err(
                    V4,
                    router(V4),
                    3,
                    1,
                    &quote(&raw_udp(V4, OUR_PORT, UDP_PORT)),
                ),
                6,
            ),
            Err(XdpReason::MalformedL4),
        ),
    ];
    run(&table);
}

/// The transport header is part of the IP datagram: bytes after the IPv4 total length
/// (or the IPv6 payload length) are link-layer padding, not packet. A frame whose IP
/// length ends before the transport header does, with the rest in the Ethernet trailer,
/// is a truncated transport header (the kernel's own TCP/UDP input drops it after
/// trimming the skb to the IP length), even though the frame itself is long enough.
#[test]
fn transport_header_must_lie_inside_the_ip_datagram() {
    // Shrink the IP length field only: the frame keeps every byte, as if padded.
    let shrink = |f: Vec<u8>, l4_bytes: u16| -> Vec<u8> {
        if f[12..14] == [0x08, 0x00] {
            let hl = u16::from(f[L3] & 0x0f) * 4;
            ipv4_total(f, hl + l4_bytes)
        } else {
            patch(f, L3 + 4, &l4_bytes.to_be_bytes())
        }
    };
    let table = [
        case(
            "IPv4 total length 20, SYN-ACK in the padding: malformed l4",
            shrink(good_syn_ack(V4, OUR_PORT, TCP_PORT), 0),
            Err(XdpReason::MalformedL4),
        ),
        case(
            "IPv4 total length ends inside the TCP header: malformed l4",
            shrink(good_syn_ack(V4, OUR_PORT, TCP_PORT), 16),
            Err(XdpReason::MalformedL4),
        ),
        case(
            "IPv4 total length ends inside the UDP header: malformed l4",
            shrink(udp_reply(V4, OUR_PORT, UDP_PORT), 4),
            Err(XdpReason::MalformedL4),
        ),
        case(
            "IPv4 total length ends inside the ICMP header: malformed l4",
            shrink(echo_reply(V4, ICMP_ID, 1), 4),
            Err(XdpReason::MalformedL4),
        ),
        case(
            "IPv6 payload length 0, SYN-ACK in the padding: malformed l4",
            shrink(good_syn_ack(V6, OUR_PORT, TCP_PORT), 0),
            Err(XdpReason::MalformedL4),
        ),
        case(
            "IPv6 payload length ends inside the UDP header: malformed l4",
            shrink(udp_reply(V6, OUR_PORT, UDP_PORT), 6),
            Err(XdpReason::MalformedL4),
        ),
        // The complement: padding after a complete datagram is ignored.
        case(
            "complete SYN-ACK followed by padding: open",
            pad(good_syn_ack(V4, OUR_PORT, TCP_PORT), 80),
            Ok(open(V4, OUR_PORT, TCP_PORT)),
        ),
        case(
            "IPv4 total length covering exactly the UDP header: udp reply",
            shrink(udp_reply(V4, OUR_PORT, UDP_PORT), 8),
            Ok(udp_answer(V4, OUR_PORT, UDP_PORT)),
        ),
    ];
    run(&table);
}

/// Every strict prefix of a valid frame fails at the layer it cuts: before the L3 header
/// it is a malformed Ethernet header, after it the IP length no longer fits.
#[test]
fn every_truncation_is_rejected_at_the_right_layer() {
    let cfg = cfg();
    for f in answer_corpus() {
        let (l3, ethertype, ip_len) = layout(&f);
        let full = classify(f.as_slice(), &cfg);
        assert!(full.is_ok(), "corpus frame must classify: {full:?}");
        for len in 0..f.len() {
            let want = if len < l3 {
                Err(XdpReason::MalformedEth)
            } else if len >= l3 + ip_len {
                full
            } else if ethertype == 0x0800 {
                Err(XdpReason::MalformedIpv4)
            } else {
                Err(XdpReason::MalformedIpv6)
            };
            let got = classify(&f[..len], &cfg);
            assert_eq!(got, want, "prefix of {len} bytes of\n{}", hex(&f));
        }
    }
}

/// L3 offset, ethertype and IP length of a well-formed frame.
fn layout(f: &[u8]) -> (usize, u16, usize) {
    let mut off = 12;
    loop {
        let et = u16::from_be_bytes([f[off], f[off + 1]]);
        if et == 0x8100 || et == 0x88a8 {
            off += 4;
            continue;
        }
        let l3 = off + 2;
        let ip_len = if et == 0x0800 {
            usize::from(u16::from_be_bytes([f[l3 + 2], f[l3 + 3]]))
        } else {
            40 + usize::from(u16::from_be_bytes([f[l3 + 4], f[l3 + 5]]))
        };
        return (l3, et, ip_len);
    }
}

// ---------------------------------------------------------------------------------------
// classify: fragments, other protocols, disabled
// ---------------------------------------------------------------------------------------

#[test]
fn fragments_and_other_protocols() {
    let sa = good_syn_ack(V4, OUR_PORT, TCP_PORT);
    let udp4 = udp_reply(V4, OUR_PORT, UDP_PORT);
    let table = [
        case(
            "IPv4 first fragment (MF set): fragment",
            ipv4_frag(sa.clone(), 0x2000),
            Err(XdpReason::Fragment),
        ),
        case(
            "IPv4 MF with DF: fragment",
            ipv4_frag(sa.clone(), 0x6000),
            Err(XdpReason::Fragment),
        ),
        case(
            "IPv4 fragment offset 1, MF clear (last fragment): fragment",
            ipv4_frag(sa.clone(), 0x0001),
            Err(XdpReason::Fragment),
        ),
        case(
            "IPv4 fragment offset 185 with MF: fragment",
            ipv4_frag(udp4.clone(), 0x20b9),
            Err(XdpReason::Fragment),
        ),
        case(
            "IPv4 DF only is not a fragment: open",
            ipv4_frag(sa.clone(), 0x4000),
            Ok(open(V4, OUR_PORT, TCP_PORT)),
        ),
        case(
            "IPv4 no flags at all: open",
            ipv4_frag(sa.clone(), 0x0000),
            Ok(open(V4, OUR_PORT, TCP_PORT)),
        ),
        case(
            "IPv4 reserved flag bit is not a fragment: open",
            ipv4_frag(sa.clone(), 0xc000),
            Ok(open(V4, OUR_PORT, TCP_PORT)),
        ),
        case(
            "IPv6 with a fragment header (next header 44): fragment",
            l4_proto(good_syn_ack(V6, OUR_PORT, TCP_PORT), 44),
            Err(XdpReason::Fragment),
        ),
        case("ARP: not ip", arp(), Err(XdpReason::NotIp)),
        case(
            "LLDP ethertype (0x88cc): not ip",
            patch(sa.clone(), 12, &[0x88, 0xcc]),
            Err(XdpReason::NotIp),
        ),
        case(
            "IPv4 GRE (47): other l4",
            l4_proto(udp4.clone(), 47),
            Err(XdpReason::OtherL4),
        ),
        case(
            "IPv4 carrying ICMPv6 (58): other l4",
            l4_proto(echo_reply(V4, ICMP_ID, 1), 58),
            Err(XdpReason::OtherL4),
        ),
        case(
            "IPv6 carrying ICMP (1): other l4",
            l4_proto(echo_reply(V6, ICMP_ID, 1), 1),
            Err(XdpReason::OtherL4),
        ),
        case(
            "IPv6 hop-by-hop options header (0): other l4",
            l4_proto(udp_reply(V6, OUR_PORT, UDP_PORT), 0),
            Err(XdpReason::OtherL4),
        ),
        case(
            "IPv6 no next header (59): other l4",
            l4_proto(udp_reply(V6, OUR_PORT, UDP_PORT), 59),
            Err(XdpReason::OtherL4),
        ),
    ];
    run(&table);
}

#[test]
fn disabled_config_passes_everything() {
    let off = ProbeConfig {
        enabled: 0,
        ..cfg()
    };
    let table = [
        case(
            "valid SYN-ACK",
            good_syn_ack(V4, OUR_PORT, TCP_PORT),
            Err(XdpReason::Disabled),
        ),
        case(
            "valid echo reply",
            echo_reply(V6, ICMP_ID, 1),
            Err(XdpReason::Disabled),
        ),
        case("empty frame", vec![], Err(XdpReason::Disabled)),
        case("ARP", arp(), Err(XdpReason::Disabled)),
    ];
    run_with(&off, &table);
    run_with(
        &ProbeConfig::default(),
        &[case(
            "default (all-zero) config",
            good_syn_ack(V4, OUR_PORT, TCP_PORT),
            Err(XdpReason::Disabled),
        )],
    );
    assert_eq!(
        classify_egress(syn_probe(V4, OUR_PORT, TCP_PORT).as_slice(), &off),
        Err(TcReason::Disabled)
    );
    assert_eq!(
        classify_egress(&[0u8; 0][..], &ProbeConfig::default()),
        Err(TcReason::Disabled)
    );
}

// ---------------------------------------------------------------------------------------
// classify_egress
// ---------------------------------------------------------------------------------------

#[test]
fn egress() {
    let syn = syn_probe(V4, OUR_PORT, TCP_PORT);
    let syn_key = tcp_key(V4, OUR_PORT, TCP_PORT);
    let table = [
        case(
            "our SYN (spelled out): stamped syn",
            syn.clone(),
            Ok((
                StampKey {
                    local: [198, 18, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    remote: [198, 19, 44, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    local_port: 40007,
                    remote_port: 443,
                    proto: 6,
                    family: 4,
                    _pad: [0; 2],
                    seq: ck(V4, OUR_PORT, TCP_PORT),
                },
                TcReason::StampedSyn,
            )),
        ),
        case(
            "our IPv6 SYN: stamped syn",
            syn_probe(V6, OUR_PORT, TCP_PORT),
            Ok((tcp_key(V6, OUR_PORT, TCP_PORT), TcReason::StampedSyn)),
        ),
        case(
            "SYN from port_lo: stamped syn",
            syn_probe(V4, PORT_LO, 80),
            Ok((tcp_key(V4, PORT_LO, 80), TcReason::StampedSyn)),
        ),
        case(
            "SYN from port_hi: stamped syn",
            syn_probe(V4, PORT_HI, 80),
            Ok((tcp_key(V4, PORT_HI, 80), TcReason::StampedSyn)),
        ),
        case(
            "802.1Q SYN: stamped syn",
            tag(&syn, 0x8100, 42),
            Ok((syn_key, TcReason::StampedSyn)),
        ),
        case(
            "QinQ SYN: stamped syn",
            qinq(&syn),
            Ok((syn_key, TcReason::StampedSyn)),
        ),
        case(
            "SYN with IPv4 options: stamped syn",
            frame_opts(outbound(V4), &[1, 1, 1, 0], syn_l4(V4, OUR_PORT, TCP_PORT)),
            Ok((syn_key, TcReason::StampedSyn)),
        ),
        case(
            "SYN from an ephemeral port (51000): not ours",
            frame(outbound(V4), tcp(51000, TCP_PORT, 1, 0, SYN)),
            Err(TcReason::NotOurs),
        ),
        case(
            "SYN from port_lo - 1: not ours",
            syn_probe(V4, PORT_LO - 1, TCP_PORT),
            Err(TcReason::NotOurs),
        ),
        case(
            "SYN from port_hi + 1: not ours",
            syn_probe(V4, PORT_HI + 1, TCP_PORT),
            Err(TcReason::NotOurs),
        ),
        case(
            "outgoing SYN-ACK from a probe port: not ours",
            frame(outbound(V4), tcp(OUR_PORT, TCP_PORT, 1, 2, SYN | ACK)),
            Err(TcReason::NotOurs),
        ),
        case(
            "outgoing RST from a probe port: not ours",
            frame(outbound(V4), tcp(OUR_PORT, TCP_PORT, 1, 0, RST)),
            Err(TcReason::NotOurs),
        ),
        case(
            "outgoing RST|ACK from a probe port: not ours",
            frame(outbound(V4), tcp(OUR_PORT, TCP_PORT, 1, 2, RST | ACK)),
            Err(TcReason::NotOurs),
        ),
        case(
            "outgoing ACK from a probe port: not ours",
            frame(outbound(V4), tcp(OUR_PORT, TCP_PORT, 1, 2, ACK)),
            Err(TcReason::NotOurs),
        ),
        case(
            "our echo request: stamped echo",
            echo_probe(V4, ICMP_ID, 5),
            Ok((key(V4, ICMP_ID, 5, ICMP, 0), TcReason::StampedEcho)),
        ),
        case(
            "our ICMPv6 echo request: stamped echo",
            echo_probe(V6, ICMP_ID, 5),
            Ok((key(V6, ICMP_ID, 5, ICMPV6, 0), TcReason::StampedEcho)),
        ),
        case(
            "QinQ echo request: stamped echo",
            qinq(&echo_probe(V4, ICMP_ID, 5)),
            Ok((key(V4, ICMP_ID, 5, ICMP, 0), TcReason::StampedEcho)),
        ),
        case(
            "echo request with another id: not ours",
            echo_probe(V4, 0x0bad, 5),
            Err(TcReason::NotOurs),
        ),
        case(
            "outgoing echo reply with our id: not ours",
            frame(outbound(V4), icmp(0, 0, ICMP_ID, 5, PAYLOAD)),
            Err(TcReason::NotOurs),
        ),
        case(
            "outgoing ICMPv6 echo reply with our id: not ours",
            frame(outbound(V6), icmp(129, 0, ICMP_ID, 5, PAYLOAD)),
            Err(TcReason::NotOurs),
        ),
        case(
            "outgoing port unreachable: not ours",
            frame(
                outbound(V4),
                icmp(
                    3,
                    3,
                    0,
                    0,
                    &quote(&raw(inbound(V4), udp(53, OUR_PORT, b"q"))),
                ),
            ),
            Err(TcReason::NotOurs),
        ),
        case(
            "our UDP probe: stamped udp",
            udp_probe(V4, OUR_PORT, UDP_PORT),
            Ok((key(V4, OUR_PORT, UDP_PORT, UDP, 0), TcReason::StampedUdp)),
        ),
        case(
            "our IPv6 UDP probe: stamped udp",
            udp_probe(V6, OUR_PORT, UDP_PORT),
            Ok((key(V6, OUR_PORT, UDP_PORT, UDP, 0), TcReason::StampedUdp)),
        ),
        case(
            "UDP from port 5353: not ours",
            udp_probe(V4, 5353, UDP_PORT),
            Err(TcReason::NotOurs),
        ),
        case("ARP: not ours", arp(), Err(TcReason::NotOurs)),
        case(
            "IPv4 fragment of our SYN: not ours",
            ipv4_frag(syn.clone(), 0x2000),
            Err(TcReason::NotOurs),
        ),
        case(
            "IPv6 fragment header: not ours",
            l4_proto(syn_probe(V6, OUR_PORT, TCP_PORT), 44),
            Err(TcReason::NotOurs),
        ),
        case(
            "GRE: not ours",
            l4_proto(udp_probe(V4, OUR_PORT, UDP_PORT), 47),
            Err(TcReason::NotOurs),
        ),
        case("empty frame: malformed", vec![], Err(TcReason::Malformed)),
        case(
            "13-byte frame: malformed",
            syn[..13].to_vec(),
            Err(TcReason::Malformed),
        ),
        case(
            "802.1Q tag truncated: malformed",
            tag(&syn, 0x8100, 1)[..16].to_vec(),
            Err(TcReason::Malformed),
        ),
        case(
            "IPv4 header cut: malformed",
            syn[..L3 + 12].to_vec(),
            Err(TcReason::Malformed),
        ),
        case(
            "IPv4 IHL 4: malformed",
            patch(syn.clone(), L3, &[0x44]),
            Err(TcReason::Malformed),
        ),
        case(
            "IPv4 total length past the frame: malformed",
            ipv4_total(syn.clone(), 41),
            Err(TcReason::Malformed),
        ),
        case(
            "IPv6 header cut: malformed",
            syn_probe(V6, OUR_PORT, TCP_PORT)[..L3 + 30].to_vec(),
            Err(TcReason::Malformed),
        ),
        case(
            "SYN cut before the flags (13 bytes): malformed",
            cut_l4(syn.clone(), 13),
            Err(TcReason::Malformed),
        ),
        case(
            "SYN cut to the source port: malformed",
            cut_l4(syn.clone(), 2),
            Err(TcReason::Malformed),
        ),
        case(
            "echo request cut at 7 bytes: malformed",
            cut_l4(echo_probe(V4, ICMP_ID, 5), 7),
            Err(TcReason::Malformed),
        ),
        case(
            "UDP probe cut at 3 bytes: malformed",
            cut_l4(udp_probe(V4, OUR_PORT, UDP_PORT), 3),
            Err(TcReason::Malformed),
        ),
    ];
    run_egress(&table);
}

/// Every strict prefix of one of our probes is rejected as malformed.
#[test]
fn every_truncated_probe_is_malformed() {
    let cfg = cfg();
    for f in probe_corpus() {
        assert!(classify_egress(f.as_slice(), &cfg).is_ok());
        for len in 0..f.len() {
            assert_eq!(
                classify_egress(&f[..len], &cfg),
                Err(TcReason::Malformed),
                "prefix of {len} bytes of\n{}",
                hex(&f)
            );
        }
    }
}

/// The stamp-matching contract: the key TC stores for a probe is exactly the key XDP
/// rebuilds from every kind of answer to it.
#[test]
fn egress_key_equals_answer_key() {
    let cfg = cfg();
    let egress_key = |f: &[u8], want: TcReason| -> StampKey {
        let (k, r) = classify_egress(f, &cfg).expect("probe must be stamped");
        assert_eq!(r, want);
        k
    };
    let answer_key = |f: &[u8], class: AnswerClass| -> StampKey {
        let a = classify(f, &cfg).expect("answer must classify");
        assert_eq!(a.class, class);
        a.key
    };
    for fam in [V4, V6] {
        for (our, their) in [(PORT_LO, 80), (OUR_PORT, TCP_PORT), (PORT_HI, 65535)] {
            let c = ck(fam, our, their).wrapping_add(1);
            let probe = syn_probe(fam, our, their);
            let k = egress_key(&probe, TcReason::StampedSyn);
            assert_eq!(egress_key(&qinq(&probe), TcReason::StampedSyn), k);
            let raw_probe = raw_syn(fam, our, their);
            let answers = [
                (syn_ack(fam, our, their, c), AnswerClass::Open),
                (rst(fam, our, their, c, RST | ACK), AnswerClass::Closed),
                (
                    icmp_err(fam, router(fam), unreach_type(fam), 1, &quote(&raw_probe)),
                    AnswerClass::Unreachable,
                ),
                (
                    icmp_err(fam, target(fam), unreach_type(fam), 0, &raw_probe),
                    AnswerClass::Unreachable,
                ),
            ];
            for (a, class) in answers {
                assert_eq!(answer_key(&a, class), k, "{class:?} to {our}->{their}");
                assert_eq!(answer_key(&tag(&a, 0x8100, 3), class), k);
            }
        }
        for seq in [0, 1, 0x7fff, 0xffff] {
            let probe = echo_probe(fam, ICMP_ID, seq);
            let k = egress_key(&probe, TcReason::StampedEcho);
            let quoted = quote(&raw_echo(fam, ICMP_ID, seq));
            assert_eq!(
                answer_key(&echo_reply(fam, ICMP_ID, seq), AnswerClass::EchoReply),
                k
            );
            assert_eq!(
                answer_key(
                    &icmp_err(fam, router(fam), unreach_type(fam), 0, &quoted),
                    AnswerClass::Unreachable
                ),
                k
            );
        }
        for (our, their) in [(PORT_LO, 53), (OUR_PORT, 123), (PORT_HI, 33434)] {
            let probe = udp_probe(fam, our, their);
            let k = egress_key(&probe, TcReason::StampedUdp);
            assert_eq!(
                answer_key(&udp_reply(fam, our, their), AnswerClass::UdpReply),
                k
            );
            let quoted = quote(&raw_udp(fam, our, their));
            let code = if fam == V4 { 3 } else { 4 };
            assert_eq!(
                answer_key(
                    &icmp_err(fam, target(fam), unreach_type(fam), code, &quoted),
                    AnswerClass::Unreachable
                ),
                k
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// craft::build checksums
// ---------------------------------------------------------------------------------------

/// One's-complement sum of 16-bit big-endian words, folded (independent of craft's).
fn ones_sum(acc: u64, data: &[u8]) -> u64 {
    let mut s = acc;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        s += u64::from(w);
    }
    s
}

fn folds_to_ffff(mut s: u64) -> bool {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s == 0xffff
}

/// Verify the IPv4 header checksum and the transport checksum of a frame.
fn verify_checksums(f: &[u8]) -> Result<(), String> {
    let (l3, et, ip_len) = layout(f);
    let ip = &f[l3..l3 + ip_len];
    let (l4, pr, pseudo) = if et == 0x0800 {
        let hl = usize::from(ip[0] & 0x0f) * 4;
        if !folds_to_ffff(ones_sum(0, &ip[..hl])) {
            return Err("IPv4 header checksum".into());
        }
        let l4 = &ip[hl..];
        let mut p = ones_sum(0, &ip[12..20]);
        p += u64::from(ip[9]) + l4.len() as u64;
        (l4, ip[9], p)
    } else {
        let l4 = &ip[40..];
        let mut p = ones_sum(0, &ip[8..40]);
        p += u64::from(ip[6]) + l4.len() as u64;
        (l4, ip[6], p)
    };
    let s = if pr == ICMP {
        ones_sum(0, l4)
    } else {
        ones_sum(pseudo, l4)
    };
    if !folds_to_ffff(s) {
        return Err(format!("transport checksum (proto {pr})"));
    }
    if pr == UDP && l4[6..8] == [0, 0] {
        return Err("UDP checksum 0 (means none)".into());
    }
    Ok(())
}

#[test]
fn craft_checksums_verify() {
    let mut frames = answer_corpus();
    frames.extend(probe_corpus());
    // Odd-length payloads exercise the padding of the last byte.
    frames.push(frame(outbound(V4), udp(OUR_PORT, 53, b"odd")));
    frames.push(frame(outbound(V6), udp(OUR_PORT, 53, b"odd")));
    frames.push(frame(outbound(V4), icmp(8, 0, ICMP_ID, 1, b"odd")));
    frames.push(frame(outbound(V6), icmp(128, 0, ICMP_ID, 1, b"odd")));
    for f in &frames {
        if let Err(e) = verify_checksums(f) {
            panic!("{e} does not verify in\n{}", hex(f));
        }
    }
    // A UDP payload whose checksum computes to zero must be sent as 0xffff. Search a
    // small payload space for one (deterministic).
    let mut found = false;
    for x in 0..=u16::MAX {
        let p = x.to_be_bytes();
        let f = frame(outbound(V4), udp(OUR_PORT, 53, &p));
        let l4 = l4_off(&f);
        if f[l4 + 6..l4 + 8] == [0xff, 0xff] {
            verify_checksums(&f).unwrap_or_else(|e| panic!("{e}"));
            found = true;
            break;
        }
    }
    assert!(found, "no payload with an all-ones UDP checksum found");
}

// ---------------------------------------------------------------------------------------
// Property tests: random and mutated frames
// ---------------------------------------------------------------------------------------

/// xorshift64* (deterministic, no dependencies).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    fn byte(&mut self) -> u8 {
        (self.next_u64() >> 56) as u8
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
}

/// Valid answers of every class, family and encapsulation.
fn answer_corpus() -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    for fam in [V4, V6] {
        let c = ck(fam, OUR_PORT, TCP_PORT).wrapping_add(1);
        let answers = [
            good_syn_ack(fam, OUR_PORT, TCP_PORT),
            good_syn_ack(fam, PORT_LO, 80),
            good_syn_ack(fam, PORT_HI, 22),
            rst(fam, OUR_PORT, TCP_PORT, c, RST | ACK),
            echo_reply(fam, ICMP_ID, 77),
            udp_reply(fam, OUR_PORT, UDP_PORT),
            icmp_err(
                fam,
                router(fam),
                unreach_type(fam),
                1,
                &quote(&raw_syn(fam, OUR_PORT, TCP_PORT)),
            ),
            icmp_err(
                fam,
                target(fam),
                unreach_type(fam),
                3,
                &raw_udp(fam, OUR_PORT, UDP_PORT),
            ),
            icmp_err(
                fam,
                router(fam),
                if fam == V4 {
                    V4_TIME_EXCEEDED
                } else {
                    V6_TIME_EXCEEDED
                },
                0,
                &quote(&raw_echo(fam, ICMP_ID, 3)),
            ),
        ];
        for a in answers {
            v.push(tag(&a, 0x8100, 42));
            v.push(qinq(&a));
            v.push(a);
        }
    }
    v.push(frame_opts(
        inbound(V4),
        &[1; 40],
        tcp(
            TCP_PORT,
            OUR_PORT,
            SERVER_ISN,
            ck(V4, OUR_PORT, TCP_PORT).wrapping_add(1),
            SYN | ACK,
        ),
    ));
    v.push(pad(
        rst(
            V4,
            OUR_PORT,
            TCP_PORT,
            ck(V4, OUR_PORT, TCP_PORT).wrapping_add(1),
            RST | ACK,
        ),
        60,
    ));
    v
}

/// Our probes, as TC sees them.
fn probe_corpus() -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    for fam in [V4, V6] {
        for p in [
            syn_probe(fam, OUR_PORT, TCP_PORT),
            udp_probe(fam, OUR_PORT, UDP_PORT),
            echo_probe(fam, ICMP_ID, 12),
        ] {
            v.push(tag(&p, 0x8100, 42));
            v.push(qinq(&p));
            v.push(p);
        }
    }
    v
}

/// What must hold of any answer `classify` accepts, whatever the frame.
fn check_invariants(cfg: &ProbeConfig, a: &Answer) -> Result<(), String> {
    let k = &a.key;
    let v4_clean = |x: &[u8; 16]| x[4..].iter().all(|b| *b == 0);
    match k.family {
        V4 if v4_clean(&k.local) && v4_clean(&k.remote) && v4_clean(&a.reporter) => {}
        V6 => {}
        f => return Err(format!("family {f} or IPv4 address tail not zero")),
    }
    if k._pad != [0, 0] {
        return Err("key padding not zero".into());
    }
    let cookie_valid = || {
        k.seq
            == cookie(
                &cfg.cookie_key,
                &k.local,
                &k.remote,
                k.local_port,
                k.remote_port,
            )
    };
    match a.class {
        AnswerClass::Open | AnswerClass::Closed => {
            if k.proto != TCP {
                return Err("TCP answer with a non-TCP key".into());
            }
            if !cfg.owns_port(k.local_port) {
                return Err("TCP answer to a port outside the range".into());
            }
            if !a.cookie_ok || !cookie_valid() {
                return Err("TCP answer whose cookie does not validate".into());
            }
            if a.tcp_flags & ACK == 0 {
                return Err("TCP answer without ACK".into());
            }
            let want = if a.class == AnswerClass::Closed {
                RST
            } else {
                SYN | ACK
            };
            if a.tcp_flags & want != want {
                return Err("TCP flags do not match the class".into());
            }
            if a.reporter != k.remote {
                return Err("TCP answer reporter is not the remote".into());
            }
        }
        AnswerClass::EchoReply => {
            if k.local_port != cfg.icmp_id {
                return Err("echo reply with another id".into());
            }
            let (pr, t) = if k.family == V4 {
                (ICMP, 0)
            } else {
                (ICMPV6, 129)
            };
            if k.proto != pr || a.icmp_type != t {
                return Err("echo reply protocol/type mismatch".into());
            }
            if a.cookie_ok || k.seq != 0 || a.reporter != k.remote {
                return Err("echo reply fields".into());
            }
        }
        AnswerClass::UdpReply => {
            if k.proto != UDP || !cfg.owns_port(k.local_port) {
                return Err("UDP reply to a port outside the range".into());
            }
            if a.cookie_ok || k.seq != 0 || a.reporter != k.remote {
                return Err("UDP reply fields".into());
            }
        }
        AnswerClass::Unreachable => {
            let error_type = if k.family == V4 {
                matches!(a.icmp_type, 3 | 11)
            } else {
                matches!(a.icmp_type, 1 | 3)
            };
            if !error_type {
                return Err(format!("unreachable with ICMP type {}", a.icmp_type));
            }
            match k.proto {
                TCP => {
                    if !cfg.owns_port(k.local_port) || !a.cookie_ok || !cookie_valid() {
                        return Err("quoted TCP probe not ours or cookie invalid".into());
                    }
                }
                UDP => {
                    if !cfg.owns_port(k.local_port) || a.cookie_ok || k.seq != 0 {
                        return Err("quoted UDP probe not ours".into());
                    }
                }
                ICMP | ICMPV6 => {
                    if k.local_port != cfg.icmp_id || a.cookie_ok || k.seq != 0 {
                        return Err("quoted echo request with another id".into());
                    }
                }
                p => return Err(format!("quoted protocol {p}")),
            }
        }
    }
    Ok(())
}

fn assert_sound(cfg: &ProbeConfig, f: &[u8], what: &str) -> bool {
    // Must not panic, whatever the bytes; egress too.
    let _ = classify_egress(f, cfg);
    match classify(f, cfg) {
        Ok(a) => {
            if let Err(e) = check_invariants(cfg, &a) {
                panic!("{what}: {e}\n{a:?}\nframe:\n{}", hex(f));
            }
            true
        }
        Err(_) => false,
    }
}

#[test]
fn random_frames_never_panic_nor_yield_bogus_answers() {
    let cfg = cfg();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut accepted = 0;
    for _ in 0..5000 {
        let len = rng.below(160);
        let mut f: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        // Three in four frames get plausible headers so the parser gets past L2/L3.
        if rng.below(4) != 0 {
            let mut set = |off: usize, b: u8| {
                if let Some(x) = f.get_mut(off) {
                    *x = b;
                }
            };
            let et: u16 = rng.pick(&[0x0800, 0x86dd, 0x8100, 0x88a8]);
            set(12, (et >> 8) as u8);
            set(13, et as u8);
            let mut l3 = L3;
            if et == 0x8100 || et == 0x88a8 {
                let inner: u16 = rng.pick(&[0x0800, 0x86dd, 0x8100]);
                set(16, (inner >> 8) as u8);
                set(17, inner as u8);
                l3 = 18;
                if inner == 0x8100 {
                    let ip: u16 = rng.pick(&[0x0800, 0x86dd]);
                    set(20, (ip >> 8) as u8);
                    set(21, ip as u8);
                    l3 = 22;
                }
            }
            let pr = rng.pick(&[ICMP, TCP, UDP, ICMPV6]);
            let port = PORT_LO + u16::try_from(rng.below(100)).expect("fits");
            let v6 = rng.below(2) == 1;
            let l4 = if v6 {
                set(l3, 0x60);
                set(l3 + 6, pr);
                l3 + 40
            } else {
                let ihl = 5 + rng.below(3);
                set(l3, 0x40 | ihl as u8);
                set(l3 + 6, 0);
                set(l3 + 9, pr);
                l3 + ihl * 4
            };
            let ip_len = len.saturating_sub(l3);
            let len_field = if v6 {
                ip_len.saturating_sub(40)
            } else {
                ip_len
            };
            let len_off = if v6 { l3 + 4 } else { l3 + 2 };
            set(len_off, (len_field >> 8) as u8);
            set(len_off + 1, len_field as u8);
            set(l4 + 2, (port >> 8) as u8);
            set(l4 + 3, port as u8);
        }
        if assert_sound(&cfg, &f, "random frame") {
            accepted += 1;
        }
    }
    // Accepting some random frames is fine (UDP to a probe port needs no cookie); the
    // invariants above are what matters. Report the count for the curious.
    eprintln!("random frames accepted: {accepted}");
}

#[test]
fn mutated_answers_never_panic_nor_yield_bogus_answers() {
    let cfg = cfg();
    let corpus = answer_corpus();
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let mut accepted = 0;
    const ROUNDS: usize = 20_000;
    for _ in 0..ROUNDS {
        let mut f = corpus[rng.below(corpus.len())].clone();
        for _ in 0..1 + rng.below(4) {
            match rng.below(6) {
                0..=2 if !f.is_empty() => {
                    // Bit flip, biased towards the headers.
                    let span = if rng.below(2) == 0 {
                        f.len().min(80)
                    } else {
                        f.len()
                    };
                    let i = rng.below(span);
                    f[i] ^= 1 << rng.below(8);
                }
                3 if !f.is_empty() => {
                    let i = rng.below(f.len());
                    f[i] = rng.byte();
                }
                4 => {
                    let n = rng.below(f.len() + 1);
                    f.truncate(n);
                }
                _ => {
                    for _ in 0..rng.below(16) {
                        f.push(rng.byte());
                    }
                }
            }
        }
        if assert_sound(&cfg, &f, "mutated answer") {
            accepted += 1;
        }
    }
    // Mutations that miss every checked field keep the answer valid: make sure the
    // invariants were actually exercised on accepted frames.
    assert!(
        accepted > ROUNDS / 20,
        "only {accepted} of {ROUNDS} mutated frames were accepted"
    );
}

/// Exhaustive: every single-bit flip of every corpus answer.
#[test]
fn every_bit_flip_of_an_answer_is_sound() {
    let cfg = cfg();
    for f in answer_corpus() {
        for i in 0..f.len() {
            for bit in 0..8 {
                let mut m = f.clone();
                m[i] ^= 1 << bit;
                assert_sound(&cfg, &m, "bit flip");
            }
        }
    }
}

/// A flipped bit in any field the cookie covers (addresses, ports, ack) turns a valid
/// TCP answer into a rejected one: never into a different accepted answer.
#[test]
fn bit_flips_in_cookie_fields_are_rejected() {
    let cfg = cfg();
    for fam in [V4, V6] {
        let f = good_syn_ack(fam, OUR_PORT, TCP_PORT);
        let l4 = l4_off(&f);
        let addr_range = if fam == V4 {
            L3 + 12..L3 + 20
        } else {
            L3 + 8..L3 + 40
        };
        let fields = addr_range.chain(l4..l4 + 4).chain(l4 + 8..l4 + 12);
        for i in fields {
            for bit in 0..8 {
                let mut m = f.clone();
                m[i] ^= 1 << bit;
                let got = classify(m.as_slice(), &cfg);
                assert!(
                    matches!(got, Err(XdpReason::BadCookie | XdpReason::NotOurs)),
                    "flip of bit {bit} at byte {i}: {got:?}"
                );
            }
        }
    }
}
