//! Prometheus text exposition (format 0.0.4) of everything the daemon counts.
//!
//! The daemon fills a [`MetricsInput`] and serves [`render`]'s output on `GET /metrics`
//! (through [`super::Control::metrics`]).
//!
//! # Families
//!
//! Per check (label `check` = the check id):
//! - `sonde_check_info{check,kind,target,label_<key>...} 1`: the check's description;
//!   operator labels appear here only (as `label_<key>`, the key sanitised to
//!   `[a-zA-Z0-9_]`), to be joined with `* on(check) group_left`. Keeping them off
//!   the other families keeps those label sets stable when labels are edited.
//! - `sonde_check_state{check,state="healthy|unhealthy|unknown"} 0|1`: the state set
//!   style (one series per state, exactly one of them 1), so alerts read
//!   `sonde_check_state{state="unhealthy"} == 1` and no magic number means "unknown".
//! - `sonde_check_state_since_seconds{check}`: Unix time the current state began.
//! - `sonde_check_consecutive_failures{check}`: failures in a row.
//! - `sonde_check_last_clock{check,clock="kernel|userspace"} 0|1`: which clock measured
//!   the check's latest result (state set style, for checks with a result): `kernel`
//!   when the XDP/TC programs stamped probe and answer, `userspace` otherwise. A gauge
//!   rather than a `clock` label on the latency families: those are cumulative over
//!   every result, so a label there would name one clock for values from both (a
//!   fallback to userspace mid-run), and would split the series when it changes.
//!   Join it as `sonde_check_latency_seconds * on(check) group_left(clock)
//!   (sonde_check_last_clock == 1)`.
//! - `sonde_check_latency_seconds{check,phase,quantile}`: a summary per measured
//!   phase (`rtt`, `connect`, `tls`, `first_byte`, `total`) with quantiles 0.5, 0.9
//!   and 0.99 and `_count`, cumulative since the check's state was created. There is
//!   no `_sum`: the health layer keeps HDR histograms, which do not keep a sum.
//! - `sonde_check_latency_max_seconds{check,phase}`: the largest value seen.
//! - `sonde_probes_total{check,outcome}`: results by outcome (`ok`, `timeout`, ...).
//!
//! Per-check families are rendered while the node runs at most `[daemon]
//! metrics_check_limit` checks (10,000 by default; about 20 series each). Beyond it
//! they are left out, and `sonde_metrics_checks_omitted` says how many checks that is
//! (0 otherwise); the counts below still cover every check.
//!
//! Daemon-wide: `sonde_info{version,clock}`, `sonde_uptime_seconds`, `sonde_checks`,
//! `sonde_checks_by_state{state}`, `sonde_metrics_checks_omitted`,
//! `sonde_engine_*_total`, `sonde_budget_admitted_total`,
//! `sonde_budget_delayed_total{reason}`, `sonde_budget_skipped_total`,
//! `sonde_kernel_attached`; in cluster mode (labels `node`): `sonde_cluster_is_leader`,
//! `sonde_cluster_leader_known`, `sonde_cluster_nodes`,
//! `sonde_cluster_node_assigned_checks{node}`, `sonde_cluster_node_suspect{node}` and
//! `sonde_cluster_view_refreshed_seconds`, `sonde_cluster_checks_refused_total`; and, when the kernel programs run,
//! `sonde_xdp_frames_total{reason}` (the answer classifier's exclusive reasons, at XDP or
//! TC ingress as `answer_hook` chose: their sum is every frame
//! seen), `sonde_xdp_answers_without_stamp_total` (the auxiliary `no_stamp` counter),
//! `sonde_syn_ack_resets_total{result}` (`sent`, `failed`: resets by the kernel
//! programs), `sonde_syn_ack_reset_mode{mode}` and `sonde_tc_packets_total{reason}`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
};

use probe_common::counters::{TcReason, XdpReason};

use super::control::DaemonInfo;
use crate::{
    cluster::view::ClusterView,
    ebpf::{Counters, ResetMode, ResetState},
    engine::{budget::BudgetStats, spec::CheckId, uring::EngineCounters, Clock},
    health::{CheckStatus, Health, LatencySummary, Phase},
};

