//! Embeds the eBPF object built by `cargo xtask build-ebpf`, when it exists, so the
//! `sonde` binary is self-contained. Without it sonde still builds and runs, with
//! userspace timestamps, and says why at start.

use std::{env, path::PathBuf};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(sonde_ebpf_embedded)");
    println!("cargo::rerun-if-env-changed=SONDE_EBPF_OBJ");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let obj = env::var_os("SONDE_EBPF_OBJ").map_or_else(
        || manifest.join("../target/bpfel-unknown-none/release/probe-ebpf"),
        PathBuf::from,
    );
    // Watch the directory too, so a first build-ebpf after a build without it is seen.
    if let Some(dir) = obj.parent() {
        if dir.exists() {
            println!("cargo::rerun-if-changed={}", dir.display());
        } else {
            println!(
                "cargo::rerun-if-changed={}",
                manifest.join("../target").display()
            );
        }
    }
    println!("cargo::rerun-if-changed={}", obj.display());
    if obj.is_file() {
        println!("cargo::rustc-cfg=sonde_ebpf_embedded");
        println!("cargo::rustc-env=SONDE_EBPF_OBJ_PATH={}", obj.display());
    } else {
        println!(
            "cargo::warning=eBPF object not found at {}; sonde will run without kernel timestamps (run `cargo xtask build-ebpf`)",
            obj.display()
        );
    }
}
