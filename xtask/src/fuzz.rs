//! `cargo xtask fuzz [--secs N] [--seeds] [TARGET...]`: runs every cargo-fuzz target
//! of `fuzz/` for a bounded time and fails if one finds a crash.
//!
//! Steps:
//! 1. `cargo-fuzz` on PATH, else installed with `cargo +stable install cargo-fuzz
//!    --locked` (said before it starts: it takes a minute or two);
//! 2. the seed corpora `fuzz/corpus/<target>/` written by the `gen_corpus` example
//!    when one is missing or with `--seeds` (the example runs every seed through its
//!    target's checks first);
//! 3. `cargo +nightly fuzz build` (address sanitizer, debug assertions);
//! 4. each target (all of `cargo fuzz list`, or the ones named) run directly for `N`
//!    seconds (libFuzzer `-max_total_time`, 30 by default) on a working corpus in
//!    `fuzz/target/corpus/<target>/` plus the committed seeds, which libFuzzer only
//!    reads. A run that outlives `N` + [`GRACE`] is killed and counts as a failure, so
//!    the whole task is bounded.
//!
//! Output of each run goes to `fuzz/target/logs/<target>.log`; the summary gives
//! executions and their rate. A crash, timeout or out-of-memory leaves its input in
//! `fuzz/artifacts/<target>/`, named in the error together with the command that
//! replays it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::cmd::{which, workspace_root, Cmd};

/// Default seconds per target.
pub const DEFAULT_SECS: u64 = 30;
/// Time a run may take beyond `-max_total_time` (loading the corpus, the final
/// report) before it is killed.
const GRACE: Duration = Duration::from_secs(60);
/// libFuzzer's limit for one input: slower counts as a hang (a finding).
const PER_INPUT_TIMEOUT_SECS: u64 = 10;

/// How one target's run ended, with what libFuzzer reported.
#[derive(Debug, Default, PartialEq, Eq)]
struct RunStats {
    /// Inputs executed (`stat::number_of_executed_units`, or the `Done N runs` line).
    execs: Option<u64>,
    /// Executions per second as libFuzzer averaged them.
    per_sec: Option<u64>,
    /// Inputs added to the working corpus.
    new_units: Option<u64>,
    /// Reproducer written by libFuzzer on a crash (`Test unit written to PATH`).
    artifact: Option<String>,
}

/// Reads libFuzzer's final statistics and any reproducer path from its log.
fn parse_log(log: &str) -> RunStats {
    let mut s = RunStats::default();
    let num = |v: &str| v.trim().parse::<u64>().ok();
    for line in log.lines() {
        if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
            s.execs = num(v);
        } else if let Some(v) = line.strip_prefix("stat::average_exec_per_sec:") {
            s.per_sec = num(v);
        } else if let Some(v) = line.strip_prefix("stat::new_units_added:") {
            s.new_units = num(v);
        } else if let Some(rest) = line.split("Test unit written to ").nth(1) {
            s.artifact = Some(rest.trim().to_owned());
        } else if let Some(rest) = line.strip_prefix("Done ") {
            if s.execs.is_none() {
                s.execs = rest.split_whitespace().next().and_then(num);
            }
        }
    }
    s
}

/// Runs the fuzzers; see the module docs.
pub fn run(secs: u64, seeds: bool, only: &[String]) -> Result<()> {
    let root = workspace_root();
    let fuzz_dir = root.join("fuzz");
    ensure_cargo_fuzz()?;
    let all = list_targets(&root)?;
    let targets: Vec<String> = if only.is_empty() {
        all.clone()
    } else {
        for t in only {
            if !all.contains(t) {
                bail!("no fuzz target `{t}`; targets: {}", all.join(", "));
            }
        }
        only.to_vec()
    };
    let missing = all.iter().any(|t| {
        fs::read_dir(fuzz_dir.join("corpus").join(t)).map_or(true, |mut d| d.next().is_none())
    });
    if seeds || missing {
        println!("fuzz: writing the seed corpora (fuzz/corpus/)");
        nightly_cargo()
            .args(["run", "--quiet", "--manifest-path"])
            .arg(fuzz_dir.join("Cargo.toml"))
            .args(["--example", "gen_corpus"])
            .run()
            .context("generating the seed corpora")?;
    }
    let target_dir = fuzz_dir.join("target");
    nightly_cargo()
        .args(["fuzz", "build", "--target-dir"])
        .arg(&target_dir)
        .current_dir(&root)
        .run()
        .context("building the fuzz targets")?;
    let bin_dir = target_dir.join(host_triple()?).join("release");
    let logs = target_dir.join("logs");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let mut failed = Vec::new();
    let mut rows = Vec::new();
    for t in &targets {
        println!("fuzz: {t} for {secs} s");
        let started = Instant::now();
        let outcome = run_one(
            &fuzz_dir,
            &bin_dir.join(t),
            t,
            secs,
            &logs.join(format!("{t}.log")),
        );
        let took = started.elapsed().as_secs();
        match outcome {
            Ok(stats) => rows.push((t.clone(), took, stats, "ok".to_owned())),
            Err((stats, why)) => {
                eprintln!("fuzz: {t} FAILED: {why}");
                if let Some(a) = &stats.artifact {
                    eprintln!("  reproducer: {a}\n  replay: cargo +nightly fuzz run {t} {a}");
                }
                failed.push(t.clone());
                rows.push((t.clone(), took, stats, "FAILED".to_owned()));
            }
        }
    }
    println!(
        "\n  {:<16} {:>6} {:>12} {:>9} {:>8}  result",
        "target", "secs", "executions", "exec/s", "new"
    );
    let opt = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), |n| n.to_string());
    for (t, took, s, result) in &rows {
        println!(
            "  {t:<16} {took:>6} {:>12} {:>9} {:>8}  {result}",
            opt(s.execs),
            opt(s.per_sec),
            opt(s.new_units)
        );
    }
    println!("  logs: {}", logs.display());
    if !failed.is_empty() {
        bail!(
            "fuzz targets failed: {} (inputs in {}/artifacts/<target>/)",
            failed.join(", "),
            fuzz_dir.display()
        );
    }
    Ok(())
}

