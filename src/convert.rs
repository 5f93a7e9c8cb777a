//! Conversions between the gRPC contract ([`crate::proto::v1`]) and the
//! engine's types, and the mapping of engine errors to gRPC statuses.
//!
//! Proto → engine conversions reject only what the engine's types cannot
//! hold: an unset oneof, an enum value that names no kind. Every bound is
//! checked by [`engine::validate`] alone, so each rule and its message live
//! in one place. Engine → proto conversions leave `served_by` unset: only
//! the server knows who it is.

use tonic::{Code, Status};

use crate::engine::{self, Applied, EngineError, ErrorCode, Outcome, Quota};
use crate::proto::v1;
use crate::wire::error_status;

type Result<T> = std::result::Result<T, EngineError>;

fn constraint(i: usize, c: v1::Constraint) -> Result<engine::Constraint> {
    constraint_at(|| format!("constraints[{i}].kind"), c)
}

/// `field` names the constraint's oneof, for the error when it is unset.
fn constraint_at(field: impl FnOnce() -> String, c: v1::Constraint) -> Result<engine::Constraint> {
    use v1::constraint::Kind;
    Ok(match c.kind {
        Some(Kind::Concurrency(v1::Concurrency { key, limit })) => {
            engine::Constraint::Concurrency { key, limit }
        }
        Some(Kind::Throttle(v1::Throttle {
            key,
            limit,
            period_ms,
            burst,
        })) => engine::Constraint::Throttle {
            key,
            limit,
            period_ms,
            burst,
        },
        Some(Kind::RateLimit(v1::RateLimit {
            key,
            limit,
            period_ms,
        })) => engine::Constraint::RateLimit {
            key,
            limit,
            period_ms,
        },
        Some(Kind::Semaphore(v1::Semaphore { key, weight })) => {
            engine::Constraint::Semaphore { key, weight }
        }
        None => {
            return Err(EngineError::invalid(
                field(),
                "must be set to one of concurrency, throttle, rate_limit, semaphore",
            ))
        }
    })
}

impl From<engine::Constraint> for v1::Constraint {
    fn from(c: engine::Constraint) -> Self {
        use v1::constraint::Kind;
        let kind = match c {
            engine::Constraint::Concurrency { key, limit } => {
                Kind::Concurrency(v1::Concurrency { key, limit })
            }
            engine::Constraint::Throttle {
                key,
                limit,
                period_ms,
                burst,
            } => Kind::Throttle(v1::Throttle {
                key,
                limit,
                period_ms,
                burst,
            }),
            engine::Constraint::RateLimit {
                key,
                limit,
                period_ms,
            } => Kind::RateLimit(v1::RateLimit {
                key,
                limit,
                period_ms,
            }),
            engine::Constraint::Semaphore { key, weight } => {
                Kind::Semaphore(v1::Semaphore { key, weight })
            }
        };
        v1::Constraint { kind: Some(kind) }
    }
}

impl TryFrom<v1::AdminKeyRequest> for engine::AdminRequest {
    type Error = EngineError;

    fn try_from(r: v1::AdminKeyRequest) -> Result<Self> {
        use engine::AdminAction as A;
        let pin_given = r.pin.is_some();
        let action = match v1::KeyAction::try_from(r.action) {
            Ok(v1::KeyAction::Pause) => A::Pause,
            Ok(v1::KeyAction::Resume) => A::Resume,
            Ok(v1::KeyAction::Pin) => {
                let pin = r
                    .pin
                    .ok_or_else(|| EngineError::invalid("pin", "must be set for KEY_ACTION_PIN"))?;
                A::Pin(constraint_at(|| "pin.kind".to_string(), pin)?)
            }
            Ok(v1::KeyAction::Unpin) => A::Unpin,
            Ok(v1::KeyAction::Reset) => A::Reset,
            Ok(v1::KeyAction::Unspecified) => {
                return Err(EngineError::invalid(
                    "action",
                    "must be set: KEY_ACTION_UNSPECIFIED names no action",
                ))
            }
            Err(_) => {
                return Err(EngineError::invalid(
                    "action",
                    format!("{} is not a KeyAction: outside [1, 5]", r.action),
                ))
            }
        };
        if pin_given && !matches!(action, A::Pin(_)) {
            return Err(EngineError::invalid(
                "pin",
                "must be unset unless action is KEY_ACTION_PIN",
            ));
        }
        Ok(engine::AdminRequest {
            kind: kind("kind", r.kind)?,
            scope: r.scope,
            key: r.key,
            action,
            idempotency_key: r.idempotency_key,
        })
    }
}

