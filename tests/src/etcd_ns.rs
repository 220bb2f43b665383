//! etcd members inside a lab namespace (for cluster tests whose sonde nodes live in
//! namespaces and cannot reach the root namespace's loopback). The members are spawned
//! through the namespace guard, which kills them (by pid) when it drops; failure tests
//! kill, stop and restart single members by index, find the raft leader and replay a
//! prefix's history.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use sonde::lab::Netns;

/// One change of a key, as replayed by [`NsEtcd::history`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvEvent {
    /// Revision of the change.
    pub revision: i64,
    /// The key.
    pub key: String,
    /// The new value; `None` for a deletion.
    pub value: Option<String>,
}

/// Whether process `pid` (a child not reaped yet) has exited: gone or a zombie.
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
        Err(_) => true,
    }
}

/// Standard base64 (etcdctl's JSON encodes keys and values so), padding optional.
fn b64(s: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => bail!("invalid base64 character {:?}", char::from(c)),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff)?);
        }
    }
    Ok(out)
}

/// A 3-member (or n-member) etcd cluster listening on `addr` inside `ns`.
pub struct NsEtcd<'a> {
    /// The namespace.
    ns: &'a Netns,
    /// Address the members listen on.
    addr: Ipv4Addr,
    /// (name, client port, peer port, pid) per member.
    members: Vec<(String, u16, u16, Option<u32>)>,
    /// Data and log directory.
    dir: PathBuf,
}

