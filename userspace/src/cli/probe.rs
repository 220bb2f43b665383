//! `sonde probe`: try probes by hand.
//!
//! - `sonde probe --iface DEV TARGET...`: one round of raw stateless probes (TCP SYN to
//!   ADDR:PORT, ICMP echo to ADDR) through the kernel path, as a table.
//! - `sonde probe --kind KIND --target HOST[:PORT] [--count N] ...`: N probes of one
//!   check, validated by the checks file's rules and run by the real io_uring engine
//!   (stateless kinds through the kernel path or its userspace fallback), each result
//!   printed as it arrives, then a summary. Exit status 0 if every probe succeeded,
//!   1 otherwise.

#[path = "probe_kind.rs"]
mod probe_kind;

use std::{
    io::Write as _,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Args;
use crossbeam_channel::RecvTimeoutError;

use crate::{
    ebpf::{self, AnswerHook, Counters, Ingress, KernelProbes},
    engine::{
        raw::{iface_of, source_for},
        round::{new_config, parse_target, RoundStats},
        spec::{CheckSpec, ProbeSpec},
        tls::TlsConfigs,
        uring::{Engine, EngineConfig, Job, Prepared, StatelessParts},
        AnswerSource, PacketSource, PortRange, ProbeKind, ProbeResult, Round,
    },
};
use probe_common::config::ProbeConfig;
pub use probe_kind::KindOptions;
use tracing::warn;

/// Interval between probes of `--kind` when `--interval-ms` is not given.
const DEFAULT_INTERVAL_MS: u64 = 1000;
/// How long past the last probe's timeout to wait for the engine's results.
const RESULT_GRACE: Duration = Duration::from_secs(5);

/// Arguments of `sonde probe`.
#[derive(Debug, Args)]
#[command(
    override_usage = "sonde probe --iface <IFACE> [OPTIONS] <TARGETS>...\n       \
                      sonde probe --kind <KIND> --target <HOST[:PORT]> [OPTIONS]",
    after_help = "\
Two forms:
  sonde probe --iface DEV TARGET...            one round of raw SYN (ADDR:PORT) and ICMP (ADDR)
                                               probes through the kernel path, as a table
  sonde probe --kind KIND --target HOST[:PORT] [--count N] [options]
                                               N probes of one check through the io_uring engine,
                                               validated like a [[check]] of a checks file;
                                               exit status 0 if every probe succeeded, 1 if not

Examples:
  sonde probe --kind http --target 198.18.1.2:80 --count 5 --path /health --expect-status 200
  sonde probe --kind icmp --target 198.18.1.2 --count 3
  sonde probe --kind dns --target 198.18.1.53:53 --query www.example.test --expect-rcode NOERROR"
)]
pub struct ProbeArgs {
    /// Interface the answers arrive on (XDP and TC programs are attached to it). Required
    /// with positional targets; with --kind tcp_syn or icmp, default: the interface
    /// toward the target.
    #[arg(long, required_unless_present = "kind")]
    pub iface: Option<String>,
    /// Reserved source-port range for probes.
    #[arg(long, default_value = "61000-61999")]
    pub ports: PortRange,
    /// With positional targets: how long to wait for answers after the last probe; with
    /// --kind: each probe's timeout (below --interval-ms). In milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    /// Do not load the kernel programs: time answers in userspace (for comparison).
    #[arg(long)]
    pub userspace: bool,
    /// Which kernel program classifies answers: auto (TC ingress on a veth or without
    /// native XDP, XDP elsewhere), xdp or tc; as `[daemon] answer_hook`.
    #[arg(long, default_value = "auto", value_parser = parse_answer_hook)]
    pub answer_hook: AnswerHook,
    /// Print one JSON object per result instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Targets: ADDR:PORT for a TCP SYN probe, ADDR for an ICMP echo probe.
    #[arg(
        required_unless_present = "kind",
        conflicts_with = "kind",
        value_parser = parse_target
    )]
    pub targets: Vec<(IpAddr, ProbeKind)>,
    /// Probe one check through the engine instead: tcp_syn, tcp_connect, http, https,
    /// icmp, udp or dns (needs --target).
    #[arg(long, value_name = "KIND", requires = "target")]
    pub kind: Option<String>,
    /// Target of --kind: HOST:PORT, [V6]:PORT, or HOST alone for icmp.
    #[arg(long, value_name = "HOST[:PORT]", requires = "kind")]
    pub target: Option<String>,
    /// How many probes of --kind to run.
    #[arg(
        long,
        default_value_t = 1,
        value_parser = clap::value_parser!(u64).range(1..),
        requires = "kind"
    )]
    pub count: u64,
    /// Time between the starts of two probes of --kind, in milliseconds (default 1000;
    /// when not given, a --timeout-ms at or above it lets probes overlap).
    #[arg(long, value_name = "MS", requires = "kind")]
    pub interval_ms: Option<u64>,
    /// The options of --kind's kind table (boxed: the largest part of the arguments).
    #[command(flatten)]
    pub check: Box<KindOptions>,
}

