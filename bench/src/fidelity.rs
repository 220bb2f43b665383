//! `sonde-fidelity`: how faithfully each method measures a round trip, for
//! `bench/fidelity.sh` (`cargo xtask bench fidelity`).
//!
//! - `sonde-fidelity probe`: inside the prober namespace, `--count` probes of one target,
//!   `--interval-us` apart, through sonde's engine (the stateless worker), with the
//!   kernel programs (kernel timestamps) or with `--userspace` (the engine's
//!   `PacketSource` fallback: answers read from an `AF_PACKET` socket and timed in
//!   userspace). Writes each answered probe's RTT in nanoseconds to `--out`.
//! - `sonde-fidelity report`: reads every `<kind>.<method>.<cond>.rtt` file of `--dir`
//!   (sonde's, and ping's or hping3's converted by the script), prints p50, p90, p99,
//!   p99.9, max, the spread (p99 - p50) and its ratio to the kernel's, checks the
//!   goals, and writes a TSV, a Markdown table and a PNG plot of the distributions.

mod fidelity_font;
mod fidelity_plot;
mod fidelity_png;
mod fidelity_probe;
mod fidelity_report;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

/// What to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// ICMP echo request.
    Icmp,
    /// TCP SYN to --port.
    Syn,
}

/// Command line.
#[derive(Parser, Debug)]
#[command(
    name = "sonde-fidelity",
    about = "RTT fidelity benchmark: kernel vs userspace timestamps (see bench/fidelity.sh)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Probe one target through sonde's engine and record each RTT (run inside the
    /// prober namespace).
    Probe(fidelity_probe::ProbeArgs),
    /// Percentiles, spreads, goals, TSV, Markdown and PNG from a directory of samples.
    Report(ReportArgs),
}

/// Arguments of `report`.
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Directory holding `<kind>.<method>.<cond>.rtt` files.
    #[arg(long)]
    pub dir: PathBuf,
    /// Where to write the plot.
    #[arg(long)]
    pub png: PathBuf,
    /// Where to write the table as tab-separated values.
    #[arg(long)]
    pub tsv: PathBuf,
    /// Where to write the table and goals as Markdown.
    #[arg(long)]
    pub markdown: PathBuf,
    /// One line describing the load, for the plot's subtitle.
    #[arg(long, default_value = "")]
    pub load: String,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Probe(a) => fidelity_probe::run(&a),
        Command::Report(a) => fidelity_report::run(&a),
    }
}
