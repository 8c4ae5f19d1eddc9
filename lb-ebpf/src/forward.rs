//! Rewriting and transmitting: NAT (destination rewrite), DSR (MAC rewrite only) and the
//! reverse NAT of backend replies, then the next hop (cached FIB answer) for MACs and the
//! egress port.

use core::mem::offset_of;

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup, xdp_action},
    helpers::generated::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use lb_common::{Backend, proto, stat};

use crate::{
    csum,
    nexthop::{self, NextHop},
    parse::{Ipv4Hdr, Packet},
    stats, wire,
};

const AF_INET: u8 = 2;

/// Rewrites the destination to the backend (address and port), fixing IP and L4 checksums.
#[inline(always)]
pub fn nat(ctx: &XdpContext, pkt: &Packet, be: &Backend, now: u64) -> u32 {
    if unsafe { (*pkt.ip).ttl } <= 1 {
        // Let the stack answer with ICMP time exceeded.
        stats::count(stat::PASS_FIB_MISS);
        return xdp_action::XDP_PASS;
    }
    let old_addr = pkt.key.dst_addr;
    let old_port = pkt.key.dst_port;
    unsafe {
        wire::store_u32(pkt.ip.cast::<u8>().add(offset_of!(Ipv4Hdr, dst)), be.addr);
        wire::store_u16(pkt.ports.cast::<u8>().add(2), be.port);
    }
    let ip_check = unsafe { core::ptr::addr_of_mut!((*pkt.ip).check) };
    csum::store(
        ip_check,
        csum::replace4(csum::load(ip_check), old_addr, be.addr),
    );
    fix_l4(pkt, old_addr, be.addr, old_port, be.port);
    out(ctx, pkt, be.addr, true, now)
}

/// Rewrites the source of a backend reply back to the virtual service.
#[inline(always)]
pub fn reply(ctx: &XdpContext, pkt: &Packet, vip: u32, vport: u16, now: u64) -> u32 {
    if unsafe { (*pkt.ip).ttl } <= 1 {
        stats::count(stat::PASS_FIB_MISS);
        return xdp_action::XDP_PASS;
    }
    let old_addr = pkt.key.src_addr;
    let old_port = pkt.key.src_port;
    unsafe {
        wire::store_u32(pkt.ip.cast::<u8>().add(offset_of!(Ipv4Hdr, src)), vip);
        wire::store_u16(pkt.ports.cast::<u8>(), vport);
    }
    let ip_check = unsafe { core::ptr::addr_of_mut!((*pkt.ip).check) };
    csum::store(
        ip_check,
        csum::replace4(csum::load(ip_check), old_addr, vip),
    );
    fix_l4(pkt, old_addr, vip, old_port, vport);
    out(ctx, pkt, pkt.key.dst_addr, true, now)
}

/// DSR: the IP packet stays as the client sent it; only the MACs change.
#[inline(always)]
pub fn dsr(ctx: &XdpContext, pkt: &Packet, be: &Backend, now: u64) -> u32 {
    out(ctx, pkt, be.addr, false, now)
}

/// L4 checksum after one address (pseudo-header) and one port changed.
#[inline(always)]
fn fix_l4(pkt: &Packet, old_addr: u32, new_addr: u32, old_port: u16, new_port: u16) {
    let check = csum::load(pkt.l4_check);
    if pkt.key.proto == proto::UDP && check == 0 {
        // UDP without checksum stays without.
        return;
    }
    let mut c = csum::replace4(check, old_addr, new_addr);
    c = csum::replace2(c, old_port, new_port);
    if pkt.key.proto == proto::UDP && c == 0 {
        c = 0xffff;
    }
    csum::store(pkt.l4_check, c);
}

/// `struct bpf_fib_lookup` for IPv4 with plain fields, so that it can be built with ordinary
/// stores (the bindgen unions would need a zeroing memset call first).
#[repr(C)]
struct FibParams {
    family: u8,
    l4_protocol: u8,
    sport: u16,
    dport: u16,
    tot_len: u16,
    ifindex: u32,
    tos: u8,
    _pad: [u8; 3],
    src: u32,
    _src_v6: [u32; 3],
    dst: u32,
    _dst_v6: [u32; 3],
    _vlan_or_tbid: u32,
    smac: [u8; 6],
    dmac: [u8; 6],
}

