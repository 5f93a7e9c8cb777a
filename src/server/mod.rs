//! The leasehold server: one node of a cluster.
//!
//! - [`node`]: the groups this node hosts, bootstrap, readiness, handover.
//! - [`group`]: one Raft group: proposer (batching), scavenger, leadership.
//! - [`network`]: where members listen; Raft transport over one gRPC
//!   channel per peer.
//! - [`peer`]: the node-to-node service (`leasehold.internal.v1.Peer`),
//!   served on the peer port alone.
//! - [`api`]: the public service (`leasehold.v1.Leasehold`): routing,
//!   forwarding, linearizable reads; served on the client port with gRPC
//!   health and reflection.
//! - [`turns`]: whose turn it is among waiting acquires (fair queues).
//! - [`security`]: TLS on both ports and tokens, from the configuration,
//!   re-read when their files change.
//! - [`http`]: Prometheus `/metrics`, `/ready`, `/health`.
//! - [`clock`]: the wall clock leaders stamp commands with.
//! - [`clock_sync`]: whether that clock agrees with the other members' enough to stamp.

pub mod api;
pub mod clock;
pub mod clock_sync;
pub mod codec;
pub mod group;
pub mod http;
pub mod network;
pub mod node;
pub mod peer;
pub mod security;
pub mod turns;

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tonic::transport::Server;

use crate::config::Config;
use crate::proto::peer::peer_server::PeerServer;
use crate::proto::v1::leasehold_server::LeaseholdServer;
use crate::raft::StorageFault;
use node::Node;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("config: {0}")]
    Config(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("{what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics: {0}")]
    Metrics(String),
    #[error("grpc: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("{0}")]
    Security(#[from] security::SecurityError),
}

/// Exit status of a node that met a storage fault (sysexits' `EX_IOERR`):
/// at start (its database cannot be opened: damaged, or the disk full),
/// or while serving. See [`crate::raft::fail_stop`]: a serving node exits
/// at once, flushing and closing nothing, so that its supervisor restarts
/// it and RocksDB recovers only what the disk really holds.
pub const EXIT_STORAGE_FAULT: u8 = 74;

/// A serving node's storage fault handler: the fault is logged and
/// `/ready` says it; the process ends. `_exit`, not `exit`: no exit
/// handler or static destructor runs under RocksDB's live threads, and no
/// thread of ours gets to answer anyone after the fault.
fn exit_on_storage_fault(_fault: &StorageFault) {
    // SAFETY: _exit(2) takes a plain integer, touches no memory of ours
    // and does not return.
    unsafe { libc::_exit(i32::from(EXIT_STORAGE_FAULT)) }
}

/// Histogram buckets (seconds) for latencies: 50 µs to 10 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// How often gauges (Raft positions, leases) are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// Runs a node until SIGTERM or SIGINT, then shuts down gracefully: stop
/// accepting calls, finish those in flight, hand leaderships over, flush.
pub async fn run(config: Config) -> Result<(), ServerError> {
    config
        .validate()
        .map_err(|e| ServerError::Config(e.to_string()))?;
    let prometheus = PrometheusBuilder::new()
        .set_buckets(&LATENCY_BUCKETS)
        .map_err(|e| ServerError::Metrics(e.to_string()))?
        .install_recorder()
        .map_err(|e| ServerError::Metrics(e.to_string()))?;

    let grpc = bind("grpc_addr", config.grpc_addr).await?;
    let peer = bind("peer_addr", config.peer_addr).await?;
    let http = bind("http_addr", config.http_addr).await?;
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    let security = Arc::new(security::Security::load(&config)?);
    let node = Node::open(
        config,
        security.peer_dial.subscribe(),
        Some(Box::new(exit_on_storage_fault)),
    )?;
    tracing::info!(
        node = node.id,
        grpc = %node.config.grpc_addr,
        peer = %node.config.peer_addr,
        http = %node.config.http_addr,
        data_dir = %node.config.data_dir.display(),
        members = node.config.members.len(),
        client_tls = security.client_tls.is_some(),
        peer_tls = security.peer_tls.is_some(),
        tokens = security.auth.is_some(),
        "starting"
    );
    if node.config.insecure {
        tracing::warn!(
            "insecure: the ports may be open to anyone who reaches them (no TLS or no tokens)"
        );
    }

    tokio::spawn(http::serve(http, Arc::clone(&node), prometheus.clone()));
    tokio::spawn(gauges(Arc::clone(&node), prometheus));

    let (health_reporter, health) = tonic_health::server::health_reporter();
    // Turns true when the servers stop: open streams end, so the graceful
    // shutdown does not wait on them, and the listeners close.
    let (stop, closing) = watch::channel(false);
    let api = api::Api::new(Arc::clone(&node), closing.clone(), security.auth.clone());
    let client_port = Server::builder()
        .tcp_nodelay(true)
        .layer(codec::OversizedLayer)
        .add_service(health)
        .add_service(reflection().build_v1().map_err(reflection_error)?)
        .add_service(reflection().build_v1alpha().map_err(reflection_error)?)
        .add_service(LeaseholdServer::new(api.clone()));
    // The peer port also takes the calls members forward to a leader.
    let peer_port = Server::builder()
        .tcp_nodelay(true)
        .layer(codec::OversizedLayer)
        .add_service(PeerServer::new(peer::PeerService::new(
            Arc::clone(&node),
            closing.clone(),
        )))
        .add_service(LeaseholdServer::new(api.for_members()));
    let servers = (
        serve_port(
            client_port,
            grpc,
            security.client_tls.clone(),
            closing.clone(),
        ),
        serve_port(peer_port, peer, security.peer_tls.clone(), closing),
    );
    tokio::spawn(Arc::clone(&security).reload_forever());
    tokio::spawn(Arc::clone(&node).watch_clock());

    let mut term =
        signal(SignalKind::terminate()).map_err(|e| ServerError::Config(e.to_string()))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| ServerError::Config(e.to_string()))?;
    tokio::select! {
        result = node.bootstrap() => result?,
        _ = term.recv() => return stop_early(&node).await,
        _ = int.recv() => return stop_early(&node).await,
    }
    health_reporter
        .set_serving::<LeaseholdServer<api::Api>>()
        .await;

    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    health_reporter
        .set_not_serving::<LeaseholdServer<api::Api>>()
        .await;
    // Leaderships move first, while this node still answers its peers;
    // calls that arrive meanwhile are forwarded to the new leaders.
    node.shutdown().await;
    let _ = stop.send(true);
    let (client_port, peer_port) = servers;
    let finished = tokio::time::timeout(grace, async { (client_port.await, peer_port.await) });
    match finished.await {
        Ok((client_port, peer_port)) => {
            log_server_end("client port", client_port);
            log_server_end("peer port", peer_port);
        }
        Err(_) => tracing::warn!(?grace, "calls still in flight after the grace period"),
    }
    node.stop_groups().await;
    node.flush();
    tracing::info!("stopped");
    Ok(())
}

