//! Day-2 operations against a real 3-node cluster with PostgreSQL 15: pause and
//! resume, the cluster configuration (ctl edit-config and REST /config, their
//! refusals), the promotion history, manual failover, reinit, restart (also
//! scheduled), scheduled switchover, and the libpq connection string.

mod common;
mod pg;

use std::time::{Duration, Instant};

use anyhow::ensure;
use pg::{PgCluster, PgOptions, SLOW_WAIT, SUPERUSER_PASSWORD, have_pg};
use serde_json::Value;

async fn healthy_cluster() -> (PgCluster, u64, Vec<u64>) {
    PgCluster::start_healthy(PgOptions::default()).await
}

async fn show(c: &PgCluster, id: u64, setting: &str) -> anyhow::Result<String> {
    let row = c
        .connect(id)
        .await?
        .query_one(&format!("SHOW {setting}"), &[])
        .await?;
    Ok(row.get(0))
}

/// Whether the store answers that `key` does not exist (an unreachable store is an error).
fn key_absent(c: &PgCluster, key: &str) -> anyhow::Result<bool> {
    let out = c.ctl_output(&["kv", "get", key])?;
    if out.status.success() {
        return Ok(false);
    }
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(err.contains("not found"), "{err}");
    Ok(true)
}

fn history(c: &PgCluster) -> Vec<Value> {
    let out = c
        .ctl(&["--output", "json", "history"])
        .expect("ctl history");
    match serde_json::from_str(&out).expect("history is JSON") {
        Value::Array(rows) => rows,
        other => panic!("history is not a list: {other}"),
    }
}

