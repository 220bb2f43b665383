//! Health layer tests: deterministic, on paused tokio time.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::time::{advance, Instant};

use super::*;
use crate::engine::{
    result::{CheckResult, Phases, Reason},
    spec::{CheckId, CheckSpec, InitialState, ProbeSpec, Target, Thresholds},
    Clock,
};

const INTERVAL: Duration = Duration::from_secs(10);
const FAST: Duration = Duration::from_secs(1);

fn wall0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn spec(id: &str, thresholds: Thresholds, initial: InitialState) -> CheckSpec {
    CheckSpec {
        id: CheckId::new(id),
        target: Target {
            host: "192.0.2.1".into(),
            addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            port: 80,
            source: Default::default(),
        },
        probe: ProbeSpec::TcpConnect,
        interval: INTERVAL,
        fast_interval: FAST,
        timeout: Duration::from_secs(2),
        jitter: 0.0,
        thresholds,
        initial,
        labels: BTreeMap::from([("pool".to_string(), "web".to_string())]).into(),
    }
}

fn consecutive(rise: u32, fall: u32) -> Thresholds {
    Thresholds::Consecutive { rise, fall }
}

fn window(window: u32, threshold: u32) -> Thresholds {
    Thresholds::Window { window, threshold }
}

fn result(id: &str, seq: u64, reason: Reason, rtt_us: Option<u64>) -> CheckResult {
    CheckResult {
        check: CheckId::new(id),
        seq,
        reason,
        rtt: rtt_us.map(Duration::from_micros),
        clock: Clock::Userspace,
        phases: Phases::default(),
        http_status: None,
        cert_days_left: None,
    }
}

/// One check driven result by result, waiting `next_interval` (paused time) before each.
struct Driver {
    health: CheckHealth,
    seq: u64,
}

impl Driver {
    fn new(thresholds: Thresholds, initial: InitialState) -> Self {
        let spec = spec("c", thresholds, initial);
        let health = CheckHealth::with_clock(
            Arc::new(spec.clone()),
            Instant::now(),
            wall0(),
            HealthConfig::default(),
        );
        Self { health, seq: 0 }
    }

    async fn step_reason(&mut self, reason: Reason) -> Option<Transition> {
        advance(self.health.next_interval()).await;
        self.seq += 1;
        let rtt = reason.is_ok().then_some(1_000);
        self.health
            .observe(&result("c", self.seq, reason, rtt), Instant::now())
    }

    async fn step(&mut self, ok: bool) -> Option<Transition> {
        self.step_reason(if ok { Reason::Ok } else { Reason::Timeout })
            .await
    }

    /// Feed `pattern` (`S` success, `F` failure) `times` times; count transitions.
    async fn run(&mut self, pattern: &str, times: usize) -> Vec<Transition> {
        let mut transitions = Vec::new();
        for _ in 0..times {
            for c in pattern.chars() {
                transitions.extend(self.step(c == 'S').await);
            }
        }
        transitions
    }
}

#[tokio::test(start_paused = true)]
async fn consecutive_goes_down_after_exactly_fall_and_up_after_exactly_rise() {
    let mut d = Driver::new(consecutive(2, 3), InitialState::Unknown);
    assert_eq!(d.step(true).await, None);
    let up = d.step(true).await.expect("healthy after rise=2");
    assert_eq!((up.from, up.to), (Health::Unknown, Health::Healthy));

    // A run of fall-1 failures broken by a success changes nothing.
    assert_eq!(d.step(false).await, None);
    assert_eq!(d.step(false).await, None);
    assert_eq!(d.step(true).await, None);
    assert_eq!(d.health.state(), Health::Healthy);

    assert_eq!(d.step_reason(Reason::Timeout).await, None);
    assert_eq!(d.step_reason(Reason::Refused).await, None);
    let unreachable = Reason::Unreachable {
        icmp_type: 3,
        icmp_code: 1,
    };
    let down = d
        .step_reason(unreachable.clone())
        .await
        .expect("unhealthy after exactly fall=3 failures");
    assert_eq!((down.from, down.to), (Health::Healthy, Health::Unhealthy));
    assert_eq!(down.reason, unreachable);
    assert_eq!(
        down.results,
        vec![
            (false, Reason::Timeout),
            (false, Reason::Refused),
            (false, unreachable)
        ]
    );
    assert_eq!(down.check, CheckId::new("c"));
    assert_eq!(down.at, Instant::now());
    assert_eq!(d.health.since(), down.at);
    // Display times derive from the paused clock: ms since creation, wall0 + elapsed.
    let elapsed = down.at - d.health.created();
    assert_eq!(down.at_ms, elapsed.as_millis() as u64);
    assert_eq!(down.at_wall, wall0() + elapsed);

    assert_eq!(d.step(true).await, None);
    let up = d.step(true).await.expect("healthy after exactly rise=2");
    assert_eq!((up.from, up.to), (Health::Unhealthy, Health::Healthy));
    assert_eq!(up.reason, Reason::Ok);
    assert_eq!(up.results, vec![(true, Reason::Ok), (true, Reason::Ok)]);
    assert_eq!(d.health.transitions().len(), 3);
    assert_eq!(d.health.transitions().last(), Some(&up));
}

