//! REST API rules against Patroni's behaviour, case by case.
use std::time::Duration;

use serde_json::{Value, json};

use super::metrics::version_number;
use super::*;
use crate::ha::model::{ClusterView, MemberStatus, PgRunState, Role, SyncState, Tags, format_lsn};
use crate::ha::view::split_host_port;

use axum::http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;

const MB: u64 = 1024 * 1024;
const OPTIME: u64 = 0x5_0000_0000;

fn status(name: &str, role: Role, state: PgRunState) -> MemberStatus {
    MemberStatus {
        name: name.into(),
        role,
        state,
        pg_addr: format!("10.0.0.{}:5432", &name[2..]),
        api_url: format!("http://10.0.0.{}:8008/patroni", &name[2..]),
        timeline: 3,
        receive_lsn: OPTIME,
        replay_lsn: OPTIME,
        following: (role == Role::Replica).then(|| "pg1".to_owned()),
        tags: Tags::default(),
        sync_standby: false,
        node_id: 1,
        paused: false,
        pending_restart: false,
        pre_promote_vetoed: false,
        version: String::new(),
        server_version: None,
    }
}

/// A far-off "now", so that instants before it never underflow.
fn now() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

/// Cluster: pg1 primary with the lease, pg2 sync standby, pg3 async replica.
fn health(member: &str, own: MemberStatus, now: Instant) -> Health {
    let mut cluster = ClusterView {
        leader: Some("pg1".into()),
        optime: Some(OPTIME),
        sync: Some(SyncState {
            leader: "pg1".into(),
            sync_standby: vec!["pg2".into()],
        }),
        ..ClusterView::default()
    };
    for (name, role) in [
        ("pg1", Role::Primary),
        ("pg2", Role::Replica),
        ("pg3", Role::Replica),
    ] {
        cluster
            .members
            .insert(name.into(), status(name, role, PgRunState::Running));
    }
    cluster.members.insert(member.into(), own.clone());
    Health {
        scope: "prod".into(),
        member: member.into(),
        status: Some(own),
        cluster,
        last_cycle: Some(now - Duration::from_millis(200)),
        ttl: Duration::from_secs(3),
        server_version: Some(160004),
        system_identifier: Some(7_277_694_203_142_172_922),
        dcs_last_seen: 1_700_000_000,
        pg_last_answer: Some(now - Duration::from_millis(300)),
        ..Health::default()
    }
}

fn primary_with_lock(now: Instant) -> Health {
    let mut h = health(
        "pg1",
        status("pg1", Role::Primary, PgRunState::Running),
        now,
    );
    h.leader_lease_until = Some(now + Duration::from_secs(2));
    h
}

/// The deadline passed a moment ago; the store still names pg1 (the Raft
/// leader has not expired the lease yet), and PostgreSQL still runs as primary.
fn primary_lock_expired(now: Instant) -> Health {
    let mut h = primary_with_lock(now);
    h.leader_lease_until = Some(now - Duration::from_millis(1));
    h
}

fn replica(name: &str, replay_behind: u64, now: Instant) -> Health {
    let mut s = status(name, Role::Replica, PgRunState::Running);
    s.replay_lsn = OPTIME - replay_behind;
    s.receive_lsn = OPTIME - replay_behind / 2;
    health(name, s, now)
}

fn stopped(now: Instant) -> Health {
    health(
        "pg3",
        status("pg3", Role::Replica, PgRunState::Stopped),
        now,
    )
}

