//! Target `http_response`: the HTTP/1.x response parser of HTTP(S) checks
//! (`sonde::engine::http::ResponseParser`), fed what a hostile server sends, in
//! arbitrary splits.
//!
//! Input: 4 bytes of settings, then the response bytes. Settings: `max_body` (byte 0,
//! times 4), `max_header_bytes` (64 + byte 1 times 32), `max_headers` (byte 2, low 6
//! bits), HEAD request (byte 2, top bit), split seed (byte 3, see [`crate::splits`]).
//!
//! Invariants: never panics; the body kept is at most `max_body` bytes (capacity
//! included); `consumed()` never exceeds the bytes fed, and with `excess()` accounts for
//! all of them once done; one feed of everything, the split feeds and byte-by-byte feeds
//! give the same outcome (the parser's documented promise; `consumed()` after a refusal
//! excepted); a final response has a final status.

use sonde::engine::http::{HttpError, Limits, Progress, Response, ResponseParser};

use crate::splits;

/// Everything observable about a parser after a sequence of feeds.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    last: Result<Progress, HttpError>,
    consumed: Option<u64>,
    excess: u64,
    partial: Option<Response>,
    eof: Result<(), HttpError>,
    done: Option<Response>,
    keepalive: bool,
}

fn run(limits: Limits, head: bool, pieces: &[&[u8]]) -> Outcome {
    let mut p = ResponseParser::with_head(limits, head);
    let mut fed = 0u64;
    let mut last = Ok(Progress::NeedMore);
    for piece in pieces {
        last = p.feed(piece);
        fed += piece.len() as u64;
        assert!(
            p.last_feed_consumed() <= piece.len(),
            "consumed more than fed"
        );
        assert!(
            p.consumed() <= fed,
            "consumed() {} > fed {fed}",
            p.consumed()
        );
        match &last {
            Ok(Progress::Done) => assert_eq!(p.consumed() + p.excess(), fed),
            Ok(Progress::NeedMore) => assert_eq!((p.consumed(), p.excess()), (fed, 0)),
            Err(e) => {
                let _ = e.to_string();
            }
        }
        if let Some(r) = p.partial() {
            check_response(r, &limits);
        }
    }
    // After a refusal, how much of the bad unit counts as consumed depends on where the
    // reads were cut (a prefix checked in one feed vs. taken byte by byte), and nothing
    // uses it: only compare it for responses that were not refused.
    let consumed = if last.is_err() {
        None
    } else {
        Some(p.consumed())
    };
    let excess = p.excess();
    let partial = p.partial().cloned();
    let keepalive = p.keepalive_ok();
    let eof = p.finish_eof();
    if let Err(e) = &eof {
        let _ = e.to_string();
    }
    let done = p.response().cloned();
    if let Some(r) = &done {
        check_response(r, &limits);
    }
    Outcome {
        last,
        consumed,
        excess,
        partial,
        eof,
        done,
        keepalive,
    }
}

fn check_response(r: &Response, limits: &Limits) {
    assert!(
        r.status == 101 || (200..=999).contains(&r.status),
        "final response with status {}",
        r.status
    );
    assert!(r.body.len() <= limits.max_body, "body over max_body");
    assert!(
        r.body.capacity() <= limits.max_body,
        "body buffer capacity {} over max_body {}",
        r.body.capacity(),
        limits.max_body
    );
    assert!(r.body_len >= r.body.len() as u64);
    assert_eq!(
        r.truncated,
        r.body_len > r.body.len() as u64,
        "truncated flag disagrees with the byte counts"
    );
    assert!(r.headers.len() + r.trailers.len() <= limits.max_headers);
}

/// Feeds one input (settings + response) whole and split, and compares.
///
/// # Panics
/// When an invariant breaks.
pub fn check(data: &[u8]) {
    let Some((settings, body)) = data.split_first_chunk::<4>() else {
        return;
    };
    let limits = Limits {
        max_body: usize::from(settings[0]) * 4,
        max_header_bytes: 64 + usize::from(settings[1]) * 32,
        max_headers: usize::from(settings[2] & 0x3f),
    };
    let head = settings[2] & 0x80 != 0;
    let whole = run(limits, head, &[body]);
    let split = run(limits, head, &splits(body, settings[3]));
    assert_eq!(whole, split, "one feed and split feeds disagree");
    let bytewise: Vec<&[u8]> = body.chunks(1).collect();
    if body.len() <= 512 {
        assert_eq!(
            whole,
            run(limits, head, &bytewise),
            "byte-by-byte feeds disagree"
        );
    }
}

/// Seed responses: each framing (length, chunked with extensions and trailers,
/// close-delimited, none), interim 1xx, HEAD, bare-LF lines, pipelined extra bytes.
#[must_use]
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    // max_body 1020, 64 + 255 * 32 header bytes, 40 headers, split seed 13 (or HEAD).
    let get = [255u8, 255, 40, 13];
    let head = [255u8, 255, 40 | 0x80, 13];
    let small = [2u8, 4, 8, 3];
    let cases: [(&str, [u8; 4], &[u8]); 10] = [
        (
            "length",
            get,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
        ),
        (
            "chunked_trailers",
            get,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: yes\r\n\r\n",
        ),
        (
            "close_delimited",
            get,
            b"HTTP/1.0 200 OK\r\nServer: t\r\n\r\nbody until the connection closes",
        ),
        (
            "interim_then_204",
            get,
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        ),
        (
            "head_request",
            head,
            b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
        ),
        (
            "bare_lf",
            get,
            b"HTTP/1.1 301 Moved\nLocation: /x\nContent-Length: 2\n\nok",
        ),
        ("not_modified", get, b"HTTP/1.1 304 Not Modified\r\nETag: \"a\"\r\n\r\n"),
        (
            "pipelined_extra",
            get,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n",
        ),
        (
            "body_over_limit",
            small,
            b"HTTP/1.1 503 Busy\r\nConnection: close\r\nContent-Length: 20\r\n\r\n01234567890123456789",
        ),
        (
            "switching_protocols",
            get,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        ),
    ];
    cases
        .iter()
        .map(|(name, settings, resp)| {
            let mut v = settings.to_vec();
            v.extend_from_slice(resp);
            (format!("{name}.bin"), v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeds_hold() {
        for (_, s) in super::seeds() {
            super::check(&s);
        }
    }
}
