//! The state of one stateful probe in a worker, and how each completion moves it on.
//!
//! A probe is a short chain of operations (connect, send, receive), each submitted with
//! a linked absolute timeout at the probe's deadline. The slot counts its outstanding
//! completions and is freed only when all have been reaped, so every buffer, address
//! and timespec handed to the kernel lives in the (boxed) slot for as long as the
//! kernel may touch it.

use std::{os::fd::OwnedFd, sync::Arc, time::Duration};

use io_uring::{opcode, squeue, types};

use super::{
    sys::{self, SockAddr},
    Job,
};
use crate::engine::{
    http::{
        encode_proxy_header, error_reason as http_error_reason, judge, Limits, Progress,
        ResponseParser,
    },
    result::{CheckResult, Phases, Reason},
    spec::{HttpSpec, ProbeSpec},
    tls, Clock,
};
use rustls::pki_types::ServerName;
use std::net::SocketAddr;

fn judge_http(h: &mut HttpState, job: &Job) -> Reason {
    let ProbeSpec::Http(spec) = &job.spec.probe else {
        return Reason::Local {
            detail: "not an HTTP check".into(),
        };
    };
    let Some(resp) = h.parser.response() else {
        return Reason::Protocol {
            detail: "no complete response".into(),
        };
    };
    h.status = Some(resp.status);
    match &job.prepared.http {
        Some(c) => judge(&spec.expect, c, resp),
        None => Reason::Local {
            detail: "check was not prepared".into(),
        },
    }
}

const TAG_CONNECT: u8 = 1;
const TAG_SEND: u8 = 2;
const TAG_RECV: u8 = 3;
const TAG_TIMEOUT: u8 = 4;
pub(super) const TAG_SOCKET: u8 = 5;
const TAG_SOCKOPT: u8 = 6;
const TAG_CLOSE: u8 = 7;
/// `connect(AF_UNSPEC)`: resets a connected direct socket and leaves it reusable.
const TAG_DISCONNECT: u8 = 8;

/// Bytes read per receive.
pub(super) const RECV_CHUNK: usize = 16 * 1024;

/// The next operation a probe needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    Connect,
    Send,
    Recv,
    /// Send everything queued and then receive, as one linked chain: the send does not
    /// wait (a full socket buffer fails it with EAGAIN and the pair runs again one
    /// operation at a time), the receive carries the deadline. One pass through the
    /// worker and three completions instead of two passes and four.
    SendRecv,
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
    /// DNS over UDP: a query with this id.
    Dns {
        /// Query id; answers with another id are ignored.
        id: u16,
    },
    /// HTTP or HTTPS.
    Http(Box<HttpState>),
}

/// State of an HTTP(S) exchange.
struct HttpState {
    /// Incremental response parser (bounded memory).
    parser: ResponseParser,
    /// The encoded request (plaintext; TLS encrypts it after the handshake), shared
    /// by every probe of the check.
    request: Arc<[u8]>,
    /// TLS session, for HTTPS.
    tls: Option<rustls::ClientConnection>,
    /// Whether the request was handed to TLS yet.
    request_queued: bool,
    /// Decrypted bytes not yet parsed.
    plain: Vec<u8>,
    /// HTTP status, once the head is parsed.
    status: Option<u16>,
    /// Days until the certificate expires.
    cert_days: Option<i64>,
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
    /// The connection came from the keep-alive pool (no connect, no handshake).
    reused: bool,
    /// The exchange ended cleanly on a reusable connection: keep it for the next probe.
    keep: bool,
    /// A reused connection was found closed before any answer: run the probe again
    /// on a fresh connection (not a verdict on the target).
    retry: bool,
    /// TCP connect on an io_uring direct descriptor (fixed-file slot = the probe's
    /// slot index): socket, SO_LINGER, connect and close all go through the ring, no
    /// syscall and no fd-table entry per probe.
    direct: bool,
    /// The direct socket exists and is not closed yet.
    direct_open: bool,
    /// The kernel refused sockets or socket options through the ring (before Linux
    /// 5.19 or 6.7): run the probe again with a plain socket, and tell the worker.
    direct_unsupported: bool,
    /// The fixed-file slot already holds an unconnected socket of the target's family
    /// (SO_LINGER set), left by an earlier probe: connect it, make none.
    warm: bool,
    /// The direct socket is unconnected again, with no error pending: the worker keeps
    /// it for the slot's next TCP connect probe instead of closing it.
    reusable: bool,
    /// A disconnect was asked for (it is not asked twice).
    disconnecting: bool,
    /// `AF_UNSPEC`, the address of a disconnect.
    unspec: libc::sockaddr,
    /// SO_LINGER {on, 0}, referenced by the direct path's setsockopt SQE.
    linger: libc::linger,
    /// A receive is in the kernel (possibly linked behind a send).
    recv_pending: bool,
    /// The send of a linked send-and-receive is in the kernel.
    linked_send: bool,
    /// The linked send found the socket buffer full: once its receive reports the
    /// cancellation, send again the plain way (with its own deadline).
    resend: bool,
}

