//! The boundary between the API server and the daemon: everything the API can ask of
//! a running sonde. The daemon implements [`Control`]; the API server (HTTP on
//! loopback and a unix socket) only translates requests into these calls.

use std::{collections::BTreeMap, sync::Arc};

use serde::Serialize;
use thiserror::Error;

use crate::{
    cluster::view::ClusterView,
    engine::spec::{CheckId, CheckSpec},
    health::{CheckStatus, HistoryEntry, Transition},
};

/// A check's recent results and transitions, oldest first.
#[derive(Clone, Debug, Serialize)]
pub struct CheckHistory {
    /// The check.
    pub id: CheckId,
    /// Latest results (bounded).
    pub results: Vec<HistoryEntry>,
    /// Latest transitions (bounded).
    pub transitions: Vec<Transition>,
}

/// What the daemon says about itself.
#[derive(Clone, Debug, Serialize)]
pub struct DaemonInfo {
    /// sonde version.
    pub version: String,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Which clock measures stateless probes: "kernel" or "userspace".
    pub clock: String,
    /// Why the kernel programs are not used, if they are not.
    pub kernel_unavailable: Option<String>,
    /// Interface the kernel programs are attached to.
    pub iface: Option<String>,
    /// The config file checks came from (standalone mode).
    pub config_path: Option<String>,
    /// Number of checks.
    pub checks: usize,
    /// The per-target cap this node enforces now, probes/s (in cluster mode its share of
    /// the cluster-wide cap).
    pub per_target_pps: f64,
    /// Who resets SYN-ACKs to probes (`[daemon] syn_ack_reset`), when the kernel
    /// programs are in use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syn_ack_reset: Option<crate::ebpf::ResetState>,
    /// Where answers are classified (`[daemon] answer_hook`), when the kernel programs
    /// are in use: `{"hook": "xdp", "mode": "native"}` or `{"hook": "tc", "why": ...}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer_hook: Option<crate::ebpf::Ingress>,
}

/// The outcome of a reload.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReloadReport {
    /// Checks added.
    pub added: Vec<CheckId>,
    /// Checks whose definition changed.
    pub changed: Vec<CheckId>,
    /// Checks removed.
    pub removed: Vec<CheckId>,
    /// Checks left as they were.
    pub unchanged: usize,
}

/// Why a control call was refused. The running state is unchanged in every case.
#[derive(Debug, Error)]
pub enum ControlError {
    /// No check with this id.
    #[error("unknown check id {0:?}")]
    UnknownCheck(String),
    /// A check with this id exists already.
    #[error("a check with id {0:?} exists already")]
    Duplicate(String),
    /// The check or the file is invalid (the message lists every problem, with where).
    #[error("{0}")]
    Invalid(String),
    /// The operation is not possible in this mode (e.g. reload without a config file).
    #[error("{0}")]
    Unsupported(String),
    /// Something failed inside the daemon.
    #[error("internal error: {0}")]
    Internal(String),
}

/// An event on the watch stream.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A check changed health.
    Transition(Transition),
    /// A check was added.
    CheckAdded {
        /// The check.
        id: CheckId,
    },
    /// A check was removed.
    CheckRemoved {
        /// The check.
        id: CheckId,
    },
}

/// Everything the API can ask of the daemon. Calls are quick (they take locks, never
/// wait on the network) and may be made from async code.
pub trait Control: Send + Sync + 'static {
    /// Status of every check, sorted by id.
    fn status(&self) -> Vec<CheckStatus>;
    /// Status of one check.
    fn check(&self, id: &str) -> Option<CheckStatus>;
    /// The definition of one check.
    fn spec(&self, id: &str) -> Option<Arc<CheckSpec>>;
    /// Recent results and transitions of one check.
    fn history(&self, id: &str) -> Option<CheckHistory>;
    /// Add one check, given in the same shape as a `[[check]]` table of the config file
    /// (as JSON), validated the same way.
    ///
    /// # Errors
    /// Invalid or duplicate check.
    fn add_check(&self, check: &serde_json::Value) -> Result<CheckId, ControlError>;
    /// Remove one check.
    ///
    /// # Errors
    /// Unknown id.
    fn remove_check(&self, id: &str) -> Result<(), ControlError>;
    /// Re-read the config file; an invalid file is refused as a whole.
    ///
    /// # Errors
    /// Invalid file (nothing changed), or no file in this mode.
    fn reload(&self) -> Result<ReloadReport, ControlError>;
    /// Follow transitions and check set changes from now on.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Event>>;
    /// Prometheus text exposition of every metric.
    fn metrics(&self) -> String;
    /// About the daemon.
    fn info(&self) -> DaemonInfo;
    /// The cluster as this node last read it; `None` in standalone mode.
    fn cluster(&self) -> Option<ClusterView> {
        None
    }
    /// The latest `n` round-trip times of every check, oldest first, in microseconds;
    /// `None` for a probe that failed (no answer to time).
    fn recent_rtts(&self, n: usize) -> BTreeMap<CheckId, Vec<Option<u64>>> {
        self.status()
            .into_iter()
            .filter_map(|s| self.history(s.id.as_str()))
            .map(|h| {
                let skip = h.results.len().saturating_sub(n);
                let rtts = h
                    .results
                    .iter()
                    .skip(skip)
                    .map(|r| {
                        r.ok.then(|| {
                            r.rtt
                                .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
                        })
                        .flatten()
                    })
                    .collect();
                (h.id, rtts)
            })
            .collect()
    }
}
