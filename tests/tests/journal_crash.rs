//! Crash test of `sonde::journal`: a child process appends records in a tight loop and
//! reports every acknowledged sequence number; the parent kills it with SIGKILL at a
//! random moment, reopens the journal and checks that every acknowledged record is
//! there with the right content, whatever frame the kill may have torn.
//!
//! The test binary is its own child: [`child_writer`] is a no-op test unless
//! `SONDE_JOURNAL_CHILD` names a journal directory, in which case it is the writer.
//! No privileges are needed.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use sonde::journal::{frame, Journal, JournalOptions};

/// Environment variable naming the journal directory of the child writer.
const CHILD_ENV: &str = "SONDE_JOURNAL_CHILD";
/// Environment variable with the child's run number (part of every record).
const RUN_ENV: &str = "SONDE_JOURNAL_RUN";
/// Kill-and-reopen rounds, all on the same journal.
const ROUNDS: u64 = 5;
/// Marker of an acknowledgement line: `ACK <seq> <run> <n>`.
const ACK: &str = "ACK ";

fn options() -> JournalOptions {
    JournalOptions {
        max_segment_bytes: 256 << 10,
        ..JournalOptions::default()
    }
}

/// The `n`-th record of run `run`: a few hundred bytes to a few KiB, so that writes
/// span pages and a kill can tear them.
fn record(run: u64, n: u64) -> Value {
    let pad = "abcdefghijklmnopqrstuvwxyz".repeat(((n * 7919) % 150) as usize);
    json!({ "run": run, "n": n, "pad": pad })
}

/// The child: appends until killed (or until a safety deadline), printing
/// `ACK <seq> <run> <n>` once `append`/`append_batch` returned.
#[test]
fn child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let run: u64 = std::env::var(RUN_ENV).unwrap().parse().unwrap();
    let (mut journal, _) = Journal::<Value>::open(Path::new(&dir), options()).unwrap();
    let mut out = std::io::stdout().lock();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0u64;
    while Instant::now() < deadline {
        // Alternate single appends and group commits of 2..=8 records.
        let size = if n.is_multiple_of(3) { 1 } else { 2 + n % 7 };
        let batch: Vec<Value> = (n..n + size).map(|i| record(run, i)).collect();
        let seqs = if size == 1 {
            let seq = journal.append(&batch[0]).unwrap();
            seq..seq + 1
        } else {
            journal.append_batch(&batch).unwrap()
        };
        for (seq, i) in seqs.zip(n..) {
            writeln!(out, "{ACK}{seq} {run} {i}").unwrap();
        }
        out.flush().unwrap();
        n += size;
    }
}

/// A unique temporary directory, removed on drop (even when the test fails).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The child process, killed and reaped on drop if the test fails early.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // After a successful wait() these are no-ops: std does not signal a reaped pid.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn parse_ack(line: &str) -> Option<(u64, u64, u64)> {
    let rest = &line[line.find(ACK)? + ACK.len()..];
    let mut it = rest.split_whitespace().map(|w| w.parse::<u64>().ok());
    Some((it.next()??, it.next()??, it.next()??))
}

/// The segment files of `dir`, in order.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    files
}

fn disk_bytes(dir: &Path) -> u64 {
    segment_files(dir)
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum()
}

/// Appends the first half of a frame to the last segment: what a write cut short by
/// a crash (or a power loss before writeback) leaves behind.
fn tear_last_segment(dir: &Path) {
    let last = segment_files(dir).pop().expect("a segment");
    let mut frame = Vec::new();
    frame::encode(u64::MAX, record(99, 99).to_string().as_bytes(), &mut frame);
    let mut file = fs::OpenOptions::new().append(true).open(last).unwrap();
    file.write_all(&frame[..frame.len() / 2]).unwrap();
}

