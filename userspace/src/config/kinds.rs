//! The kind-specific tables `[check.http]`, `[check.tls]`, `[check.udp]` and
//! `[check.dns]`: their fields with each one's own rules. Which table goes with which
//! kind, and the defaults, are `validate`'s.

use regex::RegexBuilder;

use super::{
    error::{At, Ctx, Val},
    fields::check,
    raw::{describe, Kind, Node, Table},
    target,
};
use crate::engine::spec::{ProxyProtocol, StatusRange};

/// Compiled size limit of `expect_body_regex`.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Largest `max_body`.
pub(crate) const MAX_BODY_LIMIT: i64 = 16 << 20;
/// Largest UDP payload (over IPv4) and expected prefix.
const MAX_UDP: usize = 65_507;

/// DNS query types by name.
const QTYPES: &[(&str, u16)] = &[
    ("A", 1),
    ("NS", 2),
    ("CNAME", 5),
    ("SOA", 6),
    ("PTR", 12),
    ("MX", 15),
    ("TXT", 16),
    ("AAAA", 28),
    ("SRV", 33),
    ("ANY", 255),
];

/// DNS response codes by name.
const RCODES: &[(&str, u8)] = &[
    ("NOERROR", 0),
    ("FORMERR", 1),
    ("SERVFAIL", 2),
    ("NXDOMAIN", 3),
    ("NOTIMP", 4),
    ("REFUSED", 5),
    ("YXDOMAIN", 6),
    ("YXRRSET", 7),
    ("NXRRSET", 8),
    ("NOTAUTH", 9),
    ("NOTZONE", 10),
];

/// `[check.http]` as given.
#[derive(Clone, Debug, Default)]
pub(crate) struct HttpFields {
    pub method: Option<Val<String>>,
    pub path: Option<Val<String>>,
    pub host: Option<Val<String>>,
    pub headers: Vec<(Val<String>, Val<String>)>,
    pub proxy_protocol: Option<Val<ProxyProtocol>>,
    pub keepalive: Option<Val<bool>>,
    pub max_body: Option<Val<usize>>,
    pub expect_status: Option<Val<Vec<StatusRange>>>,
    pub expect_body: Option<Val<String>>,
    pub expect_body_regex: Option<Val<String>>,
    pub expect_header: Option<Val<(String, String)>>,
}

/// `[check.tls]` as given.
#[derive(Clone, Debug, Default)]
pub(crate) struct TlsFields {
    pub sni: Option<Val<String>>,
    pub verify: Option<Val<bool>>,
    pub ca_file: Option<Val<String>>,
}

/// `[check.udp]` as given (text and hex forms already turned into bytes).
#[derive(Clone, Debug, Default)]
pub(crate) struct UdpFields {
    pub payload: Option<Val<Vec<u8>>>,
    pub expect_prefix: Option<Val<Vec<u8>>>,
}

/// `[check.dns]` as given.
#[derive(Clone, Debug, Default)]
pub(crate) struct DnsFields {
    pub name: Option<Val<String>>,
    pub qtype: Option<Val<u16>>,
    pub expect_rcode: Option<Val<u8>>,
    pub expect_answer: Option<Val<String>>,
    /// Whether `name` was written (valid or not), to tell missing from invalid.
    pub name_given: bool,
}

/// A string field that must pass `rule`.
fn ruled(
    ctx: &mut Ctx,
    t: &mut Table<'_>,
    name: &'static str,
    rule: fn(&str) -> Result<(), String>,
) -> Option<Val<String>> {
    let s = t.string(ctx, name)?;
    check(ctx, &s.at, rule(&s.v))?;
    Some(s)
}

