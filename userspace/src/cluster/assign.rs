//! Check assignment: which live nodes probe which check (sharding with redundancy).
//!
//! The leader calls [`assign`] whenever the check set or the membership changes and writes the
//! result to etcd, fenced by its election revision. The function is pure and deterministic: the
//! same checks, nodes and previous assignment give the same result on any host, whatever the
//! order of the input slices.
//!
//! # Algorithm: sticky bounded-load rendezvous hashing
//!
//! 1. **Normalise.** Checks are deduplicated by id (a duplicated id keeps its largest replica
//!    count) and nodes are sorted and deduplicated. Check `c` wants `r(c) = min(replicas, N)`
//!    replicas among the `N` live nodes; `S = Σ r(c)` slots are to be filled.
//! 2. **Capacity.** Every node may hold at most `C = ceil(S / N × (1 + ε))` slots, with
//!    ε = [`DEFAULT_SLACK_PERMILLE`] / 1000 = 0.05 by default (integer arithmetic).
//! 3. **Weights.** `w(c, n) = mix(h(c) + h(n) × K)` where `h` is 64-bit FNV-1a followed by the
//!    murmur3 `fmix64` finaliser and `mix` is `fmix64`. Both are fixed here (not `std`'s or
//!    foldhash's seeded hashers), so weights are stable across hosts, builds and versions.
//!    A node's rank for a check is its weight's rank, highest first (rendezvous / HRW hashing).
//! 4. **Keep (only with `prev`).** Each check keeps its previous replicas that are still live; if
//!    it now wants fewer, it keeps the highest-weight ones. Then each node (in id order) keeps
//!    at most `C` of those slots and releases the rest, releasing first the checks that have
//!    released the fewest slots so far, then those it has the lowest weight for. (Spreading the
//!    releases over distinct checks matters on a join: the joining node is the only one with
//!    room and can take each check only once.)
//! 5. **Fill.** Checks are processed in a fixed order — replica count descending, then `h(c)`,
//!    then id — and each free slot goes to the highest-ranked node that is not already a replica
//!    and holds fewer than `C` slots (bounded-load HRW). If no node under the cap is left (a
//!    corner case of greedy packing), the least-loaded non-replica node takes it (ties: higher
//!    weight), the only way a node can end above `C`.
//!
//! # Guarantees
//!
//! - Every check gets `min(replicas, N)` distinct live nodes; checks that asked for more are
//!   reported by [`Assignment::under_replicated`].
//! - Balance: no node holds more than `C` slots, i.e. at most `(1 + ε)` times the mean (plus
//!   one slot of rounding); plain HRW would exceed 1.1× the mean for small counts.
//! - Minimal movement: with `prev`, a replica moves only if its node left, its check shrank, or
//!   its node is above the new cap; kept slots never move and a released slot never returns
//!   to the node that released it (that node is at the cap). When a node joins `N → N+1`, the
//!   old nodes shed down to the new cap: `Σ max(0, load − C)` slots move, which is
//!   `S − N × C ≈ S × (1 − N(1+ε)/(N+1))`, below `S / (N+1)`, when the old nodes are
//!   balanced (the joining node ends slightly below the mean). When a node leaves, only its
//!   slots move (the cap grows, so nobody else sheds), unless checks must shrink to `N − 1`.
//! - Stability: `assign(checks, nodes, Some(&a))` returns `a` when `a` was computed from the
//!   same checks and nodes (every kept slot is valid and under the cap), except in the rare
//!   fallback case of step 5, where the over-cap node sheds once.
//! - Cost: `N` weight computations per check to place and `N` comparisons per slot, no
//!   sorting per check: `O(S × N)` overall (100,000 checks × 3 over 50 nodes takes about
//!   0.25 s in a release build, with or without `prev`).
//!
//! # Wire format
//!
//! [`Assignment`] serialises per node — the form each node needs, and one that can be split into
//! one etcd key per node:
//!
//! ```json
//! {"nodes": {"n1": ["c1", "c2"], "n2": ["c1"]}, "unassigned": ["c9"], "short": {"c2": 3}}
//! ```
//!
//! `nodes` maps each node to its sorted check ids, `unassigned` lists checks with no replica (no
//! live node, or `replicas = 0`), `short` gives the requested replica count of under-replicated
//! checks. Empty fields are omitted. Each check id appears once per replica, so the size is
//! about `S × (id length + 3)` bytes: 300 kB for 10,000 checks × 2 with 12-byte ids. etcd
//! refuses requests above 1.5 MiB by default, so large clusters should store one key per node
//! holding that node's list (`serde_json::to_vec(&a.for_node(n))`, e.g. 90 kB per node for
//! 100,000 checks × 3 over 50 nodes) and the small `unassigned`/`short` parts apart.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    sync::Arc,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::engine::spec::CheckId;

