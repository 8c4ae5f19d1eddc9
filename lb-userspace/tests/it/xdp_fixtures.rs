//! BPF_PROG_TEST_RUN fixtures for the latch XDP program: one frame in, the verdict and the
//! exact frame out, Katran-fixture style. Needs root (prints a SKIP line otherwise). Each test
//! loads its own program instance with private maps inside a private network namespace whose
//! static routes and neighbours make `bpf_fib_lookup` deterministic.
//!
//! Run: `cargo test -p lb-userspace --test xdp_fixtures`

mod packet;

mod xdp_env;

use std::net::Ipv4Addr;

use lb_common::{
    Backend, Flow, FlowKey, Persist, PersistKey, Service, ServiceKey, backend_state, flow_flags,
    proto, service_flags, stat,
};
use packet::{ACK, Frame, L4, PSH, SYN, verify_checksums};
use xdp_env::*;

const XDP_ABORTED: u32 = 0;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
const B1: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const B2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
const NEAR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
const NO_NEIGH: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 99);
const CPORT: u16 = 40000;
const SVC_ID: u32 = 1;
const SEC: u64 = 1_000_000_000;
/// How far the program's clock (CLOCK_MONOTONIC at tick resolution, `bpf_ktime_get_coarse_ns`)
/// may lag the test's own reading: one tick, at most 10 ms on kernels with HZ >= 100.
const CLOCK_SLACK: u64 = 50_000_000;

fn addr(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

fn port(p: u16) -> u16 {
    p.to_be()
}

fn backend(ip: Ipv4Addr, p: u16, generation: u32) -> Backend {
    Backend {
        addr: addr(ip),
        port: port(p),
        _pad: 0,
        state: backend_state::UP,
        generation,
    }
}

fn flow_key(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), l4: u8) -> FlowKey {
    FlowKey {
        src_addr: addr(src.0),
        dst_addr: addr(dst.0),
        src_port: port(src.1),
        dst_port: port(dst.1),
        proto: l4,
        _pad: [0; 3],
    }
}

/// Service 1 on VIP:80/`l4` with `flags`; backends 1 = B1:8080, 2 = B2:8080, 3 = NEAR:8080
/// (reached back through the ingress port), 4 = NO_NEIGH:8080; the live maglev table (slot 1,
/// to prove the slot is honoured) maps everything to `maglev_backend`.
fn setup(fx: &mut Fixture, l4: u8, flags: u32, maglev_backend: u32) -> Service {
    let svc = Service {
        id: SVC_ID,
        flags,
        maglev_slot: 1,
        persist_group: SVC_ID,
        persist_ttl_ns: 300 * SEC,
    };
    fx.add_service(
        ServiceKey {
            vip: addr(VIP),
            port: port(80),
            proto: l4,
            _pad: 0,
        },
        svc,
    );
    fx.set_backend(1, backend(B1, 8080, 1));
    fx.set_backend(2, backend(B2, 8080, 1));
    fx.set_backend(3, backend(NEAR, 8080, 1));
    fx.set_backend(4, backend(NO_NEIGH, 8080, 1));
    // The idle slot points elsewhere: a program reading the wrong slot fails the tests.
    fx.fill_maglev(SVC_ID, 0, &[2]);
    fx.fill_maglev(SVC_ID, 1, &[maglev_backend]);
    svc
}

fn from_client(l4: u8, flags: u8) -> Frame {
    let mut f = if l4 == proto::TCP {
        Frame::tcp((CLIENT, CPORT), (VIP, 80), flags)
    } else {
        Frame::udp((CLIENT, CPORT), (VIP, 80))
    };
    f.src_mac = CLIENT_MAC;
    f.dst_mac = LBC_MAC;
    f
}

/// What a NAT-forwarded client frame must look like after a successful fib lookup.
fn natted(f: &Frame, to: Ipv4Addr, to_port: u16, dmac: [u8; 6], smac: [u8; 6]) -> Vec<u8> {
    let mut e = f.clone();
    e.dst = to;
    e.ttl -= 1;
    e.dst_mac = dmac;
    e.src_mac = smac;
    match &mut e.l4 {
        L4::Tcp { dport, .. } | L4::Udp { dport, .. } => *dport = to_port,
        L4::Raw { .. } => unreachable!(),
    }
    e.build()
}

/// Exactly these counters (global STATS) moved, by these amounts.
fn assert_stats(fx: &Fixture, expected: &[(u32, u64)]) {
    let mut want = vec![0u64; lb_common::stat::COUNT as usize];
    for &(i, n) in expected {
        want[i as usize] += n;
    }
    assert_eq!(fx.stats(), want, "STATS (index = lb_common::stat)");
}

fn assert_out(verdict: u32, out: &[u8], want_verdict: u32, want: &[u8]) {
    assert_eq!(verdict, want_verdict, "verdict");
    assert_eq!(out, want, "output frame");
    verify_checksums(out).expect("output checksums");
}

fn l3_len(frame: &[u8]) -> u64 {
    u64::from(u16::from_be_bytes([frame[16], frame[17]]))
}

// ---------------------------------------------------------------------------------------
// Pass-through paths

