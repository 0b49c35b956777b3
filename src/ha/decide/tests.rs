//! Table-driven tests: each case is an observation and the exact decision.

use super::*;
use crate::ha::model::PgRunState;
use crate::ha::model::{Promotion, Switchover, SyncState, Tags};

const SYS: u64 = 7_000_000_000_000_000_001;

fn member(name: &str, role: Role, lsn: u64) -> MemberStatus {
    MemberStatus {
        name: name.into(),
        role,
        state: PgRunState::Running,
        pg_addr: format!("{name}:5432"),
        api_url: format!("http://{name}:8008"),
        timeline: 1,
        receive_lsn: lsn,
        replay_lsn: lsn,
        following: None,
        tags: Tags::default(),
        sync_standby: false,
        node_id: 0,
        paused: false,
        pending_restart: false,
        pre_promote_vetoed: false,
        version: String::new(),
        server_version: None,
    }
}

fn pg_primary() -> PgView {
    PgView {
        data: DataState::Initialized { system_id: SYS },
        running: true,
        accepting: true,
        role: Some(Role::Primary),
        timeline: 1,
        lsn: 1000,
        following: None,
        was_primary: true,
        down_for_ms: None,
        unrecorded_bootstrap: false,
        sync_standby_names: Vec::new(),
        streaming_replicas: vec![("b".into(), false), ("c".into(), false)],
        not_streaming_ms: None,
        may_be_primary: true,
        foreign_postmaster: None,
        replica_flush: vec![("b".into(), 1000), ("c".into(), 1000)],
        sync_catchup: Vec::new(),
        stall: Stall::default(),
        sync_stalled: None,
        rewind_failed: false,
        pre_promote_vetoed: false,
    }
}

fn pg_replica(following: Option<&str>, lsn: u64) -> PgView {
    PgView {
        role: Some(Role::Replica),
        lsn,
        following: following.map(String::from),
        was_primary: false,
        streaming_replicas: vec![],
        not_streaming_ms: None,
        may_be_primary: false,
        ..pg_primary()
    }
}

fn pg_stopped(was_primary: bool) -> PgView {
    PgView {
        running: false,
        accepting: false,
        role: None,
        lsn: 0,
        was_primary,
        down_for_ms: Some(0),
        streaming_replicas: vec![],
        may_be_primary: false,
        ..pg_primary()
    }
}

fn store(leader: Option<&str>) -> StoreView {
    StoreView {
        leader: leader.map(String::from),
        system_id: Some(SYS),
        members: vec![],
        optime: Some(1000),
        timeline: Some(1),
        sync: None,
        switchover: None,
        failover: None,
        reinit: None,
        restart: false,
        restart_at: None,
        reload: false,
        slot_members: vec![],
        retain_slots: vec![],
    }
}

/// Member "a" as the healthy primary of a three-member cluster.
fn obs_primary() -> Observation {
    Observation {
        me: "a".into(),
        tags: Tags::default(),
        policy: Policy {
            maximum_lag_on_failover: 100,
            synchronous_mode: false,
            primary_start_timeout_ms: 10_000,
            candidate_grace_ms: 3_000,
            primary_hang_timeout_ms: 10_000,
            sync_standby_hang_timeout_ms: 5_000,
            synchronous_mode_strict: false,
            synchronous_node_count: 1,
            permanent_slots: vec![],
        },
        paused: false,
        store: Some(StoreView {
            members: vec![
                member("b", Role::Replica, 1000),
                member("c", Role::Replica, 1000),
            ],
            ..store(Some("a"))
        }),
        lease_held: true,
        lease_lapsed: false,
        own_old_lease: None,
        no_leader_for_ms: 0,
        cold_start: false,
        wall_clock_s: 1_000_000,
        pg: pg_primary(),
    }
}

/// Member "b" as a healthy replica of "a".
fn obs_replica() -> Observation {
    Observation {
        me: "b".into(),
        lease_held: false,
        store: Some(StoreView {
            members: vec![
                member("a", Role::Primary, 1000),
                member("c", Role::Replica, 990),
            ],
            ..store(Some("a"))
        }),
        pg: pg_replica(Some("a"), 1000),
        ..obs_primary()
    }
}

/// Replica "b" after the leader lease of "a" ended.
fn obs_failover() -> Observation {
    let mut o = obs_replica();
    let s = o.store.as_mut().unwrap();
    s.leader = None;
    s.members = vec![member("c", Role::Replica, 990)];
    o
}

