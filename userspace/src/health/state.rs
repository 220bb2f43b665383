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
    collections::VecDeque,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Serialize, Serializer};
use tokio::time::Instant;

use super::{
    latency::{LatencyRecorder, LatencySummary, Phase, PhaseLatencies},
    ring::{InlineRing, Ring},
};
use crate::engine::{
    result::{CheckResult, Reason},
    spec::{CheckId, CheckSpec, InitialState, ProbeSpec, Thresholds},
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
    /// Results kept in [`CheckHealth::history`] (default and most: [`HISTORY_MAX`]).
    pub history: usize,
    /// Transitions kept in [`CheckHealth::transitions`] (default 16).
    pub transitions: usize,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            history: HISTORY_MAX,
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

/// Most results a check's history keeps (and the default): kept inline in the
/// check's state, 8 bytes each.
pub const HISTORY_MAX: usize = 32;

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

/// A monotonic instant in 8 bytes (an `Instant` takes 16): nanoseconds from a
/// process-wide reference taken on first use, negative before it. Exact both ways.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Mono(i64);

static MONO_REFERENCE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

impl Mono {
    fn of(at: Instant) -> Self {
        let r = *MONO_REFERENCE.get_or_init(|| at);
        let ns = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        if at >= r {
            Mono(ns(at - r))
        } else {
            Mono(-ns(r - at))
        }
    }

    fn instant(self) -> Instant {
        // Set by the `Mono::of` that made `self`.
        let r = *MONO_REFERENCE.get_or_init(Instant::now);
        let d = Duration::from_nanos(self.0.unsigned_abs());
        if self.0 >= 0 {
            r + d
        } else {
            r.checked_sub(d).unwrap_or(r)
        }
    }
}

/// Health state machine, history and latency of one check.
///
/// Kept small, as a node holds a million of them (bench/scale.sh): a steady check
/// holds its fixed part with its history inline ([`HISTORY_MAX`] results of 8
/// bytes), its transitions (56 bytes each, plus the reasons of failures that decided
/// them) and a few 6-byte latency buckets. Failure reasons are kept only as long as a transition may cite
/// them; successes are a bit in `window_bits`.
#[derive(Clone, Debug)]
pub struct CheckHealth {
    /// Shared with the daemon's check table (one copy per check).
    spec: Arc<CheckSpec>,
    created: Mono,
    /// Wall time of `created`, nanoseconds since the Unix epoch (0 before it).
    created_wall_ns: u64,
    since: Mono,
    results_seen: u64,
    /// Outcomes, newest in bit 0 (1 = success).
    window_bits: u64,
    /// The run the latest results make: successes in a row (> 0) or failures in a
    /// row (< 0), saturating at 2^31 - 1 either way (one field, as one of the two
    /// counts is always 0).
    streak: i32,
    /// Outcomes in `window_bits` (<= 64).
    window_seen: u8,
    state: Health,
    last: Option<Last>,
    /// Reasons of the failures among the newest [`deciding_capacity`] results, by
    /// result number (`results_seen` when it was observed), to explain transitions.
    /// `None` (nothing allocated) while there is none. Boxed: 8 bytes inline instead
    /// of a `VecDeque`'s 32 in every check, most of which keep no failure.
    #[allow(clippy::box_collection)]
    failures: Option<Box<VecDeque<(u64, Reason)>>>,
    /// Compact results (see [`Slot`]); [`CheckHealth::history`] expands them.
    history: InlineRing<Slot, HISTORY_MAX>,
    transitions: Ring<StoredTransition>,
    latency: LatencyRecorder,
    outcomes: OutcomeCounts,
}

/// The latest result, as kept (expanded by [`CheckHealth::last_result`]).
#[derive(Clone, Debug)]
struct Last {
    seq: u64,
    at: Mono,
    reason: Reason,
    /// RTT in ns, `u64::MAX` for none.
    rtt_ns: u64,
    /// Days until the certificate expires, [`NO_CERT`] for none.
    cert_days_left: i32,
    /// HTTP status, 0 for none (a status is 100..=999).
    http_status: u16,
    ok: bool,
    kernel_clock: bool,
}

/// No certificate in [`Last::cert_days_left`].
const NO_CERT: i32 = i32::MIN;

/// One result of the history in 8 bytes (a [`HistoryEntry`] takes 72), rebuilt
/// from the latest result, which is kept in full:
///
/// - bits 0-31: the low 32 bits of `at_ms` (a history spans far less than 2^32 ms);
/// - bits 32-39: the low 8 bits of the sequence number. The daemon numbers each
///   check's probes 1, 2, 3, ..., so consecutive results differ by 1, and any step
///   below 256 (255 results lost in a row) is rebuilt exactly;
/// - bits 40-57: the RTT (see [`encode_rtt`]);
/// - bits 58-61: the reason's [`Reason::label_index`];
/// - bit 62: success; bit 63: measured by the kernel clock.
#[derive(Clone, Copy, Debug, Default)]
struct Slot(u64);

const _: () = assert!(Reason::LABELS.len() <= 16, "a slot keeps 4 bits of label");

/// No RTT (18-bit field).
const RTT_NONE: u32 = 0x3_ffff;
/// Set: the rest of the RTT field is whole milliseconds, not microseconds.
const RTT_IN_MS: u32 = 0x2_0000;

/// An RTT in 18 bits: microseconds, exact, below 2^17 µs (131 ms); whole
/// milliseconds (flagged) above, up to 131 s (twice the longest timeout). The latest
/// result keeps its RTT exactly.
fn encode_rtt(rtt: Option<Duration>) -> u32 {
    let Some(d) = rtt else { return RTT_NONE };
    match u32::try_from(d.as_micros()) {
        Ok(us) if us < RTT_IN_MS => us,
        _ => {
            RTT_IN_MS
                | u32::try_from(d.as_millis()).map_or(RTT_IN_MS - 2, |ms| ms.min(RTT_IN_MS - 2))
        }
    }
}

fn decode_rtt(v: u32) -> Option<Duration> {
    let v = v & RTT_NONE;
    if v == RTT_NONE {
        None
    } else if v & RTT_IN_MS != 0 {
        Some(Duration::from_millis(u64::from(v & !RTT_IN_MS)))
    } else {
        Some(Duration::from_micros(u64::from(v)))
    }
}

impl Slot {
    fn new(result: &CheckResult, at_ms: u64, ok: bool) -> Self {
        Self(
            (at_ms & 0xffff_ffff)
                | ((result.seq & 0xff) << 32)
                | (u64::from(encode_rtt(result.rtt)) << 40)
                | (u64::from(result.reason.label_index() & 0xf) << 58)
                | (u64::from(ok) << 62)
                | (u64::from(result.clock == Clock::Kernel) << 63),
        )
    }

    #[allow(clippy::cast_possible_truncation)]
    fn at_ms_low(self) -> u32 {
        self.0 as u32
    }

    fn seq_low(self) -> u8 {
        (self.0 >> 32) as u8
    }

    #[allow(clippy::cast_possible_truncation)]
    fn rtt(self) -> Option<Duration> {
        decode_rtt((self.0 >> 40) as u32)
    }

    fn ok(self) -> bool {
        self.0 >> 62 & 1 == 1
    }

    fn kernel_clock(self) -> bool {
        self.0 >> 63 == 1
    }

    fn label(self) -> &'static str {
        Reason::label_of(((self.0 >> 58) & 0xf) as u8)
    }
}

