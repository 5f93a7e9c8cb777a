//! Waiting acquires and operator actions against a real three-node cluster,
//! through the Rust client: arrival order, GCRA admission times, exact
//! retry times when a wait runs out, fair shares across tenants, and
//! pause / resume / pin / reset of a key.

mod support;

use std::time::{Duration, Instant};

use leasehold::client::{Acquire, Acquired, Client, Lease};
use leasehold::proto::v1::{self, ConstraintKind, InspectRequest, KeyAction};
use support::{Cluster, ClusterConfig};
use tokio::sync::mpsc;

/// Long enough for every wait here (at most 15 s) and the retries around it.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

fn granted(acquired: Result<Acquired, tonic::Status>, what: &str) -> Lease {
    match acquired {
        Ok(Acquired::Granted(lease)) => lease,
        Ok(Acquired::Denied(d)) => panic!("expected {what} to be granted, got denied: {d:?}"),
        Err(e) => panic!("expected {what} to be granted, got {e}"),
    }
}

fn denied(acquired: Result<Acquired, tonic::Status>, what: &str) -> v1::Denial {
    match acquired {
        Ok(Acquired::Denied(d)) => d,
        Ok(Acquired::Granted(lease)) => {
            panic!(
                "expected {what} to be denied, got lease {}",
                lease.lease_id()
            )
        }
        Err(e) => panic!("expected {what} to be denied, got {e}"),
    }
}

async fn inspect(
    client: &Client,
    scope: &str,
    kind: ConstraintKind,
    key: &str,
) -> v1::InspectResponse {
    client
        .inspect(InspectRequest {
            scope: scope.into(),
            kind: kind as i32,
            key: key.into(),
        })
        .await
        .expect("inspect succeeds")
}

/// Waits until the leader reports `n` acquires parked on `key`.
async fn until_parked(client: &Client, scope: &str, key: &str, n: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiters = inspect(client, scope, ConstraintKind::Concurrency, key)
            .await
            .waiters;
        if waiters == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} waiters parked on {key}, Inspect says {waiters}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts a waiting acquire of `key` (limit 1) that reports its lease on `tx`.
fn spawn_waiter<T: Send + 'static>(
    client: &Client,
    request: Acquire,
    tag: T,
    tx: &mpsc::UnboundedSender<(T, Lease)>,
) {
    let client = client.clone();
    let tx = tx.clone();
    tokio::spawn(async move {
        let lease = granted(client.acquire(request).await, "a waiter");
        let _ = tx.send((tag, lease));
    });
}

async fn next_grant<T>(rx: &mut mpsc::UnboundedReceiver<(T, Lease)>) -> (T, Lease) {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("expected a waiter to be granted within 5 s of a release")
        .expect("waiters answer")
}

/// Six acquires parked on a concurrency-1 key are granted one per release,
/// in the order they arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_acquires_are_granted_in_arrival_order() {
    let cluster = Cluster::start(ClusterConfig::default()).await;
    let client = cluster.rust_client(CALL_TIMEOUT).await;
    let scope = "acct-fifo";
    let one = || {
        Acquire::new(scope)
            .concurrency("one", 1)
            .ttl(Duration::from_secs(60))
    };
    let mut held = granted(client.acquire(one()).await, "the first acquire");

    let (tx, mut rx) = mpsc::unbounded_channel();
    for i in 0..6u32 {
        spawn_waiter(&client, one().wait(Duration::from_secs(15)), i, &tx);
        until_parked(&client, scope, "one", i + 1).await;
    }
    let mut order = Vec::new();
    for _ in 0..6 {
        held.release().await.expect("the holder releases");
        let (i, lease) = next_grant(&mut rx).await;
        order.push(i);
        held = lease;
    }
    assert_eq!(
        order,
        [0, 1, 2, 3, 4, 5],
        "expected first come, first served"
    );
    until_parked(&client, scope, "one", 0).await;
}

