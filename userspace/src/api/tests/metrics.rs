//! Metrics rendering, read back with a real Prometheus text parser.

use std::collections::BTreeMap;

use probe_common::counters::{TcReason, XdpReason};
use prom_text_format_parser::{Scrape, Type, ValueType};

use super::info;
use crate::{
    api::metrics::{render, MetricsInput},
    ebpf::Counters,
    engine::{
        budget::BudgetStats,
        result::Reason,
        spec::{CheckId, Target},
        uring::EngineCounters,
        Clock,
    },
    health::{CheckStatus, Health, LastResult, LatencySummary, PhaseLatencies},
};

const HOSTILE: &str = "a\"b\\c\nd},e=\"f";

fn status(id: &str, state: Health, labels: &[(&str, &str)]) -> CheckStatus {
    CheckStatus {
        id: CheckId::new(id),
        state,
        since_unix_ms: 1_700_000_000_500,
        last_result: None,
        consecutive_ok: 0,
        consecutive_fail: 3,
        latency: PhaseLatencies::default(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        kind: "tcp_connect",
        target: Target {
            host: "::1".into(),
            addr: "::1".parse().unwrap(),
            port: 443,
            source: Default::default(),
        },
    }
}

fn input() -> MetricsInput {
    let mut web = status(
        "web-1",
        Health::Healthy,
        &[("pool", "a"), ("team.name", HOSTILE), ("team_name", "dup")],
    );
    web.last_result = Some(LastResult {
        seq: 10,
        ok: true,
        reason: Reason::Ok,
        rtt: Some(std::time::Duration::from_micros(1_500)),
        clock: Clock::Kernel,
        http_status: None,
        cert_days_left: None,
        at: tokio::time::Instant::now(),
        at_ms: 500,
        at_wall: std::time::UNIX_EPOCH,
    });
    web.latency.rtt = LatencySummary {
        p50_us: 1_500,
        p90_us: 2_000,
        p99_us: 9_000,
        max_us: 12_000,
        count: 10,
    };
    let evil = status(HOSTILE, Health::Unhealthy, &[]);
    let outcomes = BTreeMap::from([(
        CheckId::new("web-1"),
        BTreeMap::from([("ok", 9u64), ("timeout", 1u64)]),
    )]);
    let kernel = Counters {
        xdp: (0..u64::from(XdpReason::COUNT)).map(|i| i * 10).collect(),
        tc: (0..u64::from(TcReason::COUNT)).map(|i| i + 100).collect(),
    };
    MetricsInput {
        info: info(),
        statuses: vec![evil, web],
        outcomes,
        engine: EngineCounters {
            started: 11,
            finished: 10,
            delayed_in_flight: 1,
            socket_errors: 2,
            submits: 30,
            completions: 40,
            ring_sockets: 3,
            reused_sockets: 4,
        },
        budget: BudgetStats {
            admitted: 5,
            delayed_by_global: 1,
            delayed_by_target: 2,
            delayed_by_inflight: 3,
            delayed_by_sockets: 4,
            skipped: 6,
        },
        kernel: Some(kernel),
        cluster: None,
        refused_checks: 0,
        omitted: None,
    }
}

fn unescape(v: &str) -> String {
    let (mut out, mut it) = (String::new(), v.chars());
    while let Some(c) = it.next() {
        if c == '\\' {
            match it.next() {
                Some('n') => out.push('\n'),
                Some(c) => out.push(c),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `(labels, value)` of every sample of `name` of `vt`.
fn samples(
    scrape: &Scrape,
    name: &str,
    kind: Type,
    vt: ValueType,
) -> Vec<(BTreeMap<String, String>, f64)> {
    let m = scrape
        .metrics
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no family {name}"));
    assert_eq!(m.kind, kind, "{name}");
    assert!(m.help_desc.is_some(), "{name} has HELP");
    m.samples
        .iter()
        .filter(|s| s.value.value_type == vt)
        .map(|s| {
            let labels = s
                .labels
                .iter()
                .map(|l| (l.key.clone(), unescape(&l.value)))
                .collect();
            (labels, s.value.value.as_f64())
        })
        .collect()
}

fn value(scrape: &Scrape, name: &str, kind: Type, want: &[(&str, &str)]) -> f64 {
    let all = samples(scrape, name, kind, ValueType::Sample);
    let hit: Vec<_> = all
        .iter()
        .filter(|(l, _)| {
            want.iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(hit.len(), 1, "{name} {want:?} in {all:?}");
    hit[0].1
}

#[test]
fn renders_parseable_text_with_the_values() {
    let text = render(&input());
    let scrape = Scrape::parse(&text).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    let g = Type::Gauge;
    let c = Type::Counter;
    assert_eq!(
        value(
            &scrape,
            "sonde_check_state",
            g,
            &[("check", "web-1"), ("state", "healthy")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &scrape,
            "sonde_check_state",
            g,
            &[("check", "web-1"), ("state", "unknown")]
        ),
        0.0
    );
    assert_eq!(
        value(
            &scrape,
            "sonde_check_state",
            g,
            &[("check", HOSTILE), ("state", "unhealthy")]
        ),
        1.0
    );
    let info = samples(&scrape, "sonde_check_info", g, ValueType::Sample);
    let web = &info.iter().find(|(l, _)| l["check"] == "web-1").unwrap().0;
    assert_eq!(web["target"], "[::1]:443");
    assert_eq!(web["label_pool"], "a");
    assert_eq!(
        web["label_team_name"], HOSTILE,
        "first of two keys sanitised alike wins"
    );
    assert_eq!(
        value(
            &scrape,
            "sonde_check_state_since_seconds",
            g,
            &[("check", "web-1")]
        ),
        1_700_000_000.5
    );
    assert_eq!(
        value(
            &scrape,
            "sonde_check_consecutive_failures",
            g,
            &[("check", "web-1")]
        ),
        3.0
    );
    let clock = |c: &str| value(&scrape, "sonde_check_last_clock", g, &[("clock", c)]);
    assert_eq!((clock("kernel"), clock("userspace")), (1.0, 0.0));
    let clocks = samples(&scrape, "sonde_check_last_clock", g, ValueType::Sample);
    assert!(
        clocks.iter().all(|(l, _)| l["check"] == "web-1"),
        "only checks with a result: {clocks:?}"
    );
    let lat = |q: &str| {
        value(
            &scrape,
            "sonde_check_latency_seconds",
            Type::Summary,
            &[("check", "web-1"), ("phase", "rtt"), ("quantile", q)],
        )
    };
    assert_eq!(
        (lat("0.5"), lat("0.9"), lat("0.99")),
        (0.0015, 0.002, 0.009)
    );
    let count = samples(
        &scrape,
        "sonde_check_latency_seconds",
        Type::Summary,
        ValueType::Count,
    );
    assert_eq!(count.len(), 1, "only measured phases: {count:?}");
    assert_eq!(count[0].1, 10.0);
    assert_eq!(
        value(
            &scrape,
            "sonde_check_latency_max_seconds",
            g,
            &[("phase", "rtt")]
        ),
        0.012
    );
    assert_eq!(
        value(
            &scrape,
            "sonde_probes_total",
            c,
            &[("check", "web-1"), ("outcome", "timeout")]
        ),
        1.0
    );
    assert_eq!(
        value(&scrape, "sonde_engine_probes_started_total", c, &[]),
        11.0
    );
    assert_eq!(
        value(&scrape, "sonde_engine_completions_total", c, &[]),
        40.0
    );
    assert_eq!(
        value(
            &scrape,
            "sonde_budget_delayed_total",
            c,
            &[("reason", "in_flight")]
        ),
        3.0
    );
    assert_eq!(value(&scrape, "sonde_budget_skipped_total", c, &[]), 6.0);
    assert_eq!(
        value(&scrape, "sonde_info", g, &[("version", "0.1.0-test")]),
        1.0
    );
    assert_eq!(value(&scrape, "sonde_checks", g, &[]), 2.0);
    assert_eq!(value(&scrape, "sonde_kernel_attached", g, &[]), 1.0);
    let open = XdpReason::AnswerOpen;
    let want = f64::from(open as u32 * 10);
    assert_eq!(
        value(
            &scrape,
            "sonde_xdp_frames_total",
            c,
            &[("reason", open.name())]
        ),
        want
    );
    let xdp = samples(&scrape, "sonde_xdp_frames_total", c, ValueType::Sample);
    assert_eq!(
        xdp.len(),
        XdpReason::EXCLUSIVE as usize,
        "no_stamp is not a frame reason"
    );
    let no_stamp = f64::from(XdpReason::NoStamp as u32 * 10);
    assert_eq!(
        value(&scrape, "sonde_xdp_answers_without_stamp_total", c, &[]),
        no_stamp
    );
    let stamped = TcReason::StampedSyn;
    assert_eq!(
        value(
            &scrape,
            "sonde_tc_packets_total",
            c,
            &[("reason", stamped.name())]
        ),
        f64::from(stamped as u32 + 100)
    );
}

#[test]
fn without_kernel_counters_the_families_are_left_out() {
    let mut i = input();
    i.kernel = None;
    i.statuses.clear();
    let text = render(&i);
    let scrape = Scrape::parse(&text).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    assert_eq!(
        value(&scrape, "sonde_kernel_attached", Type::Gauge, &[]),
        0.0
    );
    assert!(!text.contains("sonde_xdp_frames_total{"));
    assert!(!text.contains("sonde_tc_packets_total{"));
}

#[test]
fn hostile_label_values_stay_on_one_line() {
    let text = render(&input());
    for line in text.lines().filter(|l| l.contains("label_team_name")) {
        assert!(
            line.contains(r#"label_team_name="a\"b\\c\nd},e=\"f""#),
            "{line}"
        );
    }
    assert!(!text.contains("label_team_name=\"dup\""));
}

/// Beyond `[daemon] metrics_check_limit` the daemon passes counts instead of statuses:
/// no per-check family, the state counts cover every check, and the omission is said.
#[test]
fn checks_beyond_the_limit_are_counted_not_listed() {
    use crate::api::metrics::StateCounts;
    let listed = render(&input());
    let scrape = Scrape::parse(&listed).unwrap_or_else(|e| panic!("{e:?}\n{listed}"));
    let g = Type::Gauge;
    let n = input().statuses.len() as f64;
    assert_eq!(value(&scrape, "sonde_checks", g, &[]), n);
    assert_eq!(value(&scrape, "sonde_metrics_checks_omitted", g, &[]), 0.0);
    let by_state: f64 = samples(&scrape, "sonde_checks_by_state", g, ValueType::Sample)
        .iter()
        .map(|(_, v)| v)
        .sum();
    assert_eq!(by_state, n);

    let omitted = StateCounts {
        healthy: 999_000,
        unhealthy: 700,
        unknown: 300,
    };
    let text = render(&MetricsInput {
        statuses: Vec::new(),
        outcomes: BTreeMap::new(),
        omitted: Some(omitted),
        ..input()
    });
    let scrape = Scrape::parse(&text).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    assert_eq!(value(&scrape, "sonde_checks", g, &[]), 1_000_000.0);
    assert_eq!(
        value(&scrape, "sonde_metrics_checks_omitted", g, &[]),
        1_000_000.0
    );
    for (state, want) in [
        ("healthy", 999_000.0),
        ("unhealthy", 700.0),
        ("unknown", 300.0),
    ] {
        let got = value(&scrape, "sonde_checks_by_state", g, &[("state", state)]);
        assert_eq!(got, want, "{state}");
    }
    assert!(
        scrape.metrics.iter().all(|m| m
            .samples
            .iter()
            .all(|s| s.labels.iter().all(|l| l.key != "check"))),
        "no per-check series:\n{text}"
    );
}
