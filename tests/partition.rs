//! Real network partitions: each node runs in its own network namespace, wired to
//! a bridge in a further namespace by a veth pair; cutting a node's veth cuts Raft
//! and client traffic alike. All addresses live inside namespaces this test
//! creates and deletes. Needs root (CI runs as root).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use common::{MemberSpec, NodeSpec, Proc, WAIT, poll_until};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_pgquorum");
const PORT: u16 = 7001;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Namespaces and links of one test, removed on drop (deleting a namespace
/// deletes the veth ends inside it).
struct Net {
    tag: String,
    n: u64,
}

impl Net {
    fn new(n: u64) -> Net {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "pq{:x}{}",
            std::process::id() % 0xfffff,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let net = Net { tag, n };
        let sw = net.switch();
        ip(&["netns", "add", &sw]);
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        for id in 1..=n {
            let ns = net.ns(id);
            let (a, b) = (format!("{}v{id}a", net.tag), format!("{}v{id}b", net.tag));
            ip(&["netns", "add", &ns]);
            ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
            ip(&["link", "set", &a, "netns", &ns]);
            ip(&["link", "set", &b, "netns", &sw]);
            ip(&["-n", &sw, "link", "set", &b, "master", "br0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", net.addr(id)),
                "dev",
                &a,
            ]);
            ip(&["-n", &ns, "link", "set", &a, "up"]);
        }
        net
    }

    fn switch(&self) -> String {
        format!("{}s", self.tag)
    }

    fn ns(&self, id: u64) -> String {
        format!("{}n{id}", self.tag)
    }

    fn addr(&self, id: u64) -> String {
        format!("10.77.0.{id}")
    }

    fn endpoint(&self, id: u64) -> String {
        format!("{}:{PORT}", self.addr(id))
    }

    /// Cuts (or restores) every link of node `id`.
    fn set_link(&self, id: u64, up: bool) {
        let b = format!("{}v{id}b", self.tag);
        ip(&[
            "-n",
            &self.switch(),
            "link",
            "set",
            &b,
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for id in 1..=self.n {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(id)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.switch()])
            .status();
    }
}

struct Node {
    dir: PathBuf,
    proc: Option<Proc>,
}

fn start_node(net: &Net, dir: &Path, id: u64) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("node.log"))
        .expect("log");
    let child = Command::new("ip")
        .args(["netns", "exec", &net.ns(id), BIN, "node", "--config"])
        .arg(dir.join("node.toml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn node");
    Proc::new(child)
}

/// `pgquorum ctl --output json` run inside node `from`'s namespace against `targets`.
fn ctl(net: &Net, from: u64, targets: &[u64], args: &[&str]) -> Output {
    let eps: Vec<String> = targets.iter().map(|t| net.endpoint(*t)).collect();
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.ns(from),
            BIN,
            "ctl",
            "--timeout",
            "3s",
            "--output",
            "json",
            "--endpoints",
        ])
        .arg(eps.join(","))
        .args(args)
        .output()
        .expect("run ctl")
}

