//! When each check probes next: the engine's timing, kept apart from the probing.
//!
//! This module owns every check's schedule: the first probe spread at random over one
//! interval (no thundering herd at start-up or after checks are reassigned), then one
//! probe per interval anchored to the schedule rather than to when the caller got
//! round to it (no drift), with per-probe jitter, a switchable (fast) interval, and
//! skipping of slots a late caller missed instead of bursting to catch up.
//!
//! It is pure: no threads and no clock. Every call takes `now`, nanoseconds of a
//! monotonic clock read by the caller, so tests are deterministic and instant. The
//! timers themselves live in a [`TimingWheel`].

mod wheel;

#[cfg(test)]
mod tests;

use std::time::Duration;

use rand::{rngs::StdRng, Rng, SeedableRng};

use super::{id_index::IdIndex, spec::CheckId};
pub use wheel::{TimerKey, TimingWheel, DEFAULT_TICK_NS, LEVELS};

/// Largest jitter accepted, as a fraction of the interval: with at most half an
/// interval either way, consecutive probes of a check never swap order.
pub const MAX_JITTER: f64 = 0.5;

/// One check's timing, kept in its timer (the wheel's slab entry), so the index by
/// id holds only the timer's slab index: 4 bytes per slot in the index (the id is
/// read from the timer), 64 per check in the wheel.
#[derive(Debug)]
struct Timer {
    id: CheckId,
    /// Interval in ns (>= 1).
    interval: u64,
    /// The unjittered time of the pending probe: the anchor the next one is computed
    /// from, so jitter never accumulates. (When it fires is the timer's deadline.)
    nominal: u64,
    /// Fraction of the interval each probe may move either way.
    jitter: f32,
}

/// The probe timetable of every check the engine runs. Exists so that the engine's
/// loop only asks "what is due now" and "how long may I sleep", while spreading,
/// jitter, anchoring and catch-up rules live (and are tested) in one place.
#[derive(Debug)]
pub struct Scheduler {
    wheel: TimingWheel<Timer>,
    /// Each check's timer (its slab index) by the id the timer holds. A timer keeps
    /// its key for as long as its check is scheduled (the wheel re-arms it in place).
    checks: IdIndex,
    rng: StdRng,
    missed: u64,
}

impl Default for Scheduler {
    fn default() -> Self {
        Self::new()
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}

#[allow(clippy::cast_possible_truncation)]
fn clamp_jitter(jitter: f64) -> f32 {
    if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, MAX_JITTER) as f32
    }
}

impl Scheduler {
    /// An empty scheduler with a randomly seeded RNG (production). Seeded from the
    /// OS; should that fail, from std's per-process random hash keys.
    #[must_use]
    pub fn new() -> Self {
        let rng = StdRng::try_from_os_rng().unwrap_or_else(|_| {
            use std::hash::{BuildHasher, RandomState};
            StdRng::seed_from_u64(RandomState::new().hash_one(0x5eed_u64))
        });
        Self::with_rng(rng, DEFAULT_TICK_NS)
    }

    /// An empty scheduler whose random spreading and jitter are reproducible from
    /// `seed` (tests, simulations).
    #[must_use]
    pub fn with_seed(seed: u64) -> Self {
        Self::with_rng(StdRng::seed_from_u64(seed), DEFAULT_TICK_NS)
    }

    /// An empty, seeded scheduler with a timing-wheel tick of `tick_ns` (see
    /// [`TimingWheel::with_tick`]).
    #[must_use]
    pub fn with_seed_and_tick(seed: u64, tick_ns: u64) -> Self {
        Self::with_rng(StdRng::seed_from_u64(seed), tick_ns)
    }

    fn with_rng(rng: StdRng, tick_ns: u64) -> Self {
        Self {
            wheel: TimingWheel::with_tick(tick_ns),
            checks: IdIndex::default(),
            rng,
            missed: 0,
        }
    }

    /// Schedule a check: its first probe at `now` plus a uniform random offset in
    /// `[0, interval)`, then every `interval` moved by up to `jitter * interval`
    /// either way (`jitter` is clamped to `0.0..=0.5`; `interval` to at least 1 ns).
    /// Re-adding a scheduled check replaces its schedule. Returns whether the check
    /// was already scheduled.
    pub fn add(&mut self, id: CheckId, interval: Duration, jitter: f64, now: u64) -> bool {
        let interval = nanos(interval);
        let first = now.saturating_add(self.rng.random_range(0..interval));
        let replaced = self.remove(&id);
        let timer = Timer {
            id,
            interval,
            nominal: first,
            jitter: clamp_jitter(jitter),
        };
        let index = self.wheel.insert(first, timer).index();
        let wheel = &self.wheel;
        self.checks
            .insert(id_of(wheel, index), index, |i| id_of(wheel, i));
        replaced
    }

    /// The key of `id`'s timer.
    fn key(&self, id: &CheckId) -> Option<TimerKey> {
        let wheel = &self.wheel;
        self.checks
            .find(id, |i| id_of(wheel, i))
            .and_then(|i| wheel.key_at(i))
    }

