//! BPF_PROG_TEST_RUN fixtures for the latch XDP program, Katran-fixture style: a table of
//! rows, each naming its service, the map state it writes, the frames it sends with the
//! verdict and the exact frame expected back, and the counters that must have moved; one loop
//! ([`run_row`]) runs a row. Every row is its own `#[test]` (through [`fixture_tests!`]), so
//! the runner counts, runs and reports each failing row by name. They need root and are
//! `#[ignore]`d; each loads its own program instance with private maps inside a private
//! network namespace whose static routes and neighbours make `bpf_fib_lookup` deterministic.
//!
//! Run: `cargo test -p lb-userspace --test it xdp_fixtures -- --include-ignored`

pub(crate) mod packet;
mod tunnel;
mod v6;
pub(crate) mod xdp_env;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use lb_common::{
    Backend, Flow, FlowKey, Persist, PersistKey, ReplyKey, ReplySources, Service, ServiceKey,
    VipPort, backend_state, flow_flags, proto, service_flags, stat,
};
use packet::{ACK, Frame, L4, PSH, SYN, icmp_error, verify_checksums};
use xdp_env::*;

pub(crate) const XDP_DROP: u32 = 1;
pub(crate) const XDP_PASS: u32 = 2;
pub(crate) const XDP_TX: u32 = 3;
pub(crate) const XDP_REDIRECT: u32 = 4;

pub(crate) const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub(crate) const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
pub(crate) const B1: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub(crate) const B2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
pub(crate) const NEAR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
pub(crate) const NO_NEIGH: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 99);
const CPORT: u16 = 40000;
const SVC_ID: u32 = 1;
pub(crate) const SEC: u64 = 1_000_000_000;
/// How far the program's clock (CLOCK_MONOTONIC at tick resolution, `bpf_ktime_get_coarse_ns`)
/// may lag the test's own reading: one tick, at most 10 ms on kernels with HZ >= 100.
const CLOCK_SLACK: u64 = 50_000_000;

// ---------------------------------------------------------------------------------------
// The row format and the loop that runs a row

/// The LB port a frame arrives on.
#[derive(Clone, Copy, Debug)]
enum Port {
    /// `lbc`, facing the client.
    Client,
    /// `lbb`, facing the backends.
    Backend,
}

/// What the program must leave in the frame.
#[derive(Debug)]
enum Output {
    /// Exactly these bytes, whose checksums are then verified independently.
    Frame(Vec<u8>),
    /// The input, byte for byte (malformed input has no checksums to verify).
    Unchanged,
    /// Only the verdict is checked.
    Any,
}

/// Map state a row writes before (or between) its frames.
#[derive(Debug)]
enum MapEntry {
    Flow(FlowKey, Flow),
    Persist(PersistKey, Persist),
    Backend(u32, Backend),
    /// The live maglev table (slot 1) maps everything to these backends, in turn.
    Maglev(Vec<u32>),
    /// NAT_REPLY: the server (address, port) answers for these virtual ports of VIP.
    Replies(Ipv4Addr, u16, u8, Vec<u16>),
}

/// Expectations on map state that are not frames or global counters (conntrack and
/// persistence entries, traffic counters), given the `now` the row was built with.
type Check = fn(&mut Fixture, u64);

enum Step {
    Write(MapEntry),
    /// One frame through the program: the verdict and the frame it leaves.
    Frame {
        port: Port,
        input: Vec<u8>,
        verdict: u32,
        output: Output,
    },
    /// The kernel refuses to run the program on this frame at all.
    Refused(Vec<u8>),
    /// Exactly these global counters (STATS) moved so far, by these amounts.
    Stats(Vec<(u32, u64)>),
    Check(Check),
}

/// One fixture: the service it sets up and its steps, in order.
struct Row {
    name: &'static str,
    /// The service's protocol and flags, and the backend its live maglev table picks (see
    /// [`setup`]).
    service: (u8, u32, u32),
    steps: Vec<Step>,
}

impl Row {
    fn new(name: &'static str, l4: u8, flags: u32, maglev_backend: u32) -> Self {
        Self {
            name,
            service: (l4, flags, maglev_backend),
            steps: Vec::new(),
        }
    }

    fn write(mut self, entry: MapEntry) -> Self {
        self.steps.push(Step::Write(entry));
        self
    }

    fn frame(mut self, port: Port, input: Vec<u8>, verdict: u32, output: Output) -> Self {
        self.steps.push(Step::Frame {
            port,
            input,
            verdict,
            output,
        });
        self
    }

    /// A client frame the program must pass to the stack untouched.
    fn passes_untouched(self, input: Vec<u8>) -> Self {
        self.frame(Port::Client, input, XDP_PASS, Output::Unchanged)
    }

    fn refused(mut self, input: Vec<u8>) -> Self {
        self.steps.push(Step::Refused(input));
        self
    }

    fn stats(mut self, expected: &[(u32, u64)]) -> Self {
        self.steps.push(Step::Stats(expected.to_vec()));
        self
    }

    fn check(mut self, check: Check) -> Self {
        self.steps.push(Step::Check(check));
        self
    }
}

/// Runs the row named `name` on a fresh program instance; panics, naming the row and the
/// step, at the first expectation that does not hold.
fn run_row(name: &str) {
    let mut fx = Fixture::new();
    let now = monotonic_ns();
    let row = rows(now)
        .into_iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no fixture row {name}"));
    let (l4, flags, maglev_backend) = row.service;
    setup(&mut fx, l4, flags, maglev_backend);
    for (i, step) in row.steps.into_iter().enumerate() {
        let at = format!("{name}, step {i}");
        match step {
            Step::Write(entry) => write(&mut fx, entry),
            Step::Frame {
                port,
                input,
                verdict,
                output,
            } => {
                let ingress = match port {
                    Port::Client => fx.lbc,
                    Port::Backend => fx.lbb,
                };
                let (v, out) = fx.run(ingress, &input);
                assert_eq!(v, verdict, "{at}: verdict");
                match output {
                    Output::Frame(want) => {
                        assert_eq!(out, want, "{at}: output frame");
                        if let Err(e) = verify_checksums(&out) {
                            panic!("{at}: output checksums: {e}");
                        }
                    }
                    Output::Unchanged => assert_eq!(out, input, "{at}: frame untouched"),
                    Output::Any => {}
                }
            }
            Step::Refused(input) => assert!(
                fx.try_run(fx.lbc, &input).is_err(),
                "{at}: kernel accepts a {}-byte frame",
                input.len()
            ),
            Step::Stats(expected) => {
                let mut want = vec![0u64; lb_common::stat::COUNT as usize];
                for (i, n) in &expected {
                    want[*i as usize] += n;
                }
                let mut got = fx.stats();
                // The connection-table insert count follows from the flows a row makes; it is
                // checked only by the rows that name it.
                let insert = stat::CONNTRACK_INSERT as usize;
                if !expected.iter().any(|(i, _)| *i as usize == insert) {
                    got[insert] = 0;
                }
                assert_eq!(got, want, "{at}: STATS (index = lb_common::stat)");
            }
            Step::Check(check) => check(&mut fx, now),
        }
    }
}

