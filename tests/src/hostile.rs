//! Misbehaving targets for the hostile-targets suite: TCP servers that run a script on
//! each connection (slowloris, endless headers, endless bodies, garbage, silence, a FIN
//! or an RST at a chosen point, in plain text or over TLS), a DNS server answering with
//! crafted datagrams, and a flood of spoofed TCP and ICMP answers sent from raw
//! sockets. All run on threads of the test process, inside a lab namespace, and stop
//! when their guard drops.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Shutdown, TcpListener, TcpStream},
    ops::RangeInclusive,
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use probe_common::{craft, parse::tcp_flags};
use sonde::{
    engine::raw::{v4_bytes, RawSender},
    lab::Netns,
};

use crate::servers::{read_request, spawn, Server};

/// How a scripted connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// An orderly close (FIN), without a TLS close_notify.
    Fin,
    /// An abortive close (RST: `SO_LINGER` 0, then close).
    Rst,
}

/// Pause between the last bytes a script writes and its FIN or RST, so the peer has
/// read them (an RST would otherwise race them).
const SETTLE: Duration = Duration::from_millis(100);

/// Accepts TCP connections on `addr` in `ns` and runs `script` on each, on its own
/// thread. The script gets the blocking stream and the server's stop flag.
///
/// # Panics
/// The address cannot be bound.
#[must_use]
pub fn scripted(
    ns: &Netns,
    addr: &str,
    script: impl Fn(TcpStream, &AtomicBool) + Send + Sync + 'static,
) -> Server {
    let addr = addr.to_owned();
    let l = ns
        .run(move || TcpListener::bind(addr))
        .expect("enter netns")
        .expect("bind tcp");
    l.set_nonblocking(true).expect("nonblocking");
    // SAFETY: valid listening fd; listen(2) again only updates the backlog.
    unsafe { libc::listen(l.as_raw_fd(), 4096) };
    let script = Arc::new(script);
    spawn(move |stop| {
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((s, _)) => {
                    let (script, stop) = (Arc::clone(&script), Arc::clone(&stop));
                    std::thread::spawn(move || {
                        let _ = s.set_nonblocking(false);
                        script(s, &stop);
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    })
}

/// Keep the connection open, reading and discarding, until the peer closes or resets
/// it or the server stops.
pub fn hold(mut s: impl Read, stop: &AtomicBool) {
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// End the connection with a FIN (then wait for the peer to go) or an RST.
pub fn finish(s: TcpStream, end: End, stop: &AtomicBool) {
    match end {
        End::Fin => {
            let _ = s.shutdown(Shutdown::Write);
            let _ = s.set_read_timeout(Some(Duration::from_millis(20)));
            hold(s, stop);
        }
        End::Rst => {
            let l = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: valid socket fd; the option value is a linger of the right size.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&raw const l).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
            drop(s);
        }
    }
}

/// Accepts and never answers (nor reads): the connection stays open until the peer
/// gives up.
#[must_use]
pub fn silent(ns: &Netns, addr: &str) -> Server {
    scripted(ns, addr, |s, stop| {
        let _ = s.set_read_timeout(Some(Duration::from_millis(20)));
        // Reading only tells when the peer has gone; what it sent is ignored.
        hold(s, stop);
    })
}

/// Accepts and never reads (its receive window fills up and stays shut), until the
/// test ends.
#[must_use]
pub fn deaf(ns: &Netns, addr: &str) -> Server {
    scripted(ns, addr, |_s, stop| {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

/// Reads the request, then sends `bytes` one byte every `every` (slowloris).
#[must_use]
pub fn slowloris(ns: &Netns, addr: &str, bytes: &'static [u8], every: Duration) -> Server {
    scripted(ns, addr, move |mut s, stop| {
        if read_request(&mut s).is_none() {
            return;
        }
        for b in bytes {
            if stop.load(Ordering::Relaxed) || s.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(every);
        }
    })
}

/// Reads the request, sends `head`, then `fill` over and over as fast as the peer
/// reads, until it goes away; counts the bytes written in `sent`.
#[must_use]
pub fn endless(
    ns: &Netns,
    addr: &str,
    head: &'static [u8],
    fill: &'static [u8],
    sent: Arc<AtomicU64>,
) -> Server {
    scripted(ns, addr, move |mut s, stop| {
        if read_request(&mut s).is_none() || s.write_all(head).is_err() {
            return;
        }
        sent.fetch_add(head.len() as u64, Ordering::Relaxed);
        // Whole repetitions only, so a framed fill (chunks) stays well-formed.
        let chunk = fill.repeat((64 * 1024 / fill.len().max(1)).max(1));
        while !stop.load(Ordering::Relaxed) {
            if s.write_all(&chunk).is_err() {
                return;
            }
            sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    })
}

/// Reads the request, sends `prefix`, then ends the connection with `end`.
#[must_use]
pub fn cut(ns: &Netns, addr: &str, prefix: &'static [u8], end: End) -> Server {
    scripted(ns, addr, move |mut s, stop| {
        if read_request(&mut s).is_none() {
            return;
        }
        if s.write_all(prefix).is_err() {
            return;
        }
        std::thread::sleep(SETTLE);
        finish(s, end, stop);
    })
}

/// Reads whatever the client sends first (a TLS ClientHello), answers `reply` (may be
/// empty), then ends the connection with `end`.
#[must_use]
pub fn reply_raw(ns: &Netns, addr: &str, reply: &'static [u8], end: End) -> Server {
    scripted(ns, addr, move |mut s, stop| {
        let mut buf = [0u8; 4096];
        if !matches!(s.read(&mut buf), Ok(n) if n > 0) {
            return;
        }
        if !reply.is_empty() && s.write_all(reply).is_err() {
            return;
        }
        std::thread::sleep(SETTLE);
        finish(s, end, stop);
    })
}

/// HTTPS: completes the TLS handshake, reads the request, sends `prefix` (`None`:
/// nothing, ever: the connection is held open), then ends the TCP connection with
/// `end`, without a TLS close_notify.
#[must_use]
pub fn tls_cut(
    ns: &Netns,
    addr: &str,
    cfg: Arc<rustls::ServerConfig>,
    prefix: Option<&'static [u8]>,
    end: End,
) -> Server {
    scripted(ns, addr, move |s, stop| {
        let Ok(conn) = rustls::ServerConnection::new(Arc::clone(&cfg)) else {
            return;
        };
        let mut tls = rustls::StreamOwned::new(conn, s);
        if read_request(&mut tls).is_none() {
            return;
        }
        let Some(prefix) = prefix else {
            let _ = tls.sock.set_read_timeout(Some(Duration::from_millis(20)));
            hold(tls.sock, stop);
            return;
        };
        if tls.write_all(prefix).is_err() || tls.flush().is_err() {
            return;
        }
        std::thread::sleep(SETTLE);
        finish(tls.sock, end, stop);
    })
}

/// HTTPS: reads the ClientHello, sends the first half of the server's handshake flight
/// (ServerHello...), then ends the connection with `end`.
#[must_use]
pub fn tls_handshake_cut(
    ns: &Netns,
    addr: &str,
    cfg: Arc<rustls::ServerConfig>,
    end: End,
) -> Server {
    scripted(ns, addr, move |mut s, stop| {
        let Ok(mut conn) = rustls::ServerConnection::new(Arc::clone(&cfg)) else {
            return;
        };
        while !conn.wants_write() {
            match conn.read_tls(&mut s) {
                Ok(n) if n > 0 => {}
                _ => return,
            }
            if conn.process_new_packets().is_err() {
                return;
            }
        }
        let mut flight = Vec::new();
        while conn.wants_write() {
            if conn.write_tls(&mut flight).is_err() {
                return;
            }
        }
        if s.write_all(&flight[..flight.len() / 2]).is_err() {
            return;
        }
        std::thread::sleep(SETTLE);
        finish(s, end, stop);
    })
}

/// The start of a DNS response to `query`: its id, QR + RD + RA, NOERROR, one
/// question (echoed), `ancount` answers announced; the caller appends the records.
#[must_use]
pub fn dns_head(query: &[u8], ancount: u16) -> Vec<u8> {
    let mut r = query.to_vec();
    if r.len() < 12 {
        return r;
    }
    r[2] = 0x81;
    r[3] = 0x80;
    r[6..8].copy_from_slice(&ancount.to_be_bytes());
    r[8..12].copy_from_slice(&[0; 4]);
    r
}

/// An A record owned by the name at offset 12 (the question's), with `addr`.
#[must_use]
pub fn dns_a(addr: Ipv4Addr) -> Vec<u8> {
    let mut r = vec![0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4];
    r.extend_from_slice(&addr.octets());
    r
}

/// What the spoofer sent.
#[derive(Debug, Default)]
pub struct SpoofCounts {
    /// TCP answers with a wrong cookie: SYN-ACKs, RST-ACKs (wrong ack) and bare RSTs,
    /// and ICMP errors quoting a TCP probe with a wrong sequence number.
    pub bad_cookie: AtomicU64,
    /// ICMP echo replies and ICMP errors quoting an echo request, with a wrong id.
    pub not_ours: AtomicU64,
    /// Rounds over the whole port range.
    pub rounds: AtomicU64,
}

/// Floods `to` (the prober) from `from` (an address of `ns`) through raw sockets in
/// `ns`: for every port of `ports`, a SYN-ACK and an RST-ACK acknowledging a random
/// (wrong) cookie, a bare RST, and an ICMP port unreachable quoting a SYN from that
/// port to `from:target_port` with a random (wrong) sequence number; plus echo
/// replies and ICMP errors quoting echo requests with an identifier other than
/// `icmp_id`. Paced so the veth ring never overflows (every packet reaches XDP).
///
/// # Panics
/// The raw socket cannot be opened in `ns`.
#[must_use]
pub fn spoof_flood(
    ns: &Netns,
    from: Ipv4Addr,
    to: Ipv4Addr,
    ports: RangeInclusive<u16>,
    target_port: u16,
    icmp_id: u16,
) -> (Server, Arc<SpoofCounts>) {
    let mut raw = ns
        .run(RawSender::new)
        .expect("enter netns")
        .expect("raw socket");
    let counts = Arc::new(SpoofCounts::default());
    let c = Arc::clone(&counts);
    let server = spawn(move |stop| {
        let (src, dst) = (IpAddr::V4(from), IpAddr::V4(to));
        let mut burst = 0u32;
        let mut send = |raw: &mut RawSender, l4: &craft::L4<'_>, counter: &AtomicU64| {
            if raw.send(src, dst, l4).is_ok() {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            burst += 1;
            if burst.is_multiple_of(32) {
                std::thread::sleep(Duration::from_micros(500));
            }
        };
        let wrong_id = |r: u16| if r == icmp_id { r ^ 0x5a5a } else { r };
        while !stop.load(Ordering::Relaxed) {
            for port in ports.clone() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                for flags in [
                    tcp_flags::SYN | tcp_flags::ACK,
                    tcp_flags::RST | tcp_flags::ACK,
                    tcp_flags::RST,
                ] {
                    let l4 = craft::L4::Tcp {
                        sport: target_port,
                        dport: port,
                        seq: rand::random(),
                        ack: if flags & tcp_flags::ACK != 0 {
                            rand::random()
                        } else {
                            0
                        },
                        flags,
                        window: 1024,
                        options: &[],
                    };
                    send(&mut raw, &l4, &c.bad_cookie);
                }
                let inner = quoted(
                    to,
                    from,
                    &craft::L4::Tcp {
                        sport: port,
                        dport: target_port,
                        seq: rand::random(),
                        ack: 0,
                        flags: tcp_flags::SYN,
                        window: 1024,
                        options: &[],
                    },
                );
                let l4 = icmp_error(&inner);
                send(&mut raw, &l4, &c.bad_cookie);
                if port.is_multiple_of(8) {
                    let id = wrong_id(rand::random());
                    let seq = rand::random();
                    let echo = craft::L4::Icmp {
                        kind: 0,
                        code: 0,
                        id,
                        seq,
                        payload: b"sonde-probe-0000",
                    };
                    send(&mut raw, &echo, &c.not_ours);
                    let inner = quoted(
                        to,
                        from,
                        &craft::L4::Icmp {
                            kind: 8,
                            code: 0,
                            id,
                            seq,
                            payload: b"sonde-probe-0000",
                        },
                    );
                    send(&mut raw, &icmp_error(&inner), &c.not_ours);
                }
            }
            c.rounds.fetch_add(1, Ordering::Relaxed);
        }
    });
    (server, counts)
}

/// The first 28 bytes (IPv4 header and 8 transport bytes, what RFC 792 quotes) of a
/// packet `l4` from `src` to `dst`.
fn quoted(src: Ipv4Addr, dst: Ipv4Addr, l4: &craft::L4<'_>) -> Vec<u8> {
    let mut buf = [0u8; 128];
    let ip = craft::Ip {
        family: probe_common::family::V4,
        src: v4_bytes(src),
        dst: v4_bytes(dst),
        ttl: 64,
        id: 1,
        options: &[],
    };
    let n = craft::build(&mut buf, None, &ip, l4).expect("quoted packet fits");
    buf[..n.min(28)].to_vec()
}

/// An ICMP port unreachable quoting `inner`.
fn icmp_error(inner: &[u8]) -> craft::L4<'_> {
    craft::L4::Icmp {
        kind: 3,
        code: 3,
        id: 0,
        seq: 0,
        payload: inner,
    }
}