/// An idle keep-alive connection of one HTTP(S) check, parked between probes.
pub(super) struct Idle {
    /// The connected socket.
    pub(super) fd: OwnedFd,
    /// Its TLS session, for HTTPS.
    pub(super) tls: Option<rustls::ClientConnection>,
    /// When it was parked (CLOCK_MONOTONIC), for the idle timeout.
    pub(super) since: Duration,
}

fn http_state(job: &Job, spec: &HttpSpec) -> Result<(HttpState, Vec<u8>), Reason> {
    let host = &job.spec.target.host;
    // Encoded once per check (`Prepared`); a job built without it encodes its own.
    let request = match &job.prepared.request {
        Some(r) => r.clone(),
        None => super::prepared::encode(&job.spec, spec),
    }
    .map_err(|e| local(format!("request: {e}")))?;
    // The PROXY header needs our own address, known only after connect (see
    // `http_connected`), so nothing is queued before the connection is up.
    let out = Vec::new();
    let tls =
        match (&spec.tls, &job.prepared.tls) {
            (Some(t), Some(cfg)) => {
                let name = t.sni.clone().unwrap_or_else(|| host.to_string());
                let server = ServerName::try_from(name.clone())
                    .or_else(|_| ServerName::try_from(job.spec.target.addr.to_string()))
                    .map_err(|_| local(format!("tls: invalid server name {name:?}")))?;
                let conn = rustls::ClientConnection::new(std::sync::Arc::clone(cfg), server)
                    .map_err(|e| Reason::Tls {
                        detail: e.to_string(),
                    })?;
                Some(conn)
            }
            (Some(_), None) => return Err(local("tls: check was not prepared".into())),
            (None, _) => None,
        };
    let parser = ResponseParser::for_method(Limits::for_spec(spec), &spec.method);
    Ok((
        HttpState {
            parser,
            request,
            tls,
            request_queued: false,
            plain: Vec::new(),
            status: None,
            cert_days: None,
        },
        out,
    ))
}

fn local(detail: String) -> Reason {
    Reason::Local { detail }
}

