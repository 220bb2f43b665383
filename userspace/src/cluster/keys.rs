//! The etcd key layout under a prefix (default `/sonde`), and the records stored there.
//!
//! | key | value | written by | when |
//! |---|---|---|---|
//! | `P/nodes/<node>` | [`NodeRecord`] | each node, under its lease | at start (gone when the lease expires) |
//! | `P/election` | etcd election | the leader (campaign) | — |
//! | `P/checks/<check>` | a check as JSON (`[[check]]` shape) | `sonde check add` | operator changes |
//! | `P/assign/<node>` | [`AssignmentRecord`] | the leader, fenced | membership or check set changes |
//! | `P/obs/<check>/<node>` | [`ObservationRecord`] | each replica | its opinion changes |
//! | `P/health/<check>` | [`HealthRecord`] | the leader, fenced | the quorum verdict changes |
//! | `P/suspects/<node>` | [`SuspectRecord`] | the leader, fenced | a node becomes / stops being suspect |
//!
//! Fencing: the leader's writes are transactions that compare its election key's
//! create revision; a deposed leader's key is gone, so its writes fail. Every record
//! carries the etcd revision it was decided at as its logical clock; wall times in
//! records are for display only.

use serde::{Deserialize, Serialize};

use super::assign::NodeId;
use crate::{
    engine::{result::Reason, spec::CheckId},
    health::Health,
};

/// Keys under one prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    /// The prefix, without a trailing slash.
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (a leading `/` is added, a trailing one removed).
    #[must_use]
    pub fn new(prefix: &str) -> Self {
        let p = prefix.trim_end_matches('/');
        let p = if p.starts_with('/') {
            p.to_owned()
        } else {
            format!("/{p}")
        };
        Self { prefix: p }
    }

    /// `P/`: every key of the cluster.
    #[must_use]
    pub fn root(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// `P/nodes/`.
    #[must_use]
    pub fn nodes(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    /// `P/nodes/<node>`.
    #[must_use]
    pub fn node(&self, n: &NodeId) -> String {
        format!("{}/nodes/{n}", self.prefix)
    }

    /// The election name.
    #[must_use]
    pub fn election(&self) -> String {
        format!("{}/election", self.prefix)
    }

    /// `P/checks/`.
    #[must_use]
    pub fn checks(&self) -> String {
        format!("{}/checks/", self.prefix)
    }

    /// `P/checks/<check>`.
    #[must_use]
    pub fn check(&self, c: &CheckId) -> String {
        format!("{}/checks/{c}", self.prefix)
    }

    /// `P/assign/`.
    #[must_use]
    pub fn assigns(&self) -> String {
        format!("{}/assign/", self.prefix)
    }

    /// `P/assign/<node>`.
    #[must_use]
    pub fn assign(&self, n: &NodeId) -> String {
        format!("{}/assign/{n}", self.prefix)
    }

    /// `P/obs/`.
    #[must_use]
    pub fn observations(&self) -> String {
        format!("{}/obs/", self.prefix)
    }

    /// `P/obs/<check>/<node>`.
    #[must_use]
    pub fn observation(&self, c: &CheckId, n: &NodeId) -> String {
        format!("{}/obs/{c}/{n}", self.prefix)
    }

    /// `P/health/`.
    #[must_use]
    pub fn healths(&self) -> String {
        format!("{}/health/", self.prefix)
    }

    /// `P/health/<check>`.
    #[must_use]
    pub fn health(&self, c: &CheckId) -> String {
        format!("{}/health/{c}", self.prefix)
    }

    /// `P/suspects/<node>`.
    #[must_use]
    pub fn suspect(&self, n: &NodeId) -> String {
        format!("{}/suspects/{n}", self.prefix)
    }

    /// `P/suspects/`.
    #[must_use]
    pub fn suspects(&self) -> String {
        format!("{}/suspects/", self.prefix)
    }

    /// The last path segment of `key` after `dir` (e.g. the node of `P/nodes/<node>`).
    #[must_use]
    pub fn tail<'a>(&self, dir: &str, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(dir)
            .filter(|t| !t.is_empty() && !t.contains('/'))
    }

    /// `(check, node)` of an observation key.
    #[must_use]
    pub fn observation_parts<'a>(&self, key: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = key.strip_prefix(&self.observations())?;
        let (c, n) = rest.split_once('/')?;
        (!c.is_empty() && !n.is_empty() && !n.contains('/')).then_some((c, n))
    }
}

/// A live node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Its id.
    pub id: NodeId,
    /// sonde version.
    pub version: String,
    /// Checks it probes now.
    pub load: usize,
    /// Wall time of its last (re)registration, ms since the epoch (display only).
    pub registered_unix_ms: u64,
}

/// One node's share of the checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentRecord {
    /// The node.
    pub node: NodeId,
    /// Checks it must probe, sorted.
    pub checks: Vec<CheckId>,
    /// The leader that wrote it.
    pub leader: NodeId,
    /// The leader's election key create revision (its term): nodes act on the newest.
    pub term: i64,
}

/// A replica's opinion of a check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObservationRecord {
    /// Its health according to this replica.
    pub health: Health,
    /// Why (the deciding result's reason).
    pub reason: Reason,
    /// Wall time of the change, ms since the epoch (display only).
    pub at_unix_ms: u64,
}

/// The cluster's verdict on a check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthRecord {
    /// Quorum health.
    pub health: Health,
    /// Opinions counted (non-suspect replicas).
    pub counted: usize,
    /// Of those, healthy.
    pub healthy: usize,
    /// Of those, unhealthy.
    pub unhealthy: usize,
    /// Replica opinions ignored because their node is suspect.
    pub ignored_suspect: usize,
    /// The leader's term when decided.
    pub term: i64,
    /// Wall time, ms since the epoch (display only).
    pub at_unix_ms: u64,
}

/// A node whose opinions do not count for now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuspectRecord {
    /// The node.
    pub node: NodeId,
    /// The leader's term when decided.
    pub term: i64,
    /// Wall time, ms since the epoch (display only).
    pub since_unix_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_parsing() {
        let k = Keys::new("sonde/");
        let n = NodeId::new("n1");
        let c = CheckId::new("web-1");
        assert_eq!(k.node(&n), "/sonde/nodes/n1");
        assert_eq!(k.tail(&k.nodes(), &k.node(&n)), Some("n1"));
        assert_eq!(k.observation(&c, &n), "/sonde/obs/web-1/n1");
        assert_eq!(
            k.observation_parts(&k.observation(&c, &n)),
            Some(("web-1", "n1"))
        );
        assert_eq!(k.observation_parts("/sonde/obs/web-1"), None);
        assert_eq!(k.tail(&k.nodes(), "/sonde/nodes/a/b"), None);
        assert_eq!(Keys::new("/x").health(&c), "/x/health/web-1");
    }
}
