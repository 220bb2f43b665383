//! Segment files: naming, listing, scanning (replay) and directory syncs.

use std::{
    fs::{self, File, OpenOptions},
    io,
    os::{
        fd::AsRawFd,
        unix::fs::{FileExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
};

use serde::de::DeserializeOwned;

use super::{
    frame::{self, Parsed},
    Entry, JournalError, JournalOptions, SegmentInfo,
};

const PREFIX: &str = "journal-";
const SUFFIX: &str = ".log";
/// Suffix of a compaction segment being written (renamed to `.log` once durable).
pub const TMP_SUFFIX: &str = ".log.tmp";

/// Wraps an I/O error with the operation and the path.
pub fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> JournalError + 'a {
    move |source| JournalError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Path of the segment whose first record is `first_seq` (zero-padded, so a plain
/// `ls` lists segments in order).
pub fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{first_seq:020}{SUFFIX}"))
}

/// The first sequence number encoded in a segment file name, if it is one.
fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The files of a journal directory.
#[derive(Debug, Default)]
pub struct Listing {
    /// Segments as (first sequence number, path), in order.
    pub segments: Vec<(u64, PathBuf)>,
    /// Leftovers of an interrupted compaction.
    pub temporaries: Vec<PathBuf>,
}

/// Lists the segment files (and compaction leftovers) of `dir`; other files are
/// ignored with a warning, except the lock file.
pub fn list(dir: &Path) -> Result<Listing, JournalError> {
    let mut listing = Listing::default();
    for item in fs::read_dir(dir).map_err(io_err("read directory", dir))? {
        let item = item.map_err(io_err("read directory", dir))?;
        let path = item.path();
        let Some(name) = item.file_name().to_str().map(str::to_owned) else {
            tracing::warn!(file = %path.display(), "ignoring a non-UTF-8 file name in the journal directory");
            continue;
        };
        if let Some(first) = parse_name(&name) {
            listing.segments.push((first, path));
        } else if name.starts_with(PREFIX) && name.ends_with(TMP_SUFFIX) {
            listing.temporaries.push(path);
        } else if name != super::LOCK_FILE {
            tracing::warn!(file = %path.display(), "ignoring an unknown file in the journal directory");
        }
    }
    listing.segments.sort();
    if let Some(w) = listing.segments.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(JournalError::Inconsistent {
            file: w[1].1.clone(),
            reason: format!("{} starts at the same seq {}", w[0].1.display(), w[0].0),
        });
    }
    Ok(listing)
}

/// Makes the creation, renaming or removal of files in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

/// Opens a segment for reading and writing (records are written at explicit offsets).
pub fn open_rw(path: &Path, create_new: bool) -> Result<File, JournalError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(create_new)
        .mode(0o600)
        .open(path)
        .map_err(io_err(if create_new { "create" } else { "open" }, path))
}

/// Everything a journal directory holds, replayed.
#[derive(Debug)]
pub struct Replay<T> {
    /// Every valid entry, oldest first.
    pub entries: Vec<Entry<T>>,
    /// The segments, oldest first, with their sizes after any truncation.
    pub segments: Vec<SegmentInfo>,
    /// The sequence number of the next record.
    pub next_seq: u64,
}

/// Removes compaction leftovers, then scans every segment of `dir` in order,
/// truncating a torn tail of the last one (or, with `opts.repair`, damage anywhere).
pub fn replay<T: DeserializeOwned>(
    dir: &Path,
    opts: &JournalOptions,
) -> Result<Replay<T>, JournalError> {
    let listing = list(dir)?;
    for tmp in &listing.temporaries {
        tracing::warn!(file = %tmp.display(), "removing the leftover of an interrupted journal compaction");
        fs::remove_file(tmp).map_err(io_err("remove", tmp))?;
    }
    if !listing.temporaries.is_empty() {
        sync_dir(dir)?;
    }

    let mut entries = Vec::new();
    let mut segments = Vec::with_capacity(listing.segments.len());
    let mut next_seq = 1u64;
    let count = listing.segments.len();
    for (i, (first_seq, path)) in listing.segments.into_iter().enumerate() {
        if first_seq < next_seq {
            return Err(JournalError::Inconsistent {
                file: path,
                reason: format!(
                    "it starts at seq {first_seq} but earlier segments reach seq {}",
                    next_seq - 1
                ),
            });
        }
        let scan = scan::<T>(&path, first_seq)?;
        let mut bytes = scan.file_len;
        if let Some(damage) = scan.damage {
            let last = i + 1 == count;
            if !(opts.repair || (last && damage.torn)) {
                return Err(JournalError::Corrupt {
                    file: path,
                    offset: damage.offset,
                    reason: damage.reason,
                });
            }
            tracing::warn!(
                file = %path.display(),
                offset = damage.offset,
                dropped_bytes = scan.file_len - damage.offset,
                reason = %damage.reason,
                "{}",
                if last && damage.torn {
                    "truncating the torn tail of the last journal segment (an interrupted write: \
                     nothing after this offset was acknowledged)"
                } else {
                    "repair: truncating a damaged journal segment at this offset"
                }
            );
            truncate(&path, damage.offset)?;
            bytes = damage.offset;
        }
        next_seq = scan.entries.last().map_or(first_seq, |e| e.seq + 1);
        entries.extend(scan.entries);
        segments.push(SegmentInfo {
            first_seq,
            path,
            bytes,
        });
    }
    Ok(Replay {
        entries,
        segments,
        next_seq,
    })
}

