//! The replicated state machine of one group: the engine in memory, made
//! durable by the synced log plus periodic checkpoints in RocksDB.
//!
//! Applying writes nothing by itself: the log already holds every applied
//! entry. Every [`checkpoint_interval`] entries (1000, or one per 16
//! records of a larger state) the whole engine state is written (unsynced,
//! one write) as a checkpoint, and every snapshot is written too. On open,
//! the newer of the two is loaded and reported by `applied_state()`, and
//! openraft re-applies the committed log after it — so a restart replays
//! at most one interval of entries, never the whole log. Openraft purges
//! the log only up to its latest snapshot, which is on disk before the
//! purge, so the entries after whatever is loaded are there.

use std::io::Cursor;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};

use super::db::{self, DbError, RaftDb, CF_STATE, TAG_CHECKPOINT, TAG_SNAPSHOT};
use super::meta::SlotMap;
use super::types::{
    Entry, GroupId, LogId, Request, Response, Snapshot, SnapshotMeta, StorageError,
    StoredMembership, TypeConfig,
};
use crate::engine::{Engine, EngineConfig, MemStore};

/// Only a failed engine assertion, mid-apply, poisons a lock; the state it
/// left is not fit to read, so readers fail loudly too.
const POISONED: &str = "a panic in the state machine left its state inconsistent";

/// The fewest entries applied between two checkpoints.
pub const CHECKPOINT_INTERVAL_ENTRIES: u64 = 1000;

/// A checkpoint writes every record of the state, so a large state waits
/// for more entries between checkpoints: one entry per this many records.
/// That bounds a checkpoint's cost at this many records per applied entry,
/// and what a restart re-applies at the larger of
/// [`CHECKPOINT_INTERVAL_ENTRIES`] and the state's record count over this
/// (loading the checkpoint costs the whole record count anyway).
pub const CHECKPOINT_RECORDS_PER_ENTRY: u64 = 16;

/// Entries to apply between two checkpoints of a state of `records`.
pub fn checkpoint_interval(records: usize) -> u64 {
    CHECKPOINT_INTERVAL_ENTRIES.max(records as u64 / CHECKPOINT_RECORDS_PER_ENTRY)
}

/// A complete state of the group at one applied log id. Also the bytes of
/// a snapshot.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Checkpoint {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// [`MemStore::encode`].
    engine: Vec<u8>,
    /// The slot map (the metadata group; empty elsewhere).
    map: SlotMap,
}

/// A snapshot as kept in the `state` column family.
#[derive(Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    /// An encoded [`Checkpoint`].
    data: Vec<u8>,
}

/// [`StoredSnapshot`]'s encoding, without copying the data.
#[derive(Serialize)]
struct StoredSnapshotRef<'a> {
    meta: &'a SnapshotMeta,
    data: &'a [u8],
}

struct State {
    engine: Engine<MemStore>,
    /// Shared with every call that routes by it: replaced, never changed
    /// in place, when a map change applies.
    map: Arc<SlotMap>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

impl State {
    fn restore(checkpoint: Option<Checkpoint>, config: EngineConfig) -> Result<State, DbError> {
        let Some(ck) = checkpoint else {
            return Ok(State {
                engine: Engine::new(MemStore::new(), config),
                map: Arc::default(),
                last_applied: None,
                membership: StoredMembership::default(),
            });
        };
        let store = MemStore::decode(&ck.engine).map_err(|source| DbError::Decode {
            what: "engine state",
            source,
        })?;
        Ok(State {
            engine: Engine::new(store, config),
            map: Arc::new(ck.map),
            last_applied: ck.last_applied,
            membership: ck.membership,
        })
    }

    fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            engine: self.engine.store().encode(),
            map: SlotMap::clone(&self.map),
        }
    }

    fn apply(&mut self, entry: Entry) -> Response {
        self.last_applied = Some(entry.log_id);
        match entry.payload {
            EntryPayload::Blank => Response::default(),
            EntryPayload::Normal(Request::Engine {
                stamp_ms,
                quotas,
                commands,
            }) => Response {
                results: commands
                    .iter()
                    .map(|cmd| self.engine.apply_within(stamp_ms, &quotas, cmd))
                    .collect(),
            },
            EntryPayload::Normal(Request::Meta(cmd)) => {
                Arc::make_mut(&mut self.map).apply(&cmd);
                Response::default()
            }
            EntryPayload::Membership(membership) => {
                self.membership = StoredMembership::new(Some(entry.log_id), membership);
                Response::default()
            }
        }
    }
}

