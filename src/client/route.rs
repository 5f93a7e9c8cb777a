//! Where a call goes: the cached slot map, one channel and one
//! session stream per node, and the classification of failures into
//! retryable and final.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::mux::{Mux, MuxError, Tagged};
use crate::proto::v1::leasehold_client::LeaseholdClient;
use crate::proto::v1::{self, session_call, session_reply, GetSlotMapRequest, ServedBy};
use crate::slot::{owner, slot_of, SlotRange};
use crate::wire::{self, error_detail, Redirect};

impl Tagged for v1::SessionReply {
    fn call_id(&self) -> u64 {
        self.call_id
    }
}

/// HTTP/2 keep-alive: ping interval, and how long a ping may go
/// unanswered.
const KEEP_ALIVE: Duration = Duration::from_secs(5);

type Unary<R> = Pin<Box<dyn Future<Output = Result<R, Status>> + Send>>;

/// Requests a session stream can carry.
pub trait Streamable: Sized + Send + 'static {
    type Reply;
    fn into_call(self) -> session_call::Call;
    fn from_reply(result: session_reply::Result) -> Option<Self::Reply>;
    /// The same call as a unary RPC.
    fn unary(client: LeaseholdClient<Channel>, request: tonic::Request<Self>)
        -> Unary<Self::Reply>;
}

macro_rules! streamable {
    ($($req:ty => $reply:ty, $variant:ident, $method:ident;)*) => {$(
        impl Streamable for $req {
            type Reply = $reply;
            fn into_call(self) -> session_call::Call {
                session_call::Call::$variant(self)
            }
            fn from_reply(result: session_reply::Result) -> Option<$reply> {
                match result {
                    session_reply::Result::$variant(reply) => Some(reply),
                    _ => None,
                }
            }
            fn unary(
                mut client: LeaseholdClient<Channel>,
                request: tonic::Request<Self>,
            ) -> Unary<$reply> {
                Box::pin(async move { Ok(client.$method(request).await?.into_inner()) })
            }
        }
    )*};
}
streamable!(
    v1::AcquireRequest => v1::AcquireResponse, Acquire, acquire;
    v1::ExtendRequest => v1::ExtendResponse, Extend, extend;
    v1::ReleaseRequest => v1::ReleaseResponse, Release, release;
    v1::CheckRequest => v1::CheckResponse, Check, check;
);

/// Calls to one node over one `Session` stream, opened on first use and
/// again after it breaks; any number of calls at once. The stream's
/// channel should have HTTP/2 keep-alive on, so a stream to a node that
/// went silent breaks rather than holding calls until they time out.
pub struct SessionChannel {
    mux: Mux<v1::SessionCall, v1::SessionReply>,
}

impl SessionChannel {
    /// Sessions over `channel`, each opened with `token` (see
    /// [`bearer`]) when given: its calls act as the token's holder.
    pub fn new(channel: Channel, token: Option<Token>) -> SessionChannel {
        let client = LeaseholdClient::new(channel);
        SessionChannel {
            mux: Mux::new(move |calls| {
                let mut client = client.clone();
                let mut request = tonic::Request::new(calls);
                with_token(&mut request, token.as_ref());
                Box::pin(async move { Ok(client.session(request).await?.into_inner()) })
            }),
        }
    }

    /// One call, as its unary RPC with `timeout` as its deadline and
    /// `epoch` (when not 0) as the map epoch it was routed by. A call left
    /// unanswered (timed out, stream broken) fails as UNAVAILABLE or
    /// DEADLINE_EXCEEDED and may have applied, as a unary RPC's may.
    pub async fn call<T: Streamable>(
        &self,
        message: T,
        timeout: Duration,
        epoch: u64,
    ) -> Result<T::Reply, Status> {
        let call = message.into_call();
        let make = |call_id| v1::SessionCall {
            call_id,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            epoch,
            call: Some(call),
        };
        let reply = self.mux.call(make, timeout).await.map_err(|e| match e {
            MuxError::Unreachable(why) => Status::unavailable(why),
            MuxError::Ended(why) => Status::unavailable(format!("session: {why}")),
            MuxError::TimedOut(after) => {
                Status::deadline_exceeded(format!("no reply within {after:?}"))
            }
        })?;
        match reply.result {
            Some(session_reply::Result::Status(s)) => Err(Status::with_details(
                Code::from(s.code),
                s.message,
                s.details.into(),
            )),
            Some(result) => T::from_reply(result).ok_or_else(|| {
                Status::internal("the node answered a session call with another call's reply")
            }),
            None => Err(Status::internal(
                "the node answered a session call with no result",
            )),
        }
    }
}

/// A bearer token as call metadata.
pub type Token = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;

/// `token` as the `authorization` metadata value, `Bearer <token>`.
pub fn bearer(token: &str) -> Result<Token, Status> {
    format!("Bearer {token}")
        .parse()
        .map_err(|_| Status::invalid_argument("token: must be printable ASCII"))
}

