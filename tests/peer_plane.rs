//! The two gRPC planes on real nodes: the client port serves the public
//! API (with health and reflection) and never the node-to-node API; the
//! peer port serves the node-to-node API and the public calls members
//! forward to a leader, and nothing else (no health, no reflection).
//! Members listed with
//! explicit peer addresses (the harness never puts a peer port at client
//! port + 1) elect, replicate and forward; clients only ever hear of
//! client addresses.

mod support;

use std::time::Duration;

use leasehold::proto::peer::peer_client::PeerClient;
use leasehold::proto::peer::{ClockRequest, ElectRequest, MetaProposal};
use leasehold::proto::v1::acquire_response::Result as AcquireResult;
use leasehold::proto::v1::leasehold_client::LeaseholdClient;
use leasehold::proto::v1::{GetNodeDigestRequest, GetSlotMapRequest};
use leasehold::wire::{self, Redirect};
use support::{channel, concurrency_acquire, Cluster, ClusterConfig};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Status};

const RPC_TIMEOUT: Duration = Duration::from_secs(3);

fn expect_unimplemented<T: std::fmt::Debug>(result: Result<T, Status>, what: &str) {
    match result {
        Err(status) if status.code() == Code::Unimplemented => {}
        other => panic!("expected {what} to fail with UNIMPLEMENTED, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_port_does_not_serve_the_peer_api() {
    let cluster = Cluster::start(ClusterConfig::default()).await;
    let group = cluster.group_of(1, "acct-planes").await;
    for id in cluster.ids() {
        let mut on_client_port = PeerClient::new(channel(cluster.grpc_addr(id), RPC_TIMEOUT));
        let on_client = format!("on node {id}'s client port");
        expect_unimplemented(
            on_client_port.clock(ClockRequest {}).await,
            &format!("Peer.Clock {on_client}"),
        );
        expect_unimplemented(
            on_client_port.elect(ElectRequest { group }).await,
            &format!("Peer.Elect {on_client}"),
        );
        let proposal = MetaProposal {
            command: Vec::new(),
        };
        expect_unimplemented(
            on_client_port.propose_meta(proposal).await,
            &format!("Peer.ProposeMeta {on_client}"),
        );

        let mut on_peer_port = cluster.peer(id);
        let clock = on_peer_port.clock(ClockRequest {}).await;
        let clock = clock.unwrap_or_else(|s| {
            panic!("expected Peer.Clock on node {id}'s peer port to answer: {s}")
        });
        assert!(clock.into_inner().wall_ms > 0);

        // Forwarded calls arrive on the peer port.
        let mut public_on_peer_port =
            LeaseholdClient::new(channel(cluster.peer_addr(id), RPC_TIMEOUT));
        let map = public_on_peer_port.get_slot_map(GetSlotMapRequest {}).await;
        let map = map.unwrap_or_else(|s| {
            panic!("expected node {id}'s peer port to take the calls members forward: {s}")
        });
        assert_eq!(map.get_ref().slot_count, 1024);
        let mut health_on_peer_port = tonic_health::pb::health_client::HealthClient::new(channel(
            cluster.peer_addr(id),
            RPC_TIMEOUT,
        ));
        expect_unimplemented(
            health_on_peer_port
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await,
            &format!("gRPC health on node {id}'s peer port"),
        );
        let digest = cluster
            .client(id)
            .get_node_digest(GetNodeDigestRequest {})
            .await;
        let digest = digest.unwrap_or_else(|s| {
            panic!("expected GetNodeDigest on node {id}'s client port to answer: {s}")
        });
        assert_eq!(digest.get_ref().node_id, id);
    }

    // An election asked for on the peer port takes place: some node leads
    // the group in a later term.
    let leader = cluster.leader_of("acct-planes").await;
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    let term_before = group_term(&cluster, leader, group).await;
    cluster
        .peer(follower)
        .elect(ElectRequest { group })
        .await
        .unwrap_or_else(|s| panic!("expected Peer.Elect on node {follower}'s peer port: {s}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let term = group_term(&cluster, follower, group).await;
        if term > term_before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expected Peer.Elect to raise group {group}'s term above {term_before}, still {term}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Group `group`'s term as node `id` knows it.
async fn group_term(cluster: &Cluster, id: u64, group: u32) -> u64 {
    let digests = cluster.digests(id).await;
    let digests = digests.unwrap_or_else(|s| panic!("expected GetNodeDigest on node {id}: {s}"));
    digests[&group].term
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_port_reflection_describes_no_peer_api() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let cluster = Cluster::start(ClusterConfig {
        nodes: 1,
        ..ClusterConfig::default()
    })
    .await;
    let ask = |message| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(message),
    };
    let requests = tokio_stream::iter([
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol(
            "leasehold.internal.v1.Peer".into(),
        )),
    ]);
    let mut answers = ServerReflectionClient::new(channel(cluster.grpc_addr(1), RPC_TIMEOUT))
        .server_reflection_info(requests)
        .await
        .expect("reflection answers on the client port")
        .into_inner();
    let listed = answers.message().await.expect("a listing").expect("one");
    let Some(MessageResponse::ListServicesResponse(list)) = listed.message_response else {
        panic!("expected a service listing, got {listed:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names.contains(&"leasehold.v1.Leasehold") && !names.iter().any(|n| n.contains("internal")),
        "expected the public API listed and no node-to-node service, got {names:?}"
    );
    // An unknown symbol ends the stream with NOT_FOUND.
    match answers.message().await {
        Err(status) if status.code() == Code::NotFound => {}
        other => panic!("expected no file describing leasehold.internal.v1.Peer, got {other:?}"),
    }
}

/// Peer ports that are not client port + 1, given as `ID=client/peer`:
/// the cluster elects and replicates over them, forwards a call made to a
/// follower to the leader's peer port, and names client addresses in
/// its slot map and its NOT_LEADER hints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_peer_addresses_replicate_while_clients_see_client_addresses() {
    let cluster = Cluster::start(ClusterConfig::default()).await;
    for id in cluster.ids() {
        let (client, peer) = (cluster.grpc_addr(id), cluster.peer_addr(id));
        assert_ne!(
            peer.port(),
            client.port() + 1,
            "expected node {id}'s peer port not to be its client port + 1"
        );
        let map = cluster.slot_map(id).await;
        for node in &map.nodes {
            assert_eq!(
                node.grpc_address,
                cluster.grpc_addr(node.node_id).to_string(),
                "expected node {id}'s slot map to name node {}'s client address",
                node.node_id
            );
        }
    }

    let scope = "acct-explicit-peers";
    let leader = cluster.leader_of(scope).await;
    let group = cluster.group_of(leader, scope).await;
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();

    let request = concurrency_acquire(scope, "jobs", 2, "through-follower", 30_000, None);
    let reply = cluster.client(follower).acquire(request).await;
    let reply = reply.unwrap_or_else(|s| {
        panic!("expected an acquire through follower {follower} to be forwarded: {s}")
    });
    let reply = reply.into_inner();
    assert!(
        matches!(reply.result, Some(AcquireResult::Granted(_))),
        "expected the forwarded acquire to be granted, got {reply:?}"
    );
    let served_by = reply.served_by.expect("served_by on a grant");
    assert_eq!(
        (served_by.group_id, served_by.leader_node_id),
        (group, leader),
        "expected the acquire through node {follower} to be served by leader {leader}"
    );

    // A call already forwarded once is not forwarded again: the follower
    // answers NOT_LEADER, naming the leader's client address.
    let request = concurrency_acquire(scope, "jobs", 2, "already-forwarded", 30_000, None);
    let mut request = Request::new(request);
    request
        .metadata_mut()
        .insert(wire::HOPS_HEADER, MetadataValue::from(1u32));
    let status = cluster
        .client(follower)
        .acquire(request)
        .await
        .expect_err("a forwarded call that reaches a follower is redirected");
    let Some((Redirect::NotLeader, detail)) = Redirect::of(&status) else {
        panic!("expected NOT_LEADER from follower {follower}, got {status}");
    };
    assert_eq!(
        (detail.leader_node_id, detail.leader_address.as_str()),
        (leader, cluster.grpc_addr(leader).to_string().as_str()),
        "expected the hint to name leader {leader} at its client address"
    );
    assert!(
        status
            .message()
            .contains(&cluster.grpc_addr(leader).to_string()),
        "expected the message to name the client address: {status}"
    );
    let peer_addr = cluster.peer_addr(leader).to_string();
    assert!(
        !status.message().contains(&peer_addr),
        "expected no peer address in a client's error: {status}"
    );
}
