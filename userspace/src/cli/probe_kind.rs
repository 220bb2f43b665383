//! `sonde probe --kind KIND --target HOST[:PORT]`: the options of one check given on the
//! command line, turned into the JSON shape of a `[[check]]` table and validated by the
//! configuration's own rules ([`crate::config::parse_check_json`]), so the command
//! accepts and refuses exactly what a checks file would, with the same messages; and the
//! text output of its results.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use clap::Args;
use serde_json::{json, Map, Value};

use crate::{
    cli::fmt,
    config::{self, ConfigError, Defaults},
    engine::{
        result::{CheckResult, Reason},
        spec::CheckSpec,
        Clock,
    },
};

/// The id the probed check gets (echoed in `--json` results).
pub const CHECK_ID: &str = "probe";

/// Kind options of `sonde probe --kind`: the fields of the check's kind table
/// (`[check.http]`, `[check.tls]`, `[check.udp]`, `[check.dns]`).
#[derive(Debug, Clone, Default, Args)]
pub struct KindOptions {
    /// Request method (http, https; default GET).
    #[arg(long, requires = "kind", help_heading = "HTTP options (http, https)")]
    pub method: Option<String>,
    /// Request path with query (default /).
    #[arg(long, requires = "kind", help_heading = "HTTP options (http, https)")]
    pub path: Option<String>,
    /// Host header (default: the target host).
    #[arg(
        long,
        value_name = "HOST",
        requires = "kind",
        help_heading = "HTTP options (http, https)"
    )]
    pub host_header: Option<String>,
    /// Extra request header (repeatable).
    #[arg(
        long,
        value_name = "NAME:VALUE",
        value_parser = parse_header,
        requires = "kind",
        help_heading = "HTTP options (http, https)"
    )]
    pub header: Vec<(String, String)>,
    /// Send a PROXY protocol header first: v1 or v2.
    #[arg(
        long,
        value_name = "VERSION",
        requires = "kind",
        help_heading = "HTTP options (http, https)"
    )]
    pub proxy_protocol: Option<String>,
    /// Accepted status or range, e.g. 200-299 (repeatable or comma-separated; default
    /// 200-399).
    #[arg(
        long,
        value_name = "STATUS",
        value_delimiter = ',',
        requires = "kind",
        help_heading = "HTTP options (http, https)"
    )]
    pub expect_status: Vec<String>,
    /// The body must contain this text.
    #[arg(
        long,
        value_name = "TEXT",
        requires = "kind",
        help_heading = "HTTP options (http, https)"
    )]
    pub expect_body: Option<String>,
    /// The body must match this regular expression.
    #[arg(
        long,
        value_name = "RE",
        requires = "kind",
        help_heading = "HTTP options (http, https)"
    )]
    pub expect_body_regex: Option<String>,
    /// This header must be present (NAME) or contain VALUE (NAME:VALUE).
    #[arg(
        long,
        value_name = "NAME[:VALUE]",
        value_parser = parse_expect_header,
        requires = "kind",
        help_heading = "HTTP options (http, https)"
    )]
    pub expect_header: Option<(String, Option<String>)>,
    /// Do not verify the server's certificate (its expiry is still reported).
    #[arg(long, requires = "kind", help_heading = "TLS options (https)")]
    pub insecure: bool,
    /// SNI server name (default: the target host).
    #[arg(
        long,
        value_name = "NAME",
        requires = "kind",
        help_heading = "TLS options (https)"
    )]
    pub sni: Option<String>,
    /// PEM file of extra trust anchors.
    #[arg(
        long,
        value_name = "PATH",
        requires = "kind",
        help_heading = "TLS options (https)"
    )]
    pub ca_file: Option<String>,
    /// Datagram payload, as text.
    #[arg(
        long,
        value_name = "TEXT",
        requires = "kind",
        help_heading = "UDP options (udp)"
    )]
    pub payload: Option<String>,
    /// Datagram payload, as hex digits.
    #[arg(
        long,
        value_name = "HEX",
        requires = "kind",
        help_heading = "UDP options (udp)"
    )]
    pub payload_hex: Option<String>,
    /// The answer must start with this text (default: any answer).
    #[arg(
        long,
        value_name = "TEXT",
        requires = "kind",
        help_heading = "UDP options (udp)"
    )]
    pub expect: Option<String>,
    /// The answer must start with these bytes, as hex digits.
    #[arg(
        long,
        value_name = "HEX",
        requires = "kind",
        help_heading = "UDP options (udp)"
    )]
    pub expect_hex: Option<String>,
    /// Name to query (required for dns).
    #[arg(
        long,
        value_name = "NAME",
        requires = "kind",
        help_heading = "DNS options (dns)"
    )]
    pub query: Option<String>,
    /// Query type: A (default), AAAA, CNAME, MX, NS, PTR, SOA, SRV, TXT, ANY or a number.
    #[arg(
        long,
        value_name = "TYPE",
        requires = "kind",
        help_heading = "DNS options (dns)"
    )]
    pub qtype: Option<String>,
    /// Expected response code: NOERROR (default), NXDOMAIN, SERVFAIL, ... or 0-15.
    #[arg(
        long,
        value_name = "RCODE",
        requires = "kind",
        help_heading = "DNS options (dns)"
    )]
    pub expect_rcode: Option<String>,
    /// An answer record must hold this data (an address for A and AAAA).
    #[arg(
        long,
        value_name = "DATA",
        requires = "kind",
        help_heading = "DNS options (dns)"
    )]
    pub expect_answer: Option<String>,
}

