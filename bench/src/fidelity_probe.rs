//! `sonde-fidelity probe`: evenly spaced probes of one target through sonde's engine,
//! timed by the kernel programs or by the userspace fallback, each RTT written out.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use crossbeam_channel::RecvTimeoutError;
use serde_json::json;
use sonde::{
    ebpf::{AnswerHook, KernelProbes},
    engine::{
        answers::{AnswerSource, PacketSource},
        result::{CheckResult, Reason},
        round::new_config,
        spec::{CheckId, CheckSpec, InitialState, ProbeSpec, Target, Thresholds},
        uring::{Engine, EngineConfig, Job, StatelessParts},
        Clock, PortRange,
    },
};

use crate::Kind;

/// Arguments of `probe`.
#[derive(clap::Args, Debug)]
pub struct ProbeArgs {
    /// What to send.
    #[arg(long, value_enum)]
    pub kind: Kind,
    /// The target address.
    #[arg(long)]
    pub target: Ipv4Addr,
    /// Destination port of SYN probes.
    #[arg(long, default_value_t = 80)]
    pub port: u16,
    /// Probes to send (1-100000).
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub count: u64,
    /// Time between two probes' starts, in microseconds (100-1000000).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(100..=1_000_000))]
    pub interval_us: u64,
    /// Per-probe timeout in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    /// Interface the answers arrive on.
    #[arg(long, default_value = "vp0")]
    pub iface: String,
    /// Do not load the kernel programs: the engine's userspace fallback (`PacketSource`)
    /// reads and times the answers, as `sonde probe --userspace` does.
    #[arg(long)]
    pub userspace: bool,
    /// Which kernel program classifies and times the answers, as the daemon's
    /// `answer_hook`: auto (its default: TC ingress on a veth), xdp or tc.
    #[arg(long, default_value = "auto", value_parser = ["auto", "xdp", "tc"])]
    pub answer_hook: String,
    /// File to write (a `#` header line, then one RTT in nanoseconds per answered probe).
    #[arg(long)]
    pub out: PathBuf,
}

/// The answer path: the ring buffer of the attached kernel programs (kept attached by
/// the returned handle), or a packet socket.
fn parts(args: &ProbeArgs) -> Result<(Option<KernelProbes>, StatelessParts)> {
    let cfg = new_config(PortRange::DEFAULT);
    let (kernel, source): (_, Box<dyn AnswerSource + Send>) = if args.userspace {
        let s = PacketSource::open(&args.iface, cfg)
            .with_context(|| format!("opening a packet socket on {}", args.iface))?;
        (None, Box::new(s))
    } else {
        let mut k = KernelProbes::load().context("loading the kernel programs")?;
        k.set_config(&cfg).context("writing the probe config")?;
        let hook = AnswerHook::parse(&args.answer_hook).context("--answer-hook")?;
        let ingress = k
            .attach_with(&args.iface, hook)
            .with_context(|| format!("attaching to {}", args.iface))?;
        eprintln!("answers at {}", ingress.describe());
        let events = k.take_events().context("ring buffer already taken")?;
        (Some(k), Box::new(events))
    };
    PortRange::DEFAULT
        .reserve()
        .context("reserving the probe ports")?;
    Ok((kernel, StatelessParts { source, probe: cfg }))
}

fn spec(args: &ProbeArgs) -> Arc<CheckSpec> {
    let (probe, port) = match args.kind {
        Kind::Icmp => (ProbeSpec::Icmp, 0),
        Kind::Syn => (ProbeSpec::TcpSyn, args.port),
    };
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    Arc::new(CheckSpec {
        id: CheckId::new("fidelity"),
        target: Target {
            host: args.target.to_string().into(),
            addr: IpAddr::V4(args.target),
            port,
            source: Default::default(),
        },
        probe,
        interval: timeout * 10,
        fast_interval: timeout * 2,
        timeout,
        jitter: 0.0,
        thresholds: Thresholds::Consecutive { rise: 1, fall: 1 },
        initial: InitialState::Unknown,
        labels: Default::default(),
    })
}

