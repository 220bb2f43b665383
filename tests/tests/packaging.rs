//! The Debian packaging (`packaging/`, `[package.metadata.deb]`): the systemd unit, the
//! alert rules against the real /metrics, the default config, completions, man pages
//! and maintainer scripts.
//!
//! Tools: `systemd-analyze` (apt `systemd`), `promtool` (apt `prometheus`), `man`
//! (apt `man-db`, with `groff-base`), `shellcheck`, `zsh`, `fish`. A test whose tool is
//! missing prints `SKIPPED: ...`, or fails with `SONDE_REQUIRE_PRIVILEGED=1` (CI).
//!
//! Completions and man pages come from the hidden `sonde completions SHELL` and
//! `sonde man DIR` of the `sonde` binary built next to this test (what `cargo xtask
//! completions|man|package` run on the release binary), plus the library functions
//! behind them. The unit is verified as a copy whose ExecStart points at that binary:
//! `systemd-analyze verify` refuses a unit whose executable does not exist, and
//! /usr/bin/sonde exists only where the package is installed.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use probe_common::counters::{TcReason, XdpReason};
use sonde::{
    api::{control::DaemonInfo, metrics::MetricsInput},
    cli::completions::{self, Shell},
    ebpf::Counters,
    engine::{
        budget::BudgetStats,
        result::{CheckResult, Phases, Reason},
        uring::EngineCounters,
        Clock,
    },
    health::HealthTable,
    lab::skip_or_fail,
};
use sonde_tests::daemon::{sonde_bin, TempDir};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn packaging(file: &str) -> PathBuf {
    root().join("packaging").join(file)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Whether `tool` is on PATH; otherwise SKIPPED (or a failure under
/// SONDE_REQUIRE_PRIVILEGED=1) naming the apt package.
fn have(tool: &str, apt: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    if !found {
        skip_or_fail(&format!("`{tool}` not found (apt-get install {apt})"));
    }
    found
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

// ---- the systemd unit ------------------------------------------------------------

/// `Key=value` lines of the unit (keys may repeat).
fn unit_directives(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn directive<'a>(d: &'a [(String, String)], key: &str) -> &'a str {
    d.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("the unit has no {key}="))
}

#[test]
fn unit_has_the_hardening_and_capabilities() {
    let unit = read(&packaging("sonde.service"));
    let d = unit_directives(&unit);
    for (key, want) in [
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
        ("User", "sonde"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ReadWritePaths", "/var/lib/sonde"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("LockPersonality", "yes"),
        ("SystemCallArchitectures", "native"),
        ("StateDirectory", "sonde"),
        ("RuntimeDirectory", "sonde"),
    ] {
        assert_eq!(directive(&d, key), want, "{key}");
    }
    assert!(directive(&d, "ExecStart")
        .starts_with("/usr/bin/sonde run --config /etc/sonde/checks.toml"));
    let set = |key: &str| -> BTreeSet<String> {
        directive(&d, key)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    // The four sonde needs (see the unit's comments); not CAP_SYS_RESOURCE.
    let caps: BTreeSet<String> = ["CAP_BPF", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_PERFMON"]
        .map(str::to_owned)
        .into();
    assert_eq!(set("CapabilityBoundingSet"), caps);
    assert_eq!(set("AmbientCapabilities"), caps);
    let families: BTreeSet<String> = ["AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK", "AF_PACKET"]
        .map(str::to_owned)
        .into();
    assert_eq!(set("RestrictAddressFamilies"), families);
    // /proc/sys must stay writable: sonde reserves its probe ports there.
    assert!(!d.iter().any(|(k, _)| k == "ProtectKernelTunables"));
    // Paths the daemon uses by default are the ones the unit provides.
    assert_eq!(sonde::api::server::DEFAULT_SOCKET, "/run/sonde/sonde.sock");
    assert_eq!(
        sonde::api::server::DEFAULT_TOKEN_FILE,
        "/var/lib/sonde/token"
    );
}

/// The unit's ExecStart with the default file's SONDE_OPTS (and `--log-format json`)
/// is accepted by the binary's command line parser: with a missing checks file, `sonde
/// run` gets past clap (exit 2 on a usage error) and fails on reading the file (exit 1),
/// before anything privileged. An option renamed in the CLI breaks this test, not the
/// service.
#[test]
fn unit_command_line_parses() {
    let d = unit_directives(&read(&packaging("sonde.service")));
    let default = read(&packaging("sonde.default"));
    let opts = default
        .lines()
        .find_map(|l| l.strip_prefix("SONDE_OPTS="))
        .expect("SONDE_OPTS in sonde.default")
        .trim_matches('"');
    let line = directive(&d, "ExecStart").replace("$SONDE_OPTS", opts);
    let dir = TempDir::new("unit-cmdline");
    let missing = dir.0.join("missing.toml");
    let line = line.replace("/etc/sonde/checks.toml", &missing.display().to_string());
    let argv: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(argv[..2], ["/usr/bin/sonde", "run"]);
    for extra in [&[][..], &["--log-format", "json"][..]] {
        let out = run(Command::new(sonde_bin())
            .args(&argv[1..])
            .args(extra)
            .env("RUST_LOG", "off"));
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{line} {extra:?}: {stderr}");
        assert!(stderr.contains("missing.toml"), "{stderr}");
    }
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    if !have("systemd-analyze", "systemd") {
        return;
    }
    let dir = TempDir::new("unit");
    let bin = sonde_bin();
    let unit = read(&packaging("sonde.service"));
    assert!(unit.contains("ExecStart=/usr/bin/sonde "));
    let copy = dir.0.join("sonde.service");
    std::fs::write(
        &copy,
        unit.replace(
            "ExecStart=/usr/bin/sonde ",
            &format!("ExecStart={} ", bin.display()),
        ),
    )
    .expect("write the unit copy");
    // --man=no: Documentation=man:sonde(1) exists only once the package is installed
    // (man_pages_render checks the pages themselves).
    let out = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy));
    assert_success("systemd-analyze verify", &out);
    let stderr = text(&out.stderr);
    let about_us: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("sonde.service"))
        .collect();
    assert!(
        about_us.is_empty(),
        "verify complains:\n{}",
        about_us.join("\n")
    );

    // The sandbox's exposure as systemd rates it (0 best .. 10 worst); the unit needs
    // network capabilities, so "OK" (< 5) rather than "SAFE" is the bar.
    let out = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=50", "--no-pager"])
        .arg(&copy));
    let report = text(&out.stdout);
    assert_success(
        "systemd-analyze security --offline=yes --threshold=50",
        &out,
    );
    let score = report
        .lines()
        .find_map(|l| l.split("Overall exposure level for sonde.service:").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    eprintln!("systemd-analyze security: exposure {score}");
    assert!(score < 5.0, "exposure {score}:\n{report}");
}

// ---- Prometheus alert rules ------------------------------------------------------

#[test]
fn alert_rules_pass_promtool() {
    if !have("promtool", "prometheus") {
        return;
    }
    let out = run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(packaging("sonde-alerts.yml")));
    assert_success("promtool check rules", &out);
    let out = run(Command::new("promtool")
        .args(["test", "rules", "sonde-alerts.test.yml"])
        .current_dir(root().join("packaging")));
    assert_success("promtool test rules", &out);
}

