//! The durable Raft log. Raft may only count a node's vote or entries once they survive a crash,
//! so every mutation is appended to checksummed segment files before it is acknowledged. Reads
//! are served from memory. One writer thread drains everything queued, writes it and fsyncs
//! once, so concurrent appends share an fsync (group commit).
//!
//! # On-disk format
//! `dir/<seq:020>.log` segments, numbered consecutively. A segment is a run of frames
//! `[u32 LE payload length][u32 LE crc32 of payload][payload: a Record]`, the record in gm's
//! binary encoding ([`codec`]: a version byte, then MessagePack). Every segment
//! starts with a `Checkpoint` holding everything replay needs besides the entries (vote,
//! committed, purge point, last log id), so the oldest segments can be deleted once a purge
//! covers every entry they hold. A segment's checkpoint must equal the state replayed from the
//! segments before it, which catches a missing or foreign segment. The newest segment's records
//! are followed by zeros the writer fills ahead of them (see [`ZERO_AHEAD`]); the first zero
//! header with nothing but zeros after it is the end of the log. Sealed segments end at their
//! last record.
//!
//! # Corruption rule
//! A batch is written and fsynced before anyone hears it is durable, so a crash can only tear
//! bytes after the last fsync: the tail of the newest segment. On open, a bad frame (short, zero
//! length or crc mismatch) in the newest segment is cut off, with a warning, only if no valid
//! frame follows it anywhere in that segment (zeros alone after the records are no bad frame).
//! Anything else fails `open` with [`LogStoreError::Corrupt`]: a bad frame followed by a valid
//! one, a bad frame in an older segment, a frame whose crc matches but whose record does not
//! decode, or a log that cannot have been written (a gap in indexes, a truncation of purged
//! entries, a missing segment). So a record that has good records after it is never dropped
//! silently. The price: should a crash persist a later page of the last, unsynced batch but not
//! an earlier one, `open` refuses rather than guess, and an operator cuts the tail by hand. A
//! record in a format version this gm does not read (the JSON of a gm from before the binary
//! encoding) fails `open` with [`LogStoreError::Format`]: the log is not corrupt, this gm cannot
//! read it.
//!
//! # Durability
//! `append` calls its callback, and `save_vote`, `truncate` and `purge` return, only after the
//! fsync that covers them. `save_committed` does not wait and asks for no fsync of its own (Raft
//! saves it on every commit, which would double the fsyncs): it is written to the file at once
//! (so a killed process keeps it; the page cache outlives the process) and made durable by the
//! next fsync; losing the latest one in a machine crash only means a restarted node re-applies
//! less at once. After a failed
//! write every later write fails too, since the file's tail is no longer known.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader};
use serde::{Deserialize, Serialize};

use super::codec::{self, CodecError};
use super::read_lease::Leadership;
use super::{Entry, LogId, StorageError, TypeConfig, Vote};
use crate::membership::NodeId;
use crate::metrics::Metrics;

/// Where the store reports fsync durations, its size on disk and the commit index, once
/// [`LogStore::report_to`] is called (`gm recover` and tests open stores that report nothing).
type Reporter = Arc<OnceLock<Arc<Metrics>>>;

/// The size past which the writer starts a new segment. Only whole segments are deleted after
/// a snapshot, so this is also how much log a purge may leave behind: kept well below the log
/// written between two snapshots (about 20 MB per `--snapshot-every-commands` 100000 joins).
pub const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

/// How far ahead of the records the active segment is filled with zeros. ext4 (like most
/// filesystems) must journal a file's new size and block allocation before `fdatasync` returns,
/// which costs a journal commit per fsync when every batch appends past the end of the file;
/// overwriting zeros already on disk needs none. With the log's fsync on every write's path,
/// appending into zeros took each fsync from about 330 to 200 µs under `gm bench --workload
/// joins` and let it commit about a tenth more joins (etcd's WAL preallocates its segments for
/// the same reason).
const ZERO_AHEAD: u64 = 1024 * 1024;

/// Length and crc, each a little-endian u32.
const FRAME_HEADER: usize = 8;

/// Why the log store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error("raft log I/O on {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("raft log {} is corrupt at byte {offset}: {reason}", file.display())]
    Corrupt { file: PathBuf, offset: u64, reason: String },
    #[error(
        "raft log {} holds a record this gm cannot read (byte {offset}): {source}; \
         a data dir of another gm version cannot be opened: start this node on an empty one",
        file.display()
    )]
    Format { file: PathBuf, offset: u64, source: CodecError },
}

/// The vote and the pointers into the log: what replay needs besides the entries, and so the
/// first record of every segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Checkpoint {
    vote: Option<Vote>,
    committed: Option<LogId>,
    purged: Option<LogId>,
    last: Option<LogId>,
}

/// One mutation of the log, as written to a segment.
#[derive(Debug, Serialize, Deserialize)]
enum Record {
    Checkpoint(Checkpoint),
    Entries(Vec<Entry>),
    /// Removes entries from `since` on; `last` is the log's last id afterwards, recorded so that
    /// replay can apply it when the entry before `since` was in a segment deleted since.
    Truncate {
        since: u64,
        last: Option<LogId>,
    },
    PurgeUpTo(LogId),
    Committed(Option<LogId>),
    Vote(Vote),
}

