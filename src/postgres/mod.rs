//! PostgreSQL: the only code in pgquorum that spawns processes or runs SQL.
//!
//! [`Postgres`] is driven by the supervisor (`crate::supervisor`), which decides;
//! this module only does. The postmaster never is a child of pgquorum: it runs under
//! `pgquorum pg-guard` ([`guard`]), which kills it when the fence deadline passes or
//! when pgquorum goes away. See `DESIGN.md` beside this file.

mod conf;
mod fence;
pub mod guard;
mod health;
mod os;
mod sql;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt as _, BufReader};

pub use self::fence::FenceHandle;
use self::fence::control_for;
use self::guard::{Control, GuardArgs, Report, StopKind};
pub use self::health::{Liveness, PROBE_TIMEOUT as HEALTH_PROBE_TIMEOUT};
pub use self::os::GroupStates;
use self::os::RunAs;
pub use crate::config::pg_rules::{check_synchronous_commit, validate_cluster_settings};
use crate::config::{Credentials, PostgresConfig};
use crate::lsn::parse_lsn;

/// Each SQL statement of [`Postgres::probe`].
const SQL_TIMEOUT: Duration = Duration::from_secs(2);
/// [`Postgres::sql_ok`], connection included.
const SQL_OK_TIMEOUT: Duration = Duration::from_secs(1);
/// [`Postgres::start`] until PostgreSQL accepts connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `start` waits for a standby to accept connections before returning.
const REPLICA_START_WAIT: Duration = Duration::from_secs(3);
/// The guard reports the postmaster pid within this time or the start failed.
const GUARD_REPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// `pg_promote(true, 60)` plus slack.
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(65);
/// A requested CHECKPOINT (immediate) on a busy server can take a while.
const CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long [`Postgres::stop`] waits for the guard per mode before forcing. The guard
/// itself escalates fast → SIGQUIT after 30 s → SIGKILL 10 s later.
const STOP_WAIT_FAST: Duration = Duration::from_secs(45);
const STOP_WAIT_IMMEDIATE: Duration = Duration::from_secs(15);
const STOP_WAIT_KILL: Duration = Duration::from_secs(5);
/// Lines of the PostgreSQL log quoted in errors.
const LOG_TAIL_LINES: usize = 25;

/// Another member's PostgreSQL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnTarget {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for ConnTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum DataDirState {
    /// Absent or empty: ready for bootstrap or basebackup.
    #[default]
    Missing,
    Initialized {
        system_id: u64,
    },
    /// Not empty and not a usable data directory; the reason says what is wrong.
    Invalid(String),
}

/// One row of `pg_stat_replication` (LSNs are 0 when NULL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaInfo {
    pub application_name: String,
    pub state: String,
    pub sync_state: String,
    pub flush_lsn: u64,
    pub replay_lsn: u64,
}

/// Why the last postmaster run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PgExit {
    /// Stopped on request ([`Postgres::stop`]).
    Stopped,
    /// Killed by the guard because the fence deadline passed.
    Fenced,
    /// The postmaster exited on its own with this code (crash, or failed start).
    Exited(i32),
    /// The postmaster was killed by this signal from outside (e.g. the OOM killer).
    Signaled(i32),
    /// The guard failed or was killed; the whole process group was killed as well.
    GuardFailed(String),
}

impl fmt::Display for PgExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgExit::Stopped => write!(f, "stopped on request"),
            PgExit::Fenced => write!(f, "killed: the lease deadline passed"),
            PgExit::Exited(c) => write!(f, "postmaster exited with status {c}"),
            PgExit::Signaled(s) => write!(f, "postmaster killed by signal {s}"),
            PgExit::GuardFailed(m) => write!(f, "guard failed: {m}"),
        }
    }
}

