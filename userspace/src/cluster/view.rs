//! What one node knows of the whole cluster, for the status page, `GET /v1/cluster`
//! and the `sonde_cluster_*` metrics: live nodes, the leader, each node's share of the
//! assignments, and the suspect nodes.
//!
//! The daemon refreshes it from etcd every [`REFRESH`] (four range reads: nodes,
//! assignments, suspects, election leader), so its etcd traffic is fixed per node and
//! independent of the probe rate. When etcd cannot be read, the last view is kept
//! and `error` says why, so the page and the metrics show a stale view as stale.

use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;

use super::{
    etcd::{Etcd, EtcdError},
    keys::{AssignmentRecord, Keys, NodeRecord, SuspectRecord},
};

/// How often the daemon re-reads the view.
pub const REFRESH: Duration = Duration::from_secs(2);

/// One live node.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeView {
    /// Its id.
    pub id: String,
    /// sonde version it runs.
    pub version: String,
    /// Checks assigned to it by the current assignment.
    pub assigned: usize,
    /// Its fraction of all assignments (0 when nothing is assigned).
    pub share: f64,
    /// Whether it is the elected leader.
    pub leader: bool,
    /// Whether the leader marked it suspect (its opinions do not count).
    pub suspect: bool,
    /// Wall time of its last registration, ms since the epoch.
    pub registered_unix_ms: u64,
}

/// The cluster as this node last read it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ClusterView {
    /// This node's id.
    pub node_id: String,
    /// The elected leader, if there is one.
    pub leader: Option<String>,
    /// The leader's term (its election key's create revision).
    pub term: Option<i64>,
    /// Live nodes, sorted by id.
    pub nodes: Vec<NodeView>,
    /// Suspect nodes (also those no longer live), sorted.
    pub suspects: Vec<String>,
    /// etcd revision the view was read at.
    pub revision: i64,
    /// Wall time of the last successful read, ms since the epoch (0: never).
    pub refreshed_unix_ms: u64,
    /// Why the last refresh failed, if it did (the rest is then the last good view).
    pub error: Option<String>,
}

impl ClusterView {
    /// An empty view of node `me`, before the first read.
    #[must_use]
    pub fn new(me: &str) -> Self {
        Self {
            node_id: me.to_owned(),
            ..Self::default()
        }
    }

    /// Whether this node is the leader according to the view.
    #[must_use]
    pub fn is_leader(&self) -> bool {
        self.leader.as_deref() == Some(self.node_id.as_str())
    }
}

/// Build the view from what etcd holds (pure; [`read`] does the I/O).
#[must_use]
pub fn build(
    me: &str,
    nodes: &[NodeRecord],
    assignments: &[AssignmentRecord],
    suspects: &[SuspectRecord],
    leader: Option<(String, i64)>,
) -> ClusterView {
    let assigned: BTreeMap<&str, usize> = assignments
        .iter()
        .map(|a| (a.node.as_str(), a.checks.len()))
        .collect();
    let live: std::collections::BTreeSet<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    // Shares over live nodes only: a dead node's assignment is about to be rewritten.
    let total: usize = assigned
        .iter()
        .filter(|(n, _)| live.contains(*n))
        .map(|(_, c)| c)
        .sum();
    let suspect: std::collections::BTreeSet<String> =
        suspects.iter().map(|s| s.node.to_string()).collect();
    let mut out: Vec<NodeView> = nodes
        .iter()
        .map(|n| {
            let a = assigned.get(n.id.as_str()).copied().unwrap_or(0);
            #[allow(clippy::cast_precision_loss)]
            let share = if total == 0 {
                0.0
            } else {
                a as f64 / total as f64
            };
            NodeView {
                id: n.id.to_string(),
                version: n.version.clone(),
                assigned: a,
                share,
                leader: leader.as_ref().is_some_and(|(l, _)| l == n.id.as_str()),
                suspect: suspect.contains(n.id.as_str()),
                registered_unix_ms: n.registered_unix_ms,
            }
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    ClusterView {
        node_id: me.to_owned(),
        term: leader.as_ref().map(|(_, t)| *t),
        leader: leader.map(|(l, _)| l),
        nodes: out,
        suspects: suspect.into_iter().collect(),
        revision: 0,
        refreshed_unix_ms: 0,
        error: None,
    }
}

/// Read the view from etcd. Records that do not parse are skipped (and logged).
///
/// # Errors
/// etcd cannot be read.
pub async fn read(etcd: &Etcd, keys: &Keys, me: &str) -> Result<ClusterView, EtcdError> {
    fn parse<T: serde::de::DeserializeOwned>(what: &str, kvs: &[super::etcd::KeyValue]) -> Vec<T> {
        kvs.iter()
            .filter_map(|kv| match serde_json::from_slice(&kv.value) {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::debug!(what, key = %String::from_utf8_lossy(&kv.key), error = %e, "unreadable record skipped");
                    None
                }
            })
            .collect()
    }
    let nodes = etcd.get_prefix(keys.nodes()).await?;
    let assigns = etcd.get_prefix(keys.assigns()).await?;
    let suspects = etcd.get_prefix(keys.suspects()).await?;
    let leader = etcd.leader(keys.election()).await?.map(|kv| {
        (
            String::from_utf8_lossy(&kv.value).into_owned(),
            kv.create_revision,
        )
    });
    let mut view = build(
        me,
        &parse::<NodeRecord>("node", &nodes.kvs),
        &parse::<AssignmentRecord>("assignment", &assigns.kvs),
        &parse::<SuspectRecord>("suspect", &suspects.kvs),
        leader,
    );
    view.revision = suspects.revision;
    Ok(view)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{cluster::assign::NodeId, engine::spec::CheckId};

    fn node(id: &str) -> NodeRecord {
        NodeRecord {
            id: NodeId::new(id),
            version: "0.1.0".into(),
            load: 0,
            registered_unix_ms: 1,
        }
    }

    fn assignment(id: &str, n: usize) -> AssignmentRecord {
        AssignmentRecord {
            node: NodeId::new(id),
            checks: (0..n).map(|i| CheckId::new(&format!("c{i}"))).collect(),
            leader: NodeId::new("a"),
            term: 7,
        }
    }

    #[test]
    fn shares_leader_and_suspects() {
        let v = build(
            "b",
            &[node("b"), node("a"), node("c")],
            &[assignment("a", 2), assignment("b", 1), assignment("c", 1)],
            &[SuspectRecord {
                node: NodeId::new("c"),
                term: 7,
                since_unix_ms: 5,
            }],
            Some(("a".into(), 7)),
        );
        let ids: Vec<&str> = v.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert!((v.nodes[0].share - 0.5).abs() < 1e-9);
        assert!(v.nodes[0].leader && !v.nodes[1].leader);
        assert!(v.nodes[2].suspect && !v.nodes[0].suspect);
        assert_eq!(v.suspects, ["c"]);
        assert_eq!(v.term, Some(7));
        assert!(!v.is_leader());
    }

    #[test]
    fn dead_nodes_do_not_count_in_shares() {
        let v = build(
            "a",
            &[node("a")],
            &[assignment("a", 3), assignment("gone", 3)],
            &[],
            None,
        );
        assert_eq!(v.nodes.len(), 1);
        assert!((v.nodes[0].share - 1.0).abs() < 1e-9);
        assert_eq!(v.leader, None);
        let empty = build("a", &[node("a")], &[], &[], None);
        assert!(empty.nodes[0].share.abs() < 1e-9);
    }
}