/// `NAME:VALUE` of `--header` (spaces after the colon are dropped).
fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((name, value)) => Ok((name.to_owned(), value.trim_start().to_owned())),
        None => Err(format!(
            "expected NAME:VALUE, e.g. \"X-Probe: sonde\"; found {s:?}"
        )),
    }
}

/// `NAME` or `NAME:VALUE` of `--expect-header`.
fn parse_expect_header(s: &str) -> Result<(String, Option<String>), String> {
    Ok(match s.split_once(':') {
        Some((name, value)) => (name.to_owned(), Some(value.trim_start().to_owned())),
        None => (s.to_owned(), None),
    })
}

/// What the command line said about the check, beyond its kind options.
#[derive(Clone, Copy, Debug)]
pub struct CheckLine<'a> {
    /// `--kind`.
    pub kind: &'a str,
    /// `--target`.
    pub target: &'a str,
    /// The check's interval, in milliseconds.
    pub interval_ms: u64,
    /// The probe timeout, in milliseconds.
    pub timeout_ms: u64,
}

/// The check as JSON, shaped like a `[[check]]` table of the configuration file (kind
/// tables only when one of their options was given).
#[must_use]
pub fn check_json(line: &CheckLine<'_>, o: &KindOptions) -> Value {
    let mut check = Map::new();
    check.insert("id".into(), json!(CHECK_ID));
    check.insert("target".into(), json!(line.target));
    check.insert("kind".into(), json!(line.kind));
    check.insert("interval".into(), json!(format!("{}ms", line.interval_ms)));
    check.insert("timeout".into(), json!(format!("{}ms", line.timeout_ms)));

    let mut http = Map::new();
    let put = |t: &mut Map<String, Value>, k: &str, v: Option<&String>| {
        if let Some(v) = v {
            t.insert(k.to_owned(), json!(v));
        }
    };
    put(&mut http, "method", o.method.as_ref());
    put(&mut http, "path", o.path.as_ref());
    put(&mut http, "host", o.host_header.as_ref());
    if !o.header.is_empty() {
        let headers: Map<String, Value> = o
            .header
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        http.insert("headers".into(), Value::Object(headers));
    }
    put(&mut http, "proxy_protocol", o.proxy_protocol.as_ref());
    if !o.expect_status.is_empty() {
        http.insert("expect_status".into(), json!(o.expect_status));
    }
    put(&mut http, "expect_body", o.expect_body.as_ref());
    put(&mut http, "expect_body_regex", o.expect_body_regex.as_ref());
    if let Some((name, value)) = &o.expect_header {
        let mut e = Map::new();
        e.insert("name".into(), json!(name));
        if let Some(v) = value {
            e.insert("value".into(), json!(v));
        }
        http.insert("expect_header".into(), Value::Object(e));
    }

    let mut tls = Map::new();
    put(&mut tls, "sni", o.sni.as_ref());
    if o.insecure {
        tls.insert("verify".into(), json!(false));
    }
    put(&mut tls, "ca_file", o.ca_file.as_ref());

    let mut udp = Map::new();
    put(&mut udp, "payload", o.payload.as_ref());
    put(&mut udp, "payload_hex", o.payload_hex.as_ref());
    put(&mut udp, "expect_prefix", o.expect.as_ref());
    put(&mut udp, "expect_prefix_hex", o.expect_hex.as_ref());

    let mut dns = Map::new();
    put(&mut dns, "name", o.query.as_ref());
    put(&mut dns, "type", o.qtype.as_ref());
    put(&mut dns, "expect_rcode", o.expect_rcode.as_ref());
    put(&mut dns, "expect_answer", o.expect_answer.as_ref());

    for (name, table) in [("http", http), ("tls", tls), ("udp", udp), ("dns", dns)] {
        if !table.is_empty() {
            check.insert(name.into(), Value::Object(table));
        }
    }
    Value::Object(check)
}

