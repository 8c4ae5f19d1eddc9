//! `bench dataplane`: builds the topology, runs both sections, writes the report.
//!
//! ```text
//!  client ns: eth0 ── vclient (LB ns, GRO off) ── vb1 ── eth0 (backend ns)
//!  generator (live frames, XDP_TX)   latch / XDP_DROP / nft        bench_count_drop
//! ```

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use latch::dataplane::{
    BackendSpec, Dataplane, DataplaneSpec, Forwarding, Proto, ServiceKind, ServiceSpec,
};
use latch_tests::{Netns, Topology};

use crate::{
    env::{self, BenchProgs, COUNT_DROP, PASS, PinDir, REDIRECT, with_ns},
    frames::{GenConfig, MODE_FIXED_FLOWS, MODE_NEW_FLOWS, Udp},
    mpps::{self, Generator, Window},
    plot,
    report::{self, PathCost, ProgramTime, ProgramTimeRound, Rate, Report, median},
    testrun::{self, Frames, LatchRun},
};

const PORT: u16 = 5000;
const PERSIST_PORT: u16 = 5001;
const DSR_PORT: u16 = 5002;
const BACKEND_PORT: u16 = 6000;
const ESTABLISHED_FLOWS: u32 = 256;
const NFT_TABLE: &str = "latchbench";
/// latch's global counters shown beside the Mpps of its measurements.
const LATCH_COUNTERS: [&str; 4] = [
    "conntrack_hit",
    "new_flow_maglev",
    "verdict_redirect",
    "pass_fib_miss",
];

pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("MAC {s}"))?;
    parts
        .try_into()
        .map_err(|_| anyhow::anyhow!("MAC {s}: not 6 bytes"))
}

fn spec(vip: Ipv4Addr, backend: Ipv4Addr) -> DataplaneSpec {
    let service = |port, backend_port, ttl, forwarding| ServiceSpec {
        vip: vip.into(),
        port,
        proto: Proto::Udp,
        forwarding,
        kind: ServiceKind::L4,
        persistence_ttl: ttl,
        persistence_prefix_v6: None,
        flow_hash: Default::default(),
        backends: vec![BackendSpec {
            addr: SocketAddrV4::new(backend, backend_port).into(),
            up: true,
            weight: 1,
            backup: false,
        }],
    };
    DataplaneSpec {
        services: vec![
            service(PORT, BACKEND_PORT, None, Forwarding::Nat),
            service(
                PERSIST_PORT,
                BACKEND_PORT + 1,
                Some(Duration::from_secs(3600)),
                Forwarding::Nat,
            ),
            service(DSR_PORT, DSR_PORT, None, Forwarding::Dsr),
        ],
    }
}

fn nft_rules(vip: Ipv4Addr, backend: Ipv4Addr) -> String {
    format!(
        "table ip {NFT_TABLE} {{\n  chain pre {{\n    type nat hook prerouting priority dstnat;\n    \
         ip daddr {vip} udp dport {PORT} counter dnat to {backend}:{BACKEND_PORT}\n  }}\n}}\n"
    )
}

fn nft_packets(lb: &Netns) -> Result<u64> {
    let out = lb.exec(&["nft", "list", "chain", "ip", NFT_TABLE, "pre"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "packets" {
            return Ok(words.next().and_then(|n| n.parse().ok()).unwrap_or(0));
        }
    }
    Ok(0)
}

/// What a scenario receives with and how its counters are read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Ceiling,
    RedirectFloor,
    LatchEstablished,
    LatchNew,
    Nft,
}

impl Target {
    const ALL: [Target; 5] = [
        Target::Ceiling,
        Target::RedirectFloor,
        Target::LatchEstablished,
        Target::LatchNew,
        Target::Nft,
    ];
    fn key(self) -> &'static str {
        match self {
            Target::Ceiling => "xdp_drop_ceiling",
            Target::RedirectFloor => "xdp_redirect_floor",
            Target::LatchEstablished => "latch_established",
            Target::LatchNew => "latch_new_flows",
            Target::Nft => "nft_dnat",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Target::Ceiling => "XDP_DROP ceiling",
            Target::RedirectFloor => "no-lookup XDP forwarder",
            Target::LatchEstablished => "latch established flows",
            Target::LatchNew => "latch new flows",
            Target::Nft => "nftables DNAT (established)",
        }
    }
    fn counted_at(self) -> &'static str {
        match self {
            Target::Ceiling => "XDP counter on the LB's veth",
            _ => "XDP counter on the backend's veth",
        }
    }
}

