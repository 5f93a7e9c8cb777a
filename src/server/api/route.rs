//! Routing: the scope's slot, the group that owns it, and where that
//! group's leader is; the call executes here when this node leads the
//! group, or is forwarded to the leader (one hop at most).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use super::{acquire_reply, Api};
use crate::engine::{self, Applied, Command, Engine, EngineError, MemStore};
use crate::proto::v1::leasehold_client::LeaseholdClient;
use crate::proto::v1::{self, ServedBy};
use crate::raft::{GroupId, NodeId, SlotMap};
use crate::server::group::{Group, ProposeError};
use crate::wire;

/// How long a call may wait for its group to have a reachable leader,
/// unless the caller's own deadline is shorter.
pub(super) const ROUTE_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause between routing attempts while leadership settles.
const ROUTE_RETRY: Duration = Duration::from_millis(25);

type Forwarded<R> = Pin<Box<dyn Future<Output = Result<Response<R>, Status>> + Send>>;

/// What one RPC needs for routing: its scope, and how to forward it.
pub(super) trait Call: Clone + Send + Sync + 'static {
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
    /// Sets how long the call may wait; only a call that waits has one.
    fn set_wait(&mut self, _wait: Duration) {}
    /// Parks a call that waits on `group`, which this node leads: the
    /// answer once it is granted or out of time. `None` for calls that
    /// never wait.
    fn park(
        _api: &Api,
        _group: Arc<Group>,
        _served_by: ServedBy,
        _message: Self,
        _deadline: Deadline,
    ) -> Option<Forwarded<Self::Reply>> {
        None
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
            fn set_wait(&mut self, wait: Duration) {
                if self.$wait.is_some() {
                    self.$wait = Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
                }
            }
            fn park(
                api: &Api,
                group: Arc<Group>,
                served_by: ServedBy,
                message: Self,
                deadline: Deadline,
            ) -> Option<Forwarded<$reply>> {
                let api = api.clone();
                Some(Box::pin(async move {
                    api.park(group, served_by, message, deadline).await
                }))
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

/// How a call executes on the leader.
pub(super) enum Exec<R> {
    /// Through Raft; `Writer` turns the outcome into the reply.
    Write(Command, Writer<R>),
    /// Against the state at a read index (linearizable).
    Read(Reader<R>),
}

impl Api {
    /// A mutating call whose request converts to its command as is and
    /// whose reply is the applied outcome.
    pub(super) async fn mutate<C, R>(
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
    pub(super) async fn acquire_once(
        &self,
        request: Request<v1::AcquireRequest>,
    ) -> Result<Response<v1::AcquireResponse>, Status> {
        self.serve(request, |r| {
            let cmd = Command::Acquire(r.clone().try_into()?);
            Self::write::<v1::AcquireRequest>(cmd, acquire_reply)
        })
        .await
    }

    pub(super) async fn serve<C: Call>(
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
        // Shed at once rather than queue: a caller told to come back later
        // can go elsewhere or slow down; one left waiting only adds load.
        let Ok(in_flight) = Arc::clone(&self.calls).try_acquire_owned() else {
            metrics::counter!("leasehold_overloaded_total", "reason" => "calls").increment(1);
            return Err(wire::overloaded(
                format!(
                    "node {} is serving as many calls as it takes ({}): retry later",
                    self.node.id, self.node.config.max_in_flight_calls
                ),
                super::OVERLOAD_RETRY_AFTER,
            ));
        };
        let hops = hops(request.metadata());
        if let Some(epoch) = client_epoch(request.metadata())? {
            if epoch > map.epoch {
                return Err(wire::wrong_epoch(epoch, map.epoch));
            }
        }
        // A waiting acquire may take its wait on top of the routing time.
        let wait_until = Instant::now() + request.get_ref().wait();
        let deadline = Deadline::of(request.metadata(), ROUTE_TIMEOUT + request.get_ref().wait());
        let mut message = request.into_inner();
        // Malformed input fails here, before any routing or proposal.
        let exec = exec(&message).map_err(Status::from)?;
        let (slot, group_id) = locate(&map, message.scope())?;
        loop {
            match self.target(&map, group_id, deadline.at).await {
                Target::Here(group) => {
                    let served_by = ServedBy {
                        group_id,
                        leader_node_id: self.node.id,
                        epoch: map.epoch,
                        slot,
                    };
                    // This node came to lead the group while the call
                    // looked for a leader: a waiter parks here, with what
                    // is left of its wait.
                    message.set_wait(wait_until.saturating_duration_since(Instant::now()));
                    if !message.wait().is_zero() {
                        let parked = C::park(
                            self,
                            Arc::clone(&group),
                            served_by,
                            message.clone(),
                            deadline,
                        );
                        if let Some(parked) = parked {
                            // Parked acquires have bounds of their own.
                            drop(in_flight);
                            return parked.await;
                        }
                    }
                    if let Some(answer) = execute::<C>(&group, &exec, served_by, deadline).await? {
                        return Ok(Response::new(answer));
                    }
                }
                Target::Peer { leader, .. } if hops == 0 => {
                    // A waiter re-routed after a leader change waits only
                    // what is left of its wait.
                    message.set_wait(wait_until.saturating_duration_since(Instant::now()));
                    let forwarded = self.forward(&message, leader, hops, deadline).await;
                    if let Some(answer) = forwarded? {
                        return Ok(answer);
                    }
                }
                Target::Peer { leader, addr } => {
                    return Err(wire::not_leader(group_id, Some((leader, addr)), map.epoch))
                }
                Target::Unknown => {}
            }
            if deadline.passed() {
                return Err(if deadline.callers {
                    deadline.exceeded()
                } else {
                    wire::not_leader(group_id, None, map.epoch)
                });
            }
            tokio::time::sleep(ROUTE_RETRY).await;
        }
    }

    /// Relays `message` to `leader`'s peer port, once: its answer, or
    /// `None` when the peer cannot serve it (it lost leadership or is
    /// gone) and the caller should look for the leader again.
    async fn forward<C: Call>(
        &self,
        message: &C,
        leader: NodeId,
        hops: u32,
        deadline: Deadline,
    ) -> Result<Option<Response<C::Reply>>, Status> {
        // Over the peer port: there members take each other's calls as
        // already authorized, and nobody else can reach it (mutual TLS).
        let peer_addr = self
            .node
            .peers
            .peer_addr(leader)
            .ok_or_else(|| Status::unavailable(format!("node {leader} is not a member")))?;
        let channel = self
            .node
            .peers
            .channel(peer_addr)
            .map_err(|e| Status::unavailable(format!("node {leader} at {peer_addr}: {e}")))?;
        let mut forwarded = Request::new(message.clone());
        forwarded.metadata_mut().insert(
            wire::HOPS_HEADER,
            tonic::metadata::MetadataValue::from(hops + 1),
        );
        forwarded.set_timeout(deadline.remaining());
        match C::forward(LeaseholdClient::new(channel), forwarded).await {
            Ok(r) => Ok(Some(r)),
            Err(s) if retryable(&s) => {
                tracing::debug!(leader, status = %s, "forward failed");
                Ok(None)
            }
            Err(s) => Err(s),
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

    pub(super) fn write<C: Call>(
        cmd: Command,
        reply: impl Fn(Applied) -> Result<C::Reply, Status> + Send + Sync + 'static,
    ) -> Result<Exec<C::Reply>, EngineError> {
        engine::validate::command(&cmd)?;
        Ok(Exec::Write(cmd, Box::new(reply)))
    }
}

/// Executes a call on `group`, led here, by `deadline`: its reply, or
/// `None` when leadership moved mid-call and the caller should look for the
/// leader again (a write may have applied: the retry through the new leader
/// replays it by its idempotency key).
async fn execute<C: Call>(
    group: &Group,
    exec: &Exec<C::Reply>,
    served_by: ServedBy,
    deadline: Deadline,
) -> Result<Option<C::Reply>, Status> {
    let mut reply = match exec {
        Exec::Write(cmd, reply) => match deadline.bound(group.propose(cmd.clone())).await? {
            Ok(Ok(applied)) => reply(applied)?,
            Ok(Err(e)) => return Err(e.into()),
            Err(ProposeError::NotLeader(_)) => return Ok(None),
            Err(ProposeError::Stopped(why) | ProposeError::Unsynchronized(why)) => {
                return Err(Status::unavailable(why))
            }
            Err(ProposeError::Overloaded(why)) => {
                return Err(wire::overloaded(why, super::OVERLOAD_RETRY_AFTER))
            }
        },
        Exec::Read(read) => match deadline.bound(group.raft.ensure_linearizable()).await? {
            Ok(_) => {
                let now = group
                    .clock
                    .stamp_ms()
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                group.engine.read(|e| read(e, now))?
            }
            Err(e) => {
                tracing::debug!(error = %e, "read index refused");
                return Ok(None);
            }
        },
    };
    C::served(&mut reply, served_by);
    Ok(Some(reply))
}

enum Target {
    Here(Arc<Group>),
    Peer { leader: NodeId, addr: String },
    Unknown,
}

/// The slot of `scope` and the group that owns it in `map`.
pub(super) fn locate(map: &SlotMap, scope: &str) -> Result<(crate::slot::Slot, GroupId), Status> {
    map.locate(scope).ok_or_else(|| {
        Status::internal(format!(
            "this node's slot map (epoch {}) has no group for the scope's slot",
            map.epoch
        ))
    })
}

/// When a call must be answered, and whether that is the caller's own
/// deadline (its `grpc-timeout`) or only how long this node may look for a
/// leader and wait for a quorum.
#[derive(Clone, Copy, Debug)]
pub(super) struct Deadline {
    pub at: Instant,
    /// The caller's: once it passes, the answer is DEADLINE_EXCEEDED.
    pub callers: bool,
}

impl Deadline {
    /// The caller's deadline if it set one within `budget`, else `budget`
    /// from now.
    pub fn of(metadata: &MetadataMap, budget: Duration) -> Deadline {
        match grpc_timeout(metadata) {
            Some(timeout) if timeout <= budget => Deadline {
                at: Instant::now() + timeout,
                callers: true,
            },
            _ => Deadline {
                at: Instant::now() + budget,
                callers: false,
            },
        }
    }

    pub fn passed(&self) -> bool {
        Instant::now() >= self.at
    }

    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// The answer once the caller's deadline has passed.
    pub fn exceeded(&self) -> Status {
        Status::deadline_exceeded(
            "the call's deadline passed before it was answered; a mutating call may have \
             applied: retry it with the same idempotency key",
        )
    }

    /// `f`'s output, unless the deadline passes first: then
    /// DEADLINE_EXCEEDED if it is the caller's, else UNAVAILABLE. A
    /// proposal cut off this way may still apply: the caller retries with
    /// the same idempotency key to learn its outcome.
    pub async fn bound<T>(&self, f: impl Future<Output = T>) -> Result<T, Status> {
        let at = tokio::time::Instant::from_std(self.at);
        tokio::time::timeout_at(at, f).await.map_err(|_| {
            if self.callers {
                self.exceeded()
            } else {
                Status::unavailable(
                    "the group did not reach a quorum in time; a mutating call may have \
                     applied: retry it with the same idempotency key",
                )
            }
        })
    }
}

/// The slot map epoch the client routed by (`leasehold-epoch`), if
/// it sent one.
fn client_epoch(metadata: &MetadataMap) -> Result<Option<u64>, Status> {
    let Some(value) = metadata.get(wire::EPOCH_HEADER) else {
        return Ok(None);
    };
    let parsed = value.to_str().ok().and_then(|v| v.parse().ok());
    parsed.map(Some).ok_or_else(|| {
        Status::from(EngineError::invalid(
            wire::EPOCH_HEADER,
            "must be a decimal slot map epoch (0 to 2^64-1)",
        ))
    })
}

fn hops(metadata: &MetadataMap) -> u32 {
    metadata
        .get(wire::HOPS_HEADER)
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
    match wire::error_detail(status) {
        Some(d) => d.code == wire::Redirect::NotLeader.as_str(),
        None => matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled
        ),
    }
}
