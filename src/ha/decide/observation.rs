//! What `decide` reads (`Observation`: this member's PostgreSQL, the store, the
//! lease, the policy) and what it returns (`Decision`: actions and a reason).

use super::Reason;
use crate::ha::model::{
    ClusterView, FailoverRequest, MemberStatus, Promotion, ReinitRequest, Role, Switchover,
    SyncState, Tags,
};
pub use crate::stop::StopKind;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataState {
    Missing,
    Initialized { system_id: u64 },
    Invalid(String),
}

/// This member's PostgreSQL, as probed this cycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgView {
    pub data: DataState,
    pub running: bool,
    /// Answers SQL; `role` is only known when it does.
    pub accepting: bool,
    pub role: Option<Role>,
    pub timeline: u64,
    /// Primary: write position; replica: received position.
    pub lsn: u64,
    /// The member this replica was last started to follow (the supervisor knows: it
    /// configured it); `None` for a standby started without an upstream.
    pub following: Option<String>,
    /// The data dir was last run as a primary (no standby.signal): it may have
    /// diverged from the new primary and must be rewound before following it.
    pub was_primary: bool,
    /// The data dir comes from this member's own bootstrap that was never recorded
    /// in the store (cut short); it may be set aside if another bootstrap won.
    pub unrecorded_bootstrap: bool,
    /// Milliseconds PostgreSQL has been down while it should run (for restart give-up).
    pub down_for_ms: Option<u64>,
    /// The standbys `synchronous_standby_names` currently names (primary); commits
    /// wait for every one of them.
    pub sync_standby_names: Vec<String>,
    /// Standbys streaming from this primary: (application_name = member name, is sync).
    pub streaming_replicas: Vec<(String, bool)>,
    /// Replica: for how long (ms) it has not been streaming although its leader
    /// serves as primary; `None` while streaming.
    pub not_streaming_ms: Option<u64>,
    /// The running postmaster was started as a primary or promoted (or answered as
    /// one): until it stops it may accept writes, whatever the last probe said.
    pub may_be_primary: bool,
    /// A postmaster pgquorum did not start runs on this data dir (its pid). It is
    /// outside the fence and may be a primary.
    pub foreign_postmaster: Option<i32>,
    /// Primary: each standby's flush position (`pg_stat_replication.flush_lsn`).
    pub replica_flush: Vec<(String, u64)>,
    /// Primary: for each standby PostgreSQL treats as synchronous, the WAL position
    /// sampled right after it was first seen doing so. Commits acknowledged before that need
    /// not be on it; once its flush position reaches this, it holds them all.
    pub sync_catchup: Vec<(String, u64)>,
    /// Signs that the running PostgreSQL hangs.
    pub stall: Stall,
    /// Primary: commits have waited on this synchronous standby while its flush
    /// position stood still, for this many ms.
    pub sync_stalled: Option<(String, u64)>,
    /// pg_rewind (or the crash recovery before it) ran on this data dir and failed:
    /// it cannot be rewound, only re-cloned.
    pub rewind_failed: bool,
    /// This member's `pre_promote` vetoed a promotion within the last ttl.
    pub pre_promote_vetoed: bool,
}

/// Signs that a running PostgreSQL hangs, from the health monitor: how long each
/// has lasted (ms), and what `/proc` shows of its processes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stall {
    /// No answer to the health probe (bounded; over a reserved superuser slot).
    pub unanswered_ms: Option<u64>,
    /// Backends wait on WAL write/flush and the flush position does not move.
    pub wal_flush_stuck_ms: Option<u64>,
    /// The postmaster is stopped (`T`).
    pub postmaster_stopped_ms: Option<u64>,
    /// Processes of the instance: total, stopped, in uninterruptible sleep.
    pub processes: u32,
    pub stopped: u32,
    pub disk_sleep: u32,
}

impl Stall {
    /// The longest-lasting sign, if any.
    pub fn longest_ms(&self) -> Option<u64> {
        [
            self.unanswered_ms,
            self.wal_flush_stuck_ms,
            self.postmaster_stopped_ms,
        ]
        .into_iter()
        .flatten()
        .max()
    }

