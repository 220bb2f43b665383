//! Table-driven tests of the XDP program through `BPF_PROG_TEST_RUN` (katran style):
//! each row is a frame, the expected verdict, the expected record (if any) and the one
//! exclusive counter it must land in. Runs the real object in this kernel, no attach.

use std::net::IpAddr;

use probe_common::{
    counters::{TcReason, XdpReason},
    craft::L4,
    parse::tcp_flags::{ACK, RST, SYN},
    record::{flags, AnswerClass, AnswerRecord},
};
use sonde::{
    ebpf::{self, KernelProbes},
    lab,
};
use sonde_tests::frames::*;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// What a row expects besides verdict and counter: the record's class and the probe key
/// fields that identify the probe it answers.
struct Rec {
    class: AnswerClass,
    remote: IpAddr,
    local_port: u16,
    remote_port: u16,
    cookie_ok: bool,
}

struct Row {
    what: &'static str,
    frame: Vec<u8>,
    verdict: u32,
    reason: XdpReason,
    record: Option<Rec>,
}

fn load() -> Option<KernelProbes> {
    if !lab::kernel_programs_or_skip() {
        return None;
    }
    let mut k = KernelProbes::load().unwrap_or_else(|e| panic!("load: {}", ebpf::error_chain(&e)));
    k.set_config(&config()).expect("set config");
    Some(k)
}

fn v4(a: std::net::Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}
fn v6(a: std::net::Ipv6Addr) -> IpAddr {
    IpAddr::V6(a)
}

