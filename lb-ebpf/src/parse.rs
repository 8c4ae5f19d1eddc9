//! Ethernet / IPv4 or IPv6 / TCP|UDP parsing with a bounds check before every access.
//!
//! Header structs use byte arrays only (alignment 1): packet data in XDP is at best 2-byte
//! aligned after the 14-byte Ethernet header, so typed `u32` fields would be misaligned reads.
//! Values that the maps store "in network byte order" are read with `from_ne_bytes`, which
//! keeps the wire bytes as they are.

use core::mem::offset_of;

use lb_common::{Addr6, FlowKey, FlowKeyOf, proto, stat};

use crate::{
    ctx::Ctx,
    family::{Family, V4, V6, l3_len6, load6},
    wire,
};

/// Ethernet header length.
pub const ETH_HLEN: usize = 14;
/// IPv4 header length without options (the only shape the fast path handles).
pub const IPV4_HLEN: usize = 20;
/// Offset of the L4 header for an option-less IPv4 packet.
pub const L4_OFF: usize = ETH_HLEN + IPV4_HLEN;
/// EtherType of IPv4, as the wire bytes.
const ETH_P_IP: [u8; 2] = [0x08, 0x00];
/// EtherType of IPv6, as the wire bytes.
const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];
/// IPv6 header length (extension headers are separate headers).
pub const IPV6_HLEN: usize = 40;
/// Offset of the L4 header for an IPv6 packet without extension headers.
pub const L4_OFF6: usize = ETH_HLEN + IPV6_HLEN;
/// ICMPv6: destination unreachable and packet too big quoting a TCP/UDP packet may be about
/// a NAT flow (`icmp6.rs`); every other ICMPv6 packet (neighbour discovery above all) goes to
/// the stack.
pub const NEXTHDR_ICMPV6: u8 = 58;
/// ICMPv6 destination unreachable.
const ICMPV6_DEST_UNREACH: u8 = 1;
/// ICMPv6 packet too big.
const ICMPV6_PKT_TOOBIG: u8 = 2;
/// Offset of the IPv6 header an ICMPv6 error quotes (outer header without extensions).
const INNER6_IP_OFF: usize = L4_OFF6 + 8;
/// Offset of the quoted packet's TCP or UDP header.
const INNER6_L4_OFF: usize = INNER6_IP_OFF + IPV6_HLEN;
/// Most extension headers walked to find a VIP port for the counters.
const EXT_HEADERS: usize = 4;

/// TCP flag bits (byte 13 of the TCP header).
pub const TCP_SYN: u8 = 0x02;
/// TCP ACK flag.
pub const TCP_ACK: u8 = 0x10;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type: [u8; 2],
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

#[repr(C)]
pub struct Ipv6Hdr {
    pub vtc_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub nexthdr: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

#[repr(C)]
pub struct TcpHdr {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub seq: [u8; 4],
    pub ack: [u8; 4],
    pub doff_res: u8,
    pub flags: u8,
    pub window: [u8; 2],
    pub check: [u8; 2],
    pub urg: [u8; 2],
}

/// An ICMP header: type, code, checksum, and the four type-specific bytes (the next-hop MTU
/// of "fragmentation needed").
#[repr(C)]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    pub check: [u8; 2],
    pub rest: [u8; 4],
}

/// ICMP destination unreachable (fragmentation needed, port unreachable, ...).
pub const ICMP_DEST_UNREACH: u8 = 3;
/// Offset of the IPv4 header an ICMP error quotes (outer header without options).
const INNER_IP_OFF: usize = L4_OFF + 8;
/// Offset of the quoted packet's TCP or UDP header (inner header without options).
const INNER_L4_OFF: usize = INNER_IP_OFF + IPV4_HLEN;

#[repr(C)]
pub struct UdpHdr {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub len: [u8; 2],
    pub check: [u8; 2],
}

