//! Loading, attaching and reading sonde's kernel programs (the `probe-ebpf` object).
//!
//! [`KernelProbes`] owns the loaded object: the XDP ingress classifier, the TC egress
//! stamper, their maps, the answer ring buffers and the per-reason counters. Dropping it
//! detaches both programs. [`availability`] says, before trying, whether eBPF can be used
//! at all; when it cannot, the rest of sonde runs with userspace timestamps.

mod error;
mod events;
mod ingress;
mod reset;
mod testrun;

use aya::{
    maps::{Array, PerCpuArray, RingBuf},
    programs::{tc, SchedClassifier, TcAttachType, Xdp, XdpMode},
    Ebpf,
};
pub use error::KernelError;
pub use events::Events;
pub use ingress::{driver, AnswerHook, Ingress};
use probe_common::{
    config::{self as probe_config, ProbeConfig},
    counters::{TcReason, XdpReason},
    record::AnswerRecord,
    MAP_CONFIG, MAP_EVENTS, MAP_TC_COUNTERS, MAP_XDP_COUNTERS, PROG_TC_EGRESS, PROG_TC_INGRESS,
    PROG_XDP, PROG_XDP_PEER,
};
pub use reset::{resets_dropped, tx_dropped, ResetMode, ResetState};
use tracing::{info, warn};

/// The eBPF object embedded at build time, if `cargo xtask build-ebpf` had run.
#[must_use]
pub fn object() -> Option<&'static [u8]> {
    #[cfg(sonde_ebpf_embedded)]
    {
        Some(aya::include_bytes_aligned!(env!("SONDE_EBPF_OBJ_PATH")))
    }
    #[cfg(not(sonde_ebpf_embedded))]
    {
        None
    }
}

/// Whether the kernel programs can be used here; the error says why not.
///
/// # Errors
/// Not embedded, not root, or no BTF.
pub fn availability() -> Result<(), KernelError> {
    if object().is_none() {
        return Err(KernelError::NotEmbedded);
    }
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    // Root, or a dedicated user with the capabilities eBPF needs (the packaged systemd
    // unit grants CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN as ambient capabilities).
    if uid != 0 && !has_bpf_capabilities() {
        return Err(KernelError::NotPrivileged { uid });
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(KernelError::NoBtf);
    }
    Ok(())
}

/// Whether the effective capability set holds CAP_BPF (39), CAP_PERFMON (38) and
/// CAP_NET_ADMIN (12), read from `/proc/self/status`.
fn has_bpf_capabilities() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let need = (1u64 << 39) | (1u64 << 38) | (1u64 << 12);
    eff & need == need
}

/// How the XDP program ended up attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XdpAttachMode {
    /// In the driver (native XDP).
    Native,
    /// Generic (SKB) mode, after native failed for the given reason.
    Generic {
        /// Why native mode was refused.
        native_error: String,
    },
}

/// Counter totals (summed over CPUs), indexed like the reason enums.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// XDP counters, index = [`XdpReason`] as u32.
    pub xdp: Vec<u64>,
    /// TC egress counters, index = [`TcReason`] as u32.
    pub tc: Vec<u64>,
}

impl Counters {
    /// Value of one XDP counter.
    #[must_use]
    pub fn xdp(&self, r: XdpReason) -> u64 {
        self.xdp.get(r as usize).copied().unwrap_or(0)
    }

    /// Value of one TC counter.
    #[must_use]
    pub fn tc(&self, r: TcReason) -> u64 {
        self.tc.get(r as usize).copied().unwrap_or(0)
    }

    /// Frames the XDP program has seen: the sum of its exclusive counters.
    #[must_use]
    pub fn xdp_frames(&self) -> u64 {
        self.xdp.iter().take(XdpReason::EXCLUSIVE as usize).sum()
    }

    /// Difference `self - earlier`, counter by counter.
    #[must_use]
    pub fn since(&self, earlier: &Counters) -> Counters {
        let sub = |a: &[u64], b: &[u64]| {
            a.iter()
                .enumerate()
                .map(|(i, v)| v.saturating_sub(b.get(i).copied().unwrap_or(0)))
                .collect()
        };
        Counters {
            xdp: sub(&self.xdp, &earlier.xdp),
            tc: sub(&self.tc, &earlier.tc),
        }
    }
}