impl From<engine::KeyAdmin> for v1::KeyAdmin {
    fn from(a: engine::KeyAdmin) -> Self {
        v1::KeyAdmin {
            paused: a.paused,
            pinned: a.pinned.map(v1::Constraint::from),
        }
    }
}

fn constraints(cs: Vec<v1::Constraint>) -> Result<Vec<engine::Constraint>> {
    cs.into_iter()
        .enumerate()
        .map(|(i, c)| constraint(i, c))
        .collect()
}

/// The engine kind of a `ConstraintKind` wire value named `field`.
fn kind(field: &str, value: i32) -> Result<engine::Kind> {
    match v1::ConstraintKind::try_from(value) {
        Ok(v1::ConstraintKind::Concurrency) => Ok(engine::Kind::Concurrency),
        Ok(v1::ConstraintKind::Throttle) => Ok(engine::Kind::Throttle),
        Ok(v1::ConstraintKind::RateLimit) => Ok(engine::Kind::RateLimit),
        Ok(v1::ConstraintKind::Semaphore) => Ok(engine::Kind::Semaphore),
        Ok(v1::ConstraintKind::Unspecified) => Err(EngineError::invalid(
            field,
            "must be set: CONSTRAINT_KIND_UNSPECIFIED names no kind",
        )),
        // Proto3 enums are open: a newer client may send a value we lack.
        Err(_) => Err(EngineError::invalid(
            field,
            format!("{value} is not a ConstraintKind: outside [1, 4]"),
        )),
    }
}

impl TryFrom<v1::AcquireRequest> for engine::AcquireRequest {
    type Error = EngineError;

    fn try_from(r: v1::AcquireRequest) -> Result<Self> {
        Ok(engine::AcquireRequest {
            scope: r.scope,
            constraints: constraints(r.constraints)?,
            amount: r.amount,
            min_amount: r.min_amount,
            lease_ttl_ms: r.lease_ttl_ms,
            max_lifetime_ms: r.max_lifetime_ms,
            idempotency_key: r.idempotency_key,
            // Its caller hears the answer; a waiter marks its own interim
            // attempts.
            attempt: engine::Attempt::Final,
        })
    }
}

impl From<v1::ExtendRequest> for engine::ExtendRequest {
    fn from(r: v1::ExtendRequest) -> Self {
        engine::ExtendRequest {
            scope: r.scope,
            lease_id: r.lease_id,
            ttl_ms: r.ttl_ms,
            idempotency_key: r.idempotency_key,
        }
    }
}

impl From<v1::ReleaseRequest> for engine::ReleaseRequest {
    fn from(r: v1::ReleaseRequest) -> Self {
        engine::ReleaseRequest {
            scope: r.scope,
            lease_id: r.lease_id,
            idempotency_key: r.idempotency_key,
        }
    }
}

impl From<v1::SetCapacityRequest> for engine::SetCapacityRequest {
    fn from(r: v1::SetCapacityRequest) -> Self {
        engine::SetCapacityRequest {
            scope: r.scope,
            key: r.key,
            capacity: r.capacity,
            idempotency_key: r.idempotency_key,
        }
    }
}

impl From<v1::AdjustCapacityRequest> for engine::AdjustCapacityRequest {
    fn from(r: v1::AdjustCapacityRequest) -> Self {
        engine::AdjustCapacityRequest {
            scope: r.scope,
            key: r.key,
            delta: r.delta,
            idempotency_key: r.idempotency_key,
        }
    }
}

/// The arguments of [`engine::Engine::check`], from a `CheckRequest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckArgs {
    pub scope: String,
    pub constraints: Vec<engine::Constraint>,
    pub amount: u32,
    pub min_amount: Option<u32>,
}