impl Slot {
    /// Prepare a probe: its socket, address and deadline. A probe that cannot start
    /// (no socket: fd limit) yields its failed result instead.
    pub(super) fn new(
        job: Job,
        pooled: Option<Idle>,
        direct: bool,
    ) -> Result<Box<Slot>, Box<CheckResult>> {
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
            ProbeSpec::Dns(d) => {
                let id: u16 = rand::random();
                let mut q = Vec::with_capacity(64);
                if let Err(e) = crate::engine::dns::encode_query(id, &d.name, d.qtype, &mut q) {
                    let r = crate::engine::dns::error_reason(&e);
                    return Err(Box::new(result_of(&job, started, r, Phases::default())));
                }
                (libc::SOCK_DGRAM, Kind::Dns { id }, q)
            }
            ProbeSpec::Http(h) => match http_state(&job, h) {
                Ok((st, out)) => (libc::SOCK_STREAM, Kind::Http(Box::new(st)), out),
                Err(r) => return Err(Box::new(result_of(&job, started, r, Phases::default()))),
            },
            other => {
                let r = local(format!(
                    "the io_uring engine does not run {} probes",
                    other.kind()
                ));
                return Err(Box::new(result_of(&job, started, r, Phases::default())));
            }
        };
        let mut kind = kind;
        let reused = pooled.is_some();
        let direct = direct && matches!(kind, Kind::Connect) && !reused;
        let fd = if direct {
            None
        } else if let Some(idle) = pooled {
            if let Kind::Http(h) = &mut kind {
                h.tls = idle.tls;
            }
            Some(idle.fd)
        } else {
            match sys::socket(&target, sock_type) {
                Ok(fd) => Some(fd),
                Err(e) => {
                    let r = local(format!("socket: {e}"));
                    return Err(Box::new(result_of(&job, started, r, Phases::default())));
                }
            }
        };
        if let Some(fd) = fd
            .as_ref()
            .filter(|_| sock_type == libc::SOCK_STREAM && !reused)
        {
            sys::linger_zero(fd);
        }
        let deadline = sys::abs_timespec(started + spec.timeout);
        Ok(Box::new(Slot {
            addr: SockAddr::new(target),
            fd,
            deadline,
            started,
            phases: Phases::default(),
            outstanding: 0,
            out,
            out_off: 0,
            inbuf: Vec::new(),
            kind,
            verdict: None,
            reused,
            keep: false,
            retry: false,
            direct,
            direct_open: false,
            direct_unsupported: false,
            warm: false,
            reusable: false,
            disconnecting: false,
            unspec: libc::sockaddr {
                sa_family: libc::AF_UNSPEC as libc::sa_family_t,
                sa_data: [0; 14],
            },
            linger: libc::linger {
                l_onoff: 1,
                l_linger: 0,
            },
            recv_pending: false,
            linked_send: false,
            resend: false,
            job,
        }))
    }

    /// The first operations of the probe.
    pub(super) fn first_ops(&mut self, _idx: u32, ops: &mut Vec<Op>) {
        match self.kind {
            Kind::Http(_) if self.reused => self.http_reuse(ops),
            Kind::Connect | Kind::Http(_) => ops.push(Op::Connect),
            Kind::Udp { .. } | Kind::Dns { .. } => {
                // UDP connect completes at once; it makes ICMP errors arrive as
                // ECONNREFUSED on this socket.
                let r = match &self.fd {
                    Some(fd) => sys::connect_now(fd, &self.addr),
                    None => Ok(()),
                };
                match r {
                    Ok(()) => ops.push(Op::SendRecv),
                    Err(e) => self.decide(errno_reason(e.raw_os_error().unwrap_or(0), "connect")),
                }
            }
        }
    }

    /// The SQEs for `op`: the operation linked to the deadline timeout (a direct
    /// connect: socket, setsockopt and connect linked, then the timeout; a send and
    /// receive: both linked, then the timeout). The entries of one call must be
    /// submitted together.
    pub(super) fn entries(&mut self, idx: u32, op: Op) -> ([squeue::Entry; 4], usize) {
        let nop = opcode::Nop::new().build();
        let timeout = opcode::LinkTimeout::new(&raw const self.deadline)
            .flags(types::TimeoutFlags::ABS)
            .build()
            .user_data(encode(idx, TAG_TIMEOUT));
        if self.direct && self.warm && op == Op::Connect {
            let connect =
                opcode::Connect::new(types::Fixed(idx), self.addr.as_ptr(), self.addr.len)
                    .build()
                    .user_data(encode(idx, TAG_CONNECT))
                    .flags(squeue::Flags::IO_LINK);
            return ([connect, timeout, nop.clone(), nop], 2);
        }
        if self.direct && op == Op::Connect {
            let socket =
                opcode::Socket::new(self.family(), libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0)
                    .file_index(types::DestinationSlot::try_from_slot_target(idx).ok())
                    .build()
                    .user_data(encode(idx, TAG_SOCKET))
                    .flags(squeue::Flags::IO_LINK);
            let linger = opcode::SetSockOpt::new(
                types::Fixed(idx),
                libc::SOL_SOCKET as u32,
                libc::SO_LINGER as u32,
                (&raw const self.linger).cast(),
                std::mem::size_of::<libc::linger>() as u32,
            )
            .build()
            .user_data(encode(idx, TAG_SOCKOPT))
            .flags(squeue::Flags::IO_LINK);
            let connect =
                opcode::Connect::new(types::Fixed(idx), self.addr.as_ptr(), self.addr.len)
                    .build()
                    .user_data(encode(idx, TAG_CONNECT))
                    .flags(squeue::Flags::IO_LINK);
            return ([socket, linger, connect, timeout], 4);
        }
        let Some(fd) = self.fd.as_ref() else {
            return ([nop.clone(), nop.clone(), nop.clone(), nop], 0);
        };
        let fd = types::Fd(std::os::fd::AsRawFd::as_raw_fd(fd));
        let link = squeue::Flags::IO_LINK;
        match op {
            Op::Connect => {
                let e = opcode::Connect::new(fd, self.addr.as_ptr(), self.addr.len)
                    .build()
                    .user_data(encode(idx, TAG_CONNECT));
                ([e.flags(link), timeout, nop.clone(), nop], 2)
            }
            Op::Send => (
                [self.send(fd, idx, 0).flags(link), timeout, nop.clone(), nop],
                2,
            ),
            Op::Recv => (
                [self.recv(fd, idx).flags(link), timeout, nop.clone(), nop],
                2,
            ),
            Op::SendRecv => {
                let send = self.send(fd, idx, libc::MSG_DONTWAIT).flags(link);
                self.linked_send = true;
                ([send, self.recv(fd, idx).flags(link), timeout, nop], 3)
            }
        }
    }

    /// The send of what is left of `out` (`MSG_NOSIGNAL` and `flags`).
    fn send(&self, fd: types::Fd, idx: u32, flags: i32) -> squeue::Entry {
        let rest = &self.out[self.out_off..];
        opcode::Send::new(
            fd,
            rest.as_ptr(),
            u32::try_from(rest.len()).unwrap_or(u32::MAX),
        )
        .flags(libc::MSG_NOSIGNAL | flags)
        .build()
        .user_data(encode(idx, TAG_SEND))
    }

    /// A receive into the slot's buffer; it is pending until its completion.
    fn recv(&mut self, fd: types::Fd, idx: u32) -> squeue::Entry {
        if self.inbuf.len() < RECV_CHUNK {
            self.inbuf.resize(RECV_CHUNK, 0);
        }
        self.recv_pending = true;
        opcode::Recv::new(fd, self.inbuf.as_mut_ptr(), RECV_CHUNK as u32)
            .build()
            .user_data(encode(idx, TAG_RECV))
    }

    /// Whether the probe is a TCP connect on a direct descriptor (the fixed-file slot
    /// of its slot index).
    pub(super) fn is_direct(&self) -> bool {
        self.direct
    }

    /// The direct connect probe on the worker's fixed-file slot, which holds a socket
    /// an earlier probe left unconnected and reusable (same address family).
    pub(super) fn use_warm_socket(&mut self) {
        self.warm = true;
        self.direct_open = true;
    }

    /// The address family of the probe's target.
    pub(super) fn family(&self) -> libc::c_int {
        if self.job.spec.target.addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        }
    }

    /// Whether the probe leaves its direct socket unconnected and clean for the next.
    pub(super) fn leaves_reusable_socket(&self) -> bool {
        self.direct_open && self.reusable
    }

    /// Once the verdict is in and nothing else is outstanding, what the direct socket
    /// in fixed-file slot `idx` (the slot index) needs, as SQEs (count given):
    /// - refused: nothing. The failed connect left it unconnected, its error read;
    ///   it is kept (`leaves_reusable_socket`) and the slot's next connect probe
    ///   connects it again, without a socket and a setsockopt through the ring and
    ///   the file's release after the close (a quarter of the kernel's CPU per
    ///   connect probe against a closed port, the socket's own part);
    /// - connected: `connect(AF_UNSPEC)`, which resets the connection (an RST, as the
    ///   close with SO_LINGER 0 sends) and unconnects the socket; kept if that
    ///   succeeds. It leaves ECONNRESET pending on the socket, which the next
    ///   connect clears as it starts (`tcp_connect_init`), before the ring polls it;
    /// - anything else (a timeout: the socket may be half-way; an error): the close,
    ///   SO_LINGER 0, so it resets, as for a plain socket.
    pub(super) fn take_release(&mut self, idx: u32) -> Option<squeue::Entry> {
        if !self.direct_open || self.reusable || self.outstanding != 0 || self.verdict.is_none() {
            return None;
        }
        if !self.disconnecting {
            match self.verdict {
                Some(Reason::Refused) => {
                    self.reusable = true;
                    return None;
                }
                Some(Reason::Ok) => {
                    self.disconnecting = true;
                    return Some(
                        opcode::Connect::new(
                            types::Fixed(idx),
                            &raw const self.unspec,
                            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
                        )
                        .build()
                        .user_data(encode(idx, TAG_DISCONNECT)),
                    );
                }
                _ => {}
            }
        }
        self.direct_open = false;
        Some(
            opcode::Close::new(types::Fixed(idx))
                .build()
                .user_data(encode(idx, TAG_CLOSE)),
        )
    }

    /// Whether the kernel refused socket options through the ring.
    pub(super) fn direct_unsupported(&self) -> bool {
        self.direct_unsupported
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
            // A parked connection the server closed meanwhile says nothing about the
            // target: try again on a fresh one.
            if self.reused
                && self.phases.first_byte.is_none()
                && matches!(r, Reason::ConnectionClosed { .. })
            {
                self.retry = true;
            }
            self.verdict = Some(r);
            if !self.keep {
                // Close now: nothing of ours uses the socket any more, and with
                // SO_LINGER 0 a TCP close resets at once (no TIME_WAIT on either side).
                self.fd = None;
            }
        }
    }

    /// Hand the receive buffer over (to the worker's pool); only once the slot has no
    /// operation left in the kernel.
    pub(super) fn take_inbuf(&mut self) -> Vec<u8> {
        debug_assert_eq!(self.outstanding, 0);
        std::mem::take(&mut self.inbuf)
    }

    /// Receive into `buf` (a pooled buffer, already sized: no allocation, no zeroing).
    /// Only bytes a receive returned are ever read from it.
    pub(super) fn set_inbuf(&mut self, buf: Vec<u8>) {
        self.inbuf = buf;
    }

    /// Whether the probe must run again on a fresh connection.
    pub(super) fn wants_retry(&self) -> bool {
        self.retry
    }

    /// The job, to run it again.
    pub(super) fn job(&self) -> &Job {
        &self.job
    }

    /// The connection to park for the check's next probe, if the exchange left it
    /// reusable.
    pub(super) fn take_idle(&mut self) -> Option<Idle> {
        if !self.keep || self.retry {
            return None;
        }
        let fd = self.fd.take()?;
        let tls = match &mut self.kind {
            Kind::Http(h) => h.tls.take(),
            _ => None,
        };
        Some(Idle {
            fd,
            tls,
            since: sys::monotonic_now(),
        })
    }

    /// A parked connection: send the request at once (encrypted on the existing TLS
    /// session for HTTPS).
    fn http_reuse(&mut self, ops: &mut Vec<Op>) {
        let Kind::Http(h) = &mut self.kind else {
            return;
        };
        self.out.clear();
        self.out_off = 0;
        match h.tls.as_mut() {
            Some(conn) => {
                if std::io::Write::write_all(&mut conn.writer(), &h.request).is_err() {
                    self.decide(local("tls: request could not be queued".into()));
                    return;
                }
                tls::drain_out(conn, &mut self.out);
            }
            None => self.out.extend_from_slice(&h.request),
        }
        h.request_queued = true;
        ops.push(Op::SendRecv);
    }

    /// React to one completion; push follow-up operations into `ops`.
    pub(super) fn complete(&mut self, tag: u8, res: i32, ops: &mut Vec<Op>) {
        self.complete_op(tag, res, ops);
        // An operation that finds its data already queued completes at submission and
        // never waits on its linked timeout, so a peer streaming faster than we read
        // (an endless body) would hold the probe past its deadline: check it before
        // asking for more.
        if self.verdict.is_none() && !ops.is_empty() && self.elapsed() >= self.job.spec.timeout {
            ops.clear();
            self.decide(Reason::Timeout);
        }
    }

    fn complete_op(&mut self, tag: u8, res: i32, ops: &mut Vec<Op>) {
        if tag == TAG_DISCONNECT {
            // Failed: the socket is closed instead (`take_release`).
            self.reusable = res >= 0;
            return;
        }
        if tag == TAG_SOCKET && res >= 0 {
            // Whatever happens next, the direct socket exists and must be closed.
            self.direct_open = true;
            return;
        }
        if matches!(tag, TAG_SOCKET | TAG_SOCKOPT)
            && matches!(-res, libc::EINVAL | libc::EOPNOTSUPP | libc::ENOTSOCK)
            && self.verdict.is_none()
        {
            // The ring cannot make sockets (before Linux 5.19) or set their options
            // (before 6.7): not a verdict on the target.
            self.direct_unsupported = true;
            self.retry = true;
            self.decide(Reason::Local {
                detail: "sockets through io_uring unsupported".into(),
            });
            return;
        }
        if tag == TAG_RECV {
            self.recv_pending = false;
        }
        let linked_send = tag == TAG_SEND && std::mem::take(&mut self.linked_send);
        if matches!(tag, TAG_TIMEOUT | TAG_CLOSE) || self.verdict.is_some() {
            return;
        }
        if linked_send && res == -libc::EAGAIN {
            // The socket buffer is full: its linked receive is being cancelled.
            self.resend = true;
            return;
        }
        if tag == TAG_RECV && self.resend {
            // The cancelled receive of that pair: now send the plain way, which
            // waits for room until the deadline, and receive after it.
            self.resend = false;
            ops.push(Op::Send);
            return;
        }
        if tag == TAG_SOCKOPT && res >= 0 {
            return;
        }
        if res < 0 {
            let phase = match tag {
                TAG_SOCKET => "socket",
                TAG_SOCKOPT => "setsockopt",
                TAG_CONNECT => "connect",
                TAG_SEND => "send",
                _ => self.recv_phase(),
            };
            self.decide(errno_reason(-res, phase));
            return;
        }
        match tag {
            TAG_CONNECT => {
                self.phases.connect = Some(self.elapsed());
                match self.kind {
                    Kind::Connect => self.decide(Reason::Ok),
                    Kind::Udp { .. } | Kind::Dns { .. } => ops.push(Op::SendRecv),
                    Kind::Http(_) => self.http_connected(ops),
                }
            }
            TAG_SEND => {
                self.out_off += usize::try_from(res).unwrap_or(0);
                if self.out_off >= self.out.len() {
                    self.out.clear();
                    self.out_off = 0;
                    // After a linked send the receive is already waiting.
                    if !self.recv_pending {
                        ops.push(Op::Recv);
                    }
                } else {
                    ops.push(Op::Send);
                }
            }
            TAG_RECV => {
                let n = usize::try_from(res).unwrap_or(0);
                let is_http = matches!(self.kind, Kind::Http(_));
                if !is_http && self.phases.first_byte.is_none() {
                    self.phases.first_byte = Some(self.elapsed());
                }
                match &self.kind {
                    Kind::Udp { expect } => {
                        let r = if self.inbuf[..n].starts_with(expect) {
                            Reason::Ok
                        } else {
                            Reason::PayloadMismatch
                        };
                        self.decide(r);
                    }
                    Kind::Dns { id } => {
                        let id = *id;
                        self.dns_answer(id, n, ops);
                    }
                    Kind::Http(_) => self.http_recv(n, ops),
                    Kind::Connect => self.decide(Reason::Ok),
                }
            }
            _ => {}
        }
    }

    /// Where the exchange stood when a receive failed (the peer reset the
    /// connection): for HTTP(S) the same phases a clean close reports (`tls` during
    /// the handshake, `headers` before the final response head was complete, `body`
    /// after it), so a reset and a FIN at the same point read alike; `recv` otherwise.
    fn recv_phase(&self) -> &'static str {
        match &self.kind {
            Kind::Http(h) if h.tls.as_ref().is_some_and(|c| c.is_handshaking()) => "tls",
            Kind::Http(h) if h.parser.partial().is_some() => "body",
            Kind::Http(_) => "headers",
            _ => "recv",
        }
    }

    /// The result (call once, when done and nothing is outstanding).
    pub(super) fn take_result(&mut self) -> CheckResult {
        let r = self
            .verdict
            .take()
            .unwrap_or_else(|| local("probe ended without a verdict".into()));
        let mut res = result_of(&self.job, self.started, r, self.phases);
        if let Kind::Http(h) = &self.kind {
            res.http_status = h.status;
            res.cert_days_left = h.cert_days;
        }
        res
    }

    fn dns_answer(&mut self, id: u16, n: usize, ops: &mut Vec<Op>) {
        let ProbeSpec::Dns(d) = &self.job.spec.probe else {
            return;
        };
        match crate::engine::dns::parse_response(&self.inbuf[..n], id, &d.name, d.qtype) {
            Ok(resp) => {
                let r = crate::engine::dns::judge(d, &resp);
                self.decide(r);
            }
            // Not the answer to our query (another id): keep waiting until the deadline.
            Err(e) if e.is_stray() => ops.push(Op::Recv),
            Err(e) => {
                let r = crate::engine::dns::error_reason(&e);
                self.decide(r);
            }
        }
    }

    /// TCP is up: queue the PROXY header (now that our address is known), then the
    /// TLS ClientHello or the plaintext request.
    fn http_connected(&mut self, ops: &mut Vec<Op>) {
        let ProbeSpec::Http(spec) = &self.job.spec.probe else {
            return;
        };
        let proxy = spec.proxy_protocol;
        let peer = SocketAddr::new(self.job.spec.target.addr, self.job.spec.target.port);
        let local_addr = self.fd.as_ref().and_then(|fd| sys::local_addr(fd).ok());
        let Kind::Http(h) = &mut self.kind else {
            return;
        };
        self.out.clear();
        self.out_off = 0;
        if let (Some(v), Some(src)) = (proxy, local_addr) {
            encode_proxy_header(v, src, peer, &mut self.out);
        }
        match h.tls.as_mut() {
            Some(conn) => tls::drain_out(conn, &mut self.out),
            None => {
                self.out.extend_from_slice(&h.request);
                h.request_queued = true;
            }
        }
        ops.push(Op::SendRecv);
    }

    /// Bytes (or EOF when `n == 0`) arrived on an HTTP(S) connection.
    fn http_recv(&mut self, n: usize, ops: &mut Vec<Op>) {
        let elapsed = self.elapsed();
        let Kind::Http(h) = &mut self.kind else {
            return;
        };
        let data = &self.inbuf[..n];
        let mut verdict: Option<Reason> = None;
        if let Some(conn) = h.tls.as_mut() {
            if n == 0 {
                if conn.is_handshaking() {
                    // The peer went away, it did not refuse TLS: the same reason as a
                    // reset at this point (see `recv_phase`).
                    verdict = Some(Reason::ConnectionClosed { phase: "tls" });
                }
            } else if let Err(e) = tls::feed(conn, data, &mut h.plain) {
                verdict = Some(Reason::Tls {
                    detail: e.to_string(),
                });
            } else {
                if !conn.is_handshaking() && !h.request_queued {
                    self.phases.tls = Some(elapsed);
                    h.cert_days = conn
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| tls::days_left(c, std::time::SystemTime::now()));
                    if std::io::Write::write_all(&mut conn.writer(), &h.request).is_err() {
                        verdict = Some(local("tls: request could not be queued".into()));
                    }
                    h.request_queued = true;
                }
                self.out.clear();
                self.out_off = 0;
                tls::drain_out(conn, &mut self.out);
            }
        } else if n > 0 {
            h.plain.extend_from_slice(data);
        }
        if verdict.is_none() && (!h.plain.is_empty() || n == 0) {
            if !h.plain.is_empty() && self.phases.first_byte.is_none() {
                self.phases.first_byte = Some(elapsed);
            }
            let progress = if h.plain.is_empty() {
                Ok(Progress::NeedMore)
            } else {
                h.parser.feed(&h.plain)
            };
            h.plain.clear();
            verdict = match progress {
                Ok(Progress::Done) => {
                    let spec_keep =
                        matches!(&self.job.spec.probe, ProbeSpec::Http(sp) if sp.keepalive);
                    self.keep = spec_keep && h.parser.keepalive_ok();
                    Some(judge_http(h, &self.job))
                }
                Ok(Progress::NeedMore) if n == 0 => Some(match h.parser.finish_eof() {
                    Ok(()) => judge_http(h, &self.job),
                    Err(e) => http_error_reason(&e),
                }),
                Ok(Progress::NeedMore) => None,
                Err(e) => Some(http_error_reason(&e)),
            };
            if h.status.is_none() {
                h.status = h.parser.partial().map(|r| r.status).filter(|s| *s != 0);
            }
        }
        match verdict {
            Some(r) => self.decide(r),
            None if !self.out.is_empty() => ops.push(Op::SendRecv),
            None => ops.push(Op::Recv),
        }
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

