//! The io_uring probe engine: N worker threads, one io_uring each, fed jobs through a
//! crossbeam channel and sending typed results back through another.
//!
//! Stateful probes (TCP connect, HTTP, UDP, DNS) are chains of connect / send / recv
//! operations, each linked to an absolute timeout at the probe's deadline
//! (IORING_OP_LINK_TIMEOUT with IORING_TIMEOUT_ABS), so a probe never outlives its
//! timeout whatever phase it is in. Submissions are batched: a worker pushes every
//! operation it can, then enters the kernel once; completions are reaped in batches.
//! A worker with nothing in flight blocks on its job channel; one with work in
//! flight blocks in io_uring and is woken for new jobs by an eventfd.

mod prepared;
mod slot;
pub mod sys;

pub use prepared::{PrepareError, Prepared};

use std::{
    collections::{HashMap, VecDeque},
    io,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use io_uring::{opcode, squeue, types, IoUring};
use serde::Serialize;
use tracing::{debug, info, warn};

use self::{
    slot::{Op, Slot},
    sys::EventFd,
};
use super::{
    answers::AnswerSource,
    result::{CheckResult, Reason},
    spec::{CheckId, CheckSpec, ProbeSpec},
};
use probe_common::config::ProbeConfig;

/// One probe to run.
#[derive(Clone, Debug)]
pub struct Job {
    /// The check (target, probe kind, timeout).
    pub spec: Arc<CheckSpec>,
    /// Sequence number, echoed in the result.
    pub seq: u64,
    /// Compiled expectations and TLS configuration, prepared once per check.
    pub prepared: Arc<Prepared>,
}

impl Job {
    /// A job for `spec`, preparing it now (compiling its regex, building its TLS
    /// configuration). Callers that run a check many times prepare once with
    /// [`Prepared::new`] and build jobs with the shared result instead.
    ///
    /// # Errors
    /// The check's regex or TLS configuration is refused.
    pub fn new(spec: Arc<CheckSpec>, seq: u64) -> Result<Self, PrepareError> {
        static TLS: std::sync::OnceLock<crate::engine::tls::TlsConfigs> =
            std::sync::OnceLock::new();
        let prepared = Prepared::shared(&spec, TLS.get_or_init(Default::default))?;
        Ok(Self {
            spec,
            seq,
            prepared,
        })
    }
}

/// Engine sizing.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Worker threads (default: number of cores).
    pub threads: usize,
    /// Submission queue entries per ring.
    pub ring_entries: u32,
    /// Probes in flight per worker; more wait in the worker's queue (counted as delayed).
    pub max_in_flight: usize,
    /// Jobs buffered per worker channel before `submit` blocks.
    pub queue: usize,
    /// Stateless (SYN, ICMP, UDP) workers wanted: each sends its probes and matches
    /// their answers; as many run as the answer source divides into (a power of two,
    /// at most `probe_common::EVENT_RINGS`).
    pub stateless_senders: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            ring_entries: 1024,
            max_in_flight: 4096,
            queue: 65536,
            stateless_senders: std::thread::available_parallelism()
                .map_or(1, std::num::NonZero::get),
        }
    }
}

/// A value alone in its cache lines (128 bytes: two lines, as the adjacent-line
/// prefetcher pairs them), so threads writing different counters do not take the
/// same line from each other.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Padded<T>(pub T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Engine-wide counters (shared by all workers). Each counter has its cache lines to
/// itself: many threads count probes started and finished.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Probes started.
    pub started: Padded<AtomicU64>,
    /// Probes finished (a result was sent).
    pub finished: Padded<AtomicU64>,
    /// Probes that had to wait for an in-flight slot.
    pub delayed_in_flight: Padded<AtomicU64>,
    /// Probes that could not get a socket (fd limit) and failed with `Local`.
    pub socket_errors: Padded<AtomicU64>,
    /// io_uring_enter calls.
    pub submits: Padded<AtomicU64>,
    /// Completions reaped.
    pub completions: Padded<AtomicU64>,
    /// TCP connect sockets made by the ring as direct descriptors (no syscall, no fd).
    pub ring_sockets: Padded<AtomicU64>,
    /// TCP connect probes that connected a direct socket an earlier probe had left
    /// unconnected (refused, or reset and unconnected after its verdict).
    pub reused_sockets: Padded<AtomicU64>,
}