/// A transition as kept in the check's ring (expanded to a [`Transition`] when read),
/// in 64 bytes: the check is the state's own, the wall time in milliseconds, the
/// deciding results as bits plus the reasons of the failures, and the transition's
/// reason only when it is not the newest deciding result's (never, for transitions
/// this state decided).
#[derive(Clone, Debug)]
struct StoredTransition {
    at: Mono,
    at_unix_ms: u64,
    reason: Option<Box<Reason>>,
    deciding: Deciding,
    from: Health,
    to: Health,
}

/// Up to [`MAX_DECIDING_RESULTS`] `(ok, reason)` pairs: a success is a bit (its reason
/// is [`Reason::Ok`]), a failure a bit and its reason.
#[derive(Clone, Debug, Default)]
struct Deciding {
    /// Bit i: result i (oldest first) succeeded.
    ok: u64,
    /// The failures' reasons, oldest first.
    failures: Box<[Reason]>,
    len: u8,
}

impl Deciding {
    /// The newest [`MAX_DECIDING_RESULTS`] of `results` (oldest first). A result counts
    /// as a success exactly when its reason is `Ok`, as [`CheckHealth::observe`] judges.
    fn of(results: &[(bool, Reason)]) -> Self {
        let results = &results[results.len().saturating_sub(MAX_DECIDING_RESULTS)..];
        let mut d = Deciding {
            len: u8::try_from(results.len()).unwrap_or(u8::MAX),
            ..Deciding::default()
        };
        let mut failures = Vec::new();
        for (i, (_, reason)) in results.iter().enumerate() {
            if reason.is_ok() {
                d.ok |= 1 << i;
            } else {
                failures.push(reason.clone());
            }
        }
        d.failures = failures.into_boxed_slice();
        d
    }

