//! Raft transport: every group's RPCs to a peer share one HTTP/2 channel
//! (one connection per direction of a node pair), each call tagged with its
//! group. Appends and votes travel as messages of one long-lived stream
//! per peer, many in flight at once, answered out of order by call id: a
//! message costs one HTTP/2 frame each way where a unary call costs a
//! stream with headers and trailers. Snapshot chunks go as unary calls.
//! Payloads are openraft's messages, postcard-encoded.
//!
//! Openraft 0.9 follows every commit with an empty append to each idle
//! follower, only to carry the new commit index. With one entry in flight
//! per group, that is every entry: the next entry's append waits behind
//! it, so each entry cost two round trips to every follower. A group's
//! replication client answers such an append itself when it adds nothing
//! the follower has not just acknowledged ([`GroupNetwork::answers_here`]);
//! the follower learns the commit index from the next append, or from the
//! next heartbeat that goes out for real once the link has been quiet.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;
use tonic::transport::{Channel, ClientTlsConfig};
use tonic::Status;

use crate::config::Member;
use crate::mux::{Mux, MuxError, Tagged};
use crate::proto::peer::peer_client::PeerClient;
use crate::proto::peer::{RaftCall, RaftKind, RaftRequest, RaftResult};
use crate::raft::types::LogId;
use crate::raft::{GroupId, NodeId, TypeConfig};

/// How long a connection attempt to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// The pause before retrying a peer that could not be reached.
const UNREACHABLE_BACKOFF: Duration = Duration::from_millis(200);

/// Where each member listens, and one lazily connected channel per peer
/// port dialled, for the node-to-node API and for forwarded requests.
/// Channels reconnect by themselves after a failure.
pub struct Peers {
    /// The configured members by node id. They, not the addresses a
    /// group's membership recorded when it was created, say where a node
    /// listens now.
    members: BTreeMap<NodeId, Member>,
    dial: Arc<Dial>,
    links: Mutex<HashMap<String, Arc<RaftLink>>>,
}

/// How this node dials peer ports: mutual TLS with the settings in force
/// (`None`: plaintext), and the channel made for each port. When the
/// settings change (its peer certificate was re-read), channels made from
/// then on use the new ones; connections already open carry on.
struct Dial {
    state: Mutex<DialState>,
}

struct DialState {
    tls: watch::Receiver<Option<ClientTlsConfig>>,
    channels: HashMap<String, Channel>,
}

impl Dial {
    fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut state = self.state.lock().expect("peer channel table lock");
        let DialState { tls, channels } = &mut *state;
        if tls.has_changed().unwrap_or(false) {
            tls.borrow_and_update();
            channels.clear();
        }
        if let Some(ch) = channels.get(addr) {
            return Ok(ch.clone());
        }
        let config = tls.borrow().clone();
        let ch = crate::tls::endpoint(addr, config.as_ref())?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        channels.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }
}

impl Peers {
    /// `tls` says how to dial peer ports, now and after each change.
    pub fn new(members: &[Member], tls: watch::Receiver<Option<ClientTlsConfig>>) -> Peers {
        Peers {
            members: members.iter().map(|m| (m.node_id, m.clone())).collect(),
            dial: Arc::new(Dial {
                state: Mutex::new(DialState {
                    tls,
                    channels: HashMap::new(),
                }),
            }),
            links: Mutex::default(),
        }
    }

    /// Node `id`'s client address: what clients are told and requests are
    /// forwarded to.
    pub fn client_addr(&self, id: NodeId) -> Option<&str> {
        self.members.get(&id).map(|m| m.addr.as_str())
    }

    /// Node `id`'s peer address: where its node-to-node API listens.
    pub fn peer_addr(&self, id: NodeId) -> Option<&str> {
        self.members.get(&id).map(|m| m.peer_addr.as_str())
    }

    /// The channel to the port at `addr` (`host:port`).
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        self.dial.channel(addr)
    }

    pub fn peer(&self, addr: &str) -> Result<PeerClient<Channel>, tonic::transport::Error> {
        Ok(PeerClient::new(self.channel(addr)?))
    }

    /// The Raft stream link to the peer port at `addr`, shared by every
    /// group.
    pub fn link(&self, addr: &str) -> Result<Arc<RaftLink>, tonic::transport::Error> {
        let mut links = self.links.lock().expect("link table lock");
        if let Some(link) = links.get(addr) {
            return Ok(Arc::clone(link));
        }
        self.dial.channel(addr)?;
        let link = Arc::new(raft_link(Arc::clone(&self.dial), addr.to_string()));
        links.insert(addr.to_string(), Arc::clone(&link));
        Ok(link)
    }
}

/// Raft calls to one peer over one bidirectional stream, opened on first
/// use and again after it breaks.
pub type RaftLink = Mux<RaftCall, RaftResult>;

impl Tagged for RaftResult {
    fn call_id(&self) -> u64 {
        self.id
    }
}

/// Each time the stream (re)opens, it takes the port's channel as it is
/// then: after the TLS settings changed, a new one.
fn raft_link(dial: Arc<Dial>, addr: String) -> RaftLink {
    Mux::new(move |calls| {
        let channel = dial.channel(&addr);
        Box::pin(async move {
            let channel = channel.map_err(|e| Status::unavailable(format!("peer channel: {e}")))?;
            Ok(PeerClient::new(channel)
                .raft_stream(calls)
                .await?
                .into_inner())
        })
    })
}

