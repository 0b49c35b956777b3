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
                    sync_standby: Some("c".into()),
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
                    sync_standby: None,
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
                    sync_standby: None,
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
                    sync_standby: Some("b".into()),
                });
            }),
            vec![
                RenewLease,
                RecordSync(None),
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
                    sync_standby: Some("b".into()),
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
                    sync_standby: Some("b".into()),
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
                RecordSync(None),
                SetSyncStandby(Some("b".into())),
            ],
            Reason::HealthyPrimary,
        ),
        (
            "sync mode primary: confirmed sync but not yet caught up: not recorded",
            with(obs_primary(), |o| {
                o.policy.synchronous_mode = true;
                o.pg.sync_standby_names = Some("b".into());
                o.pg.streaming_replicas = vec![("b".into(), true), ("c".into(), false)];
                o.pg.replica_flush = vec![("b".into(), 900), ("c".into(), 1000)];
                o.pg.sync_catchup = Some(("b".into(), 1000));
            }),
            vec![RenewLease, PublishOptime, slots(), RecordSync(None)],
            Reason::HealthyPrimary,
        ),
        (
            "sync mode primary: confirmed sync, no catch-up position sampled yet: not recorded",
            with(obs_primary(), |o| {
                o.policy.synchronous_mode = true;
                o.pg.sync_standby_names = Some("b".into());
                o.pg.streaming_replicas = vec![("b".into(), true), ("c".into(), false)];
            }),
            vec![RenewLease, PublishOptime, slots(), RecordSync(None)],
            Reason::HealthyPrimary,
        ),
        (
            "sync mode primary: its own record says it acknowledges alone: nothing to record",
            with(obs_primary(), |o| {
                o.policy.synchronous_mode = true;
                o.pg.sync_standby_names = Some("b".into());
                o.pg.streaming_replicas = vec![("b".into(), true), ("c".into(), false)];
                o.store.as_mut().unwrap().sync = Some(SyncState {
                    leader: "a".into(),
                    sync_standby: None,
                });
            }),
            vec![RenewLease, PublishOptime, slots()],
            Reason::HealthyPrimary,
        ),
        (
            "sync mode primary: record the standby once PostgreSQL confirms it and it caught up",
            with(obs_primary(), |o| {
                o.policy.synchronous_mode = true;
                o.pg.sync_standby_names = Some("b".into());
                o.pg.streaming_replicas = vec![("b".into(), true), ("c".into(), false)];
                o.pg.sync_catchup = Some(("b".into(), 1000));
            }),
            vec![
                RenewLease,
                PublishOptime,
                slots(),
                RecordSync(Some("b".into())),
            ],
            Reason::HealthyPrimary,
        ),
        (
            "sync mode primary: recorded standby gone, un-record before PostgreSQL waits for another",
            with(obs_primary(), |o| {
                o.policy.synchronous_mode = true;
                o.pg.sync_standby_names = Some("b".into());
                o.pg.streaming_replicas = vec![("c".into(), false)];
                o.store.as_mut().unwrap().sync = Some(SyncState {
                    leader: "a".into(),
                    sync_standby: Some("b".into()),
                });
            }),
            vec![
                RenewLease,
                PublishOptime,
                slots(),
                RecordSync(None),
                SetSyncStandby(Some("c".into())),
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
                o.pg.sync_standby_names = Some("b".into());
                o.pg.streaming_replicas = vec![];
                o.store.as_mut().unwrap().sync = Some(SyncState {
                    leader: "a".into(),
                    sync_standby: Some("b".into()),
                });
            }),
            vec![
                RenewLease,
                PublishOptime,
                slots(),
                RecordSync(None),
                SetSyncStandby(None),
            ],
            Reason::SyncStandbyDropped {
                standby: "b".into(),
                why: "stopped streaming",
            },
        ),
        (
            "sync mode off: clear leftovers",
            with(obs_primary(), |o| {
                o.pg.sync_standby_names = Some("b".into());
                o.store.as_mut().unwrap().sync = Some(SyncState {
                    leader: "a".into(),
                    sync_standby: Some("b".into()),
                });
            }),
            vec![
                RenewLease,
                PublishOptime,
                slots(),
                RecordSync(None),
                SetSyncStandby(None),
            ],
            Reason::HealthyPrimary,
        ),
    ];
    check(cases);
}
