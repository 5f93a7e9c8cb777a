//! A real cluster for integration tests: `leasehold serve` processes on
//! loopback ports, each with its own data directory and log file. A node
//! has three ports: client (gRPC API), peer (node-to-node gRPC) and HTTP;
//! members are given with explicit peer addresses, never at client port + 1.
//!
//! Nodes are named by their node id (1, 2, 3, ...). Every wait polls with a
//! deadline; nothing sleeps to synchronise. When a test panics, dropping the
//! `Cluster` kills every node and prints the tail of each node's log.
//!
//! Each test binary compiles this module and uses part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use leasehold::proto::peer::peer_client::PeerClient;
use leasehold::proto::v1::leasehold_client::LeaseholdClient;
use leasehold::proto::v1::{
    self, constraint, GetNodeDigestRequest, GetSlotMapRequest, GroupDigest, SlotMap,
};
use leasehold::slot::{owner, slot_of, SlotRange};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// The metadata group's id in GetNodeDigest; every other group is a data
/// group.
pub const META_GROUP: u32 = u32::MAX;

/// How long a node may take to report `/ready` after it was (re)started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long replicas may take to apply the same log once writes stop.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(5);

/// Default deadline of one RPC from a test client.
const RPC_TIMEOUT: Duration = Duration::from_secs(3);

/// Deadline of one HTTP request or GetNodeDigest poll.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Pause between two polls of the same condition.
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Set to keep every node's directory (data and full log) after a test;
/// they are always kept after a failure.
const KEEP_DIRS_ENV: &str = "LEASEHOLD_TEST_KEEP_DIRS";

/// Lines of each node's log printed when a test fails.
const LOG_TAIL_LINES: usize = 60;

/// Per group id, that group's digest: one node's GetNodeDigest reply.
pub type NodeDigests = BTreeMap<u32, GroupDigest>;

/// Per node id, its digests.
pub type ClusterDigests = BTreeMap<u64, NodeDigests>;

/// The flags every node of a cluster shares. Raft timing left unset takes
/// the server's defaults, which are what its failover promise is made for.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub nodes: u64,
    /// Data groups (`--groups`).
    pub groups: u32,
    /// Hash slots (`--slots`).
    pub slots: u32,
    pub election_timeout_ms: Option<u64>,
    pub heartbeat_interval_ms: Option<u64>,
    pub snapshot_interval_entries: Option<u64>,
    /// Client calls a node serves at once (`--max-in-flight-calls`).
    pub max_in_flight_calls: Option<u64>,
    /// How long idempotency records outlive what they recorded
    /// (`--dedup-window-ms`).
    pub dedup_window_ms: Option<u64>,
    /// Quotas (`--max-leases-per-scope`, `--max-keys-per-scope`,
    /// `--max-waiters-per-scope`, `--max-idempotency-records-per-group`).
    pub max_leases_per_scope: Option<u64>,
    pub max_keys_per_scope: Option<u64>,
    pub max_waiters_per_scope: Option<u64>,
    pub max_idempotency_records_per_group: Option<u64>,
    /// Each node follows its own storage fault file and records its WAL
    /// syncs (`--unsafe-test-storage-faults`); see
    /// [`Cluster::set_storage_faults`].
    pub storage_faults: bool,
    /// Whether each node follows a test clock file (`--unsafe-test-clock`)
    /// that [`Cluster::step_clock`] writes.
    pub test_clocks: bool,
    /// Further `serve` flags, the same for every node.
    pub extra_args: Vec<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nodes: 3,
            groups: 4,
            slots: 1024,
            election_timeout_ms: None,
            heartbeat_interval_ms: None,
            snapshot_interval_entries: None,
            max_in_flight_calls: None,
            dedup_window_ms: None,
            max_leases_per_scope: None,
            max_keys_per_scope: None,
            max_waiters_per_scope: None,
            max_idempotency_records_per_group: None,
            storage_faults: false,
            test_clocks: false,
            extra_args: Vec::new(),
        }
    }
}

/// One `leasehold serve` process and what it keeps across restarts.
struct Node {
    id: u64,
    grpc_addr: SocketAddr,
    peer_addr: SocketAddr,
    http_addr: SocketAddr,
    /// Holds `data/` (the node's data dir) and `node.log` (stdout and
    /// stderr of every run, appended).
    dir: TempDir,
    child: Option<Child>,
    /// Stopped by SIGSTOP and not yet continued.
    paused: bool,
}