#[test]
fn non_vip_tcp_passes_untouched() {
    let Some(mut fx) = Fixture::new("non_vip_tcp_passes_untouched") else {
        return;
    };
    setup(&mut fx, proto::TCP, 0, 1);
    // Right address, wrong port; then a wrong address.
    let mut f = from_client(proto::TCP, SYN);
    if let L4::Tcp { dport, .. } = &mut f.l4 {
        *dport = 81;
    }
    let input = f.build();
    let (v, out) = fx.run(fx.lbc, &input);
    assert_out(v, &out, XDP_PASS, &input);
    f.dst = Ipv4Addr::new(192, 0, 2, 1);
    let input = f.build();
    let (v, out) = fx.run(fx.lbc, &input);
    assert_out(v, &out, XDP_PASS, &input);
    assert_stats(&fx, &[(stat::PASS_NOT_VIP, 2)]);
    assert_eq!(fx.service_traffic(SVC_ID).packets, 0);
}

// ---------------------------------------------------------------------------------------
// New flows

#[test]
fn new_tcp_flow_nat_with_port_mapping_redirects() {
    let Some(mut fx) = Fixture::new("new_tcp_flow_nat_with_port_mapping_redirects") else {
        return;
    };
    setup(&mut fx, proto::TCP, 0, 1);
    let f = from_client(proto::TCP, SYN);
    let input = f.build();
    let (v, out) = fx.run(fx.lbc, &input);
    assert_out(
        v,
        &out,
        XDP_REDIRECT,
        &natted(&f, B1, 8080, BACKEND1_MAC, LBB_MAC),
    );
    assert_stats(
        &fx,
        &[(stat::NEW_FLOW_MAGLEV, 1), (stat::VERDICT_REDIRECT, 1)],
    );

    let fwd = fx
        .flow(&flow_key((CLIENT, CPORT), (VIP, 80), proto::TCP))
        .expect("forward conntrack entry");
    assert_eq!(
        (fwd.backend_id, fwd.generation, fwd.service_id, fwd.flags),
        (1, 1, SVC_ID, 0)
    );
    let now = monotonic_ns();
    assert!(fwd.last_seen_ns > 0 && fwd.last_seen_ns <= now);
    let rev = fx
        .flow(&flow_key((B1, 8080), (CLIENT, CPORT), proto::TCP))
        .expect("reply conntrack entry");
    assert_eq!(rev.flags, flow_flags::REPLY);
    assert_eq!(
        (rev.vip, rev.vport, rev.backend_id),
        (addr(VIP), port(80), 1)
    );

    let bytes = l3_len(&input);
    let s = fx.service_traffic(SVC_ID);
    assert_eq!((s.packets, s.bytes, s.new_flows), (1, bytes, 1));
    let b = fx.backend_traffic(1);
    assert_eq!((b.packets, b.bytes, b.new_flows), (1, bytes, 1));
    assert_eq!(fx.backend_traffic(2).packets, 0);
}

#[test]
fn new_udp_flow_nat_fixes_udp_checksum() {
    let Some(mut fx) = Fixture::new("new_udp_flow_nat_fixes_udp_checksum") else {
        return;
    };
    setup(&mut fx, proto::UDP, 0, 2);
    let f = from_client(proto::UDP, 0);
    let (v, out) = fx.run(fx.lbc, &f.build());
    assert_out(
        v,
        &out,
        XDP_REDIRECT,
        &natted(&f, B2, 8080, BACKEND2_MAC, LBB_MAC),
    );
    assert_stats(
        &fx,
        &[(stat::NEW_FLOW_MAGLEV, 1), (stat::VERDICT_REDIRECT, 1)],
    );

    // A second datagram of the flow is a conntrack hit.
    let (v, out) = fx.run(fx.lbc, &f.build());
    assert_out(
        v,
        &out,
        XDP_REDIRECT,
        &natted(&f, B2, 8080, BACKEND2_MAC, LBB_MAC),
    );
    assert_eq!(fx.stat(stat::CONNTRACK_HIT), 1);
    let s = fx.service_traffic(SVC_ID);
    assert_eq!((s.packets, s.new_flows), (2, 1));
}

#[test]
fn udp_without_checksum_keeps_zero_checksum() {
    let Some(mut fx) = Fixture::new("udp_without_checksum_keeps_zero_checksum") else {
        return;
    };
    setup(&mut fx, proto::UDP, 0, 1);
    let mut f = from_client(proto::UDP, 0);
    f.l4 = L4::Udp {
        sport: CPORT,
        dport: 80,
        no_checksum: true,
    };
    let (v, out) = fx.run(fx.lbc, &f.build());
    let want = natted(&f, B1, 8080, BACKEND1_MAC, LBB_MAC);
    assert_out(v, &out, XDP_REDIRECT, &want);
    assert_eq!(&out[40..42], &[0, 0], "UDP checksum stays 0");
}

