//! Fakes of the supervisor's ports for its unit tests. The store fake runs the real
//! state machine (`store::State::apply`) and lease expiry (`store::Lessor`) on
//! tokio's clock, so leases expire and guarded puts fail exactly as in a cluster;
//! the PostgreSQL fake keeps what the supervisor can see (data dir, running, role,
//! timeline, WAL position, the fence deadline) and kills itself at the deadline as
//! the guard would.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::ports::{Database, Fence, Store, StoredKey};
use crate::client::{ClientError, LeaseRpc};
use crate::postgres::{ConnTarget, DataDirState, PgError, PgProbe, StartMode};
use crate::stop::StopKind;
use crate::store::{Command, Lessor, Response, State};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default)]
struct StoreInner {
    state: State,
    lessor: Lessor,
    index: u64,
    /// Every call fails as if no member answered.
    unavailable: bool,
    watchers: Vec<(String, Arc<Notify>)>,
    members: Vec<String>,
}

impl StoreInner {
    /// Applies `cmd` as the next log entry, after expiring what ran out by now
    /// (the Raft leader's `LeaseExpire`).
    fn commit(&mut self, cmd: Command) -> Response {
        self.expire();
        self.apply(cmd, Instant::now())
    }

    fn expire(&mut self) {
        let now = Instant::now();
        for (id, renewed_at) in self.lessor.expired(now) {
            self.apply(Command::LeaseExpire { id, renewed_at }, now);
        }
    }

    fn apply(&mut self, cmd: Command, now: Instant) -> Response {
        self.index += 1;
        let (resp, fx) = self.state.apply(self.index, &cmd);
        for u in &fx.lease_updates {
            self.lessor.observe(u, now);
        }
        for e in &fx.events {
            for (key, wake) in &self.watchers {
                if *key == e.kv.key {
                    wake.notify_one();
                }
            }
        }
        resp
    }
}

/// The cluster's store: one linearizable state machine, shared by clones.
#[derive(Clone, Default)]
pub struct FakeStore(Arc<Mutex<StoreInner>>);

impl FakeStore {
    pub fn new(members: &[&str]) -> Self {
        let s = FakeStore::default();
        lock(&s.0).members = members.iter().map(|m| m.to_string()).collect();
        s
    }

    pub fn set_unavailable(&self, on: bool) {
        lock(&self.0).unavailable = on;
    }

    /// The key's value as text, after expiring what ran out.
    pub fn value(&self, key: &str) -> Option<String> {
        let mut s = lock(&self.0);
        s.expire();
        s.state
            .get(key)
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
    }

    pub fn lease_of(&self, key: &str) -> Option<u64> {
        lock(&self.0).state.get(key).map(|kv| kv.lease)
    }

    pub fn leases(&self) -> BTreeSet<u64> {
        lock(&self.0).state.leases.keys().copied().collect()
    }

    /// What another process does: writes a key directly.
    pub fn put(&self, key: &str, value: &str, lease: u64) {
        lock(&self.0).commit(Command::Put {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            lease,
            expect_mod_revision: None,
            guard: None,
        });
    }

    /// What another process does: deletes a key directly.
    pub fn delete(&self, key: &str) {
        lock(&self.0).commit(Command::Delete {
            key: key.into(),
            prefix: false,
            expect_mod_revision: None,
        });
    }

    /// Grants a lease outside the supervisor (an earlier process of this member).
    pub fn grant(&self, ttl_ms: u64) -> u64 {
        match lock(&self.0).commit(Command::LeaseGrant { ttl_ms, id: 0 }) {
            Response::Lease { id, .. } => id,
            other => panic!("grant: {other:?}"),
        }
    }

    pub fn revoke_now(&self, id: u64) {
        lock(&self.0).commit(Command::LeaseRevoke { id });
    }

    fn call(&self, cmd: Command) -> Result<Response, ClientError> {
        let mut s = lock(&self.0);
        if s.unavailable {
            return Err(unavailable());
        }
        Ok(s.commit(cmd))
    }
}

fn unavailable() -> ClientError {
    ClientError::Unavailable {
        tried: vec!["fake".into()],
        last: "unreachable".into(),
    }
}

fn not_found(id: u64) -> ClientError {
    ClientError::Rpc(tonic::Status::not_found(format!("lease {id} not found")))
}

