//! One connection against the limits: token, sizes, time, watchers, hostile bytes.

use rand::{Rng, SeedableRng};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::*;
use crate::api::control::{Control as _, Event};

fn kind(body: &str) -> String {
    json(body)["kind"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn mutating_calls_need_the_token() {
    let f = fixture(ApiOptions::default());
    for token in [None, Some("wrong"), Some(&TOKEN[..63])] {
        let (h, b) = exchange(
            &f,
            false,
            &with_body("DELETE", "/v1/checks/web-1", token, ""),
        )
        .await;
        assert_eq!((h.status, kind(&b)), (401, "unauthorized".into()));
        assert!(http::header(&h.headers, "www-authenticate").is_some());
    }
    let (h, _) = exchange(&f, false, &with_body("POST", "/v1/reload", None, "")).await;
    assert_eq!(h.status, 401);
    // Reads need no token.
    assert_eq!(exchange(&f, false, &get("/v1/status")).await.0.status, 200);
    assert_eq!(f.control.status().len(), 2);
}

#[tokio::test]
async fn sizes_and_framing() {
    let f = fixture(ApiOptions::default());
    let big = "x".repeat(64 * 1024 + 1);
    let (h, b) = exchange(
        &f,
        false,
        &with_body("POST", "/v1/checks", Some(TOKEN), &big),
    )
    .await;
    assert_eq!((h.status, kind(&b)), (413, "too_large".into()));
    let long_head = format!(
        "GET /v1/info HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "y".repeat(16 * 1024)
    );
    let (h, _) = exchange(&f, false, long_head.as_bytes()).await;
    assert_eq!(h.status, 431);
    let endless = format!("GET /v1/info HTTP/1.1\r\nX-Pad: {}", "y".repeat(40 * 1024));
    assert_eq!(exchange(&f, false, endless.as_bytes()).await.0.status, 431);
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /v1/info HTTP/9.9\r\n\r\n",
        b"\x00\x01\x02\r\n\r\n",
    ] {
        let (h, b) = exchange(&f, false, bad).await;
        assert_eq!((h.status, kind(&b)), (400, "bad_request".into()), "{bad:?}");
    }
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let chunked =
        format!("POST /v1/checks HTTP/1.1\r\n{auth}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    assert_eq!(exchange(&f, false, chunked.as_bytes()).await.0.status, 501);
    let no_len = format!("POST /v1/checks HTTP/1.1\r\n{auth}\r\n");
    assert_eq!(exchange(&f, false, no_len.as_bytes()).await.0.status, 411);
    let short = format!("POST /v1/checks HTTP/1.1\r\n{auth}Content-Length: 10\r\n\r\n{{}}");
    assert_eq!(exchange(&f, false, short.as_bytes()).await.0.status, 400);
    let two = format!(
        "POST /v1/checks HTTP/1.1\r\n{auth}Content-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}"
    );
    assert_eq!(exchange(&f, false, two.as_bytes()).await.0.status, 400);
}

#[tokio::test]
async fn expect_continue_is_answered() {
    let f = fixture(ApiOptions::default());
    let body = r#"{"id": "c-1", "target": "127.0.0.1:9", "kind": "tcp_connect"}"#;
    let head = format!(
        "POST /v1/checks HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut c = BufReader::new(connect(&f, false));
    c.get_mut().write_all(head.as_bytes()).await.unwrap();
    let mut line = String::new();
    c.read_line(&mut line).await.unwrap();
    assert_eq!(line, "HTTP/1.1 100 Continue\r\n");
    c.read_line(&mut line).await.unwrap();
    c.get_mut().write_all(body.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).await.unwrap();
    assert_eq!(split(&raw).0.status, 201);
}

#[tokio::test(start_paused = true)]
async fn slow_heads_time_out() {
    let f = fixture(ApiOptions::default());
    let mut c = connect(&f, false);
    c.write_all(b"GET /v1/info HTTP/1.1\r\nX-Slow: 1")
        .await
        .unwrap();
    let mut raw = Vec::new();
    // Paused time: the 10 s deadline passes as soon as everything is idle.
    c.read_to_end(&mut raw).await.unwrap();
    let (h, b) = split(&raw);
    assert_eq!((h.status, kind(&b)), (408, "timeout".into()));
}

#[tokio::test]
async fn tcp_requests_need_a_loopback_host() {
    let f = fixture(ApiOptions::default());
    let evil = b"GET /v1/status HTTP/1.1\r\nHost: evil.example:9911\r\n\r\n";
    let (h, b) = exchange(&f, true, evil).await;
    assert_eq!((h.status, kind(&b)), (400, "bad_host".into()));
    assert_eq!(
        exchange(&f, false, evil).await.0.status,
        200,
        "no Host check on the socket"
    );
    let ok = b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1:9911\r\n\r\n";
    assert_eq!(exchange(&f, true, ok).await.0.status, 200);
}

async fn open_watch(f: &Fixture, accept: &str) -> (ResponseHead, BufReader<DuplexStream>) {
    let mut c = BufReader::new(connect(f, false));
    let req = format!("GET /v1/watch HTTP/1.1\r\nAccept: {accept}\r\n\r\n");
    c.get_mut().write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let n = c.read_until(b'\n', &mut head).await.unwrap();
        assert!(n > 0, "closed before the head: {head:?}");
    }
    (http::parse_response_head(&head).unwrap(), c)
}

async fn wait_subscribers(f: &Fixture, n: usize) {
    for _ in 0..500 {
        if f.control.subscribers() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no subscriber");
}

#[tokio::test]
async fn watch_streams_events_and_is_limited() {
    let opts = ApiOptions {
        max_watchers: 1,
        ..ApiOptions::default()
    };
    let f = fixture(opts);
    let (h, mut w) = open_watch(&f, "*/*").await;
    assert_eq!(h.status, 200);
    assert_eq!(
        http::header(&h.headers, "content-type"),
        Some("application/x-ndjson")
    );
    wait_subscribers(&f, 1).await;
    let (h2, b2) = exchange(&f, false, &get("/v1/watch")).await;
    assert_eq!((h2.status, kind(&b2)), (429, "too_many_watchers".into()));
    f.control.publish(Event::CheckRemoved {
        id: crate::engine::spec::CheckId::new("web-1"),
    });
    let mut line = String::new();
    w.read_line(&mut line).await.unwrap();
    assert_eq!(
        json(&line),
        serde_json::json!({"event": "check_removed", "id": "web-1"})
    );
    // Shutdown ends the stream.
    f.stop.send(true).unwrap();
    let mut rest = String::new();
    tokio::time::timeout(Duration::from_secs(10), w.read_to_string(&mut rest))
        .await
        .expect("stream ends on shutdown")
        .unwrap();
    assert_eq!(rest, "");
}

#[tokio::test]
async fn watch_speaks_sse() {
    let f = fixture(ApiOptions::default());
    let (h, mut w) = open_watch(&f, "text/event-stream").await;
    assert_eq!(
        http::header(&h.headers, "content-type"),
        Some("text/event-stream")
    );
    wait_subscribers(&f, 1).await;
    f.control.publish(Event::CheckAdded {
        id: crate::engine::spec::CheckId::new("x"),
    });
    let mut block = String::new();
    while !block.ends_with("\n\n") {
        w.read_line(&mut block).await.unwrap();
    }
    assert_eq!(
        block,
        "event: check_added\ndata: {\"event\":\"check_added\",\"id\":\"x\"}\n\n"
    );
}

#[tokio::test]
async fn hostile_bytes_never_panic() {
    let f = fixture(ApiOptions::default());
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let pieces: [&[u8]; 12] = [
        b"GET ",
        b"POST ",
        b"/v1/checks/",
        b"%",
        b"%zz",
        b"?label=",
        b" HTTP/1.1",
        b"\r\n",
        b"Content-Length: ",
        b"99999999999999999999",
        b"Authorization: Bearer ",
        b"\xff\x00:",
    ];
    for _ in 0..300 {
        let mut req = Vec::new();
        for _ in 0..rng.random_range(1..16) {
            if rng.random_bool(0.2) {
                req.extend((0..rng.random_range(1..8)).map(|_| rng.random::<u8>()));
            } else {
                req.extend_from_slice(pieces[rng.random_range(0..pieces.len())]);
            }
        }
        req.extend_from_slice(b"\r\n\r\n");
        let mut c = connect(&f, true);
        c.write_all(&req).await.unwrap();
        c.shutdown().await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), c.read_to_end(&mut raw))
            .await
            .expect("answered")
            .unwrap();
        if !raw.is_empty() {
            let (h, _) = split(&raw);
            assert!((200..600).contains(&h.status), "{req:?}");
        }
    }
}
