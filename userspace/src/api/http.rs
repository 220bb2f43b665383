//! The small piece of HTTP/1.1 the API speaks, as pure functions over bytes: request
//! and response heads, header lookup, percent-decoding and -encoding, and writing a
//! response. Shared by the server ([`super::server`]) and the CLI client
//! ([`crate::cli::client`]). Every parser refuses what it does not understand instead
//! of guessing, and none of them panics on any input.

use std::fmt::Write as _;

/// Why a head (or a URL part) could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The head is not UTF-8 (header values must be visible ASCII here).
    #[error("request head is not valid ASCII/UTF-8")]
    NotUtf8,
    /// The request line is not `METHOD SP TARGET SP HTTP/1.x`.
    #[error("malformed request line {0:?}")]
    RequestLine(String),
    /// The status line is not `HTTP/1.x SP CODE SP REASON`.
    #[error("malformed status line {0:?}")]
    StatusLine(String),
    /// A header line is not `name: value` with a token name and no control characters.
    #[error("malformed header line {0:?}")]
    Header(String),
    /// Only HTTP/1.0 and HTTP/1.1 are spoken.
    #[error("unsupported HTTP version {0:?}")]
    Version(String),
    /// A `%XX` escape is malformed or decodes to invalid UTF-8.
    #[error("bad percent-encoding in {0:?}")]
    Percent(String),
    /// Content-Length is not a number, or given twice with different values.
    #[error("bad Content-Length {0:?}")]
    ContentLength(String),
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Method, as sent (methods are case-sensitive).
    pub method: String,
    /// Request target (origin form: path and query), as sent.
    pub target: String,
    /// Minor HTTP version (0 or 1).
    pub minor: u8,
    /// Headers in order; names as sent (compare case-insensitively, see [`header`]).
    pub headers: Vec<(String, String)>,
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// Headers in order.
    pub headers: Vec<(String, String)>,
}

/// Index just past the blank line that ends a head in `buf` (`\r\n\r\n`, or a bare
/// `\n\n` from lenient clients), searching from `from` (bytes before it were searched
/// already; the search backs up 3 bytes to catch a terminator split across reads).
#[must_use]
pub fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    let mut i = start;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

fn lines(head: &[u8]) -> Result<Vec<&str>, HttpError> {
    let text = std::str::from_utf8(head).map_err(|_| HttpError::NotUtf8)?;
    Ok(text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.is_empty())
        .collect())
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn headers(rest: &[&str]) -> Result<Vec<(String, String)>, HttpError> {
    rest.iter()
        .map(|line| {
            let clip = || line.chars().take(80).collect::<String>();
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| HttpError::Header(clip()))?;
            let value = value.trim_matches([' ', '\t']);
            let bad_value = value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f);
            if !is_token(name) || bad_value {
                return Err(HttpError::Header(clip()));
            }
            Ok((name.to_owned(), value.to_owned()))
        })
        .collect()
}

fn minor_version(v: &str) -> Option<u8> {
    match v {
        "HTTP/1.1" => Some(1),
        "HTTP/1.0" => Some(0),
        _ => None,
    }
}

/// Parse a request head (the bytes up to and including the blank line).
///
/// # Errors
/// Any malformed line, a non-1.x version or non-UTF-8 bytes.
pub fn parse_request_head(head: &[u8]) -> Result<RequestHead, HttpError> {
    let lines = lines(head)?;
    let first = lines.first().copied().unwrap_or_default();
    let clip = || first.chars().take(80).collect::<String>();
    let mut parts = first.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::RequestLine(clip()));
    };
    if !is_token(method) || target.is_empty() || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(HttpError::RequestLine(clip()));
    }
    let minor = minor_version(version).ok_or_else(|| HttpError::Version(version.to_owned()))?;
    Ok(RequestHead {
        method: method.to_owned(),
        target: target.to_owned(),
        minor,
        headers: headers(&lines[1..])?,
    })
}

/// Parse a response head (the bytes up to and including the blank line).
///
/// # Errors
/// Any malformed line, a non-1.x version or non-UTF-8 bytes.
pub fn parse_response_head(head: &[u8]) -> Result<ResponseHead, HttpError> {
    let lines = lines(head)?;
    let first = lines.first().copied().unwrap_or_default();
    let clip = || first.chars().take(80).collect::<String>();
    let mut parts = first.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(HttpError::StatusLine(clip()));
    };
    minor_version(version).ok_or_else(|| HttpError::Version(version.to_owned()))?;
    let status = code
        .parse::<u16>()
        .ok()
        .filter(|c| (100..=999).contains(c) && code.len() == 3)
        .ok_or_else(|| HttpError::StatusLine(clip()))?;
    Ok(ResponseHead {
        status,
        headers: headers(&lines[1..])?,
    })
}