    /// Stop scheduling a check. Returns whether it was scheduled.
    pub fn remove(&mut self, id: &CheckId) -> bool {
        let wheel = &self.wheel;
        let Some(index) = self.checks.remove(id, |i| id_of(wheel, i)) else {
            return false;
        };
        if let Some(key) = self.wheel.key_at(index) {
            self.wheel.cancel(key);
        }
        true
    }

    /// Change a check's interval (e.g. to its fast interval while failing, and back).
    /// It applies from the next probe on; if the new interval is shorter than the
    /// time left until the pending probe, that probe moves to `now + interval` (with
    /// jitter, never later than it was). Returns whether the check is scheduled.
    pub fn set_interval(&mut self, id: &CheckId, interval: Duration, now: u64) -> bool {
        let interval = nanos(interval);
        let Some(key) = self.key(id) else {
            return false;
        };
        let Some(deadline) = self.wheel.deadline(key) else {
            return false;
        };
        let Some(timer) = self.wheel.get_mut(key) else {
            return false;
        };
        timer.interval = interval;
        if interval < deadline.saturating_sub(now) {
            let nominal = now.saturating_add(interval);
            timer.nominal = nominal;
            let jittered = jittered(&mut self.rng, nominal, interval, timer.jitter);
            let moved = jittered.max(now.saturating_add(1)).min(deadline);
            self.wheel.reschedule(key, moved);
        }
        true
    }

    /// Append to `out` every check whose probe is due by `now`, and schedule each
    /// one's next probe: one interval after the pending probe's unjittered time, plus
    /// jitter, and always after `now`. Slots whose unjittered time is already `<= now`
    /// (the caller was late by about an interval or more) are skipped, not made up,
    /// and counted in [`missed`](Self::missed).
    pub fn due(&mut self, now: u64, out: &mut Vec<CheckId>) {
        let (rng, missed) = (&mut self.rng, &mut self.missed);
        self.wheel.advance_rearm(now, |timer| {
            let mut nominal = timer.nominal.saturating_add(timer.interval);
            if nominal <= now {
                let skipped = (now - nominal) / timer.interval + 1;
                *missed = missed.saturating_add(skipped);
                nominal = nominal.saturating_add(skipped.saturating_mul(timer.interval));
            }
            timer.nominal = nominal;
            out.push(timer.id.clone());
            jittered(rng, nominal, timer.interval, timer.jitter).max(now.saturating_add(1))
        });
    }

    /// A lower bound of the next probe time (see [`TimingWheel::next_deadline`]):
    /// how long the engine may sleep. `None` when no check is scheduled.
    #[must_use]
    pub fn next_deadline(&self) -> Option<u64> {
        self.wheel.next_deadline()
    }

    /// When a check's pending probe is due.
    #[must_use]
    pub fn deadline(&self, id: &CheckId) -> Option<u64> {
        self.key(id).and_then(|k| self.wheel.deadline(k))
    }

    /// A check's current interval.
    #[must_use]
    pub fn interval(&self, id: &CheckId) -> Option<Duration> {
        self.key(id)
            .and_then(|k| self.wheel.get(k))
            .map(|t| Duration::from_nanos(t.interval))
    }

    /// Whether a check is scheduled.
    #[must_use]
    pub fn contains(&self, id: &CheckId) -> bool {
        self.key(id).is_some()
    }

    /// Scheduled checks.
    #[must_use]
    pub fn len(&self) -> usize {
        self.checks.len()
    }

    /// Whether no check is scheduled.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }

    /// Probe slots skipped because the caller was late, since creation or the last
    /// [`take_missed`](Self::take_missed).
    #[must_use]
    pub fn missed(&self) -> u64 {
        self.missed
    }

    /// Probe slots skipped since the last call (for adding to
    /// [`BudgetStats::skipped`](super::budget::BudgetStats)).
    pub fn take_missed(&mut self) -> u64 {
        std::mem::take(&mut self.missed)
    }
}

/// The id of the armed timer in slab entry `index` (every indexed timer is armed).
fn id_of(wheel: &TimingWheel<Timer>, index: u32) -> &CheckId {
    match wheel.get_at(index) {
        Some(t) => &t.id,
        None => unreachable!("scheduler: indexed timer {index} is not armed"),
    }
}

/// `nominal` moved by a uniform offset in `[-jitter * interval, +jitter * interval]`.
fn jittered(rng: &mut StdRng, nominal: u64, interval: u64, jitter: f32) -> u64 {
    // `jitter` <= 0.5, so the product is < interval and fits.
    let span = (interval as f64 * f64::from(jitter)) as u64;
    if span == 0 {
        return nominal;
    }
    let offset = rng.random_range(0..=span.saturating_mul(2));
    if offset >= span {
        nominal.saturating_add(offset - span)
    } else {
        nominal.saturating_sub(span - offset)
    }
}
