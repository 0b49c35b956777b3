//! One simulated member: the supervisor's cycle (observe → `decide` → execute, as
//! in `supervisor/`), its two lease renewal tasks, its two fencers, and its
//! PostgreSQL. Each action does what `supervisor/execute.rs` does for it, with the
//! store requests it sends; a request's answer may come late or never.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use super::pg::SimPg;
use super::{Ev, LOOP_WAIT_MS, MAX_LAG, MS, Reply, TTL_MS, World};
use crate::client::{DEFAULT_DRIFT, DEFAULT_MARGIN, lease_deadline};
use crate::ha::bugs::{self, Bug};
use crate::ha::decide::{
    self, Action, DataState, Observation, PgView, Policy, Stall, StopKind, StoreView,
};
use crate::ha::model::{
    self, ClusterView, INITIALIZE_KEY, LEADER_KEY, MemberStatus, OPTIME_KEY, PgRunState, Role,
    SWITCHOVER_KEY, SYNC_KEY, Switchover, SyncState, TIMELINE_KEY, Tags,
};
use crate::store::{Command, LeaseGuard, Lessor, Response};

/// A member's clock: `local = offset + real · rate`.
pub(crate) struct Clock {
    rate: f64,
    offset: u64,
}

impl Clock {
    pub fn local(&self, real: u64) -> u64 {
        self.offset + (real as f64 * self.rate) as u64
    }
    /// The first real instant at which the local clock shows `local`.
    pub fn real(&self, local: u64) -> u64 {
        (local.saturating_sub(self.offset) as f64 / self.rate).ceil() as u64 + 1
    }
    fn after(&self, local_us: u64) -> u64 {
        (local_us as f64 / self.rate).ceil() as u64
    }
}

/// A lease kept by a renewal task (`client::LeaseRenewer`).
pub(crate) struct Renewer {
    pub id: u64,
    /// Holder-side deadline (local µs); `None`: the lease is gone.
    pub valid_until: Option<u64>,
}

/// What one pgquorum process holds in memory (lost when it dies).
#[derive(Default)]
pub(crate) struct Proc {
    pub leader_lease: Option<Renewer>,
    status_lease: Option<Renewer>,
    seen_leader: bool,
    leaderless_since: Option<u64>,
    should_run: bool,
    following: Option<String>,
    down_since: Option<u64>,
    stalled_since: Option<u64>,
    sync_catchup: Option<(String, u64)>,
    rewind_failed: bool,
    last_published: Option<MemberStatus>,
    last_reason: String,
    /// The cycle in progress.
    run: Option<Run>,
    cycle_tick: u64,
    pending: HashMap<u64, Purpose>,
}

struct Run {
    ops: VecDeque<Op>,
    view: Option<ClusterView>,
    acquired: bool,
}

enum Op {
    Act(Action),
    /// `put_as_leader`.
    PutGuarded {
        key: &'static str,
        value: Vec<u8>,
    },
    Publish,
}

/// What an outstanding request was for.
enum Purpose {
    Read,
    Grant,
    PutLeader {
        lease: u64,
        until: u64,
    },
    TakeBack {
        lease: u64,
    },
    /// An action that succeeded if the answer is `Put` (guarded or CAS puts).
    NeedPut {
        then: AfterPut,
    },
    /// An action done once answered at all.
    Answered,
    StatusGrant,
    StatusPut(MemberStatus),
    Renew {
        status: bool,
        id: u64,
    },
}

enum AfterPut {
    Nothing,
    Recorded,
}

pub(crate) struct Node {
    pub idx: usize,
    pub name: String,
    pub up: bool,
    /// pgquorum process incarnation.
    pub inc: u64,
    pub clock: Clock,
    pq_paused_until: u64,
    guard_paused_until: u64,
    pub deferred: Vec<Ev>,
    pub lessor: Lessor,
    pub applied: usize,
    pub pg: SimPg,
    pg_gen: u64,
    /// The fence deadline both fencers enforce (local µs).
    fence: Option<u64>,
    pub proc: Proc,
}

impl Node {
    pub fn new(idx: usize, rate: f64, offset: u64) -> Self {
        Node {
            idx,
            name: format!("n{}", idx + 1),
            up: true,
            inc: 1,
            clock: Clock { rate, offset },
            pq_paused_until: 0,
            guard_paused_until: 0,
            deferred: Vec::new(),
            lessor: Lessor::default(),
            applied: 0,
            pg: SimPg::default(),
            pg_gen: 0,
            fence: None,
            proc: Proc::default(),
        }
    }

