//! Synchronous mode: who may take over, what the primary records and when, and
//! what it asks PostgreSQL to wait for.

use super::*;
use crate::ha::model::Promotion;

#[test]
fn synchronous_mode_decisions() {
    use Action::*;
    let cases = vec![
        (
            "sync mode: only the recorded standby may take over",
            with(obs_failover(), |o| {
                o.policy.synchronous_mode = true;
                o.store.as_mut().unwrap().sync = Some(SyncState {
                    leader: "a".into(),
                    sync_standby: vec!["c".into()],
                });
            }),
            vec![],
            Reason::NotEligible("synchronous mode: not the recorded synchronous standby"),
        ),
        (
            "sync mode: the primary that recorded it acknowledged alone takes over again",
            with(obs_failover(), |o| {
                o.policy.synchronous_mode = true;
                o.store.as_mut().unwrap().sync = Some(SyncState {
                    leader: "b".into(),
                    sync_standby: vec![],
                });
            }),
            vec![AcquireLease],
            Reason::TakingOver,
        ),
        (
            "sync mode: another primary's record of acknowledging alone makes nobody else eligible",
            with(obs_failover(), |o| {
                o.policy.synchronous_mode = true;
                o.store.as_mut().unwrap().sync = Some(SyncState {
                    leader: "a".into(),
                    sync_standby: vec![],
                });
            }),
            vec![],
            Reason::NotEligible("synchronous mode: not the recorded synchronous standby"),
        ),
        (
            "sync mode: the recorded standby records itself as primary before it promotes",
            with(obs_replica(), |o| {
                o.policy.synchronous_mode = true;
                o.lease_held = true;
                let s = o.store.as_mut().unwrap();
                s.leader = Some("b".into());
                s.sync = Some(SyncState {
                    leader: "a".into(),
                    sync_standby: vec!["b".into()],
                });
            }),
            vec![
                RenewLease,
                RecordSync(vec![]),
                Promote,
                RecordPromotion {
                    timeline: 1,
                    lsn: 1000,
                    reason: Promotion::Failover,
                },
            ],
            Reason::Promoting,
        ),
        (
            "sync mode: a primary restarting under its own record keeps it",
            with(obs_primary(), |o| {
                o.policy.synchronous_mode = true;
                o.pg.running = false;
                o.pg.role = None;
                o.pg.down_for_ms = Some(100);
                o.store.as_mut().unwrap().sync = Some(SyncState {
                    leader: "a".into(),
                    sync_standby: vec!["b".into()],
                });
            }),
            vec![RenewLease, StartPrimary],
            Reason::StartingPrimary,
        ),
        (
            "sync mode: the recorded standby takes over even if another is ahead",
            with(obs_failover(), |o| {
                o.policy.synchronous_mode = true;
                let s = o.store.as_mut().unwrap();
                s.sync = Some(SyncState {
                    leader: "a".into(),
                    sync_standby: vec!["b".into()],
                });
                s.members = vec![member("c", Role::Replica, 1001)];
            }),
            vec![AcquireLease],
            Reason::TakingOver,
        ),
        (
            "sync mode primary: say it acknowledges alone, and configure a standby",
            with(obs_primary(), |o| o.policy.synchronous_mode = true),
            vec![
                RenewLease,
                PublishOptime,
                slots(),
                RecordSync(vec![]),
                SetSyncStandby(vec!["b".into()]),
            ],
            Reason::HealthyPrimary,
        ),
        (
            "sync mode primary: confirmed sync but not yet caught up: not recorded",
            with(obs_primary(), |o| {
                o.policy.synchronous_mode = true;
                o.pg.sync_standby_names = vec!["b".into()];
                o.pg.streaming_replicas = vec![("b".into(), true), ("c".into(), false)];
                o.pg.replica_flush = vec![("b".into(), 900), ("c".into(), 1000)];
                o.pg.sync_catchup = vec![("b".into(), 1000)];
            }),
            vec![RenewLease, PublishOptime, slots(), RecordSync(vec![])],
            Reason::HealthyPrimary,
        ),
        (
            "sync mode primary: confirmed sync, no catch-up position sampled yet: not recorded",
            with(obs_primary(), |o| {
                o.policy.synchronous_mode = true;
                o.pg.sync_standby_names = vec!["b".into()];
                o.pg.streaming_replicas = vec![("b".into(), true), ("c".into(), false)];
            }),
            vec![RenewLease, PublishOptime, slots(), RecordSync(vec![])],
            Reason::HealthyPrimary,
        ),
        (
            "sync mode primary: its own record says it acknowledges alone: nothing to record",
            with(obs_primary(), |o| {
                o.policy.synchronous_mode = true;
                o.pg.sync_standby_names = vec!["b".into()];
                o.pg.streaming_replicas = vec![("b".into(), true), ("c".into(), false)];
                o.store.as_mut().unwrap().sync = Some(SyncState {
                    leader: "a".into(),
                    sync_standby: vec![],
                });
            }),
            vec![RenewLease, PublishOptime, slots()],
            Reason::HealthyPrimary,
        ),
        (
            "sync mode primary: record the standby once PostgreSQL confirms it and it caught up",
            with(obs_primary(), |o| {
                o.policy.synchronous_mode = true;
                o.pg.sync_standby_names = vec!["b".into()];
                o.pg.streaming_replicas = vec![("b".into(), true), ("c".into(), false)];
                o.pg.sync_catchup = vec![("b".into(), 1000)];
            }),
            vec![
                RenewLease,
                PublishOptime,
                slots(),
                RecordSync(vec!["b".into()]),
            ],
            Reason::HealthyPrimary,
        ),
        (
            "sync mode primary: recorded standby gone, un-record before PostgreSQL waits for another",
            with(obs_primary(), |o| {
                o.policy.synchronous_mode = true;
                o.pg.sync_standby_names = vec!["b".into()];
                o.pg.streaming_replicas = vec![("c".into(), false)];
                o.store.as_mut().unwrap().sync = Some(SyncState {
                    leader: "a".into(),
                    sync_standby: vec!["b".into()],
                });
            }),
            vec![
                RenewLease,
                PublishOptime,
                slots(),
                RecordSync(vec![]),
                SetSyncStandby(vec!["c".into()]),
            ],
            Reason::SyncStandbyReplaced {
                standby: "b".into(),
                by: "c".into(),
                why: "stopped streaming",
            },
        ),
        (
            "sync mode primary: recorded standby gone and no other: un-record before releasing PostgreSQL",
            with(obs_primary(), |o| {
                o.policy.synchronous_mode = true;
                o.pg.sync_standby_names = vec!["b".into()];
                o.pg.streaming_replicas = vec![];
                o.store.as_mut().unwrap().sync = Some(SyncState {
                    leader: "a".into(),
                    sync_standby: vec!["b".into()],
                });
            }),
            vec![
                RenewLease,
                PublishOptime,
                slots(),
                RecordSync(vec![]),
                SetSyncStandby(vec![]),
            ],
            Reason::SyncStandbyDropped {
                standby: "b".into(),
                why: "stopped streaming",
            },
        ),
        (
            "sync mode off: clear leftovers",
            with(obs_primary(), |o| {
                o.pg.sync_standby_names = vec!["b".into()];
                o.store.as_mut().unwrap().sync = Some(SyncState {
                    leader: "a".into(),
                    sync_standby: vec!["b".into()],
                });
            }),
            vec![
                RenewLease,
                PublishOptime,
                slots(),
                RecordSync(vec![]),
                SetSyncStandby(vec![]),
            ],
            Reason::HealthyPrimary,
        ),
    ];
    check(cases);
}

