//! Command-line interface: clap definitions and one module per subcommand.
//! Human tables by default, `--json` for scripts.

mod demo;
mod probe;
mod table;

use clap::{Parser, Subcommand};

pub use probe::{probe_session, AnswerPath, ProbeArgs, Session};

/// sonde: distributed, eBPF/XDP-accelerated health checker.
#[derive(Debug, Parser)]
#[command(name = "sonde", version, about, propagate_version = true)]
pub struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
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
    /// Build a small lab of target namespaces (198.18.0.0/15), probe it through the
    /// kernel path and print the results. Needs root.
    Demo(demo::DemoArgs),
}

/// Set up `tracing` logs on stderr.
pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Run a parsed command line.
///
/// # Errors
/// Whatever the subcommand reports, with context.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Probe(a) => probe::run(&a),
        Command::Demo(a) => demo::run(&a),
    }
}
