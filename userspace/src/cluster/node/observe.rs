//! Observations: this node's opinion of each check it runs, written to etcd when it
//! changes (batched, in order, queued while etcd is away), and withdrawn (deleted) when
//! the node stops running the check, so that an old opinion never counts again if the
//! check comes back to this node later.

use super::*;

impl Node {
    /// Publish this node's opinion of a check whenever it changes; queue while etcd is
    /// unreachable and flush in order.
    ///
    /// The daemon's event stream is drained before every write so it does not lag
    /// while etcd is slow; opinions are written in transactions of up to
    /// [`MAX_TXN_OPS`] puts (in queue order, a batch ends before a key repeats, so every
    /// transition of a check lands as its own revision).
    pub(super) async fn observe(self: Arc<Self>, mut sd: watch::Receiver<bool>) {
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
                // A transition can be announced after its check was removed here (the
                // result loop journals a batch before announcing it, and the removal's
                // event may pass it): publishing it then would leave an opinion of a
                // check this node no longer holds, after its withdrawal.
                Event::Transition(t) if self.local.opinion(&t.check).is_none() => {
                    debug!(check = %t.check, "transition of a check no longer held here; not published");
                }
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
                    self.enqueue_withdrawal(q, id.clone());
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
    async fn flush_batch(
        &self,
        pending: &mut VecDeque<(CheckId, Option<ObservationRecord>)>,
    ) -> bool {
        let mut keys: BTreeSet<&CheckId> = BTreeSet::new();
        let mut ops = Vec::new();
        for (check, rec) in pending.iter().take(MAX_TXN_OPS) {
            if !keys.insert(check) {
                break;
            }
            let key = self.keys.observation(check, &self.opts.id);
            ops.push(match rec {
                Some(rec) => TxnOp::put(key, serde_json::to_vec(rec).unwrap_or_default(), None),
                None => TxnOp::delete(key, None),
            });
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
        q.pending.push_back((check, Some(rec)));
    }

    /// Queue the deletion of this node's opinion of `check` (it no longer runs it), after
    /// every opinion of it already queued.
    fn enqueue_withdrawal(&self, q: &mut Outbox, check: CheckId) {
        if q.pending.len() >= self.opts.max_pending.max(1) {
            q.pending.pop_front();
            self.stats
                .observations_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
        q.pending.push_back((check, None));
    }
}

/// Opinions waiting to be written, and the latest one queued or written per check.
#[derive(Debug, Default)]
struct Outbox {
    /// In order; written from the front (`None`: delete this node's opinion).
    pending: VecDeque<(CheckId, Option<ObservationRecord>)>,
    /// The latest opinion queued or written of each running check (to republish only
    /// what differs after the event stream lagged).
    latest: HashMap<CheckId, Health>,
}
