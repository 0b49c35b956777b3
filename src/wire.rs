//! What both ends of pgquorum's gRPC port share: the generated protobuf types
//! (`proto/pgquorum.proto`), the metadata keys its answers carry, and how a failed
//! call is told apart from an answered one. Ground module: imports nothing from the
//! crate.

#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("pgquorum.v1");
}

/// Whether a call to a peer failed in the connection (refused, broken, cancelled,
/// timed out) rather than being answered: the callers then consider replacing the
/// connection, which may be a half-dead one left from a partition.
pub fn connection_failed(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded
    )
}

/// Metadata key carrying the Raft leader's address on `Unavailable` answers.
pub const LEADER_HINT: &str = "x-pgquorum-leader";
/// Set (to `unknown`) on a failed write that may still have been applied: proposed
/// but not known to be committed. Clients must not retry such a write blindly.
pub const OUTCOME: &str = "x-pgquorum-outcome";
/// Set on a request one member forwarded to another, so it is forwarded at most once.
pub const FORWARDED: &str = "x-pgquorum-forwarded";
