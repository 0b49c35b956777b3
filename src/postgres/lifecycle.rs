//! Starting, stopping and promoting the instance, through the guard that owns the
//! postmaster; and stopping a postmaster pgquorum did not start.

use super::*;

impl Postgres {
    /// Writes the configuration for `mode`, starts the postmaster under the guard and
    /// waits until it accepts connections (60 s). Fails early, with the tail of the
    /// server log, if it exits. On timeout PostgreSQL is left running.
    pub async fn start(&mut self, mode: StartMode) -> Result<(), PgError> {
        // A standby's data dir (its promotion never completed, e.g. the fence killed
        // it mid-promotion) must leave recovery onto a new timeline, as a promotion
        // does. Started as primary without standby.signal it would write on in the old
        // primary's timeline: a fork pg_rewind cannot see, so the old primary could
        // never follow it.
        if mode == StartMode::Primary
            && matches!(self.data_dir_state(), DataDirState::Initialized { .. })
            && self.data_dir.join("standby.signal").exists()
        {
            tracing::warn!(
                "the data dir is a standby's (a promotion did not complete): starting it as a \
                 standby and promoting it onto a new timeline"
            );
            self.set_primary_marker(true)?;
            self.start_as(StartMode::Replica {
                primary: None,
                slot: None,
            })
            .await?;
            self.writable_possible = true;
            let t0 = Instant::now();
            while !self.sql_ok().await {
                if self.reap_guard().await.is_some() || t0.elapsed() >= START_TIMEOUT {
                    return Err(PgError::StartTimeout {
                        log: self.log_path.clone(),
                        tail: os::log_tail(&self.log_path, 0, LOG_TAIL_LINES),
                    });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            self.promote_now().await?;
            self.current_mode = Some(StartMode::Primary);
            return Ok(());
        }
        self.start_as(mode).await
    }

    async fn start_as(&mut self, mode: StartMode) -> Result<(), PgError> {
        self.ensure_stopped("start").await?;
        match self.data_dir_state() {
            DataDirState::Initialized { .. } => {}
            DataDirState::Missing => {
                return Err(PgError::NoDataDir {
                    path: self.data_dir.clone(),
                });
            }
            DataDirState::Invalid(reason) => {
                return Err(PgError::DataDirInvalid {
                    path: self.data_dir.clone(),
                    reason,
                });
            }
        }
        self.prepare_dirs(false)?;
        self.check_data_dir_owner()?;
        self.clear_stale_lock()?;
        if mode == StartMode::Primary {
            self.set_primary_marker(true)?;
        }
        self.write_config(&mode)?;
        self.current_mode = Some(mode.clone());
        self.writable_possible = mode == StartMode::Primary;
        let log_from = fs::metadata(&self.log_path).map(|m| m.len()).unwrap_or(0);
        self.spawn_guard(log_from).await?;
        tracing::info!(
            ?mode,
            pid = self.postmaster_pid(),
            "PostgreSQL started, waiting for connections"
        );
        let t0 = Instant::now();
        loop {
            if let Some(exit) = self.reap_guard().await {
                return Err(PgError::StartFailed {
                    reason: exit.to_string(),
                    log: self.log_path.clone(),
                    tail: os::log_tail(&self.log_path, log_from, LOG_TAIL_LINES),
                });
            }
            if self.sql_ok().await {
                return Ok(());
            }
            // A standby may need minutes of WAL before it accepts connections (after
            // pg_rewind, or while its slot is being created on the primary). It is
            // started; the caller keeps observing it instead of blocking here.
            if matches!(mode, StartMode::Replica { .. }) && t0.elapsed() >= REPLICA_START_WAIT {
                tracing::info!("standby started; still recovering, not yet accepting connections");
                return Ok(());
            }
            if t0.elapsed() >= START_TIMEOUT {
                return Err(PgError::StartTimeout {
                    log: self.log_path.clone(),
                    tail: os::log_tail(&self.log_path, log_from, LOG_TAIL_LINES),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops PostgreSQL and returns once its whole process group is gone. `Ok` when it
    /// was not running.
    pub async fn stop(&mut self, mode: StopKind) -> Result<(), PgError> {
        self.reap_guard().await;
        let Some(g) = self.guard.as_mut() else {
            return Ok(());
        };
        g.stop_requested = true;
        let pgid = g.pgid;
        let (kind, wait) = match mode {
            StopKind::Fast => (StopKind::Fast, STOP_WAIT_FAST),
            StopKind::Immediate => (StopKind::Immediate, STOP_WAIT_IMMEDIATE),
            StopKind::Kill => (StopKind::Kill, STOP_WAIT_KILL),
        };
        // A guard that has gone quiet (stopped, starved) will not act on the request:
        // do not wait the full escalation for it before killing it and the group.
        let guard_silent = self.fence.guard_silent_for() >= fence::GUARD_SILENT;
        let wait = if guard_silent {
            tracing::warn!(
                pgid,
                "pg-guard does not answer; stopping PostgreSQL without it"
            );
            Duration::from_secs(1)
        } else {
            wait
        };
        tracing::info!(?mode, pgid, "stopping PostgreSQL");
        // A failed send means the guard is exiting already; waiting covers that.
        let _ = self.fence.send(Control::Stop(kind));
        let mut status = tokio::time::timeout(wait, g.child.wait()).await;
        if status.is_err() && !guard_silent {
            tracing::warn!(pgid, "PostgreSQL did not stop in time; killing it");
            let _ = self.fence.send(Control::Stop(StopKind::Kill));
            status = tokio::time::timeout(STOP_WAIT_KILL, g.child.wait()).await;
        }
        if status.is_err() {
            tracing::error!(
                pgid,
                "the guard does not respond; killing it and every PostgreSQL process"
            );
            os::kill_tree(pgid, true);
            if let Some(guard) = g.child.id() {
                os::kill_tree(guard as i32, false);
            }
            let _ = g.child.start_kill();
            status = tokio::time::timeout(STOP_WAIT_KILL, g.child.wait()).await;
        }
        match status {
            Ok(Ok(s)) => {
                self.finish_guard(s).await;
            }
            _ => return Err(PgError::StopTimeout { pgid }),
        }
        // The guard reaps the whole group before it exits; make sure of it. A process
        // stuck in the kernel (on storage that stopped answering) with SIGKILL pending
        // stays in the process table but can never run again: it counts as stopped.
        let t0 = Instant::now();
        let postgres = self.cfg.bin_dir.join("postgres");
        while os::instance_can_run(pgid, &self.data_dir, &postgres) {
            if t0.elapsed() >= Duration::from_secs(10) {
                return Err(PgError::StopTimeout { pgid });
            }
            os::kill_tree(pgid, true);
            os::kill_in_dir(&self.data_dir, &postgres);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = os::instance_states(pgid);
        if left.total > 0 {
            tracing::warn!(
                pgid,
                processes = left.total,
                uninterruptible = left.disk_sleep,
                "PostgreSQL is killed, but some of its processes are stuck in the kernel (storage \
                 not answering?); they hold SIGKILL and exit when their I/O returns, and can \
                 never accept or acknowledge a write again"
            );
        }
        Ok(())
    }

    /// Promotes a replica (`pg_promote(true, 60)`); `Ok` if already a primary.
    /// Queues the operator's callback for `action` (see `callbacks`); never waits.
    pub fn callback(&mut self, action: &'static str, role: &'static str) {
        self.callbacks.notify(action, role);
    }

    /// Runs `pre_promote` first (a veto is [`PgError::PrePromoteVetoed`]).
    pub async fn promote(&mut self) -> Result<(), PgError> {
        self.require_running()?;
        let rows = self
            .sql
            .simple("check recovery", "SELECT pg_is_in_recovery()", SQL_TIMEOUT)
            .await?;
        if cell(&rows, 0, 0) == Some("f") {
            return Ok(());
        }
        // Before anything that could make it writable: a veto leaves a replica.
        self.callbacks.pre_promote().await?;
        self.promote_now().await
    }

    /// Promotes a running standby (no `pre_promote`: its caller has passed it).
    async fn promote_now(&mut self) -> Result<(), PgError> {
        self.set_primary_marker(true)?;
        // From the request on: a promotion that times out may still complete.
        self.writable_possible = true;
        tracing::info!("promoting PostgreSQL");
        let rows = self
            .sql
            .simple("promote", "SELECT pg_promote(true, 60)", PROMOTE_TIMEOUT)
            .await?;
        match cell(&rows, 0, 0) {
            Some("t") => Ok(()),
            _ => Err(PgError::PromoteTimeout),
        }
    }

    pub(super) async fn spawn_guard(&mut self, log_from: u64) -> Result<(), PgError> {
        let args = GuardArgs {
            deadline: match control_for(self.fence.deadline()) {
                Control::Deadline(ns) => Some(ns),
                _ => None,
            },
            log: self.log_path.clone(),
            uid: self.run_as.as_ref().map(|u| u.uid),
            gid: self.run_as.as_ref().map(|u| u.gid),
            program: self.cfg.bin_dir.join("postgres").into_os_string(),
            args: vec![
                "-D".into(),
                self.data_dir.clone().into_os_string(),
                // Also in pgquorum.conf; on the command line it beats postgresql.auto.conf.
                "-c".into(),
                "unix_socket_directories=".into(),
            ],
        };
        let (read_end, control) =
            os::control_pipe().map_err(|e| PgError::Guard(format!("cannot create a pipe: {e}")))?;
        let mut cmd = tokio::process::Command::new(&self.guard_exe);
        cmd.arg0("pgquorum")
            .arg("pg-guard")
            .args(args.to_args())
            .stdin(Stdio::from(read_end))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        self.child_env(&mut cmd);
        let mut child = os::spawn(cmd).await.map_err(|source| PgError::Spawn {
            program: format!("{} pg-guard", self.guard_exe.display()),
            source,
        })?;
        let Some(stdout) = child.stdout.take() else {
            return Err(PgError::Guard("no stdout pipe".into()));
        };
        let mut reports = BufReader::new(stdout).lines();
        // The guard reports the postmaster (or why not) before its first heartbeat.
        let first = tokio::time::timeout(GUARD_REPORT_TIMEOUT, reports.next_line()).await;
        let report = match first {
            Ok(Ok(Some(line))) => Report::parse(&line),
            _ => None,
        };
        match report {
            Some(Report::Postmaster(pgid)) => {
                let fence = self.fence.clone();
                let reader = tokio::spawn(async move {
                    let mut last = None;
                    while let Ok(Some(line)) = reports.next_line().await {
                        fence.guard_heard();
                        match Report::parse(&line) {
                            Some(Report::Alive) | None => {}
                            Some(r) => last = Some(r),
                        }
                    }
                    last
                });
                self.guard = Some(GuardHandle {
                    child,
                    reader,
                    pgid,
                    stop_requested: false,
                });
                let guard_pid = self
                    .guard
                    .as_ref()
                    .and_then(|g| g.child.id())
                    .map(|p| p as i32);
                if let Err(e) = self.fence.attach(control, pgid, guard_pid) {
                    // The guard is gone already; the next probe reaps it.
                    tracing::warn!(error = %e, "cannot pass the fence deadline to the new guard");
                }
                self.last_exit = None;
                self.sql.reset();
                self.monitor
                    .get_or_insert_with(|| {
                        health::Monitor::spawn(
                            sql::Session::new(
                                &self.cfg.connect_host,
                                self.cfg.port,
                                self.cfg.superuser.clone(),
                            )
                            .with_tls(self.sql_tls.clone()),
                        )
                    })
                    .watch(Some(pgid));
                Ok(())
            }
            other => {
                // The guard failed before (or without) starting the postmaster.
                let _ = child.start_kill();
                let _ = tokio::time::timeout(STOP_WAIT_KILL, child.wait()).await;
                let reason = match other {
                    Some(Report::Fenced) => "the fence deadline has already passed".to_string(),
                    Some(Report::Error(m)) => m,
                    Some(r) => format!("unexpected guard report {:?}", r.to_line().trim_end()),
                    None => "the guard exited or hung without reporting".to_string(),
                };
                Err(PgError::StartFailed {
                    reason,
                    log: self.log_path.clone(),
                    tail: os::log_tail(&self.log_path, log_from, LOG_TAIL_LINES),
                })
            }
        }
    }

    /// If the guard has exited: records why, makes sure nothing of the instance is
    /// left, forgets it, and returns the reason.
    pub(super) async fn reap_guard(&mut self) -> Option<PgExit> {
        let silent = self.fence.guard_silent_for() >= fence::GUARD_SILENT;
        let g = self.guard.as_mut()?;
        let status = match g.child.try_wait() {
            Ok(Some(s)) => s,
            // PostgreSQL is gone (pgquorum's own fencer killed it, say) but the guard,
            // stopped or hung, cannot report it: end the guard so the instance counts
            // as stopped and can be started again under a working one.
            _ if silent && !os::process_alive(g.pgid) => {
                tracing::warn!(
                    pgid = g.pgid,
                    "PostgreSQL is gone and its pg-guard does not answer; killing the guard"
                );
                let _ = g.child.start_kill();
                match tokio::time::timeout(STOP_WAIT_KILL, g.child.wait()).await {
                    Ok(Ok(s)) => s,
                    _ => return None,
                }
            }
            _ => return None,
        };
        Some(self.finish_guard(status).await)
    }

    pub(super) async fn finish_guard(&mut self, status: std::process::ExitStatus) -> PgExit {
        let Some(mut g) = self.guard.take() else {
            return PgExit::GuardFailed("no guard".into());
        };
        self.fence.detach();
        // The guard has exited, so its stdout reaches EOF right after its last report.
        let last = match tokio::time::timeout(Duration::from_millis(500), &mut g.reader).await {
            Ok(Ok(last)) => last,
            _ => {
                g.reader.abort();
                None
            }
        };
        // Either fencer may have killed it: the guard (its report) or pgquorum's own.
        let fenced_here = self.fence.take_fenced_here();
        let exit = match last {
            _ if fenced_here => PgExit::Fenced,
            Some(Report::Fenced) => PgExit::Fenced,
            Some(Report::ExitStatus(_) | Report::ExitSignal(_)) if g.stop_requested => {
                PgExit::Stopped
            }
            Some(Report::ExitStatus(c)) => PgExit::Exited(c),
            Some(Report::ExitSignal(s)) => PgExit::Signaled(s),
            Some(Report::Orphaned) => PgExit::GuardFailed("the guard lost its control pipe".into()),
            Some(Report::Error(m)) => PgExit::GuardFailed(m),
            Some(Report::Postmaster(_) | Report::Alive) | None => {
                PgExit::GuardFailed(format!("the guard died without a report ({status})"))
            }
        };
        if matches!(exit, PgExit::GuardFailed(_)) {
            // The postmaster died with the guard (PDEATHSIG), but its backends may not
            // have noticed yet; they must not keep running unsupervised. Orphaned, they
            // are nobody's descendants any more, but they all run in the data dir.
            os::kill_tree(g.pgid, true);
            os::kill_in_dir(&self.data_dir, &self.cfg.bin_dir.join("postgres"));
        }
        match &exit {
            PgExit::Stopped => tracing::info!(pgid = g.pgid, "PostgreSQL stopped"),
            other => tracing::warn!(pgid = g.pgid, reason = %other, "PostgreSQL is gone"),
        }
        self.sql.reset();
        if let Some(m) = &self.monitor {
            m.watch(None);
        }
        self.writable_possible = false;
        self.last_exit = Some(exit.clone());
        exit
    }

    /// Stops a postmaster that pgquorum did not start on our data dir (immediate
    /// shutdown, SIGKILL after 10 s): it is outside the fence, and may be a primary
    /// that another member's promotion would make the second one. Says what it was.
    pub async fn stop_foreign(&mut self, pid: i32) -> Result<(), PgError> {
        if self.foreign_postmaster() != Some(pid) {
            return Ok(());
        }
        let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .replace('\0', " ")
                    .trim()
                    .to_string()
            })
            .unwrap_or_default();
        let owner = fs::metadata(format!("/proc/{pid}")).map(|m| m.uid()).ok();
        tracing::error!(
            pid,
            uid = owner,
            command = %cmdline,
            data_dir = %self.data_dir.display(),
            "a PostgreSQL server pgquorum did not start runs on this member's data dir; it \
             is not fenced by the leader lease and could accept writes while another member \
             is primary, so pgquorum stops it (immediate shutdown). Start PostgreSQL only \
             through pgquorum."
        );
        // SAFETY: kill(2); the pid was just confirmed to be a postmaster in our data dir.
        unsafe { libc::kill(pid, libc::SIGQUIT) };
        let t0 = Instant::now();
        while os::process_runs_in(pid, &self.data_dir) && os::process_alive(pid) {
            if t0.elapsed() >= STOP_WAIT_IMMEDIATE {
                tracing::error!(pid, "the foreign postmaster ignores SIGQUIT; killing it");
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if t0.elapsed() >= STOP_WAIT_IMMEDIATE + STOP_WAIT_KILL {
                return Err(PgError::ForeignPostmaster {
                    pid,
                    path: self.data_dir.clone(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!(pid, "the foreign postmaster is stopped");
        Ok(())
    }
}
