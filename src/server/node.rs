//! A leasehold node: the groups it hosts, the slot map, and the
//! lifecycle (bootstrap, readiness, leadership handover on shutdown).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{ServerState, SnapshotPolicy};

use super::clock_sync::{ClockSync, PROBE_INTERVAL};
use super::group::{Group, GroupOptions};
use super::network::Peers;
use super::ServerError;
use crate::config::Config;
use crate::engine::EngineConfig;
use crate::proto::peer::{ClockRequest, ElectRequest, MetaProposal};
use crate::raft::{GroupId, MetaCommand, NodeId, RaftDb, Request, SlotMap, META_GROUP};

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

impl Node {
    pub fn open(config: Config) -> Result<Arc<Node>, ServerError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            ServerError::Storage(format!("data_dir {}: {e}", config.data_dir.display()))
        })?;
        let db = RaftDb::open(&config.data_dir).map_err(|e| {
            ServerError::Storage(format!("opening {}: {e}", config.data_dir.display()))
        })?;
        let clock = ClockSync::new(
            config.node_id,
            config.members.len(),
            config.max_clock_offset_ms,
        );
        Ok(Arc::new(Node {
            id: config.node_id,
            clock: Arc::new(clock),
            config,
            db,
            peers: Arc::new(Peers::default()),
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
                dedup_window_ms: c.dedup_window_ms,
                slot_count: c.slots,
            },
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

    pub fn is_ready(&self) -> bool {
        self.not_ready_because().is_none()
    }

    /// Why `/ready` answers 503, if it does.
    pub fn not_ready_because(&self) -> Option<String> {
        if self.is_stopping() {
            return Some("stopping".into());
        }
        if let Err(e) = self.clock.check() {
            return Some(e.to_string());
        }
        if !self.ready.load(Ordering::Acquire) {
            return Some("not every hosted group has a leader yet".into());
        }
        None
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
        let members: BTreeMap<NodeId, String> = self
            .config
            .members
            .iter()
            .map(|m| (m.node_id, m.addr.clone()))
            .collect();
        let first = members.keys().next().copied().unwrap_or(self.id);
        let meta =
            Group::start(&self.db, &self.peers, META_GROUP, &members, first, &options).await?;
        self.add_group(Arc::clone(&meta));

        let wanted = SlotMap::initial(
            members.clone(),
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
            let nodes: BTreeMap<NodeId, String> = placement
                .replicas
                .iter()
                .filter_map(|id| map.nodes.get(id).map(|a| (*id, a.clone())))
                .collect();
            let group = Group::start(
                &self.db,
                &self.peers,
                id,
                &nodes,
                placement.preferred_leader,
                &options,
            )
            .await?;
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
            .map(|m| (m.node_id, m.addr.clone()))
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
            .member_addr(leader)
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
        let Some(addr) = group.member_addr(successor) else {
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
