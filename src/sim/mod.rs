//! Deterministic simulation of the whole HA loop (unit tests only).
//!
//! One thread, a virtual clock (µs) and a seeded RNG run N members built from the
//! production code: the real `ha::decide`, the real store state machine
//! (`store::State::apply`) and lease expiry (`store::Lessor`, on the Raft leader
//! only, by its own clock), the real holder-side lease arithmetic
//! (`client::lease_deadline`) and the real cluster view (`ClusterView::from_kvs`
//! over the store's keys). Around them: a model of the supervisor's executor
//! (`node.rs`, mirroring `supervisor/execute.rs` action by action), of the two
//! fencers, and of PostgreSQL (`pg.rs`).
//!
//! What is modelled, not run: Raft itself is a linearizable log that commits while
//! its leader and a majority are up, unpaused and connected (elections after a
//! timeout; followers apply, and feed their lessors, when they can hear the leader).
//! Messages between a member and the store are delayed, lost, duplicated and
//! reordered; partitions cut members (and their replication) apart; pgquorum's
//! process group pauses (and with it the fencer thread), the guard pauses alone;
//! hosts crash and restart; clocks run at a per-member rate within the drift bound;
//! the store's disk stalls. Never both fencers of one member at once: either alone
//! must suffice, both frozen is outside what pgquorum claims.
//!
//! Checked after every step: at most one PostgreSQL accepts writes; in synchronous
//! mode every acknowledged commit is on each new primary; in asynchronous mode a new
//! primary is within `maximum_lag_on_failover` of `/pg/optime`. After the faults
//! stop: one primary, every other member streaming from it, within a bound.

mod cycle;
mod execute;
mod host;
mod node;
mod observe;
mod pg;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use crate::ha::model::LEADER_KEY;
use crate::store::{Command, LeaseUpdate, Response, State};

use self::node::Node;

/// xorshift64*: small, fast, and the same sequence on every platform.
pub(crate) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// What a run varies.
#[derive(Clone, Debug)]
pub(crate) struct Setup {
    pub nodes: usize,
    pub synchronous_mode: bool,
    /// `synchronous_node_count`.
    pub sync_node_count: usize,
    /// Virtual µs with faults, then without.
    pub fault_us: u64,
    pub quiet_us: u64,
}

pub(crate) const MS: u64 = 1_000;
pub(crate) const TTL_MS: u64 = 2_500;
pub(crate) const LOOP_WAIT_MS: u64 = 500;
/// Client connections writing; in synchronous mode each has at most one commit
/// waiting for the standby.
const CLIENTS: usize = 4;
/// In commits (one WAL position per commit here).
pub(crate) const MAX_LAG: u64 = 300;
/// Each member's clock rate is within this of real time (the holder side assumes
/// up to `client::DEFAULT_DRIFT` between any two).
const CLOCK_RATE_BOUND: f64 = 0.02;

