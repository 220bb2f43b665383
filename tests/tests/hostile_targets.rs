//! Hostile targets: servers in a target namespace that misbehave on purpose, probed
//! through the real io_uring engine (and, for spoofed answers, the real XDP program).
//! Every probe ends with a precise reason (outcome + phase or detail) within its
//! timeout plus a small margin, whatever the target does:
//!
//! - HTTP: slowloris (one byte per second), an endless header line, endless header
//!   fields, a 16 GiB body and an endless chunked body (streamed, never buffered
//!   beyond `max_body`), garbage, accept-and-never-answer, accept-and-never-read (a
//!   request larger than the socket buffers), and a FIN or an RST before
//!   any byte, mid-status line, mid-headers and mid-body;
//! - HTTPS: a fatal alert, plaintext instead of TLS, FIN/RST before any byte and in
//!   the middle of the handshake, then mid-status, mid-headers and mid-body after it,
//!   silence before and after the handshake, an expired certificate (verified against
//!   its CA file, next to a valid one);
//! - DNS: truncated answers, compression pointers that point forward or loop, wrong
//!   section counts, reserved label types, a query echoed back, answers with the wrong
//!   id only, and 100 wrong-id answers before the right one;
//! - a flood of spoofed SYN-ACKs, RSTs and ICMP errors (wrong cookies, wrong quoted
//!   headers, wrong ICMP ids) aimed at the probe ports, through the XDP path and the
//!   userspace fallback: none becomes a result, genuine answers still get through.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use probe_common::{config::ProbeConfig, counters::XdpReason};
use sonde::{
    ebpf::KernelProbes,
    engine::{
        result::{CheckResult, Reason},
        round::new_config,
        spec::{CheckSpec, DnsSpec, HttpExpect, HttpSpec, ProbeSpec, TlsSpec},
        uring::{Engine, EngineConfig, Job, StatelessParts},
        PacketSource, PortRange,
    },
    lab::{self, Lab},
};
use sonde_tests::{
    checks::check,
    daemon::TempDir,
    hostile::{self, dns_a, dns_head, End, SpoofCounts},
    servers::{http_server, tls_config, tls_config_and_pem, HttpReply},
};

/// Every probe's timeout in this suite.
const T: Duration = Duration::from_secs(1);
/// How late after its timeout a result may arrive (wall clock, 2 shared cores).
const MARGIN: Duration = Duration::from_millis(200);

/// A result and how long after submission it arrived.
struct Timed {
    r: CheckResult,
    took: Duration,
}

/// Submit one probe of each check at once; collect every result with its arrival time.
fn run_timed(engine: &Engine, specs: &[Arc<CheckSpec>]) -> HashMap<String, Timed> {
    // Prepared first, as the daemon prepares a check once when it is loaded (an HTTP
    // check's request is encoded then: 8 MiB for one of them here), then timed.
    let jobs: Vec<Job> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| Job::new(Arc::clone(s), i as u64).expect("prepare"))
        .collect();
    let start = Instant::now();
    for job in jobs {
        engine.submit(job).expect("engine running");
    }
    let mut out = HashMap::new();
    for _ in specs {
        let r = engine
            .results()
            .recv_timeout(T + Duration::from_secs(5))
            .expect("every probe ends with a result");
        let took = start.elapsed();
        out.insert(r.check.to_string(), Timed { r, took });
    }
    assert!(
        engine
            .results()
            .recv_timeout(Duration::from_millis(200))
            .is_err(),
        "one result per probe"
    );
    out
}

