//! A small blocking HTTP/1.1 client for the daemon's API, over its unix socket or a
//! loopback TCP address: one request per connection, timeouts on every read and
//! write, bounded responses. The token file is read only for mutating calls.

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::TcpStream,
    os::unix::net::UnixStream,
    path::PathBuf,
    time::Duration,
};

use serde_json::Value;

pub use super::endpoint::{ClientOptions, Endpoint};
pub use super::output::{emit, pretty, report, Exit};
use crate::api::{
    http::{self, percent_encode},
    token::{self, TokenError},
};

/// Largest response head read.
const MAX_HEAD: usize = 64 * 1024;
/// Largest response body read (metrics of many checks fit easily).
const MAX_BODY: u64 = 256 * 1024 * 1024;
/// Longest watch line read.
const MAX_LINE: u64 = 1024 * 1024;

/// Why a call to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon answers at the endpoint.
    #[error("sonde daemon not running? cannot connect to {endpoint}: {source}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Sending or receiving failed (a timeout included).
    #[error("{endpoint}: {what}: {source}")]
    Io {
        /// The endpoint.
        endpoint: String,
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The answer is not the HTTP/JSON expected.
    #[error("{endpoint}: malformed answer: {why}")]
    Protocol {
        /// The endpoint.
        endpoint: String,
        /// What is wrong.
        why: String,
    },
    /// The token file could not be read.
    #[error("{0} (changes need the API token: run as root, or give --token-file)")]
    Token(#[from] TokenError),
    /// The daemon refused the call.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Error kind (`unknown_check`, `invalid`, ...).
        kind: String,
        /// The daemon's message.
        message: String,
    },
    /// The command's own input (a file, an argument) is unusable.
    #[error("{0}")]
    Input(String),
    /// `--api` is not a usable URL.
    #[error("invalid --api URL {url:?}: {why}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        why: String,
    },
}

/// An answer of the daemon.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// A connection to the daemon.
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Stream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Tcp(s) => s.set_read_timeout(t),
        }
    }
}

/// A client of the daemon's API.
#[derive(Debug, Clone)]
pub struct Client {
    /// Where the API is.
    pub endpoint: Endpoint,
    /// The token file, read for mutating calls.
    pub token_file: PathBuf,
    /// Timeout of connecting and of each read and write.
    pub timeout: Duration,
}

/// `/v1/checks/{id}` with `id` percent-encoded (`suffix` appended).
#[must_use]
pub fn check_path(id: &str, suffix: &str) -> String {
    format!("/v1/checks/{}{suffix}", percent_encode(id))
}

impl Client {
    /// A client of the unix socket at `path` using `token_file`, 10 s timeouts.
    #[must_use]
    pub fn unix(path: impl Into<PathBuf>, token_file: impl Into<PathBuf>) -> Self {
        Self {
            endpoint: Endpoint::Unix(path.into()),
            token_file: token_file.into(),
            timeout: Duration::from_secs(10),
        }
    }

