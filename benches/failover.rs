//! `cargo bench --bench failover`: a real 3-node cluster (pgquorum + PostgreSQL 15 on
//! loopback ports) under a write load, measuring
//! - unplanned failover: `kill -9` of the primary's pgquorum and postmaster (a host
//!   crash) to the first write committed on the new primary;
//! - planned failover: write unavailability (longest gap between two committed
//!   writes of a client that writes every 10 ms) around SIGTERM of the primary's node;
//! - the same unplanned failover as a client behind HAProxy sees it (the shipped
//!   `cluster-configs/haproxy.cfg`): kill to the first write through the write port;
//! - false failovers: primary changes during a steady period under the same load;
//! - soak (`PGQ_SOAK_S=600`): instead of the steady period, pgbench saturates both
//!   cores through HAProxy's write port for that long; reports false failovers
//!   (goal 0) and the primary's leader-lease renewal latency (p50/p99 from its
//!   `/metrics` histogram) under that load.
//!
//! Prints figures; asserts nothing. Settings: `PGQ_ROUNDS` (default 5),
//! `PGQ_STEADY_SECS` (60), `PGQ_SOAK_S` (off), `PGQ_TTL_MS` / `PGQ_LOOP_WAIT_MS`
//! (the defaults of `[ha]`), `PGQ_LOAD_SESSIONS` (8), `PGQ_NICE` (the nodes' nice
//! value, e.g. -10 as the unit file sets; PostgreSQL runs at 0 regardless).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/pg/mod.rs"]
mod pg;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pg::haproxy::Haproxy;
use pg::{PgCluster, PgOptions, SLOW_WAIT};

/// The first instant a write through HAProxy's `port` commits (tried every 10 ms).
async fn first_write_through(port: u16) -> Instant {
    first_write_to(&[Haproxy::conninfo(port)]).await
}

/// Primary changes seen by polling every member's `/primary` every 250 ms for `d`.
async fn count_primary_changes(c: &PgCluster, mut current: u64, d: Duration) -> u32 {
    let t0 = Instant::now();
    let mut changes = 0;
    while t0.elapsed() < d {
        tokio::time::sleep(Duration::from_millis(250)).await;
        for id in c.ids() {
            if c.http_status(id, "GET", "/primary").await == Some(200) && id != current {
                changes += 1;
                current = id;
            }
        }
    }
    changes
}

/// (le, cumulative count) of the primary's lease renewal histogram.
async fn renew_buckets(c: &PgCluster, id: u64) -> Vec<(f64, f64)> {
    let Some((_, text)) = c.http(id, "GET", "/metrics").await else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| l.starts_with("pgquorum_lease_renew_seconds_bucket{"))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

/// The bucket bound under which `q` of the renewals between two snapshots fell.
fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let diff: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| {
            let was = before
                .iter()
                .find(|(b, _)| b == le)
                .map_or(0.0, |(_, n)| *n);
            (*le, n - was)
        })
        .collect();
    let total = diff.last().map_or(0.0, |(_, n)| *n);
    diff.iter()
        .find(|(_, n)| *n >= q * total)
        .map_or(f64::NAN, |(le, _)| *le)
}

/// pgbench through HAProxy's write port for `secs`, saturating both cores; returns
/// (false failovers, renewal p50, p99, renewals, pgbench's summary line).
async fn soak(c: &PgCluster, proxy: &Haproxy, p: u64, secs: u64) -> (u32, f64, f64, f64, String) {
    let bin = std::path::Path::new(pg::PG_BIN).join("pgbench");
    let base = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.args(args)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &proxy.write.to_string(),
                "-U",
                "postgres",
            ])
            .arg("postgres")
            .env("PGPASSWORD", pg::SUPERUSER_PASSWORD)
            .stdin(std::process::Stdio::null());
        cmd
    };
    let init = base(&["-i", "-s", "20", "-q"])
        .output()
        .await
        .expect("pgbench -i");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let before = renew_buckets(c, p).await;
    let run = base(&["-c", "16", "-j", "2", "-T", &secs.to_string(), "-n"]).output();
    let (changes, out) = tokio::join!(count_primary_changes(c, p, Duration::from_secs(secs)), run);
    let out = out.expect("pgbench");
    let tps = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("tps"))
        .unwrap_or("pgbench printed no tps")
        .to_owned();
    let after = renew_buckets(c, p).await;
    let n = after.last().map_or(0.0, |(_, n)| *n) - before.last().map_or(0.0, |(_, n)| *n);
    (
        changes,
        quantile(&before, &after, 0.5),
        quantile(&before, &after, 0.99),
        n,
        tps,
    )
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn summary(label: &str, mut v: Vec<Duration>) {
    v.sort();
    let secs: Vec<String> = v
        .iter()
        .map(|d| format!("{:.2}", d.as_secs_f64()))
        .collect();
    let median = v[v.len() / 2];
    let max = *v.last().expect("rounds");
    println!(
        "{label}: median {:.2} s, max {:.2} s over {} rounds [{}]",
        median.as_secs_f64(),
        max.as_secs_f64(),
        v.len(),
        secs.join(", ")
    );
}

