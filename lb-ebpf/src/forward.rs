//! Rewriting and transmitting: NAT (destination rewrite), DSR (MAC rewrite only) and the
//! reverse NAT of backend replies, then the next hop (cached FIB answer) for MACs and the
//! egress port.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup, xdp_action},
    helpers::generated::{bpf_check_mtu, bpf_fib_lookup as fib_lookup},
};
use lb_common::{Addr6, BackendOf, proto, stat};

use crate::{
    ctx::Ctx,
    family::Family,
    nexthop::{self, NextHopOf},
    parse::{EthHdr, Packet},
    stats,
    tunnel::Encap,
    wire::{self, load_check, store_check},
};

/// What [`out`] needs of a frame: its Ethernet and IP headers, and what the FIB lookup is
/// told besides the addresses.
pub struct Hdrs<F: Family> {
    pub eth: *mut EthHdr,
    pub ip: *mut F::Hdr,
    pub proto: u8,
    /// The L4 ports (TCP/UDP), read when the FIB is asked; `None` for ICMP and for a tunnel's
    /// outer header.
    pub ports: Option<*mut [u8; 4]>,
    pub tot_len: u16,
}

impl<F: Family> Hdrs<F> {
    #[inline(always)]
    fn of(pkt: &Packet<F>) -> Self {
        Self {
            eth: pkt.eth,
            ip: pkt.ip,
            proto: pkt.key.proto,
            ports: Some(pkt.ports),
            tot_len: pkt.tot_len,
        }
    }
}

/// Rewrites the destination to the backend (address and port), fixing the checksums (IPv4
/// header, TCP/UDP).
#[inline(always)]
pub fn nat<C: Ctx, F: Family>(ctx: &C, pkt: &Packet<F>, be: &BackendOf<F::Addr>, now: u64) -> u32 {
    // SAFETY: `pkt.ip` points to a whole, bounds-checked IP header (`Packet`'s invariant).
    if unsafe { F::hop_limit(pkt.ip) } <= 1 {
        // Let the stack answer with ICMP time exceeded.
        stats::count(stat::PASS_FIB_MISS);
        return xdp_action::XDP_PASS;
    }
    let old_addr = pkt.key.dst_addr;
    let old_port = pkt.key.dst_port;
    // SAFETY: `Packet`'s invariant: the IP header and the four port bytes (destination port
    // at 2..4) are bounds-checked packet memory, not borrowed.
    unsafe {
        F::set_addr(pkt.ip, false, &old_addr, &be.addr);
        wire::store_u16(pkt.ports.cast::<u8>().add(2), be.port);
    }
    if C::DIRECT_L4_CSUM {
        fix_l4(pkt, &old_addr, &be.addr, old_port, be.port);
    }
    let verdict = out(ctx, &Hdrs::of(pkt), be.addr, true, now);
    if !C::DIRECT_L4_CSUM {
        l4_csum_last(ctx, pkt, (&old_addr, &be.addr), (old_port, be.port));
    }
    verdict
}

/// Rewrites the source of a backend reply back to the virtual service.
#[inline(always)]
pub fn reply<C: Ctx, F: Family>(
    ctx: &C,
    pkt: &Packet<F>,
    vip: F::Addr,
    vport: u16,
    now: u64,
) -> u32 {
    // SAFETY: `pkt.ip` points to a whole, bounds-checked IP header (`Packet`'s invariant).
    if unsafe { F::hop_limit(pkt.ip) } <= 1 {
        stats::count(stat::PASS_FIB_MISS);
        return xdp_action::XDP_PASS;
    }
    let old_addr = pkt.key.src_addr;
    let old_port = pkt.key.src_port;
    // SAFETY: `Packet`'s invariant: the IP header and the four port bytes (source port at
    // 0..2) are bounds-checked packet memory, not borrowed.
    unsafe {
        F::set_addr(pkt.ip, true, &old_addr, &vip);
        wire::store_u16(pkt.ports.cast::<u8>(), vport);
    }
    if C::DIRECT_L4_CSUM {
        fix_l4(pkt, &old_addr, &vip, old_port, vport);
    }
    let verdict = out(ctx, &Hdrs::of(pkt), pkt.key.dst_addr, true, now);
    if !C::DIRECT_L4_CSUM {
        l4_csum_last(ctx, pkt, (&old_addr, &vip), (old_port, vport));
    }
    verdict
}

/// DSR: the IP packet stays as the client sent it; only the MACs change. With `tunnel`, it
/// is first encapsulated toward the server (`tunnel.rs`); both share one `out`.
#[inline(always)]
pub fn dsr<C: Ctx, F: Encap>(
    ctx: &C,
    pkt: &Packet<F>,
    be: &BackendOf<F::Addr>,
    tunnel: bool,
    now: u64,
) -> u32 {
    let hdrs = if tunnel {
        let Some(h) = crate::tunnel::encap(ctx, &be.addr) else {
            stats::count(stat::DROP_TUNNEL_ERROR);
            return xdp_action::XDP_DROP;
        };
        h
    } else {
        Hdrs::of(pkt)
    };
    out_checked(ctx, &hdrs, be.addr, false, tunnel, now)
}

/// The TCP/UDP checksum through the hook's helper (TC), once nothing reads or writes the
/// frame directly any more: the helper invalidates packet pointers. The field's offset is a
/// constant: a `Packet` has no IP options or extension headers.
#[inline(always)]
fn l4_csum_last<C: Ctx, F: Family>(
    ctx: &C,
    pkt: &Packet<F>,
    addr: (&F::Addr, &F::Addr),
    port: (u16, u16),
) {
    let udp = pkt.key.proto == proto::UDP;
    let offset = F::L4_OFF + if udp { 6 } else { 16 };
    F::tc_l4_check(ctx, offset, udp, addr, port);
}

