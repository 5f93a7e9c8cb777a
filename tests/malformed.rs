//! Bytes that are not the message they claim to be, and messages over the
//! size limit, sent to a real node: each is refused as the caller's fault
//! (INVALID_ARGUMENT naming the field, RESOURCE_EXHAUSTED for the size),
//! nothing of it is applied, and the node serves on.

mod support;

use std::time::Duration;

use leasehold::proto::v1::{self, session_call};
use prost::bytes::{Buf, BufMut};
use prost::Message;
use support::{concurrency_acquire, metric_sum, Cluster, ClusterConfig};
use tokio_stream::StreamExt;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

const ACQUIRE: &str = "/leasehold.v1.Leasehold/Acquire";
const SESSION: &str = "/leasehold.v1.Leasehold/Session";

/// The server's limit on a request message (tonic's default).
const MESSAGE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Sends and receives messages as the bytes given, whatever they are.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

async fn raw_client(cluster: &Cluster) -> tonic::client::Grpc<Channel> {
    let channel = Endpoint::from_shared(format!("http://{}", cluster.grpc_addr(1)))
        .expect("a valid address")
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("the node accepts connections");
    tonic::client::Grpc::new(channel)
}

async fn unary(cluster: &Cluster, bytes: Vec<u8>) -> Result<Vec<u8>, Status> {
    let mut grpc = raw_client(cluster).await;
    grpc.ready().await.expect("the channel is ready");
    grpc.unary(Request::new(bytes), PathAndQuery::from_static(ACQUIRE), Raw)
        .await
        .map(tonic::Response::into_inner)
}

/// Sends `messages` on one Session stream; the replies read, and how the
/// stream ended.
async fn session(cluster: &Cluster, messages: Vec<Vec<u8>>) -> (Vec<v1::SessionReply>, Status) {
    let mut grpc = raw_client(cluster).await;
    grpc.ready().await.expect("the channel is ready");
    // The stream stays open after the messages: the server must end it.
    let calls = tokio_stream::iter(messages).chain(tokio_stream::pending());
    let mut replies = grpc
        .streaming(Request::new(calls), PathAndQuery::from_static(SESSION), Raw)
        .await
        .expect("the node opens a session")
        .into_inner();
    let mut read = Vec::new();
    loop {
        match replies.message().await {
            Ok(Some(bytes)) => read.push(
                v1::SessionReply::decode(bytes.as_slice()).expect("the node's replies decode"),
            ),
            Ok(None) => return (read, Status::ok("the stream ended")),
            Err(status) => return (read, status),
        }
    }
}

fn assert_refused(result: &Result<Vec<u8>, Status>, code: Code, needle: &str) {
    match result {
        Err(status) => assert!(
            status.code() == code && status.message().contains(needle),
            "expected {code:?} naming `{needle}`, got {:?}: {}",
            status.code(),
            status.message()
        ),
        Ok(_) => panic!("expected {code:?} naming `{needle}`, got an answer"),
    }
}

/// A valid acquire's bytes with its first field, the scope, replaced by
/// `scope_field` (tag and all).
fn acquire_with_scope_field(scope_field: &[u8]) -> Vec<u8> {
    let mut request = concurrency_acquire("", "k", 1, "idem-1", 60_000, None);
    request.scope.clear();
    let mut bytes = scope_field.to_vec();
    bytes.extend(request.encode_to_vec());
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_are_the_callers_fault_and_change_nothing() {
    let cluster = Cluster::start(ClusterConfig {
        nodes: 1,
        groups: 1,
        ..ClusterConfig::default()
    })
    .await;

    // Field 1 (scope), length-delimited, holding bytes that are not UTF-8.
    let not_utf8 = unary(&cluster, acquire_with_scope_field(&[0x0a, 2, 0xff, 0xfe])).await;
    assert_refused(&not_utf8, Code::InvalidArgument, "AcquireRequest.scope");
    // Field 1 announcing 5 bytes where 1 follows.
    let truncated = unary(&cluster, vec![0x0a, 5, b'a']).await;
    assert_refused(&truncated, Code::InvalidArgument, "malformed message");
    // A varint that never ends.
    let endless = unary(&cluster, vec![0x18, 0xff, 0xff, 0xff]).await;
    assert_refused(&endless, Code::InvalidArgument, "malformed message");
    // Field 1 sent as a varint.
    let wire_type = unary(&cluster, acquire_with_scope_field(&[0x08, 1])).await;
    assert_refused(&wire_type, Code::InvalidArgument, "AcquireRequest.scope");
    // A scope of 4 MiB and one byte.
    let mut big = concurrency_acquire("", "k", 1, "idem-2", 60_000, None);
    big.scope = "s".repeat(MESSAGE_BYTES_MAX + 1);
    let oversized = unary(&cluster, big.encode_to_vec()).await;
    assert_refused(&oversized, Code::ResourceExhausted, "too large");

    // The same on a Session stream: the call before the bad message is
    // answered, then the stream ends saying what was wrong.
    let check = |call_id, scope: &str| {
        v1::SessionCall {
            call_id,
            timeout_ms: 0,
            epoch: 0,
            call: Some(session_call::Call::Check(v1::CheckRequest {
                scope: scope.into(),
                ..v1::CheckRequest::default()
            })),
        }
        .encode_to_vec()
    };
    let (replies, ended) = session(&cluster, vec![check(1, "s"), vec![0x08, 0xff]]).await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0].call_id, 1);
    assert_eq!(ended.code(), Code::InvalidArgument, "{ended:?}");
    assert!(ended.message().contains("malformed message"), "{ended:?}");
    let mut huge = check(2, "s");
    huge.extend(std::iter::repeat_n(0, MESSAGE_BYTES_MAX));
    let (replies, ended) = session(&cluster, vec![check(1, "s"), huge]).await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(ended.code(), Code::ResourceExhausted, "{ended:?}");

    // Nothing was decided: no grant, no denial, until a well-formed
    // acquire, which the node serves.
    let decided = |text: &str| {
        (
            metric_sum(text, "leasehold_grants_total"),
            metric_sum(text, "leasehold_denials_total"),
        )
    };
    assert_eq!(decided(&cluster.metrics(1).await), (0.0, 0.0));
    let granted = cluster
        .client(1)
        .acquire(concurrency_acquire("fine", "k", 1, "idem-3", 60_000, None))
        .await
        .expect("the node serves on")
        .into_inner();
    assert!(
        matches!(
            granted.result,
            Some(v1::acquire_response::Result::Granted(_))
        ),
        "{granted:?}"
    );
    assert_eq!(decided(&cluster.metrics(1).await), (1.0, 0.0));
}
