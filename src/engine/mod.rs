//! The constraint engine: a pure, deterministic function of
//! (state, command, stamped time) → (state, outcome).
//!
//! No IO, no clock, no async. The proposer stamps each command with its
//! wall-clock time; the engine applies it at `max(last applied, stamp)`, so
//! time never goes backwards across leader changes. Replicas that apply the
//! same commands hold byte-identical state.

mod constraint;
mod error;
mod fingerprint;
mod quota;
mod store;
mod types;
pub mod validate;

#[cfg(test)]
mod tests;

pub use error::{EngineError, ErrorCode};
pub use store::{
    BlockingFigures, Deadline, DedupKey, DedupRecord, DenialUsage, GrantUsage, Hold, KeyId,
    KeyRecord, KeyState, Lease, MemStore, Meta, Recorded, ScopeId, ScopeUsage, Store, UsageFigures,
    WindowEntry,
};
pub use types::*;

use constraint::View;

use crate::slot::{self, Slot};

/// Settings every replica of a group must share, fixed when the cluster
/// is created. (What a leader may change, such as quotas and the dedup
/// window, travels in each entry instead: see [`Quotas`].)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// The cluster's hash slots (fixed at creation): a lease id carries its
    /// scope's slot, and each slot counts its own grants (see
    /// [`crate::slot::lease_id`]).
    pub slot_count: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            slot_count: crate::slot::SLOT_COUNT_DEFAULT,
        }
    }
}

/// The engine over a store of its records.
#[derive(Clone, Debug)]
pub struct Engine<S: Store> {
    store: S,
    config: EngineConfig,
    /// Reused buffer for command fingerprints.
    scratch: Vec<u8>,
}

type Result<T> = std::result::Result<T, EngineError>;

