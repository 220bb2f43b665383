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

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use tokio::time::Instant;

pub use latency::{LatencySummary, Phase, PhaseLatencies};
pub use ring::{InlineRing, Ring};
pub use state::{
    CheckHealth, Health, HealthConfig, HistoryEntry, LastResult, Transition, HISTORY_MAX,
};

use crate::engine::{
    id_index::IdIndex,
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
            labels: (*spec.labels).clone(),
            kind: spec.probe.kind(),
            target: spec.target.clone(),
        }
    }
}

/// One check's record in a [`HealthTable`]: its health and what the table's owner
/// keeps beside it (one slab entry, one index entry per check).
#[derive(Clone, Debug)]
struct Record<X> {
    health: CheckHealth,
    extra: X,
}

/// Records per slab chunk: ~128 KiB chunks, allocated as checks are added.
const CHUNK: usize = 2048;

/// The health of every check, by id, with an owner's payload `X` per check (the
/// daemon keeps the engine's parts of a check there, so that a million checks need
/// one record each, not two).
///
/// Memory, for a million checks: records live in a slab of fixed chunks, numbered,
/// so a check costs no allocation of its own (no allocator header, no fragment) and
/// the index by id holds a 4-byte check number per slot, the id being read from the
/// record (a map from id to record held a 16-byte id and an 8-byte box per slot,
/// and a hash table keeps up to twice its length in slots). A removed check's
/// number is reused by the next one added.
#[derive(Clone, Debug, Default)]
pub struct HealthTable<X = ()> {
    /// Check numbers by their record's id.
    index: IdIndex,
    /// Records by check number, in chunks of [`CHUNK`]; `None` is a free number.
    chunks: Vec<Box<[Option<Record<X>>]>>,
    /// Free check numbers.
    free: Vec<u32>,
    config: HealthConfig,
}

impl HealthTable {
    /// An empty table with default history sizes.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

/// The record numbered `n`, if held.
fn record<X>(chunks: &[Box<[Option<Record<X>>]>], n: u32) -> Option<&Record<X>> {
    let n = n as usize;
    chunks.get(n / CHUNK)?.get(n % CHUNK)?.as_ref()
}

/// The id of record `n` (every number in the index has a record).
fn id_of<X>(chunks: &[Box<[Option<Record<X>>]>], n: u32) -> &CheckId {
    match record(chunks, n) {
        Some(r) => &r.health.spec().id,
        None => unreachable!("health table: indexed check number {n} without a record"),
    }
}

impl<X> HealthTable<X> {
    /// An empty table whose checks keep `config` history sizes (a history of more
    /// than [`HISTORY_MAX`] results keeps [`HISTORY_MAX`]).
    #[must_use]
    pub fn with_config(config: HealthConfig) -> Self {
        Self {
            index: IdIndex::default(),
            chunks: Vec::new(),
            free: Vec::new(),
            config,
        }
    }

    /// The number of the check `id`, if held.
    fn number(&self, id: &CheckId) -> Option<u32> {
        self.index.find(id, |n| id_of(&self.chunks, n))
    }

    fn get_record(&self, id: &CheckId) -> Option<&Record<X>> {
        self.number(id).and_then(|n| record(&self.chunks, n))
    }

    fn get_record_mut(&mut self, id: &CheckId) -> Option<&mut Record<X>> {
        let n = self.number(id)? as usize;
        self.chunks[n / CHUNK][n % CHUNK].as_mut()
    }

