//! Ethernet / IPv4 / TCP|UDP parsing with a bounds check before every access.
//!
//! Header structs use byte arrays only (alignment 1): packet data in XDP is at best 2-byte
//! aligned after the 14-byte Ethernet header, so typed `u32` fields would be misaligned reads.
//! Values that the maps store "in network byte order" are read with `from_ne_bytes`, which
//! keeps the wire bytes as they are.

use core::mem::offset_of;

use lb_common::{FlowKey, proto, stat};

use crate::{ctx::Ctx, wire};

/// Ethernet header length.
pub const ETH_HLEN: usize = 14;
/// IPv4 header length without options (the only shape the fast path handles).
pub const IPV4_HLEN: usize = 20;
/// Offset of the L4 header for an option-less IPv4 packet.
pub const L4_OFF: usize = ETH_HLEN + IPV4_HLEN;
/// EtherType of IPv4, as the wire bytes.
const ETH_P_IP: [u8; 2] = [0x08, 0x00];

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

/// A parsed option-less, unfragmented IPv4 TCP/UDP packet.
///
/// Invariant, relied on by every `unsafe` access through its pointers: they come from
/// [`ptr_at`] in [`parse`] (the only constructor), so each points into this run's frame with
/// the whole header it designates before `data_end` (the Ethernet header, the 20-byte IPv4
/// header, the L4 checksum field, the four port bytes), and no Rust reference to packet memory
/// exists. The headers are byte arrays, so no access needs alignment.
pub struct Packet {
    pub eth: *mut EthHdr,
    pub ip: *mut Ipv4Hdr,
    /// Pointer to the L4 checksum field (TCP offset 16, UDP offset 6).
    pub l4_check: *mut [u8; 2],
    /// Pointer to the L4 source port; the destination port follows it.
    pub ports: *mut [u8; 4],
    /// The 5-tuple as it is on the wire.
    pub key: FlowKey,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
    /// IPv4 total length, host order (the byte count the counters use).
    pub tot_len: u16,
}

impl Packet {
    /// A connection opener: SYN without ACK.
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.key.proto == proto::TCP && self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }
}

/// An IPv4 TCP/UDP packet the fast path does not handle (options or fragment). The
/// destination port is known when the L4 header is present (first fragment or options).
pub struct Irregular {
    pub dst: u32,
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

pub enum Parsed {
    /// Pass untouched, counting this stat index.
    Pass(u32),
    Irregular(Irregular),
    Packet(Packet),
    IcmpError(IcmpError),
}

#[inline(always)]
pub fn parse<C: Ctx>(ctx: &C) -> Parsed {
    let frame_len = ctx.len();
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Parsed::Pass(stat::PASS_MALFORMED);
    };
    // Every packet access below reads through a pointer from `ptr_at` for a type that covers
    // the bytes read, so they lie inside the frame; the headers are byte arrays (any
    // alignment, any bit pattern valid).
    // SAFETY: `eth` covers the 14-byte Ethernet header, the EtherType at 12..14.
    if unsafe { wire::load_u16(eth.cast::<u8>().add(offset_of!(EthHdr, ether_type))) }
        != u16::from_ne_bytes(ETH_P_IP)
    {
        return Parsed::Pass(stat::PASS_NOT_VIP);
    }
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

    let (l4_check, ports, tcp_flags, l4_min) = if l4_proto == proto::TCP {
        let Some(tcp) = ptr_at::<TcpHdr>(ctx, L4_OFF) else {
            return Parsed::Pass(stat::PASS_MALFORMED);
        };
        // SAFETY: `tcp` covers the 20-byte TCP header.
        let doff = unsafe { (*tcp).doff_res } >> 4;
        if doff < 5 || (tot_len as usize) < IPV4_HLEN + doff as usize * 4 {
            return Parsed::Pass(stat::PASS_MALFORMED);
        }
        // SAFETY: `tcp` covers the 20-byte TCP header (checksum at 16..18, flags at 13); taking
        // the field's address creates no reference.
        let (check, flags) = unsafe { (core::ptr::addr_of_mut!((*tcp).check), (*tcp).flags) };
        (check, tcp as *mut [u8; 4], flags, 20usize)
    } else {
        let Some(udp) = ptr_at::<UdpHdr>(ctx, L4_OFF) else {
            return Parsed::Pass(stat::PASS_MALFORMED);
        };
        // SAFETY: `udp` covers the 8-byte UDP header, length at 4..6.
        let ulen =
            u16::from_be(unsafe { wire::load_u16(udp.cast::<u8>().add(offset_of!(UdpHdr, len))) });
        if ulen < 8 {
            return Parsed::Pass(stat::PASS_MALFORMED);
        }
        // SAFETY: `udp` covers the UDP header; taking the checksum field's address (6..8)
        // creates no reference.
        let check = unsafe { core::ptr::addr_of_mut!((*udp).check) };
        (check, udp as *mut [u8; 4], 0u8, 8usize)
    };
    if (tot_len as usize) < IPV4_HLEN + l4_min {
        return Parsed::Pass(stat::PASS_MALFORMED);
    }
    let pb = ports.cast::<u8>();
    // SAFETY: `ports` is the start of the TCP or UDP header checked above, which covers the
    // source (0..2) and destination (2..4) ports.
    let (src_port, dst_port) = unsafe { (wire::load_u16(pb), wire::load_u16(pb.add(2))) };
    let key = FlowKey {
        src_addr: src,
        dst_addr: dst,
        src_port,
        dst_port,
        proto: l4_proto,
        _pad: [0, 0, 0],
    };
    Parsed::Packet(Packet {
        eth,
        ip,
        l4_check,
        ports,
        key,
        tcp_flags,
        tot_len,
    })
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
