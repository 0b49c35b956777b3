//! Looking at the instance: what the data dir holds, whether the postmaster runs and
//! answers, its role and positions (each statement bounded), and the health monitor's
//! view.

use super::*;

/// The second look at an instance the monitor found silent.
const FRESH_CHECK_TIMEOUT: Duration = Duration::from_millis(300);
/// SQLSTATE `too_many_connections`.
const TOO_MANY_CONNECTIONS: &str = "53300";
const RETRY_PAUSE: Duration = Duration::from_millis(50);

impl Postgres {
    /// What the data directory holds. Reads `global/pg_control` directly (its first
    /// 8 bytes are the system identifier in every PostgreSQL version); spawns nothing.
    pub fn data_dir_state(&self) -> DataDirState {
        let dir = &self.data_dir;
        let md = match fs::metadata(dir) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return DataDirState::Missing,
            Err(e) => return DataDirState::Invalid(format!("cannot stat: {e}")),
        };
        if !md.is_dir() {
            return DataDirState::Invalid("not a directory".into());
        }
        match fs::read_dir(dir) {
            Ok(mut entries) => {
                if entries.next().is_none() {
                    return DataDirState::Missing;
                }
            }
            Err(e) => return DataDirState::Invalid(format!("cannot list: {e}")),
        }
        if !dir.join("PG_VERSION").is_file() {
            return DataDirState::Invalid(
                "not empty but has no PG_VERSION: not a PostgreSQL data directory".into(),
            );
        }
        match os::read_nofollow(&dir.join("global/pg_control")) {
            Ok(b) if b.len() >= 8 => {
                let mut id = [0u8; 8];
                id.copy_from_slice(&b[..8]);
                DataDirState::Initialized {
                    system_id: u64::from_ne_bytes(id),
                }
            }
            Ok(_) => DataDirState::Invalid("global/pg_control is truncated".into()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => DataDirState::Invalid(
                "global/pg_control is missing (an interrupted pg_basebackup?)".into(),
            ),
            Err(e) => DataDirState::Invalid(format!("cannot read global/pg_control: {e}")),
        }
    }