/// One round: run the child, kill it after `threshold` acknowledgements (plus a
/// random delay), and return the acknowledged `seq -> (run, n)`.
fn run_and_kill(dir: &Path, run: u64, threshold: usize) -> BTreeMap<u64, (u64, u64)> {
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["child_writer", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .env(RUN_ENV, run.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child writer");
    let mut guard = ChildGuard(child);
    let pid = libc::pid_t::try_from(guard.0.id()).unwrap();
    let stdout = guard.0.stdout.take().unwrap();
    let mut acked = BTreeMap::new();
    let mut killed = false;
    for line in BufReader::new(stdout).lines() {
        // Lines read after the kill were printed before it: acknowledged too.
        let line = line.expect("read the child's stdout");
        let Some((seq, r, n)) = parse_ack(&line) else {
            continue;
        };
        assert_eq!(r, run, "ack of another run: {line}");
        assert!(
            acked.insert(seq, (r, n)).is_none(),
            "seq {seq} acknowledged twice"
        );
        if !killed && acked.len() >= threshold {
            let spin = Instant::now() + Duration::from_micros(rand::random_range(0..400));
            while Instant::now() < spin {
                std::hint::spin_loop();
            }
            // SAFETY: kill(2) on the pid of our own, not yet reaped, child.
            assert_eq!(
                unsafe { libc::kill(pid, libc::SIGKILL) },
                0,
                "kill the child"
            );
            killed = true;
        }
    }
    let status = guard.0.wait().expect("reap the child");
    assert!(
        killed && status.signal() == Some(libc::SIGKILL),
        "child ended on its own ({status}) after {} acknowledgements",
        acked.len()
    );
    acked
}

#[test]
fn acknowledged_records_survive_sigkill() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let started = Instant::now();
    let tmp = TempDir(std::env::temp_dir().join(format!(
        "sonde-journal-crash-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    )));
    let dir = tmp.0.join("journal");
    let mut all_acked: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let (mut torn_by_kill, mut torn_by_hand) = (0, 0);
    for run in 0..ROUNDS {
        let threshold = rand::random_range(400..1600);
        let acked = run_and_kill(&dir, run, threshold);
        assert!(acked.len() >= threshold);
        if let (Some(first), Some(prev)) = (acked.keys().next(), all_acked.keys().next_back()) {
            assert!(
                first > prev,
                "run {run} reused seq {first} (previous max {prev})"
            );
        }
        all_acked.extend(acked);

        // A kill rarely lands inside write(2); tear a frame by hand every other round
        // so the replay of a torn tail is always exercised.
        let before = disk_bytes(&dir);
        let (journal, entries) = if run % 2 == 1 {
            tear_last_segment(&dir);
            let (journal, entries) =
                Journal::<Value>::open(&dir, options()).expect("replay of a torn tail");
            assert!(journal.len_bytes() <= before, "torn frame not truncated");
            torn_by_hand += 1;
            (journal, entries)
        } else {
            let (journal, entries) =
                Journal::<Value>::open(&dir, options()).expect("replay after SIGKILL");
            if journal.len_bytes() < before {
                torn_by_kill += 1;
            }
            (journal, entries)
        };
        let by_seq: BTreeMap<u64, &Value> = entries.iter().map(|e| (e.seq, &e.record)).collect();
        assert_eq!(by_seq.len(), entries.len(), "duplicate seqs in replay");
        assert!(
            entries.windows(2).all(|w| w[1].seq == w[0].seq + 1),
            "replayed seqs are not contiguous"
        );
        for (seq, &(r, n)) in &all_acked {
            let got = by_seq.get(seq).unwrap_or_else(|| {
                panic!("acknowledged seq {seq} (run {r}, record {n}) lost in round {run}")
            });
            assert_eq!(**got, record(r, n), "seq {seq} has the wrong content");
        }
        // Unacknowledged survivors can only be the tail of the interrupted batch.
        let last_acked = *all_acked.keys().next_back().unwrap();
        let unacked_tail = entries.iter().filter(|e| e.seq > last_acked).count();
        assert!(
            unacked_tail <= 8,
            "{unacked_tail} unacknowledged records replayed"
        );
        assert_eq!(journal.last_seq(), entries.last().map(|e| e.seq));
    }
    eprintln!(
        "journal crash test: {} acknowledged records over {ROUNDS} kills; torn tails truncated: {torn_by_kill} by a kill, {torn_by_hand} by hand; {:?}",
        all_acked.len(),
        started.elapsed()
    );
}
