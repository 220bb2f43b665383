//! What a check is: its target, its probe kind with parameters, its timing and the
//! thresholds that turn results into health. Parsed from TOML (`config`) or etcd,
//! validated by constructors, executed by the engine, judged by `health`.

use std::{fmt, net::IpAddr, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};

/// A check's unique id (cheap to clone; shared by the engine, health and the API).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CheckId(pub Arc<str>);

impl CheckId {
    /// Wrap a string.
    #[must_use]
    pub fn new(s: &str) -> Self {
        Self(Arc::from(s))
    }

    /// The id as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CheckId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A target's host as the operator wrote it: kept inline up to 22 bytes (every IPv4
/// address, most IPv6 addresses and host names), boxed beyond. A million checks on
/// one node would otherwise hold a million tiny heap strings. Reads as a `&str`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct HostName(HostRepr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum HostRepr {
    Inline {
        len: u8,
        bytes: [u8; HostName::INLINE],
    },
    Boxed(Box<str>),
}

impl HostName {
    /// Longest host kept inline.
    pub const INLINE: usize = 22;

    /// The host as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Built from a `&str` of `len` bytes in `From<&str>`: valid UTF-8.
            HostRepr::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            HostRepr::Boxed(s) => s,
        }
    }
}

impl From<&str> for HostName {
    fn from(s: &str) -> Self {
        match u8::try_from(s.len()) {
            Ok(len) if s.len() <= Self::INLINE => {
                let mut bytes = [0; Self::INLINE];
                bytes[..s.len()].copy_from_slice(s.as_bytes());
                Self(HostRepr::Inline { len, bytes })
            }
            _ => Self(HostRepr::Boxed(s.into())),
        }
    }
}

impl From<String> for HostName {
    fn from(s: String) -> Self {
        Self::from(s.as_str())
    }
}

impl std::ops::Deref for HostName {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<str> for HostName {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for HostName {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Serialize for HostName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for HostName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::from)
    }
}

/// Where a check probes: an address (or host name, resolved at load) and a port
/// (ignored by ICMP).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// Host name or IP address as written by the operator.
    pub host: HostName,
    /// Resolved address.
    pub addr: IpAddr,
    /// Port (0 for ICMP).
    pub port: u16,
    /// The local address stateless probes leave from, once resolved (fits in what
    /// was padding; not compared, not serialized; see `engine::sources`).
    #[serde(skip)]
    pub source: super::sources::SourceMemo,
}

/// PROXY protocol header sent before an HTTP request (HAProxy's spec).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// Text header `PROXY TCP4 ...\r\n`.
    V1,
    /// Binary header.
    V2,
}

/// TLS parameters of an HTTPS check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsSpec {
    /// SNI server name; defaults to the target host when it is a name.
    pub sni: Option<String>,
    /// Verify the certificate chain and name (against the system roots or `ca_file`).
    pub verify: bool,
    /// PEM file of extra trust anchors.
    pub ca_file: Option<std::path::PathBuf>,
}

/// An inclusive range of acceptable HTTP status codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRange {
    /// Lowest accepted status.
    pub lo: u16,
    /// Highest accepted status.
    pub hi: u16,
}

/// What makes an HTTP response healthy. Every given condition must hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpExpect {
    /// Accepted statuses (default 200-399).
    pub statuses: Vec<StatusRange>,
    /// The (bounded) body must contain this substring.
    pub body_contains: Option<String>,
    /// The (bounded) body must match this regular expression.
    pub body_regex: Option<String>,
    /// This header (case-insensitive name) must be present and contain this value.
    pub header: Option<(String, String)>,
}

impl Default for HttpExpect {
    fn default() -> Self {
        Self {
            statuses: vec![StatusRange { lo: 200, hi: 399 }],
            body_contains: None,
            body_regex: None,
            header: None,
        }
    }
}

/// An HTTP or HTTPS check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpSpec {
    /// Request method (GET, HEAD, ...).
    pub method: String,
    /// Request path with query, starting with '/'.
    pub path: String,
    /// Host header; defaults to the target host.
    pub host: Option<String>,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Send a PROXY protocol header first.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// TLS (HTTPS) when set.
    pub tls: Option<TlsSpec>,
    /// Reuse the connection for the next probe of this check when the server allows it.
    pub keepalive: bool,
    /// Most body bytes read and matched; the rest is discarded (bounded memory).
    pub max_body: usize,
    /// What a healthy response looks like.
    pub expect: HttpExpect,
}

/// A UDP check: send a payload, expect an answer starting with a prefix. An ICMP port
/// unreachable means down.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpSpec {
    /// Datagram payload.
    pub payload: Vec<u8>,
    /// The answer must start with these bytes (empty: any answer is healthy).
    pub expect_prefix: Vec<u8>,
}

/// A DNS check over UDP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsSpec {
    /// Name to query.
    pub name: String,
    /// Query type (1 = A, 28 = AAAA, 16 = TXT, ...).
    pub qtype: u16,
    /// Expected response code (0 = NOERROR).
    pub expect_rcode: u8,
    /// An answer record's data must equal this (address or text), if set.
    pub expect_answer: Option<String>,
}

/// The probe a check runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeSpec {
    /// Stateless SYN; open (SYN-ACK) is healthy. Answered through XDP.
    TcpSyn,
    /// Full handshake through the kernel.
    TcpConnect,
    /// HTTP or HTTPS request.
    Http(Box<HttpSpec>),
    /// ICMP/ICMPv6 echo.
    Icmp,
    /// UDP payload and expected answer (boxed, like HTTP: a `tcp_syn` check's spec
    /// should not be as large as the largest kind's).
    Udp(Box<UdpSpec>),
    /// DNS query.
    Dns(Box<DnsSpec>),
}

