//! Executing each action as `supervisor/execute.rs` does, with the store requests
//! it sends, against the simulated PostgreSQL and fence; and publishing.

use std::time::Duration;

use super::node::*;
use super::observe::my_status;
use super::{Ev, LOOP_WAIT_MS, MAX_LAG, MS, TTL_MS, World};

pub(super) fn target(w: &World, n: usize, leader: &str) -> Result<usize, String> {
    let published = w.nodes[n]
        .proc
        .run
        .as_ref()
        .and_then(|r| r.view.as_ref())
        .is_some_and(|v| v.members.contains_key(leader));
    if !published {
        return Err(format!("leader {leader} has not published its address yet"));
    }
    index_of(w, leader).ok_or_else(|| format!("no member {leader}"))
}

/// The leader `l`'s PostgreSQL answers member `n` as a primary.
pub(super) fn upstream_answers(w: &World, n: usize, l: usize) -> bool {
    w.nodes[l].up && w.side[n] == w.side[l] && w.nodes[l].pg.writable(w.now)
}

/// `fence_deadline()`: the leader lease's deadline, or now (fail closed).
pub(super) fn arm_fence(w: &mut World, n: usize) {
    let d = w.nodes[n]
        .proc
        .leader_lease
        .as_ref()
        .and_then(|l| l.valid_until)
        .unwrap_or_else(|| w.local(n));
    set_fence(w, n, Some(d));
}

pub(super) fn set_fence(w: &mut World, n: usize, d: Option<u64>) {
    w.nodes[n].fence = d;
    if let Some(d) = d {
        let real = w.nodes[n].clock.real(d);
        w.at(real.saturating_sub(w.now), Ev::Fence { n });
    }
}

pub(super) fn stop_leader_lease(w: &mut World, n: usize) -> Option<u64> {
    w.nodes[n].proc.leader_lease.take().map(|l| l.id)
}

pub(super) fn keep_leader_lease(w: &mut World, n: usize, id: u64, until: u64) {
    if let Some(old) = stop_leader_lease(w, n) {
        fire(w, n, Command::LeaseRevoke { id: old });
    }
    w.nodes[n].proc.leader_lease = Some(Renewer {
        id,
        valid_until: Some(until),
    });
    let inc = w.nodes[n].inc;
    later(
        w,
        n,
        LOOP_WAIT_MS * MS,
        Ev::Renew {
            n,
            inc,
            status: false,
            id,
        },
    );
}

pub(super) fn deadline_from(w: &World, sent_local: u64) -> u64 {
    let sent = w.instant(sent_local);
    let d = lease_deadline(
        sent,
        Duration::from_millis(TTL_MS),
        DEFAULT_DRIFT,
        DEFAULT_MARGIN,
    );
    (d - w.base).as_micros() as u64
}

