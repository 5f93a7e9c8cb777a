//! Whole-cluster tests: three `leasehold serve` processes on loopback,
//! crashed (SIGKILL), stopped (SIGTERM) and restarted from disk while
//! clients talk to any node.
//!
//! Each test names what the spec promises in its assertions; the harness
//! (tests/support) prints every node's log tail when one fails.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use leasehold::proto::v1::acquire_response::Result as AcquireResult;
use leasehold::proto::v1::constraint::Kind;
use leasehold::proto::v1::leasehold_client::LeaseholdClient;
use leasehold::proto::v1::{
    AcquireRequest, AcquireResponse, AdjustCapacityRequest, CapacityResponse, Concurrency,
    Constraint, ConstraintKind, Denial, ExtendRequest, ExtendResponse, Grant, Holder,
    InspectRequest, InspectResponse, RateLimit, ReleaseRequest, ReleaseResponse, Semaphore,
    ServedBy, SetCapacityRequest, Throttle,
};
use leasehold::wire::error_detail;
use support::{
    assert_same_state, create_log, describe_digests, free_ports, group_in, is_transient,
    leasehold_command, metric_sum, read_lossy, retry_transient, Cluster, ClusterConfig,
    ClusterDigests, CONVERGE_TIMEOUT, META_GROUP, READY_TIMEOUT,
};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Per-attempt deadline while a group may have no leader.
const PROBE_RPC_TIMEOUT: Duration = Duration::from_secs(1);

/// How often a probe loop starts another attempt.
const PROBE_INTERVAL: Duration = Duration::from_millis(25);

/// How long a test keeps probing for a leader before it gives up (the
/// assertions on failover time are much tighter; this only bounds the wait
/// so that a slow failover is measured rather than hung on).
const PROBE_GIVE_UP: Duration = Duration::from_secs(10);

