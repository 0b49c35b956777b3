//! The fence fails closed, and no request skips eligibility: table cases for each
//! finding, then a randomised property over every observation field.

use super::*;

fn assert_decides(o: &Observation, actions: Vec<Action>, reason: Reason) {
    let d = decide(o);
    assert_eq!(d, Decision { actions, reason }, "observation: {o:#?}");
}

#[test]
fn unreadable_data_dir_under_a_healthy_primary_keeps_the_lease() {
    for data in [
        DataState::Invalid("cannot read global/pg_control: Too many open files".into()),
        DataState::Missing,
    ] {
        let o = with(obs_primary(), |o| o.pg.data = data.clone());
        let why = match &data {
            DataState::Invalid(w) => w.clone(),
            _ => "it reads as empty or missing".into(),
        };
        assert_decides(
            &o,
            vec![Action::RenewLease],
            Reason::UnreadableDataDirPrimaryKeeps(why),
        );
    }
}

#[test]
fn unreadable_data_dir_and_no_answer_stops_before_releasing() {
    // Running, started as primary, not answering SQL: "cannot tell" = may be primary.
    let silent = PgView {
        accepting: false,
        role: None,
        ..pg_primary()
    };
    let o = with(obs_primary(), |o| {
        o.pg = PgView {
            data: DataState::Invalid("cannot read global/pg_control: EIO".into()),
            ..silent.clone()
        }
    });
    assert_decides(
        &o,
        vec![Action::Stop(StopKind::Immediate), Action::ReleaseLease],
        Reason::InvalidDataDir("cannot read global/pg_control: EIO".into()),
    );
    let o = with(obs_primary(), |o| {
        o.pg = PgView {
            data: DataState::Missing,
            ..silent.clone()
        }
    });
    assert_decides(
        &o,
        vec![Action::Stop(StopKind::Immediate), Action::ReleaseLease],
        Reason::PrimaryDataMissing,
    );
}

#[test]
fn foreign_system_id_under_a_running_primary_stops_before_releasing() {
    let o = with(obs_primary(), |o| {
        o.pg.data = DataState::Initialized { system_id: 42 }
    });
    assert_decides(
        &o,
        vec![Action::Stop(StopKind::Immediate), Action::ReleaseLease],
        Reason::ForeignSystemId {
            ours: 42,
            cluster: SYS,
        },
    );
}

#[test]
fn a_silent_former_primary_without_the_lease_is_fenced() {
    let o = with(obs_replica(), |o| {
        o.pg = PgView {
            accepting: false,
            role: None,
            may_be_primary: true,
            ..pg_primary()
        }
    });
    assert_decides(
        &o,
        vec![Action::Stop(StopKind::Immediate)],
        Reason::Demoting("a".into()),
    );
}

#[test]
fn a_foreign_postmaster_is_stopped_and_no_lease_moves_around_it() {
    let stray = |o: &mut Observation| {
        o.pg = PgView {
            running: false,
            accepting: false,
            role: None,
            may_be_primary: false,
            foreign_postmaster: Some(4242),
            ..pg_primary()
        }
    };
    // The holder keeps its lease while it stops the stray instance.
    assert_decides(
        &with(obs_primary(), stray),
        vec![Action::RenewLease, Action::StopForeign { pid: 4242 }],
        Reason::ForeignPostmaster(4242),
    );
    // A would-be candidate does not acquire around it.
    assert_decides(
        &with(obs_failover(), stray),
        vec![Action::StopForeign { pid: 4242 }],
        Reason::ForeignPostmaster(4242),
    );
    // Nor does the store being unreachable change that.
    assert_decides(
        &with(obs_failover(), |o| {
            stray(o);
            o.store = None;
        }),
        vec![Action::StopForeign { pid: 4242 }],
        Reason::ForeignPostmaster(4242),
    );
}

fn switchover_to(candidate: &str) -> Switchover {
    Switchover {
        leader: "a".into(),
        candidate: Some(candidate.into()),
        scheduled_at: None,
    }
}

