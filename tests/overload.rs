//! An overloaded node on real processes: at its `max_in_flight_calls` it
//! refuses the next call at once with RESOURCE_EXHAUSTED (`OVERLOADED`,
//! with a retry hint) instead of queueing it behind the calls it cannot
//! finish, applies nothing it refused, and serves again once the load is
//! gone.

mod support;

use std::time::Duration;

use leasehold::proto::v1::{self, acquire_response};
use leasehold::wire::{error_detail, OVERLOADED};
use support::{concurrency_acquire, metric_sum, Cluster, ClusterConfig};
use tonic::{Code, Status};

const CALLS_MAX: u64 = 8;

/// Long enough for every call here; the stuck ones wait on the disk.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A probe gives up this soon, freeing its slot, when it was let in.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

fn acquire(scope: &str, idem: &str) -> v1::AcquireRequest {
    concurrency_acquire(scope, "k", 1, idem, 60_000, None)
}

/// The probes' key has room for every probe.
fn probe(n: u32) -> v1::AcquireRequest {
    concurrency_acquire("probes", "k", 1_000, &format!("probe-{n}"), 60_000, None)
}

fn granted(reply: &v1::AcquireResponse) -> bool {
    matches!(reply.result, Some(acquire_response::Result::Granted(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_at_its_call_limit_sheds_at_once_applies_nothing_and_recovers() {
    let mut cluster = Cluster::start(ClusterConfig {
        nodes: 1,
        groups: 1,
        max_in_flight_calls: Some(CALLS_MAX),
        storage_faults: true,
        ..ClusterConfig::default()
    })
    .await;
    // WAL syncs wait: every write stays in flight, unanswered.
    cluster.set_storage_faults(1, "fsync=hang");
    cluster
        .wait_storage_faults_armed(1, Duration::from_secs(10))
        .await;

    // Calls that wait on the disk once let in; one refused (a probe took
    // its slot first) comes back, as a client told OVERLOADED does.
    let stuck: Vec<_> = (0..CALLS_MAX)
        .map(|i| {
            let mut client = cluster.client_with_timeout(1, CALL_TIMEOUT);
            let request = acquire(&format!("stuck-{i}"), &format!("stuck-{i}"));
            tokio::spawn(async move {
                loop {
                    match client.acquire(request.clone()).await {
                        Err(status) if status.code() == Code::ResourceExhausted => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        answer => return answer,
                    }
                }
            })
        })
        .collect();

    // Once every slot is taken, a call is refused. A probe let in before
    // that times out and gives its slot back.
    let mut refusal: Option<(u32, Status)> = None;
    for n in 0..50 {
        let mut client = cluster.client_with_timeout(1, PROBE_TIMEOUT);
        match client.acquire(probe(n)).await {
            Err(status) if status.code() == Code::ResourceExhausted => {
                refusal = Some((n, status));
                break;
            }
            // Let in, it gave up: by the server's deadline or the
            // channel's own timeout, whichever fired first.
            Err(status) if matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled) => {}
            other => panic!("expected the probe to be refused or to wait, got {other:?}"),
        }
    }
    let (refused, refusal) = refusal.expect("expected a call to be refused once the node was full");
    let detail = error_detail(&refusal).expect("an OVERLOADED refusal carries its detail");
    assert_eq!(detail.code, OVERLOADED, "{refusal:?}");
    assert!(detail.retry_after_ms > 0, "{detail:?}");
    assert!(
        refusal.message().contains("as many calls as it takes"),
        "{refusal:?}"
    );
    // Refused before the probe's own timeout, where a queued call would
    // have waited for the disk like the stuck ones, still unanswered.
    assert!(
        stuck.iter().all(|call| !call.is_finished()),
        "expected no stuck call answered while the disk hangs"
    );
    let shed = metric_sum(&cluster.metrics(1).await, "leasehold_overloaded_total");
    assert!(shed >= 1.0, "expected the shed call counted, got {shed}");

    // The disk comes back: the stuck calls are granted, and the node takes
    // new calls again.
    cluster.set_storage_faults(1, "");
    for call in stuck {
        let reply = call
            .await
            .expect("the call's task ends")
            .expect("a stuck call is answered once syncs resume")
            .into_inner();
        assert!(granted(&reply), "{reply:?}");
    }
    // The refused attempt applied nothing: its retry is granted afresh,
    // not replayed.
    let reply = cluster
        .client_with_timeout(1, CALL_TIMEOUT)
        .acquire(probe(refused))
        .await
        .expect("the node serves again")
        .into_inner();
    assert!(granted(&reply) && !reply.replayed, "{reply:?}");
}