/// Read access to a group's engine from outside openraft, which owns the
/// [`StateMachine`] itself: for Check, Inspect and the scavenger's timer.
#[derive(Clone)]
pub struct EngineHandle(Arc<RwLock<State>>);

impl EngineHandle {
    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.0.read().expect(POISONED)
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.0.write().expect(POISONED)
    }

    /// Runs `f` on the engine as of the last applied entry.
    pub fn read<R>(&self, f: impl FnOnce(&Engine<MemStore>) -> R) -> R {
        f(&self.read_state().engine)
    }

    /// Runs `f` on the engine and returns it with the last applied log id
    /// it reflects, both read at one instant.
    pub fn read_with_position<R>(
        &self,
        f: impl FnOnce(&Engine<MemStore>) -> R,
    ) -> (Option<LogId>, R) {
        let state = self.read_state();
        (state.last_applied, f(&state.engine))
    }

    /// When the leader should next propose an `Expire`.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.read_state().engine.next_deadline_ms()
    }

    pub fn last_applied(&self) -> Option<LogId> {
        self.read_state().last_applied
    }

    /// The slot map as of the last applied entry (the metadata group).
    pub fn slot_map(&self) -> Arc<SlotMap> {
        Arc::clone(&self.read_state().map)
    }
}

/// Where the group's current snapshot lives. A snapshot build runs in its
/// own task, concurrently with applies and installs: it must never replace
/// a newer snapshot, or a restart would load state older than the purged log.
struct SnapshotSlot {
    db: Arc<RaftDb>,
    group: GroupId,
    /// The current snapshot's last log id; the lock orders the writes.
    current: Mutex<Option<LogId>>,
}

impl SnapshotSlot {
    /// Stores the snapshot if it is newer than the current one (or,
    /// `replace`, always), with `batch`'s other writes.
    fn store(
        &self,
        meta: &SnapshotMeta,
        data: &[u8],
        mut batch: WriteBatch,
        replace: bool,
    ) -> Result<(), DbError> {
        let mut current = self.current.lock().expect(POISONED);
        if !replace && current.is_some() && *current >= meta.last_log_id {
            return Ok(());
        }
        let stored = StoredSnapshotRef { meta, data };
        let bytes = db::encode(&stored, "snapshot")?;
        batch.put_cf(
            self.db.cf(CF_STATE),
            db::tag_key(self.group, TAG_SNAPSHOT),
            bytes,
        );
        self.db.write(batch)?;
        *current = meta.last_log_id;
        Ok(())
    }

    fn load(&self) -> Result<Option<StoredSnapshot>, DbError> {
        let key = db::tag_key(self.group, TAG_SNAPSHOT);
        self.db.get(CF_STATE, &key, "snapshot")
    }
}

/// The state machine of one group.
pub struct StateMachine {
    db: Arc<RaftDb>,
    group: GroupId,
    state: EngineHandle,
    snapshots: Arc<SnapshotSlot>,
    applied_since_checkpoint: u64,
}

fn read_err(e: DbError) -> StorageError {
    StorageIOError::read_state_machine(AnyError::new(&e)).into()
}

