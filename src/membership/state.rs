//! The replicated state: every group and its members, changed only by `apply`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::command::{Command, LeaveReason, NodeAdvert, Outcome};
use super::model::{GroupSummary, GroupView, Member, NodeId};
use super::names::{GroupName, MemberId};

/// A group's members by id, in id order (a view's order). Each record sits behind an `Arc`: a
/// B-tree node then holds small keys and pointers, so finding an id touches a few cache lines
/// rather than one per record compared, and a copy of the group (made on write while a snapshot
/// or a view being encoded holds it) copies pointers, not records. Stored as a map from id to
/// record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Group {
    revision: u64,
    members: BTreeMap<MemberId, Arc<Member>>,
}

impl Group {
    fn members(&self) -> impl ExactSizeIterator<Item = &Member> + Clone {
        self.members.values().map(|m| &**m)
    }

    fn member(&self, id: &MemberId) -> Option<&Member> {
        self.members.get(id).map(|m| &**m)
    }
}

/// One group at its revision, shared with the state that held it: taking one under the state's
/// lock costs a pointer, and it can be read after the lock is released (to encode a view
/// without holding up the apply path). While one is held, the group's next change copies the
/// group, so holders let go once they are done.
#[derive(Clone, Debug)]
pub struct GroupSnapshot(Arc<Group>);

impl GroupSnapshot {
    /// The revision of the group's last change.
    pub fn revision(&self) -> u64 {
        self.0.revision
    }

    /// The members, ordered by id as in a view.
    pub fn members(&self) -> impl ExactSizeIterator<Item = &Member> + Clone {
        self.0.members()
    }
}

/// All groups at `revision`: the number of changes applied so far. Each group sits behind an
/// `Arc`, copied on write: a clone of the whole state (a snapshot's) costs one pointer per
/// group, and a change after it copies only the group it touches.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Stored")]
pub struct MembershipState {
    revision: u64,
    cluster_id: Option<String>,
    probers: Vec<NodeId>,
    adverts: BTreeMap<NodeId, NodeAdvert>,
    groups: BTreeMap<GroupName, Arc<Group>>,
    /// Kept as members come and go, so the gauges read them without a walk over every member;
    /// derived, so not stored.
    #[serde(skip)]
    counts: Counts,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Counts {
    members: usize,
    /// Probe-mode members by their responsible node.
    responsible: BTreeMap<NodeId, usize>,
}

impl Counts {
    fn of(groups: &BTreeMap<GroupName, Arc<Group>>) -> Counts {
        let mut counts = Counts::default();
        for m in groups.values().flat_map(|g| g.members()) {
            counts.add(m);
        }
        counts
    }

    fn add(&mut self, m: &Member) {
        self.members += 1;
        if let Some(node) = m.responsible_node {
            *self.responsible.entry(node).or_insert(0) += 1;
        }
    }

