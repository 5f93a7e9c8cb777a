//! Property tests of the engine against a small reference model.
//!
//! `Model` is written from the engine's specification, not from its code:
//! plain vectors, linear scans, everything recomputed on every read, nothing
//! ever dropped. Random command logs are applied to both and every outcome
//! compared; further properties check invariants of the engine alone
//! (limits, GCRA bound, fencing, idempotency, determinism).

use std::collections::BTreeMap;

use leasehold::engine::{
    AcquireRequest, AdjustCapacityRequest, AdminAction, AdminRequest, Applied, Attempt, Command,
    Constraint, Denial, Engine, EngineConfig, EngineError, ErrorCode, ExtendRequest, Grant,
    KeyAdmin, Kind, MemStore, Outcome, PurgeReport, Quotas, ReleaseRequest, ScopeId,
    SetCapacityRequest, Store, Usage,
};
use leasehold::limits::{CAPACITY_MAX, DEDUP_WINDOW_MS_MAX};
use leasehold::slot::{lease_id, slot_of};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

const NS_PER_MS: u128 = 1_000_000;
const SCOPES: [&str; 2] = ["s1", "s2"];
const KEYS: [&str; 3] = ["a", "b", "c"];
const KINDS: [Kind; 4] = [
    Kind::Concurrency,
    Kind::Throttle,
    Kind::RateLimit,
    Kind::Semaphore,
];

fn config() -> EngineConfig {
    EngineConfig { slot_count: SLOTS }
}

/// No bounds on counts, and idempotency records outlive every test log (a
/// few minutes of stamps), so the model never has to drop one.
const UNBOUNDED: Quotas = Quotas {
    dedup_window_ms: DEDUP_WINDOW_MS_MAX,
    ..Quotas::NONE
};

/// The model's slots: enough that its scopes land in different ones, so
/// lease ids carry different slots and each slot counts its own grants.
const SLOTS: u32 = 1024;

#[test]
fn the_model_scopes_live_in_different_slots() {
    assert_ne!(slot_of(SCOPES[0], SLOTS), slot_of(SCOPES[1], SLOTS));
}

fn engine() -> Engine<MemStore> {
    Engine::new(MemStore::new(), config())
}

/// What a test compares: the outcome, with errors reduced to their code and
/// scavenger reports (storage bookkeeping, not observable state) to nothing.
type Seen = Result<Applied, ErrorCode>;

fn seen(r: Result<Applied, EngineError>) -> Seen {
    r.map(|mut a| {
        if let Outcome::Expired(_) = a.outcome {
            a.outcome = Outcome::Expired(PurgeReport::default());
        }
        a
    })
    .map_err(|e| e.code())
}

// ---------------------------------------------------------------------------
// The reference model.
// ---------------------------------------------------------------------------

/// GCRA emission interval `t` and tolerance `tau`, in nanoseconds.
fn gcra(limit: u32, period_ms: u64, burst: u32) -> (u128, u128) {
    let t = (u128::from(period_ms) * NS_PER_MS).div_ceil(u128::from(limit));
    (t, t * u128::from(burst))
}

/// The instant a rate-limit grant is recorded at: rounded up to its slot.
fn recorded_at_ms(now_ms: u64, period_ms: u64) -> u64 {
    let slot = (period_ms / 1000).max(1);
    now_ms.div_ceil(slot) * slot
}

struct ModelLease {
    id: u64,
    scope: String,
    /// (kind, key, units) for the holding kinds.
    holds: Vec<(Kind, String, u64)>,
    granted_at_ms: u64,
    expires_at_ms: u64,
    max_lifetime_ms: Option<u64>,
    released: bool,
}

/// A live holder: (expires_at_ms, lease_id, units).
type ModelHolder = (u64, u64, u64);

#[derive(Default)]
struct Model {
    now_ms: u64,
    /// Grants so far per slot.
    grants: BTreeMap<u32, u64>,
    /// Every lease id granted, oldest first.
    issued: Vec<u64>,
    leases: Vec<ModelLease>,
    /// (scope, key, capacity) of semaphores.
    capacities: Vec<(String, String, u64)>,
    /// (scope, key, tat_ns) of throttles.
    tats: Vec<(String, String, u128)>,
    /// (scope, key, recorded_at_ms, units, period_ms) of every rate-limit grant.
    rate_grants: Vec<(String, String, u64, u64, u64)>,
    /// Every recorded command, its outcome and when it was applied: every
    /// success, and every denial but an interim attempt's.
    done: Vec<(Command, Outcome, u64)>,
    /// (scope, kind, key) → operator settings.
    admin: Vec<((String, Kind, String), KeyAdmin)>,
}

fn identity(cmd: &Command) -> Option<(&str, &str)> {
    match cmd {
        Command::Acquire(r) => Some((&r.scope, &r.idempotency_key)),
        Command::Extend(r) => Some((&r.scope, &r.idempotency_key)),
        Command::Release(r) => Some((&r.scope, &r.idempotency_key)),
        Command::SetCapacity(r) => Some((&r.scope, &r.idempotency_key)),
        Command::AdjustCapacity(r) => Some((&r.scope, &r.idempotency_key)),
        Command::Admin(r) => Some((&r.scope, &r.idempotency_key)),
        Command::Expire { .. } => None,
    }
}

/// The request an attempt makes: how a denial of it is treated is not part
/// of it.
fn request(cmd: &Command) -> Command {
    match cmd {
        Command::Acquire(r) => Command::Acquire(AcquireRequest {
            attempt: Attempt::Final,
            ..r.clone()
        }),
        other => other.clone(),
    }
}

/// `outcome`, recorded at `at_ms`, as a replay at `now_ms` returns it: a
/// denial's waits count down from its time, to no less than 0.
fn replayed(outcome: &Outcome, at_ms: u64, now_ms: u64) -> Outcome {
    let Outcome::Denied(d) = outcome else {
        return outcome.clone();
    };
    let later = |ms: Option<u64>| ms.map(|ms| ms.saturating_sub(now_ms - at_ms));
    Outcome::Denied(Denial {
        blocking: d
            .blocking
            .iter()
            .map(|u| Usage {
                retry_after_ms: later(u.retry_after_ms),
                ..u.clone()
            })
            .collect(),
        retry_after_ms: later(d.retry_after_ms),
    })
}

impl Model {
    fn apply(&mut self, stamp_ms: u64, cmd: &Command) -> Seen {
        self.now_ms = self.now_ms.max(stamp_ms);
        if let Some(id) = identity(cmd) {
            let earlier = self.done.iter().find(|(c, ..)| identity(c) == Some(id));
            if let Some((c, outcome, at_ms)) = earlier {
                if request(c) != request(cmd) {
                    return Err(ErrorCode::IdempotencyKeyReused);
                }
                return Ok(Applied {
                    outcome: replayed(outcome, *at_ms, self.now_ms),
                    replayed: true,
                });
            }
        }
        let outcome = match cmd {
            Command::Acquire(r) => self.acquire(r),
            Command::Extend(r) => self.extend(r)?,
            Command::Release(r) => self.release(r)?,
            Command::SetCapacity(r) => self.set_capacity(&r.scope, &r.key, r.capacity),
            Command::AdjustCapacity(r) => self.adjust_capacity(r)?,
            Command::Admin(r) => self.admin(r),
            Command::Expire { .. } => Outcome::Expired(PurgeReport::default()),
        };
        let interim = matches!(cmd, Command::Acquire(r) if r.attempt == Attempt::Interim);
        if identity(cmd).is_some() && !(interim && matches!(outcome, Outcome::Denied(_))) {
            self.done.push((cmd.clone(), outcome.clone(), self.now_ms));
        }
        Ok(Applied {
            outcome,
            replayed: false,
        })
    }

