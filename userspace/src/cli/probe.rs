//! `sonde probe`: one round of stateless probes through the kernel path.

use std::{net::IpAddr, time::Duration};

use anyhow::{Context, Result};
use clap::Args;

use crate::{
    ebpf::{self, Counters, KernelProbes, XdpAttachMode},
    engine::{
        round::{new_config, parse_target, RoundStats},
        PortRange, ProbeKind, ProbeResult, Round,
    },
};

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
    /// Print one JSON object per result instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Targets: ADDR:PORT for a TCP SYN probe, ADDR for an ICMP echo probe.
    #[arg(required = true, value_parser = parse_target)]
    pub targets: Vec<(IpAddr, ProbeKind)>,
}

/// A loaded and attached kernel path with its probe sender.
pub struct Session {
    /// The kernel programs.
    pub kernel: KernelProbes,
    /// The probe sender.
    pub round: Round,
    /// How XDP was attached.
    pub mode: XdpAttachMode,
}

/// Load the kernel programs, attach them to `iface`, reserve `ports` and open the raw
/// sockets. Must run in the namespace that holds `iface`.
///
/// # Errors
/// eBPF unavailable or refused, attach failed, ports cannot be reserved, no raw socket.
pub fn probe_session(iface: &str, ports: PortRange) -> Result<Session> {
    let mut kernel = KernelProbes::load().map_err(|e| anyhow::anyhow!(ebpf::error_chain(&e)))?;
    let cfg = new_config(ports);
    kernel
        .set_config(&cfg)
        .map_err(|e| anyhow::anyhow!(ebpf::error_chain(&e)))?;
    let mode = kernel
        .attach(iface)
        .map_err(|e| anyhow::anyhow!(ebpf::error_chain(&e)))?;
    ports.reserve().with_context(|| {
        format!("reserving source ports {ports} (net.ipv4.ip_local_reserved_ports)")
    })?;
    let round = Round::new(cfg).context("opening raw sockets (needs CAP_NET_RAW)")?;
    Ok(Session {
        kernel,
        round,
        mode,
    })
}

impl Session {
    /// Probe `targets` once; results, round stats and the counter deltas of the round.
    ///
    /// # Errors
    /// Sending failed or counters cannot be read.
    pub fn probe(
        &mut self,
        targets: &[(IpAddr, ProbeKind)],
        timeout: Duration,
    ) -> Result<(Vec<ProbeResult>, RoundStats, Counters)> {
        let before = self
            .kernel
            .counters()
            .map_err(|e| anyhow::anyhow!(ebpf::error_chain(&e)))?;
        let results = self.round.run(&mut self.kernel, targets, timeout)?;
        let after = self
            .kernel
            .counters()
            .map_err(|e| anyhow::anyhow!(ebpf::error_chain(&e)))?;
        Ok((results, self.round.stats, after.since(&before)))
    }
}

pub(super) fn run(a: &ProbeArgs) -> Result<()> {
    if let Err(e) = ebpf::availability() {
        anyhow::bail!(
            "stateless probes are answered through the kernel programs, which cannot be used here: {e}"
        );
    }
    let mut s = probe_session(&a.iface, a.ports)?;
    let (results, stats, counters) = s.probe(&a.targets, Duration::from_millis(a.timeout_ms))?;
    if a.json {
        for r in &results {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        println!(
            "kernel path on {} (XDP {}), ports {}",
            a.iface,
            super::table::mode_name(&s.mode),
            a.ports
        );
        super::table::print_results(&results);
        super::table::print_summary(&stats, &counters);
    }
    Ok(())
}