fn write(fx: &mut Fixture, entry: MapEntry) {
    match entry {
        MapEntry::Flow(key, flow) => fx.insert_flow(key, flow),
        MapEntry::Persist(key, value) => fx.insert_persist(key, value),
        MapEntry::Backend(id, backend) => fx.set_backend(id, backend),
        MapEntry::Maglev(ids) => fx.fill_maglev(SVC_ID, 1, &ids),
        MapEntry::Replies(server, server_port, l4, vports) => {
            let (key, value) = reply_sources(server, server_port, l4, &vports);
            fx.set_reply_sources(key, value);
        }
    }
}

/// One `#[test]` per row, and the list of rows that have one.
macro_rules! fixture_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            #[ignore = "needs root: runs the XDP program in a private network namespace"]
            fn $name() {
                run_row(stringify!($name));
            }
        )*
        const TESTED_ROWS: &[&str] = &[$(stringify!($name)),*];
    };
}

fixture_tests! {
    non_vip_tcp_passes_untouched,
    new_tcp_flow_nat_with_port_mapping_redirects,
    new_udp_flow_nat_fixes_udp_checksum,
    udp_without_checksum_keeps_zero_checksum,
    new_flow_dsr_rewrites_only_macs,
    backend_behind_ingress_port_is_xdp_tx,
    fib_miss_passes_rewritten_packet_to_stack,
    ttl_one_is_left_to_the_stack,
    no_usable_backend_drops,
    maglev_spreads_flows_over_backends,
    client_hash_places_every_flow_of_a_client_alike,
    conntrack_hit_follows_recorded_backend,
    conntrack_refresh_revalidates_service,
    conntrack_entry_of_deleted_service_passes,
    stale_conntrack_entry_is_rehashed,
    persistence_hit_overrides_maglev,
    expired_persistence_falls_back_to_maglev_and_repins,
    persistence_to_stale_backend_is_expired,
    reply_is_translated_back_to_vip,
    forward_then_reply_round_trip,
    reply_of_a_server_shared_by_two_services,
    reply_of_another_backend_than_the_flows_passes,
    reply_without_a_flow_passes,
    reply_to_a_dsr_flow_passes,
    legacy_reply_entry_is_ignored,
    icmp_frag_needed_toward_a_backend_is_translated_for_the_client,
    icmp_port_unreachable_of_a_udp_backend_is_translated_for_the_client,
    icmp_frag_needed_toward_a_client_is_translated_for_the_backend,
    icmp_error_without_a_flow_passes,
    icmp_error_about_a_dsr_flow_passes,
    icmp_error_quoting_too_little_passes,
    http_service_passes_to_proxy,
    http_without_fast_path_ignores_pins,
    fast_path_syn_of_pinned_client_is_forwarded,
    truncated_ethernet,
    truncated_ip_header,
    ip_total_length_beyond_frame,
    truncated_tcp_header,
    truncated_udp_header,
    tcp_data_offset_too_small,
    ip_options_to_vip,
    ip_options_to_non_vip,
    first_fragment_to_vip,
    later_fragment_to_vip,
    bad_ihl,
    ihl_beyond_frame,
    wrong_ip_version,
    non_ipv4_ethertypes,
    icmp_to_vip_passes,
    never_aborts_on_any_truncation,
    live_nat_flow_keeps_its_reply_translation_under_table_pressure,
    live_nat_download_keeps_its_entry_under_table_pressure,
}

/// Building the table needs no root: every row has exactly one test and every test a row.
#[test]
fn every_row_has_one_test() {
    let rows: Vec<&str> = rows(monotonic_ns()).iter().map(|r| r.name).collect();
    let unique: BTreeSet<&str> = rows.iter().copied().collect();
    assert_eq!(unique.len(), rows.len(), "row names repeat: {rows:?}");
    let tested: BTreeSet<&str> = TESTED_ROWS.iter().copied().collect();
    assert_eq!(unique, tested, "rows and fixture_tests! differ");
}

// ---------------------------------------------------------------------------------------
// Building blocks of rows

pub(crate) fn addr(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

pub(crate) fn port(p: u16) -> u16 {
    p.to_be()
}

pub(crate) fn backend(ip: Ipv4Addr, p: u16, generation: u32) -> Backend {
    Backend {
        addr: addr(ip),
        port: port(p),
        _pad: 0,
        state: backend_state::UP,
        generation,
    }
}

pub(crate) fn flow_key(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), l4: u8) -> FlowKey {
    FlowKey {
        src_addr: addr(src.0),
        dst_addr: addr(dst.0),
        src_port: port(src.1),
        dst_port: port(dst.1),
        proto: l4,
        _pad: [0; 3],
    }
}

/// The client's TCP flow to VIP:80.
fn client_flow() -> FlowKey {
    flow_key((CLIENT, CPORT), (VIP, 80), proto::TCP)
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
    // As the agent does (`plan::nat_replies`): NAT services XDP forwards list their servers.
    let proxied = flags & service_flags::HTTP != 0 && flags & service_flags::FAST_PATH == 0;
    if flags & service_flags::DSR == 0 && !proxied {
        for server in [B1, B2, NEAR, NO_NEIGH] {
            let (key, value) = reply_sources(server, 8080, l4, &[80]);
            fx.set_reply_sources(key, value);
        }
    }
    svc
}