    fn now_ns(&self) -> u128 {
        u128::from(self.now_ms) * NS_PER_MS
    }

    fn is_live(&self, l: &ModelLease) -> bool {
        !l.released && l.expires_at_ms > self.now_ms
    }

    /// Live holders of a key, earliest expiry first.
    fn holders(&self, scope: &str, kind: Kind, key: &str) -> Vec<ModelHolder> {
        let mut out = Vec::new();
        for l in self
            .leases
            .iter()
            .filter(|l| l.scope == scope && self.is_live(l))
        {
            for (k, name, units) in &l.holds {
                if *k == kind && name == key {
                    out.push((l.expires_at_ms, l.id, *units));
                }
            }
        }
        out.sort();
        out
    }

    fn held(&self, scope: &str, kind: Kind, key: &str) -> u64 {
        self.holders(scope, kind, key).iter().map(|h| h.2).sum()
    }

    fn capacity(&self, scope: &str, key: &str) -> u64 {
        let found = self
            .capacities
            .iter()
            .find(|(s, k, _)| s == scope && k == key);
        found.map_or(0, |c| c.2)
    }

    /// The throttle's tat, brought up to now (`tat'`).
    fn tat_ns(&self, scope: &str, key: &str) -> u128 {
        let found = self.tats.iter().find(|(s, k, _)| s == scope && k == key);
        found.map_or(0, |t| t.2).max(self.now_ns())
    }

    /// Rate-limit grants that count for a request carrying `period_ms`:
    /// (leaves_at, units). A grant counts for the shorter of that period and
    /// the period its own request carried.
    fn in_window(&self, scope: &str, key: &str, period_ms: u64) -> Vec<(u64, u64)> {
        self.rate_grants
            .iter()
            .filter(|(s, k, ..)| s == scope && k == key)
            .map(|(_, _, at, units, own_ms)| (at + period_ms.min(*own_ms), *units))
            .filter(|(leaves_at, _)| *leaves_at > self.now_ms)
            .collect()
    }

    fn window_units(&self, scope: &str, key: &str, period_ms: u64) -> u64 {
        self.in_window(scope, key, period_ms)
            .iter()
            .map(|g| g.1)
            .sum()
    }

    /// Whole units of amount the constraint admits now.
    fn available(&self, scope: &str, c: &Constraint) -> u64 {
        if self.paused(scope, c) {
            return 0;
        }
        match c {
            Constraint::Concurrency { key, limit } => {
                u64::from(*limit).saturating_sub(self.held(scope, Kind::Concurrency, key))
            }
            Constraint::Semaphore { key, weight } => {
                let free = self.capacity(scope, key).saturating_sub(self.held(
                    scope,
                    Kind::Semaphore,
                    key,
                ));
                free / u64::from(*weight)
            }
            Constraint::Throttle {
                key,
                limit,
                period_ms,
                burst,
            } => {
                let (t, tau) = gcra(*limit, *period_ms, *burst);
                let ahead = self.tat_ns(scope, key) - self.now_ns();
                u64::try_from((tau + t).saturating_sub(ahead) / t).unwrap()
            }
            Constraint::RateLimit {
                key,
                limit,
                period_ms,
            } => u64::from(*limit).saturating_sub(self.window_units(scope, key, *period_ms)),
        }
    }

    /// (used, limit) as `Usage` documents them.
    fn used_and_limit(&self, scope: &str, c: &Constraint) -> (u64, u64) {
        match c {
            Constraint::Concurrency { key, limit } => {
                (self.held(scope, Kind::Concurrency, key), u64::from(*limit))
            }
            Constraint::Semaphore { key, .. } => (
                self.held(scope, Kind::Semaphore, key),
                self.capacity(scope, key),
            ),
            Constraint::Throttle {
                key,
                limit,
                period_ms,
                burst,
            } => {
                let (t, _) = gcra(*limit, *period_ms, *burst);
                let ahead = self.tat_ns(scope, key) - self.now_ns();
                (
                    u64::try_from(ahead.div_ceil(t)).unwrap(),
                    u64::from(*burst) + 1,
                )
            }
            Constraint::RateLimit {
                key,
                limit,
                period_ms,
            } => (self.window_units(scope, key, *period_ms), u64::from(*limit)),
        }
    }

    /// The first instant, among now and the given leaving times, at which
    /// the units still there (`left(t)`) fit: `left(t) + need <= room`.
    fn first_fit(&self, leaving: &[(u64, u64)], need: u64, room: u64) -> Option<u64> {
        if need > room {
            return None;
        }
        let mut times: Vec<u64> = leaving.iter().map(|l| l.0).collect();
        times.push(self.now_ms);
        times.sort();
        times.into_iter().find_map(|t| {
            let left: u64 = leaving.iter().filter(|l| l.0 > t).map(|l| l.1).sum();
            (left + need <= room).then(|| t - self.now_ms)
        })
    }

    fn retry_after_ms(&self, scope: &str, c: &Constraint, m: u32) -> Option<u64> {
        if self.paused(scope, c) {
            return None;
        }
        let m = u64::from(m);
        let holders = |kind| -> Vec<(u64, u64)> {
            let hs = self.holders(scope, kind, c.key());
            hs.iter().map(|h| (h.0, h.2)).collect()
        };
        match c {
            Constraint::Concurrency { limit, .. } => {
                self.first_fit(&holders(Kind::Concurrency), m, u64::from(*limit))
            }
            Constraint::Semaphore { key, weight } => {
                let room = self.capacity(scope, key);
                self.first_fit(&holders(Kind::Semaphore), m * u64::from(*weight), room)
            }
            Constraint::Throttle {
                key,
                limit,
                period_ms,
                burst,
            } => {
                let (t, tau) = gcra(*limit, *period_ms, *burst);
                let at_ns = (self.tat_ns(scope, key) + u128::from(m) * t).saturating_sub(tau + t);
                let at_ms = u64::try_from(at_ns.div_ceil(NS_PER_MS)).unwrap();
                Some(at_ms.saturating_sub(self.now_ms))
            }
            Constraint::RateLimit {
                key,
                limit,
                period_ms,
            } => self.first_fit(
                &self.in_window(scope, key, *period_ms),
                m,
                u64::from(*limit),
            ),
        }
    }

    fn usage(&self, scope: &str, c: &Constraint, retry_for: Option<u32>) -> Usage {
        let (used, limit) = self.used_and_limit(scope, c);
        Usage {
            kind: c.kind(),
            key: c.key().to_string(),
            used,
            limit,
            available: self.available(scope, c),
            retry_after_ms: retry_for.and_then(|m| self.retry_after_ms(scope, c, m)),
            paused: self.paused(scope, c),
        }
    }

    fn key_admin(&self, scope: &str, kind: Kind, key: &str) -> KeyAdmin {
        let found = self
            .admin
            .iter()
            .find(|((s, k, n), _)| s == scope && *k == kind && n == key);
        found.map(|(_, a)| a.clone()).unwrap_or_default()
    }

    fn paused(&self, scope: &str, c: &Constraint) -> bool {
        self.key_admin(scope, c.kind(), c.key()).paused
    }

