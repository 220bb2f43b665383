//! The cluster under failures, with real processes: a 3-member etcd cluster and 3 sonde
//! nodes, each in a namespace of its own on a lab switch (198.18.1.0/24), probing a target
//! namespace that answers for 198.19.0.0/16 (as in `cluster.rs`).
//!
//! 3. kill -9 the etcd member that is raft leader: sonde keeps probing on every node, and a
//!    target taken down right after the kill reaches `unhealthy` in its replicas'
//!    observations and in its quorum health (times reported).
//! 4. All etcd members stopped; a target goes down and up again meanwhile (both transitions
//!    happen locally); etcd restarted: both transitions reach the observation keys, in
//!    order, nothing lost (flush time reported).
//! 5. SIGSTOP the sonde leader past its lease TTL, change the check set, SIGCONT: every
//!    assignment/health/suspect write after it is the new leader's (the old leader's
//!    writes are fenced out); the old leader rejoins as a follower and runs its share.
//! 8. The sonde leader cut off from etcd (nftables drop in its namespace, targets still
//!    reachable): it reports itself not leader (`sonde_cluster_acting_leader` 0 on its own
//!    /metrics, "stepping down" in its log) before its lease TTL has passed and before
//!    etcd expires its registration; a new leader emerges elsewhere; once the link
//!    returns it rejoins as a follower and runs its share (times reported).
//! 6. One node cut off from all targets (its route to 198.19.0.0/16 removed, its link to
//!    etcd kept): no target is marked unhealthy, the node becomes suspect; when its route
//!    returns the suspicion is lifted after the hold-down and its opinion counts again.
//!    The hold-down is shortened to 3 s through `SONDE_SUSPECT_HOLD_DOWN_MS` (default 30 s).
//!    Meanwhile another node's `GET /v1/cluster`, its `sonde_cluster_*` metrics and its
//!    status page (in a real headless Chromium) show the nodes, the one leader, each
//!    node's share and the suspect node.
//!
//! The tests run one at a time (a lock): each starts 6 processes plus probing, on
//! machines with 2 cores, and measures times.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use serde_json::Value;
use sonde::lab::{self, HttpResponder, Netns, Port, Switch};
use sonde_tests::{
    daemon::{Daemon, TempDir},
    etcd_ns::{KvEvent, NsEtcd},
};

/// Membership lease TTL of the sonde nodes, seconds.
const TTL_SECS: u64 = 3;
/// The suspect hold-down the nodes of these tests use (default 30 s), milliseconds.
const HOLD_DOWN_MS: u64 = 3_000;
/// Loopback HTTP address of every node's API and status page (in its own namespace).
const PAGE_ADDR: &str = "127.0.0.1:8089";
/// Where the target namespace sits on the switch.
const TARGET_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 100);

/// One lab at a time (see the module docs).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Switch, etcd and target namespaces (fields drop in order: servers first, the
/// temporary directory last).
struct Lab {
    _web: HttpResponder,
    target: Netns,
    etcd_host: Netns,
    sw: Switch,
    dir: TempDir,
}

/// A sonde node: its namespace (which kills the daemon on drop), daemon and link.
struct Node {
    id: String,
    ns: Netns,
    daemon: Daemon,
    dir: PathBuf,
    _port: Port,
}

impl Lab {
    fn new(tag: &str) -> Self {
        let dir = TempDir::new(tag);
        let sw = Switch::new().expect("switch");
        let etcd_host = Netns::new("etcd").expect("etcd ns");
        sw.attach(&etcd_host, Ipv4Addr::new(198, 18, 1, 10), 24)
            .expect("attach etcd");
        let target = Netns::new("tgt").expect("target ns");
        sw.attach(&target, TARGET_ADDR, 24).expect("attach target");
        target
            .add_local_route("198.19.0.0/16")
            .expect("local range");
        target
            .nft("add table inet lab")
            .and_then(|()| {
                target.nft("add chain inet lab input { type filter hook input priority 0; }")
            })
            .expect("nft table");
        let web = HttpResponder::start(&target, "0.0.0.0:80", 200, "OK").expect("http");
        Self {
            _web: web,
            target,
            etcd_host,
            sw,
            dir,
        }
    }

    fn etcd(&self) -> NsEtcd<'_> {
        NsEtcd::start(
            &self.etcd_host,
            Ipv4Addr::new(198, 18, 1, 10),
            3,
            23790,
            self.dir.0.join("etcd"),
        )
        .expect("etcd")
    }

    /// Start node `n<i>` (address 198.18.1.<i>).
    fn node(&self, i: u8, etcd: &NsEtcd<'_>) -> Node {
        let id = format!("n{i}");
        let ns = Netns::new(&id).expect("node ns");
        let port = self
            .sw
            .attach(&ns, Ipv4Addr::new(198, 18, 1, i), 24)
            .expect("attach node");
        ns.add_route("198.19.0.0/16", TARGET_ADDR).expect("route");
        let dir = self.dir.0.join(&id);
        std::fs::create_dir_all(&dir).expect("node dir");
        let endpoints = etcd.endpoints().join(",");
        let ttl = TTL_SECS.to_string();
        let daemon = start_daemon(
            &ns,
            &dir,
            &[("SONDE_SUSPECT_HOLD_DOWN_MS", &HOLD_DOWN_MS.to_string())],
            &[
                "--etcd",
                &endpoints,
                "--node-id",
                &id,
                "--iface",
                &port.host_dev,
                "--lease-ttl",
                &ttl,
                "--http",
                PAGE_ADDR,
            ],
        );
        Node {
            id,
            ns,
            daemon,
            dir,
            _port: port,
        }
    }

    /// Start nodes n1..=n`count`.
    fn nodes(&self, etcd: &NsEtcd<'_>, count: u8) -> Vec<Node> {
        (1..=count).map(|i| self.node(i, etcd)).collect()
    }

    /// The target stops answering on `addr` port 80 (its SYNs are dropped).
    fn target_down(&self, addr: &str) {
        self.target
            .nft(&format!(
                "add rule inet lab input ip daddr {addr} tcp dport 80 drop"
            ))
            .expect("nft drop");
    }

    /// Every target answers again.
    fn targets_up(&self) {
        self.target
            .nft("flush chain inet lab input")
            .expect("nft flush");
    }
}

