//! The Raft state machine: applies committed entries to the pure membership state, keeps the
//! latest snapshot on disk, and tells readers (linearizable reads, blocking queries, watches) when
//! the state moves on.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, StorageIOError};
use tokio::sync::{broadcast, mpsc, watch};

use super::{Applied, Batch, Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::membership::{Command, GroupName, GroupView, MemberId, MembershipState, Outcome};
use crate::metrics::Metrics;

const SNAPSHOT_FILE: &str = "snapshot.json";
/// Views a slow watcher may fall behind by before it skips ahead to the current one.
const WATCH_BACKLOG: usize = 256;

/// The applied state and what Raft needs to know about it.
#[derive(Default)]
pub struct Machine {
    pub state: MembershipState,
    pub last_applied: Option<LogId>,
    pub last_membership: StoredMembership,
}

/// What an applied change touched, for the tasks that keep books of their own about members
/// (the lease keeper, the prober): they follow the changes instead of scanning every member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// This member joined, re-joined or left.
    Member(GroupName, MemberId),
    /// The probers changed: any probe-mode member's responsible node may have moved.
    Probers,
    /// The whole state was replaced by an installed snapshot.
    Everything,
}

/// The state shared by the state machine (writer) and every reader on this node.
#[derive(Clone)]
pub struct StateHandle {
    inner: Arc<Shared>,
}

struct Shared {
    machine: RwLock<Machine>,
    /// The log index applied last, after each applied batch of entries.
    applied: watch::Sender<u64>,
    /// The state's revision, readable without the lock.
    revision: AtomicU64,
    /// Per-group streams of views, only for groups someone watches.
    watchers: Mutex<HashMap<GroupName, broadcast::Sender<Arc<GroupView>>>>,
    /// The followers of [`Change`]s; one whose receiver is gone is dropped at the next change.
    changes: Mutex<Vec<mpsc::UnboundedSender<Change>>>,
    /// Commands applied since this process started, and that count when the latest snapshot
    /// was taken: what the snapshot trigger watches, whatever the number of commands per entry.
    commands: AtomicU64,
    snapshot_commands: AtomicU64,
}

impl StateHandle {
    fn new(machine: Machine) -> Self {
        let (applied, _) = watch::channel(machine.last_applied.map_or(0, |id| id.index));
        let revision = AtomicU64::new(machine.state.revision());
        let inner = Shared {
            machine: RwLock::new(machine),
            applied,
            revision,
            watchers: Mutex::default(),
            changes: Mutex::default(),
            commands: AtomicU64::new(0),
            snapshot_commands: AtomicU64::new(0),
        };
        StateHandle { inner: Arc::new(inner) }
    }

    /// A read lock on the applied state. Hold it briefly: the state machine waits for it.
    pub fn read(&self) -> RwLockReadGuard<'_, Machine> {
        self.inner.machine.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The revision of the applied state.
    pub fn revision(&self) -> u64 {
        self.inner.revision.load(Ordering::Acquire)
    }

    /// Waits until the log is applied up to `index`; false if `timeout` passes first.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> bool {
        let mut rx = self.inner.applied.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|&i| i >= index)).await.is_ok_and(|r| r.is_ok())
    }

    /// A receiver that wakes whenever entries are applied.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.inner.applied.subscribe()
    }

    /// Follows the changes applied from now on. Subscribe before reading the state, so that no
    /// change falls between the read and the first one received.
    pub fn changes(&self) -> mpsc::UnboundedReceiver<Change> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.inner.changes.lock().unwrap_or_else(|e| e.into_inner()).push(tx);
        rx
    }

    /// Commands applied since the latest snapshot this process built (or since it started).
    pub fn commands_since_snapshot(&self) -> u64 {
        let now = self.inner.commands.load(Ordering::Acquire);
        now.saturating_sub(self.inner.snapshot_commands.load(Ordering::Acquire))
    }

    fn notify(&self, change: Change) {
        let mut followers = self.inner.changes.lock().unwrap_or_else(|e| e.into_inner());
        if followers.is_empty() {
            return;
        }
        followers.retain(|tx| tx.send(change.clone()).is_ok());
    }

    /// Subscribes to the views of `group`, one per change, from now on.
    pub fn watch(&self, group: &GroupName) -> broadcast::Receiver<Arc<GroupView>> {
        let mut watchers = self.inner.watchers.lock().unwrap_or_else(|e| e.into_inner());
        watchers.retain(|_, tx| tx.receiver_count() > 0);
        watchers.entry(group.clone()).or_insert_with(|| broadcast::channel(WATCH_BACKLOG).0).subscribe()
    }

    /// The view of `group` in `state`; a group without members is an empty view at `revision`.
    pub fn view_or_empty(state: &MembershipState, group: &GroupName, revision: u64) -> GroupView {
        state.view(group).unwrap_or_else(|| GroupView { group: group.clone(), revision, members: Vec::new() })
    }

    /// Applies one command to `state` and tells the watchers of what it changed.
    fn apply(&self, state: &mut MembershipState, command: &Command) -> Applied {
        let before = state.revision();
        let outcome = state.apply(command);
        let revision = state.revision();
        self.inner.commands.fetch_add(1, Ordering::AcqRel);
        let changed = match (command, &outcome) {
            (Command::Join { group, id, .. }, Outcome::Joined { changed: true, .. })
            | (Command::Leave { group, id, .. }, Outcome::Left { .. }) => {
                self.notify(Change::Member(group.clone(), id.clone()));
                Some(std::slice::from_ref(group))
            }
            // A new set of probers may move members of any group.
            (Command::SetProbers { .. }, _) if revision != before => {
                self.notify(Change::Probers);
                None
            }
            _ => Some(&[][..]),
        };
        self.publish(state, changed, revision);
        Applied { revision, outcome }
    }

    /// Sends the current view to the watchers of each group in `groups` (all watched groups if None).
    fn publish(&self, state: &MembershipState, groups: Option<&[GroupName]>, revision: u64) {
        let watchers = self.inner.watchers.lock().unwrap_or_else(|e| e.into_inner());
        if watchers.is_empty() {
            return;
        }
        let mut send = |group: &GroupName| {
            if let Some(tx) = watchers.get(group).filter(|tx| tx.receiver_count() > 0) {
                let _ = tx.send(Arc::new(Self::view_or_empty(state, group, revision)));
            }
        };
        match groups {
            Some(groups) => groups.iter().for_each(&mut send),
            None => watchers.keys().for_each(send),
        }
    }
}