/// Makes the network client of one group towards each of its peers.
pub struct GroupNetworkFactory {
    pub group: GroupId,
    pub peers: Arc<Peers>,
    /// The group's heartbeat interval: an empty append is answered here
    /// only within half of it since the follower last acknowledged a real
    /// one, so a follower never goes longer than 1.5 intervals without
    /// hearing from its leader.
    pub heartbeat_interval: Duration,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetworkFactory {
    type Network = GroupNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> GroupNetwork {
        let addr = self.peers.peer_addr(target).unwrap_or(&node.addr);
        let link = self
            .peers
            .peer(addr)
            .and_then(|client| Ok((client, self.peers.link(addr)?)));
        GroupNetwork {
            group: self.group,
            target,
            link: link.map_err(|e| e.to_string()),
            acked: None,
            fresh_for: self.heartbeat_interval / 2,
        }
    }
}

/// One group's RPCs to one peer.
pub struct GroupNetwork {
    group: GroupId,
    target: NodeId,
    /// Unary calls, and the shared stream. An address that does not parse
    /// fails every call, with the reason.
    link: Result<(PeerClient<Channel>, Arc<RaftLink>), String>,
    /// The last append the target acknowledged through this client: the
    /// leader's vote, the log id the target matches, and when it was sent.
    acked: Option<(Vote<NodeId>, Option<LogId>, Instant)>,
    /// How long an acknowledgement lets empty appends be answered here.
    fresh_for: Duration,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl GroupNetwork {
    /// One call over the peer's stream, or as a unary call if `unary`.
    async fn call<Req, Resp, E>(
        &mut self,
        kind: RaftKind,
        req: &Req,
        option: &RPCOption,
        unary: bool,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let (client, link) = match &mut self.link {
            Ok(link) => link,
            Err(reason) => return Err(network_error(reason.clone())),
        };
        let payload = postcard::to_stdvec(req).map_err(|e| network_error(e.to_string()))?;
        let request = RaftRequest {
            group: self.group,
            kind: kind.into(),
            payload,
        };
        let payload = if unary {
            let mut request = tonic::Request::new(request);
            request.set_timeout(option.hard_ttl());
            match client.raft(request).await {
                Ok(reply) => reply.into_inner().payload,
                Err(status) => {
                    let reason = format!("{}: {}", status.code(), status.message());
                    return Err(if status.code() == tonic::Code::Unavailable {
                        unreachable(reason)
                    } else {
                        network_error(reason)
                    });
                }
            }
        } else {
            let call = |id| RaftCall {
                id,
                request: Some(request),
            };
            match link.call(call, option.hard_ttl()).await {
                Ok(result) if result.error.is_empty() => result.payload,
                Ok(result) => return Err(network_error(result.error)),
                // A peer that cannot be reached at all (down, refusing
                // connections) is retried with openraft's back-off instead
                // of at once; anything else may be transient and is retried
                // now.
                Err(MuxError::Unreachable(reason)) => return Err(unreachable(reason)),
                Err(e) => return Err(network_error(e.to_string())),
            }
        };
        let result: Result<Resp, RaftError<NodeId, E>> = postcard::from_bytes(&payload)
            .map_err(|e| network_error(format!("decoding a raft reply: {e}")))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl GroupNetwork {
    /// Whether `rpc` is an empty append (a heartbeat, or openraft's
    /// commit-index notice) that this client may answer with success
    /// without sending: under the same vote, the target acknowledged a
    /// real append through this client that ended at `rpc`'s previous log
    /// id, less than `fresh_for` ago. The target would answer the same:
    /// there is nothing to append, and only a leader of a higher vote can
    /// take an acknowledged entry off it. If the target has seen such a
    /// vote since, the next append that goes out (within 1.5 heartbeat
    /// intervals) tells this leader. Nothing safety-critical rests on an
    /// answer given here: commits count acknowledgements of real appends
    /// only, and a client that openraft makes for one call (the quorum
    /// check behind a linearizable read) has acknowledged nothing, so
    /// those calls always reach the target.
    fn answers_here(&self, rpc: &AppendEntriesRequest<TypeConfig>) -> bool {
        rpc.entries.is_empty()
            && self.acked.is_some_and(|(vote, matching, at)| {
                vote == rpc.vote && matching == rpc.prev_log_id && at.elapsed() < self.fresh_for
            })
    }
}

fn network_error<E: std::error::Error>(reason: String) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(reason)))
}

fn unreachable<E: std::error::Error>(reason: String) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(reason)))
}

impl RaftNetwork<TypeConfig> for GroupNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        if self.answers_here(&rpc) {
            metrics::counter!("leasehold_raft_appends_total", "sent" => "no").increment(1);
            return Ok(AppendEntriesResponse::Success);
        }
        let sent = if rpc.entries.is_empty() {
            "empty"
        } else {
            "entries"
        };
        metrics::counter!("leasehold_raft_appends_total", "sent" => sent).increment(1);
        let sent_at = Instant::now();
        let vote = rpc.vote;
        let last = rpc.entries.last().map(|e| e.log_id).or(rpc.prev_log_id);
        let result = self
            .call(RaftKind::AppendEntries, &rpc, &option, false)
            .await;
        self.acked = match &result {
            Ok(AppendEntriesResponse::Success) => Some((vote, last, sent_at)),
            Ok(AppendEntriesResponse::PartialSuccess(matching)) => Some((vote, *matching, sent_at)),
            _ => None,
        };
        result
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(RaftKind::InstallSnapshot, &rpc, &option, true)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        self.call(RaftKind::Vote, &rpc, &option, false).await
    }

    /// Between attempts to reach an unreachable peer: short enough that a
    /// restarted replica is caught up quickly, long enough not to spin.
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(UNREACHABLE_BACKOFF))
    }
}
