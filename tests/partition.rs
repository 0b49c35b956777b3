//! Real network partitions: each node runs in its own network namespace, wired to
//! a bridge in a further namespace by a veth pair (`pg::NetNs`); cutting a node's
//! veth cuts Raft and client traffic alike. All addresses live inside namespaces this test
//! creates and deletes. Needs root (CI runs as root).

mod common;
mod pg;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use common::{MemberSpec, NodeSpec, Proc, WAIT, poll_until};
use pg::NetNs as Net;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_pgquorum");
const PORT: u16 = 7001;

/// `host:port` of node `id`'s gRPC API inside its namespace.
fn endpoint(net: &Net, id: u64) -> String {
    format!("{}:{PORT}", net.addr(id))
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
    let eps: Vec<String> = targets.iter().map(|t| endpoint(net, *t)).collect();
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
            addr: endpoint(&net, id),
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
            listen_addr: endpoint(&net, id),
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