    fn remove(&mut self, m: &Member) {
        self.members -= 1;
        if let Some(node) = m.responsible_node {
            if let Some(n) = self.responsible.get_mut(&node) {
                *n -= 1;
                if *n == 0 {
                    self.responsible.remove(&node);
                }
            }
        }
    }
}

/// The state as a snapshot stores it: without what is derived.
#[derive(Deserialize)]
struct Stored {
    revision: u64,
    cluster_id: Option<String>,
    probers: Vec<NodeId>,
    adverts: BTreeMap<NodeId, NodeAdvert>,
    groups: BTreeMap<GroupName, Arc<Group>>,
}

impl From<Stored> for MembershipState {
    fn from(s: Stored) -> Self {
        let Stored { revision, cluster_id, probers, adverts, mut groups } = s;
        // Each record read back has a group name of its own: point them all at the group's one.
        for (name, g) in &mut groups {
            for m in Arc::make_mut(g).members.values_mut() {
                Arc::make_mut(m).group = name.clone();
            }
        }
        let counts = Counts::of(&groups);
        MembershipState { revision, cluster_id, probers, adverts, groups, counts }
    }
}

impl MembershipState {
    /// Applies `command`. A command that changes anything takes the next revision; one that
    /// changes nothing (a retried join, a leave of a non-member) leaves the revision as it is.
    ///
    /// Incarnations never repeat for one id in one group, without keeping tombstones: a first join
    /// takes the revision of the join, and a re-join adds one. Each re-join uses up a revision, so
    /// a member's incarnation never exceeds the revision of its last change, and a later first join
    /// (at a larger revision) starts above every incarnation the id had before.
    pub fn apply(&mut self, command: &Command) -> Outcome {
        let next = self.revision + 1;
        let (outcome, changed) = match command {
            Command::Join { group, id, spec, at } => {
                let responsible_node =
                    if spec.failure_detection.is_probe() { responsible(&self.probers, group, id) } else { None };
                let incarnation = match self.groups.get(group).and_then(|g| g.members.get(id)) {
                    Some(current) if current.matches(spec) => {
                        return Outcome::Joined { member: Arc::clone(current), created: false, changed: false };
                    }
                    Some(current) => current.incarnation + 1,
                    None => next,
                };
                // The state's own copy of the name, so every record of the group shares one.
                let name = self.groups.get_key_value(group).map_or_else(|| group.clone(), |(name, _)| name.clone());
                let g = Arc::make_mut(self.groups.entry(name.clone()).or_default());
                let member = Arc::new(Member {
                    id: id.clone(),
                    group: name,
                    address: spec.address.clone(),
                    metadata: spec.metadata.clone(),
                    instance: spec.instance.clone(),
                    incarnation,
                    joined_at: *at,
                    responsible_node,
                    failure_detection: spec.failure_detection.clone(),
                });
                let replaced = g.members.insert(id.clone(), Arc::clone(&member));
                if let Some(old) = &replaced {
                    self.counts.remove(old);
                }
                self.counts.add(&member);
                let created = replaced.is_none();
                g.revision = next;
                (Outcome::Joined { member, created, changed: true }, true)
            }
            Command::Leave { group, id, incarnation, reason: _ } => {
                let Some(g) = self.groups.get_mut(group) else {
                    return Outcome::NotMember;
                };
                match g.member(id) {
                    None => return Outcome::NotMember,
                    Some(current) if incarnation.is_some_and(|n| n != current.incarnation) => {
                        return Outcome::IncarnationMismatch { current: current.incarnation };
                    }
                    Some(_) => {}
                }
                let g = Arc::make_mut(g);
                let Some(member) = g.members.remove(id) else {
                    return Outcome::NotMember;
                };
                self.counts.remove(&member);
                g.revision = next;
                if g.members.is_empty() {
                    self.groups.remove(group);
                }
                (Outcome::Left { member }, true)
            }
            Command::InitCluster { cluster_id } => {
                let changed = self.cluster_id.is_none();
                self.cluster_id.get_or_insert_with(|| cluster_id.clone());
                (Outcome::Done, changed)
            }
            Command::SetProbers { nodes } => {
                let mut nodes = nodes.clone();
                nodes.sort_unstable();
                nodes.dedup();
                let changed = nodes != self.probers;
                if changed {
                    self.probers = nodes;
                    self.reassign(next);
                    self.counts = Counts::of(&self.groups);
                }
                (Outcome::Done, changed)
            }
            Command::AdvertiseNode { node, advert } => {
                let changed = self.adverts.get(node) != Some(advert);
                self.adverts.insert(*node, advert.clone());
                (Outcome::Done, changed)
            }
        };
        if changed {
            self.revision = next;
        }
        outcome
    }

