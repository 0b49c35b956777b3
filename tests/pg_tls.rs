//! A TLS cluster with PostgreSQL end to end, set up with `pgquorum certs` and
//! `[rest_auth]`: bootstrap, replication over TLS (`hostssl`, replicas verifying
//! the primary against the cluster CA), REST health checks open while every write
//! route needs the password, a failover, and no secret in anything the cluster
//! shows or stores: logs, `ctl` output, REST JSON, the Raft data dir.

mod common;
mod pg;

use std::time::Duration;

use anyhow::ensure;
use pg::{PgCluster, PgOptions, REST_PASSWORD, SUPERUSER_PASSWORD, have_pg};

const REPLICATION_PASSWORD: &str = "test-repl-pw";

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine;
    let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    format!("Basic {v}")
}

/// Every file under `dir`, as bytes (lossy text).
fn files_under(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, String)>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((p, String::from_utf8_lossy(&b).into_owned()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_tls_cluster_replicates_over_tls_fails_over_and_keeps_its_secrets() {
    if !have_pg() {
        return;
    }
    let opts = PgOptions {
        tls: true,
        ..PgOptions::default()
    };
    let (mut c, p, replicas) = PgCluster::start_healthy(opts).await;
    let db = c.connect(p).await.expect("connect to the primary");
    // Replication only over TLS: the rules, and the live connections.
    let rules = db
        .query(
            "SELECT type FROM pg_hba_file_rules WHERE 'replication' = ANY(database)",
            &[],
        )
        .await
        .unwrap();
    assert!(!rules.is_empty());
    for r in &rules {
        assert_eq!(r.get::<_, String>(0), "hostssl");
    }
    c.wait_for(
        "both replicas streaming over TLS",
        Duration::from_secs(30),
        async || {
            let row = db
                .query_one(
                    "SELECT count(*) FILTER (WHERE s.ssl), count(*) \
                 FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)",
                    &[],
                )
                .await?;
            let (ssl, all): (i64, i64) = (row.get(0), row.get(1));
            ensure!(ssl == 2 && all == 2, "{ssl} of {all} walsenders over TLS");
            Ok(())
        },
    )
    .await;

    // pgquorum's own sessions (HA loop, health monitor) are TLS too.
    c.wait_for(
        "pgquorum's sessions over TLS",
        Duration::from_secs(30),
        async || {
            let row = db
                .query_one(
                    "SELECT count(*) FILTER (WHERE s.ssl), count(*) \
                 FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
                 WHERE a.application_name = 'pgquorum'",
                    &[],
                )
                .await?;
            let (ssl, all): (i64, i64) = (row.get(0), row.get(1));
            ensure!(
                all >= 1 && ssl == all,
                "{ssl} of {all} pgquorum sessions over TLS"
            );
            Ok(())
        },
    )
    .await;

    // REST: checks answer without credentials; writes need them.
    assert_eq!(c.http_status(p, "GET", "/primary").await, Some(200));
    assert_eq!(
        c.http_status(replicas[0], "OPTIONS", "/replica").await,
        Some(200)
    );
    let mut captured = String::new();
    for (headers, want) in [
        (vec![], 401),
        (vec![basic("admin", "wrong")], 401),
        (vec![basic("root", REST_PASSWORD)], 401),
        (vec![basic("admin", REST_PASSWORD)], 202),
    ] {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|v| ("Authorization", v.as_str()))
            .collect();
        let got = c.http_with(p, "POST", "/reload", &h, "").await;
        assert_eq!(
            got.as_ref().map(|g| g.0),
            Some(want),
            "{headers:?}: {got:?}"
        );
        captured.push_str(&got.map(|g| g.1).unwrap_or_default());
    }
    for route in ["/switchover", "/failover", "/restart", "/reinitialize"] {
        let got = c.http_with(p, "POST", route, &[], "{}").await.map(|g| g.0);
        assert_eq!(got, Some(401), "POST {route} without credentials");
    }
    let got = c
        .http_with(p, "PATCH", "/config", &[], "{}")
        .await
        .map(|g| g.0);
    assert_eq!(got, Some(401), "PATCH /config without credentials");

    // Failover over TLS: the primary's host dies, a replica takes over.
    c.kill_host(p);
    let new = c.wait_primary(&[p], Duration::from_secs(30)).await;
    assert!(replicas.contains(&new));

    // A replaced certificate reaches the new primary's PostgreSQL without a restart.
    let name = c.node(new).name.clone();
    let certs = c.certs_dir();
    let out = std::process::Command::new(common::BIN)
        .args([
            "certs",
            "issue",
            &name,
            "--host",
            &c.node(new).host,
            "--force",
            "--dir",
        ])
        .arg(&certs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fresh = std::fs::read(certs.join(format!("{name}.crt"))).unwrap();
    let copy = c.node(new).dir.join("pg").join("pgquorum-server.crt");
    let log = c.node(new).log_path();
    c.wait_for(
        "PostgreSQL to get the new certificate",
        Duration::from_secs(30),
        async || {
            ensure!(std::fs::read(&copy)? == fresh, "copy not renewed");
            ensure!(
                std::fs::read_to_string(&log)?.contains("configuration reloaded"),
                "not reloaded"
            );
            Ok(())
        },
    )
    .await;
    assert!(c.is_writable(new).await, "the primary still takes writes");

    // No secret anywhere it could be read.
    for id in c.ids() {
        for path in ["/patroni", "/cluster", "/config", "/history", "/metrics"] {
            if let Some((_, body)) = c.http(id, "GET", path).await {
                captured.push_str(&body);
            }
        }
    }
    for args in [
        &["list"][..],
        &["show-config"],
        &["members"],
        &["history"],
        &["--output", "json", "kv", "get", "/", "--prefix"],
    ] {
        captured.push_str(&c.ctl(args).unwrap_or_else(|e| panic!("ctl {args:?}: {e}")));
    }
    let mut stored = Vec::new();
    for id in c.ids() {
        files_under(&c.node(id).dir.join("raft"), &mut stored);
        for f in [c.node(id).log_path(), c.node(id).pg_log()] {
            if let Ok(t) = std::fs::read(&f) {
                stored.push((f, String::from_utf8_lossy(&t).into_owned()));
            }
        }
    }
    stored.push(("REST and ctl output".into(), captured));
    for secret in [
        SUPERUSER_PASSWORD,
        REPLICATION_PASSWORD,
        REST_PASSWORD,
        "PRIVATE KEY",
    ] {
        for (path, text) in &stored {
            assert!(
                !text.contains(secret),
                "{secret:?} appears in {}",
                path.display()
            );
        }
    }
}

/// The same on three "hosts" (network namespaces, an address each): here pgquorum
/// reaches its own PostgreSQL by the host's address, not loopback, so pg_hba lets
/// it in only over TLS, and the replicas clone and stream from another address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_tls_cluster_on_three_hosts_clones_streams_and_fails_over() {
    // SAFETY: geteuid has no preconditions.
    if !have_pg() || unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs PostgreSQL and root (network namespaces)");
        return;
    }
    let opts = PgOptions {
        tls: true,
        ..PgOptions::default()
    };
    let mut c = PgCluster::start_in_netns(opts).await;
    let p = c.wait_primary(&[], Duration::from_secs(90)).await;
    let replicas: Vec<u64> = c.ids().into_iter().filter(|i| *i != p).collect();
    c.wait_streaming(p, &replicas, Duration::from_secs(90))
        .await;
    let db = c.connect(p).await.expect("connect to the primary");
    c.wait_for(
        "TLS walsenders and pgquorum sessions",
        Duration::from_secs(30),
        async || {
            let row = db
                .query_one(
                    "SELECT count(*) FILTER (WHERE NOT s.ssl) FROM pg_stat_activity a \
                 JOIN pg_stat_ssl s USING (pid) \
                 WHERE a.backend_type = 'walsender' OR a.application_name = 'pgquorum'",
                    &[],
                )
                .await?;
            let plain: i64 = row.get(0);
            ensure!(plain == 0, "{plain} plaintext sessions");
            Ok(())
        },
    )
    .await;
    c.kill_host(p);
    let new = c.wait_primary(&[p], Duration::from_secs(30)).await;
    assert!(replicas.contains(&new));
}
