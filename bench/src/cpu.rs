//! CPU accounting: the process (getrusage) and each of its threads
//! (/proc/self/task/*/stat), so a run shows where its CPU time goes.

use std::{collections::BTreeMap, fs, time::Instant};

/// CPU seconds used so far, and when this was read.
pub struct Snapshot {
    at: Instant,
    process: f64,
    /// (tid, thread name) -> CPU seconds.
    threads: BTreeMap<(u32, String), f64>,
}

/// The difference of two snapshots.
#[derive(Debug)]
pub struct Delta {
    /// Wall seconds between them.
    pub wall: f64,
    /// Process CPU seconds (user + sys).
    pub process: f64,
    /// CPU seconds by thread name (threads of one name summed).
    pub threads: BTreeMap<String, f64>,
}

fn tv(t: libc::timeval) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let s = t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s
}

fn process_cpu() -> f64 {
    // SAFETY: getrusage only writes the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn threads_cpu() -> BTreeMap<(u32, String), f64> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    #[allow(clippy::cast_precision_loss)]
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    let mut out = BTreeMap::new();
    let Ok(dir) = fs::read_dir("/proc/self/task") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(tid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "tid (comm) state ..."; utime and stime are fields 14 and 15.
        let (Some(l), Some(r)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[l + 1..r].to_owned();
        let f: Vec<&str> = stat[r + 1..].split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        // f[0] is field 3 (state), so field 14 is f[11].
        #[allow(clippy::cast_precision_loss)]
        let secs = (ticks(11) + ticks(12)) as f64 / hz;
        out.insert((tid, name), secs);
    }
    out
}

impl Snapshot {
    /// Read the counters now.
    pub fn now() -> Self {
        Self {
            at: Instant::now(),
            process: process_cpu(),
            threads: threads_cpu(),
        }
    }

    /// What was used since `earlier`.
    pub fn since(&self, earlier: &Snapshot) -> Delta {
        let mut threads = BTreeMap::new();
        for ((tid, name), v) in &self.threads {
            let was = earlier
                .threads
                .get(&(*tid, name.clone()))
                .copied()
                .unwrap_or(0.0);
            *threads.entry(name.clone()).or_insert(0.0) += v - was;
        }
        Delta {
            wall: self.at.duration_since(earlier.at).as_secs_f64(),
            process: self.process - earlier.process,
            threads,
        }
    }
}

impl Delta {
    /// Process CPU in % of one core over the wall time.
    pub fn process_pct(&self) -> f64 {
        super::round(100.0 * self.process / self.wall.max(1e-9))
    }

    /// Per-thread-name CPU in % of one core (threads that used nothing left out).
    pub fn threads_pct(&self) -> BTreeMap<String, f64> {
        self.threads
            .iter()
            .filter(|(_, v)| **v > 0.0)
            .map(|(k, v)| (k.clone(), super::round(100.0 * v / self.wall.max(1e-9))))
            .collect()
    }
}
