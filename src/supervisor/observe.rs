//! Observing: the cluster as the store shows it, this member's PostgreSQL as the
//! probe and the health monitor show it, turned into what `decide` reads.

use super::*;

impl<S: Store, P: Database> Supervisor<S, P> {
    /// The `/pg/*` keys, the cluster's system identifier, and this member's own
    /// leader lease from before a restart: the id under which the leader key still
    /// names this member while this process holds no lease.
    pub(super) async fn read_store(
        &mut self,
    ) -> Result<(ClusterView, Option<u64>, Option<u64>), ClientError> {
        let kvs = self.client.read_prefix(model::PREFIX).await?;
        let own_old_lease = kvs
            .iter()
            .find(|kv| kv.key == LEADER_KEY)
            .filter(|kv| kv.value == self.me.as_bytes() && kv.lease != 0)
            .filter(|_| self.leader_lease.is_none())
            .map(|kv| kv.lease);
        let (view, sysid) =
            ClusterView::from_kvs(kvs.iter().map(|kv| (kv.key.as_str(), kv.value.as_slice())));
        Ok((view, sysid, own_old_lease))
    }

    pub(super) fn store_view(
        &self,
        view: &ClusterView,
        system_id: Option<u64>,
        slots: (Vec<String>, Vec<String>),
    ) -> StoreView {
        StoreView {
            slot_members: slots.0,
            retain_slots: slots.1,
            ..StoreView::of(view, system_id, &self.me)
        }
    }

    /// Which absent members keep their slot (`StoreView::slot_members`,
    /// `retain_slots`): those seen publishing within `member_slots_ttl_ms`, and, for
    /// that long after this process started, Raft members it has not seen at all
    /// (kept if their slot exists; a witness never had one).
    pub(super) fn slot_keep(
        &mut self,
        view: &ClusterView,
        raft_members: Vec<String>,
        now: Instant,
    ) -> (Vec<String>, Vec<String>) {
        for name in view.members.keys().filter(|n| **n != self.me) {
            self.slot_seen.insert(name.clone(), now);
        }
        let ttl = Duration::from_millis(self.ha.member_slots_ttl_ms);
        self.slot_seen
            .retain(|_, t| now.saturating_duration_since(*t) < ttl);
        let recent = self.slot_seen.keys().cloned().collect();
        let retain = if now.saturating_duration_since(self.started) < ttl {
            raft_members
                .into_iter()
                .filter(|n| *n != self.me && !self.slot_seen.contains_key(n))
                .collect()
        } else {
            Vec::new()
        };
        (recent, retain)
    }

    pub(super) fn pg_view(&mut self, p: &PgProbe, now: Instant, leader_serving: bool) -> PgView {
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
            pre_promote_vetoed: self.pre_promote_vetoed(now),
            sync_stalled: p
                .liveness
                .sync_wait_stuck
                .as_ref()
                .map(|(n, d)| (n.clone(), d.as_millis() as u64)),
        }
    }

    /// Samples the primary's WAL position once per standby that PostgreSQL has just
    /// started to treat as synchronous (in this cycle's probe, so the sample comes
    /// after: every commit acknowledged later waits for it). Forgotten as soon as it
    /// is not synchronous any more.
    pub(super) async fn track_sync_catchup(&mut self, p: &PgProbe) {
        let primary = p.in_recovery == Some(false);
        let sync_now: Vec<&String> = p
            .synchronous_standby_names
            .iter()
            .filter(|n| {
                p.replicas
                    .iter()
                    .any(|r| &r.application_name == *n && r.sync_state == "sync")
            })
            .collect();
        self.sync_catchup
            .retain(|(n, _)| primary && sync_now.contains(&n));
        for c in sync_now {
            if !primary || self.sync_catchup.iter().any(|(n, _)| n == c) {
                continue;
            }
            match self.pg.current_wal_lsn().await {
                Ok(lsn) if lsn > 0 => {
                    tracing::info!(
                        standby = %c,
                        lsn = %model::format_lsn(lsn),
                        "synchronous standby confirmed; recording it once it has flushed this position"
                    );
                    self.sync_catchup.push((c.clone(), lsn));
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "cannot sample the WAL position"),
            }
        }
    }
}

/// The health monitor's findings as `decide` reads them.
pub(super) fn stall_of(l: &crate::postgres::Liveness, running: bool) -> Stall {
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