pub(super) fn execute(w: &mut World, n: usize, a: Action) -> Outcome {
    let me = w.nodes[n].name.clone();
    match a {
        Action::AcquireLease => ask(
            w,
            n,
            Command::LeaseGrant {
                ttl_ms: TTL_MS,
                id: 0,
            },
            Purpose::Grant,
        ),
        Action::DropLease { revoke } => {
            if let Some(id) = stop_leader_lease(w, n)
                && revoke
            {
                fire(w, n, Command::LeaseRevoke { id });
            }
            Ok(Some(0))
        }
        Action::TakeBackLease { lease } => ask(
            w,
            n,
            Command::LeaseRenew { id: lease },
            Purpose::TakeBack { lease },
        ),
        Action::RenewLease => {
            let Some(l) = w.nodes[n].proc.leader_lease.as_ref() else {
                return Err("no leader lease to renew".into());
            };
            if l.valid_until.is_none() {
                stop_leader_lease(w, n);
                return Err("the leader lease is gone".into());
            }
            arm_fence(w, n);
            Ok(Some(0))
        }
        Action::ReleaseLease => {
            let pg = &w.nodes[n].pg;
            if pg.running && pg.writable_possible && !bugs::on(Bug::ReleaseWithoutStop) {
                return Err("PostgreSQL may still accept writes; keeping the lease".into());
            }
            if let Some(id) = stop_leader_lease(w, n) {
                fire(w, n, Command::LeaseRevoke { id });
            }
            set_fence(w, n, None);
            Ok(Some(0))
        }
        Action::Bootstrap => {
            arm_fence(w, n);
            let sysid = w.rng.next() | 1;
            let pg = &mut w.nodes[n].pg;
            pg.system_id = Some(sysid);
            pg.wal.clear();
            pg.timeline = 1;
            pg.unrecorded_bootstrap = true;
            w.nodes[n].proc.following = None;
            Ok(Some(300 * MS))
        }
        Action::SetAsideFailedBootstrap => {
            w.nodes[n].proc.should_run = false;
            w.nodes[n].pg = SimPg::default();
            Ok(Some(10 * MS))
        }
        Action::RecordSystemId => {
            let Some(sysid) = w.nodes[n].pg.system_id else {
                return Err("no system identifier to record".into());
            };
            ask(
                w,
                n,
                Command::Put {
                    key: INITIALIZE_KEY.into(),
                    value: sysid.to_string().into_bytes(),
                    lease: 0,
                    expect_mod_revision: Some(0),
                    guard: None,
                },
                Purpose::NeedPut {
                    then: AfterPut::Recorded,
                },
            )
        }
        Action::StartPrimary => {
            arm_fence(w, n);
            w.nodes[n].proc.should_run = true;
            start(w, n, None)?;
            w.nodes[n].proc.following = None;
            Ok(Some(50 * MS))
        }
        Action::StartReplica { leader } => {
            set_fence(w, n, None);
            let up = match &leader {
                Some(l) => Some(target(w, n, l)?),
                None => None,
            };
            w.nodes[n].proc.should_run = true;
            start(w, n, Some(up))?;
            w.nodes[n].proc.following = leader;
            Ok(Some(50 * MS))
        }
        Action::Stop(kind) => {
            // A hung instance acts on no shutdown request; only SIGKILL ends it.
            if kind != StopKind::Kill && w.nodes[n].pg.frozen_since.is_some() {
                return Err("PostgreSQL does not answer the shutdown request".into());
            }
            w.nodes[n].proc.should_run = false;
            if kind == StopKind::Kill {
                w.hang_kills += 1;
            }
            stop(w, n, kind == StopKind::Fast);
            w.nodes[n].proc.following = None;
            Ok(Some(if kind == StopKind::Fast { 100 * MS } else { MS }))
        }
        Action::Promote => {
            arm_fence(w, n);
            if !w.nodes[n].pg.accepting(w.now) || w.nodes[n].pg.primary {
                return Err("not a running standby".into());
            }
            let pg = &mut w.nodes[n].pg;
            pg.primary = true;
            pg.timeline += 1;
            pg.writable_possible = true;
            pg.was_primary = true;
            pg.upstream = None;
            pg.streamed_at = None;
            pg.seen.clear();
            w.nodes[n].proc.following = None;
            w.promotions += 1;
            w.note(format!(
                "{me}: promoted (timeline {})",
                w.nodes[n].pg.timeline
            ));
            check_new_primary(w, n);
            Ok(Some(50 * MS))
        }
        Action::Follow { leader } => {
            let up = target(w, n, &leader)?;
            stop(w, n, true);
            set_fence(w, n, None);
            start(w, n, Some(Some(up)))?;
            w.nodes[n].proc.following = Some(leader);
            Ok(Some(150 * MS))
        }
        Action::Rewind { leader } => {
            let l = target(w, n, &leader)?;
            w.nodes[n].proc.down_since = None;
            if w.nodes[n].pg.running {
                return Err("PostgreSQL is running; stop it before pg_rewind".into());
            }
            if !upstream_answers(w, n, l) {
                return Err(format!("{leader} does not answer as a primary yet"));
            }
            let (wal, tl) = (w.nodes[l].pg.wal.clone(), w.nodes[l].pg.timeline);
            let pg = &mut w.nodes[n].pg;
            let keep = pg.common_prefix(&wal);
            pg.wal.truncate(keep);
            pg.timeline = tl;
            pg.was_primary = false;
            w.nodes[n].proc.rewind_failed = false;
            Ok(Some(300 * MS))
        }
        Action::Reclone { source: leader } | Action::Clone { source: leader } => {
            let l = target(w, n, &leader)?;
            if w.nodes[n].pg.running {
                return Err("PostgreSQL is running".into());
            }
            if !upstream_answers(w, n, l) {
                return Err(format!("{leader} does not answer as a primary yet"));
            }
            let src = w.nodes[l].pg.clone();
            let pg = &mut w.nodes[n].pg;
            pg.system_id = src.system_id;
            pg.wal = src.wal;
            pg.timeline = src.timeline;
            // pg_basebackup copies postgresql.auto.conf.
            pg.sync_names = src.sync_names;
            pg.was_primary = false;
            pg.unrecorded_bootstrap = false;
            w.nodes[n].proc.rewind_failed = false;
            Ok(Some(1_000 * MS))
        }
        Action::PublishOptime => {
            let view = w.nodes[n].proc.run.as_ref().and_then(|r| r.view.clone());
            let pg = &w.nodes[n].pg;
            let (tl, lsn) = (pg.timeline, pg.wal.len() as u64);
            let mut puts = Vec::new();
            if tl > 0 && view.as_ref().and_then(|v| v.timeline) != Some(tl) {
                puts.push(Op::PutGuarded {
                    key: TIMELINE_KEY,
                    value: tl.to_string().into_bytes(),
                });
            }
            if lsn > 0 && view.as_ref().and_then(|v| v.optime) != Some(lsn) {
                puts.push(Op::PutGuarded {
                    key: OPTIME_KEY,
                    value: lsn.to_string().into_bytes(),
                });
            }
            let run = w.nodes[n].proc.run.as_mut().expect("a cycle runs");
            for op in puts.into_iter().rev() {
                run.ops.push_front(op);
            }
            Ok(Some(0))
        }
        Action::EnsureSlots { .. } | Action::KeepStandbySlots { .. } => Ok(Some(MS)),
        Action::SetSyncStandby(names) => {
            if !w.nodes[n].pg.accepting(w.now) {
                return Err("PostgreSQL is not running".into());
            }
            w.nodes[n].pg.sync_names = names;
            Ok(Some(5 * MS))
        }
        Action::RecordSync(name) => {
            let state = SyncState {
                leader: me,
                sync_standby: name,
            };
            let value = serde_json::to_vec(&state).expect("serializable");
            put_as_leader(w, n, SYNC_KEY, value)
        }
        Action::RecordPromotion {
            timeline,
            lsn,
            reason,
        } => {
            let mut history: Vec<HistoryEntry> = w
                .state
                .get(HISTORY_KEY)
                .and_then(|kv| serde_json::from_slice(&kv.value).ok())
                .unwrap_or_default();
            model::append_history(
                &mut history,
                HistoryEntry {
                    timeline,
                    lsn,
                    reason,
                    time: w.now / (1_000 * MS),
                    new_leader: me,
                },
            );
            let value = serde_json::to_vec(&history).expect("serializable");
            put_as_leader(w, n, HISTORY_KEY, value)
        }
        Action::ClearSwitchover => ask(
            w,
            n,
            Command::Delete {
                key: SWITCHOVER_KEY.into(),
                prefix: false,
                expect_mod_revision: None,
            },
            Purpose::Answered,
        ),
        Action::ClearFailover => Err("no manual failovers in the simulation".into()),
        Action::Reinit { .. } | Action::ClearReinit | Action::Reload | Action::FinishRequest(_) => {
            Err("no reinit requests in the simulation".into())
        }
        Action::StopForeign { .. } => Err("no foreign postmasters in the simulation".into()),
    }
}