/// Everything [`render`] exposes; the daemon fills it for each scrape.
#[derive(Clone, Debug)]
pub struct MetricsInput {
    /// About the daemon.
    pub info: DaemonInfo,
    /// Status of every check.
    pub statuses: Vec<CheckStatus>,
    /// Results per check by outcome label ([`crate::engine::result::Reason::label`]).
    pub outcomes: BTreeMap<CheckId, BTreeMap<&'static str, u64>>,
    /// Probe engine counters.
    pub engine: EngineCounters,
    /// Rate and resource budget decisions.
    pub budget: BudgetStats,
    /// Kernel program counters, when the kernel programs run.
    pub kernel: Option<Counters>,
    /// The cluster as this node last read it (cluster mode only).
    pub cluster: Option<ClusterView>,
    /// Assigned checks this node refused to run (target policy, unpreparable).
    pub refused_checks: u64,
    /// States of the checks whose per-check series are left out (beyond `[daemon]
    /// metrics_check_limit`; `statuses` and `outcomes` are empty then).
    pub omitted: Option<StateCounts>,
}

/// Checks by health state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateCounts {
    /// Healthy checks.
    pub healthy: u64,
    /// Unhealthy checks.
    pub unhealthy: u64,
    /// Checks without a verdict yet.
    pub unknown: u64,
}

impl StateCounts {
    /// Count one check in `state`.
    pub fn add(&mut self, state: Health) {
        match state {
            Health::Healthy => self.healthy += 1,
            Health::Unhealthy => self.unhealthy += 1,
            Health::Unknown => self.unknown += 1,
        }
    }

    /// Checks counted.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.healthy + self.unhealthy + self.unknown
    }

    fn of(&self, state: Health) -> u64 {
        match state {
            Health::Healthy => self.healthy,
            Health::Unhealthy => self.unhealthy,
            Health::Unknown => self.unknown,
        }
    }
}

/// Escape a label value: backslash, double quote and line feed.
#[must_use]
pub fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A valid label name `label_<key>`: characters outside `[a-zA-Z0-9_]` become `_`.
#[must_use]
pub fn label_name(key: &str) -> String {
    let mut out = String::from("label_");
    out.extend(
        key.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }),
    );
    out
}

/// Writes families: HELP and TYPE once, then samples. A family without samples is
/// left out entirely.
struct Writer {
    out: String,
    /// HELP and TYPE lines of the family begun, until its first sample.
    pending: Option<String>,
}

impl Writer {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        self.pending = Some(format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        if let Some(head) = self.pending.take() {
            self.out.push_str(&head);
        }
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label_value(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A family of one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

fn state_name(h: Health) -> &'static str {
    match h {
        Health::Healthy => "healthy",
        Health::Unhealthy => "unhealthy",
        Health::Unknown => "unknown",
    }
}

fn clock_name(c: Clock) -> &'static str {
    match c {
        Clock::Kernel => "kernel",
        Clock::Userspace => "userspace",
    }
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Rtt => "rtt",
        Phase::Connect => "connect",
        Phase::Tls => "tls",
        Phase::FirstByte => "first_byte",
        Phase::Total => "total",
    }
}

fn secs(us: u64) -> f64 {
    // Microsecond counts stay far below 2^52: exact as f64.
    #[allow(clippy::cast_precision_loss)]
    let us = us as f64;
    us / 1e6
}

fn target_text(s: &CheckStatus) -> String {
    let host = if s.target.host.contains(':') {
        format!("[{}]", s.target.host)
    } else {
        s.target.host.to_string()
    };
    if s.kind == "icmp" {
        host
    } else {
        format!("{host}:{}", s.target.port)
    }
}