/// The NAT_REPLY entry of a server answering for `vports` of VIP.
fn reply_sources(
    server: Ipv4Addr,
    server_port: u16,
    l4: u8,
    vports: &[u16],
) -> (ReplyKey, ReplySources) {
    let key = ReplyKey {
        addr: addr(server),
        port: port(server_port),
        proto: l4,
        _pad: 0,
    };
    let mut value = ReplySources {
        count: vports.len() as u32,
        ..ReplySources::default()
    };
    for (slot, vport) in value.vips.iter_mut().zip(vports) {
        *slot = VipPort {
            vip: addr(VIP),
            port: port(*vport),
            _pad: 0,
        };
    }
    (key, value)
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

/// `f` sent to another destination port.
fn to_port(mut f: Frame, to: u16) -> Frame {
    if let L4::Tcp { dport, .. } = &mut f.l4 {
        *dport = to;
    }
    f
}

/// What a NAT-forwarded client frame must look like after a successful fib lookup.
fn natted(f: &Frame, to: Ipv4Addr, to_port: u16, dmac: [u8; 6], smac: [u8; 6]) -> Output {
    let mut e = f.clone();
    e.dst = to;
    e.ttl -= 1;
    e.dst_mac = dmac;
    e.src_mac = smac;
    match &mut e.l4 {
        L4::Tcp { dport, .. } | L4::Udp { dport, .. } => *dport = to_port,
        L4::Raw { .. } => unreachable!(),
    }
    Output::Frame(e.build())
}

/// Forwarded by NAT to backend 1 (B1) through the backend port.
fn to_b1(f: &Frame) -> Output {
    natted(f, B1, 8080, BACKEND1_MAC, LBB_MAC)
}

/// Forwarded by NAT to backend 2 (B2) through the backend port.
fn to_b2(f: &Frame) -> Output {
    natted(f, B2, 8080, BACKEND2_MAC, LBB_MAC)
}

/// A frame that must come back as it went in, checksums and all.
fn same(f: &[u8]) -> Output {
    Output::Frame(f.to_vec())
}

fn l3_len(frame: &[u8]) -> u64 {
    u64::from(u16::from_be_bytes([frame[16], frame[17]]))
}

/// A conntrack entry to `backend_id` of service `service_id`, last seen at `last_seen_ns`.
pub(crate) fn flow(backend_id: u32, service_id: u32, flags: u32, last_seen_ns: u64) -> Flow {
    Flow {
        backend_id,
        generation: 1,
        service_id,
        flags,
        vip: 0,
        vport: 0,
        _pad: 0,
        last_seen_ns,
    }
}

fn persist_key() -> PersistKey {
    PersistKey {
        group: SVC_ID,
        client_addr: addr(CLIENT),
    }
}

/// The client pinned to `backend_id` (of `generation`) until `expires_ns`.
fn pin(backend_id: u32, generation: u32, expires_ns: u64) -> MapEntry {
    MapEntry::Persist(
        persist_key(),
        Persist {
            backend_id,
            generation,
            expires_ns,
        },
    )
}

fn from_backend(b: Ipv4Addr, bmac: [u8; 6]) -> Frame {
    let mut f = Frame::tcp((b, 8080), (CLIENT, CPORT), SYN | ACK);
    f.src_mac = bmac;
    f.dst_mac = LBB_MAC;
    f
}

fn unnatted(f: &Frame) -> Output {
    unnatted_from(f, 80)
}

/// A backend's reply translated back to VIP:`vport`, toward the client.
fn unnatted_from(f: &Frame, vport: u16) -> Output {
    let mut e = f.clone();
    e.src = VIP;
    e.ttl -= 1;
    e.dst_mac = CLIENT_MAC;
    e.src_mac = LBC_MAC;
    if let L4::Tcp { sport, .. } = &mut e.l4 {
        *sport = vport;
    }
    Output::Frame(e.build())
}

/// Sets the IPv4 total length to the frame's and recomputes the header checksum.
fn fix_ip_len(frame: &mut [u8]) {
    let len = (frame.len() - 14) as u16;
    frame[16..18].copy_from_slice(&len.to_be_bytes());
    frame[24..26].copy_from_slice(&[0, 0]);
    let c = packet::checksum(&[&frame[14..34]]);
    frame[24..26].copy_from_slice(&c.to_be_bytes());
}

/// An established flow's entry whose service is gone: a port no service listens on.
fn flow_to_deleted_service(now: u64) -> (FlowKey, Flow) {
    (
        flow_key((CLIENT, CPORT), (VIP, 81), proto::TCP),
        flow(1, SVC_ID, 0, now - 5 * SEC),
    )
}

// ---------------------------------------------------------------------------------------
// The table

/// Every fixture, built at `now` (CLOCK_MONOTONIC) for the entries whose times are relative.
fn rows(now: u64) -> Vec<Row> {
    let mut rows = Vec::new();
    rows.extend(pass_through_and_new_flows());
    rows.extend(established_flows(now));
    rows.extend(persistence(now));
    rows.extend(nat_replies(now));
    rows.extend(icmp_errors(now));
    rows.extend(table_pressure());
    rows.extend(http_services(now));
    rows.extend(malformed_input());
    rows
}

fn pass_through_and_new_flows() -> Vec<Row> {
    let tcp_syn = from_client(proto::TCP, SYN);
    let syn = tcp_syn.build();
    let udp = from_client(proto::UDP, 0);
    let mut udp_without_checksum = udp.clone();
    udp_without_checksum.l4 = L4::Udp {
        sport: CPORT,
        dport: 80,
        no_checksum: true,
    };
    let udp_zero_checksum = to_b1(&udp_without_checksum);
    if let Output::Frame(want) = &udp_zero_checksum {
        assert_eq!(&want[40..42], &[0, 0], "UDP checksum stays 0");
    }
    let mut dsr = tcp_syn.clone();
    dsr.dst_mac = BACKEND2_MAC;
    dsr.src_mac = LBB_MAC;
    // Addresses rewritten, TTL and MACs left for the kernel's forwarding path.
    let mut fib_miss = tcp_syn.clone();
    fib_miss.dst = NO_NEIGH;
    fib_miss.l4 = L4::Tcp {
        sport: CPORT,
        dport: 8080,
        flags: SYN,
        seq: 0x0102_0304,
        ack: 0,
    };
    let mut ttl_one = tcp_syn.clone();
    ttl_one.ttl = 1;
    let mut other_address = to_port(tcp_syn.clone(), 81);
    other_address.dst = Ipv4Addr::new(192, 0, 2, 1);
    let mut b1_down = backend(B1, 8080, 1);
    b1_down.state = backend_state::DOWN;
    let new_flow = [(stat::NEW_FLOW_MAGLEV, 1), (stat::VERDICT_REDIRECT, 1)];

    vec![
        // Right address, wrong port; then a wrong address.
        Row::new("non_vip_tcp_passes_untouched", proto::TCP, 0, 1)
            .frame(
                Port::Client,
                to_port(tcp_syn.clone(), 81).build(),
                XDP_PASS,
                same(&to_port(tcp_syn.clone(), 81).build()),
            )
            .frame(
                Port::Client,
                other_address.build(),
                XDP_PASS,
                same(&other_address.build()),
            )
            .stats(&[(stat::PASS_NOT_VIP, 2)])
            .check(|fx, _| assert_eq!(fx.service_traffic(SVC_ID).packets, 0)),
        Row::new(
            "new_tcp_flow_nat_with_port_mapping_redirects",
            proto::TCP,
            0,
            1,
        )
        .frame(Port::Client, syn.clone(), XDP_REDIRECT, to_b1(&tcp_syn))
        .stats(&new_flow)
        .check(|fx, _| {
            let fwd = fx.flow(&client_flow()).expect("forward conntrack entry");
            assert_eq!(
                (fwd.backend_id, fwd.generation, fwd.service_id, fwd.flags),
                (1, 1, SVC_ID, 0)
            );
            let now = monotonic_ns();
            assert!(fwd.last_seen_ns > 0 && fwd.last_seen_ns <= now);
            assert!(
                fx.flow(&flow_key((B1, 8080), (CLIENT, CPORT), proto::TCP))
                    .is_none(),
                "one entry per flow: no reply entry"
            );
            assert_eq!(fx.stat(stat::CONNTRACK_INSERT), 1);
            let bytes = l3_len(&from_client(proto::TCP, SYN).build());
            let s = fx.service_traffic(SVC_ID);
            assert_eq!((s.packets, s.bytes, s.new_flows), (1, bytes, 1));
            let b = fx.backend_traffic(1);
            assert_eq!((b.packets, b.bytes, b.new_flows), (1, bytes, 1));
            assert_eq!(fx.backend_traffic(2).packets, 0);
        }),
        Row::new("new_udp_flow_nat_fixes_udp_checksum", proto::UDP, 0, 2)
            .frame(Port::Client, udp.build(), XDP_REDIRECT, to_b2(&udp))
            .stats(&new_flow)
            // A second datagram of the flow is a conntrack hit.
            .frame(Port::Client, udp.build(), XDP_REDIRECT, to_b2(&udp))
            .check(|fx, _| {
                assert_eq!(fx.stat(stat::CONNTRACK_HIT), 1);
                let s = fx.service_traffic(SVC_ID);
                assert_eq!((s.packets, s.new_flows), (2, 1));
            }),
        Row::new("udp_without_checksum_keeps_zero_checksum", proto::UDP, 0, 1).frame(
            Port::Client,
            udp_without_checksum.build(),
            XDP_REDIRECT,
            udp_zero_checksum,
        ),
        Row::new(
            "new_flow_dsr_rewrites_only_macs",
            proto::TCP,
            service_flags::DSR,
            2,
        )
        .frame(
            Port::Client,
            syn.clone(),
            XDP_REDIRECT,
            Output::Frame(dsr.build()),
        )
        .stats(&new_flow)
        .check(|fx, _| {
            let fwd = fx.flow(&client_flow()).expect("forward entry");
            assert_eq!((fwd.backend_id, fwd.flags), (2, flow_flags::DSR));
            assert!(
                fx.flow(&flow_key((B2, 8080), (CLIENT, CPORT), proto::TCP))
                    .is_none(),
                "DSR records no reply translation"
            );
        }),
        Row::new("backend_behind_ingress_port_is_xdp_tx", proto::TCP, 0, 3)
            .frame(
                Port::Client,
                syn.clone(),
                XDP_TX,
                natted(&tcp_syn, NEAR, 8080, NEAR_BACKEND_MAC, LBC_MAC),
            )
            .stats(&[(stat::NEW_FLOW_MAGLEV, 1), (stat::VERDICT_TX, 1)]),
        Row::new(
            "fib_miss_passes_rewritten_packet_to_stack",
            proto::TCP,
            0,
            4,
        )
        .frame(
            Port::Client,
            syn.clone(),
            XDP_PASS,
            Output::Frame(fib_miss.build()),
        )
        .stats(&[(stat::NEW_FLOW_MAGLEV, 1), (stat::PASS_FIB_MISS, 1)])
        .check(|fx, _| assert_eq!(fx.backend_traffic(4).new_flows, 1)),
        Row::new("ttl_one_is_left_to_the_stack", proto::TCP, 0, 1)
            .frame(
                Port::Client,
                ttl_one.build(),
                XDP_PASS,
                same(&ttl_one.build()),
            )
            .stats(&[(stat::NEW_FLOW_MAGLEV, 1), (stat::PASS_FIB_MISS, 1)]),
        Row::new("no_usable_backend_drops", proto::TCP, 0, 0)
            .frame(Port::Client, syn.clone(), XDP_DROP, Output::Any)
            // A DOWN backend in the table is no better than an empty slot.
            .write(MapEntry::Maglev(vec![1]))
            .write(MapEntry::Backend(1, b1_down))
            .frame(Port::Client, syn.clone(), XDP_DROP, Output::Any)
            .stats(&[(stat::DROP_NO_BACKEND, 2)])
            .check(|fx, _| assert!(fx.flow(&client_flow()).is_none())),
        Row::new("maglev_spreads_flows_over_backends", proto::UDP, 0, 1)
            .write(MapEntry::Maglev(vec![1, 2]))
            .check(maglev_spreads_64_flows),
        Row::new(
            "client_hash_places_every_flow_of_a_client_alike",
            proto::TCP,
            service_flags::HASH_CLIENT_IP,
            1,
        )
        .write(MapEntry::Maglev(vec![1, 2]))
        .check(one_backend_per_client_16_clients),
    ]
}

/// `flow_hash = "client_ip"`: 16 connections (source ports) of each of 16 clients; every
/// client's connections land on one backend, and the clients spread over both.
fn one_backend_per_client_16_clients(fx: &mut Fixture, _now: u64) {
    let mut clients_on = [0u32; 2];
    for c in 0..16u8 {
        let client = Ipv4Addr::new(192, 0, 2, 100 + c);
        let mut backends = BTreeSet::new();
        for i in 0..16u16 {
            let mut f = from_client(proto::TCP, SYN);
            f.src = client;
            if let L4::Tcp { sport, .. } = &mut f.l4 {
                *sport = 20000 + i * 13;
            }
            let (v, out) = fx.run(fx.lbc, &f.build());
            assert_eq!(v, XDP_REDIRECT);
            verify_checksums(&out).expect("checksums");
            backends.insert(Ipv4Addr::new(out[30], out[31], out[32], out[33]));
        }
        assert_eq!(
            backends.len(),
            1,
            "{client}'s connections went to {backends:?}"
        );
        let b = backends.first().copied();
        clients_on[usize::from(b == Some(B2))] += 1;
    }
    assert!(
        clients_on[0] >= 2 && clients_on[1] >= 2,
        "16 clients over 2 backends: {clients_on:?}"
    );
    assert_eq!(fx.stat(stat::NEW_FLOW_MAGLEV), 256);
}

/// 64 flows over backends 1 and 2: each lands on one of them, sticks to it, and both get a
/// fair share.
fn maglev_spreads_64_flows(fx: &mut Fixture, _now: u64) {
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

fn established_flows(now: u64) -> Vec<Row> {
    let old = now - 5 * SEC;
    let data = from_client(proto::TCP, ACK | PSH);
    let ack = from_client(proto::TCP, ACK);
    let (deleted_key, deleted_flow) = flow_to_deleted_service(now);
    let to_deleted = to_port(data.clone(), 81).build();
    vec![
        Row::new("conntrack_hit_follows_recorded_backend", proto::TCP, 0, 1)
            .write(MapEntry::Flow(client_flow(), flow(2, SVC_ID, 0, old)))
            .frame(Port::Client, data.build(), XDP_REDIRECT, to_b2(&data))
            .stats(&[
                (stat::CONNTRACK_HIT, 1),
                (stat::VERDICT_REDIRECT, 1),
                (stat::CONNTRACK_INSERT, 0),
            ])
            .check(|fx, now| {
                let s = fx.service_traffic(SVC_ID);
                assert_eq!((s.packets, s.new_flows), (1, 0));
                assert!(
                    fx.flow(&client_flow()).expect("entry").last_seen_ns > now - 5 * SEC,
                    "last_seen refreshed"
                );
            }),
        // An established flow is forwarded from its conntrack entry alone while the entry was
        // refreshed within the last second; past that, SERVICES is consulted again. Here the
        // entry carries a wrong service id and DSR although the service is NAT: the periodic
        // check forwards by the service and corrects the entry, and the next packet (now on
        // the conntrack-only path) follows the corrected entry.
        Row::new("conntrack_refresh_revalidates_service", proto::TCP, 0, 1)
            .write(MapEntry::Flow(
                client_flow(),
                flow(2, 7, flow_flags::DSR, old),
            ))
            .frame(Port::Client, data.build(), XDP_REDIRECT, to_b2(&data))
            .frame(Port::Client, data.build(), XDP_REDIRECT, to_b2(&data))
            .check(|fx, now| {
                let e = fx.flow(&client_flow()).expect("entry");
                assert_eq!((e.service_id, e.flags, e.backend_id), (SVC_ID, 0, 2));
                assert!(e.last_seen_ns > now - 5 * SEC, "last_seen refreshed");
            })
            .stats(&[
                (stat::CONNTRACK_HIT, 2),
                (stat::VERDICT_REDIRECT, 2),
                (stat::CONNTRACK_INSERT, 0),
            ])
            .check(|fx, _| {
                let s = fx.service_traffic(SVC_ID);
                assert_eq!((s.packets, s.new_flows), (2, 0));
                assert_eq!(fx.service_traffic(7).packets, 0);
            }),
        // A flow whose service is gone is not forwarded once its entry is due for the
        // periodic check: the packet is not for a VIP.
        Row::new(
            "conntrack_entry_of_deleted_service_passes",
            proto::TCP,
            0,
            1,
        )
        .write(MapEntry::Flow(deleted_key, deleted_flow))
        .frame(
            Port::Client,
            to_deleted.clone(),
            XDP_PASS,
            same(&to_deleted),
        )
        .stats(&[(stat::PASS_NOT_VIP, 1)])
        .check(|fx, now| {
            let (key, flow) = flow_to_deleted_service(now);
            assert_eq!(fx.flow(&key), Some(flow), "entry untouched");
        }),
        // Backend 2 was replaced since (generation 1 -> 2).
        Row::new("stale_conntrack_entry_is_rehashed", proto::TCP, 0, 1)
            .write(MapEntry::Backend(2, backend(B2, 8080, 2)))
            .write(MapEntry::Flow(
                client_flow(),
                Flow {
                    backend_id: 2,
                    generation: 1,
                    service_id: SVC_ID,
                    ..Default::default()
                },
            ))
            .frame(Port::Client, ack.build(), XDP_REDIRECT, to_b1(&ack))
            .stats(&[(stat::NEW_FLOW_MAGLEV, 1), (stat::VERDICT_REDIRECT, 1)])
            .check(|fx, _| assert_eq!(fx.flow(&client_flow()).expect("entry").backend_id, 1)),
    ]
}

fn persistence(now: u64) -> Vec<Row> {
    let syn = from_client(proto::TCP, SYN);
    let udp = from_client(proto::UDP, 0);
    let persist = service_flags::PERSIST_CLIENT_IP;
    vec![
        Row::new("persistence_hit_overrides_maglev", proto::TCP, persist, 1)
            .write(pin(2, 1, now + 10 * SEC))
            .frame(Port::Client, syn.build(), XDP_REDIRECT, to_b2(&syn))
            .stats(&[(stat::PERSIST_HIT, 1), (stat::VERDICT_REDIRECT, 1)])
            .check(|fx, now| {
                let p = fx.persist_entry(&persist_key()).expect("pin kept");
                assert_eq!(p.backend_id, 2);
                assert!(
                    p.expires_ns >= now + 300 * SEC - CLOCK_SLACK,
                    "pin refreshed to now + ttl"
                );
            }),
        Row::new(
            "expired_persistence_falls_back_to_maglev_and_repins",
            proto::TCP,
            persist,
            1,
        )
        .write(pin(2, 1, now - CLOCK_SLACK))
        .frame(Port::Client, syn.build(), XDP_REDIRECT, to_b1(&syn))
        .stats(&[
            (stat::PERSIST_EXPIRED, 1),
            (stat::NEW_FLOW_MAGLEV, 1),
            (stat::VERDICT_REDIRECT, 1),
        ])
        .check(|fx, now| {
            let p = fx.persist_entry(&persist_key()).expect("re-pinned");
            assert_eq!((p.backend_id, p.generation), (1, 1));
            assert!(p.expires_ns >= now + 300 * SEC - CLOCK_SLACK);
        }),
        // Backend 2 is generation 1 now.
        Row::new(
            "persistence_to_stale_backend_is_expired",
            proto::UDP,
            persist,
            1,
        )
        .write(pin(2, 0, now + 100 * SEC))
        .frame(Port::Client, udp.build(), XDP_REDIRECT, to_b1(&udp))
        .check(|fx, _| assert_eq!(fx.stat(stat::PERSIST_EXPIRED), 1)),
    ]
}

fn nat_replies(now: u64) -> Vec<Row> {
    let reply = from_backend(B1, BACKEND1_MAC);
    // A packet from another backend port is not ours.
    let mut other = reply.clone();
    other.l4 = L4::Tcp {
        sport: 9999,
        dport: CPORT,
        flags: ACK,
        seq: 1,
        ack: 1,
    };
    let to_81 = flow_key((CLIENT, CPORT), (VIP, 81), proto::TCP);
    let legacy_reply_entry = Flow {
        backend_id: 1,
        generation: 1,
        service_id: SVC_ID,
        flags: flow_flags::REPLY,
        vip: addr(VIP),
        vport: port(80),
        _pad: 0,
        last_seen_ns: now,
    };
    let untouched = [(stat::PASS_NOT_VIP, 1)];
    vec![
        // The reply finds the flow's one entry: B1:8080 answers for VIP:80, and the client's
        // flow to VIP:80 is bound to backend 1 = B1:8080.
        Row::new("reply_is_translated_back_to_vip", proto::TCP, 0, 1)
            .write(MapEntry::Flow(client_flow(), flow(1, SVC_ID, 0, now)))
            .frame(Port::Backend, reply.build(), XDP_REDIRECT, unnatted(&reply))
            .stats(&[(stat::REPLY_NAT, 1), (stat::VERDICT_REDIRECT, 1)]),
        Row::new("forward_then_reply_round_trip", proto::TCP, 0, 1)
            .frame(
                Port::Client,
                from_client(proto::TCP, SYN).build(),
                XDP_REDIRECT,
                Output::Any,
            )
            .frame(Port::Backend, reply.build(), XDP_REDIRECT, unnatted(&reply))
            .frame(Port::Backend, other.build(), XDP_PASS, same(&other.build()))
            .stats(&[
                (stat::NEW_FLOW_MAGLEV, 1),
                (stat::REPLY_NAT, 1),
                (stat::VERDICT_REDIRECT, 2),
                (stat::PASS_NOT_VIP, 1),
                (stat::CONNTRACK_INSERT, 1),
            ]),
        // B1:8080 serves VIP:80 and VIP:81; the client's flow is to VIP:81, so the reply
        // leaves from port 81.
        Row::new("reply_of_a_server_shared_by_two_services", proto::TCP, 0, 1)
            .write(MapEntry::Replies(B1, 8080, proto::TCP, vec![80, 81]))
            .write(MapEntry::Flow(to_81, flow(1, 2, 0, now)))
            .frame(
                Port::Backend,
                reply.build(),
                XDP_REDIRECT,
                unnatted_from(&reply, 81),
            )
            .stats(&[(stat::REPLY_NAT, 1), (stat::VERDICT_REDIRECT, 1)]),
        // The client's flow went to B2 since (a re-hash): a late reply of B1 is not its.
        Row::new(
            "reply_of_another_backend_than_the_flows_passes",
            proto::TCP,
            0,
            1,
        )
        .write(MapEntry::Flow(client_flow(), flow(2, SVC_ID, 0, now)))
        .frame(Port::Backend, reply.build(), XDP_PASS, same(&reply.build()))
        .stats(&untouched),
        Row::new("reply_without_a_flow_passes", proto::TCP, 0, 1)
            .frame(Port::Backend, reply.build(), XDP_PASS, same(&reply.build()))
            .stats(&untouched),
        // A DSR flow's server answers the client itself; nothing to translate.
        Row::new("reply_to_a_dsr_flow_passes", proto::TCP, 0, 1)
            .write(MapEntry::Flow(
                client_flow(),
                flow(1, SVC_ID, flow_flags::DSR, now),
            ))
            .frame(Port::Backend, reply.build(), XDP_PASS, same(&reply.build()))
            .stats(&untouched),
        // A reply entry written by an older agent (two entries per NAT flow) is neither taken
        // for a forward entry nor needed: without the flow's forward entry the reply passes.
        Row::new("legacy_reply_entry_is_ignored", proto::TCP, 0, 1)
            .write(MapEntry::Flow(
                flow_key((B1, 8080), (CLIENT, CPORT), proto::TCP),
                legacy_reply_entry,
            ))
            .frame(Port::Backend, reply.build(), XDP_PASS, same(&reply.build()))
            .stats(&untouched),
    ]
}

/// Keeps the calling thread on CPU 0: the connection table keeps one LRU list per CPU, and
/// the program run and the filler writes must compete for the same one.
fn stay_on_cpu0() {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity only
    // touch the set we own and the calling thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity"
        );
    }
}

