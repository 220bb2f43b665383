//! The real XDP program under random and mutated frames, through `BPF_PROG_TEST_RUN`,
//! checked frame by frame against the host build of the same classifier
//! (`probe_common::parse::classify`, same config).
//!
//! Frames: random bytes of random length 14..256 (some with a plausible Ethernet and IP
//! header in front), and mutations (bit flips, truncations, overwrites of header
//! fields with boundary values, VLAN tags added or removed, padding) of valid answers
//! built with `sonde_tests::frames`: SYN-ACK and RST with valid cookies, echo replies,
//! UDP replies, ICMP errors quoting each probe kind, IPv4 options, IPv6, 802.1Q and QinQ.
//!
//! Checked:
//! - every verdict is what the host classifier implies: `XDP_DROP` for an answer or a
//!   bad cookie, except a SYN-ACK (left to the prober's TCP stack to reset),
//!   `XDP_PASS` otherwise;
//! - every record drained from each of the answer rings is, in order, the answer the
//!   host classifier found in a frame whose key selects that ring (`StampKey::ring`;
//!   same key, class, reporter and answer fields): no frame that is not a valid answer
//!   to our probe is ever reported as one, no answer lands in another ring, and no
//!   answer is lost (the rings are drained every [`BATCH`] frames, far below their
//!   capacity);
//! - at the end the exclusive counters sum to the number of frames run, each one equals
//!   the host's count for its reason, and `no_stamp` counts every answer (nothing was
//!   stamped).
//!
//! Size: [`FRAMES`] (one million) frames by default: measured here (2 cores, debug test
//! binary) 1,000,000 `BPF_PROG_TEST_RUN` calls plus the host checks take about 5 s on
//! an idle machine and 23 s while a release build runs beside them, well inside CI's
//! budget, so there is no reduced default. `SONDE_FUZZ_FRAMES=<n>` runs another count
//! (e.g. a 10-million soak).
//! Seeded and reproducible: the seed is printed (and named in every failure);
//! `SONDE_FUZZ_SEED=<n>` replays a run. Needs root like `xdp_table.rs`.

use std::{collections::VecDeque, fmt::Write as _, net::IpAddr, time::Instant};

use probe_common::{
    config::ProbeConfig,
    counters::XdpReason,
    craft::L4,
    parse::{
        classify,
        tcp_flags::{ACK, RST, SYN},
        Answer,
    },
    record::{flags, AnswerClass, AnswerRecord},
    EVENT_RINGS,
};
use sonde::{
    ebpf::{self, Events, KernelProbes},
    lab,
};
use sonde_tests::frames::*;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// Frames run unless `SONDE_FUZZ_FRAMES` says otherwise.
const FRAMES: u64 = 1_000_000;
/// Frames between two ring-buffer drains. Each ring holds 1 MiB, over 10,000 records.
const BATCH: u64 = 1024;

/// xorshift64* (Vigna): small, fast, and the same sequence for the same seed everywhere.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        (self.next() >> 56) as u8
    }
}

fn load() -> Option<KernelProbes> {
    if !lab::kernel_programs_or_skip() {
        return None;
    }
    let mut k = KernelProbes::load().unwrap_or_else(|e| panic!("load: {}", ebpf::error_chain(&e)));
    k.set_config(&config()).expect("set config");
    Some(k)
}

