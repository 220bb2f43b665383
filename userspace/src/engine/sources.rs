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
//! so a memo is not used after the routing that made it changed. Without rtnetlink the
//! epoch advances every [`FALLBACK_EPOCH`].

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
/// stateless senders, polled by the collector.
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
}

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

    /// Read what rtnetlink announced since the last call; if anything (or if messages
    /// were lost), start a new epoch, so every memo is resolved again. Returns whether
    /// the epoch advanced. Cheap when nothing happened: one non-blocking `recv`.
    pub fn poll(&self) -> bool {
        let changed = match &self.netlink {
            Some(fd) => drain_netlink(fd),
            None => {
                let mut since = self.fallback_since.lock();
                if since.elapsed() >= FALLBACK_EPOCH {
                    *since = Instant::now();
                    true
                } else {
                    false
                }
            }
        };
        if changed {
            self.advance();
        }
        changed
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

/// Read every queued message; true if there was any, or if the socket overran.
fn drain_netlink(fd: &OwnedFd) -> bool {
    let mut buf = [0u8; 8192];
    let mut any = false;
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
            any = true;
            continue;
        }
        if n == 0 {
            return any;
        }
        return match io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) => any,
            Some(libc::EINTR) => continue,
            // ENOBUFS: messages were lost, so something changed.
            _ => true,
        };
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
    fn the_epoch_wraps_without_reaching_zero() {
        let s = Sources::new();
        s.epoch.store(0xffff, Ordering::Release);
        s.advance();
        assert_eq!(s.epoch(), 1);
    }
}
