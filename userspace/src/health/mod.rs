//! The health layer: turns probe results into per-check health.
//!
//! Owns the state of every check's health and nothing else: no I/O, no timers, no
//! clock reads besides one wall-clock read per created check (for display). Time is
//! tokio's `Instant`, passed in, so the whole layer runs under paused test time.
//!
//! - [`state`]: the state machine of one check ([`CheckHealth`]): thresholds,
//!   transitions, next probe interval, bounded history.
//! - [`latency`]: per-phase latency histograms (sparse, log-linear).
//! - [`ring`]: the bounded ring buffer behind the histories.
//! - this module: [`HealthTable`], every check by id, and the serialisable
//!   [`CheckStatus`] snapshot served to the CLI and API.
//!
//! # Replacing a spec
//!
//! [`HealthTable::replace`] keeps a check's state (health, counters, window, history,
//! transitions, latency) when its probe definition, `target` and `probe`, is unchanged:
//! timing (`interval`, `fast_interval`, `timeout`, `jitter`), `thresholds`, `initial`
//! and `labels` may change without losing what is known. New thresholds apply from the
//! next result (a state changes only on a result). If the target or the probe changed,
//! the old results describe something else: the state is reset to a fresh one,
//! starting at the new spec's `initial`.

pub mod latency;
pub mod ring;
pub mod state;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;
use tokio::time::Instant;

pub use latency::{LatencySummary, Phase, PhaseLatencies};
pub use ring::Ring;
pub use state::{CheckHealth, Health, HealthConfig, HistoryEntry, LastResult, Transition};

use crate::engine::{
    result::CheckResult,
    spec::{CheckId, CheckSpec, Target},
};

/// Errors of [`HealthTable`] updates.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HealthError {
    /// [`HealthTable::add`] of an id already present.
    #[error("check {0} already exists")]
    Duplicate(CheckId),
}

/// What [`HealthTable::replace`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replaced {
    /// The id was new; a fresh state was created.
    Added,
    /// Same target and probe: the state was kept, the spec updated.
    Kept,
    /// Target or probe changed: the state was reset.
    Reset,
}

/// Serialisable status of one check, as served to the CLI and API.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckStatus {
    /// The check.
    pub id: CheckId,
    /// Current health.
    pub state: Health,
    /// Wall time the current state was entered, milliseconds since the Unix epoch.
    pub since_unix_ms: u64,
    /// The latest result, if any.
    pub last_result: Option<LastResult>,
    /// Successes in a row ending with the latest result.
    pub consecutive_ok: u32,
    /// Failures in a row ending with the latest result.
    pub consecutive_fail: u32,
    /// Latency percentiles per phase (successful results only).
    pub latency: PhaseLatencies,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// Probe kind ([`crate::engine::spec::ProbeSpec::kind`]).
    pub kind: &'static str,
    /// What is probed.
    pub target: Target,
}

impl CheckHealth {
    /// The serialisable status of this check.
    #[must_use]
    pub fn status(&self) -> CheckStatus {
        let spec = self.spec();
        CheckStatus {
            id: spec.id.clone(),
            state: self.state(),
            since_unix_ms: state::unix_ms(self.since_wall()),
            last_result: self.last_result(),
            consecutive_ok: self.consecutive_ok(),
            consecutive_fail: self.consecutive_fail(),
            latency: self.latency(),
            labels: spec.labels.clone(),
            kind: spec.probe.kind(),
            target: spec.target.clone(),
        }
    }
}

/// One check's record in a [`HealthTable`]: its health and what the table's owner
/// keeps beside it (one allocation, one map entry per check).
#[derive(Clone, Debug)]
struct Record<X> {
    health: CheckHealth,
    extra: X,
}

/// The health of every check, by id, with an owner's payload `X` per check (the
/// daemon keeps the engine's parts of a check there, so that a million checks need
/// one map and one allocation each, not two).
#[derive(Clone, Debug, Default)]
pub struct HealthTable<X = ()> {
    /// Boxed: a hash table keeps up to twice its length in slots, and a slot of a
    /// pointer costs 8 bytes where one of an inline record costs ~280.
    checks: HashMap<CheckId, Box<Record<X>>>,
    config: HealthConfig,
}

impl HealthTable {
    /// An empty table with default history sizes.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

impl<X> HealthTable<X> {
    /// An empty table whose checks keep `config` history sizes.
    #[must_use]
    pub fn with_config(config: HealthConfig) -> Self {
        Self {
            checks: HashMap::new(),
            config,
        }
    }

    /// Add a check, starting at `spec.initial` at `now`, with the default payload.
    ///
    /// # Errors
    ///
    /// [`HealthError::Duplicate`] if the id is present (use [`HealthTable::replace`]).
    pub fn add(&mut self, spec: impl Into<Arc<CheckSpec>>, now: Instant) -> Result<(), HealthError>
    where
        X: Default,
    {
        self.insert(spec, now, X::default())
    }

