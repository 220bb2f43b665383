//! veth pairs between two lab namespaces.

use super::{check_prefix, unique_suffix, LabError, Netns, Result};
use std::net::Ipv4Addr;

/// One end of a veth pair, as configured inside its namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethEnd {
    /// Name of the namespace holding this end.
    pub netns: String,
    /// Interface name (unique, at most 15 characters).
    pub name: String,
    /// Interface index inside its namespace.
    pub ifindex: u32,
    /// MAC address.
    pub mac: [u8; 6],
    /// Configured IPv4 address.
    pub addr: Ipv4Addr,
    /// Prefix length of `addr`.
    pub prefix_len: u8,
}

impl VethEnd {
    /// The MAC address as `aa:bb:cc:dd:ee:ff`.
    pub fn mac_string(&self) -> String {
        let m = self.mac;
        format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// A veth pair joining two namespaces. It disappears with its namespaces (no own `Drop`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethPair {
    /// The end in the first namespace (`ns_a` of [`veth_pair`]).
    pub a: VethEnd,
    /// The end in the second namespace (`ns_b` of [`veth_pair`]).
    pub b: VethEnd,
}

/// Creates a veth pair with one end in `ns_a` (address `addr_a/prefix_len`) and the other in
/// `ns_b` (`addr_b/prefix_len`), both up.
///
/// The pair is created from inside `ns_a` with the peer placed directly in `ns_b`
/// (`ip -n A link add X type veth peer name Y netns B`): no end ever exists in the root
/// namespace. Both addresses must lie in 198.18.0.0/15 with `prefix_len` >= 15. `ns_a` and
/// `ns_b` may be the same namespace.
pub fn veth_pair(
    ns_a: &Netns,
    ns_b: &Netns,
    addr_a: Ipv4Addr,
    addr_b: Ipv4Addr,
    prefix_len: u8,
) -> Result<VethPair> {
    check_prefix(addr_a, prefix_len)?;
    check_prefix(addr_b, prefix_len)?;
    let base = format!("v{}", unique_suffix().short);
    let (name_a, name_b) = (format!("{base}a"), format!("{base}b"));
    debug_assert!(name_a.len() <= 15 && name_b.len() <= 15);
    ns_a.ip(&[
        "link",
        "add",
        &name_a,
        "type",
        "veth",
        "peer",
        "name",
        &name_b,
        "netns",
        ns_b.name(),
    ])?;
    let a = configure(ns_a, &name_a, addr_a, prefix_len)?;
    let b = configure(ns_b, &name_b, addr_b, prefix_len)?;
    Ok(VethPair { a, b })
}

fn configure(ns: &Netns, dev: &str, addr: Ipv4Addr, prefix_len: u8) -> Result<VethEnd> {
    let cidr = format!("{addr}/{prefix_len}");
    ns.ip(&["addr", "add", &cidr, "dev", dev])?;
    ns.set_link_up(dev, true)?;
    let out = ns.ip(&["-o", "link", "show", "dev", dev])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let parse_err = |detail: &str| LabError::Parse {
        cmd: format!("ip -n {} -o link show dev {dev}", ns.name()),
        detail: format!("{detail} in {:?}", text.trim()),
    };
    let (ifindex, mac) = parse_link_line(&text).ok_or_else(|| parse_err("no ifindex/MAC"))?;
    Ok(VethEnd {
        netns: ns.name().to_string(),
        name: dev.to_string(),
        ifindex,
        mac,
        addr,
        prefix_len,
    })
}

/// Parses `7: name@if6: <...> ... link/ether aa:bb:cc:dd:ee:ff brd ...` (one `ip -o link`
/// line) into ifindex and MAC.
fn parse_link_line(line: &str) -> Option<(u32, [u8; 6])> {
    let ifindex = line.split(':').next()?.trim().parse().ok()?;
    let mut words = line.split_whitespace();
    words.find(|w| *w == "link/ether")?;
    let mac = parse_mac(words.next()?)?;
    Some((ifindex, mac))
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_link_line() {
        let line = "7: v0012ab001fffa@if6: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc \
                    noqueue state UP mode DEFAULT group default qlen 1000\\    link/ether \
                    02:1a:2b:3c:4d:5e brd ff:ff:ff:ff:ff:ff link-netns sonde-target-1-0-abc";
        assert_eq!(
            parse_link_line(line),
            Some((7, [0x02, 0x1a, 0x2b, 0x3c, 0x4d, 0x5e]))
        );
        assert_eq!(parse_mac("02:1a:2b:3c:4d"), None);
        assert_eq!(parse_mac("02:1a:2b:3c:4d:5e:6f"), None);
    }
}
