//! From a check's fields and the defaults' to a `CheckSpec`: the defaults applied (a
//! check's own value wins), the built-in defaults after them, and the rules between
//! fields (timing order, port against kind, tables against kind, threshold styles).
//! Used by both the TOML file and single JSON checks.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use super::{
    duration,
    error::{At, Ctx, Val},
    fields::{Fields, ProbeKind},
    kinds::{DnsFields, HttpFields, TlsFields, UdpFields},
};
use crate::engine::spec::{
    CheckId, CheckSpec, DnsSpec, HttpExpect, HttpSpec, InitialState, ProbeSpec, Target, Thresholds,
    TlsSpec, UdpSpec,
};

/// Built-in interval.
pub(crate) const INTERVAL: Duration = Duration::from_secs(5);
/// Built-in timeout (at most half the interval).
pub(crate) const TIMEOUT: Duration = Duration::from_secs(2);
/// Floor of the built-in fast interval (a third of the interval).
pub(crate) const FAST_FLOOR: Duration = Duration::from_millis(100);
/// Built-in jitter.
pub(crate) const JITTER: f64 = 0.1;
/// Built-in rise and fall.
pub(crate) const RISE: u32 = 2;
/// Built-in fall.
pub(crate) const FALL: u32 = 3;
/// Built-in `max_body`.
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// The check's value, else the default's.
fn pick<'a, T>(c: &'a Option<Val<T>>, d: &'a Option<Val<T>>) -> Option<&'a Val<T>> {
    c.as_ref().or(d.as_ref())
}

/// Whether field `name` was written (in the check, or else in the defaults) but refused
/// (`c`/`d`: whether the check's/defaults' value was kept). Rules between fields skip
/// refused values rather than report a second problem against a stand-in.
fn refused(c: &Fields, d: &Fields, name: &str, kept: (bool, bool)) -> bool {
    if c.has(name) {
        !kept.0
    } else {
        d.has(name) && !kept.1
    }
}

/// Which of two values to blame for a conflict: one the check set, else the first.
fn blame<'a>(a: Option<&'a At>, b: Option<&'a At>, fallback: &'a At) -> &'a At {
    [a, b]
        .into_iter()
        .flatten()
        .find(|at| !at.in_defaults())
        .or(a.or(b))
        .unwrap_or(fallback)
}

/// Apply `d` under `c` and check the rules between fields. `None` when a problem was
/// reported (the caller refuses the whole input then).
pub(crate) fn build(ctx: &mut Ctx, c: &Fields, d: &Fields) -> Option<CheckSpec> {
    // A refused kind is not replaced by the default's: that would report problems
    // against a kind the check does not have.
    let kind = if c.has("kind") {
        c.kind.as_ref()
    } else {
        d.kind.as_ref()
    };
    if kind.is_none() && !c.has("kind") {
        let msg = "missing field `kind`; expected tcp_syn, tcp_connect, http, https, icmp, udp \
                   or dns (here or in [defaults])";
        ctx.report(&c.missing("kind"), msg);
    }
    let kind = kind.map(|k| k.v);
    let target = c.target.as_ref().and_then(|t| target(ctx, t, kind?));
    let timing = timing(ctx, c, d);
    let thresholds = thresholds(ctx, c, d);
    let probe = probe(ctx, c, d, kind?);
    let initial = pick(&c.initial, &d.initial).map_or(InitialState::Unknown, |v| v.v);
    let mut labels = BTreeMap::new();
    for (k, v) in d.labels.iter().chain(&c.labels) {
        labels.insert(k.v.clone(), v.v.clone());
    }
    let (interval, fast_interval, timeout, jitter) = timing?;
    Some(CheckSpec {
        id: CheckId::new(&c.id.as_ref()?.v),
        target: target?,
        probe: probe?,
        interval,
        fast_interval,
        timeout,
        jitter,
        thresholds: thresholds?,
        initial,
        labels: labels.into(),
    })
}

