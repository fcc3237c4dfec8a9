//! Handlers for groups and members: join, leave, heartbeat, and the reads of one member, one
//! group (with blocking queries) and all groups.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use tokio::time::Instant;

use super::error::ApiError;
use super::extract::{
    member_path, parse_u64, Answer, Consistency, EncodedAnswer, GroupParams, JsonBody, LeaveParams, NoParams,
    PathParams, QueryParams, ReadParams,
};
use super::{AppState, GaugeGuard};
use crate::membership::{Command, GroupName, LeaveReason, Member, MemberSpec, Outcome, Timestamp};
use crate::node::{Node, NodeError};
use crate::probe::lease::{self, Heartbeat};
use crate::raft::state_machine::StateHandle;
use crate::wire::{HeartbeatAnswer, JoinAnswer, RevisionAnswer};

type Result<T> = std::result::Result<T, ApiError>;

/// How long a blocking query whose wait ended without a change may take to confirm a quorum.
const QUORUM_RECHECK: Duration = Duration::from_secs(2);

fn unexpected(outcome: Outcome) -> ApiError {
    ApiError::Internal(format!("unexpected outcome {outcome:?}"))
}

pub async fn join(
    State(app): State<Arc<AppState>>,
    PathParams((group, id)): PathParams<(String, String)>,
    _: QueryParams<NoParams>,
    JsonBody(spec): JsonBody<MemberSpec>,
) -> Result<Answer<JoinAnswer>> {
    let joined = join_member(&app.node, &group, &id, spec).await;
    let outcome = match &joined {
        Ok((_, JoinOutcome { created: true, .. })) => "created",
        Ok((_, JoinOutcome { changed: true, .. })) => "updated",
        Ok(_) => "rejoined",
        Err(_) => "rejected",
    };
    app.metrics.joins.with_label_values(&[outcome]).inc();
    let (answer, JoinOutcome { created, .. }) = joined?;
    Ok(Answer {
        status: if created { StatusCode::CREATED } else { StatusCode::OK },
        revision: answer.revision,
        body: answer,
    })
}

/// What a join did: added a member, or changed one (a new incarnation), or neither.
struct JoinOutcome {
    created: bool,
    changed: bool,
}

async fn join_member(node: &Node, group: &str, id: &str, spec: MemberSpec) -> Result<(JoinAnswer, JoinOutcome)> {
    let (group, id) = member_path(group, id)?;
    let applied = node.write(Command::Join { group, id, spec, at: Timestamp::now() }).await?;
    match applied.outcome {
        Outcome::Joined { member, created, changed } => {
            let member = Arc::unwrap_or_clone(member);
            Ok((JoinAnswer { member, revision: applied.revision }, JoinOutcome { created, changed }))
        }
        other => Err(unexpected(other)),
    }
}

pub async fn leave(
    State(app): State<Arc<AppState>>,
    PathParams((group, id)): PathParams<(String, String)>,
    QueryParams(params): QueryParams<LeaveParams>,
) -> Result<Answer<RevisionAnswer>> {
    let (group, id) = member_path(&group, &id)?;
    let incarnation = params.incarnation.as_deref().map(|n| parse_u64("incarnation", n)).transpose()?;
    let reason = LeaveReason::Left;
    let command = Command::Leave { group: group.clone(), id: id.clone(), incarnation, reason };
    let applied = app.node.write(command).await?;
    match applied.outcome {
        Outcome::Left { .. } => {
            app.metrics.leaves.with_label_values(&["left"]).inc();
            app.metrics.member_removed(reason);
            Ok(Answer::ok(applied.revision, RevisionAnswer { revision: applied.revision }))
        }
        Outcome::NotMember => {
            app.metrics.leaves.with_label_values(&["not_found"]).inc();
            Err(not_a_member(&group, &id))
        }
        Outcome::IncarnationMismatch { current } => Err(ApiError::Conflict(format!(
            "member {id} of group {group} has incarnation {current}, not {}",
            incarnation.unwrap_or_default()
        ))),
        other => Err(unexpected(other)),
    }
}

fn not_a_member(group: &GroupName, id: &impl std::fmt::Display) -> ApiError {
    ApiError::NotFound(format!("{id} is not a member of group {group}"))
}

/// Brings this node's state up to date as `consistency` asks.
async fn read_barrier(node: &Node, consistency: Consistency) -> Result<()> {
    if consistency == Consistency::Linearizable {
        node.linearize().await?;
    }
    Ok(())
}

