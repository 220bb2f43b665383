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

    /// Follow this node's assignment and the check definitions; reconcile the daemon.
    async fn follow(self: Arc<Self>, mut sd: watch::Receiver<bool>) {
        loop {
            if *sd.borrow() {
                return;
            }
            if let Err(e) = Arc::clone(&self).follow_once(&mut sd).await {
                warn!(error = %e, "following the assignment failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    /// One pass of following: read this node's assignment and the definitions, then
    /// apply every later change from watches that start right after those reads.
    ///
    /// The node acts on the newest assignment only: the watch on `P/assign/<id>` is a
    /// prefix watch, so keys of other nodes sharing the prefix (`n1` vs `n10`) are
    /// skipped; records of an older term or revision than the one applied are ignored.
    async fn follow_once(self: Arc<Self>, sd: &mut watch::Receiver<bool>) -> Result<(), EtcdError> {
        let mine = self.keys.assign(&self.opts.id);
        // Read the assignment with its store revision and watch from just after it: a
        // change landing between this read and the definitions' read is replayed.
        let a = self.etcd.get_prefix(&mine).await?;
        let checks = self.etcd.get_prefix(self.keys.checks()).await?;
        let defaults = self.local.defaults();
        let mut defs: HashMap<CheckId, CheckSpec> = HashMap::new();
        for kv in &checks.kvs {
            if let Some(spec) = parse_stored(&kv.value, &defaults) {
                defs.insert(spec.id.clone(), spec);
            }
        }
        let mut applied = Applied::default();
        if let Some(kv) = a.kvs.iter().find(|kv| kv.key == mine.as_bytes()) {
            applied.accept(kv.mod_revision, Some(&kv.value));
        }
        self.reconcile(&applied.wanted, &defs);
        let mut w_assign = self.etcd.watch_prefix(&mine, a.revision + 1);
        let mut w_checks = self
            .etcd
            .watch_prefix(self.keys.checks(), checks.revision + 1);
        loop {
            tokio::select! {
                () = stopped(sd) => return Ok(()),
                u = w_assign.next() => match u {
                    Some(WatchUpdate::Event(ev)) if ev.key == mine.as_bytes() => {
                        if applied.accept(ev.revision, ev.value.as_deref()) {
                            self.reconcile(&applied.wanted, &defs);
                        }
                    }
                    Some(WatchUpdate::Compacted { .. }) | None => return Ok(()),
                    Some(_) => {}
                },
                u = w_checks.next() => match u {
                    Some(WatchUpdate::Event(ev)) => {
                        let id = self.keys.tail(&self.keys.checks(), &utf8(&ev.key)).map(CheckId::new);
                        match (id, ev.value.as_deref().and_then(|v| parse_stored(v, &defaults))) {
                            (_, Some(spec)) => { defs.insert(spec.id.clone(), spec); }
                            (Some(id), None) => { defs.remove(&id); }
                            (None, None) => {}
                        }
                        self.reconcile(&applied.wanted, &defs);
                    }
                    Some(WatchUpdate::Compacted { .. }) | None => return Ok(()),
                    Some(_) => {}
                },
            }
        }
    }

    /// Make the daemon run exactly the wanted checks that have a definition, each with
    /// its newest definition.
    fn reconcile(&self, wanted: &BTreeSet<CheckId>, defs: &HashMap<CheckId, CheckSpec>) {
        let running = self.local.running();
        let add: Vec<CheckSpec> = wanted
            .iter()
            .filter(|id| !running.contains_key(*id))
            .filter_map(|id| defs.get(id).cloned())
            .collect();
        let change: Vec<CheckSpec> = running
            .iter()
            .filter(|(id, _)| wanted.contains(*id))
            .filter_map(|(id, spec)| defs.get(id).filter(|d| **d != **spec).cloned())
            .collect();
        let remove: Vec<CheckId> = running
            .keys()
            .filter(|id| !wanted.contains(*id) || !defs.contains_key(*id))
            .cloned()
            .collect();
        if !add.is_empty() || !change.is_empty() || !remove.is_empty() {
            info!(node = %self.opts.id, add = add.len(), change = change.len(), remove = remove.len(), "assignment applied");
            self.local.apply(add, change, remove);
        }
    }

    /// Publish this node's opinion of a check whenever it changes; queue while etcd is
    /// unreachable and flush in order.
    ///
    /// The daemon's event stream is drained before every write so it does not lag
    /// while etcd is slow; opinions are written in transactions of up to
    /// [`MAX_TXN_OPS`] puts (in queue order, a batch ends before a key repeats, so every
    /// transition of a check lands as its own revision).
    async fn observe(self: Arc<Self>, mut sd: watch::Receiver<bool>) {
        let mut events = self.local.subscribe();
        let mut q = Outbox::default();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut etcd_ok = true;
        loop {
            if *sd.borrow() {
                return;
            }
            // Wait only when there is nothing to write, or etcd just failed.
            if q.pending.is_empty() || !etcd_ok {
                tokio::select! {
                    () = stopped(&mut sd) => return,
                    e = events.recv() => if !self.on_event(e, &mut q) { return },
                    _ = tick.tick() => {}
                }
            }
            loop {
                match events.try_recv() {
                    Ok(ev) => {
                        self.on_event(Ok(ev), &mut q);
                    }
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        self.on_event(Err(broadcast::error::RecvError::Lagged(n)), &mut q);
                    }
                    Err(broadcast::error::TryRecvError::Empty) => break,
                    Err(broadcast::error::TryRecvError::Closed) => return,
                }
            }
            if !q.pending.is_empty() {
                etcd_ok = self.flush_batch(&mut q.pending).await;
            }
        }
    }

    /// Take one event of the daemon into the outbox; false when the stream closed.
    fn on_event(&self, e: Result<Arc<Event>, broadcast::error::RecvError>, q: &mut Outbox) -> bool {
        match e {
            Ok(ev) => match &*ev {
                Event::Transition(t) => {
                    let rec = ObservationRecord {
                        health: t.to,
                        reason: t.reason.clone(),
                        at_unix_ms: unix_ms(),
                    };
                    self.enqueue(q, t.check.clone(), rec);
                }
                Event::CheckRemoved { id } => {
                    q.latest.remove(id);
                }
                _ => {}
            },
            Err(broadcast::error::RecvError::Lagged(n)) => {
                // Transitions were lost between the daemon and this task: count them as
                // dropped, and publish the current opinion of every check whose latest
                // queued or written one differs, so etcd ends up with the latest state.
                self.stats.events_lagged.fetch_add(n, Ordering::Relaxed);
                self.stats
                    .observations_dropped
                    .fetch_add(n, Ordering::Relaxed);
                let mut republished = 0usize;
                for id in self.local.running().into_keys() {
                    if let Some((health, reason)) = self.local.opinion(&id) {
                        if q.latest.get(&id) != Some(&health) {
                            let rec = ObservationRecord {
                                health,
                                reason,
                                at_unix_ms: unix_ms(),
                            };
                            self.enqueue(q, id, rec);
                            republished += 1;
                        }
                    }
                }
                warn!(
                    missed = n,
                    republished,
                    "observation stream lagged; transitions dropped, current opinions republished"
                );
            }
            Err(broadcast::error::RecvError::Closed) => return false,
        }
        true
    }

    /// Write the oldest queued opinions in one transaction (at most [`MAX_TXN_OPS`],
    /// ending before a key repeats). Returns false when etcd could not be written.
    async fn flush_batch(&self, pending: &mut VecDeque<(CheckId, ObservationRecord)>) -> bool {
        let mut keys: BTreeSet<&CheckId> = BTreeSet::new();
        let mut ops = Vec::new();
        for (check, rec) in pending.iter().take(MAX_TXN_OPS) {
            if !keys.insert(check) {
                break;
            }
            let key = self.keys.observation(check, &self.opts.id);
            let value = serde_json::to_vec(rec).unwrap_or_default();
            ops.push(TxnOp::put(key, value, None));
        }
        let n = ops.len();
        match self
            .etcd
            .txn("observations", Txn::new().and_then(ops))
            .await
        {
            Ok(_) => {
                pending.drain(..n);
                self.stats
                    .observations_written
                    .fetch_add(n as u64, Ordering::Relaxed);
                true
            }
            Err(e) => {
                debug!(error = %e, queued = pending.len(), "etcd unreachable; observations kept in order");
                false
            }
        }
    }

    /// Queue an observation, dropping (and counting) the oldest one when the queue is
    /// full.
    fn enqueue(&self, q: &mut Outbox, check: CheckId, rec: ObservationRecord) {
        if q.pending.len() >= self.opts.max_pending.max(1) {
            q.pending.pop_front();
            self.stats
                .observations_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
        q.latest.insert(check.clone(), rec.health);
        q.pending.push_back((check, rec));
    }

    /// The leader loop: assignment and quorum health, fenced by `term`.
    async fn lead(self: Arc<Self>, term: i64, leader_key: Vec<u8>, mut sd: watch::Receiver<bool>) {
        let mut state = LeaderState {
            assignment: None,
            assigned_for: None,
            health: HashMap::new(),
            detector: SuspectDetector::new(suspect_config()),
            suspects: BTreeSet::new(),
            started: tokio::time::Instant::now(),
            defs: (None, Arc::default()),
            opinions: (None, Arc::default()),
            swept_for: None,
        };
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                () = stopped(&mut sd) => return,
                _ = tick.tick() => {}
            }
            match self.lead_round(term, &leader_key, &mut state).await {
                Ok(Round::Done) => {}
                Ok(Round::FencedOut) => {
                    self.stats.fenced_out.fetch_add(1, Ordering::Relaxed);
                    warn!(node = %self.opts.id, term, "a fenced write was refused: no longer leader");
                    return;
                }
                Ok(Round::PastDeadline) => {
                    warn!(node = %self.opts.id, term, "lease past its lead deadline: no more leader writes");
                    return;
                }
                Err(e) => warn!(error = %e, term, "leader round failed; retrying"),
            }
        }
    }

    /// One leader round. Before every fenced write it checks the lead deadline on this
    /// node's clock (fencing in etcd is the second line of defence).
    async fn lead_round(
        &self,
        term: i64,
        leader_key: &[u8],
        st: &mut LeaderState,
    ) -> Result<Round, EtcdError> {
        let fence = || Compare::create_revision(leader_key.to_vec(), CompareOp::Equal, term);
        let nodes = self.etcd.get_prefix(self.keys.nodes()).await?;
        let mut live: Vec<NodeId> = nodes
            .kvs
            .iter()
            .filter_map(|kv| {
                self.keys
                    .tail(&self.keys.nodes(), &utf8(&kv.key))
                    .map(NodeId::new)
            })
            .collect();
        live.sort();
        // The definitions and opinions are re-read only when their prefix changed (with
        // 10,000 checks each is megabytes, and a round runs 4 times a second).
        let stamp = self.etcd.prefix_stamp(self.keys.checks()).await?;
        if st.defs.0 != Some(stamp) {
            let checks = self.etcd.get_prefix(self.keys.checks()).await?;
            let mut defs: BTreeMap<CheckId, StoredCheck> = BTreeMap::new();
            for kv in &checks.kvs {
                if let (Ok(sc), Some(id)) = (
                    serde_json::from_slice::<StoredCheck>(&kv.value),
                    self.keys.tail(&self.keys.checks(), &utf8(&kv.key)),
                ) {
                    defs.insert(CheckId::new(id), sc);
                }
            }
            st.defs = (Some(stamp), Arc::new(defs));
        }
        let defs = Arc::clone(&st.defs.1);
        // Assignment, when membership or the check set changed.
        let inputs: Vec<(CheckId, u8)> = defs
            .iter()
            .map(|(id, sc)| (id.clone(), sc.replicas.max(1)))
            .collect();
        if st.assigned_for.as_ref() != Some(&(live.clone(), inputs.clone())) {
            if st.assignment.is_none() {
                // A new term starts from the verdicts in etcd: without a quorum a check
                // keeps its previous verdict, also across a change of leader.
                st.health = self.read_health().await?;
                // And from the suspects a previous leader marked, so they are cleared
                // when this term's detector does not confirm them.
                let sus = self.etcd.get_prefix(self.keys.suspects()).await?;
                st.suspects = sus
                    .kvs
                    .iter()
                    .filter_map(|kv| {
                        self.keys
                            .tail(&self.keys.suspects(), &utf8(&kv.key))
                            .map(NodeId::new)
                    })
                    .collect();
                st.assignment = Some(self.read_assignment().await?);
            }
            let next = assign(&inputs, &live, st.assignment.as_ref());
            let mut ops: Vec<TxnOp> = Vec::new();
            for n in &live {
                let rec = AssignmentRecord {
                    node: n.clone(),
                    checks: next.for_node(n),
                    leader: self.opts.id.clone(),
                    term,
                };
                ops.push(TxnOp::put(
                    self.keys.assign(n),
                    serde_json::to_vec(&rec).unwrap_or_default(),
                    None,
                ));
            }
            if let Some(prev) = &st.assignment {
                for n in prev.load().keys().filter(|n| !live.contains(n)) {
                    ops.push(TxnOp::delete(self.keys.assign(n), None));
                }
            }
            if !self.may_lead() {
                return Ok(Round::PastDeadline);
            }
            let resp = self
                .etcd
                .txn("assignment", Txn::new().when(vec![fence()]).and_then(ops))
                .await?;
            if !resp.succeeded() {
                return Ok(Round::FencedOut);
            }
            let moved = st.assignment.as_ref().map_or(0, |p| next.moved_from(p));
            info!(
                term,
                nodes = live.len(),
                checks = inputs.len(),
                moved,
                "assignment written"
            );
            self.stats
                .assignments_written
                .fetch_add(1, Ordering::Relaxed);
            st.assignment = Some(next);
            st.assigned_for = Some((live.clone(), inputs));
        }
        // Quorum health from the replicas' opinions.
        let stamp = self.etcd.prefix_stamp(self.keys.observations()).await?;
        if st.opinions.0 != Some(stamp) {
            let obs = self.etcd.get_prefix(self.keys.observations()).await?;
            st.opinions = (Some(stamp), Arc::new(opinions_of(&self.keys, &obs.kvs)));
        }
        let opinions = Arc::clone(&st.opinions.1);
        let Some(assignment) = st.assignment.clone() else {
            return Ok(Round::Done);
        };

        let now_ms = unix_ms();
        // The hold-down runs on the monotonic clock (ms since this term began): a wall
        // clock step must not clear or prolong a suspicion.
        let mono_ms = u64::try_from(st.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let suspects = st
            .detector
            .evaluate(&views(&assignment, &opinions), mono_ms);
        if suspects != st.suspects {
            let mut ops = Vec::new();
            for n in suspects.difference(&st.suspects) {
                let rec = SuspectRecord {
                    node: n.clone(),
                    term,
                    since_unix_ms: now_ms,
                };
                ops.push(TxnOp::put(
                    self.keys.suspect(n),
                    serde_json::to_vec(&rec).unwrap_or_default(),
                    None,
                ));
            }
            for n in st.suspects.difference(&suspects) {
                ops.push(TxnOp::delete(self.keys.suspect(n), None));
            }
            if !self.may_lead() {
                return Ok(Round::PastDeadline);
            }
            let resp = self
                .etcd
                .txn("suspects", Txn::new().when(vec![fence()]).and_then(ops))
                .await?;
            if !resp.succeeded() {
                return Ok(Round::FencedOut);
            }
            warn!(term, suspects = ?suspects, "suspect nodes changed");
            st.suspects = suspects;
        }
        let mut ops = Vec::new();
        let mut decided = Vec::new();
        for (check, replicas) in assignment.iter() {
            let rule = defs.get(check).map(|d| d.quorum).unwrap_or_default();
            let v = decide(
                rule,
                replicas,
                opinions.get(check).map_or(&[][..], Vec::as_slice),
                &st.suspects,
            );
            let health = v.or(st.health.get(check).copied().unwrap_or(Health::Unknown));
            if st.health.get(check) != Some(&health) {
                let rec = HealthRecord {
                    health,
                    counted: v.counted,
                    healthy: v.healthy,
                    unhealthy: v.unhealthy,
                    ignored_suspect: v.ignored_suspect,
                    term,
                    at_unix_ms: now_ms,
                };
                ops.push(TxnOp::put(
                    self.keys.health(check),
                    serde_json::to_vec(&rec).unwrap_or_default(),
                    None,
                ));
                decided.push((check.clone(), health));
            }
        }
        // etcd refuses transactions of more than 128 operations (--max-txn-ops): write
        // the verdicts in fenced chunks; each chunk is remembered once written, so a
        // failed one is retried next round without rewriting the others.
        for (ops, decided) in ops.chunks(MAX_TXN_OPS).zip(decided.chunks(MAX_TXN_OPS)) {
            if !self.may_lead() {
                return Ok(Round::PastDeadline);
            }
            let txn = Txn::new().when(vec![fence()]).and_then(ops.to_vec());
            let resp = self.etcd.txn("health", txn).await?;
            if !resp.succeeded() {
                return Ok(Round::FencedOut);
            }
            self.stats
                .health_written
                .fetch_add(decided.len() as u64, Ordering::Relaxed);
            for (c, h) in decided {
                info!(check = %c, health = ?h, term, "cluster health");
                st.health.insert(c.clone(), *h);
            }
        }
        self.sweep(term, leader_key, st, &defs, &opinions).await
    }

    /// Delete the records of removed checks: their verdict and every replica's opinion
    /// (they would pile up in etcd, and a check added again under the same id must start
    /// without a verdict). Fenced like every leader write; runs only when the
    /// definitions, the opinions or the assignment changed. Opinions of nodes that merely
    /// stopped holding a check are kept: quorum ignores them, and deleting them while a
    /// node's queued opinions are still on their way (etcd outage, re-registration)
    /// would put deletions into a replica's history.
    async fn sweep(
        &self,
        term: i64,
        leader_key: &[u8],
        st: &mut LeaderState,
        defs: &Defs,
        opinions: &Opinions,
    ) -> Result<Round, EtcdError> {
        let fence = || Compare::create_revision(leader_key.to_vec(), CompareOp::Equal, term);
        let inputs = (st.defs.0, st.opinions.0, st.assigned_for.clone());
        if st.swept_for.as_ref() == Some(&inputs) {
            return Ok(Round::Done);
        }
        let mut keys: Vec<String> = Vec::new();
        for (check, ops) in opinions.iter().filter(|(c, _)| !defs.contains_key(*c)) {
            keys.extend(ops.iter().map(|o| self.keys.observation(check, &o.node)));
        }
        let gone: Vec<CheckId> = st
            .health
            .keys()
            .filter(|c| !defs.contains_key(*c))
            .cloned()
            .collect();
        keys.extend(gone.iter().map(|c| self.keys.health(c)));
        for chunk in keys.chunks(MAX_TXN_OPS) {
            if !self.may_lead() {
                return Ok(Round::PastDeadline);
            }
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|k| TxnOp::delete(k.clone(), None))
                .collect();
            let resp = self
                .etcd
                .txn("sweep", Txn::new().when(vec![fence()]).and_then(ops))
                .await?;
            if !resp.succeeded() {
                return Ok(Round::FencedOut);
            }
        }
        if !keys.is_empty() {
            info!(
                term,
                deleted = keys.len(),
                "records of removed checks deleted"
            );
        }
        for c in &gone {
            st.health.remove(c);
        }
        st.swept_for = Some(inputs);
        Ok(Round::Done)
    }

    /// The cluster verdicts in etcd (as written by this or an earlier leader).
    async fn read_health(&self) -> Result<HashMap<CheckId, Health>, EtcdError> {
        let l = self.etcd.get_prefix(self.keys.healths()).await?;
        Ok(l.kvs
            .iter()
            .filter_map(|kv| {
                let key = utf8(&kv.key);
                let check = CheckId::new(self.keys.tail(&self.keys.healths(), &key)?);
                let rec = serde_json::from_slice::<HealthRecord>(&kv.value).ok()?;
                Some((check, rec.health))
            })
            .collect())
    }

    async fn read_assignment(&self) -> Result<Assignment, EtcdError> {
        let l = self.etcd.get_prefix(self.keys.assigns()).await?;
        let mut sets: BTreeMap<CheckId, Vec<NodeId>> = BTreeMap::new();
        for kv in &l.kvs {
            if let Ok(r) = serde_json::from_slice::<AssignmentRecord>(&kv.value) {
                for c in r.checks {
                    sets.entry(c).or_default().push(r.node.clone());
                }
            }
        }
        Ok(Assignment::from_replicas(sets))
    }
}

/// Opinions waiting to be written, and the latest one queued or written per check.
#[derive(Debug, Default)]
struct Outbox {
    /// In order; written from the front.
    pending: VecDeque<(CheckId, ObservationRecord)>,
    /// The latest opinion queued or written of each running check (to republish only
    /// what differs after the event stream lagged).
    latest: HashMap<CheckId, Health>,
}

/// Operations per transaction at most: below etcd's default `--max-txn-ops` (128).
const MAX_TXN_OPS: usize = 100;

/// How a leader round ended.
enum Round {
    /// Written what had to be written (or nothing had to be).
    Done,
    /// A fenced write was refused: another node leads now.
    FencedOut,
    /// The lease was not renewed in time on this node's clock: stop leading.
    PastDeadline,
}

/// What an assignment is computed from: live nodes, and checks with their replicas.
type AssignInputs = (Vec<NodeId>, Vec<(CheckId, u8)>);

/// What the leader remembers between rounds.
struct LeaderState {
    /// The assignment it wrote last (or read at the start of its term).
    assignment: Option<Assignment>,
    /// The (nodes, checks) that assignment was computed for.
    assigned_for: Option<AssignInputs>,
    /// Cluster health it wrote last, per check.
    health: HashMap<CheckId, Health>,
    /// Suspect detection.
    detector: SuspectDetector,
    /// Suspects it wrote last.
    suspects: BTreeSet<NodeId>,
    /// Start of the term on the monotonic clock: the suspect detector's time base.
    started: tokio::time::Instant,
    /// The check definitions and the stamp of `P/checks/` they were read at.
    defs: (Option<Stamp>, Arc<Defs>),
    /// The replicas' opinions and the stamp of `P/obs/` they were read at.
    opinions: (Option<Stamp>, Arc<Opinions>),
    /// What the last sweep of removed checks' records ran for (definitions, opinions,
    /// assignment).
    swept_for: Option<SweepInputs>,
}

/// The inputs of a sweep: stamps of the definitions and opinions, and what the
/// assignment was computed for.
type SweepInputs = (Option<Stamp>, Option<Stamp>, Option<AssignInputs>);

/// Opinions per check.
type Opinions = BTreeMap<CheckId, Vec<Opinion>>;

/// Check definitions by id.
type Defs = BTreeMap<CheckId, StoredCheck>;

/// A prefix's (key count, highest mod revision), see [`Etcd::prefix_stamp`].
type Stamp = (i64, i64);

/// The opinions stored under `P/obs/`.
fn opinions_of(keys: &Keys, kvs: &[super::etcd::KeyValue]) -> Opinions {
    let mut opinions = Opinions::new();
    for kv in kvs {
        let key = utf8(&kv.key);
        if let (Some((c, n)), Ok(rec)) = (
            keys.observation_parts(&key),
            serde_json::from_slice::<ObservationRecord>(&kv.value),
        ) {
            opinions.entry(CheckId::new(c)).or_default().push(Opinion {
                node: NodeId::new(n),
                health: rec.health,
                revision: kv.mod_revision,
            });
        }
    }
    opinions
}

/// Environment variable overriding the suspect detector's hold-down (milliseconds;
/// default [`SuspectConfig::default`]'s 30 s). Tests set it short.
pub const SUSPECT_HOLD_DOWN_ENV: &str = "SONDE_SUSPECT_HOLD_DOWN_MS";

/// The suspect detector's thresholds: the defaults, with the hold-down from
/// [`SUSPECT_HOLD_DOWN_ENV`] when it is set to a number of milliseconds.
fn suspect_config() -> SuspectConfig {
    let mut config = SuspectConfig::default();
    match std::env::var(SUSPECT_HOLD_DOWN_ENV).map(|v| v.trim().parse::<u64>()) {
        Ok(Ok(ms)) => config.hold_down = ms,
        Ok(Err(e)) => {
            warn!(error = %e, "{SUSPECT_HOLD_DOWN_ENV} is not a number of milliseconds; ignored")
        }
        Err(_) => {}
    }
    config
}

/// The assignment a follower acts on: the newest record of its own key.
#[derive(Debug, Default)]
struct Applied {
    /// Store revision of the record applied (0: none yet).
    revision: i64,
    /// Its term (the leader's election key create revision).
    term: i64,
    /// The checks it assigns to this node.
    wanted: BTreeSet<CheckId>,
}

impl Applied {
    /// Take the record written at `revision` (`None`: the key was deleted) if it is
    /// newer than the one applied, by revision and by term. Returns whether `wanted`
    /// may have changed.
    fn accept(&mut self, revision: i64, value: Option<&[u8]>) -> bool {
        if revision <= self.revision {
            debug!(
                revision,
                applied = self.revision,
                "ignoring an assignment not newer than the applied one"
            );
            return false;
        }
        match value.map(serde_json::from_slice::<AssignmentRecord>) {
            Some(Ok(r)) if r.term >= self.term => {
                self.revision = revision;
                self.term = r.term;
                self.wanted = r.checks.into_iter().collect();
                true
            }
            Some(Ok(r)) => {
                debug!(
                    term = r.term,
                    newest = self.term,
                    "ignoring an older term's assignment"
                );
                false
            }
            Some(Err(e)) => {
                warn!(error = %e, revision, "unreadable assignment record; ignored");
                false
            }
            None => {
                // Deleted: the leader dropped this node (it was not live); its next
                // assignment comes with a newer revision.
                self.revision = revision;
                self.wanted.clear();
                true
            }
        }
    }
}

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

/// The node's counters in Prometheus text format, labelled with its id (appended to
/// the daemon's `/metrics`).
#[must_use]
pub fn render_metrics(node: &str, s: &NodeStats) -> String {
    let node = node.replace('\\', "\\\\").replace('"', "\\\"");
    let rows: [(&str, &str, &str, u64); 10] = [
        (
            "sonde_cluster_acting_leader",
            "gauge",
            "1 while this node acts as the cluster leader on its own clock (0 within 2/3 lease TTL of its last renewal, before etcd can expire its lease; sonde_cluster_is_leader is etcd's view, refreshed every 2 s)",
            u64::from(s.leader.load(Ordering::Acquire)),
        ),
        (
            "sonde_cluster_term",
            "gauge",
            "The term this node leads (election revision), 0 when not leading",
            u64::try_from(s.term.load(Ordering::Relaxed)).unwrap_or(0),
        ),
        (
            "sonde_cluster_terms_total",
            "counter",
            "Terms won",
            s.terms.load(Ordering::Relaxed),
        ),
        (
            "sonde_cluster_stepdowns_total",
            "counter",
            "Times this node stopped leading on its own clock (lease not renewed in time)",
            s.stepdowns.load(Ordering::Relaxed),
        ),
        (
            "sonde_cluster_fenced_out_total",
            "counter",
            "Leader writes refused by fencing (another node leads)",
            s.fenced_out.load(Ordering::Relaxed),
        ),
        (
            "sonde_cluster_assignments_written_total",
            "counter",
            "Assignment transactions written as leader",
            s.assignments_written.load(Ordering::Relaxed),
        ),
        (
            "sonde_cluster_health_written_total",
            "counter",
            "Cluster health verdicts written as leader",
            s.health_written.load(Ordering::Relaxed),
        ),
        (
            "sonde_cluster_observations_written_total",
            "counter",
            "Observations (this node's opinion changes) written to etcd",
            s.observations_written.load(Ordering::Relaxed),
        ),
        (
            "sonde_cluster_observations_dropped_total",
            "counter",
            "Observations dropped: pending queue full while etcd was away, or transitions missed when the event stream lagged",
            s.observations_dropped.load(Ordering::Relaxed),
        ),
        (
            "sonde_cluster_events_lagged_total",
            "counter",
            "Transitions the cluster node missed because the daemon's event stream lagged (current opinions republished)",
            s.events_lagged.load(Ordering::Relaxed),
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, v) in rows {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{node=\"{node}\"}} {v}\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(term: i64, checks: &[&str]) -> Vec<u8> {
        serde_json::to_vec(&AssignmentRecord {
            node: NodeId::new("n1"),
            checks: checks.iter().map(|c| CheckId::new(c)).collect(),
            leader: NodeId::new("n2"),
            term,
        })
        .expect("json")
    }

    fn wanted(a: &Applied) -> Vec<&str> {
        a.wanted.iter().map(CheckId::as_str).collect()
    }

    #[test]
    fn a_follower_acts_on_the_newest_assignment_only() {
        let mut a = Applied::default();
        assert!(a.accept(10, Some(&rec(5, &["a", "b"]))));
        assert_eq!(wanted(&a), ["a", "b"]);
        // A replayed or older revision changes nothing.
        assert!(!a.accept(10, Some(&rec(5, &["x"]))));
        assert!(!a.accept(9, Some(&rec(7, &["x"]))));
        // A newer revision of an older term (a deposed leader) is ignored too.
        assert!(!a.accept(11, Some(&rec(4, &["x"]))));
        assert_eq!(wanted(&a), ["a", "b"]);
        // Unreadable records are ignored.
        assert!(!a.accept(12, Some(b"{")));
        // The newer term wins; a deletion clears; an older term cannot come back after it.
        assert!(a.accept(13, Some(&rec(7, &["c"]))));
        assert_eq!(wanted(&a), ["c"]);
        assert!(a.accept(14, None));
        assert!(wanted(&a).is_empty());
        assert!(!a.accept(15, Some(&rec(5, &["a"]))));
        assert!(a.accept(16, Some(&rec(7, &["d"]))));
        assert_eq!(wanted(&a), ["d"]);
    }

    #[test]
    fn metrics_name_the_node_and_its_role() {
        let s = NodeStats::default();
        s.leader.store(true, Ordering::Relaxed);
        s.term.store(42, Ordering::Relaxed);
        s.events_lagged.store(3, Ordering::Relaxed);
        let text = render_metrics("n\"1", &s);
        assert!(
            text.contains("sonde_cluster_acting_leader{node=\"n\\\"1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("sonde_cluster_term{node=\"n\\\"1\"} 42\n"),
            "{text}"
        );
        assert!(text.contains("sonde_cluster_events_lagged_total{node=\"n\\\"1\"} 3\n"));
        assert_eq!(text.matches("# TYPE").count(), 10);
    }
}