impl TryFrom<v1::CheckRequest> for CheckArgs {
    type Error = EngineError;

    fn try_from(r: v1::CheckRequest) -> Result<Self> {
        Ok(CheckArgs {
            scope: r.scope,
            constraints: constraints(r.constraints)?,
            amount: r.amount,
            min_amount: r.min_amount,
        })
    }
}

/// The arguments of [`engine::Engine::inspect`], from an `InspectRequest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InspectArgs {
    pub scope: String,
    pub kind: engine::Kind,
    pub key: String,
}

impl TryFrom<v1::InspectRequest> for InspectArgs {
    type Error = EngineError;

    fn try_from(r: v1::InspectRequest) -> Result<Self> {
        Ok(InspectArgs {
            kind: kind("kind", r.kind)?,
            scope: r.scope,
            key: r.key,
        })
    }
}

impl From<engine::Kind> for v1::ConstraintKind {
    fn from(k: engine::Kind) -> Self {
        match k {
            engine::Kind::Concurrency => v1::ConstraintKind::Concurrency,
            engine::Kind::Throttle => v1::ConstraintKind::Throttle,
            engine::Kind::RateLimit => v1::ConstraintKind::RateLimit,
            engine::Kind::Semaphore => v1::ConstraintKind::Semaphore,
        }
    }
}

impl From<engine::Usage> for v1::Usage {
    fn from(u: engine::Usage) -> Self {
        v1::Usage {
            kind: v1::ConstraintKind::from(u.kind).into(),
            key: u.key,
            used: u.used,
            limit: u.limit,
            available: u.available,
            retry_after_ms: u.retry_after_ms,
            paused: u.paused,
        }
    }
}

fn usages(us: Vec<engine::Usage>) -> Vec<v1::Usage> {
    us.into_iter().map(v1::Usage::from).collect()
}

impl From<engine::Grant> for v1::Grant {
    fn from(g: engine::Grant) -> Self {
        v1::Grant {
            lease_id: g.lease_id,
            fencing_token: g.fencing_token,
            granted_amount: g.granted_amount,
            granted_at_ms: g.granted_at_ms,
            expires_at_ms: g.expires_at_ms,
            usage: usages(g.usage),
        }
    }
}

impl From<engine::Denial> for v1::Denial {
    fn from(d: engine::Denial) -> Self {
        v1::Denial {
            blocking: usages(d.blocking),
            retry_after_ms: d.retry_after_ms,
        }
    }
}

impl From<engine::Holder> for v1::Holder {
    fn from(h: engine::Holder) -> Self {
        v1::Holder {
            lease_id: h.lease_id,
            units: h.units,
            expires_at_ms: h.expires_at_ms,
        }
    }
}

impl From<engine::CheckResult> for v1::CheckResponse {
    fn from(c: engine::CheckResult) -> Self {
        v1::CheckResponse {
            grantable_amount: c.grantable_amount,
            usage: usages(c.usage),
            retry_after_ms: c.retry_after_ms,
            served_by: None,
        }
    }
}

impl From<engine::KeyInfo> for v1::InspectResponse {
    fn from(k: engine::KeyInfo) -> Self {
        v1::InspectResponse {
            kind: v1::ConstraintKind::from(k.kind).into(),
            key: k.key,
            exists: k.exists,
            used: k.used,
            limit: k.limit,
            holders: k.holders.into_iter().map(v1::Holder::from).collect(),
            next_expiry_ms: k.next_expiry_ms,
            served_by: None,
            admin: Some(k.admin.into()),
            waiters: 0,
        }
    }
}

/// The engine answered a command with an outcome of another command: a bug,
/// reported to the caller rather than crashing the server.
fn mismatch(rpc: &str, outcome: &Outcome) -> Status {
    Status::internal(format!("the engine answered {rpc} with {outcome:?}"))
}

impl TryFrom<Applied> for v1::AcquireResponse {
    type Error = Status;