/// Where this session's answers come from.
pub enum AnswerPath {
    /// The kernel programs: XDP classifies, kernel timestamps.
    Kernel {
        /// The loaded and attached programs (boxed: far larger than the other variant).
        probes: Box<KernelProbes>,
        /// Where answers are classified.
        ingress: Ingress,
    },
    /// eBPF unusable here: the same classifier in userspace on an AF_PACKET socket.
    Userspace {
        /// The packet socket.
        source: PacketSource,
        /// Why the kernel path is not used.
        reason: String,
    },
}

/// A probe sender plus the path its answers come back on.
pub struct Session {
    /// Kernel or userspace answers.
    pub path: AnswerPath,
    /// The probe sender.
    pub round: Round,
}

/// Open the answer path on `iface` for probes configured by `cfg`: load and attach the
/// kernel programs, or (eBPF unusable here, or `force_userspace`) open the userspace
/// fallback, saying why.
fn answer_path(
    iface: &str,
    cfg: ProbeConfig,
    force_userspace: bool,
    hook: AnswerHook,
) -> Result<AnswerPath> {
    let unavailable = if force_userspace {
        Some("userspace timestamps requested".to_owned())
    } else {
        ebpf::availability().err().map(|e| e.to_string())
    };
    Ok(match unavailable {
        Some(reason) => {
            warn!(%reason, "kernel programs not used; answers are timed in userspace");
            let source = PacketSource::open(iface, cfg).with_context(|| {
                format!("opening a packet socket on {iface} (needs CAP_NET_RAW)")
            })?;
            AnswerPath::Userspace { source, reason }
        }
        None => {
            let k = |e: ebpf::KernelError| anyhow::anyhow!(ebpf::error_chain(&e));
            let mut probes = KernelProbes::load().map_err(k)?;
            probes.set_config(&cfg).map_err(k)?;
            let ingress = probes.attach_with(iface, hook).map_err(k)?;
            AnswerPath::Kernel {
                probes: Box::new(probes),
                ingress,
            }
        }
    })
}

fn parse_answer_hook(s: &str) -> Result<AnswerHook, String> {
    AnswerHook::parse(s).ok_or_else(|| format!("{s:?}: expected auto, xdp or tc"))
}

/// Add `ports` to the namespace's reserved ports.
fn reserve(ports: PortRange) -> Result<()> {
    ports.reserve().with_context(|| {
        format!("reserving source ports {ports} (net.ipv4.ip_local_reserved_ports)")
    })
}

/// Set up probing on `iface`: load and attach the kernel programs, answers classified
/// where `hook` says (or, when eBPF cannot
/// be used here or `force_userspace` is set, open the userspace fallback and say why),
/// reserve `ports` and open the raw sockets. Must run in the namespace holding `iface`.
///
/// # Errors
/// The kernel programs were refused or could not attach (the error carries the
/// verifier log), ports cannot be reserved, or no raw socket (needs CAP_NET_RAW).
pub fn probe_session(
    iface: &str,
    ports: PortRange,
    force_userspace: bool,
    hook: AnswerHook,
) -> Result<Session> {
    let cfg = new_config(ports);
    let path = answer_path(iface, cfg, force_userspace, hook)?;
    reserve(ports)?;
    let round = Round::new(cfg).context("opening raw sockets (needs CAP_NET_RAW)")?;
    Ok(Session { path, round })
}

