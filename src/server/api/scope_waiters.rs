//! The per-scope quota of parked acquires (`max_waiters_per_scope`).
//!
//! Waiters park on their group's leader and nowhere else, and parking
//! changes no replicated state, so this quota is the node's own: unlike
//! the quotas the engine enforces, it need not travel in the log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::engine::{EngineError, Quota};

/// Parked acquires per scope on this node.
#[derive(Clone)]
pub(super) struct ScopeWaiters {
    parked: Arc<Mutex<HashMap<String, u32>>>,
    max: u32,
}

impl ScopeWaiters {
    pub(super) fn new(max: u32) -> ScopeWaiters {
        ScopeWaiters {
            parked: Arc::default(),
            max,
        }
    }

    /// A place for one more waiter of `scope`, held until dropped; or, if
    /// the scope has as many as its quota, the refusal naming it.
    pub(super) fn park(&self, scope: &str) -> Result<ScopeWaiter, EngineError> {
        let mut parked = self.parked.lock().expect("scope waiters");
        let held = parked.get(scope).copied().unwrap_or(0);
        if held >= self.max {
            return Err(EngineError::QuotaExceeded {
                quota: Quota::WaitersPerScope,
                scope: scope.to_string(),
                held: held.into(),
                adding: 1,
                bound: self.max.into(),
            });
        }
        parked.insert(scope.to_string(), held + 1);
        Ok(ScopeWaiter {
            waiters: self.clone(),
            scope: scope.to_string(),
        })
    }

    #[cfg(test)]
    fn parked(&self, scope: &str) -> u32 {
        let parked = self.parked.lock().expect("scope waiters");
        parked.get(scope).copied().unwrap_or(0)
    }
}

/// One parked waiter of a scope; dropping it frees its place.
pub(super) struct ScopeWaiter {
    waiters: ScopeWaiters,
    scope: String,
}

impl Drop for ScopeWaiter {
    fn drop(&mut self) {
        let mut parked = self.waiters.parked.lock().expect("scope waiters");
        if let Some(held) = parked.get_mut(&self.scope) {
            *held -= 1;
            if *held == 0 {
                parked.remove(&self.scope);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_parks_up_to_its_quota_and_others_are_unaffected() {
        let waiters = ScopeWaiters::new(2);
        let a1 = waiters.park("a").unwrap();
        let _a2 = waiters.park("a").unwrap();
        let refused = waiters.park("a").err().expect("a third waiter of a");
        assert_eq!(
            refused.to_string(),
            "scope \"a\" has 2 acquires waiting on this node, its quota \
             (max_waiters_per_scope = 2): retry later or without wait_ms"
        );
        let _b = waiters.park("b").expect("another scope parks");
        drop(a1);
        assert_eq!(waiters.parked("a"), 1);
        let _a3 = waiters.park("a").expect("a place freed");
        assert_eq!(waiters.parked("a"), 2);
    }

    #[test]
    fn a_scope_without_waiters_is_forgotten() {
        let waiters = ScopeWaiters::new(1);
        drop(waiters.park("a").unwrap());
        assert!(waiters.parked.lock().unwrap().is_empty());
    }
}
