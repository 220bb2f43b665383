//! Test-host harness: network namespaces joined by veth pairs.
//!
//! Used by the integration tests and by `sonde demo`. Safety rules, enforced here:
//!
//! * only addresses from the benchmarking range 198.18.0.0/15 are ever configured;
//! * no veth end is ever created in, or moved to, the root namespace;
//! * no default route is ever added;
//! * every namespace, and every process spawned inside it, is removed by a `Drop` guard, also
//!   when a test panics; a guard only ever deletes the namespace it created itself;
//! * names carry a unique suffix (pid, counter, random hex), so parallel tests and leftovers of
//!   a killed run never collide.

mod netns;
mod serve;
mod switch;
mod veth;

#[cfg(test)]
mod tests;

pub use netns::{in_netns, Netns};
pub use serve::HttpResponder;
pub use switch::{Port, Switch};
pub use veth::{veth_pair, VethEnd, VethPair};

use std::net::Ipv4Addr;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Address of the prober end in [`Lab::two_hosts`].
pub const PROBER_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Address of the target end in [`Lab::two_hosts`].
pub const TARGET_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Prefix length of the link between prober and target in [`Lab::two_hosts`].
pub const LINK_PREFIX_LEN: u8 = 24;

/// The only address range the lab ever configures: 198.18.0.0/15 (RFC 2544 benchmarking).
pub const LAB_RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 0), 15);

/// Errors of the lab harness.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A command ran but exited unsuccessfully.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        /// The command line that failed.
        cmd: String,
        /// Its exit status.
        status: ExitStatus,
        /// What it wrote to stderr (trimmed).
        stderr: String,
    },
    /// A command could not be started at all (missing binary, ...).
    #[error("cannot run `{cmd}`: {source}")]
    Spawn {
        /// The command line that could not be started.
        cmd: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A system call or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An address or prefix outside 198.18.0.0/15 was requested.
    #[error("refusing {0}: lab addresses must lie inside 198.18.0.0/15")]
    OutsideLabRange(String),
    /// A command's output could not be understood.
    #[error("unexpected output from `{cmd}`: {detail}")]
    Parse {
        /// The command line whose output was parsed.
        cmd: String,
        /// What was wrong with it.
        detail: String,
    },
    /// Waiting for a condition timed out.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// The condition waited for.
        what: String,
        /// How long was waited.
        after: std::time::Duration,
    },
    /// A process id that the guard does not own was given.
    #[error("process {0} was not spawned by this namespace guard")]
    NotOurChild(u32),
}

/// Result type of the lab harness.
pub type Result<T, E = LabError> = std::result::Result<T, E>;

/// Checks that the lab can run here: effective uid 0 and a working `ip` (iproute2).
///
/// Returns `Err(reason)` otherwise; pass the reason to [`skip_or_fail`].
pub fn privileged() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("lab tests need root (CAP_NET_ADMIN, CAP_SYS_ADMIN)".into());
    }
    match Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("`ip -V` failed ({s})")),
        Err(e) => Err(format!("`ip` (iproute2) is not usable: {e}")),
    }
}

