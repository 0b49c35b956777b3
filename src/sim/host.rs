//! What happens outside the supervisor: the two fencers, WAL streaming, host
//! crashes and restarts, process pauses, and an operator's switchover request.

use super::execute::upstream_answers;
use super::node::*;
use super::{Ev, MS, World};

/// Both fencers look at the deadline: the guard unless it is paused, pgquorum's
/// fencer thread unless pgquorum is. Either kills every PostgreSQL process.
pub(super) fn fence_check(w: &mut World, n: usize) {
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
    if !pg.running || now < pg.ready_at || pg.primary {
        return;
    }
    let Some(u) = pg.upstream else {
        return;
    };
    if !upstream_answers(w, n, u) || !w.nodes[n].up {
        return;
    }
    if w.nodes[n].pg.frozen_since.is_some() {
        // A hung standby's connection stays open; its flush position stands still.
        let name = w.nodes[n].name.clone();
        if let Some(s) = w.nodes[u].pg.seen.get_mut(&name) {
            s.0 = now;
        }
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
    let moved = match up.seen.get(&name) {
        Some((_, f, m)) if *f == flushed => *m,
        _ => now,
    };
    up.seen.insert(name.clone(), (now, flushed, moved));
    if up.sync_names.contains(&name) {
        // A commit is acknowledged once every synchronous standby has flushed it.
        let flushed = up
            .sync_names
            .iter()
            .map(|s| up.seen.get(s).map_or(0, |(_, f, _)| *f))
            .min()
            .unwrap_or(0);
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
    fence_check(w, n);
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
    // The operator's ctl reaches some member that reaches the quorum.
    if !(0..w.nodes.len()).any(|i| w.nodes[i].up && w.reaches_quorum(i)) {
        return;
    }
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
        scheduled_at: None,
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
