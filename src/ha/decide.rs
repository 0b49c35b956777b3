//! The HA decision: a pure function from what one member observes to what it
//! should do next. No IO, no clock: time arrives as numbers in the observation.
//!
//! The loop is level-triggered: each cycle looks at the whole situation afresh,
//! so an action that failed or was cut short is simply decided again next cycle.
//!
//! Invariants (tested below):
//! - PostgreSQL runs as primary only while this member holds a valid leader lease;
//!   a primary without one is stopped immediately.
//! - A member acquires the lease only if it is the best eligible candidate: not tagged
//!   `nofailover`, within `maximum_lag_on_failover` of the last known primary position,
//!   and, in synchronous mode, the recorded synchronous standby.
//! - Data is never removed by a decision: a foreign or invalid data dir is reported.
//! - The fence fails closed: `ReleaseLease` comes only when PostgreSQL is confirmed
//!   stopped or a replica, or after a `Stop` earlier in the same list. "Cannot tell"
//!   (running but not answering, a data dir that cannot be read, a postmaster
//!   pgquorum did not start) counts as "may be primary".
//! - A hung primary (see [`Stall`]) is killed before its lease is released; in pause
//!   it is only reported. A hung or silent member is never a candidate, and a
//!   synchronous standby is replaced only after it has been un-recorded.

use super::bugs::{self, Bug};
use super::eligibility::{cannot_take_over, last_primary_alone};
use super::model::{MemberStatus, PgRunState, Promotion, RequestKind, Role, Switchover};

mod observation;
mod reason;
mod sync;

pub use self::observation::{
    Action, DataState, Decision, Observation, PgView, Policy, Stall, StopKind, StoreView,
};
pub use self::reason::Reason;
use self::sync::sync_actions;

/// A member whose PostgreSQL has not answered (or whose postmaster has been
/// stopped) for this long is hung for every purpose but fencing: not a candidate,
/// not a synchronous standby, not a target for reads.
pub const MEMBER_HUNG_MS: u64 = 1_000;

fn hung_for(pg: &PgView, ms: u64) -> bool {
    pg.running && pg.stall.lasted(ms)
}

/// A replica that cannot stream from its serving leader for this long, or cannot
/// start as its standby at all, most likely has WAL the leader never had (it diverged
/// before the leader's promotion): it is rewound (pg_rewind changes nothing when it
/// had not diverged).
pub const STALLED_REPLICA_REWIND_MS: u64 = 10_000;

fn decision(actions: Vec<Action>, reason: Reason) -> Decision {
    Decision { actions, reason }
}

fn is_primary(pg: &PgView) -> bool {
    pg.running && pg.role == Some(Role::Primary)
}

/// Whether PostgreSQL may accept writes: known primary, or "cannot tell" (our
/// primary not answering, a postmaster we did not start).
pub fn may_be_primary(pg: &PgView) -> bool {
    pg.foreign_postmaster.is_some() || is_primary(pg) || (pg.running && pg.may_be_primary)
}

/// Releasing the lease: only after PostgreSQL is stopped, unless it already is.
fn stop_then_release(pg: &PgView) -> Vec<Action> {
    if pg.running {
        release_after(StopKind::Immediate)
    } else {
        vec![Action::ReleaseLease]
    }
}

/// `Stop(kind)`, then `ReleaseLease`.
fn release_after(kind: StopKind) -> Vec<Action> {
    if bugs::on(Bug::ReleaseWithoutStop) {
        return vec![Action::ReleaseLease];
    }
    vec![Action::Stop(kind), Action::ReleaseLease]
}

pub fn decide(o: &Observation) -> Decision {
    // The lease this process renews is kept only while it guards the leader key: one
    // that lapsed, or whose key another member's has replaced, is dropped first.
    let leader_is_other = o
        .store
        .as_ref()
        .and_then(|s| s.leader.as_deref())
        .is_some_and(|l| l != o.me);
    let drop = if o.lease_lapsed {
        Some(Action::DropLease { revoke: false })
    } else if o.lease_held && leader_is_other {
        Some(Action::DropLease { revoke: true })
    } else {
        None
    };
    let Some(drop) = drop else {
        return with_reload(o, decide_with_lease(o));
    };
    let without = Observation {
        lease_held: false,
        lease_lapsed: false,
        ..o.clone()
    };
    let mut d = decide_with_lease(&without);
    d.actions.insert(0, drop);
    with_reload(o, d)
}

