//! The storage test seam: storage operations that fail on demand, and a
//! record of what each WAL sync made durable. For fault-injection and
//! power-loss tests only; a production node has neither.
//!
//! A node started with `--unsafe-test-storage-faults PATH` follows the
//! fault file at `PATH`, re-read every [`FAULT_FILE_POLL`]. Its words, on
//! one line or several:
//!
//! ```text
//! fsync=eio write=enospc read=eio once
//! ```
//!
//! - `fsync`, `write`, `read`: the operation fails with that error
//!   (`eio`: "Input/output error", `enospc`: "No space left on device")
//!   instead of reaching RocksDB. `fsync` is the WAL sync, `write` any
//!   RocksDB write (and memtable flush), `read` any RocksDB read.
//! - `fsync=hang`: every WAL sync waits while the file says so, then goes
//!   on. Writes pile up unsynced and unacknowledged meanwhile: the moment
//!   a power cut catches.
//! - `once`: each named error fires once, then the operation works again,
//!   as a real fsync error is reported once. Without it an error lasts
//!   while the file names it, as a full disk stays full.
//! - A missing or empty file injects nothing. A change of the file
//!   replaces what it said before, and re-arms `once` faults.
//!
//! Once the node has armed what the file says, it writes the same text to
//! [`applied_path`] (`PATH.applied`), so a test knows when its faults
//! are in force.
//!
//! The same node also keeps, in its data directory, the file
//! [`WAL_SYNC_RECORD`]: after every successful WAL sync, and before
//! anyone is told of it, the name and length of each WAL file as they were
//! just before the sync, so the bytes up to there are durable. A
//! power-loss test truncates each WAL file to its recorded length after
//! killing the node: what a power cut keeps, at the least.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often a fault file is re-read.
pub const FAULT_FILE_POLL: Duration = Duration::from_millis(50);

/// How often a hung operation looks whether it may go on.
const HANG_POLL: Duration = Duration::from_millis(5);

/// The WAL sync record's file name, in the data directory.
pub const WAL_SYNC_RECORD: &str = "wal-synced.unsafe-test";

/// A storage operation a fault can be injected into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOp {
    Fsync,
    Write,
    Read,
}

/// What an operation does instead of its work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Fails with this OS error.
    Fail(i32),
    /// Waits until the fault is cleared (the WAL sync only).
    Hang,
}

/// What a fault file says: for each operation, its fault, if any.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultPlan {
    pub fsync: Option<Fault>,
    pub write: Option<Fault>,
    pub read: Option<Fault>,
    pub once: bool,
}

impl FaultPlan {
    /// Parses a fault file's text; empty text injects nothing.
    pub fn parse(text: &str) -> Result<FaultPlan, String> {
        let mut plan = FaultPlan::default();
        for word in text.split_whitespace() {
            if word == "once" {
                plan.once = true;
                continue;
            }
            let (op, error) = word
                .split_once('=')
                .ok_or_else(|| format!("`{word}`: expected op=error or `once`"))?;
            let fault = match (op, error) {
                (_, "eio") => Fault::Fail(libc::EIO),
                (_, "enospc") => Fault::Fail(libc::ENOSPC),
                ("fsync", "hang") => Fault::Hang,
                (_, other) => {
                    return Err(format!("`{other}`: expected eio, enospc or (fsync) hang"))
                }
            };
            let slot = match op {
                "fsync" => &mut plan.fsync,
                "write" => &mut plan.write,
                "read" => &mut plan.read,
                other => return Err(format!("`{other}`: expected fsync, write or read")),
            };
            *slot = Some(fault);
        }
        Ok(plan)
    }
}

/// [`Armed::code`] of no fault, and of [`Fault::Hang`]; an OS error is
/// positive.
const NONE: i32 = 0;
const HANG: i32 = -1;

/// One operation's armed fault, once or lasting.
#[derive(Default)]
struct Armed {
    code: AtomicI32,
    once: AtomicBool,
}

