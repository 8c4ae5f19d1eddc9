//! Rewriting and transmitting: NAT (destination rewrite), DSR (MAC rewrite only) and the
//! reverse NAT of backend replies, then the next hop (cached FIB answer) for MACs and the
//! egress port.

use core::mem::offset_of;

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup, xdp_action},
    helpers::generated::bpf_fib_lookup as fib_lookup,
};
use lb_common::{Backend, csum, proto, stat};

use crate::{
    ctx::Ctx,
    nexthop::{self, NextHop},
    parse::{EthHdr, Ipv4Hdr, Packet},
    stats,
    wire::{self, load_check, store_check},
};

const AF_INET: u8 = 2;

/// What [`out`] needs of a frame: its Ethernet and IPv4 headers, and what the FIB lookup is
/// told besides the addresses.
pub struct Hdrs {
    pub eth: *mut EthHdr,
    pub ip: *mut Ipv4Hdr,
    pub proto: u8,
    /// The L4 ports (TCP/UDP), read when the FIB is asked; `None` for ICMP.
    pub ports: Option<*mut [u8; 4]>,
    pub tot_len: u16,
}

impl Hdrs {
    #[inline(always)]
    fn of(pkt: &Packet) -> Self {
        Self {
            eth: pkt.eth,
            ip: pkt.ip,
            proto: pkt.key.proto,
            ports: Some(pkt.ports),
            tot_len: pkt.tot_len,
        }
    }
}

/// Rewrites the destination to the backend (address and port), fixing IP and L4 checksums.
#[inline(always)]
pub fn nat<C: Ctx>(ctx: &C, pkt: &Packet, be: &Backend, now: u64) -> u32 {
    // SAFETY: `pkt.ip` points to a whole, bounds-checked IPv4 header (`Packet`'s invariant).
    if unsafe { (*pkt.ip).ttl } <= 1 {
        // Let the stack answer with ICMP time exceeded.
        stats::count(stat::PASS_FIB_MISS);
        return xdp_action::XDP_PASS;
    }
    let old_addr = pkt.key.dst_addr;
    let old_port = pkt.key.dst_port;
    // SAFETY: `Packet`'s invariant: the IPv4 header (destination at 16..20) and the four port
    // bytes (destination port at 2..4) are bounds-checked packet memory, not borrowed.
    unsafe {
        wire::store_u32(pkt.ip.cast::<u8>().add(offset_of!(Ipv4Hdr, dst)), be.addr);
        wire::store_u16(pkt.ports.cast::<u8>().add(2), be.port);
    }
    update_ip_check(pkt.ip, |check| csum::replace4(check, old_addr, be.addr));
    if C::DIRECT_L4_CSUM {
        fix_l4(pkt, old_addr, be.addr, old_port, be.port);
    }
    let verdict = out(ctx, &Hdrs::of(pkt), be.addr, true, now);
    if !C::DIRECT_L4_CSUM {
        l4_csum_last(ctx, pkt, (old_addr, be.addr), (old_port, be.port));
    }
    verdict
}

/// Rewrites the source of a backend reply back to the virtual service.
#[inline(always)]
pub fn reply<C: Ctx>(ctx: &C, pkt: &Packet, vip: u32, vport: u16, now: u64) -> u32 {
    // SAFETY: `pkt.ip` points to a whole, bounds-checked IPv4 header (`Packet`'s invariant).
    if unsafe { (*pkt.ip).ttl } <= 1 {
        stats::count(stat::PASS_FIB_MISS);
        return xdp_action::XDP_PASS;
    }
    let old_addr = pkt.key.src_addr;
    let old_port = pkt.key.src_port;
    // SAFETY: `Packet`'s invariant: the IPv4 header (source at 12..16) and the four port bytes
    // (source port at 0..2) are bounds-checked packet memory, not borrowed.
    unsafe {
        wire::store_u32(pkt.ip.cast::<u8>().add(offset_of!(Ipv4Hdr, src)), vip);
        wire::store_u16(pkt.ports.cast::<u8>(), vport);
    }
    update_ip_check(pkt.ip, |check| csum::replace4(check, old_addr, vip));
    if C::DIRECT_L4_CSUM {
        fix_l4(pkt, old_addr, vip, old_port, vport);
    }
    let verdict = out(ctx, &Hdrs::of(pkt), pkt.key.dst_addr, true, now);
    if !C::DIRECT_L4_CSUM {
        l4_csum_last(ctx, pkt, (old_addr, vip), (old_port, vport));
    }
    verdict
}

