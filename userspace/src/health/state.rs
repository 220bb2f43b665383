//! The health state machine of one check: turns its stream of [`CheckResult`]s into
//! [`Health`] under the check's [`Thresholds`], picks the next probe interval, and
//! keeps bounded history (results, transitions) and latency histograms. Pure: no I/O,
//! no timers; time comes in as `tokio::time::Instant` arguments.
//!
//! # Rules
//!
//! A state changes only when a result arrives, and only to a *decided* verdict:
//!
//! - [`Thresholds::Consecutive`] `{ rise, fall }`: `rise` successes in a row decide
//!   Healthy, `fall` failures in a row decide Unhealthy. From Unknown the first
//!   threshold reached decides: `rise` successes → Healthy, `fall` failures →
//!   Unhealthy. A run shorter than its threshold leaves the state as it is.
//! - [`Thresholds::Window`] `{ window, threshold }`: among the last `window` results
//!   (a `u64` shift register, so `window` is clamped to 1..=64), Healthy when
//!   `successes >= threshold`, Unhealthy when `failures > window - threshold` (no
//!   longer reachable). With a full window exactly one holds. Before `window` results
//!   have been seen the verdict is taken as soon as it is decided by what has been
//!   seen (e.g. 3-of-5: three successes → Healthy after 3 results; three failures →
//!   Unhealthy after 3), and until then the state stays as it is (Unknown, or the
//!   configured initial state).
//!
//! [`InitialState`] only sets the state before the first verdict; it does not pre-fill
//! counters or the window. An initial Healthy check therefore goes Unhealthy after
//! `fall` failures (or a decided window verdict), and an initial Unhealthy one needs
//! `rise` successes (or a decided window verdict).
//!
//! # Time
//!
//! Decisions use only the monotonic `Instant`s passed in. Wall-clock times are for
//! display: the wall time of the creation is read once and later wall times are
//! `created_wall + (now - created)`, so they follow tokio's (possibly paused) clock.
//! Serialised instants are `*_ms`: milliseconds since this state was created.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Serialize, Serializer};
use tokio::time::Instant;

use super::{
    latency::{LatencyRecorder, LatencySummary, Phase, PhaseLatencies},
    ring::Ring,
};
use crate::engine::{
    result::{CheckResult, Reason},
    spec::{CheckId, CheckSpec, InitialState, Thresholds},
    Clock,
};

/// Most results kept to explain a transition (and the width of the window register).
pub const MAX_DECIDING_RESULTS: usize = 64;

/// Health of a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// No verdict yet.
    Unknown,
    /// Passing its thresholds.
    Healthy,
    /// Failing its thresholds.
    Unhealthy,
}

impl From<InitialState> for Health {
    fn from(initial: InitialState) -> Self {
        match initial {
            InitialState::Unknown => Health::Unknown,
            InitialState::Healthy => Health::Healthy,
            InitialState::Unhealthy => Health::Unhealthy,
        }
    }
}

/// Sizes of the bounded per-check histories.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// Results kept in [`CheckHealth::history`] (default 32).
    pub history: usize,
    /// Transitions kept in [`CheckHealth::transitions`] (default 16).
    pub transitions: usize,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            history: 32,
            transitions: 16,
        }
    }
}

/// A change of a check's health.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Transition {
    /// The check.
    pub check: CheckId,
    /// State before.
    pub from: Health,
    /// State after.
    pub to: Health,
    /// When (monotonic; not serialised, see `at_ms`).
    #[serde(skip)]
    pub at: Instant,
    /// `at` as milliseconds since the check's state was created.
    pub at_ms: u64,
    /// Wall time of `at`, for display only (serialised as `at_unix_ms`).
    #[serde(rename = "at_unix_ms", serialize_with = "ser_unix_ms")]
    pub at_wall: SystemTime,
    /// The reason of the result that decided it.
    pub reason: Reason,
    /// The results that decided it, oldest first, the deciding one last: the run of
    /// `rise` successes or `fall` failures (Consecutive), or the results in the window
    /// (Window); at most [`MAX_DECIDING_RESULTS`].
    pub results: Vec<(bool, Reason)>,
}

