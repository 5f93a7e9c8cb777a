//! Server processes as the benchmark sees them: free ports, spawning with
//! logs in a scratch directory, stopping, and what /proc says about their
//! CPU time, memory and disk.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Ports for benchmark servers come from below the kernel's ephemeral range
/// (32768..61000 on Linux): the thousands of connections a run opens take
/// ephemeral ports, and one of them must never take a server's port between
/// the moment it is chosen and the moment the server binds it.
const PORT_RANGE: std::ops::Range<u16> = 20_000..32_000;

/// A free port, never handed out before by this process.
pub fn free_port() -> Result<u16> {
    Ok(free_ports(1)?[0])
}

/// `count` distinct free ports, none handed out before by this process.
pub fn free_ports(count: usize) -> Result<Vec<u16>> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let span = u32::from(PORT_RANGE.end - PORT_RANGE.start);
    let start = std::process::id().wrapping_mul(997) % span;
    let mut ports = Vec::with_capacity(count);
    while ports.len() < count {
        let step = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if step >= span {
            bail!("no free port left in {PORT_RANGE:?} for this run");
        }
        let port = PORT_RANGE.start + u16::try_from((start + step) % span)?;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
        }
    }
    Ok(ports)
}

/// A directory of our own under the system temp dir, removed on drop.
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    pub fn new(label: &str) -> Result<Scratch> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos();
        let path = std::env::temp_dir().join(format!(
            "leasehold-bench-{label}-{}-{nanos:x}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Scratch { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A server process we started; killed (SIGKILL) on drop if still running.
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `command` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, command: &mut Command, log: &Path) -> Result<Proc> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", command.get_program()))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the end of its log if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); the end of {}:\n{}",
                self.name,
                self.log.display(),
                log_tail(&self.log)
            );
        }
        Ok(())
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: kill(2) takes plain integers; the child is not yet
            // reaped (try_wait said so), so the pid is still ours.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
            let until = Instant::now() + grace;
            while Instant::now() < until {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Clock ticks per second of /proc's CPU times.
fn clock_ticks_per_s() -> u64 {
    // SAFETY: sysconf takes a plain integer and touches no memory.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// User + system CPU time a process has used, in microseconds, from
/// /proc/<pid>/stat (0 if it is gone).
pub fn cpu_us(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command name may hold spaces; fields resume after its ')'.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of stat(5), utime 14, stime 15.
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let ticks = field(14).unwrap_or(0) + field(15).unwrap_or(0);
    ticks * 1_000_000 / clock_ticks_per_s()
}

/// Busy CPU time of the whole machine so far (every CPU, idle and I/O
/// wait excluded), in microseconds, from /proc/stat.
pub fn machine_busy_us() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let ticks: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is in user).
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|&(i, _)| i != 3 && i != 4)
        .map(|(_, t)| t)
        .sum();
    busy * 1_000_000 / clock_ticks_per_s()
}

/// CPU time (user + system) of this process so far, in microseconds.
pub fn self_cpu_us() -> u64 {
    cpu_us(std::process::id())
}

/// Resident set size of a process, in bytes, from /proc/<pid>/status.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Bytes of the files under `path` (their lengths, recursively).
pub fn dir_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// A connection to `addr` that has sent `GET path` (HTTP/1.0: the server
/// closes it after the response), every step bounded by `timeout`.
fn send_get(addr: SocketAddr, path: &str, timeout: Duration) -> Option<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    Some(stream)
}

/// The HTTP status code of `GET path` on `addr`, or None if it cannot be had.
pub fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = send_get(addr, path, Duration::from_millis(500))?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).ok()?;
    let line = std::str::from_utf8(&head[..n]).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The body of `GET path` on `addr` if it answers 200, else None.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = send_get(addr, path, Duration::from_secs(2))?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let ok = head.split_whitespace().nth(1) == Some("200");
    ok.then(|| body.to_string())
}

/// Cache flushes the block device under `path` has completed so far: one
/// per fsync or fdatasync that reached the disk, whoever issued it. None
/// when `path` is not on a block device with a write-back cache (only those
/// are sent flushes) whose statistics count them.
pub fn disk_flushes(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let mut sys = std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    // The kernel counts flushes on the whole disk, not its partitions.
    if sys.join("partition").exists() {
        sys = sys.parent()?.to_path_buf();
    }
    let cache = std::fs::read_to_string(sys.join("queue/write_cache")).ok()?;
    if cache.trim() != "write back" {
        return None;
    }
    flushes_from_stat(&std::fs::read_to_string(sys.join("stat")).ok()?)
}

/// Field 16 of a block device's stat file (Linux 5.5 and later): flush
/// requests completed.
fn flushes_from_stat(stat: &str) -> Option<u64> {
    stat.split_whitespace().nth(15)?.parse().ok()
}

/// Polls until every address answers `GET path` with 200, failing on a
/// process that exited or at `timeout`.
pub fn wait_http_ok(
    procs: &mut [&mut Proc],
    addrs: &[SocketAddr],
    path: &str,
    timeout: Duration,
) -> Result<()> {
    let until = Instant::now() + timeout;
    loop {
        for p in procs.iter_mut() {
            p.check_running()?;
        }
        if addrs.iter().all(|&a| http_status(a, path) == Some(200)) {
            return Ok(());
        }
        if Instant::now() >= until {
            bail!("no 200 from GET {path} on every one of {addrs:?} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_has_cpu_time_and_memory() {
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(30) {
            std::hint::black_box(0u64);
        }
        assert!(self_cpu_us() > 0);
        assert!(machine_busy_us() >= self_cpu_us());
        assert!(rss_bytes(std::process::id()) > 0);
    }

    #[test]
    fn a_flush_count_is_field_sixteen_of_a_disk_stat() {
        let stat = "40521 6660 3013354 12177 12187 26524 3807992 17386 0 7296 29979 2693 0 470952 350 1408 64\n";
        assert_eq!(flushes_from_stat(stat), Some(1408));
        // Kernels before 5.5 print eleven fields: no flush count.
        assert_eq!(flushes_from_stat("1 2 3 4 5 6 7 8 9 10 11"), None);
    }

    #[test]
    fn an_fdatasync_reaches_the_disk_as_a_flush_when_it_can_be_seen() {
        let scratch = Scratch::new("flush").unwrap();
        let Some(before) = disk_flushes(scratch.path()) else {
            // tmpfs, overlay, a write-through disk or an old kernel.
            return;
        };
        let file = File::create(scratch.path().join("f")).unwrap();
        for _ in 0..5 {
            (&file).write_all(&[1; 512]).unwrap();
            file.sync_data().unwrap();
        }
        let after = disk_flushes(scratch.path()).unwrap();
        assert!(after >= before + 5, "{before} -> {after}");
    }

    #[test]
    fn scratch_dirs_are_sized_and_removed() {
        let scratch = Scratch::new("test").unwrap();
        std::fs::create_dir(scratch.path().join("sub")).unwrap();
        std::fs::write(scratch.path().join("sub/a"), [0u8; 100]).unwrap();
        std::fs::write(scratch.path().join("b"), [0u8; 23]).unwrap();
        assert_eq!(dir_bytes(scratch.path()), 123);
        let path = scratch.path().to_path_buf();
        drop(scratch);
        assert!(!path.exists());
    }

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports(6).unwrap();
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 6);
    }
}