/// A reload an operator asked for rides along with whatever else this cycle does
/// (also in pause): it changes nothing but re-read configuration files.
fn with_reload(o: &Observation, mut d: Decision) -> Decision {
    let asked = o.store.as_ref().is_some_and(|s| s.reload);
    let stops = d.actions.iter().any(|a| matches!(a, Action::Stop(_)));
    if asked && o.pg.running && o.pg.accepting && !stops && !hung_for(&o.pg, MEMBER_HUNG_MS) {
        d.actions.push(Action::Reload);
        d.actions.push(Action::FinishRequest(RequestKind::Reload));
    }
    d
}

fn decide_with_lease(o: &Observation) -> Decision {
    let pg = &o.pg;
    if let Some(pid) = pg.foreign_postmaster {
        // Neither acquired nor released around it: holding the lease keeps others
        // from promoting while it may be writable; without it, nobody is helped by
        // taking one until it is stopped.
        let mut actions = Vec::new();
        if o.lease_held {
            actions.push(Action::RenewLease);
        }
        actions.push(Action::StopForeign { pid });
        return decision(actions, Reason::ForeignPostmaster(pid));
    }
    let Some(store) = &o.store else {
        // Without the store nothing can be decided; the lease deadline (enforced
        // by the guard process too) decides how long a primary may keep going.
        return if may_be_primary(pg) && o.lease_held {
            decision(
                vec![Action::RenewLease],
                Reason::StoreUnreachablePrimaryKeeps,
            )
        } else if may_be_primary(pg) {
            decision(
                vec![Action::Stop(StopKind::Immediate)],
                Reason::StoreUnreachableNoLease,
            )
        } else {
            decision(vec![], Reason::StoreUnreachable)
        };
    };
    let i_lead = o.lease_held && store.leader.as_deref() == Some(o.me.as_str());

    // Fencing comes before everything, pause included.
    if may_be_primary(pg) && !i_lead {
        let mut actions = vec![Action::Stop(StopKind::Immediate)];
        if let Some(l) = &store.leader
            && l != &o.me
        {
            return decision(actions, Reason::Demoting(l.clone()));
        }
        if o.lease_held {
            actions.push(Action::ReleaseLease);
        }
        return decision(actions, Reason::PrimaryWithoutLease);
    }
    if let Some(lease) = o.own_old_lease
        && !o.lease_held
        && store.leader.as_deref() == Some(o.me.as_str())
    {
        // (After the fence above: a PostgreSQL that may be primary is stopped first.)
        // The leader key still names this member: its lease from before a restart
        // (e.g. the whole cluster stopped without a quorum to release it). This member
        // has the data that lease protected, so keeping it loses nothing.
        return decision(
            vec![Action::TakeBackLease { lease }],
            Reason::TakingBackLease(lease),
        );
    }
    // A restart an operator asked for runs also in pause (a scheduled one once this
    // member's clock reaches its time). The primary restarts in place: it keeps
    // renewing its lease and its fence stays armed, so nobody takes over; if it does
    // not come back, the ordinary rules (primary_start_timeout) apply in the
    // following cycles.
    if store.restart
        && store.restart_at.is_none_or(|at| at <= o.wall_clock_s)
        && pg.running
        && pg.accepting
        && matches!(pg.data, DataState::Initialized { .. })
        && !hung_for(pg, MEMBER_HUNG_MS)
    {
        if i_lead && is_primary(pg) {
            return decision(
                vec![
                    Action::RenewLease,
                    Action::PublishOptime,
                    Action::Stop(StopKind::Fast),
                    Action::StartPrimary,
                    Action::FinishRequest(RequestKind::Restart),
                ],
                Reason::RestartingPrimary,
            );
        }
        if !i_lead && pg.role == Some(Role::Replica) && !may_be_primary(pg) {
            let upstream = store
                .leader
                .clone()
                .filter(|l| *l != o.me)
                .or_else(|| pg.following.clone());
            return decision(
                vec![
                    Action::Stop(StopKind::Fast),
                    Action::StartReplica { leader: upstream },
                    Action::FinishRequest(RequestKind::Restart),
                ],
                Reason::RestartingReplica,
            );
        }
    }
    // A re-clone an operator asked for runs also in pause (as Patroni's reinit does):
    // it is a replica's own business, and starts it again as a replica.
    if let Some(r) = &store.reinit
        && !i_lead
        && let Some(l) = store.leader.as_deref().filter(|l| {
            store
                .members
                .iter()
                .any(|m| m.name == *l && m.role == Role::Primary && m.state == PgRunState::Running)
        })
        && !may_be_primary(pg)
    {
        let mut actions = Vec::new();
        if pg.running {
            actions.push(Action::Stop(StopKind::Fast));
        }
        let source = clone_source(o, l);
        actions.push(Action::Reinit {
            source: source.clone(),
            discard_old: r.discard_old,
        });
        actions.push(Action::StartReplica {
            leader: Some(l.to_string()),
        });
        return decision(actions, Reason::Reinitializing(source));
    }
    // A manual failover to this member acts also in pause (as Patroni's does): it
    // takes the lease and promotes; nothing else automatic happens.
    let manual_failover = store.failover.as_ref().is_some_and(|f| f.candidate == o.me)
        && (store.leader.is_none() || (i_lead && pg.role == Some(Role::Replica)))
        && !hung_for(pg, MEMBER_HUNG_MS);
    if o.paused && !manual_failover {
        let mut actions = if i_lead {
            vec![Action::RenewLease]
        } else {
            vec![]
        };
        if i_lead && is_primary(pg) && store.failover.is_some() {
            actions.push(Action::ClearFailover);
        }
        if i_lead && hung_for(pg, o.policy.primary_hang_timeout_ms) {
            let why = pg.stall.describe(o.policy.primary_hang_timeout_ms);
            return decision(actions, Reason::PrimaryHungPaused(why));
        }
        return decision(actions, Reason::Paused);
    }
    if let DataState::Invalid(why) = &pg.data {
        // A read error of pg_control (EMFILE, EIO) or a dir renamed under a running
        // postmaster: the instance that answers is what counts.
        if i_lead && is_primary(pg) {
            return decision(
                vec![Action::RenewLease],
                Reason::UnreadableDataDirPrimaryKeeps(why.clone()),
            );
        }
        let actions = if i_lead {
            stop_then_release(pg)
        } else {
            vec![]
        };
        return decision(actions, Reason::InvalidDataDir(why.clone()));
    }
    if let (Some(cluster), DataState::Initialized { system_id }) = (store.system_id, &pg.data)
        && cluster != *system_id
        && pg.unrecorded_bootstrap
        && !is_primary(pg)
    {
        return decision(vec![Action::SetAsideFailedBootstrap], Reason::LostBootstrap);
    }
    if let (Some(cluster), DataState::Initialized { system_id }) = (store.system_id, &pg.data)
        && cluster != *system_id
    {
        let actions = if i_lead {
            stop_then_release(pg)
        } else {
            vec![]
        };
        return decision(
            actions,
            Reason::ForeignSystemId {
                ours: *system_id,
                cluster,
            },
        );
    }

    if store.system_id.is_none() {
        return bootstrap(o, store, i_lead);
    }
    if i_lead {
        return lead(o, store);
    }
    match &store.leader {
        Some(l) => follow(o, l),
        None => no_leader(o, store),
    }
}