struct Bench<'a> {
    topo: &'a Topology,
    dp: Option<Dataplane>,
    lb_progs: BenchProgs,
    backend_progs: BenchProgs,
    threads: usize,
    template: Udp,
    generator: Generator,
}

impl Bench<'_> {
    fn lb(&self) -> &Netns {
        self.topo.lb()
    }

    /// Attaches latch (through the agent's own attach code) to exactly `ifaces` of the LB.
    fn latch_attach(&mut self, ifaces: &[String]) -> Result<String> {
        let topo = self.topo;
        let dp = self.dp.as_mut().context("data plane closed")?;
        let attached = env::retry_busy(|| Ok(with_ns(topo.lb(), || dp.attach(ifaces))??))?;
        Ok(attached
            .iter()
            .map(|a| format!("{} {:?}", a.iface, a.mode))
            .collect::<Vec<_>>()
            .join(", "))
    }

    fn configs(&self, mode: u32) -> Vec<GenConfig> {
        let span = (240 / self.threads.max(1)) as u8;
        (0..self.threads)
            .map(|t| {
                GenConfig::new(
                    &self.template,
                    mode,
                    ESTABLISHED_FLOWS,
                    10 + span * t as u8,
                    span,
                )
            })
            .collect()
    }

    /// Switches the LB's veth to what `target` needs.
    fn prepare(&mut self, target: Target) -> Result<()> {
        let lb = self.topo.lb();
        match target {
            Target::Ceiling => {
                self.latch_attach(&[])?;
                self.lb_progs.attach(lb, "vclient", COUNT_DROP)?;
            }
            Target::RedirectFloor => {
                self.latch_attach(&[])?;
                self.lb_progs.attach(lb, "vclient", REDIRECT)?;
            }
            Target::LatchEstablished | Target::LatchNew => {
                self.lb_progs.detach(lb)?;
                self.latch_attach(&["vclient".to_string()])?;
            }
            Target::Nft => {
                self.latch_attach(&[])?;
                // A program gives the veth NAPI, without which frames sent into it are dropped;
                // this one passes everything to the stack.
                self.lb_progs.attach(lb, "vclient", PASS)?;
            }
        }
        Ok(())
    }

    /// latch's global counters named in [`LATCH_COUNTERS`], in that order.
    fn latch_counts(&self) -> Result<Vec<u64>> {
        let stats = self.dp.as_ref().context("data plane closed")?.stats()?;
        Ok(LATCH_COUNTERS
            .iter()
            .map(|n| {
                stats
                    .global
                    .iter()
                    .find(|c| c.name == *n)
                    .map_or(0, |c| c.value)
            })
            .collect())
    }

    /// ns per program run of latch in live traffic (`target` is one of the latch targets),
    /// from the kernel's run-time statistics over one measurement, with the path check: the
    /// share of runs that took the path (conntrack hit, or new flow through maglev).
    fn live_path(&mut self, target: Target, secs: u64) -> Result<PathCost> {
        let runs = |b: &Bench<'_>| -> Result<(u64, u64)> {
            Ok(b.dp.as_ref().context("data plane closed")?.program_runs()?)
        };
        // The kernel times programs only while a BPF_ENABLE_STATS descriptor is open; closing
        // it (at the end of this function, or if the bench dies) switches timing off again.
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("BPF_ENABLE_STATS (run time)")?;
        let counts_before = self.latch_counts()?;
        let (n0, t0) = runs(self)?;
        let (c0, ct0) = self.backend_progs.runs(COUNT_DROP)?;
        let (window, _) = self.measure(target, secs)?;
        let (n1, t1) = runs(self)?;
        let (c1, ct1) = self.backend_progs.runs(COUNT_DROP)?;
        let counts_after = self.latch_counts()?;
        // The kernel's timing (two clock reads around every run) has a cost of its own, part
        // of which lands inside the measured interval. The backend's counter program (one
        // per-CPU increment) measured in the same traffic gives that floor; latch's net figure
        // subtracts it, which also takes off the few ns of the counter's own work.
        let floor = (c1 > c0).then(|| ct1.saturating_sub(ct0) as f64 / (c1 - c0) as f64);
        let delta = |name: &str| -> u64 {
            LATCH_COUNTERS
                .iter()
                .position(|n| *n == name)
                .map_or(0, |i| counts_after[i] - counts_before[i])
        };
        let n = n1.saturating_sub(n0);
        let (key, label, counter) = if target == Target::LatchNew {
            (
                "new_flow_live",
                "new flow, live (full table: every insert evicts)",
                "new_flow_maglev",
            )
        } else {
            (
                "conntrack_hit_live",
                "conntrack hit (NAT, UDP), live",
                "conntrack_hit",
            )
        };
        let on_path = delta(counter);
        // Warm-up and the 256 flows' first packets are the only runs off the path.
        let check_ok = n > 0 && on_path as f64 >= 0.99 * n as f64;
        let ns = if n > 0 {
            t1.saturating_sub(t0) as f64 / n as f64
        } else {
            0.0
        };
        Ok(PathCost {
            key,
            label,
            ns,
            median_ns: ns,
            net_ns: floor.map(|f| (ns - f).max(0.0)),
            runs: n,
            method: format!(
                "live traffic at {:.2} Mpps on veth; kernel run-time statistics \
                 (BPF_ENABLE_STATS) over the whole measurement; net = minus the {} ns per run \
                 that the backend's counter program (one per-CPU increment) measured in the \
                 same traffic (the timing's own cost)",
                window.received_mpps(),
                floor.map_or("-".into(), |f| format!("{f:.0}"))
            ),
            check: format!("{counter} {on_path} of {n} runs"),
            check_ok,
        })
    }

    /// Program time per packet of the program that `target` (the no-lookup forwarder or
    /// latch's established flows) runs on the LB's veth, from the kernel's run-time
    /// statistics over one measurement: (ns per run, runs, the backend counter program's ns
    /// per run in the same traffic, which is the timing's own cost).
    fn program_time(&mut self, target: Target, secs: u64) -> Result<(f64, u64, f64)> {
        let runs = |b: &Bench<'_>| -> Result<(u64, u64)> {
            match target {
                Target::RedirectFloor => b.lb_progs.runs(REDIRECT),
                _ => Ok(b.dp.as_ref().context("data plane closed")?.program_runs()?),
            }
        };
        // Timing is on only while this descriptor is open (BPF_ENABLE_STATS is scoped to
        // it; the host's kernel.bpf_stats_enabled sysctl is left alone).
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("BPF_ENABLE_STATS (run time)")?;
        self.prepare(target)?;
        let (n0, t0) = runs(self)?;
        let (c0, ct0) = self.backend_progs.runs(COUNT_DROP)?;
        self.measure(target, secs)?;
        let (n1, t1) = runs(self)?;
        let (c1, ct1) = self.backend_progs.runs(COUNT_DROP)?;
        let n = n1.saturating_sub(n0);
        if n == 0 || c1 <= c0 {
            bail!("{}: no runs timed", target.label());
        }
        Ok((
            t1.saturating_sub(t0) as f64 / n as f64,
            n,
            ct1.saturating_sub(ct0) as f64 / (c1 - c0) as f64,
        ))
    }

    /// Alternating rounds of [`Self::program_time`] for the forwarder and latch (the order
    /// flips every round, so a drift in the shared machine's load favours neither).
    fn program_times(&mut self, secs: u64, rounds: u32) -> Result<ProgramTime> {
        let mut out = Vec::new();
        for round in 0..rounds {
            let order = if round % 2 == 0 {
                [Target::RedirectFloor, Target::LatchEstablished]
            } else {
                [Target::LatchEstablished, Target::RedirectFloor]
            };
            let mut got = [(0.0, 0, 0.0); 2];
            for t in order {
                env::check_stopped()?;
                let i = usize::from(t == Target::LatchEstablished);
                got[i] = self.program_time(t, secs)?;
            }
            let [(fwd, fwd_runs, fwd_floor), (latch, latch_runs, latch_floor)] = got;
            let r = ProgramTimeRound {
                forwarder_ns: fwd,
                forwarder_net_ns: (fwd - fwd_floor).max(0.0),
                forwarder_runs: fwd_runs,
                latch_ns: latch,
                latch_net_ns: (latch - latch_floor).max(0.0),
                latch_runs,
            };
            println!(
                "    round {}/{rounds}: forwarder {:.1} ns ({:.1} net), latch established {:.1} ns \
                 ({:.1} net): latch / forwarder {:.2} raw, +{:.1} ns",
                round + 1,
                r.forwarder_ns,
                r.forwarder_net_ns,
                r.latch_ns,
                r.latch_net_ns,
                r.raw_ratio(),
                r.extra_ns()
            );
            out.push(r);
        }
        Ok(ProgramTime::from_rounds(out))
    }

    fn measure(&mut self, target: Target, secs: u64) -> Result<(Window, String)> {
        self.prepare(target)?;
        let mode = if target == Target::LatchNew {
            MODE_NEW_FLOWS
        } else {
            MODE_FIXED_FLOWS
        };
        let configs = self.configs(mode);
        let client = self.topo.client().path();
        let before = self.latch_counts()?;
        let nft_before = if target == Target::Nft {
            nft_packets(self.lb())?
        } else {
            0
        };
        let w = match target {
            Target::Ceiling => {
                let p = &self.lb_progs;
                mpps::window(self.generator, &client, "eth0", &configs, secs, &|| {
                    p.count()
                })?
            }
            _ => {
                let p = &self.backend_progs;
                mpps::window(self.generator, &client, "eth0", &configs, secs, &|| {
                    p.count()
                })?
            }
        };
        let detail = match target {
            Target::LatchEstablished | Target::LatchNew => {
                let after = self.latch_counts()?;
                LATCH_COUNTERS
                    .iter()
                    .zip(after.iter().zip(&before))
                    .map(|(n, (a, b))| format!("{n} {}", a - b))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
            Target::Nft => format!(
                "nft DNAT rule hits (conntrack entries created) {}",
                nft_packets(self.lb())? - nft_before
            ),
            Target::Ceiling | Target::RedirectFloor => String::new(),
        };
        Ok((w, detail))
    }
}

