//! Local health awareness: spotting a checker whose own network is the problem.
//!
//! A node cut off from the network (a broken uplink, a full conntrack table, a bad route) sees
//! most of its targets fail at once, while the other replicas of the same checks see them
//! healthy. Like Consul's Lifeguard, sonde treats such a node as *suspect*: [`super::quorum`]
//! ignores its opinions until it recovers, so it can neither take targets down nor block a
//! quorum. The detector is pure: the leader feeds it one [`NodeView`] per live node (see
//! [`views`]) and a logical time (etcd revision or milliseconds — any monotonic `u64`).
//!
//! # Rules (defaults in [`SuspectConfig::default`])
//!
//! For a node probing `p` checks, of which it says `u` are unhealthy, `d` of those being
//! contradicted (the other replicas that have an opinion all say healthy):
//!
//! - **Enter:** `p ≥ min_checks` (3) and `u ≥ 50 % of p` and `d ≥ 80 % of u`. The node becomes
//!   suspect at once (ignoring a sick checker quickly matters more than avoiding a false
//!   suspicion, which only costs one replica's vote).
//! - **Clear:** `d < 20 % of p` (the *disagreement* `d / p` is below the exit threshold, which is
//!   half of the lowest disagreement that can enter, `50 % × 80 % = 40 %`), or `p < min_checks`
//!   (no evidence left).
//! - **Recover:** a suspect node recovers once it has been *clear* at every evaluation for at
//!   least `hold_down` time units; any evaluation that is not clear restarts the hold-down.
//!
//! The gap between the enter (40 % disagreement) and clear (20 %) thresholds plus the hold-down
//! give hysteresis: a node on a flapping link does not flap in and out of suspicion. A real
//! outage seen by all replicas makes nobody suspect, because nobody is contradicted. Nodes
//! missing from an evaluation's views (they left the cluster) are forgotten.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    assign::{Assignment, NodeId},
    quorum::{latest, Opinion},
};
use crate::{engine::spec::CheckId, health::Health};

/// What the leader knows about one node's opinions, input of [`SuspectDetector::evaluate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// The node.
    pub node: NodeId,
    /// Checks assigned to it.
    pub probed: usize,
    /// Of those, how many it says are unhealthy.
    pub unhealthy: usize,
    /// Of the unhealthy ones, how many the other replicas say are healthy.
    pub contradicted: usize,
}

/// Thresholds of the detector (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SuspectConfig {
    /// Fewest checks a node must probe to be judged (default 3).
    pub min_checks: usize,
    /// Enter: least share of its checks it says unhealthy, percent (default 50).
    pub enter_unhealthy_pct: u8,
    /// Enter: least share of those the other replicas contradict, percent (default 80).
    pub enter_contradicted_pct: u8,
    /// Clear: contradicted checks below this share of all its checks, percent (default 20).
    pub exit_disagreement_pct: u8,
    /// How long a suspect must stay clear to recover, in the caller's time unit (default
    /// 30 000: 30 s when the caller passes monotonic milliseconds, the recommended unit since
    /// etcd revisions do not advance at a steady rate).
    pub hold_down: u64,
}

impl Default for SuspectConfig {
    fn default() -> Self {
        Self {
            min_checks: 3,
            enter_unhealthy_pct: 50,
            enter_contradicted_pct: 80,
            exit_disagreement_pct: 20,
            hold_down: 30_000,
        }
    }
}

/// Per-suspect bookkeeping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Suspicion {
    since: u64,
    clear_since: Option<u64>,
}

/// Tracks which nodes are suspect across evaluations (hysteresis state).
#[derive(Clone, Debug, Default)]
pub struct SuspectDetector {
    config: SuspectConfig,
    suspects: BTreeMap<NodeId, Suspicion>,
}

/// `part ≥ pct % of whole`, exactly.
fn at_least(part: usize, whole: usize, pct: u8) -> bool {
    part as u128 * 100 >= whole as u128 * u128::from(pct)
}

impl SuspectDetector {
    /// A detector with these thresholds and no suspects.
    #[must_use]
    pub fn new(config: SuspectConfig) -> Self {
        Self {
            config,
            suspects: BTreeMap::new(),
        }
    }

