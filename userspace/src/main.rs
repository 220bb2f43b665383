//! The `sonde` binary: daemon and CLI in one.

use clap::Parser;

/// mimalloc, not glibc's malloc: loading a million checks parses a configuration
/// whose temporary nodes outnumber the checks' own allocations, and glibc kept every
/// page of them resident where one live check id remained (about 800 bytes per
/// check after the parse, 1,043 resident against 255 live; bench/README.md, `scale`).
/// mimalloc keeps each size class in pages of its own and returns emptied pages.
/// Transparent huge pages are off (the `no_thp` feature): with them, partly used
/// 2 MiB pages were resident in full (85 bytes more per check).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