impl Armed {
    fn set(&self, fault: Option<Fault>, once: bool) {
        let code = match fault {
            None => NONE,
            Some(Fault::Hang) => HANG,
            Some(Fault::Fail(errno)) => errno,
        };
        self.once.store(once, Ordering::Release);
        self.code.store(code, Ordering::Release);
    }

    /// The fault armed now; a `once` error is used up (a hang lasts).
    fn take(&self) -> Option<Fault> {
        let code = self.code.load(Ordering::Acquire);
        match code {
            NONE => None,
            HANG => Some(Fault::Hang),
            errno if !self.once.load(Ordering::Acquire) => Some(Fault::Fail(errno)),
            errno => self
                .code
                .compare_exchange(errno, NONE, Ordering::AcqRel, Ordering::Acquire)
                .ok()
                .map(Fault::Fail),
        }
    }
}

/// Faults armed by a test. Checking costs one atomic load per operation.
#[derive(Default)]
pub struct FaultInjector {
    fsync: Armed,
    write: Armed,
    read: Armed,
}

impl FaultInjector {
    pub fn set(&self, plan: &FaultPlan) {
        self.fsync.set(plan.fsync, plan.once);
        self.write.set(plan.write, plan.once);
        self.read.set(plan.read, plan.once);
    }

    /// The fault armed for `op` now; a `once` error is used up.
    pub fn take(&self, op: FaultOp) -> Option<Fault> {
        match op {
            FaultOp::Fsync => self.fsync.take(),
            FaultOp::Write => self.write.take(),
            FaultOp::Read => self.read.take(),
        }
    }

    /// Arms what the file at `path` says before returning, then follows
    /// its changes on a thread of its own. A file that cannot be read or
    /// parsed at start is an error; later, it is logged and the faults
    /// stay as they were.
    pub fn follow(self: &Arc<Self>, path: &Path) -> Result<(), String> {
        let text = read_fault_file(path)?;
        self.apply(&text, path)?;
        let injector = Arc::clone(self);
        let path = path.to_owned();
        std::thread::Builder::new()
            .name("test-storage-faults".into())
            .spawn(move || injector.poll(&path, text))
            .map(drop)
            .map_err(|e| format!("starting the fault file thread: {e}"))
    }

    fn poll(&self, path: &Path, mut last: String) {
        loop {
            std::thread::sleep(FAULT_FILE_POLL);
            let text = match read_fault_file(path) {
                Ok(text) if text == last => continue,
                Ok(text) => text,
                Err(error) => {
                    tracing::error!(path = %path.display(), %error, "test storage fault file");
                    continue;
                }
            };
            if let Err(error) = self.apply(&text, path) {
                tracing::error!(path = %path.display(), %error, "test storage fault file");
            }
            last = text;
        }
    }

    fn apply(&self, text: &str, path: &Path) -> Result<(), String> {
        let plan = FaultPlan::parse(text).map_err(|e| format!("{}: {e}", path.display()))?;
        self.set(&plan);
        tracing::warn!(faults = text.trim(), "UNSAFE: test storage faults set");
        let applied = applied_path(path);
        std::fs::write(&applied, text).map_err(|e| format!("{}: {e}", applied.display()))
    }
}

/// Where a node says which text of the fault file at `path` it has armed.
pub fn applied_path(path: &Path) -> PathBuf {
    let mut applied = path.as_os_str().to_owned();
    applied.push(".applied");
    PathBuf::from(applied)
}

fn read_fault_file(path: &Path) -> Result<String, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Each WAL file's name and length in bytes.
pub type WalLengths = Vec<(String, u64)>;

/// Keeps [`WAL_SYNC_RECORD`] in a RocksDB directory.
pub struct WalSyncRecord {
    dir: PathBuf,
}

impl WalSyncRecord {
    pub fn new(dir: &Path) -> Self {
        WalSyncRecord {
            dir: dir.to_owned(),
        }
    }

