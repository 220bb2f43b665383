//! Least privilege with the real daemon: started as root with `--user nobody`, it
//! loads and attaches the kernel programs, then every thread runs as nobody with only
//! CAP_NET_RAW (effective, permitted and bounding), no ambient or inheritable
//! capability and no_new_privs; stateless (kernel-timed) and stateful probes keep
//! working through a target outage; SIGTERM still detaches XDP and the TC program and
//! exits cleanly. Without `--user` the daemon stays uid 0 but keeps only CAP_NET_RAW too.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant, SystemTime},
};

use sonde::lab::{self, Lab};
use sonde_tests::{
    daemon::{Daemon, TempDir},
    servers::{http_server, HttpReply},
};

const CHECKS: &str = r#"
[defaults]
interval = "300ms"
timeout = "100ms"
jitter = 0.0
rise = 2
fall = 3

[[check]]
id = "syn"
target = "198.18.0.2:80"
kind = "tcp_syn"

[[check]]
id = "ping"
target = "198.18.0.2"
kind = "icmp"

[[check]]
id = "web"
target = "198.18.0.2:80"
kind = "http"
"#;

const IDS: [&str; 3] = ["syn", "ping", "web"];
const CAP_NET_RAW: u64 = 1 << 13;

/// `Key: value` lines of a /proc status file.
fn status_of(path: &str) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

fn hex(s: &BTreeMap<String, String>, key: &str) -> u64 {
    u64::from_str_radix(s.get(key).map_or("", String::as_str), 16)
        .unwrap_or_else(|_| panic!("{key} in {s:?}"))
}

/// Every thread of `pid`: (uid line, CapEff, CapPrm, CapInh, CapBnd, CapAmb, NoNewPrivs).
fn threads(pid: u32) -> Vec<(String, [u64; 5], String)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let p = t.expect("task").path();
        let s = status_of(&format!("{}/status", p.display()));
        if s.is_empty() {
            continue; // the thread ended meanwhile
        }
        out.push((
            s["Uid"].clone(),
            [
                hex(&s, "CapEff"),
                hex(&s, "CapPrm"),
                hex(&s, "CapInh"),
                hex(&s, "CapBnd"),
                hex(&s, "CapAmb"),
            ],
            s["NoNewPrivs"].clone(),
        ));
    }
    out
}

fn sonde_programs_since(t: SystemTime) -> Vec<String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.loaded_at().is_some_and(|at| at >= t))
        .filter_map(|p| p.name_as_str().map(str::to_owned))
        .filter(|n| n.starts_with("sonde_"))
        .collect()
}

fn sigterm_and_reap(d: &Daemon, dir: &TempDir) {
    let wstatus = d.terminate(&dir.0);
    assert!(
        libc::WIFEXITED(wstatus) && libc::WEXITSTATUS(wstatus) == 0,
        "clean exit on SIGTERM, status {wstatus:#x}; log:\n{}",
        d.log(&dir.0)
    );
}

/// One daemon at a time: the loaded-programs check looks at the whole kernel.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run_case(user: Option<&str>) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::two_hosts().expect("lab");
    let (_web, _) = http_server(
        &lab.target,
        "198.18.0.2:80",
        HttpReply::new(200, "OK"),
        None,
    );
    let dir = TempDir::new("privs");
    let config = dir.0.join("checks.toml");
    std::fs::write(&config, CHECKS).expect("write config");
    if let Some(u) = user {
        // The operator's part (systemd's RuntimeDirectory= does it for the unit): a
        // directory the user may create the API socket and token in.
        let nobody = sonde::daemon::privs::User::lookup(u).expect("user");
        std::os::unix::fs::chown(&dir.0, Some(nobody.uid), Some(nobody.gid)).expect("chown");
    }
    let iface = lab.link.a.name.clone();
    let mut args = vec!["--iface", iface.as_str()];
    if let Some(u) = user {
        args.extend(["--user", u]);
    }
    let started = SystemTime::now();
    let d = Daemon::start(&lab.prober, &dir.0, &config, &args);
    d.wait_all(&IDS, "healthy", Duration::from_secs(5));
    let info = d.client().get("/v1/info").expect("info");
    assert_eq!(info["clock"], "kernel", "kernel programs in use: {info}");

    let ts = threads(d.pid);
    assert!(ts.len() >= 4, "the daemon's threads: {ts:?}");
    for (uid, caps, nnp) in &ts {
        match user {
            Some(_) => assert!(uid.split_whitespace().all(|u| u == "65534"), "uid {uid}"),
            None => assert!(uid.split_whitespace().all(|u| u == "0"), "uid {uid}"),
        }
        let [eff, prm, inh, bnd, amb] = *caps;
        assert_eq!(eff, CAP_NET_RAW, "effective: only CAP_NET_RAW ({caps:x?})");
        assert_eq!(prm, CAP_NET_RAW, "permitted: only CAP_NET_RAW ({caps:x?})");
        assert_eq!(bnd, CAP_NET_RAW, "bounding: only CAP_NET_RAW ({caps:x?})");
        assert_eq!(inh, 0, "no inheritable capability");
        assert_eq!(amb, 0, "no ambient capability");
        assert_eq!(nnp, "1", "no_new_privs");
    }
    println!(
        "{} threads as {}: CapEff=CapPrm=CapBnd={CAP_NET_RAW:#x}, no_new_privs",
        ts.len(),
        user.unwrap_or("root")
    );
    let state = std::fs::metadata(dir.0.join("state")).expect("state dir");
    if user.is_some() {
        use std::os::unix::fs::MetadataExt as _;
        assert_eq!(state.uid(), 65534, "state dir given to the user");
    }

    // Probing goes on after the drop: a target outage and its end are seen.
    lab.target
        .set_link_up(&lab.link.b.name, false)
        .expect("link down");
    d.wait_all(&IDS, "unhealthy", Duration::from_secs(5));
    lab.target
        .set_link_up(&lab.link.b.name, true)
        .expect("link up");
    d.wait_all(&IDS, "healthy", Duration::from_secs(5));

    // SIGTERM detaches the kernel programs without CAP_NET_ADMIN or CAP_BPF (closing
    // the link file descriptors is enough).
    assert!(!sonde_programs_since(started).is_empty(), "programs loaded");
    sigterm_and_reap(&d, &dir);
    let link = lab
        .prober
        .exec(&["ip", "link", "show", "dev", &iface])
        .expect("ip link");
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(!link.contains("xdp"), "XDP detached: {link}");
    // Programs are freed once nothing holds them (XDP, TC links and the daemon's fds).
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left = sonde_programs_since(started);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "programs still loaded: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!d.socket.exists(), "API socket removed on shutdown");
}

#[test]
fn drops_to_nobody_with_only_net_raw() {
    if !lab::kernel_programs_or_skip() {
        return;
    }
    run_case(Some("nobody"));
}

#[test]
fn stays_root_with_only_net_raw() {
    if !lab::kernel_programs_or_skip() {
        return;
    }
    run_case(None);
}
