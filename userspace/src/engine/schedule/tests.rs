use std::{collections::BTreeMap, time::Duration};

use rand::{rngs::StdRng, Rng, SeedableRng};

use super::{Scheduler, TimingWheel};
use crate::engine::spec::CheckId;

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;

fn fire(w: &mut TimingWheel<u64>, now: u64) -> Vec<u64> {
    let mut out = Vec::new();
    w.advance(now, &mut out);
    out.sort_unstable();
    out
}

#[test]
fn deadline_exactly_now_fires_and_never_early() {
    let mut w = TimingWheel::new();
    w.insert(5 * MS, 5 * MS);
    w.insert(5 * MS + 123, 5 * MS + 123);
    w.insert(5 * MS + 900_000, 5 * MS + 900_000);
    assert!(fire(&mut w, 5 * MS - 1).is_empty());
    assert_eq!(fire(&mut w, 5 * MS), vec![5 * MS]);
    assert!(fire(&mut w, 5 * MS + 122).is_empty());
    assert_eq!(fire(&mut w, 5 * MS + 123), vec![5 * MS + 123]);
    // The rest of the tick: the bound is exact, not the tick start.
    assert_eq!(w.next_deadline(), Some(5 * MS + 900_000));
    assert_eq!(fire(&mut w, 6 * MS), vec![5 * MS + 900_000]);
    assert!(w.is_empty());
    assert_eq!(w.next_deadline(), None);
    // A deadline in the past fires on the next advance.
    w.insert(MS, MS);
    assert_eq!(w.next_deadline(), Some(MS));
    assert_eq!(fire(&mut w, 6 * MS), vec![MS]);
}

#[test]
fn deadlines_far_beyond_the_span() {
    let mut w = TimingWheel::new();
    let year = 365 * 24 * 3600 * SEC;
    for d in [10 * year, u64::MAX / 2, u64::MAX - 1, u64::MAX] {
        w.insert(d, d);
    }
    assert!(w.next_deadline().is_some_and(|b| b <= 10 * year));
    assert!(fire(&mut w, 10 * year - 1).is_empty());
    assert_eq!(fire(&mut w, 10 * year), vec![10 * year]);
    assert!(fire(&mut w, u64::MAX / 2 - 1).is_empty());
    assert_eq!(fire(&mut w, u64::MAX / 2), vec![u64::MAX / 2]);
    assert_eq!(fire(&mut w, u64::MAX - 2), Vec::<u64>::new());
    assert_eq!(fire(&mut w, u64::MAX), vec![u64::MAX - 1, u64::MAX]);
    assert!(w.is_empty());
}

#[test]
fn cancel_after_fire_and_reinsert() {
    let mut w = TimingWheel::new();
    let a = w.insert(10 * MS, 1);
    let b = w.insert(20 * MS, 2);
    assert_eq!(w.len(), 2);
    assert_eq!(w.deadline(b), Some(20 * MS));
    assert_eq!(fire(&mut w, 10 * MS), vec![1]);
    assert_eq!(w.cancel(a), None, "fired timer cannot be cancelled");
    // The freed slab entry is reused; the old key must not reach the new timer.
    let c = w.insert(30 * MS, 3);
    assert_ne!(a, c);
    assert_eq!(w.cancel(a), None);
    assert_eq!(w.get(c), Some(&3));
    assert_eq!(w.cancel(b), Some(2));
    assert_eq!(w.cancel(b), None, "double cancel");
    assert_eq!(w.len(), 1);
    assert!(fire(&mut w, 29 * MS).is_empty());
    let d = w.insert(25 * MS, 4);
    assert_eq!(fire(&mut w, 30 * MS), vec![3, 4]);
    assert_eq!(w.cancel(d), None);
    assert!(w.is_empty());
}

#[test]
fn matches_a_sorted_model_under_random_operations() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut w = TimingWheel::with_tick(1000);
    let mut model: BTreeMap<(u64, u64), super::TimerKey> = BTreeMap::new();
    let mut now = 0u64;
    let mut serial = 0u64;
    for round in 0..20_000 {
        match rng.random_range(0..10) {
            0..=4 => {
                let scale = [10, 1_000, 100_000, 10_000_000, 1 << 40][rng.random_range(0..5)];
                let d = now.saturating_sub(500) + rng.random_range(0..scale);
                serial += 1;
                let key = w.insert(d, serial);
                model.insert((d, serial), key);
            }
            5 => {
                if let Some((&k, &key)) = model.iter().nth(rng.random_range(0..model.len().max(1)))
                {
                    assert_eq!(w.cancel(key), Some(k.1));
                    model.remove(&k);
                }
            }
            _ => {
                let step = [0, 1, 999, 1000, 65_536, 5_000_000][rng.random_range(0..6)];
                now += rng.random_range(0..=step);
                if round % 5000 == 4999 {
                    now += 1 << 39;
                }
                if let Some(bound) = w.next_deadline() {
                    assert!(model.keys().next().is_some_and(|&(d, _)| bound <= d));
                }
                let mut got: Vec<u64> = Vec::new();
                w.advance(now, &mut got);
                got.sort_unstable();
                let due: Vec<(u64, u64)> = model.range(..(now + 1, 0)).map(|(&k, _)| k).collect();
                let mut want: Vec<u64> = due.iter().map(|&(_, s)| s).collect();
                want.sort_unstable();
                assert_eq!(got, want, "at now={now}");
                for k in due {
                    model.remove(&k);
                }
                assert_eq!(w.len(), model.len());
            }
        }
    }
}