/// Check field paths and the options that set them (most specific first).
const OPTIONS: &[(&str, &str)] = &[
    ("target", "--target"),
    ("kind", "--kind"),
    ("interval", "--interval-ms"),
    ("timeout", "--timeout-ms"),
    ("http.method", "--method"),
    ("http.path", "--path"),
    ("http.host", "--host-header"),
    ("http.headers", "--header"),
    ("http.proxy_protocol", "--proxy-protocol"),
    ("http.expect_status", "--expect-status"),
    ("http.expect_body", "--expect-body"),
    ("http.expect_body_regex", "--expect-body-regex"),
    ("http.expect_header", "--expect-header"),
    ("http", "HTTP options"),
    ("tls.sni", "--sni"),
    ("tls.verify", "--insecure"),
    ("tls.ca_file", "--ca-file"),
    ("tls", "TLS options"),
    ("udp.payload", "--payload"),
    ("udp.payload_hex", "--payload-hex"),
    ("udp.expect_prefix", "--expect"),
    ("udp.expect_prefix_hex", "--expect-hex"),
    ("udp", "UDP options"),
    ("dns.name", "--query"),
    ("dns.type", "--qtype"),
    ("dns.expect_rcode", "--expect-rcode"),
    ("dns.expect_answer", "--expect-answer"),
    ("dns", "DNS options"),
];

/// The command-line option behind a check field path (`http.expect_status[0]` is
/// `--expect-status`).
#[must_use]
pub fn option_of(field: &str) -> Option<&'static str> {
    OPTIONS
        .iter()
        .filter(|(path, _)| {
            field
                .strip_prefix(path)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        })
        .max_by_key(|(path, _)| path.len())
        .map(|(_, opt)| *opt)
}

/// Every problem of a refused check, one per line, naming the option that set the field
/// and the field itself, with the configuration's message.
#[must_use]
pub fn describe_problems(e: &ConfigError) -> String {
    if e.problems().is_empty() {
        return e.to_string();
    }
    let mut out = String::new();
    for p in e.problems() {
        let _ = match (option_of(&p.field), p.field.as_str()) {
            (_, "") => writeln!(out, "  {}", p.message),
            (Some(opt), field) => writeln!(out, "  {opt} ({field}): {}", p.message),
            (None, field) => writeln!(out, "  {field}: {}", p.message),
        };
    }
    out.truncate(out.trim_end().len());
    out
}

/// Validate the command line's check with the configuration file's rules.
///
/// # Errors
/// Every problem found, named by option (see [`describe_problems`]).
pub fn validate(line: &CheckLine<'_>, o: &KindOptions) -> anyhow::Result<CheckSpec> {
    config::parse_check_json(&check_json(line, o), &Defaults::default()).map_err(|e| {
        anyhow::anyhow!(
            "invalid probe (the rules of a [[check]] in a checks file):\n{}",
            describe_problems(&e)
        )
    })
}