/// A /metrics exposition with every family present: checks of every kind (from
/// examples/checks.toml), results for each, one unhealthy, kernel counters.
fn representative_metrics() -> String {
    let cfg = sonde::config::parse_str(&read(&root().join("examples/checks.toml")), "example")
        .expect("examples/checks.toml parses");
    let now = tokio::time::Instant::now();
    let mut table = HealthTable::new();
    let mut outcomes: BTreeMap<_, BTreeMap<&'static str, u64>> = BTreeMap::new();
    for (i, spec) in cfg.checks.iter().enumerate() {
        table.add(spec.clone(), now).expect("add check");
        let failing = i == 0;
        for seq in 0..5u64 {
            let reason = if failing { Reason::Timeout } else { Reason::Ok };
            let result = CheckResult {
                check: spec.id.clone(),
                seq,
                rtt: (!failing).then(|| Duration::from_micros(800 + seq * 100)),
                clock: if i % 2 == 0 {
                    Clock::Kernel
                } else {
                    Clock::Userspace
                },
                phases: Phases::default(),
                http_status: None,
                cert_days_left: None,
                reason,
            };
            *outcomes
                .entry(spec.id.clone())
                .or_default()
                .entry(result.reason.label())
                .or_default() += 1;
            table.apply(&result, now);
        }
    }
    let statuses = table.snapshot_all();
    assert!(statuses
        .iter()
        .any(|s| s.state == sonde::health::Health::Unhealthy));
    let engine = EngineCounters {
        started: 100,
        finished: 99,
        socket_errors: 1,
        ..EngineCounters::default()
    };
    let budget = BudgetStats {
        admitted: 100,
        delayed_by_target: 3,
        skipped: 1,
        ..BudgetStats::default()
    };
    let kernel = Counters {
        xdp: (1..=u64::from(XdpReason::COUNT)).collect(),
        tc: (1..=u64::from(TcReason::COUNT)).collect(),
    };
    let mut text = sonde::api::metrics::render(&MetricsInput {
        info: DaemonInfo {
            version: "0.1.0".into(),
            uptime_secs: 60,
            clock: "kernel".into(),
            kernel_unavailable: None,
            iface: Some("eth0".into()),
            config_path: Some("/etc/sonde/checks.toml".into()),
            checks: statuses.len(),
            per_target_pps: 50.0,
            syn_ack_reset: None,
            answer_hook: None,
        },
        statuses,
        outcomes,
        engine,
        budget,
        kernel: Some(kernel),
        cluster: Some(sonde::cluster::view::ClusterView {
            node_id: "n1".into(),
            leader: Some("n1".into()),
            term: Some(7),
            nodes: ["n1", "n2", "n3"]
                .iter()
                .map(|id| sonde::cluster::view::NodeView {
                    id: (*id).into(),
                    version: "0.1.0".into(),
                    assigned: 10,
                    share: 1.0 / 3.0,
                    leader: *id == "n1",
                    suspect: *id == "n3",
                    registered_unix_ms: 1,
                })
                .collect(),
            suspects: vec!["n3".into()],
            revision: 42,
            refreshed_unix_ms: 1_700_000_000_000,
            error: None,
        }),
        refused_checks: 2,
        omitted: None,
    });
    // The node runtime's own families, appended by the daemon in cluster mode.
    text.push_str(&sonde::cluster::node::render_metrics(
        "n1",
        &sonde::cluster::node::NodeStats::default(),
    ));
    text
}