    fn io(&self, what: &'static str) -> impl FnOnce(io::Error) -> ClientError + '_ {
        move |source| ClientError::Io {
            endpoint: self.endpoint.to_string(),
            what,
            source,
        }
    }

    fn protocol(&self, why: impl Into<String>) -> ClientError {
        ClientError::Protocol {
            endpoint: self.endpoint.to_string(),
            why: why.into(),
        }
    }

    fn connect(&self) -> Result<Stream, ClientError> {
        let connect_err = |source| ClientError::Connect {
            endpoint: self.endpoint.to_string(),
            source,
        };
        let stream = match &self.endpoint {
            Endpoint::Unix(p) => Stream::Unix(UnixStream::connect(p).map_err(connect_err)?),
            Endpoint::Tcp(a) => {
                let s = TcpStream::connect_timeout(a, self.timeout).map_err(connect_err)?;
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }
        };
        let t = Some(self.timeout);
        let set = match &stream {
            Stream::Unix(s) => s.set_read_timeout(t).and_then(|()| s.set_write_timeout(t)),
            Stream::Tcp(s) => s.set_read_timeout(t).and_then(|()| s.set_write_timeout(t)),
        };
        set.map_err(self.io("cannot set timeouts"))?;
        Ok(stream)
    }

    /// Send one request; mutating methods (POST, DELETE) carry the token.
    fn open(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        accept: &str,
    ) -> Result<(BufReader<Stream>, http::ResponseHead), ClientError> {
        let auth = if matches!(method, "POST" | "DELETE" | "PUT" | "PATCH") {
            let t = token::read(&self.token_file)?;
            format!("Authorization: Bearer {t}\r\n")
        } else {
            String::new()
        };
        let host = match &self.endpoint {
            Endpoint::Unix(_) => "localhost".to_owned(),
            Endpoint::Tcp(a) => a.to_string(),
        };
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: sonde/{}\r\nAccept: {accept}\r\nConnection: close\r\n{auth}",
            env!("CARGO_PKG_VERSION")
        );
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body.unwrap_or_default());
        let mut stream = self.connect()?;
        // A server that answers early (401, 413) may close before reading everything:
        // the answer is still worth reading, so a failed write is not fatal yet.
        let wrote = stream.write_all(&bytes);
        let mut reader = BufReader::new(stream);
        let head = match self.read_head(&mut reader) {
            Ok(h) => h,
            Err(e) => {
                return Err(match wrote {
                    Err(w) => self.io("cannot send the request")(w),
                    Ok(()) => e,
                })
            }
        };
        Ok((reader, head))
    }

    fn read_head(&self, r: &mut BufReader<Stream>) -> Result<http::ResponseHead, ClientError> {
        let mut head = Vec::new();
        loop {
            let n = r
                .by_ref()
                .take(1024)
                .read_until(b'\n', &mut head)
                .map_err(self.io("cannot read the answer"))?;
            if n == 0 {
                return Err(self.protocol("connection closed before a complete answer"));
            }
            if head.ends_with(b"\n\n") || head.ends_with(b"\r\n\r\n") {
                break;
            }
            if head.len() > MAX_HEAD {
                return Err(self.protocol("answer head too large"));
            }
        }
        http::parse_response_head(&head).map_err(|e| self.protocol(e.to_string()))
    }

    /// Send a request and read the whole answer, whatever its status.
    ///
    /// # Errors
    /// Connecting, sending or reading failed, the answer is malformed, or the token
    /// file cannot be read (mutating methods).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Reply, ClientError> {
        let (mut reader, head) = self.open(method, path, body, "application/json")?;
        let len = http::content_length(&head.headers).map_err(|e| self.protocol(e.to_string()))?;
        if http::header(&head.headers, "transfer-encoding").is_some() {
            return Err(self.protocol("chunked answers are not supported"));
        }
        let mut body = Vec::new();
        let limit = len.unwrap_or(MAX_BODY + 1).min(MAX_BODY + 1);
        reader
            .by_ref()
            .take(limit)
            .read_to_end(&mut body)
            .map_err(self.io("cannot read the answer"))?;
        if body.len() as u64 > MAX_BODY {
            return Err(self.protocol("answer body too large"));
        }
        if len.is_some_and(|l| body.len() as u64 != l) {
            return Err(self.protocol("answer body shorter than its Content-Length"));
        }
        Ok(Reply {
            status: head.status,
            headers: head.headers,
            body,
        })
    }

    fn api_error(&self, reply: &Reply) -> ClientError {
        let parsed: Option<Value> = serde_json::from_slice(&reply.body).ok();
        let field = |k: &str| {
            parsed
                .as_ref()
                .and_then(|v| v.get(k))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        ClientError::Api {
            status: reply.status,
            kind: field("kind").unwrap_or_else(|| "http".to_owned()),
            message: field("error").unwrap_or_else(|| {
                let text = String::from_utf8_lossy(&reply.body);
                format!("HTTP {}: {}", reply.status, text.trim())
            }),
        }
    }

    /// Send a request and parse a 2xx JSON answer.
    ///
    /// # Errors
    /// [`Client::request`]'s, or [`ClientError::Api`] for a non-2xx answer.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let bytes = body.map(|b| b.to_string().into_bytes());
        let reply = self.request(method, path, bytes.as_deref())?;
        if !(200..300).contains(&reply.status) {
            return Err(self.api_error(&reply));
        }
        serde_json::from_slice(&reply.body).map_err(|e| self.protocol(format!("not JSON: {e}")))
    }

    /// `GET path` as JSON.
    ///
    /// # Errors
    /// See [`Client::call`].
    pub fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call("GET", path, None)
    }

    /// `GET /metrics`: the Prometheus text.
    ///
    /// # Errors
    /// See [`Client::call`].
    pub fn metrics(&self) -> Result<String, ClientError> {
        let reply = self.request("GET", "/metrics", None)?;
        if reply.status != 200 {
            return Err(self.api_error(&reply));
        }
        String::from_utf8(reply.body).map_err(|_| self.protocol("metrics are not UTF-8"))
    }

    /// Open the event stream (`GET /v1/watch`, newline-delimited JSON).
    ///
    /// # Errors
    /// See [`Client::call`] (429 when the daemon has too many watchers).
    pub fn watch(&self) -> Result<EventStream, ClientError> {
        let (mut reader, head) = self.open("GET", "/v1/watch", None, "application/x-ndjson")?;
        if head.status != 200 {
            let mut body = Vec::new();
            let _ = reader.by_ref().take(64 * 1024).read_to_end(&mut body);
            let reply = Reply {
                status: head.status,
                headers: head.headers,
                body,
            };
            return Err(self.api_error(&reply));
        }
        // Events come when they come: no read timeout from here on.
        reader
            .get_ref()
            .set_read_timeout(None)
            .map_err(self.io("cannot clear the read timeout"))?;
        Ok(EventStream {
            reader,
            endpoint: self.endpoint.to_string(),
        })
    }
}