/// A router between latch and the backends, and one on the clients' side.
const ROUTER_B: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);
const ROUTER_C: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
/// Destination unreachable, fragmentation needed, next-hop MTU 1400.
const FRAG_NEEDED: (u8, u8, [u8; 4]) = (3, 4, [0, 0, 0x05, 0x78]);
/// Destination unreachable, port unreachable.
const PORT_UNREACHABLE: (u8, u8, [u8; 4]) = (3, 3, [0; 4]);

/// `f` as it left latch: TTL decremented (MACs do not matter in a quote).
fn as_sent(mut f: Frame) -> Vec<u8> {
    f.ttl -= 1;
    f.build()
}

/// An ICMP error from `src` to `dst` about `inner`, quoting `quoted` bytes of it (all when
/// `None`), arriving on `port` from that side's neighbour.
fn icmp_frame(
    port: Port,
    (src, dst): (Ipv4Addr, Ipv4Addr),
    kind: (u8, u8, [u8; 4]),
    inner: &[u8],
    quoted: Option<usize>,
) -> Frame {
    let mut f = icmp_error(src, dst, kind, inner, quoted.unwrap_or(inner.len() - 14));
    (f.src_mac, f.dst_mac) = match port {
        Port::Client => (CLIENT_MAC, LBC_MAC),
        Port::Backend => (BACKEND1_MAC, LBB_MAC),
    };
    f
}