fn q(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

const OK: u16 = 200;
const NO: u16 = 503;

fn check(name: &str, h: &Health, now: Instant, table: &[(&str, &str, u16)]) {
    for &(path, query, want) in table {
        let Some(Route::Check(endpoint)) = route(path) else {
            panic!("{path} is not a health check");
        };
        let got = health_code(endpoint, h, &q(query), now);
        assert_eq!(got.as_u16(), want, "{name}: {path}?{query}");
    }
}

#[test]
fn primary_with_lock_codes() {
    let now = now();
    check(
        "primary with lock",
        &primary_with_lock(now),
        now,
        &[
            ("/", "", OK),
            ("/primary", "", OK),
            ("/master", "", OK),
            ("/read-write", "", OK),
            ("/leader", "", OK),
            ("/replica", "", NO),
            ("/read-only", "", OK),
            ("/sync", "", NO),
            ("/synchronous", "", NO),
            ("/read-only-sync", "", OK),
            ("/async", "", NO),
            ("/asynchronous", "", NO),
            ("/health", "", OK),
            ("/liveness", "", OK),
            ("/readiness", "", OK),
            // Tags are ignored on /primary and /leader, as in Patroni...
            ("/primary", "tag_nosuch=1", OK),
            ("/leader", "tag_nofailover=true", OK),
            // ...but not on /read-only or /health.
            ("/read-only", "tag_nosuch=1", NO),
            ("/health", "tag_nofailover=false", OK),
            ("/health", "tag_nofailover=true", NO),
        ],
    );
}

#[test]
fn primary_whose_lock_just_expired_is_not_primary() {
    let now = now();
    check(
        "lock expired",
        &primary_lock_expired(now),
        now,
        &[
            ("/", "", NO),
            ("/primary", "", NO),
            ("/read-write", "", NO),
            ("/leader", "", NO),
            ("/read-only", "", NO),
            ("/read-only-sync", "", NO),
            ("/replica", "", NO),
            ("/readiness", "", NO),
            // PostgreSQL itself still runs and the loop is alive.
            ("/health", "", OK),
            ("/liveness", "", OK),
        ],
    );
    // No lease at all is the same.
    let mut h = primary_with_lock(now);
    h.leader_lease_until = None;
    check(
        "no lease",
        &h,
        now,
        &[("/primary", "", NO), ("/leader", "", NO)],
    );
}

#[test]
fn lock_holder_not_yet_running_as_primary_is_leader_only() {
    let now = now();
    let mut h = primary_with_lock(now);
    // Promotion in progress: lease taken, PostgreSQL still in recovery.
    h.status = Some(status("pg1", Role::Replica, PgRunState::Running));
    check(
        "promoting",
        &h,
        now,
        &[
            ("/primary", "", NO),
            ("/leader", "", OK),
            ("/readiness", "", OK),
        ],
    );
}

#[test]
fn streaming_replica_codes() {
    let now = now();
    check(
        "streaming replica",
        &replica("pg3", 1000, now),
        now,
        &[
            ("/", "", NO),
            ("/primary", "", NO),
            ("/read-write", "", NO),
            ("/leader", "", NO),
            ("/replica", "", OK),
            ("/replica", "lag=16MB", OK),
            ("/replica", "lag=1000", OK),
            ("/replica", "lag=999", NO),
            ("/replica", "lag=garbage", OK),
            ("/replica", "replication_state=streaming", OK),
            ("/replica", "replication_state=in%20archive%20recovery", NO),
            ("/replica", "tag_noloadbalance=false", OK),
            ("/replica", "tag_failover_priority=1", OK),
            ("/replica", "tag_failover_priority=0", NO),
            ("/replica", "tag_nosync=false", OK),
            ("/replica", "tag_dc=east", NO),
            ("/read-only", "", OK),
            ("/sync", "", NO),
            ("/read-only-sync", "", NO),
            ("/async", "", OK),
            ("/asynchronous", "lag=512B", NO),
            ("/asynchronous", "lag=1kB", OK),
            ("/health", "", OK),
            ("/liveness", "", OK),
            ("/readiness", "", OK),
            ("/readiness", "lag=999", NO),
            // mode=write measures the receive position (500 bytes behind).
            ("/readiness", "lag=999&mode=write", OK),
        ],
    );
}

#[test]
fn lagging_replica_codes() {
    let now = now();
    let h = replica("pg3", 32 * MB, now);
    check(
        "lagging replica",
        &h,
        now,
        &[
            ("/replica", "", OK),
            ("/replica", "lag=16MB", NO),
            ("/replica", "lag=16777216", NO),
            ("/replica", "lag=32MB", OK),
            ("/replica", "lag=64MB", OK),
            ("/read-only", "lag=16MB", NO),
            ("/async", "lag=16MB", NO),
            ("/async", "lag=1GB", OK),
            ("/health", "lag=16MB", OK),
            // Default readiness limit: maximum_lag_on_failover (1 MiB).
            ("/readiness", "", NO),
            ("/readiness", "lag=64MB", OK),
        ],
    );
    // Without a known primary position nothing counts as lagging.
    let mut h = h;
    h.cluster.optime = None;
    check(
        "no optime",
        &h,
        now,
        &[("/replica", "lag=16MB", OK), ("/readiness", "", OK)],
    );
}

#[test]
fn sync_standby_codes() {
    let now = now();
    check(
        "sync standby",
        &replica("pg2", 0, now),
        now,
        &[
            ("/primary", "", NO),
            ("/replica", "", OK),
            ("/sync", "", OK),
            ("/synchronous", "", OK),
            ("/read-only-sync", "", OK),
            ("/async", "", NO),
            ("/asynchronous", "", NO),
            ("/read-only", "", OK),
            ("/sync", "tag_nofailover=false", OK),
            ("/sync", "tag_nofailover=true", NO),
        ],
    );
    // The sync standby stopped: not sync-healthy any more.
    let mut h = replica("pg2", 0, now);
    h.status.as_mut().unwrap().state = PgRunState::Stopped;
    check("stopped sync standby", &h, now, &[("/sync", "", NO)]);
}

#[test]
fn noloadbalance_replica_is_not_a_replica_target() {
    let now = now();
    let mut h = replica("pg3", 0, now);
    h.status.as_mut().unwrap().tags.noloadbalance = true;
    check(
        "noloadbalance",
        &h,
        now,
        &[
            ("/replica", "", NO),
            ("/read-only", "", NO),
            ("/async", "", NO),
            ("/health", "", OK),
        ],
    );
}

#[test]
fn stopped_node_codes() {
    let now = now();
    let all = [
        "/",
        "/primary",
        "/read-write",
        "/leader",
        "/replica",
        "/read-only",
        "/sync",
        "/read-only-sync",
        "/async",
        "/health",
        "/readiness",
    ];
    let table: Vec<(&str, &str, u16)> = all.iter().map(|p| (*p, "", NO)).collect();
    check("stopped", &stopped(now), now, &table);
    // The HA loop still runs.
    check("stopped", &stopped(now), now, &[("/liveness", "", OK)]);
    // Before the first cycle nothing is known.
    let h = Health {
        leader_lease_until: Some(now + Duration::from_secs(1)),
        ..Health::default()
    };
    let mut table: Vec<(&str, &str, u16)> = all
        .iter()
        .filter(|p| !matches!(**p, "/leader" | "/readiness"))
        .map(|p| (*p, "", NO))
        .collect();
    table.push(("/liveness", "", NO));
    check("no status", &h, now, &table);
}

#[test]
fn liveness_follows_the_ha_loop() {
    let now = now();
    let mut h = primary_with_lock(now);
    // A primary must have completed a cycle within ttl...
    h.last_cycle = Some(now - Duration::from_millis(2999));
    check("primary fresh", &h, now, &[("/liveness", "", OK)]);
    h.last_cycle = Some(now - Duration::from_secs(3));
    check("primary stale", &h, now, &[("/liveness", "", NO)]);
    // ...a replica within 2 * ttl.
    let mut r = replica("pg3", 0, now);
    r.last_cycle = Some(now - Duration::from_secs(5));
    check("replica", &r, now, &[("/liveness", "", OK)]);
    r.last_cycle = Some(now - Duration::from_secs(6));
    check("replica stale", &r, now, &[("/liveness", "", NO)]);
    // In pause a stuck loop is tolerated, as in Patroni.
    r.cluster.paused = true;
    check("paused", &r, now, &[("/liveness", "", OK)]);
}

#[test]
fn sizes_parse_like_patroni() {
    let cases: &[(&str, Option<i64>)] = &[
        ("1024", Some(1024)),
        ("0", Some(0)),
        (" 16MB ", Some(16 * 1024 * 1024)),
        ("16 MB", Some(16 * 1024 * 1024)),
        ("64kB", Some(64 * 1024)),
        ("1GB", Some(1 << 30)),
        ("1TB", Some(1 << 40)),
        ("10B", Some(10)),
        ("1.5MB", Some(1_572_864)),
        (".5kB", Some(512)),
        ("1e3", Some(1000)),
        ("0x400", Some(1024)),
        ("0x400 MB", Some(1 << 30)),
        // C strtol: a leading 0 is octal.
        ("010", Some(8)),
        ("-1", Some(-1)),
        ("1mb", None),
        ("1KB", None),
        ("16MiB", None),
        ("abc", None),
        ("", None),
        ("-", None),
    ];
    for &(input, want) in cases {
        assert_eq!(parse_size(input), want, "{input:?}");
    }
    assert_eq!(
        parse_size("99999999999999999999999999999999999999999"),
        Some(i64::MAX)
    );
}

#[test]
fn routes() {
    assert_eq!(route("/"), Some(Route::Check(Endpoint::Primary)));
    assert_eq!(route("/patroni"), Some(Route::Patroni));
    assert_eq!(route("/cluster"), Some(Route::Cluster));
    assert_eq!(route("/metrics"), Some(Route::Metrics));
    for unknown in [
        "/primary/",
        "/PRIMARY",
        "/standby-leader",
        "/config",
        "/foo",
        "",
    ] {
        assert_eq!(route(unknown), None, "{unknown}");
    }
}

#[test]
fn patroni_document_of_a_primary() {
    let now = now();
    let doc = status_json(&primary_with_lock(now));
    assert_eq!(
        doc,
        json!({
            "state": "running",
            "role": "primary",
            "server_version": 160004,
            "xlog": {"location": OPTIME},
            "timeline": 3,
            "dcs_last_seen": 1_700_000_000u64,
            "database_system_identifier": "7277694203142172922",
            "patroni": {"version": env!("CARGO_PKG_VERSION"), "scope": "prod", "name": "pg1"},
        })
    );
}

#[test]
fn patroni_document_of_replicas_and_stopped_nodes() {
    let now = now();
    let doc = status_json(&replica("pg2", 1000, now));
    assert_eq!(doc["role"], "replica");
    assert_eq!(
        doc["xlog"],
        json!({"received_location": OPTIME - 500, "replayed_location": OPTIME - 1000})
    );
    assert_eq!(doc["replication_state"], "streaming");
    assert_eq!(doc["sync_standby"], true);
    assert!(doc.get("cluster_unlocked").is_none());

    let mut h = stopped(now);
    h.cluster.leader = None;
    h.cluster.paused = true;
    h.status.as_mut().unwrap().tags.nofailover = true;
    let doc = status_json(&h);
    assert_eq!(doc["state"], "stopped");
    for absent in [
        "xlog",
        "timeline",
        "server_version",
        "replication_state",
        "sync_standby",
    ] {
        assert!(doc.get(absent).is_none(), "{absent} in {doc}");
    }
    assert_eq!(doc["cluster_unlocked"], true);
    assert_eq!(doc["pause"], true);
    assert_eq!(doc["tags"], json!({"nofailover": true}));

    let doc = status_json(&Health::default());
    assert_eq!(doc["state"], "unknown");
    assert_eq!(doc["role"], "uninitialized");
    assert_eq!(doc["cluster_unlocked"], true);
}

#[test]
fn cluster_document() {
    let now = now();
    let mut h = replica("pg3", 3 * MB, now);
    let mut unknown = status("pg4", Role::Replica, PgRunState::Starting);
    unknown.receive_lsn = 0;
    unknown.replay_lsn = 0;
    unknown.pg_addr = "[fd00::4]:5433".into();
    h.cluster.members.insert("pg4".into(), unknown);
    let doc = cluster_json("prod", &h.cluster);
    assert_eq!(doc["scope"], "prod");
    let members = doc["members"].as_array().unwrap();
    let names: Vec<&str> = members
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["pg1", "pg2", "pg3", "pg4"]);
    assert_eq!(
        members[0],
        json!({
            "name": "pg1", "role": "leader", "state": "running",
            "api_url": "http://10.0.0.1:8008/patroni",
            "host": "10.0.0.1", "port": 5432, "timeline": 3,
        })
    );
    assert_eq!(members[1]["role"], "sync_standby");
    assert_eq!(members[1]["state"], "streaming");
    assert_eq!(members[1]["lag"], 0);
    let pg3 = &members[2];
    assert_eq!(pg3["role"], "replica");
    assert_eq!(pg3["replay_lsn"], format_lsn(OPTIME - 3 * MB));
    assert_eq!(pg3["replay_lag"], 3 * MB);
    assert_eq!(pg3["receive_lag"], 3 * MB / 2);
    assert_eq!(pg3["lsn"], format_lsn(OPTIME - 3 * MB / 2));
    assert_eq!(pg3["lag"], 3 * MB / 2);
    let pg4 = &members[3];
    assert_eq!(pg4["state"], "starting");
    assert_eq!(pg4["host"], "fd00::4");
    assert_eq!(pg4["port"], 5433);
    for k in [
        "receive_lsn",
        "receive_lag",
        "replay_lsn",
        "replay_lag",
        "lsn",
        "lag",
    ] {
        assert_eq!(pg4[k], "unknown", "{k}");
    }
    assert!(doc.get("pause").is_none());
}

