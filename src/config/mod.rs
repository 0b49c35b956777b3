//! Node configuration (TOML). Validation happens here, once, before anything is
//! opened or bound: a bad config changes nothing on disk.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub mod callbacks;
mod ha;
mod limits;
pub mod pg_rules;
mod rest_auth;

pub use callbacks::{CallbackError, Callbacks, CommandLine};
pub use ha::{HaSettings, HaSettingsError, PermanentSlot};
pub use limits::Limits;
pub use rest_auth::{Network, RestAuth};

/// A member's `[tags]`: what it may be used for, with Patroni's meanings.
/// Published in its status.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct Tags {
    #[serde(default)]
    pub nofailover: bool,
    #[serde(default)]
    pub noloadbalance: bool,
    /// As Patroni: 0 (or less) = never promoted; higher wins ties between equally
    /// advanced candidates. Default 1, so an untagged member is a candidate.
    #[serde(default = "default_failover_priority")]
    pub failover_priority: i64,
    /// Never chosen as the synchronous standby.
    #[serde(default)]
    pub nosync: bool,
    /// New replicas prefer to clone from this member (while it streams from the
    /// primary) over the primary.
    #[serde(default)]
    pub clonefrom: bool,
    /// Any other tag, kept as written (`GET /replica?tag_key=value` matches it).
    #[serde(flatten)]
    pub other: std::collections::BTreeMap<String, serde_json::Value>,
}

fn default_failover_priority() -> i64 {
    1
}

impl Default for Tags {
    fn default() -> Self {
        Tags {
            nofailover: false,
            noloadbalance: false,
            failover_priority: default_failover_priority(),
            nosync: false,
            clonefrom: false,
            other: Default::default(),
        }
    }
}

impl Tags {
    /// `nofailover`, or `failover_priority` 0 (or less): never promoted.
    pub fn never_promoted(&self) -> bool {
        self.nofailover || self.failover_priority <= 0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot read config file {path}: {source}; check the path given to --config and that \
         the user running pgquorum can read it"
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("config file {path}: {source}")]
    Ha {
        path: PathBuf,
        #[source]
        source: HaSettingsError,
    },
    #[error("config file {path}: {source}")]
    Postgres {
        path: PathBuf,
        #[source]
        source: PostgresSectionError,
    },
    #[error("config file {path}: {source}")]
    Setting {
        path: PathBuf,
        #[source]
        source: pg_rules::SettingError,
    },
}

/// A `[postgresql]` section that cannot be used, and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PostgresSectionError {
    #[error(
        "postgresql.bin_dir is not set and no PostgreSQL server was found under \
         /usr/lib/postgresql/*/bin; install PostgreSQL or set bin_dir"
    )]
    NoServerFound,
    #[error(
        "postgresql.bin_dir {0} has no `postgres` binary; point it at PostgreSQL's bin directory"
    )]
    NoPostgresBinary(PathBuf),
    #[error("postgresql.port must be positive")]
    NoPort,
    #[error("postgresql.{0}.username must not be empty")]
    EmptyUsername(&'static str),
    #[error("postgresql.{0} needs a password or a password_file")]
    NoPassword(&'static str),
    #[error(transparent)]
    Callback(#[from] CallbackError),
}

/// An address that is not `host:port`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not HOST:PORT (an IPv6 host in brackets: [::1]:7001)")]
pub struct HostPortError(pub String);

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InitialMember {
    pub id: u64,
    pub name: String,
    pub addr: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTuning {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// How often the Raft leader looks for expired leases.
    pub lease_check_interval_ms: u64,
    /// Upper bound for any client request, including forwarding to the leader.
    pub request_timeout_ms: u64,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_logs: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            heartbeat_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            lease_check_interval_ms: 100,
            request_timeout_ms: 5000,
            snapshot_logs: 5000,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    cluster_name: String,
    node_id: u64,
    name: String,
    listen_addr: String,
    advertise_addr: Option<String>,
    data_dir: PathBuf,
    #[serde(default)]
    join: bool,
    #[serde(default)]
    initial_cluster: Vec<InitialMember>,
    #[serde(default)]
    raft: RaftTuning,
    postgresql: Option<RawPostgres>,
    #[serde(default)]
    ha: HaSettings,
    #[serde(default)]
    tags: Tags,
    rest_listen_addr: Option<String>,
    #[serde(default)]
    limits: Limits,
    tls: Option<TlsFiles>,
    #[serde(default)]
    insecure: bool,
    rest_auth: Option<RestAuth>,
}

/// `[tls]`: the cluster CA and this node's certificate (from `pgquorum certs`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Serve the REST API over TLS too (load balancers' checks then need https).
    #[serde(default)]
    pub rest: bool,
    /// A file (0600) whose first line is a bearer token with the admin role, for
    /// `ctl --token-file` where a client certificate is impractical. The same file
    /// on every member.
    pub admin_token_file: Option<PathBuf>,
    /// The same for a read-only token.
    pub read_token_file: Option<PathBuf>,
}

#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub username: String,
    pub password: Option<String>,
    /// A file holding the password (first line); wins over `password`.
    pub password_file: Option<PathBuf>,
}

// By hand so that `{:?}` of a config never shows a password.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_file", &self.password_file)
            .finish()
    }
}