    fn admin(&mut self, r: &AdminRequest) -> Outcome {
        let id = (r.scope.clone(), r.kind, r.key.clone());
        let mut admin = self.key_admin(&r.scope, r.kind, &r.key);
        match &r.action {
            AdminAction::Pause => admin.paused = true,
            AdminAction::Resume => admin.paused = false,
            AdminAction::Pin(c) => admin.pinned = Some(c.clone()),
            AdminAction::Unpin => admin.pinned = None,
            AdminAction::Reset => {
                for l in self.leases.iter_mut().filter(|l| l.scope == r.scope) {
                    l.holds.retain(|(k, n, _)| !(*k == r.kind && *n == r.key));
                }
                match r.kind {
                    Kind::Throttle => self
                        .tats
                        .retain(|(s, k, _)| !(*s == r.scope && *k == r.key)),
                    Kind::RateLimit => self
                        .rate_grants
                        .retain(|(s, k, ..)| !(*s == r.scope && *k == r.key)),
                    Kind::Concurrency | Kind::Semaphore => {}
                }
            }
        }
        self.admin.retain(|(k, _)| *k != id);
        if admin != KeyAdmin::default() {
            self.admin.push((id, admin.clone()));
        }
        Outcome::Admin(admin)
    }

    /// The request's constraints with pinned limits in place of its own.
    fn governed(&self, scope: &str, constraints: &[Constraint]) -> Vec<Constraint> {
        constraints
            .iter()
            .map(|c| {
                self.key_admin(scope, c.kind(), c.key())
                    .pinned
                    .unwrap_or_else(|| c.clone())
            })
            .collect()
    }

    fn acquire(&mut self, r: &AcquireRequest) -> Outcome {
        let scope = r.scope.as_str();
        let m = r.min_amount.unwrap_or(r.amount);
        let constraints = self.governed(scope, &r.constraints);
        let granted = constraints
            .iter()
            .map(|c| self.available(scope, c))
            .fold(u64::from(r.amount), u64::min);
        if granted < u64::from(m) {
            let blocking: Vec<Usage> = constraints
                .iter()
                .filter(|c| self.available(scope, c) < u64::from(m))
                .map(|c| self.usage(scope, c, Some(m)))
                .collect();
            let retry_after_ms = if blocking.iter().any(|u| u.retry_after_ms.is_none()) {
                None
            } else {
                blocking.iter().filter_map(|u| u.retry_after_ms).max()
            };
            return Outcome::Denied(Denial {
                blocking,
                retry_after_ms,
            });
        }
        let granted = u32::try_from(granted).unwrap();
        let slot = slot_of(scope, SLOTS);
        let seq = self.grants.entry(slot).or_default();
        *seq += 1;
        let id = lease_id(slot, *seq);
        self.issued.push(id);
        let holds = self.spend(scope, &constraints, granted);
        let now_ms = self.now_ms;
        self.leases.push(ModelLease {
            id,
            scope: scope.to_string(),
            holds,
            granted_at_ms: now_ms,
            expires_at_ms: now_ms + r.lease_ttl_ms,
            max_lifetime_ms: r.max_lifetime_ms,
            released: false,
        });
        Outcome::Granted(Grant {
            lease_id: id,
            fencing_token: id,
            granted_amount: granted,
            granted_at_ms: now_ms,
            expires_at_ms: now_ms + r.lease_ttl_ms,
            usage: constraints
                .iter()
                .map(|c| self.usage(scope, c, None))
                .collect(),
        })
    }

    /// Spends a grant on the spending kinds; returns the holding kinds' holds.
    fn spend(
        &mut self,
        scope: &str,
        constraints: &[Constraint],
        granted: u32,
    ) -> Vec<(Kind, String, u64)> {
        let mut holds = Vec::new();
        for c in constraints {
            match c {
                Constraint::Concurrency { key, .. } => {
                    holds.push((Kind::Concurrency, key.clone(), u64::from(granted)))
                }
                Constraint::Semaphore { key, weight } => holds.push((
                    Kind::Semaphore,
                    key.clone(),
                    u64::from(granted) * u64::from(*weight),
                )),
                Constraint::Throttle {
                    key,
                    limit,
                    period_ms,
                    burst,
                } => {
                    let (t, _) = gcra(*limit, *period_ms, *burst);
                    let tat_ns = self.tat_ns(scope, key) + u128::from(granted) * t;
                    self.tats.retain(|(s, k, _)| !(s == scope && k == key));
                    self.tats.push((scope.to_string(), key.clone(), tat_ns));
                }
                Constraint::RateLimit { key, period_ms, .. } => {
                    let at_ms = recorded_at_ms(self.now_ms, *period_ms);
                    self.rate_grants.push((
                        scope.to_string(),
                        key.clone(),
                        at_ms,
                        u64::from(granted),
                        *period_ms,
                    ));
                }
            }
        }
        holds
    }

    /// The live lease `id` of `scope`, by index; `None` once it has ended,
    /// whichever scope asks (an ended lease's scope is not remembered).
    fn lease_of(&self, scope: &str, id: u64) -> Result<Option<usize>, ErrorCode> {
        match self.leases.iter().position(|l| l.id == id) {
            Some(i) if !self.is_live(&self.leases[i]) => Ok(None),
            Some(i) if self.leases[i].scope == scope => Ok(Some(i)),
            _ => Err(ErrorCode::LeaseNotFound),
        }
    }

    fn extend(&mut self, r: &ExtendRequest) -> Result<Outcome, ErrorCode> {
        let i = self
            .lease_of(&r.scope, r.lease_id)?
            .ok_or(ErrorCode::LeaseLost)?;
        let expires_at_ms = self.now_ms + r.ttl_ms;
        let lease = &mut self.leases[i];
        if lease
            .max_lifetime_ms
            .is_some_and(|life| expires_at_ms > lease.granted_at_ms + life)
        {
            return Err(ErrorCode::MaxLifetimeExceeded);
        }
        lease.expires_at_ms = expires_at_ms;
        Ok(Outcome::Extended {
            lease_id: r.lease_id,
            expires_at_ms,
        })
    }

    fn release(&mut self, r: &ReleaseRequest) -> Result<Outcome, ErrorCode> {
        let live = self.lease_of(&r.scope, r.lease_id)?;
        if let Some(i) = live {
            self.leases[i].released = true;
        }
        Ok(Outcome::Released {
            lease_id: r.lease_id,
            was_held: live.is_some(),
        })
    }

    fn set_capacity(&mut self, scope: &str, key: &str, capacity: u64) -> Outcome {
        self.capacities
            .retain(|(s, k, _)| !(s == scope && k == key));
        self.capacities
            .push((scope.to_string(), key.to_string(), capacity));
        Outcome::Capacity {
            key: key.to_string(),
            capacity,
        }
    }

    fn adjust_capacity(&mut self, r: &AdjustCapacityRequest) -> Result<Outcome, ErrorCode> {
        let next = i128::from(self.capacity(&r.scope, &r.key)) + i128::from(r.delta);
        if next < 0 || next > i128::from(CAPACITY_MAX) {
            return Err(ErrorCode::CapacityOutOfRange);
        }
        Ok(self.set_capacity(&r.scope, &r.key, u64::try_from(next).unwrap()))
    }
}

// ---------------------------------------------------------------------------
// Random command logs.
// ---------------------------------------------------------------------------

/// Raw numbers from which a constraint of any kind is built.
#[derive(Clone, Copy, Debug)]
struct Params {
    limit: u32,
    period_ms: u64,
    burst: u32,
    weight: u32,
}

fn params() -> impl Strategy<Value = Params> {
    let periods = prop::sample::select(vec![1u64, 3, 10, 100, 999, 1000, 2500, 5000]);
    (1u32..=4, periods, 0u32..=3, 1u32..=3).prop_map(|(limit, period_ms, burst, weight)| Params {
        limit,
        period_ms,
        burst,
        weight,
    })
}

fn constraint(kind: Kind, key: &str, p: Params) -> Constraint {
    let key = key.to_string();
    match kind {
        Kind::Concurrency => Constraint::Concurrency {
            key,
            limit: p.limit,
        },
        Kind::Throttle => Constraint::Throttle {
            key,
            limit: p.limit,
            period_ms: p.period_ms,
            burst: p.burst,
        },
        Kind::RateLimit => Constraint::RateLimit {
            key,
            limit: p.limit,
            period_ms: p.period_ms,
        },
        Kind::Semaphore => Constraint::Semaphore {
            key,
            weight: p.weight,
        },
    }
}

