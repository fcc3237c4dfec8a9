//! How a node finds its peers and whether it creates the cluster.

pub mod events;
pub mod identity;
pub mod ids;
pub mod kubernetes;
pub mod leader_lease;
pub mod reconcile;
pub mod static_peers;

pub use static_peers::DiscoveryError;
