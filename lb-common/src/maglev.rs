//! Maglev arithmetic (Eisenbud et al., NSDI 2016) shared by the agent, which builds each
//! service's lookup table, and the XDP program, which indexes it with a flow hash.
//!
//! Both halves are a contract beyond one process: a table must come out the same on every
//! load balancer and agent version (so a flow keeps its backend whichever host forwards it),
//! hence fixed seeds here and an order-independent build in the agent.

use crate::{
    FlowKey, FlowKey6, MAGLEV_SLOTS_PER_SERVICE, MAGLEV_TABLE_SIZE, SERVICE_ID_LIMIT,
    fnv::fnv1a_64_seeded, jhash::jhash_3words, maglev_base,
};

/// Hash of a flow's 5-tuple as the client sent it (addresses and ports in network order), by
/// which a new flow is placed in its service's table.
#[inline(always)]
pub fn flow_hash(key: &FlowKey) -> u32 {
    let ports = ((key.src_port as u32) << 16) | key.dst_port as u32;
    jhash_3words(key.src_addr, key.dst_addr, ports, key.proto as u32)
}

/// [`flow_hash`] of an IPv6 flow: each address folded to 32 bits ([`crate::fold6`]).
#[inline(always)]
pub fn flow_hash6(key: &FlowKey6) -> u32 {
    let ports = ((key.src_port as u32) << 16) | key.dst_port as u32;
    jhash_3words(
        crate::fold6(&key.src_addr),
        crate::fold6(&key.dst_addr),
        ports,
        key.proto as u32,
    )
}

/// Hash by which a new flow of a service with [`crate::service_flags::HASH_CLIENT_IP`] is
/// placed: [`flow_hash`] with the source port left out (Katran's `F_HASH_NO_SRC_PORT`), so
/// every connection of one client to one VIP:port lands on the same server, on every host
/// with the same table. `client` is the client's address as the persistence key has it.
#[inline(always)]
pub fn client_hash(client: u32, key: &FlowKey) -> u32 {
    jhash_3words(client, key.dst_addr, key.dst_port as u32, key.proto as u32)
}

/// [`client_hash`] of an IPv6 flow; `client` is the client's address masked to the
/// service's persistence prefix, so a client's whole prefix lands on one server.
#[inline(always)]
pub fn client_hash6(client: &crate::Addr6, key: &FlowKey6) -> u32 {
    jhash_3words(
        crate::fold6(client),
        crate::fold6(&key.dst_addr),
        key.dst_port as u32,
        key.proto as u32,
    )
}

/// Index in the flat maglev array of the entry for `flow_hash` in table `live_slot` of
/// service `service_id`; None for an id or table slot out of range (a corrupt SERVICES entry
/// must not index another service's table).
#[inline(always)]
pub fn entry_index(service_id: u32, live_slot: u32, flow_hash: u32) -> Option<u32> {
    if service_id >= SERVICE_ID_LIMIT || live_slot >= MAGLEV_SLOTS_PER_SERVICE {
        return None;
    }
    Some(maglev_base(service_id, live_slot) + flow_hash % MAGLEV_TABLE_SIZE)
}

/// Seeds of the two independent hashes giving each backend's offset and skip. Changing them
/// reshuffles every table in the fleet, so they are part of the on-the-wire contract.
const OFFSET_SEED: u64 = 0x6c61_7463_685f_6f66; // "latch_of"
const SKIP_SEED: u64 = 0x6c61_7463_685f_736b; // "latch_sk"

/// FNV-1a from a seeded basis, finished with the splitmix64 finaliser so that keys differing
/// in one character still land far apart.
fn key_hash(bytes: &[u8], seed: u64) -> u64 {
    let mut h = fnv1a_64_seeded(seed, bytes);
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// A backend's preference order over the slots of a table: slot `(offset + j * skip) % size`
/// for j = 0, 1, ... With a prime `size` it visits every slot exactly once per `size` steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permutation {
    offset: u64,
    skip: u64,
    size: u64,
}

impl Permutation {
    /// The permutation of the backend with stable identity `key` (for example
    /// `"192.0.2.11:8080"`) over a table of `size` slots (`size` > 0).
    pub fn new(key: &[u8], size: u32) -> Self {
        let size = u64::from(size).max(1);
        let offset = key_hash(key, OFFSET_SEED) % size;
        let skip = if size > 1 {
            key_hash(key, SKIP_SEED) % (size - 1) + 1
        } else {
            1
        };
        Self { offset, skip, size }
    }

