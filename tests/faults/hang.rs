//! A hung PostgreSQL (every process of the instance stopped with SIGSTOP, as storage
//! that stops answering leaves it): the primary is killed and replaced, a synchronous
//! standby is replaced, a replica stops taking reads; and a saturated primary trips
//! none of it.

use std::time::{Duration, Instant};

use anyhow::ensure;

use super::{Scenario, async_opts, run_scenario, sync_opts};
use crate::pg::{PG_BIN, PgCluster, PgOptions, SLOW_WAIT, have_pg};

/// The value of metric `name` in node `id`'s `/metrics`.
async fn metric(c: &PgCluster, id: u64, name: &str) -> Option<f64> {
    let (_, body) = c.http(id, "GET", "/metrics").await?;
    body.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Sends `sig` to each of `pids` (gone ones are skipped: ESRCH is fine).
fn signal_all(pids: &[i32], sig: i32) {
    for p in pids {
        // SAFETY: kill(2) of this test cluster's own PostgreSQL processes.
        unsafe { libc::kill(*p, sig) };
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_fault_sigstop_primary_postgres_async() {
    primary_hang(async_opts(), "SIGSTOP primary's PostgreSQL").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_fault_sigstop_primary_postgres_sync() {
    primary_hang(sync_opts(), "SIGSTOP primary's PostgreSQL").await;
}

/// With the default `primary_hang_timeout_ms` (10 s): the primary kills its hung
/// instance, releases the lease, a replica takes over; the old instance, resumed,
/// has nothing left that could accept a write, and rejoins as a replica.
async fn primary_hang(opts: PgOptions, name: &'static str) {
    run_scenario(
        Scenario::new(name, opts),
        async |c: &mut PgCluster, p: u64| {
            let pm = c.postmaster_pid(p).expect("the primary's postmaster");
            let pids = c.signal_instance(p, libc::SIGSTOP);
            let stopped = Instant::now();
            let next = c.wait_primary(&[p], SLOW_WAIT).await;
            eprintln!(
                "{name}: node {next} primary {:.2} s after the hang began",
                stopped.elapsed().as_secs_f64()
            );
            signal_all(&pids, libc::SIGCONT);
            c.wait_for("the hung instance to be killed", SLOW_WAIT, async || {
                let left: Vec<&i32> = pids
                    .iter()
                    .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
                    .collect();
                ensure!(
                    left.is_empty(),
                    "processes of old postmaster {pm} left: {left:?}"
                );
                Ok(())
            })
            .await;
            c.wait_for("the kill to be counted", SLOW_WAIT, async || {
                let kills = metric(c, p, "pgquorum_postgres_hang_kills_total").await;
                ensure!(kills == Some(1.0), "hang kills on node {p}: {kills:?}");
                Ok(())
            })
            .await;
        },
    )
    .await;
}

/// With the default `sync_standby_hang_timeout_ms` (5 s), a 20 s hang of the
/// synchronous standby: the other replica becomes the synchronous standby and
/// writes flow again; no failover, nothing acknowledged lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_fault_sigstop_sync_standby_postgres() {
    let s = Scenario {
        no_loss: true,
        ..Scenario::new("SIGSTOP sync standby's PostgreSQL 20 s", sync_opts())
    };
    run_scenario(s, async |c: &mut PgCluster, p: u64| {
        let others: Vec<u64> = c.ids().into_iter().filter(|i| *i != p).collect();
        let standby = c.wait_sync_standby(&others).await;
        let other = others.into_iter().find(|i| *i != standby).unwrap();
        // One commit issued the moment the standby hangs, on a session of its own:
        // how long it waits is the write outage (the workload's sessions give up
        // after 5 s and reconnect, which blurs their figure).
        let probe = c.connect(p).await.expect("connect");
        probe
            .batch_execute("CREATE TABLE IF NOT EXISTS hang_probe (at timestamptz)")
            .await
            .expect("create hang_probe");
        let pids = c.signal_instance(standby, libc::SIGSTOP);
        let stopped = Instant::now();
        probe
            .batch_execute("INSERT INTO hang_probe VALUES (now())")
            .await
            .expect("the commit issued during the hang");
        let commit_waited = stopped.elapsed();
        c.wait_sync_standby(&[other]).await;
        eprintln!(
            "sync standby hang: a commit issued at the hang took {:.2} s; node {other} \
             recorded {:.2} s after node {standby} hung",
            commit_waited.as_secs_f64(),
            stopped.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(20).saturating_sub(stopped.elapsed())).await;
        signal_all(&pids, libc::SIGCONT);
        assert_eq!(c.wait_primary(&[], SLOW_WAIT).await, p, "failed over");
        let changes = metric(c, p, "pgquorum_sync_standby_changes_total").await;
        assert_eq!(
            changes,
            Some(1.0),
            "synchronous standby changes on the primary"
        );
    })
    .await;
}

/// An async replica hangs: its REST checks turn 503 (load balancers stop sending it
/// reads), nothing fails over, and it serves again once resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_fault_sigstop_replica_postgres_async() {
    let s = Scenario {
        no_loss: true,
        ..Scenario::new("SIGSTOP a replica's PostgreSQL", async_opts())
    };
    run_scenario(s, async |c: &mut PgCluster, p: u64| {
        let r = c.ids().into_iter().find(|i| *i != p).unwrap();
        c.wait_for("the replica to serve reads", SLOW_WAIT, async || {
            let code = c.http_status(r, "GET", "/replica").await;
            ensure!(code == Some(200), "/replica: {code:?}");
            Ok(())
        })
        .await;
        let pids = c.signal_instance(r, libc::SIGSTOP);
        let stopped = Instant::now();
        c.wait_for("the hung replica to refuse reads", SLOW_WAIT, async || {
            for path in ["/replica", "/read-only", "/health"] {
                let code = c.http_status(r, "GET", path).await;
                ensure!(code == Some(503), "{path}: {code:?}");
            }
            Ok(())
        })
        .await;
        eprintln!(
            "replica hang: REST checks 503 {:.2} s after the hang began",
            stopped.elapsed().as_secs_f64()
        );
        // Longer than a primary hang needs to be acted on: still no failover.
        tokio::time::sleep(Duration::from_millis(4 * c.opts.ttl_ms)).await;
        assert_eq!(c.wait_primary(&[], SLOW_WAIT).await, p, "failed over");
        signal_all(&pids, libc::SIGCONT);
        c.wait_for(
            "the resumed replica to serve reads",
            SLOW_WAIT,
            async || {
                let code = c.http_status(r, "GET", "/replica").await;
                ensure!(code == Some(200), "/replica: {code:?}");
                Ok(())
            },
        )
        .await;
        let hangs = metric(c, r, "pgquorum_postgres_hangs_total").await;
        assert_eq!(hangs, Some(1.0), "hangs counted on the replica");
    })
    .await;
}

/// The other side: a primary saturated by pgbench on both cores, with fsync on and
/// a checkpoint every 5 s, in synchronous mode, with the strictest timeouts the
/// configuration allows (primary: ttl; synchronous standby: 2 loop_wait). No hang
/// may be seen, no standby replaced, nothing failed over. `PGQ_SOAK_S` sets the
/// length (default 60 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_fault_saturated_primary_trips_no_hang_detection() {
    if !have_pg() {
        return;
    }
    let secs: u64 = std::env::var("PGQ_SOAK_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let opts = PgOptions {
        fsync: true,
        ha_extra: "primary_hang_timeout_ms = 2500\nsync_standby_hang_timeout_ms = 1000".into(),
        ..sync_opts()
    };
    let c = PgCluster::start(opts).await;
    let p = c.wait_primary(&[], SLOW_WAIT).await;
    let others: Vec<u64> = c.ids().into_iter().filter(|i| *i != p).collect();
    c.wait_streaming(p, &others, SLOW_WAIT).await;
    c.wait_sync_standby(&others).await;
    let conninfo = c.conninfo(p);
    let pgbench = format!("{PG_BIN}/pgbench");
    let init = tokio::process::Command::new(&pgbench)
        .args(["-i", "-q", "-s", "5", &conninfo])
        .output()
        .await
        .expect("run pgbench -i");
    assert!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let run = tokio::process::Command::new(&pgbench)
        .args([
            "-c",
            "8",
            "-j",
            "2",
            "-T",
            &secs.to_string(),
            "-P",
            "10",
            &conninfo,
        ])
        .output();
    let checkpoints = async {
        let cl = c.connect(p).await.expect("connect");
        let t0 = Instant::now();
        let mut n = 0;
        while t0.elapsed() < Duration::from_secs(secs) {
            tokio::time::sleep(Duration::from_secs(5)).await;
            if cl.batch_execute("CHECKPOINT").await.is_ok() {
                n += 1;
            }
        }
        n
    };
    let (out, checkpoints) = tokio::join!(run, checkpoints);
    let out = out.expect("run pgbench");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps"))
        .unwrap_or("tps = ?")
        .to_string();
    for id in c.ids() {
        for name in [
            "pgquorum_postgres_hangs_total",
            "pgquorum_postgres_hang_kills_total",
            "pgquorum_sync_standby_changes_total",
        ] {
            let v = metric(&c, id, name).await;
            assert_eq!(v, Some(0.0), "{name} on node {id}\n{}", c.logs());
        }
    }
    assert_eq!(
        c.wait_primary(&[], SLOW_WAIT).await,
        p,
        "failed over under load"
    );
    println!(
        "FAULT {:<34} mode=sync  secs={secs} checkpoints={checkpoints} {tps} hangs=0 false_failovers=0",
        "pgbench saturating the primary"
    );
}

/// In pause nothing is killed: the hung primary keeps its lease and its processes,
/// the hang is reported (log, `/metrics`), and once the instance resumes and the
/// pause is lifted it serves again, with no failover and nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_fault_sigstop_primary_postgres_in_pause() {
    let s = Scenario {
        no_loss: true,
        ..Scenario::new("SIGSTOP primary's PostgreSQL, paused", async_opts())
    };
    run_scenario(s, async |c: &mut PgCluster, p: u64| {
        let client = pgquorum::client::Client::new(
            c.ids()
                .iter()
                .map(|i| format!("{}:{}", c.node(*i).host, c.node(*i).raft_port))
                .collect(),
        )
        .expect("client");
        client
            .put("/pg/pause", b"maintenance".to_vec(), 0, None)
            .await
            .expect("pause");
        c.wait_for("the primary to see the pause", SLOW_WAIT, async || {
            let (_, body) = c.http(p, "GET", "/patroni").await.unwrap_or_default();
            ensure!(body.contains("\"pause\":true"), "not yet: {body}");
            Ok(())
        })
        .await;
        let pids = c.signal_instance(p, libc::SIGSTOP);
        // Reported...
        c.wait_for("the hang to be reported", SLOW_WAIT, async || {
            let hangs = metric(c, p, "pgquorum_postgres_hangs_total").await;
            ensure!(hangs == Some(1.0), "hangs on node {p}: {hangs:?}");
            Ok(())
        })
        .await;
        // ...and, past the hang timeout and a ttl, nothing done about it.
        tokio::time::sleep(Duration::from_millis(10_000 + 2 * c.opts.ttl_ms)).await;
        let gone: Vec<&i32> = pids
            .iter()
            .filter(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
            .collect();
        assert!(gone.is_empty(), "processes killed in pause: {gone:?}");
        let kills = metric(c, p, "pgquorum_postgres_hang_kills_total").await;
        assert_eq!(kills, Some(0.0), "hang kills in pause");
        signal_all(&pids, libc::SIGCONT);
        c.wait_for("the pause to be lifted", SLOW_WAIT, async || {
            client.delete("/pg/pause", false, None).await?;
            Ok(())
        })
        .await;
        assert_eq!(c.wait_primary(&[], SLOW_WAIT).await, p, "failed over");
    })
    .await;
}
