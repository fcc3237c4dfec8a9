//! The watch stream: Server-Sent Events with the whole view of a group, first as it is now,
//! then once per change. The response headers go out at once, even while there is no quorum, so
//! clients and proxies with a header timeout keep the stream; the first view follows as soon as
//! it can be read.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream, StreamExt};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::Instant;

use super::error::ApiError;
use super::extract::{Consistency, PathParams, QueryParams, ReadParams, REVISION_HEADER};
use super::{AppState, GaugeGuard};
use crate::membership::{GroupName, GroupView};
use crate::node::Node;
use crate::raft::state_machine::StateHandle;

/// How long the headers wait for a linearizable first view, so that `X-GM-Revision` can be its
/// revision; past this they go without it (a quorum is missing) and the view follows later.
const HEADERS_WITHIN: Duration = Duration::from_millis(500);
/// How long a watch waits for its first view at a time while there is no quorum. It keeps
/// waiting past this: the contract has a watch without quorum wait, not fail.
const FIRST_VIEW_PATIENCE: Duration = Duration::from_secs(3600);

pub async fn watch(
    State(app): State<Arc<AppState>>,
    PathParams(group): PathParams<String>,
    QueryParams(params): QueryParams<ReadParams>,
) -> Result<Response, ApiError> {
    let group = GroupName::parse(&group)?;
    let consistency = params.consistency()?;
    // Subscribe before reading, so no change between the first view and the stream is lost.
    let changes = app.node.state.watch(&group);
    let read_now = match consistency {
        Consistency::Stale => true,
        Consistency::Linearizable => app.node.linearize_until(Instant::now() + HEADERS_WITHIN).await.is_ok(),
    };
    let first = read_now.then(|| Arc::new(current(&app.node.state, &group)));
    // Without a quorum: the revision this node has applied, which the first view will not be below.
    let revision = first.as_ref().map_or_else(|| app.node.state.revision(), |view| view.revision);
    let open = GaugeGuard::inc(&app.metrics.watch_streams);
    let watcher =
        Watcher { node: Arc::clone(&app.node), group: group.clone(), changes, first, last: None, _open: open };
    let views = stream::unfold(watcher, |mut w| async move { w.next().await.map(|view| (event(&view), w)) });
    let opened = Event::default().comment(format!("watching group {group}"));
    let events: std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>> = Box::pin(
        stream::once(async move { Ok(opened) }).chain(views).take_until(app.node.shutdown.clone().cancelled_owned()),
    );
    let mut resp = Sse::new(events).keep_alive(KeepAlive::default()).into_response();
    let headers = resp.headers_mut();
    headers.insert(REVISION_HEADER, HeaderValue::from(revision));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx buffers proxied responses by default, which would hold events back.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// The views one watch stream sends: the first (read at once, or once a quorum confirms it),
/// then one per change.
struct Watcher {
    node: Arc<Node>,
    group: GroupName,
    changes: broadcast::Receiver<Arc<GroupView>>,
    /// The first view, if it was read before the headers went out.
    first: Option<Arc<GroupView>>,
    /// The view sent last.
    last: Option<Arc<GroupView>>,
    /// Counts the stream in `gm_watch_streams` until it ends.
    _open: GaugeGuard,
}

impl Watcher {
    /// The next view to send; `None` ends the stream (the node shuts down).
    async fn next(&mut self) -> Option<Arc<GroupView>> {
        let Some(last) = self.last.clone() else {
            let first = match self.first.take() {
                Some(first) => first,
                None => {
                    super::groups::linearize_patiently(&self.node, Instant::now() + FIRST_VIEW_PATIENCE).await.ok()?;
                    Arc::new(current(&self.node.state, &self.group))
                }
            };
            self.last = Some(Arc::clone(&first));
            return Some(first);
        };
        loop {
            let view = match self.changes.recv().await {
                Ok(view) => view,
                // Too slow for every change: skip to the current view.
                Err(RecvError::Lagged(_)) => Arc::new(current(&self.node.state, &self.group)),
                Err(RecvError::Closed) => return None,
            };
            // One event per change: an older view, or the same members again (an empty group
            // re-read at a later revision), is none.
            if view.revision > last.revision && view.members != last.members {
                self.last = Some(Arc::clone(&view));
                return Some(view);
            }
        }
    }
}

fn current(state: &StateHandle, group: &GroupName) -> GroupView {
    let m = state.read();
    StateHandle::view_or_empty(&m.state, group, m.state.revision())
}

fn event(view: &GroupView) -> Result<Event, Infallible> {
    let data = serde_json::to_string(view).unwrap_or_default();
    Ok(Event::default().event("view").id(view.revision.to_string()).data(data))
}
