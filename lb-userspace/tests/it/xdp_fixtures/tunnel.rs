//! Tunnel mode, IPv4 (IPIP): exact output bytes of the encapsulated frame, its outer header
//! built here independently (checksum by RFC 1071 over the expected bytes), the flow's entry,
//! the DF and DSCP copies, client-IP persistence, and the drops (no tunnel source, a frame
//! that outgrows the egress MTU). The IPv6 counterpart is
//! `v6::v6_tunnel_encapsulates_ip6ip6_to_the_server`.

use std::net::Ipv4Addr;

use lb_common::{flow_flags, proto, service_flags, stat, tunnel_source};

use super::packet::{ACK, ETH_HLEN, Frame, SYN, checksum, verify_checksums};
use super::v6::counters;
use super::xdp_env::*;
use super::{
    B2, CLIENT, CPORT, VIP, XDP_DROP, XDP_REDIRECT, addr, client_flow, persist_key, setup,
};

/// The host's tunnel source in the fixtures: lbb's own address.
const SOURCE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const TUNNEL: u32 = service_flags::DSR | service_flags::TUNNEL;

fn tunnel_fixture() -> Fixture {
    let mut fx = Fixture::new();
    setup(&mut fx, proto::TCP, TUNNEL, 2);
    fx.set_tunnel_source(tunnel_source::V4, [addr(SOURCE), 0, 0, 0]);
    fx
}

/// `input` (a client frame) as tunnel mode must send it to B2: backend-side MACs, an outer
/// IPv4 header SOURCE -> B2, protocol 4, TTL 64, DSCP/ECN and identification of the inner
/// header, DF only if the inner has it, and the inner packet unchanged.
fn ipip_to_b2(input: &[u8]) -> Vec<u8> {
    let inner = &input[ETH_HLEN..];
    let len = (inner.len() + 20) as u16;
    let df = inner[6] & 0x40;
    let mut ip = vec![0x45, inner[1]];
    ip.extend_from_slice(&len.to_be_bytes());
    ip.extend_from_slice(&inner[4..6]);
    ip.extend_from_slice(&[df, 0, 64, 4, 0, 0]);
    ip.extend_from_slice(&SOURCE.octets());
    ip.extend_from_slice(&B2.octets());
    let c = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&BACKEND2_MAC);
    f.extend_from_slice(&LBB_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(inner);
    f
}

fn expect(fx: &Fixture, input: &[u8], verdict: u32, want: Option<Vec<u8>>) {
    let (v, out) = fx.run(fx.lbc, input);
    assert_eq!(v, verdict, "verdict");
    if let Some(want) = want {
        assert_eq!(out, want, "output frame");
        verify_checksums(&out).expect("outer and inner checksums");
    }
}

#[test]
#[ignore = "needs root: runs the XDP program in a private network namespace"]
fn tunnel_new_flow_and_conntrack_hit_are_ipip_to_the_server() {
    let mut fx = tunnel_fixture();
    let mut syn = Frame::tcp((CLIENT, CPORT), (VIP, 80), SYN);
    syn.tos = 0x28;
    syn.id = 0xbeef;
    let syn = syn.build();
    expect(&fx, &syn, XDP_REDIRECT, Some(ipip_to_b2(&syn)));
    let flow = fx.flow(&client_flow()).expect("flow recorded");
    assert_eq!(flow.backend_id, 2);
    assert_eq!(flow.flags, flow_flags::DSR | flow_flags::TUNNEL);
    // The next segment follows the entry although Maglev now says backend 1; without DF
    // inside, the outer header has none either.
    fx.fill_maglev(1, 1, &[1]);
    let mut ack = Frame::tcp((CLIENT, CPORT), (VIP, 80), ACK);
    ack.frag = 0;
    let ack = ack.build();
    let want = ipip_to_b2(&ack);
    assert_eq!(want[ETH_HLEN + 6], 0, "no DF expected");
    expect(&fx, &ack, XDP_REDIRECT, Some(want));
    counters(
        &fx,
        &[
            (stat::NEW_FLOW_MAGLEV, 1),
            (stat::CONNTRACK_HIT, 1),
            (stat::VERDICT_REDIRECT, 2),
        ],
    );
}

#[test]
#[ignore = "needs root: runs the XDP program in a private network namespace"]
fn tunnel_without_a_source_drops_and_counts() {
    let mut fx = Fixture::new();
    setup(&mut fx, proto::TCP, TUNNEL, 2);
    let syn = Frame::tcp((CLIENT, CPORT), (VIP, 80), SYN).build();
    expect(&fx, &syn, XDP_DROP, None);
    counters(
        &fx,
        &[(stat::NEW_FLOW_MAGLEV, 1), (stat::DROP_TUNNEL_ERROR, 1)],
    );
}

/// lbb's MTU is 1500: an inner packet of 1480 bytes fits encapsulated, one of 1481 does not
/// and is dropped and counted.
#[test]
#[ignore = "needs root: runs the XDP program in a private network namespace"]
fn tunnel_frames_beyond_the_egress_mtu_are_dropped_and_counted() {
    let fx = tunnel_fixture();
    let sized = |inner_len: usize, sport: u16| {
        let mut f = Frame::tcp((CLIENT, sport), (VIP, 80), SYN);
        // 20 bytes of IPv4 header and 20 of TCP.
        f.payload = vec![0x5a; inner_len - 40];
        f.build()
    };
    let fits = sized(1480, CPORT);
    expect(&fx, &fits, XDP_REDIRECT, Some(ipip_to_b2(&fits)));
    let big = sized(1481, CPORT + 1);
    expect(&fx, &big, XDP_DROP, None);
    counters(
        &fx,
        &[
            (stat::NEW_FLOW_MAGLEV, 2),
            (stat::VERDICT_REDIRECT, 1),
            (stat::DROP_TUNNEL_TOO_BIG, 1),
        ],
    );
}

/// Client-IP persistence works as with DSR: the first connection pins the client, a later
/// one from another port follows the pin (although Maglev now says backend 1), encapsulated.
#[test]
#[ignore = "needs root: runs the XDP program in a private network namespace"]
fn tunnel_with_persistence_follows_the_clients_pin() {
    let mut fx = Fixture::new();
    setup(
        &mut fx,
        proto::TCP,
        TUNNEL | service_flags::PERSIST_CLIENT_IP,
        2,
    );
    fx.set_tunnel_source(tunnel_source::V4, [addr(SOURCE), 0, 0, 0]);
    let first = Frame::tcp((CLIENT, CPORT), (VIP, 80), SYN).build();
    expect(&fx, &first, XDP_REDIRECT, Some(ipip_to_b2(&first)));
    let pin = fx.persist_entry(&persist_key()).expect("client pinned");
    assert_eq!(pin.backend_id, 2);
    fx.fill_maglev(1, 1, &[1]);
    let second = Frame::tcp((CLIENT, CPORT + 7), (VIP, 80), SYN).build();
    expect(&fx, &second, XDP_REDIRECT, Some(ipip_to_b2(&second)));
    counters(
        &fx,
        &[
            (stat::NEW_FLOW_MAGLEV, 1),
            (stat::PERSIST_HIT, 1),
            (stat::VERDICT_REDIRECT, 2),
        ],
    );
}