impl LeaseRpc for FakeStore {
    async fn grant_lease(&self, ttl_ms: u64) -> Result<(u64, u64), ClientError> {
        match self.call(Command::LeaseGrant { ttl_ms, id: 0 })? {
            Response::Lease { id, ttl_ms, .. } => Ok((id, ttl_ms)),
            other => Err(ClientError::InvalidResponse(format!("{other:?}"))),
        }
    }

    async fn renew_lease(&self, id: u64) -> Result<u64, ClientError> {
        match self.call(Command::LeaseRenew { id })? {
            Response::Lease { ttl_ms, .. } => Ok(ttl_ms),
            _ => Err(not_found(id)),
        }
    }
}

impl Store for FakeStore {
    async fn read_prefix(&self, prefix: &str) -> Result<Vec<StoredKey>, ClientError> {
        let mut s = lock(&self.0);
        if s.unavailable {
            return Err(unavailable());
        }
        s.expire();
        Ok(s.state
            .range_prefix(prefix)
            .map(|kv| StoredKey {
                key: kv.key.clone(),
                value: kv.value.clone(),
                lease: kv.lease,
                mod_revision: kv.mod_revision,
            })
            .collect())
    }

    async fn put_key(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: u64,
        expect_mod_revision: Option<u64>,
    ) -> Result<bool, ClientError> {
        let r = self.call(Command::Put {
            key: key.into(),
            value,
            lease,
            expect_mod_revision,
            guard: None,
        })?;
        Ok(matches!(r, Response::Put { .. }))
    }

    async fn put_as_holder(
        &self,
        key: &str,
        value: Vec<u8>,
        guard_key: &str,
        guard_lease: u64,
    ) -> Result<bool, ClientError> {
        let r = self.call(Command::Put {
            key: key.into(),
            value,
            lease: 0,
            expect_mod_revision: None,
            guard: Some(crate::store::LeaseGuard {
                key: guard_key.into(),
                lease: guard_lease,
            }),
        })?;
        Ok(matches!(r, Response::Put { .. }))
    }

    async fn delete_key(&self, key: &str) -> Result<(), ClientError> {
        self.call(Command::Delete {
            key: key.into(),
            prefix: false,
            expect_mod_revision: None,
        })
        .map(|_| ())
    }

    async fn revoke(&self, id: u64) -> Result<(), ClientError> {
        self.call(Command::LeaseRevoke { id }).map(|_| ())
    }

    async fn member_names(&self) -> Result<Vec<String>, ClientError> {
        let s = lock(&self.0);
        if s.unavailable {
            return Err(unavailable());
        }
        Ok(s.members.clone())
    }

    fn watch_key(
        &self,
        key: &'static str,
        wake: Arc<Notify>,
    ) -> impl Future<Output = ()> + Send + 'static {
        lock(&self.0).watchers.push((key.to_string(), wake));
        std::future::pending()
    }
}

/// What the fake PostgreSQL is and has done.
#[derive(Debug, Default)]
pub struct PgState {
    pub data: DataDirState,
    pub running: bool,
    pub primary: bool,
    pub timeline: u64,
    pub lsn: u64,
    /// Started as primary or promoted and not stopped since.
    pub writable: bool,
    pub was_primary: bool,
    pub bootstrap_pending: bool,
    pub fence: Option<Instant>,
    /// Operations that fail, by name ("stop", "rewind", ...).
    pub failing: BTreeSet<&'static str>,
    /// Every operation the supervisor asked for, in order.
    pub log: Vec<String>,
    pub slots: Vec<String>,
    /// Broken promises: a primary without a fence deadline, a deadline cleared
    /// under a writable primary.
    pub violations: Vec<String>,
    pub settings: BTreeMap<String, String>,
    /// Callbacks queued, as `ACTION ROLE`.
    pub callbacks: Vec<String>,
    /// Called while a clone runs; what it returns is kept in `seen_during_copy`.
    pub copy_spy: Option<Spy>,
    pub seen_during_copy: Vec<Option<String>>,
    /// Run when the named operation starts (what another process does meanwhile).
    pub during: Option<(&'static str, Spy)>,
}

/// What a test looks at from inside an operation (e.g. the store while a clone runs).
#[derive(Clone)]
pub struct Spy(pub Arc<dyn Fn() -> Option<String> + Send + Sync>);

impl std::fmt::Debug for Spy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Spy")
    }
}

