//! The cluster view, health, readiness, metrics and the served contract.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::ApiError;
use super::extract::{Answer, Consistency, QueryParams, ReadParams};
use super::AppState;
use crate::metrics::ScrapeFigures;
use crate::wire::{ClusterAnswer, HealthAnswer, NodeAnswer, Role};

/// How long `/readyz` gives a read-index round before calling this node not ready.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn cluster(
    State(app): State<Arc<AppState>>,
    QueryParams(params): QueryParams<ReadParams>,
) -> Result<Answer<ClusterAnswer>, ApiError> {
    if params.consistency()? == Consistency::Linearizable {
        app.node.linearize().await?;
    }
    let health = app.node.health().await.unwrap_or_default();
    let raft = app.node.raft_view();
    let m = app.node.state.read();
    let counts = m.state.responsible_counts();
    let nodes = raft
        .nodes
        .iter()
        .map(|&(id, ref info, voter)| {
            let role = if raft.leader == Some(id) {
                Role::Leader
            } else if voter {
                Role::Follower
            } else {
                Role::Learner
            };
            let advert = m.state.advert(id);
            NodeAnswer {
                id,
                name: advert.map_or_else(|| info.name.clone(), |a| a.name.clone()),
                api_address: advert.map_or_else(|| info.api_addr.clone(), |a| a.api_address.clone()),
                peer_address: info.peer_addr.clone(),
                role,
                responsible_for: counts.get(&id).copied().unwrap_or(0),
                health: health.get(&id).cloned(),
            }
        })
        .collect();
    let revision = m.state.revision();
    Ok(Answer::ok(
        revision,
        ClusterAnswer {
            cluster_id: m.state.cluster_id().map(str::to_owned),
            leader_id: raft.leader,
            term: raft.term,
            revision,
            nodes,
        },
    ))
}

pub async fn healthz() -> Json<HealthAnswer> {
    Json(HealthAnswer { status: "ok".into() })
}

/// Ready when this node is a member of the cluster, knows a leader, and has caught up: a
/// read-index round through the leader succeeds and the local state reaches it.
pub async fn readyz(State(app): State<Arc<AppState>>) -> Result<Json<HealthAnswer>, ApiError> {
    let in_cluster = app.node.raft_view().nodes.iter().any(|(id, _, _)| *id == app.node.id);
    if !in_cluster {
        return Err(ApiError::Unavailable("this node is not in the cluster yet".into()));
    }
    let not_ready = || {
        let (unreachable, voters) = app.node.unreachable_voters();
        let quorum = voters / 2 + 1;
        ApiError::Unavailable(match app.node.leader() {
            None => format!("no leader: {unreachable} of {voters} voters unreachable from this node (a quorum is {quorum})"),
            // A leader restarted alone takes its leadership back, but cannot confirm it.
            Some(leader) if leader.id == app.node.id => format!(
                "no quorum: this node leads, but {unreachable} of {voters} voters are unreachable from it (a quorum is {quorum})"
            ),
            Some(_) => "this node has not caught up with the leader".into(),
        })
    };
    // Without a live leader there is nothing to wait for: a probe gets its answer at once, not
    // after its own timeout.
    if app.node.leader().is_none() {
        return Err(not_ready());
    }
    tokio::time::timeout(READY_TIMEOUT, app.node.linearize())
        .await
        .map_err(|_| not_ready())?
        .map_err(|_| not_ready())?;
    // Ready means `/v1/cluster` already tells who this node is.
    let m = app.node.state.read();
    if m.state.cluster_id().is_none() {
        return Err(ApiError::Unavailable("the cluster has no id yet".into()));
    }
    if m.state.advert(app.node.id) != Some(&app.node.advert) {
        return Err(ApiError::Unavailable("this node's name and API address are not committed yet".into()));
    }
    Ok(Json(HealthAnswer { status: "ready".into() }))
}

pub async fn metrics(State(app): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let raft = app.node.raft_figures().await;
    let figures = {
        let m = app.node.state.read();
        ScrapeFigures {
            groups: m.state.groups(),
            members: m.state.member_count(),
            responsible_members: m.state.responsible_counts().get(&app.node.id).copied().unwrap_or(0),
            raft,
        }
    };
    let text = app.metrics.render(figures).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response())
}

pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], include_str!("openapi.json")).into_response()
}