/// The loaded kernel programs and their maps.
pub struct KernelProbes {
    /// The loaded object; owns programs, links and the remaining maps.
    ebpf: Ebpf,
    /// Answers from the kernel programs, all rings (until taken by the engine).
    events: Option<Events>,
    /// Interfaces we attached to, for logs and status.
    attached: Vec<(String, Ingress)>,
    /// Who classifies answers (`probe_common::config::ingress`), written into every
    /// configuration: decided when attaching ([`KernelProbes::attach_with`]).
    ingress: u8,
    /// The configuration last written (see [`KernelProbes::set_config`]).
    config: Option<ProbeConfig>,
    /// Who resets SYN-ACKs, and the guard of resets from XDP (see [`KernelProbes::set_reset`]).
    reset: reset::Guard,
}

impl KernelProbes {
    /// Load the embedded object and both programs into the kernel (not attached yet).
    ///
    /// # Errors
    /// [`KernelError`] naming what failed; a verifier refusal carries the verifier log.
    pub fn load() -> Result<Self, KernelError> {
        availability()?;
        let bytes = object().ok_or(KernelError::NotEmbedded)?;
        let mut ebpf = Ebpf::load(bytes).map_err(KernelError::Object)?;
        for name in [PROG_XDP, PROG_TC_EGRESS, PROG_TC_INGRESS] {
            let prog = ebpf.program_mut(name).ok_or(KernelError::Missing {
                kind: "program",
                name,
            })?;
            let res = match prog {
                aya::programs::Program::Xdp(p) => p.load(),
                aya::programs::Program::SchedClassifier(p) => p.load(),
                _ => {
                    return Err(KernelError::Missing {
                        kind: "program",
                        name,
                    })
                }
            };
            res.map_err(|source| KernelError::Load {
                program: name,
                source,
            })?;
        }
        let mut rings = Vec::with_capacity(MAP_EVENTS.len());
        for (i, name) in MAP_EVENTS.into_iter().enumerate() {
            let map = ebpf
                .take_map(name)
                .ok_or(KernelError::Missing { kind: "map", name })?;
            let ring =
                RingBuf::try_from(map).map_err(|source| KernelError::Map { map: name, source })?;
            rings.push((i, ring));
        }
        Ok(Self {
            ebpf,
            events: Some(Events::new(rings)),
            attached: Vec::new(),
            ingress: probe_config::ingress::XDP,
            config: None,
            reset: reset::Guard::default(),
        })
    }

    /// Write the probe configuration (reserved ports, ICMP id, cookie key). Until this is
    /// called both programs pass everything and count it as `disabled`. Its `ingress`
    /// is replaced by what attaching decided.
    ///
    /// # Errors
    /// The config map cannot be written.
    pub fn set_config(&mut self, cfg: &ProbeConfig) -> Result<(), KernelError> {
        let cfg = &ProbeConfig {
            ingress: self.ingress,
            ..*cfg
        };
        let map = self.ebpf.map_mut(MAP_CONFIG).ok_or(KernelError::Missing {
            kind: "map",
            name: MAP_CONFIG,
        })?;
        let mut arr: Array<_, ProbeConfig> =
            Array::try_from(map).map_err(|source| KernelError::Map {
                map: MAP_CONFIG,
                source,
            })?;
        arr.set(0, cfg, 0).map_err(|source| KernelError::Map {
            map: MAP_CONFIG,
            source,
        })?;
        self.config = Some(*cfg);
        Ok(())
    }

    /// Attach XDP (native, falling back to generic with the reason logged) and both TC
    /// programs to `iface`: [`KernelProbes::attach_with`] and [`AnswerHook::Xdp`].
    ///
    /// # Errors
    /// As [`KernelProbes::attach_with`].
    pub fn attach(&mut self, iface: &str) -> Result<XdpAttachMode, KernelError> {
        match self.attach_with(iface, AnswerHook::Xdp)? {
            Ingress::Xdp { mode } => Ok(mode),
            Ingress::Tc { why } => Err(KernelError::Conflict { what: why }),
        }
    }

    /// Attach the XDP program to `iface`: native, else generic if `generic` (with the
    /// native refusal logged).
    fn attach_xdp(&mut self, iface: &str, generic: bool) -> Result<XdpAttachMode, KernelError> {
        let xdp: &mut Xdp = program(&mut self.ebpf, PROG_XDP)?;
        let attach_error = |source| KernelError::Attach {
            program: PROG_XDP,
            iface: iface.to_owned(),
            source,
        };
        match xdp.attach(iface, XdpMode::Driver) {
            Ok(_) => Ok(XdpAttachMode::Native),
            Err(native) if generic => {
                let native_error = error_chain(&native);
                warn!(iface, error = %native_error, "native XDP refused, falling back to generic mode");
                xdp.attach(iface, XdpMode::Skb).map_err(attach_error)?;
                Ok(XdpAttachMode::Generic { native_error })
            }
            Err(native) => Err(attach_error(native)),
        }
    }

