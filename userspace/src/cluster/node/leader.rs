//! The leader: assignment, suspects and quorum verdicts, every write fenced by the term
//! and preceded by a check of the lead deadline on this node's clock.

use super::*;

impl Node {
    /// The leader loop: assignment and quorum health, fenced by `term`.
    pub(super) async fn lead(
        self: Arc<Self>,
        term: i64,
        leader_key: Vec<u8>,
        mut sd: watch::Receiver<bool>,
    ) {
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
fn opinions_of(keys: &Keys, kvs: &[crate::cluster::etcd::KeyValue]) -> Opinions {
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