    /// Some sign has lasted at least `ms` (0: never, as a timeout of 0 turns a
    /// check off).
    pub fn lasted(&self, ms: u64) -> bool {
        ms > 0 && self.longest_ms().is_some_and(|l| l >= ms)
    }

    /// The signs that have lasted at least `ms`, and the process states, for the
    /// reason of a decision (no durations: the reason stays the same while it lasts).
    pub(super) fn describe(&self, ms: u64) -> String {
        let mut signs = Vec::new();
        let past = |v: Option<u64>| v.is_some_and(|v| v >= ms);
        if past(self.unanswered_ms) {
            signs.push("no answer to the health probe");
        }
        if past(self.wal_flush_stuck_ms) {
            signs.push("WAL flush not moving while backends wait for it");
        }
        if past(self.postmaster_stopped_ms) {
            signs.push("postmaster stopped");
        }
        format!(
            "{} for {ms} ms or more; {} of {} processes stopped, {} in uninterruptible sleep",
            signs.join(", "),
            self.stopped,
            self.processes,
            self.disk_sleep
        )
    }
}

/// The cluster as read from the Raft store this cycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreView {
    pub leader: Option<String>,
    pub system_id: Option<u64>,
    /// Other members' published statuses (this member excluded).
    pub members: Vec<MemberStatus>,
    pub optime: Option<u64>,
    /// Timeline of the primary that published `optime`.
    pub timeline: Option<u64>,
    pub sync: Option<SyncState>,
    pub switchover: Option<Switchover>,
    pub failover: Option<FailoverRequest>,
    /// A pending re-clone request for this member (`ctl reinit`).
    pub reinit: Option<ReinitRequest>,
    /// An operator asked this member to restart its PostgreSQL (`ctl restart`).
    pub restart: bool,
    /// ... not before this time (Unix seconds; `restart --scheduled`).
    pub restart_at: Option<u64>,
    /// ... or to reload its configuration (`ctl reload`).
    pub reload: bool,
    /// Members that publish nothing now but did within `member_slots_ttl_ms` (known
    /// only while this member leads): each keeps its replication slot.
    pub slot_members: Vec<String>,
    /// Members whose slot is kept if it exists but not created: Raft members this
    /// process has not seen publishing since it started, within `member_slots_ttl_ms`
    /// of that (it cannot tell when they were last seen).
    pub retain_slots: Vec<String>,
}

