//! The daemon's answers to the API ([`Control`]).

use std::{collections::BTreeMap, sync::Arc};

use tracing::info;

use super::{
    checks::{diff, prepare_all, EngineParts, Entry},
    runner::Outstanding,
    Shared,
};
use crate::{
    api::{CheckHistory, Control, ControlError, DaemonInfo, Event, ReloadReport},
    config,
    engine::{
        spec::{CheckId, CheckSpec},
        uring::{sys::monotonic_now, Prepared},
    },
    health::{CheckHealth, CheckStatus, Replaced},
};

fn now_ns() -> u64 {
    u64::try_from(monotonic_now().as_nanos()).unwrap_or(u64::MAX)
}

impl Shared {
    /// Start running `entry` (not yet in the set).
    fn start_check(&self, entry: Entry) {
        let id = entry.spec.id.clone();
        let now = tokio::time::Instant::now();
        let parts = EngineParts::new(entry.prepared);
        let _ = self
            .health
            .lock()
            .insert(Arc::clone(&entry.spec), now, parts);
        self.sched
            .lock()
            .add(id.clone(), entry.spec.interval, entry.spec.jitter, now_ns());
        let _ = self.wake_tx.try_send(());
        let _ = self.events.send(Arc::new(Event::CheckAdded { id }));
    }

    /// Mark the probe of `id` that is out as orphaned (its result is dropped when it
    /// comes), and forget a wait for budget. Call with the health lock held.
    fn orphan_probe(&self, id: &CheckId) {
        let mut out = self.outstanding.lock();
        match out.remove(id) {
            Some(Outstanding::Running(seq, permits) | Outstanding::Orphaned(seq, permits)) => {
                out.insert(id.clone(), Outstanding::Orphaned(seq, permits));
            }
            Some(Outstanding::Waiting(_)) | None => {}
        }
    }

    /// Stop running `id`.
    fn stop_check(&self, id: &CheckId) {
        self.sched.lock().remove(id);
        {
            let mut h = self.health.lock();
            h.remove(id);
            // Under the health lock (lock order: health, outstanding), so that no result
            // of the old probe is applied to a check re-added under the same id.
            self.orphan_probe(id);
        }
        let _ = self
            .events
            .send(Arc::new(Event::CheckRemoved { id: id.clone() }));
    }

    /// Replace the definition of a running check, keeping its state when the probe and
    /// target are unchanged (and its probe count: sequence numbers go on).
    fn change_check(&self, entry: Entry) {
        let id = entry.spec.id.clone();
        let now = tokio::time::Instant::now();
        {
            let mut h = self.health.lock();
            if h.replace(Arc::clone(&entry.spec), now) == Replaced::Reset {
                // The probe out (if any) was of the old target or probe: its result
                // must not count for the new one.
                self.orphan_probe(&id);
            }
            if let Some(parts) = h.extra_mut(&id) {
                parts.prepared = entry.prepared;
            }
        }
        {
            let mut s = self.sched.lock();
            s.remove(&id);
            s.add(id.clone(), entry.spec.interval, entry.spec.jitter, now_ns());
        }
        let _ = self.wake_tx.try_send(());
    }

    /// The running checks' specs, by id.
    fn running_specs(&self) -> BTreeMap<CheckId, Arc<CheckSpec>> {
        self.health
            .lock()
            .iter()
            .map(|(id, h)| (id.clone(), h.spec_arc()))
            .collect()
    }
}

impl Control for Shared {
    fn status(&self) -> Vec<CheckStatus> {
        self.each_check(CheckHealth::status)
    }

    fn check(&self, id: &str) -> Option<CheckStatus> {
        self.health.lock().snapshot(&CheckId::new(id))
    }

    fn spec(&self, id: &str) -> Option<Arc<CheckSpec>> {
        self.health
            .lock()
            .get(&CheckId::new(id))
            .map(CheckHealth::spec_arc)
    }

    fn history(&self, id: &str) -> Option<CheckHistory> {
        let h = self.health.lock();
        let c = h.get(&CheckId::new(id))?;
        Some(CheckHistory {
            id: CheckId::new(id),
            results: c.history(),
            transitions: c.transitions(),
        })
    }

    fn add_check(&self, check: &serde_json::Value) -> Result<CheckId, ControlError> {
        let spec = config::parse_check_json(check, &self.defaults.read())
            .map_err(|e| ControlError::Invalid(e.to_string()))?;
        self.policy
            .read()
            .check(spec.target.addr)
            .map_err(|e| ControlError::Invalid(format!("check {:?}: {e}", spec.id.as_str())))?;
        if self.health.lock().contains(&spec.id) {
            return Err(ControlError::Duplicate(spec.id.to_string()));
        }
        let prepared =
            Prepared::shared(&spec, &self.tls).map_err(|e| ControlError::Invalid(e.to_string()))?;
        let id = spec.id.clone();
        info!(check = %id, "check added through the API");
        self.start_check(Entry::new(Arc::new(spec), prepared));
        Ok(id)
    }

