//! `pgquorum demo`: a local 3-node cluster with real PostgreSQL in a temporary
//! directory, for a first look. As root it installs what is missing (Debian's
//! PostgreSQL server package, the `postgres` OS user), saying so; otherwise it says
//! what to install. Ctrl-C stops every process it started and removes the directory
//! unless `--keep`.
//!
//! Besides `postgres/`, this is the only code that starts processes: the three
//! `pgquorum node` children and, as root, `apt-get`/`useradd`.

use std::fmt::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::ha::model::{self, ClusterView};
use crate::ha::view::{cluster_role, member_state};
use crate::ops;
use crate::wire::pb;

/// Nodes in the demo cluster.
const NODES: u64 = 3;
/// How long the cluster may take to become healthy (initdb + 2 clones).
const HEALTHY_WITHIN: Duration = Duration::from_secs(120);
/// How long a node may take to stop after SIGTERM before it is killed.
const STOP_WITHIN: Duration = Duration::from_secs(60);

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Keep the directory (configs, logs, data) after Ctrl-C, and say where it is.
    #[arg(long)]
    pub keep: bool,
    /// Do not install anything, even as root: only say what is missing.
    #[arg(long)]
    pub no_install: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    Missing(String),
    #[error("{what} failed: {detail}; fix the cause above and run `pgquorum demo` again")]
    Setup { what: String, detail: String },
    #[error("cannot {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the cluster was not healthy within {} s; the node logs are in {dir} (kept)",
        HEALTHY_WITHIN.as_secs()
    )]
    NotHealthy { dir: PathBuf },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DemoError {
    let what = what.into();
    move |source| DemoError::Io { what, source }
}

/// The ports of one node.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub grpc: u16,
    pub rest: u16,
    pub pg: u16,
}

/// Node `id`'s config file: everything defaulted that can be, paths relative to the
/// file's directory.
pub fn node_config(id: u64, all: &[Ports], passwords: (&str, &str)) -> String {
    let me = all[(id - 1) as usize];
    let mut t = String::new();
    let _ = writeln!(
        t,
        "cluster_name = \"demo\"\nnode_id = {id}\nname = \"n{id}\"\n\
         tls = {{ ca = \"certs/ca.crt\", cert = \"certs/n{id}.crt\", key = \"certs/n{id}.key\" }}\n\
         rest_auth = {{ username = \"admin\", password_file = \"certs/rest.password\" }}\n\
         listen_addr = \"127.0.0.1:{}\"\nrest_listen_addr = \"127.0.0.1:{}\"\n\
         data_dir = \"n{id}/raft\"",
        me.grpc, me.rest
    );
    for (i, p) in all.iter().enumerate() {
        let _ = writeln!(
            t,
            "\n[[initial_cluster]]\nid = {}\nname = \"n{}\"\naddr = \"127.0.0.1:{}\"",
            i + 1,
            i + 1,
            p.grpc
        );
    }
    let _ = writeln!(
        t,
        "\n[postgresql]\ndata_dir = \"n{id}/pg\"\nlisten_host = \"127.0.0.1\"\nport = {}\n\
         os_user = \"postgres\"\n\
         superuser = {{ username = \"postgres\", password = \"{}\" }}\n\
         replication = {{ username = \"replicator\", password = \"{}\" }}\n\
         parameters = {{ shared_buffers = \"32MB\", max_connections = \"50\" }}",
        me.pg, passwords.0, passwords.1
    );
    t
}

/// The cluster is healthy: a primary and every other member streaming from it.
pub fn healthy(view: &ClusterView) -> bool {
    let Some(leader) = view.leader.as_deref() else {
        return false;
    };
    view.members.len() == NODES as usize
        && view.members.iter().all(|(name, s)| {
            name == leader
                || (member_state(cluster_role(view, name), s) == "streaming"
                    && s.following.as_deref() == Some(leader))
        })
}

