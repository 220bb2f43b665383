//! `sonde probe --kind KIND --target ...`: the real `sonde` binary run in the prober
//! namespace against servers in the target namespace. Results are printed one per probe
//! (`--json`: one object each), the exit status says whether every probe succeeded, and
//! an invalid option is refused with the checks file's message before any probe runs.

use std::process::Output;

use serde_json::Value;
use sonde::lab::{self, Lab};
use sonde_tests::{
    daemon::sonde_bin,
    servers::{http_server, listener, HttpReply},
};

/// Run `sonde probe ARGS...` in the prober namespace, whatever its exit status.
fn probe(lab: &Lab, args: &[&str]) -> Output {
    let bin = sonde_bin();
    let bin = bin.to_str().expect("utf-8 path");
    let mut argv = vec![bin, "probe"];
    argv.extend_from_slice(args);
    lab.prober.exec_unchecked(&argv).expect("run sonde probe")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Every stdout line as a JSON object.
fn json_lines(out: &Output) -> Vec<Value> {
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

fn show(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    )
}

#[test]
fn http_probes_print_each_result_as_json() {
    if !lab::privileged_or_skip() {
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    let (_web, seen) = http_server(
        &lab.target,
        "198.18.0.2:80",
        HttpReply::new(200, "service OK"),
        None,
    );
    // The defaults: one probe a second, timeout 1000 ms.
    let out = probe(
        &lab,
        &[
            "--kind",
            "http",
            "--target",
            "198.18.0.2:80",
            "--count",
            "3",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let results = json_lines(&out);
    assert_eq!(results.len(), 3, "{}", show(&out));
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["reason"]["reason"], "ok", "{r}");
        assert_eq!(r["http_status"], 200, "{r}");
        assert_eq!(r["seq"], i as u64 + 1, "in order, one a second: {r}");
        assert_eq!(r["clock"], "userspace", "{r}");
        assert!(!r["phases"]["first_byte"].is_null(), "{r}");
    }
    assert_eq!(seen.lock().expect("lock").len(), 3, "one request per probe");

    // The human form: a header, a line per probe, a summary.
    let out = probe(
        &lab,
        &[
            "--kind",
            "http",
            "--target",
            "198.18.0.2:80",
            "--count",
            "2",
            "--interval-ms",
            "100",
            "--timeout-ms",
            "50",
            "--expect-body",
            "OK",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(lines[0].starts_with("PROBE http 198.18.0.2:80: 2 probes every 100 ms"));
    assert!(lines[0].contains("userspace clock"), "{stdout}");
    assert!(lines[1].starts_with("seq=1 ok rtt="), "{stdout}");
    assert!(lines[1].contains(" http=200 connect="), "{stdout}");
    assert!(lines[2].starts_with("seq=2 ok rtt="), "{stdout}");
    assert!(
        lines[3].starts_with("--- http 198.18.0.2:80: 2 probes, 2 ok, 0 failed; rtt min/avg/max"),
        "{stdout}"
    );
}

#[test]
fn a_closed_port_is_refused_and_fails_the_command() {
    if !lab::privileged_or_skip() {
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    let args = [
        "--kind",
        "tcp_connect",
        "--target",
        "198.18.0.2:81",
        "--count",
        "2",
        "--interval-ms",
        "100",
        "--timeout-ms",
        "50",
    ];
    let out = probe(&lab, &args);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("\nseq=1 refused "), "{stdout}");
    assert!(stdout.contains("\nseq=2 refused "), "{stdout}");
    assert!(
        stdout.contains("2 probes, 0 ok, 2 failed (2 refused)"),
        "{stdout}"
    );

    let mut json = args.to_vec();
    json.push("--json");
    let out = probe(&lab, &json);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let results = json_lines(&out);
    assert_eq!(results.len(), 2, "{}", show(&out));
    assert!(results.iter().all(|r| r["reason"]["reason"] == "refused"));
}

#[test]
fn icmp_probes_are_timed_by_the_kernel() {
    if !lab::kernel_programs_or_skip() {
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    // No --iface: the interface toward the target is found from the route.
    let out = probe(
        &lab,
        &[
            "--kind",
            "icmp",
            "--target",
            "198.18.0.2",
            "--count",
            "2",
            "--interval-ms",
            "200",
            "--timeout-ms",
            "100",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let results = json_lines(&out);
    assert_eq!(results.len(), 2, "{}", show(&out));
    for r in &results {
        assert_eq!(r["reason"]["reason"], "ok", "{r}");
        assert_eq!(r["clock"], "kernel", "{r}");
        assert!(!r["rtt"].is_null(), "{r}");
    }

    // The header says which clock measures, on which interface.
    let iface = lab.link.a.name.clone();
    let out = probe(
        &lab,
        &[
            "--kind",
            "tcp_syn",
            "--target",
            "198.18.0.2:22",
            "--iface",
            &iface,
            "--timeout-ms",
            "100",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "nothing listens on 22: {}",
        show(&out)
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with(
            "PROBE tcp_syn 198.18.0.2:22: 1 probe, timeout 100 ms; kernel timestamps, answers at TC ingress (veth"
        ),
        "{stdout}"
    );
    assert!(stdout.contains(&format!(" on {iface}\n")), "{stdout}");
    assert!(stdout.contains("\nseq=1 refused rtt="), "{stdout}");
    assert!(stdout.contains(" clock=kernel"), "{stdout}");
}

#[test]
fn syn_probes_fall_back_to_userspace_timestamps() {
    if !lab::privileged_or_skip() {
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    let _open = listener(&lab.target, "198.18.0.2:80");
    let out = probe(
        &lab,
        &[
            "--kind",
            "tcp_syn",
            "--target",
            "198.18.0.2:80",
            "--count",
            "2",
            "--interval-ms",
            "100",
            "--timeout-ms",
            "50",
            "--userspace",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let results = json_lines(&out);
    assert_eq!(results.len(), 2, "{}", show(&out));
    for r in &results {
        assert_eq!(r["reason"]["reason"], "ok", "{r}");
        assert_eq!(r["clock"], "userspace", "{r}");
    }
}

#[test]
fn invalid_options_are_refused_before_probing() {
    if !lab::privileged_or_skip() {
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    let (_web, seen) = http_server(
        &lab.target,
        "198.18.0.2:80",
        HttpReply::new(200, "OK"),
        None,
    );
    let out = probe(
        &lab,
        &[
            "--kind",
            "http",
            "--target",
            "198.18.0.2:80",
            "--expect-status",
            "700",
        ],
    );
    assert!(!out.status.success(), "{}", show(&out));
    assert!(out.stdout.is_empty(), "{}", show(&out));
    let stderr = text(&out.stderr);
    assert!(
        stderr
            .contains("--expect-status (http.expect_status[0]): status \"700\" is not in 100-599"),
        "the checks file's message: {stderr}"
    );

    // Timing is checked by the same rules: the timeout must be below the interval.
    let out = probe(
        &lab,
        &[
            "--kind",
            "http",
            "--target",
            "198.18.0.2:80",
            "--interval-ms",
            "500",
            "--timeout-ms",
            "500",
        ],
    );
    assert!(!out.status.success(), "{}", show(&out));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("timeout (500ms) must be below interval (500ms)"),
        "{stderr}"
    );
    assert!(seen.lock().expect("lock").is_empty(), "no request was sent");
}