/// Waiters pass the turn once their acquire is proposed, so when four
/// units free at once, four waiters go to Raft together: still exactly the
/// first four to arrive, and applied in arrival order (lease ids are
/// handed out in apply order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freed_units_go_to_the_first_waiters_in_arrival_order() {
    let cluster = Cluster::start(ClusterConfig::default()).await;
    let client = cluster.rust_client(CALL_TIMEOUT).await;
    let scope = "acct-fifo-many";
    let four = || {
        Acquire::new(scope)
            .concurrency("four", 4)
            .ttl(Duration::from_secs(60))
    };
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(granted(client.acquire(four()).await, "a first acquire"));
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    for i in 0..12u32 {
        spawn_waiter(&client, four().wait(Duration::from_secs(15)), i, &tx);
        until_parked(&client, scope, "four", i + 1).await;
    }
    for round in 0..3u32 {
        let releases: Vec<_> = held
            .drain(..)
            .map(|lease| {
                tokio::spawn(async move {
                    lease.release().await.expect("a holder releases");
                })
            })
            .collect();
        for release in releases {
            release.await.expect("a release task");
        }
        let mut grants = Vec::new();
        for _ in 0..4 {
            grants.push(next_grant(&mut rx).await);
        }
        grants.sort_by_key(|(i, _)| *i);
        let order: Vec<u32> = grants.iter().map(|(i, _)| *i).collect();
        let first = 4 * round;
        assert_eq!(
            order,
            (first..first + 4).collect::<Vec<_>>(),
            "expected round {round} to grant the next four waiters to arrive"
        );
        let ids: Vec<u64> = grants.iter().map(|(_, l)| l.lease_id()).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "expected leases applied in arrival order, got ids {ids:?} for waiters {order:?}"
        );
        held = grants.into_iter().map(|(_, lease)| lease).collect();
    }
    until_parked(&client, scope, "four", 0).await;
}

/// A throttle of 5 per second without burst admits one unit every 200 ms:
/// five waiters behind an admitted acquire are granted at exactly those
/// instants (server time), not sooner and not much later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttle_waiters_are_admitted_at_gcra_times() {
    let cluster = Cluster::start(ClusterConfig::default()).await;
    let client = cluster.rust_client(CALL_TIMEOUT).await;
    let scope = "acct-paced";
    let paced = || {
        Acquire::new(scope)
            .throttle("paced", 5, 1_000, 0)
            .ttl(Duration::from_secs(60))
    };
    let first = granted(client.acquire(paced()).await, "the first throttled acquire");
    let (tx, mut rx) = mpsc::unbounded_channel();
    for i in 0..5 {
        spawn_waiter(&client, paced().wait(Duration::from_secs(5)), i, &tx);
    }
    let mut at = vec![first.grant().granted_at_ms];
    for _ in 0..5 {
        let (_, lease) = next_grant(&mut rx).await;
        at.push(lease.grant().granted_at_ms);
    }
    at.sort_unstable();
    let gaps: Vec<u64> = at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|g| (200..300).contains(g)),
        "expected admissions 200 ms apart (emission interval), within 100 ms of \
         their GCRA time; gaps were {gaps:?}"
    );
}

