//! Tests of the configuration: the example file, the API, defaults, targets and
//! durations here; one test per validation rule in `rules`.

mod defaults;
mod http;
mod rules;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    time::Duration,
};

use serde_json::json;

use super::{
    duration, load_file, parse_check_json, parse_defaults_json, parse_str, ConfigError, Defaults,
    Problem,
};
use crate::engine::{
    spec::{
        CheckId, CheckSpec, DnsSpec, HttpExpect, HttpSpec, InitialState, ProbeSpec, ProxyProtocol,
        StatusRange, Target, Thresholds, TlsSpec, UdpSpec,
    },
    PortRange,
};

const EXAMPLE: &str = include_str!("../../../../examples/checks.toml");

/// The problems of a text that must be refused.
pub(super) fn problems(text: &str) -> Vec<Problem> {
    match parse_str(text, "t.toml") {
        Ok(c) => panic!("accepted: {:#?}", c.checks),
        Err(e) => e.problems().to_vec(),
    }
}

/// Assert that refusing `text` reports a problem at `line` on `field` whose message
/// contains `needle`.
#[track_caller]
pub(super) fn assert_problem(text: &str, line: usize, field: &str, needle: &str) {
    let all = problems(text);
    let found = all
        .iter()
        .any(|p| p.line == Some(line) && p.field == field && p.message.contains(needle));
    let listed: Vec<String> = all.iter().map(ToString::to_string).collect();
    assert!(
        found,
        "no problem at line {line} on {field} containing {needle:?}; got:\n{}",
        listed.join("\n")
    );
}

/// A file with one check `c` (lines 1-3: header, id, target) followed by `rest`.
pub(super) fn one_check(target: &str, kind: &str, rest: &str) -> String {
    format!("[[check]]\nid = \"c\"\ntarget = \"{target}\"\nkind = \"{kind}\"\n{rest}")
}

