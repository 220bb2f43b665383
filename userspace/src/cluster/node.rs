//! One cluster node at run time: membership, election, assignment, observations and
//! (on the leader) quorum health, all through etcd.
//!
//! - **Membership**: the node registers `P/nodes/<id>` under a lease kept alive in the
//!   background; when the lease is lost it registers again with a new one.
//! - **Election**: every node campaigns; the winner runs the leader loop for as long as
//!   its lease is alive *on its own clock* (it stops before the TTL can end), then
//!   resigns and campaigns again.
//! - **Assignment** (leader): checks × live nodes → replicas ([`super::assign`]), written
//!   per node in one transaction that compares the leader's election key create
//!   revision (its term): a deposed leader's writes fail (fencing).
//! - **Following**: each node watches its own `P/assign/<id>` and the check definitions
//!   and reconciles the checks it runs; it acts only on the newest term.
//! - **Observations**: each replica writes its opinion of a check when it changes; while
//!   etcd is unreachable they queue (bounded, in order, counted if the bound is hit) and
//!   are flushed when it returns.
//! - **Quorum** (leader): the health of each check is decided from its replicas'
//!   opinions ([`super::quorum`]), ignoring suspect nodes ([`super::suspect`]), and
//!   written fenced, only on change. The suspect hold-down (30 s) can be changed with the
//!   environment variable `SONDE_SUSPECT_HOLD_DOWN_MS` ([`SUSPECT_HOLD_DOWN_ENV`]).
//!
//! etcd traffic follows state changes and membership, never probes.
//!
//! This file holds membership, election and the step-down on the node's own clock;
//! `follow`, `observe`, `leader` and `metrics` hold the rest.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime},
};

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use tracing::{debug, info, warn};

use super::{
    assign::{assign, Assignment, NodeId},
    etcd::{Compare, CompareOp, Etcd, EtcdError, Txn, TxnOp, WatchUpdate},
    keys::{AssignmentRecord, HealthRecord, Keys, NodeRecord, ObservationRecord, SuspectRecord},
    quorum::{decide, Opinion, QuorumRule},
    suspect::{views, SuspectConfig, SuspectDetector},
};
use crate::{
    api::Event,
    config::{self, Defaults},
    engine::{
        result::Reason,
        spec::{CheckId, CheckSpec},
    },
    health::Health,
};

mod follow;
mod leader;
mod metrics;
mod observe;

pub use metrics::render_metrics;

/// A check as stored in etcd: the `[[check]]`-shaped definition plus cluster fields.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredCheck {
    /// The check, in the same shape as a `[[check]]` table of the config file.
    pub check: serde_json::Value,
    /// Nodes that probe it (default 2).
    #[serde(default = "default_replicas")]
    pub replicas: u8,
    /// How their opinions become the cluster's verdict (default majority).
    #[serde(default)]
    pub quorum: QuorumRule,
}

fn default_replicas() -> u8 {
    2
}

/// What the node runtime needs from the local daemon.
pub trait Local: Send + Sync + 'static {
    /// The checks running now, with their definitions.
    fn running(&self) -> BTreeMap<CheckId, Arc<CheckSpec>>;
    /// Start `add` (already validated), replace the definitions of `change` (running
    /// checks whose definition changed in etcd) and stop `remove`.
    fn apply(&self, add: Vec<CheckSpec>, change: Vec<CheckSpec>, remove: Vec<CheckId>);
    /// The daemon's `[defaults]`, applied to the checks stored in etcd as to the file's.
    fn defaults(&self) -> Defaults;
    /// Follow transitions.
    fn subscribe(&self) -> broadcast::Receiver<Arc<Event>>;
    /// The current local opinion of a check (health and the latest reason).
    fn opinion(&self, id: &CheckId) -> Option<(Health, Reason)>;
}

/// Settings of a cluster node.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// This node's id (unique in the cluster).
    pub id: NodeId,
    /// Key prefix.
    pub prefix: String,
    /// Membership lease TTL.
    pub lease_ttl: Duration,
    /// Most observations kept while etcd is unreachable.
    pub max_pending: usize,
}

/// Counters of the node runtime (for metrics and tests).
#[derive(Debug, Default)]
pub struct NodeStats {
    /// Observations written to etcd.
    pub observations_written: AtomicU64,
    /// Observations dropped because the pending queue was full (never silently: counted).
    pub observations_dropped: AtomicU64,
    /// Assignment transactions written as leader.
    pub assignments_written: AtomicU64,
    /// Fenced writes refused (this node was no longer leader).
    pub fenced_out: AtomicU64,
    /// Health records written as leader.
    pub health_written: AtomicU64,
    /// Terms won.
    pub terms: AtomicU64,
    /// 1 while this node acts as leader (writes assignments, suspects and health), 0
    /// otherwise; it turns 0 before its lease can expire when renewals stop.
    pub leader: AtomicBool,
    /// The term this node leads (its election key's create revision), 0 when it does
    /// not lead.
    pub term: AtomicI64,
    /// Times it stopped leading on its own clock (lease not renewed in time, or
    /// replaced), before etcd could expire the lease.
    pub stepdowns: AtomicU64,
    /// Transitions the observation task missed because the daemon's event stream
    /// lagged (they are also counted in `observations_dropped`; the current opinion of
    /// every running check is published instead).
    pub events_lagged: AtomicU64,
}

