//! The load generator: closed loop (C callers, each starting a cycle when
//! its last one ends) or open loop (cycles start at a fixed rate whatever
//! the answers; latency counts from the intended start, so a stalled
//! server cannot hide its queue: no coordinated omission).
//!
//! A cycle is an acquire and, for lease workloads, the release of the
//! lease. Every call carries an idempotency key unique to the run.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::Semaphore;

use crate::procs;
use crate::spec::{Request, Rng, Workload};
use crate::stats::Latencies;
use crate::target::leasehold::RaftCounters;
use crate::target::{Conn, Outcome, Server};

/// Open loop: cycles in flight at most; later arrivals queue in the
/// generator (their latency still counts from the intended start).
const OPEN_IN_FLIGHT_MAX: usize = 20_000;
/// After the run, how long cycles still in flight may take to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);
/// A caller whose call failed pauses this long, so a down target is not
/// hammered in a tight loop.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

#[derive(Clone, Copy, Debug)]
pub enum Mode {
    Closed { clients: usize },
    Open { rate_per_s: f64, connections: usize },
}

#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub workload: Workload,
    pub mode: Mode,
    pub warmup: Duration,
    pub duration: Duration,
    /// Shown before the progress bar.
    pub label: String,
    pub seed: u64,
}

/// Counts and latencies of the measured window.
#[derive(Default)]
pub struct Tally {
    pub cycles: u64,
    pub denied: u64,
    pub errors: u64,
    pub acquire: Latencies,
    pub release: Latencies,
}

impl Tally {
    fn merge(&mut self, other: &Tally) {
        self.cycles += other.cycles;
        self.denied += other.denied;
        self.errors += other.errors;
        self.acquire.merge(&other.acquire);
        self.release.merge(&other.release);
    }
}

pub struct Measured {
    pub tally: Tally,
    pub window: Duration,
    pub server_cpu_us: u64,
    /// Per server process, in the order of `Server::pids`.
    pub server_cpu_us_by_process: Vec<u64>,
    pub client_cpu_us: u64,
    /// Flushes of the disk under the servers' data over the window.
    pub disk_flushes: Option<u64>,
    /// Leasehold: its nodes' counters over the window.
    pub raft: Option<RaftCounters>,
    /// CPU time of every other process on the machine over the window.
    pub other_cpu_us: u64,
    pub conflicts: u64,
    /// Cycles of the open loop still unanswered when the drain timed out.
    pub unfinished: u64,
    pub first_error: Option<String>,
}

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// What every caller of a run shares.
struct Shared {
    phase: AtomicU8,
    /// Cycles finished in any phase, for the progress bar.
    done: AtomicU64,
    /// Cycles finished while measuring.
    measured: AtomicU64,
    first_error: Mutex<Option<String>>,
    tag: String,
}

impl Shared {
    fn measuring(&self) -> bool {
        self.phase.load(Ordering::Acquire) == MEASURE
    }

    fn note_error(&self, error: &anyhow::Error) {
        let mut first = self.first_error.lock().expect("error slot");
        if first.is_none() {
            *first = Some(format!("{error:#}"));
        }
    }
}

/// CPU time so far of the servers, the load generator and the whole
/// machine, the disk's flushes and Leasehold's counters, at one instant.
#[derive(Clone)]
struct CpuSnapshot {
    server_us: Vec<u64>,
    client_us: u64,
    machine_us: u64,
    flushes: Option<u64>,
    raft: Option<RaftCounters>,
    at: Instant,
}

impl CpuSnapshot {
    fn take(server: &Server) -> CpuSnapshot {
        // The scrape over HTTP comes first, so the clock and the CPU times
        // are read together, right after it.
        let raft = server.raft_counters();
        CpuSnapshot {
            server_us: server.pids().iter().map(|&p| procs::cpu_us(p)).collect(),
            client_us: procs::self_cpu_us(),
            machine_us: procs::machine_busy_us(),
            flushes: procs::disk_flushes(&std::env::temp_dir()),
            raft,
            at: Instant::now(),
        }
    }
}

/// What the CPUs (and the disk) did over a window.
#[derive(Clone, Default)]
struct CpuUse {
    window: Duration,
    /// Per server process, in the order of `Server::pids`.
    server_us: Vec<u64>,
    client_us: u64,
    /// Busy time of every other process on the machine.
    other_us: u64,
    flushes: Option<u64>,
    raft: Option<RaftCounters>,
}

