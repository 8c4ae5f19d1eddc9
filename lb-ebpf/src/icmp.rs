//! ICMP errors about NAT flows, translated as the flow's packets are (IPVS does the same for
//! its NAT mode). Without it, path-MTU discovery breaks at latch: a "fragmentation needed"
//! quotes the packet as latch sent it, which the sender does not know.
//!
//! - To the client: an error about a packet latch sent to a NAT backend (quoted: client ->
//!   backend), from the backend itself (port unreachable) or a router on the way
//!   (fragmentation needed). The quoted destination becomes the VIP and port again, the outer
//!   source the VIP (the backend's address stays hidden, as in every reply).
//! - To the backend: an error about a reply latch translated (quoted: VIP -> client), sent to
//!   the VIP by a router on the client's side. The quoted source becomes the backend and its
//!   port, the outer destination the backend.
//!
//! Every checksum follows: the quoted IPv4 header's, the quoted TCP/UDP one (when quoted; it
//! covers the quoted addresses through its pseudo-header), the ICMP one (which covers all the
//! quoted bytes, so every changed word) and the outer IPv4 one. All are incremental: the
//! quoted packet is usually cut short, so a full recomputation is impossible for the inner
//! TCP/UDP checksum and needless for the others. Every quoted field sits at an even offset
//! from the ICMP header, so each changed word is one word of the ICMP sum.

use core::mem::offset_of;

use aya_ebpf::bindings::xdp_action;
use lb_common::{FlowKey, csum, proto, stat};

use crate::{
    conntrack,
    ctx::Ctx,
    family::{V4, update_ip_check},
    forward::{self, Hdrs},
    parse::{IcmpError, Ipv4Hdr},
    stats,
    wire::{self, load_check, store_check},
};

/// The quoted packet's address and port rewritten: `src` true for its source, false for its
/// destination.
struct Rewrite {
    src: bool,
    old_addr: u32,
    new_addr: u32,
    old_port: u16,
    new_port: u16,
}

/// Translates an ICMP error about a NAT flow, or passes it (counted as not ours).
#[inline(always)]
pub fn translate<C: Ctx>(ctx: &C, e: &IcmpError, now: u64) -> u32 {
    // SAFETY: `e.ip` points to a whole, bounds-checked IPv4 header (`IcmpError`'s invariant).
    let (ttl, outer_src, outer_dst) = unsafe {
        let ip = e.ip.cast::<u8>();
        (
            (*e.ip).ttl,
            wire::load_u32(ip.add(offset_of!(Ipv4Hdr, src))),
            wire::load_u32(ip.add(offset_of!(Ipv4Hdr, dst))),
        )
    };
    // The error goes to the quoted packet's sender; anything else is not about our flows.
    if ttl <= 1 || outer_dst != e.inner.src_addr {
        stats::count(stat::PASS_NOT_VIP);
        return xdp_action::XDP_PASS;
    }
    // The tuple of the packet the quoted one belongs with, seen from the other end: for an
    // error to the client, the backend's reply tuple; for one to a backend, the flow's
    // forward tuple.
    let key = FlowKey {
        src_addr: e.inner.dst_addr,
        dst_addr: e.inner.src_addr,
        src_port: e.inner.dst_port,
        dst_port: e.inner.src_port,
        proto: e.inner.proto,
        _pad: [0, 0, 0],
    };
    if conntrack::maybe_reply::<V4>(&key)
        && let Some((vip, vport)) = conntrack::lookup_reply::<V4>(&key)
    {
        rewrite_inner(
            e,
            &Rewrite {
                src: false,
                old_addr: e.inner.dst_addr,
                new_addr: vip,
                old_port: e.inner.dst_port,
                new_port: vport,
            },
        );
        set_outer(e, offset_of!(Ipv4Hdr, src), outer_src, vip);
        stats::count(stat::ICMP_TO_CLIENT);
        return forward::out(ctx, &hdrs(e), outer_dst, true, now);
    }
    if let Some(be) = conntrack::nat_flow_backend::<V4>(&key) {
        rewrite_inner(
            e,
            &Rewrite {
                src: true,
                old_addr: e.inner.src_addr,
                new_addr: be.addr,
                old_port: e.inner.src_port,
                new_port: be.port,
            },
        );
        set_outer(e, offset_of!(Ipv4Hdr, dst), outer_dst, be.addr);
        stats::count(stat::ICMP_TO_BACKEND);
        return forward::out(ctx, &hdrs(e), be.addr, true, now);
    }
    stats::count(stat::PASS_NOT_VIP);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn hdrs(e: &IcmpError) -> Hdrs<V4> {
    Hdrs {
        eth: e.eth,
        ip: e.ip,
        proto: proto::ICMP,
        ports: None,
        tot_len: e.tot_len,
    }
}

/// Rewrites one outer address (at `field` of the outer IPv4 header) and its header checksum.
/// ICMP has no pseudo-header: its checksum does not change.
#[inline(always)]
fn set_outer(e: &IcmpError, field: usize, old: u32, new: u32) {
    // SAFETY: `e.ip` covers the whole outer IPv4 header (`IcmpError`'s invariant) and `field`
    // is the offset of one of its addresses.
    unsafe { wire::store_u32(e.ip.cast::<u8>().add(field), new) };
    update_ip_check(e.ip, |c| csum::replace4(c, old, new));
}

/// Rewrites the quoted packet's address and port and every checksum that covers them.
#[inline(always)]
fn rewrite_inner(e: &IcmpError, r: &Rewrite) {
    let (addr_off, port_off) = if r.src {
        (offset_of!(Ipv4Hdr, src), 0)
    } else {
        (offset_of!(Ipv4Hdr, dst), 2)
    };
    let inner_ip = e.inner_ip.cast::<u8>();
    // SAFETY: `IcmpError`'s invariant: the quoted IPv4 header (addresses at 12..20, checksum
    // at 10..12), the four quoted port bytes and the ICMP checksum field are bounds-checked
    // packet memory, reached only through raw pointers.
    let mut icmp_sum = unsafe {
        wire::store_u32(inner_ip.add(addr_off), r.new_addr);
        wire::store_u16(e.inner_ports.cast::<u8>().add(port_off), r.new_port);
        load_check(e.icmp_check)
    };
    icmp_sum = csum::replace4(icmp_sum, r.old_addr, r.new_addr);
    icmp_sum = csum::replace2(icmp_sum, r.old_port, r.new_port);
    // SAFETY: as above, the quoted IPv4 header's checksum field.
    let ip_check = unsafe { core::ptr::addr_of_mut!((*e.inner_ip).check) };
    // SAFETY: as above.
    let old_ip_check = unsafe { load_check(ip_check) };
    let new_ip_check = csum::replace4(old_ip_check, r.old_addr, r.new_addr);
    // SAFETY: as above.
    unsafe { store_check(ip_check, new_ip_check) };
    icmp_sum = csum::replace2(icmp_sum, old_ip_check, new_ip_check);
    if let Some(l4_check) = e.inner_l4_check {
        // SAFETY: `IcmpError`'s invariant: the quoted checksum field is bounds-checked packet
        // memory.
        let old = unsafe { load_check(l4_check) };
        if let Some(new) = csum::replace_addr_port(
            old,
            e.inner.proto == proto::UDP,
            r.old_addr,
            r.new_addr,
            r.old_port,
            r.new_port,
        ) {
            // SAFETY: as above.
            unsafe { store_check(l4_check, new) };
            icmp_sum = csum::replace2(icmp_sum, old, new);
        }
    }
    // SAFETY: as above, the ICMP checksum field.
    unsafe { store_check(e.icmp_check, icmp_sum) };
}
