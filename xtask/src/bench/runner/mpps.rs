//! Mpps on veth: generator threads in the client namespace push live frames (BPF_PROG_TEST_RUN
//! with BPF_F_TEST_XDP_LIVE_FRAMES running `bench_gen`, which returns XDP_TX) out of the client
//! veth into the LB's veth; receivers count what arrives.

use std::{
    sync::{Arc, Barrier},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow};
use aya::{
    maps::Array,
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp},
};

use crate::{
    env::{self, BenchProgs, GEN},
    frames::{FRAME_LEN, GenConfig},
};

/// Frames per BPF_PROG_TEST_RUN call: short enough (tens of ms) to stop promptly.
const REPEAT: u32 = 1 << 17;
/// Frames the kernel builds and sends per batch in live-frames mode.
const BATCH: u32 = 64;

/// One measurement window.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub received: u64,
    pub generated: u64,
    pub secs: f64,
}

impl Window {
    pub fn received_mpps(&self) -> f64 {
        self.received as f64 / self.secs / 1e6
    }
    pub fn generated_mpps(&self) -> f64 {
        self.generated as f64 / self.secs / 1e6
    }
}

/// One generator thread: enters the client namespace, loads its own copy of the bench
/// object (configs and sequence counters stay per thread), then sends until `deadline`.
fn generator(
    ns_path: String,
    iface: &'static str,
    cfg: GenConfig,
    start: Arc<Barrier>,
    secs: u64,
) -> Result<u64> {
    let prepared = (|| -> Result<(BenchProgs, u32)> {
        env::enter(&ns_path)?;
        let mut progs = BenchProgs::load()?;
        let mut m: Array<_, GenConfig> = Array::try_from(
            progs
                .ebpf()
                .map_mut("BENCH_GEN")
                .context("no BENCH_GEN map")?,
        )?;
        m.set(0, cfg, 0)?;
        Ok((progs, env::ifindex(iface)?))
    })();
    // Every thread reaches the barrier, also after a failure, so nobody waits forever.
    start.wait();
    let (mut progs, ifindex) = prepared?;
    let prog: &mut Xdp = env::xdp(progs.ebpf(), GEN)?;
    let frame = [0u8; FRAME_LEN];
    let md: [u32; 6] = [0, FRAME_LEN as u32, 0, ifindex, 0, 0];
    let ctx: Vec<u8> = md.iter().flat_map(|v| v.to_ne_bytes()).collect();
    let t0 = Instant::now();
    let mut sent = 0u64;
    while t0.elapsed() < Duration::from_secs(secs) && !env::stopped() {
        prog.test_run(TestRunOptions {
            data_in: Some(&frame),
            ctx_in: Some(&ctx),
            repeat: REPEAT,
            attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
            ..Default::default()
        })
        .context("live-frames test run")?;
        sent += u64::from(REPEAT);
    }
    Ok(sent)
}

/// Sends with `configs.len()` threads from `iface` in the namespace at `ns_path` for `secs`
/// seconds, reading `received` before and after.
pub fn window(
    ns_path: &str,
    iface: &'static str,
    configs: &[GenConfig],
    secs: u64,
    received: &dyn Fn() -> Result<u64>,
) -> Result<Window> {
    let start = Arc::new(Barrier::new(configs.len() + 1));
    let handles: Vec<_> = configs
        .iter()
        .enumerate()
        .map(|(i, cfg)| {
            let (path, cfg, start) = (ns_path.to_string(), *cfg, start.clone());
            thread::Builder::new()
                .name(format!("gen{i}"))
                .spawn(move || generator(path, iface, cfg, start, secs))
        })
        .collect::<Result<_, _>>()?;
    let before = received()?;
    start.wait();
    let t0 = Instant::now();
    let mut generated = 0u64;
    let mut first_err = None;
    for h in handles {
        match h.join().map_err(|_| anyhow!("generator thread panicked"))? {
            Ok(n) => generated += n,
            Err(e) => first_err = first_err.or(Some(e)),
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    if let Some(e) = first_err {
        return Err(e);
    }
    // Let the receivers' NAPI drain what is still queued.
    thread::sleep(Duration::from_millis(50));
    let after = received()?;
    Ok(Window {
        received: after - before,
        generated,
        secs,
    })
}