#[test]
fn a_named_switchover_candidate_obeys_synchronous_mode() {
    let o = with(obs_failover(), |o| {
        o.policy.synchronous_mode = true;
        let s = o.store.as_mut().unwrap();
        s.switchover = Some(switchover_to("b"));
        s.sync = Some(SyncState {
            leader: "a".into(),
            sync_standby: vec!["c".into()],
        });
    });
    assert_decides(
        &o,
        vec![],
        Reason::NotEligible("synchronous mode: not the recorded synchronous standby"),
    );
}

#[test]
fn a_named_switchover_candidate_obeys_timeline_and_cold_start() {
    let o = with(obs_failover(), |o| {
        let s = o.store.as_mut().unwrap();
        s.switchover = Some(switchover_to("b"));
        s.timeline = Some(2);
    });
    assert_decides(
        &o,
        vec![],
        Reason::NotEligible("on an older timeline than the last primary"),
    );
    let o = with(obs_failover(), |o| {
        o.store.as_mut().unwrap().switchover = Some(switchover_to("b"));
        o.cold_start = true;
    });
    assert_decides(&o, vec![], Reason::WaitingForMembersAfterStart);
    // Eligible: takes over without waiting for a better-ranked member.
    let o = with(obs_failover(), |o| {
        let s = o.store.as_mut().unwrap();
        s.switchover = Some(switchover_to("b"));
        s.members = vec![member("c", Role::Replica, 2000)];
    });
    assert_decides(&o, vec![Action::AcquireLease], Reason::TakingOver);
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn pick<T: Clone>(&mut self, v: &[T]) -> T {
        v[(self.next() % v.len() as u64) as usize].clone()
    }
    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

fn random_observation(r: &mut Rng) -> Observation {
    let names = ["a", "b", "c"];
    let role = r.pick(&[None, Some(Role::Primary), Some(Role::Replica)]);
    let running = r.coin();
    let pg = PgView {
        data: r.pick(&[
            DataState::Missing,
            DataState::Initialized { system_id: SYS },
            DataState::Initialized { system_id: 42 },
            DataState::Invalid("cannot read".into()),
        ]),
        running,
        accepting: running && role.is_some(),
        role: if running { role } else { None },
        timeline: r.pick(&[1, 2, 3]),
        lsn: r.pick(&[0, 900, 1000, 1100]),
        following: r.pick(&[None, Some("a".to_string()), Some("c".to_string())]),
        was_primary: r.coin(),
        unrecorded_bootstrap: r.next().is_multiple_of(8),
        down_for_ms: r.pick(&[None, Some(0), Some(20_000)]),
        sync_standby_names: r.pick(&[
            vec![],
            vec!["b".to_string()],
            vec!["c".to_string()],
            vec!["b".to_string(), "c".to_string()],
        ]),
        streaming_replicas: r.pick(&[
            vec![],
            vec![("b".to_string(), true)],
            vec![("c".to_string(), false), ("a".to_string(), true)],
            vec![("b".to_string(), true), ("c".to_string(), true)],
        ]),
        not_streaming_ms: r.pick(&[None, Some(20_000)]),
        may_be_primary: running && r.coin(),
        foreign_postmaster: (!running && r.next().is_multiple_of(6)).then_some(777),
        replica_flush: vec![
            ("b".to_string(), r.pick(&[900, 1000])),
            ("c".to_string(), r.pick(&[900, 1000])),
        ],
        sync_catchup: r.pick(&[
            vec![],
            vec![("b".to_string(), 950)],
            vec![("b".to_string(), 950), ("c".to_string(), 900)],
        ]),
        stall: r.pick(&[
            Stall::default(),
            Stall {
                unanswered_ms: Some(20_000),
                processes: 5,
                stopped: 5,
                ..Stall::default()
            },
            Stall {
                wal_flush_stuck_ms: Some(3_000),
                ..Stall::default()
            },
        ]),
        sync_stalled: r.pick(&[None, Some(("b".to_string(), 9_000))]),
        rewind_failed: r.next().is_multiple_of(4),
        pre_promote_vetoed: r.next().is_multiple_of(5),
    };
    let mut members = Vec::new();
    for n in names {
        if !r.coin() {
            continue;
        }
        let mut m = member(
            n,
            r.pick(&[Role::Primary, Role::Replica]),
            r.pick(&[900, 1200]),
        );
        m.timeline = r.pick(&[1, 2, 3]);
        m.tags.nofailover = r.next().is_multiple_of(5);
        members.push(m);
    }
    let store = StoreView {
        leader: r.pick(&[None, Some("a".to_string()), Some("b".to_string())]),
        system_id: r.pick(&[None, Some(SYS)]),
        members,
        optime: r.pick(&[None, Some(1000), Some(5_000_000)]),
        timeline: r.pick(&[None, Some(1), Some(2)]),
        sync: r.pick(&[
            None,
            Some(SyncState {
                leader: "c".into(),
                sync_standby: vec!["a".into()],
            }),
            Some(SyncState {
                leader: "c".into(),
                sync_standby: vec!["b".into()],
            }),
            Some(SyncState {
                leader: "a".into(),
                sync_standby: vec!["b".into(), "c".into()],
            }),
            Some(SyncState {
                leader: "c".into(),
                sync_standby: vec!["a".into(), "b".into()],
            }),
        ]),
        switchover: r.pick(&[
            None,
            Some(switchover_to("a")),
            Some(switchover_to("b")),
            Some(Switchover {
                leader: "c".into(),
                candidate: None,
                scheduled_at: None,
            }),
        ]),
        failover: r.pick(&[
            None,
            Some(crate::ha::model::FailoverRequest {
                candidate: "a".into(),
                force: false,
            }),
            Some(crate::ha::model::FailoverRequest {
                candidate: "a".into(),
                force: true,
            }),
            Some(crate::ha::model::FailoverRequest {
                candidate: "b".into(),
                force: true,
            }),
        ]),
        reinit: r.pick(&[None, Some(crate::ha::model::ReinitRequest::default())]),
        restart: r.next().is_multiple_of(5),
        restart_at: r.next().is_multiple_of(3).then_some(r.next() % 2_000_000),
        reload: r.next().is_multiple_of(5),
        slot_members: r.pick(&[
            vec![],
            vec!["a".to_string(), "b".to_string(), "c".to_string()],
        ]),
        retain_slots: vec![],
    };
    Observation {
        me: "a".into(),
        tags: Tags {
            nofailover: r.next().is_multiple_of(6),
            ..Tags::default()
        },
        policy: Policy {
            maximum_lag_on_failover: 1000,
            synchronous_mode: r.coin(),
            primary_start_timeout_ms: 10_000,
            candidate_grace_ms: 3_000,
            primary_hang_timeout_ms: r.pick(&[0, 10_000]),
            sync_standby_hang_timeout_ms: r.pick(&[0, 5_000]),
            synchronous_mode_strict: r.coin(),
            synchronous_node_count: r.pick(&[1, 2]),
            permanent_slots: vec![],
        },
        paused: r.next().is_multiple_of(6),
        store: (!r.next().is_multiple_of(5)).then_some(store),
        lease_held: r.coin(),
        lease_lapsed: r.next().is_multiple_of(7),
        own_old_lease: r.pick(&[None, None, Some(99)]),
        no_leader_for_ms: r.pick(&[0, 1_000, 10_000]),
        cold_start: r.coin(),
        wall_clock_s: r.pick(&[0, 2_000_000_000]),
        pg,
    }
}

/// Over many random observations: never a released lease (or cleared deadline)
/// while PostgreSQL may be primary unless a Stop comes first; never a lease taken
/// around a foreign postmaster; in synchronous mode only the recorded standby
/// acquires; nobody acquires from an older timeline than the last primary's; a
/// named candidate included; and never primary without the lease.
#[test]
fn random_observations_keep_the_safety_rules() {
    let mut r = Rng(0x005E_ED0F_FA11_C105);
    for _ in 0..200_000 {
        let o = random_observation(&mut r);
        let d = decide(&o);
        let a = &d.actions;
        let pos = |f: &dyn Fn(&Action) -> bool| a.iter().position(f);
        if may_be_primary(&o.pg)
            && let Some(rel) = pos(&|x| *x == Action::ReleaseLease)
        {
            let stop = pos(&|x| matches!(x, Action::Stop(_)));
            assert!(
                stop.is_some_and(|s| s < rel),
                "released the lease while PostgreSQL may be primary: {o:#?} -> {d:?}"
            );
        }
        if o.pg.foreign_postmaster.is_some() {
            assert!(
                !a.iter()
                    .any(|x| matches!(x, Action::AcquireLease | Action::ReleaseLease)),
                "lease moved around a foreign postmaster: {o:#?} -> {d:?}"
            );
        }
        // Safety rule 4's one exception: an operator's forced failover to this member.
        let forced = o
            .store
            .as_ref()
            .and_then(|s| s.failover.as_ref())
            .is_some_and(|f| f.force && f.candidate == "a");
        if a.contains(&Action::AcquireLease)
            && let Some(s) = &o.store
            && s.system_id.is_some()
            && !forced
        {
            if o.policy.synchronous_mode {
                assert!(
                    s.sync.as_ref().is_some_and(
                        |x| x.holds("a") || (x.leader == "a" && x.sync_standby.is_empty())
                    ),
                    "acquired in synchronous mode without being a recorded standby: {o:#?} -> {d:?}"
                );
            }
            if let Some(t) = s.timeline {
                assert!(
                    o.pg.timeline >= t,
                    "acquired from an older timeline: {o:#?} -> {d:?}"
                );
            }
            assert!(!o.tags.nofailover, "nofailover acquired: {o:#?} -> {d:?}");
        }
        assert!(
            !(o.paused && a.contains(&Action::Stop(StopKind::Kill))),
            "killed PostgreSQL in pause: {o:#?} -> {d:?}"
        );
        if hung_for(&o.pg, MEMBER_HUNG_MS)
            && o.store.as_ref().is_some_and(|s| s.system_id.is_some())
        {
            assert!(
                !a.contains(&Action::AcquireLease),
                "a hung member acquired the lease: {o:#?} -> {d:?}"
            );
        }
        // A recorded synchronous standby is un-recorded before PostgreSQL stops
        // waiting for it, and one is recorded only while PostgreSQL waits for it.
        let recorded = o
            .store
            .as_ref()
            .and_then(|s| s.sync.as_ref())
            .filter(|s| s.leader == "a")
            .map(|s| s.sync_standby.clone())
            .unwrap_or_default();
        for r in &recorded {
            if let Some(set) = pos(&|x| matches!(x, Action::SetSyncStandby(n) if !n.contains(r))) {
                let unrecord = pos(&|x| matches!(x, Action::RecordSync(n) if !n.contains(r)));
                assert!(
                    unrecord.is_some_and(|u| u < set),
                    "PostgreSQL released from recorded standby {r} before it was un-recorded: {o:#?} -> {d:?}"
                );
            }
        }
        for x in a.iter() {
            if let Action::RecordSync(n) = x {
                for r in n.iter().filter(|r| !recorded.contains(r)) {
                    assert!(
                        o.pg.sync_standby_names.contains(r)
                            && o.pg.streaming_replicas.contains(&(r.clone(), true)),
                        "recorded {r}, which PostgreSQL does not wait for: {o:#?} -> {d:?}"
                    );
                }
            }
        }
        let i_lead = o.lease_held
            && o.store
                .as_ref()
                .is_none_or(|s| s.leader.as_deref() == Some("a"));
        let makes_primary = a.iter().any(|x| {
            matches!(
                x,
                Action::Promote | Action::StartPrimary | Action::Bootstrap
            )
        });
        assert!(!makes_primary || i_lead, "{o:#?} -> {d:?}");
        let keeps_primary = may_be_primary(&o.pg)
            && !a
                .iter()
                .any(|x| matches!(x, Action::Stop(_) | Action::StopForeign { .. }));
        assert!(
            !keeps_primary || i_lead,
            "kept a possible primary without the lease: {o:#?} -> {d:?}"
        );
    }
}
