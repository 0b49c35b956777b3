//! The arguments of `pgquorum ctl` (clap) and the errors its commands return.

use super::*;

#[derive(Args, Debug)]
pub struct CtlArgs {
    /// Cluster members to talk to (host:port, comma separated); any member answers.
    #[arg(
        long,
        env = "PGQUORUM_ENDPOINTS",
        default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003",
        value_delimiter = ','
    )]
    pub endpoints: Vec<String>,

    #[arg(long, value_enum, default_value = "table")]
    pub output: OutputFormat,

    /// The cluster CA's certificate: with it, ctl talks TLS and checks the nodes'.
    #[arg(long, env = "PGQUORUM_CA")]
    pub ca: Option<std::path::PathBuf>,
    /// Your client certificate (`pgquorum certs issue NAME --role admin|read`).
    #[arg(long, env = "PGQUORUM_CERT", requires_all = ["ca", "key"])]
    pub cert: Option<std::path::PathBuf>,
    /// Its key (mode 0600).
    #[arg(long, env = "PGQUORUM_KEY", requires_all = ["ca", "cert"])]
    pub key: Option<std::path::PathBuf>,

    /// A file holding a bearer token (the node's [tls] admin_token_file or
    /// read_token_file) to send instead of a client certificate; needs --ca.
    #[arg(long, env = "PGQUORUM_TOKEN_FILE", requires = "ca")]
    pub token_file: Option<std::path::PathBuf>,

    /// Timeout per request and node, e.g. 5s, 500ms, 1m.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,

    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DsnRoleArg {
    Primary,
    Replica,
    Any,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushTarget {
    Restart,
    Switchover,
}

#[derive(Subcommand, Debug)]
pub enum CtlCommand {
    /// Show the answering node's view of the cluster.
    Status,
    /// List the cluster members.
    Members,
    /// List the PostgreSQL members and their replication state, like `patronictl list`.
    List {
        /// Also the Pending restart and Tags columns.
        #[arg(short = 'e', long)]
        extended: bool,
        /// Print the list again every S seconds until Ctrl-C.
        #[arg(long, value_name = "S")]
        watch: Option<u64>,
    },
    /// Planned change of primary: the primary stops cleanly (every commit reaches the
    /// candidate), releases its lease, and the candidate is promoted. Waits for it.
    Switchover {
        /// Member to promote (a running, streaming replica); default: the most
        /// advanced eligible one.
        #[arg(long)]
        candidate: Option<String>,
        /// Seconds to wait for the new primary before cancelling the request.
        #[arg(long, default_value_t = 30)]
        wait: u64,
        /// Store the request; the primary steps down at AT (Unix seconds, +5m, or
        /// UTC 2026-12-02T18:30:00Z).
        #[arg(long, value_name = "AT", conflicts_with = "cancel")]
        scheduled: Option<String>,
        /// Cancel a requested or scheduled switchover.
        #[arg(long)]
        cancel: bool,
    },
    /// Promote CANDIDATE while no primary serves (also in pause). Shows its lag
    /// against the last known primary position and asks first; a candidate the
    /// failover rules refuse (too far behind, not the recorded synchronous standby)
    /// needs --force, which names the commits at risk. With a healthy primary it
    /// refuses, unless --force: then it is a switchover to CANDIDATE.
    Failover {
        #[arg(long)]
        candidate: String,
        /// Accept the named risk and skip the confirmation.
        #[arg(long)]
        force: bool,
        /// Seconds to wait for the candidate to serve before withdrawing the request.
        #[arg(long, default_value_t = 30)]
        wait: u64,
    },
    /// Re-clone MEMBER (a replica) from the primary: its data dir is moved aside
    /// (kept, unless --discard-old) and a fresh copy streamed. Never the primary.
    Reinit {
        member: String,
        /// Wait until the clone is done and say where the old data dir went.
        #[arg(long)]
        wait: bool,
        /// Remove the old data dir once the new clone succeeded.
        #[arg(long)]
        discard_old: bool,
        /// Seconds --wait waits.
        #[arg(long, default_value_t = 3600)]
        wait_timeout: u64,
    },
    /// Restart PostgreSQL on MEMBERs (default: all), one at a time, replicas first.
    /// The primary restarts in place under its lease: no failover, unless it does not
    /// come back within primary_start_timeout.
    Restart {
        members: Vec<String>,
        #[arg(long, value_enum, default_value = "any")]
        role: DsnRoleArg,
        /// Only members whose PostgreSQL needs a restart for changed parameters.
        #[arg(long)]
        pending: bool,
        /// Store the request; each member restarts at AT by its clock (Unix seconds,
        /// +5m, or UTC 2026-12-02T18:30:00Z). Returns at once.
        #[arg(long, value_name = "AT")]
        scheduled: Option<String>,
        /// Seconds to wait for each member.
        #[arg(long = "timeout", value_name = "S", default_value_t = 120)]
        wait: u64,
    },
    /// Make PostgreSQL on MEMBERs (default: all) re-read its configuration files.
    Reload { members: Vec<String> },
    /// Pause automatic failover and PostgreSQL start/stop by pgquorum (maintenance).
    /// The primary keeps its lease; nothing is promoted until `resume`.
    Pause {
        /// Wait until every member reports the cluster paused.
        #[arg(long)]
        wait: bool,
    },
    /// End a pause: automatic failover and start/stop resume at the next cycle.
    Resume {
        /// Wait until every member reports the cluster resumed.
        #[arg(long)]
        wait: bool,
    },
    /// Print the cluster-wide configuration (`/pg/config` and `pause`) as JSON.
    ShowConfig,
    /// Change the cluster-wide configuration: opens $EDITOR on the document, or
    /// applies --set/--pg/--apply; shows the diff and asks before writing. The write
    /// is compare-and-set: if someone else changed it meanwhile, nothing is written.
    EditConfig {
        /// Set a key of the document, e.g. --set ttl_ms=3000 (null removes it).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Set a PostgreSQL parameter, e.g. --pg work_mem=64MB (empty value removes it).
        #[arg(long = "pg", value_name = "NAME=VALUE")]
        pg: Vec<String>,
        /// Replace the whole document with the JSON in FILE (`-`: standard input).
        #[arg(long, value_name = "FILE|-", conflicts_with_all = ["set", "pg"])]
        apply: Option<String>,
        /// Write without asking (for scripts).
        #[arg(long)]
        force: bool,
    },
    /// Every failover and switchover: timeline, LSN, reason, time, new primary.
    History,
    /// Print a libpq multi-host connection string for the cluster.
    Dsn {
        /// Which member a client using it connects to.
        #[arg(long, value_enum, default_value = "primary")]
        role: DsnRoleArg,
        #[arg(long)]
        dbname: Option<String>,
    },
    /// The members as a tree, like `patronictl topology`: the primary, and each
    /// replica under the member it streams from.
    Topology,
    /// The pgquorum release of this client and, for each member (default: all), of
    /// its node and of its PostgreSQL.
    Version { members: Vec<String> },
    /// Withdraw requests: `flush restart [MEMBER…]` cancels pending and scheduled
    /// restarts (of the MEMBERs; default: all), `flush switchover` a requested or
    /// scheduled switchover.
    Flush {
        #[arg(value_enum)]
        target: FlushTarget,
        members: Vec<String>,
    },
    /// Add or remove cluster members.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Read and write keys.
    #[command(subcommand)]
    Kv(KvCommand),
    /// Grant, renew, revoke and inspect leases.
    #[command(subcommand)]
    Lease(LeaseCommand),
}

#[derive(Subcommand, Debug)]
pub enum MemberCommand {
    /// Add a node; it becomes a voter once it caught up unless --learner.
    Add {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        name: String,
        /// The node's gRPC address, host:port.
        #[arg(long)]
        addr: String,
        /// Keep the node a non-voting learner.
        #[arg(long)]
        learner: bool,
    },
    /// Remove a node from the cluster.
    Remove {
        #[arg(long)]
        id: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum KvCommand {
    /// Print a key (or all keys under a prefix) as `key = value`.
    Get {
        key: String,
        /// Treat KEY as a prefix.
        #[arg(long)]
        prefix: bool,
        /// Answer from the contacted node's state without asking the leader (may be stale).
        #[arg(long)]
        serializable: bool,
    },
    /// Write a key.
    Put {
        key: String,
        #[arg(allow_hyphen_values = true)]
        value: String,
        /// Attach the key to this lease; it is deleted when the lease ends.
        #[arg(long, default_value_t = 0)]
        lease: u64,
        /// Only write if the key's mod_revision is REV (0: the key must not exist).
        #[arg(long, value_name = "REV")]
        expect_revision: Option<u64>,
        /// Write a key that a pgquorum command owns (e.g. /pg/config).
        #[arg(long)]
        force: bool,
    },
    /// Delete a key (or all keys under a prefix).
    Del {
        key: String,
        #[arg(long)]
        prefix: bool,
        /// Only delete if the key's mod_revision is REV.
        #[arg(long, value_name = "REV")]
        expect_revision: Option<u64>,
        /// Delete a key that a pgquorum command owns (e.g. /pg/leader).
        #[arg(long)]
        force: bool,
    },
    /// Print changes under a prefix as they happen.
    Watch {
        prefix: String,
        /// Start with the change at this revision (default: from now on).
        #[arg(long, value_name = "REV", default_value_t = 0)]
        from_revision: u64,
        /// Stop after N events.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
pub enum LeaseCommand {
    /// Grant a lease of TTL_MS milliseconds.
    Grant {
        ttl_ms: u64,
        /// Ask for this lease id (default: the cluster chooses).
        #[arg(long, default_value_t = 0)]
        id: u64,
    },
    /// Renew a lease once, or with --keep-alive every ttl/3 until Ctrl-C.
    Renew {
        id: u64,
        #[arg(long)]
        keep_alive: bool,
    },
    /// End a lease now, deleting its keys.
    Revoke { id: u64 },
    /// Show a lease's ttl, time left and keys.
    Ttl { id: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(transparent)]
    Client(#[from] ClientError),

    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),

    #[error("key {0:?} not found")]
    KeyNotFound(String),

    #[error("lease {0} not found: it expired or was revoked; grant a new one")]
    LeaseNotFound(u64),

    #[error("member {0} not found: see `pgquorum ctl members` for the current members")]
    MemberNotFound(u64),

    #[error("compare failed: {0}")]
    CompareFailed(String),

    #[error(
        "lease {id} may have expired: no renewal committed in time ({source}); the lease is no \
         longer certainly held: check it with `pgquorum ctl lease ttl {id}`, and grant a new one \
         if it is gone"
    )]
    LeaseLost { id: u64, source: ClientError },

    #[error(
        "the node ended the watch stream; rerun with --from-revision {next_revision} to continue"
    )]
    WatchClosed { next_revision: u64 },

    #[error("{0}")]
    BadInput(String),

    #[error(transparent)]
    Ops(#[from] crate::ops::OpsError),

    #[error(
        "{key} is written by {owner}; writing it by hand can break the cluster. Use that \
         command, or pass --force if you mean it"
    )]
    OwnedKey { key: String, owner: &'static str },

    #[error("cannot wait for Ctrl-C: {0}")]
    Signal(std::io::Error),

    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}
