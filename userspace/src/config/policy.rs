//! Target allow and deny lists (`[daemon] allow_targets`, `deny_targets`): networks a
//! check may or may not probe. Checked whenever a check is added (file load and reload,
//! the API, an assignment from etcd): a check to a denied network is refused with the
//! network and the list named, and the running checks stay as they were.
//!
//! Rule: a target in any `deny_targets` network is refused; otherwise, when
//! `allow_targets` is not empty, a target outside all of its networks is refused.
//! IPv4-mapped IPv6 addresses are matched as IPv4.

use std::{fmt, net::IpAddr, str::FromStr};

/// An IP network, `ADDR/LEN`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    len: u8,
}

fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    }
}

fn bits(a: IpAddr) -> (u128, u8) {
    match a {
        IpAddr::V4(v) => (u128::from(u32::from(v)), 32),
        IpAddr::V6(v) => (u128::from(v), 128),
    }
}

impl Network {
    /// Whether `a` is in this network.
    #[must_use]
    pub fn contains(&self, a: IpAddr) -> bool {
        let (net, width) = bits(self.addr);
        let (x, xw) = bits(canonical(a));
        if width != xw {
            return false;
        }
        let shift = u32::from(width - self.len);
        if shift >= 128 {
            return true;
        }
        (net >> shift) == (x >> shift)
    }
}

impl FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let expected = "expected a network ADDR/LEN, e.g. \"198.18.0.0/15\" or \"2001:db8::/32\"";
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} has no prefix length; {expected}"))?;
        let addr = canonical(
            a.parse::<IpAddr>()
                .map_err(|_| format!("{a:?} is not an IP address; {expected}"))?,
        );
        let (value, width) = bits(addr);
        let len = l
            .parse::<u8>()
            .ok()
            .filter(|&n| n <= width)
            .ok_or_else(|| format!("prefix length {l:?} is not 0-{width}; {expected}"))?;
        let host = if len == width {
            0
        } else {
            value & (u128::MAX >> (128 - u32::from(width) + u32::from(len)))
        };
        if host != 0 {
            return Err(format!(
                "{s:?} has host bits set; expected the network address for /{len}"
            ));
        }
        Ok(Network { addr, len })
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// The allow and deny lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetPolicy {
    /// Networks checks may probe (empty: any not denied).
    pub allow: Vec<Network>,
    /// Networks checks must not probe.
    pub deny: Vec<Network>,
}

impl TargetPolicy {
    /// Whether a check may probe `addr`; the error says which list refused it.
    ///
    /// # Errors
    /// `addr` is denied, or outside every allowed network.
    pub fn check(&self, addr: IpAddr) -> Result<(), String> {
        if let Some(n) = self.deny.iter().find(|n| n.contains(addr)) {
            return Err(format!(
                "target {addr} is in denied network {n} ([daemon] deny_targets)"
            ));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|n| n.contains(addr)) {
            let list: Vec<String> = self.allow.iter().map(ToString::to_string).collect();
            return Err(format!(
                "target {addr} is in no allowed network ([daemon] allow_targets = {list:?})"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Network {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_parse_and_match() {
        assert!(n("198.18.0.0/15").contains(ip("198.19.255.255")));
        assert!(!n("198.18.0.0/15").contains(ip("198.20.0.0")));
        assert!(n("0.0.0.0/0").contains(ip("1.2.3.4")));
        assert!(!n("0.0.0.0/0").contains(ip("::1")));
        assert!(n("::/0").contains(ip("2001:db8::1")));
        assert!(n("198.18.0.7/32").contains(ip("198.18.0.7")));
        assert!(n("198.18.0.0/24").contains(ip("::ffff:198.18.0.9")));
        assert!(n("2001:db8::/32").contains(ip("2001:db8:ffff::1")));
        assert_eq!(n("198.18.0.0/15").to_string(), "198.18.0.0/15");
        for bad in [
            "198.18.0.0",
            "198.18.0.1/15",
            "x/8",
            "10.0.0.0/33",
            "::/129",
            "1.2.3.4/-1",
        ] {
            assert!(bad.parse::<Network>().is_err(), "{bad}");
        }
    }

    #[test]
    fn deny_wins_and_allow_limits() {
        let p = TargetPolicy {
            allow: vec![n("198.18.0.0/15")],
            deny: vec![n("198.18.5.0/24")],
        };
        assert!(p.check(ip("198.18.0.2")).is_ok());
        let e = p.check(ip("198.18.5.1")).unwrap_err();
        assert!(
            e.contains("198.18.5.0/24") && e.contains("deny_targets"),
            "{e}"
        );
        let e = p.check(ip("192.0.2.1")).unwrap_err();
        assert!(e.contains("allow_targets"), "{e}");
        assert!(TargetPolicy::default().check(ip("192.0.2.1")).is_ok());
    }
}
