//! The state of one stateful probe in a worker, and how each completion moves it on.
//!
//! A probe is a short chain of operations (connect, send, receive), each submitted with
//! a linked absolute timeout at the probe's deadline. The slot counts its outstanding
//! completions and is freed only when all have been reaped, so every buffer, address
//! and timespec handed to the kernel lives in the (boxed) slot for as long as the
//! kernel may touch it.

use std::{os::fd::OwnedFd, time::Duration};

use io_uring::{opcode, squeue, types};

use super::{
    sys::{self, SockAddr},
    Job,
};
use crate::engine::{
    result::{CheckResult, Phases, Reason},
    spec::ProbeSpec,
    Clock,
};

const TAG_CONNECT: u8 = 1;
const TAG_SEND: u8 = 2;
const TAG_RECV: u8 = 3;
const TAG_TIMEOUT: u8 = 4;

/// Bytes read per receive.
const RECV_CHUNK: usize = 16 * 1024;

/// The next operation a probe needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    Connect,
    Send,
    Recv,
}

fn encode(idx: u32, tag: u8) -> u64 {
    (u64::from(idx) << 8) | u64::from(tag)
}

/// Split user data into slot index and operation tag.
pub(super) fn decode(ud: u64) -> (u32, u8) {
    (
        u32::try_from(ud >> 8).unwrap_or(u32::MAX),
        (ud & 0xff) as u8,
    )
}

/// Kind-specific state.
enum Kind {
    /// TCP connect: healthy once the handshake completes.
    Connect,
    /// UDP: healthy when the answer starts with `expect`.
    Udp {
        /// Expected answer prefix.
        expect: Vec<u8>,
    },
}

/// One probe in flight.
pub(super) struct Slot {
    /// What to probe.
    job: Job,
    /// The socket; closed as soon as the probe is decided.
    fd: Option<OwnedFd>,
    /// Target address, referenced by the connect SQE.
    addr: SockAddr,
    /// Absolute deadline, referenced by every linked timeout SQE.
    deadline: types::Timespec,
    /// Probe start on CLOCK_MONOTONIC.
    started: Duration,
    /// Phase timings.
    phases: Phases,
    /// Completions still to be reaped (ops and their linked timeouts).
    pub(super) outstanding: u32,
    /// Bytes to send and how many went out.
    out: Vec<u8>,
    /// Bytes of `out` already sent.
    out_off: usize,
    /// Receive buffer.
    inbuf: Vec<u8>,
    /// Per-kind state.
    kind: Kind,
    /// The verdict, once decided.
    verdict: Option<Reason>,
}

fn local(detail: String) -> Reason {
    Reason::Local { detail }
}

impl Slot {
    /// Prepare a probe: its socket, address and deadline. A probe that cannot start
    /// (no socket: fd limit) yields its failed result instead.
    pub(super) fn new(job: Job) -> Result<Box<Slot>, Box<CheckResult>> {
        let started = sys::monotonic_now();
        let spec = &job.spec;
        let target = std::net::SocketAddr::new(spec.target.addr, spec.target.port);
        let (sock_type, kind, out) = match &spec.probe {
            ProbeSpec::TcpConnect => (libc::SOCK_STREAM, Kind::Connect, Vec::new()),
            ProbeSpec::Udp(u) => (
                libc::SOCK_DGRAM,
                Kind::Udp {
                    expect: u.expect_prefix.clone(),
                },
                u.payload.clone(),
            ),
            other => {
                let r = local(format!(
                    "the io_uring engine does not run {} probes",
                    other.kind()
                ));
                return Err(Box::new(result_of(&job, started, r, Phases::default())));
            }
        };
        let fd = match sys::socket(&target, sock_type) {
            Ok(fd) => fd,
            Err(e) => {
                let r = local(format!("socket: {e}"));
                return Err(Box::new(result_of(&job, started, r, Phases::default())));
            }
        };
        if sock_type == libc::SOCK_STREAM {
            sys::linger_zero(&fd);
        }
        let deadline = sys::abs_timespec(started + spec.timeout);
        Ok(Box::new(Slot {
            addr: SockAddr::new(target),
            fd: Some(fd),
            deadline,
            started,
            phases: Phases::default(),
            outstanding: 0,
            out,
            out_off: 0,
            inbuf: Vec::new(),
            kind,
            verdict: None,
            job,
        }))
    }

    /// The first operations of the probe.
    pub(super) fn first_ops(&mut self, _idx: u32, ops: &mut Vec<Op>) {
        match self.kind {
            Kind::Connect => ops.push(Op::Connect),
            Kind::Udp { .. } => {
                // UDP connect completes at once; it makes ICMP errors arrive as
                // ECONNREFUSED on this socket.
                let r = match &self.fd {
                    Some(fd) => sys::connect_now(fd, &self.addr),
                    None => Ok(()),
                };
                match r {
                    Ok(()) => ops.push(Op::Send),
                    Err(e) => self.decide(errno_reason(e.raw_os_error().unwrap_or(0), "connect")),
                }
            }
        }
    }

