//! The public `leasehold.v1` service: routes each call to the leader of
//! its scope's group (executing it here, or forwarding it), and answers with who
//! served it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use tokio::sync::{watch, Semaphore};
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use super::clock;
use super::group::ProposeError;
use super::node::Node;
use super::turns::{Place, Turn, Turns};
use crate::convert::{error_status, CheckArgs, InspectArgs};
use crate::engine::{self, Applied, Command, Engine, EngineError, MemStore, Outcome};
use crate::limits::{
    IDEMPOTENCY_KEY_BYTES_MAX, SESSION_IN_FLIGHT_MAX, WAITERS_MAX, WAITER_BYTES_MAX,
    WAITER_OVERHEAD_BYTES, WAIT_MS_MAX,
};
use crate::mux::{self, Replies};
use crate::proto::v1::leasehold_client::LeaseholdClient;
use crate::proto::v1::leasehold_server::Leasehold;
use crate::proto::v1::{self, constraint, session_call, session_reply, ServedBy};
use crate::raft::{GroupId, NodeId, SlotMap};

/// Metadata key counting how often a call was forwarded. A forwarded call
/// is never forwarded again: a node that cannot serve it answers
/// NOT_LEADER with a hint instead, so views that disagree cannot loop.
const HOPS_HEADER: &str = "leasehold-hops";

/// Metadata key a client may set to the epoch of the slot map it
/// routed by.
pub const EPOCH_HEADER: &str = "leasehold-epoch";

/// How long a call may wait for its group to have a reachable leader,
/// unless the caller's own deadline is shorter.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause between routing attempts while leadership settles.
const ROUTE_RETRY: Duration = Duration::from_millis(25);

type Forwarded<R> = Pin<Box<dyn Future<Output = Result<Response<R>, Status>> + Send>>;

/// What one RPC needs for routing: its scope, and how to forward it.
trait Call: Clone + Send + Sync + 'static {
    type Reply: Send + 'static;
    const NAME: &'static str;
    fn scope(&self) -> &str;
    fn forward(client: LeaseholdClient<Channel>, request: Request<Self>) -> Forwarded<Self::Reply>;
    /// Records who served the call in its reply.
    fn served(reply: &mut Self::Reply, by: ServedBy);
    /// How long the call may wait for capacity on the leader.
    fn wait(&self) -> Duration {
        Duration::ZERO
    }
}

macro_rules! call {
    ($req:ty, $reply:ty, $name:literal, $method:ident, $wait:ident) => {
        impl Call for $req {
            type Reply = $reply;
            const NAME: &'static str = $name;
            fn scope(&self) -> &str {
                &self.scope
            }
            fn forward(
                mut client: LeaseholdClient<Channel>,
                request: Request<Self>,
            ) -> Forwarded<$reply> {
                Box::pin(async move { client.$method(request).await })
            }
            fn served(reply: &mut $reply, by: ServedBy) {
                reply.served_by = Some(by);
            }
            fn wait(&self) -> Duration {
                Duration::from_millis(self.$wait.unwrap_or(0))
            }
        }
    };
    ($req:ty, $reply:ty, $name:literal, $method:ident) => {
        impl Call for $req {
            type Reply = $reply;
            const NAME: &'static str = $name;
            fn scope(&self) -> &str {
                &self.scope
            }
            fn forward(
                mut client: LeaseholdClient<Channel>,
                request: Request<Self>,
            ) -> Forwarded<$reply> {
                Box::pin(async move { client.$method(request).await })
            }
            fn served(reply: &mut $reply, by: ServedBy) {
                reply.served_by = Some(by);
            }
        }
    };
}

call!(
    v1::AcquireRequest,
    v1::AcquireResponse,
    "Acquire",
    acquire,
    wait_ms
);
call!(v1::ExtendRequest, v1::ExtendResponse, "Extend", extend);
call!(v1::ReleaseRequest, v1::ReleaseResponse, "Release", release);
call!(v1::CheckRequest, v1::CheckResponse, "Check", check);
call!(v1::InspectRequest, v1::InspectResponse, "Inspect", inspect);
call!(
    v1::SetCapacityRequest,
    v1::CapacityResponse,
    "SetCapacity",
    set_capacity
);
call!(
    v1::AdjustCapacityRequest,
    v1::CapacityResponse,
    "AdjustCapacity",
    adjust_capacity
);

