//! ns/packet per path with BPF_PROG_TEST_RUN.
//!
//! With `repeat > 1` the kernel runs the program again and again on one buffer, so the second
//! run sees what the first one wrote: only a path that leaves the frame (and the maps) as it
//! found them measures validly that way. Here that is only the non-VIP pass. Every other path
//! rewrites the frame (NAT) or inserts state (a new flow), so it is measured as many calls
//! with `repeat = 1`, each on a fresh copy of its frame, averaging the kernel's per-call
//! duration. A call's duration includes one clock read beyond the program itself; the
//! non-VIP pass is measured both ways to show that overhead.

use std::{net::Ipv4Addr, path::Path};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{TestRun, TestRunOptions, Xdp},
};
use latch::dataplane::Dataplane;

use crate::{
    env::{self, LATCH_OBJ},
    frames::{Udp, distinct_flow, udp_frame},
    report::{PathCost, median},
};

const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

/// A second copy of latch's program sharing the data plane's pinned maps, which the agent's
/// `Dataplane` programs (it does not expose its program for test runs).
pub struct LatchRun {
    ebpf: Ebpf,
}

impl LatchRun {
    pub fn load(pin_root: &Path) -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(latch::dataplane::versioned_dir(pin_root))
            .load(LATCH_OBJ)
            .context("loading latch-xdp for test runs")?;
        env::xdp(&mut ebpf, latch::dataplane::PROGRAM_NAME)?
            .load()
            .context("verifier: latch_xdp")?;
        Ok(Self { ebpf })
    }

    /// Runs the program `repeat` times on `frame` arriving on `ingress`: verdict and the
    /// kernel's mean ns per run.
    pub fn run(&self, frame: &[u8], ingress: u32, repeat: u32) -> Result<(u32, u64)> {
        let prog: &Xdp = self
            .ebpf
            .program(latch::dataplane::PROGRAM_NAME)
            .context("no latch program")?
            .try_into()?;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress.
        let md: [u32; 6] = [0, frame.len() as u32, 0, ingress, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let res = prog.test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat,
            ..Default::default()
        })?;
        Ok((res.return_value, res.duration.as_nanos() as u64))
    }
}

/// Addresses of the frames: a client behind the LB's client-side veth.
pub struct Frames {
    pub client_mac: [u8; 6],
    pub lb_mac: [u8; 6],
    pub lb_addr: Ipv4Addr,
    pub vip: Ipv4Addr,
    /// Plain L4 NAT service port.
    pub port: u16,
    /// L4 NAT service port with client-IP persistence.
    pub persist_port: u16,
    /// L4 DSR service port.
    pub dsr_port: u16,
}

impl Frames {
    fn udp(&self, src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
        udp_frame(&Udp {
            src_mac: self.client_mac,
            dst_mac: self.lb_mac,
            src,
            dst,
            sport,
            dport,
        })
    }
}

pub fn counter(dp: &Dataplane, name: &str) -> Result<u64> {
    dp.stats()?
        .global
        .iter()
        .find(|c| c.name == name)
        .map(|c| c.value)
        .with_context(|| format!("no counter {name}"))
}

/// Counter deltas around `f`.
fn deltas<T>(
    dp: &Dataplane,
    names: &[&str],
    f: impl FnOnce() -> Result<T>,
) -> Result<(T, Vec<u64>)> {
    let before: Vec<u64> = names
        .iter()
        .map(|n| counter(dp, n))
        .collect::<Result<_>>()?;
    let out = f()?;
    let after: Vec<u64> = names
        .iter()
        .map(|n| counter(dp, n))
        .collect::<Result<_>>()?;
    Ok((out, after.iter().zip(&before).map(|(a, b)| a - b).collect()))
}

