//! IPv6 fixtures: the same program paths as the IPv4 rows (NAT, DSR, conntrack, replies,
//! persistence by prefix) with exact output bytes, and the packets IPv6 adds (extension
//! headers, ICMPv6), which must be passed untouched and never read as TCP/UDP. Frames are
//! built and checksums verified here independently of the program (RFC 8200 8.1
//! pseudo-header).

use std::net::Ipv6Addr;

use lb_common::{
    Addr6, Backend6, FlowKey6, PersistKey6, ReplyKey6, ReplySources6, Service, ServiceKey6,
    VipPort6, backend_state, proto, service_flags, stat,
};

use super::packet::{ACK, ETH_HLEN, L4, SYN, checksum};
use super::xdp_env::*;
use super::{SEC, XDP_DROP, XDP_PASS, XDP_REDIRECT};

const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 0x10);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 0x100);
const B1_6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 0x10);
const B2_6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 0x11);
const CPORT: u16 = 40000;
const SVC_ID: u32 = 7;

/// Extension header numbers.
const HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DEST: u8 = 60;
const ICMPV6: u8 = 58;

fn raw(ip: Ipv6Addr) -> Addr6 {
    let o = ip.octets();
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

/// An Ethernet/IPv6 frame; `ext` are extension headers (type, body after the next-header
/// and length bytes, padded by `build` to 8-byte units), in order.
#[derive(Clone, Debug)]
struct Frame6 {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
    ext: Vec<(u8, Vec<u8>)>,
    l4: L4,
    payload: Vec<u8>,
}

impl Frame6 {
    fn new(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), l4: u8, flags: u8) -> Self {
        let l4 = if l4 == proto::TCP {
            L4::Tcp {
                sport: src.1,
                dport: dst.1,
                flags,
                seq: 0x0102_0304,
                ack: if flags & ACK != 0 { 0x0a0b_0c0d } else { 0 },
            }
        } else {
            L4::Udp {
                sport: src.1,
                dport: dst.1,
                no_checksum: false,
            }
        };
        Self {
            dst_mac: LBC_MAC,
            src_mac: CLIENT_MAC,
            src: src.0,
            dst: dst.0,
            hop_limit: 64,
            ext: Vec::new(),
            l4,
            payload: b"latch fixture payload".to_vec(),
        }
    }

    fn l4_bytes(&self) -> (u8, Vec<u8>) {
        let (nh, mut l4, at) = self.l4.segment(&self.payload);
        if let Some(at) = at {
            let mut c = checksum(&[&pseudo6(self.src, self.dst, nh, l4.len()), &l4]);
            if nh == proto::UDP && c == 0 {
                c = 0xffff;
            }
            l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        (nh, l4)
    }

    fn build(&self) -> Vec<u8> {
        let (l4_nh, l4) = self.l4_bytes();
        // The chain: each header names the next; the last names the L4 protocol.
        let mut chain = Vec::new();
        let mut first = l4_nh;
        for (i, (kind, body)) in self.ext.iter().enumerate().rev() {
            let next = if i + 1 < self.ext.len() {
                self.ext[i + 1].0
            } else {
                l4_nh
            };
            let mut h = vec![next, 0];
            h.extend_from_slice(body);
            while h.len() % 8 != 0 {
                h.push(0);
            }
            if *kind != FRAGMENT {
                h[1] = (h.len() / 8 - 1) as u8;
            }
            chain.splice(0..0, h);
            first = *kind;
        }
        let payload_len = (chain.len() + l4.len()) as u16;
        let mut f = Vec::new();
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&[0x86, 0xdd]);
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&payload_len.to_be_bytes());
        f.push(first);
        f.push(self.hop_limit);
        f.extend_from_slice(&self.src.octets());
        f.extend_from_slice(&self.dst.octets());
        f.extend_from_slice(&chain);
        f.extend_from_slice(&l4);
        f
    }
}

fn pseudo6(src: Ipv6Addr, dst: Ipv6Addr, nh: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(40);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&(len as u32).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, nh]);
    p
}

/// The TCP/UDP checksum of an IPv6 frame without extension headers, recomputed whole.
fn verify6(frame: &[u8]) -> Result<(), String> {
    let ip = &frame[ETH_HLEN..];
    let len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let nh = ip[6];
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).map_err(|e| e.to_string())?);
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).map_err(|e| e.to_string())?);
    let l4 = ip.get(40..40 + len).ok_or("short payload")?;
    if nh == 41 {
        // IP6IP6: the inner packet is checked as a frame of its own.
        let mut inner = frame[..ETH_HLEN].to_vec();
        inner.extend_from_slice(l4);
        return verify6(&inner);
    }
    if checksum(&[&pseudo6(src, dst, nh, len), l4]) != 0 {
        return Err(format!("bad checksum (next header {nh})"));
    }
    Ok(())
}

