//! The node-to-node service, on the peer port: Raft RPCs for any hosted
//! group, election triggers for leadership handover, map proposals, clock
//! readings.

use std::sync::Arc;

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::Serialize;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

use super::node::Node;
use crate::mux::{self, Replies};
use crate::proto::peer::peer_server::Peer;
use crate::proto::peer::{
    ClockReply, ClockRequest, ElectReply, ElectRequest, MetaProposal, MetaReply, RaftCall,
    RaftKind, RaftReply, RaftRequest, RaftResult,
};
use crate::raft::{MetaCommand, NodeId, TypeConfig};

/// Raft calls one peer stream may have in flight at once.
const RAFT_IN_FLIGHT: usize = 4096;

#[derive(Clone)]
pub struct PeerService {
    node: Arc<Node>,
    /// Turns true when the server stops: open Raft streams end, so the
    /// graceful shutdown does not wait on them.
    closing: watch::Receiver<bool>,
}

impl PeerService {
    pub fn new(node: Arc<Node>, closing: watch::Receiver<bool>) -> PeerService {
        PeerService { node, closing }
    }

    fn group(&self, id: u32) -> Result<Arc<super::group::Group>, Status> {
        self.node
            .group(id)
            .ok_or_else(|| Status::not_found(format!("node {} hosts no group {id}", self.node.id)))
    }

    /// Serves one Raft RPC for the group it names.
    async fn serve_raft(&self, req: RaftRequest) -> Result<RaftReply, Status> {
        let group = self.group(req.group)?;
        match RaftKind::try_from(req.kind) {
            Ok(RaftKind::AppendEntries) => {
                let rpc: AppendEntriesRequest<TypeConfig> = decode(&req.payload)?;
                reply(&group.raft.append_entries(rpc).await)
            }
            Ok(RaftKind::Vote) => {
                let rpc: VoteRequest<NodeId> = decode(&req.payload)?;
                reply(&group.raft.vote(rpc).await)
            }
            Ok(RaftKind::InstallSnapshot) => {
                let rpc: InstallSnapshotRequest<TypeConfig> = decode(&req.payload)?;
                reply(&group.raft.install_snapshot(rpc).await)
            }
            _ => Err(Status::invalid_argument(format!(
                "kind: unknown raft kind {}",
                req.kind
            ))),
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Status> {
    postcard::from_bytes(bytes).map_err(|e| Status::invalid_argument(format!("payload: {e}")))
}

fn reply<T: Serialize>(value: &T) -> Result<RaftReply, Status> {
    let payload = postcard::to_stdvec(value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(RaftReply { payload })
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        self.serve_raft(request.into_inner())
            .await
            .map(Response::new)
    }

    type RaftStreamStream = Replies<RaftResult>;

    /// Serves every call of the stream at once, each in its own task, and
    /// answers each as it finishes: one group's slow append holds up no
    /// other group. The caller bounds the calls in flight (one per group
    /// and kind); [`RAFT_IN_FLIGHT`] only guards against a runaway peer.
    async fn raft_stream(
        &self,
        request: Request<Streaming<RaftCall>>,
    ) -> Result<Response<Self::RaftStreamStream>, Status> {
        let service = self.clone();
        let replies = mux::serve(
            request.into_inner(),
            self.closing.clone(),
            RAFT_IN_FLIGHT,
            move |call: RaftCall| {
                let service = service.clone();
                async move {
                    let served = match call.request {
                        Some(req) => service.serve_raft(req).await,
                        None => Err(Status::invalid_argument("request: missing")),
                    };
                    match served {
                        Ok(reply) => RaftResult {
                            id: call.id,
                            payload: reply.payload,
                            error: String::new(),
                        },
                        Err(status) => RaftResult {
                            id: call.id,
                            payload: Vec::new(),
                            error: status.message().to_string(),
                        },
                    }
                }
            },
        );
        Ok(Response::new(replies))
    }

    async fn elect(&self, request: Request<ElectRequest>) -> Result<Response<ElectReply>, Status> {
        let group = self.group(request.into_inner().group)?;
        group
            .raft
            .trigger()
            .elect()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(ElectReply {}))
    }

    async fn propose_meta(
        &self,
        request: Request<MetaProposal>,
    ) -> Result<Response<MetaReply>, Status> {
        let cmd: MetaCommand = decode(&request.into_inner().command)?;
        match self.node.apply_meta_here(cmd).await {
            Ok(None) => Ok(Response::new(MetaReply {
                leader_node_id: self.node.id,
                applied: true,
            })),
            Ok(Some(leader)) => Ok(Response::new(MetaReply {
                leader_node_id: leader,
                applied: false,
            })),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }

    async fn clock(&self, _request: Request<ClockRequest>) -> Result<Response<ClockReply>, Status> {
        Ok(Response::new(ClockReply {
            wall_ms: super::clock::now_ms(),
        }))
    }
}
