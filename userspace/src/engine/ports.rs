//! The reserved source-port range of stateless probes, and the ICMP identifier.
//!
//! The XDP program recognises answers by destination port, so no local socket may use
//! these ports: the range is added to `net.ipv4.ip_local_reserved_ports` (which also
//! covers IPv6) of the current network namespace, keeping the kernel's ephemeral port
//! allocator away from it.

use std::{fmt, fs, io, ops::RangeInclusive, str::FromStr};

const RESERVED: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// An inclusive range of source ports owned by the probe engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    /// First port (inclusive).
    pub lo: u16,
    /// Last port (inclusive).
    pub hi: u16,
}

impl PortRange {
    /// Default range: 61000-61999, above Linux's default ephemeral range (32768-60999).
    pub const DEFAULT: PortRange = PortRange {
        lo: 61000,
        hi: 61999,
    };

    /// Number of ports.
    #[must_use]
    pub fn len(&self) -> u32 {
        u32::from(self.hi) - u32::from(self.lo) + 1
    }

    /// Never true for a valid range; for clippy's `len_without_is_empty`.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.hi < self.lo
    }

    /// The ports as a Rust range.
    #[must_use]
    pub fn ports(&self) -> RangeInclusive<u16> {
        self.lo..=self.hi
    }

    /// Add this range to the namespace's reserved ports, keeping existing entries.
    ///
    /// # Errors
    /// The sysctl cannot be read or written (not root, or no /proc).
    pub fn reserve(&self) -> io::Result<()> {
        let cur = fs::read_to_string(RESERVED)?;
        let cur = cur.trim();
        let me = self.to_string();
        if cur.split(',').any(|p| p == me) {
            return Ok(());
        }
        let new = if cur.is_empty() {
            me
        } else {
            format!("{cur},{me}")
        };
        fs::write(RESERVED, new)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.lo, self.hi)
    }
}

/// A port range that failed to parse, with the reason.
#[derive(Debug, thiserror::Error)]
#[error("invalid port range {input:?}: {reason} (expected LO-HI, e.g. 61000-61999)")]
pub struct PortRangeError {
    /// What was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl FromStr for PortRange {
    type Err = PortRangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| PortRangeError {
            input: s.to_owned(),
            reason,
        };
        let (a, b) = s.split_once('-').ok_or_else(|| err("no '-'"))?;
        let lo: u16 = a
            .trim()
            .parse()
            .map_err(|_| err("first port is not a number 1-65535"))?;
        let hi: u16 = b
            .trim()
            .parse()
            .map_err(|_| err("last port is not a number 1-65535"))?;
        if lo == 0 {
            return Err(err("port 0 cannot be used"));
        }
        if hi < lo {
            return Err(err("last port is below the first"));
        }
        if lo < 1024 {
            return Err(err("privileged ports (< 1024) are not allowed for probes"));
        }
        Ok(PortRange { lo, hi })
    }
}

#[cfg(test)]
mod tests {
    use super::PortRange;

    #[test]
    fn parses_and_refuses() {
        assert_eq!(
            "61000-61999".parse::<PortRange>().unwrap(),
            PortRange::DEFAULT
        );
        assert_eq!(PortRange::DEFAULT.len(), 1000);
        for bad in [
            "",
            "61000",
            "0-10",
            "70000-70001",
            "2000-1000",
            "80-90",
            "a-b",
        ] {
            let e = bad.parse::<PortRange>().unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }
}