impl PgState {
    /// The guard: past the deadline every process is killed.
    fn fence_check(&mut self) {
        if self.running && self.fence.is_some_and(|d| Instant::now() >= d) {
            self.running = false;
            self.writable = false;
            self.log.push("fenced".into());
        }
    }

    fn op(&mut self, name: &'static str, what: String) -> Result<(), PgError> {
        self.fence_check();
        self.log.push(what);
        if matches!(name, "basebackup" | "reclone")
            && let Some(spy) = self.copy_spy.clone()
        {
            self.seen_during_copy.push((spy.0)());
        }
        if let Some((op, spy)) = self.during.clone()
            && op == name
        {
            (spy.0)();
        }
        if self.failing.contains(name) {
            return Err(PgError::Command {
                program: name.into(),
                status: "exit status: 1".into(),
                log: PathBuf::from("/fake/postgresql.log"),
                tail: "injected failure".into(),
            });
        }
        Ok(())
    }
}

#[derive(Clone, Default)]
pub struct FakePg(pub Arc<Mutex<PgState>>);

impl FakePg {
    pub fn state(&self) -> MutexGuard<'_, PgState> {
        lock(&self.0)
    }

    /// Whether it may accept writes now (the fence having done its work).
    pub fn writable(&self) -> bool {
        let mut s = self.state();
        s.fence_check();
        s.running && s.writable
    }

    /// An initialized data dir of cluster `system_id`, stopped.
    pub fn initialized(system_id: u64, timeline: u64, lsn: u64) -> Self {
        let pg = FakePg::default();
        {
            let mut s = pg.state();
            s.data = DataDirState::Initialized { system_id };
            s.timeline = timeline;
            s.lsn = lsn;
        }
        pg
    }
}

pub struct FakeFence(Arc<Mutex<PgState>>);

impl Fence for FakeFence {
    fn move_if_armed(&self, deadline: Instant) -> Result<(), PgError> {
        let mut s = lock(&self.0);
        if s.fence.is_some() {
            s.fence = Some(deadline);
        }
        Ok(())
    }
}

pub const SYSTEM_ID: u64 = 7_000_000_000_000_000_001;

impl Database for FakePg {
    type Fence = FakeFence;

    async fn probe(&mut self) -> PgProbe {
        let mut s = self.state();
        s.fence_check();
        PgProbe {
            data_dir: s.data.clone(),
            running: s.running,
            accepting: s.running,
            in_recovery: s.running.then_some(!s.primary),
            timeline: s.timeline,
            write_lsn: if s.running && s.primary { s.lsn } else { 0 },
            receive_lsn: if s.running && !s.primary { s.lsn } else { 0 },
            replay_lsn: if !s.primary { s.lsn } else { 0 },
            ..PgProbe::default()
        }
    }

    async fn current_wal_lsn(&mut self) -> Result<u64, PgError> {
        Ok(self.state().lsn)
    }

    fn was_primary(&self) -> bool {
        self.state().was_primary
    }

    fn bootstrap_pending(&self) -> bool {
        self.state().bootstrap_pending
    }

    fn may_be_primary(&self) -> bool {
        let mut s = self.state();
        s.fence_check();
        s.running && s.writable
    }

    fn set_fence_deadline(&mut self, deadline: Option<Instant>) -> Result<(), PgError> {
        let mut s = self.state();
        s.fence_check();
        match (s.fence.is_some(), deadline.is_some()) {
            (false, true) => s.log.push("fence armed".into()),
            (true, false) if s.writable => s.violations.push(format!(
                "fence cleared at {:?} while PostgreSQL may be primary",
                Instant::now()
            )),
            (true, false) => s.log.push("fence cleared".into()),
            _ => {}
        }
        s.fence = deadline;
        Ok(())
    }

    fn fence_handle(&self) -> FakeFence {
        FakeFence(self.0.clone())
    }

    async fn set_cluster_settings(
        &mut self,
        parameters: &BTreeMap<String, String>,
        _pg_hba: &[String],
        _synchronous_mode: bool,
    ) -> Result<bool, PgError> {
        let mut s = self.state();
        let changed = s.settings != *parameters;
        s.settings = parameters.clone();
        Ok(changed)
    }