/// A plain snapshot of [`EngineStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EngineCounters {
    /// Probes started.
    pub started: u64,
    /// Probes finished.
    pub finished: u64,
    /// Probes that waited for an in-flight slot.
    pub delayed_in_flight: u64,
    /// Socket creation failures.
    pub socket_errors: u64,
    /// io_uring_enter calls.
    pub submits: u64,
    /// Completions reaped.
    pub completions: u64,
    /// Sockets made by the ring as direct descriptors.
    pub ring_sockets: u64,
    /// Connect probes on a direct socket left reusable by an earlier probe.
    pub reused_sockets: u64,
}

impl EngineStats {
    /// Read all counters.
    #[must_use]
    pub fn snapshot(&self) -> EngineCounters {
        EngineCounters {
            started: self.started.load(Ordering::Relaxed),
            finished: self.finished.load(Ordering::Relaxed),
            delayed_in_flight: self.delayed_in_flight.load(Ordering::Relaxed),
            socket_errors: self.socket_errors.load(Ordering::Relaxed),
            ring_sockets: self.ring_sockets.load(Ordering::Relaxed),
            reused_sockets: self.reused_sockets.load(Ordering::Relaxed),
            submits: self.submits.load(Ordering::Relaxed),
            completions: self.completions.load(Ordering::Relaxed),
        }
    }
}

/// Wakes a worker blocked in io_uring when a job arrives.
struct Waker {
    /// The eventfd the worker polls through its ring.
    fd: EventFd,
    /// Set while the worker is (about to be) blocked in the kernel.
    sleeping: AtomicBool,
}

