//! Lease time is honest across leader changes, on a real three-node
//! cluster: no lease is treated as expired before its TTL has passed on a
//! correct clock (less the documented bound, twice `max_clock_offset_ms`),
//! whether the leader's clock is stepped ahead or the leader is paused past
//! the election timeout; and no second holder appears.

mod support;

use std::time::{Duration, Instant};

use leasehold::proto::v1::{self, acquire_response};
use support::{concurrency_acquire, retry_transient, Cluster, ClusterConfig};

/// The server's default `max_clock_offset_ms`.
const MAX_CLOCK_OFFSET: Duration = Duration::from_millis(250);

const TTL: Duration = Duration::from_millis(3_000);

/// Long enough for an election and the retries around it.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

const SCOPE: &str = "tenant";

fn acquire(idem: &str) -> v1::AcquireRequest {
    let ttl_ms = u64::try_from(TTL.as_millis()).expect("the ttl fits");
    concurrency_acquire(SCOPE, "slot", 1, idem, ttl_ms, None)
}

/// Acquires with key `idem` through node `via`, retrying transient errors;
/// whether it was granted, and when the answer arrived.
async fn try_acquire(cluster: &Cluster, via: u64, idem: &str) -> (bool, Instant) {
    let reply = retry_transient("an acquire", CALL_TIMEOUT, || {
        let mut client = cluster.client(via);
        async move { client.acquire(acquire(idem)).await }
    })
    .await
    .unwrap_or_else(|s| panic!("expected acquire {idem} to be answered: {s}"));
    let granted = matches!(reply.result, Some(acquire_response::Result::Granted(_)));
    (granted, Instant::now())
}

/// Takes the key's only unit through `leader`; returns when the request
/// was sent, before which the lease cannot have started.
async fn hold(cluster: &Cluster, leader: u64) -> Instant {
    let sent = Instant::now();
    let (granted, _) = try_acquire(cluster, leader, "holder").await;
    assert!(granted, "expected the holder's acquire to be granted");
    sent
}

/// Tries fresh acquires through node `via` until one is granted, and
/// asserts none is granted before the holder's lease may end: `sent + TTL
/// - 2 × max offset`. Then asserts the grant is the only holder.
async fn no_grant_before_the_lease_ends(cluster: &Cluster, via: u64, sent: Instant) {
    let earliest = sent + TTL - 2 * MAX_CLOCK_OFFSET;
    let give_up = sent + TTL + Duration::from_secs(15);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (granted, answered) = try_acquire(cluster, via, &format!("probe-{attempt}")).await;
        if granted {
            assert!(
                answered >= earliest,
                "a second holder was granted {:?} after the first lease was requested, \
                 before its ttl of {TTL:?} less {:?} had passed",
                answered - sent,
                2 * MAX_CLOCK_OFFSET
            );
            break;
        }
        assert!(
            Instant::now() < give_up,
            "expected the key to be granted again once the lease ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (again, _) = try_acquire(cluster, via, "after").await;
    assert!(!again, "expected the key's one unit to have one holder");
}

/// The leader's clock jumps 10 s ahead while it holds a group with a live
/// lease: it stops stamping at once, says why on /ready and steps down; the
/// lease lasts its ttl at the next leader. Back in step, it is ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stepped_ahead_steps_down_and_no_lease_ends_early() {
    let config = ClusterConfig {
        groups: 1,
        test_clocks: true,
        ..ClusterConfig::default()
    };
    let mut cluster = Cluster::start(config).await;
    let leader = cluster.leader_of(SCOPE).await;
    let other = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    let sent = hold(&cluster, leader).await;

    cluster.step_clock(leader, 10_000);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (status, body) = cluster.readiness(leader).await;
        if status == 503 && body.contains("clock") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "expected node {leader} to report its clock on /ready; got {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    no_grant_before_the_lease_ends(&cluster, other, sent).await;
    let next = cluster.leader_of(SCOPE).await;
    assert_ne!(
        next, leader,
        "expected the stepped node to have stepped down"
    );

    cluster.step_clock(leader, 0);
    cluster.wait_ready(leader, Duration::from_secs(10)).await;
}

/// The leader is paused (SIGSTOP) past the election timeout while it holds
/// a group with a live lease, then resumed: the lease lasts its ttl at the
/// next leader, and the resumed node serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_costs_no_lease_its_ttl() {
    let config = ClusterConfig {
        groups: 1,
        ..ClusterConfig::default()
    };
    let mut cluster = Cluster::start(config).await;
    let leader = cluster.leader_of(SCOPE).await;
    let other = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    let sent = hold(&cluster, leader).await;

    cluster.pause(leader);
    no_grant_before_the_lease_ends(&cluster, other, sent).await;
    cluster.resume(leader);
    cluster.wait_ready(leader, Duration::from_secs(10)).await;
}
