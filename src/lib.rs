//! pgquorum: PostgreSQL high availability in one binary.
//!
//! Each node is a Raft member (`raft`, `store`) holding the cluster's keys and
//! leases, serving a gRPC admin API (`api`); with `[postgresql]` it also supervises
//! the local PostgreSQL (`postgres`) by the pure HA decision (`ha`) run by `supervisor`. See ARCHITECTURE.md for the code map
//! and the invariants every change must keep.

pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod ha;
pub mod hostport;
pub mod lsn;
pub mod node;
pub mod ops;
pub mod postgres;
pub mod raft;
#[cfg(test)]
mod sim;
pub mod stop;
pub mod store;
pub mod supervisor;
pub mod tls;
pub mod wire;
