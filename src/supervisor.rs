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

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::Notify;

use tokio::sync::watch;

use crate::client::{Client, ClientError, LeaseKeeper, LeaseRenewer};
use crate::config::{HaSettings, NodeConfig};
use crate::ha::decide::{
    self, Action, DataState, Decision, Observation, PgView, Policy, Reason, Stall, StopKind,
    StoreView,
};
use crate::ha::health::{HangCounters, Health};
use crate::ha::model::{
    self, ClusterView, INITIALIZE_KEY, LEADER_KEY, MemberStatus, OPTIME_KEY, PgRunState, Role,
    SYNC_KEY, SyncState, TIMELINE_KEY, Tags,
};
use crate::postgres::{ConnTarget, DataDirState, PgError, PgProbe, Postgres, StartMode, StopMode};

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("store: {0}")]
    Store(#[from] ClientError),
    #[error("postgres: {0}")]
    Pg(#[from] PgError),
    #[error("{0}")]
    Other(String),
}

pub struct Supervisor {
    me: String,
    node_id: u64,
    scope: String,
    tags: Tags,
    ha: HaSettings,
    client: Client,
    pg: Postgres,
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
    health: watch::Sender<Health>,
    /// `[tags]` re-read from the config file on SIGHUP.
    tags_reload: watch::Receiver<Tags>,
    /// (standby, primary WAL position sampled after PostgreSQL was first seen
    /// treating it as synchronous); see `PgView::sync_catchup`.
    sync_catchup: Option<(String, u64)>,
    /// The last pg_rewind of this data dir failed (see `PgView::rewind_failed`).
    rewind_failed: bool,
}

impl Supervisor {
    pub fn new(
        cfg: &NodeConfig,
        pg: Postgres,
        health: watch::Sender<Health>,
        tags_reload: watch::Receiver<Tags>,
    ) -> Result<Self, SupervisorError> {
        let pgc = cfg
            .postgresql
            .as_ref()
            .ok_or_else(|| SupervisorError::Other("no [postgresql] section".into()))?;
        let mut endpoints = vec![cfg.advertise_addr.clone()];
        endpoints.extend(
            cfg.initial_cluster
                .iter()
                .map(|m| m.addr.clone())
                .filter(|a| *a != cfg.advertise_addr),
        );
        // A cycle must not hang on a partitioned store: fencing is the guard's job,
        // but the loop should keep observing.
        let client =
            Client::new(endpoints)?.with_timeout(Duration::from_millis(cfg.ha.loop_wait_ms * 2));
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
            pg_addr: format!("{}:{}", pgc.connect_host, pgc.port),
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
            health,
            tags_reload,
            sync_catchup: None,
            rewind_failed: false,
        })
    }

    /// Runs HA cycles until `shutdown` turns true, then stops PostgreSQL and hands
    /// the lease back at once so a planned stop fails over without waiting for expiry.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let wake = Arc::new(Notify::new());
        let watcher = tokio::spawn(watch_leader_key(self.client.clone(), wake.clone()));
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
        if let Err(e) = self.pg.stop(StopMode::Fast).await {
            tracing::warn!(error = %e, "clean stop failed; stopping immediately");
            let _ = self.pg.stop(StopMode::Immediate).await;
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
            match self.client.lease_revoke(id).await {
                Ok(_) => tracing::info!("leader lease released"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not release the leader lease; it will expire")
                }
            }
        }
        if let Some(s) = self.status_lease.take() {
            let id = s.id();
            s.stop().await;
            let _ = self.client.lease_revoke(id).await;
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
            match self.client.status().await {
                Ok(st) => st.members.into_iter().map(|m| m.name).collect(),
                Err(_) => Vec::new(),
            }
        } else {
            Vec::new()
        };
        let probe = self.pg.probe().await;
        self.track_sync_catchup(&probe).await;
        let now = Instant::now();
        let leader_serving = store.as_ref().ok().is_some_and(|(v, _, _)| {
            v.leader
                .as_ref()
                .and_then(|l| v.members.get(l))
                .is_some_and(|m| m.role == Role::Primary && m.state == PgRunState::Running)
        });
        let pg = self.pg_view(&probe, now, leader_serving);
        let own_old_lease = store.as_ref().ok().and_then(|(_, _, l)| *l);
        let (view, store_view) = match &store {
            Ok((view, sysid, _)) => (
                Some(view.clone()),
                Some(self.store_view(view, *sysid, raft_members)),
            ),
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
            },
            paused: view.as_ref().is_some_and(|v| v.paused),
            store: store_view,
            lease_held: lease_valid,
            lease_lapsed: self.leader_lease.is_some() && !lease_valid,
            own_old_lease,
            cold_start: !self.seen_leader,
            no_leader_for_ms: self
                .leaderless_since
                .map_or(0, |t| now.duration_since(t).as_millis() as u64),
            pg,
        };
        self.note_hang(&obs.pg.stall);
        let Decision { actions, reason } = decide::decide(&obs);
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
        for a in actions {
            let was_acquire = matches!(a, Action::AcquireLease | Action::TakeBackLease { .. });
            match self.execute(a.clone(), view.as_ref(), &probe).await {
                Ok(()) => acquired |= was_acquire && self.leader_lease.is_some(),
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
        let hung = stall
            .longest_ms()
            .is_some_and(|ms| ms >= decide::MEMBER_HUNG_MS);
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

    /// Counts the hang handling a completed decision carried out.
    fn count_outcome(&mut self, reason: &Reason) {
        match reason {
            Reason::PrimaryHung(_) => self.hangs.primary_killed += 1,
            Reason::SyncStandbyReplaced { .. } | Reason::SyncStandbyDropped { .. } => {
                self.hangs.sync_standby_changes += 1
            }
            _ => {}
        }
    }

    /// The `/pg/*` keys, the cluster's system identifier, and this member's own
    /// leader lease from before a restart: the id under which the leader key still
    /// names this member while this process holds no lease.
    async fn read_store(&mut self) -> Result<(ClusterView, Option<u64>, Option<u64>), ClientError> {
        let r = self.client.get(model::PREFIX, true, false).await?;
        let own_old_lease = r
            .kvs
            .iter()
            .find(|kv| kv.key == LEADER_KEY)
            .filter(|kv| kv.value == self.me.as_bytes() && kv.lease != 0)
            .filter(|_| self.leader_lease.is_none())
            .map(|kv| kv.lease);
        let (view, sysid) = ClusterView::from_kvs(
            r.kvs
                .iter()
                .map(|kv| (kv.key.as_str(), kv.value.as_slice())),
        );
        Ok((view, sysid, own_old_lease))
    }

    fn store_view(
        &self,
        view: &ClusterView,
        system_id: Option<u64>,
        raft_members: Vec<String>,
    ) -> StoreView {
        StoreView {
            raft_members,
            leader: view.leader.clone(),
            system_id,
            members: view
                .members
                .values()
                .filter(|m| m.name != self.me)
                .cloned()
                .collect(),
            optime: view.optime,
            timeline: view.timeline,
            sync: view.sync.clone(),
            switchover: view.switchover.clone(),
        }
    }

    fn pg_view(&mut self, p: &PgProbe, now: Instant, leader_serving: bool) -> PgView {
        let role = match p.in_recovery {
            Some(true) => Some(Role::Replica),
            Some(false) => Some(Role::Primary),
            None => None,
        };
        if p.running {
            self.down_since = None;
        } else if self.should_run {
            self.down_since.get_or_insert(now);
        }
        // Not streaming although the leader serves as primary: typically this replica
        // received WAL from the old primary past the new timeline's fork point (it
        // then has the new history file, so its timeline looks current).
        let stalled = role == Some(Role::Replica) && p.streaming_from.is_none() && leader_serving;
        if stalled {
            self.stalled_since.get_or_insert(now);
        } else {
            self.stalled_since = None;
        }
        PgView {
            data: match &p.data_dir {
                DataDirState::Missing => DataState::Missing,
                DataDirState::Initialized { system_id } => DataState::Initialized {
                    system_id: *system_id,
                },
                DataDirState::Invalid(why) => DataState::Invalid(why.clone()),
            },
            running: p.running,
            accepting: p.accepting,
            role,
            timeline: p.timeline,
            lsn: if role == Some(Role::Primary) {
                p.write_lsn
            } else {
                p.receive_lsn.max(p.replay_lsn)
            },
            following: if p.running {
                self.following.clone()
            } else {
                None
            },
            was_primary: self.pg.was_primary(),
            down_for_ms: self
                .down_since
                .map(|t| now.duration_since(t).as_millis() as u64),
            unrecorded_bootstrap: self.pg.bootstrap_pending(),
            sync_standby_names: p.synchronous_standby_names.clone(),
            streaming_replicas: p
                .replicas
                .iter()
                .filter(|r| r.state == "streaming")
                .map(|r| (r.application_name.clone(), r.sync_state == "sync"))
                .collect(),
            not_streaming_ms: self
                .stalled_since
                .map(|t| now.duration_since(t).as_millis() as u64),
            may_be_primary: self.pg.may_be_primary(),
            foreign_postmaster: p.foreign_postmaster,
            replica_flush: p
                .replicas
                .iter()
                .map(|r| (r.application_name.clone(), r.flush_lsn))
                .collect(),
            sync_catchup: self.sync_catchup.clone(),
            stall: stall_of(&p.liveness, p.running),
            rewind_failed: self.rewind_failed,
            sync_stalled: p
                .liveness
                .sync_wait_stuck
                .as_ref()
                .map(|(n, d)| (n.clone(), d.as_millis() as u64)),
        }
    }

    fn target(view: Option<&ClusterView>, leader: &str) -> Result<ConnTarget, SupervisorError> {
        let m = view.and_then(|v| v.members.get(leader)).ok_or_else(|| {
            SupervisorError::Other(format!("leader {leader} has not published its address yet"))
        })?;
        let (host, port) = m
            .pg_addr
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_string(), p.parse().ok()?)))
            .ok_or_else(|| {
                SupervisorError::Other(format!(
                    "leader {leader} published a bad address {:?}",
                    m.pg_addr
                ))
            })?;
        Ok(ConnTarget { host, port })
    }

    /// Renews the leader lease every loop_wait on a task of its own, which moves
    /// PostgreSQL's fence deadline after each committed renewal: a slow cycle (a
    /// long action, a store that answers slowly over a bad link) must not starve
    /// renewals and fence a healthy primary. The HA cycle still judges the lease
    /// each time (`lease_held`) and arms or disarms the fence.
    ///
    /// At most one such task runs: any earlier one is stopped first, so only the lease
    /// that guards the leader key ever moves the fence deadline.
    async fn keep_leader_lease(&mut self, keeper: LeaseKeeper) {
        if let Some(old) = self.stop_leader_lease().await {
            let _ = self.client.lease_revoke(old).await;
        }
        let fence = self.pg.fence_handle();
        let every = Duration::from_millis(self.ha.loop_wait_ms);
        self.leader_lease = Some(LeaseRenewer::spawn(keeper, every, move |until| {
            if let Err(e) = fence.move_if_armed(until.into_std()) {
                tracing::debug!(error = %e, "renewed the leader lease; PostgreSQL is not running");
            }
        }));
    }

    /// Stops renewing the leader lease (once this returns, its task no longer moves the
    /// fence deadline); returns its id.
    async fn stop_leader_lease(&mut self) -> Option<u64> {
        let l = self.leader_lease.take()?;
        let id = l.id();
        l.stop().await;
        Some(id)
    }

    /// Arms the fence with the leader lease's holder-side deadline. Without a valid
    /// lease the deadline is now (fail closed): this is only called where PostgreSQL
    /// is, or is about to be, a primary.
    fn fence_deadline(&mut self) -> Result<(), SupervisorError> {
        let d = self
            .leader_lease
            .as_ref()
            .and_then(|l| l.valid_until())
            .unwrap_or_else(Instant::now);
        self.pg.set_fence_deadline(Some(d.into_std()))?;
        Ok(())
    }

    async fn execute(
        &mut self,
        action: Action,
        view: Option<&ClusterView>,
        probe: &PgProbe,
    ) -> Result<(), SupervisorError> {
        let ttl = Duration::from_millis(self.ha.ttl_ms);
        match action {
            Action::AcquireLease => {
                let keeper = LeaseKeeper::grant(self.client.clone(), ttl).await?;
                let put = self
                    .client
                    .put(
                        LEADER_KEY,
                        self.me.clone().into_bytes(),
                        keeper.id(),
                        Some(0),
                    )
                    .await;
                match put {
                    Ok(r) if r.succeeded => {
                        tracing::info!(lease = keeper.id(), "acquired the leader lease");
                        self.keep_leader_lease(keeper).await;
                        self.fence_deadline()?;
                    }
                    other => {
                        let _ = self.client.lease_revoke(keeper.id()).await;
                        if let Err(e) = other {
                            return Err(e.into());
                        }
                        tracing::info!("another member took the leader lease first");
                    }
                }
            }
            Action::DropLease { revoke } => {
                if let Some(id) = self.stop_leader_lease().await
                    && revoke
                {
                    let _ = self.client.lease_revoke(id).await;
                }
            }
            Action::TakeBackLease { lease } => {
                match LeaseKeeper::attach(self.client.clone(), lease).await {
                    Ok(l) => {
                        tracing::info!(lease, "took back this member's leader lease");
                        self.keep_leader_lease(l).await;
                        self.fence_deadline()?;
                    }
                    Err(e) if e.code() == Some(tonic::Code::NotFound) => {
                        tracing::info!(lease, "this member's old leader lease is gone")
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            // Renewals run on the lease's own task; here the cycle confirms the lease
            // is still there and keeps the fence armed with its deadline.
            Action::RenewLease => {
                let Some(l) = self.leader_lease.as_ref() else {
                    return Err(SupervisorError::Other("no leader lease to renew".into()));
                };
                if l.valid_until().is_none() {
                    tracing::warn!("the leader lease is gone");
                    self.stop_leader_lease().await;
                    return Err(SupervisorError::Other("the leader lease is gone".into()));
                }
                self.fence_deadline()?;
            }
            Action::ReleaseLease => {
                // The fence fails closed: the lease goes (and the deadline with it)
                // only once PostgreSQL is confirmed stopped or a replica.
                if self.pg.may_be_primary() {
                    return Err(SupervisorError::Other(
                        "PostgreSQL may still accept writes; keeping the leader lease and the \
                         fence until it is stopped"
                            .into(),
                    ));
                }
                if let Some(id) = self.stop_leader_lease().await {
                    let _ = self.client.lease_revoke(id).await;
                }
                self.pg.set_fence_deadline(None)?;
            }
            Action::StopForeign { pid } => {
                self.pg.stop_foreign(pid).await?;
            }
            Action::Bootstrap => {
                self.fence_deadline()?;
                self.pg.initdb().await?;
                tracing::info!("initialized a new PostgreSQL cluster (initdb)");
                self.following = None;
            }
            Action::SetAsideFailedBootstrap => {
                self.should_run = false;
                self.pg.stop(StopMode::Fast).await?;
                self.pg.move_data_dir_aside()?;
                self.pg.clear_bootstrap_marker()?;
            }
            Action::RecordSystemId => {
                // Replicas need the role before the cluster counts as initialized.
                self.pg.ensure_replication_role().await?;
                let DataDirState::Initialized { system_id } = probe.data_dir else {
                    return Err(SupervisorError::Other(
                        "no system identifier to record".into(),
                    ));
                };
                let put = self
                    .client
                    .put(
                        INITIALIZE_KEY,
                        system_id.to_string().into_bytes(),
                        0,
                        Some(0),
                    )
                    .await?;
                if put.succeeded {
                    self.pg.clear_bootstrap_marker()?;
                }
                // The bootstrapping member's settings become the cluster's, unless set already.
                let bytes = serde_json::to_vec(&self.ha)
                    .map_err(|e| SupervisorError::Other(e.to_string()))?;
                self.client
                    .put(model::CONFIG_KEY, bytes, 0, Some(0))
                    .await?;
            }
            Action::StartPrimary => {
                self.fence_deadline()?;
                self.should_run = true;
                self.pg.start(StartMode::Primary).await?;
                self.following = None;
            }
            Action::StartReplica { leader } => {
                self.pg.set_fence_deadline(None)?;
                let primary = match &leader {
                    Some(l) => Some(Self::target(view, l)?),
                    None => None,
                };
                self.should_run = true;
                self.pg
                    .start(StartMode::Replica {
                        primary,
                        slot: leader.as_ref().map(|_| Postgres::slot_name(&self.me)),
                    })
                    .await?;
                self.following = leader;
            }
            Action::Stop(kind) => {
                self.should_run = false;
                self.pg
                    .stop(match kind {
                        StopKind::Fast => StopMode::Fast,
                        StopKind::Immediate => StopMode::Immediate,
                        StopKind::Kill => StopMode::Kill,
                    })
                    .await?;
                self.following = None;
            }
            Action::Promote => {
                self.fence_deadline()?;
                self.pg.promote().await?;
                self.following = None;
                tracing::info!("promoted to primary");
            }
            Action::Follow { leader } => {
                let target = Self::target(view, &leader)?;
                self.pg.stop(StopMode::Fast).await?;
                self.pg.set_fence_deadline(None)?;
                self.pg
                    .start(StartMode::Replica {
                        primary: Some(target),
                        slot: Some(Postgres::slot_name(&self.me)),
                    })
                    .await?;
                self.following = Some(leader);
            }
            Action::Rewind { leader } => {
                let target = Self::target(view, &leader)?;
                // A replica rewound because its starts kept failing gets another full
                // period before the next rewind (each one checkpoints the leader).
                self.down_since = None;
                match self.pg.rewind(&target).await {
                    Ok(()) => self.rewind_failed = false,
                    // pg_rewind (or the crash recovery before it) ran and failed: the
                    // data dir cannot be rewound (`decide` re-clones it). Anything else
                    // (the new primary not answering yet) is retried, keeping the data dir.
                    Err(e @ (PgError::Command { .. } | PgError::NotCleanAfterRecovery(_))) => {
                        tracing::warn!(error = %e, "pg_rewind failed");
                        self.rewind_failed = true;
                        return Err(e.into());
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Action::Reclone { leader } => {
                let target = Self::target(view, &leader)?;
                self.pg
                    .reclone(&target, &Postgres::slot_name(&self.me))
                    .await?;
                self.rewind_failed = false;
            }
            Action::Clone { leader } => {
                let target = Self::target(view, &leader)?;
                self.pg
                    .basebackup(&target, &Postgres::slot_name(&self.me))
                    .await?;
                self.rewind_failed = false;
            }
            Action::PublishOptime => {
                // Timeline first: a reader that sees the new position also sees its timeline.
                if probe.timeline > 0 && view.and_then(|v| v.timeline) != Some(probe.timeline) {
                    self.put_as_leader(TIMELINE_KEY, probe.timeline.to_string().into_bytes())
                        .await?;
                }
                if probe.write_lsn > 0 && view.and_then(|v| v.optime) != Some(probe.write_lsn) {
                    self.put_as_leader(OPTIME_KEY, probe.write_lsn.to_string().into_bytes())
                        .await?;
                }
            }
            Action::EnsureSlots { members } => {
                let slots: Vec<String> = members.iter().map(|m| Postgres::slot_name(m)).collect();
                self.pg.ensure_slots(&slots).await?;
            }
            Action::SetSyncStandby(name) => {
                self.pg.set_synchronous_standby(name.as_deref()).await?;
            }
            Action::ClearSwitchover => {
                self.client
                    .delete(model::SWITCHOVER_KEY, false, None)
                    .await?;
                tracing::info!("switchover complete");
            }
            Action::RecordSync(name) => {
                let state = SyncState {
                    leader: self.me.clone(),
                    sync_standby: name,
                };
                let bytes = serde_json::to_vec(&state)
                    .map_err(|e| SupervisorError::Other(e.to_string()))?;
                self.put_as_leader(SYNC_KEY, bytes).await?;
            }
        }
        Ok(())
    }

    /// Samples the primary's WAL position once per standby that PostgreSQL has just
    /// started to treat as synchronous (in this cycle's probe, so the sample comes
    /// after: every commit acknowledged later waits for it). Forgotten as soon as it
    /// is not synchronous any more.
    async fn track_sync_catchup(&mut self, p: &PgProbe) {
        let sync_now = p
            .synchronous_standby_names
            .as_ref()
            .filter(|n| {
                p.replicas
                    .iter()
                    .any(|r| &r.application_name == *n && r.sync_state == "sync")
            })
            .cloned();
        match (&self.sync_catchup, sync_now) {
            (Some((n, _)), Some(c)) if *n == c => {}
            (_, Some(c)) if p.in_recovery == Some(false) => match self.pg.current_wal_lsn().await {
                Ok(lsn) if lsn > 0 => {
                    tracing::info!(
                        standby = %c,
                        lsn = %model::format_lsn(lsn),
                        "synchronous standby confirmed; recording it once it has flushed this position"
                    );
                    self.sync_catchup = Some((c, lsn));
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "cannot sample the WAL position"),
            },
            _ => self.sync_catchup = None,
        }
    }

    /// Writes a cluster key that only the primary may write, in one state-machine
    /// step with the check that this member's lease still holds the leader key: a
    /// primary resuming from a freeze cannot move `/pg/optime`, `/pg/timeline` or
    /// `/pg/sync` after it was deposed.
    async fn put_as_leader(&self, key: &str, value: Vec<u8>) -> Result<(), SupervisorError> {
        let Some(id) = self.leader_lease.as_ref().map(|l| l.id()) else {
            return Err(SupervisorError::Other(format!(
                "not writing {key}: this member holds no leader lease"
            )));
        };
        let r = self.client.put_guarded(key, value, LEADER_KEY, id).await?;
        if !r.succeeded {
            return Err(SupervisorError::Other(format!(
                "not writing {key}: this member's lease no longer holds the leader key"
            )));
        }
        Ok(())
    }

    fn my_status(&self, p: &PgProbe, view: &ClusterView) -> MemberStatus {
        let role = match (p.running, p.in_recovery) {
            (true, Some(false)) => Role::Primary,
            (true, Some(true)) => Role::Replica,
            _ => Role::Uninitialized,
        };
        let state = if p.running && p.accepting {
            PgRunState::Running
        } else if p.running {
            PgRunState::Starting
        } else if self.should_run {
            PgRunState::Crashed
        } else {
            PgRunState::Stopped
        };
        let (receive, replay) = if role == Role::Primary {
            (p.write_lsn, p.write_lsn)
        } else {
            (p.receive_lsn.max(p.replay_lsn), p.replay_lsn)
        };
        MemberStatus {
            name: self.me.clone(),
            role,
            state,
            pg_addr: self.pg_addr.clone(),
            api_url: self.api_url.clone(),
            timeline: p.timeline,
            receive_lsn: receive,
            replay_lsn: replay,
            following: self.following.clone(),
            tags: self.tags.clone(),
            sync_standby: view.sync.as_ref().and_then(|s| s.sync_standby.as_deref())
                == Some(self.me.as_str()),
            node_id: self.node_id,
        }
    }

    /// Publishes this member's status under a lease of its own, so the record of
    /// a member that stops publishing disappears after one TTL.
    async fn publish(&mut self, view: &ClusterView, probe: &PgProbe) {
        let status = self.my_status(probe, view);
        let ttl = Duration::from_millis(self.ha.ttl_ms);
        // Renewed on its own task like the leader lease: a slow cycle must not make
        // this member's record vanish. Lapsed or gone: publish under a new one.
        if self
            .status_lease
            .as_ref()
            .is_some_and(|l| !l.is_valid(Instant::now()))
            && let Some(l) = self.status_lease.take()
        {
            l.stop().await;
            self.last_published = None;
        }
        if self.status_lease.is_none() {
            match LeaseKeeper::grant(self.client.clone(), ttl).await {
                Ok(l) => {
                    let every = Duration::from_millis(self.ha.loop_wait_ms);
                    self.status_lease = Some(LeaseRenewer::spawn(l, every, |_| {}));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot publish member status");
                    return;
                }
            }
        }
        if self.last_published.as_ref() == Some(&status) {
            return;
        }
        let lease = self.status_lease.as_ref().map_or(0, |l| l.id());
        let Ok(bytes) = serde_json::to_vec(&status) else {
            return;
        };
        if self
            .client
            .put(&model::member_key(&self.me), bytes, lease, None)
            .await
            .is_ok()
        {
            self.last_published = Some(status);
        }
    }

    fn update_health(&self, view: Option<ClusterView>, system_id: Option<u64>, probe: &PgProbe) {
        let until = self
            .leader_lease
            .as_ref()
            .filter(|_| {
                view.as_ref()
                    .is_none_or(|v| v.leader.as_deref() == Some(self.me.as_str()))
            })
            .and_then(|l| l.valid_until());
        let status = self.last_status.clone().or(self.last_published.clone());
        let hangs = self.hangs;
        let pg_last_answer = probe.liveness.last_answer;
        let pg_unanswered = probe.liveness.unanswered;
        let ttl = Duration::from_millis(self.ha.ttl_ms);
        let lag = self.ha.maximum_lag_on_failover;
        let reached_store = view.is_some();
        self.health.send_modify(|h| {
            h.member = self.me.clone();
            h.scope = self.scope.clone();
            h.leader_lease_until = until;
            h.status = status;
            h.hangs = hangs;
            h.pg_last_answer = pg_last_answer;
            h.pg_unanswered = pg_unanswered;
            if let Some(v) = view {
                h.cluster = v;
            }
            if system_id.is_some() {
                h.system_identifier = system_id;
            }
            h.last_cycle = Some(Instant::now());
            h.ttl = ttl;
            h.maximum_lag_on_failover = lag;
            if reached_store {
                h.dcs_last_seen = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
            }
        });
    }
}

/// The health monitor's findings as `decide` reads them.
fn stall_of(l: &crate::postgres::Liveness, running: bool) -> Stall {
    if !running {
        return Stall::default();
    }
    let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
    Stall {
        unanswered_ms: ms(l.unanswered),
        wal_flush_stuck_ms: ms(l.wal_flush_stuck),
        postmaster_stopped_ms: ms(l.postmaster_stopped),
        processes: l.procs.total,
        stopped: l.procs.stopped,
        disk_sleep: l.procs.disk_sleep,
    }
}

/// Wakes the HA loop whenever `/pg/leader` changes. Re-subscribes after errors (a
/// member restarting, a lost quorum); missing an event only delays the reaction to
/// the next regular cycle.
async fn watch_leader_key(client: Client, wake: Arc<Notify>) {
    loop {
        if let Ok(mut stream) = client.watch(LEADER_KEY, 0).await {
            while let Ok(Some(_event)) = stream.message().await {
                wake.notify_one();
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