/// A waiter whose wait runs out gets the ordinary denial, with the time
/// until the holder's lease expires as its retry_after_ms. The denial is
/// its key's answer: a retry with the key replays it at once, waiting no
/// more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_that_runs_out_says_when_to_retry() {
    let cluster = Cluster::start(ClusterConfig::default()).await;
    let client = cluster.rust_client(CALL_TIMEOUT).await;
    let scope = "acct-deadline";
    let one = |ttl_ms| {
        Acquire::new(scope)
            .concurrency("one", 1)
            .ttl(Duration::from_millis(ttl_ms))
    };
    let held = granted(client.acquire(one(3_000)).await, "the holder");
    let expires_at_ms = held.grant().expires_at_ms;
    let started = Instant::now();
    let waiter = |wait_ms| {
        one(1_000)
            .wait(Duration::from_millis(wait_ms))
            .idempotency_key("waiter")
    };
    let denial = denied(
        client.acquire(waiter(500)).await,
        "a waiter whose 500 ms run out",
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "expected the denial only once the wait ran out, got it after {waited:?}"
    );
    let retry = denial.retry_after_ms.expect("a retry time");
    let blocking = &denial.blocking[0];
    assert_eq!(
        (blocking.key.as_str(), blocking.used, blocking.limit),
        ("one", 1, 1)
    );
    // Judged when the wait ran out: about 2.5 s before the holder's expiry.
    assert!(
        (1_900..=2_500).contains(&retry),
        "expected retry_after_ms ≈ holder expiry − now ≈ 2500, got {retry}"
    );
    assert_eq!(blocking.retry_after_ms, Some(retry));
    let retried = Instant::now();
    let replayed = denied(
        client.acquire(waiter(2_000)).await,
        "the waiter retried with its key",
    );
    let answered = retried.elapsed();
    assert!(
        answered < Duration::from_millis(1_500),
        "expected the recorded denial at once, not after the 2 s wait; took {answered:?}"
    );
    let counted_down = replayed.retry_after_ms.expect("a retry time");
    assert!(
        counted_down <= retry && replayed.blocking[0].used == 1,
        "expected the denial's figures with its retry time counted down from {retry}, got \
         {replayed:?}"
    );
    // It is exact: an acquire at expires_at_ms is granted.
    let granted_after = granted(
        client
            .acquire(one(1_000).wait(Duration::from_millis(3_000)))
            .await,
        "an acquire waiting past the holder's expiry",
    );
    assert!(
        granted_after.grant().granted_at_ms >= expires_at_ms,
        "granted at {} before the holder expired at {expires_at_ms}",
        granted_after.grant().granted_at_ms
    );
    held.detach();
}

/// One tenant parks 100 waiters on a concurrency-1 key, another 5: with
/// fairness keys they take turns, so the quiet tenant's five are granted
/// within the first ten grants instead of after the noisy tenant's hundred.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_tenant_gets_its_share_beside_a_noisy_one() {
    let cluster = Cluster::start(ClusterConfig::default()).await;
    let client = cluster.rust_client(CALL_TIMEOUT).await;
    let scope = "acct-tenants";
    let one = || {
        Acquire::new(scope)
            .concurrency("one", 1)
            .ttl(Duration::from_secs(60))
    };
    let mut held = granted(client.acquire(one()).await, "the holder");

    let (tx, mut rx) = mpsc::unbounded_channel();
    let waiting = |tenant: &str| one().wait(Duration::from_secs(15)).fairness_key(tenant);
    for _ in 0..100 {
        spawn_waiter(&client, waiting("noisy"), "noisy", &tx);
    }
    until_parked(&client, scope, "one", 100).await;
    for _ in 0..5 {
        spawn_waiter(&client, waiting("quiet"), "quiet", &tx);
    }
    until_parked(&client, scope, "one", 105).await;

    let mut tenants = Vec::new();
    for _ in 0..20 {
        held.release().await.expect("the holder releases");
        let (tenant, lease) = next_grant(&mut rx).await;
        tenants.push(tenant);
        held = lease;
    }
    let quiet: Vec<usize> = (0..tenants.len())
        .filter(|&i| tenants[i] == "quiet")
        .collect();
    let quiet_share = |n: usize| quiet.iter().filter(|&&i| i < n).count();
    assert_eq!(
        quiet.len(),
        5,
        "expected all 5 quiet waiters among the first 20 grants, got {tenants:?}"
    );
    assert_eq!(
        quiet_share(10),
        5,
        "expected the tenants to alternate (5 of the first 10 grants quiet), got {tenants:?}"
    );
    held.detach();
}