/// The state machine half of openraft's storage: owns the snapshot directory.
pub struct StateMachineStore {
    handle: StateHandle,
    dir: PathBuf,
    metrics: Option<Arc<Metrics>>,
}

impl StateMachineStore {
    /// Opens the state machine in `dir`, starting from the latest snapshot there, if any.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let machine = match read_snapshot(dir)? {
            Some((meta, data)) => Machine {
                state: serde_json::from_slice(&data).map_err(io::Error::other)?,
                last_applied: meta.last_log_id,
                last_membership: meta.last_membership,
            },
            None => Machine::default(),
        };
        Ok(StateMachineStore { handle: StateHandle::new(machine), dir: dir.to_owned(), metrics: None })
    }

    /// The store, counting, sizing and timing the snapshots it builds or installs in `metrics`.
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> Self {
        if let Ok(found) = std::fs::metadata(self.dir.join(SNAPSHOT_FILE)) {
            metrics.snapshot_size.set(found.len() as i64);
        }
        StateMachineStore { metrics: Some(metrics), ..self }
    }

    pub fn handle(&self) -> StateHandle {
        self.handle.clone()
    }
}

fn snapshot_error(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(ErrorSubject::Snapshot(None), verb, openraft::AnyError::new(&e)).into()
}

/// The snapshot file is the meta as one JSON line, then the state's JSON.
fn read_snapshot(dir: &Path) -> io::Result<Option<(SnapshotMeta, Vec<u8>)>> {
    let bytes = match std::fs::read(dir.join(SNAPSHOT_FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let split =
        bytes.iter().position(|&b| b == b'\n').ok_or_else(|| io::Error::other("snapshot file has no meta line"))?;
    let meta: SnapshotMeta = serde_json::from_slice(&bytes[..split]).map_err(io::Error::other)?;
    // The state's bytes in place, not copied: at a million members the file is hundreds of MB.
    let mut data = bytes;
    data.drain(..=split);
    Ok(Some((meta, data)))
}

/// Replaces the snapshot file atomically: a crash leaves the old one or the new one, never half.
/// `data` writes the state; returns the bytes it wrote.
fn write_snapshot(
    dir: &Path,
    meta: &SnapshotMeta,
    data: impl FnOnce(&mut dyn io::Write) -> io::Result<()>,
) -> io::Result<u64> {
    use std::io::{Seek, Write};
    let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    let mut f = io::BufWriter::new(std::fs::File::create(&tmp)?);
    serde_json::to_writer(&mut f, meta).map_err(io::Error::other)?;
    f.write_all(b"\n")?;
    let start = f.stream_position()?;
    data(&mut f)?;
    let bytes = f.stream_position()? - start;
    f.into_inner().map_err(io::IntoInnerError::into_error)?.sync_all()?;
    std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(bytes)
}

/// Builds snapshots from the shared state, off the apply path.
pub struct SnapshotBuilder {
    handle: StateHandle,
    dir: PathBuf,
    metrics: Option<Arc<Metrics>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let start = Instant::now();
        let (meta, state, commands) = {
            // Clone under the lock, serialize outside it: apply and reads wait only for the copy,
            // which shares each group's members with the live state (copied on write).
            let m = self.handle.read();
            let snapshot_id = match m.last_applied {
                Some(id) => format!("{}-{}", id.leader_id.term, id.index),
                None => "empty".to_owned(),
            };
            let meta =
                SnapshotMeta { last_log_id: m.last_applied, last_membership: m.last_membership.clone(), snapshot_id };
            (meta, m.state.clone(), self.handle.inner.commands.load(Ordering::Acquire))
        };
        // Serialized and written on a blocking thread: a large state takes a while. Streamed into
        // the file, never whole in memory.
        let (dir, meta2) = (self.dir.clone(), meta.clone());
        let bytes = tokio::task::spawn_blocking(move || {
            write_snapshot(&dir, &meta2, |f| serde_json::to_writer(f, &state).map_err(io::Error::other))
        })
        .await
        .map_err(|e| snapshot_error(ErrorVerb::Write, e))?
        .map_err(|e| snapshot_error(ErrorVerb::Write, e))?;
        self.handle.inner.snapshot_commands.fetch_max(commands, Ordering::AcqRel);
        let bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
        if let Some(metrics) = &self.metrics {
            metrics.observe_snapshot(bytes, start.elapsed());
        }
        tracing::info!(snapshot = %meta.snapshot_id, bytes, "snapshot built");
        // openraft keeps only the meta of a snapshot it asked to build; a follower that needs the
        // data gets it from `get_current_snapshot`, which reads the file.
        Ok(Snapshot { meta, snapshot: Box::default() })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let m = self.handle.read();
        Ok((m.last_applied, m.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Applied>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
    {
        let mut results = Vec::new();
        let last = {
            let mut guard = self.handle.inner.machine.write().unwrap_or_else(|e| e.into_inner());
            let m = &mut *guard;
            for entry in entries {
                m.last_applied = Some(entry.log_id);
                let applied = match entry.payload {
                    EntryPayload::Blank => Vec::new(),
                    EntryPayload::Normal(Batch(commands)) => {
                        commands.iter().map(|command| self.handle.apply(&mut m.state, command)).collect()
                    }
                    EntryPayload::Membership(membership) => {
                        // Every voter probes until the leader learns otherwise: starting from the
                        // log, every node agrees on each member's responsible node.
                        let nodes = membership.voter_ids().collect();
                        m.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                        vec![self.handle.apply(&mut m.state, &Command::SetProbers { nodes })]
                    }
                };
                results.push(applied);
            }
            self.handle.inner.revision.store(m.state.revision(), Ordering::Release);
            m.last_applied.map_or(0, |id| id.index)
        };
        self.handle.inner.applied.send_replace(last);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder { handle: self.handle.clone(), dir: self.dir.clone(), metrics: self.metrics.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Vec<u8>>, StorageError> {
        Ok(Box::default())
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Box<Vec<u8>>) -> Result<(), StorageError> {
        let start = Instant::now();
        let bytes = snapshot.len();
        let state: MembershipState =
            serde_json::from_slice(&snapshot).map_err(|e| snapshot_error(ErrorVerb::Read, e))?;
        let (dir, meta2) = (self.dir.clone(), meta.clone());
        tokio::task::spawn_blocking(move || write_snapshot(&dir, &meta2, |f| f.write_all(&snapshot)))
            .await
            .map_err(|e| snapshot_error(ErrorVerb::Write, e))?
            .map_err(|e| snapshot_error(ErrorVerb::Write, e))?;
        {
            let mut m = self.handle.inner.machine.write().unwrap_or_else(|e| e.into_inner());
            *m = Machine { state, last_applied: meta.last_log_id, last_membership: meta.last_membership.clone() };
            self.handle.publish(&m.state, None, m.state.revision());
            self.handle.inner.revision.store(m.state.revision(), Ordering::Release);
            self.handle.notify(Change::Everything);
        }
        let applied = self.handle.inner.commands.load(Ordering::Acquire);
        self.handle.inner.snapshot_commands.store(applied, Ordering::Release);
        self.handle.inner.applied.send_replace(meta.last_log_id.map_or(0, |id| id.index));
        if let Some(metrics) = &self.metrics {
            metrics.observe_snapshot(bytes, start.elapsed());
        }
        tracing::info!(snapshot = %meta.snapshot_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let dir = self.dir.clone();
        let found = tokio::task::spawn_blocking(move || read_snapshot(&dir))
            .await
            .map_err(|e| snapshot_error(ErrorVerb::Read, e))?
            .map_err(|e| snapshot_error(ErrorVerb::Read, e))?;
        Ok(found.map(|(meta, data)| Snapshot { meta, snapshot: Box::new(data) }))
    }
}
