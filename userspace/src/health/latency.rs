//! Latency distributions of one check: an HDR histogram per timing (`rtt` and the
//! stateful phases `connect`, `tls`, `first_byte`, `total`), in microseconds from
//! 1 µs to 60 s with 3 significant digits (every value is reported within 0.1 %).
//!
//! Only successful results are recorded (the health state machine enforces it): a
//! failure's timing is usually the timeout or an instant refusal, and mixing those in
//! would make the percentiles describe the failure mode instead of the service.
//! Histograms are cumulative since the check's state was created (or reset) and are
//! allocated lazily, on the first value of their phase, so a stateless check pays for
//! one histogram, not five.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::engine::result::CheckResult;

/// Lowest trackable value, in microseconds (smaller values are recorded as this).
pub const LOWEST_US: u64 = 1;
/// Highest trackable value, in microseconds (60 s; larger values are recorded as this).
pub const HIGHEST_US: u64 = 60_000_000;
/// Significant decimal digits kept by the histograms.
pub const SIGNIFICANT_DIGITS: u8 = 3;

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

/// One lazily allocated histogram per [`Phase`]. Counts are `u32` (saturating), which
/// halves the memory of `u64` counts and lasts > 100 years at one probe a second.
#[derive(Clone, Debug, Default)]
pub struct LatencyRecorder {
    hists: [Option<Box<Histogram<u32>>>; 5],
}

impl LatencyRecorder {
    /// No values yet (nothing allocated).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Record `value` for `phase`, clamped to 1 µs ..= 60 s.
    pub fn record(&mut self, phase: Phase, value: Duration) {
        let us = u64::try_from(value.as_micros())
            .unwrap_or(HIGHEST_US)
            .clamp(LOWEST_US, HIGHEST_US);
        let hist = self.hists[phase.index()].get_or_insert_with(|| {
            Box::new(
                Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
                    .expect("constant histogram bounds are valid"),
            )
        });
        hist.saturating_record(us);
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
        match &self.hists[phase.index()] {
            Some(h) if !h.is_empty() => LatencySummary {
                p50_us: h.value_at_quantile(0.50),
                p90_us: h.value_at_quantile(0.90),
                p99_us: h.value_at_quantile(0.99),
                max_us: h.max(),
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
        self.hists = Default::default();
    }
}