/// Requests retried across a leader change get this long.
const RETRY_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_and_limits_across_nodes() {
    let cluster = Cluster::start(ClusterConfig::default()).await;
    let scope = "acct-forwarding";
    let leader = cluster.leader_of(scope).await;
    let group = cluster.group_of(1, scope).await;
    assert_map_names_every_node(&cluster).await;
    let mut tokens = Vec::new();

    // Acquire, extend and release through every node: two of the three
    // forward to the leader, and every answer names it.
    for id in cluster.ids() {
        let mut client = cluster.client(id);
        let token = acquire_extend_release(&mut client, scope, id, (group, leader)).await;
        tokens.push(token);
    }

    // Concurrency limit 2, acquired through nodes 1 and 2: node 3 is denied.
    let limited = |id: u64| {
        acquire(
            scope,
            vec![concurrency("limited", 2)],
            30_000,
            &format!("limited-{id}"),
        )
    };
    let mut held = Vec::new();
    for id in [1, 2] {
        let what = format!("limited acquire through node {id}");
        let reply = call(&what, cluster.client(id).acquire(limited(id))).await;
        assert_served(reply.served_by.as_ref(), group, leader, &what);
        let grant = expect_grant(&reply, &what);
        tokens.push(grant.fencing_token);
        held.push(grant.clone());
    }
    let what = "third acquire of a limit-2 key, through node 3";
    let reply = call(what, cluster.client(3).acquire(limited(3))).await;
    assert_served(reply.served_by.as_ref(), group, leader, what);
    assert_full_concurrency_key(expect_denial(&reply, what), "limited", 2, 30_000);

    // Release through another node than the acquire: capacity is back.
    let what = "release through node 3 of a lease acquired through node 1";
    let released = call(
        what,
        cluster
            .client(3)
            .release(release(scope, held[0].lease_id, "limited-release-1")),
    )
    .await;
    assert!(released.was_held, "expected {what} to find the lease held");
    // The denied attempt stays denied: its key's retry replays the denial.
    // A new attempt, under a new key, is granted.
    let what = "retry of the denied acquire through node 3 after a release";
    let reply = call(what, cluster.client(3).acquire(limited(3))).await;
    assert!(
        reply.replayed,
        "expected the denial to be recorded, so {what} replays it"
    );
    assert_full_concurrency_key(expect_denial(&reply, what), "limited", 2, 30_000);
    let what = "a new attempt through node 3 after a release";
    let reply = call(what, cluster.client(3).acquire(limited(4))).await;
    assert!(!reply.replayed, "expected {what} to be a fresh attempt");
    tokens.push(expect_grant(&reply, what).fencing_token);

    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "expected fencing tokens of successive grants in one scope to strictly increase: {tokens:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_fails_over_within_two_seconds() {
    let mut cluster = Cluster::start(ClusterConfig::default()).await;
    let scope = "acct-failover";
    let leader = cluster.leader_of(scope).await;
    let survivors: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|&id| id != leader)
        .collect();
    let original = acquire(scope, vec![concurrency("held", 10)], 120_000, "failover-K");
    let what = "the acquire before the crash";
    let reply = call(what, cluster.client(survivors[0]).acquire(original.clone())).await;
    let grant = expect_grant(&reply, what).clone();
    let probe = cluster.client_with_timeout(survivors[0], PROBE_RPC_TIMEOUT);

    cluster.kill(leader);
    let killed_at = Instant::now();
    let FirstGrant {
        elapsed,
        served_by,
        errors,
    } = first_grant_after(&probe, scope, "failover-probe", killed_at).await;
    eprintln!("first grant {elapsed:?} after SIGKILL of leader {leader}");
    assert!(
        elapsed < Duration::from_secs(2),
        "expected node {} to grant in scope {scope} within 2 s of SIGKILL of leader {leader}, \
         took {elapsed:?}; errors on the way: {errors:#?}",
        survivors[0]
    );
    assert_ne!(
        served_by.leader_node_id, leader,
        "expected a new leader to serve, not the crashed node {leader}"
    );

    let inspect = inspect_concurrency(&mut cluster.client(survivors[0]), scope, "held").await;
    assert_eq!(
        inspect.holders,
        vec![holder_of(&grant)],
        "expected the lease granted before the crash to survive with its original expiry"
    );

    let what = format!(
        "retry of the original acquire through node {}",
        survivors[1]
    );
    let replay = call(&what, cluster.client(survivors[1]).acquire(original)).await;
    assert!(replay.replayed, "expected {what} to be a replay");
    let replayed_grant = expect_grant(&replay, &what);
    assert_eq!(
        (
            replayed_grant.lease_id,
            replayed_grant.fencing_token,
            replayed_grant.expires_at_ms
        ),
        (grant.lease_id, grant.fencing_token, grant.expires_at_ms),
        "expected {what} to return the original lease"
    );
    let after = inspect_concurrency(&mut cluster.client(survivors[1]), scope, "held").await;
    assert_eq!(
        after.used, 1,
        "expected the replay not to spend capacity twice: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_from_disk_keeps_acknowledged_state() {
    let mut cluster = Cluster::start(ClusterConfig::default()).await;
    let ids = cluster.ids();
    let scopes: Vec<String> = (0..6).map(|i| format!("restart-{i}")).collect();
    let long = acquire_in_each(&cluster, &scopes, "long", 600_000).await;
    let set_capacity = SetCapacityRequest {
        scope: scopes[0].clone(),
        key: "sem".into(),
        capacity: 7,
        idempotency_key: "capacity-7".into(),
    };
    let capacity = call(
        "SetCapacity",
        cluster.client(ids[1]).set_capacity(set_capacity.clone()),
    )
    .await;
    assert_eq!(
        (capacity.capacity, capacity.replayed),
        (7, false),
        "expected a first SetCapacity to set 7"
    );
    // Short leases last: they must still be live when the cluster crashes,
    // so that they are scavenged after the restart, by the new leaders.
    acquire_in_each(&cluster, &scopes, "short", 1_500).await;

    cluster.crash_and_restart_all().await;

    for (i, (request, grant)) in long.iter().enumerate() {
        let inspect =
            inspect_concurrency(&mut cluster.client(ids[i % 3]), &request.scope, "long").await;
        assert_eq!(
            inspect.holders,
            vec![holder_of(grant)],
            "expected the long lease in {} to survive a full-cluster crash with its expiry",
            request.scope
        );
        let what = format!(
            "replay of long acquire {} after restart",
            request.idempotency_key
        );
        let reply = call(
            &what,
            cluster.client(ids[(i + 1) % 3]).acquire(request.clone()),
        )
        .await;
        assert!(reply.replayed, "expected {what} to be a replay");
        let lease_id = expect_grant(&reply, &what).lease_id;
        assert_eq!(
            lease_id, grant.lease_id,
            "expected {what} to return the same lease"
        );
    }
    let replay = call(
        "SetCapacity replay",
        cluster.client(ids[2]).set_capacity(set_capacity),
    )
    .await;
    assert_eq!(
        (replay.capacity, replay.replayed),
        (7, true),
        "expected the SetCapacity replay after restart to say replayed, capacity 7"
    );

    wait_lease_records(&cluster, long.len() as u64, Duration::from_secs(10)).await;
    let mut leaders = BTreeSet::new();
    let mut scavenged = 0.0;
    for scope in &scopes {
        leaders.insert(cluster.leader_of(scope).await);
    }
    for &id in &leaders {
        scavenged += metric_sum(
            &cluster.metrics(id).await,
            "leasehold_scavenged_leases_total",
        );
    }
    assert!(
        scavenged > 0.0,
        "expected leasehold_scavenged_leases_total > 0 on the leaders {leaders:?} after the short leases expired"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_replica_catches_up_by_snapshot() {
    let config = ClusterConfig {
        snapshot_interval_entries: Some(20),
        ..ClusterConfig::default()
    };
    let mut cluster = Cluster::start(config).await;
    cluster.kill(3);

    // 4 workers x 40 acquire/release pairs = 320 commands through nodes 1
    // and 2, over 16 scopes.
    let mut workers = Vec::new();
    for worker in 0..4u64 {
        let clients = [cluster.client(1), cluster.client(2)];
        workers.push(tokio::spawn(acquire_release_loop(clients, worker, 40)));
    }
    for worker in workers {
        worker.await.expect("a workload task completes");
    }

    cluster.restart(3);
    cluster.wait_ready(3, READY_TIMEOUT).await;
    let digests = cluster.wait_digests_converge(Duration::from_secs(10)).await;
    assert_same_state(&digests, cluster.groups());
    let installed = metric_sum(
        &cluster.metrics(3).await,
        "leasehold_snapshots_installed_total",
    );
    assert!(
        installed > 0.0,
        "expected node 3 to catch up by at least one snapshot (leasehold_snapshots_installed_total > 0) \
         after 320 commands with --snapshot-interval-entries 20; got {installed}; digests:{}",
        describe_digests(&digests)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_hold_identical_state_after_random_workload() {
    let seed = std::env::var("LEASEHOLD_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x1ea5_e401d);
    eprintln!("random workload seed: {seed} (set LEASEHOLD_TEST_SEED to replay)");
    let cluster = Cluster::start(ClusterConfig::default()).await;
    let clients: Vec<_> = cluster
        .ids()
        .into_iter()
        .map(|id| cluster.client(id))
        .collect();
    let mut workload = Workload::new(seed);
    for op in 0..300 {
        workload.step(&clients, op).await;
    }
    eprintln!(
        "random workload: {} grants, {} denials, {} errors, {} replays",
        workload.grants, workload.denials, workload.errors, workload.replays
    );
    assert!(
        workload.grants > 20 && workload.replays > 5,
        "expected the workload to grant and replay a fair share (seed {seed}): {} grants, {} replays",
        workload.grants,
        workload.replays
    );

    let digests: ClusterDigests = cluster.wait_digests_converge(CONVERGE_TIMEOUT).await;
    assert_same_state(&digests, cluster.groups());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_leadership_over() {
    // Followers wait out the leader lease (2 x the election timeout) and
    // then a random 1-2 x election timeout before standing on their own:
    // 4.5-6 s after heartbeats stop with 1.5 s. A graceful leader hands over
    // once the lease has passed (3 s) and then exits, so a survivor that
    // serves within 1 s of the exit was handed leadership.
    let config = ClusterConfig {
        election_timeout_ms: Some(1_500),
        ..ClusterConfig::default()
    };
    let mut cluster = Cluster::start(config).await;
    let scope = "acct-handover";
    let leader = cluster.leader_of(scope).await;
    let survivor = cluster
        .ids()
        .into_iter()
        .find(|&id| id != leader)
        .expect("a survivor");
    let what = "the acquire before SIGTERM";
    let before = acquire(
        scope,
        vec![concurrency("held", 10)],
        120_000,
        "before-handover",
    );
    let grant = expect_grant(
        &call(what, cluster.client(survivor).acquire(before)).await,
        what,
    )
    .clone();
    let probe = cluster.client_with_timeout(survivor, PROBE_RPC_TIMEOUT);

    cluster.terminate(leader);
    let signalled = Instant::now();
    let status = cluster.wait_exit(leader, Duration::from_secs(5)).await;
    let exited_at = Instant::now();
    assert!(
        status.success(),
        "expected leader {leader} to exit 0 after SIGTERM, got {status}"
    );
    let FirstGrant {
        elapsed,
        served_by,
        errors,
    } = first_grant_after(&probe, scope, "handover-probe", exited_at).await;
    eprintln!(
        "leader {leader} exited {:?} after SIGTERM; first grant {elapsed:?} after the exit",
        exited_at - signalled
    );
    assert!(
        elapsed < Duration::from_secs(1),
        "expected node {survivor} to grant in {scope} within 1 s after leader {leader} exited \
         (it exited {:?} after SIGTERM), took {elapsed:?}; errors on the way: {errors:#?}",
        exited_at - signalled
    );
    assert_ne!(
        served_by.leader_node_id, leader,
        "expected a new leader to serve, not the stopped node {leader}"
    );

    let inspect = inspect_concurrency(&mut cluster.client(survivor), scope, "held").await;
    assert_eq!(
        inspect.holders,
        vec![holder_of(&grant)],
        "expected the lease granted before the handover to remain"
    );
}

/// A fresh cluster whose third member never comes up still elects a
/// leader for every group, including those meant to be led by the
/// missing node; the member catches up when it finally starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_cluster_starts_with_a_member_missing() {
    let config = ClusterConfig::default();
    let groups = config.groups;
    let mut cluster = Cluster::start_without(config, &[3]).await;
    let map = cluster.slot_map(1).await;

    // One scope per group, each granted through node 1.
    let mut scopes = Vec::new();
    for n in 0.. {
        if scopes.len() == groups as usize {
            break;
        }
        let scope = format!("acct-missing-{n}");
        let group = group_in(&map, &scope);
        if scopes.iter().any(|(g, _)| *g == group) {
            continue;
        }
        let what = format!("acquire in group {group} with node 3 never started");
        let request = acquire(&scope, vec![concurrency("jobs", 1)], 60_000, "first");
        let reply = call(&what, cluster.client(1).acquire(request)).await;
        let served_by = reply.served_by.expect("served_by on a grant");
        assert_ne!(
            served_by.leader_node_id, 3,
            "expected a live leader for {what}"
        );
        expect_grant(&reply, &what);
        scopes.push((group, scope));
    }

    cluster.restart(3);
    cluster.wait_ready(3, Duration::from_secs(10)).await;
    let digests = cluster.wait_digests_converge(Duration::from_secs(10)).await;
    assert_same_state(&digests, groups);
    for (group, scope) in &scopes {
        let inspect = inspect_concurrency(&mut cluster.client(3), scope, "jobs").await;
        assert_eq!(
            inspect.holders.len(),
            1,
            "expected node 3 to see the lease granted in group {group} before it started"
        );
    }
}

/// What grpcurl and load balancers rely on: the standard health service
/// reports the API as serving, and reflection lists and describes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_describe_the_api() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let cluster = Cluster::start(ClusterConfig {
        nodes: 1,
        ..ClusterConfig::default()
    })
    .await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.grpc_addr(1)))
            .expect("a valid endpoint")
            .connect()
            .await
            .expect("the node accepts connections");

    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "leasehold.v1.Leasehold".into(),
        })
        .await
        .expect("the health service answers")
        .into_inner();
    assert_eq!(
        health.status,
        ServingStatus::Serving as i32,
        "expected leasehold.v1.Leasehold to be SERVING once the node is ready"
    );

    let ask = |message| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(message),
    };
    let requests = tokio_stream::iter([
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol(
            "leasehold.v1.Leasehold".into(),
        )),
    ]);
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(requests)
        .await
        .expect("reflection answers")
        .into_inner();
    let listed = answers
        .message()
        .await
        .expect("a listing")
        .expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = listed.message_response else {
        panic!("expected a service listing, got {listed:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names.contains(&"leasehold.v1.Leasehold") && names.contains(&"grpc.health.v1.Health"),
        "expected reflection to list the API and health services, got {names:?}"
    );
    let file = answers
        .message()
        .await
        .expect("a file")
        .expect("one answer");
    let Some(MessageResponse::FileDescriptorResponse(fds)) = file.message_response else {
        panic!("expected the file describing leasehold.v1.Leasehold, got {file:?}");
    };
    assert!(
        !fds.file_descriptor_proto.is_empty(),
        "expected at least one file descriptor for leasehold.v1.Leasehold"
    );
}

