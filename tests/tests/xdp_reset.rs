//! Resets sent from XDP (`xdp_reset`): a SYN-ACK to a probe is answered with its RST by
//! the XDP program itself (`XDP_TX`), not by the prober's TCP stack; and where the
//! interface drops those frames (a veth whose peer runs no XDP program) the guard sees
//! it and hands SYN-ACKs back to the stack, which then resets the target's
//! retransmitted SYN-ACKs. Real programs, a real veth pair, a real listener.

use std::{
    net::TcpListener,
    sync::Arc,
    time::{Duration, Instant},
};

use probe_common::counters::XdpReason;
use sonde::{
    ebpf::{KernelProbes, PeerPass},
    engine::{
        result::Reason,
        round::new_config,
        spec::ProbeSpec,
        uring::{Engine, EngineConfig, Job, StatelessParts},
        Clock, PortRange,
    },
    lab::{self, Lab, Netns},
};
use sonde_tests::checks::check;

fn setup(lab: &Lab) -> (Engine, KernelProbes) {
    let iface = lab.link.a.name.clone();
    lab.prober
        .run(move || {
            let cfg = new_config(PortRange::DEFAULT);
            let mut k = KernelProbes::load().expect("load");
            k.set_config(&cfg).expect("config");
            k.attach(&iface).expect("attach");
            k.set_xdp_reset(true).expect("resets from XDP");
            PortRange::DEFAULT.reserve().expect("reserve ports");
            let parts = StatelessParts {
                source: Box::new(k.take_events().expect("events")),
                probe: cfg,
            };
            let e = Engine::start(
                &EngineConfig {
                    threads: 1,
                    stateless_senders: 1,
                    ..EngineConfig::default()
                },
                Some(parts),
            )
            .expect("engine");
            (e, k)
        })
        .expect("enter prober")
}

/// `n` SYN probes to the listener; every one must find it open, timed by the kernel.
fn probe_open(engine: &Engine, n: u64, seq0: u64) {
    let spec = check(
        "open",
        "198.18.0.2",
        80,
        ProbeSpec::TcpSyn,
        Duration::from_millis(500),
    );
    for i in 0..n {
        engine
            .submit(Job::new(Arc::clone(&spec), seq0 + i).expect("prepare"))
            .expect("running");
    }
    for _ in 0..n {
        let r = engine
            .results()
            .recv_timeout(Duration::from_secs(5))
            .expect("result");
        assert_eq!(r.reason, Reason::Ok, "{r:?}");
        assert_eq!(r.clock, Clock::Kernel, "{r:?}");
    }
}

/// RSTs the namespace's own TCP stack has sent (`Tcp: OutRsts`).
fn stack_resets(ns: &Netns) -> u64 {
    let out = ns.exec(&["cat", "/proc/net/snmp"]).expect("snmp");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().expect("names"), tcp.next().expect("values"));
    let i = names
        .split_whitespace()
        .position(|n| n == "OutRsts")
        .expect("OutRsts");
    values
        .split_whitespace()
        .nth(i)
        .and_then(|v| v.parse().ok())
        .expect("value")
}

fn check_guard(lab: &Lab, k: &mut KernelProbes) -> Option<String> {
    lab.prober
        .run(|| k.check_xdp_reset().expect("guard"))
        .expect("enter prober")
}

/// The pass-everything XDP program on the target's end of the veth, so that what the
/// prober's XDP program sends back arrives.
fn peer_pass(lab: &Lab) -> PeerPass {
    let peer = lab.link.b.name.clone();
    lab.target
        .run(move || PeerPass::attach(&peer))
        .expect("enter target")
        .expect("XDP program on the target's end")
}

