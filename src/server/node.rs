//! A leasehold node: the groups it hosts, the slot map, and the
//! lifecycle (bootstrap, readiness, leadership handover on shutdown,
//! fail-stop on a storage fault).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, RaftMetrics, ServerState, SnapshotPolicy};
use tokio::sync::watch;

use super::clock_sync::{ClockSync, PROBE_INTERVAL};
use super::group::{Group, GroupOptions};
use super::network::Peers;
use super::ServerError;
use crate::config::Config;
use crate::engine::EngineConfig;
use crate::proto::peer::{ClockRequest, ElectRequest, MetaProposal};
use crate::raft::test_seam::{FaultInjector, TestSeam, WalSyncRecord};
use crate::raft::{
    DbError, DbOptions, FaultHandler, GroupId, MetaCommand, NodeId, RaftDb, Request, SlotMap,
    StorageFault, META_GROUP,
};

/// How often bootstrap re-checks whether the slot map is in place.
const BOOTSTRAP_POLL: Duration = Duration::from_millis(50);

pub struct Node {
    pub id: NodeId,
    pub config: Config,
    pub db: Arc<RaftDb>,
    pub peers: Arc<Peers>,
    groups: RwLock<HashMap<GroupId, Arc<Group>>>,
    pub clock: Arc<ClockSync>,
    ready: AtomicBool,
    stopping: AtomicBool,
}

/// What `/ready` says of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Every hosted group has had a leader; the node serves.
    Ready,
    /// Not every hosted group has had a leader yet.
    Starting,
    Stopping,
    /// Its clock is out of bounds (see [`super::clock_sync`]): it may not
    /// stamp lease time, so it does not lead; the reason.
    Unsynchronized(String),
    /// Storage failed: the node never serves from this state again.
    Failed(StorageFault),
}