/// Parse a text that must be accepted.
#[track_caller]
pub(super) fn parse_ok(text: &str) -> super::Config {
    parse_str(text, "t.toml").unwrap_or_else(|e| panic!("refused:\n{e}"))
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn spec(id: &str, host: &str, addr: IpAddr, port: u16, probe: ProbeSpec) -> CheckSpec {
    CheckSpec {
        id: CheckId::new(id),
        target: Target {
            host: host.into(),
            addr,
            port,
            source: Default::default(),
        },
        probe,
        interval: Duration::from_secs(5),
        fast_interval: Duration::from_secs(1),
        timeout: Duration::from_secs(2),
        jitter: 0.1,
        thresholds: Thresholds::Consecutive { rise: 2, fall: 3 },
        initial: InitialState::Unknown,
        labels: BTreeMap::from([("site".to_owned(), "lab".to_owned())]).into(),
    }
}

fn example_specs() -> Vec<CheckSpec> {
    let v6: IpAddr = "2001:db8::10".parse().unwrap();
    let ua = ("User-Agent".to_owned(), "sonde".to_owned());
    let mut web = spec(
        "web-1",
        "198.18.0.2",
        v4(198, 18, 0, 2),
        80,
        ProbeSpec::Http(Box::new(HttpSpec {
            method: "GET".into(),
            path: "/health".into(),
            host: Some("example.test".into()),
            headers: vec![ua.clone(), ("X-Probe".into(), "sonde".into())],
            proxy_protocol: Some(ProxyProtocol::V2),
            tls: None,
            keepalive: false,
            max_body: 65536,
            expect: HttpExpect {
                statuses: vec![
                    StatusRange { lo: 200, hi: 299 },
                    StatusRange { lo: 301, hi: 301 },
                ],
                body_contains: Some("OK".into()),
                body_regex: Some("^ok".into()),
                header: Some(("X-Status".into(), "up".into())),
            },
        })),
    );
    web.labels.insert("pool".into(), "origin-a".into());
    let mut tls = spec(
        "web-1-tls",
        "198.18.0.2",
        v4(198, 18, 0, 2),
        443,
        ProbeSpec::Http(Box::new(HttpSpec {
            method: "GET".into(),
            path: "/health".into(),
            host: None,
            headers: vec![ua],
            proxy_protocol: None,
            tls: Some(TlsSpec {
                sni: Some("example.test".into()),
                verify: true,
                ca_file: Some("/etc/sonde/lab-ca.pem".into()),
            }),
            keepalive: false,
            max_body: 65536,
            expect: HttpExpect {
                statuses: vec![StatusRange { lo: 200, hi: 200 }],
                ..HttpExpect::default()
            },
        })),
    );
    (tls.interval, tls.timeout) = (Duration::from_secs(10), Duration::from_secs(3));
    let mut syn = spec(
        "syn-1",
        "198.18.0.3",
        v4(198, 18, 0, 3),
        443,
        ProbeSpec::TcpSyn,
    );
    syn.interval = Duration::from_secs(1);
    syn.timeout = Duration::from_millis(500);
    syn.fast_interval = Duration::from_millis(250);
    syn.jitter = 0.0;
    let mut connect = spec("connect-v6", "2001:db8::10", v6, 22, ProbeSpec::TcpConnect);
    connect.thresholds = Thresholds::Window {
        window: 5,
        threshold: 3,
    };
    let mut ping = spec(
        "ping-1",
        "198.18.0.4",
        v4(198, 18, 0, 4),
        0,
        ProbeSpec::Icmp,
    );
    ping.initial = InitialState::Healthy;
    let ping6 = spec("ping-v6", "2001:db8::10", v6, 0, ProbeSpec::Icmp);
    let udp = spec(
        "udp-echo",
        "198.18.0.5",
        v4(198, 18, 0, 5),
        7,
        ProbeSpec::Udp(Box::new(UdpSpec {
            payload: vec![0x0a, 0x0b],
            expect_prefix: b"pong".to_vec(),
        })),
    );
    let dns = spec(
        "dns-1",
        "198.18.0.5",
        v4(198, 18, 0, 5),
        53,
        ProbeSpec::Dns(Box::new(DnsSpec {
            name: "example.test".into(),
            qtype: 1,
            expect_rcode: 0,
            expect_answer: Some("198.18.0.5".into()),
        })),
    );
    vec![web, tls, syn, connect, ping, ping6, udp, dns]
}

#[test]
fn example_file_parses_into_the_expected_specs() {
    let config = parse_ok(EXAMPLE);
    let expected = example_specs();
    assert_eq!(config.checks.len(), expected.len());
    for (got, want) in config.checks.iter().zip(&expected) {
        assert_eq!(got, want, "check {}", want.id);
    }
    assert_eq!(config.daemon.iface.as_deref(), Some("eth0"));
    assert_eq!(config.daemon.ports, PortRange::DEFAULT);
    assert!(!config.daemon.userspace);
}

#[test]
fn load_file_reads_the_example_and_names_a_missing_file() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let config = load_file(&dir.join("checks.toml")).unwrap();
    assert_eq!(config.checks, example_specs());
    let err = load_file(&dir.join("no-such-file.toml")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(
        err.to_string().contains("no-such-file.toml: cannot read"),
        "{err}"
    );
    assert!(err.problems().is_empty());
}

#[test]
fn load_file_problems_name_the_path() {
    let path = std::env::temp_dir().join(format!("sonde-config-{}.toml", std::process::id()));
    std::fs::write(&path, "[[check]]\nid = \"x\"\nkind = \"icmp\"\n").unwrap();
    let err = load_file(&path).unwrap_err();
    std::fs::remove_file(&path).unwrap();
    let p = &err.problems()[0];
    assert_eq!(p.origin, path.display().to_string());
    assert_eq!(p.field, "check[0].target");
}

#[test]
fn empty_file_has_no_checks_and_default_daemon_settings() {
    let config = parse_ok("");
    assert!(config.checks.is_empty());
    assert_eq!(config.daemon, super::DaemonSettings::default());
}

#[test]
fn display_is_one_line_per_problem_with_position_check_and_field() {
    let text = one_check(
        "198.18.0.2:80",
        "tcp_syn",
        "interval = \"2s\"\ntimeout = \"5s\"\n",
    );
    let err = parse_str(&text, "checks.toml").unwrap_err();
    assert_eq!(
        err.to_string(),
        "checks.toml:6:11: check \"c\": check[0].timeout: timeout (5s) must be below interval (2s)"
    );
}

#[test]
fn toml_syntax_error_shows_line_and_column() {
    let err = parse_str("[[check]]\nid = \"a\"\ntarget = \n", "checks.toml").unwrap_err();
    let p = &err.problems()[0];
    assert_eq!((p.line, p.column), (Some(3), Some(10)), "{err}");
    assert!(p.message.starts_with("TOML syntax:"), "{err}");
    assert!(!err.to_string().contains('\n'), "one line: {err}");
    assert!(
        err.to_string().starts_with("checks.toml:3:10: TOML syntax"),
        "{err}"
    );
}

#[test]
fn many_problems_are_all_reported_in_file_order() {
    let text = "\
[defaults]
jitter = 0.9

[[check]]
id = \"a\"
target = \"198.18.0.1:0\"
kind = \"tcp_syn\"
rise = 0

[[check]]
id = \"b\"
target = \"198.18.0.1\"
kind = \"http\"
nope = true
";
    let all = problems(text);
    let at: Vec<(Option<usize>, &str)> = all.iter().map(|p| (p.line, p.field.as_str())).collect();
    assert_eq!(
        at,
        [
            (Some(2), "defaults.jitter"),
            (Some(6), "check[0].target"),
            (Some(8), "check[0].rise"),
            (Some(12), "check[1].target"),
            (Some(14), "check[1].nope"),
        ]
    );
    assert_eq!(all[0].check, None);
    assert_eq!(all[1].check.as_deref(), Some("a"));
    assert_eq!(all[3].check.as_deref(), Some("b"));
}

#[test]
fn ipv6_targets() {
    let c = parse_ok(&one_check("[2001:db8::1]:443", "tcp_syn", ""));
    let t = &c.checks[0].target;
    assert_eq!(t.addr, "2001:db8::1".parse::<IpAddr>().unwrap());
    assert_eq!((t.host.as_str(), t.port), ("2001:db8::1", 443));
    let c = parse_ok(&one_check("[::1]", "icmp", ""));
    assert_eq!(c.checks[0].target.addr, IpAddr::V6(Ipv6Addr::LOCALHOST));
    let c = parse_ok(&one_check("fe80::1", "icmp", ""));
    assert_eq!(c.checks[0].target.port, 0);
}

#[test]
fn host_names_resolve_at_load() {
    let c = parse_ok(&one_check("localhost:80", "tcp_connect", ""));
    let t = &c.checks[0].target;
    assert!(t.addr.is_loopback(), "{t:?}");
    assert_eq!((t.host.as_str(), t.port), ("localhost", 80));
    let c = parse_ok(&one_check("localhost", "icmp", ""));
    assert!(c.checks[0].target.addr.is_loopback());
}

#[test]
fn unresolvable_host_names_the_check_and_field() {
    let text = one_check("no-such-host.invalid:80", "tcp_syn", "");
    let all = problems(&text);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].check.as_deref(), Some("c"));
    assert_eq!(
        (all[0].line, all[0].field.as_str()),
        (Some(3), "check[0].target")
    );
    assert!(all[0].message.contains("does not resolve"), "{}", all[0]);
}

