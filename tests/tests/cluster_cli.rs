//! The CLI against a real cluster: a 3-member etcd cluster and 3 sonde nodes, each in a
//! namespace on a lab switch (198.18.1.0/24), a target namespace answering for
//! 198.19.0.0/16, and the real `sonde` binary run as a user would run it (inside the
//! etcd host's namespace, the only place the members' addresses are reachable from).
//!
//! - `sonde check add --etcd` validates as the config file does (bad fields named,
//!   nonzero exit, nothing stored), refuses duplicates; a valid check is assigned by the
//!   leader to `replicas` nodes, which probe it with their own `[defaults]` applied
//!   (the nodes' file sets `interval = "300ms"`; the check does not), and its quorum
//!   health appears in `sonde status --etcd`.
//! - `sonde watch --etcd --json`, started before the target goes down, streams the
//!   replicas' opinions and the cluster verdict going unhealthy and back.
//! - `sonde check rm --etcd` stops it everywhere, the leader deletes its verdict and
//!   opinions; removing an unknown id fails clearly.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::Value;
use sonde::lab::{self, HttpResponder, Netns, Port, Switch};
use sonde_tests::{
    daemon::{sonde_bin, Daemon, TempDir},
    etcd_ns::NsEtcd,
};

const TARGET_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 100);
const ETCD_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);

struct Node {
    id: String,
    _ns: Netns,
    daemon: Daemon,
    _port: Port,
}

/// What a CLI run gave.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Run `sonde ARGS --etcd <endpoints>` in `ns`.
fn sonde(ns: &Netns, etcd: &NsEtcd<'_>, args: &[&str]) -> Run {
    let bin = sonde_bin().display().to_string();
    let eps = etcd.endpoints().join(",");
    let mut argv = vec![bin.as_str()];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["--etcd", &eps]);
    let out = ns.exec_unchecked(&argv).expect("run sonde");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
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

/// `sonde status --etcd --json`: (exit code, the check's row).
fn cluster_row(ns: &Netns, etcd: &NsEtcd<'_>, id: &str) -> (i32, Option<Value>) {
    let r = sonde(ns, etcd, &["status", "--json"]);
    let v: Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("status JSON: {e}: {}{}", r.stdout, r.stderr));
    let row = v["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["id"] == id)
        .cloned();
    (r.code, row)
}