#[test]
fn host_port_splitting() {
    assert_eq!(split_host_port("db1:5432"), ("db1".into(), Some(5432)));
    assert_eq!(split_host_port("[::1]:6432"), ("::1".into(), Some(6432)));
    assert_eq!(split_host_port("db1"), ("db1".into(), None));
    assert_eq!(split_host_port("::1"), ("::1".into(), None));
    assert_eq!(split_host_port("db1:x"), ("db1:x".into(), None));
    assert_eq!(split_host_port(""), (String::new(), None));
}

#[test]
fn metrics_of_a_replica() {
    let now = now();
    let mut h = replica("pg2", 1000, now);
    h.scope = "a\"b".into();
    let text = metrics_text(&h, now);
    let labels = r#"{scope="a\"b",name="pg2"}"#;
    for (name, value) in [
        ("patroni_postgres_running", 1),
        ("patroni_primary", 0),
        ("patroni_replica", 1),
        ("patroni_sync_standby", 1),
        ("patroni_xlog_location", 0),
        ("patroni_xlog_received_location", OPTIME - 500),
        ("patroni_xlog_replayed_location", OPTIME - 1000),
        ("patroni_postgres_timeline", 3),
        ("patroni_postgres_streaming", 1),
        ("patroni_postgres_server_version", 160004),
        ("patroni_cluster_unlocked", 0),
        ("patroni_is_paused", 0),
        ("patroni_dcs_last_seen", 1_700_000_000),
        ("patroni_postgres_state", 5),
        ("patroni_version", version_number(env!("CARGO_PKG_VERSION"))),
    ] {
        assert!(
            text.contains(&format!("\n{name}{labels} {value}\n")),
            "{name} {value} missing in\n{text}"
        );
        assert!(text.contains(&format!("# HELP {name} ")), "{name} help");
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} type");
    }
    assert!(text.contains("# TYPE patroni_xlog_location counter\n"));
    assert!(text.contains("# TYPE patroni_primary gauge\n"));
    assert!(text.ends_with('\n'));
}