fn target(ctx: &mut Ctx, t: &Val<super::target::TargetSpec>, kind: ProbeKind) -> Option<Target> {
    let port = match (kind, t.v.port) {
        (ProbeKind::Icmp, None) => 0,
        (ProbeKind::Icmp, Some(p)) => {
            let msg = format!(
                "port {p} given for an icmp check; write the address alone, e.g. {:?}",
                t.v.host
            );
            ctx.report(&t.at, msg);
            return None;
        }
        (_, Some(p)) => p,
        (k, None) => {
            let port = match k {
                ProbeKind::Https => 443,
                ProbeKind::Dns => 53,
                ProbeKind::Udp => 7,
                _ => 80,
            };
            let example = match t.v.addr {
                IpAddr::V6(_) if t.v.host.contains(':') => format!("\"[{}]:{port}\"", t.v.host),
                _ => format!("\"{}:{port}\"", t.v.host),
            };
            let msg = format!(
                "missing port for a {} check; expected ADDR:PORT, e.g. {example}",
                k.name()
            );
            ctx.report(&t.at, msg);
            return None;
        }
    };
    Some(Target {
        host: t.v.host.as_str().into(),
        addr: t.v.addr,
        port,
        source: Default::default(),
    })
}

/// Interval, fast interval, timeout and jitter.
fn timing(ctx: &mut Ctx, c: &Fields, d: &Fields) -> Option<(Duration, Duration, Duration, f64)> {
    let interval = pick(&c.interval, &d.interval);
    let timeout = pick(&c.timeout, &d.timeout);
    let fast = pick(&c.fast_interval, &d.fast_interval);
    let iv = interval.map_or(INTERVAL, |v| v.v);
    let whole_ms = |d: Duration| Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(0));
    let to = timeout.map_or_else(|| TIMEOUT.min(whole_ms(iv / 2)), |v| v.v);
    let fi = fast.map_or_else(|| whole_ms(iv / 3).max(FAST_FLOOR).min(iv), |v| v.v);
    let at_iv = interval.map(|v| &v.at);
    let refused = |name, c_kept: bool, d_kept: bool| refused(c, d, name, (c_kept, d_kept));
    if refused("interval", c.interval.is_some(), d.interval.is_some()) {
        return None;
    }
    let timeout_refused = refused("timeout", c.timeout.is_some(), d.timeout.is_some());
    let fast_refused = refused(
        "fast_interval",
        c.fast_interval.is_some(),
        d.fast_interval.is_some(),
    );
    let mut ok = !timeout_refused && !fast_refused;
    if !timeout_refused && to >= iv {
        let at = blame(timeout.map(|v| &v.at), at_iv, &c.at);
        let msg = format!(
            "timeout ({}) must be below interval ({})",
            duration::format(to),
            duration::format(iv)
        );
        ctx.report(at, msg);
        ok = false;
    }
    if !fast_refused && fi > iv {
        let at = blame(fast.map(|v| &v.at), at_iv, &c.at);
        let msg = format!(
            "fast_interval ({}) must not exceed interval ({})",
            duration::format(fi),
            duration::format(iv)
        );
        ctx.report(at, msg);
        ok = false;
    }
    let jitter = pick(&c.jitter, &d.jitter).map_or(JITTER, |v| v.v);
    ok.then_some((iv, fi, to, jitter))
}

