//! The one hash function of the consistent-hash tables: a request's key and an endpoint's
//! placement on the [`ring`](super::ring) or in the [`maglev`](super::maglev) table are hashed
//! with it, so the two always agree.
//!
//! xxh3 (64-bit, from `xxhash-rust`): the keys are not secrets and the tables do not need
//! collision resistance, only a fast, well-mixed, stable hash. It is the family Envoy uses
//! for the same tables (xxHash64 there), hashes a short key in a few nanoseconds — a request
//! pays it on every pick — and its output is fixed by the xxh3 specification, so placement
//! does not change between builds, platforms or replicas (std's `DefaultHasher` promises
//! none of that; SipHash or SHA-256 would cost several times more per request).

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// xxh3-64 of bytes; used for request keys and endpoint placement.
pub fn hash(bytes: &[u8]) -> u64 {
    xxh3_64(bytes)
}

/// xxh3-64 of bytes under `seed`: independent hashes of one key (Maglev's offset and skip).
/// Seed 0 is [`hash`].
pub fn hash_seeded(bytes: &[u8], seed: u64) -> u64 {
    xxh3_64_with_seed(bytes, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_across_builds_and_platforms() {
        // xxh3's published test vectors: a changed hash would move every key.
        assert_eq!(hash(b""), 0x2D06_8005_38D3_94C2);
        assert_eq!(hash_seeded(b"", 0), hash(b""));
        assert_eq!(hash(b"10.0.0.1:8080"), hash(b"10.0.0.1:8080"));
    }

    #[test]
    fn seeds_give_independent_hashes() {
        let key = b"10.0.0.1:8080";
        assert_ne!(hash_seeded(key, 1), hash_seeded(key, 2));
        assert_ne!(hash_seeded(key, 1), hash(key));
        assert_ne!(hash(b"10.0.0.1:8080"), hash(b"10.0.0.2:8080"));
    }
}
