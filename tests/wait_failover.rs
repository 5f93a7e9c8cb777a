//! Waiting acquires across deadlines and leader changes, on a real
//! three-node cluster: a call's deadline is answered DEADLINE_EXCEEDED when
//! it passes, wherever the call waits; a leader that stops or dies does not
//! cost a waiter its wait: it carries on at the next leader and is granted
//! there once capacity frees.

mod support;

use std::time::{Duration, Instant};

use leasehold::proto::v1::{self, acquire_response};
use support::{concurrency_acquire, retry_transient, Cluster, ClusterConfig};
use tonic::Code;

/// Long enough for an election and the retries around it.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

fn acquire(scope: &str, idem: &str, wait_ms: Option<u64>) -> v1::AcquireRequest {
    concurrency_acquire(scope, "slot", 1, idem, 60_000, wait_ms)
}

fn grant_of(reply: &v1::AcquireResponse, what: &str) -> v1::Grant {
    match &reply.result {
        Some(acquire_response::Result::Granted(g)) => g.clone(),
        other => panic!("expected {what} to be granted, got {other:?}"),
    }
}

/// Holds the only unit of `scope`'s key, acquired through node `via`.
async fn hold(cluster: &Cluster, via: u64, scope: &str) -> v1::Grant {
    let reply = retry_transient("the holder's acquire", CALL_TIMEOUT, || {
        let mut client = cluster.client(via);
        async move { client.acquire(acquire(scope, "holder", None)).await }
    })
    .await
    .expect("the holder's acquire");
    grant_of(&reply, "the holder's acquire")
}

/// Releases `lease` through node `via`, retrying across a leader change.
async fn release(cluster: &Cluster, via: u64, scope: &str, lease: u64) {
    let reply = retry_transient("the holder's release", CALL_TIMEOUT, || {
        let mut client = cluster.client(via);
        let request = v1::ReleaseRequest {
            scope: scope.into(),
            lease_id: lease,
            idempotency_key: "holder-release".into(),
        };
        async move { client.release(request).await }
    })
    .await
    .expect("the holder's release");
    assert!(reply.was_held, "expected the holder's lease to be held");
}

/// A parked acquire with a call deadline shorter than its wait: through
/// the leader and through a follower, unary, the answer is
/// DEADLINE_EXCEEDED at the deadline, not NOT_LEADER and not at the end of
/// the wait; and neither call takes capacity that frees afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_is_answered_deadline_exceeded_wherever_the_call_waits() {
    let cluster = Cluster::start(ClusterConfig::default()).await;
    let scope = "acct-deadline";
    let leader = cluster.leader_of(scope).await;
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    let holder = hold(&cluster, leader, scope).await;

    for (via, what) in [(leader, "the leader"), (follower, "a follower")] {
        let mut request = tonic::Request::new(acquire(scope, &format!("via-{via}"), Some(8_000)));
        request.set_timeout(Duration::from_millis(500));
        let sent = Instant::now();
        let result = cluster.client(via).acquire(request).await;
        let waited = sent.elapsed();
        let status = result.expect_err("a call past its deadline fails");
        // The node answers DEADLINE_EXCEEDED; tonic's client reports its
        // own timer's expiry, at the same instant, as CANCELLED.
        let deadline_code = status.code() == Code::DeadlineExceeded
            || (status.code() == Code::Cancelled && status.message() == "Timeout expired");
        assert!(
            deadline_code,
            "expected the deadline's expiry through {what}, got {status:?}"
        );
        assert!(
            waited < Duration::from_secs(4),
            "expected the answer through {what} at the 500 ms deadline, well before the 8 s \
             wait ran out; took {waited:?}"
        );
    }

    release(&cluster, leader, scope, holder.lease_id).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reply = cluster
        .client(leader)
        .acquire(acquire(scope, "after", None))
        .await
        .expect("an acquire after the release");
    grant_of(
        &reply.into_inner(),
        "an acquire once the timed-out waiters are gone",
    );
}

/// How the leader goes away.
enum Stop {
    /// SIGTERM: it hands leadership over and exits.
    Term,
    /// SIGKILL.
    Kill,
}

/// A waiter parked on the leader through a follower, while the leader
/// stops (SIGTERM, `stop`) or dies (SIGKILL): the waiter carries on at the
/// next leader and is granted there soon after the holder releases, well
/// within its wait.
async fn waiter_outlives_its_leader(stop: Stop) {
    let mut cluster = Cluster::start(ClusterConfig::default()).await;
    let scope = "acct-wait-failover";
    let leader = cluster.leader_of(scope).await;
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    let holder = hold(&cluster, follower, scope).await;

    let mut client = cluster.client_with_timeout(follower, CALL_TIMEOUT);
    let waiter = tokio::spawn(async move {
        let request = acquire(scope, "waiter", Some(15_000));
        client.acquire(request).await
    });
    // Parked on the leader: Inspect, served by the leader, counts it.
    let parked_by = Instant::now() + Duration::from_secs(10);
    loop {
        let inspect = cluster
            .client(leader)
            .inspect(v1::InspectRequest {
                scope: scope.into(),
                kind: v1::ConstraintKind::Concurrency as i32,
                key: "slot".into(),
            })
            .await
            .expect("inspect on the leader");
        if inspect.into_inner().waiters == 1 {
            break;
        }
        assert!(Instant::now() < parked_by, "expected the waiter to park");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    match stop {
        Stop::Term => {
            cluster.terminate(leader);
            let exit = cluster.wait_exit(leader, CALL_TIMEOUT).await;
            assert!(exit.success(), "expected a clean exit, got {exit}");
        }
        Stop::Kill => cluster.kill(leader),
    }
    let elected_by = Instant::now() + Duration::from_secs(10);
    let next = loop {
        let next = cluster.leader_of(scope).await;
        if next != leader {
            break next;
        }
        assert!(Instant::now() < elected_by, "expected a new leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    release(&cluster, follower, scope, holder.lease_id).await;
    let released = Instant::now();

    let reply = waiter
        .await
        .expect("the waiter's task")
        .unwrap_or_else(|s| panic!("expected the waiter to carry on at node {next}, got {s:?}"));
    let granted_after = released.elapsed();
    let reply = reply.into_inner();
    grant_of(&reply, "the waiter after the leader change");
    assert_eq!(
        reply.served_by.map(|s| s.leader_node_id),
        Some(next),
        "expected the new leader to grant the waiter"
    );
    assert!(
        granted_after < Duration::from_secs(3),
        "expected the waiter granted soon after capacity freed at the new leader, well within \
         its 15 s wait; took {granted_after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_carries_on_when_its_leader_stops() {
    waiter_outlives_its_leader(Stop::Term).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_carries_on_when_its_leader_dies() {
    waiter_outlives_its_leader(Stop::Kill).await;
}