/// Where and why a scan stopped before the end of a segment.
#[derive(Debug)]
pub struct Damage {
    /// Offset of the first bad byte.
    pub offset: u64,
    /// What is wrong there.
    pub reason: String,
    /// Whether it looks like an interrupted write (short frame or bad checksum) rather
    /// than a structural problem (a valid frame with an unexpected sequence number).
    pub torn: bool,
}

/// The result of scanning a segment.
#[derive(Debug)]
pub struct Scan<T> {
    /// The valid records before any damage.
    pub entries: Vec<Entry<T>>,
    /// The size of the file.
    pub file_len: u64,
    /// The first damage, if the valid frames do not reach the end of the file.
    pub damage: Option<Damage>,
}

/// Reads every valid frame of the segment `path` whose first record must be
/// `first_seq`, stopping at the first damage.
pub fn scan<T: DeserializeOwned>(path: &Path, first_seq: u64) -> Result<Scan<T>, JournalError> {
    let buf = fs::read(path).map_err(io_err("read", path))?;
    let mut entries = Vec::new();
    let mut offset = 0usize;
    let mut expected = first_seq;
    let damage = loop {
        match frame::parse(&buf, offset) {
            Parsed::End => break None,
            Parsed::Bad(reason) => {
                break Some(Damage {
                    offset: offset as u64,
                    reason,
                    torn: true,
                })
            }
            Parsed::Frame { seq, payload, next } => {
                if seq != expected {
                    break Some(Damage {
                        offset: offset as u64,
                        reason: format!("frame has seq {seq}, expected {expected}"),
                        torn: false,
                    });
                }
                let record =
                    serde_json::from_slice(payload).map_err(|source| JournalError::Decode {
                        file: path.to_path_buf(),
                        offset: offset as u64,
                        seq,
                        source,
                    })?;
                entries.push(Entry { seq, record });
                expected += 1;
                offset = next;
            }
        }
    };
    Ok(Scan {
        entries,
        file_len: buf.len() as u64,
        damage,
    })
}

/// Cuts the segment at `len` bytes and makes it durable.
pub fn truncate(path: &Path, len: u64) -> Result<(), JournalError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err("open", path))?;
    file.set_len(len).map_err(io_err("truncate", path))?;
    file.sync_all().map_err(io_err("fsync", path))
}

/// Creates `path` (replacing a leftover), writes `bytes` and syncs it.
pub fn write_new_file(path: &Path, bytes: &[u8]) -> Result<File, JournalError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("create", path))?;
    file.write_all_at(bytes, 0).map_err(io_err("write", path))?;
    file.sync_all().map_err(io_err("fsync", path))?;
    Ok(file)
}

/// Takes the exclusive `flock` of the directory's lock file, without waiting.
pub fn lock_dir(dir: &Path) -> Result<File, JournalError> {
    let path = dir.join(super::LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io_err("open", &path))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(JournalError::Locked {
                dir: dir.to_path_buf(),
            });
        }
        return Err(JournalError::Io {
            op: "flock",
            path,
            source: err,
        });
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let p = segment_path(Path::new("/j"), 42);
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, "journal-00000000000000000042.log");
        assert_eq!(parse_name(name), Some(42));
        assert_eq!(parse_name("journal-7.log"), Some(7));
        assert_eq!(parse_name("journal-.log"), None);
        assert_eq!(parse_name("journal-+7.log"), None);
        assert_eq!(parse_name("journal-7.log.tmp"), None);
        assert_eq!(parse_name("other-7.log"), None);
    }
}
