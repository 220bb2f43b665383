//! Where answers come from: the kernel programs' ring buffers (kernel timestamps), or,
//! where eBPF cannot be used, an `AF_PACKET` socket on the same interface running the
//! same classifier in userspace (userspace timestamps). Both yield [`AnswerRecord`]s.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::Arc,
    time::Duration,
};

use parking_lot::Mutex;

use probe_common::{
    config::ProbeConfig,
    parse::classify,
    record::{flags, AnswerRecord},
    EVENT_RINGS,
};

use super::Clock;
use crate::ebpf::KernelProbes;

/// A source of classified answers.
pub trait AnswerSource {
    /// Wait until answers may be ready or `timeout` passes.
    fn wait(&self, timeout: Duration) -> bool;
    /// Hand every ready answer to `f`; returns how many.
    fn drain(&mut self, f: &mut dyn FnMut(AnswerRecord)) -> usize;
    /// Which clock the records' times come from.
    fn clock(&self) -> Clock;
    /// Divide this source among up to `n` readers, reader `i` getting the answers to
    /// probes whose [`StampKey::ring`](probe_common::record::StampKey::ring) is `i`
    /// modulo the number of readers returned (a power of two, at most `n`). A source
    /// that cannot be divided returns itself alone, for one reader.
    fn split(self: Box<Self>, n: usize) -> Vec<Box<dyn AnswerSource + Send>>;
}

impl AnswerSource for KernelProbes {
    fn wait(&self, timeout: Duration) -> bool {
        KernelProbes::wait(self, timeout)
    }

    fn drain(&mut self, f: &mut dyn FnMut(AnswerRecord)) -> usize {
        KernelProbes::drain(self, f)
    }

    fn clock(&self) -> Clock {
        Clock::Kernel
    }

    /// Read through the handle, one reader; [`crate::ebpf::Events`] (taken from it with
    /// `take_events`) divides.
    fn split(self: Box<Self>, _n: usize) -> Vec<Box<dyn AnswerSource + Send>> {
        vec![self]
    }
}

/// Userspace fallback: every frame arriving on one interface, classified by the same
/// parser the XDP program uses. The kernel stack still sees the answers too.
pub struct PacketSource {
    /// AF_PACKET socket bound to the interface, non-blocking.
    fd: OwnedFd,
    /// What recognises our answers (ports, ICMP id, cookie key).
    cfg: ProbeConfig,
    /// Receive buffer (one frame).
    buf: Vec<u8>,
    /// Frames seen, answers found: for the caller's accounting.
    pub frames: u64,
    /// Frames the kernel dropped because the socket's buffer was full (every frame of
    /// the interface comes through this socket, so a flood can fill it).
    pub dropped: u64,
    /// When the drops were last checked and logged.
    drops_checked: std::time::Instant,
}

/// Receive buffer asked for the packet socket: it sees every frame of the interface,
/// and at the default (about 200 KiB) a burst of traffic drops answers with the rest.
const PACKET_RCVBUF: i32 = 8 << 20;

/// How often the kernel's drop count of the packet socket is read (and logged if it
/// grew).
const DROPS_EVERY: Duration = Duration::from_secs(1);

fn ifindex(iface: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(iface)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name contains NUL"))?;
    // SAFETY: valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface named {iface}"),
        ));
    }
    Ok(i)
}

impl PacketSource {
    /// Open an `AF_PACKET` socket on `iface` (needs CAP_NET_RAW).
    ///
    /// # Errors
    /// No such interface, or the socket cannot be opened or bound.
    pub fn open(iface: &str, cfg: ProbeConfig) -> io::Result<Self> {
        let index = ifindex(iface)?;
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); the fd is owned immediately.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh valid fd.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: all-zero sockaddr_ll is valid; we set the fields bind needs.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = i32::try_from(index).unwrap_or(0);
        // SAFETY: valid fd and sockaddr of the stated size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // Above rmem_max with CAP_NET_ADMIN (SO_RCVBUFFORCE), else as much as allowed.
        let size = PACKET_RCVBUF;
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            // SAFETY: valid fd and an i32 option value.
            let r = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&raw const size).cast(),
                    std::mem::size_of::<i32>() as libc::socklen_t,
                )
            };
            if r == 0 {
                break;
            }
        }
        Ok(Self {
            fd,
            cfg,
            buf: vec![0; 65536],
            frames: 0,
            dropped: 0,
            drops_checked: std::time::Instant::now(),
        })
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid timespec pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

