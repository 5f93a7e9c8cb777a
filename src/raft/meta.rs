//! The metadata group's state: the cluster's partition map.
//!
//! Every node hosts the metadata group's state machine (the same
//! [`super::StateMachine`] as partitions, fed [`MetaCommand`]s instead of
//! engine commands). It records which nodes replicate each partition and,
//! as hints for routing, who last led each one. The epoch counts changes of
//! placement, never of leadership: a client whose map has an older epoch
//! may route to nodes that no longer host a partition.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::types::{GroupId, NodeId};

/// The metadata group's id; partitions are `0..partition_count`.
pub const META_GROUP: GroupId = GroupId::MAX;

/// A change to the partition map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// The cluster's first map. Applied only to an empty map, so every node
    /// may propose it on bootstrap and the first one wins.
    Init(PartitionMap),
    /// `node` leads `partition` in `term`. Ignored unless `term` is at least
    /// the recorded one, so a late hint never hides a newer leader.
    LeaderHint {
        partition: GroupId,
        node: NodeId,
        term: u64,
    },
}

/// Where partitions live. `epoch` 0 means not yet initialised.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMap {
    pub epoch: u64,
    pub partition_count: u32,
    /// Node id → the address peers and clients dial.
    pub nodes: BTreeMap<NodeId, String>,
    /// Indexed by partition id.
    pub partitions: Vec<PartitionPlacement>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionPlacement {
    pub replicas: Vec<NodeId>,
    /// The last leader reported, 0 if none yet.
    pub leader: NodeId,
    pub leader_term: u64,
}

impl PartitionMap {
    /// The initial placement: partition `p` on `rf` consecutive nodes of
    /// the sorted member list starting at `p mod n`, so leaders and load
    /// spread evenly.
    pub fn initial(
        nodes: BTreeMap<NodeId, String>,
        partition_count: u32,
        replication_factor: u32,
    ) -> PartitionMap {
        let ids: Vec<NodeId> = nodes.keys().copied().collect();
        let rf = (replication_factor as usize).clamp(1, ids.len().max(1));
        let partitions = (0..partition_count as usize)
            .map(|p| {
                let mut replicas: Vec<NodeId> = (0..rf).map(|i| ids[(p + i) % ids.len()]).collect();
                replicas.sort_unstable();
                PartitionPlacement {
                    replicas,
                    leader: 0,
                    leader_term: 0,
                }
            })
            .collect();
        PartitionMap {
            epoch: 1,
            partition_count,
            nodes,
            partitions,
        }
    }

    /// The replica meant to lead `partition` when all are up: the first
    /// of its placement, so each node leads about `1/n` of the partitions.
    pub fn preferred_leader(&self, partition: GroupId) -> Option<NodeId> {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let preferred = *ids.get(partition as usize % ids.len().max(1))?;
        self.replicas(partition)
            .contains(&preferred)
            .then_some(preferred)
    }

    pub fn is_initialized(&self) -> bool {
        self.epoch > 0
    }

    pub fn replicas(&self, partition: GroupId) -> &[NodeId] {
        self.partitions
            .get(partition as usize)
            .map_or(&[], |p| p.replicas.as_slice())
    }

    pub fn apply(&mut self, cmd: &MetaCommand) {
        match cmd {
            MetaCommand::Init(map) => {
                if !self.is_initialized() {
                    *self = map.clone();
                }
            }
            MetaCommand::LeaderHint {
                partition,
                node,
                term,
            } => {
                if let Some(p) = self.partitions.get_mut(*partition as usize) {
                    if *term >= p.leader_term {
                        p.leader = *node;
                        p.leader_term = *term;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: u64) -> BTreeMap<NodeId, String> {
        (1..=n)
            .map(|i| (i, format!("127.0.0.1:{}", 7069 + i)))
            .collect()
    }

    #[test]
    fn placement_spreads_partitions_over_consecutive_nodes() {
        let map = PartitionMap::initial(nodes(5), 5, 3);
        assert_eq!(map.replicas(0), &[1, 2, 3]);
        assert_eq!(map.replicas(3), &[1, 4, 5]);
        assert_eq!(map.replicas(4), &[1, 2, 5]);
        let preferred: Vec<_> = (0..5).map(|p| map.preferred_leader(p)).collect();
        assert_eq!(preferred, [1, 2, 3, 4, 5].map(Some));
        // Each node hosts rf/n of the partitions.
        for node in 1..=5 {
            let hosted = map
                .partitions
                .iter()
                .filter(|p| p.replicas.contains(&node))
                .count();
            assert_eq!(hosted, 3, "node {node}");
        }
    }

    #[test]
    fn replication_is_capped_by_node_count() {
        let map = PartitionMap::initial(nodes(2), 3, 3);
        assert!(map.partitions.iter().all(|p| p.replicas == [1, 2]));
    }

    #[test]
    fn init_applies_once_and_hints_never_go_back() {
        let mut map = PartitionMap::default();
        map.apply(&MetaCommand::Init(PartitionMap::initial(nodes(3), 2, 3)));
        let other = PartitionMap::initial(nodes(1), 9, 1);
        map.apply(&MetaCommand::Init(other));
        assert_eq!(map.partition_count, 2);

        let hint = |node, term| MetaCommand::LeaderHint {
            partition: 1,
            node,
            term,
        };
        map.apply(&hint(2, 5));
        map.apply(&hint(3, 4));
        assert_eq!(
            (map.partitions[1].leader, map.partitions[1].leader_term),
            (2, 5)
        );
        map.apply(&hint(3, 6));
        assert_eq!(map.partitions[1].leader, 3);
        map.apply(&MetaCommand::LeaderHint {
            partition: 7,
            node: 1,
            term: 9,
        });
        assert_eq!(map.partitions.len(), 2);
    }
}