/// `f` forwarded by latch to `dst_mac` out of the port whose MAC is `src_mac`.
fn forwarded(mut f: Frame, dst_mac: [u8; 6], src_mac: [u8; 6]) -> Output {
    f.ttl -= 1;
    f.dst_mac = dst_mac;
    f.src_mac = src_mac;
    Output::Frame(f.build())
}

fn icmp_errors(now: u64) -> Vec<Row> {
    let data = from_client(proto::TCP, ACK | PSH);
    let udp = from_client(proto::UDP, 0);
    // What latch sent to backend 1 for the client's TCP and UDP flows, and what the client
    // sent (the error must come back quoting that).
    let to_b1 = |f: &Frame| {
        let mut e = f.clone();
        e.dst = B1;
        match &mut e.l4 {
            L4::Tcp { dport, .. } | L4::Udp { dport, .. } => *dport = 8080,
            L4::Raw { .. } => unreachable!(),
        }
        e
    };
    let tcp_sent = as_sent(to_b1(&data));
    let tcp_meant = as_sent(data.clone());
    let udp_sent = as_sent(to_b1(&udp));
    let udp_meant = as_sent(udp.clone());
    // A reply of backend 1 as latch sent it to the client, and as the backend sent it.
    let reply = from_backend(B1, BACKEND1_MAC);
    let mut reply_sent = reply.clone();
    reply_sent.src = VIP;
    if let L4::Tcp { sport, .. } = &mut reply_sent.l4 {
        *sport = 80;
    }
    let reply_sent = as_sent(reply_sent);
    let reply_meant = as_sent(reply);

    let frag_to_b1 = icmp_frame(
        Port::Backend,
        (ROUTER_B, CLIENT),
        FRAG_NEEDED,
        &tcp_sent,
        None,
    );
    let frag_for_client = icmp_error(VIP, CLIENT, FRAG_NEEDED, &tcp_meant, tcp_meant.len() - 14);
    let unreachable = icmp_frame(
        Port::Backend,
        (B1, CLIENT),
        PORT_UNREACHABLE,
        &udp_sent,
        Some(28),
    );
    let unreachable_for_client = icmp_error(VIP, CLIENT, PORT_UNREACHABLE, &udp_meant, 28);
    let frag_to_client = icmp_frame(
        Port::Client,
        (ROUTER_C, VIP),
        FRAG_NEEDED,
        &reply_sent,
        None,
    );
    let frag_for_b1 = icmp_error(
        ROUTER_C,
        B1,
        FRAG_NEEDED,
        &reply_meant,
        reply_meant.len() - 14,
    );
    // Only the IPv4 header and four bytes of TCP: no ports to find the flow by.
    let too_short = icmp_frame(
        Port::Backend,
        (ROUTER_B, CLIENT),
        FRAG_NEEDED,
        &tcp_sent,
        Some(24),
    );
    let udp_flow = flow_key((CLIENT, CPORT), (VIP, 80), proto::UDP);
    let nat_flow = MapEntry::Flow(client_flow(), flow(1, SVC_ID, 0, now));
    vec![
        // A router toward the backend says the forwarded packet is too big: the client must
        // learn it about the packet it sent (to VIP:80), from the VIP.
        Row::new(
            "icmp_frag_needed_toward_a_backend_is_translated_for_the_client",
            proto::TCP,
            0,
            1,
        )
        .write(MapEntry::Flow(client_flow(), flow(1, SVC_ID, 0, now)))
        .frame(
            Port::Backend,
            frag_to_b1.build(),
            XDP_REDIRECT,
            forwarded(frag_for_client, CLIENT_MAC, LBC_MAC),
        )
        .stats(&[(stat::ICMP_TO_CLIENT, 1), (stat::VERDICT_REDIRECT, 1)]),
        // The backend has no socket on the port: quoting only the UDP header, whose checksum
        // is rewritten all the same.
        Row::new(
            "icmp_port_unreachable_of_a_udp_backend_is_translated_for_the_client",
            proto::UDP,
            0,
            1,
        )
        .write(MapEntry::Flow(udp_flow, flow(1, SVC_ID, 0, now)))
        .frame(
            Port::Backend,
            unreachable.build(),
            XDP_REDIRECT,
            forwarded(unreachable_for_client, CLIENT_MAC, LBC_MAC),
        )
        .stats(&[(stat::ICMP_TO_CLIENT, 1), (stat::VERDICT_REDIRECT, 1)]),
        // A router toward the client says a reply (from VIP:80) is too big: the backend, which
        // sent it from B1:8080, must learn it.
        Row::new(
            "icmp_frag_needed_toward_a_client_is_translated_for_the_backend",
            proto::TCP,
            0,
            1,
        )
        .write(nat_flow)
        .frame(
            Port::Client,
            frag_to_client.build(),
            XDP_REDIRECT,
            forwarded(frag_for_b1, BACKEND1_MAC, LBB_MAC),
        )
        .stats(&[(stat::ICMP_TO_BACKEND, 1), (stat::VERDICT_REDIRECT, 1)]),
        Row::new("icmp_error_without_a_flow_passes", proto::TCP, 0, 1)
            .passes_untouched(frag_to_client.build())
            .frame(
                Port::Backend,
                frag_to_b1.build(),
                XDP_PASS,
                same(&frag_to_b1.build()),
            )
            .stats(&[(stat::PASS_NOT_VIP, 2)]),
        // A DSR backend answers from the VIP itself; latch translates nothing of its flows.
        Row::new(
            "icmp_error_about_a_dsr_flow_passes",
            proto::TCP,
            service_flags::DSR,
            1,
        )
        .write(MapEntry::Flow(
            client_flow(),
            flow(1, SVC_ID, flow_flags::DSR, now),
        ))
        .passes_untouched(frag_to_client.build())
        .stats(&[(stat::PASS_NOT_VIP, 1)]),
        Row::new("icmp_error_quoting_too_little_passes", proto::TCP, 0, 1)
            .write(MapEntry::Flow(client_flow(), flow(1, SVC_ID, 0, now)))
            .frame(
                Port::Backend,
                too_short.build(),
                XDP_PASS,
                same(&too_short.build()),
            )
            .stats(&[(stat::PASS_NOT_VIP, 1)]),
    ]
}

