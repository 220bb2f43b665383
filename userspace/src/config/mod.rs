//! The check configuration: a TOML file (or one check as JSON, from the API or etcd)
//! turned into validated [`CheckSpec`]s and daemon settings. An invalid input is refused
//! as a whole, with every problem found: file, line, column, check id, field path, what
//! is wrong and what is expected. Nothing of a refused file is applied.
//!
//! # Format
//!
//! ```toml
//! [daemon]                  # optional
//! iface = "eth0"            # interface the XDP/TC programs attach to (default: none)
//! ports = "61000-61999"     # reserved source ports of stateless probes (this default)
//! userspace = false         # time answers in userspace, without eBPF (default false)
//! syn_ack_reset = "tc"      # who resets SYN-ACKs to probes: tc (default), xdp, stack
//! answer_hook = "auto"      # who classifies answers: auto (default: TC ingress on a veth
//!                           # or without native XDP, XDP elsewhere), xdp, tc
//! allow_targets = ["198.18.0.0/15"]  # checks may only probe these networks (default any)
//! deny_targets = ["198.18.9.0/24"]   # and never these (wins over allow_targets)
//! metrics_check_limit = 10000  # per-check /metrics series up to this many checks (this default)
//!
//! [defaults]                # optional: any check field but id and target
//! interval = "5s"
//! timeout = "2s"
//! fast_interval = "1s"
//! jitter = 0.1
//! rise = 2
//! fall = 3                  # or: window = 5, threshold = 3
//! initial = "unknown"
//! labels = { team = "edge" }
//! http = { path = "/health" }   # used by http and https checks only
//!
//! [[check]]
//! id = "web-1"
//! target = "198.18.0.2:80"
//! kind = "http"
//! labels = { pool = "origin-a" }
//! [check.http]
//! method = "GET"
//! path = "/health"
//! host = "example.test"
//! headers = { "X-Probe" = "sonde" }
//! proxy_protocol = "v2"
//! keepalive = false
//! max_body = 65536
//! expect_status = ["200-299", "301"]
//! expect_body = "OK"
//! expect_body_regex = "^ok"
//! expect_header = { name = "X-Status", value = "up" }
//! ```
//!
//! `examples/checks.toml` (at the workspace root) shows every kind.
//!
//! ## Check fields
//!
//! | field | value | built-in default |
//! | --- | --- | --- |
//! | `id` | `^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`, unique in the file | required |
//! | `target` | `"ADDR:PORT"`, `"[V6]:PORT"`, `"HOST:PORT"`; `"ADDR"`, `"V6"`, `"HOST"` for icmp | required |
//! | `kind` | `tcp_syn`, `tcp_connect`, `http`, `https`, `icmp`, `udp`, `dns` | required |
//! | `interval` | duration, 10ms to 1h | `"5s"` |
//! | `timeout` | duration, below `interval` | 2s, at most half the interval |
//! | `fast_interval` | duration, 10ms to `interval` | a third of `interval` (whole ms), at least 100ms, at most `interval` |
//! | `jitter` | 0.0 to 0.5 (fraction of the interval) | 0.1 |
//! | `rise`, `fall` | 1 to 100 | 2, 3 |
//! | `window`, `threshold` | 1 to 64, threshold <= window | (rise/fall used) |
//! | `initial` | `unknown`, `healthy`, `unhealthy` | `unknown` |
//! | `labels` | table of strings, keys 1-128 bytes, values up to 128 | none |
//!
//! Durations are strings: a decimal number and a unit `ms`, `s`, `m` or `h` (`"250ms"`,
//! `"1.5s"`, `"1m"`); a bare number (`"5"` or `5`) is refused with the units named, and
//! the value must be a whole number of milliseconds.
//!
//! Host names are resolved once, at load, with the system resolver (the first address
//! returned is used); a name that does not resolve refuses the file.
//!
//! A check uses either rise/fall or window/threshold; writing both in one table is an
//! error. A check that names one style takes its missing half from the defaults' same
//! style and ignores the defaults' other style.
//!
//! ## Kind tables
//!
//! - `[check.http]` (http, https): `method` (`GET`), `path` (`/`; starts with `/`, no
//!   spaces or control characters), `host` (Host header; default the target host),
//!   `headers`, `proxy_protocol` (`"v1"`, `"v2"`), `keepalive` (false), `max_body`
//!   (65536, at most 16 MiB), `expect_status` (list of `"LO-HI"`, `"NNN"` or NNN within
//!   100-599; default 200-399), `expect_body` (substring), `expect_body_regex` (compiled
//!   size at most 1 MiB), `expect_header` (`{ name, value }`; without `value` the header
//!   only has to be present). Header names are HTTP tokens; values have no CR, LF, NUL.
//! - `[check.tls]` (https only): `sni` (DNS name; default the target host), `verify`
//!   (true), `ca_file` (PEM path, read by the engine, not at load).
//! - `[check.udp]` (udp): `payload` (text) or `payload_hex`, `expect_prefix` or
//!   `expect_prefix_hex` (empty: any answer is healthy); at most 65507 bytes each.
//! - `[check.dns]` (dns): `name` (required; labels of 1-63 letters, digits, `-`, `_`,
//!   253 characters at most, `"."` for the root), `type` (`A` default, `AAAA`, `CNAME`,
//!   `MX`, `NS`, `PTR`, `SOA`, `SRV`, `TXT`, `ANY`, a number or `"TYPEnn"`),
//!   `expect_rcode` (`NOERROR` default, `FORMERR`, `SERVFAIL`, `NXDOMAIN`, `NOTIMP`,
//!   `REFUSED`, `YXDOMAIN`, `YXRRSET`, `NXRRSET`, `NOTAUTH`, `NOTZONE` or 0-15),
//!   `expect_answer` (an address for A/AAAA, checked as one).
//!
//! A check's kind table must go with its kind (`[check.http]` on a dns check is an
//! error). In `[defaults]`, kind tables apply to the checks of their kinds only, field
//! by field. Tables of strings (`labels`, `headers`) are merged key by key, the check's
//! value winning; every other field given by a check replaces the default.
//!
//! Unknown fields are errors everywhere.