/// L4 checksum after one address (pseudo-header) and one port changed.
#[inline(always)]
fn fix_l4<F: Family>(
    pkt: &Packet<F>,
    old_addr: &F::Addr,
    new_addr: &F::Addr,
    old_port: u16,
    new_port: u16,
) {
    // SAFETY: `pkt.l4_check` points to the checksum field of the bounds-checked TCP or UDP
    // header (`Packet`'s invariant).
    let check = unsafe { load_check(pkt.l4_check) };
    let udp = pkt.key.proto == proto::UDP;
    let Some(c) = F::l4_check(check, udp, old_addr, new_addr, old_port, new_port) else {
        return;
    };
    // SAFETY: as above; no reference to the field exists.
    unsafe { store_check(pkt.l4_check, c) };
}

/// `struct bpf_fib_lookup` with plain fields, so that it can be built with ordinary stores
/// (the bindgen unions would need a zeroing memset call first). An IPv4 address is the first
/// word of its union with the IPv6 one.
#[repr(C)]
struct FibParams {
    family: u8,
    l4_protocol: u8,
    sport: u16,
    dport: u16,
    tot_len: u16,
    ifindex: u32,
    /// IPv4 tos (its first byte) or IPv6 flow info.
    tos_flowinfo: u32,
    src: Addr6,
    dst: Addr6,
    _vlan_or_tbid: u32,
    smac: [u8; 6],
    dmac: [u8; 6],
}

const _: () = assert!(core::mem::size_of::<FibParams>() == core::mem::size_of::<bpf_fib_lookup>());

/// Next hop toward `next_dst` (cached, else a FIB lookup); on success rewrite MACs (and
/// TTL) and transmit, otherwise pass the (already rewritten) packet to the stack, which routes
/// it and resolves ARP.
#[inline(always)]
pub fn out<C: Ctx, F: Family>(
    ctx: &C,
    pkt: &Hdrs<F>,
    next_dst: F::Addr,
    decrement_ttl: bool,
    now: u64,
) -> u32 {
    out_checked(ctx, pkt, next_dst, decrement_ttl, false, now)
}

/// [`out`], and with `check_mtu` (an encapsulated frame, which may have outgrown the MTU)
/// the frame is dropped and counted when it exceeds the egress interface's MTU.
#[inline(always)]
fn out_checked<C: Ctx, F: Family>(
    ctx: &C,
    pkt: &Hdrs<F>,
    next_dst: F::Addr,
    decrement_ttl: bool,
    check_mtu: bool,
    now: u64,
) -> u32 {
    let ingress = ctx.ingress_ifindex();
    let Some((hop, live)) = nexthop::entry::<F>(&next_dst, ingress, now) else {
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
        // SAFETY: `pkt.ip` points to a whole, bounds-checked IP header (the invariant of
        // `Packet` and `IcmpError`, which `Hdrs` are made of), reached only through raw
        // pointers; a hop limit > 1 was checked by the callers that decrement it.
        unsafe { F::decrement_hop_limit(pkt.ip) };
    }
    let eth = pkt.eth.cast::<u8>();
    // SAFETY: `hop` is this CPU's NEXT_HOPS entry from `nexthop::entry`: a valid, aligned
    // per-CPU map value that nothing else writes while the program runs.
    let (macs, ifindex) = unsafe { ((*hop).macs, (*hop).ifindex) };
    if check_mtu && !fits_mtu(ctx, ifindex) {
        stats::count(stat::DROP_TUNNEL_TOO_BIG);
        return xdp_action::XDP_DROP;
    }
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

/// Whether the frame fits the MTU of `ifindex` (`bpf_check_mtu`: at XDP the frame against
/// MTU + link header, at TC the L3 length, or each segment of a GSO skb).
#[inline(always)]
fn fits_mtu<C: Ctx>(ctx: &C, ifindex: u32) -> bool {
    let mut mtu: u32 = 0;
    // SAFETY: the context pointer is this run's; `mtu` is a live stack u32 the helper may
    // write (the MTU it found); an unknown ifindex is an error return, not a fault.
    unsafe { bpf_check_mtu(ctx.raw(), ifindex, &mut mtu, 0, 0) == 0 }
}

/// A FIB lookup toward `next_dst`, its answer stored in the cache entry `hop`. None when the
/// kernel cannot forward it directly (no route, no neighbour yet, forwarding off).
#[inline(always)]
fn fib<C: Ctx, F: Family>(
    ctx: &C,
    pkt: &Hdrs<F>,
    next_dst: F::Addr,
    ingress: u32,
    hop: *mut NextHopOf<F::Addr>,
    now: u64,
) -> Option<()> {
    let ports = match pkt.ports {
        // SAFETY: `Packet`'s invariant: `ports` points to the four bounds-checked port bytes;
        // a `[u8; 4]` read needs no alignment.
        Some(p) => unsafe { *p },
        None => [0; 4],
    };
    // SAFETY: `pkt.ip` points to a whole, bounds-checked IP header (see `out`).
    let (family, tos_flowinfo, src, dst) = unsafe { F::fib_addrs(pkt.ip, &next_dst) };
    let mut fib = FibParams {
        family,
        l4_protocol: pkt.proto,
        sport: u16::from_ne_bytes([ports[0], ports[1]]),
        dport: u16::from_ne_bytes([ports[2], ports[3]]),
        tot_len: pkt.tot_len,
        ifindex: ingress,
        tos_flowinfo,
        src,
        dst,
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
        (*hop).macs = nexthop::macs(fib.dmac, fib.smac);
        (*hop).stamp_ns = now;
    }
    Some(())
}
