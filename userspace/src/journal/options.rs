//! Limits and recovery policy of a journal.

use super::{frame, JournalError};

/// Limits and recovery policy of a [`Journal`](super::Journal).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalOptions {
    /// A new segment is started when the next frame would take the current one over
    /// this size (only a compaction snapshot, written as one segment, may exceed it).
    /// Default 4 MiB.
    pub max_segment_bytes: u64,
    /// Upper bound of all segments together; appends beyond it fail with
    /// [`JournalError::Full`]. Default 64 MiB.
    pub max_total_bytes: u64,
    /// Largest accepted record, as JSON bytes. Default 64 KiB.
    pub max_record_bytes: u64,
    /// Truncate damaged *earlier* segments at the damage (with a warning) instead of
    /// failing to open. Default `false`.
    pub repair: bool,
}

impl Default for JournalOptions {
    fn default() -> Self {
        Self {
            max_segment_bytes: 4 << 20,
            max_total_bytes: 64 << 20,
            max_record_bytes: 64 << 10,
            repair: false,
        }
    }
}

impl JournalOptions {
    pub(super) fn validate(&self) -> Result<(), JournalError> {
        let bad = |m: String| Err(JournalError::InvalidOptions(m));
        if self.max_record_bytes == 0 || self.max_record_bytes > u64::from(u32::MAX) {
            return bad(format!(
                "max_record_bytes {} must be in 1..=2^32-1",
                self.max_record_bytes
            ));
        }
        if self.max_record_bytes + frame::HEADER_BYTES as u64 > self.max_segment_bytes {
            return bad(format!(
                "max_segment_bytes {} must hold a frame of max_record_bytes {} plus a {}-byte header",
                self.max_segment_bytes,
                self.max_record_bytes,
                frame::HEADER_BYTES
            ));
        }
        if self.max_segment_bytes > self.max_total_bytes {
            return bad(format!(
                "max_segment_bytes {} exceeds max_total_bytes {}",
                self.max_segment_bytes, self.max_total_bytes
            ));
        }
        Ok(())
    }
}