fn write_err(e: DbError) -> StorageError {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

fn snapshot_err(meta: Option<&SnapshotMeta>, e: DbError) -> StorageError {
    StorageIOError::write_snapshot(meta.map(SnapshotMeta::signature), AnyError::new(&e)).into()
}

impl StateMachine {
    /// Opens the group's state: the newer of its checkpoint and snapshot.
    pub fn open(db: Arc<RaftDb>, group: GroupId, config: EngineConfig) -> Result<Self, DbError> {
        let snapshots = Arc::new(SnapshotSlot {
            db: Arc::clone(&db),
            group,
            current: Mutex::new(None),
        });
        let snapshot = snapshots.load()?;
        let from_snapshot = match &snapshot {
            Some(s) => Some(db::decode::<Checkpoint>(&s.data, "snapshot data")?),
            None => None,
        };
        let key = db::tag_key(group, TAG_CHECKPOINT);
        let checkpoint: Option<Checkpoint> = db.get(CF_STATE, &key, "checkpoint")?;
        let latest = [checkpoint, from_snapshot]
            .into_iter()
            .flatten()
            .max_by_key(|ck| ck.last_applied);
        let state = State::restore(latest, config)?;
        *snapshots.current.lock().expect(POISONED) = snapshot.and_then(|s| s.meta.last_log_id);
        Ok(StateMachine {
            db,
            group,
            state: EngineHandle(Arc::new(RwLock::new(state))),
            snapshots,
            applied_since_checkpoint: 0,
        })
    }

    pub fn group(&self) -> GroupId {
        self.group
    }

    /// A handle for reading the engine while openraft owns the machine.
    pub fn handle(&self) -> EngineHandle {
        self.state.clone()
    }

    fn save_checkpoint(&mut self) -> Result<(), DbError> {
        let checkpoint = self.state.read_state().checkpoint();
        let mut batch = WriteBatch::default();
        let bytes = db::encode(&checkpoint, "checkpoint")?;
        batch.put_cf(
            self.db.cf(CF_STATE),
            db::tag_key(self.group, TAG_CHECKPOINT),
            bytes,
        );
        self.db.write(batch)?;
        self.applied_since_checkpoint = 0;
        tracing::debug!(group = self.group, last_applied = ?checkpoint.last_applied, "checkpoint");
        Ok(())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let state = self.state.read_state();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let (responses, records) = {
            let mut state = self.state.write_state();
            let responses: Vec<Response> = entries
                .into_iter()
                .map(|entry| state.apply(entry))
                .collect();
            (responses, state.engine.store().record_count())
        };
        self.applied_since_checkpoint += responses.len() as u64;
        if self.applied_since_checkpoint >= checkpoint_interval(records) {
            self.save_checkpoint().map_err(write_err)?;
        }
        Ok(responses)
    }

    /// Captures the state now, on the apply path, so the build that runs
    /// later in its own task sees exactly one applied log id.
    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            checkpoint: self.state.read_state().checkpoint(),
            group: self.group,
            snapshots: Arc::clone(&self.snapshots),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let checkpoint: Checkpoint =
            db::decode(&data, "snapshot data").map_err(|e| snapshot_err(Some(meta), e))?;
        if checkpoint.last_applied != meta.last_log_id
            || checkpoint.membership != meta.last_membership
        {
            let e = AnyError::error("snapshot data disagrees with its meta");
            return Err(StorageIOError::read_snapshot(Some(meta.signature()), e).into());
        }
        let config = self.state.read_state().engine.config();
        let state = State::restore(Some(checkpoint), config).map_err(read_err)?;
        // An older checkpoint must not outlive the install: loading it on
        // restart would need entries the snapshot lets openraft purge.
        let mut batch = WriteBatch::default();
        batch.delete_cf(
            self.db.cf(CF_STATE),
            db::tag_key(self.group, TAG_CHECKPOINT),
        );
        self.snapshots
            .store(meta, &data, batch, true)
            .map_err(|e| snapshot_err(Some(meta), e))?;
        *self.state.write_state() = state;
        self.applied_since_checkpoint = 0;
        metrics::counter!("leasehold_snapshots_installed_total", "group" => self.group.to_string())
            .increment(1);
        tracing::info!(group = self.group, snapshot = %meta.snapshot_id, "installed a snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let stored = self.snapshots.load().map_err(read_err)?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

/// Builds a snapshot of the state captured when it was made.
pub struct SnapshotBuilder {
    checkpoint: Checkpoint,
    group: GroupId,
    snapshots: Arc<SnapshotSlot>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let ck = &self.checkpoint;
        // Two snapshots at one log id hold the same state, so the id need
        // not be unique beyond it.
        let snapshot_id = match &ck.last_applied {
            Some(id) => format!("{}-{}", self.group, id),
            None => format!("{}-empty", self.group),
        };
        let meta = SnapshotMeta {
            last_log_id: ck.last_applied,
            last_membership: ck.membership.clone(),
            snapshot_id,
        };
        let data = db::encode(ck, "snapshot data").map_err(|e| snapshot_err(Some(&meta), e))?;
        self.snapshots
            .store(&meta, &data, WriteBatch::default(), false)
            .map_err(|e| snapshot_err(Some(&meta), e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}