call!(
    v1::AdminKeyRequest,
    v1::AdminKeyResponse,
    "AdminKey",
    admin_key
);

type Reader<R> = Box<dyn Fn(&Engine<MemStore>, u64) -> Result<R, Status> + Send + Sync>;
type Writer<R> = Box<dyn Fn(Applied) -> Result<R, Status> + Send + Sync>;

/// The turn queue of waiters whose first constraint is (scope, kind, key).
fn queue_name(scope: &str, kind: &str, key: &str) -> String {
    format!("{scope}\0{kind}\0{key}")
}

/// How a call executes on the leader.
enum Exec<R> {
    /// Through Raft; `Writer` turns the outcome into the reply.
    Write(Command, Writer<R>),
    /// Against the state at a read index (linearizable).
    Read(Reader<R>),
}

#[derive(Clone)]
pub struct Api {
    node: Arc<Node>,
    /// Turns true when the server stops: open sessions end, so the
    /// graceful shutdown does not wait on them.
    closing: watch::Receiver<bool>,
    /// Slots for parked acquires on this node.
    waiters: Arc<Semaphore>,
    /// Bytes parked acquires may keep on this node.
    waiter_bytes: Arc<Semaphore>,
    /// Whose turn it is to retry, per first constraint key with waiters.
    turns: Turns,
}