fn check_families(w: &mut Writer, statuses: &[CheckStatus]) {
    w.family(
        "sonde_check_info",
        "gauge",
        "A configured check (always 1); operator labels as label_<key>.",
    );
    for s in statuses {
        let (target, mut seen) = (target_text(s), BTreeSet::new());
        let extra: Vec<(String, &str)> = s
            .labels
            .iter()
            .map(|(k, v)| (label_name(k), v.as_str()))
            .filter(|(k, _)| seen.insert(k.clone()))
            .collect();
        let mut labels = vec![
            ("check", s.id.as_str()),
            ("kind", s.kind),
            ("target", target.as_str()),
        ];
        labels.extend(extra.iter().map(|(k, v)| (k.as_str(), *v)));
        w.sample("sonde_check_info", &labels, 1);
    }
    w.family(
        "sonde_check_state",
        "gauge",
        "Health of a check: 1 for its current state, 0 for the others.",
    );
    for s in statuses {
        for h in [Health::Healthy, Health::Unhealthy, Health::Unknown] {
            let labels = [("check", s.id.as_str()), ("state", state_name(h))];
            w.sample("sonde_check_state", &labels, u8::from(s.state == h));
        }
    }
    w.family(
        "sonde_check_state_since_seconds",
        "gauge",
        "Unix time the current state of a check began.",
    );
    for s in statuses {
        let at = secs(s.since_unix_ms.saturating_mul(1000));
        w.sample(
            "sonde_check_state_since_seconds",
            &[("check", s.id.as_str())],
            at,
        );
    }
    w.family(
        "sonde_check_consecutive_failures",
        "gauge",
        "Failed results in a row ending with the latest one.",
    );
    for s in statuses {
        let labels = [("check", s.id.as_str())];
        w.sample(
            "sonde_check_consecutive_failures",
            &labels,
            s.consecutive_fail,
        );
    }
    w.family(
        "sonde_check_last_clock",
        "gauge",
        "Which clock measured the latest result of a check: 1 for it, 0 for the other.",
    );
    for s in statuses {
        let Some(last) = &s.last_result else { continue };
        for c in [Clock::Kernel, Clock::Userspace] {
            let labels = [("check", s.id.as_str()), ("clock", clock_name(c))];
            w.sample("sonde_check_last_clock", &labels, u8::from(last.clock == c));
        }
    }
    latency_families(w, statuses);
}

fn measured(
    statuses: &[CheckStatus],
) -> impl Iterator<Item = (&CheckStatus, Phase, LatencySummary)> {
    statuses.iter().flat_map(|s| {
        Phase::ALL
            .into_iter()
            .map(move |p| (s, p, s.latency.get(p)))
            .filter(|(_, _, l)| l.count > 0)
    })
}

fn latency_families(w: &mut Writer, statuses: &[CheckStatus]) {
    let name = "sonde_check_latency_seconds";
    w.family(
        name,
        "summary",
        "Latency of successful probes per phase since the check's state was created (no _sum is kept).",
    );
    for (s, p, l) in measured(statuses) {
        let (id, phase) = (s.id.as_str(), phase_name(p));
        for (q, v) in [("0.5", l.p50_us), ("0.9", l.p90_us), ("0.99", l.p99_us)] {
            let labels = [("check", id), ("phase", phase), ("quantile", q)];
            w.sample(name, &labels, secs(v));
        }
        w.sample(
            "sonde_check_latency_seconds_count",
            &[("check", id), ("phase", phase)],
            l.count,
        );
    }
    let name = "sonde_check_latency_max_seconds";
    w.family(
        name,
        "gauge",
        "Largest latency of successful probes per phase.",
    );
    for (s, p, l) in measured(statuses) {
        let labels = [("check", s.id.as_str()), ("phase", phase_name(p))];
        w.sample(name, &labels, secs(l.max_us));
    }
}

