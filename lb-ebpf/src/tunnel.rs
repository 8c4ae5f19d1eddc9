//! Tunnel forwarding, Katran's production mode: a packet to a tunnel service is sent to its
//! server inside an outer IP header, IPIP (protocol 4) for an IPv4 service and IP6IP6 (next
//! header 41) for an IPv6 one, so servers may sit in any L2 domain the host routes to. The
//! server decapsulates (an `ipip` or `ip6tnl` device), sees the packet as the client sent it
//! (client address, VIP, ports) and answers the client directly, as in DSR: a tunnel flow is
//! a DSR flow (`flow_flags::DSR | TUNNEL`) whose frames are encapsulated before the next hop.
//!
//! The outer header: source the host's configured tunnel source for the family
//! (`TUNNEL_SOURCE`, from `[agent] tunnel_source_ipv4` / `tunnel_source_ipv6`), destination
//! the server's address, TTL / hop limit 64. IPv4: DSCP/ECN and the identification copied
//! from the inner header, DF set when the inner packet has it (RFC 2003 3.1), a full header
//! checksum. IPv6: version, traffic class and flow label copied from the inner header, no
//! encapsulation-limit option. The inner packet is not changed at all (its TTL neither).
//!
//! The outer header is written in packet memory, never built on the stack (the program's
//! frame is near BPF's 512 bytes). An encapsulated frame larger than the egress interface's
//! MTU is dropped and counted (`stat::DROP_TUNNEL_TOO_BIG`, checked in `forward::dsr` by
//! `bpf_check_mtu`): the path to the servers must carry 20 (IPv4) or 40 (IPv6) bytes more
//! than clients send.

use lb_common::{Addr6, csum, tunnel_source};

use crate::{
    ctx::Ctx,
    family::{Family, V4, V6},
    forward::Hdrs,
    maps::TUNNEL_SOURCE,
    parse::{ETH_HLEN, EthHdr, IPV4_HLEN, IPV6_HLEN, ptr_at},
    wire,
};

/// IP protocol numbers of the outer header.
const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;
/// TTL / hop limit of the outer header (Katran's too).
const OUTER_TTL: u8 = 64;

/// What encapsulation needs of an address family.
pub trait Encap: Family {
    /// Length of the outer header (equal to the inner one: no options, no extension headers).
    const OUTER_LEN: usize;
    /// The TC helper's flag for this outer header.
    const TC_ENCAP: u64;
    /// Slot of this family's source in `TUNNEL_SOURCE`.
    const SOURCE_SLOT: u32;
    /// The outer protocol, as the FIB lookup is told.
    const OUTER_PROTO: u8;

    /// The configured source of this family, if any (an all-zero slot is none).
    fn source(slot: &Addr6) -> Option<Self::Addr>;

    /// Writes the outer header at `ip`, whose inner header follows at `ip + OUTER_LEN`.
    ///
    /// # Safety
    /// `ip .. ip + 2 * OUTER_LEN` must be bounds-checked packet bytes of this run's frame,
    /// reached only through raw pointers, the second half a whole inner header of this
    /// family.
    unsafe fn write_outer(ip: *mut u8, src: &Self::Addr, dst: &Self::Addr);
}

impl Encap for V4 {
    const OUTER_LEN: usize = IPV4_HLEN;
    const TC_ENCAP: u64 = aya_ebpf::bindings::BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 as u64;
    const SOURCE_SLOT: u32 = tunnel_source::V4;
    const OUTER_PROTO: u8 = IPPROTO_IPIP;

    #[inline(always)]
    fn source(slot: &Addr6) -> Option<u32> {
        (slot[0] != 0).then_some(slot[0])
    }

    #[inline(always)]
    unsafe fn write_outer(ip: *mut u8, src: &u32, dst: &u32) {
        // SAFETY: the caller's contract: both 20-byte headers are packet bytes.
        unsafe {
            let inner = ip.add(IPV4_HLEN);
            let len = u16::from_be(wire::load_u16(inner.add(2))).wrapping_add(IPV4_HLEN as u16);
            let len_be = len.to_be_bytes();
            let w0 = u32::from_ne_bytes([0x45, *inner.add(1), len_be[0], len_be[1]]);
            // Identification as the inner one; of the flags only DF.
            let w1 = wire::load_u32(inner.add(4)) & u32::from_ne_bytes([0xff, 0xff, 0x40, 0]);
            let w2 = u32::from_ne_bytes([OUTER_TTL, IPPROTO_IPIP, 0, 0]);
            let sum = csum::add_u32(csum::add_u32(csum::add_u32(0, w0), w1), w2);
            let check = !csum::fold(csum::add_u32(csum::add_u32(sum, *src), *dst));
            wire::store_u32(ip, w0);
            wire::store_u32(ip.add(4), w1);
            wire::store_u32(ip.add(8), w2);
            wire::store_u16(ip.add(10), check);
            wire::store_u32(ip.add(12), *src);
            wire::store_u32(ip.add(16), *dst);
        }
    }
}

