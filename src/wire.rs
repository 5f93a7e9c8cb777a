//! The wire contract client and server share beside the proto's messages:
//! the request metadata keys, the routing codes a node answers with when
//! another node should serve a call, and the `ErrorDetail` every Leasehold
//! error carries in its status details (the proto's ERRORS section).

use std::time::Duration;

use prost::{Message, Name};
use tonic::{Code, Status};

use crate::proto::v1;

/// Metadata key: the epoch of the slot map the client routed by (decimal).
pub const EPOCH_HEADER: &str = "leasehold-epoch";

/// Metadata key: how often a call was forwarded between nodes. A forwarded
/// call is never forwarded again: a node that cannot serve it answers
/// NOT_LEADER with a hint instead, so views that disagree cannot loop.
pub const HOPS_HEADER: &str = "leasehold-hops";

/// Why a node did not serve a call that another node can: the
/// `ErrorDetail.code` of an UNAVAILABLE status. The caller follows the
/// hint or refreshes its slot map, and retries with the same idempotency
/// key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Redirect {
    /// The node does not lead the scope's group; the detail names the
    /// leader when known.
    NotLeader,
    /// The caller routed by a newer slot map than the node has.
    WrongEpoch,
}

impl Redirect {
    pub fn as_str(self) -> &'static str {
        match self {
            Redirect::NotLeader => "NOT_LEADER",
            Redirect::WrongEpoch => "WRONG_EPOCH",
        }
    }

    fn parse(code: &str) -> Option<Redirect> {
        [Redirect::NotLeader, Redirect::WrongEpoch]
            .into_iter()
            .find(|r| r.as_str() == code)
    }

    /// The redirect `status` carries, with its detail; `None` for any
    /// other status.
    pub fn of(status: &Status) -> Option<(Redirect, v1::ErrorDetail)> {
        let detail = error_detail(status)?;
        Some((Redirect::parse(&detail.code)?, detail))
    }
}

/// NOT_LEADER for a call on `group`, with the leader (id, address) when
/// known, and the answering node's slot map epoch.
pub fn not_leader(group: u32, leader: Option<(u64, String)>, epoch: u64) -> Status {
    let message = match &leader {
        Some((id, addr)) => {
            format!("this node does not lead group {group}; node {id} at {addr} does")
        }
        None => format!("group {group} has no reachable leader right now"),
    };
    let (leader_node_id, leader_address) = leader.unwrap_or_default();
    let detail = v1::ErrorDetail {
        code: Redirect::NotLeader.as_str().into(),
        field: String::new(),
        leader_node_id,
        leader_address,
        epoch,
        ..Default::default()
    };
    error_status(Code::Unavailable, message, &detail)
}

/// WRONG_EPOCH: the caller routed by map epoch `client`, newer than this
/// node's `ours`, so this node cannot tell where the scope's slot lives now.
pub fn wrong_epoch(client: u64, ours: u64) -> Status {
    let detail = v1::ErrorDetail {
        code: Redirect::WrongEpoch.as_str().into(),
        field: EPOCH_HEADER.into(),
        epoch: ours,
        ..Default::default()
    };
    error_status(
        Code::Unavailable,
        format!(
            "this node's slot map (epoch {ours}) is older than the caller's (epoch {client}); \
             send the call to another node"
        ),
        &detail,
    )
}

/// `google.rpc.Status`: gRPC libraries read `grpc-status-details-bin` as
/// one, and grpc-go fails a call as INTERNAL ("malformed
/// grpc-status-details-bin") when the bytes are anything else. Declared here
/// because the crate does not depend on the googleapis protos.
#[derive(Clone, PartialEq, Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<ProtoAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, Message)]
struct ProtoAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// `ErrorDetail.code` of a call refused because the node or the group was
/// full: RESOURCE_EXHAUSTED, nothing applied, retry after the detail's
/// `retry_after_ms`.
pub const OVERLOADED: &str = "OVERLOADED";

