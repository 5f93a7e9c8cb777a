//! Routing: which partition owns a scope.
//!
//! `partition = xxh64(scope as UTF-8 bytes, seed 0) mod partition_count`.
//! XXH64 is specified at <https://github.com/Cyan4973/xxHash> and has
//! implementations in every common language, so any client can route
//! without asking a server. The proto documents the same function and the
//! test vectors below.

/// The routing hash's name, as `GetPartitionMap` reports it.
pub const HASH_FUNCTION: &str = "xxh64-seed0-mod";

/// The partition that owns `scope` in a cluster of `partition_count`
/// partitions.
///
/// # Panics
/// If `partition_count` is 0.
pub fn partition_of(scope: &str, partition_count: u32) -> u32 {
    assert!(partition_count > 0, "a cluster has at least one partition");
    (scope_hash(scope) % u64::from(partition_count)) as u32
}

/// XXH64 of the scope's bytes with seed 0.
pub fn scope_hash(scope: &str) -> u64 {
    xxhash_rust::xxh64::xxh64(scope.as_bytes(), 0)
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
    fn partitions_stay_in_range_and_spread() {
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            let p = partition_of(&format!("tenant-{i}"), 16);
            counts[p as usize] += 1;
        }
        // Each of 16 partitions should get about 1,000 of 16,000 scopes.
        for (p, n) in counts.iter().enumerate() {
            assert!(
                (800..1200).contains(n),
                "partition {p} got {n} of 16000 scopes"
            );
        }
    }
}
