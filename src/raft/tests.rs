//! Storage tests: openraft's own suite, group isolation, group commit,
//! restart from log, checkpoint and snapshot.

use std::collections::BTreeSet;
use std::sync::Arc;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    AnyError, CommittedLeaderId, EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder,
    StorageHelper, StorageIOError, Vote,
};
use tempfile::TempDir;

use super::log_store::LOG_TAIL_ENTRIES;
use super::state_machine::{checkpoint_interval, CHECKPOINT_INTERVAL_ENTRIES};
use super::types::{Entry, LogId, StorageError};
use super::{GroupId, LogStore, RaftDb, Request, Response, StateMachine};
use crate::engine::{
    AcquireRequest, Attempt, Command, Constraint, Engine, EngineConfig, Kind, MemStore, Outcome,
    Quotas, ReleaseRequest,
};

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn blank(term: u64, index: u64) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Blank,
    }
}

fn membership(term: u64, index: u64) -> Entry {
    let voters = BTreeSet::from([1, 2, 3]);
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Membership(Membership::new(vec![voters], None)),
    }
}

fn normal(term: u64, index: u64, stamp_ms: u64, commands: Vec<Command>) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Request::Engine {
            stamp_ms,
            quotas: Quotas::default(),
            commands: commands.into(),
        }),
    }
}

fn acquire(key: &str, idempotency_key: &str) -> Command {
    Command::Acquire(AcquireRequest {
        scope: "acct".into(),
        constraints: vec![Constraint::Concurrency {
            key: key.into(),
            limit: 2,
        }],
        amount: 1,
        min_amount: None,
        lease_ttl_ms: 3_600_000,
        max_lifetime_ms: None,
        idempotency_key: idempotency_key.into(),
        attempt: Attempt::Final,
    })
}

/// A release of the `n`-th lease granted in scope `acct`.
fn release(n: u64, idempotency_key: &str) -> Command {
    let slot = crate::slot::slot_of("acct", EngineConfig::default().slot_count);
    Command::Release(ReleaseRequest {
        scope: "acct".into(),
        lease_id: crate::slot::lease_id(slot, n),
        idempotency_key: idempotency_key.into(),
    })
}

fn open(dir: &TempDir, group: GroupId) -> (Arc<RaftDb>, LogStore, StateMachine) {
    let db = RaftDb::open(dir.path()).expect("open db");
    let log = LogStore::new(Arc::clone(&db), group);
    let sm = StateMachine::open(Arc::clone(&db), group, EngineConfig::default()).expect("open sm");
    (db, log, sm)
}

/// Each suite case gets a fresh database holding group 7; the dir goes
/// with the guard.
struct Builder;

impl StoreBuilder<super::TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let err = |e: &dyn std::error::Error| StorageIOError::write(AnyError::error(e));
        let dir = tempfile::tempdir().map_err(|e| err(&e))?;
        let db = RaftDb::open(dir.path()).map_err(|e| err(&e))?;
        let log = LogStore::new(Arc::clone(&db), 7);
        let sm = StateMachine::open(db, 7, EngineConfig::default()).map_err(|e| err(&e))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("openraft storage suite");
}

#[test]
fn responses_round_trip_with_engine_errors() {
    let mut engine = Engine::new(MemStore::new(), EngineConfig::default());
    let response = Response {
        results: vec![
            engine.apply(10, &acquire("a", "1")),
            engine.apply(20, &release(99, "2")),
        ],
    };
    assert!(response.results[0].is_ok() && response.results[1].is_err());
    let bytes = postcard::to_stdvec(&response).unwrap();
    let decoded: Response = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(decoded, response);
}

