//! Operator requests. Manual failover (`ctl failover`): the named candidate takes over within the rules,
//! or beyond them when forced; everyone else waits; pause does not stop it. Reinit,
//! restart (the primary in place, under its lease) and reload.

use super::*;
use crate::ha::model::{FailoverRequest, Promotion, Switchover};

fn request(candidate: &str, force: bool) -> Option<FailoverRequest> {
    Some(FailoverRequest {
        candidate: candidate.into(),
        force,
    })
}

#[test]
fn manual_failover_decisions() {
    use Action::*;
    let cases = vec![
        (
            "the candidate takes over without waiting for a better one",
            with(obs_failover(), |o| {
                let s = o.store.as_mut().unwrap();
                s.members = vec![member("c", Role::Replica, 5000)];
                s.failover = request("b", false);
            }),
            vec![AcquireLease],
            Reason::ManualFailover { forced: false },
        ),
        (
            "another member waits for the candidate",
            with(obs_failover(), |o| {
                o.store.as_mut().unwrap().failover = request("c", false);
            }),
            vec![],
            Reason::FailoverInProgress("c".into()),
        ),
        (
            "unforced, a candidate beyond the lag limit is refused",
            with(obs_failover(), |o| {
                o.store.as_mut().unwrap().optime = Some(5_000);
                o.store.as_mut().unwrap().failover = request("b", false);
            }),
            vec![],
            Reason::NotEligible(
                "lags the last known primary position by more than maximum_lag_on_failover",
            ),
        ),
        (
            "forced, a candidate beyond the lag limit takes over",
            with(obs_failover(), |o| {
                o.store.as_mut().unwrap().optime = Some(5_000);
                o.store.as_mut().unwrap().failover = request("b", true);
            }),
            vec![AcquireLease],
            Reason::ManualFailover { forced: true },
        ),
        (
            "unforced, sync mode still needs the recorded standby",
            with(obs_failover(), |o| {
                o.policy.synchronous_mode = true;
                let s = o.store.as_mut().unwrap();
                s.sync = Some(SyncState {
                    leader: "a".into(),
                    sync_standby: vec!["c".into()],
                });
                s.failover = request("b", false);
            }),
            vec![],
            Reason::NotEligible("synchronous mode: not the recorded synchronous standby"),
        ),
        (
            "forced in sync mode: it records itself alone before it promotes",
            with(obs_replica(), |o| {
                o.policy.synchronous_mode = true;
                o.lease_held = true;
                let s = o.store.as_mut().unwrap();
                s.leader = Some("b".into());
                s.sync = Some(SyncState {
                    leader: "a".into(),
                    sync_standby: vec!["c".into()],
                });
                s.failover = request("b", true);
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
            "a nofailover member is never the candidate",
            with(obs_failover(), |o| {
                o.tags.nofailover = true;
                o.store.as_mut().unwrap().failover = request("b", true);
            }),
            vec![],
            Reason::NotEligible("tagged nofailover"),
        ),
        (
            "in pause the candidate still takes over",
            with(obs_failover(), |o| {
                o.paused = true;
                o.store.as_mut().unwrap().failover = request("b", false);
            }),
            vec![AcquireLease],
            Reason::ManualFailover { forced: false },
        ),
        (
            "in pause the candidate holding the lease promotes",
            with(obs_replica(), |o| {
                o.paused = true;
                o.lease_held = true;
                let s = o.store.as_mut().unwrap();
                s.leader = Some("b".into());
                s.failover = request("b", false);
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
            "in pause, once primary, it clears the request and does nothing else",
            with(obs_primary(), |o| {
                o.paused = true;
                o.store.as_mut().unwrap().failover = request("a", false);
            }),
            vec![RenewLease, ClearFailover],
            Reason::Paused,
        ),
        (
            "in pause nobody else acts on it",
            with(obs_failover(), |o| {
                o.paused = true;
                o.store.as_mut().unwrap().failover = request("c", true);
            }),
            vec![],
            Reason::Paused,
        ),
        (
            "a serving primary clears a request that came too late",
            with(obs_primary(), |o| {
                o.store.as_mut().unwrap().failover = request("b", false);
            }),
            vec![RenewLease, PublishOptime, slots(), ClearFailover],
            Reason::HealthyPrimary,
        ),
        (
            "while a leader serves, the candidate follows it",
            with(obs_replica(), |o| {
                o.store.as_mut().unwrap().failover = request("b", true);
            }),
            decide(&obs_replica()).actions,
            decide(&obs_replica()).reason,
        ),
    ];
    check(cases);
}

#[test]
fn reinit_decisions() {
    use Action::*;
    let reinit = |discard_old| {
        Some(crate::ha::model::ReinitRequest {
            discard_old,
            outcome: None,
        })
    };
    let cases = vec![
        (
            "a running replica stops, re-clones from the primary and starts again",
            with(obs_replica(), |o| {
                o.store.as_mut().unwrap().reinit = reinit(true)
            }),
            vec![
                Stop(StopKind::Fast),
                Reinit {
                    source: "a".into(),
                    discard_old: true,
                },
                StartReplica {
                    leader: Some("a".into()),
                },
            ],
            Reason::Reinitializing("a".into()),
        ),
        (
            "also in pause",
            with(obs_replica(), |o| {
                o.paused = true;
                o.pg.running = false;
                o.store.as_mut().unwrap().reinit = reinit(false);
            }),
            vec![
                Reinit {
                    source: "a".into(),
                    discard_old: false,
                },
                StartReplica {
                    leader: Some("a".into()),
                },
            ],
            Reason::Reinitializing("a".into()),
        ),
        (
            "without a serving primary there is nothing to clone from",
            with(obs_failover(), |o| {
                o.store.as_mut().unwrap().reinit = reinit(false)
            }),
            decide(&obs_failover()).actions,
            decide(&obs_failover()).reason,
        ),
        (
            "the primary refuses and clears the request",
            with(obs_primary(), |o| {
                o.store.as_mut().unwrap().reinit = reinit(false)
            }),
            vec![RenewLease, PublishOptime, slots(), ClearReinit],
            Reason::HealthyPrimary,
        ),
    ];
    check(cases);
}

#[test]
fn restart_and_reload_decisions() {
    use crate::ha::model::RequestKind;
    use Action::*;
    let cases = vec![
        (
            "the primary restarts in place, keeping its lease",
            with(obs_primary(), |o| o.store.as_mut().unwrap().restart = true),
            vec![
                RenewLease,
                PublishOptime,
                Stop(StopKind::Fast),
                StartPrimary,
                FinishRequest(RequestKind::Restart),
            ],
            Reason::RestartingPrimary,
        ),
        (
            "a replica restarts following the leader",
            with(obs_replica(), |o| o.store.as_mut().unwrap().restart = true),
            vec![
                Stop(StopKind::Fast),
                StartReplica {
                    leader: Some("a".into()),
                },
                FinishRequest(RequestKind::Restart),
            ],
            Reason::RestartingReplica,
        ),
        (
            "also in pause",
            with(obs_primary(), |o| {
                o.paused = true;
                o.store.as_mut().unwrap().restart = true;
            }),
            vec![
                RenewLease,
                PublishOptime,
                Stop(StopKind::Fast),
                StartPrimary,
                FinishRequest(RequestKind::Restart),
            ],
            Reason::RestartingPrimary,
        ),
        (
            "a scheduled restart waits for its time",
            with(obs_replica(), |o| {
                let s = o.store.as_mut().unwrap();
                s.restart = true;
                s.restart_at = Some(o.wall_clock_s + 1);
            }),
            decide(&obs_replica()).actions,
            decide(&obs_replica()).reason,
        ),
        (
            "and runs once this member's clock reaches it",
            with(obs_replica(), |o| {
                let s = o.store.as_mut().unwrap();
                s.restart = true;
                s.restart_at = Some(o.wall_clock_s);
            }),
            vec![
                Stop(StopKind::Fast),
                StartReplica {
                    leader: Some("a".into()),
                },
                FinishRequest(RequestKind::Restart),
            ],
            Reason::RestartingReplica,
        ),
        (
            "a stopped member waits (nothing to restart)",
            with(obs_replica(), |o| {
                o.pg.running = false;
                o.store.as_mut().unwrap().restart = true;
            }),
            decide(&with(obs_replica(), |o| o.pg.running = false)).actions,
            decide(&with(obs_replica(), |o| o.pg.running = false)).reason,
        ),
        (
            "a reload rides along with the cycle",
            with(obs_primary(), |o| o.store.as_mut().unwrap().reload = true),
            vec![
                RenewLease,
                PublishOptime,
                slots(),
                Reload,
                FinishRequest(RequestKind::Reload),
            ],
            Reason::HealthyPrimary,
        ),
        (
            "in pause too",
            with(obs_replica(), |o| {
                o.paused = true;
                o.store.as_mut().unwrap().reload = true;
            }),
            vec![Reload, FinishRequest(RequestKind::Reload)],
            Reason::Paused,
        ),
    ];
    check(cases);
}

#[test]
fn scheduled_switchover_decisions() {
    use Action::*;
    let scheduled = |at: u64| {
        with(obs_primary(), move |o| {
            let s = o.store.as_mut().unwrap();
            s.members = vec![
                member("b", Role::Replica, 1000),
                member("c", Role::Replica, 990),
            ];
            s.switchover = Some(Switchover {
                leader: "a".into(),
                candidate: Some("c".into()),
                scheduled_at: Some(at),
            });
        })
    };
    let cases = vec![
        (
            "before its time the primary stays and says when",
            scheduled(1_000_100),
            vec![RenewLease, PublishOptime, slots()],
            Reason::SwitchoverScheduled(1_000_100),
        ),
        (
            "at its time it steps down as any switchover",
            scheduled(1_000_000),
            vec![PublishOptime, Stop(StopKind::Fast), ReleaseLease],
            Reason::SwitchingOver("c".into()),
        ),
    ];
    check(cases);
}

#[test]
fn tag_decisions() {
    use Action::*;
    let cases = vec![
        (
            "failover_priority 0: never takes over (Patroni's meaning)",
            with(obs_failover(), |o| o.tags.failover_priority = 0),
            vec![],
            Reason::NotEligible("tagged nofailover"),
        ),
        (
            "a higher failover_priority wins a tie",
            with(obs_failover(), |o| {
                let mut c = member("c", Role::Replica, 1000);
                c.tags.failover_priority = 2;
                o.store.as_mut().unwrap().members = vec![c];
            }),
            vec![],
            Reason::WaitingForBetterCandidate("c".into()),
        ),
        (
            "a nosync standby is never made synchronous",
            with(obs_primary(), |o| {
                o.policy.synchronous_mode = true;
                o.pg.sync_standby_names = vec!["b".into()];
                o.pg.streaming_replicas = vec![("c".into(), false)];
                let s = o.store.as_mut().unwrap();
                for m in &mut s.members {
                    m.tags.nosync = m.name == "c";
                }
                s.sync = Some(SyncState {
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
    ];
    check(cases);
}

#[test]
fn clonefrom_decisions() {
    use Action::*;
    let missing = |o: &mut Observation| {
        o.pg = PgView {
            data: DataState::Missing,
            ..pg_stopped(false)
        }
    };
    let tagged = |name: &str, lsn: u64, following: Option<&str>| {
        let mut m = member(name, Role::Replica, lsn);
        m.tags.clonefrom = true;
        m.following = following.map(str::to_string);
        m
    };
    let with_members = |ms: Vec<MemberStatus>| {
        with(obs_replica(), |o| {
            missing(o);
            o.store.as_mut().unwrap().members.extend(ms);
        })
    };
    let cases = vec![
        (
            "an operator's reinit clones from a clonefrom replica too",
            with(obs_replica(), |o| {
                o.pg.running = false;
                let s = o.store.as_mut().unwrap();
                s.reinit = Some(crate::ha::model::ReinitRequest::default());
                s.members.push(tagged("c2", 900, Some("a")));
            }),
            vec![
                Reinit {
                    source: "c2".into(),
                    discard_old: false,
                },
                StartReplica {
                    leader: Some("a".into()),
                },
            ],
            Reason::Reinitializing("c2".into()),
        ),
        (
            "so does the re-clone after a failed rewind",
            with(obs_replica(), |o| {
                o.pg.running = false;
                o.pg.rewind_failed = true;
                o.store
                    .as_mut()
                    .unwrap()
                    .members
                    .push(tagged("c2", 900, Some("a")));
            }),
            vec![
                Reclone {
                    source: "c2".into(),
                },
                StartReplica {
                    leader: Some("a".into()),
                },
            ],
            Reason::RecloningAfterFailedRewind("a".into()),
        ),
        (
            "a clonefrom replica streaming from the leader is the clone source",
            with_members(vec![tagged("c2", 900, Some("a"))]),
            vec![Clone {
                source: "c2".into(),
            }],
            Reason::Cloning("c2".into()),
        ),
        (
            "of several, the most advanced",
            with_members(vec![
                tagged("c2", 900, Some("a")),
                tagged("c3", 950, Some("a")),
            ]),
            vec![Clone {
                source: "c3".into(),
            }],
            Reason::Cloning("c3".into()),
        ),
        (
            "one that streams from no one, or is not running, is passed over: the leader",
            with_members(vec![tagged("c2", 900, None), {
                let mut m = tagged("c3", 950, Some("a"));
                m.state = PgRunState::Stopped;
                m
            }]),
            vec![Clone { source: "a".into() }],
            Reason::Cloning("a".into()),
        ),
        (
            "one on an older timeline is passed over",
            with_members(vec![{
                let mut m = tagged("c2", 900, Some("a"));
                m.timeline = 0;
                m
            }]),
            vec![Clone { source: "a".into() }],
            Reason::Cloning("a".into()),
        ),
    ];
    check(cases);
}