#[test]
fn metrics_of_a_primary_and_an_unknown_node() {
    let now = now();
    let text = metrics_text(&primary_with_lock(now), now);
    assert!(text.contains(&format!(
        "patroni_xlog_location{{scope=\"prod\",name=\"pg1\"}} {OPTIME}\n"
    )));
    assert!(text.contains("patroni_primary{scope=\"prod\",name=\"pg1\"} 1\n"));
    let text = metrics_text(&Health::default(), now);
    assert!(text.contains("patroni_postgres_state{scope=\"\",name=\"\"} -1\n"));
    assert!(text.contains("patroni_cluster_unlocked{scope=\"\",name=\"\"} 1\n"));
    assert_eq!(version_number("0.1.0"), 100);
    assert_eq!(version_number("4.1.4"), 40104);
    assert_eq!(version_number("1.2.3-rc1"), 10203);
}

async fn call(app: Router, method: Method, uri: &str) -> (StatusCode, Option<String>, String) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    let status = resp.status();
    let ctype = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, ctype, String::from_utf8(body.to_vec()).unwrap())
}

/// A primary with a lease valid for a minute of real time.
fn live_primary() -> Health {
    let real_now = Instant::now();
    let mut h = primary_with_lock(real_now);
    h.leader_lease_until = Some(real_now + Duration::from_secs(60));
    h.last_cycle = Some(real_now);
    h
}