pub(super) fn put_as_leader(w: &mut World, n: usize, key: &str, value: Vec<u8>) -> Outcome {
    let Some(id) = w.nodes[n].proc.leader_lease.as_ref().map(|l| l.id) else {
        return Err(format!("not writing {key}: no leader lease"));
    };
    ask(
        w,
        n,
        Command::Put {
            key: key.into(),
            value,
            lease: 0,
            expect_mod_revision: None,
            guard: Some(LeaseGuard {
                key: LEADER_KEY.into(),
                lease: id,
            }),
        },
        Purpose::NeedPut {
            then: AfterPut::Nothing,
        },
    )
}

/// Starts PostgreSQL (`upstream`: `None` as primary, `Some(..)` as a standby).
/// The guard refuses a primary start once the fence deadline has passed.
pub(super) fn start(
    w: &mut World,
    n: usize,
    upstream: Option<Option<usize>>,
) -> Result<(), String> {
    if w.nodes[n].pg.running {
        return Err("PostgreSQL is running already".into());
    }
    if w.nodes[n].pg.system_id.is_none() {
        return Err("no data directory".into());
    }
    let now_l = w.local(n);
    if upstream.is_none() && w.nodes[n].fence.is_none_or(|d| d <= now_l) {
        return Err("the fence deadline has passed; not starting as primary".into());
    }
    let ready = w.rng.range(100 * MS, 600 * MS);
    let now = w.now;
    let node = &mut w.nodes[n];
    let pg = &mut node.pg;
    pg.running = true;
    pg.ready_at = now + ready;
    pg.primary = upstream.is_none();
    pg.writable_possible = pg.primary;
    pg.upstream = upstream.flatten();
    pg.streamed_at = None;
    // synchronous_standby_names stays: ALTER SYSTEM wrote it into the data dir.
    if pg.primary {
        pg.was_primary = true;
        check_new_primary(w, n);
    }
    Ok(())
}

