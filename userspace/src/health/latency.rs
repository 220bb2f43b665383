//! Latency distributions of one check: a compact log-linear histogram per timing
//! (`rtt` and the stateful phases `connect`, `tls`, `first_byte`, `total`), in
//! microseconds from 1 µs to 60 s. Values below 16 µs are kept exactly; above, each
//! power of two is split in 16 buckets, so a percentile is reported within ±3.2 % of
//! the true value (the bucket's midpoint); the maximum is exact.
//!
//! Only the buckets that hold values are stored (sorted `(bucket, count)` triples of
//! `u16`, 6 bytes each), so a check whose latency stays within an octave or two keeps
//! under a hundred bytes per phase instead of the ~68 KiB of an HDR histogram with 3
//! significant digits: this is what lets one node hold a million checks (see
//! bench/scale.sh).
//!
//! Only successful results are recorded (the health state machine enforces it): a
//! failure's timing is usually the timeout or an instant refusal, and mixing those in
//! would make the percentiles describe the failure mode instead of the service.
//! Stateless checks (`tcp_syn`, `icmp`) keep the RTT only: the userspace `total` of
//! their results times the same exchange and is reported per result, not kept.
//! Histograms are cumulative since the check's state was created (or reset). The RTT
//! histogram is inline; the four stateful phases are allocated together on their
//! first value, so a stateless check pays for one histogram, not five.

use std::time::Duration;

use serde::Serialize;

use crate::engine::result::CheckResult;

/// Lowest trackable value, in microseconds (smaller values are recorded as this).
pub const LOWEST_US: u64 = 1;
/// Highest trackable value, in microseconds (60 s; larger values are recorded as this).
pub const HIGHEST_US: u64 = 60_000_000;

/// A measured timing of a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Round-trip time (stateless probes) or total time (stateful), `CheckResult::rtt`.
    Rtt,
    /// TCP handshake done.
    Connect,
    /// TLS handshake done.
    Tls,
    /// First response byte received.
    FirstByte,
    /// Whole exchange done.
    Total,
}

impl Phase {
    /// Every phase, in report order.
    pub const ALL: [Phase; 5] = [
        Phase::Rtt,
        Phase::Connect,
        Phase::Tls,
        Phase::FirstByte,
        Phase::Total,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// The timing of this phase in `result`, if measured.
    #[must_use]
    pub fn of(self, result: &CheckResult) -> Option<Duration> {
        match self {
            Phase::Rtt => result.rtt,
            Phase::Connect => result.phases.connect,
            Phase::Tls => result.phases.tls,
            Phase::FirstByte => result.phases.first_byte,
            Phase::Total => result.phases.total,
        }
    }
}

/// Percentiles of one phase, in microseconds (all 0 when `count` is 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LatencySummary {
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Largest value recorded (within histogram precision).
    pub max_us: u64,
    /// Values recorded.
    pub count: u64,
}

/// A [`LatencySummary`] for every [`Phase`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PhaseLatencies {
    /// Round-trip (or total) time.
    pub rtt: LatencySummary,
    /// TCP handshake.
    pub connect: LatencySummary,
    /// TLS handshake.
    pub tls: LatencySummary,
    /// Time to first byte.
    pub first_byte: LatencySummary,
    /// Whole exchange.
    pub total: LatencySummary,
}

impl PhaseLatencies {
    /// The summary of `phase`.
    #[must_use]
    pub fn get(&self, phase: Phase) -> LatencySummary {
        match phase {
            Phase::Rtt => self.rtt,
            Phase::Connect => self.connect,
            Phase::Tls => self.tls,
            Phase::FirstByte => self.first_byte,
            Phase::Total => self.total,
        }
    }

    fn slot(&mut self, phase: Phase) -> &mut LatencySummary {
        match phase {
            Phase::Rtt => &mut self.rtt,
            Phase::Connect => &mut self.connect,
            Phase::Tls => &mut self.tls,
            Phase::FirstByte => &mut self.first_byte,
            Phase::Total => &mut self.total,
        }
    }
}

