//! WAL recovery after a crash or power cut: what was synced survives, what
//! was not may go (as a prefix-keeping cut), and damage to synced records
//! refuses to open instead of silently dropping them.
//!
//! A crash is simulated by copying the files of an open, idle database:
//! what the disk would hold, page cache included. A power cut is then
//! simulated by cutting the copy's WAL back to its synced length, or by
//! tearing or zero-filling what follows.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader, Vote};
use rocksdb::{ColumnFamilyDescriptor, DBRecoveryMode, Options, WriteBatch};
use tempfile::TempDir;

use super::db::{self, CF_LOG, CF_RAFT, TAG_VOTE};
use super::types::{Entry, GroupId, LogId, NodeId};
use super::{LogStore, RaftDb};

const GROUP: GroupId = 3;

/// RocksDB's WAL block and record header sizes (legacy, non-recycled).
const WAL_BLOCK: u64 = 32 * 1024;
const WAL_HEADER: u64 = 7;

fn blank(index: u64) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Blank,
    }
}

/// Writes entries straight into RocksDB, unsynced, one write each.
fn append_unsynced(db: &RaftDb, indexes: std::ops::RangeInclusive<u64>) {
    for index in indexes {
        let mut batch = WriteBatch::default();
        let bytes = db::encode(&blank(index), "log entry").unwrap();
        batch.put_cf(db.cf(CF_LOG), db::log_key(GROUP, index), bytes);
        db.write(batch).unwrap();
    }
}

/// The one WAL file of `dir`, by the name RocksDB gives WALs.
fn wal_files(dir: &Path) -> Vec<PathBuf> {
    let mut wals: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    wals.sort();
    wals
}

fn the_wal(dir: &Path) -> PathBuf {
    let wals = wal_files(dir);
    assert_eq!(
        wals.len(),
        1,
        "expected one WAL in {}: {wals:?}",
        dir.display()
    );
    wals[0].clone()
}

fn len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// A copy of every file of `dir`, as a crash would leave them.
fn crash_copy(dir: &Path) -> TempDir {
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() && entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
        }
    }
    copy
}

fn cut(path: &Path, to: u64) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.set_len(to).unwrap();
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(bytes).unwrap();
}

/// The indexes of the group's log, and its vote, read through a fresh
/// open of `dir`.
async fn reopen(dir: &Path) -> Result<(Vec<u64>, Option<Vote<NodeId>>), String> {
    let db = RaftDb::open(dir).map_err(|e| e.to_string())?;
    let mut log = LogStore::new(Arc::clone(&db), GROUP);
    let entries = log.try_get_log_entries(..).await.unwrap();
    let vote = log.read_vote().await.unwrap();
    Ok((entries.iter().map(|e| e.log_id.index).collect(), vote))
}

/// A database with entries 1..=10 and a vote synced, then entries
/// 11..=20 written unsynced; and the WAL's synced length.
async fn synced_then_unsynced() -> (TempDir, Arc<RaftDb>, u64) {
    let dir = tempfile::tempdir().unwrap();
    let db = RaftDb::open(dir.path()).unwrap();
    let mut log = LogStore::new(Arc::clone(&db), GROUP);
    for index in 1..=10 {
        log.blocking_append([blank(index)]).await.unwrap();
    }
    log.save_vote(&Vote::new(4, 2)).await.unwrap();
    let synced = len(&the_wal(dir.path()));
    append_unsynced(&db, 11..=20);
    assert!(
        len(&the_wal(dir.path())) > synced,
        "expected the unsynced writes in the WAL's page cache"
    );
    (dir, db, synced)
}

