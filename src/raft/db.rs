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

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Options, WriteBatch};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::group_commit::{Done, GroupCommit, SyncCounts};
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
}

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
}

impl RaftDb {
    pub fn open(path: impl AsRef<Path>) -> Result<Arc<RaftDb>, DbError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // Unsynced writes are safe only if a crash keeps a prefix of them
        // (a vote never survives without the entries written before it).
        opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::PointInTime);
        let cfs = COLUMN_FAMILIES
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, opts.clone()));
        let db = Arc::new(rocksdb::DB::open_cf_descriptors(&opts, path, cfs)?);
        for name in COLUMN_FAMILIES {
            if db.cf_handle(name).is_none() {
                return Err(DbError::MissingColumnFamily(name));
            }
        }
        let group_commit = GroupCommit::start(Arc::clone(&db))?;
        Ok(Arc::new(RaftDb {
            group_commit,
            db,
            committed: Mutex::new(HashMap::new()),
        }))
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
        match self.db.get_pinned_cf(self.cf(cf), key)? {
            Some(bytes) => decode(&bytes, what).map(Some),
            None => Ok(None),
        }
    }

    /// Writes unsynced: readable at once, durable with the next sync.
    /// Carries every committed log id saved since the last write.
    pub(crate) fn write(&self, mut batch: WriteBatch) -> Result<(), DbError> {
        let started = std::time::Instant::now();
        self.add_committed(&mut batch)?;
        self.db.write(batch)?;
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
        self.db
            .iterator_cf_opt(self.cf(cf), read, mode)
            .map(|item| Ok(item?.1.into_vec()))
            .collect()
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
        let mut it = self.db.raw_iterator_cf_opt(self.cf(cf), read);
        it.seek_to_last();
        it.status()?;
        Ok(it.value().map(<[u8]>::to_vec))
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
        self.db.flush_wal(true)?;
        for name in COLUMN_FAMILIES {
            self.db.flush_cf(self.cf(name))?;
        }
        Ok(())
    }

    /// Group-commit counters, for metrics.
    pub fn sync_counts(&self) -> SyncCounts {
        self.group_commit.counts()
    }
}

impl Drop for RaftDb {
    /// Writes the committed log ids still pending (unsynced, as ever).
    fn drop(&mut self) {
        if let Err(e) = self.write(WriteBatch::default()) {
            tracing::warn!(error = %e, "writing committed log ids on close");
        }
    }
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