async fn bind(what: &'static str, addr: std::net::SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { what, addr, source })
}

/// Server reflection of the public API and health, to build in both
/// versions, so that grpcurl and other tools of either age work.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

fn reflection_error(e: tonic_reflection::server::Error) -> ServerError {
    ServerError::Config(format!("reflection: {e}"))
}

/// Resolves once `closing` turns true (or its sender is gone).
async fn stopped(mut closing: watch::Receiver<bool>) {
    let _ = closing.wait_for(|closing| *closing).await;
}

fn log_server_end(
    port: &'static str,
    ended: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) {
    match ended {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, port, "grpc server"),
        Err(e) => tracing::warn!(error = %e, port, "grpc server task"),
    }
}

async fn stop_early(node: &Arc<Node>) -> Result<(), ServerError> {
    tracing::info!("signal before the node was ready: stopping");
    node.stop_groups().await;
    node.flush();
    Ok(())
}

type Port = tonic::transport::server::Router<
    tower_layer::Stack<codec::OversizedLayer, tower_layer::Identity>,
>;

/// Serves `port` on `listener`, over TLS when `tls` is given, until
/// `closing` turns true.
fn serve_port(
    port: Port,
    listener: TcpListener,
    tls: Option<Arc<crate::tls::ServerTls>>,
    closing: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Result<(), tonic::transport::Error>> {
    match tls {
        Some(tls) => tokio::spawn(
            port.serve_with_incoming_shutdown(crate::tls::accept(listener, tls), stopped(closing)),
        ),
        None => tokio::spawn(
            port.serve_with_incoming_shutdown(tokio_stream_listener(listener), stopped(closing)),
        ),
    }
}

/// Accepted connections, with Nagle's algorithm off: a reply must not wait
/// for the ACK of the one before it. (`Server::tcp_nodelay` applies only to
/// listeners the server opens itself.)
fn tokio_stream_listener(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

/// Refreshes per-group gauges and runs the exporter's upkeep.
async fn gauges(node: Arc<Node>, prometheus: metrics_exporter_prometheus::PrometheusHandle) {
    let mut tick = tokio::time::interval(GAUGE_INTERVAL);
    loop {
        tick.tick().await;
        prometheus.run_upkeep();
        for group in node.groups() {
            let label = if group.id == crate::raft::META_GROUP {
                "meta".to_string()
            } else {
                group.id.to_string()
            };
            let m = group.metrics().borrow().clone();
            let last_log = m.last_log_index.unwrap_or(0);
            let applied = m.last_applied.map_or(0, |l| l.index);
            let leader = m.state == openraft::ServerState::Leader;
            metrics::gauge!("leasehold_raft_term", "group" => label.clone())
                .set(m.current_term as f64);
            metrics::gauge!("leasehold_raft_leader_node", "group" => label.clone())
                .set(m.current_leader.unwrap_or(0) as f64);
            metrics::gauge!("leasehold_raft_is_leader", "group" => label.clone()).set(if leader {
                1.0
            } else {
                0.0
            });
            metrics::gauge!("leasehold_raft_last_log_index", "group" => label.clone())
                .set(last_log as f64);
            metrics::gauge!("leasehold_raft_applied_index", "group" => label.clone())
                .set(applied as f64);
            metrics::gauge!("leasehold_raft_apply_lag_entries", "group" => label.clone())
                .set(last_log.saturating_sub(applied) as f64);
            if let Some(replication) = &m.replication {
                let slowest = replication
                    .values()
                    .map(|matched| last_log.saturating_sub(matched.map_or(0, |l| l.index)))
                    .max()
                    .unwrap_or(0);
                metrics::gauge!("leasehold_raft_replication_lag_entries", "group" => label.clone())
                    .set(slowest as f64);
            }
            let leases = group.engine.read(|e| e.store().lease_count());
            metrics::gauge!("leasehold_leases_stored", "group" => label).set(leases as f64);
        }
        let sync = node.db.sync_counts();
        metrics::gauge!("leasehold_wal_fsyncs").set(sync.fsyncs as f64);
        metrics::gauge!("leasehold_wal_synced_entries").set(sync.entries as f64);
    }
}