fn rows() -> Vec<Row> {
    let (us, them) = (v4(US4), v4(THEM4));
    let (us6, them6) = (v6(US6), v6(THEM6));
    let ck = |s, d| cookie_of(us, them, s, d);
    let id = config().icmp_id;
    let mut rows = vec![
        Row {
            what: "SYN-ACK, valid cookie",
            frame: syn_ack(us, them, 61000, 80),
            verdict: XDP_PASS,
            reason: XdpReason::AnswerOpen,
            record: Some(Rec {
                class: AnswerClass::Open,
                remote: them,
                local_port: 61000,
                remote_port: 80,
                cookie_ok: true,
            }),
        },
        Row {
            what: "RST-ACK, valid cookie",
            frame: tcp_answer(
                Some(&eth(None)),
                us,
                them,
                61001,
                81,
                RST | ACK,
                ck(61001, 81).wrapping_add(1),
            ),
            verdict: XDP_DROP,
            reason: XdpReason::AnswerClosed,
            record: Some(Rec {
                class: AnswerClass::Closed,
                remote: them,
                local_port: 61001,
                remote_port: 81,
                cookie_ok: true,
            }),
        },
        Row {
            what: "SYN-ACK, wrong cookie",
            frame: tcp_answer(
                Some(&eth(None)),
                us,
                them,
                61000,
                80,
                SYN | ACK,
                ck(61000, 80).wrapping_add(2),
            ),
            verdict: XDP_DROP,
            reason: XdpReason::BadCookie,
            record: None,
        },
        Row {
            what: "RST without ACK",
            frame: tcp_answer(Some(&eth(None)), us, them, 61000, 80, RST, 0),
            verdict: XDP_DROP,
            reason: XdpReason::BadCookie,
            record: None,
        },
        Row {
            what: "SYN-ACK to a port outside our range",
            frame: syn_ack(us, them, 40000, 80),
            verdict: XDP_PASS,
            reason: XdpReason::NotOurs,
            record: None,
        },
        Row {
            what: "pure ACK to our port",
            frame: tcp_answer(Some(&eth(None)), us, them, 61000, 80, ACK, 5),
            verdict: XDP_PASS,
            reason: XdpReason::OtherTcp,
            record: None,
        },
        Row {
            what: "SYN-ACK in an 802.1Q VLAN",
            frame: tcp_answer(
                Some(&eth(Some(42))),
                us,
                them,
                61002,
                443,
                SYN | ACK,
                ck(61002, 443).wrapping_add(1),
            ),
            verdict: XDP_PASS,
            reason: XdpReason::AnswerOpen,
            record: Some(Rec {
                class: AnswerClass::Open,
                remote: them,
                local_port: 61002,
                remote_port: 443,
                cookie_ok: true,
            }),
        },
        Row {
            what: "SYN-ACK with IPv4 options (IHL 7)",
            frame: frame(
                Some(&eth(None)),
                them,
                us,
                &[1, 1, 1, 1, 1, 1, 1, 0],
                &L4::Tcp {
                    sport: 22,
                    dport: 61003,
                    seq: 9,
                    ack: ck(61003, 22).wrapping_add(1),
                    flags: SYN | ACK,
                    window: 1,
                    options: &[],
                },
            ),
            verdict: XDP_PASS,
            reason: XdpReason::AnswerOpen,
            record: Some(Rec {
                class: AnswerClass::Open,
                remote: them,
                local_port: 61003,
                remote_port: 22,
                cookie_ok: true,
            }),
        },
        Row {
            what: "echo reply, our id",
            frame: echo_reply(us, them, id, 7),
            verdict: XDP_DROP,
            reason: XdpReason::AnswerEcho,
            record: Some(Rec {
                class: AnswerClass::EchoReply,
                remote: them,
                local_port: id,
                remote_port: 7,
                cookie_ok: false,
            }),
        },
        Row {
            what: "echo reply, wrong id",
            frame: echo_reply(us, them, id ^ 0x100, 7),
            verdict: XDP_PASS,
            reason: XdpReason::NotOurs,
            record: None,
        },
        Row {
            what: "ICMPv6 echo reply, our id",
            frame: echo_reply(us6, them6, id, 9),
            verdict: XDP_DROP,
            reason: XdpReason::AnswerEcho,
            record: Some(Rec {
                class: AnswerClass::EchoReply,
                remote: them6,
                local_port: id,
                remote_port: 9,
                cookie_ok: false,
            }),
        },
        Row {
            what: "IPv6 SYN-ACK, valid cookie",
            frame: {
                let ack = cookie_of(us6, them6, 61500, 80).wrapping_add(1);
                tcp_answer(Some(&eth(None)), us6, them6, 61500, 80, SYN | ACK, ack)
            },
            verdict: XDP_PASS,
            reason: XdpReason::AnswerOpen,
            record: Some(Rec {
                class: AnswerClass::Open,
                remote: them6,
                local_port: 61500,
                remote_port: 80,
                cookie_ok: true,
            }),
        },
        Row {
            what: "port unreachable quoting our UDP probe",
            frame: icmp_error(
                v4(ROUTER4),
                us,
                3,
                3,
                &quote(
                    us,
                    them,
                    &L4::Udp {
                        sport: 61010,
                        dport: 53,
                        payload: b"12345678",
                    },
                ),
            ),
            verdict: XDP_DROP,
            reason: XdpReason::AnswerUnreachable,
            record: Some(Rec {
                class: AnswerClass::Unreachable,
                remote: them,
                local_port: 61010,
                remote_port: 53,
                cookie_ok: false,
            }),
        },
        Row {
            what: "host unreachable quoting our SYN",
            frame: icmp_error(
                v4(ROUTER4),
                us,
                3,
                1,
                &quote(
                    us,
                    them,
                    &L4::Tcp {
                        sport: 61011,
                        dport: 80,
                        seq: ck(61011, 80),
                        ack: 0,
                        flags: SYN,
                        window: 1,
                        options: &[],
                    },
                ),
            ),
            verdict: XDP_DROP,
            reason: XdpReason::AnswerUnreachable,
            record: Some(Rec {
                class: AnswerClass::Unreachable,
                remote: them,
                local_port: 61011,
                remote_port: 80,
                cookie_ok: true,
            }),
        },
        Row {
            what: "unreachable quoting a SYN with a forged cookie",
            frame: icmp_error(
                v4(ROUTER4),
                us,
                3,
                1,
                &quote(
                    us,
                    them,
                    &L4::Tcp {
                        sport: 61011,
                        dport: 80,
                        seq: ck(61011, 80) ^ 1,
                        ack: 0,
                        flags: SYN,
                        window: 1,
                        options: &[],
                    },
                ),
            ),
            verdict: XDP_DROP,
            reason: XdpReason::BadCookie,
            record: None,
        },
        Row {
            what: "unreachable quoting someone else's UDP",
            frame: icmp_error(
                v4(ROUTER4),
                us,
                3,
                3,
                &quote(
                    us,
                    them,
                    &L4::Udp {
                        sport: 5353,
                        dport: 53,
                        payload: b"12345678",
                    },
                ),
            ),
            verdict: XDP_PASS,
            reason: XdpReason::NotOurs,
            record: None,
        },
        Row {
            what: "wrong ICMP id quoted in time exceeded",
            frame: icmp_error(
                v4(ROUTER4),
                us,
                11,
                0,
                &quote(
                    us,
                    them,
                    &L4::Icmp {
                        kind: 8,
                        code: 0,
                        id: id ^ 1,
                        seq: 1,
                        payload: b"",
                    },
                ),
            ),
            verdict: XDP_PASS,
            reason: XdpReason::NotOurs,
            record: None,
        },
        Row {
            what: "UDP reply to a probe port",
            frame: frame(
                Some(&eth(None)),
                them,
                us,
                &[],
                &L4::Udp {
                    sport: 53,
                    dport: 61020,
                    payload: b"answer",
                },
            ),
            verdict: XDP_DROP,
            reason: XdpReason::AnswerUdp,
            record: Some(Rec {
                class: AnswerClass::UdpReply,
                remote: them,
                local_port: 61020,
                remote_port: 53,
                cookie_ok: false,
            }),
        },
        Row {
            what: "UDP to another port",
            frame: frame(
                Some(&eth(None)),
                them,
                us,
                &[],
                &L4::Udp {
                    sport: 53,
                    dport: 5000,
                    payload: b"x",
                },
            ),
            verdict: XDP_PASS,
            reason: XdpReason::NotOurs,
            record: None,
        },
        Row {
            what: "ARP",
            frame: {
                let mut f = syn_ack(us, them, 61000, 80);
                f[12] = 0x08;
                f[13] = 0x06;
                f
            },
            verdict: XDP_PASS,
            reason: XdpReason::NotIp,
            record: None,
        },
        Row {
            what: "GRE",
            frame: {
                let mut f = syn_ack(us, them, 61000, 80);
                f[14 + 9] = 47;
                f
            },
            verdict: XDP_PASS,
            reason: XdpReason::OtherL4,
            record: None,
        },
        Row {
            what: "IPv4 fragment (MF)",
            frame: {
                let mut f = syn_ack(us, them, 61000, 80);
                f[14 + 6] = 0x20;
                f
            },
            verdict: XDP_PASS,
            reason: XdpReason::Fragment,
            record: None,
        },
        Row {
            what: "IPv4 fragment (offset)",
            frame: {
                let mut f = syn_ack(us, them, 61000, 80);
                f[14 + 6] = 0;
                f[14 + 7] = 8;
                f
            },
            verdict: XDP_PASS,
            reason: XdpReason::Fragment,
            record: None,
        },
        Row {
            what: "IPv6 fragment header",
            frame: {
                let mut f = echo_reply(us6, them6, id, 1);
                f[14 + 6] = 44;
                f
            },
            verdict: XDP_PASS,
            reason: XdpReason::Fragment,
            record: None,
        },
        Row {
            what: "IHL < 5",
            frame: {
                let mut f = syn_ack(us, them, 61000, 80);
                f[14] = 0x44;
                f
            },
            verdict: XDP_PASS,
            reason: XdpReason::MalformedIpv4,
            record: None,
        },
        Row {
            what: "IHL past the frame",
            frame: {
                let mut f = syn_ack(us, them, 61000, 80);
                f.truncate(14 + 40);
                f[14] = 0x4f;
                f
            },
            verdict: XDP_PASS,
            reason: XdpReason::MalformedIpv4,
            record: None,
        },
        Row {
            what: "total length past the frame",
            frame: {
                let mut f = syn_ack(us, them, 61000, 80);
                f[16] = 0x05;
                f
            },
            verdict: XDP_PASS,
            reason: XdpReason::MalformedIpv4,
            record: None,
        },
        Row {
            what: "IPv4 header cut",
            frame: {
                let mut f = syn_ack(us, them, 61000, 80);
                f.truncate(14 + 12);
                f
            },
            verdict: XDP_PASS,
            reason: XdpReason::MalformedIpv4,
            record: None,
        },
        Row {
            what: "IPv6 header cut",
            frame: {
                let mut f = echo_reply(us6, them6, id, 1);
                f.truncate(14 + 30);
                f
            },
            verdict: XDP_PASS,
            reason: XdpReason::MalformedIpv6,
            record: None,
        },
        Row {
            what: "VLAN tag cut",
            frame: {
                let mut f = syn_ack(us, them, 61000, 80);
                f[12] = 0x81;
                f[13] = 0;
                f.truncate(15);
                f
            },
            verdict: XDP_PASS,
            reason: XdpReason::MalformedEth,
            record: None,
        },
        Row {
            what: "TCP header cut",
            frame: {
                let mut f = frame(
                    Some(&eth(None)),
                    them,
                    us,
                    &[],
                    &L4::Tcp {
                        sport: 80,
                        dport: 61000,
                        seq: 1,
                        ack: ck(61000, 80).wrapping_add(1),
                        flags: SYN | ACK,
                        window: 1,
                        options: &[],
                    },
                );
                f.truncate(14 + 20 + 10);
                f[17] = 30;
                f
            },
            verdict: XDP_PASS,
            reason: XdpReason::MalformedL4,
            record: None,
        },
        Row {
            what: "IP total length ends before the TCP header (rest in padding)",
            frame: {
                let mut f = syn_ack(us, them, 61000, 80);
                f[16] = 0;
                f[17] = 20;
                f
            },
            verdict: XDP_PASS,
            reason: XdpReason::MalformedL4,
            record: None,
        },
        Row {
            what: "TCP data offset < 5",
            frame: {
                let mut f = syn_ack(us, them, 61000, 80);
                f[14 + 20 + 12] = 0x40;
                f
            },
            verdict: XDP_PASS,
            reason: XdpReason::MalformedL4,
            record: None,
        },
        Row {
            what: "quoted header cut",
            frame: {
                let q = quote(
                    us,
                    them,
                    &L4::Udp {
                        sport: 61010,
                        dport: 53,
                        payload: b"",
                    },
                );
                icmp_error(v4(ROUTER4), us, 3, 3, &q[..12])
            },
            verdict: XDP_PASS,
            reason: XdpReason::MalformedL4,
            record: None,
        },
    ];
    // BPF_PROG_TEST_RUN refuses XDP frames shorter than an Ethernet header, so the
    // shortest frame it can carry is a bare, all-zero Ethernet header; shorter ones are
    // covered by the host tests of the same parser and `xdp_zero_length_frame...`.
    rows.push(Row {
        what: "bare 14-byte Ethernet header",
        frame: vec![0u8; 14],
        verdict: XDP_PASS,
        reason: XdpReason::NotIp,
        record: None,
    });
    rows
}

