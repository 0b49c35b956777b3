//! `ctl topology`, `ctl version` and `ctl flush` on a real 3-node cluster; the
//! PostgreSQL version each member publishes (also `server_version` in `/patroni`).

mod common;
mod pg;

use anyhow::ensure;
use pg::{PgCluster, PgOptions, SLOW_WAIT, have_pg};
use serde_json::Value;

fn json(c: &PgCluster, args: &[&str]) -> Value {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    let out = c.ctl(&all).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

fn restart_keys(c: &PgCluster) -> Value {
    json(c, &["kv", "get", "/pg/restart/", "--prefix"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_topology_version_and_flush() {
    if !have_pg() {
        return;
    }
    let (c, p, replicas) = PgCluster::start_healthy(PgOptions::default()).await;
    let name = |id: u64| c.node(id).name.clone();
    // A clone says how much it copies and when it is done (with progress lines
    // every 5 s in between, for clones that take that long).
    let logs = c.logs();
    assert!(
        logs.contains("cloning with pg_basebackup") && logs.contains("source_mb="),
        "{logs}"
    );
    assert!(logs.matches("pg_basebackup done").count() >= 2, "{logs}");

    // The primary first, both replicas under it.
    let topo = json(&c, &["topology"]);
    let members: Vec<&str> = topo
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["Member"].as_str().unwrap())
        .collect();
    let mut want = vec![name(p)];
    want.extend(replicas.iter().map(|r| format!("+ {}", name(*r))));
    assert_eq!(members, want, "{topo}");
    let text = c.ctl(&["topology"]).unwrap();
    assert!(
        text.contains(&format!("| + {} ", name(replicas[0]))),
        "{text}"
    );

    // Every member publishes its PostgreSQL version once it has answered.
    let lines = c
        .wait_for("every member's PostgreSQL version", SLOW_WAIT, async || {
            let out = c.ctl(&["version"])?;
            ensure!(out.matches(", PostgreSQL 1").count() == 3, "{out}");
            Ok(out)
        })
        .await;
    assert!(
        lines.starts_with(&format!(
            "pgquorum ctl version {}\n",
            env!("CARGO_PKG_VERSION")
        )),
        "{lines}"
    );
    let one = json(&c, &["version", &name(p)]);
    assert_eq!(one["members"].as_array().unwrap().len(), 1, "{one}");
    assert_eq!(one["members"][0]["pgquorum"], env!("CARGO_PKG_VERSION"));
    let err = c.ctl_fails(&["version", "nosuchmember"]);
    assert!(err.contains("nosuchmember"), "{err}");
    let (st, body) = c.http(p, "GET", "/patroni").await.expect("/patroni");
    assert_eq!(st, 200);
    let doc: Value = serde_json::from_str(&body).unwrap();
    let v = doc["server_version"].as_u64().expect("server_version");
    assert!(
        one["members"][0]["postgresql"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}.", v / 10_000)),
        "{one} {doc}"
    );

    // flush restart: a scheduled restart is withdrawn; nothing is left to flush.
    let r = name(replicas[0]);
    c.ctl(&["restart", &r, "--scheduled", "+1h"]).unwrap();
    assert_eq!(restart_keys(&c)["kvs"].as_array().map(Vec::len), Some(1));
    let out = c.ctl(&["flush", "restart"]).unwrap();
    assert!(
        out.contains(&format!("restart request cancelled: {r}")),
        "{out}"
    );
    assert!(
        restart_keys(&c)["kvs"]
            .as_array()
            .is_none_or(|a| a.is_empty()),
        "{}",
        restart_keys(&c)
    );
    let out = c.ctl(&["flush", "restart", &r]).unwrap();
    assert!(out.contains("no restart was requested"), "{out}");

    // flush switchover: a scheduled switchover is withdrawn; a member name is refused
    // and changes nothing.
    c.ctl(&["switchover", "--scheduled", "+1h"]).unwrap();
    let err = c.ctl_fails(&["flush", "switchover", &r]);
    assert!(err.contains("without member names"), "{err}");
    assert!(
        c.ctl(&["list"])
            .unwrap()
            .contains("Switchover scheduled at")
    );
    let out = c.ctl(&["flush", "switchover"]).unwrap();
    assert!(out.contains("switchover request cancelled"), "{out}");
    let list = c.ctl(&["list"]).unwrap();
    assert!(!list.contains("Switchover"), "{list}");
    assert_eq!(c.wait_primary(&[], SLOW_WAIT).await, p);
}