impl Node {
    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("node.log")
    }

    fn faults_path(&self) -> PathBuf {
        self.dir.path().join("storage-faults")
    }

    fn clock_path(&self) -> PathBuf {
        self.dir.path().join("clock")
    }
}

/// A running (or partly crashed) cluster; dropping it kills every node.
pub struct Cluster {
    config: ClusterConfig,
    nodes: Vec<Node>,
}

impl Cluster {
    /// Starts every node and waits until each reports ready.
    pub async fn start(config: ClusterConfig) -> Cluster {
        let mut cluster = Cluster::spawn(config);
        for id in cluster.ids() {
            cluster.wait_ready(id, READY_TIMEOUT).await;
        }
        cluster
    }

    /// Starts every node but `absent` (they can be started later with
    /// [`Cluster::restart`]) and waits until each started one is ready.
    pub async fn start_without(config: ClusterConfig, absent: &[u64]) -> Cluster {
        let mut cluster = Cluster::prepare(config);
        for id in cluster.ids() {
            if !absent.contains(&id) {
                cluster.restart(id);
            }
        }
        for id in cluster.live() {
            cluster.wait_ready(id, READY_TIMEOUT).await;
        }
        cluster
    }

    /// Starts every node without waiting for readiness.
    fn spawn(config: ClusterConfig) -> Cluster {
        let mut cluster = Cluster::prepare(config);
        for id in cluster.ids() {
            cluster.restart(id);
        }
        cluster
    }

    /// Allocates every node's ports and directory; starts none.
    fn prepare(config: ClusterConfig) -> Cluster {
        // Ascending: a peer port is never its client port + 1.
        let ports = free_ports(3 * config.nodes as usize);
        let nodes = (1..=config.nodes)
            .zip(ports.chunks(3))
            .map(|(id, ports)| Node {
                id,
                grpc_addr: ports[0],
                http_addr: ports[1],
                peer_addr: ports[2],
                dir: tempfile::Builder::new()
                    .prefix(&format!("leasehold-node{id}-"))
                    .tempdir()
                    .expect("a temp dir for a node"),
                child: None,
                paused: false,
            })
            .collect();
        Cluster { config, nodes }
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// Nodes whose process was started and not killed, seen to exit or
    /// paused: those that answer.
    pub fn live(&self) -> Vec<u64> {
        let live = self.nodes.iter().filter(|n| n.child.is_some() && !n.paused);
        live.map(|n| n.id).collect()
    }

    pub fn groups(&self) -> u32 {
        self.config.groups
    }

    /// Node `id`'s client address: public API, health, reflection.
    pub fn grpc_addr(&self, id: u64) -> SocketAddr {
        self.node(id).grpc_addr
    }

    /// Node `id`'s peer address: the node-to-node API.
    pub fn peer_addr(&self, id: u64) -> SocketAddr {
        self.node(id).peer_addr
    }

    /// The `serve` flags of node `id`, the same on every (re)start.
    fn serve_args(&self, id: u64) -> Vec<String> {
        let node = self.node(id);
        let members = self
            .nodes
            .iter()
            .map(|n| format!("{}={}/{}", n.id, n.grpc_addr, n.peer_addr));
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--node-id".into(),
            id.to_string(),
            "--grpc-addr".into(),
            node.grpc_addr.to_string(),
            "--peer-addr".into(),
            node.peer_addr.to_string(),
            "--http-addr".into(),
            node.http_addr.to_string(),
            "--data-dir".into(),
            node.data_dir().display().to_string(),
            "--members".into(),
            members.collect::<Vec<_>>().join(","),
            "--groups".into(),
            self.config.groups.to_string(),
            "--slots".into(),
            self.config.slots.to_string(),
            "--replication-factor".into(),
            "3".into(),
        ];
        let optional = [
            ("--election-timeout-ms", self.config.election_timeout_ms),
            ("--heartbeat-interval-ms", self.config.heartbeat_interval_ms),
            (
                "--snapshot-interval-entries",
                self.config.snapshot_interval_entries,
            ),
            ("--max-in-flight-calls", self.config.max_in_flight_calls),
            ("--dedup-window-ms", self.config.dedup_window_ms),
            ("--max-leases-per-scope", self.config.max_leases_per_scope),
            ("--max-keys-per-scope", self.config.max_keys_per_scope),
            ("--max-waiters-per-scope", self.config.max_waiters_per_scope),
            (
                "--max-idempotency-records-per-group",
                self.config.max_idempotency_records_per_group,
            ),
        ];
        for (flag, value) in optional {
            if let Some(value) = value {
                args.extend([flag.to_string(), value.to_string()]);
            }
        }
        if self.config.storage_faults {
            args.push("--unsafe-test-storage-faults".into());
            args.push(node.faults_path().display().to_string());
        }
        if self.config.test_clocks {
            let path = self.node(id).clock_path().display().to_string();
            args.extend(["--unsafe-test-clock".to_string(), path]);
        }
        args.extend(self.config.extra_args.iter().cloned());
        args
    }

