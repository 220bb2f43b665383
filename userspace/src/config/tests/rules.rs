//! One test per validation rule: the problem names the right line and field.
//! `one_check` puts the check header on line 1, id on 2, target on 3, kind on 4.

use super::{assert_problem, one_check, parse_ok};
use crate::engine::spec::ProbeSpec;

const V4: &str = "198.18.0.1:80";

#[test]
fn unknown_fields_everywhere() {
    assert_problem(
        "bogus = 1\n",
        1,
        "bogus",
        "unknown field `bogus`; expected one of: daemon",
    );
    assert_problem(
        "[daemon]\nifname = \"x\"\n",
        2,
        "daemon.ifname",
        "expected one of: iface",
    );
    assert_problem(
        "[defaults]\nintervall = \"1s\"\n",
        2,
        "defaults.intervall",
        "unknown field",
    );
    let text = one_check(V4, "http", "colour = 1\n[check.http]\npaht = \"/\"\n");
    assert_problem(
        &text,
        5,
        "check[0].colour",
        "expected one of: id, target, kind",
    );
    assert_problem(
        &text,
        7,
        "check[0].http.paht",
        "expected one of: method, path",
    );
    let text = one_check(
        V4,
        "http",
        "http.expect_header = { name = \"A\", vale = \"b\" }\n",
    );
    assert_problem(
        &text,
        5,
        "check[0].http.expect_header.vale",
        "unknown field",
    );
}

#[test]
fn missing_id_target_kind() {
    let text = "[[check]]\nkind = \"icmp\"\n\n[[check]]\nid = \"b\"\ntarget = \"198.18.0.1\"\n";
    assert_problem(text, 1, "check[0].id", "missing field `id`");
    assert_problem(
        text,
        1,
        "check[0].target",
        "missing field `target`; expected target = \"ADDR:PORT\"",
    );
    assert_problem(text, 4, "check[1].kind", "missing field `kind`");
}

#[test]
fn duplicate_ids_name_both_lines() {
    let text = "[[check]]\nid = \"a\"\ntarget = \"198.18.0.1\"\nkind = \"icmp\"\n\
                [[check]]\nid = \"a\"\ntarget = \"198.18.0.2\"\nkind = \"icmp\"\n";
    assert_problem(
        text,
        6,
        "check[1].id",
        "duplicate id \"a\"; first defined at t.toml:2:6",
    );
}

#[test]
fn ids_follow_the_pattern() {
    for bad in ["-web", "a b", "", "é", &"a".repeat(129)] {
        let text = format!("[[check]]\nid = \"{bad}\"\ntarget = \"198.18.0.1\"\nkind = \"icmp\"\n");
        assert_problem(&text, 2, "check[0].id", "invalid id");
    }
    for good in ["a", "web-1.pool_a:80", "9", &"a".repeat(128)] {
        let text =
            format!("[[check]]\nid = \"{good}\"\ntarget = \"198.18.0.1\"\nkind = \"icmp\"\n");
        parse_ok(&text);
    }
}

#[test]
fn port_rules() {
    let f = "check[0].target";
    assert_problem(
        &one_check("198.18.0.1:0", "tcp_syn", ""),
        3,
        f,
        "port 0 cannot be probed",
    );
    assert_problem(
        &one_check("198.18.0.1:65536", "tcp_syn", ""),
        3,
        f,
        "not a number 1-65535",
    );
    assert_problem(
        &one_check("198.18.0.1:http", "tcp_syn", ""),
        3,
        f,
        "not a number 1-65535",
    );
    assert_problem(
        &one_check("198.18.0.1", "dns", "dns.name = \"a\"\n"),
        3,
        f,
        "missing port for a dns check; expected ADDR:PORT, e.g. \"198.18.0.1:53\"",
    );
    assert_problem(
        &one_check("2001:db8::1", "http", ""),
        3,
        f,
        "e.g. \"[2001:db8::1]:80\"",
    );
    assert_problem(
        &one_check("198.18.0.1:7", "icmp", ""),
        3,
        f,
        "port 7 given for an icmp check",
    );
    assert_problem(
        &one_check("[2001:db8::1]:7", "icmp", ""),
        3,
        f,
        "write the address alone",
    );
}

#[test]
fn target_forms() {
    let f = "check[0].target";
    assert_problem(
        &one_check("[2001:db8::1:80", "tcp_syn", ""),
        3,
        f,
        "missing ']'",
    );
    assert_problem(
        &one_check("[198.18.0.1]:80", "tcp_syn", ""),
        3,
        f,
        "not an IPv6 address",
    );
    assert_problem(
        &one_check("[::1]80", "tcp_syn", ""),
        3,
        f,
        "unexpected \"80\" after ']'",
    );
    assert_problem(&one_check(":80", "tcp_syn", ""), 3, f, "missing host");
    assert_problem(&one_check("", "tcp_syn", ""), 3, f, "empty target");
    assert_problem(
        &one_check("a:b:c", "tcp_syn", ""),
        3,
        f,
        "written in brackets",
    );
    assert_problem(
        &one_check("bad_host!:80", "tcp_syn", ""),
        3,
        f,
        "invalid host name",
    );
}