/// Sub-buckets per power of two (16: ±3.2 % around the midpoint).
const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;

/// The bucket of `us` (>= 1).
fn bucket(us: u64) -> u16 {
    if us < SUB {
        return u16::try_from(us).unwrap_or(0);
    }
    let e = 63 - us.leading_zeros(); // floor(log2), >= SUB_BITS
    let m = (us >> (e - SUB_BITS)) & (SUB - 1);
    u16::try_from(u64::from(e - SUB_BITS + 1) * SUB + m).unwrap_or(u16::MAX)
}

/// The lowest value and the width of bucket `b`.
fn bucket_range(b: u16) -> (u64, u64) {
    let b = u64::from(b);
    if b < SUB {
        return (b, 1);
    }
    let e = b / SUB - 1 + u64::from(SUB_BITS);
    let m = b % SUB;
    let width = 1u64 << (e - u64::from(SUB_BITS));
    ((SUB + m) * width, width)
}

fn bucket_count(e: [u16; 3]) -> u32 {
    u32::from(e[1]) | u32::from(e[2]) << 16
}

/// A sparse log-linear histogram of microsecond values: 32 bytes plus 6 per bucket
/// that holds values, allocated exactly (a new bucket rebuilds the slice; a check's
/// latency settles in a few buckets, so this is rare).
#[derive(Clone, Debug, Default)]
pub struct Compact {
    /// `[bucket, count low 16 bits, count high 16 bits]` (6 bytes where a
    /// `(u16, u32)` takes 8), sorted by bucket; counts saturate at `u32::MAX`.
    buckets: Box<[[u16; 3]]>,
    /// Values recorded.
    count: u64,
    /// Largest value recorded (exact; values are at most [`HIGHEST_US`]).
    max: u32,
}

impl Compact {
    /// Record `us` (already clamped to the range).
    pub fn record(&mut self, us: u64) {
        let b = bucket(us);
        match self.buckets.binary_search_by_key(&b, |e| e[0]) {
            Ok(i) => {
                let e = &mut self.buckets[i];
                let n = bucket_count(*e).saturating_add(1);
                #[allow(clippy::cast_possible_truncation)]
                {
                    (e[1], e[2]) = (n as u16, (n >> 16) as u16);
                }
            }
            Err(i) => {
                let mut buckets = std::mem::take(&mut self.buckets).into_vec();
                buckets.reserve_exact(1);
                buckets.insert(i, [b, 1, 0]);
                self.buckets = buckets.into_boxed_slice();
            }
        }
        self.count += 1;
        self.max = self.max.max(u32::try_from(us).unwrap_or(u32::MAX));
    }

    /// The value at quantile `q` (0..=1): the midpoint of its bucket, at most `max`.
    #[must_use]
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        if q >= 1.0 {
            return u64::from(self.max);
        }
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for &e in &self.buckets {
            let b = e[0];
            seen += u64::from(bucket_count(e));
            if seen >= rank {
                let (lo, width) = bucket_range(b);
                return (lo + width / 2).min(u64::from(self.max));
            }
        }
        u64::from(self.max)
    }

    /// Values recorded.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether nothing was recorded.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Heap bytes held (for the memory bound's tests).
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        self.buckets.len() * std::mem::size_of::<[u16; 3]>()
    }
}

/// One histogram per [`Phase`]: the RTT's inline (every probe kind has one), the
/// stateful phases' allocated together on the first value of one of them.
#[derive(Clone, Debug, Default)]
pub struct LatencyRecorder {
    rtt: Compact,
    /// Connect, TLS, first byte, total.
    phases: Option<Box<[Compact; 4]>>,
}