impl StoreView {
    /// The store's keys as member `me` reads them (its own status left out).
    pub fn of(view: &ClusterView, system_id: Option<u64>, me: &str) -> Self {
        StoreView {
            slot_members: Vec::new(),
            retain_slots: Vec::new(),
            leader: view.leader.clone(),
            system_id,
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
            failover: view.failover.clone(),
            reinit: view.reinit.get(me).filter(|r| r.pending()).cloned(),
            restart: view.restart.get(me).is_some_and(|r| !r.done),
            restart_at: view.restart.get(me).and_then(|r| r.scheduled_at),
            reload: view.reload.get(me).is_some_and(|r| !r.done),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub maximum_lag_on_failover: u64,
    pub synchronous_mode: bool,
    pub primary_start_timeout_ms: u64,
    /// With no leader, a candidate behind the last known primary position waits this
    /// long for a member at that position (one that has every acknowledged commit,
    /// e.g. the old primary restarting) before it takes over within the lag limit.
    pub candidate_grace_ms: u64,
    /// A primary hung this long is killed and gives up the lease (0: never).
    pub primary_hang_timeout_ms: u64,
    /// A synchronous standby that holds commits up this long is replaced (0: never).
    pub sync_standby_hang_timeout_ms: u64,
    /// Synchronous mode never falls back to asynchronous commits: a recorded standby
    /// that left or hangs is replaced only by another, never dropped for none.
    pub synchronous_mode_strict: bool,
    /// How many synchronous standbys commits wait for (at most; fewer while fewer
    /// stream). At least 1.
    pub synchronous_node_count: usize,
    /// Permanent physical slots (slot names) from `/pg/config`.
    pub permanent_slots: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub me: String,
    pub tags: Tags,
    pub policy: Policy,
    pub paused: bool,
    /// `None`: the store could not be read (no quorum reachable).
    pub store: Option<StoreView>,
    /// This member holds the leader lease and its holder-side deadline has not passed.
    pub lease_held: bool,
    /// This process still renews a leader lease whose holder-side deadline has passed.
    pub lease_lapsed: bool,
    /// The leader key names this member under a lease this process does not hold:
    /// its own lease from before a restart (its id).
    pub own_old_lease: Option<u64>,
    /// For how long (ms) this member has seen no leader (0 while there is one).
    pub no_leader_for_ms: u64,
    /// This member has not seen any leader since it started (e.g. the whole cluster
    /// is coming back): the old primary, with the most data, may still be starting.
    pub cold_start: bool,
    /// Unix seconds by this member's wall clock: only for requests an operator
    /// scheduled (a switchover at a set time); nothing safety-related reads it.
    pub wall_clock_s: u64,
    pub pg: PgView,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    AcquireLease,
    RenewLease,
    ReleaseLease,
    /// Stop renewing the lease this process holds: it no longer guards the leader
    /// key. `revoke`: it is still valid, so hand it back too (harmless: the key
    /// is another member's already). The fence deadline stays as it is.
    DropLease {
        revoke: bool,
    },
    /// Renew (and so keep) this member's own lease from before a restart.
    TakeBackLease {
        lease: u64,
    },
    /// initdb (start and roles follow in later cycles).
    Bootstrap,
    /// Stop PostgreSQL and move the data dir of a lost bootstrap aside (never deleted).
    SetAsideFailedBootstrap,
    RecordSystemId,
    StartPrimary,
    /// Start as a standby of `leader`; `None`: no upstream (recover local WAL only).
    StartReplica {
        leader: Option<String>,
    },
    Stop(StopKind),
    Promote,
    /// Append this promotion to `/pg/history` (the executor stamps the time).
    RecordPromotion {
        timeline: u64,
        lsn: u64,
        reason: Promotion,
    },
    /// Restart the replica with `leader` as its upstream.
    Follow {
        leader: String,
    },
    Rewind {
        leader: String,
    },
    /// Move the data dir aside (never deleted) and clone it anew from `source` (the
    /// leader, or a replica tagged `clonefrom`).
    Reclone {
        source: String,
    },
    /// pg_basebackup into the missing data dir from `source`: the leader, or a
    /// replica tagged `clonefrom` that streams from it.
    Clone {
        source: String,
    },
    PublishOptime,
    /// Physical slots on the primary, one per other member.
    /// `members`' slots are created if missing; `retain`'s kept if they exist;
    /// `permanent` are the cluster's permanent slots (by slot name).
    EnsureSlots {
        members: Vec<String>,
        retain: Vec<String>,
        permanent: Vec<String>,
    },
    /// Replica: the permanent slots exist here too, moved along with replay, so they
    /// survive this replica's promotion.
    KeepStandbySlots {
        slots: Vec<String>,
    },
    /// Configure PostgreSQL's synchronous_standby_names: commits wait for all of
    /// these standbys (none: asynchronous).
    SetSyncStandby(Vec<String>),
    /// Record the synchronous standbys (in `/pg/sync`, with this member as leader):
    /// each holds every commit acknowledged so far.
    RecordSync(Vec<String>),
    /// Delete the switchover request (done by the new primary).
    ClearSwitchover,
    /// Delete the manual failover request (done by the new primary).
    ClearFailover,
    /// Re-clone the (stopped) data dir from `source` (the leader, or a replica tagged
    /// `clonefrom`), moving the old one aside (or removing it after the clone when
    /// `discard_old`), and record the outcome in this member's reinit request.
    Reinit {
        source: String,
        discard_old: bool,
    },
    /// Delete this member's reinit request (refused: it is the primary).
    ClearReinit,
    /// `pg_reload_conf()`.
    Reload,
    /// Mark this member's restart or reload request done.
    FinishRequest(crate::ha::model::RequestKind),
    /// Stop (immediate shutdown) a postmaster pgquorum did not start on our data dir.
    StopForeign {
        pid: i32,
    },
}

impl Action {
    /// The variant's name, e.g. `StartReplica` (what the cycle is busy with).
    pub fn kind(&self) -> String {
        super::reason::variant_name(self)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub actions: Vec<Action>,
    pub reason: Reason,
}