    /// Add a check, starting at `spec.initial` at `now`, with its payload.
    ///
    /// # Errors
    ///
    /// [`HealthError::Duplicate`] if the id is present.
    pub fn insert(
        &mut self,
        spec: impl Into<Arc<CheckSpec>>,
        now: Instant,
        extra: X,
    ) -> Result<(), HealthError> {
        let spec = spec.into();
        if self.checks.contains_key(&spec.id) {
            return Err(HealthError::Duplicate(spec.id.clone()));
        }
        let id = spec.id.clone();
        let health = CheckHealth::with_config(spec, now, self.config);
        self.checks.insert(id, Box::new(Record { health, extra }));
        Ok(())
    }

    /// Add or update a check. An existing check keeps its state (and payload) if its
    /// target and probe are unchanged, and is reset otherwise (see the module docs;
    /// the payload is kept then too); a new one gets the default payload.
    pub fn replace(&mut self, spec: impl Into<Arc<CheckSpec>>, now: Instant) -> Replaced
    where
        X: Default,
    {
        let spec = spec.into();
        match self.checks.get_mut(&spec.id) {
            Some(r)
                if r.health.spec().target == spec.target && r.health.spec().probe == spec.probe =>
            {
                r.health.set_spec(spec);
                Replaced::Kept
            }
            Some(r) => {
                let mut fresh = CheckHealth::with_config(spec, now, self.config);
                fresh.inherit_outcomes(&r.health);
                r.health = fresh;
                Replaced::Reset
            }
            None => {
                let id = spec.id.clone();
                let health = CheckHealth::with_config(spec, now, self.config);
                self.checks.insert(
                    id,
                    Box::new(Record {
                        health,
                        extra: X::default(),
                    }),
                );
                Replaced::Added
            }
        }
    }

    /// Remove a check, returning its final state.
    pub fn remove(&mut self, id: &CheckId) -> Option<CheckHealth> {
        self.checks.remove(id).map(|r| r.health)
    }

    /// Feed a result to its check; returns the transition it caused. A result for an
    /// unknown id (e.g. a late answer of a removed check) is ignored.
    pub fn apply(&mut self, result: &CheckResult, now: Instant) -> Option<Transition> {
        match self.checks.get_mut(&result.check) {
            Some(r) => r.health.observe(result, now),
            None => {
                tracing::debug!(check = %result.check, "result for unknown check ignored");
                None
            }
        }
    }

    /// The state of one check.
    #[must_use]
    pub fn get(&self, id: &CheckId) -> Option<&CheckHealth> {
        self.checks.get(id).map(|r| &r.health)
    }

    /// The state of one check, to restore it after a restart.
    pub fn get_mut(&mut self, id: &CheckId) -> Option<&mut CheckHealth> {
        self.checks.get_mut(id).map(|r| &mut r.health)
    }

    /// The state and payload of one check.
    #[must_use]
    pub fn get_with_extra(&self, id: &CheckId) -> Option<(&CheckHealth, &X)> {
        self.checks.get(id).map(|r| (&r.health, &r.extra))
    }

    /// The payload of one check, to change it.
    pub fn extra_mut(&mut self, id: &CheckId) -> Option<&mut X> {
        self.checks.get_mut(id).map(|r| &mut r.extra)
    }

    /// Whether `id` is held.
    #[must_use]
    pub fn contains(&self, id: &CheckId) -> bool {
        self.checks.contains_key(id)
    }

    /// Time until the next probe of `id` ([`CheckHealth::next_interval`]).
    #[must_use]
    pub fn next_interval(&self, id: &CheckId) -> Option<std::time::Duration> {
        self.checks.get(id).map(|r| r.health.next_interval())
    }

    /// Checks held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.checks.len()
    }

    /// Whether no check is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }

    /// Every check's state, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&CheckId, &CheckHealth)> {
        self.checks.iter().map(|(k, r)| (k, &r.health))
    }

    /// Status of one check.
    #[must_use]
    pub fn snapshot(&self, id: &CheckId) -> Option<CheckStatus> {
        self.checks.get(id).map(|r| r.health.status())
    }

    /// Health and since when (milliseconds since the Unix epoch) of every check,
    /// sorted by id: what a journal snapshot keeps, without building full statuses.
    #[must_use]
    pub fn states(&self) -> Vec<(CheckId, Health, u64)> {
        let mut all: Vec<(CheckId, Health, u64)> = self
            .checks
            .iter()
            .map(|(id, r)| {
                (
                    id.clone(),
                    r.health.state(),
                    state::unix_ms(r.health.since_wall()),
                )
            })
            .collect();
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Status of every check, sorted by id.
    #[must_use]
    pub fn snapshot_all(&self) -> Vec<CheckStatus> {
        let mut all: Vec<CheckStatus> = self.checks.values().map(|r| r.health.status()).collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }
}
