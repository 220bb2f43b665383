//! `GET /v1/watch`: the event stream.
//!
//! Newline-delimited JSON by default (`Content-Type: application/x-ndjson`): one
//! [`Event`](super::Event) per line, written and flushed as it happens. With
//! `Accept: text/event-stream`, Server-Sent Events instead: `event: <kind>` and
//! `data: <json>` per event, and a `: keepalive` comment every 15 s.
//!
//! A subscriber too slow for the daemon's event buffer gets one
//! `{"event":"lagged","missed":N}` line in place of the events it missed. The stream
//! is close-delimited (no Content-Length, no chunking) and ends when the client
//! closes, a write takes longer than the write timeout, the daemon drops its event
//! sender, or the server shuts down.

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::broadcast::{
        self,
        error::{RecvError, TryRecvError},
    },
    time::timeout,
};

use super::{
    control::Event,
    server::{stopped, Shared},
};

/// Interval of SSE keepalive comments.
pub const SSE_KEEPALIVE: Duration = Duration::from_secs(15);

fn event_name(json: &serde_json::Value) -> &str {
    json.get("event")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("message")
}

/// The bytes of one event: a JSON line, or an SSE block.
fn frame(json: &serde_json::Value, sse: bool) -> Vec<u8> {
    if sse {
        format!("event: {}\ndata: {json}\n\n", event_name(json)).into_bytes()
    } else {
        format!("{json}\n").into_bytes()
    }
}

/// The frame of one event (`None`, logged, if it cannot be encoded).
fn encode(ev: &Event, sse: bool) -> Option<Vec<u8>> {
    match serde_json::to_value(ev) {
        Ok(json) => Some(frame(&json, sse)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode watch event");
            None
        }
    }
}

/// The frame telling a slow subscriber how many events it missed.
fn lagged(missed: u64, sse: bool) -> Vec<u8> {
    frame(
        &serde_json::json!({ "event": "lagged", "missed": missed }),
        sse,
    )
}

/// Write the events already queued for this subscriber (at shutdown).
async fn drain<W: AsyncWrite + Unpin>(
    events: &mut broadcast::Receiver<Arc<Event>>,
    wr: &mut W,
    sse: bool,
    limit: Duration,
) {
    loop {
        let bytes = match events.try_recv() {
            Ok(ev) => match encode(&ev, sse) {
                Some(bytes) => bytes,
                None => continue,
            },
            Err(TryRecvError::Lagged(missed)) => lagged(missed, sse),
            Err(TryRecvError::Empty | TryRecvError::Closed) => return,
        };
        if !put(wr, &bytes, limit).await {
            return;
        }
    }
}

/// Write and flush `bytes` within `limit`; whether it worked.
async fn put<W: AsyncWrite + Unpin>(wr: &mut W, bytes: &[u8], limit: Duration) -> bool {
    let fut = async {
        wr.write_all(bytes).await?;
        wr.flush().await
    };
    matches!(timeout(limit, fut).await, Ok(Ok(())))
}

/// Run the stream on `s` (after the request was accepted) until it ends.
pub(super) async fn stream<S>(s: S, shared: &Shared, sse: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    // Subscribe first: nothing published after the 200 is sent can be missed.
    let mut events = shared.control.subscribe();
    let mut stop = shared.shutdown.clone();
    let limit = shared.opts.write_timeout;
    let content_type = if sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nCache-Control: no-store\r\nConnection: close\r\nX-Accel-Buffering: no\r\n\r\n"
    );
    let (mut rd, mut wr) = tokio::io::split(s);
    if !put(&mut wr, head.as_bytes(), limit).await {
        return;
    }
    let mut keepalive = tokio::time::interval(SSE_KEEPALIVE);
    keepalive.tick().await;
    let mut sink = [0u8; 512];
    loop {
        let bytes = tokio::select! {
            () = stopped(&mut stop) => {
                // Events published before the shutdown still reach the client.
                drain(&mut events, &mut wr, sse, limit).await;
                break;
            }
            r = rd.read(&mut sink) => match r {
                Ok(0) | Err(_) => break, // the client went away
                Ok(_) => continue,       // nothing is expected from it: discard
            },
            _ = keepalive.tick(), if sse => b": keepalive\n\n".to_vec(),
            ev = events.recv() => match ev {
                Ok(ev) => match encode(&ev, sse) {
                    Some(bytes) => bytes,
                    None => continue,
                },
                Err(RecvError::Lagged(missed)) => lagged(missed, sse),
                Err(RecvError::Closed) => break,
            },
        };
        if !put(&mut wr, &bytes, limit).await {
            break;
        }
    }
    let _ = wr.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::frame;

    #[test]
    fn frames() {
        let j = serde_json::json!({"event": "check_added", "id": "a"});
        assert_eq!(
            frame(&j, false),
            b"{\"event\":\"check_added\",\"id\":\"a\"}\n"
        );
        assert_eq!(
            frame(&j, true),
            b"event: check_added\ndata: {\"event\":\"check_added\",\"id\":\"a\"}\n\n"
        );
    }
}
