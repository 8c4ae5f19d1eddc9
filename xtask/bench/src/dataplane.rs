//! `bench dataplane`: builds the topology, runs both sections, writes the report.
//!
//! ```text
//!  client ns: eth0 ── vclient (LB ns, GRO off) ── vb1 ── eth0 (backend ns)
//!  bench_reflect     latch / XDP_TX / forwarder / nft     bench_count_drop
//!  (+ live frames)
//! ```
//!
//! The Mpps rows run on the circulating loop (circulate.rs) on every machine: the loop's
//! services forward to an address behind the client's veth, so frames go back and forth
//! between `bench_reflect` and the program under test. Where the kernel allows live-frames test
//! runs, the IPv4 rows are also measured open-loop with them (generator in the client
//! namespace, counter on the backend's veth), as before.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{Xdp, XdpMode, xdp::XdpLinkId},
};
use latch::dataplane::{
    BackendSpec, Dataplane, DataplaneSpec, Forwarding, Proto, ServiceKind, ServiceSpec,
};
use latch_tests::{Netns, Topology};

use crate::{
    circulate::{self, Loop},
    env::{self, BenchProgs, COUNT_DROP, PASS, PinDir, REDIRECT, TX, with_ns},
    frames::{
        GenConfig, LoopUdp, MODE_FIXED_FLOWS, MODE_NEW_FLOWS, ReflectConfig, Udp, gen_config,
        reflect_config,
    },
    mpps::{self, Generator, Window},
    plot,
    report::{self, PathCost, ProgramTime, ProgramTimeRound, Rate, Report, median},
    testrun::{self, Frames, LatchRun},
};

