use super::*;

use Health::{Healthy, Unhealthy, Unknown};

fn ids(names: &[&str]) -> Vec<NodeId> {
    names.iter().map(|n| NodeId::new(n)).collect()
}

fn op(node: &str, health: Health, revision: i64) -> Opinion {
    Opinion {
        node: NodeId::new(node),
        health,
        revision,
    }
}

fn none() -> BTreeSet<NodeId> {
    BTreeSet::new()
}

fn suspects(names: &[&str]) -> BTreeSet<NodeId> {
    ids(names).into_iter().collect()
}

#[test]
fn quorum_sizes() {
    use QuorumRule::*;
    let table = [
        (
            Majority,
            [None, Some(1), Some(2), Some(2), Some(3), Some(3)],
        ),
        (Any, [None, Some(1), Some(1), Some(1), Some(1), Some(1)]),
        (All, [None, Some(1), Some(2), Some(3), Some(4), Some(5)]),
        (AtLeast(2), [None, None, Some(2), Some(2), Some(2), Some(2)]),
        (
            AtLeast(0),
            [None, Some(1), Some(1), Some(1), Some(1), Some(1)],
        ),
    ];
    for (rule, expect) in table {
        for (eligible, q) in expect.into_iter().enumerate() {
            assert_eq!(rule.required(eligible), q, "{rule:?} of {eligible}");
        }
    }
}

#[test]
fn majority_of_three() {
    let r = ids(&["a", "b", "c"]);
    let v = decide(
        QuorumRule::Majority,
        &r,
        &[op("a", Unhealthy, 5), op("b", Unhealthy, 6)],
        &none(),
    );
    assert_eq!(v.health, Unhealthy);
    assert_eq!(
        (v.counted, v.healthy, v.unhealthy, v.required),
        (2, 0, 2, 2)
    );

    let ops = [
        op("a", Unhealthy, 5),
        op("b", Healthy, 6),
        op("c", Healthy, 7),
    ];
    let v = decide(QuorumRule::Majority, &r, &ops, &none());
    assert_eq!(v.health, Healthy);
    assert_eq!((v.counted, v.healthy, v.unhealthy), (3, 2, 1));

    // One early report cannot decide for three replicas.
    let v = decide(QuorumRule::Majority, &r, &[op("a", Unhealthy, 5)], &none());
    assert_eq!(v.health, Unknown);
    assert!(!v.is_quorate());
    assert_eq!(v.or(Healthy), Healthy);
}

#[test]
fn one_partitioned_checker_cannot_mark_a_target_down() {
    // Two replicas disagree: no quorum, the previous verdict stands.
    let r = ids(&["a", "b"]);
    let ops = [op("a", Unhealthy, 10), op("b", Healthy, 9)];
    let v = decide(QuorumRule::Majority, &r, &ops, &none());
    assert_eq!(v.health, Unknown);
    assert_eq!(v.or(Healthy), Healthy);
    assert_eq!((v.healthy, v.unhealthy, v.required), (1, 1, 2));
    // Even under Any, the tie goes to healthy.
    assert_eq!(decide(QuorumRule::Any, &r, &ops, &none()).health, Healthy);
    assert_eq!(decide(QuorumRule::All, &r, &ops, &none()).health, Unknown);
    // Three replicas: the other two outvote it.
    let r3 = ids(&["a", "b", "c"]);
    let ops3 = [
        op("a", Unhealthy, 10),
        op("b", Healthy, 9),
        op("c", Healthy, 8),
    ];
    assert_eq!(
        decide(QuorumRule::Majority, &r3, &ops3, &none()).health,
        Healthy
    );
}

#[test]
fn any_all_and_at_least() {
    let r = ids(&["a", "b", "c"]);
    let down1 = [op("a", Unhealthy, 1)];
    assert_eq!(
        decide(QuorumRule::Any, &r, &down1, &none()).health,
        Unhealthy
    );
    assert_eq!(decide(QuorumRule::All, &r, &down1, &none()).health, Unknown);
    assert_eq!(
        decide(QuorumRule::AtLeast(2), &r, &down1, &none()).health,
        Unknown
    );

    let all_down = [
        op("a", Unhealthy, 1),
        op("b", Unhealthy, 2),
        op("c", Unhealthy, 3),
    ];
    assert_eq!(
        decide(QuorumRule::All, &r, &all_down, &none()).health,
        Unhealthy
    );
    assert_eq!(
        decide(QuorumRule::AtLeast(3), &r, &all_down, &none()).health,
        Unhealthy
    );
    assert_eq!(
        decide(QuorumRule::AtLeast(4), &r, &all_down, &none()).health,
        Unknown
    );
    assert_eq!(
        decide(QuorumRule::AtLeast(4), &r, &all_down, &none()).required,
        0
    );

    // AtLeast(1) with both sides present: healthy wins.
    let split = [
        op("a", Unhealthy, 1),
        op("b", Unhealthy, 2),
        op("c", Healthy, 3),
    ];
    assert_eq!(
        decide(QuorumRule::AtLeast(1), &r, &split, &none()).health,
        Healthy
    );
    assert_eq!(
        decide(QuorumRule::AtLeast(2), &r, &split, &none()).health,
        Unhealthy
    );
    assert_eq!(
        decide(QuorumRule::Majority, &r, &split, &none()).health,
        Unhealthy
    );
    assert_eq!(decide(QuorumRule::All, &r, &split, &none()).health, Unknown);
}

