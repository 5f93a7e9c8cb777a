//! The records the engine keeps and the narrow trait it keeps them behind.
//!
//! The engine reads and writes only through [`Store`], so the replicated
//! state machine can back it with RocksDB while tests use [`MemStore`]. Every
//! record serializes deterministically: two stores holding the same records
//! produce the same bytes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::types::{Holder, KeyAdmin, Kind, LeaseId};
use crate::slot::Slot;

/// Hash maps keyed by client-chosen strings: a fast hasher, seeded per
/// process so crafted keys cannot aim at collisions.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Group-wide counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The latest applied time; never decreases.
    pub applied_ms: u64,
}

/// A 128-bit XXH3 of length-prefixed parts after a domain byte. Records are
/// keyed by these instead of the strings they stand for: fixed-size keys
/// hash, compare and copy cheaply, and a lease carries no strings. Two
/// distinct names collide with probability about n²/2¹²⁹ — for a billion
/// names, below 10⁻²⁰.
fn id128(domain: u8, scope: &str, name: &str) -> u128 {
    use crate::limits::{IDEMPOTENCY_KEY_BYTES_MAX, KEY_BYTES_MAX, SCOPE_BYTES_MAX};
    const CAP: usize = 3 + SCOPE_BYTES_MAX + max(KEY_BYTES_MAX, IDEMPOTENCY_KEY_BYTES_MAX);
    const fn max(a: usize, b: usize) -> usize {
        if a > b {
            a
        } else {
            b
        }
    }
    // Most names are short: a small buffer spares zeroing the large one.
    if 3 + scope.len() + name.len() <= 64 {
        id128_in::<64>(domain, scope, name)
    } else {
        id128_in::<CAP>(domain, scope, name)
    }
}

fn id128_in<const N: usize>(domain: u8, scope: &str, name: &str) -> u128 {
    let mut buf = [0u8; N];
    let len = 3 + scope.len() + name.len();
    assert!(len <= N, "validated names fit the identity buffer");
    buf[0] = domain;
    buf[1..3].copy_from_slice(&(scope.len() as u16).to_le_bytes());
    buf[3..3 + scope.len()].copy_from_slice(scope.as_bytes());
    buf[3 + scope.len()..len].copy_from_slice(name.as_bytes());
    xxhash_rust::xxh3::xxh3_128(&buf[..len])
}

/// A constraint key's identity: (scope, kind, key). The same string under
/// two kinds is two keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KeyId(pub u128);

impl KeyId {
    pub fn new(scope: &str, kind: Kind, key: &str) -> Self {
        let domain = match kind {
            Kind::Concurrency => 1,
            Kind::Throttle => 2,
            Kind::RateLimit => 3,
            Kind::Semaphore => 4,
        };
        KeyId(id128(domain, scope, key))
    }
}

/// A scope's identity, as leases remember it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ScopeId(pub u128);

impl ScopeId {
    pub fn new(scope: &str) -> Self {
        ScopeId(id128(0, scope, ""))
    }
}

/// A grant a rate-limit key remembers: `units` granted at `at_ms` (rounded
/// up to a slot, see `RATE_LIMIT_SLOTS_PER_PERIOD`) under `period_ms`, the
/// period its request carried. It is remembered, and counts, for that period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowEntry {
    pub at_ms: u64,
    pub units: u32,
    pub period_ms: u64,
}

impl WindowEntry {
    /// When this grant stops counting for a request carrying `period_ms`.
    pub fn leaves_at_ms(&self, period_ms: u64) -> u64 {
        self.at_ms + self.period_ms.min(period_ms)
    }
}

