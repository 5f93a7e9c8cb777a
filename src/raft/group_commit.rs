//! Group commit: one thread makes the write-ahead log durable for every
//! Raft group of the node, so concurrent groups share each fsync.
//!
//! Writers put their batch into RocksDB unsynced (readable at once, in the
//! order each group issues them), then ask for durability here. The thread
//! takes every request queued so far, syncs the WAL once and answers them
//! all. RocksDB's WAL is one sequential file, so one sync covers every write
//! that finished before it, across groups and column families.
//!
//! A failed sync is the node's storage fault ([`FailStop`]), latched before
//! any waiting request is answered. The thread never syncs again after a
//! fault: a later sync could succeed over writes the failed one lost.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use super::fail_stop::{FailStop, StorageFault};
use super::test_seam::{FaultOp, TestSeam};

/// Called once the writes before the request are durable, or failed to be.
pub type Done = Box<dyn FnOnce(io::Result<()>) + Send>;

struct SyncRequest {
    entries: u64,
    done: Done,
}

/// Counters of the group commit, for metrics.
#[derive(Debug, Default)]
pub struct SyncStats {
    fsyncs: AtomicU64,
    requests: AtomicU64,
    entries: AtomicU64,
}

/// A point-in-time copy of [`SyncStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncCounts {
    /// WAL syncs issued.
    pub fsyncs: u64,
    /// Writes that asked for durability (appends and votes); each waited for
    /// exactly one of the syncs.
    pub requests: u64,
    /// Log entries made durable.
    pub entries: u64,
}

impl SyncStats {
    pub fn counts(&self) -> SyncCounts {
        SyncCounts {
            fsyncs: self.fsyncs.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            entries: self.entries.load(Ordering::Relaxed),
        }
    }
}

/// The handle of the sync thread. Dropping it lets the thread answer what is
/// queued, then joins it.
pub struct GroupCommit {
    tx: Option<mpsc::Sender<SyncRequest>>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<SyncStats>,
}

impl GroupCommit {
    pub fn start(
        db: Arc<rocksdb::DB>,
        fail_stop: Arc<FailStop>,
        test_seam: TestSeam,
    ) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(SyncStats::default());
        let thread_stats = Arc::clone(&stats);
        let syncer = Syncer {
            db,
            fail_stop,
            test_seam,
        };
        let thread = std::thread::Builder::new()
            .name("raft-wal-sync".into())
            .spawn(move || run(&syncer, &rx, &thread_stats))?;
        Ok(GroupCommit {
            tx: Some(tx),
            thread: Some(thread),
            stats,
        })
    }

    /// Queues a request; `done` runs on the sync thread.
    pub fn request(&self, entries: u64, done: Done) {
        let request = SyncRequest { entries, done };
        let sent = match &self.tx {
            Some(tx) => tx.send(request).map_err(|e| e.0),
            None => Err(request),
        };
        if let Err(request) = sent {
            (request.done)(Err(io::Error::other("the WAL sync thread has stopped")));
        }
    }

    /// Resolves once every write issued before the call is durable.
    pub async fn sync(&self) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.request(
            0,
            Box::new(move |result| {
                // The waiter may have given up; nothing then waits for the answer.
                let _ = tx.send(result);
            }),
        );
        rx.await
            .map_err(|_| io::Error::other("the WAL sync thread dropped a request"))?
    }

    pub fn counts(&self) -> SyncCounts {
        self.stats.counts()
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the WAL sync thread panicked");
            }
        }
    }
}

/// Under load (the last sync served more than one request), how long a
/// sync waits for more requests to share it. An fsync costs far more CPU
/// than this wait costs latency.
const LINGER: std::time::Duration = std::time::Duration::from_micros(150);

/// What one WAL sync needs.
struct Syncer {
    db: Arc<rocksdb::DB>,
    fail_stop: Arc<FailStop>,
    test_seam: TestSeam,
}

impl Syncer {
    /// Makes every write issued so far durable, or says why not. Tried
    /// only while storage has not failed; a failure is latched as the
    /// node's fault (its handler runs) before this returns.
    fn sync(&self) -> Result<(), StorageFault> {
        if let Some(fault) = self.fail_stop.fault() {
            return Err(fault.clone());
        }
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            Err(self.fail_stop.fail(StorageFault::new(what, e)))
        };
        let record = self.test_seam.wal_sync_record.as_deref();
        // Lengths taken before the sync are durable once it succeeds.
        let lengths = match record.map(|r| r.wal_lengths()).transpose() {
            Ok(lengths) => lengths,
            Err(e) => return fail("listing WAL files (test seam)", &e),
        };
        if let Some(e) = self.test_seam.injected(FaultOp::Fsync) {
            return fail("WAL sync (fsync)", &e);
        }
        if let Err(e) = self.db.flush_wal(true) {
            return fail("WAL sync (fsync)", &e);
        }
        if let (Some(record), Some(lengths)) = (record, lengths) {
            if let Err(e) = record.save(&lengths) {
                return fail("recording the WAL sync (test seam)", &e);
            }
        }
        Ok(())
    }
}

fn run(syncer: &Syncer, rx: &mpsc::Receiver<SyncRequest>, stats: &SyncStats) {
    let mut last_batch = 0;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        if last_batch > 1 {
            let until = std::time::Instant::now() + LINGER;
            while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
                match rx.recv_timeout(left) {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
        }
        last_batch = batch.len();
        let started = std::time::Instant::now();
        let result = syncer.sync();
        metrics::histogram!("leasehold_wal_sync_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("leasehold_wal_sync_requests").record(batch.len() as f64);
        stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        stats
            .requests
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        if result.is_ok() {
            let entries: u64 = batch.iter().map(|r| r.entries).sum();
            stats.entries.fetch_add(entries, Ordering::Relaxed);
        }
        for request in batch {
            let answer = match &result {
                Ok(()) => Ok(()),
                Err(fault) => Err(io::Error::other(format!("WAL not synced: {fault}"))),
            };
            (request.done)(answer);
        }
    }
}