impl Node {
    fn log(&self) -> String {
        self.daemon.log(&self.dir)
    }

    fn signal(&self, sig: i32) {
        let pid = i32::try_from(self.daemon.pid).expect("pid");
        // SAFETY: kill(2) on the pid of a daemon this test started and whose namespace
        // guard has not reaped it.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
    }

    /// `(seq, at_unix_ms)` of the latest result of `check`, from `GET /v1/checks/<id>`.
    fn last_result(&self, check: &str) -> Option<(u64, u64)> {
        let v = self
            .daemon
            .client()
            .get(&format!("/v1/checks/{check}"))
            .ok()?;
        let l = &v["status"]["last_result"];
        Some((l["seq"].as_u64()?, l["at_unix_ms"].as_u64()?))
    }

    /// The local transitions of `check` (`GET /v1/checks/<id>/history`), oldest first, as
    /// `(to, at_unix_ms)`.
    fn transitions(&self, check: &str) -> Vec<(String, u64)> {
        let Ok(v) = self
            .daemon
            .client()
            .get(&format!("/v1/checks/{check}/history"))
        else {
            return Vec::new();
        };
        v["transitions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                (
                    t["to"].as_str().unwrap_or_default().to_owned(),
                    t["at_unix_ms"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }

    /// A metric of its `/metrics` (first sample of `name`, any labels).
    fn metric(&self, name: &str) -> Option<f64> {
        let text = self.daemon.client().metrics().ok()?;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Whether it reports itself the cluster leader (`sonde_cluster_acting_leader`).
    fn reports_leader(&self) -> Option<bool> {
        self.metric("sonde_cluster_acting_leader").map(|v| v > 0.5)
    }

    /// Checks this node runs now, with their local state.
    fn states(&self) -> BTreeMap<String, String> {
        self.daemon.states().into_iter().collect()
    }
}

/// `sonde run` in `ns` with `env` set, like [`Daemon::start`] (same files in `dir`), and
/// wait until its API answers.
fn start_daemon(ns: &Netns, dir: &Path, env: &[(&str, &str)], extra: &[&str]) -> Daemon {
    let config = dir.join("daemon.toml");
    std::fs::write(&config, "").expect("config");
    Daemon::start_with_env(ns, dir, &config, extra, env)
}

/// Wall clock, ms since the epoch (to compare with the daemons' display times).
fn unix_ms() -> u64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    u64::try_from(d.as_millis()).expect("ms")
}

/// Check `c<i>` probes 198.19.0.<i+1>:80.
fn check_id(i: usize) -> String {
    format!("c{i:03}")
}

fn check_addr(i: usize) -> String {
    format!("198.19.{}.{}", i / 250, i % 250 + 1)
}

fn put_check(etcd: &NsEtcd<'_>, i: usize, replicas: u8) {
    let check = serde_json::json!({
        "check": {
            "id": check_id(i), "target": format!("{}:80", check_addr(i)), "kind": "tcp_connect",
            "interval": "500ms", "fast_interval": "200ms", "timeout": "150ms",
            "rise": 1, "fall": 2,
        },
        "replicas": replicas,
    });
    etcd.put(
        &format!("/sonde/checks/{}", check_id(i)),
        &check.to_string(),
    )
    .expect("put check");
}

fn put_checks(etcd: &NsEtcd<'_>, count: usize, replicas: u8) {
    for i in 0..count {
        put_check(etcd, i, replicas);
    }
}

/// An assignment record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Assigned {
    checks: BTreeSet<String>,
    leader: String,
    term: i64,
}

fn parse_assigned(v: &str) -> Assigned {
    let rec: Value = serde_json::from_str(v).expect("assignment json");
    Assigned {
        checks: rec["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c.as_str().map(str::to_owned))
            .collect(),
        leader: rec["leader"].as_str().unwrap_or_default().to_owned(),
        term: rec["term"].as_i64().unwrap_or(0),
    }
}

/// Assignment as etcd holds it: node -> record.
fn assignment(etcd: &NsEtcd<'_>) -> BTreeMap<String, Assigned> {
    etcd.get_prefix("/sonde/assign/")
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            (
                k.trim_start_matches("/sonde/assign/").to_owned(),
                parse_assigned(&v),
            )
        })
        .collect()
}

/// check -> replica nodes.
fn replicas_of(a: &BTreeMap<String, Assigned>) -> BTreeMap<String, BTreeSet<String>> {
    let mut r: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (n, rec) in a {
        for c in &rec.checks {
            r.entry(c.clone()).or_default().insert(n.clone());
        }
    }
    r
}

fn live_nodes(etcd: &NsEtcd<'_>) -> BTreeSet<String> {
    etcd.get_prefix("/sonde/nodes/")
        .unwrap_or_default()
        .into_iter()
        .map(|(k, _)| k.trim_start_matches("/sonde/nodes/").to_owned())
        .collect()
}

/// The `health` field of a stored JSON record (observation or cluster health).
fn health_of(record: &str) -> Option<String> {
    let rec: Value = serde_json::from_str(record).ok()?;
    rec["health"].as_str().map(str::to_owned)
}

fn is_healthy(record: &str) -> bool {
    health_of(record).as_deref() == Some("healthy")
}