pub async fn get_member(
    State(app): State<Arc<AppState>>,
    PathParams((group, id)): PathParams<(String, String)>,
    QueryParams(params): QueryParams<ReadParams>,
) -> Result<Answer<Member>> {
    let (group, id) = member_path(&group, &id)?;
    read_barrier(&app.node, params.consistency()?).await?;
    let m = app.node.state.read();
    let member = m.state.member(&group, &id).cloned().ok_or_else(|| not_a_member(&group, &id))?;
    Ok(Answer::ok(m.state.revision(), member))
}

/// Keep-alive of a lease-mode member, renewed at the leader.
pub async fn heartbeat(
    State(app): State<Arc<AppState>>,
    PathParams((group, id)): PathParams<(String, String)>,
    _: QueryParams<NoParams>,
) -> Result<Answer<HeartbeatAnswer>> {
    let (group, id) = member_path(&group, &id)?;
    let outcome = lease::heartbeat(&app.node, &app.leases, &group, &id).await?;
    match outcome {
        Heartbeat::Renewed { revision, ttl_ms } => Ok(Answer::ok(revision, HeartbeatAnswer { revision, ttl_ms })),
        Heartbeat::NotMember => Err(not_a_member(&group, &id)),
        Heartbeat::ProbeMode => Err(ApiError::Conflict(format!(
            "member {id} of group {group} is in probe mode: GM probes it, it sends no heartbeats"
        ))),
    }
}

pub async fn list_groups(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    QueryParams(params): QueryParams<ReadParams>,
) -> Result<EncodedAnswer> {
    read_barrier(&app.node, params.consistency()?).await?;
    let list = {
        let m = app.node.state.read();
        app.node.state.views().groups(&m.state)
    };
    // Encoded (by the first reader of this revision) after the state's lock is released.
    Ok(EncodedAnswer::new(list.revision(), list.body()?, &headers))
}

pub async fn get_group(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    PathParams(group): PathParams<String>,
    QueryParams(params): QueryParams<GroupParams>,
) -> Result<EncodedAnswer> {
    let group = GroupName::parse(&group)?;
    let consistency = params.consistency()?;
    // `index=0` never blocks: a client's first blocking query wants an answer at once (Consul's
    // convention), also for a group that does not exist yet.
    let Some((index, wait)) = params.blocking()?.filter(|&(index, _)| index > 0) else {
        read_barrier(&app.node, consistency).await?;
        return current_view(&app.node.state, &group, &headers);
    };
    let now = Instant::now();
    let deadline = now + wait;
    if consistency == Consistency::Linearizable {
        // The read takes as long as any read may, however short the wait.
        linearize_patiently(&app.node, deadline.max(now + app.node.request_timeout())).await?;
    }
    let waiting_from = Instant::now();
    let changed = {
        let _waiting = GaugeGuard::inc(&app.metrics.blocking_queries);
        tokio::select! {
            changed = wait_for_change(&app.node.state, &group, index, deadline) => changed,
            _ = app.node.shutdown.cancelled() => return Err(NodeError::ShuttingDown.into()),
        }
    };
    // A change seen was committed; a wait that ended without one must still find a quorum,
    // which it may have lost while it waited.
    if !changed && deadline > waiting_from && consistency == Consistency::Linearizable {
        app.node.linearize_until(Instant::now() + QUORUM_RECHECK).await?;
    }
    current_view(&app.node.state, &group, &headers)
}

/// The group's view now, as the bytes every reader of its revision shares.
fn current_view(state: &StateHandle, group: &GroupName, headers: &HeaderMap) -> Result<EncodedAnswer> {
    let (revision, view) = {
        let m = state.read();
        (m.state.revision(), state.views().view(&m.state, group))
    };
    let view = view.ok_or_else(|| ApiError::NotFound(format!("group {group} has no members")))?;
    // Encoded (by the first reader of this revision) after the state's lock is released.
    Ok(EncodedAnswer::new(revision, view.body()?, headers))
}

/// A linearizable read that keeps trying while there is no quorum, until `deadline`.
pub async fn linearize_patiently(node: &Node, deadline: Instant) -> Result<()> {
    loop {
        match node.linearize_until(deadline).await {
            Ok(_) => return Ok(()),
            Err(e @ NodeError::ShuttingDown) => return Err(e.into()),
            Err(e) if Instant::now() >= deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Waits until the group's revision passes `index`, or the group it was disappears (true), or
/// until `deadline` (false).
async fn wait_for_change(state: &StateHandle, group: &GroupName, index: u64, deadline: Instant) -> bool {
    let mut applied = state.applied();
    let existed = state.read().state.group_revision(group).is_some();
    loop {
        match state.read().state.group_revision(group) {
            Some(revision) if revision > index => return true,
            None if existed => return true,
            _ => {}
        }
        match tokio::time::timeout_at(deadline, applied.changed()).await {
            Ok(Ok(())) => {}
            _ => return false,
        }
    }
}
