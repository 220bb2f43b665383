//! sonde's developer tasks, run as `cargo xtask <task>` (alias in
//! `.cargo/config.toml`).
//!
//! - `setup`: install what this machine lacks (apt packages, nightly +
//!   rust-src, bpf-linker against nightly's libLLVM);
//! - `build-ebpf`: build the kernel programs with nightly;
//! - `test`: setup, build-ebpf, fmt, clippy, tests (what CI runs);
//! - `demo`: build everything and run `sonde demo`;
//! - `bench`: run a script from `bench/`;
//! - `fuzz`: run every cargo-fuzz target of `fuzz/` for a bounded time;
//! - `package`: the Debian package of `sonde` (eBPF object, release binary,
//!   completions, man pages, cargo-deb) in `target/debian/`;
//! - `completions`, `man`: only the shell completions or the man pages.

mod bench;
mod bpf_linker;
mod build;
mod cmd;
mod demo;
mod fuzz;
mod package;
mod setup;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "sonde's developer tasks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing (idempotent; apt needs root).
    Setup,
    /// Build the eBPF object (target/bpfel-unknown-none/release/probe-ebpf).
    BuildEbpf {
        /// Print the command line instead of running it.
        #[arg(long)]
        print_only: bool,
    },
    /// Setup, build-ebpf, fmt, clippy, then cargo test.
    Test {
        /// Appended to `cargo test` (after `--`), e.g. `-- -p sonde -- --nocapture`.
        #[arg(last = true)]
        cargo_test_args: Vec<String>,
    },
    /// Setup, build everything, run `target/release/sonde demo ARGS...`.
    Demo {
        /// Passed to `sonde demo`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run bench/NAME.sh, or list the benchmarks without NAME.
    Bench {
        /// Benchmark name (bench/NAME.sh).
        name: Option<String>,
        /// Passed to the script (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run every fuzz target (fuzz/) for a bounded time; fails if one finds a crash.
    Fuzz {
        /// Seconds per target (libFuzzer -max_total_time).
        #[arg(long, default_value_t = fuzz::DEFAULT_SECS,
              value_parser = clap::value_parser!(u64).range(1..=86_400))]
        secs: u64,
        /// Rewrite the seed corpora (fuzz/corpus/) first.
        #[arg(long)]
        seeds: bool,
        /// Only these targets (default: every one `cargo fuzz list` shows).
        targets: Vec<String>,
    },
    /// Build the Debian package (eBPF object, release binary, completions, man pages,
    /// cargo-deb) into target/debian/ and print its path.
    Package,
    /// Generate the shell completions (bash, zsh, fish) into target/release/completions/.
    Completions,
    /// Generate the man pages into target/release/man/.
    Man,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run(),
        Task::BuildEbpf { print_only } => build::build_ebpf(print_only).map(drop),
        Task::Test { cargo_test_args } => test::run(cargo_test_args),
        Task::Demo { args } => demo::run(args),
        Task::Bench { name, args } => bench::run(name, args),
        Task::Fuzz {
            secs,
            seeds,
            targets,
        } => fuzz::run(secs, seeds, &targets),
        Task::Package => package::package(),
        Task::Completions => package::completions(),
        Task::Man => package::man(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Task {
        Cli::try_parse_from(argv).expect("parses").task
    }

    #[test]
    fn test_args_after_double_dash_are_kept_verbatim() {
        let Task::Test { cargo_test_args } =
            parse(&["xtask", "test", "--", "-p", "sonde", "--", "--nocapture"])
        else {
            panic!("not test");
        };
        assert_eq!(cargo_test_args, ["-p", "sonde", "--", "--nocapture"]);
    }

    #[test]
    fn demo_and_bench_pass_args_through() {
        let Task::Demo { args } = parse(&["xtask", "demo", "--targets", "3"]) else {
            panic!("not demo");
        };
        assert_eq!(args, ["--targets", "3"]);
        let Task::Bench { name, args } = parse(&["xtask", "bench", "syn", "--", "-n", "5"]) else {
            panic!("not bench");
        };
        assert_eq!(name.as_deref(), Some("syn"));
        assert_eq!(args, ["-n", "5"]);
    }

    #[test]
    fn fuzz_defaults_and_bounds() {
        let Task::Fuzz {
            secs,
            seeds,
            targets,
        } = parse(&["xtask", "fuzz"])
        else {
            panic!("not fuzz");
        };
        assert_eq!((secs, seeds, targets.len()), (30, false, 0));
        let Task::Fuzz { secs, targets, .. } =
            parse(&["xtask", "fuzz", "--secs", "5", "classify", "dns_response"])
        else {
            panic!("not fuzz");
        };
        assert_eq!(secs, 5);
        assert_eq!(targets, ["classify", "dns_response"]);
        assert!(Cli::try_parse_from(["xtask", "fuzz", "--secs", "0"]).is_err());
    }
}