#[tokio::test]
async fn get_head_and_options() {
    let (_tx, rx) = watch::channel(live_primary());
    let app = router(rx, None);

    let (code, ctype, body) = call(app.clone(), Method::GET, "/primary").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(ctype.as_deref(), Some("application/json"));
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["role"], "primary");

    for method in [Method::HEAD, Method::OPTIONS] {
        let (code, _, body) = call(app.clone(), method.clone(), "/primary").await;
        assert_eq!(code, StatusCode::OK, "{method}");
        assert!(body.is_empty(), "{method}: {body}");
        let (code, _, body) = call(app.clone(), method.clone(), "/replica?lag=1MB").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{method}");
        assert!(body.is_empty(), "{method}: {body}");
    }

    // A failed check still carries the status document on GET.
    let (code, _, body) = call(app.clone(), Method::GET, "/replica").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["role"],
        "primary"
    );

    let (code, _, body) = call(app.clone(), Method::GET, "/liveness").await;
    assert_eq!((code, body.as_str()), (StatusCode::OK, ""));
}

#[tokio::test]
async fn unknown_paths_and_methods() {
    let (_tx, rx) = watch::channel(live_primary());
    let app = router(rx, None);
    for method in [Method::GET, Method::HEAD, Method::OPTIONS] {
        let (code, _, _) = call(app.clone(), method, "/nope").await;
        assert_eq!(code, StatusCode::NOT_FOUND);
    }
    // The operator routes exist; without a store client they cannot answer.
    for (method, path) in [
        (Method::POST, "/switchover"),
        (Method::DELETE, "/switchover"),
        (Method::POST, "/failover"),
        (Method::POST, "/restart"),
        (Method::DELETE, "/restart"),
        (Method::POST, "/reload"),
        (Method::POST, "/reinitialize"),
        (Method::GET, "/config"),
        (Method::GET, "/history"),
    ] {
        let (code, _, _) = call(app.clone(), method.clone(), path).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{method} {path}");
    }
    let (code, _, _) = call(app.clone(), Method::DELETE, "/config").await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
    let req = Request::builder()
        .method(Method::POST)
        .uri("/primary")
        .body(Body::empty())
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()[header::ALLOW], "GET, HEAD, OPTIONS");
}