mod duration;
mod error;
mod fields;
mod kinds;
pub mod policy;
mod raw;
mod target;
mod validate;

#[cfg(test)]
mod tests;

use std::{collections::HashMap, fs, path::Path};

use error::{At, Ctx};
pub use error::{ConfigError, Problem};
use fields::Fields;
use raw::{Kind, Node, Table};

use crate::engine::{spec::CheckSpec, PortRange};

/// A validated configuration file.
#[derive(Clone, Debug)]
pub struct Config {
    /// The checks, in file order.
    pub checks: Vec<CheckSpec>,
    /// The file's `[defaults]`, for checks added later (API, etcd) with
    /// [`parse_check_json`].
    pub defaults: Defaults,
    /// The `[daemon]` settings.
    pub daemon: DaemonSettings,
}

/// Settings of the daemon itself (`[daemon]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonSettings {
    /// Interface the XDP and TC programs attach to; `None` leaves it to the command line.
    pub iface: Option<String>,
    /// Reserved source-port range of stateless probes.
    pub ports: PortRange,
    /// Time answers in userspace instead of loading the kernel programs.
    pub userspace: bool,
    /// Who answers a SYN-ACK to a probe with its RST: the TC ingress program (default),
    /// the XDP program (NICs with native XDP; watched, see `ebpf::reset`) or the host's
    /// TCP stack.
    pub syn_ack_reset: crate::ebpf::ResetMode,
    /// Which kernel program classifies answers (see `ebpf::ingress`): `auto` takes TC
    /// ingress on a veth or where native XDP is refused, XDP elsewhere.
    pub answer_hook: crate::ebpf::AnswerHook,
    /// Networks checks may and may not probe.
    pub policy: policy::TargetPolicy,
    /// `/metrics` renders per-check series while the node runs at most this many
    /// checks, and only counts of checks beyond (0: never per check). About 20 series
    /// per check: a million checks would be 20 million series and gigabytes of text
    /// per scrape.
    pub metrics_check_limit: usize,
}

/// Default of [`DaemonSettings::metrics_check_limit`]: about 200,000 series.
pub const METRICS_CHECK_LIMIT: usize = 10_000;

impl Default for DaemonSettings {
    fn default() -> Self {
        Self {
            iface: None,
            ports: PortRange::DEFAULT,
            userspace: false,
            syn_ack_reset: crate::ebpf::ResetMode::Tc,
            answer_hook: crate::ebpf::AnswerHook::Auto,
            policy: policy::TargetPolicy::default(),
            metrics_check_limit: METRICS_CHECK_LIMIT,
        }
    }
}

