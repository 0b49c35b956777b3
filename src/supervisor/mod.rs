//! The HA executor: every `loop_wait` it reads the cluster from the Raft store,
//! probes PostgreSQL, asks `ha::decide` what to do, does it, and publishes this
//! member's status. All IO of the HA layer happens here or in `postgres/`.
//!
//! Fencing does not depend on this loop being scheduled: every lease renewal that
//! commits moves the deadline of the guard process that owns the postmaster
//! (`postgres::guard`), which kills PostgreSQL by itself when the deadline passes.
//! Renewals do not depend on it either: the leader lease (and the member-status
//! lease) are renewed every `loop_wait` on their own tasks (`client::LeaseRenewer`),
//! so a slow cycle cannot fence a healthy primary.

mod execute;
#[cfg(test)]
mod fakes;
mod observe;
mod ports;
mod publish;
#[cfg(test)]
mod tests;

pub use self::ports::{Database, Fence, Store, StoredKey};

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::Notify;

use tokio::sync::watch;

use crate::client::{Client, ClientError, LeaseKeeper, LeaseRenewer};
use crate::config::{HaSettings, NodeConfig};
use crate::ha::callbacks;
use crate::ha::decide::{
    self, Action, DataState, Decision, Observation, PgView, Policy, Reason, Stall, StopKind,
    StoreView,
};
use crate::ha::health::{HangCounters, Health};
use crate::ha::model::{
    self, ClusterView, HISTORY_KEY, HistoryEntry, INITIALIZE_KEY, LEADER_KEY, MemberStatus,
    OPTIME_KEY, PgRunState, Role, SYNC_KEY, SyncState, TIMELINE_KEY, Tags,
};
use crate::postgres::{ConnTarget, DataDirState, PgError, PgProbe, Postgres, StartMode};

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("store: {0}")]
    Store(#[from] ClientError),
    #[error("postgres: {0}")]
    Pg(#[from] PgError),
    #[error(
        "the node config has no [postgresql] section; add one for this node to supervise PostgreSQL"
    )]
    NoPostgresSection,
    #[error("leader {0} has not published its PostgreSQL address yet; retried next cycle")]
    LeaderAddressUnknown(String),
    #[error(
        "leader {leader} published a bad PostgreSQL address {addr:?}; fix postgresql.connect_host \
         (default: postgresql.listen_host) and postgresql.port in {leader}'s config file and \
         restart that node"
    )]
    LeaderAddressInvalid { leader: String, addr: String },
    #[error("no leader lease to renew")]
    NoLeaderLease,
    #[error("the leader lease is gone")]
    LeaseGone,
    #[error(
        "PostgreSQL may still accept writes; keeping the leader lease and the fence until it is stopped"
    )]
    MayBePrimary,
    #[error("no system identifier to record: the data directory is not initialized")]
    NoSystemId,
    #[error("not writing {key}: this member holds no leader lease")]
    NotLeaseHolder { key: String },
    #[error("not writing {key}: this member's lease no longer holds the leader key")]
    Deposed { key: String },
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// Generic over the store and PostgreSQL only so its unit tests can run it against
/// fakes; production runs `Supervisor<Client, Postgres>`.
pub struct Supervisor<S = Client, P = Postgres> {
    me: String,
    node_id: u64,
    scope: String,
    tags: Tags,
    ha: HaSettings,
    client: S,
    pg: P,
    pg_addr: String,
    api_url: String,
    /// Renewed on its own task; see [`Supervisor::keep_leader_lease`].
    leader_lease: Option<LeaseRenewer>,
    status_lease: Option<LeaseRenewer>,
    last_published: Option<MemberStatus>,
    /// This cycle's status, published or not (the REST API answers from it).
    last_status: Option<MemberStatus>,
    /// A hang of this member's PostgreSQL is in progress (logged and counted once).
    hang_seen: bool,
    hangs: HangCounters,
    following: Option<String>,
    down_since: Option<Instant>,
    /// Since when this replica has not streamed while behind its leader's timeline.
    stalled_since: Option<Instant>,
    /// Since when the store has shown no leader.
    leaderless_since: Option<Instant>,
    /// A leader has been seen since this process started.
    seen_leader: bool,
    /// PostgreSQL should be running (we started it and did not stop it).
    should_run: bool,
    last_reason: String,
    /// HA decisions by `Reason::kind`, since start (`/metrics`).
    decisions: std::collections::BTreeMap<String, u64>,
    /// Latencies of committed leader-lease renewals, observed by the renewal task.
    renewals: std::sync::Arc<std::sync::Mutex<crate::ha::health::Histogram>>,
    health: watch::Sender<Health>,
    /// `[tags]` re-read from the config file on SIGHUP.
    tags_reload: watch::Receiver<Tags>,
    /// (standby, primary WAL position sampled after PostgreSQL was first seen
    /// treating it as synchronous); see `PgView::sync_catchup`.
    sync_catchup: Vec<(String, u64)>,
    /// The last pg_rewind of this data dir failed (see `PgView::rewind_failed`).
    rewind_failed: bool,
    /// When `pre_promote` last vetoed a promotion (see `PgView::pre_promote_vetoed`).
    pre_promote_vetoed_at: Option<Instant>,
    /// When each other member was last seen publishing its status (for
    /// `member_slots_ttl_ms`), and when this process started.
    slot_seen: std::collections::BTreeMap<String, Instant>,
    started: Instant,
    /// The role PostgreSQL last ran with, for the callbacks (`ha::callbacks::owed`).
    last_role: Option<Role>,
    /// An action that makes a data dir runs (initdb, a clone, a rewind): the member
    /// shows "creating replica", as Patroni's does, instead of its last state.
    creating: bool,
}

