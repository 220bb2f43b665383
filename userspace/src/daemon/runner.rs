//! The daemon's two loops around the engine.
//!
//! - The dispatcher takes due checks from the scheduler, admits each through the budgets
//!   (in-flight, sockets, global and per-target rates) and submits a job; a probe that
//!   must wait is kept and retried, counted as delayed, never dropped. A check is never
//!   probed twice at once: if it comes due while its last probe is still out, the slot
//!   is skipped and counted.
//! - The result loop releases the probe's permits, counts its outcome, feeds the health
//!   table, adapts the check's interval (fast while failing), and journals and
//!   broadcasts every transition.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use crossbeam_channel::RecvTimeoutError;
use tracing::{debug, warn};

use super::{persist::Record, Shared};
use crate::{
    api::Event,
    engine::{
        budget::{Admission, Permits},
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

/// Run the dispatcher until shutdown.
pub(super) fn dispatch(shared: &Arc<Shared>) {
    let mut due: Vec<CheckId> = Vec::new();
    let mut retry: Vec<CheckId> = Vec::new();
    let mut seq: u64 = 0;
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
        retry.clear();
        {
            let out = shared.outstanding.lock();
            retry.extend(out.iter().filter_map(|(id, o)| match o {
                Outstanding::Waiting(until) if *until <= now => Some(id.clone()),
                _ => None,
            }));
        }
        // A check can be both waiting for its retry and due again: the retry tries the
        // slot it already holds, the due one is a new slot (skipped while a probe is out
        // or waiting), so each due slot is admitted, delayed or skipped, and counted.
        let retries = retry.iter().map(|id| (id, true));
        for (id, retrying) in retries.chain(due.iter().map(|id| (id, false))) {
            let entry = match shared.checks.read().get(id) {
                Some(e) => e.clone(),
                None => continue,
            };
            let mut out = shared.outstanding.lock();
            match out.get(id) {
                Some(Outstanding::Running(..)) => {
                    shared.budgets.lock().record_skipped(1);
                    continue;
                }
                Some(Outstanding::Waiting(_)) if !retrying => {
                    shared.budgets.lock().record_skipped(1);
                    continue;
                }
                _ => {}
            }
            let needs_socket = !matches!(entry.spec.probe, ProbeSpec::TcpSyn | ProbeSpec::Icmp);
            let admission = shared
                .budgets
                .lock()
                .admit(entry.spec.target.addr, needs_socket, now);
            match admission {
                Admission::Admit(permits) => {
                    seq += 1;
                    out.insert(id.clone(), Outstanding::Running(seq, permits));
                    drop(out);
                    let job = Job {
                        spec: Arc::clone(&entry.spec),
                        seq,
                        prepared: Arc::clone(&entry.prepared),
                    };
                    if shared.engine.submit(job).is_err() {
                        warn!(check = %id, "engine stopped; probe not sent");
                    }
                }
                Admission::Delay { until_ns, reason } => {
                    debug!(check = %id, ?reason, "probe delayed by budget");
                    out.insert(id.clone(), Outstanding::Waiting(until_ns));
                }
            }
        }
        let next_sched = shared.sched.lock().next_deadline().unwrap_or(u64::MAX);
        let next_retry = shared
            .outstanding
            .lock()
            .values()
            .filter_map(|o| match o {
                Outstanding::Waiting(u) => Some(*u),
                Outstanding::Running(..) => None,
            })
            .min()
            .unwrap_or(u64::MAX);
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
                        shared.budgets.lock().release(permits);
                    }
                }
            }
        }
        {
            let mut counts = shared.outcomes.lock();
            *counts
                .entry(r.check.clone())
                .or_default()
                .entry(r.reason.label())
                .or_insert(0) += 1;
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

/// Probe counts by outcome label, per check.
pub(super) type Outcomes = HashMap<CheckId, BTreeMap<&'static str, u64>>;