    /// Hands every probe-mode member to its node under the current probers.
    fn reassign(&mut self, revision: u64) {
        for (name, g) in &mut self.groups {
            let moves = |m: &Member| {
                m.failure_detection.is_probe() && m.responsible_node != responsible(&self.probers, name, &m.id)
            };
            if !g.members().any(moves) {
                continue;
            }
            let g = Arc::make_mut(g);
            // Only the records that move are copied (when a snapshot shares them).
            for m in g.members.values_mut().filter(|m| moves(m)) {
                Arc::make_mut(m).responsible_node = responsible(&self.probers, name, &m.id);
            }
            g.revision = revision;
        }
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn cluster_id(&self) -> Option<&str> {
        self.cluster_id.as_deref()
    }

    pub fn advert(&self, node: NodeId) -> Option<&NodeAdvert> {
        self.adverts.get(&node)
    }

    pub fn probers(&self) -> &[NodeId] {
        &self.probers
    }

    /// The group's revision, or `None` if it has no members.
    pub fn group_revision(&self, group: &GroupName) -> Option<u64> {
        self.groups.get(group).map(|g| g.revision)
    }

    /// The group as it is now, as a shared handle that outlives the caller's lock on the state;
    /// `None` if it has no members.
    pub fn group_snapshot(&self, group: &GroupName) -> Option<GroupSnapshot> {
        self.groups.get(group).map(|g| GroupSnapshot(Arc::clone(g)))
    }

    pub fn view(&self, group: &GroupName) -> Option<GroupView> {
        self.groups.get(group).map(|g| GroupView {
            group: group.clone(),
            revision: g.revision,
            members: g.members().cloned().collect(),
        })
    }

    pub fn member(&self, group: &GroupName, id: &MemberId) -> Option<&Member> {
        self.groups.get(group).and_then(|g| g.member(id))
    }

    pub fn groups(&self) -> Vec<GroupSummary> {
        self.groups
            .iter()
            .map(|(name, g)| GroupSummary { group: name.clone(), revision: g.revision, size: g.members.len() })
            .collect()
    }

    /// How many probe-mode members each node is responsible for.
    pub fn responsible_counts(&self) -> &BTreeMap<NodeId, usize> {
        &self.counts.responsible
    }

    /// Every member, group by group.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.groups.values().flat_map(|g| g.members())
    }

    /// The probe-mode members `node` is responsible for.
    pub fn probed_by(&self, node: NodeId) -> impl Iterator<Item = &Member> {
        self.members().filter(move |m| m.responsible_node == Some(node))
    }

    pub fn member_count(&self) -> usize {
        self.counts.members
    }
}

/// Rendezvous hashing: the node with the highest score for this member. Moving a node in or out
/// only moves the members whose winner changes.
fn responsible(nodes: &[NodeId], group: &GroupName, id: &MemberId) -> Option<NodeId> {
    nodes.iter().copied().max_by_key(|&node| score(group, id, node))
}

/// FNV-1a over the key, then a SplitMix64 finalizer: stable across builds and platforms, unlike
/// std's hasher, because every node must compute the same assignment.
fn score(group: &GroupName, id: &MemberId, node: NodeId) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = group.as_str().bytes().chain([0xff]).chain(id.as_str().bytes()).chain([0xff]).chain(node.to_le_bytes());
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

impl LeaveReason {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Left => "left",
            LeaveReason::Failed => "failed",
            LeaveReason::Expired => "expired",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::model::{FailureDetection, MemberSpec, Timestamp};

    fn g(s: &str) -> GroupName {
        GroupName::parse(s).unwrap()
    }
    fn m(s: &str) -> MemberId {
        MemberId::parse(s).unwrap()
    }
    fn spec(json: serde_json::Value) -> MemberSpec {
        serde_json::from_value(json).unwrap()
    }
    fn join(group: &str, id: &str, spec_json: serde_json::Value, at: i64) -> Command {
        Command::Join { group: g(group), id: m(id), spec: spec(spec_json), at: Timestamp::from_millis(at) }
    }
    fn leave(group: &str, id: &str, incarnation: Option<u64>) -> Command {
        Command::Leave { group: g(group), id: m(id), incarnation, reason: LeaveReason::Left }
    }
    fn joined(o: Outcome) -> (Member, bool, bool) {
        match o {
            Outcome::Joined { member, created, changed } => (Arc::unwrap_or_clone(member), created, changed),
            other => panic!("expected Joined, got {other:?}"),
        }
    }
    fn addr(a: &str) -> serde_json::Value {
        serde_json::json!({ "address": a })
    }

    #[test]
    fn first_join_creates_group_and_member() {
        let mut s = MembershipState::default();
        s.apply(&Command::InitCluster { cluster_id: "c".into() });
        let (member, created, changed) = joined(s.apply(&join("orders", "w1", addr("10.0.0.1:80"), 1000)));
        assert!(created && changed);
        assert_eq!(member.incarnation, 2, "the revision of the join");
        assert_eq!(member.joined_at, Timestamp::from_millis(1000));
        assert_eq!(member.responsible_node, None, "no probers yet");
        assert_eq!(s.revision(), 2);
        assert_eq!(s.group_revision(&g("orders")), Some(2));
        let view = s.view(&g("orders")).unwrap();
        assert_eq!(view.members, vec![member]);
        assert_eq!(s.groups(), vec![GroupSummary { group: g("orders"), revision: 2, size: 1 }]);
    }

