//! `ctl reinit MEMBER` and REST `POST /reinitialize`: a replica re-clones its data
//! dir from the primary. The request is a key the member acts on (also in pause);
//! it records where the old data dir went (and its size) when done.

use std::time::Duration;

use tokio::time::Instant;

use super::{OpsError, cluster_view, member_api};
use crate::client::Client;
use crate::ha::health::CopyProgress;
use crate::ha::model::{self, ReinitOutcome, ReinitRequest};

/// Refuses what a reinit cannot do: an unknown member, the primary, no primary
/// to clone from.
pub fn check(view: &model::ClusterView, member: &str) -> Result<(), OpsError> {
    if !view.members.contains_key(member) {
        return Err(OpsError::Invalid(format!(
            "{member} is not a member that publishes its status (see `pgquorum ctl list`)"
        )));
    }
    if view.leader.as_deref() == Some(member) {
        return Err(OpsError::Invalid(format!(
            "{member} is the primary: its data dir is the cluster's and is never re-cloned; \
             switch over first"
        )));
    }
    if !view.leader_serving() {
        return Err(OpsError::Invalid(
            "no primary serves, so there is nothing to clone from; get a primary back first \
             (e.g. `pgquorum ctl failover --candidate NAME`), then retry"
                .into(),
        ));
    }
    Ok(())
}

pub async fn request(client: &Client, member: &str, discard_old: bool) -> Result<(), OpsError> {
    check(&cluster_view(client).await?, member)?;
    let req = ReinitRequest {
        discard_old,
        outcome: None,
    };
    let body = serde_json::to_vec(&req).map_err(|e| OpsError::Invalid(e.to_string()))?;
    client
        .put(&model::reinit_key(member), body, 0, None)
        .await?;
    Ok(())
}

/// How a reinit stands while `wait` waits.
#[derive(Clone, Debug, PartialEq)]
pub struct ReinitProgress {
    pub waited: Duration,
    /// The member's state as it published it (`creating replica` while it clones).
    pub state: Option<String>,
    /// pg_basebackup's progress, from the member's own REST API.
    pub copy: Option<CopyProgress>,
}

/// How often `wait` reports progress.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Waits for the member to record the outcome, then removes the request.
/// `progress` is called every [`PROGRESS_EVERY`].
pub async fn wait(
    client: &Client,
    member: &str,
    timeout: Duration,
    mut progress: impl FnMut(&ReinitProgress),
) -> Result<ReinitOutcome, OpsError> {
    let started = Instant::now();
    let mut told = Duration::ZERO;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let view = cluster_view(client).await;
        if let Ok(v) = &view
            && let Some(done) = v.reinit.get(member).and_then(|r| r.outcome.clone())
        {
            client
                .delete(&model::reinit_key(member), false, None)
                .await?;
            return Ok(done);
        }
        if let Ok(v) = &view
            && !v.reinit.contains_key(member)
        {
            return Err(OpsError::Invalid(format!(
                "{member} dropped the request because it is the primary now (a primary's data \
                 dir is never re-cloned); nothing was re-cloned. Switch over first \
                 (`pgquorum ctl switchover`), then run `pgquorum ctl reinit {member}` again"
            )));
        }
        let waited = started.elapsed();
        if waited >= timeout {
            return Err(OpsError::Timeout(format!(
                "{member} has not finished re-cloning within {} s; the request stands \
                 (see its log; `pgquorum ctl kv get {}` shows the outcome when it is done)",
                timeout.as_secs(),
                model::reinit_key(member)
            )));
        }
        if waited >= told + PROGRESS_EVERY {
            told = waited;
            let status = view.as_ref().ok().and_then(|v| v.members.get(member));
            let copy = match status {
                Some(s) => member_api::copy_progress(&s.api_url, Duration::from_secs(1)).await,
                None => None,
            };
            progress(&ReinitProgress {
                waited,
                state: status.map(|s| crate::ha::view::state_name(s.state).to_string()),
                copy,
            });
        }
    }
}