    /// Store a record under a free number and index it (its id must be new).
    fn put(&mut self, record: Record<X>) {
        let n = match self.free.pop() {
            Some(n) => n,
            None => {
                let n = self.chunks.len() * CHUNK;
                self.chunks
                    .push(std::iter::repeat_with(|| None).take(CHUNK).collect());
                self.free.extend((n + 1..n + CHUNK).rev().map(number));
                number(n)
            }
        };
        let (i, j) = (n as usize / CHUNK, n as usize % CHUNK);
        self.chunks[i][j] = Some(record);
        let chunks = &self.chunks;
        self.index.insert(id_of(chunks, n), n, |m| id_of(chunks, m));
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
        if self.number(&spec.id).is_some() {
            return Err(HealthError::Duplicate(spec.id.clone()));
        }
        let health = CheckHealth::with_config(spec, now, self.config);
        self.put(Record { health, extra });
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
        let config = self.config;
        match self.get_record_mut(&spec.id) {
            Some(r)
                if r.health.spec().target == spec.target && r.health.spec().probe == spec.probe =>
            {
                r.health.set_spec(spec);
                Replaced::Kept
            }
            Some(r) => {
                let mut fresh = CheckHealth::with_config(spec, now, config);
                fresh.inherit_outcomes(&r.health);
                r.health = fresh;
                Replaced::Reset
            }
            None => {
                let health = CheckHealth::with_config(spec, now, config);
                self.put(Record {
                    health,
                    extra: X::default(),
                });
                Replaced::Added
            }
        }
    }

    /// Remove a check, returning its final state.
    pub fn remove(&mut self, id: &CheckId) -> Option<CheckHealth> {
        let chunks = &self.chunks;
        let n = self.index.remove(id, |m| id_of(chunks, m))?;
        let record = self.chunks[n as usize / CHUNK][n as usize % CHUNK].take()?;
        self.free.push(n);
        Some(record.health)
    }

    /// Feed a result to its check; returns the transition it caused. A result for an
    /// unknown id (e.g. a late answer of a removed check) is ignored.
    pub fn apply(&mut self, result: &CheckResult, now: Instant) -> Option<Transition> {
        match self.get_record_mut(&result.check) {
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
        self.get_record(id).map(|r| &r.health)
    }

    /// The state of one check, to restore it after a restart.
    pub fn get_mut(&mut self, id: &CheckId) -> Option<&mut CheckHealth> {
        self.get_record_mut(id).map(|r| &mut r.health)
    }

    /// The state and payload of one check.
    #[must_use]
    pub fn get_with_extra(&self, id: &CheckId) -> Option<(&CheckHealth, &X)> {
        self.get_record(id).map(|r| (&r.health, &r.extra))
    }

    /// The payload of one check, to change it.
    pub fn extra_mut(&mut self, id: &CheckId) -> Option<&mut X> {
        self.get_record_mut(id).map(|r| &mut r.extra)
    }

    /// Whether `id` is held.
    #[must_use]
    pub fn contains(&self, id: &CheckId) -> bool {
        self.number(id).is_some()
    }

    /// Time until the next probe of `id` ([`CheckHealth::next_interval`]).
    #[must_use]
    pub fn next_interval(&self, id: &CheckId) -> Option<std::time::Duration> {
        self.get(id).map(CheckHealth::next_interval)
    }

    fn records(&self) -> impl Iterator<Item = &Record<X>> {
        self.chunks
            .iter()
            .flat_map(|c| c.iter().filter_map(Option::as_ref))
    }

    /// Checks held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether no check is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Every check's state, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&CheckId, &CheckHealth)> {
        self.records().map(|r| (&r.health.spec().id, &r.health))
    }

    /// Status of one check.
    #[must_use]
    pub fn snapshot(&self, id: &CheckId) -> Option<CheckStatus> {
        self.get(id).map(CheckHealth::status)
    }

    /// Health and since when (milliseconds since the Unix epoch) of every check,
    /// sorted by id: what a journal snapshot keeps, without building full statuses.
    #[must_use]
    pub fn states(&self) -> Vec<(CheckId, Health, u64)> {
        let mut all: Vec<(CheckId, Health, u64)> = self
            .records()
            .map(|r| {
                (
                    r.health.spec().id.clone(),
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
        let mut all: Vec<CheckStatus> = self.records().map(|r| r.health.status()).collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }
}

/// Check number `n` (numbers stay below `u32::MAX`: 4 billion checks would need
/// terabytes).
fn number(n: usize) -> u32 {
    u32::try_from(n).unwrap_or_else(|_| panic!("health table: more than {} checks", u32::MAX))
}
