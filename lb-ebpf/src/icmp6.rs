//! ICMPv6 errors about IPv6 NAT flows, translated as `icmp.rs` translates ICMP ones for IPv4:
//! destination unreachable and packet too big (so path-MTU discovery works through latch;
//! IPv6 routers never fragment). To the client, an error about a packet latch sent to a
//! backend gets the VIP and port back in its quoted packet and the VIP as its source; to a
//! backend, an error about a reply gets the backend's address and port.
//!
//! Checksums: IPv6 headers have none; the quoted TCP/UDP checksum follows its quoted address
//! and port (when quoted); the ICMPv6 checksum covers every changed quoted word and, unlike
//! ICMP's, the outer addresses through its pseudo-header (RFC 4443 2.3), so the outer address
//! rewrite is in it too. All incremental: the quote is usually cut short.

use aya_ebpf::bindings::xdp_action;
use lb_common::{Addr6, FlowKey6, csum, proto, stat};

use crate::{
    conntrack,
    ctx::Ctx,
    family::{Family, V6, load6},
    forward::{self, Hdrs},
    maps,
    parse::{Icmp6Error, Ipv6Hdr, NEXTHDR_ICMPV6},
    stats,
    wire::{self, load_check, store_check},
};

/// Translates an ICMPv6 error about a NAT flow, or passes it (counted as not ours).
///
/// The lookup key lives in this CPU's [`maps::SCRATCH`] entry rather than on the stack: its
/// 128-bit addresses, held across the map lookups (helper calls clobber all but four
/// registers), were spilled word by word, and this path's frame was 496 bytes, over BPF's
/// 512 with the dispatcher's; 328 with the key in SCRATCH.
#[inline(always)]
pub fn translate<C: Ctx>(ctx: &C, e: &Icmp6Error, now: u64) -> u32 {
    let Some(scratch) = maps::SCRATCH.get_ptr_mut(0) else {
        return not_ours();
    };
    // SAFETY: this CPU's only SCRATCH entry: a valid, aligned map value that nothing else
    // uses while the program runs (per-CPU, and a run is not interleaved with another on
    // its CPU, as NEXT_HOPS also assumes). It is plain memory, not packet memory, so a
    // reference to it is fine.
    let key = unsafe { &mut (*scratch).flow6 };
    let ip = e.ip.cast::<u8>();
    let inner = e.inner_ip.cast::<u8>();
    let ports = e.inner_ports.cast::<u8>();
    // The tuple of the packet the quoted one belongs with, seen from the other end (as in
    // `icmp::translate`).
    // SAFETY: `Icmp6Error`'s invariant: whole outer and quoted IPv6 headers (hop limit at 7,
    // addresses at 8..40) and the four quoted port bytes are bounds-checked packet memory.
    let (hop_limit, to_sender) = unsafe {
        key.src_addr = load6(inner.add(DST));
        key.dst_addr = load6(inner.add(SRC));
        key.src_port = wire::load_u16(ports.add(2));
        key.dst_port = wire::load_u16(ports);
        key.proto = e.inner_proto;
        key._pad = [0, 0, 0];
        (
            V6::hop_limit(e.ip),
            V6::same(&load6(ip.add(DST)), &key.dst_addr),
        )
    };
    // The error goes to the quoted packet's sender; anything else is not about our flows.
    if hop_limit <= 1 || !to_sender {
        return not_ours();
    }
    let key: &FlowKey6 = key;
    if conntrack::maybe_reply::<V6>(key)
        && let Some((vip, vport)) = conntrack::lookup_reply::<V6>(key)
    {
        // To the client: the quoted destination (the backend) becomes the VIP again.
        let sum = rewrite_inner(e, false, (&key.src_addr, &vip), (key.src_port, vport));
        set_outer(e, true, &vip, sum);
        stats::count(stat::ICMP_TO_CLIENT);
        return forward::out(ctx, &hdrs(e), key.dst_addr, true, now);
    }
    if let Some(be) = conntrack::nat_flow_backend::<V6>(key) {
        // To the backend: the quoted source (the VIP) becomes the backend.
        let sum = rewrite_inner(e, true, (&key.dst_addr, &be.addr), (key.dst_port, be.port));
        set_outer(e, false, &be.addr, sum);
        stats::count(stat::ICMP_TO_BACKEND);
        return forward::out(ctx, &hdrs(e), be.addr, true, now);
    }
    not_ours()
}

