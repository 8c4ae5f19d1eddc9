//! The two address families, as one trait the program is generic over: the packet logic
//! (conntrack, services, Maglev, persistence, NAT, next hop) is written once, and each family
//! brings its maps, its address type and the few header operations that differ (IPv4 has a
//! header checksum and a TTL, IPv6 a hop limit and 128-bit addresses in the TCP/UDP
//! pseudo-header).
//!
//! Why separate maps per family (SERVICES6, CONNTRACK6, ...) rather than one map with 16-byte
//! addresses: IPv4 keys and values keep their size, so the IPv4 paths hash and copy what they
//! did before (see docs/ARCHITECTURE.md, "IPv6"). Backend and service ids are one space for
//! both families, so counters, Maglev tables and stats stay shared.

use core::mem::offset_of;

use aya_ebpf::maps::{Array, HashMap, LruHashMap, PerCpuArray};
use lb_common::Persist;
use lb_common::{
    Addr6, BackendOf, Flow, FlowKey, FlowKey6, FlowKeyOf, PersistKeyOf, ReplyKeyOf, ReplySourcesOf,
    Service, ServiceKeyOf, csum, fold6, maglev, mask6, service_flags,
};

use crate::{
    ctx::Ctx,
    maps,
    nexthop::NextHopOf,
    parse::{IPV6_HLEN, Ipv4Hdr, Ipv6Hdr, L4_OFF, L4_OFF6},
    wire::{self, load_check, store_check},
};

/// `AF_INET` and `AF_INET6`, as `bpf_fib_lookup` takes them.
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// What the family-generic logic needs of one address family.
pub trait Family {
    /// An address as map keys hold it (network byte order).
    type Addr: lb_common::Address;
    /// The IP header.
    type Hdr;
    /// Offset of the TCP/UDP header (IP header without options or extension headers).
    const L4_OFF: usize;

    fn services() -> &'static HashMap<ServiceKeyOf<Self::Addr>, Service>;
    fn backends() -> &'static Array<BackendOf<Self::Addr>>;
    fn conntrack() -> &'static LruHashMap<FlowKeyOf<Self::Addr>, Flow>;
    fn persist() -> &'static HashMap<PersistKeyOf<Self::Addr>, Persist>;
    fn nat_reply() -> &'static HashMap<ReplyKeyOf<Self::Addr>, ReplySourcesOf<Self::Addr>>;
    fn next_hops() -> &'static PerCpuArray<NextHopOf<Self::Addr>>;

    /// The address folded to 32 bits (next-hop slot, NAT_SERVERS bit).
    fn fold(a: &Self::Addr) -> u32;
    /// Address equality, word by word (an array `==` may become a `memcmp` call, which BPF
    /// does not have).
    fn same(a: &Self::Addr, b: &Self::Addr) -> bool;
    /// The Maglev hash of a new flow.
    fn flow_hash(key: &FlowKeyOf<Self::Addr>) -> u32;
    /// The Maglev hash of a new flow of a service with `HASH_CLIENT_IP` in `flags`: the
    /// client's address (as its persistence key has it) without the source port.
    fn client_hash(key: &FlowKeyOf<Self::Addr>, flags: u32) -> u32;
    /// The client address a persistence key holds for a service with `flags`.
    fn persist_addr(client: &Self::Addr, flags: u32) -> Self::Addr;

    /// Hop limit (TTL) of the header.
    ///
    /// # Safety
    /// `ip` must point to a whole, bounds-checked header of this run's frame, reached only
    /// through raw pointers (the invariant of `parse::Packet`).
    unsafe fn hop_limit(ip: *mut Self::Hdr) -> u8;
    /// Decrements the hop limit (and, for IPv4, fixes the header checksum).
    ///
    /// # Safety
    /// As for [`Family::hop_limit`], and the hop limit is above 1.
    unsafe fn decrement_hop_limit(ip: *mut Self::Hdr);
    /// Rewrites the source (`src`) or destination address from `old` to `new` (and, for IPv4,
    /// fixes the header checksum).
    ///
    /// # Safety
    /// As for [`Family::hop_limit`].
    unsafe fn set_addr(ip: *mut Self::Hdr, src: bool, old: &Self::Addr, new: &Self::Addr);
    /// The FIB lookup's family, tos (IPv4) or flow info (IPv6), source and destination.
    ///
    /// # Safety
    /// As for [`Family::hop_limit`].
    unsafe fn fib_addrs(ip: *mut Self::Hdr, dst: &Self::Addr) -> (u8, u32, Addr6, Addr6);

    /// A TCP/UDP checksum after one address of the pseudo-header and one port changed
    /// (`None`: a UDP packet without checksum, left so).
    fn l4_check(
        check: u16,
        udp: bool,
        old: &Self::Addr,
        new: &Self::Addr,
        old_port: u16,
        new_port: u16,
    ) -> Option<u16>;
    /// The same through the hook's helper (TC), for the checksum field at `offset`.
    fn tc_l4_check<C: Ctx>(
        ctx: &C,
        offset: usize,
        udp: bool,
        addr: (&Self::Addr, &Self::Addr),
        port: (u16, u16),
    );
}