#[derive(Clone, Debug)]
enum Op {
    Acquire {
        scope: usize,
        /// (key, kind, params if this case varies them per request)
        picks: Vec<(usize, usize, Params)>,
        amount: u32,
        min_amount: Option<u32>,
        lease_ttl_ms: u64,
        extra_lifetime_ms: Option<u64>,
        /// A waiting acquire's interim attempt.
        interim: bool,
    },
    /// `back` counts lease ids back from the next one (0: never granted).
    Extend {
        scope: usize,
        back: u64,
        ttl_ms: u64,
    },
    Release {
        scope: usize,
        back: u64,
    },
    SetCapacity {
        scope: usize,
        key: usize,
        capacity: u64,
    },
    AdjustCapacity {
        scope: usize,
        key: usize,
        delta: i64,
    },
    /// `until_ms` is the applied time plus this offset.
    Expire {
        offset_ms: i64,
    },
    /// `action`: 0 pause, 1 resume, 2 pin to `limit`, 3 unpin, 4 reset.
    Admin {
        scope: usize,
        kind: usize,
        key: usize,
        action: u8,
        limit: u32,
    },
    /// No command at all.
    Skip,
}

#[derive(Clone, Debug)]
enum Idem {
    Fresh,
    /// Repeat the n-th latest mutating command verbatim.
    Retry(usize),
    /// Repeat it as the other kind of attempt, if it is an acquire (the
    /// waiter's next attempt, or its caller's retry).
    Reattempt(usize),
    /// Reuse the scope and idempotency key of the n-th latest mutating
    /// command for this (most likely different) command.
    Reuse(usize),
}

#[derive(Clone, Debug)]
struct Step {
    dt_ms: i64,
    op: Op,
    idem: Idem,
}

#[derive(Clone, Debug)]
struct Case {
    /// Fixed parameters of each (kind, key), at `kind * KEYS.len() + key`.
    catalog: Vec<Params>,
    /// Whether requests carry their own parameters instead of the catalog's.
    vary: bool,
    steps: Vec<Step>,
}

impl Case {
    fn params(&self, kind: usize, key: usize) -> Params {
        self.catalog[kind * KEYS.len() + key]
    }
}

fn op() -> impl Strategy<Value = Op> {
    let scope = 0..SCOPES.len();
    let key = 0..KEYS.len();
    let picks = prop::collection::vec((0..KEYS.len(), 0..KINDS.len(), params()), 1..=3);
    let acquire = (
        scope.clone(),
        picks,
        1u32..=4,
        prop::option::of(1u32..=4),
        1u64..=200,
        prop::option::of(0u64..=150),
        prop::bool::weighted(0.25),
    )
        .prop_map(
            |(scope, picks, amount, min_amount, lease_ttl_ms, extra_lifetime_ms, interim)| {
                Op::Acquire {
                    scope,
                    picks,
                    amount,
                    min_amount,
                    lease_ttl_ms,
                    extra_lifetime_ms,
                    interim,
                }
            },
        );
    let delta = prop_oneof![
        6 => 1i64..=6,
        3 => -6i64..=-1,
        1 => Just(CAPACITY_MAX as i64),
    ];
    prop_oneof![
        // First, so that shrinking turns the steps that do not matter into it.
        1 => Just(Op::Skip),
        10 => acquire,
        3 => (scope.clone(), 0u64..6, 1u64..=200).prop_map(|(scope, back, ttl_ms)| Op::Extend { scope, back, ttl_ms }),
        3 => (scope.clone(), 0u64..6).prop_map(|(scope, back)| Op::Release { scope, back }),
        2 => (scope.clone(), key.clone(), 0u64..=12)
            .prop_map(|(scope, key, capacity)| Op::SetCapacity { scope, key, capacity }),
        2 => (scope, key, delta).prop_map(|(scope, key, delta)| Op::AdjustCapacity { scope, key, delta }),
        2 => (-300i64..=50).prop_map(|offset_ms| Op::Expire { offset_ms }),
        1 => (0..SCOPES.len(), 0..KINDS.len(), 0..KEYS.len(), 0u8..5, 1u32..=4)
            .prop_map(|(scope, kind, key, action, limit)| Op::Admin { scope, kind, key, action, limit }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    // Time mostly advances a little, sometimes jumps, sometimes goes back.
    let dt_ms = prop_oneof![8 => 0i64..=30, 2 => -60i64..0, 1 => 0i64..=3000];
    let idem = prop_oneof![
        8 => Just(Idem::Fresh),
        1 => (0usize..8).prop_map(Idem::Retry),
        1 => (0usize..8).prop_map(Idem::Reattempt),
        1 => (0usize..8).prop_map(Idem::Reuse),
    ];
    (dt_ms, op(), idem).prop_map(|(dt_ms, op, idem)| Step { dt_ms, op, idem })
}

fn case_with(vary: impl Strategy<Value = bool>) -> impl Strategy<Value = Case> {
    let catalog = prop::collection::vec(params(), KINDS.len() * KEYS.len());
    let steps = prop::collection::vec(step(), 50..=200);
    (catalog, vary, steps).prop_map(|(catalog, vary, steps)| Case {
        catalog,
        vary,
        steps,
    })
}

fn case() -> impl Strategy<Value = Case> {
    case_with(prop_oneof![3 => Just(false), 1 => Just(true)])
}

/// One applied command of a log and what the model says it returns.
struct Entry {
    stamp_ms: u64,
    cmd: Command,
    expected: Seen,
}

/// Turns a case into concrete commands, running the model alongside to
/// pick lease ids near the latest grants.
struct Builder<'a> {
    case: &'a Case,
    model: Model,
    stamp_ms: u64,
    fresh: u64,
    history: Vec<Command>,
}

impl Builder<'_> {
    fn constraints(&self, picks: &[(usize, usize, Params)]) -> Vec<Constraint> {
        let mut out: Vec<Constraint> = Vec::new();
        for &(key, kind, own) in picks {
            // One key string per request, whatever its kind.
            if out.iter().any(|c| c.key() == KEYS[key]) {
                continue;
            }
            let p = if self.case.vary {
                own
            } else {
                self.case.params(kind, key)
            };
            out.push(constraint(KINDS[kind], KEYS[key], p));
        }
        out
    }

    /// An acquire whose amounts pass validation: its minimum fits every limit.
    fn acquire(&self, op: &Op, scope: &str, idempotency_key: String) -> AcquireRequest {
        let Op::Acquire {
            picks,
            amount,
            min_amount,
            lease_ttl_ms,
            extra_lifetime_ms,
            interim,
            ..
        } = op
        else {
            unreachable!("called for acquires")
        };
        let constraints = self.constraints(picks);
        let most = constraints
            .iter()
            .map(|c| match *c {
                Constraint::Concurrency { limit, .. } | Constraint::RateLimit { limit, .. } => {
                    limit
                }
                Constraint::Throttle { burst, .. } => burst + 1,
                Constraint::Semaphore { .. } => u32::MAX,
            })
            .min()
            .unwrap();
        let (amount, min_amount) = match min_amount {
            None => ((*amount).min(most), None),
            Some(m) => (*amount, Some((*m).min(*amount).min(most))),
        };
        AcquireRequest {
            scope: scope.to_string(),
            constraints,
            amount,
            min_amount,
            lease_ttl_ms: *lease_ttl_ms,
            max_lifetime_ms: extra_lifetime_ms.map(|e| lease_ttl_ms + e),
            idempotency_key,
            attempt: if *interim {
                Attempt::Interim
            } else {
                Attempt::Final
            },
        }
    }

    /// The lease granted `back` grants ago (the oldest if there were
    /// fewer); `back` 0, or no grant yet: the id `scope`'s slot grants next,
    /// which no lease has yet.
    fn lease_id(&self, scope: &str, back: u64) -> u64 {
        let issued = &self.model.issued;
        match usize::try_from(back).unwrap_or(usize::MAX) {
            0 => {}
            back if back <= issued.len() => return issued[issued.len() - back],
            _ if !issued.is_empty() => return issued[0],
            _ => {}
        }
        let slot = slot_of(scope, SLOTS);
        lease_id(slot, self.model.grants.get(&slot).copied().unwrap_or(0) + 1)
    }

    fn command(&mut self, op: &Op) -> Option<Command> {
        self.fresh += 1;
        let idempotency_key = format!("k{}", self.fresh);
        let cmd = match *op {
            Op::Acquire { scope, .. } => {
                Command::Acquire(self.acquire(op, SCOPES[scope], idempotency_key))
            }
            Op::Extend {
                scope,
                back,
                ttl_ms,
            } => Command::Extend(ExtendRequest {
                scope: SCOPES[scope].to_string(),
                lease_id: self.lease_id(SCOPES[scope], back),
                ttl_ms,
                idempotency_key,
            }),
            Op::Release { scope, back } => Command::Release(ReleaseRequest {
                scope: SCOPES[scope].to_string(),
                lease_id: self.lease_id(SCOPES[scope], back),
                idempotency_key,
            }),
            Op::SetCapacity {
                scope,
                key,
                capacity,
            } => Command::SetCapacity(SetCapacityRequest {
                scope: SCOPES[scope].to_string(),
                key: KEYS[key].to_string(),
                capacity,
                idempotency_key,
            }),
            Op::AdjustCapacity { scope, key, delta } => {
                Command::AdjustCapacity(AdjustCapacityRequest {
                    scope: SCOPES[scope].to_string(),
                    key: KEYS[key].to_string(),
                    delta,
                    idempotency_key,
                })
            }
            Op::Expire { offset_ms } => Command::Expire {
                until_ms: self.model.now_ms.saturating_add_signed(offset_ms),
            },
            Op::Admin {
                scope,
                kind,
                key,
                action,
                limit,
            } => {
                let kind_ = KINDS[kind];
                let action = match action {
                    0 => AdminAction::Pause,
                    1 => AdminAction::Resume,
                    // Semaphores cannot be pinned: their capacity rules.
                    2 if kind_ != Kind::Semaphore => {
                        let p = Params {
                            limit,
                            ..self.case.params(kind, key)
                        };
                        AdminAction::Pin(constraint(kind_, KEYS[key], p))
                    }
                    2 | 3 => AdminAction::Unpin,
                    _ => AdminAction::Reset,
                };
                Command::Admin(AdminRequest {
                    scope: SCOPES[scope].to_string(),
                    kind: kind_,
                    key: KEYS[key].to_string(),
                    action,
                    idempotency_key,
                })
            }
            Op::Skip => return None,
        };
        Some(cmd)
    }

    fn next(&mut self, step: &Step) -> Option<Entry> {
        let mut cmd = self.command(&step.op)?;
        self.stamp_ms = self.stamp_ms.saturating_add_signed(step.dt_ms);
        let earlier =
            |n: usize| self.history[self.history.len() - 1 - n % self.history.len()].clone();
        if identity(&cmd).is_some() && !self.history.is_empty() {
            match step.idem {
                Idem::Fresh => {}
                Idem::Retry(n) => cmd = earlier(n),
                Idem::Reattempt(n) => {
                    cmd = earlier(n);
                    if let Command::Acquire(r) = &mut cmd {
                        r.attempt = match r.attempt {
                            Attempt::Final => Attempt::Interim,
                            Attempt::Interim => Attempt::Final,
                        };
                    }
                }
                Idem::Reuse(n) => {
                    let (scope, key) = identity(&earlier(n))
                        .map(|(s, k)| (s.to_string(), k.to_string()))
                        .unwrap();
                    set_identity(&mut cmd, scope, key);
                }
            }
        }
        if identity(&cmd).is_some() {
            self.history.push(cmd.clone());
        }
        assert_eq!(
            leasehold::engine::validate::command(&cmd),
            Ok(()),
            "the generator builds only valid commands: {cmd:?}"
        );
        let expected = self.model.apply(self.stamp_ms, &cmd);
        Some(Entry {
            stamp_ms: self.stamp_ms,
            cmd,
            expected,
        })
    }
}

