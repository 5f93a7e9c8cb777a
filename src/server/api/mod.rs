//! The public `leasehold.v1` service. The impl of the service only
//! delegates:
//!
//! - [`route`]: locate the scope's group and its leader; execute the call
//!   here or forward it (one hop at most).
//! - [`waiting`]: acquires that wait for capacity on the leader, in turns.
//! - [`session`]: many calls over one `Session` stream.
//! - [`scope_waiters`]: the per-scope quota of parked acquires.

mod route;
mod scope_waiters;
mod session;
mod waiting;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tonic::{Request, Response, Status};

use super::node::Node;
use super::security::Auth;
use super::turns::Turns;
use crate::auth::{Principal, Right};
use crate::convert::{CheckArgs, InspectArgs};
use crate::engine::{Applied, Command, Outcome};
use crate::limits::{SESSION_IN_FLIGHT_MAX, WAITERS_MAX, WAITER_BYTES_MAX};
use crate::mux::{self, Replies};
use crate::proto::v1;
use crate::proto::v1::leasehold_server::Leasehold;
use route::Exec;

/// What an OVERLOADED refusal asks its caller to wait before retrying.
const OVERLOAD_RETRY_AFTER: Duration = Duration::from_millis(50);

#[derive(Clone)]
pub struct Api {
    node: Arc<Node>,
    /// Parked acquires per scope (`max_waiters_per_scope`).
    scope_waiters: scope_waiters::ScopeWaiters,
    /// Slots for client calls served at once on this node
    /// (`max_in_flight_calls`).
    calls: Arc<Semaphore>,
    /// Turns true when the server stops: open sessions end, so the
    /// graceful shutdown does not wait on them.
    closing: watch::Receiver<bool>,
    /// Slots for parked acquires on this node.
    waiters: Arc<Semaphore>,
    /// Bytes parked acquires may keep on this node.
    waiter_bytes: Arc<Semaphore>,
    /// Whose turn it is to retry, per first constraint key with waiters.
    turns: Turns,
    /// The tokens calls must carry; `None` where every call is allowed:
    /// on a node without a tokens file, and on the peer port, where calls
    /// were authorized by the member that forwards them.
    auth: Option<Arc<Auth>>,
}

impl Api {
    pub fn new(node: Arc<Node>, closing: watch::Receiver<bool>, auth: Option<Arc<Auth>>) -> Api {
        let calls = node.config.max_in_flight_calls as usize;
        Api {
            scope_waiters: scope_waiters::ScopeWaiters::new(node.config.max_waiters_per_scope),
            node,
            calls: Arc::new(Semaphore::new(calls)),
            closing,
            waiters: Arc::new(Semaphore::new(WAITERS_MAX)),
            waiter_bytes: Arc::new(Semaphore::new(WAITER_BYTES_MAX)),
            turns: Turns::default(),
            auth,
        }
    }

    /// The same service for calls other members forward: no token asked,
    /// the same bounds and waiting turns.
    pub fn for_members(&self) -> Api {
        Api {
            auth: None,
            ..self.clone()
        }
    }

    /// Whom the call comes from: the session's caller when it came over a
    /// session, else its own token's. `None` when no token is asked.
    fn principal<T>(&self, request: &Request<T>) -> Result<Option<Arc<Principal>>, Status> {
        let Some(auth) = &self.auth else {
            return Ok(None);
        };
        if let Some(principal) = request.extensions().get::<Arc<Principal>>() {
            return Ok(Some(Arc::clone(principal)));
        }
        auth.authenticate(request.metadata()).map(Some)
    }

    /// Ok when the call's caller holds `right` on its scope: checked before
    /// anything is routed, parked or proposed.
    fn allow<C: route::Call>(&self, request: &Request<C>, right: Right) -> Result<(), Status> {
        match self.principal(request)? {
            Some(p) => p
                .authorize(right, request.get_ref().scope(), C::NAME)
                .inspect_err(|_| denied()),
            None => Ok(()),
        }
    }

    /// Ok when the call's caller holds the `cluster` right.
    fn allow_cluster<T>(&self, request: &Request<T>, what: &str) -> Result<(), Status> {
        match self.principal(request)? {
            Some(p) => p.authorize_cluster(what).inspect_err(|_| denied()),
            None => Ok(()),
        }
    }