async fn admin(
    client: &Client,
    scope: &str,
    key: &str,
    action: KeyAction,
    pin: Option<u32>,
) -> v1::KeyAdmin {
    let reply = client
        .admin_key(v1::AdminKeyRequest {
            scope: scope.into(),
            kind: ConstraintKind::Concurrency as i32,
            key: key.into(),
            action: action as i32,
            pin: pin.map(|limit| v1::Constraint {
                kind: Some(v1::constraint::Kind::Concurrency(v1::Concurrency {
                    key: key.into(),
                    limit,
                })),
            }),
            idempotency_key: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("expected {action:?} to succeed, got {e}"));
    reply.admin.expect("the settings after the action")
}

/// Pause stops grants (the denial says so, waiters wait) and resume hands
/// the key to the waiter at once; a pinned limit overrides what requests
/// carry; reset frees a key whose holders vanished; every setting is
/// replicated, so it holds on a new leader after the old one is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_pin_and_reset_govern_a_key_across_leader_changes() {
    let mut cluster = Cluster::start(ClusterConfig::default()).await;
    let client = cluster.rust_client(CALL_TIMEOUT).await;
    let scope = "acct-admin";
    let jobs = |limit| {
        Acquire::new(scope)
            .concurrency("jobs", limit)
            .ttl(Duration::from_secs(60))
    };

    let paused = admin(&client, scope, "jobs", KeyAction::Pause, None).await;
    assert!(paused.paused);
    let denial = denied(client.acquire(jobs(5)).await, "an acquire on a paused key");
    assert!(
        denial.blocking[0].paused,
        "expected the denial to say the key is paused"
    );
    assert_eq!(
        denial.retry_after_ms, None,
        "time alone never resumes a paused key"
    );

    let (tx, mut rx) = mpsc::unbounded_channel();
    spawn_waiter(
        &client,
        jobs(5).wait(Duration::from_secs(10)),
        "waiter",
        &tx,
    );
    until_parked(&client, scope, "jobs", 1).await;
    let info = inspect(&client, scope, ConstraintKind::Concurrency, "jobs").await;
    assert!(
        info.admin.as_ref().is_some_and(|a| a.paused),
        "Inspect shows the pause"
    );

    // The setting lives in the replicated state: a new leader keeps it.
    let leader = cluster.leader_of(scope).await;
    cluster.kill(leader);
    let denial = denied(
        client.acquire(jobs(5)).await,
        "an acquire after the leader died",
    );
    assert!(
        denial.blocking[0].paused,
        "expected the new leader to keep the pause"
    );

    let resumed = admin(&client, scope, "jobs", KeyAction::Resume, None).await;
    assert!(!resumed.paused);
    // The parked waiter was re-parked on the new leader by the client, and
    // is granted now.
    let (_, waiter_lease) = next_grant(&mut rx).await;

    // Pinned to 2: requests carrying 5 get two leases (the waiter's and one).
    let pinned = admin(&client, scope, "jobs", KeyAction::Pin, Some(2)).await;
    assert!(pinned.pinned.is_some());
    let second = granted(
        client.acquire(jobs(5)).await,
        "the second lease under the pin",
    );
    let denial = denied(
        client.acquire(jobs(5)).await,
        "a third lease under a pin of 2",
    );
    assert_eq!((denial.blocking[0].used, denial.blocking[0].limit), (2, 2));
    let info = inspect(&client, scope, ConstraintKind::Concurrency, "jobs").await;
    assert_eq!((info.used, info.limit), (2, 2), "Inspect judges by the pin");

    // Reset: the holders stop counting; their leases live on and release.
    admin(&client, scope, "jobs", KeyAction::Reset, None).await;
    let info = inspect(&client, scope, ConstraintKind::Concurrency, "jobs").await;
    assert_eq!(info.used, 0, "expected reset to forget the holders");
    assert!(
        info.admin.as_ref().is_some_and(|a| a.pinned.is_some()),
        "reset keeps the pin"
    );
    let a = granted(client.acquire(jobs(5)).await, "an acquire after the reset");
    let b = granted(
        client.acquire(jobs(5)).await,
        "a second acquire after the reset",
    );
    let released = waiter_lease
        .release()
        .await
        .expect("a reset holder releases");
    assert!(released.was_held, "the lease outlived the reset");
    second.release().await.expect("a reset holder releases");
    let info = inspect(&client, scope, ConstraintKind::Concurrency, "jobs").await;
    assert_eq!(
        info.used, 2,
        "releasing reset holders frees nothing they no longer count"
    );

    // Unpinned: the requests' own limit of 5 rules again.
    admin(&client, scope, "jobs", KeyAction::Unpin, None).await;
    let c = granted(client.acquire(jobs(5)).await, "a third lease once unpinned");
    let info = inspect(&client, scope, ConstraintKind::Concurrency, "jobs").await;
    assert_eq!((info.used, info.limit), (3, 5));
    assert_eq!(info.admin, Some(v1::KeyAdmin::default()));
    for lease in [a, b, c] {
        lease.release().await.expect("release");
    }
}
