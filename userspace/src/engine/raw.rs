//! Raw sockets for stateless probes: hand-built IPv4/IPv6 packets (`IPPROTO_RAW`, so we
//! write the IP header ourselves and choose source port and sequence number).

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use probe_common::craft::{self, Ip, L4};

/// `IPV6_HDRINCL` (linux/in6.h), not exported by libc for all targets.
const IPV6_HDRINCL: libc::c_int = 36;

/// A raw IPv4 and (when available) IPv6 socket pair for sending hand-built packets.
pub struct RawSender {
    /// AF_INET, IPPROTO_RAW (IP_HDRINCL implied).
    v4: OwnedFd,
    /// AF_INET6, IPPROTO_RAW with IPV6_HDRINCL; `None` if IPv6 is disabled.
    v6: Option<OwnedFd>,
    /// Scratch buffer packets are built into.
    buf: [u8; 1500],
}

fn raw_socket(domain: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned immediately.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl RawSender {
    /// Open the raw sockets (needs CAP_NET_RAW).
    ///
    /// # Errors
    /// The IPv4 raw socket cannot be opened (usually: not root).
    pub fn new() -> io::Result<Self> {
        let v4 = raw_socket(libc::AF_INET)?;
        let v6 = raw_socket(libc::AF_INET6).ok().and_then(|fd| {
            let one: libc::c_int = 1;
            // SAFETY: valid fd, option value is a c_int of the right size.
            let r = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::IPPROTO_IPV6,
                    IPV6_HDRINCL,
                    (&raw const one).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            (r == 0).then_some(fd)
        });
        Ok(Self {
            v4,
            v6,
            buf: [0; 1500],
        })
    }

    /// Build `l4` from `local` to `remote` and send it.
    ///
    /// # Errors
    /// Mixed address families, no IPv6 socket, or `sendto` failed.
    pub fn send(&mut self, local: IpAddr, remote: IpAddr, l4: &L4<'_>) -> io::Result<()> {
        let (fam, src, dst) = match (local, remote) {
            (IpAddr::V4(l), IpAddr::V4(r)) => (probe_common::family::V4, v4_bytes(l), v4_bytes(r)),
            (IpAddr::V6(l), IpAddr::V6(r)) => (probe_common::family::V6, l.octets(), r.octets()),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "source and target address families differ",
                ))
            }
        };
        let ip = Ip {
            family: fam,
            src,
            dst,
            ttl: 64,
            id: 0,
            options: &[],
        };
        let n = craft::build(&mut self.buf, None, &ip, l4).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "probe does not fit in one packet",
            )
        })?;
        let pkt = &self.buf[..n];
        let r = match remote {
            IpAddr::V4(r) => {
                let sa = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: 0,
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(r.octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: valid fd, buffer and sockaddr of the stated sizes.
                unsafe {
                    libc::sendto(
                        self.v4.as_raw_fd(),
                        pkt.as_ptr().cast(),
                        pkt.len(),
                        0,
                        (&raw const sa).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    )
                }
            }
            IpAddr::V6(r) => {
                let fd = self.v6.as_ref().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::Unsupported, "no IPv6 raw socket")
                })?;
                // SAFETY: all-zero is a valid sockaddr_in6.
                let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
                sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sa.sin6_addr.s6_addr = r.octets();
                // SAFETY: valid fd, buffer and sockaddr of the stated sizes.
                unsafe {
                    libc::sendto(
                        fd.as_raw_fd(),
                        pkt.as_ptr().cast(),
                        pkt.len(),
                        0,
                        (&raw const sa).cast(),
                        std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                    )
                }
            }
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// IPv4 address in the 16-byte form used by records (first four bytes).
#[must_use]
pub fn v4_bytes(a: Ipv4Addr) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&a.octets());
    b
}

/// Decode a record address of the given family.
#[must_use]
pub fn addr_from(family: u8, b: &[u8; 16]) -> IpAddr {
    if family == probe_common::family::V4 {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*b))
    }
}

/// The local address the kernel would use to reach `target` (route lookup through a
/// connected UDP socket; nothing is sent).
///
/// # Errors
/// No route to `target`.
pub fn source_for(target: IpAddr) -> io::Result<IpAddr> {
    let bind: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse()
    } else {
        "[::]:0".parse()
    }
    .map_err(|_| io::Error::other("bad bind address"))?;
    let s = UdpSocket::bind(bind)?;
    s.connect(SocketAddr::new(target, 9))?;
    Ok(s.local_addr()?.ip())
}

/// The name of the interface that holds address `local` (getifaddrs).
#[must_use]
pub fn iface_of(local: IpAddr) -> Option<String> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&raw mut head) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr of the family it states.
            let fam = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            let addr = match fam {
                libc::AF_INET => {
                    // SAFETY: family is AF_INET.
                    let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                    Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                        sin.sin_addr.s_addr,
                    ))))
                }
                libc::AF_INET6 => {
                    // SAFETY: family is AF_INET6.
                    let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
                    Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
                }
                _ => None,
            };
            if addr == Some(local) {
                // SAFETY: ifa_name is a NUL-terminated C string.
                let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
                found = Some(name.to_string_lossy().into_owned());
                break;
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    found
}

/// Packets built for one `sendmmsg` call: a flat buffer, each packet's span and
/// destination. Reused across batches (no allocation in steady state).
pub struct Batch {
    /// Packet bytes, back to back.
    buf: Vec<u8>,
    /// (start, len, destination) of each packet.
    spans: Vec<(usize, usize, IpAddr)>,
    /// IPv4 identification of the next packet (never 0: see [`next_ip_id`]).
    ip_id: u16,
}

