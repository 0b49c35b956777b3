//! Operator requests that `pgquorum ctl` and the REST API both make: they only read
//! and write keys in the store (and wait for members to act on them); every HA
//! decision stays in `ha::decide`. Typed errors here are mapped once at each edge
//! (ctl's exit message, REST's status code).

pub mod config;
pub mod dsn;
pub mod failover;
pub mod history;
pub mod member_api;
pub mod reinit;
pub mod requests;
pub mod switchover;

/// The wall clock in Unix seconds, for the times an operator schedules (`AT`).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

use crate::client::{Client, ClientError};
use crate::ha::model::{self, ClusterView};

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The document changed since it was read (compare-and-set failed).
    #[error(
        "the cluster configuration changed since it was read (now at revision {current}); \
         nothing was written: read it again (`pgquorum ctl show-config`) and redo the edit"
    )]
    Conflict { current: u64 },
    /// A value the cluster would refuse, naming the key.
    #[error("{0}; nothing was written")]
    Invalid(String),
    #[error(
        "the cluster has no configuration yet: it has not been bootstrapped. Start the nodes \
         with a [postgresql] section, wait until `pgquorum ctl list` shows a primary, then retry"
    )]
    NotBootstrapped,
    #[error("{0}")]
    Timeout(String),
}

/// The `/pg/*` keys as one view, and the store revision each key was written at.
pub async fn cluster_view(client: &Client) -> Result<ClusterView, OpsError> {
    let resp = client.get(model::PREFIX, true, false).await?;
    Ok(ClusterView::from_kvs(
        resp.kvs
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.as_slice())),
    )
    .0)
}

/// Keys that `ctl` commands own: a raw `kv put`/`kv del` of one needs `--force`
/// (a typo must not replace the cluster's configuration or its leader).
pub fn owned_key(key: &str, prefix: bool) -> Option<&'static str> {
    let owned: &[(&str, &str)] = &[
        (model::CONFIG_KEY, "pgquorum ctl edit-config"),
        (model::PAUSE_KEY, "pgquorum ctl pause / resume"),
        (model::SWITCHOVER_KEY, "pgquorum ctl switchover"),
        (model::LEADER_KEY, "the primary (it holds the leader lease)"),
        (model::SYNC_KEY, "the primary"),
        (model::OPTIME_KEY, "the primary"),
        (model::TIMELINE_KEY, "the primary"),
        (model::HISTORY_KEY, "the primary"),
        (model::INITIALIZE_KEY, "the bootstrap"),
    ];
    for (p, by) in [
        (model::REINIT_PREFIX, "pgquorum ctl reinit"),
        (model::RESTART_PREFIX, "pgquorum ctl restart"),
        (model::RELOAD_PREFIX, "pgquorum ctl reload"),
    ] {
        if key.starts_with(p) || (prefix && p.starts_with(key) && key.len() > 1) {
            return Some(by);
        }
    }
    if key.starts_with(model::MEMBERS_PREFIX) || (prefix && model::MEMBERS_PREFIX.starts_with(key))
    {
        return Some("each member (its own status)");
    }
    owned
        .iter()
        .find(|(k, _)| *k == key || (prefix && k.starts_with(key)))
        .map(|(_, by)| *by)
}
