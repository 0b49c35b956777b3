//! The health-check endpoints and the rules behind their 200 or 503, as Patroni's
//! `do_GET`, `_readiness` and `do_GET_liveness` decide them.

use axum::http::StatusCode;
use tokio::time::Instant;

use super::size::parse_size;
use crate::ha::health::Health;
use crate::ha::model::{PgRunState, Role, Tags};
use crate::ha::view::replication_state;

/// The health-check endpoints; each answers 200 or 503.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `/`, `/primary`, `/master`, `/read-write`.
    Primary,
    /// `/leader`.
    Leader,
    /// `/replica`.
    Replica,
    /// `/read-only`.
    ReadOnly,
    /// `/sync`, `/synchronous`.
    Sync,
    /// `/read-only-sync`, `/read-only-synchronous`.
    ReadOnlySync,
    /// `/async`, `/asynchronous`.
    Async,
    /// `/health`.
    Health,
    /// `/liveness`.
    Liveness,
    /// `/readiness`.
    Readiness,
}

/// Every path this API answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Check(Endpoint),
    Patroni,
    Cluster,
    Metrics,
}

/// Maps a request path to its route; `None` is a 404.
pub fn route(path: &str) -> Option<Route> {
    use Endpoint as E;
    Some(match path {
        // `/master` is Patroni's deprecated alias, still in old HAProxy configs.
        "/" | "/primary" | "/master" | "/read-write" => Route::Check(E::Primary),
        "/leader" => Route::Check(E::Leader),
        "/replica" => Route::Check(E::Replica),
        "/read-only" => Route::Check(E::ReadOnly),
        "/sync" | "/synchronous" => Route::Check(E::Sync),
        "/read-only-sync" | "/read-only-synchronous" => Route::Check(E::ReadOnlySync),
        "/async" | "/asynchronous" => Route::Check(E::Async),
        "/health" => Route::Check(E::Health),
        "/liveness" => Route::Check(E::Liveness),
        "/readiness" => Route::Check(E::Readiness),
        "/patroni" => Route::Patroni,
        "/cluster" => Route::Cluster,
        "/metrics" => Route::Metrics,
        _ => return None,
    })
}