/// A bounds-checked pointer to a `T` at `off` bytes into the frame.
#[inline(always)]
pub fn ptr_at<T>(ctx: &impl Ctx, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

/// A parsed TCP/UDP packet: IPv4 without options, unfragmented, or IPv6 without extension
/// headers.
///
/// Invariant, relied on by every `unsafe` access through its pointers: they come from
/// [`ptr_at`] in [`parse`] (the only constructor), so each points into this run's frame with
/// the whole header it designates before `data_end` (the Ethernet header, the 20-byte IPv4
/// or 40-byte IPv6 header, the L4 checksum field, the four port bytes), and no Rust
/// reference to packet memory exists. The headers are byte arrays, so no access needs
/// alignment.
pub struct Packet<F: Family> {
    pub eth: *mut EthHdr,
    pub ip: *mut F::Hdr,
    /// Pointer to the L4 checksum field (TCP offset 16, UDP offset 6).
    pub l4_check: *mut [u8; 2],
    /// Pointer to the L4 source port; the destination port follows it.
    pub ports: *mut [u8; 4],
    /// The 5-tuple as it is on the wire.
    pub key: FlowKeyOf<F::Addr>,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
    /// L3 length, host order (the byte count the counters use): IPv4 total length, IPv6
    /// payload length plus its header.
    pub tot_len: u16,
}

impl<F: Family> Packet<F> {
    /// A connection opener: SYN without ACK.
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.key.proto == proto::TCP && self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }
}

/// A TCP/UDP packet the fast path does not handle (IPv4 options or fragment, IPv6 extension
/// headers). The destination port is known when the L4 header was found (first fragment,
/// options, extension headers walked).
pub struct Irregular<A> {
    pub dst: A,
    pub dport: Option<u16>,
    pub proto: u8,
}

/// An ICMP destination unreachable whose quoted packet is an option-less IPv4 TCP or UDP
/// packet with at least its ports: a candidate error about a NAT flow.
///
/// Invariant, as for [`Packet`]: every pointer comes from [`ptr_at`] in [`parse`], covers the
/// field it designates inside this run's frame and within the outer IPv4 total length, and no
/// Rust reference to packet memory exists. Outer and inner headers have no options, so all
/// offsets are constants.
pub struct IcmpError {
    pub eth: *mut EthHdr,
    pub ip: *mut Ipv4Hdr,
    /// The ICMP checksum field.
    pub icmp_check: *mut [u8; 2],
    /// The quoted IPv4 header.
    pub inner_ip: *mut Ipv4Hdr,
    /// The quoted packet's source and destination ports.
    pub inner_ports: *mut [u8; 4],
    /// The quoted TCP or UDP checksum field, when the error quotes it (always for UDP; for
    /// TCP only with 18 bytes of its header).
    pub inner_l4_check: Option<*mut [u8; 2]>,
    /// The quoted packet's 5-tuple as it is on the wire.
    pub inner: FlowKey,
    /// Outer IPv4 total length, host order.
    pub tot_len: u16,
}

/// An ICMPv6 destination unreachable or packet too big whose quoted packet is an IPv6 TCP or
/// UDP packet without extension headers, with at least its ports: a candidate error about a
/// NAT flow.
///
/// Invariant, as for [`IcmpError`]: every pointer comes from [`ptr_at`] in [`parse_icmp6`],
/// covers the field it designates inside this run's frame and within the outer payload length, and
/// no Rust reference to packet memory exists. All offsets are constants.
pub struct Icmp6Error {
    pub eth: *mut EthHdr,
    pub ip: *mut Ipv6Hdr,
    /// The ICMPv6 checksum field.
    pub icmp_check: *mut [u8; 2],
    /// The quoted IPv6 header.
    pub inner_ip: *mut Ipv6Hdr,
    /// The quoted packet's source and destination ports.
    pub inner_ports: *mut [u8; 4],
    /// The quoted TCP or UDP checksum field, when quoted (always for UDP; for TCP with 18
    /// bytes of its header).
    pub inner_l4_check: Option<*mut [u8; 2]>,
    /// The quoted packet's protocol (TCP or UDP).
    pub inner_proto: u8,
    /// L3 length of the outer packet.
    pub tot_len: u16,
}

