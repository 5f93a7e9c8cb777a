//! Calls from the harness to one chosen node, each with its own deadline,
//! and what their results mean for the history: a definite answer (ok or
//! fail) or an indeterminate one (info) that a retry must resolve.
//! Acquires, extends and releases go in turn as unary RPCs and over the
//! node's session stream, so faults meet both paths.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use leasehold::client::{bearer, with_token, SessionChannel, Streamable, Token};

use leasehold::proto::v1::leasehold_client::LeaseholdClient;
use leasehold::proto::v1::{GetSlotMapRequest, SlotMap};
use leasehold::wire::error_detail;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use super::cluster::{Creds, Node};
use super::schedule::NodeId;

const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// A connection whose peer stopped answering (paused, cut off) is given
/// up after this, rather than carrying calls into a black hole.
const KEEPALIVE: Duration = Duration::from_secs(1);
/// Slack on top of a call's gRPC deadline before the harness stops
/// waiting for it anyway.
const DEADLINE_SLACK: Duration = Duration::from_millis(250);

/// Error codes that say the call was not applied (or was a definite
/// refusal): the op failed. Anything else may have been applied.
const DEFINITE_CODES: [&str; 7] = [
    "INVALID_ARGUMENT",
    "LEASE_NOT_FOUND",
    "LEASE_LOST",
    "MAX_LIFETIME_EXCEEDED",
    "IDEMPOTENCY_KEY_REUSED",
    "CAPACITY_OUT_OF_RANGE",
    "QUOTA_EXCEEDED",
];

/// One channel and one session stream per node, shared by every worker.
#[derive(Clone)]
pub struct Clients {
    channels: BTreeMap<NodeId, Channel>,
    sessions: BTreeMap<NodeId, Arc<SessionChannel>>,
    /// Counts calls, to alternate between the two paths.
    turn: Arc<AtomicU64>,
    /// The token every call carries on a cluster run with `--tls`.
    token: Option<Token>,
}

impl Clients {
    /// Clients of `nodes`, over TLS with a token when `creds` are given.
    pub fn new(nodes: &[Node], creds: Option<&Creds>) -> Clients {
        let tls = creds.map(|c| {
            leasehold::tls::client_config(&c.ca, None, None).expect("the run's CA is readable")
        });
        let token = creds.map(|c| bearer(&c.token).expect("a token is ASCII"));
        let channels = nodes
            .iter()
            .map(|node| {
                let channel = leasehold::tls::endpoint(&node.grpc_addr(), tls.as_ref())
                    .expect("an IP address and port make a URI")
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(KEEPALIVE)
                    .keep_alive_timeout(KEEPALIVE)
                    .keep_alive_while_idle(true)
                    .connect_lazy();
                (node.id, channel)
            })
            .collect::<BTreeMap<_, _>>();
        let sessions = channels
            .iter()
            .map(|(id, channel)| {
                let session = SessionChannel::new(channel.clone(), token.clone());
                (*id, Arc::new(session))
            })
            .collect();
        Clients {
            channels,
            sessions,
            turn: Arc::new(AtomicU64::new(0)),
            token,
        }
    }