#[tokio::test]
async fn a_power_cut_past_the_last_sync_keeps_every_synced_write_and_a_prefix() {
    let (dir, _db, synced) = synced_then_unsynced().await;
    let wal_bytes = std::fs::read(the_wal(dir.path())).unwrap();
    let full = wal_bytes.len() as u64;
    let unsynced: Vec<(u64, u64)> = wal_records(&wal_bytes)
        .into_iter()
        .filter(|(at, _)| *at >= synced)
        .collect();
    assert!(
        unsynced.len() >= 2,
        "expected unsynced records: {unsynced:?}"
    );
    // An unsynced record in the middle, cut half-way through its body.
    let (torn_at, torn_len) = unsynced[unsynced.len() / 2];
    let torn_body = torn_at + WAL_HEADER;
    let torn_cut = torn_body + torn_len / 2;
    assert!(
        synced % WAL_BLOCK + WAL_HEADER + 200 < WAL_BLOCK,
        "expected room for a torn record in the WAL's last block"
    );
    type Damage = Box<dyn Fn(&Path)>;
    let variants: Vec<(&str, Damage)> = vec![
        (
            "cut at the synced length",
            Box::new(move |wal| cut(wal, synced)),
        ),
        (
            "cut mid-way through an unsynced record",
            Box::new(move |wal| cut(wal, torn_cut)),
        ),
        (
            "cut mid-way through an unsynced record, its body garbage",
            Box::new(move |wal| {
                cut(wal, torn_body);
                append_bytes(wal, &vec![0xA5; (torn_cut - torn_body) as usize]);
            }),
        ),
        (
            "grown by zeros that never landed",
            Box::new(move |wal| {
                cut(wal, synced);
                append_bytes(wal, &[0; 4096]);
            }),
        ),
        (
            "a torn record: a header, part of its body, garbage",
            Box::new(move |wal| {
                cut(wal, synced);
                let mut torn = vec![0xC3, 0x5A, 0x0F, 0x77];
                torn.extend(200u16.to_le_bytes());
                torn.push(1); // a full record, 200 bytes long
                torn.extend([0x5A; 50]);
                append_bytes(wal, &torn);
            }),
        ),
        (
            "nothing lost",
            Box::new(move |wal| assert_eq!(len(wal), full)),
        ),
    ];
    for (name, damage) in variants {
        let copy = crash_copy(dir.path());
        damage(&the_wal(copy.path()));
        let (indexes, vote) = reopen(copy.path())
            .await
            .unwrap_or_else(|e| panic!("{name}: expected the database to open, got: {e}"));
        assert_eq!(vote, Some(Vote::new(4, 2)), "{name}: the synced vote");
        let last = indexes.len() as u64;
        assert!(
            (10..=20).contains(&last) && indexes == (1..=last).collect::<Vec<_>>(),
            "{name}: expected entries 1..=k for 10 <= k <= 20, got {indexes:?}"
        );
        let expected = match name {
            "cut at the synced length" => Some(10),
            "nothing lost" => Some(20),
            _ => None,
        };
        if let Some(expected) = expected {
            assert_eq!(last, expected, "{name}");
        }
    }
}

/// The WAL's records: (offset, body length), in order.
fn wal_records(bytes: &[u8]) -> Vec<(u64, u64)> {
    let mut records = Vec::new();
    let mut at = 0u64;
    while at + WAL_HEADER <= bytes.len() as u64 {
        if WAL_BLOCK - at % WAL_BLOCK < WAL_HEADER {
            at += WAL_BLOCK - at % WAL_BLOCK;
            continue;
        }
        let header = &bytes[at as usize..(at + WAL_HEADER) as usize];
        let length = u64::from(u16::from_le_bytes([header[4], header[5]]));
        if length == 0 && header[6] == 0 {
            break;
        }
        records.push((at, length));
        at += WAL_HEADER + length;
    }
    records
}

/// Flips one byte in the middle of the body of the WAL record that
/// `pick` chooses among them all.
fn corrupt_a_record(wal: &Path, pick: impl Fn(&[(u64, u64)]) -> (u64, u64)) {
    let mut bytes = std::fs::read(wal).unwrap();
    let records = wal_records(&bytes);
    assert!(records.len() >= 10, "expected 10+ records: {records:?}");
    let (at, length) = pick(&records);
    let byte = (at + WAL_HEADER + length / 2) as usize;
    bytes[byte] ^= 0x40;
    std::fs::write(wal, bytes).unwrap();
}