#[cfg(test)]
mod tests {
    //! The send-and-receive chain, driven with the completions the kernel posts in
    //! the cases a live target rarely produces (a full socket buffer, a short send).
    //! No operation is submitted: the socket is made and never connected.
    use std::{
        net::{IpAddr, Ipv4Addr},
        sync::Arc,
    };

    use super::*;
    use crate::engine::spec::{CheckId, CheckSpec, HttpExpect, InitialState, Target, Thresholds};

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

    fn http_slot() -> Box<Slot> {
        let Ok(slot) = Slot::new(http_job("GET"), None, false) else {
            panic!("slot");
        };
        slot
    }

    fn http_job(method: &str) -> Job {
        let spec = CheckSpec {
            id: CheckId::new("web"),
            target: Target {
                host: "127.0.0.1".into(),
                addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                port: 9,
                source: Default::default(),
            },
            probe: ProbeSpec::Http(Box::new(HttpSpec {
                method: method.into(),
                path: "/health".into(),
                host: None,
                headers: Vec::new(),
                proxy_protocol: None,
                tls: None,
                keepalive: false,
                max_body: 4096,
                expect: HttpExpect::default(),
            })),
            interval: Duration::from_secs(10),
            fast_interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            jitter: 0.0,
            thresholds: Thresholds::Consecutive { rise: 1, fall: 1 },
            initial: InitialState::Unknown,
            labels: Default::default(),
        };
        Job::new(Arc::new(spec), 1).expect("job")
    }

