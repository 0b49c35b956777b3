//! Harness for tests that run pgquorum with real PostgreSQL 15: three `pgquorum node`
//! processes, each supervising its own PostgreSQL on free ports in one temp dir.
//!
//! Works as root (PostgreSQL then runs as the `postgres` OS user, so the temp dir is
//! made traversable) and as an ordinary user. Every process, PostgreSQL included, is
//! killed when the cluster is dropped, also when a test panics.

#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, ensure};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::common::{BIN, Proc, free_ports, poll_until, spawn_node_at, tail, unique_cluster_name};

mod client;
pub mod haproxy;
mod netns;
mod observer;

// Not every test crate that includes this harness uses every part of it.
#[allow(unused_imports)]
pub use self::client::*;
#[allow(unused_imports)]
pub use self::netns::*;
#[allow(unused_imports)]
pub use self::observer::*;

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
pub const SUPERUSER_PASSWORD: &str = "test-superuser-pw";
/// The REST write routes' password of a TLS cluster (`PgOptions::tls`).
pub const REST_PASSWORD: &str = "test-rest-pw";
/// Waits that include pg_basebackup or pg_rewind.
pub const SLOW_WAIT: Duration = Duration::from_secs(90);

/// `bin VERSION_ARG` (from the Debian package `package`) runs; under CI its absence
/// is a failure, not a skip.
pub fn have_tool(bin: &str, version_arg: &str, package: &str) -> bool {
    let ok = std::process::Command::new(bin)
        .arg(version_arg)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but {bin} is not installed (apt-get install {package})"
        );
        eprintln!("skipped: no {bin}");
    }
    ok
}

/// PostgreSQL 15 must be installed. Under CI a missing server is a failure, not a skip.
pub fn have_pg() -> bool {
    let ok = Path::new(PG_BIN).join("postgres").exists();
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but there is no PostgreSQL 15 in {PG_BIN}"
        );
        eprintln!("skipped: no PostgreSQL 15 in {PG_BIN}");
    }
    ok
}

#[derive(Clone, Debug)]
pub struct PgOptions {
    pub synchronous_mode: bool,
    pub ttl_ms: u64,
    pub loop_wait_ms: u64,
    /// More `[ha]` lines (TOML), e.g. `primary_hang_timeout_ms = 2500`.
    pub ha_extra: String,
    /// PostgreSQL's `fsync` (off by default: the tests do not test the disk).
    pub fsync: bool,
    /// More `[postgresql]` lines (TOML, may open sub-tables); `{dir}` becomes the
    /// node's directory.
    pub pg_extra: String,
    /// Raft members without PostgreSQL (ids 4, 5, ...): with two, the cluster keeps
    /// its quorum when two PostgreSQL hosts die.
    pub witnesses: u64,
    /// Start the nodes at this nice value (root only for a negative one), as the
    /// shipped unit file's `Nice=` does.
    pub nice: Option<i32>,
    /// Start the nodes with this descriptor limit (soft and hard).
    pub nofile: Option<u64>,
    /// TLS between the nodes (certificates made by `pgquorum certs` in the
    /// cluster's `certs/`); plaintext (`insecure = true`) otherwise.
    pub tls: bool,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            synchronous_mode: false,
            ttl_ms: 2500,
            loop_wait_ms: 500,
            ha_extra: String::new(),
            fsync: false,
            pg_extra: String::new(),
            witnesses: 0,
            nice: None,
            nofile: None,
            tls: false,
        }
    }
}

impl PgOptions {
    /// The config line that says how the node's traffic is protected.
    fn tls_line(&self, certs: &Path, name: &str) -> String {
        if !self.tls {
            return "insecure = true\n".into();
        }
        format!(
            "tls = {{ ca = {:?}, cert = {:?}, key = {:?} }}\n\
             rest_auth = {{ username = \"admin\", password_file = {:?} }}\n",
            certs.join("ca.crt"),
            certs.join(format!("{name}.crt")),
            certs.join(format!("{name}.key")),
            certs.join("rest.password"),
        )
    }