#[tokio::test]
async fn groups_sharing_a_db_are_isolated() {
    let dir = tempfile::tempdir().unwrap();
    let db = RaftDb::open(dir.path()).unwrap();
    let mut one = LogStore::new(Arc::clone(&db), 1);
    let mut two = LogStore::new(Arc::clone(&db), 2);

    one.blocking_append((1..=5).map(|i| blank(1, i)))
        .await
        .unwrap();
    one.save_vote(&Vote::new(3, 1)).await.unwrap();
    one.save_committed(Some(log_id(1, 4))).await.unwrap();
    let state = two.get_log_state().await.unwrap();
    assert_eq!((state.last_purged_log_id, state.last_log_id), (None, None));
    assert_eq!(two.read_vote().await.unwrap(), None);
    assert_eq!(two.read_committed().await.unwrap(), None);
    assert!(two.try_get_log_entries(..).await.unwrap().is_empty());

    two.blocking_append((1..=3).map(|i| blank(2, i)))
        .await
        .unwrap();
    two.truncate(log_id(2, 2)).await.unwrap();
    one.purge(log_id(1, 2)).await.unwrap();

    let ones = one.try_get_log_entries(..).await.unwrap();
    let indexes: Vec<u64> = ones.iter().map(|e| e.log_id.index).collect();
    assert_eq!(indexes, [3, 4, 5]);
    let twos = two.try_get_log_entries(0..100).await.unwrap();
    assert_eq!(
        twos.iter().map(|e| e.log_id).collect::<Vec<_>>(),
        [log_id(2, 1)]
    );
    let state = one.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 2)));
    assert_eq!(state.last_log_id, Some(log_id(1, 5)));
    assert_eq!(one.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
    assert_eq!(two.read_vote().await.unwrap(), None);
}

/// The in-memory tail and RocksDB agree on every read, across appends
/// past the tail's size, a truncation with entries of a new term, and a
/// purge: reads inside the tail and reads that reach past it alike.
#[tokio::test]
async fn the_log_tail_reads_as_rocksdb_does() {
    let dir = tempfile::tempdir().unwrap();
    let db = RaftDb::open(dir.path()).unwrap();
    let mut log = LogStore::new(Arc::clone(&db), 5);
    let total = LOG_TAIL_ENTRIES as u64 + 50;
    log.blocking_append((1..=total).map(|i| blank(1, i)))
        .await
        .unwrap();
    log.truncate(log_id(1, total - 10)).await.unwrap();
    log.blocking_append((total - 10..=total).map(|i| blank(2, i)))
        .await
        .unwrap();
    log.purge(log_id(1, 20)).await.unwrap();

    // A store without a tail reads RocksDB alone.
    let mut cold = LogStore::new(db, 5);
    for (start, end) in [
        (21, 30),
        (21, total + 1),
        (total - 20, total + 1),
        (total, total + 1),
    ] {
        let warm = log.try_get_log_entries(start..end).await.unwrap();
        let from_disk = cold.try_get_log_entries(start..end).await.unwrap();
        let ids = |es: &[Entry]| es.iter().map(|e| e.log_id).collect::<Vec<_>>();
        assert_eq!(ids(&warm), ids(&from_disk), "entries {start}..{end}");
        assert_eq!(warm.len() as u64, end - start, "entries {start}..{end}");
    }
    let last = log.try_get_log_entries(total..=total).await.unwrap();
    assert_eq!(last[0].log_id, log_id(2, total));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_groups_share_fsyncs() {
    const GROUPS: u32 = 8;
    const APPENDS: u64 = 25;
    let dir = tempfile::tempdir().unwrap();
    let db = RaftDb::open(dir.path()).unwrap();
    let tasks: Vec<_> = (0..GROUPS)
        .map(|group| {
            let mut log = LogStore::new(Arc::clone(&db), group);
            tokio::spawn(async move {
                for i in 1..=APPENDS {
                    log.blocking_append([blank(1, 2 * i - 1), blank(1, 2 * i)])
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let counts = db.sync_counts();
    let appends = u64::from(GROUPS) * APPENDS;
    assert_eq!(counts.requests, appends);
    assert_eq!(counts.entries, 2 * appends);
    assert!(
        counts.fsyncs < appends,
        "{} fsyncs for {appends} appends",
        counts.fsyncs
    );
}

/// The committed id saved for one group, as the database holds it (not
/// the in-memory copy).
fn stored_committed(db: &RaftDb, group: GroupId) -> Option<LogId> {
    db.get(
        super::db::CF_RAFT,
        &super::db::tag_key(group, super::db::TAG_COMMITTED),
        "committed log id",
    )
    .unwrap()
}

#[tokio::test]
async fn a_committed_id_rides_with_the_next_write_and_is_written_on_close() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (db, mut log, _sm) = open(&dir, 1);
        let mut other = LogStore::new(Arc::clone(&db), 2);
        log.blocking_append((1..=3).map(|i| blank(1, i)))
            .await
            .unwrap();
        log.save_committed(Some(log_id(1, 2))).await.unwrap();
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 2)));
        assert_eq!(stored_committed(&db, 1), None, "not written on its own");

        // Any group's next write carries it.
        other.blocking_append([blank(1, 1)]).await.unwrap();
        assert_eq!(stored_committed(&db, 1), Some(log_id(1, 2)));
        assert_eq!(stored_committed(&db, 2), None);

        log.save_committed(Some(log_id(1, 3))).await.unwrap();
        assert_eq!(stored_committed(&db, 1), Some(log_id(1, 2)));
    }
    // Closing the database writes the last one.
    let (db, mut log, _sm) = open(&dir, 1);
    assert_eq!(stored_committed(&db, 1), Some(log_id(1, 3)));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 3)));
}