impl CpuUse {
    fn between(before: &CpuSnapshot, after: &CpuSnapshot) -> CpuUse {
        let server_us: Vec<u64> = after
            .server_us
            .iter()
            .zip(&before.server_us)
            .map(|(a, b)| a.saturating_sub(*b))
            .collect();
        let client_us = after.client_us.saturating_sub(before.client_us);
        let machine_us = after.machine_us.saturating_sub(before.machine_us);
        CpuUse {
            window: after.at - before.at,
            other_us: machine_us.saturating_sub(server_us.iter().sum::<u64>() + client_us),
            server_us,
            client_us,
            flushes: after
                .flushes
                .zip(before.flushes)
                .map(|(a, b)| a.saturating_sub(b)),
            raft: after.raft.zip(before.raft).map(|(a, b)| a.since(b)),
        }
    }
}

/// Runs `config` against `server`: warm-up, then the measured window.
pub async fn run(server: &mut Server, config: &LoadConfig) -> Result<Measured> {
    let connections = match config.mode {
        Mode::Closed { clients } => clients,
        Mode::Open { connections, .. } => connections,
    };
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections.max(1) {
        conns.push(server.connect().await?);
    }
    let shared = Arc::new(Shared {
        phase: AtomicU8::new(WARMUP),
        done: AtomicU64::new(0),
        measured: AtomicU64::new(0),
        first_error: Mutex::new(None),
        tag: run_tag(),
    });
    let progress = progress_bar(config);
    let ticker = tokio::spawn(tick(progress.clone(), Arc::clone(&shared), config.workload));
    let server = &*server;

    let (tally, cpu, unfinished) = match config.mode {
        Mode::Closed { .. } => {
            let mut workers = Vec::new();
            for (i, conn) in conns.iter().enumerate() {
                let (conn, shared) = (conn.clone(), Arc::clone(&shared));
                let rng = Rng::new(config.seed ^ (i as u64).wrapping_mul(0x9E37_79B9));
                workers.push(tokio::spawn(closed_caller(
                    conn,
                    config.workload,
                    shared,
                    i,
                    rng,
                )));
            }
            tokio::time::sleep(config.warmup).await;
            let before = CpuSnapshot::take(server);
            shared.phase.store(MEASURE, Ordering::Release);
            tokio::time::sleep(config.duration).await;
            // A window in which nothing finished says nothing: on a
            // machine whose disk stalls (an fsync can take a second under
            // load), it runs on until the first cycle finishes, for at most
            // ten times its length (10 s at least).
            let longest = (config.duration * 10).max(Duration::from_secs(10));
            let extended_from = Instant::now();
            while shared.measured.load(Ordering::Acquire) == 0 && extended_from.elapsed() < longest
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            shared.phase.store(STOP, Ordering::Release);
            let cpu = CpuUse::between(&before, &CpuSnapshot::take(server));
            let mut tally = Tally::default();
            for w in workers {
                tally.merge(&w.await?);
            }
            (tally, cpu, 0)
        }
        Mode::Open { rate_per_s, .. } => {
            open_loop(&conns, config, rate_per_s, &shared, server).await
        }
    };
    ticker.abort();
    progress.finish_and_clear();
    let first_error = shared.first_error.lock().expect("error slot").clone();
    Ok(Measured {
        tally,
        window: cpu.window,
        server_cpu_us: cpu.server_us.iter().sum(),
        server_cpu_us_by_process: cpu.server_us,
        disk_flushes: cpu.flushes,
        raft: cpu.raft,
        client_cpu_us: cpu.client_us,
        other_cpu_us: cpu.other_us,
        conflicts: conns.iter().map(Conn::conflicts).sum(),
        unfinished,
        first_error,
    })
}

/// One caller of the closed loop.
async fn closed_caller(
    conn: Conn,
    workload: Workload,
    shared: Arc<Shared>,
    caller: usize,
    mut rng: Rng,
) -> Tally {
    let mut tally = Tally::default();
    let mut n = 0u64;
    while shared.phase.load(Ordering::Acquire) != STOP {
        n += 1;
        let request = workload.request(&mut rng);
        let key = format!("{}-{caller}-{n}", shared.tag);
        let report = cycle(&conn, workload, &request, &key, Instant::now()).await;
        if !shared.record(report, &mut tally) {
            tokio::time::sleep(ERROR_PAUSE).await;
        }
    }
    tally
}

/// What one cycle took and how it ended: granted (true), denied (false)
/// or failed.
struct CycleReport {
    acquire: Duration,
    release: Option<Duration>,
    result: Result<bool>,
}

