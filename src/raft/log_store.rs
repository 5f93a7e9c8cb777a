//! The Raft log and vote of one group, in the node's shared RocksDB.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, LogState, OptionalSend, RaftLogReader, StorageIOError, Vote};
use rocksdb::WriteBatch;

use super::db::{self, DbError, RaftDb, CF_LOG, CF_RAFT, TAG_PURGED, TAG_VOTE};
use super::types::{Entry, GroupId, LogId, NodeId, StorageError, TypeConfig};

/// Entries of the log's tail kept in memory. Replication reads each new
/// entry once per follower and the state machine once more, right after
/// it is appended: from here, that costs no RocksDB read and no decoding.
pub const LOG_TAIL_ENTRIES: usize = 256;

/// The log store of one group: a group id over the shared database. Cheap
/// to clone; clones share the tail, and it is its own log reader.
///
/// Every write goes into RocksDB in the order openraft issues it and becomes
/// durable with the next shared WAL sync, so a crash keeps a prefix of the
/// writes: a truncate or purge that is lost was never observed outside.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<RaftDb>,
    group: GroupId,
    tail: Arc<Mutex<Tail>>,
}

/// The last entries appended, at consecutive indexes; the same as what
/// RocksDB holds for them.
#[derive(Default)]
struct Tail {
    entries: VecDeque<Entry>,
}

impl Tail {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|e| e.log_id.index)
    }

    /// `[start, end)` if the tail holds all of it.
    fn get(&self, start: u64, end: u64) -> Option<Vec<Entry>> {
        let first = self.first_index()?;
        let past_last = first + self.entries.len() as u64;
        if start < first || end > past_last {
            return None;
        }
        let range = (start - first) as usize..(end - first) as usize;
        Some(self.entries.range(range).cloned().collect())
    }

    fn append(&mut self, entries: &[Entry]) {
        let Some(next) = entries.first().map(|e| e.log_id.index) else {
            return;
        };
        let follows = self
            .first_index()
            .is_some_and(|first| first + self.entries.len() as u64 == next);
        if !follows {
            self.entries.clear();
        }
        self.entries.extend(entries.iter().cloned());
        let excess = self.entries.len().saturating_sub(LOG_TAIL_ENTRIES);
        self.entries.drain(..excess);
    }

    /// Drops the entries from `index` on.
    fn truncate(&mut self, index: u64) {
        if let Some(first) = self.first_index() {
            let keep = index.saturating_sub(first) as usize;
            self.entries.truncate(keep);
        }
    }

    /// Drops the entries up to and including `index`.
    fn purge(&mut self, index: u64) {
        if let Some(first) = self.first_index() {
            let drop = (index + 1).saturating_sub(first) as usize;
            self.entries.drain(..drop.min(self.entries.len()));
        }
    }
}

impl LogStore {
    pub fn new(db: Arc<RaftDb>, group: GroupId) -> Self {
        LogStore {
            db,
            group,
            tail: Arc::default(),
        }
    }

    fn tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        // The tail is only a cache of RocksDB: a panic while it was held
        // left it whole or cleared, never inconsistent with the log.
        self.tail.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn group(&self) -> GroupId {
        self.group
    }