#[tokio::test(start_paused = true)]
async fn window_rule_does_not_flap_where_rise1_fall1_does() {
    // Failing 2 of every 3: never 3 successes among 5, so one verdict, Unhealthy.
    let mut d = Driver::new(window(5, 3), InitialState::Unknown);
    let t = d.run("FFS", 100).await;
    assert_eq!(t.len(), 1, "{t:?}");
    assert_eq!((t[0].from, t[0].to), (Health::Unknown, Health::Unhealthy));
    // Decided at the 4th result (F F S F: 3 failures, 3-of-5 unreachable).
    assert_eq!(d.health.transitions().first().unwrap().results.len(), 4);

    // Failing 1 of every 3: always 3 or 4 successes among 5, one verdict, Healthy.
    let mut d = Driver::new(window(5, 3), InitialState::Unknown);
    let t = d.run("SSF", 100).await;
    assert_eq!(t.len(), 1, "{t:?}");
    assert_eq!((t[0].from, t[0].to), (Health::Unknown, Health::Healthy));

    // The same targets under rise=1/fall=1 flap on nearly every result.
    let mut d = Driver::new(consecutive(1, 1), InitialState::Unknown);
    assert_eq!(d.run("FFS", 100).await.len(), 200);
    let mut d = Driver::new(consecutive(1, 1), InitialState::Unknown);
    assert_eq!(d.run("SSF", 100).await.len(), 200);
}

#[tokio::test(start_paused = true)]
async fn window_transition_carries_the_window() {
    let mut d = Driver::new(window(5, 3), InitialState::Unknown);
    d.run("SSS", 1).await;
    assert_eq!(d.health.state(), Health::Healthy);
    for _ in 0..2 {
        assert_eq!(d.step(false).await, None);
    }
    let down = d.step_reason(Reason::Refused).await.expect("2 of 5");
    assert_eq!(down.reason, Reason::Refused);
    let oks: Vec<bool> = down.results.iter().map(|r| r.0).collect();
    assert_eq!(oks, vec![true, true, false, false, false]);
    assert_eq!(d.health.window_counts(), (2, 5));
}

#[tokio::test(start_paused = true)]
async fn window_of_64_uses_the_whole_register() {
    let mut d = Driver::new(window(64, 64), InitialState::Unknown);
    for _ in 0..63 {
        assert_eq!(d.step(true).await, None);
    }
    assert_eq!(d.step(true).await.map(|t| t.to), Some(Health::Healthy));
    assert_eq!(d.health.window_counts(), (64, 64));
    let down = d.step(false).await.expect("one failure of 64");
    assert_eq!(down.results.len(), 64);
}

