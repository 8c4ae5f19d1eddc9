//! Fuzzing the XDP program through BPF_PROG_TEST_RUN (the fixtures' environment, see
//! `xdp_fixtures/xdp_env.rs`): frames built from the shapes the program tells apart (TCP, UDP,
//! other protocols and ethertypes, IP options, fragments, TTLs, both ports, every service),
//! then mutated byte-wise and truncated, sometimes with lengths and checksums fixed up again
//! so that the mutation gets past the parser.
//!
//! Five services on one VIP: TCP 80 NAT (its Maglev table all backend 1), TCP 81 (its only
//! backend down), UDP 53 NAT (all backend 2), TCP 443 DSR (all backend 2), TCP 8080 HTTP with
//! the fast path. Flow A (client
//! 192.0.2.77:5555 to VIP:80) is bound to backend 2 by conntrack and its client pinned to
//! backend 2 for the fast path; A's packets carry a marker payload.
//!
//! Properties, for every frame of another flow:
//! - the kernel runs it (frames under an Ethernet header are refused) and the verdict is PASS,
//!   DROP, TX or REDIRECT, never ABORTED;
//! - the frame keeps its length and changes only in MACs, TTL, addresses, ports and checksums;
//! - TX and REDIRECT go out an expected interface: the source MAC is one of the program's two
//!   ports (TX: the ingress one, REDIRECT: the other), the destination MAC a neighbour on that
//!   port, and the destination address that neighbour's (or the VIP, for DSR);
//! - checksums that were right stay right;
//! - nothing of flow A leaks into it: no marker bytes, and only A's tuple (or, for the fast
//!   path, A's client) reaches A's backend on the services that would otherwise pick backend 1
//!   or the proxy (A itself may lose its entry to the fuzzer's flows and go by Maglev).

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};

use lb_common::{Persist, PersistKey, Service, ServiceKey, backend_state, proto, service_flags};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use latch_tests::fuzz::{self, Edit};

use crate::xdp_fixtures::packet::{self, ETH_HLEN, Frame, L4, verify_checksums};
use crate::xdp_fixtures::xdp_env::*;
use crate::xdp_fixtures::{
    B1, B2, CLIENT, NEAR, NO_NEIGH, SEC, VIP, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, addr,
    backend, flow, flow_key, port,
};

const A_CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);
const A_PORT: u16 = 5555;
const OTHER_CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 101);
const MARKER: &[u8] = b"LATCH-FLOW-A-MARKER-7f3a";
const BACKEND_PORT: u16 = 8080;

/// (virtual port, protocol, service id, flags, the backend its Maglev table picks).
const SERVICES: [(u16, u8, u32, u32, u32); 5] = [
    (80, proto::TCP, 1, 0, 1),
    // Its only backend is down: new flows are dropped.
    (81, proto::TCP, 5, 0, 5),
    (53, proto::UDP, 2, 0, 2),
    (443, proto::TCP, 3, service_flags::DSR, 2),
    (
        8080,
        proto::TCP,
        4,
        service_flags::HTTP | service_flags::FAST_PATH,
        2,
    ),
];

fn setup(fx: &mut Fixture) {
    for (vport, l4, id, flags, pick) in SERVICES {
        fx.add_service(
            ServiceKey {
                vip: addr(VIP),
                port: port(vport),
                proto: l4,
                _pad: 0,
            },
            Service {
                id,
                flags,
                maglev_slot: 0,
                persist_group: id,
                persist_ttl_ns: 300 * SEC,
            },
        );
        fx.fill_maglev(id, 0, &[pick]);
    }
    fx.set_backend(1, backend(B1, BACKEND_PORT, 1));
    fx.set_backend(2, backend(B2, BACKEND_PORT, 1));
    fx.set_backend(3, backend(NEAR, BACKEND_PORT, 1));
    fx.set_backend(4, backend(NO_NEIGH, BACKEND_PORT, 1));
    let mut down = backend(B1, BACKEND_PORT, 1);
    down.state = backend_state::DOWN;
    fx.set_backend(5, down);
    let now = monotonic_ns();
    fx.insert_flow(
        flow_key((A_CLIENT, A_PORT), (VIP, 80), proto::TCP),
        flow(2, 1, 0, now),
    );
    fx.insert_persist(
        PersistKey {
            group: 4,
            client_addr: addr(A_CLIENT),
        },
        Persist {
            backend_id: 2,
            generation: 1,
            expires_ns: now + 3600 * SEC,
        },
    );
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Tcp(u8),
    Udp,
    Icmp,
    /// An IPv4 frame relabelled with another ethertype.
    EtherType(u16),
}