fn daemon_families(w: &mut Writer, input: &MetricsInput) {
    w.family("sonde_info", "gauge", "About the daemon (always 1).");
    let labels = [
        ("version", input.info.version.as_str()),
        ("clock", input.info.clock.as_str()),
    ];
    w.sample("sonde_info", &labels, 1);
    let help = "Seconds since the daemon started.";
    w.single(
        "sonde_uptime_seconds",
        "gauge",
        help,
        input.info.uptime_secs,
    );
    let mut states = input.omitted.unwrap_or_default();
    for st in &input.statuses {
        states.add(st.state);
    }
    w.single(
        "sonde_checks",
        "gauge",
        "Checks configured.",
        states.total(),
    );
    w.family("sonde_checks_by_state", "gauge", "Checks by health state.");
    for h in [Health::Healthy, Health::Unhealthy, Health::Unknown] {
        w.sample(
            "sonde_checks_by_state",
            &[("state", state_name(h))],
            states.of(h),
        );
    }
    w.single(
        "sonde_metrics_checks_omitted",
        "gauge",
        "Checks whose per-check series are left out ([daemon] metrics_check_limit).",
        input.omitted.map_or(0, |o| o.total()),
    );
    let e = &input.engine;
    for (name, help, v) in [
        (
            "sonde_engine_probes_started_total",
            "Probes started by the engine.",
            e.started,
        ),
        (
            "sonde_engine_probes_finished_total",
            "Probes finished by the engine.",
            e.finished,
        ),
        (
            "sonde_engine_delayed_in_flight_total",
            "Probes that waited for an in-flight slot.",
            e.delayed_in_flight,
        ),
        (
            "sonde_engine_socket_errors_total",
            "Probes that could not get a socket.",
            e.socket_errors,
        ),
        (
            "sonde_engine_ring_sockets_total",
            "TCP connect sockets made by io_uring as direct descriptors (no fd).",
            e.ring_sockets,
        ),
        (
            "sonde_engine_reused_sockets_total",
            "TCP connect probes on a direct socket an earlier probe left unconnected.",
            e.reused_sockets,
        ),
        (
            "sonde_engine_submits_total",
            "io_uring_enter calls.",
            e.submits,
        ),
        (
            "sonde_engine_completions_total",
            "io_uring completions reaped.",
            e.completions,
        ),
    ] {
        w.single(name, "counter", help, v);
    }
    let b = &input.budget;
    w.single(
        "sonde_budget_admitted_total",
        "counter",
        "Probes admitted by the budgets.",
        b.admitted,
    );
    w.family(
        "sonde_budget_delayed_total",
        "counter",
        "Probes delayed, by the budget that delayed them.",
    );
    for (reason, v) in [
        ("global", b.delayed_by_global),
        ("target", b.delayed_by_target),
        ("in_flight", b.delayed_by_inflight),
        ("sockets", b.delayed_by_sockets),
    ] {
        w.sample("sonde_budget_delayed_total", &[("reason", reason)], v);
    }
    let help = "Probe slots skipped because the engine ran late.";
    w.single("sonde_budget_skipped_total", "counter", help, b.skipped);
}

fn kernel_families(w: &mut Writer, kernel: Option<&Counters>, reset: Option<&ResetState>) {
    let help =
        "Whether the XDP/TC programs are attached (1) or answers are timed in userspace (0).";
    w.single(
        "sonde_kernel_attached",
        "gauge",
        help,
        u8::from(kernel.is_some()),
    );
    let Some(c) = kernel else { return };
    let name = "sonde_xdp_frames_total";
    w.family(
        name,
        "counter",
        "Frames seen by the answer classifier (the XDP program, or TC ingress with answer_hook at tc), by what it did with them.",
    );
    for r in XdpReason::ALL.iter().take(XdpReason::EXCLUSIVE as usize) {
        w.sample(name, &[("reason", r.name())], c.xdp(*r));
    }
    let help = "Answers recorded without an egress stamp (timed in userspace).";
    w.single(
        "sonde_xdp_answers_without_stamp_total",
        "counter",
        help,
        c.xdp(XdpReason::NoStamp),
    );
    let name = "sonde_syn_ack_resets_total";
    w.family(
        name,
        "counter",
        "SYN-ACKs to probes answered with their RST by the kernel programs ([daemon] syn_ack_reset tc or xdp): sent, or failed (left to the host's stack, or dropped if already cut).",
    );
    w.sample(name, &[("result", "sent")], c.xdp(XdpReason::ResetSent));
    w.sample(name, &[("result", "failed")], c.xdp(XdpReason::ResetFailed));
    if let Some(r) = reset {
        let name = "sonde_syn_ack_reset_mode";
        w.family(
            name,
            "gauge",
            "Who resets SYN-ACKs to probes now (1 for the mode in force): the TC program, the XDP program (until the guard sees its resets dropped) or the host's stack.",
        );
        for m in ResetMode::ALL {
            w.sample(name, &[("mode", m.name())], u8::from(r.mode == m));
        }
    }
    let name = "sonde_tc_packets_total";
    w.family(
        name,
        "counter",
        "Packets seen by the TC egress program, by what it did.",
    );
    for r in TcReason::ALL {
        w.sample(name, &[("reason", r.name())], c.tc(*r));
    }
}