#[tokio::test(start_paused = true)]
async fn fast_interval_exactly_while_failing_or_changing() {
    let mut d = Driver::new(consecutive(2, 2), InitialState::Unknown);
    let start = Instant::now();
    assert_eq!(d.health.next_interval(), FAST, "no result yet");
    // (result, state after, interval after)
    let steps = [
        (true, Health::Unknown, FAST),     // changing: 1 of rise=2
        (true, Health::Healthy, INTERVAL), // settled
        (true, Health::Healthy, INTERVAL),
        (false, Health::Healthy, FAST), // latest disagrees with state
        (true, Health::Healthy, INTERVAL),
        (false, Health::Healthy, FAST),
        (false, Health::Unhealthy, FAST), // unhealthy
        (false, Health::Unhealthy, FAST),
        (true, Health::Unhealthy, FAST), // changing back
        (true, Health::Healthy, INTERVAL),
    ];
    let mut waited = Duration::ZERO;
    for (i, (ok, state, interval)) in steps.into_iter().enumerate() {
        waited += d.health.next_interval();
        d.step(ok).await;
        assert_eq!(d.health.state(), state, "step {i}");
        assert_eq!(d.health.next_interval(), interval, "step {i}");
    }
    assert_eq!(Instant::now() - start, waited);
    // Waits: before the first result, then after each of the first nine.
    assert_eq!(waited, FAST * 7 + INTERVAL * 3);

    // Window rule: Unknown and partial windows are fast too.
    let mut d = Driver::new(window(3, 2), InitialState::Unknown);
    d.step(true).await;
    assert_eq!(d.health.next_interval(), FAST);
    d.step(true).await;
    assert_eq!(d.health.state(), Health::Healthy);
    assert_eq!(d.health.next_interval(), INTERVAL);
    d.step(false).await;
    assert_eq!(d.health.state(), Health::Healthy);
    assert_eq!(d.health.next_interval(), FAST);
}

#[tokio::test(start_paused = true)]
async fn initial_states_behave_as_documented() {
    // Healthy: assumed until `fall` failures, but probed fast until a success confirms.
    let mut d = Driver::new(consecutive(3, 2), InitialState::Healthy);
    assert_eq!(d.health.state(), Health::Healthy);
    assert_eq!(d.health.next_interval(), FAST);
    assert_eq!(d.step(true).await, None);
    assert_eq!(d.health.next_interval(), INTERVAL);
    assert_eq!(d.step(false).await, None);
    let t = d.step(false).await.expect("fall=2");
    assert_eq!((t.from, t.to), (Health::Healthy, Health::Unhealthy));

    // Unhealthy: needs `rise` successes; failures change nothing.
    let mut d = Driver::new(consecutive(3, 2), InitialState::Unhealthy);
    assert_eq!(d.health.state(), Health::Unhealthy);
    assert!(d.run("F", 5).await.is_empty());
    assert!(d.run("SS", 1).await.is_empty());
    let t = d.step(true).await.expect("rise=3");
    assert_eq!((t.from, t.to), (Health::Unhealthy, Health::Healthy));

    // Unknown: the first threshold reached decides.
    let mut d = Driver::new(consecutive(3, 2), InitialState::Unknown);
    assert!(d.run("SS", 1).await.is_empty());
    assert_eq!(d.health.state(), Health::Unknown);
    let t = d.run("FF", 1).await;
    assert_eq!(t.len(), 1);
    assert_eq!((t[0].from, t[0].to), (Health::Unknown, Health::Unhealthy));
    let mut d = Driver::new(consecutive(3, 2), InitialState::Unknown);
    let t = d.run("FSSS", 1).await;
    assert_eq!(t.len(), 1);
    assert_eq!((t[0].from, t[0].to), (Health::Unknown, Health::Healthy));

    // Window, initial Healthy: kept until the verdict is decided (3 failures of 5).
    let mut d = Driver::new(window(5, 3), InitialState::Healthy);
    assert!(d.run("FF", 1).await.is_empty());
    assert_eq!(d.health.state(), Health::Healthy);
    assert_eq!(d.step(false).await.map(|t| t.to), Some(Health::Unhealthy));

    // Window, initial Unknown: decided early by 3 successes.
    let mut d = Driver::new(window(5, 3), InitialState::Unknown);
    assert!(d.run("SFS", 1).await.is_empty());
    assert_eq!(d.health.state(), Health::Unknown);
    assert_eq!(d.step(true).await.map(|t| t.to), Some(Health::Healthy));

    // Window, initial Unhealthy: kept while undecided.
    let mut d = Driver::new(window(5, 3), InitialState::Unhealthy);
    assert!(d.run("SS", 1).await.is_empty());
    assert_eq!(d.step(true).await.map(|t| t.to), Some(Health::Healthy));
}

