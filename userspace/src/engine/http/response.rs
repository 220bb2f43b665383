//! An incremental, sans-IO HTTP/1.x response parser with bounded memory.
//!
//! The engine [`feed`](ResponseParser::feed)s whatever the socket returned until
//! [`Progress::Done`], and calls [`finish_eof`](ResponseParser::finish_eof) when the peer
//! closed. Any split of the input gives the same result, down to one byte per feed.
//!
//! Accepted: HTTP/1.0 and HTTP/1.1 status lines, CRLF or bare LF line endings (as curl
//! does), interim 1xx responses (skipped, at most [`MAX_INTERIM`]), bodies framed by
//! Content-Length, chunked transfer coding (extensions and trailers included) or the
//! connection's close, no body for HEAD requests and 1xx/204/304 statuses.
//!
//! Refused ([`HttpError::Protocol`], with the stream offset): anything not starting with
//! `HTTP/`, other versions, obs-fold, NUL or bare CR, malformed fields, negative,
//! duplicate, conflicting or overflowing Content-Length, invalid or overflowing chunk
//! sizes, chunked not being the last transfer coding.
//!
//! Memory: the header block is buffered up to [`Limits::max_header_bytes`] (a chunk-size
//! line up to [`MAX_CHUNK_LINE`]); at most [`Limits::max_body`] body bytes are kept, the
//! rest is counted and dropped, so a multi-gigabyte or endless body only costs time.

mod head;
#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod tests;
mod types;

use head::{line_content, parse_chunk_size, parse_field, parse_head, protocol};
pub use types::{Framing, HttpError, HttpVersion, Limits, Progress, Response};

/// Longest accepted chunk-size line, extensions included.
pub const MAX_CHUNK_LINE: usize = 4096;

/// Most interim (1xx) responses skipped before the final one.
pub const MAX_INTERIM: usize = 32;

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Head,
    Length { remaining: u64 },
    Close,
    ChunkSize,
    ChunkData { remaining: u64 },
    ChunkEnd,
    Trailers,
    Done,
    Failed(HttpError),
}

/// Incremental HTTP/1.x response parser (one response; a new parser per request).
#[derive(Clone, Debug)]
pub struct ResponseParser {
    limits: Limits,
    head_request: bool,
    state: State,
    /// The header block being received, or the current chunk-size / trailer line.
    buf: Vec<u8>,
    /// Start of the current line in `buf` (header block).
    line_start: usize,
    /// Stream offset where the current header block began.
    head_base: u64,
    interim: usize,
    response: Option<Response>,
    framing: Option<Framing>,
    reusable: bool,
    trailer_bytes: usize,
    consumed: u64,
    excess: u64,
    last_consumed: usize,
}

impl ResponseParser {
    /// A parser for the response to a request with a body-bearing method (GET, ...).
    #[must_use]
    pub fn new(limits: Limits) -> Self {
        Self::with_head(limits, false)
    }

    /// A parser for the response to a HEAD request when `head_request` (no body, whatever
    /// the headers say).
    #[must_use]
    pub fn with_head(limits: Limits, head_request: bool) -> Self {
        Self {
            limits,
            head_request,
            state: State::Head,
            buf: Vec::new(),
            line_start: 0,
            head_base: 0,
            interim: 0,
            response: None,
            framing: None,
            reusable: false,
            trailer_bytes: 0,
            consumed: 0,
            excess: 0,
            last_consumed: 0,
        }
    }

    /// A parser for the response to `method` (HEAD or not, case-insensitive).
    #[must_use]
    pub fn for_method(limits: Limits, method: &str) -> Self {
        Self::with_head(limits, method.eq_ignore_ascii_case("HEAD"))
    }

    /// Consumes `data` (any amount, even empty). Bytes after a complete response are not
    /// consumed: see [`last_feed_consumed`](Self::last_feed_consumed) and
    /// [`excess`](Self::excess).
    ///
    /// # Errors
    /// [`HttpError`] if the response is invalid or exceeds the limits; the parser then
    /// returns the same error forever.
    pub fn feed(&mut self, data: &[u8]) -> Result<Progress, HttpError> {
        let mut pos = 0;
        let result = self.run(data, &mut pos);
        self.last_consumed = pos;
        self.consumed += pos as u64;
        match result {
            Ok(Progress::Done) => {
                self.excess += (data.len() - pos) as u64;
                Ok(Progress::Done)
            }
            Ok(Progress::NeedMore) => Ok(Progress::NeedMore),
            Err(e) => {
                self.state = State::Failed(e.clone());
                Err(e)
            }
        }
    }