/// What [`Postgres::probe`] found. Missing information is `None`/0/empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PgProbe {
    pub data_dir: DataDirState,
    /// Our postmaster process is alive.
    pub running: bool,
    /// It answers SQL.
    pub accepting: bool,
    /// `pg_is_in_recovery()`.
    pub in_recovery: Option<bool>,
    /// Primary: from the current WAL file name. Replica: `received_tli` of the WAL
    /// receiver, else the last checkpoint's timeline.
    pub timeline: u64,
    /// Primary: `pg_current_wal_lsn()`.
    pub write_lsn: u64,
    /// Replica: `pg_last_wal_receive_lsn()`.
    pub receive_lsn: u64,
    /// Replica: `pg_last_wal_replay_lsn()`.
    pub replay_lsn: u64,
    /// Replica: the sender's `host:port` while the WAL receiver is streaming.
    pub streaming_from: Option<String>,
    /// Primary: `pg_stat_replication` (includes pg_basebackup sessions, by name
    /// `pgquorum_basebackup`).
    pub replicas: Vec<ReplicaInfo>,
    /// Primary: the member named by `synchronous_standby_names` (unquoted), `None`
    /// when it is empty.
    pub synchronous_standby_names: Option<String>,
    /// Postmaster pid (= process group id) while running.
    pub postmaster_pid: Option<i32>,
    /// Why the last run ended; `None` while running or before the first start.
    pub last_exit: Option<PgExit>,
    /// A postmaster that pgquorum did not start holds the data directory (its pid).
    /// `start`, `rewind`, `basebackup` and `reclone` refuse to run until it is stopped.
    pub foreign_postmaster: Option<i32>,
    /// Primary: backends waiting for a synchronous standby (`SyncRep`).
    pub sync_waiters: u64,
    /// The health monitor's view of the running instance (see [`health`]).
    pub liveness: Liveness,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartMode {
    Primary,
    /// `primary: None` = standby without upstream (replays what it has, restores only).
    Replica {
        primary: Option<ConnTarget>,
        slot: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// SIGINT (fast shutdown: clients disconnected, checkpoint); SIGQUIT after 30 s.
    Fast,
    /// SIGQUIT (immediate shutdown: no checkpoint, crash recovery at next start).
    Immediate,
    /// SIGKILL to the whole process group.
    Kill,
}

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error(
        "postgresql.os_user {user:?} does not exist; pgquorum runs as root and starts \
         PostgreSQL as that user: create it (e.g. `useradd --system postgres`) or set os_user"
    )]
    NoSuchUser { user: String },
    #[error("cannot look up OS user {user:?}: {source}")]
    UserLookup {
        user: String,
        #[source]
        source: io::Error,
    },
    #[error("invalid PostgreSQL settings: {0}")]
    Config(String),
    #[error(
        "PostgreSQL runs as OS user {user:?}, which cannot enter {dir} (mode {mode:04o}, owner uid \
         {owner}); run `chmod o+x {dir}` or move postgresql.data_dir below a directory that user can reach"
    )]
    NotTraversable {
        user: String,
        dir: PathBuf,
        mode: u32,
        owner: u32,
    },
    #[error(
        "data directory {path} is owned by uid {owner}, but PostgreSQL runs as {user:?}; \
         run `chown -R {user}: {path}` if this is the right data directory"
    )]
    WrongOwner {
        path: PathBuf,
        owner: u32,
        user: String,
    },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the password of PostgreSQL user {user:?}: {source}")]
    Password {
        user: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "data directory {path} is not empty; {action} needs an empty one. pgquorum never deletes \
         data: move the directory away yourself, or use reclone, which moves it aside"
    )]
    DataDirNotEmpty { path: PathBuf, action: &'static str },
    #[error("data directory {path} has no PostgreSQL cluster; bootstrap or basebackup first")]
    NoDataDir { path: PathBuf },
    #[error("data directory {path} cannot be used: {reason}")]
    DataDirInvalid { path: PathBuf, reason: String },
    #[error("PostgreSQL is running; stop it before {action}")]
    Running { action: &'static str },
    #[error("PostgreSQL is not running")]
    NotRunning,
    #[error(
        "a PostgreSQL server that pgquorum did not start (pid {pid}) is running on {path}; \
         stop it (e.g. `pg_ctl -D {path} stop`) and pgquorum will take over"
    )]
    ForeignPostmaster { pid: i32, path: PathBuf },
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("{program} failed ({status}); last lines of {log}:\n{tail}")]
    Command {
        program: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("PostgreSQL did not start ({reason}); last lines of {log}:\n{tail}")]
    StartFailed {
        reason: String,
        log: PathBuf,
        tail: String,
    },
    #[error(
        "PostgreSQL did not accept connections within {} s and is still running (crash \
         recovery, or a replica that cannot reach a consistent state); last lines of {log}:\n{tail}",
        START_TIMEOUT.as_secs()
    )]
    StartTimeout { log: PathBuf, tail: String },
    #[error("PostgreSQL process group {pgid} is still alive after stop; check `ps -g {pgid}`")]
    StopTimeout { pgid: i32 },
    #[error("pg-guard: {0}")]
    Guard(String),
    #[error("SQL ({what}) failed: {message}")]
    Sql {
        what: String,
        message: String,
        /// SQLSTATE, when the server answered.
        code: Option<String>,
    },
    #[error("SQL ({what}) timed out")]
    SqlTimeout { what: String },
    #[error("{action} needs a primary, but PostgreSQL is in recovery")]
    NotPrimary { action: &'static str },
    #[error("promotion did not finish within 60 s; PostgreSQL is still in recovery")]
    PromoteTimeout,
    #[error(
        "{0:?} is not a valid replication slot name (lowercase letters, digits and _; at most 63); \
         use Postgres::slot_name"
    )]
    InvalidSlotName(String),
    #[error("pg_controldata output has no cluster state; output:\n{0}")]
    ControlData(String),
    #[error(
        "crash recovery in single-user mode left the cluster in state {0:?}; pg_rewind cannot run"
    )]
    NotCleanAfterRecovery(String),
}