/// A client that routed by a newer slot map than a node has gets
/// WRONG_EPOCH from it; the current epoch, or none, is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_client_epoch_gets_wrong_epoch() {
    let cluster = Cluster::start(ClusterConfig {
        nodes: 1,
        ..ClusterConfig::default()
    })
    .await;
    let epoch = cluster.slot_map(1).await.epoch;
    let with_epoch = |epoch: String, key: &str| {
        let mut request = tonic::Request::new(acquire(
            "acct-epoch",
            vec![concurrency("jobs", 5)],
            30_000,
            key,
        ));
        request
            .metadata_mut()
            .insert("leasehold-epoch", epoch.parse().expect("ascii metadata"));
        request
    };

    let reply = call(
        "an acquire routed by the current epoch",
        cluster
            .client(1)
            .acquire(with_epoch(epoch.to_string(), "current")),
    )
    .await;
    expect_grant(&reply, "an acquire routed by the current epoch");
    assert_eq!(reply.served_by.map(|s| s.epoch), Some(epoch));

    let status = cluster
        .client(1)
        .acquire(with_epoch((epoch + 1).to_string(), "newer"))
        .await
        .expect_err("expected a call routed by a newer map to be refused");
    let detail = error_detail(&status).expect("an ErrorDetail");
    assert_eq!(
        (status.code(), detail.code.as_str(), detail.epoch),
        (tonic::Code::Unavailable, "WRONG_EPOCH", epoch),
        "expected UNAVAILABLE/WRONG_EPOCH naming the node's epoch, got {status:?}"
    );

    let status = cluster
        .client(1)
        .acquire(with_epoch("soon".into(), "garbled"))
        .await
        .expect_err("expected a malformed epoch to be refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("leasehold-epoch"),
        "expected the error to name the leasehold-epoch key, got {status:?}"
    );
}