#[derive(Clone, Debug)]
struct Input {
    kind: Kind,
    /// A reply from a backend (arriving on the backend port) instead of a client's packet.
    reply: bool,
    /// Arrives on the other port than its direction says.
    wrong_port: bool,
    client: Ipv4Addr,
    cport: u16,
    vport: u16,
    server: Ipv4Addr,
    ttl: u8,
    frag: u16,
    options: bool,
    payload: Vec<u8>,
    edits: Vec<Edit>,
    /// Set lengths and checksums right again after the edits.
    fix: bool,
}

const TOKENS: &[&[u8]] = &[
    b"\x45",
    b"\x46",
    b"\x4f",
    b"\x08\x00",
    b"\x81\x00",
    b"\x86\xdd",
    b"\x06",
    b"\x11",
    b"\xff",
    b"\x00",
    b"\x00\x50",
    b"\x1f\x90",
    b"\xcb\x00\x71\x0a",
];

fn input() -> impl Strategy<Value = Input> {
    let kind = prop_oneof![
        6 => any::<u8>().prop_map(Kind::Tcp),
        3 => Just(Kind::Udp),
        1 => Just(Kind::Icmp),
        1 => proptest::sample::select(&[0x86dd_u16, 0x0806, 0x8100, 0x88a8, 0x0000][..])
            .prop_map(Kind::EtherType),
    ];
    (
        (kind, prop::bool::weighted(0.3), prop::bool::weighted(0.1)),
        (
            proptest::sample::select(&[CLIENT, A_CLIENT, OTHER_CLIENT, NEAR][..]),
            prop_oneof![Just(40000u16), Just(A_PORT), any::<u16>()],
            prop_oneof![
                4 => proptest::sample::select(&[80u16, 81, 53, 443, 8080][..]),
                1 => any::<u16>()
            ],
            proptest::sample::select(&[B1, B2, NEAR, VIP][..]),
        ),
        (
            prop_oneof![4 => Just(64u8), 1 => Just(1u8), 1 => Just(0u8), 1 => any::<u8>()],
            prop_oneof![4 => Just(0x4000u16), 1 => Just(0x2000), 1 => Just(0x0001), 1 => any::<u16>()],
            prop::bool::weighted(0.1),
        ),
        proptest::collection::vec(any::<u8>(), 0..48),
        proptest::collection::vec(fuzz::edit(TOKENS), 0..4),
        prop::bool::weighted(0.5),
    )
        .prop_map(
            |(
                (kind, reply, wrong_port),
                (client, cport, vport, server),
                (ttl, frag, options),
                payload,
                edits,
                fix,
            )| Input {
                kind,
                reply,
                wrong_port,
                client,
                cport,
                vport,
                server,
                ttl,
                frag,
                options,
                payload,
                edits,
                fix,
            },
        )
}

impl Input {
    /// The frame, and whether it comes in on the client port.
    fn frame(&self) -> (Vec<u8>, bool) {
        let (src, dst, sport, dport) = if self.reply {
            (self.server, self.client, BACKEND_PORT, self.cport)
        } else {
            (self.client, VIP, self.cport, self.vport)
        };
        let l4 = match self.kind {
            Kind::Tcp(flags) => L4::Tcp {
                sport,
                dport,
                flags,
                seq: 0x0102_0304,
                ack: 0x0a0b_0c0d,
            },
            Kind::Udp => L4::Udp {
                sport,
                dport,
                no_checksum: false,
            },
            Kind::Icmp => L4::Raw { proto: 1 },
            Kind::EtherType(_) => L4::Udp {
                sport,
                dport,
                no_checksum: false,
            },
        };
        let mut f = Frame::new(src, dst, l4);
        f.ttl = self.ttl;
        f.frag = self.frag;
        if self.options {
            f.options = vec![1, 1, 1, 0];
        }
        f.payload = self.payload.clone();
        let client_side = self.reply == self.wrong_port;
        (f.dst_mac, f.src_mac) = if client_side {
            (LBC_MAC, CLIENT_MAC)
        } else {
            (LBB_MAC, BACKEND1_MAC)
        };
        let mut bytes = f.build();
        if let Kind::EtherType(t) = self.kind {
            bytes[12..14].copy_from_slice(&t.to_be_bytes());
        }
        let mut bytes = fuzz::apply_all(&bytes, &self.edits);
        if self.fix {
            fix_up(&mut bytes);
        }
        (bytes, client_side)
    }
}