/// The Prometheus text exposition of `input` (see the module docs for the families).
#[must_use]
pub fn render(input: &MetricsInput) -> String {
    let mut w = Writer {
        out: String::with_capacity(4096),
        pending: None,
    };
    daemon_families(&mut w, input);
    check_families(&mut w, &input.statuses);
    w.family(
        "sonde_probes_total",
        "counter",
        "Probe results per check, by outcome.",
    );
    for (check, outcomes) in &input.outcomes {
        for (outcome, n) in outcomes {
            w.sample(
                "sonde_probes_total",
                &[("check", check.as_str()), ("outcome", outcome)],
                n,
            );
        }
    }
    kernel_families(
        &mut w,
        input.kernel.as_ref(),
        input.info.syn_ack_reset.as_ref(),
    );
    if let Some(c) = &input.cluster {
        cluster_families(&mut w, c);
        w.family(
            "sonde_cluster_checks_refused_total",
            "counter",
            "Assigned checks this node refused to run (target policy, or not preparable).",
        );
        w.sample(
            "sonde_cluster_checks_refused_total",
            &[],
            input.refused_checks,
        );
    }
    w.out
}

fn cluster_families(w: &mut Writer, c: &ClusterView) {
    let me = [("node", c.node_id.as_str())];
    w.family(
        "sonde_cluster_is_leader",
        "gauge",
        "1 when this node is the elected leader, 0 otherwise.",
    );
    w.sample("sonde_cluster_is_leader", &me, u8::from(c.is_leader()));
    w.family(
        "sonde_cluster_leader_known",
        "gauge",
        "1 when this node sees an elected leader in etcd, 0 when there is none.",
    );
    w.sample(
        "sonde_cluster_leader_known",
        &me,
        u8::from(c.leader.is_some()),
    );
    w.family(
        "sonde_cluster_nodes",
        "gauge",
        "Live nodes (registered under a lease) as this node last read them.",
    );
    w.sample("sonde_cluster_nodes", &me, c.nodes.len());
    w.family(
        "sonde_cluster_node_assigned_checks",
        "gauge",
        "Checks assigned to each live node by the current assignment.",
    );
    for n in &c.nodes {
        w.sample(
            "sonde_cluster_node_assigned_checks",
            &[("node", n.id.as_str())],
            n.assigned,
        );
    }
    w.family(
        "sonde_cluster_node_suspect",
        "gauge",
        "1 when the leader marked the node suspect (its opinions do not count).",
    );
    let mut nodes: BTreeSet<&str> = c.nodes.iter().map(|n| n.id.as_str()).collect();
    nodes.extend(c.suspects.iter().map(String::as_str));
    for n in nodes {
        let suspect = c.suspects.iter().any(|s| s == n);
        w.sample(
            "sonde_cluster_node_suspect",
            &[("node", n)],
            u8::from(suspect),
        );
    }
    w.family(
        "sonde_cluster_view_refreshed_seconds",
        "gauge",
        "Unix time this node last read the cluster from etcd (0: never).",
    );
    w.sample(
        "sonde_cluster_view_refreshed_seconds",
        &me,
        secs(c.refreshed_unix_ms.saturating_mul(1000)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_label_values() {
        assert_eq!(escape_label_value("a\\b\"c\nd}"), "a\\\\b\\\"c\\nd}");
        assert_eq!(label_name("team.name-x"), "label_team_name_x");
        assert_eq!(label_name("é"), "label__");
    }
}
