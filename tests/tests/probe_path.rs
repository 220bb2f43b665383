//! The first real probe path, end to end in network namespaces: raw SYN and ICMP probes
//! from a prober namespace to a target namespace, classified and timed by the kernel
//! programs: at XDP (attached natively on the prober's veth end), and at TC ingress,
//! which `answer_hook = "auto"` picks on a veth.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use probe_common::counters::{TcReason, XdpReason};
use sonde::{
    cli::{probe_session, AnswerPath},
    ebpf::{AnswerHook, Ingress, XdpAttachMode},
    engine::{Clock, Outcome, PortRange, ProbeKind},
    lab::{self, Lab},
};
use sonde_tests::servers::listener;

const TIMEOUT: Duration = Duration::from_millis(800);

fn ip(s: &str) -> IpAddr {
    IpAddr::V4(s.parse::<Ipv4Addr>().expect("literal"))
}

#[test]
fn syn_and_icmp_probes_through_the_kernel_path() {
    probes_through(AnswerHook::Xdp, |i| {
        assert_eq!(
            i,
            &Ingress::Xdp {
                mode: XdpAttachMode::Native
            },
            "XDP must attach natively on veth"
        );
    });
}

#[test]
fn auto_classifies_at_tc_ingress_on_a_veth() {
    probes_through(AnswerHook::Auto, |i| {
        assert!(
            matches!(i, Ingress::Tc { why } if why.contains("veth")),
            "auto on a veth: {i:?}"
        );
    });
}

