//! Building check specs for tests.

use std::{net::IpAddr, sync::Arc, time::Duration};

use sonde::engine::spec::{
    CheckId, CheckSpec, InitialState, Labels, ProbeSpec, Target, Thresholds,
};

/// A check of `probe` against `addr:port` with the given timeout (interval 10x).
#[must_use]
pub fn check(
    id: &str,
    addr: &str,
    port: u16,
    probe: ProbeSpec,
    timeout: Duration,
) -> Arc<CheckSpec> {
    let ip: IpAddr = addr.parse().expect("test address");
    Arc::new(CheckSpec {
        id: CheckId::new(id),
        target: Target {
            host: addr.into(),
            addr: ip,
            port,
            source: Default::default(),
        },
        probe,
        interval: timeout * 10,
        fast_interval: timeout * 2,
        timeout,
        jitter: 0.0,
        thresholds: Thresholds::Consecutive { rise: 2, fall: 2 },
        initial: InitialState::Unknown,
        labels: Labels::default(),
    })
}

/// Submit one probe of each check (sequence numbers in order) and collect every result,
/// sorted by sequence number.
///
/// # Panics
/// A check cannot be prepared, the engine stopped, or a result is late by 10 s.
#[must_use]
pub fn run_once(
    engine: &sonde::engine::uring::Engine,
    specs: &[Arc<CheckSpec>],
) -> Vec<sonde::engine::result::CheckResult> {
    for (i, s) in specs.iter().enumerate() {
        let job = sonde::engine::uring::Job::new(Arc::clone(s), i as u64).expect("prepare");
        engine.submit(job).expect("engine running");
    }
    let mut out: Vec<_> = (0..specs.len())
        .map(|_| {
            engine
                .results()
                .recv_timeout(Duration::from_secs(10))
                .expect("result")
        })
        .collect();
    out.sort_by_key(|r| r.seq);
    out
}
