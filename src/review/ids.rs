//! The domain's names: the shared string type for ids, paths and lines, the
//! id of one stream in the registry, and the map keyed by it.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// An id, a path or a line of text: shared, so copying one (into an event,
/// an operation, a bridge) never copies its bytes.
pub type Text = Arc<str>;

/// Identifies one stream (participant or watcher) across the registry.
pub type MemberId = u64;

/// A map keyed by [`MemberId`], hashed by [`MemberIdHasher`].
pub type MemberMap<V> = HashMap<MemberId, V, BuildHasherDefault<MemberIdHasher>>;

/// Hashes a [`MemberId`] with one multiplication. Member ids are handed out
/// in sequence by the registry and never chosen by a client, so nobody can
/// pick keys that collide: the flood resistance of the default SipHash
/// (kept for maps keyed by client-chosen strings) buys nothing here, and it
/// cost a few hundred instructions per lookup on the per-message path.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemberIdHasher(u64);

impl Hasher for MemberIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: an odd multiplier keeps distinct ids distinct
        // in the low bits (the bucket) and mixes them into the high bits
        // (the control byte).
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn sequential_member_ids_spread_over_buckets_and_control_bytes() {
        let build = BuildHasherDefault::<MemberIdHasher>::default();
        let hashes: Vec<u64> = (0..4096u64).map(|id| build.hash_one(id)).collect();
        // Distinct ids, distinct hashes.
        let mut sorted = hashes.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), hashes.len());
        // The low 12 bits (a table of 4096 buckets) take every value once.
        let mut buckets: Vec<u64> = hashes.iter().map(|h| h & 0xfff).collect();
        buckets.sort_unstable();
        buckets.dedup();
        assert_eq!(buckets.len(), 4096);
        // The top 7 bits (the control byte) take most of their 128 values.
        let mut tops: Vec<u64> = hashes.iter().map(|h| h >> 57).collect();
        tops.sort_unstable();
        tops.dedup();
        assert!(tops.len() > 120, "{} control bytes", tops.len());
    }

    #[test]
    fn a_member_map_finds_what_it_holds() {
        let mut map: MemberMap<u64> = MemberMap::default();
        for id in 0..10_000u64 {
            map.insert(id * 7, id);
        }
        for id in 0..10_000u64 {
            assert_eq!(map.get(&(id * 7)), Some(&id));
            assert_eq!(map.get(&(id * 7 + 1)), None);
        }
    }
}
