//! Heap bytes per check, by component, of the daemon's per-check structures, counted
//! by a global allocator (no namespaces, no root): the quick companion of
//! `bench/scale.sh`, which measures the whole daemon's RSS. Builds N tcp_syn checks
//! shaped like scale.sh's (parsed from the same kind of TOML) into the daemon's table
//! of checks (health with the engine's parts) and scheduler, and feeds each check
//! ROUNDS results (histories, transitions, histograms, outcome counts).
//!
//! ```text
//! cargo run --release -p sonde --example check_memory          # N=1000000 ROUNDS=33
//! N=200000 ROUNDS=33 cargo run --release -p sonde --example check_memory
//! ```
//!
//! Counted: bytes asked of the allocator (the daemon's, mimalloc), by component; and
//! the resident memory this process grew by (its allocator's rounding and
//! fragmentation included, as in the RSS of scale.sh), in total and after each load
//! step (stderr).

use std::{
    alloc::{GlobalAlloc, Layout},
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use sonde::{
    daemon::checks::{self, EngineParts},
    engine::{
        result::{CheckResult, Phases, Reason},
        schedule::Scheduler,
        spec::CheckId,
        tls::TlsConfigs,
        Clock,
    },
    health::{HealthConfig, HealthTable},
};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to mimalloc (the daemon's allocator) unchanged; only
// counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident set size of this process, bytes (after returning freed memory, as the
/// daemon does after a load).
fn rss() -> usize {
    // SAFETY: only asks mimalloc to return free pages.
    unsafe { libmimalloc_sys::mi_collect(true) };
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("resident pages");
    pages * 4096
}

fn main() {
    let n = env("N", 1_000_000);
    let rounds = env("ROUNDS", 33);
    let rss_start = rss();
    let start = live();
    let mut toml = String::from("[defaults]\ninterval = \"20s\"\ntimeout = \"1s\"\n\n");
    for i in 0..n {
        let (a, b) = ((i / 250) % 256, i % 250 + 1);
        toml.push_str(&format!(
            "[[check]]\nid = \"c{i}\"\ntarget = \"198.19.{a}.{b}:80\"\nkind = \"tcp_syn\"\n\n"
        ));
    }
    let config = sonde::config::parse_str(&toml, "<generated>").expect("valid config");
    drop(toml);
    let specs = config.checks;
    eprintln!(
        "after parse: asked {:.1} B/check, resident {:.1} B/check",
        (live() - start) as f64 / n as f64,
        (rss() - rss_start) as f64 / n as f64
    );
    let mut rows: Vec<(&str, usize)> = Vec::new();
    // The specs' own heap (ids, host strings), without the Vec holding them, which
    // prepare_all consumes.
    let spec_heap = live() - start - specs.capacity() * std::mem::size_of_val(&specs[0]);
    rows.push(("spec contents (id, host)", spec_heap));
    let ids: Vec<CheckId> = specs.iter().map(|s| s.id.clone()).collect();

    let before = live();
    let table = checks::prepare_all(specs, &TlsConfigs::default()).expect("prepared");
    // `prepare_all` frees the Vec of specs it consumed: add it back.
    let vec_bytes = n * std::mem::size_of::<sonde::engine::spec::CheckSpec>();
    let after_prepare = live() + vec_bytes;
    eprintln!(
        "after prepare: asked {:.1} B/check, resident {:.1} B/check",
        (live() - start) as f64 / n as f64,
        (rss() - rss_start) as f64 / n as f64
    );
    // The daemon's table of checks: health with the engine's parts, one record each.
    let now = tokio::time::Instant::now();
    let mut health: HealthTable<EngineParts> = HealthTable::with_config(HealthConfig::default());
    let mut sched = Scheduler::with_seed(1);
    // Each check's timing, for the scheduler afterwards (so the two are counted
    // apart); this list is the example's own and not counted.
    let mut timing = Vec::with_capacity(n);
    let timing_bytes = timing.capacity() * std::mem::size_of::<(CheckId, Duration)>();
    for (_, entry) in table {
        let spec = entry.spec;
        timing.push((spec.id.clone(), spec.interval));
        let parts = EngineParts::new(entry.prepared);
        health.insert(spec, now, parts).expect("new id");
    }
    eprintln!(
        "table built: asked {:.1} B/check, resident {:.1} B/check",
        (live() - start - timing_bytes) as f64 / n as f64,
        (rss() - rss_start - timing_bytes) as f64 / n as f64
    );
    rows.push((
        "specs (Arc) and the table of checks, before results",
        live() + vec_bytes - before - timing_bytes,
    ));
    let before_sched = live();
    for (id, interval) in timing.drain(..) {
        sched.add(id, interval, 0.0, 0);
    }
    let scheduled = live() - before_sched;
    drop(timing);
    let _ = after_prepare;
    let loaded_asked = live() - start;
    let loaded_rss = rss() - rss_start;
    eprintln!(
        "after load: asked {:.1} B/check, resident {:.1} B/check",
        loaded_asked as f64 / n as f64,
        loaded_rss as f64 / n as f64
    );

    let before = live();
    let mut seq = 0u64;
    for round in 0..rounds {
        let at = now + Duration::from_secs(20 * (round as u64 + 1));
        for id in &ids {
            seq += 1;
            let r = CheckResult {
                check: id.clone(),
                seq,
                reason: Reason::Ok,
                rtt: Some(Duration::from_micros(150 + seq % 97)),
                clock: Clock::Kernel,
                phases: Phases::default(),
                http_status: None,
                cert_days_left: None,
            };
            health.apply(&r, at);
        }
    }
    rows.push(("health: results, histories, histograms", live() - before));

    rows.push((
        "scheduler (timers in the wheel, id -> timer map)",
        scheduled,
    ));

    println!(
        "sizes: CheckSpec {} (Target {}, ProbeSpec {}, Thresholds {}) CheckHealth {} Reason {}",
        std::mem::size_of::<sonde::engine::spec::CheckSpec>(),
        std::mem::size_of::<sonde::engine::spec::Target>(),
        std::mem::size_of::<sonde::engine::spec::ProbeSpec>(),
        std::mem::size_of::<sonde::engine::spec::Thresholds>(),
        std::mem::size_of::<sonde::health::CheckHealth>(),
        std::mem::size_of::<Reason>(),
    );
    let total: usize = rows.iter().map(|r| r.1).sum();
    println!("{n} tcp_syn checks, {rounds} results each (heap bytes asked of the allocator)");
    for (what, bytes) in &rows {
        println!("{:>8.1} B/check  {what}", *bytes as f64 / n as f64);
    }
    println!("{:>8.1} B/check  total", total as f64 / n as f64);
    // What the allocator's rounding, headers and fragmentation add: resident memory
    // beside what was asked (less the list of ids this program keeps for itself).
    let resident = rss() - rss_start - ids.capacity() * std::mem::size_of::<CheckId>();
    println!(
        "{:>8.1} B/check  resident (RSS growth, without this program's list of ids)",
        resident as f64 / n as f64
    );
    std::hint::black_box((&health, &sched));
}