#[test]
fn new_flow_dsr_rewrites_only_macs() {
    let Some(mut fx) = Fixture::new("new_flow_dsr_rewrites_only_macs") else {
        return;
    };
    setup(&mut fx, proto::TCP, service_flags::DSR, 2);
    let f = from_client(proto::TCP, SYN);
    let (v, out) = fx.run(fx.lbc, &f.build());
    let mut want = f.clone();
    want.dst_mac = BACKEND2_MAC;
    want.src_mac = LBB_MAC;
    assert_out(v, &out, XDP_REDIRECT, &want.build());
    assert_stats(
        &fx,
        &[(stat::NEW_FLOW_MAGLEV, 1), (stat::VERDICT_REDIRECT, 1)],
    );
    let fwd = fx
        .flow(&flow_key((CLIENT, CPORT), (VIP, 80), proto::TCP))
        .expect("forward entry");
    assert_eq!((fwd.backend_id, fwd.flags), (2, flow_flags::DSR));
    assert!(
        fx.flow(&flow_key((B2, 8080), (CLIENT, CPORT), proto::TCP))
            .is_none(),
        "DSR records no reply translation"
    );
}

#[test]
fn backend_behind_ingress_port_is_xdp_tx() {
    let Some(mut fx) = Fixture::new("backend_behind_ingress_port_is_xdp_tx") else {
        return;
    };
    setup(&mut fx, proto::TCP, 0, 3);
    let f = from_client(proto::TCP, SYN);
    let (v, out) = fx.run(fx.lbc, &f.build());
    assert_out(
        v,
        &out,
        XDP_TX,
        &natted(&f, NEAR, 8080, NEAR_BACKEND_MAC, LBC_MAC),
    );
    assert_stats(&fx, &[(stat::NEW_FLOW_MAGLEV, 1), (stat::VERDICT_TX, 1)]);
}

#[test]
fn fib_miss_passes_rewritten_packet_to_stack() {
    let Some(mut fx) = Fixture::new("fib_miss_passes_rewritten_packet_to_stack") else {
        return;
    };
    setup(&mut fx, proto::TCP, 0, 4);
    let f = from_client(proto::TCP, SYN);
    let (v, out) = fx.run(fx.lbc, &f.build());
    // Addresses rewritten, TTL and MACs left for the kernel's forwarding path.
    let mut want = f.clone();
    want.dst = NO_NEIGH;
    want.l4 = L4::Tcp {
        sport: CPORT,
        dport: 8080,
        flags: SYN,
        seq: 0x0102_0304,
        ack: 0,
    };
    assert_out(v, &out, XDP_PASS, &want.build());
    assert_stats(&fx, &[(stat::NEW_FLOW_MAGLEV, 1), (stat::PASS_FIB_MISS, 1)]);
    assert_eq!(fx.backend_traffic(4).new_flows, 1);
}

#[test]
fn ttl_one_is_left_to_the_stack() {
    let Some(mut fx) = Fixture::new("ttl_one_is_left_to_the_stack") else {
        return;
    };
    setup(&mut fx, proto::TCP, 0, 1);
    let mut f = from_client(proto::TCP, SYN);
    f.ttl = 1;
    let input = f.build();
    let (v, out) = fx.run(fx.lbc, &input);
    assert_out(v, &out, XDP_PASS, &input);
    assert_stats(&fx, &[(stat::NEW_FLOW_MAGLEV, 1), (stat::PASS_FIB_MISS, 1)]);
}

#[test]
fn no_usable_backend_drops() {
    let Some(mut fx) = Fixture::new("no_usable_backend_drops") else {
        return;
    };
    setup(&mut fx, proto::TCP, 0, 0);
    let input = from_client(proto::TCP, SYN).build();
    let (v, _) = fx.run(fx.lbc, &input);
    assert_eq!(v, XDP_DROP);
    // A DOWN backend in the table is no better than an empty slot.
    fx.fill_maglev(SVC_ID, 1, &[1]);
    let mut b1 = backend(B1, 8080, 1);
    b1.state = backend_state::DOWN;
    fx.set_backend(1, b1);
    let (v, _) = fx.run(fx.lbc, &input);
    assert_eq!(v, XDP_DROP);
    assert_stats(&fx, &[(stat::DROP_NO_BACKEND, 2)]);
    assert!(
        fx.flow(&flow_key((CLIENT, CPORT), (VIP, 80), proto::TCP))
            .is_none()
    );
}

#[test]
fn maglev_spreads_flows_over_backends() {
    let Some(mut fx) = Fixture::new("maglev_spreads_flows_over_backends") else {
        return;
    };
    setup(&mut fx, proto::UDP, 0, 1);
    fx.fill_maglev(SVC_ID, 1, &[1, 2]);
    let mut seen = [0u32; 2];
    for i in 0..64u16 {
        let mut f = from_client(proto::UDP, 0);
        f.l4 = L4::Udp {
            sport: 20000 + i * 7,
            dport: 80,
            no_checksum: false,
        };
        let (v, out) = fx.run(fx.lbc, &f.build());
        assert_eq!(v, XDP_REDIRECT);
        verify_checksums(&out).expect("checksums");
        let dst = Ipv4Addr::new(out[30], out[31], out[32], out[33]);
        match dst {
            d if d == B1 => seen[0] += 1,
            d if d == B2 => seen[1] += 1,
            d => panic!("unexpected backend {d}"),
        }
        // The same flow again must stick to the same backend (conntrack).
        let (_, again) = fx.run(fx.lbc, &f.build());
        assert_eq!(&again[30..34], &out[30..34]);
    }
    assert!(
        seen[0] >= 8 && seen[1] >= 8,
        "64 flows over 2 backends: {seen:?}"
    );
    assert_eq!(fx.stat(stat::NEW_FLOW_MAGLEV), 64);
    assert_eq!(fx.stat(stat::CONNTRACK_HIT), 64);
}

