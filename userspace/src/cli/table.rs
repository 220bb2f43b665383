//! Human-readable output.

use probe_common::counters::{TcReason, XdpReason};

use crate::{
    ebpf::Counters,
    engine::{round::RoundStats, Clock, Outcome, ProbeKind, ProbeResult},
};

fn target(r: &ProbeResult) -> String {
    match r.kind {
        ProbeKind::TcpSyn { port } => format!("{}:{port}", r.target),
        ProbeKind::IcmpEcho => r.target.to_string(),
    }
}

pub(super) fn print_results(results: &[ProbeResult]) {
    println!(
        "{:<24} {:<6} {:<12} {:>12} {:<9} DETAIL",
        "TARGET", "PROBE", "CLASS", "RTT", "CLOCK"
    );
    for r in results {
        let probe = match r.kind {
            ProbeKind::TcpSyn { .. } => "syn",
            ProbeKind::IcmpEcho => "icmp",
        };
        let rtt = r.rtt.map_or_else(
            || "-".to_owned(),
            |d| format!("{:.1} us", d.as_secs_f64() * 1e6),
        );
        let clock = match r.clock {
            Some(Clock::Kernel) => "kernel",
            Some(Clock::Userspace) => "userspace",
            None => "-",
        };
        let detail = match r.outcome {
            Outcome::Unreachable {
                icmp_type,
                icmp_code,
            } => format!(
                "icmp type {icmp_type} code {icmp_code} from {}",
                r.reporter.map(|a| a.to_string()).unwrap_or_default()
            ),
            Outcome::Timeout => "no answer".to_owned(),
            _ => String::new(),
        };
        println!(
            "{:<24} {:<6} {:<12} {:>12} {:<9} {}",
            target(r),
            probe,
            r.outcome.name(),
            rtt,
            clock,
            detail
        );
    }
}

pub(super) fn print_summary(stats: &RoundStats, c: &Counters) {
    println!(
        "probes sent {}, answers matched {}, late/duplicate {}",
        stats.sent, stats.matched, stats.unmatched
    );
    let nonzero = |names: Vec<(&str, u64)>| {
        names
            .into_iter()
            .filter(|(_, v)| *v > 0)
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    if c.xdp.is_empty() {
        println!("kernel counters: n/a (userspace path)");
        return;
    }
    println!(
        "xdp: {}",
        nonzero(
            XdpReason::ALL
                .iter()
                .map(|r| (r.name(), c.xdp(*r)))
                .collect()
        )
    );
    println!(
        "tc:  {}",
        nonzero(TcReason::ALL.iter().map(|r| (r.name(), c.tc(*r))).collect())
    );
}
