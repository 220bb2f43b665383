//! `sonde demo`: sonde's main job on a lab of target namespaces.
//!
//! 1. The kernel path: a prober namespace and a target namespace joined by a veth pair
//!    (198.18.0.1 and 198.18.0.2; the target also answers for 198.19.0.0/16, with
//!    198.19.2.0/24 made silent by nftables), probed with raw SYN and ICMP probes
//!    classified and timed by the XDP/TC programs.
//! 2. The daemon: `sonde run` in the prober namespace with a checks file covering every
//!    probe kind, `sonde status` once the checks settle, a target that starts failing
//!    (HTTP 503) turning unhealthy, and back.
//!
//! Everything (namespaces, processes, files) is removed on exit.

use std::{
    net::{IpAddr, Ipv4Addr, TcpListener},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Args;

use super::client::{Client, ClientError};
use crate::{
    ebpf,
    engine::{PortRange, ProbeKind},
    lab::{self, HttpResponder, Lab},
};

/// Arguments of `sonde demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many rounds of raw probes to show.
    #[arg(long, default_value_t = 2)]
    pub rounds: u32,
    /// Do not load the kernel programs: time answers in userspace (for comparison).
    #[arg(long)]
    pub userspace: bool,
    /// How long to wait for answers per round, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub timeout_ms: u64,
    /// Skip the daemon part.
    #[arg(long)]
    pub no_daemon: bool,
}

fn targets() -> Vec<(IpAddr, ProbeKind)> {
    let a = |s: &str| {
        s.parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .expect("literal address")
    };
    vec![
        (a("198.18.0.2"), ProbeKind::TcpSyn { port: 80 }),
        (a("198.18.0.2"), ProbeKind::TcpSyn { port: 443 }),
        (a("198.18.0.2"), ProbeKind::TcpSyn { port: 22 }),
        (a("198.18.0.2"), ProbeKind::IcmpEcho),
        (a("198.19.1.1"), ProbeKind::TcpSyn { port: 80 }),
        (a("198.19.1.1"), ProbeKind::IcmpEcho),
        (a("198.19.2.1"), ProbeKind::TcpSyn { port: 80 }),
        (a("198.19.2.1"), ProbeKind::IcmpEcho),
        (a("198.18.0.99"), ProbeKind::TcpSyn { port: 80 }),
    ]
}

const CHECKS: &str = r#"# sonde demo checks (written by `sonde demo`)
[defaults]
interval = "500ms"
fast_interval = "200ms"
timeout = "150ms"
rise = 2
fall = 2

[[check]]
id = "web-health"
target = "198.18.0.2:80"
kind = "http"
labels = { pool = "origin-a" }
[check.http]
path = "/health"
expect_body = "OK"

[[check]]
id = "web-syn"
target = "198.18.0.2:80"
kind = "tcp_syn"

[[check]]
id = "web-connect"
target = "198.19.1.1:80"
kind = "tcp_connect"

[[check]]
id = "ping-range"
target = "198.19.1.1"
kind = "icmp"

[[check]]
id = "silent"
target = "198.19.2.1:80"
kind = "tcp_syn"

[[check]]
id = "closed-port"
target = "198.18.0.2:22"
kind = "tcp_connect"
"#;

/// A temporary directory removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) fn run(a: &DemoArgs) -> Result<()> {
    lab::privileged().map_err(|e| anyhow::anyhow!("the demo builds network namespaces: {e}"))?;
    if let Err(e) = ebpf::availability() {
        println!(
            "note: kernel programs cannot be used here ({e}); answers will be timed in userspace"
        );
    }
    println!("== building lab: prober 198.18.0.1 <-veth-> target 198.18.0.2 (+198.19.0.0/16)");
    let lab = Lab::two_hosts().context("creating lab namespaces")?;
    lab.add_target_range("198.19.0.0/16")
        .context("routing 198.19.0.0/16 to the target")?;
    lab.target
        .nft("add table inet sonde_demo; add chain inet sonde_demo in { type filter hook input priority 0; }; add rule inet sonde_demo in ip daddr 198.19.2.0/24 drop")
        .context("making 198.19.2.0/24 silent")?;
    let web = HttpResponder::start(&lab.target, "0.0.0.0:80", 200, "service OK")
        .context("HTTP server on :80")?;
    let _tls_port: TcpListener = lab
        .target
        .run(|| TcpListener::bind("0.0.0.0:443"))
        .context("entering the target namespace")?
        .context("listening on 443 in the target")?;
    let iface = lab.link.a.name.clone();

    println!("\n== 1. the kernel path: raw SYN and ICMP probes, classified and timed by XDP/TC");
    let probes = targets();
    let timeout = Duration::from_millis(a.timeout_ms);
    let (rounds, userspace, dev) = (a.rounds.max(1), a.userspace, iface.clone());
    lab.prober
        .run(move || -> Result<()> {
            let mut s =
                super::probe_session(&dev, PortRange::DEFAULT, userspace, ebpf::AnswerHook::Auto)?;
            println!("probing from {dev} with {}", s.describe());
            for round in 1..=rounds {
                let (results, stats, counters) = s.probe(&probes, timeout)?;
                println!("\nround {round}");
                super::table::print_results(&results);
                super::table::print_summary(&stats, &counters);
            }
            Ok(())
        })
        .context("entering the prober namespace")??;
    let syn_recv = lab
        .target
        .syn_recv_count()
        .context("counting SYN-RECV sockets on the target")?;
    println!(
        "target sockets left in SYN-RECV: {syn_recv} (every SYN-ACK was answered with an RST)"
    );

    if !a.no_daemon {
        daemon_part(&lab, &iface, &web, a.userspace)?;
    }
    println!("\n== lab removed");
    Ok(())
}

