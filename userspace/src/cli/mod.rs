//! Command-line interface: clap definitions and one module per subcommand.
//! Human tables by default, `--json` for scripts.

pub mod check;
pub mod client;
pub mod cluster;
mod cluster_checks;
mod cluster_status;
pub mod completions;
mod demo;
pub mod endpoint;
pub mod fmt;
pub mod history;
pub mod logging;
pub mod output;
mod probe;
pub mod reload;
mod run;
pub mod status;
mod table;
#[cfg(test)]
mod tests;
pub mod validate;
pub mod watch;

use std::io::{self, Write as _};

use clap::{Parser, Subcommand};

use client::{ClientError, ClientOptions, Exit};

pub use probe::{probe_session, AnswerPath, ProbeArgs, Session};

/// sonde: distributed, eBPF/XDP-accelerated health checker.
#[derive(Debug, Parser)]
#[command(name = "sonde", version, about, propagate_version = true)]
pub struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log format on stderr: text, or json (one object per line, for log shippers).
    #[arg(long, global = true, value_enum, value_name = "FORMAT", default_value_t = logging::LogFormat::Text)]
    pub log_format: logging::LogFormat,
    /// How the client commands reach the daemon (--socket, --api, --token-file).
    #[command(flatten)]
    pub client: ClientOptions,
    /// How commands reach the cluster's etcd (--etcd, --prefix, credentials): `run` in
    /// cluster mode, `check`, `status` and `watch` against the cluster, `nodes`, `leader`.
    #[command(flatten)]
    pub etcd: cluster::EtcdArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send stateless probes (TCP SYN to ADDR:PORT, ICMP echo to ADDR) through the
    /// kernel path on one interface and print each answer's class and kernel RTT.
    Probe(ProbeArgs),
    /// sonde's main job on a lab of target namespaces (198.18.0.0/15): raw probes
    /// through the kernel path, then the daemon and `sonde status`. Needs root.
    Demo(demo::DemoArgs),
    /// Show every check's state (with --etcd: the cluster's quorum verdicts). Exit
    /// status: 0 if none is unhealthy, 1 if one is, 2 if the daemon (or etcd) cannot be
    /// reached.
    Status(status::StatusArgs),
    /// List, show, add or remove checks of the running daemon (with --etcd: of the
    /// cluster, stored in etcd).
    Check(check::CheckArgs),
    /// Show a check's latest results and transitions.
    History(history::HistoryArgs),
    /// Follow health transitions and check changes as they happen (with --etcd: the
    /// cluster's verdicts, opinions, suspects, checks and nodes).
    Watch(watch::WatchArgs),
    /// Validate a configuration file (no daemon needed).
    Validate(validate::ValidateArgs),
    /// Run the daemon: probe the checks of a TOML file, keep their health, serve the API.
    Run(Box<run::RunArgs>),
    /// List the cluster's live nodes, their role and share of the checks (from etcd).
    Nodes(cluster::ClusterArgs),
    /// Show the cluster's elected leader and its term (from etcd).
    Leader(cluster::ClusterArgs),
    /// Make the daemon re-read its configuration file.
    Reload {
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    #[command(hide = true)]
    Completions(completions::CompletionsArgs),
    /// Write the man pages (sonde.1, sonde-SUBCOMMAND.1) into DIR, or sonde.1 to stdout.
    #[command(hide = true)]
    Man(completions::ManArgs),
}

/// Set up `tracing` logs on stderr (see [`logging`]).
pub fn init_logging(verbose: u8, format: logging::LogFormat) {
    logging::init(verbose, format);
}

/// Run a parsed command line.
///
/// # Errors
/// Whatever the subcommand reports, with context.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let exit = run_exit(cli)?;
    if exit != Exit::Success {
        let _ = io::stdout().flush();
        std::process::exit(i32::from(exit.code()));
    }
    Ok(())
}

/// Run a parsed command line and give its exit status (client commands report their
/// own errors on stderr; the status tells success, failure or unreachable daemon).
///
/// # Errors
/// Whatever the non-client subcommands report, with context.
pub fn run_exit(cli: Cli) -> anyhow::Result<Exit> {
    let opts = &cli.client;
    let etcd = &cli.etcd;
    match cli.command {
        Command::Status(a) if etcd.enabled() => cluster_status::status(etcd, &a),
        Command::Check(a) if etcd.enabled() => cluster_checks::run(etcd, &a),
        Command::Watch(a) if etcd.enabled() => cluster_status::watch(etcd, &a),
        Command::Probe(a) => probe::run(&a).map(|()| Exit::Success),
        Command::Demo(a) => demo::run(&a).map(|()| Exit::Success),
        Command::Status(a) => Ok(with_client(opts, |c, out| status::run(c, &a, out))),
        Command::Check(a) => Ok(with_client(opts, |c, out| check::run(c, &a, out))),
        Command::History(a) => Ok(with_client(opts, |c, out| history::run(c, &a, out))),
        Command::Watch(a) => Ok(with_client(opts, |c, out| {
            watch::follow(c, &a, &watch::Follow::default(), out, &mut io::stderr())
        })),
        Command::Validate(a) => Ok(validate::run(&a, &mut io::stdout(), &mut io::stderr())),
        Command::Run(a) => run::run(&a, opts, etcd).map(|()| Exit::Success),
        Command::Nodes(a) => cluster::nodes(&a, etcd).map(|()| Exit::Success),
        Command::Leader(a) => cluster::leader(&a, etcd).map(|()| Exit::Success),
        Command::Reload { json } => Ok(with_client(opts, |c, out| reload::run(c, json, out))),
        Command::Completions(a) => completions::completions(&a).map(|()| Exit::Success),
        Command::Man(a) => completions::man(&a).map(|()| Exit::Success),
    }
}

/// Run a client command on stdout, reporting its error on stderr.
fn with_client(
    opts: &ClientOptions,
    f: impl FnOnce(&client::Client, &mut dyn io::Write) -> Result<Exit, ClientError>,
) -> Exit {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    match opts.client().and_then(|c| f(&c, &mut out)) {
        Ok(exit) => exit,
        Err(e) => client::report(&e, &mut io::stderr()),
    }
}