/// While paused, a primary whose postmaster was killed is neither restarted nor
/// replaced; after `resume` the cluster has one writable primary again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_pause_holds_automation_until_resume() {
    if !have_pg() {
        return;
    }
    let ttl = Duration::from_millis(PgOptions::default().ttl_ms);
    let (c, p, replicas) = healthy_cluster().await;
    let out = c.ctl(&["pause", "--wait"]).expect("pause");
    assert!(out.contains("cluster paused"), "{out}");
    for id in c.ids() {
        c.wait_for("/patroni to show the pause", SLOW_WAIT, async || {
            let (_, body) = c.http(id, "GET", "/patroni").await.unwrap_or_default();
            ensure!(body.contains("\"pause\":true"), "node {id}: {body}");
            Ok(())
        })
        .await;
    }
    let out = c.ctl(&["show-config"]).expect("show-config");
    assert!(out.contains("\"pause\": true"), "{out}");
    let list = c.ctl(&["list", "-e"]).expect("list -e");
    assert!(list.contains(" Maintenance mode: on"), "{list}");
    assert!(list.contains("| Pending restart | Tags |"), "{list}");
    // `list --watch` prints the table again and again (read until the second).
    let mut watch = c.ctl_spawn(&["list", "--watch", "1"]);
    let stdout = watch.stdout.take().unwrap();
    let tables = std::thread::spawn(move || {
        use std::io::BufRead as _;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter(|l| l.starts_with("+ Cluster:"))
            .take(2)
            .count()
    });
    let deadline = Instant::now() + SLOW_WAIT;
    while !tables.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(
        tables.join().unwrap(),
        2,
        "list --watch printed the table twice"
    );

    let killed = c.signal_instance(p, libc::SIGKILL);
    assert!(!killed.is_empty(), "the primary's PostgreSQL was running");
    let leader = c.node(p).name.clone();
    // Three ttls: nobody promoted, the dead primary not restarted, its lease kept.
    let until = Instant::now() + 3 * ttl;
    while Instant::now() < until {
        for id in c.ids() {
            assert!(
                !c.is_writable(id).await,
                "node {id} accepts writes while the cluster is paused\n{}",
                c.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let key = c.ctl(&["kv", "get", "/pg/leader"]).expect("leader key");
    assert!(
        key.contains(&leader),
        "the leader key moved in pause: {key}"
    );

    let out = c.ctl(&["resume", "--wait"]).expect("resume");
    assert!(out.contains("resumed"), "{out}");
    let q = c.wait_primary(&[], SLOW_WAIT).await;
    let others: Vec<u64> = c.ids().into_iter().filter(|i| *i != q).collect();
    c.wait_streaming(q, &others, SLOW_WAIT).await;
    assert!(q == p || replicas.contains(&q));
}

/// `edit-config` and REST `/config`: bad values and unconfirmed or conflicting
/// writes change nothing; good ones reach every PostgreSQL. `dsn` finds the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_config_edits_are_validated_compare_and_set_and_reach_postgres() {
    if !have_pg() {
        return;
    }
    let (c, p, replicas) = healthy_cluster().await;
    let before = c.ctl(&["show-config"]).expect("show-config");
    let refusals: &[(&[&str], &str)] = &[
        (
            &["edit-config", "--set", "ttl_ms=10", "--force"],
            "ha.ttl_ms",
        ),
        (
            &["edit-config", "--set", "ttl=30", "--force"],
            "ttl: unknown field",
        ),
        (
            &["edit-config", "--set", "loop_wait_ms=soon", "--force"],
            "loop_wait_ms: invalid type",
        ),
        (
            &["edit-config", "--pg", "port=1", "--force"],
            "port is managed by pgquorum",
        ),
        (
            &["edit-config", "--set", "ttl_ms", "--force"],
            "is not KEY=VALUE",
        ),
        // Not confirmed (standard input is not a terminal).
        (&["edit-config", "--pg", "work_mem=5MB"], "pass --force"),
        (&["edit-config"], "needs a terminal"),
        (&["edit-config", "--apply", "-"], "add --force"),
        (&["kv", "put", "/pg/config", "{}"], "pass --force"),
        (&["kv", "del", "/pg/", "--prefix"], "pass --force"),
        (&["kv", "del", "/pg/leader"], "pass --force"),
    ];
    for (args, want) in refusals {
        let err = c.ctl_fails(args);
        assert!(
            err.contains(want),
            "ctl {args:?}: {err:?} should say {want:?}"
        );
        assert_eq!(
            c.ctl(&["show-config"]).unwrap(),
            before,
            "ctl {args:?} changed the configuration"
        );
    }
    assert!(
        c.ctl(&["kv", "get", "/pg/leader"]).is_ok(),
        "the leader key is still there"
    );

    let out = c
        .ctl(&["edit-config", "--pg", "work_mem=7MB", "--force"])
        .expect("edit-config");
    assert!(out.contains("+     \"work_mem\": \"7MB\""), "{out}");
    assert!(out.contains("configuration written"), "{out}");
    for id in c.ids() {
        c.wait_for("work_mem from edit-config", SLOW_WAIT, async || {
            let v = show(&c, id, "work_mem").await?;
            ensure!(v == "7MB", "node {id}: work_mem = {v}");
            Ok(())
        })
        .await;
    }
    let again = c
        .ctl(&["edit-config", "--pg", "work_mem=7MB", "--force"])
        .expect("edit-config");
    assert!(again.contains("no changes"), "{again}");

    // REST: GET, a stale compare-and-set, bad values, a merge patch, pause.
    let (st, body) = c.http(p, "GET", "/config").await.expect("GET /config");
    assert_eq!(st, 200, "{body}");
    let mut doc: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(doc["parameters"]["work_mem"], "7MB");
    doc["parameters"]["work_mem"] = "9MB".into();
    let stale = c
        .http_with(
            p,
            "PUT",
            "/config",
            &[("If-Match", "\"1\"")],
            &doc.to_string(),
        )
        .await
        .expect("PUT /config");
    assert_eq!(stale.0, 409, "{}", stale.1);
    let r = replicas[0];
    for (method, body, want) in [
        ("PATCH", r#"{"ttl_ms": 5}"#, 400),
        ("PATCH", r#"{"colour": "blue"}"#, 400),
        ("PATCH", "not json", 400),
        ("PUT", r#"{"parameters": {"listen_addresses": "*"}}"#, 400),
    ] {
        let (st, text) = c
            .http_with(r, method, "/config", &[], body)
            .await
            .expect("REST answer");
        assert_eq!(st, want, "{method} {body}: {text}");
    }
    assert!(
        c.ctl(&["show-config"]).unwrap().contains("7MB"),
        "a refused write changed nothing"
    );
    let (st, text) = c
        .http_with(
            r,
            "PATCH",
            "/config",
            &[],
            r#"{"parameters": {"work_mem": "8MB"}}"#,
        )
        .await
        .expect("PATCH /config");
    assert_eq!(st, 200, "{text}");
    assert!(text.contains("\"work_mem\":\"8MB\""), "{text}");
    for id in c.ids() {
        c.wait_for("work_mem from PATCH /config", SLOW_WAIT, async || {
            let v = show(&c, id, "work_mem").await?;
            ensure!(v == "8MB", "node {id}: work_mem = {v}");
            Ok(())
        })
        .await;
    }
    let (st, text) = c
        .http_with(r, "PATCH", "/config", &[], r#"{"pause": true}"#)
        .await
        .expect("PATCH pause");
    assert_eq!(st, 200, "{text}");
    c.wait_for("the pause from PATCH /config", SLOW_WAIT, async || {
        let (_, body) = c.http(p, "GET", "/cluster").await.unwrap_or_default();
        ensure!(body.contains("\"pause\":true"), "{body}");
        Ok(())
    })
    .await;
    c.ctl(&["resume"]).expect("resume");

    // The connection string finds the primary by itself.
    let dsn = c.ctl(&["dsn"]).expect("dsn");
    let conninfo = format!(
        "{} user=postgres password={SUPERUSER_PASSWORD} dbname=postgres",
        dsn.trim()
    );
    let client = pg::connect(&conninfo).await.expect("connect with the dsn");
    let row = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0), "the dsn reached a replica: {dsn}");
}

/// A switchover and then a failover each leave a row in `ctl history` and
/// `GET /history` (Patroni's rows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_history_records_a_switchover_and_a_failover() {
    if !have_pg() {
        return;
    }
    let (mut c, p, replicas) = healthy_cluster().await;
    assert!(history(&c).is_empty());
    let cand = replicas[0];
    let cand_name = c.node(cand).name.clone();
    c.ctl(&["switchover", "--candidate", &cand_name])
        .expect("switchover");
    let q = c.wait_primary(&[p], SLOW_WAIT).await;
    assert_eq!(q, cand);
    let rows = c
        .wait_for("the switchover in the history", SLOW_WAIT, async || {
            let h = history(&c);
            ensure!(h.len() == 1, "{h:?}");
            Ok(h)
        })
        .await;
    assert_eq!(rows[0]["reason"], "switchover");
    assert_eq!(rows[0]["new_leader"], cand_name.as_str());
    assert_eq!(rows[0]["timeline"], 1);

    // The old primary follows the new one before the next test of it.
    let others: Vec<u64> = c.ids().into_iter().filter(|i| *i != q).collect();
    c.wait_streaming(q, &others, SLOW_WAIT).await;
    c.kill_host(q);
    let r = c.wait_primary(&[q], SLOW_WAIT).await;
    let r_name = c.node(r).name.clone();
    let rows = c
        .wait_for("the failover in the history", SLOW_WAIT, async || {
            let h = history(&c);
            ensure!(h.len() == 2, "{h:?}");
            Ok(h)
        })
        .await;
    assert_eq!(rows[1]["reason"], "failover");
    assert_eq!(rows[1]["new_leader"], r_name.as_str());
    assert_eq!(rows[1]["timeline"], 2);
    let table = c.ctl(&["history"]).expect("history table");
    assert!(
        table.contains("switchover") && table.contains("failover"),
        "{table}"
    );

    let (st, body) = c.http(r, "GET", "/history").await.expect("GET /history");
    assert_eq!(st, 200, "{body}");
    let doc: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(doc[0][0], 1);
    assert_eq!(doc[0][2], "switchover");
    assert_eq!(doc[0][4], cand_name.as_str());
    assert_eq!(doc[1][0], 2);
    assert_eq!(doc[1][2], "failover");
    assert_eq!(doc[1][4], r_name.as_str());
}

/// Manual failover in synchronous mode: refused while a primary serves, refused
/// for a candidate that is not the recorded standby (naming the risk), done when
/// forced, in pause, with the rest of the cluster waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_manual_failover_names_the_risk_and_needs_force() {
    if !have_pg() {
        return;
    }
    let c = PgCluster::start(PgOptions::synchronous()).await;
    let p = c.wait_primary(&[], SLOW_WAIT).await;
    let replicas: Vec<u64> = c.ids().into_iter().filter(|i| *i != p).collect();
    c.wait_streaming(p, &replicas, SLOW_WAIT).await;
    let sync = c.wait_sync_standby(&replicas).await;
    let other = *replicas.iter().find(|r| **r != sync).unwrap();
    let other_name = c.node(other).name.clone();
    let sync_name = c.node(sync).name.clone();

    let err = c.ctl_fails(&["failover", "--candidate", &sync_name]);
    assert!(err.contains("is a healthy primary"), "{err}");
    let body = format!(r#"{{"candidate": "{sync_name}"}}"#);
    let (st, text) = c
        .http_with(p, "POST", "/failover", &[], &body)
        .await
        .expect("POST /failover");
    assert_eq!(st, 412, "{text}");
    let err = c.ctl_fails(&["failover", "--candidate", "nobody"]);
    assert!(err.contains("not a member"), "{err}");

    c.ctl(&["pause", "--wait"]).expect("pause");
    let mut c = c;
    c.kill_host(p);
    c.wait_for(
        "the dead primary's lease to expire",
        SLOW_WAIT,
        async || {
            ensure!(key_absent(&c, "/pg/leader")?, "still held");
            Ok(())
        },
    )
    .await;
    let err = c.ctl_fails(&["failover", "--candidate", &other_name]);
    assert!(
        err.contains(&format!("the recorded standby {sync_name}")) && err.contains("--force"),
        "{err}"
    );
    assert!(!c.is_writable(other).await && !c.is_writable(sync).await);
    let out = c
        .ctl(&["failover", "--candidate", &other_name, "--force"])
        .expect("forced failover");
    assert!(
        out.contains(&format!("failed over to {other_name}")),
        "{out}"
    );
    assert!(c.is_writable(other).await, "the candidate serves");
    assert!(!c.is_writable(sync).await, "and nobody else");
    let h = history(&c);
    assert_eq!(h.last().unwrap()["new_leader"], other_name.as_str());
    c.wait_for("the request cleared", SLOW_WAIT, async || {
        ensure!(key_absent(&c, "/pg/failover")?, "still there");
        Ok(())
    })
    .await;
    c.ctl(&["resume", "--wait"]).expect("resume");
    c.wait_streaming(other, &[sync], SLOW_WAIT).await;
}

/// `ctl reinit` re-clones a replica (its old data dir kept aside, or removed with
/// --discard-old); the primary is refused, by ctl and by REST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_reinit_reclones_a_replica_and_never_the_primary() {
    if !have_pg() {
        return;
    }
    let (c, p, replicas) = healthy_cluster().await;
    let r = replicas[0];
    let r_name = c.node(r).name.clone();
    c.connect(p)
        .await
        .unwrap()
        .batch_execute("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 50)")
        .await
        .unwrap();
    let marker = c.node(r).pg_data().join("pgquorum-test-marker");
    std::fs::write(&marker, "old").unwrap();

    let err = c.ctl_fails(&["reinit", &c.node(p).name]);
    assert!(err.contains("is the primary"), "{err}");
    let (st, text) = c
        .http_with(p, "POST", "/reinitialize", &[], "")
        .await
        .expect("POST /reinitialize");
    assert_eq!(st, 503, "{text}");
    let err = c.ctl_fails(&["reinit", "nobody"]);
    assert!(err.contains("not a member"), "{err}");

    let out = c
        .ctl(&["--output", "json", "reinit", &r_name, "--wait"])
        .expect("reinit --wait");
    let doc: Value = serde_json::from_str(&out).expect("JSON");
    let moved = std::path::PathBuf::from(doc["moved_to"].as_str().expect("moved aside"));
    assert!(doc["bytes"].as_u64().unwrap() > 1_000_000, "{doc}");
    assert_eq!(doc["discarded"], false);
    assert!(
        moved.join("pgquorum-test-marker").exists(),
        "the old dir is kept"
    );
    assert!(!marker.exists(), "the data dir is a fresh clone");
    c.wait_streaming(p, &[r], SLOW_WAIT).await;
    // What `reinit --wait` reads its progress with answers from the real REST API.
    let url = format!("http://{}:{}", c.node(r).host, c.node(r).rest_port);
    let doc = pgquorum::ops::member_api::get_json(&url, "/patroni", SLOW_WAIT)
        .await
        .expect("/patroni read by ops::member_api");
    assert_eq!(doc["patroni"]["name"], r_name.as_str(), "{doc}");
    c.wait_for("the rows on the re-cloned replica", SLOW_WAIT, async || {
        let n = c.count(r, "t").await?;
        ensure!(n == 50, "{n} rows");
        Ok(())
    })
    .await;

    let (st, text) = c
        .http_with(r, "POST", "/reinitialize", &[], r#"{"discard_old": true}"#)
        .await
        .expect("POST /reinitialize");
    assert_eq!(st, 200, "{text}");
    let key = format!("/pg/reinit/{r_name}");
    let outcome = c
        .wait_for("the second reinit's outcome", SLOW_WAIT, async || {
            let v = c.ctl(&["kv", "get", &key])?;
            ensure!(v.contains("outcome"), "{v}");
            Ok(v)
        })
        .await;
    assert!(outcome.contains("\"discarded\":true"), "{outcome}");
    c.wait_streaming(p, &[r], SLOW_WAIT).await;
    assert!(
        moved.exists(),
        "the first reinit's dir stays (only the latest is discarded)"
    );
}

fn leader_key(c: &PgCluster) -> (String, u64) {
    let out = c
        .ctl(&["--output", "json", "kv", "get", "/pg/leader"])
        .expect("leader key");
    let doc: Value = serde_json::from_str(&out).expect("JSON");
    let kv = &doc["kvs"][0];
    (
        kv["value"].as_str().unwrap_or_default().to_string(),
        kv["lease"].as_u64().unwrap_or(0),
    )
}

/// `ctl restart` of the primary restarts it in place: same member, same lease, no
/// acknowledged commit lost; a rolling restart goes replicas first; `reload` and
/// the REST routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_restart_keeps_the_primary_and_its_lease_and_loses_nothing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    if !have_pg() {
        return;
    }
    let (c, p, replicas) = healthy_cluster().await;
    let p_name = c.node(p).name.clone();
    c.connect(p)
        .await
        .unwrap()
        .batch_execute("CREATE TABLE w (id int PRIMARY KEY)")
        .await
        .unwrap();
    let before = leader_key(&c);
    let pm_before = c.postmaster_pid(p);

    // A writer that records every commit PostgreSQL acknowledged.
    let acked = Arc::new(Mutex::new(Vec::<i32>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop, conninfo) = (acked.clone(), stop.clone(), c.conninfo(p));
        tokio::spawn(async move {
            let mut id = 0;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(client) = pg::connect(&conninfo).await {
                    while !stop.load(Ordering::Relaxed) {
                        id += 1;
                        let sql = format!("INSERT INTO w VALUES ({id})");
                        if client.batch_execute(&sql).await.is_err() {
                            break;
                        }
                        acked.lock().unwrap().push(id);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = c.ctl(&["restart", &p_name]).expect("restart");
    assert!(out.contains(&format!("{p_name}: restarted")), "{out}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();

    assert_ne!(c.postmaster_pid(p), pm_before, "PostgreSQL was restarted");
    assert_eq!(leader_key(&c), before, "same primary, same lease");
    assert_eq!(c.wait_primary(&[], SLOW_WAIT).await, p);
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 10,
        "the writer committed {} rows",
        acked.len()
    );
    let client = c.connect(p).await.unwrap();
    let rows = client.query("SELECT id FROM w", &[]).await.unwrap();
    let present: std::collections::BTreeSet<i32> = rows.iter().map(|r| r.get(0)).collect();
    let lost: Vec<&i32> = acked.iter().filter(|i| !present.contains(i)).collect();
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
    assert_eq!(history(&c).len(), 0, "a restart in place is no failover");

    // Rolling: replicas first, the primary last.
    let out = c.ctl(&["restart"]).expect("rolling restart");
    let order: Vec<&str> = out.lines().filter_map(|l| l.split(':').next()).collect();
    assert_eq!(order.len(), 3, "{out}");
    assert_eq!(order[2], p_name, "the primary restarts last: {out}");
    assert_eq!(leader_key(&c), before);
    c.wait_streaming(p, &replicas, SLOW_WAIT).await;

    // Reload: every member re-reads its files.
    let load_time = async |id: u64| -> anyhow::Result<String> {
        let row = c
            .connect(id)
            .await?
            .query_one("SELECT pg_conf_load_time()::text", &[])
            .await?;
        Ok(row.get(0))
    };
    let mut loaded = Vec::new();
    for id in c.ids() {
        loaded.push(load_time(id).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.ctl(&["reload"]).expect("reload");
    for (i, id) in c.ids().into_iter().enumerate() {
        let now = load_time(id).await.unwrap();
        assert_ne!(now, loaded[i], "node {id} did not reload");
    }

    // REST.
    let r = replicas[0];
    let (st, text) = c
        .http_with(r, "POST", "/restart", &[], r#"{"role": "primary"}"#)
        .await
        .expect("POST /restart");
    assert_eq!(st, 503, "{text}");
    let (st, _) = c.http_with(r, "DELETE", "/restart", &[], "").await.unwrap();
    assert_eq!(st, 404);
    let pm = c.postmaster_pid(r);
    let (st, text) = c
        .http_with(r, "POST", "/restart", &[], r#"{"role": "replica"}"#)
        .await
        .expect("POST /restart");
    assert_eq!(st, 200, "{text}");
    assert_ne!(c.postmaster_pid(r), pm);
    let (st, text) = c.http_with(r, "POST", "/reload", &[], "").await.unwrap();
    assert_eq!(st, 202, "{text}");
    let err = c.ctl_fails(&["restart", "nobody"]);
    assert!(err.contains("not a member"), "{err}");

    // A parameter that needs a restart: reported per member, then `restart --pending`.
    let err = c.ctl_fails(&["restart", "--pending"]);
    assert!(err.contains("no member matches"), "{err}");
    c.ctl(&[
        "edit-config",
        "--pg",
        "max_locks_per_transaction=96",
        "--force",
    ])
    .expect("edit-config");
    for id in c.ids() {
        c.wait_for("pending_restart in /patroni", SLOW_WAIT, async || {
            let (_, body) = c.http(id, "GET", "/patroni").await.unwrap_or_default();
            ensure!(
                body.contains("\"pending_restart\":true"),
                "node {id}: {body}"
            );
            let (_, metrics) = c.http(id, "GET", "/metrics").await.unwrap_or_default();
            ensure!(metrics.contains("patroni_pending_restart{"), "{metrics}");
            Ok(())
        })
        .await;
    }
    let list = c.ctl(&["list"]).expect("list");
    assert!(list.contains("Pending restart"), "{list}");
    let out = c.ctl(&["restart", "--pending"]).expect("restart --pending");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.lines().last().unwrap().starts_with(&p_name), "{out}");
    for id in c.ids() {
        assert_eq!(
            show(&c, id, "max_locks_per_transaction").await.unwrap(),
            "96"
        );
    }
    c.wait_for("pending_restart cleared", SLOW_WAIT, async || {
        let list = c.ctl(&["list"])?;
        ensure!(!list.contains("Pending restart"), "{list}");
        Ok(())
    })
    .await;
    assert_eq!(leader_key(&c), before, "still the same primary and lease");
}

async fn postmaster_started(c: &PgCluster, id: u64) -> anyhow::Result<f64> {
    let row = c
        .connect(id)
        .await?
        .query_one(
            "SELECT extract(epoch FROM pg_postmaster_start_time())::float8",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `restart --scheduled` and `switchover --scheduled` wait for their time;
/// REST `POST /restart {"schedule"}`, `POST`/`DELETE /switchover`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_scheduled_restart_and_switchover_fire_at_their_time_and_can_be_cancelled() {
    if !have_pg() {
        return;
    }
    let (c, p, replicas) = healthy_cluster().await;
    let r = replicas[1];
    let r_name = c.node(r).name.clone();
    let err = c.ctl_fails(&["restart", &r_name, "--scheduled", "soon"]);
    assert!(err.contains("is not a time"), "{err}");
    assert!(key_absent(&c, &format!("/pg/restart/{r_name}")).unwrap());
    let started = postmaster_started(&c, r).await.unwrap();
    let earliest = unix_now() + 4;
    let out = c
        .ctl(&["restart", &r_name, "--scheduled", "+4s"])
        .expect("scheduled restart");
    assert!(out.contains("scheduled at"), "{out}");
    let list = c.ctl(&["list"]).expect("list");
    assert!(
        list.contains(&format!(" Restart requested: {r_name} at ")),
        "{list}"
    );
    if unix_now() < earliest {
        assert_eq!(postmaster_started(&c, r).await.unwrap(), started);
    }
    let restarted = c
        .wait_for("the scheduled restart", SLOW_WAIT, async || {
            let t = postmaster_started(&c, r).await?;
            ensure!(t > started, "not restarted yet");
            Ok(t)
        })
        .await;
    assert!(
        restarted >= earliest as f64,
        "restarted at {restarted}, scheduled at {earliest}"
    );
    let (st, text) = c
        .http_with(r, "POST", "/restart", &[], r#"{"schedule": "yesterday"}"#)
        .await
        .unwrap();
    assert_eq!(st, 400, "{text}");
    let (st, text) = c
        .http_with(r, "POST", "/restart", &[], r#"{"schedule": "+600s"}"#)
        .await
        .unwrap();
    assert_eq!(st, 202, "{text}");
    let (st, _) = c.http_with(r, "DELETE", "/restart", &[], "").await.unwrap();
    assert_eq!(st, 200);
    assert!(key_absent(&c, &format!("/pg/restart/{r_name}")).unwrap());
    c.wait_streaming(p, &replicas, SLOW_WAIT).await;
    let p_name = c.node(p).name.clone();
    let cand = replicas[0];
    let cand_name = c.node(cand).name.clone();
    let err = c.ctl_fails(&["switchover", "--scheduled", "soon"]);
    assert!(err.contains("is not a time"), "{err}");
    assert!(key_absent(&c, "/pg/switchover").unwrap());

    let out = c
        .ctl(&[
            "--output",
            "json",
            "switchover",
            "--candidate",
            &cand_name,
            "--scheduled",
            "+4s",
        ])
        .expect("scheduled switchover");
    let doc: Value = serde_json::from_str(&out).expect("JSON");
    let at = doc["scheduled_at"]
        .as_str()
        .expect("scheduled_at")
        .to_string();
    assert_eq!(leader_key(&c).0, p_name, "nothing happens before its time");
    let list = c.ctl(&["list"]).expect("list");
    assert!(list.contains(" Switchover scheduled at: "), "{list}");
    let q = c.wait_primary(&[p], SLOW_WAIT).await;
    assert_eq!(q, cand);
    let h = c
        .wait_for("the switchover in the history", SLOW_WAIT, async || {
            let h = history(&c);
            ensure!(h.len() == 1, "{h:?}");
            Ok(h)
        })
        .await;
    let done = h[0]["time"].as_str().unwrap();
    assert!(done >= at.as_str(), "promoted at {done}, scheduled at {at}");
    let others: Vec<u64> = c.ids().into_iter().filter(|i| *i != q).collect();
    c.wait_streaming(q, &others, SLOW_WAIT).await;

    // REST: a wrong leader, a scheduled request cancelled, then one done at once.
    let (st, text) = c
        .http_with(q, "POST", "/switchover", &[], r#"{"leader": "nobody"}"#)
        .await
        .unwrap();
    assert_eq!(st, 412, "{text}");
    let body = format!(r#"{{"candidate": "{p_name}", "scheduled_at": "+600s"}}"#);
    let (st, text) = c
        .http_with(q, "POST", "/switchover", &[], &body)
        .await
        .unwrap();
    assert_eq!(st, 202, "{text}");
    assert!(!key_absent(&c, "/pg/switchover").unwrap());
    let (st, _) = c
        .http_with(q, "DELETE", "/switchover", &[], "")
        .await
        .unwrap();
    assert_eq!(st, 200);
    let (st, _) = c
        .http_with(q, "DELETE", "/switchover", &[], "")
        .await
        .unwrap();
    assert_eq!(st, 404);
    let out = c.ctl(&["switchover", "--cancel"]).unwrap();
    assert!(out.contains("no switchover was requested"), "{out}");
    assert_eq!(leader_key(&c).0, cand_name);
    let body = format!(r#"{{"leader": "{cand_name}", "candidate": "{p_name}"}}"#);
    let (st, text) = c
        .http_with(q, "POST", "/switchover", &[], &body)
        .await
        .unwrap();
    assert_eq!(st, 200, "{text}");
    assert!(text.contains(&p_name), "{text}");
    assert_eq!(c.wait_primary(&[q], SLOW_WAIT).await, p);
}
