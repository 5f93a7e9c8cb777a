//! The engine alone, on one core: acquire + release cycles on one hot key and
//! spread over 1,000,000 keys, and the memory an active lease, an idle key
//! and a recorded denial cost. Run with `cargo bench --bench engine`.
//!
//! Every acquire carries a fresh idempotency key, as the service's would.
//! Applied time advances one millisecond every 100 cycles and the scavenger
//! (`Expire`) runs every millisecond with a 1 s dedup window, so the dedup
//! table stays at its steady-state size instead of growing with the run.
//!
//! Wall-clock figures are noisy on a shared machine; instruction counts are
//! not. `LEASEHOLD_BENCH_CYCLES=N` runs N cycles of `hot_key` or `1m_keys`
//! (`LEASEHOLD_BENCH_CASE`) after a warm-up to steady state, outside
//! criterion, so `valgrind --tool=callgrind --toggle-collect='engine::measured'`
//! counts the cycles alone.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};

use std::cell::{Cell, RefCell};

use criterion::{BatchSize, Criterion, Throughput};
use leasehold::engine::{
    AcquireRequest, Attempt, Command, Constraint, Engine, EngineConfig, MemStore, Outcome, Quotas,
    ReleaseRequest, Store,
};

/// Counts live heap bytes, for the memory figures.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const CYCLES_PER_MS: u64 = 100;

struct Driver {
    engine: Engine<MemStore>,
    /// No bounds on counts; the window the run asks for.
    quotas: Quotas,
    cycle: u64,
    prepared: Cell<u64>,
}

