//! The node's data directory: identity file, sled database, snapshot files.
//!
//! Layout (format 1):
//! - `pgquorum.json`: `{format, cluster, node_id}`; written once, never rewritten.
//! - `sled/`: trees `log` (index -> entry), `raft` (vote, committed, purged) and
//!   `sm` (the state machine, see `sm_store`).
//! - `snapshots/current.snap`: the latest snapshot, replaced atomically.
//!
//! Invariant: nothing in this module deletes or overwrites existing data to get a
//! node started; anything unexpected is an error that names the file and the fix.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub const FORMAT_VERSION: u32 = 1;
const IDENTITY_FILE: &str = "pgquorum.json";
/// Created once this node has durably voted: from then on an empty Raft state
/// means damage, never a fresh node.
const STATE_MARKER: &str = "raft-state";

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "data dir {path} belongs to cluster {found:?}, but this node is configured for cluster \
         {expected:?}; point data_dir at this cluster's directory or fix cluster_name in the config"
    )]
    ForeignCluster {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error(
        "data dir {path} belongs to node id {found}, but this node is configured as id {expected}; \
         each member needs its own data dir: fix node_id or data_dir in the config"
    )]
    ForeignNode {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error(
        "data dir {path} was written by a newer pgquorum (format {found}, this build reads up to \
         {supported}); run a newer pgquorum binary"
    )]
    NewerFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error(
        "data dir {path} is not empty and has no {IDENTITY_FILE}: refusing to use a directory \
         that pgquorum did not create; choose an empty or new data_dir"
    )]
    NotOurs { path: PathBuf },
    #[error(
        "{path} is damaged or unreadable ({reason}); pgquorum will not start on it and changes \
         nothing. Keep the directory for inspection, restore it from a backup, or remove this \
         member (`pgquorum ctl member remove --id N`) and re-add it with a new, empty data_dir"
    )]
    Damaged { path: PathBuf, reason: String },
    #[error("cannot use data dir {path}: {source}; check the path and its permissions")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Identity {
    format: u32,
    cluster: String,
    node_id: u64,
}

/// An opened data directory. Cloning shares the same sled database.
#[derive(Clone)]
pub struct DataDir {
    pub path: PathBuf,
    pub db: sled::Db,
    /// Kept open to fdatasync sled's file: sled 0.34's flush only issues
    /// `sync_file_range`, which neither flushes the device cache nor metadata.
    db_file: Arc<File>,
    /// sled 0.34 writes every item larger than its blob threshold (~128 KiB of
    /// serialised entry, reached by a put of well under `MAX_VALUE`) to a file of its
    /// own under `sled/blobs/`, and syncs neither the file nor the directory.
    blobs: Arc<BlobSync>,
}

/// Makes sled's blob files durable: each new file is fsynced once, then the
/// directory. Blob files are written once and never modified.
#[derive(Debug)]
struct BlobSync {
    sled_dir: PathBuf,
    synced: std::sync::Mutex<std::collections::HashSet<std::ffi::OsString>>,
}

impl BlobSync {
    fn sync_new(&self) -> io::Result<usize> {
        let dir = self.sled_dir.join("blobs");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut synced = self
            .synced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut present = std::collections::HashSet::new();
        let mut new = 0;
        for e in entries {
            let e = e?;
            let name = e.file_name();
            present.insert(name.clone());
            if synced.contains(&name) {
                continue;
            }
            match File::open(e.path()) {
                Ok(f) => f.sync_all()?,
                // Removed by sled meanwhile (superseded): nothing left to make durable.
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err),
            }
            synced.insert(name);
            new += 1;
        }
        synced.retain(|n| present.contains(n));
        if new > 0 {
            File::open(&dir)?.sync_all()?;
            File::open(&self.sled_dir)?.sync_all()?;
        }
        Ok(new)
    }
}

impl DataDir {
    /// Opens (or, when absent or empty, creates) the data dir for `cluster`/`node_id`.
    /// Whether `path` holds no data dir yet (this node's first start).
    pub fn is_new(path: &Path) -> bool {
        !path.join(IDENTITY_FILE).exists()
    }

