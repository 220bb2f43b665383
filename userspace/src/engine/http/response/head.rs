//! Pure parsing of complete units: the header block (status line and fields), a
//! header field, the body framing a head implies, a chunk-size line.
//!
//! Offsets given to these functions are stream offsets (bytes since the first byte of
//! the response) of the first byte of the unit, so that errors say where.

use super::{Framing, HttpError, HttpVersion};
use crate::engine::http::request::is_tchar;

/// A parsed status line and header block.
pub(super) struct Head {
    pub(super) version: HttpVersion,
    pub(super) status: u16,
    pub(super) reason: String,
    pub(super) headers: Vec<(String, String)>,
    /// Stream offset of each header line, for error messages.
    pub(super) offsets: Vec<u64>,
}

/// A protocol error at `offset`.
pub(super) fn protocol(offset: u64, detail: impl Into<String>) -> HttpError {
    HttpError::Protocol {
        offset,
        detail: detail.into(),
    }
}

/// Raw protocol bytes, escaped and cut to 40 bytes, for an error message.
pub(super) fn show(bytes: &[u8]) -> String {
    const MAX: usize = 40;
    let mut s = bytes[..bytes.len().min(MAX)].escape_ascii().to_string();
    if bytes.len() > MAX {
        s.push_str("...");
    }
    s
}

/// The content of a line (LF, or CRLF, stripped); refuses NUL and bare CR.
pub(super) fn line_content(line: &[u8], offset: u64) -> Result<&[u8], HttpError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match line.iter().position(|&b| b == b'\r' || b == 0) {
        Some(i) if line[i] == 0 => Err(protocol(offset + i as u64, "NUL byte in line")),
        Some(i) => Err(protocol(
            offset + i as u64,
            "bare CR (not followed by LF) in line",
        )),
        None => Ok(line),
    }
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Parses a complete header block `buf` (status line, fields, empty line) starting at
/// stream offset `base`.
pub(super) fn parse_head(buf: &[u8], base: u64, max_headers: usize) -> Result<Head, HttpError> {
    let mut lines = buf.split_inclusive(|&b| b == b'\n');
    let first = lines.next().unwrap_or_default();
    let (version, status, reason) = parse_status_line(line_content(first, base)?, base)?;
    let mut off = base + first.len() as u64;
    let mut headers = Vec::new();
    let mut offsets = Vec::new();
    for raw in lines {
        let line = line_content(raw, off)?;
        if line.is_empty() {
            break;
        }
        if headers.len() >= max_headers {
            return Err(HttpError::TooManyHeaders { limit: max_headers });
        }
        headers.push(parse_field(line, off)?);
        offsets.push(off);
        off += raw.len() as u64;
    }
    Ok(Head {
        version,
        status,
        reason,
        headers,
        offsets,
    })
}

fn parse_status_line(line: &[u8], off: u64) -> Result<(HttpVersion, u16, String), HttpError> {
    let Some(rest) = line.strip_prefix(b"HTTP/") else {
        return Err(protocol(
            off,
            format!(
                "status line does not start with \"HTTP/\": \"{}\"",
                show(line)
            ),
        ));
    };
    let unsupported = || {
        let end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
        protocol(
            off,
            format!(
                "unsupported HTTP version \"{}\" (only HTTP/1.0 and HTTP/1.1)",
                show(&line[..end])
            ),
        )
    };
    let version = match rest.get(..3) {
        Some(b"1.1") => HttpVersion::Http11,
        Some(b"1.0") => HttpVersion::Http10,
        _ => return Err(unsupported()),
    };
    match rest.get(3) {
        Some(b' ') => {}
        None => return Err(protocol(off + 8, "status line without a status code")),
        Some(_) => return Err(unsupported()),
    }
    let rest = &rest[4..];
    let code = match rest.get(..3) {
        Some(c) if c.iter().all(u8::is_ascii_digit) => c,
        _ => {
            let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
            return Err(protocol(
                off + 9,
                format!("status code \"{}\" is not 3 digits", show(&rest[..end])),
            ));
        }
    };
    let status = code
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    if status < 100 {
        return Err(protocol(
            off + 9,
            format!("status code {status} is below 100"),
        ));
    }
    let reason = match &rest[3..] {
        [] => &[][..],
        [b' ', reason @ ..] => reason,
        _ => {
            return Err(protocol(
                off + 12,
                format!("expected a space after status code in \"{}\"", show(line)),
            ))
        }
    };
    Ok((
        version,
        status,
        String::from_utf8_lossy(reason).into_owned(),
    ))
}