    pub fn pq_paused(&self) -> bool {
        self.pq_paused_until > 0
    }
    fn guard_paused(&self) -> bool {
        self.guard_paused_until > 0
    }
}

fn index_of(w: &World, name: &str) -> Option<usize> {
    w.nodes.iter().position(|n| n.name == name)
}

/// Schedules `ev` after `local_us` of member `n`'s clock.
fn later(w: &mut World, n: usize, local_us: u64, ev: Ev) {
    let d = w.nodes[n].clock.after(local_us);
    w.at(d, ev);
}

pub(super) fn cycle(w: &mut World, n: usize, tick: u64) {
    let p = &w.nodes[n].proc;
    if p.run.is_some() || tick != p.cycle_tick {
        return;
    }
    let req = w.send(n, None);
    w.nodes[n].proc.pending.insert(req, Purpose::Read);
    w.nodes[n].proc.run = Some(Run {
        ops: VecDeque::new(),
        view: None,
        acquired: false,
    });
}

/// Wakes idle members when the leader key changed (the supervisor's watch).
pub(super) fn wake_all(w: &mut World) {
    for n in 0..w.nodes.len() {
        let node = &w.nodes[n];
        if node.up && node.proc.run.is_none() {
            let (inc, tick) = (node.inc, node.proc.cycle_tick);
            let d = w.rng.range(MS, 20 * MS);
            w.at(d, Ev::Cycle { n, inc, tick });
        }
    }
}

fn observe(w: &mut World, n: usize, kvs: Option<Vec<(String, Vec<u8>, u64)>>) {
    let now_l = w.local(n);
    let me = w.nodes[n].name.clone();
    let read = kvs.map(|kvs| {
        let own_old_lease = kvs
            .iter()
            .find(|(k, v, l)| k == LEADER_KEY && v == me.as_bytes() && *l != 0)
            .filter(|_| w.nodes[n].proc.leader_lease.is_none())
            .map(|(_, _, l)| *l);
        let (view, sysid) =
            ClusterView::from_kvs(kvs.iter().map(|(k, v, _)| (k.as_str(), v.as_slice())));
        (view, sysid, own_old_lease)
    });
    let raft_members: Vec<String> = if w.nodes[n].proc.leader_lease.is_some() {
        w.nodes.iter().map(|x| x.name.clone()).collect()
    } else {
        Vec::new()
    };
    track_sync_catchup(w, n);
    let leader_serving = read.as_ref().is_some_and(|(v, _, _)| {
        v.leader
            .as_ref()
            .and_then(|l| v.members.get(l))
            .is_some_and(|m| m.role == Role::Primary && m.state == PgRunState::Running)
    });
    let pg = pg_view(w, n, now_l, leader_serving);
    let node = &mut w.nodes[n];
    let p = &mut node.proc;
    match read.as_ref().map(|(v, _, _)| v.leader.is_none()) {
        Some(true) => {
            p.leaderless_since.get_or_insert(now_l);
        }
        Some(false) => {
            p.leaderless_since = None;
            p.seen_leader = true;
        }
        None => {}
    }
    let lease_valid = p
        .leader_lease
        .as_ref()
        .is_some_and(|l| l.valid_until.is_some_and(|u| now_l < u));
    let obs = Observation {
        me: me.clone(),
        tags: Tags::default(),
        policy: Policy {
            maximum_lag_on_failover: MAX_LAG,
            synchronous_mode: w.setup.synchronous_mode,
            primary_start_timeout_ms: 10_000,
            candidate_grace_ms: TTL_MS,
            primary_hang_timeout_ms: 10_000,
            sync_standby_hang_timeout_ms: 5_000,
            synchronous_mode_strict: false,
        },
        paused: false,
        store: read.as_ref().map(|(view, sysid, _)| StoreView {
            raft_members,
            leader: view.leader.clone(),
            system_id: *sysid,
            members: view
                .members
                .values()
                .filter(|m| m.name != me)
                .cloned()
                .collect(),
            optime: view.optime,
            timeline: view.timeline,
            sync: view.sync.clone(),
            switchover: view.switchover.clone(),
        }),
        lease_held: lease_valid,
        lease_lapsed: p.leader_lease.is_some() && !lease_valid,
        own_old_lease: read.as_ref().and_then(|(_, _, l)| *l),
        no_leader_for_ms: p.leaderless_since.map_or(0, |t| (now_l - t) / MS),
        cold_start: !p.seen_leader,
        pg,
    };
    let d = decide::decide(&obs);
    let reason = d.reason.to_string();
    if reason != p.last_reason {
        p.last_reason = reason.clone();
        w.note(format!("{me}: {reason} {:?}", d.actions));
    }
    let run = w.nodes[n].proc.run.as_mut().expect("a cycle runs");
    run.view = read.map(|(v, _, _)| v);
    run.ops = d.actions.into_iter().map(Op::Act).collect();
    run.ops.push_back(Op::Publish);
    step(w, n);
}

