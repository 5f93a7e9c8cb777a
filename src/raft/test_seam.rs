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
//! - `once`: each named fault fires once, then the operation works again,
//!   as a real fsync error is reported once. Without it a fault lasts
//!   while the file names it, as a full disk stays full.
//! - A missing or empty file injects nothing. A change of the file
//!   replaces what it said before, and re-arms `once` faults.
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

/// The WAL sync record's file name, in the data directory.
pub const WAL_SYNC_RECORD: &str = "wal-synced.unsafe-test";

/// A storage operation a fault can be injected into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOp {
    Fsync,
    Write,
    Read,
}

/// What a fault file says: for each operation, the OS error it fails
/// with, if any.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultPlan {
    pub fsync: Option<i32>,
    pub write: Option<i32>,
    pub read: Option<i32>,
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
            let errno = match error {
                "eio" => libc::EIO,
                "enospc" => libc::ENOSPC,
                other => return Err(format!("`{other}`: expected eio or enospc")),
            };
            let slot = match op {
                "fsync" => &mut plan.fsync,
                "write" => &mut plan.write,
                "read" => &mut plan.read,
                other => return Err(format!("`{other}`: expected fsync, write or read")),
            };
            *slot = Some(errno);
        }
        Ok(plan)
    }
}

/// One operation's armed fault: an errno (0: none), once or lasting.
#[derive(Default)]
struct Armed {
    errno: AtomicI32,
    once: AtomicBool,
}

impl Armed {
    fn set(&self, errno: Option<i32>, once: bool) {
        self.once.store(once, Ordering::Release);
        self.errno.store(errno.unwrap_or(0), Ordering::Release);
    }

    fn take(&self) -> Option<io::Error> {
        let errno = self.errno.load(Ordering::Acquire);
        if errno == 0 {
            return None;
        }
        if self.once.load(Ordering::Acquire)
            && self
                .errno
                .compare_exchange(errno, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return None;
        }
        Some(io::Error::from_raw_os_error(errno))
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

    /// The error `op` fails with now, if a fault is armed for it; a
    /// `once` fault is used up.
    pub fn take(&self, op: FaultOp) -> Option<io::Error> {
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
        Ok(())
    }
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

/// The seam a node's storage runs with: empty (the default) in production.
#[derive(Clone, Default)]
pub struct TestSeam {
    pub faults: Option<Arc<FaultInjector>>,
    pub wal_sync_record: Option<Arc<WalSyncRecord>>,
}

impl TestSeam {
    /// The error `op` fails with now, if a test armed one.
    pub fn injected(&self, op: FaultOp) -> Option<io::Error> {
        self.faults.as_ref().and_then(|f| f.take(op))
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
                fsync: Some(libc::EIO),
                write: Some(libc::ENOSPC),
                read: None,
                once: true,
            }
        );
        assert!(FaultPlan::parse("fsync").is_err());
        assert!(FaultPlan::parse("fsync=boom").is_err());
        assert!(FaultPlan::parse("flush=eio").is_err());
    }

    #[test]
    fn a_lasting_fault_fires_until_cleared_and_a_once_fault_fires_once() {
        let injector = injector("write=enospc");
        for _ in 0..3 {
            let e = injector.take(FaultOp::Write).expect("the fault lasts");
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        }
        assert!(injector.take(FaultOp::Fsync).is_none());
        injector.set(&FaultPlan::default());
        assert!(injector.take(FaultOp::Write).is_none());

        injector.set(&FaultPlan::parse("fsync=eio once").unwrap());
        let e = injector.take(FaultOp::Fsync).expect("fires once");
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        assert!(injector.take(FaultOp::Fsync).is_none());
    }

    #[test]
    fn the_fault_file_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faults");
        let injector = Arc::new(FaultInjector::default());
        injector.follow(&path).unwrap();
        assert!(injector.take(FaultOp::Read).is_none());
        std::fs::write(&path, "read=eio").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while injector.take(FaultOp::Read).is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "expected the fault file's change to arm read=eio within 5 s"
            );
            std::thread::sleep(FAULT_FILE_POLL / 5);
        }
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
