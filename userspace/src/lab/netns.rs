//! The [`Netns`] guard: a named network namespace owned by this process.

use super::{
    check_output, check_prefix, cmdline, parse_lab_cidr, run, run_unchecked, unique_suffix,
    LabError, Result,
};
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Serialises `ip netns add`/`del` within this process: iproute2 sets up the shared
/// `/run/netns` mount on first use and concurrent first uses can race.
static NETNS_ADMIN: Mutex<()> = Mutex::new(());

fn admin_lock() -> MutexGuard<'static, ()> {
    NETNS_ADMIN.lock().unwrap_or_else(|e| e.into_inner())
}

/// A network namespace created by this guard (`ip netns add`), with loopback up.
///
/// `Drop` kills (SIGKILL to the process group, then waits for) every process started with
/// [`Netns::spawn`], kills any other process still inside the namespace, then runs
/// `ip netns del`. Cleanup failures are printed to stderr; `Drop` never panics.
#[derive(Debug)]
pub struct Netns {
    name: String,
    children: Mutex<Vec<Child>>,
}

impl Netns {
    /// Creates namespace `sonde-<tag>-<pid>-<counter>-<hex>` and brings its loopback up.
    ///
    /// `tag` is a short readable label (letters, digits, `-`; at most 16 characters).
    pub fn new(tag: &str) -> Result<Netns> {
        let tag: String = tag
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(16)
            .collect();
        let name = format!("sonde-{tag}-{}", unique_suffix().long);
        {
            let _lock = admin_lock();
            run(&["ip", "netns", "add", &name])?;
        }
        // From here on the guard owns the namespace: an error below deletes it again.
        let ns = Netns {
            name,
            children: Mutex::new(Vec::new()),
        };
        ns.ip(&["link", "set", "dev", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace name (as shown by `ip netns list`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace file, `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `ip -n <name> args...`; a non-zero exit is an error.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        let mut full = vec!["ip", "-n", self.name.as_str()];
        full.extend_from_slice(args);
        run(&full)
    }

    /// Runs `cmd` inside the namespace (`ip netns exec`) and waits for it; a non-zero exit
    /// is [`LabError::Command`].
    pub fn exec(&self, cmd: &[&str]) -> Result<Output> {
        let full = self.exec_line(cmd);
        check_output(&full, run_unchecked(&full)?)
    }

    /// Like [`Netns::exec`] but returns the output whatever the exit status.
    pub fn exec_unchecked(&self, cmd: &[&str]) -> Result<Output> {
        run_unchecked(&self.exec_line(cmd))
    }

    fn exec_line<'a>(&'a self, cmd: &[&'a str]) -> Vec<&'a str> {
        let mut full = vec!["ip", "netns", "exec", self.name.as_str()];
        full.extend_from_slice(cmd);
        full
    }

    /// Starts `cmd` in the background inside the namespace and returns its pid.
    ///
    /// The process is owned by the guard (killed on drop, see [`Netns::kill`]). It runs in its
    /// own process group, so its descendants are killed with it. stdin and stdout are
    /// `/dev/null`, stderr is inherited.
    pub fn spawn(&self, cmd: &[&str]) -> Result<u32> {
        self.spawn_with(cmd, Stdio::null(), Stdio::inherit())
    }

    /// Like [`Netns::spawn`] with caller-chosen stdout and stderr (e.g. a log file).
    pub fn spawn_with(&self, cmd: &[&str], stdout: Stdio, stderr: Stdio) -> Result<u32> {
        let full = self.exec_line(cmd);
        let child = Command::new(full[0])
            .args(&full[1..])
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .map_err(|source| LabError::Spawn {
                cmd: cmdline(&full),
                source,
            })?;
        let pid = child.id();
        self.children().push(child);
        Ok(pid)
    }

    /// Kills (SIGKILL to its process group) and reaps a process started by
    /// [`Netns::spawn`]; e.g. to stop one host of a cluster test.
    pub fn kill(&self, pid: u32) -> Result<()> {
        let child = {
            let mut children = self.children();
            let i = children
                .iter()
                .position(|c| c.id() == pid)
                .ok_or(LabError::NotOurChild(pid))?;
            children.swap_remove(i)
        };
        kill_and_reap(child).map_err(|source| LabError::Io {
            what: format!("killing pid {pid} in {}", self.name),
            source,
        })
    }

    /// Sets a sysctl inside the namespace (`sysctl -w key=value`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    /// Runs one nftables command inside the namespace, e.g.
    /// `ns.nft("add table inet lab")`.
    pub fn nft(&self, command: &str) -> Result<()> {
        self.exec(&["nft", command]).map(drop)
    }

    /// Sets link `dev` up or down (down cuts the host off the lab network).
    pub fn set_link_up(&self, dev: &str, up: bool) -> Result<()> {
        let state = if up { "up" } else { "down" };
        self.ip(&["link", "set", "dev", dev, state]).map(drop)
    }

    /// Makes this namespace answer for a whole range (`ip route add local CIDR dev lo`): its
    /// kernel then answers SYN, ICMP echo and UDP for every address of it.
    /// The range must lie inside 198.18.0.0/15.
    pub fn add_local_route(&self, cidr: &str) -> Result<()> {
        let (addr, len) = parse_lab_cidr(cidr)?;
        let dst = format!("{addr}/{len}");
        self.ip(&["route", "add", "local", &dst, "dev", "lo"])
            .map(drop)
    }

    /// Adds a route for `cidr` via `via` (both inside 198.18.0.0/15; never a default route).
    pub fn add_route(&self, cidr: &str, via: Ipv4Addr) -> Result<()> {
        let (addr, len) = parse_lab_cidr(cidr)?;
        check_prefix(via, 32)?;
        let (dst, gw) = (format!("{addr}/{len}"), via.to_string());
        self.ip(&["route", "add", &dst, "via", &gw]).map(drop)
    }

    /// Polls `ss -ltn` inside the namespace until some TCP socket listens on `port`.
    pub fn wait_listening(&self, port: u16, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let suffix = format!(":{port}");
        loop {
            let out = self.exec(&["ss", "-H", "-l", "-t", "-n"])?;
            let listening = String::from_utf8_lossy(&out.stdout).lines().any(|l| {
                // State Recv-Q Send-Q Local:Port Peer:Port
                l.split_whitespace()
                    .nth(3)
                    .is_some_and(|local| local.ends_with(&suffix))
            });
            if listening {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(LabError::Timeout {
                    what: format!("a TCP listener on port {port} in {}", self.name),
                    after: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Number of TCP sockets in state SYN-RECV inside the namespace.
    pub fn syn_recv_count(&self) -> Result<usize> {
        let out = self.exec(&["ss", "-H", "-t", "-a", "-n", "state", "syn-recv"])?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count())
    }

    /// Runs `f` on a new thread that first joined this namespace, see [`in_netns`].
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R> {
        in_netns(self, f)
    }

    fn children(&self) -> MutexGuard<'_, Vec<Child>> {
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pids of processes inside the namespace (`ip netns pids`), except this process.
    pub fn pids(&self) -> Result<Vec<u32>> {
        let out = run(&["ip", "netns", "pids", &self.name])?;
        let me = std::process::id();
        Ok(String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|&p| p != me)
            .collect())
    }

    fn cleanup(&mut self) {
        let children = std::mem::take(&mut *self.children());
        for child in children {
            let pid = child.id();
            if let Err(e) = kill_and_reap(child) {
                warn(&format!("killing pid {pid} in {}: {e}", self.name));
            }
        }
        // Anything else still in the namespace (started by `exec` and escaped, or a daemon
        // that left its process group) would keep the namespace alive: it is ours, kill it.
        match self.pids() {
            Ok(pids) => {
                for pid in pids {
                    warn(&format!("killing leftover pid {pid} in {}", self.name));
                    let Ok(pid) = libc::pid_t::try_from(pid) else {
                        continue;
                    };
                    // SAFETY: plain syscall with integer arguments.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            Err(e) => warn(&format!("listing pids of {}: {e}", self.name)),
        }
        let _lock = admin_lock();
        if let Err(e) = run(&["ip", "netns", "del", &self.name]) {
            warn(&format!("deleting namespace {}: {e}", self.name));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Never let a cleanup problem turn into a panic (possibly during unwinding).
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.cleanup()));
        if result.is_err() {
            eprintln!("sonde lab: cleanup of namespace {} panicked", self.name);
        }
    }
}

fn warn(msg: &str) {
    eprintln!("sonde lab: {msg}");
    tracing::warn!("lab cleanup: {msg}");
}

/// SIGKILL to the child's process group (it was spawned as a group leader), then wait for it.
///
/// The guard never reaps a child before this point, so its pid (= the pgid) cannot have been
/// recycled: the signal can only reach the group we created, even if the leader already
/// exited while descendants live on.
fn kill_and_reap(mut child: Child) -> std::io::Result<()> {
    if let Ok(pgid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: plain syscall; the negative pid addresses the group we created.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
    // Belt and braces for the leader itself (a no-op if it is already dead).
    let _ = child.kill();
    child.wait().map(drop)
}

/// Runs `f` on a new thread that has joined `ns` (`setns(2)` with `CLONE_NEWNET` on
/// `/run/netns/<name>`), waits for it and returns its result.
///
/// Sockets, `if_nametoindex`, netlink etc. used inside `f` live in the namespace, and
/// sockets created there stay in it after `f` returns. (`/proc/self/net` still shows the main
/// thread's namespace; use `/proc/thread-self/net`.) A panic in `f` is resumed in the
/// caller; an error opening or entering the namespace is returned.
pub fn in_netns<R: Send>(ns: &Netns, f: impl FnOnce() -> R + Send) -> Result<R> {
    let path = ns.path();
    let file = File::open(&path).map_err(|source| LabError::Io {
        what: format!("opening {}", path.display()),
        source,
    })?;
    std::thread::scope(|scope| {
        let handle = scope.spawn(move || {
            // SAFETY: `file` is an open namespace file; setns only affects this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(LabError::Io {
                    what: format!("setns({}, CLONE_NEWNET)", path.display()),
                    source: std::io::Error::last_os_error(),
                });
            }
            drop(file);
            Ok(f())
        });
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}
