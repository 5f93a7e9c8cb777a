//! Routing: which hash slot owns a scope, and how a lease id names its
//! slot.
//!
//! `slot = xxh64(scope as UTF-8 bytes, seed 0) mod slot_count`. XXH64 is
//! specified at <https://github.com/Cyan4973/xxHash> and has
//! implementations in every common language, so any client can route
//! without asking a server. The proto documents the same function and the
//! test vectors below. The slot count is fixed when a cluster is created;
//! the slot map says which Raft group owns each slot.

/// The routing hash's name, as `GetSlotMap` reports it.
pub const HASH_FUNCTION: &str = "xxh64-seed0-mod";

/// A hash slot: `0..slot_count`.
pub type Slot = u32;

/// The most slots a cluster can have: a slot fits the 16 bits a lease id
/// gives it.
pub const SLOT_COUNT_MAX: u32 = 1 << SLOT_BITS;

/// Slots of a cluster created with the defaults.
pub const SLOT_COUNT_DEFAULT: u32 = 1024;

/// Slots `first..=last` belong to Raft group `group`. A slot map lists
/// such ranges in slot order, covering every slot once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SlotRange {
    pub first: Slot,
    pub last: Slot,
    pub group: u32,
}

impl From<&crate::proto::v1::SlotRange> for SlotRange {
    fn from(r: &crate::proto::v1::SlotRange) -> Self {
        SlotRange {
            first: r.first_slot,
            last: r.last_slot,
            group: r.group_id,
        }
    }
}

/// The group that owns `slot` among `ranges` (in slot order); `None` if
/// no range holds it.
pub fn owner(ranges: &[SlotRange], slot: Slot) -> Option<u32> {
    let i = ranges.partition_point(|r| r.last < slot);
    ranges.get(i).filter(|r| r.first <= slot).map(|r| r.group)
}

/// Bits of a lease id that name its slot (the high ones).
const SLOT_BITS: u32 = 16;

/// Bits of a lease id that count grants within its slot (the low ones).
const SEQ_BITS: u32 = 64 - SLOT_BITS;

/// The slot that owns `scope` in a cluster of `slot_count` slots.
///
/// # Panics
/// If `slot_count` is 0.
pub fn slot_of(scope: &str, slot_count: u32) -> Slot {
    assert!(slot_count > 0, "a cluster has at least one slot");
    (scope_hash(scope) % u64::from(slot_count)) as Slot
}

/// XXH64 of the scope's bytes with seed 0.
pub fn scope_hash(scope: &str) -> u64 {
    xxhash_rust::xxh64::xxh64(scope.as_bytes(), 0)
}

/// A lease id and fencing token: the slot in the high 16 bits, the slot's
/// grant counter in the low 48. Tokens of one slot — and so of one scope —
/// strictly increase with the counter, and the counter travels with the
/// slot when it moves to another group, so the order survives the move;
/// ids of different slots never collide, so moved leases keep their ids.
pub fn lease_id(slot: Slot, seq: u64) -> u64 {
    assert!(slot < SLOT_COUNT_MAX, "slot {slot} out of range");
    assert!(seq < 1 << SEQ_BITS, "a slot's grant counter fits 48 bits");
    (u64::from(slot) << SEQ_BITS) | seq
}

/// The slot and counter of a lease id made by [`lease_id`].
pub fn split_lease_id(id: u64) -> (Slot, u64) {
    ((id >> SEQ_BITS) as Slot, id & ((1 << SEQ_BITS) - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Published XXH64 vectors: these pin the function other clients implement.
    #[test]
    fn scope_hash_matches_reference_xxh64() {
        assert_eq!(scope_hash(""), 0xEF46_DB37_51D8_E999);
        assert_eq!(scope_hash("a"), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(scope_hash("abc"), 0x44BC_2CF5_AD77_0999);
    }

    #[test]
    fn slots_stay_in_range_and_spread() {
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            let s = slot_of(&format!("tenant-{i}"), 16);
            counts[s as usize] += 1;
        }
        // Each of 16 slots should get about 1,000 of 16,000 scopes.
        for (s, n) in counts.iter().enumerate() {
            assert!((800..1200).contains(n), "slot {s} got {n} of 16000 scopes");
        }
    }

    #[test]
    fn lease_ids_order_by_counter_within_a_slot_and_split_back() {
        let ids: Vec<u64> = (1..5).map(|seq| lease_id(700, seq)).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(split_lease_id(ids[2]), (700, 3));
        assert_eq!(lease_id(0, 9), 9, "slot 0's ids are its counter");
        let last = lease_id(SLOT_COUNT_MAX - 1, (1 << SEQ_BITS) - 1);
        assert_eq!(last, u64::MAX);
        assert_eq!(
            split_lease_id(last),
            (SLOT_COUNT_MAX - 1, (1 << SEQ_BITS) - 1)
        );
        assert_ne!(lease_id(1, 5), lease_id(2, 5));
    }
}