/// Field values applied to checks that do not set them (`[defaults]`), already checked
/// field by field. `Defaults::default()` has none: only the built-in defaults apply.
#[derive(Clone, Debug)]
pub struct Defaults {
    fields: Fields,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            fields: Fields::empty(At {
                path: "defaults".to_owned(),
                pos: None,
            }),
        }
    }
}

/// Read and validate a configuration file; problems name `path` as given.
///
/// # Errors
/// [`ConfigError::Read`] when the file cannot be read, [`ConfigError::Invalid`] with
/// every problem found otherwise.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_str(&text, &path.display().to_string())
}

/// Validate configuration `text`; `origin` (usually the file path) starts every problem.
///
/// # Errors
/// [`ConfigError::Invalid`] with every problem found (TOML syntax errors stop there).
pub fn parse_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let mut ctx = Ctx::new(origin, Some(text));
    let root = match Node::from_toml(text) {
        Ok(root) => root,
        Err(e) => {
            ctx.syntax(e.span(), e.message());
            return ctx.finish(Config::empty());
        }
    };
    let config = document(&mut ctx, &root);
    ctx.finish(config)
}

/// Validate one check given as JSON, shaped like a `[[check]]` table (kind tables as
/// nested objects: `{"id": "web-1", ..., "http": {"path": "/"}}`), with `defaults`
/// applied (e.g. [`Config::defaults`] of the running file). Problems name `<json>` and
/// field paths without the `check[N].` prefix; problems of default values keep their
/// file position.
///
/// # Errors
/// [`ConfigError::Invalid`] with every problem found.
pub fn parse_check_json(
    value: &serde_json::Value,
    defaults: &Defaults,
) -> Result<CheckSpec, ConfigError> {
    let mut ctx = Ctx::new("<json>", None);
    let node = Node::from_json(value);
    let spec = fields::walk(&mut ctx, &node, String::new(), false)
        .and_then(|c| validate::build(&mut ctx, &c, &defaults.fields));
    // `build` gives `None` only after reporting why, so `finish` has refused it then.
    ctx.finish(spec)?.ok_or_else(|| ConfigError::Invalid {
        problems: Vec::new(),
    })
}

/// Validate a `[defaults]` table given as JSON (for defaults kept outside a file, e.g.
/// in etcd), to pass to [`parse_check_json`].
///
/// # Errors
/// [`ConfigError::Invalid`] with every problem found.
pub fn parse_defaults_json(value: &serde_json::Value) -> Result<Defaults, ConfigError> {
    let mut ctx = Ctx::new("<json>", None);
    let node = Node::from_json(value);
    let fields = fields::walk(&mut ctx, &node, "defaults".to_owned(), true);
    ctx.finish(fields)?
        .map(|fields| Defaults { fields })
        .ok_or_else(|| ConfigError::Invalid {
            problems: Vec::new(),
        })
}

impl Config {
    fn empty() -> Self {
        Self {
            checks: Vec::new(),
            defaults: Defaults::default(),
            daemon: DaemonSettings::default(),
        }
    }
}

/// The whole document: `[daemon]`, `[defaults]`, `[[check]]`.
fn document(ctx: &mut Ctx, root: &Node) -> Config {
    let mut config = Config::empty();
    let Some(mut top) = Table::new(ctx, root, String::new()) else {
        return config;
    };
    if let Some(mut t) = top.table(ctx, "daemon") {
        config.daemon = daemon(ctx, &mut t);
        t.finish(ctx);
    }
    if let Some((node, at)) = top.node(ctx, "defaults") {
        if let Some(fields) = fields::walk(ctx, node, at.path, true) {
            config.defaults = Defaults { fields };
        }
    }
    let checks = match top.node(ctx, "check") {
        Some((
            Node {
                kind: Kind::Array(items),
                ..
            },
            _,
        )) => items.as_slice(),
        Some((node, at)) => {
            let msg = format!(
                "expected [[check]] tables (an array of tables), found {}",
                raw::describe(node)
            );
            ctx.report(&at, msg);
            &[]
        }
        None => &[],
    };
    let mut seen: HashMap<String, At> = HashMap::new();
    for (i, node) in checks.iter().enumerate() {
        ctx.check = None;
        let Some(c) = fields::walk(ctx, node, format!("check[{i}]"), false) else {
            continue;
        };
        if let Some(id) = &c.id {
            if let Some(first) = seen.get(&id.v) {
                let msg = format!(
                    "duplicate id {:?}; first defined at {}",
                    id.v,
                    first.describe()
                );
                ctx.report(&id.at, msg);
            } else {
                seen.insert(id.v.clone(), id.at.clone());
            }
        }
        if let Some(spec) = validate::build(ctx, &c, &config.defaults.fields) {
            match config.daemon.policy.check(spec.target.addr) {
                Ok(()) => config.checks.push(spec),
                Err(e) => {
                    let at = c
                        .target
                        .as_ref()
                        .map_or_else(|| c.at.clone(), |t| t.at.clone());
                    ctx.report(&at, e);
                }
            }
        }
    }
    ctx.check = None;
    top.finish(ctx);
    config
}

