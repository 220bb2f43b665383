//! Thin, safe wrappers over the few syscalls the engine makes outside io_uring:
//! sockets, socket addresses, eventfd, and the monotonic clock shared with io_uring's
//! absolute timeouts.

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use io_uring::types::Timespec;

/// A socket address in the form the kernel takes, with a stable size.
pub struct SockAddr {
    /// Storage large enough for IPv4 and IPv6.
    pub storage: libc::sockaddr_storage,
    /// Used length.
    pub len: libc::socklen_t,
}

impl SockAddr {
    /// Convert a std address.
    #[must_use]
    pub fn new(a: SocketAddr) -> Self {
        // SAFETY: all-zero sockaddr_storage is valid.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = match a {
            SocketAddr::V4(v4) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(v4.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_in fits in sockaddr_storage, which is suitably aligned.
                unsafe { std::ptr::write((&raw mut storage).cast::<libc::sockaddr_in>(), sin) };
                std::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(v6) => {
                // SAFETY: all-zero sockaddr_in6 is valid.
                let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = v6.port().to_be();
                sin6.sin6_addr.s6_addr = v6.ip().octets();
                sin6.sin6_scope_id = v6.scope_id();
                // SAFETY: sockaddr_in6 fits in sockaddr_storage, which is suitably aligned.
                unsafe { std::ptr::write((&raw mut storage).cast::<libc::sockaddr_in6>(), sin6) };
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        Self {
            storage,
            len: len as libc::socklen_t,
        }
    }

    /// Pointer for syscalls and SQEs.
    #[must_use]
    pub fn as_ptr(&self) -> *const libc::sockaddr {
        (&raw const self.storage).cast()
    }
}

/// A new non-blocking, close-on-exec socket of the given type for `addr`'s family.
///
/// # Errors
/// socket(2) failed (EMFILE when over the fd limit).
pub fn socket(addr: &SocketAddr, kind: libc::c_int) -> io::Result<OwnedFd> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the fd is owned immediately.
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh, valid fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `connect(2)` without io_uring, for UDP (which completes at once).
///
/// # Errors
/// connect(2) failed.
pub fn connect_now(fd: &OwnedFd, addr: &SockAddr) -> io::Result<()> {
    // SAFETY: valid fd and sockaddr of the stated length.
    let r = unsafe { libc::connect(fd.as_raw_fd(), addr.as_ptr(), addr.len) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Set SO_LINGER to 0 so close() sends an RST and leaves no TIME_WAIT: a health
/// checker opening thousands of connections a second must not exhaust ports or leave
/// state on the target.
pub fn linger_zero(fd: &OwnedFd) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd, option value of the right type and size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const l).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Now on CLOCK_MONOTONIC, the clock of io_uring's absolute timeouts.
#[must_use]
pub fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid timespec out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// An absolute CLOCK_MONOTONIC deadline for IORING_TIMEOUT_ABS.
#[must_use]
pub fn abs_timespec(at: Duration) -> Timespec {
    Timespec::new().sec(at.as_secs()).nsec(at.subsec_nanos())
}

/// An eventfd that wakes a worker blocked in io_uring_enter when jobs arrive.
pub struct EventFd(OwnedFd);

impl EventFd {
    /// Create a non-blocking eventfd.
    ///
    /// # Errors
    /// eventfd(2) failed.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain eventfd(2).
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh, valid fd.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Signal it.
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: valid fd, 8-byte buffer as eventfd requires.
        unsafe { libc::write(self.0.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    /// Reset it.
    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: valid fd, 8-byte buffer.
        unsafe { libc::read(self.0.as_raw_fd(), (&raw mut v).cast(), 8) };
    }

    /// Raw fd for the poll SQE.
    #[must_use]
    pub fn raw(&self) -> i32 {
        self.0.as_raw_fd()
    }
}

/// Count this process's open file descriptors (for leak tests and metrics).
#[must_use]
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The local address of a connected socket (for the PROXY protocol header).
///
/// # Errors
/// getsockname(2) failed.
pub fn local_addr(fd: &OwnedFd) -> io::Result<SocketAddr> {
    // SAFETY: all-zero sockaddr_storage is a valid out-parameter.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: valid fd and out-parameters.
    let r = unsafe { libc::getsockname(fd.as_raw_fd(), (&raw mut ss).cast(), &raw mut len) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in.
            let sin: libc::sockaddr_in = unsafe { std::ptr::read((&raw const ss).cast()) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Ok(SocketAddr::new(ip.into(), u16::from_be(sin.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6.
            let sin6: libc::sockaddr_in6 = unsafe { std::ptr::read((&raw const ss).cast()) };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Ok(SocketAddr::new(ip.into(), u16::from_be(sin6.sin6_port)))
        }
        f => Err(io::Error::other(format!("unexpected address family {f}"))),
    }
}