fn backend6(ip: Ipv6Addr, port: u16) -> Backend6 {
    Backend6 {
        addr: raw(ip),
        port: port.to_be(),
        _pad: 0,
        state: backend_state::UP,
        generation: 1,
    }
}

fn key6(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), l4: u8) -> FlowKey6 {
    FlowKey6 {
        src_addr: raw(src.0),
        dst_addr: raw(dst.0),
        src_port: src.1.to_be(),
        dst_port: dst.1.to_be(),
        proto: l4,
        _pad: [0; 3],
    }
}

/// Service 7 on [VIP6]:80/`l4` with `flags` (and a /64 persistence prefix); backends 1 =
/// B1_6:8080 and 2 = B2_6:8080 in BACKENDS6; the live maglev table maps everything to
/// `maglev_backend`; as the agent does, NAT services list their servers' reply sources.
fn setup(l4: u8, flags: u32, maglev_backend: u32) -> Fixture {
    let mut fx = Fixture::new();
    fx.add_service6(
        ServiceKey6 {
            vip: raw(VIP6),
            port: 80u16.to_be(),
            proto: l4,
            _pad: 0,
        },
        Service {
            id: SVC_ID,
            flags: flags | 64 << service_flags::PERSIST_PREFIX_SHIFT,
            maglev_slot: 1,
            persist_group: SVC_ID,
            persist_ttl_ns: 300 * SEC,
        },
    );
    fx.set_backend6(1, backend6(B1_6, 8080));
    fx.set_backend6(2, backend6(B2_6, 8080));
    fx.fill_maglev(SVC_ID, 0, &[2]);
    fx.fill_maglev(SVC_ID, 1, &[maglev_backend]);
    if flags & service_flags::DSR == 0 {
        for server in [B1_6, B2_6] {
            let mut value = ReplySources6 {
                count: 1,
                ..ReplySources6::default()
            };
            value.vips[0] = VipPort6 {
                vip: raw(VIP6),
                port: 80u16.to_be(),
                _pad: 0,
            };
            fx.set_reply_sources6(
                ReplyKey6 {
                    addr: raw(server),
                    port: 8080u16.to_be(),
                    proto: l4,
                    _pad: 0,
                },
                value,
            );
        }
    }
    fx
}

fn from_client(l4: u8, flags: u8) -> Frame6 {
    Frame6::new((CLIENT6, CPORT), (VIP6, 80), l4, flags)
}

/// What a NAT forward to B1_6 must leave: destination and port rewritten, hop limit one
/// less, MACs of the backend side, checksum right.
fn nat_to_b1(input: &Frame6) -> Vec<u8> {
    let mut out = input.clone();
    out.dst = B1_6;
    match &mut out.l4 {
        L4::Tcp { dport, .. } | L4::Udp { dport, .. } => *dport = 8080,
        L4::Raw { .. } => {}
    }
    out.hop_limit -= 1;
    out.src_mac = LBB_MAC;
    out.dst_mac = BACKEND1_MAC;
    out.build()
}

fn run_expect(
    fx: &Fixture,
    ingress: u32,
    input: &[u8],
    verdict: u32,
    want: Option<&[u8]>,
) -> Vec<u8> {
    let (v, out) = fx.run(ingress, input);
    assert_eq!(v, verdict, "verdict");
    if let Some(want) = want {
        assert_eq!(out, want, "output frame");
        verify6(&out).expect("output checksums");
    }
    out
}

/// Exactly these global counters moved (the connection-table inserts are not compared).
pub(super) fn counters(fx: &Fixture, expected: &[(u32, u64)]) {
    let mut want = vec![0u64; stat::COUNT as usize];
    for (i, n) in expected {
        want[*i as usize] += n;
    }
    let mut got = fx.stats();
    got[stat::CONNTRACK_INSERT as usize] = want[stat::CONNTRACK_INSERT as usize];
    assert_eq!(got, want, "STATS (index = lb_common::stat)");
}

/// Each (what, frame, counter) is passed untouched, and counted there (once each).
fn all_pass_untouched(fx: &Fixture, cases: Vec<(&str, Vec<u8>, u32)>) {
    let mut want = Vec::new();
    for (what, frame, counter) in cases {
        let (v, out) = fx.run(fx.lbc, &frame);
        assert_eq!(v, XDP_PASS, "{what}: verdict");
        assert_eq!(out, frame, "{what}: untouched");
        want.push((counter, 1));
    }
    counters(fx, &want);
}

