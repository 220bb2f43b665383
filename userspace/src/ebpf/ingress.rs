//! Which program classifies answers on the way in ([`AnswerHook`], the daemon's
//! `[daemon] answer_hook`).
//!
//! XDP (`sonde_xdp`) runs in the NIC driver before the kernel builds a socket buffer:
//! the cheapest place there is, on drivers with native XDP. On a veth it is the
//! opposite: frames arrive there as socket buffers already, and native XDP on a veth
//! copies each one into a page of its own (`skb_pp_cow_data`, no XDP headroom) and
//! runs it through a NAPI ring before the stack sees it; generic XDP works on the
//! socket buffer after allocation too. There the TC ingress program (`sonde_tc_ingress`)
//! runs the same classifier, records and drops answers, and resets SYN-ACKs, on the
//! buffer as it is. Measured in the benchmark's veth lab (bench/README.md): 7-13 % more
//! SYN probes per second on the same two cores.
//!
//! `auto` (the default) takes TC on a veth (driver `veth`, asked with
//! `ETHTOOL_GDRVINFO`) or where native XDP is refused, XDP in the driver elsewhere. The
//! choice holds for every interface of one [`KernelProbes`]: the kernel programs share
//! one configuration.

use std::{ffi::CStr, io, os::fd::AsRawFd};

use probe_common::config::ingress;
use serde::Serialize;
use tracing::{info, warn};

use super::{error_chain, KernelError, KernelProbes, XdpAttachMode};

/// Which program the caller wants to classify answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AnswerHook {
    /// TC ingress on a veth or where native XDP is refused, XDP in the driver elsewhere.
    #[default]
    Auto,
    /// XDP: native, or generic when the driver refuses native.
    Xdp,
    /// TC ingress; the XDP program is not attached.
    Tc,
}

impl AnswerHook {
    /// Every choice, in the config's spelling.
    pub const ALL: [AnswerHook; 3] = [AnswerHook::Auto, AnswerHook::Xdp, AnswerHook::Tc];

    /// The config's spelling: `auto`, `xdp`, `tc`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            AnswerHook::Auto => "auto",
            AnswerHook::Xdp => "xdp",
            AnswerHook::Tc => "tc",
        }
    }

    /// The choice named `s`.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == s)
    }

    /// This choice with SYN-ACKs reset by `resets`: resets from XDP need the XDP
    /// program, so `auto` then means XDP (the configuration refuses `tc` with them).
    #[must_use]
    pub fn with_resets(self, resets: super::ResetMode) -> Self {
        match (self, resets) {
            (AnswerHook::Auto, super::ResetMode::Xdp) => AnswerHook::Xdp,
            (h, _) => h,
        }
    }
}

/// Where answers are classified on an attached interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "hook")]
pub enum Ingress {
    /// The XDP program, attached in this mode.
    Xdp {
        /// Native or generic.
        #[serde(serialize_with = "xdp_mode_name")]
        mode: XdpAttachMode,
    },
    /// The TC ingress program.
    Tc {
        /// Why not XDP.
        why: String,
    },
}

fn xdp_mode_name<S: serde::Serializer>(m: &XdpAttachMode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match m {
        XdpAttachMode::Native => "native",
        XdpAttachMode::Generic { .. } => "generic",
    })
}

impl Ingress {
    fn value(&self) -> u8 {
        match self {
            Ingress::Xdp { .. } => ingress::XDP,
            Ingress::Tc { .. } => ingress::TC,
        }
    }

    /// One line for logs and the CLI.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Ingress::Xdp {
                mode: XdpAttachMode::Native,
            } => "XDP (native)".to_owned(),
            Ingress::Xdp {
                mode: XdpAttachMode::Generic { native_error },
            } => format!("XDP (generic; native refused: {native_error})"),
            Ingress::Tc { why } => format!("TC ingress ({why})"),
        }
    }
}

/// The driver behind `iface` (`ETHTOOL_GDRVINFO`), in the calling thread's network
/// namespace.
///
/// # Errors
/// No such interface, or it answers no ethtool driver query.
pub fn driver(iface: &str) -> io::Result<String> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 3;
    /// `struct ethtool_drvinfo` (linux/ethtool.h).
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    let name = iface.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{iface:?} is not an interface name"),
        ));
    }
    let sock =
        std::net::UdpSocket::bind("0.0.0.0:0").or_else(|_| std::net::UdpSocket::bind("[::]:0"))?;
    // SAFETY: all-zero is a valid value of these plain C structs.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    // SAFETY: as above.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&raw mut info).cast();
    // SAFETY: SIOCETHTOOL with an ifreq naming the interface and pointing to a
    // drvinfo buffer of the size the kernel writes for ETHTOOL_GDRVINFO.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &raw mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let d = CStr::from_bytes_until_nul(&info.driver)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "driver name not terminated"))?;
    Ok(d.to_string_lossy().into_owned())
}

impl KernelProbes {
    /// Attach the kernel programs to `iface` with answers classified where `hook`
    /// says (see the module docs): TC egress always, TC ingress always (it resets
    /// SYN-ACKs, and classifies with [`Ingress::Tc`]), XDP only for [`Ingress::Xdp`].
    /// Must run in the network namespace that holds `iface`. The first interface
    /// decides for all: on a later one `auto` follows it, and an explicit other
    /// choice is an error.
    ///
    /// # Errors
    /// Attaching failed, or `hook` contradicts the interfaces attached before.
    pub fn attach_with(&mut self, iface: &str, hook: AnswerHook) -> Result<Ingress, KernelError> {
        let first = self.attached.first().map(|(_, i)| i.value());
        let chosen = match (hook, first) {
            (AnswerHook::Xdp, Some(ingress::TC)) | (AnswerHook::Tc, Some(ingress::XDP)) => {
                return Err(KernelError::Conflict {
                    what: format!(
                        "answer_hook {} on {iface}: the interfaces attached before classify at the other hook, and all share one",
                        hook.name()
                    ),
                })
            }
            (AnswerHook::Tc, _) => Ingress::Tc {
                why: "answer_hook = \"tc\"".to_owned(),
            },
            (AnswerHook::Auto, Some(ingress::TC)) => Ingress::Tc {
                why: "as the interfaces attached before".to_owned(),
            },
            (AnswerHook::Xdp, _) | (AnswerHook::Auto, Some(_)) => Ingress::Xdp {
                mode: self.attach_xdp(iface, true)?,
            },
            (AnswerHook::Auto, None) => match driver(iface) {
                Ok(d) if d == "veth" => Ingress::Tc {
                    why: "veth: XDP there copies every frame".to_owned(),
                },
                other => {
                    if let Err(e) = &other {
                        warn!(iface, error = %e, "cannot ask the interface's driver; trying native XDP");
                    }
                    match self.attach_xdp(iface, false) {
                        Ok(mode) => Ingress::Xdp { mode },
                        Err(e) => Ingress::Tc {
                            why: format!("native XDP refused: {}", error_chain(&e)),
                        },
                    }
                }
            },
        };
        self.ingress = chosen.value();
        if let Some(cfg) = self.config {
            self.set_config(&cfg)?;
        }
        self.attach_tc(iface)?;
        info!(iface, ingress = %chosen.describe(), "kernel programs attached; answers classified by");
        self.attached.push((iface.to_owned(), chosen.clone()));
        Ok(chosen)
    }
}
