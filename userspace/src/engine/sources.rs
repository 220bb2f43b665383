//! Which local address a stateless probe leaves from, remembered per check.
//!
//! A raw probe carries its source address in the IP header, the SYN cookie and the key
//! its answer is matched by, and the kernel's routing decides it. Asking the kernel
//! ([`source_for`]: socket, connect, getsockname, close) per probe would cost more than
//! the probe, and a map from target address to source, looked up per probe, missed the
//! cache at 65,536 targets (5 % of the machine in the SYN benchmark). Instead each
//! check's [`Target`](super::spec::Target) keeps a 4-byte [`SourceMemo`] (in what was
//! padding): an index into the few distinct local addresses seen, and the routing epoch
//! it was resolved in. The epoch advances whenever the kernel announces a change of
//! links, addresses, routes or rules (rtnetlink multicast, read by [`Sources::poll`]),
//! so a memo is not used after the routing that made it changed: at once for links and
//! addresses, within [`ROUTE_EPOCH`] for routes and rules. Without rtnetlink the epoch
//! advances every [`FALLBACK_EPOCH`]. Each sender also remembers, per epoch, the source
//! of each target it resolved ([`SenderView`]), so a new epoch costs one kernel lookup
//! per target and sender, not one per check.

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use tracing::warn;

use super::raw::source_for;

/// How often the epoch advances when rtnetlink cannot be read.
pub const FALLBACK_EPOCH: Duration = Duration::from_secs(10);

/// Most distinct local addresses remembered (indices are 16 bits, 0 means none).
const MAX_ADDRS: usize = 0xffff;

/// rtnetlink groups whose messages can change a route's source address.
const GROUPS: u32 = 0x1 // RTMGRP_LINK
    | 0x10 // RTMGRP_IPV4_IFADDR
    | 0x40 // RTMGRP_IPV4_ROUTE
    | 0x80 // RTMGRP_IPV4_RULE
    | 0x100 // RTMGRP_IPV6_IFADDR
    | 0x400; // RTMGRP_IPV6_ROUTE

/// A check's remembered source: `epoch << 16 | (index + 1)`, 0 when unknown.
///
/// A copy starts unknown (a cloned spec may get another target); it compares equal to
/// any other memo and is not serialized, so specs compare and travel as before.
#[derive(Default)]
pub struct SourceMemo(AtomicU32);

impl Clone for SourceMemo {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for SourceMemo {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for SourceMemo {}

impl std::fmt::Debug for SourceMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SourceMemo({:#x})", self.0.load(Ordering::Relaxed))
    }
}

impl SourceMemo {
    /// Whether a source is remembered (in any epoch).
    #[must_use]
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed) != 0
    }
}

/// A sender's own view: its copy of the address list the memos index, and the
/// sources it resolved in the current epoch by target address, so checks that share
/// a target (or the first pass over many checks) ask the kernel once per target.
#[derive(Default)]
pub struct SenderView {
    /// Copy of [`Sources`]' address list (append-only, so a copy stays valid).
    addrs: Vec<IpAddr>,
    /// Index of the source per target address, in epoch `epoch`.
    by_target: std::collections::HashMap<IpAddr, u32, foldhash::fast::FixedState>,
    /// The epoch `by_target` belongs to.
    epoch: u32,
}

/// Most targets a [`SenderView`] remembers before it starts over.
const VIEW_TARGETS: usize = 65_536;

/// The local addresses probes leave from, and the routing epoch; shared by the
/// stateless workers, polled by each of them.
pub struct Sources {
    /// Every distinct source address resolved so far (append-only: an index, once
    /// given, always means the same address).
    addrs: Mutex<Vec<IpAddr>>,
    /// Routing epoch, 16 bits, never 0.
    epoch: AtomicU32,
    /// rtnetlink socket subscribed to [`GROUPS`], non-blocking; `None` if unavailable.
    netlink: Option<OwnedFd>,
    /// When the epoch last advanced for lack of rtnetlink.
    fallback_since: Mutex<Instant>,
    /// Route news not yet acted on, and when the epoch last advanced for news.
    routes: Mutex<RouteNews>,
}

/// See [`Sources::poll`].
#[derive(Default)]
struct RouteNews {
    /// Route or rule messages arrived since the epoch last advanced.
    pending: bool,
    /// When the epoch last advanced for news.
    last: Option<Instant>,
}

/// What rtnetlink said since the last poll.
#[derive(Clone, Copy, Default)]
struct News {
    /// Links or addresses changed, or messages were lost.
    urgent: bool,
    /// Routes or rules changed.
    routes: bool,
}

/// Most one epoch per this for route and rule changes.
pub const ROUTE_EPOCH: Duration = Duration::from_secs(1);

impl Default for Sources {
    fn default() -> Self {
        Self::new()
    }
}