/// Acquires with wait_ms park on the leader instead of being denied, are
/// granted the moment a release frees capacity, first come first served,
/// also when they arrive forwarded; one whose wait runs out gets the
/// ordinary denial; a throttle waiter is admitted at its exact time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_acquires_are_granted_in_arrival_order() {
    let cluster = Cluster::start(ClusterConfig::default()).await;
    let scope = "acct-waiting";
    let leader = cluster.leader_of(scope).await;
    let other = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
    let waiting = |key: &str, wait_ms: u64| AcquireRequest {
        wait_ms: Some(wait_ms),
        ..acquire(scope, vec![concurrency("one", 1)], 60_000, key)
    };

    let first = call(
        "the first acquire",
        cluster
            .client(leader)
            .acquire(acquire(scope, vec![concurrency("one", 1)], 60_000, "w0")),
    )
    .await;
    let first = expect_grant(&first, "the first acquire").clone();

    // A arrives first, forwarded through a follower; B second, at the leader.
    let (a_tx, a_rx) = tokio::sync::oneshot::channel();
    // Long waits, so that a grant which only came when a wait ran out (or
    // on a slow poll) is told apart from one the release caused.
    let mut a_client = cluster.client_with_timeout(other, Duration::from_secs(40));
    let a_request = waiting("wa", 30_000);
    tokio::spawn(async move {
        let reply = a_client.acquire(a_request).await;
        let _ = a_tx.send((reply, Instant::now()));
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (b_tx, b_rx) = tokio::sync::oneshot::channel();
    let mut b_client = cluster.client_with_timeout(leader, Duration::from_secs(40));
    let b_request = waiting("wb", 30_000);
    tokio::spawn(async move {
        let reply = b_client.acquire(b_request).await;
        let _ = b_tx.send((reply, Instant::now()));
    });
    tokio::time::sleep(Duration::from_millis(150)).await;

    // Full: a waiter with a short wait gets the denial when it runs out.
    let started = Instant::now();
    let short = call(
        "a short wait",
        cluster.client(leader).acquire(waiting("wc", 300)),
    )
    .await;
    let denial = expect_denial(&short, "an acquire whose 300 ms wait runs out");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "expected the denial only after the wait, got it after {:?}",
        started.elapsed()
    );
    assert!(denial.retry_after_ms.is_some(), "expected a retry_after_ms");

    call(
        "release of the first lease",
        cluster
            .client(leader)
            .release(release(scope, first.lease_id, "rw0")),
    )
    .await;
    let released_at = Instant::now();
    let (a_reply, a_at) = a_rx.await.expect("waiter A answers");
    let a_reply = a_reply.expect("waiter A succeeds");
    let a_grant = expect_grant(a_reply.get_ref(), "waiter A after the release").clone();
    // The grant takes one Raft round and the forwarded reply after the
    // release applied; its 30 s wait had over 28 s left.
    assert!(
        a_at.saturating_duration_since(released_at) < Duration::from_secs(3),
        "expected the release to wake waiter A, not its wait running out; it was granted \
         {:?} after the release was acknowledged",
        a_at.saturating_duration_since(released_at)
    );
    // B is still parked behind A's lease.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let inspect = inspect_concurrency(&mut cluster.client(leader), scope, "one").await;
    assert_eq!(
        inspect
            .holders
            .iter()
            .map(|h| h.lease_id)
            .collect::<Vec<_>>(),
        vec![a_grant.lease_id],
        "expected only waiter A (first come) to hold the key while B waits"
    );
    call(
        "release of A's lease",
        cluster
            .client(leader)
            .release(release(scope, a_grant.lease_id, "rwa")),
    )
    .await;
    let (b_reply, _) = b_rx.await.expect("waiter B answers");
    let b_reply = b_reply.expect("waiter B succeeds");
    expect_grant(b_reply.get_ref(), "waiter B after A's release");

    // A throttle of 1 per second, no burst: the second waits ~1 s.
    let throttled = |key: &str| AcquireRequest {
        wait_ms: Some(20_000),
        ..acquire(
            scope,
            vec![Constraint {
                kind: Some(Kind::Throttle(Throttle {
                    key: "paced".into(),
                    limit: 1,
                    period_ms: 1_000,
                    burst: 0,
                })),
            }],
            60_000,
            key,
        )
    };
    let t1 = call(
        "first throttled",
        cluster.client(leader).acquire(throttled("t1")),
    )
    .await;
    expect_grant(&t1, "the first throttled acquire");
    let started = Instant::now();
    let t2 = call(
        "second throttled",
        cluster
            .client_with_timeout(leader, Duration::from_secs(30))
            .acquire(throttled("t2")),
    )
    .await;
    expect_grant(&t2, "the second throttled acquire, after waiting");
    let waited = started.elapsed();
    // Never before its time; and at its time, not when its 20 s wait ends.
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(5),
        "expected the throttle waiter to be admitted about 1 s later, took {waited:?}"
    );

    let status = cluster
        .client(leader)
        .acquire(waiting("too-long", 300_001))
        .await
        .expect_err("expected wait_ms over the bound to be refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("wait_ms") && status.message().contains("300000"),
        "expected the error to name wait_ms and its bound, got {status:?}"
    );
}

/// Waiters of one key take turns across fairness keys: tenant b's one
/// waiter is served right after tenant a's first, not after all of a's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_take_turns_across_fairness_keys() {
    let cluster = Cluster::start(ClusterConfig::default()).await;
    let scope = "acct-fair";
    let leader = cluster.leader_of(scope).await;
    let held = call(
        "the holder's acquire",
        cluster
            .client(leader)
            .acquire(acquire(scope, vec![concurrency("one", 1)], 60_000, "h")),
    )
    .await;
    let mut lease_id = expect_grant(&held, "the holder's acquire").lease_id;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (name, tenant) in [("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b")] {
        let mut client = cluster.client_with_timeout(leader, Duration::from_secs(15));
        let request = AcquireRequest {
            wait_ms: Some(10_000),
            fairness_key: tenant.into(),
            ..acquire(scope, vec![concurrency("one", 1)], 60_000, name)
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let reply = client.acquire(request).await;
            let _ = tx.send((name, reply));
        });
        // Arrival order is the order above.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut order = Vec::new();
    for i in 0..4 {
        call(
            "a release",
            cluster
                .client(leader)
                .release(release(scope, lease_id, &format!("fr{i}"))),
        )
        .await;
        let (name, reply) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("expected a waiter to be granted after a release")
            .expect("a waiter answers");
        let reply = reply.unwrap_or_else(|e| panic!("expected waiter {name} to succeed: {e}"));
        lease_id = expect_grant(reply.get_ref(), name).lease_id;
        order.push(name);
    }
    assert_eq!(
        order,
        ["a1", "b1", "a2", "a3"],
        "expected tenants to take turns (round robin), not first come first served overall"
    );
}