/// Runs each frame once (in order), `passes` times over; per-call ns samples. Fails on a
/// verdict other than `want`.
fn one_run_each(
    latch: &LatchRun,
    ingress: u32,
    frames: &[Vec<u8>],
    passes: u32,
    want: u32,
) -> Result<Vec<f64>> {
    let mut samples = Vec::with_capacity(frames.len() * passes as usize);
    for _ in 0..passes {
        env::check_stopped()?;
        for f in frames {
            let (verdict, ns) = latch.run(f, ingress, 1)?;
            if verdict != want {
                bail!("verdict {verdict}, expected {want}");
            }
            samples.push(ns as f64);
        }
    }
    Ok(samples)
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn check(names: &[&str], got: &[u64], want: u64) -> (String, bool) {
    let text: Vec<String> = names
        .iter()
        .zip(got)
        .map(|(n, g)| format!("{n} +{g}"))
        .collect();
    let ok = got.iter().all(|g| *g == want);
    (format!("{} (want +{want} each)", text.join(", ")), ok)
}

/// Must run inside the LB namespace (the FIB lookup and `ingress` belong to it).
pub fn measure(
    dp: &Dataplane,
    latch: &LatchRun,
    ingress: u32,
    fr: &Frames,
) -> Result<Vec<PathCost>> {
    let mut out = Vec::new();

    // 1. Non-VIP pass: idempotent, so `repeat` is valid.
    let frame = fr.udp(Ipv4Addr::new(203, 0, 113, 2), 4000, fr.lb_addr, 9);
    let (calls, repeat) = (20u32, 200_000u32);
    println!("    non-VIP pass: {calls} calls x repeat {repeat}");
    let names = ["pass_not_vip"];
    let (samples, d) = deltas(dp, &names, || {
        let mut v = Vec::new();
        for _ in 0..calls {
            env::check_stopped()?;
            let (verdict, ns) = latch.run(&frame, ingress, repeat)?;
            if verdict != XDP_PASS {
                bail!("non-VIP verdict {verdict}");
            }
            v.push(ns as f64);
        }
        Ok(v)
    })?;
    let (text, ok) = check(&names, &d, u64::from(calls) * u64::from(repeat));
    out.push(PathCost {
        key: "non_vip_pass",
        label: "non-VIP pass",
        ns: mean(&samples),
        median_ns: median(&samples),
        net_ns: None,
        runs: u64::from(calls) * u64::from(repeat),
        method: format!("repeat {repeat} on one buffer (idempotent path), {calls} calls"),
        check: text,
        check_ok: ok,
    });

    // Same frame, one run per call: the per-call method's overhead.
    let n = 50_000u32;
    println!("    non-VIP pass: {n} calls x 1 run");
    let (samples, d) = deltas(dp, &names, || {
        one_run_each(latch, ingress, std::slice::from_ref(&frame), n, XDP_PASS)
    })?;
    let (text, ok) = check(&names, &d, u64::from(n));
    out.push(PathCost {
        key: "non_vip_pass_single",
        label: "non-VIP pass (1 run per call)",
        ns: mean(&samples),
        median_ns: median(&samples),
        net_ns: None,
        runs: u64::from(n),
        method: "1 run per call: shows the per-call method's overhead".into(),
        check: text,
        check_ok: ok,
    });

    // Conntrack hit with DSR: only the MACs change, to the same values every time, so this
    // path is idempotent and `repeat` is valid (a warm-cache figure without NAT).
    let frame = fr.udp(Ipv4Addr::new(203, 0, 113, 2), 4001, fr.vip, fr.dsr_port);
    one_run_each(
        latch,
        ingress,
        std::slice::from_ref(&frame),
        1,
        XDP_REDIRECT,
    )
    .context("establishing the DSR flow")?;
    println!("    conntrack hit (DSR): {calls} calls x repeat {repeat}");
    let names = ["conntrack_hit", "verdict_redirect"];
    let (samples, d) = deltas(dp, &names, || {
        let mut v = Vec::new();
        for _ in 0..calls {
            env::check_stopped()?;
            let (verdict, ns) = latch.run(&frame, ingress, repeat)?;
            if verdict != XDP_REDIRECT {
                bail!("DSR verdict {verdict}");
            }
            v.push(ns as f64);
        }
        Ok(v)
    })?;
    let (text, ok) = check(&names, &d, u64::from(calls) * u64::from(repeat));
    out.push(PathCost {
        key: "conntrack_hit_dsr",
        label: "conntrack hit (DSR, UDP)",
        ns: mean(&samples),
        median_ns: median(&samples),
        net_ns: None,
        runs: u64::from(calls) * u64::from(repeat),
        method: format!(
            "repeat {repeat} on one buffer (idempotent: MAC rewrite only), {calls} calls"
        ),
        check: text,
        check_ok: ok,
    });

    // 2. Conntrack hit: establish flows, then run each established flow's frame once per call.
    let flows: Vec<Vec<u8>> = (0..4096u16)
        .map(|i| fr.udp(Ipv4Addr::new(203, 0, 113, 2), 20_000 + i, fr.vip, fr.port))
        .collect();
    one_run_each(latch, ingress, &flows, 1, XDP_REDIRECT).context("establishing flows")?;
    let passes = 10u32;
    println!(
        "    conntrack hit: {} flows x {passes} passes, 1 run per call",
        flows.len()
    );
    let names = ["conntrack_hit", "verdict_redirect"];
    let (samples, d) = deltas(dp, &names, || {
        one_run_each(latch, ingress, &flows, passes, XDP_REDIRECT)
    })?;
    let (text, ok) = check(&names, &d, samples.len() as u64);
    out.push(PathCost {
        key: "conntrack_hit",
        label: "conntrack hit (NAT, UDP)",
        ns: mean(&samples),
        median_ns: median(&samples),
        net_ns: None,
        runs: samples.len() as u64,
        method: format!(
            "{} established flows, each frame run once per call, {passes} passes",
            flows.len()
        ),
        check: text,
        check_ok: ok,
    });

    // 3. New flow: every frame a distinct 5-tuple, each run exactly once.
    let n = 60_000u32;
    let flows: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let (src, sport) = distinct_flow(i);
            fr.udp(src, sport, fr.vip, fr.port)
        })
        .collect();
    println!("    new flow: {n} distinct flows, each run once");
    let names = ["new_flow_maglev", "verdict_redirect"];
    let (samples, d) = deltas(dp, &names, || {
        one_run_each(latch, ingress, &flows, 1, XDP_REDIRECT)
    })?;
    let (text, ok) = check(&names, &d, u64::from(n));
    out.push(PathCost {
        key: "new_flow",
        label: "new flow (maglev, conntrack insert)",
        ns: mean(&samples),
        median_ns: median(&samples),
        net_ns: None,
        runs: u64::from(n),
        method: format!("{n} distinct 5-tuples, each run once (no conntrack entry before)"),
        check: text,
        check_ok: ok,
    });

    // 4. Persistence hit: pinned clients open new connections (conntrack miss, pin hit).
    let clients: Vec<Ipv4Addr> = (0..8).map(|i| Ipv4Addr::new(203, 0, 113, 3 + i)).collect();
    let pins: Vec<Vec<u8>> = clients
        .iter()
        .map(|c| fr.udp(*c, 999, fr.vip, fr.persist_port))
        .collect();
    one_run_each(latch, ingress, &pins, 1, XDP_REDIRECT).context("pinning clients")?;
    let n = 40_000u32;
    let flows: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let c = clients[(i % 8) as usize];
            fr.udp(c, 1024 + (i / 8) as u16, fr.vip, fr.persist_port)
        })
        .collect();
    println!(
        "    persistence hit: {n} new flows of {} pinned clients",
        clients.len()
    );
    let names = ["persist_hit", "verdict_redirect"];
    let (samples, d) = deltas(dp, &names, || {
        one_run_each(latch, ingress, &flows, 1, XDP_REDIRECT)
    })?;
    let (text, ok) = check(&names, &d, u64::from(n));
    out.push(PathCost {
        key: "persistence_hit",
        label: "persistence hit (new flow of a pinned client)",
        ns: mean(&samples),
        median_ns: median(&samples),
        net_ns: None,
        runs: u64::from(n),
        method: format!(
            "{n} distinct 5-tuples from {} clients pinned beforehand, each run once",
            clients.len()
        ),
        check: text,
        check_ok: ok,
    });

    let overhead = match (
        out.iter().find(|p| p.key == "non_vip_pass_single"),
        out.iter().find(|p| p.key == "non_vip_pass"),
    ) {
        (Some(single), Some(rep)) => single.ns - rep.ns,
        _ => 0.0,
    };
    for p in out.iter_mut().filter(|p| p.method.contains("once")) {
        p.net_ns = Some(p.ns - overhead);
    }
    Ok(out)
}