/// Rise/fall or window/threshold: the check's style if it names one (its missing
/// half from the defaults' same style), else the defaults' style, else rise 2, fall 3.
fn thresholds(ctx: &mut Ctx, c: &Fields, d: &Fields) -> Option<Thresholds> {
    let style_of = |f: &Fields| {
        if f.has("rise") || f.has("fall") {
            Some(false)
        } else if f.has("window") || f.has("threshold") {
            Some(true)
        } else {
            None
        }
    };
    let windowed = style_of(c).or(style_of(d)).unwrap_or(false);
    if !windowed {
        let rise = pick(&c.rise, &d.rise).map_or(RISE, |v| v.v);
        let fall = pick(&c.fall, &d.fall).map_or(FALL, |v| v.v);
        return Some(Thresholds::Consecutive { rise, fall });
    }
    let window = pick(&c.window, &d.window);
    let threshold = pick(&c.threshold, &d.threshold);
    match (window, threshold) {
        (Some(w), Some(t)) if t.v > w.v => {
            let msg = format!("threshold ({}) must not exceed window ({})", t.v, w.v);
            ctx.report(blame(Some(&t.at), Some(&w.at), &c.at), msg);
            None
        }
        (Some(w), Some(t)) => Some(Thresholds::Window {
            window: w.v,
            threshold: t.v,
        }),
        (Some(w), None) if !c.has("threshold") && !d.has("threshold") => {
            let msg = "window needs threshold: how many of the last `window` results must \
                       succeed, e.g. threshold = 3";
            ctx.report(&w.at, msg);
            None
        }
        (None, Some(t)) if !c.has("window") && !d.has("window") => {
            let msg = "threshold needs window: how many recent results are counted, e.g. \
                       window = 5";
            ctx.report(&t.at, msg);
            None
        }
        _ => None,
    }
}

/// The kind's probe, with its table merged over the defaults'. A check's table that
/// does not go with its kind is refused; the defaults' tables apply only where they fit.
fn probe(ctx: &mut Ctx, c: &Fields, d: &Fields, kind: ProbeKind) -> Option<ProbeSpec> {
    use ProbeKind as K;
    let fits: [(&str, Option<&At>, &[ProbeKind], &str); 4] = [
        (
            "http",
            c.http.as_ref().map(|v| &v.at),
            &[K::Http, K::Https],
            "http or https",
        ),
        ("tls", c.tls.as_ref().map(|v| &v.at), &[K::Https], "https"),
        ("udp", c.udp.as_ref().map(|v| &v.at), &[K::Udp], "udp"),
        ("dns", c.dns.as_ref().map(|v| &v.at), &[K::Dns], "dns"),
    ];
    let mut ok = true;
    for (name, at, kinds, which) in fits {
        if let Some(at) = at.filter(|_| !kinds.contains(&kind)) {
            let msg = format!(
                "[{name}] options given for a {} check; they apply to kind {which} only",
                kind.name()
            );
            ctx.report(at, msg);
            ok = false;
        }
    }
    let probe = match kind {
        K::TcpSyn => ProbeSpec::TcpSyn,
        K::TcpConnect => ProbeSpec::TcpConnect,
        K::Icmp => ProbeSpec::Icmp,
        K::Http | K::Https => {
            let tls = (kind == K::Https).then(|| tls(&c.tls, &d.tls));
            ProbeSpec::Http(Box::new(http(ctx, &c.http, &d.http, tls)?))
        }
        K::Udp => ProbeSpec::Udp(Box::new(udp(&c.udp, &d.udp))),
        K::Dns => ProbeSpec::Dns(Box::new(dns(ctx, c, d)?)),
    };
    ok.then_some(probe)
}

/// The inner fields of a kind table, or an empty one.
fn inner<T: Default + Clone>(v: &Option<Val<T>>) -> T {
    v.as_ref().map(|v| v.v.clone()).unwrap_or_default()
}