/// Appends `entries` to the log, commits and applies them.
async fn commit_and_apply(log: &mut LogStore, sm: &mut StateMachine, entries: Vec<Entry>) {
    let last = entries.last().expect("entries").log_id;
    log.blocking_append(entries.clone()).await.unwrap();
    log.save_committed(Some(last)).await.unwrap();
    sm.apply(entries).await.unwrap();
}

/// Reopens the database as a restarting node does: openraft re-applies the
/// committed log after the state machine's persisted applied id.
async fn restart(dir: &TempDir, group: GroupId) -> (LogStore, StateMachine, Option<LogId>) {
    let (_db, mut log, mut sm) = open(dir, group);
    let (persisted, _) = sm.applied_state().await.unwrap();
    StorageHelper::new(&mut log, &mut sm)
        .get_initial_state()
        .await
        .unwrap();
    (log, sm, persisted)
}

#[tokio::test]
async fn restart_replays_the_log_to_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let (before, lease_id) = {
        let (_db, mut log, mut sm) = open(&dir, 3);
        log.save_vote(&Vote::new(1, 1)).await.unwrap();
        let entries = vec![
            membership(1, 0),
            normal(1, 1, 1_000, vec![acquire("jobs", "a1")]),
            normal(1, 2, 1_500, vec![acquire("jobs", "a2"), release(2, "r2")]),
        ];
        let last = entries.last().unwrap().log_id;
        log.blocking_append(entries.clone()).await.unwrap();
        log.save_committed(Some(last)).await.unwrap();
        let responses = sm.apply(entries).await.unwrap();
        let lease_id = match &responses[1].results[0] {
            Ok(applied) => match &applied.outcome {
                Outcome::Granted(grant) => grant.lease_id,
                other => panic!("not granted: {other:?}"),
            },
            Err(e) => panic!("acquire failed: {e}"),
        };
        assert_eq!(responses[2].results.len(), 2);
        let handle = sm.handle();
        (
            (
                sm.applied_state().await.unwrap(),
                handle.read(|e| e.store().digest()),
            ),
            lease_id,
        )
    };

    let (_log, mut sm, persisted) = restart(&dir, 3).await;
    assert_eq!(persisted, None, "no checkpoint yet: the whole log replays");
    let after = (
        sm.applied_state().await.unwrap(),
        sm.handle().read(|e| e.store().digest()),
    );
    assert_eq!(after, before);
    let holders = sm
        .handle()
        .read(|e| e.inspect("acct", Kind::Concurrency, "jobs", 2_000))
        .unwrap()
        .holders;
    assert_eq!(
        holders.iter().map(|h| h.lease_id).collect::<Vec<_>>(),
        [lease_id]
    );
    assert!(sm.handle().next_deadline_ms().is_some());
}

#[tokio::test]
async fn restart_loads_the_checkpoint_then_replays() {
    let dir = tempfile::tempdir().unwrap();
    let total = CHECKPOINT_INTERVAL_ENTRIES + 37;
    let before = {
        let (_db, mut log, mut sm) = open(&dir, 4);
        // Applied in batches of 50, as openraft would.
        let entries: Vec<Entry> = (0..total)
            .map(|i| {
                normal(
                    1,
                    i,
                    1_000 + i,
                    vec![acquire(&format!("k{}", i % 7), &i.to_string())],
                )
            })
            .collect();
        for chunk in entries.chunks(50) {
            commit_and_apply(&mut log, &mut sm, chunk.to_vec()).await;
        }
        sm.handle().read(|e| e.store().digest())
    };

    let (_log, sm, persisted) = restart(&dir, 4).await;
    let persisted = persisted.expect("a checkpoint").index;
    // Indexes start at 0: index `i` is the `i + 1`-th entry.
    assert!(persisted + 1 >= CHECKPOINT_INTERVAL_ENTRIES && persisted + 1 < total);
    assert_eq!(sm.handle().last_applied(), Some(log_id(1, total - 1)));
    assert_eq!(sm.handle().read(|e| e.store().digest()), before);
}

