//! Denials that stay denied, on real three-node clusters: once a caller
//! has heard "denied" for an idempotency key, no copy of that attempt takes
//! capacity, not even one held up on a paused node that reaches the new
//! leader after capacity has freed; and the Rust client makes each call a
//! new attempt.

mod support;

use std::time::{Duration, Instant};

use leasehold::client::{Acquire, Acquired};
use leasehold::proto::v1::{self, acquire_response, constraint};
use support::{retry_transient, Cluster, ClusterConfig};

/// Long enough for an election and the retries around it.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// How long the cluster may take to elect a leader in place of a paused one.
const ELECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// The only unit of `scope`'s key, asked for under `idem`.
fn acquire(scope: &str, idem: &str) -> v1::AcquireRequest {
    v1::AcquireRequest {
        scope: scope.into(),
        constraints: vec![v1::Constraint {
            kind: Some(constraint::Kind::Concurrency(v1::Concurrency {
                key: "slot".into(),
                limit: 1,
            })),
        }],
        amount: 1,
        min_amount: None,
        lease_ttl_ms: 60_000,
        max_lifetime_ms: None,
        idempotency_key: idem.into(),
        wait_ms: None,
        fairness_key: String::new(),
    }
}

/// `request` through node `via`, retried with its idempotency key while
/// leadership settles.
async fn acquire_via(
    cluster: &Cluster,
    via: u64,
    request: v1::AcquireRequest,
    what: &str,
) -> v1::AcquireResponse {
    retry_transient(what, CALL_TIMEOUT, || {
        let mut client = cluster.client(via);
        let request = request.clone();
        async move { client.acquire(request).await }
    })
    .await
    .unwrap_or_else(|s| panic!("expected {what} to be answered, got {s:?}"))
}

/// The leader of `scope`'s group once the live nodes agree on one other
/// than `old`.
async fn leader_other_than(cluster: &Cluster, scope: &str, old: u64) -> u64 {
    let deadline = Instant::now() + ELECTION_TIMEOUT;
    loop {
        let leader = cluster.leader_of(scope).await;
        if leader != old {
            return leader;
        }
        assert!(
            Instant::now() < deadline,
            "expected a leader other than node {old} within {ELECTION_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A limit-1 key is held. The client's acquire (key K) goes to the
/// leader, which is paused before it reads it; a new leader is elected,
/// the client's retry with K there is denied, and the holder releases.
/// When the old leader resumes, it reads the original attempt and passes
/// it to the new leader, after the release: it must be answered with the
/// recorded denial (or fail), never granted, and the key must stay free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_retry_is_never_followed_by_a_grant_of_its_original_attempt() {
    let mut cluster = Cluster::start(ClusterConfig::default()).await;
    let scope = "acct-denied-retry";
    let old = cluster.leader_of(scope).await;
    let holder = match acquire_via(&cluster, old, acquire(scope, "holder"), "the holder").await {
        v1::AcquireResponse {
            result: Some(acquire_response::Result::Granted(g)),
            ..
        } => g,
        other => panic!("expected the holder to be granted, got {other:?}"),
    };

    // The original attempt travels on a connection made before the pause,
    // so it waits in the paused node's socket rather than in a connect.
    let original_client = cluster.client_with_timeout(old, CALL_TIMEOUT);
    original_client
        .clone()
        .get_slot_map(v1::GetSlotMapRequest {})
        .await
        .expect("the old leader answers before its pause");
    cluster.pause(old);
    let original = tokio::spawn(async move {
        let mut client = original_client;
        client.acquire(acquire(scope, "attempt")).await
    });

    let new = leader_other_than(&cluster, scope, old).await;
    let retry = acquire_via(&cluster, new, acquire(scope, "attempt"), "the retry").await;
    assert!(
        matches!(retry.result, Some(acquire_response::Result::Denied(_))),
        "expected the retry to be denied while the holder holds the key, got {retry:?}"
    );
    let released = retry_transient("the holder's release", CALL_TIMEOUT, || {
        let mut client = cluster.client(new);
        let request = v1::ReleaseRequest {
            scope: scope.into(),
            lease_id: holder.lease_id,
            idempotency_key: "holder-release".into(),
        };
        async move { client.release(request).await }
    })
    .await
    .expect("the holder's release");
    assert!(released.was_held, "expected the holder's lease to be held");

    cluster.resume(old);
    let answer = original.await.expect("the original attempt's task");
    match &answer {
        Ok(reply) => {
            let reply = reply.get_ref();
            assert!(
                matches!(reply.result, Some(acquire_response::Result::Denied(_))) && reply.replayed,
                "expected the original attempt to be answered with the recorded denial, got \
                 {reply:?}"
            );
        }
        // An attempt whose outcome is unknown to its caller is fine, so
        // long as it took nothing: the key's state says.
        Err(status) => eprintln!("the original attempt failed: {status:?}"),
    }

    let inspect = retry_transient("Inspect of the key", CALL_TIMEOUT, || {
        let mut client = cluster.client(new);
        let request = v1::InspectRequest {
            scope: scope.into(),
            kind: v1::ConstraintKind::Concurrency as i32,
            key: "slot".into(),
        };
        async move { client.inspect(request).await }
    })
    .await
    .expect("Inspect of the key");
    assert!(
        inspect.holders.is_empty() && inspect.used == 0,
        "expected no holder of the key once the holder released, got {inspect:?}"
    );
    let fresh = acquire_via(&cluster, new, acquire(scope, "fresh"), "a new attempt").await;
    assert!(
        matches!(fresh.result, Some(acquire_response::Result::Granted(_))),
        "expected a new attempt to find the key's unit free, got {fresh:?}"
    );
}

/// An idempotency key names one attempt: under the caller's own key a
/// denial stands, also once capacity frees, and counts its retry time
/// down; the same request without a key is a new attempt with each call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_attempt_stays_denied_and_each_call_is_a_new_attempt() {
    let cluster = Cluster::start(ClusterConfig::default()).await;
    let client = cluster.rust_client(CALL_TIMEOUT).await;
    let scope = "acct-client-denied";
    let request = || {
        Acquire::new(scope)
            .concurrency("one", 1)
            .ttl(Duration::from_secs(60))
    };
    let Acquired::Granted(holder) = client.acquire(request()).await.unwrap() else {
        panic!("expected a grant on an idle key");
    };
    let keyed = request().idempotency_key("attempt-1");
    let Acquired::Denied(first) = client.acquire(keyed.clone()).await.unwrap() else {
        panic!("expected the keyed attempt to be denied while the key is held");
    };
    let unkeyed = request();
    let denied = client.acquire(unkeyed.clone()).await.unwrap();
    assert!(
        matches!(denied, Acquired::Denied(_)),
        "expected {denied:?} to be a denial"
    );
    holder.release().await.expect("release succeeds");

    let again = client.acquire(keyed).await.unwrap();
    let Acquired::Denied(replayed) = again else {
        panic!("expected the denial under its key to stand, got {again:?}");
    };
    assert!(
        replayed.retry_after_ms <= first.retry_after_ms,
        "expected the replayed retry time to count down: {replayed:?} after {first:?}"
    );
    let granted = client.acquire(unkeyed).await.unwrap();
    let Acquired::Granted(lease) = granted else {
        panic!("expected a new call of the same request, a new attempt, granted: {granted:?}");
    };
    assert!(!lease.replayed(), "expected a new attempt, not a replay");
}
