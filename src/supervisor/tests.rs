//! The supervisor against fakes of its ports (`fakes.rs`), on paused tokio time:
//! what it does with the store, the lease, the fence and PostgreSQL for what
//! `decide` chose.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::fakes::{FakePg, FakeStore};
use super::*;

const CONFIG: &str = r#"
cluster_name = "t"
insecure = true
node_id = 1
name = "n1"
listen_addr = "127.0.0.1:7001"
data_dir = "raft"
[[initial_cluster]]
id = 1
name = "n1"
addr = "127.0.0.1:7001"
[[initial_cluster]]
id = 2
name = "n2"
addr = "127.0.0.1:7002"
[[initial_cluster]]
id = 3
name = "n3"
addr = "127.0.0.1:7003"
[ha]
ttl_ms = 2500
loop_wait_ms = 500
[postgresql]
data_dir = "pg"
listen_host = "127.0.0.1"
port = 5433
superuser = { username = "postgres", password = "x" }
replication = { username = "replicator", password = "y" }
"#;

const LOOP: Duration = Duration::from_millis(500);
const TTL: Duration = Duration::from_millis(2500);

struct Rig {
    sup: Supervisor<FakeStore, FakePg>,
    store: FakeStore,
    pg: FakePg,
    _tags: watch::Sender<Tags>,
}

fn rig(store: &FakeStore, pg: &FakePg) -> Rig {
    let cfg = NodeConfig::parse(CONFIG, std::path::Path::new("/fake/n1.toml")).expect("config");
    let (health, _) = watch::channel(Health::default());
    let (tags_tx, tags) = watch::channel(cfg.tags.clone());
    let sup = Supervisor::with_parts(&cfg, store.clone(), pg.clone(), health, tags).expect("rig");
    Rig {
        sup,
        store: store.clone(),
        pg: pg.clone(),
        _tags: tags_tx,
    }
}

impl Rig {
    /// Runs cycles, one `loop_wait` apart, until `done` (at most `max` cycles),
    /// checking after each that the fake PostgreSQL saw no broken promise and that
    /// it is writable only while the store names this member leader.
    async fn cycles_until(&mut self, max: usize, done: impl Fn(&Rig) -> bool) {
        for _ in 0..max {
            if done(self) {
                return;
            }
            if !self.sup.cycle().await {
                tokio::time::sleep(LOOP).await;
            }
            self.check();
        }
        assert!(
            done(self),
            "not done after {max} cycles; PostgreSQL did {:?}; last reason: {}",
            self.log(),
            self.sup.last_reason
        );
    }

    async fn cycles(&mut self, n: usize) {
        for _ in 0..n {
            if !self.sup.cycle().await {
                tokio::time::sleep(LOOP).await;
            }
            self.check();
        }
    }

    fn check(&self) {
        let v = self.pg.state().violations.clone();
        assert!(v.is_empty(), "{v:?}; PostgreSQL did {:?}", self.log());
        if self.pg.writable() {
            assert_eq!(
                self.store.value(LEADER_KEY).as_deref(),
                Some("n1"),
                "writable PostgreSQL while the store names another leader; it did {:?}",
                self.log()
            );
        }
    }

    fn log(&self) -> Vec<String> {
        self.pg.state().log.clone()
    }

    fn fence(&self) -> Option<Instant> {
        self.pg.state().fence
    }

    fn leader_lease(&self) -> Option<u64> {
        self.sup.leader_lease.as_ref().map(|l| l.id())
    }
}

/// n2 as the running primary on `timeline`, under a lease of `ttl` granted now.
fn n2_leads(store: &FakeStore, timeline: u64, lsn: u64, ttl: Duration) -> u64 {
    store.put(INITIALIZE_KEY, &fakes::SYSTEM_ID.to_string(), 0);
    let lease = store.grant(ttl.as_millis() as u64);
    store.put(LEADER_KEY, "n2", lease);
    store.put(TIMELINE_KEY, &timeline.to_string(), 0);
    store.put(OPTIME_KEY, &lsn.to_string(), 0);
    let status = MemberStatus {
        name: "n2".into(),
        role: Role::Primary,
        state: PgRunState::Running,
        pg_addr: "127.0.0.1:5434".into(),
        api_url: String::new(),
        timeline,
        receive_lsn: lsn,
        replay_lsn: lsn,
        following: None,
        tags: Tags::default(),
        sync_standby: false,
        node_id: 2,
        paused: false,
        pending_restart: false,
        pre_promote_vetoed: false,
        version: String::new(),
        server_version: None,
    };
    let json = serde_json::to_string(&status).expect("status");
    store.put(&model::member_key("n2"), &json, lease);
    lease
}