fn bootstrap(o: &Observation, store: &StoreView, i_lead: bool) -> Decision {
    let pg = &o.pg;
    if i_lead {
        return match (&pg.data, is_primary(pg)) {
            (DataState::Missing, _) => decision(
                vec![Action::RenewLease, Action::Bootstrap],
                Reason::Bootstrapping,
            ),
            (DataState::Initialized { .. }, true) => decision(
                vec![Action::RenewLease, Action::RecordSystemId],
                Reason::RecordingSystemId,
            ),
            (DataState::Initialized { .. }, false) => decision(
                becoming_primary(o, store, Action::StartPrimary),
                Reason::StartingPrimary,
            ),
            (DataState::Invalid(_), _) => unreachable!("handled in decide"),
        };
    }
    match &store.leader {
        Some(l) => decision(vec![], Reason::WaitingForBootstrap(l.clone())),
        None if o.tags.never_promoted() => {
            decision(vec![], Reason::NotEligible("tagged nofailover"))
        }
        None => decision(vec![Action::AcquireLease], Reason::BootstrapTakeLease),
    }
}

fn lead(o: &Observation, store: &StoreView) -> Decision {
    let pg = &o.pg;
    if hung_for(pg, o.policy.primary_hang_timeout_ms) {
        // Killed, not shut down: a hung instance acts on no request, and SIGKILL of
        // the group leaves nothing that could commit when its storage returns. The
        // lease goes only once the kill is confirmed (the executor checks).
        return decision(
            release_after(StopKind::Kill),
            Reason::PrimaryHung(pg.stall.describe(o.policy.primary_hang_timeout_ms)),
        );
    }
    if pg.data == DataState::Missing {
        if is_primary(pg) {
            return decision(
                vec![Action::RenewLease],
                Reason::UnreadableDataDirPrimaryKeeps("it reads as empty or missing".into()),
            );
        }
        return decision(stop_then_release(pg), Reason::PrimaryDataMissing);
    }
    if !pg.running {
        if pg.down_for_ms.unwrap_or(0) > o.policy.primary_start_timeout_ms {
            return decision(
                release_after(StopKind::Immediate),
                Reason::PrimaryStartTimedOut,
            );
        }
        return decision(
            becoming_primary(o, store, Action::StartPrimary),
            Reason::StartingPrimary,
        );
    }
    match pg.role {
        // A confirmed replica: the lease may go (another member may try).
        Some(Role::Replica) if pg.pre_promote_vetoed && !pg.may_be_primary => {
            decision(vec![Action::ReleaseLease], Reason::PrePromoteVetoed)
        }
        Some(Role::Replica) => decision(
            becoming_primary(o, store, Action::Promote),
            Reason::Promoting,
        ),
        Some(Role::Primary) => {
            if let Some(sw) = &store.switchover {
                if sw.leader == o.me
                    && let Some(at) = sw.scheduled_at.filter(|at| *at > o.wall_clock_s)
                {
                    let mut d = healthy_primary(o, store);
                    if d.reason == Reason::HealthyPrimary {
                        d.reason = Reason::SwitchoverScheduled(at);
                    }
                    return d;
                }
                if sw.leader == o.me {
                    if let Some(to) = switchover_target(o, store, sw) {
                        // A fast shutdown sends all WAL to connected standbys before it
                        // ends, so the candidate has every commit when it takes over.
                        let mut actions = vec![Action::PublishOptime];
                        actions.extend(release_after(StopKind::Fast));
                        return decision(actions, Reason::SwitchingOver(to));
                    }
                    let mut d = healthy_primary(o, store);
                    if d.reason == Reason::HealthyPrimary {
                        d.reason = Reason::SwitchoverNoCandidate;
                    }
                    return d;
                } else {
                    // This member became primary: the request is done (or stale).
                    let mut actions = vec![Action::RenewLease, Action::ClearSwitchover];
                    let (sync, why) = sync_actions(o, store);
                    actions.extend(sync);
                    return decision(actions, why.unwrap_or(Reason::HealthyPrimary));
                }
            }
            let mut d = healthy_primary(o, store);
            if store.reinit.is_some() {
                // The primary's data dir is the cluster's: never re-cloned.
                d.actions.push(Action::ClearReinit);
            }
            if store.failover.is_some() {
                // This member serves: a manual failover (to it, or one that came
                // too late) is done.
                d.actions.push(Action::ClearFailover);
            }
            d
        }
        // Running but silent: hung (killed at primary_hang_timeout_ms, above), or
        // still starting. The lease is kept meanwhile.
        _ if hung_for(pg, MEMBER_HUNG_MS) => decision(
            vec![Action::RenewLease],
            Reason::PrimaryNotAnswering(o.policy.primary_hang_timeout_ms),
        ),
        _ => decision(vec![Action::RenewLease], Reason::StartingPrimary),
    }
}

