//! etcd members inside a lab namespace (for cluster tests whose sonde nodes live in
//! namespaces and cannot reach the root namespace's loopback). The members are spawned
//! through the namespace guard, which kills them (by pid) when it drops.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use sonde::lab::Netns;

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

    /// Run etcdctl in the namespace against all members.
    ///
    /// # Errors
    /// etcdctl failed.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        let eps = self.endpoints().join(",");
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
