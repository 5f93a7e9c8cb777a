//! The node's one RocksDB, shared by every Raft group.
//!
//! Column families, every key prefixed by the group id (big-endian, so a
//! group's keys are one contiguous, ordered range):
//! - `log`: `group ‖ index` → log entry.
//! - `raft`: `group ‖ tag` → vote, last purged log id, committed log id.
//! - `state`: `group ‖ tag` → the state machine's checkpoint and snapshot.
//!
//! Values are postcard-encoded. Writes go in unsynced; durability comes from
//! the shared [`GroupCommit`] thread. Committed log ids are not written on
//! their own: each rides along with the node's next write of anything.
//!
//! Storage is fail-stop ([`super::fail_stop`]): the first RocksDB error or
//! failed WAL sync is latched, and from then on every operation is refused.
//! Other storage errors (an undecodable record) reach openraft, which stops
//! the group; the server turns that into the same fault.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, DBRecoveryMode, Options, WriteBatch};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::fail_stop::{FailStop, FaultHandler, StorageFault};
use super::group_commit::{Done, GroupCommit, SyncCounts};
use super::test_seam::{FaultOp, TestSeam};
use super::types::{GroupId, LogId};

pub const CF_LOG: &str = "log";
pub const CF_RAFT: &str = "raft";
pub const CF_STATE: &str = "state";
const COLUMN_FAMILIES: [&str; 3] = [CF_LOG, CF_RAFT, CF_STATE];

/// Tags of the `raft` column family.
pub const TAG_VOTE: u8 = 1;
pub const TAG_PURGED: u8 = 2;
pub const TAG_COMMITTED: u8 = 3;
/// Tags of the `state` column family.
pub const TAG_CHECKPOINT: u8 = 1;
pub const TAG_SNAPSHOT: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("encoding {what}: {source}")]
    Encode {
        what: &'static str,
        source: postcard::Error,
    },
    #[error("decoding {what}: {source}")]
    Decode {
        what: &'static str,
        source: postcard::Error,
    },
    #[error("column family {0} is missing")]
    MissingColumnFamily(&'static str),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("storage failed earlier ({0}); this node no longer reads or writes it")]
    Failed(StorageFault),
}

/// How a [`RaftDb`] meets storage faults.
#[derive(Default)]
pub struct DbOptions {
    /// Runs once, on the first fault; the server's exits the process.
    pub on_fault: Option<FaultHandler>,
    /// Faults on demand and a record of WAL syncs, for tests only.
    pub test_seam: TestSeam,
}

/// What the node's storage operations are, in fault reports.
const WHAT_READ: &str = "RocksDB read";
const WHAT_WRITE: &str = "RocksDB write";
const WHAT_SYNC: &str = "WAL sync (fsync)";
const WHAT_FLUSH: &str = "memtable flush";

/// The shared database handle. Cheap to share behind an `Arc`; dropping the
/// last one stops the sync thread and closes RocksDB.
pub struct RaftDb {
    // Declared first so it drops first: the sync thread joins before the
    // database can close under it.
    group_commit: GroupCommit,
    db: Arc<rocksdb::DB>,
    /// Committed log ids saved since the last write, per group (`None`:
    /// cleared), for the next write to carry.
    committed: Mutex<HashMap<GroupId, Option<LogId>>>,
    fail_stop: Arc<FailStop>,
    test_seam: TestSeam,
}

impl RaftDb {
    /// Opens with no fault handler and no test seam.
    pub fn open(path: impl AsRef<Path>) -> Result<Arc<RaftDb>, DbError> {
        RaftDb::open_with(path, DbOptions::default())
    }