impl<S: Store> Engine<S> {
    pub fn new(store: S, config: EngineConfig) -> Self {
        Engine {
            store,
            config,
            scratch: Vec::new(),
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn into_store(self) -> S {
        self.store
    }

    pub fn config(&self) -> EngineConfig {
        self.config
    }

    /// The latest applied time.
    pub fn applied_ms(&self) -> u64 {
        self.store.meta().applied_ms
    }

    /// The next instant at which something expires (a lease, an idle key, a
    /// dedup record): when the leader should propose [`Command::Expire`].
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.store.first_deadline().map(|(at, _)| at)
    }

    /// Applies one command stamped at `stamp_ms`, under no quotas: for
    /// tests and benchmarks. The state machine applies entries with
    /// [`Engine::apply_within`] and the quotas their leader stamped.
    pub fn apply(&mut self, stamp_ms: u64, cmd: &Command) -> Result<Applied> {
        self.apply_within(stamp_ms, &Quotas::NONE, cmd)
    }

    /// Applies one command stamped at `stamp_ms` within `quotas`. A
    /// malformed command is rejected before anything, even time, changes.
    /// Any other command advances applied time, even one that then fails
    /// against state (a lost lease, a reused idempotency key, a full
    /// quota): every replica fails it the same way, so the state machine
    /// persists its effect like any other.
    pub fn apply_within(
        &mut self,
        stamp_ms: u64,
        quotas: &Quotas,
        cmd: &Command,
    ) -> Result<Applied> {
        validate::command(cmd)?;
        let now_ms = self.advance(stamp_ms);
        let dedup = match cmd.idempotency() {
            Some((scope, idempotency_key)) => {
                let key = DedupKey::new(scope, idempotency_key);
                let fingerprint = fingerprint::fingerprint(cmd, &mut self.scratch);
                if let Some(replay) = self.replay(key, fingerprint, cmd, idempotency_key, now_ms)? {
                    return Ok(replay);
                }
                self.admit_record(quotas, cmd, scope, now_ms)?;
                Some((key, fingerprint))
            }
            None => None,
        };
        let outcome = match cmd {
            Command::Acquire(r) => {
                let (key, _) = dedup.expect("an acquire has an idempotency key");
                self.acquire(r, key, quotas, now_ms)?
            }
            Command::Extend(r) => self.extend(r, now_ms)?,
            Command::Release(r) => self.release(r, quotas.dedup_window_ms, now_ms)?,
            Command::SetCapacity(r) => {
                self.admit_capacity(&r.scope, &r.key, r.capacity, quotas, now_ms)?;
                self.set_capacity(&r.scope, &r.key, r.capacity, now_ms)
            }
            Command::AdjustCapacity(r) => self.adjust_capacity(r, quotas, now_ms)?,
            Command::Admin(r) => self.admin(r, now_ms),
            Command::Expire { until_ms } => {
                Outcome::Expired(self.purge((*until_ms).min(now_ms), quotas.dedup_window_ms))
            }
        };
        if let Some((key, fingerprint)) = dedup {
            self.remember(
                key,
                fingerprint,
                cmd,
                &outcome,
                quotas.dedup_window_ms,
                now_ms,
            );
        }
        Ok(Applied {
            outcome,
            replayed: false,
        })
    }

    fn advance(&mut self, stamp_ms: u64) -> u64 {
        let mut meta = self.store.meta();
        let now_ms = meta.applied_ms.max(stamp_ms);
        assert!(now_ms >= meta.applied_ms, "applied time never decreases");
        meta.applied_ms = now_ms;
        self.store.set_meta(meta);
        now_ms
    }

    fn replay(
        &self,
        key: DedupKey,
        fingerprint: u64,
        cmd: &Command,
        idempotency_key: &str,
        now_ms: u64,
    ) -> Result<Option<Applied>> {
        let reused = || EngineError::IdempotencyKeyReused {
            idempotency_key: idempotency_key.to_string(),
        };
        match self.store.dedup(&key) {
            None => Ok(None),
            Some(rec) if rec.fingerprint == fingerprint => {
                // Equal fingerprints mean the same request, so the record
                // fits it; were that ever not so, the key was reused.
                let outcome = Self::replayed(&rec.outcome, cmd, now_ms).ok_or_else(reused)?;
                Ok(Some(Applied {
                    outcome,
                    replayed: true,
                }))
            }
            Some(_) => Err(reused()),
        }
    }

    /// The outcome `recorded` stands for at `now_ms`, completed from the
    /// request `cmd` that repeats the one recorded; `None` if they do not
    /// fit.
    fn replayed(recorded: &Recorded, cmd: &Command, now_ms: u64) -> Option<Outcome> {
        let outcome = match (recorded, cmd) {
            (
                Recorded::Granted {
                    lease_id,
                    granted_amount,
                    granted_at_ms,
                    usage,
                },
                Command::Acquire(r),
            ) if usage.count() == r.constraints.len() => Outcome::Granted(Grant {
                lease_id: *lease_id,
                fencing_token: *lease_id,
                granted_amount: *granted_amount,
                granted_at_ms: *granted_at_ms,
                expires_at_ms: granted_at_ms + r.lease_ttl_ms,
                usage: r
                    .constraints
                    .iter()
                    .zip(usage.iter())
                    .map(|(c, f)| Usage {
                        kind: c.kind(),
                        key: c.key().to_string(),
                        used: f.used,
                        limit: f.limit,
                        available: f.available,
                        retry_after_ms: None,
                        paused: false,
                    })
                    .collect(),
            }),
            (Recorded::Extended { expires_at_ms }, Command::Extend(r)) => Outcome::Extended {
                lease_id: r.lease_id,
                expires_at_ms: *expires_at_ms,
            },
            (Recorded::Released { was_held }, Command::Release(r)) => Outcome::Released {
                lease_id: r.lease_id,
                was_held: *was_held,
            },
            (Recorded::Capacity { capacity }, Command::SetCapacity(r)) => Outcome::Capacity {
                key: r.key.clone(),
                capacity: *capacity,
            },
            (Recorded::Capacity { capacity }, Command::AdjustCapacity(r)) => Outcome::Capacity {
                key: r.key.clone(),
                capacity: *capacity,
            },
            (Recorded::Admin(admin), Command::Admin(_)) => Outcome::Admin(admin.clone()),
            (
                Recorded::Denied {
                    blocking,
                    paused,
                    usage,
                },
                Command::Acquire(r),
            ) => Outcome::Denied(Self::replayed_denial(*blocking, *paused, usage, r, now_ms)?),
            _ => return None,
        };
        Some(outcome)
    }

    /// A recorded denial as it reads at `now_ms`: the figures of its time,
    /// and each `retry_after_ms` counted down from then (at least 0).
    fn replayed_denial(
        blocking: u16,
        paused: u16,
        usage: &DenialUsage,
        r: &AcquireRequest,
        now_ms: u64,
    ) -> Option<Denial> {
        let fits = blocking.count_ones() as usize == usage.count()
            && (u16::BITS - blocking.leading_zeros()) as usize <= r.constraints.len();
        if !fits {
            return None;
        }
        let blocking: Vec<Usage> = (0..r.constraints.len())
            .filter(|i| blocking & (1 << i) != 0)
            .zip(usage.iter())
            .map(|(i, f)| Usage {
                kind: r.constraints[i].kind(),
                key: r.constraints[i].key().to_string(),
                used: f.figures.used,
                limit: f.figures.limit,
                available: f.figures.available,
                retry_after_ms: f.admits_at_ms.map(|at| at.saturating_sub(now_ms)),
                paused: paused & (1 << i) != 0,
            })
            .collect();
        Some(Denial {
            retry_after_ms: Self::retry_after_ms(&blocking),
            blocking,
        })
    }

    /// Until every blocking constraint admits: the largest of their waits,
    /// `None` if one of them never will by time alone.
    fn retry_after_ms(blocking: &[Usage]) -> Option<u64> {
        blocking
            .iter()
            .map(|u| u.retry_after_ms)
            .try_fold(0, |acc, r| r.map(|r| acc.max(r)))
    }

    /// What a dedup record keeps of `outcome`, for `cmd` applied at
    /// `now_ms`; `None` for outcomes never recorded.
    fn recorded(cmd: &Command, outcome: &Outcome, now_ms: u64) -> Option<Recorded> {
        let figures = |u: &Usage| UsageFigures {
            used: u.used,
            limit: u.limit,
            available: u.available,
        };
        Some(match outcome {
            Outcome::Granted(g) => {
                let (first, rest) = g.usage.split_first().expect("a grant has constraints");
                Recorded::Granted {
                    lease_id: g.lease_id,
                    granted_amount: g.granted_amount,
                    granted_at_ms: g.granted_at_ms,
                    usage: GrantUsage {
                        first: figures(first),
                        rest: rest.iter().map(figures).collect(),
                    },
                }
            }
            Outcome::Extended { expires_at_ms, .. } => Recorded::Extended {
                expires_at_ms: *expires_at_ms,
            },
            Outcome::Released { was_held, .. } => Recorded::Released {
                was_held: *was_held,
            },
            Outcome::Capacity { capacity, .. } => Recorded::Capacity {
                capacity: *capacity,
            },
            Outcome::Admin(admin) => Recorded::Admin(admin.clone()),
            Outcome::Denied(d) => {
                let Command::Acquire(r) = cmd else {
                    unreachable!("only acquires are denied")
                };
                if r.attempt == Attempt::Interim {
                    return None;
                }
                Self::recorded_denial(r, d, now_ms)
            }
            Outcome::Expired(_) => return None,
        })
    }

    /// What a dedup record keeps of denial `d` of `r` at `now_ms`: which
    /// constraints blocked, their figures, and when each would admit.
    fn recorded_denial(r: &AcquireRequest, d: &Denial, now_ms: u64) -> Recorded {
        let mut blocking = 0u16;
        let mut paused = 0u16;
        // Blocking usages come in request order, each naming a distinct key.
        let mut at = r.constraints.iter().map(Constraint::key).enumerate();
        let mut figures = d.blocking.iter().map(|u| {
            let (i, _) = at
                .find(|(_, key)| *key == u.key)
                .expect("a blocking usage names a constraint of its request");
            blocking |= 1 << i;
            if u.paused {
                paused |= 1 << i;
            }
            BlockingFigures {
                figures: UsageFigures {
                    used: u.used,
                    limit: u.limit,
                    available: u.available,
                },
                admits_at_ms: u.retry_after_ms.map(|ms| now_ms.saturating_add(ms)),
            }
        });
        let first = figures.next().expect("a denial has a blocking constraint");
        let rest = figures.collect();
        Recorded::Denied {
            blocking,
            paused,
            usage: DenialUsage { first, rest },
        }
    }

    /// Records an outcome under the command's idempotency key: any
    /// success, and a denial its caller hears (see [`Attempt`]).
    fn remember(
        &mut self,
        key: DedupKey,
        fingerprint: u64,
        cmd: &Command,
        outcome: &Outcome,
        window_ms: u64,
        now_ms: u64,
    ) {
        let Some(recorded) = Self::recorded(cmd, outcome, now_ms) else {
            return;
        };
        // A grant's record lives as long as its lease; the lease's end
        // starts the window (see `end_lease`).
        let drop_at_ms = match outcome {
            Outcome::Granted(_) => None,
            _ => Some(now_ms.saturating_add(window_ms)),
        };
        if let Some(at) = drop_at_ms {
            self.store.insert_deadline(at, Deadline::Dedup(key));
        }
        let record = DedupRecord {
            fingerprint,
            outcome: recorded,
            drop_at_ms,
        };
        self.store.insert_dedup(key, record);
    }

    fn key_id(scope: &str, c: &Constraint) -> KeyId {
        KeyId::new(scope, c.kind(), c.key())
    }

    /// How much every constraint admits now: the grantable amount (capped at
    /// `amount`), or the usage of every constraint that blocks `min_amount`.
    fn evaluate(
        &self,
        ids: &[KeyId],
        governed: &Governed<'_>,
        amount: u32,
        min_amount: u32,
        now_ms: u64,
    ) -> Evaluation {
        let views = || {
            ids.iter()
                .zip(governed.constraints.iter())
                .enumerate()
                .map(move |(i, (id, c))| View {
                    c,
                    rec: self.store.key(id),
                    now_ms,
                    paused: governed.paused(i),
                })
        };
        let grantable = views()
            .map(|view| u32::try_from(view.usage_parts().2).unwrap_or(u32::MAX))
            .fold(amount, u32::min);
        if grantable >= min_amount {
            return Evaluation::Grant(grantable);
        }
        // Denials are rarer than grants: read the keys again for them.
        let blocking: Vec<Usage> = views()
            .filter(|view| view.usage_parts().2 < u64::from(min_amount))
            .map(|view| view.usage(Some(min_amount)))
            .collect();
        Evaluation::Deny(Denial {
            retry_after_ms: Self::retry_after_ms(&blocking),
            blocking,
        })
    }

    fn key_ids(scope: &str, constraints: &[Constraint]) -> KeyIds {
        let mut ids = KeyIds {
            ids: [KeyId(0); crate::limits::CONSTRAINTS_PER_REQUEST_MAX],
            len: constraints.len(),
        };
        for (id, c) in ids.ids.iter_mut().zip(constraints) {
            *id = Self::key_id(scope, c);
        }
        ids
    }

    /// The constraints as operators govern them: pinned limits replace
    /// those the request carries, and paused keys are flagged.
    fn govern<'c>(&self, ids: &[KeyId], constraints: &'c [Constraint]) -> Governed<'c> {
        let mut governed = Governed {
            constraints: std::borrow::Cow::Borrowed(constraints),
            paused: 0,
        };
        if !self.store.any_admin() {
            return governed;
        }
        for (i, id) in ids.iter().enumerate() {
            let Some(admin) = self.store.admin(id) else {
                continue;
            };
            if admin.paused {
                governed.paused |= 1 << i;
            }
            if let Some(pin) = &admin.pinned {
                governed.constraints.to_mut()[i] = pin.clone();
            }
        }
        governed
    }

    /// `key` names the acquire's dedup record. The constraints decide
    /// first: a denial is the answer whatever the quotas; a grant must then
    /// fit the scope's quotas.
    fn acquire(
        &mut self,
        r: &AcquireRequest,
        key: DedupKey,
        quotas: &Quotas,
        now_ms: u64,
    ) -> Result<Outcome> {
        let ids = Self::key_ids(&r.scope, &r.constraints);
        let governed = self.govern(&ids, &r.constraints);
        let granted = match self.evaluate(&ids, &governed, r.amount, r.min_amount(), now_ms) {
            Evaluation::Grant(n) => n,
            Evaluation::Deny(denial) => return Ok(Outcome::Denied(denial)),
        };
        let scope = ScopeId::new(&r.scope);
        self.admit_grant(&r.scope, scope, &ids, quotas, now_ms)?;
        let constraints = governed.constraints;
        let slot = self.slot_of(&r.scope);
        let seq = self.store.next_lease_seq(slot);
        self.store.set_next_lease_seq(slot, seq + 1);
        let lease_id = slot::lease_id(slot, seq);
        let expires_at_ms = now_ms + r.lease_ttl_ms;
        let mut holds = Vec::new();
        let mut usage = Vec::with_capacity(ids.len());
        for (id, c) in ids.iter().zip(constraints.iter()) {
            let holder = Holder {
                expires_at_ms,
                lease_id,
                units: 0,
            };
            let (units, u) = self.reserve(scope, id, c, granted, holder, now_ms);
            if units > 0 {
                holds.push(Hold { key: *id, units });
            }
            let over = matches!(
                c,
                Constraint::Concurrency { .. } | Constraint::RateLimit { .. }
            ) && u.used > u.limit;
            assert!(
                !over,
                "a grant never takes {} {:?} over its limit",
                c.kind().as_str(),
                c.key()
            );
            usage.push(u);
        }
        self.store.insert_lease(
            lease_id,
            Lease {
                scope,
                amount: granted,
                holds,
                granted_at_ms: now_ms,
                expires_at_ms,
                deadline_ms: r.max_lifetime_ms.map(|l| now_ms + l),
                acquire: key,
            },
        );
        self.store
            .insert_deadline(expires_at_ms, Deadline::Lease(lease_id));
        Ok(Outcome::Granted(Grant {
            lease_id,
            fencing_token: lease_id,
            granted_amount: granted,
            granted_at_ms: now_ms,
            expires_at_ms,
            usage,
        }))
    }

    /// Spends `amount` of `c` on key `id` for `holder`'s lease. Returns the
    /// units the lease now holds on the key and the key's usage after. Keys
    /// of one request are distinct, so that is also its usage after all of
    /// the request's spending.
    fn reserve(
        &mut self,
        scope: ScopeId,
        id: &KeyId,
        c: &Constraint,
        amount: u32,
        holder: Holder,
        now_ms: u64,
    ) -> (u64, Usage) {
        let rec = self
            .store
            .key_or_insert(*id, || constraint::new_record(scope, c));
        let units = constraint::reserve(rec, c, amount, holder, now_ms);
        let usage = View {
            c,
            rec: Some(rec),
            now_ms,
            paused: false,
        }
        .usage(None);
        if rec.sweep_at_ms.is_none() {
            if let Some(at) = constraint::idle_at_ms(rec) {
                rec.sweep_at_ms = Some(at);
                self.store.insert_deadline(at, Deadline::Key(*id));
            }
        }
        (units, usage)
    }

    /// The live lease `lease_id` of `scope`; `None` if it has ended. An
    /// ended lease is judged the same whether or not the scavenger has
    /// dropped its record, so its scope (gone with the record) never matters.
    fn live_lease(&self, scope: &str, lease_id: LeaseId, now_ms: u64) -> Result<Option<&Lease>> {
        match self.store.lease(lease_id) {
            Some(lease) if lease.expires_at_ms <= now_ms => Ok(None),
            Some(lease) if lease.scope != ScopeId::new(scope) => {
                Err(EngineError::LeaseNotFound { lease_id })
            }
            Some(lease) => Ok(Some(lease)),
            None if self.was_granted(lease_id) => Ok(None),
            None => Err(EngineError::LeaseNotFound { lease_id }),
        }
    }

    /// Whether `lease_id` was ever granted here: its slot's counter has
    /// passed it.
    fn was_granted(&self, lease_id: LeaseId) -> bool {
        let (slot, seq) = slot::split_lease_id(lease_id);
        seq > 0 && seq < self.store.next_lease_seq(slot)
    }

    fn slot_of(&self, scope: &str) -> Slot {
        slot::slot_of(scope, self.config.slot_count)
    }

    fn extend(&mut self, r: &ExtendRequest, now_ms: u64) -> Result<Outcome> {
        let lease_id = r.lease_id;
        let lease = self
            .live_lease(&r.scope, lease_id, now_ms)?
            .ok_or(EngineError::LeaseLost { lease_id })?;
        let expires_at_ms = now_ms + r.ttl_ms;
        if let Some(deadline_ms) = lease.deadline_ms.filter(|d| expires_at_ms > *d) {
            return Err(EngineError::MaxLifetimeExceeded {
                lease_id,
                requested_ms: expires_at_ms,
                deadline_ms,
            });
        }
        let old_ms = lease.expires_at_ms;
        let holds = lease.holds.clone();
        for hold in &holds {
            let rec = self
                .store
                .key_mut(&hold.key)
                .expect("a live lease's keys exist");
            let old = Holder {
                expires_at_ms: old_ms,
                lease_id,
                units: hold.units,
            };
            assert!(
                rec.holders.remove(&old),
                "a live lease is among its keys' holders"
            );
            rec.holders.insert(Holder {
                expires_at_ms,
                ..old
            });
        }
        self.store
            .remove_deadline(old_ms, &Deadline::Lease(lease_id));
        self.store
            .insert_deadline(expires_at_ms, Deadline::Lease(lease_id));
        self.store.lease_mut(lease_id).expect("live").expires_at_ms = expires_at_ms;
        Ok(Outcome::Extended {
            lease_id,
            expires_at_ms,
        })
    }

    fn release(&mut self, r: &ReleaseRequest, window_ms: u64, now_ms: u64) -> Result<Outcome> {
        let was_held = self.live_lease(&r.scope, r.lease_id, now_ms)?.is_some();
        // An expired lease the scavenger has not reached yet ends here too.
        if self.store.lease(r.lease_id).is_some() {
            self.end_lease(r.lease_id, window_ms, now_ms);
        }
        Ok(Outcome::Released {
            lease_id: r.lease_id,
            was_held,
        })
    }

    /// Removes a lease and its holds, and starts its acquire record's window.
    fn end_lease(&mut self, lease_id: LeaseId, window_ms: u64, now_ms: u64) -> u64 {
        let lease = self
            .store
            .remove_lease(lease_id)
            .expect("ending a lease that exists");
        self.store
            .remove_deadline(lease.expires_at_ms, &Deadline::Lease(lease_id));
        let mut freed = 0;
        for hold in lease.holds {
            let rec = self.store.key_mut(&hold.key).expect("a lease's keys exist");
            let holder = Holder {
                expires_at_ms: lease.expires_at_ms,
                lease_id,
                units: hold.units,
            };
            assert!(
                rec.holders.remove(&holder),
                "a lease is among its keys' holders"
            );
            match &mut rec.state {
                KeyState::Concurrency { used, .. } | KeyState::Semaphore { used, .. } => {
                    *used -= hold.units
                }
                _ => unreachable!("only holding kinds have holders"),
            }
            freed += hold.units;
            if constraint::is_idle(rec, now_ms) {
                self.store.remove_key(&hold.key);
            }
        }
        let key = lease.acquire;
        let drop_at_ms = now_ms.saturating_add(window_ms);
        if let Some(rec) = self.store.dedup_mut(&key) {
            rec.drop_at_ms = Some(drop_at_ms);
            self.store.insert_deadline(drop_at_ms, Deadline::Dedup(key));
        }
        freed
    }

    fn semaphore_id(scope: &str, key: &str) -> KeyId {
        KeyId::new(scope, Kind::Semaphore, key)
    }

    fn set_capacity(&mut self, scope: &str, key: &str, capacity: u64, now_ms: u64) -> Outcome {
        let id = Self::semaphore_id(scope, key);
        if self.store.key(&id).is_none() {
            let c = Constraint::Semaphore {
                key: key.to_string(),
                weight: 1,
            };
            self.store
                .insert_key(id, constraint::new_record(ScopeId::new(scope), &c));
        }
        let rec = self.store.key_mut(&id).expect("inserted above");
        match &mut rec.state {
            KeyState::Semaphore { capacity: c, .. } => *c = capacity,
            _ => unreachable!("semaphore ids name semaphore records"),
        }
        if constraint::is_idle(rec, now_ms) {
            self.store.remove_key(&id);
        }
        Outcome::Capacity {
            key: key.to_string(),
            capacity,
        }
    }

    fn capacity(&self, scope: &str, key: &str) -> u64 {
        match self.store.key(&Self::semaphore_id(scope, key)) {
            Some(KeyRecord {
                state: KeyState::Semaphore { capacity, .. },
                ..
            }) => *capacity,
            _ => 0,
        }
    }

    fn adjust_capacity(
        &mut self,
        r: &AdjustCapacityRequest,
        quotas: &Quotas,
        now_ms: u64,
    ) -> Result<Outcome> {
        let current = self.capacity(&r.scope, &r.key);
        let max = crate::limits::CAPACITY_MAX;
        let next = i128::from(current) + i128::from(r.delta);
        if next < 0 || next > i128::from(max) {
            return Err(EngineError::CapacityOutOfRange {
                key: r.key.clone(),
                capacity: current,
                delta: r.delta,
                max,
            });
        }
        self.admit_capacity(&r.scope, &r.key, next as u64, quotas, now_ms)?;
        Ok(self.set_capacity(&r.scope, &r.key, next as u64, now_ms))
    }

    /// The scavenger: handles every deadline at or before `until_ms`.
    fn purge(&mut self, until_ms: u64, window_ms: u64) -> PurgeReport {
        let mut report = PurgeReport::default();
        while let Some((at_ms, deadline)) = self.store.first_deadline() {
            if at_ms > until_ms {
                break;
            }
            self.store.remove_deadline(at_ms, &deadline);
            match deadline {
                Deadline::Lease(id) => {
                    report.leases_expired += 1;
                    report.units_freed += self.end_lease(id, window_ms, until_ms);
                }
                Deadline::Dedup(key) => {
                    self.store.remove_dedup(&key);
                    report.dedup_dropped += 1;
                }
                Deadline::Key(id) => {
                    let rec = self.store.key_mut(&id).expect("a swept key exists");
                    if constraint::is_idle(rec, until_ms) {
                        self.store.remove_key(&id);
                        report.keys_dropped += 1;
                    } else {
                        let next =
                            constraint::idle_at_ms(rec).expect("spending keys have an idle time");
                        rec.sweep_at_ms = Some(next);
                        self.store.insert_deadline(next, Deadline::Key(id));
                    }
                }
            }
        }
        report
    }

    /// Whether an outcome of a command with this idempotency key is still
    /// recorded (a retry would replay it): a success, or a denial its
    /// caller heard.
    pub fn remembers(&self, scope: &str, idempotency_key: &str) -> bool {
        self.store
            .dedup(&DedupKey::new(scope, idempotency_key))
            .is_some()
    }

    /// Would an acquire of these constraints be granted at `now_ms`? Reads
    /// only; `now_ms` earlier than the applied time counts as the applied time.
    pub fn check(
        &self,
        scope: &str,
        constraints: &[Constraint],
        amount: u32,
        min_amount: Option<u32>,
        now_ms: u64,
    ) -> Result<CheckResult> {
        validate::demand(scope, constraints, amount, min_amount)?;
        let now_ms = now_ms.max(self.applied_ms());
        let min_amount = min_amount.unwrap_or(amount);
        let ids = Self::key_ids(scope, constraints);
        let governed = self.govern(&ids, constraints);
        let (grantable_amount, retry_after_ms) =
            match self.evaluate(&ids, &governed, amount, min_amount, now_ms) {
                Evaluation::Grant(n) => (n, Some(0)),
                Evaluation::Deny(d) => (0, d.retry_after_ms),
            };
        let usage = ids
            .iter()
            .zip(governed.constraints.iter())
            .enumerate()
            .map(|(i, (id, c))| {
                let rec = self.store.key(id);
                let view = View {
                    c,
                    rec,
                    now_ms,
                    paused: governed.paused(i),
                };
                let blocks = view.usage_parts().2 < u64::from(min_amount);
                view.usage(blocks.then_some(min_amount))
            })
            .collect();
        Ok(CheckResult {
            grantable_amount,
            usage,
            retry_after_ms,
        })
    }

    /// A key's state at `now_ms` (at least the applied time). Reads only.
    pub fn inspect(&self, scope: &str, kind: Kind, key: &str, now_ms: u64) -> Result<KeyInfo> {
        validate::key_ref(scope, key)?;
        let now_ms = now_ms.max(self.applied_ms());
        let id = KeyId::new(scope, kind, key);
        let rec = self.store.key(&id);
        let admin = self.store.admin(&id).cloned().unwrap_or_default();
        // Limits travel with requests; inspection reads a pinned one, or
        // else the last one seen.
        let c = match rec.map(|r| &r.state) {
            _ if admin.pinned.is_some() => admin.pinned.clone().expect("pinned"),
            Some(KeyState::Concurrency { limit, .. }) => Constraint::Concurrency {
                key: key.to_string(),
                limit: u32::try_from(*limit).unwrap_or(u32::MAX),
            },
            Some(KeyState::Throttle {
                limit,
                period_ms,
                burst,
                ..
            }) => Constraint::Throttle {
                key: key.to_string(),
                limit: *limit,
                period_ms: *period_ms,
                burst: *burst,
            },
            Some(KeyState::RateLimit {
                limit, period_ms, ..
            }) => Constraint::RateLimit {
                key: key.to_string(),
                limit: *limit,
                period_ms: *period_ms,
            },
            Some(KeyState::Semaphore { .. }) | None => Constraint::Semaphore {
                key: key.to_string(),
                weight: 1,
            },
        };
        let view = View {
            c: &c,
            rec,
            now_ms,
            paused: admin.paused,
        };
        let (used, limit, _) = view.usage_parts();
        let holders: Vec<Holder> = rec
            .map(|r| {
                r.holders
                    .iter()
                    .filter(|h| h.expires_at_ms > now_ms)
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        let next_expiry_ms = match rec.map(|r| &r.state) {
            Some(KeyState::Throttle { .. } | KeyState::RateLimit { .. }) => rec
                .and_then(constraint::idle_at_ms)
                .filter(|at| *at > now_ms),
            _ => holders.first().map(|h| h.expires_at_ms),
        };
        Ok(KeyInfo {
            kind,
            key: key.to_string(),
            exists: rec.is_some(),
            used,
            limit,
            holders,
            next_expiry_ms,
            admin,
        })
    }

    fn admin(&mut self, r: &AdminRequest, now_ms: u64) -> Outcome {
        let id = KeyId::new(&r.scope, r.kind, &r.key);
        let mut admin = self.store.admin(&id).cloned().unwrap_or_default();
        match &r.action {
            AdminAction::Pause => admin.paused = true,
            AdminAction::Resume => admin.paused = false,
            AdminAction::Pin(c) => admin.pinned = Some(c.clone()),
            AdminAction::Unpin => admin.pinned = None,
            AdminAction::Reset => self.reset(id, now_ms),
        }
        self.store.set_admin(id, admin.clone());
        Outcome::Admin(admin)
    }

    /// Forgets a key's usage (see [`AdminAction::Reset`]).
    fn reset(&mut self, id: KeyId, now_ms: u64) {
        let Some(rec) = self.store.remove_key(&id) else {
            return;
        };
        if let Some(at) = rec.sweep_at_ms {
            self.store.remove_deadline(at, &Deadline::Key(id));
        }
        for holder in &rec.holders {
            if let Some(lease) = self.store.lease_mut(holder.lease_id) {
                lease.holds.retain(|hold| hold.key != id);
            }
        }
        if let KeyState::Semaphore { capacity, .. } = rec.state {
            let mut fresh = rec;
            fresh.state = KeyState::Semaphore { used: 0, capacity };
            fresh.holders.clear();
            fresh.sweep_at_ms = None;
            if !constraint::is_idle(&fresh, now_ms) {
                self.store.insert_key(id, fresh);
            }
        }
    }
}

/// A request's constraints as operators govern them (see `Engine::govern`).
struct Governed<'c> {
    constraints: std::borrow::Cow<'c, [Constraint]>,
    /// Bit `i` set: constraint `i`'s key is paused.
    paused: u32,
}

impl Governed<'_> {
    fn paused(&self, i: usize) -> bool {
        self.paused & (1 << i) != 0
    }
}

enum Evaluation {
    Grant(u32),
    Deny(Denial),
}

/// The key ids of a request's constraints, without an allocation.
struct KeyIds {
    ids: [KeyId; crate::limits::CONSTRAINTS_PER_REQUEST_MAX],
    len: usize,
}

impl std::ops::Deref for KeyIds {
    type Target = [KeyId];

    fn deref(&self) -> &[KeyId] {
        &self.ids[..self.len]
    }
}
