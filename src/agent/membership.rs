//! The agent's membership of one group, from its first join to its last leave.
//!
//! ```text
//! wait until the app is healthy ─► join (retried) ─► member ─┬─ removed (view, heartbeat 404) ─► join again
//!        ▲                                                   ├─ app unhealthy ─► leave ─► wait
//!        └───────────────────────────────────────────────────┴─ superseded ─► wait until the id is free
//! ```
//!
//! Every leave names the incarnation this agent holds (`?incarnation=N`), so a leave that
//! arrives late never removes a successor: a new agent with the same id joined with a new
//! `instance`, which made it a new incarnation. Likewise the agent never fights a successor: when
//! its id is held by another instance it is *superseded*, and joins again only once the id is free.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::view::Observed;
use super::{AgentState, Identity};
use crate::client::{Client, ErrorKind, RetryPolicy};
use crate::membership::{FailureDetection, GroupName};

/// The pauses between failed joins: doubling from the first to the last.
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// Where the agent stands in one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Not a member: joining, or waiting for the app to be healthy.
    Waiting {
        joined_once: bool,
    },
    Member {
        incarnation: u64,
    },
    /// Another instance holds the id; the agent waits until it is free.
    Superseded,
}

impl Status {
    pub fn joined_once(self) -> bool {
        !matches!(self, Status::Waiting { joined_once: false })
    }
}

/// Why a membership ended while the agent runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lost {
    /// The view, or a heartbeat, says the agent is not a member any more.
    Removed,
    /// The app became unhealthy: the agent leaves.
    Unhealthy,
    /// Another instance joined with the agent's id.
    Superseded,
}

impl Lost {
    fn as_str(self) -> &'static str {
        match self {
            Lost::Removed => "removed",
            Lost::Unhealthy => "unhealthy",
            Lost::Superseded => "superseded",
        }
    }
}

/// What a view says of the agent's membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    /// The view may predate the join: it says nothing.
    Unknown,
    Present,
    Absent,
    /// The id is held by another instance.
    Other,
}

/// One acknowledged join.
#[derive(Clone, Copy, Debug)]
struct Joined {
    incarnation: u64,
    revision: u64,
    acknowledged: Instant,
}

/// The membership of one group, run by [`Membership::run`].
pub struct Membership {
    pub client: Client,
    pub group: GroupName,
    pub identity: Identity,
    pub views: watch::Receiver<Option<Observed>>,
    pub app_healthy: watch::Receiver<bool>,
    pub status: watch::Sender<Status>,
    pub leave_timeout: Duration,
}

