//! Target `api_request`: the local API's request decoding
//! (`sonde::api::http`, `sonde::api::routes`), on an arbitrary byte stream arriving in
//! arbitrary reads.
//!
//! Input: 1 split-seed byte ([`crate::splits`]), then the bytes a client sends. First the
//! public pieces on their own: the end of the head found read by read ([`head_end`]) and
//! the head parser. Then the real connection code: the bytes, in those reads, go through
//! [`serve_stream`] (the very function the server runs on each accepted connection:
//! head and body limits, the loopback `Host` rule on TCP, routing, the token, the body
//! framing) against an in-memory daemon ([`MemoryControl`], which validates an added
//! check with the config parser), and what it writes back is checked.
//!
//! Invariants: never panics; the head end found read by read is the one found in the
//! whole stream; a parsed head has a token method, a target without spaces or controls,
//! token header names and values without controls; what the server writes is one HTTP/1.1
//! response (after at most one `100 Continue`) whose head parses and whose body has
//! exactly its Content-Length (a watch stream: a 200 with no length); a mutating route is
//! never answered 2xx without the token; a check added (201) is found at its Location.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use sonde::api::{
    http::{content_length, head_end, header, parse_request_head, parse_response_head},
    routes,
    server::serve_stream,
    ApiOptions, Control, DaemonInfo, MemoryControl,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::{isolate_network, splits};

/// The server's default head limit (`ApiOptions::max_head_bytes`).
const MAX_HEAD: usize = 16 * 1024;
/// The server's default body limit (`ApiOptions::max_body_bytes`).
const MAX_BODY: usize = 64 * 1024;
/// The bearer token of the fuzzed server.
const TOKEN: &str = "fuzz-token-0123456789abcdef";

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A client connection: the reads it delivers, then end of input; what the server
/// writes is collected.
struct Wire<'a> {
    reads: std::vec::IntoIter<&'a [u8]>,
    written: Vec<u8>,
}

impl AsyncRead for Wire<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(piece) = self.reads.next() {
            let n = piece.len().min(buf.remaining());
            buf.put_slice(&piece[..n]);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Wire<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
}

/// Check what the server wrote for one request; returns (status, headers) of the
/// final response.
fn check_written(out: &[u8]) -> Option<(u16, Vec<(String, String)>)> {
    if out.is_empty() {
        return None; // the peer went away before a head: nothing to answer
    }
    let mut rest = out;
    let mut end = head_end(rest, 0).expect("the server wrote a complete head");
    let mut head = parse_response_head(&rest[..end])
        .unwrap_or_else(|e| panic!("the server's response head does not parse: {e}"));
    if head.status == 100 {
        rest = &rest[end..];
        end = head_end(rest, 0).expect("a final response follows 100 Continue");
        head = parse_response_head(&rest[..end]).expect("final head parses");
    }
    let body = &rest[end..];
    let watch = head.status == 200
        && header(&head.headers, "content-type")
            .is_some_and(|t| t.contains("ndjson") || t.contains("event-stream"));
    if watch {
        assert_eq!(
            content_length(&head.headers),
            Ok(None),
            "a stream has no length"
        );
    } else {
        assert_eq!(
            content_length(&head.headers),
            Ok(Some(body.len() as u64)),
            "Content-Length of the server's response"
        );
    }
    Some((head.status, head.headers))
}

fn control() -> MemoryControl {
    let c = MemoryControl::new(DaemonInfo {
        version: "fuzz".into(),
        uptime_secs: 1,
        clock: "userspace".into(),
        kernel_unavailable: Some("fuzzing".into()),
        iface: None,
        config_path: None,
        checks: 0,
        per_target_pps: 50.0,
        syn_ack_reset: None,
    });
    let web = serde_json::json!({"id": "web-1", "target": "127.0.0.1:80", "kind": "tcp_connect", "labels": {"pool": "a"}});
    let spec = sonde::config::parse_check_json(&web, &sonde::config::Defaults::default())
        .expect("fixed check is valid");
    c.insert(spec);
    c
}

