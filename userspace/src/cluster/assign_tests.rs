use std::{collections::BTreeMap, time::Instant};

use rand::{seq::SliceRandom, SeedableRng};

use super::*;

fn checks(count: usize, replicas: u8) -> Vec<(CheckId, u8)> {
    (0..count)
        .map(|i| (CheckId::new(&format!("check-{i:06}")), replicas))
        .collect()
}

fn nodes(count: usize) -> Vec<NodeId> {
    (0..count)
        .map(|i| NodeId::new(&format!("node-{i:02}")))
        .collect()
}

fn slots(a: &Assignment) -> usize {
    a.iter().map(|(_, n)| n.len()).sum()
}

/// Every check has `min(replicas, N)` distinct nodes, all from `nodes`.
fn assert_valid(a: &Assignment, checks: &[(CheckId, u8)], nodes: &[NodeId]) {
    assert_eq!(a.len(), checks.len());
    for (check, r) in checks {
        let set = a.replicas(check).expect("every check is assigned");
        assert_eq!(set.len(), usize::from(*r).min(nodes.len()), "{check}");
        assert!(
            set.windows(2).all(|w| w[0] < w[1]),
            "sorted and distinct: {set:?}"
        );
        assert!(set.iter().all(|n| nodes.contains(n)));
    }
}

/// max load / mean load.
fn imbalance(a: &Assignment, node_count: usize) -> f64 {
    let load = a.load();
    let max = load.values().copied().max().unwrap_or(0);
    max as f64 / (slots(a) as f64 / node_count as f64)
}

#[test]
fn every_check_gets_distinct_replicas() {
    let cs = checks(1000, 3);
    for n in 1..=6 {
        let ns = nodes(n);
        let a = assign(&cs, &ns, None);
        assert_valid(&a, &cs, &ns);
        if n < 3 {
            let short = a.under_replicated();
            assert_eq!(short.len(), 1000);
            assert_eq!(
                short[0],
                Shortfall {
                    check: cs[0].0.clone(),
                    wanted: 3,
                    assigned: n
                }
            );
        } else {
            assert!(a.under_replicated().is_empty());
        }
    }
}

#[test]
fn no_nodes_and_zero_replicas() {
    let cs = vec![(CheckId::new("a"), 2), (CheckId::new("b"), 0)];
    let a = assign(&cs, &[], None);
    assert_eq!(a.replicas(&CheckId::new("a")), Some(&[][..]));
    assert_eq!(
        a.under_replicated().len(),
        1,
        "replicas = 0 is not a shortfall"
    );
    let a = assign(&cs, &nodes(3), None);
    assert_eq!(a.replicas(&CheckId::new("a")).unwrap().len(), 2);
    assert_eq!(a.replicas(&CheckId::new("b")), Some(&[][..]));
    assert!(a.under_replicated().is_empty());
    assert!(assign(&[], &nodes(3), None).is_empty());
}

#[test]
fn balanced_within_ten_percent() {
    let cs = checks(10_000, 2);
    let mut report = Vec::new();
    for n in 3..=20 {
        let ns = nodes(n);
        let a = assign(&cs, &ns, None);
        assert_valid(&a, &cs, &ns);
        let bounded = imbalance(&a, n);
        let plain = imbalance(&assign_with_slack(&cs, &ns, None, 1_000_000), n);
        report.push(format!("{n}: {bounded:.3} (plain HRW {plain:.3})"));
        assert!(bounded <= 1.1, "{n} nodes: max/mean {bounded}");
        assert_eq!(a.load().len(), n, "every node gets work");
    }
    println!("max/mean load, 10,000 checks x 2: {}", report.join(", "));
}

#[test]
fn bounded_load_fixes_what_plain_hrw_cannot() {
    // 1,000 checks x 2 over 20 nodes: a mean of 100 slots per node.
    let cs = checks(1_000, 2);
    let ns = nodes(20);
    let plain = imbalance(&assign_with_slack(&cs, &ns, None, 1_000_000), 20);
    let bounded = imbalance(&assign(&cs, &ns, None), 20);
    println!("1,000 checks x 2 over 20 nodes: max/mean {bounded:.3}, plain HRW {plain:.3}");
    assert!(plain > 1.1);
    assert!(bounded <= 1.05);
}

