//! Unit tests of the journal against real files in a temporary directory.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
};

use serde::{Deserialize, Serialize};

use super::*;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Rec {
    check: String,
    up: bool,
    n: u64,
}

fn rec(n: u64) -> Rec {
    Rec {
        check: format!("check-{}", n % 7),
        up: n.is_multiple_of(2),
        n,
    }
}

/// Bytes of the frame of `rec(n)`.
fn frame_len(n: u64) -> u64 {
    (frame::HEADER_BYTES + serde_json::to_vec(&rec(n)).unwrap().len()) as u64
}

/// A unique temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir()
            .join(format!("sonde-journal-unit-{}-{n}", std::process::id()))
            .join("j");
        let _ = fs::remove_dir_all(path.parent().unwrap());
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(self.0.parent().unwrap());
    }
}

fn small() -> JournalOptions {
    JournalOptions {
        max_segment_bytes: 1024,
        max_total_bytes: 8192,
        max_record_bytes: 256,
        repair: false,
    }
}

/// Open a journal this test closed before (or a new one). Other tests of this binary
/// spawn processes, and a child holds a copy of every descriptor, the lock file's
/// included, from its fork until its exec closes it: a reopen in that instant finds
/// the directory locked. Such a lock is gone within milliseconds; a journal really
/// left open is not, and still fails the test.
fn open(dir: &Path, opts: JournalOptions) -> (Journal<Rec>, Vec<Entry<Rec>>) {
    let start = std::time::Instant::now();
    loop {
        match Journal::open(dir, opts.clone()) {
            Err(JournalError::Locked { .. })
                if start.elapsed() < std::time::Duration::from_secs(1) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => return other.expect("open journal"),
        }
    }
}

fn seqs(entries: &[Entry<Rec>]) -> Vec<u64> {
    entries.iter().map(|e| e.seq).collect()
}

fn append_n(j: &mut Journal<Rec>, range: Range<u64>) {
    for n in range {
        j.append(&rec(n)).expect("append");
    }
}

#[test]
fn roundtrip_and_dir_mode() {
    let tmp = TempDir::new();
    let (mut j, entries) = open(&tmp.0, JournalOptions::default());
    assert!(entries.is_empty());
    assert_eq!(j.last_seq(), None);
    assert_eq!(j.append(&rec(10)).unwrap(), 1);
    assert_eq!(j.append(&rec(11)).unwrap(), 2);
    assert_eq!(j.last_seq(), Some(2));
    assert_eq!(j.len_bytes(), frame_len(10) + frame_len(11));
    drop(j);
    let (_j, entries) = open(&tmp.0, JournalOptions::default());
    assert_eq!(
        entries,
        vec![
            Entry {
                seq: 1,
                record: rec(10)
            },
            Entry {
                seq: 2,
                record: rec(11)
            }
        ]
    );
    let mode = fs::metadata(&tmp.0).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

#[test]
fn seq_continues_across_reopen() {
    let tmp = TempDir::new();
    let (mut j, _) = open(&tmp.0, small());
    append_n(&mut j, 0..3);
    drop(j);
    let (mut j, entries) = open(&tmp.0, small());
    assert_eq!(seqs(&entries), [1, 2, 3]);
    assert_eq!(j.next_seq(), 4);
    assert_eq!(j.append(&rec(3)).unwrap(), 4);
    drop(j);
    let (j, entries) = open(&tmp.0, small());
    assert_eq!(seqs(&entries), [1, 2, 3, 4]);
    assert_eq!(entries[3].record, rec(3));
    assert_eq!(j.last_seq(), Some(4));
}

#[test]
fn second_writer_is_locked_out() {
    let tmp = TempDir::new();
    let (_j, _) = open(&tmp.0, small());
    let err = Journal::<Rec>::open(&tmp.0, small()).unwrap_err();
    assert!(matches!(err, JournalError::Locked { .. }), "{err}");
}

#[test]
fn torn_tail_is_truncated() {
    let tmp = TempDir::new();
    let (mut j, _) = open(&tmp.0, small());
    append_n(&mut j, 0..3);
    let path = j.segments()[0].path.clone();
    let good_len = j.len_bytes();
    drop(j);
    // Half a frame, as a crash in the middle of a write leaves it.
    let mut frame = Vec::new();
    frame::encode(4, &serde_json::to_vec(&rec(3)).unwrap(), &mut frame);
    let mut bytes = fs::read(&path).unwrap();
    bytes.extend_from_slice(&frame[..frame.len() / 2]);
    fs::write(&path, bytes).unwrap();

    let (mut j, entries) = open(&tmp.0, small());
    assert_eq!(seqs(&entries), [1, 2, 3]);
    assert_eq!(fs::metadata(&path).unwrap().len(), good_len);
    assert_eq!(j.append(&rec(3)).unwrap(), 4);
    drop(j);
    let (_j, entries) = open(&tmp.0, small());
    assert_eq!(seqs(&entries), [1, 2, 3, 4]);
}

#[test]
fn short_header_tail_is_truncated() {
    let tmp = TempDir::new();
    let (mut j, _) = open(&tmp.0, small());
    append_n(&mut j, 0..2);
    let path = j.segments()[0].path.clone();
    drop(j);
    let mut bytes = fs::read(&path).unwrap();
    bytes.extend_from_slice(&[7, 0, 0]);
    fs::write(&path, bytes).unwrap();
    let (_j, entries) = open(&tmp.0, small());
    assert_eq!(seqs(&entries), [1, 2]);
}

#[test]
fn bad_crc_in_last_segment_is_truncated() {
    let tmp = TempDir::new();
    let (mut j, _) = open(&tmp.0, small());
    append_n(&mut j, 0..3);
    let path = j.segments()[0].path.clone();
    drop(j);
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 2;
    bytes[last] ^= 0x20;
    fs::write(&path, bytes).unwrap();
    let (_j, entries) = open(&tmp.0, small());
    assert_eq!(seqs(&entries), [1, 2]);
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        frame_len(0) + frame_len(1)
    );
}