impl PacketSource {
    /// Read (and reset) the kernel's count of frames this socket dropped; log when it
    /// grew: an answer dropped there becomes a timeout, and that must not go unsaid.
    fn check_drops(&mut self) {
        self.drops_checked = std::time::Instant::now();
        // SAFETY: all-zero tpacket_stats is valid as an out-parameter.
        let mut st: libc::tpacket_stats = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: valid fd and out-parameters of the stated size.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&raw mut st).cast(),
                &raw mut len,
            )
        };
        if r == 0 && st.tp_drops > 0 {
            self.dropped += u64::from(st.tp_drops);
            tracing::warn!(
                dropped = st.tp_drops,
                total = self.dropped,
                "the packet socket of the userspace answer path dropped frames (its buffer was full); probes whose answers were among them time out"
            );
        }
    }
}

impl AnswerSource for PacketSource {
    fn wait(&self, timeout: Duration) -> bool {
        poll_in(self.fd.as_raw_fd(), timeout)
    }

    fn drain(&mut self, f: &mut dyn FnMut(AnswerRecord)) -> usize {
        if self.drops_checked.elapsed() >= DROPS_EVERY {
            self.check_drops();
        }
        let mut n = 0;
        loop {
            // SAFETY: all-zero sockaddr_ll is valid as an out-parameter.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: valid fd, buffer and address out-parameters.
            let r = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                    (&raw mut from).cast(),
                    &raw mut len,
                )
            };
            let Ok(size) = usize::try_from(r) else { break };
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            self.frames += 1;
            if let Ok(a) = classify(&self.buf[..size], &self.cfg) {
                f(AnswerRecord {
                    rx_ns: monotonic_ns(),
                    tx_ns: 0,
                    rtt_ns: 0,
                    key: a.key,
                    reporter: a.reporter,
                    answer_seq: a.answer_seq,
                    class: a.class as u8,
                    icmp_type: a.icmp_type,
                    icmp_code: a.icmp_code,
                    tcp_flags: a.tcp_flags,
                    flags: if a.cookie_ok { flags::COOKIE_OK } else { 0 },
                    ttl: a.ttl,
                    _pad: [0; 2],
                });
                n += 1;
            }
        }
        n
    }

    fn clock(&self) -> Clock {
        Clock::Userspace
    }

    /// One packet socket sees every answer, so the readers share it
    /// ([`PacketReader`]): whichever reads a frame hands its record to the reader whose
    /// residue its [`StampKey::ring`](probe_common::record::StampKey::ring) is.
    fn split(self: Box<Self>, n: usize) -> Vec<Box<dyn AnswerSource + Send>> {
        let n = readers(n, EVENT_RINGS);
        if n == 1 {
            return vec![self];
        }
        let fd = self.fd.as_raw_fd();
        let port_lo = self.cfg.port_lo;
        let shared = Arc::new(SharedPacket {
            socket: Mutex::new(*self),
            inboxes: (0..n).map(|_| Mutex::new(Vec::new())).collect(),
            port_lo,
        });
        (0..n)
            .map(|index| {
                Box::new(PacketReader {
                    shared: Arc::clone(&shared),
                    index,
                    fd,
                }) as Box<dyn AnswerSource + Send>
            })
            .collect()
    }
}

/// A [`PacketSource`] shared by several readers, and each reader's inbox.
struct SharedPacket {
    /// The socket; read by whichever reader takes the lock.
    socket: Mutex<PacketSource>,
    /// Records read by one reader for another, by owner.
    inboxes: Vec<Mutex<Vec<AnswerRecord>>>,
    /// The reserved range's first port (to compute `StampKey::ring`).
    port_lo: u16,
}

