//! Patroni-compatible REST API: health checks for load balancers and
//! orchestrators, plus `/patroni`, `/cluster` and `/metrics`.
//!
//! HAProxy, Kubernetes probes and monitoring built for Patroni call these paths
//! and act on the status code alone (200 = yes, 503 = no), so the codes follow
//! Patroni's `api.py` (see `shared/notes/anchors-patroni-and-peers.md` §1.1).
//! Where this API is stricter than Patroni it is on purpose and says so at the
//! spot (for example `/primary` also requires PostgreSQL to run as primary).
//!
//! The supervisor publishes a [`Health`] snapshot through a `watch` channel every
//! HA cycle; every request reads the latest snapshot and decides with the pure
//! functions here ([`health_code`], [`status_json`], [`cluster_json`],
//! [`metrics_text`]), taking "now" as an argument. The leader lease is kept as a
//! deadline, not a flag: if the supervisor stalls, `/primary` turns 503 on its
//! own once the lease may have expired, instead of reporting a stale 200.

use std::fmt::Write as _;
use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::HaSettings;
use crate::ha::model::{ClusterView, MemberStatus, PgRunState, Role, Tags, format_lsn};

/// Content type of the Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the REST API needs to know about this member, published by the
/// supervisor after every HA cycle.
#[derive(Clone, Debug)]
pub struct Health {
    /// Cluster name (Patroni's `scope`).
    pub scope: String,
    /// This member's name.
    pub member: String,
    /// This member's own latest status (what it publishes under
    /// `/pg/members/<name>`); `None` before the first cycle.
    pub status: Option<MemberStatus>,
    /// The instant until which this member certainly holds the leader lease
    /// (`LeaseKeeper::valid_until`), `None` when it does not hold it. A deadline
    /// rather than a flag so the answer ages correctly between cycles.
    pub leader_lease_until: Option<Instant>,
    /// The cluster as last read from the store (`cluster.paused` is Patroni's
    /// `pause`).
    pub cluster: ClusterView,
    /// When the HA loop last completed a cycle, whether or not that cycle
    /// reached the store. `/liveness` asks "is the loop stuck?", not "is the
    /// store reachable?": restarting the process does not heal a partition.
    pub last_cycle: Option<Instant>,
    /// Leader lease TTL. `/liveness` fails once the loop has not completed a
    /// cycle for `ttl` (primary) or `2 * ttl` (otherwise), as Patroni does.
    pub ttl: Duration,
    /// Default for `/readiness?lag=`, in bytes (Patroni's `maximum_lag_on_failover`).
    pub maximum_lag_on_failover: u64,
    /// `server_version_num` of the running PostgreSQL, e.g. 160004.
    pub server_version: Option<u32>,
    /// PostgreSQL system identifier (`/pg/initialize`).
    pub system_identifier: Option<u64>,
    /// Unix time (seconds) of the last successful read of the store; 0 = never.
    pub dcs_last_seen: u64,
    /// When PostgreSQL last answered the health monitor. Checks that need a
    /// working PostgreSQL fail once this is older than `2 * ttl`, even if the HA
    /// loop itself stalls (otherwise its status says "not accepting" within a cycle
    /// of a hang).
    pub pg_last_answer: Option<Instant>,
    /// For how long PostgreSQL has not answered, as of the last cycle.
    pub pg_unanswered: Option<Duration>,
    pub hangs: HangCounters,
}

/// Hangs of this member's PostgreSQL and what was done about them, since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HangCounters {
    /// Hangs seen (no answer, WAL flush stuck, or postmaster stopped for 1 s or more).
    pub detected: u64,
    /// Times this member, as primary, killed its hung PostgreSQL and gave up the lease.
    pub primary_killed: u64,
    /// Times this member, as primary, un-recorded a synchronous standby that hung or
    /// left (replacing it, or dropping it when no other was streaming).
    pub sync_standby_changes: u64,
}

impl Default for Health {
    /// Thresholds from the HA defaults, so that a snapshot filled in partly does
    /// not fail every probe; the supervisor sets the effective values.
    fn default() -> Self {
        let ha = HaSettings::default();
        Self {
            scope: String::new(),
            member: String::new(),
            status: None,
            leader_lease_until: None,
            cluster: ClusterView::default(),
            last_cycle: None,
            ttl: Duration::from_millis(ha.ttl_ms),
            maximum_lag_on_failover: ha.maximum_lag_on_failover,
            server_version: None,
            system_identifier: None,
            dcs_last_seen: 0,
            pg_last_answer: None,
            pg_unanswered: None,
            hangs: HangCounters::default(),
        }
    }
}

impl Health {
    /// This member holds the leader lease at `now` by its own deadline.
    pub fn holds_leader_lock(&self, now: Instant) -> bool {
        self.leader_lease_until.is_some_and(|until| now < until)
    }

    /// PostgreSQL answered the health monitor within `2 * ttl` of `now`.
    pub fn pg_answering(&self, now: Instant) -> bool {
        self.pg_last_answer
            .is_some_and(|t| now.saturating_duration_since(t) < self.ttl.saturating_mul(2))
    }

    /// PostgreSQL runs (state `running`).
    pub fn pg_running(&self) -> bool {
        self.status
            .as_ref()
            .is_some_and(|s| s.state == PgRunState::Running)
    }

    fn role(&self) -> Option<Role> {
        self.status.as_ref().map(|s| s.role)
    }