    /// The peer closed the connection: ends a close-delimited body.
    ///
    /// # Errors
    /// [`HttpError::Closed`] if the headers, a Content-Length or a chunked body were
    /// incomplete; the earlier error if the parser had failed.
    pub fn finish_eof(&mut self) -> Result<(), HttpError> {
        let at = self.consumed;
        let closed = |phase, detail: String| HttpError::Closed {
            phase,
            offset: at,
            detail,
        };
        let err = match &self.state {
            State::Done => return Ok(()),
            State::Close => {
                self.state = State::Done;
                return Ok(());
            }
            State::Failed(e) => return Err(e.clone()),
            State::Head if at == 0 => closed("headers", "no response received".into()),
            State::Head => closed("headers", "incomplete response headers".into()),
            State::Length { remaining } => {
                let total = match self.framing {
                    Some(Framing::Length(n)) => n,
                    _ => 0,
                };
                closed(
                    "body",
                    format!("{remaining} of {total} Content-Length body bytes missing"),
                )
            }
            _ => closed("body", "incomplete chunked body".into()),
        };
        self.state = State::Failed(err.clone());
        Err(err)
    }

    /// The complete response, once [`Progress::Done`] (or a close ended the body).
    #[must_use]
    pub fn response(&self) -> Option<&Response> {
        match self.state {
            State::Done => self.response.as_ref(),
            _ => None,
        }
    }

    /// Takes the complete response out of the parser.
    #[must_use]
    pub fn into_response(self) -> Option<Response> {
        match self.state {
            State::Done => self.response,
            _ => None,
        }
    }

    /// The final response so far, as soon as its headers are parsed (body possibly
    /// incomplete): gives the status of a response whose body failed.
    #[must_use]
    pub fn partial(&self) -> Option<&Response> {
        self.response.as_ref()
    }

    /// Whether the response is complete.
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The body framing, once the final headers are parsed.
    #[must_use]
    pub fn framing(&self) -> Option<Framing> {
        self.framing
    }

    /// Whether the connection may carry the next request: the response is complete,
    /// HTTP/1.1 without `Connection: close`, its body delimited by length or chunking
    /// (or absent), and no byte arrived after it so far.
    #[must_use]
    pub fn keepalive_ok(&self) -> bool {
        self.is_done() && self.reusable && self.excess == 0
    }

    /// Bytes consumed by the response in all feeds (interim 1xx responses included).
    #[must_use]
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Bytes fed that were not part of the response (after its end): non-zero means the
    /// server sent more than one response's worth.
    #[must_use]
    pub fn excess(&self) -> u64 {
        self.excess
    }

    /// How many bytes of the last `feed`'s data were consumed; `data[n..]` follows the
    /// response.
    #[must_use]
    pub fn last_feed_consumed(&self) -> usize {
        self.last_consumed
    }

    /// The limits in force.
    #[must_use]
    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn run(&mut self, data: &[u8], pos: &mut usize) -> Result<Progress, HttpError> {
        loop {
            match &self.state {
                State::Failed(e) => return Err(e.clone()),
                State::Done => return Ok(Progress::Done),
                _ if *pos == data.len() => return Ok(Progress::NeedMore),
                State::Head => self.step_head(data, pos)?,
                State::Length { remaining } => {
                    let remaining = self.body_bytes(data, pos, *remaining);
                    self.state = if remaining == 0 {
                        State::Done
                    } else {
                        State::Length { remaining }
                    };
                }
                State::Close => {
                    self.store(&data[*pos..]);
                    *pos = data.len();
                }
                State::ChunkData { remaining } => {
                    let remaining = self.body_bytes(data, pos, *remaining);
                    self.state = if remaining == 0 {
                        State::ChunkEnd
                    } else {
                        State::ChunkData { remaining }
                    };
                }
                State::ChunkSize => {
                    let too_long = |at| {
                        protocol(
                            at,
                            format!("chunk size line longer than {MAX_CHUNK_LINE} bytes"),
                        )
                    };
                    if self
                        .take_line(data, pos, MAX_CHUNK_LINE)
                        .map_err(too_long)?
                    {
                        let size = parse_chunk_size(&self.buf, self.line_offset(*pos))?;
                        self.buf.clear();
                        self.state = if size == 0 {
                            State::Trailers
                        } else {
                            State::ChunkData { remaining: size }
                        };
                    }
                }
                State::ChunkEnd => {
                    let bad = |at| protocol(at, "expected CRLF after chunk data");
                    if self.take_line(data, pos, 2).map_err(bad)? {
                        let at = self.line_offset(*pos);
                        if !line_content(&self.buf, at)?.is_empty() {
                            return Err(bad(at));
                        }
                        self.buf.clear();
                        self.state = State::ChunkSize;
                    }
                }
                State::Trailers => self.step_trailer(data, pos)?,
            }
        }
    }

    /// Stream offset of the first byte of the line in `buf`, `pos` being just past it.
    fn line_offset(&self, pos: usize) -> u64 {
        self.consumed + pos as u64 - self.buf.len() as u64
    }

