//! Every stateful probe kind of the io_uring engine against real servers in a target
//! namespace: HTTP (200, 503, wrong body, wrong header, slow, PROXY protocol), HTTPS
//! with a self-signed certificate (expiry reported; refused when verifying), and DNS
//! (answer, NXDOMAIN, a stray answer with the wrong id first).

use std::{net::Ipv4Addr, time::Duration};

use sonde::{
    engine::{
        result::Reason,
        spec::{DnsSpec, HttpExpect, HttpSpec, ProbeSpec, ProxyProtocol, StatusRange, TlsSpec},
        uring::{Engine, EngineConfig},
    },
    lab::{self, Lab},
};
use sonde_tests::{
    checks::{check, run_once},
    servers::{dns_server, http_server, tls_config, HttpReply},
};

fn http(path: &str) -> HttpSpec {
    HttpSpec {
        method: "GET".into(),
        path: path.into(),
        host: None,
        headers: vec![("X-Probe".into(), "sonde".into())],
        proxy_protocol: None,
        tls: None,
        keepalive: false,
        max_body: 4096,
        expect: HttpExpect::default(),
    }
}

#[test]
fn http_https_and_dns_probes() {
    if !lab::privileged_or_skip() {
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    let t = Duration::from_millis(500);
    let (_ok, _) = http_server(
        &lab.target,
        "198.18.0.2:80",
        {
            let mut r = HttpReply::new(200, "service OK");
            r.headers.push(("X-Status".into(), "up".into()));
            r
        },
        None,
    );
    let (_down, _) = http_server(
        &lab.target,
        "198.18.0.2:81",
        HttpReply::new(503, "maintenance"),
        None,
    );
    let (_slow, _) = http_server(
        &lab.target,
        "198.18.0.2:82",
        {
            let mut r = HttpReply::new(200, "late");
            r.delay = Duration::from_secs(2);
            r
        },
        None,
    );
    let (_proxied, seen) = http_server(
        &lab.target,
        "198.18.0.2:83",
        HttpReply::new(200, "ok"),
        None,
    );
    let (_tls, _) = http_server(
        &lab.target,
        "198.18.0.2:443",
        HttpReply::new(200, "secure OK"),
        Some(tls_config("origin.test", 42)),
    );
    let (_expired, _) = http_server(
        &lab.target,
        "198.18.0.2:444",
        HttpReply::new(200, "old"),
        Some(tls_config("origin.test", -2)),
    );
    let _dns = dns_server(
        &lab.target,
        "198.18.0.2:53",
        "www.origin.test",
        Ipv4Addr::new(198, 18, 7, 7),
        false,
    );
    let _dns_stray = dns_server(
        &lab.target,
        "198.18.0.2:54",
        "www.origin.test",
        Ipv4Addr::new(198, 18, 7, 7),
        true,
    );

    let with = |f: &dyn Fn(&mut HttpSpec)| {
        let mut h = http("/health");
        f(&mut h);
        ProbeSpec::Http(Box::new(h))
    };
    let tls = |verify| {
        Some(TlsSpec {
            sni: Some("origin.test".into()),
            verify,
            ca_file: None,
        })
    };
    let dns = |name: &str, expect_rcode, answer: Option<&str>| {
        ProbeSpec::Dns(Box::new(DnsSpec {
            name: name.into(),
            qtype: 1,
            expect_rcode,
            expect_answer: answer.map(Into::into),
        }))
    };
    let specs = [
        check(
            "ok",
            "198.18.0.2",
            80,
            with(&|h| h.expect.body_contains = Some("OK".into())),
            t,
        ),
        check("503", "198.18.0.2", 81, with(&|_| {}), t),
        check(
            "503-accepted",
            "198.18.0.2",
            81,
            with(&|h| h.expect.statuses = vec![StatusRange { lo: 500, hi: 503 }]),
            t,
        ),
        check(
            "wrong-body",
            "198.18.0.2",
            80,
            with(&|h| h.expect.body_contains = Some("ready".into())),
            t,
        ),
        check(
            "body-regex",
            "198.18.0.2",
            80,
            with(&|h| h.expect.body_regex = Some("^service (OK|READY)$".into())),
            t,
        ),
        check(
            "wrong-header",
            "198.18.0.2",
            80,
            with(&|h| h.expect.header = Some(("X-Status".into(), "down".into()))),
            t,
        ),
        check(
            "header",
            "198.18.0.2",
            80,
            with(&|h| h.expect.header = Some(("x-status".into(), "up".into()))),
            t,
        ),
        check("slow", "198.18.0.2", 82, with(&|_| {}), t),
        check("refused", "198.18.0.2", 89, with(&|_| {}), t),
        check(
            "proxy-v1",
            "198.18.0.2",
            83,
            with(&|h| h.proxy_protocol = Some(ProxyProtocol::V1)),
            t,
        ),
        check(
            "https",
            "198.18.0.2",
            443,
            with(&|h| {
                h.tls = tls(false);
                h.expect.body_contains = Some("secure".into());
            }),
            t,
        ),
        check(
            "https-verify",
            "198.18.0.2",
            443,
            with(&|h| h.tls = tls(true)),
            t,
        ),
        check(
            "https-expired",
            "198.18.0.2",
            444,
            with(&|h| h.tls = tls(false)),
            t,
        ),
        check(
            "dns",
            "198.18.0.2",
            53,
            dns("www.origin.test", 0, Some("198.18.7.7")),
            t,
        ),
        check(
            "dns-nx",
            "198.18.0.2",
            53,
            dns("nope.origin.test", 0, None),
            t,
        ),
        check(
            "dns-nx-expected",
            "198.18.0.2",
            53,
            dns("nope.origin.test", 3, None),
            t,
        ),
        check(
            "dns-wrong-answer",
            "198.18.0.2",
            53,
            dns("www.origin.test", 0, Some("198.18.9.9")),
            t,
        ),
        check(
            "dns-stray",
            "198.18.0.2",
            54,
            dns("www.origin.test", 0, Some("198.18.7.7")),
            t,
        ),
    ];
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
    let results = run_once(&engine, &specs);
    let by = |id: &str| {
        results
            .iter()
            .find(|r| r.check.as_str() == id)
            .unwrap_or_else(|| panic!("no result for {id}"))
    };

    assert_eq!(by("ok").reason, Reason::Ok, "{:?}", by("ok"));
    assert_eq!(by("ok").http_status, Some(200));
    let p = by("ok").phases;
    assert!(
        p.connect.is_some() && p.first_byte.is_some() && p.total.is_some(),
        "{p:?}"
    );
    assert!(p.connect <= p.first_byte && p.first_byte <= p.total);
    assert_eq!(by("503").reason, Reason::Status { code: 503 });
    assert_eq!(by("503-accepted").reason, Reason::Ok);
    assert_eq!(by("wrong-body").reason, Reason::BodyMismatch);
    assert_eq!(by("body-regex").reason, Reason::Ok);
    assert_eq!(
        by("wrong-header").reason,
        Reason::HeaderMismatch {
            name: "X-Status".into()
        }
    );
    assert_eq!(by("header").reason, Reason::Ok);
    assert_eq!(by("slow").reason, Reason::Timeout);
    let slow = by("slow").phases.total.expect("total");
    assert!(
        slow >= t && slow < t + Duration::from_millis(10),
        "slow timed out after {slow:?}"
    );
    assert_eq!(by("refused").reason, Reason::Refused);
    assert_eq!(by("proxy-v1").reason, Reason::Ok);
    let got = seen.lock().expect("lock");
    let first = String::from_utf8_lossy(&got[0]);
    assert!(
        first.starts_with("PROXY TCP4 198.18.0.1 198.18.0.2 "),
        "PROXY header first: {first:?}"
    );
    assert!(
        first.contains(" 83\r\nGET /health HTTP/1.1\r\n"),
        "{first:?}"
    );
    assert!(first.contains("\r\nX-Probe: sonde\r\n"));

    let https = by("https");
    assert_eq!(https.reason, Reason::Ok, "{https:?}");
    assert_eq!(https.cert_days_left, Some(42));
    assert!(https.phases.tls.is_some() && https.phases.tls > https.phases.connect);
    assert!(
        matches!(&by("https-verify").reason, Reason::Tls { detail } if detail.contains("ertificate")),
        "{:?}",
        by("https-verify")
    );
    assert_eq!(
        by("https-expired").reason,
        Reason::Ok,
        "verification off: reported, not refused"
    );
    assert_eq!(by("https-expired").cert_days_left, Some(-2));

    assert_eq!(by("dns").reason, Reason::Ok, "{:?}", by("dns"));
    assert_eq!(by("dns-nx").reason, Reason::DnsRcode { rcode: 3 });
    assert_eq!(by("dns-nx-expected").reason, Reason::Ok);
    assert_eq!(by("dns-wrong-answer").reason, Reason::DnsAnswerMismatch);
    assert_eq!(
        by("dns-stray").reason,
        Reason::Ok,
        "the wrong-id answer is ignored: {:?}",
        by("dns-stray")
    );
    engine.shutdown();
}