/// What an IPv4 frame is to the program.
pub enum Parsed {
    /// Pass untouched, counting this stat index.
    Pass(u32),
    Irregular(Irregular<u32>),
    Packet(Packet<V4>),
    IcmpError(IcmpError),
}

/// An IPv6 frame that is not a [`Packet`]: no packet pointers in it (see [`parse6`]).
pub enum Other6 {
    /// Pass untouched, counting this stat index.
    Pass(u32),
    Irregular(Irregular<Addr6>),
}

/// The network layer of a frame, from its EtherType.
pub enum L3 {
    Ipv4,
    /// IPv6 other than ICMPv6 (or too short to tell).
    Ipv6,
    /// ICMPv6: an error about a NAT flow is translated, anything else passed.
    Icmp6,
    /// Pass untouched, counting this stat index.
    Pass(u32),
}

/// The frame's EtherType: which family's parser and path take it.
#[inline(always)]
pub fn l3<C: Ctx>(ctx: &C) -> L3 {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return L3::Pass(stat::PASS_MALFORMED);
    };
    // SAFETY: `eth` covers the 14-byte Ethernet header, the EtherType at 12..14.
    let ether_type =
        unsafe { wire::load_u16(eth.cast::<u8>().add(offset_of!(EthHdr, ether_type))) };
    if ether_type == u16::from_ne_bytes(ETH_P_IP) {
        L3::Ipv4
    } else if ether_type == u16::from_ne_bytes(ETH_P_IPV6) {
        // SAFETY: `ip` covers the 40-byte IPv6 header, next header at 6.
        match ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN).map(|ip| unsafe { (*ip).nexthdr }) {
            Some(NEXTHDR_ICMPV6) => L3::Icmp6,
            _ => L3::Ipv6,
        }
    } else {
        L3::Pass(stat::PASS_NOT_VIP)
    }
}

/// An IPv4 frame ([`l3`] said so).
#[inline(always)]
pub fn parse4<C: Ctx>(ctx: &C) -> Parsed {
    let frame_len = ctx.len();
    // Every packet access below reads through a pointer from `ptr_at` for a type that covers
    // the bytes read, so they lie inside the frame; the headers are byte arrays (any
    // alignment, any bit pattern valid).
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Parsed::Pass(stat::PASS_MALFORMED);
    };
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) else {
        return Parsed::Pass(stat::PASS_MALFORMED);
    };
    let ipb = ip.cast::<u8>();
    // SAFETY: `ip` covers the 20-byte IPv4 header.
    let vihl = unsafe { (*ip).version_ihl };
    let ihl = (vihl & 0x0f) as usize;
    if vihl >> 4 != 4 || ihl < 5 {
        return Parsed::Pass(stat::PASS_MALFORMED);
    }
    // SAFETY: `ip` covers the 20-byte IPv4 header, total length at 2..4.
    let tot_len = u16::from_be(unsafe { wire::load_u16(ipb.add(offset_of!(Ipv4Hdr, tot_len))) });
    let ip_room = frame_len - ETH_HLEN;
    if (tot_len as usize) < ihl * 4 || tot_len as usize > ip_room {
        return Parsed::Pass(stat::PASS_MALFORMED);
    }
    // SAFETY: `ip` covers the 20-byte IPv4 header.
    let l4_proto = unsafe { (*ip).proto };
    if l4_proto == proto::ICMP {
        return icmp_error(ctx, eth, ip, ihl, tot_len);
    }
    if l4_proto != proto::TCP && l4_proto != proto::UDP {
        return Parsed::Pass(stat::PASS_NOT_VIP);
    }
    // SAFETY: `ip` covers the 20-byte IPv4 header, source address at 12..16.
    let src = unsafe { wire::load_u32(ipb.add(offset_of!(Ipv4Hdr, src))) };
    // SAFETY: `ip` covers the 20-byte IPv4 header, destination address at 16..20.
    let dst = unsafe { wire::load_u32(ipb.add(offset_of!(Ipv4Hdr, dst))) };
    // SAFETY: `ip` covers the 20-byte IPv4 header, fragment field at 6..8.
    let frag = u16::from_be(unsafe { wire::load_u16(ipb.add(offset_of!(Ipv4Hdr, frag_off))) });
    // MF bit or a non-zero fragment offset; DF (0x4000) is fine.
    let more_fragments = frag & 0x2000 != 0;
    let frag_offset = frag & 0x1fff;
    if ihl != 5 || more_fragments || frag_offset != 0 {
        let mut dport = None;
        if frag_offset == 0 {
            // ihl is 5..=15, so the offset is bounded for the verifier.
            let off = ETH_HLEN + (ihl & 0x0f) * 4;
            if let Some(p) = ptr_at::<[u8; 4]>(ctx, off) {
                // SAFETY: `p` covers the four port bytes, destination port at 2..4.
                dport = Some(unsafe { wire::load_u16(p.cast::<u8>().add(2)) });
            }
        }
        return Parsed::Irregular(Irregular {
            dst,
            dport,
            proto: l4_proto,
        });
    }

    match transport::<C, V4>(
        ctx,
        eth,
        ip,
        l4_proto,
        tot_len as usize - IPV4_HLEN,
        src,
        dst,
    ) {
        Some(mut pkt) => {
            pkt.tot_len = tot_len;
            Parsed::Packet(pkt)
        }
        None => Parsed::Pass(stat::PASS_MALFORMED),
    }
}