/// Handle to a worker thread.
struct WorkerHandle {
    /// Job queue (`None` once the engine is closed).
    tx: parking_lot::RwLock<Option<Sender<Job>>>,
    /// Its waker.
    waker: Arc<Waker>,
    /// The thread (taken when joined).
    thread: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

/// What the stateless worker needs: where answers come from and the probe
/// configuration the kernel programs were given.
pub struct StatelessParts {
    /// The kernel programs' answer rings, or the userspace fallback.
    pub source: Box<dyn AnswerSource + Send>,
    /// Ports, ICMP id and cookie key.
    pub probe: ProbeConfig,
}

/// The stateless workers' job queue (`None` once closed) and threads.
type StatelessHandle = (
    parking_lot::RwLock<Option<Sender<Job>>>,
    parking_lot::Mutex<Vec<JoinHandle<()>>>,
);

/// The running engine.
pub struct Engine {
    /// Workers; jobs are spread by sequence number.
    workers: Vec<WorkerHandle>,
    /// The stateless (SYN, ICMP) workers, when raw probing is set up.
    stateless: Option<StatelessHandle>,
    /// For results the engine produces itself (a probe kind it cannot run).
    results_tx: Sender<CheckResult>,
    /// Results of every probe, in completion order.
    results: Receiver<CheckResult>,
    /// Shared counters.
    stats: Arc<EngineStats>,
}

impl Engine {
    /// Start the worker threads.
    ///
    /// # Errors
    /// A ring or eventfd could not be created (e.g. io_uring disabled by sysctl).
    pub fn start(cfg: &EngineConfig, stateless: Option<StatelessParts>) -> io::Result<Self> {
        let (rtx, rrx) = crossbeam_channel::unbounded();
        let stats = Arc::new(EngineStats::default());
        let mut workers = Vec::with_capacity(cfg.threads.max(1));
        for i in 0..cfg.threads.max(1) {
            let (tx, rx) = crossbeam_channel::bounded(cfg.queue);
            let waker = Arc::new(Waker {
                fd: EventFd::new()?,
                sleeping: AtomicBool::new(false),
            });
            let (ready_tx, ready_rx) = crossbeam_channel::bounded::<io::Result<()>>(1);
            let (results, wk, st) = (rtx.clone(), Arc::clone(&waker), Arc::clone(&stats));
            let (entries, max_in_flight) = (cfg.ring_entries, cfg.max_in_flight.max(1));
            let thread = std::thread::Builder::new()
                .name(format!("sonde-uring-{i}"))
                .spawn(move || {
                    // The ring is created on its own thread: with IORING_SETUP_SINGLE_ISSUER
                    // only the creating task may submit, which saves the kernel locking.
                    let ring = match build_ring(entries) {
                        Ok(r) => {
                            let _ = ready_tx.send(Ok(()));
                            r
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    // Direct descriptors for TCP connect: socket(2), setsockopt(2) and
                    // close(2) move into the ring (Linux 5.19 for the socket, 6.7 for
                    // socket options; the first refusal turns it off). The table's
                    // entries count against RLIMIT_NOFILE: if it is too low, plain
                    // sockets it is.
                    let direct = max_in_flight <= u32::MAX as usize
                        && ring
                            .submitter()
                            .register_files_sparse(max_in_flight as u32)
                            .is_ok();
                    let mut w = Worker {
                        ring,
                        rx,
                        results,
                        slots: Vec::new(),
                        free: Vec::new(),
                        bufs: Vec::new(),
                        direct,
                        queued: VecDeque::new(),
                        in_flight: 0,
                        max_in_flight,
                        waker: wk,
                        wake_armed: false,
                        stats: st,
                        pool: HashMap::new(),
                        warm: Vec::new(),
                    };
                    w.run();
                })?;
            ready_rx
                .recv()
                .map_err(|_| io::Error::other("engine worker died during start"))??;
            workers.push(WorkerHandle {
                tx: parking_lot::RwLock::new(Some(tx)),
                waker,
                thread: parking_lot::Mutex::new(Some(thread)),
            });
        }
        let stateless = match stateless {
            Some(parts) => {
                let (tx, rx) = crossbeam_channel::bounded(cfg.queue);
                let h = super::stateless::spawn(
                    parts.source,
                    parts.probe,
                    rx,
                    rtx.clone(),
                    Arc::clone(&stats),
                    cfg.stateless_senders,
                )?;
                Some((
                    parking_lot::RwLock::new(Some(tx)),
                    parking_lot::Mutex::new(h),
                ))
            }
            None => None,
        };
        Ok(Self {
            workers,
            stateless,
            results_tx: rtx,
            results: rrx,
            stats,
        })
    }

    /// Whether `probe` goes to the stateless workers (no socket per probe): TCP SYN and
    /// ICMP always (without that path they fail with a clear reason), and a UDP check
    /// that takes any answer when the path is set up; the rest run on sockets.
    #[must_use]
    pub fn runs_stateless(&self, probe: &ProbeSpec) -> bool {
        match probe {
            ProbeSpec::TcpSyn | ProbeSpec::Icmp => true,
            ProbeSpec::Udp(u) => self.stateless.is_some() && super::stateless::is_stateless_udp(u),
            _ => false,
        }
    }

    /// Queue a probe (blocks if the worker's queue is full: back-pressure).
    ///
    /// # Errors
    /// The worker has stopped.
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        if self.runs_stateless(&job.spec.probe) {
            let Some((stx, _)) = &self.stateless else {
                let detail = "stateless probes (tcp_syn, icmp) need raw sockets and an answer path; not set up".to_owned();
                let r = CheckResult {
                    check: job.spec.id.clone(),
                    seq: job.seq,
                    reason: Reason::Local { detail },
                    rtt: None,
                    clock: super::Clock::Userspace,
                    phases: super::result::Phases::default(),
                    http_status: None,
                    cert_days_left: None,
                };
                let _ = self.results_tx.send(r);
                return Ok(());
            };
            let guard = stx.read();
            let Some(tx) = guard.as_ref() else {
                return Err(job);
            };
            return tx.send(job).map_err(|e| e.0);
        }
        let n = self.workers.len() as u64;
        // Keep-alive checks always go to the same worker, which parks their connection.
        let key = match &job.spec.probe {
            ProbeSpec::Http(h) if h.keepalive => {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                std::hash::Hash::hash(&job.spec.id, &mut hasher);
                std::hash::Hasher::finish(&hasher)
            }
            _ => job.seq,
        };
        let w = &self.workers[usize::try_from(key % n).unwrap_or(0)];
        {
            let guard = w.tx.read();
            let Some(tx) = guard.as_ref() else {
                return Err(job);
            };
            tx.send(job).map_err(|e| e.0)?;
        }
        if w.waker.sleeping.swap(false, Ordering::AcqRel) {
            w.waker.fd.wake();
        }
        Ok(())
    }

    /// The results channel.
    #[must_use]
    pub fn results(&self) -> &Receiver<CheckResult> {
        &self.results
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> EngineCounters {
        self.stats.snapshot()
    }

    /// Stop accepting jobs, let in-flight probes finish or time out, join the threads.
    pub fn shutdown(self) {
        self.close();
    }

    /// Stop accepting jobs, let in-flight probes finish or time out, join the threads;
    /// the results channel closes once every worker is done. Callable through a shared
    /// reference (the daemon's threads share the engine); later `submit`s are refused.
    pub fn close(&self) {
        if let Some((stx, hs)) = &self.stateless {
            stx.write().take();
            for h in std::mem::take(&mut *hs.lock()) {
                if h.join().is_err() {
                    warn!("stateless worker panicked");
                }
            }
        }
        for w in &self.workers {
            w.tx.write().take();
            w.waker.fd.wake();
            if let Some(t) = w.thread.lock().take() {
                if t.join().is_err() {
                    warn!("engine worker panicked");
                }
            }
        }
    }
}

/// The worker's ring, created on its own thread: with IORING_SETUP_SINGLE_ISSUER only
/// the creating task may submit, which saves the kernel locking. With COOP_TASKRUN a
/// completion's task work waits until the worker next enters the kernel instead of
/// interrupting it (an IPI when it runs on another CPU), and TASKRUN_FLAG tells it when
/// such work waits, so it enters. In the keep-alive benchmark that made 97-100k checks/s
/// of 76-91k (every answer woke the worker). Older kernels (before 5.19, 6.0) get the
/// flags they have.
fn build_ring(entries: u32) -> io::Result<IoUring> {
    IoUring::builder()
        .setup_single_issuer()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(entries)
        .or_else(|_| IoUring::builder().setup_single_issuer().build(entries))
        .or_else(|_| IoUring::new(entries))
}

/// User data of the eventfd poll.
const WAKE: u64 = u64::MAX;

/// One engine thread.
struct Worker {
    /// Its ring.
    ring: IoUring,
    /// Jobs in.
    rx: Receiver<Job>,
    /// Results out.
    results: Sender<CheckResult>,
    /// Probe state; boxed so addresses handed to the kernel stay put.
    slots: Vec<Option<Box<Slot>>>,
    /// Free slot indexes.
    free: Vec<u32>,
    /// Receive buffers for reuse (see [`BUF_POOL`]).
    bufs: Vec<Vec<u8>>,
    /// TCP connect probes run on direct descriptors (a fixed-file table of
    /// `max_in_flight` entries is registered; see `Slot::entries`).
    direct: bool,
    /// Jobs waiting for an in-flight slot.
    queued: VecDeque<Job>,
    /// Slots in use.
    in_flight: usize,
    /// Cap on `in_flight`.
    max_in_flight: usize,
    /// Shared with the engine handle.
    waker: Arc<Waker>,
    /// Whether the eventfd poll is armed.
    wake_armed: bool,
    /// Counters.
    stats: Arc<EngineStats>,
    /// Idle keep-alive connections by check (HTTP checks with `keepalive`).
    pool: HashMap<CheckId, slot::Idle>,
    /// Per fixed-file slot: the address family of the unconnected, reusable socket it
    /// holds (0: none), for the slot's next TCP connect probe.
    warm: Vec<libc::c_int>,
}

/// Most idle keep-alive connections a worker parks (each holds a socket).
const POOL_MAX: usize = 4096;
/// Receive buffers kept for reuse per worker (each `slot::RECV_CHUNK` bytes, so at most
/// 1 MiB): a new 16 KiB buffer per probe was allocated and zeroed every time. A probe
/// finishing hands its buffer to the next one starting, so a few suffice.
const BUF_POOL: usize = 64;

/// Idle connections older than this are closed instead of reused.
const POOL_IDLE: Duration = Duration::from_secs(30);

impl Worker {
    fn run(&mut self) {
        let mut disconnected = false;
        loop {
            // Take jobs up to the in-flight cap.
            while self.in_flight < self.max_in_flight {
                let job = if let Some(j) = self.queued.pop_front() {
                    j
                } else {
                    match self.rx.try_recv() {
                        Ok(j) => j,
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            disconnected = true;
                            break;
                        }
                    }
                };
                self.start(job);
            }
            if self.in_flight >= self.max_in_flight {
                // Drain the channel into the local queue so senders are not blocked
                // and the delay is counted.
                while let Ok(j) = self.rx.try_recv() {
                    self.stats.delayed_in_flight.fetch_add(1, Ordering::Relaxed);
                    self.queued.push_back(j);
                }
            }
            if self.in_flight == 0 && self.queued.is_empty() {
                if disconnected {
                    return;
                }
                match self.rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(j) => self.start(j),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => disconnected = true,
                }
                continue;
            }
            self.arm_wake();
            self.waker.sleeping.store(true, Ordering::Release);
            let want = if self.rx.is_empty() || self.in_flight >= self.max_in_flight {
                1
            } else {
                0
            };
            let r = self.ring.submit_and_wait(want);
            self.waker.sleeping.store(false, Ordering::Release);
            self.stats.submits.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = r {
                if e.raw_os_error() != Some(libc::EINTR) && e.raw_os_error() != Some(libc::EBUSY) {
                    warn!(error = %e, "io_uring_enter failed");
                }
            }
            self.reap();
        }
    }