    pub fn open(path: &Path, cluster: &str, node_id: u64) -> Result<Self, DataDirError> {
        let io_err = |source| DataDirError::Io {
            path: path.to_path_buf(),
            source,
        };
        let existed = path.exists();
        fs::create_dir_all(path).map_err(io_err)?;
        if !existed {
            // Only this node's user reads the store; a dir the operator made keeps
            // the mode they gave it.
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(io_err)?;
        }
        let id_path = path.join(IDENTITY_FILE);
        match fs::read(&id_path) {
            Ok(bytes) => {
                let id: Identity =
                    serde_json::from_slice(&bytes).map_err(|e| DataDirError::Damaged {
                        path: id_path.clone(),
                        reason: e.to_string(),
                    })?;
                if id.format > FORMAT_VERSION {
                    return Err(DataDirError::NewerFormat {
                        path: path.to_path_buf(),
                        found: id.format,
                        supported: FORMAT_VERSION,
                    });
                }
                if id.cluster != cluster {
                    return Err(DataDirError::ForeignCluster {
                        path: path.to_path_buf(),
                        found: id.cluster,
                        expected: cluster.to_string(),
                    });
                }
                if id.node_id != node_id {
                    return Err(DataDirError::ForeignNode {
                        path: path.to_path_buf(),
                        found: id.node_id,
                        expected: node_id,
                    });
                }
                if !path.join("sled").join("db").exists() {
                    return Err(DataDirError::Damaged {
                        path: path.join("sled"),
                        reason: "the sled database is missing".into(),
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let non_empty = fs::read_dir(path).map_err(io_err)?.next().is_some();
                if non_empty {
                    return Err(DataDirError::NotOurs {
                        path: path.to_path_buf(),
                    });
                }
                let id = Identity {
                    format: FORMAT_VERSION,
                    cluster: cluster.to_string(),
                    node_id,
                };
                let bytes = serde_json::to_vec_pretty(&id).expect("identity serializes");
                write_atomically(path, IDENTITY_FILE, &bytes).map_err(io_err)?;
            }
            Err(e) => return Err(io_err(e)),
        }
        fs::create_dir_all(path.join("snapshots")).map_err(io_err)?;

        let sled_path = path.join("sled");
        if sled_path.join("db").exists() {
            verify_sled(&sled_path, path.join(STATE_MARKER).exists())?;
        }
        let cfg = sled::Config::new()
            .path(&sled_path)
            .cache_capacity(64 * 1024 * 1024)
            .flush_every_ms(Some(500));
        // sled panics on some kinds of corruption instead of returning an error.
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cfg.open()));
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(sled::Error::Io(e))) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(DataDirError::Io {
                    path: sled_path,
                    source: io::Error::other(
                        "it is locked by another running process (is this node already running?)",
                    ),
                });
            }
            Ok(Err(e)) => {
                return Err(DataDirError::Damaged {
                    path: sled_path,
                    reason: e.to_string(),
                });
            }
            Err(_) => {
                return Err(DataDirError::Damaged {
                    path: sled_path,
                    reason: "sled panicked while reading it".into(),
                });
            }
        };
        let db_file = File::open(sled_path.join("db")).map_err(io_err)?;
        let blobs = BlobSync {
            sled_dir: sled_path.clone(),
            synced: Default::default(),
        };
        // Whatever sled wrote before (at creation: its conf file, the blobs dir)
        // becomes durable before this node reports anything flushed.
        blobs.sync_new().map_err(io_err)?;
        File::open(&sled_path)
            .and_then(|d| d.sync_all())
            .map_err(io_err)?;
        Ok(Self {
            path: path.to_path_buf(),
            db,
            db_file: Arc::new(db_file),
            blobs: Arc::new(blobs),
        })
    }

    /// Records that this node holds Raft state (see `STATE_MARKER`). Idempotent.
    pub fn mark_has_state(&self) -> io::Result<()> {
        if self.path.join(STATE_MARKER).exists() {
            return Ok(());
        }
        write_atomically(
            &self.path,
            STATE_MARKER,
            b"this node has voted; an empty sled here is damage\n",
        )
    }

    pub fn tree(&self, name: &str) -> io::Result<sled::Tree> {
        self.db.open_tree(name).map_err(sled_io)
    }

    /// Makes every sled write issued so far durable on the device.
    pub async fn sync(&self) -> io::Result<()> {
        self.db.flush_async().await.map_err(sled_io)?;
        let f = self.db_file.clone();
        let blobs = self.blobs.clone();
        tokio::task::spawn_blocking(move || {
            f.sync_data()?;
            blobs.sync_new().map(|_| ())
        })
        .await
        .map_err(io::Error::other)?
    }

    pub fn snapshot_dir(&self) -> PathBuf {
        self.path.join("snapshots")
    }
}

