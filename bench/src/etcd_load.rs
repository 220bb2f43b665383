//! sonde-etcd-bench: how many writes the cluster makes to etcd, against how many probes
//! it runs and how many health transitions happen (run by `bench/etcd.sh`, i.e.
//! `cargo xtask bench etcd`).
//!
//! A lab of its own (unique namespace names, removed on exit, also on Ctrl-C): a switch,
//! a 3-member etcd cluster in one namespace (198.18.1.10), N real `sonde run --etcd`
//! daemons each in its own namespace (198.18.1.1..), and a target namespace answering
//! for 198.19.0.0/16. CHECKS checks (one address each) are stored in etcd with
//! REPLICAS replicas; the leader assigns them, every replica probes its share.
//!
//! Phases, each measured over DURATION seconds once the cluster is ready:
//! - **steady**: every target answers;
//! - **flapping**: FLAPPING targets go down and up (nftables drop in the target
//!   namespace) every FLAP_PERIOD / 2 seconds.
//!
//! Per phase: probes/s (sum of the nodes' `sonde_engine_probes_finished_total`),
//! transitions/s (the replicas' opinion changes: `sonde_cluster_observations_written_total`,
//! one etcd put each), cluster verdicts written, and etcd writes/s: the store revision
//! delta (every put, delete or transaction that changes something adds exactly one) and
//! etcd's own `etcd_mvcc_put_total`/`_txn_total`/`_delete_total` from one member's
//! /metrics. Lease keep-alives are not writes to the store and are not in these.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Parser;
use sonde::{
    cli::client::Client,
    cluster::etcd::{Etcd, EtcdOptions, Txn, TxnOp},
    lab::{self, in_netns, HttpResponder, Netns, Port, Switch},
};
use sonde_tests::{daemon::TempDir, etcd_ns::NsEtcd};

/// Arguments.
#[derive(Debug, Parser)]
#[command(about = "etcd writes of a sonde cluster against probes and transitions")]
struct Args {
    /// The `sonde` binary the nodes run.
    #[arg(long)]
    sonde: PathBuf,
    /// Checks stored in etcd (one target address each).
    #[arg(long, default_value_t = 10_000)]
    checks: usize,
    /// sonde nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=50))]
    nodes: u8,
    /// Replicas per check.
    #[arg(long, default_value_t = 2)]
    replicas: u8,
    /// Probe kind of every check (tcp_syn, icmp, tcp_connect).
    #[arg(long, default_value = "tcp_syn")]
    kind: String,
    /// Probe interval of every check.
    #[arg(long, default_value = "2s")]
    interval: String,
    /// Targets that flap in the second phase.
    #[arg(long, default_value_t = 5)]
    flapping: usize,
    /// One down-and-up cycle of a flapping target, seconds.
    #[arg(long, default_value_t = 8.0)]
    flap_period: f64,
    /// Seconds measured per phase.
    #[arg(long, default_value_t = 24)]
    duration: u64,
    /// Seconds to wait for every check to be healthy after the nodes started.
    #[arg(long, default_value_t = 180)]
    ready_timeout: u64,
    /// Append the result rows (TSV) to this file.
    #[arg(long)]
    tsv: Option<PathBuf>,
}

const ETCD_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
const ETCD_PORT: u16 = 23890;
const TARGET_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 100);

/// Set by SIGINT/SIGTERM: stop and clean up.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Sleep `d`, waking early when asked to stop.
fn pause(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if STOP.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
    }
    Ok(())
}

fn check_id(i: usize) -> String {
    format!("c{i:05}")
}

/// 198.19.x.y: 250 addresses per /24, from 198.19.0.1.
fn check_addr(i: usize) -> String {
    format!("198.19.{}.{}", i / 250, i % 250 + 1)
}

/// A sonde node of the lab.
struct Node {
    /// Its namespace: the guard kills the daemon when it drops.
    _ns: Netns,
    _port: Port,
    client: Client,
    dir: PathBuf,
}

/// Counters at one moment.
#[derive(Clone, Copy, Debug, Default)]
struct Snapshot {
    at: Option<Instant>,
    revision: i64,
    puts: f64,
    txns: f64,
    deletes: f64,
    probes: f64,
    observations: f64,
    verdicts: f64,
    assignments: f64,
    dropped: f64,
    stepdowns: f64,
    terms: f64,
}

