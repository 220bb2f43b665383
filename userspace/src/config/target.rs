//! Targets (`ADDR:PORT`, `[V6]:PORT`, `HOST:PORT`, `ADDR`), host-name resolution, and
//! the small string rules shared by several fields: check ids, DNS names, HTTP tokens
//! and header values.

use std::net::{IpAddr, Ipv6Addr, ToSocketAddrs};

/// Target forms, for messages.
pub(crate) const EXPECTED: &str =
    "\"ADDR:PORT\", \"[IPV6]:PORT\", \"HOST:PORT\", or \"ADDR\"/\"HOST\" for icmp";

/// A parsed and resolved target; the port is checked against the kind later.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TargetSpec {
    /// As written, without brackets or port.
    pub host: String,
    /// The address, or the host name's first resolved address.
    pub addr: IpAddr,
    /// The port, if one was written.
    pub port: Option<u16>,
}

/// Parse `s` and resolve its host name (std's resolver, first address returned).
pub(crate) fn parse(s: &str) -> Result<TargetSpec, String> {
    let (host, port) = split(s)?;
    let port = port.map(parse_port).transpose()?;
    let addr = match host.parse::<IpAddr>() {
        Ok(a) => a,
        Err(_) => {
            dns_name(host, false).map_err(|e| format!("invalid host name {host:?}: {e}"))?;
            resolve(host)?
        }
    };
    Ok(TargetSpec {
        host: host.to_owned(),
        addr,
        port,
    })
}

/// Host and port text of a target.
fn split(s: &str) -> Result<(&str, Option<&str>), String> {
    if s.is_empty() {
        return Err(format!("empty target; expected {EXPECTED}"));
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (inner, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("missing ']' in target {s:?}; expected {EXPECTED}"))?;
        if inner.parse::<Ipv6Addr>().is_err() {
            return Err(format!(
                "{inner:?} in brackets is not an IPv6 address; expected {EXPECTED}"
            ));
        }
        return match after {
            "" => Ok((inner, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((inner, Some(port))),
                None => Err(format!(
                    "unexpected {after:?} after ']' in target {s:?}; expected {EXPECTED}"
                )),
            },
        };
    }
    if s.parse::<IpAddr>().is_ok() {
        return Ok((s, None));
    }
    match s.matches(':').count() {
        0 => Ok((s, None)),
        1 => {
            let (host, port) = s.split_once(':').unwrap_or((s, ""));
            if host.is_empty() {
                return Err(format!("missing host in target {s:?}; expected {EXPECTED}"));
            }
            Ok((host, Some(port)))
        }
        _ => Err(format!(
            "target {s:?} is not an address; an IPv6 address with a port is written in \
             brackets, e.g. \"[2001:db8::1]:80\""
        )),
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(0) => Err("port 0 cannot be probed; expected a port 1-65535".to_owned()),
        Ok(n) if !p.starts_with('+') => Ok(n),
        _ => Err(format!("port {p:?} is not a number 1-65535")),
    }
}

fn resolve(host: &str) -> Result<IpAddr, String> {
    match (host, 0).to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .map(|a| a.ip())
            .ok_or_else(|| format!("host name {host:?} resolves to no address")),
        Err(e) => Err(format!(
            "host name {host:?} does not resolve ({e}); expected a resolvable name or an \
             IP address"
        )),
    }
}

/// Check ids: `^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`.
pub(crate) fn valid_id(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.len() <= 128
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

/// A DNS name: labels of 1-63 letters, digits, '-' or '_', 253 characters at most
/// (without the optional final dot). `"."` (the root) only when `root_ok`.
pub(crate) fn dns_name(s: &str, root_ok: bool) -> Result<(), String> {
    if s == "." {
        return if root_ok {
            Ok(())
        } else {
            Err("the root \".\" is not a host name".to_owned())
        };
    }
    let name = s.strip_suffix('.').unwrap_or(s);
    if name.is_empty() {
        return Err("empty name".to_owned());
    }
    if name.len() > 253 {
        return Err(format!(
            "{} characters long; a DNS name has at most 253",
            name.len()
        ));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!(
                "label {label:?} has {} characters; labels have 1 to 63",
                label.len()
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "character {c:?} in label {label:?}; labels hold letters, digits, '-' and '_'"
            ));
        }
    }
    Ok(())
}

/// An HTTP token (method, header name): RFC 9110 `tchar`s, not empty.
pub(crate) fn http_token(s: &str) -> Result<(), String> {
    const EXTRA: &[u8] = b"!#$%&'*+-.^_`|~";
    if s.is_empty() {
        return Err("empty; expected an HTTP token".to_owned());
    }
    match s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || (c.is_ascii() && EXTRA.contains(&(*c as u8)))))
    {
        Some(c) => Err(format!(
            "character {c:?} is not allowed (CR, LF, NUL, spaces and separators are not); \
             expected an HTTP token (letters, digits, {})",
            String::from_utf8_lossy(EXTRA)
        )),
        None => Ok(()),
    }
}

/// A header value (or Host): no CR, LF or NUL, which would split or end the request.
pub(crate) fn header_value(s: &str) -> Result<(), String> {
    match s.chars().find(|c| matches!(c, '\r' | '\n' | '\0')) {
        Some(c) => Err(format!(
            "contains {c:?}; CR, LF and NUL are not allowed in header values"
        )),
        None => Ok(()),
    }
}

/// A request path: starts with '/', no spaces or control characters (CR, LF, NUL, ...).
pub(crate) fn http_path(s: &str) -> Result<(), String> {
    if !s.starts_with('/') {
        return Err(format!("path {s:?} must start with '/'"));
    }
    match s.chars().find(|c| c.is_ascii_control() || *c == ' ') {
        Some(c) => Err(format!(
            "path contains {c:?}; CR, LF, NUL, other control characters and spaces are not \
             allowed (percent-encode them)"
        )),
        None => Ok(()),
    }
}