/// Parses a header (or trailer) field line without its line ending.
pub(super) fn parse_field(line: &[u8], off: u64) -> Result<(String, String), HttpError> {
    if matches!(line.first(), Some(b' ' | b'\t')) {
        return Err(protocol(
            off,
            "obsolete line folding (obs-fold) is not accepted",
        ));
    }
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return Err(protocol(
            off,
            format!("header line without ':': \"{}\"", show(line)),
        ));
    };
    let name = &line[..colon];
    if name.is_empty() {
        return Err(protocol(off, "empty header name"));
    }
    if let Some(i) = name.iter().position(|&b| !is_tchar(b)) {
        return Err(protocol(
            off + i as u64,
            format!(
                "invalid byte '{}' in header name \"{}\"",
                [name[i]].escape_ascii(),
                show(name)
            ),
        ));
    }
    let value = trim_ows(&line[colon + 1..]);
    Ok((
        String::from_utf8_lossy(name).into_owned(),
        String::from_utf8_lossy(value).into_owned(),
    ))
}

/// The body framing of `head`, and whether the connection may be reused after it.
pub(super) fn framing(head: &Head, head_request: bool) -> Result<(Framing, bool), HttpError> {
    let named = |want: &'static str| {
        head.headers
            .iter()
            .zip(&head.offsets)
            .filter(move |((n, _), _)| n.eq_ignore_ascii_case(want))
            .map(|((_, v), off)| (v.as_str(), *off))
    };
    let close = named("connection")
        .any(|(v, _)| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
    let mut reusable = head.version == HttpVersion::Http11 && !close && head.status != 101;

    let mut length: Option<(u64, u64)> = None;
    for (value, off) in named("content-length") {
        for item in value.split(',') {
            let n = parse_length(item.trim(), off)?;
            match length {
                Some((prev, _)) if prev == n => {
                    return Err(protocol(off, format!("duplicate Content-Length {n}")))
                }
                Some((prev, _)) => {
                    return Err(protocol(
                        off,
                        format!("conflicting Content-Length values {prev} and {n}"),
                    ))
                }
                None => length = Some((n, off)),
            }
        }
    }
    let mut codings = Vec::new();
    for (value, off) in named("transfer-encoding") {
        for item in value.split(',') {
            let item = item.trim();
            if item.is_empty() {
                return Err(protocol(off, "empty Transfer-Encoding coding"));
            }
            codings.push((item, off));
        }
    }

    if head_request || head.status < 200 || head.status == 204 || head.status == 304 {
        return Ok((Framing::NoBody, reusable));
    }
    if !codings.is_empty() {
        // Transfer-Encoding overrides Content-Length (RFC 9112 6.3), but a message with
        // both is suspect: never reuse its connection.
        if length.is_some() {
            reusable = false;
        }
        let chunked = codings
            .iter()
            .filter(|(c, _)| c.eq_ignore_ascii_case("chunked"))
            .count();
        let last_chunked = codings
            .last()
            .is_some_and(|(c, _)| c.eq_ignore_ascii_case("chunked"));
        return match (chunked, last_chunked) {
            (0, _) => Ok((Framing::Close, false)),
            (1, true) => Ok((Framing::Chunked, reusable)),
            _ => Err(protocol(
                codings[0].1,
                "chunked must be the last Transfer-Encoding, applied once",
            )),
        };
    }
    match length {
        Some((n, _)) => Ok((Framing::Length(n), reusable)),
        None => Ok((Framing::Close, false)),
    }
}

fn parse_length(item: &str, off: u64) -> Result<u64, HttpError> {
    if item.is_empty() {
        return Err(protocol(off, "empty Content-Length"));
    }
    if let Some(digits) = item.strip_prefix('-') {
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(protocol(off, format!("negative Content-Length {item}")));
        }
    }
    if !item.bytes().all(|b| b.is_ascii_digit()) {
        return Err(protocol(
            off,
            format!("invalid Content-Length \"{}\"", show(item.as_bytes())),
        ));
    }
    item.bytes()
        .try_fold(0u64, |acc, d| {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .ok_or_else(|| protocol(off, format!("Content-Length {item} overflows 64 bits")))
}

/// Parses a chunk-size line (`hex [BWS] [; extensions]`, LF or CRLF ended) at `off`.
pub(super) fn parse_chunk_size(raw: &[u8], off: u64) -> Result<u64, HttpError> {
    let line = line_content(raw, off)?;
    let size = match line.iter().position(|&b| b == b';') {
        Some(i) => &line[..i],
        None => line,
    };
    let mut size = size;
    while let [rest @ .., b' ' | b'\t'] = size {
        size = rest;
    }
    if size.is_empty() {
        return Err(protocol(
            off,
            format!("missing chunk size in \"{}\"", show(line)),
        ));
    }
    let mut n: u64 = 0;
    for (i, &b) in size.iter().enumerate() {
        let Some(d) = char::from(b).to_digit(16) else {
            return Err(protocol(
                off + i as u64,
                format!("invalid chunk size \"{}\"", show(size)),
            ));
        };
        n = n
            .checked_mul(16)
            .and_then(|n| n.checked_add(u64::from(d)))
            .ok_or_else(|| {
                protocol(
                    off,
                    format!("chunk size \"{}\" overflows 64 bits", show(size)),
                )
            })?;
    }
    Ok(n)
}