    fn arm_wake(&mut self) {
        if self.wake_armed {
            return;
        }
        let e = opcode::PollAdd::new(types::Fd(self.waker.fd.raw()), libc::POLLIN as u32)
            .build()
            .user_data(WAKE);
        self.push(&e);
        self.wake_armed = true;
    }

    /// Push one SQE, submitting first if the queue is full.
    fn push(&mut self, e: &squeue::Entry) {
        loop {
            // SAFETY: every pointer in our SQEs points into a boxed Slot (or the
            // worker's waker) that outlives the operation: a slot is freed only after
            // all its completions, including linked timeouts, were reaped.
            if unsafe { self.ring.submission().push(e) }.is_ok() {
                return;
            }
            if let Err(err) = self.ring.submit() {
                warn!(error = %err, "io_uring submit failed while the queue was full");
            }
            self.stats.submits.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn alloc(&mut self, slot: Box<Slot>) -> u32 {
        self.in_flight += 1;
        if let Some(i) = self.free.pop() {
            self.slots[i as usize] = Some(slot);
            i
        } else {
            self.slots.push(Some(slot));
            u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
        }
    }

    fn start(&mut self, job: Job) {
        self.stats.started.fetch_add(1, Ordering::Relaxed);
        self.start_with(job, true);
    }

    fn start_with(&mut self, job: Job, may_reuse: bool) {
        let pooled = if may_reuse {
            self.pool
                .remove(&job.spec.id)
                .filter(|i| sys::monotonic_now().saturating_sub(i.since) < POOL_IDLE)
        } else {
            None
        };
        let slot = match Slot::new(job, pooled, self.direct) {
            Ok(mut s) => {
                if let Some(b) = self.bufs.pop() {
                    s.set_inbuf(b);
                }
                s
            }
            Err(result) => {
                self.stats.socket_errors.fetch_add(1, Ordering::Relaxed);
                self.finish_result(*result);
                return;
            }
        };
        let idx = self.alloc(slot);
        let mut ops = Vec::with_capacity(2);
        let slot = self.slots[idx as usize].as_mut().expect("just allocated");
        if slot.is_direct() {
            let family = slot.family();
            if let Some(w) = self.warm.get_mut(idx as usize).filter(|w| **w == family) {
                // The socket is this probe's now; the slot's record is set again
                // when the probe ends.
                *w = 0;
                slot.use_warm_socket();
                self.stats.reused_sockets.fetch_add(1, Ordering::Relaxed);
            }
        }
        slot.first_ops(idx, &mut ops);
        self.push_ops(idx, ops);
    }

    fn push_ops(&mut self, idx: u32, ops: Vec<Op>) {
        for op in ops {
            let (entry, count) = {
                let slot = self.slots[idx as usize].as_mut().expect("live slot");
                slot.entries(idx, op)
            };
            // A linked chain must not be split between two submissions.
            let room = {
                let sq = self.ring.submission();
                sq.capacity() - sq.len()
            };
            if room < count {
                if let Err(err) = self.ring.submit() {
                    warn!(error = %err, "io_uring submit failed while the queue was full");
                }
                self.stats.submits.fetch_add(1, Ordering::Relaxed);
            }
            for e in entry.iter().take(count) {
                self.push(e);
            }
            if let Some(s) = self.slots[idx as usize].as_mut() {
                s.outstanding += u32::try_from(count).unwrap_or(0);
            }
        }
    }

    fn reap(&mut self) {
        let mut batch: Vec<(u64, i32)> = Vec::with_capacity(64);
        loop {
            batch.clear();
            batch.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
            if batch.is_empty() {
                return;
            }
            self.stats
                .completions
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            for &(ud, res) in &batch {
                if ud == WAKE {
                    self.waker.fd.drain();
                    self.wake_armed = false;
                    continue;
                }
                let (idx, tag) = slot::decode(ud);
                let Some(slot) = self.slots.get_mut(idx as usize).and_then(Option::as_mut) else {
                    debug!(idx, "completion for a freed slot");
                    continue;
                };
                slot.outstanding = slot.outstanding.saturating_sub(1);
                if tag == slot::TAG_SOCKET && res >= 0 {
                    self.stats.ring_sockets.fetch_add(1, Ordering::Relaxed);
                }
                let mut ops = Vec::new();
                slot.complete(tag, res, &mut ops);
                if !ops.is_empty() {
                    self.push_ops(idx, ops);
                }
                self.maybe_free(idx);
            }
        }
    }

    fn maybe_free(&mut self, idx: u32) {
        let done = self.slots[idx as usize]
            .as_ref()
            .is_some_and(|s| s.outstanding == 0 && s.is_done());
        if !done {
            return;
        }
        // A direct socket is closed, or reset and kept, through the ring; the slot (its
        // fixed-file index) is freed when that completes.
        let release = self.slots[idx as usize]
            .as_mut()
            .and_then(|s| s.take_release(idx));
        if let Some(release) = release {
            self.push(&release);
            if let Some(s) = self.slots[idx as usize].as_mut() {
                s.outstanding += 1;
            }
            return;
        }
        if let Some(mut slot) = self.slots[idx as usize].take() {
            if slot.leaves_reusable_socket() {
                let i = idx as usize;
                if self.warm.len() <= i {
                    self.warm.resize(i + 1, 0);
                }
                self.warm[i] = slot.family();
            }
            if slot.direct_unsupported() && self.direct {
                info!("sockets through io_uring unsupported: TCP connect probes use plain sockets");
                self.direct = false;
            }
            self.free.push(idx);
            self.in_flight -= 1;
            if slot.wants_retry() {
                // The parked connection had been closed by the server: run the probe
                // again on a new connection; the target is not judged by that.
                let job = slot.job().clone();
                self.start_with(job, false);
                return;
            }
            if let Some(idle) = slot.take_idle() {
                if self.pool.len() >= POOL_MAX {
                    let now = sys::monotonic_now();
                    self.pool
                        .retain(|_, i| now.saturating_sub(i.since) < POOL_IDLE);
                }
                if self.pool.len() < POOL_MAX {
                    self.pool.insert(slot.job().spec.id.clone(), idle);
                }
            }
            let buf = slot.take_inbuf();
            if buf.len() == slot::RECV_CHUNK && self.bufs.len() < BUF_POOL {
                self.bufs.push(buf);
            }
            let r = slot.take_result();
            // Close the probe's socket before its result is announced: whoever gets
            // the result may count on the probe's resources being released.
            drop(slot);
            self.finish_result(r);
        }
    }

    fn finish_result(&self, r: CheckResult) {
        self.stats.finished.fetch_add(1, Ordering::Relaxed);
        // A closed results channel means nobody listens any more: drop quietly.
        let _ = self.results.send(r);
    }
}
