//! Acquires that wait for capacity on their group's leader, in FIFO (or
//! fair) turns per first constraint key.

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use prost::Message as _;
use tonic::{Code, Request, Response, Status};

use super::route::{Call, Deadline, ROUTE_TIMEOUT};
use super::{acquire_reply, Api};
use crate::engine::{self, Command, EngineError};
use crate::limits::{
    IDEMPOTENCY_KEY_BYTES_MAX, WAITERS_MAX, WAITER_BYTES_MAX, WAITER_OVERHEAD_BYTES, WAIT_MS_MAX,
};
use crate::proto::v1::{self, constraint, ServedBy};
use crate::server::group::{Group, ProposeError};
use crate::server::turns::{Place, Turn};
use crate::wire;

/// The turn queue of waiters whose first constraint is (scope, kind, key).
pub(super) fn queue_name(scope: &str, kind: &str, key: &str) -> String {
    format!("{scope}\0{kind}\0{key}")
}

/// A waiting acquire parked on its group's leader.
struct Parked {
    group: Arc<Group>,
    /// What every reply says of who served it.
    served_by: ServedBy,
    acquire: engine::AcquireRequest,
    wait: Duration,
    /// The caller's deadline, or how long the call may take at most.
    call: Deadline,
}

impl Api {
    /// An acquire: parked on this node when it leads the scope's group and
    /// the call may wait; otherwise routed as usual (a forwarded waiting
    /// acquire waits on the leader).
    pub(super) async fn acquire_call(
        &self,
        request: Request<v1::AcquireRequest>,
    ) -> Result<Response<v1::AcquireResponse>, Status> {
        let wait_ms = request.get_ref().wait_ms.unwrap_or(0);
        if wait_ms > WAIT_MS_MAX {
            return Err(EngineError::invalid(
                "wait_ms",
                format!("must be at most {WAIT_MS_MAX}, got {wait_ms}"),
            )
            .into());
        }
        let fairness_key = &request.get_ref().fairness_key;
        if fairness_key.len() > IDEMPOTENCY_KEY_BYTES_MAX {
            return Err(EngineError::invalid(
                "fairness_key",
                format!(
                    "must be at most {IDEMPOTENCY_KEY_BYTES_MAX} bytes, got {}",
                    fairness_key.len()
                ),
            )
            .into());
        }
        let map = self.node.slot_map();
        if let Some((slot, group_id)) = map.locate(&request.get_ref().scope).filter(|_| wait_ms > 0)
        {
            if let Some(group) = self.node.group(group_id).filter(|g| g.is_leader()) {
                let wait = Duration::from_millis(wait_ms);
                let call = Deadline::of(request.metadata(), wait + ROUTE_TIMEOUT);
                let served_by = ServedBy {
                    group_id,
                    leader_node_id: self.node.id,
                    epoch: map.epoch,
                    slot,
                };
                return self
                    .park(group, served_by, request.into_inner(), call)
                    .await;
            }
        }
        // Not the leader (or no wait): route as usual; a forwarded waiting
        // acquire waits on the leader.
        self.acquire_once(request).await
    }

    /// Parks `message` on `group`, which this node leads, until it is
    /// granted, its wait runs out, the call's deadline passes, or this node
    /// stops leading the group.
    pub(super) async fn park(
        &self,
        group: Arc<Group>,
        served_by: ServedBy,
        message: v1::AcquireRequest,
        call: Deadline,
    ) -> Result<Response<v1::AcquireResponse>, Status> {
        // Malformed input fails before it waits.
        let acquire: engine::AcquireRequest = message.clone().try_into().map_err(Status::from)?;
        engine::validate::acquire(&acquire).map_err(Status::from)?;
        let parked = Parked {
            group,
            served_by,
            acquire,
            wait: Duration::from_millis(message.wait_ms.unwrap_or(0)),
            call,
        };
        self.wait_here(parked, message).await
    }

    /// The waiting queue of a request: its first constraint's key.
    fn queue_name(request: &v1::AcquireRequest) -> String {
        let first = request.constraints.first().and_then(|c| c.kind.as_ref());
        let (kind, key) = match first {
            Some(constraint::Kind::Concurrency(c)) => ("concurrency", c.key.as_str()),
            Some(constraint::Kind::Throttle(c)) => ("throttle", c.key.as_str()),
            Some(constraint::Kind::RateLimit(c)) => ("rate_limit", c.key.as_str()),
            Some(constraint::Kind::Semaphore(c)) => ("semaphore", c.key.as_str()),
            None => ("", ""),
        };
        queue_name(&request.scope, kind, key)
    }

