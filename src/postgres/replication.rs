//! The primary's side of replication and the cluster-wide settings: slots,
//! `synchronous_standby_names`, parameters and pg_hba from the store, checkpoints.

use super::*;

impl Postgres {
    /// Primary only: creates missing physical slots (reserving WAL at once) and drops
    /// inactive `pgq_*` slots that are neither wanted nor to `keep`. Other slots are
    /// never touched.
    pub async fn ensure_slots(
        &mut self,
        wanted: &[String],
        keep: &[String],
    ) -> Result<(), PgError> {
        if let Some(bad) = wanted.iter().find(|w| !conf::valid_slot_name(w)) {
            return Err(PgError::InvalidSlotName(bad.clone()));
        }
        self.require_primary("ensure_slots").await?;
        let rows = self
            .sql
            .simple(
                "list slots",
                "SELECT slot_name, active FROM pg_replication_slots WHERE slot_type = 'physical'",
                SQL_TIMEOUT,
            )
            .await?;
        let existing: Vec<(String, bool)> = rows
            .iter()
            .map(|r| (text(r, 0), r.get(1).and_then(|v| v.as_deref()) == Some("t")))
            .collect();
        for w in wanted {
            if existing.iter().any(|(n, _)| n == w) {
                continue;
            }
            self.create_slot(w).await?;
        }
        for (name, active) in &existing {
            if !name.starts_with("pgq_") || *active || wanted.contains(name) || keep.contains(name)
            {
                continue;
            }
            let r = self
                .sql
                .query(
                    "drop slot",
                    "SELECT pg_drop_replication_slot($1)",
                    &[name],
                    SQL_TIMEOUT,
                )
                .await;
            match r {
                Ok(_) => tracing::info!(slot = %name, "dropped replication slot"),
                // 55006 object_in_use: became active meanwhile; 42704: already gone.
                Err(e) if matches!(e.sqlstate(), Some("55006" | "42704")) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Creates physical slot `name`, reserving WAL at once (on a replica, from its
    /// replay position).
    async fn create_slot(&mut self, name: &String) -> Result<(), PgError> {
        let r = self
            .sql
            .query(
                "create slot",
                "SELECT pg_create_physical_replication_slot($1, true)",
                &[name],
                SQL_TIMEOUT,
            )
            .await;
        match r {
            Ok(_) => tracing::info!(slot = %name, "created replication slot"),
            // 42710 duplicate_object: created concurrently, which is what we want.
            Err(e) if e.sqlstate() == Some("42710") => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Replica: the permanent physical slots exist here too and are moved forward to
    /// this replica's replay position (`pg_replication_slot_advance`), so after a
    /// promotion each is there, holding what its consumer has not yet read of the
    /// new primary's WAL at most from this replica's last replay on (as Patroni does).
    pub async fn keep_standby_slots(&mut self, slots: &[String]) -> Result<(), PgError> {
        if let Some(bad) = slots.iter().find(|w| !conf::valid_slot_name(w)) {
            return Err(PgError::InvalidSlotName(bad.clone()));
        }
        self.require_running()?;
        let rows = self
            .sql
            .simple(
                "list slots",
                "SELECT slot_name, active, restart_lsn IS NOT NULL \
                   AND restart_lsn < pg_last_wal_replay_lsn() \
                 FROM pg_replication_slots WHERE slot_type = 'physical'",
                SQL_TIMEOUT,
            )
            .await?;
        let existing: Vec<(String, bool, bool)> = rows
            .iter()
            .map(|r| {
                let t = |i: usize| r.get(i).and_then(|v| v.as_deref()) == Some("t");
                (text(r, 0), t(1), t(2))
            })
            .collect();
        for w in slots {
            match existing.iter().find(|(n, _, _)| n == w) {
                None => self.create_slot(w).await?,
                Some((_, false, true)) => {
                    self.sql
                        .query(
                            "advance slot",
                            "SELECT pg_replication_slot_advance($1, pg_last_wal_replay_lsn())",
                            &[w],
                            SQL_TIMEOUT,
                        )
                        .await?;
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// `ALTER SYSTEM SET synchronous_standby_names` so that commits wait for all of
    /// `names` (none: empty) and reload;
    /// returns once the setting is in effect for new transactions (2 s at most).
    ///
    /// ALTER SYSTEM writes `postgresql.auto.conf` in the data directory, so the value
    /// survives restarts (a crashed sync primary comes back still synchronous) and is
    /// copied to replicas by pg_basebackup/pg_rewind: set it explicitly after promoting.
    pub async fn set_synchronous_standby(&mut self, names: &[String]) -> Result<(), PgError> {
        self.require_running()?;
        let value = conf::standby_names_value(names);
        if value.contains('\0') {
            return Err(PgError::Setting(SettingError::LineBreak {
                what: "the synchronous standby's name".into(),
            }));
        }
        let stmt = format!(
            "ALTER SYSTEM SET synchronous_standby_names = {}",
            conf::sql_literal(&value)
        );
        self.sql
            .simple("set synchronous_standby_names", &stmt, SQL_TIMEOUT)
            .await?;
        self.sql
            .simple("reload", "SELECT pg_reload_conf()", SQL_TIMEOUT)
            .await?;
        // The reload is asynchronous: wait until our own session sees the new value.
        let t0 = Instant::now();
        loop {
            let rows = self
                .sql
                .simple(
                    "read synchronous_standby_names",
                    "SELECT current_setting('synchronous_standby_names')",
                    SQL_TIMEOUT,
                )
                .await?;
            if cell(&rows, 0, 0) == Some(value.as_str()) {
                return Ok(());
            }
            if t0.elapsed() >= Duration::from_secs(2) {
                return Err(PgError::SqlTimeout {
                    what: "waiting for synchronous_standby_names to take effect".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Takes the cluster-wide parameters and pg_hba lines; when they changed and
    /// PostgreSQL runs, rewrites its files and reloads. Returns whether anything
    /// changed. Parameters that need a restart take effect at the next start
    /// (PostgreSQL reports them in `pg_settings.pending_restart`).
    pub async fn set_cluster_settings(
        &mut self,
        parameters: &BTreeMap<String, String>,
        pg_hba: &[String],
        synchronous_mode: bool,
    ) -> Result<bool, PgError> {
        if *parameters == self.cluster_parameters
            && pg_hba == self.cluster_pg_hba.as_slice()
            && synchronous_mode == self.synchronous_mode
        {
            return Ok(false);
        }
        validate_cluster_settings(parameters, pg_hba, synchronous_mode)?;
        self.synchronous_mode = synchronous_mode;
        if conf::check_synchronous_commit(&self.cfg.parameters, synchronous_mode).is_err() {
            tracing::warn!(
                "this member's postgresql.parameters set synchronous_commit to a value that \
                 defeats synchronous_mode; ignoring it while synchronous_mode is on"
            );
        }
        self.cluster_parameters = parameters.clone();
        self.cluster_pg_hba = pg_hba.to_vec();
        self.reap_guard().await;
        if let (Some(_), Some(mode)) = (&self.guard, self.current_mode.clone()) {
            self.write_config(&mode)?;
            self.sql
                .simple("reload", "SELECT pg_reload_conf()", SQL_TIMEOUT)
                .await?;
        }
        Ok(true)
    }

    pub(super) fn effective_parameters(&self) -> BTreeMap<String, String> {
        let mut p = self.cluster_parameters.clone();
        p.extend(self.cfg.parameters.clone());
        if self.synchronous_mode {
            conf::pin_synchronous_commit(&mut p);
        }
        p
    }

    pub(super) fn effective_pg_hba(&self) -> Vec<String> {
        let mut l = self.cfg.pg_hba.clone();
        l.extend(self.cluster_pg_hba.iter().cloned());
        l
    }

    /// `pg_reload_conf()`: PostgreSQL re-reads its configuration files (an operator's
    /// `ctl reload`).
    pub async fn reload(&mut self) -> Result<(), PgError> {
        self.require_running()?;
        self.sql
            .simple("reload", "SELECT pg_reload_conf()", SQL_TIMEOUT)
            .await
            .map(|_| ())
    }

    /// `CHECKPOINT` (up to 5 minutes): shortens a following shutdown or pg_rewind.
    pub async fn checkpoint(&mut self) -> Result<(), PgError> {
        self.require_running()?;
        self.sql
            .simple("checkpoint", "CHECKPOINT", CHECKPOINT_TIMEOUT)
            .await
            .map(|_| ())
    }

    // ----- internals -----
}