/// What a probe must end with.
enum Want {
    /// Exactly this reason.
    Is(Reason),
    /// A protocol error whose detail contains this.
    Protocol(&'static str),
    /// A TLS failure whose detail contains this (case-insensitive).
    Tls(&'static str),
}

/// Assert the outcome and the time bound: a timeout ends at the deadline (within the
/// margin), anything else before it.
fn assert_outcome(results: &HashMap<String, Timed>, id: &str, want: &Want) {
    let t = results
        .get(id)
        .unwrap_or_else(|| panic!("no result for {id}"));
    let r = &t.r;
    let ok = match want {
        Want::Is(reason) => r.reason == *reason,
        Want::Protocol(s) => matches!(&r.reason, Reason::Protocol { detail } if detail.contains(s)),
        Want::Tls(s) => matches!(&r.reason, Reason::Tls { detail }
            if detail.to_lowercase().contains(&s.to_lowercase())),
    };
    assert!(ok, "{id}: unexpected outcome {r:?}");
    let total = r.phases.total.expect("total time");
    if r.reason == Reason::Timeout {
        assert!(
            total >= T && total < T + Duration::from_millis(20),
            "{id}: timed out after {total:?}, timeout {T:?}"
        );
    } else {
        assert!(total < T, "{id}: decided after {total:?}, past the timeout");
    }
    assert!(
        t.took <= T + MARGIN,
        "{id}: result arrived {:?} after submission (timeout {T:?} + {MARGIN:?})",
        t.took
    );
}

fn http_spec(tls: Option<TlsSpec>) -> ProbeSpec {
    ProbeSpec::Http(Box::new(HttpSpec {
        method: "GET".into(),
        path: "/health".into(),
        host: None,
        headers: Vec::new(),
        proxy_protocol: None,
        tls,
        keepalive: false,
        max_body: 4096,
        expect: HttpExpect::default(),
    }))
}

fn no_verify() -> Option<TlsSpec> {
    Some(TlsSpec {
        sni: Some("origin.test".into()),
        verify: false,
        ca_file: None,
    })
}

fn start_engine(lab: &Lab) -> Engine {
    lab.prober
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
        .expect("engine")
}

const STATUS_CUT: &[u8] = b"HTTP/1.1 20";
const HEADERS_CUT: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Le";
const BODY_CUT: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789";
const HUGE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 17179869184\r\n\r\n";
const CHUNKED_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";

#[test]
fn http_targets_that_misbehave() {
    if !lab::privileged_or_skip() {
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    let ns = &lab.target;
    let huge_sent = Arc::default();
    let chunked_sent = Arc::default();
    let _servers = [
        http_server(ns, "198.18.0.2:80", HttpReply::new(200, "ok"), None).0,
        hostile::slowloris(
            ns,
            "198.18.0.2:1001",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            Duration::from_secs(1),
        ),
        hostile::endless(
            ns,
            "198.18.0.2:1002",
            b"HTTP/1.1 200 OK\r\nX-Endless: ",
            b"a",
            Arc::default(),
        ),
        hostile::endless(
            ns,
            "198.18.0.2:1003",
            b"HTTP/1.1 200 OK\r\n",
            b"X-Many: 1\r\n",
            Arc::default(),
        ),
        hostile::endless(
            ns,
            "198.18.0.2:1004",
            HUGE_HEAD,
            b"0123456789abcdef",
            Arc::clone(&huge_sent),
        ),
        hostile::endless(
            ns,
            "198.18.0.2:1005",
            CHUNKED_HEAD,
            b"10\r\n0123456789abcdef\r\n",
            Arc::clone(&chunked_sent),
        ),
        hostile::endless(
            ns,
            "198.18.0.2:1006",
            b"",
            b"\x16\x03\x01\x00\xffSSH-2.0-garbage\x00\xff",
            Arc::default(),
        ),
        hostile::silent(ns, "198.18.0.2:1007"),
        hostile::deaf(ns, "198.18.0.2:1008"),
        hostile::cut(ns, "198.18.0.2:1010", b"", End::Fin),
        hostile::cut(ns, "198.18.0.2:1011", STATUS_CUT, End::Fin),
        hostile::cut(ns, "198.18.0.2:1012", HEADERS_CUT, End::Fin),
        hostile::cut(ns, "198.18.0.2:1013", BODY_CUT, End::Fin),
        hostile::cut(ns, "198.18.0.2:1020", b"", End::Rst),
        hostile::cut(ns, "198.18.0.2:1021", STATUS_CUT, End::Rst),
        hostile::cut(ns, "198.18.0.2:1022", HEADERS_CUT, End::Rst),
        hostile::cut(ns, "198.18.0.2:1023", BODY_CUT, End::Rst),
    ];
    let ids = [
        ("healthy", 80),
        ("slowloris", 1001),
        ("endless-header", 1002),
        ("endless-fields", 1003),
        ("huge-body", 1004),
        ("endless-chunked", 1005),
        ("garbage", 1006),
        ("silent", 1007),
        ("fin-before-any-byte", 1010),
        ("fin-mid-status", 1011),
        ("fin-mid-headers", 1012),
        ("fin-mid-body", 1013),
        ("rst-before-any-byte", 1020),
        ("rst-mid-status", 1021),
        ("rst-mid-headers", 1022),
        ("rst-mid-body", 1023),
    ];
    let mut specs: Vec<_> = ids
        .iter()
        .map(|(id, port)| check(id, "198.18.0.2", *port, http_spec(None), T))
        .collect();
    // A request larger than the socket buffers to a server that never reads: the
    // first send goes out in part, the rest waits for a window that never opens.
    let mut deaf = http_spec(None);
    if let ProbeSpec::Http(h) = &mut deaf {
        h.headers.push(("X-Pad".into(), "p".repeat(8 << 20)));
    }
    specs.push(check("deaf-huge-request", "198.18.0.2", 1008, deaf, T));
    let engine = start_engine(&lab);
    let res = run_timed(&engine, &specs);
    let closed = |phase| Want::Is(Reason::ConnectionClosed { phase });
    for (id, want) in [
        ("healthy", Want::Is(Reason::Ok)),
        ("slowloris", Want::Is(Reason::Timeout)),
        (
            "endless-header",
            Want::Protocol("header block longer than 16384 bytes"),
        ),
        (
            "endless-fields",
            Want::Protocol("header block longer than 16384 bytes"),
        ),
        ("huge-body", Want::Is(Reason::Timeout)),
        ("endless-chunked", Want::Is(Reason::Timeout)),
        ("garbage", Want::Protocol("at byte 0: not an HTTP response")),
        ("silent", Want::Is(Reason::Timeout)),
        ("deaf-huge-request", Want::Is(Reason::Timeout)),
        ("fin-before-any-byte", closed("headers")),
        ("fin-mid-status", closed("headers")),
        ("fin-mid-headers", closed("headers")),
        ("fin-mid-body", closed("body")),
        ("rst-before-any-byte", closed("headers")),
        ("rst-mid-status", closed("headers")),
        ("rst-mid-headers", closed("headers")),
        ("rst-mid-body", closed("body")),
    ] {
        assert_outcome(&res, id, &want);
    }
    // What the operator sees beside the reason: how far the exchange got.
    let r = |id: &str| &res[id].r;
    assert_eq!(
        r("slowloris").http_status,
        None,
        "status line never completed"
    );
    assert!(r("slowloris").phases.first_byte.is_some());
    assert_eq!(r("silent").http_status, None);
    assert!(r("silent").phases.connect.is_some() && r("silent").phases.first_byte.is_none());
    for id in [
        "huge-body",
        "endless-chunked",
        "fin-mid-body",
        "rst-mid-body",
    ] {
        assert_eq!(r(id).http_status, Some(200), "{id}: head was parsed");
    }
    // The bodies were streamed through and discarded: far more than max_body (4 KiB)
    // crossed the wire in the second the probe lasted (measured: 500-800 MiB for the
    // 16 GiB body, 16-20 MiB for 16-byte chunks, debug build, shared cores).
    for (id, sent) in [
        ("huge-body", &huge_sent),
        ("endless-chunked", &chunked_sent),
    ] {
        let n: u64 = sent.load(Ordering::Relaxed);
        assert!(
            n > 1000 * 4096,
            "{id}: only {n} bytes streamed; sonde must keep reading"
        );
        eprintln!("{id}: {} MiB streamed and discarded in {T:?}", n >> 20);
    }
    engine.shutdown();
}

/// A TLS fatal alert (handshake_failure), as a server that refuses the client sends.
const TLS_ALERT: &[u8] = &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28];

#[test]
fn https_targets_that_misbehave() {
    if !lab::privileged_or_skip() {
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    let ns = &lab.target;
    let cfg = tls_config("origin.test", 42);
    let (expired, expired_pem) = tls_config_and_pem("origin.test", -2);
    let (valid, valid_pem) = tls_config_and_pem("origin.test", 42);
    let dir = TempDir::new("hostile-tls");
    let (expired_ca, valid_ca) = (dir.0.join("expired.pem"), dir.0.join("valid.pem"));
    std::fs::write(&expired_ca, expired_pem).expect("write ca");
    std::fs::write(&valid_ca, valid_pem).expect("write ca");
    let c = || Arc::clone(&cfg);
    let _servers = [
        http_server(ns, "198.18.0.2:443", HttpReply::new(200, "ok"), Some(c())).0,
        hostile::reply_raw(ns, "198.18.0.2:2001", TLS_ALERT, End::Fin),
        hostile::reply_raw(
            ns,
            "198.18.0.2:2002",
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
            End::Fin,
        ),
        hostile::reply_raw(ns, "198.18.0.2:2003", b"", End::Fin),
        hostile::reply_raw(ns, "198.18.0.2:2004", b"", End::Rst),
        hostile::tls_handshake_cut(ns, "198.18.0.2:2005", c(), End::Fin),
        hostile::tls_handshake_cut(ns, "198.18.0.2:2006", c(), End::Rst),
        hostile::tls_cut(ns, "198.18.0.2:2007", c(), Some(STATUS_CUT), End::Fin),
        hostile::tls_cut(ns, "198.18.0.2:2008", c(), Some(STATUS_CUT), End::Rst),
        hostile::tls_cut(ns, "198.18.0.2:2009", c(), Some(HEADERS_CUT), End::Fin),
        hostile::tls_cut(ns, "198.18.0.2:2010", c(), Some(HEADERS_CUT), End::Rst),
        hostile::tls_cut(ns, "198.18.0.2:2011", c(), Some(BODY_CUT), End::Fin),
        hostile::tls_cut(ns, "198.18.0.2:2012", c(), Some(BODY_CUT), End::Rst),
        hostile::tls_cut(ns, "198.18.0.2:2013", c(), None, End::Fin),
        hostile::silent(ns, "198.18.0.2:2014"),
        http_server(
            ns,
            "198.18.0.2:2020",
            HttpReply::new(200, "ok"),
            Some(expired),
        )
        .0,
        http_server(
            ns,
            "198.18.0.2:2021",
            HttpReply::new(200, "ok"),
            Some(valid),
        )
        .0,
    ];
    let verify_with = |ca: &std::path::Path| {
        Some(TlsSpec {
            sni: Some("origin.test".into()),
            verify: true,
            ca_file: Some(ca.to_owned()),
        })
    };
    let mut specs: Vec<_> = [
        ("healthy", 443),
        ("alert", 2001),
        ("plaintext", 2002),
        ("fin-before-any-byte", 2003),
        ("rst-before-any-byte", 2004),
        ("fin-mid-handshake", 2005),
        ("rst-mid-handshake", 2006),
        ("fin-mid-status", 2007),
        ("rst-mid-status", 2008),
        ("fin-mid-headers", 2009),
        ("rst-mid-headers", 2010),
        ("fin-mid-body", 2011),
        ("rst-mid-body", 2012),
        ("silent-after-handshake", 2013),
        ("silent-before-handshake", 2014),
    ]
    .iter()
    .map(|(id, port)| check(id, "198.18.0.2", *port, http_spec(no_verify()), T))
    .collect();
    specs.push(check(
        "expired-verified",
        "198.18.0.2",
        2020,
        http_spec(verify_with(&expired_ca)),
        T,
    ));
    specs.push(check(
        "valid-verified",
        "198.18.0.2",
        2021,
        http_spec(verify_with(&valid_ca)),
        T,
    ));
    let engine = start_engine(&lab);
    let res = run_timed(&engine, &specs);
    let closed = |phase| Want::Is(Reason::ConnectionClosed { phase });
    for (id, want) in [
        ("healthy", Want::Is(Reason::Ok)),
        ("alert", Want::Tls("alert")),
        ("plaintext", Want::Tls("corrupt message")),
        ("fin-before-any-byte", closed("tls")),
        ("rst-before-any-byte", closed("tls")),
        ("fin-mid-handshake", closed("tls")),
        ("rst-mid-handshake", closed("tls")),
        ("fin-mid-status", closed("headers")),
        ("rst-mid-status", closed("headers")),
        ("fin-mid-headers", closed("headers")),
        ("rst-mid-headers", closed("headers")),
        ("fin-mid-body", closed("body")),
        ("rst-mid-body", closed("body")),
        ("silent-after-handshake", Want::Is(Reason::Timeout)),
        ("silent-before-handshake", Want::Is(Reason::Timeout)),
        ("expired-verified", Want::Tls("expired")),
        ("valid-verified", Want::Is(Reason::Ok)),
    ] {
        assert_outcome(&res, id, &want);
    }
    let r = |id: &str| &res[id].r;
    assert!(r("silent-after-handshake").phases.tls.is_some());
    assert!(r("silent-before-handshake").phases.tls.is_none());
    assert_eq!(r("valid-verified").cert_days_left, Some(42));
    for id in ["fin-mid-body", "rst-mid-body"] {
        assert_eq!(r(id).http_status, Some(200), "{id}");
        assert!(r(id).phases.tls.is_some(), "{id}: handshake done");
    }
    engine.shutdown();
}

/// The question's name in a query: `www.origin.test` starts at offset 12.
const QNAME: usize = 12;

#[test]
fn dns_targets_that_misbehave() {
    if !lab::privileged_or_skip() {
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    let ns = &lab.target;
    let good = Ipv4Addr::new(198, 18, 7, 7);
    let with_id = move |q: &[u8], id: u16| {
        let mut a = dns_head(q, 1);
        a[..2].copy_from_slice(&id.to_be_bytes());
        a.extend_from_slice(&dns_a(good));
        a
    };
    let id_of = |q: &[u8]| u16::from_be_bytes([q[0], q[1]]);
    let _servers = [
        // Control: a correct answer.
        sonde_tests::servers::udp_server(ns, "198.18.0.2:5301", move |q| {
            let mut a = dns_head(q, 1);
            a.extend_from_slice(&dns_a(good));
            vec![a]
        }),
        // The answer record cut in the middle.
        sonde_tests::servers::udp_server(ns, "198.18.0.2:5302", move |q| {
            let mut a = dns_head(q, 1);
            a.extend_from_slice(&dns_a(good)[..6]);
            vec![a]
        }),
        // Only 7 bytes: not even a header.
        sonde_tests::servers::udp_server(ns, "198.18.0.2:5303", |q| vec![q[..7].to_vec()]),
        // The record's owner name points at itself.
        sonde_tests::servers::udp_server(ns, "198.18.0.2:5304", move |q| {
            let mut a = dns_head(q, 1);
            let at = a.len();
            a.extend_from_slice(&[0xc0, at as u8]);
            a.extend_from_slice(&dns_a(good)[2..]);
            vec![a]
        }),
        // A label, then a pointer back to that label: a loop.
        sonde_tests::servers::udp_server(ns, "198.18.0.2:5305", move |q| {
            let mut a = dns_head(q, 1);
            let at = a.len();
            a.extend_from_slice(&[1, b'a', 0xc0, at as u8]);
            a.extend_from_slice(&dns_a(good)[2..]);
            vec![a]
        }),
        // Five answers announced, one present.
        sonde_tests::servers::udp_server(ns, "198.18.0.2:5306", move |q| {
            let mut a = dns_head(q, 5);
            a.extend_from_slice(&dns_a(good));
            vec![a]
        }),
        // Two questions announced.
        sonde_tests::servers::udp_server(ns, "198.18.0.2:5307", move |q| {
            let mut a = dns_head(q, 1);
            a[4..6].copy_from_slice(&2u16.to_be_bytes());
            a.extend_from_slice(&dns_a(good));
            vec![a]
        }),
        // NOERROR without any answer.
        sonde_tests::servers::udp_server(ns, "198.18.0.2:5308", move |q| vec![dns_head(q, 0)]),
        // Only answers with other ids.
        sonde_tests::servers::udp_server(ns, "198.18.0.2:5309", move |q| {
            let id = id_of(q);
            (1..=3u16).map(|k| with_id(q, id ^ k)).collect()
        }),
        // 100 answers with other ids, then the right one.
        sonde_tests::servers::udp_server(ns, "198.18.0.2:5310", move |q| {
            let id = id_of(q);
            let mut v: Vec<_> = (1..=100u16).map(|k| with_id(q, id ^ k)).collect();
            v.push(with_id(q, id));
            v
        }),
        // A reserved label type (0x80) as the owner name.
        sonde_tests::servers::udp_server(ns, "198.18.0.2:5311", move |q| {
            let mut a = dns_head(q, 1);
            a.extend_from_slice(&[0x80, QNAME as u8]);
            a.extend_from_slice(&dns_a(good)[2..]);
            vec![a]
        }),
        // The query echoed back (QR clear).
        sonde_tests::servers::udp_server(ns, "198.18.0.2:5312", |q| vec![q.to_vec()]),
        // An empty datagram.
        sonde_tests::servers::udp_server(ns, "198.18.0.2:5313", |_| vec![Vec::new()]),
    ];
    let dns = || {
        ProbeSpec::Dns(Box::new(DnsSpec {
            name: "www.origin.test".into(),
            qtype: 1,
            expect_rcode: 0,
            expect_answer: Some("198.18.7.7".into()),
        }))
    };
    let ids = [
        ("healthy", 5301),
        ("truncated-record", 5302),
        ("truncated-header", 5303),
        ("pointer-to-itself", 5304),
        ("pointer-loop", 5305),
        ("ancount-too-high", 5306),
        ("two-questions", 5307),
        ("no-answer", 5308),
        ("wrong-id-only", 5309),
        ("wrong-ids-first", 5310),
        ("reserved-label", 5311),
        ("query-echoed", 5312),
        ("empty", 5313),
    ];
    let specs: Vec<_> = ids
        .iter()
        .map(|(id, port)| check(id, "198.18.0.2", *port, dns(), T))
        .collect();
    let engine = start_engine(&lab);
    let res = run_timed(&engine, &specs);
    for (id, want) in [
        ("healthy", Want::Is(Reason::Ok)),
        (
            "truncated-record",
            Want::Protocol("record header (10 bytes) runs past the end"),
        ),
        (
            "truncated-header",
            Want::Protocol("shorter than the 12-byte header"),
        ),
        (
            "pointer-to-itself",
            Want::Protocol("does not point backwards"),
        ),
        (
            "pointer-loop",
            Want::Protocol("more than 32 compression pointers"),
        ),
        (
            "ancount-too-high",
            Want::Protocol("name runs past the end of the message"),
        ),
        ("two-questions", Want::Protocol("2 questions instead of 1")),
        ("no-answer", Want::Is(Reason::DnsAnswerMismatch)),
        ("wrong-id-only", Want::Is(Reason::Timeout)),
        ("wrong-ids-first", Want::Is(Reason::Ok)),
        ("reserved-label", Want::Protocol("reserved label type 0x80")),
        ("query-echoed", Want::Protocol("is a query, not a response")),
        (
            "empty",
            Want::Protocol("0 bytes, shorter than the 12-byte header"),
        ),
    ] {
        assert_outcome(&res, id, &want);
    }
    engine.shutdown();
}

/// The lab for spoofing: probes to a port and an address that never answer (nft drops
/// them in the target namespace), so every genuine result is a timeout, and an open
/// port (the listener returned) showing that genuine answers still get through.
fn silent_lab() -> (Lab, std::net::TcpListener) {
    let lab = Lab::two_hosts().expect("lab");
    let open = lab
        .target
        .run(|| std::net::TcpListener::bind("198.18.0.2:80"))
        .expect("enter")
        .expect("listen");
    lab.target
        .nft("add table inet t; add chain inet t in { type filter hook input priority 0; }; add rule inet t in tcp dport 9 drop; add rule inet t in icmp type echo-request drop")
        .expect("nft");
    (lab, open)
}

/// Runs tcp_syn and icmp probes (20 rounds, one every 100 ms) through `engine` while
/// the target namespace floods the prober with spoofed answers; asserts one result per
/// probe: a timeout for the silent targets, open for the open port; returns what was
/// spoofed.
/// Rounds of probes under spoofing.
const ROUNDS: u64 = 20;

fn probe_under_spoofing(lab: &Lab, engine: &Engine, cfg: &ProbeConfig) -> Arc<SpoofCounts> {
    let (flood, sent) = hostile::spoof_flood(
        &lab.target,
        lab::TARGET_ADDR,
        lab::PROBER_ADDR,
        cfg.port_lo..=cfg.port_hi,
        9,
        cfg.icmp_id,
    );
    let specs = [
        check("syn", "198.18.0.2", 9, ProbeSpec::TcpSyn, T),
        check("ping", "198.18.0.2", 0, ProbeSpec::Icmp, T),
        check("open", "198.18.0.2", 80, ProbeSpec::TcpSyn, T),
    ];
    let rounds = ROUNDS;
    let start = Instant::now();
    for round in 0..rounds {
        for (i, s) in specs.iter().enumerate() {
            engine
                .submit(Job::new(Arc::clone(s), round * 10 + i as u64).expect("prepare"))
                .expect("running");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut results = Vec::new();
    while let Ok(r) = engine.results().recv_timeout(T + MARGIN) {
        results.push(r);
    }
    let elapsed = start.elapsed();
    drop(flood);
    assert_eq!(
        results.len() as u64,
        rounds * specs.len() as u64,
        "one result per probe, none from spoofed packets"
    );
    for r in results.iter().filter(|r| r.check.as_str() == "open") {
        assert_eq!(r.reason, Reason::Ok, "genuine answers get through: {r:?}");
    }
    for r in results.iter().filter(|r| r.check.as_str() != "open") {
        assert_eq!(
            r.reason,
            Reason::Timeout,
            "a spoofed answer was taken: {r:?}"
        );
        // Stateless probes are expired by the collector thread, which competes for
        // the cores with the flood (and, in parallel, the other tests' floods).
        let total = r.phases.total.expect("total");
        assert!(
            total >= T && total < T + MARGIN,
            "timed out after {total:?}"
        );
    }
    let rounds_spoofed = sent.rounds.load(Ordering::Relaxed);
    eprintln!(
        "spoofed in {elapsed:?}: {} TCP answers/quotes with wrong cookies, {} ICMP with \
         wrong ids ({rounds_spoofed} rounds over the port range)",
        sent.bad_cookie.load(Ordering::Relaxed),
        sent.not_ours.load(Ordering::Relaxed),
    );
    assert!(rounds_spoofed >= 1, "the flood covered every probe port");
    sent
}

/// Spoofed answers from the target's own address, at the probe ports and the ICMP id:
/// SYN-ACKs and RST-ACKs with wrong cookies, bare RSTs, ICMP errors quoting TCP probes
/// with a wrong sequence number, echo replies and errors quoting echo requests with a
/// wrong id, through the kernel path (XDP): none becomes a result, and the XDP program
/// refused every spoofed TCP answer as a bad cookie.
#[test]
fn spoofed_answers_are_never_results() {
    if !lab::kernel_programs_or_skip() {
        return;
    }
    let (lab, _open) = silent_lab();
    let iface = lab.link.a.name.clone();
    let cfg = new_config(PortRange::DEFAULT);
    let (engine, kernel) = lab
        .prober
        .run(move || {
            let mut k = KernelProbes::load().expect("load");
            k.set_config(&cfg).expect("config");
            k.attach(&iface).expect("attach");
            PortRange::DEFAULT.reserve().expect("reserve ports");
            let parts = StatelessParts {
                source: Box::new(k.take_events().expect("events")),
                probe: cfg,
            };
            (stateless_engine(parts), k)
        })
        .expect("enter prober");
    let before = kernel.counters().expect("counters");
    let sent = probe_under_spoofing(&lab, &engine, &cfg);
    std::thread::sleep(Duration::from_millis(100));
    let d = kernel.counters().expect("counters").since(&before);
    let bad = sent.bad_cookie.load(Ordering::Relaxed);
    assert_eq!(
        d.xdp(XdpReason::BadCookie),
        bad,
        "every spoofed TCP answer reached XDP and was refused: {d:?}"
    );
    assert_eq!(d.xdp(XdpReason::AnswerOpen), ROUNDS, "the open port, only");
    for reason in [
        XdpReason::AnswerClosed,
        XdpReason::AnswerEcho,
        XdpReason::AnswerUnreachable,
    ] {
        assert_eq!(d.xdp(reason), 0, "{reason:?}: no spoofed answer recorded");
    }
    engine.shutdown();
}

/// The same flood against the userspace fallback (`--userspace`: the same classifier
/// on an AF_PACKET socket): none becomes a result either.
#[test]
fn spoofed_answers_are_never_results_in_userspace() {
    if !lab::privileged_or_skip() {
        return;
    }
    let (lab, _open) = silent_lab();
    let iface = lab.link.a.name.clone();
    let cfg = new_config(PortRange::DEFAULT);
    let engine = lab
        .prober
        .run(move || {
            PortRange::DEFAULT.reserve().expect("reserve ports");
            let parts = StatelessParts {
                source: Box::new(PacketSource::open(&iface, cfg).expect("packet socket")),
                probe: cfg,
            };
            stateless_engine(parts)
        })
        .expect("enter prober");
    let _ = probe_under_spoofing(&lab, &engine, &cfg);
    engine.shutdown();
}

fn stateless_engine(parts: StatelessParts) -> Engine {
    Engine::start(
        &EngineConfig {
            threads: 1,
            stateless_senders: 1,
            ..EngineConfig::default()
        },
        Some(parts),
    )
    .expect("engine")
}