#[test]
fn bad_config_is_rejected_with_the_field_named() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let ports = free_ports(7);
    let stderr_path = dir.path().join("stderr.log");
    let members = format!(
        "1={}/{},2={}/{},3={}/{}",
        ports[0], ports[4], ports[2], ports[5], ports[3], ports[6]
    );
    let mut child = leasehold_command()
        .args([
            "serve",
            "--node-id",
            "1",
            "--grpc-addr",
            &ports[0].to_string(),
            "--peer-addr",
            &ports[4].to_string(),
        ])
        .args(["--http-addr", &ports[1].to_string(), "--members", &members])
        .args(["--data-dir", &dir.path().join("data").display().to_string()])
        .args(["--slots", "0", "--replication-factor", "3"])
        .stdout(create_log(&dir.path().join("stdout.log")))
        .stderr(create_log(&stderr_path))
        .spawn()
        .expect("`leasehold serve` spawns");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("the child's status is readable") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "expected `serve --slots 0` to exit within 5 s; stderr: {}",
                read_lossy(&stderr_path)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stderr = read_lossy(&stderr_path);
    assert!(
        !status.success(),
        "expected `serve --slots 0` to fail, got {status}; stderr: {stderr}"
    );
    let names_bound = stderr
        .lines()
        .filter(|l| l.contains("slots"))
        .any(|l| l.split(|c: char| !c.is_ascii_digit()).any(|n| n == "1"));
    assert!(
        names_bound,
        "expected stderr to name `slots` and its lower bound 1 on one line; stderr: {stderr}"
    );
}

// ----- the random workload -----

/// A tiny xorshift64 generator: the workload is reproducible from its seed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }
}

/// One mutating call of the workload, kept so it can be retried as is.
#[derive(Clone, Debug)]
enum Call {
    Acquire(AcquireRequest),
    Extend(ExtendRequest),
    Release(ReleaseRequest),
    SetCapacity(SetCapacityRequest),
    AdjustCapacity(AdjustCapacityRequest),
}

#[derive(Clone, Debug, PartialEq)]
enum Reply {
    Acquire(AcquireResponse),
    Extend(ExtendResponse),
    Release(ReleaseResponse),
    Capacity(CapacityResponse),
}

impl Reply {
    fn replayed(&self) -> bool {
        match self {
            Reply::Acquire(r) => r.replayed,
            Reply::Extend(r) => r.replayed,
            Reply::Release(r) => r.replayed,
            Reply::Capacity(r) => r.replayed,
        }
    }

    /// The outcome alone: without who served it, whether it was replayed,
    /// and (for a denial) its retry times.
    fn outcome(&self) -> Reply {
        let mut reply = self.clone();
        match &mut reply {
            Reply::Acquire(r) => {
                (r.replayed, r.served_by) = (false, None);
                if let Some(AcquireResult::Denied(d)) = &mut r.result {
                    d.retry_after_ms = None;
                    d.blocking.iter_mut().for_each(|u| u.retry_after_ms = None);
                }
            }
            Reply::Extend(r) => (r.replayed, r.served_by) = (false, None),
            Reply::Release(r) => (r.replayed, r.served_by) = (false, None),
            Reply::Capacity(r) => (r.replayed, r.served_by) = (false, None),
        }
        reply
    }

    /// A denial's retry time, if this is one. In a replay it counts down
    /// from the original decision.
    fn retry_after_ms(&self) -> Option<Option<u64>> {
        match self {
            Reply::Acquire(AcquireResponse {
                result: Some(AcquireResult::Denied(d)),
                ..
            }) => Some(d.retry_after_ms),
            _ => None,
        }
    }
}

const WORKLOAD_SCOPES: u64 = 8;
const WORKLOAD_KEYS: u64 = 2;

struct Workload {
    rng: XorShift,
    /// Leases granted and not yet released by the workload: (scope, id).
    leases: Vec<(String, u64)>,
    /// The last call, its outcome and the client it went through.
    last: Option<(Call, Result<Reply, Status>, usize)>,
    grants: u32,
    denials: u32,
    errors: u32,
    replays: u32,
}

impl Workload {
    fn new(seed: u64) -> Workload {
        Workload {
            rng: XorShift(seed | 1),
            leases: Vec::new(),
            last: None,
            grants: 0,
            denials: 0,
            errors: 0,
            replays: 0,
        }
    }

    /// One step: a fresh random call through a random node, or (one in
    /// six) the last call again through another node.
    async fn step(&mut self, clients: &[LeaseholdClient<Channel>], op: u64) {
        if self.last.is_some() && self.rng.below(6) == 0 {
            let (call, first, via) = self.last.take().expect("a last call");
            let node = (via + 1 + self.rng.index(clients.len() - 1)) % clients.len();
            let again = send(&clients[node], &call).await;
            self.check_retry(&call, &first, &again);
            self.track(&call, &again);
            return;
        }
        let call = self.random_call(op);
        let node = self.rng.index(clients.len());
        let result = send(&clients[node], &call).await;
        self.track(&call, &result);
        self.last = Some((call, result, node));
    }