#[test]
fn v6_frames_verify() {
    let f = from_client(proto::TCP, SYN).build();
    verify6(&f).expect("fresh TCP frame");
    let mut bad = f.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(
        verify6(&bad).is_err(),
        "a flipped payload bit fails the sum"
    );
    verify6(&from_client(proto::UDP, 0).build()).expect("fresh UDP frame");
}

#[test]
#[ignore = "needs root: runs the XDP program in a private network namespace"]
fn v6_new_tcp_flow_nat_then_conntrack_hit() {
    let mut fx = setup(proto::TCP, 0, 1);
    let syn = from_client(proto::TCP, SYN);
    run_expect(
        &fx,
        fx.lbc,
        &syn.build(),
        XDP_REDIRECT,
        Some(&nat_to_b1(&syn)),
    );
    let flow = fx
        .flow6(&key6((CLIENT6, CPORT), (VIP6, 80), proto::TCP))
        .expect("flow recorded in CONNTRACK6");
    assert_eq!((flow.backend_id, flow.service_id), (1, SVC_ID));
    // The next segment follows the entry even with the table now pointing elsewhere.
    fx.fill_maglev(SVC_ID, 1, &[2]);
    let ack = from_client(proto::TCP, ACK);
    run_expect(
        &fx,
        fx.lbc,
        &ack.build(),
        XDP_REDIRECT,
        Some(&nat_to_b1(&ack)),
    );
    counters(
        &fx,
        &[
            (stat::NEW_FLOW_MAGLEV, 1),
            (stat::CONNTRACK_HIT, 1),
            (stat::VERDICT_REDIRECT, 2),
        ],
    );
    let t = fx.service_traffic(SVC_ID);
    assert_eq!((t.packets, t.new_flows), (2, 1));
    // L3 length: 40-byte header plus payload.
    assert_eq!(t.bytes, 2 * (syn.build().len() - ETH_HLEN) as u64);
}

#[test]
#[ignore = "needs root: runs the XDP program in a private network namespace"]
fn v6_new_udp_flow_nat_fixes_udp_checksum() {
    let fx = setup(proto::UDP, 0, 1);
    let dgram = from_client(proto::UDP, 0);
    run_expect(
        &fx,
        fx.lbc,
        &dgram.build(),
        XDP_REDIRECT,
        Some(&nat_to_b1(&dgram)),
    );
}

#[test]
#[ignore = "needs root: runs the XDP program in a private network namespace"]
fn v6_dsr_rewrites_only_macs() {
    let fx = setup(proto::TCP, service_flags::DSR, 2);
    let syn = from_client(proto::TCP, SYN);
    let mut want = syn.clone();
    want.src_mac = LBB_MAC;
    want.dst_mac = BACKEND2_MAC;
    run_expect(&fx, fx.lbc, &syn.build(), XDP_REDIRECT, Some(&want.build()));
}

/// Tunnel mode, IPv6: the client's packet inside an outer IPv6 header (next header 41) from
/// the host's tunnel source to the server, hop limit 64, version/traffic class/flow label
/// as the inner one's; the inner packet byte for byte as it came. A later segment follows
/// the flow's entry.
#[test]
#[ignore = "needs root: runs the XDP program in a private network namespace"]
fn v6_tunnel_encapsulates_ip6ip6_to_the_server() {
    let mut fx = setup(proto::TCP, service_flags::DSR | service_flags::TUNNEL, 2);
    let source = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 1);
    fx.set_tunnel_source(lb_common::tunnel_source::V6, raw(source));
    let expect = |input: &[u8]| {
        let inner = &input[ETH_HLEN..];
        let mut f = Vec::new();
        f.extend_from_slice(&BACKEND2_MAC);
        f.extend_from_slice(&LBB_MAC);
        f.extend_from_slice(&[0x86, 0xdd]);
        f.extend_from_slice(&inner[..4]);
        f.extend_from_slice(&(inner.len() as u16).to_be_bytes());
        f.extend_from_slice(&[41, 64]);
        f.extend_from_slice(&source.octets());
        f.extend_from_slice(&B2_6.octets());
        f.extend_from_slice(inner);
        f
    };
    let syn = from_client(proto::TCP, SYN).build();
    run_expect(&fx, fx.lbc, &syn, XDP_REDIRECT, Some(&expect(&syn)));
    let flow = fx
        .flow6(&key6((CLIENT6, CPORT), (VIP6, 80), proto::TCP))
        .expect("flow recorded in CONNTRACK6");
    assert_eq!(
        flow.flags,
        lb_common::flow_flags::DSR | lb_common::flow_flags::TUNNEL
    );
    fx.fill_maglev(SVC_ID, 1, &[1]);
    let ack = from_client(proto::TCP, ACK).build();
    run_expect(&fx, fx.lbc, &ack, XDP_REDIRECT, Some(&expect(&ack)));
    counters(
        &fx,
        &[
            (stat::NEW_FLOW_MAGLEV, 1),
            (stat::CONNTRACK_HIT, 1),
            (stat::VERDICT_REDIRECT, 2),
        ],
    );
    // Without an IPv6 source (the agent has none configured) the packet is dropped.
    fx.set_tunnel_source(lb_common::tunnel_source::V6, [0; 4]);
    run_expect(&fx, fx.lbc, &ack, XDP_DROP, None);
    assert_eq!(fx.stat(stat::DROP_TUNNEL_ERROR), 1);
}

