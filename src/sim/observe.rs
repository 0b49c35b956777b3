//! Observing, as `supervisor/observe.rs` does: the store's keys and the simulated
//! PostgreSQL turned into the `Observation` the real `decide` reads; the member
//! status it publishes.

use super::node::*;
use super::{MAX_LAG, MS, TTL_MS, World};

pub(super) fn observe(w: &mut World, n: usize, kvs: Option<Vec<(String, Vec<u8>, u64)>>) {
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
    let leader_serving = read.as_ref().is_some_and(|(v, _, _)| v.leader_serving());
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
            synchronous_node_count: w.setup.sync_node_count,
            permanent_slots: vec![],
        },
        paused: false,
        store: read.as_ref().map(|(view, sysid, _)| StoreView {
            slot_members: raft_members.clone(),
            ..StoreView::of(view, *sysid, &me)
        }),
        lease_held: lease_valid,
        lease_lapsed: p.leader_lease.is_some() && !lease_valid,
        own_old_lease: read.as_ref().and_then(|(_, _, l)| *l),
        no_leader_for_ms: p.leaderless_since.map_or(0, |t| (now_l - t) / MS),
        cold_start: !p.seen_leader,
        wall_clock_s: w.now / (1_000 * MS),
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
}

pub(super) fn track_sync_catchup(w: &mut World, n: usize) {
    let now = w.now;
    let pg = &w.nodes[n].pg;
    let streaming = pg.streaming(now);
    let sync_now: Vec<String> = pg
        .sync_names
        .iter()
        .filter(|c| streaming.iter().any(|(r, s)| r == *c && *s))
        .cloned()
        .collect();
    let primary = pg.writable(now);
    let len = pg.wal.len() as u64;
    let p = &mut w.nodes[n].proc;
    p.sync_catchup
        .retain(|(c, _)| primary && sync_now.contains(c));
    for s in sync_now {
        if primary && !p.sync_catchup.iter().any(|(c, _)| *c == s) {
            p.sync_catchup.push((s, len));
        }
    }
}

pub(super) fn pg_view(w: &mut World, n: usize, now_l: u64, leader_serving: bool) -> PgView {
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
            pg.sync_names.clone()
        } else {
            Vec::new()
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
                .map(|(k, (_, f, _))| (k.clone(), *f as u64))
                .collect()
        } else {
            Vec::new()
        },
        sync_catchup: p.sync_catchup.clone(),
        // The health monitor's view: no answer and every process stopped.
        stall: match pg.frozen_since {
            Some(t) if pg.running => {
                let ms = Some((now - t) / MS);
                Stall {
                    unanswered_ms: ms,
                    postmaster_stopped_ms: ms,
                    processes: 6,
                    stopped: 6,
                    ..Stall::default()
                }
            }
            _ => Stall::default(),
        },
        // Commits wait on the least advanced synchronous standby while its flush
        // does not move (as the health monitor reports it).
        sync_stalled: pg
            .sync_names
            .iter()
            .filter(|_| is_primary && !pg.waiting.is_empty())
            .filter_map(|s| pg.seen.get(s).map(|(_, f, moved)| (*f, s, *moved)))
            .min()
            .map(|(_, s, moved)| (s.clone(), (now - moved) / MS)),
        rewind_failed: p.rewind_failed,
        pre_promote_vetoed: false,
    }
}

pub(super) fn my_status(w: &World, n: usize) -> MemberStatus {
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
            .is_some_and(|s| s.holds(&node.name)),
        node_id: n as u64 + 1,
        paused: view.is_some_and(|v| v.paused),
        pending_restart: false,
        pre_promote_vetoed: false,
        version: String::new(),
        server_version: None,
    }
}