    async fn start(&mut self, mode: StartMode) -> Result<(), PgError> {
        let mut s = self.state();
        let primary = mode == StartMode::Primary;
        s.op(
            "start",
            format!("start {}", if primary { "primary" } else { "replica" }),
        )?;
        if primary && s.fence.is_none() {
            s.violations
                .push("started as primary without a fence deadline".into());
        }
        s.running = true;
        s.primary = primary;
        s.writable = primary;
        s.was_primary |= primary;
        Ok(())
    }

    async fn stop(&mut self, kind: StopKind) -> Result<(), PgError> {
        let mut s = self.state();
        s.op("stop", format!("stop {kind:?}"))?;
        s.running = false;
        s.writable = false;
        Ok(())
    }

    fn callback(&mut self, action: &'static str, role: &'static str) {
        self.state().callbacks.push(format!("{action} {role}"));
    }

    async fn promote(&mut self) -> Result<(), PgError> {
        let mut s = self.state();
        if s.failing.contains("pre_promote") {
            s.log.push("pre_promote vetoed".into());
            return Err(PgError::PrePromoteVetoed {
                command: "fake".into(),
                how: "exited with 1".into(),
            });
        }
        s.op("promote", "promote".into())?;
        if s.fence.is_none() {
            s.violations
                .push("promoted without a fence deadline".into());
        }
        s.primary = true;
        s.writable = true;
        s.was_primary = true;
        s.timeline += 1;
        Ok(())
    }

    async fn stop_foreign(&mut self, pid: i32) -> Result<(), PgError> {
        self.state()
            .op("stop_foreign", format!("stop foreign {pid}"))
    }

    async fn initdb(&mut self) -> Result<(), PgError> {
        let mut s = self.state();
        s.op("initdb", "initdb".into())?;
        s.data = DataDirState::Initialized {
            system_id: SYSTEM_ID,
        };
        s.timeline = 1;
        s.lsn = 0x100_0000;
        s.bootstrap_pending = true;
        Ok(())
    }

    fn move_data_dir_aside(&mut self) -> Result<PathBuf, PgError> {
        let mut s = self.state();
        s.op("move_aside", "move data dir aside".into())?;
        s.data = DataDirState::Missing;
        Ok(PathBuf::from("/fake/data.old"))
    }

    fn clear_bootstrap_marker(&self) -> Result<(), PgError> {
        self.state().bootstrap_pending = false;
        Ok(())
    }

    async fn ensure_replication_role(&mut self) -> Result<(), PgError> {
        Ok(())
    }

    async fn rewind(&mut self, from: &ConnTarget) -> Result<(), PgError> {
        let mut s = self.state();
        s.op("rewind", format!("rewind from {from}"))?;
        s.was_primary = false;
        Ok(())
    }

    async fn reclone(
        &mut self,
        from: &ConnTarget,
        _slot: &str,
    ) -> Result<Option<PathBuf>, PgError> {
        let mut s = self.state();
        s.op("reclone", format!("reclone from {from}"))?;
        s.was_primary = false;
        Ok(Some(PathBuf::from("/fake/data.failed-1")))
    }

    fn dir_bytes(&self, _path: &std::path::Path) -> u64 {
        42
    }

    async fn reload(&mut self) -> Result<(), PgError> {
        self.state().op("reload", "reload".into())
    }

    fn remove_moved_aside(&mut self, path: &std::path::Path) -> Result<(), PgError> {
        self.state()
            .op("remove", format!("remove {}", path.display()))
    }

    async fn basebackup(&mut self, from: &ConnTarget, _slot: &str) -> Result<(), PgError> {
        let mut s = self.state();
        s.op("basebackup", format!("basebackup from {from}"))?;
        s.data = DataDirState::Initialized {
            system_id: SYSTEM_ID,
        };
        Ok(())
    }

    async fn keep_standby_slots(&mut self, slots: &[String]) -> Result<(), PgError> {
        self.state().op(
            "standby slots",
            format!("standby slots {}", slots.join(",")),
        )
    }

    async fn ensure_slots(&mut self, wanted: &[String], _keep: &[String]) -> Result<(), PgError> {
        let mut s = self.state();
        if s.slots != wanted {
            s.slots = wanted.to_vec();
            s.log.push(format!("slots {}", wanted.join(",")));
        }
        Ok(())
    }

    async fn set_synchronous_standby(&mut self, names: &[String]) -> Result<(), PgError> {
        self.state()
            .op("sync", format!("synchronous_standby_names {names:?}"))
    }
}
