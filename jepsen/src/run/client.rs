//! Calls from the harness to one chosen node, each with its own deadline,
//! and what their results mean for the history: a definite answer (ok or
//! fail) or an indeterminate one (info) that a retry must resolve.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use leasehold::convert::error_detail;
use leasehold::proto::v1::leasehold_client::LeaseholdClient;
use leasehold::proto::v1::{GetPartitionMapRequest, PartitionMap};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use super::cluster::Node;
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
const DEFINITE_CODES: [&str; 6] = [
    "INVALID_ARGUMENT",
    "LEASE_NOT_FOUND",
    "LEASE_LOST",
    "MAX_LIFETIME_EXCEEDED",
    "IDEMPOTENCY_KEY_REUSED",
    "CAPACITY_OUT_OF_RANGE",
];

/// One channel per node, shared by every worker.
#[derive(Clone)]
pub struct Clients {
    channels: BTreeMap<NodeId, Channel>,
}

impl Clients {
    pub fn new(nodes: &[Node]) -> Clients {
        let channels = nodes
            .iter()
            .map(|node| {
                let channel = Endpoint::from_shared(format!("http://{}", node.grpc_addr()))
                    .expect("an IP address and port make a URI")
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(KEEPALIVE)
                    .keep_alive_timeout(KEEPALIVE)
                    .keep_alive_while_idle(true)
                    .connect_lazy();
                (node.id, channel)
            })
            .collect();
        Clients { channels }
    }

    pub fn to(&self, id: NodeId) -> LeaseholdClient<Channel> {
        LeaseholdClient::new(self.channels[&id].clone())
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.channels.keys().copied().collect()
    }

    /// The first partition map any node gives within `timeout` each,
    /// preferring one that names a leader for every partition.
    pub async fn partition_map(&self, timeout: Duration) -> Option<PartitionMap> {
        let mut fallback = None;
        for id in self.ids() {
            let answer = call(timeout, |t| {
                let mut client = self.to(id);
                async move {
                    client
                        .get_partition_map(request(GetPartitionMapRequest {}, t))
                        .await
                }
            })
            .await;
            if let Answer::Ok(map) = answer {
                if map.partitions.iter().all(|p| p.leader_node_id != 0) {
                    return Some(map);
                }
                fallback.get_or_insert(map);
            }
        }
        fallback
    }
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

/// A request carrying `timeout` as its gRPC deadline.
pub fn request<T>(message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    request
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
    use leasehold::convert::error_status;
    use leasehold::proto::v1::ErrorDetail;

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
