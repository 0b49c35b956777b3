//! openraft's own storage conformance suite, run against the sled log store and
//! state machine on a real temp directory.

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use tokio::sync::mpsc;

use super::log_store::LogStore;
use super::sm_store::SmStore;
use super::storage::DataDir;
use super::types::TypeConfig;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, SmStore, tempfile::TempDir> for SledBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, SmStore), StorageError<TypeConfig>> {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = DataDir::open(&tmp.path().join("d"), "suite", 1).expect("data dir");
        let (tx, rx) = mpsc::unbounded_channel();
        // The suite does not look at leases; keep the receiver alive with the store.
        std::mem::forget(rx);
        let log = LogStore::open(&dir).expect("log store");
        let sm = SmStore::open(&dir, tx).expect("state machine");
        Ok((tmp, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() {
    Suite::test_all(SledBuilder).await.expect("storage suite");
}
