//! The fields of one `[[check]]` table or of `[defaults]`, taken out of the raw tree
//! with each one's own rules checked (type, syntax, range). Rules between fields, and
//! the defaults, are applied afterwards by `validate`.

use std::time::Duration;

use super::{
    duration,
    error::{At, Ctx, Val},
    kinds::{self, DnsFields, HttpFields, TlsFields, UdpFields},
    raw::{describe, Kind, Node, Table},
    target::{self, TargetSpec},
};
use crate::engine::spec::InitialState;

/// Shortest and longest probe interval.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// Longest probe interval.
pub(crate) const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// Longest label key or value, in bytes.
const MAX_LABEL: usize = 128;

/// The probe kinds, as written in `kind = "..."`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProbeKind {
    TcpSyn,
    TcpConnect,
    Http,
    Https,
    Icmp,
    Udp,
    Dns,
}

impl ProbeKind {
    const ALL: [ProbeKind; 7] = [
        ProbeKind::TcpSyn,
        ProbeKind::TcpConnect,
        ProbeKind::Http,
        ProbeKind::Https,
        ProbeKind::Icmp,
        ProbeKind::Udp,
        ProbeKind::Dns,
    ];

    /// The name used in files.
    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::TcpSyn => "tcp_syn",
            ProbeKind::TcpConnect => "tcp_connect",
            ProbeKind::Http => "http",
            ProbeKind::Https => "https",
            ProbeKind::Icmp => "icmp",
            ProbeKind::Udp => "udp",
            ProbeKind::Dns => "dns",
        }
    }
}

/// One check table's (or the defaults') fields, each as given, with its location.
#[derive(Clone, Debug)]
pub(crate) struct Fields {
    pub id: Option<Val<String>>,
    pub target: Option<Val<TargetSpec>>,
    pub kind: Option<Val<ProbeKind>>,
    pub interval: Option<Val<Duration>>,
    pub timeout: Option<Val<Duration>>,
    pub fast_interval: Option<Val<Duration>>,
    pub jitter: Option<Val<f64>>,
    pub rise: Option<Val<u32>>,
    pub fall: Option<Val<u32>>,
    pub window: Option<Val<u32>>,
    pub threshold: Option<Val<u32>>,
    pub initial: Option<Val<InitialState>>,
    pub labels: Vec<(Val<String>, Val<String>)>,
    pub http: Option<Val<HttpFields>>,
    pub tls: Option<Val<TlsFields>>,
    pub udp: Option<Val<UdpFields>>,
    pub dns: Option<Val<DnsFields>>,
    /// Names of the fields the table has (valid or not), to tell missing from invalid.
    pub keys: Vec<String>,
    /// The table itself (where "missing field" problems point).
    pub at: At,
}

impl Fields {
    /// Where a missing field `name` is reported: its path, at the table's position.
    pub fn missing(&self, name: &str) -> At {
        At {
            path: self.at.child(name),
            pos: self.at.pos.clone(),
        }
    }

    /// Whether the table has field `name` (valid or not).
    pub fn has(&self, name: &str) -> bool {
        self.keys.iter().any(|k| k == name)
    }

    /// No field set: the built-in defaults.
    pub fn empty(at: At) -> Self {
        Self {
            id: None,
            target: None,
            kind: None,
            interval: None,
            timeout: None,
            fast_interval: None,
            jitter: None,
            rise: None,
            fall: None,
            window: None,
            threshold: None,
            initial: None,
            labels: Vec::new(),
            http: None,
            tls: None,
            udp: None,
            dns: None,
            keys: Vec::new(),
            at,
        }
    }
}

