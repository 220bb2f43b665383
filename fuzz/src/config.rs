//! Targets `config_toml` and `config_json`: the configuration parser
//! (`sonde::config::parse_str`) on arbitrary files, and one check given as JSON (API,
//! etcd: `parse_check_json`, `parse_defaults_json`) on arbitrary JSON.
//!
//! Invariants: never panics; a refusal lists at least one problem, and a TOML problem's
//! line is inside the text; an accepted check obeys the documented rules (id syntax and
//! uniqueness, interval 10ms..=1h, timeout below the interval, fast interval between
//! 10ms and the interval, jitter 0..=0.5, rise/fall 1..=100, window 1..=64 with
//! threshold 1..=window).
//!
//! Host-name targets are resolved by the parser, so both targets first move into an
//! empty network namespace ([`crate::isolate_network`]).

use std::collections::HashSet;
use std::time::Duration;

use sonde::{
    config::{parse_check_json, parse_defaults_json, parse_str, ConfigError, Defaults},
    engine::spec::{CheckSpec, Thresholds},
};

use crate::isolate_network;

/// Checks an accepted spec against the documented field rules.
///
/// # Panics
/// When the spec breaks a rule the parser promises to enforce.
pub fn check_spec(s: &CheckSpec) {
    let id = s.id.as_str();
    assert!(
        id.len() <= 128
            && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b)),
        "accepted id {id:?}"
    );
    let ms = Duration::from_millis;
    assert!(
        (ms(10)..=ms(3_600_000)).contains(&s.interval),
        "{id}: interval {:?}",
        s.interval
    );
    assert!(
        s.timeout < s.interval,
        "{id}: timeout {:?} >= interval",
        s.timeout
    );
    assert!(
        s.fast_interval >= ms(10) && s.fast_interval <= s.interval,
        "{id}: fast_interval {:?}",
        s.fast_interval
    );
    assert!((0.0..=0.5).contains(&s.jitter), "{id}: jitter {}", s.jitter);
    match s.thresholds {
        Thresholds::Consecutive { rise, fall } => {
            assert!(
                (1..=100).contains(&rise) && (1..=100).contains(&fall),
                "{id}: rise/fall {rise}/{fall}"
            );
        }
        Thresholds::Window { window, threshold } => {
            assert!((1..=64).contains(&window), "{id}: window {window}");
            assert!(
                (1..=window).contains(&threshold),
                "{id}: threshold {threshold}"
            );
        }
    }
    for (k, v) in &s.labels {
        assert!(
            (1..=128).contains(&k.len()) && v.len() <= 128,
            "{id}: label {k:?}={v:?}"
        );
    }
}

fn check_refusal(e: &ConfigError, text: Option<&str>) {
    let shown = e.to_string();
    assert!(
        !e.problems().is_empty(),
        "refused without a problem: {shown}"
    );
    for p in e.problems() {
        if let (Some(text), Some(line)) = (text, p.line) {
            assert!(
                line >= 1 && line <= text.lines().count() + 1,
                "line {line} of {p}"
            );
            assert!(p.column.is_some_and(|c| c >= 1), "{p}");
        }
    }
}

/// Parses one input as a configuration file.
///
/// # Panics
/// When an invariant breaks.
pub fn check_toml(data: &[u8]) {
    isolate_network();
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_str(text, "fuzz.toml") {
        Ok(cfg) => {
            let mut ids = HashSet::new();
            for spec in &cfg.checks {
                check_spec(spec);
                assert!(
                    ids.insert(spec.id.clone()),
                    "duplicate id {} accepted",
                    spec.id
                );
            }
            let ports = cfg.daemon.ports;
            assert!(!ports.is_empty(), "empty port range {ports} accepted");
            // The file's defaults must apply to API checks without failing on their own.
            let one = serde_json::json!({"id": "api-1", "target": "198.18.0.9:80", "kind": "tcp_connect"});
            match parse_check_json(&one, &cfg.defaults) {
                Ok(spec) => check_spec(&spec),
                Err(e) => check_refusal(&e, None),
            }
        }
        Err(e) => check_refusal(&e, Some(text)),
    }
}

/// Parses one input as a check in JSON, and as JSON defaults applied to a fixed check.
///
/// # Panics
/// When an invariant breaks.
pub fn check_json(data: &[u8]) {
    isolate_network();
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    match parse_check_json(&value, &Defaults::default()) {
        Ok(spec) => check_spec(&spec),
        Err(e) => check_refusal(&e, None),
    }
    match parse_defaults_json(&value) {
        Ok(defaults) => {
            for kind in ["icmp", "http", "dns", "udp"] {
                let mut one =
                    serde_json::json!({"id": "d", "target": "198.18.0.9:53", "kind": kind});
                if kind == "icmp" {
                    one["target"] = "198.18.0.9".into();
                }
                if kind == "dns" {
                    one["dns"] = serde_json::json!({"name": "example.test"});
                }
                match parse_check_json(&one, &defaults) {
                    Ok(spec) => check_spec(&spec),
                    Err(e) => check_refusal(&e, None),
                }
            }
        }
        Err(e) => check_refusal(&e, None),
    }
}

