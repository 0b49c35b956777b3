//! The edges: gRPC admin service (`admin`), with generated protobuf types in `pb`.
//! Errors from the inner modules are mapped to gRPC status codes here, once.

pub mod admin;
pub mod rest;

#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("pgquorum.v1");
}

/// Metadata key carrying the Raft leader's address on `Unavailable` answers.
pub const LEADER_HINT: &str = "x-pgquorum-leader";
/// Set on a request one member forwarded to another, so it is forwarded at most once.
pub const FORWARDED: &str = "x-pgquorum-forwarded";