/// First value of a query parameter (Patroni reads `parse_qs(...)[key][0]`).
fn query_value<'a>(query: &'a [(String, String)], key: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn code(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// The status code of a health check, as Patroni's `do_GET`, `_readiness` and
/// `do_GET_liveness` decide it.
///
/// Query parameters: `lag` (bytes or `16MB` etc.; replica-based checks fail when
/// the cluster's last primary position is further ahead of this member's replay
/// position), `replication_state` (e.g. `streaming`), `tag_<key>=<value>` (the
/// member's tag must exist and equal the value; ignored on `/primary` and
/// `/leader`); `/readiness` also takes `mode=apply|write`.
pub fn health_code(
    endpoint: Endpoint,
    h: &Health,
    query: &[(String, String)],
    now: Instant,
) -> StatusCode {
    let running = h.pg_running();
    let role = h.role();
    let has_lock = h.holds_leader_lock(now);
    // Stricter than Patroni, which answers 200 on `/primary` for the lock holder
    // even while PostgreSQL is still in recovery or down: routing writes there
    // cannot succeed.
    let primary_ok = has_lock && running && role == Some(Role::Primary);
    // Not for `/primary`: a hung primary is killed by its own supervisor, and a
    // stalled loop already turns `/primary` 503 through the lease deadline.
    let answering = h.pg_answering(now);
    let replica_ok = answering && replica_conditions(h, query);
    let is_sync = h.is_sync_standby();

    let (ok, ignore_tags) = match endpoint {
        Endpoint::Primary => (primary_ok, true),
        Endpoint::Leader => (has_lock, true),
        Endpoint::Replica => (replica_ok, false),
        Endpoint::ReadOnly => (primary_ok || replica_ok, false),
        Endpoint::Sync => (is_sync && replica_ok, false),
        Endpoint::ReadOnlySync => (primary_ok || (is_sync && replica_ok), false),
        Endpoint::Async => (!is_sync && replica_ok, false),
        Endpoint::Health => (running && answering, false),
        // Neither takes tag filters in Patroni.
        Endpoint::Liveness => return code(liveness(h, now)),
        Endpoint::Readiness => return code(readiness(h, query, now)),
    };
    if ok && !ignore_tags && !tags_match(h, query) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    code(ok)
}

/// Patroni's `replica_status_code`: running replica, load balancing allowed,
/// not lagging beyond `?lag=`, in the wanted `?replication_state=`.
fn replica_conditions(h: &Health, query: &[(String, String)]) -> bool {
    let Some(status) = h.status.as_ref() else {
        return false;
    };
    if status.role != Role::Replica
        || status.state != PgRunState::Running
        || status.tags.noloadbalance
    {
        return false;
    }
    // An unparsable `lag` means no limit, as in Patroni (`parse_int` → None →
    // `sys.maxsize`).
    if let Some(max_lag) = query_value(query, "lag").and_then(parse_size) {
        let optime = i128::from(h.cluster.optime.unwrap_or(0));
        // No known primary position (0) is not lagging, as in Patroni.
        if optime > 0 && optime > i128::from(status.replay_lsn) + i128::from(max_lag) {
            return false;
        }
    }
    match query_value(query, "replication_state") {
        Some(wanted) if !wanted.is_empty() => h.replication_state() == Some(wanted),
        _ => true,
    }
}

/// Every `tag_<key>=<value>` must name a tag of this member with that value
/// (booleans as `true`/`false`, as Patroni lowercases non-string tags).
fn tags_match(h: &Health, query: &[(String, String)]) -> bool {
    let tags = h.status.as_ref().map(|s| tag_values(&s.tags));
    let mut seen: Vec<&str> = Vec::new();
    for (key, _) in query {
        let Some(tag) = key.strip_prefix("tag_") else {
            continue;
        };
        // Only the first value of a repeated parameter counts, as in Patroni.
        if seen.contains(&tag) {
            continue;
        }
        seen.push(tag);
        let wanted = query_value(query, key).unwrap_or_default();
        let actual = tags
            .as_ref()
            .and_then(|t| t.iter().find(|(k, _)| *k == tag).map(|(_, v)| v.as_str()));
        if actual != Some(wanted) {
            return false;
        }
    }
    true
}

/// All tags this member has, as strings for `?tag_` matching. Every tag has a
/// value in the published status, so all count as set.
fn tag_values(tags: &Tags) -> Vec<(String, String)> {
    let mut v = vec![
        ("nofailover".to_string(), tags.nofailover.to_string()),
        ("noloadbalance".to_string(), tags.noloadbalance.to_string()),
        (
            "failover_priority".to_string(),
            tags.failover_priority.to_string(),
        ),
        ("nosync".to_string(), tags.nosync.to_string()),
        ("clonefrom".to_string(), tags.clonefrom.to_string()),
    ];
    v.extend(tags.other.iter().map(|(k, val)| {
        let text = match val {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string().to_lowercase(),
        };
        (k.clone(), text)
    }));
    v
}

/// The HA loop completed a cycle within `ttl` (primary) or `2 * ttl`
/// (otherwise: a replica can tolerate a slow loop longer); always alive in
/// pause, as in Patroni.
fn liveness(h: &Health, now: Instant) -> bool {
    if h.cluster.paused {
        return true;
    }
    let primary = h.pg_running() && h.role() == Some(Role::Primary);
    let threshold = if primary {
        h.ttl
    } else {
        h.ttl.saturating_mul(2)
    };
    h.last_cycle
        .is_some_and(|t| now.saturating_duration_since(t) < threshold)
}

/// Patroni's `_readiness`: the lock holder is ready; otherwise PostgreSQL must
/// run, stream, and lag the cluster's last primary position by at most `?lag=`
/// (default `maximum_lag_on_failover`), measured at the replay position
/// (`mode=apply`, default) or the receive position (`mode=write`).
fn readiness(h: &Health, query: &[(String, String)], now: Instant) -> bool {
    if h.holds_leader_lock(now) {
        return true;
    }
    let Some(status) = h
        .status
        .as_ref()
        .filter(|_| h.pg_running() && h.pg_answering(now))
    else {
        return false;
    };
    if replication_state(status) != Some("streaming") {
        return false;
    }
    let Some(optime) = h.cluster.optime else {
        // Patroni's `status.last_lsn` is then 0 and the lag negative: ready.
        return true;
    };
    let position = if query_value(query, "mode") == Some("write") {
        status.receive_lsn
    } else {
        status.replay_lsn
    };
    let max_lag = query_value(query, "lag")
        .and_then(parse_size)
        .map_or(i128::from(h.maximum_lag_on_failover), i128::from);
    i128::from(optime) - i128::from(position) <= max_lag
}
