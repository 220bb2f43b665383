//! A tiny HTTP responder for the demo's target namespace: answers every request with
//! a fixed status and body until stopped. (The tests have richer servers.)

use std::{
    io::{Read, Write},
    net::TcpListener,
    sync::{
        atomic::{AtomicBool, AtomicU16, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use super::{Netns, Result};

/// A running responder; stops on drop.
pub struct HttpResponder {
    /// Set to stop the thread.
    stop: Arc<AtomicBool>,
    /// Status code served; changeable while running (e.g. to 503 for a demo).
    status: Arc<AtomicU16>,
    /// The thread.
    thread: Option<JoinHandle<()>>,
}

impl HttpResponder {
    /// Serve `status` with `body` on `addr` inside `ns`.
    ///
    /// # Errors
    /// The namespace cannot be entered or the address bound.
    pub fn start(ns: &Netns, addr: &str, status: u16, body: &'static str) -> Result<Self> {
        let a = addr.to_owned();
        let listener =
            ns.run(move || TcpListener::bind(a))?
                .map_err(|source| super::LabError::Io {
                    what: format!("binding {addr}"),
                    source,
                })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| super::LabError::Io {
                what: "non-blocking listener".into(),
                source,
            })?;
        let stop = Arc::new(AtomicBool::new(false));
        let code = Arc::new(AtomicU16::new(status));
        let (s, c) = (Arc::clone(&stop), Arc::clone(&code));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let status = c.load(Ordering::Relaxed);
                let reply = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(reply.as_bytes());
            }
        });
        Ok(Self {
            stop,
            status: code,
            thread: Some(thread),
        })
    }

    /// Change the status served from now on.
    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::Relaxed);
    }
}

impl Drop for HttpResponder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
