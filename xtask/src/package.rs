//! `cargo xtask package`, `cargo xtask completions`, `cargo xtask man`: the Debian
//! package of the `sonde` binary and the files generated for it.
//!
//! - `completions`: builds the release binary and runs its hidden
//!   `sonde completions SHELL` into `target/release/completions/` (`sonde.bash`,
//!   `_sonde`, `sonde.fish`);
//! - `man`: builds the release binary and runs its hidden `sonde man DIR` into
//!   `target/release/man/` (`sonde.1`, `sonde-run.1`, ... and a `gzip -9n` copy of
//!   each, which the package ships);
//! - `package`: `build-ebpf`, the release binary (embedding the eBPF object),
//!   completions, man pages, then `cargo deb -p sonde --no-build` (installing
//!   cargo-deb first when missing). Prints the `.deb`'s path (`target/debian/`).
//!
//! The generated files live under `target/release/` because cargo-deb maps asset
//! paths starting with `target/release/` to the real target directory (also with
//! `CARGO_TARGET_DIR`); `[package.metadata.deb]` in `userspace/Cargo.toml` lists them.
//! Generating through the binary, rather than linking the `sonde` crate into xtask,
//! keeps xtask buildable on a fresh machine before `setup` (the `sonde` crate needs
//! protoc) and makes the scripts exactly those of the packaged binary.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::build;
use crate::cmd::{report, target_dir, workspace_root, Cmd};

/// The cargo-deb release installed when `cargo deb` is missing (the one tested).
pub const CARGO_DEB_VERSION: &str = "3.8.0";

/// Completion scripts: shell name for `sonde completions`, file name.
pub const COMPLETIONS: &[(&str, &str)] = &[
    ("bash", "sonde.bash"),
    ("zsh", "_sonde"),
    ("fish", "sonde.fish"),
];

/// `target/release/completions`.
pub fn completions_dir() -> PathBuf {
    target_dir().join("release").join("completions")
}

/// `target/release/man`.
pub fn man_dir() -> PathBuf {
    target_dir().join("release").join("man")
}

/// `cargo` in the workspace root, told where the eBPF object is when needed.
fn cargo() -> Cmd {
    build::with_ebpf_obj(Cmd::new("cargo").current_dir(&workspace_root()))
}

/// Builds `target/release/sonde` and returns its path.
fn release_binary() -> Result<PathBuf> {
    cargo()
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "sonde",
            "--bin",
            "sonde",
        ])
        .run()
        .context("building the release binary")?;
    let bin = target_dir().join("release").join("sonde");
    if !bin.is_file() {
        bail!("the build succeeded but {} is missing", bin.display());
    }
    Ok(bin)
}

/// Removes `dir` and creates it empty, so files of removed subcommands do not linger.
fn fresh_dir(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// Writes the completion scripts of `sonde` (the binary at `bin`) into
/// [`completions_dir`]; returns their paths.
pub fn write_completions(bin: &Path) -> Result<Vec<PathBuf>> {
    let dir = completions_dir();
    fresh_dir(&dir)?;
    let mut out = Vec::new();
    for (shell, file) in COMPLETIONS {
        let script = Cmd::new(bin).args(["completions", shell]).read()?;
        if script.trim().is_empty() {
            bail!("`sonde completions {shell}` printed nothing");
        }
        let path = dir.join(file);
        fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
        out.push(path);
    }
    Ok(out)
}

/// Writes the man pages of `sonde` (the binary at `bin`) into [`man_dir`], plus a
/// `gzip -9n` copy of each; returns the paths of the uncompressed pages.
pub fn write_man_pages(bin: &Path) -> Result<Vec<PathBuf>> {
    let dir = man_dir();
    fresh_dir(&dir)?;
    let listed = Cmd::new(bin).arg("man").arg(&dir).read()?;
    let pages: Vec<PathBuf> = listed.lines().map(PathBuf::from).collect();
    if !pages.iter().any(|p| p.ends_with("sonde.1")) {
        bail!("`sonde man` did not write sonde.1 (it listed: {listed:?})");
    }
    // -n: no name or time stamp in the header (reproducible); -k: keep the page.
    Cmd::new("gzip").args(["-9nkf"]).args(&pages).read()?;
    Ok(pages)
}

/// `cargo xtask completions`.
pub fn completions() -> Result<()> {
    let bin = release_binary()?;
    for path in write_completions(&bin)? {
        println!("{}", path.display());
    }
    Ok(())
}

/// `cargo xtask man`.
pub fn man() -> Result<()> {
    let bin = release_binary()?;
    for path in write_man_pages(&bin)? {
        println!("{}", path.display());
    }
    Ok(())
}

/// Makes sure `cargo deb` works, installing cargo-deb when it is missing.
fn ensure_cargo_deb() -> Result<()> {
    if let Ok(v) = Cmd::new("cargo").args(["deb", "--version"]).read() {
        report("cargo-deb", &format!("already there ({})", v.trim()));
        return Ok(());
    }
    Cmd::new("cargo")
        .args([
            "install",
            "cargo-deb",
            "--locked",
            "--version",
            CARGO_DEB_VERSION,
        ])
        .network()
        .run()?;
    report("cargo-deb", &format!("installed {CARGO_DEB_VERSION}"));
    Ok(())
}

/// `cargo xtask package`: everything, then the `.deb`; prints its path.
pub fn package() -> Result<()> {
    build::build_ebpf(false).context("building the eBPF object")?;
    let bin = release_binary()?;
    let completions = write_completions(&bin)?;
    let pages = write_man_pages(&bin)?;
    println!(
        "generated {} completion scripts in {}, {} man pages in {}",
        completions.len(),
        completions_dir().display(),
        pages.len(),
        man_dir().display()
    );
    ensure_cargo_deb()?;
    let out = cargo()
        .args(["deb", "-p", "sonde", "--no-build"])
        .read()
        .context("building the Debian package")?;
    let deb = out
        .lines()
        .map(str::trim)
        .rfind(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .with_context(|| format!("cargo deb printed no .deb path: {out:?}"))?;
    let size = fs::metadata(&deb)
        .with_context(|| format!("cargo deb reported {} but it is missing", deb.display()))?
        .len();
    println!(
        "package: {} ({:.1} MiB)",
        deb.display(),
        size as f64 / (1024.0 * 1024.0)
    );
    println!(
        "inspect: dpkg-deb --info {0}; dpkg-deb -c {0}",
        deb.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_files_live_where_the_deb_metadata_expects_them() {
        let manifest = fs::read_to_string(workspace_root().join("userspace/Cargo.toml"))
            .expect("userspace/Cargo.toml");
        for (_, file) in COMPLETIONS {
            let asset = format!("\"target/release/completions/{file}\"");
            assert!(manifest.contains(&asset), "{asset} not in the assets");
        }
        assert!(manifest.contains("\"target/release/man/*.1.gz\""));
        assert!(completions_dir().ends_with("release/completions"));
        assert!(man_dir().ends_with("release/man"));
    }
}