impl ProbeSpec {
    /// Short name of the kind.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            ProbeSpec::TcpSyn => "tcp_syn",
            ProbeSpec::TcpConnect => "tcp_connect",
            ProbeSpec::Http(h) if h.tls.is_some() => "https",
            ProbeSpec::Http(_) => "http",
            ProbeSpec::Icmp => "icmp",
            ProbeSpec::Udp(_) => "udp",
            ProbeSpec::Dns(_) => "dns",
        }
    }
}

/// How results become health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Thresholds {
    /// HAProxy/Envoy style: healthy after `rise` consecutive successes, unhealthy after
    /// `fall` consecutive failures.
    Consecutive {
        /// Successes in a row to become healthy (>= 1).
        rise: u32,
        /// Failures in a row to become unhealthy (>= 1).
        fall: u32,
    },
    /// Fastly style: healthy while at least `threshold` of the last `window` results
    /// succeeded.
    Window {
        /// Results considered (1..=64).
        window: u32,
        /// Successes needed among them (1..=window).
        threshold: u32,
    },
}

/// Health a check starts with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitialState {
    /// Unknown until thresholds are met (default).
    #[default]
    Unknown,
    /// Assume healthy (traffic keeps flowing while the first probes run).
    Healthy,
    /// Assume unhealthy.
    Unhealthy,
}

/// A complete, validated check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckSpec {
    /// Unique id.
    pub id: CheckId,
    /// What to probe.
    pub target: Target,
    /// How.
    pub probe: ProbeSpec,
    /// Time between probes while settled.
    pub interval: Duration,
    /// Time between probes while failing or changing state (<= interval).
    pub fast_interval: Duration,
    /// Per-probe timeout (< interval).
    pub timeout: Duration,
    /// Random spread of each interval, as a fraction of it (0.0..=0.5).
    pub jitter: f64,
    /// How results become health.
    pub thresholds: Thresholds,
    /// Health before the first verdict.
    pub initial: InitialState,
    /// Operator labels (for filters and metrics).
    pub labels: Labels,
}

/// A check's operator labels: a map, 8 bytes inline when empty (a `BTreeMap` takes 24
/// in every spec, and a million-check node keeps a million specs). Reads as a
/// `BTreeMap` through `Deref`.
#[derive(Clone, Default, PartialEq, Eq)]
// Boxed on purpose: the point is 8 bytes inline instead of a map's 24.
#[allow(clippy::box_collection)]
pub struct Labels(Option<Box<std::collections::BTreeMap<String, String>>>);

/// What an empty [`Labels`] reads as.
static NO_LABELS: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();

impl Labels {
    /// Set label `key` to `value`, returning the value it replaced.
    pub fn insert(&mut self, key: String, value: String) -> Option<String> {
        self.0.get_or_insert_with(Box::default).insert(key, value)
    }
}

impl std::ops::Deref for Labels {
    type Target = std::collections::BTreeMap<String, String>;

    fn deref(&self) -> &Self::Target {
        self.0.as_deref().unwrap_or(&NO_LABELS)
    }
}

impl From<std::collections::BTreeMap<String, String>> for Labels {
    fn from(map: std::collections::BTreeMap<String, String>) -> Self {
        Self((!map.is_empty()).then(|| Box::new(map)))
    }
}

impl FromIterator<(String, String)> for Labels {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        iter.into_iter()
            .collect::<std::collections::BTreeMap<_, _>>()
            .into()
    }
}

impl<'a> IntoIterator for &'a Labels {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl Serialize for Labels {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        std::collections::BTreeMap::deserialize(deserializer).map(Self::from)
    }
}

#[cfg(test)]
mod tests {
    use super::HostName;

    #[test]
    fn labels_read_as_a_map_and_cost_a_pointer_when_empty() {
        use super::Labels;
        assert_eq!(std::mem::size_of::<Labels>(), 8);
        let mut l = Labels::default();
        assert!(l.is_empty() && l.get("site").is_none());
        assert_eq!(serde_json::to_string(&l).unwrap(), "{}");
        assert_eq!(l.insert("site".into(), "ams".into()), None);
        assert_eq!(l.insert("site".into(), "fra".into()), Some("ams".into()));
        l.insert("pool".into(), "a".into());
        assert_eq!(l["site"], "fra");
        let keys: Vec<&String> = (&l).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["pool", "site"]);
        let json = serde_json::to_string(&l).unwrap();
        assert_eq!(json, r#"{"pool":"a","site":"fra"}"#);
        assert_eq!(serde_json::from_str::<Labels>(&json).unwrap(), l);
        assert_eq!(
            serde_json::from_str::<Labels>("{}").unwrap(),
            Labels::default()
        );
        assert_eq!(format!("{l:?}"), r#"{"pool": "a", "site": "fra"}"#);
    }

    #[test]
    fn host_names_read_back_as_written_inline_or_boxed() {
        assert_eq!(std::mem::size_of::<HostName>(), 24);
        for host in [
            "",
            "198.18.0.1",
            "255.255.255.255",
            "2001:db8:ffff::1234:1",
            "exactly-22-bytes.local",
            "a-longer-host-name.example.internal",
            "2001:0db8:0000:0000:0000:ff00:0042:8329",
            "héllo-ünïcode.example",
        ] {
            let h = HostName::from(host);
            assert_eq!(h.as_str(), host);
            assert_eq!(h, host);
            assert_eq!(h.to_string(), host);
            assert_eq!(format!("{h:?}"), format!("{host:?}"));
            let json = serde_json::to_string(&h).unwrap();
            assert_eq!(json, serde_json::to_string(host).unwrap());
            assert_eq!(serde_json::from_str::<HostName>(&json).unwrap(), h);
        }
    }
}