#[test]
#[ignore = "needs root: runs the XDP program in a private network namespace"]
fn v6_reply_is_translated_back_to_the_vip() {
    let fx = setup(proto::TCP, 0, 1);
    let syn = from_client(proto::TCP, SYN);
    run_expect(&fx, fx.lbc, &syn.build(), XDP_REDIRECT, None);
    let mut reply = Frame6::new((B1_6, 8080), (CLIENT6, CPORT), proto::TCP, SYN | ACK);
    reply.src_mac = BACKEND1_MAC;
    reply.dst_mac = LBB_MAC;
    let mut want = Frame6::new((VIP6, 80), (CLIENT6, CPORT), proto::TCP, SYN | ACK);
    want.hop_limit = 63;
    want.src_mac = LBC_MAC;
    want.dst_mac = CLIENT_MAC;
    run_expect(
        &fx,
        fx.lbb,
        &reply.build(),
        XDP_REDIRECT,
        Some(&want.build()),
    );
    // A reply of the other backend, which has no flow with this client, goes to the stack.
    let mut other = Frame6::new((B2_6, 8080), (CLIENT6, CPORT), proto::TCP, ACK);
    other.src_mac = BACKEND2_MAC;
    other.dst_mac = LBB_MAC;
    let bytes = other.build();
    run_expect(&fx, fx.lbb, &bytes, XDP_PASS, Some(&bytes));
    counters(
        &fx,
        &[
            (stat::NEW_FLOW_MAGLEV, 1),
            (stat::REPLY_NAT, 1),
            (stat::VERDICT_REDIRECT, 2),
            (stat::PASS_NOT_VIP, 1),
        ],
    );
}

#[test]
#[ignore = "needs root: runs the XDP program in a private network namespace"]
fn v6_persistence_keys_on_the_client_prefix() {
    let mut fx = setup(proto::TCP, service_flags::PERSIST_CLIENT_IP, 1);
    let syn = from_client(proto::TCP, SYN);
    run_expect(
        &fx,
        fx.lbc,
        &syn.build(),
        XDP_REDIRECT,
        Some(&nat_to_b1(&syn)),
    );
    let pin = PersistKey6 {
        group: SVC_ID,
        client_addr: raw(Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 0)),
    };
    let p = fx.persist6_entry(&pin).expect("pinned by the client's /64");
    assert_eq!(p.backend_id, 1);
    // Maglev now says backend 2; another address of the same /64 still gets backend 1 ...
    fx.fill_maglev(SVC_ID, 1, &[2]);
    let sibling = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0xaaaa, 0, 0, 0x7);
    let syn2 = Frame6::new((sibling, CPORT), (VIP6, 80), proto::TCP, SYN);
    run_expect(
        &fx,
        fx.lbc,
        &syn2.build(),
        XDP_REDIRECT,
        Some(&nat_to_b1(&syn2)),
    );
    // ... and a client of another /64 follows maglev (the fib answer is backend 2's MAC).
    let stranger = Ipv6Addr::new(0x2001, 0xdb8, 0xd, 0, 0, 0, 0, 0x7);
    let syn3 = Frame6::new((stranger, CPORT), (VIP6, 80), proto::TCP, SYN);
    let (v, out) = fx.run(fx.lbc, &syn3.build());
    assert_eq!(v, XDP_REDIRECT);
    assert_eq!(&out[0..6], &BACKEND2_MAC, "to backend 2");
    verify6(&out).expect("checksums");
    counters(
        &fx,
        &[
            (stat::NEW_FLOW_MAGLEV, 2),
            (stat::PERSIST_HIT, 1),
            (stat::VERDICT_REDIRECT, 3),
        ],
    );
}

