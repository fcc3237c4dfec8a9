//! How a node finds its peers and whether it creates the cluster.

pub mod identity;
pub mod kubernetes;
pub mod static_peers;

pub use static_peers::DiscoveryError;