impl Credentials {
    /// The password, read from `password_file` when one is set. Never logged.
    pub fn password(&self) -> Result<String, std::io::Error> {
        match &self.password_file {
            Some(f) => Ok(std::fs::read_to_string(f)?
                .lines()
                .next()
                .unwrap_or("")
                .to_string()),
            None => Ok(self.password.clone().unwrap_or_default()),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPostgres {
    bin_dir: Option<PathBuf>,
    data_dir: PathBuf,
    #[serde(default = "default_host")]
    listen_host: String,
    port: u16,
    connect_host: Option<String>,
    #[serde(default = "default_os_user")]
    os_user: String,
    superuser: Credentials,
    replication: Credentials,
    #[serde(default)]
    parameters: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pg_hba: Vec<String>,
    #[serde(default)]
    callbacks: callbacks::RawCallbacks,
    pre_promote: Option<String>,
    #[serde(default = "default_callback_timeout_ms")]
    callback_timeout_ms: u64,
}

fn default_callback_timeout_ms() -> u64 {
    callbacks::DEFAULT_CALLBACK_TIMEOUT_MS
}

fn default_host() -> String {
    "127.0.0.1".into()
}

fn default_os_user() -> String {
    "postgres".into()
}

/// The `[postgresql]` section, validated; paths resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostgresConfig {
    pub bin_dir: PathBuf,
    pub data_dir: PathBuf,
    pub listen_host: String,
    pub port: u16,
    pub connect_host: String,
    /// The OS user PostgreSQL runs as when pgquorum runs as root.
    pub os_user: String,
    pub superuser: Credentials,
    pub replication: Credentials,
    pub parameters: std::collections::BTreeMap<String, String>,
    pub pg_hba: Vec<String>,
    pub callbacks: Callbacks,
    /// With `[tls]`: PostgreSQL serves TLS with the node's certificate, replication
    /// is `hostssl` only, and replicas verify their upstream against the cluster CA.
    pub ssl: Option<PgSsl>,
}

/// The node's certificate, key and the cluster CA, for PostgreSQL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgSsl {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A validated node configuration.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub cluster_name: String,
    pub node_id: u64,
    pub name: String,
    pub listen_addr: SocketAddr,
    pub advertise_addr: String,
    /// Absolute, or relative to the directory of the config file.
    pub data_dir: PathBuf,
    /// Start empty and wait to be added with `ctl member add` instead of forming a cluster.
    pub join: bool,
    pub initial_cluster: Vec<InitialMember>,
    pub raft: RaftTuning,
    /// Absent: this node runs only the Raft store (no PostgreSQL supervision).
    pub postgresql: Option<PostgresConfig>,
    pub ha: HaSettings,
    pub tags: Tags,
    pub rest_listen_addr: Option<SocketAddr>,
    pub limits: Limits,
    /// None only with `insecure = true`: plaintext, nobody authenticated.
    pub tls: Option<TlsFiles>,
    /// Credentials for the REST write routes.
    pub rest_auth: Option<RestAuth>,
}

impl NodeConfig {
    /// What differs in `new` that a running node cannot take over without a restart
    /// (`[tags]` are applied live). `[ha]` counts too: once the cluster exists its
    /// HA settings live in `/pg/config`, cluster-wide.
    pub fn changes_needing_restart(&self, new: &NodeConfig) -> Vec<&'static str> {
        let differs =
            |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
        let mut v = Vec::new();
        for (name, changed) in [
            ("cluster_name", self.cluster_name != new.cluster_name),
            ("node_id", self.node_id != new.node_id),
            ("name", self.name != new.name),
            ("listen_addr", self.listen_addr != new.listen_addr),
            ("advertise_addr", self.advertise_addr != new.advertise_addr),
            ("data_dir", self.data_dir != new.data_dir),
            ("join", self.join != new.join),
            (
                "initial_cluster",
                differs(&self.initial_cluster, &new.initial_cluster),
            ),
            ("[raft]", differs(&self.raft, &new.raft)),
            // Compared by value: `{:?}` hides passwords, so a changed one would not show.
            ("[postgresql]", self.postgresql != new.postgresql),
            ("[ha] (edit /pg/config for the cluster)", self.ha != new.ha),
            (
                "rest_listen_addr",
                self.rest_listen_addr != new.rest_listen_addr,
            ),
            ("[limits]", self.limits != new.limits),
            // The files named may change (reloaded); which files may not.
            ("[tls]", self.tls != new.tls),
            ("[rest_auth]", self.rest_auth != new.rest_auth),
        ] {
            if changed {
                v.push(name);
            }
        }
        v
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        if raw.cluster_name.trim().is_empty() {
            return Err(invalid("cluster_name must not be empty".into()));
        }
        // `/pg/sync` joins standby names with commas (as Patroni does), and a name
        // becomes a replication slot and an application_name.
        if raw.name.trim().is_empty()
            || raw.name.contains(',')
            || raw.name.chars().any(char::is_control)
        {
            return Err(invalid(format!(
                "name {:?} must be non-empty, without commas or control characters",
                raw.name
            )));
        }
        if raw.node_id == 0 {
            return Err(invalid("node_id must be a positive integer".into()));
        }
        let listen_addr: SocketAddr = raw.listen_addr.parse().map_err(|e| {
            invalid(format!(
                "listen_addr {:?} is not IP:PORT ({e})",
                raw.listen_addr
            ))
        })?;
        let advertise_addr = raw
            .advertise_addr
            .unwrap_or_else(|| raw.listen_addr.clone());
        check_host_port(&advertise_addr).map_err(|m| invalid(format!("advertise_addr: {m}")))?;