#[tokio::test]
async fn read_endpoints_and_live_updates() {
    let (tx, rx) = watch::channel(live_primary());
    let app = router(rx, None);

    let (code, ctype, body) = call(app.clone(), Method::GET, "/metrics").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(ctype.as_deref(), Some(METRICS_CONTENT_TYPE));
    assert!(body.contains("patroni_primary{scope=\"prod\",name=\"pg1\"} 1\n"));

    let (code, _, body) = call(app.clone(), Method::GET, "/cluster").await;
    assert_eq!(code, StatusCode::OK);
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["members"][0]["role"], "leader");

    let (code, _, body) = call(app.clone(), Method::GET, "/patroni").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["patroni"]["name"],
        "pg1"
    );

    // The next cycle gives the lease up: the very next request sees it.
    tx.send_modify(|h| h.leader_lease_until = None);
    let (code, _, _) = call(app.clone(), Method::HEAD, "/primary").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    // /patroni answers 200 whatever the role.
    let (code, _, _) = call(app, Method::GET, "/patroni").await;
    assert_eq!(code, StatusCode::OK);
}

#[test]
fn custom_tags_are_kept_and_matched() {
    let now = now();
    let mut h = replica("pg3", 1000, now);
    let status = h.status.as_mut().unwrap();
    status
        .tags
        .other
        .insert("dc".into(), serde_json::json!("east"));
    status
        .tags
        .other
        .insert("rack".into(), serde_json::json!(7));
    check(
        "tagged replica",
        &h,
        now,
        &[
            ("/replica", "tag_dc=east", OK),
            ("/replica", "tag_dc=west", NO),
            ("/replica", "tag_rack=7", OK),
            ("/replica", "tag_dc=east&tag_nosync=false", OK),
        ],
    );
    let doc = status_json(&h);
    assert_eq!(doc["tags"]["dc"], "east");
}