/// A call refused by a full node or group (see [`OVERLOADED`]).
pub fn overloaded(message: impl Into<String>, retry_after: Duration) -> Status {
    let detail = v1::ErrorDetail {
        code: OVERLOADED.into(),
        retry_after_ms: u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX),
        ..v1::ErrorDetail::default()
    };
    error_status(Code::ResourceExhausted, message, &detail)
}

/// How long an [`OVERLOADED`] refusal asks its caller to wait; `None` for
/// any other status.
pub fn overload_retry_after(status: &Status) -> Option<Duration> {
    let detail = error_detail(status).filter(|d| d.code == OVERLOADED)?;
    Some(Duration::from_millis(detail.retry_after_ms))
}

/// A status with `detail` in its details, wrapped as the proto's ERRORS
/// section promises.
pub fn error_status(code: Code, message: impl Into<String>, detail: &v1::ErrorDetail) -> Status {
    let message = message.into();
    let envelope = RpcStatus {
        code: code.into(),
        message: message.clone(),
        details: vec![ProtoAny {
            type_url: v1::ErrorDetail::type_url(),
            value: detail.encode_to_vec(),
        }],
    };
    Status::with_details(code, message, envelope.encode_to_vec().into())
}

/// The `ErrorDetail` of a Leasehold error status; `None` when it carries
/// none (a transport error, or a server outside this contract).
pub fn error_detail(status: &Status) -> Option<v1::ErrorDetail> {
    let envelope = RpcStatus::decode(status.details()).ok()?;
    let url = v1::ErrorDetail::type_url();
    let any = envelope.details.into_iter().find(|a| a.type_url == url)?;
    v1::ErrorDetail::decode(any.value.as_slice()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_round_trip_through_their_status() {
        let status = not_leader(4, Some((2, "10.0.0.2:7070".into())), 9);
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("group 4"), "{}", status.message());
        let (redirect, detail) = Redirect::of(&status).expect("a redirect");
        assert_eq!(redirect, Redirect::NotLeader);
        assert_eq!(
            (
                detail.leader_node_id,
                detail.leader_address.as_str(),
                detail.epoch
            ),
            (2, "10.0.0.2:7070", 9)
        );

        let (redirect, detail) = Redirect::of(&wrong_epoch(7, 5)).expect("a redirect");
        assert_eq!((redirect, detail.epoch), (Redirect::WrongEpoch, 5));
        assert_eq!(detail.field, EPOCH_HEADER);

        let unknown = not_leader(1, None, 3);
        assert!(unknown.message().contains("no reachable leader"));
        assert_eq!(
            Redirect::of(&unknown).map(|(_, d)| d.leader_node_id),
            Some(0)
        );
    }

    /// The details are a `google.rpc.Status` that repeats code and message,
    /// as gRPC libraries require, with the detail as its one `Any`.
    #[test]
    fn details_are_a_google_rpc_status() {
        let detail = v1::ErrorDetail {
            code: "LEASE_NOT_FOUND".into(),
            field: "lease_id".into(),
            ..Default::default()
        };
        let status = error_status(Code::NotFound, "no lease 7", &detail);
        let envelope = RpcStatus::decode(status.details()).unwrap();
        assert_eq!(envelope.code, i32::from(Code::NotFound));
        assert_eq!(envelope.message, "no lease 7");
        assert_eq!(envelope.details.len(), 1);
        assert_eq!(
            envelope.details[0].type_url,
            "type.googleapis.com/leasehold.v1.ErrorDetail"
        );
        assert_eq!(error_detail(&status), Some(detail));
    }

    #[test]
    fn other_statuses_are_no_redirect() {
        let detail = v1::ErrorDetail {
            code: "LEASE_LOST".into(),
            ..Default::default()
        };
        let lost = error_status(Code::FailedPrecondition, "lost", &detail);
        assert_eq!(
            error_detail(&lost).map(|d| d.code),
            Some("LEASE_LOST".into())
        );
        assert_eq!(Redirect::of(&lost), None);
        assert_eq!(
            Redirect::of(&Status::unavailable("connection refused")),
            None
        );
    }
}
