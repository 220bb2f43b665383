//! Real etcd members on loopback (no root) through sonde's resilient wrapper
//! (`sonde::cluster::etcd`): leader kill -9 failover, a watch without gaps across it, a
//! lease that survives it, a full outage that fails calls fast and clearly, and recovery with
//! the watch resuming from the last revision + 1. Failover times are printed
//! (`--nocapture`).

use std::time::{Duration, Instant};

use sonde::cluster::etcd::{Etcd, EtcdError, EtcdOptions, LeaseState, WatchUpdate};
use sonde_tests::etcd::EtcdCluster;
use tokio::sync::watch;

fn opts() -> EtcdOptions {
    EtcdOptions {
        timeout: Duration::from_secs(1),
        deadline: Duration::from_secs(3),
        ..EtcdOptions::default()
    }
}

/// Runs a blocking harness call without stalling the runtime's other tasks.
fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Collects watch updates until the event at revision `last` arrived (bounded by `within`).
async fn collect_until(
    w: &mut sonde::cluster::etcd::PrefixWatch,
    last: i64,
    within: Duration,
) -> (Vec<(String, i64)>, Vec<WatchUpdate>) {
    let (mut events, mut other) = (Vec::<(String, i64)>::new(), Vec::new());
    let end = tokio::time::Instant::now() + within;
    while events.last().is_none_or(|e| e.1 < last) {
        match tokio::time::timeout_at(end, w.next()).await {
            Ok(Some(WatchUpdate::Event(e))) => {
                events.push((String::from_utf8(e.key).unwrap(), e.revision));
            }
            Ok(Some(u)) => other.push(u),
            Ok(None) => panic!("watch task ended"),
            Err(_) => {
                panic!("no event at revision {last} within {within:?}: {events:?}, {other:?}")
            }
        }
    }
    (events, other)
}

/// Checks that `events` is the whole history from revision `first`: revisions contiguous
/// (no gap, no reordering, no duplicate delivery), every acknowledged put present, keys in
/// put order. A put whose attempt timed out but was applied, then retried, is applied twice
/// (see the wrapper's doc): its key then appears twice in a row. Returns how many did.
fn check_history(events: &[(String, i64)], puts: &[(String, i64)], first: i64) -> usize {
    assert_eq!(
        events[0].1, first,
        "history does not start at {first}: {events:?}"
    );
    assert!(
        events.windows(2).all(|p| p[1].1 == p[0].1 + 1),
        "gap: {events:?}"
    );
    for p in puts {
        assert!(events.contains(p), "put {p:?} not delivered: {events:?}");
    }
    let mut keys: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    keys.dedup();
    let want: Vec<&str> = puts.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(keys, want, "keys out of put order");
    events.len() - puts.len()
}

