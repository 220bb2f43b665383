//! Stateless probes through the engine: raw SYN, ICMP and UDP from the prober
//! namespace, answered through the XDP ring buffer (kernel clock), matched and expired
//! by the stateless worker; a UDP check that reads the answer runs on a socket.

use std::{net::TcpListener, sync::Arc, time::Duration};

use probe_common::config::ProbeConfig;

use sonde::{
    ebpf::KernelProbes,
    engine::{
        result::Reason,
        round::new_config,
        spec::{ProbeSpec, UdpSpec},
        uring::{Engine, EngineConfig, Job, StatelessParts},
        AnswerSource, Clock, PacketSource, PortRange,
    },
    lab::{self, Lab},
};
use sonde_tests::{
    checks::check,
    servers::{listener, udp_echo},
};

/// A two-host lab whose target listens on 198.18.0.2:80 (the listener is returned to
/// be kept) and sends every ICMP error it is asked for: every closed-port probe gets
/// its port unreachable (the kernel rate-limits ICMP errors per peer otherwise: a
/// burst of 6, then one a second).
fn lab_with_listener() -> (Lab, TcpListener) {
    let lab = Lab::two_hosts().expect("lab");
    let listener = listener(&lab.target, "198.18.0.2:80");
    let out = lab
        .target
        .exec(&["sysctl", "-qw", "net.ipv4.icmp_ratemask=0"])
        .expect("sysctl");
    assert!(out.status.success(), "{out:?}");
    (lab, listener)
}

/// The kernel programs on the prober's end of the lab link, with `ports` reserved, and
/// an engine with one io_uring worker and up to `senders` stateless workers.
fn start(lab: &Lab, ports: PortRange, senders: usize) -> (Engine, KernelProbes) {
    let iface = lab.link.a.name.clone();
    lab.prober
        .run(move || {
            let cfg = new_config(ports);
            let mut k = KernelProbes::load().expect("load");
            k.set_config(&cfg).expect("config");
            k.attach(&iface).expect("attach");
            ports.reserve().expect("reserve ports");
            let events = k.take_events().expect("events");
            (engine(Box::new(events), cfg, senders), k)
        })
        .expect("enter prober")
}

/// An engine with one io_uring worker and up to `senders` stateless workers reading
/// `source` (in the prober's namespace).
fn engine(source: Box<dyn AnswerSource + Send>, probe: ProbeConfig, senders: usize) -> Engine {
    Engine::start(
        &EngineConfig {
            threads: 1,
            stateless_senders: senders,
            ..EngineConfig::default()
        },
        Some(StatelessParts { source, probe }),
    )
    .expect("engine")
}

#[test]
fn syn_and_icmp_through_the_engine_with_kernel_clock() {
    if !lab::kernel_programs_or_skip() {
        return;
    }
    let (lab, _l) = lab_with_listener();
    lab.target
        .nft("add table inet t; add chain inet t in { type filter hook input priority 0; }; add rule inet t in tcp dport 9 drop; add rule inet t in udp dport 9 drop")
        .expect("nft");
    let _echo = udp_echo(&lab.target, "198.18.0.2:7", b"pong:");
    let (engine, kernel) = start(&lab, PortRange::DEFAULT, 2);
    let t = Duration::from_millis(400);
    let udp = |expect: &str| {
        ProbeSpec::Udp(Box::new(UdpSpec {
            payload: b"hello".to_vec(),
            expect_prefix: expect.as_bytes().to_vec(),
        }))
    };
    let specs = [
        check("open", "198.18.0.2", 80, ProbeSpec::TcpSyn, t),
        check("closed", "198.18.0.2", 81, ProbeSpec::TcpSyn, t),
        check("silent", "198.18.0.2", 9, ProbeSpec::TcpSyn, t),
        check("ping", "198.18.0.2", 0, ProbeSpec::Icmp, t),
        check("nohost", "198.18.0.3", 0, ProbeSpec::Icmp, t),
        // Any answer will do: stateless, through XDP.
        check("udp-echo", "198.18.0.2", 7, udp(""), t),
        check("udp-closed", "198.18.0.2", 8, udp(""), t),
        check("udp-silent", "198.18.0.2", 9, udp(""), t),
        // Reads the answer's bytes: on a socket, timed in userspace.
        check("udp-read", "198.18.0.2", 7, udp("pong:hello"), t),
    ];
    assert!(engine.runs_stateless(&specs[5].probe));
    assert!(!engine.runs_stateless(&specs[8].probe));
    let before = kernel.counters().expect("counters");
    let rounds = 20u64;
    for round in 0..rounds {
        for (i, s) in specs.iter().enumerate() {
            engine
                .submit(Job::new(Arc::clone(s), round * 10 + i as u64).expect("prepare"))
                .expect("running");
        }
    }
    let stateless_udp = ["udp-echo", "udp-closed", "udp-silent"];
    let mut results: Vec<_> = (0..specs.len() as u64 * rounds)
        .map(|_| {
            engine
                .results()
                .recv_timeout(Duration::from_secs(5))
                .expect("result")
        })
        .collect();
    results.sort_by_key(|r| r.seq);
    for r in &results {
        let want = match r.check.as_str() {
            "open" | "ping" | "udp-echo" | "udp-read" => Reason::Ok,
            // ICMP port unreachable, as a connected UDP socket reports it.
            "closed" | "udp-closed" => Reason::Refused,
            _ => Reason::Timeout,
        };
        assert_eq!(r.reason, want, "{r:?}");
        if r.reason == Reason::Timeout {
            let total = r.phases.total.expect("total");
            assert!(
                total >= t && total < t + Duration::from_millis(10),
                "{}: timeout after {total:?}",
                r.check
            );
        } else if r.check.as_str() == "udp-read" {
            assert_eq!(r.clock, Clock::Userspace, "{r:?}");
        } else {
            assert_eq!(r.clock, Clock::Kernel, "{r:?}");
            assert!(r.rtt.is_some_and(|d| d > Duration::ZERO && d < t));
        }
    }
    let d = kernel.counters().expect("counters").since(&before);
    assert_eq!(d.xdp(probe_common::counters::XdpReason::AnswerOpen), rounds);
    assert_eq!(
        d.xdp(probe_common::counters::XdpReason::AnswerClosed),
        rounds
    );
    assert_eq!(d.xdp(probe_common::counters::XdpReason::AnswerEcho), rounds);
    // The stateless UDP probes' answers, and none of the socket's (ephemeral ports).
    assert_eq!(d.xdp(probe_common::counters::XdpReason::AnswerUdp), rounds);
    assert_eq!(
        d.xdp(probe_common::counters::XdpReason::AnswerUnreachable),
        rounds
    );
    assert_eq!(
        d.tc(probe_common::counters::TcReason::StampedUdp),
        rounds * stateless_udp.len() as u64
    );
    assert_eq!(d.xdp(probe_common::counters::XdpReason::NoStamp), 0);
    assert_eq!(
        lab.target.syn_recv_count().expect("ss"),
        0,
        "every SYN-ACK was reset"
    );
    engine.shutdown();
}

