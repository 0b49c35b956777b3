//! The synchronous standby, on the primary: whom PostgreSQL waits for, and whom the
//! store records as holding every acknowledged commit.

use super::{Action, Observation, Reason, StoreView};
use crate::ha::bugs::{self, Bug};
use crate::ha::model::{PgRunState, Role};

/// Synchronous standby management on the primary. The store record is what a
/// failover trusts, so: a standby is recorded only after PostgreSQL confirms it
/// synchronous *and* it has flushed the primary's WAL up to a position sampled after
/// that (it then holds every commit acknowledged before it became synchronous, too),
/// and the record is cleared before PostgreSQL stops waiting for it (left, or hung:
/// holding commits up with its flush position standing still). A notable change
/// comes with its reason.
pub(super) fn sync_actions(o: &Observation, store: &StoreView) -> (Vec<Action>, Option<Reason>) {
    let pg = &o.pg;
    let recorded = store
        .sync
        .as_ref()
        .filter(|s| s.leader == o.me)
        .and_then(|s| s.sync_standby.clone());
    let configured = pg.sync_standby_names.clone().filter(|s| !s.is_empty());
    if !o.policy.synchronous_mode {
        let mut a = Vec::new();
        if store
            .sync
            .as_ref()
            .is_some_and(|s| s.sync_standby.is_some())
        {
            a.push(Action::RecordSync(None));
        }
        if configured.is_some() {
            a.push(Action::SetSyncStandby(None));
        }
        return (a, None);
    }
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
    if let Some(r) = &recorded {
        let timeout = o.policy.sync_standby_hang_timeout_ms;
        let hung = timeout > 0
            && pg
                .sync_stalled
                .as_ref()
                .is_some_and(|(n, ms)| n == r && *ms >= timeout);
        if streaming(r) && !hung {
            return if configured.as_deref() != Some(r.as_str()) {
                (vec![Action::SetSyncStandby(Some(r.clone()))], None)
            } else {
                (vec![], None)
            };
        }
        let why = if hung {
            "holds commits up with its flush position standing still"
        } else {
            "stopped streaming"
        };
        // The most advanced other standby: it needs the least to hold every
        // acknowledged commit (it is recorded only once it provably does).
        let replacement = pg
            .streaming_replicas
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| *n != r.as_str() && eligible(n))
            .max_by_key(|n| (flushed(n), std::cmp::Reverse(*n)))
            .map(str::to_string);
        let standby = r.clone();
        // Un-record first: PostgreSQL stops waiting for it only after no failover
        // can pick it any more.
        return match replacement {
            Some(by) => (
                vec![
                    Action::RecordSync(None),
                    Action::SetSyncStandby(Some(by.clone())),
                ],
                Some(Reason::SyncStandbyReplaced { standby, by, why }),
            ),
            None if o.policy.synchronous_mode_strict => {
                let mut a = Vec::new();
                if configured.as_deref() != Some(r.as_str()) {
                    a.push(Action::SetSyncStandby(Some(r.clone())));
                }
                (a, Some(Reason::SyncStandbyStrictWait { standby, why }))
            }
            None => (
                vec![Action::RecordSync(None), Action::SetSyncStandby(None)],
                Some(Reason::SyncStandbyDropped { standby, why }),
            ),
        };
    }
    // A primary that has no record of its own yet acknowledges commits alone: it
    // says so first ({leader: me, no standby}), which keeps it a candidate after
    // losing its lease (`eligibility::last_primary_alone`) and ends the previous
    // primary's record, under which it was the standby.
    let candidate = configured
        .clone()
        .filter(|c| streaming(c) && eligible(c))
        .or_else(|| {
            pg.streaming_replicas
                .iter()
                .map(|(n, _)| n.clone())
                .filter(|n| eligible(n))
                .min()
        });
    let caught_up = |name: &str| matches!(&pg.sync_catchup, Some((n, at)) if n == name && flushed(name).is_some_and(|f| f >= *at));
    let mut a = match candidate {
        Some(c) if configured.as_deref() != Some(c.as_str()) => {
            vec![Action::SetSyncStandby(Some(c))]
        }
        Some(c) if confirmed(&c) && (caught_up(&c) || bugs::on(Bug::SyncRecordedEarly)) => {
            vec![Action::RecordSync(Some(c))]
        }
        Some(_) => vec![],
        // Nothing recorded, so nothing is promised: in strict mode commits keep
        // waiting for the configured standby until another can replace it.
        None if configured.is_some() && !o.policy.synchronous_mode_strict => {
            vec![Action::SetSyncStandby(None)]
        }
        None => vec![],
    };
    if store.sync.as_ref().is_none_or(|s| s.leader != o.me)
        && !a.iter().any(|x| matches!(x, Action::RecordSync(Some(_))))
    {
        a.insert(0, Action::RecordSync(None));
    }
    (a, None)
}