/// One cycle: acquire, then release what was granted. Acquire latency is
/// counted from `intended`.
async fn cycle(
    conn: &Conn,
    workload: Workload,
    request: &Request,
    key: &str,
    intended: Instant,
) -> CycleReport {
    let acquired = conn.acquire(request, &format!("{key}-a")).await;
    let acquire = intended.elapsed();
    let (result, release) = match acquired {
        Ok(Outcome::Granted(held)) if workload.releases() => {
            let started = Instant::now();
            let released = conn.release(&held, &format!("{key}-r")).await;
            (released.map(|_| true), Some(started.elapsed()))
        }
        Ok(Outcome::Granted(_)) => (Ok(true), None),
        Ok(Outcome::Denied { .. }) => (Ok(false), None),
        Err(e) => (Err(e), None),
    };
    CycleReport {
        acquire,
        release,
        result,
    }
}

impl Shared {
    /// Counts a finished cycle in `tally` if it ended while measuring.
    /// False when a call failed.
    fn record(&self, report: CycleReport, tally: &mut Tally) -> bool {
        self.done.fetch_add(1, Ordering::Relaxed);
        let measuring = self.measuring();
        if measuring {
            self.measured.fetch_add(1, Ordering::AcqRel);
            tally.acquire.record(report.acquire);
            if let Some(latency) = report.release {
                tally.release.record(latency);
            }
        }
        match report.result {
            Ok(granted) => {
                if measuring {
                    if granted {
                        tally.cycles += 1;
                    } else {
                        tally.denied += 1;
                    }
                }
                true
            }
            Err(error) => {
                self.note_error(&error);
                if measuring {
                    tally.errors += 1;
                }
                false
            }
        }
    }
}

/// The open loop: the n-th cycle is due at start + n / rate.
async fn open_loop(
    conns: &[Conn],
    config: &LoadConfig,
    rate_per_s: f64,
    shared: &Arc<Shared>,
    server: &Server,
) -> (Tally, CpuUse, u64) {
    let interval = Duration::from_secs_f64(1.0 / rate_per_s.max(0.001));
    let start = Instant::now();
    let measure_at = start + config.warmup;
    let end = measure_at + config.duration;
    let slots = Arc::new(Semaphore::new(OPEN_IN_FLIGHT_MAX));
    let total = Arc::new(Mutex::new(Tally::default()));
    let mut rng = Rng::new(config.seed);
    let mut before = None;
    let mut n = 0u64;
    loop {
        let due = start + interval.mul_f64(n as f64);
        if due >= end {
            break;
        }
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        if before.is_none() && due >= measure_at {
            before = Some(CpuSnapshot::take(server));
            shared.phase.store(MEASURE, Ordering::Release);
        }
        let slot = Arc::clone(&slots)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let conn = conns[n as usize % conns.len()].clone();
        let (request, shared, total) = (
            config.workload.request(&mut rng),
            Arc::clone(shared),
            Arc::clone(&total),
        );
        let workload = config.workload;
        tokio::spawn(async move {
            let _slot = slot;
            let key = format!("{}-o-{n}", shared.tag);
            let report = cycle(&conn, workload, &request, &key, due).await;
            shared.record(report, &mut total.lock().expect("tally"));
        });
        n += 1;
    }
    let after = CpuSnapshot::take(server);
    let cpu = CpuUse::between(before.as_ref().unwrap_or(&after), &after);
    // Cycles due in the window still count when they finish late; only
    // then does measuring stop.
    let drained =
        tokio::time::timeout(DRAIN_TIMEOUT, slots.acquire_many(OPEN_IN_FLIGHT_MAX as u32)).await;
    shared.phase.store(STOP, Ordering::Release);
    let unfinished = match drained {
        Ok(_) => 0,
        Err(_) => (OPEN_IN_FLIGHT_MAX - slots.available_permits()) as u64,
    };
    let tally = std::mem::take(&mut *total.lock().expect("tally"));
    (tally, cpu, unfinished)
}

/// Makes this run's idempotency keys unlike any other run's.
fn run_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}", nanos as u64)
}

fn progress_bar(config: &LoadConfig) -> ProgressBar {
    let total_ms = (config.warmup + config.duration).as_millis() as u64;
    let bar = ProgressBar::with_draw_target(Some(total_ms), ProgressDrawTarget::stderr());
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{prefix:40} [{bar:30}] {elapsed:>3} {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_prefix(config.label.clone());
    bar
}

async fn tick(bar: ProgressBar, shared: Arc<Shared>, workload: Workload) {
    let start = Instant::now();
    let mut last = (start, 0u64);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = Instant::now();
        let done = shared.done.load(Ordering::Relaxed);
        let rate = (done - last.1) as f64 / (now - last.0).as_secs_f64();
        last = (now, done);
        bar.set_position((now - start).as_millis() as u64);
        bar.set_message(format!("{rate:.0} {}/s", workload.unit()));
    }
}