    fn expand(&self) -> Vec<(bool, Reason)> {
        let mut failures = self.failures.iter();
        (0..usize::from(self.len))
            .map(|i| {
                if self.ok >> i & 1 == 1 {
                    (true, Reason::Ok)
                } else {
                    (false, failures.next().cloned().unwrap_or(Reason::Ok))
                }
            })
            .collect()
    }

    /// The newest result's reason.
    fn newest(&self) -> Option<Reason> {
        let i = usize::from(self.len).checked_sub(1)?;
        if self.ok >> i & 1 == 1 {
            Some(Reason::Ok)
        } else {
            self.failures.last().cloned()
        }
    }
}

/// Probe counts by outcome label ([`Reason::label_index`]), in 24 bytes: the first
/// label inline (the label in the top 8 bits, the count in the low 56: 7e16 probes),
/// further ones in a boxed slice rebuilt when a new label appears (at most 13 times).
#[derive(Clone, Debug, Default)]
struct OutcomeCounts {
    /// Label << 56 | count; 0: nothing counted yet.
    first: u64,
    more: Box<[(u8, u64)]>,
}

impl OutcomeCounts {
    const COUNT: u64 = (1 << 56) - 1;

    fn add(&mut self, label: u8) {
        let first_label = (self.first >> 56) as u8;
        if self.first == 0 || first_label == label {
            let n = (self.first & Self::COUNT) + 1;
            self.first = u64::from(label) << 56 | n.min(Self::COUNT);
        } else if let Some(e) = self.more.iter_mut().find(|e| e.0 == label) {
            e.1 += 1;
        } else {
            let mut more = std::mem::take(&mut self.more).into_vec();
            more.reserve_exact(1);
            more.push((label, 1));
            self.more = more.into_boxed_slice();
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        let first = ((self.first >> 56) as u8, self.first & Self::COUNT);
        std::iter::once(first)
            .filter(|e| e.1 > 0)
            .chain(self.more.iter().copied())
            .map(|(l, n)| (Reason::label_of(l), n))
    }
}

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
            spec,
            created: Mono::of(now),
            created_wall_ns: wall_now
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            since: Mono::of(now),
            results_seen: 0,
            window_bits: 0,
            streak: 0,
            window_seen: 0,
            last: None,
            failures: None,
            history: InlineRing::new(config.history),
            transitions: Ring::new(config.transitions),
            latency: LatencyRecorder::new(),
            outcomes: OutcomeCounts::default(),
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
        self.outcomes.add(result.reason.label_index());
        if ok {
            self.streak = self.streak.max(0).saturating_add(1);
            if matches!(self.spec.probe, ProbeSpec::TcpSyn | ProbeSpec::Icmp) {
                // A stateless probe's latency is its RTT; its `total` (the same exchange
                // timed in userspace) stays in each result, not in a second histogram
                // per check (~230 bytes of each of a million checks).
                if let Some(rtt) = result.rtt {
                    self.latency.record(Phase::Rtt, rtt);
                }
            } else {
                self.latency.record_result(result);
            }
        } else {
            self.streak = self.streak.min(0).saturating_sub(1);
        }
        self.window_bits = (self.window_bits << 1) | u64::from(ok);
        self.window_seen = self.window_seen.saturating_add(1).min(64);
        self.results_seen += 1;
        self.keep_failure(ok, &result.reason);
        let at_ms = self.ms_since_created(now);
        self.history.push(Slot::new(result, at_ms, ok));
        self.last = Some(Last {
            seq: result.seq,
            at: Mono::of(now),
            reason: result.reason.clone(),
            rtt_ns: result.rtt.map_or(u64::MAX, |d| {
                u64::try_from(d.as_nanos()).unwrap_or(u64::MAX - 1)
            }),
            cert_days_left: result.cert_days_left.map_or(NO_CERT, |d| {
                i32::try_from(d).unwrap_or(if d < 0 { NO_CERT + 1 } else { i32::MAX })
            }),
            http_status: result.http_status.unwrap_or(0),
            ok,
            kernel_clock: result.clock == Clock::Kernel,
        });