    fn last_purged(&self) -> Result<Option<LogId>, DbError> {
        self.db.get(
            CF_RAFT,
            &db::tag_key(self.group, TAG_PURGED),
            "last purged log id",
        )
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, DbError> {
        let from = db::log_key(self.group, 0);
        let to = db::log_key(self.group, u64::MAX);
        match self.db.last_value(CF_LOG, &from, &to)? {
            Some(bytes) => Ok(Some(db::decode::<Entry>(&bytes, "log entry")?.log_id)),
            None => Ok(None),
        }
    }

    fn entries(&self, start: u64, end: u64) -> Result<Vec<Entry>, DbError> {
        if let Some(entries) = self.tail().get(start, end) {
            return Ok(entries);
        }
        let from = db::log_key(self.group, start);
        let to = db::log_key(self.group, end);
        self.db
            .values(CF_LOG, &from, &to)?
            .iter()
            .map(|bytes| db::decode(bytes, "log entry"))
            .collect()
    }

    fn write_entries(&self, entries: impl Iterator<Item = Entry>) -> Result<u64, DbError> {
        let entries: Vec<Entry> = entries.collect();
        let mut batch = WriteBatch::default();
        for entry in &entries {
            let key = db::log_key(self.group, entry.log_id.index);
            batch.put_cf(self.db.cf(CF_LOG), key, db::encode(entry, "log entry")?);
        }
        let mut tail = self.tail();
        let written = self.db.write(batch);
        match written {
            Ok(()) => tail.append(&entries),
            // What reached RocksDB is unknown: read it from there.
            Err(_) => tail.entries.clear(),
        }
        written.map(|()| entries.len() as u64)
    }

    fn put_raft<T: serde::Serialize>(&self, tag: u8, value: &T) -> Result<(), DbError> {
        let mut batch = WriteBatch::default();
        let bytes = db::encode(value, "raft state")?;
        batch.put_cf(self.db.cf(CF_RAFT), db::tag_key(self.group, tag), bytes);
        self.db.write(batch)
    }
}

fn read_err(e: DbError) -> StorageError {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn write_err(e: DbError) -> StorageError {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

/// `[start, end)` of a range of indexes.
fn index_bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(i) => *i,
        Bound::Excluded(i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(i) => i.saturating_add(1),
        Bound::Excluded(i) => *i,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = index_bounds(&range);
        if start >= end {
            return Ok(Vec::new());
        }
        self.entries(start, end).map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.last_purged().map_err(read_err)?;
        let last_log_id = self.last_entry_id().map_err(read_err)?;
        Ok(LogState {
            last_log_id: last_log_id.or(last_purged_log_id),
            last_purged_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let to_err = |e: DbError| StorageIOError::write_vote(AnyError::new(&e));
        self.put_raft(TAG_VOTE, vote).map_err(to_err)?;
        self.db
            .sync()
            .await
            .map_err(|e| to_err(DbError::Io(e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        let key = db::tag_key(self.group, TAG_VOTE);
        self.db
            .get(CF_RAFT, &key, "vote")
            .map_err(|e| StorageIOError::read_vote(AnyError::new(&e)).into())
    }

    /// Kept in memory until the node's next write carries it: a committed
    /// id lost in a crash only means a restart re-applies less before the
    /// leader tells it again.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.db.save_committed(self.group, committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.db.committed(self.group).map_err(read_err)
    }

    /// Returns once the entries are readable; `callback` fires from the
    /// sync thread once they are durable, with every other group's appends
    /// that queued meanwhile.
    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let count = self.write_entries(entries.into_iter()).map_err(write_err)?;
        self.db.request_sync(
            count,
            Box::new(move |result| callback.log_io_completed(result)),
        );
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        let from = db::log_key(self.group, log_id.index);
        let to = db::log_key(self.group, u64::MAX);
        batch.delete_range_cf(self.db.cf(CF_LOG), from, to);
        let mut tail = self.tail();
        tail.truncate(log_id.index);
        self.db.write(batch).map_err(write_err)
    }

    /// Openraft purges only up to its latest snapshot, which the state
    /// machine writes before openraft learns of it; the WAL keeps writes in
    /// order, so no crash can keep this purge and lose that snapshot.
    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        let purged = db::encode(&log_id, "last purged log id").map_err(write_err)?;
        batch.put_cf(
            self.db.cf(CF_RAFT),
            db::tag_key(self.group, TAG_PURGED),
            purged,
        );
        let from = db::log_key(self.group, 0);
        let to = db::log_key(self.group, log_id.index.saturating_add(1));
        batch.delete_range_cf(self.db.cf(CF_LOG), from, to);
        let mut tail = self.tail();
        tail.purge(log_id.index);
        self.db.write(batch).map_err(write_err)
    }
}