    /// The SQEs for `op`: the operation linked to the deadline timeout.
    pub(super) fn entries(&mut self, idx: u32, op: Op) -> ([squeue::Entry; 2], usize) {
        let Some(fd) = self.fd.as_ref() else {
            let nop = opcode::Nop::new().build();
            return ([nop.clone(), nop], 0);
        };
        let fd = types::Fd(std::os::fd::AsRawFd::as_raw_fd(fd));
        let e = match op {
            Op::Connect => opcode::Connect::new(fd, self.addr.as_ptr(), self.addr.len)
                .build()
                .user_data(encode(idx, TAG_CONNECT)),
            Op::Send => {
                let rest = &self.out[self.out_off..];
                opcode::Send::new(
                    fd,
                    rest.as_ptr(),
                    u32::try_from(rest.len()).unwrap_or(u32::MAX),
                )
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(encode(idx, TAG_SEND))
            }
            Op::Recv => {
                if self.inbuf.len() < RECV_CHUNK {
                    self.inbuf.resize(RECV_CHUNK, 0);
                }
                opcode::Recv::new(fd, self.inbuf.as_mut_ptr(), RECV_CHUNK as u32)
                    .build()
                    .user_data(encode(idx, TAG_RECV))
            }
        };
        let t = opcode::LinkTimeout::new(&raw const self.deadline)
            .flags(types::TimeoutFlags::ABS)
            .build()
            .user_data(encode(idx, TAG_TIMEOUT));
        ([e.flags(squeue::Flags::IO_LINK), t], 2)
    }

    /// Whether the verdict is in.
    pub(super) fn is_done(&self) -> bool {
        self.verdict.is_some()
    }

    fn elapsed(&self) -> Duration {
        sys::monotonic_now().saturating_sub(self.started)
    }

    fn decide(&mut self, r: Reason) {
        if self.verdict.is_none() {
            self.phases.total = Some(self.elapsed());
            self.verdict = Some(r);
            // Close now: nothing of ours uses the socket any more, and with
            // SO_LINGER 0 a TCP close resets at once (no TIME_WAIT on either side).
            self.fd = None;
        }
    }

    /// React to one completion; push follow-up operations into `ops`.
    pub(super) fn complete(&mut self, tag: u8, res: i32, ops: &mut Vec<Op>) {
        if tag == TAG_TIMEOUT || self.verdict.is_some() {
            return;
        }
        if res < 0 {
            let phase = match tag {
                TAG_CONNECT => "connect",
                TAG_SEND => "send",
                _ => "recv",
            };
            self.decide(errno_reason(-res, phase));
            return;
        }
        match tag {
            TAG_CONNECT => {
                self.phases.connect = Some(self.elapsed());
                match self.kind {
                    Kind::Connect => self.decide(Reason::Ok),
                    Kind::Udp { .. } => ops.push(Op::Send),
                }
            }
            TAG_SEND => {
                self.out_off += usize::try_from(res).unwrap_or(0);
                ops.push(if self.out_off < self.out.len() {
                    Op::Send
                } else {
                    Op::Recv
                });
            }
            TAG_RECV => {
                let n = usize::try_from(res).unwrap_or(0);
                if self.phases.first_byte.is_none() {
                    self.phases.first_byte = Some(self.elapsed());
                }
                match &self.kind {
                    Kind::Udp { expect } => {
                        let data = &self.inbuf[..n];
                        let r = if data.starts_with(expect) {
                            Reason::Ok
                        } else {
                            Reason::PayloadMismatch
                        };
                        self.decide(r);
                    }
                    Kind::Connect => self.decide(Reason::Ok),
                }
            }
            _ => {}
        }
    }

    /// The result (call once, when done and nothing is outstanding).
    pub(super) fn take_result(&mut self) -> CheckResult {
        let r = self
            .verdict
            .take()
            .unwrap_or_else(|| local("probe ended without a verdict".into()));
        result_of(&self.job, self.started, r, self.phases)
    }
}

fn result_of(job: &Job, started: Duration, reason: Reason, mut phases: Phases) -> CheckResult {
    if phases.total.is_none() {
        phases.total = Some(sys::monotonic_now().saturating_sub(started));
    }
    let rtt = if reason == Reason::Timeout {
        None
    } else {
        phases.total
    };
    CheckResult {
        check: job.spec.id.clone(),
        seq: job.seq,
        reason,
        rtt,
        clock: Clock::Userspace,
        phases,
        http_status: None,
        cert_days_left: None,
    }
}

/// What an errno from a probe operation means for the target.
fn errno_reason(errno: i32, phase: &'static str) -> Reason {
    match errno {
        // Our linked timeout cancelled the operation: the deadline passed.
        libc::ECANCELED | libc::ETIME | libc::ETIMEDOUT => Reason::Timeout,
        libc::ECONNREFUSED => Reason::Refused,
        libc::ECONNRESET | libc::EPIPE | libc::ECONNABORTED => Reason::ConnectionClosed { phase },
        libc::EHOSTUNREACH => Reason::Unreachable {
            icmp_type: 3,
            icmp_code: 1,
        },
        libc::ENETUNREACH => Reason::Unreachable {
            icmp_type: 3,
            icmp_code: 0,
        },
        e => Reason::Local {
            detail: format!("{phase}: {}", std::io::Error::from_raw_os_error(e)),
        },
    }
}
