//! bpf-linker, built against the nightly toolchain's own libLLVM.
//!
//! Debian's LLVM (14) is too old, so bpf-linker 0.13.0 links the libLLVM that
//! ships inside the nightly toolchain (recipe in `TOOLCHAIN.md`). Its build
//! wants `$LLVM_PREFIX/lib/libLLVM.so`; the toolchain's real library is
//! `lib/libLLVM.so.<ver>-rust-<rustver>` (the `libLLVM-*.so` next to it is a
//! linker script), so the prefix holds two symlinks to that file: one named
//! `libLLVM.so` (for the build) and one under its own name (its SONAME, found
//! at run time through the binary's RUNPATH).
//!
//! A stamp file in the prefix records the libLLVM file name the binary was
//! built against. bpf-linker is rebuilt when it is missing, when
//! `bpf-linker --version` fails or is not 0.13.0, or when nightly's libLLVM
//! file name differs from the stamp (a nightly update removes the old file).

use std::env;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::cmd::{cargo_home, home, report, which, Cmd};

/// The bpf-linker release that matches aya 0.14 / LLVM 22.
pub const VERSION: &str = "0.13.0";
/// Overrides the LLVM prefix directory.
const PREFIX_VAR: &str = "SONDE_LLVM_PREFIX";
/// File in the prefix naming the libLLVM bpf-linker was built against.
const STAMP: &str = "bpf-linker.stamp";

/// What nightly provides.
struct NightlyLlvm {
    /// `<sysroot>/lib/libLLVM.so.<ver>-rust-<rustver>`.
    lib_path: PathBuf,
    /// Its file name.
    lib_name: String,
    /// LLVM major version (selects the `llvm-<major>` feature).
    major: String,
}

/// Makes sure a working bpf-linker built against nightly's libLLVM is there.
pub fn ensure() -> Result<()> {
    let llvm = nightly_llvm()?;
    let prefix = prefix_dir()?;
    let links_changed = ensure_links(&prefix, &llvm)?;
    report(
        &format!("llvm prefix {}", prefix.display()),
        if links_changed {
            "installed"
        } else {
            "already there"
        },
    );

    let stamp_path = prefix.join(STAMP);
    let item = format!("bpf-linker {VERSION}");
    match rebuild_reason(&prefix, &stamp_path, &llvm)? {
        None => report(&item, &format!("already there ({})", llvm.lib_name)),
        Some(reason) => {
            println!("  bpf-linker needs a build: {reason} (takes 1-2 minutes)");
            install(&prefix, &llvm)?;
            fs::write(&stamp_path, format!("{}\n", llvm.lib_name))
                .with_context(|| format!("writing {}", stamp_path.display()))?;
            report(&item, &format!("installed ({})", llvm.lib_name));
        }
    }
    match which("bpf-linker") {
        Some(_) => Ok(()),
        None => bail!(
            "bpf-linker is installed in {} but that directory is not on PATH; add it \
             (e.g. `. ~/.cargo/env`)",
            install_bin_dir()?.display()
        ),
    }
}

