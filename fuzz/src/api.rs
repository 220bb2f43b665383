//! Target `api_request`: the local API's request decoding
//! (`sonde::api::http`, `sonde::api::routes`), on an arbitrary byte stream arriving in
//! arbitrary reads.
//!
//! Input: 1 split-seed byte ([`crate::splits`]), then the bytes a client sends. The
//! target follows the server's steps with the public pieces: find the end of the head
//! read by read ([`head_end`], as the connection does, 16 KiB limit), parse the head,
//! look up `Host`, `Authorization` and `Content-Length`, route it ([`routes::plan`]), take
//! the body the way the connection does (Content-Length, 64 KiB limit, bytes past it
//! dropped) and run the route against an in-memory daemon ([`MemoryControl`]), which
//! validates an added check with the config parser.
//!
//! The connection loop itself (`api::conn`: reading, `Host` loopback rule, body reads)
//! is private to the crate, so it is mirrored here rather than called.
//!
//! Invariants: never panics; the head end found read by read is the one found in the
//! whole stream; a parsed head has a token method, a target without spaces or controls,
//! token header names and values without controls; every response the server would send
//! (errors included) parses back with the same status and a Content-Length equal to its
//! body's.

use sonde::api::{
    http::{content_length, head_end, header, parse_request_head, parse_response_head, Response},
    routes::{self, Route},
    token, DaemonInfo, MemoryControl,
};

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

/// A response must survive the trip through its own wire format.
fn check_response(resp: &Response) {
    let bytes = resp.to_bytes();
    let end = head_end(&bytes, 0).expect("a response has a complete head");
    let head = parse_response_head(&bytes[..end])
        .unwrap_or_else(|e| panic!("own response head does not parse: {e}"));
    assert_eq!(head.status, resp.status);
    assert_eq!(
        content_length(&head.headers),
        Ok(Some(resp.body.len() as u64)),
        "Content-Length of own response"
    );
    assert_eq!(&bytes[end..], &resp.body[..]);
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
    let Some(end) = found.filter(|&e| e <= MAX_HEAD) else {
        return;
    };
    let head = match parse_request_head(&stream[..end]) {
        Ok(h) => h,
        Err(e) => {
            check_response(&Response::error(400, "bad_request", &e.to_string()));
            return;
        }
    };
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
    let h = &head.headers;
    let _ = header(h, "host");
    let authorized = token::bearer_matches(header(h, "authorization"), TOKEN);
    let route = match routes::plan(&head.method, &head.target) {
        Ok(r) => r,
        Err(resp) => {
            assert!(
                matches!(resp.status, 400 | 404 | 405),
                "plan answered {}",
                resp.status
            );
            check_response(&resp);
            return;
        }
    };
    if route == Route::Watch || (route.mutating() && !authorized) {
        return;
    }
    let rest = &stream[end..];
    let body: &[u8] = if route.takes_body() {
        if header(h, "transfer-encoding").is_some() {
            return;
        }
        match content_length(h) {
            Ok(Some(n)) if n <= MAX_BODY as u64 => &rest[..rest.len().min(n as usize)],
            Ok(_) => return,
            Err(e) => {
                check_response(&Response::error(400, "bad_request", &e.to_string()));
                return;
            }
        }
    } else {
        &[]
    };
    let control = control();
    let resp = routes::execute(&control, &route, body);
    check_response(&resp);
    if route == Route::AddCheck && resp.status == 201 {
        let added = header(
            &resp
                .headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.clone()))
                .collect::<Vec<_>>(),
            "location",
        )
        .map(str::to_owned)
        .expect("201 carries a Location");
        let again = routes::plan("GET", &added).expect("Location routes");
        let got = routes::execute(&control, &again, &[]);
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