/// The TCP or UDP header at `F::L4_OFF`, `l4_len` bytes of L4 data by the IP header: a
/// [`Packet`] (its `tot_len` still to be set), or None for a malformed one.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn transport<C: Ctx, F: Family>(
    ctx: &C,
    eth: *mut EthHdr,
    ip: *mut F::Hdr,
    l4_proto: u8,
    l4_len: usize,
    src: F::Addr,
    dst: F::Addr,
) -> Option<Packet<F>> {
    let (l4_check, ports, tcp_flags, l4_min) = if l4_proto == proto::TCP {
        let tcp = ptr_at::<TcpHdr>(ctx, F::L4_OFF)?;
        // SAFETY: `tcp` covers the 20-byte TCP header.
        let doff = unsafe { (*tcp).doff_res } >> 4;
        if doff < 5 || l4_len < doff as usize * 4 {
            return None;
        }
        // SAFETY: `tcp` covers the 20-byte TCP header (checksum at 16..18, flags at 13); taking
        // the field's address creates no reference.
        let (check, flags) = unsafe { (core::ptr::addr_of_mut!((*tcp).check), (*tcp).flags) };
        (check, tcp as *mut [u8; 4], flags, 20usize)
    } else {
        let udp = ptr_at::<UdpHdr>(ctx, F::L4_OFF)?;
        // SAFETY: `udp` covers the 8-byte UDP header, length at 4..6.
        let ulen =
            u16::from_be(unsafe { wire::load_u16(udp.cast::<u8>().add(offset_of!(UdpHdr, len))) });
        if ulen < 8 {
            return None;
        }
        // SAFETY: `udp` covers the UDP header; taking the checksum field's address (6..8)
        // creates no reference.
        let check = unsafe { core::ptr::addr_of_mut!((*udp).check) };
        (check, udp as *mut [u8; 4], 0u8, 8usize)
    };
    if l4_len < l4_min {
        return None;
    }
    let pb = ports.cast::<u8>();
    // SAFETY: `ports` is the start of the TCP or UDP header checked above, which covers the
    // source (0..2) and destination (2..4) ports.
    let (src_port, dst_port) = unsafe { (wire::load_u16(pb), wire::load_u16(pb.add(2))) };
    let key = FlowKeyOf {
        src_addr: src,
        dst_addr: dst,
        src_port,
        dst_port,
        proto: l4_proto,
        _pad: [0, 0, 0],
    };
    Some(Packet {
        eth,
        ip,
        l4_check,
        ports,
        key,
        tcp_flags,
        tot_len: 0,
    })
}