/// What came back.
#[derive(Default)]
struct Tally {
    /// RTTs in nanoseconds measured by the expected clock.
    rtts: Vec<u64>,
    /// Answered, but measured by the other clock (kernel run: an answer without stamp).
    other_clock: u64,
    /// No answer before the timeout.
    timeouts: u64,
    /// Any other result, by label.
    other: BTreeMap<&'static str, u64>,
    /// Results received.
    results: u64,
}

impl Tally {
    fn add(&mut self, r: &CheckResult, want: Clock) {
        self.results += 1;
        match (&r.reason, r.rtt) {
            (Reason::Ok | Reason::Refused, Some(rtt)) if r.clock == want => {
                self.rtts
                    .push(u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX));
            }
            (Reason::Ok | Reason::Refused, Some(_)) => self.other_clock += 1,
            (Reason::Timeout, _) => self.timeouts += 1,
            (reason, _) => *self.other.entry(reason.label()).or_insert(0) += 1,
        }
    }
}

/// Submit `--count` jobs `--interval-us` apart (each on its own tick, so a late tick
/// does not bunch probes up), collecting results meanwhile, then the stragglers.
fn drive(engine: &Engine, args: &ProbeArgs, want: Clock) -> Result<Tally> {
    let template = Job::new(spec(args), 0).map_err(|e| anyhow::anyhow!("check: {e}"))?;
    let interval = Duration::from_micros(args.interval_us);
    let mut t = Tally::default();
    let mut sent = 0u64;
    let start = Instant::now();
    let mut next = start;
    while sent < args.count {
        let now = Instant::now();
        if now >= next {
            let job = Job {
                seq: sent,
                ..template.clone()
            };
            if engine.submit(job).is_err() {
                bail!("engine stopped");
            }
            sent += 1;
            next += interval;
            continue;
        }
        match engine.results().recv_timeout(next - now) {
            Ok(r) => t.add(&r, want),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => bail!("engine stopped"),
        }
    }
    let end = Instant::now() + Duration::from_millis(args.timeout_ms) + Duration::from_secs(1);
    while t.results < sent {
        let left = end.saturating_duration_since(Instant::now());
        match engine.results().recv_timeout(left) {
            Ok(r) => t.add(&r, want),
            Err(_) => break,
        }
    }
    Ok(t)
}

/// Run the probes and write the samples file.
pub fn run(args: &ProbeArgs) -> Result<()> {
    let t0 = Instant::now();
    let (kernel, parts) = parts(args)?;
    let want = if args.userspace {
        Clock::Userspace
    } else {
        Clock::Kernel
    };
    let cfg = EngineConfig {
        threads: 1,
        ring_entries: 256,
        max_in_flight: 1024,
        queue: 4096,
        stateless_senders: 1,
    };
    let engine = Engine::start(&cfg, Some(parts)).context("starting the engine")?;
    let k0 = kernel.as_ref().map(KernelProbes::counters).transpose()?;
    let setup = t0.elapsed();
    let tally = drive(&engine, args, want);
    let probing = t0.elapsed() - setup;
    engine.shutdown();
    let nostamp = match (&kernel, &k0) {
        (Some(k), Some(k0)) => k
            .counters()?
            .since(k0)
            .xdp(probe_common::counters::XdpReason::NoStamp),
        _ => 0,
    };
    drop(kernel);
    let t = tally?;
    let method = if args.userspace {
        "sonde-userspace"
    } else {
        "sonde-kernel"
    };
    let kind = match args.kind {
        Kind::Icmp => "icmp",
        Kind::Syn => "syn",
    };
    let mut text = format!(
        "# kind={kind} method={method} sent={} answered={} other_clock={} timeouts={}\n",
        args.count,
        t.rtts.len(),
        t.other_clock,
        t.timeouts
    );
    for r in &t.rtts {
        let _ = writeln!(text, "{r}");
    }
    std::fs::write(&args.out, text).with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "{}",
        json!({
            "kind": kind,
            "method": method,
            "sent": args.count,
            "answered": t.rtts.len(),
            "other_clock": t.other_clock,
            "timeouts": t.timeouts,
            "other": t.other,
            "missing_results": args.count.saturating_sub(t.results),
            "xdp_no_stamp": nostamp,
            "setup_ms": setup.as_millis(),
            "probing_ms": probing.as_millis(),
        })
    );
    Ok(())
}
