//! Reading answer records from the kernel programs' ring buffers.

use std::os::fd::AsRawFd;

use aya::maps::{MapData, RingBuf};
use probe_common::{record::AnswerRecord, EVENT_RINGS};

/// Some or all of the [`EVENT_RINGS`] ring buffers of [`AnswerRecord`]s; movable to
/// the thread that matches answers, and divisible between several such threads
/// ([`Events::split`]).
pub struct Events {
    /// The rings held, with their index (`StampKey::ring`).
    rings: Vec<(usize, RingBuf<MapData>)>,
}

impl Events {
    pub(super) fn new(rings: Vec<(usize, RingBuf<MapData>)>) -> Self {
        Self { rings }
    }

    /// The indices of the rings held (`StampKey::ring` of the answers read here).
    #[must_use]
    pub fn rings(&self) -> Vec<usize> {
        self.rings.iter().map(|(i, _)| *i).collect()
    }

    /// Divide the rings among `n` readers: reader `i` gets the rings whose index is `i`
    /// modulo `n`, the answers to a sender that uses the ports `port_lo + i + k * n`
    /// (see `StampKey::ring`). `n` is rounded down to a power of two no larger than
    /// the rings held (at least 1), so every reader gets whole rings: the result may be
    /// shorter than `n`.
    #[must_use]
    pub fn split(self, n: usize) -> Vec<Events> {
        let n = crate::engine::answers::readers(n, self.rings.len());
        let mut out: Vec<Events> = (0..n).map(|_| Events { rings: Vec::new() }).collect();
        for (i, ring) in self.rings {
            out[i % n].rings.push((i, ring));
        }
        out
    }

    /// Pop every record currently in the rings; returns how many.
    pub fn drain(&mut self, mut f: impl FnMut(AnswerRecord)) -> usize {
        let mut n = 0;
        for (_, ring) in &mut self.rings {
            while let Some(item) = ring.next() {
                if item.len() >= std::mem::size_of::<AnswerRecord>() {
                    // SAFETY: the kernel wrote a whole AnswerRecord (checked length);
                    // read_unaligned copes with the ring's 8-byte alignment either way.
                    let rec =
                        unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<AnswerRecord>()) };
                    f(rec);
                    n += 1;
                }
            }
        }
        n
    }

    /// Wait until a ring has data or `timeout` passes, but never longer than
    /// [`probe_common::EVENTS_POLL_MS`]: the kernel programs wake readers only once
    /// [`probe_common::EVENTS_WAKEUP_BYTES`] are waiting, so a caller that waits for a
    /// few records must drain after each return, `false` included.
    #[must_use]
    pub fn wait(&self, timeout: std::time::Duration) -> bool {
        let timeout = timeout.min(std::time::Duration::from_millis(
            probe_common::EVENTS_POLL_MS.into(),
        ));
        let mut pfds: [libc::pollfd; EVENT_RINGS] = [libc::pollfd {
            fd: -1,
            events: 0,
            revents: 0,
        }; EVENT_RINGS];
        for (pfd, (_, ring)) in pfds.iter_mut().zip(&self.rings) {
            pfd.fd = ring.as_raw_fd();
            pfd.events = libc::POLLIN;
        }
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let count = self.rings.len().min(EVENT_RINGS) as libc::nfds_t;
        // SAFETY: `count` valid pollfds.
        unsafe { libc::poll(pfds.as_mut_ptr(), count, ms) > 0 }
    }
}