fn check_record(what: &str, rec: &AnswerRecord, want: &Rec) {
    assert_eq!(
        AnswerClass::from_u8(rec.class),
        Some(want.class),
        "{what}: class"
    );
    assert_eq!(rec.key.remote, bytes(want.remote), "{what}: remote");
    assert_eq!(
        rec.key.local_port, want.local_port,
        "{what}: local port / icmp id"
    );
    assert_eq!(
        rec.key.remote_port, want.remote_port,
        "{what}: remote port / icmp seq"
    );
    assert_eq!(
        rec.flags & flags::COOKIE_OK != 0,
        want.cookie_ok,
        "{what}: cookie flag"
    );
    assert!(rec.rx_ns > 0, "{what}: kernel receive time");
}

#[test]
fn xdp_verdicts_records_and_counters() {
    let Some(mut k) = load() else { return };
    for row in rows() {
        let before = k.counters().expect("counters");
        let verdict = k
            .run_xdp(&row.frame)
            .unwrap_or_else(|e| panic!("{}: {}", row.what, ebpf::error_chain(&e)));
        let after = k.counters().expect("counters");
        let mut recs = Vec::new();
        k.drain(|r| recs.push(r));
        assert_eq!(verdict, row.verdict, "{}: verdict", row.what);
        let d = after.since(&before);
        assert_eq!(
            d.xdp_frames(),
            1,
            "{}: exactly one exclusive counter per frame: {:?}",
            row.what,
            d.xdp
        );
        assert_eq!(
            d.xdp(row.reason),
            1,
            "{}: counter {} (deltas {:?})",
            row.what,
            row.reason.name(),
            d.xdp
        );
        match &row.record {
            Some(want) => {
                assert_eq!(recs.len(), 1, "{}: one record", row.what);
                check_record(row.what, &recs[0], want);
                assert_eq!(
                    recs[0].flags & flags::STAMPED,
                    0,
                    "{}: no egress stamp was made",
                    row.what
                );
                assert_eq!(
                    d.xdp(XdpReason::NoStamp),
                    1,
                    "{}: no_stamp counted",
                    row.what
                );
            }
            None => assert!(
                recs.is_empty(),
                "{}: no record expected, got {recs:?}",
                row.what
            ),
        }
    }
}

