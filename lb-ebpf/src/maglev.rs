//! Consistent hashing of new flows through the service's live maglev table.

use lb_common::{
    Backend, FlowKey, MAGLEV_SLOTS_PER_SERVICE, MAGLEV_TABLE_SIZE, MAX_SERVICES, Service,
    maglev_base,
};

use crate::{maps::MAGLEV, service::usable_backend};

const JHASH_INITVAL: u32 = 0xdead_beef;

/// The kernel's `jhash_3words`: good avalanche on small fixed-size keys, cheap in BPF.
#[inline(always)]
fn jhash_3words(a: u32, b: u32, c: u32, initval: u32) -> u32 {
    let iv = initval.wrapping_add(JHASH_INITVAL).wrapping_add(3 << 2);
    let mut a = a.wrapping_add(iv);
    let mut b = b.wrapping_add(iv);
    let mut c = c.wrapping_add(iv);
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(24));
    c
}

/// Hash of a flow's 5-tuple (as the client sent it).
#[inline(always)]
pub fn flow_hash(key: &FlowKey) -> u32 {
    let ports = ((key.src_port as u32) << 16) | key.dst_port as u32;
    jhash_3words(key.src_addr, key.dst_addr, ports, key.proto as u32)
}

/// The backend the service's live maglev table assigns to `hash`, if it is usable.
#[inline(always)]
pub fn pick(svc: &Service, hash: u32) -> Option<(u32, Backend)> {
    if svc.id >= MAX_SERVICES || svc.maglev_slot >= MAGLEV_SLOTS_PER_SERVICE {
        return None;
    }
    let index = maglev_base(svc.id, svc.maglev_slot) + hash % MAGLEV_TABLE_SIZE;
    let id = *MAGLEV.get(index)?;
    let be = usable_backend(id, None)?;
    Some((id, be))
}