/// Decodes one request stream as the API server would.
///
/// # Panics
/// When an invariant breaks.
pub fn check(data: &[u8]) {
    isolate_network();
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    // Read by read, as `conn::read_head` does.
    let mut buf = Vec::new();
    let mut found = None;
    for piece in splits(stream, seed) {
        let from = buf.len();
        buf.extend_from_slice(piece);
        if let Some(end) = head_end(&buf, from) {
            found = Some(end);
            break;
        }
        if buf.len() > MAX_HEAD {
            break;
        }
    }
    let whole = head_end(stream, 0);
    match found {
        Some(end) => assert_eq!(Some(end), whole, "head end differs read by read"),
        None if buf.len() == stream.len() => assert_eq!(whole, None, "head end missed"),
        None => {}
    }
    // The CLI's response-head parser, on the same bytes.
    if let Ok(h) = parse_response_head(&stream[..whole.unwrap_or(stream.len())]) {
        assert!((100..=999).contains(&h.status));
    }
    let parsed = found
        .filter(|&e| e <= MAX_HEAD)
        .and_then(|end| parse_request_head(&stream[..end]).ok());
    let mut mutating_unauthorized = false;
    if let Some(head) = &parsed {
        assert!(is_token(&head.method), "method {:?}", head.method);
        assert!(
            !head.target.is_empty() && !head.target.bytes().any(|b| b <= b' ' || b == 0x7f),
            "target {:?}",
            head.target
        );
        assert!(head.minor <= 1);
        for (n, v) in &head.headers {
            assert!(is_token(n), "header name {n:?}");
            assert!(
                !v.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f),
                "header value {v:?}"
            );
        }
        let authorized =
            sonde::api::token::bearer_matches(header(&head.headers, "authorization"), TOKEN);
        mutating_unauthorized =
            !authorized && routes::plan(&head.method, &head.target).is_ok_and(|r| r.mutating());
    }

    // The real connection code, on the same reads.
    let control = Arc::new(control());
    let dyn_control: Arc<dyn Control> = Arc::clone(&control) as Arc<dyn Control>;
    let mut wire = Wire {
        reads: splits(stream, seed).into_iter(),
        written: Vec::new(),
    };
    let opts = ApiOptions {
        socket: None,
        http: Some(([127, 0, 0, 1], 7070).into()),
        max_head_bytes: MAX_HEAD,
        max_body_bytes: MAX_BODY,
        ..ApiOptions::default()
    };
    RUNTIME.with(|rt| {
        rt.block_on(serve_stream(
            &mut wire,
            dyn_control,
            TOKEN,
            opts,
            seed % 2 == 1,
        ));
    });
    let Some((status, headers)) = check_written(&wire.written) else {
        return;
    };
    if mutating_unauthorized {
        assert!(
            !(200..300).contains(&status),
            "mutating route served without the token"
        );
    }
    if status == 201 {
        let added = header(&headers, "location")
            .map(str::to_owned)
            .expect("201 carries a Location");
        let again = routes::plan("GET", &added).expect("Location routes");
        let got = routes::execute(control.as_ref(), &again, &[]);
        assert_eq!(
            got.status, 200,
            "added check not found at its Location {added}"
        );
    }
}

/// Requests: every route, with query filters, a POSTed check with its token, a
/// pipelined second request, a bare-LF head, and refusals (bad method, chunked body).
#[must_use]
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let post = |body: &str| {
        format!(
            "POST /v1/checks HTTP/1.1\r\nHost: 127.0.0.1:7070\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let cases: Vec<(&str, u8, String)> = vec![
        ("status_filters", 0, "GET /v1/status?unhealthy=1&label=pool%3Da HTTP/1.1\r\nHost: localhost\r\n\r\n".into()),
        ("check_by_id", 7, "GET /v1/checks/web-1 HTTP/1.1\r\nHost: [::1]:7070\r\nAccept: */*\r\n\r\n".into()),
        ("history", 3, "GET /v1/checks/web-1/history HTTP/1.0\r\n\r\n".into()),
        ("info_bare_lf", 1, "GET /v1/info HTTP/1.1\nHost: localhost\n\n".into()),
        ("metrics", 0, "GET /metrics HTTP/1.1\r\n\r\n".into()),
        ("checks_pipelined", 5, "GET /v1/checks HTTP/1.1\r\n\r\nGET /v1/info HTTP/1.1\r\n\r\n".into()),
        ("add_check", 11, post(r#"{"id":"new-1","target":"198.18.0.2:80","kind":"tcp_connect","labels":{"a":"b"}}"#)),
        ("add_dns_check", 2, post(r#"{"id":"d","target":"198.18.0.5:53","kind":"dns","dns":{"name":"example.test","type":"AAAA"}}"#)),
        ("remove", 4, format!("DELETE /v1/checks/web%2D1 HTTP/1.1\r\nAuthorization: bearer {TOKEN}\r\n\r\n")),
        ("reload", 9, format!("POST /v1/reload HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 0\r\n\r\n")),
        ("wrong_method", 6, "PUT /v1/info HTTP/1.1\r\n\r\n".into()),
        ("chunked_body", 8, format!("POST /v1/checks HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")),
        ("watch_sse", 0, "GET /v1/watch HTTP/1.1\r\nAccept: text/event-stream\r\n\r\n".into()),
    ];
    cases
        .into_iter()
        .map(|(n, seed, req)| {
            let mut v = vec![seed];
            v.extend_from_slice(req.as_bytes());
            (format!("{n}.bin"), v)
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