// ---------------------------------------------------------------------------------------
// Established flows

#[test]
fn conntrack_hit_follows_recorded_backend() {
    let Some(mut fx) = Fixture::new("conntrack_hit_follows_recorded_backend") else {
        return;
    };
    setup(&mut fx, proto::TCP, 0, 1);
    let key = flow_key((CLIENT, CPORT), (VIP, 80), proto::TCP);
    let old = monotonic_ns() - 5 * SEC;
    fx.insert_flow(
        key,
        Flow {
            backend_id: 2,
            generation: 1,
            service_id: SVC_ID,
            flags: 0,
            vip: 0,
            vport: 0,
            _pad: 0,
            last_seen_ns: old,
        },
    );
    let f = from_client(proto::TCP, ACK | PSH);
    let (v, out) = fx.run(fx.lbc, &f.build());
    assert_out(
        v,
        &out,
        XDP_REDIRECT,
        &natted(&f, B2, 8080, BACKEND2_MAC, LBB_MAC),
    );
    assert_stats(
        &fx,
        &[(stat::CONNTRACK_HIT, 1), (stat::VERDICT_REDIRECT, 1)],
    );
    let s = fx.service_traffic(SVC_ID);
    assert_eq!((s.packets, s.new_flows), (1, 0));
    assert!(
        fx.flow(&key).expect("entry").last_seen_ns > old,
        "last_seen refreshed"
    );
}

/// An established flow is forwarded from its conntrack entry alone while the entry was
/// refreshed within the last second; past that, SERVICES is consulted again. Here the entry
/// carries a wrong service id and DSR although the service is NAT: the periodic check
/// forwards by the service and corrects the entry, and the next packet (now on the
/// conntrack-only path) follows the corrected entry.
#[test]
fn conntrack_refresh_revalidates_service() {
    let Some(mut fx) = Fixture::new("conntrack_refresh_revalidates_service") else {
        return;
    };
    setup(&mut fx, proto::TCP, 0, 1);
    let key = flow_key((CLIENT, CPORT), (VIP, 80), proto::TCP);
    let old = monotonic_ns() - 5 * SEC;
    fx.insert_flow(
        key,
        Flow {
            backend_id: 2,
            generation: 1,
            service_id: 7,
            flags: flow_flags::DSR,
            vip: 0,
            vport: 0,
            _pad: 0,
            last_seen_ns: old,
        },
    );
    let f = from_client(proto::TCP, ACK | PSH);
    let want = natted(&f, B2, 8080, BACKEND2_MAC, LBB_MAC);
    for _ in 0..2 {
        let (v, out) = fx.run(fx.lbc, &f.build());
        assert_out(v, &out, XDP_REDIRECT, &want);
    }
    let e = fx.flow(&key).expect("entry");
    assert_eq!((e.service_id, e.flags, e.backend_id), (SVC_ID, 0, 2));
    assert!(e.last_seen_ns > old, "last_seen refreshed");
    assert_stats(
        &fx,
        &[(stat::CONNTRACK_HIT, 2), (stat::VERDICT_REDIRECT, 2)],
    );
    let s = fx.service_traffic(SVC_ID);
    assert_eq!((s.packets, s.new_flows), (2, 0));
    assert_eq!(fx.service_traffic(7).packets, 0);
}

/// A flow whose service is gone (here: an entry for a port no service listens on) is not
/// forwarded once its entry is due for the periodic check: the packet is not for a VIP.
#[test]
fn conntrack_entry_of_deleted_service_passes() {
    let Some(mut fx) = Fixture::new("conntrack_entry_of_deleted_service_passes") else {
        return;
    };
    setup(&mut fx, proto::TCP, 0, 1);
    let key = flow_key((CLIENT, CPORT), (VIP, 81), proto::TCP);
    let old = monotonic_ns() - 5 * SEC;
    let flow = Flow {
        backend_id: 1,
        generation: 1,
        service_id: SVC_ID,
        flags: 0,
        vip: 0,
        vport: 0,
        _pad: 0,
        last_seen_ns: old,
    };
    fx.insert_flow(key, flow);
    let mut f = from_client(proto::TCP, ACK | PSH);
    if let L4::Tcp { dport, .. } = &mut f.l4 {
        *dport = 81;
    }
    let input = f.build();
    let (v, out) = fx.run(fx.lbc, &input);
    assert_out(v, &out, XDP_PASS, &input);
    assert_stats(&fx, &[(stat::PASS_NOT_VIP, 1)]);
    assert_eq!(fx.flow(&key), Some(flow), "entry untouched");
}

