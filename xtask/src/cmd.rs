//! Running external commands with readable echoes and errors.
//!
//! Every failure names the command line and its exit status; commands that
//! reach the network (apt, rustup, crates.io) add the hint
//! "no network to the registries?". Commands also get a cleaned environment:
//! `cargo xtask` runs under the outer (stable) cargo, which exports variables
//! such as `RUSTUP_TOOLCHAIN`, `CARGO`, `RUSTC` and a toolchain-specific
//! `LD_LIBRARY_PATH` that would otherwise pin nested tools to that toolchain.

use std::env;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

const NETWORK_HINT: &str = "no network to the registries?";

/// Variables set by the outer cargo/rustup that must not leak into a nested
/// toolchain invocation (a nested `rustup run nightly cargo` would otherwise
/// run stable's rustc, or cargo would reuse the outer flags).
const TOOLCHAIN_VARS: &[&str] = &[
    "RUSTUP_TOOLCHAIN",
    "RUSTUP_TOOLCHAIN_SOURCE",
    "CARGO",
    "RUSTC",
    "RUSTDOC",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
];

/// A command plus the text shown for it in echoes and errors.
pub struct Cmd {
    inner: Command,
    shown: String,
    network: bool,
}

impl Cmd {
    /// A command with the outer cargo's per-binary variables removed
    /// (`CARGO_PKG_*`, `CARGO_MANIFEST_*`, ...) and `LD_LIBRARY_PATH` cleared of
    /// the entries `cargo run` added. The outer toolchain selection is kept.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        let program = program.as_ref();
        let mut inner = Command::new(program);
        for (key, _) in env::vars_os() {
            let Some(key) = key.to_str() else { continue };
            if key.starts_with("CARGO_PKG_")
                || key.starts_with("CARGO_MANIFEST_")
                || matches!(
                    key,
                    "CARGO_BIN_NAME" | "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE"
                )
            {
                inner.env_remove(key);
            }
        }
        match cleaned_ld_library_path() {
            Some(value) if value.is_empty() => {
                inner.env_remove("LD_LIBRARY_PATH");
            }
            Some(value) => {
                inner.env("LD_LIBRARY_PATH", value);
            }
            None => {}
        }
        Cmd {
            inner,
            shown: quote(&program.to_string_lossy()),
            network: false,
        }
    }

    /// Like [`Cmd::new`], and also drops the toolchain-pinning variables
    /// ([`TOOLCHAIN_VARS`]) so `rustup run <toolchain>` / `cargo +<toolchain>`
    /// really select that toolchain and host flags do not leak.
    pub fn toolchain_neutral(program: impl AsRef<OsStr>) -> Self {
        let mut cmd = Cmd::new(program);
        for var in TOOLCHAIN_VARS {
            cmd.inner.env_remove(var);
        }
        cmd
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        let arg = arg.as_ref();
        self.shown.push(' ');
        self.shown.push_str(&quote(&arg.to_string_lossy()));
        self.inner.arg(arg);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for arg in args {
            self = self.arg(arg);
        }
        self
    }

    /// Sets a variable; it is shown in front of the command line.
    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        let value = value.as_ref();
        self.shown = format!("{key}={} {}", quote(&value.to_string_lossy()), self.shown);
        self.inner.env(key, value);
        self
    }

    /// Sets a variable whose value is unprintable (e.g. `\x1f`-separated),
    /// showing `display` in its place.
    pub fn env_displayed_as(mut self, key: &str, value: impl AsRef<OsStr>, display: &str) -> Self {
        self.shown = format!("{key}={display} {}", self.shown);
        self.inner.env(key, value);
        self
    }

    pub fn current_dir(mut self, dir: &Path) -> Self {
        self.inner.current_dir(dir);
        self
    }

    /// Marks the command as needing the network (adds the hint to errors).
    pub fn network(mut self) -> Self {
        self.network = true;
        self
    }

    /// The command line as echoed.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    fn hint(&self) -> String {
        if self.network {
            format!(" ({NETWORK_HINT})")
        } else {
            String::new()
        }
    }

    /// Echoes the command, runs it with inherited stdio, fails on non-zero exit.
    pub fn run(mut self) -> Result<()> {
        eprintln!("+ {}", self.shown);
        let status = self
            .inner
            .status()
            .with_context(|| format!("could not start `{}`", self.shown))?;
        if !status.success() {
            bail!("`{}` failed with {status}{}", self.shown, self.hint());
        }
        Ok(())
    }

    /// Runs quietly and returns stdout; on failure the error includes stderr.
    pub fn read(mut self) -> Result<String> {
        let out = self
            .inner
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("could not start `{}`", self.shown))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            bail!(
                "`{}` failed with {}{}: {}",
                self.shown,
                out.status,
                self.hint(),
                stderr.trim()
            );
        }
        String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8", self.shown))
    }

    /// Runs quietly and returns stdout even when the exit status is non-zero
    /// (for queries such as `dpkg-query` that fail on partial answers).
    pub fn read_lenient(mut self) -> Result<String> {
        let out = self
            .inner
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .with_context(|| format!("could not start `{}`", self.shown))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// `LD_LIBRARY_PATH` without the target/ and rustup toolchain entries that
/// `cargo run` prepends; `None` when the variable is unset.
fn cleaned_ld_library_path() -> Option<String> {
    let value = env::var("LD_LIBRARY_PATH").ok()?;
    let toolchains = rustup_home().join("toolchains");
    let target = target_dir();
    let kept: Vec<&str> = value
        .split(':')
        .filter(|p| {
            let p = Path::new(p);
            !p.as_os_str().is_empty() && !p.starts_with(&toolchains) && !p.starts_with(&target)
        })
        .collect();
    Some(kept.join(":"))
}

/// Single-quotes an argument for display when it needs it.
fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=+:,@%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The user's home directory.
pub fn home() -> Result<PathBuf> {
    env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .context("HOME is not set")
}

/// `$RUSTUP_HOME`, else `~/.rustup`.
pub fn rustup_home() -> PathBuf {
    env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .or_else(|| home().ok().map(|h| h.join(".rustup")))
        .unwrap_or_default()
}

/// `$CARGO_HOME`, else `~/.cargo`.
pub fn cargo_home() -> Result<PathBuf> {
    match env::var_os("CARGO_HOME") {
        Some(h) if !h.is_empty() => Ok(PathBuf::from(h)),
        _ => Ok(home()?.join(".cargo")),
    }
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// `$CARGO_TARGET_DIR` (relative to the workspace root), else `<root>/target`.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target"),
    }
}

/// Finds an executable by name in `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The effective uid, from `/proc/self/status` (no libc needed).
pub fn effective_uid() -> Result<u32> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .context("no effective uid in /proc/self/status")
}

/// Prints one setup line: item, then its state.
pub fn report(item: &str, state: &str) {
    println!("  {item:<58} {state}");
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn quotes_only_when_needed() {
        assert_eq!(quote("build-std=core"), "build-std=core");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }
}