#[test]
#[ignore = "needs root: runs the XDP program in a private network namespace"]
fn v6_hop_limit_one_and_no_backend() {
    let fx = setup(proto::TCP, 0, 1);
    let mut syn = from_client(proto::TCP, SYN);
    syn.hop_limit = 1;
    // Rewritten but left to the stack, which answers with time exceeded.
    let (v, _) = fx.run(fx.lbc, &syn.build());
    assert_eq!(v, XDP_PASS);
    let mut fx = fx;
    let mut down = backend6(B1_6, 8080);
    down.state = backend_state::DOWN;
    fx.set_backend6(1, down);
    let other = Frame6::new((CLIENT6, CPORT + 1), (VIP6, 80), proto::TCP, SYN).build();
    assert_eq!(fx.run(fx.lbc, &other).0, XDP_DROP);
    counters(
        &fx,
        &[
            (stat::NEW_FLOW_MAGLEV, 1),
            (stat::PASS_FIB_MISS, 1),
            (stat::DROP_NO_BACKEND, 1),
        ],
    );
}

/// Extension headers are never taken for TCP/UDP: every such packet is passed untouched and
/// counted (as irregular when it carries TCP/UDP to a VIP port), ICMPv6 goes to the stack.
#[test]
#[ignore = "needs root: runs the XDP program in a private network namespace"]
fn v6_extension_headers_pass_untouched_and_counted() {
    let fx = setup(proto::TCP, 0, 1);
    let with = |ext: Vec<(u8, Vec<u8>)>, port: u16| {
        let mut f = Frame6::new((CLIENT6, CPORT), (VIP6, port), proto::TCP, SYN);
        f.ext = ext;
        f.build()
    };
    let pad = vec![1, 4, 0, 0, 0, 0];
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        (
            "hop-by-hop",
            with(vec![(HOP, pad.clone())], 80),
            stat::PASS_FRAGMENT_OR_OPTIONS,
        ),
        (
            "destination options",
            with(vec![(DEST, pad.clone())], 80),
            stat::PASS_FRAGMENT_OR_OPTIONS,
        ),
        (
            "routing, segments left 1",
            with(
                vec![(
                    ROUTING,
                    [vec![0, 1, 0, 0, 0, 0], VIP6.octets().to_vec()].concat(),
                )],
                80,
            ),
            stat::PASS_FRAGMENT_OR_OPTIONS,
        ),
        (
            "first fragment",
            with(vec![(FRAGMENT, vec![0, 1, 0, 0, 0, 7])], 80),
            stat::PASS_FRAGMENT_OR_OPTIONS,
        ),
        (
            "hop-by-hop then destination options",
            with(vec![(HOP, pad.clone()), (DEST, pad.clone())], 80),
            stat::PASS_FRAGMENT_OR_OPTIONS,
        ),
        (
            "hop-by-hop to a port with no service",
            with(vec![(HOP, pad.clone())], 81),
            stat::PASS_NOT_VIP,
        ),
    ];
    let mut later = Frame6::new((CLIENT6, CPORT), (VIP6, 80), proto::TCP, ACK);
    // Offset 8 (64 bytes), more fragments: the L4 bytes here are not a TCP header.
    later.ext = vec![(FRAGMENT, vec![0, 0x41, 0, 0, 0, 7])];
    let later = later.build();
    let mut icmp = Frame6::new((CLIENT6, 0), (VIP6, 0), proto::TCP, 0);
    icmp.l4 = L4::Raw { proto: ICMPV6 };
    icmp.payload = vec![128, 0, 0, 0, 0, 1, 0, 1];
    let icmp = icmp.build();
    let mut cases = cases;
    cases.push(("later fragment", later, stat::PASS_FRAGMENT_OR_OPTIONS));
    cases.push(("ICMPv6", icmp, stat::PASS_NOT_VIP));
    all_pass_untouched(&fx, cases);
    // Nothing was recorded for any of them.
    let mut fx = fx;
    assert!(
        fx.flow6(&key6((CLIENT6, CPORT), (VIP6, 80), proto::TCP))
            .is_none()
    );
}

