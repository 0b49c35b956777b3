//! Making a data dir: initdb and the bootstrap marker, pg_basebackup, pg_rewind (with
//! single-user crash recovery first), and re-cloning with the old dir moved aside.

use super::*;

/// How often a running pg_basebackup's progress is measured (for `/patroni`), and
/// every how many measurements it is logged.
const BASEBACKUP_PROGRESS_EVERY: Duration = Duration::from_secs(1);
const BASEBACKUP_LOG_EVERY: u64 = 5;

impl Postgres {
    /// initdb only (PostgreSQL stays stopped): the first step of a bootstrap, kept
    /// short so the HA loop renews its lease between steps. Leaves a marker beside the
    /// data directory until [`Postgres::clear_bootstrap_marker`]: a data directory
    /// whose bootstrap never got recorded in the store may be set aside.
    pub async fn initdb(&mut self) -> Result<(), PgError> {
        self.ensure_stopped("bootstrap").await?;
        if self.data_dir_state() != DataDirState::Missing {
            return Err(PgError::DataDirNotEmpty {
                path: self.data_dir.clone(),
                action: "bootstrap",
            });
        }
        self.prepare_dirs(true)?;
        let marker = self.bootstrap_marker();
        os::write_file(&marker, b"", 0o600, None).map_err(PgError::io("write", &marker))?;
        let su = self.cfg.superuser.clone();
        let pw = password(&su)?;
        // initdb reads the first line; the file is the user's, 0600, and removed on drop.
        let pwfile = os::TempSecret::create(
            self.parent(),
            "initdb-pw",
            &format!("{pw}\n"),
            self.run_as.as_ref(),
        )
        .map_err(PgError::io("create a password file in", self.parent()))?;
        let mut cmd = self.pg_command("initdb");
        let mut pwarg = OsString::from("--pwfile=");
        pwarg.push(&pwfile.path);
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-U")
            .arg(&su.username)
            .arg(pwarg)
            .args([
                "--data-checksums",
                "--auth-host=scram-sha-256",
                "--auth-local=scram-sha-256",
                "--encoding=UTF8",
                // Locale-independent and identical on every member; glibc collation
                // changes cannot corrupt indexes under C.UTF-8.
                "--locale=C.UTF-8",
                "--no-instructions",
            ]);
        tracing::info!(data_dir = %self.data_dir.display(), "running initdb");
        self.run_logged(cmd, "initdb").await?;
        drop(pwfile);
        Ok(())
    }

    pub(super) fn bootstrap_marker(&self) -> PathBuf {
        self.parent().join("pgquorum.bootstrap-pending")
    }

    /// The data directory was made by [`Postgres::initdb`] and not yet recorded.
    pub fn bootstrap_pending(&self) -> bool {
        self.bootstrap_marker().exists()
    }