/// The `i`th of round `round`'s 1024 other flows that fill the table.
fn filler(round: u32, i: u32) -> FlowKey {
    flow_key(
        (
            Ipv4Addr::new(192, 0, 2, 1 + (round as u8 % 8) * 16 + (i / 1024) as u8),
            (10_000 + i % 1024) as u16 + (round / 8) as u16 * 1024,
        ),
        (VIP, 443),
        proto::TCP,
    )
}

/// Some of the first round's filler flows were evicted.
fn assert_table_was_under_pressure(fx: &mut Fixture) {
    let survivors = (0..1024)
        .filter(|i| fx.flow(&filler(0, *i)).is_some())
        .count();
    assert!(
        survivors < 1024,
        "the table was under pressure: {survivors} of the first round's flows are left"
    );
}

/// Twelve rounds of 1024 other flows written into a 4096-entry connection table while a live
/// NAT flow sends one packet a round (its forward entry aged by a second before each, as if a
/// second passed) and its backend answers only at the end, as in an upload: the backend's
/// reply must still be translated. It is, through the flow's one entry, which the client's
/// packets keep in use (with two entries per flow, the reply entry was the one at risk).
fn nat_flow_lives_through_table_pressure(fx: &mut Fixture, now: u64) {
    let data = from_client(proto::TCP, ACK | PSH);
    let reply = from_backend(B1, BACKEND1_MAC);
    let Output::Frame(forwarded) = to_b1(&data) else {
        unreachable!("to_b1 is a frame")
    };
    let Output::Frame(translated) = unnatted(&reply) else {
        unreachable!("unnatted is a frame")
    };
    for round in 0..12u32 {
        for i in 0..1024 {
            fx.insert_flow(filler(round, i), flow(2, SVC_ID, 0, now));
        }
        let mut f = fx
            .flow(&client_flow())
            .unwrap_or_else(|| panic!("round {round}: the live flow's forward entry is gone"));
        f.last_seen_ns = now - 5 * SEC;
        fx.insert_flow(client_flow(), f);
        let (v, out) = fx.run(fx.lbc, &data.build());
        assert_eq!(
            (v, &out),
            (XDP_REDIRECT, &forwarded),
            "round {round}: forward"
        );
    }
    let (v, out) = fx.run(fx.lbb, &reply.build());
    assert_eq!(
        (v, &out),
        (XDP_REDIRECT, &translated),
        "the backend's reply is translated back to the VIP"
    );
    assert_table_was_under_pressure(fx);
}

