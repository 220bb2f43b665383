//! The stateless probe workers: TCP SYN, ICMP echo and UDP probes (a UDP check that
//! takes any answer, see [`is_stateless_udp`]) sent from raw sockets,
//! answered through an [`AnswerSource`] (the XDP ring buffer, or the userspace
//! fallback), matched by their [`StampKey`] and expired at their deadline.
//!
//! No socket per probe and no per-probe kernel state: a probe is a key in a table from
//! send until its answer or its deadline. Several sender threads share the job queue;
//! each owns a slice of the source ports (and of the ICMP sequence space), builds
//! probes in batches and sends each batch with one `sendmmsg`. One collector thread
//! reads the answers, resolves them in the sharded pending table, answers every
//! SYN-ACK with an RST (batched too) so the target keeps no half-open connection, and
//! expires probes whose deadline passed.

use std::{
    collections::{BTreeMap, HashMap},
    hash::{BuildHasher, Hash},
    io,
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use parking_lot::Mutex;
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
    raw::{v4_bytes, Batch, RawSender},
    result::{CheckResult, Phases, Reason},
    sources::{SenderView, Sources},
    spec::ProbeSpec,
    uring::{sys::monotonic_now, EngineStats, Job},
    Clock,
};

/// Pending-table shards (a power of two).
const SHARDS: usize = 64;

/// One probe waiting for its answer.
struct Pending {
    /// The job it came from.
    job: Job,
    /// Send time, CLOCK_MONOTONIC.
    sent: Duration,
    /// Deadline, CLOCK_MONOTONIC.
    deadline: Duration,
}

/// One shard of the pending table: probes by key, and their deadlines.
#[derive(Default)]
struct Shard {
    /// Probes in flight.
    map: HashMap<StampKey, Pending, foldhash::fast::FixedState>,
    /// When to look at each key again (stale entries are skipped when due).
    deadlines: Deadlines,
}

/// Granularity of [`Deadlines`]; the collector looks at them about this often anyway.
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

/// Probes in flight, sharded so senders and the collector rarely meet on a lock.
struct Table {
    /// The shards.
    shards: Vec<Mutex<Shard>>,
    /// Hasher choosing a shard.
    hasher: foldhash::fast::FixedState,
}

impl Table {
    fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: foldhash::fast::FixedState::default(),
        }
    }

    fn shard(&self, key: &StampKey) -> &Mutex<Shard> {
        let mut h = self.hasher.build_hasher();
        key.hash(&mut h);
        &self.shards[usize::try_from(std::hash::Hasher::finish(&h)).unwrap_or(0) & (SHARDS - 1)]
    }
}

/// What the senders and the collector share.
struct Shared {
    /// Probes in flight.
    table: Table,
    /// Results out.
    results: Sender<CheckResult>,
    /// Engine counters.
    stats: Arc<EngineStats>,
    /// Which clock measures answers without a kernel stamp.
    clock: Clock,
    /// Set when the job queue closed and the senders are done.
    senders_done: AtomicBool,
    /// Source addresses and the routing epoch (polled by the collector).
    sources: Sources,
}

impl Shared {
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
}

/// Start the stateless workers: `senders` sender threads and one collector. Must be
/// called from a thread in the network namespace the probes go out of.
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
    let senders = senders.clamp(1, usize::from(cfg.port_hi - cfg.port_lo) + 1);
    let shared = Arc::new(Shared {
        table: Table::new(),
        results,
        stats,
        clock: source.clock(),
        senders_done: AtomicBool::new(false),
        sources: Sources::new(),
    });
    let mut handles = Vec::with_capacity(senders + 1);
    let mut sender_handles = Vec::with_capacity(senders);
    for i in 0..senders {
        let mut s = SenderThread {
            raw: RawSender::new()?,
            cfg,
            index: u16::try_from(i).unwrap_or(0),
            stride: u16::try_from(senders).unwrap_or(1),
            next_port: cfg.port_lo + u16::try_from(i).unwrap_or(0),
            next_seq: u16::try_from(i).unwrap_or(0),
            sources: SenderView::default(),
            batch: Batch::default(),
            keys: Vec::with_capacity(super::raw::BATCH),
            sent: Vec::with_capacity(super::raw::BATCH),
            shared: Arc::clone(&shared),
            started: 0,
        };
        let rx = rx.clone();
        sender_handles.push(
            std::thread::Builder::new()
                .name(format!("sonde-send-{i}"))
                .spawn(move || s.run(&rx))?,
        );
    }
    let mut c = Collector {
        source,
        shared: Arc::clone(&shared),
    };
    handles.push(
        std::thread::Builder::new()
            .name("sonde-collect".into())
            .spawn(move || {
                // The collector outlives the senders: it waits for their last probes.
                c.run(sender_handles);
            })?,
    );
    Ok(handles)
}

fn family_bytes(a: IpAddr) -> (u8, [u8; 16]) {
    match a {
        IpAddr::V4(v) => (probe_common::family::V4, v4_bytes(v)),
        IpAddr::V6(v) => (probe_common::family::V6, v.octets()),
    }
}

