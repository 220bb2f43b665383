//! All at once: the real daemon (`sonde run`, kernel programs attached) probes six
//! healthy targets (http, https, tcp_connect, dns, tcp_syn, icmp) next to fifteen
//! hostile ones (slowloris, endless header, 16 GiB body, endless chunked body, garbage,
//! silence, FIN and RST mid-body, TLS alert, RST mid-handshake, expired certificate,
//! truncated DNS, DNS pointer loop, DNS wrong ids, a black-holed port) while spoofed
//! SYN-ACKs, RSTs and ICMP errors flood the probe ports, for 16 s. The healthy checks
//! stay healthy and keep their interval, every hostile check is unhealthy for the
//! right reason, and the daemon's resident memory stays bounded.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use serde_json::Value;
use sonde::lab::{self, Lab};
use sonde_tests::{
    daemon::{Daemon, TempDir},
    hostile::{self, dns_a, dns_head, End},
    servers::{dns_server, http_server, tls_config, tls_config_and_pem, HttpReply},
};

/// Interval of the healthy checks.
const INTERVAL: Duration = Duration::from_millis(200);
/// How long the daemon runs with everything at once.
const RUN: Duration = Duration::from_secs(16);
/// Results a healthy check may miss or gain over [`RUN`] against elapsed / interval
/// (80 expected; measured 0-1 off).
const TOLERANCE: f64 = 4.0;
/// The daemon's resident memory bound (measured: 52 MiB peak, debug build, of which
/// 48 MiB right after start: the hostile targets add about 3 MiB).
const RSS_BOUND_KIB: u64 = 80 * 1024;

const HEALTHY: [&str; 6] = ["web", "web-tls", "conn", "dns", "syn", "ping"];

/// Hostile checks and the outcome label their latest result must carry.
const HOSTILE: [(&str, &str); 15] = [
    ("slowloris", "timeout"),
    ("endless-header", "protocol"),
    ("huge-body", "timeout"),
    ("endless-chunked", "timeout"),
    ("garbage", "protocol"),
    ("silent", "timeout"),
    ("fin-mid-body", "connection_closed"),
    ("rst-mid-body", "connection_closed"),
    ("tls-alert", "tls"),
    ("tls-rst-handshake", "connection_closed"),
    ("tls-expired", "tls"),
    ("dns-truncated", "protocol"),
    ("dns-loop", "protocol"),
    ("dns-wrong-id", "timeout"),
    ("syn-black-hole", "timeout"),
];

fn config(ca: &std::path::Path) -> String {
    let ms = INTERVAL.as_millis();
    let mut c = format!(
        r#"
[daemon]
ports = "61000-61999"

[defaults]
interval = "{ms}ms"
fast_interval = "{ms}ms"
timeout = "150ms"
jitter = 0.0
rise = 2
fall = 3

[[check]]
id = "web"
target = "198.18.0.2:80"
kind = "http"
[check.http]
expect_body = "OK"

[[check]]
id = "web-tls"
target = "198.18.0.2:443"
kind = "https"
[check.tls]
sni = "origin.test"
verify = false

[[check]]
id = "conn"
target = "198.18.0.2:80"
kind = "tcp_connect"

[[check]]
id = "dns"
target = "198.18.0.2:53"
kind = "dns"
[check.dns]
name = "www.origin.test"
type = "A"
expect_answer = "198.18.7.7"

[[check]]
id = "syn"
target = "198.18.0.2:80"
kind = "tcp_syn"

[[check]]
id = "ping"
target = "198.18.0.2"
kind = "icmp"
"#
    );
    let hostile = [
        ("slowloris", "1001", "http", ""),
        ("endless-header", "1002", "http", ""),
        ("huge-body", "1004", "http", ""),
        ("endless-chunked", "1005", "http", ""),
        ("garbage", "1006", "http", ""),
        ("silent", "1007", "http", ""),
        ("fin-mid-body", "1013", "http", ""),
        ("rst-mid-body", "1023", "http", ""),
        (
            "tls-alert",
            "2001",
            "https",
            "[check.tls]\nsni = \"origin.test\"\nverify = false\n",
        ),
        (
            "tls-rst-handshake",
            "2006",
            "https",
            "[check.tls]\nsni = \"origin.test\"\nverify = false\n",
        ),
        ("tls-expired", "2020", "https", ""),
        ("dns-truncated", "5302", "dns", ""),
        ("dns-loop", "5305", "dns", ""),
        ("dns-wrong-id", "5309", "dns", ""),
        ("syn-black-hole", "9", "tcp_syn", ""),
    ];
    for (id, port, kind, extra) in hostile {
        c.push_str(&format!(
            "\n[[check]]\nid = \"{id}\"\ntarget = \"198.18.0.2:{port}\"\nkind = \"{kind}\"\n\
             interval = \"1s\"\nfast_interval = \"1s\"\ntimeout = \"500ms\"\n{extra}"
        ));
        if id == "tls-expired" {
            c.push_str(&format!(
                "[check.tls]\nsni = \"origin.test\"\nverify = true\nca_file = \"{}\"\n",
                ca.display()
            ));
        }
        if kind == "dns" {
            c.push_str("[check.dns]\nname = \"www.origin.test\"\ntype = \"A\"\n");
        }
    }
    c
}