/// Take a check's fields (`defaults == false`) or the defaults' out of `node`.
/// Problems go to `ctx`; `ctx.check` is set to the id once it is known.
pub(crate) fn walk(ctx: &mut Ctx, node: &Node, path: String, defaults: bool) -> Option<Fields> {
    let mut t = Table::new(ctx, node, path)?;
    let mut f = Fields::empty(t.at.clone());
    f.keys = t.keys();
    if defaults {
        for name in ["id", "target"] {
            if let Some(at) = t.forbidden(ctx, name) {
                ctx.report(
                    &at,
                    format!("{name} cannot be defaulted; set it in each [[check]]"),
                );
            }
        }
    } else {
        f.id = t.string(ctx, "id").and_then(|id| {
            if target::valid_id(&id.v) {
                ctx.check = Some(id.v.clone());
                Some(id)
            } else {
                let msg = format!(
                    "invalid id {:?}; expected 1-128 characters: a letter or digit, then \
                     letters, digits, '.', '_', ':' or '-'",
                    id.v
                );
                ctx.report(&id.at, msg);
                None
            }
        });
        for name in ["id", "target"] {
            if !t.has(name) {
                let what = if name == "id" {
                    "a unique id, e.g. id = \"web-1\"".to_owned()
                } else {
                    format!("target = {}", target::EXPECTED)
                };
                ctx.report(
                    &f.missing(name),
                    format!("missing field `{name}`; expected {what}"),
                );
            }
        }
        f.target = t.string(ctx, "target").and_then(|s| {
            check(ctx, &s.at, target::parse(&s.v)).map(|v| Val {
                v,
                at: s.at.clone(),
            })
        });
    }
    f.kind = t.string(ctx, "kind").and_then(|s| {
        let kind = ProbeKind::ALL.into_iter().find(|k| k.name() == s.v);
        if kind.is_none() {
            let names: Vec<&str> = ProbeKind::ALL.iter().map(|k| k.name()).collect();
            let msg = format!(
                "unknown kind {:?}; expected one of: {}",
                s.v,
                names.join(", ")
            );
            ctx.report(&s.at, msg);
        }
        kind.map(|v| Val { v, at: s.at })
    });
    f.interval = dur(ctx, &mut t, "interval", MIN_INTERVAL);
    f.timeout = dur(ctx, &mut t, "timeout", Duration::from_millis(1));
    f.fast_interval = dur(ctx, &mut t, "fast_interval", MIN_INTERVAL);
    f.jitter = t.float(ctx, "jitter").and_then(|j| {
        let ok = (0.0..=0.5).contains(&j.v);
        if !ok {
            let msg = format!("jitter {} is out of range; expected 0.0 to 0.5", j.v);
            ctx.report(&j.at, msg);
        }
        ok.then_some(j)
    });
    f.rise = count(ctx, &mut t, "rise", 100);
    f.fall = count(ctx, &mut t, "fall", 100);
    f.window = count(ctx, &mut t, "window", 64);
    f.threshold = count(ctx, &mut t, "threshold", 64);
    if t.has("rise") || t.has("fall") {
        for v in [f.window.take(), f.threshold.take()].into_iter().flatten() {
            let msg = format!(
                "{} cannot be combined with rise/fall; use either rise and fall \
                 (consecutive results) or window and threshold (successes in a window)",
                v.at.path.rsplit('.').next().unwrap_or_default()
            );
            ctx.report(&v.at, msg);
        }
    }
    f.initial = t.string(ctx, "initial").and_then(|s| {
        let v = match s.v.as_str() {
            "unknown" => InitialState::Unknown,
            "healthy" => InitialState::Healthy,
            "unhealthy" => InitialState::Unhealthy,
            other => {
                let msg = format!(
                    "unknown initial state {other:?}; expected unknown, healthy or unhealthy"
                );
                ctx.report(&s.at, msg);
                return None;
            }
        };
        Some(Val { v, at: s.at })
    });
    if let Some(labels) = t.string_map(ctx, "labels") {
        for (k, v) in labels.v {
            if k.v.is_empty() || k.v.len() > MAX_LABEL {
                let msg = format!(
                    "label key of {} bytes; expected 1 to {MAX_LABEL}",
                    k.v.len()
                );
                ctx.report(&k.at, msg);
            } else if v.v.len() > MAX_LABEL {
                let msg = format!(
                    "label value of {} bytes; expected at most {MAX_LABEL}",
                    v.v.len()
                );
                ctx.report(&v.at, msg);
            } else {
                f.labels.push((k, v));
            }
        }
    }
    f.http = t.table(ctx, "http").map(|mut s| {
        let v = kinds::walk_http(ctx, &mut s);
        finish(ctx, s, v)
    });
    f.tls = t.table(ctx, "tls").map(|mut s| {
        let v = kinds::walk_tls(ctx, &mut s);
        finish(ctx, s, v)
    });
    f.udp = t.table(ctx, "udp").map(|mut s| {
        let v = kinds::walk_udp(ctx, &mut s);
        finish(ctx, s, v)
    });
    f.dns = t.table(ctx, "dns").map(|mut s| {
        let v = kinds::walk_dns(ctx, &mut s);
        finish(ctx, s, v)
    });
    t.finish(ctx);
    Some(f)
}

/// Close a kind table: report its unknown fields and keep its location.
fn finish<T>(ctx: &mut Ctx, t: Table<'_>, v: T) -> Val<T> {
    let at = t.at.clone();
    t.finish(ctx);
    Val { v, at }
}

/// Report the error of `r`, if any, at `at`.
pub(crate) fn check<T>(ctx: &mut Ctx, at: &At, r: Result<T, String>) -> Option<T> {
    r.map_err(|e| ctx.report(at, e)).ok()
}

/// A duration field of at least `min` and at most an hour.
fn dur(
    ctx: &mut Ctx,
    t: &mut Table<'_>,
    name: &'static str,
    min: Duration,
) -> Option<Val<Duration>> {
    let (node, at) = t.node(ctx, name)?;
    let Kind::Str(s) = &node.kind else {
        let msg = match node.kind {
            Kind::Int(n) => format!(
                "{n} has no unit; write it as a string with a unit, e.g. \"{n}s\" or \"{n}ms\" \
                 (units: ms, s, m, h)"
            ),
            _ => format!("expected {}, found {}", duration::EXPECTED, describe(node)),
        };
        ctx.report(&at, msg);
        return None;
    };
    let d = check(ctx, &at, duration::parse(s))?;
    if d < min || d > MAX_INTERVAL {
        let msg = format!(
            "{name} {} is out of range; expected {} to {}",
            duration::format(d),
            duration::format(min),
            duration::format(MAX_INTERVAL)
        );
        ctx.report(&at, msg);
        return None;
    }
    Some(Val { v: d, at })
}

/// An integer field in 1..=max.
fn count(ctx: &mut Ctx, t: &mut Table<'_>, name: &'static str, max: u32) -> Option<Val<u32>> {
    let n = t.int(ctx, name)?;
    match u32::try_from(n.v) {
        Ok(v) if (1..=max).contains(&v) => Some(Val { v, at: n.at }),
        _ => {
            ctx.report(
                &n.at,
                format!("{name} {} is out of range; expected 1 to {max}", n.v),
            );
            None
        }
    }
}