#[test]
fn join_moves_about_one_nth() {
    let cs = checks(10_000, 2);
    let before = assign(&cs, &nodes(3), None);
    let ns = nodes(4);
    let after = assign(&cs, &ns, Some(&before));
    assert_valid(&after, &cs, &ns);
    let moved = after.moved_from(&before);
    let total = slots(&after);
    let share = moved as f64 / total as f64;
    println!(
        "3 -> 4 nodes: {moved} of {total} replica slots moved ({:.2} %), load {:?}",
        share * 100.0,
        after.load()
    );
    assert!(share <= 0.25 + 0.01, "moved {share}");
    assert!(imbalance(&after, 4) <= 1.1);
    // The joining node takes (nearly) all that moves; the old nodes mostly just shed.
    let joined = diff(&before, &after, &ns[3]);
    assert!(joined.removed.is_empty());
    let to_old: usize = ns[..3]
        .iter()
        .map(|n| diff(&before, &after, n).added.len())
        .sum();
    assert_eq!(joined.added.len() + to_old, moved);
    println!(
        "3 -> 4 nodes: {} slots to the joining node, {to_old} between old nodes",
        joined.added.len()
    );
    assert!(to_old * 20 <= moved, "{to_old}");
}

#[test]
fn leave_moves_only_the_departed_slots() {
    let cs = checks(10_000, 2);
    let before = assign(&cs, &nodes(4), None);
    let gone = NodeId::new("node-03");
    let departed = before.load()[&gone];
    let ns = nodes(3);
    let after = assign(&cs, &ns, Some(&before));
    assert_valid(&after, &cs, &ns);
    let moved = after.moved_from(&before);
    println!(
        "4 -> 3 nodes: {moved} of {} replica slots moved ({:.2} %), departed node held {departed}",
        slots(&after),
        moved as f64 * 100.0 / slots(&after) as f64
    );
    assert_eq!(moved, departed);
    assert!(imbalance(&after, 3) <= 1.1);
    for node in &ns {
        assert!(
            diff(&before, &after, node).removed.is_empty(),
            "{node} keeps all it had"
        );
    }
}

#[test]
fn growing_and_shrinking_stays_balanced_and_cheap() {
    let cs = checks(10_000, 2);
    let mut a = assign(&cs, &nodes(3), None);
    for n in (4..=12).chain((3..12).rev()) {
        let next = assign(&cs, &nodes(n), Some(&a));
        let moved = next.moved_from(&a) as f64 / slots(&next) as f64;
        // A join moves at most 1/n, a leave the departed node's share (about 1/(n+1)).
        let bound = 1.0 / n.max(a.load().len()) as f64;
        assert!(moved <= bound + 0.02, "to {n} nodes: moved {moved}");
        assert!(imbalance(&next, n) <= 1.1, "to {n} nodes");
        a = next;
    }
}

#[test]
fn stable_when_nothing_changes() {
    let cs = checks(5_000, 3);
    let ns = nodes(7);
    let a = assign(&cs, &ns, None);
    let again = assign(&cs, &ns, Some(&a));
    assert_eq!(again, a);
    assert_eq!(again.moved_from(&a), 0);
}

#[test]
fn deterministic_and_order_independent() {
    let mut cs = checks(3_000, 2);
    let mut ns = nodes(9);
    let a = assign(&cs, &ns, None);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    cs.shuffle(&mut rng);
    ns.shuffle(&mut rng);
    // Duplicates are tolerated: a check keeps its largest replica count.
    cs.push((cs[0].0.clone(), 1));
    ns.push(ns[0].clone());
    assert_eq!(assign(&cs, &ns, None), a);
    assert_eq!(assign(&cs, &ns, Some(&a)), a);
}

#[test]
fn replica_count_changes_and_removed_checks() {
    let cs = checks(1_000, 3);
    let ns = nodes(5);
    let a = assign(&cs, &ns, None);
    // Shrink to 2 replicas: every check keeps 2 of its 3 nodes.
    let two = checks(1_000, 2);
    let b = assign(&two, &ns, Some(&a));
    assert_valid(&b, &two, &ns);
    assert_eq!(b.moved_from(&a), 0);
    // Grow back to 3: only the new slots are placed.
    let c = assign(&cs, &ns, Some(&b));
    assert_valid(&c, &cs, &ns);
    assert_eq!(c.moved_from(&b), 1_000);
    // Drop half the checks: the rest stay where they were.
    let half = checks(500, 3);
    let d = assign(&half, &ns, Some(&c));
    assert_valid(&d, &half, &ns);
    assert_eq!(d.moved_from(&c), 0);
    assert!(d.replicas(&CheckId::new("check-000999")).is_none());
}