fn method_notes(threads: usize, secs: u64, generator: Generator) -> Vec<String> {
    vec![
        format!(
            "Generator of this run: {}. The bench first tries one live-frames test run and \
             falls back to an AF_PACKET socket (PACKET_QDISC_BYPASS, sendmmsg of 64 frames, \
             the same frames) in the client namespace when the kernel refuses it (EPERM, e.g. \
             a BPF LSM). The fallback sends fewer Mpps than live frames: when 'generated' is \
             not well above 'received', a rate measures the generator too, and the program-time \
             rows below are the generator-independent comparison.",
            generator.describe()
        ),
        "Program time: latch (established flows) and the no-lookup forwarder each measured \
         with the kernel's run-time statistics (BPF_ENABLE_STATS(BPF_STATS_RUN_TIME), a \
         descriptor held only during the measurement; the host sysctl is untouched) over the \
         same traffic, in alternating rounds; 'net' subtracts what the backend's counter \
         program (one per-CPU increment) measured in the same window (the timing's own cost). \
         The ratio and the difference are per round, then median and range. IPv6 rows: not \
         measured yet (the XDP program has no IPv6 path in this build); they belong beside the \
         established and new-flow rows, with the same generator and the same program-time \
         comparison."
            .into(),
        "ns/packet: BPF_PROG_TEST_RUN on latch-xdp in the LB namespace (FIB lookups resolve \
         there), with the data plane programmed through latch::dataplane::Dataplane::apply. \
         The kernel reports the mean duration of the program runs of one call."
            .into(),
        "repeat > 1 reuses one buffer: the second run sees the first one's rewrite. Only the \
         non-VIP pass leaves frame and maps unchanged, so only it uses repeat. The others run \
         each frame once per call on a fresh copy: conntrack hit over flows established \
         beforehand, new flow over distinct 5-tuples never seen before (so no clearing is \
         needed), persistence hit over new 5-tuples of clients pinned beforehand."
            .into(),
        "Every path is checked against latch's own counters (e.g. conntrack_hit and \
         verdict_redirect must each grow by exactly the number of runs); a path that fails its \
         check is reported as not measured. A 1-run call includes one extra clock read: the \
         two non-VIP rows measure that overhead (1-run mean minus repeat mean); the 1-run rows \
         show it included (upper bounds) and subtracted, and the targets use the latter. The \
         DSR conntrack hit (idempotent, so repeat) is a warm-cache figure for comparison."
            .into(),
        format!(
            "Mpps: {threads} generator threads in the client namespace, pinned {per_cpu} per \
             CPU, run an XDP program through BPF_PROG_TEST_RUN with \
             BPF_F_TEST_XDP_LIVE_FRAMES; it writes the whole 42-byte header from a template on \
             every run (live frames are recycled page_pool pages, a receiver's NAT rewrite \
             would otherwise leak into the next frame) and returns XDP_TX, which sends the \
             frame into the LB's veth. 64-byte UDP frames. Each call is sized to last about \
             0.3 s: a call costs a fixed ~40 ms of sleep (page_pool teardown waits for an RCU \
             grace period), which the second thread on the CPU fills. Every veth has one queue \
             per CPU (a veth queues a frame on the peer's queue of the sending CPU, each queue \
             with its own NAPI), as RSS gives a real NIC.",
            per_cpu = mpps::THREADS_PER_CPU
        ),
        format!(
            "Established: {ESTABLISHED_FLOWS} fixed flows (source ports vary). New flows: every \
             frame a new 5-tuple (source port and last source octet vary, disjoint per thread)."
        ),
        format!(
            "Each measurement is a {secs} s window that opens after the generators have run \
             0.7 s; received packets are counted by an XDP program \
             (count, then XDP_DROP) on the LB's veth for the ceiling and on the backend's veth \
             for latch and nftables. Rounds interleave the measurements; the median round \
             is reported. 'generated' is what the generators sent in the same window (each call \
             prorated to the part of it inside the window): when it \
             exceeds 'received', the receiver, not the generator, is the bottleneck."
        ),
        "No-lookup XDP forwarder: a bench program on the LB's veth that writes fixed MACs and \
         redirects every UDP frame to the backend's veth (bpf_redirect, as latch), without \
         parsing beyond the Ethernet type and IP protocol or any lookup but its one: the best \
         any XDP forwarder can do on this topology (the frame crosses a second veth, whose \
         receive runs on the same two CPUs), against which latch's own lookups and rewrites \
         show."
            .into(),
        "nftables: one DNAT rule in the LB namespace only (prerouting), GRO off on the LB's \
         client veth (GRO would merge a UDP flow into a few large packets and make the stack \
         look cheaper per packet), an XDP_PASS program on it for NAPI."
            .into(),
        "ns/packet in live traffic: after the Mpps rounds, one more established and one more \
         new-flow measurement with the kernel's run-time statistics on (BPF_ENABLE_STATS, held \
         only for that measurement): run time / runs of latch-xdp over millions of packets, \
         with warm caches and real flow churn, which the 1-run-per-call method cannot give \
         (each call enters the kernel and cools the caches; its figures vary by 2x between \
         runs). Timing every run costs about 57 ns here (a clock read in a VM), so these \
         measurements are kept out of the Mpps rows, and the net figure subtracts what the \
         backend's one-increment counter program measured in the same traffic. In the \
         new-flow measurement the connection table is full after a fraction of a second, so \
         every new flow also evicts (a SYN flood's cost rather than a quiet new connection's)."
            .into(),
        "The machine is shared (2 CPUs, other jobs): rates vary between runs; compare \
         measurements of the same run."
            .into(),
    ]
}

