//! The Rust client against real three-node clusters: leader changes show
//! only as latency, leases are kept alive and released on drop.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use leasehold::client::{Acquire, Acquired, Client};
use leasehold::proto::v1::{ConstraintKind, InspectRequest};
use support::{Cluster, ClusterConfig};

/// The client's default call timeout.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

async fn holders(client: &Client, scope: &str, key: &str) -> Vec<u64> {
    let reply = client
        .inspect(InspectRequest {
            scope: scope.into(),
            kind: ConstraintKind::Concurrency as i32,
            key: key.into(),
        })
        .await
        .expect("inspect succeeds");
    reply.holders.iter().map(|h| h.lease_id).collect()
}

/// One grant as the workers saw it: certainly held from the grant's
/// arrival until the release was sent.
#[derive(Clone, Copy, Debug)]
struct Held {
    from: Instant,
    to: Instant,
    fencing_token: u64,
}

/// Four workers cycle acquire + release on one key with limit 2 while the
/// group's leader is SIGKILLed: no call fails, the limit holds at every
/// instant, and fencing tokens never repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_is_only_latency_and_never_a_double_grant() {
    const LIMIT: usize = 2;
    let mut cluster = Cluster::start(ClusterConfig::default()).await;
    let client = cluster.rust_client(CALL_TIMEOUT).await;
    let scope = "acct-client-failover";
    let leader = cluster.leader_of(scope).await;

    let held = Arc::new(Mutex::new(Vec::<Held>::new()));
    let stop_at = Instant::now() + Duration::from_secs(4);
    let mut workers = Vec::new();
    for _ in 0..4 {
        let client = client.clone();
        let held = Arc::clone(&held);
        workers.push(tokio::spawn(async move {
            let mut denials = 0u64;
            while Instant::now() < stop_at {
                let request = Acquire::new(scope)
                    .concurrency("slots", LIMIT as u32)
                    .ttl(Duration::from_secs(60));
                match client.acquire(request).await {
                    Ok(Acquired::Granted(lease)) => {
                        let from = Instant::now();
                        let token = lease.fencing_token();
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        let to = Instant::now();
                        lease.release().await.unwrap_or_else(|e| {
                            panic!("expected release to succeed across the failover, got {e}")
                        });
                        held.lock().unwrap().push(Held {
                            from,
                            to,
                            fencing_token: token,
                        });
                    }
                    Ok(Acquired::Denied(_)) => {
                        denials += 1;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Err(e) => panic!("expected no error across the failover, got {e}"),
                }
            }
            denials
        }));
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed_at = Instant::now();
    cluster.kill(leader);
    for w in workers {
        w.await.expect("a worker finished without panicking");
    }

    let held = held.lock().unwrap().clone();
    let after_kill = held.iter().filter(|h| h.from > killed_at).count();
    assert!(
        after_kill > 0,
        "expected grants after leader {leader} was killed, got none of {}",
        held.len()
    );
    // At no instant more than LIMIT leases certainly held: sweep the
    // interval ends in time order.
    let mut events: Vec<(Instant, i32)> = held
        .iter()
        .flat_map(|h| [(h.from, 1), (h.to, -1)])
        .collect();
    events.sort_by_key(|&(t, delta)| (t, delta));
    let mut open = 0;
    for (t, delta) in events {
        open += delta;
        assert!(
            open <= LIMIT as i32,
            "expected at most {LIMIT} leases held at once, {open} were at {:?} after the kill",
            t.checked_duration_since(killed_at)
        );
    }
    let mut tokens: Vec<u64> = held.iter().map(|h| h.fencing_token).collect();
    tokens.sort_unstable();
    let before = tokens.len();
    tokens.dedup();
    assert_eq!(
        before,
        tokens.len(),
        "expected every fencing token to be unique"
    );
}

/// A kept-alive lease outlives its ttl; a dropped one is released without
/// waiting for its ttl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_extends_and_drop_releases() {
    let cluster = Cluster::start(ClusterConfig::default()).await;
    let client = cluster.rust_client(CALL_TIMEOUT).await;
    let scope = "acct-client-lease";

    let acquire = |key: &str, ttl_ms| {
        Acquire::new(scope)
            .concurrency(key, 5)
            .ttl(Duration::from_millis(ttl_ms))
    };
    let Acquired::Granted(lease) = client.acquire(acquire("kept", 1500)).await.unwrap() else {
        panic!("expected a grant on an idle key");
    };
    assert!(lease.is_valid(), "expected a fresh lease to be valid");
    let id = lease.lease_id();
    let (lease, mut lost) = lease.keep_alive(0.3);
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert!(
        lost.try_recv().is_err(),
        "expected the kept-alive lease not to be lost"
    );
    assert!(
        lease.is_valid(),
        "expected extensions to keep the lease valid"
    );
    assert_eq!(
        holders(&client, scope, "kept").await,
        vec![id],
        "expected the lease to be held three ttls after its grant"
    );
    let released = lease.release().await.expect("release succeeds");
    assert!(
        released.was_held,
        "expected the release to find the lease held"
    );
    assert!(holders(&client, scope, "kept").await.is_empty());

    let Acquired::Granted(dropped) = client.acquire(acquire("dropped", 60_000)).await.unwrap()
    else {
        panic!("expected a grant on an idle key");
    };
    assert_eq!(holders(&client, scope, "dropped").await.len(), 1);
    drop(dropped);
    let deadline = Instant::now() + Duration::from_secs(2);
    while !holders(&client, scope, "dropped").await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "expected a dropped lease (ttl 60 s) to be released within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Generated idempotency keys are unique: two acquires, two leases.
    let a = client.acquire(acquire("keys", 60_000)).await.unwrap();
    let b = client.acquire(acquire("keys", 60_000)).await.unwrap();
    let (Acquired::Granted(a), Acquired::Granted(b)) = (a, b) else {
        panic!("expected two grants under limit 5");
    };
    assert_ne!(a.lease_id(), b.lease_id());
}

/// A waiting acquire outlasts the per-attempt timeout (2 s): it is parked
/// on the leader and granted when the holder releases 2.5 s later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_acquire_outlasts_the_attempt_timeout() {
    let cluster = Cluster::start(ClusterConfig::default()).await;
    let client = cluster.rust_client(CALL_TIMEOUT).await;
    let scope = "acct-client-wait";
    let request = || {
        Acquire::new(scope)
            .concurrency("one", 1)
            .ttl(Duration::from_secs(60))
    };
    let Acquired::Granted(holder) = client.acquire(request()).await.unwrap() else {
        panic!("expected a grant on an idle key");
    };
    let waiter = {
        let client = client.clone();
        let request = request().wait(Duration::from_secs(5));
        tokio::spawn(async move { client.acquire(request).await })
    };
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        !waiter.is_finished(),
        "expected the waiter to still be parked"
    );
    holder.release().await.expect("release succeeds");
    let granted = tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .expect("expected the waiter to be answered soon after the release")
        .expect("the waiter task finishes")
        .expect("the waiting acquire succeeds");
    assert!(
        matches!(granted, Acquired::Granted(_)),
        "expected the waiter to be granted, got {granted:?}"
    );
}