#[derive(Clone, Debug)]
pub(crate) enum Ev {
    /// An HA cycle of member `n`'s process `inc` begins.
    Cycle {
        n: usize,
        inc: u64,
        tick: u64,
    },
    /// The next action of the cycle in progress.
    Step {
        n: usize,
        inc: u64,
    },
    /// A store request arrives at the Raft leader.
    Apply {
        req: u64,
    },
    /// Its answer reaches the member (or the client gives up: `resp: None`).
    Reply {
        req: u64,
        resp: Option<Reply>,
    },
    /// A lease renewal task wakes.
    Renew {
        n: usize,
        inc: u64,
        status: bool,
        id: u64,
    },
    /// A fencer looks at its deadline.
    Fence {
        n: usize,
    },
    /// Raft: elections, followers catching up, lease expiry on the leader.
    RaftTick,
    /// Standby `n` asks its upstream for WAL.
    Stream {
        n: usize,
    },
    /// Clients write to whoever accepts writes.
    Commit,
    Fault,
    Restart {
        n: usize,
    },
    Resume {
        n: usize,
    },
    Heal {
        what: Heal,
    },
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Heal {
    Partition,
    Loss,
    Disk,
    SlowLink(usize),
    /// A hung PostgreSQL resumes.
    Thaw(usize),
}

/// A store answer as the client library returns it.
#[derive(Clone, Debug)]
pub(crate) enum Reply {
    Resp(Response),
    /// A read: the `/pg/` keys (key, value, lease).
    Read(Vec<(String, Vec<u8>, u64)>),
}

/// A request in flight: who sent it (process incarnation), what, and when.
#[derive(Clone, Debug)]
pub(crate) struct Req {
    pub n: usize,
    pub inc: u64,
    pub cmd: Option<Command>,
    /// The sender's local clock when sent (lease deadlines count from it).
    pub sent_local: u64,
    pub done: bool,
}

struct Sched {
    t: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Sched {
    fn eq(&self, o: &Self) -> bool {
        (self.t, self.seq) == (o.t, o.seq)
    }
}
impl Eq for Sched {}
impl PartialOrd for Sched {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Sched {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.t, self.seq).cmp(&(o.t, o.seq))
    }
}

/// A violated property, with what led to it.
#[derive(Debug)]
pub(crate) struct Failure {
    pub seed: u64,
    pub step: u64,
    pub at_us: u64,
    pub what: String,
    pub trace: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "simulation seed {} failed at step {} (t={:.3} s): {}\nreplay: PGQ_SIM_SEED={} \
             cargo nextest run --lib sim::tests::replay\nlast events:",
            self.seed,
            self.step,
            self.at_us as f64 / 1e6,
            self.what,
            self.seed
        )?;
        for l in &self.trace {
            writeln!(f, "  {l}")?;
        }
        Ok(())
    }
}

pub(crate) struct World {
    pub setup: Setup,
    pub seed: u64,
    pub rng: Rng,
    pub now: u64,
    queue: BinaryHeap<Reverse<Sched>>,
    seq: u64,
    pub steps: u64,
    pub nodes: Vec<Node>,
    /// The replicated state machine (one copy: every member applies the same log).
    pub state: State,
    /// Lease updates of each log entry, for members that apply it later.
    log: Vec<Vec<LeaseUpdate>>,
    pub raft_leader: Option<usize>,
    leaderless_since: Option<u64>,
    /// Partition: members reach each other only within the same side.
    pub side: Vec<u8>,
    pub loss: f64,
    disk_stall_us: u64,
    pub slow_link: Vec<bool>,
    pub reqs: std::collections::HashMap<u64, Req>,
    next_req: u64,
    next_commit: u64,
    /// Commits acknowledged to clients (ids).
    pub acked: Vec<u64>,
    pub commits_acked: u64,
    pub promotions: u64,
    /// Hung primaries killed (`Stop(Kill)`).
    pub hang_kills: u64,
    pub base: tokio::time::Instant,
    trace: VecDeque<String>,
    pub verbose: bool,
    failure: Option<String>,
}

impl World {
    pub fn new(seed: u64, setup: Setup) -> Self {
        let mut rng = Rng::new(seed);
        let nodes = (0..setup.nodes)
            .map(|i| {
                let rate = 1.0 + (rng.range(0, 2000) as f64 / 1000.0 - 1.0) * CLOCK_RATE_BOUND;
                Node::new(i, rate, rng.range(0, 10_000_000))
            })
            .collect();
        let n = setup.nodes;
        let mut w = World {
            setup,
            seed,
            rng,
            now: 0,
            queue: BinaryHeap::new(),
            seq: 0,
            steps: 0,
            nodes,
            state: State::default(),
            log: vec![Vec::new()],
            raft_leader: None,
            leaderless_since: Some(0),
            side: vec![0; n],
            loss: 0.0,
            disk_stall_us: 0,
            slow_link: vec![false; n],
            reqs: Default::default(),
            next_req: 1,
            next_commit: 1,
            acked: Vec::new(),
            commits_acked: 0,
            promotions: 0,
            hang_kills: 0,
            base: tokio::time::Instant::now(),
            trace: VecDeque::new(),
            verbose: false,
            failure: None,
        };
        for i in 0..n {
            let d = w.rng.range(0, LOOP_WAIT_MS * MS);
            let inc = w.nodes[i].inc;
            w.at(d, Ev::Cycle { n: i, inc, tick: 0 });
            let d = w.rng.range(0, 20 * MS);
            w.at(d, Ev::Stream { n: i });
        }
        w.at(100 * MS, Ev::RaftTick);
        w.at(10 * MS, Ev::Commit);
        w.at(2_000 * MS, Ev::Fault);
        w
    }

