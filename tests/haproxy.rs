//! The shipped `cluster-configs/haproxy.cfg` with the real HAProxy (Debian package)
//! in front of a real 3-node cluster: the write port reaches the primary before, after
//! a switchover and after `kill -9` of the primary's host; the read port a replica.

mod common;
mod pg;

use std::time::{Duration, Instant};

use anyhow::ensure;
use pg::haproxy::{Haproxy, have_haproxy, through};
use pg::{PgCluster, PgOptions, SLOW_WAIT, have_pg};

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
    // A member that just stopped being primary stays in the pool until its checks
    // fail (fall 2 x fastinter 250 ms); meanwhile a connection may reach it, now a
    // replica that refuses writes. Once settled, every connection is the primary's.
    c.wait_for(
        "the write port to settle on the primary",
        SLOW_WAIT,
        async || {
            for _ in 0..5 {
                let (recovery, port) = through(write).await?;
                ensure!(
                    !recovery && port == want,
                    "reached :{port} (recovery {recovery})"
                );
            }
            Ok(())
        },
    )
    .await;
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_haproxy_write_port_follows_the_primary() {
    if !have_pg() || !have_haproxy() {
        return;
    }
    let (mut c, p, replicas) = PgCluster::start_healthy(PgOptions::default()).await;

    let proxy = Haproxy::start(&c);
    let (write, read) = (proxy.write, proxy.read);

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