    /// The WAL files (`<number>.log`) and their lengths now.
    pub fn wal_lengths(&self) -> io::Result<WalLengths> {
        let mut wals = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_wal = name
                .strip_suffix(".log")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if is_wal {
                wals.push((name, entry.metadata()?.len()));
            }
        }
        wals.sort();
        Ok(wals)
    }

    /// Replaces the record with `wals`, whole (written aside, renamed).
    pub fn save(&self, wals: &WalLengths) -> io::Result<()> {
        let text: String = wals
            .iter()
            .map(|(name, len)| format!("{name} {len}\n"))
            .collect();
        let aside = self.dir.join(format!("{WAL_SYNC_RECORD}.new"));
        std::fs::write(&aside, text)?;
        std::fs::rename(aside, self.dir.join(WAL_SYNC_RECORD))
    }
}

/// Parses a [`WAL_SYNC_RECORD`] file's text.
pub fn parse_wal_sync_record(text: &str) -> Result<WalLengths, String> {
    text.lines()
        .map(|line| {
            let (name, len) = line
                .split_once(' ')
                .ok_or_else(|| format!("`{line}`: expected `<file> <length>`"))?;
            let len = len.parse().map_err(|e| format!("`{line}`: {e}"))?;
            Ok((name.to_owned(), len))
        })
        .collect()
}

/// RocksDB's WAL block size and record header size (legacy records: no
/// WAL recycling), for tests that cut, tear or corrupt a WAL.
pub const WAL_BLOCK_BYTES: u64 = 32 * 1024;
pub const WAL_HEADER_BYTES: u64 = 7;

/// A WAL's records, as (offset, body length), in order; stops at zeros.
pub fn wal_records(bytes: &[u8]) -> Vec<(u64, u64)> {
    let mut records = Vec::new();
    let mut at = 0u64;
    while at + WAL_HEADER_BYTES <= bytes.len() as u64 {
        let room = WAL_BLOCK_BYTES - at % WAL_BLOCK_BYTES;
        if room < WAL_HEADER_BYTES {
            at += room;
            continue;
        }
        let header = &bytes[at as usize..(at + WAL_HEADER_BYTES) as usize];
        let length = u64::from(u16::from_le_bytes([header[4], header[5]]));
        if length == 0 && header[6] == 0 {
            break;
        }
        records.push((at, length));
        at += WAL_HEADER_BYTES + length;
    }
    records
}

/// What a record whose write was cut off leaves at offset `at`: a header
/// promising more body than follows, and a garbage body. Where the block
/// has no room for one, the zeros a writer pads a block's end with.
pub fn torn_record(at: u64) -> Vec<u8> {
    let room = WAL_BLOCK_BYTES - at % WAL_BLOCK_BYTES;
    if room < WAL_HEADER_BYTES + 64 {
        return vec![0; room as usize];
    }
    let length = (room - WAL_HEADER_BYTES).min(200) as u16;
    let mut record = vec![0xC3, 0x5A, 0x0F, 0x77];
    record.extend(length.to_le_bytes());
    record.push(1); // a full record
    record.extend(vec![0x5A; usize::from(length) / 2]);
    record
}

/// The seam a node's storage runs with: empty (the default) in production.
#[derive(Clone, Default)]
pub struct TestSeam {
    pub faults: Option<Arc<FaultInjector>>,
    pub wal_sync_record: Option<Arc<WalSyncRecord>>,
}

impl TestSeam {
    /// The error `op` fails with now, if a test armed one; while a test
    /// hangs `op`, waits first.
    pub fn injected(&self, op: FaultOp) -> Option<io::Error> {
        let faults = self.faults.as_ref()?;
        loop {
            match faults.take(op)? {
                Fault::Fail(errno) => return Some(io::Error::from_raw_os_error(errno)),
                Fault::Hang => std::thread::sleep(HANG_POLL),
            }
        }
    }
}

