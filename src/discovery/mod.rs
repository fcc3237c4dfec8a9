//! How a node finds its peers and whether it creates the cluster.

pub mod identity;
pub mod ids;
pub mod kubernetes;
pub mod reconcile;
pub mod static_peers;

pub use static_peers::DiscoveryError;