    /// Node `id`'s data directory (its RocksDB).
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.node(id).data_dir()
    }

    /// Everything node `id` has logged, over all its runs.
    pub fn log_text(&self, id: u64) -> String {
        read_lossy(&self.node(id).log_path())
    }

    /// Writes node `id`'s storage fault file (e.g. `fsync=eio`; empty
    /// clears it); the node re-reads it within 50 ms. The cluster must
    /// have been started with [`ClusterConfig::storage_faults`].
    pub fn set_storage_faults(&self, id: u64, faults: &str) {
        assert!(
            self.config.storage_faults,
            "expected a cluster started with storage_faults to inject faults into"
        );
        self.mark(&format!("storage faults of node {id}: `{faults}`"));
        std::fs::write(self.node(id).faults_path(), faults)
            .expect("the storage fault file is writable");
    }

    /// Waits until node `id` says it has armed what its storage fault
    /// file says; panics if it exits or `timeout` passes first.
    pub async fn wait_storage_faults_armed(&mut self, id: u64, timeout: Duration) {
        let path = self.node(id).faults_path();
        let applied = leasehold::raft::test_seam::applied_path(&path);
        let wanted = std::fs::read_to_string(&path).expect("the storage fault file reads");
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_running(id);
            if std::fs::read_to_string(&applied).is_ok_and(|text| text == wanted) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "expected node {id} to arm storage faults `{wanted}` within {timeout:?}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// (Re)starts node `id` with its flags and data dir.
    pub fn restart(&mut self, id: u64) {
        let args = self.serve_args(id);
        self.mark(&format!("starting node {id}"));
        let node = self.node_mut(id);
        assert!(
            node.child.is_none(),
            "node {id} must be stopped before a restart"
        );
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.log_path())
            .expect("the node's log file opens");
        let child = leasehold_command()
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file handle clones"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("node {id}: expected `leasehold serve` to spawn: {e}"));
        node.child = Some(child);
    }

    /// Steps node `id`'s wall clock to real time + `offset_ms` (its
    /// monotonic clock runs on); the node reads it within 50 ms.
    pub fn step_clock(&self, id: u64, offset_ms: i64) {
        assert!(
            self.config.test_clocks,
            "step_clock needs ClusterConfig::test_clocks"
        );
        self.mark(&format!("clock of node {id} set to real + {offset_ms} ms"));
        std::fs::write(
            self.node(id).clock_path(),
            format!("offset_ms={offset_ms}\n"),
        )
        .expect("the test clock file is writable");
    }

    /// Node `id`'s answer to `GET /ready`: status and body.
    pub async fn readiness(&self, id: u64) -> (u16, String) {
        http_get(self.node(id).http_addr, "/ready")
            .await
            .unwrap_or_else(|e| panic!("expected node {id} to answer /ready: {e}"))
    }

    /// Crashes node `id` (SIGKILL) and reaps it.
    pub fn kill(&mut self, id: u64) {
        let mut child = self.take_child(id);
        self.mark(&format!("SIGKILL node {id}"));
        child.kill().expect("SIGKILL reaches the node");
        child.wait().expect("the killed node is reaped");
    }

    /// Crashes every node at once, restarts them all from their data dirs
    /// and waits until each is ready.
    pub async fn crash_and_restart_all(&mut self) {
        for id in self.ids() {
            self.kill(id);
        }
        for id in self.ids() {
            self.restart(id);
        }
        for id in self.ids() {
            self.wait_ready(id, READY_TIMEOUT).await;
        }
    }

    /// Asks node `id` to stop gracefully (SIGTERM). See [`Cluster::wait_exit`].
    pub fn terminate(&mut self, id: u64) {
        self.signal(id, "TERM");
    }

    /// Freezes node `id` (SIGSTOP): it keeps its sockets, so what is sent
    /// to it waits in them, but it answers nothing until resumed. It does
    /// not count as live meanwhile.
    pub fn pause(&mut self, id: u64) {
        self.signal(id, "STOP");
        self.node_mut(id).paused = true;
    }

    /// Lets a paused node `id` run on (SIGCONT).
    pub fn resume(&mut self, id: u64) {
        assert!(self.node(id).paused, "expected node {id} to be paused");
        self.signal(id, "CONT");
        self.node_mut(id).paused = false;
    }

    /// Asks node `id` to re-read its certificates and tokens (SIGHUP).
    pub fn hangup(&self, id: u64) {
        self.signal(id, "HUP");
    }

    fn signal(&self, id: u64, signal: &str) {
        let pid = self.node(id).child.as_ref().expect("node is running").id();
        self.mark(&format!("SIG{signal} node {id}"));
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("`kill` runs");
        assert!(
            status.success(),
            "expected `kill -{signal} {pid}` to succeed"
        );
    }

    /// Waits until node `id` exits and returns its status; panics when it
    /// is still running after `timeout`.
    pub async fn wait_exit(&mut self, id: u64, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.node_mut(id).child.as_mut().expect("node is running");
            if let Some(status) = child.try_wait().expect("the node's status is readable") {
                self.node_mut(id).child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "expected node {id} to exit within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Node `id`'s exit status if it has exited (it is then no longer
    /// live), without waiting.
    pub fn exited(&mut self, id: u64) -> Option<ExitStatus> {
        let child = self.node_mut(id).child.as_mut()?;
        let status = child.try_wait().expect("the node's status is readable")?;
        self.node_mut(id).child = None;
        self.mark(&format!("node {id} exited: {status}"));
        Some(status)
    }

    /// Polls node `id`'s `GET /ready` until it answers 200. Panics if the
    /// process exits or `timeout` passes first.
    pub async fn wait_ready(&mut self, id: u64, timeout: Duration) {
        let addr = self.node(id).http_addr;
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_running(id);
            let last = match http_get(addr, "/ready").await {
                Ok((200, _)) => return,
                Ok((status, body)) => format!("HTTP {status}: {}", body.trim()),
                Err(e) => format!("request failed: {e}"),
            };
            assert!(
                Instant::now() < deadline,
                "expected node {id} to answer 200 on /ready within {timeout:?}; last: {last}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// A client of node `id`'s public API, each call limited to 3 s.
    pub fn client(&self, id: u64) -> LeaseholdClient<Channel> {
        self.client_with_timeout(id, RPC_TIMEOUT)
    }

    /// A client of node `id`'s public API, each call limited to `timeout`.
    pub fn client_with_timeout(&self, id: u64, timeout: Duration) -> LeaseholdClient<Channel> {
        LeaseholdClient::new(self.channel(id, timeout))
    }

    /// The Rust client, seeded with every node; each call (retries
    /// included) may take `call_timeout`.
    pub async fn rust_client(&self, call_timeout: Duration) -> leasehold::client::Client {
        let seeds = self
            .ids()
            .into_iter()
            .map(|id| self.grpc_addr(id).to_string());
        let mut config = leasehold::client::ClientConfig::new(seeds);
        config.call_timeout = call_timeout;
        leasehold::client::Client::connect(config)
            .await
            .expect("the client connects to a ready cluster")
    }

    /// A client of node `id`'s node-to-node API, on its peer port.
    pub fn peer(&self, id: u64) -> PeerClient<Channel> {
        PeerClient::new(channel(self.peer_addr(id), PROBE_TIMEOUT))
    }

    /// Node `id`'s `GET /metrics` body (Prometheus text).
    pub async fn metrics(&self, id: u64) -> String {
        match http_get(self.node(id).http_addr, "/metrics").await {
            Ok((200, body)) => body,
            Ok((status, body)) => {
                panic!("expected /metrics of node {id} to answer 200, got {status}: {body}")
            }
            Err(e) => panic!("expected /metrics of node {id} to answer: {e}"),
        }
    }

    /// Node `id`'s slot map.
    pub async fn slot_map(&self, id: u64) -> SlotMap {
        let reply = self.client(id).get_slot_map(GetSlotMapRequest {}).await;
        let map = reply
            .unwrap_or_else(|s| panic!("expected GetSlotMap on node {id} to succeed: {s}"))
            .into_inner();
        assert_eq!(
            (map.slot_count, map.groups.len()),
            (self.config.slots, self.groups() as usize),
            "expected node {id}'s map to have the cluster's slots and groups"
        );
        map
    }

    /// The group that owns `scope`'s slot, by node `id`'s slot map.
    pub async fn group_of(&self, id: u64, scope: &str) -> u32 {
        group_in(&self.slot_map(id).await, scope)
    }

    /// The leader of `scope`'s group, once every live node names the same
    /// one (polls up to [`READY_TIMEOUT`]).
    pub async fn leader_of(&self, scope: &str) -> u64 {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let mut views = BTreeMap::new();
            let mut group = 0;
            for id in self.live() {
                let map = self.slot_map(id).await;
                group = group_in(&map, scope);
                let g = map.groups.iter().find(|g| g.group_id == group);
                let g =
                    g.unwrap_or_else(|| panic!("expected node {id}'s map to list group {group}"));
                views.insert(id, g.leader_node_id);
            }
            let first = *views.values().next().expect("at least one live node");
            if first != 0 && views.values().all(|&l| l == first) {
                return first;
            }
            assert!(
                Instant::now() < deadline,
                "expected live nodes to agree on the leader of group {group}; views: {views:?}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Node `id`'s GetNodeDigest, by group.
    pub async fn digests(&self, id: u64) -> Result<NodeDigests, Status> {
        let mut client = self.client_with_timeout(id, PROBE_TIMEOUT);
        let reply = client.get_node_digest(GetNodeDigestRequest {}).await?;
        let groups = reply.into_inner().groups;
        Ok(groups.into_iter().map(|g| (g.group_id, g)).collect())
    }

    /// Polls GetNodeDigest on every live node until every data group is
    /// at the same last applied index on all of them, twice in a row (so a
    /// digest read mid-apply cannot pass), and returns the last poll.
    pub async fn wait_digests_converge(&self, timeout: Duration) -> ClusterDigests {
        let deadline = Instant::now() + timeout;
        let mut previous: Option<BTreeMap<u32, Vec<u64>>> = None;
        loop {
            let mut all = ClusterDigests::new();
            let mut failure = None;
            for id in self.live() {
                match self.digests(id).await {
                    Ok(d) => {
                        all.insert(id, d);
                    }
                    Err(s) => failure = Some(format!("GetNodeDigest on node {id} failed: {s}")),
                }
            }
            let positions = failure.is_none().then(|| self.applied_positions(&all));
            let converged = positions.as_ref().is_some_and(|p| {
                p.values()
                    .all(|idx| idx.len() == all.len() && idx.iter().all(|&i| i == idx[0]))
            });
            if converged && positions == previous {
                return all;
            }
            assert!(
                Instant::now() < deadline,
                "expected every group's last_applied_index to converge on nodes {:?} within \
                 {timeout:?}; last poll: {}",
                self.live(),
                failure.unwrap_or_else(|| describe_digests(&all))
            );
            previous = if converged { positions } else { None };
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Per data group, the last applied index reported by each node that
    /// hosts it (in node order).
    fn applied_positions(&self, all: &ClusterDigests) -> BTreeMap<u32, Vec<u64>> {
        let mut positions: BTreeMap<u32, Vec<u64>> =
            (0..self.groups()).map(|g| (g, Vec::new())).collect();
        for digests in all.values() {
            for (group, d) in digests.iter().filter(|(g, _)| **g != META_GROUP) {
                positions
                    .entry(*group)
                    .or_default()
                    .push(d.last_applied_index);
            }
        }
        positions
    }

    /// The last lines of every node's log.
    fn log_tails(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let text = read_lossy(&node.log_path());
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            let _ = writeln!(
                out,
                "----- node {} ({}) last {} lines -----\n{}",
                node.id,
                node.log_path().display(),
                tail.len(),
                tail.join("\n")
            );
        }
        out
    }

    /// Writes a line naming a harness event, with wall-clock time, into
    /// every node's log, so that logs read against the test's steps.
    fn mark(&self, event: &str) {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        for node in &self.nodes {
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(node.log_path());
            if let Ok(mut log) = log {
                // Best effort: a missing marker only makes a log harder to read.
                let _ = writeln!(log, "===== harness: {event} at unix {unix_ms} ms =====");
            }
        }
    }

    fn channel(&self, id: u64, timeout: Duration) -> Channel {
        channel(self.grpc_addr(id), timeout)
    }

    fn assert_running(&mut self, id: u64) {
        let child = self.node_mut(id).child.as_mut();
        let child = child.unwrap_or_else(|| panic!("expected node {id} to be running"));
        if let Some(status) = child.try_wait().expect("the node's status is readable") {
            self.node_mut(id).child = None;
            let text = read_lossy(&self.node(id).log_path());
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(10)..].join("\n");
            panic!("expected node {id} to keep running, but it exited with {status}; its log ends:\n{tail}");
        }
    }

    fn take_child(&mut self, id: u64) -> Child {
        let node = self.node_mut(id);
        node.paused = false;
        let child = node.child.take();
        child.unwrap_or_else(|| panic!("expected node {id} to be running"))
    }

    fn node(&self, id: u64) -> &Node {
        let node = self.nodes.iter().find(|n| n.id == id);
        node.unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        let node = self.nodes.iter_mut().find(|n| n.id == id);
        node.unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                // Already gone is fine: the test may have crashed it.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() || std::env::var_os(KEEP_DIRS_ENV).is_some() {
            // Keep every node's directory: the full logs tell more than tails.
            for node in &mut self.nodes {
                node.dir.disable_cleanup(true);
            }
        }
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails());
        }
    }
}

/// An acquire of one unit of `scope`'s concurrency key `key` (limit
/// `limit`) under idempotency key `idem`.
pub fn concurrency_acquire(
    scope: &str,
    key: &str,
    limit: u32,
    idem: &str,
    lease_ttl_ms: u64,
    wait_ms: Option<u64>,
) -> v1::AcquireRequest {
    v1::AcquireRequest {
        scope: scope.into(),
        constraints: vec![v1::Constraint {
            kind: Some(constraint::Kind::Concurrency(v1::Concurrency {
                key: key.into(),
                limit,
            })),
        }],
        amount: 1,
        min_amount: None,
        lease_ttl_ms,
        max_lifetime_ms: None,
        idempotency_key: idem.into(),
        wait_ms,
        fairness_key: String::new(),
    }
}

/// A lazily connected channel to `addr`, each call limited to `timeout`.
pub fn channel(addr: SocketAddr, timeout: Duration) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid endpoint URI")
        .connect_timeout(Duration::from_millis(500))
        .timeout(timeout)
        .connect_lazy()
}

/// `leasehold` with the environment a test node runs in.
pub fn leasehold_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_leasehold"));
    // Only the flags a test passes configure a node.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("LEASEHOLD_") {
            command.env_remove(name);
        }
    }
    // Log files are read, not watched in a terminal.
    command.env("NO_COLOR", "1");
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "info");
    }
    command
}

