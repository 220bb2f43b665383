//! `cargo xtask setup`: installs what a fresh Debian 12 machine lacks.
//!
//! Idempotent and fast when nothing is missing: each item is checked first
//! and reported as "already there" or "installed". Items:
//! - Debian packages ([`APT_PACKAGES`]), installed with one `apt-get update`
//!   and one `apt-get install` (needs root);
//! - the rustup `nightly` toolchain and its `rust-src` component (never
//!   `rustup update`: a new nightly drops the libLLVM bpf-linker uses);
//! - bpf-linker, built against nightly's libLLVM (see [`crate::bpf_linker`]).

use anyhow::{bail, Context, Result};

use crate::bpf_linker;
use crate::cmd::{effective_uid, report, which, Cmd};

/// Debian packages the project needs: protoc for etcd-client, etcd for the
/// cluster tests, nftables/iproute2/ethtool/procps for the lab.
pub const APT_PACKAGES: &[&str] = &[
    "protobuf-compiler",
    "etcd-server",
    "etcd-client",
    "nftables",
    "iproute2",
    "ethtool",
    "procps",
    // Packaging and alerting tests: systemd-analyze, promtool, man, shell completions.
    "systemd",
    "prometheus",
    "man-db",
    "groff-base",
    "shellcheck",
    "zsh",
    "fish",
    // Status page test: a real headless browser driven through WebDriver.
    "chromium",
    "chromium-driver",
];

/// Runs every setup step in order, stopping at the first failure.
pub fn run() -> Result<()> {
    println!("setup: checking what this machine needs");
    apt().context("setup step `apt packages` failed")?;
    nightly().context("setup step `rust nightly` failed")?;
    bpf_linker::ensure().context("setup step `bpf-linker` failed")?;
    println!("setup: done");
    Ok(())
}

/// Installs the missing Debian packages.
fn apt() -> Result<()> {
    if which("dpkg-query").is_none() {
        bail!("`dpkg-query` not found: setup expects a Debian/Ubuntu machine");
    }
    let missing = missing_packages(APT_PACKAGES)?;
    for pkg in APT_PACKAGES {
        if !missing.contains(pkg) {
            report(&format!("apt {pkg}"), "already there");
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let euid = effective_uid()?;
    if euid != 0 {
        bail!(
            "missing Debian packages: {}; installing them needs root (running as uid {euid}): \
             rerun as root or run `apt-get install {}` yourself",
            missing.join(" "),
            missing.join(" ")
        );
    }
    Cmd::new("apt-get").arg("update").network().run()?;
    Cmd::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y"])
        .args(&missing)
        .network()
        .run()?;
    let still = missing_packages(&missing)?;
    if !still.is_empty() {
        bail!(
            "apt-get reported success but these are still not installed: {}",
            still.join(" ")
        );
    }
    for pkg in &missing {
        report(&format!("apt {pkg}"), "installed");
    }
    Ok(())
}

/// The packages of `wanted` whose dpkg status is not "install ok installed".
fn missing_packages<'a>(wanted: &[&'a str]) -> Result<Vec<&'a str>> {
    // dpkg-query exits 1 when some package is unknown but still prints the
    // others, so read stdout whatever the status.
    let out = Cmd::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\\n"])
        .args(wanted)
        .read_lenient()?;
    let installed: Vec<&str> = out
        .lines()
        .filter_map(|line| line.split_once(' '))
        .filter(|(_, status)| status.trim() == "install ok installed")
        .map(|(name, _)| name.split(':').next().unwrap_or(name))
        .collect();
    Ok(wanted
        .iter()
        .copied()
        .filter(|p| !installed.contains(p))
        .collect())
}

/// Ensures the `nightly` toolchain and its `rust-src` component exist.
fn nightly() -> Result<()> {
    if which("rustup").is_none() {
        bail!("`rustup` not found in PATH (is ~/.cargo/bin on PATH? install rustup first)");
    }
    let toolchains = Cmd::toolchain_neutral("rustup")
        .args(["toolchain", "list"])
        .read()?;
    let has_nightly = toolchains.lines().any(|line| {
        // "nightly-x86_64-unknown-linux-gnu (default)"; not a dated nightly.
        let name = line.split_whitespace().next().unwrap_or("");
        name.strip_prefix("nightly-")
            .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
    });
    if has_nightly {
        report("rustup toolchain nightly", "already there");
    } else {
        Cmd::toolchain_neutral("rustup")
            .args(["toolchain", "install", "nightly", "--profile", "minimal"])
            .network()
            .run()?;
        report("rustup toolchain nightly", "installed");
    }

    let components = Cmd::toolchain_neutral("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .read()?;
    // Listed as "rust-src" (it has no target suffix).
    if components
        .lines()
        .any(|l| l.trim() == "rust-src" || l.trim().starts_with("rust-src-"))
    {
        report("rustup component rust-src (nightly)", "already there");
    } else {
        Cmd::toolchain_neutral("rustup")
            .args(["component", "add", "rust-src", "--toolchain", "nightly"])
            .network()
            .run()?;
        report("rustup component rust-src (nightly)", "installed");
    }
    Ok(())
}