/// With `ingress::TC` the TC ingress program classifies: every row of the table gives
/// the same counters and record as through XDP, dropped frames are `TC_ACT_SHOT`
/// and passed ones `TC_ACT_OK`, and the XDP program then passes everything.
#[test]
fn tc_ingress_classifies_like_xdp() {
    const TC_ACT_OK: i32 = 0;
    const TC_ACT_SHOT: i32 = 2;
    let Some(mut k) = load() else { return };
    k.classify_at_tc().expect("classify at TC");
    let rows = rows();
    let mut cut = 0;
    for row in &rows {
        let before = k.counters().expect("counters");
        let run = k.run_tc_ingress(&row.frame);
        let d = k.counters().expect("counters").since(&before);
        let mut recs = Vec::new();
        k.drain(|r| recs.push(r));
        let (action, _) = match run {
            Ok(r) => r,
            // The kernel builds no socket buffer of some cut frames for a test run; a
            // real one would have been dropped by the stack before TC.
            Err(e) => {
                assert!(
                    matches!(
                        row.reason,
                        XdpReason::MalformedEth
                            | XdpReason::MalformedIpv4
                            | XdpReason::MalformedIpv6
                    ),
                    "{}: {}",
                    row.what,
                    ebpf::error_chain(&e)
                );
                assert_eq!(d.xdp_frames(), 0, "{}", row.what);
                assert!(recs.is_empty(), "{}", row.what);
                cut += 1;
                continue;
            }
        };
        let want = if row.verdict == XDP_DROP {
            TC_ACT_SHOT
        } else {
            TC_ACT_OK
        };
        assert_eq!(action, want, "{}: action", row.what);
        assert_eq!(d.xdp_frames(), 1, "{}: one reason: {:?}", row.what, d.xdp);
        assert_eq!(d.xdp(row.reason), 1, "{}: {}", row.what, row.reason.name());
        match &row.record {
            Some(want) => {
                assert_eq!(recs.len(), 1, "{}: one record", row.what);
                check_record(row.what, &recs[0], want);
            }
            None => assert!(recs.is_empty(), "{}: {recs:?}", row.what),
        }
    }
    eprintln!(
        "{} rows through TC ingress, {cut} refused by the test run",
        rows.len() - cut
    );
    assert!(cut * 4 < rows.len(), "{cut} of {} rows not run", rows.len());
    // XDP, if attached anyway, stays out of the way.
    let before = k.counters().expect("counters");
    let (us, them) = (v4(US4), v4(THEM4));
    let verdict = k.run_xdp(&syn_ack(us, them, 61000, 80)).expect("xdp run");
    let d = k.counters().expect("counters").since(&before);
    let mut recs = Vec::new();
    k.drain(|r| recs.push(r));
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(d.xdp(XdpReason::Disabled), 1);
    assert!(recs.is_empty(), "{recs:?}");
}