impl Supervisor<Client, Postgres> {
    /// The supervisor of this node's PostgreSQL, talking to the store through this
    /// node and the other members of `initial_cluster`.
    pub fn new(
        cfg: &NodeConfig,
        pg: Postgres,
        health: watch::Sender<Health>,
        tags_reload: watch::Receiver<Tags>,
    ) -> Result<Self, SupervisorError> {
        let endpoints = cfg.store_endpoints();
        // A cycle must not hang on a partitioned store: fencing is the guard's job,
        // but the loop should keep observing.
        let client =
            Client::new(endpoints)?.with_timeout(Duration::from_millis(cfg.ha.loop_wait_ms * 2));
        // The HA loop waits for the clone; progress reaches /patroni on its own task.
        let mut copy = pg.copy_progress();
        let to = health.clone();
        tokio::spawn(async move {
            while copy.changed().await.is_ok() {
                let p = copy
                    .borrow_and_update()
                    .map(|p| crate::ha::health::CopyProgress {
                        copied_bytes: p.copied_bytes,
                        total_bytes: p.total_bytes,
                        seconds: p.seconds,
                    });
                to.send_modify(|h| h.copy = p);
            }
        });
        Supervisor::with_parts(cfg, client, pg, health, tags_reload)
    }
}

impl<S: Store, P: Database> Supervisor<S, P> {
    pub fn with_parts(
        cfg: &NodeConfig,
        client: S,
        pg: P,
        health: watch::Sender<Health>,
        tags_reload: watch::Receiver<Tags>,
    ) -> Result<Self, SupervisorError> {
        let pgc = cfg
            .postgresql
            .as_ref()
            .ok_or_else(|| SupervisorError::NoPostgresSection)?;
        let api_url = cfg
            .rest_listen_addr
            .map(|a| format!("http://{a}"))
            .unwrap_or_default();
        Ok(Self {
            me: cfg.name.clone(),
            node_id: cfg.node_id,
            scope: cfg.cluster_name.clone(),
            tags: cfg.tags.clone(),
            ha: cfg.ha.clone(),
            client,
            pg,
            pg_addr: crate::hostport::join(&pgc.connect_host, pgc.port),
            api_url,
            leader_lease: None,
            status_lease: None,
            last_published: None,
            last_status: None,
            hang_seen: false,
            hangs: HangCounters::default(),
            following: None,
            down_since: None,
            stalled_since: None,
            leaderless_since: None,
            seen_leader: false,
            should_run: false,
            last_reason: String::new(),
            decisions: std::collections::BTreeMap::new(),
            renewals: std::sync::Arc::new(std::sync::Mutex::new(
                crate::ha::health::Histogram::new(crate::ha::health::RENEW_BUCKETS),
            )),
            health,
            tags_reload,
            sync_catchup: Vec::new(),
            slot_seen: std::collections::BTreeMap::new(),
            started: Instant::now(),
            rewind_failed: false,
            pre_promote_vetoed_at: None,
            last_role: None,
            creating: false,
        })
    }