/// A check's remembered source address follows the routing: after the route to the
/// target changes its source, the next lookup (once rtnetlink's news is read) gives
/// the new address, not the remembered one.
#[test]
fn the_source_address_follows_a_route_change() {
    use sonde::engine::sources::{SenderView, SourceMemo, Sources};
    if !lab::privileged_or_skip() {
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    let dev = lab.link.a.name.clone();
    lab.prober
        .ip(&["addr", "add", "198.18.0.11/24", "dev", &dev])
        .expect("second address");
    let target: std::net::IpAddr = "198.18.0.2".parse().expect("addr");
    let sources = lab.prober.run(Sources::new).expect("enter prober");
    let memo = SourceMemo::default();
    let mut cache = SenderView::default();
    let local = |sources: &Sources, cache: &mut SenderView| {
        lab.prober
            .run(|| sources.local_for(&memo, target, cache))
            .expect("enter prober")
            .expect("route")
            .to_string()
    };
    assert_eq!(local(&sources, &mut cache), "198.18.0.1");
    assert!(memo.is_set());
    // News of the lab's own setup (IPv6 link-local addresses settle late) may start
    // another epoch; the source stays.
    sources.poll();
    assert_eq!(local(&sources, &mut cache), "198.18.0.1");
    lab.prober
        .ip(&[
            "route",
            "replace",
            "198.18.0.0/24",
            "dev",
            &dev,
            "src",
            "198.18.0.11",
        ])
        .expect("route replace");
    // Route news starts a new epoch within a second (sonde::engine::sources::ROUTE_EPOCH).
    let epoch = sources.epoch();
    let limit = std::time::Instant::now() + Duration::from_secs(3);
    while sources.epoch() == epoch && std::time::Instant::now() < limit {
        sources.poll();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_ne!(sources.epoch(), epoch, "rtnetlink announced no change");
    assert_eq!(local(&sources, &mut cache), "198.18.0.11");
}

/// The answer rings divide between stateless workers by residue: reader `i` of `n`
/// gets the rings `r % n == i`, `n` rounded down to a power of two no larger than the
/// rings, and together they hold every ring once.
#[test]
fn the_answer_rings_divide_by_residue() {
    if !lab::kernel_programs_or_skip() {
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    lab.prober
        .run(|| {
            for (want, parts) in [(1, 1), (2, 2), (3, 2), (4, 4), (7, 4), (8, 8), (64, 8)] {
                let mut k = KernelProbes::load().expect("load");
                let split = k.take_events().expect("events").split(want);
                assert_eq!(split.len(), parts, "split({want})");
                let mut all = Vec::new();
                for (i, part) in split.iter().enumerate() {
                    let rings = part.rings();
                    assert!(!rings.is_empty());
                    assert!(
                        rings.iter().all(|r| r % parts == i),
                        "{want}: {i} {rings:?}"
                    );
                    all.extend(rings);
                }
                all.sort_unstable();
                assert_eq!(all, (0..probe_common::EVENT_RINGS).collect::<Vec<_>>());
            }
        })
        .expect("enter prober");
}

/// Eight stateless workers (more than this machine's cores), each sending from its
/// own residue class of ports and sequence numbers and reading only its own rings:
/// every SYN, echo and UDP answer is matched to its probe (a worker reading another's
/// ring would find nothing and its probes would time out), with the kernel's clock,
/// and nothing is left over. The port range starts off the ring count's multiples,
/// so a ring chosen by the port alone instead of its offset in the range would show.
#[test]
fn eight_workers_each_match_the_answers_to_their_own_probes() {
    if !lab::kernel_programs_or_skip() {
        return;
    }
    let (lab, _l) = lab_with_listener();
    // A range that does not start at a multiple of the ring count.
    let ports = PortRange {
        lo: 61003,
        hi: 61999,
    };
    let (engine, kernel) = start(&lab, ports, 8);
    let before = kernel.counters().expect("counters");
    let per_check = 2000u64;
    run_mix(&engine, per_check, Clock::Kernel);
    let d = kernel.counters().expect("counters").since(&before);
    use probe_common::counters::XdpReason;
    assert_eq!(d.xdp(XdpReason::AnswerOpen), per_check);
    assert_eq!(d.xdp(XdpReason::AnswerClosed), per_check);
    assert_eq!(d.xdp(XdpReason::AnswerEcho), per_check);
    assert_eq!(d.xdp(XdpReason::AnswerUnreachable), per_check);
    assert_eq!(d.xdp(XdpReason::RingFull), 0);
    engine.shutdown();
}

/// `per_check` probes each of SYN to an open and to a closed port, echo, and UDP to a
/// closed port, in waves of 40 of each (120 source ports, fewer than any worker owns
/// here, so no probe waits on a port still in use): every result is the right one,
/// measured by `clock` within the timeout, none comes twice, and the engine counts
/// them all started and finished.
fn run_mix(engine: &Engine, per_check: u64, clock: Clock) {
    const WAVE: u64 = 40;
    let t = Duration::from_secs(2);
    let udp = ProbeSpec::Udp(Box::new(UdpSpec {
        payload: b"hello".to_vec(),
        expect_prefix: Vec::new(),
    }));
    let specs = [
        check("open", "198.18.0.2", 80, ProbeSpec::TcpSyn, t),
        check("closed", "198.18.0.2", 81, ProbeSpec::TcpSyn, t),
        check("ping", "198.18.0.2", 0, ProbeSpec::Icmp, t),
        check("udp-closed", "198.18.0.2", 8, udp, t),
    ];
    let total = per_check * specs.len() as u64;
    let mut results = Vec::with_capacity(total as usize);
    for wave in (0..per_check).step_by(WAVE as usize) {
        let end = (wave + WAVE).min(per_check);
        for n in wave..end {
            for (i, spec) in specs.iter().enumerate() {
                let job = Job::new(Arc::clone(spec), n * 4 + i as u64).expect("prepare");
                engine.submit(job).expect("running");
            }
        }
        for _ in 0..(end - wave) * specs.len() as u64 {
            let r = engine
                .results()
                .recv_timeout(Duration::from_secs(10))
                .expect("result");
            results.push(r);
        }
    }
    let mut seen = vec![false; total as usize];
    for r in &results {
        let want = match r.check.as_str() {
            "open" | "ping" => Reason::Ok,
            _ => Reason::Refused,
        };
        assert_eq!(r.reason, want, "{r:?}");
        assert_eq!(r.clock, clock, "{r:?}");
        assert!(r.rtt.is_some_and(|d| d < t), "{r:?}");
        assert!(
            !std::mem::replace(&mut seen[r.seq as usize], true),
            "{r:?} twice"
        );
    }
    // A worker counts its results finished once per pass, just after sending them.
    let limit = std::time::Instant::now() + Duration::from_secs(1);
    while engine.stats().finished < total && std::time::Instant::now() < limit {
        std::thread::sleep(Duration::from_millis(5));
    }
    let stats = engine.stats();
    assert_eq!((stats.started, stats.finished), (total, total));
}

/// Without the kernel programs: one packet socket sees every answer, and four
/// stateless workers share it, each reading whatever arrived and handing every
/// record to the worker whose ports it answers (a reader keeping or dropping the
/// others' records would leave their probes to time out). The socket divides as the
/// rings do: a power of two, at most eight readers.
#[test]
fn without_ebpf_the_workers_share_one_packet_socket() {
    if !lab::privileged_or_skip() {
        return;
    }
    let (lab, _l) = lab_with_listener();
    let iface = lab.link.a.name.clone();
    let engine = lab
        .prober
        .run(move || {
            let cfg = new_config(PortRange::DEFAULT);
            for (want, parts) in [(1, 1), (3, 2), (4, 4), (64, 8)] {
                let src = PacketSource::open(&iface, cfg).expect("packet socket");
                assert_eq!(Box::new(src).split(want).len(), parts, "split({want})");
            }
            PortRange::DEFAULT.reserve().expect("reserve ports");
            let source = PacketSource::open(&iface, cfg).expect("packet socket");
            engine(Box::new(source), cfg, 4)
        })
        .expect("enter prober");
    run_mix(&engine, 1000, Clock::Userspace);
    engine.shutdown();
}
