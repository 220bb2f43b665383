use super::*;
use crate::cluster::{
    assign::assign,
    quorum::{decide, QuorumRule},
};

use Health::{Healthy, Unhealthy};

const HOLD: u64 = 10_000;

fn detector() -> SuspectDetector {
    SuspectDetector::new(SuspectConfig {
        hold_down: HOLD,
        ..SuspectConfig::default()
    })
}

fn view(node: &str, probed: usize, unhealthy: usize, contradicted: usize) -> NodeView {
    NodeView {
        node: NodeId::new(node),
        probed,
        unhealthy,
        contradicted,
    }
}

/// A 3-node cluster probing 30 checks, 2 replicas each; `opinion(node, check)` gives each
/// replica's opinion. Returns the assignment and the opinions per check.
fn cluster(
    opinion: impl Fn(&NodeId, usize) -> Health,
) -> (Assignment, BTreeMap<CheckId, Vec<Opinion>>) {
    let checks: Vec<(CheckId, u8)> = (0..30)
        .map(|i| (CheckId::new(&format!("c{i}")), 2))
        .collect();
    let nodes: Vec<NodeId> = ["a", "b", "c"].map(NodeId::new).to_vec();
    let a = assign(&checks, &nodes, None);
    let mut opinions = BTreeMap::new();
    for (i, (check, _)) in checks.iter().enumerate() {
        let ops = a
            .replicas(check)
            .unwrap()
            .iter()
            .map(|n| Opinion {
                node: n.clone(),
                health: opinion(n, i),
                revision: 100 + i as i64,
            })
            .collect();
        opinions.insert(check.clone(), ops);
    }
    (a, opinions)
}

#[test]
fn a_node_cut_off_from_its_targets_becomes_suspect_then_recovers() {
    let cut = NodeId::new("a");
    // "a" lost its uplink: it sees everything down, the others see everything up.
    let (a, ops) = cluster(|n, _| if *n == cut { Unhealthy } else { Healthy });
    let vs = views(&a, &ops);
    let va = vs.iter().find(|v| v.node == cut).unwrap();
    assert_eq!((va.unhealthy, va.contradicted), (va.probed, va.probed));
    assert!(va.probed >= 3);

    let mut d = detector();
    let s = d.evaluate(&vs, 1_000);
    assert_eq!(s, BTreeSet::from([cut.clone()]));
    assert_eq!(d.suspect_since(&cut), Some(1_000));

    // While suspect, its opinions cannot take any target down.
    for (check, replicas) in a.iter() {
        let v = decide(QuorumRule::Majority, replicas, &ops[check], &s);
        assert_ne!(v.health, Unhealthy, "{check}");
    }

    // The link returns: clear, but the hold-down keeps it suspect for a while.
    let (_, healed) = cluster(|_, _| Healthy);
    let vs = views(&a, &healed);
    assert!(d.evaluate(&vs, 2_000).contains(&cut));
    assert!(d.evaluate(&vs, 2_000 + HOLD - 1).contains(&cut));
    assert!(d.evaluate(&vs, 2_000 + HOLD).is_empty());
    assert!(!d.is_suspect(&cut));
}

#[test]
fn a_relapse_restarts_the_hold_down() {
    let mut d = detector();
    let sick = [view("a", 10, 10, 10), view("b", 10, 0, 0)];
    let well = [view("a", 10, 0, 0), view("b", 10, 0, 0)];
    assert_eq!(d.evaluate(&sick, 0).len(), 1);
    d.evaluate(&well, 100);
    // Halfway through the hold-down the link flaps: 30 % disagreement is not clear.
    assert!(
        d.evaluate(&[view("a", 10, 3, 3), view("b", 10, 0, 0)], 100 + HOLD / 2)
            .len()
            == 1
    );
    assert!(
        d.evaluate(&well, 100 + HOLD).len() == 1,
        "hold-down restarted"
    );
    assert!(d.evaluate(&well, 100 + HOLD + HOLD / 2).len() == 1);
    assert!(d.evaluate(&well, 100 + HOLD + HOLD).is_empty());
}

