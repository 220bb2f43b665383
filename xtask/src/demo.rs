//! `cargo xtask demo`: builds everything and runs `sonde demo`.
//!
//! Steps: setup, build-ebpf, `cargo build --release -p sonde` (whose build.rs
//! embeds the fresh eBPF object), then `target/release/sonde demo ARGS...`,
//! which builds a lab of network namespaces and probes it (needs root).

use anyhow::{Context, Result};

use crate::build;
use crate::cmd::{target_dir, workspace_root, Cmd};
use crate::setup;

/// Runs the demo, passing `args` to `sonde demo`.
pub fn run(args: Vec<String>) -> Result<()> {
    setup::run().context("demo: setup failed")?;
    build::build_ebpf(false).context("demo: build-ebpf failed")?;
    build::with_ebpf_obj(Cmd::new("cargo"))
        .args(["build", "--release", "-p", "sonde"])
        .current_dir(&workspace_root())
        .run()
        .context("demo: building sonde failed")?;
    let sonde = target_dir().join("release").join("sonde");
    Cmd::new(&sonde)
        .arg("demo")
        .args(args)
        .current_dir(&workspace_root())
        .run()
        .context("demo: `sonde demo` failed")
}