/// Default load slack ε in thousandths: a node may hold up to 1.05 × the mean load.
pub const DEFAULT_SLACK_PERMILLE: u32 = 50;

/// A cluster node's id (its etcd registration name; cheap to clone).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub Arc<str>);

impl NodeId {
    /// Wrap a string.
    #[must_use]
    pub fn new(s: &str) -> Self {
        Self(Arc::from(s))
    }

    /// The id as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for NodeId {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

/// A check that got fewer replicas than it asked for (there are fewer live nodes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shortfall {
    /// The check.
    pub check: CheckId,
    /// Replicas requested.
    pub wanted: u8,
    /// Replicas assigned.
    pub assigned: usize,
}

/// What one node must start and stop probing between two assignments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeDiff {
    /// Checks newly assigned to the node (sorted).
    pub added: Vec<CheckId>,
    /// Checks no longer assigned to the node (sorted).
    pub removed: Vec<CheckId>,
}

impl NodeDiff {
    /// True when nothing changes for the node.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// Each check's replica set. Replica sets hold distinct nodes, sorted by id (there is no
/// primary). See the module docs for the algorithm and the serialised form.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assignment {
    replicas: BTreeMap<CheckId, Vec<NodeId>>,
    /// Requested replica count of the checks that got fewer.
    short: BTreeMap<CheckId, u8>,
}

impl Assignment {
    /// Build an assignment from explicit replica sets (sorted and deduplicated here); no
    /// check is marked under-replicated. Meant for tests and tools.
    pub fn from_replicas(sets: impl IntoIterator<Item = (CheckId, Vec<NodeId>)>) -> Self {
        let replicas = sets
            .into_iter()
            .map(|(check, mut nodes)| {
                nodes.sort();
                nodes.dedup();
                (check, nodes)
            })
            .collect();
        Self {
            replicas,
            short: BTreeMap::new(),
        }
    }

    /// The replica set of `check`, if the check is part of the assignment.
    #[must_use]
    pub fn replicas(&self, check: &CheckId) -> Option<&[NodeId]> {
        self.replicas.get(check).map(Vec::as_slice)
    }

    /// All checks with their replica sets, by check id.
    pub fn iter(&self) -> impl Iterator<Item = (&CheckId, &[NodeId])> {
        self.replicas.iter().map(|(c, n)| (c, n.as_slice()))
    }

    /// Number of checks (including unassigned ones).
    #[must_use]
    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    /// True when there are no checks.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    /// The checks `node` must probe, sorted by id.
    #[must_use]
    pub fn for_node(&self, node: &NodeId) -> Vec<CheckId> {
        self.replicas
            .iter()
            .filter(|(_, nodes)| nodes.binary_search(node).is_ok())
            .map(|(check, _)| check.clone())
            .collect()
    }

    /// Slots held by each node (nodes holding nothing are absent).
    #[must_use]
    pub fn load(&self) -> BTreeMap<NodeId, usize> {
        let mut load = BTreeMap::new();
        for node in self.replicas.values().flatten() {
            *load.entry(node.clone()).or_insert(0) += 1;
        }
        load
    }

    /// Checks that got fewer replicas than requested, by check id.
    #[must_use]
    pub fn under_replicated(&self) -> Vec<Shortfall> {
        self.short
            .iter()
            .map(|(check, &wanted)| Shortfall {
                check: check.clone(),
                wanted,
                assigned: self.replicas.get(check).map_or(0, Vec::len),
            })
            .collect()
    }

    /// Replica slots of `self` that `old` did not have (same check, node not among its old
    /// replicas): the number of (check, node) probing starts a change from `old` causes.
    #[must_use]
    pub fn moved_from(&self, old: &Assignment) -> usize {
        self.replicas
            .iter()
            .map(|(check, nodes)| match old.replicas.get(check) {
                Some(prev) => nodes
                    .iter()
                    .filter(|n| prev.binary_search(n).is_err())
                    .count(),
                None => nodes.len(),
            })
            .sum()
    }
}

