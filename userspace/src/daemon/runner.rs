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
        spec::CheckId,
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
    /// Submitted for a definition that is gone (the check was removed, or its target or
    /// probe changed): its result describes something else and is dropped when it
    /// comes; its permits are released then. Until then the check's id is not probed
    /// again (one probe per check at a time).
    Orphaned(u64, Permits),
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
/// a slot that just came due. `gate`: a budget shared by every probe (global rate, in
/// flight) already refused one in this round, until the time given: delay this one
/// for the same reason without asking.
fn try_admit(
    shared: &Shared,
    id: &CheckId,
    retrying: bool,
    now: u64,
    gate: Option<(DelayReason, u64)>,
) -> Tried {
    // Lock order: health, outstanding, budgets (the result loop never holds one of
    // the latter two while taking health).
    let mut checks = shared.health.lock();
    let mut out = shared.outstanding.lock();
    let Some((health, parts)) = checks.get_with_extra(id) else {
        if retrying && matches!(out.get(id), Some(Outstanding::Waiting(_))) {
            out.remove(id);
        }
        return Tried::Gone;
    };
    match out.get(id) {
        Some(Outstanding::Waiting(_)) if retrying => {}
        _ if retrying => return Tried::Gone,
        Some(Outstanding::Running(..) | Outstanding::Orphaned(..) | Outstanding::Waiting(_)) => {
            shared.budgets.lock().record_skipped(1);
            return Tried::Skipped;
        }
        None => {}
    }
    let spec = health.spec_arc();
    let prepared = Arc::clone(&parts.prepared);
    let needs_socket = !shared.engine.runs_stateless(&spec.probe);
    let admission = match gate {
        Some((reason, until_ns)) => {
            shared.budgets.lock().record_delayed(reason);
            Admission::Delay { until_ns, reason }
        }
        None => shared
            .budgets
            .lock()
            .admit(spec.target.addr, needs_socket, now),
    };
    match admission {
        Admission::Admit(permits) => {
            let seq = checks.extra_mut(id).map_or(0, |p| {
                p.probes += 1;
                p.probes
            });
            drop(checks);
            out.insert(id.clone(), Outstanding::Running(seq, permits));
            drop(out);
            let job = Job {
                spec,
                seq,
                prepared,
            };
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
    let mut last_shrink = now_ns();
    while !shared.stopping.load(Ordering::Acquire) {
        let now = now_ns();
        if now.saturating_sub(last_shrink) > 5_000_000_000 {
            // A burst (every check due at start-up, an overload) grows these to one
            // entry per check, and nothing shrinks them: up to ~100 bytes of each of
            // a million checks, for good. Give the room back once the burst is over.
            last_shrink = now;
            if waiting.capacity() > 4 * waiting.len() + 4096 {
                waiting.shrink_to(2 * waiting.len());
            }
            if due.capacity() > 4 * due.len() + 4096 {
                due.shrink_to(2 * due.len());
            }
            let mut out = shared.outstanding.lock();
            if out.capacity() > 4 * out.len() + 4096 {
                let len = out.len();
                out.shrink_to(2 * len);
            }
        }
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
        let mut now = now;
        let stopping = || shared.stopping.load(Ordering::Acquire);
        while i < waiting.len() {
            // A million checks may be waiting: notice a shutdown within the round, and
            // keep `now` fresh so the rate budgets refill while the round goes on.
            if i % 256 == 255 {
                if stopping() {
                    break;
                }
                now = now_ns();
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
                Some(_) => match try_admit(shared, &waiting[i], true, now, None) {
                    // Blocked on in-flight capacity: the next result wakes this loop.
                    Tried::Delayed(DelayReason::InFlight, _) => break,
                    // The global rate refuses every probe until then: asking for each
                    // of (up to a million) waiting checks was this loop's whole time,
                    // with a stale clock, so it admitted one burst per round.
                    Tried::Delayed(DelayReason::Global, until) => {
                        next_retry = next_retry.min(until);
                        break;
                    }
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
        // each due slot is admitted, delayed or skipped. Once the global rate or the
        // in-flight budget refuses one, the rest of the round waits behind it.
        let mut gate: Option<(DelayReason, u64)> = None;
        for (n, id) in due.iter().enumerate() {
            if n % 256 == 255 {
                if stopping() {
                    break;
                }
                now = now_ns();
                if matches!(gate, Some((DelayReason::Global, until)) if until <= now) {
                    gate = None;
                }
            }
            if let Tried::Delayed(reason, until) = try_admit(shared, id, false, now, gate) {
                // Blocked on in-flight capacity: woken by the next result instead.
                if reason != DelayReason::InFlight {
                    next_retry = next_retry.min(until);
                }
                if matches!(reason, DelayReason::Global | DelayReason::InFlight) {
                    gate = Some((reason, until));
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

/// Results handled together: one pass over each lock and one journal sync for up to
/// this many (a million checks all settling at start-up made one fsync per transition
/// the loop's whole time, with permits held meanwhile).
const RESULT_BATCH: usize = 512;

/// Run the result loop until the engine's result channel closes.
pub(super) fn results(shared: &Arc<Shared>) {
    let rx = shared.engine.results().clone();
    let mut batch = Vec::with_capacity(RESULT_BATCH);
    let mut intervals = Vec::with_capacity(RESULT_BATCH);
    // Per result of the batch: whether it answers an orphaned probe (dropped).
    let mut stale: Vec<bool> = Vec::with_capacity(RESULT_BATCH);
    let mut transitions = Vec::new();
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
        batch.clear();
        batch.push(r);
        while batch.len() < RESULT_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        stale.clear();
        {
            let mut out = shared.outstanding.lock();
            let mut budgets = shared.budgets.lock();
            let was_full = !budgets.inflight().fits(1);
            for r in &batch {
                let matched = matches!(
                    out.get(&r.check),
                    Some(Outstanding::Running(seq, _) | Outstanding::Orphaned(seq, _)) if *seq == r.seq
                );
                let orphan = match matched.then(|| out.remove(&r.check)).flatten() {
                    Some(Outstanding::Running(_, permits)) => {
                        budgets.release(permits);
                        false
                    }
                    Some(Outstanding::Orphaned(_, permits)) => {
                        budgets.release(permits);
                        true
                    }
                    _ => false,
                };
                stale.push(orphan);
            }
            if was_full && budgets.inflight().fits(1) {
                // Checks wait for these permits: let the dispatcher retry now.
                let _ = shared.wake_tx.try_send(());
            }
        }
        let now = tokio::time::Instant::now();
        intervals.clear();
        {
            let mut h = shared.health.lock();
            for (r, &orphan) in batch.iter().zip(&stale) {
                if orphan {
                    debug!(check = %r.check, seq = r.seq, "result of a removed or redefined check's probe dropped");
                    intervals.push(None);
                    continue;
                }
                if let Some(t) = h.apply(r, now) {
                    transitions.push(t);
                }
                intervals.push(h.next_interval(&r.check));
            }
        }
        {
            let mut s = shared.sched.lock();
            let mut changed = false;
            for (r, iv) in batch.iter().zip(&intervals) {
                if let Some(iv) = *iv {
                    if s.interval(&r.check) != Some(iv) {
                        s.set_interval(&r.check, iv, now_ns());
                        changed = true;
                    }
                }
            }
            drop(s);
            if changed {
                let _ = shared.wake_tx.try_send(());
            }
        }
        if !transitions.is_empty() {
            // Durable before announced, with one sync for the whole batch.
            let records: Vec<Record> = transitions.iter().map(Record::of).collect();
            if let Err(e) = shared.journal_append(&records) {
                warn!(transitions = records.len(), error = %e, "journal append failed; transitions kept in memory only");
            }
            for t in transitions.drain(..) {
                let _ = shared.events.send(Arc::new(Event::Transition(t)));
            }
        }
    }
}