/// Finds PostgreSQL's server and, as root, the `postgres` OS user; installs them
/// when missing and allowed to.
fn ensure_prerequisites(install: bool) -> Result<(), DemoError> {
    let root = crate::postgres::running_as_root();
    if crate::config::find_pg_bin_dir().is_none() {
        if !root || !install {
            return Err(DemoError::Missing(
                "no PostgreSQL server found under /usr/lib/postgresql/*/bin. Install it with \
                 `sudo apt-get install postgresql-15` (Debian 12), then run the demo again \
                 (as root, the demo installs it itself)"
                    .into(),
            ));
        }
        println!(
            "installing PostgreSQL: apt-get install postgresql-15 (Debian's server package; it \
             also creates the `postgres` OS user and a default cluster on port 5432, which the \
             demo does not use)"
        );
        run_setup(
            "apt-get update",
            Command::new("apt-get").args(["update", "-qq"]),
        )?;
        run_setup(
            "apt-get install postgresql-15",
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "postgresql-15"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    if root && !crate::postgres::os_user_exists("postgres") {
        if !install {
            return Err(DemoError::Missing(
                "running as root, PostgreSQL runs as the OS user `postgres`, which does not \
                 exist: `useradd --system --home-dir /var/lib/postgresql postgres`"
                    .into(),
            ));
        }
        println!("creating the OS user `postgres` that PostgreSQL runs as (useradd --system)");
        run_setup(
            "useradd postgres",
            Command::new("useradd").args([
                "--system",
                "--home-dir",
                "/var/lib/postgresql",
                "--shell",
                "/bin/sh",
                "postgres",
            ]),
        )?;
    }
    Ok(())
}

fn run_setup(what: &str, cmd: &mut Command) -> Result<(), DemoError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(io(format!("run {what}")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(DemoError::Setup {
        what: what.into(),
        detail: format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    })
}

fn free_ports(n: usize) -> Result<Vec<u16>, DemoError> {
    let ls: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(io("find free ports on 127.0.0.1"))?;
    ls.iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()
        .map_err(io("find free ports on 127.0.0.1"))
}

fn password() -> Result<String, DemoError> {
    use std::io::Read as _;
    let mut b = [0u8; 12];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(io("read /dev/urandom for the demo passwords"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The demo's node processes; each is stopped (SIGTERM, then SIGKILL of its process
/// group after [`STOP_WITHIN`]) by [`Nodes::stop`].
struct Nodes(Vec<(u64, Child)>);

impl Nodes {
    fn spawn(dir: &Path) -> Result<Nodes, DemoError> {
        let exe = std::env::current_exe().map_err(io("find the pgquorum binary"))?;
        let mut nodes = Nodes(Vec::new());
        for id in 1..=NODES {
            let log = std::fs::File::create(dir.join(format!("n{id}.log")))
                .map_err(io(format!("create n{id}.log")))?;
            let err = log.try_clone().map_err(io("open the node log"))?;
            let mut cmd = Command::new(&exe);
            cmd.arg("node")
                .arg("--config")
                .arg(dir.join(format!("n{id}.toml")))
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err)
                // Ctrl-C reaches the demo only; it stops the nodes in order.
                .process_group(0);
            // SAFETY: prctl is async-signal-safe. The demo spawns from the thread
            // that runs `block_on` (the main thread, which lives as long as the
            // process), so the children get SIGTERM only when the demo itself dies.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
            let child = cmd.spawn().map_err(io("start `pgquorum node`"))?;
            nodes.0.push((id, child));
        }
        Ok(nodes)
    }

    async fn stop(&mut self) {
        self.signal_all();
        let end = Instant::now() + STOP_WITHIN;
        for (id, c) in &mut self.0 {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= end => {
                        eprintln!("n{id} did not stop within {STOP_WITHIN:?}; killing it");
                        unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
                        let _ = c.wait();
                        break;
                    }
                    Ok(None) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
        self.0.clear();
    }

    fn signal_all(&self) {
        for (_, c) in &self.0 {
            // SAFETY: kill(2) of the demo's own children.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
    }
}

/// On an early return (an error after the nodes started) the nodes are stopped the
/// same way, blocking: the temporary directory goes only after them.
impl Drop for Nodes {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        self.signal_all();
        let end = Instant::now() + STOP_WITHIN;
        for (_, c) in &mut self.0 {
            while matches!(c.try_wait(), Ok(None)) {
                if Instant::now() >= end {
                    unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// A postmaster runs in `data_dir`: its `postmaster.pid` names a live process (a
/// postmaster killed by its guard leaves the file behind).
fn postmaster_alive(data_dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(data_dir.join("postmaster.pid")) else {
        return false;
    };
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
    else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

/// Waits until no postmaster runs in the demo's data dirs (their guards stop them
/// when their node ends), for at most 15 s.
async fn wait_postmasters_gone(dir: &Path) {
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end
        && (1..=NODES).any(|id| postmaster_alive(&dir.join(format!("n{id}/pg"))))
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the demo until Ctrl-C; `format_list` renders the `/pg/` keys as `ctl list`.
pub async fn run(
    args: DemoArgs,
    format_list: impl Fn(&[pb::KeyValue]) -> String,
) -> Result<(), DemoError> {
    // One handler for the whole run, installed before anything starts: a Ctrl-C at
    // any moment is seen (and none ends the demo with the signal's default action).
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(io("handle Ctrl-C"))?;
    ensure_prerequisites(!args.no_install)?;
    let started = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("pgquorum-demo-")
        .tempdir()
        .map_err(io("create a temporary directory"))?;
    let dir = tmp.path().to_path_buf();
    // PostgreSQL runs as `postgres` when the demo runs as root: it must reach its dir.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(io("make the demo directory readable"))?;
    let ports: Vec<Ports> = free_ports(3 * NODES as usize)?
        .chunks(3)
        .map(|c| Ports {
            grpc: c[0],
            rest: c[1],
            pg: c[2],
        })
        .collect();
    let (su, repl) = (password()?, password()?);
    // Secure as the shipped configs are: TLS between the nodes, an admin
    // certificate for ctl, a password for the REST write routes.
    let certs = dir.join("certs");
    let tls_err = |e: crate::tls::TlsError| DemoError::Missing(e.to_string());
    crate::tls::init_ca(&certs, "demo", 30, false).map_err(tls_err)?;
    for (name, role) in [
        ("n1", crate::tls::Role::Node),
        ("n2", crate::tls::Role::Node),
        ("n3", crate::tls::Role::Node),
        ("admin", crate::tls::Role::Admin),
    ] {
        crate::tls::issue(&crate::tls::IssueRequest {
            dir: certs.clone(),
            name: name.into(),
            hosts: vec!["127.0.0.1".into()],
            role,
            days: 30,
            force: false,
        })
        .map_err(tls_err)?;
    }
    let rest_pw = password()?;
    crate::tls::write_secret(&certs.join("rest.password"), &rest_pw).map_err(tls_err)?;
    let admin = crate::tls::TlsPaths {
        ca: certs.join("ca.crt"),
        cert: certs.join("admin.crt"),
        key: certs.join("admin.key"),
    };
    crate::tls::set_client(Some(&admin)).map_err(tls_err)?;
    for id in 1..=NODES {
        std::fs::write(
            dir.join(format!("n{id}.toml")),
            node_config(id, &ports, (&su, &repl)),
        )
        .map_err(io(format!("write n{id}.toml")))?;
    }
    println!(
        "starting 3 nodes in {} (initdb, then 2 × pg_basebackup)…",
        dir.display()
    );
    let mut nodes = Nodes::spawn(&dir)?;
    let endpoints: Vec<String> = ports
        .iter()
        .map(|p| format!("127.0.0.1:{}", p.grpc))
        .collect();
    let client = Client::new(endpoints.clone())
        .map_err(|e| DemoError::Missing(e.to_string()))?
        .with_timeout(Duration::from_secs(2));
    let mut interrupted = false;
    let view = loop {
        if let Ok(resp) = client.get(model::PREFIX, true, false).await {
            let v = ClusterView::from_kvs(
                resp.kvs
                    .iter()
                    .map(|kv| (kv.key.as_str(), kv.value.as_slice())),
            )
            .0;
            if healthy(&v) {
                break Some((v, resp.kvs));
            }
        }
        if started.elapsed() > HEALTHY_WITHIN
            || nodes
                .0
                .iter_mut()
                .any(|(_, c)| c.try_wait().ok().flatten().is_some())
        {
            break None;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = interrupt.recv() => {
                interrupted = true;
                break None;
            }
        }
    };
    let Some((view, kvs)) = view else {
        nodes.stop().await;
        wait_postmasters_gone(&dir).await;
        if interrupted {
            drop(tmp);
            println!(
                "interrupted; stopped the nodes and removed {}",
                dir.display()
            );
            return Ok(());
        }
        let _ = tmp.keep();
        return Err(DemoError::NotHealthy { dir });
    };
    let leader = view.leader.clone().unwrap_or_default();
    let leader_pid = nodes
        .0
        .iter()
        .find(|(id, _)| format!("n{id}") == leader)
        .map(|(_, c)| c.id());
    let eps = endpoints.join(",");
    println!(
        "healthy in {:.1} s\n\n{}",
        started.elapsed().as_secs_f64(),
        format_list(&kvs)
    );
    if let Some(dsn) = ops::dsn::dsn(&view, ops::dsn::DsnRole::Primary, Some("postgres")) {
        println!("connect:  psql \"{dsn} user=postgres password={su}\"");
    }
    println!(
        "ctl:      export PGQUORUM_ENDPOINTS={eps} PGQUORUM_CA={} PGQUORUM_CERT={} \
         PGQUORUM_KEY={}; pgquorum ctl list",
        admin.ca.display(),
        admin.cert.display(),
        admin.key.display()
    );
    println!("REST writes: curl -u admin:{rest_pw} -X POST http://127.0.0.1:PORT/switchover ...");
    for (i, p) in ports.iter().enumerate() {
        println!(
            "REST n{}: http://127.0.0.1:{}/patroni  (/primary, /replica, /metrics)",
            i + 1,
            p.rest
        );
    }
    if let Some(pid) = leader_pid {
        println!(
            "try a failover: kill -9 {pid}   ({leader}'s node; its guard fences PostgreSQL, a \
             replica takes over in ~2 s), then `pgquorum ctl list` again"
        );
    }
    println!(
        "logs: {}/n{{1,2,3}}.log   Ctrl-C stops everything",
        dir.display()
    );
    let _ = interrupt.recv().await;
    println!("\nstopping the nodes (each stops PostgreSQL and hands over)…");
    nodes.stop().await;
    wait_postmasters_gone(&dir).await;
    if args.keep {
        let kept = tmp.keep();
        println!("kept {}", kept.display());
    } else {
        drop(tmp);
        println!("removed {}", dir.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_configs_validate() {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<Ports> = (0..3)
            .map(|i| Ports {
                grpc: 7101 + i,
                rest: 8101 + i,
                pg: 5501 + i,
            })
            .collect();
        for id in 1..=3 {
            let path = dir.path().join(format!("n{id}.toml"));
            let text = node_config(id, &ports, ("a1", "b2"));
            let cfg = match crate::config::NodeConfig::parse(&text, &path) {
                Ok(c) => c,
                // No PostgreSQL on this machine: everything else was checked first.
                Err(e) if e.to_string().contains("no PostgreSQL server") => continue,
                Err(e) => panic!("{e}\n{text}"),
            };
            assert_eq!(cfg.node_id, id);
            assert_eq!(cfg.initial_cluster.len(), 3);
            assert_eq!(cfg.data_dir, dir.path().join(format!("n{id}/raft")));
        }
    }
}