/// Samples of an exposition: metric name to the label sets of its samples.
fn parse_exposition(text: &str) -> BTreeMap<String, Vec<BTreeMap<String, String>>> {
    let mut out: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).expect("sample line");
        let name = &line[..end];
        let mut labels = BTreeMap::new();
        if line[end..].starts_with('{') {
            let body = &line[end + 1..line.rfind('}').expect("closing brace")];
            let mut rest = body;
            while let Some((key, after)) = rest.split_once("=\"") {
                let mut value = String::new();
                let mut chars = after.char_indices();
                let mut close = after.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, n)) = chars.next() {
                                value.push(n);
                            }
                        }
                        '"' => {
                            close = i;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                labels.insert(key.trim_start_matches(',').to_owned(), value);
                rest = &after[(close + 1).min(after.len())..];
            }
        }
        out.entry(name.to_owned()).or_default().push(labels);
    }
    out
}

/// The PromQL expressions of a rules file (`expr: ...` and `expr: |` blocks).
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let indent = line.len() - line.trim_start().len();
        if let Some(rest) = line.trim_start().strip_prefix("expr:") {
            let rest = rest.trim();
            if rest == "|" || rest == ">" || rest.starts_with("|-") || rest.starts_with(">-") {
                let mut block = String::new();
                i += 1;
                while i < lines.len()
                    && (lines[i].trim().is_empty()
                        || lines[i].len() - lines[i].trim_start().len() > indent)
                {
                    block.push_str(lines[i].trim());
                    block.push('\n');
                    i += 1;
                }
                out.push(block);
                continue;
            }
            out.push(rest.trim_matches(['"', '\'']).to_owned());
        }
        i += 1;
    }
    out
}