/// What `node` must start (`added`) and stop (`removed`) probing when going from `old` to
/// `new`.
#[must_use]
pub fn diff(old: &Assignment, new: &Assignment, node: &NodeId) -> NodeDiff {
    let before: BTreeSet<CheckId> = old.for_node(node).into_iter().collect();
    let after: BTreeSet<CheckId> = new.for_node(node).into_iter().collect();
    NodeDiff {
        added: after.difference(&before).cloned().collect(),
        removed: before.difference(&after).cloned().collect(),
    }
}

/// Assign every check to `replicas` distinct nodes among `nodes`, keeping `prev`'s replicas
/// where still valid, with the default slack ([`DEFAULT_SLACK_PERMILLE`]). See the module
/// docs for the algorithm and its guarantees.
#[must_use]
pub fn assign(checks: &[(CheckId, u8)], nodes: &[NodeId], prev: Option<&Assignment>) -> Assignment {
    assign_with_slack(checks, nodes, prev, DEFAULT_SLACK_PERMILLE)
}

/// [`assign`] with an explicit load slack ε in thousandths (cap = `ceil(mean × (1 + ε))`).
#[must_use]
pub fn assign_with_slack(
    checks: &[(CheckId, u8)],
    nodes: &[NodeId],
    prev: Option<&Assignment>,
    slack_permille: u32,
) -> Assignment {
    // 1. Normalise.
    // Sorted by id, largest replica count first among duplicates, which `dedup` keeps.
    let mut checks: Vec<(&CheckId, u8)> = checks.iter().map(|(c, r)| (c, *r)).collect();
    checks.sort_unstable_by(|a, b| a.0.cmp(b.0).then(b.1.cmp(&a.1)));
    checks.dedup_by(|later, first| later.0 == first.0);
    let mut nodes: Vec<&NodeId> = nodes.iter().collect();
    nodes.sort();
    nodes.dedup();
    let n = nodes.len();
    let want: Vec<usize> = checks.iter().map(|&(_, r)| usize::from(r).min(n)).collect();
    let short: BTreeMap<CheckId, u8> = checks
        .iter()
        .zip(&want)
        .filter(|&(&(_, r), &w)| usize::from(r) > w)
        .map(|(&(c, r), _)| (c.clone(), r))
        .collect();

    // 2. Capacity.
    let slots: usize = want.iter().sum();
    let cap = capacity(slots, n, slack_permille);

    // 3. Hashes.
    let check_hash: Vec<u64> = checks.iter().map(|(c, _)| hash_str(c.as_str())).collect();
    let node_hash: Vec<u64> = nodes.iter().map(|n| hash_str(n.as_str())).collect();
    let node_index: BTreeMap<&NodeId, u32> = nodes
        .iter()
        .enumerate()
        .map(|(i, &n)| (n, index_u32(i)))
        .collect();

    let mut sets: Vec<Vec<u32>> = vec![Vec::new(); checks.len()];
    let mut load = vec![0usize; n];

    // 4. Keep.
    if let Some(prev) = prev {
        let mut held: Vec<Vec<(u64, u32)>> = vec![Vec::new(); n];
        for (ci, &(check, _)) in checks.iter().enumerate() {
            let Some(old) = prev.replicas.get(check) else {
                continue;
            };
            let mut kept: Vec<u32> = old
                .iter()
                .filter_map(|node| node_index.get(node).copied())
                .collect();
            kept.sort_unstable();
            kept.dedup();
            if kept.len() > want[ci] {
                kept.sort_unstable_by_key(|&ni| {
                    std::cmp::Reverse((weight(check_hash[ci], node_hash[ni as usize]), ni))
                });
                kept.truncate(want[ci]);
            }
            for ni in kept {
                held[ni as usize].push((
                    weight(check_hash[ci], node_hash[ni as usize]),
                    index_u32(ci),
                ));
            }
        }
        // Shed above the cap, node by node in id order. A node sheds first the checks that
        // have lost the fewest replicas so far (so that a check seldom needs two new homes
        // when only one node has room, e.g. the joining one), then its lowest-weight ones.
        let mut released = vec![0u8; checks.len()];
        for (ni, mut held) in held.into_iter().enumerate() {
            if held.len() > cap {
                let excess = held.len() - cap;
                held.sort_unstable_by_key(|&(w, ci)| (released[ci as usize], w, ci));
                for &(_, ci) in &held[..excess] {
                    released[ci as usize] = released[ci as usize].saturating_add(1);
                }
                held.drain(..excess);
            }
            load[ni] = held.len();
            for (_, ci) in held {
                sets[ci as usize].push(index_u32(ni));
            }
        }
    }

    // 5. Fill.
    let mut order: Vec<usize> = (0..checks.len())
        .filter(|&ci| sets[ci].len() < want[ci])
        .collect();
    order.sort_unstable_by_key(|&ci| (std::cmp::Reverse(want[ci]), check_hash[ci], ci));
    let mut weights = vec![0u64; n];
    for ci in order {
        for (w, &nh) in weights.iter_mut().zip(&node_hash) {
            *w = weight(check_hash[ci], nh);
        }
        let set = &mut sets[ci];
        while set.len() < want[ci] {
            // Highest weight among free nodes under the cap (ties: lower index)...
            let mut best: Option<usize> = None;
            for ni in 0..n {
                if load[ni] < cap
                    && best.is_none_or(|b| weights[ni] > weights[b])
                    && !set.contains(&index_u32(ni))
                {
                    best = Some(ni);
                }
            }
            // ...or else the least-loaded free node (ties: higher weight, lower index).
            if best.is_none() {
                for ni in 0..n {
                    let better = best.is_none_or(|b| {
                        load[ni] < load[b] || (load[ni] == load[b] && weights[ni] > weights[b])
                    });
                    if better && !set.contains(&index_u32(ni)) {
                        best = Some(ni);
                    }
                }
            }
            let Some(ni) = best else { break };
            load[ni] += 1;
            set.push(index_u32(ni));
        }
    }

    let replicas = checks
        .iter()
        .zip(sets)
        .map(|(&(check, _), mut set)| {
            set.sort_unstable();
            (
                check.clone(),
                set.into_iter()
                    .map(|ni| nodes[ni as usize].clone())
                    .collect(),
            )
        })
        .collect();
    Assignment { replicas, short }
}

