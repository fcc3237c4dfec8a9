//! Who this node is: its Raft id, its name and the API address it shows the others. Decided
//! once at start from the flags, else from the host (a StatefulSet pod is named after its
//! ordinal), and never changed while the node runs.

use super::DiscoveryError;
use crate::membership::{NodeAdvert, NodeId};

/// This node's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub id: NodeId,
    /// The name and API address `/v1/cluster` shows.
    pub advert: NodeAdvert,
}

/// What the flags say of the identity; `None` where the host decides.
pub struct Flags<'a> {
    /// `--node-id`.
    pub node_id: Option<NodeId>,
    /// `--name`.
    pub name: Option<&'a str>,
    /// `--advertise-api`.
    pub advertise_api: Option<&'a str>,
    /// `--api-addr`, the listen address.
    pub api_addr: &'a str,
}

/// Decides the identity. The id is `--node-id`, else the StatefulSet ordinal at the end of the
/// host name plus one (`gm-cluster-2` is node 3). The name is `--name`, else the host name when
/// it gave the id (the pod's own name), else `node-{id}`: the name the cluster is created with, so
/// it never changes and several nodes on one host never share one. The API address is
/// `--advertise-api`, else the listen address with the host name for an unspecified IP.
///
/// Errors: no `--node-id` and a host name without an ordinal.
pub fn decide(flags: &Flags<'_>) -> Result<Identity, DiscoveryError> {
    let host = host_name();
    let (id, from_host) = match flags.node_id {
        Some(id) => (id, false),
        None => host
            .as_deref()
            .and_then(|h| h.rsplit_once('-'))
            .and_then(|(_, ordinal)| ordinal.parse::<NodeId>().ok())
            .and_then(|ordinal| ordinal.checked_add(1))
            .map(|id| (id, true))
            .ok_or(DiscoveryError::NoNodeId)?,
    };
    let name = match (flags.name, from_host) {
        (Some(name), _) => name.to_owned(),
        (None, true) => host.clone().unwrap_or_else(|| default_name(id)),
        (None, false) => default_name(id),
    };
    let api_address = match flags.advertise_api {
        Some(addr) => addr.to_owned(),
        None => match flags.api_addr.rsplit_once(':') {
            Some(("0.0.0.0" | "[::]", port)) => format!("{}:{port}", host.as_deref().unwrap_or("localhost")),
            _ => flags.api_addr.to_owned(),
        },
    };
    Ok(Identity { id, advert: NodeAdvert { name, api_address } })
}

/// The name of node `id` until it announces its own: `node-{id}`.
pub fn default_name(id: NodeId) -> String {
    format!("node-{id}")
}

fn host_name() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_decide_when_given() {
        let flags = Flags { node_id: Some(2), name: None, advertise_api: None, api_addr: "127.0.0.1:8082" };
        let identity = decide(&flags).unwrap();
        assert_eq!(identity.id, 2);
        assert_eq!(identity.advert.name, "node-2", "a local node is never named after the shared host");
        assert_eq!(identity.advert.api_address, "127.0.0.1:8082");
        let flags =
            Flags { node_id: Some(2), name: Some("a"), advertise_api: Some("gm-1.gm:8080"), api_addr: "0.0.0.0:1" };
        let identity = decide(&flags).unwrap();
        assert_eq!((identity.advert.name.as_str(), identity.advert.api_address.as_str()), ("a", "gm-1.gm:8080"));
    }
}