/// The open event stream of [`Client::watch`].
pub struct EventStream {
    reader: BufReader<Stream>,
    endpoint: String,
}

impl EventStream {
    /// Give up waiting for an event after `timeout` (`None`, the default: wait as long
    /// as the daemon is there).
    ///
    /// # Errors
    /// The socket refused the option.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> Result<(), ClientError> {
        self.reader
            .get_ref()
            .set_read_timeout(timeout)
            .map_err(|source| ClientError::Io {
                endpoint: self.endpoint.clone(),
                what: "cannot set the read timeout",
                source,
            })
    }

    /// The next event line (without its newline); `None` when the daemon closed the
    /// stream. Blank lines are skipped.
    ///
    /// # Errors
    /// Reading failed, or a line is longer than 1 MiB or not UTF-8.
    pub fn next_line(&mut self) -> Result<Option<String>, ClientError> {
        loop {
            let mut line = Vec::new();
            let n = self
                .reader
                .by_ref()
                .take(MAX_LINE)
                .read_until(b'\n', &mut line)
                .map_err(|source| ClientError::Io {
                    endpoint: self.endpoint.clone(),
                    what: "cannot read the event stream",
                    source,
                })?;
            if n == 0 {
                return Ok(None);
            }
            let proto = |why: &str| ClientError::Protocol {
                endpoint: self.endpoint.clone(),
                why: why.to_owned(),
            };
            if line.last() != Some(&b'\n') {
                return Err(proto(if n as u64 >= MAX_LINE {
                    "event line too long"
                } else {
                    "event stream ended mid-line"
                }));
            }
            let text = String::from_utf8(line).map_err(|_| proto("event line is not UTF-8"))?;
            let text = text.trim();
            if !text.is_empty() {
                return Ok(Some(text.to_owned()));
            }
        }
    }
}