/// One result in [`CheckHealth::history`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    /// Probe sequence number.
    pub seq: u64,
    /// Whether it succeeded.
    pub ok: bool,
    /// [`Reason::label`] of the result.
    pub reason: &'static str,
    /// Round-trip time, if answered (serialised as `rtt_us`).
    #[serde(rename = "rtt_us", serialize_with = "ser_opt_us")]
    pub rtt: Option<Duration>,
    /// Which clock measured it: `kernel` (XDP/TC stamps) or `userspace`.
    pub clock: Clock,
    /// When it was observed (monotonic; not serialised, see `at_ms`).
    #[serde(skip)]
    pub at: Instant,
    /// `at` as milliseconds since the check's state was created.
    pub at_ms: u64,
}

/// The latest result of a check, as shown in status.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LastResult {
    /// Probe sequence number.
    pub seq: u64,
    /// Whether it succeeded.
    pub ok: bool,
    /// Why (full detail).
    pub reason: Reason,
    /// Round-trip time, if answered (serialised as `rtt_us`).
    #[serde(rename = "rtt_us", serialize_with = "ser_opt_us")]
    pub rtt: Option<Duration>,
    /// Which clock measured it: `kernel` (XDP/TC stamps) or `userspace`.
    pub clock: Clock,
    /// HTTP status, when one was received.
    pub http_status: Option<u16>,
    /// Days until the TLS certificate expires, HTTPS only.
    pub cert_days_left: Option<i64>,
    /// When it was observed (monotonic; not serialised, see `at_ms`).
    #[serde(skip)]
    pub at: Instant,
    /// `at` as milliseconds since the check's state was created.
    pub at_ms: u64,
    /// Wall time of `at`, for display only (serialised as `at_unix_ms`).
    #[serde(rename = "at_unix_ms", serialize_with = "ser_unix_ms")]
    pub at_wall: SystemTime,
}

/// Health state machine, history and latency of one check.
#[derive(Clone, Debug)]
pub struct CheckHealth {
    /// Shared with the daemon's check table (one copy per check).
    spec: Arc<CheckSpec>,
    state: Health,
    created: Instant,
    created_wall: SystemTime,
    since: Instant,
    consecutive_ok: u32,
    consecutive_fail: u32,
    /// Outcomes, newest in bit 0 (1 = success).
    window_bits: u64,
    /// Outcomes in `window_bits` (<= 64).
    window_seen: u32,
    /// Newest results with full reasons, to explain transitions.
    recent: Ring<(bool, Reason)>,
    last: Option<LastResult>,
    results_seen: u64,
    /// Compact results (see [`Slot`]); [`CheckHealth::history`] expands them.
    history: Ring<Slot>,
    transitions: Ring<Transition>,
    latency: LatencyRecorder,
}

/// One result of the history in 16 bytes (a [`HistoryEntry`] takes 72): the low 32
/// bits of the sequence number and of `at_ms` (the full values are rebuilt from the
/// latest result, which the history's entries are within 2^32 of), the RTT in whole
/// microseconds (`u32::MAX`: none; longer RTTs saturate at ~71 minutes), the reason's
/// label as an index into [`reason_labels`], success and clock.
#[derive(Clone, Copy, Debug)]
struct Slot {
    seq: u32,
    at_ms: u32,
    rtt_us: u32,
    reason: u8,
    ok: bool,
    kernel_clock: bool,
}

/// Labels of the reasons seen so far, interned: a [`Slot`] keeps an index (reason
/// labels are a small fixed set of `&'static str`).
fn reason_index(label: &'static str) -> u8 {
    let mut labels = REASON_LABELS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(i) = labels.iter().position(|l| *l == label) {
        return u8::try_from(i).unwrap_or(u8::MAX);
    }
    labels.push(label);
    u8::try_from(labels.len() - 1).unwrap_or(u8::MAX)
}

fn reason_label(i: u8) -> &'static str {
    REASON_LABELS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(usize::from(i))
        .copied()
        .unwrap_or("unknown")
}

static REASON_LABELS: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());

