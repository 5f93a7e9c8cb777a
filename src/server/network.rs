//! Raft transport: every group's RPCs to a peer share one HTTP/2 channel
//! (one connection per direction of a node pair), each call tagged with its
//! group. Appends and votes travel as messages of one long-lived stream
//! per peer, many in flight at once, answered out of order by call id: a
//! message costs one HTTP/2 frame each way where a unary call costs a
//! stream with headers and trailers. Snapshot chunks go as unary calls.
//! Payloads are openraft's messages, postcard-encoded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::proto::peer::peer_client::PeerClient;
use crate::proto::peer::{RaftCall, RaftKind, RaftRequest, RaftResult};
use crate::raft::{GroupId, NodeId, TypeConfig};

/// How long a connection attempt to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// The pause before retrying a peer that could not be reached.
const UNREACHABLE_BACKOFF: Duration = Duration::from_millis(200);

/// One lazily connected channel per peer, shared by every group and by
/// request forwarding. Channels reconnect by themselves after a failure.
#[derive(Default)]
pub struct Peers {
    channels: Mutex<HashMap<String, Channel>>,
    links: Mutex<HashMap<String, Arc<RaftLink>>>,
}

impl Peers {
    /// The channel to the node that listens at `addr` (`host:port`).
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self.channels.lock().expect("peer table lock");
        if let Some(ch) = channels.get(addr) {
            return Ok(ch.clone());
        }
        let ch = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        channels.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    pub fn peer(&self, addr: &str) -> Result<PeerClient<Channel>, tonic::transport::Error> {
        Ok(PeerClient::new(self.channel(addr)?))
    }

    /// The Raft stream link to the node at `addr`, shared by every group.
    pub fn link(&self, addr: &str) -> Result<Arc<RaftLink>, tonic::transport::Error> {
        let mut links = self.links.lock().expect("link table lock");
        if let Some(link) = links.get(addr) {
            return Ok(Arc::clone(link));
        }
        let link = Arc::new(RaftLink::new(self.peer(addr)?));
        links.insert(addr.to_string(), Arc::clone(&link));
        Ok(link)
    }
}

/// Why a call over a [`RaftLink`] got no reply.
#[derive(Debug)]
pub enum LinkError {
    /// The peer could not be reached at all: retried with back-off.
    Unreachable(String),
    /// Anything else; the call may or may not have been served.
    Failed(String),
}

type Waiter = oneshot::Sender<Result<Vec<u8>, LinkError>>;

/// Raft calls to one peer over one bidirectional stream, opened on first
/// use and again after it breaks.
pub struct RaftLink {
    client: PeerClient<Channel>,
    next_id: AtomicU64,
    current: Mutex<Option<Arc<OpenStream>>>,
}

/// One open stream: its outgoing calls, and who waits for which reply.
struct OpenStream {
    calls: mpsc::UnboundedSender<RaftCall>,
    /// `None` once the stream ended: no call can join it any more.
    waiting: Mutex<Option<HashMap<u64, Waiter>>>,
    closed: AtomicBool,
}

impl RaftLink {
    fn new(client: PeerClient<Channel>) -> RaftLink {
        RaftLink {
            client,
            next_id: AtomicU64::new(1),
            current: Mutex::new(None),
        }
    }

    /// Sends `request` and waits up to `timeout` for its reply's payload.
    pub async fn call(
        &self,
        request: RaftRequest,
        timeout: Duration,
    ) -> Result<Vec<u8>, LinkError> {
        let stream = self.stream();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut waiting = stream.waiting.lock().expect("waiting lock");
            let Some(waiting) = waiting.as_mut() else {
                return Err(LinkError::Failed("the raft stream just ended".into()));
            };
            waiting.insert(id, tx);
        }
        let call = RaftCall {
            id,
            request: Some(request),
        };
        if stream.calls.send(call).is_err() {
            stream.forget(id);
            return Err(LinkError::Failed("the raft stream ended".into()));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(LinkError::Failed("the raft stream dropped the call".into())),
            Err(_) => {
                stream.forget(id);
                Err(LinkError::Failed(format!("no reply within {timeout:?}")))
            }
        }
    }

    /// The open stream, opening one if there is none or it ended.
    fn stream(&self) -> Arc<OpenStream> {
        let mut current = self.current.lock().expect("link lock");
        if let Some(stream) = current
            .as_ref()
            .filter(|s| !s.closed.load(Ordering::Acquire))
        {
            return Arc::clone(stream);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let stream = Arc::new(OpenStream {
            calls: tx,
            waiting: Mutex::new(Some(HashMap::new())),
            closed: AtomicBool::new(false),
        });
        tokio::spawn(drive(
            self.client.clone(),
            UnboundedReceiverStream::new(rx),
            Arc::clone(&stream),
        ));
        *current = Some(Arc::clone(&stream));
        stream
    }
}