impl PgError {
    fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> PgError + use<> {
        let path = path.to_path_buf();
        move |source| PgError::Io {
            action,
            path,
            source,
        }
    }

    fn sql(what: String, e: &tokio_postgres::Error) -> PgError {
        PgError::Sql {
            what,
            message: sql::describe(e),
            code: e.code().map(|c| c.code().to_string()),
        }
    }

    fn sqlstate(&self) -> Option<&str> {
        match self {
            PgError::Sql { code, .. } => code.as_deref(),
            _ => None,
        }
    }
}

/// The running guard, seen from pgquorum. The write end of its control pipe lives in
/// the [`FenceHandle`].
struct GuardHandle {
    child: tokio::process::Child,
    /// Reads the guard's reports as they come (its heartbeat feeds the
    /// [`FenceHandle`]); yields the last report other than the heartbeat.
    reader: tokio::task::JoinHandle<Option<Report>>,
    /// Postmaster pid = process group id.
    pgid: i32,
    stop_requested: bool,
}

/// A supervised PostgreSQL instance on this host.
pub struct Postgres {
    cfg: PostgresConfig,
    member: String,
    /// `Some` when pgquorum runs as root: every PostgreSQL binary runs as this user.
    run_as: Option<RunAs>,
    guard_exe: PathBuf,
    data_dir: PathBuf,
    log_path: PathBuf,
    passfile: PathBuf,
    fence: FenceHandle,
    guard: Option<GuardHandle>,
    last_exit: Option<PgExit>,
    sql: sql::Session,
    /// Cluster-wide settings from the store (`/pg/config`); the node's own win.
    cluster_parameters: BTreeMap<String, String>,
    cluster_pg_hba: Vec<String>,
    /// How the running postmaster was started (to re-render its files on reload).
    current_mode: Option<StartMode>,
    /// The running postmaster was started as primary, promoted, or answered as a
    /// primary: it may accept writes until it stops. Never cleared while it runs.
    writable_possible: bool,
    /// The cluster runs in synchronous mode: no setting may weaken synchronous_commit.
    synchronous_mode: bool,
    /// Started with the first postmaster (it needs the runtime); watches whichever runs.
    monitor: Option<health::Monitor>,
}

impl Postgres {
    /// Validates the settings and resolves the OS user; no other IO.
    pub fn new(cfg: PostgresConfig, member_name: String) -> Result<Self, PgError> {
        if member_name.is_empty() || member_name.contains(['\n', '\r', '\0']) {
            return Err(PgError::Config(format!(
                "member name {member_name:?} must be non-empty and single-line"
            )));
        }
        conf::check_parameters(&cfg.parameters).map_err(PgError::Config)?;
        conf::check_role_name("postgresql.superuser.username", &cfg.superuser.username)
            .map_err(PgError::Config)?;
        conf::check_role_name("postgresql.replication.username", &cfg.replication.username)
            .map_err(PgError::Config)?;
        conf::check_line_value("postgresql.listen_host", &cfg.listen_host)
            .map_err(PgError::Config)?;
        for l in &cfg.pg_hba {
            conf::check_line_value("postgresql.pg_hba entries", l).map_err(PgError::Config)?;
        }
        let data_dir =
            std::path::absolute(&cfg.data_dir).map_err(PgError::io("resolve", &cfg.data_dir))?;
        let parent = data_dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .ok_or_else(|| {
                PgError::Config(format!(
                    "postgresql.data_dir {} needs a parent directory (the log file and passfile live there)",
                    data_dir.display()
                ))
            })?
            .to_path_buf();
        let run_as = if os::is_root() {
            let u = os::lookup_user(&cfg.os_user)
                .map_err(|source| PgError::UserLookup {
                    user: cfg.os_user.clone(),
                    source,
                })?
                .ok_or_else(|| PgError::NoSuchUser {
                    user: cfg.os_user.clone(),
                })?;
            if u.uid == 0 {
                return Err(PgError::Config(format!(
                    "postgresql.os_user {:?} is root; PostgreSQL refuses to run as root",
                    cfg.os_user
                )));
            }
            Some(u)
        } else {
            None
        };
        let sql = sql::Session::new(&cfg.connect_host, cfg.port, cfg.superuser.clone());
        Ok(Self {
            log_path: parent.join("postgresql.log"),
            passfile: parent.join("pgquorum.pgpass"),
            data_dir,
            member: member_name,
            run_as,
            // The running binary even if its file was replaced by an upgrade.
            guard_exe: PathBuf::from("/proc/self/exe"),
            fence: FenceHandle::default(),
            guard: None,
            last_exit: None,
            sql,
            cfg,
            cluster_parameters: BTreeMap::new(),
            cluster_pg_hba: Vec::new(),
            current_mode: None,
            writable_possible: false,
            synchronous_mode: false,
            monitor: None,
        })
    }

