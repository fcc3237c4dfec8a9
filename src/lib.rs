//! gm: a group membership service replicated with Raft.
//!
//! The membership state machine ([`membership`]) is pure; [`raft`] replicates it, [`node`] is a
//! GM node as the API sees it, and [`api`] serves the REST contract. The contract's answers are
//! declared once in [`wire`]: [`api`] writes them and [`client`], the Rust client of the API,
//! reads them.

pub mod agent;
pub mod api;
pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod dev;
pub mod discovery;
pub mod member_server;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod probe;
pub mod raft;
pub mod server;
pub mod signal;
pub mod tasks;
pub mod telemetry;
pub mod views;
pub mod wire;
