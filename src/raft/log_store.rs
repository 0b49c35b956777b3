//! Raft log and vote in sled.
//!
//! Invariants:
//! - `save_vote` returns only once the vote is on the device (sled flush + fdatasync).
//! - `append` makes entries readable before it returns and reports them flushed only
//!   after fdatasync; flushes run on one task, in order, so a completion never
//!   overtakes an earlier append.
//! - `purge` records the purged log id before deleting entries, so a crash in between
//!   leaves a state `get_log_state` still describes correctly.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use tokio::sync::mpsc;

use super::storage::{DataDir, sled_io};
use super::types::{Entry, LogId, TypeConfig, Vote};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"last_purged";

#[derive(Clone)]
pub struct LogStore {
    dir: DataDir,
    log: sled::Tree,
    meta: sled::Tree,
    flusher: mpsc::UnboundedSender<IOFlushed<TypeConfig>>,
}

impl LogStore {
    /// Must be called inside a tokio runtime: it spawns the flusher task.
    pub fn open(dir: &DataDir) -> io::Result<Self> {
        let log = dir.tree("log")?;
        let meta = dir.tree("raft")?;
        let (tx, mut rx) = mpsc::unbounded_channel::<IOFlushed<TypeConfig>>();
        let d = dir.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                // One device flush covers every append queued so far.
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                let res = d.sync().await;
                for cb in batch {
                    let r = match &res {
                        Ok(()) => Ok(()),
                        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                    };
                    cb.io_completed(r);
                }
            }
        });
        Ok(Self {
            dir: dir.clone(),
            log,
            meta,
            flusher: tx,
        })
    }

    fn get_json<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        match self.meta.get(key).map_err(sled_io)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }

    fn put_json<T: serde::Serialize>(&self, key: &[u8], v: &T) -> io::Result<()> {
        let bytes = serde_json::to_vec(v).map_err(io::Error::other)?;
        self.meta.insert(key, bytes).map_err(sled_io)?;
        Ok(())
    }

    fn decode(bytes: &[u8]) -> io::Result<Entry> {
        serde_json::from_slice(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    fn last_entry(&self) -> io::Result<Option<Entry>> {
        match self.log.last().map_err(sled_io)? {
            None => Ok(None),
            Some((_, v)) => Self::decode(&v).map(Some),
        }
    }
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let start = match range.start_bound() {
            Bound::Included(i) => Bound::Included(key(*i)),
            Bound::Excluded(i) => Bound::Excluded(key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(key(*i)),
            Bound::Excluded(i) => Bound::Excluded(key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        self.log
            .range::<[u8; 8], _>((start, end))
            .map(|r| r.map_err(sled_io).and_then(|(_, v)| Self::decode(&v)))
            .collect()
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        self.get_json(KEY_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let last_purged: Option<LogId> = self.get_json(KEY_PURGED)?;
        let last = self.last_entry()?.map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        self.put_json(KEY_VOTE, vote)?;
        self.dir.sync().await?;
        self.dir.mark_has_state()
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        // Not synced: losing it only makes a restart re-apply from the snapshot.
        self.put_json(KEY_COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        Ok(self.get_json::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for e in entries {
            let bytes = serde_json::to_vec(&e).map_err(io::Error::other)?;
            batch.insert(&key(e.log_id.index), bytes);
        }
        self.log.apply_batch(batch).map_err(sled_io)?;
        self.flusher
            .send(callback)
            .map_err(|_| io::Error::other("log flusher stopped"))?;
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
        let mut batch = sled::Batch::default();
        for k in self.log.range(key(from)..).keys() {
            batch.remove(k.map_err(sled_io)?);
        }
        self.log.apply_batch(batch).map_err(sled_io)?;
        self.dir.sync().await
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        self.put_json(KEY_PURGED, &Some(log_id))?;
        self.dir.sync().await?;
        let mut batch = sled::Batch::default();
        for k in self.log.range(..=key(log_id.index)).keys() {
            batch.remove(k.map_err(sled_io)?);
        }
        self.log.apply_batch(batch).map_err(sled_io)?;
        Ok(())
    }
}