#[test]
fn json_check_uses_the_same_shape_and_rules() {
    let value = json!({
        "id": "api-1",
        "target": "198.18.0.9:8080",
        "kind": "http",
        "interval": "2s",
        "http": { "path": "/ready", "expect_status": ["200-204", 302] },
        "labels": { "pool": "b" }
    });
    let s = parse_check_json(&value, &Defaults::default()).unwrap();
    assert_eq!(s.id.as_str(), "api-1");
    assert_eq!(s.target.port, 8080);
    assert_eq!(
        (s.interval, s.timeout),
        (Duration::from_secs(2), Duration::from_secs(1))
    );
    let ProbeSpec::Http(h) = &s.probe else {
        panic!("{:?}", s.probe)
    };
    assert_eq!(h.path, "/ready");
    assert_eq!(h.expect.statuses[1], StatusRange { lo: 302, hi: 302 });
}

#[test]
fn json_check_takes_the_files_defaults() {
    let config = parse_ok(EXAMPLE);
    let value = json!({"id": "j", "target": "198.18.0.2:80", "kind": "https"});
    let s = parse_check_json(&value, &config.defaults).unwrap();
    assert_eq!(s.fast_interval, Duration::from_secs(1));
    assert_eq!(s.labels["site"], "lab");
    let ProbeSpec::Http(h) = &s.probe else {
        panic!()
    };
    assert_eq!(h.path, "/health");
    assert_eq!(h.tls.as_ref().map(|t| t.verify), Some(true));
}

