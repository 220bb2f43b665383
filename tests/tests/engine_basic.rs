//! The io_uring engine against real targets in namespaces: TCP connect and UDP probes,
//! open / closed / silent targets, timeout precision and file-descriptor hygiene.

use std::time::Duration;

use sonde::{
    engine::{
        result::Reason,
        spec::{ProbeSpec, UdpSpec},
        uring::{Engine, EngineConfig},
    },
    lab::{self, Lab},
};
use sonde_tests::{
    checks::{check, run_once},
    servers::{listener, udp_echo},
};

#[test]
fn tcp_connect_and_udp_probes() {
    if !lab::privileged_or_skip() {
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    let _l = listener(&lab.target, "198.18.0.2:80");
    lab.target
        .nft("add table inet t; add chain inet t in { type filter hook input priority 0; }; add rule inet t in tcp dport 9 drop; add rule inet t in udp dport 9 drop")
        .expect("nft");
    let _echo = udp_echo(&lab.target, "198.18.0.2:7", b"pong:");
    let engine = lab
        .prober
        .run(|| {
            Engine::start(
                &EngineConfig {
                    threads: 2,
                    ..EngineConfig::default()
                },
                None,
            )
        })
        .expect("enter")
        .expect("engine");

    let t = Duration::from_millis(300);
    let udp = |payload: &str, expect: &str| {
        ProbeSpec::Udp(Box::new(UdpSpec {
            payload: payload.as_bytes().to_vec(),
            expect_prefix: expect.as_bytes().to_vec(),
        }))
    };
    let specs = [
        check("open", "198.18.0.2", 80, ProbeSpec::TcpConnect, t),
        check("closed", "198.18.0.2", 81, ProbeSpec::TcpConnect, t),
        check("silent", "198.18.0.2", 9, ProbeSpec::TcpConnect, t),
        check("udp-ok", "198.18.0.2", 7, udp("hello", "pong:hello"), t),
        check("udp-wrong", "198.18.0.2", 7, udp("hello", "PONG"), t),
        check("udp-closed", "198.18.0.2", 8, udp("hello", ""), t),
        check("udp-silent", "198.18.0.2", 9, udp("hello", ""), t),
    ];
    let results = run_once(&engine, &specs);
    let reasons: Vec<(&str, &Reason)> = results
        .iter()
        .map(|r| (r.check.as_str(), &r.reason))
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("open", &Reason::Ok),
            ("closed", &Reason::Refused),
            ("silent", &Reason::Timeout),
            ("udp-ok", &Reason::Ok),
            ("udp-wrong", &Reason::PayloadMismatch),
            ("udp-closed", &Reason::Refused),
            ("udp-silent", &Reason::Timeout),
        ]
    );
    for r in &results {
        let total = r.phases.total.expect("total time");
        if r.reason == Reason::Timeout {
            // Timeouts fire at the deadline, not early and not much later.
            assert!(
                total >= t && total < t + Duration::from_millis(10),
                "{}: timeout after {total:?}",
                r.check
            );
            assert_eq!(r.rtt, None);
        } else {
            assert!(r.rtt.is_some_and(|d| d < t), "{}: {r:?}", r.check);
        }
    }
    assert!(results[0].phases.connect.is_some());
    engine.shutdown();
}