fn http(
    ctx: &mut Ctx,
    c: &Option<Val<HttpFields>>,
    d: &Option<Val<HttpFields>>,
    tls: Option<TlsSpec>,
) -> Option<HttpSpec> {
    let (c, d) = (inner(c), inner(d));
    let mut headers: Vec<(String, String)> = Vec::new();
    for (k, v) in d.headers.iter().chain(&c.headers) {
        headers.retain(|(name, _)| !name.eq_ignore_ascii_case(&k.v));
        headers.push((k.v.clone(), v.v.clone()));
    }
    let max_body = pick(&c.max_body, &d.max_body);
    let body = pick(&c.expect_body, &d.expect_body);
    let regex = pick(&c.expect_body_regex, &d.expect_body_regex);
    let limit = max_body.map_or(MAX_BODY, |v| v.v);
    if let Some(b) = body.filter(|b| b.v.len() > limit) {
        let at = blame(Some(&b.at), max_body.map(|v| &v.at), &b.at);
        let msg = format!(
            "expect_body is {} bytes, longer than max_body ({limit}): it could never match",
            b.v.len()
        );
        ctx.report(at, msg);
        return None;
    }
    if let (Some(m), Some(_)) = (max_body.filter(|m| m.v == 0), regex) {
        ctx.report(
            &m.at,
            "max_body = 0 reads no body, but expect_body_regex needs one",
        );
        return None;
    }
    Some(HttpSpec {
        method: pick(&c.method, &d.method).map_or_else(|| "GET".to_owned(), |v| v.v.clone()),
        path: pick(&c.path, &d.path).map_or_else(|| "/".to_owned(), |v| v.v.clone()),
        host: pick(&c.host, &d.host).map(|v| v.v.clone()),
        headers,
        proxy_protocol: pick(&c.proxy_protocol, &d.proxy_protocol).map(|v| v.v),
        tls,
        keepalive: pick(&c.keepalive, &d.keepalive).is_some_and(|v| v.v),
        max_body: limit,
        expect: HttpExpect {
            statuses: pick(&c.expect_status, &d.expect_status)
                .map_or_else(|| HttpExpect::default().statuses, |v| v.v.clone()),
            body_contains: body.map(|v| v.v.clone()),
            body_regex: regex.map(|v| v.v.clone()),
            header: pick(&c.expect_header, &d.expect_header).map(|v| v.v.clone()),
        },
    })
}

fn tls(c: &Option<Val<TlsFields>>, d: &Option<Val<TlsFields>>) -> TlsSpec {
    let (c, d) = (inner(c), inner(d));
    TlsSpec {
        sni: pick(&c.sni, &d.sni).map(|v| v.v.clone()),
        verify: pick(&c.verify, &d.verify).is_none_or(|v| v.v),
        ca_file: pick(&c.ca_file, &d.ca_file).map(|v| v.v.clone().into()),
    }
}

fn udp(c: &Option<Val<UdpFields>>, d: &Option<Val<UdpFields>>) -> UdpSpec {
    let (c, d) = (inner(c), inner(d));
    UdpSpec {
        payload: pick(&c.payload, &d.payload)
            .map(|v| v.v.clone())
            .unwrap_or_default(),
        expect_prefix: pick(&c.expect_prefix, &d.expect_prefix)
            .map(|v| v.v.clone())
            .unwrap_or_default(),
    }
}

fn dns(ctx: &mut Ctx, cf: &Fields, df: &Fields) -> Option<DnsSpec> {
    let (c, d): (DnsFields, DnsFields) = (inner(&cf.dns), inner(&df.dns));
    let name = pick(&c.name, &d.name);
    if name.is_none() && !c.name_given && !d.name_given {
        let at = At {
            path: format!("{}.name", cf.at.child("dns")),
            pos: cf.dns.as_ref().map_or(&cf.at, |v| &v.at).pos.clone(),
        };
        ctx.report(
            &at,
            "missing field `name`: the name to query, e.g. [check.dns] name = \"example.test\"",
        );
    }
    let qtype = pick(&c.qtype, &d.qtype).map_or(1, |v| v.v);
    let answer = pick(&c.expect_answer, &d.expect_answer);
    if let Some(a) = answer {
        let wrong = match qtype {
            1 => {
                a.v.parse::<Ipv4Addr>()
                    .is_err()
                    .then_some("an IPv4 address for type A")
            }
            28 => {
                a.v.parse::<Ipv6Addr>()
                    .is_err()
                    .then_some("an IPv6 address for type AAAA")
            }
            _ => None,
        };
        if let Some(expected) = wrong {
            ctx.report(&a.at, format!("expect_answer {:?} is not {expected}", a.v));
            return None;
        }
    }
    Some(DnsSpec {
        name: name?.v.clone(),
        qtype,
        expect_rcode: pick(&c.expect_rcode, &d.expect_rcode).map_or(0, |v| v.v),
        expect_answer: answer.map(|v| v.v.clone()),
    })
}
