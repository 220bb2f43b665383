//! What the daemon keeps in its journal, and how it is replayed at start: every
//! transition, so a restart resumes each check's state and its transition history.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::{
    engine::{result::Reason, spec::CheckId},
    health::{Health, Transition},
};

/// One journal record.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// A check changed health.
    Transition {
        /// The check.
        check: CheckId,
        /// State before.
        from: Health,
        /// State after.
        to: Health,
        /// Wall time, milliseconds since the Unix epoch (display only).
        at_unix_ms: u64,
        /// The deciding result's reason.
        reason: Reason,
        /// The results that decided it.
        results: Vec<(bool, Reason)>,
    },
    /// A check's state at compaction time (the journal's snapshot).
    State {
        /// The check.
        check: CheckId,
        /// Its health.
        state: Health,
        /// Since when, milliseconds since the Unix epoch.
        since_unix_ms: u64,
    },
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Record {
    /// The record of a transition.
    #[must_use]
    pub fn of(t: &Transition) -> Self {
        Record::Transition {
            check: t.check.clone(),
            from: t.from,
            to: t.to,
            at_unix_ms: unix_ms(t.at_wall),
            reason: t.reason.clone(),
            results: t.results.clone(),
        }
    }
}

/// What the journal says about one check.
#[derive(Debug, Default)]
pub struct Restored {
    /// Last known health and since when (wall time).
    pub state: Option<(Health, SystemTime)>,
    /// Transitions, oldest first (bounded by the caller's history size).
    pub transitions: Vec<Transition>,
}

/// Fold replayed records into per-check restored state.
#[must_use]
pub fn fold(
    records: impl IntoIterator<Item = Record>,
    keep: usize,
    now: Instant,
) -> HashMap<CheckId, Restored> {
    let mut out: HashMap<CheckId, Restored> = HashMap::new();
    let wall_now = SystemTime::now();
    for r in records {
        match r {
            Record::Transition {
                check,
                from,
                to,
                at_unix_ms,
                reason,
                results,
            } => {
                let at_wall = SystemTime::UNIX_EPOCH + Duration::from_millis(at_unix_ms);
                let ago = wall_now.duration_since(at_wall).unwrap_or_default();
                let e = out.entry(check.clone()).or_default();
                e.state = Some((to, at_wall));
                e.transitions.push(Transition {
                    check,
                    from,
                    to,
                    at: now.checked_sub(ago).unwrap_or(now),
                    at_ms: 0,
                    at_wall,
                    reason,
                    results,
                });
                if e.transitions.len() > keep {
                    e.transitions.remove(0);
                }
            }
            Record::State {
                check,
                state,
                since_unix_ms,
            } => {
                let e = out.entry(check).or_default();
                e.state = Some((
                    state,
                    SystemTime::UNIX_EPOCH + Duration::from_millis(since_unix_ms),
                ));
            }
        }
    }
    out
}
