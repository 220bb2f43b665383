//! Who answers a SYN-ACK to a probe with its RST ([`ResetMode`], the config's
//! `reset`). The host's TCP stack does it when nothing else does (no socket holds the
//! probe's port), at the cost of its IP and TCP receive path and a new packet per
//! answer. The TC ingress program (`Tc`, the daemon's default) turns the SYN-ACK's own
//! skb into the RST and sends it back out of the interface (`bpf_redirect`): it works on
//! every interface, IPv6 SYN-ACKs still go to the stack. The XDP program (`Xdp`) does
//! it before any skb exists (`XDP_TX`), for NICs with native XDP.
//!
//! `XDP_TX` is not delivered everywhere: a veth hands what its XDP program sends back
//! only to a peer that runs an XDP program too, and drops it otherwise (counted in the
//! interface's `tx_dropped`). So it is watched, not assumed: [`KernelProbes::check_reset`],
//! called about once a second, compares the resets sent with what the attached
//! interfaces dropped since the last call and, as soon as half or more were dropped (or
//! the statistics cannot be read), hands the resets to the TC program for good. A reset
//! lost meanwhile costs a retransmitted SYN-ACK, reset then: the answer was recorded.

use std::{ffi::CStr, io};

use probe_common::{config::reset, counters::XdpReason};
use serde::Serialize;
use tracing::{info, warn};

use super::{KernelError, KernelProbes};

/// Who resets a SYN-ACK to a probe.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResetMode {
    /// The host's TCP stack (the kernel programs' default until told otherwise).
    #[default]
    Stack,
    /// The TC ingress program (`bpf_redirect`; IPv4, IPv6 to the stack).
    Tc,
    /// The XDP program (`XDP_TX`), watched by the guard.
    Xdp,
}

impl ResetMode {
    /// Every mode, in the config's spelling.
    pub const ALL: [ResetMode; 3] = [ResetMode::Stack, ResetMode::Tc, ResetMode::Xdp];

    /// The config's spelling: `stack`, `tc`, `xdp`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            ResetMode::Stack => "stack",
            ResetMode::Tc => "tc",
            ResetMode::Xdp => "xdp",
        }
    }

    /// The mode named `s`.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == s)
    }

    fn value(self) -> u8 {
        match self {
            ResetMode::Stack => reset::STACK,
            ResetMode::Tc => reset::TC,
            ResetMode::Xdp => reset::XDP,
        }
    }
}

/// Who resets SYN-ACKs now, and why not the XDP program if it was asked to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ResetState {
    /// The mode in force.
    pub mode: ResetMode,
    /// Why the guard took resets away from the XDP program.
    pub xdp_off_reason: Option<String>,
}

/// What the guard remembers between two checks.
#[derive(Debug, Default)]
pub(super) struct Guard {
    pub(super) state: ResetState,
    /// Resets sent and frames the interfaces dropped at the last check.
    last: Option<(u64, u64)>,
}

/// Whether the interfaces lost the resets: at least half of those sent since the last
/// check were dropped (any other drops on the interface only make it stop early).
#[must_use]
pub fn resets_dropped(sent: u64, dropped: u64) -> bool {
    sent > 0 && dropped.saturating_mul(2) >= sent
}

impl KernelProbes {
    /// Say who resets SYN-ACKs (see the module docs). Needs the configuration written
    /// first ([`KernelProbes::set_config`]).
    ///
    /// # Errors
    /// No configuration was written yet, or the config map cannot be written.
    pub fn set_reset(&mut self, mode: ResetMode) -> Result<(), KernelError> {
        let mut cfg = self.config.ok_or(KernelError::Missing {
            kind: "configuration",
            name: "probe config (set_config first)",
        })?;
        if mode == ResetMode::Xdp && self.ingress == probe_common::config::ingress::TC {
            return Err(KernelError::Conflict {
                what: "syn_ack_reset \"xdp\" needs the XDP program, but answers are classified at TC ingress (answer_hook)".to_owned(),
            });
        }
        cfg.reset = mode.value();
        self.set_config(&cfg)?;
        self.reset.state.mode = mode;
        self.reset.last = None;
        info!(mode = mode.name(), ifaces = ?self.attached_names(), "SYN-ACKs to probes are reset by");
        Ok(())
    }

