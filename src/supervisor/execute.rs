//! Executing: each action `decide` chose, and nothing it did not. The leader lease's
//! renewal task and the fence deadline live here.

use super::*;

impl<S: Store, P: Database> Supervisor<S, P> {
    pub(super) fn target(
        view: Option<&ClusterView>,
        leader: &str,
    ) -> Result<ConnTarget, SupervisorError> {
        let m = view
            .and_then(|v| v.members.get(leader))
            .ok_or_else(|| SupervisorError::LeaderAddressUnknown(leader.to_string()))?;
        let (host, port) = crate::hostport::parse(&m.pg_addr).ok_or_else(|| {
            SupervisorError::LeaderAddressInvalid {
                leader: leader.to_string(),
                addr: m.pg_addr.clone(),
            }
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
    pub(super) async fn keep_leader_lease(&mut self, keeper: LeaseKeeper<S>) {
        if let Some(old) = self.stop_leader_lease().await {
            let _ = self.client.revoke(old).await;
        }
        let fence = self.pg.fence_handle();
        let every = Duration::from_millis(self.ha.loop_wait_ms);
        let renewals = self.renewals.clone();
        let health = self.health.clone();
        self.leader_lease = Some(LeaseRenewer::spawn(keeper, every, move |until, took| {
            if let Ok(mut h) = renewals.lock() {
                h.observe(took.as_secs_f64());
            }
            health.send_modify(|h| h.fence_deadline = Some(until));
            if let Err(e) = fence.move_if_armed(until) {
                tracing::debug!(error = %e, "renewed the leader lease; PostgreSQL is not running");
            }
        }));
    }

    /// Stops renewing the leader lease (once this returns, its task no longer moves the
    /// fence deadline); returns its id.
    pub(super) async fn stop_leader_lease(&mut self) -> Option<u64> {
        let l = self.leader_lease.take()?;
        let id = l.id();
        l.stop().await;
        Some(id)
    }

    /// Arms the fence with the leader lease's holder-side deadline. Without a valid
    /// lease the deadline is now (fail closed): this is only called where PostgreSQL
    /// is, or is about to be, a primary.
    pub(super) fn fence_deadline(&mut self) -> Result<(), SupervisorError> {
        let d = self
            .leader_lease
            .as_ref()
            .and_then(|l| l.valid_until())
            .unwrap_or_else(Instant::now);
        self.pg.set_fence_deadline(Some(d))?;
        Ok(())
    }

    /// Carries out one action, shown as [`Health::busy`] while it runs: actions may
    /// take long by design (a start with crash recovery, a shutdown checkpoint,
    /// `pre_promote`, a clone), each bounded by its own timeout, and the systemd
    /// watchdog must not kill the node meanwhile. It watches the rest of the cycle.
    pub(super) async fn execute(
        &mut self,
        action: Action,
        view: Option<&ClusterView>,
        probe: &PgProbe,
    ) -> Result<(), SupervisorError> {
        let busy = action.kind();
        self.health.send_modify(|h| h.busy = Some(busy));
        self.creating = matches!(
            action,
            Action::Bootstrap
                | Action::Clone { .. }
                | Action::Reclone { .. }
                | Action::Rewind { .. }
        );
        if self.creating
            && let Some(v) = view
        {
            self.publish(v, probe).await;
            let status = self.my_status(probe, v);
            self.last_status = Some(status.clone());
            self.health.send_modify(|h| h.status = Some(status));
        }
        let r = self.execute_action(action, view, probe).await;
        self.creating = false;
        self.health.send_modify(|h| h.busy = None);
        r
    }

    async fn execute_action(
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
                    .put_key(
                        LEADER_KEY,
                        self.me.clone().into_bytes(),
                        keeper.id(),
                        Some(0),
                    )
                    .await;
                match put {
                    Ok(true) => {
                        tracing::info!(lease = keeper.id(), "acquired the leader lease");
                        self.keep_leader_lease(keeper).await;
                        self.fence_deadline()?;
                    }
                    other => {
                        let _ = self.client.revoke(keeper.id()).await;
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
                    let _ = self.client.revoke(id).await;
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
                    return Err(SupervisorError::NoLeaderLease);
                };
                if l.valid_until().is_none() {
                    tracing::warn!("the leader lease is gone");
                    self.stop_leader_lease().await;
                    return Err(SupervisorError::LeaseGone);
                }
                self.fence_deadline()?;
            }
            Action::ReleaseLease => {
                // The fence fails closed: the lease goes (and the deadline with it)
                // only once PostgreSQL is confirmed stopped or a replica.
                if self.pg.may_be_primary() {
                    return Err(SupervisorError::MayBePrimary);
                }
                if let Some(id) = self.stop_leader_lease().await {
                    let _ = self.client.revoke(id).await;
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
                self.pg.stop(StopKind::Fast).await?;
                self.pg.move_data_dir_aside()?;
                self.pg.clear_bootstrap_marker()?;
            }
            Action::RecordSystemId => {
                // Replicas need the role before the cluster counts as initialized.
                self.pg.ensure_replication_role().await?;
                let DataDirState::Initialized { system_id } = probe.data_dir else {
                    return Err(SupervisorError::NoSystemId);
                };
                let put = self
                    .client
                    .put_key(
                        INITIALIZE_KEY,
                        system_id.to_string().into_bytes(),
                        0,
                        Some(0),
                    )
                    .await?;
                if put {
                    self.pg.clear_bootstrap_marker()?;
                }
                // The bootstrapping member's settings become the cluster's, unless set already.
                let bytes =
                    serde_json::to_vec(&self.ha).map_err(|source| SupervisorError::Encode {
                        what: "the HA settings",
                        source,
                    })?;
                self.client
                    .put_key(model::CONFIG_KEY, bytes, 0, Some(0))
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
                // A freshly started standby gets a full period to stream before it
                // counts as diverged again; otherwise one that answers before its
                // walreceiver connects is rewound at once, forever.
                self.stalled_since = None;
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
                self.pg.stop(kind).await?;
                self.following = None;
            }
            Action::Promote => {
                self.fence_deadline()?;
                if let Err(e) = self.pg.promote().await {
                    if matches!(e, PgError::PrePromoteVetoed { .. }) {
                        self.pre_promote_vetoed_at = Some(Instant::now());
                    }
                    return Err(e.into());
                }
                self.following = None;
                tracing::info!("promoted to primary");
            }
            Action::RecordPromotion {
                timeline,
                lsn,
                reason,
            } => {
                let mut history: Vec<HistoryEntry> = self
                    .client
                    .read_prefix(HISTORY_KEY)
                    .await?
                    .into_iter()
                    .find(|kv| kv.key == HISTORY_KEY)
                    .and_then(|kv| serde_json::from_slice(&kv.value).ok())
                    .unwrap_or_default();
                model::append_history(
                    &mut history,
                    HistoryEntry {
                        timeline,
                        lsn,
                        reason,
                        time: std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs()),
                        new_leader: self.me.clone(),
                    },
                );
                let bytes =
                    serde_json::to_vec(&history).map_err(|source| SupervisorError::Encode {
                        what: "the promotion history",
                        source,
                    })?;
                self.put_as_leader(HISTORY_KEY, bytes).await?;
            }
            Action::Follow { leader } => {
                let target = Self::target(view, &leader)?;
                self.stalled_since = None;
                self.pg.stop(StopKind::Fast).await?;
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
            Action::Reclone { source } => {
                let target = Self::target(view, &source)?;
                self.pg
                    .reclone(&target, &Postgres::slot_name(&self.me))
                    .await?;
                self.rewind_failed = false;
            }
            Action::Reinit {
                source,
                discard_old,
            } => {
                let target = Self::target(view, &source)?;
                self.should_run = false;
                let moved = self
                    .pg
                    .reclone(&target, &Postgres::slot_name(&self.me))
                    .await?;
                self.rewind_failed = false;
                let bytes = moved.as_deref().map_or(0, |p| self.pg.dir_bytes(p));
                let mut discarded = false;
                if let Some(p) = moved.as_deref() {
                    if discard_old {
                        self.pg.remove_moved_aside(p)?;
                        discarded = true;
                        tracing::info!(path = %p.display(), bytes, "re-cloned; removed the old data dir as asked");
                    } else {
                        tracing::info!(path = %p.display(), bytes, "re-cloned; the old data dir is kept there");
                    }
                }
                let done = model::ReinitRequest {
                    discard_old,
                    outcome: Some(model::ReinitOutcome {
                        moved_to: moved.map(|p| p.display().to_string()),
                        bytes,
                        discarded,
                    }),
                };
                let json = serde_json::to_vec(&done).map_err(|source| SupervisorError::Encode {
                    what: "the reinit outcome",
                    source,
                })?;
                self.client
                    .put_key(&model::reinit_key(&self.me), json, 0, None)
                    .await?;
            }
            Action::Reload => {
                self.pg.reload().await?;
                tracing::info!("reloaded the PostgreSQL configuration as requested");
            }
            Action::FinishRequest(kind) => {
                let done = serde_json::to_vec(&model::MemberRequest {
                    done: true,
                    scheduled_at: None,
                })
                .map_err(|source| SupervisorError::Encode {
                    what: "a finished request",
                    source,
                })?;
                // Only the request carried out is marked done, by a compare-and-set
                // on the key as it is now: one deleted meanwhile (cancelled, or
                // collected by a waiting `ctl restart`) stays deleted, and one made
                // since (a new `--scheduled` time) stays pending. A plain put wrote
                // a stale `done` back over either.
                let key = kind.key(&self.me);
                let seen = view.and_then(|v| match kind {
                    model::RequestKind::Restart => v.restart.get(&self.me),
                    model::RequestKind::Reload => v.reload.get(&self.me),
                });
                let now = self.client.read_prefix(&key).await?;
                let current = now.into_iter().find(|k| k.key == key);
                let same = current.as_ref().is_some_and(|c| {
                    serde_json::from_slice::<model::MemberRequest>(&c.value)
                        .is_ok_and(|r| !r.done && Some(&r) == seen)
                });
                match current {
                    Some(c) if same => {
                        self.client
                            .put_key(&key, done, 0, Some(c.mod_revision))
                            .await?;
                    }
                    _ => tracing::info!(
                        key = %key,
                        "the request was cancelled or replaced while it ran; not marking it done"
                    ),
                }
            }
            Action::ClearReinit => {
                tracing::warn!("refusing a reinit request for this member: it is the primary");
                self.client.delete_key(&model::reinit_key(&self.me)).await?;
            }
            Action::Clone { source } => {
                let target = Self::target(view, &source)?;
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
            Action::EnsureSlots {
                members,
                retain,
                permanent,
            } => {
                let wanted: Vec<String> = members
                    .iter()
                    .map(|m| Postgres::slot_name(m))
                    .chain(permanent.iter().cloned())
                    .collect();
                let keep: Vec<String> = retain.iter().map(|m| Postgres::slot_name(m)).collect();
                self.pg.ensure_slots(&wanted, &keep).await?;
            }
            Action::KeepStandbySlots { slots } => {
                self.pg.keep_standby_slots(&slots).await?;
            }
            Action::SetSyncStandby(names) => {
                self.pg.set_synchronous_standby(&names).await?;
            }
            Action::ClearSwitchover => {
                self.client.delete_key(model::SWITCHOVER_KEY).await?;
                tracing::info!("switchover complete");
            }
            Action::ClearFailover => {
                self.client.delete_key(model::FAILOVER_KEY).await?;
                tracing::info!("manual failover complete");
            }
            Action::RecordSync(names) => {
                let state = SyncState {
                    leader: self.me.clone(),
                    sync_standby: names,
                };
                let bytes =
                    serde_json::to_vec(&state).map_err(|source| SupervisorError::Encode {
                        what: "the synchronous standby record",
                        source,
                    })?;
                self.put_as_leader(SYNC_KEY, bytes).await?;
            }
        }
        Ok(())
    }

    /// Writes a cluster key that only the primary may write, in one state-machine
    /// step with the check that this member's lease still holds the leader key: a
    /// primary resuming from a freeze cannot move `/pg/optime`, `/pg/timeline` or
    /// `/pg/sync` after it was deposed.
    pub(super) async fn put_as_leader(
        &self,
        key: &str,
        value: Vec<u8>,
    ) -> Result<(), SupervisorError> {
        let Some(id) = self.leader_lease.as_ref().map(|l| l.id()) else {
            return Err(SupervisorError::NotLeaseHolder {
                key: key.to_string(),
            });
        };
        if !self
            .client
            .put_as_holder(key, value, LEADER_KEY, id)
            .await?
        {
            return Err(SupervisorError::Deposed {
                key: key.to_string(),
            });
        }
        Ok(())
    }
}
