//! sonde's engine under load: syn / icmp / udp (stateless workers, answers through XDP)
//! and connect / http / http-keepalive (io_uring workers).

use std::{
    collections::{BTreeMap, VecDeque},
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use probe_common::counters::{TcReason, XdpReason};
use serde_json::{json, Value};
use sonde::{
    ebpf::{AnswerHook, Counters, KernelProbes, ResetMode},
    engine::{
        result::{CheckResult, Reason},
        round::new_config,
        spec::{
            CheckId, CheckSpec, HttpExpect, HttpSpec, InitialState, ProbeSpec, StatusRange, Target,
            Thresholds, UdpSpec,
        },
        uring::{Engine, EngineConfig, Job, StatelessParts},
        PortRange,
    },
};

use crate::{cpu, Args, Tally, Work};

/// How long the driver sleeps when it can neither submit nor collect.
const POLL: Duration = Duration::from_micros(200);

/// The job templates (checks), prepared once each: one per target address, or for
/// http-keepalive one per connection loop (`--inflight` of them, check i on address
/// i mod the number of addresses, each its own check with its own connection).
fn jobs(args: &Args, work: Work, probe: &ProbeSpec, addrs: &[Ipv4Addr]) -> Result<Vec<Job>> {
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let port = if matches!(probe, ProbeSpec::Icmp) {
        0
    } else {
        args.port
    };
    let n = if work == Work::HttpKeepalive {
        usize::try_from(args.inflight.max(1)).unwrap_or(usize::MAX)
    } else {
        addrs.len()
    };
    (0..n)
        .map(|i| {
            let a = addrs[i % addrs.len()];
            let host = a.to_string();
            let id = if n == addrs.len() {
                host.clone()
            } else {
                format!("{host}#{i}")
            };
            let spec = Arc::new(CheckSpec {
                id: CheckId::new(&id),
                target: Target {
                    host: host.into(),
                    addr: IpAddr::V4(a),
                    port,
                    source: Default::default(),
                },
                probe: probe.clone(),
                interval: timeout * 10,
                fast_interval: timeout * 2,
                timeout,
                jitter: 0.0,
                thresholds: Thresholds::Consecutive { rise: 1, fall: 1 },
                initial: InitialState::Unknown,
                labels: Default::default(),
            });
            Job::new(spec, 0).map_err(|e| anyhow::anyhow!("check {id}: {e}"))
        })
        .collect()
}

/// GET --path, healthy on status 200 with --expect-body in the body.
fn http_probe(args: &Args, keepalive: bool) -> ProbeSpec {
    ProbeSpec::Http(Box::new(HttpSpec {
        method: "GET".into(),
        path: args.path.clone(),
        host: None,
        headers: Vec::new(),
        proxy_protocol: None,
        tls: None,
        keepalive,
        max_body: 4096,
        expect: HttpExpect {
            statuses: vec![StatusRange { lo: 200, hi: 200 }],
            body_contains: Some(args.expect_body.clone()),
            ..HttpExpect::default()
        },
    }))
}

/// Load, configure and attach the kernel programs; the engine gets the ring buffer.
fn kernel(iface: &str, resets: &str, hook: &str) -> Result<(KernelProbes, StatelessParts)> {
    let cfg = new_config(PortRange::DEFAULT);
    let mut k = KernelProbes::load().context("loading the kernel programs")?;
    k.set_config(&cfg).context("writing the probe config")?;
    let mode = ResetMode::parse(resets).context("--resets")?;
    // As the daemon's `answer_hook`.
    let hook = AnswerHook::parse(hook)
        .context("--answer-hook")?
        .with_resets(mode);
    k.attach_with(iface, hook)
        .with_context(|| format!("attaching to {iface}"))?;
    // As the daemon's `syn_ack_reset` (with xdp, the guard runs in `run`).
    k.set_reset(mode).context("setting who resets SYN-ACKs")?;
    PortRange::DEFAULT
        .reserve()
        .context("reserving the probe ports")?;
    let events = k.take_events().context("ring buffer already taken")?;
    let parts = StatelessParts {
        source: Box::new(events),
        probe: cfg,
    };
    Ok((k, parts))
}

/// Non-zero kernel counters as {name: count}.
fn counters_json(d: &Counters) -> Value {
    let xdp: BTreeMap<&str, u64> = XdpReason::ALL
        .iter()
        .map(|r| (r.name(), d.xdp(*r)))
        .filter(|(_, v)| *v > 0)
        .collect();
    let tc: BTreeMap<&str, u64> = TcReason::ALL
        .iter()
        .map(|r| (r.name(), d.tc(*r)))
        .filter(|(_, v)| *v > 0)
        .collect();
    json!({ "xdp": xdp, "tc": tc })
}

fn count(t: &mut Tally, r: &CheckResult, http: bool) {
    match r.reason {
        Reason::Ok => t.matched += 1,
        Reason::Refused if !http => t.matched += 1,
        Reason::Timeout => t.timeouts += 1,
        _ => *t.other.entry(r.reason.label().to_owned()).or_insert(0) += 1,
    }
}

/// Run `work` for `dur`, then collect the outstanding results.
pub fn run(args: &Args, work: Work, addrs: &[Ipv4Addr], dur: Duration) -> Result<Tally> {
    let probe = match work {
        Work::Syn => ProbeSpec::TcpSyn,
        Work::Icmp => ProbeSpec::Icmp,
        Work::Udp => ProbeSpec::Udp(Box::new(UdpSpec {
            payload: b"sonde-bench".to_vec(),
            expect_prefix: Vec::new(),
        })),
        Work::Connect | Work::ConnectTokio => ProbeSpec::TcpConnect,
        Work::Http | Work::HttpHyper => http_probe(args, false),
        Work::HttpKeepalive => http_probe(args, true),
        Work::XdpPeer => anyhow::bail!("xdp-peer measures nothing"),
    };
    let stateless = matches!(work, Work::Syn | Work::Icmp | Work::Udp);
    let http = work.is_http();
    let jobs = jobs(args, work, &probe, addrs)?;
    let n = jobs.len() as u64;
    // Closed loop (http-keepalive): each check's next probe is submitted when its result
    // is in, so a check never has two probes at once and can reuse its connection. Its
    // sequence numbers are i, i + n, i + 2n, ...: the template is seq % n, and (n being
    // a multiple of the worker count) a check always lands on the same worker.
    // Otherwise the templates are cycled over with seq = probes submitted so far.
    let closed_loop = work == Work::HttpKeepalive;
    if closed_loop && !n.is_multiple_of(args.threads.max(1) as u64) {
        anyhow::bail!("http-keepalive: --inflight must be a multiple of --threads");
    }
    let mut ready: VecDeque<u64> = if closed_loop {
        (0..n).collect()
    } else {
        VecDeque::new()
    };
    let (kprobes, parts) = if stateless {
        let (k, p) = kernel(&args.iface, &args.resets, &args.answer_hook)?;
        (Some(k), Some(p))
    } else {
        (None, None)
    };
    // Stateless works: --threads senders (plus one collector); stateful: workers.
    let threads = if stateless { 1 } else { args.threads.max(1) };
    let stateless_senders = if stateless { args.threads.max(1) } else { 1 };
    let inflight = usize::try_from(args.inflight.max(1)).unwrap_or(usize::MAX);
    let cfg = EngineConfig {
        threads,
        // The driver bounds the total; any worker may hold all of it.
        max_in_flight: inflight,
        stateless_senders,
        ..EngineConfig::default()
    };
    let engine = Engine::start(&cfg, parts).context("starting the engine")?;
    let k0 = kprobes.as_ref().map(KernelProbes::counters).transpose()?;

    let mut t = Tally::default();
    let start = cpu::Snapshot::now();
    let (t0, end) = (Instant::now(), Instant::now() + dur);
    let mut outstanding = 0u64;
    let results = engine.results();
    let mut kprobes = kprobes;
    let mut guard_at = Instant::now();
    let mut reset_off: Option<String> = None;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if now >= guard_at {
            // The daemon's guard of resets from XDP, once a second.
            guard_at = now + Duration::from_secs(1);
            if let Some(k) = kprobes.as_mut() {
                if let Some(why) = k.check_reset().context("guarding resets from XDP")? {
                    reset_off = Some(why);
                }
            }
        }
        let mut budget = args.inflight.saturating_sub(outstanding).min(1024);
        if let Some(rate) = args.rate {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let allowed = (rate * now.duration_since(t0).as_secs_f64()) as u64;
            budget = budget.min(allowed.saturating_sub(t.sent));
        }
        if closed_loop {
            budget = budget.min(ready.len() as u64);
        }
        for _ in 0..budget {
            let seq = if closed_loop {
                ready.pop_front().unwrap_or(t.sent)
            } else {
                t.sent
            };
            let template = &jobs[usize::try_from(seq % n).unwrap_or(0)];
            let job = Job {
                seq,
                ..template.clone()
            };
            if engine.submit(job).is_err() {
                anyhow::bail!("engine stopped");
            }
            t.sent += 1;
        }
        outstanding += budget;
        let mut got = 0u64;
        for r in results.try_iter() {
            count(&mut t, &r, http);
            if closed_loop {
                ready.push_back(r.seq + n);
            }
            got += 1;
        }
        if budget == 0 && got == 0 {
            if closed_loop {
                // A check's next probe waits for its result: wait on the channel, so
                // it leaves as soon as the result is in (polling every 200 us cost
                // the closed loop 10-20 % of its rate).
                let wait = end.saturating_duration_since(now).min(POLL);
                if let Ok(r) = results.recv_timeout(wait) {
                    count(&mut t, &r, http);
                    ready.push_back(r.seq + n);
                    got += 1;
                }
            } else {
                // Poll, never block on the channel: with thousands of probes in
                // flight a blocked receiver would make the engine threads pay a
                // futex wake per result.
                std::thread::sleep(end.saturating_duration_since(now).min(POLL));
            }
        }
        outstanding -= got;
    }
    // The stragglers: every probe ends by its timeout.
    let drain_end =
        Instant::now() + Duration::from_millis(args.timeout_ms) + Duration::from_secs(1);
    while outstanding > 0 {
        let left = drain_end.saturating_duration_since(Instant::now());
        match results.recv_timeout(left) {
            Ok(r) => {
                count(&mut t, &r, http);
                outstanding -= 1;
            }
            Err(_) => break,
        }
    }
    t.cpu = Some(cpu::Snapshot::now().since(&start));
    let kernel = match (&kprobes, &k0) {
        (Some(k), Some(k0)) => counters_json(&k.counters()?.since(k0)),
        _ => Value::Null,
    };
    t.extra = json!({
        "checks": n,
        "closed_loop": closed_loop,
        "missing_results": outstanding,
        "syn_ack_reset": kprobes.as_ref().map(|k| k.reset_state().mode.name()),
        "answer_hook": kprobes.as_ref().and_then(|k| k.attached().first().map(|(_, i)| i.describe())),
        "xdp_reset_off": reset_off,
        "engine": engine.stats(),
        "kernel": kernel,
    });
    engine.shutdown();
    drop(kprobes);
    Ok(t)
}
