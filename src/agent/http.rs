//! The agent's local server, on `--listen`: GM's probes, the app's reads of its groups (answered
//! from the cache, in the JSON of GM's own `GET /v1/groups/{group}`, blocking queries included),
//! and the agent's `/healthz`, `/readyz` and `/metrics`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::AgentState;
use crate::membership::GroupName;
use crate::wire::{ErrorBody, ErrorCode, ErrorDetail, GroupSummary, GroupsAnswer, HealthAnswer, REVISION_HEADER};

/// A blocking query's wait when it names none, and the longest it may ask for (GM's own).
const DEFAULT_WAIT: Duration = Duration::from_secs(60);
const MAX_WAIT: Duration = Duration::from_secs(300);

/// Serves until `stop`.
pub async fn serve(listener: TcpListener, state: Arc<AgentState>, stop: CancellationToken) {
    let app = router(state);
    if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await {
        tracing::error!(%error, "the agent's server failed");
    }
}

pub fn router(state: Arc<AgentState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/groups", get(groups))
        .route("/v1/groups/{group}", get(group))
        .fallback(probe_or_not_found)
        .with_state(state)
}

/// An error in the contract's shape.
fn error(status: StatusCode, code: ErrorCode, message: String) -> Response {
    let body = Json(ErrorBody { error: ErrorDetail { code, message } });
    if status == StatusCode::SERVICE_UNAVAILABLE {
        (status, [(header::RETRY_AFTER, "1")], body).into_response()
    } else {
        (status, body).into_response()
    }
}

/// GM's probe (`200` while the app is healthy, else `503`) at the probe path; `404` elsewhere.
async fn probe_or_not_found(State(state): State<Arc<AgentState>>, uri: Uri) -> Response {
    let path = state.probe_path.as_deref();
    let asked = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    if path.is_some_and(|p| p == asked || p == uri.path()) {
        let healthy = *state.app_healthy.borrow();
        let answer = if healthy { "ok" } else { "unhealthy" };
        state.metrics.probes.with_label_values(&[answer]).inc();
        return if healthy {
            StatusCode::OK.into_response()
        } else {
            error(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, "the app is unhealthy".into())
        };
    }
    error(StatusCode::NOT_FOUND, ErrorCode::NotFound, format!("no route {}", uri.path()))
}

async fn healthz() -> Json<HealthAnswer> {
    Json(HealthAnswer { status: "ok".into() })
}

async fn readyz(State(state): State<Arc<AgentState>>) -> Response {
    if state.ready() {
        Json(HealthAnswer { status: "ready".into() }).into_response()
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, "not joined to every group yet".into())
    }
}

async fn metrics(State(state): State<Arc<AgentState>>) -> Response {
    match state.metrics.render() {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, e.to_string()),
    }
}

/// The followed groups that have members, as GM's `GET /v1/groups` lists them.
async fn groups(State(state): State<Arc<AgentState>>) -> Response {
    let views: Vec<_> = state.views.all().into_iter().filter_map(|(_, v)| v).collect();
    let revision = views.iter().map(|v| v.revision).max().unwrap_or(0);
    let groups = views
        .into_iter()
        .filter(|v| !v.members.is_empty())
        .map(|v| GroupSummary { group: v.group, revision: v.revision, size: v.members.len() })
        .collect();
    with_revision(revision, Json(GroupsAnswer { revision, groups }))
}

/// The cached view of a followed group; with `index` (and `wait`), a blocking query as GM's.
async fn group(
    State(state): State<Arc<AgentState>>,
    Path(group): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let group = match GroupName::parse(&group) {
        Ok(group) => group,
        Err(e) => return error(StatusCode::BAD_REQUEST, ErrorCode::InvalidArgument, e.to_string()),
    };
    let Some(mut views) = state.views.subscribe(&group) else {
        return error(StatusCode::NOT_FOUND, ErrorCode::NotFound, format!("this agent does not follow group {group}"));
    };
    let blocking = match blocking(&params) {
        Ok(blocking) => blocking,
        Err(message) => return error(StatusCode::BAD_REQUEST, ErrorCode::InvalidArgument, message),
    };
    if let Some((index, wait)) = blocking.filter(|&(index, _)| index > 0) {
        let later = views.wait_for(|o| o.as_ref().is_some_and(|o| o.view.revision > index));
        let _ = tokio::time::timeout(wait, later).await;
    }
    let view = views.borrow().as_ref().map(|o| o.view.clone());
    match view {
        None => error(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, format!("no view of {group} yet")),
        Some(view) if view.members.is_empty() => {
            error(StatusCode::NOT_FOUND, ErrorCode::NotFound, format!("group {group} has no members"))
        }
        Some(view) => with_revision(view.revision, Json(view)),
    }
}

/// `index` and `wait` of a blocking query, if `index` is given; `consistency` is accepted and
/// ignored (the answer is the cache's); anything else is refused, as GM refuses it.
fn blocking(params: &HashMap<String, String>) -> Result<Option<(u64, Duration)>, String> {
    if let Some(unknown) = params.keys().find(|k| !matches!(k.as_str(), "index" | "wait" | "consistency")) {
        return Err(format!("unknown query parameter {unknown:?}"));
    }
    let Some(index) = params.get("index") else { return Ok(None) };
    let index = index.parse().map_err(|_| format!("index {index:?} is not a non-negative integer"))?;
    let wait = match params.get("wait") {
        Some(wait) => crate::config::duration(wait).map_err(|e| format!("wait {wait:?}: {e}"))?,
        None => DEFAULT_WAIT,
    };
    if wait > MAX_WAIT {
        return Err(format!("wait {wait:?} is longer than {MAX_WAIT:?}"));
    }
    Ok(Some((index, wait)))
}

fn with_revision(revision: u64, body: impl IntoResponse) -> Response {
    let mut response = body.into_response();
    response.headers_mut().insert(REVISION_HEADER, HeaderValue::from(revision));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn blocking_queries_read_as_gm_reads_them() {
        assert_eq!(blocking(&params(&[])), Ok(None));
        assert_eq!(blocking(&params(&[("consistency", "stale")])), Ok(None));
        assert_eq!(blocking(&params(&[("index", "7")])), Ok(Some((7, DEFAULT_WAIT))));
        assert_eq!(blocking(&params(&[("index", "7"), ("wait", "2s")])), Ok(Some((7, Duration::from_secs(2)))));
        assert!(blocking(&params(&[("index", "-1")])).is_err());
        assert!(blocking(&params(&[("index", "1"), ("wait", "10m")])).is_err());
        assert!(blocking(&params(&[("indx", "1")])).is_err());
    }
}