    /// The defaults with `synchronous_mode` on.
    pub fn synchronous() -> Self {
        Self {
            synchronous_mode: true,
            ..Self::default()
        }
    }
}

pub struct PgNode {
    pub id: u64,
    pub name: String,
    /// The node's address: 127.0.0.1, or its own address in its network namespace.
    pub host: String,
    pub dir: PathBuf,
    pub raft_port: u16,
    pub rest_port: u16,
    pub pg_port: u16,
    pub proc: Option<Proc>,
    /// A Raft member without PostgreSQL.
    pub witness: bool,
}

impl PgNode {
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("node.toml")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("node.log")
    }
    pub fn pg_data(&self) -> PathBuf {
        self.dir.join("pg").join("data")
    }
    pub fn pg_log(&self) -> PathBuf {
        self.dir.join("pg").join("postgresql.log")
    }
}

pub struct PgCluster {
    pub name: String,
    pub opts: PgOptions,
    pub nodes: BTreeMap<u64, PgNode>,
    /// Declared before `tmp`: namespaces go after every process (see Drop).
    pub net: Option<NetNs>,
    tmp: TempDir,
}

impl PgCluster {
    /// Writes three configs and starts the nodes; does not wait for PostgreSQL.
    pub async fn start(opts: PgOptions) -> PgCluster {
        Self::start_with(opts, None).await
    }

    /// Starts a cluster with `opts` and waits for a primary and every other member
    /// streaming from it: (cluster, primary, replicas).
    pub async fn start_healthy(opts: PgOptions) -> (PgCluster, u64, Vec<u64>) {
        let c = Self::start(opts).await;
        let p = c.wait_primary(&[], SLOW_WAIT).await;
        let replicas: Vec<u64> = c.ids().into_iter().filter(|i| *i != p).collect();
        c.wait_streaming(p, &replicas, SLOW_WAIT).await;
        (c, p, replicas)
    }

    /// Like [`PgCluster::start`], each node in its own network namespace of `net`.
    pub async fn start_in_netns(opts: PgOptions) -> PgCluster {
        Self::start_with(opts, Some(NetNs::new(3))).await
    }

    async fn start_with(opts: PgOptions, net: Option<NetNs>) -> PgCluster {
        let tmp = tempfile::Builder::new()
            .prefix("pgquorum-pg-")
            .tempdir()
            .expect("temp dir");
        // PostgreSQL runs as another OS user when the tests run as root.
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        assert!(
            net.is_none() || opts.witnesses == 0,
            "witnesses in network namespaces are not supported"
        );
        let total = 3 + opts.witnesses;
        let ports = free_ports(3 * total as usize);
        let mut nodes = BTreeMap::new();
        for id in 1..=total {
            let i = (id as usize - 1) * 3;
            let dir = tmp.path().join(format!("n{id}"));
            fs::create_dir_all(&dir).expect("node dir");
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
            nodes.insert(
                id,
                PgNode {
                    id,
                    name: format!("n{id}"),
                    host: net.as_ref().map_or("127.0.0.1".to_string(), |n| n.addr(id)),
                    dir,
                    raft_port: ports[i],
                    rest_port: ports[i + 1],
                    pg_port: ports[i + 2],
                    proc: None,
                    witness: id > 3,
                },
            );
        }
        let mut c = PgCluster {
            name: unique_cluster_name(),
            opts,
            nodes,
            net,
            tmp,
        };
        if c.opts.tls {
            c.make_certs();
        }
        for id in 1..=total {
            let text = c.config(id);
            fs::write(c.node(id).config_path(), text).expect("write config");
        }
        for id in 1..=total {
            c.launch(id);
        }
        c
    }