    /// Attach both TC programs to `iface` (adding the clsact qdisc when needed).
    fn attach_tc(&mut self, iface: &str) -> Result<(), KernelError> {
        if let Err(e) = tc::qdisc_add_clsact(iface) {
            // EEXIST: a clsact qdisc is already there, which is what we need. With TCX
            // (kernel >= 6.6) the qdisc is not needed at all, so only log other errors.
            let reason = e.to_string();
            if !reason.contains("exists") && !reason.contains("EEXIST") {
                info!(iface, error = %reason, "clsact qdisc not added (not needed with TCX)");
            }
        }
        for (name, point) in [
            (PROG_TC_EGRESS, TcAttachType::Egress),
            (PROG_TC_INGRESS, TcAttachType::Ingress),
        ] {
            let prog: &mut SchedClassifier = program(&mut self.ebpf, name)?;
            prog.attach(iface, point)
                .map_err(|source| KernelError::Attach {
                    program: name,
                    iface: iface.to_owned(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Interfaces attached so far and where their answers are classified.
    #[must_use]
    pub fn attached(&self) -> &[(String, Ingress)] {
        &self.attached
    }

    /// Pop every answer record currently in the ring buffers (none once the events
    /// reader was taken with [`KernelProbes::take_events`]).
    pub fn drain(&mut self, f: impl FnMut(AnswerRecord)) -> usize {
        self.events.as_mut().map_or(0, |e| e.drain(f))
    }

    /// Wait until a ring buffer has data or `timeout` passes, at most
    /// [`probe_common::EVENTS_POLL_MS`] (see [`Events::wait`]): drain after each return.
    pub fn wait(&self, timeout: std::time::Duration) -> bool {
        self.events.as_ref().is_some_and(|e| e.wait(timeout))
    }

    /// Move the ring-buffer readers out, e.g. to the engine's stateless workers (which
    /// divide them, [`Events::split`]), while this handle keeps the programs attached
    /// and the counters readable.
    pub fn take_events(&mut self) -> Option<Events> {
        self.events.take()
    }

    /// Current counter totals, summed over CPUs.
    ///
    /// # Errors
    /// A counter map cannot be read.
    pub fn counters(&self) -> Result<Counters, KernelError> {
        Ok(Counters {
            xdp: self.read_counters(MAP_XDP_COUNTERS, XdpReason::COUNT)?,
            tc: self.read_counters(MAP_TC_COUNTERS, TcReason::COUNT)?,
        })
    }

    fn read_counters(&self, name: &'static str, n: u32) -> Result<Vec<u64>, KernelError> {
        let map = self
            .ebpf
            .map(name)
            .ok_or(KernelError::Missing { kind: "map", name })?;
        let arr: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|source| KernelError::Map { map: name, source })?;
        (0..n)
            .map(|i| {
                arr.get(&i, 0)
                    .map(|v| v.iter().sum())
                    .map_err(|source| KernelError::Map { map: name, source })
            })
            .collect()
    }

    /// The loaded object, for test runs ([`testrun`]).
    pub(crate) fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

/// The pass-everything XDP program ([`probe_common::PROG_XDP_PEER`]) attached to the
/// far end of a veth pair, for labs and benchmarks: a veth delivers the frames its XDP
/// program sends back (`XDP_TX`, resets from XDP) only to a peer that runs an XDP
/// program. Detached when dropped.
pub struct PeerPass {
    /// Owns the program and its link.
    _ebpf: Ebpf,
}

impl PeerPass {
    /// Load the program and attach it to `iface` (native mode). Must run in the
    /// network namespace that holds `iface`.
    ///
    /// # Errors
    /// As [`KernelProbes::load`] and [`KernelProbes::attach`].
    pub fn attach(iface: &str) -> Result<Self, KernelError> {
        availability()?;
        let bytes = object().ok_or(KernelError::NotEmbedded)?;
        let mut ebpf = Ebpf::load(bytes).map_err(KernelError::Object)?;
        let xdp: &mut Xdp = program(&mut ebpf, PROG_XDP_PEER)?;
        xdp.load().map_err(|source| KernelError::Load {
            program: PROG_XDP_PEER,
            source,
        })?;
        xdp.attach(iface, XdpMode::Driver)
            .map_err(|source| KernelError::Attach {
                program: PROG_XDP_PEER,
                iface: iface.to_owned(),
                source,
            })?;
        Ok(Self { _ebpf: ebpf })
    }
}

/// The loaded object's program `name` as its type (`Xdp`, `SchedClassifier`).
pub(crate) fn program<'a, P>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut P, KernelError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program>,
{
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or(KernelError::Missing {
            kind: "program",
            name,
        })
}

/// Format an error with its sources, one line.
#[must_use]
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