/// Adds `token`, if any, to `request`'s metadata.
pub fn with_token<T>(request: &mut tonic::Request<T>, token: Option<&Token>) {
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert(crate::auth::AUTHORIZATION, token.clone());
    }
}

/// Where one attempt goes: a node's channel and, if the client streams,
/// its session; with the attempt's deadline, map epoch and token.
pub struct Conn {
    channel: Channel,
    token: Option<Token>,
    session: Option<Arc<SessionChannel>>,
    timeout: Duration,
    epoch: u64,
}

impl Conn {
    /// A unary RPC's client and request, carrying the attempt's deadline
    /// and epoch.
    pub fn unary<T>(&self, message: T) -> (LeaseholdClient<Channel>, tonic::Request<T>) {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        request.metadata_mut().insert(
            crate::wire::EPOCH_HEADER,
            tonic::metadata::MetadataValue::from(self.epoch),
        );
        with_token(&mut request, self.token.as_ref());
        (LeaseholdClient::new(self.channel.clone()), request)
    }

    /// The call over the node's session stream, or as a unary RPC when the
    /// client does not stream.
    pub async fn call<T: Streamable>(self, message: T) -> Result<T::Reply, Status> {
        match &self.session {
            Some(session) => session.call(message, self.timeout, self.epoch).await,
            None => {
                let (client, request) = self.unary(message);
                T::unary(client, request).await
            }
        }
    }
}

/// Replies that say who served them.
pub trait Served {
    fn served_by(&self) -> Option<&ServedBy>;
}

macro_rules! served {
    ($($t:ty),*) => {$(
        impl Served for $t {
            fn served_by(&self) -> Option<&ServedBy> {
                self.served_by.as_ref()
            }
        }
    )*};
}
served!(
    v1::AcquireResponse,
    v1::ExtendResponse,
    v1::ReleaseResponse,
    v1::CheckResponse,
    v1::InspectResponse,
    v1::CapacityResponse,
    v1::AdminKeyResponse
);

pub enum Failure {
    /// A routing or transport failure: retry (same idempotency key).
    Retry(Status),
    /// The call's own answer (invalid argument, lease lost, ...).
    Final(Status),
}

#[derive(Default)]
struct Map {
    epoch: u64,
    slot_count: u32,
    ranges: Vec<SlotRange>,
    /// Where to send each group's calls.
    groups: HashMap<u32, GroupRoute>,
    /// Node id → address.
    nodes: HashMap<u64, String>,
}

struct GroupRoute {
    /// The leader's address, when known.
    leader: Option<String>,
    /// A replica's address, for when the leader is not known: it answers
    /// NOT_LEADER with a hint, or forwards.
    replica: Option<String>,
}

pub struct Router {
    seeds: Vec<String>,
    /// TLS to every node; `None`: plaintext.
    tls: Option<tonic::transport::ClientTlsConfig>,
    token: Option<Token>,
    attempt_timeout: Duration,
    /// Whether calls that can go over a node's session stream do.
    streaming: bool,
    map: Mutex<Map>,
    channels: Mutex<HashMap<String, Channel>>,
    sessions: Mutex<HashMap<String, Arc<SessionChannel>>>,
}