#[test]
fn timeout_must_be_below_interval() {
    let t = one_check(V4, "tcp_syn", "interval = \"1s\"\ntimeout = \"1s\"\n");
    assert_problem(
        &t,
        6,
        "check[0].timeout",
        "timeout (1s) must be below interval (1s)",
    );
}

#[test]
fn fast_interval_must_not_exceed_interval() {
    let t = one_check(
        V4,
        "tcp_syn",
        "interval = \"1s\"\nfast_interval = \"1.5s\"\n",
    );
    assert_problem(
        &t,
        6,
        "check[0].fast_interval",
        "fast_interval (1.5s) must not exceed interval (1s)",
    );
    parse_ok(&one_check(
        V4,
        "tcp_syn",
        "interval = \"1s\"\nfast_interval = \"1s\"\n",
    ));
}

#[test]
fn interval_range() {
    let f = "check[0].interval";
    let exp = "expected 10ms to 1h";
    assert_problem(&one_check(V4, "tcp_syn", "interval = \"9ms\"\n"), 5, f, exp);
    assert_problem(&one_check(V4, "tcp_syn", "interval = \"61m\"\n"), 5, f, exp);
    assert_problem(
        &one_check(V4, "tcp_syn", "fast_interval = \"5ms\"\n"),
        5,
        "check[0].fast_interval",
        exp,
    );
    parse_ok(&one_check(V4, "tcp_syn", "interval = \"10ms\"\n"));
    parse_ok(&one_check(V4, "tcp_syn", "interval = \"1h\"\n"));
}

#[test]
fn rise_fall_window_threshold_ranges() {
    let cases = [
        ("rise = 0", "rise 0 is out of range; expected 1 to 100"),
        ("fall = 101", "fall 101 is out of range; expected 1 to 100"),
        ("window = 0", "window 0 is out of range; expected 1 to 64"),
        ("window = 65", "window 65 is out of range; expected 1 to 64"),
        ("threshold = 0", "threshold 0 is out of range"),
    ];
    for (line, msg) in cases {
        let field = format!("check[0].{}", line.split(' ').next().unwrap());
        assert_problem(
            &one_check(V4, "tcp_syn", &format!("{line}\n")),
            5,
            &field,
            msg,
        );
    }
    assert_problem(
        &one_check(V4, "tcp_syn", "window = 3\nthreshold = 4\n"),
        6,
        "check[0].threshold",
        "threshold (4) must not exceed window (3)",
    );
    assert_problem(
        &one_check(V4, "tcp_syn", "window = 3\n"),
        5,
        "check[0].window",
        "window needs threshold",
    );
    assert_problem(
        &one_check(V4, "tcp_syn", "threshold = 3\n"),
        5,
        "check[0].threshold",
        "needs window",
    );
    assert_problem(
        &one_check(V4, "tcp_syn", "rise = \"2\"\n"),
        5,
        "check[0].rise",
        "expected an integer, found a string",
    );
}

#[test]
fn rise_fall_and_window_threshold_are_exclusive() {
    let t = one_check(V4, "tcp_syn", "rise = 2\nwindow = 5\nthreshold = 3\n");
    assert_problem(
        &t,
        6,
        "check[0].window",
        "cannot be combined with rise/fall",
    );
    assert_problem(
        &t,
        7,
        "check[0].threshold",
        "cannot be combined with rise/fall",
    );
    let t = "[defaults]\nfall = 2\nthreshold = 1\n";
    assert_problem(t, 3, "defaults.threshold", "cannot be combined");
}

#[test]
fn jitter_range() {
    for bad in ["-0.1", "0.51", "1", "nan"] {
        let t = one_check(V4, "tcp_syn", &format!("jitter = {bad}\n"));
        assert_problem(&t, 5, "check[0].jitter", "expected 0.0 to 0.5");
    }
    parse_ok(&one_check(V4, "tcp_syn", "jitter = 0.5\n"));
    parse_ok(&one_check(V4, "tcp_syn", "jitter = 0\n"));
}

