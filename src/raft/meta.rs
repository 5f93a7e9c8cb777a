//! The metadata group's state: the cluster's slot map.
//!
//! Every node hosts the metadata group's state machine (the same
//! [`super::StateMachine`] as data groups, fed [`MetaCommand`]s instead of
//! engine commands). It records which group owns each hash slot (as
//! contiguous ranges), which nodes replicate each group and, as hints for
//! routing, who last led each one. The epoch counts changes of placement,
//! never of leadership: a client whose map has an older epoch may route to
//! groups or nodes that no longer own a slot.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::types::{GroupId, NodeId};
pub use crate::slot::SlotRange;
use crate::slot::{owner, slot_of, Slot};

/// The metadata group's id; data groups are `0..group_count`.
pub const META_GROUP: GroupId = GroupId::MAX;

/// A change to the slot map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// The cluster's first map. Applied only to an empty map, so every node
    /// may propose it on bootstrap and the first one wins.
    Init(SlotMap),
    /// `node` leads `group` in `term`. Ignored unless `term` is at least
    /// the recorded one, so a late hint never hides a newer leader.
    LeaderHint {
        group: GroupId,
        node: NodeId,
        term: u64,
    },
}

/// Where slots and groups live. `epoch` 0 means not yet initialised.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotMap {
    pub epoch: u64,
    /// The modulus of the scope hash; slots are `0..slot_count`.
    pub slot_count: u32,
    /// Node id → its client address: what clients dial and calls are
    /// forwarded to (peers dial the members' peer addresses instead).
    pub nodes: BTreeMap<NodeId, String>,
    /// Which group owns each slot: contiguous ranges in slot order that
    /// cover `0..slot_count` exactly.
    pub ranges: Vec<SlotRange>,
    /// Every data group.
    pub groups: BTreeMap<GroupId, GroupPlacement>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPlacement {
    pub replicas: Vec<NodeId>,
    /// The replica meant to lead when all are up.
    pub preferred_leader: NodeId,
    /// The last leader reported, 0 if none yet.
    pub leader: NodeId,
    pub leader_term: u64,
}

impl SlotMap {
    /// The initial placement: `group_count` groups, group `g` owning the
    /// `g`-th of equal contiguous slot ranges and replicated on `rf`
    /// consecutive nodes of the sorted member list starting at `g mod n`,
    /// that first node its preferred leader, so leaders and load spread
    /// evenly.
    ///
    /// # Panics
    /// If there are no nodes, or `group_count` is 0 or above `slot_count`.
    pub fn initial(
        nodes: BTreeMap<NodeId, String>,
        slot_count: u32,
        group_count: u32,
        replication_factor: u32,
    ) -> SlotMap {
        assert!(!nodes.is_empty(), "a cluster has at least one node");
        assert!(
            (1..=slot_count).contains(&group_count),
            "every group owns at least one slot"
        );
        let ids: Vec<NodeId> = nodes.keys().copied().collect();
        let rf = (replication_factor as usize).clamp(1, ids.len());
        let mut groups = BTreeMap::new();
        let mut ranges = Vec::with_capacity(group_count as usize);
        for g in 0..group_count {
            let first = start_of(g, slot_count, group_count);
            let last = start_of(g + 1, slot_count, group_count) - 1;
            ranges.push(SlotRange {
                first,
                last,
                group: g,
            });
            let at = g as usize % ids.len();
            let mut replicas: Vec<NodeId> = (0..rf).map(|i| ids[(at + i) % ids.len()]).collect();
            replicas.sort_unstable();
            let placement = GroupPlacement {
                replicas,
                preferred_leader: ids[at],
                leader: 0,
                leader_term: 0,
            };
            groups.insert(g, placement);
        }
        SlotMap {
            epoch: 1,
            slot_count,
            nodes,
            ranges,
            groups,
        }
    }

    pub fn is_initialized(&self) -> bool {
        self.epoch > 0
    }

    /// The group that owns `slot`; `None` before the map is initialised or
    /// for a slot out of range.
    pub fn group_of(&self, slot: Slot) -> Option<GroupId> {
        owner(&self.ranges, slot)
    }

    /// The slot of `scope` and the group that owns it.
    pub fn locate(&self, scope: &str) -> Option<(Slot, GroupId)> {
        if !self.is_initialized() {
            return None;
        }
        let slot = slot_of(scope, self.slot_count);
        Some((slot, self.group_of(slot)?))
    }

    pub fn group(&self, group: GroupId) -> Option<&GroupPlacement> {
        self.groups.get(&group)
    }

    pub fn replicas(&self, group: GroupId) -> &[NodeId] {
        self.group(group).map_or(&[], |p| p.replicas.as_slice())
    }

