//! The io_uring engine against real targets in namespaces: TCP connect and UDP probes,
//! open / closed / silent targets, timeout precision and file-descriptor hygiene.

use std::{net::TcpListener, time::Duration};

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
    servers::udp_echo,
};

#[test]
fn tcp_connect_and_udp_probes() {
    if !lab::privileged_or_skip() {
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    let _l = lab
        .target
        .run(|| TcpListener::bind("198.18.0.2:80"))
        .expect("enter")
        .expect("listen");
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
