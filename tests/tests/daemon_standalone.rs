//! The standalone daemon end to end: the real `sonde` binary in a prober namespace,
//! targets in a target namespace. A target taken down turns unhealthy within fall x
//! interval (+ timeout) and healthy again after rise; the CLI, the watch stream and
//! /metrics agree; an invalid reload changes nothing; kill -9 and restart keeps state.

use std::{
    io::Write as _,
    process::Command,
    sync::mpsc,
    time::{Duration, Instant},
};

use sonde::lab::{self, Lab};
use sonde_tests::{
    daemon::{sonde_bin, Daemon, TempDir},
    servers::{http_server, HttpReply},
};

const CHECKS: &str = r#"
[defaults]
interval = "300ms"
fast_interval = "100ms"
timeout = "80ms"
jitter = 0.0
rise = 2
fall = 3

[[check]]
id = "web"
target = "198.18.0.2:80"
kind = "http"
labels = { pool = "origin-a" }
[check.http]
path = "/health"
expect_body = "OK"

[[check]]
id = "syn"
target = "198.18.0.2:80"
kind = "tcp_syn"

[[check]]
id = "ping"
target = "198.18.0.2"
kind = "icmp"

[[check]]
id = "conn"
target = "198.18.0.2:80"
kind = "tcp_connect"
"#;

const IDS: [&str; 4] = ["web", "syn", "ping", "conn"];