/// Shared state of the runtime's tasks.
struct Node {
    /// etcd.
    etcd: Etcd,
    /// Options.
    opts: NodeOptions,
    /// Key layout.
    keys: Keys,
    /// The daemon.
    local: Arc<dyn Local>,
    /// Counters.
    stats: Arc<NodeStats>,
    /// Current membership lease (0 until registered).
    lease: watch::Sender<i64>,
    /// When the current lease can expire at the earliest, on this node's clock (from
    /// the last acknowledged renewal); `None` while not registered.
    lease_expiry: watch::Sender<Option<Instant>>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
}

fn utf8(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Run the node until `shutdown` turns true. Returns its counters' handle at once; the
/// tasks run on the current tokio runtime.
#[must_use]
pub fn spawn(
    etcd: Etcd,
    opts: NodeOptions,
    local: Arc<dyn Local>,
    shutdown: watch::Receiver<bool>,
) -> Arc<NodeStats> {
    let stats = Arc::new(NodeStats::default());
    let (lease_tx, _) = watch::channel(0i64);
    let node = Arc::new(Node {
        keys: Keys::new(&opts.prefix),
        etcd,
        opts,
        local,
        stats: Arc::clone(&stats),
        lease: lease_tx,
        lease_expiry: watch::channel(None).0,
    });
    let n = Arc::clone(&node);
    let sd = shutdown.clone();
    tokio::spawn(async move { n.membership(sd).await });
    let n = Arc::clone(&node);
    let sd = shutdown.clone();
    tokio::spawn(async move { n.follow(sd).await });
    let n = Arc::clone(&node);
    let sd = shutdown.clone();
    tokio::spawn(async move { n.observe(sd).await });
    let n = Arc::clone(&node);
    tokio::spawn(async move { n.campaign(shutdown).await });
    stats
}

async fn stopped(sd: &mut watch::Receiver<bool>) {
    let _ = sd.wait_for(|v| *v).await;
}

impl Node {
    /// Register under a lease and keep it alive; register again after losing it.
    async fn membership(self: Arc<Self>, mut sd: watch::Receiver<bool>) {
        loop {
            if *sd.borrow() {
                return;
            }
            let lease = match self.etcd.lease_grant(self.opts.lease_ttl).await {
                Ok(l) => l,
                Err(e) => {
                    warn!(error = %e, "cannot get a membership lease; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let rec = NodeRecord {
                id: self.opts.id.clone(),
                version: env!("CARGO_PKG_VERSION").into(),
                load: self.local.running().len(),
                registered_unix_ms: unix_ms(),
            };
            let value = serde_json::to_vec(&rec).unwrap_or_default();
            if let Err(e) = self
                .etcd
                .put(self.keys.node(&self.opts.id), value, Some(lease.id))
                .await
            {
                warn!(error = %e, "cannot register; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            info!(node = %self.opts.id, lease = lease.id, ttl = ?lease.ttl, "registered");
            let keeper = self.etcd.keep_alive(lease.id, lease.ttl);
            let _ = self.lease.send(lease.id);
            let mut state = keeper.state();
            loop {
                tokio::select! {
                    () = stopped(&mut sd) => {
                        let _ = self.etcd.lease_revoke(lease.id).await;
                        return;
                    }
                    r = state.changed() => {
                        if r.is_err() || state.borrow().lost {
                            warn!(node = %self.opts.id, "membership lease lost; registering again");
                            break;
                        }
                        let st = *state.borrow();
                        self.lease_expiry.send_replace(st.alive.then_some(st.expires_at));
                    }
                }
            }
            let _ = self.lease.send(0);
            self.lease_expiry.send_replace(None);
            drop(keeper);
        }
    }

    /// The latest moment this node may act as leader on its own monotonic clock: a
    /// third of the TTL before the lease can expire, i.e. two thirds of the TTL after the
    /// last acknowledged renewal was sent. `None` while no lease is known to be held.
    fn lead_deadline(&self) -> Option<Instant> {
        let margin = self.opts.lease_ttl / 3;
        self.lease_expiry
            .borrow()
            .and_then(|e| e.checked_sub(margin))
    }

    /// True while the lease is held with enough margin to act as leader.
    fn may_lead(&self) -> bool {
        self.lead_deadline().is_some_and(|d| Instant::now() < d)
    }

    /// Wait until the lease `lease` is held with margin (a renewal was acknowledged
    /// recently enough). Returns false when the lease was replaced meanwhile.
    async fn lease_fresh(&self, lease: i64, lease_rx: &mut watch::Receiver<i64>) -> bool {
        let mut expiry = self.lease_expiry.subscribe();
        loop {
            if *lease_rx.borrow() != lease {
                return false;
            }
            if self.may_lead() {
                return true;
            }
            tokio::select! {
                r = expiry.changed() => if r.is_err() { return false },
                r = lease_rx.changed() => if r.is_err() { return false },
            }
        }
    }

    /// Resolves when this node must stop leading: the lease was replaced, or its lead
    /// deadline ([`Node::lead_deadline`]) passed on this node's clock. A process that was
    /// stopped (SIGSTOP) and resumes finds the deadline in the past at once: the
    /// monotonic clock kept running while it slept.
    async fn must_step_down(
        &self,
        lease: i64,
        lease_rx: &mut watch::Receiver<i64>,
    ) -> &'static str {
        let mut expiry = self.lease_expiry.subscribe();
        loop {
            if *lease_rx.borrow() != lease {
                return "lease replaced";
            }
            let Some(deadline) = self.lead_deadline() else {
                return "lease no longer held";
            };
            if Instant::now() >= deadline {
                return "lease not renewed in time";
            }
            tokio::select! {
                // Also wake at least every 50 ms: a sleep of the process is noticed
                // by the clock check above whichever timer fires first after it.
                () = tokio::time::sleep_until(deadline.min(Instant::now() + Duration::from_millis(50)).into()) => {}
                r = expiry.changed() => if r.is_err() { return "lease keeper stopped" },
                r = lease_rx.changed() => if r.is_err() { return "membership stopped" },
            }
        }
    }

    /// Campaign for leadership; lead while the lease lives on our clock.
    async fn campaign(self: Arc<Self>, mut sd: watch::Receiver<bool>) {
        let mut lease_rx = self.lease.subscribe();
        loop {
            if *sd.borrow() {
                return;
            }
            let lease = *lease_rx.borrow_and_update();
            if lease == 0 {
                tokio::select! {
                    () = stopped(&mut sd) => return,
                    _ = lease_rx.changed() => continue,
                }
            }
            // Only campaign on a lease renewed recently: after a step down (or a
            // SIGSTOP) the old lease may be about to expire.
            let fresh = tokio::select! {
                () = stopped(&mut sd) => return,
                f = self.lease_fresh(lease, &mut lease_rx) => f,
            };
            if !fresh {
                continue;
            }
            let won = tokio::select! {
                () = stopped(&mut sd) => return,
                r = self.etcd.campaign(self.keys.election(), self.opts.id.as_str(), lease, Duration::from_secs(3600)) => r,
            };
            let leader = match won {
                Ok(l) => l,
                Err(e) => {
                    debug!(error = %e, "campaign failed; retrying");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue;
                }
            };
            let term = leader.rev();
            let elected = Instant::now();
            if self.may_lead() {
                self.stats.terms.fetch_add(1, Ordering::Relaxed);
                self.stats.term.store(term, Ordering::Relaxed);
                self.stats.leader.store(true, Ordering::Release);
                info!(node = %self.opts.id, term, "elected leader");
                let key = leader.key().to_vec();
                let lead = Arc::clone(&self).lead(term, key, sd.clone());
                // Step down on our own clock before the lease can expire, or when it
                // changes; checked first so a resumed process never runs a round late.
                let stepdown = self.must_step_down(lease, &mut lease_rx);
                tokio::select! {
                    biased;
                    why = stepdown => {
                        self.stats.stepdowns.fetch_add(1, Ordering::Relaxed);
                        warn!(node = %self.opts.id, term, why, led_ms = elected.elapsed().as_millis() as u64, "stepping down");
                    }
                    () = stopped(&mut sd) => {
                        self.stats.leader.store(false, Ordering::Release);
                        self.stats.term.store(0, Ordering::Relaxed);
                        let _ = self.etcd.resign(&leader).await;
                        return;
                    }
                    () = lead => {}
                }
                self.stats.leader.store(false, Ordering::Release);
                self.stats.term.store(0, Ordering::Relaxed);
            } else {
                warn!(node = %self.opts.id, term, "elected, but the lease is past its lead deadline; resigning");
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), self.etcd.resign(&leader)).await;
        }
    }
}

/// Operations per transaction at most: below etcd's default `--max-txn-ops` (128).
const MAX_TXN_OPS: usize = 100;

/// Environment variable overriding the suspect detector's hold-down (milliseconds;
/// default [`SuspectConfig::default`]'s 30 s). Tests set it short.
pub const SUSPECT_HOLD_DOWN_ENV: &str = "SONDE_SUSPECT_HOLD_DOWN_MS";

/// A stored check's validated spec (same rules as the config file), with the daemon's
/// `[defaults]` applied.
#[must_use]
pub fn parse_stored(value: &[u8], defaults: &Defaults) -> Option<CheckSpec> {
    let sc: StoredCheck = serde_json::from_slice(value).ok()?;
    match config::parse_check_json(&sc.check, defaults) {
        Ok(spec) => Some(spec),
        Err(e) => {
            warn!(error = %e, "invalid check definition in etcd; ignored");
            None
        }
    }
}