/// Valid answers (and near misses) to mutate.
fn templates() -> Vec<Vec<u8>> {
    let (us, them) = (IpAddr::V4(US4), IpAddr::V4(THEM4));
    let (us6, them6) = (IpAddr::V6(US6), IpAddr::V6(THEM6));
    let router = IpAddr::V4(ROUTER4);
    let id = config().icmp_id;
    let ack = |u, t, s, d| cookie_of(u, t, s, d).wrapping_add(1);
    let syn_probe = |u, t, s, d| L4::Tcp {
        sport: s,
        dport: d,
        seq: cookie_of(u, t, s, d),
        ack: 0,
        flags: SYN,
        window: 1024,
        options: &[],
    };
    let udp = |sport, dport| L4::Udp {
        sport,
        dport,
        payload: b"sonde",
    };
    let echo = |kind, seq| L4::Icmp {
        kind,
        code: 0,
        id,
        seq,
        payload: b"sonde-test",
    };
    let mut t = vec![
        syn_ack(us, them, 61000, 80),
        syn_ack(us6, them6, 61999, 443),
        tcp_answer(
            Some(&eth(Some(42))),
            us,
            them,
            61002,
            443,
            SYN | ACK,
            ack(us, them, 61002, 443),
        ),
        tcp_answer(
            Some(&eth(None)),
            us,
            them,
            61001,
            81,
            RST | ACK,
            ack(us, them, 61001, 81),
        ),
        tcp_answer(
            Some(&eth(None)),
            us6,
            them6,
            61003,
            22,
            RST | ACK,
            ack(us6, them6, 61003, 22),
        ),
        tcp_answer(
            Some(&eth(None)),
            us,
            them,
            61004,
            80,
            SYN | ACK,
            ack(us, them, 61004, 80) ^ 4,
        ),
        frame(
            Some(&eth(None)),
            them,
            us,
            &[1, 1, 1, 1, 1, 1, 1, 0],
            &L4::Tcp {
                sport: 22,
                dport: 61005,
                seq: 9,
                ack: ack(us, them, 61005, 22),
                flags: SYN | ACK,
                window: 1,
                options: &[],
            },
        ),
        echo_reply(us, them, id, 7),
        echo_reply(us6, them6, id, 8),
        frame(Some(&eth(Some(7))), them, us, &[], &udp(53, 61006)),
        frame(Some(&eth(None)), them6, us6, &[], &udp(7, 61007)),
        icmp_error(
            router,
            us,
            11,
            0,
            &quote(us, them, &syn_probe(us, them, 61008, 80)),
        ),
        icmp_error(them, us, 3, 3, &quote(us, them, &udp(61009, 53))),
        icmp_error(router, us, 3, 1, &quote(us, them, &echo(8, 3))),
        icmp_error(them6, us6, 1, 4, &quote(us6, them6, &udp(61010, 53))),
        icmp_error(them6, us6, 3, 0, &quote(us6, them6, &echo(128, 4))),
        icmp_error(
            them6,
            us6,
            1,
            0,
            &quote(us6, them6, &syn_probe(us6, them6, 61011, 443)),
        ),
        syn(us, them, 61012, 80),
    ];
    // QinQ: an 802.1ad tag in front of the 802.1Q one.
    let mut qinq = syn_ack(us, them, 61013, 80);
    qinq.splice(12..12, [0x88, 0xa8, 0x00, 0x07, 0x81, 0x00, 0x00, 0x2a]);
    t.push(qinq);
    t
}

/// Header offsets worth overwriting in `f`: Ethernet type, IP header fields, the first
/// 20 bytes of the transport header and of a quoted packet.
fn field_offsets(f: &[u8]) -> Vec<usize> {
    let mut l3 = 14;
    if f.len() >= 14 && matches!([f[12], f[13]], [0x81, 0x00] | [0x88, 0xa8]) {
        l3 = 18;
        if f.len() >= 18 && [f[16], f[17]] == [0x81, 0x00] {
            l3 = 22;
        }
    }
    let mut v = vec![12, 13, l3 - 2, l3 - 1];
    let ip_len = match f.get(l3).map(|b| b >> 4) {
        Some(6) => 40,
        _ => f.get(l3).map_or(20, |b| usize::from(b & 0x0f) * 4).max(20),
    };
    v.extend(l3..l3 + 10);
    for l4 in [l3 + ip_len, l3 + ip_len + 8, l3 + ip_len + 8 + 20] {
        v.extend(l4..l4 + 20);
    }
    v.retain(|&o| o < f.len());
    v
}

