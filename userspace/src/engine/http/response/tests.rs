//! Functional tests of the response parser, and the split-equivalence harness shared
//! with the hostile tests.

use super::*;
use crate::engine::spec::HttpSpec;

/// Everything observable at the end of a parse.
#[derive(Debug, PartialEq)]
pub(super) struct Outcome {
    pub(super) result: Result<(), HttpError>,
    pub(super) response: Option<Response>,
    pub(super) consumed: u64,
    pub(super) excess: u64,
    pub(super) keepalive: bool,
}

/// Feeds `input` cut at the (sorted) `cuts`, then EOF if more was needed.
pub(super) fn run_cuts(input: &[u8], limits: Limits, head: bool, cuts: &[usize]) -> Outcome {
    let mut p = ResponseParser::with_head(limits, head);
    let mut result = Ok(());
    let mut done = false;
    let mut start = 0;
    for end in cuts.iter().copied().chain([input.len()]) {
        let end = end.clamp(start, input.len());
        match p.feed(&input[start..end]) {
            Ok(Progress::Done) => done = true,
            Ok(Progress::NeedMore) => assert!(!done, "NeedMore after Done"),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
        assert_bounded(&p);
        start = end;
    }
    if result.is_ok() && !done {
        result = p.finish_eof();
    }
    if result.is_err() {
        assert_eq!(p.feed(b"more"), result.clone().map(|()| Progress::Done));
    }
    Outcome {
        result,
        response: p.response().cloned(),
        consumed: p.consumed(),
        excess: p.excess(),
        keepalive: p.keepalive_ok(),
    }
}

/// The parser's buffers never exceed its limits.
pub(super) fn assert_bounded(p: &ResponseParser) {
    let line_cap = p.limits.max_header_bytes.max(MAX_CHUNK_LINE);
    assert!(p.buf.capacity() <= line_cap, "buf {}", p.buf.capacity());
    if let Some(r) = &p.response {
        assert!(r.body.len() <= p.limits.max_body);
        assert!(
            r.body.capacity() <= p.limits.max_body,
            "body cap {}",
            r.body.capacity()
        );
    }
}

/// Parses all at once, then checks that one byte per feed and every two-piece split
/// give the same outcome (for errors: the same error).
pub(super) fn parse_with(input: &[u8], limits: Limits, head: bool) -> Outcome {
    let whole = run_cuts(input, limits, head, &[]);
    let cuts: Vec<usize> = (1..input.len()).collect();
    assert_same(
        &whole,
        &run_cuts(input, limits, head, &cuts),
        input,
        "bytewise",
    );
    for i in 0..=input.len() {
        assert_same(&whole, &run_cuts(input, limits, head, &[i]), input, "split");
    }
    whole
}

pub(super) fn assert_same(a: &Outcome, b: &Outcome, input: &[u8], how: &str) {
    let ctx = || format!("{how} differs on {:?}", input.escape_ascii().to_string());
    assert_eq!(a.result, b.result, "{}", ctx());
    if a.result.is_ok() {
        assert_eq!(a, b, "{}", ctx());
    }
}

fn parse(input: &str) -> Outcome {
    parse_with(input.as_bytes(), Limits::default(), false)
}

fn ok(input: &str) -> Response {
    let o = parse(input);
    o.result.unwrap();
    o.response.unwrap()
}

pub(super) fn protocol_err(o: &Outcome) -> String {
    match &o.result {
        Err(HttpError::Protocol { detail, .. }) => detail.clone(),
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

fn perr(input: &str) -> String {
    protocol_err(&parse(input))
}

#[test]
fn content_length_keepalive() {
    let o = parse("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello");
    let r = o.response.unwrap();
    assert_eq!(
        (r.version, r.status, r.reason.as_str()),
        (HttpVersion::Http11, 200, "OK")
    );
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("CONTENT-LENGTH"), Some("5"));
    assert_eq!(r.header("x-none"), None);
    assert_eq!(r.body, b"hello");
    assert!(!r.truncated);
    assert_eq!(r.body_len, 5);
    assert!(o.keepalive);
    assert_eq!((o.consumed, o.excess), (69, 0));
}

#[test]
fn connection_close_and_http10() {
    let o = parse("HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n");
    assert!(o.result.is_ok() && !o.keepalive);
    let o = parse("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi");
    assert_eq!(o.response.unwrap().version, HttpVersion::Http10);
    assert!(!o.keepalive);
    // Close-delimited: needs the EOF.
    let mut p = ResponseParser::new(Limits::default());
    assert_eq!(
        p.feed(b"HTTP/1.0 200 OK\r\n\r\nbody").unwrap(),
        Progress::NeedMore
    );
    assert!(p.response().is_none());
    assert_eq!(p.partial().unwrap().body, b"body");
    assert_eq!(p.framing(), Some(Framing::Close));
    p.finish_eof().unwrap();
    assert_eq!(p.response().unwrap().body, b"body");
    assert!(!p.keepalive_ok());
}

#[test]
fn chunked_with_extensions_and_trailers() {
    let o = parse(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
         5;name=\"v;x\"\r\nhello\r\n6 ; ext\r\n world\r\nA\r\n0123456789\r\n\
         0\r\nX-Checksum: abc\r\nX-Other:  two \r\n\r\n",
    );
    assert!(o.keepalive);
    let r = o.response.unwrap();
    assert_eq!(r.body, b"hello world0123456789");
    assert_eq!(
        r.trailers,
        vec![
            ("X-Checksum".into(), "abc".into()),
            ("X-Other".into(), "two".into())
        ]
    );
}

#[test]
fn lf_only_line_endings() {
    let r = ok("HTTP/1.1 200 OK\nContent-Length: 2\n\nhi");
    assert_eq!(r.body, b"hi");
    let r = ok("HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n2\nhi\n0\n\n");
    assert_eq!(r.body, b"hi");
    let r = ok("HTTP/1.1 200 OK\r\nA: b\n\r\n");
    assert_eq!(r.header("a"), Some("b"));
}

#[test]
fn no_body_cases() {
    let head = parse_with(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
        Limits::default(),
        true,
    );
    assert!(head.result.is_ok() && head.keepalive);
    assert!(head.response.unwrap().body.is_empty());
    let chunked_head = parse_with(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        Limits::default(),
        true,
    );
    assert!(chunked_head.keepalive);
    for status in ["204 No Content", "304 Not Modified"] {
        let o = parse(&format!("HTTP/1.1 {status}\r\nContent-Length: 50\r\n\r\n"));
        assert!(o.keepalive);
        assert_eq!(o.response.unwrap().body_len, 0);
    }
    assert!(ResponseParser::for_method(Limits::default(), "head").head_request);
    assert!(!ResponseParser::for_method(Limits::default(), "GET").head_request);
}

#[test]
fn interim_responses_are_skipped() {
    let input = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n\
                 HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx";
    let o = parse(input);
    let r = o.response.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("link"), None);
    assert_eq!(o.consumed, input.len() as u64);
    // 101 ends the HTTP exchange.
    let o = parse("HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n\x00binary");
    assert_eq!(o.response.unwrap().status, 101);
    assert!(!o.keepalive);
    assert_eq!(o.excess, 7);
}

#[test]
fn excess_bytes_after_the_response() {
    let mut p = ResponseParser::new(Limits::default());
    let data = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1";
    assert_eq!(p.feed(data).unwrap(), Progress::Done);
    assert_eq!(p.last_feed_consumed(), data.len() - 8);
    assert_eq!(p.excess(), 8);
    assert!(!p.keepalive_ok());
    assert_eq!(p.feed(b"abc").unwrap(), Progress::Done);
    assert_eq!((p.last_feed_consumed(), p.excess()), (0, 11));
    assert_eq!(p.consumed(), data.len() as u64 - 8);
    p.finish_eof().unwrap();
}

#[test]
fn status_lines() {
    assert_eq!(ok("HTTP/1.1 200\r\n\r\n").reason, "");
    assert_eq!(ok("HTTP/1.1 200 \r\n\r\n").reason, "");
    assert_eq!(
        ok("HTTP/1.1 599 Very Custom Reason\r\n\r\n").reason,
        "Very Custom Reason"
    );
    assert_eq!(ok("HTTP/1.1 999 x\r\n\r\n").status, 999);
    assert!(perr("HTTP/2 200 OK\r\n\r\n").contains("unsupported HTTP version \"HTTP/2\""));
    assert!(perr("HTTP/1.2 200 OK\r\n\r\n").contains("HTTP/1.2"));
    assert!(perr("HTTP/1.10 200 OK\r\n\r\n").contains("HTTP/1.10"));
    assert!(perr("HTTP/0.9 200 OK\r\n\r\n").contains("version"));
    assert!(perr("HTTP/1.1\r\n\r\n").contains("without a status code"));
    assert!(perr("HTTP/1.1 20 OK\r\n\r\n").contains("not 3 digits"));
    assert!(perr("HTTP/1.1 2000 OK\r\n\r\n").contains("space after status code"));
    assert!(perr("HTTP/1.1 099 OK\r\n\r\n").contains("below 100"));
    assert!(perr("HTTP/1.1 -20 OK\r\n\r\n").contains("not 3 digits"));
    assert!(perr("HTTP/1.1  200 OK\r\n\r\n").contains("not 3 digits"));
}

#[test]
fn garbage_is_refused_early() {
    let mut p = ResponseParser::new(Limits::default());
    let e = p.feed(b"SSH-2.0-OpenSSH_9.6").unwrap_err();
    assert_eq!(
        e,
        HttpError::Protocol {
            offset: 0,
            detail: "not an HTTP response: expected \"HTTP/\", found byte 'S'".into()
        }
    );
    let mut p = ResponseParser::new(Limits::default());
    assert_eq!(p.feed(b"HT").unwrap(), Progress::NeedMore);
    assert!(matches!(
        p.feed(b"ML>"),
        Err(HttpError::Protocol { offset: 2, .. })
    ));
    assert!(perr("\x15\x03\x03\x00\x02\x02\x50").contains("looks like TLS"));
    assert!(perr("\r\nHTTP/1.1 200 OK\r\n\r\n").contains("expected \"HTTP/\""));
    assert!(perr("http/1.1 200 OK\r\n\r\n").contains("found byte 'h'"));
}

#[test]
fn malformed_fields() {
    let e = parse("HTTP/1.1 200 OK\r\nA: b\r\n  folded\r\n\r\n");
    assert!(protocol_err(&e).contains("obs-fold"));
    assert!(matches!(
        e.result,
        Err(HttpError::Protocol { offset: 23, .. })
    ));
    assert!(perr("HTTP/1.1 200 OK\r\n\tfolded: x\r\n\r\n").contains("obs-fold"));
    assert!(perr("HTTP/1.1 200 OK\r\nA : b\r\n\r\n").contains("invalid byte ' ' in header name"));
    assert!(perr("HTTP/1.1 200 OK\r\nno colon\r\n\r\n").contains("without ':'"));
    assert!(perr("HTTP/1.1 200 OK\r\n: v\r\n\r\n").contains("empty header name"));
    assert!(perr("HTTP/1.1 200 OK\r\nA: b\0c\r\n\r\n").contains("NUL"));
    assert!(perr("HTTP/1.1 200 OK\r\nA: b\rc\r\n\r\n").contains("bare CR"));
    assert!(perr("HTTP/1.1 200 OK\rA: b\r\n\r\n").contains("bare CR"));
    // Obs-text values are kept (lossily).
    let r = ok("HTTP/1.1 200 OK\r\nX: caf\u{e9} \r\nContent-Length: 0\r\n\r\n");
    assert_eq!(r.header("x"), Some("caf\u{e9}"));
}

#[test]
fn content_length_validation() {
    let head = "HTTP/1.1 200 OK\r\n";
    let err = |h: &str| perr(&format!("{head}{h}\r\n\r\n"));
    assert!(err("Content-Length: -1").contains("negative Content-Length -1"));
    assert!(err("Content-Length: 5\r\nContent-Length: 5").contains("duplicate"));
    assert!(err("Content-Length: 5, 5").contains("duplicate"));
    assert!(err("Content-Length: 5\r\ncontent-length: 6").contains("conflicting"));
    assert!(err("Content-Length: +5").contains("invalid Content-Length"));
    assert!(err("Content-Length: 5 5").contains("invalid"));
    assert!(err("Content-Length: 0x10").contains("invalid"));
    assert!(err("Content-Length:").contains("empty Content-Length"));
    assert!(err("Content-Length: 99999999999999999999999").contains("overflows"));
    let r = ok(&format!("{head}Content-Length: 0003\r\n\r\nabc"));
    assert_eq!(r.body, b"abc");
    let mut p = ResponseParser::new(Limits::default());
    let max = format!("{head}Content-Length: 18446744073709551615\r\n\r\nab");
    assert_eq!(p.feed(max.as_bytes()), Ok(Progress::NeedMore));
    assert_eq!(p.framing(), Some(Framing::Length(u64::MAX)));
    assert_eq!(p.partial().unwrap().body_len, 2);
}

#[test]
fn transfer_encoding_rules() {
    // Transfer-Encoding wins over Content-Length, but the connection is not reused.
    let o = parse("HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n");
    assert_eq!(o.response.as_ref().unwrap().body, b"x");
    assert!(!o.keepalive);
    // Not chunked: close-delimited.
    let o = parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzz");
    assert_eq!(o.response.unwrap().body, b"zz");
    assert!(!o.keepalive);
    let o = parse(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n",
    );
    assert!(o.keepalive);
    let bad = "chunked must be the last";
    assert!(perr("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n").contains(bad));
    assert!(perr("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n").contains(bad));
    assert!(perr("HTTP/1.1 200 OK\r\nTransfer-Encoding: ,chunked\r\n\r\n").contains("empty"));
}

#[test]
fn eof_before_the_end() {
    let closed = |input: &str| match parse(input).result {
        Err(HttpError::Closed { phase, detail, .. }) => (phase, detail),
        other => panic!("{other:?}"),
    };
    assert_eq!(closed(""), ("headers", "no response received".into()));
    assert_eq!(closed("HTTP/1.1 200 OK\r\nA: b\r\n").0, "headers");
    assert_eq!(
        closed("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"),
        ("body", "7 of 10 Content-Length body bytes missing".into())
    );
    assert_eq!(
        closed("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab").0,
        "body"
    );
    assert_eq!(
        closed("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n").0,
        "body"
    );
    // The status of a response whose body was cut stays available.
    let mut p = ResponseParser::new(Limits::default());
    p.feed(b"HTTP/1.1 503 Busy\r\nContent-Length: 10\r\n\r\nabc")
        .unwrap();
    let e = p.finish_eof().unwrap_err();
    assert!(
        e.to_string()
            .contains("connection closed in body after 44 bytes"),
        "{e}"
    );
    assert_eq!(p.partial().map(|r| r.status), Some(503));
    assert!(p.response().is_none());
}

#[test]
fn body_is_truncated_at_max_body() {
    let limits = Limits {
        max_body: 4,
        ..Limits::default()
    };
    let o = parse_with(
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789",
        limits,
        false,
    );
    let r = o.response.unwrap();
    assert_eq!(
        (r.body.as_slice(), r.truncated, r.body_len),
        (&b"0123"[..], true, 10)
    );
    assert!(
        o.keepalive,
        "a truncated but complete body keeps the connection usable"
    );
    let zero = Limits {
        max_body: 0,
        ..Limits::default()
    };
    let o = parse_with(b"HTTP/1.1 200 OK\r\n\r\nabc", zero, false);
    assert!(o.response.as_ref().unwrap().truncated && o.response.unwrap().body.is_empty());
}

#[test]
fn too_many_headers() {
    let limits = Limits {
        max_headers: 3,
        ..Limits::default()
    };
    let ok3 = b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nContent-Length: 0\r\n\r\n";
    assert!(parse_with(ok3, limits, false).result.is_ok());
    let four = b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\nContent-Length: 0\r\n\r\n";
    let e = parse_with(four, limits, false).result.unwrap_err();
    assert_eq!(e, HttpError::TooManyHeaders { limit: 3 });
    let trailers =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nA: 1\r\n\r\n0\r\nT: 1\r\nU: 2\r\n\r\n";
    let e = parse_with(trailers, limits, false).result.unwrap_err();
    assert_eq!(e, HttpError::TooManyHeaders { limit: 3 });
}

#[test]
fn limits_for_spec() {
    let spec = HttpSpec {
        method: "GET".into(),
        path: "/".into(),
        host: None,
        headers: vec![],
        proxy_protocol: None,
        tls: None,
        keepalive: true,
        max_body: 123,
        expect: Default::default(),
    };
    let l = Limits::for_spec(&spec);
    assert_eq!(
        (l.max_body, l.max_header_bytes, l.max_headers),
        (123, 16384, 100)
    );
}

/// Valid and invalid responses used by the split-equivalence and mutation tests.
pub(super) const CORPUS: &[&str] = &[
    "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA",
    "HTTP/1.0 200 OK\r\nServer: x\r\n\r\nclose delimited body",
    "HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n3;a=b\nabc\n0\nT: v\n\n",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\nX",
    "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
    "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
    "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n0\r\n\r\n",
    "HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n",
    "HTTP/2 200\r\n\r\n",
    "<html>",
    "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
];

#[test]
fn every_split_gives_the_same_result() {
    for input in CORPUS {
        parse(input);
    }
    let small = Limits {
        max_header_bytes: 40,
        max_headers: 2,
        max_body: 3,
    };
    for input in CORPUS {
        parse_with(input.as_bytes(), small, false);
        parse_with(input.as_bytes(), small, true);
    }
}
