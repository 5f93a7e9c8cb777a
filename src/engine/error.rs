//! Engine errors, each with a stable code that the API carries unchanged.

use super::types::{LeaseId, Quota};

/// Stable, machine-readable error codes. The strings never change meaning;
/// clients may match on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidArgument,
    LeaseNotFound,
    LeaseLost,
    MaxLifetimeExceeded,
    IdempotencyKeyReused,
    CapacityOutOfRange,
    QuotaExceeded,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::LeaseNotFound => "LEASE_NOT_FOUND",
            ErrorCode::LeaseLost => "LEASE_LOST",
            ErrorCode::MaxLifetimeExceeded => "MAX_LIFETIME_EXCEEDED",
            ErrorCode::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            ErrorCode::CapacityOutOfRange => "CAPACITY_OUT_OF_RANGE",
            ErrorCode::QuotaExceeded => "QUOTA_EXCEEDED",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The request is malformed; nothing was applied.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },

    /// No lease with this id was ever granted in this scope's slot, or
    /// it is a live lease of another scope. (Once a lease has ended, its
    /// scope is forgotten: any scope then gets `LeaseLost`.)
    #[error("lease_id: no lease {lease_id} in this scope")]
    LeaseNotFound { lease_id: LeaseId },

    /// The lease existed but has ended (expired or released); it is never
    /// revived.
    #[error("lease_id: lease {lease_id} is lost: it expired or was released")]
    LeaseLost { lease_id: LeaseId },

    /// The extension would carry the lease past its `max_lifetime_ms`.
    #[error(
        "ttl_ms: extending lease {lease_id} to {requested_ms} ms passes its max lifetime, \
         which ends at {deadline_ms} ms"
    )]
    MaxLifetimeExceeded {
        lease_id: LeaseId,
        requested_ms: u64,
        deadline_ms: u64,
    },

    /// The idempotency key was already used for a call with other parameters.
    #[error("idempotency_key: {idempotency_key:?} was already used with different parameters")]
    IdempotencyKeyReused { idempotency_key: String },

    /// An adjustment would take a semaphore's capacity out of `[0, max]`.
    #[error("delta: adjusting capacity {capacity} of {key:?} by {delta} leaves [0, {max}]")]
    CapacityOutOfRange {
        key: String,
        capacity: u64,
        delta: i64,
        max: u64,
    },

    /// A quota leaves no room for what the call would add: `held` already,
    /// `adding` more, at most `bound`. Nothing was applied, and nothing is
    /// recorded under the idempotency key: a retry is a fresh attempt.
    #[error("{}", quota_message(*quota, scope, *held, *adding, *bound))]
    QuotaExceeded {
        quota: Quota,
        scope: String,
        held: u64,
        adding: u64,
        bound: u64,
    },
}

fn quota_message(quota: Quota, scope: &str, held: u64, adding: u64, bound: u64) -> String {
    let setting = quota.setting();
    match quota {
        Quota::LeasesPerScope => format!(
            "scope {scope:?} holds {held} live leases, its quota ({setting} = {bound}): \
             retry when one ends"
        ),
        Quota::KeysPerScope => format!(
            "scope {scope:?} holds {held} constraint keys with state and this call would \
             add {adding}, past its quota ({setting} = {bound}): retry when keys go idle"
        ),
        Quota::WaitersPerScope => format!(
            "scope {scope:?} has {held} acquires waiting on this node, its quota \
             ({setting} = {bound}): retry later or without wait_ms"
        ),
        Quota::IdempotencyRecordsPerGroup => format!(
            "the group of scope {scope:?} keeps {held} idempotency records, its bound \
             ({setting} = {bound}): retry once older records leave the dedup window"
        ),
    }
}

impl EngineError {
    pub fn code(&self) -> ErrorCode {
        match self {
            EngineError::InvalidArgument { .. } => ErrorCode::InvalidArgument,
            EngineError::LeaseNotFound { .. } => ErrorCode::LeaseNotFound,
            EngineError::LeaseLost { .. } => ErrorCode::LeaseLost,
            EngineError::MaxLifetimeExceeded { .. } => ErrorCode::MaxLifetimeExceeded,
            EngineError::IdempotencyKeyReused { .. } => ErrorCode::IdempotencyKeyReused,
            EngineError::CapacityOutOfRange { .. } => ErrorCode::CapacityOutOfRange,
            EngineError::QuotaExceeded { .. } => ErrorCode::QuotaExceeded,
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        EngineError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
