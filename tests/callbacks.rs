//! The operator's callbacks and `pre_promote` against a real 3-node cluster with
//! PostgreSQL 15: each callback sees Patroni's arguments (`ACTION ROLE CLUSTER`) as
//! the role changes, and a `pre_promote` that exits non-zero keeps a member from
//! being promoted until it agrees.

mod common;
mod pg;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::ensure;
use pg::{PgCluster, PgOptions, SLOW_WAIT, have_pg};

fn script(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p.display().to_string()
}

fn calls(c: &PgCluster, id: u64) -> Vec<String> {
    std::fs::read_to_string(c.node(id).dir.join("callbacks.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

async fn wait_call(c: &PgCluster, id: u64, line: &str) {
    c.wait_for(&format!("{line:?} on node {id}"), SLOW_WAIT, async || {
        let seen = calls(c, id);
        ensure!(seen.iter().any(|l| l == line), "callbacks so far: {seen:?}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_callbacks_follow_the_role_and_pre_promote_vetoes() {
    if !have_pg() {
        return;
    }
    let scripts = tempfile::tempdir().unwrap();
    // Each script gets the node's directory first, then pgquorum's arguments.
    let cb = script(
        scripts.path(),
        "cb.sh",
        r#"d=$1; shift; echo "$@" >> "$d/callbacks.log""#,
    );
    let pre = script(
        scripts.path(),
        "pre.sh",
        r#"d=$1; shift; echo "$@" >> "$d/callbacks.log"; test ! -e "$d/veto""#,
    );
    let opts = PgOptions {
        pg_extra: format!(
            "pre_promote = \"{pre} {{dir}}\"\ncallback_timeout_ms = 10000\n\
             [postgresql.callbacks]\non_start = \"{cb} {{dir}}\"\n\
             on_role_change = \"{cb} {{dir}}\"\non_stop = \"{cb} {{dir}}\""
        ),
        ..PgOptions::default()
    };
    let mut c = PgCluster::start(opts).await;
    let primary = c.wait_primary(&[], SLOW_WAIT).await;
    let replicas: Vec<u64> = c.ids().into_iter().filter(|i| *i != primary).collect();
    c.wait_streaming(primary, &replicas, SLOW_WAIT).await;
    let cluster = c.name.clone();
    wait_call(&c, primary, &format!("on_start primary {cluster}")).await;
    for r in &replicas {
        wait_call(&c, *r, &format!("on_start replica {cluster}")).await;
    }

    // A switchover: the candidate's pre_promote agrees, then both sides hear of
    // their new role.
    let (r1, r2) = (replicas[0], replicas[1]);
    let r2_name = c.node(r2).name.clone();
    c.ctl(&["switchover", "--candidate", &r2_name])
        .expect("switchover");
    assert_eq!(c.wait_primary(&[primary], SLOW_WAIT).await, r2);
    wait_call(&c, r2, &format!("pre_promote replica {cluster}")).await;
    wait_call(&c, r2, &format!("on_role_change primary {cluster}")).await;
    wait_call(&c, primary, &format!("on_role_change replica {cluster}")).await;
    c.wait_streaming(r2, &[primary, r1], SLOW_WAIT).await;

    // Both survivors veto, then the primary's host dies: each is asked, each says
    // no, and nothing is promoted.
    for id in [primary, r1] {
        std::fs::write(c.node(id).dir.join("veto"), "").unwrap();
    }
    c.kill_host(r2);
    for id in [primary, r1] {
        wait_call(&c, id, &format!("pre_promote replica {cluster}")).await;
    }
    for id in [primary, r1] {
        assert!(
            !c.is_writable(id).await,
            "node {id} writable despite its veto"
        );
    }
    // Once r1's script agrees, r1 takes over and the other follows it.
    std::fs::remove_file(c.node(r1).dir.join("veto")).unwrap();
    assert_eq!(c.wait_primary(&[r2], SLOW_WAIT).await, r1);
    wait_call(&c, r1, &format!("on_role_change primary {cluster}")).await;
    assert!(
        !calls(&c, primary).contains(&format!("on_role_change primary {cluster}")),
        "the vetoed member was promoted: {:?}",
        calls(&c, primary)
    );
    c.wait_streaming(r1, &[primary], SLOW_WAIT).await;
}