/// One vector selector: metric name and its `(label, op, value)` matchers.
#[derive(Debug)]
struct Selector {
    name: String,
    matchers: Vec<(String, String, String)>,
}

/// What a PromQL expression refers to: selectors, and label names of
/// by/without/on/ignoring/group_left/group_right lists.
#[derive(Debug, Default)]
struct Refs {
    selectors: Vec<Selector>,
    grouping_labels: BTreeSet<String>,
}

const BINARY_KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "atan2"];
/// Aggregation operators: followed by `(` or by a `by`/`without` clause.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
const LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// A small PromQL scanner, enough for selectors, matchers and label lists.
fn promql_refs(expr: &str) -> Refs {
    let b: Vec<char> = expr.chars().collect();
    let mut refs = Refs::default();
    let skip_ws = |mut i: usize| {
        while i < b.len() && b[i].is_whitespace() {
            i += 1;
        }
        i
    };
    let ident = |i: usize| {
        let mut j = i;
        while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == '_' || b[j] == ':') {
            j += 1;
        }
        (b[i..j].iter().collect::<String>(), j)
    };
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == '[' {
            // A range or subquery duration.
            while i < b.len() && b[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '"' || c == '\'' {
            i += 1;
            while i < b.len() && b[i] != c {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c.is_ascii_digit() || c == '.' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let (word, j) = ident(i);
            let k = skip_ws(j);
            let next = b.get(k).copied();
            if LIST_KEYWORDS.contains(&word.as_str()) {
                i = j;
                if next == Some('(') {
                    let mut m = k + 1;
                    while m < b.len() && b[m] != ')' {
                        if b[m].is_ascii_alphabetic() || b[m] == '_' {
                            let (label, e) = ident(m);
                            refs.grouping_labels.insert(label);
                            m = e;
                        } else {
                            m += 1;
                        }
                    }
                    i = m + 1;
                }
            } else if BINARY_KEYWORDS.contains(&word.as_str())
                || AGGREGATIONS.contains(&word.as_str())
                || next == Some('(')
            {
                i = j; // operator, function or aggregation
            } else {
                let mut sel = Selector {
                    name: word,
                    matchers: Vec::new(),
                };
                i = j;
                if next == Some('{') {
                    let mut m = k + 1;
                    loop {
                        m = skip_ws(m);
                        if m >= b.len() || b[m] == '}' {
                            break;
                        }
                        if b[m] == ',' {
                            m += 1;
                            continue;
                        }
                        let (label, e) = ident(m);
                        let e = skip_ws(e);
                        let op_len = if b[e + 1] == '=' || b[e + 1] == '~' {
                            2
                        } else {
                            1
                        };
                        let op: String = b[e..e + op_len].iter().collect();
                        let q = skip_ws(e + op_len);
                        let quote = b[q];
                        let mut v = q + 1;
                        let mut value = String::new();
                        while b[v] != quote {
                            value.push(b[v]);
                            v += 1;
                        }
                        sel.matchers.push((label, op, value));
                        m = v + 1;
                    }
                    i = m + 1;
                }
                refs.selectors.push(sel);
            }
        } else {
            i += 1;
        }
    }
    refs
}

#[test]
fn promql_scanner_finds_selectors_and_labels() {
    let r = promql_refs(
        "sum by (instance, job) (rate(a_total{reason=~\"x|y\", k=\"v\"}[5m])) / on(instance) group_left b > 0.5 and c",
    );
    let names: Vec<&str> = r.selectors.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["a_total", "b", "c"]);
    assert_eq!(
        r.selectors[0].matchers,
        [
            ("reason".into(), "=~".into(), "x|y".into()),
            ("k".into(), "=".into(), "v".into())
        ]
    );
    let labels: Vec<&str> = r.grouping_labels.iter().map(String::as_str).collect();
    assert_eq!(labels, ["instance", "job"]);
}

