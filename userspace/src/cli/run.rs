//! `sonde run`: the daemon.

use std::{net::SocketAddr, path::PathBuf};

use clap::Args;

use crate::daemon::{self, RunOptions};

/// Arguments of `sonde run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The checks file (TOML). In cluster mode (--etcd) optional, for [daemon] and
    /// [defaults] (applied to the checks stored in etcd).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// This node's id in the cluster (default: the host name).
    #[arg(long)]
    pub node_id: Option<String>,
    /// Membership lease TTL, seconds.
    #[arg(long, default_value_t = 3)]
    pub lease_ttl: u64,
    /// Interface the kernel programs attach to (default: the file's `[daemon] iface`,
    /// else the interface towards the first stateless target).
    #[arg(long)]
    pub iface: Option<String>,
    /// Journal and state directory.
    #[arg(long, default_value = "/var/lib/sonde")]
    pub state_dir: PathBuf,
    /// Loopback HTTP address for the API and /metrics (e.g. 127.0.0.1:9797).
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// Do not load the kernel programs: time stateless probes in userspace.
    #[arg(long)]
    pub userspace: bool,
    /// Origin protection: probes per second per target address, all checks together.
    /// In cluster mode the cap is cluster-wide: each node enforces it divided by the
    /// number of live nodes.
    #[arg(long, default_value_t = 50.0)]
    pub per_target_pps: f64,
    /// Origin protection: probes per second per IPv4 /24 and per IPv6 /64, all targets
    /// in it together (default: no prefix cap). Cluster-wide like --per-target-pps.
    #[arg(long)]
    pub per_prefix_pps: Option<f64>,
    /// Probes per second in all.
    #[arg(long, default_value_t = 200_000.0)]
    pub global_pps: f64,
    /// Probes in flight at most.
    #[arg(long, default_value_t = 16_384)]
    pub max_in_flight: u32,
    /// After setting up (kernel programs, probe ports, journal), become this
    /// unprivileged user; the state directory is given to it. Without it sonde stays
    /// uid 0 but still drops every capability except CAP_NET_RAW.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Keep every capability after setting up (debugging only; excludes --user).
    #[arg(long)]
    pub keep_capabilities: bool,
}

/// Run the daemon; the API socket and token file are the global `--socket` and
/// `--token-file` options, so `sonde status` finds a daemon started with the same ones.
pub(super) fn run(
    a: &RunArgs,
    client: &super::client::ClientOptions,
    etcd: &super::cluster::EtcdArgs,
) -> anyhow::Result<()> {
    let cluster = if !etcd.enabled() {
        None
    } else {
        let node_id = match &a.node_id {
            Some(n) => n.clone(),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map_or_else(|_| "sonde".into(), |h| h.trim().to_owned()),
        };
        Some(daemon::ClusterOptions {
            endpoints: etcd.etcd.clone(),
            node_id,
            prefix: etcd.prefix.clone(),
            lease_ttl: std::time::Duration::from_secs(a.lease_ttl.max(1)),
            etcd: etcd.options(),
        })
    };
    daemon::run(&RunOptions {
        config: a.config.clone(),
        cluster,
        iface: a.iface.clone(),
        token_file: client.token_file.clone(),
        state_dir: a.state_dir.clone(),
        socket: client.socket.clone(),
        http: a.http,
        userspace: a.userspace,
        per_target_pps: a.per_target_pps,
        per_prefix_pps: a.per_prefix_pps,
        global_pps: a.global_pps,
        max_in_flight: a.max_in_flight,
        user: a.user.clone(),
        keep_capabilities: a.keep_capabilities,
    })
}