/// As [`nat_flow_lives_through_table_pressure`] for a download: the client sends nothing
/// after its SYN while its backend answers every round; the replies alone must keep the flow's
/// entry in use, so that the last reply is still translated and the entry is still there.
fn nat_download_lives_through_table_pressure(fx: &mut Fixture, now: u64) {
    let reply = from_backend(B1, BACKEND1_MAC);
    let Output::Frame(translated) = unnatted(&reply) else {
        unreachable!("unnatted is a frame")
    };
    for round in 0..12u32 {
        for i in 0..1024 {
            fx.insert_flow(filler(round, i), flow(2, SVC_ID, 0, now));
        }
        let (v, out) = fx.run(fx.lbb, &reply.build());
        assert_eq!(
            (v, &out),
            (XDP_REDIRECT, &translated),
            "round {round}: the backend's reply is translated back to the VIP"
        );
    }
    assert!(
        fx.flow(&client_flow()).is_some(),
        "the flow's entry outlived the pressure"
    );
    assert_table_was_under_pressure(fx);
}

/// A row that opens the client's NAT flow with a SYN on CPU 0 (the connection table keeps one
/// LRU list per CPU), then runs `pressure`.
fn pressure_row(name: &'static str, pressure: Check) -> Row {
    Row::new(name, proto::TCP, 0, 1)
        .check(|_, _| stay_on_cpu0())
        .frame(
            Port::Client,
            from_client(proto::TCP, SYN).build(),
            XDP_REDIRECT,
            Output::Any,
        )
        .stats(&[
            (stat::NEW_FLOW_MAGLEV, 1),
            (stat::VERDICT_REDIRECT, 1),
            (stat::CONNTRACK_INSERT, 1),
        ])
        .check(pressure)
}

fn table_pressure() -> Vec<Row> {
    vec![
        pressure_row(
            "live_nat_flow_keeps_its_reply_translation_under_table_pressure",
            nat_flow_lives_through_table_pressure,
        ),
        pressure_row(
            "live_nat_download_keeps_its_entry_under_table_pressure",
            nat_download_lives_through_table_pressure,
        ),
    ]
}