/// A state of 18,000 records waits 18,000 / 16 = 1,125 entries between
/// checkpoints, not 1,000.
#[tokio::test]
async fn a_large_state_checkpoints_less_often() {
    let dir = tempfile::tempdir().unwrap();
    let big = 6_000;
    let interval = checkpoint_interval(3 * big);
    assert_eq!(interval, 1_125);
    // Twelve entries of 500 acquires on keys of their own (a key, a lease
    // and an idempotency record each), then blanks.
    let entries = |from: u64, to: u64| -> Vec<Entry> {
        (from..to)
            .map(|i| {
                if i < 12 {
                    let commands = (0..500)
                        .map(|j| {
                            let n = i * 500 + j;
                            acquire(&format!("k{n}"), &format!("i{n}"))
                        })
                        .collect();
                    normal(1, i, 1_000 + i, commands)
                } else {
                    blank(1, i)
                }
            })
            .collect()
    };
    let (dir, entries) = (&dir, &entries);
    let apply = |from: u64, to: u64| async move {
        let (_db, mut log, mut sm) = open(dir, 6);
        if from > 0 {
            let mut helper = StorageHelper::new(&mut log, &mut sm);
            helper.get_initial_state().await.unwrap();
        }
        for chunk in entries(from, to).chunks(50) {
            commit_and_apply(&mut log, &mut sm, chunk.to_vec()).await;
        }
    };
    apply(0, 1_100).await;
    let (_log, sm, persisted) = restart(dir, 6).await;
    assert_eq!(persisted, None, "1,100 entries: no checkpoint yet");
    assert_eq!(sm.handle().read(|e| e.store().record_count()), 3 * big);
    drop((_log, sm));

    apply(1_100, 1_200).await;
    let (_log, _sm, persisted) = restart(dir, 6).await;
    let persisted = persisted.expect("a checkpoint after 1,125 entries").index;
    assert!(
        (interval - 1..1_200).contains(&persisted),
        "checkpoint at index {persisted}"
    );
}

#[tokio::test]
async fn restart_from_a_snapshot_after_purge() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let (_db, mut log, mut sm) = open(&dir, 5);
        let first = vec![membership(1, 0), normal(1, 1, 10, vec![acquire("a", "1")])];
        commit_and_apply(&mut log, &mut sm, first).await;
        let mut stale = sm.get_snapshot_builder().await;
        let second = vec![normal(1, 2, 20, vec![acquire("a", "2")]), blank(2, 3)];
        commit_and_apply(&mut log, &mut sm, second).await;
        let snapshot = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(2, 3)));
        // A build captured earlier finishing later keeps the newer snapshot.
        stale.build_snapshot().await.unwrap();
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, snapshot.meta);
        log.purge(log_id(2, 3)).await.unwrap();
        commit_and_apply(
            &mut log,
            &mut sm,
            vec![normal(2, 4, 30, vec![acquire("b", "3")])],
        )
        .await;
        sm.handle().read(|e| e.store().digest())
    };

    let (_log, mut sm, persisted) = restart(&dir, 5).await;
    assert_eq!(persisted, Some(log_id(2, 3)));
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(2, 4)));
    assert_eq!(sm.handle().read(|e| e.store().digest()), before);
}

#[tokio::test]
async fn installed_snapshot_replaces_state_and_survives_restart() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let (_db, mut log, mut leader) = open(&leader_dir, 6);
    let entries = vec![membership(1, 0), normal(1, 1, 10, vec![acquire("a", "1")])];
    commit_and_apply(&mut log, &mut leader, entries).await;
    let snapshot = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let digest = leader.handle().read(|e| e.store().digest());
    {
        let (_db, mut flog, mut follower) = open(&follower_dir, 6);
        // The follower's own, older state is replaced.
        commit_and_apply(&mut flog, &mut follower, vec![blank(1, 0)]).await;
        follower
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        assert_eq!(follower.handle().read(|e| e.store().digest()), digest);
    }
    let (_db, _log, mut follower) = open(&follower_dir, 6);
    assert_eq!(
        follower.applied_state().await.unwrap().0,
        Some(log_id(1, 1))
    );
    assert_eq!(follower.handle().read(|e| e.store().digest()), digest);
}