/// `[daemon]`'s fields.
fn daemon(ctx: &mut Ctx, t: &mut Table<'_>) -> DaemonSettings {
    let mut d = DaemonSettings::default();
    if let Some(iface) = t.string(ctx, "iface") {
        let ok = !iface.v.is_empty() && iface.v.len() < 16 && !iface.v.contains(['/', ' ', '\0']);
        if ok {
            d.iface = Some(iface.v);
        } else {
            let msg = format!(
                "invalid interface name {:?}; expected 1-15 characters without '/' or spaces",
                iface.v
            );
            ctx.report(&iface.at, msg);
        }
    }
    if let Some(ports) = t.string(ctx, "ports") {
        match ports.v.parse::<PortRange>() {
            Ok(p) => d.ports = p,
            Err(e) => ctx.report(&ports.at, e.to_string()),
        }
    }
    if let Some(u) = t.bool(ctx, "userspace") {
        d.userspace = u.v;
    }
    if let Some(r) = t.string(ctx, "syn_ack_reset") {
        match crate::ebpf::ResetMode::parse(&r.v) {
            Some(m) => d.syn_ack_reset = m,
            None => ctx.report(
                &r.at,
                format!(
                    "invalid syn_ack_reset {:?}; expected \"tc\", \"xdp\" or \"stack\"",
                    r.v
                ),
            ),
        }
    }
    if let Some(h) = t.string(ctx, "answer_hook") {
        match crate::ebpf::AnswerHook::parse(&h.v) {
            Some(crate::ebpf::AnswerHook::Tc) if d.syn_ack_reset == crate::ebpf::ResetMode::Xdp => {
                ctx.report(
                    &h.at,
                    "answer_hook \"tc\" attaches no XDP program, which syn_ack_reset = \"xdp\" needs; use answer_hook \"auto\" or \"xdp\"".to_owned(),
                );
            }
            Some(m) => d.answer_hook = m,
            None => ctx.report(
                &h.at,
                format!(
                    "invalid answer_hook {:?}; expected \"auto\", \"xdp\" or \"tc\"",
                    h.v
                ),
            ),
        }
    }
    d.policy.allow = networks(ctx, t, "allow_targets");
    d.policy.deny = networks(ctx, t, "deny_targets");
    if let Some(n) = t.int(ctx, "metrics_check_limit") {
        match usize::try_from(n.v) {
            Ok(limit) => d.metrics_check_limit = limit,
            Err(_) => ctx.report(
                &n.at,
                format!(
                    "invalid metrics_check_limit {}; expected 0 or more checks",
                    n.v
                ),
            ),
        }
    }
    d
}

/// A list of networks (`allow_targets`, `deny_targets`).
fn networks(ctx: &mut Ctx, t: &mut Table<'_>, name: &'static str) -> Vec<policy::Network> {
    let Some((node, at)) = t.node(ctx, name) else {
        return Vec::new();
    };
    let Kind::Array(items) = &node.kind else {
        let msg = format!(
            "expected a list of networks, e.g. [\"198.18.0.0/15\"], found {}",
            node.kind.describe()
        );
        ctx.report(&at, msg);
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let item_at = ctx.at(format!("{}[{i}]", at.path), item.span.as_ref());
        match &item.kind {
            Kind::Str(s) => match s.parse() {
                Ok(n) => out.push(n),
                Err(e) => ctx.report(&item_at, e),
            },
            other => ctx.report(
                &item_at,
                format!("expected a network string, found {}", other.describe()),
            ),
        }
    }
    out
}