    /// Runs HA cycles until `shutdown` turns true, then stops PostgreSQL and hands
    /// the lease back at once so a planned stop fails over without waiting for expiry.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let wake = Arc::new(Notify::new());
        let watcher = tokio::spawn(self.client.watch_key(LEADER_KEY, wake.clone()));
        loop {
            let wait = Duration::from_millis(self.ha.loop_wait_ms);
            let started = Instant::now();
            let again = self.cycle().await;
            if *shutdown.borrow() {
                break;
            }
            if again {
                continue;
            }
            let next = wait.saturating_sub(started.elapsed());
            tokio::select! {
                _ = tokio::time::sleep(next) => {}
                // A change of the leader key (released, expired, taken) is acted on
                // at once rather than at the next tick: it is most of a failover.
                _ = wake.notified() => {}
                _ = shutdown.changed() => break,
            }
        }
        watcher.abort();
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        tracing::info!("stopping PostgreSQL for shutdown");
        // The primary's last position, so the next candidate knows what a lossless
        // takeover needs (clients are cut off by the stop right after).
        let last = self.pg.probe().await;
        if self.leader_lease.is_some() && last.in_recovery == Some(false) && last.write_lsn > 0 {
            let _ = self
                .put_as_leader(TIMELINE_KEY, last.timeline.to_string().into_bytes())
                .await;
            let _ = self
                .put_as_leader(OPTIME_KEY, last.write_lsn.to_string().into_bytes())
                .await;
        }
        if let Err(e) = self.pg.stop(StopKind::Fast).await {
            tracing::warn!(error = %e, "clean stop failed; stopping immediately");
            let _ = self.pg.stop(StopKind::Immediate).await;
        }
        if self.pg.may_be_primary() {
            // Both stops failed: the lease is left to expire and the fence stays
            // armed, so the guard (or pgquorum's own fencer, until this process
            // exits) kills PostgreSQL at the deadline.
            tracing::error!("PostgreSQL did not stop; leaving the leader lease to expire");
            return;
        }
        if let Some(id) = self.stop_leader_lease().await {
            // PostgreSQL is down: releasing now lets a replica take over within a cycle.
            match self.client.revoke(id).await {
                Ok(_) => tracing::info!("leader lease released"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not release the leader lease; it will expire")
                }
            }
        }
        if let Some(s) = self.status_lease.take() {
            let id = s.id();
            s.stop().await;
            let _ = self.client.revoke(id).await;
        }
        let _ = self.pg.set_fence_deadline(None);
    }

    /// One HA cycle. Returns true when another cycle should follow at once
    /// (the lease was just acquired: promote without waiting a loop).
    async fn cycle(&mut self) -> bool {
        if self.tags_reload.has_changed().unwrap_or(false) {
            self.tags = self.tags_reload.borrow_and_update().clone();
            tracing::info!(tags = ?self.tags, "using the reloaded tags");
        }
        let store = self.read_store().await;
        // Read only while leading: every Raft member gets a slot, not only those
        // publishing right now (one that is down keeps the WAL it needs).
        let raft_members = if self.leader_lease.is_some() {
            self.client.member_names().await.unwrap_or_default()
        } else {
            Vec::new()
        };
        let probe = self.pg.probe().await;
        self.track_sync_catchup(&probe).await;
        let now = Instant::now();
        let leader_serving = store
            .as_ref()
            .ok()
            .is_some_and(|(v, _, _)| v.leader_serving());
        let pg = self.pg_view(&probe, now, leader_serving);
        let own_old_lease = store.as_ref().ok().and_then(|(_, _, l)| *l);
        let (view, store_view) = match &store {
            Ok((view, sysid, _)) => {
                let keep = self.slot_keep(view, raft_members, now);
                (
                    Some(view.clone()),
                    Some(self.store_view(view, *sysid, keep)),
                )
            }
            Err(e) => {
                tracing::debug!(error = %e, "store unreachable");
                (None, None)
            }
        };
        if let Some(Some(c)) = view.as_ref().map(|v| v.config.clone())
            && c != self.ha
        {
            tracing::info!(settings = ?c, "using the cluster-wide HA settings from the store");
            self.ha = c;
        }
        match self
            .pg
            .set_cluster_settings(
                &self.ha.parameters,
                &self.ha.pg_hba,
                self.ha.synchronous_mode,
            )
            .await
        {
            Ok(true) => tracing::info!(
                parameters = ?self.ha.parameters,
                pg_hba = ?self.ha.pg_hba,
                "applied the cluster-wide PostgreSQL settings"
            ),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot apply the cluster-wide PostgreSQL settings")
            }
        }
        let lease_valid = self
            .leader_lease
            .as_ref()
            .is_some_and(|l| l.is_valid(Instant::now()));
        match view.as_ref().map(|v| v.leader.is_none()) {
            Some(true) => {
                self.leaderless_since.get_or_insert(now);
            }
            Some(false) => {
                self.leaderless_since = None;
                self.seen_leader = true;
            }
            None => {}
        }
        let obs = Observation {
            me: self.me.clone(),
            tags: self.tags.clone(),
            policy: Policy {
                maximum_lag_on_failover: self.ha.maximum_lag_on_failover,
                synchronous_mode: self.ha.synchronous_mode,
                primary_start_timeout_ms: self.ha.primary_start_timeout_ms,
                candidate_grace_ms: self.ha.ttl_ms,
                primary_hang_timeout_ms: self.ha.primary_hang_timeout_ms,
                sync_standby_hang_timeout_ms: self.ha.sync_standby_hang_timeout_ms,
                synchronous_mode_strict: self.ha.synchronous_mode_strict,
                synchronous_node_count: self.ha.synchronous_node_count,
                permanent_slots: self.ha.slots.keys().cloned().collect(),
            },
            paused: view.as_ref().is_some_and(|v| v.paused),
            store: store_view,
            lease_held: lease_valid,
            lease_lapsed: self.leader_lease.is_some() && !lease_valid,
            own_old_lease,
            cold_start: !self.seen_leader,
            wall_clock_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            no_leader_for_ms: self
                .leaderless_since
                .map_or(0, |t| now.duration_since(t).as_millis() as u64),
            pg,
        };
        self.note_hang(&obs.pg.stall);
        let Decision { actions, reason } = decide::decide(&obs);
        *self.decisions.entry(reason.kind()).or_default() += 1;
        let reason_text = reason.to_string();
        if reason_text != self.last_reason {
            tracing::info!(reason = %reason_text, ?actions, "HA decision");
            self.last_reason = reason_text;
        } else {
            tracing::debug!(reason = %reason, ?actions, "HA decision");
        }
        let mut acquired = false;
        let acted = !actions.is_empty();
        let mut all_done = true;
        let mut done = Vec::with_capacity(actions.len());
        for a in actions {
            let was_acquire = matches!(a, Action::AcquireLease | Action::TakeBackLease { .. });
            match self.execute(a.clone(), view.as_ref(), &probe).await {
                Ok(()) => {
                    acquired |= was_acquire && self.leader_lease.is_some();
                    done.push(a);
                }
                Err(e) => {
                    tracing::warn!(action = ?a, error = %e, "HA action failed");
                    all_done = false;
                    break;
                }
            }
        }
        if all_done {
            self.count_outcome(&reason);
        }
        self.run_callbacks(&obs.pg, &done);
        // After actions PostgreSQL may have changed; otherwise this cycle's probe is
        // current (and probing a hung instance again would only cost time).
        let probe = if acted { self.pg.probe().await } else { probe };
        self.last_status = view.as_ref().map(|v| self.my_status(&probe, v));
        if let Some(v) = &view {
            self.publish(v, &probe).await;
        }
        self.update_health(view, store.as_ref().ok().and_then(|(_, id, _)| *id), &probe);
        acquired
    }

    /// Logs and counts the start and end of a hang of this member's PostgreSQL
    /// (what is done about it is `decide`'s, and logged with its reason).
    fn note_hang(&mut self, stall: &Stall) {
        let hung = stall.lasted(decide::MEMBER_HUNG_MS);
        if hung && !self.hang_seen {
            self.hangs.detected += 1;
            tracing::warn!(
                unanswered_ms = stall.unanswered_ms,
                wal_flush_stuck_ms = stall.wal_flush_stuck_ms,
                postmaster_stopped_ms = stall.postmaster_stopped_ms,
                processes = stall.processes,
                stopped = stall.stopped,
                uninterruptible = stall.disk_sleep,
                "PostgreSQL hangs: it does not answer, its WAL flush does not move, or its postmaster is stopped"
            );
        } else if !hung && self.hang_seen {
            tracing::info!("PostgreSQL answers again");
        }
        self.hang_seen = hung;
    }

    /// Queues the operator callbacks this cycle's completed actions owe.
    fn run_callbacks(&mut self, pg: &PgView, done: &[Action]) {
        if pg.running
            && let Some(r @ (Role::Primary | Role::Replica)) = pg.role
        {
            self.last_role = Some(r);
        }
        let (owed, role) = callbacks::owed(done, self.last_role);
        self.last_role = role;
        for c in owed {
            self.pg
                .callback(c.event.name(), callbacks::role_name(c.role));
        }
    }

    /// A `pre_promote` veto stands for one ttl, then the member may try again.
    pub(super) fn pre_promote_vetoed(&self, now: Instant) -> bool {
        self.pre_promote_vetoed_at
            .is_some_and(|t| now.duration_since(t) < Duration::from_millis(self.ha.ttl_ms))
    }

    /// Counts the hang handling a completed decision carried out.
    fn count_outcome(&mut self, reason: &Reason) {
        match reason {
            Reason::PrimaryHung(_) => self.hangs.primary_killed += 1,
            Reason::SyncStandbyReplaced { .. }
            | Reason::SyncStandbyDropped { .. }
            | Reason::SyncStandbyShrunk { .. } => self.hangs.sync_standby_changes += 1,
            _ => {}
        }
    }
}
