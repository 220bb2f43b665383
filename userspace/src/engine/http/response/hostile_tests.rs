//! Hostile inputs: endless headers, huge bodies, huge and invalid chunk sizes, endless
//! trailers and interim responses, random bytes and mutated responses.

use super::tests::{assert_bounded, assert_same, protocol_err, run_cuts, Outcome, CORPUS};
use super::*;
use crate::engine::http::test_rng::XorShift;

const KIB64: usize = 64 * 1024;
/// How much of a huge body the streaming tests feed (a few hundred MB).
const STREAMED: usize = 320 * 1024 * 1024;

fn feed_ok(p: &mut ResponseParser, data: &[u8]) {
    assert_eq!(p.feed(data), Ok(Progress::NeedMore));
    assert_bounded(p);
}

#[test]
fn endless_header_value() {
    let mut p = ResponseParser::new(Limits::default());
    feed_ok(&mut p, b"HTTP/1.1 200 OK\r\nX-Endless: ");
    let chunk = [b'a'; 1024];
    let mut err = None;
    for _ in 0..64 {
        match p.feed(&chunk) {
            Ok(Progress::NeedMore) => assert_bounded(&p),
            Ok(Progress::Done) => panic!("done without headers end"),
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    assert_eq!(err, Some(HttpError::HeadersTooLarge { limit: 16 * 1024 }));
    assert!(p.buf.capacity() <= 16 * 1024);
    assert_eq!(
        p.feed(b"\r\n\r\n"),
        Err(HttpError::HeadersTooLarge { limit: 16 * 1024 })
    );
}

#[test]
fn endless_header_lines_and_interim_responses() {
    let mut p = ResponseParser::new(Limits::default());
    feed_ok(&mut p, b"HTTP/1.1 200 OK\r\n");
    let e = (0..10_000).find_map(|_| p.feed(b"X: y\r\n").err());
    assert_eq!(e, Some(HttpError::HeadersTooLarge { limit: 16 * 1024 }));
    assert_bounded(&p);

    let mut p = ResponseParser::new(Limits::default());
    let e = (0..100)
        .find_map(|_| p.feed(b"HTTP/1.1 100 Continue\r\n\r\n").err())
        .unwrap();
    assert!(e.to_string().contains("more than 32 interim"), "{e}");
}

#[test]
fn ten_gigabyte_content_length_streams_in_bounded_memory() {
    let limits = Limits {
        max_body: 1000,
        ..Limits::default()
    };
    let mut p = ResponseParser::new(limits);
    feed_ok(
        &mut p,
        b"HTTP/1.1 200 OK\r\nContent-Length: 10737418240\r\n\r\n",
    );
    let chunk = vec![b'z'; KIB64];
    for _ in 0..STREAMED / KIB64 {
        feed_ok(&mut p, &chunk);
    }
    let r = p.partial().unwrap();
    assert_eq!(r.body.len(), 1000);
    assert!(r.body.capacity() <= 1000);
    assert!(r.truncated);
    assert_eq!(r.body_len, STREAMED as u64);
    assert!(p.buf.capacity() == 0, "head buffer released");
    let e = p.finish_eof().unwrap_err();
    assert!(matches!(e, HttpError::Closed { phase: "body", .. }), "{e}");
}

#[test]
fn ten_gigabyte_chunk_streams_in_bounded_memory() {
    let mut p = ResponseParser::new(Limits::default());
    feed_ok(
        &mut p,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n280000000\r\n",
    );
    let chunk = vec![b'z'; KIB64];
    for _ in 0..STREAMED / KIB64 {
        feed_ok(&mut p, &chunk);
    }
    let r = p.partial().unwrap();
    assert_eq!((r.body.len(), r.body_len), (KIB64, STREAMED as u64));
    assert!(r.body.capacity() <= KIB64);
    assert!(matches!(
        p.finish_eof(),
        Err(HttpError::Closed { phase: "body", .. })
    ));
}

#[test]
fn many_tiny_chunks_stay_bounded() {
    let limits = Limits {
        max_body: 100,
        ..Limits::default()
    };
    let mut p = ResponseParser::new(limits);
    feed_ok(
        &mut p,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    let many = b"1;e=v\r\nx\r\n".repeat(10_000);
    for _ in 0..20 {
        feed_ok(&mut p, &many);
    }
    assert_eq!(p.feed(b"0\r\n\r\n"), Ok(Progress::Done));
    let r = p.response().unwrap();
    assert_eq!(
        (r.body.len(), r.body_len, r.truncated),
        (100, 200_000, true)
    );
}

fn chunked(body: &[u8]) -> Outcome {
    let mut input = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    input.extend_from_slice(body);
    let whole = run_cuts(&input, Limits::default(), false, &[]);
    let cuts: Vec<usize> = (1..input.len()).collect();
    assert_same(
        &whole,
        &run_cuts(&input, Limits::default(), false, &cuts),
        &input,
        "bytewise",
    );
    whole
}

#[test]
fn huge_and_invalid_chunk_sizes() {
    let e = protocol_err(&chunked(b"ffffffffffffffffff\r\nx"));
    assert!(e.contains("overflows 64 bits"), "{e}");
    let o = chunked(b"00000000000000000000000000001\r\nx\r\n0\r\n\r\n");
    assert_eq!(o.response.unwrap().body, b"x", "leading zeros are fine");
    let mut long_ext = b"1;".to_vec();
    long_ext.resize(MAX_CHUNK_LINE + 10, b'e');
    let e = protocol_err(&chunked(&long_ext));
    assert!(e.contains("longer than 4096"), "{e}");
    let endless: Vec<u8> = b"1".repeat(1 << 20);
    let e = protocol_err(&chunked(&endless));
    assert!(e.contains("longer than 4096"), "{e}");
    for bad in [
        &b"xyz\r\n"[..],
        b"-1\r\n",
        b"0x10\r\n",
        b" 5\r\n",
        b"5 5\r\n",
        b"+5\r\n",
        b"5\0\r\n",
    ] {
        let e = protocol_err(&chunked(bad));
        assert!(e.contains("invalid chunk size") || e.contains("NUL"), "{e}");
    }
    for missing in [&b"\r\n"[..], b";ext\r\n", b"\n"] {
        assert!(protocol_err(&chunked(missing)).contains("missing chunk size"));
    }
    // Data longer than announced: no CRLF after the chunk.
    let e = protocol_err(&chunked(b"2\r\nabc\r\n0\r\n\r\n"));
    assert!(e.contains("expected CRLF after chunk data"), "{e}");
    let e = protocol_err(&chunked(b"2\r\nab\rXY"));
    assert!(e.contains("expected CRLF after chunk data"), "{e}");
    assert!(matches!(chunked(b"2\r\nab\r\n0\r\n\r\n").result, Ok(())));
}

#[test]
fn endless_trailers() {
    let mut p = ResponseParser::new(Limits::default());
    feed_ok(
        &mut p,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: ",
    );
    let e = (0..100).find_map(|_| p.feed(&[b'v'; 1024]).err()).unwrap();
    assert!(
        e.to_string().contains("trailer section longer than 16384"),
        "{e}"
    );
    assert_bounded(&p);
    let mut p = ResponseParser::new(Limits::default());
    feed_ok(
        &mut p,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",
    );
    let e = (0..10_000).find_map(|_| p.feed(b"T: v\r\n").err()).unwrap();
    assert!(matches!(
        e,
        HttpError::TooManyHeaders { limit: 100 } | HttpError::Protocol { .. }
    ));
}

fn random_cuts(rng: &mut XorShift, len: usize) -> Vec<usize> {
    let mut cuts: Vec<usize> = (0..rng.below(6)).map(|_| rng.below(len + 1)).collect();
    cuts.sort_unstable();
    cuts
}

fn small_limits(rng: &mut XorShift) -> Limits {
    if rng.below(2) == 0 {
        Limits::default()
    } else {
        Limits {
            max_header_bytes: 8 + rng.below(120),
            max_headers: rng.below(5),
            max_body: rng.below(20),
        }
    }
}

/// Random input never panics, stays bounded (checked by `run_cuts`) and gives the same
/// outcome whatever the split.
fn check_random(rng: &mut XorShift, input: &[u8]) {
    let limits = small_limits(rng);
    let head = rng.below(4) == 0;
    let whole = run_cuts(input, limits, head, &[]);
    let cuts = random_cuts(rng, input.len());
    assert_same(
        &whole,
        &run_cuts(input, limits, head, &cuts),
        input,
        "random split",
    );
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = XorShift::new(0x5eed_0001);
    for _ in 0..3000 {
        let len = rng.below(200);
        let mut input: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        if rng.below(2) == 0 {
            // Give the parser a chance to get past the status line.
            input.splice(0..0, b"HTTP/1.1 200 OK\r\n".iter().copied());
        }
        check_random(&mut rng, &input);
    }
}

#[test]
fn mutated_responses_never_panic() {
    let mut rng = XorShift::new(0x5eed_0002);
    for _ in 0..6000 {
        let mut input = CORPUS[rng.below(CORPUS.len())].as_bytes().to_vec();
        rng.mutate(&mut input);
        check_random(&mut rng, &input);
    }
}
