//! How much probing the engine may do: the limits that keep a health checker from
//! becoming a flood, and the counters that show when they bit.
//!
//! This module owns the admission budgets: a global probes-per-second [`TokenBucket`],
//! a per-target (and per-prefix) cap ([`PerTargetLimiter`]) with bounded memory, a cap
//! on probes in flight ([`InFlight`]) and on sockets held ([`SocketBudget`], sized from
//! `RLIMIT_NOFILE`), combined by [`Budgets::admit`], which either admits a probe (with
//! [`Permits`] to release when it ends) or says until when to delay it and why.
//!
//! Pure like the scheduler: every call takes `now`, nanoseconds of a monotonic clock
//! read by the caller. Rates are kept as exact integers (micro-tokens per second, time
//! in ns), so a bucket neither gains nor loses a token over any run length.

use std::{
    collections::{BTreeSet, HashMap},
    hash::Hash,
    io,
    net::IpAddr,
};

use serde::{Deserialize, Serialize};

/// Rate resolution: rates are rounded to micro-tokens per second.
const MICRO: u128 = 1_000_000;
/// One token in bucket units: a bucket earns `rate` (its micro-tokens per second)
/// units per ns, so a token is 1e9 ns x 1e6 micro-tokens.
const TOKEN: u128 = 1_000_000_000 * MICRO;
/// Highest accepted rate, tokens per second.
pub const MAX_RATE: f64 = 1e9;

/// Why a budget could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BudgetError {
    /// The rate is not finite, below one micro-token per second, or above [`MAX_RATE`].
    #[error("rate {0}/s is not within 0.000001..=1e9")]
    Rate(f64),
    /// A bucket must hold at least one token.
    #[error("burst must be at least 1")]
    Burst,
    /// The per-target table must hold at least one target.
    #[error("max_targets must be at least 1")]
    MaxTargets,
}

/// A rate and burst, as configured: exists so limits can be written down (TOML, etcd)
/// and validated apart from the buckets' state.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RateLimit {
    /// Sustained tokens per second.
    pub rate_per_sec: f64,
    /// Tokens available at once (the bucket's size, and what a fresh bucket holds).
    pub burst: u32,
}

/// Rate arithmetic shared by every bucket (GCRA: a bucket's whole state is its
/// "theoretical arrival time" `tat`, in ns times `rate`; the bucket is full when
/// `tat <= now`).
#[derive(Clone, Copy, Debug)]
struct Gcra {
    /// Micro-tokens per second, which is also rate units earned per ns.
    rate: u128,
    /// Burst in rate units.
    burst: u128,
    limit: RateLimit,
}

impl Gcra {
    fn new(limit: RateLimit) -> Result<Self, BudgetError> {
        let r = limit.rate_per_sec;
        if !r.is_finite() || !(1e-6..=MAX_RATE).contains(&r) {
            return Err(BudgetError::Rate(r));
        }
        if limit.burst == 0 {
            return Err(BudgetError::Burst);
        }
        Ok(Self {
            rate: ((r * 1e6).round() as u128).max(1),
            burst: u128::from(limit.burst) * TOKEN,
            limit,
        })
    }

    /// Take `n` tokens at `now` from a bucket in state `tat`: the new state, or the
    /// earliest time (ns) they will be there (`u64::MAX`: never, `n` > burst).
    fn take(&self, tat: u128, now: u64, n: u32) -> Result<u128, u64> {
        let now_u = u128::from(now) * self.rate;
        let cost = u128::from(n) * TOKEN;
        let new = tat.max(now_u) + cost;
        if new - now_u <= self.burst {
            Ok(new)
        } else if cost > self.burst {
            Err(u64::MAX)
        } else {
            Err(self.ns_at(tat + cost - self.burst))
        }
    }

    /// First ns at which `units` of rate time have passed (rounded up).
    fn ns_at(&self, units: u128) -> u64 {
        u64::try_from(units.div_ceil(self.rate)).unwrap_or(u64::MAX)
    }
}

/// A token bucket refilled at `rate_per_sec` up to `burst` tokens, starting full.
/// Exists for the global probes-per-second cap; exact (integer) over any run length.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    gcra: Gcra,
    tat: u128,
}