/// Every metric the rules use exists in sonde's real /metrics, with the label values
/// they match on, and every label they group or join by is one sonde or Prometheus
/// (job, instance) sets.
#[test]
fn alert_rules_use_real_metric_names() {
    /// Added by Prometheus, not by sonde.
    const PROMETHEUS_METRICS: &[&str] = &["up"];
    const TARGET_LABELS: &[&str] = &["job", "instance"];
    let exposition = representative_metrics();
    let metrics = parse_exposition(&exposition);
    for family in [
        "sonde_check_state",
        "sonde_check_info",
        "sonde_check_latency_seconds",
        "sonde_check_last_clock",
        "sonde_probes_total",
        "sonde_xdp_frames_total",
        "sonde_tc_packets_total",
        "sonde_cluster_is_leader",
        "sonde_cluster_acting_leader",
        "sonde_cluster_node_suspect",
    ] {
        assert!(metrics.contains_key(family), "{family} not rendered");
    }
    let all_labels: BTreeSet<&str> = metrics
        .values()
        .flatten()
        .flat_map(|l| l.keys().map(String::as_str))
        .collect();
    let exprs = rule_exprs(&read(&packaging("sonde-alerts.yml")));
    assert!(exprs.len() >= 10, "{exprs:?}");
    let mut used = BTreeSet::new();
    for expr in &exprs {
        let refs = promql_refs(expr);
        assert!(!refs.selectors.is_empty(), "no selector in {expr}");
        for label in &refs.grouping_labels {
            assert!(
                all_labels.contains(label.as_str()) || TARGET_LABELS.contains(&label.as_str()),
                "label {label} (in {expr}) is not a label of sonde's metrics"
            );
        }
        for sel in refs.selectors {
            used.insert(sel.name.clone());
            if PROMETHEUS_METRICS.contains(&sel.name.as_str()) {
                continue;
            }
            let samples = metrics.get(&sel.name).unwrap_or_else(|| {
                panic!("{} (in {expr}) is not in /metrics:\n{exposition}", sel.name)
            });
            for (label, op, value) in &sel.matchers {
                if TARGET_LABELS.contains(&label.as_str()) || op.starts_with('!') {
                    continue;
                }
                let wanted: Vec<&str> = match op.as_str() {
                    "=" => vec![value.as_str()],
                    "=~" => {
                        assert!(
                            value
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '|'),
                            "{value}: only a|b|c alternations are checked; extend this test"
                        );
                        value.split('|').collect()
                    }
                    _ => panic!("matcher {op}"),
                };
                for v in wanted {
                    assert!(
                        samples
                            .iter()
                            .any(|l| l.get(label).map(String::as_str) == Some(v)),
                        "no {}{{{label}=\"{v}\"}} sample (in {expr})",
                        sel.name
                    );
                }
            }
        }
    }
    eprintln!("metrics used by the rules: {used:?}");
}

// ---- default config --------------------------------------------------------------

