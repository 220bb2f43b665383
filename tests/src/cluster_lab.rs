//! The lab of the cluster tests: a switch (198.18.1.0/24), a namespace for etcd at
//! 198.18.1.10, and a target namespace at 198.18.1.100 that answers for all of
//! 198.19.0.0/16 with an HTTP listener on :80. Nodes attach to the switch themselves.

use std::{net::Ipv4Addr, path::Path};

use sonde::lab::{HttpResponder, Netns, Switch};

use crate::etcd_ns::NsEtcd;

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

impl Default for ClusterLab {
    fn default() -> Self {
        Self::new()
    }
}