#[test]
fn xdp_zero_length_frame_is_refused_cleanly() {
    let Some(mut k) = load() else { return };
    // The kernel's test-run refuses a frame shorter than an Ethernet header; the point is
    // that nothing is recorded or counted as an answer.
    let before = k.counters().expect("counters");
    let r = k.run_xdp(&[]);
    let d = k.counters().expect("counters").since(&before);
    let mut n = 0;
    k.drain(|_| n += 1);
    assert_eq!(n, 0);
    if r.is_ok() {
        assert_eq!(d.xdp(XdpReason::MalformedEth), 1, "{:?}", d.xdp);
    } else {
        assert_eq!(d.xdp_frames(), 0);
    }
}

#[test]
fn egress_stamp_gives_kernel_rtt() {
    let Some(mut k) = load() else { return };
    let (us, them) = (v4(US4), v4(THEM4));
    let before = k.counters().expect("counters");
    // TC sees our SYN leave, then XDP sees the SYN-ACK: the record carries the stamp.
    k.run_tc(&syn(us, them, 61100, 80)).expect("tc run");
    std::thread::sleep(std::time::Duration::from_millis(2));
    assert_eq!(
        k.run_xdp(&syn_ack(us, them, 61100, 80)).expect("xdp run"),
        XDP_PASS,
        "a SYN-ACK goes on to the host's TCP stack, which resets it"
    );
    // Echo request and reply.
    let id = config().icmp_id;
    k.run_tc(&echo_request(us, them, id, 33)).expect("tc run");
    assert_eq!(
        k.run_xdp(&echo_reply(us, them, id, 33)).expect("xdp run"),
        XDP_DROP
    );
    // A SYN from outside our range is not stamped.
    k.run_tc(&syn(us, them, 1234, 80)).expect("tc run");
    let d = k.counters().expect("counters").since(&before);
    let mut recs = Vec::new();
    k.drain(|r| recs.push(r));
    // The two answers are in different rings (`StampKey::ring`): in arrival order.
    recs.sort_by_key(|r| r.rx_ns);
    assert_eq!(recs.len(), 2);
    for r in &recs {
        assert_ne!(r.flags & flags::STAMPED, 0, "stamped: {r:?}");
        assert!(r.tx_ns > 0 && r.rx_ns > r.tx_ns, "{r:?}");
        assert_eq!(r.rtt_ns, r.rx_ns - r.tx_ns);
    }
    assert!(
        recs[0].rtt_ns >= 2_000_000,
        "slept 2 ms between stamp and answer: {}",
        recs[0].rtt_ns
    );
    assert_eq!(d.tc(TcReason::StampedSyn), 1);
    assert_eq!(d.tc(TcReason::StampedEcho), 1);
    assert_eq!(d.tc(TcReason::NotOurs), 1);
    assert_eq!(d.xdp(XdpReason::NoStamp), 0);
    // The stamp is consumed: a duplicate answer is recorded without a kernel RTT.
    assert_eq!(
        k.run_xdp(&syn_ack(us, them, 61100, 80)).expect("xdp run"),
        XDP_PASS,
        "a SYN-ACK goes on to the host's TCP stack, which resets it"
    );
    let mut dup = Vec::new();
    k.drain(|r| dup.push(r));
    assert_eq!(dup.len(), 1);
    assert_eq!(dup[0].flags & flags::STAMPED, 0);
}

