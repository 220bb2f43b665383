//! `cargo xtask test`: the project's full check, as CI runs it.
//!
//! Steps, in order, stopping at the first failure (named in the error):
//! 1. `setup` (see [`crate::setup`]);
//! 2. `build-ebpf` (see [`crate::build`]);
//! 3. `fmt`: `cargo fmt --all --check`;
//! 4. `clippy`: `cargo clippy --workspace --exclude probe-ebpf --all-targets -- -D warnings`;
//! 5. `clippy-ebpf`: clippy on the eBPF crate for its own target, with nightly;
//! 6. `test`: `cargo test --workspace --exclude probe-ebpf [ARGS...]`.
//!
//! `probe-ebpf` is `#![no_std]`/`#![no_main]` and only builds for
//! `bpfel-unknown-none`, so the host steps exclude it and step 5 lints it on
//! its own target instead. Host unit tests and the integration tests run
//! together; the privileged ones (crate `sonde-tests`) need root and skip
//! without it, unless `SONDE_REQUIRE_PRIVILEGED=1` makes them fail (CI).
//!
//! Extra ARGS are appended to `cargo test` as given: `cargo xtask test --
//! lab_` filters, and `cargo xtask test -- -p sonde -- --nocapture` narrows
//! the packages (with `-p`/`--package`, `--workspace --exclude` is dropped)
//! and passes `--nocapture` to the test binaries.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::build::{self, EBPF_PACKAGE};
use crate::cmd::{effective_uid, workspace_root, Cmd};
use crate::setup;

/// Env var that turns skipped privileged tests into failures.
const REQUIRE_PRIVILEGED: &str = "SONDE_REQUIRE_PRIVILEGED";

/// One step of the pipeline.
type Step = (&'static str, Box<dyn FnOnce() -> Result<()>>);

/// Runs all steps; `cargo_test_args` go to `cargo test`.
pub fn run(cargo_test_args: Vec<String>) -> Result<()> {
    let steps: Vec<Step> = vec![
        ("setup", Box::new(setup::run)),
        (
            "build-ebpf",
            Box::new(|| build::build_ebpf(false).map(drop)),
        ),
        (
            "fmt",
            Box::new(|| cargo().args(["fmt", "--all", "--check"]).run()),
        ),
        (
            "clippy",
            Box::new(|| {
                cargo()
                    .args(["clippy", "--workspace", "--exclude", EBPF_PACKAGE])
                    .args(["--all-targets", "--", "-D", "warnings"])
                    .run()
            }),
        ),
        ("clippy-ebpf", Box::new(clippy_ebpf)),
        // The integration tests run the real `sonde` binary (daemon, CLI); `cargo test`
        // only builds a package's binaries for that package's own tests, so build it.
        (
            "build-sonde",
            Box::new(|| {
                cargo()
                    .args(["build", "-p", "sonde", "--bin", "sonde"])
                    .run()
            }),
        ),
        ("test", Box::new(move || cargo_test(cargo_test_args))),
    ];
    privileged_note();

    let started = Instant::now();
    let mut done: Vec<(&str, Duration)> = Vec::new();
    for (name, step) in steps {
        println!("\n==> xtask test: step `{name}`");
        let t = Instant::now();
        let result = step();
        let took = t.elapsed();
        if let Err(e) = result {
            summary(&done);
            println!("  {name:<12} FAILED {:>5.1} s", took.as_secs_f64());
            println!(
                "xtask test: FAILED at step `{name}` after {:.1} s",
                started.elapsed().as_secs_f64()
            );
            return Err(e.context(format!("step `{name}` failed")));
        }
        done.push((name, took));
    }
    summary(&done);
    println!(
        "xtask test: OK, all {} steps passed in {:.1} s",
        done.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `cargo` with the outer toolchain, in the workspace root, told where the
/// eBPF object is when needed.
fn cargo() -> Cmd {
    build::with_ebpf_obj(Cmd::new("cargo").current_dir(&workspace_root()))
}

/// Lints the eBPF crate for its target with nightly (it cannot build for the
/// host), with the build's flags so `core` and aya-ebpf are reused.
fn clippy_ebpf() -> Result<()> {
    build::nightly_ebpf_cargo("clippy")
        .args(["--", "-D", "warnings"])
        .run()
}

/// `cargo test` over the host crates plus the caller's arguments.
fn cargo_test(extra: Vec<String>) -> Result<()> {
    cargo_test_command(extra).run()
}

/// The `cargo test` command line; `--workspace --exclude probe-ebpf` unless
/// the caller names packages (before any second `--`).
fn cargo_test_command(extra: Vec<String>) -> Cmd {
    let names_packages = extra
        .iter()
        .take_while(|a| *a != "--")
        .any(|a| a.starts_with("--package") || a.starts_with("-p"));
    let mut cmd = cargo().arg("test");
    if !names_packages {
        cmd = cmd.args(["--workspace", "--exclude", EBPF_PACKAGE]);
    }
    cmd.args(extra)
}

/// Says up front whether privileged tests will run, skip or fail.
fn privileged_note() {
    let root = effective_uid().map(|u| u == 0).unwrap_or(false);
    let required = std::env::var(REQUIRE_PRIVILEGED).is_ok_and(|v| v == "1");
    match (root, required) {
        (true, _) => println!("xtask test: running as root, privileged tests run"),
        (false, true) => {
            println!("xtask test: not root and {REQUIRE_PRIVILEGED}=1: privileged tests will FAIL")
        }
        (false, false) => {
            println!("xtask test: not root: privileged tests (sonde-tests) will skip")
        }
    }
}

/// Prints how long each finished step took.
fn summary(done: &[(&str, Duration)]) {
    println!("\nxtask test summary:");
    for (name, took) in done {
        println!("  {name:<12} ok   {:>7.1} s", took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn test_command_covers_host_crates_and_appends_args() {
        let cmd = cargo_test_command(args(&["lab_", "--", "--nocapture"]));
        assert!(cmd
            .shown()
            .ends_with("cargo test --workspace --exclude probe-ebpf lab_ -- --nocapture"));
    }

    #[test]
    fn named_packages_replace_the_workspace() {
        let cmd = cargo_test_command(args(&["-p", "sonde", "--", "--nocapture"]));
        assert!(cmd.shown().ends_with("cargo test -p sonde -- --nocapture"));
        // A `-p` meant for the test binaries does not count.
        let cmd = cargo_test_command(args(&["--", "-p"]));
        assert!(cmd.shown().contains("--workspace --exclude probe-ebpf"));
    }
}