    /// The executable started as `<exe> pg-guard ...`. Default: this process's own
    /// binary. Tests, whose binary is a test harness, pass the pgquorum binary.
    pub fn with_guard_exe(mut self, path: impl Into<PathBuf>) -> Self {
        self.guard_exe = path.into();
        self
    }

    /// `pgq_` + the member name sanitized to `[a-z0-9_]` (at most 63 bytes).
    pub fn slot_name(member: &str) -> String {
        conf::slot_name(member)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The PostgreSQL server log (outside the data directory, so never copied by
    /// pg_basebackup or pg_rewind). initdb, pg_basebackup and pg_rewind log there too.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The data directory may hold WAL that no other member has: it ran as a primary
    /// since it was last cloned or rewound (a marker beside the data directory, set
    /// before every start as primary and every promotion), or it is a data directory
    /// pgquorum did not create and that is not a standby's. Such a directory must be
    /// rewound before it follows another member.
    pub fn was_primary(&self) -> bool {
        if !matches!(self.data_dir_state(), DataDirState::Initialized { .. }) {
            return false;
        }
        self.primary_marker().exists()
            || !(self.data_dir.join("standby.signal").exists()
                || self.data_dir.join("backup_label").exists())
    }

    fn primary_marker(&self) -> PathBuf {
        self.parent().join("pgquorum.ran-as-primary")
    }

    fn set_primary_marker(&self, on: bool) -> Result<(), PgError> {
        let p = self.primary_marker();
        if on {
            os::write_file(&p, b"", 0o600, None).map_err(PgError::io("write", &p))
        } else {
            match fs::remove_file(&p) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(PgError::io("remove", &p)(e)),
            }
        }
    }

    pub fn postmaster_pid(&self) -> Option<i32> {
        self.guard.as_ref().map(|g| g.pgid)
    }

    /// Whether a PostgreSQL on this data dir may accept writes: ours, started as a
    /// primary or promoted and not yet stopped, or one pgquorum did not start. "Cannot
    /// tell" counts as yes.
    pub fn may_be_primary(&self) -> bool {
        // postmaster.pid names our own postmaster while the guard runs it.
        if self.guard.is_some() {
            self.writable_possible
        } else {
            self.foreign_postmaster().is_some()
        }
    }

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
        // The monitor has had no answer for a whole probe timeout: do not spend this
        // cycle's time waiting for one too (the instance counts as not accepting).
        if p.liveness
            .unanswered
            .is_some_and(|d| d >= health::PROBE_TIMEOUT)
        {
            return p;
        }
        let Ok(rows) = self
            .sql
            .simple("probe", "SELECT pg_is_in_recovery()", SQL_TIMEOUT)
            .await
        else {
            return p;
        };
        p.accepting = true;
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
        p
    }