impl LatencyRecorder {
    /// No values yet (nothing allocated).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn hist(&self, phase: Phase) -> Option<&Compact> {
        match phase.index() {
            0 => Some(&self.rtt),
            i => self.phases.as_ref().map(|p| &p[i - 1]),
        }
    }

    /// Record `value` for `phase`, clamped to 1 µs ..= 60 s.
    pub fn record(&mut self, phase: Phase, value: Duration) {
        let us = u64::try_from(value.as_micros())
            .unwrap_or(HIGHEST_US)
            .clamp(LOWEST_US, HIGHEST_US);
        match phase.index() {
            0 => self.rtt.record(us),
            i => self.phases.get_or_insert_with(Box::default)[i - 1].record(us),
        }
    }

    /// Heap bytes held by the histograms.
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        self.rtt.heap_bytes()
            + self.phases.as_ref().map_or(0, |p| {
                std::mem::size_of::<[Compact; 4]>()
                    + p.iter().map(Compact::heap_bytes).sum::<usize>()
            })
    }

    /// Record every measured timing of `result`. The caller decides whether the
    /// result counts (health records successes only).
    pub fn record_result(&mut self, result: &CheckResult) {
        for phase in Phase::ALL {
            if let Some(value) = phase.of(result) {
                self.record(phase, value);
            }
        }
    }

    /// Percentiles of `phase`.
    #[must_use]
    pub fn summary(&self, phase: Phase) -> LatencySummary {
        match self.hist(phase) {
            Some(h) if !h.is_empty() => LatencySummary {
                p50_us: h.quantile(0.50),
                p90_us: h.quantile(0.90),
                p99_us: h.quantile(0.99),
                max_us: u64::from(h.max),
                count: h.len(),
            },
            _ => LatencySummary::default(),
        }
    }

    /// Percentiles of every phase.
    #[must_use]
    pub fn summaries(&self) -> PhaseLatencies {
        let mut all = PhaseLatencies::default();
        for phase in Phase::ALL {
            *all.slot(phase) = self.summary(phase);
        }
        all
    }

    /// Forget every value (and free the histograms).
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod compact_tests {
    use super::*;

    #[test]
    fn buckets_cover_the_range_in_order() {
        let mut prev = 0;
        for us in 1..=100_000u64 {
            let b = bucket(us);
            assert!(b >= prev, "{us}");
            prev = b;
            let (lo, w) = bucket_range(b);
            assert!(lo <= us && us < lo + w, "{us} in [{lo}, {})", lo + w);
            // Relative width at most 1/16: the midpoint is within 3.2 %.
            if us >= SUB {
                assert!(w * 16 <= lo, "{us}: width {w} at {lo}");
            }
        }
        assert!(bucket(HIGHEST_US) < 400);
    }

    #[test]
    fn quantiles_within_three_percent() {
        let mut h = Compact::default();
        for us in 1..=10_000u64 {
            h.record(us);
        }
        for (q, want) in [(0.5, 5_000.0), (0.9, 9_000.0), (0.99, 9_900.0)] {
            #[allow(clippy::cast_precision_loss)]
            let got = h.quantile(q) as f64;
            assert!((got - want).abs() / want < 0.032, "q{q}: {got} vs {want}");
        }
        assert_eq!(h.quantile(1.0), 10_000);
        assert_eq!(h.len(), 10_000);
        let mut one = Compact::default();
        one.record(7);
        assert_eq!((one.quantile(0.5), one.quantile(0.99)), (7, 7));
    }

    #[test]
    fn bucket_counts_carry_past_16_bits() {
        let mut h = Compact::default();
        for _ in 0..70_000 {
            h.record(7);
        }
        h.record(9);
        assert_eq!(bucket_count(h.buckets[0]), 70_000);
        assert_eq!(bucket_count(h.buckets[1]), 1);
        assert_eq!((h.quantile(0.99), h.quantile(1.0), h.len()), (7, 9, 70_001));
    }

    #[test]
    fn a_steady_latency_costs_a_few_buckets() {
        let mut r = LatencyRecorder::new();
        for i in 0..10_000u64 {
            r.record(Phase::Rtt, Duration::from_micros(180 + i % 40));
        }
        assert!(r.heap_bytes() < 200, "{} bytes", r.heap_bytes());
        let s = r.summary(Phase::Rtt);
        assert!((175..=225).contains(&s.p50_us), "{s:?}");
        assert_eq!(s.max_us, 219);
    }
}