    /// Runs as a replica and is the standby recorded in `/pg/sync`.
    fn is_sync_standby(&self) -> bool {
        self.role() == Some(Role::Replica) && is_recorded_sync(&self.cluster, &self.member)
    }

    /// Patroni's `replication_state`: only `streaming` is known here.
    fn replication_state(&self) -> Option<&'static str> {
        self.status.as_ref().and_then(replication_state)
    }
}

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
fn tag_values(tags: &Tags) -> [(&'static str, String); 3] {
    [
        ("nofailover", tags.nofailover.to_string()),
        ("noloadbalance", tags.noloadbalance.to_string()),
        ("failover_priority", tags.failover_priority.to_string()),
    ]
}

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
    if tags.failover_priority != 0 {
        m.insert("failover_priority".into(), json!(tags.failover_priority));
    }
    (!m.is_empty()).then_some(Value::Object(m))
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

/// Parses a size like Patroni's `parse_int(value, 'B')`: an integer (decimal,
/// `0x` hex or `0` octal, as C's `strtol`) or a decimal fraction, optionally
/// followed by one of the case-sensitive units `B`, `kB`, `MB`, `GB`, `TB`
/// (powers of 1024). Anything else is `None`.
pub fn parse_size(value: &str) -> Option<i64> {
    let value = value.trim();
    let (int, rest) = match strtol(value) {
        Some((n, rest)) => (Some(n), rest),
        None => (None, value),
    };
    let (number, unit) =
        if (int.is_none() && rest.starts_with('.')) || rest.starts_with(['.', 'e', 'E']) {
            let (f, rest) = strtod(value)?;
            (f, rest)
        } else {
            // Exact integers stay exact when there is no unit.
            let n = int?;
            if rest.trim().is_empty() {
                return Some(saturate(n));
            }
            (n as f64, rest)
        };
    let multiplier: f64 = match unit.trim() {
        "" => return Some(round_to_i64(number)),
        "B" => 1.0,
        "kB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        "TB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = number * multiplier;
    // Patroni rounds a value in unit U to whole units of the next smaller unit.
    let granule = if multiplier > 1.0 {
        multiplier / 1024.0
    } else {
        1.0
    };
    Some(round_to_i64((bytes / granule).round_ties_even() * granule))
}

fn saturate(n: i128) -> i64 {
    i64::try_from(n).unwrap_or(if n < 0 { i64::MIN } else { i64::MAX })
}

/// Python's `round` (ties to even); `as` saturates out-of-range values.
fn round_to_i64(f: f64) -> i64 {
    f.round_ties_even() as i64
}

/// C `strtol` with base 0 on the start of `s`: `[-+]?0x[0-9a-fA-F]+`,
/// `[-+]?0[0-7]*`, or `[-+]?(0|[1-9][0-9]*)`. Returns the number and the rest.
fn strtol(s: &str) -> Option<(i128, &str)> {
    let (negative, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let sign_len = s.len() - body.len();
    let (radix, start, digits_len) = if let Some(hex) = body.strip_prefix("0x") {
        let n = hex.bytes().take_while(u8::is_ascii_hexdigit).count();
        if n == 0 {
            // "0x" without digits: the octal rule matches the leading "0".
            (8, 0, 1)
        } else {
            (16, 2, n)
        }
    } else if body.starts_with('0') {
        let n = body
            .bytes()
            .take_while(|b| (b'0'..=b'7').contains(b))
            .count();
        (8, 0, n)
    } else {
        let n = body.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        (10, 0, n)
    };
    let digits = &body[start..start + digits_len];
    let mut n: i128 = 0;
    for d in digits.chars() {
        let d = i128::from(d.to_digit(radix)?);
        // Saturate: a value this large means "no limit" either way.
        n = n.saturating_mul(i128::from(radix)).saturating_add(d);
    }
    let n = if negative { -n } else { n };
    Some((n, &s[sign_len + start + digits_len..]))
}

/// C `strtod`-like prefix `[-+]?[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?`.
fn strtod(s: &str) -> Option<(f64, &str)> {
    let b = s.as_bytes();
    let digits = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    let mut i = usize::from(matches!(b.first(), Some(b'-' | b'+')));
    let int_end = digits(i);
    let mut end = if int_end < b.len() && b[int_end] == b'.' && digits(int_end + 1) > int_end + 1 {
        digits(int_end + 1)
    } else if int_end > i {
        int_end
    } else {
        return None;
    };
    i = end;
    if i < b.len() && matches!(b[i], b'e' | b'E') {
        let mut j = i + 1;
        if j < b.len() && matches!(b[j], b'-' | b'+') {
            j += 1;
        }
        let exp_end = digits(j);
        if exp_end > j {
            end = exp_end;
        }
    }
    Some((s[..end].parse().ok()?, &s[end..]))
}

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
fn state_index(state: PgRunState) -> i64 {
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

fn is_recorded_sync(view: &ClusterView, member: &str) -> bool {
    view.sync
        .as_ref()
        .and_then(|s| s.sync_standby.as_deref())
        .is_some_and(|s| s == member)
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

/// Splits `host:port`, `[v6]:port` or a bare host.
pub fn split_host_port(addr: &str) -> (String, Option<u16>) {
    if let Some(rest) = addr.strip_prefix('[')
        && let Some((host, tail)) = rest.split_once(']')
    {
        return (
            host.to_owned(),
            tail.strip_prefix(':').and_then(|p| p.parse().ok()),
        );
    }
    match addr.rsplit_once(':') {
        // A second colon means a bare IPv6 address, not a port.
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(p) => (host.to_owned(), Some(p)),
            Err(_) => (addr.to_owned(), None),
        },
        _ => (addr.to_owned(), None),
    }
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
        }
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

/// Escapes a Prometheus label value.
fn label_value(s: &str) -> String {
    s.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// `major*10000 + minor*100 + patch`, as Patroni's zero-padded semver gauge.
fn version_number(version: &str) -> u64 {
    version
        .split('.')
        .take(3)
        .map(|p| {
            p.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse::<u64>()
                .unwrap_or(0)
        })
        .fold(0, |acc, p| acc * 100 + p)
}

/// The `GET /metrics` body: Patroni's gauges for what this member knows,
/// labelled `{scope, name}`, in Prometheus text format.
pub fn metrics_text(h: &Health) -> String {
    let labels = format!(
        "{{scope=\"{}\",name=\"{}\"}}",
        label_value(&h.scope),
        label_value(&h.member)
    );
    let status = h.status.as_ref();
    let running = h.pg_running();
    // Like Patroni, positions and timeline only count while PostgreSQL runs.
    let live = status.filter(|_| running);
    let location = live
        .filter(|s| s.role == Role::Primary)
        .map_or(0, |s| s.receive_lsn);
    let (received, replayed) = live
        .filter(|s| s.role == Role::Replica)
        .map_or((0, 0), |s| (s.receive_lsn, s.replay_lsn));
    let role = h.role();
    let rows: [(&str, &str, &str, i128); 14] = [
        (
            "patroni_version",
            "gauge",
            "Patroni semver without periods.",
            i128::from(version_number(env!("CARGO_PKG_VERSION"))),
        ),
        (
            "patroni_postgres_running",
            "gauge",
            "Value is 1 if Postgres is running, 0 otherwise.",
            i128::from(running),
        ),
        (
            "patroni_primary",
            "gauge",
            "Value is 1 if this node is the leader, 0 otherwise.",
            i128::from(role == Some(Role::Primary)),
        ),
        (
            "patroni_xlog_location",
            "counter",
            "Current location of the Postgres transaction log, 0 if this node is not the leader.",
            i128::from(location),
        ),
        (
            "patroni_replica",
            "gauge",
            "Value is 1 if this node is a replica, 0 otherwise.",
            i128::from(role == Some(Role::Replica)),
        ),
        (
            "patroni_sync_standby",
            "gauge",
            "Value is 1 if this node is a sync standby, 0 otherwise.",
            i128::from(running && h.is_sync_standby()),
        ),
        (
            "patroni_xlog_received_location",
            "counter",
            "Current location of the received Postgres transaction log, 0 if this node is not a replica.",
            i128::from(received),
        ),
        (
            "patroni_xlog_replayed_location",
            "counter",
            "Current location of the replayed Postgres transaction log, 0 if this node is not a replica.",
            i128::from(replayed),
        ),
        (
            "patroni_postgres_streaming",
            "gauge",
            "Value is 1 if Postgres is streaming, 0 otherwise.",
            i128::from(h.replication_state() == Some("streaming")),
        ),
        (
            "patroni_postgres_server_version",
            "gauge",
            "Version of Postgres (if running), 0 otherwise.",
            i128::from(h.server_version.filter(|_| running).unwrap_or(0)),
        ),
        (
            "patroni_cluster_unlocked",
            "gauge",
            "Value is 1 if the cluster is unlocked, 0 if locked.",
            i128::from(h.cluster.leader.is_none()),
        ),
        (
            "patroni_postgres_timeline",
            "gauge",
            "Postgres timeline of this node (if running), 0 otherwise.",
            i128::from(live.map_or(0, |s| s.timeline)),
        ),
        (
            "patroni_dcs_last_seen",
            "gauge",
            "Epoch timestamp when DCS was last contacted successfully by Patroni.",
            i128::from(h.dcs_last_seen),
        ),
        (
            "patroni_is_paused",
            "gauge",
            "Value is 1 if auto failover is disabled, 0 otherwise.",
            i128::from(h.cluster.paused),
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in rows {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name}{labels} {value}");
    }
    let hang_rows: [(&str, &str, &str, f64); 4] = [
        (
            "pgquorum_postgres_hangs_total",
            "counter",
            "Hangs of this member's PostgreSQL seen (no answer, WAL flush stuck or postmaster stopped for 1 s or more).",
            h.hangs.detected as f64,
        ),
        (
            "pgquorum_postgres_hang_kills_total",
            "counter",
            "Times this member, as primary, killed its hung PostgreSQL and released the leader lease.",
            h.hangs.primary_killed as f64,
        ),
        (
            "pgquorum_sync_standby_changes_total",
            "counter",
            "Times this primary un-recorded a synchronous standby that hung or left.",
            h.hangs.sync_standby_changes as f64,
        ),
        (
            "pgquorum_postgres_unanswered_seconds",
            "gauge",
            "How long PostgreSQL has not answered the health probe (0 while it answers).",
            h.pg_unanswered.map_or(0.0, |d| d.as_secs_f64()),
        ),
    ];
    for (name, kind, help, value) in hang_rows {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name}{labels} {value}");
    }
    // -1 when the state is not known yet, as Patroni does for "unknown".
    let state = status.map_or(-1, |s| state_index(s.state));
    let _ = writeln!(
        out,
        "# HELP patroni_postgres_state Numeric representation of Postgres state.\n\
         # Values: 4=creating_replica, 5=running, 6=starting, 12=stopped, 14=crashed\n\
         # TYPE patroni_postgres_state gauge\n\
         patroni_postgres_state{labels} {state}"
    );
    out
}

fn empty(status: StatusCode) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = status;
    resp
}

fn with_body(status: StatusCode, content_type: &'static str, body: String) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn json_response(status: StatusCode, doc: &Value) -> Response {
    with_body(status, "application/json", doc.to_string())
}

/// Answers one request from a snapshot. GET gets the body; HEAD and OPTIONS get
/// the status code only (HAProxy's `option httpchk` sends OPTIONS by default).
/// `/liveness` and `/readiness` never carry a body, as in Patroni.
pub fn respond(
    h: &Health,
    method: &Method,
    path: &str,
    query: &[(String, String)],
    now: Instant,
) -> Response {
    let Some(route) = route(path) else {
        return empty(StatusCode::NOT_FOUND);
    };
    let body_wanted = if method == Method::GET {
        true
    } else if method == Method::HEAD || method == Method::OPTIONS {
        false
    } else {
        let mut resp = empty(StatusCode::METHOD_NOT_ALLOWED);
        resp.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, OPTIONS"),
        );
        return resp;
    };
    let status = match route {
        Route::Check(endpoint) => health_code(endpoint, h, query, now),
        Route::Patroni | Route::Cluster | Route::Metrics => StatusCode::OK,
    };
    if !body_wanted {
        return empty(status);
    }
    match route {
        Route::Check(Endpoint::Liveness | Endpoint::Readiness) => empty(status),
        Route::Check(_) | Route::Patroni => json_response(status, &status_json(h)),
        Route::Cluster => json_response(status, &cluster_json(&h.scope, &h.cluster)),
        Route::Metrics => with_body(status, METRICS_CONTENT_TYPE, metrics_text(h)),
    }
}

async fn handle(State(rx): State<watch::Receiver<Health>>, method: Method, uri: Uri) -> Response {
    // A malformed query string is treated as no parameters rather than
    // refused: health checks must answer with 200 or 503.
    let query: Vec<(String, String)> = Query::try_from_uri(&uri)
        .map(|Query(q)| q)
        .unwrap_or_default();
    let now = Instant::now();
    // The borrow is held only while the response is built, never across an await.
    let h = rx.borrow();
    respond(&h, &method, uri.path(), &query, now)
}

/// The REST API over the latest [`Health`] snapshot in `rx`.
pub fn router(rx: watch::Receiver<Health>) -> Router {
    // One fallback handler for every path and method, so that OPTIONS, HEAD,
    // 404 and 405 are all answered the same way Patroni's server does.
    Router::new().fallback(handle).with_state(rx)
}

/// Serves the REST API on `listener` until `shutdown` completes, then finishes
/// in-flight requests and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    rx: watch::Receiver<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(rx))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::model::SyncState;

    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    const MB: u64 = 1024 * 1024;
    const OPTIME: u64 = 0x5_0000_0000;

    fn status(name: &str, role: Role, state: PgRunState) -> MemberStatus {
        MemberStatus {
            name: name.into(),
            role,
            state,
            pg_addr: format!("10.0.0.{}:5432", &name[2..]),
            api_url: format!("http://10.0.0.{}:8008/patroni", &name[2..]),
            timeline: 3,
            receive_lsn: OPTIME,
            replay_lsn: OPTIME,
            following: (role == Role::Replica).then(|| "pg1".to_owned()),
            tags: Tags::default(),
            sync_standby: false,
            node_id: 1,
        }
    }

    /// A far-off "now", so that instants before it never underflow.
    fn now() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    /// Cluster: pg1 primary with the lease, pg2 sync standby, pg3 async replica.
    fn health(member: &str, own: MemberStatus, now: Instant) -> Health {
        let mut cluster = ClusterView {
            leader: Some("pg1".into()),
            optime: Some(OPTIME),
            sync: Some(SyncState {
                leader: "pg1".into(),
                sync_standby: Some("pg2".into()),
            }),
            ..ClusterView::default()
        };
        for (name, role) in [
            ("pg1", Role::Primary),
            ("pg2", Role::Replica),
            ("pg3", Role::Replica),
        ] {
            cluster
                .members
                .insert(name.into(), status(name, role, PgRunState::Running));
        }
        cluster.members.insert(member.into(), own.clone());
        Health {
            scope: "prod".into(),
            member: member.into(),
            status: Some(own),
            cluster,
            last_cycle: Some(now - Duration::from_millis(200)),
            ttl: Duration::from_secs(3),
            server_version: Some(160004),
            system_identifier: Some(7_277_694_203_142_172_922),
            dcs_last_seen: 1_700_000_000,
            pg_last_answer: Some(now - Duration::from_millis(300)),
            ..Health::default()
        }
    }

    fn primary_with_lock(now: Instant) -> Health {
        let mut h = health(
            "pg1",
            status("pg1", Role::Primary, PgRunState::Running),
            now,
        );
        h.leader_lease_until = Some(now + Duration::from_secs(2));
        h
    }

    /// The deadline passed a moment ago; the store still names pg1 (the Raft
    /// leader has not expired the lease yet), and PostgreSQL still runs as primary.
    fn primary_lock_expired(now: Instant) -> Health {
        let mut h = primary_with_lock(now);
        h.leader_lease_until = Some(now - Duration::from_millis(1));
        h
    }

    fn replica(name: &str, replay_behind: u64, now: Instant) -> Health {
        let mut s = status(name, Role::Replica, PgRunState::Running);
        s.replay_lsn = OPTIME - replay_behind;
        s.receive_lsn = OPTIME - replay_behind / 2;
        health(name, s, now)
    }

    fn stopped(now: Instant) -> Health {
        health(
            "pg3",
            status("pg3", Role::Replica, PgRunState::Stopped),
            now,
        )
    }

    fn q(s: &str) -> Vec<(String, String)> {
        s.split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect()
    }

    const OK: u16 = 200;
    const NO: u16 = 503;

    fn check(name: &str, h: &Health, now: Instant, table: &[(&str, &str, u16)]) {
        for &(path, query, want) in table {
            let Some(Route::Check(endpoint)) = route(path) else {
                panic!("{path} is not a health check");
            };
            let got = health_code(endpoint, h, &q(query), now);
            assert_eq!(got.as_u16(), want, "{name}: {path}?{query}");
        }
    }

    #[test]
    fn primary_with_lock_codes() {
        let now = now();
        check(
            "primary with lock",
            &primary_with_lock(now),
            now,
            &[
                ("/", "", OK),
                ("/primary", "", OK),
                ("/master", "", OK),
                ("/read-write", "", OK),
                ("/leader", "", OK),
                ("/replica", "", NO),
                ("/read-only", "", OK),
                ("/sync", "", NO),
                ("/synchronous", "", NO),
                ("/read-only-sync", "", OK),
                ("/async", "", NO),
                ("/asynchronous", "", NO),
                ("/health", "", OK),
                ("/liveness", "", OK),
                ("/readiness", "", OK),
                // Tags are ignored on /primary and /leader, as in Patroni...
                ("/primary", "tag_nosuch=1", OK),
                ("/leader", "tag_nofailover=true", OK),
                // ...but not on /read-only or /health.
                ("/read-only", "tag_nosuch=1", NO),
                ("/health", "tag_nofailover=false", OK),
                ("/health", "tag_nofailover=true", NO),
            ],
        );
    }

    #[test]
    fn primary_whose_lock_just_expired_is_not_primary() {
        let now = now();
        check(
            "lock expired",
            &primary_lock_expired(now),
            now,
            &[
                ("/", "", NO),
                ("/primary", "", NO),
                ("/read-write", "", NO),
                ("/leader", "", NO),
                ("/read-only", "", NO),
                ("/read-only-sync", "", NO),
                ("/replica", "", NO),
                ("/readiness", "", NO),
                // PostgreSQL itself still runs and the loop is alive.
                ("/health", "", OK),
                ("/liveness", "", OK),
            ],
        );
        // No lease at all is the same.
        let mut h = primary_with_lock(now);
        h.leader_lease_until = None;
        check(
            "no lease",
            &h,
            now,
            &[("/primary", "", NO), ("/leader", "", NO)],
        );
    }

    #[test]
    fn lock_holder_not_yet_running_as_primary_is_leader_only() {
        let now = now();
        let mut h = primary_with_lock(now);
        // Promotion in progress: lease taken, PostgreSQL still in recovery.
        h.status = Some(status("pg1", Role::Replica, PgRunState::Running));
        check(
            "promoting",
            &h,
            now,
            &[
                ("/primary", "", NO),
                ("/leader", "", OK),
                ("/readiness", "", OK),
            ],
        );
    }

    #[test]
    fn streaming_replica_codes() {
        let now = now();
        check(
            "streaming replica",
            &replica("pg3", 1000, now),
            now,
            &[
                ("/", "", NO),
                ("/primary", "", NO),
                ("/read-write", "", NO),
                ("/leader", "", NO),
                ("/replica", "", OK),
                ("/replica", "lag=16MB", OK),
                ("/replica", "lag=1000", OK),
                ("/replica", "lag=999", NO),
                ("/replica", "lag=garbage", OK),
                ("/replica", "replication_state=streaming", OK),
                ("/replica", "replication_state=in%20archive%20recovery", NO),
                ("/replica", "tag_noloadbalance=false", OK),
                ("/replica", "tag_failover_priority=0", OK),
                ("/replica", "tag_failover_priority=1", NO),
                ("/replica", "tag_dc=east", NO),
                ("/read-only", "", OK),
                ("/sync", "", NO),
                ("/read-only-sync", "", NO),
                ("/async", "", OK),
                ("/asynchronous", "lag=512B", NO),
                ("/asynchronous", "lag=1kB", OK),
                ("/health", "", OK),
                ("/liveness", "", OK),
                ("/readiness", "", OK),
                ("/readiness", "lag=999", NO),
                // mode=write measures the receive position (500 bytes behind).
                ("/readiness", "lag=999&mode=write", OK),
            ],
        );
    }

    #[test]
    fn lagging_replica_codes() {
        let now = now();
        let h = replica("pg3", 32 * MB, now);
        check(
            "lagging replica",
            &h,
            now,
            &[
                ("/replica", "", OK),
                ("/replica", "lag=16MB", NO),
                ("/replica", "lag=16777216", NO),
                ("/replica", "lag=32MB", OK),
                ("/replica", "lag=64MB", OK),
                ("/read-only", "lag=16MB", NO),
                ("/async", "lag=16MB", NO),
                ("/async", "lag=1GB", OK),
                ("/health", "lag=16MB", OK),
                // Default readiness limit: maximum_lag_on_failover (1 MiB).
                ("/readiness", "", NO),
                ("/readiness", "lag=64MB", OK),
            ],
        );
        // Without a known primary position nothing counts as lagging.
        let mut h = h;
        h.cluster.optime = None;
        check(
            "no optime",
            &h,
            now,
            &[("/replica", "lag=16MB", OK), ("/readiness", "", OK)],
        );
    }

    #[test]
    fn sync_standby_codes() {
        let now = now();
        check(
            "sync standby",
            &replica("pg2", 0, now),
            now,
            &[
                ("/primary", "", NO),
                ("/replica", "", OK),
                ("/sync", "", OK),
                ("/synchronous", "", OK),
                ("/read-only-sync", "", OK),
                ("/async", "", NO),
                ("/asynchronous", "", NO),
                ("/read-only", "", OK),
                ("/sync", "tag_nofailover=false", OK),
                ("/sync", "tag_nofailover=true", NO),
            ],
        );
        // The sync standby stopped: not sync-healthy any more.
        let mut h = replica("pg2", 0, now);
        h.status.as_mut().unwrap().state = PgRunState::Stopped;
        check("stopped sync standby", &h, now, &[("/sync", "", NO)]);
    }

    #[test]
    fn noloadbalance_replica_is_not_a_replica_target() {
        let now = now();
        let mut h = replica("pg3", 0, now);
        h.status.as_mut().unwrap().tags.noloadbalance = true;
        check(
            "noloadbalance",
            &h,
            now,
            &[
                ("/replica", "", NO),
                ("/read-only", "", NO),
                ("/async", "", NO),
                ("/health", "", OK),
            ],
        );
    }

    #[test]
    fn stopped_node_codes() {
        let now = now();
        let all = [
            "/",
            "/primary",
            "/read-write",
            "/leader",
            "/replica",
            "/read-only",
            "/sync",
            "/read-only-sync",
            "/async",
            "/health",
            "/readiness",
        ];
        let table: Vec<(&str, &str, u16)> = all.iter().map(|p| (*p, "", NO)).collect();
        check("stopped", &stopped(now), now, &table);
        // The HA loop still runs.
        check("stopped", &stopped(now), now, &[("/liveness", "", OK)]);
        // Before the first cycle nothing is known.
        let h = Health {
            leader_lease_until: Some(now + Duration::from_secs(1)),
            ..Health::default()
        };
        let mut table: Vec<(&str, &str, u16)> = all
            .iter()
            .filter(|p| !matches!(**p, "/leader" | "/readiness"))
            .map(|p| (*p, "", NO))
            .collect();
        table.push(("/liveness", "", NO));
        check("no status", &h, now, &table);
    }

    #[test]
    fn liveness_follows_the_ha_loop() {
        let now = now();
        let mut h = primary_with_lock(now);
        // A primary must have completed a cycle within ttl...
        h.last_cycle = Some(now - Duration::from_millis(2999));
        check("primary fresh", &h, now, &[("/liveness", "", OK)]);
        h.last_cycle = Some(now - Duration::from_secs(3));
        check("primary stale", &h, now, &[("/liveness", "", NO)]);
        // ...a replica within 2 * ttl.
        let mut r = replica("pg3", 0, now);
        r.last_cycle = Some(now - Duration::from_secs(5));
        check("replica", &r, now, &[("/liveness", "", OK)]);
        r.last_cycle = Some(now - Duration::from_secs(6));
        check("replica stale", &r, now, &[("/liveness", "", NO)]);
        // In pause a stuck loop is tolerated, as in Patroni.
        r.cluster.paused = true;
        check("paused", &r, now, &[("/liveness", "", OK)]);
    }

    #[test]
    fn sizes_parse_like_patroni() {
        let cases: &[(&str, Option<i64>)] = &[
            ("1024", Some(1024)),
            ("0", Some(0)),
            (" 16MB ", Some(16 * 1024 * 1024)),
            ("16 MB", Some(16 * 1024 * 1024)),
            ("64kB", Some(64 * 1024)),
            ("1GB", Some(1 << 30)),
            ("1TB", Some(1 << 40)),
            ("10B", Some(10)),
            ("1.5MB", Some(1_572_864)),
            (".5kB", Some(512)),
            ("1e3", Some(1000)),
            ("0x400", Some(1024)),
            ("0x400 MB", Some(1 << 30)),
            // C strtol: a leading 0 is octal.
            ("010", Some(8)),
            ("-1", Some(-1)),
            ("1mb", None),
            ("1KB", None),
            ("16MiB", None),
            ("abc", None),
            ("", None),
            ("-", None),
        ];
        for &(input, want) in cases {
            assert_eq!(parse_size(input), want, "{input:?}");
        }
        assert_eq!(
            parse_size("99999999999999999999999999999999999999999"),
            Some(i64::MAX)
        );
    }

    #[test]
    fn routes() {
        assert_eq!(route("/"), Some(Route::Check(Endpoint::Primary)));
        assert_eq!(route("/patroni"), Some(Route::Patroni));
        assert_eq!(route("/cluster"), Some(Route::Cluster));
        assert_eq!(route("/metrics"), Some(Route::Metrics));
        for unknown in [
            "/primary/",
            "/PRIMARY",
            "/standby-leader",
            "/config",
            "/foo",
            "",
        ] {
            assert_eq!(route(unknown), None, "{unknown}");
        }
    }

    #[test]
    fn patroni_document_of_a_primary() {
        let now = now();
        let doc = status_json(&primary_with_lock(now));
        assert_eq!(
            doc,
            json!({
                "state": "running",
                "role": "primary",
                "server_version": 160004,
                "xlog": {"location": OPTIME},
                "timeline": 3,
                "dcs_last_seen": 1_700_000_000u64,
                "database_system_identifier": "7277694203142172922",
                "patroni": {"version": env!("CARGO_PKG_VERSION"), "scope": "prod", "name": "pg1"},
            })
        );
    }

    #[test]
    fn patroni_document_of_replicas_and_stopped_nodes() {
        let now = now();
        let doc = status_json(&replica("pg2", 1000, now));
        assert_eq!(doc["role"], "replica");
        assert_eq!(
            doc["xlog"],
            json!({"received_location": OPTIME - 500, "replayed_location": OPTIME - 1000})
        );
        assert_eq!(doc["replication_state"], "streaming");
        assert_eq!(doc["sync_standby"], true);
        assert!(doc.get("cluster_unlocked").is_none());

        let mut h = stopped(now);
        h.cluster.leader = None;
        h.cluster.paused = true;
        h.status.as_mut().unwrap().tags.nofailover = true;
        let doc = status_json(&h);
        assert_eq!(doc["state"], "stopped");
        for absent in [
            "xlog",
            "timeline",
            "server_version",
            "replication_state",
            "sync_standby",
        ] {
            assert!(doc.get(absent).is_none(), "{absent} in {doc}");
        }
        assert_eq!(doc["cluster_unlocked"], true);
        assert_eq!(doc["pause"], true);
        assert_eq!(doc["tags"], json!({"nofailover": true}));

        let doc = status_json(&Health::default());
        assert_eq!(doc["state"], "unknown");
        assert_eq!(doc["role"], "uninitialized");
        assert_eq!(doc["cluster_unlocked"], true);
    }

    #[test]
    fn cluster_document() {
        let now = now();
        let mut h = replica("pg3", 3 * MB, now);
        let mut unknown = status("pg4", Role::Replica, PgRunState::Starting);
        unknown.receive_lsn = 0;
        unknown.replay_lsn = 0;
        unknown.pg_addr = "[fd00::4]:5433".into();
        h.cluster.members.insert("pg4".into(), unknown);
        let doc = cluster_json("prod", &h.cluster);
        assert_eq!(doc["scope"], "prod");
        let members = doc["members"].as_array().unwrap();
        let names: Vec<&str> = members
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["pg1", "pg2", "pg3", "pg4"]);
        assert_eq!(
            members[0],
            json!({
                "name": "pg1", "role": "leader", "state": "running",
                "api_url": "http://10.0.0.1:8008/patroni",
                "host": "10.0.0.1", "port": 5432, "timeline": 3,
            })
        );
        assert_eq!(members[1]["role"], "sync_standby");
        assert_eq!(members[1]["state"], "streaming");
        assert_eq!(members[1]["lag"], 0);
        let pg3 = &members[2];
        assert_eq!(pg3["role"], "replica");
        assert_eq!(pg3["replay_lsn"], format_lsn(OPTIME - 3 * MB));
        assert_eq!(pg3["replay_lag"], 3 * MB);
        assert_eq!(pg3["receive_lag"], 3 * MB / 2);
        assert_eq!(pg3["lsn"], format_lsn(OPTIME - 3 * MB / 2));
        assert_eq!(pg3["lag"], 3 * MB / 2);
        let pg4 = &members[3];
        assert_eq!(pg4["state"], "starting");
        assert_eq!(pg4["host"], "fd00::4");
        assert_eq!(pg4["port"], 5433);
        for k in [
            "receive_lsn",
            "receive_lag",
            "replay_lsn",
            "replay_lag",
            "lsn",
            "lag",
        ] {
            assert_eq!(pg4[k], "unknown", "{k}");
        }
        assert!(doc.get("pause").is_none());
    }

    #[test]
    fn host_port_splitting() {
        assert_eq!(split_host_port("db1:5432"), ("db1".into(), Some(5432)));
        assert_eq!(split_host_port("[::1]:6432"), ("::1".into(), Some(6432)));
        assert_eq!(split_host_port("db1"), ("db1".into(), None));
        assert_eq!(split_host_port("::1"), ("::1".into(), None));
        assert_eq!(split_host_port("db1:x"), ("db1:x".into(), None));
        assert_eq!(split_host_port(""), (String::new(), None));
    }

    #[test]
    fn metrics_of_a_replica() {
        let now = now();
        let mut h = replica("pg2", 1000, now);
        h.scope = "a\"b".into();
        let text = metrics_text(&h);
        let labels = r#"{scope="a\"b",name="pg2"}"#;
        for (name, value) in [
            ("patroni_postgres_running", 1),
            ("patroni_primary", 0),
            ("patroni_replica", 1),
            ("patroni_sync_standby", 1),
            ("patroni_xlog_location", 0),
            ("patroni_xlog_received_location", OPTIME - 500),
            ("patroni_xlog_replayed_location", OPTIME - 1000),
            ("patroni_postgres_timeline", 3),
            ("patroni_postgres_streaming", 1),
            ("patroni_postgres_server_version", 160004),
            ("patroni_cluster_unlocked", 0),
            ("patroni_is_paused", 0),
            ("patroni_dcs_last_seen", 1_700_000_000),
            ("patroni_postgres_state", 5),
            ("patroni_version", version_number(env!("CARGO_PKG_VERSION"))),
        ] {
            assert!(
                text.contains(&format!("\n{name}{labels} {value}\n")),
                "{name} {value} missing in\n{text}"
            );
            assert!(text.contains(&format!("# HELP {name} ")), "{name} help");
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} type");
        }
        assert!(text.contains("# TYPE patroni_xlog_location counter\n"));
        assert!(text.contains("# TYPE patroni_primary gauge\n"));
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn metrics_of_a_primary_and_an_unknown_node() {
        let now = now();
        let text = metrics_text(&primary_with_lock(now));
        assert!(text.contains(&format!(
            "patroni_xlog_location{{scope=\"prod\",name=\"pg1\"}} {OPTIME}\n"
        )));
        assert!(text.contains("patroni_primary{scope=\"prod\",name=\"pg1\"} 1\n"));
        let text = metrics_text(&Health::default());
        assert!(text.contains("patroni_postgres_state{scope=\"\",name=\"\"} -1\n"));
        assert!(text.contains("patroni_cluster_unlocked{scope=\"\",name=\"\"} 1\n"));
        assert_eq!(version_number("0.1.0"), 100);
        assert_eq!(version_number("4.1.4"), 40104);
        assert_eq!(version_number("1.2.3-rc1"), 10203);
    }

    async fn call(app: Router, method: Method, uri: &str) -> (StatusCode, Option<String>, String) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        let status = resp.status();
        let ctype = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, ctype, String::from_utf8(body.to_vec()).unwrap())
    }

    /// A primary with a lease valid for a minute of real time.
    fn live_primary() -> Health {
        let real_now = Instant::now();
        let mut h = primary_with_lock(real_now);
        h.leader_lease_until = Some(real_now + Duration::from_secs(60));
        h.last_cycle = Some(real_now);
        h
    }

    #[tokio::test]
    async fn get_head_and_options() {
        let (_tx, rx) = watch::channel(live_primary());
        let app = router(rx);

        let (code, ctype, body) = call(app.clone(), Method::GET, "/primary").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(ctype.as_deref(), Some("application/json"));
        let doc: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["role"], "primary");

        for method in [Method::HEAD, Method::OPTIONS] {
            let (code, _, body) = call(app.clone(), method.clone(), "/primary").await;
            assert_eq!(code, StatusCode::OK, "{method}");
            assert!(body.is_empty(), "{method}: {body}");
            let (code, _, body) = call(app.clone(), method.clone(), "/replica?lag=1MB").await;
            assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{method}");
            assert!(body.is_empty(), "{method}: {body}");
        }

        // A failed check still carries the status document on GET.
        let (code, _, body) = call(app.clone(), Method::GET, "/replica").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["role"],
            "primary"
        );

        let (code, _, body) = call(app.clone(), Method::GET, "/liveness").await;
        assert_eq!((code, body.as_str()), (StatusCode::OK, ""));
    }

    #[tokio::test]
    async fn unknown_paths_and_methods() {
        let (_tx, rx) = watch::channel(live_primary());
        let app = router(rx);
        for method in [Method::GET, Method::HEAD, Method::OPTIONS] {
            let (code, _, _) = call(app.clone(), method, "/nope").await;
            assert_eq!(code, StatusCode::NOT_FOUND);
        }
        let (code, _, _) = call(app.clone(), Method::POST, "/switchover").await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        let req = Request::builder()
            .method(Method::POST)
            .uri("/primary")
            .body(Body::empty())
            .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(resp.headers()[header::ALLOW], "GET, HEAD, OPTIONS");
    }

    #[tokio::test]
    async fn read_endpoints_and_live_updates() {
        let (tx, rx) = watch::channel(live_primary());
        let app = router(rx);

        let (code, ctype, body) = call(app.clone(), Method::GET, "/metrics").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(ctype.as_deref(), Some(METRICS_CONTENT_TYPE));
        assert!(body.contains("patroni_primary{scope=\"prod\",name=\"pg1\"} 1\n"));

        let (code, _, body) = call(app.clone(), Method::GET, "/cluster").await;
        assert_eq!(code, StatusCode::OK);
        let doc: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["members"][0]["role"], "leader");

        let (code, _, body) = call(app.clone(), Method::GET, "/patroni").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["patroni"]["name"],
            "pg1"
        );

        // The next cycle gives the lease up: the very next request sees it.
        tx.send_modify(|h| h.leader_lease_until = None);
        let (code, _, _) = call(app.clone(), Method::HEAD, "/primary").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        // /patroni answers 200 whatever the role.
        let (code, _, _) = call(app, Method::GET, "/patroni").await;
        assert_eq!(code, StatusCode::OK);
    }

    #[tokio::test]
    async fn serves_over_tcp_until_shutdown() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_tx, rx) = watch::channel(live_primary());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, rx, async {
            let _ = stop_rx.await;
        }));

        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"OPTIONS /primary HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut reply = String::new();
        conn.read_to_string(&mut reply).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");

        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("server stops after shutdown")
            .unwrap()
            .unwrap();
    }
}