/// Finds nightly's libLLVM file and LLVM major version.
fn nightly_llvm() -> Result<NightlyLlvm> {
    let sysroot = Cmd::toolchain_neutral("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .read()?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let mut libs: Vec<String> = fs::read_dir(&lib_dir)
        .with_context(|| format!("listing {}", lib_dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.starts_with("libLLVM.so."))
        .collect();
    libs.sort();
    let lib_name = match libs.as_slice() {
        [one] => one.clone(),
        [] => bail!("no libLLVM.so.* in {}", lib_dir.display()),
        many => bail!(
            "several libLLVM.so.* in {}: {}",
            lib_dir.display(),
            many.join(", ")
        ),
    };
    let verbose = Cmd::toolchain_neutral("rustup")
        .args(["run", "nightly", "rustc", "-vV"])
        .read()?;
    let major = verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .and_then(|v| v.trim().split('.').next())
        .filter(|m| !m.is_empty() && m.chars().all(|c| c.is_ascii_digit()))
        .context("no `LLVM version: N.x` line in `rustc +nightly -vV`")?
        .to_string();
    Ok(NightlyLlvm {
        lib_path: lib_dir.join(&lib_name),
        lib_name,
        major,
    })
}

/// `$SONDE_LLVM_PREFIX`, else `~/.local/share/sonde-llvm`.
fn prefix_dir() -> Result<PathBuf> {
    match env::var_os(PREFIX_VAR) {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => Ok(home()?.join(".local/share/sonde-llvm")),
    }
}

/// Creates or repairs the two symlinks; true when something changed.
/// Links to other (older) libLLVM files are left alone: harmless, and a
/// binary built earlier may still name them.
fn ensure_links(prefix: &Path, llvm: &NightlyLlvm) -> Result<bool> {
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let mut changed = false;
    for name in ["libLLVM.so", llvm.lib_name.as_str()] {
        let link = lib.join(name);
        if fs::read_link(&link).ok().as_deref() == Some(llvm.lib_path.as_path()) {
            continue;
        }
        if link.symlink_metadata().is_ok() {
            fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
        }
        symlink(&llvm.lib_path, &link).with_context(|| {
            format!("linking {} -> {}", link.display(), llvm.lib_path.display())
        })?;
        changed = true;
    }
    Ok(changed)
}

/// Why bpf-linker must be (re)built, or `None` when it is fine.
fn rebuild_reason(prefix: &Path, stamp: &Path, llvm: &NightlyLlvm) -> Result<Option<String>> {
    let Some(binary) = which("bpf-linker").or_else(|| {
        let path = install_bin_dir().ok()?.join("bpf-linker");
        path.is_file().then_some(path)
    }) else {
        return Ok(Some("not installed".into()));
    };
    let version = match Cmd::new(&binary).arg("--version").read() {
        Ok(v) => v,
        Err(e) => return Ok(Some(format!("{e:#}"))),
    };
    if version.split_whitespace().nth(1) != Some(VERSION) {
        return Ok(Some(format!(
            "`bpf-linker --version` says {:?}, want {VERSION}",
            version.trim()
        )));
    }
    match fs::read_to_string(stamp) {
        Ok(built) if built.trim() == llvm.lib_name => Ok(None),
        Ok(built) => Ok(Some(format!(
            "built against {}, nightly now ships {}",
            built.trim(),
            llvm.lib_name
        ))),
        Err(_) if links_into(&binary, prefix, &llvm.lib_name) => {
            // Built by hand with the same recipe before this stamp existed:
            // adopt it rather than spend two minutes rebuilding.
            fs::write(stamp, format!("{}\n", llvm.lib_name))
                .with_context(|| format!("writing {}", stamp.display()))?;
            Ok(None)
        }
        Err(_) => Ok(Some(format!(
            "no {} and it does not load {} from {}",
            stamp.display(),
            llvm.lib_name,
            prefix.display()
        ))),
    }
}

/// True when `ldd` shows `binary` loading `lib_name` from `<prefix>/lib`.
fn links_into(binary: &Path, prefix: &Path, lib_name: &str) -> bool {
    let Ok(out) = Cmd::new("ldd").arg(binary).read() else {
        return false;
    };
    let want = prefix.join("lib").join(lib_name);
    out.lines().any(|line| {
        let mut parts = line.split_whitespace();
        parts.next() == Some(lib_name)
            && parts.next() == Some("=>")
            && parts.next().map(Path::new) == Some(want.as_path())
    })
}

/// Where `cargo install` puts binaries: `$CARGO_INSTALL_ROOT/bin`, else
/// `$CARGO_HOME/bin`.
fn install_bin_dir() -> Result<PathBuf> {
    match env::var_os("CARGO_INSTALL_ROOT") {
        Some(root) if !root.is_empty() => Ok(PathBuf::from(root).join("bin")),
        _ => Ok(cargo_home()?.join("bin")),
    }
}

/// `LLVM_PREFIX=<prefix> cargo +stable install bpf-linker ...` (forced, so a
/// same-version binary built against an older libLLVM is replaced).
fn install(prefix: &Path, llvm: &NightlyLlvm) -> Result<()> {
    Cmd::toolchain_neutral("rustup")
        .env("LLVM_PREFIX", prefix)
        .args(["run", "stable", "cargo", "install", "bpf-linker"])
        .args(["--version", VERSION, "--locked", "--force"])
        .arg("--no-default-features")
        .args(["--features", &format!("llvm-{}", llvm.major)])
        .network()
        .run()?;
    let binary = install_bin_dir()?.join("bpf-linker");
    let version = Cmd::new(&binary)
        .arg("--version")
        .read()
        .context("the freshly built bpf-linker does not run")?;
    println!("  built {}", version.trim());
    if let Some(first) = which("bpf-linker").filter(|found| *found != binary) {
        println!(
            "  warning: PATH finds {} before the new {}",
            first.display(),
            binary.display()
        );
    }
    Ok(())
}
