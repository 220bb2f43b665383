//! The `sonde` binary: daemon and CLI in one.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = sonde::cli::Cli::parse();
    sonde::cli::init_logging(cli.verbose, cli.log_format);
    match sonde::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sonde: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