impl Sources {
    /// Sources for the calling thread's network namespace.
    #[must_use]
    pub fn new() -> Self {
        let netlink = open_netlink()
            .map_err(|e| {
                warn!(
                    error = %e,
                    "rtnetlink unavailable: probe source addresses are re-resolved every {}s",
                    FALLBACK_EPOCH.as_secs()
                );
            })
            .ok();
        Self {
            addrs: Mutex::new(Vec::new()),
            epoch: AtomicU32::new(1),
            netlink,
            fallback_since: Mutex::new(Instant::now()),
            routes: Mutex::new(RouteNews::default()),
        }
    }

    /// The current routing epoch (for tests and logs).
    #[must_use]
    pub fn epoch(&self) -> u32 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The local address for `target`: from `memo` when it was resolved in this epoch,
    /// else from the sender's `view` (same epoch, same target), else asked of the
    /// kernel; remembered in both.
    ///
    /// # Errors
    /// No route to `target`.
    pub fn local_for(
        &self,
        memo: &SourceMemo,
        target: IpAddr,
        view: &mut SenderView,
    ) -> io::Result<IpAddr> {
        let epoch = self.epoch.load(Ordering::Acquire);
        let m = memo.0.load(Ordering::Relaxed);
        if m != 0 && m >> 16 == epoch {
            if let Some(a) = self.address(m & 0xffff, target, view) {
                return Ok(a);
            }
        }
        if view.epoch != epoch || view.by_target.len() >= VIEW_TARGETS {
            view.by_target.clear();
            view.epoch = epoch;
        }
        if let Some(&n) = view.by_target.get(&target) {
            if let Some(a) = self.address(n, target, view) {
                memo.0.store(epoch << 16 | n, Ordering::Relaxed);
                return Ok(a);
            }
        }
        let local = source_for(target)?;
        let index = {
            let mut addrs = self.addrs.lock();
            match addrs.iter().position(|a| *a == local) {
                Some(i) => Some(i),
                None if addrs.len() < MAX_ADDRS => {
                    addrs.push(local);
                    Some(addrs.len() - 1)
                }
                None => None,
            }
        };
        if let Some(i) = index {
            // i < MAX_ADDRS = 0xffff, so i + 1 fits 16 bits.
            let n = i as u32 + 1;
            memo.0.store(epoch << 16 | n, Ordering::Relaxed);
            view.by_target.insert(target, n);
        }
        Ok(local)
    }

    /// Address number `n` (1-based) from the view's copy, refreshed when short; `None`
    /// if unknown or of the other family than `target`.
    fn address(&self, n: u32, target: IpAddr, view: &mut SenderView) -> Option<IpAddr> {
        let i = (n as usize).checked_sub(1)?;
        if i >= view.addrs.len() {
            view.addrs.clone_from(&self.addrs.lock());
        }
        view.addrs
            .get(i)
            .copied()
            .filter(|a| a.is_ipv4() == target.is_ipv4())
    }

    /// Read what rtnetlink announced since the last call and start a new epoch if it
    /// may change a source address, so every memo is resolved again: at once for links
    /// and addresses (or lost messages), at most once per [`ROUTE_EPOCH`] for routes and
    /// rules (a host fed routes by a BGP daemon changes some all the time). Returns
    /// whether the epoch advanced. Cheap when nothing happened: one non-blocking `recv`.
    pub fn poll(&self) -> bool {
        let news = match &self.netlink {
            Some(fd) => drain_netlink(fd),
            None => {
                let mut since = self.fallback_since.lock();
                if since.elapsed() >= FALLBACK_EPOCH {
                    *since = Instant::now();
                    News {
                        urgent: true,
                        routes: false,
                    }
                } else {
                    News::default()
                }
            }
        };
        self.note(news, Instant::now())
    }

    /// Advance the epoch for `news` seen at `now` (see [`Self::poll`]).
    fn note(&self, news: News, now: Instant) -> bool {
        let mut routes = self.routes.lock();
        if news.routes {
            routes.pending = true;
        }
        let due = routes.pending
            && routes
                .last
                .is_none_or(|last| now.saturating_duration_since(last) >= ROUTE_EPOCH);
        if news.urgent || due {
            routes.pending = false;
            routes.last = Some(now);
            self.advance();
            return true;
        }
        false
    }

    /// Start a new epoch: every memo is resolved again on its next use.
    pub fn advance(&self) {
        let _ = self
            .epoch
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |e| {
                Some(match (e + 1) & 0xffff {
                    0 => 1,
                    n => n,
                })
            });
    }
}

fn open_netlink() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned immediately.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid sockaddr_nl.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    sa.nl_groups = GROUPS;
    // SAFETY: valid fd and a sockaddr_nl of the stated size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const sa).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Read every queued message and sort them: links and addresses are urgent, as is a