/// 1 to 3 random changes to a copy of `t`.
fn mutate(rng: &mut Rng, t: &[u8]) -> Vec<u8> {
    let mut f = t.to_vec();
    let cfg = config();
    let words: [u16; 12] = [
        0,
        0xffff,
        cfg.port_lo,
        cfg.port_hi,
        cfg.port_lo - 1,
        cfg.port_hi + 1,
        cfg.icmp_id,
        0x0800,
        0x86dd,
        0x8100,
        0x88a8,
        0x4000,
    ];
    let bytes: [u8; 14] = [
        0, 1, 3, 6, 11, 17, 44, 58, 0x45, 0x4f, 0x60, 0x7f, 0x80, 0xff,
    ];
    for _ in 0..=rng.below(3) {
        match rng.below(8) {
            0 => {
                for _ in 0..=rng.below(4) {
                    let i = rng.below(f.len());
                    f[i] ^= 1 << rng.below(8);
                }
            }
            1 => {
                let n = 14 + rng.below(f.len() - 13);
                f.truncate(n);
            }
            2 => {
                let i = rng.below(f.len());
                f[i] = rng.byte();
            }
            3 | 4 => {
                let offs = field_offsets(&f);
                if offs.is_empty() {
                    continue;
                }
                let o = offs[rng.below(offs.len())];
                if rng.below(2) == 0 && o + 1 < f.len() {
                    let w = words[rng.below(words.len())].to_be_bytes();
                    f[o..o + 2].copy_from_slice(&w);
                } else {
                    f[o] = bytes[rng.below(bytes.len())];
                }
            }
            5 => {
                // Nudge a 32-bit field (an acknowledgement number, a cookie) by +-1.
                let offs = field_offsets(&f);
                let o = offs[rng.below(offs.len())];
                if o + 4 <= f.len() {
                    let v = u32::from_be_bytes([f[o], f[o + 1], f[o + 2], f[o + 3]]);
                    let v = if rng.below(2) == 0 {
                        v.wrapping_add(1)
                    } else {
                        v.wrapping_sub(1)
                    };
                    f[o..o + 4].copy_from_slice(&v.to_be_bytes());
                }
            }
            6 => {
                // Add or remove a VLAN tag.
                if matches!([f[12], f[13]], [0x81, 0x00] | [0x88, 0xa8]) && f.len() >= 18 {
                    f.drain(12..16);
                } else {
                    let tag = if rng.below(4) == 0 {
                        [0x88, 0xa8]
                    } else {
                        [0x81, 0x00]
                    };
                    f.splice(12..12, [tag[0], tag[1], 0, rng.byte()]);
                }
            }
            _ => {
                let extra = rng.below(64);
                f.extend((0..extra).map(|_| rng.byte()));
            }
        }
    }
    f.truncate(256);
    f
}

/// A random frame of 14..256 bytes, sometimes with a plausible Ethernet + IP header.
fn random_frame(rng: &mut Rng) -> Vec<u8> {
    let len = 14 + rng.below(256 - 14);
    let mut f: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
    if rng.below(3) == 0 && len > 15 {
        let v6 = rng.below(2) == 0;
        f[12..14].copy_from_slice(if v6 { &[0x86, 0xdd] } else { &[0x08, 0x00] });
        f[14] = if v6 { 0x60 } else { 0x45 };
    }
    f
}

/// The exclusive counter a host classification lands in.
fn reason_of(r: &Result<Answer, XdpReason>) -> XdpReason {
    match r {
        Ok(a) => match a.class {
            AnswerClass::Open => XdpReason::AnswerOpen,
            AnswerClass::Closed => XdpReason::AnswerClosed,
            AnswerClass::EchoReply => XdpReason::AnswerEcho,
            AnswerClass::Unreachable => XdpReason::AnswerUnreachable,
            AnswerClass::UdpReply => XdpReason::AnswerUdp,
        },
        Err(r) => *r,
    }
}