/// `RenewLease`, then `start` (StartPrimary or Promote). In synchronous mode a
/// member about to accept writes first records itself as the primary without a
/// standby (unless the record is its own already): from then on it is the one
/// member that may take over again if it loses its lease before it records a
/// standby (see `eligibility::last_primary_alone`), and the previous primary's
/// record, which named it, ends.
fn becoming_primary(o: &Observation, store: &StoreView, start: Action) -> Vec<Action> {
    let mut a = vec![Action::RenewLease];
    if o.policy.synchronous_mode && store.sync.as_ref().is_none_or(|s| s.leader != o.me) {
        a.push(Action::RecordSync(vec![]));
    }
    let promoting = start == Action::Promote;
    a.push(start);
    if promoting {
        // After the promotion, which is what clients wait for.
        a.push(Action::RecordPromotion {
            timeline: o.pg.timeline,
            lsn: o.pg.lsn,
            reason: if store.switchover.is_some() {
                Promotion::Switchover
            } else {
                Promotion::Failover
            },
        });
    }
    a
}

/// A primary holding its lease: renew, publish its position, keep a slot for every
/// other member (published, or seen within `member_slots_ttl_ms`: one that is down
/// keeps its slot and the WAL it needs) and the permanent slots, and mind the
/// synchronous standby.
fn healthy_primary(o: &Observation, store: &StoreView) -> Decision {
    let mut actions = vec![Action::RenewLease, Action::PublishOptime];
    let mut others: Vec<String> = store
        .members
        .iter()
        .map(|m| m.name.clone())
        .chain(store.slot_members.iter().cloned())
        .filter(|n| *n != o.me)
        .collect();
    others.sort();
    others.dedup();
    let mut retain: Vec<String> = store
        .retain_slots
        .iter()
        .filter(|n| **n != o.me && !others.contains(n))
        .cloned()
        .collect();
    retain.sort();
    retain.dedup();
    actions.push(Action::EnsureSlots {
        members: others,
        retain,
        permanent: o.policy.permanent_slots.clone(),
    });
    let (sync, why) = sync_actions(o, store);
    actions.extend(sync);
    decision(actions, why.unwrap_or(Reason::HealthyPrimary))
}

