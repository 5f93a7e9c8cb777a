//! One Raft group on this node: its openraft instance, its engine, and for
//! data groups the proposer (batching client commands into entries) and the
//! scavenger (proposing `Expire` when something is due).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, Raft, ServerState};
use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore};

use super::clock_sync::ClockSync;
use super::network::{GroupNetworkFactory, Peers};
use super::ServerError;
use crate::engine::{Applied, Command, EngineConfig, EngineError, Outcome, Quotas};
use crate::raft::{
    EngineHandle, GroupId, LogStore, NodeId, RaftDb, Request, Response, StateMachine, TypeConfig,
};

/// Batches proposed but not yet answered, per group. While all are in
/// flight, commands queue and the next entry carries all of them. One
/// makes entries largest: against two, the hot key does 6–9% more cycles
/// per second on 18% less CPU per cycle, and spread over 16 groups
/// 7–10% more, at about 10% more latency when the load is light.
const MAX_IN_FLIGHT_BATCHES: usize = 1;

/// Queued client commands per group; one more is refused
/// ([`ProposeError::Overloaded`]) rather than waited for.
const PROPOSAL_QUEUE: usize = 65_536;

/// The longest the scavenger sleeps: bounds how long an expired lease's
/// memory outlives it when nothing else wakes the scavenger.
const SCAVENGE_INTERVAL_MAX: Duration = Duration::from_millis(250);

/// How long a group's first election is left to its preferred leader.
const PREFERRED_LEADER_WAIT: Duration = Duration::from_secs(3);

/// Why a command was not applied through this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposeError {
    /// This node does not lead the group; the leader, if known. The command
    /// may still have been applied if leadership was lost mid-flight.
    NotLeader(Option<NodeId>),
    /// The group stopped (shutdown or a fatal storage error).
    Stopped(String),
    /// This node leads the group but may not stamp lease time: its clock
    /// is not synchronized with the other members'. It is stepping down.
    Unsynchronized(String),
    /// The group's proposal queue is full; nothing was queued.
    Overloaded(String),
}

type Applies = Result<Result<Applied, EngineError>, ProposeError>;

struct Proposal {
    command: Command,
    reply: oneshot::Sender<Applies>,
}

pub struct Group {
    pub id: GroupId,
    pub raft: Raft<TypeConfig>,
    pub engine: EngineHandle,
    proposals: mpsc::Sender<Proposal>,
    /// Woken after this node, as leader, applies a command that can free
    /// capacity (release, expire, capacity change): waiting acquires retry.
    pub capacity_changed: Arc<Notify>,
    /// Whether this node's clock may stamp lease time.
    pub clock: Arc<ClockSync>,
    /// Set once the wait for the preferred leader is over (at once on the
    /// preferred leader itself): only then may this node stand for election.
    may_stand: AtomicBool,
    /// Where the members listen.
    peers: Arc<Peers>,
}

pub struct GroupOptions {
    pub node_id: NodeId,
    pub raft: Arc<openraft::Config>,
    pub engine: EngineConfig,
    /// Stamped into every entry this node proposes as leader.
    pub quotas: Quotas,
    pub max_batch: usize,
    pub clock: Arc<ClockSync>,
}

