//! A hung PostgreSQL: the primary is killed before its lease goes (reported only in
//! pause), a hung member is no candidate, and a synchronous standby that holds
//! commits up is replaced (un-recorded first) or, in strict mode, waited for.

use super::*;

fn stopped_for(ms: u64) -> Stall {
    Stall {
        unanswered_ms: Some(ms),
        postmaster_stopped_ms: Some(ms),
        processes: 6,
        stopped: 6,
        disk_sleep: 0,
        ..Stall::default()
    }
}

fn hung_primary(ms: u64) -> Observation {
    with(obs_primary(), |o| {
        // The probe gets no answer, so the role is unknown; it was a primary.
        o.pg.accepting = false;
        o.pg.role = None;
        o.pg.streaming_replicas = vec![];
        o.pg.stall = stopped_for(ms);
    })
}

fn sync_primary(recorded: &str) -> Observation {
    with(obs_primary(), |o| {
        o.policy.synchronous_mode = true;
        o.pg.sync_standby_names = vec![recorded.into()];
        o.pg.streaming_replicas =
            vec![("b".into(), recorded == "b"), ("c".into(), recorded == "c")];
        o.pg.replica_flush = vec![("b".into(), 900), ("c".into(), 1000)];
        o.store.as_mut().unwrap().sync = Some(SyncState {
            leader: "a".into(),
            sync_standby: vec![recorded.into()],
        });
    })
}

const WHY_STOPPED: &str = "no answer to the health probe, postmaster stopped for 10000 ms or more; \
                           6 of 6 processes stopped, 0 in uninterruptible sleep";

#[test]
fn primary_hang_cases() {
    use Action::*;
    let cases: Vec<(&str, Observation, Vec<Action>, Reason)> = vec![
        (
            "silent for less than a second: still starting, as far as anyone can tell",
            hung_primary(999),
            vec![RenewLease],
            Reason::StartingPrimary,
        ),
        (
            "hung shorter than the timeout: keeps the lease, says so",
            hung_primary(9_999),
            vec![RenewLease],
            Reason::PrimaryNotAnswering(10_000),
        ),
        (
            "hung for the timeout: killed, then the lease released",
            hung_primary(10_000),
            vec![Stop(StopKind::Kill), ReleaseLease],
            Reason::PrimaryHung(WHY_STOPPED.into()),
        ),
        (
            "WAL flush stuck while it still answers: killed too",
            with(obs_primary(), |o| {
                o.pg.stall = Stall {
                    wal_flush_stuck_ms: Some(12_000),
                    processes: 9,
                    disk_sleep: 4,
                    ..Stall::default()
                };
            }),
            vec![Stop(StopKind::Kill), ReleaseLease],
            Reason::PrimaryHung(
                "WAL flush not moving while backends wait for it for 10000 ms or more; \
                 0 of 9 processes stopped, 4 in uninterruptible sleep"
                    .into(),
            ),
        ),
        (
            "hang detection off (0): keeps the lease however long",
            with(hung_primary(600_000), |o| {
                o.policy.primary_hang_timeout_ms = 0
            }),
            vec![RenewLease],
            Reason::PrimaryNotAnswering(0),
        ),
        (
            "paused: reported, nothing killed, lease kept",
            with(hung_primary(60_000), |o| o.paused = true),
            vec![RenewLease],
            Reason::PrimaryHungPaused(
                "no answer to the health probe, postmaster stopped for 10000 ms or more; \
                 6 of 6 processes stopped, 0 in uninterruptible sleep"
                    .into(),
            ),
        ),
        (
            "store unreachable: the lease deadline decides, as for any primary",
            with(hung_primary(60_000), |o| o.store = None),
            vec![RenewLease],
            Reason::StoreUnreachablePrimaryKeeps,
        ),
        (
            "killed and gone: the lease goes (nothing left to fence)",
            with(hung_primary(0), |o| {
                o.pg = pg_stopped(true);
                o.pg.down_for_ms = Some(20_000);
            }),
            vec![Stop(StopKind::Immediate), ReleaseLease],
            Reason::PrimaryStartTimedOut,
        ),
    ];
    check(cases);
}

#[test]
fn a_hung_member_is_no_candidate() {
    let hung = |o: &mut Observation| {
        o.pg.accepting = false;
        o.pg.role = None;
        o.pg.stall = stopped_for(1_500);
    };
    let why = "no answer to the health probe, postmaster stopped for 1000 ms or more; \
               6 of 6 processes stopped, 0 in uninterruptible sleep";
    let d = decide(&with(obs_failover(), hung));
    assert_eq!(d, decision(vec![], Reason::MemberHung(why.into())));
    // Even as the operator's named switchover candidate.
    let d = decide(&with(obs_failover(), |o| {
        hung(o);
        o.store.as_mut().unwrap().switchover = Some(Switchover {
            leader: "a".into(),
            candidate: Some("b".into()),
            scheduled_at: None,
        });
    }));
    assert_eq!(d, decision(vec![], Reason::MemberHung(why.into())));
    // A replica of a serving leader: nothing done to it (a restart would not help).
    let d = decide(&with(obs_replica(), hung));
    assert_eq!(d, decision(vec![], Reason::MemberHung(why.into())));
    // Short silences (one slow probe) are not a hang.
    let d = decide(&with(obs_failover(), |o| o.pg.stall = stopped_for(999)));
    assert_eq!(d.actions, vec![Action::AcquireLease]);
}

