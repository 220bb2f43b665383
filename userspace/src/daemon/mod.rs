//! The standalone daemon (`sonde run`): checks from a TOML file, probed by the engine,
//! judged by the health layer, journaled, and served by the local API.
//!
//! Threads: the engine's workers, the dispatcher and the result loop ([`runner`]),
//! and a small tokio runtime for the API and signals. State shared between them lives
//! in [`Shared`], each part behind its own lock, taken briefly and never across I/O
//! except the journal append (which must be durable before a transition is announced).

pub mod checks;
mod control;
pub mod persist;
pub mod privs;
mod runner;
mod start;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{atomic::AtomicBool, Arc},
    time::Instant,
};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Mutex, RwLock};
use tokio::sync::broadcast;

pub use start::{run, ClusterOptions, RunOptions};

use self::{checks::EngineParts, persist::Record, runner::Outstanding};
use crate::{
    api::Event,
    config::Defaults,
    ebpf::KernelProbes,
    engine::{budget::Budgets, schedule::Scheduler, spec::CheckId, tls::TlsConfigs, uring::Engine},
    health::HealthTable,
    journal::{Journal, JournalError},
};

/// State shared by the daemon's threads and the API.
pub(crate) struct Shared {
    /// The config file (reloads re-read it).
    config_path: Option<PathBuf>,
    /// `[defaults]` of the file, for checks added through the API.
    defaults: RwLock<Defaults>,
    /// `[daemon] allow_targets` / `deny_targets`, for checks added through the API or
    /// assigned from etcd (the file's own checks are checked when it is read).
    policy: RwLock<crate::config::policy::TargetPolicy>,
    /// `[daemon] metrics_check_limit`: per-check `/metrics` series up to this many
    /// checks (reloads update it).
    metrics_check_limit: std::sync::atomic::AtomicUsize,
    /// Running checks: the health of each, with its prepared parts and probe count
    /// (one table, so a check costs one map entry here; see bench/scale.sh).
    health: Mutex<HealthTable<EngineParts>>,
    /// When each check is due.
    sched: Mutex<Scheduler>,
    /// Origin protection and resource budgets.
    budgets: Mutex<Budgets>,
    /// The probe of each check that is out or waiting.
    outstanding: Mutex<HashMap<CheckId, Outstanding>>,
    /// Transitions and check-set changes, for watchers.
    events: broadcast::Sender<Arc<Event>>,
    /// Durable record of transitions.
    journal: Mutex<Journal<Record>>,
    /// The probe engine.
    engine: Engine,
    /// The kernel programs (for counters; the engine owns their ring buffer).
    kernel: Option<Mutex<KernelProbes>>,
    /// TLS client configurations, shared by all HTTPS checks.
    tls: TlsConfigs,
    /// Wakes the dispatcher after the schedule changed.
    wake_tx: Sender<()>,
    /// The dispatcher's end of `wake_tx`.
    wake_rx: Receiver<()>,
    /// Assigned checks this node refused (target policy, unpreparable).
    refused: std::sync::atomic::AtomicU64,
    /// The per-target and per-prefix caps (probes/s), cluster-wide in cluster mode.
    target_caps: (f64, Option<f64>),
    /// Live nodes the caps are shared by now (1 standalone).
    target_share: std::sync::atomic::AtomicUsize,
    /// Set on shutdown.
    stopping: AtomicBool,
    /// Set once the engine is closed: every result has been sent.
    engine_closed: AtomicBool,
    /// Start time, for uptime.
    started: Instant,
    /// Which clock measures stateless probes, and why not the kernel's.
    clock: (String, Option<String>),
    /// Interface of the kernel programs or the packet socket.
    iface: Option<String>,
    /// Counters of the cluster node (cluster mode), set once it started.
    cluster: std::sync::OnceLock<(String, Arc<crate::cluster::node::NodeStats>)>,
    /// The cluster as last read from etcd (cluster mode; `None` standalone).
    cluster_view: RwLock<Option<crate::cluster::view::ClusterView>>,
}

/// The journal's bound for `checks` checks: 512 bytes each (a snapshot record takes
/// ~100, so a snapshot fills a fifth of it and compactions stay rare), at least the
/// default 64 MiB.
pub(crate) fn journal_budget(checks: usize) -> u64 {
    let default = crate::journal::JournalOptions::default().max_total_bytes;
    (checks as u64).saturating_mul(512).max(default)
}

/// Return freed heap memory to the system now rather than after the allocator's
/// delay (the binary's allocator is mimalloc, see `main.rs`; with another allocator
/// this does nothing): called after loads and reloads, which free a parse's worth.
pub(crate) fn release_freed_memory() {
    // SAFETY: mi_collect only walks mimalloc's own pages; no pointer of ours is involved.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

impl Shared {
    /// `f` of every check, sorted by id, holding the table's lock for 1,024 checks at a
    /// time: the dispatcher and the result loop take it for every probe, and a full
    /// status of a million checks takes about a second. (Checks added or removed
    /// meanwhile may be missed or left out; each check's own view is consistent.)
    fn each_check<R>(&self, f: impl Fn(&crate::health::CheckHealth) -> R) -> Vec<R> {
        let mut ids: Vec<CheckId> = self
            .health
            .lock()
            .iter()
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort_unstable();
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(1024) {
            let h = self.health.lock();
            out.extend(chunk.iter().filter_map(|id| h.get(id)).map(&f));
        }
        out
    }

    /// Append to the journal (one sync for all of `records`), compacting first when it
    /// is over its budget. The budget follows the number of checks (see
    /// [`journal_budget`]): a compaction snapshot of a million checks is ~100 MB, more
    /// than a fixed 64 MiB journal holds, and compacting at every append then kept the
    /// result loop busy for good.
    fn journal_append(&self, records: &[Record]) -> Result<(), JournalError> {
        let mut j = self.journal.lock();
        j.set_max_total_bytes(journal_budget(self.health.lock().len()));
        if j.needs_compaction() {
            let snapshot: Vec<Record> = self
                .health
                .lock()
                .states()
                .into_iter()
                .map(|(check, state, since_unix_ms)| Record::State {
                    check,
                    state,
                    since_unix_ms,
                })
                .collect();
            j.compact(&snapshot)?;
        }
        j.append_batch(records).map(|_| ())
    }
}