const PORT: u16 = 5000;
const PERSIST_PORT: u16 = 5001;
const DSR_PORT: u16 = 5002;
/// The loop's services (IPv4 and IPv6 VIPs): their backend is behind the client's veth.
const LOOP_PORT: u16 = 5010;
const BACKEND_PORT: u16 = 6000;
const ESTABLISHED_FLOWS: u32 = 256;
const NFT_TABLE: &str = "latchbench";
/// The loop's IPv4 backend: on the client's /24, never configured anywhere (the reflector
/// answers for it); new-flow sources stay within 203.0.113.10..=250.
const LOOP_BACKEND: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 254);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x10);
/// The LB's address on the client's veth, the client's, and the loop's IPv6 backend.
const LB_CLIENT_SIDE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 2);
const LOOP_BACKEND6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0xfe);
/// latch's global counters shown beside the Mpps of its measurements.
const LATCH_COUNTERS: [&str; 5] = [
    "conntrack_hit",
    "new_flow_maglev",
    "verdict_tx",
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

fn service(
    vip: IpAddr,
    port: u16,
    backend: SocketAddr,
    ttl: Option<Duration>,
    forwarding: Forwarding,
) -> ServiceSpec {
    ServiceSpec {
        vip,
        port,
        proto: Proto::Udp,
        forwarding,
        kind: ServiceKind::L4,
        persistence_ttl: ttl,
        persistence_prefix_v6: None,
        flow_hash: Default::default(),
        backends: vec![BackendSpec {
            addr: backend,
            up: true,
            weight: 1,
            backup: false,
        }],
    }
}

fn spec(vip: Ipv4Addr, backend: Ipv4Addr) -> DataplaneSpec {
    let be = |port| SocketAddr::V4(SocketAddrV4::new(backend, port));
    DataplaneSpec {
        services: vec![
            service(vip.into(), PORT, be(BACKEND_PORT), None, Forwarding::Nat),
            service(
                vip.into(),
                PERSIST_PORT,
                be(BACKEND_PORT + 1),
                Some(Duration::from_secs(3600)),
                Forwarding::Nat,
            ),
            service(vip.into(), DSR_PORT, be(DSR_PORT), None, Forwarding::Dsr),
            service(
                vip.into(),
                LOOP_PORT,
                SocketAddr::new(LOOP_BACKEND.into(), BACKEND_PORT),
                None,
                Forwarding::Nat,
            ),
            service(
                VIP6.into(),
                LOOP_PORT,
                SocketAddr::new(LOOP_BACKEND6.into(), BACKEND_PORT),
                None,
                Forwarding::Nat,
            ),
        ],
    }
}

fn nft_rules(vip: Ipv4Addr, backend: Ipv4Addr) -> String {
    format!(
        "table ip {NFT_TABLE} {{\n  chain pre {{\n    type nat hook prerouting priority dstnat;\n    \
         ip daddr {vip} udp dport {PORT} counter dnat to {backend}:{BACKEND_PORT}\n    \
         ip daddr {vip} udp dport {LOOP_PORT} counter dnat to {LOOP_BACKEND}:{BACKEND_PORT}\n  \
         }}\n}}\n"
    )
}

/// Packets of every rule of the bench's chain (only one of them sees traffic at a time).
fn nft_packets(lb: &Netns) -> Result<u64> {
    let out = lb.exec(&["nft", "list", "chain", "ip", NFT_TABLE, "pre"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    let mut total = 0;
    while let Some(w) = words.next() {
        if w == "packets" {
            total += words
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(total)
}

/// What a scenario receives with and how its counters are read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    Ceiling,
    RedirectFloor,
    LatchEstablished,
    LatchNew,
    Nft,
    LatchEstablished6,
    LatchNew6,
}

impl Target {
    /// Every loop measurement, in round order.
    const ALL: [Target; 7] = [
        Target::Ceiling,
        Target::RedirectFloor,
        Target::LatchEstablished,
        Target::LatchNew,
        Target::Nft,
        Target::LatchEstablished6,
        Target::LatchNew6,
    ];
    /// The measurements live frames (IPv4 only) also make where the kernel allows them.
    const LIVE: [Target; 5] = [
        Target::Ceiling,
        Target::RedirectFloor,
        Target::LatchEstablished,
        Target::LatchNew,
        Target::Nft,
    ];
    fn key(self) -> &'static str {
        match self {
            Target::Ceiling => "ceiling",
            Target::RedirectFloor => "xdp_redirect_floor",
            Target::LatchEstablished => "latch_established",
            Target::LatchNew => "latch_new_flows",
            Target::Nft => "nft_dnat",
            Target::LatchEstablished6 => "latch_established_v6",
            Target::LatchNew6 => "latch_new_flows_v6",
        }
    }
    fn label(self, gen_kind: Generator) -> &'static str {
        match (self, gen_kind) {
            (Target::Ceiling, Generator::Loop) => "ceiling: XDP_TX bounce",
            (Target::Ceiling, Generator::LiveFrames) => "ceiling: XDP_DROP",
            (Target::RedirectFloor, _) => "no-lookup XDP forwarder",
            (Target::LatchEstablished, _) => "latch established flows",
            (Target::LatchNew, _) => "latch new flows",
            (Target::Nft, _) => "nftables DNAT (established)",
            (Target::LatchEstablished6, _) => "latch established flows, IPv6",
            (Target::LatchNew6, _) => "latch new flows, IPv6",
        }
    }
    fn counted_at(self, gen_kind: Generator) -> &'static str {
        match (self, gen_kind) {
            (_, Generator::Loop) => "reflector on the client's veth (frames returned)",
            (Target::Ceiling, _) => "XDP counter on the LB's veth",
            _ => "XDP counter on the backend's veth",
        }
    }
    fn v6(self) -> bool {
        matches!(self, Target::LatchEstablished6 | Target::LatchNew6)
    }
    fn new_flows(self) -> bool {
        matches!(self, Target::LatchNew | Target::LatchNew6)
    }
    fn latch(self) -> bool {
        matches!(
            self,
            Target::LatchEstablished
                | Target::LatchNew
                | Target::LatchEstablished6
                | Target::LatchNew6
        )
    }
}

struct Bench<'a> {
    topo: &'a Topology,
    dp: Option<Dataplane>,
    lb_progs: BenchProgs,
    backend_progs: BenchProgs,
    reflector: Loop,
    cpus: usize,
    threads: usize,
    template: Udp,
    loop_v4: LoopUdp,
    loop_v6: LoopUdp,
    /// The forwarder's next hops: the backend's veth (live frames), the client's (the loop).
    hop_backend: (u32, [u8; 6], [u8; 6]),
    hop_client: (u32, [u8; 6], [u8; 6]),
    /// ns per run that the kernel's timing itself costs (a near-empty program's run time),
    /// measured once in the loop.
    timing_floor: Option<f64>,
    /// `--compare`'s objects (None: `builtin`), and the one the latch targets run (None, or
    /// an index of `builtin`: the built one, through the agent's attach code).
    variants: Vec<Option<Variant>>,
    variant: Option<usize>,
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

    /// Live-frames generator configurations, one per thread.
    fn configs(&self, mode: u32) -> Vec<GenConfig> {
        let span = (240 / self.threads.max(1)) as u8;
        (0..self.threads)
            .map(|t| {
                gen_config(
                    &self.template,
                    mode,
                    ESTABLISHED_FLOWS,
                    10 + span * t as u8,
                    span,
                )
            })
            .collect()
    }

    /// The reflector's configuration for `target`.
    fn loop_config(&self, target: Target) -> ReflectConfig {
        let mode = if target.new_flows() {
            MODE_NEW_FLOWS
        } else {
            MODE_FIXED_FLOWS
        };
        let cpus = self.cpus.max(1) as u32;
        if target.v6() {
            // 2001:db8:2::1000 upward, 0x4000 addresses per CPU.
            reflect_config(&self.loop_v6, mode, ESTABLISHED_FLOWS, 0x1000, 0x4000, cpus)
        } else {
            // 203.0.113.10..=249, split between the CPUs.
            let span = (240 / cpus) as u16;
            reflect_config(
                &self.loop_v4,
                mode,
                ESTABLISHED_FLOWS,
                (113 << 8) | 10,
                span,
                cpus,
            )
        }
    }

    /// Switches the LB's veth to what `target` needs, with the forwarder's next hop on the
    /// side the generator counts at.
    fn prepare(&mut self, target: Target, gen_kind: Generator) -> Result<()> {
        let lb = self.topo.lb();
        if let (Some(i), true) = (self.variant, target.latch())
            && self.variants[i].is_some()
        {
            self.lb_progs.detach(lb)?;
            self.latch_attach(&[])?;
            return self.attach_variant(i);
        }
        self.detach_variants()?;
        match target {
            Target::Ceiling => {
                self.latch_attach(&[])?;
                let prog = match gen_kind {
                    Generator::Loop => TX,
                    Generator::LiveFrames => COUNT_DROP,
                };
                self.lb_progs.attach(lb, "vclient", prog)?;
            }
            Target::RedirectFloor => {
                self.latch_attach(&[])?;
                let (ifindex, dmac, smac) = match gen_kind {
                    Generator::Loop => self.hop_client,
                    Generator::LiveFrames => self.hop_backend,
                };
                self.lb_progs.set_redirect(ifindex, dmac, smac)?;
                self.lb_progs.attach(lb, "vclient", REDIRECT)?;
            }
            t if t.latch() => {
                self.lb_progs.detach(lb)?;
                self.latch_attach(&["vclient".to_string()])?;
            }
            _ => {
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

    /// Attaches variant `i` alone to the LB's client veth (driver mode).
    fn attach_variant(&mut self, i: usize) -> Result<()> {
        if self.variants[i].as_ref().is_some_and(|v| v.link.is_some()) {
            return Ok(());
        }
        self.detach_variants()?;
        let lb = self.topo.lb();
        let Some(v) = self.variants[i].as_mut() else {
            return Ok(());
        };
        let p = v.prog()?;
        let id = env::retry_busy(|| {
            with_ns(lb, || p.attach("vclient", XdpMode::Driver))?
                .context("attaching a --compare object to vclient")
        })?;
        v.link = Some(id);
        Ok(())
    }

    fn detach_variants(&mut self) -> Result<()> {
        let lb = self.topo.lb();
        for v in self.variants.iter_mut().flatten() {
            if let Some(id) = v.link.take() {
                let p = v.prog()?;
                with_ns(lb, || p.detach(id))?.context("detaching a --compare object")?;
            }
        }
        Ok(())
    }

    /// `--compare`: rounds of program time of every object's established flows, IPv4 then
    /// IPv6 (the objects' order turns every round, the families' every other).
    fn compare(&mut self, objects: &[PathBuf], secs: u64, rounds: u32) -> Result<()> {
        let floor = self.timing_floor(secs)?;
        // The state the full run measures program time in: after one pass of every row.
        // Measured: with only the loop's 256 flows in the tables latch's established path
        // took about 47 ns (IPv4, net), after the pass 64-67 ns (full connection tables, the
        // stack's nftables run, ...); comparisons hold in both, absolute figures do not.
        for target in Target::ALL {
            env::check_stopped()?;
            let (w, _) = self.measure(target, secs.max(3))?;
            println!(
                "    one pass: {} at {:.2} Mpps",
                target.label(Generator::Loop),
                w.received_mpps()
            );
        }
        let n = self.variants.len();
        // Per object: net ns of IPv4 and IPv6 per round.
        let mut got: Vec<[Vec<f64>; 2]> = vec![[Vec::new(), Vec::new()]; n];
        println!(
            "==> compare: {rounds} round(s) x {n} object(s) x (IPv4, IPv6) x {secs} s; ns per run \
             net of the timing's {floor:.1} ns"
        );
        for round in 0..rounds as usize {
            let mut line = format!("    round {}/{rounds}:", round + 1);
            for k in 0..n {
                let i = (k + round) % n;
                self.variant = Some(i);
                let mut fams = [Target::LatchEstablished, Target::LatchEstablished6];
                if round % 2 == 1 {
                    fams.reverse();
                }
                for target in fams {
                    env::check_stopped()?;
                    let before = self.latch_counts()?;
                    let (ns, runs, _) = self.program_time(target, secs)?;
                    let hits = self.latch_counts()?[0] - before[0];
                    // A warning, not an error: an ablation (a build without some step,
                    // measured to see what the step costs) may not count its hits.
                    if (hits as f64) < 0.99 * runs as f64 {
                        println!(
                            "    warning: {}: conntrack_hit {hits} of {runs} runs",
                            objects[i].display()
                        );
                    }
                    got[i][usize::from(target.v6())].push((ns - floor).max(0.0));
                }
                line.push_str(&format!(
                    "  [{}] {:.1} / {:.1}",
                    i,
                    got[i][0].last().copied().unwrap_or(0.0),
                    got[i][1].last().copied().unwrap_or(0.0)
                ));
            }
            println!("{line}");
        }
        self.variant = None;
        let spread = |v: &[f64], digits: usize| {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(0.0, f64::max);
            format!("{:.digits$} ({lo:.digits$}-{hi:.digits$})", median(v))
        };
        println!("    object: IPv4 net ns median (range), IPv6 net ns median (range), IPv6 / IPv4");
        for (i, [v4, v6]) in got.iter().enumerate() {
            let ratios: Vec<f64> = v4.iter().zip(v6).map(|(a, b)| b / a).collect();
            println!(
                "    [{i}] {}: IPv4 {}, IPv6 {}, IPv6/IPv4 {}",
                objects[i].display(),
                spread(v4, 1),
                spread(v6, 1),
                spread(&ratios, 2)
            );
        }
        Ok(())
    }

    /// Run count and total run time of the program `target` runs on the LB's veth.
    fn runs(&self, target: Target) -> Result<(u64, u64)> {
        if let (Some(i), true) = (self.variant, target.latch())
            && let Some(v) = &self.variants[i]
        {
            let info = v
                .ebpf
                .program(latch::dataplane::PROGRAM_NAME)
                .context("no latch program in a --compare object")?
                .info()?;
            return Ok((info.run_count(), info.run_time().as_nanos() as u64));
        }
        match target {
            Target::RedirectFloor => self.lb_progs.runs(REDIRECT),
            Target::Ceiling => self.lb_progs.runs(TX),
            _ => Ok(self
                .dp
                .as_ref()
                .context("data plane closed")?
                .program_runs()?),
        }
    }

    /// Program time per packet of the program that `target` runs on the LB's veth, from the
    /// kernel's run-time statistics over one loop measurement: (ns per run, runs, window).
    fn program_time(&mut self, target: Target, secs: u64) -> Result<(f64, u64, Window)> {
        // Timing is on only while this descriptor is open (BPF_ENABLE_STATS is scoped to
        // it; the host's kernel.bpf_stats_enabled sysctl is left alone).
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("BPF_ENABLE_STATS (run time)")?;
        let (n0, t0) = self.runs(target)?;
        let (w, _) = self.measure(target, secs)?;
        let (n1, t1) = self.runs(target)?;
        let n = n1.saturating_sub(n0);
        if n == 0 {
            bail!("{}: no runs timed", target.label(Generator::Loop));
        }
        Ok((t1.saturating_sub(t0) as f64 / n as f64, n, w))
    }

    /// The timing's own cost per run: the run time of `bench_tx` (a length check, two byte
    /// compares, XDP_TX) in the loop, measured once. Subtracted for the 'net' figures.
    fn timing_floor(&mut self, secs: u64) -> Result<f64> {
        if let Some(f) = self.timing_floor {
            return Ok(f);
        }
        let (ns, _, _) = self.program_time(Target::Ceiling, secs)?;
        println!("    timing floor (bench_tx, XDP_TX only): {ns:.1} ns per run");
        self.timing_floor = Some(ns);
        Ok(ns)
    }

    /// ns per program run of latch in the loop (`target` is one of the latch targets), from
    /// the kernel's run-time statistics over one measurement, with the path check: the share
    /// of runs that took the path (conntrack hit, or new flow through maglev).
    fn live_path(&mut self, target: Target, secs: u64) -> Result<PathCost> {
        let floor = self.timing_floor(secs)?;
        let counts_before = self.latch_counts()?;
        let (ns, n, window) = self.program_time(target, secs)?;
        let counts_after = self.latch_counts()?;
        let delta = |name: &str| -> u64 {
            LATCH_COUNTERS
                .iter()
                .position(|n| *n == name)
                .map_or(0, |i| counts_after[i] - counts_before[i])
        };
        let (key, label, counter) = match target {
            Target::LatchNew => (
                "new_flow_live",
                "new flow, live (full table: every insert evicts)",
                "new_flow_maglev",
            ),
            Target::LatchNew6 => (
                "new_flow_live_v6",
                "new flow IPv6, live (full table: every insert evicts)",
                "new_flow_maglev",
            ),
            Target::LatchEstablished6 => (
                "conntrack_hit_live_v6",
                "conntrack hit (NAT, UDP, IPv6), live",
                "conntrack_hit",
            ),
            _ => (
                "conntrack_hit_live",
                "conntrack hit (NAT, UDP), live",
                "conntrack_hit",
            ),
        };
        let on_path = delta(counter);
        // Warm-up and the 256 flows' first packets are the only runs off the path.
        let check_ok = n > 0 && on_path as f64 >= 0.99 * n as f64;
        Ok(PathCost {
            key,
            label,
            ns,
            median_ns: ns,
            net_ns: Some((ns - floor).max(0.0)),
            runs: n,
            method: format!(
                "circulating loop at {:.2} Mpps on veth; kernel run-time statistics \
                 (BPF_ENABLE_STATS) over the whole measurement; net = minus the {floor:.0} ns \
                 per run that bench_tx (XDP_TX only) measured in the loop (the timing's own \
                 cost)",
                window.received_mpps(),
            ),
            check: format!("{counter} {on_path} of {n} runs"),
            check_ok,
        })
    }

    /// Alternating rounds of [`Self::program_time`] for the forwarder, latch IPv4 and latch
    /// IPv6, established flows (the order turns every round, so a drift in the shared
    /// machine's load favours none).
    fn program_times(&mut self, secs: u64, rounds: u32) -> Result<ProgramTime> {
        let floor = self.timing_floor(secs)?;
        let mut out = Vec::new();
        let targets = [
            Target::RedirectFloor,
            Target::LatchEstablished,
            Target::LatchEstablished6,
        ];
        for round in 0..rounds as usize {
            let mut got = [(0.0, 0); 3];
            for k in 0..targets.len() {
                let i = (k + round) % targets.len();
                env::check_stopped()?;
                let (ns, runs, _) = self.program_time(targets[i], secs)?;
                got[i] = (ns, runs);
            }
            let [(fwd, fwd_runs), (latch, latch_runs), (latch6, latch6_runs)] = got;
            let r = ProgramTimeRound {
                forwarder_ns: fwd,
                forwarder_net_ns: (fwd - floor).max(0.0),
                forwarder_runs: fwd_runs,
                latch_ns: latch,
                latch_net_ns: (latch - floor).max(0.0),
                latch_runs,
                latch6_ns: latch6,
                latch6_net_ns: (latch6 - floor).max(0.0),
                latch6_runs,
            };
            println!(
                "    round {}/{rounds}: forwarder {:.1} ns ({:.1} net), latch established {:.1} ns \
                 ({:.1} net), IPv6 {:.1} ns ({:.1} net): latch / forwarder {:.2} raw, +{:.1} ns; \
                 IPv6 / IPv4 {:.2}",
                round + 1,
                r.forwarder_ns,
                r.forwarder_net_ns,
                r.latch_ns,
                r.latch_net_ns,
                r.latch6_ns,
                r.latch6_net_ns,
                r.raw_ratio(),
                r.extra_ns(),
                r.v6_ratio()
            );
            out.push(r);
        }
        Ok(ProgramTime::from_rounds(out, floor))
    }

    /// One loop measurement of `target`.
    fn measure(&mut self, target: Target, secs: u64) -> Result<(Window, String)> {
        self.prepare(target, Generator::Loop)?;
        let cfg = self.loop_config(target);
        let client = self.topo.client().path();
        let before = self.latch_counts()?;
        let nft_before = nft_packets(self.lb())?;
        let lw = self
            .reflector
            .window(&client, "eth0", &cfg, self.cpus, secs)?;
        let mut detail = self.detail(target, &before, nft_before)?;
        if !detail.is_empty() {
            detail.push_str("; ");
        }
        detail.push_str(&format!(
            "population {} injected, {} circulating at the end",
            lw.injected, lw.alive
        ));
        Ok((lw.window, detail))
    }

    /// One open-loop measurement of `target` with live frames (IPv4 targets only).
    fn measure_live(&mut self, target: Target, secs: u64) -> Result<(Window, String)> {
        self.prepare(target, Generator::LiveFrames)?;
        let mode = if target.new_flows() {
            MODE_NEW_FLOWS
        } else {
            MODE_FIXED_FLOWS
        };
        let configs = self.configs(mode);
        let client = self.topo.client().path();
        let before = self.latch_counts()?;
        let nft_before = nft_packets(self.lb())?;
        let counter = match target {
            Target::Ceiling => &self.lb_progs,
            _ => &self.backend_progs,
        };
        let w = mpps::window(
            Generator::LiveFrames,
            &client,
            "eth0",
            &configs,
            secs,
            &|| counter.count(),
        )?;
        let detail = self.detail(target, &before, nft_before)?;
        Ok((w, detail))
    }

    /// latch's path counters or the nft rule's hits over a measurement.
    fn detail(&self, target: Target, before: &[u64], nft_before: u64) -> Result<String> {
        Ok(if target.latch() {
            let after = self.latch_counts()?;
            LATCH_COUNTERS
                .iter()
                .zip(after.iter().zip(before))
                .map(|(n, (a, b))| format!("{n} {}", a - b))
                .collect::<Vec<_>>()
                .join(", ")
        } else if target == Target::Nft {
            format!(
                "nft DNAT rule hits (conntrack entries created) {}",
                nft_packets(self.lb())? - nft_before
            )
        } else {
            String::new()
        })
    }
}

fn method_notes(threads: usize, secs: u64, live: bool, cpus: usize) -> Vec<String> {
    let mut notes = vec![
        format!(
            "Generator of the Mpps rows: the circulating loop (xtask/bench/src/circulate.rs), on \
             every machine. The loop's services (IPv4 VIP and IPv6 VIP, port {LOOP_PORT}) \
             forward to an address behind the client's veth, so the LB sends every frame back \
             out of the port it came in by (latch: XDP_TX); bench_reflect on the client's veth \
             turns each returning frame into a fresh request from a template (fixed flows, or a \
             new 5-tuple each time) and returns it with XDP_TX. {pop} frames per CPU are \
             injected once from an AF_PACKET socket on each of {cpus} CPU(s) and then circulate \
             on that CPU. The reflector counts what it returns (= what came back through the \
             LB), so 'generated' equals 'received' by construction; 'circulating at the end' \
             (frames dropped when the window closes) checks that the population survived. The \
             reflector drops everything past a deadline (window + a few seconds), so a loop \
             always ends by itself.",
            pop = circulate::POPULATION_PER_CPU
        ),
        "What a loop row measures: per packet, the reflector's work and the program under \
         test's, plus two veth crossings, all on the same CPU: a loop rate is a closed-loop \
         rate, not the LB's alone. The ceiling row is the loop with the LB returning frames \
         untouched (bench_tx, XDP_TX; an XDP_DROP would end the population), so 'ns over the \
         ceiling' (per CPU: CPUs / rate, minus the ceiling's) is what the program under test \
         adds per packet beyond a bare XDP_TX; ratios of loop rates understate differences \
         between LB programs by the loop's fixed share. Program time (below) is the \
         generator-independent comparison."
            .into(),
        format!(
            "Frames: 62 bytes (Ethernet + IPv6 + UDP; IPv4 frames carry 20 bytes of zero \
             payload to the same length). Established: {ESTABLISHED_FLOWS} fixed flows (source \
             ports vary). New flows: every request a new 5-tuple (source port, and the last \
             octet of 203.0.113.x or the last 16 bits of 2001:db8:2::x, disjoint per CPU). \
             Each measurement is a {secs} s window after 0.5 s of circulation; rounds \
             interleave the measurements; the median round is reported and the rounds listed."
        ),
        "Program time: latch's established-flow runs (IPv4 and IPv6) and the no-lookup \
         forwarder's, each measured with the kernel's run-time statistics \
         (BPF_ENABLE_STATS(BPF_STATS_RUN_TIME), a descriptor held only during the \
         measurement; the host sysctl is untouched) over a loop window, in rounds whose order \
         turns; 'net' subtracts the run time of bench_tx (a length check, two compares, \
         XDP_TX) measured once in the loop, which is the timing's own cost (two clock reads \
         per run, about 50 ns in this VM). Ratios and differences are per round, then median \
         and range."
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
        "No-lookup XDP forwarder: a bench program on the LB's veth that writes fixed MACs and \
         sends every UDP frame to one fixed port (XDP_TX when that is the port it came in by, \
         as in the loop, else bpf_redirect, as latch), without parsing beyond the Ethernet \
         type and IP protocol or any lookup: the best any XDP forwarder can do on this \
         topology, against which latch's own lookups and rewrites show."
            .into(),
        "nftables: one DNAT rule per service in the LB namespace only (prerouting), GRO off on \
         the LB's client veth (GRO would merge a UDP flow into a few large packets and make \
         the stack look cheaper per packet), an XDP_PASS program on it for NAPI. In the loop \
         the DNATed frame is forwarded back out of the client's veth (ICMP redirects off in \
         the LB namespace). The stack loses part of the population on the way (about a third in \
         the runs here, see 'circulating at the end'); the rest still keeps the stack busy, \
         since the row runs at a tenth of the XDP rows' rate with the same population."
            .into(),
        "ns/packet in live traffic: after the Mpps rounds, one established and one new-flow \
         measurement per family with the kernel's run-time statistics on: run time / runs of \
         latch-xdp over millions of packets in the loop, with warm caches and real flow \
         churn, which the 1-run-per-call method cannot give. In the new-flow measurement the \
         connection table is full after a fraction of a second, so every new flow also \
         evicts (a SYN flood's cost rather than a quiet new connection's)."
            .into(),
        "The machine is shared (2 CPUs, other jobs): rates vary between runs, and the latch \
         loop rows by up to a quarter between rounds of one run (see the rounds column), more \
         than the 10% the IPv6 target allows; the program times vary by a few percent and are \
         the figures to judge IPv6 against IPv4 by."
            .into(),
    ];
    if live {
        notes.push(format!(
            "Live-frames rows (this kernel allows BPF_F_TEST_XDP_LIVE_FRAMES): {threads} \
             generator threads in the client namespace, pinned {per_cpu} per CPU, run bench_gen \
             through BPF_PROG_TEST_RUN with live frames; it writes the whole 42-byte header from \
             a template on every run and returns XDP_TX, which sends the frame into the LB's \
             veth (60-byte IPv4 UDP frames). Received packets are counted by an XDP program \
             (count, then XDP_DROP) on the LB's veth for the XDP_DROP ceiling and on the \
             backend's veth for the others; 'generated' is what the generators sent in the \
             same window: when it is not well above 'received', the row measures the \
             generator.",
            per_cpu = mpps::THREADS_PER_CPU
        ));
    } else {
        notes.push(
            "Live-frames rows: not measured, this kernel refuses live-frames test runs \
             (EPERM). The AF_PACKET generator used here before (sendmmsg of 64 frames, \
             PACKET_QDISC_BYPASS) reached only about 0.57 Mpps, so its rows measured the \
             generator; it was replaced by the loop."
                .into(),
        );
    }
    notes
}

/// Links the LB's client veth to the loop's backends: an IPv6 address (no DAD: the FIB
/// lookup must work at once), IPv6 forwarding, permanent neighbours for both backends at
/// the client's MAC, ICMP redirects off (nftables forwards out of the port it received on).
/// All of it inside the LB namespace.
fn loop_routes(lb: &Netns, client_mac: &str) -> Result<()> {
    lb.sysctl(&[
        ("net.ipv6.conf.all.forwarding", "1"),
        ("net.ipv4.conf.all.send_redirects", "0"),
        ("net.ipv4.conf.vclient.send_redirects", "0"),
    ])?;
    lb.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{LB_CLIENT_SIDE6}/64"),
        "dev",
        "vclient",
        "nodad",
    ])?;
    for addr in [IpAddr::from(LOOP_BACKEND), IpAddr::from(LOOP_BACKEND6)] {
        lb.ip(&[
            "neigh",
            "replace",
            &addr.to_string(),
            "lladdr",
            client_mac,
            "dev",
            "vclient",
            "nud",
            "permanent",
        ])?;
    }
    Ok(())
}

/// One row per target from its windows.
fn rates_of(
    targets: &[Target],
    windows: &[Vec<Window>],
    details: Vec<String>,
    gen_kind: Generator,
) -> Vec<Rate> {
    targets
        .iter()
        .zip(windows.iter().zip(details))
        .map(|(t, (ws, detail))| {
            let recv: Vec<f64> = ws.iter().map(Window::received_mpps).collect();
            let generated: Vec<f64> = ws.iter().map(Window::generated_mpps).collect();
            Rate {
                key: t.key(),
                label: t.label(gen_kind),
                mpps: median(&recv),
                rounds_mpps: recv,
                generated_mpps: median(&generated),
                counted_at: t.counted_at(gen_kind).into(),
                detail,
            }
        })
        .collect()
}

pub fn run(secs: u64, rounds: u32) -> Result<()> {
    run_with(secs, rounds, &[])
}

/// `--compare`: the program time of latch's established flows (IPv4, IPv6) for each of
/// `objects` (latch-xdp objects built from variants of lb-ebpf; `builtin`: the embedded one,
/// through the agent's attach code), in rounds whose order turns, on the same loop, maps and
/// data plane as the full run; nothing else is measured and no report is written. For A/B
/// measurements of a change to the XDP program: both builds in one run, so the shared
/// machine's drift favours neither.
pub fn compare(objects: &[PathBuf], secs: u64, rounds: u32) -> Result<()> {
    run_with(secs, rounds, objects)
}

fn run_with(secs: u64, rounds: u32, objects: &[PathBuf]) -> Result<()> {
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
    let client_mac = topo.client().mac("eth0")?;
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
    loop_routes(lb, &client_mac)?;
    let lb_mac = parse_mac(&lb.mac("vclient")?)?;
    let template = Udp {
        src_mac: parse_mac(&client_mac)?,
        dst_mac: lb_mac,
        src: topo.client_addr(),
        dst: vip,
        sport: 10_000,
        dport: PORT,
    };
    let loop_v4 = LoopUdp {
        src_mac: template.src_mac,
        dst_mac: lb_mac,
        src: topo.client_addr().into(),
        dst: vip.into(),
        sport: 10_000,
        dport: LOOP_PORT,
    };
    let loop_v6 = LoopUdp {
        src: CLIENT6.into(),
        dst: VIP6.into(),
        ..loop_v4
    };

    let pins = PinDir::new();
    let mut dp = Dataplane::open(&pins.0).context("opening the data plane")?;
    dp.apply(&spec(vip, backend_addr))
        .context("programming the data plane")?;

    let mut paths = if objects.is_empty() {
        test_runs(&pins, &dp, lb, &template, vip)?
    } else {
        Vec::new()
    };
    // The Mpps section starts from an empty flow table, as a fresh agent would.
    drop(dp);
    latch::dataplane::teardown(&pins.0).context("resetting the data plane")?;
    let mut dp = Dataplane::open(&pins.0)?;
    dp.apply(&spec(vip, backend_addr))?;
    // `builtin` names the object this bench embeds, attached through the agent's own code.
    let variants = objects
        .iter()
        .map(|o| {
            if o.as_os_str() == "builtin" {
                Ok(None)
            } else {
                Variant::load(o, &pins.0).map(Some)
            }
        })
        .collect::<Result<Vec<_>>>()?;

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
    let lb_progs = BenchProgs::load()?;
    let (vb1, vclient) = with_ns(lb, || -> Result<_> {
        Ok((env::ifindex("vb1")?, env::ifindex("vclient")?))
    })??;
    let (live_gen, why) = mpps::choose_generator(
        &topo.client().path(),
        "eth0",
        gen_config(&template, MODE_FIXED_FLOWS, 1, 10, 1),
    )?;
    let live = live_gen == Generator::LiveFrames;
    println!(
        "==> [2/3] Mpps on veth: {rounds} round(s) x {} loop measurements{} x {secs} s",
        Target::ALL.len(),
        if live {
            format!(" + {} live-frames measurements", Target::LIVE.len())
        } else {
            String::new()
        }
    );
    println!("    live frames: {why}");
    let reflector = Loop::attach(topo.client(), "eth0")?;
    let mut bench = Bench {
        topo: &topo,
        dp: Some(dp),
        lb_progs,
        backend_progs,
        reflector,
        cpus,
        threads,
        template,
        loop_v4,
        loop_v6,
        hop_backend: (vb1, parse_mac(&backend_mac)?, parse_mac(&lb.mac("vb1")?)?),
        hop_client: (vclient, template.src_mac, lb_mac),
        timing_floor: None,
        variants,
        variant: None,
    };
    if !objects.is_empty() {
        let result = bench.compare(objects, secs, rounds);
        let _ = bench.detach_variants();
        let _ = bench.lb_progs.detach(lb);
        let _ = bench.backend_progs.detach(backend_ns);
        let _ = bench.reflector.detach(topo.client());
        drop(bench);
        drop(pins);
        return result;
    }
    let mut windows: Vec<Vec<Window>> = vec![Vec::new(); Target::ALL.len()];
    let mut details = vec![String::new(); Target::ALL.len()];
    let mut live_windows: Vec<Vec<Window>> = vec![Vec::new(); Target::LIVE.len()];
    let mut live_details = vec![String::new(); Target::LIVE.len()];
    let mut live_paths = Vec::new();
    let mut program_time = None;
    let result = (|| -> Result<()> {
        for round in 1..=rounds {
            for (i, target) in Target::ALL.iter().enumerate() {
                env::check_stopped()?;
                let (w, detail) = bench.measure(*target, secs)?;
                println!(
                    "    round {round}/{rounds} loop {:<32} {:>6.2} Mpps  [{detail}]",
                    target.label(Generator::Loop),
                    w.received_mpps(),
                );
                windows[i].push(w);
                details[i] = detail;
            }
            if !live {
                continue;
            }
            for (i, target) in Target::LIVE.iter().enumerate() {
                env::check_stopped()?;
                let (w, detail) = bench.measure_live(*target, secs)?;
                println!(
                    "    round {round}/{rounds} live {:<32} {:>6.2} Mpps received, {:>6.2} Mpps generated  [{detail}]",
                    target.label(Generator::LiveFrames),
                    w.received_mpps(),
                    w.generated_mpps(),
                );
                live_windows[i].push(w);
                live_details[i] = detail;
            }
        }
        println!(
            "==> [3/3] program time per packet from the kernel's BPF run-time statistics, in \
             the loop: {rounds} round(s) of the no-lookup forwarder and latch (established, \
             IPv4 and IPv6), then one new-flow measurement per family"
        );
        match bench.program_times(secs, rounds) {
            Ok(p) => {
                println!(
                    "    latch / forwarder program time: median {:.2} (rounds {:.2}..{:.2}); \
                     latch adds median {:.1} ns (rounds {:.1}..{:.1}); IPv6 / IPv4 median {:.2} \
                     (rounds {:.2}..{:.2})",
                    p.median_raw_ratio,
                    p.min_raw_ratio,
                    p.max_raw_ratio,
                    p.median_extra_ns,
                    p.min_extra_ns,
                    p.max_extra_ns,
                    p.median_v6_ratio,
                    p.min_v6_ratio,
                    p.max_v6_ratio
                );
                program_time = Some(p);
            }
            // Kernels before 5.8 have no BPF_ENABLE_STATS: the rest of the report stands.
            Err(e) => println!("    program time not measured: {e:#}"),
        }
        for target in [
            Target::LatchEstablished,
            Target::LatchNew,
            Target::LatchEstablished6,
            Target::LatchNew6,
        ] {
            env::check_stopped()?;
            let p = match bench.live_path(target, secs) {
                Ok(p) => p,
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
            live_paths.push(p);
        }
        Ok(())
    })();
    // Cleanup before reporting (and on error): links off, then maps; namespaces go last.
    let _ = bench.latch_attach(&[]);
    let _ = bench.lb_progs.detach(lb);
    let _ = bench.backend_progs.detach(backend_ns);
    let _ = bench.reflector.detach(topo.client());
    drop(bench);
    drop(pins);
    result?;
    paths.extend(live_paths);

    let rates = rates_of(&Target::ALL, &windows, details, Generator::Loop);
    let live_rates = if live {
        rates_of(
            &Target::LIVE,
            &live_windows,
            live_details,
            Generator::LiveFrames,
        )
    } else {
        Vec::new()
    };
    let ratios = report::ratios(&rates);
    let live_ratios = live.then(|| report::ratios(&live_rates));
    let report = Report {
        machine: crate::report::Machine::now(),
        seconds_per_measurement: secs,
        rounds,
        loop_cpus: cpus,
        targets: report::targets(&paths, &ratios, live_ratios.as_ref(), program_time.as_ref()),
        generator: format!("{}; live frames: {why}", Generator::Loop.describe()),
        program_time,
        paths,
        rates,
        ratios,
        live_rates,
        live_ratios,
        method: method_notes(threads, secs, live, cpus),
    };
    write(&report)
}

/// Section 1: ns per path with BPF_PROG_TEST_RUN.
fn test_runs(
    pins: &PinDir,
    dp: &Dataplane,
    lb: &Netns,
    template: &Udp,
    vip: Ipv4Addr,
) -> Result<Vec<PathCost>> {
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
    let paths = with_ns(lb, || -> Result<_> {
        let ingress = env::ifindex("vclient")?;
        testrun::measure(dp, &latch_run, ingress, &frames)
    })??;
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
    Ok(paths)
}

/// A latch-xdp object given to `--compare`, loaded on the bench's pinned maps (its unpinned
/// ones, such as the next-hop cache, are its own), attached to the LB's client veth while it
/// is measured.
struct Variant {
    ebpf: Ebpf,
    link: Option<XdpLinkId>,
}

impl Variant {
    fn load(object: &Path, pin_root: &Path) -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(latch::dataplane::versioned_dir(pin_root))
            .load_file(object)
            .with_context(|| format!("loading {}", object.display()))?;
        env::xdp(&mut ebpf, latch::dataplane::PROGRAM_NAME)?
            .load()
            .with_context(|| format!("verifier: latch_xdp of {}", object.display()))?;
        Ok(Self { ebpf, link: None })
    }

    fn prog(&mut self) -> Result<&mut Xdp> {
        env::xdp(&mut self.ebpf, latch::dataplane::PROGRAM_NAME)
    }
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
    println!("==> summary ({})", report.generator);
    println!(
        "{:<40} {:>10} {:>16} {:>12} {:>10}",
        "Mpps (loop)", "median", "rounds min..max", "vs ceiling", "ns over ceiling"
    );
    let ceiling = report::rate(&report.rates, "ceiling");
    for r in &report.rates {
        let (lo, hi) = report::range(&r.rounds_mpps);
        println!(
            "{:<40} {:>10.2} {:>16} {:>12} {:>10}",
            r.label,
            r.mpps,
            format!("{lo:.2}..{hi:.2}"),
            ceiling
                .filter(|c| *c > 0.0)
                .map_or("-".into(), |c| format!("{:.0}%", r.mpps / c * 100.0)),
            report::ns_over(r.mpps, ceiling, report.loop_cpus)
                .map_or("-".into(), |v| format!("{v:.0}"))
        );
    }
    if !report.live_rates.is_empty() {
        println!();
        println!(
            "{:<40} {:>10} {:>10}",
            "Mpps (live frames)", "received", "generated"
        );
        for r in &report.live_rates {
            println!(
                "{:<40} {:>10.2} {:>10.2}",
                r.label, r.mpps, r.generated_mpps
            );
        }
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
        "{:<48} {:<16} {:<26} verdict",
        "target", "required", "measured"
    );
    for line in report::target_lines(&report.targets) {
        println!("{line}");
    }
    println!();
    println!("==> wrote {}/dataplane.{{md,json,png}}", dir.display());
    Ok(())
}