/// Waits for a lease state matching `f`, bounded.
async fn lease_until(
    rx: &mut watch::Receiver<LeaseState>,
    within: Duration,
    f: impl FnMut(&LeaseState) -> bool,
) -> LeaseState {
    *tokio::time::timeout(within, rx.wait_for(f))
        .await
        .expect("lease state in time")
        .expect("keep-alive running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_full_outage_and_recovery() {
    let test_start = Instant::now();
    let cluster = EtcdCluster::start(3).expect("start 3 etcd members");
    let healthy = block(|| cluster.wait_healthy(Duration::from_secs(5))).expect("healthy");
    println!("3 members healthy {healthy:?} after start");
    let leader = block(|| cluster.leader()).expect("a raft leader");

    // Every member serves; the wrapper's first endpoint is the leader, so killing it later
    // forces the retry path of unary calls and both streams.
    for (i, ep) in cluster.endpoints().iter().enumerate() {
        let single = Etcd::connect(&[ep], opts()).await.unwrap();
        single.put(format!("/t/ep{i}"), ep, None).await.unwrap();
    }
    let mut eps = cluster.endpoints();
    eps.rotate_left(leader);
    let etcd = Etcd::connect(&eps, opts()).await.unwrap();
    let listing = etcd.get_prefix("/t/").await.unwrap();
    assert_eq!(listing.kvs.len(), 3, "{listing:?}");
    let kv = etcd.get("/t/ep1").await.unwrap().expect("/t/ep1 stored");
    assert_eq!(kv.value, cluster.endpoint(1).as_bytes());
    assert!(etcd.get("/t/missing").await.unwrap().is_none());

    let lease = etcd.lease_grant(Duration::from_secs(2)).await.unwrap();
    etcd.put("/t/leased", "x", Some(lease.id)).await.unwrap();
    let keeper = etcd.keep_alive(lease.id, lease.ttl);
    let mut lease_rx = keeper.state();
    lease_until(&mut lease_rx, Duration::from_secs(2), |s| s.alive).await;

    let from = etcd.get_prefix("/w/").await.unwrap().revision + 1;
    let w = etcd.watch_prefix("/w/", from);
    let mut expected = Vec::new();
    for k in 0..10 {
        let key = format!("/w/{k:03}");
        expected.push((key.clone(), etcd.put(&key, "v", None).await.unwrap()));
    }

    // kill -9 the raft leader while a writer keeps going; the watch is read meanwhile so
    // that its reopening can be timed, and so is the lease's first renewal after the kill.
    let reader = tokio::spawn(async move {
        let mut w = w;
        let mut got = Vec::new();
        while let Ok(Some(u)) = tokio::time::timeout(Duration::from_secs(10), w.next()).await {
            let done = matches!(&u, WatchUpdate::Event(e) if e.key == b"/w/029");
            got.push((Instant::now(), u));
            if done {
                break;
            }
        }
        (w, got)
    });
    block(|| cluster.kill(leader)).unwrap();
    let killed = Instant::now();
    let renewed = tokio::spawn({
        let mut rx = lease_rx.clone();
        async move {
            rx.wait_for(|s| s.last_renewal > killed).await.unwrap();
            killed.elapsed()
        }
    });
    let writer = tokio::spawn({
        let etcd = etcd.clone();
        async move {
            let mut out = Vec::new();
            for k in 10..30 {
                let key = format!("/w/{k:03}");
                let t = Instant::now();
                let rev = etcd
                    .put(&key, "v", None)
                    .await
                    .expect("put after leader kill");
                out.push((key, rev, t.elapsed()));
            }
            out
        }
    });
    let new_leader = loop {
        match block(|| cluster.leader()) {
            Some(l) => break l,
            None if killed.elapsed() < Duration::from_secs(5) => {}
            None => panic!("no new raft leader within 5 s"),
        }
    };
    let leader_after = killed.elapsed();
    assert_ne!(new_leader, leader);
    let writes = writer.await.unwrap();
    let first_put = writes[0].2;
    let slowest = writes.iter().map(|w| w.2).max().unwrap();
    assert!(
        first_put < Duration::from_secs(3),
        "first put took {first_put:?}"
    );
    expected.extend(writes.into_iter().map(|(k, r, _)| (k, r)));
    println!(
        "leader kill: new raft leader (member {new_leader}) seen {leader_after:?} after kill; \
         first put succeeded after {first_put:?}, slowest of 20 puts {slowest:?}"
    );

    // The watch opened before the kill delivers every put, in order, no gaps.
    let (mut w, got) = reader.await.unwrap();
    let resumed = got.iter().find_map(|(t, u)| {
        matches!(u, WatchUpdate::Resumed { .. }).then(|| t.saturating_duration_since(killed))
    });
    let (mut events, mut other) = (Vec::new(), Vec::new());
    for (_, u) in got {
        match u {
            WatchUpdate::Event(e) => events.push((String::from_utf8(e.key).unwrap(), e.revision)),
            u => other.push(u),
        }
    }
    let last = expected[expected.len() - 1].1;
    assert_eq!(
        events.last().map(|e| e.1),
        Some(last),
        "{events:?} {other:?}"
    );
    let twice = check_history(&events, &expected, from);
    println!(
        "watch across leader kill: {} events, revisions {from}..={last} without gaps ({twice} \
         retried puts applied twice); reopened {resumed:?} after the kill; {other:?}",
        events.len(),
    );
    let renewed = renewed.await.unwrap();
    println!("lease: first renewal acknowledged after the kill at {renewed:?}");

    // The lease outlives its TTL twice over after the kill.
    tokio::time::sleep((killed + 2 * lease.ttl).saturating_duration_since(Instant::now())).await;
    let s = *lease_rx.borrow();
    assert!(s.alive && !s.lost, "{s:?}");
    assert!(s.last_renewal.elapsed() < lease.ttl, "{s:?}");
    assert!(etcd.lease_time_to_live(lease.id).await.unwrap().is_some());
    assert!(etcd.get("/t/leased").await.unwrap().is_some());
    println!(
        "lease survived the leader kill; last renewal {:?} ago",
        s.last_renewal.elapsed()
    );

    block(|| cluster.restart(leader)).unwrap();
    block(|| cluster.wait_healthy(Duration::from_secs(5))).expect("healthy after restart");

    // Full outage: calls fail clearly within the deadline, the watch reports it, and the
    // lease stops being "alive" on the local clock exactly when its TTL runs out.
    let flip = tokio::spawn({
        let mut rx = lease_rx.clone();
        async move {
            let s = *rx.wait_for(|s| !s.alive).await.unwrap();
            (Instant::now(), s)
        }
    });
    let stopping = Instant::now();
    block(|| cluster.stop_all()).unwrap();
    let stopped = Instant::now();
    println!("stop_all took {:?}", stopped - stopping);
    let t = Instant::now();
    let err = etcd.get("/t/ep0").await.expect_err("etcd is down");
    let took = t.elapsed();
    println!("call with every member down failed after {took:?}: {err}");
    assert!(err.is_unavailable(), "{err}");
    assert!(
        took <= opts().deadline + Duration::from_millis(500),
        "{took:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("get") && msg.contains("/t/ep0") && msg.contains("127.0.0.1"),
        "{msg}"
    );
    assert!(matches!(
        err,
        EtcdError::Unavailable { .. } | EtcdError::Timeout { .. }
    ));

    let (flipped_at, s) = tokio::time::timeout(Duration::from_secs(5), flip)
        .await
        .expect("lease not alive after its TTL")
        .unwrap();
    assert!(flipped_at >= s.expires_at, "flipped before expiry: {s:?}");
    let late = flipped_at - s.expires_at;
    assert!(
        late < Duration::from_millis(300),
        "flipped {late:?} after expiry"
    );
    println!(
        "lease: not alive {:?} after the outage began, {late:?} after its local expiry",
        flipped_at.saturating_duration_since(stopping)
    );
    let last_rev = last;
    let interrupted = loop {
        match tokio::time::timeout(Duration::from_secs(3), w.next()).await {
            Ok(Some(u @ WatchUpdate::Interrupted { .. })) => break u,
            Ok(Some(WatchUpdate::Event(e))) => panic!("event during outage: {e:?}"),
            Ok(Some(_)) => {}
            other => panic!("no interruption reported: {other:?}"),
        }
    };
    println!("watch during outage: {interrupted:?}");

    // Recovery: calls work again, the watch resumes from the last revision + 1.
    block(|| cluster.start_all()).unwrap();
    let restarted = Instant::now();
    let rev = loop {
        match etcd.put("/w/030", "v", None).await {
            Ok(rev) => break rev,
            Err(e) if restarted.elapsed() < Duration::from_secs(10) => {
                println!("  while restarting: {e}");
            }
            Err(e) => panic!("etcd not back within 10 s: {e}"),
        }
    };
    println!(
        "full restart: first put succeeded {:?} after start_all (outage lasted {:?})",
        restarted.elapsed(),
        restarted - stopped
    );
    let mut expected = vec![("/w/030".to_string(), rev)];
    for k in 31..35 {
        let key = format!("/w/{k:03}");
        expected.push((key.clone(), etcd.put(&key, "v", None).await.unwrap()));
    }
    let last = expected[expected.len() - 1].1;
    let (events, other) = collect_until(&mut w, last, Duration::from_secs(10)).await;
    let twice = check_history(&events, &expected, last_rev + 1);
    assert!(
        other
            .iter()
            .any(|u| matches!(u, WatchUpdate::Resumed { .. })),
        "{other:?}"
    );
    println!(
        "watch resumed: {other:?}, then revisions up to {last} without gaps ({twice} retried \
         puts applied twice)"
    );

    // The keeper neither stalls nor gives up: renewed again, or told the lease is gone.
    let s = lease_until(&mut lease_rx, Duration::from_secs(5), |s| s.alive || s.lost).await;
    println!(
        "lease after the outage: alive={} lost={} (etcd keeps leases across a restart and \
         restarts their TTL)",
        s.alive, s.lost
    );
    drop(keeper);
    println!("test took {:?}", test_start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_lease_loss_and_compaction() {
    let cluster = EtcdCluster::start(1).expect("start etcd");
    block(|| cluster.wait_healthy(Duration::from_secs(5))).expect("healthy");
    assert_eq!(block(|| cluster.leader()), Some(0));
    let etcd = Etcd::connect(&cluster.endpoints(), opts()).await.unwrap();

    // Election: campaign, leader, a second candidate that is not elected in time, resign.
    let l1 = etcd.lease_grant(Duration::from_secs(5)).await.unwrap();
    let l2 = etcd.lease_grant(Duration::from_secs(5)).await.unwrap();
    let key = etcd
        .campaign("/e/lead", "node-1", l1.id, Duration::from_secs(2))
        .await
        .unwrap();
    let now = etcd.leader("/e/lead").await.unwrap().expect("a leader");
    assert_eq!(now.value, b"node-1");
    assert_eq!(now.lease, l1.id);
    let err = etcd
        .campaign("/e/lead", "node-2", l2.id, Duration::from_millis(300))
        .await
        .expect_err("second candidate must wait");
    assert!(
        matches!(&err, EtcdError::Timeout { call, .. } if call.op == "campaign"),
        "{err}"
    );
    etcd.resign(&key).await.unwrap();
    etcd.resign(&key).await.unwrap(); // already resigned: fine
    let after = etcd.leader("/e/lead").await.unwrap();
    assert!(after.is_none(), "{after:?}");

    // A revoked lease is reported lost by its keeper.
    let keeper = etcd.keep_alive(l1.id, l1.ttl);
    let mut rx = keeper.state();
    lease_until(&mut rx, Duration::from_secs(2), |s| s.alive).await;
    etcd.lease_revoke(l1.id).await.unwrap();
    etcd.lease_revoke(l1.id).await.unwrap(); // already gone: fine
    let s = lease_until(&mut rx, Duration::from_secs(4), |s| s.lost).await;
    assert!(!s.alive);
    assert_eq!(etcd.lease_time_to_live(l1.id).await.unwrap(), None);
    let err = etcd
        .put("/t/x", "v", Some(l1.id))
        .await
        .expect_err("lease gone");
    assert!(
        matches!(&err, EtcdError::Rejected { call, .. } if call.op == "put"),
        "{err}"
    );
    assert!(err.to_string().contains("/t/x"), "{err}");

    // Compaction is reported, then the watch goes on from the compaction revision.
    let r1 = etcd.put("/c/a", "1", None).await.unwrap();
    etcd.put("/c/a", "2", None).await.unwrap();
    let r3 = etcd.put("/c/a", "3", None).await.unwrap();
    etcd.compact(r3).await.unwrap();
    let mut w = etcd.watch_prefix("/c/", r1);
    let first = tokio::time::timeout(Duration::from_secs(3), w.next())
        .await
        .unwrap();
    assert_eq!(
        first,
        Some(WatchUpdate::Compacted {
            requested: r1,
            compact_revision: r3
        })
    );
    let (events, _) = collect_until(&mut w, r3, Duration::from_secs(3)).await;
    assert_eq!(events, vec![("/c/a".to_string(), r3)]);

    // From "now" (0): a change made before the watch exists is not delivered, later ones
    // are (puts until the watch is surely open); deletions carry no value.
    let before = etcd.put("/d/k", "old", None).await.unwrap();
    let mut w = etcd.watch_prefix("/d/", 0);
    let first = loop {
        let r = etcd.put("/d/k", "v", None).await.unwrap();
        match tokio::time::timeout(Duration::from_millis(300), w.next()).await {
            Ok(Some(WatchUpdate::Event(e))) => break (r, e),
            Ok(other) => panic!("{other:?}"),
            Err(_) => assert!(r < before + 20, "watch from now delivers nothing"),
        }
    };
    assert!(
        first.1.revision > before && first.1.revision <= first.0,
        "{first:?}"
    );
    let (deleted, rd) = etcd.delete_prefix("/d/").await.unwrap();
    assert_eq!(deleted, 1);
    let mut last = None;
    while last
        .as_ref()
        .is_none_or(|e: &sonde::cluster::etcd::WatchEvent| e.revision < rd)
    {
        match tokio::time::timeout(Duration::from_secs(3), w.next()).await {
            Ok(Some(WatchUpdate::Event(e))) => last = Some(e),
            other => panic!("{other:?}"),
        }
    }
    let last = last.unwrap();
    assert_eq!(
        (last.revision, last.key, last.value),
        (rd, b"/d/k".to_vec(), None)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_stamp_moves_on_every_put_and_delete() {
    let cluster = EtcdCluster::start(1).expect("start etcd");
    block(|| cluster.wait_healthy(Duration::from_secs(5))).expect("healthy");
    let etcd = Etcd::connect(&cluster.endpoints(), opts()).await.unwrap();
    assert_eq!(etcd.prefix_stamp("/s/").await.unwrap(), (0, 0));
    let r1 = etcd.put("/s/a", "1", None).await.unwrap();
    let r2 = etcd.put("/s/b", "1", None).await.unwrap();
    etcd.put("/t/outside", "1", None).await.unwrap();
    let s = etcd.prefix_stamp("/s/").await.unwrap();
    assert_eq!(s, (2, r2), "count and highest mod revision ({r1}, {r2})");
    assert_eq!(etcd.prefix_stamp("/s/").await.unwrap(), s, "unchanged");
    // An update of an older key raises the maximum; a delete lowers the count.
    let r3 = etcd.put("/s/a", "2", None).await.unwrap();
    assert_eq!(etcd.prefix_stamp("/s/").await.unwrap(), (2, r3));
    etcd.delete("/s/a").await.unwrap();
    assert_eq!(etcd.prefix_stamp("/s/").await.unwrap(), (1, r2));
}