fn cli(d: &Daemon, args: &[&str]) -> (i32, String) {
    let out = Command::new(sonde_bin())
        .args(args)
        .args([
            "--socket",
            &d.socket.display().to_string(),
            "--token-file",
            &d.token.display().to_string(),
        ])
        .output()
        .expect("run sonde cli");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn standalone_daemon_end_to_end() {
    if !lab::kernel_programs_or_skip() {
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    let (_web, _) = http_server(
        &lab.target,
        "198.18.0.2:80",
        HttpReply::new(200, "service OK"),
        None,
    );
    let dir = TempDir::new("daemon");
    let config = dir.0.join("checks.toml");
    std::fs::write(&config, CHECKS).expect("write config");
    let iface = lab.link.a.name.clone();
    let d = Daemon::start(&lab.prober, &dir.0, &config, &["--iface", &iface]);

    // Everything becomes healthy after `rise` successes.
    d.wait_all(&IDS, "healthy", Duration::from_secs(5));
    let (code, out) = cli(&d, &["status"]);
    assert_eq!(code, 0, "all healthy: exit 0\n{out}");
    for id in IDS {
        assert!(out.contains(id), "{out}");
    }
    let info = d.client().get("/v1/info").expect("info");
    assert_eq!(info["clock"], "kernel", "{info}");
    assert_eq!(info["syn_ack_reset"]["mode"], "tc", "the default: {info}");

    // Follow the watch stream from here on.
    let (tx, rx) = mpsc::channel::<String>();
    let mut stream = d.client().watch().expect("watch");
    std::thread::spawn(move || {
        while let Ok(Some(line)) = stream.next_line() {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    // Take the target down: every check must be unhealthy within fall x interval
    // (+ timeout), allowing one interval for the probe already scheduled.
    let down_at = Instant::now();
    lab.target
        .set_link_up(&lab.link.b.name, false)
        .expect("link down");
    let bound =
        Duration::from_millis(300) * 4 + Duration::from_millis(80) + Duration::from_millis(400);
    let took = d.wait_all(&IDS, "unhealthy", Duration::from_secs(5));
    assert!(took <= bound, "unhealthy after {took:?}, bound {bound:?}");
    let (code, out) = cli(&d, &["status", "--unhealthy"]);
    assert_eq!(code, 1, "something unhealthy: exit 1\n{out}");
    assert_metrics_state(&d, &IDS, "unhealthy");

    // And back: healthy after `rise` successes.
    lab.target
        .set_link_up(&lab.link.b.name, true)
        .expect("link up");
    d.wait_all(&IDS, "healthy", Duration::from_secs(5));
    assert_metrics_state(&d, &IDS, "healthy");
    let _ = down_at;

    // The watch stream saw both transitions of every check.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut seen: Vec<serde_json::Value> = Vec::new();
    while Instant::now() < deadline && seen.len() < IDS.len() * 2 {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            let v: serde_json::Value = serde_json::from_str(&l).expect("event json");
            if v["event"] == "transition" {
                seen.push(v);
            }
        }
    }
    for id in IDS {
        let to: Vec<&str> = seen
            .iter()
            .filter(|v| v["check"] == id)
            .filter_map(|v| v["to"].as_str())
            .collect();
        assert_eq!(to, vec!["unhealthy", "healthy"], "{id}: {seen:?}");
    }

    // An invalid reload changes nothing, and says where the problem is.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&config)
        .expect("config");
    writeln!(
        f,
        "\n[[check]]\nid = \"bad\"\ntarget = \"198.18.0.2:0\"\nkind = \"tcp_connect\""
    )
    .expect("append");
    drop(f);
    let (code, out) = cli(&d, &["reload"]);
    assert_ne!(code, 0, "invalid reload refused\n{out}");
    assert!(out.contains("checks.toml") && out.contains("port"), "{out}");
    let ids: Vec<String> = d.states().into_iter().map(|(i, _)| i).collect();
    assert_eq!(ids.len(), 4, "{ids:?}");
    d.wait_all(&IDS, "healthy", Duration::from_secs(2));

    // A valid reload adds, changes and removes checks without restarting the others.
    let web_since = since(&d, "web");
    let reloaded = CHECKS.replace("id = \"ping\"", "id = \"ping2\"").replace(
        "id = \"conn\"\ntarget = \"198.18.0.2:80\"",
        "id = \"conn\"\ntarget = \"198.18.0.2:80\"\ninterval = \"400ms\"",
    );
    std::fs::write(&config, &reloaded).expect("write config");
    let (code, out) = cli(&d, &["reload", "--json"]);
    assert_eq!(code, 0, "valid reload\n{out}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("reload report json");
    assert_eq!(report["added"], serde_json::json!(["ping2"]), "{report}");
    assert_eq!(report["removed"], serde_json::json!(["ping"]), "{report}");
    assert_eq!(report["changed"], serde_json::json!(["conn"]), "{report}");
    let ids: Vec<String> = d.states().into_iter().map(|(i, _)| i).collect();
    assert_eq!(ids, vec!["conn", "ping2", "syn", "web"]);
    assert_eq!(
        since(&d, "web"),
        web_since,
        "an unchanged check keeps its state"
    );
    d.wait_all(
        &["conn", "ping2", "syn", "web"],
        "healthy",
        Duration::from_secs(3),
    );

    // More checks than `metrics_check_limit`: /metrics counts them by state and lists
    // none (what keeps a million-check node's scrape small); a reload applies it.
    std::fs::write(
        &config,
        format!("[daemon]\nmetrics_check_limit = 3\n{reloaded}"),
    )
    .expect("write config");
    let (code, out) = cli(&d, &["reload"]);
    assert_eq!(code, 0, "reload with a metrics limit\n{out}");
    let text = d.client().metrics().expect("metrics");
    let scrape = prom_text_format_parser::Scrape::parse(&text)
        .unwrap_or_else(|e| panic!("metrics do not parse: {e:?}\n{text}"));
    let gauge = |name: &str, label: Option<&str>| -> f64 {
        let m = scrape
            .metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no {name}\n{text}"));
        let s = m
            .samples
            .iter()
            .find(|s| label.is_none_or(|l| s.labels.to_string().contains(l)))
            .unwrap_or_else(|| panic!("no {name} {label:?}\n{text}"));
        s.value.value.as_f64()
    };
    assert_eq!(gauge("sonde_checks", None), 4.0);
    assert_eq!(gauge("sonde_metrics_checks_omitted", None), 4.0);
    assert_eq!(
        gauge("sonde_checks_by_state", Some("state=\"healthy\"")),
        4.0
    );
    assert!(!text.contains("check=\""), "no per-check series:\n{text}");

    // kill -9 and restart: state and history are resumed from the journal.
    let history_before = d.client().get("/v1/checks/web/history").expect("history");
    // SAFETY: kill(2) on the pid of the daemon this test started.
    unsafe { libc::kill(i32::try_from(d.pid).expect("pid"), libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(200));
    std::fs::write(&config, CHECKS).expect("restore config");
    let d2 = Daemon::start(&lab.prober, &dir.0, &config, &["--iface", &iface]);
    let states = d2.states();
    for id in IDS {
        assert!(
            states.iter().any(|(i, s)| i == id && s == "healthy"),
            "{id} resumed healthy at once: {states:?}"
        );
    }
    let history_after = d2.client().get("/v1/checks/web/history").expect("history");
    let n = |h: &serde_json::Value| h["transitions"].as_array().map_or(0, Vec::len);
    assert!(
        n(&history_after) >= n(&history_before) && n(&history_before) >= 3,
        "before {history_before}\nafter {history_after}"
    );

    // SIGTERM: a clean stop; the socket is gone and XDP is detached.
    // The daemon is our child (spawned through the namespace guard): reap it to see its
    // exit status; a clean stop exits 0.
    let wstatus = d2.terminate(&dir.0);
    assert!(
        libc::WIFEXITED(wstatus) && libc::WEXITSTATUS(wstatus) == 0,
        "clean exit on SIGTERM, status {wstatus:#x}; log:\n{}",
        d2.log(&dir.0)
    );
    assert!(!d2.socket.exists(), "API socket removed on shutdown");
    let link = lab
        .prober
        .exec(&["ip", "link", "show", "dev", &iface])
        .expect("ip link");
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(!link.contains("xdp"), "XDP detached: {link}");
}

fn since(d: &Daemon, id: &str) -> u64 {
    let v = d.client().get(&format!("/v1/checks/{id}")).expect("check");
    let s = if v.get("status").is_some() {
        &v["status"]
    } else {
        &v
    };
    s["since_unix_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("since_unix_ms in {v}"))
}

/// /metrics parses with a real Prometheus text parser and says `state` for each check.
fn assert_metrics_state(d: &Daemon, ids: &[&str], state: &str) {
    let text = d.client().metrics().expect("metrics");
    let scrape = prom_text_format_parser::Scrape::parse(&text)
        .unwrap_or_else(|e| panic!("metrics do not parse: {e:?}\n{text}"));
    let m = scrape
        .metrics
        .iter()
        .find(|m| m.name == "sonde_check_state")
        .expect("sonde_check_state");
    for id in ids {
        let one = m.samples.iter().find(|s| {
            let l = s.labels.to_string();
            l.contains(&format!("check=\"{id}\"")) && l.contains(&format!("state=\"{state}\""))
        });
        let v = one
            .unwrap_or_else(|| panic!("no {state} sample for {id}"))
            .value
            .value
            .as_f64();
        assert!((v - 1.0).abs() < f64::EPSILON, "{id} {state} = {v}");
    }
}

/// Origin protection: 1,000 checks on one address, each due every 100 ms (10,000
/// probes per second asked), with a cap of 100 probes per second per address. The
/// target must see no more than the cap allows, and the delayed probes are counted.
#[test]
fn per_target_cap_holds_with_1000_checks_on_one_address() {
    if !lab::privileged_or_skip() {
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    let _srv = sonde_tests::servers::tcp_acceptor(&lab.target, "198.18.0.2:80");
    // Count new connections (SYNs) reaching the target.
    lab.target
        .nft("add table inet cap; add chain inet cap in { type filter hook input priority 0; }; add rule inet cap in tcp dport 80 tcp flags syn counter")
        .expect("nft counter");
    let dir = TempDir::new("cap");
    let mut cfg = String::from(
        "[defaults]\ninterval = \"100ms\"\ntimeout = \"50ms\"\nfast_interval = \"100ms\"\n",
    );
    for i in 0..1000 {
        cfg.push_str(&format!(
            "[[check]]\nid = \"c{i}\"\ntarget = \"198.18.0.2:80\"\nkind = \"tcp_connect\"\n"
        ));
    }
    let config = dir.0.join("checks.toml");
    std::fs::write(&config, cfg).expect("config");
    let d = Daemon::start(&lab.prober, &dir.0, &config, &["--per-target-pps", "100"]);
    let syns = || {
        let out = lab
            .target
            .exec(&["nft", "list", "table", "inet", "cap"])
            .expect("nft list");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let n = text
            .split("packets ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok());
        n.unwrap_or_else(|| panic!("no counter in {text}"))
    };
    std::thread::sleep(Duration::from_millis(500));
    let (n0, t0) = (syns(), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let (n1, elapsed) = (syns(), t0.elapsed());
    let rate = (n1 - n0) as f64 / elapsed.as_secs_f64();
    assert!(
        rate <= 100.0 * 1.1,
        "target saw {rate:.0} probes/s; cap is 100/s"
    );
    assert!(
        rate >= 100.0 * 0.8,
        "the cap is used, not starved: {rate:.0}/s"
    );
    let metrics = d.client().metrics().expect("metrics");
    let delayed: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("sonde_budget_delayed_total") && l.contains("target"))
        .filter_map(|l| l.rsplit(" ").next()?.parse::<f64>().ok())
        .sum();
    assert!(
        delayed > 1000.0,
        "probes over the cap are delayed and counted: {delayed}\n{metrics}"
    );
}

/// Target deny list (`[daemon] deny_targets`): a check to a denied network is refused
/// through the API and in a reloaded file, with the network named; the running checks
/// stay as they were and the refused check is never probed.
#[test]
fn denied_targets_are_refused_through_the_api_and_on_reload() {
    if !lab::privileged_or_skip() {
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    let _srv = sonde_tests::servers::tcp_acceptor(&lab.target, "198.18.0.2:80");
    let dir = TempDir::new("policy");
    let config = dir.0.join("checks.toml");
    let base = "[daemon]\nallow_targets = [\"198.18.0.0/15\"]\ndeny_targets = [\"198.18.0.128/25\"]\n\n\
                [[check]]\nid = \"ok\"\ntarget = \"198.18.0.2:80\"\nkind = \"tcp_connect\"\ninterval = \"300ms\"\n";
    std::fs::write(&config, base).expect("config");
    let d = Daemon::start(&lab.prober, &dir.0, &config, &[]);
    d.wait_all(&["ok"], "healthy", Duration::from_secs(5));

    let denied =
        serde_json::json!({"id": "bad", "target": "198.18.0.200:80", "kind": "tcp_connect"});
    match d.client().call("POST", "/v1/checks", Some(&denied)) {
        Err(sonde::cli::client::ClientError::Api {
            status,
            kind,
            message,
        }) => {
            assert_eq!((status, kind.as_str()), (400, "invalid"), "{message}");
            assert!(
                message.contains("denied network 198.18.0.128/25") && message.contains("bad"),
                "{message}"
            );
        }
        other => panic!("a denied target must be refused: {other:?}"),
    }
    let (code, out) = cli(&d, &["status"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(d.states(), vec![("ok".to_owned(), "healthy".to_owned())]);

    // The same check in the file: the reload is refused as a whole, with where.
    std::fs::write(
        &config,
        format!("{base}\n[[check]]\nid = \"bad\"\ntarget = \"198.18.0.200:80\"\nkind = \"tcp_connect\"\n"),
    )
    .expect("config");
    let (code, out) = cli(&d, &["reload"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("checks.toml:13:") && out.contains("denied network 198.18.0.128/25"),
        "{out}"
    );
    assert_eq!(d.states(), vec![("ok".to_owned(), "healthy".to_owned())]);
    let metrics = d.client().metrics().expect("metrics");
    assert!(
        !metrics.contains("check=\"bad\""),
        "never probed:\n{metrics}"
    );
}

/// A check removed while its probe is out, and added again under the same id with
/// another target: the old probe's result (a timeout of the old target) must not count
/// for the new check. The new check waits for that probe to end (one probe per id at a
/// time), then its own results and sequence numbers start afresh.
#[test]
fn a_re_added_check_gets_no_result_of_its_old_probe() {
    if !lab::privileged_or_skip() {
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    let _srv = sonde_tests::servers::tcp_acceptor(&lab.target, "198.18.0.2:80");
    lab.target
        .nft("add table inet t; add chain inet t in { type filter hook input priority 0; }; add rule inet t in tcp dport 9 drop")
        .expect("nft");
    let dir = TempDir::new("readd");
    let config = dir.0.join("checks.toml");
    // Probes of 2 s every 2.5 s: after a result, the next probe is out 0.5 s later.
    std::fs::write(
        &config,
        "[[check]]\nid = \"x\"\ntarget = \"198.18.0.2:9\"\nkind = \"tcp_connect\"\n\
         interval = \"2500ms\"\ntimeout = \"2s\"\njitter = 0.0\nrise = 1\nfall = 1\n",
    )
    .expect("config");
    let d = Daemon::start(&lab.prober, &dir.0, &config, &[]);
    d.wait_all(&["x"], "unhealthy", Duration::from_secs(6));
    // The second probe is out from 0.5 s after the first result until 2.5 s after it.
    std::thread::sleep(Duration::from_millis(1000));
    d.client()
        .call("DELETE", "/v1/checks/x", None)
        .expect("remove x");
    let again = serde_json::json!({
        "id": "x", "target": "198.18.0.2:80", "kind": "tcp_connect",
        "interval": "200ms", "timeout": "150ms", "rise": 1, "fall": 1
    });
    d.client()
        .call("POST", "/v1/checks", Some(&again))
        .expect("add x again");
    d.wait_all(&["x"], "healthy", Duration::from_secs(5));
    // Let the new check run past the old probe's end.
    std::thread::sleep(Duration::from_millis(2000));
    let h = d.client().get("/v1/checks/x/history").expect("history");
    let results = h["results"].as_array().expect("results");
    assert!(results.len() >= 5, "{h}");
    for r in results {
        assert_eq!(r["reason"], "ok", "only the new target's results: {h}");
    }
    let seqs: Vec<u64> = results.iter().filter_map(|r| r["seq"].as_u64()).collect();
    let want: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(
        seqs, want,
        "the new check numbers its own probes from 1: {h}"
    );
}