/// The first value of header `name` (case-insensitive).
#[must_use]
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The declared body length: `None` without Content-Length.
///
/// # Errors
/// A value that is not a decimal number, or several different values.
pub fn content_length(headers: &[(String, String)]) -> Result<Option<u64>, HttpError> {
    let mut found: Option<u64> = None;
    for (_, v) in headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        for part in v.split(',') {
            let part = part.trim();
            let ok =
                !part.is_empty() && part.len() <= 19 && part.bytes().all(|b| b.is_ascii_digit());
            let n = part
                .parse::<u64>()
                .ok()
                .filter(|_| ok)
                .ok_or_else(|| HttpError::ContentLength(v.chars().take(40).collect()))?;
            if found.is_some_and(|f| f != n) {
                return Err(HttpError::ContentLength(v.chars().take(40).collect()));
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// Decode `%XX` escapes (and `+` as space when `plus_is_space`, for query strings).
///
/// # Errors
/// A truncated or non-hex escape, or bytes that are not UTF-8 once decoded.
pub fn percent_decode(s: &str, plus_is_space: bool) -> Result<String, HttpError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| HttpError::Percent(s.chars().take(80).collect()))?;
                out.push(hex);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| HttpError::Percent(s.chars().take(80).collect()))
}

/// Encode everything but RFC 3986 unreserved characters as `%XX` (for one path
/// segment or one query value).
#[must_use]
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Standard reason phrase of the status codes the API uses.
#[must_use]
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// A complete response, sent with `Connection: close` (the server answers one request
/// per connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Content-Type of the body.
    pub content_type: &'static str,
    /// Extra headers (e.g. `Allow`, `Location`, `WWW-Authenticate`).
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Vec<u8>,
}

/// Content-Type of JSON responses.
pub const JSON: &str = "application/json";
/// Content-Type of the Prometheus text exposition format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Response {
    /// A JSON response of `value`.
    #[must_use]
    pub fn json<T: serde::Serialize + ?Sized>(status: u16, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(mut body) => {
                body.push(b'\n');
                Self {
                    status,
                    content_type: JSON,
                    headers: Vec::new(),
                    body,
                }
            }
            Err(e) => Self::error(500, "internal", &format!("cannot encode response: {e}")),
        }
    }

    /// A JSON error `{"error": message, "kind": kind}`.
    #[must_use]
    pub fn error(status: u16, kind: &str, message: &str) -> Self {
        let body = serde_json::json!({ "error": message, "kind": kind });
        Self {
            status,
            content_type: JSON,
            headers: Vec::new(),
            body: format!("{body}\n").into_bytes(),
        }
    }

    /// Add a header.
    #[must_use]
    pub fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The bytes on the wire: status line, headers, blank line, body.
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
            self.status,
            reason_phrase(self.status),
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads() {
        let h = parse_request_head(b"GET /v1/status?x=1 HTTP/1.1\r\nHost: a\r\nX-Y:  z \r\n\r\n")
            .unwrap();
        assert_eq!(h.method, "GET");
        assert_eq!(h.target, "/v1/status?x=1");
        assert_eq!(header(&h.headers, "x-y"), Some("z"));
        for bad in [
            &b"GET /\r\n\r\n"[..],
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/2\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET / HTTP/1.1\r\nA b: c\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: \x01\r\n\r\n",
            b"GET / HTTP/1.1\r\n\xff: c\r\n\r\n",
            b"",
        ] {
            assert!(parse_request_head(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn response_heads_and_lengths() {
        let h =
            parse_response_head(b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert_eq!(h.status, 404);
        assert_eq!(content_length(&h.headers), Ok(Some(5)));
        assert!(parse_response_head(b"HTTP/1.1 2000 X\r\n\r\n").is_err());
        let two = vec![("Content-Length".to_owned(), "5, 6".to_owned())];
        assert!(content_length(&two).is_err());
        let neg = vec![("content-length".to_owned(), "-1".to_owned())];
        assert!(content_length(&neg).is_err());
        let same = vec![("content-length".to_owned(), "7, 7".to_owned())];
        assert_eq!(content_length(&same), Ok(Some(7)));
    }

    #[test]
    fn head_end_finds_split_terminators() {
        let buf = b"GET / HTTP/1.1\r\nA: b\r\n\r\nbody";
        assert_eq!(head_end(buf, 0), Some(buf.len() - 4));
        assert_eq!(head_end(buf, 22), Some(buf.len() - 4));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n", 0), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n", 0), None);
    }

    #[test]
    fn percent_round_trip() {
        let s = "a b/c%d\"é";
        assert_eq!(percent_decode(&percent_encode(s), false).unwrap(), s);
        assert_eq!(percent_decode("a+b", true).unwrap(), "a b");
        assert!(percent_decode("%4", false).is_err());
        assert!(percent_decode("%zz", false).is_err());
        assert!(percent_decode("%ff", false).is_err());
    }
}
