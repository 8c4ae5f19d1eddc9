//! FNV-1a (Fowler/Noll/Vo): the stable byte hashes of names and keys. Unlike std's
//! `DefaultHasher`, the values never change between processes, hosts or Rust versions, so they
//! can name things in pinned maps and place backends identically on every load balancer.

const FNV32_OFFSET_BASIS: u32 = 0x811c_9dc5;
const FNV32_PRIME: u32 = 0x0100_0193;
const FNV64_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV64_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 32-bit FNV-1a of `bytes`.
pub const fn fnv1a_32(bytes: &[u8]) -> u32 {
    let mut h = FNV32_OFFSET_BASIS;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u32;
        h = h.wrapping_mul(FNV32_PRIME);
        i += 1;
    }
    h
}

/// 64-bit FNV-1a of `bytes`.
pub const fn fnv1a_64(bytes: &[u8]) -> u64 {
    fnv1a_64_seeded(0, bytes)
}

/// 64-bit FNV-1a of `bytes` started from the offset basis xor `seed`: independent hashes of
/// the same bytes for different seeds (with a finaliser after it, see [`crate::maglev`]).
pub const fn fnv1a_64_seeded(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = FNV64_OFFSET_BASIS ^ seed;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(FNV64_PRIME);
        i += 1;
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_vectors() {
        // From the FNV reference test suite (Landon Curt Noll).
        assert_eq!(fnv1a_32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a_32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a_32(b"foobar"), 0xbf9c_f968);
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn a_seed_changes_the_hash() {
        assert_eq!(fnv1a_64_seeded(0, b"foobar"), fnv1a_64(b"foobar"));
        assert_ne!(fnv1a_64_seeded(1, b"foobar"), fnv1a_64(b"foobar"));
    }
}
