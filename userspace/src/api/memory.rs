//! [`MemoryControl`]: a [`Control`] that probes nothing and keeps checks in memory.
//! It validates added checks like the daemon does ([`crate::config::parse_check_json`])
//! and lets the caller set statuses, histories and publish events. Used by the API
//! tests and useful to try the CLI against a server without root.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::broadcast;

use super::{
    control::{CheckHistory, Control, ControlError, DaemonInfo, Event, ReloadReport},
    metrics::{self, MetricsInput},
};
use crate::{
    config::{self, Defaults},
    engine::spec::{CheckId, CheckSpec},
    health::{CheckHealth, CheckStatus},
};

/// Events buffered per subscriber before it lags.
pub const EVENT_BUFFER: usize = 256;

#[derive(Default)]
struct State {
    specs: BTreeMap<CheckId, Arc<CheckSpec>>,
    statuses: BTreeMap<CheckId, CheckStatus>,
    histories: BTreeMap<CheckId, CheckHistory>,
    reload: Option<Result<ReloadReport, String>>,
}

/// An in-memory [`Control`] (see the module docs).
pub struct MemoryControl {
    state: Mutex<State>,
    events: broadcast::Sender<Arc<Event>>,
    defaults: Defaults,
    info: DaemonInfo,
}

impl MemoryControl {
    /// No checks; `info` is what [`Control::info`] answers (its `checks` is kept
    /// up to date).
    #[must_use]
    pub fn new(info: DaemonInfo) -> Self {
        Self {
            state: Mutex::new(State::default()),
            events: broadcast::channel(EVENT_BUFFER).0,
            defaults: Defaults::default(),
            info,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Add a validated spec with a fresh status (its `initial` state), without
    /// publishing an event.
    pub fn insert(&self, spec: CheckSpec) {
        let status = CheckHealth::new(&spec, tokio::time::Instant::now()).status();
        let mut st = self.lock();
        st.statuses.insert(spec.id.clone(), status);
        st.histories.insert(
            spec.id.clone(),
            CheckHistory {
                id: spec.id.clone(),
                results: Vec::new(),
                transitions: Vec::new(),
            },
        );
        st.specs.insert(spec.id.clone(), Arc::new(spec));
    }

    /// Replace the status of a check (ignored for an unknown id).
    pub fn set_status(&self, status: CheckStatus) {
        let mut st = self.lock();
        if st.specs.contains_key(&status.id) {
            st.statuses.insert(status.id.clone(), status);
        }
    }

    /// Replace the history of a check (ignored for an unknown id).
    pub fn set_history(&self, history: CheckHistory) {
        let mut st = self.lock();
        if st.specs.contains_key(&history.id) {
            st.histories.insert(history.id.clone(), history);
        }
    }

    /// What the next [`Control::reload`] calls answer (`Err`: refused as invalid).
    /// Without it, reload is unsupported.
    pub fn set_reload(&self, outcome: Result<ReloadReport, String>) {
        self.lock().reload = Some(outcome);
    }

    /// Send `event` to every subscriber; returns how many there are.
    pub fn publish(&self, event: Event) -> usize {
        self.events.send(Arc::new(event)).unwrap_or(0)
    }

    /// Current subscribers of the event stream.
    #[must_use]
    pub fn subscribers(&self) -> usize {
        self.events.receiver_count()
    }
}

impl Control for MemoryControl {
    fn status(&self) -> Vec<CheckStatus> {
        self.lock().statuses.values().cloned().collect()
    }

    fn check(&self, id: &str) -> Option<CheckStatus> {
        self.lock().statuses.get(&CheckId::new(id)).cloned()
    }

    fn spec(&self, id: &str) -> Option<Arc<CheckSpec>> {
        self.lock().specs.get(&CheckId::new(id)).cloned()
    }

    fn history(&self, id: &str) -> Option<CheckHistory> {
        self.lock().histories.get(&CheckId::new(id)).cloned()
    }

    fn add_check(&self, check: &serde_json::Value) -> Result<CheckId, ControlError> {
        let spec = config::parse_check_json(check, &self.defaults)
            .map_err(|e| ControlError::Invalid(e.to_string()))?;
        let id = spec.id.clone();
        if self.lock().specs.contains_key(&id) {
            return Err(ControlError::Duplicate(id.to_string()));
        }
        self.insert(spec);
        self.publish(Event::CheckAdded { id: id.clone() });
        Ok(id)
    }

    fn remove_check(&self, id: &str) -> Result<(), ControlError> {
        let key = CheckId::new(id);
        {
            let mut st = self.lock();
            if st.specs.remove(&key).is_none() {
                return Err(ControlError::UnknownCheck(id.to_owned()));
            }
            st.statuses.remove(&key);
            st.histories.remove(&key);
        }
        self.publish(Event::CheckRemoved { id: key });
        Ok(())
    }

    fn reload(&self) -> Result<ReloadReport, ControlError> {
        match self.lock().reload.clone() {
            Some(Ok(report)) => Ok(report),
            Some(Err(problems)) => Err(ControlError::Invalid(problems)),
            None => Err(ControlError::Unsupported(
                "no configuration file to reload (checks were added through the API)".into(),
            )),
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    fn metrics(&self) -> String {
        metrics::render(&MetricsInput {
            info: self.info(),
            statuses: self.status(),
            outcomes: BTreeMap::new(),
            engine: Default::default(),
            budget: Default::default(),
            kernel: None,
            cluster: None,
            refused_checks: 0,
            omitted: None,
        })
    }

    fn info(&self) -> DaemonInfo {
        DaemonInfo {
            checks: self.lock().specs.len(),
            ..self.info.clone()
        }
    }
}
