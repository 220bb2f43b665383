//! API unit tests: routing against an in-memory [`MemoryControl`], and one connection
//! at a time through in-memory duplex streams (limits, token, hostile input).

mod limits;
mod metrics;
mod routing;

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, DuplexStream},
    sync::{watch, Semaphore},
};

use super::{
    conn,
    control::DaemonInfo,
    http::{self, ResponseHead},
    memory::MemoryControl,
    server::{ApiOptions, Shared},
};

pub(super) const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

pub(super) fn info() -> DaemonInfo {
    DaemonInfo {
        version: "0.1.0-test".into(),
        uptime_secs: 42,
        clock: "userspace".into(),
        kernel_unavailable: Some("test".into()),
        iface: None,
        config_path: None,
        checks: 0,
        per_target_pps: 50.0,
        syn_ack_reset: None,
        answer_hook: None,
    }
}

/// A control with `web-1` (pool=a) and `dns-1` (pool=b).
pub(super) fn control() -> Arc<MemoryControl> {
    let c = Arc::new(MemoryControl::new(info()));
    use super::Control as _;
    let web = serde_json::json!({"id": "web-1", "target": "127.0.0.1:80", "kind": "tcp_connect", "labels": {"pool": "a"}});
    let dns = serde_json::json!({"id": "dns-1", "target": "127.0.0.1:53", "kind": "dns", "labels": {"pool": "b"}, "dns": {"name": "example.test"}});
    c.add_check(&web).expect("valid check");
    c.add_check(&dns).expect("valid check");
    c
}

/// Everything a connection needs, with the shutdown sender kept alive.
pub(super) struct Fixture {
    pub control: Arc<MemoryControl>,
    pub shared: Arc<Shared>,
    pub stop: watch::Sender<bool>,
}

pub(super) fn fixture(opts: ApiOptions) -> Fixture {
    let control = control();
    let (stop, shutdown) = watch::channel(false);
    let shared = Arc::new(Shared {
        control: control.clone(),
        token: TOKEN.to_owned(),
        watchers: Arc::new(Semaphore::new(opts.max_watchers)),
        opts,
        shutdown,
    });
    Fixture {
        control,
        shared,
        stop,
    }
}

/// Serve one connection over an in-memory stream; returns the client end.
pub(super) fn connect(f: &Fixture, tcp: bool) -> DuplexStream {
    let (client, server) = tokio::io::duplex(1 << 20);
    let shared = f.shared.clone();
    tokio::spawn(async move { conn::handle(server, &shared, tcp).await });
    client
}

/// Send `request`, close our sending side, read the whole answer.
pub(super) async fn exchange(f: &Fixture, tcp: bool, request: &[u8]) -> (ResponseHead, String) {
    let mut c = connect(f, tcp);
    c.write_all(request).await.expect("write");
    c.shutdown().await.expect("shutdown");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), c.read_to_end(&mut raw))
        .await
        .expect("answer in time")
        .expect("read");
    split(&raw)
}

pub(super) fn split(raw: &[u8]) -> (ResponseHead, String) {
    let end = http::head_end(raw, 0).expect("complete head");
    let head = http::parse_response_head(&raw[..end]).expect("valid head");
    (head, String::from_utf8_lossy(&raw[end..]).into_owned())
}

pub(super) fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes()
}

pub(super) fn with_body(method: &str, path: &str, token: Option<&str>, body: &str) -> Vec<u8> {
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

pub(super) fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}