    fn check_retry(
        &mut self,
        call: &Call,
        first: &Result<Reply, Status>,
        again: &Result<Reply, Status>,
    ) {
        match (first, again) {
            // Every outcome is recorded, a denial too.
            (Ok(first), Ok(again)) => {
                assert!(
                    again.replayed(),
                    "expected a retry of {call:?} after {first:?} to be a replay, got {again:?}"
                );
                assert_eq!(
                    again.outcome(),
                    first.outcome(),
                    "expected the replay of {call:?} to return the original outcome"
                );
                let counted_down = match (first.retry_after_ms(), again.retry_after_ms()) {
                    (Some(Some(before)), Some(Some(after))) => after <= before,
                    (before, after) => before == after,
                };
                assert!(
                    counted_down,
                    "expected the replayed denial's retry time to count down: {first:?}, then \
                     {again:?}"
                );
                self.replays += 1;
            }
            (Ok(first), Err(s)) => {
                panic!("expected a retry of {call:?} after {first:?} to replay it, got {s}")
            }
            (Err(_), Ok(again)) => {
                assert!(
                    !again.replayed(),
                    "expected a retry after an error to be a fresh attempt: {call:?} got \
                     {again:?}"
                );
            }
            (Err(_), Err(_)) => {}
        }
    }

    /// Checks an outcome is one the spec allows and remembers new leases.
    fn track(&mut self, call: &Call, result: &Result<Reply, Status>) {
        match (call, result) {
            (Call::Acquire(req), Ok(Reply::Acquire(reply))) => match &reply.result {
                Some(AcquireResult::Granted(grant)) => {
                    self.grants += 1;
                    if !reply.replayed {
                        self.leases.push((req.scope.clone(), grant.lease_id));
                    }
                }
                _ => self.denials += 1,
            },
            (_, Ok(_)) => {}
            (_, Err(status)) => {
                self.errors += 1;
                let code = error_detail(status).map(|d| d.code).unwrap_or_default();
                let expected = [
                    "LEASE_LOST",
                    "MAX_LIFETIME_EXCEEDED",
                    "CAPACITY_OUT_OF_RANGE",
                ];
                assert!(
                    status.code() == Code::FailedPrecondition && expected.contains(&code.as_str()),
                    "expected {call:?} to succeed or fail with one of {expected:?}, got {status} (code {code:?})"
                );
            }
        }
    }

    fn random_call(&mut self, op: u64) -> Call {
        let scope = format!("random-{}", self.rng.below(WORKLOAD_SCOPES));
        let idempotency_key = format!("op-{op}");
        let roll = self.rng.below(100);
        if roll < 45 || self.leases.is_empty() {
            return Call::Acquire(self.random_acquire(scope, idempotency_key));
        }
        let key = format!("sem-{}", self.rng.below(WORKLOAD_KEYS));
        match roll {
            45..=64 => {
                let (scope, lease_id) = self.leases[self.rng.index(self.leases.len())].clone();
                let ttl_ms = self.rng.range(200, 3_000);
                Call::Extend(ExtendRequest {
                    scope,
                    lease_id,
                    ttl_ms,
                    idempotency_key,
                })
            }
            65..=84 => {
                let (scope, lease_id) = self.leases.swap_remove(self.rng.index(self.leases.len()));
                Call::Release(ReleaseRequest {
                    scope,
                    lease_id,
                    idempotency_key,
                })
            }
            85..=92 => {
                let capacity = self.rng.range(0, 12);
                Call::SetCapacity(SetCapacityRequest {
                    scope,
                    key,
                    capacity,
                    idempotency_key,
                })
            }
            _ => {
                let delta = [-4, -2, -1, 1, 2, 3, 6][self.rng.index(7)];
                Call::AdjustCapacity(AdjustCapacityRequest {
                    scope,
                    key,
                    delta,
                    idempotency_key,
                })
            }
        }
    }

    fn random_acquire(&mut self, scope: String, idempotency_key: String) -> AcquireRequest {
        let mut picked = BTreeSet::new();
        let wanted = self.rng.range(1, 3) as usize;
        while picked.len() < wanted {
            picked.insert((self.rng.below(4), self.rng.below(WORKLOAD_KEYS)));
        }
        let constraints = picked
            .into_iter()
            .map(|(kind, key)| workload_constraint(kind, key))
            .collect();
        let amount = self.rng.range(1, 3) as u32;
        let lease_ttl_ms = self.rng.range(200, 3_000);
        AcquireRequest {
            scope,
            constraints,
            amount,
            min_amount: (self.rng.below(3) == 0).then_some(1),
            lease_ttl_ms,
            max_lifetime_ms: (self.rng.below(4) == 0).then_some(2 * lease_ttl_ms),
            idempotency_key,
            wait_ms: None,
            fairness_key: String::new(),
        }
    }
}

/// The workload's keys: each (kind, index) always carries the same limits;
/// key names carry their kind, so keys in one request stay distinct.
fn workload_constraint(kind: u64, key: u64) -> Constraint {
    let kind = match kind {
        0 => Kind::Concurrency(Concurrency {
            key: format!("conc-{key}"),
            limit: 4,
        }),
        1 => Kind::Throttle(Throttle {
            key: format!("thr-{key}"),
            limit: 20,
            period_ms: 1_000,
            burst: 4,
        }),
        2 => Kind::RateLimit(RateLimit {
            key: format!("rl-{key}"),
            limit: 10,
            period_ms: 2_000,
        }),
        _ => Kind::Semaphore(Semaphore {
            key: format!("sem-{key}"),
            weight: key as u32 + 1,
        }),
    };
    Constraint { kind: Some(kind) }
}

/// Sends `call`, retrying transport hiccups with the same idempotency key.
async fn send(client: &LeaseholdClient<Channel>, call: &Call) -> Result<Reply, Status> {
    let what = format!("{call:?}");
    let c = client.clone();
    match call.clone() {
        Call::Acquire(r) => retry_transient(&what, RETRY_TIMEOUT, || {
            let (mut c, r) = (c.clone(), r.clone());
            async move { c.acquire(r).await }
        })
        .await
        .map(Reply::Acquire),
        Call::Extend(r) => retry_transient(&what, RETRY_TIMEOUT, || {
            let (mut c, r) = (c.clone(), r.clone());
            async move { c.extend(r).await }
        })
        .await
        .map(Reply::Extend),
        Call::Release(r) => retry_transient(&what, RETRY_TIMEOUT, || {
            let (mut c, r) = (c.clone(), r.clone());
            async move { c.release(r).await }
        })
        .await
        .map(Reply::Release),
        Call::SetCapacity(r) => retry_transient(&what, RETRY_TIMEOUT, || {
            let (mut c, r) = (c.clone(), r.clone());
            async move { c.set_capacity(r).await }
        })
        .await
        .map(Reply::Capacity),
        Call::AdjustCapacity(r) => retry_transient(&what, RETRY_TIMEOUT, || {
            let (mut c, r) = (c.clone(), r.clone());
            async move { c.adjust_capacity(r).await }
        })
        .await
        .map(Reply::Capacity),
    }
}

