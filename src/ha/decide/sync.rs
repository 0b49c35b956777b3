//! The synchronous standbys, on the primary: whom PostgreSQL waits for, and whom the
//! store records as holding every acknowledged commit.

use super::{Action, Observation, Reason, StoreView};
use crate::ha::bugs::{self, Bug};
use crate::ha::model::{PgRunState, Role};

/// Synchronous standby management on the primary. The store record is what a
/// failover trusts, so: a standby is recorded only after PostgreSQL confirms it
/// synchronous *and* it has flushed the primary's WAL up to a position sampled after
/// that (it then holds every commit acknowledged before it became synchronous, too),
/// and the record drops a standby before PostgreSQL stops waiting for it (left, or
/// hung: holding commits up with its flush position standing still). Commits wait
/// for up to `synchronous_node_count` standbys, each of which is recorded once it
/// holds them all. A notable change comes with its reason.
pub(super) fn sync_actions(o: &Observation, store: &StoreView) -> (Vec<Action>, Option<Reason>) {
    let pg = &o.pg;
    let recorded: Vec<String> = store
        .sync
        .as_ref()
        .filter(|s| s.leader == o.me)
        .map(|s| sorted(s.sync_standby.clone()))
        .unwrap_or_default();
    let configured = sorted(pg.sync_standby_names.clone());
    if !o.policy.synchronous_mode {
        let mut a = Vec::new();
        if store
            .sync
            .as_ref()
            .is_some_and(|s| !s.sync_standby.is_empty())
        {
            a.push(Action::RecordSync(vec![]));
        }
        if !configured.is_empty() {
            a.push(Action::SetSyncStandby(vec![]));
        }
        return (a, None);
    }
    let want = o.policy.synchronous_node_count.max(1);
    let streaming = |name: &str| pg.streaming_replicas.iter().any(|(n, _)| n == name);
    let confirmed = |name: &str| pg.streaming_replicas.iter().any(|(n, s)| n == name && *s);
    // A standby only if its member reports a running replica (a hung one reports
    // itself as not answering) and may be promoted at all.
    let eligible = |name: &str| {
        store.members.iter().any(|m| {
            m.name == name
                && !m.tags.never_promoted()
                && !m.tags.nosync
                && m.role == Role::Replica
                && m.state == PgRunState::Running
        })
    };
    let flushed = |name: &str| {
        pg.replica_flush
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, f)| *f)
    };
    let timeout = o.policy.sync_standby_hang_timeout_ms;
    let hung = |name: &str| {
        timeout > 0
            && pg
                .sync_stalled
                .as_ref()
                .is_some_and(|(n, ms)| n == name && *ms >= timeout)
    };
    // Eligible streaming standbys not in `taken`, the most advanced first: they need
    // the least to hold every acknowledged commit (each is recorded only once it
    // provably does).
    let others = |taken: &[String]| -> Vec<String> {
        let mut v: Vec<&str> = pg
            .streaming_replicas
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| !taken.iter().any(|t| t == n) && eligible(n))
            .collect();
        v.sort_by_key(|n| (std::cmp::Reverse(flushed(n)), *n));
        v.dedup();
        v.into_iter().map(str::to_string).collect()
    };

    let failed: Vec<String> = recorded
        .iter()
        .filter(|r| !streaming(r) || hung(r))
        .cloned()
        .collect();
    if let Some(first) = failed.first() {
        let why = if hung(first) {
            "holds commits up with its flush position standing still"
        } else {
            "stopped streaming"
        };
        let standby = failed.join(", ");
        let keep: Vec<String> = recorded
            .iter()
            .filter(|r| !failed.contains(r))
            .cloned()
            .collect();
        let mut by = others(&recorded);
        by.truncate(want.saturating_sub(keep.len()));
        // Un-record first: PostgreSQL stops waiting for a standby only after no
        // failover can pick it any more.
        return if !by.is_empty() {
            let config = sorted(keep.iter().chain(&by).cloned().collect());
            (
                vec![Action::RecordSync(keep), Action::SetSyncStandby(config)],
                Some(Reason::SyncStandbyReplaced {
                    standby,
                    by: by.join(", "),
                    why,
                }),
            )
        } else if !keep.is_empty() {
            (
                vec![
                    Action::RecordSync(keep.clone()),
                    Action::SetSyncStandby(keep.clone()),
                ],
                Some(Reason::SyncStandbyShrunk {
                    standby,
                    why,
                    remaining: keep.join(", "),
                }),
            )
        } else if o.policy.synchronous_mode_strict {
            let mut a = Vec::new();
            if configured != recorded {
                a.push(Action::SetSyncStandby(recorded.clone()));
            }
            (a, Some(Reason::SyncStandbyStrictWait { standby, why }))
        } else {
            (
                vec![Action::RecordSync(vec![]), Action::SetSyncStandby(vec![])],
                Some(Reason::SyncStandbyDropped { standby, why }),
            )
        };
    }
    // synchronous_node_count was lowered: record fewer before waiting for fewer.
    if recorded.len() > want {
        let keep = recorded[..want].to_vec();
        return (
            vec![
                Action::RecordSync(keep.clone()),
                Action::SetSyncStandby(keep),
            ],
            None,
        );
    }
    // Whom commits should wait for: the recorded standbys, then those configured
    // already (they may be catching up), then the most advanced others.
    let mut desired = recorded.clone();
    for c in &configured {
        if desired.len() < want && !desired.contains(c) && streaming(c) && eligible(c) {
            desired.push(c.clone());
        }
    }
    for n in others(&desired) {
        if desired.len() < want {
            desired.push(n);
        }
    }
    let desired = sorted(desired);
    let caught_up = |name: &str| {
        pg.sync_catchup
            .iter()
            .any(|(n, at)| n == name && flushed(name).is_some_and(|f| f >= *at))
    };
    let mut a = if configured != desired {
        // With none to wait for, nothing recorded, nothing is promised: in strict mode
        // commits keep waiting for the configured standbys until others can replace
        // them.
        if desired.is_empty() && o.policy.synchronous_mode_strict {
            vec![]
        } else {
            vec![Action::SetSyncStandby(desired)]
        }
    } else {
        let newly: Vec<&String> = desired
            .iter()
            .filter(|c| {
                !recorded.contains(c)
                    && confirmed(c)
                    && (caught_up(c) || bugs::on(Bug::SyncRecordedEarly))
            })
            .collect();
        if newly.is_empty() {
            vec![]
        } else {
            let all = recorded.iter().chain(newly).cloned().collect();
            vec![Action::RecordSync(sorted(all))]
        }
    };
    // A primary that has no record of its own yet acknowledges commits alone: it
    // says so first ({leader: me, no standby}), which keeps it a candidate after
    // losing its lease (`eligibility::last_primary_alone`) and ends the previous
    // primary's record, under which it was a standby.
    if store.sync.as_ref().is_none_or(|s| s.leader != o.me)
        && !a
            .iter()
            .any(|x| matches!(x, Action::RecordSync(s) if !s.is_empty()))
    {
        a.insert(0, Action::RecordSync(vec![]));
    }
    (a, None)
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}