/// The per-kind state of a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyState {
    /// `used` counts the units of every holder, expired or not, until the
    /// scavenger ends the expired ones. `limit` is the last one a request
    /// carried.
    Concurrency { used: u64, limit: u64 },
    /// `used` as for concurrency; `capacity` is set at run time.
    Semaphore { used: u64, capacity: u64 },
    /// GCRA theoretical arrival time, in nanoseconds since the epoch (wide,
    /// because `amount × period / limit` may reach far into the future).
    Throttle {
        tat_ns: u128,
        limit: u32,
        period_ms: u64,
        burst: u32,
    },
    /// Grants still remembered, in grant order. `limit` and `period_ms` are
    /// the last a request carried (for inspection).
    RateLimit {
        window: Vec<WindowEntry>,
        limit: u32,
        period_ms: u64,
    },
}

/// A key's state, its holders (concurrency and semaphore) and the instant
/// the scavenger will look at it again (throttle and rate limit).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The scope the key belongs to, which its id alone does not tell:
    /// the store counts keys per scope by it.
    pub scope: ScopeId,
    pub state: KeyState,
    /// Ordered by expiry, then lease id.
    pub holders: BTreeSet<Holder>,
    pub sweep_at_ms: Option<u64>,
}

/// Units one lease holds on one key (concurrency or semaphore).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub key: KeyId,
    pub units: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub scope: ScopeId,
    pub amount: u32,
    pub holds: Vec<Hold>,
    pub granted_at_ms: u64,
    pub expires_at_ms: u64,
    /// `granted_at + max_lifetime_ms`, if the acquire set one.
    pub deadline_ms: Option<u64>,
    /// The acquire's idempotency record, which lives while the lease does.
    pub acquire: DedupKey,
}

/// An idempotency key's identity: (scope, idempotency key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DedupKey(pub u128);

impl DedupKey {
    pub fn new(scope: &str, idempotency_key: &str) -> Self {
        DedupKey(id128(0xff, scope, idempotency_key))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupRecord {
    /// Hash of the request's parameters: a retry must match it.
    pub fingerprint: u64,
    pub outcome: Recorded,
    /// When the record may be dropped; `None` while the lease it granted lives.
    pub drop_at_ms: Option<u64>,
}

/// An outcome as its dedup record keeps it: only what the request, which a
/// replay repeats, cannot give back (see `Engine::replayed`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Recorded {
    /// The grant's expiry is its time plus the request's TTL, its fencing
    /// token its lease id, and its usage names the request's constraints.
    Granted {
        lease_id: LeaseId,
        granted_amount: u32,
        granted_at_ms: u64,
        usage: GrantUsage,
    },
    Extended {
        expires_at_ms: u64,
    },
    Released {
        was_held: bool,
    },
    Capacity {
        capacity: u64,
    },
    Admin(KeyAdmin),
    /// A denial names only the blocking constraints of the request: bit `i`
    /// of `blocking` stands for its constraint `i` (a request carries at
    /// most 16), and `usage` holds their figures in request order.
    Denied {
        blocking: u16,
        /// Bit `i`: constraint `i`'s key was paused.
        paused: u16,
        usage: DenialUsage,
    },
}

const _: () = assert!(crate::limits::CONSTRAINTS_PER_REQUEST_MAX <= u16::BITS as usize);

/// The figures of a grant's usage, one per constraint in request order:
/// the first inline, since most acquires carry one constraint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantUsage {
    pub first: UsageFigures,
    pub rest: Vec<UsageFigures>,
}

impl GrantUsage {
    /// How many constraints the figures are of.
    pub fn count(&self) -> usize {
        1 + self.rest.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &UsageFigures> {
        std::iter::once(&self.first).chain(&self.rest)
    }
}

/// The figures of a denial's blocking constraints, in request order: the
/// first inline, since most denials have one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DenialUsage {
    pub first: BlockingFigures,
    pub rest: Vec<BlockingFigures>,
}