/// Opens the stream and hands each reply to its caller until the stream
/// ends; then fails every call still waiting.
async fn drive(
    mut client: PeerClient<Channel>,
    calls: UnboundedReceiverStream<RaftCall>,
    stream: Arc<OpenStream>,
) {
    let ended = match client.raft_stream(calls).await {
        Err(status) if status.code() == tonic::Code::Unavailable => {
            LinkError::Unreachable(format!("{}: {}", status.code(), status.message()))
        }
        Err(status) => LinkError::Failed(format!("{}: {}", status.code(), status.message())),
        Ok(response) => {
            let mut results = response.into_inner();
            loop {
                match results.message().await {
                    Ok(Some(result)) => stream.answer(result),
                    Ok(None) => break LinkError::Failed("the peer ended the raft stream".into()),
                    Err(status) => {
                        break LinkError::Failed(format!(
                            "raft stream: {}: {}",
                            status.code(),
                            status.message()
                        ))
                    }
                }
            }
        }
    };
    stream.close(&ended);
}

impl OpenStream {
    fn answer(&self, result: RaftResult) {
        let waiter = self
            .waiting
            .lock()
            .expect("waiting lock")
            .as_mut()
            .and_then(|w| w.remove(&result.id));
        // The caller may have timed out and gone.
        if let Some(waiter) = waiter {
            let answer = if result.error.is_empty() {
                Ok(result.payload)
            } else {
                Err(LinkError::Failed(result.error))
            };
            let _ = waiter.send(answer);
        }
    }

    fn forget(&self, id: u64) {
        if let Some(waiting) = self.waiting.lock().expect("waiting lock").as_mut() {
            waiting.remove(&id);
        }
    }

    fn close(&self, why: &LinkError) {
        self.closed.store(true, Ordering::Release);
        let waiting = self.waiting.lock().expect("waiting lock").take();
        for (_, waiter) in waiting.into_iter().flatten() {
            let error = match why {
                LinkError::Unreachable(reason) => LinkError::Unreachable(reason.clone()),
                LinkError::Failed(reason) => LinkError::Failed(reason.clone()),
            };
            let _ = waiter.send(Err(error));
        }
    }
}

/// Makes the network client of one group towards each of its peers.
pub struct GroupNetworkFactory {
    pub group: GroupId,
    pub peers: Arc<Peers>,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetworkFactory {
    type Network = GroupNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> GroupNetwork {
        let link = self
            .peers
            .peer(&node.addr)
            .and_then(|client| Ok((client, self.peers.link(&node.addr)?)));
        GroupNetwork {
            group: self.group,
            target,
            link: link.map_err(|e| e.to_string()),
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
        let reply = if unary {
            let mut request = tonic::Request::new(request);
            request.set_timeout(option.hard_ttl());
            client
                .raft(request)
                .await
                .map(|reply| reply.into_inner().payload)
                .map_err(|status| {
                    let reason = format!("{}: {}", status.code(), status.message());
                    if status.code() == tonic::Code::Unavailable {
                        LinkError::Unreachable(reason)
                    } else {
                        LinkError::Failed(reason)
                    }
                })
        } else {
            link.call(request, option.hard_ttl()).await
        };
        // A peer that cannot be reached at all (down, refusing connections)
        // is retried with openraft's back-off instead of at once; anything
        // else may be transient and is retried now.
        let payload = reply.map_err(|e| match e {
            LinkError::Unreachable(reason) => {
                RPCError::Unreachable(Unreachable::new(&std::io::Error::other(reason)))
            }
            LinkError::Failed(reason) => network_error(reason),
        })?;
        let result: Result<Resp, RaftError<NodeId, E>> = postcard::from_bytes(&payload)
            .map_err(|e| network_error(format!("decoding a raft reply: {e}")))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn network_error<E: std::error::Error>(reason: String) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(reason)))
}

impl RaftNetwork<TypeConfig> for GroupNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        self.call(RaftKind::AppendEntries, &rpc, &option, false)
            .await
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