/// A record that cannot follow the log as it stands: a caller bug at run time, corruption on
/// replay.
#[derive(Debug, thiserror::Error)]
enum Invalid {
    #[error("entry {next} does not follow the last log id {prev:?}")]
    Gap { prev: Option<LogId>, next: LogId },
    #[error("truncation since index {since} reaches the purged log id {purged}")]
    TruncatePurged { since: u64, purged: LogId },
    #[error("truncation since index {since} to last log id {last:?} does not match the log")]
    TruncateMismatch { since: u64, last: Option<LogId> },
    #[error("checkpoint in the middle of a segment")]
    MisplacedCheckpoint,
}

/// The log as readers see it. Run time and replay change it through the same `apply`, so what
/// was accepted in memory is exactly what replays from disk.
#[derive(Default)]
struct Mem {
    entries: BTreeMap<u64, Entry>,
    /// `pointers.last` is the last entry's id, or the purge point when no entry is left. While
    /// replaying it may also name an entry of a deleted segment that a later purge covers.
    pointers: Checkpoint,
    /// Entries up to this index were in segments deleted after a purge covered them, so replay
    /// may meet records that refer to them without finding them.
    floor: Option<u64>,
}

impl Mem {
    /// The id of the entry just before `index`, if the log still knows it.
    fn id_before(&self, index: u64) -> Option<LogId> {
        let before = index.checked_sub(1)?;
        let entry = self.entries.get(&before).map(|e| e.log_id);
        entry.or(self.pointers.purged.filter(|p| p.index == before))
    }

    /// Validates `record` against the log, then applies it; a rejected record changes nothing.
    fn apply(&mut self, record: Record) -> Result<(), Invalid> {
        match record {
            Record::Checkpoint(_) => return Err(Invalid::MisplacedCheckpoint),
            Record::Entries(entries) => {
                let mut prev = self.pointers.last;
                for entry in &entries {
                    if prev.is_some_and(|p| entry.log_id.index != p.index + 1) {
                        return Err(Invalid::Gap { prev, next: entry.log_id });
                    }
                    prev = Some(entry.log_id);
                }
                self.pointers.last = prev;
                self.entries.extend(entries.into_iter().map(|e| (e.log_id.index, e)));
            }
            Record::Truncate { since, last } => {
                if self.pointers.last.is_none_or(|l| since > l.index) {
                    return Ok(());
                }
                if let Some(purged) = self.pointers.purged.filter(|p| p.index >= since) {
                    return Err(Invalid::TruncatePurged { since, purged });
                }
                let known = self.id_before(since);
                let unknowable = known.is_none() && self.floor.is_some_and(|f| since <= f + 1);
                if last.map_or(0, |l| l.index + 1) != since || (known != last && !unknowable) {
                    return Err(Invalid::TruncateMismatch { since, last });
                }
                self.entries.split_off(&since);
                self.pointers.last = last;
            }
            Record::PurgeUpTo(upto) => {
                if self.pointers.purged.is_some_and(|p| p.index >= upto.index) {
                    return Ok(());
                }
                self.entries = self.entries.split_off(&upto.index.saturating_add(1));
                self.pointers.purged = Some(upto);
                if self.pointers.last.is_none_or(|last| last.index < upto.index) {
                    self.pointers.last = Some(upto);
                }
            }
            Record::Committed(committed) => self.pointers.committed = committed,
            Record::Vote(vote) => self.pointers.vote = Some(vote),
        }
        Ok(())
    }
}

/// Called by the writer once a record is on disk (or could not be written).
type Completion = Box<dyn FnOnce(io::Result<()>) + Send>;

struct Job {
    /// An encoded record; empty for an append of no entries, which only waits for durability.
    frame: Vec<u8>,
    /// The state once this record is applied: the checkpoint a segment started after it needs.
    after: Checkpoint,
    /// Told once the record is on disk; a record without one is written with the next fsync.
    done: Option<Completion>,
}

/// A durable Raft log in a directory of segment files. Clones share one log.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    fsyncs: Arc<AtomicU64>,
    reporter: Reporter,
    writer: Option<JoinHandle<()>>,
}

struct State {
    mem: Mem,
    /// `None` only while the store is being dropped.
    queue: Option<mpsc::Sender<Job>>,
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, replaying and checking every segment.
    pub fn open(dir: &Path) -> Result<LogStore, LogStoreError> {
        LogStore::open_with_segment_bytes(dir, SEGMENT_BYTES)
    }

