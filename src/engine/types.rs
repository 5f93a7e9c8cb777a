//! Commands the engine applies, the outcomes it returns, and the records it
//! keeps in its [`Store`](super::Store).

use serde::{Deserialize, Serialize};

/// Identifies a lease: its scope's slot and the slot's grant counter (see
/// [`crate::slot::lease_id`]), so ids are never reused.
pub type LeaseId = u64;

/// The kind of a constraint. Part of a key's identity: the same key string
/// under two kinds names two independent keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    Concurrency,
    Throttle,
    RateLimit,
    Semaphore,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Concurrency => "concurrency",
            Kind::Throttle => "throttle",
            Kind::RateLimit => "rate_limit",
            Kind::Semaphore => "semaphore",
        }
    }
}

/// One constraint of an acquire. Limits travel with every request.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Constraint {
    /// At most `limit` units held at once by unexpired leases.
    Concurrency { key: String, limit: u32 },
    /// GCRA: `limit` units per `period_ms` on average, at most `burst + 1`
    /// units at one instant.
    Throttle {
        key: String,
        limit: u32,
        period_ms: u64,
        burst: u32,
    },
    /// Hard limit: at most `limit` units granted in any window of `period_ms`.
    RateLimit {
        key: String,
        limit: u32,
        period_ms: u64,
    },
    /// Consumes `weight` units of the key's run-time capacity per unit of
    /// amount, for as long as the lease is held.
    Semaphore { key: String, weight: u32 },
}

impl Constraint {
    pub fn kind(&self) -> Kind {
        match self {
            Constraint::Concurrency { .. } => Kind::Concurrency,
            Constraint::Throttle { .. } => Kind::Throttle,
            Constraint::RateLimit { .. } => Kind::RateLimit,
            Constraint::Semaphore { .. } => Kind::Semaphore,
        }
    }