/// Sets the IPv4 total length to the frame's and recomputes the header and TCP/UDP
/// checksums, where the headers are there to hold them.
fn fix_up(b: &mut [u8]) {
    if b.len() < ETH_HLEN + 20 || b[12..14] != [0x08, 0x00] {
        return;
    }
    let ihl = usize::from(b[ETH_HLEN] & 0x0f) * 4;
    let l4 = ETH_HLEN + ihl;
    if ihl < 20 || b.len() < l4 {
        return;
    }
    let Ok(tot) = u16::try_from(b.len() - ETH_HLEN) else {
        return;
    };
    b[16..18].copy_from_slice(&tot.to_be_bytes());
    b[24..26].copy_from_slice(&[0, 0]);
    let c = packet::checksum(&[&b[ETH_HLEN..l4]]);
    b[24..26].copy_from_slice(&c.to_be_bytes());
    let proto = b[23];
    let Ok(l4_len) = u16::try_from(b.len() - l4) else {
        return;
    };
    let field = match proto {
        6 if b.len() >= l4 + 20 => l4 + 16,
        17 if b.len() >= l4 + 8 => {
            b[l4 + 4..l4 + 6].copy_from_slice(&l4_len.to_be_bytes());
            l4 + 6
        }
        _ => return,
    };
    b[field..field + 2].copy_from_slice(&[0, 0]);
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&b[26..34]);
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&l4_len.to_be_bytes());
    let mut c = packet::checksum(&[&pseudo, &b[l4..]]);
    if proto == 17 && c == 0 {
        c = 0xffff;
    }
    b[field..field + 2].copy_from_slice(&c.to_be_bytes());
}

/// Bytes the program may rewrite in a frame with a 20-byte IPv4 header: MACs, TTL, header
/// checksum, addresses, ports, and the TCP or UDP checksum.
fn may_change(i: usize) -> bool {
    i < 12 || i == 22 || (24..38).contains(&i) || (40..42).contains(&i) || (50..52).contains(&i)
}

