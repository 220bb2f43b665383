//! The stateless probe workers: TCP SYN, ICMP echo and UDP probes (a UDP check that
//! takes any answer, see [`is_stateless_udp`]) sent from raw sockets,
//! answered through an [`AnswerSource`] (the kernel programs' ring buffers, or the
//! userspace fallback), matched by their [`StampKey`] and expired at their deadline.
//!
//! No socket per probe and no per-probe kernel state: a probe is a key in a table from
//! send until its answer or its deadline. Several workers share the job queue and
//! nothing else: each owns a residue class of the source ports (and of the ICMP
//! sequence numbers), the answer rings those select ([`StampKey::ring`]), and the
//! table and deadlines of its own probes. It builds probes in batches, sends each
//! batch with one `sendmmsg`, reads its rings and expires its probes, so no probe's
//! state crosses cores (a SYN-ACK's reset is made by the kernel programs, or by the
//! host's TCP stack).

use std::{
    collections::{BTreeMap, HashMap},
    io,
    net::IpAddr,
    sync::{atomic::Ordering, Arc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use probe_common::{
    config::ProbeConfig,
    cookie::cookie,
    craft::L4,
    parse::tcp_flags,
    proto,
    record::{flags, AnswerClass, AnswerRecord, StampKey},
    EVENT_RINGS,
};

use super::{
    answers::AnswerSource,
    raw::{v4_bytes, Batch, RawSender},
    result::{CheckResult, Phases, Reason},
    sources::{SenderView, Sources},
    spec::ProbeSpec,
    uring::{sys::monotonic_now, EngineStats, Job},
    Clock,
};

/// One probe waiting for its answer.
struct Pending {
    /// The job it came from.
    job: Job,
    /// Send time, CLOCK_MONOTONIC.
    sent: Duration,
    /// Deadline, CLOCK_MONOTONIC.
    deadline: Duration,
}

/// Granularity of [`Deadlines`]; a worker with probes in flight looks at them about this
/// often anyway.
const DEADLINE_TICK: Duration = Duration::from_millis(1);

/// Deadlines in buckets of one [`DEADLINE_TICK`], rounded up (a probe never expires
/// early, at most one tick late). A binary heap of every probe in flight cost one
/// cache miss per level on each pop (8 % of the machine at 130k probes/s); here a
/// probe is appended to its bucket, which probes sent together share, and a due
/// bucket is taken whole.
#[derive(Default)]
struct Deadlines {
    /// Keys by the tick their deadline rounds up to.
    buckets: BTreeMap<u64, Vec<StampKey>>,
    /// Emptied bucket vectors, kept for their capacity.
    spare: Vec<Vec<StampKey>>,
}

impl Deadlines {
    fn tick(deadline: Duration) -> u64 {
        u64::try_from(deadline.as_nanos().div_ceil(DEADLINE_TICK.as_nanos())).unwrap_or(u64::MAX)
    }

    fn push(&mut self, deadline: Duration, key: StampKey) {
        let tick = Self::tick(deadline);
        if let Some(mut last) = self.buckets.last_entry() {
            if *last.key() == tick {
                last.get_mut().push(key);
                return;
            }
        }
        let spare = &mut self.spare;
        self.buckets
            .entry(tick)
            .or_insert_with(|| spare.pop().unwrap_or_default())
            .push(key);
    }

    /// The earliest bucket whose tick has passed at `now`, if any.
    fn pop_due(&mut self, now: Duration) -> Option<Vec<StampKey>> {
        let (&tick, _) = self.buckets.first_key_value()?;
        if u128::from(tick) * DEADLINE_TICK.as_nanos() > now.as_nanos() {
            return None;
        }
        self.buckets.pop_first().map(|(_, keys)| keys)
    }

    /// Give a bucket taken with [`Self::pop_due`] back for reuse.
    fn recycle(&mut self, mut keys: Vec<StampKey>) {
        if self.spare.len() < 64 {
            keys.clear();
            self.spare.push(keys);
        }
    }
}

/// What the workers share: nothing per probe.
struct Shared {
    /// Results out.
    results: Sender<CheckResult>,
    /// Engine counters.
    stats: Arc<EngineStats>,
    /// Which clock measures answers without a kernel stamp.
    clock: Clock,
    /// Source addresses and the routing epoch.
    sources: Sources,
}

/// How long an idle worker (nothing in flight) sleeps on the job queue before it
/// looks again.
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// How long a worker with probes in flight but nothing to send waits for a job before
/// it reads its rings and deadlines again (the kernel programs wake no reader before
/// `EVENTS_WAKEUP_BYTES` wait, so they are read this often anyway).
const BUSY_WAIT: Duration = Duration::from_millis(probe_common::EVENTS_POLL_MS as u64);

/// How often a worker reads the routing news ([`Sources::poll`]) while it runs.
const ROUTES_EVERY: Duration = Duration::from_millis(1);

/// Start the stateless workers, up to `senders` of them (a power of two: as many as
/// the answer source divides into, see [`AnswerSource::split`]). Must be called from a
/// thread in the network namespace the probes go out of.
///
/// # Errors
/// Raw sockets cannot be opened (needs CAP_NET_RAW).
pub fn spawn(
    source: Box<dyn AnswerSource + Send>,
    cfg: ProbeConfig,
    rx: Receiver<Job>,
    results: Sender<CheckResult>,
    stats: Arc<EngineStats>,
    senders: usize,
) -> io::Result<Vec<JoinHandle<()>>> {
    let clock = source.clock();
    let want = senders.clamp(1, usize::from(cfg.port_hi - cfg.port_lo) + 1);
    let parts = source.split(want);
    let n = parts.len();
    // Worker i uses the ports and sequence numbers i + k * n: its answers are in the
    // rings r with r % n == i (`StampKey::ring`), those its part holds.
    if !(n.is_power_of_two() && n <= EVENT_RINGS && n <= want) {
        return Err(io::Error::other(format!(
            "answer source divided into {n} parts for {want} senders (want a power of two up to {EVENT_RINGS})"
        )));
    }
    let shared = Arc::new(Shared {
        results,
        stats,
        clock,
        sources: Sources::new(),
    });
    let mut handles = Vec::with_capacity(n);
    for (i, source) in parts.into_iter().enumerate() {
        let index = u16::try_from(i).unwrap_or(0);
        let mut w = Worker {
            raw: RawSender::new()?,
            cfg,
            index,
            stride: u16::try_from(n).unwrap_or(1),
            next_port: cfg.port_lo + index,
            next_seq: index,
            sources: SenderView::default(),
            batch: Batch::default(),
            keys: Vec::with_capacity(super::raw::BATCH),
            sent: Vec::with_capacity(super::raw::BATCH),
            shared: Arc::clone(&shared),
            started: 0,
            finished: 0,
            source,
            pending: HashMap::default(),
            deadlines: Deadlines::default(),
            answers: Vec::with_capacity(1024),
            routes_polled: Instant::now(),
        };
        let rx = rx.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("sonde-stateless-{i}"))
                .spawn(move || w.run(&rx))?,
        );
    }
    Ok(handles)
}