/// IPv4.
pub struct V4;
/// IPv6.
pub struct V6;

impl Family for V4 {
    type Addr = u32;
    type Hdr = Ipv4Hdr;
    const L4_OFF: usize = L4_OFF;

    #[inline(always)]
    fn services() -> &'static HashMap<ServiceKeyOf<u32>, Service> {
        &maps::SERVICES
    }
    #[inline(always)]
    fn backends() -> &'static Array<BackendOf<u32>> {
        &maps::BACKENDS
    }
    #[inline(always)]
    fn conntrack() -> &'static LruHashMap<FlowKey, Flow> {
        &maps::CONNTRACK
    }
    #[inline(always)]
    fn persist() -> &'static HashMap<PersistKeyOf<u32>, Persist> {
        &maps::PERSIST
    }
    #[inline(always)]
    fn nat_reply() -> &'static HashMap<ReplyKeyOf<u32>, ReplySourcesOf<u32>> {
        &maps::NAT_REPLY
    }
    #[inline(always)]
    fn next_hops() -> &'static PerCpuArray<NextHopOf<u32>> {
        &maps::NEXT_HOPS
    }

    #[inline(always)]
    fn fold(a: &u32) -> u32 {
        *a
    }
    #[inline(always)]
    fn same(a: &u32, b: &u32) -> bool {
        a == b
    }
    #[inline(always)]
    fn flow_hash(key: &FlowKey) -> u32 {
        maglev::flow_hash(key)
    }
    #[inline(always)]
    fn client_hash(key: &FlowKey, _flags: u32) -> u32 {
        maglev::client_hash(key.src_addr, key)
    }
    #[inline(always)]
    fn persist_addr(client: &u32, _flags: u32) -> u32 {
        *client
    }

    #[inline(always)]
    unsafe fn hop_limit(ip: *mut Ipv4Hdr) -> u8 {
        // SAFETY: the caller's contract: a whole IPv4 header.
        unsafe { (*ip).ttl }
    }

    #[inline(always)]
    unsafe fn decrement_hop_limit(ip: *mut Ipv4Hdr) {
        // TTL and protocol form one 16-bit word of the checksum; TTL is its first byte.
        // SAFETY: the caller's contract: bytes 8..10 are in the bounds-checked header, reached
        // only through raw pointers; TTL > 1.
        let (old, new) = unsafe {
            let ttl_proto = ip.cast::<u8>().add(offset_of!(Ipv4Hdr, ttl));
            let old = wire::load_u16(ttl_proto);
            let new = u16::from_ne_bytes([(*ip).ttl - 1, (*ip).proto]);
            wire::store_u16(ttl_proto, new);
            (old, new)
        };
        update_ip_check(ip, |check| csum::replace2(check, old, new));
    }

    #[inline(always)]
    unsafe fn set_addr(ip: *mut Ipv4Hdr, src: bool, old: &u32, new: &u32) {
        let field = if src {
            offset_of!(Ipv4Hdr, src)
        } else {
            offset_of!(Ipv4Hdr, dst)
        };
        // SAFETY: the caller's contract: the address at `field` is in the header.
        unsafe { wire::store_u32(ip.cast::<u8>().add(field), *new) };
        update_ip_check(ip, |check| csum::replace4(check, *old, *new));
    }

    #[inline(always)]
    unsafe fn fib_addrs(ip: *mut Ipv4Hdr, dst: &u32) -> (u8, u32, Addr6, Addr6) {
        // SAFETY: the caller's contract: a whole IPv4 header.
        let (tos, src) = unsafe { ((*ip).tos, u32::from_ne_bytes((*ip).src)) };
        // `tos` is the first byte of its union with the IPv6 flow info.
        (AF_INET, u32::from(tos), [src, 0, 0, 0], [*dst, 0, 0, 0])
    }

    #[inline(always)]
    fn l4_check(
        check: u16,
        udp: bool,
        old: &u32,
        new: &u32,
        old_port: u16,
        new_port: u16,
    ) -> Option<u16> {
        csum::replace_addr_port(check, udp, *old, *new, old_port, new_port)
    }

    #[inline(always)]
    fn tc_l4_check<C: Ctx>(
        ctx: &C,
        offset: usize,
        udp: bool,
        addr: (&u32, &u32),
        port: (u16, u16),
    ) {
        ctx.l4_csum_addr(offset, udp, *addr.0, *addr.1);
        ctx.l4_csum_port(offset, udp, port.0, port.1);
    }
}

impl Family for V6 {
    type Addr = Addr6;
    type Hdr = Ipv6Hdr;
    const L4_OFF: usize = L4_OFF6;

