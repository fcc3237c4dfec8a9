//! The Raft state machine: applies committed entries to the pure membership state, keeps the
//! latest snapshot on disk, and tells readers (linearizable reads, blocking queries, watches) when
//! the state moves on.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, StorageIOError};
use tokio::sync::{mpsc, watch};

use super::{codec, snapshot_file};
use super::{Applied, Batch, Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::membership::{Command, Member, MembershipState, Outcome};
use crate::metrics::Metrics;
use crate::views::Views;

/// The applied state and what Raft needs to know about it.
#[derive(Default)]
pub struct Machine {
    pub state: MembershipState,
    pub last_applied: Option<LogId>,
    pub last_membership: StoredMembership,
}

/// What an applied change touched, for the tasks that keep books of their own about members
/// (the lease keeper, the prober): they follow the changes instead of scanning every member.
/// A member's change carries its record (shared with the state, not copied), so a follower that
/// takes the changes in order ends where the state is without looking anything up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A member joined or re-joined: its record as the state now holds it.
    Joined(Arc<Member>),
    /// A member left or was removed: its record as it was.
    Left(Arc<Member>),
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
    /// The encoded views and the watch streams of groups, told of every change.
    views: Views,
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
            views: Views::default(),
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

    /// The index of the last log entry applied.
    pub fn applied_index(&self) -> u64 {
        *self.inner.applied.borrow()
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

    /// The encoded views and watch streams of this node's groups.
    pub fn views(&self) -> &Views {
        &self.inner.views
    }

    /// Applies one command to `state` and tells the watchers of what it changed.
    fn apply(&self, state: &mut MembershipState, command: &Command) -> Applied {
        let before = state.revision();
        let outcome = state.apply(command);
        let revision = state.revision();
        self.inner.commands.fetch_add(1, Ordering::AcqRel);
        let changed = match (command, &outcome) {
            (Command::Join { group, .. }, Outcome::Joined { member, changed: true, .. }) => {
                self.notify(Change::Joined(Arc::clone(member)));
                Some(std::slice::from_ref(group))
            }
            (Command::Leave { group, .. }, Outcome::Left { member }) => {
                self.notify(Change::Left(Arc::clone(member)));
                Some(std::slice::from_ref(group))
            }
            // A new set of probers may move members of any group.
            (Command::SetProbers { .. }, _) if revision != before => {
                self.notify(Change::Probers);
                None
            }
            _ => Some(&[][..]),
        };
        self.inner.views.changed(state, changed);
        Applied { revision, outcome }
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
        let machine = match snapshot_file::read(dir)? {
            Some((meta, data)) => Machine {
                state: codec::decode(&data).map_err(io::Error::other)?,
                last_applied: meta.last_log_id,
                last_membership: meta.last_membership,
            },
            None => Machine::default(),
        };
        Ok(StateMachineStore { handle: StateHandle::new(machine), dir: dir.to_owned(), metrics: None })
    }

    /// The store, counting, sizing and timing the snapshots it builds or installs in `metrics`.
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> Self {
        if let Some(size) = snapshot_file::size(&self.dir) {
            metrics.snapshot_size.set(size as i64);
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
        // Serialized and written on a blocking thread: a large state takes a while.
        let (dir, meta2) = (self.dir.clone(), meta.clone());
        let data = tokio::task::spawn_blocking(move || {
            let data = codec::encode(&state).map_err(io::Error::other)?;
            snapshot_file::write(&dir, &meta2, &data).map(|()| data)
        })
        .await
        .map_err(|e| snapshot_error(ErrorVerb::Write, e))?
        .map_err(|e| snapshot_error(ErrorVerb::Write, e))?;
        self.handle.inner.snapshot_commands.fetch_max(commands, Ordering::AcqRel);
        if let Some(metrics) = &self.metrics {
            metrics.observe_snapshot(data.len(), start.elapsed());
        }
        tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "snapshot built");
        Ok(Snapshot { meta, snapshot: Box::new(data) })
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
        let state: MembershipState = codec::decode(&snapshot).map_err(|e| snapshot_error(ErrorVerb::Read, e))?;
        let (dir, meta2) = (self.dir.clone(), meta.clone());
        tokio::task::spawn_blocking(move || snapshot_file::write(&dir, &meta2, &snapshot))
            .await
            .map_err(|e| snapshot_error(ErrorVerb::Write, e))?
            .map_err(|e| snapshot_error(ErrorVerb::Write, e))?;
        {
            let mut m = self.handle.inner.machine.write().unwrap_or_else(|e| e.into_inner());
            *m = Machine { state, last_applied: meta.last_log_id, last_membership: meta.last_membership.clone() };
            self.handle.inner.views.replaced(&m.state);
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
        let found = tokio::task::spawn_blocking(move || snapshot_file::read(&dir))
            .await
            .map_err(|e| snapshot_error(ErrorVerb::Read, e))?
            .map_err(|e| snapshot_error(ErrorVerb::Read, e))?;
        Ok(found.map(|(meta, data)| Snapshot { meta, snapshot: Box::new(data) }))
    }
}
