//! Origin protection across the cluster: `--per-target-pps` is a cluster-wide cap. Each
//! node enforces an equal share of it (the cap divided by the live nodes, refreshed from
//! etcd), so the target never sees more than the cap however many checks point at it
//! and however they are spread over the nodes.
//!
//! A 3-member etcd and 3 sonde nodes on a lab switch (198.18.1.0/24), a target namespace
//! answering for 198.19.0.0/16. 30 tcp_connect checks on one address, every 100 ms, 3
//! replicas each: 900 probes/s asked, against a cluster-wide cap of 30/s. The target's
//! nftables counter of SYNs to that address is the judge.

use std::time::{Duration, Instant};

use sonde::lab::{self, Netns};
use sonde_tests::{
    cluster_lab::{ClusterLab, LabNode},
    daemon::TempDir,
};

const CAP: f64 = 30.0;
const NODES: u8 = 3;

fn syns(target: &Netns) -> u64 {
    let out = target
        .exec(&["nft", "list", "counter", "inet", "origin", "syns"])
        .expect("nft list");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no packet count in {text}"))
}

#[test]
fn per_target_cap_is_cluster_wide() {
    if !lab::privileged_or_skip() {
        return;
    }
    let dir = TempDir::new("origin");
    let lab = ClusterLab::new();
    let target = &lab.target;
    let etcd = lab.etcd(&dir.0);
    target
        .nft("add table inet origin")
        .and_then(|()| target.nft("add counter inet origin syns"))
        .and_then(|()| {
            target.nft("add chain inet origin input { type filter hook input priority 0; }")
        })
        .and_then(|()| {
            target.nft(
                "add rule inet origin input ip daddr 198.19.0.1 tcp dport 80 tcp flags syn counter name syns",
            )
        })
        .expect("nft counter");

    for i in 0..30 {
        let check = serde_json::json!({
            "check": {"id": format!("o{i:02}"), "target": "198.19.0.1:80", "kind": "tcp_connect",
                      "interval": "100ms", "timeout": "50ms", "jitter": 0.0},
            "replicas": 3
        });
        etcd.put(&format!("/sonde/checks/o{i:02}"), &check.to_string())
            .expect("put check");
    }
    let endpoints = etcd.endpoints().join(",");
    let cap = CAP.to_string();
    let nodes: Vec<LabNode> = (1..=NODES)
        .map(|i| {
            lab.node(
                i,
                &endpoints,
                &dir.0,
                "",
                &["--lease-ttl", "3", "--per-target-pps", &cap],
            )
        })
        .collect();

    // Every node runs the 30 checks and enforces its third of the cap.
    let start = Instant::now();
    loop {
        let ready = nodes.iter().all(|n| {
            n.daemon.client().get("/v1/info").is_ok_and(|i| {
                i["checks"] == 30
                    && i["per_target_pps"]
                        .as_f64()
                        .is_some_and(|p| (p - CAP / f64::from(NODES)).abs() < 1e-6)
            })
        });
        if ready {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "nodes not ready: {:?}",
            nodes
                .iter()
                .map(|n| n.daemon.client().get("/v1/info").ok())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "3 nodes, 30 checks x3 replicas on 198.19.0.1: each node caps it at {} probes/s after {:?}",
        CAP / f64::from(NODES),
        start.elapsed()
    );

    // Let the buckets' initial bursts pass, then count what reaches the target.
    std::thread::sleep(Duration::from_secs(2));
    let (s0, t0) = (syns(target), Instant::now());
    std::thread::sleep(Duration::from_secs(5));
    let (s1, secs) = (syns(target), t0.elapsed().as_secs_f64());
    let rate = (s1 - s0) as f64 / secs;
    println!(
        "target saw {} SYNs in {secs:.1} s: {rate:.1}/s (asked: 900/s, cluster-wide cap {CAP}/s)",
        s1 - s0
    );
    assert!(rate <= CAP * 1.1, "cluster-wide cap exceeded: {rate:.1}/s");
    assert!(rate >= CAP * 0.5, "probing goes on at the cap: {rate:.1}/s");
    // The waiting probes are counted, not dropped.
    let m = nodes[0].daemon.client().metrics().expect("metrics");
    let delayed: f64 = m
        .lines()
        .filter(|l| l.starts_with("sonde_budget_delayed_total{reason=\"target\"}"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(delayed > 0.0, "delays by the target cap are counted:\n{m}");
    drop(nodes);
}