/// Sessions inserting into `load` against whichever node accepts writes; counts commits.
fn start_load(
    c: &PgCluster,
    sessions: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Arc<AtomicU64> {
    let commits = Arc::new(AtomicU64::new(0));
    let conninfos: Vec<String> = c.ids().iter().map(|i| c.conninfo(*i)).collect();
    for s in 0..sessions {
        let conninfos = conninfos.clone();
        let commits = commits.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut turn = s;
            let mut client: Option<tokio_postgres::Client> = None;
            while !*stop.borrow() {
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    turn += 1;
                    client = pg::connect(&conninfos[turn % conninfos.len()]).await.ok();
                    if client.is_none() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                }
                let cl = client.as_ref().expect("connected");
                let r = tokio::time::timeout(
                    Duration::from_secs(5),
                    cl.execute("INSERT INTO load (payload) VALUES (repeat('x', 200))", &[]),
                )
                .await;
                match r {
                    Ok(Ok(_)) => {
                        commits.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => client = None,
                }
            }
        });
    }
    commits
}

/// The first instant at which one of `ids` committed a write (polled every 10 ms).
async fn first_write(c: &PgCluster, ids: &[u64]) -> Instant {
    let conninfos: Vec<String> = ids.iter().map(|i| c.conninfo(*i)).collect();
    first_write_to(&conninfos).await
}

