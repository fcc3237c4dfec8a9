//! Static discovery: `--peers 1=HOST:PORT,...` names every initial voter. The node with the
//! smallest id creates the cluster when its log is empty; a node with state never does.

use std::collections::BTreeMap;

use super::identity::default_name;
use crate::membership::{Address, NodeId};
use crate::raft::{NodeInfo, Raft};

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("--peers: {0:?} is not ID=HOST:PORT with a positive integer ID")]
    BadPeer(String),
    #[error("--peers names node {0} twice")]
    Duplicate(NodeId),
    #[error("--peers is required with static discovery")]
    Missing,
    #[error("--peers does not name this node ({0})")]
    SelfMissing(NodeId),
    #[error("creating the cluster failed: {0}")]
    Initialize(String),
    #[error("--node-id is not set and the host name ends in no StatefulSet ordinal")]
    NoNodeId,
    /// The data dir holds a cluster whose voters are not the ones `--peers` names: a copy of
    /// another cluster's data, or ports that moved. Joining would pass one node off as another.
    #[error(
        "the data dir holds a cluster whose voters are {stored}, but --peers names {given}: it is a copy of \
         another cluster's data, or the ports moved; start this node on an empty --data-dir (gm dev: --clean)"
    )]
    PeersChanged { stored: String, given: String },
    #[error("--pod-name {pod:?} is not {statefulset}-ORDINAL")]
    PodName { pod: String, statefulset: String },
    #[error("kubernetes: {0}")]
    Kubernetes(String),
}

/// Parses `1=HOST:PORT,2=HOST:PORT`, which must name node `me`.
pub fn parse_peers(spec: &str, me: NodeId) -> Result<BTreeMap<NodeId, String>, DiscoveryError> {
    let mut peers = BTreeMap::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = || DiscoveryError::BadPeer(item.to_owned());
        let (id, addr) = item.split_once('=').ok_or_else(bad)?;
        let id: NodeId = id.trim().parse().ok().filter(|&id| id > 0).ok_or_else(bad)?;
        let addr = Address::parse(addr.trim()).map_err(|_| bad())?.to_string();
        if peers.insert(id, addr).is_some() {
            return Err(DiscoveryError::Duplicate(id));
        }
    }
    if peers.is_empty() {
        return Err(DiscoveryError::Missing);
    }
    if !peers.contains_key(&me) {
        return Err(DiscoveryError::SelfMissing(me));
    }
    Ok(peers)
}

/// Creates the cluster if this node has the smallest id and has never been initialized.
pub async fn bootstrap(raft: &Raft, me: NodeId, peers: &BTreeMap<NodeId, String>) -> Result<(), DiscoveryError> {
    if peers.keys().next() != Some(&me) {
        return Ok(());
    }
    let initialized = raft.is_initialized().await.map_err(|e| DiscoveryError::Initialize(e.to_string()))?;
    if initialized {
        tracing::info!(node = me, "resuming an existing cluster");
        return Ok(());
    }
    let members: BTreeMap<NodeId, NodeInfo> = peers
        .iter()
        .map(|(&id, addr)| (id, NodeInfo { name: default_name(id), api_addr: String::new(), peer_addr: addr.clone() }))
        .collect();
    tracing::info!(node = me, voters = ?members.keys().collect::<Vec<_>>(), "creating the cluster");
    raft.initialize(members).await.map_err(|e| DiscoveryError::Initialize(e.to_string()))
}

/// For a node with state: fails unless the voters it holds are at the addresses `--peers` names.
/// After `gm recover` the node holds fewer voters than `--peers` names (the lost nodes stay in
/// the flag): every voter it holds must still be there, at its address.
pub async fn check_resumed(raft: &Raft, peers: &BTreeMap<NodeId, String>) -> Result<(), DiscoveryError> {
    if !raft.is_initialized().await.map_err(|e| DiscoveryError::Initialize(e.to_string()))? {
        return Ok(());
    }
    // The state is loaded when Raft starts; its metrics show it once the core has run.
    let mut metrics = raft.metrics();
    let loaded = metrics.wait_for(|m| m.membership_config.log_id().is_some());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), loaded).await;
    let stored: BTreeMap<NodeId, String> = {
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        membership.voter_ids().filter_map(|id| Some((id, membership.get_node(&id)?.peer_addr.clone()))).collect()
    };
    if !stored.is_empty() && stored.iter().all(|(id, addr)| peers.get(id) == Some(addr)) {
        return Ok(());
    }
    let show = |p: &BTreeMap<NodeId, String>| p.iter().map(|(id, a)| format!("{id}={a}")).collect::<Vec<_>>().join(",");
    Err(DiscoveryError::PeersChanged { stored: show(&stored), given: show(peers) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_peers() {
        let p = parse_peers("1=127.0.0.1:7001, 2=gm-1.gm:7000,3=[::1]:7003", 2).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[&2], "gm-1.gm:7000");
        assert_eq!(p[&3], "[::1]:7003");
    }

    #[test]
    fn rejects_bad_peers() {
        for bad in
            ["", "2=a:1", "1=a:1;2=b:2", "1=a b:1", "1", "x=a:1", "0=a:1", "1=a", "1=a:x", "1=:80", "1=a:1,1=b:2"]
        {
            assert!(parse_peers(bad, 1).is_err(), "{bad}");
        }
    }
}