/// Opens `dir` with plain RocksDB, as [`RaftDb`] would but with the given
/// recovery settings; returns how many log entries and whether a vote it
/// recovered.
fn open_raw(dir: &Path, mode: DBRecoveryMode, track_wals: bool) -> Result<(usize, bool), String> {
    let mut opts = Options::default();
    opts.set_wal_recovery_mode(mode);
    opts.set_track_and_verify_wals_in_manifest(track_wals);
    let cfs = [CF_LOG, CF_RAFT, db::CF_STATE]
        .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    let raw = rocksdb::DB::open_cf_descriptors(&opts, dir, cfs).map_err(|e| e.to_string())?;
    let log = raw.cf_handle(CF_LOG).unwrap();
    let entries = raw.iterator_cf(log, rocksdb::IteratorMode::Start).count();
    let raft = raw.cf_handle(CF_RAFT).unwrap();
    let vote = raw
        .get_cf(raft, db::tag_key(GROUP, TAG_VOTE))
        .unwrap()
        .is_some();
    Ok((entries, vote))
}

#[tokio::test]
async fn a_corrupt_synced_record_refuses_to_open_where_point_in_time_would_drop_the_rest() {
    let (dir, _db, synced) = synced_then_unsynced().await;
    type Pick = fn(&[(u64, u64)]) -> (u64, u64);
    let picks: [(&str, Pick); 2] = [
        ("a record in the middle", |records| {
            records[records.len() / 2]
        }),
        // Complete, but bad: it cannot be told from a torn write, nor from
        // the synced vote gone bad, which it is.
        ("the last record, the vote", |records| {
            records[records.len() - 1]
        }),
    ];
    for (name, pick) in picks {
        let copy = crash_copy(dir.path());
        let wal = the_wal(copy.path());
        cut(&wal, synced);
        corrupt_a_record(&wal, pick);
        let aside = crash_copy(copy.path());

        let error = reopen(copy.path())
            .await
            .expect_err("expected a corrupt synced WAL record to refuse the open");
        assert!(error.contains("Corruption"), "{name}: {error}");

        // The choice this guards: RocksDB's default mode opens the same
        // files without complaint, without the synced vote.
        let (entries, vote) = open_raw(aside.path(), DBRecoveryMode::PointInTime, true)
            .expect("point-in-time recovery opens");
        assert!(
            entries <= 10 && !vote,
            "{name}: expected point-in-time recovery to drop synced writes from the \
             corruption on, got {entries} entries, vote {vote}"
        );
    }
}

#[tokio::test]
async fn a_closed_wal_cut_short_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let db = RaftDb::open(dir.path()).unwrap();
    let mut log = LogStore::new(Arc::clone(&db), GROUP);
    log.blocking_append((1..=5).map(blank)).await.unwrap();
    log.save_vote(&Vote::new(4, 2)).await.unwrap();
    // Flushing the log's column family alone starts a new WAL; the old
    // one stays, closed, for the vote still only there.
    let first = the_wal(dir.path());
    db.rocks().flush_cf(db.cf(CF_LOG)).unwrap();
    log.blocking_append((6..=8).map(blank)).await.unwrap();
    assert_eq!(wal_files(dir.path()).len(), 2, "expected a closed WAL kept");

    // Cut the closed WAL at a record boundary: its last record, the vote.
    let copy = crash_copy(dir.path());
    let closed = copy.path().join(first.file_name().unwrap());
    let records = wal_records(&std::fs::read(&closed).unwrap());
    let (last_record, _) = *records.last().unwrap();
    cut(&closed, last_record);
    let aside = crash_copy(copy.path());

    let error = reopen(copy.path())
        .await
        .expect_err("expected a synced closed WAL cut short to refuse the open");
    assert!(error.contains("Corruption"), "{error}");

    // Without tracking, the cut looks like a torn tail and the vote is
    // silently gone.
    let (_, vote) = open_raw(
        aside.path(),
        DBRecoveryMode::TolerateCorruptedTailRecords,
        false,
    )
    .expect("opens without WAL tracking");
    assert!(
        !vote,
        "expected the cut vote to be lost without WAL tracking"
    );
}