#[test]
fn stale_conntrack_entry_is_rehashed() {
    let Some(mut fx) = Fixture::new("stale_conntrack_entry_is_rehashed") else {
        return;
    };
    setup(&mut fx, proto::TCP, 0, 1);
    let key = flow_key((CLIENT, CPORT), (VIP, 80), proto::TCP);
    // Backend 2 was replaced since (generation 1 -> 2).
    fx.set_backend(2, backend(B2, 8080, 2));
    fx.insert_flow(
        key,
        Flow {
            backend_id: 2,
            generation: 1,
            service_id: SVC_ID,
            ..Default::default()
        },
    );
    let f = from_client(proto::TCP, ACK);
    let (v, out) = fx.run(fx.lbc, &f.build());
    assert_out(
        v,
        &out,
        XDP_REDIRECT,
        &natted(&f, B1, 8080, BACKEND1_MAC, LBB_MAC),
    );
    assert_stats(
        &fx,
        &[(stat::NEW_FLOW_MAGLEV, 1), (stat::VERDICT_REDIRECT, 1)],
    );
    assert_eq!(fx.flow(&key).expect("entry").backend_id, 1);
}

// ---------------------------------------------------------------------------------------
// Persistence

fn persist_key() -> PersistKey {
    PersistKey {
        group: SVC_ID,
        client_addr: addr(CLIENT),
    }
}

#[test]
fn persistence_hit_overrides_maglev() {
    let Some(mut fx) = Fixture::new("persistence_hit_overrides_maglev") else {
        return;
    };
    setup(&mut fx, proto::TCP, service_flags::PERSIST_CLIENT_IP, 1);
    let before = monotonic_ns();
    fx.insert_persist(
        persist_key(),
        Persist {
            backend_id: 2,
            generation: 1,
            expires_ns: before + 10 * SEC,
        },
    );
    let f = from_client(proto::TCP, SYN);
    let (v, out) = fx.run(fx.lbc, &f.build());
    assert_out(
        v,
        &out,
        XDP_REDIRECT,
        &natted(&f, B2, 8080, BACKEND2_MAC, LBB_MAC),
    );
    assert_stats(&fx, &[(stat::PERSIST_HIT, 1), (stat::VERDICT_REDIRECT, 1)]);
    let p = fx.persist_entry(&persist_key()).expect("pin kept");
    assert_eq!(p.backend_id, 2);
    assert!(
        p.expires_ns >= before + 300 * SEC - CLOCK_SLACK,
        "pin refreshed to now + ttl"
    );
}

#[test]
fn expired_persistence_falls_back_to_maglev_and_repins() {
    let Some(mut fx) = Fixture::new("expired_persistence_falls_back_to_maglev_and_repins") else {
        return;
    };
    setup(&mut fx, proto::TCP, service_flags::PERSIST_CLIENT_IP, 1);
    let before = monotonic_ns();
    fx.insert_persist(
        persist_key(),
        Persist {
            backend_id: 2,
            generation: 1,
            expires_ns: before - CLOCK_SLACK,
        },
    );
    let f = from_client(proto::TCP, SYN);
    let (v, out) = fx.run(fx.lbc, &f.build());
    assert_out(
        v,
        &out,
        XDP_REDIRECT,
        &natted(&f, B1, 8080, BACKEND1_MAC, LBB_MAC),
    );
    assert_stats(
        &fx,
        &[
            (stat::PERSIST_EXPIRED, 1),
            (stat::NEW_FLOW_MAGLEV, 1),
            (stat::VERDICT_REDIRECT, 1),
        ],
    );
    let p = fx.persist_entry(&persist_key()).expect("re-pinned");
    assert_eq!((p.backend_id, p.generation), (1, 1));
    assert!(p.expires_ns >= before + 300 * SEC - CLOCK_SLACK);
}

#[test]
fn persistence_to_stale_backend_is_expired() {
    let Some(mut fx) = Fixture::new("persistence_to_stale_backend_is_expired") else {
        return;
    };
    setup(&mut fx, proto::UDP, service_flags::PERSIST_CLIENT_IP, 1);
    fx.insert_persist(
        persist_key(),
        Persist {
            backend_id: 2,
            generation: 0, // backend 2 is generation 1 now
            expires_ns: monotonic_ns() + 100 * SEC,
        },
    );
    let f = from_client(proto::UDP, 0);
    let (v, out) = fx.run(fx.lbc, &f.build());
    assert_out(
        v,
        &out,
        XDP_REDIRECT,
        &natted(&f, B1, 8080, BACKEND1_MAC, LBB_MAC),
    );
    assert_eq!(fx.stat(stat::PERSIST_EXPIRED), 1);
}

// ---------------------------------------------------------------------------------------
// NAT replies

fn from_backend(b: Ipv4Addr, bmac: [u8; 6]) -> Frame {
    let mut f = Frame::tcp((b, 8080), (CLIENT, CPORT), SYN | ACK);
    f.src_mac = bmac;
    f.dst_mac = LBB_MAC;
    f
}

