//! HTTP keep-alive reuse in the io_uring engine: a check with `keepalive` reuses one
//! connection (plain and TLS) across probes when the server allows it; a connection the
//! server closed while parked is replaced transparently (the target is not judged by
//! it); without `keepalive` every probe opens its own connection.

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use sonde::{
    engine::{
        result::Reason,
        spec::{CheckSpec, HttpExpect, HttpSpec, ProbeSpec, TlsSpec},
        uring::{Engine, EngineConfig, Job},
    },
    lab::{self, Lab},
};
use sonde_tests::{
    checks::check,
    servers::{http_server_counting, tls_config, HttpReply},
};

fn http(keepalive: bool, tls: bool) -> ProbeSpec {
    ProbeSpec::Http(Box::new(HttpSpec {
        method: "GET".into(),
        path: "/health".into(),
        host: None,
        headers: Vec::new(),
        proxy_protocol: None,
        tls: tls.then(|| TlsSpec {
            sni: Some("origin.test".into()),
            verify: false,
            ca_file: None,
        }),
        keepalive,
        max_body: 1024,
        expect: HttpExpect::default(),
    }))
}

/// Run `n` probes of `spec` one after another (a gap of `gap` between them).
fn probes(engine: &Engine, spec: &Arc<CheckSpec>, n: u64, gap: Duration) -> Vec<Reason> {
    let job = Job::new(Arc::clone(spec), 0).expect("prepare");
    (0..n)
        .map(|seq| {
            let mut j = job.clone();
            j.seq = seq;
            engine.submit(j).expect("running");
            let r = engine
                .results()
                .recv_timeout(Duration::from_secs(5))
                .expect("result");
            std::thread::sleep(gap);
            r.reason
        })
        .collect()
}

#[test]
fn keepalive_reuses_connections_and_survives_server_closes() {
    if !lab::privileged_or_skip() {
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    let reply = |idle_ms| {
        let mut r = HttpReply::new(200, "OK");
        r.keepalive = Some(Duration::from_millis(idle_ms));
        r
    };
    let (_a, seen_a, conns_a) =
        http_server_counting(&lab.target, "198.18.0.2:80", reply(5_000), None);
    let (_b, seen_b, conns_b) =
        http_server_counting(&lab.target, "198.18.0.2:81", reply(5_000), None);
    let (_c, seen_c, conns_c) = http_server_counting(&lab.target, "198.18.0.2:82", reply(50), None);
    let (_d, seen_d, conns_d) = http_server_counting(
        &lab.target,
        "198.18.0.2:443",
        reply(5_000),
        Some(tls_config("origin.test", 30)),
    );
    let engine = lab
        .prober
        .run(|| {
            Engine::start(
                &EngineConfig {
                    threads: 2,
                    ..EngineConfig::default()
                },
                None,
            )
        })
        .expect("enter")
        .expect("engine");
    let t = Duration::from_millis(500);
    let gap = Duration::from_millis(100);

    // keepalive: 5 probes, 1 connection.
    let r = probes(
        &engine,
        &check("ka", "198.18.0.2", 80, http(true, false), t),
        5,
        gap,
    );
    assert!(r.iter().all(|x| *x == Reason::Ok), "{r:?}");
    assert_eq!(seen_a.lock().expect("lock").len(), 5);
    assert_eq!(
        conns_a.load(Ordering::Relaxed),
        1,
        "one connection for five probes"
    );

    // no keepalive: 5 probes, 5 connections.
    let r = probes(
        &engine,
        &check("close", "198.18.0.2", 81, http(false, false), t),
        5,
        gap,
    );
    assert!(r.iter().all(|x| *x == Reason::Ok), "{r:?}");
    assert_eq!(seen_b.lock().expect("lock").len(), 5);
    assert_eq!(conns_b.load(Ordering::Relaxed), 5);

    // The server closes idle connections after 50 ms, the probes come every 100 ms:
    // every reuse finds a closed connection, is retried on a new one, and succeeds.
    let r = probes(
        &engine,
        &check("stale", "198.18.0.2", 82, http(true, false), t),
        4,
        gap,
    );
    assert!(
        r.iter().all(|x| *x == Reason::Ok),
        "a closed parked connection is not a failure: {r:?}"
    );
    assert_eq!(seen_c.lock().expect("lock").len(), 4);
    assert_eq!(conns_c.load(Ordering::Relaxed), 4);

    // HTTPS keeps its TLS session on the parked connection.
    let r = probes(
        &engine,
        &check("tls", "198.18.0.2", 443, http(true, true), t),
        4,
        gap,
    );
    assert!(r.iter().all(|x| *x == Reason::Ok), "{r:?}");
    assert_eq!(seen_d.lock().expect("lock").len(), 4);
    assert_eq!(
        conns_d.load(Ordering::Relaxed),
        1,
        "one TLS connection for four probes"
    );
    engine.shutdown();
}
