//! One simulated member: what its pgquorum process holds, the cycle (observe →
//! the real `decide` → execute, as in `supervisor/`) as a sequence of steps, the
//! store requests it has in flight (an answer may come late or never), and its two
//! lease renewal tasks. The names shared by the other files are re-exported here.

use std::collections::{HashMap, VecDeque};

pub(super) use super::pg::SimPg;
use super::{Ev, MS, World};
pub(super) use crate::client::{DEFAULT_DRIFT, DEFAULT_MARGIN, lease_deadline};
pub(super) use crate::ha::bugs::{self, Bug};
pub(super) use crate::ha::decide::{
    self, Action, DataState, Observation, PgView, Policy, Stall, StopKind, StoreView,
};
pub(super) use crate::ha::model::{
    self, ClusterView, HISTORY_KEY, HistoryEntry, INITIALIZE_KEY, LEADER_KEY, MemberStatus,
    OPTIME_KEY, PgRunState, Role, SWITCHOVER_KEY, SYNC_KEY, Switchover, SyncState, TIMELINE_KEY,
    Tags,
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
    pub(super) sync_catchup: Vec<(String, u64)>,
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
