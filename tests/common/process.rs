//! Node processes: their config (`NodeSpec`), spawning one (`spawn_node`), the
//! handle that kills it when dropped (`Proc`), log tails, and directory snapshots
//! that show a refused start changed nothing.

use super::*;

/// One `[[initial_cluster]]` entry.
#[derive(Clone, Debug)]
pub struct MemberSpec {
    pub id: u64,
    pub name: String,
    pub addr: String,
}

/// Everything a node config file says; rendered by [`NodeSpec::to_toml`].
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub cluster_name: String,
    pub node_id: u64,
    pub name: String,
    pub listen_addr: String,
    pub data_dir: PathBuf,
    pub join: bool,
    pub initial_cluster: Vec<MemberSpec>,
}

fn toml_str(s: &str) -> String {
    // TOML basic strings share JSON's escapes for everything we write.
    serde_json::to_string(s).expect("string serializes")
}

impl NodeSpec {
    pub fn to_toml(&self) -> String {
        let mut t = String::new();
        writeln!(t, "cluster_name = {}", toml_str(&self.cluster_name)).unwrap();
        // Plaintext unless a test swaps this line for a [tls] section
        // (tests/tls.rs); a node refuses to start without one or the other.
        t.push_str("insecure = true\n");
        writeln!(t, "node_id = {}", self.node_id).unwrap();
        writeln!(t, "name = {}", toml_str(&self.name)).unwrap();
        writeln!(t, "listen_addr = {}", toml_str(&self.listen_addr)).unwrap();
        let dir = self.data_dir.to_str().expect("utf-8 temp path");
        writeln!(t, "data_dir = {}", toml_str(dir)).unwrap();
        writeln!(t, "join = {}", self.join).unwrap();
        for m in &self.initial_cluster {
            writeln!(t, "\n[[initial_cluster]]").unwrap();
            writeln!(t, "id = {}", m.id).unwrap();
            writeln!(t, "name = {}", toml_str(&m.name)).unwrap();
            writeln!(t, "addr = {}", toml_str(&m.addr)).unwrap();
        }
        t.push_str(
            "\n[raft]\n\
             heartbeat_ms = 100\n\
             election_timeout_min_ms = 500\n\
             election_timeout_max_ms = 1000\n\
             lease_check_interval_ms = 100\n",
        );
        writeln!(t, "request_timeout_ms = {REQUEST_TIMEOUT_MS}").unwrap();
        t
    }
}

/// Runs `pgquorum node --config <config>` with stdout and stderr appended to `log`.
pub fn spawn_node(config: &Path, log: &Path) -> Child {
    spawn_node_at(config, log, None, None)
}

/// [`spawn_node`] at nice value `nice` (a negative one needs root).
/// `nofile`: the node's descriptor limit (soft and hard), as a small
/// `LimitNOFILE=` would set it.
pub fn spawn_node_at(config: &Path, log: &Path, nice: Option<i32>, nofile: Option<u64>) -> Child {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
    writeln!(
        f,
        "==== harness: starting pgquorum node --config {}",
        config.display()
    )
    .unwrap();
    let err = f.try_clone().expect("clone log file");
    let mut cmd = Command::new(BIN);
    if nice.is_some() || nofile.is_some() {
        // SAFETY: only syscalls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(n) = nice
                    && libc::setpriority(libc::PRIO_PROCESS, 0, n) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(n) = nofile {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
    cmd.arg("node")
        .arg("--config")
        .arg(config)
        .env_remove("PGQUORUM_LOG")
        .env("RUST_BACKTRACE", "1")
        // Logs go to a file: they must come out without colour codes on their own
        // (tests/service.rs checks), as they do under systemd.
        .env_remove("NO_COLOR")
        .env_remove("PGQUORUM_LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(f)
        .stderr(err)
        // Its own process group, as a node started from a shell or a service manager
        // has: faults can stop or signal the whole group without hitting the test.
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {BIN}: {e}"))
}

/// A running process, killed with SIGKILL (and reaped) when dropped.
#[derive(Debug)]
pub struct Proc {
    child: Option<Child>,
}

impl Proc {
    pub fn new(child: Child) -> Self {
        Self { child: Some(child) }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The exit status if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .expect("running")
            .try_wait()
            .expect("try_wait")
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Polls until the process exits; `None` if it still runs after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        poll_until("process exit", timeout, async || {
            self.try_wait().ok_or_else(|| anyhow!("still running"))
        })
        .await
        .ok()
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let st = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -TERM {} failed", self.pid());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The last `lines` lines of a file, or a note why there are none.
pub fn tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Every file and directory under `root` with its content (directories: None),
/// to check that something left a directory byte-for-byte unchanged.
pub fn snapshot_tree(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Option<Vec<u8>>>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
            .map(|e| e.expect("dir entry").path())
            .collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(root).expect("under root").to_path_buf();
            let meta = fs::symlink_metadata(&p).expect("metadata");
            if meta.is_dir() {
                out.insert(rel, None);
                walk(root, &p, out);
            } else {
                let bytes = fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
                out.insert(rel, Some(bytes));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Panics naming every path that was added, removed or changed.
pub fn assert_tree_unchanged(
    before: &BTreeMap<PathBuf, Option<Vec<u8>>>,
    after: &BTreeMap<PathBuf, Option<Vec<u8>>>,
    context: &str,
) {
    let mut diffs = Vec::new();
    for (p, b) in before {
        match after.get(p) {
            None => diffs.push(format!("removed: {}", p.display())),
            Some(a) if a != b => {
                let sizes = |x: &Option<Vec<u8>>| x.as_ref().map_or(0, Vec::len);
                diffs.push(format!(
                    "changed: {} ({} -> {} bytes)",
                    p.display(),
                    sizes(b),
                    sizes(a)
                ));
            }
            Some(_) => {}
        }
    }
    for p in after.keys().filter(|p| !before.contains_key(*p)) {
        diffs.push(format!("added: {}", p.display()));
    }
    assert!(
        diffs.is_empty(),
        "{context}: the directory changed:\n  {}",
        diffs.join("\n  ")
    );
}
