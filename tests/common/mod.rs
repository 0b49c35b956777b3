//! Shared harness for the integration tests: runs real `pgquorum node`
//! processes of the built binary, each with its own temp dir, config file,
//! sled data dir, free port and log file.
//!
//! Every process is killed (SIGKILL + wait) when its handle is dropped, also
//! when a test panics; a failing test prints the tail of every node's log.

#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use pgquorum::api::pb;
use pgquorum::client::Client;
use tempfile::TempDir;

mod process;
pub use process::*;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_pgquorum");
/// How often `wait_for` polls.
pub const POLL: Duration = Duration::from_millis(50);
/// Default deadline for waits that should take a few seconds at most.
pub const WAIT: Duration = Duration::from_secs(30);
/// `raft.request_timeout_ms` in every generated config.
pub const REQUEST_TIMEOUT_MS: u64 = 3000;
/// Lines of each node log printed when a test fails.
const LOG_TAIL_LINES: usize = 60;

/// Polls `f` every [`POLL`] until it returns `Ok`, or gives up after `timeout`
/// with a message naming `what` and the last error.
pub async fn poll_until<T>(
    what: &str,
    timeout: Duration,
    mut f: impl AsyncFnMut() -> anyhow::Result<T>,
) -> Result<T, String> {
    let start = Instant::now();
    loop {
        let last = match f().await {
            Ok(v) => return Ok(v),
            Err(e) => format!("{e:#}"),
        };
        if start.elapsed() >= timeout {
            return Err(format!(
                "timed out after {timeout:?} waiting for {what}; last error: {last}"
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`poll_until`] that panics on timeout.
pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    f: impl AsyncFnMut() -> anyhow::Result<T>,
) -> T {
    poll_until(what, timeout, f)
        .await
        .unwrap_or_else(|msg| panic!("{msg}"))
}

/// Ports that were free a moment ago (distinct). The listeners are dropped
/// before returning, so another process may take one: starting a node retries.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local_addr").port())
        .collect()
}

/// A cluster name no other test (or test run) uses.
pub fn unique_cluster_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "test-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A client for one endpoint with a short timeout, for polling.
pub fn poll_client(addr: &str) -> Client {
    Client::new(vec![addr.to_owned()])
        .expect("client")
        .with_timeout(Duration::from_secs(2))
}

/// Asks `addr` for its status and checks it is `node_id` of `cluster` (a port
/// may have been taken by a node of another test).
pub async fn status_of(
    addr: &str,
    cluster: &str,
    node_id: u64,
) -> anyhow::Result<pb::StatusResponse> {
    let st = poll_client(addr).status().await?;
    ensure!(
        st.cluster == cluster && st.node_id == node_id,
        "{addr} is node {} of cluster {:?}, expected node {node_id} of {cluster:?}",
        st.node_id,
        st.cluster
    );
    Ok(st)
}

/// One member of a test [`Cluster`].
#[derive(Debug)]
pub struct TestNode {
    pub id: u64,
    pub dir: PathBuf,
    pub spec: NodeSpec,
    pub proc: Option<Proc>,
}

impl TestNode {
    pub fn config_path(&self) -> PathBuf {
        self.dir.join(format!("n{}.toml", self.id))
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("node.log")
    }

    pub fn addr(&self) -> String {
        self.spec.listen_addr.clone()
    }

    fn write_config(&self) {
        fs::create_dir_all(&self.dir).expect("create node dir");
        fs::write(self.config_path(), self.spec.to_toml()).expect("write config");
    }

    fn is_running(&self) -> bool {
        self.proc.is_some()
    }
}

/// Result of starting a node process.
enum StartOutcome {
    Up,
    /// The port was taken by someone else.
    PortTaken,
}

/// A cluster of real `pgquorum node` processes in one temp dir.
pub struct Cluster {
    pub name: String,
    tmp: TempDir,
    nodes: BTreeMap<u64, TestNode>,
}

impl Cluster {
    /// Writes configs for nodes 1..=n (all in initial_cluster), starts them and
    /// waits until each answers a status request. Does not wait for a leader.
    pub async fn start(n: u64) -> Cluster {
        let tmp = tempfile::Builder::new()
            .prefix("pgquorum-it-")
            .tempdir()
            .expect("temp dir");
        let mut cluster = Cluster {
            name: unique_cluster_name(),
            tmp,
            nodes: BTreeMap::new(),
        };
        for attempt in 1..=5 {
            cluster.layout(n);
            match cluster.start_all().await {
                Ok(()) => return cluster,
                Err(e) => {
                    eprintln!(
                        "harness: cluster start attempt {attempt} failed ({e}); retrying with new ports"
                    );
                    for node in cluster.nodes.values_mut() {
                        if let Some(mut p) = node.proc.take() {
                            p.kill9();
                        }
                        let _ = fs::remove_dir_all(&node.spec.data_dir);
                    }
                }
            }
        }
        panic!("could not start a {n}-node cluster:\n{}", cluster.logs());
    }

    /// (Re)writes the configs of nodes 1..=n with fresh ports.
    fn layout(&mut self, n: u64) {
        let ports = free_ports(n as usize);
        let members: Vec<MemberSpec> = (1..=n)
            .zip(&ports)
            .map(|(id, port)| MemberSpec {
                id,
                name: format!("n{id}"),
                addr: format!("127.0.0.1:{port}"),
            })
            .collect();
        self.nodes.clear();
        for m in &members {
            let dir = self.tmp.path().join(format!("n{}", m.id));
            let spec = NodeSpec {
                cluster_name: self.name.clone(),
                node_id: m.id,
                name: m.name.clone(),
                listen_addr: m.addr.clone(),
                data_dir: dir.join("data"),
                join: false,
                initial_cluster: members.clone(),
            };
            let node = TestNode {
                id: m.id,
                dir,
                spec,
                proc: None,
            };
            node.write_config();
            self.nodes.insert(m.id, node);
        }
    }

    async fn start_all(&mut self) -> anyhow::Result<()> {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in &ids {
            let node = self.nodes.get_mut(id).expect("node");
            node.proc = Some(Proc::new(spawn_node(&node.config_path(), &node.log_path())));
        }
        for id in ids {
            match self.await_up(id).await {
                StartOutcome::Up => {}
                StartOutcome::PortTaken => bail!("port of node {id} was taken"),
            }
        }
        Ok(())
    }

    /// Waits until node `id` answers, or its process exited because its port
    /// was taken. Panics (with logs) on any other exit or on timeout.
    async fn await_up(&mut self, id: u64) -> StartOutcome {
        let name = self.name.clone();
        let addr = self.node(id).addr();
        let log = self.node(id).log_path();
        let started = Instant::now();
        loop {
            let exited = self
                .nodes
                .get_mut(&id)
                .and_then(|n| n.proc.as_mut())
                .expect("node process")
                .try_wait();
            if let Some(status) = exited {
                self.nodes.get_mut(&id).expect("node").proc = None;
                if tail(&log, 5).contains("cannot listen on") {
                    return StartOutcome::PortTaken;
                }
                panic!("node {id} exited during start-up ({status}) (node logs follow)");
            }
            if status_of(&addr, &name, id).await.is_ok() {
                return StartOutcome::Up;
            }
            if started.elapsed() > WAIT {
                panic!("node {id} did not answer at {addr} within {WAIT:?} (node logs follow)");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Starts node `id` from its config and waits until it answers; if its
    /// port is briefly taken by another process, tries again.
    async fn launch(&mut self, id: u64) {
        let started = Instant::now();
        loop {
            let node = self.nodes.get_mut(&id).expect("node");
            assert!(node.proc.is_none(), "node {id} is already running");
            node.proc = Some(Proc::new(spawn_node(&node.config_path(), &node.log_path())));
            match self.await_up(id).await {
                StartOutcome::Up => return,
                StartOutcome::PortTaken if started.elapsed() < WAIT => {
                    eprintln!("harness: port of node {id} is taken; retrying");
                    tokio::time::sleep(POLL).await;
                }
                StartOutcome::PortTaken => {
                    panic!("node {id}: port stayed taken for {WAIT:?} (node logs follow)")
                }
            }
        }
    }

    pub fn node(&self, id: u64) -> &TestNode {
        self.nodes
            .get(&id)
            .unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Ids of the nodes whose process runs.
    pub fn live_ids(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.is_running())
            .map(|n| n.id)
            .collect()
    }

    pub fn endpoint(&self, id: u64) -> String {
        self.node(id).addr()
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.node(id).spec.data_dir.clone()
    }

    pub fn config_path(&self, id: u64) -> PathBuf {
        self.node(id).config_path()
    }

    pub fn temp_path(&self) -> &Path {
        self.tmp.path()
    }

    /// A client over every live node's endpoint.
    pub fn client(&self) -> Client {
        self.client_for_ids(&self.live_ids())
    }

    /// A client configured with node `id`'s endpoint only.
    pub fn client_for(&self, id: u64) -> Client {
        self.client_for_ids(&[id])
    }

    pub fn client_for_ids(&self, ids: &[u64]) -> Client {
        Client::new(ids.iter().map(|id| self.endpoint(*id)).collect()).expect("client")
    }

    /// Endpoints of the live nodes, comma separated (for `ctl --endpoints`).
    pub fn endpoints_arg(&self) -> String {
        self.live_ids()
            .iter()
            .map(|id| self.endpoint(*id))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Status of node `id` (checked to really be that node).
    pub async fn status(&self, id: u64) -> anyhow::Result<pb::StatusResponse> {
        status_of(&self.endpoint(id), &self.name, id).await
    }

    /// Like [`wait_for`], but the timeout panic includes the tail of every node log.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        f: impl AsyncFnMut() -> anyhow::Result<T>,
    ) -> T {
        match poll_until(what, timeout, f).await {
            Ok(v) => v,
            Err(msg) => panic!("{msg} (node logs follow)"),
        }
    }

    /// Waits until every live node names the same, live, leader and returns its id.
    pub async fn wait_for_leader(&self) -> u64 {
        let live = self.live_ids();
        let polls: Vec<(u64, Client)> = live
            .iter()
            .map(|id| (*id, poll_client(&self.endpoint(*id))))
            .collect();
        let name = self.name.as_str();
        self.wait_for("all live nodes to agree on a leader", WAIT, async || {
            let answers = futures::future::join_all(polls.iter().map(|(id, c)| async move {
                let st = c
                    .status()
                    .await
                    .with_context(|| format!("status of node {id}"))?;
                ensure!(
                    st.cluster == name && st.node_id == *id,
                    "node {id}: wrong node answered"
                );
                Ok::<_, anyhow::Error>((*id, st.leader_id))
            }))
            .await;
            let mut leader = None;
            for a in answers {
                let (id, l) = a?;
                ensure!(l != 0, "node {id} knows no leader");
                match leader {
                    None => leader = Some(l),
                    Some(prev) => ensure!(prev == l, "nodes disagree: leader {prev} vs {l}"),
                }
            }
            let leader = leader.ok_or_else(|| anyhow!("no live nodes"))?;
            ensure!(live.contains(&leader), "leader {leader} is not a live node");
            Ok(leader)
        })
        .await
    }

    /// SIGKILLs node `id` and reaps it.
    pub fn kill9(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("node");
        let mut p = node
            .proc
            .take()
            .unwrap_or_else(|| panic!("node {id} is not running"));
        p.kill9();
    }

    /// SIGTERMs node `id` and waits until it exited; returns its exit status.
    pub async fn terminate(&mut self, id: u64) -> ExitStatus {
        let mut p = self
            .nodes
            .get_mut(&id)
            .expect("node")
            .proc
            .take()
            .unwrap_or_else(|| panic!("node {id} is not running"));
        p.sigterm();
        match p.wait_exit(WAIT).await {
            Some(st) => st,
            None => panic!("node {id} did not exit within {WAIT:?} of SIGTERM (node logs follow)"),
        }
    }

    /// Starts node `id` again with the same config and data dir; waits until it answers.
    pub async fn restart(&mut self, id: u64) {
        self.launch(id).await;
    }

    /// Adds node `id` with a fresh port and a config with `join = true` (it is
    /// not in initial_cluster), starts it and waits until it answers. The
    /// cluster does not know it yet: use `Client::add_member`.
    pub async fn add_node(&mut self, id: u64) {
        assert!(!self.nodes.contains_key(&id), "node {id} exists");
        let dir = self.tmp.path().join(format!("n{id}"));
        let port = free_ports(1)[0];
        let spec = NodeSpec {
            cluster_name: self.name.clone(),
            node_id: id,
            name: format!("n{id}"),
            listen_addr: format!("127.0.0.1:{port}"),
            data_dir: dir.join("data"),
            join: true,
            initial_cluster: Vec::new(),
        };
        let node = TestNode {
            id,
            dir,
            spec,
            proc: None,
        };
        node.write_config();
        self.nodes.insert(id, node);
        for _ in 0..5 {
            let node = self.nodes.get_mut(&id).expect("node");
            node.proc = Some(Proc::new(spawn_node(&node.config_path(), &node.log_path())));
            match self.await_up(id).await {
                StartOutcome::Up => return,
                StartOutcome::PortTaken => {
                    let _ = fs::remove_dir_all(self.data_dir(id));
                    let node = self.nodes.get_mut(&id).expect("node");
                    node.spec.listen_addr = format!("127.0.0.1:{}", free_ports(1)[0]);
                    node.write_config();
                }
            }
        }
        panic!("could not start node {id} (node logs follow)");
    }

    /// The tail of every node's log.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in self.nodes.values() {
            let state = if n.is_running() { "running" } else { "stopped" };
            writeln!(
                out,
                "----- node {} ({state}, {}) log {} -----\n{}",
                n.id,
                n.addr(),
                n.log_path().display(),
                tail(&n.log_path(), LOG_TAIL_LINES)
            )
            .unwrap();
        }
        out
    }

    /// Runs `pgquorum ctl --endpoints <live nodes> --output json <args>`.
    pub fn ctl(&self, args: &[&str]) -> CtlOutput {
        let out = Command::new(BIN)
            .arg("ctl")
            .arg("--endpoints")
            .arg(self.endpoints_arg())
            .arg("--output")
            .arg("json")
            .args(args)
            .env_remove("PGQUORUM_ENDPOINTS")
            .stdin(Stdio::null())
            .output()
            .expect("run pgquorum ctl");
        CtlOutput {
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "test failed; node logs of cluster {}:\n{}",
                self.name,
                self.logs()
            );
        }
        for n in self.nodes.values_mut() {
            if let Some(mut p) = n.proc.take() {
                p.kill9();
            }
        }
    }
}

/// What a `pgquorum ctl` run printed.
#[derive(Debug)]
pub struct CtlOutput {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CtlOutput {
    /// Asserts success and parses stdout as one JSON document.
    pub fn json(&self) -> serde_json::Value {
        assert!(
            self.status.success(),
            "ctl {:?} failed ({}): stdout={:?} stderr={:?}",
            self.args,
            self.status,
            self.stdout,
            self.stderr
        );
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "ctl {:?}: stdout is not JSON ({e}): {:?}",
                self.args, self.stdout
            )
        })
    }
}

/// Reads `key` from the answering node's applied state and returns its value.
pub async fn get_serializable(client: &Client, key: &str) -> anyhow::Result<Vec<u8>> {
    let r = client.get(key, false, true).await?;
    let kv = r
        .kvs
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("key {key:?} not there (yet)"))?;
    Ok(kv.value)
}

/// Creates a file with `content` (and its parent dirs).
pub fn write_file(path: &Path, content: &[u8]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("create parent dir");
    }
    let mut f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(content).expect("write");
}