    /// Like [`LogStore::open`], rotating segments at `segment_bytes` instead of [`SEGMENT_BYTES`].
    pub fn open_with_segment_bytes(dir: &Path, segment_bytes: u64) -> Result<LogStore, LogStoreError> {
        fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let Replayed { mem, mut segments, active_len } = replay(list_segments(dir)?)?;
        let fsyncs = Arc::new(AtomicU64::new(0));
        let (file, len, zeroed) = match segments.last() {
            Some(active) => {
                let open = || -> io::Result<(File, u64)> {
                    let mut file = OpenOptions::new().write(true).open(&active.path)?;
                    let zeroed = file.metadata()?.len();
                    file.seek(SeekFrom::Start(active_len))?;
                    Ok((file, zeroed))
                };
                let (file, zeroed) = open().map_err(|e| io_error(&active.path, e))?;
                (file, active_len, zeroed)
            }
            None => {
                let (segment, file, len) =
                    create_segment(dir, 1, mem.pointers, &fsyncs).map_err(|e| io_error(dir, e))?;
                segments.push(segment);
                (file, len, len)
            }
        };
        tracing::info!(
            dir = %dir.display(),
            entries = mem.entries.len(),
            last = ?mem.pointers.last,
            purged = ?mem.pointers.purged,
            segments = segments.len(),
            "opened raft log"
        );
        let reporter = Reporter::default();
        let writer = Writer {
            reporter: reporter.clone(),
            dir: dir.to_path_buf(),
            segments,
            file: BufWriter::new(file),
            len,
            zeroed,
            segment_bytes,
            state: mem.pointers,
            fsyncs: fsyncs.clone(),
            failed: None,
        };
        let (queue, jobs) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer.run(jobs))
            .map_err(|e| io_error(dir, e))?;
        let state = Mutex::new(State { mem, queue: Some(queue) });
        Ok(LogStore { inner: Arc::new(Inner { state, fsyncs, reporter, writer: Some(writer) }) })
    }

    /// Reports fsync durations, the log's size on disk and the commit index to `metrics` from
    /// now on (the size from the next write).
    pub fn report_to(&self, metrics: Arc<Metrics>) {
        metrics.commit_index.set(self.lock().mem.pointers.committed.map_or(0, |c| c.index) as i64);
        let _ = self.inner.reporter.set(metrics);
    }

    /// If the vote on disk is `me`'s own committed leadership (openraft then starts as that
    /// term's leader again, without a new entry): the leadership and the index of the log's last
    /// entry, which a read index of that leadership must cover.
    pub fn restored_leadership(&self, me: NodeId) -> Option<(Leadership, u64)> {
        let pointers = self.lock().mem.pointers;
        let vote = pointers.vote?;
        (vote.is_committed() && vote.leader_id.voted_for() == Some(me))
            .then(|| (vote.leader_id, pointers.last.map_or(0, |l| l.index)))
    }

    /// The id of the log's last entry (appended, maybe not yet on disk), or of the purge point
    /// when no entry is left; `None` for an empty log.
    pub fn last_log_id(&self) -> Option<LogId> {
        self.lock().mem.pointers.last
    }

    /// Whether the log holds nothing at all: no vote, no entry, nothing purged (a new data dir).
    pub fn is_blank(&self) -> bool {
        self.lock().mem.pointers == Checkpoint::default()
    }

    /// Appends `entries` and returns once they are on disk. For `raft::recover`, which rewrites
    /// the log before Raft runs; Raft itself appends through [`RaftLogStorage::append`].
    pub async fn append_durable(&self, entries: Vec<Entry>) -> io::Result<()> {
        self.submit_durable(Record::Entries(entries)).await
    }

    /// How many fsyncs the store has done since it was opened.
    pub fn fsyncs(&self) -> u64 {
        self.inner.fsyncs.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // `Mem::apply` validates before it mutates, so a panicking holder leaves it consistent.
        self.inner.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `record` to memory and queues it for the writer under one lock, so the files see
    /// records in the order readers saw them.
    fn submit(&self, record: Record, done: Option<Completion>) -> io::Result<()> {
        let frame = match &record {
            Record::Entries(entries) if entries.is_empty() => Vec::new(),
            record => encode(record)?,
        };
        let mut state = self.lock();
        state.mem.apply(record).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let job = Job { frame, after: state.mem.pointers, done };
        let queue = state.queue.as_ref().ok_or_else(writer_gone)?;
        queue.send(job).map_err(|_| writer_gone())
    }

    /// Like `submit`, returning once the record is on disk.
    async fn submit_durable(&self, record: Record) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        // A dropped receiver means the caller stopped waiting; nothing is left to tell.
        self.submit(record, Some(Box::new(move |result| drop(tx.send(result)))))?;
        rx.await.map_err(|_| writer_gone())?
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued and stop; joining it means a
        // reopen of the same directory sees every write.
        self.state.get_mut().unwrap_or_else(PoisonError::into_inner).queue = None;
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::error!("raft log writer panicked");
            }
        }
    }
}

fn writer_gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "raft log writer has stopped")
}