/// DSR: the IP packet stays as the client sent it; only the MACs change.
#[inline(always)]
pub fn dsr<C: Ctx>(ctx: &C, pkt: &Packet, be: &Backend, now: u64) -> u32 {
    out(ctx, &Hdrs::of(pkt), be.addr, false, now)
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

/// The TCP/UDP checksum through the hook's helper (TC), once nothing reads or writes the
/// frame directly any more: the helper invalidates packet pointers. The field's offset is a
/// constant: a `Packet` has no IP options.
#[inline(always)]
fn l4_csum_last<C: Ctx>(ctx: &C, pkt: &Packet, addr: (u32, u32), port: (u16, u16)) {
    let udp = pkt.key.proto == proto::UDP;
    let offset = crate::parse::L4_OFF + if udp { 6 } else { 16 };
    ctx.l4_csum(offset, udp, addr, port);
}

/// L4 checksum after one address (pseudo-header) and one port changed.
#[inline(always)]
fn fix_l4(pkt: &Packet, old_addr: u32, new_addr: u32, old_port: u16, new_port: u16) {
    // SAFETY: `pkt.l4_check` points to the checksum field of the bounds-checked TCP or UDP
    // header (`Packet`'s invariant).
    let check = unsafe { load_check(pkt.l4_check) };
    let udp = pkt.key.proto == proto::UDP;
    let Some(c) = csum::replace_addr_port(check, udp, old_addr, new_addr, old_port, new_port)
    else {
        return;
    };
    // SAFETY: as above; no reference to the field exists.
    unsafe { store_check(pkt.l4_check, c) };
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
pub fn out<C: Ctx>(ctx: &C, pkt: &Hdrs, next_dst: u32, decrement_ttl: bool, now: u64) -> u32 {
    let ingress = ctx.ingress_ifindex();
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
        // SAFETY: `pkt.ip` points to a whole, bounds-checked IPv4 header (the invariant of
        // `Packet` and `IcmpError`, which `Hdrs` are made of): bytes 8..10 are in it, reached
        // only through raw pointers; TTL > 1 was checked by the callers that decrement it.
        let (old, new) = unsafe {
            let ttl_proto = pkt.ip.cast::<u8>().add(offset_of!(Ipv4Hdr, ttl));
            let old = wire::load_u16(ttl_proto);
            let new = u16::from_ne_bytes([(*pkt.ip).ttl - 1, (*pkt.ip).proto]);
            wire::store_u16(ttl_proto, new);
            (old, new)
        };
        update_ip_check(pkt.ip, |check| csum::replace2(check, old, new));
    }
    let eth = pkt.eth.cast::<u8>();
    // SAFETY: `hop` is this CPU's NEXT_HOPS entry from `nexthop::entry`: a valid, aligned
    // per-CPU map value that nothing else writes while the program runs.
    let (macs, ifindex) = unsafe { ((*hop).macs, (*hop).ifindex) };
    // SAFETY: `pkt.eth` points to a whole, bounds-checked Ethernet header (the invariant of
    // the headers `Hdrs` are made of), so bytes 0..12 (both MACs) are packet memory reached
    // only by raw pointers.
    unsafe {
        wire::store_u32(eth, macs[0]);
        wire::store_u32(eth.add(4), macs[1]);
        wire::store_u32(eth.add(8), macs[2]);
    }
    if ifindex == ingress {
        stats::count(stat::VERDICT_TX);
        return ctx.tx(ingress);
    }
    let verdict = ctx.redirect(ifindex);
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
fn fib<C: Ctx>(
    ctx: &C,
    pkt: &Hdrs,
    next_dst: u32,
    ingress: u32,
    hop: *mut NextHop,
    now: u64,
) -> Option<()> {
    let ports = match pkt.ports {
        // SAFETY: `Packet`'s invariant: `ports` points to the four bounds-checked port bytes;
        // a `[u8; 4]` read needs no alignment.
        Some(p) => unsafe { *p },
        None => [0; 4],
    };
    let mut fib = FibParams {
        family: AF_INET,
        l4_protocol: pkt.proto,
        sport: u16::from_ne_bytes([ports[0], ports[1]]),
        dport: u16::from_ne_bytes([ports[2], ports[3]]),
        tot_len: pkt.tot_len,
        ifindex: ingress,
        // SAFETY: `pkt.ip` points to a whole, bounds-checked IPv4 header (see `out`).
        tos: unsafe { (*pkt.ip).tos },
        _pad: [0, 0, 0],
        // SAFETY: as for `tos`; the source address is bytes 12..16 of the header.
        src: u32::from_ne_bytes(unsafe { (*pkt.ip).src }),
        _src_v6: [0, 0, 0],
        dst: next_dst,
        _dst_v6: [0, 0, 0],
        _vlan_or_tbid: 0,
        smac: [0, 0, 0, 0, 0, 0],
        dmac: [0, 0, 0, 0, 0, 0],
    };
    // SAFETY: the context pointer is this run's `xdp_md`; `fib` is a live, exclusively
    // borrowed stack value laid out as `struct bpf_fib_lookup` (same size, asserted above),
    // and the length passed is its size, so the helper reads and writes only inside it.
    let rc = unsafe {
        fib_lookup(
            ctx.raw(),
            (&mut fib as *mut FibParams).cast::<bpf_fib_lookup>(),
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return None;
    }
    // SAFETY: `hop` is this CPU's NEXT_HOPS entry (see `out`): valid, aligned, written by
    // nothing else while the program runs.
    unsafe {
        (*hop).dst = next_dst;
        (*hop).ingress = ingress;
        (*hop).ifindex = fib.ifindex;
        (*hop).macs = NextHop::macs(fib.dmac, fib.smac);
        (*hop).stamp_ns = now;
    }
    Some(())
}
