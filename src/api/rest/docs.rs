//! The JSON documents: `GET /patroni` (also the body of the health checks) and
//! `GET /cluster`.

use serde_json::{Map, Value, json};

use crate::ha::health::Health;
use crate::ha::model::{ClusterView, PgRunState, Role, Tags, format_lsn};
use crate::ha::view::{
    ClusterRole, cluster_role, lag_bytes, member_state, replication_state, role_name,
    split_host_port, state_name,
};

/// Tags shown in `/patroni` and `/cluster`: only those that differ from the
/// defaults, so an untagged member shows none, like Patroni's configured tags.
fn tags_json(tags: &Tags) -> Option<Value> {
    let mut m = Map::new();
    if tags.nofailover {
        m.insert("nofailover".into(), json!(true));
    }
    if tags.noloadbalance {
        m.insert("noloadbalance".into(), json!(true));
    }
    if tags.failover_priority != 1 {
        m.insert("failover_priority".into(), json!(tags.failover_priority));
    }
    if tags.nosync {
        m.insert("nosync".into(), json!(true));
    }
    if tags.clonefrom {
        m.insert("clonefrom".into(), json!(true));
    }
    for (k, v) in &tags.other {
        m.insert(k.clone(), v.clone());
    }
    (!m.is_empty()).then_some(Value::Object(m))
}

/// The `GET /patroni` document (also the body of the health checks), shaped
/// like Patroni's `get_postgresql_status` + `_write_status_response`. Fields
/// only appear when known; like Patroni, position fields only while running.
pub fn status_json(h: &Health) -> Value {
    let mut m = Map::new();
    match h.status.as_ref() {
        None => {
            m.insert("state".into(), json!("unknown"));
            m.insert("role".into(), json!(role_name(Role::Uninitialized)));
        }
        Some(s) => {
            m.insert("state".into(), json!(state_name(s.state)));
            m.insert("role".into(), json!(role_name(s.role)));
            if s.state == PgRunState::Running {
                if let Some(v) = h.server_version {
                    m.insert("server_version".into(), json!(v));
                }
                match s.role {
                    Role::Primary => {
                        m.insert("xlog".into(), json!({ "location": s.receive_lsn }));
                    }
                    Role::Replica => {
                        m.insert(
                            "xlog".into(),
                            json!({
                                "received_location": s.receive_lsn,
                                "replayed_location": s.replay_lsn,
                            }),
                        );
                    }
                    Role::Uninitialized => {}
                }
                m.insert("timeline".into(), json!(s.timeline));
                if let Some(rs) = replication_state(s) {
                    m.insert("replication_state".into(), json!(rs));
                }
                if h.is_sync_standby() {
                    m.insert("sync_standby".into(), json!(true));
                }
            }
            if let Some(tags) = tags_json(&s.tags) {
                m.insert("tags".into(), tags);
            }
            // Patroni sets it only when true.
            if s.pending_restart {
                m.insert("pending_restart".into(), json!(true));
            }
        }
    }
    // pgquorum's own: a clone's progress while one runs (Patroni shows only the state).
    if let (Some(_), Some(c)) = (&h.busy, h.copy) {
        m.insert(
            "progress".into(),
            json!({
                "action": "pg_basebackup",
                "copied_bytes": c.copied_bytes,
                "total_bytes": c.total_bytes,
                "percent": c.percent(),
                "seconds": c.seconds,
            }),
        );
    }
    // Patroni sets these two only when true.
    if h.cluster.paused {
        m.insert("pause".into(), json!(true));
    }
    if h.cluster.leader.is_none() {
        m.insert("cluster_unlocked".into(), json!(true));
    }
    m.insert("dcs_last_seen".into(), json!(h.dcs_last_seen));
    if let Some(sysid) = &h.system_identifier {
        // A string, as Patroni prints it: the value exceeds JSON-safe integers.
        m.insert(
            "database_system_identifier".into(),
            json!(sysid.to_string()),
        );
    }
    m.insert(
        "patroni".into(),
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "scope": h.scope,
            "name": h.member,
        }),
    );
    Value::Object(m)
}

/// The `GET /cluster` document, shaped like Patroni's `cluster_as_json`:
/// members sorted by name; LSN/lag fields for every non-leader, `"unknown"`
/// where not known.
pub fn cluster_json(scope: &str, view: &ClusterView) -> Value {
    let members: Vec<Value> = view
        .members
        .iter()
        .map(|(name, s)| {
            let role = cluster_role(view, name);
            let mut m = Map::new();
            m.insert("name".into(), json!(name));
            m.insert("role".into(), json!(role.as_str()));
            m.insert("state".into(), json!(member_state(role, s)));
            m.insert("api_url".into(), json!(s.api_url));
            let (host, port) = split_host_port(&s.pg_addr);
            if !host.is_empty() {
                m.insert("host".into(), json!(host));
                if let Some(port) = port {
                    m.insert("port".into(), json!(port));
                }
            }
            m.insert("timeline".into(), json!(s.timeline));
            if let Some(tags) = tags_json(&s.tags) {
                m.insert("tags".into(), tags);
            }
            if role != ClusterRole::Leader {
                let lsn = s.receive_lsn.max(s.replay_lsn);
                for (prefix, pos) in [
                    ("receive_", s.receive_lsn),
                    ("replay_", s.replay_lsn),
                    ("", lsn),
                ] {
                    let (lsn_v, lag_v) = if pos == 0 {
                        (json!("unknown"), json!("unknown"))
                    } else {
                        let lag =
                            lag_bytes(view.optime, pos).map_or(json!("unknown"), |l| json!(l));
                        (json!(format_lsn(pos)), lag)
                    };
                    m.insert(format!("{prefix}lsn"), lsn_v);
                    m.insert(format!("{prefix}lag"), lag_v);
                }
            }
            Value::Object(m)
        })
        .collect();
    let mut doc = Map::new();
    doc.insert("members".into(), Value::Array(members));
    doc.insert("scope".into(), json!(scope));
    if view.paused {
        doc.insert("pause".into(), json!(true));
    }
    Value::Object(doc)
}

#[cfg(test)]
mod progress_tests {
    use super::*;
    use crate::ha::health::CopyProgress;

    #[test]
    fn a_running_clone_shows_its_progress_and_only_while_it_runs() {
        let mut h = Health {
            copy: Some(CopyProgress {
                copied_bytes: 30_000_000,
                total_bytes: Some(120_000_000),
                seconds: 9,
            }),
            ..Health::default()
        };
        // The last report of a clone that ended is not shown.
        assert!(status_json(&h).get("progress").is_none());
        h.busy = Some("Reclone".into());
        assert_eq!(
            status_json(&h)["progress"],
            json!({"action": "pg_basebackup", "copied_bytes": 30_000_000,
                   "total_bytes": 120_000_000, "percent": 25, "seconds": 9})
        );
    }
}