#[test]
fn json_check_problems_are_all_listed_with_field_paths() {
    let value = json!({
        "id": "j",
        "target": "198.18.0.2",
        "kind": "dns",
        "timeout": null,
        "dns": { "name": "a..b", "type": "BOGUS" },
        "extra": 1
    });
    let err = parse_check_json(&value, &Defaults::default()).unwrap_err();
    let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
    for f in ["target", "timeout", "dns.name", "dns.type", "extra"] {
        assert!(fields.contains(&f), "{f} missing in:\n{err}");
    }
    assert!(err
        .problems()
        .iter()
        .all(|p| p.origin == "<json>" && p.line.is_none()));
    assert!(
        err.to_string().starts_with("<json>: check \"j\": "),
        "{err}"
    );
}

#[test]
fn json_check_problem_from_a_default_points_at_the_file() {
    let config = parse_ok("[defaults]\ntimeout = \"3s\"\n");
    let value = json!({"id": "j", "target": "198.18.0.2", "kind": "icmp", "interval": "1s"});
    let err = parse_check_json(&value, &config.defaults).unwrap_err();
    let p = &err.problems()[0];
    assert_eq!(
        (p.origin.as_str(), p.field.as_str()),
        ("<json>", "interval")
    );
    assert!(
        p.message
            .contains("timeout (3s) must be below interval (1s)"),
        "{p}"
    );
}

#[test]
fn json_defaults_are_validated_and_applied() {
    let defaults =
        parse_defaults_json(&json!({"interval": "20s", "dns": {"type": "TXT"}})).unwrap();
    let value = json!({"id": "j", "target": "198.18.0.2:53", "kind": "dns", "dns": {"name": "a"}});
    let s = parse_check_json(&value, &defaults).unwrap();
    assert_eq!(s.interval, Duration::from_secs(20));
    assert!(matches!(&s.probe, ProbeSpec::Dns(d) if d.qtype == 16));
    let err = parse_defaults_json(&json!({"id": "x", "jitter": 2})).unwrap_err();
    let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["defaults.id", "defaults.jitter"], "{err}");
    let err = parse_defaults_json(&json!([1])).unwrap_err();
    assert!(
        err.to_string().contains("expected a table, found an array"),
        "{err}"
    );
}

#[test]
fn durations_parse_with_units() {
    let ms = |s| duration::parse(s).map(|d| d.as_millis());
    assert_eq!(ms("250ms"), Ok(250));
    assert_eq!(ms("5s"), Ok(5_000));
    assert_eq!(ms("1m"), Ok(60_000));
    assert_eq!(ms("1h"), Ok(3_600_000));
    assert_eq!(ms("1.5s"), Ok(1_500));
    assert_eq!(ms("0.25m"), Ok(15_000));
    assert_eq!(ms("0s"), Ok(0));
    assert_eq!(ms("24h"), Ok(86_400_000));
}

