//! `topology`, `version` and `flush`: the patronictl commands that look at the
//! members or withdraw requests, over the same store reads as `list`.

use super::*;
use crate::ha::model::RequestKind;
use crate::ops;

pub(super) async fn topology(client: &Client, json: bool) -> Result<(), CtlError> {
    let st = client.status().await?;
    let resp = client.get(model::PREFIX, true, false).await?;
    let listing = PgListing::from_kvs(&resp.kvs);
    let doc: Value = topology_rows(&listing)
        .into_iter()
        .map(|r| json!({ "Member": r.member, "Role": r.role.title(), "State": r.state }))
        .collect();
    emit(json, doc, || format_topology(&st.cluster, &listing))
}

/// `server_version_num` as PostgreSQL prints `server_version` (10 and later).
pub fn pg_version(num: u32) -> String {
    format!("{}.{}", num / 10_000, num % 10_000)
}

/// One line per member: the pgquorum release its node runs and its PostgreSQL
/// version, as its status last published them.
pub fn version_lines(view: &ClusterView, members: &[String]) -> Result<Vec<Value>, CtlError> {
    if let Some(unknown) = members.iter().find(|m| !view.members.contains_key(*m)) {
        return Err(CtlError::BadInput(format!(
            "{unknown} is not a member that publishes its status: see `pgquorum ctl list`"
        )));
    }
    Ok(view
        .members
        .values()
        .filter(|s| members.is_empty() || members.contains(&s.name))
        .map(|s| {
            json!({
                "member": s.name,
                "pgquorum": (!s.version.is_empty()).then_some(&s.version),
                "postgresql": s.server_version.map(pg_version),
            })
        })
        .collect())
}

pub(super) async fn version(
    client: &Client,
    json: bool,
    members: &[String],
) -> Result<(), CtlError> {
    let view = ops::cluster_view(client).await?;
    let lines = version_lines(&view, members)?;
    let me = env!("CARGO_PKG_VERSION");
    emit(json, json!({ "ctl": me, "members": lines }), || {
        let mut out = format!("pgquorum ctl version {me}\n");
        for l in &lines {
            let word = |k: &str| l[k].as_str().unwrap_or("unknown").to_owned();
            out.push_str(&format!(
                "{}: pgquorum {}, PostgreSQL {}\n",
                word("member"),
                word("pgquorum"),
                word("postgresql")
            ));
        }
        out
    })
}

pub(super) async fn flush(
    client: &Client,
    json: bool,
    target: FlushTarget,
    members: &[String],
) -> Result<(), CtlError> {
    match target {
        FlushTarget::Switchover => {
            if !members.is_empty() {
                return Err(CtlError::BadInput(
                    "a switchover belongs to the cluster, not to a member: \
                     run `pgquorum ctl flush switchover` without member names"
                        .into(),
                ));
            }
            let had = ops::switchover::cancel(client).await?;
            emit(json, json!({ "cancelled": had }), || {
                if had {
                    "switchover request cancelled".into()
                } else {
                    "no switchover was requested".into()
                }
            })
        }
        FlushTarget::Restart => {
            let view = ops::cluster_view(client).await?;
            let pending: Vec<&String> = view
                .restart
                .iter()
                .filter(|(m, r)| !r.done && (members.is_empty() || members.contains(m)))
                .map(|(m, _)| m)
                .collect();
            let mut cancelled = Vec::new();
            for m in pending {
                if ops::requests::cancel(client, RequestKind::Restart, m).await? {
                    cancelled.push(m.clone());
                }
            }
            emit(json, json!({ "cancelled": cancelled }), || {
                if cancelled.is_empty() {
                    "no restart was requested".into()
                } else {
                    format!("restart request cancelled: {}", cancelled.join(", "))
                }
            })
        }
    }
}