    #[inline(always)]
    fn services() -> &'static HashMap<ServiceKeyOf<Addr6>, Service> {
        &maps::SERVICES6
    }
    #[inline(always)]
    fn backends() -> &'static Array<BackendOf<Addr6>> {
        &maps::BACKENDS6
    }
    #[inline(always)]
    fn conntrack() -> &'static LruHashMap<FlowKey6, Flow> {
        &maps::CONNTRACK6
    }
    #[inline(always)]
    fn persist() -> &'static HashMap<PersistKeyOf<Addr6>, Persist> {
        &maps::PERSIST6
    }
    #[inline(always)]
    fn nat_reply() -> &'static HashMap<ReplyKeyOf<Addr6>, ReplySourcesOf<Addr6>> {
        &maps::NAT_REPLY6
    }
    #[inline(always)]
    fn next_hops() -> &'static PerCpuArray<NextHopOf<Addr6>> {
        &maps::NEXT_HOPS6
    }

    #[inline(always)]
    fn fold(a: &Addr6) -> u32 {
        fold6(a)
    }
    #[inline(always)]
    fn same(a: &Addr6, b: &Addr6) -> bool {
        a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3]
    }
    #[inline(always)]
    fn flow_hash(key: &FlowKey6) -> u32 {
        maglev::flow_hash6(key)
    }
    #[inline(always)]
    fn client_hash(key: &FlowKey6, flags: u32) -> u32 {
        maglev::client_hash6(&Self::persist_addr(&key.src_addr, flags), key)
    }
    #[inline(always)]
    fn persist_addr(client: &Addr6, flags: u32) -> Addr6 {
        mask6(client, service_flags::persist_prefix(flags))
    }

    #[inline(always)]
    unsafe fn hop_limit(ip: *mut Ipv6Hdr) -> u8 {
        // SAFETY: the caller's contract: a whole IPv6 header.
        unsafe { (*ip).hop_limit }
    }

    #[inline(always)]
    unsafe fn decrement_hop_limit(ip: *mut Ipv6Hdr) {
        // No header checksum in IPv6, and the hop limit is in no pseudo-header.
        // SAFETY: the caller's contract: a whole IPv6 header, hop limit > 1.
        unsafe { (*ip).hop_limit -= 1 };
    }

    #[inline(always)]
    unsafe fn set_addr(ip: *mut Ipv6Hdr, src: bool, _old: &Addr6, new: &Addr6) {
        let field = if src {
            offset_of!(Ipv6Hdr, src)
        } else {
            offset_of!(Ipv6Hdr, dst)
        };
        // SAFETY: the caller's contract: the 16 address bytes at `field` are in the header.
        unsafe {
            let p = ip.cast::<u8>().add(field);
            wire::store_u32(p, new[0]);
            wire::store_u32(p.add(4), new[1]);
            wire::store_u32(p.add(8), new[2]);
            wire::store_u32(p.add(12), new[3]);
        }
    }

    #[inline(always)]
    unsafe fn fib_addrs(ip: *mut Ipv6Hdr, dst: &Addr6) -> (u8, u32, Addr6, Addr6) {
        // SAFETY: the caller's contract: the source at 8..24 is in the header.
        let src = unsafe { load6(ip.cast::<u8>().add(offset_of!(Ipv6Hdr, src))) };
        (AF_INET6, 0, src, *dst)
    }

    #[inline(always)]
    fn l4_check(
        check: u16,
        udp: bool,
        old: &Addr6,
        new: &Addr6,
        old_port: u16,
        new_port: u16,
    ) -> Option<u16> {
        csum::replace_addr6_port(check, udp, old, new, old_port, new_port)
    }

    #[inline(always)]
    fn tc_l4_check<C: Ctx>(
        ctx: &C,
        offset: usize,
        udp: bool,
        addr: (&Addr6, &Addr6),
        port: (u16, u16),
    ) {
        for i in 0..4 {
            ctx.l4_csum_addr(offset, udp, addr.0[i], addr.1[i]);
        }
        ctx.l4_csum_port(offset, udp, port.0, port.1);
    }
}

/// The 16 bytes at `p` as an [`Addr6`].
///
/// # Safety
/// `p .. p + 16` must be bounds-checked packet bytes.
#[inline(always)]
pub unsafe fn load6(p: *const u8) -> Addr6 {
    // SAFETY: the caller's contract covers all four words.
    unsafe {
        [
            wire::load_u32(p),
            wire::load_u32(p.add(4)),
            wire::load_u32(p.add(8)),
            wire::load_u32(p.add(12)),
        ]
    }
}

/// Replaces the IPv4 header checksum of `ip` by `update` of it.
///
/// `ip` must point to a whole, bounds-checked IPv4 header of this run's frame (the invariant
/// of `Packet` and `IcmpError`, whose pointers are the only ones passed here).
#[inline(always)]
pub fn update_ip_check(ip: *mut Ipv4Hdr, update: impl FnOnce(u16) -> u16) {
    // SAFETY: per the contract above, the checksum field at 10..12 is packet memory; only raw
    // pointers reach it.
    unsafe {
        let field = core::ptr::addr_of_mut!((*ip).check);
        store_check(field, update(load_check(field)));
    }
}

/// The IPv6 payload length as the L3 length the counters and the FIB take (header included),
/// saturated: a jumbogram is not forwarded anyway.
#[inline(always)]
pub fn l3_len6(payload: u16) -> u16 {
    payload.saturating_add(IPV6_HLEN as u16)
}