    /// Slots `group` owns.
    pub fn slots_of(&self, group: GroupId) -> u32 {
        self.ranges
            .iter()
            .filter(|r| r.group == group)
            .map(|r| r.last - r.first + 1)
            .sum()
    }

    pub fn apply(&mut self, cmd: &MetaCommand) {
        match cmd {
            MetaCommand::Init(map) => {
                if !self.is_initialized() {
                    *self = map.clone();
                }
            }
            MetaCommand::LeaderHint { group, node, term } => {
                if let Some(p) = self.groups.get_mut(group) {
                    if *term >= p.leader_term {
                        p.leader = *node;
                        p.leader_term = *term;
                    }
                }
            }
        }
    }
}

/// The first slot of the `g`-th of `groups` equal ranges of `slots`.
fn start_of(g: u32, slots: u32, groups: u32) -> Slot {
    (u64::from(g) * u64::from(slots) / u64::from(groups)) as Slot
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
    fn placement_spreads_groups_over_consecutive_nodes() {
        let map = SlotMap::initial(nodes(5), 1024, 5, 3);
        assert_eq!(map.replicas(0), &[1, 2, 3]);
        assert_eq!(map.replicas(3), &[1, 4, 5]);
        assert_eq!(map.replicas(4), &[1, 2, 5]);
        let preferred: Vec<_> = map.groups.values().map(|g| g.preferred_leader).collect();
        assert_eq!(preferred, [1, 2, 3, 4, 5]);
        // Each node hosts rf/n of the groups.
        for node in 1..=5 {
            let hosted = map
                .groups
                .values()
                .filter(|p| p.replicas.contains(&node))
                .count();
            assert_eq!(hosted, 3, "node {node}");
        }
    }

    #[test]
    fn ranges_cover_every_slot_once_in_near_equal_parts() {
        for (slots, groups) in [(1024, 3), (1, 1), (7, 7), (4096, 6), (65_536, 1)] {
            let map = SlotMap::initial(nodes(3), slots, groups, 3);
            assert_eq!(map.ranges.first().map(|r| r.first), Some(0));
            assert_eq!(map.ranges.last().map(|r| r.last), Some(slots - 1));
            for w in map.ranges.windows(2) {
                assert_eq!(w[0].last + 1, w[1].first, "{slots} slots, {groups} groups");
            }
            let sizes: Vec<u32> = (0..groups).map(|g| map.slots_of(g)).collect();
            assert_eq!(sizes.iter().sum::<u32>(), slots);
            let (min, max) = (sizes.iter().min(), sizes.iter().max());
            assert!(max.unwrap() - min.unwrap() <= 1, "{sizes:?}");
        }
    }

    #[test]
    fn group_of_finds_the_owner_of_every_slot() {
        let map = SlotMap::initial(nodes(3), 1024, 3, 3);
        assert_eq!(map.group_of(0), Some(0));
        assert_eq!(map.group_of(340), Some(0));
        assert_eq!(map.group_of(341), Some(1));
        assert_eq!(map.group_of(682), Some(2));
        assert_eq!(map.group_of(1023), Some(2));
        assert_eq!(map.group_of(1024), None);
        assert_eq!(SlotMap::default().locate("a"), None);
        let (slot, group) = map.locate("tenant-7").expect("initialised");
        assert_eq!(slot, slot_of("tenant-7", 1024));
        assert_eq!(map.group_of(slot), Some(group));
    }

    #[test]
    fn replication_is_capped_by_node_count() {
        let map = SlotMap::initial(nodes(2), 16, 3, 3);
        assert!(map.groups.values().all(|p| p.replicas == [1, 2]));
    }

    #[test]
    fn init_applies_once_and_hints_never_go_back() {
        let mut map = SlotMap::default();
        map.apply(&MetaCommand::Init(SlotMap::initial(nodes(3), 64, 2, 3)));
        let other = SlotMap::initial(nodes(1), 9, 9, 1);
        map.apply(&MetaCommand::Init(other));
        assert_eq!((map.slot_count, map.groups.len()), (64, 2));

        let hint = |node, term| MetaCommand::LeaderHint {
            group: 1,
            node,
            term,
        };
        let leader = |map: &SlotMap| (map.groups[&1].leader, map.groups[&1].leader_term);
        map.apply(&hint(2, 5));
        map.apply(&hint(3, 4));
        assert_eq!(leader(&map), (2, 5));
        map.apply(&hint(3, 6));
        assert_eq!(leader(&map), (3, 6));
        map.apply(&MetaCommand::LeaderHint {
            group: 7,
            node: 1,
            term: 9,
        });
        assert_eq!(map.groups.len(), 2);
    }
}