impl Driver {
    fn new(dedup_window_ms: u64) -> Self {
        Driver {
            engine: Engine::new(MemStore::new(), EngineConfig::default()),
            quotas: Quotas {
                dedup_window_ms,
                ..Quotas::NONE
            },
            cycle: 0,
            prepared: Cell::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.cycle / CYCLES_PER_MS
    }

    fn acquire_command(&self, key: &str, limit: u32, ttl_ms: u64) -> Command {
        Command::Acquire(AcquireRequest {
            scope: "acct".to_string(),
            constraints: vec![Constraint::Concurrency {
                key: key.to_string(),
                limit,
            }],
            amount: 1,
            min_amount: None,
            lease_ttl_ms: ttl_ms,
            max_lifetime_ms: None,
            idempotency_key: format!("a{}", self.cycle),
            attempt: Attempt::Final,
        })
    }

    fn release_command(&self, lease_id: u64) -> Command {
        Command::Release(ReleaseRequest {
            scope: "acct".to_string(),
            lease_id,
            idempotency_key: format!("r{}", self.cycle),
        })
    }

    fn apply(&mut self, cmd: &Command) -> Outcome {
        self.engine
            .apply_within(self.now_ms(), &self.quotas, cmd)
            .expect("valid")
            .outcome
    }

    fn acquire(&mut self, key: &str, limit: u32, ttl_ms: u64) -> u64 {
        let cmd = self.acquire_command(key, limit, ttl_ms);
        granted(self.apply(&cmd))
    }

    fn release(&mut self, lease_id: u64) {
        let cmd = self.release_command(lease_id);
        black_box(self.apply(&cmd));
    }

    /// One acquire + release of the prepared commands, then the scavenger
    /// once per simulated millisecond. The release names the lease the
    /// acquire will be granted: ids are allocated in order.
    fn cycle(&mut self, acquire: &Command, release: &Command) {
        granted(self.apply(acquire));
        let Outcome::Released { was_held: true, .. } = self.apply(release) else {
            panic!("the release names the lease just granted");
        };
        self.cycle += 1;
        if self.cycle.is_multiple_of(CYCLES_PER_MS) {
            let until_ms = self.now_ms();
            black_box(self.apply(&Command::Expire { until_ms }));
        }
    }

    /// The commands of a coming cycle, built outside the measurement so the
    /// figures are the engine's alone. Criterion prepares a batch of inputs
    /// before running it, so each gets its own idempotency keys and the lease
    /// id its acquire will be granted (the slot's grants count in order,
    /// from 1).
    fn prepare(&self, key: &str) -> (Command, Command) {
        let n = self.prepared.get();
        self.prepared.set(n + 1);
        let acquire = Command::Acquire(AcquireRequest {
            scope: "acct".to_string(),
            constraints: vec![Constraint::Concurrency {
                key: key.to_string(),
                limit: 10,
            }],
            amount: 1,
            min_amount: None,
            lease_ttl_ms: 30_000,
            max_lifetime_ms: None,
            idempotency_key: format!("pa{n}"),
            attempt: Attempt::Final,
        });
        let slot = leasehold::slot::slot_of("acct", self.engine.config().slot_count);
        let release = Command::Release(ReleaseRequest {
            scope: "acct".to_string(),
            lease_id: leasehold::slot::lease_id(slot, n + 1),
            idempotency_key: format!("pr{n}"),
        });
        (acquire, release)
    }
}

fn granted(outcome: Outcome) -> u64 {
    match outcome {
        Outcome::Granted(g) => g.lease_id,
        other => panic!("benchmark keys never fill: {other:?}"),
    }
}

fn bench_cycles(c: &mut Criterion) {
    let mut group = c.benchmark_group("acquire_release");
    // Two engine commands per cycle: elements/s is commands/s.
    group.throughput(Throughput::Elements(2));
    let hot = RefCell::new(Driver::new(1_000));
    group.bench_function("hot_key", |b| {
        b.iter_batched_ref(
            || hot.borrow().prepare("hot"),
            |(acquire, release)| hot.borrow_mut().cycle(acquire, release),
            BatchSize::SmallInput,
        )
    });
    let keys: Vec<String> = (0..1_000_000).map(|i| format!("fn-{i}")).collect();
    let spread = RefCell::new(Driver::new(1_000));
    group.bench_function("1m_keys", |b| {
        b.iter_batched_ref(
            || {
                let d = spread.borrow();
                let i = d.cycle.wrapping_mul(2_654_435_761) % 1_000_000;
                d.prepare(&keys[i as usize])
            },
            |(acquire, release)| spread.borrow_mut().cycle(acquire, release),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn live_bytes() -> isize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

/// Bytes per live lease (1,000,000 leases over 100,000 keys of limit 10,
/// with their idempotency records), per idle key (after every lease is
/// released and the scavenger has run past the dedup window) and per
/// recorded denial.
fn report_memory() {
    let keys: Vec<String> = (0..100_000).map(|i| format!("fn-{i}")).collect();
    let mut d = Driver::new(1_000);
    let before = live_bytes();
    let mut leases = Vec::with_capacity(1_000_000);
    let vec_bytes = live_bytes() - before;
    for i in 0..1_000_000 {
        leases.push(d.acquire(&keys[i % keys.len()], 10, 3_600_000));
        d.cycle += 1;
    }
    let per_lease = (live_bytes() - before - vec_bytes) as f64 / 1e6;
    for lease in leases.drain(..) {
        d.release(lease);
        d.cycle += 1;
    }
    let until_ms = d.now_ms() + 2_000;
    d.engine
        .apply(until_ms, &Command::Expire { until_ms })
        .expect("valid");
    let retained_mib = (live_bytes() - before - vec_bytes) as f64 / (1 << 20) as f64;
    println!("memory: {per_lease:.0} bytes per live lease (lease, holder, key share, deadline, dedup record)");
    println!(
        "memory: idle keys leave {} key records, {} leases, {} dedup records: 0 bytes each \
         ({retained_mib:.1} MiB of map capacity stays allocated for reuse)",
        d.engine.store().key_count(),
        d.engine.store().lease_count(),
        d.engine.store().dedup_count()
    );
    report_denial_memory();
}

/// Bytes per recorded denial: 1,000,000 acquires of a full key, each under
/// its own idempotency key, on a fresh engine (whose maps have no capacity
/// left over from other records) with a window longer than the run.
fn report_denial_memory() {
    let mut d = Driver::new(3_600_000);
    d.acquire("full", 1, 3_600_000);
    d.cycle += 1;
    let before = live_bytes();
    for _ in 0..1_000_000 {
        let cmd = d.acquire_command("full", 1, 30_000);
        let Outcome::Denied(_) = d.apply(&cmd) else {
            panic!("the key is held to its limit");
        };
        d.cycle += 1;
    }
    let per_denial = (live_bytes() - before) as f64 / 1e6;
    println!(
        "memory: {per_denial:.0} bytes per recorded denial (dedup record, deadline), {} records",
        d.engine.store().dedup_count()
    );
}

/// The cycles callgrind counts. Returns the cycle count, so the compiler
/// cannot fold it into [`warm_up`].
#[inline(never)]
fn measured(d: &mut Driver, commands: &[(Command, Command)]) -> u64 {
    for (acquire, release) in commands {
        d.cycle(acquire, release);
    }
    d.cycle
}

/// Warms up past the dedup window, then runs `cycles` cycles for callgrind.
fn run_cycles(case: &str, cycles: u64) {
    let keys: Vec<String> = (0..1_000_000).map(|i| format!("fn-{i}")).collect();
    let key = |c: u64| match case {
        "hot_key" => "hot",
        "1m_keys" => keys[(c.wrapping_mul(2_654_435_761) % 1_000_000) as usize].as_str(),
        other => panic!("unknown case {other}"),
    };
    let mut d = Driver::new(1_000);
    let warmup = 1_200 * CYCLES_PER_MS;
    let batch: Vec<_> = (0..warmup).map(|c| d.prepare(key(c))).collect();
    warm_up(&mut d, &batch);
    let batch: Vec<_> = (warmup..warmup + cycles)
        .map(|c| d.prepare(key(c)))
        .collect();
    let end = measured(&mut d, &batch);
    println!(
        "{case}: {cycles} cycles to {end}, {} dedup records",
        d.engine.store().dedup_count()
    );
}

/// The cycles callgrind skips: the same work as [`measured`], under another name.
#[inline(never)]
fn warm_up(d: &mut Driver, commands: &[(Command, Command)]) {
    for (acquire, release) in commands {
        d.cycle(acquire, release);
    }
}

fn main() {
    if let Some(cycles) = std::env::var("LEASEHOLD_BENCH_CYCLES")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        let case = std::env::var("LEASEHOLD_BENCH_CASE").unwrap_or_else(|_| "hot_key".into());
        run_cycles(&case, cycles);
        return;
    }
    report_memory();
    let mut c = Criterion::default().configure_from_args();
    bench_cycles(&mut c);
    c.final_summary();
}