/// Two probes whose keys hash to one slot of the stamp array: the later stamp replaces
/// the earlier, whose answer is then recorded without a kernel RTT and counted
/// `no_stamp` (never given the other probe's time); the later probe's answer is timed.
#[test]
fn a_later_probe_in_the_same_slot_takes_it() {
    let Some(mut k) = load() else { return };
    let (us, them) = (v4(US4), v4(THEM4));
    let cfg = config();
    let id = cfg.icmp_id;
    // Echo requests differ in their sequence number only: find two in one slot.
    let slot_of = |seq: u16| {
        let (key, _) =
            probe_common::parse::classify_egress(echo_request(us, them, id, seq).as_slice(), &cfg)
                .expect("our echo request");
        probe_common::stamp::slot(&key)
    };
    let mut seen = std::collections::HashMap::new();
    let (first, second) = (0..=u16::MAX)
        .find_map(|seq| {
            let s = slot_of(seq);
            match seen.insert(s.index, (seq, s.tag)) {
                Some((earlier, tag)) if tag != s.tag => Some((earlier, seq)),
                _ => None,
            }
        })
        .expect("65,536 keys in 2^20 slots share some slots");
    let before = k.counters().expect("counters");
    k.run_tc(&echo_request(us, them, id, first))
        .expect("tc run");
    k.run_tc(&echo_request(us, them, id, second))
        .expect("tc run");
    for seq in [first, second] {
        assert_eq!(
            k.run_xdp(&echo_reply(us, them, id, seq)).expect("xdp run"),
            XDP_DROP
        );
    }
    let d = k.counters().expect("counters").since(&before);
    let mut recs = Vec::new();
    k.drain(|r| recs.push(r));
    // The answers may be in different rings (`StampKey::ring`): in arrival order.
    recs.sort_by_key(|r| r.rx_ns);
    assert_eq!(recs.len(), 2, "both answers recorded");
    assert_eq!(recs[0].key.remote_port, first);
    assert_eq!(
        recs[0].flags & flags::STAMPED,
        0,
        "overwritten: {:?}",
        recs[0]
    );
    assert_eq!((recs[0].tx_ns, recs[0].rtt_ns), (0, 0));
    assert_eq!(recs[1].key.remote_port, second);
    assert_ne!(recs[1].flags & flags::STAMPED, 0, "{:?}", recs[1]);
    assert_eq!(d.tc(TcReason::StampedEcho), 2);
    assert_eq!(d.xdp(XdpReason::NoStamp), 1);
}

