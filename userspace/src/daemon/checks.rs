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

/// One running check.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Its definition.
    pub spec: Arc<CheckSpec>,
    /// Compiled regex and TLS config.
    pub prepared: Arc<Prepared>,
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
        let prepared = Arc::new(Prepared::new(&spec, tls)?);
        out.insert(
            spec.id.clone(),
            Entry {
                spec: Arc::new(spec),
                prepared,
            },
        );
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