#[tokio::test(start_paused = true)]
async fn bootstrap_arms_the_fence_before_the_primary_starts_and_records_the_cluster() {
    let store = FakeStore::new(&["n1", "n2", "n3"]);
    let pg = FakePg::default();
    let mut r = rig(&store, &pg);
    r.cycles_until(20, |r| r.store.value(INITIALIZE_KEY).is_some())
        .await;
    assert_eq!(r.log(), ["fence armed", "initdb", "start primary"]);
    assert_eq!(store.value(LEADER_KEY).as_deref(), Some("n1"));
    assert_eq!(
        store.value(INITIALIZE_KEY),
        Some(fakes::SYSTEM_ID.to_string())
    );
    assert!(
        !pg.state().bootstrap_pending,
        "bootstrap marker cleared once recorded"
    );
    let fence = r.fence().expect("a primary's fence is armed");
    let now = Instant::now();
    assert!(
        fence > now && fence <= now + TTL,
        "deadline {fence:?} within one ttl of {now:?}"
    );
    let config: HaSettings =
        serde_json::from_str(&store.value(model::CONFIG_KEY).expect("config recorded")).unwrap();
    assert_eq!(config.ttl_ms, 2500);
}

#[tokio::test(start_paused = true)]
async fn renewals_move_the_fence_and_without_the_store_it_fires_before_the_lease_expires() {
    let store = FakeStore::new(&["n1", "n2", "n3"]);
    let pg = FakePg::default();
    let mut r = rig(&store, &pg);
    r.cycles_until(20, |r| r.pg.writable()).await;
    let first = r.fence().expect("armed");
    r.cycles(4).await;
    let renewed = r.fence().expect("armed");
    assert!(
        renewed > first,
        "renewals moved the deadline: {first:?} -> {renewed:?}"
    );

    store.set_unavailable(true);
    let cut = Instant::now();
    let deadline = r.fence().expect("armed");
    assert!(deadline <= cut + TTL);
    // Cycles keep running without the store; nothing moves the deadline.
    while Instant::now() + LOOP < deadline {
        r.sup.cycle().await;
        tokio::time::sleep(LOOP).await;
        r.check();
        assert_eq!(
            r.fence(),
            Some(deadline),
            "a failed renewal moved the deadline"
        );
    }
    tokio::time::sleep_until(deadline).await;
    assert!(!pg.writable(), "the fence fired at its deadline");
    assert!(r.log().contains(&"fenced".to_string()));
    // The lease, counted from when the store applied the last renewal, outlives it.
    assert_eq!(store.value(LEADER_KEY).as_deref(), Some("n1"));
    tokio::time::sleep(TTL).await;
    assert_eq!(store.value(LEADER_KEY), None, "then the lease expires");
}

#[tokio::test(start_paused = true)]
async fn a_lease_revoked_under_the_primary_never_moves_the_fence_again_and_postgres_stops() {
    let store = FakeStore::new(&["n1", "n2", "n3"]);
    let pg = FakePg::default();
    let mut r = rig(&store, &pg);
    r.cycles_until(20, |r| r.pg.writable()).await;
    let lease = store.lease_of(LEADER_KEY).expect("leader key on a lease");
    let before = r.fence().expect("armed");
    store.revoke_now(lease);
    assert_eq!(store.value(LEADER_KEY), None);
    r.cycles_until(10, |r| !r.pg.writable()).await;
    assert!(
        r.fence().is_none_or(|f| f <= before),
        "a renewal of a revoked lease moved the fence"
    );
    assert!(
        r.log()
            .iter()
            .any(|l| l.starts_with("stop") || l == "fenced"),
        "{:?}",
        r.log()
    );
    assert!(!store.leases().contains(&lease));
}