fn unnatted(f: &Frame) -> Vec<u8> {
    let mut e = f.clone();
    e.src = VIP;
    e.ttl -= 1;
    e.dst_mac = CLIENT_MAC;
    e.src_mac = LBC_MAC;
    if let L4::Tcp { sport, .. } = &mut e.l4 {
        *sport = 80;
    }
    e.build()
}

#[test]
fn reply_is_translated_back_to_vip() {
    let Some(mut fx) = Fixture::new("reply_is_translated_back_to_vip") else {
        return;
    };
    setup(&mut fx, proto::TCP, 0, 1);
    fx.insert_flow(
        flow_key((B1, 8080), (CLIENT, CPORT), proto::TCP),
        Flow {
            backend_id: 1,
            generation: 1,
            service_id: SVC_ID,
            flags: flow_flags::REPLY,
            vip: addr(VIP),
            vport: port(80),
            _pad: 0,
            last_seen_ns: monotonic_ns(),
        },
    );
    let f = from_backend(B1, BACKEND1_MAC);
    let (v, out) = fx.run(fx.lbb, &f.build());
    assert_out(v, &out, XDP_REDIRECT, &unnatted(&f));
    assert_stats(&fx, &[(stat::REPLY_NAT, 1), (stat::VERDICT_REDIRECT, 1)]);
}

#[test]
fn forward_then_reply_round_trip() {
    let Some(mut fx) = Fixture::new("forward_then_reply_round_trip") else {
        return;
    };
    setup(&mut fx, proto::TCP, 0, 1);
    let f = from_client(proto::TCP, SYN);
    let (v, _) = fx.run(fx.lbc, &f.build());
    assert_eq!(v, XDP_REDIRECT);
    let r = from_backend(B1, BACKEND1_MAC);
    let (v, out) = fx.run(fx.lbb, &r.build());
    assert_out(v, &out, XDP_REDIRECT, &unnatted(&r));
    // A packet from another backend port is not ours.
    let mut other = r.clone();
    other.l4 = L4::Tcp {
        sport: 9999,
        dport: CPORT,
        flags: ACK,
        seq: 1,
        ack: 1,
    };
    let input = other.build();
    let (v, out) = fx.run(fx.lbb, &input);
    assert_out(v, &out, XDP_PASS, &input);
    assert_stats(
        &fx,
        &[
            (stat::NEW_FLOW_MAGLEV, 1),
            (stat::REPLY_NAT, 1),
            (stat::VERDICT_REDIRECT, 2),
            (stat::PASS_NOT_VIP, 1),
        ],
    );
}

// ---------------------------------------------------------------------------------------
// HTTP services

#[test]
fn http_service_passes_to_proxy() {
    let Some(mut fx) = Fixture::new("http_service_passes_to_proxy") else {
        return;
    };
    setup(
        &mut fx,
        proto::TCP,
        service_flags::HTTP | service_flags::FAST_PATH,
        1,
    );
    // No pin: SYN and the rest of the connection go to the local proxy, untouched.
    for flags in [SYN, ACK, ACK | PSH] {
        let input = from_client(proto::TCP, flags).build();
        let (v, out) = fx.run(fx.lbc, &input);
        assert_out(v, &out, XDP_PASS, &input);
    }
    assert_stats(&fx, &[(stat::PASS_TO_PROXY, 3)]);
    assert!(
        fx.flow(&flow_key((CLIENT, CPORT), (VIP, 80), proto::TCP))
            .is_none()
    );
}

#[test]
fn http_without_fast_path_ignores_pins() {
    let Some(mut fx) = Fixture::new("http_without_fast_path_ignores_pins") else {
        return;
    };
    setup(&mut fx, proto::TCP, service_flags::HTTP, 1);
    fx.insert_persist(
        persist_key(),
        Persist {
            backend_id: 2,
            generation: 1,
            expires_ns: monotonic_ns() + 100 * SEC,
        },
    );
    let input = from_client(proto::TCP, SYN).build();
    let (v, out) = fx.run(fx.lbc, &input);
    assert_out(v, &out, XDP_PASS, &input);
    assert_stats(&fx, &[(stat::PASS_TO_PROXY, 1)]);
}

