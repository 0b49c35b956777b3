//! What one member knows about its own health, as the supervisor publishes it
//! after every HA cycle for the REST API to answer from (a `watch` channel). Data
//! only: the rules that turn it into status codes live in `api::rest`.

use std::time::Duration;

use tokio::time::Instant;

use super::model::{ClusterView, MemberStatus, PgRunState, Role};
use super::view::{is_recorded_sync, replication_state};
use crate::config::HaSettings;

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
    /// The fence deadline the leader lease's last committed renewal set, written by
    /// the renewal task itself (so it moves between cycles); in the past once
    /// renewals stop. Metrics only: the health checks use `leader_lease_until`.
    pub fence_deadline: Option<Instant>,
    /// Committed renewals of the leader lease: how long each took (request to commit).
    pub lease_renewals: Histogram,
    /// HA decisions since start, by the kind of their reason (`Reason::kind`).
    pub decisions: std::collections::BTreeMap<String, u64>,
    /// This node's view of Raft (filled in by the node, not the supervisor).
    pub raft: RaftStats,
    /// What PostgreSQL last reported about itself.
    pub pg_times: PgTimes,
    /// The HA loop is carrying out an action (`Action::kind`), which may take long
    /// (initdb, pg_basebackup, a start with crash recovery, `pre_promote`); the
    /// systemd watchdog is fed meanwhile.
    pub busy: Option<String>,
    /// A running clone's progress (pg_basebackup), while one runs.
    pub copy: Option<CopyProgress>,
    /// Whole days until this node's TLS certificate expires (filled in by the node;
    /// `None` without `[tls]`).
    pub cert_days_left: Option<i64>,
}

/// How far a running clone has got (`/patroni`'s `progress`, `ctl reinit --wait`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyProgress {
    pub copied_bytes: u64,
    /// `None` when the source's size could not be read.
    pub total_bytes: Option<u64>,
    pub seconds: u64,
}

impl CopyProgress {
    pub fn percent(&self) -> Option<u64> {
        self.total_bytes
            .filter(|t| *t > 0)
            .map(|t| (self.copied_bytes.saturating_mul(100) / t).min(100))
    }
}

/// Bucket bounds (seconds) of the leader-lease renewal latency: a renewal is one
/// Raft commit, normally milliseconds; the last buckets are the ttl budget's scale.
pub const RENEW_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];

/// A Prometheus-style histogram: counts per upper bound (not cumulative), sum, count.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    pub bounds: &'static [f64],
    /// `counts[i]`: observations in (bounds[i-1], bounds[i]]; the last entry is +Inf.
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    /// `(le, cumulative count)` per bucket, `+Inf` last, as exposed.
    pub fn cumulative(&self) -> Vec<(String, u64)> {
        let mut total = 0;
        let mut out = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            total += c;
            let le = self
                .bounds
                .get(i)
                .map_or("+Inf".to_string(), |b| b.to_string());
            out.push((le, total));
        }
        out
    }
}

/// Raft as this node sees it (openraft's metrics, copied by the node).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RaftStats {
    pub node_id: u64,
    pub term: u64,
    pub leader: Option<u64>,
    pub commit_index: u64,
    pub applied_index: u64,
}

/// Times PostgreSQL reports (Unix milliseconds), for Patroni's metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PgTimes {
    /// `pg_postmaster_start_time()`.
    pub postmaster_start_ms: Option<i64>,
    /// Replica: `pg_is_wal_replay_paused()`.
    pub replay_paused: bool,
    /// Replica: `pg_last_xact_replay_timestamp()`.
    pub last_replayed_ms: Option<i64>,
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
            busy: None,
            copy: None,
            fence_deadline: None,
            lease_renewals: Histogram::new(RENEW_BUCKETS),
            decisions: Default::default(),
            raft: RaftStats::default(),
            pg_times: PgTimes::default(),
            cert_days_left: None,
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

    pub fn role(&self) -> Option<Role> {
        self.status.as_ref().map(|s| s.role)
    }

    /// Runs as a replica and is the standby recorded in `/pg/sync`.
    pub fn is_sync_standby(&self) -> bool {
        self.role() == Some(Role::Replica) && is_recorded_sync(&self.cluster, &self.member)
    }

    /// Patroni's `replication_state`: only `streaming` is known here.
    pub fn replication_state(&self) -> Option<&'static str> {
        self.status.as_ref().and_then(replication_state)
    }
}