/// Periodic timers re-armed in place (`advance_rearm`) and moved (`reschedule`) fire
/// as a sorted model says, never early, and keep their keys throughout.
#[test]
fn rearmed_timers_keep_their_keys_and_match_a_model() {
    let mut rng = StdRng::seed_from_u64(11);
    let mut w: TimingWheel<(u64, u64)> = TimingWheel::with_tick(1000);
    // serial -> (key, period, next deadline)
    let mut model: BTreeMap<u64, (super::TimerKey, u64, u64)> = BTreeMap::new();
    for serial in 0..500u64 {
        let period = rng.random_range(1..5_000_000);
        let first = rng.random_range(0..period);
        let key = w.insert(first, (serial, period));
        model.insert(serial, (key, period, first));
    }
    let mut now = 0u64;
    for _ in 0..5_000 {
        if rng.random_range(0..10) == 0 {
            let serial = rng.random_range(0..500);
            let (key, _, deadline) = model.get_mut(&serial).expect("model");
            *deadline = now + rng.random_range(1..10_000_000);
            assert!(w.reschedule(*key, *deadline));
            assert_eq!(w.deadline(*key), Some(*deadline));
        }
        now += rng.random_range(0..2_000_000);
        let mut want: Vec<u64> = model
            .iter()
            .filter(|(_, &(_, _, d))| d <= now)
            .map(|(&s, _)| s)
            .collect();
        let mut got = Vec::new();
        w.advance_rearm(now, |&mut (serial, period)| {
            got.push(serial);
            let next = now + period;
            model.get_mut(&serial).expect("model").2 = next;
            next
        });
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want, "at now={now}");
        assert_eq!(w.len(), 500);
        for (&serial, &(key, period, deadline)) in &model {
            assert_eq!(w.get(key), Some(&(serial, period)), "key kept");
            assert_eq!(w.deadline(key), Some(deadline));
        }
    }
    let (key, _, _) = model[&0];
    assert_eq!(w.cancel(key), Some((0, model[&0].1)));
    assert!(!w.reschedule(key, now + 1), "stale key");
}

/// 24 bytes per timer beyond the item (the brief's ceiling is 48), checked at
/// compile time.
#[test]
fn entry_overhead_is_bounded() {
    const {
        assert!(TimingWheel::<CheckId>::ENTRY_BYTES - std::mem::size_of::<CheckId>() <= 24);
        assert!(TimingWheel::<u32>::ENTRY_BYTES <= 32);
    };
}

/// Not a timed benchmark: a million timers go in and all come out, once each.
#[test]
fn one_million_timers() {
    const N: u64 = 1_000_000;
    let mut rng = StdRng::seed_from_u64(1);
    let mut w: TimingWheel<u64> = TimingWheel::new();
    w.reserve(N as usize);
    let mut keys = Vec::with_capacity(N as usize);
    for _ in 0..N {
        let d = rng.random_range(0..60 * SEC);
        keys.push(w.insert(d, d));
    }
    assert_eq!(w.len(), N as usize);
    let cancelled = keys
        .iter()
        .step_by(10)
        .filter(|&&k| w.cancel(k).is_some())
        .count();
    assert_eq!(cancelled as u64, N / 10);
    let mut fired = 0u64;
    let mut out = Vec::new();
    let mut now = 0;
    while now < 60 * SEC + 7 * MS {
        out.clear();
        w.advance(now, &mut out);
        assert!(out.iter().all(|&d| d <= now));
        fired += out.len() as u64;
        now += 7 * MS;
    }
    assert_eq!(fired, N - N / 10);
    assert!(w.is_empty());
}

fn id(i: usize) -> CheckId {
    CheckId::new(&format!("check-{i}"))
}

#[test]
fn first_probes_are_spread_over_one_interval() {
    let mut s = Scheduler::with_seed(42);
    let t0 = 1_000 * SEC;
    for i in 0..10_000 {
        s.add(id(i), Duration::from_secs(1), 0.1, t0);
    }
    let mut buckets = [0u32; 100];
    for i in 0..10_000 {
        let first = s.deadline(&id(i)).unwrap_or(u64::MAX);
        assert!((t0..t0 + SEC).contains(&first));
        buckets[((first - t0) / (10 * MS)) as usize] += 1;
    }
    let max = buckets.iter().copied().max().unwrap_or(0);
    assert!(max <= 300, "busiest 10 ms bucket holds {max} (mean 100)");
    let mut out = Vec::new();
    s.due(t0 + SEC - 1, &mut out);
    assert_eq!(out.len(), 10_000, "each fires once in the first second");
    assert_eq!(s.missed(), 0);
}

