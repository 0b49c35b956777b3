//! Publishing: this member's status in the store (under a lease of its own) and the
//! health snapshot the REST API answers from.

use super::*;

impl<S: Store, P: Database> Supervisor<S, P> {
    pub(super) fn my_status(&self, p: &PgProbe, view: &ClusterView) -> MemberStatus {
        let role = match (p.running, p.in_recovery) {
            (true, Some(false)) => Role::Primary,
            (true, Some(true)) => Role::Replica,
            _ => Role::Uninitialized,
        };
        let state = if self.creating {
            PgRunState::Creating
        } else if p.running && p.accepting {
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
            sync_standby: view.sync.as_ref().is_some_and(|s| s.holds(&self.me)),
            node_id: self.node_id,
            paused: view.paused,
            pending_restart: !p.pending_restart.is_empty(),
            pre_promote_vetoed: self.pre_promote_vetoed(Instant::now()),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            server_version: p.server_version,
        }
    }

    /// Publishes this member's status under a lease of its own, so the record of
    /// a member that stops publishing disappears after one TTL.
    pub(super) async fn publish(&mut self, view: &ClusterView, probe: &PgProbe) {
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
                    self.status_lease = Some(LeaseRenewer::spawn(l, every, |_, _| {}));
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
            .put_key(&model::member_key(&self.me), bytes, lease, None)
            .await
            .is_ok()
        {
            self.last_published = Some(status);
        }
    }

    pub(super) fn update_health(
        &self,
        view: Option<ClusterView>,
        system_id: Option<u64>,
        probe: &PgProbe,
    ) {
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
        let server_version = probe.server_version;
        let decisions = self.decisions.clone();
        let renewals = self.renewals.lock().map(|h| h.clone()).ok();
        let pg_times = crate::ha::health::PgTimes {
            postmaster_start_ms: probe.postmaster_start_ms,
            replay_paused: probe.replay_paused,
            last_replayed_ms: probe.last_replayed_ms,
        };
        let running = probe.running;
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
            h.decisions = decisions;
            if let Some(r) = renewals {
                h.lease_renewals = r;
            }
            if running {
                h.pg_times = pg_times;
            } else {
                h.pg_times = Default::default();
            }
            // The last version seen stays known while PostgreSQL is down.
            if server_version.is_some() {
                h.server_version = server_version;
            }
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
