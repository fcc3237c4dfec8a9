//! The voter set as a function of the StatefulSet, kept so by the leader alone (a leader duty),
//! one membership change at a time, in the manner of a Kubernetes controller's reconcile loop:
//! observe (the watched replicas and pods, the id book, the Raft membership), take the one step
//! that brings the cluster closer, and observe again.
//!
//! - A pod of an ordinal below `replicas` whose id is not in the cluster joins as a learner, and
//!   becomes a voter only once it has caught up with the leader's log. If its ordinal still has
//!   an older id among the voters (its disk was lost and it claimed a new generation), the same
//!   change replaces that id: an id is never reused with empty state.
//! - On a scale-down, the ids of ordinals at or above `replicas` are marked retired in the id
//!   book, then removed, one at a time, the leader last (openraft makes a leader that removed
//!   itself step down once that is committed).
//! - Nothing else removes a voter: a pod that restarts, or stays away, keeps its vote; SIGTERM
//!   is never a leave and there is no time-based removal.
//! - While the watches are not in sync with the API server, or the id book cannot be read,
//!   nothing is decided: a step is never taken on a stale view.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::events::Recorder;
use super::ids::{self, Book};
use super::kubernetes::{Kubernetes, Observed};
use crate::membership::NodeId;
use crate::node::voters::{Replication, VoterSet};
use crate::node::Node;

/// A learner is caught up, and may vote, once it holds the leader's log up to this many entries
/// (each a batch of writes) behind the leader's last one.
pub const CAUGHT_UP_ENTRIES: u64 = 64;

/// How often the leader looks again when nothing changed.
const PERIOD: Duration = Duration::from_millis(500);

/// Everything a step is decided on.
#[derive(Clone, Debug)]
pub struct View {
    pub observed: Observed,
    pub book: Book,
    pub voters: VoterSet,
    pub leader: NodeId,
    pub replication: Replication,
}

/// One change towards the StatefulSet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Finish the joint configuration a former leader left, moving to these voters.
    FinishJoint(BTreeSet<NodeId>),
    /// Add the pod of `ordinal`, running as `id`, as a learner.
    AddLearner {
        id: NodeId,
        ordinal: u64,
    },
    /// Make caught-up learner `id` a voter: the new voter set, without older ids of its ordinal
    /// (but with the leader, which leaves in a later step).
    Promote {
        id: NodeId,
        voters: BTreeSet<NodeId>,
    },
    /// Mark `id` retired in the id book, before removing it on a scale-down.
    Retire {
        id: NodeId,
    },
    /// Remove voter `id`: the voter set without it.
    RemoveVoter {
        id: NodeId,
        voters: BTreeSet<NodeId>,
    },
    RemoveLearner {
        id: NodeId,
    },
}

/// The next step, or `None` when the voters match the StatefulSet (or it has 0 replicas: the
/// voters are kept for the way back up).
pub fn next_step(view: &View) -> Option<Step> {
    let replicas = view.observed.replicas;
    if replicas == 0 {
        return None;
    }
    if let Some(target) = &view.voters.joint_target {
        return Some(Step::FinishJoint(target.clone()));
    }
    let VoterSet { voters, learners, .. } = &view.voters;
    let wanted: BTreeMap<u64, NodeId> =
        (0..replicas).filter_map(|ordinal| Some((ordinal, view.book.current(ordinal)?))).collect();
    let caught_up = |id: NodeId| {
        view.replication.matched.get(&id).is_some_and(|&m| m + CAUGHT_UP_ENTRIES >= view.replication.last_log_index)
    };
    // A retire comes first where a removal needs one, so a pod whose volume outlives its removal
    // finds it retired.
    let retire_or = |id: NodeId, removal: Step| {
        let ordinal = ids::ordinal_of(id);
        let claimed = view.book.get(ordinal).is_some_and(|c| c.generation == ids::generation_of(id) && !c.retired);
        if ordinal >= replicas && claimed {
            Step::Retire { id }
        } else {
            removal
        }
    };

    for (&ordinal, &id) in &wanted {
        if !voters.contains(&id) && !learners.contains(&id) && view.observed.pods.contains(&ordinal) {
            return Some(Step::AddLearner { id, ordinal });
        }
    }
    for (&ordinal, &id) in &wanted {
        if learners.contains(&id) && caught_up(id) {
            let mut next: BTreeSet<NodeId> =
                voters.iter().copied().filter(|&v| ids::ordinal_of(v) != ordinal || v == view.leader).collect();
            next.insert(id);
            return Some(Step::Promote { id, voters: next });
        }
    }
    for &id in learners {
        if ids::ordinal_of(id) >= replicas || view.book.is_superseded(id) {
            return Some(retire_or(id, Step::RemoveLearner { id }));
        }
    }
    // Voters of ordinals scaled away, and older ids whose ordinal's current id already votes
    // (only the leader can be one: a promotion keeps it); the leader last.
    let leaving = |id: NodeId| {
        let ordinal = ids::ordinal_of(id);
        ordinal >= replicas
            || (view.book.is_superseded(id) && wanted.get(&ordinal).is_some_and(|current| voters.contains(current)))
    };
    let mut candidates: Vec<NodeId> = voters.iter().copied().filter(|&id| leaving(id)).collect();
    candidates.sort_by_key(|&id| id == view.leader);
    let id = *candidates.first()?;
    let rest: BTreeSet<NodeId> = voters.iter().copied().filter(|&v| v != id).collect();
    if rest.is_empty() {
        return None;
    }
    Some(retire_or(id, Step::RemoveVoter { id, voters: rest }))
}