/// The `health` field of the JSON record stored at `key`.
fn health_at(etcd: &NsEtcd<'_>, key: &str) -> Option<String> {
    health_of(&etcd.get(key).ok()??.0)
}

fn obs_health(etcd: &NsEtcd<'_>, check: &str, node: &str) -> Option<String> {
    health_at(etcd, &format!("/sonde/obs/{check}/{node}"))
}

fn cluster_health(etcd: &NsEtcd<'_>, check: &str) -> Option<String> {
    health_at(etcd, &format!("/sonde/health/{check}"))
}

/// The `health` fields of a key's history, consecutive repeats collapsed.
fn health_sequence(events: &[KvEvent], key: &str) -> Vec<String> {
    let mut seq: Vec<String> = Vec::new();
    for e in events.iter().filter(|e| e.key == key) {
        let h = e
            .value
            .as_deref()
            .map_or_else(|| "<deleted>".into(), |v| health_of(v).unwrap_or_default());
        if seq.last() != Some(&h) {
            seq.push(h);
        }
    }
    seq
}

fn hist_of(etcd: &NsEtcd<'_>, prefix: &str, after: i64) -> Vec<KvEvent> {
    etcd.history(prefix, after + 1, Duration::from_secs(1))
        .expect("history")
}

/// The sonde leader: the election key with the oldest create revision.
fn sonde_leader(etcd: &NsEtcd<'_>) -> Option<String> {
    let out = etcd
        .ctl(&[
            "get",
            "--prefix",
            "/sonde/election",
            "--sort-by=CREATE",
            "--order=ASCEND",
            "--limit=1",
            "--print-value-only",
        ])
        .ok()?;
    out.lines()
        .next()
        .map(str::to_owned)
        .filter(|s| !s.is_empty())
}

fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> (T, Duration) {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return (v, start.elapsed());
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait until every check has `replicas` replicas among `count` live nodes, every node runs
/// exactly its share, and every check's cluster health is healthy.
fn wait_ready(
    etcd: &NsEtcd<'_>,
    nodes: &[Node],
    checks: usize,
    replicas: usize,
) -> BTreeMap<String, Assigned> {
    let start = Instant::now();
    let (a, _) = wait_for("the assignment", Duration::from_secs(20), || {
        let a = assignment(etcd);
        let r = replicas_of(&a);
        (a.len() == nodes.len() && r.len() == checks && r.values().all(|s| s.len() == replicas))
            .then_some(a)
    });
    for n in nodes {
        wait_for(
            &format!("{} runs its share, all healthy", n.id),
            Duration::from_secs(10),
            || {
                let s = n.states();
                (s.keys().eq(a[&n.id].checks.iter()) && s.values().all(|st| st == "healthy"))
                    .then_some(())
            },
        );
    }
    let sets = replicas_of(&a);
    wait_for(
        "every replica's observation and every check healthy in etcd",
        Duration::from_secs(20),
        || {
            let obs: BTreeMap<String, String> = etcd
                .get_prefix("/sonde/obs/")
                .unwrap_or_default()
                .into_iter()
                .collect();
            let h = etcd.get_prefix("/sonde/health/").unwrap_or_default();
            let obs_ok = sets.iter().all(|(c, rs)| {
                rs.iter().all(|r| {
                    obs.get(&format!("/sonde/obs/{c}/{r}"))
                        .is_some_and(|v| is_healthy(v))
                })
            });
            (obs_ok && h.len() == checks && h.iter().all(|(_, v)| is_healthy(v))).then_some(())
        },
    );
    println!(
        "ready: {checks} checks x{replicas} over {} nodes, all healthy after {:?}",
        nodes.len(),
        start.elapsed()
    );
    a
}

#[test]
fn etcd_leader_killed_sonde_carries_on_and_keeps_transitions() {
    if !lab::privileged_or_skip() {
        return;
    }
    let _serial = serial();
    let lab = Lab::new("cf-raft");
    let mut etcd = lab.etcd();
    const CHECKS: usize = 30;
    put_checks(&etcd, CHECKS, 2);
    let nodes = lab.nodes(&etcd, 3);
    let a = wait_ready(&etcd, &nodes, CHECKS, 2);
    let target = check_id(0);
    let replicas = replicas_of(&a)[&target].clone();
    let sonde_before = sonde_leader(&etcd);
    let rev0 = etcd.revision().expect("revision");
    // One check per node to follow its probing.
    let probe_of: Vec<(String, (u64, u64))> = nodes
        .iter()
        .map(|n| {
            let c = a[&n.id].checks.iter().next().expect("a check").clone();
            let last = n.last_result(&c).unwrap_or_else(|| {
                panic!(
                    "{}: no result for {c}: {:?}",
                    n.id,
                    n.daemon.client().get(&format!("/v1/checks/{c}"))
                )
            });
            (c, last)
        })
        .collect();

    let raft_leader = etcd
        .leader()
        .expect("endpoint status")
        .expect("a raft leader");
    let killed = Instant::now();
    let killed_ms = unix_ms();
    etcd.kill(raft_leader).expect("kill -9 the raft leader");
    lab.target_down(&check_addr(0));
    println!("killed etcd raft leader m{raft_leader}; {target} down at once");

    let (new_raft, t_raft) = wait_for("a new raft leader", Duration::from_secs(10), || {
        etcd.leader().ok().flatten()
    });
    let mut t_obs = BTreeMap::new();
    for r in &replicas {
        wait_for(
            &format!("/sonde/obs/{target}/{r} unhealthy"),
            Duration::from_secs(15),
            || (obs_health(&etcd, &target, r).as_deref() == Some("unhealthy")).then_some(()),
        );
        let in_etcd = killed.elapsed();
        // When the replica saw the transition (its local history, wall clock).
        let node = nodes.iter().find(|n| n.id == *r).expect("replica node");
        let local = node
            .transitions(&target)
            .last()
            .map(|(_, at)| Duration::from_millis(at.saturating_sub(killed_ms)));
        t_obs.insert(r.clone(), (local, in_etcd));
    }
    wait_for(
        &format!("/sonde/health/{target} unhealthy"),
        Duration::from_secs(15),
        || (cluster_health(&etcd, &target).as_deref() == Some("unhealthy")).then_some(()),
    );
    let t_health = killed.elapsed();
    println!(
        "new raft leader m{new_raft} after {t_raft:?}; observations (local transition, in \
         etcd) {t_obs:?}, cluster health unhealthy {t_health:?} after the kill"
    );

    // Probing went on everywhere: every followed check has newer results.
    let now_ms = unix_ms();
    for (n, (c, (seq0, at0))) in nodes.iter().zip(&probe_of) {
        let (seq, at) = n.last_result(c).expect("a result");
        println!(
            "{}: {c} seq {seq0} -> {seq}, last result {} ms ago",
            n.id,
            now_ms.saturating_sub(at)
        );
        assert!(seq > *seq0 && at > *at0, "{} kept probing {c}", n.id);
        assert!(
            now_ms.saturating_sub(at) < 3_000,
            "{}: {c}'s last result is recent",
            n.id
        );
    }
    // No transition lost: each replica's observation went healthy -> unhealthy.
    let hist = etcd
        .history("/sonde/obs/", rev0 + 1, Duration::from_secs(1))
        .expect("history");
    for r in &replicas {
        let key = format!("/sonde/obs/{target}/{r}");
        let seq = health_sequence(&hist, &key);
        assert_eq!(seq, ["unhealthy"], "{key} after the kill");
    }
    // Membership held through the raft election.
    let live = live_nodes(&etcd);
    assert_eq!(live.len(), 3, "every node still registered: {live:?}");
    println!(
        "sonde leader {sonde_before:?} -> {:?}; nodes {live:?}",
        sonde_leader(&etcd)
    );
    drop(nodes);
}

#[test]
fn etcd_outage_transitions_are_flushed_in_order() {
    if !lab::privileged_or_skip() {
        return;
    }
    let _serial = serial();
    let lab = Lab::new("cf-outage");
    let mut etcd = lab.etcd();
    const CHECKS: usize = 12;
    put_checks(&etcd, CHECKS, 2);
    let nodes = lab.nodes(&etcd, 3);
    let a = wait_ready(&etcd, &nodes, CHECKS, 2);
    let target = check_id(0);
    let replicas: Vec<&Node> = nodes
        .iter()
        .filter(|n| a[&n.id].checks.contains(&target))
        .collect();
    let rev0 = etcd.revision().expect("revision");

    let stopped = Instant::now();
    for i in 0..etcd.len() {
        etcd.stop(i).expect("stop etcd member");
    }
    println!("all etcd members stopped in {:?}", stopped.elapsed());
    let before: Vec<usize> = replicas
        .iter()
        .map(|n| n.transitions(&target).len())
        .collect();
    lab.target_down(&check_addr(0));
    for (n, &b) in replicas.iter().zip(&before) {
        let (_, t) = wait_for(
            &format!("{}: {target} unhealthy locally", n.id),
            Duration::from_secs(10),
            || {
                let tr = n.transitions(&target);
                (tr.len() > b && tr.last().is_some_and(|(to, _)| to == "unhealthy")).then_some(())
            },
        );
        println!("{}: {target} unhealthy locally after {t:?}", n.id);
    }
    lab.targets_up();
    for (n, &b) in replicas.iter().zip(&before) {
        let (_, t) = wait_for(
            &format!("{}: {target} healthy again locally", n.id),
            Duration::from_secs(10),
            || {
                let tr = n.transitions(&target);
                let new: Vec<&str> = tr[b.min(tr.len())..]
                    .iter()
                    .map(|(to, _)| to.as_str())
                    .collect();
                (new == ["unhealthy", "healthy"]).then_some(())
            },
        );
        println!("{}: {target} healthy again locally after {t:?}", n.id);
    }
    // An outage longer than the membership lease TTL.
    let min_outage = Duration::from_secs(TTL_SECS + 2);
    std::thread::sleep(min_outage.saturating_sub(stopped.elapsed()));
    let outage = stopped.elapsed();

    let restarted = Instant::now();
    for i in 0..etcd.len() {
        etcd.restart(i).expect("restart etcd member");
    }
    etcd.wait_healthy(Duration::from_secs(15))
        .expect("etcd healthy again");
    let t_etcd = restarted.elapsed();
    let mut t_flush = BTreeMap::new();
    for n in &replicas {
        let key = format!("/sonde/obs/{target}/{}", n.id);
        // The last transition (healthy again) lands last: wait for it, then read the
        // key's whole history.
        wait_for(
            &format!("{key} written since the outage"),
            Duration::from_secs(20),
            || {
                let (v, rev) = etcd.get(&key).ok()??;
                (rev > rev0 && is_healthy(&v)).then_some(())
            },
        );
        t_flush.insert(n.id.clone(), restarted.elapsed());
    }
    let hist = etcd
        .history("/sonde/obs/", rev0 + 1, Duration::from_secs(1))
        .expect("history");
    for n in &replicas {
        let key = format!("/sonde/obs/{target}/{}", n.id);
        let seq = health_sequence(&hist, &key);
        assert_eq!(
            seq,
            ["unhealthy", "healthy"],
            "{key}: both transitions, in order; log of {}:\n{}",
            n.id,
            n.log()
        );
    }
    println!(
        "outage {outage:?}; etcd healthy {t_etcd:?} after restart; observations flushed at \
         {t_flush:?} after restart"
    );
    // Every revision of each replica's key, for the report.
    for n in &replicas {
        let key = format!("/sonde/obs/{target}/{}", n.id);
        let revs: Vec<(i64, String)> = hist
            .iter()
            .filter(|e| e.key == key)
            .map(|e| {
                let h = e.value.as_deref().and_then(health_of).unwrap_or_default();
                (e.revision, h)
            })
            .collect();
        println!("{key} since the outage: {revs:?}");
    }
    let cluster = health_sequence(
        &hist_of(&etcd, "/sonde/health/", rev0),
        &format!("/sonde/health/{target}"),
    );
    // Registrations written before the outage and still there: the leases survived it.
    let kept: Vec<String> = etcd
        .ctl(&["get", "--prefix", "/sonde/nodes/", "-w", "json"])
        .ok()
        .and_then(|o| serde_json::from_str::<Value>(&o).ok())
        .map(|v| {
            v["kvs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|kv| kv["mod_revision"].as_i64().is_some_and(|r| r <= rev0))
                .map(|kv| kv["lease"].to_string())
                .collect()
        })
        .unwrap_or_default();
    println!(
        "/sonde/health/{target} since the outage: {cluster:?}; nodes {:?}, {} of them on \
         their pre-outage lease",
        live_nodes(&etcd),
        kept.len()
    );
    drop(nodes);
}

#[test]
fn stopped_sonde_leader_is_fenced_out_and_rejoins() {
    if !lab::privileged_or_skip() {
        return;
    }
    let _serial = serial();
    let lab = Lab::new("cf-fence");
    let etcd = lab.etcd();
    const CHECKS: usize = 30;
    put_checks(&etcd, CHECKS, 2);
    let nodes = lab.nodes(&etcd, 3);
    let a = wait_ready(&etcd, &nodes, CHECKS, 2);
    let (old, _) = wait_for("a sonde leader", Duration::from_secs(5), || {
        sonde_leader(&etcd)
    });
    let old_term = a.values().next().expect("a record").term;
    let old_node = nodes.iter().find(|n| n.id == old).expect("leader node");

    let rev_stop = etcd.revision().expect("revision");
    let stopped = Instant::now();
    old_node.signal(libc::SIGSTOP);
    println!("SIGSTOP sonde leader {old} (term {old_term})");
    wait_for(
        &format!("{old}'s registration expires"),
        Duration::from_secs(TTL_SECS + 5),
        || (!live_nodes(&etcd).contains(&old)).then_some(()),
    );
    let t_gone = stopped.elapsed();
    let (new, _) = wait_for("a new sonde leader", Duration::from_secs(10), || {
        sonde_leader(&etcd).filter(|l| *l != old)
    });
    let t_leader = stopped.elapsed();
    // The check set changes while the old leader sleeps.
    put_check(&etcd, CHECKS, 2);
    let new_check = check_id(CHECKS);
    let (new_term, _) = wait_for(
        "the new leader's assignment without the old one",
        Duration::from_secs(10),
        || {
            let a = assignment(&etcd);
            let r = replicas_of(&a);
            let terms: BTreeSet<i64> = a.values().map(|x| x.term).collect();
            (a.len() == 2
                && !a.contains_key(&old)
                && a.values().all(|x| x.leader == new)
                && terms.len() == 1
                && r.len() == CHECKS + 1
                && r.values().all(|s| s.len() == 2))
            .then(|| *terms.first().expect("a term"))
        },
    );
    assert!(new_term > old_term, "a newer term: {new_term} > {old_term}");
    println!(
        "{old} gone after {t_gone:?}; new leader {new} after {t_leader:?}; its term \
         {new_term} assignment with {new_check} after {:?} (times since SIGSTOP)",
        stopped.elapsed()
    );
    // Stopped well past the lease TTL.
    let min_pause = Duration::from_secs(TTL_SECS + 1);
    std::thread::sleep(min_pause.saturating_sub(stopped.elapsed()));
    let rev_cont = etcd.revision().expect("revision");
    let paused = stopped.elapsed();
    old_node.signal(libc::SIGCONT);
    let resumed = Instant::now();
    println!("SIGCONT {old} after {paused:?} stopped");

    let (share, t_rejoin) = wait_for(
        &format!("{old} rejoins and gets a share"),
        Duration::from_secs(15),
        || {
            let a = assignment(&etcd);
            let r = replicas_of(&a);
            (live_nodes(&etcd).contains(&old)
                && a.len() == 3
                && a.get(&old).is_some_and(|x| !x.checks.is_empty())
                && r.len() == CHECKS + 1
                && r.values().all(|s| s.len() == 2))
            .then(|| a[&old].checks.clone())
        },
    );
    let (_, t_runs) = wait_for(
        &format!("{old} runs its share"),
        Duration::from_secs(10),
        || {
            let running: BTreeSet<String> = old_node.states().into_keys().collect();
            (running == share).then_some(())
        },
    );
    println!(
        "{old} registered again with {} checks after {t_rejoin:?}, runs them after {t_runs:?} more",
        share.len()
    );
    // Give a stale leader loop time to try anything it would.
    std::thread::sleep(Duration::from_secs(2));
    // The fencing property: nothing the stale leader decided in its old term lands
    // after it wakes. (On a loaded machine a lease may legitimately lapse and a later
    // term begin, so the check is "never the old leader's term", not "exactly the
    // new term".)
    assert_ne!(
        sonde_leader(&etcd).as_deref(),
        Some(old.as_str()),
        "{old} is a follower"
    );
    let a = assignment(&etcd);
    for (n, rec) in &a {
        assert!(
            rec.term >= new_term && !(rec.leader == old && rec.term == old_term),
            "/sonde/assign/{n}: {rec:?}"
        );
    }
    // Every leader write since the SIGCONT carries the new term.
    let mut writes = 0;
    for prefix in ["/sonde/assign/", "/sonde/health/", "/sonde/suspects/"] {
        let hist = etcd
            .history(prefix, rev_cont + 1, Duration::from_secs(1))
            .expect("history");
        for e in &hist {
            let Some(v) = &e.value else { continue };
            let rec: Value = serde_json::from_str(v).expect("record json");
            assert!(
                rec["term"].as_i64().is_some_and(|t| t >= new_term),
                "{} at revision {}: written under the old term: {v}",
                e.key,
                e.revision
            );
            if prefix == "/sonde/assign/" {
                assert!(
                    !(rec["leader"].as_str() == Some(old.as_str())
                        && rec["term"].as_i64() == Some(old_term)),
                    "{}: the stale leader's write landed: {v}",
                    e.key
                );
            }
            writes += 1;
        }
    }
    // Every target stayed up: the cluster's verdicts never left `healthy` (a new check
    // starts without one) through the failover.
    let hist = hist_of(&etcd, "/sonde/health/", rev_stop);
    let flaps: Vec<(i64, &str, &str)> = hist
        .iter()
        .filter(|e| !e.value.as_deref().is_some_and(is_healthy))
        .map(|e| {
            (
                e.revision,
                e.key.as_str(),
                e.value.as_deref().unwrap_or("<deleted>"),
            )
        })
        .filter(|(_, k, _)| !k.ends_with(&new_check))
        .collect();
    println!(
        "{} health writes since the SIGSTOP, not healthy: {flaps:?}",
        hist.len()
    );
    assert!(
        flaps.is_empty(),
        "the new leader keeps the verdicts it has no quorum for: {flaps:?}"
    );
    let log = old_node.log();
    let fenced = log.contains("a fenced write was refused");
    let stepped = log.contains("stepping down");
    println!(
        "{writes} leader writes since the SIGCONT, all term {new_term} by {new}; {old}'s log: \
         fenced write refused: {fenced}, stepped down: {stepped} ({:?} after SIGCONT)",
        resumed.elapsed()
    );
    // The woken node's own clock says its lead deadline passed while it slept: it steps
    // down before anything else of its leader loop runs (the strict proof of fencing is
    // the etcd history above: no write after the SIGCONT carries the old term).
    assert!(
        stepped,
        "{old} noticed on its own clock that it is no longer leader; log:\n{log}"
    );
    assert_eq!(
        old_node.reports_leader(),
        Some(false),
        "{old} reports not-leader"
    );
    let words = ["elected", "fenced", "stepping", "registered", "lease lost"];
    for line in log.lines().filter(|l| words.iter().any(|w| l.contains(w))) {
        println!("  {old}: {line}");
    }
    drop(nodes);
}

#[test]
fn leader_cut_off_from_etcd_steps_down_before_its_lease_ttl() {
    if !lab::privileged_or_skip() {
        return;
    }
    let _serial = serial();
    let lab = Lab::new("cf-cut");
    let etcd = lab.etcd();
    const CHECKS: usize = 12;
    put_checks(&etcd, CHECKS, 2);
    let nodes = lab.nodes(&etcd, 3);
    wait_ready(&etcd, &nodes, CHECKS, 2);
    let (old, _) = wait_for("a sonde leader", Duration::from_secs(5), || {
        sonde_leader(&etcd)
    });
    let cut = nodes.iter().find(|n| n.id == old).expect("leader node");
    let (_, _) = wait_for(
        &format!("{old} reports itself leader"),
        Duration::from_secs(5),
        || cut.reports_leader().filter(|l| *l),
    );
    for n in nodes.iter().filter(|n| n.id != old) {
        assert_eq!(n.reports_leader(), Some(false), "{} is a follower", n.id);
    }

    // Cut it off from every etcd member; the targets stay reachable.
    let etcd_addr = "198.18.1.10";
    cut.ns
        .nft("add table inet cut")
        .and_then(|()| {
            cut.ns
                .nft("add chain inet cut out { type filter hook output priority 0; }")
        })
        .and_then(|()| {
            cut.ns
                .nft("add chain inet cut in { type filter hook input priority 0; }")
        })
        .expect("nft table");
    let t0 = Instant::now();
    cut.ns
        .nft(&format!("add rule inet cut out ip daddr {etcd_addr} drop"))
        .and_then(|()| {
            cut.ns
                .nft(&format!("add rule inet cut in ip saddr {etcd_addr} drop"))
        })
        .expect("nft drop");
    println!("{old} (leader) cut off from etcd");

    // Poll the three things a user would look at, each as soon as it happens.
    let ttl = Duration::from_secs(TTL_SECS);
    let (mut t_stepdown, mut t_gone, mut t_new) = (None, None, None);
    let mut new = None;
    while t_stepdown.is_none() || t_gone.is_none() || t_new.is_none() {
        assert!(
            t0.elapsed() < ttl + Duration::from_secs(10),
            "after {:?}: stepped down {t_stepdown:?}, registration gone {t_gone:?}, new \
             leader {t_new:?}; log of {old}:\n{}",
            t0.elapsed(),
            cut.log()
        );
        if t_stepdown.is_none() && cut.reports_leader() == Some(false) {
            t_stepdown = Some(t0.elapsed());
        }
        if t_gone.is_none() && !live_nodes(&etcd).contains(&old) {
            t_gone = Some(t0.elapsed());
        }
        if t_new.is_none() {
            if let Some(l) = sonde_leader(&etcd).filter(|l| *l != old) {
                new = Some(l);
                t_new = Some(t0.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (t_stepdown, t_gone, t_new) = (
        t_stepdown.expect("set"),
        t_gone.expect("set"),
        t_new.expect("set"),
    );
    let new = new.expect("new leader");
    println!(
        "{old} cut off: reports not-leader after {t_stepdown:?} (TTL {ttl:?}, own deadline 2/3 \
         TTL after its last renewal); etcd expired its registration after {t_gone:?}; new \
         leader {new} after {t_new:?} (times since the cut)"
    );
    assert!(
        t_stepdown < ttl,
        "{old} stepped down after {t_stepdown:?}, not before its lease TTL {ttl:?}"
    );
    assert!(
        t_stepdown < t_gone,
        "{old} stepped down ({t_stepdown:?}) before etcd expired its lease ({t_gone:?})"
    );
    assert!(
        t_stepdown < t_new,
        "{old} stepped down ({t_stepdown:?}) before {new} was elected ({t_new:?})"
    );
    let log = cut.log();
    let line = log
        .lines()
        .find(|l| l.contains("stepping down"))
        .unwrap_or_else(|| panic!("{old} logs its step down; log:\n{log}"));
    println!("  {old}: {line}");
    assert!(
        cut.metric("sonde_cluster_stepdowns_total")
            .is_some_and(|v| v >= 1.0),
        "{old} counts its step down"
    );
    let new_node = nodes.iter().find(|n| n.id == new).expect("new leader node");
    wait_for(
        &format!("{new} reports itself leader"),
        Duration::from_secs(5),
        || new_node.reports_leader().filter(|l| *l),
    );
    // The cut node keeps probing its last assignment meanwhile.
    assert!(
        !cut.states().is_empty(),
        "{old} keeps probing while cut off"
    );

    // The link returns: it rejoins as a follower and runs its share.
    let t1 = Instant::now();
    cut.ns.nft("delete table inet cut").expect("nft delete");
    let (share, t_rejoin) = wait_for(
        &format!("{old} rejoins and gets a share"),
        Duration::from_secs(20),
        || {
            let a = assignment(&etcd);
            let r = replicas_of(&a);
            (live_nodes(&etcd).contains(&old)
                && a.len() == 3
                && a.get(&old)
                    .is_some_and(|x| !x.checks.is_empty() && x.leader == new)
                && r.len() == CHECKS
                && r.values().all(|s| s.len() == 2))
            .then(|| a[&old].checks.clone())
        },
    );
    wait_for(
        &format!("{old} runs its share"),
        Duration::from_secs(10),
        || {
            let running: BTreeSet<String> = cut.states().into_keys().collect();
            (running == share).then_some(())
        },
    );
    assert_eq!(cut.reports_leader(), Some(false), "{old} is a follower");
    assert_eq!(sonde_leader(&etcd).as_deref(), Some(new.as_str()));
    println!(
        "link back: {old} registered again with {} checks after {t_rejoin:?}, as a follower of {new}",
        share.len()
    );
    let _ = t1;
    drop(nodes);
}

#[test]
fn node_cut_off_from_targets_is_suspect_and_counts_again() {
    if !lab::privileged_or_skip() {
        return;
    }
    let _serial = serial();
    let lab = Lab::new("cf-suspect");
    let etcd = lab.etcd();
    const CHECKS: usize = 12;
    put_checks(&etcd, CHECKS, 3);
    let nodes = lab.nodes(&etcd, 3);
    wait_ready(&etcd, &nodes, CHECKS, 3);
    let cut = &nodes[2];
    let suspect_key = format!("/sonde/suspects/{}", cut.id);
    let rev0 = etcd.revision().expect("revision");

    let t0 = Instant::now();
    cut.ns
        .ip(&["route", "del", "198.19.0.0/16"])
        .expect("remove the route to the targets");
    let (_, t_suspect) = wait_for(
        &format!("{suspect_key} appears"),
        Duration::from_secs(15),
        || etcd.get(&suspect_key).ok().flatten(),
    );
    let (_, t_local) = wait_for(
        &format!("{} sees every target down", cut.id),
        Duration::from_secs(10),
        || {
            let s = cut.states();
            (s.len() == CHECKS && s.values().all(|st| st == "unhealthy")).then_some(())
        },
    );
    println!(
        "{} cut off: suspect after {t_suspect:?}, all its checks unhealthy locally after {:?}",
        cut.id,
        t_suspect + t_local
    );
    // Stay cut a little while; the targets stay healthy in etcd.
    std::thread::sleep(Duration::from_secs(2));
    for (k, v) in etcd.get_prefix("/sonde/health/").expect("health") {
        assert!(is_healthy(&v), "{k} stays healthy: {v}");
    }
    cluster_views_show_the_suspect(&nodes, &cut.id);

    let t1 = Instant::now();
    cut.ns
        .add_route("198.19.0.0/16", TARGET_ADDR)
        .expect("route back");
    let (_, t_back) = wait_for(
        &format!("{} sees the targets again", cut.id),
        Duration::from_secs(10),
        || {
            let s = cut.states();
            (s.len() == CHECKS && s.values().all(|st| st == "healthy")).then_some(())
        },
    );
    let (_, t_cleared) = wait_for(
        &format!("{suspect_key} removed"),
        Duration::from_secs(HOLD_DOWN_MS / 1000 + 15),
        || {
            etcd.get(&suspect_key)
                .ok()
                .flatten()
                .is_none()
                .then_some(())
        },
    );
    println!(
        "link back: {} healthy locally after {t_back:?}, suspicion lifted after {:?} \
         (hold-down {HOLD_DOWN_MS} ms)",
        cut.id,
        t_back + t_cleared
    );
    assert!(
        t_back + t_cleared >= Duration::from_millis(HOLD_DOWN_MS),
        "not before the hold-down"
    );
    // Nothing was marked unhealthy during the cut.
    let hist = etcd
        .history("/sonde/health/", rev0 + 1, Duration::from_secs(1))
        .expect("history");
    for e in &hist {
        let v = e.value.as_deref().unwrap_or_default();
        assert!(
            health_of(v).as_deref() != Some("unhealthy"),
            "{} at revision {}: {v}",
            e.key,
            e.revision
        );
    }
    println!(
        "{} health writes since the cut, none unhealthy; cut lasted {:?}",
        hist.len(),
        t1 - t0
    );

    // Its opinion counts again: a real outage is decided by all three replicas.
    let target = check_id(1);
    lab.target_down(&check_addr(1));
    let (rec, t_down) = wait_for(
        &format!("/sonde/health/{target} unhealthy"),
        Duration::from_secs(10),
        || {
            let (v, _) = etcd.get(&format!("/sonde/health/{target}")).ok()??;
            let rec: Value = serde_json::from_str(&v).ok()?;
            (rec["health"] == "unhealthy").then_some(rec)
        },
    );
    println!("{target} down for real: unhealthy after {t_down:?}: {rec}");
    assert_eq!(rec["counted"], 3, "{} counts again: {rec}", cut.id);
    assert_eq!(rec["ignored_suspect"], 0, "{rec}");
    drop(nodes);
}

/// While `suspect` is suspect: every node's `GET /v1/cluster` and metrics, and the
/// status page of the first node in a real browser, show 3 nodes, one leader, shares
/// summing to 1, and `suspect` marked.
fn cluster_views_show_the_suspect(nodes: &[Node], suspect: &str) {
    let (views, took) = wait_for(
        "every node's cluster view shows the suspect",
        Duration::from_secs(10),
        || {
            let views: Vec<Value> = nodes
                .iter()
                .filter_map(|n| n.daemon.client().get("/v1/cluster").ok())
                .collect();
            (views.len() == nodes.len()
                && views.iter().all(|v| {
                    v["mode"] == "cluster"
                        && v["cluster"]["suspects"] == serde_json::json!([suspect])
                        && v["cluster"]["nodes"].as_array().map(Vec::len) == Some(3)
                }))
            .then_some(views)
        },
    );
    println!("cluster views show {suspect} suspect after {took:?}");
    for v in &views {
        let c = &v["cluster"];
        let list = c["nodes"].as_array().expect("nodes");
        let leaders: Vec<&Value> = list.iter().filter(|n| n["leader"] == true).collect();
        assert_eq!(leaders.len(), 1, "one leader: {c}");
        assert_eq!(leaders[0]["id"], c["leader"], "{c}");
        let share: f64 = list.iter().filter_map(|n| n["share"].as_f64()).sum();
        assert!((share - 1.0).abs() < 1e-6, "shares sum to 1: {c}");
        for n in list {
            assert_eq!(n["suspect"] == true, n["id"] == suspect, "{c}");
        }
    }
    // Metrics: exactly one node says it is the leader; every node exports the suspect.
    let mut leaders = 0;
    for n in nodes {
        let text = n.daemon.client().metrics().expect("metrics");
        let sample = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_owned)
        };
        leaders += u32::from(sample("sonde_cluster_is_leader{").as_deref() == Some("1"));
        assert_eq!(
            sample("sonde_cluster_leader_known{").as_deref(),
            Some("1"),
            "{}",
            n.id
        );
        assert_eq!(
            sample(&format!("sonde_cluster_node_suspect{{node=\"{suspect}\"}}")).as_deref(),
            Some("1"),
            "{}",
            n.id
        );
        assert_eq!(
            sample("sonde_cluster_nodes{").as_deref(),
            Some("3"),
            "{}",
            n.id
        );
    }
    assert_eq!(leaders, 1, "sum(sonde_cluster_is_leader) == 1");

    if !sonde_tests::browser::available() {
        lab::skip_or_fail("chromium and chromium-driver are not installed (cargo xtask setup)");
        return;
    }
    let viewer = nodes.iter().find(|n| n.id != suspect).expect("a viewer");
    let profile = TempDir::new("chromium");
    let b = sonde_tests::browser::Browser::start(&viewer.ns, &profile.0).expect("browser");
    b.goto(&format!("http://{PAGE_ADDR}/"))
        .expect("open the page");
    let (rows, took) = b
        .wait_for(
            "if (document.getElementById('cluster').hidden) return null;
             const rows = Array.from(document.querySelectorAll('#nodes tbody tr'));
             return rows.length === 3 ? rows.map(r => [r.dataset.node, r.dataset.suspect,
               r.children[1].textContent, r.children[3].textContent, r.children[4].textContent]) : null;",
            Duration::from_secs(10),
        )
        .expect("cluster section with 3 nodes");
    println!(
        "status page of {} shows the cluster after {took:?}: {rows}",
        viewer.id
    );
    let rows = rows.as_array().expect("rows");
    let mut leaders = 0;
    for r in rows {
        let id = r[0].as_str().unwrap_or_default();
        assert_eq!(r[1] == "1", id == suspect, "{r}");
        let opinion = r[4].as_str().unwrap_or_default();
        assert_eq!(
            opinion.starts_with("suspect"),
            id == suspect,
            "shown in text: {r}"
        );
        leaders += u32::from(r[2] == "leader");
        assert!(
            r[3].as_str().unwrap_or_default().ends_with('%'),
            "share shown: {r}"
        );
    }
    assert_eq!(leaders, 1, "{rows:?}");
    let summary = b
        .eval(
            "return document.getElementById('cluster-summary').textContent;",
            &[],
        )
        .expect("summary");
    assert!(
        summary
            .as_str()
            .unwrap_or_default()
            .contains(&format!("suspect: {suspect}")),
        "{summary}"
    );
    let errors: Vec<_> = b
        .console()
        .expect("console")
        .into_iter()
        .filter(|e| e.level == "SEVERE")
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");
    b.screenshot(&sonde_tests::browser::artefacts_dir().join("status-page-cluster.png"))
        .expect("screenshot");
}