/// Results kept to explain a transition of a check with `thresholds`: the longest run
/// a transition can cite (rise or fall, or the window), at most
/// [`MAX_DECIDING_RESULTS`].
fn deciding_capacity(thresholds: Thresholds) -> usize {
    let n = match thresholds {
        Thresholds::Consecutive { rise, fall } => rise.max(fall),
        Thresholds::Window { window, .. } => window,
    };
    usize::try_from(n).map_or(MAX_DECIDING_RESULTS, |n| n.clamp(1, MAX_DECIDING_RESULTS))
}

impl CheckHealth {
    /// State of `spec` at `now`, starting at `spec.initial`, with default history sizes.
    #[must_use]
    pub fn new(spec: &CheckSpec, now: Instant) -> Self {
        Self::with_config(Arc::new(spec.clone()), now, HealthConfig::default())
    }

    /// Like [`CheckHealth::new`] with explicit history sizes.
    #[must_use]
    pub fn with_config(spec: Arc<CheckSpec>, now: Instant, config: HealthConfig) -> Self {
        Self::with_clock(spec, now, SystemTime::now(), config)
    }

    /// Like [`CheckHealth::with_config`], with the wall time matching `now` given
    /// (deterministic display times in tests).
    #[must_use]
    pub fn with_clock(
        spec: Arc<CheckSpec>,
        now: Instant,
        wall_now: SystemTime,
        config: HealthConfig,
    ) -> Self {
        Self {
            state: spec.initial.into(),
            recent: Ring::new(deciding_capacity(spec.thresholds)),
            spec,
            created: now,
            created_wall: wall_now,
            since: now,
            consecutive_ok: 0,
            consecutive_fail: 0,
            window_bits: 0,
            window_seen: 0,
            last: None,
            results_seen: 0,
            history: Ring::new(config.history),
            transitions: Ring::new(config.transitions),
            latency: LatencyRecorder::new(),
        }
    }

    /// Feed one result; returns the transition it caused, if any.
    ///
    /// A result for another check id is ignored (returns `None`). Only successful
    /// results feed the latency histograms.
    pub fn observe(&mut self, result: &CheckResult, now: Instant) -> Option<Transition> {
        if result.check != self.spec.id {
            tracing::warn!(check = %self.spec.id, other = %result.check, "result for another check ignored");
            return None;
        }
        let ok = result.reason.is_ok();
        if ok {
            self.consecutive_ok = self.consecutive_ok.saturating_add(1);
            self.consecutive_fail = 0;
            self.latency.record_result(result);
        } else {
            self.consecutive_fail = self.consecutive_fail.saturating_add(1);
            self.consecutive_ok = 0;
        }
        self.window_bits = (self.window_bits << 1) | u64::from(ok);
        self.window_seen = (self.window_seen + 1).min(64);
        self.results_seen += 1;
        self.recent.push((ok, result.reason.clone()));
        let at_ms = self.ms_since_created(now);
        #[allow(clippy::cast_possible_truncation)]
        self.history.push(Slot {
            seq: result.seq as u32,
            at_ms: at_ms as u32,
            rtt_us: result.rtt.map_or(u32::MAX, |d| {
                u32::try_from(d.as_micros())
                    .unwrap_or(u32::MAX - 1)
                    .min(u32::MAX - 1)
            }),
            reason: reason_index(result.reason.label()),
            ok,
            kernel_clock: result.clock == Clock::Kernel,
        });
        self.last = Some(LastResult {
            seq: result.seq,
            ok,
            reason: result.reason.clone(),
            rtt: result.rtt,
            clock: result.clock,
            http_status: result.http_status,
            cert_days_left: result.cert_days_left,
            at: now,
            at_ms,
            at_wall: self.wall_at(now),
        });

        let to = self.verdict(ok)?;
        if to == self.state {
            return None;
        }
        let deciding = self.deciding_len(to);
        let transition = Transition {
            check: self.spec.id.clone(),
            from: self.state,
            to,
            at: now,
            at_ms,
            at_wall: self.wall_at(now),
            reason: result.reason.clone(),
            results: self.recent.newest(deciding).cloned().collect(),
        };
        tracing::info!(
            check = %self.spec.id,
            from = ?transition.from,
            to = ?transition.to,
            reason = result.reason.label(),
            "health transition"
        );
        self.state = to;
        self.since = now;
        self.transitions.push(transition.clone());
        Some(transition)
    }