fn family_bytes(a: IpAddr) -> (u8, [u8; 16]) {
    match a {
        IpAddr::V4(v) => (probe_common::family::V4, v4_bytes(v)),
        IpAddr::V6(v) => (probe_common::family::V6, v.octets()),
    }
}

/// A stateless worker: takes jobs, builds and sends probes in batches, and matches
/// and expires them.
struct Worker {
    /// Raw sockets.
    raw: RawSender,
    /// Ports, ICMP id and cookie key.
    cfg: ProbeConfig,
    /// This worker's index: it uses ports `port_lo + index + k * stride`.
    index: u16,
    /// Number of workers.
    stride: u16,
    /// Next source port (of this worker's slice).
    next_port: u16,
    /// Next ICMP sequence number (of this worker's residue class).
    next_seq: u16,
    /// This worker's view of the source addresses (see `sources::SenderView`).
    sources: SenderView,
    /// Packets being built.
    batch: Batch,
    /// The batch's probes (key and job), in packet order.
    keys: Vec<(StampKey, Job)>,
    /// The keys of the batch being sent, in order (to match send errors).
    sent: Vec<StampKey>,
    /// Shared with the other workers.
    shared: Arc<Shared>,
    /// Probes built and not yet added to the engine's `started`.
    started: u64,
    /// Results sent and not yet added to the engine's `finished`.
    finished: u64,
    /// This worker's answers (its rings).
    source: Box<dyn AnswerSource + Send>,
    /// This worker's probes in flight.
    pending: HashMap<StampKey, Pending, foldhash::fast::FixedState>,
    /// When to look at each key again (stale entries are skipped when due).
    deadlines: Deadlines,
    /// Answers read, being matched.
    answers: Vec<AnswerRecord>,
    /// When the routing news were last read.
    routes_polled: Instant,
}

