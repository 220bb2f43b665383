//! The stateless probe worker: TCP SYN and ICMP echo probes sent from raw sockets,
//! answered through an [`AnswerSource`] (the XDP ring buffer, or the userspace
//! fallback), matched by their [`StampKey`] and expired at their deadline.
//!
//! No socket per probe and no per-probe kernel state: a probe is a key in a hash map
//! from send until its answer or its deadline. A SYN-ACK is answered with an RST so the
//! target keeps no half-open connection.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    io,
    net::IpAddr,
    sync::{atomic::Ordering, Arc},
    thread::JoinHandle,
    time::Duration,
};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use probe_common::{
    config::ProbeConfig,
    cookie::cookie,
    craft::L4,
    parse::tcp_flags,
    proto,
    record::{flags, AnswerClass, AnswerRecord, StampKey},
};
use tracing::warn;

use super::{
    answers::AnswerSource,
    raw::{addr_from, source_for, v4_bytes, RawSender},
    result::{CheckResult, Phases, Reason},
    spec::ProbeSpec,
    uring::{sys::monotonic_now, EngineStats, Job},
    Clock,
};

/// Most local-address lookups cached (one per target address).
const SOURCE_CACHE: usize = 65536;

/// One probe waiting for its answer.
struct Pending {
    /// The job it came from.
    job: Job,
    /// Send time, CLOCK_MONOTONIC.
    sent: Duration,
    /// Deadline, CLOCK_MONOTONIC.
    deadline: Duration,
}

/// The worker's state.
struct Worker {
    /// Raw sockets.
    sender: RawSender,
    /// Where answers come from.
    source: Box<dyn AnswerSource + Send>,
    /// Ports, ICMP id and cookie key (the same the kernel programs were given).
    cfg: ProbeConfig,
    /// Probes in flight by key.
    pending: HashMap<StampKey, Pending>,
    /// Deadlines, earliest first (stale entries are skipped when popped).
    deadlines: BinaryHeap<Reverse<(Duration, StampKey)>>,
    /// Local address per target address.
    sources: HashMap<IpAddr, IpAddr>,
    /// Next source port.
    next_port: u16,
    /// Next ICMP sequence number.
    next_seq: u16,
    /// Results out.
    results: Sender<CheckResult>,
    /// Engine counters.
    stats: Arc<EngineStats>,
}

/// Start the stateless worker thread. Must be called from a thread in the network
/// namespace the probes go out of (the raw sockets are opened here).
///
/// # Errors
/// Raw sockets cannot be opened (needs CAP_NET_RAW).
pub fn spawn(
    source: Box<dyn AnswerSource + Send>,
    cfg: ProbeConfig,
    rx: Receiver<Job>,
    results: Sender<CheckResult>,
    stats: Arc<EngineStats>,
) -> io::Result<JoinHandle<()>> {
    let sender = RawSender::new()?;
    let mut w = Worker {
        sender,
        source,
        cfg,
        pending: HashMap::new(),
        deadlines: BinaryHeap::new(),
        sources: HashMap::new(),
        next_port: cfg.port_lo,
        next_seq: 1,
        results,
        stats,
    };
    std::thread::Builder::new()
        .name("sonde-stateless".into())
        .spawn(move || w.run(&rx))
}

fn family_bytes(a: IpAddr) -> (u8, [u8; 16]) {
    match a {
        IpAddr::V4(v) => (probe_common::family::V4, v4_bytes(v)),
        IpAddr::V6(v) => (probe_common::family::V6, v.octets()),
    }
}