/// Reports a test that cannot run: panics with `reason` when the environment variable
/// `SONDE_REQUIRE_PRIVILEGED=1` is set, otherwise prints `SKIPPED: reason` to stderr.
pub fn skip_or_fail(reason: &str) {
    if std::env::var("SONDE_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("privileged test cannot run (SONDE_REQUIRE_PRIVILEGED=1): {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}

/// Convenience for tests of the kernel programs: `true` when [`privileged_or_skip`]
/// holds and the programs can be loaded ([`crate::ebpf::availability`]), otherwise
/// calls [`skip_or_fail`] with the reason and returns `false`.
pub fn kernel_programs_or_skip() -> bool {
    if !privileged_or_skip() {
        return false;
    }
    match crate::ebpf::availability() {
        Ok(()) => true,
        Err(e) => {
            skip_or_fail(&format!("kernel programs unavailable: {e}"));
            false
        }
    }
}

/// Convenience for tests: `true` when [`privileged`] holds, otherwise calls [`skip_or_fail`]
/// and returns `false` (so the test can `return`).
pub fn privileged_or_skip() -> bool {
    match privileged() {
        Ok(()) => true,
        Err(reason) => {
            skip_or_fail(&reason);
            false
        }
    }
}

/// Two hosts: a prober namespace and a target namespace joined by one veth pair
/// (prober [`PROBER_ADDR`], target [`TARGET_ADDR`], /[`LINK_PREFIX_LEN`]).
///
/// Dropping the `Lab` kills the processes spawned in both namespaces and deletes them
/// (which also destroys the veth pair).
#[derive(Debug)]
pub struct Lab {
    /// The namespace the prober (sonde) runs in.
    pub prober: Netns,
    /// The namespace holding the targets.
    pub target: Netns,
    /// The veth pair: `link.a` is in `prober`, `link.b` in `target`.
    pub link: VethPair,
}

impl Lab {
    /// Creates the prober and target namespaces and the veth pair between them.
    pub fn two_hosts() -> Result<Lab> {
        let prober = Netns::new("prober")?;
        let target = Netns::new("target")?;
        let link = veth_pair(&prober, &target, PROBER_ADDR, TARGET_ADDR, LINK_PREFIX_LEN)?;
        Ok(Lab {
            prober,
            target,
            link,
        })
    }

    /// Makes the target answer for a whole range (e.g. `"198.19.0.0/16"`): a `local` route on
    /// its loopback, plus in the prober a route for the range via [`TARGET_ADDR`].
    pub fn add_target_range(&self, cidr: &str) -> Result<()> {
        self.target.add_local_route(cidr)?;
        self.prober.add_route(cidr, TARGET_ADDR)
    }
}

/// Whether `addr` lies inside 198.18.0.0/15.
pub fn in_lab_range(addr: Ipv4Addr) -> bool {
    u32::from(addr) & 0xfffe_0000 == u32::from(LAB_RANGE.0)
}

/// Checks that the prefix `addr/len` lies entirely inside 198.18.0.0/15.
pub(crate) fn check_prefix(addr: Ipv4Addr, len: u8) -> Result<()> {
    if !in_lab_range(addr) || !(LAB_RANGE.1..=32).contains(&len) {
        return Err(LabError::OutsideLabRange(format!("{addr}/{len}")));
    }
    Ok(())
}

/// Parses `a.b.c.d/len` (or a bare address, meaning /32) and checks it lies inside the lab
/// range.
pub(crate) fn parse_lab_cidr(cidr: &str) -> Result<(Ipv4Addr, u8)> {
    let bad = || LabError::OutsideLabRange(format!("{cidr:?}"));
    let (addr, len) = match cidr.split_once('/') {
        Some((a, l)) => (a, l.parse::<u8>().map_err(|_| bad())?),
        None => (cidr, 32),
    };
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    check_prefix(addr, len)?;
    Ok((addr, len))
}

/// A unique name suffix: pid, per-process counter and random bits.
///
/// `short` is 12 hex characters (for interface names, IFNAMSIZ = 16 with the NUL);
/// `long` is human readable (for namespace names).
pub(crate) struct Suffix {
    pub(crate) short: String,
    pub(crate) long: String,
}

pub(crate) fn unique_suffix() -> Suffix {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let pid = std::process::id();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let r: u16 = rand::random::<u16>() & 0xfff;
    Suffix {
        short: format!("{:06x}{:03x}{:03x}", pid & 0xff_ffff, n & 0xfff, r),
        long: format!("{pid}-{n}-{r:03x}"),
    }
}

/// Renders a command line for error messages.
pub(crate) fn cmdline(args: &[&str]) -> String {
    args.join(" ")
}

/// Runs `args` (program first) and returns its output whatever the exit status.
pub(crate) fn run_unchecked(args: &[&str]) -> Result<Output> {
    let (prog, rest) = args.split_first().expect("empty command line");
    Command::new(prog)
        .args(rest)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn {
            cmd: cmdline(args),
            source,
        })
}

/// Runs `args` (program first); a non-zero exit becomes [`LabError::Command`].
pub(crate) fn run(args: &[&str]) -> Result<Output> {
    let out = run_unchecked(args)?;
    check_output(args, out)
}

/// Turns an unsuccessful `Output` into [`LabError::Command`].
pub(crate) fn check_output(args: &[&str], out: Output) -> Result<Output> {
    if out.status.success() {
        Ok(out)
    } else {
        Err(LabError::Command {
            cmd: cmdline(args),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}
