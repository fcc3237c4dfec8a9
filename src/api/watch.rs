//! The watch stream: Server-Sent Events with the whole view of a group, first as it is now,
//! then once per change.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream, StreamExt};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use super::error::ApiError;
use super::extract::{Consistency, PathParams, QueryParams, ReadParams, REVISION_HEADER};
use super::AppState;
use crate::membership::{GroupName, GroupView};
use crate::raft::state_machine::StateHandle;

/// How long a watch waits for its first view at a time while there is no quorum. It keeps
/// waiting past this: the contract has a watch without quorum wait, not fail.
const FIRST_VIEW_PATIENCE: std::time::Duration = std::time::Duration::from_secs(3600);

pub async fn watch(
    State(app): State<Arc<AppState>>,
    PathParams(group): PathParams<String>,
    QueryParams(params): QueryParams<ReadParams>,
) -> Result<Response, ApiError> {
    let group = GroupName::parse(&group)?;
    let consistency = params.consistency()?;
    // Subscribe before reading, so no change between the first view and the stream is lost.
    let changes = app.node.state.watch(&group);
    if consistency == Consistency::Linearizable {
        super::groups::linearize_patiently(&app.node, Instant::now() + FIRST_VIEW_PATIENCE).await?;
    }
    let first = Arc::new(current(&app.node.state, &group));
    let revision = first.revision;
    let state = app.node.state.clone();
    let later = stream::unfold((changes, Arc::clone(&first)), move |(mut changes, last)| {
        let (state, group) = (state.clone(), group.clone());
        async move {
            loop {
                let view = match changes.recv().await {
                    Ok(view) => view,
                    // Too slow for every change: skip to the current view.
                    Err(RecvError::Lagged(_)) => Arc::new(current(&state, &group)),
                    Err(RecvError::Closed) => return None,
                };
                // One event per change: an older view, or the same members again (an empty
                // group re-read at a later revision), is none.
                if view.revision > last.revision && view.members != last.members {
                    return Some((event(&view), (changes, view)));
                }
            }
        }
    });
    let events: std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>> = Box::pin(
        stream::once(async move { event(&first) }).chain(later).take_until(app.node.shutdown.clone().cancelled_owned()),
    );
    let mut resp = Sse::new(events).keep_alive(KeepAlive::default()).into_response();
    resp.headers_mut().insert(REVISION_HEADER, HeaderValue::from(revision));
    Ok(resp)
}

fn current(state: &StateHandle, group: &GroupName) -> GroupView {
    let m = state.read();
    StateHandle::view_or_empty(&m.state, group, m.state.revision())
}

fn event(view: &GroupView) -> Result<Event, Infallible> {
    let data = serde_json::to_string(view).unwrap_or_default();
    Ok(Event::default().event("view").id(view.revision.to_string()).data(data))
}