// ----- helpers -----

/// One lease on concurrency key `key` (limit 10) in each scope, through
/// nodes in turn; returns each request with its grant.
async fn acquire_in_each(
    cluster: &Cluster,
    scopes: &[String],
    key: &str,
    lease_ttl_ms: u64,
) -> Vec<(AcquireRequest, Grant)> {
    let ids = cluster.ids();
    let mut leases = Vec::new();
    for (i, scope) in scopes.iter().enumerate() {
        let request = acquire(
            scope,
            vec![concurrency(key, 10)],
            lease_ttl_ms,
            &format!("{key}-{i}"),
        );
        let what = format!("acquire of {key} in {scope}");
        let reply = call(
            &what,
            cluster.client(ids[i % ids.len()]).acquire(request.clone()),
        )
        .await;
        leases.push((request, expect_grant(&reply, &what).clone()));
    }
    leases
}

/// Polls GetNodeDigest until every node holds exactly `expected` lease
/// records over all data groups.
async fn wait_lease_records(cluster: &Cluster, expected: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let mut counts = BTreeMap::new();
        for id in cluster.ids() {
            let digests = cluster.digests(id).await;
            let digests = digests
                .unwrap_or_else(|s| panic!("expected GetNodeDigest on node {id} to answer: {s}"));
            let data = digests.values().filter(|d| d.group_id != META_GROUP);
            counts.insert(id, data.map(|d| d.leases).sum::<u64>());
        }
        if counts.values().all(|&n| n == expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "expected every node's lease records to drop to the {expected} long leases once the \
             1.5 s ones expired (the scavenger), within {timeout:?}; got {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The Inspect holder entry of a one-unit grant.
fn holder_of(grant: &Grant) -> Holder {
    Holder {
        lease_id: grant.lease_id,
        units: 1,
        expires_at_ms: grant.expires_at_ms,
    }
}

/// Asserts that the denial is by concurrency key `key` alone, full at
/// `limit`, and says when a holder (ttl at most `ttl_ms`) expires.
fn assert_full_concurrency_key(denial: &Denial, key: &str, limit: u64, ttl_ms: u64) {
    assert_eq!(
        denial.blocking.len(),
        1,
        "expected exactly key {key} to block: {denial:?}"
    );
    let blocking = &denial.blocking[0];
    assert_eq!(
        (blocking.kind, blocking.key.as_str()),
        (ConstraintKind::Concurrency as i32, key),
        "expected the blocking key to be concurrency key {key}: {blocking:?}"
    );
    assert_eq!(
        (blocking.used, blocking.limit, blocking.available),
        (limit, limit, 0),
        "expected used={limit} limit={limit} available=0: {blocking:?}"
    );
    let retry_after_ms = denial.retry_after_ms;
    assert!(
        retry_after_ms.is_some_and(|ms| ms <= ttl_ms) && blocking.retry_after_ms == retry_after_ms,
        "expected retry_after_ms at most the holders' {ttl_ms} ms ttl, on the denial and its \
         blocking key alike: {denial:?}"
    );
}

/// Acquires, extends and releases one lease through `client` (node `id`),
/// checking that `leader` of `group` served each call; returns the
/// grant's fencing token.
async fn acquire_extend_release(
    client: &mut LeaseholdClient<Channel>,
    scope: &str,
    id: u64,
    (group, leader): (u32, u64),
) -> u64 {
    let what = format!("acquire through node {id}");
    let request = acquire(
        scope,
        vec![concurrency("pool", 100)],
        30_000,
        &format!("pool-{id}"),
    );
    let reply = call(&what, client.acquire(request)).await;
    assert_served(reply.served_by.as_ref(), group, leader, &what);
    assert!(
        !reply.replayed,
        "expected a first {what} not to be a replay"
    );
    let grant = expect_grant(&reply, &what);

    let what = format!("extend through node {id}");
    let request = extend(scope, grant.lease_id, 60_000, &format!("pool-extend-{id}"));
    let extended = call(&what, client.extend(request)).await;
    assert_served(extended.served_by.as_ref(), group, leader, &what);
    assert_eq!(
        extended.lease_id, grant.lease_id,
        "expected {what} to name the lease"
    );
    assert!(
        extended.expires_at_ms > grant.expires_at_ms,
        "expected {what} to move expiry past {} (granted for 30 s, extended by 60 s), got {}",
        grant.expires_at_ms,
        extended.expires_at_ms
    );

    let what = format!("release through node {id}");
    let request = release(scope, grant.lease_id, &format!("pool-release-{id}"));
    let released = call(&what, client.release(request)).await;
    assert_served(released.served_by.as_ref(), group, leader, &what);
    assert!(released.was_held, "expected {what} to find the lease held");
    grant.fencing_token
}

/// `count` acquire/release pairs through alternating nodes, each retried
/// across leader changes with its idempotency key.
async fn acquire_release_loop(clients: [LeaseholdClient<Channel>; 2], worker: u64, count: u64) {
    for i in 0..count {
        let scope = format!("lag-{}", (worker * count + i) % 16);
        let request = acquire(
            &scope,
            vec![concurrency("work", 1_000)],
            60_000,
            &format!("lag-acquire-{worker}-{i}"),
        );
        let what = format!("acquire {}", request.idempotency_key);
        let client = clients[(i % 2) as usize].clone();
        let reply = retry_transient(&what, RETRY_TIMEOUT, || {
            let (mut c, r) = (client.clone(), request.clone());
            async move { c.acquire(r).await }
        })
        .await
        .unwrap_or_else(|s| panic!("expected {what} to succeed: {s}"));
        let lease_id = expect_grant(&reply, &what).lease_id;

        let request = release(&scope, lease_id, &format!("lag-release-{worker}-{i}"));
        let client = clients[((i + 1) % 2) as usize].clone();
        let released = retry_transient(&what, RETRY_TIMEOUT, || {
            let (mut c, r) = (client.clone(), request.clone());
            async move { c.release(r).await }
        })
        .await
        .unwrap_or_else(|s| {
            panic!(
                "expected release {} to succeed: {s}",
                request.idempotency_key
            )
        });
        assert!(
            released.was_held,
            "expected release {} to find its lease held",
            request.idempotency_key
        );
    }
}

/// The first grant of a probe loop: how long after the event it came,
/// who served it, and the distinct errors seen on the way (for failures).
struct FirstGrant {
    elapsed: Duration,
    served_by: ServedBy,
    errors: Vec<String>,
}

/// Acquires in `scope` through `probe` with fresh keys until one is
/// granted, counting from `since`. A new attempt starts every
/// [`PROBE_INTERVAL`] while earlier ones are still waiting, so a request
/// held by the server does not hide the moment service resumes.
async fn first_grant_after(
    probe: &LeaseholdClient<Channel>,
    scope: &str,
    key_prefix: &str,
    since: Instant,
) -> FirstGrant {
    let mut errors: Vec<String> = Vec::new();
    let mut attempts = tokio::task::JoinSet::new();
    let mut next_attempt = tokio::time::Instant::now();
    let mut attempt = 0u32;
    loop {
        if tokio::time::Instant::now() >= next_attempt {
            attempt += 1;
            let key = format!("{key_prefix}-{attempt}");
            let request = acquire(scope, vec![concurrency("probe", 1_000_000)], 30_000, &key);
            let mut client = probe.clone();
            let sent_ms = since.elapsed().as_millis();
            attempts.spawn(async move { (sent_ms, client.acquire(request).await) });
            next_attempt += PROBE_INTERVAL;
        }
        let done = tokio::select! {
            done = attempts.join_next() => done,
            _ = tokio::time::sleep_until(next_attempt) => None,
        };
        if let Some(done) = done {
            let (sent_ms, result) = done.expect("a probe attempt completes");
            let error = match result {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    let served_by = reply
                        .served_by
                        .expect("expected served_by on every response");
                    expect_grant(&reply, "a probe acquire under a big limit");
                    let elapsed = since.elapsed();
                    return FirstGrant {
                        elapsed,
                        served_by,
                        errors,
                    };
                }
                Err(s) if is_transient(&s) => s,
                Err(s) => {
                    panic!("expected a probe acquire to be granted or fail transiently, got {s}")
                }
            };
            let detail = error_detail(&error).map(|d| (d.code, d.leader_node_id));
            let seen = format!("{:?} {:?} {}", error.code(), detail, error.message());
            if !errors.last().is_some_and(|e| e.ends_with(&seen)) {
                let failed_ms = since.elapsed().as_millis();
                errors.push(format!(
                    "sent at {sent_ms} ms, failed at {failed_ms} ms: {seen}"
                ));
            }
        }
        assert!(
            since.elapsed() < PROBE_GIVE_UP,
            "expected a grant in {scope} within {PROBE_GIVE_UP:?}; errors: {errors:#?}"
        );
    }
}

async fn inspect_concurrency(
    client: &mut LeaseholdClient<Channel>,
    scope: &str,
    key: &str,
) -> InspectResponse {
    let request = InspectRequest {
        scope: scope.into(),
        kind: ConstraintKind::Concurrency as i32,
        key: key.into(),
    };
    let what = format!("Inspect of {scope}/{key}");
    let inspect = call(&what, client.inspect(request)).await;
    assert!(
        inspect.exists,
        "expected {what} to find the key: {inspect:?}"
    );
    inspect
}

/// GetSlotMap on every node lists the three nodes at their addresses.
async fn assert_map_names_every_node(cluster: &Cluster) {
    for id in cluster.ids() {
        let map = cluster.slot_map(id).await;
        let nodes: BTreeMap<u64, String> = map
            .nodes
            .into_iter()
            .map(|n| (n.node_id, n.grpc_address))
            .collect();
        let expected: BTreeMap<u64, String> = cluster
            .ids()
            .into_iter()
            .map(|i| (i, cluster.grpc_addr(i).to_string()))
            .collect();
        assert_eq!(
            nodes, expected,
            "expected node {id}'s slot map to list every node's gRPC address"
        );
    }
}

async fn call<T>(
    what: &str,
    reply: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
) -> T {
    match reply.await {
        Ok(reply) => reply.into_inner(),
        Err(s) => panic!(
            "expected {what} to succeed, got {s} (detail {:?})",
            error_detail(&s)
        ),
    }
}

fn assert_served(served_by: Option<&ServedBy>, group: u32, leader: u64, what: &str) {
    let served_by = served_by.unwrap_or_else(|| panic!("expected served_by on {what}"));
    assert_eq!(
        (served_by.group_id, served_by.leader_node_id),
        (group, leader),
        "expected {what} to be served by group {group}'s leader {leader} (per GetSlotMap)"
    );
}

fn expect_grant<'a>(reply: &'a AcquireResponse, what: &str) -> &'a Grant {
    match &reply.result {
        Some(AcquireResult::Granted(grant)) => grant,
        other => panic!("expected {what} to be granted, got {other:?}"),
    }
}