/// socket that overran (messages lost); anything else counts as a route change.
fn drain_netlink(fd: &OwnedFd) -> News {
    let mut buf = [0u8; 8192];
    let mut news = News::default();
    loop {
        // SAFETY: valid fd and buffer of the stated size.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            classify(&buf[..n as usize], &mut news);
            continue;
        }
        if n == 0 {
            return news;
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) => return news,
            Some(libc::EINTR) => {}
            // ENOBUFS: messages were lost, so anything may have changed.
            _ => {
                news.urgent = true;
                return news;
            }
        }
    }
}

/// Sort the netlink messages in `buf` (headers: u32 length, u16 type, ...) into `news`.
fn classify(buf: &[u8], news: &mut News) {
    const HDR: usize = 16;
    let mut off = 0;
    while off + HDR <= buf.len() {
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        match kind {
            libc::RTM_NEWLINK | libc::RTM_DELLINK | libc::RTM_NEWADDR | libc::RTM_DELADDR => {
                news.urgent = true;
            }
            _ => news.routes = true,
        }
        if len < HDR {
            break;
        }
        off += len.div_ceil(4) * 4;
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn a_memo_is_used_within_its_epoch_and_resolved_again_after() {
        let s = Sources::new();
        let memo = SourceMemo::default();
        let mut cache = SenderView::default();
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert!(!memo.is_set());
        assert_eq!(s.local_for(&memo, lo, &mut cache).expect("route"), lo);
        assert!(memo.is_set());
        let m = memo.0.load(Ordering::Relaxed);
        assert_eq!(m >> 16, s.epoch());
        // From the memo: the caller's copy of the list is filled on first use.
        assert_eq!(s.local_for(&memo, lo, &mut cache).expect("memo"), lo);
        assert_eq!(cache.addrs, vec![lo]);
        // Another check on the same target takes the sender's answer, no kernel call.
        let other = SourceMemo::default();
        assert_eq!(s.local_for(&other, lo, &mut cache).expect("view"), lo);
        assert_eq!(
            other.0.load(Ordering::Relaxed),
            memo.0.load(Ordering::Relaxed)
        );
        s.advance();
        assert_ne!(memo.0.load(Ordering::Relaxed) >> 16, s.epoch());
        assert_eq!(s.local_for(&memo, lo, &mut cache).expect("route"), lo);
        assert_eq!(memo.0.load(Ordering::Relaxed) >> 16, s.epoch());
        // One address, one index, whatever the epoch.
        assert_eq!(s.addrs.lock().len(), 1);
        // A clone starts unknown and still compares equal.
        let c = memo.clone();
        assert!(!c.is_set());
        assert_eq!(c, memo);
    }

    #[test]
    fn route_news_start_at_most_one_epoch_a_second_address_news_at_once() {
        let s = Sources::new();
        let t0 = Instant::now();
        let routes = News {
            urgent: false,
            routes: true,
        };
        let addrs = News {
            urgent: true,
            routes: false,
        };
        let e0 = s.epoch();
        assert!(s.note(routes, t0), "the first route news acts at once");
        assert!(!s.note(routes, t0 + Duration::from_millis(10)));
        assert!(!s.note(News::default(), t0 + Duration::from_millis(900)));
        // The held news acts once the second has passed, even without more news.
        assert!(s.note(News::default(), t0 + Duration::from_millis(1000)));
        assert!(!s.note(News::default(), t0 + Duration::from_millis(3000)));
        // Addresses do not wait.
        assert!(s.note(addrs, t0 + Duration::from_millis(3001)));
        assert!(s.note(addrs, t0 + Duration::from_millis(3002)));
        assert_eq!(s.epoch(), e0 + 4);
    }

    #[test]
    fn netlink_messages_are_sorted_by_type() {
        fn msg(kind: u16) -> Vec<u8> {
            let mut m = vec![0u8; 20];
            m[..4].copy_from_slice(&20u32.to_ne_bytes());
            m[4..6].copy_from_slice(&kind.to_ne_bytes());
            m
        }
        let mut n = News::default();
        classify(
            &[msg(libc::RTM_NEWROUTE), msg(libc::RTM_DELRULE)].concat(),
            &mut n,
        );
        assert!(n.routes && !n.urgent);
        let mut n = News::default();
        classify(
            &[msg(libc::RTM_NEWROUTE), msg(libc::RTM_DELADDR)].concat(),
            &mut n,
        );
        assert!(n.routes && n.urgent);
        // A truncated or zero-length header ends the walk.
        let mut n = News::default();
        classify(&[0u8; 10], &mut n);
        assert!(!n.routes && !n.urgent);
    }

    #[test]
    fn the_epoch_wraps_without_reaching_zero() {
        let s = Sources::new();
        s.epoch.store(0xffff, Ordering::Release);
        s.advance();
        assert_eq!(s.epoch(), 1);
    }
}