    /// The thresholds.
    #[must_use]
    pub fn config(&self) -> &SuspectConfig {
        &self.config
    }

    /// The current suspects.
    #[must_use]
    pub fn suspects(&self) -> BTreeSet<NodeId> {
        self.suspects.keys().cloned().collect()
    }

    /// True when `node` is currently suspect.
    #[must_use]
    pub fn is_suspect(&self, node: &NodeId) -> bool {
        self.suspects.contains_key(node)
    }

    /// Since when (caller's time) `node` has been suspect.
    #[must_use]
    pub fn suspect_since(&self, node: &NodeId) -> Option<u64> {
        self.suspects.get(node).map(|s| s.since)
    }

    /// True when the view meets the enter thresholds.
    fn enters(&self, v: &NodeView) -> bool {
        let c = &self.config;
        v.probed >= c.min_checks.max(1)
            && at_least(v.unhealthy, v.probed, c.enter_unhealthy_pct)
            && v.unhealthy > 0
            && at_least(v.contradicted, v.unhealthy, c.enter_contradicted_pct)
    }

    /// True when the view is below the exit threshold (or there is no evidence).
    fn clear(&self, v: &NodeView) -> bool {
        let c = &self.config;
        v.probed < c.min_checks.max(1)
            || !at_least(v.contradicted, v.probed, c.exit_disagreement_pct)
    }

    /// Update the suspect set with one view per live node at time `now` and return it.
    /// Nodes without a view are forgotten.
    pub fn evaluate(&mut self, stats: &[NodeView], now: u64) -> BTreeSet<NodeId> {
        let seen: BTreeSet<&NodeId> = stats.iter().map(|v| &v.node).collect();
        self.suspects.retain(|node, _| seen.contains(node));
        for view in stats {
            let enters = self.enters(view);
            let clear = self.clear(view);
            match self.suspects.get_mut(&view.node) {
                None if enters => {
                    tracing::warn!(node = %view.node, probed = view.probed, unhealthy = view.unhealthy,
                        contradicted = view.contradicted, "checker node suspect: its failures contradict other replicas");
                    self.suspects.insert(
                        view.node.clone(),
                        Suspicion {
                            since: now,
                            clear_since: None,
                        },
                    );
                }
                None => {}
                Some(s) if clear => {
                    let since = *s.clear_since.get_or_insert(now);
                    if now.saturating_sub(since) >= self.config.hold_down {
                        tracing::info!(node = %view.node, "checker node recovered from suspicion");
                        self.suspects.remove(&view.node);
                    }
                }
                Some(s) => s.clear_since = None,
            }
        }
        self.suspects()
    }
}

/// Build one [`NodeView`] per node that holds a check in `assignment`, from each check's
/// opinions (latest per node, as in [`super::quorum`]). A node's unhealthy opinion is
/// *contradicted* when at least one other current replica has an opinion and every other
/// replica with a `Healthy`/`Unhealthy` opinion says healthy.
#[must_use]
pub fn views(assignment: &Assignment, opinions: &BTreeMap<CheckId, Vec<Opinion>>) -> Vec<NodeView> {
    let mut out: BTreeMap<&NodeId, NodeView> = BTreeMap::new();
    for (check, replicas) in assignment.iter() {
        let latest = opinions
            .get(check)
            .map(|ops| latest(ops))
            .unwrap_or_default();
        let say = |n: &NodeId| latest.get(n).copied().unwrap_or(Health::Unknown);
        let healthy = replicas
            .iter()
            .filter(|n| say(n) == Health::Healthy)
            .count();
        let unhealthy = replicas
            .iter()
            .filter(|n| say(n) == Health::Unhealthy)
            .count();
        for node in replicas {
            let v = out.entry(node).or_insert_with(|| NodeView {
                node: node.clone(),
                probed: 0,
                unhealthy: 0,
                contradicted: 0,
            });
            v.probed += 1;
            if say(node) == Health::Unhealthy {
                v.unhealthy += 1;
                // Others: everyone but this node.
                if healthy > 0 && unhealthy == 1 {
                    v.contradicted += 1;
                }
            }
        }
    }
    out.into_values().collect()
}

#[cfg(test)]
#[path = "suspect_tests.rs"]
mod tests;