/// Extension header numbers: hop-by-hop options, routing, fragment, destination options.
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_DEST: u8 = 60;
/// Other extension headers (AH, mobility, HIP, shim6, experimental): the packet is passed
/// without looking further.
const NEXTHDR_OTHER_EXT: [u8; 6] = [51, 135, 139, 140, 253, 254];

/// An IPv6 packet. Only TCP/UDP right after the fixed header is forwarded. Extension headers
/// are never taken for TCP/UDP: such a packet goes to the stack, counted as irregular when it
/// is TCP/UDP (the first few extension headers are walked to find its port for that count).
/// ESP, ICMPv6 (neighbour discovery) and anything else go to the stack as not ours.
///
/// The frame is handed to `packet` or `other` at each exit rather than returned as one enum:
/// LLVM merges the variants of such an enum into shared integer slots and then extracts a
/// small field by shifting the 64-bit slot that holds a packet pointer in the other
/// variant, which the verifier refuses ("pointer arithmetic with >>= operator prohibited").
#[inline(always)]
pub fn parse6<C: Ctx>(
    ctx: &C,
    packet: impl FnOnce(&Packet<V6>) -> u32,
    other: impl FnOnce(Other6) -> u32,
) -> u32 {
    let Some((eth, ip, payload, nexthdr)) = ipv6(ctx) else {
        return other(Other6::Pass(stat::PASS_MALFORMED));
    };
    let ipb = ip.cast::<u8>();
    // SAFETY: `ip` covers the 40-byte IPv6 header, addresses at 8..40.
    let (src, dst) = unsafe {
        (
            load6(ipb.add(offset_of!(Ipv6Hdr, src))),
            load6(ipb.add(offset_of!(Ipv6Hdr, dst))),
        )
    };
    if nexthdr == proto::TCP || nexthdr == proto::UDP {
        return match transport::<C, V6>(ctx, eth, ip, nexthdr, payload as usize, src, dst) {
            Some(mut pkt) => {
                pkt.tot_len = l3_len6(payload);
                packet(&pkt)
            }
            None => other(Other6::Pass(stat::PASS_MALFORMED)),
        };
    }
    if nexthdr == NEXTHDR_ICMPV6 {
        // `l3` sends ICMPv6 to `parse_icmp6`: not reached.
        return other(Other6::Pass(stat::PASS_NOT_VIP));
    }
    other(ext_headers(ctx, nexthdr, dst))
}

/// The fixed IPv6 header, checked: the Ethernet and IPv6 headers, the payload length (host
/// order) and the next header. None for a malformed packet.
#[inline(always)]
fn ipv6<C: Ctx>(ctx: &C) -> Option<(*mut EthHdr, *mut Ipv6Hdr, u16, u8)> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    let ip = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN)?;
    // SAFETY: `ip` covers the 40-byte IPv6 header: version in byte 0, payload length at 4..6,
    // next header at 6.
    let (version, payload, nexthdr) = unsafe {
        (
            (*ip).vtc_flow[0] >> 4,
            u16::from_be(wire::load_u16(
                ip.cast::<u8>().add(offset_of!(Ipv6Hdr, payload_len)),
            )),
            (*ip).nexthdr,
        )
    };
    // A zero payload length with a hop-by-hop header is a jumbogram: malformed here too.
    if version != 6 || payload as usize > ctx.len() - L4_OFF6 {
        return None;
    }
    Some((eth, ip, payload, nexthdr))
}

/// An ICMPv6 frame ([`l3`] said so): an [`Icmp6Error`], or the counter of a frame to pass.
#[inline(always)]
pub fn parse_icmp6<C: Ctx>(ctx: &C) -> Result<Icmp6Error, u32> {
    match ipv6(ctx) {
        Some((eth, ip, payload, _)) => icmp6_error(ctx, eth, ip, payload),
        None => Err(stat::PASS_MALFORMED),
    }
}

