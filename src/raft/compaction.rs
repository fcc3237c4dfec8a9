//! Snapshots by the work done, not by the entries. openraft's policy counts log entries, and an
//! entry batches many commands (up to the batcher's limit under load), so the log between two
//! snapshots could hold far more than `--snapshot-every` commands. This task asks Raft for a
//! snapshot every `--snapshot-every-commands` commands applied; openraft's own policy stays as a
//! backstop. The log is purged behind each snapshot, keeping the last 1000 entries.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::state_machine::StateHandle;
use super::Raft;

/// How often the count of commands since the last snapshot is looked at.
const CHECK: Duration = Duration::from_millis(500);

/// Triggers a snapshot whenever `every` commands were applied since the last one (never if
/// `every` is 0), until `cancel`. A trigger while a snapshot is being built is ignored by Raft.
pub async fn run(raft: Raft, state: StateHandle, every: u64, cancel: CancellationToken) {
    if every == 0 {
        return cancel.cancelled().await;
    }
    let mut tick = tokio::time::interval(CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let since = state.commands_since_snapshot();
        if since < every {
            continue;
        }
        tracing::debug!(commands = since, "commands since the last snapshot; triggering one");
        if let Err(error) = raft.trigger().snapshot().await {
            tracing::warn!(%error, "triggering a snapshot failed");
        }
    }
}