/// Take `[check.http]`'s fields.
pub(crate) fn walk_http(ctx: &mut Ctx, t: &mut Table<'_>) -> HttpFields {
    let mut h = HttpFields {
        method: ruled(ctx, t, "method", target::http_token),
        path: ruled(ctx, t, "path", target::http_path),
        host: ruled(ctx, t, "host", |s| {
            if s.is_empty() {
                return Err("empty Host; leave it out to use the target host".to_owned());
            }
            target::header_value(s)
        }),
        ..HttpFields::default()
    };
    if let Some(headers) = t.string_map(ctx, "headers") {
        for (k, v) in headers.v {
            let name_ok = check(ctx, &k.at, target::http_token(&k.v)).is_some();
            if name_ok && check(ctx, &v.at, target::header_value(&v.v)).is_some() {
                h.headers.push((k, v));
            }
        }
    }
    h.proxy_protocol = t.string(ctx, "proxy_protocol").and_then(|s| {
        let v = match s.v.as_str() {
            "v1" => ProxyProtocol::V1,
            "v2" => ProxyProtocol::V2,
            other => {
                let msg =
                    format!("unknown PROXY protocol version {other:?}; expected \"v1\" or \"v2\"");
                ctx.report(&s.at, msg);
                return None;
            }
        };
        Some(Val { v, at: s.at })
    });
    h.keepalive = t.bool(ctx, "keepalive");
    h.max_body = t
        .int(ctx, "max_body")
        .and_then(|n| match usize::try_from(n.v) {
            Ok(v) if n.v <= MAX_BODY_LIMIT => Some(Val { v, at: n.at }),
            _ => {
                let msg = format!(
                    "max_body {} is out of range; expected 0 to {MAX_BODY_LIMIT} bytes",
                    n.v
                );
                ctx.report(&n.at, msg);
                None
            }
        });
    h.expect_status = walk_statuses(ctx, t);
    h.expect_body = t.string(ctx, "expect_body");
    h.expect_body_regex = ruled(ctx, t, "expect_body_regex", |s| {
        RegexBuilder::new(s)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map(drop)
            .map_err(|e| format!("invalid regular expression (or larger than 1 MiB compiled): {e}"))
    });
    h.expect_header = t.table(ctx, "expect_header").and_then(|mut e| {
        let name = ruled(ctx, &mut e, "name", target::http_token);
        let value = ruled(ctx, &mut e, "value", target::header_value);
        let at = e.at.clone();
        let missing = !e.has("name");
        e.finish(ctx);
        if missing {
            ctx.report(
                &at,
                "missing field `name`; expected { name = \"X-Status\", value = \"up\" }",
            );
        }
        Some(Val {
            v: (name?.v, value.map(|v| v.v).unwrap_or_default()),
            at,
        })
    });
    h
}

fn walk_statuses(ctx: &mut Ctx, t: &mut Table<'_>) -> Option<Val<Vec<StatusRange>>> {
    let (node, at) = t.node(ctx, "expect_status")?;
    let items: Vec<(&Node, At)> = match &node.kind {
        Kind::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, n)| (n, ctx.at(format!("{}[{i}]", at.path), n.span.as_ref())))
            .collect(),
        // A single status or range is accepted without brackets.
        _ => vec![(node, at.clone())],
    };
    if items.is_empty() {
        ctx.report(
            &at,
            "empty; expected at least one status or range, e.g. [\"200-299\"]",
        );
        return None;
    }
    let mut out = Vec::new();
    for (n, item_at) in items {
        out.extend(check(ctx, &item_at, status_range(n)));
    }
    Some(Val { v: out, at })
}

/// `200`, `"301"` or `"200-299"`, within 100-599.
fn status_range(n: &Node) -> Result<StatusRange, String> {
    const EXPECTED: &str = "a status 100-599 or a range \"LO-HI\", e.g. \"200-299\"";
    let num = |s: &str| {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|n| (100..=599).contains(n))
            .ok_or_else(|| format!("status {s:?} is not in 100-599; expected {EXPECTED}"))
    };
    let (lo, hi) = match &n.kind {
        Kind::Int(i) => {
            let s = i.to_string();
            (num(&s)?, num(&s)?)
        }
        Kind::Str(s) => match s.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(s)?, num(s)?),
        },
        _ => return Err(format!("expected {EXPECTED}, found {}", describe(n))),
    };
    if lo > hi {
        return Err(format!("range {lo}-{hi} is reversed; expected LO <= HI"));
    }
    Ok(StatusRange { lo, hi })
}

/// Take `[check.tls]`'s fields.
pub(crate) fn walk_tls(ctx: &mut Ctx, t: &mut Table<'_>) -> TlsFields {
    TlsFields {
        sni: ruled(ctx, t, "sni", |s| {
            target::dns_name(s, false).map_err(|e| format!("invalid SNI name {s:?}: {e}"))
        }),
        verify: t.bool(ctx, "verify"),
        ca_file: ruled(ctx, t, "ca_file", |s| {
            if s.is_empty() {
                Err("empty path; expected a PEM file".to_owned())
            } else {
                Ok(())
            }
        }),
    }
}