/// sled 0.34's recovery rewrites a damaged database in place (it marks the rest of
/// a segment "corrupted") before it fails or, worse, opens with the tail cut off.
/// So sled first opens a scratch copy; the original is handed to sled only if the
/// copy opened cleanly and still holds the vote this node is known to have cast.
fn verify_sled(sled_path: &Path, must_have_vote: bool) -> Result<(), DataDirError> {
    let damaged = |reason: String| DataDirError::Damaged {
        path: sled_path.to_path_buf(),
        reason,
    };
    let scratch = tempfile::Builder::new()
        .prefix("pgquorum-verify-")
        .tempdir()
        .map_err(|source| DataDirError::Io {
            path: std::env::temp_dir(),
            source,
        })?;
    let copy = scratch.path().join("sled");
    copy_dir(sled_path, &copy).map_err(|source| DataDirError::Io {
        path: sled_path.to_path_buf(),
        source,
    })?;
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        sled::Config::new()
            .path(&copy)
            .cache_capacity(16 * 1024 * 1024)
            .open()
    }));
    let db = match opened {
        Ok(Ok(db)) => db,
        Ok(Err(e)) => return Err(damaged(e.to_string())),
        Err(_) => return Err(damaged("sled panicked while reading it".into())),
    };
    if must_have_vote {
        let has_vote = db
            .open_tree("raft")
            .and_then(|t| t.contains_key(b"vote"))
            .map_err(|e| damaged(e.to_string()))?;
        if !has_vote {
            return Err(damaged(
                "the Raft vote and log are missing although this node has voted before \
                 (the database was truncated or replaced)"
                    .into(),
            ));
        }
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

pub fn sled_io(e: sled::Error) -> io::Error {
    match e {
        sled::Error::Io(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

/// Write, fsync, rename, fsync the directory: after a crash `dir/name` holds either
/// the old content or the new one, never a torn file.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value large enough for sled to store as a blob file (a put near
    /// `MAX_VALUE`) is made durable by `sync`: the file and its directory are
    /// fsynced before an append is reported flushed.
    #[tokio::test]
    async fn large_items_land_in_blob_files_that_sync_makes_durable() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::open(&dir.path().join("d"), "c", 1).unwrap();
        let t = d.tree("log").unwrap();
        t.insert(b"big", vec![7u8; 1024 * 1024]).unwrap();
        d.sync().await.unwrap();
        let blobs: Vec<_> = fs::read_dir(dir.path().join("d/sled/blobs"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            !blobs.is_empty(),
            "sled stored no blob file: test premise gone"
        );
        let synced = d.blobs.synced.lock().unwrap();
        for b in &blobs {
            assert!(synced.contains(b), "blob {b:?} not synced");
        }
        drop(synced);
        // Nothing new: nothing synced again.
        assert_eq!(d.blobs.sync_new().unwrap(), 0);
    }

    #[test]
    fn refuses_foreign_cluster_and_node() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d");
        drop(DataDir::open(&p, "a", 1).unwrap());
        assert!(matches!(
            DataDir::open(&p, "b", 1),
            Err(DataDirError::ForeignCluster { .. })
        ));
        assert!(matches!(
            DataDir::open(&p, "a", 2),
            Err(DataDirError::ForeignNode { .. })
        ));
        DataDir::open(&p, "a", 1).unwrap();
    }

    #[test]
    fn refuses_unknown_non_empty_dir_and_leaves_it_alone() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("precious"), b"x").unwrap();
        assert!(matches!(
            DataDir::open(dir.path(), "a", 1),
            Err(DataDirError::NotOurs { .. })
        ));
        assert_eq!(fs::read(dir.path().join("precious")).unwrap(), b"x");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn damaged_identity_is_reported_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        drop(DataDir::open(dir.path(), "a", 1).unwrap());
        fs::write(dir.path().join(IDENTITY_FILE), b"{garbage").unwrap();
        let err = DataDir::open(dir.path(), "a", 1).err().unwrap();
        assert!(err.to_string().contains("pgquorum.json"), "{err}");
        assert_eq!(
            fs::read(dir.path().join(IDENTITY_FILE)).unwrap(),
            b"{garbage"
        );
    }
}
