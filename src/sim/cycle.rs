//! The cycle's control flow: a cycle starts with a store read, the answer is turned
//! into a decision (`observe`), its actions run one step at a time (`execute`), each
//! waiting for its store answer (or the client's timeout); and the renewal tasks.

use super::execute::*;
use super::node::*;
use std::collections::VecDeque;

use super::observe::observe;
use super::{Ev, LOOP_WAIT_MS, MS, Reply, World};

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
            step(w, n);
            return;
        }
        None => None,
    };
    let inc = w.nodes[n].inc;
    let next = |w: &mut World| w.at(0, Ev::Step { n, inc });
    match why {
        Purpose::Read => {
            observe(w, n, None);
            step(w, n);
        }
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