        let mut ids = HashSet::new();
        let mut addrs = HashSet::new();
        for m in &raw.initial_cluster {
            if m.id == 0 {
                return Err(invalid(
                    "initial_cluster: member ids must be positive".into(),
                ));
            }
            if !ids.insert(m.id) {
                return Err(invalid(format!(
                    "initial_cluster: id {} appears twice",
                    m.id
                )));
            }
            if !addrs.insert(m.addr.clone()) {
                return Err(invalid(format!(
                    "initial_cluster: address {} appears twice",
                    m.addr
                )));
            }
            check_host_port(&m.addr)
                .map_err(|e| invalid(format!("initial_cluster member {}: {e}", m.id)))?;
        }
        let me = raw.initial_cluster.iter().find(|m| m.id == raw.node_id);
        match (raw.join, me) {
            (false, None) => {
                return Err(invalid(format!(
                    "node_id {} is not in initial_cluster; list it there, or set join = true \
                     to start this node empty and add it with `pgquorum ctl member add`",
                    raw.node_id
                )));
            }
            (false, Some(m)) if m.addr != advertise_addr => {
                return Err(invalid(format!(
                    "initial_cluster lists node {} at {}, but its advertise_addr is {advertise_addr}; \
                     make them the same",
                    m.id, m.addr
                )));
            }
            _ => {}
        }
        let t = &raw.raft;
        if t.heartbeat_ms == 0 || t.election_timeout_min_ms <= t.heartbeat_ms * 2 {
            return Err(invalid(format!(
                "raft.election_timeout_min_ms ({}) must exceed twice raft.heartbeat_ms ({}), or a \
                 healthy leader is deposed by a single late heartbeat",
                t.election_timeout_min_ms, t.heartbeat_ms
            )));
        }
        if t.election_timeout_max_ms <= t.election_timeout_min_ms {
            return Err(invalid(
                "raft.election_timeout_max_ms must be greater than raft.election_timeout_min_ms"
                    .into(),
            ));
        }
        if t.lease_check_interval_ms == 0 || t.request_timeout_ms == 0 || t.snapshot_logs == 0 {
            return Err(invalid(
                "raft.lease_check_interval_ms, request_timeout_ms and snapshot_logs must be positive"
                    .into(),
            ));
        }
        let data_dir = if raw.data_dir.is_absolute() {
            raw.data_dir
        } else {
            path.parent().unwrap_or(Path::new(".")).join(raw.data_dir)
        };
        raw.ha
            .validate(t.election_timeout_max_ms)
            .map_err(|source| ConfigError::Ha {
                path: path.to_path_buf(),
                source,
            })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let postgresql = match raw.postgresql {
            None => None,
            Some(p) => Some(
                postgres_config(p, base).map_err(|source| ConfigError::Postgres {
                    path: path.to_path_buf(),
                    source,
                })?,
            ),
        };
        if let Some(p) = &postgresql {
            pg_rules::check_synchronous_commit(&p.parameters, raw.ha.synchronous_mode).map_err(
                |source| ConfigError::Setting {
                    path: path.to_path_buf(),
                    source,
                },
            )?;
        }
        let rest_listen_addr = match &raw.rest_listen_addr {
            None => None,
            Some(a) => Some(
                a.parse()
                    .map_err(|e| invalid(format!("rest_listen_addr {a:?} is not IP:PORT ({e})")))?,
            ),
        };
        raw.limits.validate().map_err(invalid)?;
        let tls = match (raw.tls, raw.insecure) {
            (Some(_), true) => {
                return Err(invalid(
                    "both [tls] and insecure = true are set; remove insecure = true to use TLS"
                        .into(),
                ));
            }
            (None, false) => {
                return Err(invalid(
                    "no [tls] section: the cluster's traffic must be encrypted and its callers \
                     authenticated. Create certificates with `pgquorum certs init` and \
                     `pgquorum certs issue NAME --host HOST`, and add [tls] with ca, cert and \
                     key; or set insecure = true to run in plaintext (a test set-up only)"
                        .into(),
                ));
            }
            (Some(t), false) => Some(TlsFiles {
                ca: base.join(t.ca),
                cert: base.join(t.cert),
                key: base.join(t.key),
                rest: t.rest,
                admin_token_file: t.admin_token_file.map(|f| base.join(f)),
                read_token_file: t.read_token_file.map(|f| base.join(f)),
            }),
            (None, true) => None,
        };
        let rest_auth = match raw.rest_auth {
            None => None,
            Some(mut a) => {
                a.validate().map_err(invalid)?;
                for f in [&mut a.password_file, &mut a.token_file]
                    .into_iter()
                    .flatten()
                {
                    *f = base.join(&*f);
                }
                Some(a)
            }
        };
        let mut postgresql = postgresql;
        if let (Some(p), Some(t)) = (postgresql.as_mut(), tls.as_ref()) {
            p.ssl = Some(PgSsl {
                ca: t.ca.clone(),
                cert: t.cert.clone(),
                key: t.key.clone(),
            });
        }
        Ok(Self {
            rest_auth,
            tls,
            limits: raw.limits,
            postgresql,
            ha: raw.ha,
            tags: raw.tags,
            rest_listen_addr,
            cluster_name: raw.cluster_name,
            node_id: raw.node_id,
            name: raw.name,
            listen_addr,
            advertise_addr,
            data_dir,
            join: raw.join,
            initial_cluster: raw.initial_cluster,
            raft: raw.raft,
        })
    }