    /// A request carrying `timeout` as its gRPC deadline, and the run's
    /// token if it has one.
    pub fn request<T>(&self, message: T, timeout: Duration) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(timeout);
        with_token(&mut request, self.token.as_ref());
        request
    }

    /// Sends `message` to node `id` with `timeout` as its deadline: every
    /// other call over the node's session stream, the rest as unary RPCs.
    pub fn send<T: Streamable>(
        &self,
        id: NodeId,
        message: T,
        timeout: Duration,
    ) -> impl Future<Output = Result<Response<T::Reply>, Status>> + use<T> {
        let streamed = self.turn.fetch_add(1, Ordering::Relaxed) % 2 == 1;
        let (client, session) = (self.to(id), Arc::clone(&self.sessions[&id]));
        let token = self.token.clone();
        async move {
            let reply = if streamed {
                session.call(message, timeout, 0).await
            } else {
                let mut request = Request::new(message);
                request.set_timeout(timeout);
                with_token(&mut request, token.as_ref());
                T::unary(client, request).await
            };
            reply.map(Response::new)
        }
    }

    pub fn to(&self, id: NodeId) -> LeaseholdClient<Channel> {
        LeaseholdClient::new(self.channels[&id].clone())
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.channels.keys().copied().collect()
    }

    /// The first slot map any node gives within `timeout` each,
    /// preferring one that names a leader for every group.
    pub async fn slot_map(&self, timeout: Duration) -> Option<SlotMap> {
        let mut fallback = None;
        for id in self.ids() {
            let answer = call(timeout, |t| {
                let mut client = self.to(id);
                let request = self.request(GetSlotMapRequest {}, t);
                async move { client.get_slot_map(request).await }
            })
            .await;
            if let Answer::Ok(map) = answer {
                if every_group_led(&map) {
                    return Some(map);
                }
                fallback.get_or_insert(map);
            }
        }
        fallback
    }
}

/// Whether `map` names a leader for every group. A map without groups
/// (a node that has not yet learned the map) does not.
pub fn every_group_led(map: &SlotMap) -> bool {
    !map.groups.is_empty() && map.groups.iter().all(|g| g.leader_node_id != 0)
}

/// What became of one call.
#[derive(Debug)]
pub enum Answer<T> {
    Ok(T),
    /// A definite refusal, with its stable code.
    Fail(String),
    /// Unknown whether it was applied: timeout, lost connection, no leader.
    Info,
}

/// Runs one call with `timeout` (given to `send` for the gRPC deadline)
/// and classifies its result.
pub async fn call<T, F, Fut>(timeout: Duration, send: F) -> Answer<T>
where
    F: FnOnce(Duration) -> Fut,
    Fut: Future<Output = Result<Response<T>, Status>>,
{
    match tokio::time::timeout(timeout + DEADLINE_SLACK, send(timeout)).await {
        Ok(Ok(reply)) => Answer::Ok(reply.into_inner()),
        Ok(Err(status)) => classify(&status),
        Err(_) => Answer::Info,
    }
}

fn classify<T>(status: &Status) -> Answer<T> {
    if let Some(detail) = error_detail(status) {
        if DEFINITE_CODES.contains(&detail.code.as_str()) {
            return Answer::Fail(detail.code);
        }
        // NOT_LEADER and WRONG_EPOCH: a leader may have lost its office
        // after proposing, so the command may still be applied.
        return Answer::Info;
    }
    match status.code() {
        // Refused before anything was proposed: too many waiters.
        Code::ResourceExhausted | Code::InvalidArgument => {
            Answer::Fail(format!("{:?}", status.code()).to_uppercase())
        }
        _ => Answer::Info,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leasehold::proto::v1::ErrorDetail;
    use leasehold::wire::error_status;

    fn coded(code: Code, detail: &str) -> Status {
        let detail = ErrorDetail {
            code: detail.into(),
            ..ErrorDetail::default()
        };
        error_status(code, "x", &detail)
    }

    #[test]
    fn only_definite_refusals_fail() {
        let fail = |s: &Status| matches!(classify::<()>(s), Answer::Fail(_));
        assert!(fail(&coded(Code::FailedPrecondition, "LEASE_LOST")));
        assert!(fail(&coded(Code::NotFound, "LEASE_NOT_FOUND")));
        assert!(fail(&Status::resource_exhausted("waiters")));
        assert!(!fail(&coded(Code::Unavailable, "NOT_LEADER")));
        assert!(!fail(&Status::unavailable("connection reset")));
        assert!(!fail(&Status::deadline_exceeded("late")));
        assert!(!fail(&Status::cancelled("gone")));
    }
}