fn expect_denial<'a>(reply: &'a AcquireResponse, what: &str) -> &'a Denial {
    match &reply.result {
        Some(AcquireResult::Denied(denial)) => denial,
        other => panic!("expected {what} to be denied, got {other:?}"),
    }
}

fn concurrency(key: &str, limit: u32) -> Constraint {
    Constraint {
        kind: Some(Kind::Concurrency(Concurrency {
            key: key.into(),
            limit,
        })),
    }
}

fn acquire(
    scope: &str,
    constraints: Vec<Constraint>,
    lease_ttl_ms: u64,
    idempotency_key: &str,
) -> AcquireRequest {
    AcquireRequest {
        scope: scope.into(),
        constraints,
        amount: 1,
        min_amount: None,
        lease_ttl_ms,
        max_lifetime_ms: None,
        idempotency_key: idempotency_key.into(),
        wait_ms: None,
        fairness_key: String::new(),
    }
}

fn extend(scope: &str, lease_id: u64, ttl_ms: u64, idempotency_key: &str) -> ExtendRequest {
    ExtendRequest {
        scope: scope.into(),
        lease_id,
        ttl_ms,
        idempotency_key: idempotency_key.into(),
    }
}

fn release(scope: &str, lease_id: u64, idempotency_key: &str) -> ReleaseRequest {
    ReleaseRequest {
        scope: scope.into(),
        lease_id,
        idempotency_key: idempotency_key.into(),
    }
}