impl TokenBucket {
    /// A full bucket; fails on a rate outside `0.000001..=1e9` per second (kept to
    /// micro-token precision) or a zero burst.
    pub fn new(rate_per_sec: f64, burst: u32) -> Result<Self, BudgetError> {
        Self::from_limit(RateLimit {
            rate_per_sec,
            burst,
        })
    }

    /// A full bucket for a configured limit.
    pub fn from_limit(limit: RateLimit) -> Result<Self, BudgetError> {
        Ok(Self {
            gcra: Gcra::new(limit)?,
            tat: 0,
        })
    }

    /// The configured limit.
    #[must_use]
    pub fn limit(&self) -> RateLimit {
        self.gcra.limit
    }

    /// Take `n` tokens if they are all there at `now`; takes nothing otherwise.
    pub fn try_take(&mut self, now: u64, n: u32) -> bool {
        match self.gcra.take(self.tat, now, n) {
            Ok(tat) => {
                self.tat = tat;
                true
            }
            Err(_) => false,
        }
    }

    /// Nanoseconds from `now` until `n` tokens are there (0: now; `u64::MAX`: never,
    /// as `n` exceeds the burst).
    #[must_use]
    pub fn wait_time(&self, now: u64, n: u32) -> u64 {
        match self.gcra.take(self.tat, now, n) {
            Ok(_) => 0,
            Err(u64::MAX) => u64::MAX,
            Err(at) => at.saturating_sub(now),
        }
    }

    /// Whole tokens available at `now`.
    #[must_use]
    pub fn available(&self, now: u64) -> u32 {
        let debt = self.tat.saturating_sub(u128::from(now) * self.gcra.rate);
        u32::try_from(self.gcra.burst.saturating_sub(debt) / TOKEN).unwrap_or(u32::MAX)
    }
}

/// A probe must wait: retry at `until_ns` (on the caller's monotonic clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Delay {
    /// Earliest time the probe can be admitted.
    pub until_ns: u64,
}

/// Buckets of one kind of key (address, /24, /64), at most `max` of them. Memory
/// bound: a hash entry and an ordered-set entry of 48 bytes each per key (key plus
/// 16-byte state), with table slack about 100-200 bytes per key in all, so at most
/// roughly `max * 200` bytes.
#[derive(Debug)]
struct Table<K> {
    gcra: Gcra,
    tats: HashMap<K, u128>,
    /// The same entries ordered by state: the first is the one idle soonest.
    order: BTreeSet<(u128, K)>,
    max: usize,
}

impl<K: Copy + Ord + Hash> Table<K> {
    fn new(limit: RateLimit, max: usize) -> Result<Self, BudgetError> {
        Ok(Self {
            gcra: Gcra::new(limit)?,
            tats: HashMap::new(),
            order: BTreeSet::new(),
            max,
        })
    }

    /// The key's new state if a probe may go at `now`; else when it may.
    fn check(&self, key: K, now: u64) -> Result<u128, Delay> {
        let tat = match self.tats.get(&key) {
            Some(&tat) => tat,
            None if self.tats.len() < self.max => 0,
            None => {
                // Full: only an idle (refilled) bucket may make room, as dropping it
                // loses nothing. Otherwise the new key waits until one is.
                let oldest = self.order.first().map_or(0, |&(tat, _)| tat);
                let idle_at = self.gcra.ns_at(oldest);
                if idle_at > now {
                    return Err(Delay { until_ns: idle_at });
                }
                0
            }
        };
        self.gcra
            .take(tat, now, 1)
            .map_err(|until_ns| Delay { until_ns })
    }

    fn commit(&mut self, key: K, tat: u128, now: u64) {
        match self.tats.insert(key, tat) {
            Some(old) => {
                self.order.remove(&(old, key));
            }
            None => {
                if self.tats.len() > self.max {
                    self.evict_idle(now, 1);
                }
            }
        }
        self.order.insert((tat, key));
        // Amortised clean-up: shed a couple of idle buckets per probe.
        self.evict_idle(now, 2);
    }

    /// Drop up to `limit` buckets that are full at `now`; returns how many.
    fn evict_idle(&mut self, now: u64, limit: usize) -> usize {
        let now_u = u128::from(now) * self.gcra.rate;
        let mut n = 0;
        while n < limit {
            match self.order.first() {
                Some(&(tat, key)) if tat <= now_u => {
                    self.order.pop_first();
                    self.tats.remove(&key);
                    n += 1;
                }
                _ => break,
            }
        }
        n
    }
}