    fn try_from(a: Applied) -> std::result::Result<Self, Status> {
        use v1::acquire_response::Result as R;
        let result = match a.outcome {
            Outcome::Granted(g) => R::Granted(g.into()),
            Outcome::Denied(d) => R::Denied(d.into()),
            other => return Err(mismatch("Acquire", &other)),
        };
        Ok(v1::AcquireResponse {
            result: Some(result),
            replayed: a.replayed,
            served_by: None,
        })
    }
}

impl TryFrom<Applied> for v1::ExtendResponse {
    type Error = Status;

    fn try_from(a: Applied) -> std::result::Result<Self, Status> {
        match a.outcome {
            Outcome::Extended {
                lease_id,
                expires_at_ms,
            } => Ok(v1::ExtendResponse {
                lease_id,
                expires_at_ms,
                replayed: a.replayed,
                served_by: None,
            }),
            other => Err(mismatch("Extend", &other)),
        }
    }
}

impl TryFrom<Applied> for v1::ReleaseResponse {
    type Error = Status;

    fn try_from(a: Applied) -> std::result::Result<Self, Status> {
        match a.outcome {
            Outcome::Released { lease_id, was_held } => Ok(v1::ReleaseResponse {
                lease_id,
                was_held,
                replayed: a.replayed,
                served_by: None,
            }),
            other => Err(mismatch("Release", &other)),
        }
    }
}

/// For both SetCapacity and AdjustCapacity.
impl TryFrom<Applied> for v1::CapacityResponse {
    type Error = Status;

    fn try_from(a: Applied) -> std::result::Result<Self, Status> {
        match a.outcome {
            Outcome::Capacity { key, capacity } => Ok(v1::CapacityResponse {
                key,
                capacity,
                replayed: a.replayed,
                served_by: None,
            }),
            other => Err(mismatch("a capacity change", &other)),
        }
    }
}

impl TryFrom<Applied> for v1::AdminKeyResponse {
    type Error = Status;

    fn try_from(a: Applied) -> std::result::Result<Self, Status> {
        match a.outcome {
            Outcome::Admin(admin) => Ok(v1::AdminKeyResponse {
                admin: Some(admin.into()),
                replayed: a.replayed,
                served_by: None,
            }),
            other => Err(mismatch("AdminKey", &other)),
        }
    }
}

/// The gRPC status code each stable error code travels under (the table in
/// the proto's ERRORS section).
pub fn grpc_code(code: ErrorCode) -> Code {
    match code {
        ErrorCode::InvalidArgument => Code::InvalidArgument,
        ErrorCode::LeaseNotFound => Code::NotFound,
        ErrorCode::LeaseLost | ErrorCode::MaxLifetimeExceeded | ErrorCode::CapacityOutOfRange => {
            Code::FailedPrecondition
        }
        ErrorCode::IdempotencyKeyReused => Code::AlreadyExists,
        ErrorCode::QuotaExceeded => Code::ResourceExhausted,
    }
}

/// The request field an error is about, spelled as in the proto.
fn error_field(err: &EngineError) -> &str {
    match err {
        EngineError::InvalidArgument { field, .. } => field,
        EngineError::LeaseNotFound { .. } | EngineError::LeaseLost { .. } => "lease_id",
        EngineError::MaxLifetimeExceeded { .. } => "ttl_ms",
        EngineError::IdempotencyKeyReused { .. } => "idempotency_key",
        EngineError::CapacityOutOfRange { .. } => "delta",
        EngineError::QuotaExceeded { quota, .. } => match quota {
            Quota::LeasesPerScope | Quota::KeysPerScope => "scope",
            Quota::WaitersPerScope => "wait_ms",
            Quota::IdempotencyRecordsPerGroup => "idempotency_key",
        },
    }
}