/// An ICMPv6 packet: an [`Icmp6Error`] when it is a destination unreachable or packet too big
/// quoting a TCP or UDP packet latch may have sent; anything else passes untouched.
#[inline(always)]
fn icmp6_error<C: Ctx>(
    ctx: &C,
    eth: *mut EthHdr,
    ip: *mut Ipv6Hdr,
    payload: u16,
) -> Result<Icmp6Error, u32> {
    let not_ours = Err(stat::PASS_NOT_VIP);
    if (payload as usize) < 8 + IPV6_HLEN + 8 {
        return not_ours;
    }
    let (Some(icmp), Some(inner_ip), Some(inner_ports)) = (
        ptr_at::<IcmpHdr>(ctx, L4_OFF6),
        ptr_at::<Ipv6Hdr>(ctx, INNER6_IP_OFF),
        ptr_at::<[u8; 8]>(ctx, INNER6_L4_OFF),
    ) else {
        return not_ours;
    };
    // SAFETY: `icmp` covers the 8-byte ICMPv6 header, `inner_ip` the 40-byte quoted IPv6
    // header, both checked above.
    let (kind, version, inner_proto) = unsafe {
        (
            (*icmp).kind,
            (*inner_ip).vtc_flow[0] >> 4,
            (*inner_ip).nexthdr,
        )
    };
    if (kind != ICMPV6_DEST_UNREACH && kind != ICMPV6_PKT_TOOBIG)
        || version != 6
        || (inner_proto != proto::TCP && inner_proto != proto::UDP)
    {
        return not_ours;
    }
    let pb = inner_ports.cast::<u8>();
    let inner_l4_check = if inner_proto == proto::UDP {
        // SAFETY: the UDP checksum is at 6..8 of the 8 quoted bytes.
        Some(unsafe { pb.add(6) }.cast::<[u8; 2]>())
    } else if payload as usize >= 8 + IPV6_HLEN + 18 {
        ptr_at::<[u8; 2]>(ctx, INNER6_L4_OFF + 16)
    } else {
        None
    };
    Ok(Icmp6Error {
        eth,
        ip,
        // SAFETY: `icmp` covers the ICMPv6 header; taking the field's address creates no
        // reference.
        icmp_check: unsafe { core::ptr::addr_of_mut!((*icmp).check) },
        inner_ip,
        inner_ports: inner_ports.cast::<[u8; 4]>(),
        inner_l4_check,
        inner_proto,
        tot_len: l3_len6(payload),
    })
}

/// Walks up to [`EXT_HEADERS`] extension headers from the fixed header, only to count the
/// packet: irregular when it carries TCP/UDP (with its port when found: a later fragment has
/// none), not ours otherwise.
#[inline(always)]
fn ext_headers<C: Ctx>(ctx: &C, first: u8, dst: Addr6) -> Other6 {
    let irregular = |dport, proto| Other6::Irregular(Irregular { dst, dport, proto });
    let mut nh = first;
    let mut off = L4_OFF6;
    for _ in 0..EXT_HEADERS {
        if nh == proto::TCP || nh == proto::UDP {
            let Some(p) = ptr_at::<[u8; 4]>(ctx, off) else {
                return irregular(None, nh);
            };
            // SAFETY: `p` covers the four port bytes, destination port at 2..4.
            return irregular(Some(unsafe { wire::load_u16(p.cast::<u8>().add(2)) }), nh);
        }
        let Some(h) = ptr_at::<[u8; 4]>(ctx, off) else {
            return irregular(None, nh);
        };
        // SAFETY: `h` covers the first four bytes of the extension header: next header,
        // length (or reserved), and for a fragment header its offset at 2..4.
        let (next, len, frag) = unsafe {
            (
                (*h)[0],
                (*h)[1],
                u16::from_be(wire::load_u16(h.cast::<u8>().add(2))),
            )
        };
        match nh {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => off += (len as usize + 1) * 8,
            NEXTHDR_FRAGMENT => {
                if frag >> 3 != 0 {
                    // A later fragment: no L4 header in it.
                    return irregular(None, next);
                }
                off += 8;
            }
            _ if NEXTHDR_OTHER_EXT.contains(&nh) => return irregular(None, nh),
            _ => return Other6::Pass(stat::PASS_NOT_VIP),
        }
        nh = next;
        // Keeps the offset bounded for the verifier: five headers of at most 2 KiB each.
        if off > 4096 {
            return irregular(None, nh);
        }
    }
    irregular(None, nh)
}