    /// Called once the cluster's system identifier is recorded in the store.
    pub fn clear_bootstrap_marker(&self) -> Result<(), PgError> {
        let p = self.bootstrap_marker();
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(PgError::io("remove", &p)(e)),
        }
    }

    /// initdb, configure, start as primary (with the current fence deadline, normally
    /// none yet), create the replication role. Returns the system identifier. Leaves
    /// PostgreSQL running. Needs an absent or empty data directory; a failure after
    /// initdb leaves the initialized directory in place (see `move_data_dir_aside`).
    pub async fn bootstrap(&mut self) -> Result<u64, PgError> {
        self.initdb().await?;
        self.start(StartMode::Primary).await?;
        self.create_replication_role().await?;
        let rows = self
            .sql
            .simple(
                "read system identifier",
                "SELECT system_identifier FROM pg_control_system()",
                SQL_TIMEOUT,
            )
            .await?;
        let id = cell(&rows, 0, 0)
            .and_then(|v| v.parse::<i64>().ok())
            .ok_or_else(|| PgError::Sql {
                what: "read system identifier".into(),
                message: "no value".into(),
                code: None,
            })?;
        Ok(id as u64)
    }

    /// Creates (or updates) the replication role on a running primary. Idempotent:
    /// run again before the cluster is recorded, because a bootstrap can be cut
    /// short (fenced) between initdb and the role's creation.
    pub async fn ensure_replication_role(&mut self) -> Result<(), PgError> {
        self.require_primary("creating the replication role")
            .await?;
        self.create_replication_role().await
    }

    pub(super) async fn create_replication_role(&mut self) -> Result<(), PgError> {
        let repl = self.cfg.replication.clone();
        if repl.username == self.cfg.superuser.username {
            return Ok(());
        }
        // Send a SCRAM verifier, never the password: a failing statement is logged
        // with its text by the server.
        let verifier = postgres_protocol::password::scram_sha_256(password(&repl)?.as_bytes());
        let rows = self
            .sql
            .query(
                "look up the replication role",
                "SELECT 1 FROM pg_roles WHERE rolname = $1",
                &[&repl.username],
                SQL_TIMEOUT,
            )
            .await?;
        let verb = if rows.is_empty() { "CREATE" } else { "ALTER" };
        let stmt = format!(
            "{verb} ROLE {} WITH LOGIN REPLICATION PASSWORD {}",
            conf::sql_ident(&repl.username),
            conf::sql_literal(&verifier)
        );
        self.sql
            .simple("create the replication role", &stmt, SQL_TIMEOUT)
            .await?;
        Ok(())
    }

    /// Clones `from` into the empty (or absent) data directory with pg_basebackup,
    /// through slot `slot` when the source has it. The replication password goes
    /// through the passfile, never the command line. Does not start PostgreSQL.
    pub async fn basebackup(&mut self, from: &ConnTarget, slot: &str) -> Result<(), PgError> {
        if !conf::valid_slot_name(slot) {
            return Err(PgError::InvalidSlotName(slot.to_string()));
        }
        self.ensure_stopped("basebackup").await?;
        if self.data_dir_state() != DataDirState::Missing {
            return Err(PgError::DataDirNotEmpty {
                path: self.data_dir.clone(),
                action: "basebackup",
            });
        }
        self.prepare_dirs(true)?;
        self.write_passfile()?;
        // The clone verifies its source against the cluster CA (with [tls]).
        self.write_ssl_files()?;
        let use_slot = self.source_has_slot(from, slot).await;
        let conninfo = format!(
            "host={} port={} user={} application_name=pgquorum_basebackup connect_timeout=10{}",
            conf::conninfo_quote(&from.host),
            from.port,
            conf::conninfo_quote(&self.cfg.replication.username),
            self.ssl_conninfo(),
        );
        let mut cmd = self.pg_command("pg_basebackup");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args([
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-password",
                "-d",
                &conninfo,
            ])
            .env("PGPASSFILE", &self.passfile);
        if use_slot {
            cmd.args(["-S", slot]);
        }
        let total = self.source_size(from).await;
        tracing::info!(
            %from,
            slot = use_slot.then_some(slot),
            source_mb = total.map(|b| b / 1_000_000),
            "cloning with pg_basebackup"
        );
        let progress = self.copy_progress.clone();
        let report = |copied_bytes, seconds| {
            progress.send_replace(Some(CopyProgress {
                copied_bytes,
                total_bytes: total,
                seconds,
            }));
        };
        report(0, 0);
        let copy = self.run_logged(cmd, "pg_basebackup");
        tokio::pin!(copy);
        let started = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(BASEBACKUP_PROGRESS_EVERY);
        tick.tick().await;
        let mut ticks = 0u64;
        // Progress in the log while the copy runs: a large clone takes minutes.
        let copied = loop {
            tokio::select! {
                r = &mut copy => break r,
                _ = tick.tick() => {
                    let dir = self.data_dir.clone();
                    let done = tokio::task::spawn_blocking(move || Self::dir_bytes(&dir))
                        .await
                        .unwrap_or(0);
                    report(done, started.elapsed().as_secs());
                    ticks += 1;
                    if !ticks.is_multiple_of(BASEBACKUP_LOG_EVERY) {
                        continue;
                    }
                    tracing::info!(
                        copied_mb = done / 1_000_000,
                        source_mb = total.map(|b| b / 1_000_000),
                        percent = total.filter(|t| *t > 0).map(|t| (done * 100 / t).min(100)),
                        seconds = started.elapsed().as_secs(),
                        "pg_basebackup in progress"
                    );
                }
            }
        };
        self.copy_progress.send_replace(None);
        copied?;
        tracing::info!(
            seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
            "pg_basebackup done"
        );
        self.set_primary_marker(false)
    }

    /// The source's databases in bytes (what a clone copies, roughly: WAL and
    /// config files aside), for progress reports; `None` when it cannot tell.
    async fn source_size(&self, from: &ConnTarget) -> Option<u64> {
        let mut s = sql::Session::new(&from.host, from.port, self.cfg.superuser.clone())
            .with_tls(self.sql_tls.clone());
        let rows = s
            .simple(
                "size of the clone source",
                "SELECT sum(pg_database_size(oid))::bigint FROM pg_database",
                SQL_TIMEOUT,
            )
            .await
            .ok()?;
        cell(&rows, 0, 0)?.parse().ok()
    }

    pub(super) async fn source_has_slot(&self, from: &ConnTarget, slot: &str) -> bool {
        let mut s = sql::Session::new(&from.host, from.port, self.cfg.superuser.clone())
            .with_tls(self.sql_tls.clone());
        match s
            .query(
                "look up the slot on the source",
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND slot_type = 'physical'",
                &[&slot],
                SQL_TIMEOUT,
            )
            .await
        {
            Ok(rows) => !rows.is_empty(),
            Err(e) => {
                tracing::warn!(%from, error = %e, "cannot check the slot on the source; cloning without it");
                false
            }
        }
    }

    /// pg_rewind onto `from`. PostgreSQL must be stopped. A data directory that was not
    /// shut down cleanly is first taken through crash recovery in single-user mode
    /// (`postgres --single`, as the OS user) because pg_rewind needs a clean shutdown;
    /// standby.signal and recovery.signal are removed for that (single-user mode refuses
    /// standby mode; `start` writes the signal file again).
    pub async fn rewind(&mut self, from: &ConnTarget) -> Result<(), PgError> {
        self.ensure_stopped("rewind").await?;
        if !matches!(self.data_dir_state(), DataDirState::Initialized { .. }) {
            return Err(PgError::NoDataDir {
                path: self.data_dir.clone(),
            });
        }
        self.prepare_dirs(false)?;
        self.check_data_dir_owner()?;
        self.clear_stale_lock()?;
        let state = self.cluster_state().await?;
        if !conf::is_clean_shutdown(&state) {
            tracing::info!(%state, "running crash recovery in single-user mode before pg_rewind");
            for f in ["standby.signal", "recovery.signal"] {
                let p = self.data_dir.join(f);
                match fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(PgError::io("remove", &p)(e)),
                }
            }
            let mut cmd = self.pg_command("postgres");
            // --single must come first. archive_command=false keeps WAL segments that
            // pg_rewind may need from being recycled at the shutdown checkpoint.
            cmd.arg("--single").arg("-D").arg(&self.data_dir).args([
                "-c",
                "archive_mode=on",
                "-c",
                "archive_command=false",
                "postgres",
            ]);
            self.run_logged(cmd, "postgres --single (crash recovery)")
                .await?;
            let after = self.cluster_state().await?;
            if !conf::is_clean_shutdown(&after) {
                return Err(PgError::NotCleanAfterRecovery(after));
            }
        }
        // A just-promoted source records its new timeline in pg_control only at its
        // next checkpoint; before that pg_rewind sees both on the old timeline, says
        // "no rewind required" and the target can never follow.
        let mut source_sql = sql::Session::new(&from.host, from.port, self.cfg.superuser.clone())
            .with_tls(self.sql_tls.clone());
        source_sql
            .simple(
                "CHECKPOINT on the rewind source",
                "CHECKPOINT",
                CHECKPOINT_TIMEOUT,
            )
            .await?;
        let su = self.cfg.superuser.clone();
        let secret = os::TempSecret::create(
            self.parent(),
            "rewind-pgpass",
            &conf::pgpass_line(&su.username, &password(&su)?),
            self.run_as.as_ref(),
        )
        .map_err(PgError::io("create a password file in", self.parent()))?;
        self.write_ssl_files()?;
        let source = format!(
            "host={} port={} user={} dbname=postgres connect_timeout=10{}",
            conf::conninfo_quote(&from.host),
            from.port,
            conf::conninfo_quote(&su.username),
            self.ssl_conninfo(),
        );
        let mut target = OsString::from("--target-pgdata=");
        target.push(&self.data_dir);
        let mut cmd = self.pg_command("pg_rewind");
        cmd.arg(target)
            .arg(format!("--source-server={source}"))
            .arg("--no-ensure-shutdown")
            .env("PGPASSFILE", &secret.path);
        tracing::info!(%from, "running pg_rewind");
        self.run_logged(cmd, "pg_rewind").await?;
        self.set_primary_marker(false)
    }

    /// For when rewind fails, or an operator asked (`ctl reinit`): moves the data
    /// directory aside to `<data_dir>.failed-<unix-seconds>` (never deletes it), then
    /// clones `from`. Returns where the old directory went.
    pub async fn reclone(
        &mut self,
        from: &ConnTarget,
        slot: &str,
    ) -> Result<Option<PathBuf>, PgError> {
        self.ensure_stopped("reclone").await?;
        let moved = if self.data_dir_state() != DataDirState::Missing {
            Some(self.move_data_dir_aside()?)
        } else {
            None
        };
        self.basebackup(from, slot).await?;
        Ok(moved)
    }

    /// Bytes of the files under `path` (what a moved-aside data dir holds).
    pub fn dir_bytes(path: &Path) -> u64 {
        let mut total = 0;
        let mut dirs = vec![path.to_path_buf()];
        while let Some(d) = dirs.pop() {
            for e in fs::read_dir(&d).into_iter().flatten().flatten() {
                match e.metadata() {
                    Ok(m) if m.is_dir() => dirs.push(e.path()),
                    Ok(m) => total += m.len(),
                    Err(_) => {}
                }
            }
        }
        total
    }

    /// Removes a data directory that `move_data_dir_aside` moved (an operator's
    /// `reinit --discard-old`, after the new clone succeeded); any other path is
    /// refused.
    pub fn remove_moved_aside(&self, path: &Path) -> Result<(), PgError> {
        let prefix = format!("{}.failed-", self.data_dir.display());
        if !path.to_string_lossy().starts_with(&prefix) || path == self.data_dir {
            return Err(PgError::DataDirInvalid {
                path: path.to_path_buf(),
                reason: format!("not a data directory moved aside (those start with {prefix})"),
            });
        }
        fs::remove_dir_all(path).map_err(PgError::io("remove", path))
    }

    /// Renames the data directory to `<data_dir>.failed-<unix-seconds>[-n]` and returns
    /// the new path. The operator deletes it when it is no longer needed.
    pub fn move_data_dir_aside(&mut self) -> Result<PathBuf, PgError> {
        if self.guard.is_some() {
            return Err(PgError::Running {
                action: "moving the data directory",
            });
        }
        let base = format!("{}.failed-{}", self.data_dir.display(), os::unix_seconds());
        let mut target = PathBuf::from(&base);
        let mut n = 1;
        while target.exists() {
            target = PathBuf::from(format!("{base}-{n}"));
            n += 1;
        }
        fs::rename(&self.data_dir, &target).map_err(PgError::io("move aside", &self.data_dir))?;
        tracing::warn!(
            from = %self.data_dir.display(),
            to = %target.display(),
            "moved the data directory aside; delete it once it is no longer needed"
        );
        Ok(target)
    }
}