impl Worker {
    fn run(&mut self, rx: &Receiver<Job>) {
        let mut disconnected = false;
        let mut answers: Vec<AnswerRecord> = Vec::with_capacity(1024);
        loop {
            for _ in 0..4096 {
                match rx.try_recv() {
                    Ok(job) => self.send(job),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        disconnected = true;
                        break;
                    }
                }
            }
            self.source.drain(&mut |r| answers.push(r));
            for rec in answers.drain(..) {
                self.answer(&rec);
            }
            self.expire();
            if self.pending.is_empty() {
                if disconnected {
                    return;
                }
                match rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(job) => self.send(job),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => disconnected = true,
                }
                continue;
            }
            if !rx.is_empty() {
                continue;
            }
            // Wake for answers, the next deadline, or at most 2 ms later for new jobs.
            let now = monotonic_now();
            let next = self
                .deadlines
                .peek()
                .map_or(Duration::from_millis(2), |Reverse((d, _))| {
                    d.saturating_sub(now)
                });
            self.source.wait(next.min(Duration::from_millis(2)));
        }
    }

    fn local_for(&mut self, target: IpAddr) -> io::Result<IpAddr> {
        if let Some(l) = self.sources.get(&target) {
            return Ok(*l);
        }
        let l = source_for(target)?;
        if self.sources.len() >= SOURCE_CACHE {
            self.sources.clear();
        }
        self.sources.insert(target, l);
        Ok(l)
    }

    fn finish(
        &self,
        job: &Job,
        reason: Reason,
        rtt: Option<Duration>,
        clock: Clock,
        total: Duration,
    ) {
        self.stats.finished.fetch_add(1, Ordering::Relaxed);
        let phases = Phases {
            total: Some(total),
            ..Phases::default()
        };
        let _ = self.results.send(CheckResult {
            check: job.spec.id.clone(),
            seq: job.seq,
            reason,
            rtt,
            clock,
            phases,
            http_status: None,
            cert_days_left: None,
        });
    }

    fn send(&mut self, job: Job) {
        self.stats.started.fetch_add(1, Ordering::Relaxed);
        let now = monotonic_now();
        let target = job.spec.target.addr;
        let local = match self.local_for(target) {
            Ok(l) => l,
            Err(e) => {
                self.finish(
                    &job,
                    Reason::Local {
                        detail: format!("no route to {target}: {e}"),
                    },
                    None,
                    self.source.clock(),
                    Duration::ZERO,
                );
                return;
            }
        };
        let (fam, l) = family_bytes(local);
        let (_, r) = family_bytes(target);
        let sent = match &job.spec.probe {
            ProbeSpec::TcpSyn => {
                let dport = job.spec.target.port;
                // Skip ports whose previous probe to this target is still pending.
                let mut key = StampKey::default();
                for _ in 0..=(self.cfg.port_hi - self.cfg.port_lo) {
                    let sport = self.next_port;
                    self.next_port = if sport >= self.cfg.port_hi {
                        self.cfg.port_lo
                    } else {
                        sport + 1
                    };
                    let seq = cookie(&self.cfg.cookie_key, &l, &r, sport, dport);
                    key = StampKey {
                        local: l,
                        remote: r,
                        local_port: sport,
                        remote_port: dport,
                        proto: proto::TCP,
                        family: fam,
                        _pad: [0; 2],
                        seq,
                    };
                    if !self.pending.contains_key(&key) {
                        break;
                    }
                }
                let l4 = L4::Tcp {
                    sport: key.local_port,
                    dport,
                    seq: key.seq,
                    ack: 0,
                    flags: tcp_flags::SYN,
                    window: 1024,
                    options: &[],
                };
                self.sender.send(local, target, &l4).map(|()| key)
            }
            ProbeSpec::Icmp => {
                let seq = self.next_seq;
                self.next_seq = self.next_seq.wrapping_add(1);
                let (pr, kind) = if fam == probe_common::family::V4 {
                    (proto::ICMP, 8)
                } else {
                    (proto::ICMPV6, 128)
                };
                let l4 = L4::Icmp {
                    kind,
                    code: 0,
                    id: self.cfg.icmp_id,
                    seq,
                    payload: b"sonde-probe-0000",
                };
                let key = StampKey {
                    local: l,
                    remote: r,
                    local_port: self.cfg.icmp_id,
                    remote_port: seq,
                    proto: pr,
                    family: fam,
                    _pad: [0; 2],
                    seq: 0,
                };
                self.sender.send(local, target, &l4).map(|()| key)
            }
            other => {
                let detail = format!("{} is not a stateless probe", other.kind());
                self.finish(
                    &job,
                    Reason::Local { detail },
                    None,
                    self.source.clock(),
                    Duration::ZERO,
                );
                return;
            }
        };
        match sent {
            Ok(key) => {
                let deadline = now + job.spec.timeout;
                self.deadlines.push(Reverse((deadline, key)));
                self.pending.insert(
                    key,
                    Pending {
                        job,
                        sent: now,
                        deadline,
                    },
                );
            }
            Err(e) => {
                let reason = match e.raw_os_error() {
                    Some(libc::EHOSTUNREACH) => Reason::Unreachable {
                        icmp_type: 3,
                        icmp_code: 1,
                    },
                    Some(libc::ENETUNREACH) => Reason::Unreachable {
                        icmp_type: 3,
                        icmp_code: 0,
                    },
                    _ => Reason::Local {
                        detail: format!("send: {e}"),
                    },
                };
                self.finish(&job, reason, None, self.source.clock(), Duration::ZERO);
            }
        }
    }

    fn answer(&mut self, rec: &AnswerRecord) {
        let Some(p) = self.pending.remove(&rec.key) else {
            return;
        };
        let now = monotonic_now();
        let (rtt, clock) = if rec.flags & flags::STAMPED != 0 {
            (Duration::from_nanos(rec.rtt_ns), Clock::Kernel)
        } else {
            (now.saturating_sub(p.sent), Clock::Userspace)
        };
        let reason = match AnswerClass::from_u8(rec.class) {
            Some(AnswerClass::Open | AnswerClass::EchoReply | AnswerClass::UdpReply) => Reason::Ok,
            Some(AnswerClass::Closed) => Reason::Refused,
            Some(AnswerClass::Unreachable) => Reason::Unreachable {
                icmp_type: rec.icmp_type,
                icmp_code: rec.icmp_code,
            },
            None => Reason::Local {
                detail: format!("unknown answer class {}", rec.class),
            },
        };
        if rec.class == AnswerClass::Open as u8 {
            let k = &rec.key;
            let l4 = L4::Tcp {
                sport: k.local_port,
                dport: k.remote_port,
                seq: k.seq.wrapping_add(1),
                ack: 0,
                flags: tcp_flags::RST,
                window: 0,
                options: &[],
            };
            if let Err(e) = self.sender.send(
                addr_from(k.family, &k.local),
                addr_from(k.family, &k.remote),
                &l4,
            ) {
                warn!(error = %e, "RST after SYN-ACK failed; the target keeps a half-open connection until it times out");
            }
        }
        self.finish(&p.job, reason, Some(rtt), clock, now.saturating_sub(p.sent));
    }

    fn expire(&mut self) {
        let now = monotonic_now();
        while let Some(Reverse((d, key))) = self.deadlines.peek().copied() {
            if d > now {
                break;
            }
            self.deadlines.pop();
            if self.pending.get(&key).is_some_and(|p| p.deadline == d) {
                if let Some(p) = self.pending.remove(&key) {
                    self.finish(
                        &p.job,
                        Reason::Timeout,
                        None,
                        self.source.clock(),
                        now.saturating_sub(p.sent),
                    );
                }
            }
        }
    }
}