    /// An acquire that waits for capacity, on its group's leader: in its
    /// key's FIFO turn, it retries whenever capacity may have freed (or a
    /// throttle's admission time comes) until granted or out of time. The
    /// caller's deadline ends the wait with DEADLINE_EXCEEDED and nothing
    /// proposed; a change of leadership ends it at once with NOT_LEADER, so
    /// that the caller (or the node that forwarded it) carries on at the
    /// new leader.
    ///
    /// Attempts proposed while the wait lasts are interim: a denial of one
    /// is not recorded under the idempotency key, and the waiter tries
    /// again. Only a final attempt, once the wait is over, is answered with
    /// a denial (which the engine records); an outcome already recorded
    /// under the key is the answer at once.
    async fn wait_here(
        &self,
        parked: Parked,
        message: v1::AcquireRequest,
    ) -> Result<Response<v1::AcquireResponse>, Status> {
        let Parked {
            group,
            served_by,
            acquire,
            wait,
            call,
        } = parked;
        let _scope_place = self.scope_waiters.park(&acquire.scope)?;
        let Ok(_slot) = Arc::clone(&self.waiters).try_acquire_owned() else {
            return Err(Status::resource_exhausted(format!(
                "this node already holds {WAITERS_MAX} waiting acquires; retry later or \
                 without wait_ms"
            )));
        };
        // What a parked acquire keeps: its request, the command proposed
        // and the bookkeeping around them.
        let bytes = 2 * message.encoded_len() + WAITER_OVERHEAD_BYTES;
        let Ok(_bytes) = Arc::clone(&self.waiter_bytes).try_acquire_many_owned(bytes as u32) else {
            return Err(Status::resource_exhausted(format!(
                "waiting acquires on this node already hold nearly {WAITER_BYTES_MAX} bytes; \
                 retry later or without wait_ms"
            )));
        };
        metrics::gauge!("leasehold_waiters")
            .set((WAITERS_MAX - self.waiters.available_permits()) as f64);
        let wait_until = tokio::time::Instant::now() + wait;
        let deadline = wait_until.min(tokio::time::Instant::from_std(call.at));
        let name = Self::queue_name(&message);
        let fairness = message.fairness_key;
        let result = async {
            // Held while this waiter decides; passed on once its proposal
            // is queued (or when the call ends).
            let (ticket, place) = self.turns.join(&name, &fairness);
            let mut turn = wait_turn(&group, place, deadline).await;
            loop {
                let now = tokio::time::Instant::now();
                if call.callers && now >= tokio::time::Instant::from_std(call.at) {
                    return Err(call.exceeded());
                }
                if !group.is_leader() {
                    let hint = group.leader_hint(group.leader().0);
                    return Err(wire::not_leader(group.id, hint, served_by.epoch));
                }
                let changed = group.capacity_changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                // An attempt is proposed only once the leader's applied
                // state admits it on top of what earlier waiters proposed
                // and have not heard back on: a denied proposal costs a
                // Raft round for nothing. Capacity frees only as commands
                // apply or proposals are answered (either wakes `changed`)
                // or as time passes (the check's retry_after). An attempt
                // whose key has a recorded outcome goes at once, to replay
                // it; so does the final one, for the denial's details.
                let interim = turn.is_some() && now < deadline;
                if interim {
                    let reserved = self.turns.reserved(&name);
                    if let Some(retry_after) = denied_here(&group, &acquire, reserved) {
                        let until = retry_after.map_or(deadline, |ms| {
                            deadline.min(now + Duration::from_millis(ms.max(1)))
                        });
                        tokio::select! {
                            () = &mut changed => {}
                            () = tokio::time::sleep_until(until) => {}
                            () = leadership_lost(&group) => {}
                        }
                        continue;
                    }
                }
                let attempt = if interim {
                    engine::Attempt::Interim
                } else {
                    engine::Attempt::Final
                };
                let attempt = engine::AcquireRequest {
                    attempt,
                    ..acquire.clone()
                };
                let reply = self
                    .propose_waiting(&group, served_by, call, &name, attempt, turn.take())
                    .await?;
                let denied = matches!(reply.result, Some(v1::acquire_response::Result::Denied(_)));
                if !denied || !interim || reply.replayed {
                    return Ok(Response::new(reply));
                }
                // Capacity went to an acquire that does not wait between
                // the check and the apply: back to the head of the queue.
                // The denial was not recorded, so it is not an answer: a
                // wait that ran out meanwhile ends with a final attempt.
                let place = self.turns.rejoin(&name, &fairness, ticket);
                turn = wait_turn(&group, place, deadline).await;
            }
        }
        .await;
        let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
        metrics::counter!("leasehold_requests_total", "rpc" => v1::AcquireRequest::NAME, "code" => format!("{code:?}"))
            .increment(1);
        metrics::gauge!("leasehold_waiters")
            .set((WAITERS_MAX - self.waiters.available_permits() - 1) as f64);
        result
    }