    #[test]
    fn identical_join_is_a_no_op() {
        let mut s = MembershipState::default();
        let body = serde_json::json!({"address": "10.0.0.1:80", "metadata": {"zone": "a"}});
        let (first, ..) = joined(s.apply(&join("g", "w", body.clone(), 10)));
        let (again, created, changed) = joined(s.apply(&join("g", "w", body, 20)));
        assert!(!created && !changed);
        assert_eq!(again, first, "same record, same joined_at and incarnation");
        assert_eq!(s.group_revision(&g("g")), Some(1), "a no-op does not change the group");
        assert_eq!(s.revision(), 1, "nor the revision");
    }

    #[test]
    fn defaults_make_explicit_and_implicit_bodies_equal() {
        let mut s = MembershipState::default();
        joined(s.apply(&join("g", "w", addr("h:1"), 0)));
        let explicit = serde_json::json!({"address": "h:1", "metadata": {}, "instance": null,
            "failure_detection": {"mode": "probe", "path": "/gm/heartbeat"}});
        let (_, _, changed) = joined(s.apply(&join("g", "w", explicit, 0)));
        assert!(!changed);
    }

    #[test]
    fn any_difference_is_a_rejoin_that_bumps_incarnation() {
        let mut s = MembershipState::default();
        s.apply(&Command::InitCluster { cluster_id: "c".into() });
        s.apply(&Command::SetProbers { nodes: vec![1] });
        let (first, ..) = joined(s.apply(&join("g", "w", addr("h:1"), 0)));
        assert_eq!(first.incarnation, 3);
        let changes = [
            addr("h:2"),
            serde_json::json!({"address": "h:2", "metadata": {"k": "v"}}),
            serde_json::json!({"address": "h:2", "metadata": {"k": "v"}, "instance": "i1"}),
            serde_json::json!({"address": "h:2", "metadata": {"k": "v"}, "instance": "i2"}),
            serde_json::json!({"address": "h:2", "metadata": {"k": "v"}, "instance": "i2",
                "failure_detection": {"mode": "lease", "ttl_ms": 1000}}),
        ];
        for (i, body) in changes.into_iter().enumerate() {
            let at = 100 + i as i64;
            let (member, created, changed) = joined(s.apply(&join("g", "w", body, at)));
            assert!(!created && changed);
            assert_eq!(member.incarnation, 3 + 1 + i as u64);
            assert_eq!(member.joined_at, Timestamp::from_millis(at), "joined_at renewed");
            assert_eq!(s.group_revision(&g("g")), Some(s.revision()));
        }
    }

    #[test]
    fn incarnations_never_repeat_after_leave_and_rejoin() {
        let mut s = MembershipState::default();
        let mut seen = std::collections::BTreeSet::new();
        for round in 0..5 {
            for k in 0..3 {
                let body = serde_json::json!({"address": "h:1", "instance": format!("r{round}k{k}")});
                let (member, ..) = joined(s.apply(&join("g", "w", body, 0)));
                assert!(seen.insert(member.incarnation), "incarnation {} repeated", member.incarnation);
            }
            // Other members' changes in between must not matter either.
            joined(s.apply(&join("g", &format!("other{round}"), addr("h:1"), 0)));
            assert!(matches!(s.apply(&leave("g", "w", None)), Outcome::Left { .. }));
        }
    }

