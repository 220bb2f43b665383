//! `sonde-bench`: how many probes per second sonde's engine sends and matches, and at
//! what CPU cost, with tokio connect() and tokio+hyper HTTP baselines in the same binary.
//!
//! Runs inside a prober network namespace (`bench/engine.sh` does the `ip netns exec`),
//! keeps at most `--inflight` probes outstanding, cycles over the addresses of
//! `--targets`, stops submitting after `--duration` seconds, waits for the last
//! results (bounded by the probe timeout) and prints one JSON line.

/// The `sonde` binary's allocator (see userspace/src/main.rs), for the engine and the
/// baselines alike.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cpu;
mod engine_run;
mod hyper_run;
mod targets;
mod tokio_run;

use std::{collections::BTreeMap, time::Duration};

use anyhow::Result;
use clap::{Parser, ValueEnum};
use serde_json::{json, Value};

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Work {
    /// Stateless TCP SYN through the raw-socket worker, answers via XDP on --iface.
    Syn,
    /// Stateless ICMP echo, answers via XDP on --iface.
    Icmp,
    /// UDP datagram per probe through the io_uring workers (ICMP unreachable = answer).
    Udp,
    /// TCP connect() through the io_uring workers.
    Connect,
    /// Baseline: tokio TcpStream::connect with tokio::time::timeout, --inflight tasks.
    ConnectTokio,
    /// HTTP GET --path through the io_uring workers, a new connection per check
    /// (`Connection: close`); matched = status 200 and the body contains --expect-body.
    Http,
    /// As http, with keep-alive: --inflight checks (check i on target address i mod
    /// the number of addresses), each running its probes back to back, so the engine
    /// can reuse each check's connection (as wrk reuses each of its connections).
    HttpKeepalive,
    /// Baseline: tokio + hyper 1 client, --inflight tasks, each looping a new
    /// connection, one GET --path with `Connection: close`, the body read and matched.
    HttpHyper,
    /// Not a measurement: attach sonde's pass-everything XDP program to --iface and
    /// hold it for --duration seconds (run in the target namespace on its end of the
    /// veth, so the resets the prober's XDP program sends back arrive).
    XdpPeer,
}

impl Work {
    fn name(self) -> &'static str {
        match self {
            Work::Syn => "syn",
            Work::Icmp => "icmp",
            Work::Udp => "udp",
            Work::Connect => "connect",
            Work::ConnectTokio => "connect-tokio",
            Work::Http => "http",
            Work::HttpKeepalive => "http-keepalive",
            Work::HttpHyper => "http-hyper",
            Work::XdpPeer => "xdp-peer",
        }
    }

    /// HTTP works count only healthy answers (status 200 and the expected body).
    fn is_http(self) -> bool {
        matches!(self, Work::Http | Work::HttpKeepalive | Work::HttpHyper)
    }
}

/// Command line.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "sonde-bench",
    about = "Probe engine throughput benchmark (run inside a prober namespace)"
)]
pub struct Args {
    /// What to measure.
    pub work: Work,
    /// Seconds of submitting probes (1-300); the run then waits at most the probe timeout.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub duration: u64,
    /// IPv4 CIDR of the targets, cycled over (e.g. 198.19.0.0/16).
    #[arg(long)]
    pub targets: String,
    /// Destination port (ignored by icmp).
    #[arg(long, default_value_t = 80)]
    pub port: u16,
    /// Engine worker threads (io_uring workers, or tokio workers).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Most probes outstanding at once.
    #[arg(long, default_value_t = 4096)]
    pub inflight: u64,
    /// Probes per second to submit (default: as fast as the in-flight bound allows).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Per-probe timeout in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    /// Interface the kernel programs attach to (syn, icmp).
    #[arg(long, default_value = "vp0")]
    pub iface: String,
    /// Request path of the HTTP works.
    #[arg(long, default_value = "/health")]
    pub path: String,
    /// Substring the body of a healthy HTTP answer contains (status 200 is expected too).
    #[arg(long, default_value = "OK")]
    pub expect_body: String,
    /// syn: who resets the SYN-ACKs (the daemon's `syn_ack_reset`): tc (its default),
    /// xdp (watched by its guard once a second) or stack.
    #[arg(long, default_value = "tc", value_parser = ["tc", "xdp", "stack"])]
    pub resets: String,
    /// syn, icmp, udp: which program classifies the answers (the daemon's
    /// `answer_hook`): auto (its default: TC ingress on a veth), xdp or tc. With
    /// `--resets xdp`, auto means xdp, as in the daemon.
    #[arg(long, default_value = "auto", value_parser = ["auto", "xdp", "tc"])]
    pub answer_hook: String,
}

/// What a run counted.
#[derive(Debug, Default)]
pub struct Tally {
    /// Probes submitted (started) while the clock ran.
    pub sent: u64,
    /// Results that were a real answer (Ok or Refused; for HTTP works: Ok only).
    pub matched: u64,
    /// Results that timed out.
    pub timeouts: u64,
    /// Every other result, by label.
    pub other: BTreeMap<String, u64>,
    /// Extra facts of the run (engine and kernel counters, ...).
    pub extra: Value,
    /// CPU used from the first probe to the last result.
    pub cpu: Option<cpu::Delta>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let addrs = targets::parse_cidr(&args.targets)?;
    let dur = Duration::from_secs(args.duration);
    if args.work == Work::XdpPeer {
        let _peer = sonde::ebpf::PeerPass::attach(&args.iface)
            .map_err(|e| anyhow::anyhow!(sonde::ebpf::error_chain(&e)))?;
        std::thread::sleep(dur);
        return Ok(());
    }
    let tally = match args.work {
        Work::ConnectTokio => tokio_run::run(&args, &addrs, dur)?,
        Work::HttpHyper => hyper_run::run(&args, &addrs, dur)?,
        w => engine_run::run(&args, w, &addrs, dur)?,
    };
    let (wall, cpu_pct, threads) = tally.cpu.as_ref().map_or((0.0, 0.0, BTreeMap::new()), |d| {
        (d.wall, d.process_pct(), d.threads_pct())
    });
    let secs = dur.as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let pct = |n: u64| {
        if tally.sent == 0 {
            0.0
        } else {
            100.0 * n as f64 / tally.sent as f64
        }
    };
    #[allow(clippy::cast_precision_loss)]
    let line = json!({
        "work": args.work.name(),
        "duration_s": args.duration,
        "wall_s": round(wall),
        "targets": args.targets,
        "port": args.port,
        "threads": args.threads,
        "inflight": args.inflight,
        "rate": args.rate,
        "sent": tally.sent,
        "matched": tally.matched,
        "timeouts": tally.timeouts,
        "other": tally.other,
        "sent_per_s": round(tally.sent as f64 / secs),
        "matched_per_s": round(tally.matched as f64 / secs),
        "matched_pct": round(pct(tally.matched)),
        "cpu_pct": cpu_pct,
        "threads_cpu_pct": threads,
        "extra": tally.extra,
    });
    println!("{line}");
    Ok(())
}

/// Two decimals are enough for every number printed.
fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
