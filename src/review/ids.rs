//! The domain's names: the shared string type for ids, paths and lines, the
//! id of one stream in the registry, and the maps keyed by those ids and by
//! a session's user names.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::{Arc, OnceLock};

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

/// A map keyed by the names of one session's users, hashed by [`NameHasher`].
pub type UserMap<V> = HashMap<Text, V, NameHashing>;

/// Builds [`NameHasher`]s with this process's random key.
#[derive(Debug, Clone, Copy)]
pub struct NameHashing {
    key: u64,
}

impl Default for NameHashing {
    fn default() -> Self {
        static KEY: OnceLock<u64> = OnceLock::new();
        let key = *KEY.get_or_init(|| RandomState::new().hash_one(0x6e61_6d65_u64));
        NameHashing { key }
    }
}

impl BuildHasher for NameHashing {
    type Hasher = NameHasher;

    fn build_hasher(&self) -> NameHasher {
        NameHasher(self.key)
    }
}

/// Hashes a user name eight bytes at a step with a folded multiply (the
/// 128-bit product's halves XORed), from a key random per process.
///
/// User names are chosen by clients, but a session holds at most twice its
/// participant limit of them (64 by default) and each participant's
/// messages are rate limited: names made to collide could cost a lookup a
/// scan of that many entries, no more, and without the key they cannot be
/// computed offline. SipHash, kept for the maps whose size clients drive
/// (sessions, comment ids), cost about 240 instructions per lookup here,
/// five or six lookups per message.
#[derive(Debug, Clone, Copy)]
pub struct NameHasher(u64);

/// Odd constants (from the digits of pi) the state is folded with.
const FOLD_WORD: u64 = 0x243f_6a88_85a3_08d3;
const FOLD_FINISH: u64 = 0x1319_8a2e_0370_7345;

fn folded_multiply(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

impl NameHasher {
    fn mix(&mut self, word: u64) {
        self.0 = folded_multiply(self.0 ^ word, FOLD_WORD);
    }
}

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            self.mix(u64::from_le_bytes(word.try_into().expect("eight bytes")));
        }
        let rest = words.remainder();
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        // The length goes in with the last word: "ab" and "ab\0" differ.
        self.mix(u64::from_le_bytes(last) ^ ((bytes.len() as u64) << 56));
    }

    fn write_u8(&mut self, byte: u8) {
        self.mix(u64::from(byte));
    }

    fn finish(&self) -> u64 {
        folded_multiply(self.0, FOLD_FINISH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn user_names_spread_over_buckets_and_control_bytes() {
        let build = NameHashing::default();
        let names: Vec<String> = (0..4096)
            .map(|i| format!("load-participant-{i}"))
            .chain((0..256).map(|i| "x".repeat(i)))
            .collect();
        let hashes: Vec<u64> = names.iter().map(|n| build.hash_one(n.as_str())).collect();
        let mut sorted = hashes.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            hashes.len(),
            "distinct names, distinct hashes"
        );
        let mut buckets: Vec<u64> = hashes[..4096].iter().map(|h| h & 0xfff).collect();
        buckets.sort_unstable();
        buckets.dedup();
        assert!(buckets.len() > 2400, "{} of 4096 buckets", buckets.len());
        let mut tops: Vec<u64> = hashes.iter().map(|h| h >> 57).collect();
        tops.sort_unstable();
        tops.dedup();
        assert!(tops.len() > 120, "{} control bytes", tops.len());
        // The same name hashes the same in this process.
        assert_eq!(
            build.hash_one("ann"),
            NameHashing::default().hash_one("ann")
        );
    }

    #[test]
    fn a_user_map_finds_what_it_holds() {
        let mut map: UserMap<usize> = UserMap::default();
        for i in 0..1000 {
            map.insert(Text::from(format!("user{i}").as_str()), i);
        }
        for i in 0..1000 {
            assert_eq!(map.get(format!("user{i}").as_str()), Some(&i));
            assert_eq!(map.get(format!("user{i}x").as_str()), None);
        }
    }
}