/// One of the readers of a shared [`PacketSource`] ([`AnswerSource::split`]): reader
/// `i` of `n` yields the answers whose `StampKey::ring` is `i` modulo `n`, whichever
/// reader took them off the socket. Their receive time is taken when the frame is read
/// (`AnswerRecord::rx_ns`), so handing a record on adds nothing to its round trip.
pub struct PacketReader {
    /// The socket and the inboxes.
    shared: Arc<SharedPacket>,
    /// This reader's residue.
    index: usize,
    /// The socket's fd, to wait on without the lock (owned by `shared`).
    fd: std::os::fd::RawFd,
}

impl AnswerSource for PacketReader {
    fn wait(&self, timeout: Duration) -> bool {
        if !self.shared.inboxes[self.index].lock().is_empty() {
            return true;
        }
        poll_in(self.fd, timeout)
    }

    fn drain(&mut self, f: &mut dyn FnMut(AnswerRecord)) -> usize {
        let n = self.shared.inboxes.len();
        let mut count = 0;
        // Another reader draining the socket now hands this one its records.
        if let Some(mut socket) = self.shared.socket.try_lock() {
            let (port_lo, index, inboxes) = (self.shared.port_lo, self.index, &self.shared.inboxes);
            socket.drain(&mut |rec| {
                let owner = rec.key.ring(port_lo) % n;
                if owner == index {
                    f(rec);
                    count += 1;
                } else {
                    inboxes[owner].lock().push(rec);
                }
            });
        }
        let mine = std::mem::take(&mut *self.shared.inboxes[self.index].lock());
        count += mine.len();
        mine.into_iter().for_each(&mut *f);
        count
    }

    fn clock(&self) -> Clock {
        Clock::Userspace
    }

    fn split(self: Box<Self>, _n: usize) -> Vec<Box<dyn AnswerSource + Send>> {
        vec![self]
    }
}

/// How many readers an answer source divides into when `n` are wanted and it holds
/// `rings` rings (a power of two): `n` rounded down to a power of two, at least 1 and
/// at most `rings`, so that every reader gets whole residue classes of
/// [`StampKey::ring`](probe_common::record::StampKey::ring).
#[must_use]
pub fn readers(n: usize, rings: usize) -> usize {
    1 << n.clamp(1, rings.max(1)).ilog2()
}

/// Wait until `fd` is readable or `timeout` passes.
fn poll_in(fd: std::os::fd::RawFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&raw mut pfd, 1, ms) > 0 }
}

impl AnswerSource for crate::ebpf::Events {
    fn wait(&self, timeout: Duration) -> bool {
        crate::ebpf::Events::wait(self, timeout)
    }

    fn drain(&mut self, f: &mut dyn FnMut(AnswerRecord)) -> usize {
        crate::ebpf::Events::drain(self, f)
    }

    fn clock(&self) -> Clock {
        Clock::Kernel
    }

    fn split(self: Box<Self>, n: usize) -> Vec<Box<dyn AnswerSource + Send>> {
        (*self)
            .split(n)
            .into_iter()
            .map(|e| Box::new(e) as Box<dyn AnswerSource + Send>)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The packet socket sees every frame of its interface: it gets a buffer far above
    /// the default, so bursts of other traffic do not drop answers (as root; the
    /// kernel reports twice the size asked). Unprivileged, there is no socket to test.
    #[test]
    fn the_packet_socket_has_a_large_buffer() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: needs root for an AF_PACKET socket");
            return;
        }
        let src = PacketSource::open("lo", ProbeConfig::default()).expect("packet socket on lo");
        let mut v: i32 = 0;
        let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
        // SAFETY: valid fd and out-parameters of the stated size.
        let r = unsafe {
            libc::getsockopt(
                src.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw mut v).cast(),
                &raw mut len,
            )
        };
        assert_eq!(r, 0);
        assert!(v >= PACKET_RCVBUF, "receive buffer {v} bytes");
    }
}
