//! Writes the seed corpora: `fuzz/corpus/<target>/<seed>` for every target in
//! `sonde_fuzz::TARGETS`, after running each seed through its target's check (a seed
//! that breaks an invariant is a bug found before fuzzing starts).
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example gen_corpus` (what
//! `cargo xtask fuzz --seeds` runs). Deterministic: rerunning rewrites the same files.

use std::{fs, path::Path};

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for target in sonde_fuzz::TARGETS {
        let dir = root.join(target.name);
        fs::create_dir_all(&dir)?;
        let seeds = (target.seeds)();
        for (name, bytes) in &seeds {
            (target.check)(bytes);
            fs::write(dir.join(name), bytes)?;
        }
        println!(
            "{:<14} {} seeds in {}",
            target.name,
            seeds.len(),
            dir.display()
        );
    }
    Ok(())
}