/// Per-target caps, as configured.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetLimits {
    /// Cap per target IP address.
    pub per_addr: RateLimit,
    /// Cap per IPv4 /24 (all targets in it together), if any.
    pub per_v4_24: Option<RateLimit>,
    /// Cap per IPv6 /64, if any.
    pub per_v6_64: Option<RateLimit>,
    /// Most buckets tracked in each table (addresses, /24s, /64s).
    pub max_targets: usize,
}

/// Probes-per-second caps per target address and optionally per IPv4 /24 and IPv6
/// /64, so many checks on one host (or one subnet) cannot hammer it. Exists apart
/// from the global cap because a fleet-wide budget says nothing about one victim.
///
/// Memory is bounded: each table holds at most `max_targets` buckets (at most
/// about 200 bytes each). Only idle buckets (fully refilled, so indistinguishable
/// from new ones) are evicted, a couple per probe and whenever room is needed; when a
/// table is full of busy buckets a new target is delayed until the first of them is
/// idle, so a full table never lets a target past its cap.
#[derive(Debug)]
pub struct PerTargetLimiter {
    addrs: Table<IpAddr>,
    v4_24: Option<Table<u32>>,
    v6_64: Option<Table<u64>>,
    table_full: u64,
}

impl PerTargetLimiter {
    /// Empty tables for these limits.
    pub fn new(limits: TargetLimits) -> Result<Self, BudgetError> {
        if limits.max_targets == 0 {
            return Err(BudgetError::MaxTargets);
        }
        let max = limits.max_targets;
        Ok(Self {
            addrs: Table::new(limits.per_addr, max)?,
            v4_24: limits.per_v4_24.map(|l| Table::new(l, max)).transpose()?,
            v6_64: limits.per_v6_64.map(|l| Table::new(l, max)).transpose()?,
            table_full: 0,
        })
    }

