//! One round of stateless probes: send a batch, collect the kernel's answer records
//! until a deadline, match each to its probe, and report open / closed / echo reply /
//! unreachable / timeout with the RTT and the clock that measured it.
//!
//! This is the first, synchronous probe path over plain raw sockets; the io_uring
//! engine replaces the sending side later, with the same matching rules.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use probe_common::{
    config::ProbeConfig,
    cookie::cookie,
    craft::L4,
    parse::tcp_flags,
    proto,
    record::{flags, AnswerClass, StampKey},
};
use serde::Serialize;

use super::{
    answers::AnswerSource,
    raw::{addr_from, source_for, v4_bytes, RawSender},
    PortRange,
};

/// What to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    /// A stateless TCP SYN to this port.
    TcpSyn {
        /// Destination port.
        port: u16,
    },
    /// An ICMP (or ICMPv6) echo request.
    IcmpEcho,
}

/// How a probe ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// SYN-ACK: something listens.
    Open,
    /// RST: host up, port closed.
    Closed,
    /// ICMP echo reply.
    EchoReply,
    /// An ICMP error quoting the probe.
    Unreachable {
        /// ICMP type of the error.
        icmp_type: u8,
        /// ICMP code of the error.
        icmp_code: u8,
    },
    /// A UDP answer.
    UdpReply,
    /// No answer before the deadline.
    Timeout,
}

impl Outcome {
    /// Short lower-case name for tables.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Open => "open",
            Outcome::Closed => "closed",
            Outcome::EchoReply => "echo_reply",
            Outcome::Unreachable { .. } => "unreachable",
            Outcome::UdpReply => "udp_reply",
            Outcome::Timeout => "timeout",
        }
    }
}

/// Which clock measured an RTT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Clock {
    /// Kernel timestamps at TC egress and XDP ingress.
    Kernel,
    /// Userspace timestamps around send and receive.
    Userspace,
}

/// The result of one probe.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeResult {
    /// Target address.
    pub target: IpAddr,
    /// What was sent.
    pub kind: ProbeKind,
    /// How it ended.
    pub outcome: Outcome,
    /// Round-trip time, if answered.
    pub rtt: Option<Duration>,
    /// Which clock measured `rtt`.
    pub clock: Option<Clock>,
    /// Who answered (the target, or the router behind an ICMP error).
    pub reporter: Option<IpAddr>,
    /// The source port (TCP) or ICMP sequence number used.
    pub local_port: u16,
}

/// Counts of one round, for the caller's accounting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RoundStats {
    /// Probes sent.
    pub sent: u64,
    /// Answers matched to a probe of this round.
    pub matched: u64,
    /// Answer records that matched no probe of this round (late or duplicate).
    pub unmatched: u64,
}

struct Pending {
    index: usize,
    sent_at: Instant,
}

/// The probe sender and its rotating state.
pub struct Round {
    /// Raw sockets.
    sender: RawSender,
    /// What the kernel programs were told (ports, ICMP id, cookie key).
    cfg: ProbeConfig,
    /// Next source port to use, rotating over the reserved range.
    next_port: u16,
    /// Next ICMP echo sequence number.
    next_seq: u16,
    /// Counters of the last round.
    pub stats: RoundStats,
}

/// A fresh probe configuration: random cookie key and ICMP identifier.
#[must_use]
pub fn new_config(ports: PortRange) -> ProbeConfig {
    ProbeConfig {
        cookie_key: [rand::random(), rand::random()],
        port_lo: ports.lo,
        port_hi: ports.hi,
        icmp_id: rand::random::<u16>() | 1,
        enabled: 1,
        reset: 0,
        ingress: 0,
        _pad: [0; 7],
    }
}

fn family_bytes(a: IpAddr) -> (u8, [u8; 16]) {
    match a {
        IpAddr::V4(v) => (probe_common::family::V4, v4_bytes(v)),
        IpAddr::V6(v) => (probe_common::family::V6, v.octets()),
    }
}

impl Round {
    /// Open raw sockets for probes described by `cfg`.
    ///
    /// # Errors
    /// Raw sockets cannot be opened (needs CAP_NET_RAW).
    pub fn new(cfg: ProbeConfig) -> io::Result<Self> {
        Ok(Self {
            sender: RawSender::new()?,
            cfg,
            next_port: cfg.port_lo,
            next_seq: 1,
            stats: RoundStats::default(),
        })
    }

    fn take_port(&mut self) -> u16 {
        let p = self.next_port;
        self.next_port = if p >= self.cfg.port_hi {
            self.cfg.port_lo
        } else {
            p + 1
        };
        p
    }

