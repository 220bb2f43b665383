//! `sonde run`: the daemon.

use std::{net::SocketAddr, path::PathBuf};

use clap::Args;

use crate::daemon::{self, RunOptions};

/// Arguments of `sonde run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The checks file (TOML).
    #[arg(long, short)]
    pub config: PathBuf,
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
    #[arg(long, default_value_t = 50.0)]
    pub per_target_pps: f64,
    /// Probes per second in all.
    #[arg(long, default_value_t = 200_000.0)]
    pub global_pps: f64,
    /// Probes in flight at most.
    #[arg(long, default_value_t = 16_384)]
    pub max_in_flight: u32,
}

/// Run the daemon; the API socket and token file are the global `--socket` and
/// `--token-file` options, so `sonde status` finds a daemon started with the same ones.
pub(super) fn run(a: &RunArgs, client: &super::client::ClientOptions) -> anyhow::Result<()> {
    daemon::run(&RunOptions {
        config: a.config.clone(),
        iface: a.iface.clone(),
        token_file: client.token_file.clone(),
        state_dir: a.state_dir.clone(),
        socket: client.socket.clone(),
        http: a.http,
        userspace: a.userspace,
        per_target_pps: a.per_target_pps,
        global_pps: a.global_pps,
        max_in_flight: a.max_in_flight,
    })
}
