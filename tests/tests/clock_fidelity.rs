//! The kernel clock against the userspace clock, probe by probe.
//!
//! ICMP echo probes from the prober namespace with the XDP/TC programs attached. Each
//! probe gets a userspace stamp (`CLOCK_MONOTONIC`) right before its `sendto` and one
//! right after the drain of the ring buffer that delivered its answer. The kernel's
//! stamps (`bpf_ktime_get_ns`, the same clock) must lie inside that window: the TC
//! egress stamp after the send began, the XDP stamp before the drain returned, so the
//! kernel RTT is positive and never larger than the userspace RTT of the same probe.
//! Every answered probe must carry both stamps.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use probe_common::{
    counters::XdpReason,
    craft::L4,
    proto,
    record::{flags, AnswerClass, AnswerRecord},
};
use sonde::{
    ebpf::KernelProbes,
    engine::{
        raw::{source_for, RawSender},
        round::new_config,
        PortRange,
    },
    lab::{self, Lab, TARGET_ADDR},
};

/// Probes sent, in bursts of [`BURST`] (so answers also arrive while others are out).
const PROBES: u16 = 400;
/// Probes out at once.
const BURST: u16 = 4;
/// Longest wait for one burst's answers (the lab link loses nothing).
const BURST_TIMEOUT: Duration = Duration::from_secs(2);

/// `CLOCK_MONOTONIC` in nanoseconds, the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid timespec pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// One probe: userspace stamps around it and the kernel's answer record.
#[derive(Debug)]
struct Sample {
    /// ICMP sequence number.
    seq: u16,
    /// Userspace stamp right before the send.
    sent_ns: u64,
    /// Userspace stamp right after the drain that delivered the answer.
    seen_ns: u64,
    /// The answer record.
    rec: AnswerRecord,
}

#[test]
fn kernel_rtt_lies_inside_the_userspace_rtt_of_each_probe() {
    if !lab::kernel_programs_or_skip() {
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    let iface = lab.link.a.name.clone();
    let target = IpAddr::V4(TARGET_ADDR);
    let (samples, missing, nostamp) = lab
        .prober
        .run(move || {
            let cfg = new_config(PortRange::DEFAULT);
            let mut k = KernelProbes::load().expect("load");
            k.set_config(&cfg).expect("config");
            k.attach(&iface).expect("attach");
            let before = k.counters().expect("counters");
            let mut raw = RawSender::new().expect("raw socket");
            let local = source_for(target).expect("route to the target");
            let mut samples = Vec::with_capacity(usize::from(PROBES));
            let mut missing = Vec::new();
            let mut seq = 0u16;
            while seq < PROBES {
                // seq -> send stamp, for the probes of this burst still unanswered.
                let mut out: HashMap<u16, u64> = HashMap::new();
                for _ in 0..BURST {
                    seq += 1;
                    let l4 = L4::Icmp {
                        kind: 8,
                        code: 0,
                        id: cfg.icmp_id,
                        seq,
                        payload: b"sonde-fidelity-0",
                    };
                    let sent_ns = monotonic_ns();
                    raw.send(local, target, &l4).expect("send");
                    out.insert(seq, sent_ns);
                }
                let deadline = monotonic_ns() + u64::try_from(BURST_TIMEOUT.as_nanos()).unwrap();
                let mut got = Vec::new();
                while !out.is_empty() && monotonic_ns() < deadline {
                    k.wait(Duration::from_millis(10));
                    k.drain(|r| got.push(r));
                    let seen_ns = monotonic_ns();
                    for rec in got.drain(..) {
                        let s = rec.key.remote_port;
                        if rec.key.proto != proto::ICMP || rec.key.local_port != cfg.icmp_id {
                            continue;
                        }
                        if let Some(sent_ns) = out.remove(&s) {
                            samples.push(Sample {
                                seq: s,
                                sent_ns,
                                seen_ns,
                                rec,
                            });
                        }
                    }
                }
                missing.extend(out.into_keys());
            }
            let d = k.counters().expect("counters").since(&before);
            (samples, missing, d.xdp(XdpReason::NoStamp))
        })
        .expect("enter prober");

    assert!(missing.is_empty(), "unanswered probes: {missing:?}");
    assert_eq!(samples.len(), usize::from(PROBES));
    assert_eq!(nostamp, 0, "every answer matched a TC egress stamp");
    let (mut kernel_sum, mut user_sum) = (0u64, 0u64);
    for s in &samples {
        let r = &s.rec;
        assert_eq!(r.class, AnswerClass::EchoReply as u8, "{s:?}");
        assert_ne!(r.flags & flags::STAMPED, 0, "no kernel RTT: {s:?}");
        assert!(r.tx_ns > 0 && r.rx_ns > r.tx_ns, "kernel RTT <= 0: {s:?}");
        assert_eq!(r.rtt_ns, r.rx_ns - r.tx_ns, "{s:?}");
        assert!(r.tx_ns >= s.sent_ns, "stamped before it was sent: {s:?}");
        assert!(r.rx_ns <= s.seen_ns, "stamped after it was seen: {s:?}");
        let user = s.seen_ns - s.sent_ns;
        assert!(
            r.rtt_ns <= user,
            "probe {}: kernel RTT {} ns > userspace RTT {user} ns",
            s.seq,
            r.rtt_ns
        );
        kernel_sum += r.rtt_ns;
        user_sum += user;
    }
    let n = u64::from(PROBES);
    eprintln!(
        "{PROBES} probes: mean kernel RTT {} ns, mean userspace RTT {} ns",
        kernel_sum / n,
        user_sum / n
    );
}