#[test]
#[ignore = "needs root: runs the XDP program in a private network namespace"]
fn v6_malformed_and_non_vip_pass_untouched() {
    let fx = setup(proto::TCP, 0, 1);
    let good = from_client(proto::TCP, SYN).build();
    let mut cases: Vec<(&str, Vec<u8>, u32)> = Vec::new();
    cases.push((
        "truncated IPv6 header",
        good[..ETH_HLEN + 30].to_vec(),
        stat::PASS_MALFORMED,
    ));
    let mut long = good.clone();
    long[ETH_HLEN + 4..ETH_HLEN + 6].copy_from_slice(&500u16.to_be_bytes());
    cases.push((
        "payload length beyond the frame",
        long,
        stat::PASS_MALFORMED,
    ));
    let mut v4 = good.clone();
    v4[ETH_HLEN] = 0x40;
    cases.push(("version 4 in an IPv6 EtherType", v4, stat::PASS_MALFORMED));
    cases.push((
        "truncated TCP header",
        good[..ETH_HLEN + 40 + 10].to_vec(),
        stat::PASS_MALFORMED,
    ));
    let other = Frame6::new((CLIENT6, CPORT), (CLIENT6, 80), proto::TCP, SYN).build();
    cases.push(("not a VIP", other, stat::PASS_NOT_VIP));
    all_pass_untouched(&fx, cases);
    // Every prefix of a good frame: never aborted, never forwarded.
    for n in 0..good.len() {
        // The kernel refuses frames shorter than an Ethernet header outright.
        if let Ok((v, _)) = fx.try_run(fx.lbc, &good[..n]) {
            assert_eq!(
                v,
                XDP_PASS,
                "{n} bytes of {}: a truncated frame",
                good.len()
            );
        }
    }
}

/// An ICMPv6 error from `src` to `dst` (type, code, the four bytes after the checksum, such as
/// the MTU of a packet too big) quoting the first `quoted` bytes of the IPv6 packet `inner`
/// (from its IPv6 header on), its checksum over the pseudo-header and message.
fn icmp6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    (kind, code, rest): (u8, u8, [u8; 4]),
    inner: &[u8],
    quoted: usize,
) -> Frame6 {
    let mut msg = vec![kind, code, 0, 0];
    msg.extend_from_slice(&rest);
    msg.extend_from_slice(&inner[..quoted]);
    let c = checksum(&[&pseudo6(src, dst, ICMPV6, msg.len()), &msg]);
    msg[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = Frame6::new((src, 0), (dst, 0), proto::TCP, 0);
    f.l4 = L4::Raw { proto: ICMPV6 };
    f.payload = msg;
    f
}

/// An ICMPv6 error `kind` from `from` to `to` quoting all of `frame`'s IPv6 packet, with
/// these MACs (source, destination) and outer hop limit.
fn error_quoting(
    (from, to): (Ipv6Addr, Ipv6Addr),
    kind: (u8, u8, [u8; 4]),
    frame: &[u8],
    (src_mac, dst_mac): ([u8; 6], [u8; 6]),
    hop_limit: u8,
) -> Vec<u8> {
    let mut e = icmp6(from, to, kind, &frame[ETH_HLEN..], frame.len() - ETH_HLEN);
    e.src_mac = src_mac;
    e.dst_mac = dst_mac;
    e.hop_limit = hop_limit;
    e.build()
}

/// `f` as latch forwarded it, before its rewrite: one hop less.
fn one_hop_on(f: &Frame6) -> Vec<u8> {
    let mut own = f.clone();
    own.hop_limit -= 1;
    own.build()
}

const TOO_BIG: (u8, u8, [u8; 4]) = (2, 0, [0, 0, 0x05, 0x00]);

/// A router behind latch (or the backend) says the packet latch sent a backend was too big:
/// the client gets the error from the VIP, quoting its own packet as it sent it (hop limit as
/// latch forwarded it). The expected frame is built from scratch, so its ICMPv6 and quoted
/// TCP checksums are recomputed independently of the program's incremental ones;
/// `run_expect` also checks the ICMPv6 checksum of the output over its pseudo-header.
#[test]
#[ignore = "needs root: runs the XDP program in a private network namespace"]
fn v6_packet_too_big_toward_a_backend_is_translated_for_the_client() {
    let fx = setup(proto::TCP, 0, 1);
    let syn = from_client(proto::TCP, SYN);
    let sent = run_expect(
        &fx,
        fx.lbc,
        &syn.build(),
        XDP_REDIRECT,
        Some(&nat_to_b1(&syn)),
    );
    let router = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 0x99);
    let whole = sent.len() - ETH_HLEN;
    // From a router between latch and the backend, then from the backend itself; the whole
    // packet quoted, then only its first 8 TCP bytes (no TCP checksum in the quote).
    for (from, quoted) in [(router, whole), (router, 40 + 8), (B1_6, whole)] {
        let mut err = icmp6(from, CLIENT6, TOO_BIG, &sent[ETH_HLEN..], quoted);
        err.src_mac = BACKEND1_MAC;
        err.dst_mac = LBB_MAC;
        let mut own = syn.clone();
        own.hop_limit = 63;
        let mut want = icmp6(VIP6, CLIENT6, TOO_BIG, &own.build()[ETH_HLEN..], quoted);
        want.hop_limit = 63;
        want.src_mac = LBC_MAC;
        want.dst_mac = CLIENT_MAC;
        run_expect(&fx, fx.lbb, &err.build(), XDP_REDIRECT, Some(&want.build()));
    }
    counters(
        &fx,
        &[
            (stat::NEW_FLOW_MAGLEV, 1),
            (stat::ICMP_TO_CLIENT, 3),
            (stat::VERDICT_REDIRECT, 4),
        ],
    );
}

