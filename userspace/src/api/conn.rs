//! One connection: read and check one request within the limits, answer it (or hand
//! it to the watch stream), close.
//!
//! Order of checks: head size and time (431/408), syntax (400), `Host` on TCP (400),
//! route (404/405), token on mutating routes (401), body framing and size
//! (501/411/413), body time (408), then the call.

use std::{net::IpAddr, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    time::{timeout, Instant},
};

use super::{
    http::{self, RequestHead, Response},
    routes::{self, Route},
    server::{stopped, Shared},
    token, watch,
};

/// Longest time spent discarding unread input before closing.
const LINGER: Duration = Duration::from_secs(1);
/// Most unread input discarded before closing.
const LINGER_BYTES: usize = 256 * 1024;

/// Why no request head could be read.
enum HeadError {
    /// The peer closed or the read failed: nothing to answer.
    Gone,
    /// Longer than the limit.
    TooLarge,
    /// Not complete in time.
    Timeout,
}

/// Read until the end of the head; returns the head and the bytes read past it.
async fn read_head<S: AsyncRead + Unpin>(
    s: &mut S,
    max: usize,
    deadline: Instant,
) -> Result<(Vec<u8>, Vec<u8>), HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return Err(HeadError::Timeout),
            Ok(Err(_) | Ok(0)) => return Err(HeadError::Gone),
            Ok(Ok(n)) => n,
        };
        let from = buf.len();
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = http::head_end(&buf, from) {
            if end > max {
                return Err(HeadError::TooLarge);
            }
            let rest = buf.split_off(end);
            return Ok((buf, rest));
        }
        if buf.len() > max {
            return Err(HeadError::TooLarge);
        }
    }
}

/// Whether a `Host` header value names a loopback host (`localhost`, 127.0.0.0/8,
/// `[::1]`, with or without a port).
fn loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(h, _)| h)
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

async fn send<S: AsyncWrite + Unpin>(s: &mut S, resp: &Response, limit: Duration) {
    let bytes = resp.to_bytes();
    let _ = timeout(limit, async {
        s.write_all(&bytes).await?;
        s.flush().await
    })
    .await;
}

/// Close politely: stop writing, then discard what the client still sends (bounded),
/// so that closing with unread input does not reset the connection before the client
/// read the answer.
async fn linger<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) {
    let _ = s.shutdown().await;
    let _ = timeout(LINGER, async {
        let mut chunk = [0u8; 4096];
        let mut seen = 0;
        while seen < LINGER_BYTES {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen += n,
            }
        }
    })
    .await;
}

/// What the request turned out to be.
enum Next {
    /// Answer this and close (`true`: input may be left unread).
    Answer(Response, bool),
    /// Start a watch stream.
    Watch { sse: bool },
}

/// Serve one connection.
pub(super) async fn handle<S>(mut s: S, shared: &Shared, tcp: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let opts = &shared.opts;
    let deadline = Instant::now() + opts.read_timeout;
    let mut stop = shared.shutdown.clone();
    // An idle connection is dropped at shutdown instead of holding it up.
    let head = tokio::select! {
        () = stopped(&mut stop) => return,
        h = read_head(&mut s, opts.max_head_bytes, deadline) => h,
    };
    let next = match head {
        Err(HeadError::Gone) => return,
        Err(HeadError::Timeout) => {
            let msg = "request head not received in time";
            Next::Answer(Response::error(408, "timeout", msg), true)
        }
        Err(HeadError::TooLarge) => {
            let msg = format!("request head larger than {} bytes", opts.max_head_bytes);
            Next::Answer(Response::error(431, "too_large", &msg), true)
        }
        Ok((head, rest)) => match http::parse_request_head(&head) {
            Err(e) => Next::Answer(Response::error(400, "bad_request", &e.to_string()), true),
            Ok(head) => request(&mut s, shared, tcp, &head, rest).await,
        },
    };
    match next {
        Next::Answer(resp, unread) => {
            send(&mut s, &resp, opts.write_timeout).await;
            if unread {
                linger(&mut s).await;
            } else {
                let _ = s.shutdown().await;
            }
        }
        Next::Watch { sse } => match shared.watchers.clone().try_acquire_owned() {
            Ok(permit) => {
                watch::stream(s, shared, sse).await;
                drop(permit);
            }
            Err(_) => {
                let msg = format!("too many watch streams (at most {})", opts.max_watchers);
                send(
                    &mut s,
                    &Response::error(429, "too_many_watchers", &msg),
                    opts.write_timeout,
                )
                .await;
                let _ = s.shutdown().await;
            }
        },
    }
}