#[test]
fn default_config_is_valid_and_so_is_its_example() {
    let text = read(&packaging("checks.toml"));
    let cfg =
        sonde::config::parse_str(&text, "/etc/sonde/checks.toml").unwrap_or_else(|e| panic!("{e}"));
    assert!(
        cfg.checks.is_empty(),
        "the packaged file starts with no checks"
    );
    // Lines with one '#' are the commented example, '##' lines are prose.
    let example: String = text
        .lines()
        .filter(|l| !l.starts_with("##"))
        .map(|l| {
            l.strip_prefix('#')
                .map_or(l, |r| r.strip_prefix(' ').unwrap_or(r))
        })
        .collect::<Vec<_>>()
        .join("\n");
    let cfg = sonde::config::parse_str(&example, "uncommented checks.toml")
        .unwrap_or_else(|e| panic!("the commented example is invalid:\n{e}\n{example}"));
    let kinds: BTreeSet<&str> = cfg.checks.iter().map(|c| c.probe.kind()).collect();
    assert_eq!(cfg.checks.len(), 5, "{kinds:?}");
    assert_eq!(cfg.daemon.iface.as_deref(), Some("eth0"));
}

// ---- Debian metadata and maintainer scripts --------------------------------------

#[test]
fn deb_assets_from_the_source_tree_exist() {
    let manifest = read(&root().join("userspace/Cargo.toml"));
    let deb = &manifest[manifest
        .find("[package.metadata.deb]")
        .expect("[package.metadata.deb]")..];
    let mut seen = 0;
    for part in deb.split("[\"").skip(1) {
        let src = part.split('"').next().expect("asset source");
        if src.starts_with("target/release/") {
            continue; // built by cargo xtask package
        }
        let path = root().join("userspace").join(src);
        assert!(path.is_file(), "asset {src} missing ({})", path.display());
        seen += 1;
    }
    assert!(seen >= 5, "{seen} source assets");
    for script in ["postinst", "postrm"] {
        let s = read(&packaging(&format!("debian/{script}")));
        // cargo-deb replaces every occurrence, comments included: exactly one.
        assert_eq!(
            s.matches("#DEBHELPER#").count(),
            1,
            "{script}: one marker for cargo-deb's systemd snippets"
        );
    }
    assert!(
        packaging("sonde.service").is_file(),
        "unit-scripts dir holds sonde.service"
    );
}

#[test]
fn maintainer_scripts_are_valid_sh() {
    let scripts = [packaging("debian/postinst"), packaging("debian/postrm")];
    for s in &scripts {
        let out = run(Command::new("sh").arg("-n").arg(s));
        assert_success(&format!("sh -n {}", s.display()), &out);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(s).expect("script").permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "{} is executable", s.display());
    }
    if !have("shellcheck", "shellcheck") {
        return;
    }
    let out = run(Command::new("shellcheck").args(["-s", "sh"]).args(&scripts));
    assert_success("shellcheck", &out);
}

// ---- completions and man pages ---------------------------------------------------

/// The scripts `cargo xtask completions` writes: those of the binary's hidden subcommand.
fn binary_completions(shell: &str) -> String {
    let out = run(Command::new(sonde_bin()).args(["completions", shell]));
    assert_success(&format!("sonde completions {shell}"), &out);
    text(&out.stdout)
}

#[test]
fn completions_generate_for_each_shell() {
    for (shell, name) in [
        (Shell::Bash, "bash"),
        (Shell::Zsh, "zsh"),
        (Shell::Fish, "fish"),
    ] {
        let script = binary_completions(name);
        assert_eq!(script, completions::completion_script(shell), "{name}");
        for word in [
            "status",
            "validate",
            "run",
            "reload",
            "log-format",
            "state-dir",
        ] {
            assert!(script.contains(word), "{name}: {word} missing");
        }
    }
}

