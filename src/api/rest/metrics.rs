//! `GET /metrics`: Patroni's gauges and pgquorum's own counters, in Prometheus
//! text format.

use std::fmt::Write as _;

use tokio::time::Instant;

use crate::ha::health::Health;
use crate::ha::model::Role;
use crate::ha::view::state_index;

/// Escapes a Prometheus label value.
fn label_value(s: &str) -> String {
    s.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// `major*10000 + minor*100 + patch`, as Patroni's zero-padded semver gauge.
pub(super) fn version_number(version: &str) -> u64 {
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
pub fn metrics_text(h: &Health, now: Instant) -> String {
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
    let rows: [(&str, &str, &str, i128); 15] = [
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
            "patroni_pending_restart",
            "gauge",
            "Value is 1 if the node needs a restart, 0 otherwise.",
            i128::from(live.is_some_and(|s| s.pending_restart)),
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
    let secs = |ms: Option<i64>| ms.map_or(0.0, |ms| ms as f64 / 1000.0);
    let pg = &h.pg_times;
    let raft = &h.raft;
    // From the renewal task's own deadline, which moves between cycles; in the past
    // (0) once renewals stopped.
    let fence_left = h.fence_deadline.map_or(0.0, |until| {
        until.saturating_duration_since(now).as_secs_f64()
    });
    let gauge_rows: [(&str, &str, &str, f64); 15] = [
        (
            "patroni_postmaster_start_time",
            "gauge",
            "Epoch seconds since Postgres started.",
            if running {
                secs(pg.postmaster_start_ms)
            } else {
                0.0
            },
        ),
        (
            "patroni_xlog_paused",
            "gauge",
            "Value is 1 if the Postgres xlog is paused, 0 otherwise.",
            f64::from(u8::from(running && pg.replay_paused)),
        ),
        (
            "patroni_xlog_replayed_timestamp",
            "gauge",
            "Current timestamp of the replayed Postgres transaction log, 0 if null.",
            if running {
                secs(pg.last_replayed_ms)
            } else {
                0.0
            },
        ),
        (
            "patroni_postgres_in_archive_recovery",
            "gauge",
            "Value is 1 if Postgres is replicating from archive, 0 otherwise.",
            // A running replica that streams from no one replays from its own
            // pg_wal (or an archive): Patroni's `in archive recovery`.
            f64::from(u8::from(live.is_some_and(|s| {
                s.role == Role::Replica && s.following.is_none()
            }))),
        ),
        (
            "patroni_failsafe_mode_is_active",
            "gauge",
            "Value is 1 if failsafe mode is active, 0 if inactive. pgquorum has no failsafe \
             mode: a primary that cannot renew its lease through the Raft quorum always fences.",
            0.0,
        ),
        (
            "pgquorum_raft_term",
            "gauge",
            "Current Raft term as this node sees it.",
            raft.term as f64,
        ),
        (
            "pgquorum_raft_leader",
            "gauge",
            "Node id of the Raft leader this node knows, 0 if none.",
            raft.leader.unwrap_or(0) as f64,
        ),
        (
            "pgquorum_raft_is_leader",
            "gauge",
            "Value is 1 if this node is the Raft leader, 0 otherwise.",
            f64::from(u8::from(
                raft.leader.is_some() && raft.leader == Some(raft.node_id),
            )),
        ),
        (
            "pgquorum_raft_commit_index",
            "gauge",
            "Index of the last Raft log entry this node knows committed.",
            raft.commit_index as f64,
        ),
        (
            "pgquorum_raft_applied_index",
            "gauge",
            "Index of the last Raft log entry applied to this node's state machine.",
            raft.applied_index as f64,
        ),
        (
            "pgquorum_fence_deadline_seconds",
            "gauge",
            "Seconds until this primary's leader lease, and with it the fence deadline, runs out if not renewed; 0 when it holds no lease.",
            fence_left,
        ),
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
    for (name, kind, help, value) in gauge_rows {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name}{labels} {value}");
    }
    let r = &h.lease_renewals;
    let _ = writeln!(
        out,
        "# HELP pgquorum_lease_renew_seconds Time from sending a leader-lease renewal to its Raft commit (committed renewals only).\n\
         # TYPE pgquorum_lease_renew_seconds histogram"
    );
    let base = labels.trim_end_matches('}');
    for (le, count) in r.cumulative() {
        let _ = writeln!(
            out,
            "pgquorum_lease_renew_seconds_bucket{base},le=\"{le}\"}} {count}"
        );
    }
    let _ = writeln!(out, "pgquorum_lease_renew_seconds_sum{labels} {}", r.sum);
    let _ = writeln!(
        out,
        "pgquorum_lease_renew_seconds_count{labels} {}",
        r.count
    );
    let _ = writeln!(
        out,
        "# HELP pgquorum_ha_decisions_total HA loop cycles by the kind of their decision's reason.\n\
         # TYPE pgquorum_ha_decisions_total counter"
    );
    for (reason, n) in &h.decisions {
        let _ = writeln!(
            out,
            "pgquorum_ha_decisions_total{base},reason=\"{}\"}} {n}",
            label_value(reason)
        );
    }
    // Only with TLS: a 0 without a certificate would read as "expires today".
    if let Some(d) = h.cert_days_left {
        let _ = writeln!(
            out,
            "# HELP pgquorum_certificate_days_left Whole days until this node's TLS certificate expires (negative once it has; the node warns below 30).\n\
             # TYPE pgquorum_certificate_days_left gauge\n\
             pgquorum_certificate_days_left{labels} {d}"
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_days_appear_only_with_tls() {
        let now = Instant::now();
        let plain = metrics_text(&Health::default(), now);
        assert!(!plain.contains("pgquorum_certificate_days_left"));
        let h = Health {
            cert_days_left: Some(12),
            ..Health::default()
        };
        let text = metrics_text(&h, now);
        assert!(
            text.contains("# TYPE pgquorum_certificate_days_left gauge\n"),
            "{text}"
        );
        assert!(text.contains("pgquorum_certificate_days_left{"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("pgquorum_certificate_days_left{") && l.ends_with(" 12"))
        );
    }
}
