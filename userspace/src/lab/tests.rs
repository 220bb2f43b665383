//! Tests of the lab harness. The privileged ones create real namespaces; they skip (or fail
//! with `SONDE_REQUIRE_PRIVILEGED=1`) when not root.

use super::*;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ..." — the state follows the last ')'.
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim().chars().next()),
            Some('Z' | 'X') | None
        ),
        Err(_) => false,
    }
}

/// Waits up to 3 s for all `pids` to be dead.
fn all_dead(pids: &[u32]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    while pids.iter().any(|&p| alive(p)) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn netns_listed(name: &str) -> bool {
    let out = run(&["ip", "netns", "list"]).expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

fn root_has_link(name: &str) -> bool {
    let out = run(&["ip", "-o", "link", "show"]).expect("ip link show");
    String::from_utf8_lossy(&out.stdout).lines().any(|l| {
        l.split(':')
            .nth(1)
            .is_some_and(|n| n.trim().split('@').next() == Some(name))
    })
}

fn ping(ns: &Netns, dst: &str) -> bool {
    ns.exec_unchecked(&["ping", "-n", "-c1", "-W1", dst])
        .expect("run ping")
        .status
        .success()
}

#[test]
fn address_checks_refuse_anything_outside_lab_range() {
    assert!(in_lab_range(Ipv4Addr::new(198, 18, 0, 1)));
    assert!(in_lab_range(Ipv4Addr::new(198, 19, 255, 255)));
    assert!(!in_lab_range(Ipv4Addr::new(198, 20, 0, 1)));
    assert!(!in_lab_range(Ipv4Addr::new(10, 0, 0, 1)));
    assert!(parse_lab_cidr("198.19.0.0/16").is_ok());
    assert!(parse_lab_cidr("198.18.0.0/15").is_ok());
    assert!(parse_lab_cidr("198.18.0.7").is_ok());
    for bad in [
        "0.0.0.0/0",
        "default",
        "198.18.0.0/14",
        "198.20.0.0/16",
        "1.2.3.4/32",
    ] {
        assert!(parse_lab_cidr(bad).is_err(), "{bad} accepted");
    }
    assert!(check_prefix(Ipv4Addr::new(198, 18, 0, 1), 8).is_err());
}

#[test]
fn unique_names_fit_ifnamsiz() {
    let a = unique_suffix();
    let b = unique_suffix();
    assert_ne!(a.short, b.short);
    assert_ne!(a.long, b.long);
    assert!(format!("v{}a", a.short).len() <= 15);
}

#[test]
fn two_hosts_ping_across_and_nothing_in_root() {
    if !privileged_or_skip() {
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    assert!(lab.prober.name().starts_with("sonde-prober-"));
    assert!(netns_listed(lab.prober.name()) && netns_listed(lab.target.name()));
    assert!(ping(&lab.prober, "198.18.0.2"), "prober cannot ping target");
    assert!(ping(&lab.target, "198.18.0.1"), "target cannot ping prober");

    let (a, b) = (&lab.link.a, &lab.link.b);
    assert!(a.name.len() <= 15 && b.name.len() <= 15);
    assert_eq!(
        (a.netns.as_str(), b.netns.as_str()),
        (lab.prober.name(), lab.target.name())
    );
    assert_eq!((a.addr, b.addr), (PROBER_ADDR, TARGET_ADDR));
    assert_ne!(a.mac, [0; 6]);
    assert_ne!(a.mac, b.mac);
    assert!(a.ifindex > 0 && b.ifindex > 0);
    // The target's neighbour entry for the prober carries the prober's MAC.
    let neigh = lab.target.ip(&["neigh", "show", "198.18.0.1"]).unwrap();
    assert!(String::from_utf8_lossy(&neigh.stdout).contains(&a.mac_string()));

    for name in [&a.name, &b.name] {
        assert!(!root_has_link(name), "{name} visible in the root namespace");
    }
    for ns in [&lab.prober, &lab.target] {
        let routes = ns.ip(&["route", "show", "default"]).unwrap();
        assert!(routes.stdout.is_empty(), "default route in {}", ns.name());
    }
    let (pn, tn) = (lab.prober.name().to_string(), lab.target.name().to_string());
    drop(lab);
    assert!(
        !netns_listed(&pn) && !netns_listed(&tn),
        "namespaces left after drop"
    );
}

#[test]
fn spawned_processes_are_killed_on_drop() {
    if !privileged_or_skip() {
        return;
    }
    let ns = Netns::new("spawn").expect("netns");
    let sleeper = ns.spawn(&["sleep", "60"]).unwrap();
    // A shell with a background grandchild: killed via the process group.
    let shell = ns
        .spawn(&["sh", "-c", "sleep 61 & sleep 62; true"])
        .unwrap();
    // A leader that exits at once, leaving a background child in its group.
    ns.spawn(&["sh", "-c", "sleep 63 & exit 0"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let pids = loop {
        let pids: Vec<u32> = ns
            .pids()
            .unwrap()
            .into_iter()
            .filter(|&p| alive(p))
            .collect();
        if pids.len() >= 5 || Instant::now() > deadline {
            break pids;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(pids.contains(&sleeper) && pids.contains(&shell), "{pids:?}");
    assert_eq!(
        pids.len(),
        5,
        "expected sleep, sh and three grandchildren: {pids:?}"
    );
    let name = ns.name().to_string();
    drop(ns);
    assert!(all_dead(&pids), "processes survived the guard: {pids:?}");
    assert!(!netns_listed(&name));
}

#[test]
fn kill_stops_one_owned_process() {
    if !privileged_or_skip() {
        return;
    }
    let ns = Netns::new("kill").expect("netns");
    let a = ns.spawn(&["sleep", "60"]).unwrap();
    let b = ns.spawn(&["sleep", "60"]).unwrap();
    ns.kill(a).unwrap();
    assert!(all_dead(&[a]));
    assert!(alive(b));
    assert!(matches!(ns.kill(a), Err(LabError::NotOurChild(_))));
    drop(ns);
    assert!(all_dead(&[b]));
}

#[test]
fn panic_still_cleans_up() {
    if !privileged_or_skip() {
        return;
    }
    let seen = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::two_hosts().expect("lab");
        let pid = lab.target.spawn(&["sleep", "60"]).unwrap();
        *seen.lock().unwrap() = Some((
            lab.prober.name().to_string(),
            lab.target.name().to_string(),
            lab.link.a.name.clone(),
            pid,
        ));
        panic!("deliberate test panic");
    }));
    assert!(result.is_err());
    let (pn, tn, dev, pid) = seen.into_inner().unwrap().expect("closure ran");
    assert!(!netns_listed(&pn) && !netns_listed(&tn));
    assert!(!root_has_link(&dev));
    assert!(all_dead(&[pid]));
}

#[test]
fn in_netns_sockets_and_ifindex_live_in_the_namespace() {
    if !privileged_or_skip() {
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    let dev = lab.link.b.name.clone();
    let index = lab
        .target
        .run(|| {
            let c = std::ffi::CString::new(dev.as_str()).unwrap();
            // SAFETY: valid NUL-terminated string.
            unsafe { libc::if_nametoindex(c.as_ptr()) }
        })
        .unwrap();
    assert_eq!(index, lab.link.b.ifindex);

    let listener = in_netns(&lab.target, || TcpListener::bind("198.18.0.2:7001"))
        .unwrap()
        .expect("bind in target");
    lab.target
        .wait_listening(7001, Duration::from_secs(5))
        .unwrap();
    assert!(lab
        .prober
        .wait_listening(7001, Duration::from_millis(100))
        .is_err());
    let peer = lab
        .prober
        .run(|| {
            let dst = SocketAddr::from((TARGET_ADDR, 7001));
            TcpStream::connect_timeout(&dst, Duration::from_secs(2)).map(|s| s.local_addr())
        })
        .unwrap()
        .expect("connect from prober")
        .unwrap();
    assert_eq!(peer.ip(), std::net::IpAddr::V4(PROBER_ADDR));
    let (_conn, from) = listener.accept().unwrap();
    assert_eq!(from, peer);

    // A panic inside is resumed in the caller.
    let r = std::panic::catch_unwind(|| lab.prober.run(|| panic!("inner")));
    assert!(r.is_err());
}

#[test]
fn syn_recv_counted_when_acks_are_dropped() {
    if !privileged_or_skip() {
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    assert_eq!(lab.target.syn_recv_count().unwrap(), 0);
    // The prober's SYN passes, its final ACK does not: the target stays in SYN-RECV.
    lab.prober.nft("add table inet lab").unwrap();
    lab.prober
        .nft("add chain inet lab out { type filter hook output priority 0 ; }")
        .unwrap();
    lab.prober
        .nft("add rule inet lab out tcp dport 7002 tcp flags & ack == ack drop")
        .unwrap();
    let _listener = in_netns(&lab.target, || TcpListener::bind("198.18.0.2:7002"))
        .unwrap()
        .unwrap();
    let _conn = lab
        .prober
        .run(|| TcpStream::connect_timeout(&(TARGET_ADDR, 7002).into(), Duration::from_secs(2)))
        .unwrap()
        .expect("SYN-ACK received");
    let deadline = Instant::now() + Duration::from_secs(3);
    while lab.target.syn_recv_count().unwrap() == 0 {
        assert!(Instant::now() < deadline, "no SYN-RECV socket in target");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(lab.target.syn_recv_count().unwrap(), 1);
    assert_eq!(lab.prober.syn_recv_count().unwrap(), 0);
}

#[test]
fn target_answers_for_a_range_and_sysctl_applies() {
    if !privileged_or_skip() {
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    assert!(!ping(&lab.prober, "198.19.7.9"));
    lab.add_target_range("198.19.0.0/16").unwrap();
    assert!(ping(&lab.prober, "198.19.7.9"));
    assert!(ping(&lab.prober, "198.19.255.1"));
    assert!(lab.prober.add_route("0.0.0.0/0", TARGET_ADDR).is_err());
    assert!(lab.target.add_local_route("10.0.0.0/8").is_err());
    let routes = lab.prober.ip(&["route", "show", "default"]).unwrap();
    assert!(routes.stdout.is_empty());

    lab.target.sysctl("net.ipv4.icmp_ratemask", "0").unwrap();
    let v = lab
        .target
        .exec(&["cat", "/proc/sys/net/ipv4/icmp_ratemask"])
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&v.stdout).trim(), "0");
    // The root namespace keeps its own value.
    let root = std::fs::read_to_string("/proc/sys/net/ipv4/icmp_ratemask").unwrap();
    assert_ne!(root.trim(), "0");
}

#[test]
fn refused_veth_creates_nothing() {
    if !privileged_or_skip() {
        return;
    }
    let a = Netns::new("refuse").expect("netns");
    let err = veth_pair(&a, &a, Ipv4Addr::new(10, 0, 0, 1), TARGET_ADDR, 24).unwrap_err();
    assert!(matches!(err, LabError::OutsideLabRange(_)), "{err}");
    let links = a.ip(&["-o", "link", "show"]).unwrap();
    assert_eq!(String::from_utf8_lossy(&links.stdout).lines().count(), 1);
    let exec_err = a.exec(&["false"]).unwrap_err();
    assert!(matches!(exec_err, LabError::Command { .. }), "{exec_err}");
}
