//! Several hosts on one segment: a "switch" namespace holding a Linux bridge, and a
//! veth pair from each host namespace to it (TOOLCHAIN.md's multi-host lab). Used by
//! the cluster tests: sonde nodes, etcd members and targets each in a namespace of
//! their own, all on 198.18.0.0/15, nothing in the root namespace.

use std::net::Ipv4Addr;

use super::{check_prefix, unique_suffix, Netns, Result};

/// The switch: a namespace with bridge `br0`.
#[derive(Debug)]
pub struct Switch {
    /// The namespace holding the bridge (deleted, with every port, on drop).
    pub ns: Netns,
}

/// A host's link to the switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// Interface name inside the host namespace.
    pub host_dev: String,
    /// Interface name of the bridge port inside the switch namespace.
    pub switch_dev: String,
    /// The host's address.
    pub addr: Ipv4Addr,
}

impl Switch {
    /// Create the switch namespace and its bridge.
    ///
    /// # Errors
    /// A command failed.
    pub fn new() -> Result<Self> {
        let ns = Netns::new("switch")?;
        ns.ip(&["link", "add", "br0", "type", "bridge"])?;
        ns.set_link_up("br0", true)?;
        Ok(Self { ns })
    }

    /// Connect `host` to the switch with address `addr/prefix_len` on its side.
    ///
    /// # Errors
    /// The address is outside 198.18.0.0/15, or a command failed.
    pub fn attach(&self, host: &Netns, addr: Ipv4Addr, prefix_len: u8) -> Result<Port> {
        check_prefix(addr, prefix_len)?;
        let base = format!("s{}", unique_suffix().short);
        let (h, s) = (format!("{base}h"), format!("{base}s"));
        host.ip(&[
            "link",
            "add",
            &h,
            "type",
            "veth",
            "peer",
            "name",
            &s,
            "netns",
            self.ns.name(),
        ])?;
        self.ns.ip(&["link", "set", "dev", &s, "master", "br0"])?;
        self.ns.set_link_up(&s, true)?;
        host.ip(&["addr", "add", &format!("{addr}/{prefix_len}"), "dev", &h])?;
        host.set_link_up(&h, true)?;
        Ok(Port {
            host_dev: h,
            switch_dev: s,
            addr,
        })
    }

    /// Cut a host off (its bridge port down) or reconnect it.
    ///
    /// # Errors
    /// The command failed.
    pub fn set_port_up(&self, port: &Port, up: bool) -> Result<()> {
        self.ns.set_link_up(&port.switch_dev, up)
    }
}