    /// The decided verdict after the latest result (`ok`), if any.
    fn verdict(&self, ok: bool) -> Option<Health> {
        match self.spec.thresholds {
            Thresholds::Consecutive { rise, fall } => {
                if ok && self.consecutive_ok >= rise.max(1) {
                    Some(Health::Healthy)
                } else if !ok && self.consecutive_fail >= fall.max(1) {
                    Some(Health::Unhealthy)
                } else {
                    None
                }
            }
            Thresholds::Window { .. } => {
                let (window, threshold) = self.window_rule();
                let (successes, seen) = self.window_counts();
                if successes >= threshold {
                    Some(Health::Healthy)
                } else if seen - successes > window - threshold {
                    Some(Health::Unhealthy)
                } else {
                    None
                }
            }
        }
    }

    /// Results that explain a transition to `to`.
    fn deciding_len(&self, to: Health) -> usize {
        let n = match self.spec.thresholds {
            Thresholds::Consecutive { rise, .. } if to == Health::Healthy => rise,
            Thresholds::Consecutive { fall, .. } => fall,
            Thresholds::Window { .. } => self.window_counts().1,
        };
        usize::try_from(n).map_or(MAX_DECIDING_RESULTS, |n| n.min(MAX_DECIDING_RESULTS))
    }

    /// `(window, threshold)` clamped to 1..=64 and 1..=window (0, 0 for Consecutive).
    fn window_rule(&self) -> (u32, u32) {
        match self.spec.thresholds {
            Thresholds::Window { window, threshold } => {
                let window = window.clamp(1, 64);
                (window, threshold.clamp(1, window))
            }
            Thresholds::Consecutive { .. } => (0, 0),
        }
    }

    /// `(successes, results)` among the last `window` results (both 0 for
    /// Consecutive thresholds).
    #[must_use]
    pub fn window_counts(&self) -> (u32, u32) {
        let (window, _) = self.window_rule();
        let seen = self.window_seen.min(window);
        let mask = if seen >= 64 {
            u64::MAX
        } else {
            (1u64 << seen) - 1
        };
        ((self.window_bits & mask).count_ones(), seen)
    }

    /// Time until the next probe of this check.
    ///
    /// `spec.interval` when settled: the state is Healthy and the latest result
    /// succeeded. `spec.fast_interval` otherwise: the state is Unknown (a verdict is
    /// wanted soon), Unhealthy (recovery is wanted soon), Healthy with a failed latest
    /// result (the check may be going down), or no result has been seen yet.
    #[must_use]
    pub fn next_interval(&self) -> Duration {
        match (self.state, &self.last) {
            (Health::Healthy, Some(last)) if last.ok => self.spec.interval,
            _ => self.spec.fast_interval,
        }
    }

    /// The check's spec.
    #[must_use]
    pub fn spec(&self) -> &CheckSpec {
        &self.spec
    }

    /// Current health.
    #[must_use]
    pub fn state(&self) -> Health {
        self.state
    }

    /// When the current state was entered (creation for the initial state).
    #[must_use]
    pub fn since(&self) -> Instant {
        self.since
    }

    /// Resume a state saved before a restart: the health, since when (wall time; the
    /// monotonic `since` is derived from it), and the transitions that led there, oldest
    /// first. Counters and the window start empty: the next results decide from here.
    pub fn restore(
        &mut self,
        state: Health,
        since_wall: SystemTime,
        transitions: Vec<Transition>,
        now: Instant,
    ) {
        self.state = state;
        let ago = SystemTime::now()
            .duration_since(since_wall)
            .unwrap_or_default();
        self.since = now.checked_sub(ago).unwrap_or(self.created);
        for t in transitions {
            self.transitions.push(t);
        }
    }

    /// Wall time of [`CheckHealth::since`], for display.
    #[must_use]
    pub fn since_wall(&self) -> SystemTime {
        self.wall_at(self.since)
    }