fn track_sync_catchup(w: &mut World, n: usize) {
    let now = w.now;
    let pg = &w.nodes[n].pg;
    let sync_now = pg
        .sync_names
        .clone()
        .filter(|c| pg.streaming(now).iter().any(|(r, s)| r == c && *s));
    let primary = pg.writable(now);
    let len = pg.wal.len() as u64;
    let p = &mut w.nodes[n].proc;
    match (&p.sync_catchup, sync_now) {
        (Some((c, _)), Some(s)) if *c == s => {}
        (_, Some(s)) if primary => p.sync_catchup = Some((s, len)),
        _ => p.sync_catchup = None,
    }
}

fn pg_view(w: &mut World, n: usize, now_l: u64, leader_serving: bool) -> PgView {
    let now = w.now;
    let node = &mut w.nodes[n];
    let pg = &node.pg;
    let p = &mut node.proc;
    let accepting = pg.accepting(now);
    let role = accepting.then_some(if pg.primary {
        Role::Primary
    } else {
        Role::Replica
    });
    if pg.running {
        p.down_since = None;
    } else if p.should_run {
        p.down_since.get_or_insert(now_l);
    }
    let streaming = pg
        .streamed_at
        .is_some_and(|t| now - t <= super::pg::STREAM_TIMEOUT_US);
    if role == Some(Role::Replica) && !streaming && leader_serving {
        p.stalled_since.get_or_insert(now_l);
    } else {
        p.stalled_since = None;
    }
    let is_primary = role == Some(Role::Primary);
    PgView {
        data: match pg.system_id {
            None => DataState::Missing,
            Some(system_id) => DataState::Initialized { system_id },
        },
        running: pg.running,
        accepting,
        role,
        timeline: if accepting { pg.timeline } else { 0 },
        lsn: pg.wal.len() as u64,
        following: if pg.running {
            p.following.clone()
        } else {
            None
        },
        was_primary: pg.system_id.is_some() && pg.was_primary,
        unrecorded_bootstrap: pg.unrecorded_bootstrap,
        down_for_ms: p.down_since.map(|t| (now_l - t) / MS),
        sync_standby_names: if accepting {
            Some(pg.sync_names.clone().unwrap_or_default())
        } else {
            None
        },
        streaming_replicas: if is_primary {
            pg.streaming(now)
        } else {
            Vec::new()
        },
        not_streaming_ms: p.stalled_since.map(|t| (now_l - t) / MS),
        may_be_primary: pg.running && pg.writable_possible,
        foreign_postmaster: None,
        replica_flush: if is_primary {
            pg.seen
                .iter()
                .map(|(k, (_, f))| (k.clone(), *f as u64))
                .collect()
        } else {
            Vec::new()
        },
        sync_catchup: p.sync_catchup.clone(),
        stall: Stall::default(),
        sync_stalled: None,
        rewind_failed: p.rewind_failed,
    }
}

/// The next operation of the cycle in progress.
pub(super) fn step(w: &mut World, n: usize) {
    let Some(run) = w.nodes[n].proc.run.as_mut() else {
        return;
    };
    let Some(op) = run.ops.pop_front() else {
        finish_cycle(w, n);
        return;
    };
    let result = match op {
        Op::Act(a) => execute(w, n, a),
        Op::PutGuarded { key, value } => put_as_leader(w, n, key, value),
        Op::Publish => publish(w, n),
    };
    match result {
        // Done after `us` (local): the next operation then.
        Ok(Some(us)) => {
            let inc = w.nodes[n].inc;
            later(w, n, us, Ev::Step { n, inc });
        }
        // Waiting for a store answer.
        Ok(None) => {}
        Err(why) => {
            w.note(format!("{}: action failed: {why}", w.nodes[n].name));
            abort_actions(w, n);
        }
    }
}

