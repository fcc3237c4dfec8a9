//! `gm recover`, and its request at `gm server`'s start. A cluster that lost a majority of its
//! voters for good has no leader and takes no writes; it never heals itself, since only an
//! operator can know that the lost nodes will not come back. `gm recover` records that decision
//! as a file in the data dir (the running server holds the dir's lock, and in Kubernetes the
//! command runs beside it, through `kubectl exec`); the server applies it at its next start,
//! before Raft runs, with `raft::recover`, and removes the file once the rewrite is durable.

use std::io;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::{Deserialize, Serialize};

use super::{lock_data_dir, ServerError};
use crate::membership::NodeId;
use crate::raft::log_store::{LogStore, LogStoreError};
use crate::raft::recover::{self, RecoverError, Rewrite};
use crate::raft::state_machine::{StateHandle, StateMachineStore};

/// The request's file in the data dir; its presence is the request.
pub const REQUEST_FILE: &str = "recover-request.json";

/// The flags of `gm recover`.
#[derive(Clone, Debug, Args)]
pub struct RecoverConfig {
    /// The data dir of the node that survived: its `gm server --data-dir`.
    #[arg(long, env = "GM_DATA_DIR", default_value = "./gm-data")]
    pub data_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum RecoverCommandError {
    #[error("{dir} holds no Raft state (no log segments in {dir}/log): there is nothing to recover")]
    NoState { dir: String },
    #[error("{dir}: {source}")]
    Recover { dir: String, source: RecoverError },
    #[error("cannot open the Raft log: {0}")]
    Log(#[from] LogStoreError),
    #[error("cannot read the snapshot in {dir}: {source}")]
    Snapshot { dir: String, source: io::Error },
    #[error("cannot write the recovery request {path}: {source}")]
    Write { path: String, source: io::Error },
    #[error(transparent)]
    Server(#[from] ServerError),
}

/// What `gm recover` writes. Only the file's presence counts; the rest tells a reader when and
/// what was seen.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    requested_at: String,
    /// The voters and last log index the data dir held, if no server ran on it then.
    voters: Option<Vec<NodeId>>,
    last_log_index: Option<u64>,
}

/// `gm recover`: records the request, and says what the next start will do.
pub async fn run(config: RecoverConfig) -> Result<(), RecoverCommandError> {
    let dir = config.data_dir.as_path();
    let shown = dir.display().to_string();
    if !has_log_segments(&dir.join("log")) {
        return Err(RecoverCommandError::NoState { dir: shown });
    }
    let path = dir.join(REQUEST_FILE);
    match lock_data_dir(dir) {
        Ok(_lock) => {
            // No server runs on the dir: look at what it holds, under its lock.
            let log = LogStore::open(&dir.join("log"))?;
            let sm_dir = dir.join("snapshot");
            let state = StateMachineStore::open(&sm_dir)
                .map_err(|source| RecoverCommandError::Snapshot { dir: sm_dir.display().to_string(), source })?
                .handle();
            let (last_applied, membership) = snapshot_state(&state);
            let found = recover::inspect(&log, last_applied, &membership)
                .await
                .map_err(|source| RecoverCommandError::Recover { dir: shown.clone(), source })?;
            let voters = found.voters();
            if let [only] = voters[..] {
                println!(
                    "gm recover: the cluster in {shown} has one voter already (node {only}): it needs no recovery, \
                     and nothing was written. Start it with `gm server` as usual."
                );
                return Ok(());
            }
            let last_log_index = found.last_log_id.map(|l| l.index);
            write_request(&path, Some(voters.clone()), last_log_index)?;
            let shown_voters = voters.iter().map(NodeId::to_string).collect::<Vec<_>>().join(", ");
            println!(
                "gm recover: recovery requested in {}. This data dir holds voters {shown_voters} and log entries up \
                 to index {}. The next `gm server` on it, before Raft starts, makes its node the only voter of \
                 the cluster (same cluster id, groups and members) in a new term; it then elects itself and \
                 commits every entry it holds. Writes that only the lost nodes had are lost, even acknowledged \
                 ones. Do this only if the other voters are gone for good, and never start them again on their \
                 old data. Now start the node as usual: `gm server` with its flags and this --data-dir.",
                path.display(),
                last_log_index.map_or_else(|| "none".to_owned(), |i| i.to_string()),
            );
        }
        Err(ServerError::DataDirInUse { .. }) => {
            write_request(&path, None, None)?;
            println!(
                "gm recover: recovery requested in {}. The gm server running on {shown} applies it at its next \
                 start: before Raft starts, it makes this node the only voter of the cluster (same cluster id, \
                 groups and members) in a new term; it then elects itself and commits every entry it holds. \
                 Writes that only the lost nodes had are lost, even acknowledged ones. Do this only if the other \
                 voters are gone for good, and never start them again on their old data. Now restart the node: \
                 in Kubernetes `kubectl delete pod POD` (the StatefulSet starts it again on the same volume), \
                 elsewhere stop its gm server (SIGTERM) and start it again with the same flags.",
                path.display(),
            );
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// At `gm server`'s start, before Raft: applies a recovery request found in `dir`, if any, to
/// `log` for node `me`, then removes the request. A request that finds nothing to do is removed
/// with a warning; one that cannot be applied stops the node and stays.
pub async fn apply_requested(dir: &Path, me: NodeId, log: &LogStore, state: &StateHandle) -> Result<(), ServerError> {
    let path = dir.join(REQUEST_FILE);
    let shown = path.display().to_string();
    match std::fs::metadata(&path) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(ServerError::RecoverRequest { path: shown, source }),
    }
    let (last_applied, membership) = snapshot_state(state);
    match recover::make_sole_voter(log, last_applied, &membership, me).await {
        Ok(Rewrite::Done { old_voters, voter, membership_log_id, kept }) => tracing::warn!(
            node = me,
            ?old_voters,
            new_voter = voter,
            term = membership_log_id.leader_id.term,
            membership_index = membership_log_id.index,
            last_index_kept = ?kept.map(|k| k.index),
            "recovered from a lost quorum on request: this node is now its cluster's only voter; entries only \
             the lost nodes held are lost"
        ),
        Ok(Rewrite::AlreadySoleVoter) => {
            tracing::warn!(
                node = me,
                "recovery requested, but this node already is its cluster's only voter: nothing to do"
            )
        }
        Err(RecoverError::NoMembership) => {
            tracing::warn!(node = me, "recovery requested, but this data dir holds no cluster: nothing to recover")
        }
        Err(source) => return Err(ServerError::Recover { path: shown, source }),
    }
    remove_durably(&path).map_err(|source| ServerError::RecoverRequest { path: shown, source })
}

/// The snapshot's last log id and membership, as the state machine opened them.
fn snapshot_state(state: &StateHandle) -> (Option<crate::raft::LogId>, crate::raft::StoredMembership) {
    let m = state.read();
    (m.last_applied, m.last_membership.clone())
}

fn has_log_segments(log_dir: &Path) -> bool {
    std::fs::read_dir(log_dir).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|e| e.path().extension().is_some_and(|ext| ext == "log"))
    })
}

/// Writes the request to a temporary file, fsyncs it, renames it into place and fsyncs the dir:
/// a crash leaves the whole request or none.
fn write_request(
    path: &Path,
    voters: Option<Vec<NodeId>>,
    last_log_index: Option<u64>,
) -> Result<(), RecoverCommandError> {
    use std::io::Write;
    let failed = |source| RecoverCommandError::Write { path: path.display().to_string(), source };
    let request = Request { requested_at: chrono::Utc::now().to_rfc3339(), voters, last_log_index };
    let text = serde_json::to_vec_pretty(&request).map_err(|e| failed(io::Error::other(e)))?;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(failed)?;
    file.write_all(&text).and_then(|()| file.sync_all()).map_err(failed)?;
    std::fs::rename(&tmp, path).map_err(failed)?;
    sync_parent(path).map_err(failed)
}

/// Removes the request once the rewrite is durable, and makes the removal durable too.
fn remove_durably(path: &Path) -> io::Result<()> {
    std::fs::remove_file(path)?;
    sync_parent(path)
}

fn sync_parent(path: &Path) -> io::Result<()> {
    std::fs::File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}
