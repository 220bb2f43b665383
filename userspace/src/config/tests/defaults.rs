//! `[defaults]` and the built-in defaults.

use std::time::Duration;

use super::{assert_problem, one_check, parse_ok, problems};
use crate::engine::spec::{InitialState, ProbeSpec, Thresholds};

#[test]
fn built_in_defaults() {
    let c = parse_ok(&one_check("198.18.0.1:80", "tcp_syn", ""));
    let s = &c.checks[0];
    assert_eq!(s.interval, Duration::from_secs(5));
    assert_eq!(s.timeout, Duration::from_secs(2));
    assert_eq!(s.fast_interval, Duration::from_millis(1_666));
    assert!((s.jitter - 0.1).abs() < f64::EPSILON);
    assert_eq!(s.thresholds, Thresholds::Consecutive { rise: 2, fall: 3 });
    assert_eq!(s.initial, InitialState::Unknown);
    assert!(s.labels.is_empty());
}

#[test]
fn built_in_timing_follows_a_short_interval() {
    let c = parse_ok(&one_check("198.18.0.1", "icmp", "interval = \"1s\"\n"));
    let s = &c.checks[0];
    assert_eq!(s.timeout, Duration::from_millis(500));
    assert_eq!(s.fast_interval, Duration::from_millis(333));
    let c = parse_ok(&one_check("198.18.0.1", "icmp", "interval = \"150ms\"\n"));
    assert_eq!(c.checks[0].fast_interval, Duration::from_millis(100));
    let c = parse_ok(&one_check("198.18.0.1", "icmp", "interval = \"50ms\"\n"));
    let s = &c.checks[0];
    assert_eq!(
        (s.timeout, s.fast_interval),
        (Duration::from_millis(25), s.interval)
    );
}

#[test]
fn defaults_apply_and_checks_override_them() {
    let text = "\
[defaults]
interval = \"10s\"
timeout = \"1s\"
jitter = 0.2
rise = 4
initial = \"healthy\"
labels = { site = \"a\", tier = \"1\" }

[[check]]
id = \"plain\"
target = \"198.18.0.1\"
kind = \"icmp\"

[[check]]
id = \"own\"
target = \"198.18.0.1\"
kind = \"icmp\"
interval = \"2s\"
jitter = 0.0
fall = 7
initial = \"unhealthy\"
labels = { tier = \"2\" }
";
    let c = parse_ok(text);
    let (plain, own) = (&c.checks[0], &c.checks[1]);
    assert_eq!(plain.interval, Duration::from_secs(10));
    assert_eq!(plain.timeout, Duration::from_secs(1));
    assert!((plain.jitter - 0.2).abs() < f64::EPSILON);
    assert_eq!(
        plain.thresholds,
        Thresholds::Consecutive { rise: 4, fall: 3 }
    );
    assert_eq!(plain.initial, InitialState::Healthy);
    assert_eq!(plain.labels["tier"], "1");
    assert_eq!(own.interval, Duration::from_secs(2));
    assert_eq!(
        own.timeout,
        Duration::from_secs(1),
        "timeout still from defaults"
    );
    assert_eq!(own.fast_interval, Duration::from_millis(666));
    assert!(own.jitter.abs() < f64::EPSILON);
    assert_eq!(own.thresholds, Thresholds::Consecutive { rise: 4, fall: 7 });
    assert_eq!(own.initial, InitialState::Unhealthy);
    assert_eq!(
        (own.labels["site"].as_str(), own.labels["tier"].as_str()),
        ("a", "2")
    );
}

#[test]
fn default_kind_and_kind_tables_apply_to_matching_kinds_only() {
    let text = "\
[defaults]
kind = \"http\"
http = { path = \"/ping\", headers = { \"X-A\" = \"1\", \"X-B\" = \"1\" } }
dns = { type = \"AAAA\" }

[[check]]
id = \"web\"
target = \"198.18.0.1:80\"
[check.http]
headers = { \"x-b\" = \"2\" }

[[check]]
id = \"ns\"
target = \"198.18.0.1:53\"
kind = \"dns\"
dns = { name = \"example.test\" }
";
    let c = parse_ok(text);
    let ProbeSpec::Http(h) = &c.checks[0].probe else {
        panic!("{:?}", c.checks[0].probe)
    };
    assert_eq!(h.path, "/ping");
    let headers: Vec<(&str, &str)> = h
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(headers, [("X-A", "1"), ("x-b", "2")]);
    let ProbeSpec::Dns(d) = &c.checks[1].probe else {
        panic!()
    };
    assert_eq!((d.name.as_str(), d.qtype), ("example.test", 28));
}

#[test]
fn a_checks_threshold_style_replaces_the_defaults_style() {
    let text = "\
[defaults]
window = 10
threshold = 6

[[check]]
id = \"w\"
target = \"198.18.0.1\"
kind = \"icmp\"
window = 8

[[check]]
id = \"c\"
target = \"198.18.0.1\"
kind = \"icmp\"
rise = 1
";
    let c = parse_ok(text);
    assert_eq!(
        c.checks[0].thresholds,
        Thresholds::Window {
            window: 8,
            threshold: 6
        }
    );
    assert_eq!(
        c.checks[1].thresholds,
        Thresholds::Consecutive { rise: 1, fall: 3 }
    );
}

#[test]
fn a_bad_default_is_reported_once_without_a_check() {
    let mut text = "[defaults]\ntimeout = \"5s\"\ninterval = \"2s\"\n".to_owned();
    for id in ["a", "b", "c"] {
        text += &format!("[[check]]\nid = \"{id}\"\ntarget = \"198.18.0.1\"\nkind = \"icmp\"\n");
    }
    let all = problems(&text);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(
        (all[0].line, all[0].field.as_str()),
        (Some(2), "defaults.timeout")
    );
    assert_eq!(all[0].check, None);
}

#[test]
fn a_conflict_with_a_default_is_blamed_on_the_checks_value() {
    let text = format!(
        "[defaults]\ntimeout = \"3s\"\n{}",
        one_check("198.18.0.1", "icmp", "interval = \"2s\"\n")
    );
    assert_problem(
        &text,
        7,
        "check[0].interval",
        "timeout (3s) must be below interval (2s)",
    );
    assert_eq!(problems(&text)[0].check.as_deref(), Some("c"));
}

#[test]
fn defaults_cannot_set_id_or_target() {
    let text = "[defaults]\nid = \"x\"\ntarget = \"198.18.0.1\"\n";
    assert_problem(text, 2, "defaults.id", "id cannot be defaulted");
    assert_problem(text, 3, "defaults.target", "target cannot be defaulted");
}

#[test]
fn an_invalid_value_does_not_cause_a_second_problem() {
    let text = one_check("198.18.0.1", "icmp", "interval = \"5\"\ntimeout = \"3s\"\n");
    assert_eq!(problems(&text).len(), 1, "{:?}", problems(&text));
}