/// `examples/checks.toml` and a few small files (window thresholds, defaults tables,
/// IPv6 and host-name targets).
#[must_use]
pub fn seeds_toml() -> Vec<(String, Vec<u8>)> {
    let files: [(&str, &str); 5] = [
        ("examples_checks.toml", include_str!("../../examples/checks.toml")),
        (
            "one_icmp.toml",
            "[[check]]\nid = \"p\"\ntarget = \"198.18.0.4\"\nkind = \"icmp\"\n",
        ),
        (
            "window.toml",
            "[defaults]\nwindow = 5\nthreshold = 3\ninterval = \"250ms\"\n\n[[check]]\nid = \"s\"\ntarget = \"[2001:db8::1]:443\"\nkind = \"tcp_syn\"\njitter = 0.5\n",
        ),
        (
            "localhost_http.toml",
            "[daemon]\nports = \"62000-62010\"\n\n[defaults.http]\npath = \"/h\"\n\n[[check]]\nid = \"h\"\ntarget = \"localhost:8080\"\nkind = \"http\"\n[check.http]\nexpect_status = [\"200-204\", 301]\nheaders = { \"X-A\" = \"b\" }\n",
        ),
        (
            "dns_udp.toml",
            "[[check]]\nid = \"d\"\ntarget = \"198.18.0.5:53\"\nkind = \"dns\"\ndns = { name = \"example.test\", type = \"TXT\", expect_rcode = 3 }\n\n[[check]]\nid = \"u\"\ntarget = \"198.18.0.5:7\"\nkind = \"udp\"\nudp = { payload = \"ping\", expect_prefix_hex = \"706f\" }\n",
        ),
    ];
    files
        .iter()
        .map(|(n, t)| ((*n).to_owned(), t.as_bytes().to_vec()))
        .collect()
}

/// Checks as the API and etcd send them, and defaults objects.
#[must_use]
pub fn seeds_json() -> Vec<(String, Vec<u8>)> {
    let values = [
        (
            "tcp_connect",
            serde_json::json!({"id": "web-1", "target": "127.0.0.1:80", "kind": "tcp_connect", "labels": {"pool": "a"}}),
        ),
        (
            "dns",
            serde_json::json!({"id": "dns-1", "target": "127.0.0.1:53", "kind": "dns", "labels": {"pool": "b"}, "dns": {"name": "example.test"}}),
        ),
        (
            "https",
            serde_json::json!({"id": "j", "target": "198.18.0.2:443", "kind": "https", "interval": "10s", "timeout": "3s", "http": {"path": "/h", "expect_status": ["200-299"], "expect_header": {"name": "X-S", "value": "up"}}, "tls": {"sni": "example.test", "verify": false}}),
        ),
        (
            "icmp_window",
            serde_json::json!({"id": "p", "target": "198.18.0.2", "kind": "icmp", "interval": "1s", "window": 5, "threshold": 3, "initial": "healthy"}),
        ),
        (
            "udp",
            serde_json::json!({"id": "u", "target": "[2001:db8::5]:7", "kind": "udp", "udp": {"payload_hex": "0a0b", "expect_prefix": "pong"}}),
        ),
        (
            "defaults",
            serde_json::json!({"interval": "20s", "jitter": 0.2, "rise": 1, "fall": 5, "labels": {"site": "lab"}, "dns": {"type": "TXT"}, "http": {"path": "/health"}}),
        ),
    ];
    values
        .iter()
        .map(|(n, v)| {
            (
                format!("{n}.json"),
                serde_json::to_vec_pretty(v).expect("json"),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_accepted() {
        for (name, s) in seeds_toml() {
            let text = std::str::from_utf8(&s).unwrap();
            let r = parse_str(text, &name);
            assert!(
                r.is_ok(),
                "{name}: {}",
                r.err().map(|e| e.to_string()).unwrap_or_default()
            );
        }
        for (name, s) in seeds_json() {
            let v: serde_json::Value = serde_json::from_slice(&s).unwrap();
            let ok = parse_check_json(&v, &Defaults::default()).is_ok()
                || parse_defaults_json(&v).is_ok();
            assert!(ok, "{name}");
        }
    }
}