    /// Moves `data[*pos..]` up to and including the next LF into `buf`: `Ok(true)` once a
    /// whole line is there, `Err(line start offset)` if `buf` would exceed `limit`.
    fn take_line(&mut self, data: &[u8], pos: &mut usize, limit: usize) -> Result<bool, u64> {
        let rest = &data[*pos..];
        let (part, complete) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..=i], true),
            None => (rest, false),
        };
        if self.buf.len() + part.len() > limit {
            return Err(self.consumed + *pos as u64 - self.buf.len() as u64);
        }
        bounded_extend(&mut self.buf, part, limit);
        *pos += part.len();
        Ok(complete)
    }

    /// Refuses early a response that does not start with `HTTP/`.
    fn check_prefix(&self, rest: &[u8]) -> Result<(), HttpError> {
        const PREFIX: &[u8] = b"HTTP/";
        let have = self.buf.len();
        if self.line_start != 0 || have >= PREFIX.len() {
            return Ok(());
        }
        for (i, &b) in rest.iter().take(PREFIX.len() - have).enumerate() {
            if b != PREFIX[have + i] {
                let hint = if have + i == 0 && (b == 0x15 || b == 0x16) {
                    " (looks like TLS: is this an HTTPS port?)"
                } else {
                    ""
                };
                return Err(protocol(
                    self.head_base + (have + i) as u64,
                    format!(
                        "not an HTTP response: expected \"HTTP/\", found byte '{}'{hint}",
                        [b].escape_ascii()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn step_head(&mut self, data: &[u8], pos: &mut usize) -> Result<(), HttpError> {
        self.check_prefix(&data[*pos..])?;
        let limit = self.limits.max_header_bytes;
        let complete = self
            .take_line(data, pos, limit)
            .map_err(|_| HttpError::HeadersTooLarge { limit })?;
        if !complete {
            return Ok(());
        }
        let line = &self.buf[self.line_start..];
        if line != b"\n" && line != b"\r\n" {
            self.line_start = self.buf.len();
            return Ok(());
        }
        if self.line_start == 0 {
            return Err(protocol(
                self.head_base,
                "empty line instead of a status line",
            ));
        }
        let head = parse_head(&self.buf, self.head_base, self.limits.max_headers)?;
        if head.status < 200 && head.status != 101 {
            self.interim += 1;
            if self.interim > MAX_INTERIM {
                return Err(protocol(
                    self.head_base,
                    format!("more than {MAX_INTERIM} interim (1xx) responses"),
                ));
            }
            self.buf.clear();
            self.line_start = 0;
            self.head_base = self.consumed + *pos as u64;
            return Ok(());
        }
        let (framing, reusable) = head::framing(&head, self.head_request)?;
        self.buf = Vec::new();
        self.line_start = 0;
        self.framing = Some(framing);
        self.reusable = reusable;
        self.response = Some(Response {
            version: head.version,
            status: head.status,
            reason: head.reason,
            headers: head.headers,
            trailers: Vec::new(),
            body: Vec::new(),
            truncated: false,
            body_len: 0,
        });
        self.state = match framing {
            Framing::NoBody | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length { remaining: n },
            Framing::Chunked => State::ChunkSize,
            Framing::Close => State::Close,
        };
        Ok(())
    }

    fn step_trailer(&mut self, data: &[u8], pos: &mut usize) -> Result<(), HttpError> {
        let max = self.limits.max_header_bytes;
        let too_long = |at| protocol(at, format!("trailer section longer than {max} bytes"));
        let limit = max.saturating_sub(self.trailer_bytes);
        if !self.take_line(data, pos, limit).map_err(too_long)? {
            return Ok(());
        }
        let at = self.line_offset(*pos);
        let line = std::mem::take(&mut self.buf);
        self.trailer_bytes += line.len();
        let content = line_content(&line, at)?;
        if content.is_empty() {
            self.state = State::Done;
        } else {
            let field = parse_field(content, at)?;
            let max_headers = self.limits.max_headers;
            if let Some(resp) = self.response.as_mut() {
                if resp.headers.len() + resp.trailers.len() >= max_headers {
                    return Err(HttpError::TooManyHeaders { limit: max_headers });
                }
                resp.trailers.push(field);
            }
        }
        self.buf = line;
        self.buf.clear();
        Ok(())
    }

    /// Takes up to `remaining` body bytes from `data[*pos..]`; returns what remains.
    fn body_bytes(&mut self, data: &[u8], pos: &mut usize, remaining: u64) -> u64 {
        let avail = data.len() - *pos;
        let n = usize::try_from(remaining).map_or(avail, |r| r.min(avail));
        self.store(&data[*pos..*pos + n]);
        *pos += n;
        remaining - n as u64
    }

    /// Keeps body bytes up to `max_body`; counts and drops the rest.
    fn store(&mut self, bytes: &[u8]) {
        let max = self.limits.max_body;
        let Some(resp) = self.response.as_mut() else {
            return;
        };
        resp.body_len = resp.body_len.saturating_add(bytes.len() as u64);
        let take = max.saturating_sub(resp.body.len()).min(bytes.len());
        bounded_extend(&mut resp.body, &bytes[..take], max);
        if take < bytes.len() {
            resp.truncated = true;
        }
    }
}

/// Appends `bytes` to `v`, never letting the capacity grow past `cap` (when the result
/// fits in it) — unlike the doubling of `extend_from_slice`.
fn bounded_extend(v: &mut Vec<u8>, bytes: &[u8], cap: usize) {
    let need = v.len() + bytes.len();
    if need > v.capacity() {
        let want = v.capacity().saturating_mul(2).max(need).min(cap.max(need));
        v.reserve_exact(want - v.len());
    }
    v.extend_from_slice(bytes);
}