/// Calls `call` until it returns something other than a transient error
/// (UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED, UNKNOWN from the transport),
/// for at most `timeout`. Only for idempotent calls: a retry must carry
/// the same idempotency key.
pub async fn retry_transient<T, F, Fut>(
    what: &str,
    timeout: Duration,
    mut call: F,
) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match call().await {
            Ok(reply) => return Ok(reply.into_inner()),
            Err(s) if is_transient(&s) && Instant::now() < deadline => {
                tokio::time::sleep(POLL_INTERVAL).await;
            }
            Err(s) if is_transient(&s) => {
                panic!("expected {what} to succeed within {timeout:?}; last error: {s}")
            }
            Err(s) => return Err(s),
        }
    }
}

/// An error after which the same call may succeed: no leader yet, a leader
/// gone, a connection lost.
pub fn is_transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
    )
}

/// Sum of every sample of the Prometheus metric `name`, over all labels.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let rest = if let Some(labelled) = rest.strip_prefix('{') {
                &labelled[labelled.find('}')? + 1..]
            } else {
                rest
            };
            rest.starts_with(' ')
                .then(|| rest.split_whitespace().next())?
        })
        .map(|v| {
            v.parse::<f64>()
                .unwrap_or_else(|e| panic!("metric {name}: bad value {v}: {e}"))
        })
        .sum()
}

