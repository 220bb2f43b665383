//! Building check specs for tests.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc, time::Duration};

use sonde::engine::spec::{CheckId, CheckSpec, InitialState, ProbeSpec, Target, Thresholds};

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
            host: addr.to_owned(),
            addr: ip,
            port,
        },
        probe,
        interval: timeout * 10,
        fast_interval: timeout * 2,
        timeout,
        jitter: 0.0,
        thresholds: Thresholds::Consecutive { rise: 2, fall: 2 },
        initial: InitialState::Unknown,
        labels: BTreeMap::new(),
    })
}