    /// Take one probe's worth from `addr`'s bucket (and its prefix's, if capped), or
    /// say when that will be possible; takes nothing when it delays.
    pub fn try_acquire(&mut self, addr: IpAddr, now: u64) -> Result<(), Delay> {
        let untracked =
            self.addrs.tats.len() >= self.addrs.max && !self.addrs.tats.contains_key(&addr);
        let a = self.addrs.check(addr, now);
        let p = match addr {
            IpAddr::V4(v4) => self.v4_24.as_ref().map(|t| {
                let key = u32::from(v4) >> 8;
                (PrefixKey::V4(key), t.check(key, now))
            }),
            // The top 64 bits of the address, i.e. its /64.
            IpAddr::V6(v6) => self.v6_64.as_ref().map(|t| {
                let key = (u128::from(v6) >> 64) as u64;
                (PrefixKey::V6(key), t.check(key, now))
            }),
        };
        let mut until = None;
        if let Err(d) = a {
            until = Some(d.until_ns);
            if untracked {
                self.table_full += 1;
            }
        }
        if let Some((_, Err(d))) = p {
            until = Some(until.map_or(d.until_ns, |u: u64| u.max(d.until_ns)));
        }
        if let Some(until_ns) = until {
            return Err(Delay { until_ns });
        }
        if let Ok(tat) = a {
            self.addrs.commit(addr, tat, now);
        }
        match p {
            Some((PrefixKey::V4(key), Ok(tat))) => {
                if let Some(t) = self.v4_24.as_mut() {
                    t.commit(key, tat, now);
                }
            }
            Some((PrefixKey::V6(key), Ok(tat))) => {
                if let Some(t) = self.v6_64.as_mut() {
                    t.commit(key, tat, now);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Drop every idle bucket now (they are also shed a few per probe).
    pub fn evict_idle(&mut self, now: u64) -> usize {
        self.addrs.evict_idle(now, usize::MAX)
            + self
                .v4_24
                .as_mut()
                .map_or(0, |t| t.evict_idle(now, usize::MAX))
            + self
                .v6_64
                .as_mut()
                .map_or(0, |t| t.evict_idle(now, usize::MAX))
    }

    /// Buckets tracked: (addresses, prefixes).
    #[must_use]
    pub fn tracked(&self) -> (usize, usize) {
        let prefixes = self.v4_24.as_ref().map_or(0, |t| t.tats.len())
            + self.v6_64.as_ref().map_or(0, |t| t.tats.len());
        (self.addrs.tats.len(), prefixes)
    }

    /// Delays of new addresses because the address table was full of busy buckets.
    #[must_use]
    pub fn table_full_delays(&self) -> u64 {
        self.table_full
    }
}

/// Which prefix table a key belongs to.
#[derive(Clone, Copy)]
enum PrefixKey {
    V4(u32),
    V6(u64),
}

/// A cap on probes in flight (sent, not yet answered or timed out). Exists because
/// each one holds engine state (a pending-answer slot, an io_uring entry, memory) that
/// the rate caps alone do not bound. Explicit counts, no RAII: the engine releases
/// when the probe's result is recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InFlight {
    max: u32,
    used: u32,
}

impl InFlight {
    /// At most `max` at once.
    #[must_use]
    pub fn new(max: u32) -> Self {
        Self { max, used: 0 }
    }

    /// Take `n` if they fit under the cap; takes nothing otherwise.
    pub fn try_acquire(&mut self, n: u32) -> bool {
        match self.used.checked_add(n) {
            Some(used) if used <= self.max => {
                self.used = used;
                true
            }
            _ => false,
        }
    }

    /// Give back `n` (saturating at zero, so a double release cannot wrap).
    pub fn release(&mut self, n: u32) {
        self.used = self.used.saturating_sub(n);
    }

    /// Whether `n` more would fit now.
    #[must_use]
    pub fn fits(&self, n: u32) -> bool {
        self.used.checked_add(n).is_some_and(|u| u <= self.max)
    }

    /// Taken now.
    #[must_use]
    pub fn in_use(&self) -> u32 {
        self.used
    }

    /// The cap.
    #[must_use]
    pub fn max(&self) -> u32 {
        self.max
    }

    /// Room left.
    #[must_use]
    pub fn available(&self) -> u32 {
        self.max.saturating_sub(self.used)
    }

    /// Change the cap; lowering it below what is in use only blocks new acquisitions.
    pub fn set_max(&mut self, max: u32) {
        self.max = max;
    }
}

/// A cap on sockets (file descriptors) held by probes, so connect-style probes fail
/// by waiting rather than by `EMFILE`. Same API as [`InFlight`] (through `Deref`),
/// kept a distinct type so the two caps cannot be mixed up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketBudget(InFlight);

impl SocketBudget {
    /// At most `max` sockets at once.
    #[must_use]
    pub fn new(max: u32) -> Self {
        Self(InFlight::new(max))
    }

    /// The `RLIMIT_NOFILE` soft limit minus `reserve` descriptors kept for the daemon
    /// itself (maps, rings, listeners, logs); an unlimited soft limit counts as
    /// `u32::MAX`. Call [`raise_nofile_soft_limit`] first to get the most.
    pub fn from_rlimit(reserve: u32) -> io::Result<Self> {
        let (soft, _) = nofile_limits()?;
        let soft = u32::try_from(soft).unwrap_or(u32::MAX);
        Ok(Self::new(soft.saturating_sub(reserve)))
    }
}

impl std::ops::Deref for SocketBudget {
    type Target = InFlight;
    fn deref(&self) -> &InFlight {
        &self.0
    }
}

impl std::ops::DerefMut for SocketBudget {
    fn deref_mut(&mut self) -> &mut InFlight {
        &mut self.0
    }
}

/// The `RLIMIT_NOFILE` (soft, hard) limits; `u64::MAX` means unlimited.
pub fn nofile_limits() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Raise the `RLIMIT_NOFILE` soft limit to the hard limit (no privilege needed) and
/// return the new soft limit; with an unlimited hard limit, to the kernel's
/// `fs.nr_open`. Exists because the default soft limit (often 1024) is far below
/// what a checker with thousands of connect probes needs.
pub fn raise_nofile_soft_limit() -> io::Result<u64> {
    let (soft, hard) = nofile_limits()?;
    let mut target = hard;
    if hard == libc::RLIM_INFINITY {
        if let Some(nr_open) = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
        {
            target = nr_open;
        }
    }
    if soft >= target {
        return Ok(soft);
    }
    let lim = libc::rlimit {
        rlim_cur: target,
        rlim_max: hard,
    };
    // SAFETY: `lim` is a valid rlimit read by the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(target)
}

/// Counters of probes held back, by reason. Exists so operators can tell which
/// budget is the bottleneck; plain fields the engine increments (and [`Budgets`]
/// increments on each decision).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BudgetStats {
    /// Probes admitted.
    pub admitted: u64,
    /// Delayed by the global probes-per-second cap.
    pub delayed_by_global: u64,
    /// Delayed by a per-target or per-prefix cap.
    pub delayed_by_target: u64,
    /// Delayed by the in-flight cap.
    pub delayed_by_inflight: u64,
    /// Delayed by the socket budget.
    pub delayed_by_sockets: u64,
    /// Probe slots skipped because the engine ran late (from the scheduler).
    pub skipped: u64,
}

/// Which budget delayed a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DelayReason {
    /// The global probes-per-second cap.
    Global,
    /// The target's (or its prefix's) cap.
    Target,
    /// Too many probes in flight.
    InFlight,
    /// No socket to spare.
    Sockets,
}

/// What an admitted probe holds, to hand back with [`Budgets::release`] when it ends.
/// Not `Clone`, so it is released once.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "permits must be released with Budgets::release"]
pub struct Permits {
    socket: bool,
}

impl Permits {
    /// Whether a socket is held.
    #[must_use]
    pub fn holds_socket(&self) -> bool {
        self.socket
    }
}

/// The answer of [`Budgets::admit`].
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub enum Admission {
    /// Go: send the probe, release the permits when it ends.
    Admit(Permits),
    /// Not yet: retry at `until_ns` (for the in-flight and socket caps, a hint: a
    /// release may make room sooner).
    Delay {
        /// Earliest sensible retry time.
        until_ns: u64,
        /// Which budget said no.
        reason: DelayReason,
    },
}

/// All of the engine's budgets behind one admission decision. Exists so the engine
/// asks once per probe, gets all-or-nothing (no token spent on a probe that then
/// waits for a socket) and has the delays counted by reason.
#[derive(Debug)]
pub struct Budgets {
    global: TokenBucket,
    targets: PerTargetLimiter,
    inflight: InFlight,
    sockets: SocketBudget,
    stats: BudgetStats,
    retry_ns: u64,
}

impl Budgets {
    /// Default retry hint for capacity delays (in flight, sockets): 1 ms.
    pub const DEFAULT_RETRY_NS: u64 = 1_000_000;

