//! Every bound Leasehold enforces on its input, in one place.
//!
//! Validation (`engine::validate`) checks requests against these before
//! anything reaches the state machine, and the proto documents the same
//! numbers. Names carry their unit last.

/// Longest scope, in bytes (UTF-8). A scope is never empty.
pub const SCOPE_BYTES_MAX: usize = 256;

/// Longest constraint key, in bytes (UTF-8). A key is never empty.
pub const KEY_BYTES_MAX: usize = 256;

/// Longest idempotency key, in bytes. An idempotency key is never empty.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;

/// Most constraints one acquire may carry.
pub const CONSTRAINTS_PER_REQUEST_MAX: usize = 16;

/// Largest `amount` (and `min_amount`) one acquire may ask for.
pub const AMOUNT_MAX: u32 = 1_000_000;

/// Largest `limit` of a concurrency, throttle or rate-limit constraint.
pub const LIMIT_MAX: u32 = 1_000_000_000;

/// Largest throttle `burst`.
pub const BURST_MAX: u32 = 1_000_000_000;

/// Largest semaphore `weight` (units consumed per unit of amount).
pub const WEIGHT_MAX: u32 = 1_000_000;

/// Largest semaphore capacity, set or reached by adjustment.
pub const CAPACITY_MAX: u64 = 1_000_000_000_000;

/// Shortest throttle or rate-limit period.
pub const PERIOD_MS_MIN: u64 = 1;

/// Longest throttle or rate-limit period: seven days.
pub const PERIOD_MS_MAX: u64 = 7 * 24 * 3_600_000;

/// Longest lease TTL one acquire or extend may ask for: one day.
pub const LEASE_TTL_MS_MAX: u64 = 24 * 3_600_000;

/// Longest `max_lifetime_ms` of a lease: thirty days.
pub const MAX_LIFETIME_MS_MAX: u64 = 30 * 24 * 3_600_000;

/// Longest time an idempotency record outlives what it recorded: seven days.
pub const DEDUP_WINDOW_MS_MAX: u64 = 7 * 24 * 3_600_000;

/// Default time an idempotency record outlives what it recorded: ten minutes.
pub const DEDUP_WINDOW_MS_DEFAULT: u64 = 10 * 60_000;

/// Resolution of a rate-limit window: grants are remembered in at most this
/// many slots per period, each grant's time rounded up to its slot's end, so
/// a key's memory is bounded whatever its limit. Rounding up only delays
/// when a grant leaves the window, so the limit is never exceeded.
pub const RATE_LIMIT_SLOTS_PER_PERIOD: u64 = 1_000;

/// Most entries a rate-limit key keeps; past it the two oldest merge into
/// the later one (again only delaying when units leave the window). Reached
/// only when requests for one key carry periods of very different lengths.
pub const RATE_LIMIT_ENTRIES_MAX: usize = 2 * RATE_LIMIT_SLOTS_PER_PERIOD as usize + 2;

/// Longest an Acquire may wait on the leader for capacity (5 minutes).
pub const WAIT_MS_MAX: u64 = 300_000;

/// Acquires parked at once on one node; more are refused with
/// RESOURCE_EXHAUSTED.
pub const WAITERS_MAX: usize = 10_000;

/// Calls one session stream may have in flight on a node; the node reads
/// no further calls from it until one finishes.
pub const SESSION_IN_FLIGHT_MAX: usize = 4096;

/// Bytes parked acquires may keep at once on one node; more are refused
/// with RESOURCE_EXHAUSTED. Requests are bounded (about 5 KiB at most), so
/// this binds before `WAITERS_MAX` only for large requests.
pub const WAITER_BYTES_MAX: usize = 32 << 20;

/// What a parked acquire keeps besides its request: its task, its turn and
/// channel, its timers.
pub const WAITER_OVERHEAD_BYTES: usize = 1024;

/// Default quota of live leases per scope (`max_leases_per_scope`). A
/// lease with its holder entry, deadline and grant record keeps 510 to 610
/// bytes of heap (measured by `tests/quotas.rs`), so one scope keeps at
/// most about 600 MB of them: far beyond any workload we test or benchmark
/// (the hot one holds 1,000), yet a bound on what one tenant can take.
pub const LEASES_PER_SCOPE_DEFAULT: u64 = 1_000_000;

/// Largest `max_leases_per_scope` a node takes.
pub const LEASES_PER_SCOPE_MAX: u64 = 1_000_000_000;

/// Default quota of constraint keys with state per scope
/// (`max_keys_per_scope`): a concurrency key keeps 400 to 460 bytes of heap
/// beyond its leases, so about 460 MB at the quota.
pub const KEYS_PER_SCOPE_DEFAULT: u64 = 1_000_000;

/// Largest `max_keys_per_scope` a node takes.
pub const KEYS_PER_SCOPE_MAX: u64 = 1_000_000_000;

/// Default quota of acquires parked per scope on one node
/// (`max_waiters_per_scope`): a quarter of [`WAITERS_MAX`], so no one scope
/// can fill a node's waiting room.
pub const WAITERS_PER_SCOPE_DEFAULT: u32 = 2_500;

/// Default bound on the idempotency records one group keeps
/// (`max_idempotency_records_per_group`). A record (a denial's, a
/// release's) keeps 190 to 250 bytes of heap with its deadline (measured by
/// `tests/quotas.rs`), so about 2.5 GB per replica of a group at the bound.
/// Records held are about the keyed call rate times the dedup window: with
/// the default window this admits about 16,000 keyed calls per second per
/// group, sustained. Benchmark runs (9 s on a fresh cluster) keep under a
/// million per group.
pub const IDEMPOTENCY_RECORDS_PER_GROUP_DEFAULT: u64 = 10_000_000;

/// Largest `max_idempotency_records_per_group` a node takes.
pub const IDEMPOTENCY_RECORDS_PER_GROUP_MAX: u64 = 1_000_000_000;
