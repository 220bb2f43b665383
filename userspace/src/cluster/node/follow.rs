//! Following: this node's own assignment and the check definitions, reconciled into the
//! daemon (newest assignment revision and term only).

use super::*;

impl Node {
    /// Follow this node's assignment and the check definitions; reconcile the daemon.
    pub(super) async fn follow(self: Arc<Self>, mut sd: watch::Receiver<bool>) {
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
}