/// `http 198.18.0.2:80`, `icmp 198.18.0.2`, `http www.test:80 (198.18.0.2)`.
#[must_use]
pub fn describe_check(spec: &CheckSpec) -> String {
    let t = &spec.target;
    let kind = spec.probe.kind();
    let host = if t.host.contains(':') {
        format!("[{}]", t.host)
    } else {
        t.host.to_string()
    };
    let mut s = if kind == "icmp" {
        format!("{kind} {host}")
    } else {
        format!("{kind} {host}:{}", t.port)
    };
    if *t.host != t.addr.to_string() {
        let _ = write!(s, " ({})", t.addr);
    }
    s
}

/// `1.2ms`, `850us`.
fn dur(d: Duration) -> String {
    fmt::micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A reason's label with its detail: `status (503 not accepted)`, `ok`.
#[must_use]
pub fn reason_text(r: &Reason) -> String {
    let detail = match r {
        Reason::Unreachable {
            icmp_type,
            icmp_code,
        } => format!("icmp type {icmp_type} code {icmp_code}"),
        Reason::ConnectionClosed { phase } => format!("during {phase}"),
        Reason::Status { code } => format!("{code} not accepted"),
        Reason::HeaderMismatch { name } => format!("header {name}"),
        Reason::Protocol { detail } | Reason::Tls { detail } | Reason::Local { detail } => {
            detail.clone()
        }
        Reason::DnsRcode { rcode } => format!("rcode {rcode}"),
        Reason::Ok
        | Reason::Timeout
        | Reason::Refused
        | Reason::BodyMismatch
        | Reason::PayloadMismatch
        | Reason::DnsAnswerMismatch => return r.label().to_owned(),
    };
    format!("{} ({detail})", r.label())
}

/// The clock's name, as in the JSON output.
#[must_use]
pub fn clock_name(c: Clock) -> &'static str {
    match c {
        Clock::Kernel => "kernel",
        Clock::Userspace => "userspace",
    }
}

/// One result as a line: `seq=1 ok rtt=1.2ms clock=userspace http=200 connect=210us ...`.
#[must_use]
pub fn result_line(r: &CheckResult) -> String {
    let mut s = format!("seq={} {}", r.seq, reason_text(&r.reason));
    if let Some(rtt) = r.rtt {
        let _ = write!(s, " rtt={}", dur(rtt));
    }
    let _ = write!(s, " clock={}", clock_name(r.clock));
    if let Some(code) = r.http_status {
        let _ = write!(s, " http={code}");
    }
    let p = &r.phases;
    for (name, d) in [
        ("connect", p.connect),
        ("tls", p.tls),
        ("first_byte", p.first_byte),
        ("total", p.total),
    ] {
        if let Some(d) = d {
            let _ = write!(s, " {name}={}", dur(d));
        }
    }
    if let Some(days) = r.cert_days_left {
        let _ = write!(s, " cert_days_left={days}");
    }
    s
}

/// Counts and RTTs of the results seen so far.
#[derive(Debug, Default)]
pub struct Summary {
    /// Results seen.
    pub results: u64,
    /// Of which succeeded.
    pub ok: u64,
    /// Failures by reason label.
    pub failures: BTreeMap<&'static str, u64>,
    /// Smallest, sum and largest RTT of the results that had one, and their count.
    rtt: Option<(Duration, Duration, Duration, u32)>,
}

impl Summary {
    /// Count `r`.
    pub fn add(&mut self, r: &CheckResult) {
        self.results += 1;
        if r.reason.is_ok() {
            self.ok += 1;
        } else {
            *self.failures.entry(r.reason.label()).or_default() += 1;
        }
        if let Some(d) = r.rtt {
            self.rtt = Some(match self.rtt {
                None => (d, d, d, 1),
                Some((min, sum, max, n)) => (min.min(d), sum + d, max.max(d), n + 1),
            });
        }
    }

