//! `ctl restart`/`ctl reload` and REST `POST /restart`, `DELETE /restart`,
//! `POST /reload`: a request key per member that its supervisor carries out (also
//! in pause) and marks done. The primary restarts in place under its lease.

use std::time::Duration;

use tokio::time::Instant;

use super::{OpsError, cluster_view};
use crate::client::Client;
use crate::ha::model::{ClusterView, MemberRequest, RequestKind, Role};

/// Which members a restart or reload is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleFilter {
    Primary,
    Replica,
    Any,
}

/// `names` (all members when empty) whose role matches (and, with `pending_only`,
/// that need a restart for changed parameters), replicas first and the primary
/// last, so a rolling restart never has the primary down before its replicas are
/// back.
pub fn members_for(
    view: &ClusterView,
    names: &[String],
    role: RoleFilter,
    pending_only: bool,
) -> Result<Vec<String>, OpsError> {
    for n in names {
        if !view.members.contains_key(n) {
            return Err(OpsError::Invalid(format!(
                "{n} is not a member that publishes its status (see `pgquorum ctl list`); nothing was requested"
            )));
        }
    }
    let mut chosen: Vec<(bool, String)> = view
        .members
        .values()
        .filter(|m| names.is_empty() || names.contains(&m.name))
        .filter(|m| match role {
            RoleFilter::Primary => m.role == Role::Primary,
            RoleFilter::Replica => m.role == Role::Replica,
            RoleFilter::Any => true,
        })
        .filter(|m| !pending_only || m.pending_restart)
        .map(|m| {
            (
                view.leader.as_deref() == Some(m.name.as_str()),
                m.name.clone(),
            )
        })
        .collect();
    chosen.sort();
    if chosen.is_empty() {
        return Err(OpsError::Invalid(
            "no member matches (see `pgquorum ctl list`); nothing was requested".into(),
        ));
    }
    Ok(chosen.into_iter().map(|(_, n)| n).collect())
}

/// Asks `member` to restart or reload, at once or (`scheduled_at`, Unix seconds) not
/// before then by its clock.
pub async fn ask(
    client: &Client,
    kind: RequestKind,
    member: &str,
    scheduled_at: Option<u64>,
) -> Result<(), OpsError> {
    let body = serde_json::to_vec(&MemberRequest {
        done: false,
        scheduled_at,
    })
    .map_err(|e| OpsError::Invalid(e.to_string()))?;
    client.put(&kind.key(member), body, 0, None).await?;
    Ok(())
}

pub async fn cancel(client: &Client, kind: RequestKind, member: &str) -> Result<bool, OpsError> {
    Ok(client.delete(&kind.key(member), false, None).await?.deleted > 0)
}

/// Waits until `member` marked the request done, then removes it. On timeout the
/// request stands (the member carries it out when it can).
pub async fn wait_done(
    client: &Client,
    kind: RequestKind,
    member: &str,
    timeout: Duration,
) -> Result<(), OpsError> {
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(v) = cluster_view(client).await {
            let map = match kind {
                RequestKind::Restart => &v.restart,
                RequestKind::Reload => &v.reload,
            };
            match map.get(member) {
                Some(r) if r.done => {
                    let _ = client.delete(&kind.key(member), false, None).await;
                    return Ok(());
                }
                None => {
                    let by = match kind {
                        RequestKind::Restart => "`pgquorum ctl flush restart` or DELETE /restart",
                        _ => "a `pgquorum ctl kv del` of its key",
                    };
                    return Err(OpsError::Invalid(format!(
                        "the request for {member} was cancelled before {member} reported it \
                         done (by {by}); request it again if it is still needed"
                    )));
                }
                Some(_) => {}
            }
        }
        if started.elapsed() >= timeout {
            return Err(OpsError::Timeout(format!(
                "{member} did not finish within {} s; the request stands (it runs when \
                 PostgreSQL is up and answers); cancel it with {}",
                timeout.as_secs(),
                match kind {
                    RequestKind::Restart => format!(
                        "`pgquorum ctl flush restart {member}` or DELETE /restart on {member}"
                    ),
                    _ => format!("`pgquorum ctl kv del {} --force`", kind.key(member)),
                }
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::model::MemberStatus;

    #[test]
    fn replicas_come_first_and_the_filter_applies() {
        let mut v = ClusterView {
            leader: Some("a".into()),
            ..ClusterView::default()
        };
        for (n, role) in [
            ("a", Role::Primary),
            ("b", Role::Replica),
            ("c", Role::Replica),
        ] {
            v.members
                .insert(n.into(), MemberStatus::running(n, role, 0));
        }
        assert_eq!(
            members_for(&v, &[], RoleFilter::Any, false).unwrap(),
            ["b", "c", "a"]
        );
        assert_eq!(
            members_for(&v, &[], RoleFilter::Primary, false).unwrap(),
            ["a"]
        );
        assert_eq!(
            members_for(&v, &["a".into(), "c".into()], RoleFilter::Any, false).unwrap(),
            ["c", "a"]
        );
        assert!(members_for(&v, &["zz".into()], RoleFilter::Any, false).is_err());
        assert!(members_for(&v, &["a".into()], RoleFilter::Replica, false).is_err());
        assert!(members_for(&v, &[], RoleFilter::Any, true).is_err());
        v.members.get_mut("c").unwrap().pending_restart = true;
        assert_eq!(members_for(&v, &[], RoleFilter::Any, true).unwrap(), ["c"]);
    }
}