/// An ICMP packet: an [`IcmpError`] when it is a destination unreachable quoting a TCP or UDP
/// packet latch may have sent; anything else passes untouched, as every ICMP packet did before.
#[inline(always)]
fn icmp_error<C: Ctx>(
    ctx: &C,
    eth: *mut EthHdr,
    ip: *mut Ipv4Hdr,
    ihl: usize,
    tot_len: u16,
) -> Parsed {
    let not_ours = Parsed::Pass(stat::PASS_NOT_VIP);
    // SAFETY: `ip` covers the 20-byte IPv4 header, fragment field at 6..8.
    let frag = unsafe { wire::load_u16(ip.cast::<u8>().add(offset_of!(Ipv4Hdr, frag_off))) };
    // MF or an offset (the mask is in wire order: 0x3fff of the host-order field).
    if ihl != 5 || frag & u16::from_ne_bytes([0x3f, 0xff]) != 0 {
        return not_ours;
    }
    if (tot_len as usize) < IPV4_HLEN + 8 + IPV4_HLEN + 8 {
        return not_ours;
    }
    let (Some(icmp), Some(inner_ip), Some(inner_ports)) = (
        ptr_at::<IcmpHdr>(ctx, L4_OFF),
        ptr_at::<Ipv4Hdr>(ctx, INNER_IP_OFF),
        ptr_at::<[u8; 8]>(ctx, INNER_L4_OFF),
    ) else {
        return not_ours;
    };
    // SAFETY: `icmp` covers the 8-byte ICMP header, `inner_ip` the 20-byte quoted IPv4 header
    // and `inner_ports` the first 8 bytes of the quoted L4 header, all checked above.
    let (kind, vihl, inner_proto, inner_frag) = unsafe {
        (
            (*icmp).kind,
            (*inner_ip).version_ihl,
            (*inner_ip).proto,
            wire::load_u16(inner_ip.cast::<u8>().add(offset_of!(Ipv4Hdr, frag_off))),
        )
    };
    // A later fragment quotes no ports; a quoted header with options puts them elsewhere.
    if kind != ICMP_DEST_UNREACH
        || vihl != 0x45
        || (inner_proto != proto::TCP && inner_proto != proto::UDP)
        || inner_frag & u16::from_ne_bytes([0x1f, 0xff]) != 0
    {
        return not_ours;
    }
    let ib = inner_ip.cast::<u8>();
    let pb = inner_ports.cast::<u8>();
    // SAFETY: as above: addresses at 12..20 of the quoted IPv4 header, ports at 0..4 of the
    // quoted L4 header.
    let inner = unsafe {
        FlowKey {
            src_addr: wire::load_u32(ib.add(offset_of!(Ipv4Hdr, src))),
            dst_addr: wire::load_u32(ib.add(offset_of!(Ipv4Hdr, dst))),
            src_port: wire::load_u16(pb),
            dst_port: wire::load_u16(pb.add(2)),
            proto: inner_proto,
            _pad: [0, 0, 0],
        }
    };
    let inner_l4_check = if inner_proto == proto::UDP {
        // SAFETY: the UDP checksum is at 6..8 of the 8 quoted bytes.
        Some(unsafe { pb.add(6) }.cast::<[u8; 2]>())
    } else if tot_len as usize >= IPV4_HLEN + 8 + IPV4_HLEN + 18 {
        ptr_at::<[u8; 2]>(ctx, INNER_L4_OFF + 16)
    } else {
        None
    };
    Parsed::IcmpError(IcmpError {
        eth,
        ip,
        // SAFETY: `icmp` covers the ICMP header; taking the field's address creates no
        // reference.
        icmp_check: unsafe { core::ptr::addr_of_mut!((*icmp).check) },
        inner_ip,
        inner_ports: inner_ports.cast::<[u8; 4]>(),
        inner_l4_check,
        inner,
        tot_len,
    })
}