/// Three rounds of SYN (open, closed port) and ICMP probes (answered, silent) with
/// answers classified where `hook` says (`check` looks at the choice): the same
/// outcomes, kernel RTTs and counters either way.
fn probes_through(hook: AnswerHook, check: impl FnOnce(&Ingress)) {
    if !lab::kernel_programs_or_skip() {
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    // Port 80 listens; nothing on 81; 198.18.0.3 has no host behind it.
    let open = listener(&lab.target, "198.18.0.2:80");
    let targets = vec![
        (ip("198.18.0.2"), ProbeKind::TcpSyn { port: 80 }),
        (ip("198.18.0.2"), ProbeKind::TcpSyn { port: 81 }),
        (ip("198.18.0.3"), ProbeKind::TcpSyn { port: 80 }),
        (ip("198.18.0.2"), ProbeKind::IcmpEcho),
        (ip("198.18.0.3"), ProbeKind::IcmpEcho),
    ];
    let iface = lab.link.a.name.clone();
    let (mode, rounds) = lab
        .prober
        .run(move || {
            let mut s =
                probe_session(&iface, PortRange::DEFAULT, false, hook).expect("kernel session");
            // Several rounds: source ports rotate, stamps are consumed, counters add up.
            let rounds: Vec<_> = (0..3)
                .map(|_| s.probe(&targets, TIMEOUT).expect("probe round"))
                .collect();
            (
                match &s.path {
                    AnswerPath::Kernel { ingress, .. } => ingress.clone(),
                    AnswerPath::Userspace { reason, .. } => {
                        panic!("kernel path expected: {reason}")
                    }
                },
                rounds,
            )
        })
        .expect("enter prober");
    check(&mode);

    for (i, (results, stats, counters)) in rounds.iter().enumerate() {
        let outcomes: Vec<Outcome> = results.iter().map(|r| r.outcome).collect();
        assert_eq!(
            outcomes,
            vec![
                Outcome::Open,
                Outcome::Closed,
                Outcome::Timeout,
                Outcome::EchoReply,
                Outcome::Timeout
            ],
            "round {i}: {results:#?}"
        );
        for r in results.iter().filter(|r| r.outcome != Outcome::Timeout) {
            let rtt = r.rtt.expect("answered probes have an RTT");
            assert_eq!(
                r.clock,
                Some(Clock::Kernel),
                "round {i}: kernel clock for {r:?}"
            );
            assert!(
                rtt > Duration::ZERO && rtt < TIMEOUT,
                "round {i}: kernel RTT {rtt:?} below the timeout"
            );
            assert_eq!(r.reporter, Some(ip("198.18.0.2")));
        }
        for r in results.iter().filter(|r| r.outcome == Outcome::Timeout) {
            assert_eq!((r.rtt, r.clock), (None, None), "timeouts carry no RTT");
        }
        // Counters add up: one answer counter per answered probe, nothing spoofed, lost or
        // unstamped, and the egress program stamped every probe that left.
        assert_eq!(
            counters.xdp(XdpReason::AnswerOpen),
            1,
            "round {i}: {counters:?}"
        );
        assert_eq!(counters.xdp(XdpReason::AnswerClosed), 1, "round {i}");
        assert_eq!(counters.xdp(XdpReason::AnswerEcho), 1, "round {i}");
        assert_eq!(counters.xdp(XdpReason::BadCookie), 0, "round {i}");
        assert_eq!(counters.xdp(XdpReason::RingFull), 0, "round {i}");
        assert_eq!(counters.xdp(XdpReason::NoStamp), 0, "round {i}");
        assert_eq!(
            stats.matched, 3,
            "round {i}: matched answers = answer counters"
        );
        assert_eq!(
            stats.unmatched, 0,
            "round {i}: no late or duplicate answers"
        );
        // 198.18.0.3 never resolves (no ARP answer), so its probes never reach TC egress.
        assert_eq!(
            counters.tc(TcReason::StampedSyn),
            2,
            "round {i}: {counters:?}"
        );
        assert_eq!(counters.tc(TcReason::StampedEcho), 1, "round {i}");
        assert_eq!(counters.tc(TcReason::StampFailed), 0, "round {i}");
    }
    // Each round's SYN to port 80 came from a different source port, and the prober's
    // kernel reset each SYN-ACK (XDP or TC passed it on): the target keeps no half-open
    // connection.
    let ports: std::collections::HashSet<u16> =
        rounds.iter().map(|(r, _, _)| r[0].local_port).collect();
    assert_eq!(ports.len(), 3, "source ports rotate: {ports:?}");
    assert!(ports.iter().all(|p| PortRange::DEFAULT.ports().contains(p)));
    assert_eq!(
        lab.target.syn_recv_count().expect("ss"),
        0,
        "no SYN-RECV left on the target"
    );
    drop(open);
}

#[test]
fn without_the_rst_the_target_keeps_half_open_state() {
    // The control for the assertion above: a SYN-ACK that nobody answers leaves a
    // SYN-RECV entry, so `syn_recv_count` does see half-open connections.
    if !lab::privileged_or_skip() {
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    let _listener = listener(&lab.target, "198.18.0.2:80");
    // Drop the SYN-ACK before the prober's kernel can answer it with an RST.
    lab.prober
        .nft("add table inet t; add chain inet t in { type filter hook input priority 0; }; add rule inet t in tcp sport 80 drop")
        .expect("nft");
    let _ = lab.prober.run(|| {
        let s = std::net::TcpStream::connect_timeout(
            &"198.18.0.2:80".parse().expect("addr"),
            Duration::from_millis(300),
        );
        assert!(s.is_err(), "the handshake cannot complete");
    });
    assert!(lab.target.syn_recv_count().expect("ss") >= 1);
}

#[test]
fn userspace_fallback_classifies_the_same_answers() {
    // Where eBPF cannot be used, the same classifier runs on an AF_PACKET socket and the
    // results say they were timed in userspace.
    if !lab::privileged_or_skip() {
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    let open = listener(&lab.target, "198.18.0.2:80");
    let targets = vec![
        (ip("198.18.0.2"), ProbeKind::TcpSyn { port: 80 }),
        (ip("198.18.0.2"), ProbeKind::TcpSyn { port: 81 }),
        (ip("198.18.0.2"), ProbeKind::IcmpEcho),
        (ip("198.18.0.3"), ProbeKind::IcmpEcho),
    ];
    let iface = lab.link.a.name.clone();
    let (results, stats, counters, userspace) = lab
        .prober
        .run(move || {
            let mut s =
                probe_session(&iface, PortRange::DEFAULT, true, AnswerHook::Auto).expect("session");
            let userspace = matches!(s.path, AnswerPath::Userspace { .. });
            let (r, st, c) = s.probe(&targets, TIMEOUT).expect("round");
            (r, st, c, userspace)
        })
        .expect("enter prober");
    assert!(userspace, "forced userspace path");
    let outcomes: Vec<Outcome> = results.iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        vec![
            Outcome::Open,
            Outcome::Closed,
            Outcome::EchoReply,
            Outcome::Timeout
        ],
        "{results:#?}"
    );
    for r in results.iter().filter(|r| r.outcome != Outcome::Timeout) {
        assert_eq!(r.clock, Some(Clock::Userspace), "{r:?}");
        assert!(r.rtt.is_some_and(|d| d < TIMEOUT));
    }
    assert_eq!(stats.matched, 3);
    assert!(
        counters.xdp.is_empty(),
        "no kernel counters on the userspace path"
    );
    assert_eq!(lab.target.syn_recv_count().expect("ss"), 0);
    drop(open);
}
