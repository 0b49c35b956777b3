//! PostgreSQL: the only code in pgquorum that spawns processes or runs SQL.
//!
//! [`Postgres`] is driven by the supervisor (`crate::supervisor`), which decides;
//! this module only does. The postmaster never is a child of pgquorum: it runs under
//! `pgquorum pg-guard` ([`guard`]), which kills it when the fence deadline passes or
//! when pgquorum goes away. See `DESIGN.md` beside this file.

mod callbacks;
mod conf;
mod error;
mod fence;
pub mod guard;
pub mod guard_wire;
mod health;
mod lifecycle;
mod os;
mod probe;
mod rebuild;
mod replication;
mod sql;
mod ssl;

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

pub use self::error::PgError;

/// The OS user exists (`pgquorum demo` checks before it starts PostgreSQL as it).
pub fn os_user_exists(name: &str) -> bool {
    os::lookup_user(name).ok().flatten().is_some()
}

/// pgquorum runs as root (PostgreSQL then runs as `postgresql.os_user`).
pub fn running_as_root() -> bool {
    os::is_root()
}
pub use self::fence::FenceHandle;
use self::fence::control_for;
use self::guard::{Control, GuardArgs, Report};
pub use self::health::Liveness;
use self::os::RunAs;
pub use crate::config::pg_rules::{
    SettingError, check_synchronous_commit, validate_cluster_settings,
};
use crate::config::{Credentials, PostgresConfig};
use crate::lsn::parse_lsn;
pub use crate::stop::StopKind;

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
    /// Primary: the members named by `synchronous_standby_names`.
    pub synchronous_standby_names: Vec<String>,
    /// Postmaster pid (= process group id) while running.
    pub postmaster_pid: Option<i32>,
    /// Why the last run ended; `None` while running or before the first start.
    pub last_exit: Option<PgExit>,
    /// A postmaster that pgquorum did not start holds the data directory (its pid).
    /// `start`, `rewind`, `basebackup` and `reclone` refuse to run until it is stopped.
    pub foreign_postmaster: Option<i32>,
    /// The health monitor's view of the running instance (see [`health`]).
    pub liveness: Liveness,
    /// Parameters changed in the files that take effect only at a restart
    /// (`pg_settings.pending_restart`).
    pub pending_restart: Vec<String>,
    /// `server_version_num`, e.g. 150010.
    pub server_version: Option<u32>,
    /// `pg_postmaster_start_time()`, Unix milliseconds.
    pub postmaster_start_ms: Option<i64>,
    /// Replica: `pg_is_wal_replay_paused()`.
    pub replay_paused: bool,
    /// Replica: `pg_last_xact_replay_timestamp()`, Unix milliseconds.
    pub last_replayed_ms: Option<i64>,
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
    /// Where PostgreSQL's copies of the TLS files go (with `[tls]`).
    ssl: Option<conf::SslFiles>,
    /// TLS for pgquorum's own SQL sessions (with `[tls]`).
    sql_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// The modification times of the `[tls]` files when PostgreSQL's copies were
    /// last made: a change is copied over and PostgreSQL reloaded (`probe`).
    ssl_stamp: std::sync::Mutex<Option<Vec<Option<std::time::SystemTime>>>>,
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
    callbacks: callbacks::CallbackRunner,
    /// A running pg_basebackup's progress (`None` when none runs): operators and
    /// `ctl reinit --wait` see it through `/patroni`.
    copy_progress: tokio::sync::watch::Sender<Option<CopyProgress>>,
}

/// How far a running pg_basebackup has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyProgress {
    /// Bytes in the new data directory so far.
    pub copied_bytes: u64,
    /// The source's databases in bytes; `None` when it could not be read.
    pub total_bytes: Option<u64>,
    pub seconds: u64,
}

impl Postgres {
    /// Follows pg_basebackup's progress (set every few seconds while a clone runs).
    pub fn copy_progress(&self) -> tokio::sync::watch::Receiver<Option<CopyProgress>> {
        self.copy_progress.subscribe()
    }

    /// Validates the settings and resolves the OS user; no other IO.
    /// `cluster`: the cluster's name, the callbacks' last argument.
    pub fn new(cfg: PostgresConfig, member_name: String, cluster: String) -> Result<Self, PgError> {
        if member_name.is_empty() || member_name.contains(['\n', '\r', '\0']) {
            return Err(PgError::MemberName(member_name));
        }
        conf::check_parameters(&cfg.parameters)?;
        conf::check_role_name("postgresql.superuser.username", &cfg.superuser.username)?;
        conf::check_role_name("postgresql.replication.username", &cfg.replication.username)?;
        conf::check_line_value("postgresql.listen_host", &cfg.listen_host)?;
        for l in &cfg.pg_hba {
            conf::check_line_value("postgresql.pg_hba entries", l)?;
        }
        let data_dir =
            std::path::absolute(&cfg.data_dir).map_err(PgError::io("resolve", &cfg.data_dir))?;
        let parent = data_dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .ok_or_else(|| PgError::DataDirWithoutParent(data_dir.clone()))?
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
                return Err(PgError::RootOsUser(cfg.os_user.clone()));
            }
            Some(u)
        } else {
            None
        };
        // With [tls], pg_hba admits only TLS logins from anywhere but loopback, so
        // every session of ours is TLS too.
        let sql_tls = match &cfg.ssl {
            Some(s) => Some(sql::tls_config(&s.ca)?),
            None => None,
        };
        let sql = sql::Session::new(&cfg.connect_host, cfg.port, cfg.superuser.clone())
            .with_tls(sql_tls.clone());
        Ok(Self {
            log_path: parent.join("postgresql.log"),
            passfile: parent.join("pgquorum.pgpass"),
            sql_tls,
            ssl_stamp: std::sync::Mutex::new(None),
            ssl: cfg.ssl.as_ref().map(|_| conf::SslFiles {
                ca: parent.join("pgquorum-ca.crt"),
                cert: parent.join("pgquorum-server.crt"),
                key: parent.join("pgquorum-server.key"),
            }),
            data_dir,
            member: member_name,
            run_as,
            // The running binary even if its file was replaced by an upgrade.
            guard_exe: PathBuf::from("/proc/self/exe"),
            fence: FenceHandle::default(),
            guard: None,
            last_exit: None,
            sql,
            callbacks: callbacks::CallbackRunner::new(cfg.callbacks.clone(), cluster),
            copy_progress: tokio::sync::watch::channel(None).0,
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

    /// See [`FenceHandle::set`].
    pub fn set_fence_deadline(&mut self, deadline: Option<Instant>) -> Result<(), PgError> {
        self.fence.set(deadline)
    }

    /// For a task that moves the fence deadline on its own (lease renewal).
    pub fn fence_handle(&self) -> FenceHandle {
        self.fence.clone()
    }

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
        self.write_ssl_files()?;
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
                self.ssl.as_ref(),
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
                self.ssl.is_some(),
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

/// An `extract(epoch ...)` cell (seconds, fractional) as Unix milliseconds.
fn epoch_ms(v: Option<&str>) -> Option<i64> {
    v?.parse::<f64>().ok().map(|s| (s * 1000.0).round() as i64)
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