/// What a [`FaultInjector`] should arm from now on, for tests in this
/// crate that need no file.
#[cfg(test)]
pub fn injector(plan: &str) -> Arc<FaultInjector> {
    let injector = Arc::new(FaultInjector::default());
    injector.set(&FaultPlan::parse(plan).expect("a valid fault plan"));
    injector
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_files_parse() {
        assert_eq!(FaultPlan::parse("").unwrap(), FaultPlan::default());
        assert_eq!(
            FaultPlan::parse("fsync=eio\nwrite=enospc once").unwrap(),
            FaultPlan {
                fsync: Some(Fault::Fail(libc::EIO)),
                write: Some(Fault::Fail(libc::ENOSPC)),
                read: None,
                once: true,
            }
        );
        assert_eq!(
            FaultPlan::parse("fsync=hang").unwrap().fsync,
            Some(Fault::Hang)
        );
        assert!(FaultPlan::parse("write=hang").is_err());
        assert!(FaultPlan::parse("fsync").is_err());
        assert!(FaultPlan::parse("fsync=boom").is_err());
        assert!(FaultPlan::parse("flush=eio").is_err());
    }

    #[test]
    fn a_lasting_fault_fires_until_cleared_and_a_once_fault_fires_once() {
        let injector = injector("write=enospc");
        for _ in 0..3 {
            let fault = injector.take(FaultOp::Write);
            assert_eq!(fault, Some(Fault::Fail(libc::ENOSPC)), "the fault lasts");
        }
        assert!(injector.take(FaultOp::Fsync).is_none());
        injector.set(&FaultPlan::default());
        assert!(injector.take(FaultOp::Write).is_none());

        injector.set(&FaultPlan::parse("fsync=eio once").unwrap());
        assert_eq!(injector.take(FaultOp::Fsync), Some(Fault::Fail(libc::EIO)));
        assert!(injector.take(FaultOp::Fsync).is_none(), "fired once");

        injector.set(&FaultPlan::parse("fsync=hang once").unwrap());
        for _ in 0..3 {
            assert_eq!(injector.take(FaultOp::Fsync), Some(Fault::Hang));
        }
    }

    #[test]
    fn the_fault_file_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faults");
        let injector = Arc::new(FaultInjector::default());
        injector.follow(&path).unwrap();
        assert!(injector.take(FaultOp::Read).is_none());
        assert_eq!(std::fs::read_to_string(applied_path(&path)).unwrap(), "");
        std::fs::write(&path, "read=eio").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(applied_path(&path)).unwrap() != "read=eio" {
            assert!(
                std::time::Instant::now() < deadline,
                "expected the fault file's change to be applied within 5 s"
            );
            std::thread::sleep(FAULT_FILE_POLL / 5);
        }
        assert_eq!(injector.take(FaultOp::Read), Some(Fault::Fail(libc::EIO)));
        std::fs::write(&path, "bogus").unwrap();
        let other = Arc::new(FaultInjector::default());
        assert!(other.follow(&path).unwrap_err().contains("bogus"));
    }

    #[test]
    fn the_wal_sync_record_lists_wal_files_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("000012.log"), [0u8; 40]).unwrap();
        std::fs::write(dir.path().join("000009.log"), [0u8; 7]).unwrap();
        std::fs::write(dir.path().join("LOG"), "info").unwrap();
        std::fs::write(dir.path().join("MANIFEST-000005"), "m").unwrap();
        let record = WalSyncRecord::new(dir.path());
        let wals = record.wal_lengths().unwrap();
        let expected = vec![("000009.log".to_owned(), 7), ("000012.log".to_owned(), 40)];
        assert_eq!(wals, expected);
        record.save(&wals).unwrap();
        let text = std::fs::read_to_string(dir.path().join(WAL_SYNC_RECORD)).unwrap();
        assert_eq!(parse_wal_sync_record(&text).unwrap(), expected);
        assert_eq!(record.wal_lengths().unwrap(), expected, "not a WAL itself");
    }
}