#[test]
fn suspects_are_ignored_and_shrink_the_quorum() {
    let r = ids(&["a", "b"]);
    let ops = [op("a", Unhealthy, 10), op("b", Healthy, 9)];
    let v = decide(QuorumRule::Majority, &r, &ops, &suspects(&["a"]));
    assert_eq!(v.health, Healthy, "the remaining trusted replica decides");
    assert_eq!((v.counted, v.ignored_suspect, v.required), (1, 1, 1));

    // All replicas suspect: no verdict.
    let v = decide(QuorumRule::Majority, &r, &ops, &suspects(&["a", "b"]));
    assert_eq!(v.health, Unknown);
    assert_eq!((v.counted, v.ignored_suspect, v.required), (0, 2, 0));

    // A suspect that is not a replica changes nothing.
    let v = decide(QuorumRule::Majority, &r, &ops, &suspects(&["z"]));
    assert_eq!((v.health, v.required), (Unknown, 2));
}

#[test]
fn stale_non_replica_opinions_are_ignored() {
    // "old" used to probe the check; its opinion lingers in etcd.
    let r = ids(&["a", "b", "c"]);
    let ops = [
        op("old", Unhealthy, 20),
        op("a", Unhealthy, 21),
        op("b", Healthy, 3),
    ];
    let v = decide(QuorumRule::Majority, &r, &ops, &none());
    assert_eq!(v.health, Unknown);
    assert_eq!((v.counted, v.unhealthy, v.ignored_non_replica), (2, 1, 1));
}

#[test]
fn latest_revision_wins_and_unknown_abstains() {
    let r = ids(&["a", "b", "c"]);
    let ops = [
        op("a", Unhealthy, 30),
        op("a", Healthy, 12),
        op("b", Healthy, 5),
        op("b", Unhealthy, 31),
        op("c", Unknown, 40),
    ];
    let v = decide(QuorumRule::Majority, &r, &ops, &none());
    assert_eq!(v.health, Unhealthy);
    assert_eq!((v.counted, v.healthy, v.unhealthy), (3, 0, 2));

    // Same revision, conflicting opinions: they cancel.
    let ops = [
        op("a", Unhealthy, 7),
        op("a", Healthy, 7),
        op("b", Unhealthy, 7),
    ];
    let v = decide(QuorumRule::Majority, &r, &ops, &none());
    assert_eq!((v.health, v.unhealthy), (Unknown, 1));
    // Input order does not matter.
    let mut rev = ops.to_vec();
    rev.reverse();
    assert_eq!(decide(QuorumRule::Majority, &r, &rev, &none()), v);
}

#[test]
fn duplicate_replicas_and_empty_sets() {
    let v = decide(
        QuorumRule::Majority,
        &ids(&["a", "a"]),
        &[op("a", Healthy, 1)],
        &none(),
    );
    assert_eq!((v.health, v.required), (Healthy, 1));
    let v = decide(QuorumRule::Any, &[], &[op("a", Healthy, 1)], &none());
    assert_eq!((v.health, v.ignored_non_replica), (Unknown, 1));
}

#[test]
fn rule_serde_is_snake_case() {
    assert_eq!(
        serde_json::to_string(&QuorumRule::Majority).unwrap(),
        "\"majority\""
    );
    assert_eq!(
        serde_json::to_string(&QuorumRule::AtLeast(2)).unwrap(),
        "{\"at_least\":2}"
    );
    let r: QuorumRule = serde_json::from_str("\"all\"").unwrap();
    assert_eq!(r, QuorumRule::All);
    let r: QuorumRule = serde_json::from_str("{\"at_least\":3}").unwrap();
    assert_eq!(r, QuorumRule::AtLeast(3));
    let o = op("a", Unhealthy, 4);
    let json = serde_json::to_string(&o).unwrap();
    assert_eq!(json, r#"{"node":"a","health":"unhealthy","revision":4}"#);
    assert_eq!(serde_json::from_str::<Opinion>(&json).unwrap(), o);
}
