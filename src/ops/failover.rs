//! Manual failover (`ctl failover`, REST `POST /failover`): for when no primary
//! serves. The request names a candidate; the candidate's own `decide` takes over
//! within the failover rules, or beyond them when the operator forced it after
//! being told the risk. The request is attached to a lease of the requester, so it
//! vanishes when the requester gives up or dies.

use std::time::Duration;

use tokio::time::Instant;

use super::{OpsError, cluster_view};
use crate::client::Client;
use crate::ha::eligibility::{Ineligible, cannot_take_over};
use crate::ha::model::{self, ClusterView, FailoverRequest};

/// What a failover to `candidate` would mean, before it is requested.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub candidate: String,
    /// The primary that serves now, if any (then a failover is the wrong tool).
    pub serving_primary: Option<String>,
    /// Bytes between the last known primary position and the candidate's.
    pub lag: Option<u64>,
    /// What the failover rules protect against and this candidate would break;
    /// empty when it is eligible.
    pub risks: Vec<String>,
}

/// Checks `candidate` against the failover rules. Only what no `--force` can fix
/// (not a member, not a running replica, tagged nofailover) is an error.
pub fn plan(view: &ClusterView, candidate: &str) -> Result<Plan, OpsError> {
    let Some(m) = view.members.get(candidate) else {
        return Err(OpsError::Invalid(format!(
            "{candidate} is not a member that publishes its status (see `pgquorum ctl list`)"
        )));
    };
    let cfg = view.config.clone().unwrap_or_default();
    let lag = view.optime.map(|o| o.saturating_sub(m.receive_lsn));
    let mut risks = Vec::new();
    match cannot_take_over(m, cfg.synchronous_mode, view.sync.as_ref(), view.timeline) {
        Some(Ineligible::NotARunningReplica) => {
            return Err(OpsError::Invalid(format!(
                "{candidate} is not a running replica; only one can take over: pick a Replica \
                 that `pgquorum ctl list` shows running or streaming"
            )));
        }
        Some(Ineligible::NoFailoverTag) => {
            return Err(OpsError::Invalid(format!(
                "{candidate} is tagged nofailover (or failover_priority 0) and is never \
                 promoted; pick another candidate, or change [tags] in its config file and \
                 reload that node (SIGHUP, e.g. `systemctl reload pgquorum`)"
            )));
        }
        Some(Ineligible::PrePromoteVetoed) => {
            return Err(OpsError::Invalid(format!(
                "{candidate}: its pre_promote callback vetoed a promotion within the last ttl; \
                 see its log, or wait one ttl and try again"
            )));
        }
        Some(Ineligible::NotTheSyncStandby { recorded }) => risks.push(format!(
            "synchronous mode: {} holds every acknowledged commit, {candidate} is not \
             recorded as synchronous and may lack commits acknowledged after its position{}",
            if recorded.is_empty() {
                "no recorded standby".to_string()
            } else {
                format!("the recorded standby {}", recorded.join(", "))
            },
            lag.map_or_else(String::new, |l| format!(" (up to {l} bytes of WAL)"))
        )),
        Some(why @ Ineligible::OlderTimeline { .. }) => risks.push(format!(
            "{candidate}: {why}: it lacks whatever the last primary acknowledged after the fork"
        )),
        None => {}
    }
    if let Some(l) = lag
        && l > cfg.maximum_lag_on_failover
    {
        risks.push(format!(
            "{candidate} is {l} bytes behind the last known primary position {} \
             (maximum_lag_on_failover {}): commits in those bytes would be lost",
            model::format_lsn(view.optime.unwrap_or(0)),
            cfg.maximum_lag_on_failover
        ));
    }
    Ok(Plan {
        candidate: candidate.to_string(),
        serving_primary: view.leader.clone().filter(|_| view.leader_serving()),
        lag,
        risks,
    })
}

/// Requests the failover and waits up to `wait` for the candidate to serve as
/// primary. `force` waives the rules (only after the risks were named). On timeout
/// the request is withdrawn.
pub async fn run(
    client: &Client,
    candidate: &str,
    force: bool,
    wait: Duration,
) -> Result<(), OpsError> {
    let ttl_ms = u64::try_from(wait.as_millis())
        .unwrap_or(u64::MAX)
        .max(1_000);
    let lease = client.lease_grant(ttl_ms, 0).await?.id;
    let req = FailoverRequest {
        candidate: candidate.to_string(),
        force,
    };
    let body = serde_json::to_vec(&req).map_err(|e| OpsError::Invalid(e.to_string()))?;
    let put = client
        .put(model::FAILOVER_KEY, body, lease, Some(0))
        .await?;
    if !put.succeeded {
        let _ = client.lease_revoke(lease).await;
        return Err(OpsError::Invalid(
            "another manual failover is in progress (see `pgquorum ctl kv get /pg/failover`)"
                .into(),
        ));
    }
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(v) = cluster_view(client).await
            && v.leader.as_deref() == Some(candidate)
            && v.leader_serving()
        {
            // The new primary clears the request itself; this only ends our lease.
            let _ = client.lease_revoke(lease).await;
            return Ok(());
        }
        if started.elapsed() >= wait {
            let _ = client.lease_revoke(lease).await;
            return Err(OpsError::Timeout(format!(
                "{candidate} did not become primary within {} s; the request was withdrawn \
                 (see its log and `pgquorum ctl list`)",
                wait.as_secs()
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HaSettings;
    use crate::ha::model::{MemberStatus, PgRunState, Role, SyncState};

    fn member(name: &str, role: Role, lsn: u64) -> MemberStatus {
        MemberStatus::running(name, role, lsn)
    }

    fn view() -> ClusterView {
        let mut v = ClusterView {
            optime: Some(10_000),
            timeline: Some(1),
            config: Some(HaSettings {
                maximum_lag_on_failover: 1000,
                ..HaSettings::default()
            }),
            ..ClusterView::default()
        };
        for m in [
            member("b", Role::Replica, 9_500),
            member("c", Role::Replica, 2_000),
        ] {
            v.members.insert(m.name.clone(), m);
        }
        v
    }

    #[test]
    fn risks_are_named_and_the_unfixable_refused() {
        let p = plan(&view(), "b").unwrap();
        assert_eq!(
            (p.lag, p.risks.len(), p.serving_primary),
            (Some(500), 0, None)
        );
        let p = plan(&view(), "c").unwrap();
        assert_eq!(p.risks.len(), 1);
        assert!(p.risks[0].contains("8000 bytes behind"), "{:?}", p.risks);

        let mut v = view();
        let mut cfg = v.config.clone().unwrap();
        cfg.synchronous_mode = true;
        v.config = Some(cfg);
        v.sync = Some(SyncState {
            leader: "a".into(),
            sync_standby: vec!["c".into()],
        });
        let p = plan(&v, "b").unwrap();
        assert!(
            p.risks[0].contains("the recorded standby c"),
            "{:?}",
            p.risks
        );

        assert!(plan(&view(), "zz").is_err());
        let mut v = view();
        v.members.get_mut("b").unwrap().state = PgRunState::Stopped;
        assert!(
            plan(&v, "b")
                .unwrap_err()
                .to_string()
                .contains("not a running replica")
        );
        let mut v = view();
        v.members.get_mut("b").unwrap().tags.nofailover = true;
        assert!(
            plan(&v, "b")
                .unwrap_err()
                .to_string()
                .contains("nofailover")
        );
    }
}
