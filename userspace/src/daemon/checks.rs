//! The daemon's set of checks: specs with their prepared parts, and how a new set
//! (from a reload) differs from the running one.

use std::{collections::BTreeMap, sync::Arc};

use crate::{
    api::ReloadReport,
    engine::{
        spec::{CheckId, CheckSpec},
        tls::TlsConfigs,
        uring::{PrepareError, Prepared},
    },
};

/// A check ready to run: its definition and prepared parts.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Its definition.
    pub spec: Arc<CheckSpec>,
    /// Compiled regex and TLS config.
    pub prepared: Arc<Prepared>,
}

impl Entry {
    /// A check ready to run.
    #[must_use]
    pub fn new(spec: Arc<CheckSpec>, prepared: Arc<Prepared>) -> Self {
        Self { spec, prepared }
    }
}

/// The engine's parts of a running check, kept beside its health in the daemon's one
/// table of checks (a [`crate::health::HealthTable`] payload).
#[derive(Clone, Debug)]
pub struct EngineParts {
    /// Compiled regex and TLS config.
    pub prepared: Arc<Prepared>,
    /// Probes sent: the last probe's sequence number. Sequence numbers count per check
    /// (1, 2, ...), so a check's results and history read as its own probes, and a
    /// gap means a lost result. Kept when the definition changes.
    pub probes: u64,
}

impl EngineParts {
    /// A check about to run with `prepared`, no probe sent yet.
    #[must_use]
    pub fn new(prepared: Arc<Prepared>) -> Self {
        Self {
            prepared,
            probes: 0,
        }
    }
}

impl Default for EngineParts {
    fn default() -> Self {
        Self::new(Prepared::none())
    }
}

/// Prepare every spec; refuse the whole set if one fails.
///
/// # Errors
/// The first check that cannot be prepared.
pub fn prepare_all(
    specs: Vec<CheckSpec>,
    tls: &TlsConfigs,
) -> Result<BTreeMap<CheckId, Entry>, PrepareError> {
    let mut out = BTreeMap::new();
    for spec in specs {
        let prepared = Prepared::shared(&spec, tls)?;
        out.insert(spec.id.clone(), Entry::new(Arc::new(spec), prepared));
    }
    Ok(out)
}

/// What changes when `new` replaces the running checks, `old`.
#[must_use]
pub fn diff(
    old: &BTreeMap<CheckId, Arc<CheckSpec>>,
    new: &BTreeMap<CheckId, Entry>,
) -> ReloadReport {
    let mut r = ReloadReport::default();
    for (id, e) in new {
        match old.get(id) {
            None => r.added.push(id.clone()),
            Some(o) if **o != *e.spec => r.changed.push(id.clone()),
            Some(_) => r.unchanged += 1,
        }
    }
    r.removed = old
        .keys()
        .filter(|id| !new.contains_key(*id))
        .cloned()
        .collect();
    r
}