/// The daemon's resident set (VmRSS), KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

#[test]
fn healthy_checks_keep_their_interval_next_to_hostile_targets() {
    if !lab::kernel_programs_or_skip() {
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    let ns = &lab.target;
    lab.target
        .nft("add table inet t; add chain inet t in { type filter hook input priority 0; }; add rule inet t in tcp dport 9 drop")
        .expect("nft");
    let dir = TempDir::new("hostile-daemon");
    let (expired, pem) = tls_config_and_pem("origin.test", -2);
    let ca = dir.0.join("expired-ca.pem");
    std::fs::write(&ca, pem).expect("ca");
    let good = Ipv4Addr::new(198, 18, 7, 7);
    let tls = tls_config("origin.test", 42);
    let _servers = [
        http_server(ns, "198.18.0.2:80", HttpReply::new(200, "service OK"), None).0,
        http_server(
            ns,
            "198.18.0.2:443",
            HttpReply::new(200, "ok"),
            Some(tls.clone()),
        )
        .0,
        dns_server(ns, "198.18.0.2:53", "www.origin.test", good, false),
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
            Default::default(),
        ),
        hostile::endless(
            ns,
            "198.18.0.2:1004",
            b"HTTP/1.1 200 OK\r\nContent-Length: 17179869184\r\n\r\n",
            b"0123456789abcdef",
            Default::default(),
        ),
        hostile::endless(
            ns,
            "198.18.0.2:1005",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"10\r\n0123456789abcdef\r\n",
            Default::default(),
        ),
        hostile::endless(
            ns,
            "198.18.0.2:1006",
            b"",
            b"\x00\xffgarbage\r\n",
            Default::default(),
        ),
        hostile::silent(ns, "198.18.0.2:1007"),
        hostile::cut(
            ns,
            "198.18.0.2:1013",
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
            End::Fin,
        ),
        hostile::cut(
            ns,
            "198.18.0.2:1023",
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
            End::Rst,
        ),
        hostile::reply_raw(
            ns,
            "198.18.0.2:2001",
            &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28],
            End::Fin,
        ),
        hostile::tls_handshake_cut(ns, "198.18.0.2:2006", tls, End::Rst),
        http_server(
            ns,
            "198.18.0.2:2020",
            HttpReply::new(200, "ok"),
            Some(expired),
        )
        .0,
        sonde_tests::servers::udp_server(ns, "198.18.0.2:5302", move |q| {
            let mut a = dns_head(q, 1);
            a.extend_from_slice(&dns_a(good)[..6]);
            vec![a]
        }),
        sonde_tests::servers::udp_server(ns, "198.18.0.2:5305", move |q| {
            let mut a = dns_head(q, 1);
            let at = a.len();
            a.extend_from_slice(&[1, b'a', 0xc0, at as u8]);
            a.extend_from_slice(&dns_a(good)[2..]);
            vec![a]
        }),
        sonde_tests::servers::udp_server(ns, "198.18.0.2:5309", move |q| {
            let mut a = dns_head(q, 1);
            a[0] ^= 0xff;
            a.extend_from_slice(&dns_a(good));
            vec![a.clone(), a]
        }),
    ];
    let config_path = dir.0.join("checks.toml");
    std::fs::write(&config_path, config(&ca)).expect("config");
    let iface = lab.link.a.name.clone();
    let d = Daemon::start(
        &lab.prober,
        &dir.0,
        &config_path,
        &["--iface", &iface, "--per-target-pps", "500"],
    );
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{}/comm", d.pid))
            .expect("comm")
            .trim(),
        "sonde",
        "the pid is the daemon's"
    );
    let rss_start = rss_kib(d.pid);
    let (_flood, spoofed) = hostile::spoof_flood(
        &lab.target,
        lab::TARGET_ADDR,
        lab::PROBER_ADDR,
        61000..=61999,
        9,
        0,
    );
    d.wait_all(&HEALTHY, "healthy", Duration::from_secs(10));

    let (before, t0) = (d.results_per_check(), Instant::now());
    let mut rss_max = 0;
    let mut rss_samples = Vec::new();
    while t0.elapsed() < RUN {
        let states = d.states();
        for id in HEALTHY {
            assert!(
                states.iter().any(|(i, s)| i == id && s == "healthy"),
                "{id} stays healthy next to hostile targets: {states:?}"
            );
        }
        let rss = rss_kib(d.pid);
        rss_max = rss_max.max(rss);
        rss_samples.push(rss);
        std::thread::sleep(Duration::from_millis(500));
    }
    let (after, elapsed) = (d.results_per_check(), t0.elapsed());
    let expected = elapsed.as_secs_f64() / INTERVAL.as_secs_f64();
    let mut report = Vec::new();
    for id in HEALTHY {
        let n = after.get(id).copied().unwrap_or(0) - before.get(id).copied().unwrap_or(0);
        report.push(format!("{id}={n}"));
        assert!(
            (n as f64 - expected).abs() <= TOLERANCE,
            "{id}: {n} results in {elapsed:?}, {expected:.1} expected at one per {INTERVAL:?}"
        );
    }
    eprintln!(
        "in {elapsed:?} ({expected:.1} expected per healthy check): {}; daemon VmRSS {rss_start} KiB at start, max {} KiB, samples {rss_samples:?}; spoofed {:?}",
        report.join(" "),
        rss_max,
        spoofed
    );
    assert!(
        rss_max <= RSS_BOUND_KIB,
        "daemon VmRSS reached {rss_max} KiB, bound {RSS_BOUND_KIB} KiB"
    );
    // Memory does not creep: the last sample is within 4 MiB of the first.
    let (first, last) = (rss_samples[0], *rss_samples.last().expect("samples"));
    assert!(
        last <= first + 4096,
        "VmRSS grew from {first} to {last} KiB"
    );
    for (id, label) in HOSTILE {
        let v: Value = d.client().get(&format!("/v1/checks/{id}")).expect("check");
        let s = v.get("status").unwrap_or(&v);
        assert_eq!(s["state"], "unhealthy", "{id}: {v}");
        let got = &s["last_result"]["reason"];
        let got = got.get("reason").unwrap_or(got);
        assert_eq!(got, label, "{id}: {v}");
        let n = after.get(id).copied().unwrap_or(0) - before.get(id).copied().unwrap_or(0);
        assert!(
            n as f64 >= elapsed.as_secs_f64() - 2.0,
            "{id}: probed every second: {n} results in {elapsed:?}"
        );
    }
}
