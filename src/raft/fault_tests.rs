//! Fail-stop storage: an injected fsync, write or read error surfaces as
//! an error to openraft, is latched as the node's fault, and nothing works
//! from that state afterwards, even once the fault is gone.

use std::sync::{Arc, Mutex};

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader, Vote};
use tempfile::TempDir;

use super::db::DbOptions;
use super::fail_stop::StorageFault;
use super::state_machine::CHECKPOINT_INTERVAL_ENTRIES;
use super::test_seam::{injector, FaultInjector, FaultPlan, TestSeam};
use super::types::{Entry, LogId};
use super::{LogStore, RaftDb, StateMachine};
use crate::engine::EngineConfig;

fn blank(index: u64) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Blank,
    }
}

/// A database whose faults a test arms, and the faults its handler saw.
struct Faulty {
    _dir: TempDir,
    db: Arc<RaftDb>,
    faults: Arc<FaultInjector>,
    handled: Arc<Mutex<Vec<StorageFault>>>,
}

fn faulty(plan: &str) -> Faulty {
    let dir = tempfile::tempdir().unwrap();
    let faults = injector(plan);
    let handled = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&handled);
    let options = DbOptions {
        on_fault: Some(Box::new(move |fault| {
            seen.lock().unwrap().push(fault.clone());
        })),
        test_seam: TestSeam {
            faults: Some(Arc::clone(&faults)),
            wal_sync_record: None,
        },
    };
    let db = RaftDb::open_with(dir.path(), options).unwrap();
    Faulty {
        _dir: dir,
        db,
        faults,
        handled,
    }
}

impl Faulty {
    fn clear(&self) {
        self.faults.set(&FaultPlan::default());
    }

    /// The one fault handled, which must be the latched one.
    fn the_fault(&self) -> StorageFault {
        let handled = self.handled.lock().unwrap().clone();
        assert_eq!(handled.len(), 1, "expected one fault handled: {handled:?}");
        assert_eq!(self.db.fault(), Some(&handled[0]));
        handled[0].clone()
    }
}

/// Asserts `result` failed and its message contains `needle`.
fn assert_failed<T: std::fmt::Debug, E: std::fmt::Display>(
    result: Result<T, E>,
    what: &str,
    needle: &str,
) {
    match result {
        Ok(value) => panic!("expected {what} to fail, got {value:?}"),
        Err(e) => assert!(
            e.to_string().contains(needle),
            "expected {what} to fail with `{needle}`, got: {e}"
        ),
    }
}

#[tokio::test]
async fn an_fsync_error_fails_the_append_and_the_node_never_syncs_again() {
    let f = faulty("fsync=eio once");
    let mut log = LogStore::new(Arc::clone(&f.db), 1);
    assert_failed(
        log.blocking_append([blank(1), blank(2)]).await,
        "an append whose sync fails",
        "Input/output error",
    );
    let fault = f.the_fault();
    assert_eq!(fault.what, "WAL sync (fsync)");

    // The injected error was once only: a sync tried now would succeed,
    // and must not be tried.
    assert_failed(
        f.db.sync().await,
        "a sync after the fault",
        "WAL not synced",
    );
    assert_failed(
        log.save_vote(&Vote::new(2, 1)).await,
        "a vote after the fault",
        "storage failed earlier",
    );
    assert_failed(
        log.blocking_append([blank(3)]).await,
        "an append after the fault",
        "storage failed earlier",
    );
    assert_failed(
        log.read_vote().await,
        "a read after the fault",
        "storage failed earlier",
    );
    assert_eq!(f.handled.lock().unwrap().len(), 1, "the handler runs once");
}

#[tokio::test]
async fn the_fault_is_handled_before_any_waiter_hears_of_the_failed_sync() {
    let f = faulty("fsync=eio");
    let handled = Arc::clone(&f.handled);
    let (tx, rx) = tokio::sync::oneshot::channel();
    f.db.request_sync(
        0,
        Box::new(move |result| {
            let seen = handled.lock().unwrap().len();
            let _ = tx.send((seen, result.map_err(|e| e.to_string())));
        }),
    );
    let (handled_before, result) = rx.await.unwrap();
    assert_eq!(handled_before, 1, "the handler ran before the answer");
    assert_failed(result, "the sync", "Input/output error");
}