    /// Combine the budgets.
    #[must_use]
    pub fn new(
        global: TokenBucket,
        targets: PerTargetLimiter,
        inflight: InFlight,
        sockets: SocketBudget,
    ) -> Self {
        Self {
            global,
            targets,
            inflight,
            sockets,
            stats: BudgetStats::default(),
            retry_ns: Self::DEFAULT_RETRY_NS,
        }
    }

    /// Set how far ahead a probe delayed by a capacity cap is told to retry.
    #[must_use]
    pub fn with_capacity_retry_ns(mut self, retry_ns: u64) -> Self {
        self.retry_ns = retry_ns.max(1);
        self
    }

    /// Admit a probe to `addr` at `now` (holding a socket if `needs_socket`), taking
    /// from every budget, or take nothing and say until when and why to delay it.
    /// Capacity caps are checked first, then the global rate, then the target's.
    pub fn admit(&mut self, addr: IpAddr, needs_socket: bool, now: u64) -> Admission {
        let retry = now.saturating_add(self.retry_ns);
        let (until_ns, reason) = if !self.inflight.fits(1) {
            (retry, DelayReason::InFlight)
        } else if needs_socket && !self.sockets.fits(1) {
            (retry, DelayReason::Sockets)
        } else {
            match self.global.wait_time(now, 1) {
                0 => match self.targets.try_acquire(addr, now) {
                    Ok(()) => {
                        // Checked above: none of these can fail now.
                        let took = self.global.try_take(now, 1)
                            && self.inflight.try_acquire(1)
                            && (!needs_socket || self.sockets.try_acquire(1));
                        debug_assert!(took);
                        self.stats.admitted += 1;
                        return Admission::Admit(Permits {
                            socket: needs_socket,
                        });
                    }
                    Err(d) => (d.until_ns, DelayReason::Target),
                },
                wait => (now.saturating_add(wait), DelayReason::Global),
            }
        };
        self.record_delayed(reason);
        Admission::Delay { until_ns, reason }
    }

