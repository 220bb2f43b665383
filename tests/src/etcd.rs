//! A real etcd cluster on loopback for tests (no root needed).
//!
//! [`EtcdCluster::start`] runs `etcd` (3.4, `/usr/bin/etcd`; override with `SONDE_ETCD`)
//! members on 127.0.0.1 with free ports picked by the kernel, one temporary data directory
//! each, fast raft timing (`--heartbeat-interval 50 --election-timeout 500`) and one log
//! file per member. Members can be killed (SIGKILL), stopped (SIGTERM) and started again
//! with their data. Health and leadership are read with `etcdctl` (`SONDE_ETCDCTL`), whose
//! `endpoint status` is etcd's Maintenance `Status` call: a member is the raft leader when
//! the leader id it reports equals its own member id.
//!
//! Only processes this harness started are ever signalled, by their own pid. Dropping the
//! cluster kills them and removes the directory, also when a test panics (the log tails are
//! then printed; set `SONDE_KEEP_ETCD=1` to keep the directory). Members are spawned from a
//! thread the cluster owns, with `PR_SET_PDEATHSIG`, so they also die if the test process
//! is killed.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context, Result};

/// How long a (re)started member may take to listen on its client port.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a stopped member may take to exit after SIGTERM before it is SIGKILLed. etcd
/// 3.4's graceful stop waits for clients' open streams for up to its request timeout (~6 s
/// here), so a member serving watches usually takes all of it.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// One member's view of the cluster, from its `Status` answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    /// This member's id.
    pub member_id: u64,
    /// The raft leader's id as this member knows it (0: none).
    pub leader: u64,
    /// Raft term.
    pub raft_term: u64,
    /// Store revision.
    pub revision: i64,
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Mutex<Option<Child>>,
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// A running etcd cluster of real processes; see the module doc.
pub struct EtcdCluster {
    base: PathBuf,
    token: String,
    members: Vec<Member>,
    spawner: Option<(mpsc::Sender<SpawnRequest>, JoinHandle<()>)>,
}

impl EtcdCluster {
    /// Starts `members` members and waits until each listens on its client port (not until
    /// the cluster is healthy: see [`EtcdCluster::wait_healthy`]). Retries with new ports if
    /// one was taken meanwhile.
    pub fn start(members: usize) -> Result<EtcdCluster> {
        ensure!(members >= 1, "an etcd cluster needs at least one member");
        let mut last = None;
        for _ in 0..5 {
            match Self::try_start(members) {
                Ok(c) => return Ok(c),
                Err(e) if format!("{e:#}").contains("address already in use") => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("etcd did not start")))
    }