impl Step {
    /// The Kubernetes event that reports this step once taken: its reason and message, naming
    /// each node with its pod (`pod(id)`).
    pub fn event(&self, pod: impl Fn(NodeId) -> String) -> (&'static str, String) {
        let node = |id: NodeId| format!("node {id} (pod {})", pod(id));
        let listed = |ids: &BTreeSet<NodeId>| ids.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
        match self {
            Step::FinishJoint(voters) => (
                "JointConfigFinished",
                format!("finished the voter change a former leader left; voters {}", listed(voters)),
            ),
            Step::AddLearner { id, .. } => ("LearnerAdded", format!("{} added as a learner", node(*id))),
            Step::Promote { id, voters } => {
                ("VoterAdded", format!("{} caught up and became a voter; voters {}", node(*id), listed(voters)))
            }
            Step::Retire { id } => ("NodeRetired", format!("{} retired in the id book, to be removed", node(*id))),
            Step::RemoveVoter { id, voters } => {
                ("VoterRemoved", format!("{} removed from the voters; voters {}", node(*id), listed(voters)))
            }
            Step::RemoveLearner { id } => ("LearnerRemoved", format!("{} removed as a learner", node(*id))),
        }
    }
}

/// The leader duty: reconciles until `cancel` (the end of this node's leadership). Each step
/// taken is reported as an event on the StatefulSet.
pub async fn run(node: Arc<Node>, kube: Kubernetes, cancel: CancellationToken) {
    let mut events = Recorder::new(&kube);
    let mut paused: Option<&str> = None;
    loop {
        let view = match observe(&node, &kube).await {
            Ok(view) => view,
            Err(why) => {
                if paused != Some(why) {
                    tracing::warn!(reason = why, "reconciling the voters paused");
                    paused = Some(why);
                }
                if sleep_or_cancel(&cancel, PERIOD).await {
                    return;
                }
                continue;
            }
        };
        if paused.take().is_some() {
            tracing::info!("reconciling the voters resumed");
        }
        let Some(step) = next_step(&view) else {
            if sleep_or_cancel(&cancel, PERIOD).await {
                return;
            }
            continue;
        };
        tracing::info!(step = ?step, replicas = view.observed.replicas, voters = ?view.voters.voters, "reconciling the voters");
        let done = tokio::select! {
            () = cancel.cancelled() => return,
            done = take(&node, &kube, &step) => done,
        };
        match done {
            Ok(()) => {
                let (reason, message) = step.event(|id| kube.settings().node_info(ids::ordinal_of(id)).name);
                events.record(reason, message).await;
            }
            Err(error) => {
                tracing::warn!(step = ?step, %error, "a reconcile step failed; will look again");
                if sleep_or_cancel(&cancel, PERIOD).await {
                    return;
                }
            }
        }
    }
}

/// What the leader sees now; an `Err` names why it cannot decide.
async fn observe(node: &Node, kube: &Kubernetes) -> Result<View, &'static str> {
    let observed = kube.observed().ok_or("the watches of the StatefulSet and its pods are not in sync")?;
    let (book, _) = kube.read_book().await.map_err(|_| "the id book cannot be read")?;
    let replication = node.replication().ok_or("this node no longer leads")?;
    Ok(View { observed, book, voters: node.voter_set(), leader: node.id, replication })
}