    async fn probe_primary(&mut self, p: &mut PgProbe) {
        if let Ok(rows) = self
            .sql
            .simple(
                "probe primary",
                "SELECT pg_current_wal_lsn(), substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8), \
                        current_setting('synchronous_standby_names'), \
                        (SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep')",
                SQL_TIMEOUT,
            )
            .await
        {
            p.write_lsn = lsn(cell(&rows, 0, 0));
            p.timeline = cell(&rows, 0, 1)
                .and_then(|t| u64::from_str_radix(t, 16).ok())
                .unwrap_or(0);
            p.synchronous_standby_names = cell(&rows, 0, 2).and_then(conf::unquote_standby_name);
            p.sync_waiters = cell(&rows, 0, 3).and_then(|v| v.parse().ok()).unwrap_or(0);
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

    async fn probe_replica(&mut self, p: &mut PgProbe) {
        let Ok(rows) = self
            .sql
            .simple(
                "probe replica",
                "SELECT pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn(), \
                        (pg_control_checkpoint()).timeline_id, r.received_tli, r.status, \
                        r.sender_host, r.sender_port, \
                        (SELECT max(('x' || substr(name, 1, 8))::bit(32)::int) \
                           FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{8}[.]history$') \
                 FROM (SELECT 1) AS one LEFT JOIN pg_stat_wal_receiver AS r ON true",
                SQL_TIMEOUT,
            )
            .await
        else {
            return;
        };
        p.receive_lsn = lsn(cell(&rows, 0, 0));
        p.replay_lsn = lsn(cell(&rows, 0, 1));
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

    /// See [`FenceHandle::set`].
    pub fn set_fence_deadline(&mut self, deadline: Option<Instant>) -> Result<(), PgError> {
        self.fence.set(deadline)
    }

    /// For a task that moves the fence deadline on its own (lease renewal).
    pub fn fence_handle(&self) -> FenceHandle {
        self.fence.clone()
    }

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

    fn bootstrap_marker(&self) -> PathBuf {
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

    async fn create_replication_role(&mut self) -> Result<(), PgError> {
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

    /// Writes the configuration for `mode`, starts the postmaster under the guard and
    /// waits until it accepts connections (60 s). Fails early, with the tail of the
    /// server log, if it exits. On timeout PostgreSQL is left running.
    pub async fn start(&mut self, mode: StartMode) -> Result<(), PgError> {
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
    pub async fn stop(&mut self, mode: StopMode) -> Result<(), PgError> {
        self.reap_guard().await;
        let Some(g) = self.guard.as_mut() else {
            return Ok(());
        };
        g.stop_requested = true;
        let pgid = g.pgid;
        let (kind, wait) = match mode {
            StopMode::Fast => (StopKind::Fast, STOP_WAIT_FAST),
            StopMode::Immediate => (StopKind::Immediate, STOP_WAIT_IMMEDIATE),
            StopMode::Kill => (StopKind::Kill, STOP_WAIT_KILL),
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
    pub async fn promote(&mut self) -> Result<(), PgError> {
        self.require_running()?;
        let rows = self
            .sql
            .simple("check recovery", "SELECT pg_is_in_recovery()", SQL_TIMEOUT)
            .await?;
        if cell(&rows, 0, 0) == Some("f") {
            return Ok(());
        }
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
        let use_slot = self.source_has_slot(from, slot).await;
        let conninfo = format!(
            "host={} port={} user={} application_name=pgquorum_basebackup connect_timeout=10",
            conf::conninfo_quote(&from.host),
            from.port,
            conf::conninfo_quote(&self.cfg.replication.username),
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
        tracing::info!(%from, slot = use_slot.then_some(slot), "cloning with pg_basebackup");
        self.run_logged(cmd, "pg_basebackup").await?;
        self.set_primary_marker(false)
    }

    async fn source_has_slot(&self, from: &ConnTarget, slot: &str) -> bool {
        let mut s = sql::Session::new(&from.host, from.port, self.cfg.superuser.clone());
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
        let mut source_sql = sql::Session::new(&from.host, from.port, self.cfg.superuser.clone());
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
        let source = format!(
            "host={} port={} user={} dbname=postgres connect_timeout=10",
            conf::conninfo_quote(&from.host),
            from.port,
            conf::conninfo_quote(&su.username),
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

    /// For when rewind fails: moves the data directory aside to
    /// `<data_dir>.failed-<unix-seconds>` (never deletes it), then clones `from`.
    pub async fn reclone(&mut self, from: &ConnTarget, slot: &str) -> Result<(), PgError> {
        self.ensure_stopped("reclone").await?;
        if self.data_dir_state() != DataDirState::Missing {
            self.move_data_dir_aside()?;
        }
        self.basebackup(from, slot).await
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

    /// Primary only: creates missing physical slots (reserving WAL at once) and drops
    /// inactive `pgq_*` slots that are not wanted. Other slots are never touched.
    pub async fn ensure_slots(&mut self, wanted: &[String]) -> Result<(), PgError> {
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
            let r = self
                .sql
                .query(
                    "create slot",
                    "SELECT pg_create_physical_replication_slot($1, true)",
                    &[w],
                    SQL_TIMEOUT,
                )
                .await;
            match r {
                Ok(_) => tracing::info!(slot = %w, "created replication slot"),
                // 42710 duplicate_object: created concurrently, which is what we want.
                Err(e) if e.sqlstate() == Some("42710") => {}
                Err(e) => return Err(e),
            }
        }
        for (name, active) in &existing {
            if !name.starts_with("pgq_") || *active || wanted.contains(name) {
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

    /// `ALTER SYSTEM SET synchronous_standby_names` to `"name"` (or empty) and reload;
    /// returns once the setting is in effect for new transactions (2 s at most).
    ///
    /// ALTER SYSTEM writes `postgresql.auto.conf` in the data directory, so the value
    /// survives restarts (a crashed sync primary comes back still synchronous) and is
    /// copied to replicas by pg_basebackup/pg_rewind: set it explicitly after promoting.
    pub async fn set_synchronous_standby(&mut self, name: Option<&str>) -> Result<(), PgError> {
        self.require_running()?;
        let value = name.map(conf::sql_ident).unwrap_or_default();
        if value.contains('\0') {
            return Err(PgError::Config("standby name contains NUL".into()));
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
        validate_cluster_settings(parameters, pg_hba, synchronous_mode).map_err(PgError::Config)?;
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

    fn effective_parameters(&self) -> BTreeMap<String, String> {
        let mut p = self.cluster_parameters.clone();
        p.extend(self.cfg.parameters.clone());
        if self.synchronous_mode {
            conf::pin_synchronous_commit(&mut p);
        }
        p
    }

    fn effective_pg_hba(&self) -> Vec<String> {
        let mut l = self.cfg.pg_hba.clone();
        l.extend(self.cluster_pg_hba.iter().cloned());
        l
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

    fn parent(&self) -> &Path {
        self.log_path.parent().unwrap_or(Path::new("/"))
    }

    fn require_running(&self) -> Result<(), PgError> {
        if self.guard.is_none() {
            return Err(PgError::NotRunning);
        }
        Ok(())
    }

    async fn require_primary(&mut self, action: &'static str) -> Result<(), PgError> {
        self.require_running()?;
        let rows = self
            .sql
            .simple("check recovery", "SELECT pg_is_in_recovery()", SQL_TIMEOUT)
            .await?;
        if cell(&rows, 0, 0) != Some("f") {
            return Err(PgError::NotPrimary { action });
        }
        Ok(())
    }

    async fn ensure_stopped(&mut self, action: &'static str) -> Result<(), PgError> {
        self.reap_guard().await;
        if self.guard.is_some() {
            return Err(PgError::Running { action });
        }
        if let Some(pid) = self.foreign_postmaster() {
            return Err(PgError::ForeignPostmaster {
                pid,
                path: self.data_dir.clone(),
            });
        }
        Ok(())
    }

    fn foreign_postmaster(&self) -> Option<i32> {
        let pid = os::lock_file_pid(&self.data_dir)?;
        // A postmaster killed while stuck on storage can never run again.
        (os::process_runs_in(pid, &self.data_dir) && !os::process_doomed(pid)).then_some(pid)
    }

    /// A `postmaster.pid` whose process is gone (or is now some other process) would
    /// make PostgreSQL refuse to start if the pid was reused by a process of the same
    /// user. Called only after `ensure_stopped` ruled out a live postmaster here.
    fn clear_stale_lock(&self) -> Result<(), PgError> {
        let p = self.data_dir.join("postmaster.pid");
        if p.exists() {
            tracing::info!(path = %p.display(), "removing stale lock file");
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(PgError::io("remove", &p)(e)),
            }
        }
        Ok(())
    }

    /// Creates the parent directory (and, with `create_data_dir`, the data directory,
    /// 0700, owned by the OS user), checks the OS user can reach it, and creates the
    /// log file owned by that user.
    fn prepare_dirs(&self, create_data_dir: bool) -> Result<(), PgError> {
        let parent = self.parent().to_path_buf();
        fs::create_dir_all(&parent).map_err(PgError::io("create directory", &parent))?;
        if let Some(u) = &self.run_as
            && let Some((dir, mode, owner)) = os::first_blocked_ancestor(&self.data_dir, u)
        {
            return Err(PgError::NotTraversable {
                user: u.name.clone(),
                dir,
                mode,
                owner,
            });
        }
        if create_data_dir {
            match fs::create_dir(&self.data_dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(PgError::io("create directory", &self.data_dir)(e)),
            }
            os::take_data_dir(&self.data_dir, self.run_as.as_ref())
                .map_err(PgError::io("take ownership of", &self.data_dir))?;
        }
        os::ensure_owned_file(&self.log_path, 0o640, self.run_as.as_ref())
            .map_err(PgError::io("create log file", &self.log_path))?;
        Ok(())
    }

    /// PostgreSQL refuses a data directory it does not own or that others can read;
    /// say which fix applies instead of quoting its error.
    fn check_data_dir_owner(&self) -> Result<(), PgError> {
        let dir = os::open_data_dir(&self.data_dir).map_err(PgError::io("open", &self.data_dir))?;
        let md = dir
            .metadata()
            .map_err(PgError::io("stat", &self.data_dir))?;
        // SAFETY: geteuid has no preconditions.
        let want = self
            .run_as
            .as_ref()
            .map_or_else(|| unsafe { libc::geteuid() }, |u| u.uid);
        if md.uid() != want {
            let user = self
                .run_as
                .as_ref()
                .map_or_else(|| "the pgquorum user".to_string(), |u| u.name.clone());
            return Err(PgError::WrongOwner {
                path: self.data_dir.clone(),
                owner: md.uid(),
                user,
            });
        }
        let mode = md.mode() & 0o777;
        if mode != 0o700 && mode != 0o750 {
            dir.set_permissions(fs::Permissions::from_mode(0o700))
                .map_err(PgError::io("chmod", &self.data_dir))?;
        }
        Ok(())
    }

    /// The persistent passfile beside the data directory with the replication
    /// credentials, for pg_basebackup and the WAL receiver (`primary_conninfo`).
    fn write_passfile(&self) -> Result<(), PgError> {
        let repl = &self.cfg.replication;
        let line = conf::pgpass_line(&repl.username, &password(repl)?);
        os::write_file(&self.passfile, line.as_bytes(), 0o600, self.run_as.as_ref())
            .map_err(PgError::io("write", &self.passfile))
    }

    /// pgquorum.conf, the include line in postgresql.conf, pg_hba.conf, standby.signal
    /// (present iff replica) and, for a replica with an upstream, the passfile. All
    /// rewritten at every start: pg_basebackup and pg_rewind copy the source's files.
    fn write_config(&self, mode: &StartMode) -> Result<(), PgError> {
        let owner = self.run_as.as_ref();
        let put = |name: &str, text: &str| {
            let p = self.data_dir.join(name);
            os::write_file(&p, text.as_bytes(), 0o600, owner).map_err(PgError::io("write", &p))
        };
        let replica = match mode {
            StartMode::Primary => None,
            StartMode::Replica { primary, slot } => {
                if let Some(s) = slot
                    && !conf::valid_slot_name(s)
                {
                    return Err(PgError::InvalidSlotName(s.clone()));
                }
                if primary.is_some() {
                    self.write_passfile()?;
                }
                Some(conf::ReplicaConf {
                    primary: primary.as_ref().map(|t| (t.host.as_str(), t.port)),
                    user: &self.cfg.replication.username,
                    passfile: &self.passfile,
                    slot: slot.as_deref(),
                })
            }
        };
        put(
            conf::CONF_FILE,
            &conf::render_pgquorum_conf(
                &self.cfg.listen_host,
                self.cfg.port,
                &self.member,
                &self.effective_parameters(),
                replica.as_ref(),
            ),
        )?;
        let main = self.data_dir.join("postgresql.conf");
        let text = match os::read_nofollow(&main) {
            Ok(t) => String::from_utf8_lossy(&t).into_owned(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(PgError::io("read", &main)(e)),
        };
        if let Some(new) = conf::with_include(&text) {
            put("postgresql.conf", &new)?;
        }
        put(
            "pg_hba.conf",
            &conf::render_pg_hba(
                &self.effective_pg_hba(),
                &self.cfg.superuser.username,
                &self.cfg.replication.username,
            ),
        )?;
        let signal = self.data_dir.join("standby.signal");
        if replica.is_some() {
            put("standby.signal", "")?;
        } else {
            match fs::remove_file(&signal) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(PgError::io("remove", &signal)(e)),
            }
        }
        Ok(())
    }

    /// Environment shared by every child: no inherited `PG*` variable may redirect a
    /// tool to another server or password; HOME etc. of the OS user.
    fn child_env(&self, cmd: &mut tokio::process::Command) {
        for (k, _) in std::env::vars_os() {
            if k.as_encoded_bytes().starts_with(b"PG") {
                cmd.env_remove(k);
            }
        }
        if let Some(u) = &self.run_as {
            cmd.env("HOME", &u.home)
                .env("USER", &u.name)
                .env("LOGNAME", &u.name);
        }
        // The OS user may not be allowed into pgquorum's working directory.
        cmd.current_dir("/");
    }

    /// A PostgreSQL tool, run as the OS user, killed if pgquorum dies or drops the
    /// future awaiting it.
    fn pg_command(&self, program: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(self.cfg.bin_dir.join(program));
        self.child_env(&mut cmd);
        if let Some(u) = &self.run_as {
            cmd.uid(u.uid).gid(u.gid);
        }
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        os::die_with_parent(&mut cmd, libc::SIGKILL);
        cmd
    }

    /// Runs a tool with its output appended to the PostgreSQL log; on failure the error
    /// quotes what it printed.
    async fn run_logged(
        &self,
        mut cmd: tokio::process::Command,
        label: &str,
    ) -> Result<(), PgError> {
        let mut log =
            os::open_append_safe(&self.log_path, 0o640, self.run_as.as_ref().map(|u| u.uid))
                .map_err(PgError::io("open", &self.log_path))?;
        let from = log.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = writeln!(log, "pgquorum {}: running {label}", os::unix_seconds());
        let out = log
            .try_clone()
            .map_err(PgError::io("open", &self.log_path))?;
        cmd.stdout(out).stderr(log);
        let mut child = os::spawn(cmd).await.map_err(|source| PgError::Spawn {
            program: label.to_string(),
            source,
        })?;
        let status = child.wait().await.map_err(|source| PgError::Spawn {
            program: label.to_string(),
            source,
        })?;
        if status.success() {
            return Ok(());
        }
        Err(PgError::Command {
            program: label.to_string(),
            status: status.to_string(),
            log: self.log_path.clone(),
            tail: os::log_tail(&self.log_path, from, LOG_TAIL_LINES),
        })
    }

    /// `Database cluster state` from pg_controldata.
    async fn cluster_state(&self) -> Result<String, PgError> {
        let mut cmd = self.pg_command("pg_controldata");
        cmd.arg(&self.data_dir)
            .env("LC_ALL", "C")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = os::spawn(cmd).await.map_err(|source| PgError::Spawn {
            program: "pg_controldata".into(),
            source,
        })?;
        let out = child
            .wait_with_output()
            .await
            .map_err(|source| PgError::Spawn {
                program: "pg_controldata".into(),
                source,
            })?;
        let text = String::from_utf8_lossy(&out.stdout);
        match conf::controldata_state(&text) {
            Some(s) if out.status.success() => Ok(s.to_string()),
            _ => Err(PgError::ControlData(format!(
                "{text}{}",
                String::from_utf8_lossy(&out.stderr)
            ))),
        }
    }

    async fn spawn_guard(&mut self, log_from: u64) -> Result<(), PgError> {
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
                            &self.cfg.connect_host,
                            self.cfg.port,
                            self.cfg.superuser.clone(),
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
    async fn reap_guard(&mut self) -> Option<PgExit> {
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

    async fn finish_guard(&mut self, status: std::process::ExitStatus) -> PgExit {
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

impl Drop for Postgres {
    /// Letting go of the instance closes the guard's control pipe: the guard then
    /// kills PostgreSQL, which must never run unsupervised. (Clones of the fence
    /// handle held elsewhere must not keep the pipe open.)
    fn drop(&mut self) {
        self.fence.detach();
    }
}

fn password(c: &Credentials) -> Result<String, PgError> {
    c.password().map_err(|source| PgError::Password {
        user: c.username.clone(),
        source,
    })
}

fn cell(rows: &sql::TextRows, row: usize, col: usize) -> Option<&str> {
    rows.get(row)?.get(col)?.as_deref()
}

fn text(row: &[Option<String>], col: usize) -> String {
    row.get(col).cloned().flatten().unwrap_or_default()
}

fn lsn(v: Option<&str>) -> u64 {
    v.and_then(parse_lsn).unwrap_or(0)
}
