//! The node's counters as Prometheus text (appended to the daemon's `/metrics`).

use super::*;

/// The node's counters in Prometheus text format, labelled with its id (appended to
/// the daemon's `/metrics`).
#[must_use]
pub fn render_metrics(node: &str, s: &NodeStats) -> String {
    let node = node.replace('\\', "\\\\").replace('"', "\\\"");
    let rows: [(&str, &str, &str, u64); 10] = [
        (
            "sonde_cluster_acting_leader",
            "gauge",
            "1 while this node acts as the cluster leader on its own clock (0 within 2/3 lease TTL of its last renewal, before etcd can expire its lease; sonde_cluster_is_leader is etcd's view, refreshed every 2 s)",
            u64::from(s.leader.load(Ordering::Acquire)),
        ),
        (
            "sonde_cluster_term",
            "gauge",
            "The term this node leads (election revision), 0 when not leading",
            u64::try_from(s.term.load(Ordering::Relaxed)).unwrap_or(0),
        ),
        (
            "sonde_cluster_terms_total",
            "counter",
            "Terms won",
            s.terms.load(Ordering::Relaxed),
        ),
        (
            "sonde_cluster_stepdowns_total",
            "counter",
            "Times this node stopped leading on its own clock (lease not renewed in time)",
            s.stepdowns.load(Ordering::Relaxed),
        ),
        (
            "sonde_cluster_fenced_out_total",
            "counter",
            "Leader writes refused by fencing (another node leads)",
            s.fenced_out.load(Ordering::Relaxed),
        ),
        (
            "sonde_cluster_assignments_written_total",
            "counter",
            "Assignment transactions written as leader",
            s.assignments_written.load(Ordering::Relaxed),
        ),
        (
            "sonde_cluster_health_written_total",
            "counter",
            "Cluster health verdicts written as leader",
            s.health_written.load(Ordering::Relaxed),
        ),
        (
            "sonde_cluster_observations_written_total",
            "counter",
            "Observations (this node's opinion changes) written to etcd",
            s.observations_written.load(Ordering::Relaxed),
        ),
        (
            "sonde_cluster_observations_dropped_total",
            "counter",
            "Observations dropped: pending queue full while etcd was away, or transitions missed when the event stream lagged",
            s.observations_dropped.load(Ordering::Relaxed),
        ),
        (
            "sonde_cluster_events_lagged_total",
            "counter",
            "Transitions the cluster node missed because the daemon's event stream lagged (current opinions republished)",
            s.events_lagged.load(Ordering::Relaxed),
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, v) in rows {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{node=\"{node}\"}} {v}\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_name_the_node_and_its_role() {
        let s = NodeStats::default();
        s.leader.store(true, Ordering::Relaxed);
        s.term.store(42, Ordering::Relaxed);
        s.events_lagged.store(3, Ordering::Relaxed);
        let text = render_metrics("n\"1", &s);
        assert!(
            text.contains("sonde_cluster_acting_leader{node=\"n\\\"1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("sonde_cluster_term{node=\"n\\\"1\"} 42\n"),
            "{text}"
        );
        assert!(text.contains("sonde_cluster_events_lagged_total{node=\"n\\\"1\"} 3\n"));
        assert_eq!(text.matches("# TYPE").count(), 10);
    }
}
