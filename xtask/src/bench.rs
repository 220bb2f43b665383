//! `cargo xtask bench [NAME] [-- ARGS]`: runs `bench/NAME.sh` with bash.
//!
//! A placeholder until real benchmarks exist: without NAME (or with an
//! unknown one) it lists the scripts in `bench/`. Scripts run from the
//! workspace root; their output belongs in `bench/out/` (git-ignored).

use std::fs;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::cmd::{workspace_root, Cmd};

/// Runs one benchmark script, or lists them.
pub fn run(name: Option<String>, args: Vec<String>) -> Result<()> {
    let dir = workspace_root().join("bench");
    let available = scripts(&dir)?;
    let Some(name) = name else {
        list(&available);
        return Ok(());
    };
    let name = name.strip_suffix(".sh").unwrap_or(&name);
    if name.contains('/') || !available.iter().any(|a| a == name) {
        list(&available);
        bail!("no benchmark `{name}` (no {}/{name}.sh)", dir.display());
    }
    let script: PathBuf = dir.join(format!("{name}.sh"));
    Cmd::new("bash")
        .arg(&script)
        .args(args)
        .current_dir(&workspace_root())
        .run()
        .with_context(|| format!("benchmark `{name}` failed"))
}

/// Names (without `.sh`) of the scripts in `dir`, sorted.
fn scripts(dir: &std::path::Path) -> Result<Vec<String>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut names: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".sh").map(str::to_string))
        .collect();
    names.sort();
    Ok(names)
}

fn list(available: &[String]) {
    if available.is_empty() {
        println!("no benchmarks yet (add bench/NAME.sh, run with `cargo xtask bench NAME`)");
    } else {
        println!("benchmarks (cargo xtask bench NAME [-- ARGS]):");
        for name in available {
            println!("  {name}");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lists_shell_scripts_by_name() {
        let dir = std::env::temp_dir().join(format!("xtask-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["syn.sh", "connect.sh", "notes.txt"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let found = super::scripts(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found, ["connect", "syn"]);
        assert!(super::scripts(&dir).unwrap().is_empty());
    }
}
