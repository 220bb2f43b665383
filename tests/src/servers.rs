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

fn spawn(f: impl FnOnce(Arc<AtomicBool>) + Send + 'static) -> Server {
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    Server {
        stop,
        thread: Some(std::thread::spawn(move || f(s))),
    }
}

/// Accepts TCP connections on `addr` (in `ns`) and closes them at once.
///
/// # Panics
/// The address cannot be bound.
#[must_use]
pub fn tcp_acceptor(ns: &Netns, addr: &str) -> Server {
    let addr = addr.to_owned();
    let l = ns
        .run(move || TcpListener::bind(addr))
        .expect("enter netns")
        .expect("bind tcp");
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

/// Answers every UDP datagram on `addr` (in `ns`) with `prefix` + the datagram.
///
/// # Panics
/// The address cannot be bound.
#[must_use]
pub fn udp_echo(ns: &Netns, addr: &str, prefix: &'static [u8]) -> Server {
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
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let mut reply = prefix.to_vec();
                reply.extend_from_slice(&buf[..n]);
                let _ = sock.send_to(&reply, from);
            }
        }
    })
}
