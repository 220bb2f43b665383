//! Target addresses: every address of an IPv4 CIDR.

use std::net::Ipv4Addr;

use anyhow::{bail, Context, Result};

/// Most addresses a run cycles over (a /12).
const MAX: u64 = 1 << 20;

/// Every address of `cidr` (`A.B.C.D/N`, or one address), in order.
pub fn parse_cidr(cidr: &str) -> Result<Vec<Ipv4Addr>> {
    let (a, n) = cidr.split_once('/').unwrap_or((cidr, "32"));
    let base: Ipv4Addr = a
        .parse()
        .with_context(|| format!("bad address in {cidr:?}"))?;
    let n: u32 = n
        .parse()
        .with_context(|| format!("bad prefix in {cidr:?}"))?;
    if n > 32 {
        bail!("prefix /{n} is longer than 32");
    }
    let size = 1u64 << (32 - n);
    if size > MAX {
        bail!("{cidr} has {size} addresses; at most {MAX}");
    }
    let mask = if n == 0 { 0 } else { u32::MAX << (32 - n) };
    let first = u32::from(base) & mask;
    Ok((0..size)
        .map(|i| Ipv4Addr::from(first.wrapping_add(u32::try_from(i).unwrap_or(0))))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::parse_cidr;

    #[test]
    fn expands_ranges() {
        let v = parse_cidr("198.19.1.7/30").unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(v[0].to_string(), "198.19.1.4");
        assert_eq!(parse_cidr("198.19.0.1").unwrap().len(), 1);
        assert_eq!(parse_cidr("198.19.0.0/16").unwrap().len(), 65536);
        assert!(parse_cidr("198.19.0.0/33").is_err());
        assert!(parse_cidr("10.0.0.0/8").is_err());
    }
}