const _: () = assert!(core::mem::size_of::<FibParams>() == core::mem::size_of::<bpf_fib_lookup>());

/// Next hop toward `next_dst` (cached, else a FIB lookup); on success rewrite MACs (and
/// TTL) and transmit, otherwise pass the (already rewritten) packet to the stack, which routes
/// it and resolves ARP.
#[inline(always)]
fn out(ctx: &XdpContext, pkt: &Packet, next_dst: u32, decrement_ttl: bool, now: u64) -> u32 {
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    let Some((hop, live)) = nexthop::entry(next_dst, ingress, now) else {
        stats::count(stat::PASS_FIB_MISS);
        return xdp_action::XDP_PASS;
    };
    if !live {
        let Some(()) = fib(ctx, pkt, next_dst, ingress, hop, now) else {
            stats::count(stat::PASS_FIB_MISS);
            return xdp_action::XDP_PASS;
        };
    }
    if decrement_ttl {
        // TTL and protocol form one 16-bit word of the checksum; TTL is its first byte.
        let ttl_proto = unsafe { pkt.ip.cast::<u8>().add(offset_of!(Ipv4Hdr, ttl)) };
        let old = unsafe { wire::load_u16(ttl_proto) };
        let new = u16::from_ne_bytes([unsafe { (*pkt.ip).ttl } - 1, unsafe { (*pkt.ip).proto }]);
        unsafe { wire::store_u16(ttl_proto, new) };
        let ip_check = unsafe { core::ptr::addr_of_mut!((*pkt.ip).check) };
        csum::store(ip_check, csum::replace2(csum::load(ip_check), old, new));
    }
    let eth = pkt.eth.cast::<u8>();
    let (macs, ifindex) = unsafe { ((*hop).macs, (*hop).ifindex) };
    unsafe {
        wire::store_u32(eth, macs[0]);
        wire::store_u32(eth.add(4), macs[1]);
        wire::store_u32(eth.add(8), macs[2]);
    }
    if ifindex == ingress {
        stats::count(stat::VERDICT_TX);
        return xdp_action::XDP_TX;
    }
    // Plain bpf_redirect queues into the same per-CPU bulk queue as a devmap redirect
    // (dev_xdp_enqueue), so a devmap would only add a lookup.
    let verdict = unsafe { bpf_redirect(ifindex, 0) as u32 };
    if verdict == xdp_action::XDP_REDIRECT {
        stats::count(stat::VERDICT_REDIRECT);
    } else {
        stats::count(stat::PASS_FIB_MISS);
    }
    verdict
}

/// A FIB lookup toward `next_dst`, its answer stored in the cache entry `hop`. None when the
/// kernel cannot forward it directly (no route, no neighbour yet, forwarding off).
#[inline(always)]
fn fib(
    ctx: &XdpContext,
    pkt: &Packet,
    next_dst: u32,
    ingress: u32,
    hop: *mut NextHop,
    now: u64,
) -> Option<()> {
    let ports = unsafe { *pkt.ports };
    let mut fib = FibParams {
        family: AF_INET,
        l4_protocol: pkt.key.proto,
        sport: u16::from_ne_bytes([ports[0], ports[1]]),
        dport: u16::from_ne_bytes([ports[2], ports[3]]),
        tot_len: pkt.tot_len,
        ifindex: ingress,
        tos: unsafe { (*pkt.ip).tos },
        _pad: [0, 0, 0],
        src: u32::from_ne_bytes(unsafe { (*pkt.ip).src }),
        _src_v6: [0, 0, 0],
        dst: next_dst,
        _dst_v6: [0, 0, 0],
        _vlan_or_tbid: 0,
        smac: [0, 0, 0, 0, 0, 0],
        dmac: [0, 0, 0, 0, 0, 0],
    };
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            (&mut fib as *mut FibParams).cast::<bpf_fib_lookup>(),
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return None;
    }
    unsafe {
        (*hop).dst = next_dst;
        (*hop).ingress = ingress;
        (*hop).ifindex = fib.ifindex;
        (*hop).macs = NextHop::macs(fib.dmac, fib.smac);
        (*hop).stamp_ns = now;
    }
    Some(())
}