/// Offsets of the source and destination addresses in an IPv6 header.
const SRC: usize = core::mem::offset_of!(Ipv6Hdr, src);
const DST: usize = core::mem::offset_of!(Ipv6Hdr, dst);

#[inline(always)]
fn not_ours() -> u32 {
    stats::count(stat::PASS_NOT_VIP);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn hdrs(e: &Icmp6Error) -> Hdrs<V6> {
    Hdrs {
        eth: e.eth,
        ip: e.ip,
        proto: NEXTHDR_ICMPV6,
        ports: None,
        tot_len: e.tot_len,
    }
}

/// `sum` after the 128-bit address `old` became `new`.
#[inline(always)]
fn replace16(mut sum: u16, old: &Addr6, new: &Addr6) -> u16 {
    for i in 0..4 {
        sum = csum::replace4(sum, old[i], new[i]);
    }
    sum
}

/// Rewrites one outer address (the source with `src`) to `new` and stores the ICMPv6
/// checksum `sum` adjusted for it (the pseudo-header covers it).
#[inline(always)]
fn set_outer(e: &Icmp6Error, src: bool, new: &Addr6, sum: u16) {
    let field = if src { SRC } else { DST };
    // SAFETY: `Icmp6Error`'s invariant: the outer IPv6 header and the ICMPv6 checksum field
    // are bounds-checked packet memory reached only through raw pointers.
    unsafe {
        let old = load6(e.ip.cast::<u8>().add(field));
        V6::set_addr(e.ip, src, &old, new);
        store_check(e.icmp_check, replace16(sum, &old, new));
    }
}

/// Rewrites the quoted packet's source (`src`) or destination address and port, and the
/// quoted TCP/UDP checksum; returns the ICMPv6 checksum adjusted for every changed quoted
/// word (not yet stored).
#[inline(always)]
fn rewrite_inner(e: &Icmp6Error, src: bool, addr: (&Addr6, &Addr6), port: (u16, u16)) -> u16 {
    let (addr_off, port_off) = if src { (SRC, 0) } else { (DST, 2) };
    let p = e.inner_ip.cast::<u8>();
    // SAFETY: `Icmp6Error`'s invariant: the quoted IPv6 header (addresses at 8..40), the four
    // quoted port bytes and the ICMPv6 checksum field are bounds-checked packet memory,
    // reached only through raw pointers.
    let mut icmp_sum = unsafe {
        let a = p.add(addr_off);
        wire::store_u32(a, addr.1[0]);
        wire::store_u32(a.add(4), addr.1[1]);
        wire::store_u32(a.add(8), addr.1[2]);
        wire::store_u32(a.add(12), addr.1[3]);
        wire::store_u16(e.inner_ports.cast::<u8>().add(port_off), port.1);
        load_check(e.icmp_check)
    };
    icmp_sum = replace16(icmp_sum, addr.0, addr.1);
    icmp_sum = csum::replace2(icmp_sum, port.0, port.1);
    if let Some(l4_check) = e.inner_l4_check {
        // SAFETY: as above, the quoted checksum field.
        let old = unsafe { load_check(l4_check) };
        if let Some(new) = csum::replace_addr6_port(
            old,
            e.inner_proto == proto::UDP,
            addr.0,
            addr.1,
            port.0,
            port.1,
        ) {
            // SAFETY: as above.
            unsafe { store_check(l4_check, new) };
            icmp_sum = csum::replace2(icmp_sum, old, new);
        }
    }
    icmp_sum
}