/// Wait (up to 8 s: the target retransmits its SYN-ACKs after 1 s, then 3 s) until the
/// target holds no half-open connection.
fn wait_no_half_open(lab: &Lab) {
    let until = Instant::now() + Duration::from_secs(8);
    while lab.target.syn_recv_count().expect("ss") > 0 {
        assert!(Instant::now() < until, "half-open connections left");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn listener(lab: &Lab) -> TcpListener {
    lab.target
        .run(|| TcpListener::bind("198.18.0.2:80"))
        .expect("enter")
        .expect("listen")
}

#[test]
fn resets_from_xdp_leave_no_half_open_connection() {
    if !lab::kernel_programs_or_skip() {
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    let _l = listener(&lab);
    let _peer = peer_pass(&lab);
    let (engine, mut k) = setup(&lab);
    assert_eq!(check_guard(&lab, &mut k), None, "first look: a baseline");
    let (before, rsts0) = (k.counters().expect("counters"), stack_resets(&lab.prober));
    let n = 300;
    probe_open(&engine, n, 0);
    let d = k.counters().expect("counters").since(&before);
    assert_eq!(d.xdp(XdpReason::AnswerOpen), n);
    assert_eq!(d.xdp(XdpReason::ResetSent), n, "every SYN-ACK reset in XDP");
    assert_eq!(d.xdp(XdpReason::ResetFailed), 0);
    assert_eq!(
        stack_resets(&lab.prober) - rsts0,
        0,
        "the prober's TCP stack saw no SYN-ACK to reset"
    );
    assert_eq!(
        lab.target.syn_recv_count().expect("ss"),
        0,
        "the target got every RST: no half-open connection left"
    );
    assert_eq!(check_guard(&lab, &mut k), None, "nothing dropped");
    assert!(k.xdp_reset().on);
    engine.shutdown();
}

#[test]
fn the_guard_hands_syn_acks_back_to_the_stack_when_the_veth_drops_resets() {
    if !lab::kernel_programs_or_skip() {
        return;
    }
    // No XDP program on the target's end: the veth drops what XDP sends back.
    let lab = Lab::two_hosts().expect("lab");
    let _l = listener(&lab);
    let (engine, mut k) = setup(&lab);
    assert_eq!(check_guard(&lab, &mut k), None, "first look: a baseline");
    let before = k.counters().expect("counters");
    probe_open(&engine, 20, 0);
    let d = k.counters().expect("counters").since(&before);
    assert_eq!(d.xdp(XdpReason::ResetSent), 20);
    let why = check_guard(&lab, &mut k).expect("the guard saw the drops");
    assert!(
        why.contains("dropped") && why.contains(&lab.link.a.name),
        "{why}"
    );
    let state = k.xdp_reset();
    assert!(!state.on && state.off_reason.as_deref() == Some(why.as_str()));
    // The lost resets left the target half-open; its SYN-ACK retransmissions (after
    // 1 s) now reach the prober's stack, which resets them.
    assert!(lab.target.syn_recv_count().expect("ss") > 0);
    let rsts0 = stack_resets(&lab.prober);
    wait_no_half_open(&lab);
    assert!(
        stack_resets(&lab.prober) > rsts0,
        "reset by the prober's stack"
    );
    // New probes: SYN-ACKs go to the stack, nothing is sent from XDP.
    let before = k.counters().expect("counters");
    probe_open(&engine, 20, 100);
    let d = k.counters().expect("counters").since(&before);
    assert_eq!(d.xdp(XdpReason::ResetSent), 0);
    assert_eq!(d.xdp(XdpReason::AnswerOpen), 20);
    engine.shutdown();
}

const DAEMON_CONFIG: &str = r#"
[daemon]
xdp_reset = true

[[check]]
id = "syn"
target = "198.18.0.2:80"
kind = "tcp_syn"
interval = "200ms"
fast_interval = "100ms"
timeout = "100ms"
jitter = 0.0
rise = 1
fall = 2
"#;

/// The value of the sample of `name` whose line contains `labels` in `/metrics`.
fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

fn daemon_in(lab: &Lab, tag: &str) -> (sonde_tests::daemon::Daemon, sonde_tests::daemon::TempDir) {
    let dir = sonde_tests::daemon::TempDir::new(tag);
    let config = dir.0.join("checks.toml");
    std::fs::write(&config, DAEMON_CONFIG).expect("write config");
    let iface = lab.link.a.name.clone();
    let d = sonde_tests::daemon::Daemon::start(&lab.prober, &dir.0, &config, &["--iface", &iface]);
    (d, dir)
}

/// `[daemon] xdp_reset = true` where the interface delivers: resets leave from XDP,
/// the guard leaves them on, the check is healthy and the target half-open nowhere.
#[test]
fn the_daemon_resets_from_xdp_when_asked() {
    if !lab::kernel_programs_or_skip() {
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    let _l = listener(&lab);
    let _peer = peer_pass(&lab);
    let (d, _dir) = daemon_in(&lab, "xdp-reset-on");
    d.wait_all(&["syn"], "healthy", Duration::from_secs(5));
    // A few guard rounds (one a second) with resets flowing.
    std::thread::sleep(Duration::from_millis(2500));
    let info = d.client().get("/v1/info").expect("info");
    assert_eq!(info["xdp_reset"]["on"], true, "{info}");
    let text = d.client().metrics().expect("metrics");
    assert_eq!(metric(&text, "sonde_xdp_reset_enabled", ""), Some(1.0));
    let sent = metric(&text, "sonde_xdp_resets_total", "result=\"sent\"").expect("sent");
    assert!(sent >= 5.0, "resets sent from XDP: {sent}");
    assert_eq!(lab.target.syn_recv_count().expect("ss"), 0);
    d.wait_all(&["syn"], "healthy", Duration::from_secs(1));
}

/// `[daemon] xdp_reset = true` on a veth whose peer runs no XDP program: the veth drops
/// the resets; the daemon's guard sees it within a second or two, says why in
/// /v1/info and /metrics, and SYN-ACKs are reset by the stack again; the check stays
/// healthy throughout and no half-open connection is left.
#[test]
fn the_daemon_turns_resets_from_xdp_off_where_they_are_dropped() {
    if !lab::kernel_programs_or_skip() {
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    let _l = listener(&lab);
    let (d, dir) = daemon_in(&lab, "xdp-reset-off");
    d.wait_all(&["syn"], "healthy", Duration::from_secs(5));
    let until = Instant::now() + Duration::from_secs(6);
    let info = loop {
        let info = d.client().get("/v1/info").expect("info");
        if info["xdp_reset"]["on"] == false {
            break info;
        }
        assert!(
            Instant::now() < until,
            "the guard never turned resets off: {info}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let why = info["xdp_reset"]["off_reason"].as_str().unwrap_or_default();
    assert!(why.contains("dropped"), "{info}");
    assert!(d.log(&dir.0).contains("resets from XDP turned off"));
    let text = d.client().metrics().expect("metrics");
    assert_eq!(metric(&text, "sonde_xdp_reset_enabled", ""), Some(0.0));
    wait_no_half_open(&lab);
    d.wait_all(&["syn"], "healthy", Duration::from_secs(1));
}