#[test]
fn metrics_of_raft_the_lease_postgres_times_and_decisions() {
    let now = now();
    let mut h = primary_with_lock(now);
    h.raft = crate::ha::health::RaftStats {
        node_id: 2,
        term: 7,
        leader: Some(2),
        commit_index: 120,
        applied_index: 119,
    };
    h.pg_times.postmaster_start_ms = Some(1_700_000_000_500);
    h.lease_renewals.observe(0.003);
    h.lease_renewals.observe(0.003);
    h.lease_renewals.observe(9.0);
    h.decisions.insert("HoldLease".into(), 41);
    h.fence_deadline = Some(now + Duration::from_millis(1500));
    let text = metrics_text(&h, now);
    let l = r#"{scope="prod",name="pg1""#;
    for line in [
        format!("pgquorum_raft_term{l}}} 7"),
        format!("pgquorum_raft_leader{l}}} 2"),
        format!("pgquorum_raft_is_leader{l}}} 1"),
        format!("pgquorum_raft_commit_index{l}}} 120"),
        format!("pgquorum_raft_applied_index{l}}} 119"),
        format!("pgquorum_fence_deadline_seconds{l}}} 1.5"),
        format!("patroni_postmaster_start_time{l}}} 1700000000.5"),
        format!("patroni_failsafe_mode_is_active{l}}} 0"),
        format!("pgquorum_lease_renew_seconds_bucket{l},le=\"0.002\"}} 0"),
        format!("pgquorum_lease_renew_seconds_bucket{l},le=\"0.005\"}} 2"),
        format!("pgquorum_lease_renew_seconds_bucket{l},le=\"5\"}} 2"),
        format!("pgquorum_lease_renew_seconds_bucket{l},le=\"+Inf\"}} 3"),
        format!("pgquorum_lease_renew_seconds_count{l}}} 3"),
        format!("pgquorum_ha_decisions_total{l},reason=\"HoldLease\"}} 41"),
    ] {
        assert!(
            text.contains(&format!("\n{line}\n")),
            "{line} missing in\n{text}"
        );
    }
    // Not holding the lease: no deadline; PostgreSQL down: no start time.
    let text = metrics_text(&Health::default(), now);
    assert!(text.contains("pgquorum_fence_deadline_seconds{scope=\"\",name=\"\"} 0\n"));
    assert!(text.contains("patroni_postmaster_start_time{scope=\"\",name=\"\"} 0\n"));
}