impl AnswerPath {
    /// One line saying which clock measures and why.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            AnswerPath::Kernel { ingress, .. } => {
                format!("kernel timestamps, answers at {}", ingress.describe())
            }
            AnswerPath::Userspace { reason, .. } => {
                format!("userspace timestamps (kernel programs not used: {reason})")
            }
        }
    }
}

impl Session {
    /// One line saying which clock measures and why.
    #[must_use]
    pub fn describe(&self) -> String {
        self.path.describe()
    }

    fn counters(&self) -> Result<Counters> {
        match &self.path {
            AnswerPath::Kernel { probes, .. } => probes
                .counters()
                .map_err(|e| anyhow::anyhow!(ebpf::error_chain(&e))),
            AnswerPath::Userspace { .. } => Ok(Counters::default()),
        }
    }

    /// Probe `targets` once; results, round stats and the kernel counter deltas of the
    /// round (empty on the userspace path).
    ///
    /// # Errors
    /// Sending failed or counters cannot be read.
    pub fn probe(
        &mut self,
        targets: &[(IpAddr, ProbeKind)],
        timeout: Duration,
    ) -> Result<(Vec<ProbeResult>, RoundStats, Counters)> {
        let before = self.counters()?;
        let source: &mut dyn AnswerSource = match &mut self.path {
            AnswerPath::Kernel { probes, .. } => probes.as_mut(),
            AnswerPath::Userspace { source, .. } => source,
        };
        let results = self.round.run(source, targets, timeout)?;
        let after = self.counters()?;
        Ok((results, self.round.stats, after.since(&before)))
    }
}

