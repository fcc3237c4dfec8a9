//! Each group's view, followed with a watch stream and cached: the local server answers the app
//! from the cache, the membership reads it to notice that the agent was removed, and it is
//! written to the view file if one is asked for.
//!
//! A stream that ends, breaks, or stays silent longer than three keep-alive periods is opened
//! again, on the next GM endpoint; its first view is the whole current one, so no change is
//! lost (one may be seen twice).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::AgentState;
use crate::client::{Client, WatchLost};
use crate::membership::GroupName;
use crate::wire::{Consistency, GroupView};

/// A stream that sent nothing, not even a keep-alive (every 15 s), for this long is given up.
const SILENCE: Duration = Duration::from_secs(45);
/// The pauses between attempts to open a stream: doubling from the first to the last.
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// A view as a watch stream delivered it.
#[derive(Clone, Debug)]
pub struct Observed {
    pub view: GroupView,
    /// When the stream that delivered it was asked for. Its first view is linearizable, so a
    /// stream asked for after a write was acknowledged shows that write, and so do its later views.
    pub stream_asked: Instant,
}

/// The latest view of each followed group; `None` until its first stream answered.
pub struct Views {
    groups: BTreeMap<GroupName, watch::Sender<Option<Observed>>>,
}

impl Views {
    pub fn new(groups: &[GroupName]) -> Views {
        Views { groups: groups.iter().map(|g| (g.clone(), watch::Sender::new(None))).collect() }
    }

    /// The views of `group` as they come; `None` if the agent does not follow it.
    pub fn subscribe(&self, group: &GroupName) -> Option<watch::Receiver<Option<Observed>>> {
        self.groups.get(group).map(watch::Sender::subscribe)
    }

    /// The latest view of `group`: `None` if it is not followed, `Some(None)` before the first.
    pub fn latest(&self, group: &GroupName) -> Option<Option<GroupView>> {
        self.groups.get(group).map(|s| s.borrow().as_ref().map(|o| o.view.clone()))
    }

    /// Every followed group with its latest view.
    pub fn all(&self) -> Vec<(GroupName, Option<GroupView>)> {
        self.groups.iter().map(|(g, s)| (g.clone(), s.borrow().as_ref().map(|o| o.view.clone()))).collect()
    }

    fn publish(&self, observed: Observed) {
        if let Some(sender) = self.groups.get(&observed.view.group) {
            sender.send_replace(Some(observed));
        }
    }
}

/// Follows `group` until `stop`: keeps its cached view current and writes it to `file`.
pub async fn follow(
    client: Client,
    group: GroupName,
    file: Option<PathBuf>,
    state: Arc<AgentState>,
    stop: CancellationToken,
) {
    let metrics = &state.metrics;
    let mut attempt = 0usize;
    let mut pause = FIRST_PAUSE;
    let mut written: Option<u64> = None;
    loop {
        let asked = Instant::now();
        let from = client.starting_at(attempt);
        let opened = tokio::select! {
            _ = stop.cancelled() => return,
            opened = from.watch(&group, Consistency::Linearizable) => opened,
        };
        match opened {
            Err(error) => tracing::warn!(group = %group, %error, "cannot open the watch stream; trying again"),
            Ok(mut stream) => {
                tracing::info!(group = %group, endpoint = stream.endpoint(), "watch stream open");
                loop {
                    let next = tokio::select! {
                        _ = stop.cancelled() => return,
                        next = stream.next_within(SILENCE) => next,
                    };
                    match next {
                        Err(lost @ WatchLost::Silent(_)) => {
                            let endpoint = stream.endpoint();
                            tracing::warn!(group = %group, endpoint, reason = %lost, "the watch stream went silent");
                            break;
                        }
                        Err(WatchLost::Ended) => {
                            tracing::info!(group = %group, endpoint = stream.endpoint(), "the watch stream ended");
                            break;
                        }
                        Err(WatchLost::Failed(error)) => {
                            tracing::warn!(group = %group, %error, "the watch stream broke");
                            break;
                        }
                        Ok(view) => {
                            pause = FIRST_PAUSE;
                            let label = [group.as_str()];
                            metrics.view_revision.with_label_values(&label).set(view.revision as i64);
                            metrics.view_members.with_label_values(&label).set(view.members.len() as i64);
                            if let Some(path) = &file {
                                if written != Some(view.revision) {
                                    match write_atomically(path, &view).await {
                                        Ok(()) => written = Some(view.revision),
                                        Err(error) => {
                                            let path = path.display();
                                            tracing::warn!(group = %group, %path, %error, "cannot write the view file")
                                        }
                                    }
                                }
                            }
                            state.views.publish(Observed { view, stream_asked: asked });
                        }
                    }
                }
            }
        }
        metrics.watch_restarts.inc();
        attempt += 1;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Writes `view` as JSON to a new file beside `path`, then renames it over `path`: a reader
/// sees the old view or the new one, never half of one.
async fn write_atomically(path: &Path, view: &GroupView) -> std::io::Result<()> {
    let json = serde_json::to_vec(view).map_err(std::io::Error::other)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.tmp"));
    tokio::fs::write(&temporary, json).await?;
    tokio::fs::rename(&temporary, path).await
}