#[test]
fn disabled_until_configured() {
    if !lab::kernel_programs_or_skip() {
        return;
    }
    let mut k = KernelProbes::load().expect("load");
    let before = k.counters().expect("counters");
    assert_eq!(
        k.run_xdp(&syn_ack(v4(US4), v4(THEM4), 61000, 80))
            .expect("run"),
        XDP_PASS
    );
    let d = k.counters().expect("counters").since(&before);
    assert_eq!(d.xdp(XdpReason::Disabled), 1);
}

/// The RST the packet builder makes for a SYN-ACK to our probe `us:sport -> them:dport`
/// (the SYN-ACK's ack as its seq), in a frame back to where `e` came from.
fn expected_reset(
    e: &probe_common::craft::Eth,
    us: IpAddr,
    them: IpAddr,
    sport: u16,
    dport: u16,
    seq: u32,
    ip_id: u16,
) -> Vec<u8> {
    use probe_common::craft::{build, Eth, Ip, L4};
    let mut want = vec![0u8; 256];
    let len = build(
        &mut want,
        Some(&Eth {
            dst: e.src,
            src: e.dst,
            vlan: e.vlan,
        }),
        &Ip {
            family: if us.is_ipv4() { 4 } else { 6 },
            src: bytes(us),
            dst: bytes(them),
            ttl: 64,
            id: ip_id,
            options: &[],
        },
        &L4::Tcp {
            sport,
            dport,
            seq,
            ack: 0,
            flags: RST,
            window: 0,
            options: &[],
        },
    )
    .expect("reset fits");
    want.truncate(len);
    want
}

const XDP_TX: u32 = 3;

/// With `reset::XDP`, a SYN-ACK to a probe leaves again as the RST for it (`XDP_TX`):
/// MACs swapped, VLAN tag kept, cut to the reset's headers, which are byte for byte
/// what the probe builder makes of the RST the host's stack would send (seq = the
/// SYN-ACK's ack, no ACK flag, window 0). Forged SYN-ACKs are still dropped, RSTs and
/// other answers are unchanged, and without the flag SYN-ACKs pass to the stack.
#[test]
fn syn_acks_become_resets_in_xdp_when_asked() {
    let Some(mut k) = load() else { return };
    k.set_config(&probe_common::config::ProbeConfig {
        reset: probe_common::config::reset::XDP,
        ..config()
    })
    .expect("set config");
    for (us, them, vlan) in [
        (v4(US4), v4(THEM4), None),
        (v4(US4), v4(THEM4), Some(7)),
        (v6(US6), v6(THEM6), None),
        (v6(US6), v6(THEM6), Some(4094)),
    ] {
        let e = eth(vlan);
        let (sport, dport) = (61_234, 443);
        let ack = cookie_of(us, them, sport, dport).wrapping_add(1);
        let answer = tcp_answer(Some(&e), us, them, sport, dport, SYN | ACK, ack);
        let before = k.counters().expect("counters");
        let (verdict, out) = k.run_xdp_out(&answer).expect("test run");
        let d = k.counters().expect("counters").since(&before);
        let what = format!("{us} -> {them}, vlan {vlan:?}");
        assert_eq!(verdict, XDP_TX, "{what}");
        assert_eq!(d.xdp(XdpReason::AnswerOpen), 1, "{what}: still recorded");
        assert_eq!(d.xdp(XdpReason::ResetSent), 1, "{what}");
        assert_eq!(d.xdp(XdpReason::ResetFailed), 0, "{what}");
        let mut n = 0;
        k.drain(|_| n += 1);
        assert_eq!(n, 1, "{what}: one record");
        let want = expected_reset(&e, us, them, sport, dport, ack, 0);
        assert_eq!(out, want, "{what}: the reset");
        assert!(out.len() < answer.len(), "{what}: cut to the reset");
    }
    // A forged SYN-ACK (wrong cookie) gets no reset from us: dropped as before.
    let forged = tcp_answer(
        Some(&eth(None)),
        v4(US4),
        v4(THEM4),
        61_000,
        80,
        SYN | ACK,
        12345,
    );
    let before = k.counters().expect("counters");
    assert_eq!(k.run_xdp(&forged).expect("test run"), XDP_DROP);
    let d = k.counters().expect("counters").since(&before);
    assert_eq!(d.xdp(XdpReason::BadCookie), 1);
    assert_eq!(d.xdp(XdpReason::ResetSent), 0);
    // A closed port's RST is recorded and dropped, not answered.
    let ack = cookie_of(v4(US4), v4(THEM4), 61_000, 81).wrapping_add(1);
    let rst = tcp_answer(
        Some(&eth(None)),
        v4(US4),
        v4(THEM4),
        61_000,
        81,
        RST | ACK,
        ack,
    );
    assert_eq!(k.run_xdp(&rst).expect("test run"), XDP_DROP);
    // Without the flag, the SYN-ACK goes to the host's stack untouched.
    k.set_config(&config()).expect("set config");
    let answer = syn_ack(v4(US4), v4(THEM4), 61_000, 80);
    let (verdict, out) = k.run_xdp_out(&answer).expect("test run");
    assert_eq!((verdict, out), (XDP_PASS, answer));
    k.drain(|_| {});
}