#[test]
fn bash_completion_completes_subcommands_and_values() {
    let dir = TempDir::new("bash-completion");
    let script = dir.0.join("sonde.bash");
    std::fs::write(&script, binary_completions("bash")).expect("write");
    let probe = |words: &str| -> String {
        let words_count = words.split_whitespace().count();
        let trailing_space = words.ends_with(' ');
        let cword = if trailing_space {
            words_count
        } else {
            words_count - 1
        };
        let program = format!(
            "source '{}'; COMP_WORDS=({words}{}); COMP_CWORD={cword}; COMP_LINE='{words}'; \
             COMP_POINT=${{#COMP_LINE}}; \
             _sonde sonde \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display(),
            if trailing_space { "''" } else { "" },
        );
        let out = run(Command::new("bash").args(["--norc", "-c", &program]));
        assert_success(&format!("bash completion of {words:?}"), &out);
        text(&out.stdout)
    };
    let subs = probe("sonde st");
    assert!(subs.lines().any(|l| l == "status"), "{subs}");
    let formats = probe("sonde --log-format ");
    let got: BTreeSet<&str> = formats.lines().collect();
    assert_eq!(got, BTreeSet::from(["text", "json"]), "{formats}");
}

#[test]
fn zsh_completion_parses() {
    if !have("zsh", "zsh") {
        return;
    }
    let dir = TempDir::new("zsh-completion");
    let script = dir.0.join("_sonde");
    std::fs::write(&script, binary_completions("zsh")).expect("write");
    let out = run(Command::new("zsh").args(["-n"]).arg(&script));
    assert_success("zsh -n _sonde", &out);
}

#[test]
fn fish_completion_completes_subcommands() {
    if !have("fish", "fish") {
        return;
    }
    let dir = TempDir::new("fish-completion");
    let script = dir.0.join("sonde.fish");
    std::fs::write(&script, binary_completions("fish")).expect("write");
    let program = format!(
        // (After the subcommand: fish's clap script completes a global option's value
        // only there, or as --log-format=VALUE.)
        "source '{}'; complete -C 'sonde st'; complete -C 'sonde status --log-format '",
        script.display()
    );
    let out = run(Command::new("fish")
        .args(["--no-config", "-c", &program])
        .env("HOME", &dir.0));
    assert_success("fish complete -C", &out);
    let got = text(&out.stdout);
    let first: BTreeSet<&str> = got.lines().filter_map(|l| l.split('\t').next()).collect();
    for want in ["status", "text", "json"] {
        assert!(first.contains(want), "{want} not offered:\n{got}");
    }
}

#[test]
fn man_pages_render() {
    let dir = TempDir::new("man");
    let out = run(Command::new(sonde_bin()).arg("man").arg(&dir.0));
    assert_success("sonde man DIR", &out);
    let pages: Vec<PathBuf> = text(&out.stdout).lines().map(PathBuf::from).collect();
    for name in [
        "sonde.1",
        "sonde-run.1",
        "sonde-status.1",
        "sonde-check-add.1",
    ] {
        assert!(
            pages.iter().any(|p| p.ends_with(name)),
            "{name} missing: {pages:?}"
        );
    }
    for page in &pages {
        let roff = read(page);
        assert!(
            roff.contains(".TH ") && roff.contains(".SH NAME"),
            "{}",
            page.display()
        );
    }
    let main = read(&dir.0.join("sonde.1"));
    for section in [
        ".SH SYNOPSIS",
        ".SH OPTIONS",
        ".SH SUBCOMMANDS",
        ".SH FILES",
    ] {
        assert!(main.contains(section), "sonde.1 lacks {section}");
    }
    if !have("man", "man-db") {
        return;
    }
    for page in &pages {
        let out = run(Command::new("man")
            .args(["--warnings", "-E", "UTF-8", "-P", "cat", "-l"])
            .arg(page)
            .env("MANWIDTH", "80")
            .env("LC_ALL", "C.UTF-8"));
        assert_success(&format!("man -l {}", page.display()), &out);
        let stderr = text(&out.stderr);
        assert!(stderr.trim().is_empty(), "{}: {stderr}", page.display());
        let shown = text(&out.stdout);
        assert!(
            shown.contains("NAME") && shown.contains("SYNOPSIS"),
            "{shown}"
        );
    }
}