impl Router {
    pub fn new(
        seeds: Vec<String>,
        attempt_timeout: Duration,
        streaming: bool,
        tls: Option<tonic::transport::ClientTlsConfig>,
        token: Option<Token>,
    ) -> Router {
        Router {
            seeds,
            tls,
            token,
            attempt_timeout,
            streaming,
            map: Mutex::new(Map::default()),
            channels: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// The session stream to the node at `addr`, shared by every call.
    fn session(&self, addr: &str, channel: &Channel) -> Arc<SessionChannel> {
        let mut sessions = self.sessions.lock().expect("session table");
        let session = sessions
            .entry(addr.to_string())
            .or_insert_with(|| Arc::new(SessionChannel::new(channel.clone(), self.token.clone())));
        Arc::clone(session)
    }

    fn channel(&self, addr: &str) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().expect("channel table");
        if let Some(ch) = channels.get(addr) {
            return Ok(ch.clone());
        }
        let ch = crate::tls::endpoint(addr, self.tls.as_ref())
            .map_err(|e| Status::invalid_argument(format!("node address {addr}: {e}")))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            // A node gone silent (paused, cut off) breaks the connection
            // and its session, rather than holding calls until each times
            // out.
            .http2_keep_alive_interval(KEEP_ALIVE)
            .keep_alive_timeout(KEEP_ALIVE)
            .connect_lazy();
        channels.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// Fetches the slot map from any known node (seeds first).
    pub async fn refresh(&self) -> Result<v1::SlotMap, Status> {
        let mut candidates = self.seeds.clone();
        {
            let map = self.map.lock().expect("map");
            for addr in map.nodes.values() {
                if !candidates.contains(addr) {
                    candidates.push(addr.clone());
                }
            }
        }
        let mut last = Status::unavailable("no node was tried");
        for addr in candidates {
            let mut client = LeaseholdClient::new(self.channel(&addr)?);
            let mut request = tonic::Request::new(GetSlotMapRequest {});
            request.set_timeout(self.attempt_timeout);
            with_token(&mut request, self.token.as_ref());
            match client.get_slot_map(request).await {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    self.install(&reply);
                    return Ok(reply);
                }
                Err(status) => last = status,
            }
        }
        Err(Status::unavailable(format!(
            "no node gave a slot map; last error: {}",
            last.message()
        )))
    }

    fn install(&self, fresh: &v1::SlotMap) {
        let mut map = self.map.lock().expect("map");
        if fresh.epoch < map.epoch || fresh.slot_count == 0 {
            return;
        }
        let nodes: HashMap<u64, String> = fresh
            .nodes
            .iter()
            .map(|n| (n.node_id, n.grpc_address.clone()))
            .collect();
        let groups = fresh
            .groups
            .iter()
            .map(|g| {
                let route = GroupRoute {
                    leader: nodes.get(&g.leader_node_id).cloned(),
                    replica: g
                        .replica_node_ids
                        .first()
                        .and_then(|id| nodes.get(id).cloned()),
                };
                (g.group_id, route)
            })
            .collect();
        *map = Map {
            epoch: fresh.epoch,
            slot_count: fresh.slot_count,
            ranges: fresh.slot_ranges.iter().map(SlotRange::from).collect(),
            groups,
            nodes,
        };
    }

    /// The group of `scope` and where to send it: its leader if known,
    /// else one of its replicas (which forwards), else a seed.
    fn target(&self, scope: &str) -> Option<(u32, String, u64)> {
        let map = self.map.lock().expect("map");
        if map.slot_count == 0 {
            return None;
        }
        let group = owner(&map.ranges, slot_of(scope, map.slot_count))?;
        let route = map.groups.get(&group);
        let addr = route
            .and_then(|r| r.leader.clone().or_else(|| r.replica.clone()))
            .or_else(|| self.seeds.first().cloned())?;
        Some((group, addr, map.epoch))
    }

    fn set_leader(&self, group: u32, leader: Option<String>) {
        let mut map = self.map.lock().expect("map");
        if let Some(route) = map.groups.get_mut(&group) {
            route.leader = leader;
        }
    }

    fn learn(&self, group: u32, served_by: &ServedBy) {
        let addr = {
            let map = self.map.lock().expect("map");
            if served_by.epoch > map.epoch {
                None
            } else {
                map.nodes.get(&served_by.leader_node_id).cloned()
            }
        };
        match addr {
            Some(addr) => self.set_leader(group, Some(addr)),
            // A newer map exists: the next call refreshes it.
            None => self.set_leader(group, None),
        }
    }

    /// One attempt at a call.
    pub async fn attempt<Req, Resp, F, Fut>(
        &self,
        scope: &str,
        request: Req,
        send: &F,
        deadline: Instant,
        wait: Duration,
    ) -> Result<Resp, Failure>
    where
        Resp: Served,
        F: Fn(Conn, Req) -> Fut,
        Fut: Future<Output = Result<Resp, Status>>,
    {
        let Some((group, addr, epoch)) = self.target(scope) else {
            self.refresh().await.map_err(Failure::Retry)?;
            return Err(Failure::Retry(Status::unavailable("fetched the slot map")));
        };
        let channel = self.channel(&addr).map_err(Failure::Final)?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let conn = Conn {
            session: self.streaming.then(|| self.session(&addr, &channel)),
            channel,
            token: self.token.clone(),
            timeout: remaining.min(self.attempt_timeout + wait),
            epoch,
        };
        match send(conn, request).await {
            Ok(reply) => {
                if let Some(served_by) = reply.served_by() {
                    self.learn(group, served_by);
                    if served_by.epoch > epoch {
                        // Best effort: a failure here only means the next
                        // call refreshes again.
                        let _ = self.refresh().await;
                    }
                }
                Ok(reply)
            }
            Err(status) => Err(self.classify(group, status).await),
        }
    }

    async fn classify(&self, group: u32, status: Status) -> Failure {
        match Redirect::of(&status) {
            Some((Redirect::NotLeader, d)) => {
                let hint = (!d.leader_address.is_empty()).then(|| d.leader_address.clone());
                if hint.is_none() {
                    let _ = self.refresh().await;
                }
                self.set_leader(group, hint);
                Failure::Retry(status)
            }
            Some((Redirect::WrongEpoch, _)) => {
                self.set_leader(group, None);
                let _ = self.refresh().await;
                Failure::Retry(status)
            }
            // The node or group was full and applied nothing: retry after
            // its hint (the caller's loop waits at least that long).
            None if wire::overload_retry_after(&status).is_some() => Failure::Retry(status),
            // The call's own answer (a lease lost, an invalid argument).
            None if error_detail(&status).is_some() => Failure::Final(status),
            None => match status.code() {
                // The node is gone or overloaded, or the attempt timed out
                // (a mutating call may have applied: the retry replays it).
                Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled => {
                    self.set_leader(group, None);
                    let _ = self.refresh().await;
                    Failure::Retry(status)
                }
                _ => Failure::Final(status),
            },
        }
    }
}