impl Membership {
    /// Joins and keeps the membership until `stop`, then leaves (within the leave timeout).
    pub async fn run(mut self, state: Arc<AgentState>, stop: CancellationToken) {
        let group = self.group.clone();
        let label = [group.as_str()];
        let metrics = &state.metrics;
        // The incarnation this agent last held: what its leave names at the end.
        let mut held: Option<u64> = None;
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = until_health(&mut self.app_healthy, true) => {}
            }
            let joined = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                joined = self.join() => joined,
            };
            held = Some(joined.incarnation);
            metrics.joins.with_label_values(&label).inc();
            metrics.member.with_label_values(&label).set(1);
            metrics.incarnation.with_label_values(&label).set(joined.incarnation as i64);
            self.status.send_replace(Status::Member { incarnation: joined.incarnation });
            let lost = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                lost = self.keep(joined, &state) => lost,
            };
            metrics.lost.with_label_values(&[self.group.as_str(), lost.as_str()]).inc();
            tracing::warn!(
                group = %self.group,
                member = %self.identity.id,
                incarnation = joined.incarnation,
                why = lost.as_str(),
                "membership lost"
            );
            metrics.member.with_label_values(&label).set(0);
            metrics.incarnation.with_label_values(&label).set(0);
            match lost {
                Lost::Removed => {
                    self.status.send_replace(Status::Waiting { joined_once: true });
                }
                Lost::Unhealthy => {
                    self.status.send_replace(Status::Waiting { joined_once: true });
                    self.leave(joined.incarnation).await;
                    held = None;
                }
                Lost::Superseded => {
                    self.status.send_replace(Status::Superseded);
                    tokio::select! {
                        biased;
                        _ = stop.cancelled() => break,
                        _ = self.until_free() => {}
                    }
                    self.status.send_replace(Status::Waiting { joined_once: true });
                }
            }
        }
        if let Some(incarnation) = held {
            metrics.member.with_label_values(&label).set(0);
            self.leave(incarnation).await;
        }
    }

    /// Joins with the agent's spec, retried on every endpoint in turn until it is acknowledged.
    async fn join(&self) -> Joined {
        let mut pause = FIRST_PAUSE;
        let mut attempt = 0;
        loop {
            match self.client.starting_at(attempt).join(&self.group, &self.identity.id, &self.identity.spec).await {
                Ok(joined) => {
                    let member = &joined.answer.member;
                    tracing::info!(
                        group = %self.group,
                        member = %self.identity.id,
                        incarnation = member.incarnation,
                        revision = joined.answer.revision,
                        "joined"
                    );
                    return Joined {
                        incarnation: member.incarnation,
                        revision: joined.answer.revision,
                        acknowledged: Instant::now(),
                    };
                }
                Err(error) => {
                    tracing::warn!(group = %self.group, member = %self.identity.id, %error, "join failed; trying again")
                }
            }
            attempt += 1;
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    /// Keeps the membership `joined` until it is lost, and says why.
    async fn keep(&mut self, joined: Joined, state: &AgentState) -> Lost {
        let ttl = match self.identity.spec.failure_detection {
            FailureDetection::Lease { ttl_ms } => Some(Duration::from_millis(ttl_ms)),
            FailureDetection::Probe { .. } => None,
        };
        // A heartbeat every third of the TTL; each one gives up before the next is due.
        let period = ttl.map_or(Duration::from_secs(3600), |ttl| ttl / 3);
        // A third of the period an attempt, so a node that hangs leaves time to try another.
        let heartbeats = self.client.with_policy(RetryPolicy {
            attempt_timeout: period / 3,
            deadline: period,
            first_pause: Duration::from_millis(50),
            max_pause: Duration::from_millis(500),
        });
        let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.views.mark_changed();
        loop {
            tokio::select! {
                _ = until_health(&mut self.app_healthy, false) => return Lost::Unhealthy,
                changed = self.views.changed() => {
                    if changed.is_err() {
                        // The view follower stopped: the agent is stopping.
                        std::future::pending::<()>().await;
                    }
                    let observed = self.views.borrow_and_update().clone();
                    let seen = observed.as_ref().map_or(Seen::Unknown, |o| seen(o, &self.identity, joined));
                    match seen {
                        Seen::Absent => return Lost::Removed,
                        Seen::Other => return Lost::Superseded,
                        Seen::Present | Seen::Unknown => {}
                    }
                }
                _ = ticks.tick(), if ttl.is_some() => {
                    match heartbeats.heartbeat(&self.group, &self.identity.id).await {
                        Ok(_) => state.metrics.heartbeats.with_label_values(&["ok"]).inc(),
                        Err(error) if error.kind() == ErrorKind::NotFound => {
                            state.metrics.heartbeats.with_label_values(&["not_found"]).inc();
                            return Lost::Removed;
                        }
                        Err(error) => {
                            state.metrics.heartbeats.with_label_values(&["error"]).inc();
                            tracing::warn!(group = %self.group, member = %self.identity.id, %error, "heartbeat failed");
                        }
                    }
                }
            }
        }
    }

    /// Waits until a view shows the agent's id held by no one (it comes after the view that
    /// showed another instance holding it, so it is later).
    async fn until_free(&mut self) {
        loop {
            if self.views.changed().await.is_err() {
                return std::future::pending().await;
            }
            let free = self
                .views
                .borrow_and_update()
                .as_ref()
                .is_some_and(|o| o.view.members.iter().all(|m| m.id != self.identity.id));
            if free {
                return;
            }
        }
    }

    /// Leaves with `incarnation`, within the leave timeout: only that incarnation can be removed.
    async fn leave(&self, incarnation: u64) {
        let client = self.client.with_policy(RetryPolicy {
            attempt_timeout: self.leave_timeout / 3,
            deadline: self.leave_timeout,
            ..RetryPolicy::default()
        });
        let (group, member) = (&self.group, &self.identity.id);
        let left = tokio::time::timeout(self.leave_timeout, client.leave(group, member, Some(incarnation))).await;
        match left {
            Ok(Ok(answer)) => {
                tracing::info!(group = %group, member = %member, incarnation, revision = answer.revision, "left")
            }
            Ok(Err(error)) if error.kind() == ErrorKind::NotFound => {
                tracing::info!(group = %group, member = %member, incarnation, "left already: not a member")
            }
            Ok(Err(error)) if error.kind() == ErrorKind::Conflict => {
                tracing::info!(
                    group = %group,
                    member = %member,
                    incarnation,
                    "not left: a newer incarnation holds the id"
                )
            }
            Ok(Err(error)) => tracing::warn!(group = %group, member = %member, incarnation, %error, "leave failed"),
            Err(_) => tracing::warn!(group = %group, member = %member, incarnation, "leave timed out"),
        }
    }
}

/// What `observed` says of the membership `joined` of `identity`.
fn seen(observed: &Observed, identity: &Identity, joined: Joined) -> Seen {
    let view = &observed.view;
    // A view at the join's revision or later shows it; so does any view of a stream asked for
    // after the join was acknowledged (its first view is linearizable), whatever its revision:
    // a GM cluster started over from empty counts revisions from the start again.
    if view.revision < joined.revision && observed.stream_asked < joined.acknowledged {
        return Seen::Unknown;
    }
    match view.members.iter().find(|m| m.id == identity.id) {
        None => Seen::Absent,
        Some(m) if m.instance == identity.spec.instance => Seen::Present,
        Some(_) => Seen::Other,
    }
}

/// Waits until the app's health is `healthy`; forever if the check stopped (the agent stops).
async fn until_health(app_healthy: &mut watch::Receiver<bool>, healthy: bool) {
    if app_healthy.wait_for(|h| *h == healthy).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::membership::{Member, MemberId};
    use crate::wire::GroupView;

    fn identity(instance: &str) -> Identity {
        let spec = json!({"address": "10.0.0.1:9021", "instance": instance});
        Identity { id: MemberId::parse("w1").unwrap(), spec: serde_json::from_value(spec).unwrap() }
    }

    fn observed(revision: u64, members: &[(&str, &str)], stream_asked: Instant) -> Observed {
        let members = members
            .iter()
            .map(|(id, instance)| {
                serde_json::from_value::<Member>(json!({
                    "id": id, "group": "g", "address": "10.0.0.1:9021", "metadata": {}, "instance": instance,
                    "incarnation": 1, "joined_at": "2026-01-01T00:00:00.000Z", "responsible_node": 1,
                    "failure_detection": {"mode": "probe", "path": "/gm/heartbeat"}
                }))
                .unwrap()
            })
            .collect();
        Observed { view: GroupView { group: GroupName::parse("g").unwrap(), revision, members }, stream_asked }
    }

    #[test]
    fn a_view_tells_present_absent_or_superseded_only_once_it_shows_the_join() {
        let me = identity("mine");
        let before = Instant::now();
        let joined = Joined { incarnation: 4, revision: 10, acknowledged: before + Duration::from_millis(5) };
        let old_stream = before;
        let new_stream = before + Duration::from_millis(10);
        assert_eq!(seen(&observed(9, &[], old_stream), &me, joined), Seen::Unknown, "older than the join");
        assert_eq!(seen(&observed(10, &[("w1", "mine")], old_stream), &me, joined), Seen::Present);
        assert_eq!(seen(&observed(12, &[("a", "x")], old_stream), &me, joined), Seen::Absent);
        assert_eq!(seen(&observed(12, &[("w1", "theirs")], old_stream), &me, joined), Seen::Other);
        // A stream asked for after the join: trusted whatever its revision (a cluster started over).
        assert_eq!(seen(&observed(3, &[], new_stream), &me, joined), Seen::Absent);
    }

    #[test]
    fn only_a_status_that_never_joined_is_unready() {
        assert!(!Status::Waiting { joined_once: false }.joined_once());
        assert!(Status::Waiting { joined_once: true }.joined_once());
        assert!(Status::Member { incarnation: 1 }.joined_once());
        assert!(Status::Superseded.joined_once());
    }
}