#[test]
fn fast_path_syn_of_pinned_client_is_forwarded() {
    let Some(mut fx) = Fixture::new("fast_path_syn_of_pinned_client_is_forwarded") else {
        return;
    };
    setup(
        &mut fx,
        proto::TCP,
        service_flags::HTTP | service_flags::FAST_PATH,
        1,
    );
    let expires = monotonic_ns() + 100 * SEC;
    fx.insert_persist(
        persist_key(),
        Persist {
            backend_id: 2,
            generation: 1,
            expires_ns: expires,
        },
    );
    let syn = from_client(proto::TCP, SYN);
    let (v, out) = fx.run(fx.lbc, &syn.build());
    assert_out(
        v,
        &out,
        XDP_REDIRECT,
        &natted(&syn, B2, 8080, BACKEND2_MAC, LBB_MAC),
    );
    // The rest of the connection follows conntrack.
    let ack = from_client(proto::TCP, ACK);
    let (v, out) = fx.run(fx.lbc, &ack.build());
    assert_out(
        v,
        &out,
        XDP_REDIRECT,
        &natted(&ack, B2, 8080, BACKEND2_MAC, LBB_MAC),
    );
    assert_stats(
        &fx,
        &[
            (stat::FAST_PATH, 1),
            (stat::CONNTRACK_HIT, 1),
            (stat::VERDICT_REDIRECT, 2),
        ],
    );
    // The agent owns fast-path expiry: XDP does not extend it.
    assert_eq!(
        fx.persist_entry(&persist_key()).expect("pin").expires_ns,
        expires
    );
    let s = fx.service_traffic(SVC_ID);
    assert_eq!((s.packets, s.new_flows), (2, 1));

    // Once the pin expired, a new connection on the same tuple goes to the proxy and the old
    // entry no longer steals its packets.
    fx.insert_persist(
        persist_key(),
        Persist {
            backend_id: 2,
            generation: 1,
            expires_ns: monotonic_ns() - CLOCK_SLACK,
        },
    );
    for flags in [SYN, ACK] {
        let input = from_client(proto::TCP, flags).build();
        let (v, out) = fx.run(fx.lbc, &input);
        assert_out(v, &out, XDP_PASS, &input);
    }
    assert_eq!(fx.stat(stat::PASS_TO_PROXY), 2);
}

// ---------------------------------------------------------------------------------------
// Malformed and irregular input: always XDP_PASS with the frame untouched.

fn assert_untouched(fx: &Fixture, input: &[u8], stat_index: u32) {
    let (v, out) = fx.run(fx.lbc, input);
    assert_eq!(v, XDP_PASS, "verdict");
    assert_eq!(out, input, "frame untouched");
    assert_stats(fx, &[(stat_index, 1)]);
}

#[test]
fn truncated_ethernet() {
    let Some(mut fx) = Fixture::new("truncated_ethernet") else {
        return;
    };
    setup(&mut fx, proto::TCP, 0, 1);
    let full = from_client(proto::TCP, SYN).build();
    // The kernel refuses test frames shorter than an Ethernet header, so the shortest frame
    // the program can see is a bare Ethernet header: IPv4 ethertype, no IP header.
    assert!(
        fx.try_run(fx.lbc, &full[..13]).is_err(),
        "kernel accepts < 14 bytes"
    );
    assert_untouched(&fx, &full[..14], stat::PASS_MALFORMED);
}

#[test]
fn truncated_ip_header() {
    let Some(mut fx) = Fixture::new("truncated_ip_header") else {
        return;
    };
    setup(&mut fx, proto::TCP, 0, 1);
    let full = from_client(proto::TCP, SYN).build();
    assert_untouched(&fx, &full[..14 + 19], stat::PASS_MALFORMED);
}

#[test]
fn ip_total_length_beyond_frame() {
    let Some(mut fx) = Fixture::new("ip_total_length_beyond_frame") else {
        return;
    };
    setup(&mut fx, proto::TCP, 0, 1);
    let full = from_client(proto::TCP, SYN).build();
    // Cut the payload: tot_len now claims more than the frame holds.
    assert_untouched(&fx, &full[..full.len() - 1], stat::PASS_MALFORMED);
}

#[test]
fn truncated_tcp_header() {
    let Some(mut fx) = Fixture::new("truncated_tcp_header") else {
        return;
    };
    setup(&mut fx, proto::TCP, 0, 1);
    let mut f = from_client(proto::TCP, SYN);
    f.payload.clear();
    let full = f.build();
    // A consistent IP header whose TCP header is 19 bytes.
    let mut cut = full[..14 + 20 + 19].to_vec();
    fix_ip_len(&mut cut);
    assert_untouched(&fx, &cut, stat::PASS_MALFORMED);
}

#[test]
fn truncated_udp_header() {
    let Some(mut fx) = Fixture::new("truncated_udp_header") else {
        return;
    };
    setup(&mut fx, proto::UDP, 0, 1);
    let mut f = from_client(proto::UDP, 0);
    f.payload.clear();
    let full = f.build();
    let mut cut = full[..14 + 20 + 7].to_vec();
    fix_ip_len(&mut cut);
    assert_untouched(&fx, &cut, stat::PASS_MALFORMED);
}

/// Sets the IPv4 total length to the frame's and recomputes the header checksum.
fn fix_ip_len(frame: &mut [u8]) {
    let len = (frame.len() - 14) as u16;
    frame[16..18].copy_from_slice(&len.to_be_bytes());
    frame[24..26].copy_from_slice(&[0, 0]);
    let c = packet::checksum(&[&frame[14..34]]);
    frame[24..26].copy_from_slice(&c.to_be_bytes());
}

#[test]
fn tcp_data_offset_too_small() {
    let Some(mut fx) = Fixture::new("tcp_data_offset_too_small") else {
        return;
    };
    setup(&mut fx, proto::TCP, 0, 1);
    let mut bytes = from_client(proto::TCP, SYN).build();
    bytes[14 + 20 + 12] = 4 << 4;
    assert_untouched(&fx, &bytes, stat::PASS_MALFORMED);
}