    /// Send one probe; returns the key its answer will carry.
    fn send(&mut self, target: IpAddr, kind: ProbeKind) -> io::Result<StampKey> {
        let local = source_for(target)?;
        let (fam, l) = family_bytes(local);
        let (_, r) = family_bytes(target);
        match kind {
            ProbeKind::TcpSyn { port } => {
                let sport = self.take_port();
                let seq = cookie(&self.cfg.cookie_key, &l, &r, sport, port);
                let l4 = L4::Tcp {
                    sport,
                    dport: port,
                    seq,
                    ack: 0,
                    flags: tcp_flags::SYN,
                    window: 1024,
                    options: &[],
                };
                self.sender.send(local, target, &l4)?;
                Ok(StampKey {
                    local: l,
                    remote: r,
                    local_port: sport,
                    remote_port: port,
                    proto: proto::TCP,
                    family: fam,
                    _pad: [0; 2],
                    seq,
                })
            }
            ProbeKind::IcmpEcho => {
                let seq = self.next_seq;
                self.next_seq = self.next_seq.wrapping_add(1);
                let pr = if fam == probe_common::family::V4 {
                    proto::ICMP
                } else {
                    proto::ICMPV6
                };
                let kind = if fam == probe_common::family::V4 {
                    8
                } else {
                    128
                };
                let l4 = L4::Icmp {
                    kind,
                    code: 0,
                    id: self.cfg.icmp_id,
                    seq,
                    payload: b"sonde-probe-0000",
                };
                self.sender.send(local, target, &l4)?;
                Ok(StampKey {
                    local: l,
                    remote: r,
                    local_port: self.cfg.icmp_id,
                    remote_port: seq,
                    proto: pr,
                    family: fam,
                    _pad: [0; 2],
                    seq: 0,
                })
            }
        }
    }

    /// Send one probe to each target, then collect answers until `timeout` after the
    /// last send. Results come back in the order of `targets`.
    ///
    /// # Errors
    /// A probe could not be sent (no route, socket error).
    pub fn run(
        &mut self,
        source: &mut dyn AnswerSource,
        targets: &[(IpAddr, ProbeKind)],
        timeout: Duration,
    ) -> io::Result<Vec<ProbeResult>> {
        self.stats = RoundStats::default();
        let mut results: Vec<ProbeResult> = targets
            .iter()
            .map(|(t, k)| ProbeResult {
                target: *t,
                kind: *k,
                outcome: Outcome::Timeout,
                rtt: None,
                clock: None,
                reporter: None,
                local_port: 0,
            })
            .collect();
        let mut pending: HashMap<StampKey, Pending> = HashMap::with_capacity(targets.len());
        for (i, (t, k)) in targets.iter().enumerate() {
            let sent_at = Instant::now();
            let key = self.send(*t, *k).map_err(|e| {
                io::Error::new(e.kind(), format!("sending {k:?} probe to {t}: {e}"))
            })?;
            results[i].local_port = if key.proto == proto::TCP {
                key.local_port
            } else {
                key.remote_port
            };
            pending.insert(key, Pending { index: i, sent_at });
            self.stats.sent += 1;
        }
        let deadline = Instant::now() + timeout;
        let mut answers = Vec::new();
        while !pending.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            source.wait(deadline - now);
            let seen_at = Instant::now();
            source.drain(&mut |r| answers.push((r, seen_at)));
            for (rec, seen_at) in answers.drain(..) {
                let Some(p) = pending.remove(&rec.key) else {
                    self.stats.unmatched += 1;
                    continue;
                };
                self.stats.matched += 1;
                let res = &mut results[p.index];
                let class = AnswerClass::from_u8(rec.class);
                res.outcome = match class {
                    Some(AnswerClass::Open) => Outcome::Open,
                    Some(AnswerClass::Closed) => Outcome::Closed,
                    Some(AnswerClass::EchoReply) => Outcome::EchoReply,
                    Some(AnswerClass::Unreachable) => Outcome::Unreachable {
                        icmp_type: rec.icmp_type,
                        icmp_code: rec.icmp_code,
                    },
                    Some(AnswerClass::UdpReply) => Outcome::UdpReply,
                    None => Outcome::Timeout,
                };
                res.reporter = Some(addr_from(rec.key.family, &rec.reporter));
                if rec.flags & flags::STAMPED != 0 {
                    res.rtt = Some(Duration::from_nanos(rec.rtt_ns));
                    res.clock = Some(Clock::Kernel);
                } else {
                    res.rtt = Some(seen_at.duration_since(p.sent_at));
                    res.clock = Some(Clock::Userspace);
                }
            }
        }
        Ok(results)
    }
}

/// Parse `ADDR` (ICMP) or `ADDR:PORT` (TCP SYN) into a probe target.
///
/// # Errors
/// Neither an IP address nor a socket address.
pub fn parse_target(s: &str) -> Result<(IpAddr, ProbeKind), String> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok((sa.ip(), ProbeKind::TcpSyn { port: sa.port() }));
    }
    s.parse::<IpAddr>()
        .map(|a| (a, ProbeKind::IcmpEcho))
        .map_err(|_| format!("target {s:?} is neither ADDR (ICMP echo) nor ADDR:PORT (TCP SYN)"))
}
