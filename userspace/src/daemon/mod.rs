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
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{atomic::AtomicBool, Arc},
    time::Instant,
};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Mutex, RwLock};
use tokio::sync::broadcast;

pub use start::{run, ClusterOptions, RunOptions};

use self::{checks::Entry, persist::Record, runner::Outstanding};
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
    /// Running checks.
    checks: RwLock<BTreeMap<CheckId, Entry>>,
    /// Health of every check.
    health: Mutex<HealthTable>,
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

impl Shared {
    /// Append to the journal, compacting first when it is over its budget.
    fn journal_append(&self, r: &Record) -> Result<(), JournalError> {
        let mut j = self.journal.lock();
        if j.needs_compaction() {
            let snapshot: Vec<Record> = self
                .health
                .lock()
                .snapshot_all()
                .into_iter()
                .map(|s| Record::State {
                    check: s.id,
                    state: s.state,
                    since_unix_ms: s.since_unix_ms,
                })
                .collect();
            j.compact(&snapshot)?;
        }
        j.append(r).map(|_| ())
    }
}