fn set_identity(cmd: &mut Command, scope: String, key: String) {
    let (s, k) = match cmd {
        Command::Acquire(r) => (&mut r.scope, &mut r.idempotency_key),
        Command::Extend(r) => (&mut r.scope, &mut r.idempotency_key),
        Command::Release(r) => (&mut r.scope, &mut r.idempotency_key),
        Command::SetCapacity(r) => (&mut r.scope, &mut r.idempotency_key),
        Command::AdjustCapacity(r) => (&mut r.scope, &mut r.idempotency_key),
        Command::Admin(r) => (&mut r.scope, &mut r.idempotency_key),
        Command::Expire { .. } => return,
    };
    *s = scope;
    *k = key;
}

/// The case's concrete log with the model's outcomes.
fn build(case: &Case) -> Vec<Entry> {
    let mut b = Builder {
        case,
        model: Model::default(),
        stamp_ms: 1_000,
        fresh: 0,
        history: Vec::new(),
    };
    case.steps.iter().filter_map(|s| b.next(s)).collect()
}

fn show(log: &[Entry]) -> String {
    log.iter()
        .enumerate()
        .map(|(i, e)| format!("  #{i} @{} {}\n", e.stamp_ms, brief(&e.cmd)))
        .collect()
}

/// A command on one line, for failure reports.
fn brief(cmd: &Command) -> String {
    match cmd {
        Command::Acquire(r) => {
            let cs: Vec<String> = r.constraints.iter().map(brief_constraint).collect();
            format!(
                "acquire {} {} [{}] amount {} min {:?} ttl {} life {:?} {:?}",
                r.scope,
                r.idempotency_key,
                cs.join(", "),
                r.amount,
                r.min_amount,
                r.lease_ttl_ms,
                r.max_lifetime_ms,
                r.attempt
            )
        }
        Command::Extend(r) => format!(
            "extend {} {} lease {} ttl {}",
            r.scope, r.idempotency_key, r.lease_id, r.ttl_ms
        ),
        Command::Release(r) => format!(
            "release {} {} lease {}",
            r.scope, r.idempotency_key, r.lease_id
        ),
        Command::SetCapacity(r) => format!(
            "set_capacity {} {} {}={}",
            r.scope, r.idempotency_key, r.key, r.capacity
        ),
        Command::AdjustCapacity(r) => format!(
            "adjust_capacity {} {} {}{:+}",
            r.scope, r.idempotency_key, r.key, r.delta
        ),
        Command::Admin(r) => format!(
            "{} {} {} {} {} {:?}",
            r.action.as_str(),
            r.scope,
            r.idempotency_key,
            r.kind.as_str(),
            r.key,
            r.action
        ),
        Command::Expire { until_ms } => format!("expire until {until_ms}"),
    }
}

fn brief_constraint(c: &Constraint) -> String {
    match c {
        Constraint::Concurrency { key, limit } => format!("concurrency {key} limit {limit}"),
        Constraint::Throttle {
            key,
            limit,
            period_ms,
            burst,
        } => format!("throttle {key} {limit}/{period_ms}ms burst {burst}"),
        Constraint::RateLimit {
            key,
            limit,
            period_ms,
        } => format!("rate_limit {key} {limit}/{period_ms}ms"),
        Constraint::Semaphore { key, weight } => format!("semaphore {key} weight {weight}"),
    }
}

