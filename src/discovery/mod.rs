//! How a node finds its peers and whether it creates the cluster.

pub mod static_peers;