/// Sum of every sample of metric `name` in Prometheus text.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Run `f` with an etcd client inside the etcd namespace (the members listen there).
fn with_etcd<R: Send>(
    ns: &Netns,
    eps: &[String],
    f: impl AsyncFnOnce(Etcd) -> Result<R> + Send,
) -> Result<R> {
    let eps = eps.to_vec();
    in_netns(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let etcd = Etcd::connect(&eps, EtcdOptions::default()).await?;
            f(etcd).await
        })
    })?
}

fn snapshot(etcd_ns: &Netns, eps: &[String], nodes: &[Node]) -> Result<Snapshot> {
    let revision = with_etcd(etcd_ns, eps, async |e: Etcd| {
        Ok(e.get_prefix("/sonde/no-such-key").await?.revision)
    })?;
    let url = format!("http://{ETCD_ADDR}:{ETCD_PORT}/metrics");
    let out = etcd_ns.exec(&["curl", "-s", "--max-time", "5", &url])?;
    let m = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut s = Snapshot {
        at: Some(Instant::now()),
        revision,
        puts: metric_sum(&m, "etcd_mvcc_put_total"),
        txns: metric_sum(&m, "etcd_mvcc_txn_total"),
        deletes: metric_sum(&m, "etcd_mvcc_delete_total"),
        ..Snapshot::default()
    };
    for n in nodes {
        let text = n.client.metrics().context("node metrics")?;
        s.probes += metric_sum(&text, "sonde_engine_probes_finished_total");
        s.observations += metric_sum(&text, "sonde_cluster_observations_written_total");
        s.verdicts += metric_sum(&text, "sonde_cluster_health_written_total");
        s.assignments += metric_sum(&text, "sonde_cluster_assignments_written_total");
        s.dropped += metric_sum(&text, "sonde_cluster_observations_dropped_total");
        s.stepdowns += metric_sum(&text, "sonde_cluster_stepdowns_total");
        s.terms += metric_sum(&text, "sonde_cluster_terms_total");
    }
    Ok(s)
}

/// One result row.
struct Row {
    phase: &'static str,
    secs: f64,
    probes: f64,
    transitions: f64,
    verdicts: f64,
    writes: f64,
    puts: f64,
    txns: f64,
    deletes: f64,
    dropped: f64,
}

fn row(phase: &'static str, a: &Snapshot, b: &Snapshot) -> Row {
    let secs = match (a.at, b.at) {
        (Some(x), Some(y)) => (y - x).as_secs_f64(),
        _ => 0.0,
    };
    Row {
        phase,
        secs,
        probes: b.probes - a.probes,
        transitions: b.observations - a.observations,
        verdicts: b.verdicts - a.verdicts,
        #[expect(clippy::cast_precision_loss, reason = "revision deltas are small")]
        writes: (b.revision - a.revision) as f64,
        puts: b.puts - a.puts,
        txns: b.txns - a.txns,
        deletes: b.deletes - a.deletes,
        dropped: b.dropped - a.dropped,
    }
}

fn start_node(args: &Args, sw: &Switch, i: u8, eps: &str, dir: &Path) -> Result<Node> {
    let id = format!("n{i}");
    let ns = Netns::new(&id)?;
    let port = sw.attach(&ns, Ipv4Addr::new(198, 18, 1, i), 24)?;
    ns.add_route("198.19.0.0/16", TARGET_ADDR)?;
    let dir = dir.join(&id);
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("daemon.toml");
    std::fs::write(&config, "")?;
    let (socket, token) = (dir.join("sonde.sock"), dir.join("token"));
    let log = std::fs::File::create(dir.join("daemon.log"))?;
    let sonde = args.sonde.display().to_string();
    let (config_s, state, socket_s, token_s) = (
        config.display().to_string(),
        dir.join("state").display().to_string(),
        socket.display().to_string(),
        token.display().to_string(),
    );
    let argv = [
        sonde.as_str(),
        "run",
        "--config",
        &config_s,
        "--state-dir",
        &state,
        "--socket",
        &socket_s,
        "--token-file",
        &token_s,
        "--etcd",
        eps,
        "--node-id",
        &id,
        "--iface",
        &port.host_dev,
        "--lease-ttl",
        "3",
    ];
    ns.spawn_with(&argv, Stdio::null(), Stdio::from(log))?;
    let client = Client::unix(&socket, &token);
    let start = Instant::now();
    while client.get("/v1/info").is_err() {
        if start.elapsed() > Duration::from_secs(15) {
            bail!(
                "{id} did not come up; see {}",
                dir.join("daemon.log").display()
            );
        }
        pause(Duration::from_millis(50))?;
    }
    Ok(Node {
        _ns: ns,
        _port: port,
        client,
        dir,
    })
}