fn hex(f: &[u8]) -> String {
    f.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A frame the host classifier took as an answer, waiting for its record.
struct Pending {
    index: u64,
    frame: Vec<u8>,
    answer: Answer,
}

fn check_record(seed: u64, rec: &AnswerRecord, p: &Pending) {
    let a = &p.answer;
    let ctx = || format!("seed {seed}, frame #{} {}", p.index, hex(&p.frame));
    assert_eq!(
        AnswerClass::from_u8(rec.class),
        Some(a.class),
        "class; {}",
        ctx()
    );
    assert_eq!(rec.key, a.key, "key; {}", ctx());
    assert_eq!(rec.reporter, a.reporter, "reporter; {}", ctx());
    assert_eq!(
        (
            rec.answer_seq,
            rec.icmp_type,
            rec.icmp_code,
            rec.tcp_flags,
            rec.ttl
        ),
        (a.answer_seq, a.icmp_type, a.icmp_code, a.tcp_flags, a.ttl),
        "answer fields; {}",
        ctx()
    );
    assert_eq!(
        rec.flags & flags::COOKIE_OK != 0,
        a.cookie_ok,
        "cookie flag; {}",
        ctx()
    );
    assert_eq!(
        rec.flags & flags::STAMPED,
        0,
        "nothing was stamped; {}",
        ctx()
    );
}

/// Drain every ring (one per part of `rings`) against the answers expected in it.
fn drain(seed: u64, rings: &mut [Events], pending: &mut [VecDeque<Pending>]) {
    for part in rings.iter_mut() {
        let ring = part.rings()[0];
        let queue = &mut pending[ring];
        part.drain(|rec| match queue.pop_front() {
            Some(p) => check_record(seed, &rec, &p),
            None => panic!(
                "seed {seed}: record in ring {ring} for no frame the host took as an answer there: {rec:?}"
            ),
        });
        if let Some(p) = queue.front() {
            panic!(
                "seed {seed}: no record in ring {ring} for answer frame #{} {} ({:?})",
                p.index,
                hex(&p.frame),
                p.answer
            );
        }
    }
}

fn frame_count() -> u64 {
    match std::env::var("SONDE_FUZZ_FRAMES") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("SONDE_FUZZ_FRAMES={s:?} is not a number")),
        Err(_) => FRAMES,
    }
}

fn seed() -> u64 {
    match std::env::var("SONDE_FUZZ_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("SONDE_FUZZ_SEED={s:?} is not a u64")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    }
}

#[test]
fn xdp_agrees_with_host_classifier_on_random_frames() {
    agree_on_random_frames(Hook::Xdp, frame_count());
}

/// The same frames through the TC ingress program classifying (`ingress::TC`, the
/// daemon's `answer_hook` on a veth): a tenth as many, a test run of a classifier
/// costs more (the kernel builds a socket buffer per frame).
#[test]
fn tc_ingress_agrees_with_host_classifier_on_random_frames() {
    agree_on_random_frames(Hook::Tc, frame_count() / 10);
}

/// Which program classifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hook {
    Xdp,
    Tc,
}

/// Run `frame`, as `XDP_*` verdicts (TC_ACT_SHOT is a drop, TC_ACT_OK a pass); `None`
/// when the kernel builds no socket buffer of it for a TC test run.
fn run(k: &mut KernelProbes, hook: Hook, f: &[u8]) -> Result<Option<u32>, String> {
    match hook {
        Hook::Xdp => k.run_xdp(f).map(Some).map_err(|e| ebpf::error_chain(&e)),
        Hook::Tc => match k.run_tc_ingress(f) {
            Ok((2, _)) => Ok(Some(XDP_DROP)),
            Ok((0, _)) => Ok(Some(XDP_PASS)),
            Ok((a, _)) => Err(format!("TC action {a}")),
            Err(_) => Ok(None),
        },
    }
}

