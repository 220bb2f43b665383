//! The daemon's two loops around the engine.
//!
//! - The dispatcher takes due checks from the scheduler, admits each through the budgets
//!   (in-flight, sockets, global and per-target rates) and submits a job; a probe that
//!   must wait is kept and retried (oldest first; while the in-flight budget is full,
//!   only when a probe ends), counted as delayed, never dropped. A check is never
//!   probed twice at once: if it comes due while its last probe is still out or
//!   waiting, the slot is skipped and counted, as are slots missed by a late loop.
//! - The result loop releases the probe's permits, counts its outcome, feeds the health
//!   table, adapts the check's interval (fast while failing), and journals and
//!   broadcasts every transition. (Outcome counts are kept by the health table.)

use std::{
    collections::VecDeque,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use crossbeam_channel::RecvTimeoutError;
use tracing::{debug, warn};

use super::{persist::Record, Shared};
use crate::{
    api::Event,
    engine::{
        budget::{Admission, DelayReason, Permits},
        spec::{CheckId, ProbeSpec},
        uring::{sys::monotonic_now, Job},
    },
};

fn now_ns() -> u64 {
    u64::try_from(monotonic_now().as_nanos()).unwrap_or(u64::MAX)
}

/// A probe that is out (submitted) or waiting for its budget.
pub(super) enum Outstanding {
    /// Submitted with this sequence number; holding these permits.
    Running(u64, Permits),
    /// Waiting until this time (ns, monotonic) for its budget.
    Waiting(u64),
}

/// What became of one attempt to start a check's probe.
enum Tried {
    /// Admitted and submitted.
    Admitted,
    /// Kept waiting for its budget (counted as delayed) until this time (ns).
    Delayed(DelayReason, u64),
    /// Its slot was skipped (counted): a probe of the check is out or waiting.
    Skipped,
    /// The check is gone, or no longer waiting: nothing to do.
    Gone,
}

/// Try to start a probe of `id`: `retrying` a check that waits for its budget, or for
/// a slot that just came due.
fn try_admit(shared: &Shared, id: &CheckId, retrying: bool, now: u64) -> Tried {
    let checks = shared.checks.read();
    let entry = checks.get(id);
    let mut out = shared.outstanding.lock();
    let Some(entry) = entry else {
        if retrying && matches!(out.get(id), Some(Outstanding::Waiting(_))) {
            out.remove(id);
        }
        return Tried::Gone;
    };
    match out.get(id) {
        Some(Outstanding::Waiting(_)) if retrying => {}
        _ if retrying => return Tried::Gone,
        Some(Outstanding::Running(..) | Outstanding::Waiting(_)) => {
            shared.budgets.lock().record_skipped(1);
            return Tried::Skipped;
        }
        None => {}
    }
    let needs_socket = !matches!(entry.spec.probe, ProbeSpec::TcpSyn | ProbeSpec::Icmp);
    let admission = shared
        .budgets
        .lock()
        .admit(entry.spec.target.addr, needs_socket, now);
    match admission {
        Admission::Admit(permits) => {
            let seq = entry.next_seq();
            out.insert(id.clone(), Outstanding::Running(seq, permits));
            drop(out);
            let job = Job {
                spec: Arc::clone(&entry.spec),
                seq,
                prepared: Arc::clone(&entry.prepared),
            };
            drop(checks);
            if shared.engine.submit(job).is_err() {
                warn!(check = %id, "engine stopped; probe not sent");
            }
            Tried::Admitted
        }
        Admission::Delay { until_ns, reason } => {
            debug!(check = %id, ?reason, "probe delayed by budget");
            out.insert(id.clone(), Outstanding::Waiting(until_ns));
            Tried::Delayed(reason, until_ns)
        }
    }
}

/// Run the dispatcher until shutdown.
pub(super) fn dispatch(shared: &Arc<Shared>) {
    let mut due: Vec<CheckId> = Vec::new();
    // Checks waiting for their budget, oldest first. Retrying them in this order gives
    // every check its turn under overload; retrying in a hash map's order admitted the
    // same few checks again and again while most were never probed.
    let mut waiting: VecDeque<CheckId> = VecDeque::new();
    while !shared.stopping.load(Ordering::Acquire) {
        let now = now_ns();
        due.clear();
        let missed = {
            let mut sched = shared.sched.lock();
            sched.due(now, &mut due);
            sched.take_missed()
        };
        if missed > 0 {
            // Slots the scheduler passed over because this loop ran an interval or more
            // late: skipped, like a slot that comes due while its probe is still out.
            shared.budgets.lock().record_skipped(missed);
        }
        // Retries first. Once the in-flight budget refuses one, it refuses all until a
        // probe ends (the result loop wakes us then): stop instead of spinning through
        // every waiting check each millisecond.
        // The earliest time a waiting check may be retried, found while walking them
        // (not by scanning every outstanding probe: that is every probe in flight, each
        // round, which with a million checks kept this loop at 100 % of a core).
        let mut next_retry = u64::MAX;
        let mut i = 0;
        let stopping = || shared.stopping.load(Ordering::Acquire);
        while i < waiting.len() {
            // A million checks may be waiting: notice a shutdown within the round.
            if i % 1024 == 1023 && stopping() {
                break;
            }
            let until = match shared.outstanding.lock().get(&waiting[i]) {
                Some(Outstanding::Waiting(until)) => Some(*until),
                _ => None,
            };
            match until {
                Some(until) if until > now => {
                    next_retry = next_retry.min(until);
                    i += 1;
                }
                Some(_) => match try_admit(shared, &waiting[i], true, now) {
                    // Blocked on in-flight capacity: the next result wakes this loop.
                    Tried::Delayed(DelayReason::InFlight, _) => break,
                    Tried::Delayed(_, until) => {
                        next_retry = next_retry.min(until);
                        i += 1;
                    }
                    Tried::Admitted | Tried::Skipped | Tried::Gone => {
                        waiting.remove(i);
                    }
                },
                None => {
                    waiting.remove(i);
                }
            }
        }
        // A due check that is still waiting has its new slot skipped (and counted), so
        // each due slot is admitted, delayed or skipped.
        for (n, id) in due.iter().enumerate() {
            if n % 1024 == 1023 && stopping() {
                break;
            }
            if let Tried::Delayed(reason, until) = try_admit(shared, id, false, now) {
                // Blocked on in-flight capacity: woken by the next result instead.
                if reason != DelayReason::InFlight {
                    next_retry = next_retry.min(until);
                }
                waiting.push_back(id.clone());
            }
        }
        // Checks left unvisited after a block wait for a result's wake-up, or at most
        // the 50 ms below.
        let next_sched = shared.sched.lock().next_deadline().unwrap_or(u64::MAX);
        let wait = next_sched
            .min(next_retry)
            .saturating_sub(now_ns())
            .min(50_000_000);
        match shared
            .wake_rx
            .recv_timeout(Duration::from_nanos(wait.max(200_000)))
        {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
}

/// Run the result loop until the engine's result channel closes.
pub(super) fn results(shared: &Arc<Shared>) {
    let rx = shared.engine.results().clone();
    loop {
        let r = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(r) => r,
            // On shutdown the engine is closed (its workers joined, every result sent)
            // before this loop is told to stop: nothing can be left behind.
            Err(RecvTimeoutError::Timeout)
                if shared.engine_closed.load(Ordering::Acquire) && rx.is_empty() =>
            {
                break
            }
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        {
            let mut out = shared.outstanding.lock();
            if let Some(Outstanding::Running(seq, _)) = out.get(&r.check) {
                if *seq == r.seq {
                    if let Some(Outstanding::Running(_, permits)) = out.remove(&r.check) {
                        let mut budgets = shared.budgets.lock();
                        let was_full = !budgets.inflight().fits(1);
                        budgets.release(permits);
                        if was_full {
                            // Checks wait for this permit: let the dispatcher retry now.
                            let _ = shared.wake_tx.try_send(());
                        }
                    }
                }
            }
        }
        let now = tokio::time::Instant::now();
        let (transition, interval) = {
            let mut h = shared.health.lock();
            let t = h.apply(&r, now);
            (t, h.next_interval(&r.check))
        };
        if let Some(iv) = interval {
            let mut s = shared.sched.lock();
            if s.interval(&r.check) != Some(iv) {
                s.set_interval(&r.check, iv, now_ns());
                drop(s);
                let _ = shared.wake_tx.try_send(());
            }
        }
        if let Some(t) = transition {
            if let Err(e) = shared.journal_append(&Record::of(&t)) {
                warn!(check = %t.check, error = %e, "journal append failed; transition kept in memory only");
            }
            let _ = shared.events.send(Arc::new(Event::Transition(t)));
        }
    }
}