impl Group {
    /// Opens the group's storage and starts its Raft instance; a group
    /// with no state yet is initialised with `members`, by their peer
    /// addresses (every member does the same with the same set, which
    /// openraft allows).
    ///
    /// Until the group has a leader, only `preferred_leader` stands for
    /// election, so leaders spread over the nodes as placement intends
    /// instead of all going to whichever node started first. If no leader
    /// appears within [`PREFERRED_LEADER_WAIT`], everyone may stand.
    pub async fn start(
        db: &Arc<RaftDb>,
        peers: &Arc<Peers>,
        id: GroupId,
        members: &BTreeMap<NodeId, String>,
        preferred_leader: NodeId,
        options: &GroupOptions,
    ) -> Result<Arc<Group>, ServerError> {
        let log = LogStore::new(Arc::clone(db), id);
        let sm = StateMachine::open(Arc::clone(db), id, options.engine)
            .map_err(|e| ServerError::Storage(format!("group {id}: {e}")))?;
        let engine = sm.handle();
        let network = GroupNetworkFactory {
            group: id,
            peers: Arc::clone(peers),
            heartbeat_interval: Duration::from_millis(options.raft.heartbeat_interval),
        };
        let raft = Raft::new(options.node_id, Arc::clone(&options.raft), network, log, sm)
            .await
            .map_err(|e| ServerError::Raft(format!("group {id}: {e}")))?;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| ServerError::Raft(e.to_string()))?;
        let preferred = members.len() <= 1 || preferred_leader == options.node_id;
        // Initialising starts an election at once, so on a fresh group only
        // the preferred leader does it; the others learn the membership
        // from its first append, or initialise themselves if none comes.
        let nodes: BTreeMap<NodeId, BasicNode> = members
            .iter()
            .map(|(id, addr)| (*id, BasicNode::new(addr)))
            .collect();
        if !initialized && preferred {
            initialize(&raft, id, nodes.clone()).await?;
        }
        let (tx, rx) = mpsc::channel(PROPOSAL_QUEUE);
        let group = Arc::new(Group {
            id,
            raft,
            engine,
            proposals: tx,
            capacity_changed: Arc::new(Notify::new()),
            clock: Arc::clone(&options.clock),
            may_stand: AtomicBool::new(preferred),
            peers: Arc::clone(peers),
        });
        tokio::spawn(propose_loop(
            group.raft.clone(),
            rx,
            options.max_batch,
            options.quotas,
            Arc::clone(&group.capacity_changed),
            Arc::clone(&options.clock),
        ));
        group.update_election();
        if !preferred {
            let g = Arc::clone(&group);
            tokio::spawn(async move {
                if g.wait_for_leader(PREFERRED_LEADER_WAIT).await.is_none() {
                    let fresh = !g.raft.is_initialized().await.unwrap_or(true);
                    if fresh {
                        if let Err(e) = initialize(&g.raft, g.id, nodes).await {
                            tracing::warn!(group = g.id, error = %e, "initialize");
                        }
                    }
                }
                g.may_stand.store(true, Ordering::Release);
                g.update_election();
            });
        }
        Ok(group)
    }

    /// Lets this node stand for election and, leading, send heartbeats
    /// only while its clock is synchronized (data groups; the metadata
    /// group stamps no lease time) and, for standing, once the preferred
    /// leader had its chance. A leader whose clock falls out of bounds goes
    /// quiet, so the others elect a leader among themselves.
    pub fn update_election(&self) {
        let clock_ok = self.id == crate::raft::META_GROUP || self.clock.is_synchronized();
        let config = self.raft.runtime_config();
        config.elect(clock_ok && self.may_stand.load(Ordering::Acquire));
        config.heartbeat(clock_ok);
    }

    /// Applies `command` through Raft if this node leads the group.
    pub async fn propose(&self, command: Command) -> Applies {
        self.enqueue(command).await?.await
    }

    /// Queues `command` for the next entry; the proposal's answer is the
    /// returned future. Commands queued one after another apply in that
    /// order. A full queue refuses it at once.
    pub async fn enqueue(
        &self,
        command: Command,
    ) -> Result<impl std::future::Future<Output = Applies>, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.proposals
            .try_send(Proposal { command, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    metrics::counter!("leasehold_overloaded_total", "reason" => "proposal_queue")
                        .increment(1);
                    ProposeError::Overloaded(format!(
                        "group {}'s proposal queue is full ({PROPOSAL_QUEUE} commands)",
                        self.id
                    ))
                }
                mpsc::error::TrySendError::Closed(_) => {
                    ProposeError::Stopped("the group is shutting down".into())
                }
            })?;
        Ok(async move {
            rx.await
                .unwrap_or_else(|_| Err(ProposeError::Stopped("the proposal was dropped".into())))
        })
    }

    pub fn metrics(&self) -> watch::Receiver<openraft::RaftMetrics<NodeId, BasicNode>> {
        self.raft.metrics()
    }

    /// The leader as this node last heard, and the term.
    pub fn leader(&self) -> (Option<NodeId>, u64) {
        let m = self.raft.metrics();
        let m = m.borrow();
        (m.current_leader, m.current_term)
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// The client address of a member of the group (see
    /// [`Peers::client_addr`]): for clients, and for forwarding requests.
    pub fn member_addr(&self, node: NodeId) -> Option<String> {
        self.membership_addr(node)?;
        self.peers.client_addr(node).map(str::to_owned)
    }

    /// The peer address of a member of the group: for node-to-node calls.
    /// The configured one, else the one its membership recorded.
    pub fn member_peer_addr(&self, node: NodeId) -> Option<String> {
        let recorded = self.membership_addr(node)?;
        Some(self.peers.peer_addr(node).map_or(recorded, str::to_owned))
    }

    /// The address `node` has in the group's membership, if it is a member.
    fn membership_addr(&self, node: NodeId) -> Option<String> {
        let membership = Arc::clone(&self.raft.metrics().borrow().membership_config);
        let addr = membership
            .nodes()
            .find(|(id, _)| **id == node)
            .map(|(_, n)| n.addr.clone());
        addr
    }

    /// `leader` with its client address, for a NOT_LEADER reply's hint.
    pub fn leader_hint(&self, leader: Option<NodeId>) -> Option<(NodeId, String)> {
        leader.and_then(|l| self.member_addr(l).map(|addr| (l, addr)))
    }

    /// The group's voters.
    pub fn voters(&self) -> BTreeSet<NodeId> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config.voter_ids().collect()
    }

    /// Waits until some leader is known, or `timeout` passes.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<NodeId> {
        let mut rx = self.raft.metrics();
        let wait = async {
            loop {
                if let Some(leader) = rx.borrow_and_update().current_leader {
                    return Some(leader);
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }

    /// Proposes `Expire` whenever the engine's next deadline has passed,
    /// while this node leads the group, until the group stops. It wakes on
    /// its timer and on changes of leadership only ([`Raft::server_metrics`]),
    /// not on every applied entry: a deadline earlier than the one it sleeps
    /// for waits at most [`SCAVENGE_INTERVAL_MAX`], which costs nothing but
    /// memory, since an expired lease stops counting without it.
    pub async fn scavenge(self: Arc<Self>) {
        let mut metrics = self.raft.server_metrics();
        loop {
            if metrics.borrow_and_update().state != ServerState::Leader {
                if metrics.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let Ok(now) = self.clock.stamp_ms() else {
                // Not synchronized: this node is stepping down.
                tokio::select! {
                    () = tokio::time::sleep(SCAVENGE_INTERVAL_MAX) => {}
                    changed = metrics.changed() => if changed.is_err() { return },
                }
                continue;
            };
            let due = self.engine.next_deadline_ms().filter(|d| *d <= now);
            if due.is_none() {
                let wait = self
                    .engine
                    .next_deadline_ms()
                    .map_or(SCAVENGE_INTERVAL_MAX, |d| {
                        Duration::from_millis(d.saturating_sub(now)).min(SCAVENGE_INTERVAL_MAX)
                    });
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    changed = metrics.changed() => if changed.is_err() { return },
                }
                continue;
            }
            match self.propose(Command::Expire { until_ms: now }).await {
                Ok(Ok(Applied {
                    outcome: Outcome::Expired(report),
                    ..
                })) => {
                    let group = self.id.to_string();
                    metrics::counter!("leasehold_scavenged_leases_total", "group" => group.clone())
                        .increment(report.leases_expired);
                    metrics::counter!("leasehold_scavenged_dedup_records_total", "group" => group)
                        .increment(report.dedup_dropped);
                }
                Ok(other) => tracing::warn!(group = self.id, ?other, "unexpected expire outcome"),
                Err(ProposeError::Stopped(_)) => return,
                // Leadership moved, or is moving: the loop waits to lead again.
                Err(ProposeError::NotLeader(_) | ProposeError::Unsynchronized(_)) => {}
                // Client commands fill the queue: expire once it drains.
                Err(ProposeError::Overloaded(_)) => tokio::time::sleep(SCAVENGE_INTERVAL_MAX).await,
            }
        }
    }
}

/// Gives a fresh group its first membership; a group that already has
/// one (from another member's append) is left as it is.
async fn initialize(
    raft: &Raft<TypeConfig>,
    id: GroupId,
    nodes: BTreeMap<NodeId, BasicNode>,
) -> Result<(), ServerError> {
    match raft.initialize(nodes).await {
        Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(ServerError::Raft(format!("group {id}: initialize: {e}"))),
    }
}

/// Drains the proposal queue into Raft entries: one entry per batch of up
/// to `max_batch` commands, at most [`MAX_IN_FLIGHT_BATCHES`] in flight,
/// each stamped with this leader's time and `quotas`.
async fn propose_loop(
    raft: Raft<TypeConfig>,
    mut rx: mpsc::Receiver<Proposal>,
    max_batch: usize,
    quotas: Quotas,
    capacity_changed: Arc<Notify>,
    clock: Arc<ClockSync>,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT_BATCHES));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let (commands, replies): (Vec<Command>, Vec<_>) =
            batch.into_iter().map(|p| (p.command, p.reply)).unzip();
        let frees = commands.iter().any(|c| {
            matches!(
                c,
                Command::Release(_)
                    | Command::Expire { .. }
                    | Command::SetCapacity(_)
                    | Command::AdjustCapacity(_)
                    | Command::Admin(_)
            )
        });
        let capacity_changed = Arc::clone(&capacity_changed);
        metrics::histogram!("leasehold_batch_commands").record(commands.len() as f64);
        let stamp_ms = match clock.stamp_ms() {
            Ok(stamp_ms) => stamp_ms,
            Err(e) => {
                answer_all(replies, &Err(ProposeError::Unsynchronized(e.to_string())));
                continue;
            }
        };
        let request = Request::Engine {
            stamp_ms,
            quotas,
            commands: commands.into(),
        };
        let responder = match raft.client_write_ff(request).await {
            Ok(rx) => rx,
            Err(fatal) => {
                answer_all(replies, &Err(ProposeError::Stopped(fatal.to_string())));
                continue;
            }
        };
        tokio::spawn(async move {
            let result = responder.await;
            drop(permit);
            match result {
                Ok(Ok(written)) => {
                    answer_each(replies, written.data);
                    if frees {
                        capacity_changed.notify_waiters();
                    }
                }
                Ok(Err(ClientWriteError::ForwardToLeader(f))) => {
                    answer_all(replies, &Err(ProposeError::NotLeader(f.leader_id)));
                }
                Ok(Err(e)) => answer_all(replies, &Err(ProposeError::Stopped(e.to_string()))),
                Err(_) => answer_all(
                    replies,
                    &Err(ProposeError::Stopped(
                        "raft stopped before answering".into(),
                    )),
                ),
            }
        });
    }
}

fn answer_each(replies: Vec<oneshot::Sender<Applies>>, response: Response) {
    let mut results = response.results.into_iter();
    for reply in replies {
        let result = results.next().map_or_else(
            || {
                Err(ProposeError::Stopped(
                    "an entry answered fewer commands than it held".into(),
                ))
            },
            Ok,
        );
        // The caller may have given up waiting; the command applied anyway.
        let _ = reply.send(result);
    }
}

fn answer_all(replies: Vec<oneshot::Sender<Applies>>, result: &Applies) {
    for reply in replies {
        let _ = reply.send(result.clone());
    }
}
