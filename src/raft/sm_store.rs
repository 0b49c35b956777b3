//! openraft state machine adapter: runs `store::State::apply` and persists its effects.
//!
//! sled tree `sm` (format 1):
//! - `m/format`, `m/applied` (last applied log id), `m/membership`, `m/revision`,
//!   `m/installing` (present only while a snapshot install is half done)
//! - `k/<key>` -> KeyValue, `l/<id>` -> Lease, `e/<revision><seq>` -> Event (watch history)
//!
//! Invariants:
//! - The effects of an applied batch and `m/applied` land in one sled batch, so they
//!   survive a crash together or not at all; openraft re-applies the rest from the log.
//! - A snapshot is written to its own file (fsync + rename + dir fsync) before the
//!   sled tree is replaced; an install cut short is finished from that file at start-up.
//! - Nothing here reads a clock: lease updates go to the lessor task, which stamps them.

use std::io;
use std::sync::{Arc, RwLock};

use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};

use super::storage::{DataDir, FORMAT_VERSION, sled_io, write_atomically};
use super::types::{LogId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig};
use crate::store::{Effects, Event, Lease, LeaseUpdate, Response, State};

const SNAPSHOT_FILE: &str = "current.snap";
/// Watch history kept, in revisions; older starting points get "compacted".
const HISTORY_REVISIONS: u64 = 10_000;

/// Messages for the lessor task, which stamps them with its clock.
#[derive(Debug)]
pub enum LeaseSignal {
    Update(LeaseUpdate),
    /// Every lease restarts its TTL: the times of earlier renewals are unknown.
    Reset(Vec<Lease>),
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct SmData {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: State,
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    format: u32,
    meta: SnapshotMeta,
    data: Vec<u8>,
}

struct Shared {
    dir: DataDir,
    tree: sled::Tree,
    data: RwLock<SmData>,
    /// First revision still in the watch history.
    history_floor: RwLock<u64>,
    events: broadcast::Sender<Event>,
    leases: mpsc::UnboundedSender<LeaseSignal>,
}

/// Cheap to clone: the Raft core owns one clone, the API layer reads through others.
#[derive(Clone)]
pub struct SmStore {
    shared: Arc<Shared>,
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

fn kv_key(k: &str) -> Vec<u8> {
    [b"k/".as_slice(), k.as_bytes()].concat()
}

fn lease_key(id: u64) -> Vec<u8> {
    [b"l/".as_slice(), &id.to_be_bytes()].concat()
}

fn event_key(rev: u64, seq: u32) -> Vec<u8> {
    [b"e/".as_slice(), &rev.to_be_bytes(), &seq.to_be_bytes()].concat()
}

fn json<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(io::Error::other)
}

impl SmStore {
    pub fn open(dir: &DataDir, leases: mpsc::UnboundedSender<LeaseSignal>) -> io::Result<Self> {
        let tree = dir.tree("sm")?;
        let (events, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            tree,
            data: RwLock::new(SmData::default()),
            history_floor: RwLock::new(1),
            events,
            leases,
        });
        let sm = Self { shared };
        if sm
            .shared
            .tree
            .get(b"m/installing")
            .map_err(sled_io)?
            .is_some()
        {
            // A snapshot install was cut short; its file was durable before it began.
            let snap = sm.read_snapshot_file()?.ok_or_else(|| {
                invalid("a snapshot install was interrupted and its file is missing")
            })?;
            let data: SmData = serde_json::from_slice(&snap.data).map_err(invalid)?;
            sm.replace_all(&data)?;
        }
        sm.load()?;
        Ok(sm)
    }