        let to = self.verdict(ok)?;
        if to == self.state {
            return None;
        }
        let deciding = self.deciding(self.deciding_len(to));
        let stored = StoredTransition {
            at: Mono::of(now),
            at_unix_ms: unix_ms(self.wall_at(now)),
            reason: (deciding.newest().as_ref() != Some(&result.reason))
                .then(|| Box::new(result.reason.clone())),
            deciding,
            from: self.state,
            to,
        };
        let transition = self.expand(&stored);
        tracing::info!(
            check = %self.spec.id,
            from = ?transition.from,
            to = ?transition.to,
            reason = result.reason.label(),
            "health transition"
        );
        self.state = to;
        self.since = Mono::of(now);
        self.transitions.push(stored);
        Some(transition)
    }

    /// Keep the reason of the newest result (number `results_seen`) if it failed, and
    /// drop the kept reasons no transition can cite any more.
    fn keep_failure(&mut self, ok: bool, reason: &Reason) {
        let cap = deciding_capacity(self.spec.thresholds) as u64;
        let consecutive = matches!(self.spec.thresholds, Thresholds::Consecutive { .. });
        if ok && consecutive {
            // A run of failures is over: a transition to Unhealthy cites only the
            // current run, one to Healthy only successes.
            self.failures = None;
            return;
        }
        if !ok {
            self.failures
                .get_or_insert_with(Box::default)
                .push_back((self.results_seen, reason.clone()));
        }
        self.forget_old_failures(cap);
    }

    /// Drop kept failure reasons older than the newest `cap` results.
    fn forget_old_failures(&mut self, cap: u64) {
        if let Some(f) = &mut self.failures {
            while f.front().is_some_and(|(n, _)| n + cap <= self.results_seen) {
                f.pop_front();
            }
            if f.is_empty() {
                self.failures = None;
            }
        }
    }

    /// The newest `len` results (oldest first), to cite in a transition: successes
    /// from the window register, failures with their kept reasons.
    fn deciding(&self, len: usize) -> Deciding {
        let len = len
            .min(MAX_DECIDING_RESULTS)
            .min(usize::try_from(self.results_seen).unwrap_or(MAX_DECIDING_RESULTS));
        let results: Vec<(bool, Reason)> = (0..len)
            .map(|i| {
                // Result i of the deciding ones is `back` results before the newest.
                let back = len - 1 - i;
                if self.window_bits >> back & 1 == 1 {
                    return (true, Reason::Ok);
                }
                let n = self.results_seen - back as u64;
                let reason = self
                    .failures
                    .as_ref()
                    .and_then(|f| f.iter().find(|(m, _)| *m == n))
                    .map(|(_, r)| r.clone());
                debug_assert!(reason.is_some(), "failure {n} not kept");
                let reason = reason.unwrap_or(Reason::Local {
                    detail: "reason not kept".to_owned(),
                });
                (false, reason)
            })
            .collect();
        Deciding::of(&results)
    }

    fn expand(&self, t: &StoredTransition) -> Transition {
        Transition {
            check: self.spec.id.clone(),
            from: t.from,
            to: t.to,
            at: t.at.instant(),
            at_ms: self.ms_since_created(t.at.instant()),
            at_wall: UNIX_EPOCH + Duration::from_millis(t.at_unix_ms),
            reason: match &t.reason {
                Some(r) => (**r).clone(),
                None => t.deciding.newest().unwrap_or(Reason::Ok),
            },
            results: t.deciding.expand(),
        }
    }

    /// The decided verdict after the latest result (`ok`), if any.
    fn verdict(&self, ok: bool) -> Option<Health> {
        match self.spec.thresholds {
            Thresholds::Consecutive { rise, fall } => {
                if ok && self.consecutive_ok() >= rise.max(1) {
                    Some(Health::Healthy)
                } else if !ok && self.consecutive_fail() >= fall.max(1) {
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
        let seen = u32::from(self.window_seen).min(window);
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

    /// The check's spec, shared.
    #[must_use]
    pub fn spec_arc(&self) -> Arc<CheckSpec> {
        Arc::clone(&self.spec)
    }

    /// Current health.
    #[must_use]
    pub fn state(&self) -> Health {
        self.state
    }

    /// When the current state was entered (creation for the initial state).
    #[must_use]
    pub fn since(&self) -> Instant {
        self.since.instant()
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
        self.since = Mono::of(now.checked_sub(ago).unwrap_or(self.created.instant()));
        for t in transitions {
            let deciding = Deciding::of(&t.results);
            self.transitions.push(StoredTransition {
                at: Mono::of(t.at),
                at_unix_ms: unix_ms(t.at_wall),
                reason: (deciding.newest().as_ref() != Some(&t.reason)).then(|| Box::new(t.reason)),
                deciding,
                from: t.from,
                to: t.to,
            });
        }
    }

    /// Wall time of [`CheckHealth::since`], for display.
    #[must_use]
    pub fn since_wall(&self) -> SystemTime {
        self.wall_at(self.since.instant())
    }

    /// When this state was created (or last reset).
    #[must_use]
    pub fn created(&self) -> Instant {
        self.created.instant()
    }

    /// Display wall time of the monotonic `at` (creation wall time plus elapsed).
    #[must_use]
    pub fn wall_at(&self, at: Instant) -> SystemTime {
        UNIX_EPOCH
            + Duration::from_nanos(self.created_wall_ns)
            + at.saturating_duration_since(self.created.instant())
    }

    /// Successes in a row ending with the latest result.
    #[must_use]
    pub fn consecutive_ok(&self) -> u32 {
        self.streak.max(0).unsigned_abs()
    }

    /// Failures in a row ending with the latest result.
    #[must_use]
    pub fn consecutive_fail(&self) -> u32 {
        self.streak.min(0).unsigned_abs()
    }

    /// Results observed since creation.
    #[must_use]
    pub fn results_seen(&self) -> u64 {
        self.results_seen
    }

    /// Probes counted by outcome ([`Reason::label`]) since creation, in the order the
    /// outcomes first appeared (for metrics).
    pub fn outcomes(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.outcomes.iter()
    }

    /// The latest result.
    #[must_use]
    pub fn last_result(&self) -> Option<LastResult> {
        self.last.as_ref().map(|l| LastResult {
            seq: l.seq,
            ok: l.ok,
            reason: l.reason.clone(),
            rtt: (l.rtt_ns != u64::MAX).then(|| Duration::from_nanos(l.rtt_ns)),
            clock: if l.kernel_clock {
                Clock::Kernel
            } else {
                Clock::Userspace
            },
            http_status: (l.http_status != 0).then_some(l.http_status),
            cert_days_left: (l.cert_days_left != NO_CERT).then_some(i64::from(l.cert_days_left)),
            at: l.at.instant(),
            at_ms: self.ms_since_created(l.at.instant()),
            at_wall: self.wall_at(l.at.instant()),
        })
    }

    /// Whether the latest result succeeded (`None` before the first).
    #[must_use]
    pub fn last_ok(&self) -> Option<bool> {
        self.last.as_ref().map(|l| l.ok)
    }

    /// The last [`HealthConfig::history`] results, oldest first.
    #[must_use]
    pub fn history(&self) -> Vec<HistoryEntry> {
        let Some(last) = &self.last else {
            return Vec::new();
        };
        let last_at_ms = self.ms_since_created(last.at.instant());
        #[allow(clippy::cast_possible_truncation)]
        let at_low = last_at_ms as u32;
        // Sequence numbers, rebuilt newest to oldest from the latest result's.
        let mut seqs = Vec::with_capacity(self.history.len());
        let mut seq = last.seq;
        let mut next_low: Option<u8> = None;
        for s in self.history.iter().rev() {
            if let Some(next) = next_low {
                let step = match next.wrapping_sub(s.seq_low()) {
                    0 => 256,
                    d => u64::from(d),
                };
                seq = seq.saturating_sub(step);
            }
            next_low = Some(s.seq_low());
            seqs.push(seq);
        }
        self.history
            .iter()
            .zip(seqs.into_iter().rev())
            .map(|(s, seq)| {
                let at_ms =
                    last_at_ms.saturating_sub(u64::from(at_low.wrapping_sub(s.at_ms_low())));
                HistoryEntry {
                    seq,
                    ok: s.ok(),
                    reason: s.label(),
                    rtt: s.rtt(),
                    clock: if s.kernel_clock() {
                        Clock::Kernel
                    } else {
                        Clock::Userspace
                    },
                    at: self.created.instant() + Duration::from_millis(at_ms),
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

    /// Heap bytes held by this check's state beyond the struct itself (histories,
    /// kept reasons and histograms; the spec is shared and not counted): the memory
    /// bound's tests.
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        let reason = std::mem::size_of::<Reason>();
        self.failures.as_ref().map_or(0, |f| {
            std::mem::size_of::<VecDeque<(u64, Reason)>>()
                + f.capacity() * std::mem::size_of::<(u64, Reason)>()
        }) + self.transitions.allocated() * std::mem::size_of::<StoredTransition>()
            + self
                .transitions
                .iter()
                .map(|t| {
                    t.deciding.failures.len() * reason + t.reason.as_ref().map_or(0, |_| reason)
                })
                .sum::<usize>()
            + self.outcomes.more.len() * std::mem::size_of::<(u8, u64)>()
            + self.latency.heap_bytes()
    }

    /// Failure reasons kept to explain a coming transition (memory tests).
    #[must_use]
    pub fn kept_failures(&self) -> usize {
        self.failures.as_ref().map_or(0, |f| f.len())
    }

    /// The last [`HealthConfig::transitions`] transitions, oldest first.
    #[must_use]
    pub fn transitions(&self) -> Vec<Transition> {
        self.transitions.iter().map(|t| self.expand(t)).collect()
    }

    /// Transitions held.
    #[must_use]
    pub fn transitions_len(&self) -> usize {
        self.transitions.len()
    }

    /// Transition slots allocated (never more than [`HealthConfig::transitions`]).
    #[must_use]
    pub fn transitions_allocated(&self) -> usize {
        self.transitions.allocated()
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
        self.spec = spec;
        self.forget_old_failures(deciding_capacity(self.spec.thresholds) as u64);
    }

    /// Take over the outcome counts of `old` (a reset state of the same check id:
    /// its probe counters keep counting).
    pub(super) fn inherit_outcomes(&mut self, old: &CheckHealth) {
        self.outcomes = old.outcomes.clone();
    }

    fn ms_since_created(&self, at: Instant) -> u64 {
        duration_ms(at.saturating_duration_since(self.created.instant()))
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
