//! The connection table at and beyond its capacity: new UDP NAT flows run through latch's XDP
//! program with BPF_PROG_TEST_RUN (one run per distinct 5-tuple, no frame leaves), in phases
//! that take the table from empty to half full, to full, and on until four times its
//! capacity has been written. Per phase: the kernel's ns per run, the entries written, the table's fill and the
//! evictions (entries written less the table's growth).

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{Context, Result, bail};
use latch::dataplane::{
    BackendSpec, Dataplane, DataplaneSpec, Forwarding, Proto, ServiceKind, ServiceSpec,
};
use latch_tests::Netns;
use lb_common::Capacities;
use serde::Serialize;

use crate::{
    dataplane::parse_mac,
    env::{self, PinDir, with_ns},
    frames::{Udp, distinct_flow, udp_frame},
    testrun::{LatchRun, counter},
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const PORT: u16 = 5000;
const BACKEND: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const BACKEND_MAC: &str = "02:00:00:00:0b:0b";
const XDP_REDIRECT: u32 = 4;
/// Connection-table capacity of the measurement (entries): small enough to go twice round
/// it in a few seconds of test runs, large enough to be far from the per-CPU LRU's batches.
pub const CAPACITY: u32 = 131_072;

#[derive(Clone, Serialize)]
pub struct Phase {
    pub label: String,
    /// New flows (distinct 5-tuples) run in this phase.
    pub flows: u64,
    /// Mean kernel ns per program run (one run per call: includes one clock read).
    pub ns_per_flow: f64,
    /// Connection-table entries written (`conntrack_insert`).
    pub inserts: u64,
    /// Entries in the table at the end of the phase.
    pub entries_after: u64,
    /// Entries written that the table did not grow by: evicted (no flow ends here).
    pub evictions: u64,
}

#[derive(Serialize)]
pub struct CtResult {
    pub capacity: u32,
    pub cpus: usize,
    pub entries_per_flow: f64,
    pub phases: Vec<Phase>,
}

fn caps() -> Capacities {
    Capacities {
        connections: CAPACITY,
        client_pins: 1024,
        table_mirror_entries: 4096,
        ..Capacities::DEFAULT
    }
}

fn spec() -> DataplaneSpec {
    DataplaneSpec {
        services: vec![ServiceSpec {
            vip: VIP.into(),
            port: PORT,
            proto: Proto::Udp,
            forwarding: Forwarding::Nat,
            kind: ServiceKind::L4,
            persistence_ttl: None,
            persistence_prefix_v6: None,
            flow_hash: Default::default(),
            backends: vec![BackendSpec {
                addr: SocketAddrV4::new(BACKEND, 6000).into(),
                up: true,
                weight: 1,
                backup: false,
            }],
        }],
    }
}

/// One namespace (forwarding on, as on a load balancer) with a veth pair in it: frames "arrive" on `ct1`, the backend's /24 is
/// routed out of `ct0` with a permanent neighbour, so the program's FIB lookup succeeds as
/// on a real host and the verdict is XDP_REDIRECT. Test runs without live frames send
/// nothing.
fn namespace() -> Result<Netns> {
    let ns = Netns::new("scale")?;
    ns.ip(&["link", "set", "lo", "up"])?;
    // The namespace's own forwarding switch: bpf_fib_lookup refuses to route without it.
    ns.sysctl(&[("net.ipv4.ip_forward", "1")])?;
    ns.ip(&["link", "add", "ct0", "type", "veth", "peer", "name", "ct1"])?;
    ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "ct0"])?;
    ns.ip(&["addr", "add", "203.0.113.1/24", "dev", "ct1"])?;
    ns.ip(&["link", "set", "ct0", "up"])?;
    ns.ip(&["link", "set", "ct1", "up"])?;
    ns.ip(&[
        "neigh",
        "replace",
        &BACKEND.to_string(),
        "lladdr",
        BACKEND_MAC,
        "dev",
        "ct0",
        "nud",
        "permanent",
    ])?;
    Ok(ns)
}

fn connections(dp: &Dataplane) -> Result<u64> {
    dp.map_fill()?
        .iter()
        .find(|m| m.map == "connections")
        .map(|m| m.entries)
        .context("no connections map")
}