    /// The cluster CA, a certificate per node (for its host), an admin certificate
    /// `alice` for `ctl`, and the REST password file, all made by `pgquorum certs`
    /// as an operator would.
    fn make_certs(&self) {
        let certs = self.certs_dir();
        let dir = certs.to_str().unwrap();
        let run = |args: &[&str]| {
            let out = std::process::Command::new(BIN)
                .args(args)
                .output()
                .expect("certs");
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["certs", "init", "--dir", dir, "--cluster", &self.name]);
        for n in self.nodes.values() {
            run(&["certs", "issue", &n.name, "--host", &n.host, "--dir", dir]);
        }
        run(&["certs", "issue", "alice", "--role", "admin", "--dir", dir]);
        let pw = certs.join("rest.password");
        fs::write(&pw, format!("{REST_PASSWORD}\n")).unwrap();
        fs::set_permissions(&pw, fs::Permissions::from_mode(0o600)).unwrap();
    }

    pub fn certs_dir(&self) -> PathBuf {
        self.tmp.path().join("certs")
    }

    fn config(&self, id: u64) -> String {
        let n = self.node(id);
        let mut t = String::new();
        writeln!(t, "cluster_name = {:?}", self.name).unwrap();
        t.push_str(&self.opts.tls_line(&self.tmp.path().join("certs"), &n.name));
        writeln!(t, "node_id = {id}").unwrap();
        writeln!(t, "name = {:?}", n.name).unwrap();
        writeln!(t, "listen_addr = \"{}:{}\"", n.host, n.raft_port).unwrap();
        writeln!(t, "rest_listen_addr = \"{}:{}\"", n.host, n.rest_port).unwrap();
        writeln!(
            t,
            "data_dir = {:?}",
            n.dir.join("raft").display().to_string()
        )
        .unwrap();
        for m in self.nodes.values() {
            writeln!(
                t,
                "\n[[initial_cluster]]\nid = {}\nname = {:?}\naddr = \"{}:{}\"",
                m.id, m.name, m.host, m.raft_port
            )
            .unwrap();
        }
        writeln!(
            t,
            "\n[raft]\nheartbeat_ms = 100\nelection_timeout_min_ms = 500\n\
             election_timeout_max_ms = 1000\nlease_check_interval_ms = 100\nrequest_timeout_ms = 3000"
        )
        .unwrap();
        writeln!(
            t,
            "\n[ha]\nttl_ms = {}\nloop_wait_ms = {}\nmaximum_lag_on_failover = 1048576\nsynchronous_mode = {}\n{}",
            self.opts.ttl_ms, self.opts.loop_wait_ms, self.opts.synchronous_mode, self.opts.ha_extra
        )
        .unwrap();
        if n.witness {
            return t;
        }
        writeln!(
            t,
            "\n[postgresql]\nbin_dir = {PG_BIN:?}\ndata_dir = {:?}\nlisten_host = {:?}\n\
             connect_host = {:?}\nport = {}\nsuperuser = {{ username = \"postgres\", password = {SUPERUSER_PASSWORD:?} }}\n\
             replication = {{ username = \"replicator\", password = \"test-repl-pw\" }}\n\
             parameters = {{ shared_buffers = \"16MB\", max_connections = \"30\", fsync = \"{}\" }}",
            n.pg_data().display().to_string(),
            n.host,
            n.host,
            n.pg_port,
            if self.opts.fsync { "on" } else { "off" }
        )
        .unwrap();
        // With TLS, PostgreSQL takes plaintext logins over loopback only; the test's
        // own checks come from its side of the namespaces in plaintext: let them in
        // as an operator's pg_hba line would.
        if let (true, Some(net)) = (self.opts.tls, &self.net) {
            let lines: Vec<String> = net
                .test_addrs()
                .iter()
                .map(|a| format!("\"host all postgres {a}/32 scram-sha-256\""))
                .collect();
            writeln!(t, "pg_hba = [{}]", lines.join(", ")).unwrap();
        }
        let dir = n.dir.display().to_string();
        writeln!(t, "{}", self.opts.pg_extra.replace("{dir}", &dir)).unwrap();
        t
    }