/// One target for `secs` seconds; `Err` carries what was learnt and why it failed.
fn run_one(
    fuzz_dir: &Path,
    bin: &Path,
    target: &str,
    secs: u64,
    log_path: &Path,
) -> Result<RunStats, (RunStats, String)> {
    let fail = |why: String| (RunStats::default(), why);
    let work = fuzz_dir.join("target").join("corpus").join(target);
    let seeds = fuzz_dir.join("corpus").join(target);
    let artifacts = fuzz_dir.join("artifacts").join(target);
    for dir in [&work, &artifacts] {
        fs::create_dir_all(dir).map_err(|e| fail(format!("creating {}: {e}", dir.display())))?;
    }
    let log = fs::File::create(log_path)
        .map_err(|e| fail(format!("creating {}: {e}", log_path.display())))?;
    let log_err = log
        .try_clone()
        .map_err(|e| fail(format!("{}: {e}", log_path.display())))?;
    let mut child = Command::new(bin)
        .arg(&work)
        .arg(&seeds)
        .arg(format!("-max_total_time={secs}"))
        .arg(format!("-timeout={PER_INPUT_TIMEOUT_SECS}"))
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .current_dir(fuzz_dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|e| fail(format!("could not start {}: {e}", bin.display())))?;
    let deadline = Instant::now() + Duration::from_secs(secs) + GRACE;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!(
                    "still running {} s past -max_total_time; killed",
                    GRACE.as_secs()
                ));
            }
            Ok(None) => thread::sleep(Duration::from_millis(200)),
            Err(e) => break Err(format!("waiting for the fuzzer: {e}")),
        }
    };
    let text = fs::read_to_string(log_path).unwrap_or_default();
    let stats = parse_log(&text);
    let why = match status {
        Ok(s) if s.success() => return Ok(stats),
        Ok(s) => format!("libFuzzer exited with {s}: a crash, hang or out-of-memory"),
        Err(why) => why,
    };
    let tail: Vec<&str> = text.lines().rev().take(40).collect();
    eprintln!("---- last lines of {} ----", log_path.display());
    for line in tail.iter().rev() {
        eprintln!("{line}");
    }
    Err((stats, why))
}

/// A `cargo +nightly` command without the outer cargo's toolchain pinning.
fn nightly_cargo() -> Cmd {
    Cmd::toolchain_neutral("cargo").arg("+nightly")
}

/// Installs cargo-fuzz when it is not on PATH.
fn ensure_cargo_fuzz() -> Result<()> {
    if which("cargo-fuzz").is_some() {
        return Ok(());
    }
    println!("fuzz: cargo-fuzz not found; installing it with `cargo +stable install cargo-fuzz --locked` (a minute or two)");
    Cmd::toolchain_neutral("cargo")
        .args(["+stable", "install", "cargo-fuzz", "--locked"])
        .network()
        .run()
        .context("installing cargo-fuzz")?;
    if which("cargo-fuzz").is_none() {
        bail!("cargo-fuzz was installed but is not on PATH; add ~/.cargo/bin to PATH");
    }
    Ok(())
}

/// Names of the fuzz targets (`cargo fuzz list`).
fn list_targets(root: &Path) -> Result<Vec<String>> {
    let out = nightly_cargo()
        .args(["fuzz", "list"])
        .current_dir(root)
        .read()
        .context(
            "listing the fuzz targets (is the nightly toolchain installed? `cargo xtask setup`)",
        )?;
    let names: Vec<String> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if names.is_empty() {
        bail!(
            "`cargo fuzz list` found no targets in {}",
            root.join("fuzz").display()
        );
    }
    Ok(names)
}

/// The host triple, where `cargo fuzz build` puts its binaries.
fn host_triple() -> Result<PathBuf> {
    let v = Cmd::toolchain_neutral("rustc")
        .args(["+nightly", "-vV"])
        .read()?;
    v.lines()
        .find_map(|l| l.strip_prefix("host:"))
        .map(|h| PathBuf::from(h.trim()))
        .context("no `host:` line in `rustc +nightly -vV`")
}

#[cfg(test)]
mod tests {
    use super::{parse_log, RunStats};

    #[test]
    fn reads_final_stats_and_reproducers() {
        let log = "#2\tINITED cov: 10\nDone 12345 runs in 30 second(s)\n\
                   stat::number_of_executed_units: 12346\nstat::average_exec_per_sec:     411\n\
                   stat::new_units_added:          17\n";
        assert_eq!(
            parse_log(log),
            RunStats {
                execs: Some(12346),
                per_sec: Some(411),
                new_units: Some(17),
                artifact: None,
            }
        );
        let crash = "==1== ERROR: libFuzzer: deadly signal\nDone 5 runs in 0 second(s)\n\
                     Test unit written to /w/fuzz/artifacts/dns/crash-abc\n";
        let s = parse_log(crash);
        assert_eq!(s.execs, Some(5));
        assert_eq!(
            s.artifact.as_deref(),
            Some("/w/fuzz/artifacts/dns/crash-abc")
        );
    }
}