pub(super) fn stop(w: &mut World, n: usize, fast: bool) {
    let now = w.now;
    if fast && w.nodes[n].pg.writable(now) {
        // A fast shutdown sends all WAL to the connected standbys first.
        let wal = w.nodes[n].pg.wal.clone();
        let connected: Vec<String> = w.nodes[n]
            .pg
            .streaming(now)
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        for s in connected {
            if let Some(i) = index_of(w, &s)
                && w.nodes[i].pg.is_prefix_of(&wal)
                && w.nodes[i].pg.upstream == Some(n)
            {
                w.nodes[i].pg.wal = wal.clone();
            }
        }
    }
    w.nodes[n].pg.halt();
}

/// A new primary: in synchronous mode it must hold every acknowledged commit; in
/// asynchronous mode it must be within the lag limit of `/pg/optime`.
pub(super) fn check_new_primary(w: &mut World, n: usize) {
    let pg = &w.nodes[n].pg;
    if w.setup.synchronous_mode {
        let have: std::collections::HashSet<u64> = pg.wal.iter().copied().collect();
        let missing = w.acked.iter().filter(|id| !have.contains(id)).count();
        if missing > 0 {
            let what = format!(
                "n{} became primary without {missing} acknowledged commit(s)",
                n + 1
            );
            w.fail(what);
        }
    } else if let Some(optime) = w
        .state
        .get(OPTIME_KEY)
        .and_then(|kv| String::from_utf8_lossy(&kv.value).parse::<u64>().ok())
    {
        let lsn = pg.wal.len() as u64;
        if lsn + MAX_LAG < optime {
            let what = format!(
                "n{} became primary at {lsn}, more than maximum_lag_on_failover ({MAX_LAG}) \
                 behind /pg/optime {optime}",
                n + 1
            );
            w.fail(what);
        }
    }
}

/// Member status under its own lease (`supervisor/publish.rs`); only with the store.
pub(super) fn publish(w: &mut World, n: usize) -> Outcome {
    if w.nodes[n]
        .proc
        .run
        .as_ref()
        .is_none_or(|r| r.view.is_none())
    {
        return Ok(Some(0));
    }
    let now_l = w.local(n);
    let p = &mut w.nodes[n].proc;
    if p.status_lease
        .as_ref()
        .is_some_and(|l| l.valid_until.is_none_or(|u| now_l >= u))
    {
        p.status_lease = None;
        p.last_published = None;
    }
    if p.status_lease.is_none() {
        return ask(
            w,
            n,
            Command::LeaseGrant {
                ttl_ms: TTL_MS,
                id: 0,
            },
            Purpose::StatusGrant,
        );
    }
    publish_put(w, n)
}

pub(super) fn publish_put(w: &mut World, n: usize) -> Outcome {
    let status = my_status(w, n);
    let p = &w.nodes[n].proc;
    if p.last_published.as_ref() == Some(&status) {
        return Ok(Some(0));
    }
    let lease = p.status_lease.as_ref().map_or(0, |l| l.id);
    let value = serde_json::to_vec(&status).expect("serializable");
    ask(
        w,
        n,
        Command::Put {
            key: model::member_key(&w.nodes[n].name),
            value,
            lease,
            expect_mod_revision: None,
            guard: None,
        },
        Purpose::StatusPut(status),
    )
}