fn agree_on_random_frames(hook: Hook, n: u64) {
    let Some(mut k) = load() else { return };
    if hook == Hook::Tc {
        k.classify_at_tc().expect("classify at TC");
    }
    let cfg: ProbeConfig = config();
    let seed = seed();
    println!("xdp_fuzz {hook:?}: seed {seed} (replay with SONDE_FUZZ_SEED={seed}), {n} frames");
    let mut rng = Rng::new(seed);
    let templates = templates();
    for t in &templates {
        assert!(t.len() <= 256, "template longer than the frame budget");
    }
    let before = k.counters().expect("counters");
    let mut expected = vec![0u64; XdpReason::EXCLUSIVE as usize];
    // One reader per ring, each checked against the answers whose key selects it.
    let mut rings = k.take_events().expect("events").split(EVENT_RINGS);
    assert_eq!(rings.len(), EVENT_RINGS);
    let mut pending: Vec<VecDeque<Pending>> = (0..EVENT_RINGS).map(|_| VecDeque::new()).collect();
    let mut answers = 0u64;
    let mut refused = 0u64;
    let started = Instant::now();
    for i in 0..n {
        let f = match rng.below(20) {
            0..=4 => random_frame(&mut rng),
            5 => templates[rng.below(templates.len())].clone(),
            _ => {
                let t = rng.below(templates.len());
                mutate(&mut rng, &templates[t])
            }
        };
        let host = classify(&f[..], &cfg);
        let want = match &host {
            // A SYN-ACK goes on to the prober's TCP stack, which resets it.
            Ok(a) if a.class == AnswerClass::Open => XDP_PASS,
            Ok(_) | Err(XdpReason::BadCookie) => XDP_DROP,
            Err(_) => XDP_PASS,
        };
        let verdict = run(&mut k, hook, &f)
            .unwrap_or_else(|e| panic!("seed {seed}, frame #{i} {}: {e}", hex(&f)));
        let Some(verdict) = verdict else {
            // Cut short of a header the kernel's test run wants: never an answer.
            assert!(
                matches!(
                    reason_of(&host),
                    XdpReason::MalformedEth | XdpReason::MalformedIpv4 | XdpReason::MalformedIpv6
                ),
                "seed {seed}, frame #{i} {}: refused by the TC test run (host: {host:?})",
                hex(&f)
            );
            refused += 1;
            continue;
        };
        assert_eq!(
            verdict,
            want,
            "seed {seed}, frame #{i} {}: verdict (host: {host:?})",
            hex(&f)
        );
        expected[reason_of(&host) as usize] += 1;
        if let Ok(answer) = host {
            answers += 1;
            pending[answer.key.ring(cfg.port_lo)].push_back(Pending {
                index: i,
                frame: f,
                answer,
            });
        }
        if (i + 1) % BATCH == 0 {
            drain(seed, &mut rings, &mut pending);
        }
    }
    drain(seed, &mut rings, &mut pending);
    let took = started.elapsed();
    let d = k.counters().expect("counters").since(&before);
    println!(
        "xdp_fuzz: {n} frames in {:.1} s ({:.0}/s), {answers} answers",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    let by_reason: Vec<String> = XdpReason::ALL[..XdpReason::EXCLUSIVE as usize]
        .iter()
        .filter(|r| expected[**r as usize] > 0)
        .map(|r| format!("{} {}", r.name(), expected[*r as usize]))
        .collect();
    println!("xdp_fuzz: host reasons: {}", by_reason.join(", "));
    println!("xdp_fuzz {hook:?}: {refused} frames refused by the test run");
    assert!(refused * 10 < n.max(1), "{refused} of {n} frames not run");
    assert_eq!(
        d.xdp_frames(),
        n - refused,
        "seed {seed}: exclusive counters {:?}",
        d.xdp
    );
    for r in &XdpReason::ALL[..XdpReason::EXCLUSIVE as usize] {
        assert_eq!(
            d.xdp(*r),
            expected[*r as usize],
            "seed {seed}: counter {} (kernel {:?}, host {expected:?})",
            r.name(),
            d.xdp
        );
    }
    assert_eq!(d.xdp(XdpReason::NoStamp), answers, "seed {seed}: no_stamp");
    if n >= 10_000 {
        // Enough frames that the mutations must have produced both outcomes.
        assert!(answers > 0 && expected[XdpReason::BadCookie as usize] > 0);
    }
}
