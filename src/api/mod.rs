//! The edges: gRPC admin service (`admin`) and the Patroni-compatible REST API
//! (`rest`). Errors from the inner modules are mapped to gRPC status codes here,
//! once. The wire types live in `crate::wire`, shared with the client and Raft.

pub mod admin;
pub mod auth;
pub mod listen;
pub mod rest;

pub use crate::wire::pb;