    /// Schedules `ev` `after` µs from now.
    pub fn at(&mut self, after: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Sched {
            t: self.now + after,
            seq: self.seq,
            ev,
        }));
    }

    pub fn note(&mut self, line: String) {
        let l = format!("{:>9.3}s {line}", self.now as f64 / 1e6);
        if self.verbose {
            eprintln!("{l}");
        }
        if self.trace.len() == 400 {
            self.trace.pop_front();
        }
        self.trace.push_back(l);
    }

    pub fn fail(&mut self, what: String) {
        if self.failure.is_none() {
            self.note(format!("VIOLATION: {what}"));
            self.failure = Some(what);
        }
    }

    /// A member's local clock (µs) now.
    pub fn local(&self, n: usize) -> u64 {
        self.nodes[n].clock.local(self.now)
    }

    /// A member's local clock as the `Instant` the production code takes.
    pub fn instant(&self, local_us: u64) -> tokio::time::Instant {
        self.base + Duration::from_micros(local_us)
    }

    /// Runs to the end; `Err` on the first violated property.
    pub fn run(mut self) -> Result<Stats, Failure> {
        let end = self.setup.fault_us + self.setup.quiet_us;
        while let Some(Reverse(s)) = self.queue.pop() {
            if s.t > end {
                break;
            }
            self.now = s.t;
            self.steps += 1;
            self.handle(s.ev);
            self.check();
            if let Some(what) = self.failure.take() {
                return Err(self.failure(what));
            }
        }
        self.check_healed();
        if let Some(what) = self.failure.take() {
            return Err(self.failure(what));
        }
        Ok(Stats {
            steps: self.steps,
            promotions: self.promotions,
            hang_kills: self.hang_kills,
            commits_acked: self.commits_acked,
        })
    }

    fn failure(&mut self, what: String) -> Failure {
        Failure {
            seed: self.seed,
            step: self.steps,
            at_us: self.now,
            what,
            trace: self.trace.drain(..).collect(),
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Cycle { n, inc, .. } => self.on_node(n, inc, ev),
            Ev::Step { n, inc } => self.on_node(n, inc, ev),
            Ev::Renew { n, inc, .. } => self.on_node(n, inc, ev),
            Ev::Apply { req } => self.apply(req),
            Ev::Reply { req, resp } => {
                let Some(r) = self.reqs.get_mut(&req) else {
                    return;
                };
                if r.done {
                    return;
                }
                let (n, inc) = (r.n, r.inc);
                if !self.nodes[n].up || self.nodes[n].inc != inc {
                    self.reqs.remove(&req);
                    return;
                }
                if self.nodes[n].pq_paused() {
                    // Delivered when the process runs again.
                    let ev = Ev::Reply { req, resp };
                    self.nodes[n].deferred.push(ev);
                    return;
                }
                if let Some(r) = self.reqs.get_mut(&req) {
                    r.done = true;
                }
                cycle::on_reply(self, n, req, resp);
            }
            Ev::Fence { n } => host::fence_check(self, n),
            Ev::RaftTick => self.raft_tick(),
            Ev::Stream { n } => {
                host::stream(self, n);
                let d = self.rng.range(10 * MS, 30 * MS);
                self.at(d, Ev::Stream { n });
            }
            Ev::Commit => {
                self.commit();
                let d = self.rng.range(5 * MS, 15 * MS);
                self.at(d, Ev::Commit);
            }
            Ev::Fault => {
                if self.now < self.setup.fault_us {
                    self.fault();
                    let d = self.rng.range(500 * MS, 4_000 * MS);
                    self.at(d, Ev::Fault);
                }
            }
            Ev::Restart { n } => host::restart(self, n),
            Ev::Resume { n } => host::resume(self, n),
            Ev::Heal { what } => match what {
                Heal::Partition => {
                    self.side.iter_mut().for_each(|s| *s = 0);
                    self.note("partition healed".into());
                }
                Heal::Loss => self.loss = 0.0,
                Heal::Disk => self.disk_stall_us = 0,
                Heal::SlowLink(i) => self.slow_link[i] = false,
                Heal::Thaw(i) => {
                    if self.nodes[i].pg.frozen_since.take().is_some() {
                        self.note(format!("n{}'s PostgreSQL resumes", i + 1));
                    }
                }
            },
        }
    }

    /// Events of a member's pgquorum process: dropped if that process is gone,
    /// held while it is paused.
    fn on_node(&mut self, n: usize, inc: u64, ev: Ev) {
        let node = &mut self.nodes[n];
        if !node.up || node.inc != inc {
            return;
        }
        if node.pq_paused() {
            node.deferred.push(ev);
            return;
        }
        match ev {
            Ev::Cycle { tick, .. } => cycle::cycle(self, n, tick),
            Ev::Step { .. } => cycle::step(self, n),
            Ev::Renew { status, id, .. } => cycle::renew(self, n, status, id),
            _ => unreachable!(),
        }
    }

    /// Raft's availability for `n`: its leader is up, unpaused and with a majority
    /// on its side of any partition, and `n` is on that side.
    pub fn reaches_quorum(&self, n: usize) -> bool {
        let Some(l) = self.raft_leader else {
            return false;
        };
        self.raft_alive(l) && self.side[n] == self.side[l] && self.quorum_with(l)
    }

    fn raft_alive(&self, n: usize) -> bool {
        self.nodes[n].up && !self.nodes[n].pq_paused()
    }

    fn quorum_with(&self, l: usize) -> bool {
        let with = (0..self.nodes.len())
            .filter(|&i| self.side[i] == self.side[l] && self.raft_alive(i))
            .count();
        with * 2 > self.nodes.len()
    }

    /// Sends a store request from `n`: it reaches the leader after a delay (or is
    /// lost), and the client gives up after its timeout.
    pub fn send(&mut self, n: usize, cmd: Option<Command>) -> u64 {
        let req = self.next_req;
        self.next_req += 1;
        let sent_local = self.local(n);
        self.reqs.insert(
            req,
            Req {
                n,
                inc: self.nodes[n].inc,
                cmd,
                sent_local,
                done: false,
            },
        );
        if !self.rng.chance(self.loss) {
            let d = self.rng.range(MS / 2, 15 * MS) + self.disk_stall_us;
            self.at(d, Ev::Apply { req });
            if self.rng.chance(0.01) {
                let d2 = d + self.rng.range(MS, 50 * MS);
                self.at(d2, Ev::Apply { req });
            }
        }
        self.at(2 * LOOP_WAIT_MS * MS, Ev::Reply { req, resp: None });
        req
    }

    fn apply(&mut self, req: u64) {
        let Some(r) = self.reqs.get(&req) else {
            return;
        };
        if !self.reaches_quorum(r.n) || !self.nodes[r.n].up || self.nodes[r.n].inc != r.inc {
            return;
        }
        let reply = match r.cmd.clone() {
            None => Reply::Read(
                self.state
                    .range_prefix(crate::ha::model::PREFIX)
                    .map(|kv| (kv.key.clone(), kv.value.clone(), kv.lease))
                    .collect(),
            ),
            Some(cmd) => Reply::Resp(self.commit_entry(&cmd)),
        };
        if !self.rng.chance(self.loss) {
            let d = self.rng.range(MS / 2, 15 * MS);
            self.at(
                d,
                Ev::Reply {
                    req,
                    resp: Some(reply),
                },
            );
        }
    }

    /// Appends `cmd` to the log and applies it; members that hear the leader feed
    /// their lessors now, the others when they catch up.
    pub fn commit_entry(&mut self, cmd: &Command) -> Response {
        let index = self.log.len() as u64;
        let leader_before = self.state.get(LEADER_KEY).map(|kv| kv.mod_revision);
        let (resp, effects) = self.state.apply(index, cmd);
        self.log.push(effects.lease_updates);
        self.catch_up();
        if self.state.get(LEADER_KEY).map(|kv| kv.mod_revision) != leader_before {
            node::wake_all(self);
        }
        resp
    }

    pub fn log_len(&self) -> usize {
        self.log.len()
    }

    fn catch_up(&mut self) {
        let Some(l) = self.raft_leader else {
            return;
        };
        for i in 0..self.nodes.len() {
            if !self.raft_alive(i) || self.side[i] != self.side[l] {
                continue;
            }
            let now = self.instant(self.local(i));
            let node = &mut self.nodes[i];
            while node.applied + 1 < self.log.len() {
                node.applied += 1;
                for u in &self.log[node.applied] {
                    node.lessor.observe(u, now);
                }
            }
        }
    }

    fn raft_tick(&mut self) {
        self.at(100 * MS, Ev::RaftTick);
        let ok = self
            .raft_leader
            .is_some_and(|l| self.raft_alive(l) && self.quorum_with(l));
        if !ok {
            let since = *self.leaderless_since.get_or_insert(self.now);
            let timeout = 1_000 * MS + (self.seed % 7) * 100 * MS;
            if self.now - since < timeout {
                return;
            }
            let eligible: Vec<usize> = (0..self.nodes.len())
                .filter(|&i| self.raft_alive(i) && self.quorum_with(i))
                .collect();
            if eligible.is_empty() {
                self.raft_leader = None;
                return;
            }
            let l = eligible[self.rng.range(0, eligible.len() as u64 - 1) as usize];
            self.raft_leader = Some(l);
            self.leaderless_since = None;
            self.note(format!("raft: n{} leads", l + 1));
            self.catch_up();
            return;
        }
        self.leaderless_since = None;
        self.catch_up();
        // Expiry, on the leader only, by its own clock, compare-and-delete.
        let l = self.raft_leader.expect("checked");
        let now = self.instant(self.local(l));
        for (id, renewed_at) in self.nodes[l].lessor.expired(now) {
            let r = self.commit_entry(&Command::LeaseExpire { id, renewed_at });
            if matches!(r, Response::Deleted { .. }) {
                let holder = self.lease_holder_note(id);
                self.note(format!("raft: lease {id} expired{holder}"));
            }
        }
    }

    fn lease_holder_note(&self, id: u64) -> String {
        for n in &self.nodes {
            if n.proc.leader_lease.as_ref().is_some_and(|l| l.id == id) {
                return format!(" (n{}'s leader lease)", n.idx + 1);
            }
        }
        String::new()
    }

    /// Clients write to every instance that accepts writes, once the cluster exists
    /// (its system identifier recorded): a bootstrap that is not recorded yet may
    /// still lose to another member's and be set aside, which pgquorum allows.
    fn commit(&mut self) {
        let cluster = self
            .state
            .get(crate::ha::model::INITIALIZE_KEY)
            .and_then(|kv| String::from_utf8_lossy(&kv.value).parse::<u64>().ok());
        for i in 0..self.nodes.len() {
            let pg = &self.nodes[i].pg;
            // Each client waits for its commit to be acknowledged before the next.
            if !pg.writable(self.now)
                || cluster.is_none()
                || pg.system_id != cluster
                || pg.waiting.len() >= CLIENTS
            {
                continue;
            }
            let id = self.next_commit;
            self.next_commit += 1;
            let pg = &mut self.nodes[i].pg;
            pg.wal.push(id);
            let pos = pg.wal.len();
            if !pg.sync_names.is_empty() {
                pg.waiting.push(pos);
            } else {
                self.acked.push(id);
                self.commits_acked += 1;
            }
        }
    }

    fn fault(&mut self) {
        let n = self.rng.range(0, self.nodes.len() as u64 - 1) as usize;
        // The primary is where most faults matter.
        let n = match self.primary_now() {
            Some(p) if self.rng.chance(0.5) => p,
            _ => n,
        };
        let ttl = TTL_MS * MS;
        match self.rng.range(0, 10) {
            0 | 1 if self.nodes[n].up => {
                self.note(format!("FAULT crash n{}", n + 1));
                host::crash(self, n);
                let d = self.rng.range(500 * MS, 8_000 * MS);
                self.at(d, Ev::Restart { n });
            }
            2 | 3 => {
                let d = self.rng.range(500 * MS, 3 * ttl);
                host::pause(self, n, d, false);
            }
            4 => {
                let d = self.rng.range(500 * MS, 3 * ttl);
                host::pause(self, n, d, true);
            }
            5 => {
                self.side = vec![0; self.nodes.len()];
                self.side[n] = 1;
                self.note(format!("FAULT partition: n{} cut off", n + 1));
                let d = self.rng.range(1_000 * MS, 10_000 * MS);
                self.at(
                    d,
                    Ev::Heal {
                        what: Heal::Partition,
                    },
                );
            }
            6 => {
                self.loss = self.rng.range(5, 40) as f64 / 100.0;
                self.note(format!("FAULT message loss {:.0}%", self.loss * 100.0));
                let d = self.rng.range(1_000 * MS, 6_000 * MS);
                self.at(d, Ev::Heal { what: Heal::Loss });
            }
            7 => {
                self.disk_stall_us = self.rng.range(100 * MS, 1_500 * MS);
                self.note(format!(
                    "FAULT store fsync stalls {} ms",
                    self.disk_stall_us / MS
                ));
                let d = self.rng.range(1_000 * MS, 5_000 * MS);
                self.at(d, Ev::Heal { what: Heal::Disk });
            }
            8 => {
                self.slow_link[n] = true;
                self.note(format!("FAULT slow WAL link to n{}", n + 1));
                let d = self.rng.range(1_000 * MS, 8_000 * MS);
                self.at(
                    d,
                    Ev::Heal {
                        what: Heal::SlowLink(n),
                    },
                );
            }
            9 if self.nodes[n].pg.running && self.nodes[n].pg.frozen_since.is_none() => {
                self.nodes[n].pg.frozen_since = Some(self.now);
                let d = self.rng.range(2_000 * MS, 20_000 * MS);
                self.note(format!(
                    "FAULT n{}'s PostgreSQL hangs (every process stopped) for {} ms",
                    n + 1,
                    d / MS
                ));
                self.at(
                    d,
                    Ev::Heal {
                        what: Heal::Thaw(n),
                    },
                );
            }
            _ => host::request_switchover(self),
        }
    }

    pub fn primary_now(&self) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| self.nodes[i].pg.writable(self.now))
    }

    fn check(&mut self) {
        let writable: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].pg.writable(self.now))
            .collect();
        if writable.len() > 1 {
            let names: Vec<String> = writable.iter().map(|i| format!("n{}", i + 1)).collect();
            self.fail(format!(
                "{} PostgreSQL instances accept writes at once: {}",
                writable.len(),
                names.join(", ")
            ));
        }
    }

    /// After the quiet period: one primary holding the leader key, every other
    /// member a replica streaming from it.
    fn check_healed(&mut self) {
        let Some(p) = self.primary_now() else {
            self.fail(format!(
                "no primary {} s after the last fault",
                self.setup.quiet_us / 1_000_000
            ));
            return;
        };
        let leader = self
            .state
            .get(crate::ha::model::LEADER_KEY)
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
        if leader.as_deref() != Some(self.nodes[p].name.as_str()) {
            self.fail(format!(
                "n{} is primary but the leader key says {leader:?}",
                p + 1
            ));
            return;
        }
        for i in 0..self.nodes.len() {
            let pg = &self.nodes[i].pg;
            let streaming = pg.upstream == Some(p)
                && pg
                    .streamed_at
                    .is_some_and(|t| self.now - t <= pg::STREAM_TIMEOUT_US);
            if i != p && !streaming {
                self.fail(format!(
                    "n{} is not streaming from the primary n{} {} s after the last fault",
                    i + 1,
                    p + 1,
                    self.setup.quiet_us / 1_000_000
                ));
                return;
            }
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Stats {
    pub steps: u64,
    pub promotions: u64,
    pub hang_kills: u64,
    pub commits_acked: u64,
}