impl Node {
    /// Opens the node's database; `on_fault` runs on its first storage
    /// fault (the server's exits the process). `peer_dial` is how it dials
    /// its peers' ports (`None`: in plaintext), now and after each change.
    pub fn open(
        config: Config,
        peer_dial: tokio::sync::watch::Receiver<Option<tonic::transport::ClientTlsConfig>>,
        on_fault: Option<FaultHandler>,
    ) -> Result<Arc<Node>, ServerError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            ServerError::Storage(format!("data_dir {}: {e}", config.data_dir.display()))
        })?;
        let options = DbOptions {
            on_fault,
            test_seam: test_seam(&config)?,
        };
        let db = RaftDb::open_with(&config.data_dir, options).map_err(|e| {
            let dir = config.data_dir.display();
            ServerError::Storage(match &e {
                DbError::Rocks(r) if r.kind() == rocksdb::ErrorKind::Corruption => {
                    format!("{dir} is damaged; refusing to start on it: {e}")
                }
                _ => format!("opening {dir}: {e}"),
            })
        })?;
        let clock = ClockSync::new(
            config.node_id,
            config.members.len(),
            config.max_clock_offset_ms,
        );
        Ok(Arc::new(Node {
            id: config.node_id,
            clock: Arc::new(clock),
            peers: Arc::new(Peers::new(&config.members, peer_dial)),
            config,
            db,
            groups: RwLock::new(HashMap::new()),
            ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
        }))
    }

    fn group_options(&self) -> Result<GroupOptions, ServerError> {
        let c = &self.config;
        let raft = openraft::Config {
            cluster_name: "leasehold".into(),
            heartbeat_interval: c.heartbeat_interval_ms,
            election_timeout_min: c.election_timeout_ms,
            election_timeout_max: c.election_timeout_ms * 2,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(c.snapshot_interval_entries),
            // Replicas further behind than this catch up by snapshot.
            max_in_snapshot_log_to_keep: c.snapshot_interval_entries.min(1000),
            ..Default::default()
        }
        .validate()
        .map_err(|e| ServerError::Config(format!("raft timings: {e}")))?;
        Ok(GroupOptions {
            node_id: self.id,
            raft: Arc::new(raft),
            engine: EngineConfig {
                slot_count: c.slots,
            },
            quotas: c.quotas(),
            max_batch: c.max_batch_commands as usize,
            clock: Arc::clone(&self.clock),
        })
    }

    pub fn group(&self, id: GroupId) -> Option<Arc<Group>> {
        self.groups.read().expect("group table").get(&id).cloned()
    }

    pub fn groups(&self) -> Vec<Arc<Group>> {
        let mut groups: Vec<_> = self
            .groups
            .read()
            .expect("group table")
            .values()
            .cloned()
            .collect();
        groups.sort_by_key(|g| g.id);
        groups
    }

    fn add_group(&self, group: Arc<Group>) {
        self.groups
            .write()
            .expect("group table")
            .insert(group.id, group);
    }

    pub fn meta(&self) -> Option<Arc<Group>> {
        self.group(META_GROUP)
    }

    /// The committed slot map; empty until bootstrap commits it.
    pub fn slot_map(&self) -> Arc<SlotMap> {
        self.meta().map(|m| m.engine.slot_map()).unwrap_or_default()
    }

    pub fn readiness(&self) -> Readiness {
        if let Some(fault) = self.db.fault() {
            Readiness::Failed(fault.clone())
        } else if self.is_stopping() {
            Readiness::Stopping
        } else if let Err(e) = self.clock.check() {
            Readiness::Unsynchronized(e.to_string())
        } else if self.ready.load(Ordering::Acquire) {
            Readiness::Ready
        } else {
            Readiness::Starting
        }
    }

    pub fn is_ready(&self) -> bool {
        self.readiness() == Readiness::Ready
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Starts the metadata group, waits for the slot map (proposing the
    /// initial one when this node leads the metadata group), then starts
    /// every data group this node replicates. The peer service must
    /// already be serving: the groups elect leaders through it.
    pub async fn bootstrap(self: &Arc<Self>) -> Result<(), ServerError> {
        let mut options = self.group_options()?;
        let members = &self.config.members;
        let peer_addrs: BTreeMap<NodeId, String> = members
            .iter()
            .map(|m| (m.node_id, m.peer_addr.clone()))
            .collect();
        let first = peer_addrs.keys().next().copied().unwrap_or(self.id);
        let meta = Group::start(
            &self.db,
            &self.peers,
            META_GROUP,
            &peer_addrs,
            first,
            &options,
        )
        .await?;
        tokio::spawn(Arc::clone(self).fail_stop_when_stopped(Arc::clone(&meta)));
        self.add_group(Arc::clone(&meta));

        // The slot map tells clients where nodes are: client addresses.
        let wanted = SlotMap::initial(
            members
                .iter()
                .map(|m| (m.node_id, m.addr.clone()))
                .collect(),
            self.config.slots,
            self.config.effective_groups(),
            self.config.effective_replication_factor(),
        );
        let started = Instant::now();
        let map = loop {
            let map = meta.engine.slot_map();
            if map.is_initialized() {
                break map;
            }
            if meta.is_leader() {
                let init = Request::Meta(MetaCommand::Init(wanted.clone()));
                if let Err(e) = meta.raft.client_write(init).await {
                    tracing::debug!(error = %e, "proposing the initial slot map");
                }
            }
            if started.elapsed() > Duration::from_secs(5)
                && started.elapsed().as_millis() % 5000 < 50
            {
                tracing::info!("waiting for a quorum of members to agree on the slot map");
            }
            tokio::time::sleep(BOOTSTRAP_POLL).await;
        };
        if map.slot_count != self.config.slots {
            return Err(ServerError::Config(format!(
                "slots: this cluster was created with {} slots and cannot change to {}",
                map.slot_count, self.config.slots
            )));
        }
        options.engine.slot_count = map.slot_count;
        if map.groups.len() != self.config.effective_groups() as usize {
            tracing::warn!(
                configured = self.config.effective_groups(),
                actual = map.groups.len(),
                "groups applies when a cluster is created; this one keeps its slot map"
            );
        }

        for (&id, placement) in &map.groups {
            if !placement.replicas.contains(&self.id) {
                continue;
            }
            let nodes = self.replica_peer_addrs(&placement.replicas)?;
            let group = Group::start(
                &self.db,
                &self.peers,
                id,
                &nodes,
                placement.preferred_leader,
                &options,
            )
            .await?;
            tokio::spawn(Arc::clone(self).fail_stop_when_stopped(Arc::clone(&group)));
            tokio::spawn(Arc::clone(&group).scavenge());
            tokio::spawn(Arc::clone(self).report_leadership(Arc::clone(&group)));
            self.add_group(group);
        }
        tokio::spawn(Arc::clone(self).watch_readiness());
        tracing::info!(
            node = self.id,
            slots = map.slot_count,
            groups = map.groups.len(),
            hosted = self.groups().len() - 1,
            epoch = map.epoch,
            "node started"
        );
        Ok(())
    }

    /// The peer addresses of a group's replicas. A replica missing from
    /// the configured members would leave the group a smaller membership
    /// than the other replicas give it.
    fn replica_peer_addrs(
        &self,
        replicas: &[NodeId],
    ) -> Result<BTreeMap<NodeId, String>, ServerError> {
        replicas
            .iter()
            .map(|&id| match self.peers.peer_addr(id) {
                Some(addr) => Ok((id, addr.to_owned())),
                None => Err(ServerError::Config(format!(
                    "members: node {id} replicates a group in this cluster's slot map \
                     but is not among members"
                ))),
            })
            .collect()
    }

    /// Reads every other member's clock every [`PROBE_INTERVAL`] and
    /// decides whether this node may stamp lease time; when that changes,
    /// its groups hear of it (see [`Group::update_election`]). Runs from
    /// before the groups start until the node stops.
    pub async fn watch_clock(self: Arc<Self>) {
        let peers: Vec<(NodeId, String)> = self
            .config
            .members
            .iter()
            .filter(|m| m.node_id != self.id)
            .map(|m| (m.node_id, m.peer_addr.clone()))
            .collect();
        let mut tick = tokio::time::interval(PROBE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.is_stopping() {
            tick.tick().await;
            let reads = peers.iter().map(|(id, addr)| self.read_clock(*id, addr));
            futures_util::future::join_all(reads).await;
            let verdict = self.clock.check();
            if self.clock.set_synchronized(verdict.is_ok()) {
                match &verdict {
                    Ok(()) => tracing::info!(node = self.id, "clock synchronized"),
                    Err(e) => tracing::error!(node = self.id, error = %e, "stepping down"),
                }
                for group in self.groups() {
                    group.update_election();
                }
            }
        }
    }

    /// One reading of `peer`'s clock, recorded if it answers in time.
    async fn read_clock(&self, peer: NodeId, addr: &str) {
        let Ok(mut client) = self.peers.peer(addr) else {
            return;
        };
        let mut request = tonic::Request::new(ClockRequest {});
        request.set_timeout(PROBE_INTERVAL * 2);
        let (sent_wall_ms, sent) = (super::clock::now_ms(), Instant::now());
        if let Ok(reply) = client.clock(request).await {
            let received = Instant::now();
            let peer_wall_ms = reply.into_inner().wall_ms;
            self.clock
                .record(peer, sent_wall_ms, sent, peer_wall_ms, received);
        }
    }

    /// Ready once every hosted group knows its leader; stays ready after.
    async fn watch_readiness(self: Arc<Self>) {
        for group in self.groups() {
            while group
                .wait_for_leader(Duration::from_secs(1))
                .await
                .is_none()
            {
                if self.is_stopping() {
                    return;
                }
            }
        }
        self.ready.store(true, Ordering::Release);
        tracing::info!(node = self.id, "ready");
    }

    /// Makes `group`'s Raft stopping by itself the node's storage fault.
    /// Openraft stops a group on a storage error, and a panic ends its
    /// task: either way the group no longer serves, and a node that stays
    /// ready with it stopped takes calls it can only time out.
    async fn fail_stop_when_stopped(self: Arc<Self>, group: Arc<Group>) {
        let why = raft_stopped(group.raft.metrics()).await;
        if !self.is_stopping() {
            let what = format!("group {} Raft", group.id);
            self.db.fail(StorageFault::new(what, why));
        }
    }

    /// Records in the slot map each term in which this node leads
    /// `group`, so clients of nodes that do not host it can find it.
    /// It wakes only when leadership changes ([`openraft::Raft::server_metrics`]).
    async fn report_leadership(self: Arc<Self>, group: Arc<Group>) {
        let mut metrics = group.raft.server_metrics();
        let mut reported = 0;
        loop {
            let (leading, term) = {
                let m = metrics.borrow_and_update();
                (m.state == ServerState::Leader, m.vote.leader_id().term)
            };
            if leading && term > reported {
                let hint = MetaCommand::LeaderHint {
                    group: group.id,
                    node: self.id,
                    term,
                };
                match self.propose_meta(hint).await {
                    Ok(()) => reported = term,
                    Err(e) => {
                        tracing::debug!(group = group.id, error = %e, "leader hint");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
            }
            if metrics.changed().await.is_err() || self.is_stopping() {
                return;
            }
        }
    }

    /// Applies `cmd` to the slot map through the metadata leader.
    pub async fn propose_meta(&self, cmd: MetaCommand) -> Result<(), ServerError> {
        let meta = self
            .meta()
            .ok_or_else(|| ServerError::Raft("the metadata group is not started".into()))?;
        if meta.is_leader() {
            return match meta.raft.client_write(Request::Meta(cmd)).await {
                Ok(_) => Ok(()),
                Err(e) => Err(ServerError::Raft(e.to_string())),
            };
        }
        let leader = meta
            .leader()
            .0
            .ok_or_else(|| ServerError::Raft("the metadata group has no leader".into()))?;
        let addr = meta
            .member_peer_addr(leader)
            .ok_or_else(|| ServerError::Raft(format!("no address for node {leader}")))?;
        let command =
            postcard::to_stdvec(&cmd).map_err(|e| ServerError::Raft(format!("encoding: {e}")))?;
        let mut peer = self
            .peers
            .peer(&addr)
            .map_err(|e| ServerError::Raft(e.to_string()))?;
        let reply = peer
            .propose_meta(MetaProposal { command })
            .await
            .map_err(|s| ServerError::Raft(s.message().to_string()))?
            .into_inner();
        if reply.applied {
            Ok(())
        } else {
            Err(ServerError::Raft(format!(
                "node {leader} no longer leads the metadata group"
            )))
        }
    }

    /// Applies a forwarded map change here if this node leads the metadata
    /// group; otherwise says who does (0 if unknown).
    pub async fn apply_meta_here(&self, cmd: MetaCommand) -> Result<Option<NodeId>, ServerError> {
        let meta = self
            .meta()
            .ok_or_else(|| ServerError::Raft("the metadata group is not started".into()))?;
        match meta.raft.client_write(Request::Meta(cmd)).await {
            Ok(_) => Ok(None),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Ok(Some(f.leader_id.unwrap_or(0)))
            }
            Err(e) => Err(ServerError::Raft(e.to_string())),
        }
    }

    /// Hands every group this node leads over to a follower. New calls are
    /// refused (forwarded by the peers' routing) from here on.
    pub async fn shutdown(self: &Arc<Self>) {
        self.stopping.store(true, Ordering::Release);
        let groups = self.groups();
        let mut handovers = tokio::task::JoinSet::new();
        for group in groups.iter().filter(|g| g.is_leader()) {
            handovers.spawn(Arc::clone(self).hand_over(Arc::clone(group)));
        }
        while handovers.join_next().await.is_some() {}
    }

    /// Stops every group's Raft instance.
    pub async fn stop_groups(&self) {
        self.stopping.store(true, Ordering::Release);
        for group in self.groups() {
            if let Err(e) = group.raft.shutdown().await {
                tracing::warn!(group = group.id, error = %e, "raft shutdown");
            }
        }
        tracing::info!(node = self.id, "all groups stopped");
    }

    /// Makes everything written so far durable.
    pub fn flush(&self) {
        if let Err(e) = self.db.flush() {
            tracing::warn!(error = %e, "flushing the database");
        }
    }

    /// Stops heartbeats so followers' leader leases run out, then asks the
    /// most up-to-date follower to stand for election, and waits until
    /// someone else leads (bounded).
    async fn hand_over(self: Arc<Self>, group: Arc<Group>) {
        group.raft.runtime_config().heartbeat(false);
        let stopped = Instant::now();
        let successor = {
            let m = group.metrics();
            let m = m.borrow();
            m.replication.as_ref().and_then(|r| {
                r.iter()
                    .filter(|(id, _)| **id != self.id)
                    .max_by_key(|(_, matched)| **matched)
                    .map(|(id, _)| *id)
            })
        };
        let Some(successor) = successor else {
            return;
        };
        let Some(addr) = group.member_peer_addr(successor) else {
            return;
        };
        // Followers refuse votes until the leader lease (the longest
        // election timeout) has passed since they last heard from us.
        let lease = Duration::from_millis(self.config.election_timeout_ms * 2 + 20);
        tokio::time::sleep(lease.saturating_sub(stopped.elapsed())).await;
        let elect = async {
            let mut peer = self.peers.peer(&addr).ok()?;
            peer.elect(ElectRequest { group: group.id }).await.ok()
        };
        if elect.await.is_none() {
            tracing::warn!(
                group = group.id,
                successor,
                "handover: elect request failed"
            );
            return;
        }
        let mut metrics = group.metrics();
        let moved = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                let leader = metrics.borrow_and_update().current_leader;
                if leader.is_some() && leader != Some(self.id) {
                    return leader;
                }
                if metrics.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        tracing::info!(
            group = group.id,
            successor,
            ?moved,
            "leadership handed over"
        );
    }
}

/// The storage test seam `config` asks for: none in production.
fn test_seam(config: &Config) -> Result<TestSeam, ServerError> {
    let Some(path) = &config.unsafe_test_storage_faults else {
        return Ok(TestSeam::default());
    };
    tracing::warn!(
        path = %path.display(),
        "UNSAFE: following a storage fault file and recording WAL syncs; for fault-injection testing only"
    );
    let faults = Arc::new(FaultInjector::default());
    faults
        .follow(path)
        .map_err(|e| ServerError::Config(format!("unsafe_test_storage_faults: {e}")))?;
    Ok(TestSeam {
        faults: Some(faults),
        wal_sync_record: Some(Arc::new(WalSyncRecord::new(&config.data_dir))),
    })
}

/// Waits until the Raft whose metrics these are stops; says why.
async fn raft_stopped(mut metrics: watch::Receiver<RaftMetrics<NodeId, BasicNode>>) -> String {
    loop {
        if let Err(fatal) = &metrics.borrow_and_update().running_state {
            return fatal.to_string();
        }
        if metrics.changed().await.is_err() {
            return "its task ended without saying why (a panic)".into();
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::error::Fatal;
    use openraft::{AnyError, StorageIOError};

    use super::*;

    #[tokio::test]
    async fn a_raft_stopped_by_a_storage_error_or_a_panic_is_reported() {
        let (tx, rx) = watch::channel(RaftMetrics::new_initial(1));
        let stopped = tokio::spawn(raft_stopped(rx));
        tx.send_modify(|m| m.current_term = 2);
        let error = StorageIOError::write_logs(AnyError::error("No space left on device"));
        tx.send_modify(|m| m.running_state = Err(Fatal::StorageError(error.into())));
        let why = stopped.await.unwrap();
        assert!(why.contains("No space left on device"), "{why}");

        let (tx, rx) = watch::channel(RaftMetrics::new_initial(1));
        let stopped = tokio::spawn(raft_stopped(rx));
        drop(tx);
        assert!(stopped.await.unwrap().contains("panic"));
    }

    #[test]
    fn readiness_reports_a_storage_fault_before_anything_else() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        let node = Node::open(config, tokio::sync::watch::channel(None).1, None).unwrap();
        assert_eq!(node.readiness(), Readiness::Starting);
        node.ready.store(true, Ordering::Release);
        assert!(node.is_ready());
        let fault = StorageFault::new("WAL sync (fsync)", "Input/output error");
        node.db.fail(fault.clone());
        assert_eq!(node.readiness(), Readiness::Failed(fault));
        assert!(!node.is_ready());
    }
}
