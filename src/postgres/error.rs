//! What can go wrong in `postgres`, each error saying what the operator can do.

use super::*;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error(
        "postgresql.os_user {user:?} does not exist; pgquorum runs as root and starts \
         PostgreSQL as that user: create it (e.g. `useradd --system postgres`) or set os_user"
    )]
    NoSuchUser { user: String },
    #[error(
        "cannot look up OS user {user:?}: {source}; check that `getent passwd {user}` works on \
         this host (NSS, LDAP), or set postgresql.os_user to a local user"
    )]
    UserLookup {
        user: String,
        #[source]
        source: io::Error,
    },
    #[error("invalid PostgreSQL settings: {0}")]
    Setting(#[from] SettingError),
    #[error("member name {0:?} must be non-empty and single-line; fix `name` in the node config")]
    MemberName(String),
    #[error(
        "postgresql.data_dir {0} needs a parent directory (the log file and passfile live there); \
         use a path with at least one directory above the data directory"
    )]
    DataDirWithoutParent(PathBuf),
    #[error(
        "postgresql.os_user {0:?} is root; PostgreSQL refuses to run as root: set os_user to an \
         unprivileged user (e.g. postgres)"
    )]
    RootOsUser(String),
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
    #[error(
        "cannot {action} {path}: {source}; check that it (or its parent directory) exists, that \
         its filesystem is writable and has free space, and that pgquorum and \
         postgresql.os_user may access it"
    )]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot read the password of PostgreSQL user {user:?}: {source}; check the \
         password_file set for that user in [postgresql.superuser] or \
         [postgresql.replication], and that pgquorum can read it"
    )]
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
    #[error(
        "data directory {path} cannot be used: {reason}; pgquorum will not touch it: repair it, \
         or move it away (e.g. `mv {path} {path}.bad`) and, while a primary serves, this member \
         clones a fresh copy from it"
    )]
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
    #[error(
        "cannot run {program}: {source}; check that it exists and is executable (PostgreSQL's \
         tools are taken from postgresql.bin_dir)"
    )]
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
    #[error(
        "SQL ({what}) timed out: the server did not answer in time (overloaded, blocked on a \
         lock or on storage, or unreachable); check its log and load. The next HA cycle tries \
         again"
    )]
    SqlTimeout { what: String },
    #[error("{action} needs a primary, but PostgreSQL is in recovery")]
    NotPrimary { action: &'static str },
    #[error(
        "promotion did not finish within 60 s; PostgreSQL is still in recovery: see the \
         PostgreSQL log for what replay waits on. The next HA cycle tries again"
    )]
    PromoteTimeout,
    #[error(
        "pre_promote vetoed the promotion: `{command}` {how}; this member gives up the \
         leader lease and stays a replica (it may try again after one ttl)"
    )]
    PrePromoteVetoed { command: String, how: String },
    #[error(
        "{0:?} is not a valid replication slot name (lowercase letters, digits and _; at most 63); \
         use Postgres::slot_name"
    )]
    InvalidSlotName(String),
    #[error(
        "pg_controldata output has no cluster state; check that postgresql.bin_dir is of the \
         PostgreSQL major version in the data directory's PG_VERSION; output:\n{0}"
    )]
    ControlData(String),
    #[error(
        "crash recovery in single-user mode left the cluster in state {0:?}; pg_rewind cannot \
         run, so this member re-clones from the primary instead (its data directory is moved \
         aside to DATA_DIR.failed-<unix time>, not deleted)"
    )]
    NotCleanAfterRecovery(String),
}

impl PgError {
    pub(super) fn io(
        action: &'static str,
        path: &Path,
    ) -> impl FnOnce(io::Error) -> PgError + use<> {
        let path = path.to_path_buf();
        move |source| PgError::Io {
            action,
            path,
            source,
        }
    }

    pub(super) fn sql(what: String, e: &tokio_postgres::Error) -> PgError {
        PgError::Sql {
            what,
            message: sql::describe(e),
            code: e.code().map(|c| c.code().to_string()),
        }
    }

    pub(super) fn sqlstate(&self) -> Option<&str> {
        match self {
            PgError::Sql { code, .. } => code.as_deref(),
            _ => None,
        }
    }
}