#[tokio::test]
async fn a_hung_fsync_holds_its_waiters_until_cleared() {
    let f = faulty("fsync=hang");
    let db = Arc::clone(&f.db);
    let mut waiting = tokio::spawn(async move { db.sync().await });
    let held = tokio::time::timeout(std::time::Duration::from_millis(100), &mut waiting).await;
    assert!(held.is_err(), "expected the sync to wait while it hangs");
    f.clear();
    waiting.await.unwrap().unwrap();
    assert_eq!(f.db.fault(), None);
}

#[tokio::test]
async fn a_write_error_fails_the_append_and_every_later_operation() {
    let f = faulty("write=enospc");
    let mut log = LogStore::new(Arc::clone(&f.db), 1);
    assert_failed(
        log.blocking_append([blank(1)]).await,
        "an append on a full disk",
        "No space left on device",
    );
    let fault = f.the_fault();
    assert_eq!(fault.what, "RocksDB write");
    assert!(fault.error.contains("No space left on device"), "{fault}");

    // Freeing the disk does not bring this state back.
    f.clear();
    assert_failed(
        log.blocking_append([blank(1)]).await,
        "an append once the disk has room",
        "storage failed earlier",
    );
    assert_failed(
        log.save_vote(&Vote::new(2, 1)).await,
        "a vote once the disk has room",
        "storage failed earlier",
    );
    assert_failed(
        log.get_log_state().await,
        "a read once the disk has room",
        "storage failed earlier",
    );
}

#[tokio::test]
async fn a_vote_whose_write_fails_is_an_error() {
    let f = faulty("write=eio");
    let mut log = LogStore::new(Arc::clone(&f.db), 1);
    assert_failed(
        log.save_vote(&Vote::new(2, 1)).await,
        "a vote whose write fails",
        "Input/output error",
    );
    assert_eq!(f.the_fault().what, "RocksDB write");
}

#[tokio::test]
async fn a_checkpoint_whose_write_fails_fails_the_apply() {
    let f = faulty("");
    let mut sm = StateMachine::open(Arc::clone(&f.db), 1, EngineConfig::default()).unwrap();
    let entries: Vec<Entry> = (1..=CHECKPOINT_INTERVAL_ENTRIES).map(blank).collect();
    f.faults.set(&FaultPlan::parse("write=enospc").unwrap());
    assert_failed(
        sm.apply(entries).await,
        "an apply that checkpoints on a full disk",
        "No space left on device",
    );
    assert_eq!(f.the_fault().what, "RocksDB write");
}

#[tokio::test]
async fn a_read_error_fails_log_and_vote_reads() {
    let f = faulty("");
    let mut log = LogStore::new(Arc::clone(&f.db), 1);
    log.blocking_append((1..=3).map(blank)).await.unwrap();
    log.save_vote(&Vote::new(2, 1)).await.unwrap();
    f.faults.set(&FaultPlan::parse("read=eio").unwrap());
    // A store with an empty tail reads RocksDB.
    let mut cold = LogStore::new(Arc::clone(&f.db), 1);
    assert_failed(
        cold.try_get_log_entries(1..4).await,
        "a log read",
        "Input/output error",
    );
    assert_eq!(f.the_fault().what, "RocksDB read");
    f.clear();
    assert_failed(
        log.read_vote().await,
        "a vote read after the fault",
        "storage failed earlier",
    );
}

#[tokio::test]
async fn without_faults_nothing_is_latched() {
    let f = faulty("");
    let mut log = LogStore::new(Arc::clone(&f.db), 1);
    log.blocking_append((1..=3).map(blank)).await.unwrap();
    log.save_vote(&Vote::new(2, 1)).await.unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
    f.db.flush().unwrap();
    assert_eq!(f.db.fault(), None);
    assert!(f.handled.lock().unwrap().is_empty());
}