    /// Proposes an attempt of a waiter's acquire on this leader and passes
    /// `turn` on as soon as the proposal is queued: the next waiter's
    /// proposal goes after it, in the same entry or a later one. Its amount
    /// counts as reserved in queue `name` until it is answered.
    async fn propose_waiting(
        &self,
        group: &Group,
        served_by: ServedBy,
        call: Deadline,
        name: &str,
        attempt: engine::AcquireRequest,
        turn: Option<Turn>,
    ) -> Result<v1::AcquireResponse, Status> {
        let _reserved =
            self.turns
                .reserve(name, attempt.amount, Arc::clone(&group.capacity_changed));
        let queued = group.enqueue(Command::Acquire(attempt)).await;
        drop(turn);
        let applied = match queued {
            Ok(answer) => call.bound(answer).await?,
            Err(e) => Err(e),
        };
        match applied {
            Ok(Ok(applied)) => {
                let mut reply = acquire_reply(applied)?;
                reply.served_by = Some(served_by);
                Ok(reply)
            }
            Ok(Err(e)) => Err(e.into()),
            // The acquire may have applied: the client's retry through the
            // new leader replays it by its idempotency key.
            Err(ProposeError::NotLeader(leader)) => Err(wire::not_leader(
                group.id,
                group.leader_hint(leader),
                served_by.epoch,
            )),
            Err(ProposeError::Stopped(why) | ProposeError::Unsynchronized(why)) => {
                Err(Status::unavailable(why))
            }
            Err(ProposeError::Overloaded(why)) => {
                Err(wire::overloaded(why, super::OVERLOAD_RETRY_AFTER))
            }
        }
    }
}

/// `Some(retry_after_ms)` when the leader's applied state would deny
/// `acquire` now, on top of `reserved` units that earlier waiters of its
/// queue proposed and have not heard back on; `None` when it would grant
/// it, when its key has a recorded outcome (a grant, or a denial its
/// caller heard: a proposal replays it), or when it cannot tell.
fn denied_here(
    group: &Group,
    acquire: &engine::AcquireRequest,
    reserved: u64,
) -> Option<Option<u64>> {
    let now = group.clock.stamp_ms().ok()?;
    let reserved = u32::try_from(reserved).unwrap_or(u32::MAX);
    group.engine.read(|e| {
        if e.remembers(&acquire.scope, &acquire.idempotency_key) {
            return None;
        }
        let checked = e.check(
            &acquire.scope,
            &acquire.constraints,
            acquire.amount.saturating_add(reserved),
            acquire.min_amount.map(|m| m.saturating_add(reserved)),
            now,
        );
        match checked {
            Ok(c) if c.grantable_amount == 0 => Some(c.retry_after_ms),
            // The reserved units and these cannot even be asked for
            // together (past a limit): wait until some are answered.
            Err(_) if reserved > 0 => Some(None),
            _ => None,
        }
    })
}

/// The turn from `place`, waiting for it until `deadline` or until this
/// node stops leading `group`; None if it did not come.
async fn wait_turn(group: &Group, place: Place, deadline: tokio::time::Instant) -> Option<Turn> {
    match place {
        Place::Now(turn) => Some(turn),
        Place::Queued(rx) => tokio::select! {
            turn = tokio::time::timeout_at(deadline, rx) => turn.ok()?.ok(),
            () = leadership_lost(group) => None,
        },
    }
}

/// Returns once this node does not lead `group` (at once if it does not
/// now).
async fn leadership_lost(group: &Group) {
    let mut server = group.raft.server_metrics();
    loop {
        if server.borrow_and_update().state != ServerState::Leader {
            return;
        }
        if server.changed().await.is_err() {
            return;
        }
    }
}