/// The JSON events of the watch output file so far.
fn watch_events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn checks_added_through_etcd_are_assigned_probed_judged_and_watched() {
    if !lab::privileged_or_skip() {
        return;
    }
    let dir = TempDir::new("cluster-cli");
    let sw = Switch::new().expect("switch");
    let etcd_host = Netns::new("etcd").expect("etcd ns");
    sw.attach(&etcd_host, ETCD_ADDR, 24).expect("attach etcd");
    let etcd = NsEtcd::start(&etcd_host, ETCD_ADDR, 3, 23790, dir.0.join("etcd")).expect("etcd");
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
    let _web = HttpResponder::start(&target, "0.0.0.0:80", 200, "OK").expect("http");

    let nodes: Vec<Node> = (1..=3u8)
        .map(|i| {
            let id = format!("n{i}");
            let ns = Netns::new(&id).expect("node ns");
            let port = sw
                .attach(&ns, Ipv4Addr::new(198, 18, 1, i), 24)
                .expect("attach node");
            ns.add_route("198.19.0.0/16", TARGET_ADDR).expect("route");
            let d = dir.0.join(&id);
            std::fs::create_dir_all(&d).expect("node dir");
            let config = d.join("daemon.toml");
            // The nodes' defaults: the check added below sets none of these.
            std::fs::write(
                &config,
                "[defaults]\ninterval = \"300ms\"\ntimeout = \"200ms\"\nrise = 1\nfall = 2\n",
            )
            .expect("config");
            let eps = etcd.endpoints().join(",");
            let daemon = Daemon::start(
                &ns,
                &d,
                &config,
                &[
                    "--etcd",
                    &eps,
                    "--node-id",
                    &id,
                    "--iface",
                    &port.host_dev,
                    "--lease-ttl",
                    "3",
                ],
            );
            Node {
                id,
                _ns: ns,
                daemon,
                _port: port,
            }
        })
        .collect();
    let cli = &etcd_host;

    // Invalid checks are refused with the field named, and nothing is stored.
    let bad = sonde(
        cli,
        &etcd,
        &[
            "check",
            "add",
            "--id",
            "web-a",
            "--target",
            "198.19.0.1",
            "--kind",
            "http",
            "--interval",
            "5x",
        ],
    );
    assert_eq!(bad.code, 1, "invalid check refused: {}", bad.stderr);
    assert!(
        bad.stderr.contains("interval") && bad.stderr.contains("\"5x\""),
        "names the field and value: {}",
        bad.stderr
    );
    assert!(
        bad.stderr.contains("target") && bad.stderr.contains("port"),
        "every problem named: {}",
        bad.stderr
    );
    let q = sonde(
        cli,
        &etcd,
        &[
            "check",
            "add",
            "--id",
            "web-a",
            "--target",
            "198.19.0.1:80",
            "--kind",
            "tcp_connect",
            "--replicas",
            "2",
            "--quorum",
            "3",
        ],
    );
    assert_eq!(q.code, 1, "{}", q.stderr);
    assert!(q.stderr.contains("quorum"), "{}", q.stderr);
    assert!(
        etcd.get_prefix("/sonde/checks/").expect("get").is_empty(),
        "nothing stored"
    );

    // A valid check: stored, assigned to 2 nodes, probed with the nodes' defaults.
    let t0 = Instant::now();
    let add = sonde(
        cli,
        &etcd,
        &[
            "check",
            "add",
            "--id",
            "web-a",
            "--target",
            "198.19.0.1:80",
            "--kind",
            "tcp_connect",
            "--replicas",
            "2",
            "--label",
            "pool=a",
        ],
    );
    assert_eq!(add.code, 0, "{}{}", add.stdout, add.stderr);
    assert!(add.stdout.contains("added web-a"), "{}", add.stdout);
    let dup = sonde(
        cli,
        &etcd,
        &[
            "check",
            "add",
            "--id",
            "web-a",
            "--target",
            "198.19.0.9:80",
            "--kind",
            "tcp_connect",
        ],
    );
    assert_eq!(dup.code, 1, "duplicate refused: {}", dup.stderr);
    assert!(dup.stderr.contains("already exists"), "{}", dup.stderr);
    let list = sonde(cli, &etcd, &["check", "list"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    assert!(
        list.stdout.contains("web-a") && list.stdout.contains("198.19.0.1:80"),
        "{}",
        list.stdout
    );

    let (holders, t_assign) =
        wait_for("web-a assigned to 2 nodes", Duration::from_secs(15), || {
            let holders: BTreeSet<String> = etcd
                .get_prefix("/sonde/assign/")
                .unwrap_or_default()
                .into_iter()
                .filter(|(_, v)| v.contains("\"web-a\""))
                .map(|(k, _)| k.trim_start_matches("/sonde/assign/").to_owned())
                .collect();
            (holders.len() == 2).then_some(holders)
        });
    let replicas: Vec<&Node> = nodes.iter().filter(|n| holders.contains(&n.id)).collect();
    for n in &replicas {
        wait_for(
            &format!("{} probes web-a", n.id),
            Duration::from_secs(10),
            || {
                n.daemon
                    .states()
                    .iter()
                    .any(|(id, st)| id == "web-a" && st == "healthy")
                    .then_some(())
            },
        );
        let v = n.daemon.client().get("/v1/checks/web-a").expect("check");
        let iv = &v["spec"]["interval"];
        assert_eq!(
            (iv["secs"].as_u64(), iv["nanos"].as_u64()),
            (Some(0), Some(300_000_000)),
            "{}: the daemon's [defaults] interval applies to the etcd check: {v}",
            n.id
        );
    }
    for n in nodes.iter().filter(|n| !holders.contains(&n.id)) {
        assert!(
            n.daemon.states().is_empty(),
            "{} holds no replica and probes nothing",
            n.id
        );
    }
    let (row, t_health) = wait_for(
        "web-a healthy in sonde status --etcd",
        Duration::from_secs(15),
        || {
            let (code, row) = cluster_row(cli, &etcd, "web-a");
            row.filter(|r| r["health"] == "healthy" && code == 0)
        },
    );
    assert_eq!(row["counted"], 2, "{row}");
    assert_eq!(row["healthy"], 2, "{row}");
    let on: BTreeSet<String> = row["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["node"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(on, holders, "status names the nodes holding it: {row}");
    println!(
        "web-a added: assigned to {holders:?} after {t_assign:?}, healthy in `sonde status \
         --etcd` after {:?} (since the add)",
        t0.elapsed()
    );
    let _ = t_health;
    let table = sonde(cli, &etcd, &["status"]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(
        table.stdout.contains("web-a") && table.stdout.contains("HEALTHY"),
        "{}",
        table.stdout
    );
    println!("{}", table.stdout);
    let show = sonde(cli, &etcd, &["check", "show", "web-a"]);
    assert_eq!(show.code, 0, "{}", show.stderr);
    assert!(
        show.stdout.contains("HEALTHY (2 of 2")
            && holders.iter().all(|n| show.stdout.contains(n.as_str())),
        "show names the verdict and the replicas: {}",
        show.stdout
    );

    // Watch from now on; then the target goes down and comes back.
    let watch_out = dir.0.join("watch.jsonl");
    let bin = sonde_bin().display().to_string();
    let eps = etcd.endpoints().join(",");
    let watch_pid = cli
        .spawn_with(
            &[&bin, "watch", "--json", "--etcd", &eps],
            Stdio::from(std::fs::File::create(&watch_out).expect("watch file")),
            Stdio::null(),
        )
        .expect("spawn watch");
    std::thread::sleep(Duration::from_millis(500));
    let t_down = Instant::now();
    target
        .nft("add rule inet lab input ip daddr 198.19.0.1 tcp dport 80 drop")
        .expect("nft drop");
    let (_, t_seen) = wait_for(
        "the watch streams web-a going unhealthy",
        Duration::from_secs(15),
        || {
            watch_events(&watch_out)
                .iter()
                .any(|e| e["event"] == "health" && e["check"] == "web-a" && e["to"] == "unhealthy")
                .then_some(())
        },
    );
    let (code, row) = cluster_row(cli, &etcd, "web-a");
    let row = row.expect("row");
    assert_eq!(row["health"], "unhealthy", "{row}");
    assert_eq!(code, 1, "status exits 1 when a check is unhealthy");
    println!("target down: the watch showed the cluster verdict after {t_seen:?}");
    target.nft("flush chain inet lab input").expect("nft flush");
    wait_for(
        "the watch streams web-a healthy again",
        Duration::from_secs(15),
        || {
            let ev = watch_events(&watch_out);
            let seq: Vec<&str> = ev
                .iter()
                .filter(|e| e["event"] == "health" && e["check"] == "web-a")
                .filter_map(|e| e["to"].as_str())
                .collect();
            (seq == ["unhealthy", "healthy"]).then_some(())
        },
    );
    let events = watch_events(&watch_out);
    for n in &replicas {
        let seq: Vec<&str> = events
            .iter()
            .filter(|e| e["event"] == "observation" && e["node"] == n.id.as_str())
            .filter_map(|e| e["health"].as_str())
            .collect();
        assert_eq!(
            seq,
            ["unhealthy", "healthy"],
            "{}'s opinions streamed in order",
            n.id
        );
    }
    let revs: Vec<i64> = events
        .iter()
        .filter_map(|e| e["revision"].as_i64())
        .collect();
    assert!(
        revs.windows(2).all(|w| w[0] <= w[1]),
        "events in revision order: {revs:?}"
    );
    println!(
        "down and up again: {} watch events in {:?}",
        events.len(),
        t_down.elapsed()
    );

    // Removal: every node stops it; the watch says so; an unknown id is an error.
    let rm = sonde(cli, &etcd, &["check", "rm", "web-a"]);
    assert_eq!(rm.code, 0, "{}", rm.stderr);
    for n in &replicas {
        wait_for(
            &format!("{} stops web-a", n.id),
            Duration::from_secs(10),
            || n.daemon.states().is_empty().then_some(()),
        );
    }
    wait_for(
        "the watch streams the removal",
        Duration::from_secs(5),
        || {
            watch_events(&watch_out)
                .iter()
                .any(|e| e["event"] == "check_removed" && e["id"] == "web-a")
                .then_some(())
        },
    );
    // The leader deletes its records: no verdict or opinion of web-a stays in etcd.
    let (_, t_clean) = wait_for(
        "web-a's verdict and opinions deleted",
        Duration::from_secs(5),
        || {
            let left = etcd
                .get_prefix("/sonde/obs/web-a/")
                .unwrap_or_default()
                .len()
                + etcd
                    .get_prefix("/sonde/health/web-a")
                    .unwrap_or_default()
                    .len();
            (left == 0).then_some(())
        },
    );
    println!("web-a removed: its records deleted from etcd after {t_clean:?}");
    let again = sonde(cli, &etcd, &["check", "remove", "web-a"]);
    assert_eq!(again.code, 1, "unknown id: {}", again.stderr);
    assert!(
        again.stderr.contains("no check \"web-a\""),
        "{}",
        again.stderr
    );
    cli.kill(watch_pid).expect("stop the watch");
    drop(nodes);
}