    #[test]
    fn the_request_is_encoded_once_per_check_and_sent_by_every_probe() {
        let job = http_job("GET");
        let prepared = match &job.prepared.request {
            Some(Ok(r)) => Arc::clone(r),
            other => panic!("request not prepared: {other:?}"),
        };
        assert!(prepared.starts_with(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1:9\r\n"));
        for _ in 0..2 {
            let mut s = Slot::new(job.clone(), None, false).unwrap_or_else(|_| panic!("slot"));
            connected(&mut s);
            assert_eq!(s.out, &*prepared, "what goes out is the prepared request");
        }
    }

    #[test]
    fn a_request_that_cannot_be_encoded_fails_each_probe_saying_why() {
        let job = http_job("GET\r\nX:");
        assert!(matches!(&job.prepared.request, Some(Err(_))));
        let Err(r) = Slot::new(job, None, false) else {
            panic!("a probe started with a request that breaks the framing");
        };
        let Reason::Local { detail } = &r.reason else {
            panic!("reason {:?}", r.reason);
        };
        assert!(
            detail.starts_with("request: ") && detail.contains("method"),
            "{detail}"
        );
    }

    /// Connect completes: the request and its receive go out as one chain of three.
    fn connected(s: &mut Slot) -> usize {
        let mut ops = Vec::new();
        s.first_ops(0, &mut ops);
        assert_eq!(ops, [Op::Connect]);
        ops.clear();
        s.complete(TAG_CONNECT, 0, &mut ops);
        assert_eq!(ops, [Op::SendRecv]);
        let (_, n) = s.entries(0, Op::SendRecv);
        assert_eq!(n, 3, "send, receive, deadline");
        s.out.len()
    }

    fn answer(s: &mut Slot) {
        s.inbuf[..OK.len()].copy_from_slice(OK);
        let mut ops = Vec::new();
        s.complete(TAG_RECV, OK.len() as i32, &mut ops);
        assert!(ops.is_empty());
        s.complete(TAG_TIMEOUT, -libc::ECANCELED, &mut ops);
        assert!(ops.is_empty());
        assert!(s.is_done());
        assert_eq!(s.take_result().reason, Reason::Ok);
    }

    #[test]
    fn a_whole_send_leaves_the_linked_receive_waiting() {
        let mut s = http_slot();
        let len = connected(&mut s);
        let mut ops = Vec::new();
        s.complete(TAG_SEND, len as i32, &mut ops);
        assert!(ops.is_empty(), "the receive is already in the kernel");
        answer(&mut s);
    }

    #[test]
    fn a_full_socket_buffer_sends_again_the_plain_way() {
        let mut s = http_slot();
        let len = connected(&mut s);
        let mut ops = Vec::new();
        s.complete(TAG_SEND, -libc::EAGAIN, &mut ops);
        assert!(
            ops.is_empty() && !s.is_done(),
            "no verdict on a full buffer"
        );
        // The link is broken: the receive and its deadline are cancelled.
        s.complete(TAG_RECV, -libc::ECANCELED, &mut ops);
        assert_eq!(
            ops,
            [Op::Send],
            "not a timeout: send again, with a deadline"
        );
        assert!(!s.is_done());
        ops.clear();
        s.complete(TAG_TIMEOUT, -libc::ECANCELED, &mut ops);
        assert!(ops.is_empty() && !s.is_done());
        let (_, n) = s.entries(0, Op::Send);
        assert_eq!(n, 2, "send and its deadline");
        s.complete(TAG_SEND, len as i32, &mut ops);
        assert_eq!(ops, [Op::Recv], "then receive");
        ops.clear();
        s.entries(0, Op::Recv);
        s.complete(TAG_TIMEOUT, -libc::ECANCELED, &mut ops);
        answer(&mut s);
    }

    #[test]
    fn a_short_send_sends_the_rest_while_the_receive_waits() {
        let mut s = http_slot();
        let len = connected(&mut s);
        let mut ops = Vec::new();
        s.complete(TAG_SEND, 5, &mut ops);
        assert_eq!(ops, [Op::Send], "the rest");
        ops.clear();
        s.entries(0, Op::Send);
        s.complete(TAG_SEND, len as i32 - 5, &mut ops);
        assert!(ops.is_empty(), "no second receive");
        s.complete(TAG_TIMEOUT, -libc::ECANCELED, &mut ops);
        answer(&mut s);
    }

    #[test]
    fn a_failed_send_is_the_verdict_and_the_cancelled_receive_is_not() {
        let mut s = http_slot();
        connected(&mut s);
        let mut ops = Vec::new();
        s.complete(TAG_SEND, -libc::ECONNRESET, &mut ops);
        s.complete(TAG_RECV, -libc::ECANCELED, &mut ops);
        s.complete(TAG_TIMEOUT, -libc::ECANCELED, &mut ops);
        assert!(ops.is_empty());
        assert_eq!(
            s.take_result().reason,
            Reason::ConnectionClosed { phase: "send" }
        );
    }
}