    #[test]
    fn leave_checks_membership_and_incarnation() {
        let mut s = MembershipState::default();
        assert_eq!(s.apply(&leave("g", "w", None)), Outcome::NotMember);
        assert_eq!(s.apply(&leave("g", "w", Some(1))), Outcome::NotMember, "404 whatever N");
        assert_eq!(s.revision(), 0, "a failed leave changes nothing");
        joined(s.apply(&join("g", "w", addr("h:1"), 0)));
        joined(s.apply(&join("g", "v", addr("h:1"), 0)));
        assert_eq!(s.apply(&leave("g", "w", Some(7))), Outcome::IncarnationMismatch { current: 1 });
        assert!(s.member(&g("g"), &m("w")).is_some(), "a stale leave changes nothing");
        assert_eq!((s.group_revision(&g("g")), s.revision()), (Some(2), 2));
        let Outcome::Left { member } = s.apply(&leave("g", "w", Some(1))) else { panic!() };
        assert_eq!(member.id, m("w"));
        assert_eq!(s.group_revision(&g("g")), Some(3));
        assert!(matches!(s.apply(&leave("g", "v", None)), Outcome::Left { .. }));
        assert_eq!(s.view(&g("g")), None, "the last leave removes the group");
        assert!(s.groups().is_empty());
        assert_eq!(s.revision(), 4);
    }

    #[test]
    fn members_in_a_view_are_sorted_by_id() {
        let mut s = MembershipState::default();
        for id in ["c", "a", "B", "b"] {
            joined(s.apply(&join("g", id, addr("h:1"), 0)));
        }
        let ids: Vec<_> = s.view(&g("g")).unwrap().members.iter().map(|m| m.id.to_string()).collect();
        assert_eq!(ids, ["B", "a", "b", "c"]);
    }

    #[test]
    fn probe_members_are_spread_over_probers_and_lease_members_are_not() {
        let mut s = MembershipState::default();
        s.apply(&Command::SetProbers { nodes: vec![3, 1, 2, 2] });
        assert_eq!(s.probers(), &[1, 2, 3]);
        for i in 0..300 {
            joined(s.apply(&join("g", &format!("m{i}"), addr("h:1"), 0)));
        }
        let lease = serde_json::json!({"address": "h:1", "failure_detection": {"mode": "lease"}});
        let (lease, ..) = joined(s.apply(&join("g", "lease", lease, 0)));
        assert_eq!(lease.responsible_node, None);
        let counts = s.responsible_counts();
        assert_eq!(counts.values().sum::<usize>(), 300);
        for node in 1..=3 {
            let n = counts.get(&node).copied().unwrap_or(0);
            assert!((60..=140).contains(&n), "node {node} got {n} of 300");
        }
        // Removing a node moves only its members; the group revision records the change.
        let before: Vec<_> = s.view(&g("g")).unwrap().members;
        s.apply(&Command::SetProbers { nodes: vec![1, 2] });
        let after = s.view(&g("g")).unwrap();
        assert_eq!(after.revision, s.revision());
        for (b, a) in before.iter().zip(&after.members) {
            if b.responsible_node != Some(3) {
                assert_eq!(a.responsible_node, b.responsible_node, "{} moved needlessly", a.id);
            } else if a.failure_detection.is_probe() {
                assert!(matches!(a.responsible_node, Some(1 | 2)));
            }
        }
        assert_eq!(s.responsible_counts().get(&3), None);
        // Setting the same probers again changes nothing.
        let revision = s.revision();
        s.apply(&Command::SetProbers { nodes: vec![2, 1] });
        assert_eq!((s.revision(), s.group_revision(&g("g"))), (revision, Some(revision)));
    }

    #[test]
    fn kept_counts_equal_a_recount_through_joins_leaves_and_handovers() {
        let mut s = MembershipState::default();
        s.apply(&Command::SetProbers { nodes: vec![1, 2, 3] });
        let lease = serde_json::json!({"address": "h:1", "failure_detection": {"mode": "lease"}});
        for i in 0..60 {
            let body = if i % 3 == 0 { lease.clone() } else { addr("h:1") };
            joined(s.apply(&join(&format!("g{}", i % 4), &format!("m{i}"), body, 0)));
        }
        let check = |s: &MembershipState| {
            assert_eq!(s.counts, Counts::of(&s.groups));
            assert_eq!(s.member_count(), s.members().count());
        };
        check(&s);
        // A re-join that turns a probe member into a lease member, leaves, a handover.
        joined(s.apply(&join("g1", "m1", lease, 0)));
        s.apply(&leave("g2", "m2", None));
        s.apply(&leave("g0", "m0", None));
        check(&s);
        s.apply(&Command::SetProbers { nodes: vec![1, 2] });
        check(&s);
        assert_eq!(s.responsible_counts().get(&3), None);
    }