impl DenialUsage {
    /// How many blocking constraints the figures are of.
    pub fn count(&self) -> usize {
        1 + self.rest.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &BlockingFigures> {
        std::iter::once(&self.first).chain(&self.rest)
    }
}

/// A blocking constraint's figures as its denial saw them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockingFigures {
    pub figures: UsageFigures,
    /// The applied time at which it would admit the request, if nothing
    /// else happened: the denial's time plus its `retry_after_ms`. `None`
    /// when time alone never will.
    pub admits_at_ms: Option<u64>,
}

/// [`Usage`](super::types::Usage) without what its constraint names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageFigures {
    pub used: u64,
    pub limit: u64,
    pub available: u64,
}

/// What one scope holds: what its quotas (see
/// [`Quotas`](super::types::Quotas)) count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScopeUsage {
    /// Lease records, live or expired but not yet scavenged.
    pub leases: u64,
    /// Constraint keys with state.
    pub keys: u64,
}

impl ScopeUsage {
    fn is_empty(&self) -> bool {
        self.leases == 0 && self.keys == 0
    }
}

/// Something the scavenger must look at when applied time reaches its instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Deadline {
    Lease(LeaseId),
    Dedup(DedupKey),
    Key(KeyId),
}

/// Where the engine keeps its records. Implementations must keep deadlines
/// ordered by instant, then kind as `Deadline` orders them (the order of
/// dedup records at one instant is free: dropping them commutes);
/// everything else is point access.
pub trait Store {
    fn meta(&self) -> Meta;
    fn set_meta(&mut self, meta: Meta);

    /// The counter of `slot`'s next grant: 1 for a slot that never granted.
    fn next_lease_seq(&self, slot: Slot) -> u64;
    fn set_next_lease_seq(&mut self, slot: Slot, seq: u64);

    fn key(&self, id: &KeyId) -> Option<&KeyRecord>;
    fn key_mut(&mut self, id: &KeyId) -> Option<&mut KeyRecord>;
    fn insert_key(&mut self, id: KeyId, record: KeyRecord);
    /// The record of `id`, inserted from `new` if there is none.
    fn key_or_insert(&mut self, id: KeyId, new: impl FnOnce() -> KeyRecord) -> &mut KeyRecord;
    fn remove_key(&mut self, id: &KeyId) -> Option<KeyRecord>;

    fn lease(&self, id: LeaseId) -> Option<&Lease>;
    fn lease_mut(&mut self, id: LeaseId) -> Option<&mut Lease>;
    fn insert_lease(&mut self, id: LeaseId, lease: Lease);
    fn remove_lease(&mut self, id: LeaseId) -> Option<Lease>;

    /// What `scope` holds now, in O(1): kept as records come and go.
    fn scope_usage(&self, scope: &ScopeId) -> ScopeUsage;

    /// Idempotency records kept.
    fn dedup_count(&self) -> usize;
    fn dedup(&self, key: &DedupKey) -> Option<&DedupRecord>;
    fn dedup_mut(&mut self, key: &DedupKey) -> Option<&mut DedupRecord>;
    fn insert_dedup(&mut self, key: DedupKey, record: DedupRecord);
    fn remove_dedup(&mut self, key: &DedupKey) -> Option<DedupRecord>;

    /// The earliest deadline, if any.
    fn first_deadline(&self) -> Option<(u64, Deadline)>;
    fn insert_deadline(&mut self, at_ms: u64, deadline: Deadline);
    fn remove_deadline(&mut self, at_ms: u64, deadline: &Deadline);

    /// Whether any key has operator settings: when none has, requests need
    /// not look them up.
    fn any_admin(&self) -> bool;
    fn admin(&self, id: &KeyId) -> Option<&KeyAdmin>;
    /// Stores `admin` for `id`; default settings remove its record.
    fn set_admin(&mut self, id: KeyId, admin: KeyAdmin);
}

