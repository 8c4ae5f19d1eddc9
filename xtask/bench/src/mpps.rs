//! Mpps on veth: generator threads in the client namespace push live frames (BPF_PROG_TEST_RUN
//! with BPF_F_TEST_XDP_LIVE_FRAMES running `bench_gen`, which returns XDP_TX) out of the client
//! veth into the LB's veth; receivers count what arrives.
//!
//! Every live-frames call pays a fixed cost of about 40 ms on this kernel (6.18: the call sets
//! up and destroys a page_pool, and the destruction waits for an RCU grace period) during which
//! the thread sleeps. With calls of 2^17 frames that idled the CPUs for more than half of the
//! time and capped the XDP_DROP ceiling at 3.9 Mpps instead of 10-11. So calls are sized to last
//! about `CALL_SECS`, two threads share each CPU so that one sends while the other sleeps in
//! that grace period, and the window is measured by the main thread while all generators are
//! running (after a warm-up), not from thread start to thread end.

use std::{
    sync::{
        Arc, Barrier,
        atomic::{AtomicBool, Ordering},
    },
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

/// Frames in the first call of each thread; later calls are sized from the measured rate.
const FIRST_REPEAT: u32 = 1 << 16;
/// Largest call, so that a stop request is honoured within about a second even when fast.
const MAX_REPEAT: u32 = 1 << 23;
/// Target duration of one call: long against the fixed per-call cost, short enough to stop.
const CALL_SECS: f64 = 0.3;
/// Frames the kernel builds and sends per batch in live-frames mode.
const BATCH: u32 = 64;
/// Generator threads per CPU (see the module comment).
pub const THREADS_PER_CPU: usize = 2;
/// Time every generator runs before the window opens, so that it starts in steady state.
const WARMUP: Duration = Duration::from_millis(700);

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

/// One live-frames call: when it ran and how many frames it sent.
#[derive(Clone, Copy, Debug)]
struct Call {
    start: Instant,
    end: Instant,
    frames: u64,
}

impl Call {
    /// Frames sent inside `[from, to]`, assuming a constant rate during the call.
    fn frames_within(&self, from: Instant, to: Instant) -> f64 {
        let total = self.end.saturating_duration_since(self.start).as_secs_f64();
        let start = self.start.max(from);
        let end = self.end.min(to);
        if end <= start || total <= 0.0 {
            return 0.0;
        }
        self.frames as f64 * end.duration_since(start).as_secs_f64() / total
    }
}

/// Frames for the next call, sized from the last one to last about `CALL_SECS`.
fn next_repeat(last: &Call) -> u32 {
    let secs = last.end.duration_since(last.start).as_secs_f64().max(1e-6);
    let want = last.frames as f64 / secs * CALL_SECS;
    (want as u32).clamp(FIRST_REPEAT, MAX_REPEAT)
}

/// One generator thread: pins itself to `cpu`, enters the client namespace, loads its own copy
/// of the bench object (configs and sequence counters stay per thread), then sends until
/// `stop` is set.
fn generator(
    cpu: usize,
    ns_path: String,
    iface: &'static str,
    cfg: GenConfig,
    start: Arc<Barrier>,
    stop: Arc<AtomicBool>,
) -> Result<Vec<Call>> {
    let prepared = (|| -> Result<(BenchProgs, u32)> {
        env::pin_to_cpu(cpu)?;
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
    let mut calls = Vec::new();
    let mut repeat = FIRST_REPEAT;
    while !stop.load(Ordering::Relaxed) && !env::stopped() {
        let t0 = Instant::now();
        prog.test_run(TestRunOptions {
            data_in: Some(&frame),
            ctx_in: Some(&ctx),
            repeat,
            attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
            ..Default::default()
        })
        .context("live-frames test run")?;
        let call = Call {
            start: t0,
            end: Instant::now(),
            frames: u64::from(repeat),
        };
        repeat = next_repeat(&call);
        calls.push(call);
    }
    Ok(calls)
}

/// Sends with `configs.len()` threads (spread over the CPUs, `THREADS_PER_CPU` each) from
/// `iface` in the namespace at `ns_path`, and measures a window of `secs` seconds once all of
/// them run: `received` is read at both ends of the window, the generated count is the
/// generators' calls prorated to it.
pub fn window(
    ns_path: &str,
    iface: &'static str,
    configs: &[GenConfig],
    secs: u64,
    received: &dyn Fn() -> Result<u64>,
) -> Result<Window> {
    let cpus = configs.len().div_ceil(THREADS_PER_CPU).max(1);
    let start = Arc::new(Barrier::new(configs.len() + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = configs
        .iter()
        .enumerate()
        .map(|(i, cfg)| {
            let (path, cfg, start, stop) = (ns_path.to_string(), *cfg, start.clone(), stop.clone());
            thread::Builder::new()
                .name(format!("gen{i}"))
                .spawn(move || generator(i % cpus, path, iface, cfg, start, stop))
        })
        .collect::<Result<_, _>>()?;
    start.wait();
    let measured = (|| -> Result<(Instant, Instant, u64)> {
        sleep_unless_stopped(WARMUP);
        let before = received()?;
        let from = Instant::now();
        sleep_unless_stopped(Duration::from_secs(secs));
        let after = received()?;
        Ok((from, Instant::now(), after.saturating_sub(before)))
    })();
    stop.store(true, Ordering::Relaxed);
    let mut calls = Vec::new();
    let mut first_err = None;
    for h in handles {
        match h.join().map_err(|_| anyhow!("generator thread panicked"))? {
            Ok(c) => calls.extend(c),
            Err(e) => first_err = first_err.or(Some(e)),
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let (from, to, received) = measured?;
    env::check_stopped()?;
    let generated: f64 = calls.iter().map(|c| c.frames_within(from, to)).sum();
    Ok(Window {
        received,
        generated: generated.round() as u64,
        secs: to.duration_since(from).as_secs_f64(),
    })
}

fn sleep_unless_stopped(d: Duration) {
    let end = Instant::now() + d;
    while !env::stopped() {
        let now = Instant::now();
        if now >= end {
            break;
        }
        thread::sleep((end - now).min(Duration::from_millis(100)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_prorated_to_the_part_inside_the_window() {
        let t = Instant::now();
        let call = Call {
            start: t,
            end: t + Duration::from_secs(2),
            frames: 1000,
        };
        let inside = call.frames_within(t + Duration::from_secs(1), t + Duration::from_secs(5));
        assert!((inside - 500.0).abs() < 1e-6, "{inside}");
        assert_eq!(
            call.frames_within(t + Duration::from_secs(3), t + Duration::from_secs(4)),
            0.0
        );
    }

    #[test]
    fn calls_are_sized_to_the_measured_rate() {
        let t = Instant::now();
        let call = Call {
            start: t,
            end: t + Duration::from_millis(100),
            frames: 200_000,
        };
        // 2 Mpps -> 0.3 s is 600k frames.
        let r = next_repeat(&call);
        assert!((590_000..=610_000).contains(&r), "{r}");
    }
}
