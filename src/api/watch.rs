//! The watch stream: Server-Sent Events with the whole view of a group, first as it is now,
//! then once per change. Every stream of a group sends the same bytes for a change, encoded once
//! ([`crate::views`]); a stream too slow to keep up is closed instead of queueing views. The response headers go out at once, even while there is no quorum, so
//! clients and proxies with a header timeout keep the stream; the first view follows as soon as
//! it can be read.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use bytes::Bytes;
use futures::stream::{self, StreamExt};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::{Instant, Sleep};

use super::error::ApiError;
use super::extract::{Consistency, PathParams, QueryParams, ReadParams, REVISION_HEADER};
use super::{AppState, GaugeGuard};
use crate::membership::GroupName;
use crate::node::Node;
use crate::raft::state_machine::StateHandle;
use crate::views::ViewCell;

/// How long the headers wait for a linearizable first view, so that `X-GM-Revision` can be its
/// revision; past this they go without it (a quorum is missing) and the view follows later.
const HEADERS_WITHIN: Duration = Duration::from_millis(500);
/// How long a watch waits for its first view at a time while there is no quorum. It keeps
/// waiting past this: the contract has a watch without quorum wait, not fail.
const FIRST_VIEW_PATIENCE: Duration = Duration::from_secs(3600);
/// A stream quiet this long sends a comment line, so proxies and clients with an idle timeout
/// keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub async fn watch(
    State(app): State<Arc<AppState>>,
    PathParams(group): PathParams<String>,
    QueryParams(params): QueryParams<ReadParams>,
) -> Result<Response, ApiError> {
    let group = GroupName::parse(&group)?;
    let consistency = params.consistency()?;
    // Subscribe before reading, so no change between the first view and the stream is lost.
    let changes = app.node.state.views().subscribe(&group);
    let read_now = match consistency {
        Consistency::Stale => true,
        Consistency::Linearizable => app.node.linearize_until(Instant::now() + HEADERS_WITHIN).await.is_ok(),
    };
    let first = read_now.then(|| current(&app.node.state, &group));
    // Without a quorum: the revision this node has applied, which the first view will not be below.
    let revision = first.as_ref().map_or_else(|| app.node.state.revision(), |view| view.revision());
    let open = GaugeGuard::inc(&app.metrics.watch_streams);
    let opened = Bytes::from(format!(": watching group {group}\n\n"));
    let watcher = Watcher {
        feed: Feed { node: Arc::clone(&app.node), group, changes, first, last: None },
        keep_alive: Box::pin(tokio::time::sleep(KEEP_ALIVE)),
        _open: open,
    };
    let events = stream::unfold(watcher, |mut w| async move { w.next().await.map(|event| (event, w)) });
    let frames = stream::once(async move { opened })
        .chain(events)
        .take_until(app.node.shutdown.clone().cancelled_owned())
        .map(Ok::<_, Infallible>);
    let mut resp = Response::new(Body::from_stream(frames));
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(REVISION_HEADER, HeaderValue::from(revision));
    // nginx buffers proxied responses by default, which would hold events back.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// What one watch stream sends: the views of [`Feed`], each the bytes every stream of the group
/// shares, and a comment line whenever it has been quiet for [`KEEP_ALIVE`].
struct Watcher {
    feed: Feed,
    /// Due [`KEEP_ALIVE`] after the stream last sent anything. One timer for the stream's life,
    /// moved later on each send (tokio moves a deadline later without touching its timer wheel),
    /// rather than a new one per event: with thousands of streams a change would otherwise add
    /// and remove a timer per stream.
    keep_alive: Pin<Box<Sleep>>,
    /// Counts the stream in `gm_watch_streams` until it ends.
    _open: GaugeGuard,
}

/// The views one watch stream sends: the first (read at once, or once a quorum confirms it),
/// then one per change.
struct Feed {
    node: Arc<Node>,
    group: GroupName,
    changes: broadcast::Receiver<Arc<ViewCell>>,
    /// The first view, if it was read before the headers went out.
    first: Option<Arc<ViewCell>>,
    /// The revision of the view sent last, and whether it had no members.
    last: Option<(u64, bool)>,
}

impl Watcher {
    /// The next bytes to send; `None` ends the stream.
    async fn next(&mut self) -> Option<Bytes> {
        let view = tokio::select! {
            view = self.feed.next_view() => Some(view?),
            _ = self.keep_alive.as_mut() => None,
        };
        let sent = match view {
            Some(view) => view
                .event()
                .inspect_err(|error| tracing::error!(group = %self.feed.group, %error, "closing a watch stream"))
                .ok()?,
            None => Bytes::from_static(b":\n\n"),
        };
        self.keep_alive.as_mut().reset(Instant::now() + KEEP_ALIVE);
        Some(sent)
    }
}

impl Feed {
    /// The next view to send; `None` ends the stream: the node shuts down, or the stream fell
    /// too far behind the changes (it is closed rather than queue views without bound; the
    /// client opens it again and starts from the current view).
    async fn next_view(&mut self) -> Option<Arc<ViewCell>> {
        let Some((last, last_empty)) = self.last else {
            let first = match self.first.take() {
                Some(first) => first,
                None => {
                    super::groups::linearize_patiently(&self.node, Instant::now() + FIRST_VIEW_PATIENCE).await.ok()?;
                    current(&self.node.state, &self.group)
                }
            };
            self.last = Some((first.revision(), first.is_empty()));
            return Some(first);
        };
        loop {
            let view = match self.changes.recv().await {
                Ok(view) => view,
                Err(RecvError::Lagged(behind)) => {
                    tracing::info!(group = %self.group, behind, "closing a watch stream that fell behind the changes");
                    return None;
                }
                Err(RecvError::Closed) => return None,
            };
            // One event per change: an older view, or no members again (a group still empty
            // when every group's view was sent anew), is none.
            if view.revision() > last && !(view.is_empty() && last_empty) {
                self.last = Some((view.revision(), view.is_empty()));
                return Some(view);
            }
        }
    }
}

fn current(state: &StateHandle, group: &GroupName) -> Arc<ViewCell> {
    let m = state.read();
    state.views().view_or_empty(&m.state, group)
}
