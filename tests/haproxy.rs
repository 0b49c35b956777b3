//! The shipped `cluster-configs/haproxy.cfg` with the real HAProxy (Debian package)
//! in front of a real 3-node cluster: the write port reaches the primary before, after
//! a switchover and after `kill -9` of the primary's host; the read port a replica.

mod common;
mod pg;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use common::{Proc, free_ports};
use pg::{PgCluster, PgOptions, SLOW_WAIT, SUPERUSER_PASSWORD, have_pg};

const SHIPPED: &str = include_str!("../cluster-configs/haproxy.cfg");

fn have_haproxy() -> bool {
    let ok = Command::new("haproxy").arg("-v").output().is_ok();
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but haproxy is not installed (apt-get install haproxy)"
        );
        eprintln!("skipped: no haproxy");
    }
    ok
}

/// The shipped file with this test's ports: its checks, timeouts and options as
/// they are; only the bind addresses and the server lines change.
fn config_for(c: &PgCluster, write: u16, read: u16, stats: u16) -> String {
    let mut out = String::new();
    for line in SHIPPED.lines() {
        let t = line.trim_start();
        if t.starts_with("server ") {
            continue;
        }
        let line = line
            .replace("bind *:5000", &format!("bind 127.0.0.1:{write}"))
            .replace("bind *:5001", &format!("bind 127.0.0.1:{read}"))
            .replace("bind *:8404", &format!("bind 127.0.0.1:{stats}"));
        out.push_str(&line);
        out.push('\n');
        if t.starts_with("default-server ") {
            for id in c.ids() {
                let n = c.node(id);
                out.push_str(&format!(
                    "    server {} 127.0.0.1:{} maxconn 500 check port {}\n",
                    n.name, n.pg_port, n.rest_port
                ));
            }
        }
    }
    out
}

/// (in recovery, server port) of a fresh connection through `port`.
async fn through(port: u16) -> anyhow::Result<(bool, u16)> {
    let (db, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={port} user=postgres password={SUPERUSER_PASSWORD} \
             dbname=postgres connect_timeout=2"
        ),
        tokio_postgres::NoTls,
    )
    .await
    .context("connect")?;
    tokio::spawn(conn);
    let row = db
        .query_one("SELECT pg_is_in_recovery(), inet_server_port()", &[])
        .await?;
    Ok((row.get(0), row.get::<_, i32>(1) as u16))
}

/// Waits until connections through `write` reach node `id`'s PostgreSQL as the
/// primary, then checks that the next five do too; returns how long the first took.
async fn write_port_reaches(c: &PgCluster, write: u16, id: u64, since: Instant) -> Duration {
    let want = c.node(id).pg_port;
    let took = c
        .wait_for(
            "the write port to reach the primary",
            SLOW_WAIT,
            async || {
                let (recovery, port) = through(write).await?;
                ensure!(
                    !recovery && port == want,
                    "reached :{port} (recovery {recovery})"
                );
                Ok(since.elapsed())
            },
        )
        .await;
    for _ in 0..5 {
        let (recovery, port) = through(write).await.expect("write port");
        assert!(
            !recovery && port == want,
            "reached :{port}, recovery {recovery}"
        );
    }
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_haproxy_write_port_follows_the_primary() {
    if !have_pg() || !have_haproxy() {
        return;
    }
    let mut c = PgCluster::start(PgOptions::default()).await;
    let p = c.wait_primary(&[], SLOW_WAIT).await;
    let replicas: Vec<u64> = c.ids().into_iter().filter(|i| *i != p).collect();
    c.wait_streaming(p, &replicas, SLOW_WAIT).await;

    let ports = free_ports(3);
    let (write, read) = (ports[0], ports[1]);
    let cfg = c.temp_path().join("haproxy.cfg");
    std::fs::write(&cfg, config_for(&c, write, read, ports[2])).unwrap();
    let check = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let _haproxy = Proc::new(
        Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    write_port_reaches(&c, write, p, Instant::now()).await;
    let (recovery, port) = c
        .wait_for("the read port to reach a replica", SLOW_WAIT, async || {
            let r = through(read).await?;
            ensure!(r.0, "reached the primary");
            Ok(r)
        })
        .await;
    assert!(recovery && replicas.iter().any(|r| c.node(*r).pg_port == port));

    // Switchover: the write port follows to the candidate.
    let q = replicas[0];
    let t = Instant::now();
    c.ctl(&["switchover", "--candidate", &c.node(q).name])
        .expect("switchover");
    let after_switchover = write_port_reaches(&c, write, q, t).await;

    // kill -9 of the new primary's host: the write port follows the failover.
    let others: Vec<u64> = c.ids().into_iter().filter(|i| *i != q).collect();
    c.wait_streaming(q, &others, SLOW_WAIT).await;
    let t = Instant::now();
    c.kill_host(q);
    let r = c.wait_primary(&[q], SLOW_WAIT).await;
    let after_kill = write_port_reaches(&c, write, r, t).await;
    eprintln!(
        "write port on the new primary: {:.2} s after the switchover began, {:.2} s after kill -9",
        after_switchover.as_secs_f64(),
        after_kill.as_secs_f64()
    );
}