    pub fn key(&self) -> &str {
        match self {
            Constraint::Concurrency { key, .. }
            | Constraint::Throttle { key, .. }
            | Constraint::RateLimit { key, .. }
            | Constraint::Semaphore { key, .. } => key,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AcquireRequest {
    pub scope: String,
    pub constraints: Vec<Constraint>,
    pub amount: u32,
    /// With a value, grant the largest amount in `[min_amount, amount]` that
    /// every constraint allows; without, all of `amount` or nothing.
    pub min_amount: Option<u32>,
    pub lease_ttl_ms: u64,
    /// The lease can never be extended past `granted_at + max_lifetime_ms`.
    pub max_lifetime_ms: Option<u64>,
    pub idempotency_key: String,
    /// Whether a denial of this attempt is its caller's answer. Not part of
    /// the request's fingerprint: a waiting acquire's attempts and its
    /// caller's retries are one request.
    pub attempt: Attempt,
}

/// What a denial of an acquire attempt means. Whatever the attempt, an
/// outcome already recorded under its idempotency key is replayed, and a
/// grant is recorded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Attempt {
    /// The caller hears a denial: it is recorded under the idempotency key
    /// for the dedup window, so a retry replays it and the key never grants
    /// after its caller was told no.
    #[default]
    Final,
    /// An attempt of a waiting acquire, which its waiter follows with
    /// another while its wait lasts: a denial is not recorded (the next
    /// attempt would replay it) and is not the caller's answer.
    Interim,
}

impl AcquireRequest {
    /// The smallest amount that satisfies the request.
    pub fn min_amount(&self) -> u32 {
        self.min_amount.unwrap_or(self.amount)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ExtendRequest {
    pub scope: String,
    pub lease_id: LeaseId,
    /// The new expiry is `now + ttl_ms`.
    pub ttl_ms: u64,
    pub idempotency_key: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReleaseRequest {
    pub scope: String,
    pub lease_id: LeaseId,
    pub idempotency_key: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SetCapacityRequest {
    pub scope: String,
    pub key: String,
    pub capacity: u64,
    pub idempotency_key: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AdjustCapacityRequest {
    pub scope: String,
    pub key: String,
    pub delta: i64,
    pub idempotency_key: String,
}

/// An operator's action on one constraint key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AdminAction {
    /// No new grants on the key until resumed; waiters keep waiting.
    Pause,
    Resume,
    /// Enforce these limits whatever requests carry. The constraint's kind
    /// and key are the request's; a semaphore cannot be pinned (its capacity
    /// is already set at run time).
    Pin(Constraint),
    Unpin,
    /// Forget the key's usage: holders stop counting against it (their
    /// leases live on), a throttle's bucket and a rate limit's window empty.
    /// A semaphore keeps its capacity; pause and pin stay as they are.
    Reset,
}

impl AdminAction {
    pub fn as_str(&self) -> &'static str {
        match self {
            AdminAction::Pause => "pause",
            AdminAction::Resume => "resume",
            AdminAction::Pin(_) => "pin",
            AdminAction::Unpin => "unpin",
            AdminAction::Reset => "reset",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AdminRequest {
    pub scope: String,
    pub kind: Kind,
    pub key: String,
    pub action: AdminAction,
    pub idempotency_key: String,
}

/// A key's operator settings. They outlive the key's state: an idle key
/// whose record is dropped stays paused or pinned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyAdmin {
    pub paused: bool,
    /// Limits that replace those requests carry.
    pub pinned: Option<Constraint>,
}

impl KeyAdmin {
    pub fn is_default(&self) -> bool {
        !self.paused && self.pinned.is_none()
    }
}

/// A command of the replicated log. The proposer stamps it with its clock;
/// the engine never reads one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Acquire(AcquireRequest),
    Extend(ExtendRequest),
    Release(ReleaseRequest),
    SetCapacity(SetCapacityRequest),
    AdjustCapacity(AdjustCapacityRequest),
    Admin(AdminRequest),
    /// The scavenger: drop expired leases, idle keys and dedup records whose
    /// time is at or before `min(until_ms, applied time)`.
    Expire {
        until_ms: u64,
    },
}

impl Command {
    /// The scope and idempotency key of a mutating command; `None` for the
    /// scavenger's `Expire`, which is not a client call.
    pub fn idempotency(&self) -> Option<(&str, &str)> {
        let (scope, key) = match self {
            Command::Acquire(r) => (&r.scope, &r.idempotency_key),
            Command::Extend(r) => (&r.scope, &r.idempotency_key),
            Command::Release(r) => (&r.scope, &r.idempotency_key),
            Command::SetCapacity(r) => (&r.scope, &r.idempotency_key),
            Command::AdjustCapacity(r) => (&r.scope, &r.idempotency_key),
            Command::Admin(r) => (&r.scope, &r.idempotency_key),
            Command::Expire { .. } => return None,
        };
        Some((scope, key))
    }
}

/// Bounds on what the replicated state may hold, and for how long it keeps
/// idempotency records, which the leader stamps into every entry it
/// proposes, beside its time (see `crate::raft::Request::Engine`).
///
/// They travel in the log, not in each replica's configuration, because
/// the engine must decide alike on every replica: a bound read from a
/// node's own settings could differ between replicas (during a rolling
/// change, say) and split their states. Carried in the entry, a bound is
/// whatever the leader that proposed it had configured, and every replica
/// applies that. They are checked at apply time against counts the store
/// keeps, in log order, so concurrent proposals batched into one entry or
/// in flight together cannot overshoot: each sees the counts the previous
/// ones left. (An admission check on the leader before proposing could
/// not promise that.)
///
/// A bound lowered below what the state already holds refuses new growth
/// until the state falls under it; nothing held is taken away, as with a
/// constraint's limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Quotas {
    /// Live leases one scope may hold.
    pub max_leases_per_scope: u64,
    /// Constraint keys with state one scope may have.
    pub max_keys_per_scope: u64,
    /// Idempotency records the group may keep.
    pub max_idempotency_records_per_group: u64,
    /// How long an idempotency record outlives what it recorded (for a
    /// grant: the end of its lease; for a denial: the denial). A record
    /// keeps the window of the entry that recorded it or ended its lease.
    pub dedup_window_ms: u64,
}

impl Quotas {
    /// No bounds on counts, and the default dedup window: for tests and
    /// benchmarks that apply commands directly.
    pub const NONE: Quotas = Quotas {
        max_leases_per_scope: u64::MAX,
        max_keys_per_scope: u64::MAX,
        max_idempotency_records_per_group: u64::MAX,
        dedup_window_ms: crate::limits::DEDUP_WINDOW_MS_DEFAULT,
    };
}

impl Default for Quotas {
    fn default() -> Self {
        use crate::limits::*;
        Quotas {
            max_leases_per_scope: LEASES_PER_SCOPE_DEFAULT,
            max_keys_per_scope: KEYS_PER_SCOPE_DEFAULT,
            max_idempotency_records_per_group: IDEMPOTENCY_RECORDS_PER_GROUP_DEFAULT,
            dedup_window_ms: DEDUP_WINDOW_MS_DEFAULT,
        }
    }
}

/// Which quota refused a call (see [`Quotas`]; waiters are bounded per
/// node, where they park).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Quota {
    LeasesPerScope,
    KeysPerScope,
    WaitersPerScope,
    IdempotencyRecordsPerGroup,
}

impl Quota {
    /// The setting that sets it, as the configuration spells it.
    pub fn setting(self) -> &'static str {
        match self {
            Quota::LeasesPerScope => "max_leases_per_scope",
            Quota::KeysPerScope => "max_keys_per_scope",
            Quota::WaitersPerScope => "max_waiters_per_scope",
            Quota::IdempotencyRecordsPerGroup => "max_idempotency_records_per_group",
        }
    }
}

/// The state of one constraint as a request saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub kind: Kind,
    pub key: String,
    /// Units counted against the limit now. For a throttle, the units still
    /// held back by pacing (the GCRA bucket's fill).
    pub used: u64,
    /// The limit the request carried (for a semaphore, the key's capacity;
    /// for a throttle, `burst + 1`, the bucket size).
    pub limit: u64,
    /// Whole units of amount that could be granted now (for a semaphore,
    /// already divided by the weight).
    pub available: u64,
    /// For a blocking constraint: milliseconds until it admits the request's
    /// minimum amount, if nothing else happens meanwhile. `None` when no
    /// passage of time alone will do (a semaphore whose capacity is too small).
    pub retry_after_ms: Option<u64>,
    /// The key is paused: it grants nothing until resumed.
    pub paused: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub lease_id: LeaseId,
    /// Strictly increasing across the grants of one slot, and so of one
    /// scope; the lease id.
    pub fencing_token: u64,
    pub granted_amount: u32,
    pub granted_at_ms: u64,
    pub expires_at_ms: u64,
    /// Usage of every constraint after the grant, in request order.
    pub usage: Vec<Usage>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    /// Every constraint that cannot admit the minimum amount, in request order.
    pub blocking: Vec<Usage>,
    /// Milliseconds until every blocking constraint admits the minimum amount
    /// (the largest of theirs); `None` if one of them never will by time alone.
    pub retry_after_ms: Option<u64>,
}

/// What a scavenging pass freed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeReport {
    pub leases_expired: u64,
    pub units_freed: u64,
    pub keys_dropped: u64,
    pub dedup_dropped: u64,
}

/// The result of a successfully applied command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Granted(Grant),
    Denied(Denial),
    Extended {
        lease_id: LeaseId,
        expires_at_ms: u64,
    },
    /// `was_held` is false when the lease had already ended (released or
    /// expired): releasing twice is a no-op that says so.
    Released {
        lease_id: LeaseId,
        was_held: bool,
    },
    Capacity {
        key: String,
        capacity: u64,
    },
    /// A key's operator settings after an admin action.
    Admin(KeyAdmin),
    Expired(PurgeReport),
}

