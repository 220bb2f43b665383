//! Who resets SYN-ACKs to probes (`ResetMode`, the daemon's `syn_ack_reset`): the TC
//! ingress program (the daemon's default) or the XDP program answer a SYN-ACK with its
//! RST themselves, never the prober's TCP stack, and the target keeps no half-open
//! connection; where the interface drops what XDP sends (a veth whose peer runs no XDP
//! program) the guard sees it and hands the resets to the TC program, which then resets
//! the target's retransmitted SYN-ACKs. Real programs, a real veth pair, a real listener.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use probe_common::counters::XdpReason;
use sonde::{
    ebpf::{AnswerHook, KernelError, KernelProbes, PeerPass, ResetMode},
    engine::{
        result::Reason,
        round::new_config,
        spec::ProbeSpec,
        uring::{Engine, EngineConfig, Job, StatelessParts},
        Clock, PortRange,
    },
    lab::{self, Lab, Netns},
};
use sonde_tests::{checks::check, servers::listener};

fn setup(lab: &Lab, mode: ResetMode) -> (Engine, KernelProbes) {
    setup_at(lab, mode, AnswerHook::Xdp)
}

/// As [`setup`], answers classified where `hook` says.
fn setup_at(lab: &Lab, mode: ResetMode, hook: AnswerHook) -> (Engine, KernelProbes) {
    let iface = lab.link.a.name.clone();
    lab.prober
        .run(move || {
            let cfg = new_config(PortRange::DEFAULT);
            let mut k = KernelProbes::load().expect("load");
            k.set_config(&cfg).expect("config");
            k.attach_with(&iface, hook).expect("attach");
            k.set_reset(mode).expect("who resets SYN-ACKs");
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
        .run(|| k.check_reset().expect("guard"))
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

/// `n` probes to an open port: every SYN-ACK reset by the kernel programs, none by the
/// prober's stack, and no half-open connection left at the target.
fn kernel_resets_all(lab: &Lab, engine: &Engine, k: &KernelProbes, n: u64, seq0: u64) {
    let (before, rsts0) = (k.counters().expect("counters"), stack_resets(&lab.prober));
    probe_open(engine, n, seq0);
    let d = k.counters().expect("counters").since(&before);
    assert_eq!(d.xdp(XdpReason::AnswerOpen), n);
    assert_eq!(d.xdp(XdpReason::ResetSent), n, "every SYN-ACK reset");
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
}

#[test]
fn resets_from_tc_leave_no_half_open_connection() {
    if !lab::kernel_programs_or_skip() {
        return;
    }
    // No XDP program on the target's end: the TC program's resets go out as any frame.
    let lab = Lab::two_hosts().expect("lab");
    let _l = listener(&lab.target, "198.18.0.2:80");
    let (engine, k) = setup(&lab, ResetMode::Tc);
    kernel_resets_all(&lab, &engine, &k, 300, 0);
    engine.shutdown();
}

#[test]
fn resets_from_tc_when_tc_also_classifies() {
    if !lab::kernel_programs_or_skip() {
        return;
    }
    // No XDP program at all: TC ingress classifies, records and resets.
    let lab = Lab::two_hosts().expect("lab");
    let _l = listener(&lab.target, "198.18.0.2:80");
    let (engine, mut k) = setup_at(&lab, ResetMode::Tc, AnswerHook::Tc);
    kernel_resets_all(&lab, &engine, &k, 300, 0);
    // Resets from XDP need the XDP program: refused, and the TC resets stay.
    let refused = k.set_reset(ResetMode::Xdp);
    assert!(
        matches!(&refused, Err(KernelError::Conflict { what }) if what.contains("answer_hook")),
        "{refused:?}"
    );
    assert_eq!(k.reset_state().mode, ResetMode::Tc);
    kernel_resets_all(&lab, &engine, &k, 20, 1000);
    engine.shutdown();
}

#[test]
fn resets_from_xdp_leave_no_half_open_connection() {
    if !lab::kernel_programs_or_skip() {
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    let _l = listener(&lab.target, "198.18.0.2:80");
    let _peer = peer_pass(&lab);
    let (engine, mut k) = setup(&lab, ResetMode::Xdp);
    assert_eq!(check_guard(&lab, &mut k), None, "first look: a baseline");
    kernel_resets_all(&lab, &engine, &k, 300, 0);
    assert_eq!(check_guard(&lab, &mut k), None, "nothing dropped");
    assert_eq!(k.reset_state().mode, ResetMode::Xdp);
    engine.shutdown();
}

#[test]
fn the_guard_hands_resets_to_tc_when_the_veth_drops_those_from_xdp() {
    if !lab::kernel_programs_or_skip() {
        return;
    }
    // No XDP program on the target's end: the veth drops what XDP sends back.
    let lab = Lab::two_hosts().expect("lab");
    let _l = listener(&lab.target, "198.18.0.2:80");
    let (engine, mut k) = setup(&lab, ResetMode::Xdp);
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
    let state = k.reset_state();
    assert_eq!(state.mode, ResetMode::Tc);
    assert_eq!(state.xdp_off_reason.as_deref(), Some(why.as_str()));
    // The lost resets left the target half-open; its SYN-ACK retransmissions (after
    // 1 s) now reach the TC program, which resets them.
    assert!(lab.target.syn_recv_count().expect("ss") > 0);
    let (before, rsts0) = (k.counters().expect("counters"), stack_resets(&lab.prober));
    wait_no_half_open(&lab);
    let d = k.counters().expect("counters").since(&before);
    assert!(d.xdp(XdpReason::ResetSent) > 0, "reset by the TC program");
    assert_eq!(stack_resets(&lab.prober), rsts0, "not by the stack");
    // New probes: the TC program resets every SYN-ACK.
    kernel_resets_all(&lab, &engine, &k, 20, 100);
    engine.shutdown();
}

const DAEMON_CONFIG: &str = r#"
[daemon]
syn_ack_reset = "xdp"

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
    daemon_with(lab, tag, DAEMON_CONFIG)
}

fn daemon_with(
    lab: &Lab,
    tag: &str,
    text: &str,
) -> (sonde_tests::daemon::Daemon, sonde_tests::daemon::TempDir) {
    let dir = sonde_tests::daemon::TempDir::new(tag);
    let config = dir.0.join("checks.toml");
    std::fs::write(&config, text).expect("write config");
    let iface = lab.link.a.name.clone();
    let d = sonde_tests::daemon::Daemon::start(&lab.prober, &dir.0, &config, &["--iface", &iface]);
    (d, dir)
}

/// `[daemon] syn_ack_reset = "xdp"` where the interface delivers: resets leave from XDP,
/// the guard leaves them on, the check is healthy and the target half-open nowhere.
#[test]
fn the_daemon_resets_from_xdp_when_asked() {
    if !lab::kernel_programs_or_skip() {
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    let _l = listener(&lab.target, "198.18.0.2:80");
    let _peer = peer_pass(&lab);
    let (d, _dir) = daemon_in(&lab, "xdp-reset-on");
    d.wait_all(&["syn"], "healthy", Duration::from_secs(5));
    // A few guard rounds (one a second) with resets flowing.
    std::thread::sleep(Duration::from_millis(2500));
    let info = d.client().get("/v1/info").expect("info");
    assert_eq!(info["syn_ack_reset"]["mode"], "xdp", "{info}");
    // Resets from XDP need the XDP program: `auto` takes it, veth or not.
    assert_eq!(info["answer_hook"]["hook"], "xdp", "{info}");
    assert_eq!(info["answer_hook"]["mode"], "native", "{info}");
    let text = d.client().metrics().expect("metrics");
    let mode = |m: &str| metric(&text, "sonde_syn_ack_reset_mode", &format!("mode=\"{m}\""));
    assert_eq!((mode("xdp"), mode("tc")), (Some(1.0), Some(0.0)));
    let sent = metric(&text, "sonde_syn_ack_resets_total", "result=\"sent\"").expect("sent");
    assert!(sent >= 5.0, "resets sent from XDP: {sent}");
    assert_eq!(lab.target.syn_recv_count().expect("ss"), 0);
    d.wait_all(&["syn"], "healthy", Duration::from_secs(1));
}

/// `[daemon] syn_ack_reset = "xdp"` on a veth whose peer runs no XDP program: the veth
/// drops the resets; the daemon's guard sees it within a second or two, says why in
/// /v1/info and /metrics, and the TC program resets SYN-ACKs from then on; the check
/// stays healthy throughout and no half-open connection is left.
#[test]
fn the_daemon_turns_resets_from_xdp_off_where_they_are_dropped() {
    if !lab::kernel_programs_or_skip() {
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    let _l = listener(&lab.target, "198.18.0.2:80");
    let (d, dir) = daemon_in(&lab, "xdp-reset-off");
    d.wait_all(&["syn"], "healthy", Duration::from_secs(5));
    let until = Instant::now() + Duration::from_secs(6);
    let info = loop {
        let info = d.client().get("/v1/info").expect("info");
        if info["syn_ack_reset"]["mode"] == "tc" {
            break info;
        }
        assert!(
            Instant::now() < until,
            "the guard never turned resets off: {info}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let why = info["syn_ack_reset"]["xdp_off_reason"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("dropped"), "{info}");
    assert!(d.log(&dir.0).contains("resets from XDP turned off"));
    let text = d.client().metrics().expect("metrics");
    let mode = |m: &str| metric(&text, "sonde_syn_ack_reset_mode", &format!("mode=\"{m}\""));
    assert_eq!((mode("xdp"), mode("tc")), (Some(0.0), Some(1.0)));
    wait_no_half_open(&lab);
    d.wait_all(&["syn"], "healthy", Duration::from_secs(1));
}

/// The daemon's defaults on a veth: answers classified at TC ingress (`answer_hook =
/// "auto"`), SYN-ACKs reset there too; a SYN and an ICMP check are healthy, timed by
/// the kernel, and the target is left with no half-open connection.
#[test]
fn the_daemon_classifies_at_tc_ingress_on_a_veth() {
    if !lab::kernel_programs_or_skip() {
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    let _l = listener(&lab.target, "198.18.0.2:80");
    let config = DAEMON_CONFIG.replace("[daemon]\nsyn_ack_reset = \"xdp\"\n", "")
        + r#"
[[check]]
id = "echo"
target = "198.18.0.2"
kind = "icmp"
interval = "200ms"
timeout = "100ms"
rise = 1
"#;
    assert!(!config.contains("[daemon]"), "{config}");
    let (d, _dir) = daemon_with(&lab, "tc-ingress", &config);
    d.wait_all(&["syn", "echo"], "healthy", Duration::from_secs(5));
    let info = d.client().get("/v1/info").expect("info");
    assert_eq!(info["answer_hook"]["hook"], "tc", "{info}");
    let why = info["answer_hook"]["why"].as_str().unwrap_or_default();
    assert!(why.contains("veth"), "{info}");
    assert_eq!(info["syn_ack_reset"]["mode"], "tc", "{info}");
    std::thread::sleep(Duration::from_millis(1000));
    let text = d.client().metrics().expect("metrics");
    let sent = metric(&text, "sonde_syn_ack_resets_total", "result=\"sent\"").expect("sent");
    assert!(sent >= 3.0, "resets sent by TC: {sent}");
    for id in ["syn", "echo"] {
        let c = d.client().get(&format!("/v1/checks/{id}")).expect("check");
        assert_eq!(c["status"]["last_result"]["clock"], "kernel", "{c}");
    }
    assert_eq!(lab.target.syn_recv_count().expect("ss"), 0);
}
