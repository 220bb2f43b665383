//! Baseline for the HTTP works: what a plain tokio + hyper 1 program does with the same
//! targets and request. `--inflight` tasks, each looping: TCP connect, hyper HTTP/1.1
//! handshake, `GET --path` with `Connection: close`, the body read (bounded like sonde's,
//! 4096 bytes) and matched (status 200, body contains --expect-body), the connection
//! closed; all of it under tokio::time::timeout. A new connection per request, as sonde's
//! `http` work.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{
    header::{HeaderValue, CONNECTION, HOST, USER_AGENT},
    Request, StatusCode,
};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::{net::TcpStream, time::Instant};

use crate::{cpu, Args, Tally};

/// Most body bytes read, as sonde's http work (`max_body`).
const MAX_BODY: usize = 4096;

#[derive(Default)]
struct Shared {
    next: AtomicU64,
    matched: AtomicU64,
    timeouts: AtomicU64,
    other: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    fn other(&self, label: &str) {
        let mut o = self
            .other
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *o.entry(label.to_owned()).or_insert(0) += 1;
    }
}

/// One target: its address and its Host header.
struct Target {
    addr: SocketAddr,
    host: HeaderValue,
}

/// What one request came to (matched, or the label of what went wrong).
enum Outcome {
    Matched,
    Other(String),
}

/// One check: a new connection, one request, the answer judged.
async fn check(t: &Target, path: &str, expect: &[u8]) -> Outcome {
    let stream = match TcpStream::connect(t.addr).await {
        Ok(s) => s,
        Err(e) => return Outcome::Other(format!("connect: {:?}", e.kind())),
    };
    let _ = stream.set_nodelay(true);
    let (mut tx, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
        Ok(x) => x,
        Err(e) => return Outcome::Other(format!("handshake: {e}")),
    };
    let req = match Request::get(path)
        .header(HOST, t.host.clone())
        .header(USER_AGENT, HeaderValue::from_static("sonde-bench-hyper"))
        .header(CONNECTION, HeaderValue::from_static("close"))
        .body(Empty::<Bytes>::new())
    {
        Ok(r) => r,
        Err(e) => return Outcome::Other(format!("request: {e}")),
    };
    let exchange = async move {
        let resp = tx
            .send_request(req)
            .await
            .map_err(|e| format!("http: {e}"))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(format!("status {}", status.as_u16()));
        }
        if !body.windows(expect.len().max(1)).any(|w| w == expect) && !expect.is_empty() {
            return Err("body mismatch".to_owned());
        }
        Ok(())
    };
    // The connection task runs in this task too: it ends when the exchange is over
    // (Connection: close) and the socket is closed.
    let (r, _) = tokio::join!(exchange, conn);
    match r {
        Ok(()) => Outcome::Matched,
        Err(e) => Outcome::Other(e),
    }
}

async fn prober(s: Arc<Shared>, targets: Arc<Vec<Target>>, t0: Instant, args: Arc<Args>) {
    let end = t0 + Duration::from_secs(args.duration);
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let expect = args.expect_body.as_bytes();
    loop {
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if let Some(rate) = args.rate {
            #[allow(clippy::cast_precision_loss)]
            let at = t0 + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(at).await;
        }
        if Instant::now() >= end {
            // This number was taken but never used: give it back to the count.
            s.next.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let t = &targets[usize::try_from(i % targets.len() as u64).unwrap_or(0)];
        match tokio::time::timeout(timeout, check(t, &args.path, expect)).await {
            Ok(Outcome::Matched) => {
                s.matched.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Outcome::Other(label)) => s.other(&label),
            Err(_) => {
                s.timeouts.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Run the baseline for `dur`.
pub fn run(args: &Args, addrs: &[Ipv4Addr], dur: Duration) -> Result<Tally> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    let targets = addrs
        .iter()
        .map(|a| {
            let host = if args.port == 80 {
                a.to_string()
            } else {
                format!("{a}:{}", args.port)
            };
            Ok(Target {
                addr: SocketAddr::from((*a, args.port)),
                host: HeaderValue::from_str(&host)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let targets = Arc::new(targets);
    let shared = Arc::new(Shared::default());
    let a = Arc::new(Args {
        duration: dur.as_secs(),
        ..args.clone()
    });
    let start = cpu::Snapshot::now();
    rt.block_on(async {
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..args.inflight)
            .map(|_| tokio::spawn(prober(shared.clone(), targets.clone(), t0, a.clone())))
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    });
    let cpu = cpu::Snapshot::now().since(&start);
    drop(rt);
    let other = shared
        .other
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    Ok(Tally {
        sent: shared.next.load(Ordering::Relaxed),
        matched: shared.matched.load(Ordering::Relaxed),
        timeouts: shared.timeouts.load(Ordering::Relaxed),
        other,
        extra: json!({ "tasks": args.inflight, "client": "hyper 1, http1, new connection per request" }),
        cpu: Some(cpu),
    })
}