#[test]
fn corrupt_earlier_segment_is_an_error_unless_repair() {
    let tmp = TempDir::new();
    let (mut j, _) = open(&tmp.0, small());
    append_n(&mut j, 0..40);
    assert!(j.segments().len() >= 3);
    let first = j.segments()[0].clone();
    let second_first_seq = j.segments()[1].first_seq;
    drop(j);
    // Damage the second frame of the first segment.
    let offset = frame_len(0);
    let mut bytes = fs::read(&first.path).unwrap();
    bytes[offset as usize + 20] ^= 0xFF;
    fs::write(&first.path, bytes).unwrap();

    let err = Journal::<Rec>::open(&tmp.0, small()).unwrap_err();
    match &err {
        JournalError::Corrupt {
            file, offset: at, ..
        } => {
            assert_eq!(file, &first.path);
            assert_eq!(*at, offset);
        }
        other => panic!("expected Corrupt, got {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&first.path.display().to_string()), "{msg}");
    assert!(msg.contains(&format!("offset {offset}")), "{msg}");
    assert!(msg.contains("repair"), "{msg}");
    // Nothing was changed by the failed open.
    assert_eq!(fs::metadata(&first.path).unwrap().len(), first.bytes);

    let (mut j, entries) = open(
        &tmp.0,
        JournalOptions {
            repair: true,
            ..small()
        },
    );
    let expected: Vec<u64> = std::iter::once(1).chain(second_first_seq..=40).collect();
    assert_eq!(seqs(&entries), expected);
    assert_eq!(fs::metadata(&first.path).unwrap().len(), offset);
    assert_eq!(j.append(&rec(40)).unwrap(), 41);
    drop(j);
    // Repaired: a plain open works again.
    let (_j, entries) = open(&tmp.0, small());
    assert_eq!(entries.len(), expected.len() + 1);
}

#[test]
fn undecodable_record_is_an_error() {
    let tmp = TempDir::new();
    let (mut j, _) = open(&tmp.0, small());
    append_n(&mut j, 0..2);
    drop(j);
    let err = Journal::<u32>::open(&tmp.0, small()).unwrap_err();
    assert!(
        matches!(
            err,
            JournalError::Decode {
                seq: 1,
                offset: 0,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn oversized_record_is_refused() {
    let tmp = TempDir::new();
    let (mut j, _) = open(&tmp.0, small());
    j.append(&rec(0)).unwrap();
    let big = Rec {
        check: "x".repeat(300),
        up: true,
        n: 1,
    };
    let err = j.append(&big).unwrap_err();
    assert!(
        matches!(err, JournalError::RecordTooLarge { limit: 256, .. }),
        "{err}"
    );
    // A batch with one oversized record writes nothing.
    let err = j.append_batch(&[rec(1), big]).unwrap_err();
    assert!(matches!(err, JournalError::RecordTooLarge { .. }), "{err}");
    assert_eq!(j.len_bytes(), frame_len(0));
    assert_eq!(j.append(&rec(1)).unwrap(), 2);
}

#[test]
fn segments_roll_over() {
    let tmp = TempDir::new();
    let (mut j, _) = open(&tmp.0, small());
    append_n(&mut j, 0..60);
    let segs = j.segments().to_vec();
    assert!(segs.len() > 2, "{segs:?}");
    let mut expected_first = 1;
    for s in &segs {
        assert!(s.bytes <= 1024);
        assert_eq!(s.first_seq, expected_first);
        assert_eq!(fs::metadata(&s.path).unwrap().len(), s.bytes);
        let count = (s.first_seq..).take_while(|&q| q <= 60).scan(0, |acc, q| {
            *acc += frame_len(q - 1);
            (*acc <= s.bytes).then_some(q)
        });
        expected_first += count.count() as u64;
    }
    assert_eq!(expected_first, 61);
    assert_eq!(j.len_bytes(), segs.iter().map(|s| s.bytes).sum::<u64>());
    drop(j);
    let (j, entries) = open(&tmp.0, small());
    assert_eq!(seqs(&entries), (1..=60).collect::<Vec<_>>());
    assert_eq!(j.segments(), &segs[..]);
}

#[test]
fn compaction_keeps_snapshot_and_later_entries() {
    let tmp = TempDir::new();
    let (mut j, _) = open(&tmp.0, small());
    append_n(&mut j, 0..50);
    let old: Vec<PathBuf> = j.segments().iter().map(|s| s.path.clone()).collect();
    assert!(old.len() > 1);
    let snapshot = vec![rec(100), rec(101)];
    j.compact(&snapshot).unwrap();
    assert_eq!(j.segments().len(), 1);
    assert_eq!(j.segments()[0].first_seq, 51);
    assert!(old.iter().all(|p| !p.exists()));
    assert_eq!(j.len_bytes(), frame_len(100) + frame_len(101));
    assert_eq!(j.append(&rec(102)).unwrap(), 53);
    drop(j);
    let (j, entries) = open(&tmp.0, small());
    assert_eq!(seqs(&entries), [51, 52, 53]);
    let records: Vec<Rec> = entries.into_iter().map(|e| e.record).collect();
    assert_eq!(records, [rec(100), rec(101), rec(102)]);
    assert_eq!(j.last_seq(), Some(53));
}

#[test]
fn compaction_of_a_fresh_or_empty_journal() {
    let tmp = TempDir::new();
    let (mut j, _) = open(&tmp.0, small());
    // The active segment is empty and has the snapshot's name: it is replaced.
    j.compact(&[rec(1)]).unwrap();
    j.compact(&[]).unwrap();
    assert_eq!(j.segments().len(), 1);
    assert_eq!(j.len_bytes(), 0);
    drop(j);
    let (mut j, entries) = open(&tmp.0, small());
    assert!(entries.is_empty());
    assert_eq!(j.last_seq(), Some(1));
    assert_eq!(j.append(&rec(2)).unwrap(), 2);
}

#[test]
fn crash_before_old_segments_are_deleted_replays_both() {
    let tmp = TempDir::new();
    let (mut j, _) = open(&tmp.0, small());
    append_n(&mut j, 0..30);
    let saved: Vec<(PathBuf, Vec<u8>)> = j
        .segments()
        .iter()
        .map(|s| (s.path.clone(), fs::read(&s.path).unwrap()))
        .collect();
    j.compact(&[rec(100)]).unwrap();
    drop(j);
    // As if the crash came after the snapshot's rename, before the deletions.
    for (path, bytes) in &saved {
        fs::write(path, bytes).unwrap();
    }
    let (_j, entries) = open(&tmp.0, small());
    assert_eq!(seqs(&entries), (1..=31).collect::<Vec<_>>());
    assert_eq!(entries[30].record, rec(100));
}

#[test]
fn interrupted_compaction_leftover_is_removed() {
    let tmp = TempDir::new();
    let (mut j, _) = open(&tmp.0, small());
    append_n(&mut j, 0..3);
    drop(j);
    let leftover = tmp.0.join("journal-00000000000000000004.log.tmp");
    fs::write(&leftover, b"partial snapshot").unwrap();
    let (_j, entries) = open(&tmp.0, small());
    assert_eq!(seqs(&entries), [1, 2, 3]);
    assert!(!leftover.exists());
}

#[test]
fn full_when_over_budget_until_compacted() {
    let tmp = TempDir::new();
    let (mut j, _) = open(&tmp.0, small());
    let mut n = 0;
    let err = loop {
        match j.append(&rec(n)) {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
        assert!(n < 1000, "never full");
    };
    assert!(
        matches!(err, JournalError::Full { limit: 8192, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("compact"));
    assert!(j.needs_compaction());
    assert!(j.len_bytes() <= 8192);
    assert!(j.len_bytes() + frame_len(n) > 8192);
    let before = j.next_seq();
    j.compact(&[rec(0)]).unwrap();
    assert!(!j.needs_compaction());
    assert_eq!(j.append(&rec(n)).unwrap(), before + 1);
    let err = j.compact(&vec![rec(0); 200]).unwrap_err();
    assert!(
        matches!(err, JournalError::SnapshotTooLarge { .. }),
        "{err}"
    );
}

#[test]
fn a_raised_budget_takes_more_and_a_lowered_one_keeps_what_is_there() {
    let tmp = TempDir::new();
    let (mut j, _) = open(&tmp.0, small());
    let mut n = 0;
    while j.append(&rec(n)).is_ok() {
        n += 1;
    }
    // A snapshot of more checks than the budget was sized for: raise it.
    j.set_max_total_bytes(4 * 8192);
    assert!(!j.needs_compaction());
    j.append(&rec(n)).expect("room after raising the budget");
    let held = j.len_bytes();
    j.set_max_total_bytes(1);
    assert_eq!(
        j.options().max_total_bytes,
        held,
        "never below what is held"
    );
    assert!(matches!(
        j.append(&rec(0)).unwrap_err(),
        JournalError::Full { .. }
    ));
}

#[test]
fn needs_compaction_before_full() {
    let tmp = TempDir::new();
    let (mut j, _) = open(&tmp.0, small());
    let mut n = 0;
    while !j.needs_compaction() {
        j.append(&rec(n)).unwrap();
        n += 1;
    }
    assert!(j.len_bytes() >= j.compaction_threshold());
    assert!(j.len_bytes() < 8192);
}

#[test]
fn batch_append() {
    let tmp = TempDir::new();
    let (mut j, _) = open(&tmp.0, small());
    assert_eq!(j.append_batch(&[]).unwrap(), 1..1);
    let batch: Vec<Rec> = (0..5).map(rec).collect();
    assert_eq!(j.append_batch(&batch).unwrap(), 1..6);
    // A batch larger than a segment spans segments.
    let big: Vec<Rec> = (5..40).map(rec).collect();
    assert_eq!(j.append_batch(&big).unwrap(), 6..41);
    assert!(j.segments().len() > 1);
    assert!(j.segments().iter().all(|s| s.bytes <= 1024));
    let err = j.append_batch(&vec![rec(0); 200]).unwrap_err();
    assert!(matches!(err, JournalError::Full { .. }), "{err}");
    assert_eq!(j.next_seq(), 41);
    drop(j);
    let (_j, entries) = open(&tmp.0, small());
    assert_eq!(seqs(&entries), (1..=40).collect::<Vec<_>>());
    assert!(entries.iter().all(|e| e.record == rec(e.seq - 1)));
}

#[test]
fn truncate_before_deletes_flushed_segments() {
    let tmp = TempDir::new();
    let (mut j, _) = open(&tmp.0, small());
    append_n(&mut j, 0..60);
    let segs = j.segments().to_vec();
    assert!(segs.len() >= 3);
    // Nothing below the second segment's start is flushed yet: keep everything.
    assert_eq!(j.truncate_before(segs[1].first_seq - 1).unwrap(), 0);
    assert_eq!(j.truncate_before(segs[2].first_seq).unwrap(), 2);
    assert!(!segs[0].path.exists() && !segs[1].path.exists());
    assert_eq!(j.segments()[0].first_seq, segs[2].first_seq);
    // The active segment survives even when everything is flushed.
    j.truncate_before(u64::MAX).unwrap();
    assert_eq!(j.segments().len(), 1);
    assert_eq!(j.append(&rec(60)).unwrap(), 61);
    let first = j.segments()[0].first_seq;
    drop(j);
    let (_j, entries) = open(&tmp.0, small());
    assert_eq!(seqs(&entries), (first..=61).collect::<Vec<_>>());
}

#[test]
fn invalid_options_are_refused() {
    let tmp = TempDir::new();
    for opts in [
        JournalOptions {
            max_record_bytes: 0,
            ..small()
        },
        JournalOptions {
            max_record_bytes: 1024,
            ..small()
        },
        JournalOptions {
            max_total_bytes: 512,
            ..small()
        },
    ] {
        let err = Journal::<Rec>::open(&tmp.0, opts).unwrap_err();
        assert!(matches!(err, JournalError::InvalidOptions(_)), "{err}");
    }
}