// ---------------------------------------------------------------------------
// Properties.
// ---------------------------------------------------------------------------

/// Live holders of every holding key as the engine reports them.
fn engine_holders(e: &Engine<MemStore>, scope: &str, kind: Kind, key: &str) -> Vec<ModelHolder> {
    let info = e.inspect(scope, kind, key, e.applied_ms()).unwrap();
    info.holders
        .iter()
        .map(|h| (h.expires_at_ms, h.lease_id, h.units))
        .collect()
}

fn differential(case: &Case) -> Result<(), TestCaseError> {
    let log = build(case);
    let mut replay = Model::default();
    let mut e = engine();
    for (i, entry) in log.iter().enumerate() {
        let got = seen(e.apply_within(entry.stamp_ms, &UNBOUNDED, &entry.cmd));
        prop_assert_eq!(
            &got,
            &entry.expected,
            "step #{} differs; log:\n{}",
            i,
            show(&log[..=i])
        );
        let _ = replay.apply(entry.stamp_ms, &entry.cmd);
        for scope in SCOPES {
            for key in KEYS {
                for kind in [Kind::Concurrency, Kind::Semaphore] {
                    let got = engine_holders(&e, scope, kind, key);
                    let want = replay.holders(scope, kind, key);
                    prop_assert_eq!(
                        got,
                        want,
                        "holders of {} {:?} {} after #{}; log:\n{}",
                        scope,
                        kind,
                        key,
                        i,
                        show(&log[..=i])
                    );
                }
            }
        }
    }
    Ok(())
}

/// Applies a log to a fresh engine, returning every outcome.
fn run(log: &[Entry]) -> (Engine<MemStore>, Vec<Seen>) {
    let mut e = engine();
    let outcomes = log
        .iter()
        .map(|x| seen(e.apply_within(x.stamp_ms, &UNBOUNDED, &x.cmd)))
        .collect();
    (e, outcomes)
}

fn usage_within_limits(case: &Case) -> Result<(), TestCaseError> {
    // Operators may pin other limits and reset usage: this property is
    // about the limits requests carry, so it runs without them.
    let mut case = case.clone();
    for step in &mut case.steps {
        if matches!(step.op, Op::Admin { .. }) {
            step.op = Op::Skip;
        }
    }
    let case = &case;
    let log = build(case);
    let concurrency = KINDS.iter().position(|k| *k == Kind::Concurrency).unwrap();
    let mut e = engine();
    for (i, entry) in log.iter().enumerate() {
        let _ = e.apply_within(entry.stamp_ms, &UNBOUNDED, &entry.cmd);
        for scope in SCOPES {
            for (k, key) in KEYS.iter().enumerate() {
                let limit = u64::from(case.params(concurrency, k).limit);
                let info = e
                    .inspect(scope, Kind::Concurrency, key, e.applied_ms())
                    .unwrap();
                let held: u64 = info.holders.iter().map(|h| h.units).sum();
                prop_assert!(
                    held <= limit,
                    "{} {} holds {} > {} after #{}; log:\n{}",
                    scope,
                    key,
                    held,
                    limit,
                    i,
                    show(&log[..=i])
                );
                prop_assert_eq!(info.used, held, "used of {} {} after #{}", scope, key, i);
            }
        }
    }
    Ok(())
}

fn one_lease_per_key(case: &Case) -> Result<(), TestCaseError> {
    let log = build(case);
    let (_, outcomes) = run(&log);
    let mut seen_ids: Vec<((String, String), u64)> = Vec::new();
    for (i, (entry, got)) in log.iter().zip(&outcomes).enumerate() {
        let (
            Some((scope, key)),
            Ok(Applied {
                outcome: Outcome::Granted(g),
                ..
            }),
        ) = (identity(&entry.cmd), got)
        else {
            continue;
        };
        let id = (scope.to_string(), key.to_string());
        if let Some((_, first)) = seen_ids.iter().find(|(k, _)| *k == id) {
            prop_assert_eq!(
                *first,
                g.lease_id,
                "key {:?} granted twice, at #{}; log:\n{}",
                id,
                i,
                show(&log[..=i])
            );
        } else {
            seen_ids.push((id, g.lease_id));
        }
    }
    Ok(())
}

/// Once an acquire's caller hears a denial (a final attempt's, replayed or
/// not), no attempt under its key is granted.
fn denials_stay(case: &Case) -> Result<(), TestCaseError> {
    let log = build(case);
    let (_, outcomes) = run(&log);
    let mut told_no: Vec<(&str, &str)> = Vec::new();
    for (i, (entry, got)) in log.iter().zip(&outcomes).enumerate() {
        let Command::Acquire(r) = &entry.cmd else {
            continue;
        };
        let id = (r.scope.as_str(), r.idempotency_key.as_str());
        match got.as_ref().map(|a| &a.outcome) {
            Ok(Outcome::Granted(_)) => prop_assert!(
                !told_no.contains(&id),
                "key {:?} granted at #{} after its caller was denied; log:\n{}",
                id,
                i,
                show(&log[..=i])
            ),
            Ok(Outcome::Denied(_)) if r.attempt == Attempt::Final => told_no.push(id),
            _ => {}
        }
    }
    Ok(())
}

fn fencing_increases(case: &Case) -> Result<(), TestCaseError> {
    let log = build(case);
    let (_, outcomes) = run(&log);
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    for (i, (entry, got)) in log.iter().zip(&outcomes).enumerate() {
        if let (
            Command::Acquire(r),
            Ok(Applied {
                outcome: Outcome::Granted(g),
                replayed: false,
            }),
        ) = (&entry.cmd, got)
        {
            let last = last.entry(r.scope.as_str()).or_default();
            prop_assert!(
                g.fencing_token > *last,
                "scope {}: token {} after {} at #{}; log:\n{}",
                r.scope,
                g.fencing_token,
                *last,
                i,
                show(&log[..=i])
            );
            *last = g.fencing_token;
        }
    }
    Ok(())
}

fn deterministic(case: &Case, split: prop::sample::Index) -> Result<(), TestCaseError> {
    let log = build(case);
    let k = split.index(log.len() + 1);
    let (a, first) = run(&log);
    let (b, second) = run(&log);
    prop_assert_eq!(&first, &second);
    prop_assert_eq!(a.store().encode(), b.store().encode());
    prop_assert_eq!(a.store().digest(), b.store().digest());

    // Snapshot after `k` commands, restore, and go on from there.
    let (head, _) = run(&log[..k]);
    let bytes = head.store().encode();
    let restored = MemStore::decode(&bytes).unwrap();
    prop_assert_eq!(&restored, head.store());
    prop_assert_eq!(restored.encode(), bytes);
    let mut c = Engine::new(restored, config());
    let rest: Vec<Seen> = log[k..]
        .iter()
        .map(|x| seen(c.apply_within(x.stamp_ms, &UNBOUNDED, &x.cmd)))
        .collect();
    prop_assert_eq!(&rest[..], &first[k..]);
    prop_assert_eq!(c.store().encode(), a.store().encode());
    Ok(())
}

