//! `cargo xtask build-ebpf`: builds the kernel programs (crate `probe-ebpf`).
//!
//! Runs, in the workspace root:
//!
//! ```text
//! CARGO_ENCODED_RUSTFLAGS="-C debuginfo=2 -C link-arg=--btf" \
//!   rustup run nightly cargo build -p probe-ebpf \
//!   --target bpfel-unknown-none -Z build-std=core --release
//! ```
//!
//! Nightly is selected explicitly, and the variables the outer (stable)
//! `cargo xtask` exports (`RUSTUP_TOOLCHAIN`, `CARGO`, `RUSTC`, host
//! `RUSTFLAGS`, ...) are removed, so neither stable's rustc nor the host's
//! flags leak in. Release only: the verifier rejects debug builds. rustc links
//! through `bpf-linker` (see `cargo xtask setup`).
//!
//! The object lands in `target/bpfel-unknown-none/release/probe-ebpf`. The
//! userspace crate's build.rs embeds that object when it exists, so it must
//! emit `cargo:rerun-if-changed=<that path>`: then the next
//! `cargo build -p sonde` picks up a new object by itself, and this task
//! touches nothing else. (With `CARGO_TARGET_DIR` set, `test` and `demo`
//! pass the object's path to it as `SONDE_EBPF_OBJ`.)

use std::env;
use std::fs;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::cmd::{target_dir, which, workspace_root, Cmd};

/// The eBPF crate (and its binary's name).
pub const EBPF_PACKAGE: &str = "probe-ebpf";
/// The target triple for little-endian BPF.
pub const EBPF_TARGET: &str = "bpfel-unknown-none";
/// Rustflags for the eBPF build: BTF needs debug info plus bpf-linker's --btf.
const EBPF_RUSTFLAGS: &[&str] = &["-C", "debuginfo=2", "-C", "link-arg=--btf"];

/// Path of the eBPF object produced by [`build_ebpf`].
pub fn ebpf_object() -> PathBuf {
    target_dir()
        .join(EBPF_TARGET)
        .join("release")
        .join(EBPF_PACKAGE)
}

/// `rustup run nightly cargo <subcommand> -p probe-ebpf` for the BPF target,
/// release, with the eBPF rustflags, in the workspace root. Shared by the
/// build and by `cargo xtask test`'s clippy step so both reuse one `core`.
pub fn nightly_ebpf_cargo(subcommand: &str) -> Cmd {
    Cmd::toolchain_neutral("rustup")
        .env_displayed_as(
            "CARGO_ENCODED_RUSTFLAGS",
            EBPF_RUSTFLAGS.join("\x1f"),
            &format!("'{}'", EBPF_RUSTFLAGS.join(" ")),
        )
        .args(["run", "nightly", "cargo", subcommand, "-p", EBPF_PACKAGE])
        .args(["--target", EBPF_TARGET, "-Z", "build-std=core", "--release"])
        .current_dir(&workspace_root())
}

/// The nightly cargo command that builds the eBPF object.
pub fn ebpf_command() -> Cmd {
    nightly_ebpf_cargo("build")
}

/// Points userspace's build.rs at the object (`SONDE_EBPF_OBJ`) when
/// `CARGO_TARGET_DIR` moves it away from `<root>/target`, where that build.rs
/// looks by default. Left unset otherwise, so plain `cargo build` and xtask
/// runs see the same environment and do not rebuild `sonde` back and forth.
pub fn with_ebpf_obj(cmd: Cmd) -> Cmd {
    let moved = env::var_os("CARGO_TARGET_DIR").is_some_and(|d| !d.is_empty());
    if moved && env::var_os("SONDE_EBPF_OBJ").is_none() {
        cmd.env("SONDE_EBPF_OBJ", ebpf_object())
    } else {
        cmd
    }
}

/// Builds the eBPF object and prints its path and size. With `print_only`,
/// prints the command line instead of running it.
pub fn build_ebpf(print_only: bool) -> Result<PathBuf> {
    let cmd = ebpf_command();
    if print_only {
        println!("{}", cmd.shown());
        return Ok(ebpf_object());
    }
    if which("bpf-linker").is_none() {
        bail!("`bpf-linker` is not on PATH: run `cargo xtask setup` first");
    }
    let main = workspace_root().join(EBPF_PACKAGE).join("src/main.rs");
    if !main.exists() {
        bail!("{} does not exist yet: nothing to build", main.display());
    }
    cmd.run()
        .with_context(|| format!("building the eBPF crate `{EBPF_PACKAGE}`"))?;
    let object = ebpf_object();
    let size = fs::metadata(&object)
        .with_context(|| format!("the build succeeded but {} is missing", object.display()))?
        .len();
    println!(
        "eBPF object: {} ({size} bytes, {:.1} KiB)",
        object.display(),
        size as f64 / 1024.0
    );
    Ok(object)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ebpf_command_line() {
        assert_eq!(
            super::ebpf_command().shown(),
            "CARGO_ENCODED_RUSTFLAGS='-C debuginfo=2 -C link-arg=--btf' rustup run nightly \
             cargo build -p probe-ebpf --target bpfel-unknown-none -Z build-std=core --release"
        );
    }
}