#[tokio::test(start_paused = true)]
async fn the_lease_is_released_only_once_postgres_is_confirmed_stopped() {
    let store = FakeStore::new(&["n1", "n2", "n3"]);
    let pg = FakePg::default();
    let mut r = rig(&store, &pg);
    r.cycles_until(20, |r| r.pg.writable()).await;
    let lease = r.leader_lease().expect("held");
    let probe = r.sup.pg.probe().await;
    let err = r
        .sup
        .execute(Action::ReleaseLease, None, &probe)
        .await
        .expect_err("refused under a running primary");
    assert!(matches!(err, SupervisorError::MayBePrimary), "{err}");
    assert!(store.leases().contains(&lease), "the lease stays");
    assert!(r.fence().is_some(), "the fence stays armed");

    r.sup
        .execute(Action::Stop(StopKind::Fast), None, &probe)
        .await
        .expect("stop");
    r.sup
        .execute(Action::ReleaseLease, None, &probe)
        .await
        .expect("released");
    assert!(!store.leases().contains(&lease));
    assert_eq!(store.value(LEADER_KEY), None);
    assert_eq!(r.fence(), None);
    assert_eq!(r.leader_lease(), None);
}

#[tokio::test(start_paused = true)]
async fn shutdown_records_the_position_stops_postgres_and_hands_the_lease_back() {
    let store = FakeStore::new(&["n1", "n2", "n3"]);
    let pg = FakePg::default();
    let mut r = rig(&store, &pg);
    r.cycles_until(20, |r| r.pg.writable()).await;
    pg.state().lsn = 0x200_0000;
    r.sup.shutdown().await;
    assert!(
        r.log()
            .ends_with(&["stop Fast".into(), "fence cleared".into()])
    );
    assert_eq!(store.value(OPTIME_KEY), Some(0x200_0000u64.to_string()));
    assert_eq!(
        store.value(LEADER_KEY),
        None,
        "released without waiting for expiry"
    );
    assert!(store.leases().is_empty(), "the status lease goes too");
    assert_eq!(r.fence(), None);
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_that_cannot_stop_postgres_leaves_the_lease_and_the_fence() {
    let store = FakeStore::new(&["n1", "n2", "n3"]);
    let pg = FakePg::default();
    let mut r = rig(&store, &pg);
    r.cycles_until(20, |r| r.pg.writable()).await;
    pg.state().failing.insert("stop");
    let fence = r.fence();
    r.sup.shutdown().await;
    assert!(
        r.log()
            .ends_with(&["stop Fast".into(), "stop Immediate".into()])
    );
    assert_eq!(
        store.value(LEADER_KEY).as_deref(),
        Some("n1"),
        "left to expire"
    );
    assert_eq!(r.fence(), fence, "the fence stays armed");
    // The process exits: nothing renews the lease any more.
    drop(r.sup);
    tokio::time::sleep(TTL).await;
    assert!(!pg.writable(), "and fires");
}

#[tokio::test(start_paused = true)]
async fn a_restarted_primary_takes_back_its_lease_and_starts_under_it() {
    let store = FakeStore::new(&["n1", "n2", "n3"]);
    store.put(INITIALIZE_KEY, &fakes::SYSTEM_ID.to_string(), 0);
    let old = store.grant(2500);
    store.put(LEADER_KEY, "n1", old);
    store.put(TIMELINE_KEY, "3", 0);
    let pg = FakePg::initialized(fakes::SYSTEM_ID, 3, 0x300_0000);
    pg.state().was_primary = true;
    let mut r = rig(&store, &pg);
    r.cycles_until(10, |r| r.pg.writable()).await;
    assert_eq!(r.leader_lease(), Some(old), "the old lease, not a new one");
    assert_eq!(store.lease_of(LEADER_KEY), Some(old));
    assert_eq!(r.log(), ["fence armed", "start primary"]);
}

#[tokio::test(start_paused = true)]
async fn a_former_primary_whose_rewind_fails_is_recloned_from_the_leader() {
    let store = FakeStore::new(&["n1", "n2", "n3"]);
    n2_leads(&store, 4, 0x500_0000, Duration::from_secs(600));
    let pg = FakePg::initialized(fakes::SYSTEM_ID, 3, 0x480_0000);
    pg.state().was_primary = true;
    pg.state().failing.insert("rewind");
    let spied = store.clone();
    pg.state().copy_spy = Some(fakes::Spy(std::sync::Arc::new(move || {
        spied.value("/pg/members/n1")
    })));
    let mut r = rig(&store, &pg);
    r.cycles_until(20, |r| r.log().iter().any(|l| l.starts_with("reclone")))
        .await;
    // While it re-clones, its record says so (Patroni's "creating replica").
    let seen = pg.state().seen_during_copy.clone();
    assert!(
        matches!(seen.as_slice(), [Some(v)] if v.contains(r#""state":"creating""#)),
        "{seen:?}"
    );
    let log = r.log();
    let rewind = log.iter().position(|l| l == "rewind from 127.0.0.1:5434");
    let reclone = log.iter().position(|l| l == "reclone from 127.0.0.1:5434");
    assert!(
        matches!((rewind, reclone), (Some(a), Some(b)) if a < b),
        "rewind tried first, then re-cloned: {log:?}"
    );
    pg.state().failing.clear();
    r.cycles_until(10, |r| r.pg.state().running).await;
    assert_eq!(r.log().last().map(String::as_str), Some("start replica"));
    let now = store.value("/pg/members/n1").unwrap_or_default();
    assert!(
        !now.contains(r#""state":"creating""#),
        "not once done: {now}"
    );
    assert_eq!(r.sup.following.as_deref(), Some("n2"));
    assert!(!r.pg.writable());
}

#[tokio::test(start_paused = true)]
async fn a_replica_follows_the_leader_and_keeps_the_fence_disarmed() {
    let store = FakeStore::new(&["n1", "n2", "n3"]);
    n2_leads(&store, 1, 0x100_0000, Duration::from_secs(600));
    let pg = FakePg::default();
    let mut r = rig(&store, &pg);
    r.cycles_until(10, |r| r.pg.state().running).await;
    assert_eq!(r.log(), ["basebackup from 127.0.0.1:5434", "start replica"]);
    assert_eq!(r.fence(), None);
    assert_eq!(r.leader_lease(), None);
    r.cycles(3).await;
    let me: MemberStatus =
        serde_json::from_str(&store.value(&model::member_key("n1")).expect("published")).unwrap();
    assert_eq!(me.role, Role::Replica);
    assert_eq!(me.following.as_deref(), Some("n2"));
}

/// A restart request is marked done only if it is still the one carried out: one
/// cancelled while PostgreSQL restarted stays gone, instead of coming back as a
/// stale `done` (tests/day2.rs saw that race once in CI).
#[tokio::test(start_paused = true)]
async fn a_restart_request_cancelled_while_it_runs_is_not_written_back() {
    let store = FakeStore::new(&["n1", "n2", "n3"]);
    n2_leads(&store, 1, 0x100_0000, Duration::from_secs(600));
    let pg = FakePg::default();
    let mut r = rig(&store, &pg);
    r.cycles_until(10, |r| r.pg.state().running).await;
    let key = model::RequestKind::Restart.key("n1");
    // Carried out undisturbed: marked done.
    store.put(&key, r#"{"done":false}"#, 0);
    r.cycles_until(10, |_| {
        store.value(&key).is_some_and(|v| v.contains("true"))
    })
    .await;
    // Cancelled while the restart runs: stays cancelled.
    store.put(&key, r#"{"done":false}"#, 0);
    let (s, k) = (store.clone(), key.clone());
    r.pg.state().during = Some((
        "stop",
        super::fakes::Spy(std::sync::Arc::new(move || {
            s.delete(&k);
            None
        })),
    ));
    let stops = r.log().iter().filter(|l| l.starts_with("stop")).count();
    r.cycles_until(10, |r| {
        r.log().iter().filter(|l| l.starts_with("stop")).count() > stops
    })
    .await;
    r.cycles(3).await;
    assert_eq!(store.value(&key), None, "PostgreSQL did {:?}", r.log());
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_takes_over_promotes_under_the_fence_and_records_the_failover() {
    let store = FakeStore::new(&["n1", "n2", "n3"]);
    let lease = n2_leads(&store, 1, 0x100_0000, Duration::from_secs(600));
    let pg = FakePg::initialized(fakes::SYSTEM_ID, 1, 0x100_0000);
    let mut r = rig(&store, &pg);
    r.cycles_until(10, |r| r.pg.state().running).await;
    // n2 dies: its lease and status go.
    store.revoke_now(lease);
    r.cycles_until(20, |r| r.store.value(HISTORY_KEY).is_some())
        .await;
    let log = r.log();
    let tail: Vec<&str> = log.iter().rev().take(2).rev().map(String::as_str).collect();
    assert_eq!(tail, ["fence armed", "promote"], "{log:?}");
    let history: Vec<HistoryEntry> =
        serde_json::from_str(&store.value(HISTORY_KEY).unwrap()).unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(
        (
            history[0].timeline,
            history[0].lsn,
            history[0].reason,
            history[0].new_leader.as_str()
        ),
        (1, 0x100_0000, model::Promotion::Failover, "n1")
    );
    // The new timeline is published as a healthy primary's next cycle.
    r.cycles_until(3, |r| r.store.value(TIMELINE_KEY).as_deref() == Some("2"))
        .await;
}

#[tokio::test(start_paused = true)]
async fn a_vetoed_promotion_gives_the_lease_back_as_a_replica_and_callbacks_follow_the_role() {
    let store = FakeStore::new(&["n1", "n2", "n3"]);
    let lease = n2_leads(&store, 1, 0x100_0000, Duration::from_secs(600));
    let pg = FakePg::initialized(fakes::SYSTEM_ID, 1, 0x100_0000);
    pg.state().failing.insert("pre_promote");
    let mut r = rig(&store, &pg);
    r.cycles_until(10, |r| r.pg.state().running).await;
    store.revoke_now(lease);
    r.cycles_until(20, |r| r.log().iter().any(|l| l == "pre_promote vetoed"))
        .await;
    r.cycles_until(3, |r| r.store.value(LEADER_KEY).is_none())
        .await;
    assert!(!r.pg.writable() && r.pg.state().running, "{:?}", r.log());
    assert!(r.store.value(HISTORY_KEY).is_none());
    let status: MemberStatus =
        serde_json::from_str(&store.value(&model::member_key("n1")).unwrap()).unwrap();
    assert!(status.pre_promote_vetoed, "{status:?}");
    // Once the script agrees (and the veto's ttl is over), the member takes over.
    pg.state().failing.remove("pre_promote");
    r.cycles_until(20, |r| r.store.value(HISTORY_KEY).is_some())
        .await;
    assert_eq!(
        r.pg.state().callbacks,
        ["on_start replica", "on_role_change primary"],
        "{:?}",
        r.log()
    );
}

/// member_slots_ttl: a member seen publishing keeps its slot for the ttl after it
/// went silent; a Raft member never seen (a witness, or one down since before this
/// process started) only has an existing slot kept, for the ttl after the start.
#[tokio::test(start_paused = true)]
async fn an_absent_member_keeps_its_slot_for_member_slots_ttl() {
    let store = FakeStore::new(&["n1", "n2", "n3"]);
    let pg = FakePg::default();
    n2_leads(&store, 1, 100, Duration::from_secs(60));
    let mut r = rig(&store, &pg);
    let (view, _, _) = r.sup.read_store().await.expect("store");
    let ttl = Duration::from_millis(r.sup.ha.member_slots_ttl_ms);
    let raft: Vec<String> = ["n1", "n2", "n3"].map(String::from).to_vec();
    let t0 = Instant::now();
    let n = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        r.sup.slot_keep(&view, raft.clone(), t0),
        (n(&["n2"]), n(&["n3"]))
    );
    let gone = ClusterView::default();
    let half = t0 + ttl / 2;
    assert_eq!(
        r.sup.slot_keep(&gone, raft.clone(), half),
        (n(&["n2"]), n(&["n3"]))
    );
    assert_eq!(
        r.sup.slot_keep(&gone, raft.clone(), t0 + ttl),
        (n(&[]), n(&[]))
    );
}
