//! `sonde probe`: one round of stateless probes through the kernel path.

use std::{net::IpAddr, time::Duration};

use anyhow::{Context, Result};
use clap::Args;

use crate::{
    ebpf::{self, Counters, KernelProbes, XdpAttachMode},
    engine::{
        round::{new_config, parse_target, RoundStats},
        AnswerSource, PacketSource, PortRange, ProbeKind, ProbeResult, Round,
    },
};
use tracing::warn;

/// Arguments of `sonde probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Interface the answers arrive on (XDP and TC programs are attached to it).
    #[arg(long)]
    pub iface: String,
    /// Reserved source-port range for probes.
    #[arg(long, default_value = "61000-61999")]
    pub ports: PortRange,
    /// How long to wait for answers after the last probe, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    /// Do not load the kernel programs: time answers in userspace (for comparison).
    #[arg(long)]
    pub userspace: bool,
    /// Print one JSON object per result instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Targets: ADDR:PORT for a TCP SYN probe, ADDR for an ICMP echo probe.
    #[arg(required = true, value_parser = parse_target)]
    pub targets: Vec<(IpAddr, ProbeKind)>,
}

/// Where this session's answers come from.
pub enum AnswerPath {
    /// The kernel programs: XDP classifies, kernel timestamps.
    Kernel {
        /// The loaded and attached programs (boxed: far larger than the other variant).
        probes: Box<KernelProbes>,
        /// How XDP was attached.
        mode: XdpAttachMode,
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

/// Set up probing on `iface`: load and attach the kernel programs (or, when eBPF cannot
/// be used here or `force_userspace` is set, open the userspace fallback and say why),
/// reserve `ports` and open the raw sockets. Must run in the namespace holding `iface`.
///
/// # Errors
/// The kernel programs were refused or could not attach (the error carries the
/// verifier log), ports cannot be reserved, or no raw socket (needs CAP_NET_RAW).
pub fn probe_session(iface: &str, ports: PortRange, force_userspace: bool) -> Result<Session> {
    let cfg = new_config(ports);
    let unavailable = if force_userspace {
        Some("userspace timestamps requested".to_owned())
    } else {
        ebpf::availability().err().map(|e| e.to_string())
    };
    let path = match unavailable {
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
            let mode = probes.attach(iface).map_err(k)?;
            AnswerPath::Kernel {
                probes: Box::new(probes),
                mode,
            }
        }
    };
    ports.reserve().with_context(|| {
        format!("reserving source ports {ports} (net.ipv4.ip_local_reserved_ports)")
    })?;
    let round = Round::new(cfg).context("opening raw sockets (needs CAP_NET_RAW)")?;
    Ok(Session { path, round })
}

impl Session {
    /// One line saying which clock measures and why.
    #[must_use]
    pub fn describe(&self) -> String {
        match &self.path {
            AnswerPath::Kernel { mode, .. } => {
                format!("kernel timestamps (XDP {})", super::table::mode_name(mode))
            }
            AnswerPath::Userspace { reason, .. } => {
                format!("userspace timestamps (kernel programs not used: {reason})")
            }
        }
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
    let mut s = probe_session(&a.iface, a.ports, a.userspace)?;
    let (results, stats, counters) = s.probe(&a.targets, Duration::from_millis(a.timeout_ms))?;
    if a.json {
        for r in &results {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        println!(
            "probing from {} with {}, ports {}",
            a.iface,
            s.describe(),
            a.ports
        );
        super::table::print_results(&results);
        super::table::print_summary(&stats, &counters);
    }
    Ok(())
}