    /// Count a probe delayed for `reason` without asking the budgets: the caller knows
    /// the answer already (the global or in-flight budget refused the probe before it
    /// in the same round, and refuses everyone until `until`).
    pub fn record_delayed(&mut self, reason: DelayReason) {
        let counter = match reason {
            DelayReason::Global => &mut self.stats.delayed_by_global,
            DelayReason::Target => &mut self.stats.delayed_by_target,
            DelayReason::InFlight => &mut self.stats.delayed_by_inflight,
            DelayReason::Sockets => &mut self.stats.delayed_by_sockets,
        };
        *counter += 1;
    }

    /// Hand back an admitted probe's permits when it ends (answer or timeout).
    pub fn release(&mut self, permits: Permits) {
        self.inflight.release(1);
        if permits.socket {
            self.sockets.release(1);
        }
    }

    /// Add probe slots the scheduler skipped (see `Scheduler::take_missed`).
    pub fn record_skipped(&mut self, n: u64) {
        self.stats.skipped = self.stats.skipped.saturating_add(n);
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> &BudgetStats {
        &self.stats
    }

    /// The counters, for the engine's own increments.
    pub fn stats_mut(&mut self) -> &mut BudgetStats {
        &mut self.stats
    }

    /// The global bucket.
    #[must_use]
    pub fn global(&self) -> &TokenBucket {
        &self.global
    }

    /// The per-target limiter.
    #[must_use]
    pub fn targets(&self) -> &PerTargetLimiter {
        &self.targets
    }

    /// The per-target limiter, e.g. to evict idle buckets.
    pub fn targets_mut(&mut self) -> &mut PerTargetLimiter {
        &mut self.targets
    }

    /// The in-flight cap.
    #[must_use]
    pub fn inflight(&self) -> &InFlight {
        &self.inflight
    }

    /// The in-flight cap, e.g. to resize it.
    pub fn inflight_mut(&mut self) -> &mut InFlight {
        &mut self.inflight
    }

    /// The socket budget.
    #[must_use]
    pub fn sockets(&self) -> &SocketBudget {
        &self.sockets
    }

    /// The socket budget, e.g. to resize it after raising the rlimit.
    pub fn sockets_mut(&mut self) -> &mut SocketBudget {
        &mut self.sockets
    }
}

#[cfg(test)]
mod tests {
    use std::{cmp::Reverse, collections::BinaryHeap, net::Ipv4Addr};

    use super::*;

    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    fn limits(rate: f64, burst: u32, max_targets: usize) -> TargetLimits {
        TargetLimits {
            per_addr: RateLimit {
                rate_per_sec: rate,
                burst,
            },
            per_v4_24: None,
            per_v6_64: None,
            max_targets,
        }
    }

    #[test]
    fn token_bucket_has_no_drift() {
        // 3/s: a token every 333_333_333.3 ns, which no integer ns period matches.
        // (Burst 2, so the bucket is never full and no credit overflows.)
        let mut b = TokenBucket::new(3.0, 2).expect("valid");
        assert!(b.try_take(0, 2));
        let mut t = 0;
        for k in 1..=300_000u64 {
            t += b.wait_time(t, 1);
            assert_eq!(t, (k * SEC).div_ceil(3), "token {k}");
            assert!(b.try_take(t, 1));
            assert!(!b.try_take(t, 1));
        }
        assert_eq!(t, 100_000 * SEC);
    }

    #[test]
    fn token_bucket_boundaries() {
        let mut b = TokenBucket::new(100.0, 10).expect("valid");
        assert_eq!(b.available(0), 10);
        assert!((0..10).all(|_| b.try_take(0, 1)));
        assert!(!b.try_take(0, 1));
        assert_eq!(b.wait_time(0, 1), 10 * MS);
        assert!(!b.try_take(10 * MS - 1, 1));
        assert!(b.try_take(10 * MS, 1));
        assert_eq!(b.wait_time(10 * MS, 11), u64::MAX, "more than the burst");
        assert_eq!(b.wait_time(SEC, 10), 0);
        assert_eq!(b.available(u64::MAX), 10, "refill caps at the burst");
        assert!(!b.try_take(5 * MS, 1), "time going back gives nothing");
        for bad in [f64::NAN, f64::INFINITY, -1.0, 0.0, 1e-9, 2e9] {
            assert!(matches!(
                TokenBucket::new(bad, 1),
                Err(BudgetError::Rate(_))
            ));
        }
        assert_eq!(TokenBucket::new(1.0, 0).err(), Some(BudgetError::Burst));
    }