/// A connect probe's direct socket is kept after a refusal, or after a success once
/// the connection is reset (`connect(AF_UNSPEC)`, which leaves ECONNRESET pending until
/// the next connect starts), and the slot's next connect probe connects it again: the
/// verdicts must stay those of fresh sockets, and every connection the target accepted
/// must have been reset.
#[test]
fn reused_connect_sockets_judge_afresh_and_reset_every_connection() {
    if !lab::privileged_or_skip() {
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    let open = listener(&lab.target, "198.18.0.2:80");
    // Accept and hold every connection: one left open by the prober would stay
    // ESTABLISHED on the target.
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let holder = {
        let held = std::sync::Arc::clone(&held);
        std::thread::spawn(move || {
            for s in open.incoming() {
                match s {
                    Ok(s) => held.lock().expect("held").push(s),
                    Err(_) => return,
                }
            }
        })
    };
    lab.target
        .nft("add table inet t; add chain inet t in { type filter hook input priority 0; }; add rule inet t in tcp dport 9 drop")
        .expect("nft");
    let engine = lab
        .prober
        .run(|| {
            Engine::start(
                &EngineConfig {
                    threads: 1,
                    max_in_flight: 4,
                    ..EngineConfig::default()
                },
                None,
            )
        })
        .expect("enter")
        .expect("engine");
    // IPv6 on the prober's own loopback: a slot's kept IPv4 socket must not serve an
    // IPv6 probe (the ring makes a new socket over it), nor the other way round.
    let listener6 = listener(&lab.prober, "[::1]:80");
    let t = Duration::from_millis(200);
    let open = check("open", "198.18.0.2", 80, ProbeSpec::TcpConnect, t);
    let closed = check("closed", "198.18.0.2", 81, ProbeSpec::TcpConnect, t);
    let silent = check("silent", "198.18.0.2", 9, ProbeSpec::TcpConnect, t);
    let open6 = check("open6", "::1", 80, ProbeSpec::TcpConnect, t);
    let closed6 = check("closed6", "::1", 81, ProbeSpec::TcpConnect, t);
    // Every order of open and closed follows every other, with a timeout now and then
    // and the address family changing.
    let pattern = [
        &open, &open, &closed, &open, &closed, &closed, &silent, &open, &open6, &closed6, &open,
        &closed6, &open6, &closed,
    ];
    let rounds = 25;
    let mut expected = Vec::new();
    for round in 0..rounds {
        let specs: Vec<_> = pattern.iter().map(|s| std::sync::Arc::clone(s)).collect();
        for r in run_once(&engine, &specs) {
            expected.push((round, r.check.as_str().to_owned(), r.reason));
        }
    }
    for (round, check, reason) in &expected {
        let want = match check.as_str() {
            "open" | "open6" => Reason::Ok,
            "closed" | "closed6" => Reason::Refused,
            _ => Reason::Timeout,
        };
        assert_eq!(reason, &want, "round {round}, check {check}");
    }
    let stats = engine.stats();
    assert_eq!(stats.started, (pattern.len() * rounds) as u64);
    if stats.ring_sockets > 0 {
        // The ring makes the sockets (Linux 6.7 and later): many are reused (not after
        // a timeout, nor when the slot's kept socket is of the other family).
        assert_eq!(
            stats.ring_sockets + stats.reused_sockets,
            stats.started,
            "{stats:?}"
        );
        assert!(stats.reused_sockets >= stats.started / 3, "{stats:?}");
    }
    // Every accepted connection was reset by the prober: none is established on the
    // target, and each held stream reads the reset.
    std::thread::sleep(Duration::from_millis(100));
    let out = lab
        .target
        .exec(&["ss", "-Htn", "state", "established"])
        .expect("ss");
    let established = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        established.lines().count(),
        0,
        "still established:\n{established}"
    );
    let held = std::mem::take(&mut *held.lock().expect("held"));
    let opens = pattern.iter().filter(|s| s.id.as_str() == "open").count();
    assert_eq!(held.len(), opens * rounds, "connections accepted");
    for mut s in held {
        let mut b = [0u8; 1];
        let r = std::io::Read::read(&mut s, &mut b);
        assert!(
            r.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "a held connection read {r:?}, not a reset"
        );
    }
    // The IPv6 connections, accepted now (they waited in the backlog), were reset too.
    listener6.set_nonblocking(true).expect("nonblocking");
    let opens6 = pattern.iter().filter(|s| s.id.as_str() == "open6").count();
    let mut reset6 = 0;
    while let Ok((mut s, _)) = listener6.accept() {
        s.set_nonblocking(false).expect("blocking");
        let mut b = [0u8; 1];
        let r = std::io::Read::read(&mut s, &mut b);
        assert!(
            r.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "an IPv6 connection read {r:?}, not a reset"
        );
        reset6 += 1;
    }
    assert_eq!(reset6, opens6 * rounds, "IPv6 connections accepted");
    engine.shutdown();
    drop(holder);
}
