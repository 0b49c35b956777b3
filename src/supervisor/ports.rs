//! What the supervisor needs from the world, as traits it defines: the store
//! (`Store`, implemented by `client::Client`), this host's PostgreSQL (`Database`,
//! implemented by `postgres::Postgres`) and the fence deadline's mover (`Fence`).
//! Unit tests run the supervisor against fakes of them on paused tokio time; the
//! clock is `tokio::time::Instant` throughout.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::client::{Client, ClientError, LeaseRpc};
use crate::postgres::{ConnTarget, FenceHandle, PgError, PgProbe, Postgres, StartMode};
use crate::stop::StopKind;

/// One key as the store holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredKey {
    pub key: String,
    pub value: Vec<u8>,
    /// 0: not attached to a lease.
    pub lease: u64,
    /// The revision of its last change: a compare-and-set writes only over this.
    pub mod_revision: u64,
}

/// The cluster's store, as the supervisor uses it. Leases come through
/// [`LeaseRpc`], so the supervisor's `LeaseKeeper`s run against the same store.
pub trait Store: LeaseRpc {
    /// Every key under `prefix`, linearizable.
    fn read_prefix(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<StoredKey>, ClientError>> + Send;
    /// Writes `key` (attached to `lease` unless 0); with `expect_mod_revision`, only
    /// if the key's mod revision equals it (0: only if absent). Returns whether it
    /// was written.
    fn put_key(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: u64,
        expect_mod_revision: Option<u64>,
    ) -> impl Future<Output = Result<bool, ClientError>> + Send;
    /// Writes `key` only while `guard_key` is attached to `guard_lease`.
    fn put_as_holder(
        &self,
        key: &str,
        value: Vec<u8>,
        guard_key: &str,
        guard_lease: u64,
    ) -> impl Future<Output = Result<bool, ClientError>> + Send;
    fn delete_key(&self, key: &str) -> impl Future<Output = Result<(), ClientError>> + Send;
    /// Revokes lease `id` (its keys go with it).
    fn revoke(&self, id: u64) -> impl Future<Output = Result<(), ClientError>> + Send;
    /// The names of the Raft group's members.
    fn member_names(&self) -> impl Future<Output = Result<Vec<String>, ClientError>> + Send;
    /// Runs until dropped, notifying `wake` after every change of `key`.
    fn watch_key(
        &self,
        key: &'static str,
        wake: Arc<Notify>,
    ) -> impl Future<Output = ()> + Send + 'static;
}

impl Store for Client {
    async fn read_prefix(&self, prefix: &str) -> Result<Vec<StoredKey>, ClientError> {
        let r = self.get(prefix, true, false).await?;
        Ok(r.kvs
            .into_iter()
            .map(|kv| StoredKey {
                key: kv.key,
                value: kv.value,
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
        Ok(self
            .put(key, value, lease, expect_mod_revision)
            .await?
            .succeeded)
    }

    async fn put_as_holder(
        &self,
        key: &str,
        value: Vec<u8>,
        guard_key: &str,
        guard_lease: u64,
    ) -> Result<bool, ClientError> {
        Ok(self
            .put_guarded(key, value, guard_key, guard_lease)
            .await?
            .succeeded)
    }

    async fn delete_key(&self, key: &str) -> Result<(), ClientError> {
        self.delete(key, false, None).await.map(|_| ())
    }

    async fn revoke(&self, id: u64) -> Result<(), ClientError> {
        self.lease_revoke(id).await.map(|_| ())
    }

    async fn member_names(&self) -> Result<Vec<String>, ClientError> {
        Ok(self
            .status()
            .await?
            .members
            .into_iter()
            .map(|m| m.name)
            .collect())
    }

    /// Re-subscribes after errors (a member restarting, a lost quorum); missing an
    /// event only delays the reaction to the next regular cycle.
    fn watch_key(
        &self,
        key: &'static str,
        wake: Arc<Notify>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let client = self.clone();
        async move {
            loop {
                if let Ok(mut stream) = client.watch(key, 0).await {
                    while let Ok(Some(_event)) = stream.message().await {
                        wake.notify_one();
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Moves the fence deadline of a running primary; held by the leader lease's
/// renewal task.
pub trait Fence: Send + Sync + 'static {
    /// Moves an armed deadline; leaves "no deadline" alone.
    fn move_if_armed(&self, deadline: Instant) -> Result<(), PgError>;
}

impl Fence for FenceHandle {
    fn move_if_armed(&self, deadline: Instant) -> Result<(), PgError> {
        FenceHandle::move_if_armed(self, deadline.into_std())
    }
}

/// This host's PostgreSQL, as the supervisor drives it. The meaning of each call is
/// `postgres::Postgres`'s method of the same name.
pub trait Database: Send + 'static {
    type Fence: Fence;

    fn probe(&mut self) -> impl Future<Output = PgProbe> + Send;
    fn current_wal_lsn(&mut self) -> impl Future<Output = Result<u64, PgError>> + Send;
    fn was_primary(&self) -> bool;
    fn bootstrap_pending(&self) -> bool;
    /// "Cannot tell" counts as yes.
    fn may_be_primary(&self) -> bool;
    /// `None`: no deadline (a replica, or stopped). A deadline in the past kills
    /// PostgreSQL at once.
    fn set_fence_deadline(&mut self, deadline: Option<Instant>) -> Result<(), PgError>;
    fn fence_handle(&self) -> Self::Fence;
    fn set_cluster_settings(
        &mut self,
        parameters: &BTreeMap<String, String>,
        pg_hba: &[String],
        synchronous_mode: bool,
    ) -> impl Future<Output = Result<bool, PgError>> + Send;
    fn start(&mut self, mode: StartMode) -> impl Future<Output = Result<(), PgError>> + Send;
    fn stop(&mut self, kind: StopKind) -> impl Future<Output = Result<(), PgError>> + Send;
    fn promote(&mut self) -> impl Future<Output = Result<(), PgError>> + Send;
    /// Queues the operator's callback for `action`; never waits.
    fn callback(&mut self, action: &'static str, role: &'static str);
    fn stop_foreign(&mut self, pid: i32) -> impl Future<Output = Result<(), PgError>> + Send;
    fn initdb(&mut self) -> impl Future<Output = Result<(), PgError>> + Send;
    fn move_data_dir_aside(&mut self) -> Result<PathBuf, PgError>;
    fn clear_bootstrap_marker(&self) -> Result<(), PgError>;
    fn ensure_replication_role(&mut self) -> impl Future<Output = Result<(), PgError>> + Send;
    fn rewind(&mut self, from: &ConnTarget) -> impl Future<Output = Result<(), PgError>> + Send;
    /// Returns where the old data dir was moved.
    fn reclone(
        &mut self,
        from: &ConnTarget,
        slot: &str,
    ) -> impl Future<Output = Result<Option<PathBuf>, PgError>> + Send;
    fn dir_bytes(&self, path: &Path) -> u64;
    fn reload(&mut self) -> impl Future<Output = Result<(), PgError>> + Send;
    fn remove_moved_aside(&mut self, path: &Path) -> Result<(), PgError>;
    fn basebackup(
        &mut self,
        from: &ConnTarget,
        slot: &str,
    ) -> impl Future<Output = Result<(), PgError>> + Send;
    fn ensure_slots(
        &mut self,
        wanted: &[String],
        keep: &[String],
    ) -> impl Future<Output = Result<(), PgError>> + Send;
    fn keep_standby_slots(
        &mut self,
        slots: &[String],
    ) -> impl Future<Output = Result<(), PgError>> + Send;
    fn set_synchronous_standby(
        &mut self,
        names: &[String],
    ) -> impl Future<Output = Result<(), PgError>> + Send;
}

impl Database for Postgres {
    type Fence = FenceHandle;

    fn probe(&mut self) -> impl Future<Output = PgProbe> + Send {
        Postgres::probe(self)
    }
    fn current_wal_lsn(&mut self) -> impl Future<Output = Result<u64, PgError>> + Send {
        Postgres::current_wal_lsn(self)
    }
    fn was_primary(&self) -> bool {
        Postgres::was_primary(self)
    }
    fn bootstrap_pending(&self) -> bool {
        Postgres::bootstrap_pending(self)
    }
    fn may_be_primary(&self) -> bool {
        Postgres::may_be_primary(self)
    }
    fn set_fence_deadline(&mut self, deadline: Option<Instant>) -> Result<(), PgError> {
        Postgres::set_fence_deadline(self, deadline.map(Instant::into_std))
    }
    fn fence_handle(&self) -> FenceHandle {
        Postgres::fence_handle(self)
    }
    fn set_cluster_settings(
        &mut self,
        parameters: &BTreeMap<String, String>,
        pg_hba: &[String],
        synchronous_mode: bool,
    ) -> impl Future<Output = Result<bool, PgError>> + Send {
        Postgres::set_cluster_settings(self, parameters, pg_hba, synchronous_mode)
    }
    fn start(&mut self, mode: StartMode) -> impl Future<Output = Result<(), PgError>> + Send {
        Postgres::start(self, mode)
    }
    fn stop(&mut self, kind: StopKind) -> impl Future<Output = Result<(), PgError>> + Send {
        Postgres::stop(self, kind)
    }
    fn promote(&mut self) -> impl Future<Output = Result<(), PgError>> + Send {
        Postgres::promote(self)
    }
    fn callback(&mut self, action: &'static str, role: &'static str) {
        Postgres::callback(self, action, role)
    }
    fn stop_foreign(&mut self, pid: i32) -> impl Future<Output = Result<(), PgError>> + Send {
        Postgres::stop_foreign(self, pid)
    }
    fn initdb(&mut self) -> impl Future<Output = Result<(), PgError>> + Send {
        Postgres::initdb(self)
    }
    fn move_data_dir_aside(&mut self) -> Result<PathBuf, PgError> {
        Postgres::move_data_dir_aside(self)
    }
    fn clear_bootstrap_marker(&self) -> Result<(), PgError> {
        Postgres::clear_bootstrap_marker(self)
    }
    fn ensure_replication_role(&mut self) -> impl Future<Output = Result<(), PgError>> + Send {
        Postgres::ensure_replication_role(self)
    }
    fn rewind(&mut self, from: &ConnTarget) -> impl Future<Output = Result<(), PgError>> + Send {
        Postgres::rewind(self, from)
    }
    fn reclone(
        &mut self,
        from: &ConnTarget,
        slot: &str,
    ) -> impl Future<Output = Result<Option<PathBuf>, PgError>> + Send {
        Postgres::reclone(self, from, slot)
    }
    fn dir_bytes(&self, path: &Path) -> u64 {
        Postgres::dir_bytes(path)
    }
    fn reload(&mut self) -> impl Future<Output = Result<(), PgError>> + Send {
        Postgres::reload(self)
    }
    fn remove_moved_aside(&mut self, path: &Path) -> Result<(), PgError> {
        Postgres::remove_moved_aside(self, path)
    }
    fn basebackup(
        &mut self,
        from: &ConnTarget,
        slot: &str,
    ) -> impl Future<Output = Result<(), PgError>> + Send {
        Postgres::basebackup(self, from, slot)
    }
    fn ensure_slots(
        &mut self,
        wanted: &[String],
        keep: &[String],
    ) -> impl Future<Output = Result<(), PgError>> + Send {
        Postgres::ensure_slots(self, wanted, keep)
    }
    fn keep_standby_slots(
        &mut self,
        slots: &[String],
    ) -> impl Future<Output = Result<(), PgError>> + Send {
        Postgres::keep_standby_slots(self, slots)
    }
    fn set_synchronous_standby(
        &mut self,
        names: &[String],
    ) -> impl Future<Output = Result<(), PgError>> + Send {
        Postgres::set_synchronous_standby(self, names)
    }
}
