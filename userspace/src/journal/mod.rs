//! A bounded, crash-safe, append-only local journal of records (state changes).
//!
//! Used by the standalone daemon to resume each check's state and history after a
//! restart, and by cluster nodes to keep transitions while etcd is unreachable and
//! flush them, in order, when it returns.
//!
//! # Format
//!
//! A journal is a directory (created with mode `0700`) of segment files
//! `journal-<firstseq>.log` (the number zero-padded to 20 digits), each a sequence of
//! frames (see [`frame`]):
//!
//! ```text
//! len: u32 LE | crc32c(len, seq, json): u32 LE | seq: u64 LE | json: len bytes
//! ```
//!
//! Sequence numbers start at 1 and grow by one per record, across segments and
//! restarts; a segment's name is the sequence number of its first record. A `LOCK`
//! file, held with `flock`, keeps a second writer out.
//!
//! # Guarantees
//!
//! - **Acknowledged means durable.** [`Journal::append`] and [`Journal::append_batch`]
//!   return only after the frames are written and `fdatasync`ed (new segment files
//!   after the directory is `fsync`ed too). A crash, even mid-write, loses nothing that
//!   was acknowledged; a record whose append did not return may or may not survive.
//! - **Torn tails are repaired, other damage is reported.** On [`Journal::open`], a
//!   short or bad-checksum frame in the *last* segment is the trace of an interrupted
//!   write: the segment is truncated there, with a warning naming the byte offset.
//!   Damage in an earlier segment (whose frames were all acknowledged) is an error
//!   naming file and offset ([`JournalError::Corrupt`]), unless
//!   [`JournalOptions::repair`] is set, in which case that segment is truncated there
//!   (with a warning) and later segments are kept, leaving a gap in the sequence.
//! - **Explicit bounds, nothing dropped silently.** A record over
//!   [`JournalOptions::max_record_bytes`] is refused
//!   ([`JournalError::RecordTooLarge`]); an append that would take the journal over
//!   [`JournalOptions::max_total_bytes`] is refused ([`JournalError::Full`]). Space is
//!   reclaimed only by the caller: [`Journal::compact`] (write a snapshot, then delete
//!   every older segment) when [`Journal::needs_compaction`] says so, or
//!   [`Journal::truncate_before`] once entries are safely elsewhere.
//! - **Compaction is atomic.** The snapshot segment is written under a temporary name,
//!   synced, renamed into place and the directory synced before any older segment is
//!   deleted. A crash in between leaves the older segments *and* the snapshot, so a
//!   replay may return the older entries followed by the snapshot: callers apply the
//!   entries in order and the snapshot wins.
//! - After an I/O error that leaves the on-disk state unknown (a failed `fdatasync`,
//!   a partially committed batch), the journal refuses further writes
//!   ([`JournalError::Poisoned`]): reopen it to learn what is on disk.

pub mod error;
pub mod frame;
mod options;
mod segment;

#[cfg(test)]
mod tests;

use std::{
    fmt,
    fs::{self, DirBuilder, File},
    marker::PhantomData,
    ops::Range,
    os::unix::fs::{DirBuilderExt, FileExt},
    path::{Path, PathBuf},
};

use serde::{de::DeserializeOwned, Serialize};

pub use error::JournalError;
pub use options::JournalOptions;
use segment::io_err;

/// Name of the lock file inside a journal directory.
pub const LOCK_FILE: &str = "LOCK";

/// One journaled record and its sequence number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<T> {
    /// Sequence number, unique and increasing across segments and restarts.
    pub seq: u64,
    /// The record.
    pub record: T,
}

/// A segment file of the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Sequence number of its first record (the one in its name).
    pub first_seq: u64,
    /// Path of the file.
    pub path: PathBuf,
    /// Size of the file in bytes.
    pub bytes: u64,
}

/// A bounded, crash-safe, append-only journal of `T` records in a directory (see the
/// [module docs](self) for the format and guarantees). One writer per directory.
pub struct Journal<T> {
    dir: PathBuf,
    opts: JournalOptions,
    /// Every segment, oldest first; the last one is the one appended to.
    segments: Vec<SegmentInfo>,
    active: File,
    next_seq: u64,
    poisoned: bool,
    _lock: File,
    _record: PhantomData<fn(T) -> T>,
}