    #[test]
    fn rendezvous_spreads_evenly() {
        let (g1, mut counts) = (g("orders"), [0usize; 5]);
        for i in 0..10_000 {
            let node = responsible(&[1, 2, 3, 4, 5], &g1, &m(&format!("worker-{i}"))).unwrap();
            counts[node as usize - 1] += 1;
        }
        for c in counts {
            assert!((1800..=2200).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn cluster_id_is_set_once() {
        let mut s = MembershipState::default();
        s.apply(&Command::InitCluster { cluster_id: "a".into() });
        s.apply(&Command::InitCluster { cluster_id: "b".into() });
        assert_eq!(s.cluster_id(), Some("a"));
        assert_eq!(s.revision(), 1);
    }

    #[test]
    fn adverts_replace_earlier_ones() {
        let mut s = MembershipState::default();
        let advert = |api: &str| NodeAdvert { name: "gm-0".into(), api_address: api.into() };
        s.apply(&Command::AdvertiseNode { node: 1, advert: advert("a:1") });
        s.apply(&Command::AdvertiseNode { node: 1, advert: advert("a:2") });
        s.apply(&Command::AdvertiseNode { node: 1, advert: advert("a:2") });
        assert_eq!(s.advert(1), Some(&advert("a:2")));
        assert_eq!(s.advert(2), None);
        assert_eq!(s.revision(), 2, "repeating an advert changes nothing");
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut s = MembershipState::default();
        s.apply(&Command::SetProbers { nodes: vec![1, 2, 3] });
        let lease = serde_json::json!({"address": "[::1]:80", "metadata": {"a": "b"},
            "instance": "x", "failure_detection": {"mode": "lease", "ttl_ms": 700}});
        joined(s.apply(&join("g", "w", lease, 42)));
        let back: MembershipState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s, "the counts are derived again on the way back");
        assert_eq!(back.member_count(), 1);
        let rec = serde_json::to_value(s.member(&g("g"), &m("w")).unwrap()).unwrap();
        assert_eq!(rec["failure_detection"], serde_json::json!({"mode": "lease", "ttl_ms": 700}));
        assert_eq!(rec["joined_at"], "1970-01-01T00:00:00.042Z");
        assert_eq!(rec["responsible_node"], serde_json::Value::Null);
    }

    #[test]
    fn members_are_written_as_a_map_by_id() {
        let mut s = MembershipState::default();
        joined(s.apply(&join("g", "b", addr("h:1"), 0)));
        joined(s.apply(&join("g", "a", addr("h:2"), 0)));
        let json = serde_json::to_value(&s).unwrap();
        let members = &json["groups"]["g"]["members"];
        assert_eq!(members.as_object().unwrap().keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(
            (&members["a"]["id"], &members["a"]["group"], &members["a"]["address"]),
            (&"a".into(), &"g".into(), &"h:2".into())
        );
        // A re-join replaces the record under its id.
        joined(s.apply(&join("g", "a", addr("h:3"), 0)));
        assert_eq!(s.member(&g("g"), &m("a")).unwrap().address.as_str(), "h:3");
        assert_eq!(s.view(&g("g")).unwrap().members.len(), 2);
    }

    #[test]
    fn a_change_after_a_clone_copies_the_group_but_shares_its_records() {
        let mut s = MembershipState::default();
        joined(s.apply(&join("g", "a", addr("h:1"), 0)));
        joined(s.apply(&join("g", "b", addr("h:2"), 0)));
        let snapshot = s.clone();
        joined(s.apply(&join("g", "c", addr("h:3"), 0)));
        let (before, after) = (&snapshot.groups[&g("g")], &s.groups[&g("g")]);
        assert!(!Arc::ptr_eq(before, after), "the changed group is a copy");
        assert_eq!(before.members.len(), 2, "the clone keeps the group as it was");
        for id in ["a", "b"] {
            assert!(Arc::ptr_eq(&before.members[&m(id)], &after.members[&m(id)]), "{id}'s record is shared");
        }
    }

    #[test]
    fn failure_detection_default_is_probe() {
        assert!(FailureDetection::default().is_probe());
    }
}