/// The group that owns `scope`'s slot in `map`.
pub fn group_in(map: &SlotMap, scope: &str) -> u32 {
    let ranges: Vec<SlotRange> = map.slot_ranges.iter().map(SlotRange::from).collect();
    owner(&ranges, slot_of(scope, map.slot_count))
        .unwrap_or_else(|| panic!("expected the slot map to cover {scope:?}'s slot"))
}

/// Asserts that every data group has the same state digest and last
/// applied position on every node.
pub fn assert_same_state(all: &ClusterDigests, groups: u32) {
    for group in 0..groups {
        let per_node: Vec<(u64, Option<&GroupDigest>)> =
            all.iter().map(|(id, d)| (*id, d.get(&group))).collect();
        let reference = per_node[0].1;
        let same = per_node.iter().all(|(_, d)| {
            d.zip(reference).is_some_and(|(d, r)| {
                (d.state_digest, d.last_applied_index, d.last_applied_term)
                    == (r.state_digest, r.last_applied_index, r.last_applied_term)
            })
        });
        assert!(
            same,
            "expected group {group} to have one state digest and applied position on every \
             node; got {}",
            describe_digests(all)
        );
    }
}

/// One line per node and group: applied position, digest, leases, leader.
pub fn describe_digests(all: &ClusterDigests) -> String {
    let mut out = String::new();
    for (id, digests) in all {
        for d in digests.values() {
            let _ = write!(
                out,
                "\n  node {id} group {}: applied {}/{} digest {:#018x} leases {} leader {} term {}",
                d.group_id,
                d.last_applied_term,
                d.last_applied_index,
                d.state_digest,
                d.leases,
                d.leader_node_id,
                d.term
            );
        }
    }
    out
}