#[test]
fn sync_standby_hang_cases() {
    use Action::*;
    let held = |ms: u64| Some(("b".to_string(), ms));
    let why = "holds commits up with its flush position standing still";
    let cases: Vec<(&str, Observation, Vec<Action>, Reason)> = vec![
        (
            "held up shorter than the timeout: kept",
            with(sync_primary("b"), |o| o.pg.sync_stalled = held(4_999)),
            vec![RenewLease, PublishOptime, slots()],
            Reason::HealthyPrimary,
        ),
        (
            "held up for the timeout: un-recorded, then replaced by the other streaming standby",
            with(sync_primary("b"), |o| o.pg.sync_stalled = held(5_000)),
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
                why,
            },
        ),
        (
            "the stall is another standby's (stale): kept",
            with(sync_primary("b"), |o| {
                o.pg.sync_stalled = Some(("c".into(), 60_000))
            }),
            vec![RenewLease, PublishOptime, slots()],
            Reason::HealthyPrimary,
        ),
        (
            "detection off (0): kept however long",
            with(sync_primary("b"), |o| {
                o.pg.sync_stalled = held(600_000);
                o.policy.sync_standby_hang_timeout_ms = 0;
            }),
            vec![RenewLease, PublishOptime, slots()],
            Reason::HealthyPrimary,
        ),
        (
            "the only other standby is hung itself (reports not running): dropped, commits flow",
            with(sync_primary("b"), |o| {
                o.pg.sync_stalled = held(5_000);
                o.store.as_mut().unwrap().members[1].state = PgRunState::Starting;
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
                why,
            },
        ),
        (
            "strict mode, no other standby: keeps waiting, stays recorded",
            with(sync_primary("b"), |o| {
                o.pg.sync_stalled = held(5_000);
                o.policy.synchronous_mode_strict = true;
                o.pg.streaming_replicas = vec![("b".into(), true)];
            }),
            vec![RenewLease, PublishOptime, slots()],
            Reason::SyncStandbyStrictWait {
                standby: "b".into(),
                why,
            },
        ),
        (
            "strict mode with another standby: replaced like in normal mode",
            with(sync_primary("b"), |o| {
                o.pg.sync_stalled = held(5_000);
                o.policy.synchronous_mode_strict = true;
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
                why,
            },
        ),
        (
            "strict mode, recorded standby left and nothing streams: keeps waiting for it",
            with(sync_primary("b"), |o| {
                o.policy.synchronous_mode_strict = true;
                o.pg.streaming_replicas = vec![];
            }),
            vec![RenewLease, PublishOptime, slots()],
            Reason::SyncStandbyStrictWait {
                standby: "b".into(),
                why: "stopped streaming",
            },
        ),
        (
            "after the swap: the replacement is recorded once confirmed and caught up",
            with(sync_primary("c"), |o| {
                o.store.as_mut().unwrap().sync = Some(SyncState {
                    leader: "a".into(),
                    sync_standby: vec![],
                });
                o.pg.sync_catchup = vec![("c".into(), 1000)];
            }),
            vec![
                RenewLease,
                PublishOptime,
                slots(),
                RecordSync(vec!["c".into()]),
            ],
            Reason::HealthyPrimary,
        ),
        (
            "a hung replica (reports not running) never becomes the synchronous standby",
            with(sync_primary("b"), |o| {
                o.store.as_mut().unwrap().sync = None;
                o.pg.sync_standby_names = Vec::new();
                o.store.as_mut().unwrap().members[0].state = PgRunState::Starting;
            }),
            vec![
                RenewLease,
                PublishOptime,
                slots(),
                RecordSync(vec![]),
                SetSyncStandby(vec!["c".into()]),
            ],
            Reason::HealthyPrimary,
        ),
        (
            "strict mode, nothing recorded and no standby left: PostgreSQL keeps waiting",
            with(sync_primary("b"), |o| {
                o.policy.synchronous_mode_strict = true;
                o.store.as_mut().unwrap().sync = None;
                o.pg.streaming_replicas = vec![];
            }),
            vec![RenewLease, PublishOptime, slots(), RecordSync(vec![])],
            Reason::HealthyPrimary,
        ),
    ];
    check(cases);
}