fn slots() -> Action {
    Action::EnsureSlots {
        members: vec!["b".into(), "c".into()],
        retain: vec![],
        permanent: vec![],
    }
}

/// Runs every case and reports every one that fails, not only the first.
fn check(cases: Vec<(&str, Observation, Vec<Action>, Reason)>) {
    let failed: Vec<String> = cases
        .into_iter()
        .filter_map(|(name, obs, actions, reason)| {
            let want = Decision { actions, reason };
            let got = decide(&obs);
            (got != want).then(|| format!("case: {name}\n  want: {want:?}\n   got: {got:?}"))
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} case(s) failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

fn with<T>(mut v: T, f: impl FnOnce(&mut T)) -> T {
    f(&mut v);
    v
}

#[test]
fn decisions() {
    use Action::*;
    let a = || Some("a".to_string());
    let cases: Vec<(&str, Observation, Vec<Action>, Reason)> = vec![
        // Bootstrap.
        (
            "fresh cluster, no leader: take the lease",
            with(obs_primary(), |o| {
                o.lease_held = false;
                o.store = Some(StoreView {
                    system_id: None,
                    leader: None,
                    optime: None,
                    timeline: None,
                    ..store(None)
                });
                o.pg = PgView {
                    data: DataState::Missing,
                    ..pg_stopped(false)
                };
            }),
            vec![AcquireLease],
            Reason::BootstrapTakeLease,
        ),
        (
            "fresh cluster, lease held: bootstrap",
            with(obs_primary(), |o| {
                o.store = Some(StoreView {
                    system_id: None,
                    optime: None,
                    timeline: None,
                    ..store(Some("a"))
                });
                o.pg = PgView {
                    data: DataState::Missing,
                    ..pg_stopped(false)
                };
            }),
            vec![RenewLease, Bootstrap],
            Reason::Bootstrapping,
        ),
        (
            "bootstrapped primary records the system id",
            with(obs_primary(), |o| {
                o.store.as_mut().unwrap().system_id = None
            }),
            vec![RenewLease, RecordSystemId],
            Reason::RecordingSystemId,
        ),
        (
            "another member is bootstrapping",
            with(obs_replica(), |o| {
                o.store.as_mut().unwrap().system_id = None;
                o.pg = PgView {
                    data: DataState::Missing,
                    ..pg_stopped(false)
                };
            }),
            vec![],
            Reason::WaitingForBootstrap("a".into()),
        ),
        (
            "nofailover member never bootstraps",
            with(obs_replica(), |o| {
                o.tags.nofailover = true;
                o.store = Some(StoreView {
                    system_id: None,
                    ..store(None)
                });
                o.pg = PgView {
                    data: DataState::Missing,
                    ..pg_stopped(false)
                };
            }),
            vec![],
            Reason::NotEligible("tagged nofailover"),
        ),
        // Primary.
        (
            "healthy primary",
            obs_primary(),
            vec![RenewLease, PublishOptime, slots()],
            Reason::HealthyPrimary,
        ),
        (
            "primary PostgreSQL crashed: restart in place",
            with(obs_primary(), |o| {
                o.pg = with(pg_stopped(true), |p| p.down_for_ms = Some(2_000))
            }),
            vec![RenewLease, StartPrimary],
            Reason::StartingPrimary,
        ),
        (
            "primary did not come back in time: give up the lease",
            with(obs_primary(), |o| {
                o.pg = with(pg_stopped(true), |p| p.down_for_ms = Some(10_001))
            }),
            vec![Stop(StopKind::Immediate), ReleaseLease],
            Reason::PrimaryStartTimedOut,
        ),
        (
            "lease held but data dir empty",
            with(obs_primary(), |o| {
                o.pg = PgView {
                    data: DataState::Missing,
                    ..pg_stopped(true)
                }
            }),
            vec![ReleaseLease],
            Reason::PrimaryDataMissing,
        ),
        (
            "lease lost (deadline passed): fence at once",
            with(obs_primary(), |o| o.lease_held = false),
            vec![Stop(StopKind::Immediate)],
            Reason::PrimaryWithoutLease,
        ),
        (
            "another member holds the lease: demote",
            with(obs_primary(), |o| {
                o.lease_held = false;
                o.store.as_mut().unwrap().leader = Some("b".into());
            }),
            vec![Stop(StopKind::Immediate)],
            Reason::Demoting("b".into()),
        ),
        (
            "no store, lease still valid: keep renewing",
            with(obs_primary(), |o| o.store = None),
            vec![RenewLease],
            Reason::StoreUnreachablePrimaryKeeps,
        ),
        (
            "no store, lease deadline passed: fence",
            with(obs_primary(), |o| {
                o.store = None;
                o.lease_held = false;
            }),
            vec![Stop(StopKind::Immediate)],
            Reason::StoreUnreachableNoLease,
        ),
        (
            "no store on a replica: nothing to do",
            with(obs_replica(), |o| o.store = None),
            vec![],
            Reason::StoreUnreachable,
        ),
        (
            "paused cluster: the primary only renews",
            with(obs_primary(), |o| o.paused = true),
            vec![RenewLease],
            Reason::Paused,
        ),
        (
            "paused cluster: a replica does nothing even without a leader",
            with(obs_failover(), |o| o.paused = true),
            vec![],
            Reason::Paused,
        ),
        // Replica.
        (
            "healthy replica",
            obs_replica(),
            vec![],
            Reason::HealthyReplica("a".into()),
        ),
        (
            "replica follows the wrong upstream",
            with(obs_replica(), |o| o.pg.following = Some("c".into())),
            vec![Follow { leader: "a".into() }],
            Reason::Refollowing("a".into()),
        ),
        (
            "replica briefly not streaming behind the leader's timeline: wait",
            with(obs_replica(), |o| {
                o.pg.not_streaming_ms = Some(STALLED_REPLICA_REWIND_MS - 1)
            }),
            vec![],
            Reason::HealthyReplica("a".into()),
        ),
        (
            "replica stuck behind the leader's timeline: rewind",
            with(obs_replica(), |o| {
                o.pg.not_streaming_ms = Some(STALLED_REPLICA_REWIND_MS)
            }),
            vec![
                Stop(StopKind::Fast),
                Rewind { leader: "a".into() },
                StartReplica {
                    leader: Some("a".into()),
                },
            ],
            Reason::DivergedReplica("a".into()),
        ),
        (
            "former primary running as a standby: rewind before following",
            with(obs_replica(), |o| {
                o.pg.following = None;
                o.pg.was_primary = true;
            }),
            vec![
                Stop(StopKind::Fast),
                Rewind { leader: "a".into() },
                StartReplica {
                    leader: Some("a".into()),
                },
            ],
            Reason::Rewinding("a".into()),
        ),
        (
            "no data: clone from the primary",
            with(obs_replica(), |o| {
                o.pg = PgView {
                    data: DataState::Missing,
                    ..pg_stopped(false)
                }
            }),
            vec![Clone { source: "a".into() }],
            Reason::Cloning("a".into()),
        ),
        (
            "stopped replica starts following the leader",
            with(obs_replica(), |o| o.pg = pg_stopped(false)),
            vec![StartReplica { leader: a() }],
            Reason::StartingReplica("a".into()),
        ),
        (
            "replica whose starts keep failing, not for long yet: start again",
            with(obs_replica(), |o| {
                o.pg = pg_stopped(false);
                o.pg.down_for_ms = Some(STALLED_REPLICA_REWIND_MS - 1);
            }),
            vec![StartReplica { leader: a() }],
            Reason::StartingReplica("a".into()),
        ),
        (
            "replica that cannot start on the leader's timeline: rewind, then follow",
            with(obs_replica(), |o| {
                o.pg = pg_stopped(false);
                o.pg.down_for_ms = Some(STALLED_REPLICA_REWIND_MS);
            }),
            vec![Rewind { leader: "a".into() }, StartReplica { leader: a() }],
            Reason::DivergedReplica("a".into()),
        ),
        (
            "diverged former primary: rewind, then follow",
            with(obs_replica(), |o| o.pg = pg_stopped(true)),
            vec![Rewind { leader: "a".into() }, StartReplica { leader: a() }],
            Reason::Rewinding("a".into()),
        ),
        (
            "foreign system identifier: refuse, touch nothing",
            with(obs_replica(), |o| {
                o.pg.data = DataState::Initialized { system_id: 42 }
            }),
            vec![],
            Reason::ForeignSystemId {
                ours: 42,
                cluster: SYS,
            },
        ),
        (
            "own unrecorded bootstrap lost to another member's: set it aside",
            with(obs_replica(), |o| {
                o.pg.data = DataState::Initialized { system_id: 42 };
                o.pg.unrecorded_bootstrap = true;
            }),
            vec![SetAsideFailedBootstrap],
            Reason::LostBootstrap,
        ),
        (
            "invalid data dir: report",
            with(obs_replica(), |o| {
                o.pg.data = DataState::Invalid("no PG_VERSION".into())
            }),
            vec![],
            Reason::InvalidDataDir("no PG_VERSION".into()),
        ),
        // Failover.
        (
            "no leader: the best replica takes over",
            obs_failover(),
            vec![AcquireLease],
            Reason::TakingOver,
        ),
        (
            "lease acquired by a replica: promote",
            with(obs_replica(), |o| {
                o.lease_held = true;
                o.store.as_mut().unwrap().leader = Some("b".into());
            }),
            vec![
                RenewLease,
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
            "lease acquired by a switchover's candidate: promote, recorded as a switchover",
            with(obs_replica(), |o| {
                o.lease_held = true;
                let s = o.store.as_mut().unwrap();
                s.leader = Some("b".into());
                s.switchover = Some(Switchover {
                    leader: "a".into(),
                    candidate: Some("b".into()),
                    scheduled_at: None,
                });
            }),
            vec![
                RenewLease,
                Promote,
                RecordPromotion {
                    timeline: 1,
                    lsn: 1000,
                    reason: Promotion::Switchover,
                },
            ],
            Reason::Promoting,
        ),
        (
            "no leader: a more advanced replica exists",
            with(obs_failover(), |o| {
                o.store.as_mut().unwrap().members = vec![member("c", Role::Replica, 1001)]
            }),
            vec![],
            Reason::WaitingForBetterCandidate("c".into()),
        ),
        (
            "no leader: equal position, higher failover_priority wins",
            with(obs_failover(), |o| {
                let mut c = member("c", Role::Replica, 1000);
                c.tags.failover_priority = 5;
                o.store.as_mut().unwrap().members = vec![c];
            }),
            vec![],
            Reason::WaitingForBetterCandidate("c".into()),
        ),
        (
            "no leader: a better but nofailover replica does not count",
            with(obs_failover(), |o| {
                let mut c = member("c", Role::Replica, 5000);
                c.tags.nofailover = true;
                o.store.as_mut().unwrap().members = vec![c];
            }),
            vec![AcquireLease],
            Reason::TakingOver,
        ),
        (
            "switchover to a streaming replica: stop cleanly, release",
            with(obs_primary(), |o| {
                let s = o.store.as_mut().unwrap();
                s.members = vec![
                    member("b", Role::Replica, 1000),
                    member("c", Role::Replica, 990),
                ];
                s.switchover = Some(Switchover {
                    leader: "a".into(),
                    candidate: Some("c".into()),
                    scheduled_at: None,
                });
            }),
            vec![PublishOptime, Stop(StopKind::Fast), ReleaseLease],
            Reason::SwitchingOver("c".into()),
        ),
        (
            "switchover to a member that is not streaming: stay primary",
            with(obs_primary(), |o| {
                let s = o.store.as_mut().unwrap();
                s.members = vec![
                    member("b", Role::Replica, 1000),
                    member("c", Role::Replica, 990),
                ];
                s.switchover = Some(Switchover {
                    leader: "a".into(),
                    candidate: Some("x".into()),
                    scheduled_at: None,
                });
            }),
            vec![
                RenewLease,
                PublishOptime,
                Action::EnsureSlots {
                    members: vec!["b".into(), "c".into()],
                    retain: vec![],
                    permanent: vec![],
                },
            ],
            Reason::SwitchoverNoCandidate,
        ),
        (
            "switchover done: the new primary clears the request",
            with(obs_primary(), |o| {
                o.store.as_mut().unwrap().switchover = Some(Switchover {
                    leader: "z".into(),
                    candidate: None,
                    scheduled_at: None,
                });
            }),
            vec![RenewLease, ClearSwitchover],
            Reason::HealthyPrimary,
        ),
        (
            "switchover: only the named candidate takes over",
            with(obs_failover(), |o| {
                o.store.as_mut().unwrap().switchover = Some(Switchover {
                    leader: "a".into(),
                    candidate: Some("c".into()),
                    scheduled_at: None,
                });
            }),
            vec![],
            Reason::SwitchoverInProgress("c".into()),
        ),
        (
            "switchover: the named candidate takes over even if another is ahead",
            with(obs_failover(), |o| {
                let s = o.store.as_mut().unwrap();
                s.members = vec![member("c", Role::Replica, 1001)];
                s.switchover = Some(Switchover {
                    leader: "a".into(),
                    candidate: Some("b".into()),
                    scheduled_at: None,
                });
            }),
            vec![AcquireLease],
            Reason::TakingOver,
        ),
        (
            "switchover not taken within a ttl: ordinary failover",
            with(obs_failover(), |o| {
                o.store.as_mut().unwrap().switchover = Some(Switchover {
                    leader: "a".into(),
                    candidate: Some("c".into()),
                    scheduled_at: None,
                });
                o.no_leader_for_ms = 3_000;
            }),
            vec![AcquireLease],
            Reason::TakingOver,
        ),
        (
            "no leader: behind the last primary position, waits for a member at it",
            with(obs_failover(), |o| {
                o.pg.lsn = 950;
                o.store.as_mut().unwrap().members = vec![member("c", Role::Replica, 940)];
                o.no_leader_for_ms = 2_999;
            }),
            vec![],
            Reason::WaitingForMemberAtOptime,
        ),
        (
            "no leader: behind, grace over: takes over within the lag limit",
            with(obs_failover(), |o| {
                o.pg.lsn = 950;
                o.store.as_mut().unwrap().members = vec![member("c", Role::Replica, 940)];
                o.no_leader_for_ms = 3_000;
            }),
            vec![AcquireLease],
            Reason::TakingOver,
        ),
        (
            "no leader: a candidate on an older timeline than the last primary never takes over",
            with(obs_failover(), |o| {
                o.store.as_mut().unwrap().timeline = Some(2);
                o.pg.lsn = 5000;
            }),
            vec![],
            Reason::NotEligible("on an older timeline than the last primary"),
        ),
        (
            "no leader: a member on a newer timeline is better despite a lower LSN",
            with(obs_failover(), |o| {
                let mut c = member("c", Role::Replica, 10);
                c.timeline = 2;
                o.store.as_mut().unwrap().members = vec![c];
            }),
            vec![],
            Reason::WaitingForBetterCandidate("c".into()),
        ),
        (
            "no leader since start-up: waits one ttl for every member to report",
            with(obs_failover(), |o| {
                o.cold_start = true;
                o.no_leader_for_ms = 2_999;
            }),
            vec![],
            Reason::WaitingForMembersAfterStart,
        ),
        (
            "no leader since start-up, ttl passed: the best takes over",
            with(obs_failover(), |o| {
                o.cold_start = true;
                o.no_leader_for_ms = 3_000;
            }),
            vec![AcquireLease],
            Reason::TakingOver,
        ),
        (
            "lagging candidate is not eligible",
            with(obs_failover(), |o| o.pg.lsn = 899),
            vec![],
            Reason::NotEligible(
                "lags the last known primary position by more than maximum_lag_on_failover",
            ),
        ),
        (
            "nofailover replica never takes over",
            with(obs_failover(), |o| o.tags.nofailover = true),
            vec![],
            Reason::NotEligible("tagged nofailover"),
        ),
        (
            "no leader, PostgreSQL stopped: start as a standby first",
            with(obs_failover(), |o| o.pg = pg_stopped(true)),
            vec![StartReplica { leader: None }],
            Reason::StandbyForElection,
        ),
        (
            "no leader, no data: wait",
            with(obs_failover(), |o| {
                o.pg = PgView {
                    data: DataState::Missing,
                    ..pg_stopped(false)
                }
            }),
            vec![],
            Reason::NoDataNoLeader,
        ),
    ];
    check(cases);
}

/// Property over a grid of observations: a decision never leaves PostgreSQL
/// running as primary (or promotes it) without a valid lease held by this member.
#[test]
fn never_primary_without_the_lease() {
    let roles = [
        pg_primary(),
        pg_replica(Some("a"), 1000),
        pg_stopped(true),
        pg_stopped(false),
    ];
    for pg in roles {
        for lease_held in [false, true] {
            for leader in [None, Some("a"), Some("b")] {
                for store_up in [false, true] {
                    let o = Observation {
                        me: "a".into(),
                        lease_held,
                        pg: pg.clone(),
                        store: store_up.then(|| store(leader)),
                        ..obs_primary()
                    };
                    let d = decide(&o);
                    let i_lead = lease_held && (leader == Some("a") || !store_up);
                    let makes_primary = d.actions.iter().any(|a| {
                        matches!(
                            a,
                            Action::Promote | Action::StartPrimary | Action::Bootstrap
                        )
                    });
                    assert!(!makes_primary || i_lead, "{o:?} -> {d:?}");
                    let keeps_primary =
                        is_primary(&pg) && !d.actions.contains(&Action::Stop(StopKind::Immediate));
                    assert!(!keeps_primary || i_lead, "{o:?} -> {d:?}");
                }
            }
        }
    }
}

mod fail_closed;
mod hang;
mod lease_and_rebuild;
mod requests;
mod sync;