#[test]
fn kind_tables_must_match_the_kind() {
    let cases = [
        (
            "dns",
            "198.18.0.1:53",
            "[check.http]\npath = \"/\"",
            "check[0].http",
            "kind http or https only",
        ),
        (
            "http",
            V4,
            "[check.tls]\nverify = false",
            "check[0].tls",
            "kind https only",
        ),
        (
            "tcp_syn",
            V4,
            "[check.udp]\npayload = \"x\"",
            "check[0].udp",
            "kind udp only",
        ),
        (
            "udp",
            V4,
            "[check.dns]\nname = \"a\"",
            "check[0].dns",
            "kind dns only",
        ),
    ];
    for (kind, target, table, field, msg) in cases {
        let t = one_check(target, kind, &format!("{table}\n"));
        assert_problem(&t, 5, field, msg);
    }
}

#[test]
fn unknown_kind_and_initial() {
    assert_problem(
        &one_check(V4, "ftp", ""),
        4,
        "check[0].kind",
        "unknown kind \"ftp\"; expected one of: tcp_syn",
    );
    assert_problem(
        &one_check(V4, "tcp_syn", "initial = \"up\"\n"),
        5,
        "check[0].initial",
        "expected unknown, healthy or unhealthy",
    );
}

#[test]
fn dns_types_rcodes_and_names() {
    let dns = |rest: &str| {
        one_check(
            "198.18.0.1:53",
            "dns",
            &format!("[check.dns]\nname = \"example.test\"\n{rest}\n"),
        )
    };
    assert_problem(
        &dns("type = \"AXFRX\""),
        7,
        "check[0].dns.type",
        "unknown DNS type \"AXFRX\"; expected A, NS",
    );
    assert_problem(&dns("type = 0"), 7, "check[0].dns.type", "out of range");
    assert_problem(
        &dns("expect_rcode = \"BOGUS\""),
        7,
        "check[0].dns.expect_rcode",
        "expected NOERROR",
    );
    assert_problem(
        &dns("expect_rcode = 16"),
        7,
        "check[0].dns.expect_rcode",
        "0-15",
    );
    assert_problem(
        &dns("expect_answer = \"::1\""),
        7,
        "check[0].dns.expect_answer",
        "not an IPv4 address",
    );
    for (text, qtype, rcode) in [
        ("type = \"aaaa\"\nexpect_rcode = \"nxdomain\"", 28, 3),
        ("type = 65\nexpect_rcode = 5", 65, 5),
        ("type = \"TYPE65\"", 65, 0),
        ("type = \"SRV\"", 33, 0),
    ] {
        let c = parse_ok(&dns(text));
        let ProbeSpec::Dns(d) = &c.checks[0].probe else {
            panic!()
        };
        assert_eq!((d.qtype, d.expect_rcode), (qtype, rcode), "{text}");
    }
    let name = |n: &str| {
        one_check(
            "198.18.0.1:53",
            "dns",
            &format!("[check.dns]\nname = \"{n}\"\n"),
        )
    };
    let f = "check[0].dns.name";
    assert_problem(&name(&"a".repeat(64)), 6, f, "labels have 1 to 63");
    assert_problem(&name("a..b"), 6, f, "labels have 1 to 63");
    assert_problem(
        &name(&vec!["a".repeat(60); 5].join(".")),
        6,
        f,
        "at most 253",
    );
    assert_problem(&name("a b"), 6, f, "character ' '");
    parse_ok(&name(&format!(
        "{}.",
        vec!["a".repeat(63); 4].join(".").get(..253).unwrap()
    )));
    parse_ok(&name("."));
    assert_problem(
        &one_check("198.18.0.1:53", "dns", ""),
        1,
        f,
        "missing field `name`",
    );
}

#[test]
fn udp_payloads() {
    let udp = |rest: &str| one_check(V4, "udp", &format!("[check.udp]\n{rest}\n"));
    assert_problem(
        &udp("payload_hex = \"0g\""),
        6,
        "check[0].udp.payload_hex",
        "'g' is not a hex digit",
    );
    assert_problem(
        &udp("payload_hex = \"abc\""),
        6,
        "check[0].udp.payload_hex",
        "odd number of hex digits",
    );
    assert_problem(
        &udp("payload = \"a\"\npayload_hex = \"0a\""),
        7,
        "check[0].udp.payload_hex",
        "exclusive",
    );
    assert_problem(
        &udp("expect_prefix_hex = \"zz\""),
        6,
        "check[0].udp.expect_prefix_hex",
        "not a hex digit",
    );
    let c = parse_ok(&udp("payload = \"ping\"\nexpect_prefix_hex = \"FF00\""));
    let ProbeSpec::Udp(u) = &c.checks[0].probe else {
        panic!()
    };
    assert_eq!(
        (u.payload.as_slice(), u.expect_prefix.as_slice()),
        (&b"ping"[..], &[0xff, 0][..])
    );
}