    /// Who resets SYN-ACKs now.
    #[must_use]
    pub fn reset_state(&self) -> &ResetState {
        &self.reset.state
    }

    /// The guard of resets from XDP: call about once a second while the mode is
    /// [`ResetMode::Xdp`]. Hands the resets to the TC program when the attached
    /// interfaces dropped at least half of those sent since the last call (or their
    /// statistics cannot be read), and returns why.
    ///
    /// # Errors
    /// The counters or the config map cannot be read or written.
    pub fn check_reset(&mut self) -> Result<Option<String>, KernelError> {
        if self.reset.state.mode != ResetMode::Xdp {
            return Ok(None);
        }
        let sent = self.counters()?.xdp(XdpReason::ResetSent);
        let mut dropped = 0;
        let mut unreadable = None;
        for (iface, _) in &self.attached {
            match tx_dropped(iface) {
                Ok(n) => dropped += n,
                Err(e) => unreadable = Some(format!("{iface}: {e}")),
            }
        }
        let why = if let Some(e) = unreadable {
            // What cannot be watched is not assumed to work.
            format!(
                "cannot read the link statistics ({e}), so drops of resets sent from XDP \
                 would go unseen; the TC program resets SYN-ACKs from now on"
            )
        } else {
            let Some((sent0, dropped0)) = self.reset.last.replace((sent, dropped)) else {
                return Ok(None);
            };
            let (ds, dd) = (sent.saturating_sub(sent0), dropped.saturating_sub(dropped0));
            if !resets_dropped(ds, dd) {
                return Ok(None);
            }
            format!(
                "{} dropped {dd} frames while XDP sent {ds} resets (a veth whose peer runs no \
                 XDP program drops them all); the TC program resets SYN-ACKs from now on",
                self.attached_names().join(",")
            )
        };
        self.set_reset(ResetMode::Tc)?;
        warn!(reason = %why, "resets from XDP turned off");
        self.reset.state.xdp_off_reason = Some(why.clone());
        Ok(Some(why))
    }

    fn attached_names(&self) -> Vec<String> {
        self.attached.iter().map(|(n, _)| n.clone()).collect()
    }
}

/// Frames `iface` dropped on transmit (`tx_dropped` of its link statistics, which a
/// veth also counts its failed `XDP_TX` frames in), read through `getifaddrs` in the
/// calling thread's network namespace (so the guard must run in the namespace of the
/// attached interfaces, as the daemon does).
///
/// # Errors
/// `getifaddrs` failed or `iface` has no link statistics.
pub fn tx_dropped(iface: &str) -> io::Result<u64> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&raw mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = None;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is an element of the list getifaddrs returned, not freed yet.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_data.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: a non-null address and name as getifaddrs returns them.
        let (fam, name) = unsafe {
            (
                i32::from((*ifa.ifa_addr).sa_family),
                CStr::from_ptr(ifa.ifa_name),
            )
        };
        if fam != libc::AF_PACKET || name.to_bytes() != iface.as_bytes() {
            continue;
        }
        // For AF_PACKET entries ifa_data is a `struct rtnl_link_stats` (32-bit
        // counters): rx/tx packets, rx/tx bytes, rx/tx errors, rx/tx dropped.
        // SAFETY: that struct has at least these eight u32 fields.
        let stats = unsafe { std::ptr::read_unaligned(ifa.ifa_data.cast::<[u32; 8]>()) };
        found = Some(u64::from(stats[7]));
        break;
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(head) };
    found.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no link statistics for {iface}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_or_more_dropped_turns_it_off() {
        assert!(!resets_dropped(0, 0));
        assert!(
            !resets_dropped(0, 5),
            "no reset sent: other drops say nothing"
        );
        assert!(!resets_dropped(1000, 0));
        assert!(!resets_dropped(1000, 499));
        assert!(resets_dropped(1000, 500));
        assert!(resets_dropped(1, 1), "even one reset, if dropped");
        assert!(resets_dropped(347_597, 347_597));
    }

    #[test]
    fn loopback_has_link_statistics() {
        assert!(tx_dropped("lo").is_ok());
        let e = tx_dropped("no-such-if0").expect_err("unknown interface");
        assert!(e.to_string().contains("no-such-if0"), "{e}");
    }
}
