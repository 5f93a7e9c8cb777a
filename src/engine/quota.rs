//! Quotas (see [`Quotas`]): what a command would add to the state must fit
//! them, or the command fails with [`EngineError::QuotaExceeded`] before it
//! changes anything but applied time.
//!
//! Every check reads counts the store keeps as records come and go, so it
//! costs O(1) (a grant: one lookup per constraint key, and only near the
//! keys quota). Counts include records the scavenger has not dropped yet:
//! leases past their expiry, keys gone idle, idempotency records past their
//! window. A check that finds its quota full therefore first drops those, as
//! an `Expire` at the applied time would (each record is dropped once, so
//! this costs O(1) amortized), and refuses only if the quota is still full.
//! Quotas then count exactly what is live.

use super::error::EngineError;
use super::store::{KeyId, ScopeId, Store};
use super::types::{Command, Quota, Quotas};
use super::Engine;

type Result<T> = std::result::Result<T, EngineError>;

impl<S: Store> Engine<S> {
    /// Admits a command of `scope` that would keep a new idempotency
    /// record, while the group keeps fewer than its bound.
    ///
    /// Past the bound, new keyed calls are refused rather than old records
    /// evicted, so the idempotency promise stands whole: a retry within the
    /// window never spends twice, and a key told no never grants later.
    /// Replays add nothing and are always answered. One exception: the
    /// release of a live lease is admitted past the bound, so holders can
    /// always give capacity back; each lease ends once, so this adds at
    /// most one record per live lease.
    pub(super) fn admit_record(
        &mut self,
        quotas: &Quotas,
        cmd: &Command,
        scope: &str,
        now_ms: u64,
    ) -> Result<()> {
        let bound = quotas.max_idempotency_records_per_group;
        let full = |e: &Self| e.store.dedup_count() as u64 >= bound;
        if !full(self) || self.ends_live_lease(cmd, now_ms) {
            return Ok(());
        }
        self.purge(now_ms, quotas.dedup_window_ms);
        if !full(self) {
            return Ok(());
        }
        Err(EngineError::QuotaExceeded {
            quota: Quota::IdempotencyRecordsPerGroup,
            scope: scope.to_string(),
            held: self.store.dedup_count() as u64,
            adding: 1,
            bound,
        })
    }

    fn ends_live_lease(&self, cmd: &Command, now_ms: u64) -> bool {
        match cmd {
            Command::Release(r) => {
                matches!(self.live_lease(&r.scope, r.lease_id, now_ms), Ok(Some(_)))
            }
            _ => false,
        }
    }

    /// Admits a grant to `scope` over keys `ids`: one more lease, and a
    /// record for each key that has none yet.
    pub(super) fn admit_grant(
        &mut self,
        scope: &str,
        id: ScopeId,
        ids: &[KeyId],
        quotas: &Quotas,
        now_ms: u64,
    ) -> Result<()> {
        if self.grant_refusal(&id, ids, quotas).is_none() {
            return Ok(());
        }
        self.purge(now_ms, quotas.dedup_window_ms);
        match self.grant_refusal(&id, ids, quotas) {
            None => Ok(()),
            Some((quota, held, adding, bound)) => Err(EngineError::QuotaExceeded {
                quota,
                scope: scope.to_string(),
                held,
                adding,
                bound,
            }),
        }
    }

    /// The quota a grant would pass, with what the scope holds, what the
    /// grant would add and the bound; `None` if it fits.
    fn grant_refusal(
        &self,
        scope: &ScopeId,
        ids: &[KeyId],
        quotas: &Quotas,
    ) -> Option<(Quota, u64, u64, u64)> {
        let usage = self.store.scope_usage(scope);
        if usage.leases >= quotas.max_leases_per_scope {
            return Some((
                Quota::LeasesPerScope,
                usage.leases,
                1,
                quotas.max_leases_per_scope,
            ));
        }
        // Keys are looked up only when the request could pass the quota.
        let bound = quotas.max_keys_per_scope;
        if usage.keys.saturating_add(ids.len() as u64) <= bound {
            return None;
        }
        let new = ids.iter().filter(|k| self.store.key(k).is_none()).count() as u64;
        (usage.keys.saturating_add(new) > bound).then_some((
            Quota::KeysPerScope,
            usage.keys,
            new,
            bound,
        ))
    }

    /// Admits setting semaphore `key` of `scope` to `capacity`: a key that
    /// has no record yet gets one unless the capacity is 0.
    pub(super) fn admit_capacity(
        &mut self,
        scope: &str,
        key: &str,
        capacity: u64,
        quotas: &Quotas,
        now_ms: u64,
    ) -> Result<()> {
        if capacity == 0 || self.store.key(&Self::semaphore_id(scope, key)).is_some() {
            return Ok(());
        }
        let id = ScopeId::new(scope);
        let bound = quotas.max_keys_per_scope;
        let full = |e: &Self| e.store.scope_usage(&id).keys >= bound;
        if !full(self) {
            return Ok(());
        }
        self.purge(now_ms, quotas.dedup_window_ms);
        if !full(self) {
            return Ok(());
        }
        Err(EngineError::QuotaExceeded {
            quota: Quota::KeysPerScope,
            scope: scope.to_string(),
            held: self.store.scope_usage(&id).keys,
            adding: 1,
            bound,
        })
    }
}