#[test]
fn durations_refused_say_why() {
    let err = |s| duration::parse(s).unwrap_err();
    assert!(err("5").contains("missing unit"), "{}", err("5"));
    assert!(err("5").contains("ms, s, m or h"), "{}", err("5"));
    assert!(err("5sec").contains("unknown unit"));
    assert!(err("1.0005s").contains("whole number of milliseconds"));
    assert!(err("0.5ms").contains("whole number of milliseconds"));
    assert!(err("25h").contains("too long"));
    for bad in [
        "", "s", "-1s", "+1s", "1.s", ".5s", "1..5s", "1m30s", "5 s", " 5s", "1e3ms",
    ] {
        assert!(duration::parse(bad).is_err(), "{bad:?} accepted");
    }
    assert!(duration::parse("99999999999999999999s").is_err());
}

#[test]
fn durations_format_as_written() {
    let f = |ms| duration::format(Duration::from_millis(ms));
    assert_eq!(f(0), "0s");
    assert_eq!(f(250), "250ms");
    assert_eq!(f(1_500), "1.5s");
    assert_eq!(f(1_666), "1.666s");
    assert_eq!(f(5_000), "5s");
    assert_eq!(f(90_000), "90s");
    assert_eq!(f(120_000), "2m");
    assert_eq!(f(3_600_000), "1h");
    assert_eq!(duration::format(Duration::from_micros(1500)), "1.5ms");
}

#[test]
fn durations_in_the_file() {
    let c = parse_ok(&one_check("198.18.0.1", "icmp", "interval = \"1.5s\"\n"));
    assert_eq!(c.checks[0].interval, Duration::from_millis(1_500));
    assert_problem(
        &one_check("198.18.0.1", "icmp", "interval = \"0s\"\n"),
        5,
        "check[0].interval",
        "interval 0s is out of range; expected 10ms to 1h",
    );
    assert_problem(
        &one_check("198.18.0.1", "icmp", "interval = \"5\"\n"),
        5,
        "check[0].interval",
        "missing unit in duration \"5\"; expected a duration with a unit: ms, s, m or h",
    );
    assert_problem(
        &one_check("198.18.0.1", "icmp", "interval = 5\n"),
        5,
        "check[0].interval",
        "5 has no unit; write it as a string with a unit, e.g. \"5s\" or \"5ms\" (units: ms, s, m, h)",
    );
    assert_problem(
        &one_check("198.18.0.1", "icmp", "timeout = \"0ms\"\n"),
        5,
        "check[0].timeout",
        "timeout 0s is out of range; expected 1ms to 1h",
    );
}

#[test]
fn target_policy_refuses_denied_and_unlisted_targets_where_they_are_written() {
    let head =
        "[daemon]\nallow_targets = [\"198.18.0.0/15\"]\ndeny_targets = [\"198.18.9.0/24\"]\n";
    let ok = parse_ok(&format!(
        "{head}[[check]]\nid = \"a\"\ntarget = \"198.18.0.2:80\"\nkind = \"tcp_connect\"\n"
    ));
    assert_eq!(ok.checks.len(), 1);
    assert_eq!(ok.daemon.policy.deny[0].to_string(), "198.18.9.0/24");
    // Line 6 holds the target of the denied check; line 10 that of the unlisted one.
    let text = format!(
        "{head}[[check]]\nid = \"a\"\ntarget = \"198.18.9.7:80\"\nkind = \"tcp_connect\"\n\
         [[check]]\nid = \"b\"\ntarget = \"192.0.2.1:80\"\nkind = \"tcp_connect\"\n"
    );
    assert_problem(&text, 6, "check[0].target", "denied network 198.18.9.0/24");
    assert_problem(&text, 10, "check[1].target", "no allowed network");
    // Malformed lists say where and what.
    assert_problem(
        "[daemon]\nallow_targets = [\"198.18.0.1/15\"]\n",
        2,
        "daemon.allow_targets[0]",
        "host bits",
    );
    assert_problem(
        "[daemon]\ndeny_targets = \"10.0.0.0/8\"\n",
        2,
        "daemon.deny_targets",
        "list of networks",
    );
}