/// Test ports come from below the kernel's ephemeral range (32768..61000
/// on Linux), so no outgoing connection of any node can take a port between
/// the moment it is chosen and the moment its node binds it, nor while a
/// stopped node is down. Each test process walks its own stretch of the range
/// and never hands a port out twice.
const PORT_RANGE: std::ops::Range<u16> = 20_000..32_000;

/// `n` distinct loopback ports, each free when chosen and never handed out
/// before by this process.
pub fn free_ports(n: usize) -> Vec<SocketAddr> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let span = u32::from(PORT_RANGE.end - PORT_RANGE.start);
    let start = std::process::id().wrapping_mul(997) % span;
    let mut ports = Vec::with_capacity(n);
    while ports.len() < n {
        let step = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(
            step < span,
            "expected fewer than {span} test ports in one process"
        );
        let offset = u16::try_from((start + step) % span).expect("the offset is below the span");
        let addr = SocketAddr::from(([127, 0, 0, 1], PORT_RANGE.start + offset));
        if TcpListener::bind(addr).is_ok() {
            ports.push(addr);
        }
    }
    ports
}

/// A bare HTTP/1.1 GET: (status, body). Limited to one second.
async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        parse_http_response(&raw)
    };
    tokio::time::timeout(PROBE_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other(format!("GET {path} timed out"))))
}

fn parse_http_response(raw: &[u8]) -> std::io::Result<(u16, String)> {
    let bad = |what: &str| std::io::Error::other(format!("malformed HTTP response: {what}"));
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let body = &raw[split + 4..];
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(body).ok_or_else(|| bad("broken chunked body"))?
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&raw[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

/// Reads a whole file written by a child process; a missing file reads as
/// a note saying so.
pub fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}

/// A log file for a child process's output.
pub fn create_log(path: &Path) -> File {
    File::create(path).expect("a log file in the temp dir")
}