    /// Whether every result so far succeeded (and there was one).
    #[must_use]
    pub fn all_ok(&self) -> bool {
        self.results > 0 && self.ok == self.results
    }

    /// `--- http 198.18.0.2:80: 5 probes, 4 ok, 1 failed (1 timeout); rtt min/avg/max
    /// 0.9ms/1.1ms/1.3ms`.
    #[must_use]
    pub fn line(&self, what: &str) -> String {
        let failed = self.results - self.ok;
        let mut s = format!(
            "--- {what}: {} probe{}, {} ok, {failed} failed",
            self.results,
            if self.results == 1 { "" } else { "s" },
            self.ok
        );
        if failed > 0 {
            let by: Vec<String> = self
                .failures
                .iter()
                .map(|(label, n)| format!("{n} {label}"))
                .collect();
            let _ = write!(s, " ({})", by.join(", "));
        }
        if let Some((min, sum, max, n)) = self.rtt {
            let _ = write!(
                s,
                "; rtt min/avg/max {}/{}/{}",
                dur(min),
                dur(sum / n),
                dur(max)
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{
        result::Phases,
        spec::{CheckId, ProbeSpec, StatusRange},
    };

    fn line(kind: &'static str, target: &'static str) -> CheckLine<'static> {
        CheckLine {
            kind,
            target,
            interval_ms: 1000,
            timeout_ms: 500,
        }
    }

    #[test]
    fn http_options_become_a_check() {
        let o = KindOptions {
            method: Some("HEAD".into()),
            path: Some("/health".into()),
            header: vec![("X-Probe".into(), "sonde".into())],
            expect_status: vec!["200-299".into(), "301".into()],
            expect_header: Some(("X-Status".into(), Some("up".into()))),
            ..KindOptions::default()
        };
        let spec = validate(&line("http", "198.18.0.2:80"), &o).expect("valid");
        assert_eq!(spec.id.as_str(), CHECK_ID);
        assert_eq!(spec.timeout, Duration::from_millis(500));
        let ProbeSpec::Http(h) = &spec.probe else {
            panic!("{spec:?}")
        };
        assert_eq!(h.method, "HEAD");
        assert_eq!(h.path, "/health");
        assert_eq!(h.headers, vec![("X-Probe".into(), "sonde".into())]);
        assert_eq!(
            h.expect.statuses,
            vec![
                StatusRange { lo: 200, hi: 299 },
                StatusRange { lo: 301, hi: 301 }
            ]
        );
        assert_eq!(h.expect.header, Some(("X-Status".into(), "up".into())));
        assert!(h.tls.is_none());
        assert_eq!(describe_check(&spec), "http 198.18.0.2:80");
    }

    #[test]
    fn https_udp_and_dns_options() {
        let o = KindOptions {
            insecure: true,
            sni: Some("origin.test".into()),
            ..KindOptions::default()
        };
        let spec = validate(&line("https", "198.18.0.2:443"), &o).expect("https");
        let ProbeSpec::Http(h) = &spec.probe else {
            panic!("{spec:?}")
        };
        let tls = h.tls.as_ref().expect("tls");
        assert!(!tls.verify);
        assert_eq!(tls.sni.as_deref(), Some("origin.test"));

        let o = KindOptions {
            payload_hex: Some("0a0b".into()),
            expect: Some("pong".into()),
            ..KindOptions::default()
        };
        let spec = validate(&line("udp", "198.18.0.5:7"), &o).expect("udp");
        let ProbeSpec::Udp(u) = &spec.probe else {
            panic!("{spec:?}")
        };
        assert_eq!(u.payload, vec![10, 11]);
        assert_eq!(u.expect_prefix, b"pong");

        let o = KindOptions {
            query: Some("example.test".into()),
            qtype: Some("AAAA".into()),
            expect_rcode: Some("NXDOMAIN".into()),
            ..KindOptions::default()
        };
        let spec = validate(&line("dns", "198.18.0.5:53"), &o).expect("dns");
        let ProbeSpec::Dns(d) = &spec.probe else {
            panic!("{spec:?}")
        };
        assert_eq!((d.qtype, d.expect_rcode), (28, 3));

        let spec = validate(&line("icmp", "198.18.0.4"), &KindOptions::default()).expect("icmp");
        assert_eq!(spec.probe, ProbeSpec::Icmp);
        assert_eq!(describe_check(&spec), "icmp 198.18.0.4");
    }

    #[test]
    fn problems_name_the_option() {
        let o = KindOptions {
            expect_status: vec!["700".into()],
            ..KindOptions::default()
        };
        let e = validate(&line("http", "198.18.0.2:80"), &o)
            .expect_err("700 refused")
            .to_string();
        assert!(
            e.contains("--expect-status (http.expect_status[0]): status \"700\" is not in 100-599"),
            "{e}"
        );
        let e = validate(&line("tcp_connect", "198.18.0.2:80"), &o)
            .expect_err("http table on tcp_connect")
            .to_string();
        assert!(e.contains("HTTP options (http"), "{e}");
        let e = validate(&line("dns", "198.18.0.2:53"), &KindOptions::default())
            .expect_err("no name")
            .to_string();
        assert!(e.contains("--query") || e.contains("dns"), "{e}");
        let e = validate(&line("http", "198.18.0.2"), &KindOptions::default())
            .expect_err("no port")
            .to_string();
        assert!(e.contains("--target (target): missing port"), "{e}");
        let mut l = line("icmp", "198.18.0.2");
        l.interval_ms = 500;
        let e = validate(&l, &KindOptions::default())
            .expect_err("timeout = interval")
            .to_string();
        assert!(e.contains("must be below interval"), "{e}");
        let e = validate(&line("ftp", "198.18.0.2:21"), &KindOptions::default())
            .expect_err("unknown kind")
            .to_string();
        assert!(e.contains("--kind (kind): unknown kind"), "{e}");
        assert_eq!(
            option_of("http.expect_body_regex"),
            Some("--expect-body-regex")
        );
        assert_eq!(option_of("http.headers.X-A"), Some("--header"));
        assert_eq!(option_of("udp.expect_prefix_hex"), Some("--expect-hex"));
        assert_eq!(option_of("labels"), None);
    }

    #[test]
    fn header_options_parse() {
        assert_eq!(
            parse_header("X-Probe: sonde").expect("ok"),
            ("X-Probe".into(), "sonde".into())
        );
        assert!(parse_header("X-Probe").is_err());
        assert_eq!(
            parse_expect_header("X-Status").expect("ok"),
            ("X-Status".into(), None)
        );
    }

    #[test]
    fn lines() {
        let mut r = CheckResult {
            check: CheckId::new(CHECK_ID),
            seq: 3,
            reason: Reason::Ok,
            rtt: Some(Duration::from_micros(1200)),
            clock: Clock::Userspace,
            phases: Phases {
                connect: Some(Duration::from_micros(210)),
                tls: None,
                first_byte: Some(Duration::from_micros(1100)),
                total: Some(Duration::from_micros(1200)),
            },
            http_status: Some(200),
            cert_days_left: Some(42),
        };
        assert_eq!(
            result_line(&r),
            "seq=3 ok rtt=1.2ms clock=userspace http=200 connect=210us first_byte=1.1ms \
             total=1.2ms cert_days_left=42"
        );
        let mut s = Summary::default();
        s.add(&r);
        r.reason = Reason::Status { code: 503 };
        r.rtt = Some(Duration::from_micros(1800));
        assert!(result_line(&r).starts_with("seq=3 status (503 not accepted) rtt=1.8ms"));
        s.add(&r);
        r.reason = Reason::Timeout;
        r.rtt = None;
        s.add(&r);
        assert!(!s.all_ok());
        assert_eq!(
            s.line("http 198.18.0.2:80"),
            "--- http 198.18.0.2:80: 3 probes, 1 ok, 2 failed (1 status, 1 timeout); \
             rtt min/avg/max 1.2ms/1.5ms/1.8ms"
        );
    }
}