/// The IPv4 identification after `id`, skipping 0. An IP_HDRINCL packet with id 0
/// has the kernel pick one (`__ip_select_ident`: a shared, hashed counter, 3 % of
/// the machine at 250k probes/s); probes are never fragmented, so any value does.
fn next_ip_id(id: u16) -> u16 {
    id.wrapping_add(1).max(1)
}

/// Most packets per `sendmmsg`.
pub const BATCH: usize = 64;

impl Default for Batch {
    fn default() -> Self {
        Self {
            buf: Vec::with_capacity(BATCH * 128),
            spans: Vec::with_capacity(BATCH),
            ip_id: 1,
        }
    }
}

impl Batch {
    /// Packets queued.
    #[must_use]
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether nothing is queued.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Whether the batch is full.
    #[must_use]
    pub fn is_full(&self) -> bool {
        self.spans.len() >= BATCH
    }

    /// Build `l4` from `local` to `remote` into the batch.
    ///
    /// # Errors
    /// Mixed families, or the packet does not fit.
    pub fn push(&mut self, local: IpAddr, remote: IpAddr, l4: &L4<'_>) -> io::Result<()> {
        let (fam, src, dst) = match (local, remote) {
            (IpAddr::V4(l), IpAddr::V4(r)) => (probe_common::family::V4, v4_bytes(l), v4_bytes(r)),
            (IpAddr::V6(l), IpAddr::V6(r)) => (probe_common::family::V6, l.octets(), r.octets()),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "source and target address families differ",
                ))
            }
        };
        self.ip_id = next_ip_id(self.ip_id);
        let ip = Ip {
            family: fam,
            src,
            dst,
            ttl: 64,
            id: self.ip_id,
            options: &[],
        };
        let start = self.buf.len();
        // 128 bytes hold every SYN and echo; a UDP datagram carries its payload.
        let room = match l4 {
            L4::Udp { payload, .. } => 128.max(48 + payload.len()),
            _ => 128,
        };
        self.buf.resize(start + room, 0);
        let n = craft::build(&mut self.buf[start..], None, &ip, l4).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "probe does not fit its buffer")
        })?;
        self.buf.truncate(start + n);
        self.spans.push((start, n, remote));
        Ok(())
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.spans.clear();
    }
}

impl RawSender {
    /// Send every packet of `batch` with as few `sendmmsg` calls as possible (one per
    /// address family), then empty it. Returns, per packet in order, `None` if it was
    /// sent or the error that stopped it.
    pub fn send_batch(&mut self, batch: &mut Batch, errors: &mut Vec<(usize, io::Error)>) {
        errors.clear();
        for v6 in [false, true] {
            let fd = if v6 {
                match self.v6.as_ref() {
                    Some(fd) => fd.as_raw_fd(),
                    None => {
                        for (i, s) in batch.spans.iter().enumerate() {
                            if s.2.is_ipv6() {
                                errors.push((
                                    i,
                                    io::Error::new(
                                        io::ErrorKind::Unsupported,
                                        "no IPv6 raw socket",
                                    ),
                                ));
                            }
                        }
                        continue;
                    }
                }
            } else {
                self.v4.as_raw_fd()
            };
            let idx: Vec<usize> = (0..batch.spans.len())
                .filter(|&i| batch.spans[i].2.is_ipv6() == v6)
                .collect();
            if idx.is_empty() {
                continue;
            }
            let mut addrs: Vec<crate::engine::uring::sys::SockAddr> = idx
                .iter()
                .map(|&i| {
                    crate::engine::uring::sys::SockAddr::new(std::net::SocketAddr::new(
                        batch.spans[i].2,
                        0,
                    ))
                })
                .collect();
            let mut iovs: Vec<libc::iovec> = idx
                .iter()
                .map(|&i| {
                    let (start, len, _) = batch.spans[i];
                    libc::iovec {
                        iov_base: batch.buf[start..].as_mut_ptr().cast(),
                        iov_len: len,
                    }
                })
                .collect();
            // SAFETY: all-zero mmsghdr is valid; pointers set below stay valid for the call.
            let mut msgs: Vec<libc::mmsghdr> = (0..idx.len())
                .map(|_| unsafe { std::mem::zeroed() })
                .collect();
            for (k, m) in msgs.iter_mut().enumerate() {
                m.msg_hdr.msg_name = (&raw mut addrs[k].storage).cast();
                m.msg_hdr.msg_namelen = addrs[k].len;
                m.msg_hdr.msg_iov = &raw mut iovs[k];
                m.msg_hdr.msg_iovlen = 1;
            }
            let mut done = 0usize;
            while done < msgs.len() {
                let rest = &mut msgs[done..];
                // SAFETY: `rest` points to initialised mmsghdrs whose buffers live in
                // `batch`, `addrs` and `iovs` for the duration of the call.
                let r = unsafe {
                    libc::sendmmsg(
                        fd,
                        rest.as_mut_ptr(),
                        u32::try_from(rest.len()).unwrap_or(u32::MAX),
                        0,
                    )
                };
                if r < 0 {
                    // The first message of `rest` failed: report it, go on after it.
                    errors.push((idx[done], io::Error::last_os_error()));
                    done += 1;
                } else {
                    done += usize::try_from(r).unwrap_or(0).max(1);
                }
            }
        }
        batch.clear();
    }
}
