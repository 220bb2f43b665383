//! Reading answer records from the XDP program's ring buffer.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use aya::maps::{MapData, RingBuf};
use probe_common::record::AnswerRecord;

/// The ring buffer of [`AnswerRecord`]s; movable to the thread that matches answers.
pub struct Events(pub(super) RingBuf<MapData>);

impl Events {
    /// Pop every record currently in the ring buffer; returns how many.
    pub fn drain(&mut self, mut f: impl FnMut(AnswerRecord)) -> usize {
        let mut n = 0;
        while let Some(item) = self.0.next() {
            if item.len() >= std::mem::size_of::<AnswerRecord>() {
                // SAFETY: the kernel wrote a whole AnswerRecord (checked length);
                // read_unaligned copes with the ring's 8-byte alignment either way.
                let rec = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<AnswerRecord>()) };
                f(rec);
                n += 1;
            }
        }
        n
    }

    /// Wait until the ring buffer has data or `timeout` passes, but never longer than
    /// [`probe_common::EVENTS_POLL_MS`]: the XDP program wakes readers only once
    /// [`probe_common::EVENTS_WAKEUP_BYTES`] are waiting, so a caller that waits for a
    /// few records must drain after each return, `false` included.
    #[must_use]
    pub fn wait(&self, timeout: std::time::Duration) -> bool {
        let timeout = timeout.min(std::time::Duration::from_millis(
            probe_common::EVENTS_POLL_MS.into(),
        ));
        let mut pfd = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&raw mut pfd, 1, ms) > 0 }
    }

    /// The fd, to wait on with poll/epoll/io_uring.
    #[must_use]
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}