impl Encap for V6 {
    const OUTER_LEN: usize = IPV6_HLEN;
    const TC_ENCAP: u64 = aya_ebpf::bindings::BPF_F_ADJ_ROOM_ENCAP_L3_IPV6 as u64;
    const SOURCE_SLOT: u32 = tunnel_source::V6;
    const OUTER_PROTO: u8 = IPPROTO_IPV6;

    #[inline(always)]
    fn source(slot: &Addr6) -> Option<Addr6> {
        (slot[0] | slot[1] | slot[2] | slot[3] != 0).then_some(*slot)
    }

    #[inline(always)]
    unsafe fn write_outer(ip: *mut u8, src: &Addr6, dst: &Addr6) {
        // SAFETY: the caller's contract: both 40-byte headers are packet bytes.
        unsafe {
            let inner = ip.add(IPV6_HLEN);
            // The inner payload plus its header is the outer payload.
            let payload = u16::from_be(wire::load_u16(inner.add(4))).wrapping_add(IPV6_HLEN as u16);
            let pl = payload.to_be_bytes();
            wire::store_u32(ip, wire::load_u32(inner));
            wire::store_u32(
                ip.add(4),
                u32::from_ne_bytes([pl[0], pl[1], IPPROTO_IPV6, OUTER_TTL]),
            );
            for i in 0..4 {
                wire::store_u32(ip.add(8 + 4 * i), src[i]);
                wire::store_u32(ip.add(24 + 4 * i), dst[i]);
            }
        }
    }
}

/// Encapsulates the frame (a parsed `Packet` of family `F`, whose pointers this
/// invalidates) toward `dst`, and returns its new headers for the next hop. None when it
/// cannot: no source configured for the family, no room; the frame must then be dropped (it
/// may have grown already).
#[inline(always)]
pub fn encap<C: Ctx, F: Encap>(ctx: &C, dst: &F::Addr) -> Option<Hdrs<F>> {
    let src = F::source(TUNNEL_SOURCE.get(F::SOURCE_SLOT)?)?;
    if !ctx.grow_for_encap(F::OUTER_LEN as u32, F::TC_ENCAP) {
        return None;
    }
    // Ethernet header, outer header, inner header: bounds-checked once, as one block.
    let front = match F::OUTER_LEN {
        IPV4_HLEN => ptr_at::<[u8; ETH_HLEN + 2 * IPV4_HLEN]>(ctx, 0)?.cast::<u8>(),
        _ => ptr_at::<[u8; ETH_HLEN + 2 * IPV6_HLEN]>(ctx, 0)?.cast::<u8>(),
    };
    // SAFETY: `front` covers the Ethernet header and both IP headers (checked just above, as
    // the match arm for this family's length), reached only through raw pointers. At XDP the
    // old Ethernet header now starts OUTER_LEN bytes in, within the checked block.
    unsafe {
        if !C::ROOM_AFTER_MAC {
            let old = front.add(F::OUTER_LEN);
            wire::store_u32(front, wire::load_u32(old));
            wire::store_u32(front.add(4), wire::load_u32(old.add(4)));
            wire::store_u32(front.add(8), wire::load_u32(old.add(8)));
            wire::store_u16(front.add(12), wire::load_u16(old.add(12)));
        }
        F::write_outer(front.add(ETH_HLEN), &src, dst);
    }
    Some(Hdrs {
        eth: front.cast::<EthHdr>(),
        ip: front.wrapping_add(ETH_HLEN).cast::<F::Hdr>(),
        proto: F::OUTER_PROTO,
        ports: None,
        // No MTU check by the FIB: its answer is cached for later packets, which it would
        // not see; `bpf_check_mtu` checks every encapsulated frame instead.
        tot_len: 0,
    })
}