/// An action failed: the rest of the decision is dropped, the status still goes out.
fn abort_actions(w: &mut World, n: usize) {
    if let Some(run) = w.nodes[n].proc.run.as_mut() {
        run.ops.retain(|o| matches!(o, Op::Publish));
    }
    let inc = w.nodes[n].inc;
    w.at(0, Ev::Step { n, inc });
}

fn finish_cycle(w: &mut World, n: usize) {
    let acquired = w.nodes[n]
        .proc
        .run
        .take()
        .is_some_and(|r| r.acquired && w.nodes[n].proc.leader_lease.is_some());
    let node = &mut w.nodes[n];
    node.proc.cycle_tick += 1;
    let (inc, tick) = (node.inc, node.proc.cycle_tick);
    let wait = if acquired { 0 } else { LOOP_WAIT_MS * MS };
    later(w, n, wait, Ev::Cycle { n, inc, tick });
}

type Outcome = Result<Option<u64>, String>;

fn ask(w: &mut World, n: usize, cmd: Command, why: Purpose) -> Outcome {
    let req = w.send(n, Some(cmd));
    w.nodes[n].proc.pending.insert(req, why);
    Ok(None)
}

/// Sends and forgets (`let _ = client.lease_revoke(..)`).
fn fire(w: &mut World, n: usize, cmd: Command) {
    w.send(n, Some(cmd));
}