/// The member a switchover would hand over to: the named candidate, or else the
/// most advanced eligible replica; `None` when it is not a running, streaming replica
/// (then the primary stays).
fn switchover_target(o: &Observation, store: &StoreView, sw: &Switchover) -> Option<String> {
    let streaming = |name: &str| o.pg.streaming_replicas.iter().any(|(n, _)| n == name);
    let eligible = |m: &&MemberStatus| {
        streaming(&m.name)
            && cannot_take_over(
                m,
                o.policy.synchronous_mode,
                store.sync.as_ref(),
                store.timeline,
            )
            .is_none()
    };
    let mut candidates: Vec<&MemberStatus> = store.members.iter().filter(eligible).collect();
    if let Some(c) = &sw.candidate {
        candidates.retain(|m| &m.name == c);
    }
    candidates
        .sort_by_key(|m| std::cmp::Reverse((m.timeline, m.receive_lsn, m.tags.failover_priority)));
    candidates.first().map(|m| m.name.clone())
}

/// Where a replica clones from (new, reinit, or re-clone after a failed rewind): as
/// Patroni, a member tagged `clonefrom` is
/// preferred (it takes the copy's load off the primary), here only one that runs as
/// a replica streaming from `leader` on the cluster's timeline; the most advanced of
/// them (Patroni picks at random; a pure decide does not), else the leader.
fn clone_source(o: &Observation, leader: &str) -> String {
    let Some(store) = &o.store else {
        return leader.to_string();
    };
    store
        .members
        .iter()
        .filter(|m| {
            m.tags.clonefrom
                && m.name != o.me
                && m.role == Role::Replica
                && m.state == PgRunState::Running
                && m.following.as_deref() == Some(leader)
                && store.timeline.is_none_or(|t| m.timeline == t)
        })
        .max_by_key(|m| (m.receive_lsn, std::cmp::Reverse(m.name.clone())))
        .map_or_else(|| leader.to_string(), |m| m.name.clone())
}