impl Api {
    pub fn new(node: Arc<Node>, closing: watch::Receiver<bool>) -> Api {
        Api {
            node,
            closing,
            waiters: Arc::new(Semaphore::new(WAITERS_MAX)),
            waiter_bytes: Arc::new(Semaphore::new(WAITER_BYTES_MAX)),
            turns: Turns::default(),
        }
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
    /// throttle's admission time comes) until granted or out of time.
    /// `served_by` is what every reply says of who served it.
    async fn wait_here(
        &self,
        group: Arc<super::group::Group>,
        served_by: ServedBy,
        message: v1::AcquireRequest,
        acquire: engine::AcquireRequest,
        wait: Duration,
    ) -> Result<Response<v1::AcquireResponse>, Status> {
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
        let deadline = tokio::time::Instant::now() + wait;
        let name = Self::queue_name(&message);
        let fairness = message.fairness_key;
        let result = async {
            // Held while this waiter decides; passed on once its proposal
            // is queued (or when the call ends).
            let (ticket, place) = self.turns.join(&name, &fairness);
            let mut turn = wait_turn(place, deadline).await;
            loop {
                if !group.is_leader() {
                    let hint = group.leader_hint(group.leader().0);
                    return Err(not_leader(group.id, hint, served_by.epoch));
                }
                let changed = group.capacity_changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let now = tokio::time::Instant::now();
                // An attempt is proposed only once the leader's applied
                // state admits it on top of what earlier waiters proposed
                // and have not heard back on: a denied proposal costs a
                // Raft round for nothing. Capacity frees only as commands
                // apply or proposals are answered (either wakes `changed`)
                // or as time passes (the check's retry_after). An attempt
                // whose key already succeeded goes at once, to replay that
                // grant; so does the last one, for the denial's details.
                if turn.is_some() && now < deadline {
                    let reserved = self.turns.reserved(&name);
                    if let Some(retry_after) = denied_here(&group, &acquire, reserved) {
                        let until = retry_after.map_or(deadline, |ms| {
                            deadline.min(now + Duration::from_millis(ms.max(1)))
                        });
                        tokio::select! {
                            () = &mut changed => {}
                            () = tokio::time::sleep_until(until) => {}
                        }
                        continue;
                    }
                }
                let had_turn = turn.is_some();
                let reply = self
                    .propose_waiting(&group, served_by, &name, &acquire, turn.take())
                    .await?;
                let denied = matches!(reply.result, Some(v1::acquire_response::Result::Denied(_)));
                if !denied || !had_turn || tokio::time::Instant::now() >= deadline {
                    return Ok(Response::new(reply));
                }
                // Capacity went to an acquire that does not wait between
                // the check and the apply: back to the head of the queue.
                turn = wait_turn(self.turns.rejoin(&name, &fairness, ticket), deadline).await;
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

    /// Proposes a waiter's acquire on this leader and passes `turn` on as
    /// soon as the proposal is queued: the next waiter's proposal goes
    /// after it, in the same entry or a later one. Its amount counts as
    /// reserved in queue `name` until it is answered.
    async fn propose_waiting(
        &self,
        group: &super::group::Group,
        served_by: ServedBy,
        name: &str,
        acquire: &engine::AcquireRequest,
        turn: Option<Turn>,
    ) -> Result<v1::AcquireResponse, Status> {
        let _reserved =
            self.turns
                .reserve(name, acquire.amount, Arc::clone(&group.capacity_changed));
        let queued = group.enqueue(Command::Acquire(acquire.clone())).await;
        drop(turn);
        let applied = match queued {
            Ok(answer) => timeout(ROUTE_TIMEOUT, answer).await?,
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
            Err(ProposeError::NotLeader(leader)) => Err(not_leader(
                group.id,
                group.leader_hint(leader),
                served_by.epoch,
            )),
            Err(ProposeError::Stopped(why)) => Err(Status::unavailable(why)),
        }
    }

    /// A mutating call whose request converts to its command as is and
    /// whose reply is the applied outcome.
    async fn mutate<C, R>(
        &self,
        request: Request<C>,
        command: fn(R) -> Command,
    ) -> Result<Response<C::Reply>, Status>
    where
        C: Call + Into<R>,
        C::Reply: TryFrom<Applied, Error = Status>,
    {
        self.serve(request, |r| {
            Self::write::<C>(command(r.clone().into()), |a| a.try_into())
        })
        .await
    }

    /// One acquire attempt, routed as usual (waiting, if any, is the
    /// leader's business).
    async fn acquire_once(
        &self,
        request: Request<v1::AcquireRequest>,
    ) -> Result<Response<v1::AcquireResponse>, Status> {
        self.serve(request, |r| {
            let cmd = Command::Acquire(r.clone().try_into()?);
            Self::write::<v1::AcquireRequest>(cmd, acquire_reply)
        })
        .await
    }

    async fn serve<C: Call>(
        &self,
        request: Request<C>,
        exec: impl FnOnce(&C) -> Result<Exec<C::Reply>, EngineError>,
    ) -> Result<Response<C::Reply>, Status> {
        let started = Instant::now();
        let span = tracing::debug_span!("rpc", rpc = C::NAME, scope = request.get_ref().scope());
        let result = self.route(request, exec).instrument(span).await;
        let code = match &result {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        };
        metrics::counter!("leasehold_requests_total", "rpc" => C::NAME, "code" => format!("{code:?}"))
            .increment(1);
        metrics::histogram!("leasehold_request_duration_seconds", "rpc" => C::NAME)
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn route<C: Call>(
        &self,
        request: Request<C>,
        exec: impl FnOnce(&C) -> Result<Exec<C::Reply>, EngineError>,
    ) -> Result<Response<C::Reply>, Status> {
        let map = self.node.slot_map();
        if !map.is_initialized() || self.node.is_stopping() {
            return Err(Status::unavailable(
                "this node is not serving yet (or is stopping)",
            ));
        }
        let hops = hops(request.metadata());
        if let Some(epoch) = client_epoch(request.metadata())? {
            if epoch > map.epoch {
                return Err(wrong_epoch(epoch, map.epoch));
            }
        }
        // A waiting acquire may take its wait on top of the routing time.
        let budget = ROUTE_TIMEOUT + request.get_ref().wait();
        let deadline = Instant::now()
            + grpc_timeout(request.metadata())
                .unwrap_or(budget)
                .min(budget);
        let message = request.into_inner();
        // Malformed input fails here, before any routing or proposal.
        let exec = exec(&message).map_err(Status::from)?;
        let (slot, group_id) = locate(&map, message.scope())?;
        loop {
            let target = self.target(&map, group_id, deadline).await;
            match target {
                Target::Here(group) => {
                    let served_by = ServedBy {
                        group_id,
                        leader_node_id: self.node.id,
                        epoch: map.epoch,
                        slot,
                    };
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    match &exec {
                        Exec::Write(cmd, reply) => {
                            match timeout(remaining, group.propose(cmd.clone())).await? {
                                Ok(Ok(applied)) => {
                                    let mut r = reply(applied)?;
                                    C::served(&mut r, served_by);
                                    return Ok(Response::new(r));
                                }
                                Ok(Err(e)) => return Err(e.into()),
                                // Leadership moved mid-call: the command may have
                                // applied; the retry through the new leader
                                // replays it by its idempotency key.
                                Err(ProposeError::NotLeader(_)) => {}
                                Err(ProposeError::Stopped(why)) => {
                                    return Err(Status::unavailable(why))
                                }
                            }
                        }
                        Exec::Read(read) => {
                            match timeout(remaining, group.raft.ensure_linearizable()).await? {
                                Ok(_) => {
                                    let now = clock::now_ms();
                                    let mut r = group.engine.read(|e| read(e, now))?;
                                    C::served(&mut r, served_by);
                                    return Ok(Response::new(r));
                                }
                                Err(e) => tracing::debug!(error = %e, "read index refused"),
                            }
                        }
                    }
                }
                Target::Peer { leader, addr } if hops == 0 => {
                    let channel = self.node.peers.channel(&addr).map_err(|e| {
                        Status::unavailable(format!("node {leader} at {addr}: {e}"))
                    })?;
                    let mut forwarded = Request::new(message.clone());
                    forwarded
                        .metadata_mut()
                        .insert(HOPS_HEADER, tonic::metadata::MetadataValue::from(hops + 1));
                    forwarded.set_timeout(deadline.saturating_duration_since(Instant::now()));
                    match C::forward(LeaseholdClient::new(channel), forwarded).await {
                        Ok(r) => return Ok(r),
                        // The peer lost leadership or is gone: look again.
                        Err(s) if retryable(&s) => {
                            tracing::debug!(leader, status = %s, "forward failed");
                        }
                        Err(s) => return Err(s),
                    }
                }
                Target::Peer { leader, addr } => {
                    return Err(not_leader(group_id, Some((leader, addr)), map.epoch))
                }
                Target::Unknown => {}
            }
            if Instant::now() >= deadline {
                return Err(not_leader(group_id, None, map.epoch));
            }
            tokio::time::sleep(ROUTE_RETRY).await;
        }
    }

    /// Who should serve `group_id` now: this node, a peer, or nobody known
    /// yet (after waiting for an election until `deadline`).
    async fn target(&self, map: &SlotMap, group_id: GroupId, deadline: Instant) -> Target {
        if let Some(group) = self.node.group(group_id) {
            if group.is_leader() {
                return Target::Here(group);
            }
            let wait = deadline.saturating_duration_since(Instant::now());
            match group.wait_for_leader(wait).await {
                Some(leader) if leader == self.node.id => {
                    return if group.is_leader() {
                        Target::Here(group)
                    } else {
                        Target::Unknown
                    }
                }
                Some(leader) => {
                    if let Some(addr) = group.member_addr(leader) {
                        return Target::Peer { leader, addr };
                    }
                }
                None => {}
            }
            return Target::Unknown;
        }
        // Not hosted here: the map's leader hint, else any replica (which
        // answers NOT_LEADER with a better hint).
        let placement = map.group(group_id);
        let leader = placement
            .map(|p| p.leader)
            .filter(|l| *l != 0)
            .or_else(|| placement.and_then(|p| p.replicas.first().copied()));
        match leader.and_then(|l| map.nodes.get(&l).map(|a| (l, a.clone()))) {
            Some((leader, addr)) => Target::Peer { leader, addr },
            None => Target::Unknown,
        }
    }

    fn write<C: Call>(
        cmd: Command,
        reply: impl Fn(Applied) -> Result<C::Reply, Status> + Send + Sync + 'static,
    ) -> Result<Exec<C::Reply>, EngineError> {
        engine::validate::command(&cmd)?;
        Ok(Exec::Write(cmd, Box::new(reply)))
    }
}

/// `Some(retry_after_ms)` when the leader's applied state would deny
/// `acquire` now, on top of `reserved` units that earlier waiters of its
/// queue proposed and have not heard back on; `None` when it would grant
/// it, when its key already succeeded (a proposal replays that), or when
/// it cannot tell.
fn denied_here(
    group: &super::group::Group,
    acquire: &engine::AcquireRequest,
    reserved: u64,
) -> Option<Option<u64>> {
    let now = clock::now_ms();
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

/// The turn from `place`, waiting for it until `deadline`; None if it
/// did not come in time.
async fn wait_turn(place: Place, deadline: tokio::time::Instant) -> Option<Turn> {
    match place {
        Place::Now(turn) => Some(turn),
        Place::Queued(rx) => tokio::time::timeout_at(deadline, rx).await.ok()?.ok(),
    }
}

enum Target {
    Here(Arc<super::group::Group>),
    Peer { leader: NodeId, addr: String },
    Unknown,
}

/// The slot of `scope` and the group that owns it in `map`.
fn locate(map: &SlotMap, scope: &str) -> Result<(crate::slot::Slot, GroupId), Status> {
    map.locate(scope).ok_or_else(|| {
        Status::internal(format!(
            "this node's slot map (epoch {}) has no group for the scope's slot",
            map.epoch
        ))
    })
}

/// Waits for a proposal or read index until the call's deadline. A
/// proposal that times out may still apply: the caller retries with the
/// same idempotency key to learn its outcome.
async fn timeout<T>(limit: Duration, f: impl Future<Output = T>) -> Result<T, Status> {
    tokio::time::timeout(limit, f).await.map_err(|_| {
        Status::unavailable(
            "the group did not reach a quorum before the deadline; a mutating call may \
             have applied: retry it with the same idempotency key",
        )
    })
}

/// The slot map epoch the client routed by (`leasehold-epoch`), if
/// it sent one.
fn client_epoch(metadata: &MetadataMap) -> Result<Option<u64>, Status> {
    let Some(value) = metadata.get(EPOCH_HEADER) else {
        return Ok(None);
    };
    let parsed = value.to_str().ok().and_then(|v| v.parse().ok());
    parsed.map(Some).ok_or_else(|| {
        Status::from(EngineError::invalid(
            EPOCH_HEADER,
            "must be a decimal slot map epoch (0 to 2^64-1)",
        ))
    })
}

/// The client routed by a newer map than this node has: this node cannot
/// tell where the scope's slot lives now.
fn wrong_epoch(client: u64, ours: u64) -> Status {
    let detail = v1::ErrorDetail {
        code: "WRONG_EPOCH".into(),
        field: EPOCH_HEADER.into(),
        epoch: ours,
        ..Default::default()
    };
    error_status(
        Code::Unavailable,
        format!(
            "this node's slot map (epoch {ours}) is older than the caller's (epoch \
             {client}); send the call to another node"
        ),
        &detail,
    )
}

fn hops(metadata: &MetadataMap) -> u32 {
    metadata
        .get(HOPS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The caller's deadline from the `grpc-timeout` header
/// (`<digits><unit>`, unit one of H M S m u n).
fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let v = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A forwarded call that failed for routing reasons, not on its merits.
fn retryable(status: &Status) -> bool {
    match crate::convert::error_detail(status) {
        Some(d) => d.code == "NOT_LEADER",
        None => matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled
        ),
    }
}

fn not_leader(group: GroupId, leader: Option<(NodeId, String)>, epoch: u64) -> Status {
    let (leader_node_id, leader_address) = leader.clone().unwrap_or_default();
    let message = match &leader {
        Some((id, addr)) => {
            format!("this node does not lead group {group}; node {id} at {addr} does")
        }
        None => format!("group {group} has no reachable leader right now"),
    };
    let detail = v1::ErrorDetail {
        code: "NOT_LEADER".into(),
        field: String::new(),
        leader_node_id,
        leader_address,
        epoch,
    };
    error_status(Code::Unavailable, message, &detail)
}

/// An applied acquire as its reply, counted in the grant and denial metrics.
fn acquire_reply(applied: Applied) -> Result<v1::AcquireResponse, Status> {
    count_outcome(&applied);
    applied.try_into()
}

fn count_outcome(applied: &Applied) {
    if applied.replayed {
        return;
    }
    match &applied.outcome {
        Outcome::Granted(g) => {
            for u in &g.usage {
                metrics::counter!("leasehold_grants_total", "kind" => u.kind.as_str()).increment(1);
            }
        }
        Outcome::Denied(d) => {
            for u in &d.blocking {
                metrics::counter!("leasehold_denials_total", "kind" => u.kind.as_str())
                    .increment(1);
            }
        }
        _ => {}
    }
}

impl Api {
    /// One call of a session, served as its unary RPC would be.
    async fn serve_session_call(&self, call: v1::SessionCall) -> v1::SessionReply {
        let result = match self
            .session_call(call.call, call.timeout_ms, call.epoch)
            .await
        {
            Ok(result) => result,
            Err(status) => session_reply::Result::Status(v1::CallStatus {
                code: status.code() as i32,
                message: status.message().to_string(),
                details: status.details().to_vec(),
            }),
        };
        v1::SessionReply {
            call_id: call.call_id,
            result: Some(result),
        }
    }

    async fn session_call(
        &self,
        call: Option<session_call::Call>,
        timeout_ms: u64,
        epoch: u64,
    ) -> Result<session_reply::Result, Status> {
        // The unary RPC's metadata, from the call's fields.
        fn unary<T>(message: T, timeout_ms: u64, epoch: u64) -> Request<T> {
            let mut request = Request::new(message);
            if timeout_ms > 0 {
                request.set_timeout(Duration::from_millis(timeout_ms));
            }
            if epoch > 0 {
                request
                    .metadata_mut()
                    .insert(EPOCH_HEADER, tonic::metadata::MetadataValue::from(epoch));
            }
            request
        }
        use session_call::Call as C;
        use session_reply::Result as R;
        Ok(match call {
            Some(C::Acquire(r)) => R::Acquire(
                self.acquire(unary(r, timeout_ms, epoch))
                    .await?
                    .into_inner(),
            ),
            Some(C::Extend(r)) => {
                R::Extend(self.extend(unary(r, timeout_ms, epoch)).await?.into_inner())
            }
            Some(C::Release(r)) => R::Release(
                self.release(unary(r, timeout_ms, epoch))
                    .await?
                    .into_inner(),
            ),
            Some(C::Check(r)) => {
                R::Check(self.check(unary(r, timeout_ms, epoch)).await?.into_inner())
            }
            None => {
                return Err(EngineError::invalid(
                    "call",
                    "must be one of acquire, extend, release, check",
                )
                .into())
            }
        })
    }
}

#[tonic::async_trait]
impl Leasehold for Api {
    async fn acquire(
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
                let message = request.into_inner();
                // Malformed input fails before it waits.
                let acquire: engine::AcquireRequest =
                    message.clone().try_into().map_err(Status::from)?;
                engine::validate::acquire(&acquire).map_err(Status::from)?;
                let wait = Duration::from_millis(wait_ms);
                let served_by = ServedBy {
                    group_id,
                    leader_node_id: self.node.id,
                    epoch: map.epoch,
                    slot,
                };
                return self
                    .wait_here(group, served_by, message, acquire, wait)
                    .await;
            }
        }
        // Not the leader (or no wait): route as usual; a forwarded waiting
        // acquire waits on the leader.
        self.acquire_once(request).await
    }

    async fn extend(
        &self,
        request: Request<v1::ExtendRequest>,
    ) -> Result<Response<v1::ExtendResponse>, Status> {
        self.mutate(request, Command::Extend).await
    }

    async fn release(
        &self,
        request: Request<v1::ReleaseRequest>,
    ) -> Result<Response<v1::ReleaseResponse>, Status> {
        self.mutate(request, Command::Release).await
    }

    async fn check(
        &self,
        request: Request<v1::CheckRequest>,
    ) -> Result<Response<v1::CheckResponse>, Status> {
        self.serve(request, |r| {
            let args = CheckArgs::try_from(r.clone())?;
            Ok(Exec::Read(Box::new(move |engine, now| {
                let result = engine.check(
                    &args.scope,
                    &args.constraints,
                    args.amount,
                    args.min_amount,
                    now,
                )?;
                Ok(result.into())
            })))
        })
        .await
    }

    async fn inspect(
        &self,
        request: Request<v1::InspectRequest>,
    ) -> Result<Response<v1::InspectResponse>, Status> {
        let turns = self.turns.clone();
        self.serve(request, move |r| {
            let args = InspectArgs::try_from(r.clone())?;
            let turns = turns.clone();
            Ok(Exec::Read(Box::new(move |engine, now| {
                let mut reply: v1::InspectResponse = engine
                    .inspect(&args.scope, args.kind, &args.key, now)?
                    .into();
                // Waiters park on the leader, which is who reads here.
                let name = queue_name(&args.scope, args.kind.as_str(), &args.key);
                reply.waiters = u32::try_from(turns.waiters(&name)).unwrap_or(u32::MAX);
                Ok(reply)
            })))
        })
        .await
    }

    async fn admin_key(
        &self,
        request: Request<v1::AdminKeyRequest>,
    ) -> Result<Response<v1::AdminKeyResponse>, Status> {
        self.serve(request, |r| {
            let cmd = Command::Admin(r.clone().try_into()?);
            Self::write::<v1::AdminKeyRequest>(cmd, |a| a.try_into())
        })
        .await
    }

    async fn set_capacity(
        &self,
        request: Request<v1::SetCapacityRequest>,
    ) -> Result<Response<v1::CapacityResponse>, Status> {
        self.mutate(request, Command::SetCapacity).await
    }

    async fn adjust_capacity(
        &self,
        request: Request<v1::AdjustCapacityRequest>,
    ) -> Result<Response<v1::CapacityResponse>, Status> {
        self.mutate(request, Command::AdjustCapacity).await
    }

    type SessionStream = Replies<v1::SessionReply>;

    async fn session(
        &self,
        request: Request<tonic::Streaming<v1::SessionCall>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        if self.node.is_stopping() {
            return Err(Status::unavailable("this node is stopping"));
        }
        let api = self.clone();
        let replies = mux::serve(
            request.into_inner(),
            self.closing.clone(),
            SESSION_IN_FLIGHT_MAX,
            move |call| {
                let api = api.clone();
                async move { api.serve_session_call(call).await }
            },
        );
        Ok(Response::new(replies))
    }

    async fn get_slot_map(
        &self,
        _request: Request<v1::GetSlotMapRequest>,
    ) -> Result<Response<v1::SlotMap>, Status> {
        let map = self.node.slot_map();
        if !map.is_initialized() {
            return Err(Status::unavailable("this node has no slot map yet"));
        }
        let groups = map
            .groups
            .iter()
            .map(|(&id, p)| {
                // A replica's own view is fresher than the recorded hint.
                let (leader, term) = match self.node.group(id).map(|g| g.leader()) {
                    Some((Some(leader), term)) => (leader, term),
                    _ => (p.leader, p.leader_term),
                };
                v1::Group {
                    group_id: id,
                    replica_node_ids: p.replicas.clone(),
                    leader_node_id: leader,
                    leader_term: term,
                    slot_count: map.slots_of(id),
                }
            })
            .collect();
        let slot_ranges = map
            .ranges
            .iter()
            .map(|r| v1::SlotRange {
                first_slot: r.first,
                last_slot: r.last,
                group_id: r.group,
            })
            .collect();
        let nodes = map
            .nodes
            .iter()
            .map(|(id, addr)| v1::Node {
                node_id: *id,
                grpc_address: addr.clone(),
            })
            .collect();
        Ok(Response::new(v1::SlotMap {
            epoch: map.epoch,
            slot_count: map.slot_count,
            hash_function: crate::slot::HASH_FUNCTION.into(),
            slot_ranges,
            groups,
            nodes,
        }))
    }
}