    fn remove_check(&self, id: &str) -> Result<(), ControlError> {
        let id = CheckId::new(id);
        if !self.health.lock().contains(&id) {
            return Err(ControlError::UnknownCheck(id.to_string()));
        }
        info!(check = %id, "check removed through the API");
        self.stop_check(&id);
        Ok(())
    }

    fn reload(&self) -> Result<ReloadReport, ControlError> {
        let Some(path) = &self.config_path else {
            return Err(ControlError::Unsupported("no config file to reload".into()));
        };
        // Parse and prepare everything first: an invalid file changes nothing.
        let cfg = config::load_file(path).map_err(|e| ControlError::Invalid(e.to_string()))?;
        let new: BTreeMap<CheckId, Entry> =
            prepare_all(cfg.checks, &self.tls).map_err(|e| ControlError::Invalid(e.to_string()))?;
        let report = diff(&self.running_specs(), &new);
        for id in &report.removed {
            self.stop_check(id);
        }
        for id in &report.changed {
            if let Some(e) = new.get(id) {
                self.change_check(e.clone());
            }
        }
        for id in &report.added {
            if let Some(e) = new.get(id) {
                self.start_check(e.clone());
            }
        }
        *self.defaults.write() = cfg.defaults;
        *self.policy.write() = cfg.daemon.policy.clone();
        self.metrics_check_limit.store(
            cfg.daemon.metrics_check_limit,
            std::sync::atomic::Ordering::Relaxed,
        );
        info!(
            added = report.added.len(),
            changed = report.changed.len(),
            removed = report.removed.len(),
            "config reloaded"
        );
        drop(new);
        super::release_freed_memory();
        Ok(report)
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    fn metrics(&self) -> String {
        super::start::render_metrics(self)
    }

    fn info(&self) -> DaemonInfo {
        DaemonInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_secs: self.started.elapsed().as_secs(),
            clock: self.clock.0.clone(),
            kernel_unavailable: self.clock.1.clone(),
            iface: self.iface.clone(),
            config_path: self.config_path.as_ref().map(|p| p.display().to_string()),
            checks: self.health.lock().len(),
            per_target_pps: self.target_caps.0
                / self
                    .target_share
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .max(1) as f64,
            syn_ack_reset: self.kernel.as_ref().map(|k| k.lock().reset_state().clone()),
            answer_hook: self
                .kernel
                .as_ref()
                .and_then(|k| k.lock().attached().first().map(|(_, i)| i.clone())),
        }
    }

    fn cluster(&self) -> Option<crate::cluster::view::ClusterView> {
        self.cluster_view.read().clone()
    }
}

impl crate::cluster::node::Local for Shared {
    fn running(&self) -> BTreeMap<CheckId, Arc<CheckSpec>> {
        self.running_specs()
    }

    fn apply(&self, add: Vec<CheckSpec>, change: Vec<CheckSpec>, remove: Vec<CheckId>) {
        for id in &remove {
            self.stop_check(id);
        }
        let prepare = |spec: CheckSpec| {
            if let Err(e) = self.policy.read().check(spec.target.addr) {
                tracing::warn!(check = %spec.id, error = %e, "assigned check refused by this node's target policy; not run");
                self.refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return None;
            }
            match Prepared::shared(&spec, &self.tls) {
                Ok(prepared) => Some(Entry::new(Arc::new(spec), prepared)),
                Err(e) => {
                    tracing::warn!(check = %spec.id, error = %e, "assigned check cannot be prepared; not run");
                    self.refused
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    None
                }
            }
        };
        for spec in change {
            let id = spec.id.clone();
            match prepare(spec) {
                Some(entry) => self.change_check(entry),
                // The new definition cannot run: do not keep probing the old one.
                None => self.stop_check(&id),
            }
        }
        for spec in add {
            if let Some(entry) = prepare(spec) {
                self.start_check(entry);
            }
        }
    }

    fn defaults(&self) -> config::Defaults {
        self.defaults.read().clone()
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    fn opinion(
        &self,
        id: &CheckId,
    ) -> Option<(crate::health::Health, crate::engine::result::Reason)> {
        let h = self.health.lock();
        let c = h.get(id)?;
        Some((
            c.state(),
            c.last_result()
                .map_or(crate::engine::result::Reason::Ok, |l| l.reason),
        ))
    }
}