    /// Where this node's own clients reach the store: this node first, then the
    /// other members of `initial_cluster`.
    pub fn store_endpoints(&self) -> Vec<String> {
        let mut endpoints = vec![self.advertise_addr.clone()];
        endpoints.extend(
            self.initial_cluster
                .iter()
                .map(|m| m.addr.clone())
                .filter(|a| *a != self.advertise_addr),
        );
        endpoints
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.raft.request_timeout_ms)
    }
}

fn postgres_config(p: RawPostgres, base: &Path) -> Result<PostgresConfig, PostgresSectionError> {
    let bin_dir = match p.bin_dir {
        Some(b) => b,
        None => find_pg_bin_dir().ok_or(PostgresSectionError::NoServerFound)?,
    };
    if !bin_dir.join("postgres").exists() {
        return Err(PostgresSectionError::NoPostgresBinary(bin_dir));
    }
    if p.port == 0 {
        return Err(PostgresSectionError::NoPort);
    }
    for (name, c) in [("superuser", &p.superuser), ("replication", &p.replication)] {
        if c.username.is_empty() {
            return Err(PostgresSectionError::EmptyUsername(name));
        }
        if c.password.is_none() && c.password_file.is_none() {
            return Err(PostgresSectionError::NoPassword(name));
        }
    }
    let data_dir = if p.data_dir.is_absolute() {
        p.data_dir
    } else {
        base.join(p.data_dir)
    };
    Ok(PostgresConfig {
        bin_dir,
        data_dir,
        connect_host: p.connect_host.unwrap_or_else(|| p.listen_host.clone()),
        listen_host: p.listen_host,
        port: p.port,
        os_user: p.os_user,
        superuser: p.superuser,
        replication: p.replication,
        parameters: p.parameters,
        pg_hba: p.pg_hba,
        callbacks: callbacks::callbacks(p.callbacks, p.pre_promote, p.callback_timeout_ms)?,
        ssl: None,
    })
}