const TC_ACT_OK: i32 = 0;
const TC_ACT_REDIRECT: i32 = 7;

/// With `reset::TC`, the TC ingress program turns an IPv4 SYN-ACK to a probe into its
/// RST (redirected back out): byte for byte the reset the packet builder makes, the
/// SYN-ACK's IP header kept (id, DF) but for length and TTL, both checksums right
/// (updated with the kernel's helpers; the test run's skb has no checksum offload, so
/// every update applies). IPv6 SYN-ACKs, forged ones, RSTs, and everything without
/// the mode pass untouched.
#[test]
fn tc_ingress_resets_ipv4_syn_acks_when_asked() {
    let Some(mut k) = load() else { return };
    let tc_mode = probe_common::config::ProbeConfig {
        reset: probe_common::config::reset::TC,
        ..config()
    };
    k.set_config(&tc_mode).expect("set config");
    let (us, them) = (v4(US4), v4(THEM4));
    for vlan in [None, Some(7)] {
        let e = eth(vlan);
        let (sport, dport) = (61_234, 443);
        let ack = cookie_of(us, them, sport, dport).wrapping_add(1);
        let answer = tcp_answer(Some(&e), us, them, sport, dport, SYN | ACK, ack);
        let before = k.counters().expect("counters");
        let (action, out) = k.run_tc_ingress(&answer).expect("test run");
        let d = k.counters().expect("counters").since(&before);
        assert_eq!(action, TC_ACT_REDIRECT, "vlan {vlan:?}");
        assert_eq!(d.xdp(XdpReason::ResetSent), 1);
        assert_eq!(d.xdp(XdpReason::ResetFailed), 0);
        // The SYN-ACK's own IP identification (1 in the test frames) is kept.
        let want = expected_reset(&e, us, them, sport, dport, ack, 1);
        assert_eq!(out, want, "vlan {vlan:?}: the reset");
    }
    let untouched = |k: &mut KernelProbes, frame: Vec<u8>, what: &str| {
        let before = k.counters().expect("counters");
        let (action, out) = k.run_tc_ingress(&frame).expect("test run");
        let d = k.counters().expect("counters").since(&before);
        assert_eq!((action, &out), (TC_ACT_OK, &frame), "{what}");
        assert_eq!(d.xdp(XdpReason::ResetSent), 0, "{what}");
    };
    let (us6, them6) = (v6(US6), v6(THEM6));
    let ack6 = cookie_of(us6, them6, 61_000, 80).wrapping_add(1);
    untouched(
        &mut k,
        tcp_answer(Some(&eth(None)), us6, them6, 61_000, 80, SYN | ACK, ack6),
        "IPv6 SYN-ACK: to the stack",
    );
    untouched(
        &mut k,
        tcp_answer(Some(&eth(None)), us, them, 61_000, 80, SYN | ACK, 12345),
        "forged SYN-ACK",
    );
    let ack = cookie_of(us, them, 61_000, 81).wrapping_add(1);
    untouched(
        &mut k,
        tcp_answer(Some(&eth(None)), us, them, 61_000, 81, RST | ACK, ack),
        "RST",
    );
    untouched(&mut k, echo_request(us, them, 1, 1), "not TCP");
    k.set_config(&config()).expect("set config");
    untouched(&mut k, syn_ack(us, them, 61_000, 80), "stack mode");
}