/// The in-memory store: hash maps for point access, ordered sets for
/// deadlines. Iteration order never reaches the engine; [`MemStore::encode`]
/// sorts, so equal stores encode to equal bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemStore {
    meta: Meta,
    /// Next grant counter of every slot that has granted.
    lease_seqs: BTreeMap<Slot, u64>,
    keys: HashMap<KeyId, KeyRecord>,
    leases: HashMap<LeaseId, Lease>,
    dedup: HashMap<DedupKey, DedupRecord>,
    deadlines: Deadlines,
    admin: HashMap<KeyId, KeyAdmin>,
    /// Per scope holding anything, what it holds: derived from `keys` and
    /// `leases` (never encoded, rebuilt on decode), for O(1) quota checks.
    scopes: HashMap<ScopeId, ScopeUsage>,
}

/// Deadlines by kind, which together order as `(instant, Deadline)`.
/// Apart, each set compares small keys instead of enums, and dedup
/// deadlines — almost always `applied time + a fixed window`, so arriving
/// in order — queue instead of rebalancing a tree.
#[derive(Clone, Debug, Default)]
struct Deadlines {
    leases: BTreeSet<(u64, LeaseId)>,
    /// Ordered by instant only: the order of records dropped at one instant
    /// changes nothing, so it is not part of a store's value (see `eq`).
    dedup: VecDeque<(u64, DedupKey)>,
    keys: BTreeSet<(u64, KeyId)>,
}

impl Deadlines {
    fn len(&self) -> usize {
        self.leases.len() + self.dedup.len() + self.keys.len()
    }

    fn first(&self) -> Option<(u64, Deadline)> {
        // At one instant, leases come first, then dedup records, then keys,
        // as `Deadline` orders them: a later kind wins only if earlier.
        let mut first = self
            .leases
            .first()
            .map(|&(at, id)| (at, Deadline::Lease(id)));
        if let Some(&(at, k)) = self.dedup.front() {
            if first.is_none_or(|(f, _)| at < f) {
                first = Some((at, Deadline::Dedup(k)));
            }
        }
        if let Some(&(at, id)) = self.keys.first() {
            if first.is_none_or(|(f, _)| at < f) {
                first = Some((at, Deadline::Key(id)));
            }
        }
        first
    }

    fn insert(&mut self, at_ms: u64, deadline: Deadline) {
        match deadline {
            Deadline::Lease(id) => {
                self.leases.insert((at_ms, id));
            }
            Deadline::Dedup(key) => {
                // After the last of its instant: at the back unless the
                // dedup window has shrunk since a restart.
                if self.dedup.back().is_none_or(|(at, _)| *at <= at_ms) {
                    self.dedup.push_back((at_ms, key));
                } else {
                    let i = self.dedup.partition_point(|(at, _)| *at <= at_ms);
                    self.dedup.insert(i, (at_ms, key));
                }
            }
            Deadline::Key(id) => {
                self.keys.insert((at_ms, id));
            }
        }
    }

    fn remove(&mut self, at_ms: u64, deadline: &Deadline) {
        match *deadline {
            Deadline::Lease(id) => {
                self.leases.remove(&(at_ms, id));
            }
            Deadline::Dedup(key) => {
                if self.dedup.front() == Some(&(at_ms, key)) {
                    self.dedup.pop_front();
                    return;
                }
                let from = self.dedup.partition_point(|(at, _)| *at < at_ms);
                let found = self
                    .dedup
                    .range(from..)
                    .take_while(|(at, _)| *at == at_ms)
                    .position(|(_, k)| *k == key);
                if let Some(i) = found {
                    self.dedup.remove(from + i);
                }
            }
            Deadline::Key(id) => {
                self.keys.remove(&(at_ms, id));
            }
        }
    }

    /// Every deadline, ordered by `(instant, deadline)`.
    fn sorted(&self) -> Vec<(u64, Deadline)> {
        let mut all: Vec<(u64, Deadline)> = Vec::with_capacity(self.len());
        all.extend(
            self.leases
                .iter()
                .map(|&(at, id)| (at, Deadline::Lease(id))),
        );
        all.extend(self.dedup.iter().map(|&(at, k)| (at, Deadline::Dedup(k))));
        all.extend(self.keys.iter().map(|&(at, id)| (at, Deadline::Key(id))));
        all.sort_unstable();
        all
    }