fn wait_settled(client: &Client, limit: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let v = client.get("/v1/status");
        if let Ok(v) = &v {
            let all = v
                .as_array()
                .map(|a| a.iter().all(|c| c["state"] != "unknown"))
                .unwrap_or(false);
            if all {
                return Ok(());
            }
        }
        if start.elapsed() > limit {
            anyhow::bail!("checks did not settle within {limit:?}: {v:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn status(client: &Client) -> Result<()> {
    let args = super::status::StatusArgs {
        unhealthy: false,
        label: Vec::new(),
        json: false,
    };
    let exit = super::status::run(client, &args, &mut std::io::stdout())
        .map_err(|e: ClientError| anyhow::anyhow!("{e}"))?;
    println!("(sonde status exit code: {})", exit.code());
    Ok(())
}

fn daemon_part(lab: &Lab, iface: &str, web: &HttpResponder, userspace: bool) -> Result<()> {
    println!("\n== 2. the daemon: `sonde run` in the prober namespace");
    let dir = Scratch(std::env::temp_dir().join(format!("sonde-demo-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    let config = dir.0.join("checks.toml");
    std::fs::write(&config, CHECKS)?;
    let socket = dir.0.join("sonde.sock");
    let token = dir.0.join("token");
    let exe = std::env::current_exe()?.display().to_string();
    let (cfg, state, sock, tok) = (
        config.display().to_string(),
        dir.0.join("state").display().to_string(),
        socket.display().to_string(),
        token.display().to_string(),
    );
    let mut argv = vec![
        exe.as_str(),
        "run",
        "--config",
        &cfg,
        "--state-dir",
        &state,
        "--socket",
        &sock,
        "--token-file",
        &tok,
        "--iface",
        iface,
    ];
    if userspace {
        argv.push("--userspace");
    }
    let log = std::fs::File::create(dir.0.join("daemon.log"))?;
    println!("$ sonde run --config {cfg} --iface {iface}");
    let pid = lab.prober.spawn_with(
        &argv,
        std::process::Stdio::null(),
        std::process::Stdio::from(log),
    )?;
    let client = Client::unix(&socket, &token);
    let start = Instant::now();
    while client.get("/v1/info").is_err() {
        if start.elapsed() > Duration::from_secs(10) {
            let log = std::fs::read_to_string(dir.0.join("daemon.log")).unwrap_or_default();
            anyhow::bail!("the daemon did not start; its log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_settled(&client, Duration::from_secs(10))?;
    println!("\n$ sonde status");
    status(&client)?;

    println!(
        "\n== the origin starts answering 503: web-health turns unhealthy after `fall` failures"
    );
    web.set_status(503);
    let t0 = Instant::now();
    loop {
        let v = client
            .get("/v1/checks/web-health")
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let st = if v.get("status").is_some() {
            v["status"]["state"].clone()
        } else {
            v["state"].clone()
        };
        if st == "unhealthy" {
            break;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            anyhow::bail!("web-health did not turn unhealthy: {v}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "(unhealthy after {:.1} s)\n$ sonde status",
        t0.elapsed().as_secs_f64()
    );
    status(&client)?;
    web.set_status(200);
    let hist = client
        .get("/v1/checks/web-health/history")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("\n$ sonde history web-health   (transitions, from the journal-backed history)");
    for t in hist["transitions"].as_array().into_iter().flatten() {
        println!(
            "  {} -> {}  ({})",
            t["from"].as_str().unwrap_or("?"),
            t["to"].as_str().unwrap_or("?"),
            t["reason"]["reason"].as_str().unwrap_or("?")
        );
    }
    // SAFETY: kill(2) on the daemon this demo started.
    unsafe { libc::kill(i32::try_from(pid).unwrap_or(0), libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(500));
    println!("\n== daemon stopped (SIGTERM)");
    Ok(())
}