impl<T> fmt::Debug for Journal<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.dir)
            .field("segments", &self.segments)
            .field("next_seq", &self.next_seq)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl<T: Serialize + DeserializeOwned> Journal<T> {
    /// Opens (creating it with mode `0700` if needed) the journal in `dir`, replays
    /// its segments in order and returns it with every valid entry, oldest first.
    ///
    /// A torn or corrupt tail of the last segment is truncated away with a warning;
    /// damage in an earlier segment is [`JournalError::Corrupt`] unless
    /// [`JournalOptions::repair`] is set. Fails with [`JournalError::Locked`] if
    /// another journal holds the directory.
    pub fn open(dir: &Path, opts: JournalOptions) -> Result<(Self, Vec<Entry<T>>), JournalError> {
        opts.validate()?;
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("create directory", dir))?;
        let lock = segment::lock_dir(dir)?;

        let segment::Replay {
            entries,
            mut segments,
            next_seq,
        } = segment::replay::<T>(dir, &opts)?;

        let active = match segments.last() {
            Some(last) => segment::open_rw(&last.path, false)?,
            None => {
                let path = segment::segment_path(dir, next_seq);
                let file = segment::open_rw(&path, true)?;
                segment::sync_dir(dir)?;
                segments.push(SegmentInfo {
                    first_seq: next_seq,
                    path,
                    bytes: 0,
                });
                file
            }
        };
        let journal = Self {
            dir: dir.to_path_buf(),
            opts,
            segments,
            active,
            next_seq,
            poisoned: false,
            _lock: lock,
            _record: PhantomData,
        };
        Ok((journal, entries))
    }

    /// Appends `record` and returns its sequence number once it is durable.
    ///
    /// Fails, writing nothing, with [`JournalError::RecordTooLarge`] or
    /// [`JournalError::Full`].
    pub fn append(&mut self, record: &T) -> Result<u64, JournalError> {
        self.append_batch(std::slice::from_ref(record))
            .map(|r| r.start)
    }

    /// Appends `records` with a single `fdatasync` (group commit, for bursts) and
    /// returns their sequence numbers once all are durable. An empty batch returns an
    /// empty range at [`Journal::next_seq`].
    ///
    /// The size checks cover the whole batch before anything is written. A batch that
    /// spans segments is synced once per segment; an I/O error after a first segment
    /// was committed poisons the journal (reopen to learn which records survived).
    pub fn append_batch(&mut self, records: &[T]) -> Result<Range<u64>, JournalError> {
        self.check_usable()?;
        let start = self.next_seq;
        let frames = self.encode(records, start)?;
        let needed: u64 = frames.iter().map(|f| f.len() as u64).sum();
        let used = self.len_bytes();
        if used + needed > self.opts.max_total_bytes {
            return Err(JournalError::Full {
                used,
                needed,
                limit: self.opts.max_total_bytes,
            });
        }
        let mut pending = Vec::new();
        let mut pending_count = 0u64;
        let mut committed = false;
        for (i, frame) in frames.iter().enumerate() {
            let filled = self.active_info().bytes + pending.len() as u64;
            if filled > 0 && filled + frame.len() as u64 > self.opts.max_segment_bytes {
                let result = self.commit(&pending, pending_count).and_then(|()| {
                    committed |= pending_count > 0;
                    self.roll(start + i as u64)
                });
                if let Err(e) = result {
                    self.poisoned |= committed;
                    return Err(e);
                }
                pending.clear();
                pending_count = 0;
            }
            pending.extend_from_slice(frame);
            pending_count += 1;
        }
        if let Err(e) = self.commit(&pending, pending_count) {
            self.poisoned |= committed;
            return Err(e);
        }
        Ok(start..self.next_seq)
    }

    /// Replaces the whole journal by `snapshot` (e.g. the current state of every
    /// check): writes a new segment starting with the snapshot records (numbered from
    /// [`Journal::next_seq`]), syncs it and the directory, then deletes every older
    /// segment. Entries not reflected in the snapshot are gone afterwards.
    ///
    /// The snapshot alone must fit within `max_total_bytes`
    /// ([`JournalError::SnapshotTooLarge`]); while compacting, the journal briefly
    /// uses its old size plus the snapshot's.
    pub fn compact(&mut self, snapshot: &[T]) -> Result<(), JournalError> {
        self.check_usable()?;
        let first_seq = self.next_seq;
        let frames = self.encode(snapshot, first_seq)?;
        let bytes: u64 = frames.iter().map(|f| f.len() as u64).sum();
        if bytes > self.opts.max_total_bytes {
            return Err(JournalError::SnapshotTooLarge {
                bytes,
                limit: self.opts.max_total_bytes,
            });
        }
        let path = segment::segment_path(&self.dir, first_seq);
        let tmp = path.with_extension(&segment::TMP_SUFFIX[1..]);
        let written = segment::write_new_file(&tmp, &frames.concat()).and_then(|file| {
            fs::rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
            Ok(file)
        });
        let file = match written {
            Ok(file) => file,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        // From here on the on-disk state differs from the in-memory one until done.
        self.poisoned = true;
        segment::sync_dir(&self.dir)?;
        for old in self.segments.iter().filter(|s| s.path != path) {
            fs::remove_file(&old.path).map_err(io_err("remove", &old.path))?;
        }
        segment::sync_dir(&self.dir)?;
        self.segments = vec![SegmentInfo {
            first_seq,
            path,
            bytes,
        }];
        self.active = file;
        self.next_seq += snapshot.len() as u64;
        self.poisoned = false;
        Ok(())
    }

    /// Deletes the oldest segments whose entries all have a sequence number below
    /// `seq` (e.g. once they were flushed to etcd) and returns how many were deleted.
    /// The segment being appended to is never deleted.
    pub fn truncate_before(&mut self, seq: u64) -> Result<usize, JournalError> {
        self.check_usable()?;
        let mut removed = 0;
        while self.segments.len() > 1 && self.segments[1].first_seq <= seq {
            let path = &self.segments[0].path;
            fs::remove_file(path).map_err(io_err("remove", path))?;
            self.segments.remove(0);
            removed += 1;
        }
        if removed > 0 {
            if let Err(e) = segment::sync_dir(&self.dir) {
                self.poisoned = true;
                return Err(e);
            }
        }
        Ok(removed)
    }

    fn encode(&self, records: &[T], first_seq: u64) -> Result<Vec<Vec<u8>>, JournalError> {
        let limit = self.opts.max_record_bytes;
        records
            .iter()
            .zip(first_seq..)
            .map(|(record, seq)| {
                let json = serde_json::to_vec(record).map_err(JournalError::Encode)?;
                if json.len() as u64 > limit {
                    return Err(JournalError::RecordTooLarge {
                        bytes: json.len() as u64,
                        limit,
                    });
                }
                let mut out = Vec::with_capacity(frame::HEADER_BYTES + json.len());
                frame::encode(seq, &json, &mut out);
                Ok(out)
            })
            .collect()
    }
}