impl From<EngineError> for Status {
    fn from(err: EngineError) -> Self {
        let detail = v1::ErrorDetail {
            code: err.code().as_str().to_string(),
            field: error_field(&err).to_string(),
            ..Default::default()
        };
        error_status(grpc_code(err.code()), err.to_string(), &detail)
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::wire::error_detail;

    fn throttle() -> v1::Constraint {
        v1::Constraint {
            kind: Some(v1::constraint::Kind::Throttle(v1::Throttle {
                key: "t".into(),
                limit: 10,
                period_ms: 1_000,
                burst: 4,
            })),
        }
    }

    fn all_kinds() -> Vec<v1::Constraint> {
        use v1::constraint::Kind;
        vec![
            v1::Constraint {
                kind: Some(Kind::Concurrency(v1::Concurrency {
                    key: "c".into(),
                    limit: 3,
                })),
            },
            throttle(),
            v1::Constraint {
                kind: Some(Kind::RateLimit(v1::RateLimit {
                    key: "r".into(),
                    limit: 100,
                    period_ms: 60_000,
                })),
            },
            v1::Constraint {
                kind: Some(Kind::Semaphore(v1::Semaphore {
                    key: "s".into(),
                    weight: 2,
                })),
            },
        ]
    }

    fn acquire_request() -> v1::AcquireRequest {
        v1::AcquireRequest {
            scope: "tenant".into(),
            constraints: all_kinds(),
            amount: 3,
            min_amount: Some(1),
            lease_ttl_ms: 30_000,
            max_lifetime_ms: Some(600_000),
            idempotency_key: "k1".into(),
            wait_ms: None,
            fairness_key: String::new(),
        }
    }

    #[test]
    fn acquire_request_maps_every_kind_and_field() {
        let r = engine::AcquireRequest::try_from(acquire_request()).unwrap();
        assert_eq!(
            r,
            engine::AcquireRequest {
                scope: "tenant".into(),
                constraints: vec![
                    engine::Constraint::Concurrency {
                        key: "c".into(),
                        limit: 3
                    },
                    engine::Constraint::Throttle {
                        key: "t".into(),
                        limit: 10,
                        period_ms: 1_000,
                        burst: 4
                    },
                    engine::Constraint::RateLimit {
                        key: "r".into(),
                        limit: 100,
                        period_ms: 60_000
                    },
                    engine::Constraint::Semaphore {
                        key: "s".into(),
                        weight: 2
                    },
                ],
                amount: 3,
                min_amount: Some(1),
                lease_ttl_ms: 30_000,
                max_lifetime_ms: Some(600_000),
                idempotency_key: "k1".into(),
                attempt: engine::Attempt::Final,
            }
        );
        assert_eq!(engine::validate::acquire(&r), Ok(()));
    }

    #[test]
    fn unset_oneof_names_its_constraint() {
        let mut req = acquire_request();
        req.constraints[2].kind = None;
        let err = engine::AcquireRequest::try_from(req).unwrap_err();
        assert!(
            matches!(&err, EngineError::InvalidArgument { field, .. } if field == "constraints[2].kind"),
            "{err:?}"
        );

        let check = v1::CheckRequest {
            scope: "tenant".into(),
            constraints: vec![throttle(), v1::Constraint { kind: None }],
            amount: 1,
            min_amount: None,
        };
        let err = CheckArgs::try_from(check).unwrap_err();
        assert_eq!(
            err.to_string().split(':').next(),
            Some("constraints[1].kind")
        );
    }

    #[test]
    fn bounds_are_left_to_validation() {
        let mut req = acquire_request();
        req.amount = u32::MAX;
        req.lease_ttl_ms = 0;
        let r = engine::AcquireRequest::try_from(req).unwrap();
        assert_eq!(r.amount, u32::MAX);
        let err = engine::validate::acquire(&r).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("amount: 4294967295 is outside [1, 1000000]"),
            "{err}"
        );
    }

    #[test]
    fn check_request_converts() {
        let args = CheckArgs::try_from(v1::CheckRequest {
            scope: "tenant".into(),
            constraints: vec![throttle()],
            amount: 5,
            min_amount: Some(2),
        })
        .unwrap();
        assert_eq!(args.scope, "tenant");
        assert_eq!(args.amount, 5);
        assert_eq!(args.min_amount, Some(2));
        assert_eq!(args.constraints[0].kind(), engine::Kind::Throttle);
    }