/// The first instant at which a write through one of `conninfos` committed.
async fn first_write_to(conninfos: &[String]) -> Instant {
    loop {
        for conninfo in conninfos {
            if let Ok(cl) = pg::connect(conninfo).await
                && cl
                    .batch_execute("INSERT INTO probe VALUES (now())")
                    .await
                    .is_ok()
            {
                return Instant::now();
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !pg::have_pg() {
        return;
    }
    let rounds = env_u64("PGQ_ROUNDS", 5);
    let steady = Duration::from_secs(env_u64("PGQ_STEADY_SECS", 60));
    let opts = PgOptions {
        ttl_ms: env_u64("PGQ_TTL_MS", PgOptions::default().ttl_ms),
        loop_wait_ms: env_u64("PGQ_LOOP_WAIT_MS", PgOptions::default().loop_wait_ms),
        // As the shipped unit file's `Nice=-10` (root only); PostgreSQL stays at 0.
        nice: std::env::var("PGQ_NICE").ok().and_then(|v| v.parse().ok()),
        ..PgOptions::default()
    };
    let sessions = env_u64("PGQ_LOAD_SESSIONS", 8) as usize;
    println!(
        "failover bench: ttl {} ms, loop_wait {} ms, {sessions} load sessions, {rounds} rounds, \
         nodes at nice {}",
        opts.ttl_ms,
        opts.loop_wait_ms,
        opts.nice.unwrap_or(0)
    );
    let mut c = PgCluster::start(opts).await;
    let p = c.wait_primary(&[], SLOW_WAIT).await;
    let others: Vec<u64> = c.ids().into_iter().filter(|i| *i != p).collect();
    c.wait_streaming(p, &others, SLOW_WAIT).await;
    c.connect(p)
        .await
        .expect("connect")
        .batch_execute(
            "CREATE TABLE load (id bigserial PRIMARY KEY, payload text); \
             CREATE TABLE probe (at timestamptz)",
        )
        .await
        .expect("create tables");
    let proxy = Haproxy::start(&c);
    pg::haproxy::settled(proxy.write).await;
    let soak_s = env_u64("PGQ_SOAK_S", 0);
    let changes = if soak_s > 0 {
        println!("soak: pgbench -c 16 -j 2 through HAProxy for {soak_s} s");
        let (changes, p50, p99, n, tps) = soak(&c, &proxy, p, soak_s).await;
        println!(
            "soak: {changes} primary changes (false failovers) in {soak_s} s; {tps}; \
             lease renewals: {n:.0}, p50 <= {:.0} ms, p99 <= {:.0} ms (histogram bucket bounds)",
            p50 * 1000.0,
            p99 * 1000.0
        );
        changes
    } else {
        0
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let commits = start_load(&c, sessions, stop_rx);

    // Steady state: the primary must not change.
    let t0 = Instant::now();
    let before = commits.load(Ordering::Relaxed);
    let current = c.wait_primary(&[], SLOW_WAIT).await;
    let changes = changes + count_primary_changes(&c, current, steady).await;
    let rate = (commits.load(Ordering::Relaxed) - before) as f64 / t0.elapsed().as_secs_f64();
    println!(
        "steady state: {changes} primary changes (false failovers) in {:.0} s at {rate:.0} commits/s",
        t0.elapsed().as_secs_f64()
    );

    let mut unplanned = Vec::new();
    let mut via_proxy = Vec::new();
    for round in 1..=rounds {
        let p = c.wait_primary(&[], SLOW_WAIT).await;
        let others: Vec<u64> = c.ids().into_iter().filter(|i| *i != p).collect();
        c.wait_streaming(p, &others, SLOW_WAIT).await;
        first_write_through(proxy.write).await;
        let t = Instant::now();
        c.kill_host(p);
        let (direct, through) =
            tokio::join!(first_write(&c, &others), first_write_through(proxy.write));
        let (d, h) = (direct - t, through - t);
        println!(
            "unplanned round {round}: node {p} killed, first write after {:.2} s (through HAProxy {:.2} s)",
            d.as_secs_f64(),
            h.as_secs_f64()
        );
        unplanned.push(d);
        via_proxy.push(h);
        c.restart(p);
    }

    let mut planned = Vec::new();
    for round in 1..=rounds {
        let p = c.wait_primary(&[], SLOW_WAIT).await;
        let others: Vec<u64> = c.ids().into_iter().filter(|i| *i != p).collect();
        c.wait_streaming(p, &others, SLOW_WAIT).await;
        // A client writing every 10 ms to whichever node accepts; the longest gap
        // between two of its commits is the unavailability.
        let (gap_stop_tx, gap_stop_rx) = tokio::sync::watch::channel(false);
        let conninfos: Vec<String> = c.ids().iter().map(|i| c.conninfo(*i)).collect();
        let gap = tokio::spawn(async move {
            let mut last = Instant::now();
            let mut worst = Duration::ZERO;
            let mut client: Option<tokio_postgres::Client> = None;
            let mut turn = 0;
            while !*gap_stop_rx.borrow() {
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    turn += 1;
                    client = pg::connect(&conninfos[turn % conninfos.len()]).await.ok();
                }
                if let Some(cl) = &client {
                    let r = tokio::time::timeout(
                        Duration::from_secs(2),
                        cl.batch_execute("INSERT INTO probe VALUES (now())"),
                    )
                    .await;
                    if matches!(r, Ok(Ok(()))) {
                        worst = worst.max(last.elapsed());
                        last = Instant::now();
                    } else {
                        client = None;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            worst
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t = Instant::now();
        let clean = c.terminate(p).await;
        let new = c.wait_primary(&[p], SLOW_WAIT).await;
        let _ = first_write(&c, &[new]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = gap_stop_tx.send(true);
        let worst = gap.await.expect("gap task");
        println!(
            "planned round {round}: node {p} stopped (clean exit: {clean}) in {:.2} s; writes unavailable {:.2} s",
            t.elapsed().as_secs_f64(),
            worst.as_secs_f64()
        );
        planned.push(worst);
        c.restart(p);
    }
    let _ = stop_tx.send(true);

    println!();
    summary(
        "unplanned failover (kill -9 host -> first write)",
        unplanned,
    );
    summary(
        "unplanned failover through HAProxy (kill -9 host -> first write via the write port)",
        via_proxy,
    );
    summary(
        "planned failover (SIGTERM -> write unavailability)",
        planned,
    );
    println!("false failovers in the steady state: {changes}");
}
