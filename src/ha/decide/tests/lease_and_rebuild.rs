//! Decisions that used to be taken by the executor: dropping a lease that no longer
//! guards the leader key, taking back this member's lease after a restart, re-cloning
//! after a failed pg_rewind, a slot for every Raft member, and a switchover that
//! finds no candidate.

use super::*;

#[test]
fn lease_cases() {
    use Action::*;
    let cases: Vec<(&str, Observation, Vec<Action>, Reason)> = vec![
        (
            "another member's key replaced ours while our lease is valid: revoke it, then fence",
            with(obs_primary(), |o| {
                o.store.as_mut().unwrap().leader = Some("b".into())
            }),
            vec![DropLease { revoke: true }, Stop(StopKind::Immediate)],
            Reason::Demoting("b".into()),
        ),
        (
            "a lapsed lease is dropped (not revoked), then the primary without a lease is fenced",
            with(obs_primary(), |o| {
                o.lease_held = false;
                o.lease_lapsed = true;
            }),
            vec![DropLease { revoke: false }, Stop(StopKind::Immediate)],
            Reason::PrimaryWithoutLease,
        ),
        (
            "a lapsed lease with the store unreachable is dropped too; the fence decides",
            with(obs_primary(), |o| {
                o.lease_held = false;
                o.lease_lapsed = true;
                o.store = None;
            }),
            vec![DropLease { revoke: false }, Stop(StopKind::Immediate)],
            Reason::StoreUnreachableNoLease,
        ),
        (
            "a replica whose lease was replaced: dropped, then it follows",
            with(obs_replica(), |o| o.lease_held = true),
            vec![DropLease { revoke: true }],
            Reason::HealthyReplica("a".into()),
        ),
        (
            "restarted: the leader key still names this member under its old lease: take it back",
            with(obs_primary(), |o| {
                o.lease_held = false;
                o.own_old_lease = Some(42);
                o.pg = pg_stopped(true);
            }),
            vec![TakeBackLease { lease: 42 }],
            Reason::TakingBackLease(42),
        ),
        (
            "old lease named, but PostgreSQL may still be primary without a lease: fence first",
            with(obs_primary(), |o| {
                o.lease_held = false;
                o.own_old_lease = Some(42);
            }),
            vec![Stop(StopKind::Immediate)],
            Reason::PrimaryWithoutLease,
        ),
        (
            "old lease, but the key now names another member: nothing to take back",
            with(obs_replica(), |o| {
                o.own_old_lease = Some(42);
            }),
            vec![],
            Reason::HealthyReplica("a".into()),
        ),
    ];
    check(cases);
}

#[test]
fn rebuild_and_slot_cases() {
    use Action::*;
    let stopped_former_primary = |o: &mut Observation| o.pg = pg_stopped(true);
    let cases: Vec<(&str, Observation, Vec<Action>, Reason)> = vec![
        (
            "former primary: rewind, then start as a replica",
            with(obs_replica(), stopped_former_primary),
            vec![
                Rewind { leader: "a".into() },
                StartReplica {
                    leader: Some("a".into()),
                },
            ],
            Reason::Rewinding("a".into()),
        ),
        (
            "pg_rewind failed on it: re-clone (the old data dir is kept aside), then start",
            with(obs_replica(), |o| {
                stopped_former_primary(o);
                o.pg.rewind_failed = true;
            }),
            vec![
                Reclone { source: "a".into() },
                StartReplica {
                    leader: Some("a".into()),
                },
            ],
            Reason::RecloningAfterFailedRewind("a".into()),
        ),
        (
            "a diverged replica whose rewind failed: re-cloned the same way",
            with(obs_replica(), |o| {
                o.pg = pg_stopped(false);
                o.pg.down_for_ms = Some(STALLED_REPLICA_REWIND_MS);
                o.pg.rewind_failed = true;
            }),
            vec![
                Reclone { source: "a".into() },
                StartReplica {
                    leader: Some("a".into()),
                },
            ],
            Reason::RecloningAfterFailedRewind("a".into()),
        ),
        (
            "a healthy replica keeps the permanent slots, moved along with replay",
            with(obs_replica(), |o| {
                o.policy.permanent_slots = vec!["backup".into()]
            }),
            vec![KeepStandbySlots {
                slots: vec!["backup".into()],
            }],
            Reason::HealthyReplica("a".into()),
        ),
        (
            "slots for members seen within member_slots_ttl, also one that publishes nothing (down); retained ones kept, permanent ones made",
            with(obs_primary(), |o| {
                let s = o.store.as_mut().unwrap();
                s.slot_members = vec!["a".into(), "b".into(), "d".into()];
                s.retain_slots = vec!["a".into(), "c".into(), "e".into()];
                o.policy.permanent_slots = vec!["backup".into()];
            }),
            vec![
                RenewLease,
                PublishOptime,
                EnsureSlots {
                    members: vec!["b".into(), "c".into(), "d".into()],
                    retain: vec!["e".into()],
                    permanent: vec!["backup".into()],
                },
            ],
            Reason::HealthyPrimary,
        ),
        (
            "switchover requested but nobody can take over: stays primary, and says why",
            with(obs_primary(), |o| {
                o.pg.streaming_replicas = vec![];
                o.store.as_mut().unwrap().switchover = Some(Switchover {
                    leader: "a".into(),
                    candidate: None,
                    scheduled_at: None,
                });
            }),
            vec![RenewLease, PublishOptime, slots()],
            Reason::SwitchoverNoCandidate,
        ),
    ];
    check(cases);
}

#[test]
fn pre_promote_veto_cases() {
    use Action::*;
    let holding = |o: &mut Observation| {
        o.lease_held = true;
        o.store.as_mut().unwrap().leader = Some("b".into());
    };
    let cases: Vec<(&str, Observation, Vec<Action>, Reason)> = vec![
        (
            "pre_promote vetoed the promotion of a confirmed replica: give the lease back",
            with(obs_replica(), |o| {
                holding(o);
                o.pg.pre_promote_vetoed = true;
            }),
            vec![ReleaseLease],
            Reason::PrePromoteVetoed,
        ),
        (
            "vetoed, but cannot tell it is no primary: keep the lease and go on as primary",
            with(obs_replica(), |o| {
                holding(o);
                o.pg.pre_promote_vetoed = true;
                o.pg.may_be_primary = true;
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
            "no leader, and pre_promote vetoed this member within a ttl: leave it to others",
            with(obs_failover(), |o| o.pg.pre_promote_vetoed = true),
            vec![],
            Reason::NotEligible("pre_promote vetoed a promotion within the last ttl"),
        ),
    ];
    check(cases);
}
