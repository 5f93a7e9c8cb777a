//! Input validation: every request is checked against [`crate::limits`]
//! before it can touch state. Errors name the field as the proto spells it
//! and the bound that was crossed.

use super::error::EngineError;
use super::types::{
    AcquireRequest, AdjustCapacityRequest, AdminAction, AdminRequest, Command, Constraint,
    ExtendRequest, Kind, ReleaseRequest, SetCapacityRequest,
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
        Command::Admin(r) => admin(r),
        Command::Expire { .. } => Ok(()),
    }
}

fn bytes(field: &str, value: &str, max: usize) -> Result {
    bytes_ok(value, max).map_err(|reason| EngineError::invalid(field, reason))
}

/// Why `value` is not 1 to `max` bytes long, if it is not. Field names are
/// built only for an error: valid requests format nothing.
fn bytes_ok(value: &str, max: usize) -> std::result::Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".to_string());
    }
    if value.len() > max {
        return Err(format!(
            "is {} bytes, more than the maximum {max}",
            value.len()
        ));
    }
    Ok(())
}

fn range(field: &str, value: u64, min: u64, max: u64) -> Result {
    range_ok(value, min, max).map_err(|reason| EngineError::invalid(field, reason))
}

/// Why `value` is outside `[min, max]`, if it is.
fn range_ok(value: u64, min: u64, max: u64) -> std::result::Result<(), String> {
    if value < min || value > max {
        return Err(format!("{value} is outside [{min}, {max}]"));
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
    for (i, c) in constraints.iter().enumerate() {
        constraint(Some(i), c, min_amount)?;
        // At most 16 constraints: a scan beats hashing. The latest earlier
        // use of the key is the one named.
        let earlier = constraints[..i].iter().enumerate().rev();
        if let Some((first, other)) = earlier.into_iter().find(|(_, o)| o.key() == c.key()) {
            let kind = other.kind();
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

/// Checks one constraint, including that its limit can ever admit
/// `min_amount`: request constraint `at`, or with `None` an admin pin.
fn constraint(at: Option<usize>, c: &Constraint, min_amount: u32) -> Result {
    let field = |name: &str| match at {
        Some(i) => format!("constraints[{i}].{}.{name}", c.kind().as_str()),
        None => format!("pin.{}.{name}", c.kind().as_str()),
    };
    let invalid =
        |name: &'static str| move |reason: String| EngineError::invalid(field(name), reason);
    bytes_ok(c.key(), KEY_BYTES_MAX).map_err(invalid("key"))?;
    let never = |name: &str, bound: u64| {
        Err(EngineError::invalid(
            field(name),
            format!("admits at most {bound} units, below the minimum amount {min_amount}"),
        ))
    };
    match *c {
        Constraint::Concurrency { limit, .. } => {
            range_ok(limit.into(), 1, LIMIT_MAX.into()).map_err(invalid("limit"))?;
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
            range_ok(limit.into(), 1, LIMIT_MAX.into()).map_err(invalid("limit"))?;
            range_ok(period_ms, PERIOD_MS_MIN, PERIOD_MS_MAX).map_err(invalid("period_ms"))?;
            range_ok(burst.into(), 0, BURST_MAX.into()).map_err(invalid("burst"))?;
            if u64::from(burst) + 1 < u64::from(min_amount) {
                return never("burst", u64::from(burst) + 1);
            }
        }
        Constraint::RateLimit {
            limit, period_ms, ..
        } => {
            range_ok(limit.into(), 1, LIMIT_MAX.into()).map_err(invalid("limit"))?;
            range_ok(period_ms, PERIOD_MS_MIN, PERIOD_MS_MAX).map_err(invalid("period_ms"))?;
            if limit < min_amount {
                return never("limit", limit.into());
            }
        }
        Constraint::Semaphore { weight, .. } => {
            range_ok(weight.into(), 1, WEIGHT_MAX.into()).map_err(invalid("weight"))?;
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

pub fn admin(r: &AdminRequest) -> Result {
    key_ref(&r.scope, &r.key)?;
    idempotency_key(&r.idempotency_key)?;
    let AdminAction::Pin(pin) = &r.action else {
        return Ok(());
    };
    if r.kind == Kind::Semaphore {
        return Err(EngineError::invalid(
            "kind",
            "a semaphore cannot be pinned: its capacity is set at run time",
        ));
    }
    if pin.kind() != r.kind {
        return Err(EngineError::invalid(
            "pin",
            format!(
                "is a {} constraint, but the key is a {}",
                pin.kind().as_str(),
                r.kind.as_str()
            ),
        ));
    }
    if pin.key() != r.key {
        return Err(EngineError::invalid(
            format!("pin.{}.key", pin.kind().as_str()),
            "must equal key",
        ));
    }
    constraint(None, pin, 1)
}