fn json(out: &Output) -> anyhow::Result<Value> {
    ensure!(
        out.status.success(),
        "ctl failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    serde_json::from_slice(&out.stdout).context("ctl output is not JSON")
}

fn leader_seen_by(net: &Net, id: u64) -> anyhow::Result<u64> {
    let st = json(&ctl(net, id, &[id], &["status"]))?;
    let l = st["leader_id"].as_u64().unwrap_or(0);
    ensure!(l != 0, "node {id} knows no leader");
    Ok(l)
}

fn logs(nodes: &[Node]) -> String {
    nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            format!(
                "---- node {} ----\n{}",
                i + 1,
                common::tail(&n.dir.join("node.log"), 40)
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_isolated_leader_cannot_commit_majority_keeps_working() {
    let net = Net::new(3);
    let tmp = tempfile::tempdir().expect("temp dir");
    let cluster = common::unique_cluster_name();
    let members: Vec<MemberSpec> = (1..=3)
        .map(|id| MemberSpec {
            id,
            name: format!("n{id}"),
            addr: net.endpoint(id),
        })
        .collect();
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let dir = tmp.path().join(format!("n{id}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let spec = NodeSpec {
            cluster_name: cluster.clone(),
            node_id: id,
            name: format!("n{id}"),
            listen_addr: net.endpoint(id),
            data_dir: dir.join("data"),
            join: false,
            initial_cluster: members.clone(),
        };
        std::fs::write(dir.join("node.toml"), spec.to_toml()).expect("config");
        let proc = start_node(&net, &dir, id);
        nodes.push(Node {
            dir,
            proc: Some(proc),
        });
    }
    let fail = |msg: String, nodes: &[Node]| -> ! { panic!("{msg}\n{}", logs(nodes)) };

    let leader = match poll_until("a leader all nodes agree on", WAIT, async || {
        let seen: Vec<u64> = (1..=3)
            .map(|id| leader_seen_by(&net, id))
            .collect::<Result<_, _>>()?;
        ensure!(
            seen.iter().all(|l| *l == seen[0]),
            "nodes disagree: {seen:?}"
        );
        Ok(seen[0])
    })
    .await
    {
        Ok(l) => l,
        Err(e) => fail(e, &nodes),
    };
    json(&ctl(&net, leader, &[leader], &["kv", "put", "before", "1"]))
        .expect("put before the partition");

    net.set_link(leader, false);
    let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();

    // The isolated old leader must not commit; the request fails, it does not hang.
    let started = std::time::Instant::now();
    let out = ctl(&net, leader, &[leader], &["kv", "put", "minority", "x"]);
    let took = started.elapsed();
    if out.status.success() {
        fail(
            format!("SAFETY: the isolated leader {leader} committed a write"),
            &nodes,
        );
    }
    println!(
        "isolated leader refused the write after {took:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    assert!(
        took < Duration::from_secs(20),
        "request to the minority hung for {took:?}"
    );

    // The majority elects a new leader and keeps committing.
    let new_leader = match poll_until("a new leader on the majority side", WAIT, async || {
        let l = leader_seen_by(&net, others[0])?;
        ensure!(l != leader, "still following the isolated node {leader}");
        ensure!(
            leader_seen_by(&net, others[1])? == l,
            "majority nodes disagree"
        );
        Ok(l)
    })
    .await
    {
        Ok(l) => l,
        Err(e) => fail(e, &nodes),
    };
    json(&ctl(
        &net,
        others[0],
        &others,
        &["kv", "put", "majority", "y"],
    ))
    .expect("majority write");
    let got =
        json(&ctl(&net, others[1], &others, &["kv", "get", "majority"])).expect("majority read");
    assert_eq!(got["kvs"][0]["value"], "y", "{got}");

    // Heal: the old leader follows the new one, has the majority's write, and its
    // own uncommitted write is gone.
    net.set_link(leader, true);
    if let Err(e) = poll_until("the healed node to catch up", WAIT, async || {
        let seen = leader_seen_by(&net, leader)?;
        ensure!(
            seen == new_leader,
            "node {leader} follows {seen}, not the new leader {new_leader}"
        );
        let v = json(&ctl(
            &net,
            leader,
            &[leader],
            &["kv", "get", "majority", "--serializable"],
        ))?;
        if v["kvs"][0]["value"] != "y" {
            bail!("old leader has not caught up: {v}");
        }
        Ok(())
    })
    .await
    {
        fail(e, &nodes);
    }
    let minority = json(&ctl(
        &net,
        leader,
        &[leader],
        &["kv", "get", "minority", "--serializable"],
    ));
    let minority_present = match &minority {
        Ok(v) => v["kvs"].as_array().is_some_and(|a| !a.is_empty()),
        Err(_) => false,
    };
    assert!(
        !minority_present,
        "SAFETY: the uncommitted minority write survived: {minority:?}"
    );
    for n in &mut nodes {
        if let Some(mut p) = n.proc.take() {
            p.kill9();
        }
    }
}