/// A router on the client's side says a reply latch translated was too big: the backend gets
/// the error, quoting its reply as it sent it.
#[test]
#[ignore = "needs root: runs the XDP program in a private network namespace"]
fn v6_packet_too_big_toward_a_client_is_translated_for_the_backend() {
    let fx = setup(proto::TCP, 0, 1);
    run_expect(
        &fx,
        fx.lbc,
        &from_client(proto::TCP, SYN).build(),
        XDP_REDIRECT,
        None,
    );
    let mut reply = Frame6::new((B1_6, 8080), (CLIENT6, CPORT), proto::TCP, SYN | ACK);
    reply.src_mac = BACKEND1_MAC;
    reply.dst_mac = LBB_MAC;
    let out = run_expect(&fx, fx.lbb, &reply.build(), XDP_REDIRECT, None);
    let router = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 0x99);
    let err = error_quoting((router, VIP6), TOO_BIG, &out, (CLIENT_MAC, LBC_MAC), 64);
    let want = error_quoting(
        (router, B1_6),
        TOO_BIG,
        &one_hop_on(&reply),
        (LBB_MAC, BACKEND1_MAC),
        63,
    );
    run_expect(&fx, fx.lbc, &err, XDP_REDIRECT, Some(&want));
    // About a flow latch does not have: to the stack, untouched.
    let stray = Frame6::new((CLIENT6, CPORT + 9), (B1_6, 8080), proto::TCP, ACK).build();
    let mut other = icmp6(
        router,
        CLIENT6,
        TOO_BIG,
        &stray[ETH_HLEN..],
        stray.len() - ETH_HLEN,
    );
    other.src_mac = BACKEND1_MAC;
    other.dst_mac = LBB_MAC;
    let other = other.build();
    run_expect(&fx, fx.lbb, &other, XDP_PASS, Some(&other));
    counters(
        &fx,
        &[
            (stat::NEW_FLOW_MAGLEV, 1),
            (stat::REPLY_NAT, 1),
            (stat::ICMP_TO_BACKEND, 1),
            (stat::VERDICT_REDIRECT, 3),
            (stat::PASS_NOT_VIP, 1),
        ],
    );
}

const PORT_UNREACHABLE: (u8, u8, [u8; 4]) = (1, 4, [0; 4]);

/// A UDP backend with nothing listening answers port unreachable, quoting the datagram latch
/// sent it: the client gets it from the VIP, quoting the datagram it sent (UDP checksum
/// recomputed for the VIP's port and address), the ICMPv6 checksum right.
#[test]
#[ignore = "needs root: runs the XDP program in a private network namespace"]
fn v6_port_unreachable_of_a_udp_backend_is_translated_for_the_client() {
    let fx = setup(proto::UDP, 0, 1);
    let dgram = from_client(proto::UDP, 0);
    let sent = run_expect(
        &fx,
        fx.lbc,
        &dgram.build(),
        XDP_REDIRECT,
        Some(&nat_to_b1(&dgram)),
    );
    let err = error_quoting(
        (B1_6, CLIENT6),
        PORT_UNREACHABLE,
        &sent,
        (BACKEND1_MAC, LBB_MAC),
        64,
    );
    let want = error_quoting(
        (VIP6, CLIENT6),
        PORT_UNREACHABLE,
        &one_hop_on(&dgram),
        (LBC_MAC, CLIENT_MAC),
        63,
    );
    let out = run_expect(&fx, fx.lbb, &err, XDP_REDIRECT, Some(&want));
    // The quoted datagram's own checksum, recomputed over its pseudo-header (client -> VIP).
    verify6(&[&out[..ETH_HLEN], &out[ETH_HLEN + 48..]].concat()).expect("quoted UDP checksum");
    counters(
        &fx,
        &[
            (stat::NEW_FLOW_MAGLEV, 1),
            (stat::ICMP_TO_CLIENT, 1),
            (stat::VERDICT_REDIRECT, 2),
        ],
    );
}