    fn from_sorted(all: Vec<(u64, Deadline)>) -> Self {
        let mut d = Deadlines::default();
        for (at, deadline) in all {
            d.insert(at, deadline);
        }
        d
    }
}

impl PartialEq for Deadlines {
    fn eq(&self, other: &Self) -> bool {
        self.leases == other.leases && self.keys == other.keys && {
            let mut a: Vec<_> = self.dedup.iter().collect();
            let mut b: Vec<_> = other.dedup.iter().collect();
            a.sort_unstable();
            b.sort_unstable();
            a == b
        }
    }
}

impl Eq for Deadlines {}

/// The canonical, ordered form of a store's records.
#[derive(Serialize, Deserialize)]
struct Canonical {
    meta: Meta,
    lease_seqs: BTreeMap<Slot, u64>,
    keys: BTreeMap<KeyId, KeyRecord>,
    leases: BTreeMap<LeaseId, Lease>,
    dedup: BTreeMap<DedupKey, DedupRecord>,
    /// Strictly increasing: encodes as the ordered set it is.
    deadlines: Vec<(u64, Deadline)>,
    admin: BTreeMap<KeyId, KeyAdmin>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Deterministic bytes of every record: equal stores give equal bytes.
    pub fn encode(&self) -> Vec<u8> {
        let canonical = Canonical {
            meta: self.meta,
            lease_seqs: self.lease_seqs.clone(),
            keys: self.keys.iter().map(|(k, v)| (*k, v.clone())).collect(),
            leases: self.leases.iter().map(|(k, v)| (*k, v.clone())).collect(),
            dedup: self.dedup.iter().map(|(k, v)| (*k, v.clone())).collect(),
            deadlines: self.deadlines.sorted(),
            admin: self.admin.iter().map(|(k, v)| (*k, v.clone())).collect(),
        };
        postcard::to_stdvec(&canonical).expect("in-memory records always serialize")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        let c: Canonical = postcard::from_bytes(bytes)?;
        let mut store = Self {
            meta: c.meta,
            lease_seqs: c.lease_seqs,
            keys: c.keys.into_iter().collect(),
            leases: c.leases.into_iter().collect(),
            dedup: c.dedup.into_iter().collect(),
            deadlines: Deadlines::from_sorted(c.deadlines),
            admin: c.admin.into_iter().collect(),
            scopes: HashMap::default(),
        };
        for rec in store.keys.values() {
            store.scopes.entry(rec.scope).or_default().keys += 1;
        }
        for lease in store.leases.values() {
            store.scopes.entry(lease.scope).or_default().leases += 1;
        }
        Ok(store)
    }

    /// Adds to what `scope` holds, forgetting a scope that then holds
    /// nothing.
    fn count(&mut self, scope: ScopeId, leases: i64, keys: i64) {
        let usage = self.scopes.entry(scope).or_default();
        usage.leases = (usage.leases.checked_add_signed(leases))
            .expect("a scope's lease count covers the leases it holds");
        usage.keys =
            (usage.keys.checked_add_signed(keys)).expect("a scope's key count covers its keys");
        if usage.is_empty() {
            self.scopes.remove(&scope);
        }
    }

    /// A 64-bit digest of [`MemStore::encode`], for comparing replicas.
    pub fn digest(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&self.encode())
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    pub fn lease_count(&self) -> usize {
        self.leases.len()
    }

    /// Keys, leases, idempotency records and key settings: what
    /// [`MemStore::encode`] writes.
    pub fn record_count(&self) -> usize {
        self.keys.len() + self.leases.len() + self.dedup.len() + self.admin.len()
    }