#[test]
fn hysteresis_between_enter_and_exit() {
    let mut d = detector();
    // 30 % of checks contradicted: not enough to enter...
    assert!(d.evaluate(&[view("a", 10, 3, 3)], 0).is_empty());
    // ...4 of 10 unhealthy is below the 50 % unhealthy threshold, still not suspect.
    assert!(d.evaluate(&[view("a", 10, 4, 4)], 1).is_empty());
    // 5 of 10 unhealthy, 4 of 5 contradicted: enters.
    assert!(d.evaluate(&[view("a", 10, 5, 4)], 2).len() == 1);
    // Back to 30 %: would not enter, but does not clear either.
    assert!(d.evaluate(&[view("a", 10, 3, 3)], 3 + 10 * HOLD).len() == 1);
    // Below 20 % for the hold-down: recovers.
    d.evaluate(&[view("a", 10, 1, 1)], 4 + 10 * HOLD);
    assert!(d.evaluate(&[view("a", 10, 1, 1)], 4 + 11 * HOLD).is_empty());
}

#[test]
fn a_real_outage_seen_by_all_replicas_makes_nobody_suspect() {
    // Every target is down and every replica says so.
    let (a, ops) = cluster(|_, _| Unhealthy);
    let vs = views(&a, &ops);
    assert!(vs
        .iter()
        .all(|v| v.unhealthy == v.probed && v.contradicted == 0));
    let mut d = detector();
    assert!(d.evaluate(&vs, 0).is_empty());
    for (check, replicas) in a.iter() {
        assert_eq!(
            decide(
                QuorumRule::Majority,
                replicas,
                &ops[check],
                &BTreeSet::new()
            )
            .health,
            Unhealthy
        );
    }
    // Half the targets down, seen by all: still nobody.
    let (a, ops) = cluster(|_, i| if i % 2 == 0 { Unhealthy } else { Healthy });
    assert!(d.evaluate(&views(&a, &ops), 1).is_empty());
}

#[test]
fn too_few_checks_to_judge() {
    let mut d = detector();
    assert!(d.evaluate(&[view("a", 2, 2, 2)], 0).is_empty());
    assert!(d.evaluate(&[view("a", 0, 0, 0)], 0).is_empty());
    assert!(d.evaluate(&[view("a", 3, 3, 3)], 0).len() == 1);
    // Its checks were reassigned away: no evidence left, so it clears after the hold-down.
    d.evaluate(&[view("a", 1, 1, 1)], 10);
    assert!(d.evaluate(&[view("a", 1, 1, 1)], 10 + HOLD).is_empty());
}

#[test]
fn departed_nodes_are_forgotten() {
    let mut d = detector();
    assert!(
        d.evaluate(&[view("a", 10, 10, 10), view("b", 10, 0, 0)], 0)
            .len()
            == 1
    );
    assert!(d.evaluate(&[view("b", 10, 0, 0)], 1).is_empty());
    // It comes back healthy: not suspect.
    assert!(d
        .evaluate(&[view("a", 10, 0, 0), view("b", 10, 0, 0)], 2)
        .is_empty());
}

#[test]
fn views_count_contradictions_only_against_other_replicas() {
    let a = Assignment::from_replicas([
        (CheckId::new("x"), ["a", "b", "c"].map(NodeId::new).to_vec()),
        (CheckId::new("y"), ["a", "b", "c"].map(NodeId::new).to_vec()),
        (CheckId::new("z"), ["a", "b"].map(NodeId::new).to_vec()),
    ]);
    let op = |n: &str, h, r| Opinion {
        node: NodeId::new(n),
        health: h,
        revision: r,
    };
    let ops = BTreeMap::from([
        // a alone says down: contradicted.
        (
            CheckId::new("x"),
            vec![
                op("a", Unhealthy, 1),
                op("b", Healthy, 2),
                op("c", Healthy, 3),
            ],
        ),
        // a and c say down: not contradicted (c agrees), b's healthy notwithstanding.
        (
            CheckId::new("y"),
            vec![
                op("a", Unhealthy, 1),
                op("b", Healthy, 2),
                op("c", Unhealthy, 3),
            ],
        ),
        // b has no opinion yet: not contradicted. A stale opinion of "c" is ignored.
        (
            CheckId::new("z"),
            vec![op("a", Unhealthy, 1), op("c", Healthy, 9)],
        ),
    ]);
    let vs = views(&a, &ops);
    assert_eq!(
        vs,
        vec![view("a", 3, 3, 1), view("b", 3, 0, 0), view("c", 2, 1, 0)]
    );
}