fn follow(o: &Observation, leader: &str) -> Decision {
    let pg = &o.pg;
    let l = leader.to_string();
    if hung_for(pg, MEMBER_HUNG_MS) && pg.role.is_none() {
        // Nothing to do to a replica that does not answer: restarting it would not
        // help if its storage hangs. It resumes by itself.
        return decision(
            vec![],
            Reason::MemberHung(pg.stall.describe(MEMBER_HUNG_MS)),
        );
    }
    if pg.data == DataState::Missing {
        let source = clone_source(o, leader);
        return decision(
            vec![Action::Clone {
                source: source.clone(),
            }],
            Reason::Cloning(source),
        );
    }
    if !pg.running {
        if pg.rewind_failed {
            return decision(
                vec![
                    Action::Reclone {
                        source: clone_source(o, leader),
                    },
                    Action::StartReplica {
                        leader: Some(l.clone()),
                    },
                ],
                Reason::RecloningAfterFailedRewind(l),
            );
        }
        let rewind_then_start = vec![
            Action::Rewind { leader: l.clone() },
            Action::StartReplica {
                leader: Some(l.clone()),
            },
        ];
        if pg.was_primary {
            return decision(rewind_then_start, Reason::Rewinding(l));
        }
        // A replica that received WAL past the new timeline's fork point (from the old
        // primary, before it was cut off) cannot even start as a standby of the new
        // leader ("requested timeline does not contain minimum recovery point"): after
        // as long as a stalled replica gets, rewind it.
        if pg
            .down_for_ms
            .is_some_and(|ms| ms >= STALLED_REPLICA_REWIND_MS)
        {
            return decision(rewind_then_start, Reason::DivergedReplica(l));
        }
        return decision(
            vec![Action::StartReplica {
                leader: Some(l.clone()),
            }],
            Reason::StartingReplica(l),
        );
    }
    if pg.role != Some(Role::Replica) {
        return decision(vec![], Reason::ReplicaStarting(l));
    }
    // A replica keeps retrying its configured upstream by itself; only a different
    // upstream needs a restart.
    match &pg.following {
        Some(up)
            if up == leader
                && pg
                    .not_streaming_ms
                    .is_some_and(|ms| ms >= STALLED_REPLICA_REWIND_MS) =>
        {
            decision(rewind_and_follow(leader), Reason::DivergedReplica(l))
        }
        Some(up) if up == leader => {
            let keep = if o.policy.permanent_slots.is_empty() {
                vec![]
            } else {
                vec![Action::KeepStandbySlots {
                    slots: o.policy.permanent_slots.clone(),
                }]
            };
            decision(keep, Reason::HealthyReplica(l))
        }
        // A former primary started as a standby without upstream (during an election
        // it lost) may hold WAL the new primary never had.
        _ if pg.was_primary => decision(rewind_and_follow(leader), Reason::Rewinding(l)),
        _ => decision(
            vec![Action::Follow { leader: l.clone() }],
            Reason::Refollowing(l),
        ),
    }
}

/// `Some` (not eligible) when this member lags the last known primary position by
/// more than `maximum_lag_on_failover`.
fn too_far_behind(o: &Observation, store: &StoreView) -> Option<Decision> {
    let optime = store.optime?;
    (optime.saturating_sub(o.pg.lsn) > o.policy.maximum_lag_on_failover).then(|| {
        decision(
            vec![],
            Reason::NotEligible(
                "lags the last known primary position by more than maximum_lag_on_failover",
            ),
        )
    })
}

/// Stop cleanly, rewind onto `leader`, start as its replica.
fn rewind_and_follow(leader: &str) -> Vec<Action> {
    vec![
        Action::Stop(StopKind::Fast),
        Action::Rewind {
            leader: leader.to_string(),
        },
        Action::StartReplica {
            leader: Some(leader.to_string()),
        },
    ]
}