    fn load(&self) -> io::Result<()> {
        let t = &self.shared.tree;
        let mut data = SmData::default();
        match t.get(b"m/format").map_err(sled_io)? {
            None => {
                if t.iter().next().is_some() {
                    return Err(invalid("state machine has data but no format marker"));
                }
                t.insert(b"m/format", json(&FORMAT_VERSION)?)
                    .map_err(sled_io)?;
            }
            Some(v) => {
                let f: u32 = serde_json::from_slice(&v).map_err(invalid)?;
                if f > FORMAT_VERSION {
                    return Err(invalid(format!(
                        "state machine format {f} is newer than this build; run the newer \
                         pgquorum release that wrote it (the data is not damaged)"
                    )));
                }
            }
        }
        if let Some(v) = t.get(b"m/applied").map_err(sled_io)? {
            data.last_applied = serde_json::from_slice(&v).map_err(invalid)?;
        }
        if let Some(v) = t.get(b"m/membership").map_err(sled_io)? {
            data.membership = serde_json::from_slice(&v).map_err(invalid)?;
        }
        if let Some(v) = t.get(b"m/revision").map_err(sled_io)? {
            data.state.revision = serde_json::from_slice(&v).map_err(invalid)?;
        }
        for r in t.scan_prefix(b"k/") {
            let (_, v) = r.map_err(sled_io)?;
            let kv: crate::store::KeyValue = serde_json::from_slice(&v).map_err(invalid)?;
            data.state.kv.insert(kv.key.clone(), kv);
        }
        for r in t.scan_prefix(b"l/") {
            let (_, v) = r.map_err(sled_io)?;
            let l: Lease = serde_json::from_slice(&v).map_err(invalid)?;
            data.state.leases.insert(l.id, l);
        }
        let floor = match t.scan_prefix(b"e/").next() {
            Some(r) => {
                let (k, _) = r.map_err(sled_io)?;
                // Bytes read from disk: a damaged key is refused, never a panic.
                k.get(2..10)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| {
                        invalid(format!(
                            "the watch history key {:?} in the state machine is damaged",
                            String::from_utf8_lossy(&k)
                        ))
                    })?
            }
            None => data.state.revision + 1,
        };
        *self.shared.history_floor.write().expect("lock") = floor;
        let leases = data.state.leases.values().cloned().collect();
        *self.shared.data.write().expect("lock") = data;
        let _ = self.shared.leases.send(LeaseSignal::Reset(leases));
        Ok(())
    }

    /// Reads the applied state. Linearizability is the caller's business.
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.shared.data.read().expect("lock").state)
    }

    pub fn last_applied(&self) -> Option<LogId> {
        self.shared.data.read().expect("lock").last_applied
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    pub fn history_floor(&self) -> u64 {
        *self.shared.history_floor.read().expect("lock")
    }

    /// Retained events with revision >= `from`, in order.
    pub fn history_from(&self, from: u64) -> io::Result<Vec<Event>> {
        self.shared
            .tree
            .range(event_key(from, 0)..)
            .take_while(|r| {
                r.as_ref()
                    .map(|(k, _)| k.starts_with(b"e/"))
                    .unwrap_or(true)
            })
            .map(|r| {
                let (_, v) = r.map_err(sled_io)?;
                serde_json::from_slice(&v).map_err(invalid)
            })
            .collect()
    }

    fn persist_effects(batch: &mut sled::Batch, state: &State, fx: &Effects) -> io::Result<()> {
        for (seq, ev) in fx.events.iter().enumerate() {
            match ev.kind {
                crate::store::EventKind::Put => batch.insert(kv_key(&ev.kv.key), json(&ev.kv)?),
                crate::store::EventKind::Delete => batch.remove(kv_key(&ev.kv.key)),
            }
            batch.insert(event_key(ev.kv.mod_revision, seq as u32), json(ev)?);
        }
        for id in &fx.leases_changed {
            if let Some(l) = state.leases.get(id) {
                batch.insert(lease_key(*id), json(l)?);
            }
        }
        for id in &fx.leases_removed {
            batch.remove(lease_key(*id));
        }
        Ok(())
    }

    fn trim_history(&self, revision: u64) -> io::Result<()> {
        let floor = self.history_floor();
        if revision < floor + 2 * HISTORY_REVISIONS {
            return Ok(());
        }
        let new_floor = revision - HISTORY_REVISIONS;
        let mut batch = sled::Batch::default();
        for k in self
            .shared
            .tree
            .range(event_key(0, 0)..event_key(new_floor, 0))
            .keys()
        {
            batch.remove(k.map_err(sled_io)?);
        }
        self.shared.tree.apply_batch(batch).map_err(sled_io)?;
        *self.shared.history_floor.write().expect("lock") = new_floor;
        Ok(())
    }

    /// Replaces the whole persisted state machine with `data`.
    fn replace_all(&self, data: &SmData) -> io::Result<()> {
        let t = &self.shared.tree;
        let mut batch = sled::Batch::default();
        for k in t.iter().keys() {
            let k = k.map_err(sled_io)?;
            if k.as_ref() != b"m/installing" {
                batch.remove(k);
            }
        }
        batch.insert(b"m/format", json(&FORMAT_VERSION)?);
        batch.insert(b"m/applied", json(&data.last_applied)?);
        batch.insert(b"m/membership", json(&data.membership)?);
        batch.insert(b"m/revision", json(&data.state.revision)?);
        for kv in data.state.kv.values() {
            batch.insert(kv_key(&kv.key), json(kv)?);
        }
        for l in data.state.leases.values() {
            batch.insert(lease_key(l.id), json(l)?);
        }
        batch.remove(b"m/installing");
        t.apply_batch(batch).map_err(sled_io)
    }

    fn read_snapshot_file(&self) -> io::Result<Option<SnapshotFile>> {
        let path = self.shared.dir.snapshot_dir().join(SNAPSHOT_FILE);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| invalid(format!("snapshot file {} is damaged: {e}", path.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn write_snapshot_file(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        let file = SnapshotFile {
            format: FORMAT_VERSION,
            meta: meta.clone(),
            data: data.to_vec(),
        };
        write_atomically(
            &self.shared.dir.snapshot_dir(),
            SNAPSHOT_FILE,
            &json(&file)?,
        )
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SmStore {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        // The log is purged up to this snapshot next: make the state it covers durable.
        self.shared.dir.sync().await?;
        let data = self.shared.data.read().expect("lock").clone();
        let bytes = json(&data)?;
        let meta = SnapshotMeta {
            last_log_id: data.last_applied,
            last_membership: data.membership.clone(),
        };
        let (m, b) = (meta.clone(), bytes.clone());
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.write_snapshot_file(&m, &b))
            .await
            .map_err(io::Error::other)??;
        Ok(Snapshot {
            meta,
            snapshot: std::io::Cursor::new(bytes),
        })
    }
}

impl RaftStateMachine<TypeConfig> for SmStore {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let d = self.shared.data.read().expect("lock");
        Ok((d.last_applied, d.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        let mut batch = sled::Batch::default();
        let mut responders = Vec::new();
        let mut events = Vec::new();
        let mut lease_updates = Vec::new();
        let mut items = Vec::new();
        while let Some(item) = entries.next().await {
            items.push(item?);
        }
        let revision;
        {
            let mut guard = self.shared.data.write().expect("lock");
            let d = &mut *guard;
            for (entry, responder) in items {
                let resp = match &entry.payload {
                    EntryPayload::Blank => Response::None,
                    EntryPayload::Normal(cmd) => {
                        let (resp, fx) = d.state.apply(entry.log_id.index, cmd);
                        Self::persist_effects(&mut batch, &d.state, &fx)?;
                        events.extend(fx.events);
                        lease_updates.extend(fx.lease_updates);
                        resp
                    }
                    EntryPayload::Membership(m) => {
                        d.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                        batch.insert(b"m/membership", json(&d.membership)?);
                        Response::None
                    }
                };
                d.last_applied = Some(entry.log_id);
                if let Some(r) = responder {
                    responders.push((r, resp));
                }
            }
            revision = d.state.revision;
            batch.insert(b"m/revision", json(&revision)?);
            batch.insert(b"m/applied", json(&d.last_applied)?);
            self.shared.tree.apply_batch(batch).map_err(sled_io)?;
        }
        for u in lease_updates {
            let _ = self.shared.leases.send(LeaseSignal::Update(u));
        }
        for ev in events {
            // No receiver is fine: nobody watches.
            let _ = self.shared.events.send(ev);
        }
        for (r, resp) in responders {
            r.send(resp);
        }
        self.trim_history(revision)?;
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> io::Result<()> {
        let bytes = snapshot.into_inner();
        let mut data: SmData = serde_json::from_slice(&bytes).map_err(invalid)?;
        data.last_applied = meta.last_log_id;
        data.membership = meta.last_membership.clone();
        let me = self.clone();
        let (m, b) = (meta.clone(), bytes.clone());
        tokio::task::spawn_blocking(move || me.write_snapshot_file(&m, &b))
            .await
            .map_err(io::Error::other)??;
        self.shared
            .tree
            .insert(b"m/installing", json(&meta.last_log_id)?)
            .map_err(sled_io)?;
        self.shared.dir.sync().await?;
        self.replace_all(&data)?;
        self.shared.dir.sync().await?;
        let leases = data.state.leases.values().cloned().collect();
        *self.shared.history_floor.write().expect("lock") = data.state.revision + 1;
        *self.shared.data.write().expect("lock") = data;
        let _ = self.shared.leases.send(LeaseSignal::Reset(leases));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        Ok(self.read_snapshot_file()?.map(|f| Snapshot {
            meta: f.meta,
            snapshot: std::io::Cursor::new(f.data),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A watch-history key shorter than its layout (a damaged database) refuses the
    /// start with a message instead of panicking.
    #[tokio::test]
    async fn a_damaged_watch_history_key_is_refused_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::open(&dir.path().join("d"), "c", 1).unwrap();
        let (tx, _rx) = mpsc::unbounded_channel();
        drop(SmStore::open(&d, tx.clone()).expect("a fresh store opens"));
        d.tree("sm")
            .unwrap()
            .insert(b"e/x", b"{}".to_vec())
            .unwrap();
        let e = SmStore::open(&d, tx)
            .err()
            .expect("a damaged key must be refused");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("damaged"), "{e}");
    }
}