async fn request<S>(
    s: &mut S,
    shared: &Shared,
    tcp: bool,
    head: &RequestHead,
    rest: Vec<u8>,
) -> Next
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let opts = &shared.opts;
    let h = &head.headers;
    if tcp && http::header(h, "host").is_some_and(|v| !loopback_host(v)) {
        let msg = "Host must be a loopback name or address (localhost, 127.0.0.1, [::1])";
        return Next::Answer(Response::error(400, "bad_host", msg), true);
    }
    let route = match routes::plan(&head.method, &head.target) {
        Ok(r) => r,
        Err(resp) => return Next::Answer(resp, true),
    };
    if route.mutating() && !token::bearer_matches(http::header(h, "authorization"), &shared.token) {
        let msg =
            "missing or wrong bearer token (Authorization: Bearer <token from the token file>)";
        let resp = Response::error(401, "unauthorized", msg)
            .with_header("WWW-Authenticate", "Bearer realm=\"sonde\"".to_owned());
        return Next::Answer(resp, true);
    }
    if route == Route::Watch {
        let sse = http::header(h, "accept").is_some_and(|a| a.contains("text/event-stream"));
        return Next::Watch { sse };
    }
    let body = if route.takes_body() {
        match read_body(s, head, rest, opts.max_body_bytes, opts.read_timeout).await {
            Ok(b) => b,
            Err(resp) => return Next::Answer(resp, true),
        }
    } else {
        Vec::new()
    };
    let unread = !route.takes_body() && !matches!(http::content_length(h), Ok(None | Some(0)));
    Next::Answer(
        routes::execute(shared.control.as_ref(), &route, &body),
        unread,
    )
}

async fn read_body<S>(
    s: &mut S,
    head: &RequestHead,
    mut body: Vec<u8>,
    max: usize,
    limit: Duration,
) -> Result<Vec<u8>, Response>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let h = &head.headers;
    if http::header(h, "transfer-encoding").is_some() {
        let msg = "Transfer-Encoding is not supported; send the body with Content-Length";
        return Err(Response::error(501, "unsupported", msg));
    }
    let len = match http::content_length(h) {
        Err(e) => return Err(Response::error(400, "bad_request", &e.to_string())),
        Ok(None) => {
            return Err(Response::error(
                411,
                "length_required",
                "Content-Length is required",
            ))
        }
        Ok(Some(n)) => n,
    };
    if len > max as u64 {
        let msg = format!("request body of {len} bytes is larger than {max} bytes");
        return Err(Response::error(413, "too_large", &msg));
    }
    let len = usize::try_from(len).unwrap_or(max);
    if body.len() > len {
        // Pipelined bytes past the body: this server answers one request only.
        body.truncate(len);
    }
    if body.len() < len
        && http::header(h, "expect").is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
    {
        let _ = timeout(limit, s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")).await;
    }
    let start = body.len();
    body.resize(len, 0);
    match timeout(limit, s.read_exact(&mut body[start..])).await {
        Ok(Ok(_)) => Ok(body),
        Ok(Err(_)) => Err(Response::error(
            400,
            "bad_request",
            "request body ended early",
        )),
        Err(_) => Err(Response::error(
            408,
            "timeout",
            "request body not received in time",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::loopback_host;

    #[test]
    fn hosts() {
        for ok in [
            "localhost",
            "localhost:80",
            "127.0.0.1",
            "127.1.2.3:9",
            "[::1]:80",
            "[::1]",
        ] {
            assert!(loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:80",
            "10.0.0.1",
            "[::2]:1",
            "",
            "::1",
        ] {
            assert!(!loopback_host(bad), "{bad}");
        }
    }
}
