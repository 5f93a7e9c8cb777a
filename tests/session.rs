//! The `Session` stream against a real three-node cluster: each call is
//! answered as its unary RPC would be, under its own id and as soon as it
//! completes, and the stream ends when its node shuts down.

mod support;

use std::time::Duration;

use leasehold::proto::v1::{
    self, acquire_response, session_call, session_reply, SessionCall, SessionReply,
};
use leasehold::wire::error_detail;
use support::{concurrency_acquire, Cluster, ClusterConfig};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

/// How long any one reply may take here.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A session opened by hand: calls go in, replies come out in the order
/// the node answers them.
struct Session {
    calls: mpsc::Sender<SessionCall>,
    replies: Streaming<SessionReply>,
}

impl Session {
    async fn open(cluster: &Cluster, node: u64) -> Session {
        let (calls, rx) = mpsc::channel(64);
        let replies = cluster
            .client_with_timeout(node, Duration::from_secs(120))
            .session(ReceiverStream::new(rx))
            .await
            .unwrap_or_else(|s| panic!("expected node {node} to open a session, got {s}"))
            .into_inner();
        Session { calls, replies }
    }

    async fn send(&self, call_id: u64, call: Option<session_call::Call>) {
        self.send_within(call_id, call, 0).await;
    }

    /// Sends a call with its own deadline, `timeout_ms` (0: none).
    async fn send_within(&self, call_id: u64, call: Option<session_call::Call>, timeout_ms: u64) {
        let call = SessionCall {
            call_id,
            timeout_ms,
            epoch: 0,
            call,
        };
        self.calls.send(call).await.expect("the session is open");
    }

    async fn next(&mut self) -> SessionReply {
        tokio::time::timeout(REPLY_TIMEOUT, self.replies.message())
            .await
            .expect("expected a reply within the timeout")
            .expect("expected the session to stay healthy")
            .expect("expected the session to stay open")
    }
}

fn acquire(
    scope: &str,
    key: &str,
    limit: u32,
    idem: &str,
    wait_ms: Option<u64>,
) -> Option<session_call::Call> {
    Some(session_call::Call::Acquire(concurrency_acquire(
        scope, key, limit, idem, 60_000, wait_ms,
    )))
}

fn release(scope: &str, lease_id: u64, idem: &str) -> Option<session_call::Call> {
    Some(session_call::Call::Release(v1::ReleaseRequest {
        scope: scope.into(),
        lease_id,
        idempotency_key: idem.into(),
    }))
}

/// The grant of an acquire's reply.
fn granted(reply: &SessionReply, what: &str) -> v1::Grant {
    match &reply.result {
        Some(session_reply::Result::Acquire(v1::AcquireResponse {
            result: Some(acquire_response::Result::Granted(grant)),
            ..
        })) => grant.clone(),
        other => panic!("expected {what} to be granted, got {other:?}"),
    }
}