async fn take(node: &Node, kube: &Kubernetes, step: &Step) -> Result<(), String> {
    let failed = |e: crate::node::NodeError| e.to_string();
    match step {
        Step::FinishJoint(voters) => node.change_voters(voters.clone()).await.map_err(failed),
        Step::AddLearner { id, ordinal } => {
            node.add_learner(*id, kube.settings().node_info(*ordinal)).await.map_err(failed)
        }
        Step::Promote { voters, .. } | Step::RemoveVoter { voters, .. } => {
            node.change_voters(voters.clone()).await.map_err(failed)
        }
        Step::Retire { id } => kube.retire(*id).await.map_err(|e| e.to_string()),
        Step::RemoveLearner { id } => node.remove_learner(*id).await.map_err(failed),
    }
}

/// Sleeps `period`; `true` if `cancel` came first.
async fn sleep_or_cancel(cancel: &CancellationToken, period: Duration) -> bool {
    tokio::select! {
        () = cancel.cancelled() => true,
        () = tokio::time::sleep(period) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::ids::Claim;

    /// A view of `replicas`, pods of `pods` running, the book at generation 0 for `claimed`
    /// ordinals, voters and learners as given, leader `leader`, every node caught up.
    fn view(replicas: u64, pods: &[u64], claimed: &[u64], voters: &[NodeId], learners: &[NodeId]) -> View {
        let mut book = Book::default();
        for &ordinal in claimed {
            book.set(ordinal, Claim { generation: 0, token: format!("t{ordinal}"), retired: false });
        }
        let members = voters.iter().chain(learners).map(|&id| (id, 100)).collect();
        View {
            observed: Observed { replicas, pods: pods.iter().copied().collect() },
            book,
            voters: VoterSet {
                voters: voters.iter().copied().collect(),
                learners: learners.iter().copied().collect(),
                joint_target: None,
            },
            leader: voters[0],
            replication: Replication { last_log_index: 100, matched: members },
        }
    }

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_matching_cluster_is_left_alone() {
        assert_eq!(next_step(&view(3, &[0, 1, 2], &[0, 1, 2], &[1, 2, 3], &[])), None);
        // Pods away (restarting, or never started): their voters stay.
        assert_eq!(next_step(&view(3, &[0], &[0, 1, 2], &[1, 2, 3], &[])), None);
        assert_eq!(next_step(&view(3, &[0, 1, 2], &[], &[1, 2, 3], &[])), None);
        // Scaled to zero: the voters are kept for the way back.
        assert_eq!(next_step(&view(0, &[], &[0, 1, 2], &[1, 2, 3], &[])), None);
    }

    #[test]
    fn scale_up_adds_learners_then_promotes_caught_up_ones() {
        let v = view(5, &[0, 1, 2, 3, 4], &[0, 1, 2, 3, 4], &[1, 2, 3], &[]);
        assert_eq!(next_step(&v), Some(Step::AddLearner { id: 4, ordinal: 3 }));
        // A pod without an IP, or without a claimed id, is not added yet.
        assert_eq!(next_step(&view(5, &[0, 1, 2], &[0, 1, 2, 3, 4], &[1, 2, 3], &[])), None);
        assert_eq!(next_step(&view(5, &[0, 1, 2, 3, 4], &[0, 1, 2], &[1, 2, 3], &[])), None);
        let mut v = view(5, &[0, 1, 2, 3, 4], &[0, 1, 2, 3, 4], &[1, 2, 3], &[4, 5]);
        assert_eq!(next_step(&v), Some(Step::Promote { id: 4, voters: set(&[1, 2, 3, 4]) }));
        // Not caught up: stays a learner.
        v.replication.matched.insert(4, 10);
        v.replication.matched.remove(&5);
        assert_eq!(next_step(&v), None);
    }

    #[test]
    fn scale_down_retires_then_removes_one_at_a_time_the_leader_last() {
        let mut v = view(3, &[0, 1, 2, 3, 4], &[0, 1, 2, 3, 4], &[5, 1, 2, 3, 4], &[]);
        assert_eq!(v.leader, 5);
        assert_eq!(next_step(&v), Some(Step::Retire { id: 4 }));
        v.book.set(3, Claim { generation: 0, token: "t3".into(), retired: true });
        assert_eq!(next_step(&v), Some(Step::RemoveVoter { id: 4, voters: set(&[1, 2, 3, 5]) }));
        v.voters.voters.remove(&4);
        assert_eq!(next_step(&v), Some(Step::Retire { id: 5 }));
        v.book.set(4, Claim { generation: 0, token: "t4".into(), retired: true });
        assert_eq!(next_step(&v), Some(Step::RemoveVoter { id: 5, voters: set(&[1, 2, 3]) }));
    }

    #[test]
    fn a_new_generation_replaces_the_old_id_through_a_learner() {
        let mut v = view(3, &[0, 1, 2], &[0, 1, 2], &[1, 2, 3], &[]);
        v.book.set(2, Claim { generation: 1, token: "new".into(), retired: false });
        assert_eq!(next_step(&v), Some(Step::AddLearner { id: 1003, ordinal: 2 }));
        v.voters.learners.insert(1003);
        v.replication.matched.insert(1003, 0);
        assert_eq!(next_step(&v), None, "the old voter stays until the new one has caught up");
        v.replication.matched.insert(1003, 100);
        assert_eq!(next_step(&v), Some(Step::Promote { id: 1003, voters: set(&[1, 2, 1003]) }));
    }

    #[test]
    fn the_leaders_own_old_id_leaves_after_its_successor_votes() {
        let mut v = view(3, &[0, 1, 2], &[0, 1, 2], &[1, 2, 3], &[1001]);
        v.book.set(0, Claim { generation: 1, token: "new".into(), retired: false });
        assert_eq!(next_step(&v), Some(Step::Promote { id: 1001, voters: set(&[1, 2, 3, 1001]) }));
        v.voters.voters.insert(1001);
        v.voters.learners.clear();
        assert_eq!(next_step(&v), Some(Step::RemoveVoter { id: 1, voters: set(&[2, 3, 1001]) }));
    }

    #[test]
    fn each_step_is_reported_naming_its_node_and_pod() {
        let pod = |id: NodeId| format!("gm-cluster-{}", ids::ordinal_of(id));
        let (reason, message) = Step::AddLearner { id: 4, ordinal: 3 }.event(pod);
        assert_eq!((reason, message.as_str()), ("LearnerAdded", "node 4 (pod gm-cluster-3) added as a learner"));
        let (reason, message) = Step::Promote { id: 4, voters: set(&[1, 2, 3, 4]) }.event(pod);
        assert_eq!(reason, "VoterAdded");
        assert_eq!(message, "node 4 (pod gm-cluster-3) caught up and became a voter; voters 1, 2, 3, 4");
        assert_eq!(Step::Retire { id: 1005 }.event(pod).0, "NodeRetired");
        assert!(Step::Retire { id: 1005 }.event(pod).1.starts_with("node 1005 (pod gm-cluster-4)"));
        assert_eq!(Step::RemoveVoter { id: 5, voters: set(&[1, 2, 3]) }.event(pod).0, "VoterRemoved");
        assert_eq!(Step::RemoveLearner { id: 5 }.event(pod).0, "LearnerRemoved");
        assert_eq!(Step::FinishJoint(set(&[1, 2])).event(pod).0, "JointConfigFinished");
    }

    #[test]
    fn stray_learners_leave_and_joint_configs_are_finished() {
        let v = view(3, &[0, 1, 2], &[0, 1, 2, 3], &[1, 2, 3], &[4]);
        assert_eq!(next_step(&v), Some(Step::Retire { id: 4 }));
        // Ordinal 1's pod claimed generation 2 and is away again before it was added.
        let mut v = view(3, &[0, 2], &[0, 1, 2], &[1, 2, 3], &[]);
        v.book.set(1, Claim { generation: 2, token: "x".into(), retired: false });
        v.voters.learners.insert(1002);
        v.replication.matched.insert(1002, 0);
        assert_eq!(next_step(&v), Some(Step::RemoveLearner { id: 1002 }), "a superseded learner leaves");
        let mut v = view(3, &[0, 1, 2], &[0, 1, 2], &[1, 2, 3], &[]);
        v.voters.joint_target = Some(set(&[1, 2]));
        assert_eq!(next_step(&v), Some(Step::FinishJoint(set(&[1, 2]))));
    }
}
