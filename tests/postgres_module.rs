//! `pgquorum::postgres` against real PostgreSQL 15 servers: bootstrap, probe, the
//! fence guard (deadline, supervisor gone, guard killed), replication, promotion,
//! pg_rewind and reclone. Every test returns early (passing) when
//! /usr/lib/postgresql/15/bin/postgres is absent. Each server gets its own temp dir
//! and free port, so the tests run in parallel.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pgquorum::config::{Credentials, PostgresConfig};
use pgquorum::postgres::{
    ConnTarget, DataDirState, PgExit, PgProbe, Postgres, StartMode, StopKind,
};
use tempfile::TempDir;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const BIN: &str = env!("CARGO_BIN_EXE_pgquorum");
const WAIT: Duration = Duration::from_secs(30);

fn have_pg() -> bool {
    let ok = Path::new(PG_BIN).join("postgres").exists();
    if !ok {
        // .ci/run installs PostgreSQL: there, a missing server is a failure.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but there is no PostgreSQL 15 in {PG_BIN}"
        );
        eprintln!("skipped: no PostgreSQL 15 in {PG_BIN}");
    }
    ok
}

/// A temp dir the PostgreSQL OS user can traverse (tempfile makes it 0700).
fn temp_dir() -> TempDir {
    let d = tempfile::Builder::new()
        .prefix("pgq-pgtest-")
        .tempdir()
        .expect("temp dir");
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    d
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn config(data_dir: PathBuf, port: u16) -> PostgresConfig {
    let mut parameters = BTreeMap::new();
    // Small servers: several run at once on a small machine.
    parameters.insert("shared_buffers".to_string(), "16MB".to_string());
    parameters.insert("max_connections".to_string(), "20".to_string());
    PostgresConfig {
        ssl: None,
        bin_dir: PG_BIN.into(),
        data_dir,
        listen_host: "127.0.0.1".into(),
        port,
        connect_host: "127.0.0.1".into(),
        os_user: "postgres".into(),
        superuser: Credentials {
            username: "postgres".into(),
            // Quotes, backslash and colon exercise every quoting layer.
            password: Some(r#"su 'secret' \ with:colon"#.into()),
            password_file: None,
        },
        replication: Credentials {
            username: "replicator".into(),
            password: Some(r"repl:pass\word".into()),
            password_file: None,
        },
        parameters,
        pg_hba: vec![],
        callbacks: Default::default(),
    }
}

struct Member {
    pg: Postgres,
    port: u16,
    data_dir: PathBuf,
    _dir: TempDir,
}

impl Member {
    fn new(name: &str) -> Self {
        Self::with(name, |_| {})
    }

    fn with(name: &str, edit: impl FnOnce(&mut PostgresConfig)) -> Self {
        let dir = temp_dir();
        let port = free_port();
        let mut cfg = config(dir.path().join("pgdata"), port);
        edit(&mut cfg);
        let data_dir = cfg.data_dir.clone();
        let pg = Postgres::new(cfg, name.into(), "test".into())
            .expect("valid settings")
            .with_guard_exe(BIN);
        Self {
            pg,
            port,
            data_dir,
            _dir: dir,
        }
    }

    fn target(&self) -> ConnTarget {
        ConnTarget {
            host: "127.0.0.1".into(),
            port: self.port,
        }
    }

    /// A superuser session (its connection runs on its own task).
    async fn superuser(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .password(r#"su 'secret' \ with:colon"#)
            .dbname("postgres")
            .connect(tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        client
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.pg.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// The physical slots on `m`, sorted.
async fn slots(m: &Member) -> Vec<String> {
    let rows = m
        .superuser()
        .await
        .query(
            "SELECT slot_name::text FROM pg_replication_slots ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// A slot's restart_lsn on `m`, as bytes from 0/0.
async fn slot_lsn(m: &Member, slot: &str) -> i64 {
    m.superuser()
        .await
        .query_one(
            "SELECT (restart_lsn - '0/0'::pg_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0)
}

/// Polls `probe` every 100 ms until `ok` holds; panics after `timeout`.
async fn probe_until(
    m: &mut Member,
    what: &str,
    timeout: Duration,
    ok: impl Fn(&PgProbe) -> bool,
) -> PgProbe {
    let t0 = Instant::now();
    loop {
        let p = m.pg.probe().await;
        if ok(&p) {
            return p;
        }
        if t0.elapsed() >= timeout {
            panic!(
                "timed out after {timeout:?} waiting for {what}; last probe: {p:#?}\nlog:\n{}",
                m.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether any process is in process group `pgid`.
fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks existence.
    unsafe { libc::kill(-pgid, 0) == 0 }
}

async fn wait_group_gone(pgid: i32, timeout: Duration) {
    let t0 = Instant::now();
    while group_alive(pgid) {
        assert!(
            t0.elapsed() < timeout,
            "process group {pgid} still alive after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn proc_field(pid: i32, key: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_bootstrap_probe_and_fence_by_deadline() {
    if !have_pg() {
        return;
    }
    let mut m = Member::new("n1");
    let sysid =
        m.pg.bootstrap()
            .await
            .unwrap_or_else(|e| panic!("bootstrap: {e}"));
    assert!(sysid > 0);

    let p = m.pg.probe().await;
    assert_eq!(p.data_dir, DataDirState::Initialized { system_id: sysid });
    assert!(p.running && p.accepting, "{p:#?}");
    assert_eq!(p.in_recovery, Some(false));
    assert!(p.write_lsn > 0, "{p:#?}");
    assert_eq!(p.timeline, 1);
    assert!(p.replicas.is_empty());
    let pgid = p.postmaster_pid.expect("pid");

    // Runs as the unprivileged user that owns the 0700 data dir; its own process group.
    let md = std::fs::metadata(&m.data_dir).unwrap();
    assert_ne!(md.uid(), 0);
    assert_eq!(md.mode() & 0o777, 0o700);
    let uid = proc_field(pgid, "Uid:").unwrap();
    assert!(
        uid.starts_with(&format!("{}\t", md.uid())),
        "postmaster uid {uid:?}"
    );
    // No password in any file but the 0600 passfiles; none on any command line.
    let log = std::fs::read_to_string(m.pg.log_path()).unwrap();
    assert!(!log.contains("secret") && !log.contains("pass\\word"));

    // Fence: a deadline 1 s ahead. Running right after, gone (whole group) after.
    m.pg.set_fence_deadline(Some(Instant::now() + Duration::from_secs(1)))
        .unwrap();
    let p = m.pg.probe().await;
    assert!(p.running, "stopped before its deadline: {p:#?}");
    assert!(group_alive(pgid));
    let p = probe_until(
        &mut m,
        "the fence to kill PostgreSQL",
        Duration::from_secs(10),
        |p| !p.running,
    )
    .await;
    assert_eq!(p.last_exit, Some(PgExit::Fenced));
    wait_group_gone(pgid, Duration::from_secs(5)).await;

    // A start with the deadline already passed is refused by the guard.
    let e = m.pg.start(StartMode::Primary).await.unwrap_err();
    assert!(e.to_string().contains("deadline"), "{e}");
    assert!(!m.pg.probe().await.running);

    // Without a deadline it starts (crash recovery after the SIGKILL) and stops cleanly.
    m.pg.set_fence_deadline(None).unwrap();
    m.pg.start(StartMode::Primary)
        .await
        .unwrap_or_else(|e| panic!("restart: {e}"));
    let p = m.pg.probe().await;
    assert!(p.accepting && p.in_recovery == Some(false), "{p:#?}");
    let pgid = p.postmaster_pid.unwrap();
    m.pg.stop(StopKind::Fast).await.unwrap();
    assert!(!group_alive(pgid));
    let p = m.pg.probe().await;
    assert!(!p.running && !p.accepting);
    assert_eq!(p.last_exit, Some(PgExit::Stopped));
    assert!(!m.pg.sql_ok().await);
    // Bootstrap refuses a data dir that is in use.
    let e = m.pg.bootstrap().await.unwrap_err();
    assert!(e.to_string().contains("not empty"), "{e}");
}

/// PostgreSQL's children each call setsid(): a signal to the postmaster's process
/// group reaches the postmaster alone. The fence must kill every backend, a busy one
/// too: one in the middle of a long statement does not look for its postmaster, and
/// used to finish it and commit (and acknowledge) after the fence had fired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_fence_kills_every_backend_even_a_busy_one() {
    if !have_pg() {
        return;
    }
    let mut m = Member::new("n1");
    m.pg.bootstrap()
        .await
        .unwrap_or_else(|e| panic!("bootstrap: {e}"));
    let client = m.superuser().await;
    client
        .batch_execute("CREATE TABLE after_fence (x int)")
        .await
        .unwrap();
    let backend: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    // Four seconds of work that never waits, then a commit.
    let busy = tokio::spawn(async move {
        client
            .batch_execute(
                "DO $$ DECLARE t timestamptz := clock_timestamp(); BEGIN \
                   WHILE clock_timestamp() < t + interval '4 s' LOOP END LOOP; END $$; \
                 INSERT INTO after_fence VALUES (1)",
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    m.pg.set_fence_deadline(Some(Instant::now())).unwrap();
    let p = probe_until(&mut m, "the fence to kill PostgreSQL", WAIT, |p| !p.running).await;
    assert_eq!(p.last_exit, Some(PgExit::Fenced));
    let alive = proc_field(backend, "State:").is_some_and(|s| !s.starts_with('Z'));
    assert!(!alive, "the busy backend {backend} outlived the fence");
    let r = busy.await.unwrap();
    assert!(r.is_err(), "a write was acknowledged after the fence");
}

/// The instance's processes and the postmaster's pid's descendants.
fn instance_pids(pm: i32) -> Vec<i32> {
    let mut pids = vec![pm];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if proc_field(pid, "PPid:").is_some_and(|pp| pp == pm.to_string()) {
            pids.push(pid);
        }
    }
    pids
}

/// A primary frozen long enough for the monitor to report it silent, while
/// application clients keep reconnecting (each attempt waits in the listen queue),
/// then resumed: the next probe must find it answering. It used to give the second
/// look 300 ms, which the postmaster, working through the queued connections first,
/// did not meet, so a resumed primary counted as hung (and, unpaused, was killed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_resumed_instance_answers_the_next_probe_despite_queued_clients() {
    if !have_pg() {
        return;
    }
    let mut m = Member::new("n1");
    m.pg.bootstrap()
        .await
        .unwrap_or_else(|e| panic!("bootstrap: {e}"));
    let admin = m.superuser().await;
    admin
        .batch_execute("CREATE ROLE app LOGIN PASSWORD 'app'")
        .await
        .unwrap();
    drop(admin);
    let pm = m.pg.postmaster_pid().expect("running");
    let pids = instance_pids(pm);
    for p in &pids {
        // SAFETY: kill(2) of this test's own PostgreSQL processes.
        unsafe { libc::kill(*p, libc::SIGSTOP) };
    }
    let port = m.port;
    let clients: Vec<_> = (0..120)
        .map(|_| {
            tokio::spawn(async move {
                let mut c = tokio_postgres::Config::new();
                c.host("127.0.0.1")
                    .port(port)
                    .user("app")
                    .password("app")
                    .dbname("postgres")
                    .connect_timeout(Duration::from_secs(20));
                if let Ok((client, conn)) = c.connect(tokio_postgres::NoTls).await {
                    tokio::spawn(conn);
                    let _ = client.simple_query("SELECT pg_sleep(5)").await;
                }
            })
        })
        .collect();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        let p = m.pg.probe().await;
        assert!(!p.accepting, "a stopped instance answered: {p:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let p = m.pg.probe().await;
    assert!(
        p.liveness.unanswered.is_some(),
        "the monitor missed the freeze: {p:#?}"
    );
    for p in &pids {
        // SAFETY: as above.
        unsafe { libc::kill(*p, libc::SIGCONT) };
    }
    let p = m.pg.probe().await;
    assert!(
        p.accepting && p.liveness.unanswered.is_none(),
        "a resumed instance counted as silent: {p:#?}"
    );
    for c in clients {
        c.abort();
    }
    m.pg.stop(StopKind::Fast).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_dropping_the_supervisor_kills_postgres() {
    if !have_pg() {
        return;
    }
    let mut m = Member::new("n1");
    m.pg.bootstrap()
        .await
        .unwrap_or_else(|e| panic!("bootstrap: {e}"));
    let pgid = m.pg.postmaster_pid().expect("running");
    assert!(group_alive(pgid));
    // Dropping the Postgres value closes the guard's control pipe: the guard must
    // kill the whole group (as when pgquorum dies).
    let Member { pg, _dir, .. } = m;
    drop(pg);
    wait_group_gone(pgid, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_killing_the_guard_kills_postgres() {
    if !have_pg() {
        return;
    }
    let mut m = Member::new("n1");
    m.pg.bootstrap()
        .await
        .unwrap_or_else(|e| panic!("bootstrap: {e}"));
    let pgid = m.pg.postmaster_pid().expect("running");
    let guard: i32 = proc_field(pgid, "PPid:").unwrap().parse().unwrap();
    // SAFETY: the guard is our child's process; SIGKILL it like the OOM killer would.
    assert_eq!(unsafe { libc::kill(guard, libc::SIGKILL) }, 0);
    // The postmaster dies by itself (PDEATHSIG), before pgquorum even looks.
    let t0 = Instant::now();
    while proc_field(pgid, "State:").is_some_and(|s| !s.starts_with('Z')) {
        assert!(t0.elapsed() < WAIT, "the postmaster outlived its guard");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let p = probe_until(&mut m, "the guard's death to be noticed", WAIT, |p| {
        !p.running
    })
    .await;
    assert!(
        matches!(p.last_exit, Some(PgExit::GuardFailed(_))),
        "{:?}",
        p.last_exit
    );
    // The postmaster dies with the guard (PDEATHSIG), the backends by our SIGKILL.
    wait_group_gone(pgid, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_replication_promotion_rewind_and_reclone() {
    if !have_pg() {
        return;
    }
    let mut a = Member::new("alpha");
    let mut b = Member::new("beta");
    let slot_a = Postgres::slot_name("alpha");
    let slot_b = Postgres::slot_name("beta");
    assert_eq!(slot_b, "pgq_beta");

    let sysid =
        a.pg.bootstrap()
            .await
            .unwrap_or_else(|e| panic!("bootstrap: {e}"));
    a.pg.ensure_slots(std::slice::from_ref(&slot_b), &[])
        .await
        .unwrap();

    // Clone and follow A through its slot.
    b.pg.basebackup(&a.target(), &slot_b)
        .await
        .unwrap_or_else(|e| panic!("basebackup: {e}\n{}", b.log_tail()));
    assert_eq!(
        b.pg.data_dir_state(),
        DataDirState::Initialized { system_id: sysid }
    );
    b.pg.start(StartMode::Replica {
        primary: Some(a.target()),
        slot: Some(slot_b.clone()),
    })
    .await
    .unwrap_or_else(|e| panic!("start replica: {e}"));
    let want_from = a.target().to_string();
    probe_until(&mut b, "B to stream from A", WAIT, |p| {
        p.in_recovery == Some(true) && p.streaming_from.as_deref() == Some(&want_from)
    })
    .await;
    probe_until(&mut a, "A to list B as streaming", WAIT, |p| {
        p.replicas
            .iter()
            .any(|r| r.application_name == "beta" && r.state == "streaming")
    })
    .await;

    // Synchronous replication on and off.
    a.pg.set_synchronous_standby(&["beta".into()])
        .await
        .unwrap();
    probe_until(&mut a, "B to be the sync standby", WAIT, |p| {
        p.replicas
            .iter()
            .any(|r| r.application_name == "beta" && r.sync_state == "sync")
    })
    .await;
    // Two standbys (synchronous_node_count = 2): PostgreSQL takes the value, the
    // probe reads both names back, and the connected one is synchronous.
    let two = vec!["beta".to_string(), "gam\"ma".to_string()];
    a.pg.set_synchronous_standby(&two).await.unwrap();
    probe_until(&mut a, "both names configured, B synchronous", WAIT, |p| {
        p.synchronous_standby_names == two
            && p.replicas
                .iter()
                .any(|r| r.application_name == "beta" && r.sync_state == "sync")
    })
    .await;
    a.pg.set_synchronous_standby(&[]).await.unwrap();
    a.pg.checkpoint().await.unwrap();
    let written = a.pg.probe().await.write_lsn;
    probe_until(&mut b, "B to replay A's checkpoint", WAIT, |p| {
        p.replay_lsn >= written
    })
    .await;
    // A stale pgq_ slot is dropped, one to keep (member_slots_ttl) is not.
    a.pg.ensure_slots(&["pgq_gone".into(), "pgq_kept".into(), slot_b.clone()], &[])
        .await
        .unwrap();
    a.pg.ensure_slots(std::slice::from_ref(&slot_b), &["pgq_kept".into()])
        .await
        .unwrap();
    assert_eq!(slots(&a).await, ["pgq_beta", "pgq_kept"]);

    // A permanent slot on the replica follows its replay, and is there after the
    // promotion below.
    b.pg.keep_standby_slots(&["backup".into()]).await.unwrap();
    let before = slot_lsn(&b, "backup").await;
    a.pg.checkpoint().await.unwrap();
    let written = a.pg.probe().await.write_lsn;
    probe_until(&mut b, "B to replay A's second checkpoint", WAIT, |p| {
        p.replay_lsn >= written
    })
    .await;
    b.pg.keep_standby_slots(&["backup".into()]).await.unwrap();
    let after = slot_lsn(&b, "backup").await;
    assert!(
        after > before,
        "backup slot not advanced: {before} -> {after}"
    );
    assert!(
        b.pg.keep_standby_slots(&["Bad-Name".into()]).await.is_err(),
        "an invalid slot name is refused"
    );
    assert!(
        a.pg.promote().await.is_ok(),
        "promote on a primary is a no-op"
    );

    // Failover: A crashes (immediate stop), B is promoted onto timeline 2.
    a.pg.stop(StopKind::Immediate).await.unwrap();
    b.pg.promote()
        .await
        .unwrap_or_else(|e| panic!("promote: {e}"));
    let p = probe_until(&mut b, "B to be primary on timeline 2", WAIT, |p| {
        p.in_recovery == Some(false) && p.timeline == 2
    })
    .await;
    assert!(p.write_lsn > 0);
    b.pg.ensure_slots(&[slot_a.clone(), "backup".into()], &[])
        .await
        .unwrap();
    assert_eq!(slots(&b).await, ["backup", "pgq_alpha"]);

    // A was not shut down cleanly: rewind runs single-user crash recovery, then pg_rewind.
    a.pg.rewind(&b.target())
        .await
        .unwrap_or_else(|e| panic!("rewind: {e}"));
    let log = std::fs::read_to_string(a.pg.log_path()).unwrap();
    assert!(log.contains("running postgres --single"), "{log}");
    assert!(log.contains("running pg_rewind"), "{log}");
    a.pg.start(StartMode::Replica {
        primary: Some(b.target()),
        slot: Some(slot_a.clone()),
    })
    .await
    .unwrap_or_else(|e| panic!("start rewound replica: {e}"));
    let want_from = b.target().to_string();
    probe_until(&mut a, "A to follow B on timeline 2", WAIT, |p| {
        p.streaming_from.as_deref() == Some(&want_from) && p.timeline == 2
    })
    .await;

    // Reclone moves the old data dir aside (never deletes it) and clones afresh.
    a.pg.stop(StopKind::Fast).await.unwrap();
    let e = a.pg.basebackup(&b.target(), &slot_a).await.unwrap_err();
    assert!(e.to_string().contains("not empty"), "{e}");
    a.pg.reclone(&b.target(), &slot_a)
        .await
        .unwrap_or_else(|e| panic!("reclone: {e}\n{}", a.log_tail()));
    let parent = a.data_dir.parent().unwrap();
    let aside: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("pgdata.failed-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "the old data dir is kept aside");
    assert!(aside[0].path().join("PG_VERSION").exists());
    a.pg.start(StartMode::Replica {
        primary: Some(b.target()),
        slot: Some(slot_a.clone()),
    })
    .await
    .unwrap_or_else(|e| panic!("start recloned replica: {e}"));
    probe_until(&mut a, "the recloned A to follow B", WAIT, |p| {
        p.streaming_from.as_deref() == Some(&want_from)
    })
    .await;
    a.pg.stop(StopKind::Fast).await.unwrap();
    b.pg.stop(StopKind::Fast).await.unwrap();
}

/// A standby whose promotion never completed (the fence killed it mid-promotion)
/// and that is then started as primary must leave recovery onto a new timeline: on
/// its old timeline its WAL would fork from the old primary's with nothing to show
/// it, so the old primary could never be rewound to follow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_standby_started_as_primary_is_promoted_onto_a_new_timeline() {
    if !have_pg() {
        return;
    }
    let mut a = Member::new("alpha");
    let mut b = Member::new("beta");
    a.pg.bootstrap()
        .await
        .unwrap_or_else(|e| panic!("bootstrap: {e}"));
    b.pg.basebackup(&a.target(), &Postgres::slot_name("beta"))
        .await
        .unwrap_or_else(|e| panic!("basebackup: {e}\n{}", b.log_tail()));
    b.pg.start(StartMode::Replica {
        primary: Some(a.target()),
        slot: None,
    })
    .await
    .unwrap_or_else(|e| panic!("start replica: {e}"));
    probe_until(&mut b, "B to be a standby", WAIT, |p| {
        p.accepting && p.in_recovery == Some(true)
    })
    .await;
    a.pg.stop(StopKind::Immediate).await.unwrap();
    b.pg.stop(StopKind::Immediate).await.unwrap();
    b.pg.start(StartMode::Primary)
        .await
        .unwrap_or_else(|e| panic!("start as primary: {e}\n{}", b.log_tail()));
    let p = probe_until(&mut b, "B to be primary on timeline 2", WAIT, |p| {
        p.accepting && p.in_recovery == Some(false)
    })
    .await;
    assert_eq!(p.timeline, 2, "{}", b.log_tail());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_failed_start_quotes_the_server_log() {
    if !have_pg() {
        return;
    }
    let mut m = Member::with("n1", |c| {
        c.parameters.insert("shared_buffers".into(), "lots".into());
    });
    let e = m.pg.bootstrap().await.unwrap_err().to_string();
    eprintln!("{e}");
    assert!(e.contains("did not start"), "{e}");
    assert!(
        e.contains("shared_buffers"),
        "the server's complaint is quoted: {e}"
    );
    let p = m.pg.probe().await;
    assert!(!p.running);
    assert!(matches!(p.last_exit, Some(PgExit::Exited(_))), "{p:#?}");
}

#[tokio::test]
async fn pg_unreachable_data_dir_names_the_directory_to_open() {
    // SAFETY: geteuid has no preconditions.
    if !have_pg() || unsafe { libc::geteuid() } != 0 {
        return;
    }
    let dir = temp_dir();
    let closed = dir.path().join("closed");
    std::fs::create_dir(&closed).unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut m = Member::with("n1", |c| c.data_dir = closed.join("inner/pgdata"));
    let e = m.pg.bootstrap().await.unwrap_err().to_string();
    assert!(
        e.contains(&format!("chmod o+x {}", closed.display())),
        "{e}"
    );
    assert!(!closed.join("inner/pgdata").exists());
}
