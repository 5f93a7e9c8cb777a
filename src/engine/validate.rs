//! Input validation: every request is checked against [`crate::limits`]
//! before it can touch state. Errors name the field as the proto spells it
//! and the bound that was crossed.

use std::collections::HashMap;

use super::error::EngineError;
use super::types::{
    AcquireRequest, AdjustCapacityRequest, Command, Constraint, ExtendRequest, Kind,
    ReleaseRequest, SetCapacityRequest,
};
use crate::limits::*;

type Result = std::result::Result<(), EngineError>;

pub fn command(cmd: &Command) -> Result {
    match cmd {
        Command::Acquire(r) => acquire(r),
        Command::Extend(r) => extend(r),
        Command::Release(r) => release(r),
        Command::SetCapacity(r) => set_capacity(r),
        Command::AdjustCapacity(r) => adjust_capacity(r),
        Command::Expire { .. } => Ok(()),
    }
}

fn bytes(field: &str, value: &str, max: usize) -> Result {
    if value.is_empty() {
        return Err(EngineError::invalid(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(EngineError::invalid(
            field,
            format!("is {} bytes, more than the maximum {max}", value.len()),
        ));
    }
    Ok(())
}

fn range(field: &str, value: u64, min: u64, max: u64) -> Result {
    if value < min || value > max {
        return Err(EngineError::invalid(
            field,
            format!("{value} is outside [{min}, {max}]"),
        ));
    }
    Ok(())
}

fn scope(value: &str) -> Result {
    bytes("scope", value, SCOPE_BYTES_MAX)
}

fn idempotency_key(value: &str) -> Result {
    bytes("idempotency_key", value, IDEMPOTENCY_KEY_BYTES_MAX)
}

fn lease_id(value: u64) -> Result {
    if value == 0 {
        return Err(EngineError::invalid("lease_id", "must be at least 1"));
    }
    Ok(())
}

pub fn acquire(r: &AcquireRequest) -> Result {
    demand(&r.scope, &r.constraints, r.amount, r.min_amount)?;
    idempotency_key(&r.idempotency_key)?;
    range("lease_ttl_ms", r.lease_ttl_ms, 1, LEASE_TTL_MS_MAX)?;
    if let Some(lifetime) = r.max_lifetime_ms {
        range(
            "max_lifetime_ms",
            lifetime,
            r.lease_ttl_ms,
            MAX_LIFETIME_MS_MAX,
        )?;
    }
    Ok(())
}

/// The part of an acquire that a check shares: what is asked of whom.
pub fn demand(
    scope_: &str,
    constraints: &[Constraint],
    amount: u32,
    min_amount: Option<u32>,
) -> Result {
    scope(scope_)?;
    range("amount", amount.into(), 1, AMOUNT_MAX.into())?;
    if let Some(min) = min_amount {
        range("min_amount", min.into(), 1, amount.into())?;
    }
    let min_amount = min_amount.unwrap_or(amount);
    if constraints.is_empty() {
        return Err(EngineError::invalid("constraints", "must hold at least 1"));
    }
    if constraints.len() > CONSTRAINTS_PER_REQUEST_MAX {
        return Err(EngineError::invalid(
            "constraints",
            format!(
                "holds {}, more than the maximum {CONSTRAINTS_PER_REQUEST_MAX}",
                constraints.len()
            ),
        ));
    }
    let mut seen: HashMap<&str, (usize, Kind)> = HashMap::new();
    for (i, c) in constraints.iter().enumerate() {
        constraint(i, c, min_amount)?;
        if let Some((first, kind)) = seen.insert(c.key(), (i, c.kind())) {
            let reason = if kind == c.kind() {
                format!("repeats the key of constraints[{first}]")
            } else {
                format!(
                    "uses the key of constraints[{first}] with kind {} instead of {}",
                    c.kind().as_str(),
                    kind.as_str()
                )
            };
            return Err(EngineError::invalid(
                format!("constraints[{i}].key"),
                reason,
            ));
        }
    }
    Ok(())
}

/// Checks one constraint, including that its limit can ever admit `min_amount`.
fn constraint(i: usize, c: &Constraint, min_amount: u32) -> Result {
    let field = |name: &str| format!("constraints[{i}].{}.{name}", c.kind().as_str());
    bytes(&field("key"), c.key(), KEY_BYTES_MAX)?;
    let never = |name: &str, bound: u64| {
        Err(EngineError::invalid(
            field(name),
            format!("admits at most {bound} units, below the minimum amount {min_amount}"),
        ))
    };
    match *c {
        Constraint::Concurrency { limit, .. } => {
            range(&field("limit"), limit.into(), 1, LIMIT_MAX.into())?;
            if limit < min_amount {
                return never("limit", limit.into());
            }
        }
        Constraint::Throttle {
            limit,
            period_ms,
            burst,
            ..
        } => {
            range(&field("limit"), limit.into(), 1, LIMIT_MAX.into())?;
            range(&field("period_ms"), period_ms, PERIOD_MS_MIN, PERIOD_MS_MAX)?;
            range(&field("burst"), burst.into(), 0, BURST_MAX.into())?;
            if u64::from(burst) + 1 < u64::from(min_amount) {
                return never("burst", u64::from(burst) + 1);
            }
        }
        Constraint::RateLimit {
            limit, period_ms, ..
        } => {
            range(&field("limit"), limit.into(), 1, LIMIT_MAX.into())?;
            range(&field("period_ms"), period_ms, PERIOD_MS_MIN, PERIOD_MS_MAX)?;
            if limit < min_amount {
                return never("limit", limit.into());
            }
        }
        Constraint::Semaphore { weight, .. } => {
            range(&field("weight"), weight.into(), 1, WEIGHT_MAX.into())?;
        }
    }
    Ok(())
}

/// A key named for inspection.
pub fn key_ref(scope_: &str, key: &str) -> Result {
    scope(scope_)?;
    bytes("key", key, KEY_BYTES_MAX)
}

pub fn extend(r: &ExtendRequest) -> Result {
    scope(&r.scope)?;
    lease_id(r.lease_id)?;
    range("ttl_ms", r.ttl_ms, 1, LEASE_TTL_MS_MAX)?;
    idempotency_key(&r.idempotency_key)
}

pub fn release(r: &ReleaseRequest) -> Result {
    scope(&r.scope)?;
    lease_id(r.lease_id)?;
    idempotency_key(&r.idempotency_key)
}

pub fn set_capacity(r: &SetCapacityRequest) -> Result {
    scope(&r.scope)?;
    bytes("key", &r.key, KEY_BYTES_MAX)?;
    range("capacity", r.capacity, 0, CAPACITY_MAX)?;
    idempotency_key(&r.idempotency_key)
}

pub fn adjust_capacity(r: &AdjustCapacityRequest) -> Result {
    scope(&r.scope)?;
    bytes("key", &r.key, KEY_BYTES_MAX)?;
    if r.delta == 0 {
        return Err(EngineError::invalid("delta", "must not be 0"));
    }
    range("delta", r.delta.unsigned_abs(), 1, CAPACITY_MAX)?;
    idempotency_key(&r.idempotency_key)
}