fn http_services(now: u64) -> Vec<Row> {
    let http = service_flags::HTTP;
    let fast_path = service_flags::HTTP | service_flags::FAST_PATH;
    let syn = from_client(proto::TCP, SYN);
    let ack = from_client(proto::TCP, ACK);
    let data = from_client(proto::TCP, ACK | PSH).build();
    vec![
        // No pin: SYN and the rest of the connection go to the local proxy, untouched.
        Row::new("http_service_passes_to_proxy", proto::TCP, fast_path, 1)
            .frame(Port::Client, syn.build(), XDP_PASS, same(&syn.build()))
            .frame(Port::Client, ack.build(), XDP_PASS, same(&ack.build()))
            .frame(Port::Client, data.clone(), XDP_PASS, same(&data))
            .stats(&[(stat::PASS_TO_PROXY, 3)])
            .check(|fx, _| assert!(fx.flow(&client_flow()).is_none())),
        Row::new("http_without_fast_path_ignores_pins", proto::TCP, http, 1)
            .write(pin(2, 1, now + 100 * SEC))
            .frame(Port::Client, syn.build(), XDP_PASS, same(&syn.build()))
            .stats(&[(stat::PASS_TO_PROXY, 1)]),
        Row::new(
            "fast_path_syn_of_pinned_client_is_forwarded",
            proto::TCP,
            fast_path,
            1,
        )
        .write(pin(2, 1, now + 100 * SEC))
        .frame(Port::Client, syn.build(), XDP_REDIRECT, to_b2(&syn))
        // The rest of the connection follows conntrack.
        .frame(Port::Client, ack.build(), XDP_REDIRECT, to_b2(&ack))
        .stats(&[
            (stat::FAST_PATH, 1),
            (stat::CONNTRACK_HIT, 1),
            (stat::VERDICT_REDIRECT, 2),
        ])
        .check(|fx, now| {
            // The agent owns fast-path expiry: XDP does not extend it.
            assert_eq!(
                fx.persist_entry(&persist_key()).expect("pin").expires_ns,
                now + 100 * SEC
            );
            let s = fx.service_traffic(SVC_ID);
            assert_eq!((s.packets, s.new_flows), (2, 1));
        })
        // Once the pin expired, a new connection on the same tuple goes to the proxy and
        // the old entry no longer steals its packets.
        .write(pin(2, 1, now - CLOCK_SLACK))
        .frame(Port::Client, syn.build(), XDP_PASS, same(&syn.build()))
        .frame(Port::Client, ack.build(), XDP_PASS, same(&ack.build()))
        .check(|fx, _| assert_eq!(fx.stat(stat::PASS_TO_PROXY), 2)),
    ]
}

/// Malformed and irregular input: always XDP_PASS with the frame untouched, counted once.
fn malformed_input() -> Vec<Row> {
    let full = from_client(proto::TCP, SYN).build();
    let malformed = [(stat::PASS_MALFORMED, 1)];
    let options = [(stat::PASS_FRAGMENT_OR_OPTIONS, 1)];

    let mut no_payload = from_client(proto::TCP, SYN);
    no_payload.payload.clear();
    // A consistent IP header whose TCP header is 19 bytes.
    let mut tcp_cut = no_payload.build()[..14 + 20 + 19].to_vec();
    fix_ip_len(&mut tcp_cut);
    let mut udp_no_payload = from_client(proto::UDP, 0);
    udp_no_payload.payload.clear();
    let mut udp_cut = udp_no_payload.build()[..14 + 20 + 7].to_vec();
    fix_ip_len(&mut udp_cut);
    let mut small_offset = full.clone();
    small_offset[14 + 20 + 12] = 4 << 4;
    let mut with_options = from_client(proto::TCP, SYN);
    with_options.options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL
    let options_to_443 = to_port(with_options.clone(), 443);
    let mut first_fragment = from_client(proto::UDP, 0);
    first_fragment.frag = 0x2000; // MF, offset 0
    let mut later_fragment = from_client(proto::UDP, 0);
    later_fragment.frag = 185; // offset 1480 bytes, last fragment
    later_fragment.l4 = L4::Raw { proto: proto::UDP };
    let mut bad_ihl = full.clone();
    bad_ihl[14] = 0x44; // version 4, ihl 4 (16 bytes): impossible
    let mut ihl_beyond = no_payload.build();
    ihl_beyond[14] = 0x4f; // 60-byte header claimed, 40 bytes of IP in total
    let mut version_6 = full.clone();
    version_6[14] = 0x65;
    let mut arp = full.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    let mut ipv6 = arp.clone();
    ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
    let mut icmp = Frame::new(CLIENT, VIP, L4::Raw { proto: 1 });
    // Echo request, checksum not needed by the program.
    icmp.payload = vec![8, 0, 0, 0, 0, 1, 0, 1];

    let tcp = |name| Row::new(name, proto::TCP, 0, 1);
    let udp = |name| Row::new(name, proto::UDP, 0, 1);
    let mut every_cut = tcp("never_aborts_on_any_truncation");
    for len in 14..full.len() {
        every_cut = every_cut.passes_untouched(full[..len].to_vec());
    }
    vec![
        // The kernel refuses test frames shorter than an Ethernet header, so the shortest
        // frame the program can see is a bare Ethernet header: IPv4 ethertype, no IP header.
        tcp("truncated_ethernet")
            .refused(full[..13].to_vec())
            .passes_untouched(full[..14].to_vec())
            .stats(&malformed),
        tcp("truncated_ip_header")
            .passes_untouched(full[..14 + 19].to_vec())
            .stats(&malformed),
        // Cut the payload: tot_len now claims more than the frame holds.
        tcp("ip_total_length_beyond_frame")
            .passes_untouched(full[..full.len() - 1].to_vec())
            .stats(&malformed),
        tcp("truncated_tcp_header")
            .passes_untouched(tcp_cut)
            .stats(&malformed),
        udp("truncated_udp_header")
            .passes_untouched(udp_cut)
            .stats(&malformed),
        tcp("tcp_data_offset_too_small")
            .passes_untouched(small_offset)
            .stats(&malformed),
        tcp("ip_options_to_vip")
            .passes_untouched(with_options.build())
            .stats(&options),
        tcp("ip_options_to_non_vip")
            .passes_untouched(options_to_443.build())
            .stats(&[(stat::PASS_NOT_VIP, 1)]),
        udp("first_fragment_to_vip")
            .passes_untouched(first_fragment.build())
            .stats(&options),
        udp("later_fragment_to_vip")
            .passes_untouched(later_fragment.build())
            .stats(&options),
        tcp("bad_ihl").passes_untouched(bad_ihl).stats(&malformed),
        tcp("ihl_beyond_frame")
            .passes_untouched(ihl_beyond)
            .stats(&malformed),
        tcp("wrong_ip_version")
            .passes_untouched(version_6)
            .stats(&malformed),
        // IPv6 is parsed now: IPv4 bytes under its EtherType are a malformed IPv6 packet.
        tcp("non_ipv4_ethertypes")
            .passes_untouched(arp)
            .passes_untouched(ipv6)
            .stats(&[(stat::PASS_NOT_VIP, 1), (stat::PASS_MALFORMED, 1)]),
        tcp("icmp_to_vip_passes")
            .passes_untouched(icmp.build())
            .stats(&[(stat::PASS_NOT_VIP, 1)]),
        every_cut.check(|fx, _| {
            let full = from_client(proto::TCP, SYN).build();
            assert_eq!(
                fx.stat(stat::PASS_MALFORMED),
                (full.len() - 14) as u64,
                "every cut frame counted malformed"
            );
        }),
    ]
}
