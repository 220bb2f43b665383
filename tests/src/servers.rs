//! Small test servers that run inside a lab namespace, on threads of the test process.
//! Each stops when its guard drops.

use std::{
    net::{TcpListener, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use sonde::lab::Netns;

/// A running server thread; stops and joins on drop.
pub struct Server {
    /// Set to stop the thread.
    stop: Arc<AtomicBool>,
    /// The thread.
    thread: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Run `f` on a thread that is told to stop (through the flag it gets) and joined when
/// the returned guard drops.
pub fn spawn(f: impl FnOnce(Arc<AtomicBool>) + Send + 'static) -> Server {
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    Server {
        stop,
        thread: Some(std::thread::spawn(move || f(s))),
    }
}

/// A TCP socket listening on `addr` in `ns`, which nothing accepts from: the kernel
/// answers SYNs with SYN-ACKs (and completes handshakes into the backlog) for as long
/// as the caller keeps it.
///
/// # Panics
/// The namespace cannot be entered or the address cannot be bound.
#[must_use]
pub fn listener(ns: &Netns, addr: &str) -> TcpListener {
    let bind = addr.to_owned();
    ns.run(move || TcpListener::bind(bind))
        .expect("enter netns")
        .unwrap_or_else(|e| panic!("listen on {addr}: {e}"))
}

/// Accepts TCP connections on `addr` (in `ns`) and closes them at once.
///
/// # Panics
/// The address cannot be bound.
#[must_use]
pub fn tcp_acceptor(ns: &Netns, addr: &str) -> Server {
    let l = listener(ns, addr);
    l.set_nonblocking(true).expect("nonblocking");
    // std listens with a backlog of 128; a health checker opens hundreds of
    // connections at once, so give the queue what a real server would have.
    // SAFETY: valid listening fd; listen(2) on it again only updates the backlog.
    unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&l), 4096) };
    spawn(move |stop| {
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((s, _)) => drop(s),
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    })
}

/// A UDP server on `addr` (in `ns`): every datagram received is answered with the
/// datagrams `answer` makes of it (none, one or several, sent in order).
///
/// # Panics
/// The address cannot be bound.
#[must_use]
pub fn udp_server(
    ns: &Netns,
    addr: &str,
    answer: impl Fn(&[u8]) -> Vec<Vec<u8>> + Send + 'static,
) -> Server {
    let addr = addr.to_owned();
    let sock = ns
        .run(move || UdpSocket::bind(addr))
        .expect("enter netns")
        .expect("bind udp");
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    spawn(move |stop| {
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            for d in answer(&buf[..n]) {
                let _ = sock.send_to(&d, from);
            }
        }
    })
}

/// Answers every UDP datagram on `addr` (in `ns`) with `prefix` + the datagram.
///
/// # Panics
/// The address cannot be bound.
#[must_use]
pub fn udp_echo(ns: &Netns, addr: &str, prefix: &'static [u8]) -> Server {
    udp_server(ns, addr, move |d| {
        let mut reply = prefix.to_vec();
        reply.extend_from_slice(d);
        vec![reply]
    })
}

/// How the test HTTP server answers.
#[derive(Clone, Debug)]
pub struct HttpReply {
    /// Status code.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// Wait this long after reading the request, before answering.
    pub delay: Duration,
    /// Keep the connection open for more requests (HTTP/1.1 keep-alive), closing it
    /// after this idle time; `None`: `Connection: close` after one response.
    pub keepalive: Option<Duration>,
}