/// An applied command: its outcome and whether it replays an earlier one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub outcome: Outcome,
    /// True when the idempotency key matched an earlier call and `outcome` is
    /// that call's outcome, returned again without spending anything.
    pub replayed: bool,
}

/// The answer of [`Engine::check`](super::Engine::check).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    /// The amount an acquire would be granted now: 0 if it would be denied.
    pub grantable_amount: u32,
    /// Usage of every constraint, in request order.
    pub usage: Vec<Usage>,
    /// As in [`Denial`]; `Some(0)` when it would be granted.
    pub retry_after_ms: Option<u64>,
}

/// One lease holding units of a concurrency or semaphore key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Holder {
    pub expires_at_ms: u64,
    pub lease_id: LeaseId,
    pub units: u64,
}

/// The answer of [`Engine::inspect`](super::Engine::inspect).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    pub kind: Kind,
    pub key: String,
    /// False when the key holds no state: never used, or idle and dropped.
    pub exists: bool,
    /// Units counted now (see [`Usage::used`]).
    pub used: u64,
    /// The last limit a request carried (the capacity, for a semaphore).
    pub limit: u64,
    /// Unexpired holders, earliest expiry first (concurrency and semaphore).
    pub holders: Vec<Holder>,
    /// The next instant at which something of this key changes by time alone:
    /// a holder expires, the throttle bucket drains, a rate-limit grant leaves
    /// the window.
    pub next_expiry_ms: Option<u64>,
    pub admin: KeyAdmin,
}