impl<'a> NsEtcd<'a> {
    /// Start `n` members on `addr` in `ns`, ports from `base_port` (client) and
    /// `base_port + 100` (peer), and wait until the cluster is healthy.
    ///
    /// # Errors
    /// A member did not start or the cluster is not healthy within 10 s.
    pub fn start(
        ns: &'a Netns,
        addr: Ipv4Addr,
        n: usize,
        base_port: u16,
        dir: PathBuf,
    ) -> Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let members: Vec<(String, u16, u16, Option<u32>)> = (0..n)
            .map(|i| {
                let i16 = u16::try_from(i).unwrap_or(0);
                (
                    format!("m{i}"),
                    base_port + i16,
                    base_port + 100 + i16,
                    None,
                )
            })
            .collect();
        let mut me = Self {
            ns,
            addr,
            members,
            dir,
        };
        for i in 0..n {
            me.spawn(i, "new")?;
        }
        me.wait_healthy(Duration::from_secs(10))?;
        Ok(me)
    }

    fn spawn(&mut self, i: usize, state: &str) -> Result<()> {
        let url = |p: u16| format!("http://{}:{p}", self.addr);
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|(n, _, p, _)| format!("{n}={}", url(*p)))
            .collect();
        let (name, cport, pport, _) = self.members[i].clone();
        let data = self.dir.join(format!("{name}.etcd")).display().to_string();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))?;
        let (c, p, init) = (url(cport), url(pport), initial.join(","));
        let argv = [
            "etcd",
            "--name",
            &name,
            "--data-dir",
            &data,
            "--listen-client-urls",
            &c,
            "--advertise-client-urls",
            &c,
            "--listen-peer-urls",
            &p,
            "--initial-advertise-peer-urls",
            &p,
            "--initial-cluster",
            &init,
            "--initial-cluster-token",
            "sonde-test",
            "--initial-cluster-state",
            state,
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
        ];
        let pid = self
            .ns
            .spawn_with(&argv, Stdio::null(), Stdio::from(log))
            .context("spawning etcd")?;
        self.members[i].3 = Some(pid);
        Ok(())
    }

    /// Client URLs of every member.
    #[must_use]
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|(_, c, _, _)| format!("http://{}:{c}", self.addr))
            .collect()
    }

    /// Client URLs of the members that run now (started and not killed or stopped).
    #[must_use]
    pub fn live_endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.3.is_some())
            .map(|(_, c, _, _)| format!("http://{}:{c}", self.addr))
            .collect()
    }

    /// Number of members (running or not).
    #[must_use]
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True when the cluster has no member.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Pid of member `i`, `None` while it is down.
    #[must_use]
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members.get(i).and_then(|m| m.3)
    }

    /// kill -9 member `i` (through the namespace guard, which reaps it).
    ///
    /// # Errors
    /// The member is not running, or killing it failed.
    ///
    /// # Panics
    /// `i` is not a member's index.
    pub fn kill(&mut self, i: usize) -> Result<()> {
        let pid = self.members[i]
            .3
            .take()
            .with_context(|| format!("etcd member {i} is not running"))?;
        self.ns.kill(pid).context("killing an etcd member")?;
        Ok(())
    }

    /// Stop member `i` cleanly: SIGTERM, wait (at most 5 s) until it has exited, then reap
    /// it (SIGKILL if it has not exited by then).
    ///
    /// # Errors
    /// The member is not running, or reaping it failed.
    ///
    /// # Panics
    /// `i` is not a member's index.
    pub fn stop(&mut self, i: usize) -> Result<()> {
        let pid = self.members[i]
            .3
            .take()
            .with_context(|| format!("etcd member {i} is not running"))?;
        let raw = libc::pid_t::try_from(pid)?;
        // SAFETY: kill(2) on the pid of a child the namespace guard holds and has not
        // reaped yet, so the pid cannot have been reused.
        unsafe { libc::kill(raw, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) && !exited(pid) {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.ns.kill(pid).context("reaping an etcd member")?;
        Ok(())
    }

    /// Start member `i` again on its data directory (after [`NsEtcd::kill`] or
    /// [`NsEtcd::stop`]). Does not wait for it to be healthy.
    ///
    /// # Errors
    /// The member runs already, or it could not be spawned.
    ///
    /// # Panics
    /// `i` is not a member's index.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        if self.members[i].3.is_some() {
            bail!("etcd member {i} is running already");
        }
        self.spawn(i, "existing")
    }

    /// The raft leader, as the index of its member, asking the running members
    /// (`etcdctl endpoint status -w json`); `None` when no running member knows one.
    ///
    /// # Errors
    /// etcdctl failed or printed something unexpected.
    pub fn leader(&self) -> Result<Option<usize>> {
        let out = self.ctl(&["endpoint", "status", "-w", "json"])?;
        let v: Value = serde_json::from_str(&out).context("endpoint status JSON")?;
        for e in v.as_array().into_iter().flatten() {
            let st = &e["Status"];
            let (me, leader) = (st["header"]["member_id"].as_u64(), st["leader"].as_u64());
            if me.is_some() && me == leader {
                let ep = e["Endpoint"].as_str().unwrap_or_default();
                return Ok(self.endpoints().iter().position(|x| x == ep));
            }
        }
        Ok(None)
    }

    /// The current store revision.
    ///
    /// # Errors
    /// etcdctl failed.
    pub fn revision(&self) -> Result<i64> {
        // Reading a key that does not exist still answers with the store's revision.
        let out = self.ctl(&["get", "/sonde-test/no-such-key", "-w", "json"])?;
        let v: Value = serde_json::from_str(&out).context("get JSON")?;
        v["header"]["revision"]
            .as_i64()
            .context("no revision in the header")
    }

    /// One key's value and mod revision, `None` when it does not exist.
    ///
    /// # Errors
    /// etcdctl failed.
    pub fn get(&self, key: &str) -> Result<Option<(String, i64)>> {
        let out = self.ctl(&["get", key, "-w", "json"])?;
        let v: Value = serde_json::from_str(&out).context("get JSON")?;
        let Some(kv) = v["kvs"].as_array().and_then(|a| a.first()) else {
            return Ok(None);
        };
        let value = String::from_utf8(b64(kv["value"].as_str().unwrap_or_default())?)?;
        Ok(Some((value, kv["mod_revision"].as_i64().unwrap_or(0))))
    }

    /// Every change under `prefix` from revision `from` on, in revision order, read by
    /// replaying a watch (`etcdctl watch --rev`) for `settle`. The replay is checked
    /// against the keys as they are now (each one changed since `from` must be in it) and
    /// retried with a longer `settle` (up to 3 times) when it came out short, e.g. on a
    /// loaded machine.
    ///
    /// # Errors
    /// etcdctl failed, its output is not what was expected, or the replay stayed short.
    pub fn history(&self, prefix: &str, from: i64, settle: Duration) -> Result<Vec<KvEvent>> {
        let mut settle = settle;
        for _ in 0..3 {
            let events = self.replay(prefix, from, settle)?;
            let out = self.ctl(&["get", "--prefix", prefix, "-w", "json"])?;
            let now: Value = serde_json::from_str(&out).context("get JSON")?;
            let mut complete = true;
            for kv in now["kvs"].as_array().into_iter().flatten() {
                let rev = kv["mod_revision"].as_i64().unwrap_or(0);
                let key = String::from_utf8(b64(kv["key"].as_str().unwrap_or_default())?)?;
                if rev >= from && !events.iter().any(|e| e.revision == rev && e.key == key) {
                    complete = false;
                }
            }
            if complete {
                return Ok(events);
            }
            settle *= 2;
        }
        bail!("the history of {prefix} from {from} stayed incomplete")
    }

    fn replay(&self, prefix: &str, from: i64, settle: Duration) -> Result<Vec<KvEvent>> {
        let eps = self.live_endpoints().join(",");
        let secs = format!("{:.1}", settle.as_secs_f64());
        let rev = format!("--rev={}", from.max(1));
        let argv = [
            "timeout",
            &secs,
            "env",
            "ETCDCTL_API=3",
            "etcdctl",
            "--endpoints",
            &eps,
            "watch",
            "--prefix",
            prefix,
            &rev,
            "-w",
            "json",
        ];
        let out = self.ns.exec_unchecked(&argv)?;
        // `timeout` ends the watch: exit status 124 is the normal case.
        if !out.status.success() && out.status.code() != Some(124) {
            bail!(
                "etcdctl watch {prefix}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut events = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // A line cut short by `timeout` is left out (the check above catches it).
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if v["CompactRevision"].as_i64().unwrap_or(0) > 0 {
                bail!("history under {prefix} from {from} was compacted");
            }
            for ev in v["Events"].as_array().into_iter().flatten() {
                let kv = &ev["kv"];
                let key = String::from_utf8(b64(kv["key"].as_str().unwrap_or_default())?)?;
                let value = if ev["type"].as_i64().unwrap_or(0) == 1 {
                    None
                } else {
                    Some(String::from_utf8(b64(kv["value"]
                        .as_str()
                        .unwrap_or_default())?)?)
                };
                events.push(KvEvent {
                    revision: kv["mod_revision"].as_i64().unwrap_or(0),
                    key,
                    value,
                });
            }
        }
        Ok(events)
    }

    /// Run etcdctl in the namespace against every running member.
    ///
    /// # Errors
    /// etcdctl failed.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        let eps = self.live_endpoints().join(",");
        let mut argv = vec![
            "env",
            "ETCDCTL_API=3",
            "etcdctl",
            "--endpoints",
            &eps,
            "--command-timeout=3s",
        ];
        argv.extend_from_slice(args);
        let out = self.ns.exec_unchecked(&argv)?;
        if !out.status.success() {
            bail!("etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Put a key.
    ///
    /// # Errors
    /// etcdctl failed.
    pub fn put(&self, key: &str, value: &str) -> Result<()> {
        self.ctl(&["put", key, value]).map(drop)
    }

    /// Keys and values under a prefix.
    ///
    /// # Errors
    /// etcdctl failed.
    pub fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let out = self.ctl(&["get", "--prefix", prefix])?;
        let lines: Vec<&str> = out.lines().collect();
        Ok(lines
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0].to_owned(), c[1].to_owned()))
            .collect())
    }

    /// Wait until every member reports healthy.
    ///
    /// # Errors
    /// Not healthy within `limit`.
    pub fn wait_healthy(&self, limit: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if self.ctl(&["endpoint", "health"]).is_ok() {
                return Ok(());
            }
            if start.elapsed() > limit {
                bail!("etcd not healthy within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