    /// Never fails: whatever cannot be found out is left `None`/0/empty. Runs SQL only
    /// while our postmaster runs; each statement is bounded by 2 s.
    pub async fn probe(&mut self) -> PgProbe {
        let mut p = PgProbe {
            data_dir: self.data_dir_state(),
            ..PgProbe::default()
        };
        self.reap_guard().await;
        p.running = self.guard.is_some();
        p.postmaster_pid = self.postmaster_pid();
        p.last_exit = self.last_exit.clone();
        if !p.running {
            p.foreign_postmaster = self.foreign_postmaster();
            return p;
        }
        p.liveness = self.liveness();
        self.refresh_ssl_if_changed().await;
        // The monitor's view is up to one probe old, and a kill must not rest on a
        // hang that has just ended: the kernel's view is read again now.
        let now = p
            .postmaster_pid
            .map(os::instance_states)
            .unwrap_or_default();
        if p.liveness.postmaster_stopped.is_some() && !now.leader_stopped {
            p.liveness.postmaster_stopped = None;
        }
        // No answer for a whole probe timeout: ask once more. Briefly while the kernel
        // shows a process stopped or waiting on storage (a hung instance would
        // otherwise stretch every cycle by the full SQL timeout); with the full
        // timeout when every process can run: a resumed postmaster serves the clients
        // queued while it was frozen before it reaches this connection.
        let timeout = if p
            .liveness
            .unanswered
            .is_some_and(|d| d >= health::PROBE_TIMEOUT)
            && (now.stopped > 0 || now.disk_sleep > 0 || now.total == 0)
        {
            FRESH_CHECK_TIMEOUT
        } else {
            SQL_TIMEOUT
        };
        let Some(rows) = self.first_answer(timeout).await else {
            return p;
        };
        p.accepting = true;
        // It answers now, whatever the monitor saw last.
        p.liveness.unanswered = None;
        p.liveness.last_answer = Some(tokio::time::Instant::now());
        p.in_recovery = cell(&rows, 0, 0).map(|v| v == "t");
        if p.in_recovery == Some(false) {
            // Promoted by someone else, maybe: it stays "may be primary" until it stops.
            self.writable_possible = true;
        }
        match p.in_recovery {
            Some(false) => self.probe_primary(&mut p).await,
            Some(true) => self.probe_replica(&mut p).await,
            None => {}
        }
        // One row always; parameter names contain no commas.
        if let Ok(rows) = self
            .sql
            .simple(
                "probe pending restart",
                "SELECT current_setting('server_version_num'), \
                 coalesce(string_agg(name, ',' ORDER BY name), ''), \
                 extract(epoch FROM pg_postmaster_start_time()) \
                 FROM pg_settings WHERE pending_restart",
                SQL_TIMEOUT,
            )
            .await
        {
            p.server_version = cell(&rows, 0, 0).and_then(|v| v.parse().ok());
            p.postmaster_start_ms = epoch_ms(cell(&rows, 0, 2));
            p.pending_restart = cell(&rows, 0, 1)
                .map(|v| {
                    v.split(',')
                        .filter(|n| !n.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
        }
        p
    }

    /// `SELECT pg_is_in_recovery()` within `timeout`. "Too many clients" is no
    /// answer: backends hung on storage hold their slots, and a postmaster resumed
    /// after a freeze refuses connections until the attempts queued meanwhile have
    /// ended, so it is asked again until the timeout.
    async fn first_answer(&mut self, timeout: Duration) -> Option<sql::TextRows> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self
                .sql
                .simple("probe", "SELECT pg_is_in_recovery()", left)
                .await
            {
                Ok(rows) => return Some(rows),
                Err(e) if e.sqlstate() == Some(TOO_MANY_CONNECTIONS) && left > RETRY_PAUSE => {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(_) => return None,
            }
        }
    }

    pub(super) async fn probe_primary(&mut self, p: &mut PgProbe) {
        if let Ok(rows) = self
            .sql
            .simple(
                "probe primary",
                "SELECT pg_current_wal_lsn(), substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8), \
                        current_setting('synchronous_standby_names')",
                SQL_TIMEOUT,
            )
            .await
        {
            p.write_lsn = lsn(cell(&rows, 0, 0));
            p.timeline = cell(&rows, 0, 1)
                .and_then(|t| u64::from_str_radix(t, 16).ok())
                .unwrap_or(0);
            p.synchronous_standby_names = cell(&rows, 0, 2)
                .map(conf::parse_standby_names)
                .unwrap_or_default();
        }
        if let Ok(rows) = self
            .sql
            .simple(
                "probe replication",
                "SELECT application_name, state, sync_state, flush_lsn, replay_lsn \
                 FROM pg_stat_replication ORDER BY application_name",
                SQL_TIMEOUT,
            )
            .await
        {
            p.replicas = rows
                .iter()
                .map(|r| ReplicaInfo {
                    application_name: text(r, 0),
                    state: text(r, 1),
                    sync_state: text(r, 2),
                    flush_lsn: lsn(r.get(3).and_then(|v| v.as_deref())),
                    replay_lsn: lsn(r.get(4).and_then(|v| v.as_deref())),
                })
                .collect();
        }
    }

    pub(super) async fn probe_replica(&mut self, p: &mut PgProbe) {
        let Ok(rows) = self
            .sql
            .simple(
                "probe replica",
                "SELECT pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn(), \
                        (pg_control_checkpoint()).timeline_id, r.received_tli, r.status, \
                        r.sender_host, r.sender_port, \
                        (SELECT max(('x' || substr(name, 1, 8))::bit(32)::int) \
                           FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{8}[.]history$'), \
                        pg_is_wal_replay_paused(), \
                        extract(epoch FROM pg_last_xact_replay_timestamp()) \
                 FROM (SELECT 1) AS one LEFT JOIN pg_stat_wal_receiver AS r ON true",
                SQL_TIMEOUT,
            )
            .await
        else {
            return;
        };
        p.receive_lsn = lsn(cell(&rows, 0, 0));
        p.replay_lsn = lsn(cell(&rows, 0, 1));
        p.replay_paused = cell(&rows, 0, 8) == Some("t");
        p.last_replayed_ms = epoch_ms(cell(&rows, 0, 9));
        let num = |c: usize| cell(&rows, 0, c).and_then(|v| v.parse::<u64>().ok());
        // The newest of: the timeline being received, the last checkpoint's, and the
        // newest history file (a replayed switch shows there before a restartpoint).
        p.timeline = [num(3), num(2), num(7)]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(0);
        if cell(&rows, 0, 4) == Some("streaming")
            && let (Some(host), Some(port)) = (cell(&rows, 0, 5), num(6))
        {
            p.streaming_from = Some(
                ConnTarget {
                    host: host.to_string(),
                    port: port as u16,
                }
                .to_string(),
            );
        }
    }

    /// The primary's current WAL write position.
    pub async fn current_wal_lsn(&mut self) -> Result<u64, PgError> {
        let rows = self
            .sql
            .simple(
                "current WAL position",
                "SELECT pg_current_wal_lsn()",
                SQL_TIMEOUT,
            )
            .await?;
        Ok(lsn(cell(&rows, 0, 0)))
    }

    /// What the health monitor knows about the running instance (default when none runs).
    pub fn liveness(&self) -> Liveness {
        match (&self.monitor, &self.guard) {
            (Some(m), Some(_)) => m.liveness(tokio::time::Instant::now()),
            _ => Liveness::default(),
        }
    }

    /// `SELECT 1` within 1 s, connecting if needed.
    pub async fn sql_ok(&mut self) -> bool {
        self.sql
            .simple("SELECT 1", "SELECT 1", SQL_OK_TIMEOUT)
            .await
            .is_ok()
    }
}
