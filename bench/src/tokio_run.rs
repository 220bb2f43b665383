//! Baseline: what a plain tokio program does with the same targets: `--inflight`
//! tasks, each looping TcpStream::connect under tokio::time::timeout.

use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::Result;
use serde_json::json;
use tokio::{net::TcpStream, time::Instant};

use crate::{cpu, Args, Tally};

#[derive(Default)]
struct Shared {
    next: AtomicU64,
    matched: AtomicU64,
    timeouts: AtomicU64,
    other: Mutex<BTreeMap<String, u64>>,
}

async fn prober(s: Arc<Shared>, addrs: Arc<Vec<SocketAddr>>, t0: Instant, args: Arc<Args>) {
    let end = t0 + Duration::from_secs(args.duration);
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    loop {
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if let Some(rate) = args.rate {
            #[allow(clippy::cast_precision_loss)]
            let at = t0 + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(at).await;
        }
        if Instant::now() >= end {
            // This number was taken but never used: give it back to the count.
            s.next.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let a = addrs[usize::try_from(i % addrs.len() as u64).unwrap_or(0)];
        match tokio::time::timeout(timeout, TcpStream::connect(a)).await {
            Ok(Ok(_)) => s.matched.fetch_add(1, Ordering::Relaxed),
            Ok(Err(e)) if e.kind() == ErrorKind::ConnectionRefused => {
                s.matched.fetch_add(1, Ordering::Relaxed)
            }
            Err(_) => s.timeouts.fetch_add(1, Ordering::Relaxed),
            Ok(Err(e)) => {
                let mut o = s
                    .other
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                *o.entry(format!("{:?}", e.kind())).or_insert(0) += 1;
                0
            }
        };
    }
}

/// Run the baseline for `dur`.
pub fn run(args: &Args, addrs: &[Ipv4Addr], dur: Duration) -> Result<Tally> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    let addrs: Arc<Vec<SocketAddr>> = Arc::new(
        addrs
            .iter()
            .map(|a| SocketAddr::from((*a, args.port)))
            .collect(),
    );
    let shared = Arc::new(Shared::default());
    let a = Arc::new(Args {
        duration: dur.as_secs(),
        ..args.clone()
    });
    let start = cpu::Snapshot::now();
    rt.block_on(async {
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..args.inflight)
            .map(|_| tokio::spawn(prober(shared.clone(), addrs.clone(), t0, a.clone())))
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    });
    let cpu = cpu::Snapshot::now().since(&start);
    drop(rt);
    let other = shared
        .other
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    Ok(Tally {
        sent: shared.next.load(Ordering::Relaxed),
        matched: shared.matched.load(Ordering::Relaxed),
        timeouts: shared.timeouts.load(Ordering::Relaxed),
        other,
        extra: json!({ "tasks": args.inflight }),
        cpu: Some(cpu),
    })
}