    /// When this state was created (or last reset).
    #[must_use]
    pub fn created(&self) -> Instant {
        self.created
    }

    /// Display wall time of the monotonic `at` (creation wall time plus elapsed).
    #[must_use]
    pub fn wall_at(&self, at: Instant) -> SystemTime {
        self.created_wall + at.saturating_duration_since(self.created)
    }

    /// Successes in a row ending with the latest result.
    #[must_use]
    pub fn consecutive_ok(&self) -> u32 {
        self.consecutive_ok
    }

    /// Failures in a row ending with the latest result.
    #[must_use]
    pub fn consecutive_fail(&self) -> u32 {
        self.consecutive_fail
    }

    /// Results observed since creation.
    #[must_use]
    pub fn results_seen(&self) -> u64 {
        self.results_seen
    }

    /// The latest result.
    #[must_use]
    pub fn last_result(&self) -> Option<&LastResult> {
        self.last.as_ref()
    }

    /// The last [`HealthConfig::history`] results, oldest first.
    #[must_use]
    pub fn history(&self) -> Vec<HistoryEntry> {
        let Some(last) = &self.last else {
            return Vec::new();
        };
        #[allow(clippy::cast_possible_truncation)]
        let (seq_low, at_low) = (last.seq as u32, last.at_ms as u32);
        self.history
            .iter()
            .map(|s| {
                let at_ms = last
                    .at_ms
                    .saturating_sub(u64::from(at_low.wrapping_sub(s.at_ms)));
                HistoryEntry {
                    seq: last
                        .seq
                        .saturating_sub(u64::from(seq_low.wrapping_sub(s.seq))),
                    ok: s.ok,
                    reason: reason_label(s.reason),
                    rtt: (s.rtt_us != u32::MAX).then(|| Duration::from_micros(u64::from(s.rtt_us))),
                    clock: if s.kernel_clock {
                        Clock::Kernel
                    } else {
                        Clock::Userspace
                    },
                    at: self.created + Duration::from_millis(at_ms),
                    at_ms,
                }
            })
            .collect()
    }

    /// Results held in the history.
    #[must_use]
    pub fn history_len(&self) -> usize {
        self.history.len()
    }

    /// Heap bytes held by this check's state beyond the struct itself (histories and
    /// histograms; the spec is shared and not counted): the memory bound's tests.
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        self.history.allocated() * std::mem::size_of::<Slot>()
            + self.recent.allocated() * std::mem::size_of::<(bool, Reason)>()
            + self.transitions.allocated() * std::mem::size_of::<Transition>()
            + self
                .transitions
                .iter()
                .map(|t| t.results.capacity() * std::mem::size_of::<(bool, Reason)>())
                .sum::<usize>()
            + self.latency.heap_bytes()
    }

    /// The last [`HealthConfig::transitions`] transitions, oldest first.
    #[must_use]
    pub fn transitions(&self) -> &Ring<Transition> {
        &self.transitions
    }

    /// Latency percentiles of every phase (successful results only).
    #[must_use]
    pub fn latency(&self) -> PhaseLatencies {
        self.latency.summaries()
    }

    /// Latency percentiles of one phase (successful results only).
    #[must_use]
    pub fn latency_of(&self, phase: Phase) -> LatencySummary {
        self.latency.summary(phase)
    }

    /// Adopt `spec` keeping all state (the caller checked that the probe definition,
    /// target and probe, is unchanged). New thresholds apply from the next result.
    pub(super) fn set_spec(&mut self, spec: Arc<CheckSpec>) {
        self.recent.set_capacity(deciding_capacity(spec.thresholds));
        self.spec = spec;
    }

    fn ms_since_created(&self, at: Instant) -> u64 {
        duration_ms(at.saturating_duration_since(self.created))
    }
}

/// Whole milliseconds of `d` (saturating).
pub(super) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds since the Unix epoch of `t` (0 before it).
#[must_use]
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, duration_ms)
}

fn ser_unix_ms<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(unix_ms(*t))
}

fn ser_opt_us<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        None => s.serialize_none(),
    }
}