    /// This node's view of every group it hosts.
    fn node_digest(&self) -> v1::NodeDigest {
        let groups = self.node.groups().into_iter().map(|g| {
            let (last_applied, (digest, leases)) = g
                .engine
                .read_with_position(|e| (e.store().digest(), e.store().lease_count() as u64));
            let (leader, term) = g.leader();
            v1::GroupDigest {
                group_id: g.id,
                last_applied_index: last_applied.map_or(0, |l| l.index),
                last_applied_term: last_applied.map_or(0, |l| l.leader_id.term),
                state_digest: digest,
                leases,
                leader_node_id: leader.unwrap_or(0),
                term,
            }
        });
        v1::NodeDigest {
            node_id: self.node.id,
            groups: groups.collect(),
        }
    }

    /// The slot map as this node knows it, each group's leader as fresh as
    /// this node's own view of it.
    fn slot_map_reply(&self) -> Result<v1::SlotMap, Status> {
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
        Ok(v1::SlotMap {
            epoch: map.epoch,
            slot_count: map.slot_count,
            hash_function: crate::slot::HASH_FUNCTION.into(),
            slot_ranges,
            groups,
            nodes,
        })
    }
}

fn denied() {
    metrics::counter!("leasehold_auth_refusals_total", "reason" => "permission_denied")
        .increment(1);
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

#[tonic::async_trait]
impl Leasehold for Api {
    async fn acquire(
        &self,
        request: Request<v1::AcquireRequest>,
    ) -> Result<Response<v1::AcquireResponse>, Status> {
        self.allow(&request, Right::Lease)?;
        self.acquire_call(request).await
    }

    async fn extend(
        &self,
        request: Request<v1::ExtendRequest>,
    ) -> Result<Response<v1::ExtendResponse>, Status> {
        self.allow(&request, Right::Lease)?;
        self.mutate(request, Command::Extend).await
    }

    async fn release(
        &self,
        request: Request<v1::ReleaseRequest>,
    ) -> Result<Response<v1::ReleaseResponse>, Status> {
        self.allow(&request, Right::Lease)?;
        self.mutate(request, Command::Release).await
    }

    async fn check(
        &self,
        request: Request<v1::CheckRequest>,
    ) -> Result<Response<v1::CheckResponse>, Status> {
        self.allow(&request, Right::Lease)?;
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
        self.allow(&request, Right::Inspect)?;
        let turns = self.turns.clone();
        self.serve(request, move |r| {
            let args = InspectArgs::try_from(r.clone())?;
            let turns = turns.clone();
            Ok(Exec::Read(Box::new(move |engine, now| {
                let mut reply: v1::InspectResponse = engine
                    .inspect(&args.scope, args.kind, &args.key, now)?
                    .into();
                // Waiters park on the leader, which is who reads here.
                let name = waiting::queue_name(&args.scope, args.kind.as_str(), &args.key);
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
        self.allow(&request, Right::Admin)?;
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
        self.allow(&request, Right::Capacity)?;
        self.mutate(request, Command::SetCapacity).await
    }

    async fn adjust_capacity(
        &self,
        request: Request<v1::AdjustCapacityRequest>,
    ) -> Result<Response<v1::CapacityResponse>, Status> {
        self.allow(&request, Right::Capacity)?;
        self.mutate(request, Command::AdjustCapacity).await
    }

    type SessionStream = Replies<v1::SessionReply>;

    async fn session(
        &self,
        request: Request<tonic::Streaming<v1::SessionCall>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        // Each call of the session is authorized on its own, as the
        // caller who opened it.
        let principal = self.principal(&request)?;
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
                let principal = principal.clone();
                async move { api.serve_session_call(call, principal).await }
            },
        );
        Ok(Response::new(replies))
    }

    async fn get_slot_map(
        &self,
        request: Request<v1::GetSlotMapRequest>,
    ) -> Result<Response<v1::SlotMap>, Status> {
        // Any caller with a token may learn where to send its calls.
        self.principal(&request)?;
        self.slot_map_reply().map(Response::new)
    }

    async fn get_node_digest(
        &self,
        request: Request<v1::GetNodeDigestRequest>,
    ) -> Result<Response<v1::NodeDigest>, Status> {
        self.allow_cluster(&request, "GetNodeDigest")?;
        Ok(Response::new(self.node_digest()))
    }
}
