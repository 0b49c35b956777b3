//! Raft plumbing: openraft type config, sled storage, gRPC transport, and the
//! leader-side lease expiry loop. openraft types stay inside `raft/` and `api/`.

pub mod expiry;
pub mod log_store;
pub mod network;
pub mod sm_store;
pub mod storage;
pub mod types;

#[cfg(test)]
mod suite_test;

use std::sync::Arc;
use std::time::Duration;

pub use types::{Member, NodeId, TypeConfig};

/// The Raft node: the type config with the sled state machine (defined here, where
/// both meet, so `types` and `sm_store` do not import each other).
pub type Raft = openraft::Raft<TypeConfig, sm_store::SmStore>;

use crate::config::RaftTuning;

/// openraft settings derived from the node config.
pub fn raft_config(
    cluster: &str,
    t: &RaftTuning,
) -> Result<Arc<openraft::Config>, openraft::ConfigError> {
    let cfg = openraft::Config {
        cluster_name: cluster.to_string(),
        heartbeat_interval: t.heartbeat_ms,
        election_timeout_min: t.election_timeout_min_ms,
        election_timeout_max: t.election_timeout_max_ms,
        // A rejoining or partitioned node must not depose a healthy leader.
        enable_pre_vote: Some(true),
        install_snapshot_timeout: 5_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(t.snapshot_logs),
        max_in_snapshot_log_to_keep: 1_000,
        purge_batch_size: 256,
        ..Default::default()
    };
    Ok(Arc::new(cfg.validate()?))
}

/// How long a request waits before answering "unavailable".
pub fn request_timeout(t: &RaftTuning) -> Duration {
    Duration::from_millis(t.request_timeout_ms)
}