/// `ceil(slots / nodes × (1 + slack))`, at least 1 when there is anything to place.
fn capacity(slots: usize, nodes: usize, slack_permille: u32) -> usize {
    if nodes == 0 || slots == 0 {
        return 0;
    }
    let num = slots as u128 * (1000 + u128::from(slack_permille));
    let den = nodes as u128 * 1000;
    usize::try_from(num.div_ceil(den))
        .unwrap_or(usize::MAX)
        .max(1)
}

fn index_u32(i: usize) -> u32 {
    u32::try_from(i).expect("fewer than 2^32 checks and nodes")
}

/// murmur3's 64-bit finaliser: a fixed, well-mixing bijection.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Stable string hash: FNV-1a 64 then `fmix64`.
fn hash_str(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in s.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    fmix64(h)
}

/// Rendezvous weight of a (check, node) pair.
fn weight(check_hash: u64, node_hash: u64) -> u64 {
    fmix64(check_hash.wrapping_add(node_hash.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
}

/// Serialised form (see the module docs).
#[derive(Serialize, Deserialize)]
struct Wire {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    nodes: BTreeMap<NodeId, Vec<CheckId>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    unassigned: Vec<CheckId>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    short: BTreeMap<CheckId, u8>,
}

impl Serialize for Assignment {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut wire = Wire {
            nodes: BTreeMap::new(),
            unassigned: Vec::new(),
            short: self.short.clone(),
        };
        for (check, nodes) in &self.replicas {
            if nodes.is_empty() {
                wire.unassigned.push(check.clone());
            }
            for node in nodes {
                wire.nodes
                    .entry(node.clone())
                    .or_default()
                    .push(check.clone());
            }
        }
        wire.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Assignment {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = Wire::deserialize(deserializer)?;
        let mut replicas: BTreeMap<CheckId, Vec<NodeId>> = wire
            .unassigned
            .into_iter()
            .map(|c| (c, Vec::new()))
            .collect();
        for (node, checks) in wire.nodes {
            for check in checks {
                replicas.entry(check).or_default().push(node.clone());
            }
        }
        for nodes in replicas.values_mut() {
            nodes.sort();
            nodes.dedup();
        }
        let mut short = wire.short;
        short.retain(|check, wanted| {
            replicas
                .get(check)
                .is_some_and(|n| n.len() < usize::from(*wanted))
        });
        Ok(Self { replicas, short })
    }
}

#[cfg(test)]
#[path = "assign_tests.rs"]
mod tests;