fn target(w: &World, n: usize, leader: &str) -> Result<usize, String> {
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
fn upstream_answers(w: &World, n: usize, l: usize) -> bool {
    w.nodes[l].up && w.side[n] == w.side[l] && w.nodes[l].pg.writable(w.now)
}

/// `fence_deadline()`: the leader lease's deadline, or now (fail closed).
fn arm_fence(w: &mut World, n: usize) {
    let d = w.nodes[n]
        .proc
        .leader_lease
        .as_ref()
        .and_then(|l| l.valid_until)
        .unwrap_or_else(|| w.local(n));
    set_fence(w, n, Some(d));
}

fn set_fence(w: &mut World, n: usize, d: Option<u64>) {
    w.nodes[n].fence = d;
    if let Some(d) = d {
        let real = w.nodes[n].clock.real(d);
        let pg_gen = w.nodes[n].pg_gen;
        w.at(real.saturating_sub(w.now), Ev::Fence { n, pg_gen });
    }
}

fn stop_leader_lease(w: &mut World, n: usize) -> Option<u64> {
    w.nodes[n].proc.leader_lease.take().map(|l| l.id)
}

fn keep_leader_lease(w: &mut World, n: usize, id: u64, until: u64) {
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

fn deadline_from(w: &World, sent_local: u64) -> u64 {
    let sent = w.instant(sent_local);
    let d = lease_deadline(
        sent,
        Duration::from_millis(TTL_MS),
        DEFAULT_DRIFT,
        DEFAULT_MARGIN,
    );
    (d - w.base).as_micros() as u64
}

fn execute(w: &mut World, n: usize, a: Action) -> Outcome {
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
            w.nodes[n].proc.should_run = false;
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
        Action::Reclone { leader } | Action::Clone { leader } => {
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
        Action::EnsureSlots { .. } => Ok(Some(MS)),
        Action::SetSyncStandby(name) => {
            if !w.nodes[n].pg.accepting(w.now) {
                return Err("PostgreSQL is not running".into());
            }
            w.nodes[n].pg.sync_names = name;
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
        Action::StopForeign { .. } => Err("no foreign postmasters in the simulation".into()),
    }
}

fn put_as_leader(w: &mut World, n: usize, key: &str, value: Vec<u8>) -> Outcome {
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
fn start(w: &mut World, n: usize, upstream: Option<Option<usize>>) -> Result<(), String> {
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
    node.pg_gen += 1;
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

fn stop(w: &mut World, n: usize, fast: bool) {
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
fn check_new_primary(w: &mut World, n: usize) {
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

fn my_status(w: &World, n: usize) -> MemberStatus {
    let node = &w.nodes[n];
    let pg = &node.pg;
    let accepting = pg.accepting(w.now);
    let role = match (accepting, pg.primary) {
        (true, true) => Role::Primary,
        (true, false) => Role::Replica,
        _ => Role::Uninitialized,
    };
    let state = if accepting {
        PgRunState::Running
    } else if pg.running {
        PgRunState::Starting
    } else if node.proc.should_run {
        PgRunState::Crashed
    } else {
        PgRunState::Stopped
    };
    let view = node.proc.run.as_ref().and_then(|r| r.view.as_ref());
    MemberStatus {
        name: node.name.clone(),
        role,
        state,
        pg_addr: format!("{}:5432", node.name),
        api_url: String::new(),
        timeline: if accepting { pg.timeline } else { 0 },
        receive_lsn: pg.wal.len() as u64,
        replay_lsn: pg.wal.len() as u64,
        following: node.proc.following.clone(),
        tags: Tags::default(),
        sync_standby: view
            .and_then(|v| v.sync.as_ref())
            .and_then(|s| s.sync_standby.as_deref())
            == Some(node.name.as_str()),
        node_id: n as u64 + 1,
    }
}

/// Member status under its own lease (`supervisor/publish.rs`); only with the store.
fn publish(w: &mut World, n: usize) -> Outcome {
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

fn publish_put(w: &mut World, n: usize) -> Outcome {
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

/// A store answer (or the client's timeout) for member `n`.
pub(super) fn on_reply(w: &mut World, n: usize, req: u64, resp: Option<Reply>) {
    let Some(why) = w.nodes[n].proc.pending.remove(&req) else {
        return;
    };
    let sent_local = w.reqs.remove(&req).map_or(0, |r| r.sent_local);
    let resp = match resp {
        Some(Reply::Resp(r)) => Some(r),
        Some(Reply::Read(kvs)) => {
            observe(w, n, Some(kvs));
            return;
        }
        None => None,
    };
    let inc = w.nodes[n].inc;
    let next = |w: &mut World| w.at(0, Ev::Step { n, inc });
    match why {
        Purpose::Read => observe(w, n, None),
        Purpose::Grant => match resp {
            Some(Response::Lease { id, .. }) => {
                let until = deadline_from(w, sent_local);
                let me = w.nodes[n].name.clone();
                let _ = ask(
                    w,
                    n,
                    Command::Put {
                        key: LEADER_KEY.into(),
                        value: me.into_bytes(),
                        lease: id,
                        expect_mod_revision: Some(0),
                        guard: None,
                    },
                    Purpose::PutLeader { lease: id, until },
                );
            }
            _ => fail_step(w, n, "cannot grant a lease"),
        },
        Purpose::PutLeader { lease, until } => match resp {
            Some(Response::Put { .. }) => {
                w.note(format!(
                    "{}: acquired the leader lease {lease}",
                    w.nodes[n].name
                ));
                keep_leader_lease(w, n, lease, until);
                arm_fence(w, n);
                if let Some(r) = w.nodes[n].proc.run.as_mut() {
                    r.acquired = true;
                }
                next(w);
            }
            other => {
                fire(w, n, Command::LeaseRevoke { id: lease });
                if other.is_none() {
                    fail_step(w, n, "leader key put: outcome unknown");
                } else {
                    next(w);
                }
            }
        },
        Purpose::TakeBack { lease } => match resp {
            Some(Response::Lease { .. }) => {
                let until = deadline_from(w, sent_local);
                w.note(format!("{}: took back lease {lease}", w.nodes[n].name));
                keep_leader_lease(w, n, lease, until);
                arm_fence(w, n);
                if let Some(r) = w.nodes[n].proc.run.as_mut() {
                    r.acquired = true;
                }
                next(w);
            }
            Some(_) => next(w),
            None => fail_step(w, n, "take back: no answer"),
        },
        Purpose::NeedPut { then } => match resp {
            Some(Response::Put { .. }) => {
                if let AfterPut::Recorded = then {
                    w.nodes[n].pg.unrecorded_bootstrap = false;
                }
                next(w);
            }
            Some(Response::CompareFailed { .. }) if matches!(then, AfterPut::Recorded) => next(w),
            Some(_) => fail_step(w, n, "guarded put refused: no longer the leader"),
            None => fail_step(w, n, "put: no answer"),
        },
        Purpose::Answered => match resp {
            Some(_) => next(w),
            None => fail_step(w, n, "no answer"),
        },
        Purpose::StatusGrant => match resp {
            Some(Response::Lease { id, .. }) => {
                let until = deadline_from(w, sent_local);
                w.nodes[n].proc.status_lease = Some(Renewer {
                    id,
                    valid_until: Some(until),
                });
                later(
                    w,
                    n,
                    LOOP_WAIT_MS * MS,
                    Ev::Renew {
                        n,
                        inc,
                        status: true,
                        id,
                    },
                );
                if let Ok(Some(_)) = publish_put(w, n) {
                    next(w);
                }
            }
            _ => next(w),
        },
        Purpose::StatusPut(status) => {
            if resp.is_some() {
                w.nodes[n].proc.last_published = Some(status);
            }
            next(w);
        }
        Purpose::Renew { status, id } => on_renewed(w, n, status, id, sent_local, resp),
    }
}

fn fail_step(w: &mut World, n: usize, why: &str) {
    w.note(format!("{}: action failed: {why}", w.nodes[n].name));
    abort_actions(w, n);
}

/// A renewal task's tick: renew, and tick again after loop_wait.
pub(super) fn renew(w: &mut World, n: usize, status: bool, id: u64) {
    let p = &w.nodes[n].proc;
    let current = if status {
        &p.status_lease
    } else {
        &p.leader_lease
    };
    if current.as_ref().is_none_or(|l| l.id != id) {
        return;
    }
    let req = w.send(n, Some(Command::LeaseRenew { id }));
    w.nodes[n]
        .proc
        .pending
        .insert(req, Purpose::Renew { status, id });
    let inc = w.nodes[n].inc;
    later(w, n, LOOP_WAIT_MS * MS, Ev::Renew { n, inc, status, id });
}

fn on_renewed(w: &mut World, n: usize, status: bool, id: u64, sent: u64, r: Option<Response>) {
    let until = deadline_from(w, sent);
    let p = &mut w.nodes[n].proc;
    let slot = if status {
        &mut p.status_lease
    } else {
        &mut p.leader_lease
    };
    let Some(l) = slot.as_mut().filter(|l| l.id == id) else {
        return;
    };
    match r {
        Some(Response::Lease { .. }) => l.valid_until = Some(until),
        Some(Response::LeaseNotFound { .. }) => l.valid_until = None,
        _ => return,
    }
    // The renewal task moves the fence deadline only while the fence is armed.
    if !status
        && let Some(u) = l.valid_until
        && w.nodes[n].fence.is_some()
    {
        set_fence(w, n, Some(u));
    }
}

/// Both fencers look at the deadline: the guard unless it is paused, pgquorum's
/// fencer thread unless pgquorum is. Either kills every PostgreSQL process.
pub(super) fn fence_check(w: &mut World, n: usize, _pg_gen: u64) {
    let node = &w.nodes[n];
    let Some(d) = node.fence else {
        return;
    };
    if !node.pg.running || w.local(n) < d {
        return;
    }
    let guard = !node.guard_paused();
    let fencer = node.up && !node.pq_paused();
    if guard || fencer {
        let by = if guard { "guard" } else { "fencer thread" };
        w.nodes[n].pg.halt();
        w.note(format!(
            "n{}: the {by} killed PostgreSQL at the fence deadline",
            n + 1
        ));
    }
}

/// Standby `n` receives WAL from its upstream (PostgreSQL's own processes:
/// unaffected by pgquorum's pauses).
pub(super) fn stream(w: &mut World, n: usize) {
    let now = w.now;
    let pg = &w.nodes[n].pg;
    if !pg.accepting(now) || pg.primary {
        return;
    }
    let Some(u) = pg.upstream else {
        return;
    };
    if !upstream_answers(w, n, u) || !w.nodes[n].up {
        return;
    }
    if !w.nodes[n].pg.is_prefix_of(&w.nodes[u].pg.wal) {
        // Diverged: the walreceiver fails ("requested timeline ... does not contain").
        return;
    }
    let batch = if w.slow_link[n] {
        if w.rng.chance(0.2) { 1 } else { 0 }
    } else {
        w.rng.range(1, 8) as usize
    };
    let have = w.nodes[n].pg.wal.len();
    let upto = w.nodes[u].pg.wal.len().min(have + batch);
    let add: Vec<u64> = w.nodes[u].pg.wal[have..upto].to_vec();
    let tl = w.nodes[u].pg.timeline;
    let name = w.nodes[n].name.clone();
    let pg = &mut w.nodes[n].pg;
    pg.wal.extend(add);
    pg.timeline = tl;
    pg.streamed_at = Some(now);
    let flushed = pg.wal.len();
    let up = &mut w.nodes[u].pg;
    up.seen.insert(name.clone(), (now, flushed));
    if up.sync_names.as_deref() == Some(name.as_str()) {
        let wal = &up.wal;
        let mut acked = Vec::new();
        up.waiting.retain(|&pos| {
            let done = pos <= flushed;
            if done {
                acked.push(wal[pos - 1]);
            }
            !done
        });
        w.commits_acked += acked.len() as u64;
        w.acked.extend(acked);
    }
}

/// The host dies: pgquorum, the guard and PostgreSQL with it (the data dir stays).
pub(super) fn crash(w: &mut World, n: usize) {
    let node = &mut w.nodes[n];
    node.up = false;
    node.inc += 1;
    node.pg.halt();
    node.fence = None;
    node.proc = Proc::default();
    node.deferred.clear();
    node.pq_paused_until = 0;
    node.guard_paused_until = 0;
}

pub(super) fn restart(w: &mut World, n: usize) {
    let now = w.instant(w.local(n));
    let applied = w.log_len() - 1;
    let leases: Vec<_> = w.state.leases.values().cloned().collect();
    let node = &mut w.nodes[n];
    node.up = true;
    node.lessor.reset(leases.iter(), now);
    node.applied = applied;
    let inc = node.inc;
    w.note(format!("n{} restarted", n + 1));
    w.at(MS, Ev::Cycle { n, inc, tick: 0 });
}

/// Pauses pgquorum's process group (`guard_only`: the guard alone) for `d` µs.
pub(super) fn pause(w: &mut World, n: usize, d: u64, guard_only: bool) {
    let node = &mut w.nodes[n];
    if !node.up || node.pq_paused() || node.guard_paused() {
        return;
    }
    let until = w.now + d;
    let what = if guard_only {
        node.guard_paused_until = until;
        "the guard"
    } else {
        node.pq_paused_until = until;
        if bugs::on(Bug::GuardInSupervisorGroup) {
            node.guard_paused_until = until;
        }
        "pgquorum's process group"
    };
    w.note(format!(
        "FAULT pause {what} of n{} for {} ms",
        n + 1,
        d / MS
    ));
    w.at(d, Ev::Resume { n });
}

pub(super) fn resume(w: &mut World, n: usize) {
    let now = w.now;
    let node = &mut w.nodes[n];
    if node.guard_paused_until > 0 && now >= node.guard_paused_until {
        node.guard_paused_until = 0;
    }
    if node.pq_paused_until > 0 && now >= node.pq_paused_until {
        node.pq_paused_until = 0;
        let held = std::mem::take(&mut node.deferred);
        for ev in held {
            w.at(0, ev);
        }
    }
    fence_check(w, n, 0);
}

/// An operator's `ctl switchover` (candidate named or not), if the store commits.
pub(super) fn request_switchover(w: &mut World) {
    let Some(leader) = w
        .state
        .get(LEADER_KEY)
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
    else {
        return;
    };
    let Some(from) = (0..w.nodes.len()).find(|&i| w.nodes[i].up && w.reaches_quorum(i)) else {
        return;
    };
    let _ = from;
    let others: Vec<String> = w
        .nodes
        .iter()
        .map(|x| x.name.clone())
        .filter(|x| *x != leader)
        .collect();
    let pick = w.rng.range(0, others.len() as u64) as usize;
    let candidate = others.get(pick).cloned();
    let sw = Switchover {
        leader: leader.clone(),
        candidate: candidate.clone(),
    };
    w.note(format!("FAULT switchover from {leader} to {candidate:?}"));
    let value = serde_json::to_vec(&sw).expect("serializable");
    w.commit_entry(&Command::Put {
        key: SWITCHOVER_KEY.into(),
        value,
        lease: 0,
        expect_mod_revision: None,
        guard: None,
    });
}