fn no_leader(o: &Observation, store: &StoreView) -> Decision {
    let pg = &o.pg;
    if pg.data == DataState::Missing {
        return decision(vec![], Reason::NoDataNoLeader);
    }
    if !pg.running {
        // Never as primary without the lease: start as a standby of nobody, which
        // replays local WAL and makes this member's position known.
        return decision(
            vec![Action::StartReplica { leader: None }],
            Reason::StandbyForElection,
        );
    }
    if hung_for(pg, MEMBER_HUNG_MS) {
        return decision(
            vec![],
            Reason::MemberHung(pg.stall.describe(MEMBER_HUNG_MS)),
        );
    }
    if pg.role != Some(Role::Replica) {
        return decision(vec![], Reason::NotEligible("PostgreSQL is still starting"));
    }
    if o.tags.never_promoted() {
        return decision(vec![], Reason::NotEligible("tagged nofailover"));
    }
    if pg.pre_promote_vetoed {
        return decision(
            vec![],
            Reason::NotEligible("pre_promote vetoed a promotion within the last ttl"),
        );
    }
    // A manual failover names who takes over; forced, the operator has accepted
    // what the rules below protect against (ctl named the risk).
    let manual = match &store.failover {
        Some(f) if f.candidate != o.me => {
            return decision(vec![], Reason::FailoverInProgress(f.candidate.clone()));
        }
        Some(f) if f.force => {
            return decision(
                vec![Action::AcquireLease],
                Reason::ManualFailover { forced: true },
            );
        }
        Some(_) => true,
        None => false,
    };
    // A switchover that found no taker within one ttl (the candidate died) falls
    // back to the ordinary failover rules.
    if let Some(sw) = &store.switchover
        && o.no_leader_for_ms < o.policy.candidate_grace_ms
    {
        if sw.leader == o.me {
            return decision(
                vec![],
                Reason::NotEligible("this member is the one switching over"),
            );
        }
        if let Some(c) = &sw.candidate
            && c != &o.me
        {
            return decision(vec![], Reason::SwitchoverInProgress(c.clone()));
        }
    }
    // The operator's named candidate is exempt only from the ranking below, never
    // from eligibility (synchronous record, timeline, lag, cold-start wait).
    let named_candidate = store.switchover.as_ref().is_some_and(|sw| {
        sw.candidate.as_deref() == Some(o.me.as_str())
            && o.no_leader_for_ms < o.policy.candidate_grace_ms
    });
    if named_candidate && bugs::on(Bug::CandidateSkipsRules) {
        return decision(vec![Action::AcquireLease], Reason::TakingOver);
    }
    if o.policy.synchronous_mode
        && !store
            .sync
            .as_ref()
            .is_some_and(|s| s.holds(&o.me) || last_primary_alone(s, &o.me))
    {
        return decision(
            vec![],
            Reason::NotEligible("synchronous mode: not the recorded synchronous standby"),
        );
    }
    // Positions on different timelines do not compare: a member on an older timeline
    // than the last primary's lacks whatever that primary acknowledged after the fork.
    if let Some(t) = store.timeline
        && pg.timeline < t
    {
        return decision(
            vec![],
            Reason::NotEligible("on an older timeline than the last primary"),
        );
    }
    if let Some(d) = too_far_behind(o, store) {
        return d;
    }
    // After a restart of the whole cluster the former primary (most data, published
    // optime possibly stale: it may have stopped without quorum) needs time to
    // come back and report before anyone is chosen.
    if manual {
        return decision(
            vec![Action::AcquireLease],
            Reason::ManualFailover { forced: false },
        );
    }
    if o.cold_start && o.no_leader_for_ms < o.policy.candidate_grace_ms {
        return decision(vec![], Reason::WaitingForMembersAfterStart);
    }
    // Losing nothing beats failing over a moment sooner: the lag limit is for when no
    // member with every commit shows up.
    if let Some(optime) = store.optime
        && pg.lsn < optime
        && o.no_leader_for_ms < o.policy.candidate_grace_ms
    {
        return decision(vec![], Reason::WaitingForMemberAtOptime);
    }
    if named_candidate {
        return decision(vec![Action::AcquireLease], Reason::TakingOver);
    }
    // The best candidate: newest timeline, highest WAL position, then
    // failover_priority, then name.
    let mine = (pg.timeline, pg.lsn, o.tags.failover_priority);
    let better = store
        .members
        .iter()
        .filter(|m| {
            cannot_take_over(
                m,
                o.policy.synchronous_mode,
                store.sync.as_ref(),
                store.timeline,
            )
            .is_none()
        })
        .filter(|m| {
            let theirs = (m.timeline, m.receive_lsn, m.tags.failover_priority);
            theirs > mine || (theirs == mine && m.name < o.me)
        })
        .map(|m| m.name.clone())
        .min();
    match better {
        Some(m) => decision(vec![], Reason::WaitingForBetterCandidate(m)),
        None => decision(vec![Action::AcquireLease], Reason::TakingOver),
    }
}

#[cfg(test)]
mod tests;