impl<T> Journal<T> {
    /// Total size of all segment files, in bytes.
    pub fn len_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// The segment files, oldest first; the last one is appended to.
    pub fn segments(&self) -> &[SegmentInfo] {
        &self.segments
    }

    /// The last sequence number handed out (whether or not its entry was since
    /// compacted or truncated away), `None` if the journal never had an entry.
    pub fn last_seq(&self) -> Option<u64> {
        self.next_seq.checked_sub(1).filter(|&s| s > 0)
    }

    /// The sequence number the next appended record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Size at which [`Journal::needs_compaction`] turns true: three quarters of
    /// `max_total_bytes`, leaving room for the snapshot written before old segments
    /// are deleted.
    pub fn compaction_threshold(&self) -> u64 {
        self.opts.max_total_bytes - self.opts.max_total_bytes / 4
    }

    /// Change the bound of all segments together ([`JournalOptions::max_total_bytes`]),
    /// e.g. as the number of checks whose state a compaction snapshot holds changes.
    /// Never below what the segments hold now.
    pub fn set_max_total_bytes(&mut self, bytes: u64) {
        self.opts.max_total_bytes = bytes.max(self.len_bytes());
    }

    /// Whether the journal has grown to [`Journal::compaction_threshold`]: time to
    /// call [`Journal::compact`] before appends fail with [`JournalError::Full`].
    /// A snapshot should be well below the threshold, or the journal needs compacting
    /// again right after each compaction.
    pub fn needs_compaction(&self) -> bool {
        self.len_bytes() >= self.compaction_threshold()
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The options the journal was opened with.
    pub fn options(&self) -> &JournalOptions {
        &self.opts
    }

    fn check_usable(&self) -> Result<(), JournalError> {
        if self.poisoned {
            return Err(JournalError::Poisoned {
                dir: self.dir.clone(),
            });
        }
        Ok(())
    }

    fn active_info(&self) -> &SegmentInfo {
        self.segments
            .last()
            .expect("a journal always has an active segment")
    }

    /// Writes `buf` (holding `count` frames) at the end of the active segment and
    /// syncs it. A failed write is rolled back (or poisons the journal if that fails
    /// too); a failed sync poisons it.
    fn commit(&mut self, buf: &[u8], count: u64) -> Result<(), JournalError> {
        if buf.is_empty() {
            return Ok(());
        }
        let info = self.segments.last_mut().expect("active segment");
        if let Err(source) = self.active.write_all_at(buf, info.bytes) {
            if self.active.set_len(info.bytes).is_err() {
                self.poisoned = true;
            }
            return Err(JournalError::Io {
                op: "write",
                path: info.path.clone(),
                source,
            });
        }
        if let Err(source) = self.active.sync_data() {
            self.poisoned = true;
            return Err(JournalError::Io {
                op: "fdatasync",
                path: info.path.clone(),
                source,
            });
        }
        info.bytes += buf.len() as u64;
        self.next_seq += count;
        Ok(())
    }

    /// Starts a new, empty active segment whose first record will be `first_seq`.
    fn roll(&mut self, first_seq: u64) -> Result<(), JournalError> {
        let path = segment::segment_path(&self.dir, first_seq);
        let file = segment::open_rw(&path, true)?;
        if let Err(e) = segment::sync_dir(&self.dir) {
            self.poisoned = true;
            return Err(e);
        }
        self.segments.push(SegmentInfo {
            first_seq,
            path,
            bytes: 0,
        });
        self.active = file;
        Ok(())
    }
}