/// The newest PostgreSQL server under /usr/lib/postgresql (Debian layout).
pub fn find_pg_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

fn check_host_port(s: &str) -> Result<(), HostPortError> {
    match crate::hostport::parse(s) {
        Some(_) => Ok(()),
        None => Err(HostPortError(s.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
cluster_name = "c"
insecure = true
node_id = 1
name = "n1"
listen_addr = "127.0.0.1:7001"
data_dir = "data/n1"
[[initial_cluster]]
id = 1
name = "n1"
addr = "127.0.0.1:7001"
[[initial_cluster]]
id = 2
name = "n2"
addr = "127.0.0.1:7002"
"#;

    fn parse(s: &str) -> Result<NodeConfig, ConfigError> {
        NodeConfig::parse(s, Path::new("/etc/pgq/n1.toml"))
    }

    #[test]
    fn a_changed_password_needs_a_restart_although_debug_hides_it() {
        let creds = |pw: &str| Credentials {
            username: "postgres".into(),
            password: Some(pw.into()),
            password_file: None,
        };
        let pg = |pw: &str| PostgresConfig {
            bin_dir: "/bin".into(),
            data_dir: "/data".into(),
            listen_host: "127.0.0.1".into(),
            port: 5432,
            connect_host: "127.0.0.1".into(),
            os_user: "postgres".into(),
            superuser: creds(pw),
            replication: creds("r"),
            parameters: Default::default(),
            pg_hba: Vec::new(),
            callbacks: Callbacks::default(),
            ssl: None,
        };
        let mut old = parse(GOOD).unwrap();
        old.postgresql = Some(pg("one"));
        let mut new = old.clone();
        new.postgresql = Some(pg("two"));
        assert_eq!(
            format!("{:?}", old.postgresql),
            format!("{:?}", new.postgresql)
        );
        assert!(!format!("{:?}", new.postgresql).contains("two"));
        assert_eq!(old.changes_needing_restart(&new), vec!["[postgresql]"]);
    }

    #[test]
    fn good_config_resolves_data_dir_beside_the_file() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.data_dir, Path::new("/etc/pgq/data/n1"));
        assert_eq!(c.advertise_addr, "127.0.0.1:7001");
        assert_eq!(c.raft, RaftTuning::default());
    }

    #[test]
    fn rejects_bad_inputs_with_a_reason() {
        let cases = [
            (
                GOOD.replace("node_id = 1", "node_id = 3"),
                "not in initial_cluster",
            ),
            (GOOD.replace("node_id = 1", "node_id = 0"), "positive"),
            (
                GOOD.replace("name = \"n1\"\nlisten", "name = \"n,1\"\nlisten"),
                "without commas",
            ),
            (
                GOOD.replace("listen_addr = \"127.0.0.1:7001\"", "listen_addr = \"nope\""),
                "listen_addr",
            ),
            (GOOD.replace("7002", "7001"), "appears twice"),
            (
                GOOD.replace("name = \"n1\"\nlisten", "colour = 1\nname = \"n1\"\nlisten"),
                "unknown field",
            ),
            (
                format!("{GOOD}[raft]\nheartbeat_ms = 400\n"),
                "twice raft.heartbeat_ms",
            ),
            (
                GOOD.replace("id = 1\nname", "id = 2\nname"),
                "appears twice",
            ),
            // Secure by default: plaintext only when asked for by name.
            (GOOD.replace("insecure = true\n", ""), "pgquorum certs init"),
            (
                GOOD.replace(
                    "insecure = true\n",
                    "insecure = true\ntls = { ca = \"a\", cert = \"b\", key = \"c\" }\n",
                ),
                "remove insecure = true",
            ),
            (
                format!("{GOOD}[limits]\nrest_max_connections = 0\n"),
                "limits.rest_max_connections must be positive",
            ),
        ];
        for (text, want) in cases {
            let err = parse(&text)
                .err()
                .unwrap_or_else(|| panic!("accepted: {text}"));
            assert!(
                err.to_string().contains(want),
                "{err} should mention {want}"
            );
        }
    }

    #[test]
    fn tags_have_patronis_meaning_and_keep_unknown_keys() {
        let c = parse(&format!("{GOOD}[tags]\ndc = \"east\"\nnosync = true\n")).unwrap();
        assert_eq!(
            c.tags.failover_priority, 1,
            "untagged: a candidate, as in Patroni"
        );
        assert!(c.tags.nosync && !c.tags.never_promoted());
        assert_eq!(c.tags.other["dc"], "east");
        let json = serde_json::to_string(&c.tags).unwrap();
        let back: Tags = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c.tags, "published and read back unchanged: {json}");
        let c = parse(&format!("{GOOD}[tags]\nfailover_priority = 0\n")).unwrap();
        assert!(c.tags.never_promoted());
        let old: Tags = serde_json::from_str(r#"{"nofailover":false}"#).unwrap();
        assert_eq!(old, Tags::default(), "a status published before the field");
    }

    #[test]
    fn join_mode_needs_no_initial_cluster_entry() {
        let text = GOOD
            .replace("node_id = 1", "node_id = 4")
            .replace("cluster_name", "join = true\ncluster_name");
        let c = parse(&text).unwrap();
        assert!(c.join);
    }
}