    /// The `j`-th slot of the preference order.
    pub fn slot(&self, j: u64) -> usize {
        ((self.offset + j * self.skip) % self.size) as usize
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn flow_hash_is_jhash_of_addresses_and_ports() {
        // 127.0.0.1:12345 -> 127.0.0.2:8080 UDP, fields in network order as on the wire.
        let key = FlowKey {
            src_addr: u32::from_ne_bytes([127, 0, 0, 1]),
            dst_addr: u32::from_ne_bytes([127, 0, 0, 2]),
            src_port: 12345u16.to_be(),
            dst_port: 8080u16.to_be(),
            proto: 17,
            _pad: [0; 3],
        };
        let ports = (u32::from(key.src_port) << 16) | u32::from(key.dst_port);
        assert_eq!(
            flow_hash(&key),
            jhash_3words(key.src_addr, key.dst_addr, ports, 17)
        );
    }

    #[test]
    fn client_hash_leaves_out_the_source_port_only() {
        let key = |src: [u8; 4], port: u16, dport: u16| FlowKey {
            src_addr: u32::from_ne_bytes(src),
            dst_addr: u32::from_ne_bytes([198, 51, 100, 10]),
            src_port: port.to_be(),
            dst_port: dport.to_be(),
            proto: 6,
            _pad: [0; 3],
        };
        let a = key([203, 0, 113, 7], 40000, 443);
        let b = key([203, 0, 113, 7], 51234, 443);
        assert_eq!(client_hash(a.src_addr, &a), client_hash(b.src_addr, &b));
        assert_ne!(flow_hash(&a), flow_hash(&b));
        // Another client, or another service port, hashes elsewhere.
        let c = key([203, 0, 113, 8], 40000, 443);
        let d = key([203, 0, 113, 7], 40000, 80);
        assert_ne!(client_hash(a.src_addr, &a), client_hash(c.src_addr, &c));
        assert_ne!(client_hash(a.src_addr, &a), client_hash(d.src_addr, &d));
    }

    #[test]
    fn client_hash6_is_of_the_masked_client() {
        let w = |x: u32| x.to_be();
        let key = |last: u32, port: u16| FlowKey6 {
            src_addr: [w(0x2001_0db8), w(0x0000_00c1), w(0), w(last)],
            dst_addr: [w(0x2001_0db8), 0, 0, w(0x10)],
            src_port: port.to_be(),
            dst_port: 443u16.to_be(),
            proto: 6,
            _pad: [0; 3],
        };
        let a = key(1, 40000);
        let b = key(0xdead_beef, 50000);
        // Two privacy addresses of one /64: one server when the prefix is applied.
        assert_eq!(
            client_hash6(&crate::mask6(&a.src_addr, 64), &a),
            client_hash6(&crate::mask6(&b.src_addr, 64), &b)
        );
        assert_ne!(client_hash6(&a.src_addr, &a), client_hash6(&b.src_addr, &b));
    }

    #[test]
    fn entry_index_stays_inside_the_service_table() {
        assert_eq!(entry_index(SERVICE_ID_LIMIT, 0, 0), None);
        assert_eq!(entry_index(1, MAGLEV_SLOTS_PER_SERVICE, 0), None);
        assert_eq!(entry_index(0, 0, 0), Some(0));
        assert_eq!(
            entry_index(1, 1, MAGLEV_TABLE_SIZE),
            Some(maglev_base(1, 1))
        );
        // The largest id of the largest capacity indexes inside that capacity's array, and
        // the arithmetic does not overflow.
        let largest = crate::Capacities {
            services: SERVICE_ID_LIMIT,
            ..crate::Capacities::DEFAULT
        };
        let last = entry_index(SERVICE_ID_LIMIT - 1, MAGLEV_SLOTS_PER_SERVICE - 1, u32::MAX);
        assert!(last.is_some_and(|i| i < largest.maglev_entries()));
    }

    #[test]
    fn offset_and_skip_hashes_are_independent() {
        // Correlated hashes would give backends shared permutations.
        let m = u64::from(MAGLEV_TABLE_SIZE);
        let same = (0..1000)
            .filter(|i| {
                let k = std::format!("198.51.100.{}:{}", i % 250, i);
                key_hash(k.as_bytes(), OFFSET_SEED) % m == key_hash(k.as_bytes(), SKIP_SEED) % m
            })
            .count();
        assert!(same < 5, "{same} keys with equal offset and skip");
    }

    #[test]
    fn a_table_of_one_slot_has_one_permutation() {
        let p = Permutation::new(b"192.0.2.1:80", 1);
        assert_eq!((p.slot(0), p.slot(7)), (0, 0));
    }

    proptest! {
        /// With a prime size, a permutation visits every slot once per `size` steps (the
        /// builder relies on it to find a free slot).
        #[test]
        fn permutation_visits_every_slot_once(
            key in proptest::collection::vec(any::<u8>(), 0..40),
            size in prop_oneof![Just(2u32), Just(7), Just(251), Just(MAGLEV_TABLE_SIZE)],
        ) {
            let p = Permutation::new(&key, size);
            let mut seen = std::vec![false; size as usize];
            for j in 0..u64::from(size) {
                let slot = p.slot(j);
                prop_assert!(!seen[slot], "slot {} twice", slot);
                seen[slot] = true;
            }
        }
    }
}