    fn try_start(n: usize) -> Result<EtcdCluster> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.subsec_nanos();
        let unique = format!(
            "sonde-etcd-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let base = std::env::temp_dir().join(&unique);
        fs::create_dir(&base).with_context(|| format!("creating {}", base.display()))?;
        fs::set_permissions(&base, fs::Permissions::from_mode(0o700))?;
        let ports = free_ports(2 * n)?;
        let members = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                data_dir: base.join(format!("m{i}.etcd")),
                log: base.join(format!("m{i}.log")),
                child: Mutex::new(None),
            })
            .collect();
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        let thread = thread::Builder::new()
            .name("etcd-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })?;
        let cluster = EtcdCluster {
            base,
            token: unique,
            members,
            spawner: Some((tx, thread)),
        };
        // One at a time, each serving its peers before the next starts: a new member first
        // asks the others' peer ports whether it was bootstrapped already, and a port that
        // accepts but does not serve yet stalls that question for 1 s per peer.
        for i in 0..n {
            cluster.spawn_member(i, "new")?;
            cluster.wait_serving(i, true)?;
        }
        for i in 0..n {
            cluster.wait_listening(i)?;
        }
        Ok(cluster)
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a cluster has at least one member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Client URLs (`http://127.0.0.1:PORT`), by member index.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// Client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client_port)
    }

    /// Log file of member `i` (all its runs, appended).
    pub fn log_path(&self, i: usize) -> &Path {
        &self.members[i].log
    }

    /// The last `lines` lines of member `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let text = fs::read_to_string(&self.members[i].log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Whether member `i`'s process is running.
    pub fn is_running(&self, i: usize) -> bool {
        let mut child = self.child(i);
        match child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                // Exited by itself: reap it so a restart is possible.
                *child = None;
                false
            }
            None => false,
        }
    }

    /// Polls until every running member answers `etcdctl endpoint health` (a quorum read);
    /// returns how long it took. Fails at once if a member exited by itself.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let mut running = Vec::new();
            for i in 0..self.members.len() {
                if self.child(i).is_none() {
                    continue; // stopped on purpose
                }
                if !self.is_running(i) {
                    bail!(
                        "etcd member {i} exited by itself; log tail:\n{}",
                        self.log_tail(i, 20)
                    );
                }
                running.push(i);
            }
            ensure!(!running.is_empty(), "no etcd member is running");
            // One short-timeout `etcdctl endpoint health` per member, all at once.
            let checks: Vec<(usize, io::Result<Child>)> = running
                .iter()
                .map(|&i| {
                    let mut cmd = self.etcdctl_cmd(i, Duration::from_millis(400));
                    let child = cmd
                        .args(["endpoint", "health"])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn();
                    (i, child)
                })
                .collect();
            let unhealthy = checks
                .into_iter()
                .filter_map(|(i, c)| {
                    let ok = c.and_then(|mut c| c.wait()).is_ok_and(|st| st.success());
                    (!ok).then_some(i)
                })
                .min();
            match unhealthy {
                None => return Ok(start.elapsed()),
                Some(i) if start.elapsed() >= timeout => bail!(
                    "etcd member {i} ({}) not healthy within {timeout:?}; log tail:\n{}",
                    self.endpoint(i),
                    self.log_tail(i, 20)
                ),
                Some(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Member `i`'s `Status` answer, `None` if it is not running or does not answer.
    pub fn member_status(&self, i: usize) -> Option<MemberStatus> {
        if !self.is_running(i) {
            return None;
        }
        let out = self
            .etcdctl(i, &["endpoint", "status", "-w", "json"])
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let s = &v.get(0)?["Status"];
        Some(MemberStatus {
            member_id: s["header"]["member_id"].as_u64()?,
            leader: s["leader"].as_u64()?,
            raft_term: s["raftTerm"].as_u64().unwrap_or(0),
            revision: s["header"]["revision"].as_i64().unwrap_or(0),
        })
    }

    /// The member that is raft leader: a running member whose reported leader id is its own
    /// member id. `None` while there is none (e.g. during an election).
    pub fn leader(&self) -> Option<usize> {
        (0..self.members.len()).find(|&i| {
            self.member_status(i)
                .is_some_and(|s| s.leader != 0 && s.leader == s.member_id)
        })
    }

    /// SIGKILLs member `i` (its own pid only) and reaps it. No-op if it is not running.
    pub fn kill(&self, i: usize) -> Result<()> {
        if let Some(mut child) = self.child(i).take() {
            child.kill().ok();
            child
                .wait()
                .with_context(|| format!("reaping etcd member {i}"))?;
        }
        Ok(())
    }

    /// Stops member `i` gracefully (SIGTERM, SIGKILL after [`STOP_GRACE`]). No-op if it is
    /// not running.
    pub fn stop(&self, i: usize) -> Result<()> {
        self.stop_many(&[i])
    }

    /// Starts stopped or killed member `i` again with its data directory
    /// (`--initial-cluster-state existing`) and waits until it listens.
    pub fn restart(&self, i: usize) -> Result<()> {
        ensure!(!self.is_running(i), "etcd member {i} is already running");
        self.spawn_member(i, "existing")?;
        self.wait_listening(i)
    }

    /// Stops every running member gracefully: the followers together, then the raft leader
    /// (a leader stopped with the others tries to hand leadership to a member that is going
    /// away). Each may take up to [`STOP_GRACE`]: etcd's graceful gRPC stop waits for open
    /// streams (watches, lease keep-alives) to end.
    pub fn stop_all(&self) -> Result<()> {
        let leader = self.leader();
        let followers: Vec<usize> = (0..self.members.len())
            .filter(|&i| Some(i) != leader)
            .collect();
        self.stop_many(&followers)?;
        leader.map_or(Ok(()), |l| self.stop(l))
    }

    /// Starts every member that is not running, with its data, and waits until each listens.
    pub fn start_all(&self) -> Result<()> {
        let stopped: Vec<usize> = (0..self.members.len())
            .filter(|&i| !self.is_running(i))
            .collect();
        for &i in &stopped {
            self.spawn_member(i, "existing")?;
        }
        stopped.iter().try_for_each(|&i| self.wait_listening(i))
    }

    fn stop_many(&self, which: &[usize]) -> Result<()> {
        let mut children: Vec<(usize, Child)> = which
            .iter()
            .filter_map(|&i| self.child(i).take().map(|c| (i, c)))
            .collect();
        for (_, c) in &children {
            // SAFETY: plain syscall on the pid of a child we spawned and have not reaped.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_GRACE;
        for (i, c) in &mut children {
            while c.try_wait()?.is_none() {
                if Instant::now() >= deadline {
                    c.kill().ok();
                    c.wait()
                        .with_context(|| format!("reaping etcd member {i}"))?;
                    break;
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }

    fn child(&self, i: usize) -> MutexGuard<'_, Option<Child>> {
        self.members[i]
            .child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn spawn_member(&self, i: usize, state: &str) -> Result<()> {
        let m = &self.members[i];
        let url = |port: u16| format!("http://127.0.0.1:{port}");
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|o| format!("{}={}", o.name, url(o.peer_port)))
            .collect();
        let mut log = OpenOptions::new().create(true).append(true).open(&m.log)?;
        writeln!(
            log,
            "==== sonde harness: starting {} ({state}) ====",
            m.name
        )?;
        let mut cmd = Command::new(std::env::var("SONDE_ETCD").unwrap_or_else(|_| "etcd".into()));
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &url(m.client_port)])
            .args(["--advertise-client-urls", &url(m.client_port)])
            .args(["--listen-peer-urls", &url(m.peer_port)])
            .args(["--initial-advertise-peer-urls", &url(m.peer_port)])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", state])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        clear_etcd_env(&mut cmd);
        // SAFETY: the hook only makes async-signal-safe calls (prctl, getppid, _exit).
        let parent = std::process::id() as libc::pid_t;
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let (reply, answer) = mpsc::channel();
        let (tx, _) = self.spawner.as_ref().context("harness is shutting down")?;
        tx.send((cmd, reply))
            .map_err(|_| anyhow!("etcd spawner thread is gone"))?;
        let child = answer
            .recv()?
            .with_context(|| format!("spawning etcd member {i} (is etcd installed?)"))?;
        *self.child(i) = Some(child);
        Ok(())
    }

    fn wait_listening(&self, i: usize) -> Result<()> {
        self.wait_serving(i, false)
    }

    /// Waits until member `i` accepts connections on its client port, or (`peer`) answers
    /// HTTP on its peer port.
    fn wait_serving(&self, i: usize, peer: bool) -> Result<()> {
        let m = &self.members[i];
        let port = if peer { m.peer_port } else { m.client_port };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let start = Instant::now();
        loop {
            if !self.is_running(i) {
                bail!(
                    "etcd member {i} exited while starting; log tail:\n{}",
                    self.log_tail(i, 20)
                );
            }
            let up = TcpStream::connect_timeout(&addr, Duration::from_millis(100))
                .is_ok_and(|c| !peer || answers_http(c));
            if up {
                return Ok(());
            }
            if start.elapsed() > LISTEN_TIMEOUT {
                bail!(
                    "etcd member {i} not serving on {addr} within {LISTEN_TIMEOUT:?}; log \
                     tail:\n{}",
                    self.log_tail(i, 20)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn etcdctl(&self, i: usize, args: &[&str]) -> io::Result<Output> {
        let mut cmd = self.etcdctl_cmd(i, Duration::from_millis(700));
        cmd.args(args).output()
    }

    /// `etcdctl` against member `i` only, with `timeout` per command.
    fn etcdctl_cmd(&self, i: usize, timeout: Duration) -> Command {
        let mut cmd =
            Command::new(std::env::var("SONDE_ETCDCTL").unwrap_or_else(|_| "etcdctl".into()));
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint(i)))
            .arg("--dial-timeout=300ms")
            .arg(format!("--command-timeout={}ms", timeout.as_millis()))
            .stdin(Stdio::null());
        clear_etcd_env(&mut cmd);
        cmd
    }
}

/// `count` distinct free loopback ports (each bound while picking, then released). Taken
/// below the kernel's ephemeral range when there is room: ports from `bind(0)` are ephemeral
/// ones, which outgoing connections (the tests' clients, etcd's peers) also take, so a member
/// restarted later could find its port in use.
fn free_ports(count: usize) -> Result<Vec<u16>> {
    let low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let mut held = Vec::new();
    for attempt in 0..10_000 {
        if held.len() == count {
            break;
        }
        let port = if low > 12_000 && attempt < 5_000 {
            rand::random_range(10_000..low)
        } else {
            0
        };
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
        }
    }
    ensure!(held.len() == count, "no {count} free loopback ports");
    Ok(held
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<io::Result<_>>()?)
}

/// Whether the server on `conn` answers an HTTP request (etcd's peer port serves
/// `/version`) within 300 ms.
fn answers_http(mut conn: TcpStream) -> bool {
    let timeout = Some(Duration::from_millis(300));
    let mut head = [0u8; 8];
    conn.set_read_timeout(timeout).is_ok()
        && conn.set_write_timeout(timeout).is_ok()
        && conn
            .write_all(b"GET /version HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_ok()
        && io::Read::read_exact(&mut conn, &mut head).is_ok()
        && head.starts_with(b"HTTP/1.")
}

/// Keeps `ETCD_*`/`ETCDCTL_*` settings of the caller's environment out of the members.
fn clear_etcd_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if (k.starts_with("ETCD_") || k.starts_with("ETCDCTL_")) && k != "ETCDCTL_API" {
            cmd.env_remove(k.as_ref());
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            if let Some(mut child) = self.child(i).take() {
                child.kill().ok();
                child.wait().ok();
            }
        }
        if thread::panicking() {
            for i in 0..self.members.len() {
                eprintln!(
                    "---- etcd member {i} ({}) log tail ----\n{}",
                    self.log_path(i).display(),
                    self.log_tail(i, 15)
                );
            }
        }
        if let Some((tx, thread)) = self.spawner.take() {
            drop(tx);
            thread.join().ok();
        }
        if std::env::var_os("SONDE_KEEP_ETCD").is_some() {
            eprintln!("keeping etcd directory {}", self.base.display());
        } else {
            fs::remove_dir_all(&self.base).ok();
        }
    }
}