    /// 1,000 checks on one address, each due every 10 ms, 100 pps cap: over 10 s at
    /// most 100 * 10 + burst probes go, every other attempt is a counted delay with a
    /// retry time, none is lost.
    #[test]
    fn per_target_cap_holds_under_a_herd() {
        const BURST: u32 = 20;
        let global = TokenBucket::new(1e6, 1_000_000).expect("valid");
        let targets = PerTargetLimiter::new(limits(100.0, BURST, 1024)).expect("valid");
        let mut budgets = Budgets::new(
            global,
            targets,
            InFlight::new(u32::MAX),
            SocketBudget::new(0),
        );
        let addr = ip("192.0.2.7");
        let mut queue: BinaryHeap<Reverse<(u64, u32)>> = (0..1000u32)
            .map(|i| Reverse((u64::from(i) * 10_000, i)))
            .collect();
        let (mut admitted, mut delayed, mut attempts) = (0u64, 0u64, 0u64);
        while let Some(Reverse((now, i))) = queue.pop() {
            if now > 10 * SEC {
                break;
            }
            attempts += 1;
            match budgets.admit(addr, false, now) {
                Admission::Admit(p) => {
                    admitted += 1;
                    budgets.release(p);
                    queue.push(Reverse((now + 10 * MS, i)));
                }
                Admission::Delay { until_ns, reason } => {
                    assert_eq!(reason, DelayReason::Target);
                    assert!(until_ns > now && until_ns <= now + 10 * MS);
                    delayed += 1;
                    queue.push(Reverse((until_ns, i)));
                }
            }
        }
        assert!(
            admitted <= 100 * 10 + u64::from(BURST),
            "{admitted} admitted"
        );
        assert!(admitted >= 100 * 10, "the cap is used: {admitted}");
        assert_eq!(admitted + delayed, attempts);
        let stats = budgets.stats();
        assert_eq!(
            (stats.admitted, stats.delayed_by_target),
            (admitted, delayed)
        );
        assert_eq!(stats.delayed_by_global + stats.delayed_by_inflight, 0);
    }

    #[test]
    fn prefix_caps_are_shared_and_atomic() {
        let mut l = PerTargetLimiter::new(TargetLimits {
            per_v4_24: Some(RateLimit {
                rate_per_sec: 1.0,
                burst: 2,
            }),
            per_v6_64: Some(RateLimit {
                rate_per_sec: 1.0,
                burst: 1,
            }),
            ..limits(1.0, 1, 100)
        })
        .expect("valid");
        assert_eq!(l.try_acquire(ip("10.0.0.1"), 0), Ok(()));
        assert_eq!(l.try_acquire(ip("10.0.0.2"), 0), Ok(()));
        assert_eq!(
            l.try_acquire(ip("10.0.0.3"), 0),
            Err(Delay { until_ns: SEC })
        );
        assert_eq!(l.try_acquire(ip("10.0.1.3"), 0), Ok(()), "another /24");
        assert_eq!(l.try_acquire(ip("2001:db8::1"), 0), Ok(()));
        assert_eq!(
            l.try_acquire(ip("2001:db8::2"), 0),
            Err(Delay { until_ns: SEC })
        );
        assert_eq!(
            l.try_acquire(ip("2001:db8:0:1::2"), 0),
            Ok(()),
            "another /64"
        );
        assert_eq!(l.tracked(), (5, 4), "delayed targets are not tracked");
        // The /24 delay took nothing from 10.0.0.3's own bucket.
        assert_eq!(l.try_acquire(ip("10.0.0.3"), SEC), Ok(()));
        assert!(l.evict_idle(10 * SEC) > 0);
        assert_eq!(l.tracked(), (0, 0));
    }