    pub fn deadline_count(&self) -> usize {
        self.deadlines.len()
    }
}

impl Store for MemStore {
    fn meta(&self) -> Meta {
        self.meta
    }
    fn set_meta(&mut self, meta: Meta) {
        self.meta = meta;
    }

    fn next_lease_seq(&self, slot: Slot) -> u64 {
        self.lease_seqs.get(&slot).copied().unwrap_or(1)
    }

    fn set_next_lease_seq(&mut self, slot: Slot, seq: u64) {
        self.lease_seqs.insert(slot, seq);
    }

    fn key(&self, id: &KeyId) -> Option<&KeyRecord> {
        self.keys.get(id)
    }
    fn key_mut(&mut self, id: &KeyId) -> Option<&mut KeyRecord> {
        self.keys.get_mut(id)
    }
    fn insert_key(&mut self, id: KeyId, record: KeyRecord) {
        let scope = record.scope;
        if let Some(old) = self.keys.insert(id, record) {
            self.count(old.scope, 0, -1);
        }
        self.count(scope, 0, 1);
    }
    fn key_or_insert(&mut self, id: KeyId, new: impl FnOnce() -> KeyRecord) -> &mut KeyRecord {
        match self.keys.entry(id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let record = new();
                self.scopes.entry(record.scope).or_default().keys += 1;
                e.insert(record)
            }
        }
    }
    fn remove_key(&mut self, id: &KeyId) -> Option<KeyRecord> {
        let record = self.keys.remove(id)?;
        self.count(record.scope, 0, -1);
        Some(record)
    }

    fn lease(&self, id: LeaseId) -> Option<&Lease> {
        self.leases.get(&id)
    }
    fn lease_mut(&mut self, id: LeaseId) -> Option<&mut Lease> {
        self.leases.get_mut(&id)
    }
    fn insert_lease(&mut self, id: LeaseId, lease: Lease) {
        let scope = lease.scope;
        if let Some(old) = self.leases.insert(id, lease) {
            self.count(old.scope, -1, 0);
        }
        self.count(scope, 1, 0);
    }
    fn remove_lease(&mut self, id: LeaseId) -> Option<Lease> {
        let lease = self.leases.remove(&id)?;
        self.count(lease.scope, -1, 0);
        Some(lease)
    }

    fn scope_usage(&self, scope: &ScopeId) -> ScopeUsage {
        self.scopes.get(scope).copied().unwrap_or_default()
    }

    fn dedup_count(&self) -> usize {
        self.dedup.len()
    }

    fn dedup(&self, key: &DedupKey) -> Option<&DedupRecord> {
        self.dedup.get(key)
    }
    fn dedup_mut(&mut self, key: &DedupKey) -> Option<&mut DedupRecord> {
        self.dedup.get_mut(key)
    }
    fn insert_dedup(&mut self, key: DedupKey, record: DedupRecord) {
        self.dedup.insert(key, record);
    }
    fn remove_dedup(&mut self, key: &DedupKey) -> Option<DedupRecord> {
        self.dedup.remove(key)
    }

    fn first_deadline(&self) -> Option<(u64, Deadline)> {
        self.deadlines.first()
    }
    fn insert_deadline(&mut self, at_ms: u64, deadline: Deadline) {
        self.deadlines.insert(at_ms, deadline);
    }
    fn remove_deadline(&mut self, at_ms: u64, deadline: &Deadline) {
        self.deadlines.remove(at_ms, deadline);
    }

    fn any_admin(&self) -> bool {
        !self.admin.is_empty()
    }
    fn admin(&self, id: &KeyId) -> Option<&KeyAdmin> {
        self.admin.get(id)
    }
    fn set_admin(&mut self, id: KeyId, admin: KeyAdmin) {
        if admin.is_default() {
            self.admin.remove(&id);
        } else {
            self.admin.insert(id, admin);
        }
    }
}