pub fn run() -> Result<CtResult> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ns = namespace()?;
    let pins = PinDir::new();
    let mut dp = Dataplane::open_with(&pins.0, &caps()).context("opening the data plane")?;
    dp.apply(&spec()).context("programming the data plane")?;
    let latch = LatchRun::load(&pins.0)?;
    let lb_mac = parse_mac(&ns.mac("ct1")?)?;
    let ingress = with_ns(&ns, || env::ifindex("ct1"))??;

    // The whole measurement runs inside the namespace (the FIB lookup and `ingress` are its).
    let out = with_ns(&ns, || measure(&dp, &latch, ingress, lb_mac, cpus))??;
    // The table measurements that follow run on whichever CPU is free.
    env::allow_all_cpus(cpus)?;
    drop(latch);
    drop(dp);
    Ok(out)
}

fn measure(
    dp: &Dataplane,
    latch: &LatchRun,
    ingress: u32,
    lb_mac: [u8; 6],
    cpus: usize,
) -> Result<CtResult> {
    let cap = u64::from(CAPACITY);
    // Flows per phase, in NAT flows of (as measured below) one or two entries each: the
    // phase boundaries are placed in entries.
    let probe = |dp: &Dataplane| -> Result<(u64, u64)> {
        Ok((counter(dp, "conntrack_insert")?, connections(dp)?))
    };
    let mut next = 0u32;
    let mut run_flows = |count: u64| -> Result<(u64, f64)> {
        let mut ns_sum = 0u64;
        for i in 0..count {
            if i % 4096 == 0 {
                env::check_stopped()?;
                // New flows arrive on every CPU, as RSS spreads them: the table keeps one LRU
                // list per CPU (BPF_F_NO_COMMON_LRU), so where they run matters.
                env::pin_to_cpu((i / 4096) as usize % cpus)?;
            }
            let (src, sport) = distinct_flow(next);
            next += 1;
            let frame = udp_frame(&Udp {
                src_mac: [2, 0, 0, 0, 0, 1],
                dst_mac: lb_mac,
                src,
                dst: VIP,
                sport,
                dport: PORT,
            });
            let (verdict, ns) = latch.run(&frame, ingress, 1)?;
            if verdict != XDP_REDIRECT {
                let counters: Vec<String> = dp
                    .stats()?
                    .global
                    .iter()
                    .filter(|c| c.value > 0)
                    .map(|c| format!("{} {}", c.name, c.value))
                    .collect();
                bail!(
                    "new flow {i}: verdict {verdict}, expected {XDP_REDIRECT} (redirect); \
                     counters: {}",
                    counters.join(", ")
                );
            }
            ns_sum += ns;
        }
        Ok((count, ns_sum as f64 / count.max(1) as f64))
    };
    // A first flow tells how many entries a flow takes (2 for NAT today: forward and reply).
    let (i0, _) = probe(dp)?;
    run_flows(1)?;
    let (i1, e1) = probe(dp)?;
    let per_flow = (i1 - i0).max(1);
    let mut phases = Vec::new();
    let targets = [
        ("empty → 50% full", cap / 2),
        ("50% → 100% full", cap),
        ("100% → 200% written (beyond)", 2 * cap),
        ("200% → 400% written (beyond)", 4 * cap),
    ];
    let (mut written, mut last_entries, mut last_inserts) = (i1 - i0, e1, i1);
    for (label, upto) in targets {
        let flows = upto.saturating_sub(written) / per_flow;
        println!("    connection table: {label}, {flows} new flows");
        let (flows, ns_per_flow) = run_flows(flows)?;
        let (ins, entries) = probe(dp)?;
        let inserts = ins - last_inserts;
        phases.push(Phase {
            label: label.into(),
            flows,
            ns_per_flow,
            inserts,
            entries_after: entries,
            evictions: inserts.saturating_sub(entries.saturating_sub(last_entries)),
        });
        written += inserts;
        last_entries = entries;
        last_inserts = ins;
    }
    Ok(CtResult {
        capacity: CAPACITY,
        cpus,
        entries_per_flow: per_flow as f64,
        phases,
    })
}