/// ICMPv6 that is not an error about a live NAT flow goes to the stack untouched: neighbour
/// discovery and echo above all, and errors latch must not translate (about a flow it does
/// not have, a DSR flow, a quoted packet with an extension header or cut before its ports,
/// an error not addressed to the quoted packet's sender, a hop limit of 1).
#[test]
#[ignore = "needs root: runs the XDP program in a private network namespace"]
fn v6_icmpv6_other_than_errors_about_nat_flows_passes_untouched() {
    let fx = setup(proto::TCP, 0, 1);
    let syn = from_client(proto::TCP, SYN);
    let sent = run_expect(
        &fx,
        fx.lbc,
        &syn.build(),
        XDP_REDIRECT,
        Some(&nat_to_b1(&syn)),
    );
    let quote = &sent[ETH_HLEN..];
    let router = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 0x99);
    let lb = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 1);
    let mut solicit_target = lb.octets().to_vec();
    solicit_target.extend_from_slice(&[1, 1, 2, 0, 0, 0, 0x0c, 0x64]);
    let mut cases: Vec<(&str, Vec<u8>, u32)> = vec![
        (
            "neighbour solicitation",
            icmp6(CLIENT6, lb, (135, 0, [0; 4]), &solicit_target, 24).build(),
            stat::PASS_NOT_VIP,
        ),
        (
            "echo request to the VIP",
            icmp6(CLIENT6, VIP6, (128, 0, [0, 1, 0, 1]), b"ping", 4).build(),
            stat::PASS_NOT_VIP,
        ),
    ];
    let stray = Frame6::new((CLIENT6, CPORT + 9), (B1_6, 8080), proto::TCP, ACK).build();
    cases.push((
        "packet too big about a flow latch does not have",
        icmp6(
            router,
            CLIENT6,
            TOO_BIG,
            &stray[ETH_HLEN..],
            stray.len() - ETH_HLEN,
        )
        .build(),
        stat::PASS_NOT_VIP,
    ));
    cases.push((
        "packet too big quoting 4 bytes of TCP (no ports)",
        icmp6(router, CLIENT6, TOO_BIG, quote, 40 + 4).build(),
        stat::PASS_NOT_VIP,
    ));
    let mut ext = Frame6::new((CLIENT6, CPORT), (B1_6, 8080), proto::TCP, SYN);
    ext.ext = vec![(DEST, vec![0; 6])];
    let ext = ext.build();
    cases.push((
        "packet too big quoting a packet with an extension header",
        icmp6(
            router,
            CLIENT6,
            TOO_BIG,
            &ext[ETH_HLEN..],
            ext.len() - ETH_HLEN,
        )
        .build(),
        stat::PASS_NOT_VIP,
    ));
    cases.push((
        "packet too big sent elsewhere than to the quoted packet's sender",
        icmp6(router, B2_6, TOO_BIG, quote, quote.len()).build(),
        stat::PASS_NOT_VIP,
    ));
    let mut last_hop = icmp6(router, CLIENT6, TOO_BIG, quote, quote.len());
    last_hop.hop_limit = 1;
    cases.push((
        "packet too big with hop limit 1",
        last_hop.build(),
        stat::PASS_NOT_VIP,
    ));
    cases.push((
        "time exceeded (not translated)",
        icmp6(router, CLIENT6, (3, 0, [0; 4]), quote, quote.len()).build(),
        stat::PASS_NOT_VIP,
    ));
    let mut want = vec![(stat::NEW_FLOW_MAGLEV, 1), (stat::VERDICT_REDIRECT, 1)];
    for (what, frame, counter) in cases {
        let (v, out) = fx.run(fx.lbb, &frame);
        assert_eq!(v, XDP_PASS, "{what}: verdict");
        assert_eq!(out, frame, "{what}: untouched");
        want.push((counter, 1));
    }
    counters(&fx, &want);
}

/// An error about a DSR flow is not latch's to translate (the server answers the client
/// itself): passed untouched.
#[test]
#[ignore = "needs root: runs the XDP program in a private network namespace"]
fn v6_icmpv6_error_about_a_dsr_flow_passes() {
    let fx = setup(proto::TCP, service_flags::DSR, 1);
    let syn = from_client(proto::TCP, SYN).build();
    run_expect(&fx, fx.lbc, &syn, XDP_REDIRECT, None);
    let router = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 0x99);
    // DSR forwards the packet unchanged (to the VIP), so that is what a router quotes.
    let err = icmp6(
        router,
        CLIENT6,
        TOO_BIG,
        &syn[ETH_HLEN..],
        syn.len() - ETH_HLEN,
    )
    .build();
    run_expect(&fx, fx.lbb, &err, XDP_PASS, Some(&err));
    counters(
        &fx,
        &[
            (stat::NEW_FLOW_MAGLEV, 1),
            (stat::VERDICT_REDIRECT, 1),
            (stat::PASS_NOT_VIP, 1),
        ],
    );
}