impl Worker {
    fn run(&mut self, rx: &Receiver<Job>) {
        let mut open = true;
        loop {
            let mut got = 0usize;
            if open {
                if self.pending.is_empty() && self.keys.is_empty() {
                    // Nothing in flight or built: sleep on the queue.
                    match rx.recv_timeout(IDLE_WAIT) {
                        Ok(job) => {
                            self.poll_routes(true);
                            self.build(job);
                            got += 1;
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => open = false,
                    }
                }
                while open && !self.batch.is_full() {
                    match rx.try_recv() {
                        Ok(job) => {
                            self.build(job);
                            got += 1;
                        }
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => open = false,
                    }
                }
                self.flush();
            }
            self.poll_routes(false);
            self.collect();
            self.expire();
            self.count_finished();
            if self.pending.is_empty() {
                if !open {
                    break;
                }
            } else if got == 0 {
                self.wait(rx, &mut open);
            }
        }
    }

    /// Nothing to send and probes in flight: wait for a job, or for answers when the
    /// source times them in userspace (on arrival, so it must be read at once).
    fn wait(&mut self, rx: &Receiver<Job>, open: &mut bool) {
        if self.shared.clock == Clock::Userspace || !*open {
            self.source.wait(BUSY_WAIT);
            return;
        }
        match rx.recv_timeout(BUSY_WAIT) {
            Ok(job) => self.build(job),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => *open = false,
        }
    }

    /// Read the routing news (always when `now`, else at most every [`ROUTES_EVERY`]).
    fn poll_routes(&mut self, now: bool) {
        if now || self.routes_polled.elapsed() >= ROUTES_EVERY {
            self.routes_polled = Instant::now();
            self.shared.sources.poll();
        }
    }

    fn take_port(&mut self) -> u16 {
        let p = self.next_port;
        let next = u32::from(p) + u32::from(self.stride);
        self.next_port = if next > u32::from(self.cfg.port_hi) {
            self.cfg.port_lo + self.index
        } else {
            next as u16
        };
        p
    }

    /// Build one probe into the batch (its key is registered when the batch is sent).
    fn build(&mut self, job: Job) {
        // Counted per batch ([`Self::count_started`]), not per probe: both senders
        // adding to one counter would pass its cache line back and forth.
        self.started += 1;
        let target = job.spec.target.addr;
        let memo = &job.spec.target.source;
        let found = self
            .shared
            .sources
            .local_for(memo, target, &mut self.sources);
        let local = match found {
            Ok(l) => l,
            Err(e) => {
                let reason = Reason::Local {
                    detail: format!("no route to {target}: {e}"),
                };
                self.fail(&job, reason);
                return;
            }
        };
        let (fam, l) = family_bytes(local);
        let (_, r) = family_bytes(target);
        let built = match &job.spec.probe {
            ProbeSpec::TcpSyn => {
                let dport = job.spec.target.port;
                let sport = self.take_port();
                let seq = cookie(&self.cfg.cookie_key, &l, &r, sport, dport);
                let key = StampKey {
                    local: l,
                    remote: r,
                    local_port: sport,
                    remote_port: dport,
                    proto: proto::TCP,
                    family: fam,
                    _pad: [0; 2],
                    seq,
                };
                let l4 = L4::Tcp {
                    sport,
                    dport,
                    seq,
                    ack: 0,
                    flags: tcp_flags::SYN,
                    window: 1024,
                    options: &[],
                };
                self.batch.push(local, target, &l4).map(|()| key)
            }
            ProbeSpec::Icmp => {
                let seq = self.next_seq;
                self.next_seq = self.next_seq.wrapping_add(self.stride);
                let (pr, kind) = if fam == probe_common::family::V4 {
                    (proto::ICMP, 8)
                } else {
                    (proto::ICMPV6, 128)
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
                let l4 = L4::Icmp {
                    kind,
                    code: 0,
                    id: self.cfg.icmp_id,
                    seq,
                    payload: b"sonde-probe-0000",
                };
                self.batch.push(local, target, &l4).map(|()| key)
            }
            ProbeSpec::Udp(u) if is_stateless_udp(u) => {
                let dport = job.spec.target.port;
                let sport = self.take_port();
                let key = StampKey {
                    local: l,
                    remote: r,
                    local_port: sport,
                    remote_port: dport,
                    proto: proto::UDP,
                    family: fam,
                    _pad: [0; 2],
                    seq: 0,
                };
                let l4 = L4::Udp {
                    sport,
                    dport,
                    payload: &u.payload,
                };
                self.batch.push(local, target, &l4).map(|()| key)
            }
            other => {
                let detail = format!("{} is not a stateless probe", other.kind());
                self.fail(&job, Reason::Local { detail });
                return;
            }
        };
        match built {
            Ok(key) => self.keys.push((key, job)),
            Err(e) => self.fail(
                &job,
                Reason::Local {
                    detail: format!("building probe: {e}"),
                },
            ),
        }
    }

    /// End a probe that was never sent.
    fn fail(&mut self, job: &Job, reason: Reason) {
        self.count_started();
        self.finish(job, reason, None, self.shared.clock, Duration::ZERO);
    }

    /// Add the probes built since the last call to the engine's `started` (before any
    /// of them can be counted finished).
    fn count_started(&mut self) {
        if self.started > 0 {
            self.shared
                .stats
                .started
                .fetch_add(std::mem::take(&mut self.started), Ordering::Relaxed);
        }
    }

    /// Send a probe's result (counted finished in [`Self::count_finished`]).
    fn finish(
        &mut self,
        job: &Job,
        reason: Reason,
        rtt: Option<Duration>,
        clock: Clock,
        total: Duration,
    ) {
        self.finished += 1;
        let phases = Phases {
            total: Some(total),
            ..Phases::default()
        };
        let _ = self.shared.results.send(CheckResult {
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

    /// Add the results sent since the last call to the engine's `finished` (after the
    /// probes were counted started: [`Self::count_started`] runs first in each pass).
    fn count_finished(&mut self) {
        if self.finished > 0 {
            self.shared
                .stats
                .finished
                .fetch_add(std::mem::take(&mut self.finished), Ordering::Relaxed);
        }
    }

    /// Register the batch's probes, then send it. Registering first means an answer can
    /// never be read before its probe is known.
    fn flush(&mut self) {
        self.count_started();
        if self.keys.is_empty() {
            return;
        }
        let now = monotonic_now();
        // The jobs move into the pending table (no reference-count traffic on their
        // shared parts); a failed send takes its job back out by key.
        let mut built = std::mem::take(&mut self.keys);
        self.sent.clear();
        for (key, job) in built.drain(..) {
            self.sent.push(key);
            let deadline = now + job.spec.timeout;
            if let Some(old) = self.pending.insert(
                key,
                Pending {
                    job,
                    sent: now,
                    deadline,
                },
            ) {
                // The same port/sequence came round again before the last probe on it
                // was answered: that probe can no longer be told apart; end it.
                let clock = self.shared.clock;
                self.finish(
                    &old.job,
                    Reason::Timeout,
                    None,
                    clock,
                    now.saturating_sub(old.sent),
                );
            }
            self.deadlines.push(deadline, key);
        }
        let mut errors = Vec::new();
        self.raw.send_batch(&mut self.batch, &mut errors);
        for (i, e) in errors {
            let key = self.sent[i];
            if let Some(p) = self.pending.remove(&key) {
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
                let clock = self.shared.clock;
                self.finish(&p.job, reason, None, clock, Duration::ZERO);
            }
        }
        self.keys = built;
    }

    /// Read this worker's rings and match what they hold.
    fn collect(&mut self) {
        let mut answers = std::mem::take(&mut self.answers);
        self.source.drain(&mut |r| answers.push(r));
        for rec in answers.drain(..) {
            self.answer(&rec);
        }
        self.answers = answers;
    }

    fn answer(&mut self, rec: &AnswerRecord) {
        let Some(p) = self.pending.remove(&rec.key) else {
            return;
        };
        let now = monotonic_now();
        let (rtt, clock) = if rec.flags & flags::STAMPED != 0 {
            (Duration::from_nanos(rec.rtt_ns), Clock::Kernel)
        } else {
            // From the send to when the answer was read off the wire (the packet
            // socket's reader, or the kernel program that found no stamp), both
            // CLOCK_MONOTONIC; not to now, which a record handed between readers, or
            // left in a ring until the next pass, would stretch.
            let rx = match rec.rx_ns {
                0 => now,
                ns => Duration::from_nanos(ns),
            };
            (rx.saturating_sub(p.sent), Clock::Userspace)
        };
        let reason = match AnswerClass::from_u8(rec.class) {
            Some(AnswerClass::Open | AnswerClass::EchoReply | AnswerClass::UdpReply) => Reason::Ok,
            Some(AnswerClass::Closed) => Reason::Refused,
            // Port unreachable for a UDP probe: nothing listens there, what a connected
            // UDP socket reports as ECONNREFUSED.
            Some(AnswerClass::Unreachable)
                if rec.key.proto == proto::UDP
                    && is_port_unreachable(rec.key.family, rec.icmp_type, rec.icmp_code) =>
            {
                Reason::Refused
            }
            Some(AnswerClass::Unreachable) => Reason::Unreachable {
                icmp_type: rec.icmp_type,
                icmp_code: rec.icmp_code,
            },
            None => Reason::Local {
                detail: format!("unknown answer class {}", rec.class),
            },
        };
        self.finish(&p.job, reason, Some(rtt), clock, now.saturating_sub(p.sent));
    }

    /// End this worker's probes whose deadline passed.
    fn expire(&mut self) {
        let now = monotonic_now();
        let clock = self.shared.clock;
        while let Some(keys) = self.deadlines.pop_due(now) {
            for key in &keys {
                // A key answered since, or sent again with a later deadline, stays.
                if self.pending.get(key).is_some_and(|p| p.deadline <= now) {
                    if let Some(p) = self.pending.remove(key) {
                        self.finish(
                            &p.job,
                            Reason::Timeout,
                            None,
                            clock,
                            now.saturating_sub(p.sent),
                        );
                    }
                }
            }
            self.deadlines.recycle(keys);
        }
    }
}

/// Whether a UDP check can run stateless: any answer counts, so the XDP program's
/// record of it (which carries no payload) decides. A check that looks at the answer's
/// bytes needs a socket.
#[must_use]
pub fn is_stateless_udp(u: &super::spec::UdpSpec) -> bool {
    u.expect_prefix.is_empty()
}

/// ICMP "port unreachable": type 3 code 3 (IPv4), ICMPv6 type 1 code 4.
fn is_port_unreachable(family: u8, icmp_type: u8, icmp_code: u8) -> bool {
    if family == probe_common::family::V4 {
        (icmp_type, icmp_code) == (3, 3)
    } else {
        (icmp_type, icmp_code) == (1, 4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u16) -> StampKey {
        StampKey {
            local_port: n,
            ..StampKey::default()
        }
    }

    fn due(d: &mut Deadlines, now: Duration) -> Vec<u16> {
        let mut out = Vec::new();
        while let Some(keys) = d.pop_due(now) {
            out.extend(keys.iter().map(|k| k.local_port));
            d.recycle(keys);
        }
        out
    }

    #[test]
    fn deadlines_come_due_in_order_never_early_and_at_most_a_tick_late() {
        let ms = Duration::from_millis;
        let mut d = Deadlines::default();
        // Out of order, and within one tick of each other.
        d.push(ms(5) + Duration::from_micros(300), key(3));
        d.push(ms(2), key(1));
        d.push(ms(5) + Duration::from_micros(900), key(4));
        d.push(ms(2) + Duration::from_nanos(1), key(2));
        assert_eq!(due(&mut d, ms(1)), Vec::<u16>::new());
        // Exactly at the deadline: due; 1 ns past 2 ms rounds up to the 3 ms tick.
        assert_eq!(due(&mut d, ms(2)), vec![1]);
        assert_eq!(
            due(&mut d, ms(3) - Duration::from_nanos(1)),
            Vec::<u16>::new()
        );
        assert_eq!(due(&mut d, ms(3)), vec![2]);
        assert_eq!(
            due(&mut d, ms(5) + Duration::from_micros(999)),
            Vec::<u16>::new()
        );
        assert_eq!(due(&mut d, ms(6)), vec![3, 4]);
        assert!(d.buckets.is_empty());
        // Emptied buckets are reused.
        assert!(!d.spare.is_empty());
        d.push(ms(10), key(9));
        assert_eq!(due(&mut d, ms(100)), vec![9]);
    }
}