/// The same log with every scavenging pass made a no-op (`until_ms: 0`
/// purges nothing, yet still advances time like the original).
fn expire_invisible(case: &Case) -> Result<(), TestCaseError> {
    let log = build(case);
    let (_, with) = run(&log);
    let mut e = engine();
    for (i, entry) in log.iter().enumerate() {
        let cmd = match entry.cmd {
            Command::Expire { .. } => Command::Expire { until_ms: 0 },
            ref c => c.clone(),
        };
        let got = seen(e.apply_within(entry.stamp_ms, &UNBOUNDED, &cmd));
        prop_assert_eq!(
            &got,
            &with[i],
            "scavenging changed #{}; log:\n{}",
            i,
            show(&log[..=i])
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Every outcome of a random log equals the model's, and so do the
    /// holders of every holding key after every step.
    #[test]
    fn engine_matches_model(case in case()) {
        differential(&case)?;
    }

    /// Scavenging never changes an outcome.
    #[test]
    fn expire_changes_no_outcome(case in case()) {
        expire_invisible(&case)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, ..ProptestConfig::default() })]

    /// With a fixed limit per key, live holders never exceed it.
    #[test]
    fn concurrency_never_exceeds_limit(case in case_with(Just(false))) {
        usage_within_limits(&case)?;
    }

    /// An idempotency key yields at most one lease.
    #[test]
    fn idempotency_key_grants_one_lease(case in case()) {
        one_lease_per_key(&case)?;
    }

    /// An idempotency key whose caller was denied never grants after.
    #[test]
    fn a_denied_key_never_grants(case in case()) {
        denials_stay(&case)?;
    }

    /// Fresh grants of one scope carry strictly increasing fencing tokens.
    #[test]
    fn fencing_tokens_increase(case in case()) {
        fencing_increases(&case)?;
    }

    /// Replaying a log reproduces the store byte for byte; a snapshot taken
    /// mid-log restores to an engine that goes on identically.
    #[test]
    fn replay_and_snapshot_are_deterministic(case in case(), split in any::<prop::sample::Index>()) {
        deterministic(&case, split)?;
    }
}

/// Small quotas, so random logs run into every one of them.
fn small_quotas() -> impl Strategy<Value = Quotas> {
    (1u64..=4, 1u64..=6, 1u64..=24).prop_map(|(leases, keys, records)| Quotas {
        max_leases_per_scope: leases,
        max_keys_per_scope: keys,
        max_idempotency_records_per_group: records,
        dedup_window_ms: DEDUP_WINDOW_MS_MAX,
    })
}