#[tokio::test(start_paused = true)]
async fn latency_percentiles_of_a_known_distribution_successes_only() {
    let s = spec("c", consecutive(1, 1), InitialState::Unknown);
    let mut h = CheckHealth::new(&s, Instant::now());
    for (seq, us) in (1..=1000u64).enumerate() {
        let mut ok = result("c", seq as u64, Reason::Ok, Some(us));
        ok.phases.connect = Some(Duration::from_micros(us));
        ok.phases.total = Some(Duration::from_millis(us)); // 1 ms ..= 1 s
        h.observe(&ok, Instant::now());
        // Failures with (slow) timings must not count.
        let mut bad = result("c", 10_000 + seq as u64, Reason::Timeout, Some(5_000_000));
        bad.phases.connect = Some(Duration::from_secs(2));
        h.observe(&bad, Instant::now());
    }
    let l = h.latency();
    // The histograms report a bucket midpoint: within 3.2 % (the maximum is exact).
    let near = |got: u64, want: u64| got.abs_diff(want) * 1000 <= want * 32;
    assert_eq!(l.rtt.count, 1000);
    assert!(near(l.rtt.p50_us, 500), "{:?}", l.rtt);
    assert!(near(l.rtt.p90_us, 900), "{:?}", l.rtt);
    assert!(near(l.rtt.p99_us, 990), "{:?}", l.rtt);
    assert_eq!(l.rtt.max_us, 1000, "{:?}", l.rtt);
    assert_eq!(l.connect, l.rtt);
    assert_eq!(l.total.count, 1000);
    assert!(near(l.total.p50_us, 500_000), "{:?}", l.total);
    assert!(near(l.total.p99_us, 990_000), "{:?}", l.total);
    assert_eq!(l.total.max_us, 1_000_000, "{:?}", l.total);
    assert_eq!(l.tls, LatencySummary::default());
    assert_eq!(h.latency_of(Phase::FirstByte).count, 0);
    assert_eq!(h.latency_of(Phase::Rtt), l.rtt);
}

#[test]
fn latency_values_are_clamped_to_the_tracked_range() {
    let mut r = latency::LatencyRecorder::new();
    r.record(Phase::Rtt, Duration::from_nanos(10));
    r.record(Phase::Rtt, Duration::from_secs(600));
    let s = r.summary(Phase::Rtt);
    assert_eq!(s.count, 2);
    assert!(s.p50_us <= 1, "{s:?}");
    assert!(s.max_us >= latency::HIGHEST_US && s.max_us <= latency::HIGHEST_US * 1001 / 1000);
    r.reset();
    assert_eq!(r.summary(Phase::Rtt).count, 0);
}

#[tokio::test(start_paused = true)]
async fn history_is_bounded() {
    let s = spec("c", consecutive(1, 1), InitialState::Unknown);
    let mut h = CheckHealth::new(&s, Instant::now());
    assert_eq!(
        h.heap_bytes(),
        0,
        "nothing allocated before the first result"
    );
    for seq in 0..10_000u64 {
        let reason = if seq % 2 == 0 {
            Reason::Ok
        } else {
            Reason::Refused
        };
        advance(Duration::from_millis(1)).await;
        h.observe(&result("c", seq, reason, Some(100)), Instant::now());
    }
    assert_eq!(h.results_seen(), 10_000);
    assert_eq!(h.history().len(), 32);
    assert_eq!(h.transitions().len(), 16);
    assert_eq!(h.transitions_allocated(), 16, "never past the bound");
    // 32 results in 8 bytes each, 16 transitions of 96 bytes (each citing its 1
    // deciding result, a failure's reason in 32 more), 1 kept failure reason, 2 latency
    // buckets: about 2.5 KiB for a check flapping at every result (the worst case).
    let heap = h.heap_bytes();
    assert!(heap < 3_200, "{heap} bytes");
    let seqs: Vec<u64> = h.history().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (9_968..10_000).collect::<Vec<_>>());
    let history = h.history();
    let last = history.last().unwrap();
    assert_eq!(
        (last.ok, last.reason, last.at_ms),
        (false, "refused", 10_000)
    );

    let config = HealthConfig {
        history: 4,
        transitions: 2,
    };
    let mut h = CheckHealth::with_config(Arc::new(s.clone()), Instant::now(), config);
    for seq in 0..100u64 {
        let reason = if seq % 2 == 0 {
            Reason::Ok
        } else {
            Reason::Timeout
        };
        h.observe(&result("c", seq, reason, None), Instant::now());
    }
    assert_eq!((h.history().len(), h.transitions().len()), (4, 2));
}