/// Runs one check on time (the caller wakes exactly at each deadline) for `probes`
/// probes and returns the probe times.
fn run_on_time(s: &mut Scheduler, probes: usize) -> Vec<u64> {
    let mut times = Vec::with_capacity(probes);
    let mut out = Vec::new();
    while times.len() < probes {
        let Some(now) = s.next_deadline() else {
            break;
        };
        out.clear();
        s.due(now, &mut out);
        times.extend(out.iter().map(|_| now));
    }
    times
}

#[test]
fn no_drift_over_100_000_intervals() {
    let iv = 333_333_333; // not a whole number of ticks
    for jitter in [0.0, 0.2] {
        let mut s = Scheduler::with_seed(3);
        let a = id(0);
        s.add(a.clone(), Duration::from_nanos(iv), jitter, 0);
        let first = s.deadline(&a).unwrap_or(u64::MAX);
        let times = run_on_time(&mut s, 100_001);
        assert_eq!(times.len(), 100_001);
        let span = (iv as f64 * jitter) as u64;
        for (k, &t) in times.iter().enumerate() {
            let nominal = first + k as u64 * iv;
            assert!(
                t + span >= nominal && t <= nominal + span,
                "probe {k} at {t}"
            );
        }
        assert!(times.windows(2).all(|p| p[0] < p[1]));
        assert_eq!(s.missed(), 0);
    }
}

#[test]
fn late_caller_skips_missed_slots() {
    let mut s = Scheduler::with_seed(5);
    let a = id(1);
    s.add(a.clone(), Duration::from_secs(1), 0.0, 0);
    let first = s.deadline(&a).unwrap_or(u64::MAX);
    let mut out = Vec::new();
    // Less than one interval late: nothing skipped, the schedule is kept.
    s.due(first + SEC / 2, &mut out);
    assert_eq!(out, vec![a.clone()]);
    assert_eq!(s.missed(), 0);
    assert_eq!(s.deadline(&a), Some(first + SEC));
    // 3.5 intervals late: one probe, three slots skipped, back on the grid.
    out.clear();
    s.due(first + SEC + 3 * SEC + SEC / 2, &mut out);
    assert_eq!(out, vec![a.clone()]);
    assert_eq!(s.missed(), 3);
    assert_eq!(s.deadline(&a), Some(first + 5 * SEC));
    out.clear();
    s.due(first + 5 * SEC - 1, &mut out);
    assert!(out.is_empty());
    s.due(first + 5 * SEC, &mut out);
    assert_eq!(out, vec![a]);
    assert_eq!(s.take_missed(), 3);
    assert_eq!(s.missed(), 0);
}

#[test]
fn set_interval_shorter_moves_the_pending_probe() {
    let mut s = Scheduler::with_seed(9);
    let a = id(2);
    s.add(a.clone(), Duration::from_secs(10), 0.0, 0);
    let first = s.deadline(&a).unwrap_or(u64::MAX);
    let mut out = Vec::new();
    s.due(first, &mut out);
    assert_eq!(s.deadline(&a), Some(first + 10 * SEC));
    // Failing: fast interval of 1 s, 5 ms after the probe fired.
    assert!(s.set_interval(&a, Duration::from_secs(1), first + 5 * MS));
    assert_eq!(s.deadline(&a), Some(first + 5 * MS + SEC));
    // Longer again: the pending probe stays, the one after uses 10 s.
    assert!(s.set_interval(&a, Duration::from_secs(10), first + 10 * MS));
    let pending = first + 5 * MS + SEC;
    assert_eq!(s.deadline(&a), Some(pending));
    out.clear();
    s.due(pending, &mut out);
    assert_eq!(out, vec![a.clone()]);
    assert_eq!(s.deadline(&a), Some(pending + 10 * SEC));
    assert!(!s.set_interval(&id(99), Duration::from_secs(1), 0));
}

#[test]
fn remove_and_readd() {
    let mut s = Scheduler::with_seed(11);
    let (a, b) = (id(3), id(4));
    assert!(!s.add(a.clone(), Duration::from_millis(100), 0.1, 0));
    assert!(!s.add(b.clone(), Duration::from_millis(100), 0.1, 0));
    assert!(
        s.add(a.clone(), Duration::from_millis(100), 0.1, 0),
        "replaces"
    );
    assert_eq!(s.len(), 2);
    assert!(s.remove(&b));
    assert!(!s.remove(&b));
    assert!(!s.contains(&b));
    let mut out = Vec::new();
    let mut now = 0;
    while now < SEC {
        s.due(now, &mut out);
        now += MS;
    }
    assert!(out.iter().all(|x| *x == a));
    assert!((9..=11).contains(&out.len()), "{} probes in 1 s", out.len());
    assert!(!s.add(b.clone(), Duration::from_millis(100), 0.0, now));
    assert!(s
        .deadline(&b)
        .is_some_and(|d| d >= now && d < now + 100 * MS));
    assert_eq!(s.interval(&b), Some(Duration::from_millis(100)));
    assert!(s.remove(&a) && s.remove(&b) && s.is_empty());
    assert_eq!(s.next_deadline(), None);
}