fn log_write_error(e: io::Error) -> StorageError {
    StorageError::from_io_error(ErrorSubject::Logs, ErrorVerb::Write, e)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        // `BTreeMap::range` panics on an inverted range; normalise to `[start, end)` first.
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.checked_add(1),
            Bound::Excluded(&e) => Some(e),
            Bound::Unbounded => None,
        };
        let state = self.lock();
        let found = match end {
            Some(end) if end <= start => return Ok(Vec::new()),
            Some(end) => state.mem.entries.range(start..end),
            None => state.mem.entries.range(start..),
        };
        Ok(found.map(|(_, entry)| entry.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let state = self.lock();
        Ok(LogState { last_purged_log_id: state.mem.pointers.purged, last_log_id: state.mem.pointers.last })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.submit_durable(Record::Vote(*vote))
            .await
            .map_err(|e| StorageError::from_io_error(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.lock().mem.pointers.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not awaited: it rides on the next fsync, and a lost commit point only means a
        // restarted node re-applies less at once.
        if let Some(metrics) = self.inner.reporter.get() {
            metrics.commit_index.set(committed.map_or(0, |c| c.index) as i64);
        }
        self.submit(Record::Committed(committed), None).map_err(log_write_error)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.lock().mem.pointers.committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let done: Completion = Box::new(move |result| callback.log_io_completed(result));
        self.submit(Record::Entries(entries.into_iter().collect()), Some(done)).map_err(log_write_error)
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let since = log_id.index;
        let last = self.lock().mem.id_before(since);
        self.submit_durable(Record::Truncate { since, last }).await.map_err(log_write_error)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.submit_durable(Record::PurgeUpTo(log_id)).await.map_err(log_write_error)
    }
}

/// A segment as the writer tracks it.
struct SegmentMeta {
    seq: u64,
    path: PathBuf,
    first: Checkpoint,
    /// Its length once sealed; the active segment's is the writer's `len`.
    bytes: u64,
}

/// The only code that writes segments; runs on its own thread, owned by the store.
struct Writer {
    dir: PathBuf,
    /// Oldest first; the last one is being appended to.
    segments: Vec<SegmentMeta>,
    file: BufWriter<File>,
    len: u64,
    /// The active segment's length on disk: the records up to `len`, then zeros.
    zeroed: u64,
    segment_bytes: u64,
    /// The state after the last record written.
    state: Checkpoint,
    fsyncs: Arc<AtomicU64>,
    reporter: Reporter,
    /// After a failed write the file's tail is unknown; appending more could put good records
    /// after a torn one, so every later write fails too.
    failed: Option<(io::ErrorKind, String)>,
}

impl Writer {
    fn run(mut self, jobs: mpsc::Receiver<Job>) {
        while let Ok(first) = jobs.recv() {
            let mut batch = vec![first];
            batch.extend(jobs.try_iter());
            let result = self.write_batch(&batch);
            for done in batch.into_iter().filter_map(|job| job.done) {
                done(result.as_ref().map(|_| ()).map_err(|e| io::Error::new(e.kind(), e.to_string())));
            }
        }
    }

    fn write_batch(&mut self, batch: &[Job]) -> io::Result<()> {
        if let Some((kind, message)) = &self.failed {
            return Err(io::Error::new(*kind, format!("an earlier raft log write failed: {message}")));
        }
        let result = self.write_and_sync(batch);
        if let Err(e) = &result {
            tracing::error!(error = %e, records = batch.len(), "raft log write failed; failing every later write");
            self.failed = Some((e.kind(), e.to_string()));
        }
        result
    }

    /// Writes the batch's records, and fsyncs if any of them waits for it. A batch that needs no
    /// fsync (the committed index alone) still leaves the process's buffer: a node killed
    /// (`kill -9`) must not restart with a committed index far behind the one it acted on, since a
    /// leader restored from its own vote answers read-index rounds from it.
    fn write_and_sync(&mut self, batch: &[Job]) -> io::Result<()> {
        let mut waited_for = false;
        for job in batch {
            if !job.frame.is_empty() {
                if self.len >= self.segment_bytes {
                    self.rotate()?;
                }
                self.zero_ahead(self.len + job.frame.len() as u64)?;
                self.file.write_all(&job.frame)?;
                self.len += job.frame.len() as u64;
                waited_for |= job.done.is_some();
            }
            self.state = job.after;
        }
        if waited_for {
            self.sync()?;
            self.delete_purged_segments();
            if let Some(metrics) = self.reporter.get() {
                let sealed: u64 = self.segments.iter().rev().skip(1).map(|s| s.bytes).sum();
                metrics.log_size.set((sealed + self.len) as i64);
            }
        } else {
            self.file.flush()?;
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        let start = Instant::now();
        self.file.flush()?;
        self.file.get_ref().sync_data()?;
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        if let Some(metrics) = self.reporter.get() {
            metrics.log_fsync_duration.observe(start.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// Makes sure the active segment holds zeros up to `end` at least, [`ZERO_AHEAD`] at a time,
    /// written beyond the records (and beyond what the buffer holds for them), so the next
    /// fsync makes the new length durable once for a whole run of batches.
    fn zero_ahead(&mut self, end: u64) -> io::Result<()> {
        if end <= self.zeroed {
            return Ok(());
        }
        let to = end + ZERO_AHEAD;
        let zeros = vec![0u8; usize::try_from(to - self.zeroed).unwrap_or(usize::MAX)];
        self.file.get_ref().write_all_at(&zeros, self.zeroed)?;
        self.zeroed = to;
        Ok(())
    }

    /// Seals the active segment and starts the next one with a checkpoint of the state so far.
    /// The sealed segment is cut to its records: only the newest segment ends in zeros.
    fn rotate(&mut self) -> io::Result<()> {
        self.sync()?;
        self.file.get_ref().set_len(self.len)?;
        self.file.get_ref().sync_all()?;
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        let seq = self.segments.last().map_or(1, |s| s.seq + 1);
        let (segment, file, len) = create_segment(&self.dir, seq, self.state, &self.fsyncs)?;
        tracing::debug!(segment = seq, "started raft log segment");
        if let Some(sealed) = self.segments.last_mut() {
            sealed.bytes = self.len;
        }
        self.segments.push(segment);
        self.file = BufWriter::new(file);
        self.len = len;
        self.zeroed = len;
        Ok(())
    }

    /// Deletes the oldest segments while every entry they hold is purged: a segment is done
    /// with once the next one starts at a last log id the purge point covers, because that
    /// checkpoint carries the rest of its state. Called only after an fsync, so the purge that
    /// allows it is on disk.
    fn delete_purged_segments(&mut self) {
        let purged = self.state.purged.map(|p| p.index);
        while self.segments.len() >= 2 && self.segments[1].first.last.map(|l| l.index) <= purged {
            let oldest = &self.segments[0];
            // One at a time, each unlink made durable, so a crash never leaves a gap behind.
            if let Err(e) = fs::remove_file(&oldest.path).and_then(|()| sync_dir(&self.dir, &self.fsyncs)) {
                tracing::warn!(segment = oldest.seq, error = %e, "could not delete purged raft log segment");
                return;
            }
            tracing::info!(segment = oldest.seq, purged = ?self.state.purged, "deleted purged raft log segment");
            self.segments.remove(0);
        }
    }
}

fn io_error(path: &Path, source: io::Error) -> LogStoreError {
    LogStoreError::Io { path: path.to_path_buf(), source }
}

fn corrupt(file: &Path, offset: u64, reason: impl Into<String>) -> LogStoreError {
    LogStoreError::Corrupt { file: file.to_path_buf(), offset, reason: reason.into() }
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.log"))
}

fn sync_dir(dir: &Path, fsyncs: &AtomicU64) -> io::Result<()> {
    File::open(dir)?.sync_all()?;
    fsyncs.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Creates segment `seq` holding only `first`, durable (file and directory entry) on return.
fn create_segment(dir: &Path, seq: u64, first: Checkpoint, fsyncs: &AtomicU64) -> io::Result<(SegmentMeta, File, u64)> {
    let path = segment_path(dir, seq);
    // Not in append mode: the writer fills zeros ahead of its records at their offsets.
    let mut file = OpenOptions::new().create_new(true).write(true).open(&path)?;
    let frame = encode(&Record::Checkpoint(first))?;
    file.write_all(&frame)?;
    file.sync_data()?;
    fsyncs.fetch_add(1, Ordering::Relaxed);
    sync_dir(dir, fsyncs)?;
    let len = frame.len() as u64;
    Ok((SegmentMeta { seq, path, first, bytes: len }, file, len))
}

/// `record` as a frame, encoded straight after room for its header, which is filled in after.
fn encode(record: &Record) -> io::Result<Vec<u8>> {
    let mut frame = Vec::with_capacity(256);
    frame.resize(FRAME_HEADER, 0);
    codec::encode_into(&mut frame, record).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let payload = &frame[FRAME_HEADER..];
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "raft log record larger than 4 GiB"))?;
    let crc = crc32fast::hash(payload);
    frame[..4].copy_from_slice(&len.to_le_bytes());
    frame[4..FRAME_HEADER].copy_from_slice(&crc.to_le_bytes());
    Ok(frame)
}

/// The payload of the frame starting at `pos`, or why there is no valid frame there.
fn frame_at(bytes: &[u8], pos: usize) -> Result<&[u8], &'static str> {
    let header = bytes.get(pos..pos + FRAME_HEADER).ok_or("incomplete frame header")?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 {
        return Err("zero-length frame");
    }
    let start = pos + FRAME_HEADER;
    let payload = bytes.get(start..start + len).ok_or("frame runs past the end of the file")?;
    if crc32fast::hash(payload) != crc {
        return Err("checksum mismatch");
    }
    Ok(payload)
}

/// The segments in `dir`, in order; a gap in their numbers means one is missing.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogStoreError> {
    let mut found = Vec::new();
    for dir_entry in fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let path = dir_entry.map_err(|e| io_error(dir, e))?.path();
        let seq = match path.extension() {
            Some(ext) if ext == "log" => path.file_stem().and_then(|s| s.to_str()?.parse::<u64>().ok()),
            _ => None,
        };
        if let Some(seq) = seq {
            found.push((seq, path));
        }
    }
    found.sort();
    if let Some(pair) = found.windows(2).find(|pair| pair[1].0 != pair[0].0 + 1) {
        return Err(corrupt(&pair[1].1, 0, format!("segment {} is missing", pair[0].0 + 1)));
    }
    Ok(found)
}

/// Reads one segment's records with their offsets, and the length of its good prefix. A torn
/// tail of the newest segment is cut off the file (see the module doc for the rule).
fn read_segment(path: &Path, newest: bool) -> Result<(Vec<(u64, Record)>, u64), LogStoreError> {
    let bytes = fs::read(path).map_err(|e| io_error(path, e))?;
    let mut records = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let offset = pos as u64;
        match frame_at(&bytes, pos) {
            Ok(payload) => {
                let record = codec::decode(payload).map_err(|e| match e {
                    e @ CodecError::UnknownVersion { .. } => {
                        LogStoreError::Format { file: path.to_path_buf(), offset, source: e }
                    }
                    e => corrupt(path, offset, format!("record passes its checksum but does not decode: {e}")),
                })?;
                records.push((offset, record));
                pos += FRAME_HEADER + payload.len();
            }
            Err(reason) if !newest => {
                return Err(corrupt(path, offset, format!("{reason} in a sealed segment")));
            }
            // The zeros the writer fills ahead of its records: the end of the log.
            Err(_) if bytes[pos..].iter().all(|&b| b == 0) => break,
            Err(reason) if (pos + 1..bytes.len()).any(|p| frame_at(&bytes, p).is_ok()) => {
                return Err(corrupt(path, offset, format!("{reason}, and valid records follow it")));
            }
            Err(reason) => {
                let dropped_bytes = bytes.len() - pos;
                tracing::warn!(file = %path.display(), offset, dropped_bytes, reason, "cutting torn tail off the raft log");
                let file = OpenOptions::new().write(true).open(path).map_err(|e| io_error(path, e))?;
                file.set_len(offset).and_then(|()| file.sync_all()).map_err(|e| io_error(path, e))?;
                break;
            }
        }
    }
    Ok((records, pos as u64))
}

struct Replayed {
    mem: Mem,
    segments: Vec<SegmentMeta>,
    /// The length of the newest segment, which the writer appends to.
    active_len: u64,
}

fn replay(found: Vec<(u64, PathBuf)>) -> Result<Replayed, LogStoreError> {
    let mut mem = Mem::default();
    let mut segments: Vec<SegmentMeta> = Vec::new();
    let mut active_len = 0;
    let count = found.len();
    for (i, (seq, path)) in found.into_iter().enumerate() {
        let newest = i + 1 == count;
        let (records, len) = read_segment(&path, newest)?;
        let mut records = records.into_iter();
        let first = match records.next() {
            Some((_, Record::Checkpoint(cp))) => cp,
            Some((offset, _)) => return Err(corrupt(&path, offset, "segment does not start with a checkpoint")),
            // A crash while starting the newest segment leaves it empty; the previous segment
            // (or, for the very first one, nothing) still holds everything.
            None if newest && (seq == 1 || !segments.is_empty()) => {
                tracing::warn!(file = %path.display(), "removing empty raft log segment");
                fs::remove_file(&path).map_err(|e| io_error(&path, e))?;
                continue;
            }
            None => return Err(corrupt(&path, 0, "segment holds no records")),
        };
        if segments.is_empty() {
            mem.pointers = first;
            mem.floor = first.last.map(|l| l.index);
        } else if mem.pointers != first {
            let reason = format!(
                "checkpoint {first:?} does not continue the previous segment, which ends at {:?}",
                mem.pointers
            );
            return Err(corrupt(&path, 0, reason));
        }
        for (offset, record) in records {
            mem.apply(record).map_err(|e| corrupt(&path, offset, e.to_string()))?;
        }
        segments.push(SegmentMeta { seq, path, first, bytes: len });
        active_len = len;
    }
    // Entries older than the oldest segment are gone from disk, so a purge must cover them.
    let purged = mem.pointers.purged;
    if let Some(oldest) = segments.first().filter(|_| mem.floor > purged.map(|p| p.index)) {
        let reason = format!(
            "entries up to index {:?} were in segments that are gone, but the log is purged only up to {purged:?}",
            mem.floor
        );
        return Err(corrupt(&oldest.path, 0, reason));
    }
    Ok(Replayed { mem, segments, active_len })
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::membership::Command;
    use crate::raft::Batch;

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn entry(term: u64, index: u64) -> Entry {
        let cluster_id = format!("cluster-{index}");
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Normal(Batch(vec![Command::InitCluster { cluster_id }].into())),
        }
    }

    /// Appends each index as its own record and waits until all are on disk.
    async fn append(store: &LogStore, term: u64, indexes: std::ops::Range<u64>) {
        for index in indexes {
            store.submit_durable(Record::Entries(vec![entry(term, index)])).await.expect("append");
        }
    }

    async fn read_all(store: &LogStore) -> Vec<LogId> {
        let entries = store.clone().try_get_log_entries(..).await.expect("read");
        entries.into_iter().map(|e| e.log_id).collect()
    }

    async fn log_state(store: &LogStore) -> (Option<LogId>, Option<LogId>) {
        let state = store.clone().get_log_state().await.expect("log state");
        (state.last_purged_log_id, state.last_log_id)
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        list_segments(dir).expect("list segments").into_iter().map(|(_, path)| path).collect()
    }

    /// A log of entries 0 to 4 in `dir`, closed: its one segment.
    async fn closed_log_of_five(dir: &Path) -> PathBuf {
        let store = LogStore::open(dir).expect("open");
        append(&store, 1, 0..5).await;
        drop(store);
        segment_files(dir).remove(0)
    }

    /// Where the records of a segment end: its length without the zeros filled ahead of them.
    fn records_end(path: &Path) -> u64 {
        let bytes = fs::read(path).expect("read segment");
        let mut pos = 0;
        while let Ok(payload) = frame_at(&bytes, pos) {
            pos += FRAME_HEADER + payload.len();
        }
        pos as u64
    }

    fn flip_byte(path: &Path, offset: u64) {
        let mut bytes = fs::read(path).expect("read segment");
        bytes[offset as usize] ^= 0x40;
        fs::write(path, bytes).expect("write segment");
    }

    fn expect_corrupt(dir: &Path) -> String {
        match LogStore::open(dir) {
            Err(e @ LogStoreError::Corrupt { .. }) => e.to_string(),
            Err(e) => panic!("expected corruption, got {e}"),
            Ok(_) => panic!("expected corruption, but the log opened"),
        }
    }

    #[tokio::test]
    async fn append_then_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LogStore::open(dir.path()).expect("open");
        append(&store, 1, 0..5).await;
        assert_eq!(read_all(&store).await, (0..5).map(|i| log_id(1, i)).collect::<Vec<_>>());
        let middle = store.clone().try_get_log_entries(1..3).await.expect("read");
        assert_eq!(middle.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), vec![1, 2]);
        assert!(store
            .clone()
            .try_get_log_entries((Bound::Included(3), Bound::Excluded(1)))
            .await
            .expect("read")
            .is_empty());
        assert_eq!(log_state(&store).await, (None, Some(log_id(1, 4))));
    }

    #[tokio::test]
    async fn append_with_a_gap_is_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LogStore::open(dir.path()).expect("open");
        append(&store, 1, 0..3).await;
        let err = store.submit(Record::Entries(vec![entry(1, 5)]), None).expect_err("gap");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(log_state(&store).await, (None, Some(log_id(1, 2))));
    }

    #[tokio::test]
    async fn reopen_restores_entries_vote_committed_and_purge_point() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LogStore::open(dir.path()).expect("open");
        append(&store, 1, 0..6).await;
        let mut handle = store.clone();
        handle.save_vote(&Vote::new(3, 2)).await.expect("vote");
        handle.save_committed(Some(log_id(1, 4))).await.expect("committed");
        handle.purge(log_id(1, 1)).await.expect("purge");
        drop((store, handle));

        let mut store = LogStore::open(dir.path()).expect("reopen");
        assert_eq!(store.read_vote().await.expect("vote"), Some(Vote::new(3, 2)));
        assert_eq!(store.read_committed().await.expect("committed"), Some(log_id(1, 4)));
        assert_eq!(log_state(&store).await, (Some(log_id(1, 1)), Some(log_id(1, 5))));
        assert_eq!(read_all(&store).await, (2..6).map(|i| log_id(1, i)).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_committed_vote_of_its_own_is_a_leadership_restored_with_the_last_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = LogStore::open(dir.path()).expect("open");
        append(&store, 3, 0..6).await;
        assert_eq!(store.restored_leadership(2), None, "no vote");
        store.save_vote(&Vote::new(3, 2)).await.expect("vote");
        assert_eq!(store.restored_leadership(2), None, "a candidate's vote, not committed");
        store.save_vote(&Vote::new_committed(3, 2)).await.expect("vote");
        assert_eq!(store.restored_leadership(1), None, "node 2's leadership, not node 1's");
        drop(store);
        let store = LogStore::open(dir.path()).expect("reopen");
        assert_eq!(store.restored_leadership(2), Some((openraft::LeaderId::new(3, 2), 5)));
    }

    #[tokio::test]
    async fn truncate_then_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LogStore::open(dir.path()).expect("open");
        append(&store, 1, 0..6).await;
        store.clone().truncate(log_id(1, 3)).await.expect("truncate");
        assert_eq!(log_state(&store).await, (None, Some(log_id(1, 2))));
        append(&store, 2, 3..4).await;
        drop(store);

        let store = LogStore::open(dir.path()).expect("reopen");
        let want = vec![log_id(1, 0), log_id(1, 1), log_id(1, 2), log_id(2, 3)];
        assert_eq!(read_all(&store).await, want);
    }

    #[tokio::test]
    async fn purge_deletes_old_segments_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        // One byte: every record after a segment's checkpoint starts a new segment.
        let store = LogStore::open_with_segment_bytes(dir.path(), 1).expect("open");
        append(&store, 1, 0..10).await;
        // One segment per entry; the first, checkpoint-only one held nothing live and is gone.
        assert_eq!(segment_files(dir.path()).len(), 10);
        store.clone().purge(log_id(1, 5)).await.expect("purge");
        // The segments holding entries 0..=5 are gone; those holding 6..=9 and the purge remain.
        assert_eq!(segment_files(dir.path()).len(), 5);
        drop(store);

        let store = LogStore::open_with_segment_bytes(dir.path(), 1).expect("reopen");
        assert_eq!(log_state(&store).await, (Some(log_id(1, 5)), Some(log_id(1, 9))));
        assert_eq!(read_all(&store).await, (6..10).map(|i| log_id(1, i)).collect::<Vec<_>>());
        append(&store, 1, 10..11).await;
        assert_eq!(log_state(&store).await.1, Some(log_id(1, 10)));
    }

    #[tokio::test]
    async fn truncation_into_a_deleted_segment_replays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LogStore::open_with_segment_bytes(dir.path(), 1).expect("open");
        append(&store, 1, 0..5).await;
        drop(store);
        // One big segment from here on: it starts at entry 3 and then truncates back to 2.
        let store = LogStore::open(dir.path()).expect("reopen");
        store.clone().truncate(log_id(1, 2)).await.expect("truncate");
        append(&store, 2, 2..6).await;
        drop(store);
        // The purge deletes every segment before that one; entry 1 is then on disk nowhere.
        let store = LogStore::open_with_segment_bytes(dir.path(), 1).expect("reopen");
        store.clone().purge(log_id(2, 3)).await.expect("purge");
        assert_eq!(segment_files(dir.path()).len(), 2);
        drop(store);

        let store = LogStore::open(dir.path()).expect("reopen after purge");
        assert_eq!(log_state(&store).await, (Some(log_id(2, 3)), Some(log_id(2, 5))));
        assert_eq!(read_all(&store).await, vec![log_id(2, 4), log_id(2, 5)]);
    }

    #[tokio::test]
    async fn missing_segment_fails_open() {
        for (lost, complaint) in [(2, "segment 4 is missing"), (0, "segments that are gone")] {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = LogStore::open_with_segment_bytes(dir.path(), 1).expect("open");
            append(&store, 1, 0..4).await;
            drop(store);
            fs::remove_file(&segment_files(dir.path())[lost]).expect("remove segment");
            let error = expect_corrupt(dir.path());
            assert!(error.contains(complaint), "{error}");
        }
    }

    #[tokio::test]
    async fn torn_tail_is_cut_and_the_good_prefix_reopens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let segment = &closed_log_of_five(dir.path()).await;
        let file = OpenOptions::new().write(true).open(segment).expect("open segment");
        file.set_len(records_end(segment) - 3).expect("chop");
        drop(file);

        let store = LogStore::open(dir.path()).expect("reopen");
        assert_eq!(read_all(&store).await, (0..4).map(|i| log_id(1, i)).collect::<Vec<_>>());
        append(&store, 1, 4..6).await;
        drop(store);
        let store = LogStore::open(dir.path()).expect("reopen after repair");
        assert_eq!(log_state(&store).await.1, Some(log_id(1, 5)));
    }

    #[tokio::test]
    async fn garbage_tail_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let segment = &closed_log_of_five(dir.path()).await;
        let good_len = records_end(segment);
        // After the zeros filled ahead of the records: whatever follows them is no clean end.
        let mut file = OpenOptions::new().append(true).open(segment).expect("open segment");
        file.write_all(b"\x10\x00\x00\x00\xde\xad\xbe\xefnot a record").expect("garbage");
        drop(file);

        let store = LogStore::open(dir.path()).expect("reopen");
        assert_eq!(read_all(&store).await, (0..5).map(|i| log_id(1, i)).collect::<Vec<_>>());
        assert_eq!(fs::metadata(segment).expect("stat").len(), good_len);
    }

    #[tokio::test]
    async fn flipped_byte_followed_by_good_records_fails_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LogStore::open(dir.path()).expect("open");
        append(&store, 1, 0..6).await;
        drop(store);
        let segment = &segment_files(dir.path())[0];
        flip_byte(segment, records_end(segment) / 2);
        assert!(expect_corrupt(dir.path()).contains("valid records follow"));
    }

    #[tokio::test]
    async fn flipped_byte_in_a_sealed_segment_fails_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LogStore::open_with_segment_bytes(dir.path(), 1).expect("open");
        append(&store, 1, 0..4).await;
        drop(store);
        // The last byte of an older segment: a tail, but not of the newest segment.
        let sealed = &segment_files(dir.path())[1];
        flip_byte(sealed, fs::metadata(sealed).expect("stat").len() - 1);
        assert!(expect_corrupt(dir.path()).contains("sealed segment"));
    }

    #[tokio::test]
    async fn committed_rides_on_the_next_fsync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = LogStore::open(dir.path()).expect("open");
        append(&store, 1, 0..3).await;
        let before = store.fsyncs();
        for index in 0..3 {
            store.save_committed(Some(log_id(1, index))).await.expect("committed");
        }
        append(&store, 1, 3..4).await;
        assert_eq!(store.fsyncs() - before, 1, "three commits and an append share one fsync");
        drop(store);
        let mut store = LogStore::open(dir.path()).expect("reopen");
        assert_eq!(store.read_committed().await.expect("committed"), Some(log_id(1, 2)));
    }

    #[test]
    fn a_log_of_an_older_format_is_refused_as_such() {
        // A segment as a gm from before the binary encoding wrote it: a checkpoint as JSON.
        let dir = tempfile::tempdir().expect("tempdir");
        let json = serde_json::to_vec(&Record::Checkpoint(Checkpoint::default())).expect("json");
        let mut frame = (json.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&crc32fast::hash(&json).to_le_bytes());
        frame.extend_from_slice(&json);
        fs::write(segment_path(dir.path(), 1), frame).expect("write segment");
        match LogStore::open(dir.path()) {
            Err(e @ LogStoreError::Format { .. }) => {
                let message = e.to_string();
                assert!(message.contains("JSON") && message.contains("empty one"), "{message}");
            }
            Err(e) => panic!("expected a format error, got {e}"),
            Ok(_) => panic!("expected a format error, but the log opened"),
        }
    }

    #[tokio::test]
    async fn concurrent_appends_share_fsyncs() {
        const APPENDS: u64 = 200;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LogStore::open(dir.path()).expect("open");
        let before = store.fsyncs();
        // The first completion holds the writer until every append is queued, so the count
        // below does not depend on how fast the disk is.
        let (release, gate) = mpsc::channel::<()>();
        let mut gate = Some(gate);
        let mut durable = Vec::new();
        for index in 0..APPENDS {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let gate = gate.take();
            let done: Completion = Box::new(move |result| {
                if let Some(gate) = gate {
                    // Released or abandoned by the test: either way, carry on.
                    let _ = gate.recv();
                }
                drop(tx.send(result));
            });
            store.submit(Record::Entries(vec![entry(1, index)]), Some(done)).expect("queue append");
            durable.push(rx);
        }
        release.send(()).expect("release writer");
        for rx in durable {
            rx.await.expect("completion").expect("durable");
        }
        let fsyncs = store.fsyncs() - before;
        assert!(fsyncs <= 2, "{APPENDS} appends took {fsyncs} fsyncs");
        assert_eq!(log_state(&store).await.1, Some(log_id(1, APPENDS - 1)));
    }

    #[tokio::test]
    async fn records_go_into_zeros_filled_ahead_and_only_the_newest_segment_keeps_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let segment = &closed_log_of_five(dir.path()).await;
        let (end, len) = (records_end(segment), fs::metadata(segment).expect("stat").len());
        assert!(len > end && len >= ZERO_AHEAD, "records end at {end}, the file at {len}");
        assert!(fs::read(segment).expect("read")[end as usize..].iter().all(|&b| b == 0));

        // The zeros are the end of the log, not a torn tail: nothing is cut, and appends go on
        // where the records end.
        let store = LogStore::open(dir.path()).expect("reopen");
        assert_eq!(fs::metadata(segment).expect("stat").len(), len);
        append(&store, 1, 5..8).await;
        drop(store);
        let store = LogStore::open(dir.path()).expect("reopen again");
        assert_eq!(read_all(&store).await, (0..8).map(|i| log_id(1, i)).collect::<Vec<_>>());
        drop(store);

        // A full segment is sealed at its last record when the next one starts.
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LogStore::open_with_segment_bytes(dir.path(), 1).expect("open");
        append(&store, 1, 0..3).await;
        drop(store);
        let files = segment_files(dir.path());
        let (sealed, newest) = files.split_at(files.len() - 1);
        for segment in sealed {
            assert_eq!(fs::metadata(segment).expect("stat").len(), records_end(segment), "{}", segment.display());
        }
        assert!(fs::metadata(&newest[0]).expect("stat").len() > records_end(&newest[0]));
        let store = LogStore::open_with_segment_bytes(dir.path(), 1).expect("reopen");
        assert_eq!(read_all(&store).await, (0..3).map(|i| log_id(1, i)).collect::<Vec<_>>());
    }
}