    #[test]
    fn inspect_kind_must_name_a_kind() {
        let req = |kind: i32| v1::InspectRequest {
            scope: "tenant".into(),
            kind,
            key: "k".into(),
        };
        let args = InspectArgs::try_from(req(v1::ConstraintKind::RateLimit.into())).unwrap();
        assert_eq!(
            args,
            InspectArgs {
                scope: "tenant".into(),
                kind: engine::Kind::RateLimit,
                key: "k".into()
            }
        );
        for (value, bound) in [(0, "CONSTRAINT_KIND_UNSPECIFIED"), (99, "outside [1, 4]")] {
            let err = InspectArgs::try_from(req(value)).unwrap_err();
            match &err {
                EngineError::InvalidArgument { field, reason } => {
                    assert_eq!(field, "kind");
                    assert!(reason.contains(bound), "{reason}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn kinds_round_trip() {
        for k in [
            engine::Kind::Concurrency,
            engine::Kind::Throttle,
            engine::Kind::RateLimit,
            engine::Kind::Semaphore,
        ] {
            let wire: i32 = v1::ConstraintKind::from(k).into();
            assert_eq!(kind("kind", wire), Ok(k));
        }
    }

    #[test]
    fn mutating_requests_convert_field_for_field() {
        let e = engine::ExtendRequest::from(v1::ExtendRequest {
            scope: "s".into(),
            lease_id: 7,
            ttl_ms: 5_000,
            idempotency_key: "e".into(),
        });
        assert_eq!(
            (e.lease_id, e.ttl_ms, e.idempotency_key.as_str()),
            (7, 5_000, "e")
        );
        let r = engine::ReleaseRequest::from(v1::ReleaseRequest {
            scope: "s".into(),
            lease_id: 7,
            idempotency_key: "r".into(),
        });
        assert_eq!((r.scope.as_str(), r.lease_id), ("s", 7));
        let s = engine::SetCapacityRequest::from(v1::SetCapacityRequest {
            scope: "s".into(),
            key: "sem".into(),
            capacity: 12,
            idempotency_key: "c".into(),
        });
        assert_eq!((s.key.as_str(), s.capacity), ("sem", 12));
        let a = engine::AdjustCapacityRequest::from(v1::AdjustCapacityRequest {
            scope: "s".into(),
            key: "sem".into(),
            delta: -3,
            idempotency_key: "a".into(),
        });
        assert_eq!((a.key.as_str(), a.delta), ("sem", -3));
    }

    fn usage(kind: engine::Kind, retry_after_ms: Option<u64>) -> engine::Usage {
        engine::Usage {
            kind,
            key: "k".into(),
            used: 3,
            limit: 4,
            available: 1,
            retry_after_ms,
            paused: false,
        }
    }

    #[test]
    fn grant_survives_the_wire() {
        let grant = engine::Grant {
            lease_id: 9,
            fencing_token: 9,
            granted_amount: 2,
            granted_at_ms: 1_000,
            expires_at_ms: 31_000,
            usage: vec![usage(engine::Kind::Semaphore, None)],
        };
        let applied = Applied {
            outcome: Outcome::Granted(grant),
            replayed: true,
        };
        let resp = v1::AcquireResponse::try_from(applied).unwrap();
        let decoded = v1::AcquireResponse::decode(resp.encode_to_vec().as_slice()).unwrap();
        assert!(decoded.replayed);
        assert_eq!(decoded.served_by, None);
        let Some(v1::acquire_response::Result::Granted(g)) = decoded.result else {
            panic!("{decoded:?}");
        };
        assert_eq!((g.lease_id, g.fencing_token, g.granted_amount), (9, 9, 2));
        assert_eq!((g.granted_at_ms, g.expires_at_ms), (1_000, 31_000));
        assert_eq!(
            g.usage,
            vec![v1::Usage {
                kind: v1::ConstraintKind::Semaphore.into(),
                key: "k".into(),
                used: 3,
                limit: 4,
                available: 1,
                retry_after_ms: None,
                paused: false,
            }]
        );
    }

    #[test]
    fn admin_requests_name_the_field_at_fault() {
        let request = |action: v1::KeyAction, pin: Option<v1::Constraint>| v1::AdminKeyRequest {
            scope: "acct".into(),
            kind: v1::ConstraintKind::Concurrency.into(),
            key: "jobs".into(),
            action: action.into(),
            pin,
            idempotency_key: "i".into(),
        };
        let field = |r: v1::AdminKeyRequest| match engine::AdminRequest::try_from(r) {
            Err(EngineError::InvalidArgument { field, .. }) => field,
            other => panic!("expected an invalid argument, got {other:?}"),
        };
        assert_eq!(field(request(v1::KeyAction::Unspecified, None)), "action");
        assert_eq!(field(request(v1::KeyAction::Pin, None)), "pin");
        assert_eq!(
            field(request(v1::KeyAction::Pause, Some(concurrency_pin()))),
            "pin"
        );
        let empty = v1::Constraint { kind: None };
        assert_eq!(field(request(v1::KeyAction::Pin, Some(empty))), "pin.kind");
        let mut r = request(v1::KeyAction::Reset, None);
        r.kind = 0;
        assert_eq!(field(r), "kind");
        let ok =
            engine::AdminRequest::try_from(request(v1::KeyAction::Pin, Some(concurrency_pin())))
                .expect("a well-formed pin converts");
        assert_eq!(
            ok.action,
            engine::AdminAction::Pin(engine::Constraint::Concurrency {
                key: "jobs".into(),
                limit: 5
            })
        );
        // And back, as Inspect and AdminKey answer with it.
        let admin = v1::KeyAdmin::from(engine::KeyAdmin {
            paused: true,
            pinned: Some(engine::Constraint::Concurrency {
                key: "jobs".into(),
                limit: 5,
            }),
        });
        assert_eq!(admin.pinned, Some(concurrency_pin()));
    }

    fn concurrency_pin() -> v1::Constraint {
        v1::Constraint {
            kind: Some(v1::constraint::Kind::Concurrency(v1::Concurrency {
                key: "jobs".into(),
                limit: 5,
            })),
        }
    }

    #[test]
    fn denial_keeps_absent_and_zero_retry_apart() {
        for retry in [None, Some(0), Some(250)] {
            let applied = Applied {
                outcome: Outcome::Denied(engine::Denial {
                    blocking: vec![usage(engine::Kind::Concurrency, retry)],
                    retry_after_ms: retry,
                }),
                replayed: false,
            };
            let resp = v1::AcquireResponse::try_from(applied).unwrap();
            let decoded = v1::AcquireResponse::decode(resp.encode_to_vec().as_slice()).unwrap();
            let Some(v1::acquire_response::Result::Denied(d)) = decoded.result else {
                panic!("{decoded:?}");
            };
            assert_eq!(d.retry_after_ms, retry);
            assert_eq!(d.blocking[0].retry_after_ms, retry);
            assert_eq!(
                d.blocking[0].kind,
                i32::from(v1::ConstraintKind::Concurrency)
            );
        }
    }

    #[test]
    fn other_outcomes_map_to_their_responses() {
        let applied = |outcome| Applied {
            outcome,
            replayed: true,
        };
        let e = v1::ExtendResponse::try_from(applied(Outcome::Extended {
            lease_id: 4,
            expires_at_ms: 99,
        }))
        .unwrap();
        assert_eq!((e.lease_id, e.expires_at_ms, e.replayed), (4, 99, true));
        let r = v1::ReleaseResponse::try_from(applied(Outcome::Released {
            lease_id: 4,
            was_held: false,
        }))
        .unwrap();
        assert_eq!((r.lease_id, r.was_held, r.replayed), (4, false, true));
        let c = v1::CapacityResponse::try_from(applied(Outcome::Capacity {
            key: "sem".into(),
            capacity: 8,
        }))
        .unwrap();
        assert_eq!((c.key.as_str(), c.capacity, c.replayed), ("sem", 8, true));
    }

    #[test]
    fn a_mismatched_outcome_is_internal() {
        let applied = Applied {
            outcome: Outcome::Released {
                lease_id: 1,
                was_held: true,
            },
            replayed: false,
        };
        let status = v1::AcquireResponse::try_from(applied).unwrap_err();
        assert_eq!(status.code(), Code::Internal);
        assert!(status.message().contains("Acquire"), "{}", status.message());
    }

    #[test]
    fn check_result_and_key_info_convert() {
        let check = v1::CheckResponse::from(engine::CheckResult {
            grantable_amount: 0,
            usage: vec![usage(engine::Kind::Throttle, Some(100))],
            retry_after_ms: Some(100),
        });
        assert_eq!(check.grantable_amount, 0);
        assert_eq!(check.retry_after_ms, Some(100));
        assert_eq!(check.usage[0].kind, i32::from(v1::ConstraintKind::Throttle));

        let info = v1::InspectResponse::from(engine::KeyInfo {
            kind: engine::Kind::Concurrency,
            key: "c".into(),
            exists: true,
            used: 5,
            limit: 8,
            holders: vec![engine::Holder {
                expires_at_ms: 70,
                lease_id: 3,
                units: 5,
            }],
            next_expiry_ms: Some(70),
            admin: engine::KeyAdmin {
                paused: true,
                pinned: None,
            },
        });
        assert_eq!(info.kind, i32::from(v1::ConstraintKind::Concurrency));
        assert_eq!(info.admin.map(|a| a.paused), Some(true));
        assert_eq!((info.exists, info.used, info.limit), (true, 5, 8));
        assert_eq!(
            info.holders,
            vec![v1::Holder {
                lease_id: 3,
                units: 5,
                expires_at_ms: 70
            }]
        );
        assert_eq!(info.next_expiry_ms, Some(70));
    }

    #[test]
    fn every_engine_error_maps_to_its_status_and_detail() {
        let cases = [
            (
                EngineError::invalid(
                    "constraints[0].throttle.period_ms",
                    "0 is outside [1, 604800000]",
                ),
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
                "constraints[0].throttle.period_ms",
            ),
            (
                EngineError::LeaseNotFound { lease_id: 5 },
                Code::NotFound,
                "LEASE_NOT_FOUND",
                "lease_id",
            ),
            (
                EngineError::LeaseLost { lease_id: 5 },
                Code::FailedPrecondition,
                "LEASE_LOST",
                "lease_id",
            ),
            (
                EngineError::MaxLifetimeExceeded {
                    lease_id: 5,
                    requested_ms: 10,
                    deadline_ms: 9,
                },
                Code::FailedPrecondition,
                "MAX_LIFETIME_EXCEEDED",
                "ttl_ms",
            ),
            (
                EngineError::IdempotencyKeyReused {
                    idempotency_key: "k".into(),
                },
                Code::AlreadyExists,
                "IDEMPOTENCY_KEY_REUSED",
                "idempotency_key",
            ),
            (
                EngineError::CapacityOutOfRange {
                    key: "s".into(),
                    capacity: 1,
                    delta: -2,
                    max: 1_000_000_000_000,
                },
                Code::FailedPrecondition,
                "CAPACITY_OUT_OF_RANGE",
                "delta",
            ),
            (
                EngineError::QuotaExceeded {
                    quota: Quota::LeasesPerScope,
                    scope: "a/x".into(),
                    held: 1000,
                    adding: 1,
                    bound: 1000,
                },
                Code::ResourceExhausted,
                "QUOTA_EXCEEDED",
                "scope",
            ),
            (
                EngineError::QuotaExceeded {
                    quota: Quota::IdempotencyRecordsPerGroup,
                    scope: "a/x".into(),
                    held: 10,
                    adding: 1,
                    bound: 10,
                },
                Code::ResourceExhausted,
                "QUOTA_EXCEEDED",
                "idempotency_key",
            ),
        ];
        for (err, code, code_str, field) in cases {
            let message = err.to_string();
            let status = Status::from(err);
            assert_eq!(status.code(), code, "{code_str}");
            assert_eq!(status.message(), message);
            let detail = error_detail(&status).expect("a detail");
            assert_eq!(
                detail,
                v1::ErrorDetail {
                    code: code_str.into(),
                    field: field.into(),
                    ..Default::default()
                }
            );
        }
    }
}