#[test]
fn large_assignment_is_fast() {
    let cs = checks(100_000, 3);
    let ns = nodes(50);
    let start = Instant::now();
    let a = assign(&cs, &ns, None);
    let fresh = start.elapsed();
    assert_valid(&a, &cs, &ns);
    assert_eq!(slots(&a), 300_000);
    assert!(imbalance(&a, 50) <= 1.1);
    let mut fewer = ns.clone();
    fewer.remove(17);
    let start = Instant::now();
    let b = assign(&cs, &fewer, Some(&a));
    let sticky = start.elapsed();
    assert_eq!(b.moved_from(&a), a.load()[&ns[17]]);
    println!(
        "100,000 checks x 3 over 50 nodes: fresh {fresh:?}, with prev (one node left) {sticky:?}"
    );
}

#[test]
fn for_node_load_and_diff() {
    let sets = [
        ("c1", vec!["a", "b"]),
        ("c2", vec!["b", "c"]),
        ("c3", vec!["a"]),
    ];
    let a = Assignment::from_replicas(
        sets.iter()
            .map(|(c, ns)| (CheckId::new(c), ns.iter().map(|n| NodeId::new(n)).collect())),
    );
    let b = Assignment::from_replicas([
        (CheckId::new("c1"), vec![NodeId::new("b"), NodeId::new("c")]),
        (CheckId::new("c2"), vec![NodeId::new("b"), NodeId::new("c")]),
        (CheckId::new("c4"), vec![NodeId::new("a")]),
    ]);
    let ids = |v: &[&str]| v.iter().map(|s| CheckId::new(s)).collect::<Vec<_>>();
    assert_eq!(a.for_node(&NodeId::new("a")), ids(&["c1", "c3"]));
    let load: BTreeMap<_, _> = [("a", 2), ("b", 2), ("c", 1)]
        .map(|(n, l)| (NodeId::new(n), l))
        .into();
    assert_eq!(a.load(), load);
    let d = diff(&a, &b, &NodeId::new("a"));
    assert_eq!(
        d,
        NodeDiff {
            added: ids(&["c4"]),
            removed: ids(&["c1", "c3"])
        }
    );
    assert_eq!(diff(&a, &b, &NodeId::new("c")).added, ids(&["c1"]));
    assert!(diff(&a, &a, &NodeId::new("b")).is_empty());
    assert_eq!(b.moved_from(&a), 2);
}

#[test]
fn serde_per_node_encoding_round_trips() {
    let cs = vec![
        (CheckId::new("c1"), 2),
        (CheckId::new("c2"), 3),
        (CheckId::new("c3"), 0),
    ];
    let a = assign(&cs, &nodes(2), None);
    let json = serde_json::to_value(&a).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "nodes": {"node-00": ["c1", "c2"], "node-01": ["c1", "c2"]},
            "unassigned": ["c3"],
            "short": {"c2": 3},
        })
    );
    let back: Assignment = serde_json::from_value(json).unwrap();
    assert_eq!(back, a);
    let empty: Assignment = serde_json::from_str("{}").unwrap();
    assert!(empty.is_empty());
    assert_eq!(serde_json::to_string(&Assignment::default()).unwrap(), "{}");

    let big = assign(&checks(10_000, 2), &nodes(5), None);
    let text = serde_json::to_string(&big).unwrap();
    println!(
        "10,000 checks x 2 over 5 nodes: {} bytes of JSON",
        text.len()
    );
    assert_eq!(serde_json::from_str::<Assignment>(&text).unwrap(), big);
}

#[test]
fn node_id_serde_is_transparent() {
    let n = NodeId::from("edge-1");
    assert_eq!(serde_json::to_string(&n).unwrap(), "\"edge-1\"");
    assert_eq!(n.to_string(), "edge-1");
    assert_eq!(n.as_str(), "edge-1");
}
