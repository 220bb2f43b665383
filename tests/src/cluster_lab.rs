//! The lab of the cluster tests: a switch (198.18.1.0/24), a namespace for etcd at
//! 198.18.1.10, and a target namespace at 198.18.1.100 that answers for all of
//! 198.19.0.0/16 with an HTTP listener on :80. Nodes attach to the switch themselves.

use std::{net::Ipv4Addr, path::Path};

use sonde::lab::{HttpResponder, Netns, Switch};

use crate::{daemon::Daemon, etcd_ns::NsEtcd};

/// A sonde node of the lab: its namespace (which kills the daemon on drop) and daemon.
pub struct LabNode {
    /// The daemon.
    pub daemon: Daemon,
    /// Its namespace.
    pub ns: Netns,
}

/// etcd's address on the switch.
pub const ETCD_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
/// The target namespace's address on the switch.
pub const TARGET_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 100);

/// Fields drop in order: the listener, the target, etcd's namespace, the switch last.
pub struct ClusterLab {
    /// The HTTP listener on the target's :80 (answers "OK").
    pub web: HttpResponder,
    /// The target namespace.
    pub target: Netns,
    /// The namespace etcd runs in.
    pub etcd_host: Netns,
    /// The switch everything is attached to.
    pub sw: Switch,
}

impl ClusterLab {
    /// Switch, etcd namespace and target (with its listener).
    ///
    /// # Panics
    /// A namespace, link or listener cannot be set up.
    #[must_use]
    pub fn new() -> Self {
        let sw = Switch::new().expect("switch");
        let etcd_host = Netns::new("etcd").expect("etcd ns");
        sw.attach(&etcd_host, ETCD_ADDR, 24).expect("attach etcd");
        let target = Netns::new("tgt").expect("target ns");
        sw.attach(&target, TARGET_ADDR, 24).expect("attach target");
        target
            .add_local_route("198.19.0.0/16")
            .expect("local range");
        let web = HttpResponder::start(&target, "0.0.0.0:80", 200, "OK").expect("http");
        Self {
            web,
            target,
            etcd_host,
            sw,
        }
    }

    /// A real 3-member etcd cluster in the etcd namespace, data under `dir/etcd`.
    ///
    /// # Panics
    /// etcd does not start.
    #[must_use]
    pub fn etcd(&self, dir: &Path) -> NsEtcd<'_> {
        NsEtcd::start(&self.etcd_host, ETCD_ADDR, 3, 23790, dir.join("etcd")).expect("etcd")
    }
}

impl ClusterLab {
    /// Start node `n<i>` (198.18.1.<i>, a route to the targets) with `config` as its
    /// daemon file (in `dir/n<i>/`), joined to etcd at `endpoints`; `extra` options are
    /// added to `sonde run` (the node's interface is given as `--iface`).
    ///
    /// # Panics
    /// The namespace or the daemon does not come up.
    #[must_use]
    pub fn node(
        &self,
        i: u8,
        endpoints: &str,
        dir: &Path,
        config: &str,
        extra: &[&str],
    ) -> LabNode {
        let ns = Netns::new(&format!("n{i}")).expect("node ns");
        let port = self
            .sw
            .attach(&ns, Ipv4Addr::new(198, 18, 1, i), 24)
            .expect("attach node");
        ns.add_route("198.19.0.0/16", TARGET_ADDR).expect("route");
        let d = dir.join(format!("n{i}"));
        std::fs::create_dir_all(&d).expect("node dir");
        let file = d.join("daemon.toml");
        std::fs::write(&file, config).expect("config");
        let id = format!("n{i}");
        let mut args = vec![
            "--etcd",
            endpoints,
            "--node-id",
            &id,
            "--iface",
            &port.host_dev,
        ];
        args.extend_from_slice(extra);
        let daemon = Daemon::start(&ns, &d, &file, &args);
        LabNode { daemon, ns }
    }
}

impl Default for ClusterLab {
    fn default() -> Self {
        Self::new()
    }
}