#[test]
fn label_lengths() {
    let long = "k".repeat(129);
    let t = one_check(V4, "tcp_syn", &format!("labels = {{ {long} = \"v\" }}\n"));
    assert_problem(
        &t,
        5,
        &format!("check[0].labels.{long}"),
        "label key of 129 bytes; expected 1 to 128",
    );
    let t = one_check(V4, "tcp_syn", &format!("labels = {{ k = \"{long}\" }}\n"));
    assert_problem(&t, 5, "check[0].labels.k", "label value of 129 bytes");
    let t = one_check(V4, "tcp_syn", "labels = { k = 1 }\n");
    assert_problem(
        &t,
        5,
        "check[0].labels.k",
        "expected a string, found an integer",
    );
}

#[test]
fn daemon_settings() {
    assert_problem(
        "[daemon]\nports = \"100-200\"\n",
        2,
        "daemon.ports",
        "privileged ports",
    );
    assert_problem(
        "[daemon]\niface = \"a/b\"\n",
        2,
        "daemon.iface",
        "invalid interface name",
    );
    assert_problem(
        "[daemon]\nmetrics_check_limit = -1\n",
        2,
        "daemon.metrics_check_limit",
        "invalid metrics_check_limit -1; expected 0 or more checks",
    );
    assert_problem(
        "[daemon]\nmetrics_check_limit = \"many\"\n",
        2,
        "daemon.metrics_check_limit",
        "an integer",
    );
    let c = parse_ok("[daemon]\nports = \"40000-40999\"\nuserspace = true\n");
    assert_eq!(
        (c.daemon.ports.lo, c.daemon.ports.hi, c.daemon.userspace),
        (40000, 40999, true)
    );
    assert_eq!(
        c.daemon.metrics_check_limit,
        crate::config::METRICS_CHECK_LIMIT
    );
    let c = parse_ok("[daemon]\nmetrics_check_limit = 0\n");
    assert_eq!(c.daemon.metrics_check_limit, 0);
    assert_problem(
        "[daemon]\nsyn_ack_reset = \"kernel\"\n",
        2,
        "daemon.syn_ack_reset",
        "invalid syn_ack_reset \"kernel\"; expected \"tc\", \"xdp\" or \"stack\"",
    );
    use crate::ebpf::ResetMode;
    assert_eq!(c.daemon.syn_ack_reset, ResetMode::Tc, "the default");
    for m in ResetMode::ALL {
        let c = parse_ok(&format!("[daemon]\nsyn_ack_reset = \"{}\"\n", m.name()));
        assert_eq!(c.daemon.syn_ack_reset, m);
    }
    use crate::ebpf::AnswerHook;
    assert_eq!(c.daemon.answer_hook, AnswerHook::Auto, "the default");
    for h in AnswerHook::ALL {
        let c = parse_ok(&format!("[daemon]\nanswer_hook = \"{}\"\n", h.name()));
        assert_eq!(c.daemon.answer_hook, h);
    }
    assert_problem(
        "[daemon]\nanswer_hook = \"nic\"\n",
        2,
        "daemon.answer_hook",
        "invalid answer_hook \"nic\"; expected \"auto\", \"xdp\" or \"tc\"",
    );
    // Resets from XDP need the XDP program.
    assert_problem(
        "[daemon]\nsyn_ack_reset = \"xdp\"\nanswer_hook = \"tc\"\n",
        3,
        "daemon.answer_hook",
        "answer_hook \"tc\" attaches no XDP program, which syn_ack_reset = \"xdp\" needs",
    );
    let c = parse_ok("[daemon]\nsyn_ack_reset = \"xdp\"\nanswer_hook = \"xdp\"\n");
    assert_eq!(
        (c.daemon.syn_ack_reset, c.daemon.answer_hook),
        (ResetMode::Xdp, AnswerHook::Xdp)
    );
}

#[test]
fn check_must_be_an_array_of_tables() {
    assert_problem(
        "[check]\nid = \"a\"\n",
        1,
        "check",
        "expected [[check]] tables",
    );
    assert_problem(
        "defaults = 1\n",
        1,
        "defaults",
        "expected a table, found an integer",
    );
}

#[test]
fn implicit_tables_are_placed_at_their_first_field() {
    let t = one_check(
        "198.18.0.1:53",
        "dns",
        "dns.name = \"a\"\nhttp.path = \"/\"\n",
    );
    assert_problem(
        &t,
        6,
        "check[0].http",
        "[http] options given for a dns check",
    );
    let t = one_check(
        "198.18.0.1:53",
        "dns",
        "dns.name = \"a\"\n[check.http.expect_header]\nname = \"x\"\n",
    );
    assert_problem(
        &t,
        6,
        "check[0].http",
        "[http] options given for a dns check",
    );
}