pub fn run(secs: u64, rounds: u32) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench dataplane needs root (namespaces, XDP, BPF_PROG_TEST_RUN)");
    }
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(2);
    let threads = cpus * mpps::THREADS_PER_CPU;
    println!("==> bench dataplane: topology (namespaces client, lb, backend)");
    let topo = Topology::builder()
        .backends(1)
        .vip_on_lb(false)
        .queues(cpus)
        .build()
        .context("building the topology")?;
    let vip = topo.vip();
    let backend_addr = topo.backend_addrs()[0];
    let backend_ns = &topo.backend(1).context("no backend 1")?.ns;
    let backend_mac = backend_ns.mac("eth0")?;
    let lb = topo.lb();
    lb.exec(&["ethtool", "-K", "vclient", "gro", "off"])?;
    lb.ip(&[
        "neigh",
        "replace",
        &backend_addr.to_string(),
        "lladdr",
        &backend_mac,
        "dev",
        "vb1",
        "nud",
        "permanent",
    ])?;
    let template = Udp {
        src_mac: parse_mac(&topo.client().mac("eth0")?)?,
        dst_mac: parse_mac(&lb.mac("vclient")?)?,
        src: topo.client_addr(),
        dst: vip,
        sport: 10_000,
        dport: PORT,
    };

    let pins = PinDir::new();
    let mut dp = Dataplane::open(&pins.0).context("opening the data plane")?;
    dp.apply(&spec(vip, backend_addr))
        .context("programming the data plane")?;

    println!("==> [1/3] ns/packet with BPF_PROG_TEST_RUN");
    let latch_run = LatchRun::load(&pins.0)?;
    let frames = Frames {
        client_mac: template.src_mac,
        lb_mac: template.dst_mac,
        lb_addr: latch_tests::topology::LB_CLIENT_SIDE_ADDR,
        vip,
        port: PORT,
        persist_port: PERSIST_PORT,
        dsr_port: DSR_PORT,
    };
    let mut paths = with_ns(lb, || -> Result<_> {
        let ingress = env::ifindex("vclient")?;
        testrun::measure(&dp, &latch_run, ingress, &frames)
    })??;
    drop(latch_run);
    for p in &paths {
        println!(
            "    {:<48} {:>7.1} ns (median {:.0}){}{}",
            p.label,
            p.ns,
            p.median_ns,
            p.net_ns.map_or(String::new(), |v| format!(
                ", {v:.0} without per-call overhead"
            )),
            if p.check_ok {
                ""
            } else {
                "  PATH CHECK FAILED"
            }
        );
    }
    // The Mpps section starts from an empty flow table, as a fresh agent would.
    drop(dp);
    latch::dataplane::teardown(&pins.0).context("resetting the data plane")?;
    let mut dp = Dataplane::open(&pins.0)?;
    dp.apply(&spec(vip, backend_addr))?;

    println!(
        "==> [2/3] Mpps on veth: {rounds} round(s) x {} measurements x {secs} s, {threads} generator thread(s)",
        Target::ALL.len()
    );
    let mut backend_progs = BenchProgs::load()?;
    backend_progs.attach(backend_ns, "eth0", COUNT_DROP)?;
    let rules = nft_rules(vip, backend_addr);
    {
        use std::io::Write;
        let mut child = lb
            .command(&["nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .context("starting nft")?;
        child
            .stdin
            .take()
            .context("nft stdin")?
            .write_all(rules.as_bytes())?;
        if !child.wait()?.success() {
            bail!("nft rejected the DNAT ruleset");
        }
    }
    let mut lb_progs = BenchProgs::load()?;
    let vb1 = with_ns(lb, || env::ifindex("vb1"))??;
    lb_progs.set_redirect(vb1, parse_mac(&backend_mac)?, parse_mac(&lb.mac("vb1")?)?)?;
    let (generator, why) = mpps::choose_generator(
        &topo.client().path(),
        "eth0",
        GenConfig::new(&template, MODE_FIXED_FLOWS, 1, 10, 1),
    )?;
    println!("    generator: {} ({why})", generator.describe());
    let mut bench = Bench {
        topo: &topo,
        dp: Some(dp),
        lb_progs,
        backend_progs,
        threads,
        template,
        generator,
    };
    let mut windows: Vec<Vec<Window>> = vec![Vec::new(); Target::ALL.len()];
    let mut details = vec![String::new(); Target::ALL.len()];
    let mut live = Vec::new();
    let mut program_time = None;
    let result = (|| -> Result<()> {
        for round in 1..=rounds {
            for (i, target) in Target::ALL.iter().enumerate() {
                env::check_stopped()?;
                let (w, detail) = bench.measure(*target, secs)?;
                println!(
                    "    round {round}/{rounds} {:<28} {:>6.2} Mpps received, {:>6.2} Mpps generated{}",
                    target.label(),
                    w.received_mpps(),
                    w.generated_mpps(),
                    if detail.is_empty() {
                        String::new()
                    } else {
                        format!("  [{detail}]")
                    }
                );
                windows[i].push(w);
                details[i] = detail;
            }
        }
        println!(
            "==> [3/3] ns/packet in live traffic: program time from the kernel's BPF run-time \
             statistics: {rounds} alternating round(s) of the no-lookup forwarder and latch \
             (established), then one new-flow measurement"
        );
        match bench.program_times(secs, rounds) {
            Ok(p) => {
                println!(
                    "    latch / forwarder program time: median {:.2} (rounds {:.2}..{:.2}); \
                     latch adds median {:.1} ns (rounds {:.1}..{:.1})",
                    p.median_raw_ratio,
                    p.min_raw_ratio,
                    p.max_raw_ratio,
                    p.median_extra_ns,
                    p.min_extra_ns,
                    p.max_extra_ns
                );
                program_time = Some(p);
            }
            // Kernels before 5.8 have no BPF_ENABLE_STATS: the rest of the report stands.
            Err(e) => println!("    program time not measured: {e:#}"),
        }
        for target in [Target::LatchEstablished, Target::LatchNew] {
            env::check_stopped()?;
            let p = match bench.live_path(target, secs) {
                Ok(p) => p,
                // Kernels before 5.8 have no BPF_ENABLE_STATS: the rest of the report stands.
                Err(e) => {
                    println!("    not measured: {e:#}");
                    continue;
                }
            };
            println!(
                "    {:<48} {:>7.1} ns{}  [{}]",
                p.label,
                p.ns,
                p.net_ns.map_or(String::new(), |v| format!(
                    ", {v:.0} without timing overhead"
                )),
                p.check
            );
            live.push(p);
        }
        Ok(())
    })();
    // Cleanup before reporting (and on error): links off, then maps; namespaces go last.
    let _ = bench.latch_attach(&[]);
    let _ = bench.lb_progs.detach(lb);
    let _ = bench.backend_progs.detach(backend_ns);
    drop(bench);
    drop(pins);
    result?;
    paths.extend(live);

    let rates: Vec<Rate> = Target::ALL
        .iter()
        .zip(windows.iter().zip(details))
        .map(|(t, (ws, detail))| {
            let recv: Vec<f64> = ws.iter().map(Window::received_mpps).collect();
            let generated: Vec<f64> = ws.iter().map(Window::generated_mpps).collect();
            Rate {
                key: t.key(),
                label: t.label(),
                mpps: median(&recv),
                rounds_mpps: recv,
                generated_mpps: median(&generated),
                counted_at: t.counted_at().into(),
                detail,
            }
        })
        .collect();
    let ratios = report::ratios(&rates);
    let report = Report {
        machine: crate::report::Machine::now(),
        seconds_per_measurement: secs,
        rounds,
        generator_threads: threads,
        targets: report::targets(&paths, &ratios),
        generator: format!("{} ({why})", generator.describe()),
        program_time,
        paths,
        rates,
        ratios,
        method: method_notes(threads, secs, generator),
    };
    write(&report)
}

fn write(report: &Report) -> Result<()> {
    let dir = env::out_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let md = report::markdown(report);
    std::fs::write(dir.join("dataplane.md"), &md)?;
    std::fs::write(
        dir.join("dataplane.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    let png = dir.join("dataplane.png");
    if let Err(e) = plot::write_png(report, &png) {
        eprintln!("warning: no plot: {e:#}");
    }
    println!();
    println!("==> summary");
    println!(
        "{:<40} {:>10} {:>10} {:>10}",
        "Mpps", "received", "generated", "vs ceiling"
    );
    let ceiling = report
        .rates
        .iter()
        .find(|r| r.key == "xdp_drop_ceiling")
        .map(|r| r.mpps);
    for r in &report.rates {
        println!(
            "{:<40} {:>10.2} {:>10.2} {:>10}",
            r.label,
            r.mpps,
            r.generated_mpps,
            ceiling
                .filter(|c| *c > 0.0)
                .map_or("-".into(), |c| format!("{:.0}%", r.mpps / c * 100.0))
        );
    }
    println!();
    println!("{:<48} {:>10} {:>10}", "ns/packet", "mean", "net");
    for p in &report.paths {
        println!(
            "{:<48} {:>10.1} {:>10}{}",
            p.label,
            p.ns,
            p.net_ns.map_or("-".into(), |v| format!("{v:.1}")),
            if p.check_ok {
                ""
            } else {
                "  (path check FAILED)"
            }
        );
    }
    println!();
    println!(
        "{:<40} {:<16} {:<14} verdict",
        "target", "required", "measured"
    );
    for line in report::target_lines(&report.targets) {
        println!("{line}");
    }
    println!();
    println!("==> wrote {}/dataplane.{{md,json,png}}", dir.display());
    Ok(())
}