/// A sender: takes jobs, builds and sends probes in batches, registers them.
struct SenderThread {
    /// Raw sockets.
    raw: RawSender,
    /// Ports, ICMP id and cookie key.
    cfg: ProbeConfig,
    /// This sender's index: it uses ports `port_lo + index + k * stride`.
    index: u16,
    /// Number of senders.
    stride: u16,
    /// Next source port (of this sender's slice).
    next_port: u16,
    /// Next ICMP sequence number (of this sender's residue class).
    next_seq: u16,
    /// This sender's view of the source addresses (see `sources::SenderView`).
    sources: SenderView,
    /// Packets being built.
    batch: Batch,
    /// The batch's probes (key and job), in packet order.
    keys: Vec<(StampKey, Job)>,
    /// The keys of the batch being sent, in order (to match send errors).
    sent: Vec<StampKey>,
    /// Shared with the collector.
    shared: Arc<Shared>,
    /// Probes built and not yet added to the engine's `started`.
    started: u64,
}

impl SenderThread {
    fn run(&mut self, rx: &Receiver<Job>) {
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(job) => self.build(job),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while !self.batch.is_full() {
                match rx.try_recv() {
                    Ok(job) => self.build(job),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            self.flush();
        }
        self.flush();
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
        self.shared
            .finish(job, reason, None, self.shared.clock, Duration::ZERO);
    }

    /// Register the batch's probes, then send it. Registering first means an answer can
    /// never arrive before its probe is known.
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
            let key = &key;
            let deadline = now + job.spec.timeout;
            let mut shard = self.shared.table.shard(key).lock();
            if let Some(old) = shard.map.insert(
                *key,
                Pending {
                    job,
                    sent: now,
                    deadline,
                },
            ) {
                // The same port/sequence came round again before the last probe on it
                // was answered: that probe can no longer be told apart; end it.
                drop(shard);
                self.shared.finish(
                    &old.job,
                    Reason::Timeout,
                    None,
                    self.shared.clock,
                    now.saturating_sub(old.sent),
                );
                shard = self.shared.table.shard(key).lock();
            }
            shard.deadlines.push(deadline, *key);
        }
        let mut errors = Vec::new();
        self.raw.send_batch(&mut self.batch, &mut errors);
        for (i, e) in errors {
            let key = &self.sent[i];
            let removed = self.shared.table.shard(key).lock().map.remove(key);
            if let Some(p) = removed {
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
                self.shared
                    .finish(&p.job, reason, None, self.shared.clock, Duration::ZERO);
            }
        }
        self.keys = built;
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

/// The collector: answers in, results out, deadlines enforced.
struct Collector {
    /// Where answers come from.
    source: Box<dyn AnswerSource + Send>,
    /// Shared with the senders.
    shared: Arc<Shared>,
}

impl Collector {
    fn run(&mut self, senders: Vec<JoinHandle<()>>) {
        let shared = Arc::clone(&self.shared);
        let watcher = std::thread::spawn(move || {
            for h in senders {
                if h.join().is_err() {
                    warn!("stateless sender panicked");
                }
            }
            shared.senders_done.store(true, Ordering::Release);
        });
        let mut answers: Vec<AnswerRecord> = Vec::with_capacity(1024);
        loop {
            self.source.wait(Duration::from_millis(1));
            self.shared.sources.poll();
            self.source.drain(&mut |r| answers.push(r));
            for rec in answers.drain(..) {
                self.answer(&rec);
            }
            let pending = self.expire();
            if pending == 0 && self.shared.senders_done.load(Ordering::Acquire) {
                break;
            }
        }
        let _ = watcher.join();
    }

    fn answer(&mut self, rec: &AnswerRecord) {
        let Some(p) = self
            .shared
            .table
            .shard(&rec.key)
            .lock()
            .map
            .remove(&rec.key)
        else {
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
        self.shared
            .finish(&p.job, reason, Some(rtt), clock, now.saturating_sub(p.sent));
    }

    /// Expire probes past their deadline; returns how many are still pending.
    fn expire(&mut self) -> usize {
        let now = monotonic_now();
        let mut pending = 0;
        let mut expired = Vec::new();
        for shard in &self.shared.table.shards {
            let mut s = shard.lock();
            while let Some(keys) = s.deadlines.pop_due(now) {
                for key in &keys {
                    // A key answered since, or sent again with a later deadline, stays.
                    if s.map.get(key).is_some_and(|p| p.deadline <= now) {
                        if let Some(p) = s.map.remove(key) {
                            expired.push(p);
                        }
                    }
                }
                s.deadlines.recycle(keys);
            }
            pending += s.map.len();
        }
        for p in expired {
            self.shared.finish(
                &p.job,
                Reason::Timeout,
                None,
                self.shared.clock,
                now.saturating_sub(p.sent),
            );
        }
        pending
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
