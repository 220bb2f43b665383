//! Errors of the journal: each names the file (and byte offset, for damage) and what
//! the operator or the caller can do about it.

use std::{io, path::PathBuf};

/// An error of [`Journal`](super::Journal).
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A file-system operation failed.
    #[error("journal I/O error: {op} {path}: {source} (check the disk, its free space and the permissions; then reopen the journal)")]
    Io {
        /// What was being done ("open", "fdatasync", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A segment that is not the last one is damaged: truncating it would lose the
    /// records after the damage, so the journal refuses to open.
    #[error("journal segment {file} is corrupt at byte offset {offset}: {reason}; records after this point would be lost. Back the directory up, then reopen with `repair: true` to truncate the segment at this offset")]
    Corrupt {
        /// The damaged segment file.
        file: PathBuf,
        /// Offset of the first bad byte.
        offset: u64,
        /// What is wrong there.
        reason: String,
    },

    /// The segment files themselves are inconsistent (overlapping sequence numbers);
    /// no automatic repair is attempted.
    #[error("journal segment {file} is inconsistent: {reason}; move the file out of the journal directory after checking its contents")]
    Inconsistent {
        /// The offending segment file.
        file: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A record with a valid checksum does not decode as the journal's record type.
    #[error("journal record seq {seq} in {file} at byte offset {offset} does not decode as the expected record type: {source}; it was probably written by another version of sonde. Move the journal directory aside to start afresh")]
    Decode {
        /// The segment file.
        file: PathBuf,
        /// Offset of the frame.
        offset: u64,
        /// Sequence number of the record.
        seq: u64,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },

    /// A record could not be serialised to JSON.
    #[error("journal record does not serialise to JSON: {0}; nothing was written")]
    Encode(#[source] serde_json::Error),

    /// A record is larger than `max_record_bytes`; it was refused, not written.
    #[error("journal record of {bytes} bytes exceeds max_record_bytes ({limit}); nothing was written: shrink the record or raise the limit")]
    RecordTooLarge {
        /// Size of the serialised record.
        bytes: u64,
        /// The limit.
        limit: u64,
    },

    /// Appending would take the journal over `max_total_bytes`; nothing was written.
    #[error("journal full: {used} bytes used + {needed} needed exceed max_total_bytes ({limit}); nothing was written: call compact() with a snapshot of the current state, or truncate_before() entries already flushed elsewhere")]
    Full {
        /// Bytes used by all segments.
        used: u64,
        /// Bytes the append needed.
        needed: u64,
        /// The limit.
        limit: u64,
    },

    /// A compaction snapshot alone would exceed `max_total_bytes`.
    #[error("journal compaction snapshot of {bytes} bytes exceeds max_total_bytes ({limit}); nothing was changed: raise the limit")]
    SnapshotTooLarge {
        /// Size of the snapshot's frames.
        bytes: u64,
        /// The limit.
        limit: u64,
    },

    /// Another journal (in this or another process) holds the directory's lock.
    #[error("journal directory {dir} is locked by another process (or another Journal in this one); only one writer may use it")]
    Locked {
        /// The journal directory.
        dir: PathBuf,
    },

    /// An earlier I/O error left the on-disk state unknown; the journal refuses
    /// further writes.
    #[error("journal {dir} is unusable after an earlier I/O error; reopen it (Journal::open) to replay what is on disk")]
    Poisoned {
        /// The journal directory.
        dir: PathBuf,
    },

    /// The options are unusable.
    #[error("invalid journal options: {0}")]
    InvalidOptions(String),
}
