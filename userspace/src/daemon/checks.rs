//! The daemon's set of checks: specs with their prepared parts, and how a new set
//! (from a reload) differs from the running one.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use crate::{
    api::ReloadReport,
    engine::{
        spec::{CheckId, CheckSpec},
        tls::TlsConfigs,
        uring::{PrepareError, Prepared},
    },
};

/// One running check.
#[derive(Debug)]
pub struct Entry {
    /// Its definition.
    pub spec: Arc<CheckSpec>,
    /// Compiled regex and TLS config.
    pub prepared: Arc<Prepared>,
    /// Probes sent: the last probe's sequence number. Sequence numbers count per check
    /// (1, 2, ...), so a check's results and history read as its own probes, and a
    /// gap means a lost result. Carried over when the definition changes.
    pub probes: AtomicU64,
}

impl Entry {
    /// A check that has sent no probe yet.
    #[must_use]
    pub fn new(spec: Arc<CheckSpec>, prepared: Arc<Prepared>) -> Self {
        Self {
            spec,
            prepared,
            probes: AtomicU64::new(0),
        }
    }

    /// The sequence number of the next probe (counting it as sent).
    pub fn next_seq(&self) -> u64 {
        self.probes.fetch_add(1, Ordering::Relaxed) + 1
    }
}

impl Clone for Entry {
    fn clone(&self) -> Self {
        Self {
            spec: Arc::clone(&self.spec),
            prepared: Arc::clone(&self.prepared),
            probes: AtomicU64::new(self.probes.load(Ordering::Relaxed)),
        }
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

/// What changes when `new` replaces `old`.
#[must_use]
pub fn diff(old: &BTreeMap<CheckId, Entry>, new: &BTreeMap<CheckId, Entry>) -> ReloadReport {
    let mut r = ReloadReport::default();
    for (id, e) in new {
        match old.get(id) {
            None => r.added.push(id.clone()),
            Some(o) if *o.spec != *e.spec => r.changed.push(id.clone()),
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
