//! The parser's public data types: limits, progress, errors, the parsed response.

use thiserror::Error;

use crate::engine::spec::HttpSpec;

/// Bounds on what one response may cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest header block (status line to empty line, each interim response alike);
    /// also bounds the trailer section. Default 16 KiB.
    pub max_header_bytes: usize,
    /// Most header fields (trailers included). Default 100.
    pub max_headers: usize,
    /// Most body bytes kept; the rest is discarded. Default 64 KiB.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_body: 64 * 1024,
        }
    }
}

impl Limits {
    /// Default limits with the spec's `max_body`.
    #[must_use]
    pub fn for_spec(spec: &HttpSpec) -> Self {
        Self {
            max_body: spec.max_body,
            ..Self::default()
        }
    }
}

/// What [`ResponseParser::feed`](super::ResponseParser::feed) achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The response is incomplete: feed more (or call `finish_eof` on close).
    NeedMore,
    /// The response is complete; bytes after it were not consumed.
    Done,
}

/// Why a response could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum HttpError {
    /// No end of the header block within the limit.
    #[error("response header block longer than {limit} bytes (no empty line ends it)")]
    HeadersTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// Too many header (and trailer) fields.
    #[error("more than {limit} response header fields")]
    TooManyHeaders {
        /// The limit.
        limit: usize,
    },
    /// Not valid HTTP/1.x.
    #[error("invalid HTTP response at byte {offset}: {detail}")]
    Protocol {
        /// Stream offset of the offending byte or line.
        offset: u64,
        /// What was wrong.
        detail: String,
    },
    /// The peer closed before the response was complete.
    #[error("connection closed in {phase} after {offset} bytes: {detail}")]
    Closed {
        /// `"headers"` or `"body"`.
        phase: &'static str,
        /// Bytes received before the close.
        offset: u64,
        /// What was missing.
        detail: String,
    },
}

/// HTTP version of a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpVersion {
    /// HTTP/1.0.
    Http10,
    /// HTTP/1.1.
    Http11,
}

/// How the body of a response is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD request, 1xx, 204, 304).
    NoBody,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the server closes the connection.
    Close,
}

/// A parsed response (body bounded by [`Limits::max_body`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Protocol version.
    pub version: HttpVersion,
    /// Status code (100..=999).
    pub status: u16,
    /// Reason phrase (lossy UTF-8, may be empty).
    pub reason: String,
    /// Header fields in order, names as received (look up with [`Response::header`]).
    pub headers: Vec<(String, String)>,
    /// Trailer fields of a chunked body.
    pub trailers: Vec<(String, String)>,
    /// The first `max_body` bytes of the (de-chunked) body.
    pub body: Vec<u8>,
    /// Whether body bytes beyond `max_body` were discarded.
    pub truncated: bool,
    /// Body bytes received in all, kept or not.
    pub body_len: u64,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All values of header `name` (case-insensitive), in order.
    pub fn header_values<'a, 'n>(
        &'a self,
        name: &'n str,
    ) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}
