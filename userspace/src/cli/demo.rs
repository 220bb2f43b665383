//! `sonde demo`: a lab of target namespaces probed through the kernel path.
//!
//! Builds a prober namespace and a target namespace joined by a veth pair (198.18.0.1
//! and 198.18.0.2), makes the target answer for 198.19.0.0/16 as well, listens on ports
//! 80 and 443 there, makes 198.19.2.0/24 silent with nftables, and probes: open, closed,
//! silent, nothing-behind and ICMP targets. Everything is removed on exit.

use std::{
    net::{IpAddr, Ipv4Addr, TcpListener},
    time::Duration,
};

use anyhow::{Context, Result};
use clap::Args;

use crate::{
    ebpf,
    engine::{PortRange, ProbeKind},
    lab::{self, Lab},
};

/// Arguments of `sonde demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many rounds to probe.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Do not load the kernel programs: time answers in userspace (for comparison).
    #[arg(long)]
    pub userspace: bool,
    /// How long to wait for answers per round, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub timeout_ms: u64,
}

fn targets() -> Vec<(IpAddr, ProbeKind, &'static str)> {
    let a = |s: &str| {
        s.parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .expect("literal address")
    };
    vec![
        (a("198.18.0.2"), ProbeKind::TcpSyn { port: 80 }, "listening"),
        (
            a("198.18.0.2"),
            ProbeKind::TcpSyn { port: 443 },
            "listening",
        ),
        (
            a("198.18.0.2"),
            ProbeKind::TcpSyn { port: 22 },
            "nothing listens",
        ),
        (a("198.18.0.2"), ProbeKind::IcmpEcho, "host up"),
        (
            a("198.19.1.1"),
            ProbeKind::TcpSyn { port: 80 },
            "range route, listening",
        ),
        (a("198.19.1.1"), ProbeKind::IcmpEcho, "range route"),
        (
            a("198.19.2.1"),
            ProbeKind::TcpSyn { port: 80 },
            "nftables drops",
        ),
        (a("198.19.2.1"), ProbeKind::IcmpEcho, "nftables drops"),
        (a("198.18.0.99"), ProbeKind::TcpSyn { port: 80 }, "no host"),
    ]
}

pub(super) fn run(a: &DemoArgs) -> Result<()> {
    lab::privileged().map_err(|e| anyhow::anyhow!("the demo builds network namespaces: {e}"))?;
    if let Err(e) = ebpf::availability() {
        println!(
            "note: kernel programs cannot be used here ({e}); answers will be timed in userspace"
        );
    }
    println!("building lab: prober 198.18.0.1 <-veth-> target 198.18.0.2 (+198.19.0.0/16)");
    let lab = Lab::two_hosts().context("creating lab namespaces")?;
    lab.add_target_range("198.19.0.0/16")
        .context("routing 198.19.0.0/16 to the target")?;
    lab.target
        .nft("add table inet sonde_demo; add chain inet sonde_demo in { type filter hook input priority 0; }; add rule inet sonde_demo in ip daddr 198.19.2.0/24 drop")
        .context("making 198.19.2.0/24 silent")?;
    let listeners: Vec<TcpListener> = lab
        .target
        .run(|| -> std::io::Result<Vec<TcpListener>> {
            Ok(vec![
                TcpListener::bind("0.0.0.0:80")?,
                TcpListener::bind("0.0.0.0:443")?,
            ])
        })
        .context("entering the target namespace")?
        .context("listening on 80 and 443 in the target")?;
    let iface = lab.link.a.name.clone();
    let list = targets();
    let probes: Vec<(IpAddr, ProbeKind)> = list.iter().map(|(a, k, _)| (*a, *k)).collect();
    let timeout = Duration::from_millis(a.timeout_ms);
    let rounds = a.rounds.max(1);
    let userspace = a.userspace;
    lab.prober
        .run(move || -> Result<()> {
            let mut s = super::probe_session(&iface, PortRange::DEFAULT, userspace)?;
            println!("probing from {iface} with {}", s.describe());
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
        "\ntarget sockets left in SYN-RECV: {syn_recv} (every SYN-ACK was answered with an RST)"
    );
    drop(listeners);
    println!("lab removed");
    Ok(())
}