    #[test]
    fn eviction_is_bounded_and_never_bypasses_the_cap() {
        let mut l = PerTargetLimiter::new(limits(10.0, 1, 4)).expect("valid");
        for i in 1..=4 {
            assert_eq!(l.try_acquire(ip(&format!("10.0.0.{i}")), 0), Ok(()));
        }
        // Full of busy buckets: a new target waits for the first to be idle (100 ms).
        let new = ip("10.0.0.5");
        assert_eq!(l.try_acquire(new, 0), Err(Delay { until_ns: 100 * MS }));
        assert_eq!(l.table_full_delays(), 1);
        assert_eq!(l.try_acquire(new, 100 * MS), Ok(()));
        assert!(l.tracked().0 <= 4);
        // A busy target is never evicted, hence never refilled early.
        assert_eq!(
            l.try_acquire(new, 100 * MS + 1),
            Err(Delay { until_ns: 200 * MS })
        );
        let mut now = 200 * MS;
        for i in 0..10_000u32 {
            let a = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            assert_eq!(l.try_acquire(a, now), Ok(()));
            assert!(l.tracked().0 <= 4);
            now += 25 * MS;
        }
    }

    #[test]
    fn inflight_and_sockets() {
        let mut f = InFlight::new(2);
        assert!(f.try_acquire(2));
        assert!(!f.try_acquire(1) && !f.fits(1));
        f.release(1);
        assert_eq!((f.in_use(), f.available()), (1, 1));
        f.release(5);
        assert_eq!(f.in_use(), 0);
        assert!(!f.try_acquire(u32::MAX));
        let (soft, _) = nofile_limits().expect("getrlimit");
        let s = SocketBudget::from_rlimit(16).expect("getrlimit");
        let soft32 = u32::try_from(soft).unwrap_or(u32::MAX);
        assert_eq!(s.max(), soft32.saturating_sub(16));
        let raised = raise_nofile_soft_limit().expect("soft limit up to hard");
        assert!(raised >= soft);
        assert_eq!(nofile_limits().expect("getrlimit").0, raised);
    }

    #[test]
    fn budgets_admit_all_or_nothing() {
        let global = TokenBucket::new(1.0, 5).expect("valid");
        let targets = PerTargetLimiter::new(limits(1.0, 1, 16)).expect("valid");
        let mut b = Budgets::new(global, targets, InFlight::new(1), SocketBudget::new(1))
            .with_capacity_retry_ns(2 * MS);
        let (x, y) = (ip("192.0.2.1"), ip("192.0.2.2"));
        let Admission::Admit(p) = b.admit(x, true, 0) else {
            panic!("first probe must be admitted");
        };
        assert!(p.holds_socket());
        let busy = b.admit(y, false, 0);
        assert_eq!(
            busy,
            Admission::Delay {
                until_ns: 2 * MS,
                reason: DelayReason::InFlight
            }
        );
        b.release(p);
        assert_eq!((b.inflight().in_use(), b.sockets().in_use()), (0, 0));
        b.sockets_mut().set_max(0);
        let no_fd = b.admit(y, true, 0);
        assert_eq!(
            no_fd,
            Admission::Delay {
                until_ns: 2 * MS,
                reason: DelayReason::Sockets
            }
        );
        let again = b.admit(x, false, 0);
        assert_eq!(
            again,
            Admission::Delay {
                until_ns: SEC,
                reason: DelayReason::Target
            }
        );
        assert_eq!(b.global().available(0), 4, "delays take no global token");
        for (i, want) in [(3, true), (4, true), (5, true), (6, true), (7, false)] {
            let a = b.admit(ip(&format!("192.0.2.{i}")), false, 0);
            assert_eq!(matches!(a, Admission::Admit(_)), want);
            if let Admission::Admit(p) = a {
                b.release(p);
            } else {
                assert_eq!(
                    a,
                    Admission::Delay {
                        until_ns: SEC,
                        reason: DelayReason::Global
                    }
                );
            }
        }
        b.record_skipped(3);
        let s = *b.stats();
        let want = BudgetStats {
            admitted: 5,
            delayed_by_global: 1,
            delayed_by_target: 1,
            delayed_by_inflight: 1,
            delayed_by_sockets: 1,
            skipped: 3,
        };
        assert_eq!(s, want);
        let json = serde_json::to_string(&s).unwrap_or_default();
        assert!(json.contains("\"delayed_by_sockets\":1"), "{json}");
    }
}