fn run(args: &Args) -> Result<(Vec<Row>, Snapshot)> {
    if !args.sonde.is_file() {
        bail!("{}: no such binary", args.sonde.display());
    }
    let dir = TempDir::new("etcd-bench");
    let sw = Switch::new()?;
    let etcd_ns = Netns::new("etcd")?;
    sw.attach(&etcd_ns, ETCD_ADDR, 24)?;
    let etcd = NsEtcd::start(&etcd_ns, ETCD_ADDR, 3, ETCD_PORT, dir.0.join("etcd"))?;
    let eps = etcd.endpoints();
    let target = Netns::new("tgt")?;
    sw.attach(&target, TARGET_ADDR, 24)?;
    target.add_local_route("198.19.0.0/16")?;
    target.nft("add table inet lab")?;
    target.nft("add chain inet lab input { type filter hook input priority 0; }")?;
    let _web = HttpResponder::start(&target, "0.0.0.0:80", 200, "OK")?;

    // The checks, 100 per transaction.
    let t = Instant::now();
    let (checks, replicas) = (args.checks, args.replicas);
    let (kind, interval) = (args.kind.clone(), args.interval.clone());
    with_etcd(&etcd_ns, &eps, async move |e: Etcd| {
        let ids: Vec<usize> = (0..checks).collect();
        for chunk in ids.chunks(100) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|&i| {
                    let target = if kind == "icmp" {
                        check_addr(i)
                    } else {
                        format!("{}:80", check_addr(i))
                    };
                    let v = serde_json::json!({
                        "check": {"id": check_id(i), "target": target, "kind": kind,
                                  "interval": interval, "timeout": "500ms",
                                  "fast_interval": "250ms", "rise": 1, "fall": 2},
                        "replicas": replicas,
                    });
                    TxnOp::put(
                        format!("/sonde/checks/{}", check_id(i)),
                        v.to_string(),
                        None,
                    )
                })
                .collect();
            e.txn("checks", Txn::new().and_then(ops)).await?;
        }
        Ok(())
    })?;
    println!("{} checks stored in {:.2?}", args.checks, t.elapsed());

    let ep_list = eps.join(",");
    let mut nodes = Vec::new();
    for i in 1..=args.nodes {
        nodes.push(start_node(args, &sw, i, &ep_list, &dir.0)?);
    }
    let t_nodes = Instant::now();
    let before = snapshot(&etcd_ns, &eps, &nodes)?;
    // Ready: a healthy verdict for every check.
    loop {
        let (healthy, opinions) = with_etcd(&etcd_ns, &eps, async |e: Etcd| {
            let count = |l: &sonde::cluster::etcd::Listing| {
                l.kvs
                    .iter()
                    .filter(|kv| {
                        String::from_utf8_lossy(&kv.value).contains("\"health\":\"healthy\"")
                    })
                    .count()
            };
            let h = e.get_prefix("/sonde/health/").await?;
            // Opinions of the current replicas only (a node that held a check before the
            // others joined leaves its old opinion behind; quorum ignores it).
            let a = e.get_prefix("/sonde/assign/").await?;
            let mut current = std::collections::HashSet::new();
            for kv in &a.kvs {
                let v: serde_json::Value = serde_json::from_slice(&kv.value)?;
                let node = v["node"].as_str().unwrap_or_default().to_owned();
                for c in v["checks"].as_array().into_iter().flatten() {
                    let c = c.as_str().unwrap_or_default();
                    current.insert(format!("/sonde/obs/{c}/{node}"));
                }
            }
            let o = e.get_prefix("/sonde/obs/").await?;
            let mut o = o;
            o.kvs
                .retain(|kv| current.contains(String::from_utf8_lossy(&kv.key).as_ref()));
            Ok((count(&h), count(&o)))
        })?;
        let slots = args.checks * usize::from(args.replicas.min(args.nodes));
        if healthy == args.checks && opinions == slots {
            break;
        }
        if t_nodes.elapsed() > Duration::from_secs(args.ready_timeout) {
            let log = std::fs::read_to_string(nodes[0].dir.join("daemon.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let status = nodes[0]
                .client
                .get("/v1/status")
                .map(|v| v.to_string().chars().take(600).collect::<String>())
                .unwrap_or_default();
            let metrics = nodes[0].client.metrics().unwrap_or_default();
            let cluster: Vec<&str> = metrics
                .lines()
                .filter(|l| l.starts_with("sonde_cluster") || l.starts_with("sonde_engine"))
                .collect();
            bail!(
                "only {healthy} of {} checks and {opinions} of {slots} opinions healthy after {} \
                 s; n1: {status}\n{}\nn1's log ends:\n{}",
                args.checks,
                args.ready_timeout,
                cluster.join("\n"),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        pause(Duration::from_millis(500))?;
    }
    let ready = snapshot(&etcd_ns, &eps, &nodes)?;
    println!(
        "{} nodes ready (every check and every replica's opinion healthy in etcd) in {:.1?}",
        args.nodes,
        t_nodes.elapsed()
    );
    let mut rows = vec![row("start-up", &before, &ready)];
    pause(Duration::from_secs(2))?;

    let dur = Duration::from_secs(args.duration);
    let a = snapshot(&etcd_ns, &eps, &nodes)?;
    pause(dur)?;
    let b = snapshot(&etcd_ns, &eps, &nodes)?;
    rows.push(row("steady", &a, &b));

    let flapping: Vec<String> = (0..args.flapping.min(args.checks))
        .map(check_addr)
        .collect();
    let half = Duration::from_secs_f64(args.flap_period / 2.0);
    let a = snapshot(&etcd_ns, &eps, &nodes)?;
    let start = Instant::now();
    let mut down = false;
    while start.elapsed() < dur && !flapping.is_empty() {
        if down {
            target.nft("flush chain inet lab input")?;
        } else {
            let set = flapping.join(", ");
            target.nft(&format!(
                "add rule inet lab input ip daddr {{ {set} }} drop"
            ))?;
        }
        down = !down;
        pause(half.min(dur.saturating_sub(start.elapsed())))?;
    }
    let b = snapshot(&etcd_ns, &eps, &nodes)?;
    target.nft("flush chain inet lab input")?;
    rows.push(row("flapping", &a, &b));
    // The namespace guards stop the daemons, etcd and the servers as they drop.
    drop(nodes);
    Ok((rows, b))
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !lab::privileged_or_skip() {
        bail!("needs root (namespaces, XDP)");
    }
    // SAFETY: installs an async-signal-safe handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let (rows, last) = run(&args)?;
    let mut table = String::new();
    let _ = writeln!(
        table,
        "{:<9} {:>6} {:>10} {:>13} {:>10} {:>14} {:>8} {:>8} {:>8} {:>12} {:>14}",
        "phase",
        "secs",
        "probes/s",
        "transitions/s",
        "verdicts/s",
        "etcd writes/s",
        "puts/s",
        "txns/s",
        "dels/s",
        "writes/1k pr",
        "writes/trans."
    );
    let mut tsv = String::new();
    for r in &rows {
        let per = |x: f64| if r.secs > 0.0 { x / r.secs } else { 0.0 };
        let per_k = if r.probes > 0.0 {
            r.writes * 1000.0 / r.probes
        } else {
            0.0
        };
        let per_t = if r.transitions > 0.0 {
            format!("{:.2}", r.writes / r.transitions)
        } else {
            "-".to_owned()
        };
        let _ = writeln!(
            table,
            "{:<9} {:>6.1} {:>10.0} {:>13.2} {:>10.2} {:>14.2} {:>8.2} {:>8.2} {:>8.2} {:>12.3} {:>14}",
            r.phase,
            r.secs,
            per(r.probes),
            per(r.transitions),
            per(r.verdicts),
            per(r.writes),
            per(r.puts),
            per(r.txns),
            per(r.deletes),
            per_k,
            per_t
        );
        let _ = writeln!(
            tsv,
            "{}\t{}\t{}\t{}\t{}\t{:.1}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            args.checks,
            args.nodes,
            args.replicas,
            args.flapping,
            r.phase,
            r.secs,
            r.probes,
            r.transitions,
            r.verdicts,
            r.writes,
            r.puts,
            r.txns,
            r.dropped
        );
    }
    print!("{table}");
    println!(
        "({} checks x{} replicas over {} nodes, {} probe every {}; {} flapping targets, one \
         down-and-up cycle every {} s)",
        args.checks,
        args.replicas,
        args.nodes,
        args.kind,
        args.interval,
        args.flapping,
        args.flap_period
    );
    let dropped: f64 = rows.iter().map(|r| r.dropped).sum();
    println!(
        "events the nodes' observers missed (counted as dropped observations; the current \
         opinions were republished): {dropped}; terms won: {}, leader step-downs (own clock): {}",
        last.terms, last.stepdowns
    );
    if let Some(p) = &args.tsv {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)?;
        f.write_all(tsv.as_bytes())?;
    }
    Ok(())
}
