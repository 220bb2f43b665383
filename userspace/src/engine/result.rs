//! The typed result of one probe, sent from the engine to the health layer.

use std::time::Duration;

use serde::Serialize;

use super::{spec::CheckId, Clock};

/// Why a probe succeeded or failed, precise enough for an operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Reason {
    /// Healthy answer (SYN-ACK, connect, expected HTTP/UDP/DNS answer, echo reply).
    Ok,
    /// No answer before the timeout.
    Timeout,
    /// Connection refused / TCP RST.
    Refused,
    /// ICMP error (unreachable, time exceeded) for the probe.
    Unreachable {
        /// ICMP type.
        icmp_type: u8,
        /// ICMP code.
        icmp_code: u8,
    },
    /// The connection was reset or closed before a complete answer.
    ConnectionClosed {
        /// At which point ("connect", "send", "recv", "headers", "body", "tls").
        phase: &'static str,
    },
    /// HTTP status not in the accepted set.
    Status {
        /// The status received.
        code: u16,
    },
    /// Body did not contain the expected substring or match the regex.
    BodyMismatch,
    /// The expected header was missing or had another value.
    HeaderMismatch {
        /// The header name.
        name: String,
    },
    /// The answer was not valid HTTP/DNS/... (with what was wrong).
    Protocol {
        /// What was wrong.
        detail: String,
    },
    /// TLS handshake or certificate failure.
    Tls {
        /// What failed.
        detail: String,
    },
    /// UDP answer did not start with the expected prefix.
    PayloadMismatch,
    /// DNS answered with another rcode.
    DnsRcode {
        /// The rcode received.
        rcode: u8,
    },
    /// DNS answer did not contain the expected data.
    DnsAnswerMismatch,
    /// A local error (socket, budget) kept the probe from running.
    Local {
        /// What failed.
        detail: String,
    },
}

/// The owned mirror of [`Reason`] that serde can derive `Deserialize` for (a phase is a
/// `&'static str`, which cannot be borrowed from the input).
#[derive(serde::Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
enum ReasonOwned {
    Ok,
    Timeout,
    Refused,
    Unreachable { icmp_type: u8, icmp_code: u8 },
    ConnectionClosed { phase: String },
    Status { code: u16 },
    BodyMismatch,
    HeaderMismatch { name: String },
    Protocol { detail: String },
    Tls { detail: String },
    PayloadMismatch,
    DnsRcode { rcode: u8 },
    DnsAnswerMismatch,
    Local { detail: String },
}

/// A phase name read back from a journal, as the static string the engine uses.
fn static_phase(s: &str) -> &'static str {
    match s {
        "connect" => "connect",
        "send" => "send",
        "recv" => "recv",
        "headers" => "headers",
        "body" => "body",
        "tls" => "tls",
        _ => "unknown",
    }
}

impl<'de> serde::Deserialize<'de> for Reason {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match ReasonOwned::deserialize(d)? {
            ReasonOwned::Ok => Reason::Ok,
            ReasonOwned::Timeout => Reason::Timeout,
            ReasonOwned::Refused => Reason::Refused,
            ReasonOwned::Unreachable {
                icmp_type,
                icmp_code,
            } => Reason::Unreachable {
                icmp_type,
                icmp_code,
            },
            ReasonOwned::ConnectionClosed { phase } => Reason::ConnectionClosed {
                phase: static_phase(&phase),
            },
            ReasonOwned::Status { code } => Reason::Status { code },
            ReasonOwned::BodyMismatch => Reason::BodyMismatch,
            ReasonOwned::HeaderMismatch { name } => Reason::HeaderMismatch { name },
            ReasonOwned::Protocol { detail } => Reason::Protocol { detail },
            ReasonOwned::Tls { detail } => Reason::Tls { detail },
            ReasonOwned::PayloadMismatch => Reason::PayloadMismatch,
            ReasonOwned::DnsRcode { rcode } => Reason::DnsRcode { rcode },
            ReasonOwned::DnsAnswerMismatch => Reason::DnsAnswerMismatch,
            ReasonOwned::Local { detail } => Reason::Local { detail },
        })
    }
}

impl Reason {
    /// Whether this reason means the target is healthy.
    #[must_use]
    pub fn is_ok(&self) -> bool {
        matches!(self, Reason::Ok)
    }

    /// Every [`Reason::label`], indexed by [`Reason::label_index`].
    pub const LABELS: [&'static str; 14] = [
        "ok",
        "timeout",
        "refused",
        "unreachable",
        "connection_closed",
        "status",
        "body_mismatch",
        "header_mismatch",
        "protocol",
        "tls",
        "payload_mismatch",
        "dns_rcode",
        "dns_answer_mismatch",
        "local",
    ];

    /// Short label for metrics (`outcome` label).
    #[must_use]
    pub fn label(&self) -> &'static str {
        Self::LABELS[usize::from(self.label_index())]
    }

    /// The label at `index` in [`Reason::LABELS`] (`"unknown"` past its end), the
    /// inverse of [`Reason::label_index`].
    #[must_use]
    pub fn label_of(index: u8) -> &'static str {
        Self::LABELS
            .get(usize::from(index))
            .copied()
            .unwrap_or("unknown")
    }

    /// Index of [`Reason::label`] in [`Reason::LABELS`] (a compact form for per-check
    /// histories and counts).
    #[must_use]
    pub fn label_index(&self) -> u8 {
        match self {
            Reason::Ok => 0,
            Reason::Timeout => 1,
            Reason::Refused => 2,
            Reason::Unreachable { .. } => 3,
            Reason::ConnectionClosed { .. } => 4,
            Reason::Status { .. } => 5,
            Reason::BodyMismatch => 6,
            Reason::HeaderMismatch { .. } => 7,
            Reason::Protocol { .. } => 8,
            Reason::Tls { .. } => 9,
            Reason::PayloadMismatch => 10,
            Reason::DnsRcode { .. } => 11,
            Reason::DnsAnswerMismatch => 12,
            Reason::Local { .. } => 13,
        }
    }
}

/// Per-phase timings of a stateful probe (all from the probe's start).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Phases {
    /// TCP handshake done.
    pub connect: Option<Duration>,
    /// TLS handshake done.
    pub tls: Option<Duration>,
    /// First response byte received.
    pub first_byte: Option<Duration>,
    /// Whole exchange done.
    pub total: Option<Duration>,
}

/// The result of one probe of one check.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckResult {
    /// The check.
    pub check: CheckId,
    /// Probe sequence number within the check (monotonic per engine).
    pub seq: u64,
    /// Healthy answer or why not.
    pub reason: Reason,
    /// Round-trip time (stateless) or total time (stateful), when answered.
    pub rtt: Option<Duration>,
    /// Which clock measured `rtt`.
    pub clock: Clock,
    /// Phase timings (stateful probes).
    pub phases: Phases,
    /// HTTP status, when one was received.
    pub http_status: Option<u16>,
    /// Days until the TLS certificate expires (negative: expired), HTTPS only.
    pub cert_days_left: Option<i64>,
}
