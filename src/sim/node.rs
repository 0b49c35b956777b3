//! One simulated member: what its pgquorum process holds, the cycle (observe →
//! the real `decide` → execute, as in `supervisor/`) as a sequence of steps, the
//! store requests it has in flight (an answer may come late or never), and its two
//! lease renewal tasks. The names shared by the other files are re-exported here.

use std::collections::{HashMap, VecDeque};

pub(super) use super::execute::{
    arm_fence, deadline_from, execute, keep_leader_lease, publish, publish_put, put_as_leader,
    set_fence, upstream_answers,
};
pub(super) use super::observe::{my_status, observe};
pub(super) use super::pg::SimPg;
use super::{Ev, LOOP_WAIT_MS, MS, Reply, World};
pub(super) use crate::client::{DEFAULT_DRIFT, DEFAULT_MARGIN, lease_deadline};
pub(super) use crate::ha::bugs::{self, Bug};
pub(super) use crate::ha::decide::{
    self, Action, DataState, Observation, PgView, Policy, Stall, StopKind, StoreView,
};
pub(super) use crate::ha::model::{
    self, ClusterView, INITIALIZE_KEY, LEADER_KEY, MemberStatus, OPTIME_KEY, PgRunState, Role,
    SWITCHOVER_KEY, SYNC_KEY, Switchover, SyncState, TIMELINE_KEY, Tags,
};
pub(super) use crate::store::{Command, LeaseGuard, Lessor, Response};

/// A member's clock: `local = offset + real · rate`.
pub(super) struct Clock {
    pub(super) rate: f64,
    pub(super) offset: u64,
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
pub(super) struct Renewer {
    pub id: u64,
    /// Holder-side deadline (local µs); `None`: the lease is gone.
    pub valid_until: Option<u64>,
}

/// What one pgquorum process holds in memory (lost when it dies).
#[derive(Default)]
pub(super) struct Proc {
    pub leader_lease: Option<Renewer>,
    pub(super) status_lease: Option<Renewer>,
    pub(super) seen_leader: bool,
    pub(super) leaderless_since: Option<u64>,
    pub(super) should_run: bool,
    pub(super) following: Option<String>,
    pub(super) down_since: Option<u64>,
    pub(super) stalled_since: Option<u64>,
    pub(super) sync_catchup: Option<(String, u64)>,
    pub(super) rewind_failed: bool,
    pub(super) last_published: Option<MemberStatus>,
    pub(super) last_reason: String,
    /// The cycle in progress.
    pub(super) run: Option<Run>,
    pub(super) cycle_tick: u64,
    pub(super) pending: HashMap<u64, Purpose>,
}

pub(super) struct Run {
    pub(super) ops: VecDeque<Op>,
    pub(super) view: Option<ClusterView>,
    pub(super) acquired: bool,
}

pub(super) enum Op {
    Act(Action),
    /// `put_as_leader`.
    PutGuarded {
        key: &'static str,
        value: Vec<u8>,
    },
    Publish,
}

/// What an outstanding request was for.
pub(super) enum Purpose {
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

pub(super) enum AfterPut {
    Nothing,
    Recorded,
}

pub(crate) struct Node {
    pub(super) idx: usize,
    pub(super) name: String,
    pub(super) up: bool,
    /// pgquorum process incarnation.
    pub(super) inc: u64,
    pub(super) clock: Clock,
    pub(super) pq_paused_until: u64,
    pub(super) guard_paused_until: u64,
    pub(super) deferred: Vec<Ev>,
    pub(super) lessor: Lessor,
    pub(super) applied: usize,
    pub(super) pg: SimPg,
    pub(super) pg_gen: u64,
    /// The fence deadline both fencers enforce (local µs).
    pub(super) fence: Option<u64>,
    pub(super) proc: Proc,
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
    pub(super) fn guard_paused(&self) -> bool {
        self.guard_paused_until > 0
    }
}

pub(super) fn index_of(w: &World, name: &str) -> Option<usize> {
    w.nodes.iter().position(|n| n.name == name)
}

/// Schedules `ev` after `local_us` of member `n`'s clock.
pub(super) fn later(w: &mut World, n: usize, local_us: u64, ev: Ev) {
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
pub(super) fn abort_actions(w: &mut World, n: usize) {
    if let Some(run) = w.nodes[n].proc.run.as_mut() {
        run.ops.retain(|o| matches!(o, Op::Publish));
    }
    let inc = w.nodes[n].inc;
    w.at(0, Ev::Step { n, inc });
}

pub(super) fn finish_cycle(w: &mut World, n: usize) {
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

pub(super) type Outcome = Result<Option<u64>, String>;

pub(super) fn ask(w: &mut World, n: usize, cmd: Command, why: Purpose) -> Outcome {
    let req = w.send(n, Some(cmd));
    w.nodes[n].proc.pending.insert(req, why);
    Ok(None)
}

/// Sends and forgets (`let _ = client.lease_revoke(..)`).
pub(super) fn fire(w: &mut World, n: usize, cmd: Command) {
    w.send(n, Some(cmd));
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

pub(super) fn fail_step(w: &mut World, n: usize, why: &str) {
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

pub(super) fn on_renewed(
    w: &mut World,
    n: usize,
    status: bool,
    id: u64,
    sent: u64,
    r: Option<Response>,
) {
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