    pub fn node(&self, id: u64) -> &PgNode {
        self.nodes.get(&id).expect("node id")
    }

    /// The members that run PostgreSQL.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| !n.witness)
            .map(|n| n.id)
            .collect()
    }

    pub fn temp_path(&self) -> &Path {
        self.tmp.path()
    }

    fn launch(&mut self, id: u64) {
        let ns = self.net.as_ref().map(|n| n.ns(id));
        let (nice, nofile) = (self.opts.nice, self.opts.nofile);
        let n = self.nodes.get_mut(&id).expect("node");
        assert!(n.proc.is_none(), "node {id} is running");
        n.proc = Some(Proc::new(match ns {
            None => spawn_node_at(&n.config_path(), &n.log_path(), nice, nofile),
            Some(ns) => spawn_node_in(&ns, &n.config_path(), &n.log_path()),
        }));
    }

    /// Starts node `id` again from its config and data dirs.
    pub fn restart(&mut self, id: u64) {
        self.launch(id);
    }

    /// The postmaster pid from `postmaster.pid`, if the file is there.
    pub fn postmaster_pid(&self, id: u64) -> Option<i32> {
        let text = fs::read_to_string(self.node(id).pg_data().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Every process of node `id`'s PostgreSQL: the postmaster first, then its
    /// descendants (each child of the postmaster is in a session of its own, so the
    /// postmaster's process group holds the postmaster alone).
    pub fn instance_pids(&self, id: u64) -> Vec<i32> {
        let Some(pm) = self.postmaster_pid(id) else {
            return Vec::new();
        };
        let parents: Vec<(i32, i32)> = fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let pid: i32 = e.file_name().to_str()?.parse().ok()?;
                let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let ppid = stat[stat.rfind(')')? + 1..]
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()?;
                Some((pid, ppid))
            })
            .collect();
        let mut out = vec![pm];
        let mut i = 0;
        while i < out.len() {
            let parent = out[i];
            out.extend(
                parents
                    .iter()
                    .filter(|(_, pp)| *pp == parent)
                    .map(|(p, _)| *p),
            );
            i += 1;
        }
        out
    }

    /// Sends `sig` to every process of node `id`'s PostgreSQL, the postmaster first
    /// (stopped, it cannot start new ones meanwhile). Processes gone already are skipped.
    pub fn signal_instance(&self, id: u64, sig: i32) -> Vec<i32> {
        let pids = self.instance_pids(id);
        for p in &pids {
            // SAFETY: kill(2) of this test cluster's own PostgreSQL processes.
            unsafe { libc::kill(*p, sig) };
        }
        pids
    }

    /// The pid of node `id`'s pg-guard: the parent of its postmaster.
    pub fn guard_pid(&self, id: u64) -> Option<i32> {
        let pm = self.postmaster_pid(id)?;
        let stat = fs::read_to_string(format!("/proc/{pm}/stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 1..];
        let ppid: i32 = rest.split_whitespace().nth(1)?.parse().ok()?;
        // A stale postmaster.pid may name a reused pid: only a real guard counts.
        let cmd = fs::read(format!("/proc/{ppid}/cmdline")).ok()?;
        String::from_utf8_lossy(&cmd)
            .contains("pg-guard")
            .then_some(ppid)
    }

    /// Starts node `id`'s PostgreSQL by hand with `pg_ctl` (as the `postgres` OS user
    /// when the tests run as root), outside pgquorum: a stray postmaster.
    pub fn start_stray_postmaster(&self, id: u64) {
        let n = self.node(id);
        let pg_ctl = format!("{PG_BIN}/pg_ctl");
        let data = n.pg_data().display().to_string();
        let log = n.dir.join("stray.log");
        let args = [
            pg_ctl.as_str(),
            "-D",
            data.as_str(),
            "-l",
            log.to_str().expect("utf-8 path"),
            "-o",
            "-c unix_socket_directories=",
            "-w",
            "start",
        ];
        let root = unsafe { libc::geteuid() } == 0;
        let mut cmd = if root {
            let _ = fs::File::create(&log);
            std::process::Command::new("chown")
                .args(["postgres", log.to_str().unwrap()])
                .status()
                .expect("chown");
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).args(args);
            c
        } else {
            let mut c = std::process::Command::new(args[0]);
            c.args(&args[1..]);
            c
        };
        let out = cmd.output().expect("run pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The pid of node `id`'s walreceiver (a child of its postmaster), if it runs.
    pub fn walreceiver_pid(&self, id: u64) -> Option<i32> {
        let pm = self.postmaster_pid(id)?;
        for e in fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            let ppid: Option<i32> = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok());
            let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if ppid == Some(pm) && String::from_utf8_lossy(&cmd).contains("walreceiver") {
                return Some(pid);
            }
        }
        None
    }

    /// Node `id`'s process runs and its gRPC API answers a status request.
    pub async fn status_ok(&mut self, id: u64) -> bool {
        let alive = self
            .nodes
            .get_mut(&id)
            .and_then(|n| n.proc.as_mut())
            .is_some_and(|p| p.try_wait().is_none());
        let n = self.node(id);
        let ep = format!("{}:{}", n.host, n.raft_port);
        alive
            && match pgquorum::client::Client::new(vec![ep]) {
                Ok(c) => c.status().await.is_ok(),
                Err(_) => false,
            }
    }

    /// The pid of node `id`'s pgquorum process.
    pub fn supervisor_pid(&self, id: u64) -> i32 {
        self.node(id).proc.as_ref().expect("running").pid() as i32
    }

    /// Node `id`'s process handle, which must be running; the node counts as stopped.
    fn take_proc(&mut self, id: u64) -> Proc {
        self.nodes
            .get_mut(&id)
            .expect("node")
            .proc
            .take()
            .expect("running")
    }

    /// `kill -9` of pgquorum only; its PostgreSQL is left to the guard.
    pub fn kill_supervisor(&mut self, id: u64) {
        let mut p = self.take_proc(id);
        p.kill9();
    }

    /// A host crash: `kill -9` of pgquorum and of every process of its PostgreSQL
    /// at the same moment (all of them frozen first, so that none notices the others
    /// dying and acts on it).
    pub fn kill_host(&mut self, id: u64) {
        let p = self.take_proc(id);
        // SAFETY: kill(2) of this test's own node.
        unsafe { libc::kill(p.pid() as i32, libc::SIGSTOP) };
        let pids = self.signal_instance(id, libc::SIGSTOP);
        for pid in pids {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // SAFETY: as above.
        unsafe { libc::kill(p.pid() as i32, libc::SIGKILL) };
        drop(p);
    }

    /// SIGTERM of node `id`; waits for the process to exit and returns whether it
    /// exited successfully.
    pub async fn terminate(&mut self, id: u64) -> bool {
        let mut p = self.take_proc(id);
        p.sigterm();
        match p.wait_exit(SLOW_WAIT).await {
            Some(st) => st.success(),
            None => panic!("node {id} did not exit within {SLOW_WAIT:?} of SIGTERM"),
        }
    }

    pub fn conninfo(&self, id: u64) -> String {
        format!(
            "host={} port={} user=postgres password={SUPERUSER_PASSWORD} dbname=postgres connect_timeout=2",
            self.node(id).host,
            self.node(id).pg_port
        )
    }

    /// A new connection to node `id`'s PostgreSQL (2 s connect timeout).
    pub async fn connect(&self, id: u64) -> anyhow::Result<tokio_postgres::Client> {
        connect(&self.conninfo(id)).await
    }

    /// Whether node `id`'s PostgreSQL accepts a write right now.
    pub async fn is_writable(&self, id: u64) -> bool {
        is_writable(&self.conninfo(id)).await
    }

    /// HTTP status of `method path` on node `id`'s REST API (`None`: no answer).
    pub async fn http(&self, id: u64, method: &str, path: &str) -> Option<(u16, String)> {
        http(&self.node(id).host, self.node(id).rest_port, method, path).await
    }

    pub async fn http_status(&self, id: u64, method: &str, path: &str) -> Option<u16> {
        self.http(id, method, path).await.map(|(s, _)| s)
    }

    /// Waits until exactly one node, not in `exclude`, answers `GET /primary` with 200
    /// and accepts writes; returns it.
    pub async fn wait_primary(&self, exclude: &[u64], timeout: Duration) -> u64 {
        let ids: Vec<u64> = self
            .ids()
            .into_iter()
            .filter(|i| !exclude.contains(i))
            .collect();
        self.wait_for("a primary", timeout, async || {
            let mut found = Vec::new();
            for id in &ids {
                if self.http_status(*id, "GET", "/primary").await == Some(200) {
                    found.push(*id);
                }
            }
            ensure!(found.len() == 1, "primaries by REST: {found:?}");
            ensure!(
                self.is_writable(found[0]).await,
                "node {} does not accept writes",
                found[0]
            );
            Ok(found[0])
        })
        .await
    }

    /// Waits until one of `replicas` is the recorded synchronous standby (it answers
    /// `GET /sync` with 200) and returns it.
    pub async fn wait_sync_standby(&self, replicas: &[u64]) -> u64 {
        self.wait_for("a recorded synchronous standby", SLOW_WAIT, async || {
            for r in replicas {
                if self.http_status(*r, "GET", "/sync").await == Some(200) {
                    return Ok(*r);
                }
            }
            anyhow::bail!("no replica answers /sync with 200")
        })
        .await
    }

    /// Waits until `replicas` stream from `primary` (per its `pg_stat_replication`)
    /// and report themselves as replicas over REST.
    pub async fn wait_streaming(&self, primary: u64, replicas: &[u64], timeout: Duration) {
        let names: Vec<String> = replicas
            .iter()
            .map(|r| self.node(*r).name.clone())
            .collect();
        self.wait_for("replicas to stream", timeout, async || {
            let c = self.connect(primary).await?;
            let rows = c
                .query(
                    "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'",
                    &[],
                )
                .await?;
            let streaming: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            for n in &names {
                ensure!(
                    streaming.contains(n),
                    "{n} not streaming (streaming: {streaming:?})"
                );
            }
            for r in replicas {
                ensure!(
                    self.http_status(*r, "GET", "/replica").await == Some(200),
                    "node {r}: GET /replica is not 200"
                );
            }
            Ok(())
        })
        .await
    }

    /// Number of rows in `table` on node `id`.
    pub async fn count(&self, id: u64, table: &str) -> anyhow::Result<i64> {
        let c = self.connect(id).await?;
        let row = c
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await?;
        Ok(row.get(0))
    }

    /// `pgquorum ctl --endpoints <all> <args>` output (stdout), failing on a non-zero exit.
    pub fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.ctl_output(args)?;
        ensure!(
            out.status.success(),
            "ctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `pgquorum ctl` that must fail: its stderr.
    pub fn ctl_fails(&self, args: &[&str]) -> String {
        let out = self.ctl_output(args).expect("run ctl");
        assert!(
            !out.status.success(),
            "ctl {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `pgquorum ctl` with standard input from /dev/null (never a terminal).
    pub fn ctl_output(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        self.ctl_command(args).output().context("run ctl")
    }

    /// `pgquorum ctl` running on, its stdout piped (the caller kills it).
    pub fn ctl_spawn(&self, args: &[&str]) -> std::process::Child {
        self.ctl_command(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn ctl")
    }

    fn ctl_command(&self, args: &[&str]) -> std::process::Command {
        let endpoints: Vec<String> = self
            .nodes
            .values()
            .map(|n| format!("{}:{}", n.host, n.raft_port))
            .collect();
        let mut cmd = std::process::Command::new(BIN);
        cmd.arg("ctl").arg("--endpoints").arg(endpoints.join(","));
        if self.opts.tls {
            let certs = self.certs_dir();
            cmd.arg("--ca")
                .arg(certs.join("ca.crt"))
                .arg("--cert")
                .arg(certs.join("alice.crt"))
                .arg("--key")
                .arg(certs.join("alice.key"));
        }
        cmd.args(args)
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null());
        cmd
    }

    /// `method path` with headers and a body on node `id`'s REST API.
    pub async fn http_with(
        &self,
        id: u64,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Option<(u16, String)> {
        http_with(
            &self.node(id).host,
            self.node(id).rest_port,
            method,
            path,
            headers,
            body,
        )
        .await
    }

    pub async fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        f: impl AsyncFnMut() -> anyhow::Result<T>,
    ) -> T {
        match poll_until(what, timeout, f).await {
            Ok(v) => v,
            Err(msg) => panic!("{msg}\n{}", self.logs()),
        }
    }

    /// The tail of every node's pgquorum and PostgreSQL logs.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in self.nodes.values() {
            let state = if n.proc.is_some() {
                "running"
            } else {
                "stopped"
            };
            // pgquorum's own lines: openraft's warnings while a peer is down would
            // otherwise fill the whole tail.
            let own: Vec<String> = fs::read_to_string(n.log_path())
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.contains(" openraft::"))
                .map(str::to_string)
                .collect();
            writeln!(
                out,
                "----- {} ({state}) pgquorum log, without openraft lines -----\n{}",
                n.name,
                own[own.len().saturating_sub(80)..].join("\n")
            )
            .unwrap();
            writeln!(
                out,
                "----- {} PostgreSQL log -----\n{}",
                n.name,
                tail(&n.pg_log(), 20)
            )
            .unwrap();
        }
        out
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
            // Whole logs and data dirs stay for a post-mortem (CI machines are fresh).
            self.tmp.disable_cleanup(true);
            eprintln!("kept for inspection: {}", self.tmp.path().display());
        }
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            let pm = self.postmaster_pid(id);
            // Found before anything is killed: PostgreSQL's children each call setsid,
            // so the postmaster's group does not reach them, and a guard killed in
            // the middle of its freeze-then-kill would leave them stopped for good.
            let instance = self.instance_pids(id);
            // A guard a test stopped would outlive pgquorum (it has its own session).
            let guard = self.guard_pid(id).filter(|g| *g > 1);
            if let Some(mut p) = self.nodes.get_mut(&id).and_then(|n| n.proc.take()) {
                p.kill9();
            }
            if let Some(g) = guard {
                unsafe {
                    libc::kill(g, libc::SIGKILL);
                }
            }
            // The guard kills PostgreSQL when pgquorum dies; this covers a guard
            // that was itself killed by a test.
            if let Some(pm) = pm {
                unsafe {
                    libc::kill(-pm, libc::SIGKILL);
                }
            }
            // Only a process still working in this cluster's dirs: a pid that exited
            // meanwhile may belong to another test now.
            let ours = |p: &i32| {
                fs::read_link(format!("/proc/{p}/cwd"))
                    .is_ok_and(|d| d.starts_with(self.tmp.path()))
            };
            for p in instance.into_iter().filter(|p| *p > 1 && ours(p)) {
                // SAFETY: kill(2) of this cluster's own PostgreSQL processes.
                unsafe {
                    libc::kill(p, libc::SIGKILL);
                }
            }
        }
    }
}