fn ip(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// One of the program's two ports and its static neighbours.
struct Port {
    mac: [u8; 6],
    ifindex: u32,
    neighbours: [([u8; 6], Ipv4Addr); 2],
}

fn ports(fx: &Fixture) -> [Port; 2] {
    [
        Port {
            mac: LBC_MAC,
            ifindex: fx.lbc,
            neighbours: [(CLIENT_MAC, CLIENT), (NEAR_BACKEND_MAC, NEAR)],
        },
        Port {
            mac: LBB_MAC,
            ifindex: fx.lbb,
            neighbours: [(BACKEND1_MAC, B1), (BACKEND2_MAC, B2)],
        },
    ]
}

/// How many frames ended how: DROP, PASS, TX, REDIRECT (by verdict), refused by the
/// kernel, and rewritten; printed so a run shows how deep its frames got.
#[derive(Default)]
struct Outcomes([AtomicU64; 7]);

const REFUSED: usize = 5;
const REWRITTEN: usize = 6;

impl Outcomes {
    fn count(&self, i: usize) {
        if let Some(c) = self.0.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn show(&self) -> String {
        let n = |i: usize| self.0[i].load(Ordering::Relaxed);
        format!(
            "drop {}, pass {}, tx {}, redirect {}, refused by the kernel {}, rewritten {}",
            n(XDP_DROP as usize),
            n(XDP_PASS as usize),
            n(XDP_TX as usize),
            n(XDP_REDIRECT as usize),
            n(REFUSED),
            n(REWRITTEN)
        )
    }
}

fn check(fx: &Fixture, case: &Input, seen: &Outcomes) -> Result<(), TestCaseError> {
    let (frame, client_side) = case.frame();
    prop_assume!(!frame.windows(MARKER.len()).any(|w| w == MARKER));
    let ingress = if client_side { fx.lbc } else { fx.lbb };
    let (verdict, out) = match fx.try_run(ingress, &frame) {
        Ok(r) => r,
        Err(e) => {
            seen.count(REFUSED);
            prop_assert!(
                frame.len() < ETH_HLEN,
                "kernel refused a {}-byte frame: {}",
                frame.len(),
                e
            );
            return Ok(());
        }
    };
    prop_assert!(
        frame.len() >= ETH_HLEN,
        "kernel ran a {}-byte frame",
        frame.len()
    );
    seen.count(verdict as usize);
    prop_assert!(
        [XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT].contains(&verdict),
        "verdict {}",
        verdict
    );
    prop_assert_eq!(out.len(), frame.len(), "the frame changed length");
    prop_assert!(
        !out.windows(MARKER.len()).any(|w| w == MARKER),
        "flow A's marker in another flow's output"
    );
    let changed: Vec<usize> = (0..frame.len()).filter(|&i| out[i] != frame[i]).collect();
    if changed.iter().any(|&i| i >= 12) {
        prop_assert!(
            frame.len() >= 38 && frame[14] == 0x45,
            "a frame without a plain IPv4 header was rewritten at {:?}",
            changed
        );
    }
    for &i in &changed {
        prop_assert!(
            may_change(i),
            "byte {} changed ({:#04x} -> {:#04x})",
            i,
            frame[i],
            out[i]
        );
    }
    // Where it goes out.
    if verdict == XDP_TX || verdict == XDP_REDIRECT {
        let smac: [u8; 6] = out[6..12].try_into().unwrap_or_default();
        let dmac: [u8; 6] = out[0..6].try_into().unwrap_or_default();
        let port = ports(fx).into_iter().find(|p| p.mac == smac);
        prop_assert!(
            port.is_some(),
            "source MAC {:02x?} is no port of ours",
            smac
        );
        let Some(Port {
            ifindex,
            neighbours,
            ..
        }) = port
        else {
            return Ok(());
        };
        prop_assert_eq!(
            verdict == XDP_TX,
            ifindex == ingress,
            "TX must leave by the ingress port, REDIRECT by the other"
        );
        let neighbour = neighbours.iter().find(|(mac, _)| *mac == dmac);
        prop_assert!(
            neighbour.is_some(),
            "destination MAC {:02x?} is no neighbour there",
            dmac
        );
        if let Some((_, to)) = neighbour {
            let dst = ip(&out, 30);
            prop_assert!(
                dst == *to || dst == VIP,
                "sent to {} by the MAC of {}",
                dst,
                to
            );
        }
    }

    if changed.is_empty() {
        return Ok(());
    }
    seen.count(REWRITTEN);
    if verify_checksums(&frame).is_ok()
        && let Err(e) = verify_checksums(&out)
    {
        return Err(TestCaseError::fail(format!("checksums broken: {e}")));
    }

    // What it became: the flow's own translation, never another flow's.
    let (src_in, dst_in, src_out, dst_out) =
        (ip(&frame, 26), ip(&frame, 30), ip(&out, 26), ip(&out, 30));
    let l4 = frame[23];
    let (sport_in, dport_in) = (u16_at(&frame, 34), u16_at(&frame, 36));
    if dst_out != dst_in {
        // Forward NAT: to the backend the service (or flow A's entry) chose, on its port.
        prop_assert_eq!(src_out, src_in);
        prop_assert_eq!(dst_in, VIP);
        prop_assert_eq!(u16_at(&out, 36), BACKEND_PORT);
        let allowed: &[Ipv4Addr] = match (l4, dport_in) {
            // A's own packets follow its entry, or Maglev once the entry is gone (evicted
            // under the fuzzer's flows, or ended by a FIN or RST of the fuzzer's).
            (proto::TCP, 80) if (src_in, sport_in) == (A_CLIENT, A_PORT) => &[B2, B1],
            (proto::TCP, 80) => &[B1],
            (proto::UDP, 53) => &[B2],
            (proto::TCP, 8080) if src_in == A_CLIENT => &[B2],
            _ => {
                return Err(TestCaseError::fail(format!(
                    "{l4}/{dport_in} is no NAT service, yet sent to {dst_out}"
                )));
            }
        };
        prop_assert!(
            allowed.contains(&dst_out),
            "flow {}:{} -> {} sent to {}",
            src_in,
            sport_in,
            dport_in,
            dst_out
        );
    } else if src_out != src_in {
        // Reply NAT: back to the client from the VIP and the service's port.
        prop_assert_eq!(src_out, VIP);
        let vport = u16_at(&out, 34);
        prop_assert!(
            matches!((l4, vport), (proto::TCP, 80 | 8080) | (proto::UDP, 53)),
            "reply from {}:{} as VIP port {}",
            src_in,
            sport_in,
            vport
        );
    } else if changed.iter().any(|&i| i >= 12) {
        return Err(TestCaseError::fail(format!(
            "headers changed without a translation: {changed:?}"
        )));
    } else {
        // DSR: only the MACs, toward the backend the DSR service picks.
        prop_assert_eq!((l4, dport_in, dst_in), (proto::TCP, 443, VIP));
        prop_assert_eq!(&out[0..6], &BACKEND2_MAC[..]);
    }
    Ok(())
}

#[test]
#[ignore = "needs root: runs the XDP program in a private network namespace"]
fn frames_keep_to_their_flow() {
    let mut fx = Fixture::new();
    setup(&mut fx);
    // Flow A, with its marker, goes to its backend first.
    let mut a = Frame::tcp((A_CLIENT, A_PORT), (VIP, 80), packet::ACK | packet::PSH);
    a.payload = MARKER.to_vec();
    (a.dst_mac, a.src_mac) = (LBC_MAC, CLIENT_MAC);
    let (verdict, out) = fx.run(fx.lbc, &a.build());
    assert_eq!(verdict, XDP_REDIRECT, "flow A is forwarded");
    assert_eq!(ip(&out, 30), B2, "flow A goes to its own backend");
    let seen = Outcomes::default();
    fuzz::run("xdp", input(), |case| check(&fx, &case, &seen));
    println!("fuzz xdp: {}", seen.show());
}
