//! Raft leadership follows the PostgreSQL primary.
//!
//! The primary keeps PostgreSQL writable only while its lease renewals commit. With
//! the Raft leader on another node, that node freezing, crashing or being cut off
//! stops every renewal until an election ends, and an election on a loaded host can
//! outlast the lease's slack: a healthy primary then fences itself for nothing (seen
//! in CI: the synchronous standby's node, which also led Raft, was frozen and the
//! primary lost its lease). With the leader on the primary's node a renewal is a local
//! proposal that any one follower acknowledges, so no other node's failure reaches
//! it; when the primary's node fails, Raft leadership goes with it, which is the case
//! where a failover is wanted anyway.
//!
//! Safety does not depend on this: lease expiry stays correct on any leader (see
//! `raft::expiry`), and a transfer only costs writes one vote round.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::ha::model::{self, ClusterView};
use crate::raft::Raft;
use crate::raft::sm_store::SmStore;

/// What the Raft leader knows when it considers handing leadership to the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LeaderView {
    pub me: u64,
    /// Raft node id of the member whose lease holds the leader key, if it publishes
    /// itself as a running primary.
    pub primary_node: Option<u64>,
    pub voters: BTreeSet<u64>,
    /// Last log index each follower is known to hold.
    pub matched: BTreeMap<u64, Option<u64>>,
    pub last_log_index: Option<u64>,
    /// How long this node has led in its current term.
    pub leading_for: Duration,
}

/// The voter to hand Raft leadership to, if any. Only a voter holding the whole log
/// (a transfer to a lagging one stalls writes until an election), and only after
/// this node has led for `hold`: a stopping primary hands leadership away before it
/// releases its lease, and must not get it straight back while the leader key still
/// names it.
pub(super) fn transfer_target(v: &LeaderView, hold: Duration) -> Option<u64> {
    let to = v.primary_node?;
    if to == v.me || !v.voters.contains(&to) || v.leading_for < hold {
        return None;
    }
    let matched = v.matched.get(&to).copied().flatten();
    (v.last_log_index.is_some() && matched == v.last_log_index).then_some(to)
}

/// The Raft node id of the serving primary, from this node's applied state.
fn primary_node(sm: &SmStore) -> Option<u64> {
    let (view, _) = sm.read(|s| {
        ClusterView::from_kvs(
            s.range_prefix(model::PREFIX)
                .map(|kv| (kv.key.as_str(), kv.value.as_slice())),
        )
    });
    if !view.leader_serving() {
        return None;
    }
    let leader = view.leader.as_ref()?;
    view.members.get(leader).map(|m| m.node_id)
}

/// Checks every `every` and, on the Raft leader, moves leadership to the primary's
/// node when [`transfer_target`] says so. After an attempt the hold starts again,
/// so a transfer that does not happen is retried at most once per `hold`.
pub(super) async fn follow_primary(
    raft: Raft,
    sm: SmStore,
    me: u64,
    every: Duration,
    hold: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leading: Option<(u64, Instant)> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let m = raft.metrics().borrow_watched().clone();
        if m.current_leader != Some(me) {
            leading = None;
            continue;
        }
        let now = Instant::now();
        let since = match leading {
            Some((term, since)) if term == m.current_term => since,
            _ => {
                leading = Some((m.current_term, now));
                now
            }
        };
        let view = LeaderView {
            me,
            primary_node: primary_node(&sm),
            voters: m.membership_config.membership().voter_ids().collect(),
            matched: m
                .replication
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(id, l)| (id, l.map(|l| l.index)))
                .collect(),
            last_log_index: m.last_log_index,
            leading_for: now - since,
        };
        let Some(to) = transfer_target(&view, hold) else {
            continue;
        };
        tracing::info!(
            to,
            "moving Raft leadership to the primary's node, so its lease renewals do not wait on another node"
        );
        leading = Some((m.current_term, now));
        if let Err(e) = raft.trigger().transfer_leader(to).await {
            tracing::warn!(error = %e, "Raft leadership transfer could not start");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOLD: Duration = Duration::from_secs(2);

    type Change = fn(&mut LeaderView);

    fn view() -> LeaderView {
        LeaderView {
            me: 1,
            primary_node: Some(2),
            voters: [1, 2, 3].into(),
            matched: [(2, Some(40)), (3, Some(39))].into(),
            last_log_index: Some(40),
            leading_for: HOLD,
        }
    }

    #[test]
    fn hands_leadership_to_a_caught_up_primary_node() {
        assert_eq!(transfer_target(&view(), HOLD), Some(2));
    }

    #[test]
    fn keeps_leadership_when_there_is_no_reason_or_no_safe_target() {
        let cases: [(&str, Change); 7] = [
            ("primary here", |v| v.primary_node = Some(1)),
            ("no serving primary", |v| v.primary_node = None),
            ("primary is a learner", |v| {
                v.voters.remove(&2);
            }),
            ("primary's node lags", |v| {
                v.matched.insert(2, Some(39));
            }),
            ("nothing replicated to it", |v| {
                v.matched.insert(2, None);
            }),
            ("unknown replication", |v| {
                v.matched.clear();
            }),
            ("led too briefly", |v| {
                v.leading_for = HOLD - Duration::from_millis(1)
            }),
        ];
        for (what, change) in cases {
            let mut v = view();
            change(&mut v);
            assert_eq!(transfer_target(&v, HOLD), None, "{what}");
        }
    }
}