impl HttpReply {
    /// `status` with `body` and no delay.
    #[must_use]
    pub fn new(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
            delay: Duration::ZERO,
            keepalive: None,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let conn = if self.keepalive.is_some() {
            "keep-alive"
        } else {
            "close"
        };
        let mut out = format!(
            "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: {conn}\r\n",
            self.status,
            self.body.len()
        )
        .into_bytes();
        for (k, v) in &self.headers {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// What the HTTP server saw: the raw bytes before each request's header end.
pub type Seen = Arc<parking_lot_free::Mutex<Vec<Vec<u8>>>>;

/// std's Mutex is enough for test bookkeeping.
pub mod parking_lot_free {
    pub use std::sync::Mutex;
}

/// Read one request head (up to the empty line); `None` on close, error or 64 KiB.
pub fn read_request(s: &mut (impl std::io::Read + ?Sized)) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 || buf.len() > 65536 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(buf)
}

/// An HTTP (or, with `tls`, HTTPS) server on `addr` in `ns` answering every request
/// with `reply`; returns the server guard and what it received.
///
/// # Panics
/// The address cannot be bound.
#[must_use]
pub fn http_server(
    ns: &Netns,
    addr: &str,
    reply: HttpReply,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> (Server, Seen) {
    let (server, seen, _) = http_server_counting(ns, addr, reply, tls);
    (server, seen)
}

/// [`http_server`], also counting the connections it accepted.
///
/// # Panics
/// The address cannot be bound.
#[must_use]
pub fn http_server_counting(
    ns: &Netns,
    addr: &str,
    reply: HttpReply,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> (Server, Seen, Arc<std::sync::atomic::AtomicUsize>) {
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let conns2 = Arc::clone(&connections);
    let addr = addr.to_owned();
    let l = ns
        .run(move || TcpListener::bind(addr))
        .expect("enter netns")
        .expect("bind http");
    l.set_nonblocking(true).expect("nonblocking");
    let seen: Seen = Arc::default();
    let seen2 = Arc::clone(&seen);
    let server = spawn(move |stop| {
        while !stop.load(Ordering::Relaxed) {
            let Ok((mut s, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            };
            conns2.fetch_add(1, Ordering::Relaxed);
            let (reply, seen, tls) = (reply.clone(), Arc::clone(&seen2), tls.clone());
            std::thread::spawn(move || {
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(reply.keepalive.unwrap_or(Duration::from_secs(5))));
                let answer = |st: &mut dyn ReadWrite| loop {
                    let Some(req) = read_request(st) else { return };
                    seen.lock().expect("lock").push(req);
                    std::thread::sleep(reply.delay);
                    let _ = st.write_all(&reply.bytes());
                    let _ = st.flush();
                    if reply.keepalive.is_none() {
                        return;
                    }
                };
                match tls {
                    Some(cfg) => {
                        let Ok(conn) = rustls::ServerConnection::new(cfg) else {
                            return;
                        };
                        let mut tls = rustls::StreamOwned::new(conn, s);
                        answer(&mut tls);
                        tls.conn.send_close_notify();
                        let _ = std::io::Write::flush(&mut tls);
                    }
                    None => answer(&mut s),
                }
            });
        }
    });
    (server, seen, connections)
}

/// Read + Write, object-safe.
pub trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

/// A self-signed certificate for `name`, valid for `days` more days, as a rustls
/// server configuration.
///
/// # Panics
/// Certificate generation fails.
#[must_use]
pub fn tls_config(name: &str, days: i64) -> Arc<rustls::ServerConfig> {
    tls_config_and_pem(name, days).0
}

/// [`tls_config`], and the certificate as PEM (to trust it through a check's
/// `ca_file`).
///
/// # Panics
/// Certificate generation fails.
#[must_use]
pub fn tls_config_and_pem(name: &str, days: i64) -> (Arc<rustls::ServerConfig>, String) {
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(30);
    params.not_after = now + time::Duration::days(days) + time::Duration::hours(1);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("cert");
    let pem = cert.pem();
    let der = rustls::pki_types::CertificateDer::from(cert.der().to_vec());
    let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![der], key)
    .expect("server config");
    (Arc::new(cfg), pem)
}

/// A DNS server on `addr` in `ns` answering A queries for `name` with `answer`
/// (NXDOMAIN for other names). With `stray_first`, each answer is preceded by one with
/// a wrong id.
///
/// # Panics
/// The address cannot be bound.
#[must_use]
pub fn dns_server(
    ns: &Netns,
    addr: &str,
    name: &'static str,
    answer: std::net::Ipv4Addr,
    stray_first: bool,
) -> Server {
    udp_server(ns, addr, move |buf| {
        let n = buf.len();
        if n < 12 {
            return Vec::new();
        }
        // Question: labels from byte 12 to the zero byte, then type and class.
        let mut i = 12;
        let mut labels = Vec::new();
        while i < n && buf[i] != 0 {
            let l = buf[i] as usize;
            labels.push(String::from_utf8_lossy(&buf[i + 1..(i + 1 + l).min(n)]).to_string());
            i += 1 + l;
        }
        let qend = (i + 5).min(n);
        let qname = labels.join(".");
        let found = qname.eq_ignore_ascii_case(name);
        let mut r = buf[..qend].to_vec();
        r[2] = 0x81; // QR, RD
        r[3] = if found { 0x80 } else { 0x83 }; // RA, rcode NOERROR / NXDOMAIN
        r[6..8].copy_from_slice(&[0, u8::from(found)]);
        r[8..12].copy_from_slice(&[0; 4]);
        if found {
            r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
            r.extend_from_slice(&answer.octets());
        }
        if stray_first {
            let mut stray = r.clone();
            stray[0] ^= 0xff;
            vec![stray, r]
        } else {
            vec![r]
        }
    })
}