/// The failed call's status, rebuilt as the unary RPC would carry it.
fn status(reply: &SessionReply, what: &str) -> tonic::Status {
    match &reply.result {
        Some(session_reply::Result::Status(s)) => {
            tonic::Status::with_details(s.code.into(), s.message.clone(), s.details.clone().into())
        }
        other => panic!("expected {what} to fail, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_calls_are_answered_as_they_complete_like_their_unary_rpcs() {
    let cluster = Cluster::start(ClusterConfig::default()).await;
    let scope = "acct-session";
    let leader = cluster.leader_of(scope).await;
    let mut session = Session::open(&cluster, leader).await;

    session.send(1, acquire(scope, "slot", 1, "a1", None)).await;
    let first = session.next().await;
    assert_eq!(first.call_id, 1);
    let lease = granted(&first, "the first acquire");

    // A waiting acquire parks; a release sent after it is answered first,
    // and only then is the waiter granted.
    session
        .send(2, acquire(scope, "slot", 1, "a2", Some(5_000)))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    session.send(3, release(scope, lease.lease_id, "r1")).await;
    let released = session.next().await;
    assert_eq!(
        released.call_id, 3,
        "expected the release to be answered before the parked acquire, got {released:?}"
    );
    match &released.result {
        Some(session_reply::Result::Release(r)) => assert!(r.was_held, "expected the lease held"),
        other => panic!("expected a release reply, got {other:?}"),
    }
    let waited = session.next().await;
    assert_eq!(waited.call_id, 2);
    let second = granted(&waited, "the parked acquire");
    assert!(second.fencing_token > lease.fencing_token);

    // A retry with the same idempotency key replays the first outcome.
    session.send(4, acquire(scope, "slot", 1, "a1", None)).await;
    let replay = session.next().await;
    assert_eq!(replay.call_id, 4);
    match &replay.result {
        Some(session_reply::Result::Acquire(r)) => {
            assert!(r.replayed, "expected the retry to be a replay, got {r:?}");
            assert_eq!(granted(&replay, "the replay").lease_id, lease.lease_id);
        }
        other => panic!("expected an acquire reply, got {other:?}"),
    }

    // Bad input fails that call alone, with the field and the bound named.
    session.send(5, acquire(scope, "slot", 0, "a5", None)).await;
    let bad = status(&session.next().await, "an acquire with limit 0");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    let detail = error_detail(&bad).expect("an ErrorDetail");
    assert!(
        detail.field.ends_with("limit") && bad.message().contains("1000000000"),
        "expected the limit and its bound named, got {bad:?} / {detail:?}"
    );
    session.send(6, None).await;
    let empty = status(&session.next().await, "a call with nothing in it");
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        error_detail(&empty).map(|d| d.field),
        Some("call".to_string())
    );

    // A follower forwards the call to the leader, as for a unary RPC.
    let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
    let mut via_follower = Session::open(&cluster, follower).await;
    via_follower
        .send(7, release(scope, second.lease_id, "r2"))
        .await;
    let reply = via_follower.next().await;
    match &reply.result {
        Some(session_reply::Result::Release(r)) => {
            assert!(r.was_held, "expected the parked acquire's lease held");
            assert_eq!(r.served_by.as_ref().map(|s| s.leader_node_id), Some(leader));
        }
        other => panic!("expected a release reply, got {other:?}"),
    }

    // The session is still usable after every one of those.
    session.send(8, acquire(scope, "slot", 1, "a8", None)).await;
    granted(&session.next().await, "an acquire on the freed slot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_when_its_node_shuts_down() {
    let mut cluster = Cluster::start(ClusterConfig::default()).await;
    let node = cluster.ids()[0];
    let mut session = Session::open(&cluster, node).await;
    session
        .send(1, acquire("acct-bye", "slot", 5, "b1", None))
        .await;
    granted(&session.next().await, "an acquire before shutdown");

    cluster.terminate(node);
    let ended = tokio::time::timeout(REPLY_TIMEOUT, async {
        while let Ok(Some(_)) = session.replies.message().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "expected the session to end as its node stops"
    );
    // The open session does not hold the graceful shutdown up.
    let exit = cluster.wait_exit(node, Duration::from_secs(20)).await;
    assert!(exit.success(), "expected a clean exit, got {exit}");
}

/// A waiting acquire whose call has a deadline shorter than its wait is
/// answered DEADLINE_EXCEEDED when the deadline passes, not when the wait
/// runs out; and it stops waiting then: capacity freed afterwards does not
/// go to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_acquire_ends_at_its_calls_deadline() {
    let cluster = Cluster::start(ClusterConfig::default()).await;
    let scope = "acct-session-deadline";
    let leader = cluster.leader_of(scope).await;
    let mut session = Session::open(&cluster, leader).await;
    session.send(1, acquire(scope, "slot", 1, "d1", None)).await;
    let holder = granted(&session.next().await, "the holder's acquire");

    let sent = std::time::Instant::now();
    session
        .send_within(2, acquire(scope, "slot", 1, "d2", Some(8_000)), 500)
        .await;
    let reply = session.next().await;
    let waited = sent.elapsed();
    assert_eq!(reply.call_id, 2);
    let exceeded = status(&reply, "an acquire parked past its deadline");
    assert_eq!(
        exceeded.code(),
        tonic::Code::DeadlineExceeded,
        "{exceeded:?}"
    );
    assert!(
        waited < Duration::from_secs(4),
        "expected the answer at the 500 ms deadline, well before the 8 s wait ran out; took \
         {waited:?}"
    );

    // Capacity that frees now stays free: the call that gave up holds none.
    session.send(3, release(scope, holder.lease_id, "d3")).await;
    session.next().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    session.send(4, acquire(scope, "slot", 1, "d4", None)).await;
    granted(
        &session.next().await,
        "an acquire after the holder released, with the timed-out waiter gone",
    );
}