#[test]
fn ip_options_to_vip() {
    let Some(mut fx) = Fixture::new("ip_options_to_vip") else {
        return;
    };
    setup(&mut fx, proto::TCP, 0, 1);
    let mut f = from_client(proto::TCP, SYN);
    f.options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL
    assert_untouched(&fx, &f.build(), stat::PASS_FRAGMENT_OR_OPTIONS);
}

#[test]
fn ip_options_to_non_vip() {
    let Some(mut fx) = Fixture::new("ip_options_to_non_vip") else {
        return;
    };
    setup(&mut fx, proto::TCP, 0, 1);
    let mut f = from_client(proto::TCP, SYN);
    f.options = vec![1, 1, 1, 0];
    if let L4::Tcp { dport, .. } = &mut f.l4 {
        *dport = 443;
    }
    assert_untouched(&fx, &f.build(), stat::PASS_NOT_VIP);
}

#[test]
fn first_fragment_to_vip() {
    let Some(mut fx) = Fixture::new("first_fragment_to_vip") else {
        return;
    };
    setup(&mut fx, proto::UDP, 0, 1);
    let mut f = from_client(proto::UDP, 0);
    f.frag = 0x2000; // MF, offset 0
    assert_untouched(&fx, &f.build(), stat::PASS_FRAGMENT_OR_OPTIONS);
}

#[test]
fn later_fragment_to_vip() {
    let Some(mut fx) = Fixture::new("later_fragment_to_vip") else {
        return;
    };
    setup(&mut fx, proto::UDP, 0, 1);
    let mut f = from_client(proto::UDP, 0);
    f.frag = 185; // offset 1480 bytes, last fragment
    f.l4 = L4::Raw { proto: proto::UDP };
    assert_untouched(&fx, &f.build(), stat::PASS_FRAGMENT_OR_OPTIONS);
}

#[test]
fn bad_ihl() {
    let Some(mut fx) = Fixture::new("bad_ihl") else {
        return;
    };
    setup(&mut fx, proto::TCP, 0, 1);
    let mut bytes = from_client(proto::TCP, SYN).build();
    bytes[14] = 0x44; // version 4, ihl 4 (16 bytes): impossible
    assert_untouched(&fx, &bytes, stat::PASS_MALFORMED);
}

#[test]
fn ihl_beyond_frame() {
    let Some(mut fx) = Fixture::new("ihl_beyond_frame") else {
        return;
    };
    setup(&mut fx, proto::TCP, 0, 1);
    let mut f = from_client(proto::TCP, SYN);
    f.payload.clear();
    let mut bytes = f.build();
    bytes[14] = 0x4f; // 60-byte header claimed, 40 bytes of IP in total
    assert_untouched(&fx, &bytes, stat::PASS_MALFORMED);
}

#[test]
fn wrong_ip_version() {
    let Some(mut fx) = Fixture::new("wrong_ip_version") else {
        return;
    };
    setup(&mut fx, proto::TCP, 0, 1);
    let mut bytes = from_client(proto::TCP, SYN).build();
    bytes[14] = 0x65;
    assert_untouched(&fx, &bytes, stat::PASS_MALFORMED);
}

#[test]
fn non_ipv4_ethertypes() {
    let Some(mut fx) = Fixture::new("non_ipv4_ethertypes") else {
        return;
    };
    setup(&mut fx, proto::TCP, 0, 1);
    let mut arp = from_client(proto::TCP, SYN).build();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    let (v, out) = fx.run(fx.lbc, &arp);
    assert_out_untouched(v, &out, &arp);
    let mut v6 = arp.clone();
    v6[12..14].copy_from_slice(&[0x86, 0xdd]);
    let (v, out) = fx.run(fx.lbc, &v6);
    assert_out_untouched(v, &out, &v6);
    assert_stats(&fx, &[(stat::PASS_NOT_VIP, 2)]);
}

fn assert_out_untouched(v: u32, out: &[u8], input: &[u8]) {
    assert_eq!(v, XDP_PASS);
    assert_eq!(out, input);
}

#[test]
fn icmp_to_vip_passes() {
    let Some(mut fx) = Fixture::new("icmp_to_vip_passes") else {
        return;
    };
    setup(&mut fx, proto::TCP, 0, 1);
    let mut f = Frame::new(CLIENT, VIP, L4::Raw { proto: 1 });
    // Echo request, checksum not needed by the program.
    f.payload = vec![8, 0, 0, 0, 0, 1, 0, 1];
    assert_untouched(&fx, &f.build(), stat::PASS_NOT_VIP);
}

#[test]
fn never_aborts_on_any_truncation() {
    let Some(mut fx) = Fixture::new("never_aborts_on_any_truncation") else {
        return;
    };
    setup(&mut fx, proto::TCP, 0, 1);
    let full = from_client(proto::TCP, SYN).build();
    for len in 14..full.len() {
        let (v, out) = fx.run(fx.lbc, &full[..len]);
        assert_ne!(v, XDP_ABORTED, "len {len}");
        assert_eq!(v, XDP_PASS, "len {len}");
        assert_eq!(out, &full[..len], "len {len}");
    }
    assert_eq!(
        fx.stat(stat::PASS_MALFORMED),
        (full.len() - 14) as u64,
        "every cut frame counted malformed"
    );
}
