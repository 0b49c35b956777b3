//! pgquorum supervising real PostgreSQL 15 on three nodes: bootstrap, streaming
//! replicas, the REST health checks, failover after a host crash, a planned stop and
//! a supervisor crash, and synchronous mode losing no acknowledged commit.
//!
//! Each test has its own temp dir and ports, so they run in parallel (nextest caps
//! PostgreSQL tests at two at a time: see .config/nextest.toml).

mod common;
mod pg;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::ensure;
use pg::{PgCluster, PgOptions, SLOW_WAIT, WriteObserver, have_pg, last_and_first};

async fn healthy_cluster(opts: PgOptions) -> (PgCluster, u64, Vec<u64>) {
    let c = PgCluster::start(opts).await;
    let primary = c.wait_primary(&[], SLOW_WAIT).await;
    let replicas: Vec<u64> = c.ids().into_iter().filter(|i| *i != primary).collect();
    c.wait_streaming(primary, &replicas, SLOW_WAIT).await;
    (c, primary, replicas)
}

async fn exec(c: &PgCluster, id: u64, sql: &str) -> anyhow::Result<()> {
    c.connect(id).await?.batch_execute(sql).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_bootstrap_replicates_and_serves_health_checks() {
    if !have_pg() {
        return;
    }
    let (c, p, replicas) = healthy_cluster(PgOptions::default()).await;
    exec(
        &c,
        p,
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)",
    )
    .await
    .unwrap();
    for r in &replicas {
        c.wait_for("rows on the replica", pg::SLOW_WAIT, async || {
            let n = c.count(*r, "t").await?;
            ensure!(n == 100, "node {r} has {n} rows");
            Ok(())
        })
        .await;
        // A replica refuses writes.
        assert!(!c.is_writable(*r).await, "replica {r} accepted a write");
    }

    // Patroni's health-check contract, on the primary and on a replica.
    let r = replicas[0];
    for (id, path, want) in [
        (p, "/", 200),
        (p, "/primary", 200),
        (p, "/read-write", 200),
        (p, "/leader", 200),
        (p, "/replica", 503),
        (p, "/read-only", 200),
        (p, "/async", 503),
        (p, "/health", 200),
        (p, "/liveness", 200),
        (p, "/readiness", 200),
        (r, "/", 503),
        (r, "/primary", 503),
        (r, "/leader", 503),
        (r, "/replica", 200),
        (r, "/replica?lag=1MB", 200),
        (r, "/read-only", 200),
        (r, "/async", 200),
        (r, "/sync", 503),
        (r, "/health", 200),
        (r, "/liveness", 200),
        (r, "/readiness", 200),
    ] {
        let got = c
            .wait_for(
                &format!("GET {path} on node {id} to answer {want}"),
                pg::SLOW_WAIT,
                async || {
                    let s = c.http_status(id, "GET", path).await;
                    ensure!(s == Some(want), "got {s:?}");
                    Ok(s)
                },
            )
            .await;
        assert_eq!(got, Some(want));
    }
    assert_eq!(c.http_status(p, "HEAD", "/primary").await, Some(200));
    assert_eq!(c.http_status(r, "HEAD", "/primary").await, Some(503));
    assert_eq!(c.http_status(p, "OPTIONS", "/primary").await, Some(200));

    let (status, body) = c.http(p, "GET", "/patroni").await.expect("GET /patroni");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON /patroni");
    assert_eq!(v["role"], "primary", "{v}");
    assert_eq!(v["state"], "running", "{v}");
    let (_, body) = c.http(r, "GET", "/patroni").await.expect("GET /patroni");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON /patroni");
    assert_eq!(v["role"], "replica", "{v}");

    let (status, body) = c.http(r, "GET", "/cluster").await.expect("GET /cluster");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON /cluster");
    let members = v["members"].as_array().expect("members array");
    assert_eq!(members.len(), 3, "{v}");
    let leaders: Vec<&str> = members
        .iter()
        .filter(|m| m["role"] == "leader")
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(leaders, vec![c.node(p).name.as_str()], "{v}");

    let (_, metrics) = c.http(p, "GET", "/metrics").await.expect("GET /metrics");
    assert!(
        metrics.contains("patroni_primary{") && metrics.contains("} 1"),
        "{metrics}"
    );

    let list = c.ctl(&["list"]).expect("ctl list");
    assert!(
        list.contains("Leader") && list.matches("Replica").count() == 2,
        "{list}"
    );

    // Cluster-wide PostgreSQL settings live in /pg/config, are validated by the
    // store, and reach every member with a reload.
    let client = pgquorum::client::Client::new(
        c.ids()
            .iter()
            .map(|i| format!("{}:{}", c.node(*i).host, c.node(*i).raft_port))
            .collect(),
    )
    .unwrap();
    let current = client.get("/pg/config", false, false).await.unwrap();
    let mut cfg: serde_json::Value = serde_json::from_slice(&current.kvs[0].value).unwrap();
    let mut bad = cfg.clone();
    bad["parameters"] = serde_json::json!({ "port": "1" });
    let e = client
        .put("/pg/config", serde_json::to_vec(&bad).unwrap(), 0, None)
        .await
        .expect_err("a reserved parameter was accepted");
    assert_eq!(e.code(), Some(tonic::Code::InvalidArgument), "{e}");
    cfg["parameters"] = serde_json::json!({ "work_mem": "7MB" });
    client
        .put("/pg/config", serde_json::to_vec(&cfg).unwrap(), 0, None)
        .await
        .unwrap();
    for id in c.ids() {
        c.wait_for("work_mem from /pg/config", SLOW_WAIT, async || {
            let v: String = c
                .connect(id)
                .await?
                .query_one("SHOW work_mem", &[])
                .await?
                .get(0);
            ensure!(v == "7MB", "node {id}: work_mem = {v}");
            Ok(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_host_crash_promotes_a_replica_and_the_old_primary_rejoins() {
    if !have_pg() {
        return;
    }
    let (mut c, old, _) = healthy_cluster(PgOptions::default()).await;
    exec(
        &c,
        old,
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10)",
    )
    .await
    .unwrap();
    // Replicated everywhere before the crash (asynchronous mode may lose the tail otherwise).
    for r in c.ids().into_iter().filter(|i| *i != old) {
        c.wait_for("rows replicated", SLOW_WAIT, async || {
            ensure!(c.count(r, "t").await? == 10, "not yet");
            Ok(())
        })
        .await;
    }

    let t0 = Instant::now();
    c.kill_host(old);
    let new = c.wait_primary(&[old], SLOW_WAIT).await;
    eprintln!("failover after a host crash: {:?}", t0.elapsed());
    exec(&c, new, "INSERT INTO t SELECT generate_series(11, 50)")
        .await
        .unwrap();
    let other = c
        .ids()
        .into_iter()
        .find(|i| *i != old && *i != new)
        .unwrap();
    c.wait_streaming(new, &[other], SLOW_WAIT).await;

    // The crashed primary comes back, is rewound and follows the new primary.
    c.restart(old);
    c.wait_streaming(new, &[old, other], SLOW_WAIT).await;
    exec(&c, new, "INSERT INTO t SELECT generate_series(51, 60)")
        .await
        .unwrap();
    c.wait_for("all rows on the old primary", SLOW_WAIT, async || {
        let n = c.count(old, "t").await?;
        ensure!(n == 60, "it has {n} rows");
        Ok(())
    })
    .await;
    assert!(!c.is_writable(old).await, "the old primary accepts writes");
    assert_eq!(c.wait_primary(&[], SLOW_WAIT).await, new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_sigterm_of_the_primary_fails_over() {
    if !have_pg() {
        return;
    }
    let (mut c, old, _) = healthy_cluster(PgOptions::default()).await;
    let t0 = Instant::now();
    assert!(
        c.terminate(old).await,
        "node did not exit cleanly on SIGTERM"
    );
    // PostgreSQL stopped with it.
    assert!(!c.is_writable(old).await);
    assert!(
        c.postmaster_pid(old).is_none(),
        "postmaster.pid left behind after a clean stop"
    );
    let new = c.wait_primary(&[old], SLOW_WAIT).await;
    eprintln!(
        "planned failover: {:?} from SIGTERM to a writable new primary",
        t0.elapsed()
    );
    exec(&c, new, "CREATE TABLE after_stop (id int)")
        .await
        .unwrap();
    // The stopped node rejoins as a replica without help.
    c.restart(old);
    let other = c
        .ids()
        .into_iter()
        .find(|i| *i != old && *i != new)
        .unwrap();
    c.wait_streaming(new, &[old, other], SLOW_WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_supervisor_kill_fences_before_any_promotion() {
    if !have_pg() {
        return;
    }
    let (mut c, old, _) = healthy_cluster(PgOptions::default()).await;
    let observer = WriteObserver::start(&c);
    // Let the observer see the primary writable first.
    c.wait_for("the observer to run", SLOW_WAIT, async || {
        ensure!(c.is_writable(old).await, "primary not writable");
        Ok(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.kill_supervisor(old);
    let new = c.wait_primary(&[old], SLOW_WAIT).await;
    // Keep observing a little after the promotion, then compare.
    c.wait_for(
        "the new primary to be seen by the observer",
        SLOW_WAIT,
        async || {
            ensure!(c.is_writable(new).await, "not yet");
            Ok(())
        },
    )
    .await;
    let seen = observer.finish().await;
    let (last_old, first_new) = last_and_first(&seen, old, new).unwrap();
    assert!(
        last_old < first_new,
        "the old primary was writable until {:?} after the new one first was",
        last_old - first_new
    );
    eprintln!(
        "old primary fenced {:?} before the new one accepted writes",
        first_new - last_old
    );
    assert!(
        !c.is_writable(old).await,
        "the old primary still accepts writes"
    );
    // Its supervisor is gone; restarting it brings the node back as a replica.
    c.restart(old);
    let other = c
        .ids()
        .into_iter()
        .find(|i| *i != old && *i != new)
        .unwrap();
    c.wait_streaming(new, &[old, other], SLOW_WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_sync_mode_loses_no_acknowledged_commit() {
    if !have_pg() {
        return;
    }
    let opts = PgOptions::synchronous();
    let (mut c, old, replicas) = healthy_cluster(opts).await;
    exec(&c, old, "CREATE TABLE acked (id bigint PRIMARY KEY)")
        .await
        .unwrap();
    // A synchronous standby is recorded and serves /sync.
    let sync = c.wait_sync_standby(&replicas).await;

    let w = Writer::start(&c);
    w.wait_acked(&c, 200).await;
    c.kill_host(old);
    let new = c.wait_primary(&[old], SLOW_WAIT).await;
    assert_eq!(
        new, sync,
        "a replica other than the recorded synchronous standby was promoted"
    );
    w.wait_acked(&c, w.acked() + 50).await;
    w.stop_and_check(&c, new).await;
}

/// Inserts increasing ids into whichever node accepts them (the table `acked`) and
/// records each id whose COMMIT was acknowledged.
struct Writer {
    acked: Arc<Mutex<BTreeSet<i64>>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(c: &PgCluster) -> Writer {
        let acked = Arc::new(Mutex::new(BTreeSet::new()));
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let conninfos: Vec<String> = c.ids().iter().map(|i| c.conninfo(*i)).collect();
        let task = {
            let acked = acked.clone();
            tokio::spawn(async move {
                let mut next = 1i64;
                let mut client: Option<tokio_postgres::Client> = None;
                let mut turn = 0usize;
                while !*stop_rx.borrow() {
                    if client.as_ref().is_none_or(|c| c.is_closed()) {
                        turn += 1;
                        client = pg::connect(&conninfos[turn % conninfos.len()]).await.ok();
                        if client.is_none() {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    }
                    let cl = client.as_ref().unwrap();
                    let r = tokio::time::timeout(
                        Duration::from_secs(5),
                        cl.execute("INSERT INTO acked VALUES ($1)", &[&next]),
                    )
                    .await;
                    match r {
                        Ok(Ok(_)) => {
                            acked.lock().unwrap().insert(next);
                        }
                        // A standby refuses; a dead primary drops the connection; a
                        // timeout leaves the commit's fate unknown (not acknowledged).
                        _ => client = None,
                    }
                    next += 1;
                }
            })
        };
        Writer { acked, stop, task }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    async fn wait_acked(&self, c: &PgCluster, n: usize) {
        c.wait_for("writes to be acknowledged", SLOW_WAIT, async || {
            ensure!(self.acked() >= n, "{} of {n}", self.acked());
            Ok(())
        })
        .await;
    }

    /// Stops writing and asserts that `primary` has every acknowledged commit.
    async fn stop_and_check(self, c: &PgCluster, primary: u64) {
        let _ = self.stop.send(true);
        self.task.await.unwrap();
        let acked = self.acked.lock().unwrap().clone();
        let rows = c
            .connect(primary)
            .await
            .unwrap()
            .query("SELECT id FROM acked", &[])
            .await
            .unwrap();
        let present: BTreeSet<i64> = rows.iter().map(|r| r.get(0)).collect();
        let lost: Vec<i64> = acked.difference(&present).copied().collect();
        eprintln!("acknowledged {} commits, {} lost", acked.len(), lost.len());
        assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
    }
}

/// `synchronous_node_count = 2`: commits wait for both standbys and both are
/// recorded, so when the primary's host and one standby's die at once the other
/// standby takes over with every acknowledged commit. Two witnesses (Raft members
/// without PostgreSQL) keep the quorum: three of five members survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_sync_node_count_two_survives_the_primary_and_a_standby_dying() {
    if !have_pg() {
        return;
    }
    let opts = PgOptions {
        ha_extra: "synchronous_node_count = 2".into(),
        witnesses: 2,
        ..PgOptions::synchronous()
    };
    let (mut c, old, replicas) = healthy_cluster(opts).await;
    exec(&c, old, "CREATE TABLE acked (id bigint PRIMARY KEY)")
        .await
        .unwrap();
    c.wait_for("both standbys recorded", SLOW_WAIT, async || {
        for r in &replicas {
            ensure!(
                c.http_status(*r, "GET", "/sync").await == Some(200),
                "{} is not a recorded synchronous standby",
                c.node(*r).name
            );
        }
        Ok(())
    })
    .await;
    let cl = c.connect(old).await.unwrap();
    let row = cl
        .query_one("SELECT current_setting('synchronous_standby_names')", &[])
        .await
        .unwrap();
    let names: String = row.get(0);
    assert!(
        names.starts_with("FIRST 2 ("),
        "synchronous_standby_names = {names}"
    );
    let w = Writer::start(&c);
    w.wait_acked(&c, 200).await;
    let (dead, survivor) = (replicas[0], replicas[1]);
    c.kill_host(old);
    c.kill_host(dead);
    let new = c.wait_primary(&[old, dead], SLOW_WAIT).await;
    assert_eq!(new, survivor);
    w.wait_acked(&c, w.acked() + 50).await;
    w.stop_and_check(&c, new).await;
}

/// In synchronous mode only the member recorded as synchronous standby may take over.
/// A primary that dies while none is recorded (it had just come up, or its standby
/// had left and it went on alone) leaves no member that provably holds every
/// acknowledged commit: none takes over on its own. The way out is the operator's:
/// turning synchronous mode off in `/pg/config`, after which the ordinary rules
/// (`maximum_lag_on_failover`) apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_sync_mode_without_a_recorded_standby_does_not_fail_over() {
    if !have_pg() {
        return;
    }
    let opts = PgOptions::synchronous();
    let ttl = Duration::from_millis(opts.ttl_ms);
    let (mut c, p, replicas) = healthy_cluster(opts).await;
    let n = c.node(p);
    let client = pgquorum::client::Client::new(
        c.ids()
            .iter()
            .map(|i| format!("{}:{}", c.node(*i).host, c.node(*i).raft_port))
            .collect(),
    )
    .unwrap();
    // Pause first, so the primary cannot record a standby again, then clear the record:
    // the state a primary is in between coming up and its first recorded standby.
    client
        .put("/pg/pause", b"test".to_vec(), 0, None)
        .await
        .unwrap();
    c.wait_for("the primary to see the pause", SLOW_WAIT, async || {
        let (_, body) = c.http(p, "GET", "/patroni").await.unwrap_or_default();
        ensure!(body.contains("\"pause\":true"), "not yet: {body}");
        Ok(())
    })
    .await;
    let none = format!(r#"{{"leader":"{}","sync_standby":null}}"#, n.name);
    client
        .put("/pg/sync", none.into_bytes(), 0, None)
        .await
        .unwrap();
    c.kill_supervisor(p);
    // The killed node may have led Raft: retry until a new leader answers.
    c.wait_for("the pause to be lifted", SLOW_WAIT, async || {
        client.delete("/pg/pause", false, None).await?;
        Ok(())
    })
    .await;

    // Three ttls without a writable node: the lease lapses after one, and then every
    // member must decline.
    let until = Instant::now() + 3 * ttl;
    while Instant::now() < until {
        for r in &replicas {
            assert!(
                !c.is_writable(*r).await,
                "node {r} took over without being the recorded synchronous standby\n{}",
                c.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let kv = client.get("/pg/config", false, false).await.unwrap();
    let mut cfg: serde_json::Value = serde_json::from_slice(&kv.kvs[0].value).unwrap();
    cfg["synchronous_mode"] = serde_json::Value::Bool(false);
    client
        .put("/pg/config", serde_json::to_vec(&cfg).unwrap(), 0, None)
        .await
        .unwrap();
    let q = c.wait_primary(&[p], SLOW_WAIT).await;
    assert!(replicas.contains(&q));
}

/// SIGHUP (`systemctl reload`) must never end a node: it used to, so a routine
/// reload of the primary's service was an unplanned failover. The config file is
/// re-read: `[tags]` apply at once, a file that does not validate changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_sighup_reloads_tags_and_never_ends_the_node() {
    if !have_pg() {
        return;
    }
    let (mut c, primary, _) = healthy_cluster(PgOptions::default()).await;
    let pid = c.supervisor_pid(primary);
    let cfg = c.node(primary).config_path();
    let good = std::fs::read_to_string(&cfg).unwrap();
    let log = c.node(primary).log_path();
    let hup = || {
        // SAFETY: kill(2) on a process this test started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    };
    std::fs::write(&cfg, format!("{good}\n[tags]\nnofailover = true\n")).unwrap();
    hup();
    c.wait_for("the reloaded tags", SLOW_WAIT, async || {
        let text = std::fs::read_to_string(&log)?;
        ensure!(text.contains("applied the new [tags]"), "not yet");
        Ok(())
    })
    .await;
    std::fs::write(&cfg, "this is not toml").unwrap();
    hup();
    c.wait_for("the refused reload", SLOW_WAIT, async || {
        let text = std::fs::read_to_string(&log)?;
        ensure!(
            text.contains("does not validate; nothing changed"),
            "not yet"
        );
        Ok(())
    })
    .await;
    std::fs::write(&cfg, &good).unwrap();
    assert!(c.status_ok(primary).await, "the node ended on SIGHUP");
    assert_eq!(
        c.wait_primary(&[], SLOW_WAIT).await,
        primary,
        "SIGHUP changed the primary"
    );
    assert!(c.is_writable(primary).await);
}

/// In synchronous mode only the recorded synchronous standby may take over: a
/// switchover naming the other replica is refused at once, says why, and leaves no
/// request behind (a pending one used to let that replica take over, with the
/// failover rules skipped, if the primary died meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_switchover_refuses_a_candidate_that_could_not_take_over() {
    if !have_pg() {
        return;
    }
    let (c, primary, replicas) = healthy_cluster(PgOptions::synchronous()).await;
    let sync = c.wait_sync_standby(&replicas).await;
    let other = *replicas.iter().find(|r| **r != sync).unwrap();
    let name = c.node(other).name.clone();
    let e = c
        .ctl(&["switchover", "--candidate", &name])
        .expect_err("switchover to a replica that is not the synchronous standby");
    assert!(
        e.to_string().contains("synchronous standby"),
        "the refusal says why: {e}"
    );
    let pending = c.ctl(&["kv", "get", "/pg/switchover"]).unwrap_or_default();
    assert!(!pending.contains(&name), "a request was left: {pending}");
    assert_eq!(c.wait_primary(&[], SLOW_WAIT).await, primary);
}

/// Raft leadership follows the primary: after a switchover to a replica that does not
/// lead Raft, leadership moves to the new primary's node. With the leader elsewhere,
/// freezing that node stopped the primary's lease renewals for a whole election and a
/// healthy primary fenced itself (a CI failure of the sync-standby fault scenario).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_raft_leadership_follows_the_primary() {
    if !have_pg() {
        return;
    }
    let (c, primary, replicas) = healthy_cluster(PgOptions::default()).await;
    let raft_leader = async |c: &PgCluster| -> anyhow::Result<u64> {
        let n = c.node(primary);
        let client = pgquorum::client::Client::new(vec![format!("{}:{}", n.host, n.raft_port)])?;
        Ok(client.status().await?.leader_id)
    };
    c.wait_for(
        "the Raft leader on the primary's node",
        SLOW_WAIT,
        async || {
            let l = raft_leader(&c).await?;
            ensure!(l == primary, "Raft leader {l}, primary {primary}");
            Ok(())
        },
    )
    .await;

    let cand = replicas[0];
    let name = c.node(cand).name.clone();
    c.ctl(&["switchover", "--candidate", &name])
        .expect("switchover");
    assert_eq!(c.wait_primary(&[primary], SLOW_WAIT).await, cand);
    c.wait_for(
        "the Raft leader on the new primary's node",
        SLOW_WAIT,
        async || {
            let l = raft_leader(&c).await?;
            ensure!(l == cand, "Raft leader {l}, primary {cand}");
            Ok(())
        },
    )
    .await;
    assert!(c.is_writable(cand).await);
}