/// `synchronous_node_count = 2`: commits wait for two standbys, each recorded once it
/// holds every acknowledged commit, so either may take over.
#[test]
fn two_synchronous_standbys() {
    use Action::*;
    let two = |o: &mut Observation| {
        o.policy.synchronous_mode = true;
        o.policy.synchronous_node_count = 2;
    };
    let recorded = |o: &mut Observation, names: &[&str]| {
        o.store.as_mut().unwrap().sync = Some(SyncState {
            leader: "a".into(),
            sync_standby: names.iter().map(|n| n.to_string()).collect(),
        });
    };
    let names = |v: &[&str]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let healthy = vec![RenewLease, PublishOptime, slots()];
    let then = |more: Vec<Action>| healthy.iter().cloned().chain(more).collect::<Vec<_>>();
    let cases = vec![
        (
            "count 2: configure both streaming standbys",
            with(obs_primary(), |o| {
                two(o);
                o.pg.streaming_replicas = vec![("b".into(), false), ("c".into(), false)];
                recorded(o, &[]);
            }),
            then(vec![SetSyncStandby(names(&["b", "c"]))]),
            Reason::HealthyPrimary,
        ),
        (
            "count 2: one already recorded, the other added to what commits wait for",
            with(obs_primary(), |o| {
                two(o);
                o.pg.sync_standby_names = names(&["b"]);
                o.pg.streaming_replicas = vec![("b".into(), true), ("c".into(), false)];
                recorded(o, &["b"]);
            }),
            then(vec![SetSyncStandby(names(&["b", "c"]))]),
            Reason::HealthyPrimary,
        ),
        (
            "count 2: only the standby that caught up is recorded",
            with(obs_primary(), |o| {
                two(o);
                o.pg.sync_standby_names = names(&["b", "c"]);
                o.pg.streaming_replicas = vec![("b".into(), true), ("c".into(), true)];
                o.pg.replica_flush = vec![("b".into(), 1000), ("c".into(), 900)];
                o.pg.sync_catchup = vec![("b".into(), 1000), ("c".into(), 1000)];
                recorded(o, &[]);
            }),
            then(vec![RecordSync(names(&["b"]))]),
            Reason::HealthyPrimary,
        ),
        (
            "count 2: the second joins the record once it caught up too",
            with(obs_primary(), |o| {
                two(o);
                o.pg.sync_standby_names = names(&["b", "c"]);
                o.pg.streaming_replicas = vec![("b".into(), true), ("c".into(), true)];
                o.pg.replica_flush = vec![("b".into(), 1000), ("c".into(), 1000)];
                o.pg.sync_catchup = vec![("b".into(), 1000), ("c".into(), 1000)];
                recorded(o, &["b"]);
            }),
            then(vec![RecordSync(names(&["b", "c"]))]),
            Reason::HealthyPrimary,
        ),
        (
            "count 2: both recorded and streaming: nothing to do",
            with(obs_primary(), |o| {
                two(o);
                o.pg.sync_standby_names = names(&["b", "c"]);
                o.pg.streaming_replicas = vec![("b".into(), true), ("c".into(), true)];
                recorded(o, &["b", "c"]);
            }),
            healthy.clone(),
            Reason::HealthyPrimary,
        ),
        (
            "count 2: one recorded standby left and none can replace it: un-record it, then wait for the other only",
            with(obs_primary(), |o| {
                two(o);
                o.pg.sync_standby_names = names(&["b", "c"]);
                o.pg.streaming_replicas = vec![("b".into(), true)];
                recorded(o, &["b", "c"]);
            }),
            then(vec![
                RecordSync(names(&["b"])),
                SetSyncStandby(names(&["b"])),
            ]),
            Reason::SyncStandbyShrunk {
                standby: "c".into(),
                why: "stopped streaming",
                remaining: "b".into(),
            },
        ),
        (
            "count 2: a hung recorded standby is replaced by a third, the other stays recorded",
            with(obs_primary(), |o| {
                two(o);
                o.store
                    .as_mut()
                    .unwrap()
                    .members
                    .push(member("d", Role::Replica, 1000));
                o.pg.sync_standby_names = names(&["b", "c"]);
                o.pg.streaming_replicas =
                    vec![("b".into(), true), ("c".into(), true), ("d".into(), false)];
                o.pg.sync_stalled = Some(("c".into(), 6_000));
                recorded(o, &["b", "c"]);
            }),
            vec![
                RenewLease,
                PublishOptime,
                Action::EnsureSlots {
                    members: names(&["b", "c", "d"]),
                    retain: vec![],
                    permanent: vec![],
                },
                RecordSync(names(&["b"])),
                SetSyncStandby(names(&["b", "d"])),
            ],
            Reason::SyncStandbyReplaced {
                standby: "c".into(),
                by: "d".into(),
                why: "holds commits up with its flush position standing still",
            },
        ),
        (
            "count 2: both recorded standbys left: un-recorded, asynchronous",
            with(obs_primary(), |o| {
                two(o);
                o.pg.sync_standby_names = names(&["b", "c"]);
                o.pg.streaming_replicas = vec![];
                recorded(o, &["b", "c"]);
            }),
            then(vec![RecordSync(vec![]), SetSyncStandby(vec![])]),
            Reason::SyncStandbyDropped {
                standby: "b, c".into(),
                why: "stopped streaming",
            },
        ),
        (
            "count lowered to 1: record fewer before waiting for fewer",
            with(obs_primary(), |o| {
                o.policy.synchronous_mode = true;
                o.pg.sync_standby_names = names(&["b", "c"]);
                o.pg.streaming_replicas = vec![("b".into(), true), ("c".into(), true)];
                recorded(o, &["b", "c"]);
            }),
            then(vec![
                RecordSync(names(&["b"])),
                SetSyncStandby(names(&["b"])),
            ]),
            Reason::HealthyPrimary,
        ),
        (
            "count 2: either recorded standby takes over",
            with(obs_failover(), |o| {
                two(o);
                o.store.as_mut().unwrap().sync = Some(SyncState {
                    leader: "a".into(),
                    sync_standby: names(&["b", "c"]),
                });
            }),
            vec![AcquireLease],
            Reason::TakingOver,
        ),
    ];
    check(cases);
}
