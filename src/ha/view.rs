//! How a member and the cluster are shown: Patroni's names for states and roles,
//! replication state, lag, and host:port splitting. Shared by the REST API and
//! `ctl`, below both; no IO.

use super::model::{ClusterView, MemberStatus, PgRunState, Role};

/// Patroni's state names (`PostgresqlState`).
pub fn state_name(state: PgRunState) -> &'static str {
    match state {
        PgRunState::Running => "running",
        PgRunState::Starting => "starting",
        PgRunState::Stopped => "stopped",
        // Cloning, rewinding or bootstrapping; Patroni's nearest state.
        PgRunState::Creating => "creating replica",
        PgRunState::Crashed => "crashed",
    }
}

/// Patroni's `postgres_state` metric values, frozen there for dashboards.
pub fn state_index(state: PgRunState) -> i64 {
    match state {
        PgRunState::Creating => 4,
        PgRunState::Running => 5,
        PgRunState::Starting => 6,
        PgRunState::Stopped => 12,
        PgRunState::Crashed => 14,
    }
}

pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Primary => "primary",
        Role::Replica => "replica",
        Role::Uninitialized => "uninitialized",
    }
}

/// `streaming` for a running replica that follows a member, else `None`.
pub fn replication_state(status: &MemberStatus) -> Option<&'static str> {
    (status.role == Role::Replica
        && status.state == PgRunState::Running
        && status.following.is_some())
    .then_some("streaming")
}

pub fn is_recorded_sync(view: &ClusterView, member: &str) -> bool {
    view.sync.as_ref().is_some_and(|s| s.holds(member))
}

/// A member's role in the cluster as Patroni's `/cluster` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterRole {
    Leader,
    SyncStandby,
    Replica,
}

impl ClusterRole {
    /// The `/cluster` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterRole::Leader => "leader",
            ClusterRole::SyncStandby => "sync_standby",
            ClusterRole::Replica => "replica",
        }
    }

    /// The `patronictl list` spelling.
    pub fn title(self) -> &'static str {
        match self {
            ClusterRole::Leader => "Leader",
            ClusterRole::SyncStandby => "Sync Standby",
            ClusterRole::Replica => "Replica",
        }
    }
}

/// Leader = holder of `/pg/leader`; sync standby = the standby in `/pg/sync`.
pub fn cluster_role(view: &ClusterView, member: &str) -> ClusterRole {
    if view.leader.as_deref() == Some(member) {
        ClusterRole::Leader
    } else if is_recorded_sync(view, member) {
        ClusterRole::SyncStandby
    } else {
        ClusterRole::Replica
    }
}

/// The state shown for a member in `/cluster` and `ctl list`: a non-leader's
/// replication state (`streaming`) when it has one, else its PostgreSQL state.
pub fn member_state(role: ClusterRole, status: &MemberStatus) -> &'static str {
    match replication_state(status) {
        Some(rs) if role != ClusterRole::Leader => rs,
        _ => state_name(status.state),
    }
}

/// Bytes `lsn` is behind the cluster's last primary position, as Patroni's
/// `cluster_as_json`: `None` when either is unknown (0 / absent), 0 when ahead.
/// (Patroni counts an absent optime as 0 and shows lag 0; "unknown" is honest.)
pub fn lag_bytes(optime: Option<u64>, lsn: u64) -> Option<u64> {
    if lsn == 0 {
        return None;
    }
    optime.map(|o| o.saturating_sub(lsn))
}

pub use crate::hostport::split as split_host_port;

/// Tags that differ from the defaults, as `key=value` (true flags by name alone).
pub fn tags_text(t: &crate::ha::model::Tags) -> String {
    let mut parts = Vec::new();
    if t.nofailover {
        parts.push("nofailover".to_string());
    }
    if t.noloadbalance {
        parts.push("noloadbalance".to_string());
    }
    if t.failover_priority != 1 {
        parts.push(format!("failover_priority={}", t.failover_priority));
    }
    if t.nosync {
        parts.push("nosync".to_string());
    }
    for (k, v) in &t.other {
        match v {
            serde_json::Value::String(s) => parts.push(format!("{k}={s}")),
            v => parts.push(format!("{k}={v}")),
        }
    }
    parts.join(", ")
}