pub(super) fn run(a: &ProbeArgs) -> Result<()> {
    if let Some(kind) = &a.kind {
        if !run_kind(a, kind)? {
            // Everything (engine, kernel programs) is torn down by now.
            let _ = std::io::stdout().flush();
            std::process::exit(1);
        }
        return Ok(());
    }
    let iface = a
        .iface
        .as_deref()
        .context("--iface is required with positional targets")?;
    let mut s = probe_session(iface, a.ports, a.userspace, a.answer_hook)?;
    let (results, stats, counters) = s.probe(&a.targets, Duration::from_millis(a.timeout_ms))?;
    if a.json {
        for r in &results {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        println!(
            "probing from {} with {}, ports {}",
            iface,
            s.describe(),
            a.ports
        );
        super::table::print_results(&results);
        super::table::print_summary(&stats, &counters);
    }
    Ok(())
}

/// What runs stateless probes of `--kind`: the engine's parts, the kernel programs to
/// keep attached meanwhile, and the header's words on the clock.
struct Stateless {
    parts: StatelessParts,
    kernel: Option<Box<KernelProbes>>,
    clock: String,
}

/// The answer path for stateless probes toward `target`, on `--iface` or else the
/// interface holding the source address toward it.
fn stateless(a: &ProbeArgs, target: IpAddr) -> Result<Stateless> {
    let iface = match &a.iface {
        Some(i) => i.clone(),
        None => {
            let local = source_for(target)
                .with_context(|| format!("no route to {target} (give --iface)"))?;
            iface_of(local).with_context(|| {
                format!(
                    "no interface holds {local}, the source address toward {target} (give --iface)"
                )
            })?
        }
    };
    let cfg = new_config(a.ports);
    let path = answer_path(&iface, cfg, a.userspace, a.answer_hook)?;
    let clock = format!("{} on {iface}", path.describe());
    reserve(a.ports)?;
    let (source, kernel): (Box<dyn AnswerSource + Send>, _) = match path {
        AnswerPath::Kernel { mut probes, .. } => {
            let events = probes
                .take_events()
                .context("the kernel programs' ring buffer was already taken")?;
            (Box::new(events), Some(probes))
        }
        AnswerPath::Userspace { source, .. } => (Box::new(source), None),
    };
    Ok(Stateless {
        parts: StatelessParts { source, probe: cfg },
        kernel,
        clock,
    })
}

/// `sonde probe --kind`: validate the check, run `--count` probes of it through the
/// engine, print each result as it arrives and a summary. Whether every probe succeeded.
fn run_kind(a: &ProbeArgs, kind: &str) -> Result<bool> {
    let target = a.target.as_deref().context("--kind needs --target")?;
    let pace = Duration::from_millis(a.interval_ms.unwrap_or(DEFAULT_INTERVAL_MS));
    // The check's interval bounds its timeout. Given, it is checked as given; left out,
    // it is raised past the timeout so the defaults (1000 ms both) are accepted.
    let interval_ms = a
        .interval_ms
        .unwrap_or_else(|| DEFAULT_INTERVAL_MS.max(a.timeout_ms.saturating_add(1)));
    let line = probe_kind::CheckLine {
        kind,
        target,
        interval_ms,
        timeout_ms: a.timeout_ms,
    };
    let spec = Arc::new(probe_kind::validate(&line, &a.check)?);
    let prepared =
        Arc::new(Prepared::new(&spec, &TlsConfigs::default()).map_err(|e| anyhow::anyhow!("{e}"))?);
    let what = probe_kind::describe_check(&spec);
    let (parts, kernel, clock) = if matches!(spec.probe, ProbeSpec::TcpSyn | ProbeSpec::Icmp) {
        let s = stateless(a, spec.target.addr)?;
        (Some(s.parts), s.kernel, s.clock)
    } else {
        let clock = "userspace clock (round trips timed around the io_uring operations)";
        (None, None, clock.to_owned())
    };
    let engine = Engine::start(
        &EngineConfig {
            threads: 1,
            ring_entries: 256,
            max_in_flight: 1024,
            queue: 1024,
            ..EngineConfig::default()
        },
        parts,
    )
    .context("starting the io_uring engine")?;
    if !a.json {
        let count = if a.count == 1 {
            "1 probe".to_owned()
        } else {
            format!("{} probes every {} ms", a.count, pace.as_millis())
        };
        println!(
            "PROBE {what}: {count}, timeout {} ms; {clock}",
            a.timeout_ms
        );
    }
    let outcome = probe_loop(&engine, &spec, &prepared, a, pace);
    engine.shutdown();
    drop(kernel);
    let summary = outcome?;
    if !a.json {
        println!("{}", summary.line(&what));
    }
    Ok(summary.all_ok())
}

/// Submit `--count` jobs `pace` apart and print each result as it arrives.
fn probe_loop(
    engine: &Engine,
    spec: &Arc<CheckSpec>,
    prepared: &Arc<Prepared>,
    a: &ProbeArgs,
    pace: Duration,
) -> Result<probe_kind::Summary> {
    let mut summary = probe_kind::Summary::default();
    let timeout = Duration::from_millis(a.timeout_ms);
    let mut sent = 0u64;
    let mut next = Instant::now();
    let mut stdout = std::io::stdout();
    while summary.results < a.count {
        let now = Instant::now();
        let wait = if sent < a.count {
            if now >= next {
                sent += 1;
                let job = Job {
                    spec: Arc::clone(spec),
                    seq: sent,
                    prepared: Arc::clone(prepared),
                };
                engine
                    .submit(job)
                    .map_err(|_| anyhow::anyhow!("the probe engine stopped"))?;
                next += pace;
                continue;
            }
            next - now
        } else {
            let deadline = next - pace + timeout + RESULT_GRACE;
            if now >= deadline {
                anyhow::bail!(
                    "the probe engine gave {} of {} results",
                    summary.results,
                    a.count
                );
            }
            deadline - now
        };
        match engine.results().recv_timeout(wait) {
            Ok(r) => {
                summary.add(&r);
                if a.json {
                    writeln!(stdout, "{}", serde_json::to_string(&r)?)?;
                } else {
                    writeln!(stdout, "{}", probe_kind::result_line(&r))?;
                }
                stdout.flush()?;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                anyhow::bail!("the probe engine stopped");
            }
        }
    }
    Ok(summary)
}