/// Applies a log within `quotas`, checking after every command that the
/// counts the store keeps are those its records give, that no scope holds
/// more than its quotas, that the idempotency records pass their bound only
/// by releases of live leases, and that a refusal changed nothing but what
/// an `Expire` at its time would have.
fn quotas_hold(case: &Case, quotas: Quotas) -> Result<(), TestCaseError> {
    let log = build(case);
    let mut e = engine();
    let records_bound = quotas.max_idempotency_records_per_group;
    let mut releases_past_bound = 0;
    for (i, entry) in log.iter().enumerate() {
        let before = e.clone();
        let full = e.store().dedup_count() as u64 >= records_bound;
        match e.apply_within(entry.stamp_ms, &quotas, &entry.cmd) {
            Err(EngineError::QuotaExceeded { .. }) => {
                let mut expired = before;
                expired
                    .apply_within(
                        entry.stamp_ms,
                        &quotas,
                        &Command::Expire { until_ms: u64::MAX },
                    )
                    .expect("an expire applies");
                prop_assert_eq!(
                    e.store().encode(),
                    expired.store().encode(),
                    "refusal #{} changed the state; log:\n{}",
                    i,
                    show(&log[..=i])
                );
            }
            Ok(Applied {
                outcome: Outcome::Released { was_held: true, .. },
                replayed: false,
            }) if full => releases_past_bound += 1,
            _ => {}
        }
        let recounted = MemStore::decode(&e.store().encode()).expect("decodes");
        prop_assert_eq!(&recounted, e.store(), "counts after #{}", i);
        for scope in SCOPES {
            let usage = e.store().scope_usage(&ScopeId::new(scope));
            prop_assert!(
                usage.leases <= quotas.max_leases_per_scope
                    && usage.keys <= quotas.max_keys_per_scope,
                "{} holds {:?} past {:?} after #{}; log:\n{}",
                scope,
                usage,
                quotas,
                i,
                show(&log[..=i])
            );
        }
        prop_assert!(e.store().dedup_count() as u64 <= records_bound + releases_past_bound);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Quotas bound what every scope and the group hold, counted exactly
    /// through grants, releases, expiry, resets and restores; a refused
    /// command spends and records nothing.
    #[test]
    fn quotas_bound_the_state_and_refusals_change_nothing(case in case(), quotas in small_quotas()) {
        quotas_hold(&case, quotas)?;
    }
}

// ---------------------------------------------------------------------------
// Bounds of the spending kinds, on the engine alone.
// ---------------------------------------------------------------------------

/// (dt_ms, amount, min_amount) of a stream of acquires on one key.
type Arrivals = Vec<(u64, u32, Option<u32>)>;

fn arrivals(max_dt_ms: u64, most: u32) -> impl Strategy<Value = Arrivals> {
    let one = (0..=max_dt_ms, 1..=most, prop::option::of(1..=most));
    prop::collection::vec(one, 20..=150)
}

/// Acquires `c` (or, for the i-th, `cs[i % len]`) at each arrival; returns
/// (granted_at_ms, units, constraint) of every grant.
fn grants_of(cs: &[Constraint], arrivals: &Arrivals, most: u32) -> Vec<(u64, u64, Constraint)> {
    let mut e = engine();
    let mut stamp_ms = 0;
    let mut out = Vec::new();
    for (i, &(dt_ms, amount, min_amount)) in arrivals.iter().enumerate() {
        stamp_ms += dt_ms;
        let c = cs[i % cs.len()].clone();
        let (amount, min_amount) = match min_amount {
            None => (amount.min(most), None),
            Some(m) => (amount, Some(m.min(amount).min(most))),
        };
        let cmd = Command::Acquire(AcquireRequest {
            scope: "s".into(),
            constraints: vec![c.clone()],
            amount,
            min_amount,
            lease_ttl_ms: 1,
            max_lifetime_ms: None,
            idempotency_key: format!("k{i}"),
            attempt: Attempt::Final,
        });
        if let Outcome::Granted(g) = e.apply_within(stamp_ms, &UNBOUNDED, &cmd).unwrap().outcome {
            out.push((g.granted_at_ms, u64::from(g.granted_amount), c));
        }
    }
    out
}

fn throttle_case() -> impl Strategy<Value = (u32, u64, u32, Arrivals)> {
    let periods = prop::sample::select(vec![1u64, 3, 10, 100, 1000, 7000]);
    (1u32..=5, periods, 0u32..=4).prop_flat_map(|(limit, period_ms, burst)| {
        (
            Just(limit),
            Just(period_ms),
            Just(burst),
            arrivals(2 * period_ms / u64::from(limit) + 1, burst + 1),
        )
    })
}

fn rate_limit_bound(limit: u32, periods: &[u64], arrivals: &Arrivals) -> Result<(), TestCaseError> {
    let cs: Vec<Constraint> = periods
        .iter()
        .map(|&period_ms| Constraint::RateLimit {
            key: "r".into(),
            limit,
            period_ms,
        })
        .collect();
    let grants = grants_of(&cs, arrivals, limit);
    for (j, &(b_ms, _, ref c)) in grants.iter().enumerate() {
        let Constraint::RateLimit { period_ms, .. } = *c else {
            unreachable!("only rate limits here")
        };
        let counted = |g: &&(u64, u64, Constraint)| {
            let Constraint::RateLimit {
                period_ms: own_ms, ..
            } = g.2
            else {
                unreachable!("only rate limits here")
            };
            g.0 + period_ms.min(own_ms) > b_ms
        };
        let inside = grants[..=j].iter().filter(counted);
        let units: u64 = inside.map(|g| g.1).sum();
        prop_assert!(
            units <= u64::from(limit),
            "{} units in the {} ms up to {}; grants {:?}",
            units,
            period_ms,
            b_ms,
            grants
        );
    }
    Ok(())
}

/// A limit, the periods requests carry (in turn), and the arrivals.
fn rate_limit_case(periods: usize) -> impl Strategy<Value = (u32, Vec<u64>, Arrivals)> {
    let period = prop::sample::select(vec![1u64, 5, 50, 999, 1000, 2500, 5000]);
    (1u32..=5, prop::collection::vec(period, periods)).prop_flat_map(|(limit, ps)| {
        let longest = *ps.iter().max().unwrap();
        (Just(limit), Just(ps), arrivals(longest / 2 + 1, limit))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// GCRA: over any span [a, a + L] of grant times, at most
    /// floor((L + tau) / T) + 1 units are granted.
    #[test]
    fn throttle_never_exceeds_gcra_bound((limit, period_ms, burst, arrivals) in throttle_case()) {
        let c = Constraint::Throttle { key: "t".into(), limit, period_ms, burst };
        let (t, tau) = gcra(limit, period_ms, burst);
        let grants = grants_of(&[c], &arrivals, burst + 1);
        for (i, &(a_ms, _, _)) in grants.iter().enumerate() {
            let mut units = 0;
            for &(b_ms, n, _) in &grants[i..] {
                units += n;
                let span_ns = u128::from(b_ms - a_ms) * NS_PER_MS;
                let bound = (span_ns + tau) / t + 1;
                prop_assert!(u128::from(units) <= bound, "{} units in [{}, {}] ms, bound {}; grants {:?}", units, a_ms, b_ms, bound, grants);
            }
        }
    }

    /// Rate limit: at most `limit` units are granted in any window shorter
    /// than the period (the window ending at each grant is the fullest).
    #[test]
    fn rate_limit_never_exceeds_limit((limit, periods, arrivals) in rate_limit_case(1)) {
        rate_limit_bound(limit, &periods, &arrivals)?;
    }

    /// The same when requests on one key carry two different periods: each
    /// grant keeps the window of its own request's period within the limit,
    /// counting every earlier grant for the shorter of the two periods.
    #[test]
    fn rate_limit_with_two_periods_never_exceeds_limit((limit, periods, arrivals) in rate_limit_case(2)) {
        rate_limit_bound(limit, &periods, &arrivals)?;
    }
}

// ---------------------------------------------------------------------------
// Minimal sequences of the discrepancies the properties above found.
// ---------------------------------------------------------------------------

fn acquire(scope: &str, idem: &str, c: Constraint, amount: u32, lease_ttl_ms: u64) -> Command {
    Command::Acquire(AcquireRequest {
        scope: scope.into(),
        constraints: vec![c],
        amount,
        min_amount: None,
        lease_ttl_ms,
        max_lifetime_ms: None,
        idempotency_key: idem.into(),
        attempt: Attempt::Final,
    })
}

fn extend(scope: &str, idem: &str, lease_id: u64) -> Command {
    Command::Extend(ExtendRequest {
        scope: scope.into(),
        lease_id,
        ttl_ms: 10,
        idempotency_key: idem.into(),
    })
}

fn release(scope: &str, idem: &str, lease_id: u64) -> Command {
    Command::Release(ReleaseRequest {
        scope: scope.into(),
        lease_id,
        idempotency_key: idem.into(),
    })
}

fn rate_limit(limit: u32, period_ms: u64) -> Constraint {
    Constraint::RateLimit {
        key: "r".into(),
        limit,
        period_ms,
    }
}

/// The id of the first lease granted in `scope`.
fn first_lease_of(scope: &str) -> u64 {
    lease_id(slot_of(scope, SLOTS), 1)
}

fn outcomes(log: &[(u64, Command)]) -> Vec<Seen> {
    let mut e = engine();
    log.iter()
        .map(|(at, cmd)| seen(e.apply_within(*at, &UNBOUNDED, cmd)))
        .collect()
}

fn fresh(outcome: Outcome) -> Seen {
    Ok(Applied {
        outcome,
        replayed: false,
    })
}

/// An ended lease is lost to every scope: its scope is not remembered once
/// it ends. A live lease of another scope is not found.
#[test]
fn ended_lease_of_another_scope_is_lost() {
    let conc = Constraint::Concurrency {
        key: "a".into(),
        limit: 1,
    };
    let first = first_lease_of("s2");
    let got = outcomes(&[
        (1000, acquire("s2", "k1", conc.clone(), 1, 10)),
        (1000, extend("s1", "k2", first)),
        (1000, release("s2", "k3", first)),
        (1000, extend("s1", "k4", first)),
        (1000, release("s1", "k5", first)),
    ]);
    assert_eq!(got[1], Err(ErrorCode::LeaseNotFound));
    assert_eq!(got[3], Err(ErrorCode::LeaseLost));
    let released = Outcome::Released {
        lease_id: first,
        was_held: false,
    };
    assert_eq!(got[4], fresh(released));
}

/// Scavenging never changes how a lease is seen: an expired lease of another
/// scope is lost before the expire and after it.
#[test]
fn expire_does_not_change_how_another_scopes_lease_is_seen() {
    let conc = Constraint::Concurrency {
        key: "a".into(),
        limit: 1,
    };
    let got = outcomes(&[
        (1000, acquire("s1", "k1", conc, 1, 1)),
        (1001, extend("s2", "k2", first_lease_of("s1"))),
        (1001, Command::Expire { until_ms: 1001 }),
        (1001, extend("s2", "k3", first_lease_of("s1"))),
    ]);
    assert_eq!(got[1], got[3], "the same extend before and after an expire");
    assert_eq!(got[3], Err(ErrorCode::LeaseLost));
}

fn denied_by_rate_limit(used: u64, limit: u64, retry_after_ms: u64) -> Seen {
    fresh(Outcome::Denied(Denial {
        blocking: vec![Usage {
            kind: Kind::RateLimit,
            key: "r".into(),
            used,
            limit,
            available: 0,
            retry_after_ms: Some(retry_after_ms),
            paused: false,
        }],
        retry_after_ms: Some(retry_after_ms),
    }))
}

/// A rate-limit grant counts for the shorter of the asking request's period
/// and its own: a request with a longer period does not see grants made under
/// a shorter one once they have left their own window.
#[test]
fn rate_limit_grants_count_for_their_own_period() {
    let got = outcomes(&[
        (1000, acquire("s", "k1", rate_limit(2, 999), 2, 1)),
        (1999, acquire("s", "k2", rate_limit(2, 999), 1, 1)),
        (1999, acquire("s", "k3", rate_limit(2, 5000), 1, 1)),
        (1999, acquire("s", "k4", rate_limit(2, 5000), 1, 1)),
    ]);
    assert!(matches!(
        &got[2],
        Ok(Applied {
            outcome: Outcome::Granted(_),
            ..
        })
    ));
    // Counted: k2's unit until 2998 (its own 999 ms), k3's until 6999.
    assert_eq!(got[3], denied_by_rate_limit(2, 2, 999));
}

/// The same whether or not the scavenger ran in between.
#[test]
fn expire_does_not_change_rate_limit_outcomes() {
    let first = (1000, acquire("s", "k1", rate_limit(1, 1), 1, 1));
    let later = (1500, acquire("s", "k2", rate_limit(1, 999), 1, 1));
    let without = outcomes(&[first.clone(), later.clone()]);
    let with = outcomes(&[first, (1500, Command::Expire { until_ms: 1500 }), later]);
    assert_eq!(without[1], with[2]);
    assert!(matches!(
        &with[2],
        Ok(Applied {
            outcome: Outcome::Granted(_),
            ..
        })
    ));
}