#[tokio::test(start_paused = true)]
async fn replace_keeps_state_for_same_probe_and_resets_otherwise() {
    let mut table = HealthTable::new();
    let s = spec("a", consecutive(1, 3), InitialState::Unknown);
    table.add(s.clone(), Instant::now()).unwrap();
    assert_eq!(
        table.add(s.clone(), Instant::now()),
        Err(HealthError::Duplicate(CheckId::new("a")))
    );
    let id = s.id.clone();
    let t = table.apply(&result("a", 1, Reason::Ok, Some(700)), Instant::now());
    assert_eq!(t.map(|t| t.to), Some(Health::Healthy));

    // Timing, thresholds, labels change: state kept, new rules from the next result.
    let mut s2 = s.clone();
    s2.interval = Duration::from_secs(30);
    s2.thresholds = consecutive(1, 1);
    s2.labels.insert("zone".into(), "b".into());
    assert_eq!(table.replace(s2.clone(), Instant::now()), Replaced::Kept);
    let h = table.get(&id).unwrap();
    assert_eq!(h.state(), Health::Healthy);
    assert_eq!(h.history().len(), 1);
    assert_eq!(h.latency().rtt.count, 1);
    assert_eq!(table.next_interval(&id), Some(Duration::from_secs(30)));
    assert_eq!(table.snapshot(&id).unwrap().labels.len(), 2);
    let t = table.apply(&result("a", 2, Reason::Timeout, None), Instant::now());
    assert_eq!(t.map(|t| t.to), Some(Health::Unhealthy), "fall is now 1");

    // Target changed: reset to the new spec's initial state.
    let mut s3 = s2.clone();
    s3.target.port = 8080;
    s3.initial = InitialState::Healthy;
    advance(Duration::from_secs(5)).await;
    assert_eq!(table.replace(s3.clone(), Instant::now()), Replaced::Reset);
    let h = table.get(&id).unwrap();
    assert_eq!(h.state(), Health::Healthy);
    assert_eq!((h.history().len(), h.transitions().len()), (0, 0));
    assert_eq!(h.latency().rtt.count, 0);
    assert_eq!(h.created(), Instant::now());
    assert!(h.last_result().is_none());

    // Probe changed: reset too.
    let mut s4 = s3.clone();
    s4.probe = ProbeSpec::TcpSyn;
    table.apply(&result("a", 3, Reason::Timeout, None), Instant::now());
    assert_eq!(table.replace(s4, Instant::now()), Replaced::Reset);
    assert_eq!(table.get(&id).unwrap().consecutive_fail(), 0);

    assert_eq!(
        table.replace(
            spec("b", consecutive(1, 1), InitialState::Unknown),
            Instant::now()
        ),
        Replaced::Added
    );
    assert_eq!(table.len(), 2);
    assert!(table.remove(&id).is_some());
    assert!(table.remove(&id).is_none());
    assert_eq!(
        table.apply(&result("a", 4, Reason::Ok, None), Instant::now()),
        None
    );
    assert_eq!(table.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn results_for_another_check_are_ignored() {
    let s = spec("a", consecutive(1, 1), InitialState::Unknown);
    let mut h = CheckHealth::new(&s, Instant::now());
    assert_eq!(
        h.observe(&result("b", 1, Reason::Ok, None), Instant::now()),
        None
    );
    assert_eq!(h.results_seen(), 0);
}

#[tokio::test(start_paused = true)]
async fn snapshots_serialise() {
    let mut table = HealthTable::new();
    for id in ["b", "a"] {
        table
            .add(
                spec(id, consecutive(1, 1), InitialState::Unknown),
                Instant::now(),
            )
            .unwrap();
    }
    advance(Duration::from_millis(1_500)).await;
    let mut r = result("a", 7, Reason::Ok, Some(250));
    r.http_status = Some(204);
    r.clock = Clock::Kernel;
    let t = table.apply(&r, Instant::now()).unwrap();

    let all = table.snapshot_all();
    let ids: Vec<&str> = all.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    let a = &all[0];
    let h = table.get(&CheckId::new("a")).unwrap();
    let created_ms = state::unix_ms(h.wall_at(h.created()));
    assert_eq!(a.since_unix_ms, created_ms + 1_500);
    assert_eq!(Some(a), table.snapshot(&CheckId::new("a")).as_ref());

    let json = serde_json::to_value(a).unwrap();
    assert_eq!(json["id"], "a");
    assert_eq!(json["state"], "healthy");
    assert_eq!(json["kind"], "tcp_connect");
    assert_eq!(json["target"]["port"], 80);
    assert_eq!(json["labels"]["pool"], "web");
    assert_eq!(json["consecutive_ok"], 1);
    assert_eq!(json["last_result"]["seq"], 7);
    assert_eq!(json["last_result"]["reason"]["reason"], "ok");
    assert_eq!(json["last_result"]["rtt_us"], 250);
    assert_eq!(
        json["last_result"]["clock"], "kernel",
        "the result's clock is kept"
    );
    assert_eq!(json["last_result"]["http_status"], 204);
    assert_eq!(json["last_result"]["at_ms"], 1_500);
    assert_eq!(json["latency"]["rtt"]["p50_us"], 250);
    assert_eq!(json["latency"]["tls"]["count"], 0);
    assert_eq!(all[1].last_result, None);
    assert_eq!(serde_json::to_value(&all[1]).unwrap()["state"], "unknown");

    let json = serde_json::to_value(&t).unwrap();
    assert_eq!(json["from"], "unknown");
    assert_eq!(json["to"], "healthy");
    assert_eq!(json["at_ms"], 1_500);
    assert_eq!(json["at_unix_ms"], created_ms + 1_500);
    assert!(json.get("at").is_none());
    assert_eq!(
        json["results"],
        serde_json::json!([[true, {"reason": "ok"}]])
    );
    let json = serde_json::to_value(h.history()).unwrap();
    assert_eq!(json[0]["reason"], "ok");
    assert_eq!(json[0]["rtt_us"], 250);
    assert_eq!(json[0]["clock"], "kernel");
}

/// The per-check memory budget (bench/scale.sh measures the whole daemon): a steady
/// check with default thresholds and history holds its 32 compact results (inline),
/// one transition, one latency histogram of a few buckets, and nothing else.
#[tokio::test(start_paused = true)]
async fn a_steady_check_stays_within_its_memory_budget() {
    let s = spec("c", consecutive(2, 3), InitialState::Unknown);
    let mut h = CheckHealth::new(&s, Instant::now());
    for seq in 0..10_000u64 {
        advance(Duration::from_secs(1)).await;
        h.observe(
            &result("c", seq, Reason::Ok, Some(180 + seq % 40)),
            Instant::now(),
        );
    }
    assert_eq!(h.transitions().len(), 1, "unknown -> healthy only");
    let heap = h.heap_bytes();
    // 1 transition of 56 (its deciding successes are bits) + one histogram's few
    // 6-byte buckets; no failure reason kept.
    assert!(heap <= 200, "{heap} bytes");
    // The fixed part with the history's 32 x 8 bytes.
    let inline = std::mem::size_of::<CheckHealth>();
    assert!(inline <= 500, "{inline} bytes inline");
    println!("steady check: {heap} heap bytes + {inline} inline");
}

#[tokio::test(start_paused = true)]
async fn history_rebuilds_sequence_numbers_rtts_and_times() {
    let s = spec("c", consecutive(1, 1), InitialState::Unknown);
    let mut h = CheckHealth::with_clock(
        Arc::new(s),
        Instant::now(),
        wall0(),
        HealthConfig::default(),
    );
    // (seq, rtt in µs, ms since the previous result): steps of 1, a gap of 4 and one
    // of 255 (results lost), RTTs around the µs/ms boundary of the compact slot.
    let feed: [(u64, Option<u64>, u64); 7] = [
        (1, Some(42), 10),
        (2, Some(131_071), 1_000),
        (3, Some(131_072), 20_000),
        (7, None, 20_000),
        (262, Some(60_000_000), 3_600_000),
        (263, Some(999), 1),
        (264, Some(1), 70_000_000),
    ];
    let mut at = 0;
    for (seq, rtt, gap) in feed {
        advance(Duration::from_millis(gap)).await;
        at += gap;
        let reason = if rtt.is_some() {
            Reason::Ok
        } else {
            Reason::Timeout
        };
        h.observe(&result("c", seq, reason, rtt), Instant::now());
    }
    let got: Vec<(u64, Option<Duration>, bool, &str)> = h
        .history()
        .iter()
        .map(|e| (e.seq, e.rtt, e.ok, e.reason))
        .collect();
    let us = Duration::from_micros;
    assert_eq!(
        got,
        vec![
            (1, Some(us(42)), true, "ok"),
            (2, Some(us(131_071)), true, "ok"),
            // Above 2^17 µs the history keeps whole milliseconds.
            (3, Some(Duration::from_millis(131)), true, "ok"),
            (7, None, false, "timeout"),
            (262, Some(Duration::from_secs(60)), true, "ok"),
            (263, Some(us(999)), true, "ok"),
            (264, Some(us(1)), true, "ok"),
        ]
    );
    let times: Vec<u64> = h.history().iter().map(|e| e.at_ms).collect();
    assert_eq!(times.last(), Some(&at));
    assert_eq!(
        times,
        vec![10, 1_010, 21_010, 41_010, 3_641_010, 3_641_011, 73_641_011]
    );
    // The latest result keeps its exact RTT.
    assert_eq!(h.last_result().unwrap().rtt, Some(us(1)));
}

#[tokio::test(start_paused = true)]
async fn transitions_cite_the_failures_that_decided_them_with_their_details() {
    let s = spec(
        "c",
        Thresholds::Window {
            window: 5,
            threshold: 3,
        },
        InitialState::Healthy,
    );
    let mut h = CheckHealth::new(&s, Instant::now());
    let bad = |n: u32| Reason::Protocol {
        detail: format!("garbage {n}"),
    };
    let feed = [Reason::Ok, bad(1), Reason::Ok, bad(2), bad(3)];
    let mut last = None;
    for (seq, reason) in (1..).zip(feed.iter().cloned()) {
        advance(Duration::from_secs(1)).await;
        last = h
            .observe(&result("c", seq, reason, Some(100)), Instant::now())
            .or(last);
    }
    let t = last.expect("3 failures of 5 decide unhealthy");
    assert_eq!(t.to, Health::Unhealthy);
    let want: Vec<(bool, Reason)> = feed.iter().map(|r| (r.is_ok(), r.clone())).collect();
    assert_eq!(t.results, want);
    assert_eq!(h.transitions().last(), Some(&t), "kept as announced");

    assert_eq!(h.kept_failures(), 3);

    // The recovery cites the window that decided it, failures with their details; once
    // every failure has left the window, no reason is kept any more.
    let mut up = None;
    for seq in 6..12 {
        advance(Duration::from_secs(1)).await;
        up = h
            .observe(&result("c", seq, Reason::Ok, Some(100)), Instant::now())
            .or(up);
    }
    let up = up.expect("3 successes of 5 decide healthy");
    assert_eq!(up.to, Health::Healthy);
    assert_eq!(
        up.results,
        vec![
            (true, Reason::Ok),
            (false, bad(2)),
            (false, bad(3)),
            (true, Reason::Ok),
            (true, Reason::Ok)
        ],
        "results 3 to 7: 3 successes of 5"
    );
    assert_eq!(h.kept_failures(), 0);

    // A restored transition keeps its results, whatever they are.
    let mut fresh = CheckHealth::new(&s, Instant::now());
    fresh.restore(
        Health::Unhealthy,
        std::time::SystemTime::now(),
        vec![t.clone()],
        Instant::now(),
    );
    assert_eq!(fresh.transitions()[0].results, t.results);
    assert_eq!(fresh.transitions()[0].reason, t.reason);
}

#[tokio::test(start_paused = true)]
async fn outcome_counts_follow_every_result_and_survive_a_reset() {
    let mut table = HealthTable::new();
    let s = spec("a", consecutive(1, 1), InitialState::Unknown);
    table.add(s.clone(), Instant::now()).unwrap();
    let feed = [
        Reason::Ok,
        Reason::Timeout,
        Reason::Ok,
        Reason::Refused,
        Reason::Timeout,
        Reason::Ok,
    ];
    for (seq, reason) in (1..).zip(feed) {
        table.apply(&result("a", seq, reason, None), Instant::now());
    }
    // A result for an unknown check counts nowhere.
    table.apply(&result("gone", 1, Reason::Ok, None), Instant::now());
    let counts = |t: &HealthTable| -> Vec<(&'static str, u64)> {
        t.get(&CheckId::new("a")).unwrap().outcomes().collect()
    };
    assert_eq!(counts(&table), [("ok", 3), ("timeout", 2), ("refused", 1)]);
    let mut moved = s.clone();
    moved.target.port = 81;
    assert_eq!(table.replace(moved, Instant::now()), Replaced::Reset);
    table.apply(&result("a", 7, Reason::Ok, None), Instant::now());
    assert_eq!(
        counts(&table),
        [("ok", 4), ("timeout", 2), ("refused", 1)],
        "probe counters keep counting across a reset"
    );
}