    pub fn open_with(path: impl AsRef<Path>, options: DbOptions) -> Result<Arc<RaftDb>, DbError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        set_recovery(&mut opts);
        let cfs = COLUMN_FAMILIES
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, opts.clone()));
        let db = Arc::new(rocksdb::DB::open_cf_descriptors(&opts, path, cfs)?);
        for name in COLUMN_FAMILIES {
            if db.cf_handle(name).is_none() {
                return Err(DbError::MissingColumnFamily(name));
            }
        }
        let fail_stop = Arc::new(FailStop::new(options.on_fault));
        let group_commit = GroupCommit::start(
            Arc::clone(&db),
            Arc::clone(&fail_stop),
            options.test_seam.clone(),
        )?;
        Ok(Arc::new(RaftDb {
            group_commit,
            db,
            committed: Mutex::new(HashMap::new()),
            fail_stop,
            test_seam: options.test_seam,
        }))
    }

    /// Runs one RocksDB operation. Refused once storage has failed; an
    /// error (or one a test injects instead) is the node's storage fault.
    fn run<'a, T>(
        &'a self,
        what: &'static str,
        op: FaultOp,
        f: impl FnOnce(&'a rocksdb::DB) -> Result<T, rocksdb::Error>,
    ) -> Result<T, DbError> {
        if let Some(fault) = self.fail_stop.fault() {
            return Err(DbError::Failed(fault.clone()));
        }
        let result = match self.test_seam.injected(op) {
            Some(injected) => Err(DbError::Io(injected)),
            None => f(&self.db).map_err(DbError::Rocks),
        };
        if let Err(e) = &result {
            self.fail(StorageFault::new(what, e));
        }
        result
    }

    /// Latches `fault` as this node's storage fault (unless one came
    /// first) and runs the fault handler; see [`FailStop::fail`].
    pub fn fail(&self, fault: StorageFault) -> StorageFault {
        self.fail_stop.fail(fault)
    }

    /// The node's storage fault, once storage has failed.
    pub fn fault(&self) -> Option<&StorageFault> {
        self.fail_stop.fault()
    }

    pub(crate) fn cf(&self, name: &'static str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("open() checked every column family")
    }

    pub(crate) fn get<T: DeserializeOwned>(
        &self,
        cf: &'static str,
        key: &[u8],
        what: &'static str,
    ) -> Result<Option<T>, DbError> {
        match self.run(WHAT_READ, FaultOp::Read, |db| {
            db.get_pinned_cf(self.cf(cf), key)
        })? {
            Some(bytes) => decode(&bytes, what).map(Some),
            None => Ok(None),
        }
    }

    /// Writes unsynced: readable at once, durable with the next sync.
    /// Carries every committed log id saved since the last write.
    pub(crate) fn write(&self, mut batch: WriteBatch) -> Result<(), DbError> {
        let started = std::time::Instant::now();
        self.add_committed(&mut batch)?;
        self.run(WHAT_WRITE, FaultOp::Write, |db| db.write(batch))?;
        metrics::histogram!("leasehold_rocksdb_write_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Saves `group`'s committed log id for the next write to carry. Losing
    /// it in a crash only means a restart re-applies less before the
    /// leader says it again; a write that carries an older id for the same
    /// group after a newer one means the same, never more.
    pub(crate) fn save_committed(&self, group: GroupId, committed: Option<LogId>) {
        self.committed
            .lock()
            .expect("committed ids lock")
            .insert(group, committed);
    }

    /// `group`'s committed log id: the one saved last, written or not.
    pub(crate) fn committed(&self, group: GroupId) -> Result<Option<LogId>, DbError> {
        let pending = self
            .committed
            .lock()
            .expect("committed ids lock")
            .get(&group)
            .copied();
        match pending {
            Some(committed) => Ok(committed),
            None => self.get(CF_RAFT, &tag_key(group, TAG_COMMITTED), "committed log id"),
        }
    }

    /// Moves the committed log ids saved since the last write into `batch`.
    fn add_committed(&self, batch: &mut WriteBatch) -> Result<(), DbError> {
        let pending = std::mem::take(&mut *self.committed.lock().expect("committed ids lock"));
        for (group, committed) in pending {
            let key = tag_key(group, TAG_COMMITTED);
            match committed {
                Some(log_id) => {
                    batch.put_cf(self.cf(CF_RAFT), key, encode(&log_id, "committed log id")?);
                }
                None => batch.delete_cf(self.cf(CF_RAFT), key),
            }
        }
        Ok(())
    }

    /// The values of `cf` in `[from, to)`, in key order.
    pub(crate) fn values(
        &self,
        cf: &'static str,
        from: &[u8],
        to: &[u8],
    ) -> Result<Vec<Vec<u8>>, DbError> {
        let mut read = rocksdb::ReadOptions::default();
        read.set_iterate_upper_bound(to.to_vec());
        let mode = rocksdb::IteratorMode::From(from, rocksdb::Direction::Forward);
        self.run(WHAT_READ, FaultOp::Read, |db| {
            db.iterator_cf_opt(self.cf(cf), read, mode)
                .map(|item| Ok(item?.1.into_vec()))
                .collect()
        })
    }

    /// The last value of `cf` in `[from, to)`.
    pub(crate) fn last_value(
        &self,
        cf: &'static str,
        from: &[u8],
        to: &[u8],
    ) -> Result<Option<Vec<u8>>, DbError> {
        let mut read = rocksdb::ReadOptions::default();
        read.set_iterate_lower_bound(from.to_vec());
        read.set_iterate_upper_bound(to.to_vec());
        self.run(WHAT_READ, FaultOp::Read, |db| {
            let mut it = db.raw_iterator_cf_opt(self.cf(cf), read);
            it.seek_to_last();
            it.status()?;
            Ok(it.value().map(<[u8]>::to_vec))
        })
    }

    /// Resolves once every write issued before the call is durable.
    pub(crate) async fn sync(&self) -> io::Result<()> {
        self.group_commit.sync().await
    }

    /// Runs `done` once every write issued before the call is durable.
    pub(crate) fn request_sync(&self, entries: u64, done: Done) {
        self.group_commit.request(entries, done);
    }

    /// Syncs the WAL and writes every memtable to disk, so the next open
    /// replays nothing. For a clean shutdown.
    pub fn flush(&self) -> Result<(), DbError> {
        self.write(WriteBatch::default())?;
        self.run(WHAT_SYNC, FaultOp::Fsync, |db| db.flush_wal(true))?;
        for name in COLUMN_FAMILIES {
            self.run(WHAT_FLUSH, FaultOp::Write, |db| db.flush_cf(self.cf(name)))?;
        }
        Ok(())
    }

    /// The RocksDB handle itself, for tests that reach under the layer.
    #[cfg(test)]
    pub(crate) fn rocks(&self) -> &rocksdb::DB {
        &self.db
    }

    /// Group-commit counters, for metrics.
    pub fn sync_counts(&self) -> SyncCounts {
        self.group_commit.counts()
    }
}

impl Drop for RaftDb {
    /// Writes the committed log ids still pending (unsynced, as ever),
    /// unless storage has failed.
    fn drop(&mut self) {
        if self.fault().is_some() {
            return;
        }
        if let Err(e) = self.write(WriteBatch::default()) {
            tracing::warn!(error = %e, "writing committed log ids on close");
        }
    }
}

/// How RocksDB recovers after a crash or a power cut.
///
/// Writes go in unsynced and become durable with the next WAL sync, so
/// past the last sync a power cut may leave the WAL cut short, possibly
/// mid-record, or grown by zeros where its data never landed. None of
/// that was acknowledged to anyone. `TolerateCorruptedTailRecords`
/// replays up to such a tail and drops it, so a crash keeps a prefix of
/// the writes (a vote never survives without the entries written before
/// it). Anything else refuses to open, even a complete last record whose
/// checksum fails: it cannot be told from a synced record, such as a vote,
/// gone bad. `PointInTime`, RocksDB's default, would stop replay there and
/// open without everything after it, synced votes and entries included,
/// silently breaking what this node promised its peers. (The price: where
/// a filesystem can show a grown file whose data never landed, such as
/// ext4 with `data=writeback`, a power cut can leave such a record, and
/// the node refuses to start rather than guess.)
///
/// A tail rule alone cannot tell a WAL cut short in the middle of the
/// chain (one RocksDB has closed, synced, and still needs) from a torn
/// last one; tracking synced WALs in the MANIFEST makes that refuse too.
///
/// Recovery rewrites what it replays into new, synced table files before
/// the database opens (`avoid_flush_during_recovery` is off), so after a
/// failed fsync a restart serves only what it has just made durable.
fn set_recovery(opts: &mut Options) {
    opts.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
    opts.set_track_and_verify_wals_in_manifest(true);
}

pub(crate) fn encode<T: Serialize>(value: &T, what: &'static str) -> Result<Vec<u8>, DbError> {
    postcard::to_stdvec(value).map_err(|source| DbError::Encode { what, source })
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, DbError> {
    postcard::from_bytes(bytes).map_err(|source| DbError::Decode { what, source })
}

/// `group ‖ index`: a group's entries sort by index.
pub(crate) fn log_key(group: GroupId, index: u64) -> [u8; 12] {
    let mut key = [0; 12];
    key[..4].copy_from_slice(&group.to_be_bytes());
    key[4..].copy_from_slice(&index.to_be_bytes());
    key
}

/// `group ‖ tag`, for the `raft` and `state` column families.
pub(crate) fn tag_key(group: GroupId, tag: u8) -> [u8; 5] {
    let mut key = [0; 5];
    key[..4].copy_from_slice(&group.to_be_bytes());
    key[4] = tag;
    key
}
