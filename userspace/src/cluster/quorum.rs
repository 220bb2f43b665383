//! A check's cluster-wide health: a quorum over its replicas' opinions.
//!
//! Each replica writes its own opinion (its local state machine's [`Health`]) to etcd when it
//! changes; the etcd revision of that write orders opinions. [`decide`] turns the opinions into
//! one verdict. It is pure: the caller passes the current replica set and the suspect set.
//!
//! # Rules
//!
//! 1. **Who counts.** Only opinions of the check's *current* replicas count; opinions of other
//!    nodes (a replica that was moved away, a stale key) are ignored and reported in
//!    [`Verdict::ignored_non_replica`]. If a node has several opinions, the one with the highest
//!    revision wins; conflicting opinions at the same revision cancel out (count as
//!    [`Health::Unknown`]).
//! 2. **Suspects.** Replicas in `suspects` (see [`super::suspect`]) are *not eligible*: their
//!    opinions are ignored ([`Verdict::ignored_suspect`]) and they do not count towards the
//!    quorum size either. `E` is the number of eligible replicas.
//! 3. **Quorum size `q`** (votes needed for a verdict), from `E`:
//!    - [`QuorumRule::Majority`] needs `⌊E/2⌋ + 1` (1 of 1, 2 of 2, 2 of 3, 3 of 4, 3 of 5);
//!    - [`QuorumRule::Any`] needs 1;
//!    - [`QuorumRule::All`] needs `E`;
//!    - [`QuorumRule::AtLeast(k)`](QuorumRule::AtLeast) needs `max(k, 1)`, unreachable when
//!      `k > E`.
//!
//!    Eligible replicas that have not reported yet, or report `Unknown`, abstain: the quorum is
//!    over the eligible replica set, not over the opinions received, so a single early report
//!    cannot decide for three replicas.
//! 4. **Verdict.** `Unhealthy` if at least `q` eligible replicas say unhealthy and fewer than
//!    `q` say healthy; `Healthy` if at least `q` say healthy (when both sides reach `q`, which
//!    only `Any` and small `AtLeast` allow, healthy wins: a disagreement never takes a target
//!    down); otherwise — no eligible replica, or no side reaches `q` — `Unknown`.
//!
//! `Unknown` means "no quorum", not "the target is in an unknown state": the cluster keeps its
//! previous verdict ([`Verdict::or`]) rather than flapping. Hence one partitioned checker can
//! never mark a healthy target down: with 2 replicas under `Majority`, one "down" and one "up"
//! gives no quorum; with 3, the two others outvote it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::assign::NodeId;
use crate::health::Health;

/// How many replicas must agree for a verdict (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuorumRule {
    /// More than half of the eligible replicas.
    #[default]
    Majority,
    /// One eligible replica suffices (healthy wins ties).
    Any,
    /// Every eligible replica.
    All,
    /// At least this many eligible replicas (0 acts as 1).
    AtLeast(u8),
}

impl QuorumRule {
    /// Votes needed among `eligible` replicas; `None` when no verdict is possible.
    #[must_use]
    pub fn required(self, eligible: usize) -> Option<usize> {
        if eligible == 0 {
            return None;
        }
        let q = match self {
            QuorumRule::Majority => eligible / 2 + 1,
            QuorumRule::Any => 1,
            QuorumRule::All => eligible,
            QuorumRule::AtLeast(k) => usize::from(k).max(1),
        };
        (q <= eligible).then_some(q)
    }
}

/// One replica's opinion on a check, as written to etcd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opinion {
    /// The replica that holds it.
    pub node: NodeId,
    /// Its local health verdict.
    pub health: Health,
    /// etcd revision of the write (orders a node's opinions).
    pub revision: i64,
}

/// The outcome of [`decide`], with the counts that led to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The quorum's verdict; `Unknown` when there is no quorum.
    pub health: Health,
    /// Opinions counted: eligible (current, non-suspect) replicas that reported.
    pub counted: usize,
    /// Counted opinions saying healthy.
    pub healthy: usize,
    /// Counted opinions saying unhealthy.
    pub unhealthy: usize,
    /// Opinions of current replicas ignored because the replica is suspect.
    pub ignored_suspect: usize,
    /// Opinions ignored because their node is not a current replica.
    pub ignored_non_replica: usize,
    /// Votes needed for a verdict (0 when none is possible: no eligible replica, or the rule
    /// asks for more than there are).
    pub required: usize,
}

impl Verdict {
    /// True when a quorum was reached (the verdict is `Healthy` or `Unhealthy`).
    #[must_use]
    pub fn is_quorate(&self) -> bool {
        self.health != Health::Unknown
    }

    /// The verdict, or `previous` when there is no quorum (keep the last decision).
    #[must_use]
    pub fn or(&self, previous: Health) -> Health {
        if self.is_quorate() {
            self.health
        } else {
            previous
        }
    }
}

/// The latest opinion of each node (highest revision; conflicting opinions at the same
/// revision become `Unknown`).
#[must_use]
pub fn latest(opinions: &[Opinion]) -> BTreeMap<&NodeId, Health> {
    let mut best: BTreeMap<&NodeId, (i64, Health)> = BTreeMap::new();
    for op in opinions {
        match best.get_mut(&op.node) {
            Some(cur) if op.revision > cur.0 => *cur = (op.revision, op.health),
            Some(cur) if op.revision == cur.0 && op.health != cur.1 => cur.1 = Health::Unknown,
            Some(_) => {}
            None => {
                best.insert(&op.node, (op.revision, op.health));
            }
        }
    }
    best.into_iter().map(|(n, (_, h))| (n, h)).collect()
}

/// A check's health from its replicas' opinions under `rule`, ignoring `suspects` and nodes
/// that are not in `replicas`. See the module docs for the exact rules.
#[must_use]
pub fn decide(
    rule: QuorumRule,
    replicas: &[NodeId],
    opinions: &[Opinion],
    suspects: &BTreeSet<NodeId>,
) -> Verdict {
    let replicas: BTreeSet<&NodeId> = replicas.iter().collect();
    let eligible = replicas.iter().filter(|n| !suspects.contains(**n)).count();
    let mut v = Verdict {
        health: Health::Unknown,
        counted: 0,
        healthy: 0,
        unhealthy: 0,
        ignored_suspect: 0,
        ignored_non_replica: 0,
        required: 0,
    };
    for (node, health) in latest(opinions) {
        if !replicas.contains(node) {
            v.ignored_non_replica += 1;
        } else if suspects.contains(node) {
            v.ignored_suspect += 1;
        } else {
            v.counted += 1;
            match health {
                Health::Healthy => v.healthy += 1,
                Health::Unhealthy => v.unhealthy += 1,
                Health::Unknown => {}
            }
        }
    }
    if let Some(q) = rule.required(eligible) {
        v.required = q;
        v.health = if v.healthy >= q {
            Health::Healthy
        } else if v.unhealthy >= q {
            Health::Unhealthy
        } else {
            Health::Unknown
        };
    }
    v
}

#[cfg(test)]
#[path = "quorum_tests.rs"]
mod tests;