/// Take `[check.udp]`'s fields.
pub(crate) fn walk_udp(ctx: &mut Ctx, t: &mut Table<'_>) -> UdpFields {
    UdpFields {
        payload: bytes(ctx, t, "payload", "payload_hex"),
        expect_prefix: bytes(ctx, t, "expect_prefix", "expect_prefix_hex"),
    }
}

/// A byte string given as text (`name`) or hex (`hex_name`), not both.
fn bytes(
    ctx: &mut Ctx,
    t: &mut Table<'_>,
    name: &'static str,
    hex_name: &'static str,
) -> Option<Val<Vec<u8>>> {
    let text = t.string(ctx, name);
    let hex = t.string(ctx, hex_name);
    let v = match (text, hex) {
        (Some(_), Some(h)) => {
            ctx.report(
                &h.at,
                format!("{hex_name} and {name} are exclusive; give one"),
            );
            return None;
        }
        (Some(s), None) => Val {
            v: s.v.into_bytes(),
            at: s.at,
        },
        (None, Some(h)) => Val {
            v: check(ctx, &h.at, parse_hex(&h.v))?,
            at: h.at,
        },
        (None, None) => return None,
    };
    if v.v.len() > MAX_UDP {
        let msg = format!(
            "{} bytes; a UDP datagram carries at most {MAX_UDP}",
            v.v.len()
        );
        ctx.report(&v.at, msg);
        return None;
    }
    Some(v)
}

fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    const EXPECTED: &str = "expected pairs of hex digits, e.g. \"0a0b\"";
    if let Some(c) = s.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!("{c:?} is not a hex digit; {EXPECTED}"));
    }
    if !s.len().is_multiple_of(2) {
        return Err(format!(
            "odd number of hex digits ({}); {EXPECTED}",
            s.len()
        ));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

/// Take `[check.dns]`'s fields.
pub(crate) fn walk_dns(ctx: &mut Ctx, t: &mut Table<'_>) -> DnsFields {
    let name = ruled(ctx, t, "name", |s| {
        target::dns_name(s, true).map_err(|e| format!("invalid DNS name {s:?}: {e}"))
    });
    let qtype = t.node(ctx, "type").and_then(|(n, at)| {
        let v = check(ctx, &at, qtype(n))?;
        Some(Val { v, at })
    });
    let expect_rcode = t.node(ctx, "expect_rcode").and_then(|(n, at)| {
        let v = check(ctx, &at, rcode(n))?;
        Some(Val { v, at })
    });
    DnsFields {
        name,
        qtype,
        expect_rcode,
        expect_answer: t.string(ctx, "expect_answer"),
        name_given: t.has("name"),
    }
}

fn names<T>(table: &[(&str, T)]) -> String {
    table.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

fn qtype(n: &Node) -> Result<u16, String> {
    let expected = || format!("expected {} or a number 1-65535", names(QTYPES));
    let num = |i: i64| {
        u16::try_from(i)
            .ok()
            .filter(|&t| t != 0)
            .ok_or_else(|| format!("type {i} is out of range; {}", expected()))
    };
    match &n.kind {
        Kind::Int(i) => num(*i),
        Kind::Str(s) => {
            let upper = s.to_ascii_uppercase();
            if let Some((_, t)) = QTYPES.iter().find(|(name, _)| *name == upper) {
                return Ok(*t);
            }
            let digits = upper.strip_prefix("TYPE").unwrap_or(&upper);
            match digits.parse::<i64>() {
                Ok(i) => num(i),
                Err(_) => Err(format!("unknown DNS type {s:?}; {}", expected())),
            }
        }
        _ => Err(format!("{}, found {}", expected(), describe(n))),
    }
}

fn rcode(n: &Node) -> Result<u8, String> {
    let expected = || format!("expected {} or a number 0-15", names(RCODES));
    let num = |i: i64| {
        u8::try_from(i)
            .ok()
            .filter(|&r| r <= 15)
            .ok_or_else(|| format!("rcode {i} is out of range; {}", expected()))
    };
    match &n.kind {
        Kind::Int(i) => num(*i),
        Kind::Str(s) => {
            let upper = s.to_ascii_uppercase();
            match RCODES.iter().find(|(name, _)| *name == upper) {
                Some((_, r)) => Ok(*r),
                None => match s.parse::<i64>() {
                    Ok(i) => num(i),
                    Err(_) => Err(format!("unknown DNS rcode {s:?}; {}", expected())),
                },
            }
        }
        _ => Err(format!("{}, found {}", expected(), describe(n))),
    }
}
